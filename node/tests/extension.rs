//! The host's extension point: an installed [`Extension`] hears of every connection and
//! stream, in order, however many arrive at once — where a broadcast subscriber lags and
//! loses events. Loopback TCP; every wait is bounded.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use pylon_node::host::{Connection, ConnectionId, Direction, Extension, Stream};
use pylon_node::node::Node;
use pylon_testkit::node as kit;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(30);
const ECHO: &str = "/test/extension/1.0.0";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Established,
    Stream(Direction, String),
    Closed,
}

/// Records, per connection, what it was told, and takes the streams of [`ECHO`].
struct Recorder {
    seen: Mutex<HashMap<ConnectionId, Vec<Seen>>>,
    closed: mpsc::Sender<ConnectionId>,
}

impl Recorder {
    fn note(&self, conn: &Connection, what: Seen) {
        self.seen
            .lock()
            .unwrap()
            .entry(conn.id())
            .or_default()
            .push(what);
    }
}

impl Extension for Recorder {
    fn protocol_ids(&self) -> Vec<String> {
        vec![ECHO.to_string()]
    }

    fn handle_stream(self: Arc<Self>, mut stream: Stream) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = stream.write_all(b"hi").await;
            let _ = stream.shutdown().await;
        })
    }

    fn on_connection_established(&self, conn: &Connection) {
        self.note(conn, Seen::Established);
    }

    fn on_connection_closed(&self, conn: &Connection, _reason: &str) {
        self.note(conn, Seen::Closed);
        let _ = self.closed.try_send(conn.id());
    }

    fn on_stream_opened(&self, conn: &Connection, direction: Direction, protocol: &str) {
        // Identify's streams come and go too; only ours are recorded.
        if protocol == ECHO {
            self.note(conn, Seen::Stream(direction, protocol.to_string()));
        }
    }
}

async fn node() -> Node {
    let mut config = kit::config(&[kit::LOCAL_TCP]);
    config.host.max_connections_per_peer = 1024;
    config.host.max_pending_incoming = 1024;
    config.host.max_pending_incoming_per_ip = 0;
    config.host.max_pending_incoming_per_subnet = 0;
    kit::start_with(config).await
}

/// 400 connections, each opening a stream and closing, as fast as they come: the
/// extension is told of every one, established before its stream, closed last. A
/// broadcast subscriber with room for far fewer events misses some (the reason
/// protocols no longer learn about connections that way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_hears_every_connection_in_order() {
    const N: usize = 400;
    let server = node().await;
    let (tx, mut closed) = mpsc::channel(N + 16);
    let recorder = Arc::new(Recorder {
        seen: Mutex::new(HashMap::new()),
        closed: tx,
    });
    server.host.install(recorder.clone());
    let lagging = server.host.subscribe(); // never read while the burst runs
    let client = node().await;
    let addr = server.listen_multiaddrs()[0].clone();

    let burst = (0..N).map(|_| {
        let (client, addr) = (client.clone(), addr.clone());
        async move {
            let conn = client.host.dial(&addr).await.unwrap();
            let mut s = conn.open_stream(&[ECHO]).await.unwrap();
            let mut buf = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf)
                .await
                .unwrap();
            assert_eq!(buf, b"hi");
            conn.close();
        }
    });
    tokio::time::timeout(T, futures::future::join_all(burst))
        .await
        .unwrap();
    tokio::time::timeout(T, async {
        for _ in 0..N {
            closed.recv().await.unwrap();
        }
    })
    .await
    .expect("every close announced");

    let seen = recorder.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), N, "every connection announced");
    let want = vec![
        Seen::Established,
        Seen::Stream(Direction::Inbound, ECHO.to_string()),
        Seen::Closed,
    ];
    for (id, events) in &seen {
        assert_eq!(events, &want, "connection {id}");
    }
    // The broadcast, by contrast, lost events (capacity 1024 < 4 events × 400).
    let mut lagging = lagging;
    assert!(matches!(
        lagging.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_))
    ));
    client.shutdown(T).await;
    server.shutdown(T).await;
}

/// Installed after connections exist: they are announced at once.
#[tokio::test]
async fn a_late_extension_is_told_of_existing_connections() {
    let server = node().await;
    let client = node().await;
    let conn = client
        .host
        .dial(&server.listen_multiaddrs()[0])
        .await
        .unwrap();
    let (tx, _closed) = mpsc::channel(16);
    let recorder = Arc::new(Recorder {
        seen: Mutex::new(HashMap::new()),
        closed: tx,
    });
    client.host.install(recorder.clone());
    assert_eq!(
        recorder.seen.lock().unwrap().get(&conn.id()),
        Some(&vec![Seen::Established])
    );
    client.shutdown(T).await;
    server.shutdown(T).await;
}
