//! Real nodes for tests: `pylon-node` nodes started in this process, on loopback or the
//! in-memory transport, and the addresses to dial them by.
//!
//! This is the one module of the kit that does I/O: it binds sockets and starts a node's
//! tasks on the caller's tokio runtime. A node is volatile (a fresh Ed25519 key, memory
//! stores, metrics registered nowhere) and everything else is [`node::Config`]'s defaults;
//! a test's special settings stay at its call site: `kit::config(..)`, change a field,
//! then [`start_with`].
//!
//! What it is not: a harness for the `pylon` binary (`pylon/tests/common` runs that), or
//! for rust-libp2p and js-libp2p peers (`interop/tests/common`).
//!
//! Waiting: [`until`] re-checks a condition each time the host reports an event (a
//! connection established or closed, a stream opened); conditions nothing reports go to
//! [`crate::wait`].

use std::time::Duration;

use multiaddr::{Multiaddr, Protocol};
use pylon_node::host::Connection;
use pylon_node::metrics::Metrics;
use pylon_node::node::{self, Node};
use pylon_node::protocols::kad;
use pylon_node::PeerId;
use tokio::sync::broadcast::error::RecvError;

/// Loopback TCP, the port chosen by the kernel.
pub const LOCAL_TCP: &str = "/ip4/127.0.0.1/tcp/0";

/// A node config listening on `listen` (multiaddr strings; panics on a bad one), the rest
/// [`node::Config`]'s defaults.
pub fn config(listen: &[&str]) -> node::Config {
    node::Config {
        listen: listen
            .iter()
            .map(|a| {
                a.parse()
                    .unwrap_or_else(|e| panic!("listen address {a:?}: {e}"))
            })
            .collect(),
        ..Default::default()
    }
}

/// A node config for a DHT node on [`LOCAL_TCP`]: server or client mode, joining through
/// `bootstrap`, the periodic refresh off (a test runs one when it wants one).
pub fn kad_config(server: bool, bootstrap: Vec<Multiaddr>) -> node::Config {
    node::Config {
        kad: Some(kad::Config {
            server,
            bootstrap,
            refresh_interval: None,
            ..Default::default()
        }),
        ..config(&[LOCAL_TCP])
    }
}

/// A volatile node listening on `listen`, defaults otherwise ([`config`]).
pub async fn start(listen: &[&str]) -> Node {
    start_with(config(listen)).await
}

/// A volatile node from `config`, or why it did not start (for tests of start-up errors).
pub async fn try_start_with(config: node::Config) -> Result<Node, node::Error> {
    Node::start_volatile(config, Metrics::unregistered()).await
}

/// A volatile node from `config`; panics if it does not start.
pub async fn start_with(config: node::Config) -> Node {
    let listen = config.listen.clone();
    try_start_with(config)
        .await
        .unwrap_or_else(|e| panic!("node on {listen:?} did not start: {e}"))
}

/// A DHT node on [`LOCAL_TCP`] ([`kad_config`]).
pub async fn kad_node(server: bool, bootstrap: Vec<Multiaddr>) -> Node {
    start_with(kad_config(server, bootstrap)).await
}

/// `node`'s first listen address with its `/p2p/` suffix: what a peer dials.
pub fn addr_of(node: &Node) -> Multiaddr {
    let first = node
        .host
        .listen_addrs()
        .into_iter()
        .next()
        .expect("the node listens somewhere");
    first.with(Protocol::P2p(node.peer_id()))
}

/// The TCP or UDP port of `node`'s first listen address.
pub fn port_of(node: &Node) -> u16 {
    port(&addr_of(node))
}

/// The TCP or UDP port in `addr`; panics if it has neither.
pub fn port(addr: &Multiaddr) -> u16 {
    addr.iter()
        .find_map(|p| match p {
            Protocol::Tcp(p) | Protocol::Udp(p) => Some(p),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no TCP or UDP port in {addr}"))
}

/// The TCP port in `addr`; panics if it is not a TCP address.
pub fn tcp_port(addr: &Multiaddr) -> u16 {
    addr.iter()
        .find_map(|p| match p {
            Protocol::Tcp(p) => Some(p),
            _ => None,
        })
        .unwrap_or_else(|| panic!("not tcp: {addr}"))
}

/// Waits until `cond` holds, checking it now and again after every event `node`'s host
/// reports (a missed event, when the subscriber lags, counts as one); panics naming
/// `what` after `deadline`.
///
/// For conditions that change together with a host event: the host changes its state
/// first and reports it after, so the check after the event sees the change. A condition
/// no event goes with (a counter, a stream that ended) never gets re-checked here: wait
/// for it with [`crate::wait::until`].
pub async fn until(node: &Node, what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    // Subscribed before the first check: a change between the two is not missed.
    let mut events = node.host.subscribe();
    let held = tokio::time::timeout(deadline, async {
        while !cond() {
            match events.recv().await {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("{what}: the host stopped first"),
            }
        }
    })
    .await;
    if held.is_err() {
        panic!("{what}: not within {deadline:?}");
    }
}

/// `node`'s connection to `peer`, waiting for one up to `deadline` (it may be up on the
/// other side first: with lazy muxer negotiation the dialer is ready before the listener).
pub async fn connection(node: &Node, peer: PeerId, deadline: Duration) -> Connection {
    let mut found = None;
    until(node, &format!("a connection to {peer}"), deadline, || {
        found = node.host.connection(&peer);
        found.is_some()
    })
    .await;
    found.expect("held when `until` returns")
}
