//! Connections and streams: what the host hands out, and the per-connection
//! command channel and stream slots behind them.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(pub(super) u64);

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

pub(super) enum Command {
    Open(oneshot::Sender<Result<yamux::Stream, StreamError>>),
}

/// How a connection opens outbound streams: yamux streams come from the connection's
/// driver task; QUIC opens them directly on the quinn connection.
pub(super) enum Opener {
    Yamux(mpsc::Sender<Command>),
    Quic(quinn::Connection),
}

/// A connection's muxer, as handed to its driver.
pub(super) enum Muxer {
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
    pub(super) fn reset(self) {
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
    pub(super) inner: Arc<ConnInner>,
}

pub(super) struct ConnInner {
    pub(super) id: ConnectionId,
    pub(super) peer: PeerId,
    pub(super) remote_key: PublicKey,
    pub(super) remote_addr: Multiaddr,
    pub(super) local_addr: Multiaddr,
    pub(super) direction: Direction,
    pub(super) transport: &'static str,
    pub(super) security: &'static str,
    pub(super) muxer: &'static str,
    pub(super) early_muxer: bool,
    pub(super) established: Instant,
    pub(super) negotiation_timeout: Duration,
    pub(super) opener: Opener,
    pub(super) close_requested: CancellationToken,
    pub(super) closed: CancellationToken,
    pub(super) live_streams: AtomicUsize,
    pub(super) max_streams: usize,
    pub(super) metrics: Arc<Metrics>,
    /// An inbound connection's share of the per-IP caps, returned when it closes.
    pub(super) ip_slot: Mutex<Option<IpSlot>>,
}

/// One of a connection's stream slots, held from accept/open until the stream is dropped.
pub(super) struct StreamSlot {
    pub(super) conn: Connection,
    /// The stream's place in the resource metrics' scopes.
    pub(super) usage: crate::resource_metrics::StreamUse,
}

impl StreamSlot {
    /// A slot for a stream in `dir`, or `None` (counted as blocked) when the connection
    /// holds its limit.
    pub(super) fn try_take(conn: &Connection, dir: Direction) -> Option<StreamSlot> {
        let inner = &conn.inner;
        let resources = &inner.metrics.resources;
        let mut n = inner.live_streams.load(Ordering::Relaxed);
        loop {
            if n >= inner.max_streams {
                resources.blocked(dir.as_str(), "conn", "stream");
                return None;
            }
            match inner.live_streams.compare_exchange_weak(
                n,
                n + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(StreamSlot {
                        conn: conn.clone(),
                        usage: resources.stream_opening(dir.as_str(), inner.peer),
                    })
                }
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
                Ok(Err(e)) => return Err(StreamError::Negotiation(e)),
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

    pub(super) async fn open_raw(&self) -> Result<(Substream, StreamSlot), StreamError> {
        let slot = StreamSlot::try_take(self, Direction::Outbound).ok_or(StreamError::Limit)?;
        let raw = tokio::time::timeout(self.inner.negotiation_timeout, async {
            match &self.inner.opener {
                Opener::Yamux(cmd) => {
                    let (tx, rx) = oneshot::channel();
                    cmd.send(Command::Open(tx))
                        .await
                        .map_err(|_| StreamError::Closed)?;
                    let stream = rx.await.map_err(|_| StreamError::Closed)??;
                    Ok(Substream::Yamux(stream.compat()))
                }
                Opener::Quic(conn) => {
                    let (send, recv) = conn.open_bi().await.map_err(|e| match e {
                        quinn::ConnectionError::LocallyClosed => StreamError::Closed,
                        other => StreamError::Muxer(MuxerError::Quic(other)),
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

/// A negotiated stream. Reads and writes go straight to the yamux or QUIC stream, their
/// bytes counted (`pylon_stream_bytes_total`).
pub struct Stream {
    pub(super) io: Negotiated<Substream>,
    pub(super) protocol: String,
    pub(super) peer: PeerId,
    pub(super) slot: StreamSlot,
    pub(super) direction: Direction,
    pub(super) metrics: Arc<Metrics>,
}

impl Stream {
    /// `protocol` is always one we proposed or registered, so the label stays bounded.
    pub(super) fn new(
        io: Negotiated<Substream>,
        protocol: String,
        mut slot: StreamSlot,
        direction: Direction,
    ) -> Self {
        slot.usage.negotiated(&protocol);
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
        let me = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut me.io).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            me.metrics.stream_bytes_received.inc_by(n as u64);
        }
        read
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let written = Pin::new(&mut me.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            me.metrics.stream_bytes_sent.inc_by(n as u64);
        }
        written
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
