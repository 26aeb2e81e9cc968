//! The host: owns listeners and connections, runs the upgrade pipeline
//! (multistream-select → Noise → multistream-select → yamux), routes inbound streams to
//! registered protocol handlers, and publishes connection and stream events.
//!
//! It is the one place in the stack that spawns tasks; all of them are tracked and end on
//! [`Host::shutdown`], which closes every connection politely (yamux GoAway) first.
//! Policy — whom to dial, what a protocol does — lives above, in protocols and roles.
//!
//! Files: `mod.rs` the host itself (configuration, state, accessors, shutdown);
//! `connection.rs` connections and streams; `error.rs` dial and stream errors;
//! `events.rs` what observers are told; `limits.rs` admission of inbound connections and
//! the connection limits; `listen.rs` listeners and the inbound path; `dial.rs` dialing;
//! `upgrade.rs` security and muxer negotiation; `establish.rs` a connection's life from
//! handshake to close (one `establish` for every transport); `router.rs` protocol
//! handlers and inbound stream negotiation; `extension.rs` the [`Extension`] trait through
//! which protocols and roles hear about connections; `transports.rs` the [`Transport`]
//! trait for transports added from outside; `bans.rs` the operator's bans and draining.

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use multiaddr::{Multiaddr, Protocol};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fault::{Classify, Fault};
use crate::identity::{key_type_label, Keypair, PeerId, PublicKey};
use crate::metrics::{
    ConnLabels, DialErrorLabels, DialOutcomeLabels, DirLabels, HandshakeLabels, KeyTypeLabels,
    Metrics, StreamLabels,
};
use crate::multistream::{self, Negotiated};
use crate::resource_metrics::uses_fd;
use crate::transport::{self, RawStream, Target};
use admission::{Admission, PendingId, Subnet};

mod admission;
mod bans;
mod connection;
mod dial;
mod error;
mod establish;
mod events;
mod extension;
mod limits;
mod listen;
mod router;
mod transports;
mod upgrade;

pub use bans::{Ban, BanError, BanId, BanTarget, MAX_BANS};
pub(crate) use connection::Substream;
use connection::*;
pub use connection::{Connection, ConnectionId, Direction, Stream};
pub use error::{DialError, LimitScope, MuxerError, StreamError};
use establish::{Ends, Handshaken};
pub use events::Event;
pub use extension::{Extension, LocalChange};
use limits::*;
pub use router::{handler, Handler};
pub use transports::Transport;

pub const YAMUX_PROTOCOL: &str = "/yamux/1.0.0";
/// Outbound stream requests one connection queues while yamux cannot open more.
const MAX_PENDING_OPENS: usize = 64;
/// Streams yamux accepts beyond our own limit before it treats the remote as abusive.
const YAMUX_STREAM_HEADROOM: usize = 16;
/// Largest yamux data frame we send: one frame per 64 KiB write (the default, 16 KiB, means
/// four frames, four allocations and four channel messages per write).
const YAMUX_SPLIT_SEND_SIZE: usize = 64 * 1024;
/// Linux keeps a closed TCP 4-tuple in TIME_WAIT this long.
const TIME_WAIT: Duration = Duration::from_secs(60);
/// Remote addresses remembered for [`TIME_WAIT`] after a port-reusing dial.
const MAX_REUSED_TUPLES: usize = 4096;
/// How long a polite close (yamux GoAway and flush) may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Limits and timeouts of the host.
#[derive(Debug, Clone)]
pub struct Config {
    /// Raw connect (TCP SYN to established).
    pub dial_timeout: Duration,
    /// Security and muxer negotiation of a new connection.
    pub handshake_timeout: Duration,
    /// Protocol negotiation on a new stream.
    pub negotiation_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    /// Inbound connections in their handshake at once, per transport (TCP, QUIC,
    /// WebSocket each have this many). When a transport's are all taken, a newcomer
    /// evicts the oldest handshake of the subnet holding the most (see `admission`).
    pub max_pending_incoming: usize,
    /// Inbound handshakes at once from one IP address, all transports; 0 = no budget.
    pub max_pending_incoming_per_ip: usize,
    /// Inbound handshakes at once from one subnet (IPv4 /24, IPv6 /48); 0 = no budget.
    pub max_pending_incoming_per_subnet: usize,
    /// The handshake deadline of an inbound connection that arrives when its transport's
    /// pending handshakes are all taken; from half full up, the deadline shrinks linearly
    /// from `handshake_timeout` to this. Never more than `handshake_timeout`.
    pub handshake_timeout_floor: Duration,
    /// Inbound connections (in handshake or established) from one IP address; 0 = no cap.
    pub max_incoming_per_ip: usize,
    /// Inbound connections from one subnet (IPv4 /24, IPv6 /48); 0 = no cap.
    pub max_incoming_per_subnet: usize,
    /// Streams per connection, both directions together. Past it, new inbound streams
    /// are reset and opens fail with [`StreamError::Limit`]; yamux itself allows a little
    /// headroom above it, so reaching the limit never tears the connection down.
    pub max_streams_per_connection: usize,
    /// How `/dns*` and `/dnsaddr` addresses are resolved.
    pub dns: crate::dns::Config,
    /// TCP dials leave from our listen port, so peers (and NATs) see the address we
    /// listen on — what hole punching needs.
    pub port_reuse: bool,
    /// Security protocols a dialer proposes, in order (a listener accepts all). A single
    /// one is proposed lazily, saving a round trip.
    pub security: Vec<crate::secure::Security>,
    /// Agree on the muxer inside the Noise or TLS handshake (one round trip less);
    /// peers that do not offer it fall back to multistream-select.
    pub inline_muxer: bool,
    /// `/wss`: the listener's certificate, and roots trusted when dialing.
    pub websocket: WsConfig,
}

/// TLS for `/wss` listeners and dials.
#[derive(Debug, Clone, Default)]
pub struct WsConfig {
    /// What a `/wss` listener presents (see [`transport::WsTls::server_config`]); without
    /// it, listening on `/wss` fails.
    pub server: Option<Arc<rustls::ServerConfig>>,
    /// Trusted besides the Mozilla root set when dialing `/wss`.
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dial_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            negotiation_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_connections_per_peer: 8,
            max_pending_incoming: 256,
            // An honest client holds 1 or 2 (one per transport it races); 16 leaves room
            // for several hosts behind one (carrier-grade) NAT dialing at once. One IP
            // gets at most 1/16 of a pool: the per-subnet budget and eviction are what
            // hold off attackers with many addresses, this only bounds a single host.
            max_pending_incoming_per_ip: 16,
            // One /24 (or /48) gets at most 1/8 of a pool: filling one takes 8 subnets,
            // and eviction then picks from the most crowded of them.
            max_pending_incoming_per_subnet: 32,
            // Noise XX over TCP is about 2 round trips: 2 s serves a 500 ms RTT path.
            handshake_timeout_floor: Duration::from_secs(2),
            max_incoming_per_ip: 0,
            max_incoming_per_subnet: 0,
            max_streams_per_connection: 256,
            dns: crate::dns::Config::default(),
            port_reuse: true,
            security: vec![crate::secure::Security::Noise],
            inline_muxer: true,
            websocket: WsConfig::default(),
        }
    }
}

/// The libp2p host. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

struct HostInner {
    key: Keypair,
    peer_id: PeerId,
    security: crate::secure::Config,
    config: Config,
    metrics: Arc<Metrics>,
    next_id: AtomicU64,
    connections: Mutex<HashMap<PeerId, Vec<Connection>>>,
    handlers: RwLock<HashMap<String, Handler>>,
    /// Installed protocols and roles, told about connections and streams.
    protocols: RwLock<Vec<Arc<dyn Extension>>>,
    /// Peers whose connections roles want kept (a relay reservation), with why.
    protected: Mutex<HashMap<PeerId, Vec<&'static str>>>,
    /// Peers and prefixes refused (`bans.rs`).
    bans: Mutex<admission::Bans>,
    /// No new inbound connections ([`Host::drain`]).
    draining: std::sync::atomic::AtomicBool,
    /// Transports added from outside (`Host::add_transport`), asked before the built-in ones.
    transports: RwLock<Vec<Arc<dyn Transport>>>,
    listen_addrs: RwLock<Vec<Multiaddr>>,
    events: broadcast::Sender<Event>,
    /// Inbound handshakes in progress, each with the token that cuts it short.
    pending_incoming: Arc<Mutex<Admission<CancellationToken>>>,
    ip_counts: Arc<Mutex<IpCounts>>,
    resolver: std::sync::OnceLock<Arc<crate::dns::Resolver>>,
    reused_tuples: Mutex<HashMap<std::net::SocketAddr, Instant>>,
    dial_gates: Mutex<HashMap<PeerId, Arc<tokio::sync::Mutex<()>>>>,
    backoff: Mutex<crate::dialer::Backoff>,
    quic: Mutex<QuicEndpoints>,
    ws_tls: transport::WsTls,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// The first supervised task that ended before shutdown.
    failure: tokio::sync::watch::Sender<Option<String>>,
}

/// The host's quinn endpoints: one per QUIC listen address (also used to dial, so dials
/// leave from the listen port), and a dial-only one per IP family when none fits.
#[derive(Default)]
struct QuicEndpoints {
    listening: Vec<quinn::Endpoint>,
    client_v4: Option<quinn::Endpoint>,
    client_v6: Option<quinn::Endpoint>,
}

type YamuxConnection =
    yamux::Connection<Compat<Negotiated<crate::secure::Secured<Negotiated<RawStream>>>>>;

/// How a connection was made, for metric labels.
#[derive(Debug, Clone, Copy)]
struct Route {
    transport: &'static str,
    security: &'static str,
    muxer: &'static str,
    early_muxer: &'static str,
    ip_version: &'static str,
}

impl Host {
    pub fn new(
        key: Keypair,
        config: Config,
        metrics: Arc<Metrics>,
    ) -> Result<Self, crate::secure::Error> {
        let muxers = if config.inline_muxer {
            vec![YAMUX_PROTOCOL.to_string()]
        } else {
            Vec::new()
        };
        let security = crate::secure::Config::new(&key, config.security.clone(), muxers)?;
        let ws_tls = transport::WsTls::new(
            config.websocket.server.clone(),
            &config.websocket.extra_roots,
        )
        .map_err(|e| crate::secure::Error::Setup(format!("wss: {e}")))?;
        let (events, _) = broadcast::channel(1024);
        let limits = &metrics.resources;
        limits.set_limit("system", "conns", config.max_connections);
        limits.set_limit("peer", "conns", config.max_connections_per_peer);
        limits.set_limit("conn", "streams", config.max_streams_per_connection);
        let pending = Arc::new(Mutex::new(Admission::new(admission::Config {
            max_pending: config.max_pending_incoming,
            per_ip: config.max_pending_incoming_per_ip,
            per_subnet: config.max_pending_incoming_per_subnet,
            deadline: config.handshake_timeout,
            deadline_floor: config.handshake_timeout_floor,
        })));
        Ok(Host {
            inner: Arc::new(HostInner {
                peer_id: key.public().to_peer_id(),
                key,
                security,
                config,
                metrics,
                next_id: AtomicU64::new(1),
                connections: Mutex::new(HashMap::new()),
                handlers: RwLock::new(HashMap::new()),
                protocols: RwLock::new(Vec::new()),
                transports: RwLock::new(Vec::new()),
                protected: Mutex::new(HashMap::new()),
                bans: Mutex::new(admission::Bans::default()),
                draining: std::sync::atomic::AtomicBool::new(false),
                listen_addrs: RwLock::new(Vec::new()),
                events,
                pending_incoming: pending,
                resolver: std::sync::OnceLock::new(),
                reused_tuples: Mutex::new(HashMap::new()),
                ip_counts: Arc::new(Mutex::new(IpCounts::default())),
                dial_gates: Mutex::new(HashMap::new()),
                backoff: Mutex::new(crate::dialer::Backoff::default()),
                quic: Mutex::new(QuicEndpoints::default()),
                ws_tls,
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                failure: tokio::sync::watch::channel(None).0,
            }),
        })
    }

    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }
    pub fn keypair(&self) -> &Keypair {
        &self.inner.key
    }
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }
    fn emit(&self, event: Event) {
        let _ = self.inner.events.send(event);
    }

    /// Spawns a task tracked by the host; it is cancelled on shutdown.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.inner.shutdown.clone();
        self.inner.tasks.spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = fut => {}
            }
        });
    }

    /// Runs `fut` once shutdown begins, as a part of it: [`Host::shutdown`] waits for it
    /// (within its grace) before it returns. For what must stop with the host and takes
    /// time to (nodes of this process that depend on this one).
    pub fn spawn_at_shutdown<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.inner.shutdown.clone();
        self.inner.tasks.spawn(async move {
            token.cancelled().await;
            fut.await;
        });
    }

    /// Spawns a task that must run until shutdown (an accept loop, a periodic job). If it
    /// ends before — returns or panics — that is logged, counted
    /// (`pylon_task_failures_total{task,how}`) and reported through
    /// [`Host::watch_failure`]: the binary then stops with a non-zero exit, and readiness
    /// fails meanwhile.
    pub fn spawn_supervised<F>(&self, task: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        use futures::FutureExt;
        let host = self.clone();
        let token = self.inner.shutdown.clone();
        self.inner.tasks.spawn(async move {
            let outcome = tokio::select! {
                _ = token.cancelled() => return,
                r = std::panic::AssertUnwindSafe(fut).catch_unwind() => r,
            };
            if token.is_cancelled() {
                return; // ended as shutdown began
            }
            let how = if outcome.is_ok() { "ended" } else { "panicked" };
            tracing::error!("core task {task} {how} unexpectedly; the node must stop");
            host.inner
                .metrics
                .task_failures
                .get_or_create(&crate::metrics::TaskLabels { task, how })
                .inc();
            host.inner.failure.send_if_modified(|f| {
                let first = f.is_none();
                if first {
                    *f = Some(format!("{task} {how}"));
                }
                first
            });
        });
    }

    /// `Some(what)` once a supervised task ended before shutdown (see
    /// [`Host::spawn_supervised`]); the first failure is kept.
    pub fn watch_failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.inner.failure.subscribe()
    }

    /// A token cancelled when the host shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Bound listen addresses, as bound (may be unspecified, e.g. `0.0.0.0`).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        read(&self.inner.listen_addrs).clone()
    }

    /// Listen addresses with unspecified IPs expanded to this machine's interface addresses.
    pub fn interface_listen_addrs(&self) -> Vec<Multiaddr> {
        let mut out = Vec::new();
        for addr in self.listen_addrs() {
            match addr.iter().next() {
                Some(Protocol::Ip4(ip)) if ip.is_unspecified() => {
                    for iface in interface_ips().into_iter().filter(|ip| ip.is_ipv4()) {
                        out.push(replace_ip(&addr, iface));
                    }
                }
                Some(Protocol::Ip6(ip)) if ip.is_unspecified() => {
                    for iface in interface_ips().into_iter().filter(|ip| ip.is_ipv6()) {
                        out.push(replace_ip(&addr, iface));
                    }
                }
                _ => out.push(addr),
            }
        }
        out.dedup();
        out
    }

    /// Asks whoever trims connections (the bootstrap role's shedding) to leave `peer`'s
    /// alone, for `reason` (a relay holding its reservation, say), until [`Host::unprotect`]
    /// with the same reason. The host itself still applies its limits.
    pub fn protect(&self, peer: PeerId, reason: &'static str) {
        let mut p = lock(&self.inner.protected);
        let reasons = p.entry(peer).or_default();
        if !reasons.contains(&reason) {
            reasons.push(reason);
        }
    }

    /// Withdraws a [`Host::protect`].
    pub fn unprotect(&self, peer: &PeerId, reason: &'static str) {
        let mut p = lock(&self.inner.protected);
        if let Some(reasons) = p.get_mut(peer) {
            reasons.retain(|r| *r != reason);
            if reasons.is_empty() {
                p.remove(peer);
            }
        }
    }

    /// Whether some role asked to keep `peer`'s connections.
    pub fn is_protected(&self, peer: &PeerId) -> bool {
        lock(&self.inner.protected).contains_key(peer)
    }

    /// An open connection to `peer`: the oldest direct one, else the oldest through a
    /// relay (so streams move to a direct connection once hole punching made one).
    pub fn connection(&self, peer: &PeerId) -> Option<Connection> {
        let conns = lock(&self.inner.connections);
        let open: Vec<&Connection> = conns.get(peer)?.iter().filter(|c| !c.is_closed()).collect();
        let relayed = |c: &Connection| {
            c.remote_addr()
                .iter()
                .any(|p| matches!(p, Protocol::P2pCircuit))
        };
        open.iter()
            .find(|c| !relayed(c))
            .or(open.first())
            .map(|c| (*c).clone())
    }

    pub fn connections(&self) -> Vec<Connection> {
        lock(&self.inner.connections)
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    /// Peers being dialed through [`Host::connect`] right now.
    pub fn dials_in_flight(&self) -> usize {
        lock(&self.inner.dial_gates).len()
    }

    pub fn connected_peers(&self) -> Vec<PeerId> {
        lock(&self.inner.connections).keys().copied().collect()
    }

    /// Opens a stream to a connected peer.
    pub async fn open_stream<P: AsRef<str>>(
        &self,
        peer: &PeerId,
        protocols: &[P],
    ) -> Result<Stream, StreamError> {
        let conn = self
            .connection(peer)
            .ok_or(StreamError::NotConnected(*peer))?;
        let stream = conn.open_stream(protocols).await?;
        self.notify(|p| p.on_stream_opened(&conn, Direction::Outbound, stream.protocol()));
        self.emit(Event::StreamOpened {
            peer: *peer,
            connection: conn.id(),
            direction: Direction::Outbound,
            protocol: stream.protocol().to_string(),
        });
        Ok(stream)
    }

    /// Closes every connection to `peer`.
    pub fn disconnect(&self, peer: &PeerId) {
        for c in lock(&self.inner.connections)
            .get(peer)
            .into_iter()
            .flatten()
        {
            c.close();
        }
    }

    /// Stops listening, closes every connection politely and waits (bounded) for all tasks.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(grace, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not finish within {grace:?}");
        }
        // Handlers often hold services that hold the host: drop them to break the cycle.
        write(&self.inner.handlers).clear();
        write(&self.inner.protocols).clear();
        // The quinn endpoints (and their UDP sockets) live as long as a handle does: close
        // and drop ours so the ports are free once the connections have drained.
        let quic = std::mem::take(&mut *lock(&self.inner.quic));
        for endpoint in quic
            .listening
            .iter()
            .chain(quic.client_v4.iter())
            .chain(quic.client_v6.iter())
        {
            endpoint.close(0u32.into(), b"shutdown");
        }
    }
}

fn count_error(
    family: &Family<DialErrorLabels, Counter>,
    transport: &'static str,
    error: &'static str,
    fault: Fault,
    ip_version: &'static str,
) {
    family
        .get_or_create(&DialErrorLabels {
            transport,
            error,
            fault: fault.label(),
            ip_version,
        })
        .inc();
}

/// Metric labels of a QUIC connection: TLS 1.3 inside, QUIC's own streams.
fn quic_route(ip_version: &'static str) -> Route {
    Route {
        transport: "quic-v1",
        security: "tls",
        muxer: "quic",
        early_muxer: "false",
        ip_version,
    }
}

/// The IP address an address starts with, if it does.
fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => Some(ip.into()),
        Some(Protocol::Ip6(ip)) => Some(ip.into()),
        _ => None,
    }
}

fn strip_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

fn replace_ip(addr: &Multiaddr, ip: std::net::IpAddr) -> Multiaddr {
    let first = match ip {
        std::net::IpAddr::V4(ip) => Protocol::Ip4(ip),
        std::net::IpAddr::V6(ip) => Protocol::Ip6(ip),
    };
    std::iter::once(first).chain(addr.iter().skip(1)).collect()
}

fn interface_ips() -> Vec<std::net::IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(list) => list.into_iter().map(|i| i.ip()).collect(),
        Err(e) => {
            tracing::debug!("cannot list interfaces: {e}");
            Vec::new()
        }
    }
}

// Locks whose holder panicked still hold consistent data here (every critical section
// is a single insert/remove), so poisoning is ignored rather than propagated.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}
