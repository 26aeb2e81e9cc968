//! The release binary tried from outside (issue 11): the metrics listener under stalled
//! and excess sockets, the file-descriptor limit, exclusive listen ports, and the config
//! and key-file mistakes that used to pass silently. Loopback only; every wait is bounded.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use pylon_node::protocols::ping;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::process::Command;

mod common;
use common::http::{read_to_close, sample};
use common::{
    client, field_after, http_get, peer_of, pylon_command, subcommand, Running, LOCAL_TCP, T,
};

/// Soft and hard `RLIMIT_NOFILE` for the child, set by the shell before it execs pylon.
#[derive(Clone, Copy)]
enum Nofile {
    Inherit,
    Soft(u64),
    Both(u64),
}

/// `pylon run` with `config` as its file, listening on `listen`, under `nofile`.
fn start(data_dir: &Path, nofile: Nofile, config: &str, listen: &str) -> Running {
    let file = data_dir.join("pylon.toml");
    std::fs::write(&file, config).unwrap();
    let pylon = pylon_command(data_dir, listen, &["--config", file.to_str().unwrap()], &[]);
    let pylon = pylon.as_std();
    let limits = match nofile {
        Nofile::Inherit => String::new(),
        Nofile::Soft(n) => format!("ulimit -S -n {n} && "),
        Nofile::Both(n) => format!("ulimit -S -n {n} && ulimit -H -n {n} && "),
    };
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!("{limits}exec \"$@\""))
        .arg("sh")
        .arg(pylon.get_program())
        .args(pylon.get_args())
        .envs(pylon.get_envs().filter_map(|(k, v)| Some((k, v?))));
    Running::spawn(sh)
}

/// Soft and hard "Max open files" of the running process, from /proc.
fn nofile(pylon: &Running) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", pylon.pid())).unwrap();
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

/// The reproduction: a node with 256 descriptors and 300 stalled sockets on its
/// metrics port. The listener holds `max_connections` of them and closes the rest at
/// once, so p2p connections are still accepted; the held ones are closed after the
/// header timeout, and /metrics answers again, having counted both.
#[tokio::test]
async fn stalled_metrics_sockets_neither_starve_p2p_nor_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let header = Duration::from_secs(2);
    let mut pylon = start(
        dir.path(),
        Nofile::Both(256),
        "[metrics]\nheader_timeout = \"2s\"\nmax_connections = 16\n",
        LOCAL_TCP,
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
        reads.spawn(async move { read_to_close(&mut s, T).await.1 });
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
    let refused: u64 = sample(
        &body,
        "pylon_http_connections_refused_total{listener=\"metrics\",reason=\"limit\"}",
    )
    .unwrap();
    let timed_out: u64 = sample(
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
    let mut pylon = start(dir.path(), Nofile::Soft(1024), "", LOCAL_TCP);
    let raised = pylon.wait_log("raised the file descriptor limit").await;
    assert!(raised.contains("from 1024 to"), "{raised}");
    let (_, metrics) = pylon.addresses().await;
    assert_eq!(
        nofile(&pylon),
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
    let mut pylon = start(
        dir.path(),
        Nofile::Both(256),
        "[metrics]\nmax_connections = 16\n",
        LOCAL_TCP,
    );
    let warning = pylon.wait_log("file descriptor limit 256 is too low").await;
    assert!(warning.contains("WARN"), "{warning}");
    let lowered: u64 = field_after(&warning, "connections.max lowered to ")
        .trim_end_matches(',')
        .parse()
        .unwrap();
    assert!(lowered > 0 && lowered < 256, "{warning}");
    let (_, metrics) = pylon.addresses().await;
    assert_eq!(nofile(&pylon), (256, 256));
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
    let mut cmd = subcommand("run", data_dir);
    cmd.args(["--metrics", "off", "--listen", listen])
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
        let mut first = start(dir.path(), Nofile::Inherit, "", &listen);
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
    let err = run_fails(dir.path(), LOCAL_TCP, &[("PYLON_LOG", "debugg")]).await;
    assert!(err.contains("`log`") && err.contains("debugg"), "{err}");
    let err = run_fails(dir.path(), LOCAL_TCP, &[("RUST_LOG", "debugg")]).await;
    assert!(err.contains("RUST_LOG") && err.contains("debugg"), "{err}");
    let err = run_fails(
        dir.path(),
        LOCAL_TCP,
        &[("PYLON_KAD__RECORD_TTL", "999999999999999999d")],
    )
    .await;
    assert!(err.contains("kad.record_ttl"), "{err}");

    // A fractional duration is taken.
    let out = subcommand("config", dir.path())
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
    let out = subcommand("id", dir.path()).output().await.unwrap();
    assert!(out.status.success());

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = run_fails(dir.path(), LOCAL_TCP, &[]).await;
    assert!(err.contains(&shown) && err.contains("chmod 600"), "{err}");

    std::fs::write(&key, b"").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = run_fails(dir.path(), LOCAL_TCP, &[]).await;
    assert!(err.contains(&shown) && err.contains("is empty"), "{err}");

    // A symlink to /dev/zero: refused at once instead of read without bound.
    std::fs::remove_file(&key).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &key).unwrap();
    let err = run_fails(dir.path(), LOCAL_TCP, &[]).await;
    assert!(
        err.contains(&shown) && err.contains("not a regular file"),
        "{err}"
    );
}
