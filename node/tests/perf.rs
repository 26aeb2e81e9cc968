//! perf (`/perf/1.0.0`) between Pylon nodes on every transport, the allow list, and
//! servers that lie or clients that misbehave. Every wait is bounded.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pylon_node::node;
use pylon_node::protocols::perf;
use pylon_testkit::node::{self as kit, addr_of};
use pylon_testkit::wait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn upload_and_download_on_every_transport() {
    for listen in [
        "/ip4/127.0.0.1/tcp/0",
        "/ip4/127.0.0.1/udp/0/quic-v1",
        "/ip4/127.0.0.1/tcp/0/ws",
    ] {
        let server = kit::start_with(node::Config {
            perf: Some(perf::Config::default()),
            ..kit::config(&[listen])
        })
        .await;
        let client = kit::start(&[listen]).await;
        client.host.dial(&addr_of(&server)).await.unwrap();
        for (up, down) in [
            (0, 0),
            (1, 0),
            (0, 1),
            (3 << 20, 0),
            (0, 3 << 20),
            (1 << 20, 5 << 20),
        ] {
            let report =
                tokio::time::timeout(T, perf::run(&client.host, &server.peer_id(), up, down))
                    .await
                    .unwrap()
                    .unwrap();
            assert_eq!((report.uploaded, report.downloaded), (up, down), "{listen}");
        }
        // The client has no server: the stream is refused.
        assert!(perf::run(&server.host, &client.peer_id(), 1, 1)
            .await
            .is_err());
        server.shutdown(T).await;
        client.shutdown(T).await;
    }
}

#[tokio::test]
async fn allow_list_and_misbehaving_clients() {
    let allowed = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await;
    let other = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await;
    let server = kit::start_with(node::Config {
        perf: Some(perf::Config {
            allow: [allowed.peer_id()].into_iter().collect(),
            idle_timeout: Some(Duration::from_millis(300)),
        }),
        ..kit::config(&["/ip4/127.0.0.1/tcp/0"])
    })
    .await;
    for n in [&allowed, &other] {
        n.host.dial(&addr_of(&server)).await.unwrap();
    }
    let errors = |reason: &'static str| {
        server
            .host
            .metrics()
            .protocol_errors
            .get_or_create(&pylon_node::metrics::ErrorLabels {
                protocol: "perf",
                reason,
            })
            .get()
    };
    perf::run(&allowed.host, &server.peer_id(), 10, 10)
        .await
        .unwrap();
    assert!(perf::run(&other.host, &server.peer_id(), 10, 10)
        .await
        .is_err());
    assert_eq!(errors("not_allowed"), 1);

    // A client that sends half a header and stalls is dropped after the idle timeout.
    let conn = allowed.host.connection(&server.peer_id()).unwrap();
    let mut s = conn.open_stream(&[perf::PROTOCOL]).await.unwrap();
    s.write_all(&[0, 0, 0]).await.unwrap();
    s.flush().await.unwrap();
    let mut buf = Vec::new();
    let ended = tokio::time::timeout(T, s.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(ended.is_err() || buf.is_empty());
    assert_eq!(errors("timeout"), 1);
    // A client that asks for u64::MAX and never reads is dropped too, the server stays up.
    let mut s = conn.open_stream(&[perf::PROTOCOL]).await.unwrap();
    s.write_all(&u64::MAX.to_be_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    // The server fills the flow-control window, then gives up after its idle timeout (a
    // counter, no event: polled).
    wait::until("a client that never reads is dropped", T, || {
        errors("timeout") >= 2
    })
    .await;
    drop(s);
    perf::run(&allowed.host, &server.peer_id(), 1 << 20, 1 << 20)
        .await
        .unwrap();
    assert!(!conn.is_closed());
}
