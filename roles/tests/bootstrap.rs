//! The bootstrap role on real nodes over loopback: peers that were served are shed once
//! the node is above its low watermark; peers that were not served are left alone.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use prometheus_client::registry::Registry;
use pylon_node::metrics::Metrics;
use pylon_node::node::{self, Node};
use pylon_node::protocols::kad::{self, proto, MessageType};
use pylon_roles::bootstrap::{self, Bootstrap};

const T: Duration = Duration::from_secs(10);

async fn start(kad: Option<kad::Config>) -> Node {
    let config = node::Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        kad,
        ..Default::default()
    };
    Node::start_volatile(config, Metrics::unregistered())
        .await
        .unwrap()
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
    tokio::time::timeout(T, async {
        while role.shed_count() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both served peers shed");
    tokio::time::timeout(T, async {
        while server.host.connection(&a.peer_id()).is_some()
            || server.host.connection(&b.peer_id()).is_some()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("their connections closed");
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
    // Wait for the role's decision on c (after its grace period), then look.
    tokio::time::timeout(T, async {
        while role.pending_sheds() == 0 {
            tokio::task::yield_now().await;
        }
        while role.pending_sheds() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the role decided about c");
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
    tokio::time::timeout(T, async {
        while role.idle_closed_count() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("two idle connections closed");
    tokio::time::timeout(T, async {
        while server.host.connections().len() > 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    // The two oldest went; the two youngest stay: at the watermark, a sweep closes nothing.
    role.close_idle();
    assert!(server.host.connection(&clients[0].peer_id()).is_none());
    assert!(server.host.connection(&clients[1].peer_id()).is_none());
    assert!(server.host.connection(&clients[2].peer_id()).is_some());
    assert!(server.host.connection(&clients[3].peer_id()).is_some());
    assert_eq!(role.idle_closed_count(), 2);
}
