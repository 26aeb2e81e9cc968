//! A bare HTTP/1.1 client for tests, and a reader of the Prometheus text exposition. No
//! client library: a test sees exactly what a listener sent, and when it closed.
//!
//! Shared by the integration tests of the binary (through `tests/common`) and the unit
//! tests of `src/http.rs` (included there by `#[path]`), so it uses nothing but tokio.
#![allow(clippy::unwrap_used)]

use std::fmt::Display;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

/// Reads until the server closes, failing unless it does within `within`; returns what
/// it sent and how long that took.
pub(crate) async fn read_to_close(s: &mut TcpStream, within: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let done = tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(done.is_ok(), "the server did not close within {within:?}");
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

/// `GET path` on a connection of its own (`Connection: close`): the whole answer, status
/// line to body, which must end within `within`.
pub(crate) async fn get(
    addr: impl ToSocketAddrs + Display,
    path: &str,
    within: Duration,
) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    read_to_close(&mut s, within).await.0
}

/// The value of one sample in a text exposition, named exactly as exposed: `name` or
/// `name{labels}`.
pub(crate) fn sample<V: std::str::FromStr>(exposition: &str, name: &str) -> Option<V> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
