//! Interop with a real js-libp2p 3.x peer (`interop/js/peer.mjs`, run by Node.js), both
//! directions: identify and ping each way, and js-libp2p verifies our signed peer record
//! (it would reject the whole identify message if it did not).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use pylon_interop::js::{
    ConnectionOpen, Identify, JsOptions, JsPeer, JsSecurity, JsTransport, Ping,
};
use pylon_node::node::Node;
use pylon_node::protocols::{identify as pylon_identify, ping as pylon_ping};
use pylon_node::record::RecordFormat;
use pylon_node::secure::Security;
use pylon_node::PeerId;

const JS_AGENT: &str = "js-libp2p-interop";

async fn check_js_view_of_pylon(js: &mut JsPeer, node: &Node) {
    let event = js
        .wait_for_peer("identify", &node.peer_id().to_string(), T)
        .await
        .unwrap();
    let info: Identify = serde_json::from_value(event).unwrap();
    assert_eq!(
        info.agent_version.as_deref(),
        Some(concat!("pylon/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(info.protocol_version.as_deref(), Some("ipfs/0.1.0"));
    for p in [
        pylon_ping::PROTOCOL,
        pylon_identify::PROTOCOL,
        pylon_identify::PUSH_PROTOCOL,
    ] {
        assert!(
            info.protocols.iter().any(|x| x == p),
            "{p} missing from {:?}",
            info.protocols
        );
    }
    let ours: Vec<String> = node
        .identify
        .advertised_addrs()
        .iter()
        .map(|a| a.to_string())
        .collect();
    for a in &ours {
        assert!(
            info.listen_addrs.iter().any(|l| l.starts_with(a.as_str())),
            "{a} missing from {:?}",
            info.listen_addrs
        );
    }
    // js-libp2p opened and certified our RFC 0003 envelope and stored it.
    let record = info
        .signed_peer_record
        .expect("js-libp2p verified our signed peer record");
    assert_eq!(record.addrs, ours);
    let held = node.identify.own_record().unwrap();
    let seq = pylon_node::record::open_peer_record(&held).unwrap().seq();
    assert_eq!(record.seq, seq.to_string());
    assert!(info.peer_store_has_envelope);
    let ping: Ping = serde_json::from_value(
        js.wait_for_peer("ping", &node.peer_id().to_string(), T)
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(ping.rtt_ms >= 0.0);
}

fn check_pylon_view_of_js(info: &pylon_identify::Info, js: &JsPeer) {
    assert_eq!(info.agent_version.as_deref(), Some(JS_AGENT));
    assert!(
        info.protocols.iter().any(|p| p == pylon_ping::PROTOCOL),
        "{:?}",
        info.protocols
    );
    assert!(
        info.protocols.iter().any(|p| p == pylon_identify::PROTOCOL),
        "{:?}",
        info.protocols
    );
    let record = info
        .record
        .as_ref()
        .expect("js-libp2p's signed record verified");
    assert_eq!(record.format(), RecordFormat::Rfc0003);
    assert_eq!(record.peer_id().to_string(), js.peer_id);
    let js_listen: Vec<String> = js
        .addrs
        .iter()
        .map(|a| {
            a.rsplit_once("/p2p/")
                .map_or(a.clone(), |(head, _)| head.to_string())
        })
        .collect();
    let rec_addrs: Vec<String> = record.addrs().iter().map(|a| a.to_string()).collect();
    for a in &js_listen {
        assert!(
            rec_addrs.contains(a),
            "{a} missing from record {rec_addrs:?}"
        );
        assert!(
            info.listen_addrs.iter().any(|l| l.to_string() == *a),
            "{a} missing from {:?}",
            info.listen_addrs
        );
    }
}

#[tokio::test]
async fn js_libp2p_dials_pylon() {
    let node = pylon().await;
    let mut pylon_events = node.identify.subscribe();
    let mut js = JsPeer::dial(&pylon_addr(&node).to_string()).await.unwrap();
    let js_peer: PeerId = js.peer_id.parse().unwrap();

    check_js_view_of_pylon(&mut js, &node).await;
    js.wait_for("done", T).await.unwrap();
    let theirs = pylon_identified(&mut pylon_events, js_peer).await;
    check_pylon_view_of_js(&theirs, &js);
    assert!(node.host.connection(&js_peer).unwrap().early_muxer());
    pylon_ping::ping(&node.host, &js_peer).await.unwrap();
    pylon_ping::ping(&node.host, &js_peer).await.unwrap();

    js.stop().await.unwrap();
    node.shutdown(T).await;
}

#[tokio::test]
async fn pylon_dials_js_libp2p() {
    let node = pylon().await;
    let mut pylon_events = node.identify.subscribe();
    let mut js = JsPeer::listen().await.unwrap();
    let js_peer: PeerId = js.peer_id.parse().unwrap();
    let conn = node.host.dial(&js.addrs[0].parse().unwrap()).await.unwrap();
    assert_eq!(conn.peer(), js_peer);
    // js-libp2p's Noise offers its muxers in the handshake: yamux is agreed there.
    assert!(conn.early_muxer());

    let theirs = pylon_identified(&mut pylon_events, js_peer).await;
    check_pylon_view_of_js(&theirs, &js);
    check_js_view_of_pylon(&mut js, &node).await;
    pylon_ping::ping(&node.host, &js_peer).await.unwrap();

    // Graceful close from our side is seen by js.
    node.shutdown(T).await;
    js.wait_for_peer("connection_close", &node.peer_id().to_string(), T)
        .await
        .unwrap();
    js.stop().await.unwrap();
}

/// js-libp2p's view of the connection to `peer`.
async fn js_connection(js: &mut JsPeer, peer: &str) -> ConnectionOpen {
    serde_json::from_value(js.wait_for_peer("connection_open", peer, T).await.unwrap()).unwrap()
}

/// Identify and ping each way with js-libp2p dialing Pylon, then Pylon dialing js-libp2p, on
/// one transport and security; both sides' view of what was negotiated is asserted.
async fn both_directions_with_js(
    listen: &str,
    opts: JsOptions,
    pylon_security: Security,
    expect: (&str, &str, &str),
    js_expect: (&str, &str),
) {
    let start = || pylon_with(listen, pylon_security);
    // js-libp2p offers its muxers inside Noise and TLS: agreed there (QUIC has its own).
    let negotiated = |c: &pylon_node::host::Connection| {
        assert_eq!(c.early_muxer(), c.transport() != "quic-v1");
        (c.transport(), c.security(), c.muxer())
    };

    // js-libp2p dials Pylon.
    let node = start().await;
    let mut pylon_events = node.identify.subscribe();
    let mut js = JsPeer::dial_with(&pylon_addr(&node).to_string(), &opts)
        .await
        .unwrap();
    let js_peer: PeerId = js.peer_id.parse().unwrap();
    let seen = js_connection(&mut js, &node.peer_id().to_string()).await;
    assert_eq!(
        (seen.encryption.as_deref(), seen.multiplexer.as_deref()),
        (Some(js_expect.0), Some(js_expect.1)),
        "{listen}: js dialing"
    );
    check_js_view_of_pylon(&mut js, &node).await;
    js.wait_for("done", T).await.unwrap();
    let theirs = pylon_identified(&mut pylon_events, js_peer).await;
    check_pylon_view_of_js(&theirs, &js);
    let conn = node.host.connection(&js_peer).unwrap();
    assert_eq!(negotiated(&conn), expect, "{listen}: js dialing");
    pylon_ping::ping(&node.host, &js_peer).await.unwrap();
    js.stop().await.unwrap();
    node.shutdown(T).await;

    // Pylon dials js-libp2p.
    let node = start().await;
    let mut pylon_events = node.identify.subscribe();
    let mut js = JsPeer::listen_with(&opts).await.unwrap();
    let js_peer: PeerId = js.peer_id.parse().unwrap();
    let conn = node.host.dial(&js.addrs[0].parse().unwrap()).await.unwrap();
    assert_eq!(negotiated(&conn), expect, "{listen}: pylon dialing");
    let seen = js_connection(&mut js, &node.peer_id().to_string()).await;
    assert_eq!(
        (seen.encryption.as_deref(), seen.multiplexer.as_deref()),
        (Some(js_expect.0), Some(js_expect.1)),
        "{listen}: pylon dialing"
    );
    let theirs = pylon_identified(&mut pylon_events, js_peer).await;
    check_pylon_view_of_js(&theirs, &js);
    check_js_view_of_pylon(&mut js, &node).await;
    pylon_ping::ping(&node.host, &js_peer).await.unwrap();
    // A wrong PeerId is refused on this transport too.
    let other = pylon_node::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let (head, _) = js.addrs[0].rsplit_once("/p2p/").unwrap();
    let wrong: pylon_node::Multiaddr = format!("{head}/p2p/{other}").parse().unwrap();
    match node.host.dial(&wrong).await {
        Err(pylon_node::host::DialError::WrongPeer { got, .. }) => assert_eq!(*got, js_peer),
        other => panic!("{listen}: expected WrongPeer, got {other:?}"),
    }
    node.shutdown(T).await;
    js.stop().await.unwrap();
}

#[tokio::test]
async fn tls_both_directions_with_js_libp2p() {
    let opts = JsOptions {
        transport: JsTransport::Tcp,
        security: JsSecurity::Tls,
        ..Default::default()
    };
    both_directions_with_js(
        "/ip4/127.0.0.1/tcp/0",
        opts,
        Security::Tls,
        ("tcp", "tls", "yamux"),
        ("/tls/1.0.0", "/yamux/1.0.0"),
    )
    .await;
}

#[tokio::test]
async fn websocket_both_directions_with_js_libp2p() {
    let opts = JsOptions {
        transport: JsTransport::Ws,
        security: JsSecurity::Noise,
        ..Default::default()
    };
    both_directions_with_js(
        "/ip4/127.0.0.1/tcp/0/ws",
        opts,
        Security::Noise,
        ("ws", "noise", "yamux"),
        ("/noise", "/yamux/1.0.0"),
    )
    .await;
}

#[tokio::test]
async fn quic_both_directions_with_js_libp2p() {
    let opts = JsOptions {
        transport: JsTransport::Quic,
        security: JsSecurity::Noise,
        ..Default::default()
    };
    both_directions_with_js(
        "/ip4/127.0.0.1/udp/0/quic-v1",
        opts,
        Security::Noise,
        ("quic-v1", "tls", "quic"),
        ("native", "quic"),
    )
    .await;
}
