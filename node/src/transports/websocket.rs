//! The byte-stream side of libp2p's WebSocket transport (`/ws`, `/wss`): an HTTP/1.1
//! Upgrade handshake (RFC 6455 §4) and a [`WsStream`] that carries a byte stream as
//! binary messages, so multistream-select, Noise and yamux run over it unchanged.
//!
//! What it is not: TLS (for `/wss` the caller wraps the socket in tokio-rustls before
//! handing it here), address parsing, dialing or listening, and handshake timeouts (the
//! caller applies those).
//!
//! libp2p's WebSocket transport has no framing of its own: each write is one binary
//! message, and the bytes of received binary messages are concatenated. Text messages
//! are a protocol violation. The frame work is done by `tungstenite`; this module maps
//! messages to bytes and its errors to [`io::Error`]s whose inner error is an [`Error`].
//!
//! Closing: [`tokio::io::AsyncWriteExt::shutdown`] sends a Close frame and then shuts
//! down the underlying writer. A received Close frame reads as end of stream. WebSocket
//! has no half-close: once either side has sent Close, the *other* side can no longer
//! write (its writes fail with [`io::ErrorKind::BrokenPipe`]); reads on the closing side
//! go on until the peer's Close arrives.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::client::{generate_key, Request};
use tokio_tungstenite::tungstenite::http::{self, Uri};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{error::ProtocolError, Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Largest message we accept from the peer (all fragments together). libp2p writes at most
/// one Noise frame (65 537 bytes) per message; the rest is headroom for other stacks.
pub const MAX_MESSAGE_SIZE: usize = 1024 * 1024;
/// Largest single frame payload we accept; checked on the frame header, before buffering.
pub const MAX_FRAME_SIZE: usize = 256 * 1024;
/// Largest binary message one `poll_write` sends: a Noise frame plus some slack.
pub const MAX_WRITE_MESSAGE: usize = 64 * 1024 + 1024;

/// Encoded frames buffered before tungstenite writes them to the socket (a flush always
/// writes everything).
const WRITE_BUFFER_SIZE: usize = 64 * 1024;
/// Hard bound on tungstenite's outgoing buffer: the threshold above, plus one message we
/// accepted while the socket was blocked, plus control frames (Pong, Close) and headers.
const MAX_WRITE_BUFFER_SIZE: usize = WRITE_BUFFER_SIZE + 2 * MAX_WRITE_MESSAGE;
/// Read buffer tungstenite allocates per connection.
const READ_BUFFER_SIZE: usize = 64 * 1024;

// Handshake bounds live in tungstenite and are not configurable (0.30): the server
// rejects an upgrade request of more than 64 KiB or 512 socket reads (`AttackAttempt`)
// and one with more than 124 headers (`TooManyHeaders`); the client reading the
// response is bounded the same way. We map both to [`Error::Limit`].

/// What failed in the WebSocket layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The underlying stream failed.
    #[error("websocket i/o: {0}")]
    Io(#[from] io::Error),
    /// The host or path we were given cannot form an upgrade request (a local error).
    #[error("invalid websocket upgrade request: {0}")]
    InvalidRequest(String),
    /// The peer's HTTP upgrade request or response was malformed or refused.
    #[error("websocket handshake failed: {0}")]
    Handshake(Box<WsError>),
    /// The peer exceeded one of our bounds (handshake headers, frame or message size).
    #[error("websocket limit exceeded: {0}")]
    Limit(Box<WsError>),
    /// The peer broke the WebSocket framing protocol.
    #[error("websocket protocol violation: {0}")]
    Protocol(Box<WsError>),
    /// The peer sent a text message; libp2p carries its byte stream in binary messages.
    #[error("websocket peer sent a text message (libp2p uses binary messages only)")]
    TextMessage,
}

impl crate::fault::Classify for Error {
    fn fault(&self) -> crate::fault::Fault {
        use crate::fault::Fault;
        match self {
            Error::Io(e) => Fault::of_io(e),
            Error::InvalidRequest(_) => Fault::Local,
            Error::Handshake(_) => Fault::Malformed,
            // The remote went past one of our bounds: its misbehaviour, not our capacity.
            Error::Limit(_) | Error::Protocol(_) | Error::TextMessage => Fault::Protocol,
        }
    }
}

/// The limits we run every connection with.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_SIZE)
        .write_buffer_size(WRITE_BUFFER_SIZE)
        .max_write_buffer_size(MAX_WRITE_BUFFER_SIZE)
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_FRAME_SIZE))
}

/// Runs the client side of the upgrade over `io`, sending `Host: host` and `GET path`.
///
/// `host` is sent verbatim (e.g. `example.com`, `127.0.0.1:4001`, `[::1]:4001`); `path`
/// must start with `/`.
pub async fn client<S>(io: S, host: &str, path: &str) -> Result<WsStream<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = upgrade_request(host, path)?;
    let (ws, _response) = tokio_tungstenite::client_async_with_config(request, io, Some(config()))
        .await
        .map_err(handshake_error)?;
    Ok(WsStream::new(ws))
}

/// Runs the server side of the upgrade over `io`, accepting any path.
pub async fn server<S>(io: S) -> Result<WsStream<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws = tokio_tungstenite::accept_async_with_config(io, Some(config()))
        .await
        .map_err(handshake_error)?;
    Ok(WsStream::new(ws))
}

/// Builds the `GET` upgrade request. The scheme only satisfies tungstenite's check; only
/// the path and the headers go on the wire.
fn upgrade_request(host: &str, path: &str) -> Result<Request, Error> {
    if !path.starts_with('/') {
        return Err(Error::InvalidRequest(format!(
            "path {path:?} does not start with '/'"
        )));
    }
    let uri = Uri::builder()
        .scheme("ws")
        .authority(host)
        .path_and_query(path)
        .build()
        .map_err(|e| Error::InvalidRequest(format!("host {host:?}, path {path:?}: {e}")))?;
    http::Request::builder()
        .method("GET")
        .uri(uri)
        .header("Host", host)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", generate_key())
        .body(())
        .map_err(|e| Error::InvalidRequest(e.to_string()))
}

fn handshake_error(e: WsError) -> Error {
    match e {
        WsError::Io(e) => Error::Io(e),
        e @ (WsError::Capacity(_) | WsError::AttackAttempt) => Error::Limit(Box::new(e)),
        e => Error::Handshake(Box::new(e)),
    }
}

/// Where the read side stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Open,
    /// A Close frame arrived, or the connection ended cleanly: reads return 0.
    Eof,
    /// A read failed; later reads fail with the same kind.
    Failed(io::ErrorKind),
}

/// A WebSocket connection carrying a byte stream in binary messages.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
    read: ReadState,
    /// `poll_shutdown` was called: writes fail with `BrokenPipe`.
    write_closed: bool,
    /// The Close frame is flushed; what remains is shutting down the underlying writer.
    close_sent: bool,
}

impl<S> std::fmt::Debug for WsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsStream")
            .field("pending", &self.pending.len())
            .field("read", &self.read)
            .field("write_closed", &self.write_closed)
            .finish_non_exhaustive()
    }
}

impl<S> WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn new(inner: WebSocketStream<S>) -> Self {
        WsStream {
            inner,
            pending: Bytes::new(),
            read: ReadState::Open,
            write_closed: false,
            close_sent: false,
        }
    }

    /// The underlying stream (e.g. to read its peer address).
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// Records a read failure, queues a Close frame with `code` when there is one
    /// (best effort: it goes out now if the socket takes it, else with the next flush or
    /// shutdown), and returns the error.
    fn fail_read(
        &mut self,
        kind: io::ErrorKind,
        error: Error,
        code: Option<CloseCode>,
    ) -> io::Error {
        tracing::debug!(%error, "websocket read failed");
        self.read = ReadState::Failed(kind);
        if let Some(code) = code {
            let frame = CloseFrame {
                code,
                reason: "".into(),
            };
            // Fails harmlessly when a Close was already sent or the connection is gone.
            let _ = self.inner.start_send_unpin(Message::Close(Some(frame)));
        }
        io::Error::new(kind, error)
    }
}

impl<S> AsyncRead for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match this.read {
                ReadState::Open => {}
                ReadState::Eof => return Poll::Ready(Ok(())),
                ReadState::Failed(kind) => {
                    return Poll::Ready(Err(io::Error::new(
                        kind,
                        "websocket stream failed on an earlier read",
                    )))
                }
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // tungstenite queues the Pong for a Ping (and the reply to a Close) and writes
            // it at the start of the next read, before waiting for more input — so looping
            // here after a Ping is what gets the Pong out when the application only reads.
            let message = match ready!(this.inner.poll_next_unpin(cx)) {
                // Closed cleanly (tungstenite's ConnectionClosed / AlreadyClosed).
                None => {
                    this.read = ReadState::Eof;
                    return Poll::Ready(Ok(()));
                }
                Some(Ok(message)) => message,
                Some(Err(e)) => return Poll::Ready(this.read_error(e)),
            };
            match message {
                Message::Binary(data) => this.pending = data,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                Message::Text(_) => {
                    let e = this.fail_read(
                        io::ErrorKind::InvalidData,
                        Error::TextMessage,
                        Some(CloseCode::Unsupported),
                    );
                    return Poll::Ready(Err(e));
                }
                Message::Close(_) => {
                    this.read = ReadState::Eof;
                    // One more read writes tungstenite's queued Close reply (and, on the
                    // server, ends the connection). Its outcome does not matter: any frame
                    // after a Close is refused, and the reply also goes out with the next
                    // flush or shutdown.
                    let _ = this.inner.poll_next_unpin(cx);
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl<S> WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Maps a read error: a clean end is `Ok` (EOF), the rest fail the read side.
    fn read_error(&mut self, e: WsError) -> io::Result<()> {
        match e {
            WsError::ConnectionClosed | WsError::AlreadyClosed => {
                self.read = ReadState::Eof;
                Ok(())
            }
            // The socket ended without a Close frame. After our own Close that is a peer
            // skipping its reply: an end. Before it, the stream was cut short.
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) if self.write_closed => {
                self.read = ReadState::Eof;
                Ok(())
            }
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Err(self.fail_read(
                io::ErrorKind::UnexpectedEof,
                Error::Protocol(Box::new(e)),
                None,
            )),
            WsError::Io(e) => {
                self.read = ReadState::Failed(e.kind());
                Err(e)
            }
            e @ WsError::Capacity(_) => Err(self.fail_read(
                io::ErrorKind::InvalidData,
                Error::Limit(Box::new(e)),
                Some(CloseCode::Size),
            )),
            e @ (WsError::Protocol(_) | WsError::Utf8(_)) => Err(self.fail_read(
                io::ErrorKind::InvalidData,
                Error::Protocol(Box::new(e)),
                Some(CloseCode::Protocol),
            )),
            e => Err(self.fail_read(io::ErrorKind::Other, Error::Protocol(Box::new(e)), None)),
        }
    }
}

/// Maps an error from sending or flushing.
fn write_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(ProtocolError::SendAfterClosing) => io::Error::new(
            io::ErrorKind::BrokenPipe,
            "websocket connection is closing or closed",
        ),
        e @ WsError::WriteBufferFull(_) => io::Error::other(Error::Limit(Box::new(e))),
        e => io::Error::other(Error::Protocol(Box::new(e))),
    }
}

fn broken_pipe() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "websocket stream was shut down")
}

impl<S> AsyncWrite for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Err(broken_pipe()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(this.inner.poll_ready_unpin(cx)).map_err(write_error)?;
        let n = buf.len().min(MAX_WRITE_MESSAGE);
        let message = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
        this.inner.start_send_unpin(message).map_err(write_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match ready!(this.inner.poll_flush_unpin(cx)) {
            Ok(()) | Err(WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(write_error(e))),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.write_closed = true;
        if !this.close_sent {
            // Queues a Close frame (unless one was sent already) and flushes; Ok once the
            // connection is closed, too.
            match ready!(this.inner.poll_close_unpin(cx)) {
                Ok(()) | Err(WsError::AlreadyClosed) => {}
                Err(e) => return Poll::Ready(Err(write_error(e))),
            }
            this.close_sent = true;
        }
        // Then the underlying writer (TCP FIN, TLS close_notify), as rust-libp2p does. The
        // read side stays open for the peer's Close reply.
        match ready!(Pin::new(this.inner.get_mut()).poll_shutdown(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            // The peer may have closed the socket first, which is fine at this point.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotConnected
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionReset
                ) =>
            {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::time::Duration;

    use futures::{SinkExt, StreamExt};
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    use super::*;

    const BIG: usize = 4 * 1024 * 1024;

    async fn bounded<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .expect("test did not finish in time")
    }

    /// Deterministic bytes that do not repeat with a short period.
    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    async fn pair() -> (WsStream<DuplexStream>, WsStream<DuplexStream>) {
        let (a, b) = duplex(64 * 1024);
        let (c, s) = tokio::join!(client(a, "example.com", "/"), server(b));
        (c.unwrap(), s.unwrap())
    }

    /// Our client against a plain tokio-tungstenite server.
    async fn ours_vs_raw_server() -> (WsStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (a, b) = duplex(64 * 1024);
        let (c, s) = tokio::join!(
            client(a, "example.com", "/"),
            tokio_tungstenite::accept_async(b)
        );
        (c.unwrap(), s.unwrap())
    }

    /// Our server against a plain tokio-tungstenite client.
    async fn ours_vs_raw_client() -> (WsStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (a, b) = duplex(64 * 1024);
        let (s, c) = tokio::join!(
            server(b),
            tokio_tungstenite::client_async("ws://example.com/", a)
        );
        (s.unwrap(), c.unwrap().0)
    }

    fn inner_error(e: &io::Error) -> &Error {
        e.get_ref()
            .and_then(|e| e.downcast_ref::<Error>())
            .unwrap_or_else(|| panic!("no websocket::Error inside {e:?}"))
    }

    /// Sends 4 MiB each way at once, checks the contents, then closes from `a`.
    async fn transfer_both_ways<S>(a: WsStream<S>, b: WsStream<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let data_a = pattern(BIG, 1);
        let data_b = pattern(BIG, 2);
        let (mut ra, mut wa) = tokio::io::split(a);
        let (mut rb, mut wb) = tokio::io::split(b);
        let send = |mut w: tokio::io::WriteHalf<WsStream<S>>, data: Vec<u8>| {
            tokio::spawn(async move {
                // Uneven write sizes, some above the per-message cap.
                let mut off = 0;
                let mut step = 1;
                while off < data.len() {
                    let end = (off + step).min(data.len());
                    w.write_all(&data[off..end]).await.unwrap();
                    off = end;
                    step = (step * 7 + 13) % (200 * 1024) + 1;
                }
                w.flush().await.unwrap();
                w
            })
        };
        let recv = |mut r: tokio::io::ReadHalf<WsStream<S>>| {
            tokio::spawn(async move {
                let mut got = vec![0u8; BIG];
                r.read_exact(&mut got).await.unwrap();
                (r, got)
            })
        };
        let (sa, sb) = (send(wa, data_a.clone()), send(wb, data_b.clone()));
        let (ga, gb) = (recv(ra), recv(rb));
        wa = sa.await.unwrap();
        wb = sb.await.unwrap();
        let (r, got_by_a) = ga.await.unwrap();
        ra = r;
        let (r, got_by_b) = gb.await.unwrap();
        rb = r;
        assert!(got_by_a == data_b, "a received corrupted data");
        assert!(got_by_b == data_a, "b received corrupted data");

        let mut a = ra.unsplit(wa);
        let mut b = rb.unsplit(wb);
        a.shutdown().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(b.read_to_end(&mut rest).await.unwrap(), 0);
        assert_eq!(a.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn handshake_and_echo_over_duplex() {
        bounded(async {
            let (mut c, mut s) = pair().await;
            c.write_all(b"hello").await.unwrap();
            c.flush().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"hello");
            s.write_all(b"world").await.unwrap();
            s.flush().await.unwrap();
            c.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"world");
        })
        .await;
    }

    #[tokio::test]
    async fn client_sends_host_and_path_server_accepts_any_path() {
        bounded(async {
            // What the client puts on the wire.
            let (a, mut b) = duplex(64 * 1024);
            let dial = tokio::spawn(client(a, "[::1]:4001", "/p2p/ws?x=1"));
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = b.read(&mut chunk).await.unwrap();
                assert_ne!(n, 0, "client hung up mid-request");
                request.extend_from_slice(&chunk[..n]);
            }
            let request = String::from_utf8(request).unwrap();
            let mut lines = request.split("\r\n");
            assert_eq!(lines.next(), Some("GET /p2p/ws?x=1 HTTP/1.1"));
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
                .collect();
            let header = |name: &str| {
                let mut values = headers
                    .iter()
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str());
                let first = values.next();
                assert!(values.next().is_none(), "{name} sent twice");
                first
            };
            assert_eq!(header("host"), Some("[::1]:4001"));
            assert_eq!(header("upgrade"), Some("websocket"));
            assert_eq!(header("sec-websocket-version"), Some("13"));
            assert!(header("sec-websocket-key").is_some());
            drop(b);
            assert!(dial.await.unwrap().is_err());

            // Our server takes any path.
            let (a, b) = duplex(64 * 1024);
            let (c, s) = tokio::join!(client(a, "h", "/some/where/else"), server(b));
            let (mut c, mut s) = (c.unwrap(), s.unwrap());
            c.write_all(b"x").await.unwrap();
            c.flush().await.unwrap();
            let mut one = [0u8; 1];
            s.read_exact(&mut one).await.unwrap();
            assert_eq!(&one, b"x");
        })
        .await;
    }

    #[tokio::test]
    async fn bad_client_arguments_are_local_errors() {
        bounded(async {
            let (a, _b) = duplex(1024);
            let e = client(a, "example.com", "no-slash").await.unwrap_err();
            assert!(matches!(e, Error::InvalidRequest(_)), "{e:?}");
            let (a, _b) = duplex(1024);
            let e = client(a, "bad host", "/").await.unwrap_err();
            assert!(matches!(e, Error::InvalidRequest(_)), "{e:?}");
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn four_mib_each_way_over_duplex() {
        bounded(async {
            let (c, s) = pair().await;
            transfer_both_ways(c, s).await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn four_mib_each_way_over_tcp() {
        bounded(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accept = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                server(tcp).await.unwrap()
            });
            let tcp = TcpStream::connect(addr).await.unwrap();
            let c = client(tcp, &addr.to_string(), "/").await.unwrap();
            let s = accept.await.unwrap();
            transfer_both_ways(c, s).await;
        })
        .await;
    }

    #[tokio::test]
    async fn small_writes_arrive_in_order() {
        bounded(async {
            let (mut c, mut s) = pair().await;
            let data = pattern(3000, 7);
            let writer = tokio::spawn(async move {
                for b in &data {
                    c.write_all(std::slice::from_ref(b)).await.unwrap();
                    c.flush().await.unwrap();
                }
                c.shutdown().await.unwrap();
                data
            });
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, writer.await.unwrap());
        })
        .await;
    }

    #[tokio::test]
    async fn each_write_is_one_capped_binary_message() {
        bounded(async {
            let (mut ours, mut raw) = ours_vs_raw_server().await;
            let data = pattern(200 * 1024, 3);
            let expected = data.clone();
            let writer = tokio::spawn(async move {
                // One write call takes at most MAX_WRITE_MESSAGE bytes.
                let n = ours.write(&data).await.unwrap();
                assert_eq!(n, MAX_WRITE_MESSAGE);
                ours.write_all(&data[n..]).await.unwrap();
                ours.write_all(b"tail").await.unwrap();
                ours.flush().await.unwrap();
                ours
            });
            let mut got = Vec::new();
            let mut sizes = Vec::new();
            while got.len() < expected.len() + 4 {
                match raw.next().await.unwrap().unwrap() {
                    Message::Binary(b) => {
                        sizes.push(b.len());
                        got.extend_from_slice(&b);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(&got[..expected.len()], &expected[..]);
            assert_eq!(&got[expected.len()..], b"tail");
            assert!(sizes.iter().all(|&n| n <= MAX_WRITE_MESSAGE), "{sizes:?}");
            assert_eq!(sizes.last(), Some(&4));
            writer.await.unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn shutdown_gives_peer_eof_and_ends_writing() {
        bounded(async {
            let (mut c, mut s) = pair().await;
            c.write_all(b"last words").await.unwrap();
            c.shutdown().await.unwrap();
            let err = c.write_all(b"more").await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);

            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"last words");
            // EOF stays EOF.
            assert_eq!(s.read(&mut [0u8; 8]).await.unwrap(), 0);
            // No half-close in WebSocket: after the peer's Close we cannot write.
            let err = s.write_all(b"reply").await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
            // The closing side reads EOF once the Close reply arrives.
            assert_eq!(c.read(&mut [0u8; 8]).await.unwrap(), 0);
        })
        .await;
    }

    #[tokio::test]
    async fn peer_close_frame_reads_as_eof_and_is_answered() {
        bounded(async {
            let (mut ours, mut raw) = ours_vs_raw_server().await;
            raw.send(Message::Binary(Bytes::from_static(b"bye")))
                .await
                .unwrap();
            raw.close(None).await.unwrap();
            let mut got = Vec::new();
            ours.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"bye");
            // Only reading got our Close reply out, and the raw peer's stream then ends.
            match raw.next().await {
                Some(Ok(Message::Close(_))) => {}
                other => panic!("expected the Close reply, got {other:?}"),
            }
            assert!(raw.next().await.is_none());
        })
        .await;
    }

    #[tokio::test]
    async fn connection_cut_without_close_is_unexpected_eof() {
        bounded(async {
            let (mut ours, raw) = ours_vs_raw_server().await;
            drop(raw);
            let err = ours.read(&mut [0u8; 8]).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
            // The failure is sticky.
            let err = ours.read(&mut [0u8; 8]).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        })
        .await;
    }

    #[tokio::test]
    async fn text_message_is_invalid_data() {
        bounded(async {
            let (mut ours, mut raw) = ours_vs_raw_server().await;
            raw.send(Message::Text("hi".into())).await.unwrap();
            let err = ours.read(&mut [0u8; 8]).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(matches!(inner_error(&err), Error::TextMessage), "{err}");
            let err = ours.read(&mut [0u8; 8]).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            // The peer is told why.
            match raw.next().await.unwrap().unwrap() {
                Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Unsupported),
                other => panic!("expected a Close frame, got {other:?}"),
            }
        })
        .await;
    }

    #[tokio::test]
    async fn oversized_frame_is_refused() {
        bounded(async {
            let (mut ours, raw) = ours_vs_raw_client().await;
            let (mut raw_tx, mut raw_rx) = raw.split();
            // One frame above MAX_FRAME_SIZE (the whole message is under the message cap).
            // The sender stays stuck once we stop reading; it ends when we drop our side.
            let big = Bytes::from(vec![7u8; MAX_FRAME_SIZE + 1]);
            let sender = tokio::spawn(async move {
                let _ = raw_tx.send(Message::Binary(big)).await;
            });
            let err = ours.read(&mut [0u8; 8]).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(matches!(inner_error(&err), Error::Limit(_)), "{err}");
            // The peer is told why.
            match raw_rx.next().await.unwrap().unwrap() {
                Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Size),
                other => panic!("expected a Close frame, got {other:?}"),
            }
            drop(ours);
            sender.await.unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn oversized_fragmented_message_is_refused() {
        bounded(async {
            let (mut ours, mut raw) = ours_vs_raw_client().await;
            let reader = tokio::spawn(async move {
                let mut sink = Vec::new();
                let err = ours.read_to_end(&mut sink).await.unwrap_err();
                assert!(
                    sink.is_empty(),
                    "no byte of the refused message is delivered"
                );
                err
            });
            // Five fragments of 250 KiB: each frame fits, the message (1.22 MiB) does not.
            let part = 250 * 1024;
            for i in 0..5 {
                let opcode = if i == 0 {
                    OpCode::Data(Data::Binary)
                } else {
                    OpCode::Data(Data::Continue)
                };
                let frame = Frame::message(Bytes::from(vec![i as u8; part]), opcode, i == 4);
                if raw.send(Message::Frame(frame)).await.is_err() {
                    break;
                }
            }
            let err = reader.await.unwrap();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(matches!(inner_error(&err), Error::Limit(_)), "{err}");
        })
        .await;
    }

    #[tokio::test]
    async fn huge_frame_length_is_refused_before_buffering() {
        bounded(async {
            let (mut ours, mut raw) = ours_vs_raw_client().await;
            // FIN + binary, masked, 64-bit length of 1 TiB, mask key; no payload follows.
            let mut header = vec![0x82, 0xFF];
            header.extend_from_slice(&(1u64 << 40).to_be_bytes());
            header.extend_from_slice(&[1, 2, 3, 4]);
            raw.get_mut().write_all(&header).await.unwrap();
            raw.get_mut().flush().await.unwrap();
            let err = ours.read(&mut [0u8; 8]).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(matches!(inner_error(&err), Error::Limit(_)), "{err}");
        })
        .await;
    }

    /// Feeds `request` to our server, then ends the input, and returns its verdict.
    async fn server_given(request: Vec<u8>) -> Result<WsStream<DuplexStream>, Error> {
        let (mut a, b) = duplex(16 * 1024);
        tokio::spawn(async move {
            // The server may give up before reading everything.
            let _ = a.write_all(&request).await;
            let _ = a.shutdown().await;
            let mut answer = Vec::new();
            let _ = a.read_to_end(&mut answer).await;
        });
        server(b).await
    }

    #[tokio::test]
    async fn garbage_instead_of_upgrade_fails_server() {
        bounded(async {
            let e = server_given(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec())
                .await
                .unwrap_err();
            assert!(matches!(e, Error::Handshake(_)), "{e:?}");

            // Valid HTTP, but no upgrade.
            let plain = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec();
            let e = server_given(plain).await.unwrap_err();
            assert!(matches!(e, Error::Handshake(_)), "{e:?}");

            // Peer hangs up mid-request.
            let e = server_given(b"GET / HTTP/1.1\r\nHost: ex".to_vec())
                .await
                .unwrap_err();
            assert!(matches!(e, Error::Handshake(_)), "{e:?}");
        })
        .await;
    }

    #[tokio::test]
    async fn oversized_upgrade_request_fails_server() {
        bounded(async {
            // More than 64 KiB of header bytes.
            let mut big = b"GET / HTTP/1.1\r\nHost: example.com\r\n".to_vec();
            for i in 0..80 {
                big.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "a".repeat(1000)).as_bytes());
            }
            big.extend_from_slice(b"\r\n");
            let e = server_given(big).await.unwrap_err();
            assert!(matches!(e, Error::Limit(_)), "{e:?}");

            // Too many headers, each small.
            let mut many = b"GET / HTTP/1.1\r\nHost: example.com\r\n".to_vec();
            for i in 0..200 {
                many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
            }
            many.extend_from_slice(b"\r\n");
            let e = server_given(many).await.unwrap_err();
            assert!(matches!(e, Error::Limit(_)), "{e:?}");
        })
        .await;
    }

    #[tokio::test]
    async fn client_refused_by_plain_http_server() {
        bounded(async {
            let (a, mut b) = duplex(16 * 1024);
            let peer = tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = b.read(&mut buf).await.unwrap();
                b.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    .await
                    .unwrap();
                b
            });
            let e = client(a, "example.com", "/").await.unwrap_err();
            assert!(matches!(e, Error::Handshake(_)), "{e:?}");
            peer.await.unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn ping_is_answered_while_we_only_read() {
        bounded(async {
            let (mut ours, mut raw) = ours_vs_raw_server().await;
            // Our side only reads, and never writes or flushes.
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                ours.read_to_end(&mut got).await.unwrap();
                got
            });
            raw.send(Message::Ping(Bytes::from_static(b"are you there")))
                .await
                .unwrap();
            match raw.next().await.unwrap().unwrap() {
                Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
                other => panic!("expected a Pong, got {other:?}"),
            }
            raw.send(Message::Binary(Bytes::from_static(b"data")))
                .await
                .unwrap();
            raw.send(Message::Ping(Bytes::from_static(b"again")))
                .await
                .unwrap();
            match raw.next().await.unwrap().unwrap() {
                Message::Pong(p) => assert_eq!(&p[..], b"again"),
                other => panic!("expected a Pong, got {other:?}"),
            }
            raw.close(None).await.unwrap();
            assert_eq!(reader.await.unwrap(), b"data");
        })
        .await;
    }
}
