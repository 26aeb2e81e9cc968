//! The bootstrap role on real nodes over loopback: peers that were served are shed once
//! the node is above its low watermark; peers that were not served are left alone.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use prometheus_client::registry::Registry;
use pylon_node::node::{self, Node};
use pylon_node::protocols::kad::{self, proto, MessageType};
use pylon_roles::bootstrap::{self, Bootstrap};
use pylon_testkit::node as kit;
use pylon_testkit::wait;

const T: Duration = Duration::from_secs(10);

/// A node on loopback TCP, with the DHT as given.
async fn start(kad: Option<kad::Config>) -> Node {
    kit::start_with(node::Config {
        kad,
        ..kit::config(&[kit::LOCAL_TCP])
    })
    .await
}

/// A DHT server with the role on: the given low watermark, a 300 ms grace period.
async fn bootstrap_node(low_watermark: usize) -> (Node, std::sync::Arc<Bootstrap>) {
    let server = start(Some(kad::Config {
        server: true,
        refresh_interval: None,
        ..Default::default()
    }))
    .await;
    let role = Bootstrap::start(
        &server,
        bootstrap::Config {
            low_watermark,
            grace_period: Duration::from_millis(300),
            ..Default::default()
        },
        &mut Registry::default(),
    )
    .unwrap();
    (server, role)
}

#[tokio::test]
async fn served_peers_are_shed_above_the_low_watermark() {
    let (server, role) = bootstrap_node(1).await;
    let addr = server.host.listen_addrs()[0].clone();
    let client_config = kad::Config {
        refresh_interval: None,
        ..Default::default()
    };
    let (a, b, c) = (
        start(Some(client_config.clone())).await,
        start(Some(client_config.clone())).await,
        start(Some(client_config)).await,
    );
    // Each keeps a (ping) stream open, so none of them is idle: only being served can
    // get a connection closed here.
    let mut held = Vec::new();
    for n in [&a, &b, &c] {
        let conn = n
            .host
            .connect(server.peer_id(), std::slice::from_ref(&addr))
            .await
            .unwrap();
        held.push(conn.open_stream(&["/ipfs/ping/1.0.0"]).await.unwrap());
    }
    // a and b ask the DHT; c only stays connected.
    for n in [&a, &b] {
        let msg = proto::Message::new(MessageType::FindNode, n.peer_id().to_bytes());
        let reply = n
            .kad
            .as_ref()
            .unwrap()
            .query(server.peer_id(), std::slice::from_ref(&addr), &msg)
            .await
            .unwrap();
        assert_eq!(reply.kind(), Some(MessageType::FindNode));
    }
    // The role counts a shed as it asks for the close, before the host closes the
    // connection and reports it: checked at each host event.
    kit::until(
        &server,
        "both served peers shed, their connections closed",
        T,
        || {
            role.shed_count() >= 2
                && server.host.connection(&a.peer_id()).is_none()
                && server.host.connection(&b.peer_id()).is_none()
        },
    )
    .await;
    assert!(
        server.host.connection(&c.peer_id()).is_some(),
        "c was never served"
    );
    assert_eq!(role.shed_count(), 2);

    // Now only c is connected: at the watermark, a served peer keeps its connection.
    let msg = proto::Message::new(MessageType::FindNode, c.peer_id().to_bytes());
    c.kad
        .as_ref()
        .unwrap()
        .query(server.peer_id(), std::slice::from_ref(&addr), &msg)
        .await
        .unwrap();
    // Wait for the role's decision on c (after its grace period), then look. A decision
    // to keep a connection makes no event: polled.
    wait::until("c marked served", T, || role.pending_sheds() > 0).await;
    wait::until("the role decided about c", T, || role.pending_sheds() == 0).await;
    assert!(server.host.connection(&c.peer_id()).is_some());
    assert_eq!(role.shed_count(), 2);
    assert_eq!(role.idle_closed_count(), 0);
    drop(held);

    // The role refuses to run without a DHT server.
    let d = start(None).await;
    assert!(Bootstrap::start(&d, bootstrap::Config::default(), &mut Registry::default()).is_err());
}

#[tokio::test]
async fn idle_connections_are_closed_above_the_low_watermark_oldest_first() {
    let (server, role) = bootstrap_node(2).await;
    let addr = server.host.listen_addrs()[0].clone();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let c = start(None).await;
        c.host
            .connect(server.peer_id(), std::slice::from_ref(&addr))
            .await
            .unwrap();
        clients.push(c); // connected one after another: distinct ages, oldest first
    }
    // The idle sweep counts a close as it asks for it, before the host closes the
    // connection and reports it: checked at each host event.
    kit::until(&server, "two idle connections closed", T, || {
        role.idle_closed_count() >= 2 && server.host.connections().len() <= 2
    })
    .await;
    // The two oldest went; the two youngest stay: at the watermark, a sweep closes nothing.
    role.close_idle();
    assert!(server.host.connection(&clients[0].peer_id()).is_none());
    assert!(server.host.connection(&clients[1].peer_id()).is_none());
    assert!(server.host.connection(&clients[2].peer_id()).is_some());
    assert!(server.host.connection(&clients[3].peer_id()).is_some());
    assert_eq!(role.idle_closed_count(), 2);
}
