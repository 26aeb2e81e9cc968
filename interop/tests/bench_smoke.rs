//! The benchmark runs and prints its tables (`--quick`: small sizes, one repetition). No
//! figure is asserted: timings on a shared machine are not test material.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

#[tokio::test]
async fn benchmark_runs_and_prints_every_table() {
    // `cargo test` builds examples next to the test binaries: target/<profile>/examples.
    let exe = std::env::current_exe().unwrap();
    let bench = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("bench"))
        .unwrap();
    assert!(bench.exists(), "{} not built", bench.display());
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(&bench)
            .arg("--quick")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("benchmark finished in time")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for header in [
        "| physical limit on this machine |",
        "| throughput | transport | Pylon MiB/s |",
        "| dial → first ping answered",
        "| server memory per idle connection",
        "| Kademlia server, requests/s",
        "| Pylon DHT memory",
        "| relay: circuit throughput (Pylon clients",
        "| relay: circuit throughput, rust-libp2p clients",
        "| relay: added latency",
        "| relay memory (RSS growth",
        "| relay: held",
        "| relay memory, rust-libp2p clients",
        "| server: throughput, rust-libp2p client",
        "| server: memory per idle connection, rust-libp2p clients",
    ] {
        assert!(stdout.contains(header), "missing {header:?} in:\n{stdout}");
    }
    // Every measured row has a figure for both implementations.
    for row in [
        "| 1 stream, upload | QUIC |",
        "| 16 connections, download | TCP+Noise+yamux |",
        "| QUIC | ",
        "| FIND_NODE (random key) |",
        "| GET_PROVIDERS (10 providers) |",
        "| value record on sled",
        "| 1 stream through the relay, download | QUIC |",
        "| dial → first ping answered | QUIC |",
        "| per open idle circuit",
        "| rust-libp2p clients, 1 stream through the relay, upload | TCP+Noise+yamux |",
        "| rust-libp2p clients, 1 stream through the relay, download | QUIC |",
        "| per reserving rust-libp2p client",
        "| reservations, ",
        "| rust-libp2p client, 1 stream, upload | QUIC |",
        "| rust-libp2p client, 1 stream, download | TCP+Noise+yamux |",
        "| 50 idle connections from ",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| {
                panic!("no row {row:?} in:\n{stdout}");
            });
        assert!(!line.contains("NaN"), "{line}");
    }
}
