//! A role started the way the binary starts every role: found by name, its section read,
//! its needs written into the node's config, started on the node; its metrics under its
//! own prefix and its status readable.
#![allow(clippy::unwrap_used)]

use prometheus_client::registry::Registry;
use pylon_testkit::node as kit;

#[tokio::test]
async fn bootstrap_through_the_registry() {
    let role = pylon_roles::find("bootstrap").unwrap();
    let section: toml::Value = toml::from_str("low_watermark = 5\n").unwrap();
    let configured = role.configure(&section).unwrap();
    let mut config = kit::config(&[kit::LOCAL_TCP]);

    // Without its needs met (no DHT server), the role does not start, and says which.
    let bare = kit::start_with(config.clone()).await;
    let e = configured
        .start(&bare, &mut Registry::default())
        .unwrap_err();
    assert!(format!("{e:#}").contains("bootstrap"), "{e:#}");

    configured.require(&mut config).unwrap();
    let node = kit::start_with(config).await;
    let mut registry = Registry::default();
    let running = configured.start(&node, &mut registry).unwrap();
    assert_eq!(running.name(), "bootstrap");
    assert_eq!(
        running.status(),
        serde_json::json!({
            "low_watermark": 5,
            "connections": 0,
            "shed": 0,
            "idle_closed": 0,
            "table_size": 0,
            "reachability": "unknown",
        })
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for name in [
        "pylon_bootstrap_shed_connections_total",
        "pylon_bootstrap_idle_connections_closed_total",
    ] {
        assert!(text.contains(name), "{name} in\n{text}");
    }
}
