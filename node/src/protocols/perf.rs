//! perf (`specs/perf/perf.md`), server and client.
//!
//! The client sends the number of bytes it wants back (big-endian u64), uploads, closes its
//! write side, then reads the answer. The server lets the client make it do real work,
//! so it is off unless configured, and may be limited to a list of peers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::host::{self, Connection, Host, Stream, StreamError};
use crate::identity::PeerId;
use crate::metrics::Metrics;

pub const PROTOCOL: &str = "/perf/1.0.0";
/// The server's and the client's write and read unit.
const CHUNK: usize = 64 * 1024;
/// The bytes sent both ways ("a predetermined arbitrary set of bytes").
static ZEROS: [u8; CHUNK] = [0; CHUNK];

#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Peers allowed to use the server; empty allows every peer.
    pub allow: HashSet<PeerId>,
    /// A server stream that neither reads nor writes a byte for this long is dropped.
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("stream: {0}")]
    Stream(#[from] StreamError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("server sent {got} bytes, {expected} requested")]
    Short { expected: u64, got: u64 },
}

/// What a client run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    pub uploaded: u64,
    pub downloaded: u64,
    /// Stream open to our write side closed.
    pub upload_time: Duration,
    /// Write side closed to the server's end of stream.
    pub download_time: Duration,
}

impl Report {
    pub fn total_time(&self) -> Duration {
        self.upload_time + self.download_time
    }
}

/// Installs the perf server.
pub fn install(host: &Host, config: Config) {
    host.install(Arc::new(Server {
        metrics: host.metrics().clone(),
        idle: config.idle_timeout.unwrap_or(Duration::from_secs(30)),
        config,
    }));
}

/// The server side: reads what the client sends, sends what it asks for.
struct Server {
    metrics: Arc<Metrics>,
    idle: Duration,
    config: Config,
}

impl host::Extension for Server {
    fn protocol_ids(&self) -> Vec<String> {
        vec![PROTOCOL.to_string()]
    }

    fn handle_stream(self: Arc<Self>, stream: Stream) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let allowed =
                self.config.allow.is_empty() || self.config.allow.contains(&stream.peer());
            if !allowed {
                self.metrics.protocol_error("perf", "not_allowed");
                return; // dropping the stream resets it
            }
            if let Err(e) = serve(stream, self.idle).await {
                let reason = match e.kind() {
                    std::io::ErrorKind::TimedOut => "timeout",
                    std::io::ErrorKind::UnexpectedEof => "truncated",
                    _ => "io",
                };
                self.metrics.protocol_error("perf", reason);
            }
        })
    }
}

/// Runs `fut` unless it makes no progress for `idle`.
async fn bounded<T>(
    idle: Duration,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(idle, fut)
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)?
}

async fn serve(mut stream: Stream, idle: Duration) -> std::io::Result<()> {
    let mut header = [0u8; 8];
    bounded(idle, stream.read_exact(&mut header)).await?;
    let mut remaining = u64::from_be_bytes(header);
    //= specs/perf/perf.md#protocol
    //# Send the number of bytes defined in step 1 back to the client. This MUST NOT be run
    //# concurrently with step 2.
    let mut buf = vec![0u8; CHUNK];
    while bounded(idle, stream.read(&mut buf)).await? > 0 {}
    while remaining > 0 {
        let n = remaining.min(CHUNK as u64) as usize;
        bounded(idle, stream.write_all(&ZEROS[..n])).await?;
        remaining -= n as u64;
    }
    bounded(idle, stream.shutdown()).await
}

/// Runs one perf exchange with a connected peer on a new stream.
pub async fn run(host: &Host, peer: &PeerId, upload: u64, download: u64) -> Result<Report, Error> {
    let conn = host
        .connection(peer)
        .ok_or(StreamError::NotConnected(*peer))?;
    run_on(&conn, upload, download).await
}

/// Runs one perf exchange on a new stream of `conn`.
pub async fn run_on(conn: &Connection, upload: u64, download: u64) -> Result<Report, Error> {
    let started = Instant::now();
    let mut stream = conn.open_stream_lazy(PROTOCOL).await?;
    stream.write_all(&download.to_be_bytes()).await?;
    let mut left = upload;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        stream.write_all(&ZEROS[..n]).await?;
        left -= n as u64;
    }
    stream.shutdown().await?;
    let upload_time = started.elapsed();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    if got != download {
        return Err(Error::Short {
            expected: download,
            got,
        });
    }
    Ok(Report {
        uploaded: upload,
        downloaded: got,
        upload_time,
        download_time: started.elapsed().saturating_sub(upload_time),
    })
}
