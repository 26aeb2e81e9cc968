//! A Pylon node running one role, on a thread inside a network namespace of the NAT bed
//! (`pylon_testkit::netns`), listening on TCP and QUIC at the host's address: the relay
//! or AutoNAT server the peers under test meet on the public network.

use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use prometheus_client::registry::Registry;
use pylon_node::node;
use pylon_roles::{Metrics, Role};
use pylon_testkit::netns;
use pylon_testkit::node as kit;
use tokio::sync::oneshot;

/// The node, its role, and its addresses.
pub struct NsPylon<R: Role> {
    pub id: PeerId,
    /// Its TCP and QUIC addresses with `/p2p/<id>`.
    pub tcp: Multiaddr,
    pub quic: Multiaddr,
    pub role: Arc<R>,
    _thread: netns::Task<()>,
}

impl<R: Role> NsPylon<R> {
    /// Starts a node from `config` (its listen addresses replaced by TCP and QUIC on the
    /// host's address) with role `R` configured by `role`; it lives until dropped.
    pub async fn start(
        host: &netns::Host,
        config: node::Config,
        role: R::Config,
        timeout: Duration,
    ) -> NsPylon<R> {
        let ip = host.ip();
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread = host
            .spawn(async move || {
                let listen = kit::config(&[
                    &format!("/ip4/{ip}/tcp/0"),
                    &format!("/ip4/{ip}/udp/0/quic-v1"),
                ])
                .listen;
                let node = kit::start_with(node::Config { listen, ..config }).await;
                let mut registry = Registry::default();
                let role = R::start(&node, role, &mut Metrics::of::<R>(&mut registry))
                    .unwrap_or_else(|e| panic!("role {} did not start: {e}", R::NAME));
                let id: PeerId = node.peer_id().to_string().parse().unwrap();
                let addrs: Vec<Multiaddr> = node
                    .host
                    .listen_addrs()
                    .iter()
                    .map(|a| a.to_string().parse().unwrap())
                    .collect();
                if ready_tx.send((id, addrs, role)).is_err() {
                    return;
                }
                // The node lives (and serves) until the test drops the thread.
                std::future::pending::<()>().await
            })
            .unwrap();
        let (id, addrs, role) = tokio::time::timeout(timeout, ready_rx)
            .await
            .unwrap_or_else(|_| panic!("the {} node did not start in time", R::NAME))
            .unwrap_or_else(|_| panic!("the {} node's thread ended", R::NAME));
        let find = |quic: bool| {
            addrs
                .iter()
                .find(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1)) == quic)
                .unwrap_or_else(|| panic!("listening on TCP and QUIC: {addrs:?}"))
                .clone()
                .with(Protocol::P2p(id))
        };
        NsPylon {
            id,
            tcp: find(false),
            quic: find(true),
            role,
            _thread: thread,
        }
    }
}
