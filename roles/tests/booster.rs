//! What the booster's heads advertise, on loopback: the addresses the node's AutoNAT
//! servers reached, on the heads' own ports (a head runs no AutoNAT client of its own).
//! The heads among real rust-libp2p and js-libp2p peers, and what a rust-libp2p peer
//! hears a head announce: `interop/tests/booster.rs`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use multiaddr::{Multiaddr, Protocol};
use prometheus_client::registry::Registry;
use pylon_node::node::{self, Node};
use pylon_node::protocols::autonat::{self, Verdict};
use pylon_node::protocols::kad;
use pylon_roles::autonat::AutoNat;
use pylon_roles::booster::{self, Booster};
use pylon_roles::{Metrics, Role};
use pylon_testkit::node as kit;
use pylon_testkit::wait;

const T: Duration = Duration::from_secs(20);

/// A booster of `heads` heads on loopback TCP and QUIC, ports the system picks, nothing
/// running on its own (no crawl, no controller).
fn role(heads: u32) -> booster::Config {
    booster::Config {
        heads,
        max_heads: 4,
        port_base: 0,
        listen: vec![
            "/ip4/127.0.0.1/tcp/{port}".into(),
            "/ip4/127.0.0.1/udp/{port}/quic-v1".into(),
        ],
        autoscale: false,
        crawl_delay: Duration::from_secs(3600),
        ..Default::default()
    }
}

/// Starts the booster on a node made from `config` and waits for its heads.
async fn boost(mut config: node::Config, role: booster::Config) -> (Node, Arc<Booster>, Registry) {
    Booster::require(&role, &mut config).unwrap();
    if let Some(kad) = config.kad.as_mut() {
        kad.refresh_interval = None;
    }
    let node = kit::start_with(config).await;
    let mut registry = Registry::default();
    let booster = Booster::start(
        &node,
        role.clone(),
        &mut Metrics::of::<Booster>(&mut registry),
    )
    .unwrap();
    wait::until("every head up", T, || {
        booster.heads().len() == role.heads as usize
    })
    .await;
    (node, booster, registry)
}

/// The port of `addr`'s TCP (or UDP) part.
fn port(addr: &Multiaddr, udp: bool) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        Protocol::Tcp(n) if !udp => Some(n),
        Protocol::Udp(n) if udp => Some(n),
        _ => None,
    })
}

/// The node's AutoNAT servers reach its listen address: each head advertises that
/// address's host on its own port, as verified (what public peers hear of it).
#[tokio::test]
async fn heads_advertise_what_the_nodes_autonat_servers_reached_on_their_own_ports() {
    let mut servers = Vec::new();
    for ip in ["127.0.0.8", "127.0.0.9", "127.0.0.10"] {
        let server = kit::start(&[&format!("/ip4/{ip}/tcp/0")]).await;
        let config = pylon_roles::autonat::Config {
            allow_loopback: true,
            ..Default::default()
        };
        let mut registry = Registry::default();
        let role =
            AutoNat::start(&server, config, &mut Metrics::of::<AutoNat>(&mut registry)).unwrap();
        servers.push((server, role));
    }
    let mut config = kit::config(&[kit::LOCAL_TCP]);
    config.kad = Some(kad::Config::default());
    config.autonat = autonat::Config {
        allow_loopback: true,
        confirmations: 3,
        ..Default::default()
    };
    let mut heads = role(1);
    heads.listen = vec!["/ip4/127.0.0.1/tcp/{port}".into()];
    let (node, booster, _registry) = boost(config, heads).await;
    let (_, head) = booster.heads().pop().unwrap();
    assert!(head.identify.verified().reachable.is_empty());
    let mut verdicts = node.autonat.watch();
    for (s, _) in &servers {
        node.host.dial(&kit::addr_of(s)).await.unwrap();
    }
    tokio::time::timeout(T, verdicts.wait_for(|v| *v == Verdict::Public))
        .await
        .unwrap_or_else(|_| panic!("node not public: {:?}", node.autonat.verdicts()))
        .unwrap();
    let head_port = port(&head.host.listen_addrs()[0], false).unwrap();
    let want: Multiaddr = format!("/ip4/127.0.0.1/tcp/{head_port}").parse().unwrap();
    wait::until("the head to follow the node's verdict", T, || {
        head.identify.verified().reachable == [want.clone()]
    })
    .await;
}
