//! The bootstrap role: the front door of a network.
//!
//! What the role adds on top of a Kademlia server (`pylon_node::protocols::kad`, which
//! the binary configures for it: server mode, a saved routing table for warm starts, only
//! recently verified peers handed out, no private addresses to public peers):
//! - **answer then shed**: once a peer has been served over the DHT protocol and the node
//!   holds more connections than its low watermark, that peer's inbound connections are
//!   closed politely after a grace period, so the node keeps room for newcomers instead
//!   of falling over; inbound connections older than the grace period with no stream
//!   open are closed the same way while the node is above its low watermark, oldest
//!   first;
//! - per-IP and per-subnet inbound connection caps (the host's
//!   `max_incoming_per_ip`/`max_incoming_per_subnet`, set by the binary from this role's
//!   config) and the global cap (`connections.max`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use pylon_node::host::{Direction, Event};
use pylon_node::node::Node;
use pylon_node::PeerId;

/// Settings of the role.
#[derive(Debug, Clone)]
pub struct Config {
    /// Connections held before served peers start being shed.
    pub low_watermark: usize,
    /// How long a served peer keeps its connection before it may be shed.
    pub grace_period: Duration,
    /// Inbound connections from one IP address (applied to the host).
    pub max_connections_per_ip: usize,
    /// Inbound connections from one subnet, IPv4 /24 or IPv6 /48 (applied to the host).
    pub max_connections_per_subnet: usize,
    /// Only peers seen within this window are handed out (applied to the DHT).
    pub verified_within: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            low_watermark: 2048,
            grace_period: Duration::from_secs(30),
            max_connections_per_ip: 8,
            max_connections_per_subnet: 64,
            verified_within: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the bootstrap role needs the Kademlia DHT in server mode")]
    NoKadServer,
}

/// The running role.
pub struct Bootstrap {
    node: Node,
    config: Config,
    /// Peers with a shed pending (bounded by the connection limit).
    pending: Mutex<HashSet<PeerId>>,
    shed: Counter,
    idle_closed: Counter,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Bootstrap {
    /// Starts the role on a node whose DHT runs in server mode.
    pub fn start(node: &Node, config: Config, registry: &mut Registry) -> Result<Arc<Self>, Error> {
        let kad = node.kad.as_ref().ok_or(Error::NoKadServer)?;
        if !kad.config().server {
            return Err(Error::NoKadServer);
        }
        let protocol = kad.config().protocol.clone();
        let role = Arc::new(Bootstrap {
            node: node.clone(),
            config,
            pending: Mutex::new(HashSet::new()),
            shed: Counter::default(),
            idle_closed: Counter::default(),
        });
        let sub = registry.sub_registry_with_prefix("pylon_bootstrap");
        sub.register(
            "shed_connections",
            "Inbound connections closed after their peer was served, above the low watermark",
            role.shed.clone(),
        );
        sub.register(
            "idle_connections_closed",
            "Inbound connections older than the grace period with no stream open, closed above the low watermark",
            role.idle_closed.clone(),
        );
        let me = role.clone();
        let shutdown = node.host.shutdown_token();
        let every = (role.config.grace_period / 2).max(Duration::from_millis(100));
        node.host.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(every) => me.close_idle(),
                }
            }
        });
        let mut events = node.host.subscribe();
        let me = role.clone();
        node.host.spawn(async move {
            loop {
                match events.recv().await {
                    Ok(Event::StreamOpened {
                        peer,
                        direction: Direction::Inbound,
                        protocol: p,
                        ..
                    }) if p == protocol => me.served(peer),
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Ok(role)
    }

    /// Connections shed so far.
    pub fn shed_count(&self) -> u64 {
        self.shed.get()
    }

    /// Idle connections closed so far.
    pub fn idle_closed_count(&self) -> u64 {
        self.idle_closed.get()
    }

    /// Above the watermark: closes inbound connections with no open stream that are older
    /// than the grace period, oldest first, down to the watermark.
    fn close_idle(&self) {
        let conns = self.node.host.connections();
        let excess = conns.len().saturating_sub(self.config.low_watermark);
        if excess == 0 {
            return;
        }
        let mut idle: Vec<_> = conns
            .into_iter()
            .filter(|c| {
                c.direction() == Direction::Inbound
                    && c.stream_count() == 0
                    && c.established().elapsed() >= self.config.grace_period
            })
            .collect();
        idle.sort_by_key(|c| c.established());
        for c in idle.into_iter().take(excess) {
            c.close();
            self.idle_closed.inc();
        }
    }

    /// A peer was served: after the grace period, shed it if we are above the watermark.
    fn served(self: &Arc<Self>, peer: PeerId) {
        {
            let mut pending = lock(&self.pending);
            if pending.len() >= self.node.host.connections().len().max(1) * 2
                || !pending.insert(peer)
            {
                return;
            }
        }
        let me = self.clone();
        self.node.host.spawn(async move {
            tokio::time::sleep(me.config.grace_period).await;
            lock(&me.pending).remove(&peer);
            let conns = me.node.host.connections();
            if conns.len() <= me.config.low_watermark {
                return;
            }
            for c in conns
                .iter()
                .filter(|c| c.peer() == peer && c.direction() == Direction::Inbound)
            {
                c.close();
                me.shed.inc();
            }
        });
    }
}
