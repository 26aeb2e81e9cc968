//! The host: owns listeners and connections, runs the upgrade pipeline
//! (multistream-select → Noise → multistream-select → yamux), routes inbound streams to
//! registered protocol handlers, and publishes connection and stream events.
//!
//! It is the one place in the stack that spawns tasks; all of them are tracked and end on
//! [`Host::shutdown`], which closes every connection politely (yamux GoAway) first.
//! Policy — whom to dial, what a protocol does — lives above, in protocols and roles.

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

use crate::admission::{self, Admission, PendingId, Subnet};
use crate::identity::{key_type_label, Keypair, PeerId, PublicKey};
use crate::metrics::{
    ConnLabels, DialErrorLabels, DirLabels, HandshakeLabels, KeyTypeLabels, Metrics, StreamLabels,
};
use crate::multistream::{self, Negotiated};
use crate::transport::{self, RawStream, Target};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(u64);

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Why a dial failed. [`DialError::label`] is the `error` label of `libp2p_swarm_dial_errors_total`.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("no usable address")]
    NoAddresses,
    #[error("unsupported address: {0}")]
    Unsupported(Multiaddr),
    #[error("connection refused")]
    Refused,
    #[error("timed out")]
    Timeout,
    #[error("wrong peer: expected {expected}, got {got}")]
    WrongPeer {
        expected: Box<PeerId>,
        got: Box<PeerId>,
    },
    #[error("no common protocol ({0})")]
    NoCommonProtocol(&'static str),
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("connection limit reached")]
    Limit,
    #[error("dialing ourselves")]
    SelfDial,
    #[error("host is shutting down")]
    ShuttingDown,
    #[error("i/o: {0}")]
    Io(io::Error),
    #[error("dns: {0}")]
    Dns(crate::dns::Error),
    #[error("every address is backing off after recent failures")]
    Backoff,
}

impl DialError {
    pub fn label(&self) -> &'static str {
        match self {
            DialError::NoAddresses => "no_addresses",
            DialError::Unsupported(_) => "unsupported",
            DialError::Refused => "connection_refused",
            DialError::Timeout => "deadline",
            DialError::WrongPeer { .. } => "wrong_peer",
            DialError::NoCommonProtocol(_) => "no_common_protocol",
            DialError::Handshake(_) => "handshake",
            DialError::Limit => "limit",
            DialError::SelfDial => "self_dial",
            DialError::ShuttingDown => "shutting_down",
            DialError::Io(_) => "io",
            DialError::Dns(_) => "dns",
            DialError::Backoff => "backoff",
        }
    }
}

impl From<transport::Error> for DialError {
    fn from(e: transport::Error) -> Self {
        match e {
            transport::Error::Unsupported(a) => DialError::Unsupported(a),
            transport::Error::Refused => DialError::Refused,
            transport::Error::Io(e) => DialError::Io(e),
            e @ (transport::Error::WebSocket(_)
            | transport::Error::NoCertificate
            | transport::Error::ServerName(_)) => DialError::Handshake(e.to_string()),
        }
    }
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("not connected to {0}")]
    NotConnected(PeerId),
    #[error("connection closed")]
    Closed,
    #[error("protocol negotiation timed out")]
    Timeout,
    #[error("remote supports none of the protocols")]
    Unsupported,
    #[error("negotiation: {0}")]
    Negotiation(String),
    #[error("muxer: {0}")]
    Muxer(String),
    #[error("stream limit of the connection reached")]
    Limit,
}

/// What the host tells subscribers. Lagging subscribers lose the oldest events.
#[derive(Debug, Clone)]
pub enum Event {
    ConnectionEstablished(Connection),
    ConnectionClosed {
        id: ConnectionId,
        peer: PeerId,
        direction: Direction,
        reason: String,
    },
    IncomingConnectionError {
        error: String,
    },
    /// An outbound dial failed; `kind` is [`DialError::label`].
    DialFailed {
        addr: Multiaddr,
        kind: &'static str,
        error: String,
    },
    StreamOpened {
        peer: PeerId,
        connection: ConnectionId,
        direction: Direction,
        protocol: String,
    },
    ListenAddrsChanged,
    ProtocolsChanged,
}

enum Command {
    Open(oneshot::Sender<Result<yamux::Stream, String>>),
}

/// How a connection opens outbound streams: yamux streams come from the connection's
/// driver task; QUIC opens them directly on the quinn connection.
enum Opener {
    Yamux(mpsc::Sender<Command>),
    Quic(quinn::Connection),
}

/// A connection's muxer, as handed to its driver.
enum Muxer {
    Yamux(Box<YamuxConnection>),
    Quic(quinn::Connection),
}

/// One stream of a connection, before and after protocol negotiation.
pub(crate) enum Substream {
    Yamux(Compat<yamux::Stream>),
    Quic(crate::quic::QuicStream),
}

impl Substream {
    /// Aborts the stream (what an over-limit inbound stream gets).
    fn reset(self) {
        match self {
            // Dropping a yamux stream that was never closed resets it.
            Substream::Yamux(s) => drop(s),
            Substream::Quic(s) => s.reset(),
        }
    }
}

impl AsyncRead for Substream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Substream::Yamux(s) => Pin::new(s).poll_read(cx, buf),
            Substream::Quic(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Substream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Substream::Yamux(s) => Pin::new(s).poll_write(cx, buf),
            Substream::Quic(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Substream::Yamux(s) => Pin::new(s).poll_flush(cx),
            Substream::Quic(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Substream::Yamux(s) => Pin::new(s).poll_shutdown(cx),
            Substream::Quic(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A handle on an established connection. Cheap to clone.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<ConnInner>,
}

struct ConnInner {
    id: ConnectionId,
    peer: PeerId,
    remote_key: PublicKey,
    remote_addr: Multiaddr,
    local_addr: Multiaddr,
    direction: Direction,
    transport: &'static str,
    security: &'static str,
    muxer: &'static str,
    early_muxer: bool,
    established: Instant,
    negotiation_timeout: Duration,
    opener: Opener,
    close_requested: CancellationToken,
    closed: CancellationToken,
    live_streams: AtomicUsize,
    max_streams: usize,
    metrics: Arc<Metrics>,
    /// An inbound connection's share of the per-IP caps, returned when it closes.
    ip_slot: Mutex<Option<IpSlot>>,
}

/// Inbound connections per source IP and per subnet.
#[derive(Default)]
struct IpCounts {
    ips: HashMap<std::net::IpAddr, usize>,
    subnets: HashMap<Subnet, usize>,
}

/// One inbound connection's place in the per-IP and per-subnet counts.
struct IpSlot {
    counts: Arc<Mutex<IpCounts>>,
    ip: std::net::IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut c = lock(&self.counts);
        let subnet = Subnet::of(self.ip);
        if let Some(n) = c.ips.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.ips.remove(&self.ip);
            }
        }
        if let Some(n) = c.subnets.get_mut(&subnet) {
            *n -= 1;
            if *n == 0 {
                c.subnets.remove(&subnet);
            }
        }
    }
}

/// An inbound handshake's place among the pending ones (see [`admission`]): its
/// deadline, the token a newer handshake cancels to evict it, and the place given back
/// when dropped.
struct PendingSlot {
    table: Arc<Mutex<Admission<CancellationToken>>>,
    id: PendingId,
    deadline: Instant,
    evicted: CancellationToken,
}

/// Why an inbound handshake was cut short.
#[derive(Debug, Clone, Copy)]
enum CutShort {
    Deadline,
    Evicted,
}

impl CutShort {
    /// The `error` label of `libp2p_swarm_handshake_errors_total`.
    fn label(self) -> &'static str {
        match self {
            CutShort::Deadline => "deadline",
            CutShort::Evicted => admission::EVICTED,
        }
    }
}

impl PendingSlot {
    /// Runs `handshake` until it is done, its deadline passes, or it is evicted.
    async fn run<F: Future>(&self, handshake: F) -> Result<F::Output, CutShort> {
        tokio::select! {
            biased;
            _ = self.evicted.cancelled() => Err(CutShort::Evicted),
            r = tokio::time::timeout_at(self.deadline.into(), handshake) => {
                r.map_err(|_| CutShort::Deadline)
            }
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        lock(&self.table).release(self.id);
    }
}

/// The places an inbound connection was admitted with: its share of the per-IP caps,
/// kept while the connection lives, and its pending-handshake place, given back when the
/// handshake ends.
struct Places {
    ip: Option<IpSlot>,
    pending: PendingSlot,
}

/// One of a connection's stream slots, held from accept/open until the stream is dropped.
struct StreamSlot {
    conn: Connection,
}

impl StreamSlot {
    fn try_take(conn: &Connection) -> Option<StreamSlot> {
        let inner = &conn.inner;
        let mut n = inner.live_streams.load(Ordering::Relaxed);
        loop {
            if n >= inner.max_streams {
                return None;
            }
            match inner.live_streams.compare_exchange_weak(
                n,
                n + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(StreamSlot { conn: conn.clone() }),
                Err(actual) => n = actual,
            }
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.conn.inner.live_streams.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.inner.id)
            .field("peer", &self.inner.peer)
            .field("direction", &self.inner.direction)
            .finish()
    }
}

impl Connection {
    pub fn id(&self) -> ConnectionId {
        self.inner.id
    }
    pub fn peer(&self) -> PeerId {
        self.inner.peer
    }
    pub fn remote_key(&self) -> &PublicKey {
        &self.inner.remote_key
    }
    /// The remote's address as we see it (what identify reports as "observed").
    pub fn remote_addr(&self) -> &Multiaddr {
        &self.inner.remote_addr
    }
    pub fn local_addr(&self) -> &Multiaddr {
        &self.inner.local_addr
    }
    pub fn direction(&self) -> Direction {
        self.inner.direction
    }
    pub fn established(&self) -> Instant {
        self.inner.established
    }
    /// The transport of the connection: `tcp`, `quic-v1`, `ws`, `wss` or `memory`.
    pub fn transport(&self) -> &'static str {
        self.inner.transport
    }
    /// The security protocol of the connection: `noise` or `tls` (QUIC's is always `tls`).
    pub fn security(&self) -> &'static str {
        self.inner.security
    }
    /// The stream muxer: `yamux`, or `quic` for QUIC's native streams.
    pub fn muxer(&self) -> &'static str {
        self.inner.muxer
    }
    /// True when the muxer was agreed inside the security handshake.
    pub fn early_muxer(&self) -> bool {
        self.inner.early_muxer
    }
    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }
    /// Resolves once the connection is gone.
    pub async fn closed(&self) {
        self.inner.closed.cancelled().await
    }

    /// Opens a stream and negotiates the first of `protocols` the remote supports.
    pub async fn open_stream<P: AsRef<str>>(&self, protocols: &[P]) -> Result<Stream, StreamError> {
        let (mut io, slot) = self.open_raw().await?;
        let timeout = self.inner.negotiation_timeout;
        let protocol =
            match tokio::time::timeout(timeout, multistream::dialer_select(&mut io, protocols))
                .await
            {
                Err(_) => return Err(StreamError::Timeout),
                Ok(Err(multistream::Error::NoCommonProtocol)) => {
                    return Err(StreamError::Unsupported)
                }
                Ok(Err(e)) => return Err(StreamError::Negotiation(e.to_string())),
                Ok(Ok(p)) => p,
            };
        Ok(Stream::new(
            Negotiated::done(io),
            protocol,
            slot,
            Direction::Outbound,
        ))
    }

    /// Opens a stream proposing `protocol` lazily: the proposal leaves with the first
    /// payload and the answer is checked before the first read, saving a round trip. If
    /// the remote refuses, that first read fails with [`multistream::NotSupported`].
    pub async fn open_stream_lazy(&self, protocol: &str) -> Result<Stream, StreamError> {
        let (raw, slot) = self.open_raw().await?;
        Ok(Stream::new(
            Negotiated::lazy(raw, protocol),
            protocol.to_string(),
            slot,
            Direction::Outbound,
        ))
    }

    async fn open_raw(&self) -> Result<(Substream, StreamSlot), StreamError> {
        let slot = StreamSlot::try_take(self).ok_or(StreamError::Limit)?;
        let raw = tokio::time::timeout(self.inner.negotiation_timeout, async {
            match &self.inner.opener {
                Opener::Yamux(cmd) => {
                    let (tx, rx) = oneshot::channel();
                    cmd.send(Command::Open(tx))
                        .await
                        .map_err(|_| StreamError::Closed)?;
                    let stream = rx
                        .await
                        .map_err(|_| StreamError::Closed)?
                        .map_err(StreamError::Muxer)?;
                    Ok(Substream::Yamux(stream.compat()))
                }
                Opener::Quic(conn) => {
                    let (send, recv) = conn.open_bi().await.map_err(|e| match e {
                        quinn::ConnectionError::LocallyClosed => StreamError::Closed,
                        other => StreamError::Muxer(other.to_string()),
                    })?;
                    Ok(Substream::Quic(crate::quic::QuicStream::new(send, recv)))
                }
            }
        })
        .await
        .map_err(|_| StreamError::Timeout)??;
        Ok((raw, slot))
    }

    /// Asks the connection to close politely (yamux GoAway then the socket, or a QUIC
    /// CONNECTION_CLOSE).
    pub fn close(&self) {
        self.inner.close_requested.cancel();
    }

    /// Streams open on this connection now.
    pub fn stream_count(&self) -> usize {
        self.inner.live_streams.load(Ordering::Relaxed)
    }
}

/// A negotiated stream. Reads and writes go straight to the yamux or QUIC stream.
pub struct Stream {
    io: Negotiated<Substream>,
    protocol: String,
    peer: PeerId,
    slot: StreamSlot,
    direction: Direction,
    metrics: Arc<Metrics>,
}

impl Stream {
    /// `protocol` is always one we proposed or registered, so the label stays bounded.
    fn new(
        io: Negotiated<Substream>,
        protocol: String,
        slot: StreamSlot,
        direction: Direction,
    ) -> Self {
        let metrics = slot.conn.inner.metrics.clone();
        metrics
            .streams_opened
            .get_or_create(&StreamLabels {
                dir: direction.as_str(),
                protocol: protocol.clone(),
            })
            .inc();
        metrics
            .streams
            .get_or_create(&DirLabels {
                dir: direction.as_str(),
            })
            .inc();
        Stream {
            io,
            protocol,
            peer: slot.conn.peer(),
            slot,
            direction,
            metrics,
        }
    }
    pub fn protocol(&self) -> &str {
        &self.protocol
    }
    pub fn peer(&self) -> PeerId {
        self.peer
    }
    pub fn connection(&self) -> &Connection {
        &self.slot.conn
    }
    pub fn direction(&self) -> Direction {
        self.direction
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.metrics
            .streams
            .get_or_create(&DirLabels {
                dir: self.direction.as_str(),
            })
            .dec();
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// An inbound protocol handler: called with each negotiated stream, in its own task.
pub type Handler = Arc<dyn Fn(Stream) -> BoxFuture<'static, ()> + Send + Sync>;

/// Wraps an async closure as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Stream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |s| Box::pin(f(s)))
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

/// A caller's share of a peer's dial gate. The map entry goes with the last share, also
/// when a caller's future is cancelled mid-dial, so the map only holds peers being dialed.
struct DialGate<'a> {
    gates: &'a Mutex<HashMap<PeerId, Arc<tokio::sync::Mutex<()>>>>,
    peer: PeerId,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> DialGate<'a> {
    fn enter(gates: &'a Mutex<HashMap<PeerId, Arc<tokio::sync::Mutex<()>>>>, peer: PeerId) -> Self {
        let gate = lock(gates).entry(peer).or_default().clone();
        DialGate { gates, peer, gate }
    }
}

impl Drop for DialGate<'_> {
    fn drop(&mut self) {
        let mut gates = lock(self.gates);
        // Ours and the map's: nobody else is waiting.
        if Arc::strong_count(&self.gate) <= 2 {
            gates.remove(&self.peer);
        }
    }
}

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
        .map_err(|e| crate::secure::Error::Handshake("wss", e.to_string()))?;
        let (events, _) = broadcast::channel(1024);
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

    /// A token cancelled when the host shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Registers (or replaces) the handler of an inbound protocol.
    pub fn set_handler(&self, protocol: &str, handler: Handler) {
        write(&self.inner.handlers).insert(protocol.to_string(), handler);
        self.emit(Event::ProtocolsChanged);
    }

    pub fn remove_handler(&self, protocol: &str) {
        write(&self.inner.handlers).remove(protocol);
        self.emit(Event::ProtocolsChanged);
    }

    /// The protocols we serve, sorted.
    pub fn protocols(&self) -> Vec<String> {
        let mut p: Vec<String> = read(&self.inner.handlers).keys().cloned().collect();
        p.sort();
        p
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

    /// Starts listening; returns the bound address (port 0 resolved).
    pub async fn listen(&self, addr: &Multiaddr) -> Result<Multiaddr, transport::Error> {
        let (target, _) = transport::parse(addr)?;
        if let Target::Quic(socket) = target {
            return self.listen_quic(socket);
        }
        let mut listener = transport::Listener::bind(&target, &self.inner.ws_tls).await?;
        let bound = listener.local_addr()?;
        write(&self.inner.listen_addrs).push(bound.clone());
        self.emit(Event::ListenAddrsChanged);
        let host = self.clone();
        let token = self.inner.shutdown.clone();
        let transport_label = target.transport_label();
        let ip_version = target.ip_version();
        let local_addr = bound.clone();
        self.inner.tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => break,
                    a = listener.accept() => a,
                };
                let (raw, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!("accept failed: {e}");
                        // EMFILE and friends: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Dropping `raw` closes the socket.
                let Ok(slot) = host.ip_slot(&remote, transport_label, ip_version) else {
                    continue;
                };
                let Some(pending) = host.pending_slot(ip_of(&remote), transport_label, ip_version)
                else {
                    continue;
                };
                let places = Places { ip: slot, pending };
                let host2 = host.clone();
                let local = local_addr.clone();
                host.spawn(async move {
                    host2
                        .handle_incoming(raw, remote, local, transport_label, ip_version, places)
                        .await;
                });
            }
        });
        Ok(bound)
    }

    fn listen_quic(&self, socket: std::net::SocketAddr) -> Result<Multiaddr, transport::Error> {
        let quic_err = |e: crate::quic::Error| match e {
            crate::quic::Error::Io(e) => transport::Error::Io(e),
            other => transport::Error::Io(io::Error::other(other.to_string())),
        };
        let server = crate::quic::server_config(
            self.inner.security.certificate(),
            self.inner.config.max_streams_per_connection + YAMUX_STREAM_HEADROOM,
        )
        .map_err(quic_err)?;
        let endpoint = crate::quic::bind(socket, Some(server)).map_err(quic_err)?;
        let bound = crate::quic::multiaddr(endpoint.local_addr()?);
        lock(&self.inner.quic).listening.push(endpoint.clone());
        write(&self.inner.listen_addrs).push(bound.clone());
        self.emit(Event::ListenAddrsChanged);
        let host = self.clone();
        let token = self.inner.shutdown.clone();
        let ip_version = if socket.is_ipv4() { "ip4" } else { "ip6" };
        let local_addr = bound.clone();
        self.inner.tasks.spawn(async move {
            loop {
                let incoming = tokio::select! {
                    _ = token.cancelled() => break,
                    i = endpoint.accept() => match i {
                        Some(i) => i,
                        None => break,
                    },
                };
                let remote = crate::quic::multiaddr(incoming.remote_address());
                let Ok(slot) = host.ip_slot(&remote, "quic-v1", ip_version) else {
                    incoming.refuse();
                    continue;
                };
                let ip = Some(incoming.remote_address().ip());
                let Some(pending) = host.pending_slot(ip, "quic-v1", ip_version) else {
                    incoming.refuse();
                    continue;
                };
                let places = Places { ip: slot, pending };
                let host2 = host.clone();
                let local = local_addr.clone();
                host.spawn(async move {
                    host2
                        .handle_incoming_quic(incoming, local, ip_version, places)
                        .await;
                });
            }
        });
        Ok(bound)
    }

    async fn handle_incoming_quic(
        &self,
        incoming: quinn::Incoming,
        local: Multiaddr,
        ip_version: &'static str,
        places: Places,
    ) {
        let Places { ip: slot, pending } = places;
        let started = Instant::now();
        let remote = crate::quic::multiaddr(incoming.remote_address());
        let handshake = async {
            let conn = incoming
                .accept()
                .map_err(|e| DialError::Handshake(e.to_string()))?
                .await
                .map_err(|e| DialError::Handshake(e.to_string()))?;
            let key =
                crate::quic::peer_key(&conn).map_err(|e| DialError::Handshake(e.to_string()))?;
            Ok::<_, DialError>((conn, key))
        };
        let result = pending.run(handshake).await;
        drop(pending);
        let (conn, key) = match result {
            Ok(Ok(ok)) => ok,
            Ok(Err(e)) => return self.inbound_failed("quic-v1", ip_version, &e),
            Err(CutShort::Deadline) => {
                return self.inbound_failed("quic-v1", ip_version, &DialError::Timeout)
            }
            Err(cut @ CutShort::Evicted) => {
                return count_error(
                    &self.inner.metrics.handshake_errors,
                    "quic-v1",
                    cut.label(),
                    ip_version,
                )
            }
        };
        let peer = key.to_peer_id();
        let route = quic_route(ip_version);
        let admitted = self.admit(&peer).and_then(|()| {
            self.observe_handshake(started, route);
            self.establish(
                Muxer::Quic(conn.clone()),
                peer,
                key,
                remote,
                local,
                Direction::Inbound,
                route,
            )
        });
        if let Ok(c) = &admitted {
            *lock(&c.inner.ip_slot) = slot;
        }
        if let Err(e) = admitted {
            conn.close(0u32.into(), b"connection limit");
            count_error(
                &self.inner.metrics.handshake_errors,
                "quic-v1",
                e.label(),
                ip_version,
            );
        }
    }

    /// The endpoint to dial `remote` from: a listening one of the same family whose
    /// address can reach it (so the remote sees our listen port), else a dial-only one.
    fn quic_endpoint_for(
        &self,
        remote: std::net::SocketAddr,
    ) -> Result<quinn::Endpoint, DialError> {
        let mut eps = lock(&self.inner.quic);
        let fits = |ep: &quinn::Endpoint| {
            ep.local_addr().is_ok_and(|l| {
                l.is_ipv4() == remote.is_ipv4()
                    && (l.ip().is_unspecified()
                        || l.ip().is_loopback() == remote.ip().is_loopback())
            })
        };
        if self.inner.config.port_reuse {
            if let Some(ep) = eps.listening.iter().find(|ep| fits(ep)) {
                return Ok(ep.clone());
            }
        }
        let slot = if remote.is_ipv4() {
            &mut eps.client_v4
        } else {
            &mut eps.client_v6
        };
        if let Some(ep) = slot {
            return Ok(ep.clone());
        }
        let any: std::net::SocketAddr = if remote.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let ep = crate::quic::bind(any, None).map_err(|e| DialError::Handshake(e.to_string()))?;
        *slot = Some(ep.clone());
        Ok(ep)
    }

    /// Dials over QUIC: TLS with the expected PeerId checked inside the handshake.
    async fn dial_quic(
        &self,
        remote: std::net::SocketAddr,
        addr: &Multiaddr,
        expected: Option<PeerId>,
    ) -> Result<Connection, DialError> {
        let endpoint = self.quic_endpoint_for(remote)?;
        let (config, setup) = crate::quic::client_config(
            self.inner.security.certificate(),
            expected,
            self.inner.config.max_streams_per_connection + YAMUX_STREAM_HEADROOM,
        )
        .map_err(|e| DialError::Handshake(e.to_string()))?;
        let started = Instant::now();
        let connecting = crate::quic::connect(&endpoint, config, remote);
        let conn = match tokio::time::timeout(self.inner.config.handshake_timeout, connecting).await
        {
            Err(_) => return Err(DialError::Timeout),
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(match (expected, setup.seen_peer()) {
                    (Some(expected), Some(got)) if got != expected => DialError::WrongPeer {
                        expected: Box::new(expected),
                        got: Box::new(got),
                    },
                    _ => match e {
                        crate::quic::Error::Connection(quinn::ConnectionError::TimedOut) => {
                            DialError::Timeout
                        }
                        other => DialError::Handshake(other.to_string()),
                    },
                })
            }
        };
        let key = crate::quic::peer_key(&conn).map_err(|e| DialError::Handshake(e.to_string()))?;
        let peer = key.to_peer_id();
        if peer == self.peer_id() {
            conn.close(0u32.into(), b"self dial");
            return Err(DialError::SelfDial);
        }
        let route = quic_route(if remote.is_ipv4() { "ip4" } else { "ip6" });
        let local = endpoint
            .local_addr()
            .map(crate::quic::multiaddr)
            .map_err(|e| DialError::Handshake(e.to_string()))?;
        let established = self.admit(&peer).and_then(|()| {
            self.observe_handshake(started, route);
            self.establish(
                Muxer::Quic(conn.clone()),
                peer,
                key,
                strip_p2p(addr),
                local,
                Direction::Outbound,
                route,
            )
        });
        if established.is_err() {
            conn.close(0u32.into(), b"connection limit");
        }
        established
    }

    async fn handle_incoming(
        &self,
        raw: transport::Inbound,
        remote: Multiaddr,
        local: Multiaddr,
        transport: &'static str,
        ip_version: &'static str,
        places: Places,
    ) {
        let Places { ip: slot, pending } = places;
        let started = Instant::now();
        let upgraded = pending
            .run(async {
                let raw = raw.upgrade().await?;
                self.upgrade(raw, false, None).await
            })
            .await;
        drop(pending);
        let (mux, peer, key, route) = match upgraded {
            Err(cut) => {
                count_error(
                    &self.inner.metrics.handshake_errors,
                    transport,
                    cut.label(),
                    ip_version,
                );
                if let CutShort::Deadline = cut {
                    self.emit(Event::IncomingConnectionError {
                        error: "handshake timed out".into(),
                    });
                }
                return;
            }
            Ok(Err(e)) => return self.inbound_failed(transport, ip_version, &e),
            Ok(Ok(u)) => u,
        };
        if let Err(e) = self.admit(&peer) {
            count_error(
                &self.inner.metrics.handshake_errors,
                transport,
                e.label(),
                ip_version,
            );
            return; // dropping `mux` closes the socket
        }
        let route = Route {
            transport,
            ip_version,
            ..route
        };
        self.observe_handshake(started, route);
        match self.establish(mux, peer, key, remote, local, Direction::Inbound, route) {
            Ok(c) => *lock(&c.inner.ip_slot) = slot,
            Err(e) => count_error(
                &self.inner.metrics.handshake_errors,
                transport,
                e.label(),
                ip_version,
            ),
        }
    }

    /// A place for one more inbound connection from `remote`'s IP, `Ok(None)` when no
    /// cap is configured, `Err` (counted) when the IP or its subnet is at its cap.
    fn ip_slot(
        &self,
        remote: &Multiaddr,
        transport: &'static str,
        ip_version: &'static str,
    ) -> Result<Option<IpSlot>, ()> {
        let (per_ip, per_subnet) = (
            self.inner.config.max_incoming_per_ip,
            self.inner.config.max_incoming_per_subnet,
        );
        if per_ip == 0 && per_subnet == 0 {
            return Ok(None);
        }
        let Some(ip) = ip_of(remote) else {
            return Ok(None);
        };
        let subnet = Subnet::of(ip);
        let mut c = lock(&self.inner.ip_counts);
        let refused = if per_ip > 0 && c.ips.get(&ip).copied().unwrap_or(0) >= per_ip {
            Some("ip_limit")
        } else if per_subnet > 0 && c.subnets.get(&subnet).copied().unwrap_or(0) >= per_subnet {
            Some("subnet_limit")
        } else {
            None
        };
        if let Some(reason) = refused {
            drop(c);
            count_error(
                &self.inner.metrics.handshake_errors,
                transport,
                reason,
                ip_version,
            );
            return Err(());
        }
        *c.ips.entry(ip).or_insert(0) += 1;
        *c.subnets.entry(subnet).or_insert(0) += 1;
        Ok(Some(IpSlot {
            counts: self.inner.ip_counts.clone(),
            ip,
        }))
    }

    /// A place among the inbound handshakes in progress on `transport`, or `None`
    /// (counted) when the source's IP or subnet holds its budget already. When the
    /// transport's places are all taken, an older handshake is evicted to make room; it
    /// counts itself as it ends.
    fn pending_slot(
        &self,
        ip: Option<std::net::IpAddr>,
        transport: &'static str,
        ip_version: &'static str,
    ) -> Option<PendingSlot> {
        let token = CancellationToken::new();
        let admitted = lock(&self.inner.pending_incoming).handle_incoming(
            Instant::now(),
            transport,
            ip,
            token.clone(),
        );
        match admitted {
            Ok(a) => {
                if let Some(victim) = a.evicted {
                    victim.cancel();
                }
                Some(PendingSlot {
                    table: self.inner.pending_incoming.clone(),
                    id: a.id,
                    deadline: a.deadline,
                    evicted: token,
                })
            }
            Err(refusal) => {
                count_error(
                    &self.inner.metrics.handshake_errors,
                    transport,
                    refusal.label(),
                    ip_version,
                );
                None
            }
        }
    }

    /// Inbound connections in their handshake on `transport` (a label: `"tcp"`,
    /// `"quic-v1"`, `"ws"`, ...).
    pub fn pending_incoming(&self, transport: &str) -> usize {
        lock(&self.inner.pending_incoming).pending(transport)
    }

    /// Counts and reports an inbound connection whose handshake failed.
    fn inbound_failed(&self, transport: &'static str, ip_version: &'static str, e: &DialError) {
        count_error(
            &self.inner.metrics.handshake_errors,
            transport,
            e.label(),
            ip_version,
        );
        tracing::debug!("inbound {transport} handshake failed: {e}");
        self.emit(Event::IncomingConnectionError {
            error: e.to_string(),
        });
    }

    fn admit(&self, peer: &PeerId) -> Result<(), DialError> {
        let conns = lock(&self.inner.connections);
        let total: usize = conns.values().map(Vec::len).sum();
        let per_peer = conns.get(peer).map_or(0, Vec::len);
        if total >= self.inner.config.max_connections
            || per_peer >= self.inner.config.max_connections_per_peer
        {
            return Err(DialError::Limit);
        }
        Ok(())
    }

    fn observe_handshake(&self, started: Instant, route: Route) {
        self.inner
            .metrics
            .handshake_latency
            .get_or_create(&HandshakeLabels {
                transport: route.transport,
                security: route.security,
                muxer: route.muxer,
                early_muxer: route.early_muxer,
                ip_version: route.ip_version,
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// multistream-select /noise or /tls/1.0.0 → handshake → multistream-select
    /// /yamux/1.0.0 → yamux.
    async fn upgrade(
        &self,
        raw: RawStream,
        dialer: bool,
        expected: Option<PeerId>,
    ) -> Result<(Muxer, PeerId, PublicKey, Route), DialError> {
        let secured = if dialer {
            crate::secure::outbound(raw, &self.inner.security, expected).await
        } else {
            crate::secure::inbound(raw, &self.inner.security).await
        }
        .map_err(|e| match e {
            crate::secure::Error::WrongPeer { expected, got } => {
                DialError::WrongPeer { expected, got }
            }
            crate::secure::Error::NoCommonProtocol => DialError::NoCommonProtocol("security"),
            other => DialError::Handshake(other.to_string()),
        })?;
        let security = secured.security.label();
        let early = match secured.muxer.as_deref() {
            None => false,
            Some(YAMUX_PROTOCOL) => true,
            Some(other) => {
                return Err(DialError::Handshake(format!(
                    "handshake agreed on unknown muxer {other:?}"
                )))
            }
        };
        let mut stream = secured.stream;
        // Agreed inside the handshake: no multistream-select round for the muxer at all.
        // Otherwise the dialer proposes `/yamux/1.0.0` lazily, with its first yamux frame.
        let stream = if early {
            Negotiated::done(stream)
        } else if dialer {
            Negotiated::lazy(stream, YAMUX_PROTOCOL)
        } else {
            multistream::listener_select(&mut stream, |p| p == YAMUX_PROTOCOL)
                .await
                .map_err(|e| match e {
                    multistream::Error::NoCommonProtocol | multistream::Error::TooManyProposals => {
                        DialError::NoCommonProtocol("muxer")
                    }
                    other => DialError::Handshake(format!("muxer negotiation: {other}")),
                })?;
            Negotiated::done(stream)
        };
        let mut cfg = yamux::Config::default();
        let streams =
            self.inner.config.max_streams_per_connection.clamp(1, 4096) + YAMUX_STREAM_HEADROOM;
        cfg.set_max_num_streams(streams);
        cfg.set_max_connection_receive_window(Some(streams * 256 * 1024));
        cfg.set_split_send_size(YAMUX_SPLIT_SEND_SIZE);
        let mode = if dialer {
            yamux::Mode::Client
        } else {
            yamux::Mode::Server
        };
        Ok((
            Muxer::Yamux(Box::new(yamux::Connection::new(stream.compat(), cfg, mode))),
            secured.remote_peer,
            secured.remote_key,
            Route {
                transport: "",
                security,
                muxer: "yamux",
                early_muxer: if early { "true" } else { "false" },
                ip_version: "",
            },
        ))
    }

    /// The listen port to dial `target` from, unless we did so within the last
    /// TIME_WAIT period: the same 4-tuple again can cost a 1 s SYN retransmission (seen as a
    /// p99 of ~1 s when one peer is redialed in a loop).
    fn reuse_port_for(&self, target: &Target) -> Option<u16> {
        let port = self.listen_port_for(target)?;
        let Target::Tcp(remote) = target else {
            return None;
        };
        let now = Instant::now();
        let mut recent = lock(&self.inner.reused_tuples);
        if recent
            .get(remote)
            .is_some_and(|t| now.duration_since(*t) < TIME_WAIT)
        {
            return None;
        }
        if recent.len() >= MAX_REUSED_TUPLES {
            recent.retain(|_, t| now.duration_since(*t) < TIME_WAIT);
            if recent.len() >= MAX_REUSED_TUPLES {
                return None; // too many fresh entries: skip reuse rather than grow
            }
        }
        recent.insert(*remote, now);
        Some(port)
    }

    /// The TCP port we listen on for the target's IP family, if any.
    fn listen_port_for(&self, target: &Target) -> Option<u16> {
        let Target::Tcp(addr) = target else {
            return None;
        };
        self.listen_addrs()
            .iter()
            .find_map(|a| match transport::parse(a) {
                Ok((Target::Tcp(l), _)) if l.is_ipv4() == addr.is_ipv4() => Some(l.port()),
                _ => None,
            })
    }

    /// The DNS resolver, built on first use from the configuration.
    fn resolver(&self) -> Result<Arc<crate::dns::Resolver>, DialError> {
        if let Some(r) = self.inner.resolver.get() {
            return Ok(r.clone());
        }
        let r =
            Arc::new(crate::dns::Resolver::new(&self.inner.config.dns).map_err(DialError::Dns)?);
        Ok(self.inner.resolver.get_or_init(|| r).clone())
    }

    /// Dials an address; a `/p2p/` suffix is checked against the peer we reach. DNS
    /// addresses are resolved first and the results tried in order.
    pub async fn dial(&self, addr: &Multiaddr) -> Result<Connection, DialError> {
        let result = self.dial_any(addr).await;
        if let Err(e) = &result {
            self.emit(Event::DialFailed {
                addr: addr.clone(),
                kind: e.label(),
                error: e.to_string(),
            });
        }
        result
    }

    async fn dial_any(&self, addr: &Multiaddr) -> Result<Connection, DialError> {
        if !crate::dns::is_dns(addr) {
            return self.dial_resolved(addr).await;
        }
        let resolved = match self.resolver()?.resolve(addr).await {
            Ok(r) => r,
            Err(e) => {
                count_error(&self.inner.metrics.dial_errors, "dns", "dns", "");
                return Err(DialError::Dns(e));
            }
        };
        let mut last = DialError::NoAddresses;
        for a in resolved {
            match self.dial_resolved(&a).await {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn dial_resolved(&self, addr: &Multiaddr) -> Result<Connection, DialError> {
        let (target, expected) = match transport::parse(addr) {
            Ok(t) => t,
            Err(e) => {
                count_error(&self.inner.metrics.dial_errors, "other", "unsupported", "");
                return Err(e.into());
            }
        };
        if expected == Some(self.peer_id()) {
            return Err(DialError::SelfDial);
        }
        let transport = target.transport_label();
        let ip_version = target.ip_version();
        let result = self.dial_target(&target, addr, expected).await;
        if let Err(e) = &result {
            count_error(
                &self.inner.metrics.dial_errors,
                transport,
                e.label(),
                ip_version,
            );
        }
        result
    }

    async fn dial_target(
        &self,
        target: &Target,
        addr: &Multiaddr,
        expected: Option<PeerId>,
    ) -> Result<Connection, DialError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(DialError::ShuttingDown);
        }
        if let Some(peer) = &expected {
            self.admit(peer)?;
        }
        if let Target::Quic(remote) = target {
            return self.dial_quic(*remote, addr, expected).await;
        }
        let cfg = &self.inner.config;
        let reuse = if cfg.port_reuse {
            self.reuse_port_for(target)
        } else {
            None
        };
        let (raw, local) = tokio::time::timeout(
            cfg.dial_timeout,
            transport::dial(target, reuse, &self.inner.ws_tls),
        )
        .await
        .map_err(|_| DialError::Timeout)??;
        let started = Instant::now();
        let (mux, peer, key, route) =
            tokio::time::timeout(cfg.handshake_timeout, self.upgrade(raw, true, expected))
                .await
                .map_err(|_| DialError::Timeout)??;
        if peer == self.peer_id() {
            return Err(DialError::SelfDial);
        }
        self.admit(&peer)?;
        let route = Route {
            transport: target.transport_label(),
            ip_version: target.ip_version(),
            ..route
        };
        self.observe_handshake(started, route);
        self.establish(
            mux,
            peer,
            key,
            strip_p2p(addr),
            local,
            Direction::Outbound,
            route,
        )
    }

    /// Returns an open connection to `peer`, or dials `addrs` in order until one works.
    pub async fn connect(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
    ) -> Result<Connection, DialError> {
        if let Some(c) = self.connection(&peer) {
            return Ok(c);
        }
        // One dial per peer at a time: later callers wait, then reuse its connection.
        let gate = DialGate::enter(&self.inner.dial_gates, peer);
        let _turn = gate.gate.lock().await;
        match self.connection(&peer) {
            Some(c) => Ok(c),
            None => self.connect_ranked(peer, addrs).await,
        }
    }

    /// Tries the ranked, not backed-off addresses, staggered (happy eyeballs): the first
    /// connection wins and the other attempts are dropped.
    async fn connect_ranked(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
    ) -> Result<Connection, DialError> {
        use futures::StreamExt;
        let local =
            crate::dialer::Local::from_addrs(&self.listen_addrs(), &self.interface_listen_addrs());
        let now = Instant::now();
        let ranked = crate::dialer::rank(addrs, local);
        let candidates: Vec<Multiaddr> = {
            let backoff = lock(&self.inner.backoff);
            ranked
                .iter()
                .filter(|a| !backoff.is_backing_off(a, now))
                .cloned()
                .collect()
        };
        if candidates.is_empty() {
            return Err(if ranked.is_empty() {
                DialError::NoAddresses
            } else {
                DialError::Backoff
            });
        }
        // Happy eyeballs: a new attempt starts every STAGGER, or at once when one fails.
        let mut queue: VecDeque<Multiaddr> = candidates
            .into_iter()
            .take(crate::dialer::MAX_PARALLEL)
            .collect();
        let attempt = |addr: Multiaddr| {
            let with_peer = match addr.iter().last() {
                Some(Protocol::P2p(_)) => addr.clone(),
                _ => addr.clone().with(Protocol::P2p(peer)),
            };
            async move {
                let result = self.dial(&with_peer).await;
                (addr, result)
            }
        };
        let mut attempts = futures::stream::FuturesUnordered::new();
        let mut last = DialError::NoAddresses;
        let mut timer = std::pin::pin!(tokio::time::sleep(std::time::Duration::ZERO));
        loop {
            tokio::select! {
                _ = &mut timer, if !queue.is_empty() => {
                    if let Some(addr) = queue.pop_front() {
                        attempts.push(attempt(addr));
                    }
                    timer.as_mut().reset(tokio::time::Instant::now() + crate::dialer::STAGGER);
                }
                Some((addr, result)) = attempts.next(), if !attempts.is_empty() => match result {
                    Ok(c) => {
                        lock(&self.inner.backoff).succeeded(&addr);
                        return Ok(c);
                    }
                    Err(e) => {
                        lock(&self.inner.backoff).failed(&addr, Instant::now());
                        last = e;
                        // Fire the next attempt now rather than at the next tick.
                        timer.as_mut().reset(tokio::time::Instant::now());
                    }
                },
                else => break,
            }
        }
        Err(last)
    }

    #[allow(clippy::too_many_arguments)]
    fn establish(
        &self,
        mux: Muxer,
        peer: PeerId,
        remote_key: PublicKey,
        remote_addr: Multiaddr,
        local_addr: Multiaddr,
        direction: Direction,
        route: Route,
    ) -> Result<Connection, DialError> {
        let (opener, cmd_rx) = match &mux {
            Muxer::Yamux(_) => {
                let (tx, rx) = mpsc::channel(32);
                (Opener::Yamux(tx), Some(rx))
            }
            Muxer::Quic(c) => (Opener::Quic(c.clone()), None),
        };
        let id = ConnectionId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let conn = Connection {
            inner: Arc::new(ConnInner {
                id,
                peer,
                remote_key,
                remote_addr,
                local_addr,
                direction,
                transport: route.transport,
                security: route.security,
                muxer: route.muxer,
                early_muxer: route.early_muxer == "true",
                established: Instant::now(),
                negotiation_timeout: self.inner.config.negotiation_timeout,
                opener,
                close_requested: CancellationToken::new(),
                closed: CancellationToken::new(),
                live_streams: AtomicUsize::new(0),
                ip_slot: Mutex::new(None),
                max_streams: self.inner.config.max_streams_per_connection.max(1),
                metrics: self.inner.metrics.clone(),
            }),
        };
        {
            // Check and insert under one lock, so concurrent handshakes cannot overshoot.
            let mut conns = lock(&self.inner.connections);
            let total: usize = conns.values().map(Vec::len).sum();
            let per_peer = conns.get(&peer).map_or(0, Vec::len);
            if total >= self.inner.config.max_connections
                || per_peer >= self.inner.config.max_connections_per_peer
            {
                return Err(DialError::Limit); // dropping `mux` closes the socket
            }
            conns.entry(peer).or_default().push(conn.clone());
        }
        let labels = ConnLabels {
            dir: direction.as_str(),
            transport: route.transport,
            security: route.security,
            muxer: route.muxer,
            early_muxer: route.early_muxer,
            ip_version: route.ip_version,
        };
        let m = &self.inner.metrics;
        m.connections_opened.get_or_create(&labels).inc();
        m.connections
            .get_or_create(&DirLabels {
                dir: direction.as_str(),
            })
            .inc();
        m.key_types
            .get_or_create(&KeyTypeLabels {
                dir: direction.as_str(),
                key_type: key_type_label(conn.remote_key()),
            })
            .inc();
        tracing::debug!(%peer, %id, dir = direction.as_str(), "connection established");
        self.emit(Event::ConnectionEstablished(conn.clone()));
        let host = self.clone();
        let conn2 = conn.clone();
        // Not `spawn`: the driver must see shutdown as a polite close, not an abort.
        self.inner.tasks.spawn(async move {
            let reason = match (mux, cmd_rx) {
                (Muxer::Yamux(mux), Some(cmds)) => host.drive(*mux, cmds, conn2.clone()).await,
                (Muxer::Quic(quic), _) => host.drive_quic(quic, conn2.clone()).await,
                (Muxer::Yamux(_), None) => "no command channel".to_string(),
            };
            host.remove_connection(&conn2, labels, reason);
        });
        Ok(conn)
    }

    fn remove_connection(&self, conn: &Connection, labels: ConnLabels, reason: String) {
        drop(lock(&conn.inner.ip_slot).take());
        {
            let mut conns = lock(&self.inner.connections);
            if let Some(list) = conns.get_mut(&conn.peer()) {
                list.retain(|c| c.id() != conn.id());
                if list.is_empty() {
                    conns.remove(&conn.peer());
                }
            }
        }
        conn.inner.closed.cancel();
        let m = &self.inner.metrics;
        m.connections_closed.get_or_create(&labels).inc();
        m.connection_duration
            .get_or_create(&labels)
            .observe(conn.established().elapsed().as_secs_f64());
        m.connections
            .get_or_create(&DirLabels {
                dir: conn.direction().as_str(),
            })
            .dec();
        tracing::debug!(peer = %conn.peer(), id = %conn.id(), %reason, "connection closed");
        self.emit(Event::ConnectionClosed {
            id: conn.id(),
            peer: conn.peer(),
            direction: conn.direction(),
            reason,
        });
    }

    /// Runs one connection's muxer until it ends; returns why it ended.
    async fn drive(
        &self,
        mut mux: YamuxConnection,
        mut cmds: mpsc::Receiver<Command>,
        conn: Connection,
    ) -> String {
        let mut opening: VecDeque<oneshot::Sender<Result<yamux::Stream, String>>> = VecDeque::new();
        let mut closing = false;
        let mut close_deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut shutdown_wait = std::pin::pin!(self.inner.shutdown.clone().cancelled_owned());
        let mut close_wait = std::pin::pin!(conn.inner.close_requested.clone().cancelled_owned());
        poll_fn(|cx| loop {
            if !closing
                && (shutdown_wait.as_mut().poll(cx).is_ready()
                    || close_wait.as_mut().poll(cx).is_ready())
            {
                closing = true;
            }
            // Requests whose caller gave up (timed out) are dropped; the queue is bounded,
            // so a remote that never acknowledges streams cannot make it grow.
            opening.retain(|tx| !tx.is_closed());
            while !closing && opening.len() < MAX_PENDING_OPENS {
                match cmds.poll_recv(cx) {
                    Poll::Ready(Some(Command::Open(tx))) => opening.push_back(tx),
                    Poll::Ready(None) => closing = true,
                    Poll::Pending => break,
                }
            }
            let queue_was_full = opening.len() >= MAX_PENDING_OPENS;
            if closing {
                for tx in opening.drain(..) {
                    let _ = tx.send(Err("connection closing".into()));
                }
                // A remote that stops reading cannot hold the close open forever.
                let deadline = close_deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_TIMEOUT)));
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready("close timed out".to_string());
                }
                return match mux.poll_close(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready("closed locally".to_string()),
                    Poll::Ready(Err(e)) => Poll::Ready(format!("error while closing: {e}")),
                    Poll::Pending => Poll::Pending,
                };
            }
            while !opening.is_empty() {
                match mux.poll_new_outbound(cx) {
                    Poll::Ready(Ok(stream)) => {
                        if let Some(tx) = opening.pop_front() {
                            let _ = tx.send(Ok(stream));
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        for tx in opening.drain(..) {
                            let _ = tx.send(Err(e.to_string()));
                        }
                        return Poll::Ready(format!("muxer error: {e}"));
                    }
                    Poll::Pending => break,
                }
            }
            match mux.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    self.handle_inbound_stream(Substream::Yamux(stream.compat()), &conn)
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(format!("muxer error: {e}")),
                Poll::Ready(None) => return Poll::Ready("closed by remote".to_string()),
                // The command queue was not polled while full: poll it again now that
                // requests left it, or their wake-up would be lost.
                Poll::Pending if queue_was_full && opening.len() < MAX_PENDING_OPENS => continue,
                Poll::Pending => return Poll::Pending,
            }
        })
        .await
    }

    /// Runs a QUIC connection until it ends: quinn drives the protocol itself; here inbound
    /// streams are accepted and a close is requested.
    async fn drive_quic(&self, quic: quinn::Connection, conn: Connection) -> String {
        let shutdown = self.inner.shutdown.clone();
        let close = conn.inner.close_requested.clone();
        let most = crate::quic::stream_limit(
            self.inner.config.max_streams_per_connection + YAMUX_STREAM_HEADROOM,
        );
        let mut credit = crate::quic::INITIAL_STREAMS.min(most);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = close.cancelled() => break,
                accepted = quic.accept_bi() => match accepted {
                    Ok((send, recv)) => {
                        self.handle_inbound_stream(
                            Substream::Quic(crate::quic::QuicStream::new(send, recv)),
                            &conn,
                        );
                        // Half the credit in use: double it (up to the limit) before the
                        // remote has to wait for it.
                        let live = conn.inner.live_streams.load(Ordering::Relaxed);
                        if credit < most && live.saturating_mul(2) >= credit as usize {
                            credit = credit.saturating_mul(2).min(most);
                            quic.set_max_concurrent_bi_streams(credit.into());
                        }
                    }
                    Err(quinn::ConnectionError::ApplicationClosed(_)) => {
                        return "closed by remote".to_string()
                    }
                    Err(e) => return format!("quic: {e}"),
                },
            }
        }
        quic.close(0u32.into(), b"");
        "closed locally".to_string()
    }

    fn handle_inbound_stream(&self, stream: Substream, conn: &Connection) {
        let Some(slot) = StreamSlot::try_take(conn) else {
            // Over our limit: the stream is reset; the connection lives on.
            self.inner
                .metrics
                .protocol_error(conn.muxer(), "stream_limit");
            stream.reset();
            return;
        };
        let host = self.clone();
        self.spawn(async move {
            let conn = slot.conn.clone();
            let mut io = stream;
            let timeout = host.inner.config.negotiation_timeout;
            let handlers = &host.inner.handlers;
            let negotiated = tokio::time::timeout(
                timeout,
                multistream::listener_select(&mut io, |p| read(handlers).contains_key(p)),
            )
            .await;
            let protocol = match negotiated {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    let reason = match e {
                        multistream::Error::TooManyProposals => "too_many_proposals",
                        multistream::Error::Io(_) => "io",
                        _ => "malformed",
                    };
                    host.inner.metrics.protocol_error("multistream", reason);
                    return;
                }
                Err(_) => {
                    host.inner.metrics.protocol_error("multistream", "timeout");
                    return;
                }
            };
            let Some(handler) = read(handlers).get(&protocol).cloned() else {
                return; // removed during negotiation
            };
            host.emit(Event::StreamOpened {
                peer: conn.peer(),
                connection: conn.id(),
                direction: Direction::Inbound,
                protocol: protocol.clone(),
            });
            let stream = Stream::new(Negotiated::done(io), protocol, slot, Direction::Inbound);
            handler(stream).await;
        });
    }

    /// Any open connection to `peer` (the oldest).
    pub fn connection(&self, peer: &PeerId) -> Option<Connection> {
        lock(&self.inner.connections)
            .get(peer)
            .and_then(|l| l.iter().find(|c| !c.is_closed()).cloned())
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
    ip_version: &'static str,
) {
    family
        .get_or_create(&DialErrorLabels {
            transport,
            error,
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
