//! go-libp2p's resource manager families (`libp2p_rcmgr_*`), mapped onto what Pylon's
//! host actually limits, so the "Resource Manager" dashboard shows Pylon's connections,
//! streams and file descriptors by scope.
//!
//! Pylon has no resource manager of go-libp2p's kind (scopes that reserve memory and
//! refuse what would exceed a budget); its host has connection limits (total, per peer,
//! pending handshakes per transport, per IP) and a stream limit per connection. The
//! scopes, as go-libp2p names them:
//!
//! - `system`: every connection and stream the host holds, from the first byte of the
//!   handshake (or the stream's negotiation) to the close;
//! - `transient`: connections still in their handshake, streams still negotiating their
//!   protocol (not yet attached to a peer or a protocol);
//! - `protocol`: negotiated streams, by protocol (a protocol we registered or proposed,
//!   so the label is bounded);
//! - `peer` (histograms only, never a PeerId label): how many connections and streams
//!   each peer holds, as go-libp2p's pair of histograms — every change of one peer's
//!   count observes the new count in `peer_*` and the old one in `previous_peer_*`, so
//!   `peer_* - previous_peer_*` is the distribution now;
//! - blocked resources: what a limit refused — `system` (`connections.max`), `peer`
//!   (`connections.max_per_peer`), `transient` (no pending-handshake place), `conn` (the
//!   streams of one connection).
//!
//! File descriptors: a TCP or WebSocket connection holds one; QUIC connections share
//! their endpoint's socket and relayed ones ride on another connection, so they hold
//! none. Memory is not accounted (no reservations to report): `libp2p_rcmgr_memory` and
//! the per-peer memory histograms are not exported.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::identity::PeerId;
use crate::metrics::DirLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnScopeLabels {
    pub dir: &'static str,
    pub scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamScopeLabels {
    pub dir: &'static str,
    pub scope: &'static str,
    /// The protocol (scope `protocol`), empty for `system` and `transient`.
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabels {
    pub scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BlockedLabels {
    /// `inbound`, `outbound`, or empty when the resource has no direction.
    pub dir: &'static str,
    pub scope: &'static str,
    /// `connection` or `stream`.
    pub resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub scope: &'static str,
    pub resource: &'static str,
}

/// go-libp2p's buckets for the per-peer histograms: 1 to 10, then powers of two.
fn per_peer_histogram() -> Histogram {
    Histogram::new([
        1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 16.0, 32.0, 64.0, 128.0, 256.0,
    ])
}

/// Whether a connection of `transport` (the host's label) holds a file descriptor of its
/// own.
pub fn uses_fd(transport: &str) -> bool {
    matches!(transport, "tcp" | "ws" | "wss")
}

type PerPeer = Family<DirLabels, Histogram, fn() -> Histogram>;

/// The `libp2p_rcmgr_*` families, and the per-peer stream counts behind the histograms.
pub struct Resources {
    connections: Family<ConnScopeLabels, Gauge>,
    streams: Family<StreamScopeLabels, Gauge>,
    fds: Family<ScopeLabels, Gauge>,
    /// A gauge in go-libp2p, only ever raised (dashboards take its `rate`).
    blocked: Family<BlockedLabels, Gauge>,
    limits: Family<LimitLabels, Gauge>,
    peer_connections: PerPeer,
    previous_peer_connections: PerPeer,
    peer_streams: PerPeer,
    previous_peer_streams: PerPeer,
    /// Negotiated streams of each peer that has any: `[inbound, outbound]`. Entries
    /// leave when both reach zero, so this holds at most the connected peers.
    streams_of: Mutex<HashMap<PeerId, [u32; 2]>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn index(dir: &'static str) -> usize {
    usize::from(dir == "outbound")
}

impl Resources {
    /// Creates the families and registers them in `registry` under `libp2p_rcmgr`.
    pub fn new(registry: &mut Registry) -> Arc<Resources> {
        let r = Resources {
            connections: Family::default(),
            streams: Family::default(),
            fds: Family::default(),
            blocked: Family::default(),
            limits: Family::default(),
            peer_connections: Family::new_with_constructor(per_peer_histogram),
            previous_peer_connections: Family::new_with_constructor(per_peer_histogram),
            peer_streams: Family::new_with_constructor(per_peer_histogram),
            previous_peer_streams: Family::new_with_constructor(per_peer_histogram),
            streams_of: Mutex::new(HashMap::new()),
        };
        // The four connection gauges and the two fd gauges always exist (as in
        // go-libp2p), at 0 until something is open.
        for dir in ["inbound", "outbound"] {
            for scope in ["system", "transient"] {
                r.connections
                    .get_or_create_owned(&ConnScopeLabels { dir, scope });
                r.stream(dir, scope, "");
            }
        }
        for scope in ["system", "transient"] {
            r.fds.get_or_create_owned(&ScopeLabels { scope });
        }
        let rc = registry.sub_registry_with_prefix("libp2p_rcmgr");
        rc.register(
            "connections",
            "Connections held, by direction and scope (system: all; transient: in their handshake)",
            r.connections.clone(),
        );
        rc.register(
            "streams",
            "Streams held, by direction and scope (system: all; transient: negotiating; protocol: by protocol)",
            r.streams.clone(),
        );
        rc.register(
            "fds",
            "File descriptors held by connections (TCP and WebSocket), by scope",
            r.fds.clone(),
        );
        rc.register(
            "blocked_resources",
            "Connections and streams refused by a limit, by direction, scope and resource",
            r.blocked.clone(),
        );
        rc.register(
            "limit",
            "The host's limits, by scope and resource",
            r.limits.clone(),
        );
        rc.register(
            "peer_connections",
            "Connections a peer has, observed at each change (subtract previous_peer_connections for now)",
            r.peer_connections.clone(),
        );
        rc.register(
            "previous_peer_connections",
            "Connections a peer had before each change",
            r.previous_peer_connections.clone(),
        );
        rc.register(
            "peer_streams",
            "Streams a peer has, observed at each change (subtract previous_peer_streams for now)",
            r.peer_streams.clone(),
        );
        rc.register(
            "previous_peer_streams",
            "Streams a peer had before each change",
            r.previous_peer_streams.clone(),
        );
        Arc::new(r)
    }

    fn connection(&self, dir: &'static str, scope: &'static str) -> Gauge {
        self.connections
            .get_or_create_owned(&ConnScopeLabels { dir, scope })
    }

    fn stream(&self, dir: &'static str, scope: &'static str, protocol: &str) -> Gauge {
        self.streams.get_or_create_owned(&StreamScopeLabels {
            dir,
            scope,
            protocol: protocol.to_string(),
        })
    }

    fn fd(&self, scope: &'static str) -> Gauge {
        self.fds.get_or_create_owned(&ScopeLabels { scope })
    }

    /// A connection's handshake begins (`dir`: `inbound` or `outbound`); it counts in the
    /// transient and system scopes until the returned guard is dropped.
    pub fn handshake(self: &Arc<Self>, dir: &'static str, fd: bool) -> Handshake {
        self.connection(dir, "transient").inc();
        self.connection(dir, "system").inc();
        if fd {
            self.fd("transient").inc();
            self.fd("system").inc();
        }
        Handshake {
            resources: self.clone(),
            dir,
            fd,
        }
    }

    /// A connection joined the pool (its handshake guard goes separately).
    pub fn connection_opened(&self, dir: &'static str, fd: bool) {
        self.connection(dir, "system").inc();
        if fd {
            self.fd("system").inc();
        }
    }

    /// A connection left the pool.
    pub fn connection_closed(&self, dir: &'static str, fd: bool) {
        self.connection(dir, "system").dec();
        if fd {
            self.fd("system").dec();
        }
    }

    /// One peer's connections in `dir` went from `old` to `new`.
    pub fn peer_connections_changed(&self, dir: &'static str, old: usize, new: usize) {
        observe_change(
            &self.peer_connections,
            &self.previous_peer_connections,
            dir,
            old,
            new,
        );
    }

    /// A stream took a slot (`dir`: `inbound` or `outbound`): it counts as system and
    /// transient until it is negotiated ([`StreamUse::negotiated`]), and leaves when the
    /// guard is dropped.
    pub fn stream_opening(self: &Arc<Self>, dir: &'static str, peer: PeerId) -> StreamUse {
        self.stream(dir, "system", "").inc();
        self.stream(dir, "transient", "").inc();
        StreamUse {
            resources: self.clone(),
            dir,
            peer,
            protocol: None,
        }
    }

    /// A limit refused a resource: `scope` as go-libp2p names it (`system`, `transient`,
    /// `peer`, `conn`), `resource` `connection` or `stream`.
    pub fn blocked(&self, dir: &'static str, scope: &'static str, resource: &'static str) {
        self.blocked
            .get_or_create(&BlockedLabels {
                dir,
                scope,
                resource,
            })
            .inc();
    }

    /// Reports a limit of the host.
    pub fn set_limit(&self, scope: &'static str, resource: &'static str, value: usize) {
        self.limits
            .get_or_create(&LimitLabels { scope, resource })
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    }

    fn peer_stream(&self, peer: PeerId, dir: &'static str, up: bool) {
        let (old, new) = {
            let mut map = lock(&self.streams_of);
            let counts = map.entry(peer).or_insert([0, 0]);
            let n = &mut counts[index(dir)];
            let old = *n;
            *n = if up {
                n.saturating_add(1)
            } else {
                n.saturating_sub(1)
            };
            let new = *n;
            if *counts == [0, 0] {
                map.remove(&peer);
            }
            (old, new)
        };
        observe_change(
            &self.peer_streams,
            &self.previous_peer_streams,
            dir,
            old as usize,
            new as usize,
        );
    }
}

/// go-libp2p's bookkeeping of a per-peer count: the old value into `previous`, the new
/// one into `now` (zeros are not observed), so that `now - previous` per bucket is the
/// current distribution over peers.
fn observe_change(now: &PerPeer, previous: &PerPeer, dir: &'static str, old: usize, new: usize) {
    if old == new {
        return;
    }
    if old != 0 {
        previous
            .get_or_create(&DirLabels { dir })
            .observe(old as f64);
    }
    if new != 0 {
        now.get_or_create(&DirLabels { dir }).observe(new as f64);
    }
}

/// A connection in its handshake: transient (and system) until dropped.
pub struct Handshake {
    resources: Arc<Resources>,
    dir: &'static str,
    fd: bool,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let r = &self.resources;
        r.connection(self.dir, "transient").dec();
        r.connection(self.dir, "system").dec();
        if self.fd {
            r.fd("transient").dec();
            r.fd("system").dec();
        }
    }
}

/// A stream's place in the scopes, from its slot to its end.
pub struct StreamUse {
    resources: Arc<Resources>,
    dir: &'static str,
    peer: PeerId,
    /// Set once negotiated.
    protocol: Option<String>,
}

impl StreamUse {
    /// The stream agreed on `protocol`: it leaves the transient scope for the protocol's,
    /// and counts towards its peer's streams.
    pub fn negotiated(&mut self, protocol: &str) {
        if self.protocol.is_some() {
            return;
        }
        let r = &self.resources;
        r.stream(self.dir, "transient", "").dec();
        r.stream(self.dir, "protocol", protocol).inc();
        r.peer_stream(self.peer, self.dir, true);
        self.protocol = Some(protocol.to_string());
    }
}

impl Drop for StreamUse {
    fn drop(&mut self) {
        let r = &self.resources;
        r.stream(self.dir, "system", "").dec();
        match &self.protocol {
            Some(p) => {
                r.stream(self.dir, "protocol", p).dec();
                r.peer_stream(self.peer, self.dir, false);
            }
            None => {
                r.stream(self.dir, "transient", "").dec();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(registry: &Registry) -> String {
        let mut t = String::new();
        prometheus_client::encoding::text::encode(&mut t, registry).unwrap();
        t
    }

    fn value(text: &str, sample: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn handshakes_and_streams_move_between_scopes() {
        let mut registry = Registry::default();
        let r = Resources::new(&mut registry);
        let peer = crate::Keypair::generate_ed25519().public().to_peer_id();
        let hs = r.handshake("inbound", true);
        let t = text(&registry);
        let conns = |t: &str, scope: &str| {
            value(
                t,
                &format!("libp2p_rcmgr_connections{{dir=\"inbound\",scope=\"{scope}\"}}"),
            )
        };
        assert_eq!(conns(&t, "transient"), Some(1.0));
        assert_eq!(conns(&t, "system"), Some(1.0));
        assert_eq!(
            value(&t, "libp2p_rcmgr_fds{scope=\"transient\"}"),
            Some(1.0)
        );
        drop(hs);
        r.connection_opened("inbound", true);
        let t = text(&registry);
        assert_eq!(conns(&t, "transient"), Some(0.0));
        assert_eq!(conns(&t, "system"), Some(1.0));
        assert_eq!(value(&t, "libp2p_rcmgr_fds{scope=\"system\"}"), Some(1.0));

        let mut s1 = r.stream_opening("inbound", peer);
        let streams = |t: &str, scope: &str, p: &str| {
            value(
                t,
                &format!(
                    "libp2p_rcmgr_streams{{dir=\"inbound\",scope=\"{scope}\",protocol=\"{p}\"}}"
                ),
            )
        };
        assert_eq!(streams(&text(&registry), "transient", ""), Some(1.0));
        s1.negotiated("/ipfs/id/1.0.0");
        let mut s2 = r.stream_opening("inbound", peer);
        s2.negotiated("/ipfs/id/1.0.0");
        let t = text(&registry);
        assert_eq!(streams(&t, "transient", ""), Some(0.0));
        assert_eq!(streams(&t, "system", ""), Some(2.0));
        assert_eq!(streams(&t, "protocol", "/ipfs/id/1.0.0"), Some(2.0));
        // The peer went 0 → 1 → 2: observed 1 and 2 now, 1 before.
        let bucket = |t: &str, name: &str, le: &str| {
            value(t, &format!("{name}_bucket{{le=\"{le}\",dir=\"inbound\"}}"))
        };
        assert_eq!(bucket(&t, "libp2p_rcmgr_peer_streams", "2.0"), Some(2.0));
        assert_eq!(
            bucket(&t, "libp2p_rcmgr_previous_peer_streams", "2.0"),
            Some(1.0)
        );
        drop(s1);
        drop(s2);
        let t = text(&registry);
        assert_eq!(streams(&t, "system", ""), Some(0.0));
        assert_eq!(streams(&t, "protocol", "/ipfs/id/1.0.0"), Some(0.0));
        // Now minus previous, per bucket: no peer holds a stream any more.
        for le in ["1.0", "2.0", "+Inf"] {
            assert_eq!(
                bucket(&t, "libp2p_rcmgr_peer_streams", le),
                bucket(&t, "libp2p_rcmgr_previous_peer_streams", le),
                "le {le}"
            );
        }
        assert!(lock(&r.streams_of).is_empty());
        r.blocked("inbound", "conn", "stream");
        assert_eq!(
            value(
                &text(&registry),
                "libp2p_rcmgr_blocked_resources{dir=\"inbound\",scope=\"conn\",resource=\"stream\"}"
            ),
            Some(1.0)
        );
    }
}
