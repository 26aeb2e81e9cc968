//! The bootstrap role: the front door of a network.
//!
//! What the role adds on top of a Kademlia server (`pylon_node::protocols::kad`, which
//! the role asks of the node in [`Role::require`]: server mode, a saved routing table for
//! warm starts, only recently verified peers handed out, no private addresses to public
//! peers):
//! - **answer then shed**: once a peer has been served over the DHT protocol and the node
//!   holds more connections than its low watermark, that peer's inbound connections are
//!   closed politely after a grace period, so the node keeps room for newcomers instead
//!   of falling over; inbound connections older than the grace period with no stream
//!   open are closed the same way while the node is above its low watermark, oldest
//!   first;
//! - per-IP and per-subnet inbound connection caps (the host's
//!   `max_incoming_per_ip`/`max_incoming_per_subnet`, the tighter of this role's and
//!   `[connections]`', set in [`Role::require`]) and the global cap (`connections.max`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use pylon_node::host::{Connection, Direction, Extension};
use pylon_node::node::{self, Node};
use pylon_node::protocols::kad;
use pylon_node::PeerId;
use serde::{Deserialize, Serialize};

use crate::config::{self, serde_duration};
use crate::Role;

/// Settings of the role: the section `[roles.bootstrap]`, every key optional (its
/// default is [`Config::default`], documented in README.md and default.toml).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Connections held before served peers start being shed.
    pub low_watermark: usize,
    /// How long a served peer keeps its connection before it may be shed.
    #[serde(with = "serde_duration")]
    pub grace_period: Duration,
    /// Inbound connections from one IP address (applied to the host).
    pub max_connections_per_ip: usize,
    /// Inbound connections from one subnet, IPv4 /24 or IPv6 /48 (applied to the host).
    pub max_connections_per_subnet: usize,
    /// Only peers seen within this window are handed out (applied to the DHT).
    #[serde(with = "serde_duration")]
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

/// What the running role is doing (the admin API lists it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Connections held before served and idle peers are shed.
    pub low_watermark: usize,
    /// Connections the node holds now.
    pub connections: usize,
    /// Connections shed after their peer was served.
    pub shed: u64,
    /// Idle connections closed.
    pub idle_closed: u64,
    /// Peers in the DHT's routing table.
    pub table_size: usize,
    /// Whether the node is reachable from the Internet, as AutoNAT servers find
    /// (`public`, `private`, `unknown`): a bootstrap peer nobody can reach helps nobody.
    pub reachability: &'static str,
}

impl Role for Bootstrap {
    const NAME: &'static str = "bootstrap";
    type Config = Config;
    type Status = Status;
    type Error = Error;

    fn check(config: &Config) -> Result<(), config::Error> {
        for (key, v) in [
            ("roles.bootstrap.low_watermark", config.low_watermark),
            (
                "roles.bootstrap.max_connections_per_ip",
                config.max_connections_per_ip,
            ),
            (
                "roles.bootstrap.max_connections_per_subnet",
                config.max_connections_per_subnet,
            ),
        ] {
            if v == 0 {
                return Err(config::bad(key, "0", "must be at least 1"));
            }
        }
        Ok(())
    }

    /// The role stands on a DHT server: `[kad]` as configured (or its defaults), always
    /// in server mode, with a saved table and only verified peers served; and the tighter
    /// of its inbound caps and `[connections]`' (0 = none) applies.
    fn require(config: &Config, node: &mut node::Config) -> Result<(), config::Error> {
        let kad = node.kad.get_or_insert_with(kad::Config::default);
        kad.server = true;
        kad.auto_server = false;
        kad.persist_table = true;
        kad.serve_verified_within = Some(config.verified_within);
        let tighter = |a: usize, b: usize| if a == 0 { b } else { a.min(b) };
        let host = &mut node.host;
        host.max_incoming_per_ip = tighter(host.max_incoming_per_ip, config.max_connections_per_ip);
        host.max_incoming_per_subnet = tighter(
            host.max_incoming_per_subnet,
            config.max_connections_per_subnet,
        );
        Ok(())
    }

    fn start(
        node: &Node,
        config: Config,
        metrics: &mut crate::Metrics<'_>,
    ) -> Result<Arc<Self>, Error> {
        Bootstrap::start_in(node, config, metrics.own())
    }

    fn status(&self) -> Status {
        Status {
            low_watermark: self.config.low_watermark,
            connections: self.node.host.connections().len(),
            shed: self.shed_count(),
            idle_closed: self.idle_closed_count(),
            table_size: self.node.kad.as_ref().map_or(0, |k| k.table_len()),
            reachability: self.node.autonat.reachability().label(),
        }
    }

    /// What a bootstrap node serves: the DHT (the role makes it a server).
    fn protocols(&self) -> Vec<String> {
        self.node
            .kad
            .iter()
            .map(|k| k.config().protocol.clone())
            .collect()
    }
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
    /// Starts the role on a node whose DHT runs in server mode, its metrics under
    /// `registry` as `pylon_bootstrap_*` ([`Role::start`] with the role's sub-registry).
    pub fn start(node: &Node, config: Config, registry: &mut Registry) -> Result<Arc<Self>, Error> {
        Self::start_in(node, config, crate::metrics_registry::<Self>(registry))
    }

    /// Starts the role, its metrics in `metrics`, its own sub-registry.
    fn start_in(node: &Node, config: Config, metrics: &mut Registry) -> Result<Arc<Self>, Error> {
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
        metrics.register(
            "shed_connections",
            "Inbound connections closed after their peer was served, above the low watermark",
            role.shed.clone(),
        );
        metrics.register(
            "idle_connections_closed",
            "Inbound connections older than the grace period with no stream open, closed above the low watermark",
            role.idle_closed.clone(),
        );
        let me = role.clone();
        let shutdown = node.host.shutdown_token();
        let every = (role.config.grace_period / 2).max(Duration::from_millis(100));
        node.host.spawn_supervised("bootstrap_idle", async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(every) => me.close_idle(),
                }
            }
        });
        // Told of every DHT stream a peer opens, synchronously: no served peer is missed.
        node.host.install(Arc::new(Served {
            role: Arc::downgrade(&role),
            protocol,
        }));
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

    /// Peers served whose shed decision is still to come (after their grace period).
    pub fn pending_sheds(&self) -> usize {
        lock(&self.pending).len()
    }

    /// One idle sweep now (the role runs one every half grace period): above the
    /// watermark, closes inbound connections with no stream open that are older than the
    /// grace period, oldest first, down to the watermark.
    pub fn close_idle(&self) {
        let conns = self.node.host.connections();
        let now = Instant::now();
        let snapshots: Vec<Snapshot> = conns
            .iter()
            .map(|c| Snapshot::of(&self.node.host, c, now))
            .collect();
        for i in idle_to_close(
            &snapshots,
            self.config.low_watermark,
            self.config.grace_period,
        ) {
            // Counted first: whoever sees the close already sees it counted.
            self.idle_closed.inc();
            conns[i].close();
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
            let conns = me.node.host.connections();
            let now = Instant::now();
            let snapshots: Vec<Snapshot> = conns
                .iter()
                .map(|c| Snapshot::of(&me.node.host, c, now))
                .collect();
            for i in to_shed(&snapshots, &peer, me.config.low_watermark) {
                me.shed.inc();
                conns[i].close();
            }
            lock(&me.pending).remove(&peer);
        });
    }
}

/// A connection as the shed decisions see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub peer: PeerId,
    pub inbound: bool,
    pub streams: usize,
    pub age: Duration,
    /// Another role asked to keep it (`Host::protect`: a relay reservation).
    pub protected: bool,
}

impl Snapshot {
    fn of(host: &pylon_node::host::Host, c: &Connection, now: Instant) -> Snapshot {
        Snapshot {
            peer: c.peer(),
            inbound: c.direction() == Direction::Inbound,
            streams: c.stream_count(),
            age: now.saturating_duration_since(c.established()),
            protected: host.is_protected(&c.peer()),
        }
    }
}

/// Which connections (indices into `conns`) an idle sweep closes: only while there are
/// more than `low_watermark`, inbound ones with no stream open that are older than
/// `grace`, oldest first, no more than the excess.
pub fn idle_to_close(conns: &[Snapshot], low_watermark: usize, grace: Duration) -> Vec<usize> {
    let excess = conns.len().saturating_sub(low_watermark);
    if excess == 0 {
        return Vec::new();
    }
    let mut idle: Vec<usize> = (0..conns.len())
        .filter(|&i| {
            let c = &conns[i];
            c.inbound && !c.protected && c.streams == 0 && c.age >= grace
        })
        .collect();
    idle.sort_by_key(|&i| std::cmp::Reverse(conns[i].age));
    idle.truncate(excess);
    idle
}

/// Which connections (indices) shedding a served `peer` closes: its inbound ones, and
/// only while the node holds more than `low_watermark` connections.
pub fn to_shed(conns: &[Snapshot], peer: &PeerId, low_watermark: usize) -> Vec<usize> {
    if conns.len() <= low_watermark {
        return Vec::new();
    }
    (0..conns.len())
        .filter(|&i| conns[i].peer == *peer && conns[i].inbound && !conns[i].protected)
        .collect()
}

/// The role's ear on the host: inbound streams of the DHT protocol mark their peer served.
struct Served {
    role: Weak<Bootstrap>,
    protocol: String,
}

impl Extension for Served {
    fn on_stream_opened(&self, conn: &Connection, direction: Direction, protocol: &str) {
        if direction == Direction::Inbound && protocol == self.protocol {
            if let Some(role) = self.role.upgrade() {
                role.served(conn.peer());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn require_makes_a_dht_server_and_keeps_the_users_kad_settings() {
        // No [kad]: the DHT's defaults, in server mode.
        let mut node = node::Config::default();
        let role = Config::default();
        Bootstrap::require(&role, &mut node).unwrap();
        let kad = node.kad.as_ref().unwrap();
        assert!(kad.server && kad.persist_table);
        assert_eq!(kad.serve_verified_within, Some(role.verified_within));
        assert_eq!(kad.protocol, kad::Config::default().protocol);
        assert_eq!(
            (
                node.host.max_incoming_per_ip,
                node.host.max_incoming_per_subnet
            ),
            (8, 64),
            "0 in [connections] = no cap: the role's apply"
        );

        // A client-mode [kad] of the user's: kept, turned into a server.
        let mut node = node::Config {
            kad: Some(kad::Config {
                persist_table: false,
                table: kad::table::Config {
                    k: 16,
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        node.host.max_incoming_per_ip = 4;
        node.host.max_incoming_per_subnet = 100;
        let role = Config {
            verified_within: Duration::from_secs(60),
            ..Default::default()
        };
        Bootstrap::require(&role, &mut node).unwrap();
        let kad = node.kad.as_ref().unwrap();
        assert!(kad.server && kad.persist_table);
        assert_eq!(kad.table.k, 16);
        assert_eq!(kad.serve_verified_within, Some(Duration::from_secs(60)));
        assert_eq!(
            (
                node.host.max_incoming_per_ip,
                node.host.max_incoming_per_subnet
            ),
            (4, 64),
            "the tighter cap of each"
        );
    }

    #[test]
    fn check_names_the_key() {
        for key in [
            "low_watermark",
            "max_connections_per_ip",
            "max_connections_per_subnet",
        ] {
            let section: toml::Value = toml::from_str(&format!("{key} = 0\n")).unwrap();
            let e = crate::find("bootstrap")
                .unwrap()
                .configure(&section)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("roles.bootstrap.{key}")), "{e}");
        }
        for (text, key) in [
            ("grace_period = \"soon\"\n", "roles.bootstrap.grace_period"),
            ("verified_within = 5\n", "roles.bootstrap.verified_within"),
            ("low_watermark = -1\n", "roles.bootstrap.low_watermark"),
            ("typo = 1\n", "roles.bootstrap"),
        ] {
            let section: toml::Value = toml::from_str(text).unwrap();
            let e = crate::find("bootstrap")
                .unwrap()
                .configure(&section)
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let section: toml::Value = toml::from_str("grace_period = \"1.5s\"\n").unwrap();
        let configured = crate::find("bootstrap")
            .unwrap()
            .configure(&section)
            .unwrap();
        let config = configured.config::<Bootstrap>().unwrap();
        assert_eq!(config.grace_period, Duration::from_millis(1500));
        assert_eq!(config.low_watermark, Config::default().low_watermark);
    }
}

#[cfg(test)]
mod shed_tests {
    use super::*;

    fn peer() -> PeerId {
        pylon_node::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn conn(peer: PeerId, inbound: bool, streams: usize, age_ms: u64) -> Snapshot {
        Snapshot {
            peer,
            inbound,
            streams,
            age: Duration::from_millis(age_ms),
            protected: false,
        }
    }

    #[test]
    fn idle_sweep_closes_the_oldest_idle_inbound_down_to_the_watermark() {
        let grace = Duration::from_millis(300);
        let conns = vec![
            conn(peer(), true, 0, 400),   // idle, old
            conn(peer(), true, 0, 900),   // idle, oldest
            conn(peer(), true, 1, 5000),  // busy
            conn(peer(), false, 0, 5000), // outbound: ours, never closed here
            conn(peer(), true, 0, 100),   // idle but within its grace period
            conn(peer(), true, 0, 600),   // idle, older
        ];
        // Six held, watermark 3: three to go, oldest idle inbound first.
        assert_eq!(idle_to_close(&conns, 3, grace), vec![1, 5, 0]);
        // Watermark 5: only one.
        assert_eq!(idle_to_close(&conns, 5, grace), vec![1]);
        // At or under the watermark: nothing.
        assert!(idle_to_close(&conns, 6, grace).is_empty());
        assert!(idle_to_close(&conns, 10, grace).is_empty());
        // Fewer idle connections than the excess: all of them, no more.
        assert_eq!(idle_to_close(&conns, 0, grace), vec![1, 5, 0]);
        // A protected connection (a relay reservation) is never idle-closed.
        let mut kept = conns.clone();
        kept[1].protected = true;
        assert_eq!(idle_to_close(&kept, 3, grace), vec![5, 0]);
    }

    #[test]
    fn a_served_peer_is_shed_only_above_the_watermark_and_only_inbound() {
        let (a, b) = (peer(), peer());
        let conns = vec![
            conn(a, true, 0, 10),
            conn(a, false, 0, 10), // our own dial to it stays
            conn(b, true, 2, 10),
            conn(a, true, 3, 10), // busy or not: a served peer goes
        ];
        assert_eq!(to_shed(&conns, &a, 3), vec![0, 3]);
        assert!(to_shed(&conns, &a, 4).is_empty(), "at the watermark");
        assert!(to_shed(&conns, &peer(), 0).is_empty(), "not connected");
        let mut kept = conns.clone();
        kept[0].protected = true;
        kept[3].protected = true;
        assert!(to_shed(&kept, &a, 3).is_empty(), "protected: kept");
    }
}
