//! The release binary tried from outside (issue 11): the metrics listener under stalled
//! and excess sockets, the file-descriptor limit, exclusive listen ports, and the config
//! and key-file mistakes that used to pass silently. Loopback only; every wait is bounded.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use pylon_node::metrics::Metrics;
use pylon_node::node::{self, Node};
use pylon_node::protocols::ping;
use pylon_node::{Multiaddr, PeerId};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_pylon");
const T: Duration = Duration::from_secs(20);

/// Soft and hard `RLIMIT_NOFILE` for the child, set by the shell before it execs pylon.
#[derive(Clone, Copy)]
enum Nofile {
    Inherit,
    Soft(u64),
    Both(u64),
}

struct Running {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    log: Vec<String>,
}

impl Running {
    fn start(data_dir: &Path, nofile: Nofile, config: &str, extra: &[&str]) -> Running {
        let file = data_dir.join("pylon.toml");
        std::fs::write(&file, config).unwrap();
        let limits = match nofile {
            Nofile::Inherit => String::new(),
            Nofile::Soft(n) => format!("ulimit -S -n {n} && "),
            Nofile::Both(n) => format!("ulimit -S -n {n} && ulimit -H -n {n} && "),
        };
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{limits}exec \"$@\""))
            .arg("sh")
            .arg(BIN)
            .arg("run")
            .arg("--config")
            .arg(&file)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--metrics", "127.0.0.1:0"])
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

    /// The first p2p listen address (with /p2p/) and the metrics `host:port`, from the
    /// start-up lines (in whichever order they come).
    async fn addresses(&mut self) -> (Multiaddr, String) {
        let (mut listen, mut metrics) = (None, None);
        while listen.is_none() || metrics.is_none() {
            let line = self.wait_log(" on ").await;
            if line.contains("listening on ") && listen.is_none() {
                listen = Some(after(&line, "listening on ").parse().unwrap());
            } else if line.contains("metrics on http://") {
                let m = after(&line, "metrics on http://").trim_end_matches("/metrics");
                metrics = Some(m.to_string());
            }
        }
        (listen.unwrap(), metrics.unwrap())
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Soft and hard "Max open files" of the running process, from /proc.
    fn nofile(&self) -> (u64, u64) {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid())).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let mut nums = line
            .trim_start_matches("Max open files")
            .split_whitespace()
            .map(|n| n.parse::<u64>().unwrap());
        (nums.next().unwrap(), nums.next().unwrap())
    }
}

fn after<'a>(line: &'a str, marker: &str) -> &'a str {
    let start = line.find(marker).unwrap() + marker.len();
    line[start..].split_whitespace().next().unwrap()
}

/// Reads until the server closes; returns what it sent and how long that took.
async fn read_to_close(s: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let done = tokio::time::timeout(T, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(done.is_ok(), "the server did not close within {T:?}");
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

async fn http_get(hostport: &str, path: &str) -> String {
    let mut s = TcpStream::connect(hostport).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_to_close(&mut s).await.0
}

/// The value of one sample (`name{labels}` exactly as exposed).
fn sample(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
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

fn peer_of(addr: &Multiaddr) -> PeerId {
    match addr.iter().last() {
        Some(multiaddr::Protocol::P2p(p)) => p,
        _ => panic!("no /p2p/ in {addr}"),
    }
}

/// The reproduction: a node with 256 descriptors and 300 stalled sockets on its
/// metrics port. The listener holds `max_connections` of them and closes the rest at
/// once, so p2p connections are still accepted; the held ones are closed after the
/// header timeout, and /metrics answers again, having counted both.
#[tokio::test]
async fn stalled_metrics_sockets_neither_starve_p2p_nor_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let header = Duration::from_secs(2);
    let mut pylon = Running::start(
        dir.path(),
        Nofile::Both(256),
        "[metrics]\nheader_timeout = \"2s\"\nmax_connections = 16\n",
        &["--listen", "/ip4/127.0.0.1/tcp/0"],
    );
    let (listen, metrics) = pylon.addresses().await;

    let mut stalled = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(&metrics).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    // The p2p side is unaffected.
    let c = client().await;
    tokio::time::timeout(T, c.host.dial(&listen))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(T, ping::ping(&c.host, &peer_of(&listen)))
        .await
        .unwrap()
        .unwrap();

    // Every stalled socket is closed: the excess at once, the held ones at the timeout.
    let mut reads = tokio::task::JoinSet::new();
    for mut s in stalled {
        reads.spawn(async move { read_to_close(&mut s).await.1 });
    }
    let mut held = 0;
    while let Some(after) = reads.join_next().await {
        held += usize::from(after.unwrap() >= header / 2);
    }
    assert!(
        held <= 16,
        "{held} sockets held past half the header timeout"
    );
    let body = http_get(&metrics, "/metrics").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let refused = sample(
        &body,
        "pylon_http_connections_refused_total{listener=\"metrics\",reason=\"limit\"}",
    )
    .unwrap();
    let timed_out = sample(
        &body,
        "pylon_http_timeouts_total{listener=\"metrics\",reason=\"header\"}",
    )
    .unwrap();
    assert_eq!(refused + timed_out, 300, "{body}");
    assert!((1..=16).contains(&timed_out), "{body}");
    c.shutdown(T).await;
}

/// A soft limit below the hard one is raised to it at start.
#[tokio::test]
async fn the_soft_fd_limit_is_raised_to_the_hard_limit() {
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    if hard <= 1024 {
        eprintln!("skipped: the hard RLIMIT_NOFILE here is {hard}, no room above 1024");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut pylon = Running::start(
        dir.path(),
        Nofile::Soft(1024),
        "",
        &["--listen", "/ip4/127.0.0.1/tcp/0"],
    );
    let raised = pylon.wait_log("raised the file descriptor limit").await;
    assert!(raised.contains("from 1024 to"), "{raised}");
    let (_, metrics) = pylon.addresses().await;
    assert_eq!(
        pylon.nofile(),
        (hard, hard),
        "soft limit raised to the hard one"
    );
    let soft = hard;
    let body = http_get(&metrics, "/metrics").await;
    assert_eq!(sample(&body, "pylon_fd_limit"), Some(soft), "{body}");
    assert_eq!(
        sample(&body, "pylon_connections_max_effective"),
        Some(4096),
        "{body}"
    );
    assert!(!pylon.log.iter().any(|l| l.contains("lowered")));
}

/// With 256 descriptors, connections.max is lowered to what fits, with a warning and a
/// metric.
#[tokio::test]
async fn a_low_fd_limit_lowers_connections_max_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let mut pylon = Running::start(
        dir.path(),
        Nofile::Both(256),
        "[metrics]\nmax_connections = 16\n",
        &["--listen", "/ip4/127.0.0.1/tcp/0"],
    );
    let warning = pylon.wait_log("file descriptor limit 256 is too low").await;
    assert!(warning.contains("WARN"), "{warning}");
    let lowered: u64 = after(&warning, "connections.max lowered to ")
        .trim_end_matches(',')
        .parse()
        .unwrap();
    assert!(lowered > 0 && lowered < 256, "{warning}");
    let (_, metrics) = pylon.addresses().await;
    assert_eq!(pylon.nofile(), (256, 256));
    let body = http_get(&metrics, "/metrics").await;
    assert_eq!(sample(&body, "pylon_fd_limit"), Some(256), "{body}");
    assert_eq!(
        sample(&body, "pylon_connections_max_effective"),
        Some(lowered),
        "{body}"
    );
}

/// `pylon run` on `listen` that is expected to fail at once: its stderr.
async fn run_fails(data_dir: &Path, listen: &str, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--metrics", "off", "--listen", listen])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(T, cmd.output())
        .await
        .expect("pylon did not exit")
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

#[tokio::test]
async fn a_second_node_on_a_taken_port_is_refused_naming_the_address() {
    for suffix in ["", "/ws"] {
        let dir = tempfile::tempdir().unwrap();
        let listen = format!("/ip4/127.0.0.1/tcp/0{suffix}");
        let mut first = Running::start(dir.path(), Nofile::Inherit, "", &["--listen", &listen]);
        let (addr, _) = first.addresses().await;
        let port = match addr.iter().nth(1) {
            Some(multiaddr::Protocol::Tcp(p)) => p,
            _ => panic!("{addr}"),
        };
        let other = tempfile::tempdir().unwrap();
        let taken = format!("/ip4/127.0.0.1/tcp/{port}{suffix}");
        let err = run_fails(other.path(), &taken, &[]).await;
        assert!(
            err.contains(&taken)
                && err.contains(&format!("127.0.0.1:{port}"))
                && err.contains("already in use"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn config_mistakes_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let local = "/ip4/127.0.0.1/tcp/0";
    let err = run_fails(dir.path(), local, &[("PYLON_LOG", "debugg")]).await;
    assert!(err.contains("`log`") && err.contains("debugg"), "{err}");
    let err = run_fails(dir.path(), local, &[("RUST_LOG", "debugg")]).await;
    assert!(err.contains("RUST_LOG") && err.contains("debugg"), "{err}");
    let err = run_fails(
        dir.path(),
        local,
        &[("PYLON_KAD__RECORD_TTL", "999999999999999999d")],
    )
    .await;
    assert!(err.contains("kad.record_ttl"), "{err}");

    // A fractional duration is taken.
    let out = Command::new(BIN)
        .arg("config")
        .arg("--data-dir")
        .arg(dir.path())
        .env("PYLON_CONNECTIONS__DIAL_TIMEOUT", "1.5s")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // A listen address naming another node.
    let other = pylon_node::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let listen = format!("/ip4/127.0.0.1/tcp/0/p2p/{other}");
    let err = run_fails(dir.path(), &listen, &[]).await;
    assert!(
        err.contains("listen[0]") && err.contains(&other.to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn unsafe_key_files_are_refused_naming_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("identity.key");
    let shown = key.display().to_string();
    let out = Command::new(BIN)
        .arg("id")
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(out.status.success());

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = run_fails(dir.path(), "/ip4/127.0.0.1/tcp/0", &[]).await;
    assert!(err.contains(&shown) && err.contains("chmod 600"), "{err}");

    std::fs::write(&key, b"").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = run_fails(dir.path(), "/ip4/127.0.0.1/tcp/0", &[]).await;
    assert!(err.contains(&shown) && err.contains("is empty"), "{err}");

    // A symlink to /dev/zero: refused at once instead of read without bound.
    std::fs::remove_file(&key).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &key).unwrap();
    let err = run_fails(dir.path(), "/ip4/127.0.0.1/tcp/0", &[]).await;
    assert!(
        err.contains(&shown) && err.contains("not a regular file"),
        "{err}"
    );
}
