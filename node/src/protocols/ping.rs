//! ping (`specs/ping/ping.md`), both sides.
//!
//! The server echoes every 32-byte payload until the stream ends, so a peer may ping many
//! times on one stream and on several streams at once (go-libp2p and js-libp2p reuse a
//! stream; rust-libp2p opens one per connection). An idle stream is closed after
//! [`IDLE_TIMEOUT`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::host::{self, Host, Stream, StreamError};
use crate::identity::PeerId;
use crate::metrics::Metrics;

pub const PROTOCOL: &str = "/ipfs/ping/1.0.0";
//= specs/ping/ping.md#protocol
//# The dialing peer MUST NOT send more than 32 bytes at a time
pub const PING_SIZE: usize = 32;
/// A server stream with no ping for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client waits for the echo.
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("stream: {0}")]
    Stream(#[from] StreamError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("echo did not match the payload")]
    Mismatch,
}

/// Installs the ping server on the host.
pub fn install(host: &Host) {
    host.install(Arc::new(Server {
        metrics: host.metrics().clone(),
    }));
}

/// The server side: echoes every payload until the stream ends or idles.
struct Server {
    metrics: Arc<Metrics>,
}

impl host::Extension for Server {
    fn protocol_ids(&self) -> Vec<String> {
        vec![PROTOCOL.to_string()]
    }

    fn handle_stream(self: Arc<Self>, stream: Stream) -> BoxFuture<'static, ()> {
        // The async fn's future itself: a wrapping `async move` block would hold the
        // stream twice (its capture and the inner future's), 456 more bytes for as long as
        // a peer keeps its ping stream open.
        Box::pin(self.echo(stream))
    }
}

impl Server {
    async fn echo(self: Arc<Self>, mut stream: Stream) {
        let mut buf = [0u8; PING_SIZE];
        loop {
            match tokio::time::timeout(IDLE_TIMEOUT, stream.read_exact(&mut buf)).await {
                Err(_) => break,                                                      // idle
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break, // done
                Ok(Err(_)) => {
                    self.metrics.protocol_error("ping", "io");
                    break;
                }
                Ok(Ok(_)) => {}
            }
            // A peer that pings but never reads the echoes is dropped, not waited on.
            let echo = async {
                stream.write_all(&buf).await?;
                stream.flush().await
            };
            if !matches!(tokio::time::timeout(PING_TIMEOUT, echo).await, Ok(Ok(()))) {
                break;
            }
        }
        let _ = tokio::time::timeout(PING_TIMEOUT, stream.shutdown()).await;
    }
}

/// Sends one ping on an open ping stream and returns the round-trip time.
pub async fn ping_on(stream: &mut Stream) -> Result<Duration, Error> {
    let payload: [u8; PING_SIZE] = rand::random();
    let started = Instant::now();
    let exchange = async {
        stream.write_all(&payload).await?;
        stream.flush().await?;
        let mut echo = [0u8; PING_SIZE];
        stream.read_exact(&mut echo).await?;
        Ok::<_, std::io::Error>(echo)
    };
    let echo = tokio::time::timeout(PING_TIMEOUT, exchange)
        .await
        .map_err(|_| Error::Timeout)??;
    if echo != payload {
        return Err(Error::Mismatch);
    }
    Ok(started.elapsed())
}

/// Pings a connected peer once on a fresh stream (negotiated lazily: the proposal travels
/// with the payload).
pub async fn ping(host: &Host, peer: &PeerId) -> Result<Duration, Error> {
    let conn = host
        .connection(peer)
        .ok_or(StreamError::NotConnected(*peer))?;
    let mut stream = conn.open_stream_lazy(PROTOCOL).await?;
    let rtt = ping_on(&mut stream).await?;
    host.metrics().ping_rtt.observe(rtt.as_secs_f64());
    let _ = stream.shutdown().await;
    Ok(rtt)
}
