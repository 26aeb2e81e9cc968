//! The binary's HTTP listeners (the metrics endpoint, the admin API): an axum `Router`
//! served by hyper's HTTP/1.1 server over loopback or LAN TCP, with the bounds
//! `axum::serve` does not have. Without them a partial request holds its socket forever,
//! and enough stalled sockets use up the process's file descriptors, so p2p dials fail.
//!
//! - `header_timeout`: a request head must arrive in full within it, on a new connection
//!   and between the requests of a kept-alive one (hyper's header read timeout).
//! - `idle_timeout`: a connection on which no byte moves either way for this long, with no
//!   request being handled, is closed (a client that stopped reading, a stalled body).
//! - `request_timeout`: the handler must answer within it; past it the client gets
//!   `503` and the connection is closed.
//! - `max_connections`: connections beyond it are closed as soon as they are accepted.
//!
//! Each refusal and timeout is counted (`pylon_http_connections_refused_total`,
//! `pylon_http_timeouts_total`, labelled with the listener's name).
//!
//! Not here: TLS, HTTP/2, authentication. Those belong to whoever exposes a listener
//! beyond the host (the admin API checks its token in its own router, `pylon-dashboard`).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Bounds of one listener. The defaults are the documented ones (README, `[metrics]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            max_connections: 64,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    listener: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

/// The listeners' metrics: registered once, shared by every listener (one label value
/// per listener name).
#[derive(Clone)]
pub(crate) struct Metrics {
    refused: Family<ReasonLabels, Counter>,
    timeouts: Family<ReasonLabels, Counter>,
    open: Family<ListenerLabels, Gauge>,
}

impl Metrics {
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            refused: Family::default(),
            timeouts: Family::default(),
            open: Family::default(),
        };
        registry.register(
            "pylon_http_connections_refused",
            "HTTP connections closed as soon as they were accepted, by reason (limit: max_connections reached)",
            m.refused.clone(),
        );
        registry.register(
            "pylon_http_timeouts",
            "HTTP connections closed or requests answered 503 for a timeout (header, idle, request)",
            m.timeouts.clone(),
        );
        registry.register(
            "pylon_http_connections",
            "Open HTTP connections",
            m.open.clone(),
        );
        m
    }

    fn count(family: &Family<ReasonLabels, Counter>, listener: &'static str, reason: &'static str) {
        family
            .get_or_create(&ReasonLabels { listener, reason })
            .inc();
    }
}

/// A bound HTTP listener; [`Listener::serve`] runs it.
pub(crate) struct Listener {
    tcp: TcpListener,
    name: &'static str,
    config: Config,
    metrics: Metrics,
}

impl Listener {
    /// Binds `addr`. `name` labels the listener's metrics (`metrics`, `admin`).
    pub(crate) async fn bind(
        addr: SocketAddr,
        name: &'static str,
        config: Config,
        metrics: Metrics,
    ) -> io::Result<Listener> {
        Ok(Listener {
            tcp: TcpListener::bind(addr).await?,
            name,
            config,
            metrics,
        })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Accepts and serves connections until the future is dropped (which closes every
    /// connection of the listener too).
    pub(crate) async fn serve(self, router: axum::Router) {
        let Listener {
            tcp,
            name,
            config,
            metrics,
        } = self;
        let permits = Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1)));
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = tcp.accept() => a,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: back off rather than spin.
                    tracing::debug!("{name} listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                Metrics::count(&metrics.refused, name, "limit");
                drop(stream);
                continue;
            };
            let config = config.clone();
            let metrics = metrics.clone();
            let router = router.clone();
            connections.spawn(async move {
                let open = metrics
                    .open
                    .get_or_create(&ListenerLabels { listener: name })
                    .clone();
                open.inc();
                connection(stream, router, &config, &metrics, name).await;
                open.dec();
                drop(permit);
            });
        }
    }
}

/// Serves one connection under the listener's timeouts.
async fn connection(
    stream: TcpStream,
    router: axum::Router,
    config: &Config,
    metrics: &Metrics,
    name: &'static str,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let in_handler = activity.clone();
    let request_timeout = config.request_timeout;
    let timeouts = metrics.timeouts.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut router = router.clone();
        let busy = in_handler.busy();
        let timeouts = timeouts.clone();
        async move {
            let _busy = busy;
            let req = req.map(axum::body::Body::new);
            let call = tower_service::Service::call(&mut router, req);
            match tokio::time::timeout(request_timeout, call).await {
                Ok(Ok(response)) => Ok::<_, Infallible>(response),
                Ok(Err(never)) => match never {},
                Err(_) => {
                    Metrics::count(&timeouts, name, "request");
                    Ok((
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        [(axum::http::header::CONNECTION, "close")],
                        "request timed out\n",
                    )
                        .into_response())
                }
            }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                match result {
                    Err(e) if e.is_timeout() => Metrics::count(&metrics.timeouts, name, "header"),
                    Err(e) => tracing::debug!("{name} listener: connection failed: {e}"),
                    Ok(()) => {}
                }
                return;
            }
            _ = tokio::time::sleep_until(activity.last() + config.idle_timeout) => {
                if activity.is_busy() {
                    activity.touch(); // the request timeout bounds the handler
                } else if activity.last().elapsed() >= config.idle_timeout {
                    Metrics::count(&metrics.timeouts, name, "idle");
                    return; // dropping the connection closes the socket
                }
            }
        }
    }
}

/// When bytes last moved on a connection, and whether a request is being handled.
struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last read or write that moved bytes.
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
    fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed) > 0
    }
    fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }
}

/// A request in a handler; the connection is not idle meanwhile.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that records when bytes moved.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        poll
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        poll
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        poll
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "../tests/common/http.rs"]
mod test_client;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::AsyncWriteExt;

    const T: Duration = Duration::from_secs(10);

    struct Server {
        addr: SocketAddr,
        registry: Registry,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// A listener with `/ok`, `/stuck` (never answers) and `/big` (32 MiB).
    async fn server(config: Config) -> Server {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let router = axum::Router::new()
            .route("/ok", axum::routing::get(|| async { "ok" }))
            .route(
                "/stuck",
                axum::routing::get(std::future::pending::<&'static str>),
            )
            .route("/big", axum::routing::get(|| async { vec![0u8; 32 << 20] }));
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), "test", config, metrics)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(listener.serve(router));
        Server {
            addr,
            registry,
            task,
        }
    }

    impl Server {
        /// The value of a sample, e.g. `pylon_http_timeouts_total{listener="test",reason="header"}`.
        fn sample(&self, name: &str) -> Option<i64> {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
            test_client::sample(&text, name)
        }

        /// Waits (bounded) until a sample has a value.
        async fn wait_sample(&self, name: &str, value: i64) {
            let reached = tokio::time::timeout(T, async {
                while self.sample(name) != Some(value) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            assert!(
                reached.is_ok(),
                "{name} never reached {value}: {:?}",
                self.sample(name)
            );
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        test_client::get(addr, path, T).await
    }

    async fn read_to_close(s: &mut TcpStream) -> (String, Duration) {
        test_client::read_to_close(s, T).await
    }

    #[tokio::test]
    async fn a_partial_request_is_closed_after_the_header_timeout() {
        let config = Config {
            header_timeout: Duration::from_millis(500),
            ..Config::default()
        };
        let srv = server(config).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let (_, after) = read_to_close(&mut s).await;
        assert!(
            after >= Duration::from_millis(450),
            "closed after {after:?}"
        );
        srv.wait_sample(
            "pylon_http_timeouts_total{listener=\"test\",reason=\"header\"}",
            1,
        )
        .await;
        // Silent from the start: the same bound.
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let (_, after) = read_to_close(&mut s).await;
        assert!(
            after >= Duration::from_millis(450),
            "closed after {after:?}"
        );
        // A kept-alive connection waiting for its next request: the same bound.
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (answer, _) = read_to_close(&mut s).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
            "{answer}"
        );
        srv.wait_sample(
            "pylon_http_timeouts_total{listener=\"test\",reason=\"header\"}",
            3,
        )
        .await;
        assert!(get(srv.addr, "/ok").await.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_closed_after_the_idle_timeout() {
        let config = Config {
            idle_timeout: Duration::from_millis(500),
            ..Config::default()
        };
        let srv = server(config).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Nothing read: the 32 MiB answer fills the socket buffers, then stalls.
        srv.wait_sample(
            "pylon_http_timeouts_total{listener=\"test\",reason=\"idle\"}",
            1,
        )
        .await;
        srv.wait_sample("pylon_http_connections{listener=\"test\"}", 0)
            .await;
        // A client that reads gets it all.
        let answer = get(srv.addr, "/big").await;
        assert!(answer.len() > 32 << 20, "{}", answer.len());
    }

    #[tokio::test]
    async fn a_handler_that_overruns_gets_503_and_the_connection_closes() {
        let config = Config {
            request_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(100),
            ..Config::default()
        };
        let srv = server(config).await;
        let started = Instant::now();
        let answer = get(srv.addr, "/stuck").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        // The idle timeout does not cut a request that is being handled.
        assert!(started.elapsed() >= Duration::from_millis(280));
        assert_eq!(
            srv.sample("pylon_http_timeouts_total{listener=\"test\",reason=\"request\"}"),
            Some(1)
        );
        assert_eq!(
            srv.sample("pylon_http_timeouts_total{listener=\"test\",reason=\"idle\"}"),
            None
        );
    }

    #[tokio::test]
    async fn past_the_cap_new_connections_are_closed_at_once_and_counted() {
        let config = Config {
            max_connections: 3,
            ..Config::default() // a 10 s header timeout: the stalled ones stay
        };
        let srv = server(config).await;
        let mut stalled = Vec::new();
        for _ in 0..3 {
            stalled.push(TcpStream::connect(srv.addr).await.unwrap());
        }
        srv.wait_sample("pylon_http_connections{listener=\"test\"}", 3)
            .await;
        for i in 1..=2 {
            let mut s = TcpStream::connect(srv.addr).await.unwrap();
            let (answer, after) = read_to_close(&mut s).await;
            assert!(
                answer.is_empty() && after < Duration::from_secs(5),
                "{after:?}"
            );
            assert_eq!(
                srv.sample(
                    "pylon_http_connections_refused_total{listener=\"test\",reason=\"limit\"}"
                ),
                Some(i)
            );
        }
        // Once the stalled ones are gone, requests are served again.
        drop(stalled);
        srv.wait_sample("pylon_http_connections{listener=\"test\"}", 0)
            .await;
        assert!(get(srv.addr, "/ok").await.starts_with("HTTP/1.1 200"));
    }
}
