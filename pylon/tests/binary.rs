//! Drives the real `pylon` binary: spawned as a process, reached over loopback, stopped
//! by signal. Every wait is bounded.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use pylon_node::metrics::Metrics;
use pylon_node::node::{self, Node};
use pylon_node::protocols::{identify, ping};
use pylon_node::{Multiaddr, PeerId};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_pylon");
const T: Duration = Duration::from_secs(20);

struct Running {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    log: Vec<String>,
}

impl Running {
    async fn start(data_dir: &std::path::Path, extra: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .arg("run")
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--metrics",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        Running {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Reads log lines until one contains `needle`; returns it.
    async fn wait_log(&mut self, needle: &str) -> String {
        let found = tokio::time::timeout(T, async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                self.log.push(line.clone());
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!(
                "no log line with {needle:?}; log so far:\n{}",
                self.log.join("\n")
            ),
        }
    }

    async fn stop(mut self, signal: &str) -> String {
        let pid = self.child.id().unwrap().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let line = self.wait_log("storage flushed").await;
        let exit = tokio::time::timeout(T, self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(exit.success(), "exit status {exit}");
        line
    }
}

fn field_after<'a>(line: &'a str, marker: &str) -> &'a str {
    let start = line.find(marker).unwrap() + marker.len();
    line[start..].split_whitespace().next().unwrap()
}

async fn http_get(addr: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut body = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut body))
        .await
        .unwrap()
        .unwrap();
    body
}

async fn client() -> Node {
    let config = node::Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        ..Default::default()
    };
    Node::start_volatile(config, Metrics::unregistered())
        .await
        .unwrap()
}

#[tokio::test]
async fn run_serves_identify_ping_metrics_and_stops_on_signal() {
    let dir = tempfile::tempdir().unwrap();
    let mut pylon = Running::start(dir.path(), &[]).await;
    let started = pylon.wait_log("pylon started").await;
    let listen: Multiaddr = field_after(&pylon.wait_log("listening on").await, "listening on ")
        .parse()
        .unwrap();
    let metrics_url = field_after(&pylon.wait_log("metrics on").await, "metrics on ").to_string();
    let peer: PeerId = match listen.iter().last() {
        Some(multiaddr::Protocol::P2p(p)) => p,
        _ => panic!("listen address without /p2p/: {listen}"),
    };
    assert!(started.contains(&peer.to_string()));

    // `pylon id` agrees with the running node.
    let out = Command::new(BIN)
        .arg("id")
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        peer.to_string()
    );

    // A peer connects, identifies and pings.
    let c = client().await;
    let mut events = c.identify.subscribe();
    c.host.dial(&listen).await.unwrap();
    let info = tokio::time::timeout(T, async {
        loop {
            if let identify::Event::Identified(info) = events.recv().await.unwrap() {
                return info;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        info.agent_version.as_deref(),
        Some(concat!("pylon/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(info.record.as_ref().unwrap().peer_id(), peer);
    ping::ping(&c.host, &peer).await.unwrap();

    // Metrics: the connection is counted, with go-libp2p's family names and no PeerId.
    let hostport = metrics_url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let body = http_get(hostport, "/metrics").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("libp2p_swarm_connections_opened_total{dir=\"inbound\",transport=\"tcp\",security=\"noise\",muxer=\"yamux\""), "{body}");
    assert!(
        body.contains("libp2p_swarm_handshake_latency_seconds_bucket"),
        "{body}"
    );
    assert!(!body.contains(&peer.to_string()) && !body.contains(&c.peer_id().to_string()));

    // SIGTERM: the connection is closed politely, storage flushed, exit 0.
    let mut host_events = c.host.subscribe();
    pylon.stop("-TERM").await;
    tokio::time::timeout(T, async {
        loop {
            if let pylon_node::host::Event::ConnectionClosed { .. } =
                host_events.recv().await.unwrap()
            {
                break;
            }
        }
    })
    .await
    .unwrap();

    // Restart (SIGINT this time): same PeerId, and the peer we met is still in the store.
    let mut again = Running::start(dir.path(), &[]).await;
    let started = again.wait_log("pylon started").await;
    assert!(started.contains(&peer.to_string()), "{started}");
    again.stop("-INT").await;
    c.shutdown(T).await;
    let db =
        pylon_node::peerstore::SledStore::open(&dir.path().join(node::DB_DIR), "peers").unwrap();
    let ps = pylon_node::peerstore::Peerstore::open(
        Arc::new(db),
        Default::default(),
        Metrics::unregistered(),
    )
    .unwrap();
    assert_eq!(
        ps.get(&c.peer_id()).unwrap().agent_version.as_deref(),
        info.agent_version.as_deref()
    );
}

#[tokio::test]
async fn bad_config_names_the_key_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[connections]\nhandshake_timeout = \"soon\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("connections.handshake_timeout") && err.contains("soon"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["run", "--listen", "/ip4/1.2.3.4/udp/9"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("listen[0]"));

    let out = Command::new(BIN)
        .args(["id"])
        .env("PYLON_PEERSTORE__MAX_PEERS", "many")
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("peerstore.max_peers"));
}

#[tokio::test]
async fn init_writes_a_config_that_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(BIN)
        .arg("init")
        .arg("--data-dir")
        .arg(&data)
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let text = std::fs::read_to_string(data.join("pylon.toml")).unwrap();
    assert!(text.contains(&format!("data_dir = {:?}", data.display().to_string())));
    let out = Command::new(BIN)
        .arg("config")
        .arg("--config")
        .arg(data.join("pylon.toml"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The key file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("identity.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn perf_client_measures_a_perf_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("perf.toml");
    std::fs::write(&config, "[perf]\n").unwrap();
    let mut server = Running::start(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ],
    )
    .await;
    let line = server.wait_log("listening on /ip4/127.0.0.1/udp/").await;
    let addr = field_after(&line, "listening on ").to_string();
    let out = tokio::time::timeout(
        T,
        Command::new(BIN)
            .args([
                "perf",
                &addr,
                "--upload",
                "3MiB",
                "--download",
                "2MiB",
                "--json",
            ])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["uploadBytes"], 3 << 20);
    assert_eq!(report["downloadBytes"], 2 << 20);
    assert_eq!(report["transport"], "quic-v1");
    assert!(report["timeSeconds"].as_f64().unwrap() > 0.0);
    // Bad sizes and addresses are refused with a message, exit 2.
    for args in [
        vec!["perf", addr.as_str(), "--upload", "3 parsecs"],
        vec!["perf", "/ip4/127.0.0.1/tcp/1"],
    ] {
        let out = Command::new(BIN).args(&args).output().await.unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(!out.stderr.is_empty());
    }
    server.stop("-INT").await;
}
