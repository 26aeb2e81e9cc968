//! A TCP listen port belongs to one node: a second listener on it (TCP or WebSocket) is
//! refused with an error naming the address, while the owner's dials still leave from it
//! (port reuse) and a port left in TIME_WAIT by a previous run can be taken again.
//! Loopback only; every wait is bounded.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pylon_node::node::{self, Node};
use pylon_node::protocols::ping;
use pylon_testkit::node::{self as kit, addr_of, tcp_port};

const T: Duration = Duration::from_secs(10);

/// A node on `listen`, or why it did not start; within [`T`].
async fn start(listen: &str) -> Result<Node, node::Error> {
    tokio::time::timeout(T, kit::try_start_with(kit::config(&[listen])))
        .await
        .unwrap()
}

/// Starting a node on `listen` fails, and the error names the multiaddr and the socket.
async fn refused(listen: &str, port: u16) {
    let err = match start(listen).await {
        Ok(_) => panic!("a second listener on {listen} was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(listen) && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("already in use"), "{err}");
}

#[tokio::test]
async fn a_second_tcp_listener_on_the_port_is_refused() {
    let a = start("/ip4/127.0.0.1/tcp/0").await.unwrap();
    let port = tcp_port(&a.host.listen_addrs()[0]);
    refused(&format!("/ip4/127.0.0.1/tcp/{port}"), port).await;
    // A WebSocket listener is a TCP listener too.
    refused(&format!("/ip4/127.0.0.1/tcp/{port}/ws"), port).await;

    // The owner still dials from its listen port, and is still reachable.
    let b = start("/ip4/127.0.0.1/tcp/0").await.unwrap();
    let conn = a.host.dial(&addr_of(&b)).await.unwrap();
    assert_eq!(tcp_port(conn.local_addr()), port, "port reuse kept");
    let c = start("/ip4/127.0.0.1/tcp/0").await.unwrap();
    c.host.dial(&addr_of(&a)).await.unwrap();
    tokio::time::timeout(T, ping::ping(&c.host, &a.peer_id()))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_second_websocket_listener_on_the_port_is_refused() {
    let a = start("/ip4/127.0.0.1/tcp/0/ws").await.unwrap();
    let port = tcp_port(&a.host.listen_addrs()[0]);
    refused(&format!("/ip4/127.0.0.1/tcp/{port}/ws"), port).await;
    refused(&format!("/ip4/127.0.0.1/tcp/{port}"), port).await;
}

#[tokio::test]
async fn the_port_of_a_stopped_node_can_be_taken_again() {
    // Connections in both directions, then a shutdown that closes them from a's side:
    // its ends of them wait in TIME_WAIT on the listen port.
    let a = start("/ip4/127.0.0.1/tcp/0").await.unwrap();
    let port = tcp_port(&a.host.listen_addrs()[0]);
    let b = start("/ip4/127.0.0.1/tcp/0").await.unwrap();
    let c = start("/ip4/127.0.0.1/tcp/0").await.unwrap();
    let out = a.host.dial(&addr_of(&b)).await.unwrap();
    assert_eq!(tcp_port(out.local_addr()), port);
    c.host.dial(&addr_of(&a)).await.unwrap();
    tokio::time::timeout(T, a.shutdown(Duration::from_secs(2)))
        .await
        .unwrap();
    drop(a);
    let again = start(&format!("/ip4/127.0.0.1/tcp/{port}")).await.unwrap();
    assert_eq!(tcp_port(&again.host.listen_addrs()[0]), port);
    c.host.dial(&addr_of(&again)).await.unwrap();
}
