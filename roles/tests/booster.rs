//! What the booster's heads tell peers about where to reach them, on loopback: the node's
//! announced addresses on each head's own ports, and the addresses the node's AutoNAT
//! servers reached, again on the heads' ports (a head runs no AutoNAT client of its own).
//! The heads among real rust-libp2p and js-libp2p peers: `interop/tests/booster.rs`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use multiaddr::{Multiaddr, Protocol};
use prometheus_client::registry::Registry;
use pylon_node::node::{self, Node};
use pylon_node::protocols::autonat::{self, Verdict};
use pylon_node::protocols::identify::Event;
use pylon_node::protocols::kad;
use pylon_roles::autonat::AutoNat;
use pylon_roles::booster::{self, Booster};
use pylon_roles::{Metrics, Role};
use pylon_testkit::node as kit;
use pylon_testkit::wait;
use tokio::sync::broadcast::error::RecvError;

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

/// A peer that identifies a head hears the node's announced addresses, each on the
/// head's own port of that transport (system-picked here, so TCP and QUIC differ).
#[tokio::test]
async fn heads_announce_the_nodes_announced_addresses_on_their_own_ports() {
    let mut config = kit::config(&[kit::LOCAL_TCP, "/ip4/127.0.0.1/udp/0/quic-v1"]);
    config.identify.addresses.announce = vec![
        "/ip4/203.0.113.7/tcp/4001".parse().unwrap(),
        "/dns4/boot.example.com/udp/4001/quic-v1".parse().unwrap(),
    ];
    let (_node, booster, _registry) = boost(config, role(2)).await;
    let client = kit::start(&[kit::LOCAL_TCP]).await;
    for (i, head) in booster.heads() {
        let listen = head.host.listen_addrs();
        let tcp = listen.iter().find_map(|a| port(a, false)).unwrap();
        let udp = listen
            .iter()
            .filter(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1)))
            .find_map(|a| port(a, true))
            .unwrap();
        let want: Vec<Multiaddr> = vec![
            format!("/ip4/203.0.113.7/tcp/{tcp}").parse().unwrap(),
            format!("/dns4/boot.example.com/udp/{udp}/quic-v1")
                .parse()
                .unwrap(),
        ];
        let dial = listen
            .iter()
            .find(|a| port(a, false).is_some())
            .unwrap()
            .clone()
            .with(Protocol::P2p(head.peer_id()));
        let mut events = client.identify.subscribe();
        client.host.dial(&dial).await.unwrap();
        let peer = head.peer_id();
        let heard = tokio::time::timeout(T, async {
            loop {
                match events.recv().await {
                    Ok(Event::Identified(info)) if info.peer == peer => {
                        return info.listen_addrs;
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => panic!("identify stopped"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("head {i} identified within {T:?}"));
        assert_eq!(heard, want, "head {i} (listening on {listen:?})");
    }
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
