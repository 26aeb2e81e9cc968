//! What the integration tests of the `pylon` binary share: the binary under test, a
//! running `pylon run` whose log is read line by line, its HTTP endpoints, and peers in
//! this process to point at it. Every wait is bounded by [`T`].
// Each test binary uses a part of this.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

pub(crate) mod http;

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use pylon_node::node::Node;
use pylon_node::protocols::autonat::proto::{V1Message, V1_PROTOCOL};
use pylon_node::{Multiaddr, PeerId};
use pylon_testkit::node as kit;
// Re-exported for the tests (not every test binary uses both).
#[allow(unused_imports)]
pub(crate) use pylon_testkit::node::{kad_node, LOCAL_TCP};
use pylon_testkit::wait;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};

/// The bound on every wait.
pub(crate) const T: Duration = Duration::from_secs(20);

/// The binary under test; `TEST_PYLON_BIN` runs the scenarios against another build (a
/// release binary, or an older commit to reproduce a defect).
pub(crate) fn bin() -> String {
    std::env::var("TEST_PYLON_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_pylon").to_string())
}

/// `pylon <name> --data-dir <data_dir>`.
pub(crate) fn subcommand(name: &str, data_dir: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg(name).arg("--data-dir").arg(data_dir);
    cmd
}

/// `pylon run` on `data_dir`, listening on `listen`, with its metrics and its admin API on
/// loopback ports chosen by the kernel, in the minimal profile (no role unless the test
/// names one; `--profile public` in `extra` restores the default); `extra` arguments and
/// `env` variables added.
pub(crate) fn pylon_command(
    data_dir: &Path,
    listen: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Command {
    let mut cmd = subcommand("run", data_dir);
    cmd.args([
        "--listen",
        listen,
        "--metrics",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ])
    .env("PYLON_PROFILE", "minimal")
    .args(extra)
    .envs(env.iter().copied());
    cmd
}

/// A running `pylon`, its log (stderr) read as the test asks for lines.
pub(crate) struct Running {
    pub child: Child,
    lines: tokio::io::Lines<BufReader<ChildStderr>>,
    /// Every line read so far.
    pub log: Vec<String>,
}

impl Running {
    /// Spawns `cmd` (a [`pylon_command`], or one that execs it) with `RUST_LOG=info`, its
    /// stderr piped, stdin and stdout closed; the process is killed when this is dropped.
    pub(crate) fn spawn(cmd: Command) -> Running {
        Self::spawn_logging(cmd, Some("info"))
    }

    /// [`Running::spawn`] with `RUST_LOG` set to `rust_log`, or unset (the config's `log`
    /// key then sets the filter).
    pub(crate) fn spawn_logging(mut cmd: Command, rust_log: Option<&str>) -> Running {
        match rust_log {
            Some(filter) => cmd.env("RUST_LOG", filter),
            None => cmd.env_remove("RUST_LOG"),
        };
        let mut child = cmd
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

    /// `pylon run` on `data_dir`, listening on [`LOCAL_TCP`], with `extra` arguments.
    pub(crate) fn start(data_dir: &Path, extra: &[&str]) -> Running {
        Self::spawn(pylon_command(data_dir, LOCAL_TCP, extra, &[]))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Reads log lines until one contains `needle` (None at the end of the log or after
    /// `T`).
    pub(crate) async fn find_log(&mut self, needle: &str) -> Option<String> {
        tokio::time::timeout(T, async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                self.log.push(line.clone());
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    /// Reads log lines until one contains `needle`; returns it, or fails showing the log.
    pub(crate) async fn wait_log(&mut self, needle: &str) -> String {
        match self.find_log(needle).await {
            Some(line) => line,
            None => panic!(
                "no log line with {needle:?}; log so far:\n{}",
                self.log.join("\n")
            ),
        }
    }

    /// The first p2p listen address (with /p2p/) and the metrics `host:port`, from the
    /// start-up lines (in whichever order they come).
    pub(crate) async fn addresses(&mut self) -> (Multiaddr, String) {
        let (mut listen, mut metrics) = (None, None);
        while listen.is_none() || metrics.is_none() {
            let line = self.wait_log(" on ").await;
            if line.contains("listening on ") && listen.is_none() {
                listen = Some(field_after(&line, "listening on ").parse().unwrap());
            } else if line.contains("metrics on http://") {
                let m = field_after(&line, "metrics on http://").trim_end_matches("/metrics");
                metrics = Some(m.to_string());
            }
        }
        (listen.unwrap(), metrics.unwrap())
    }

    /// The admin API's `host:port`, from its start-up line (read already, or waited for).
    pub(crate) async fn admin(&mut self) -> String {
        const MARKER: &str = "admin API on http://";
        let line = match self.log.iter().find(|l| l.contains(MARKER)) {
            Some(line) => line.clone(),
            None => self.wait_log(MARKER).await,
        };
        field_after(&line, MARKER)
            .trim_end_matches("/api/v1")
            .to_string()
    }

    /// Sends `signal` (`kill` syntax: "-INT", "-TERM").
    pub(crate) fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The exit status, or None if the process is still running after `T`.
    pub(crate) async fn exit(&mut self) -> Option<ExitStatus> {
        let status = tokio::time::timeout(T, self.child.wait()).await.ok()?;
        Some(status.unwrap())
    }

    /// Stops by `signal`: storage is flushed and the process exits 0. Returns the log
    /// line that said so.
    pub(crate) async fn stop(mut self, signal: &str) -> String {
        self.signal(signal);
        let line = self.wait_log("storage flushed").await;
        let exit = self.exit().await.expect("exit after the signal");
        assert!(exit.success(), "exit status {exit}");
        line
    }
}

/// The whitespace-delimited word after `marker` in `line`.
pub(crate) fn field_after<'a>(line: &'a str, marker: &str) -> &'a str {
    let start = line.find(marker).unwrap() + marker.len();
    line[start..].split_whitespace().next().unwrap()
}

/// The PeerId a `/p2p/` address ends with.
pub(crate) fn peer_of(addr: &Multiaddr) -> PeerId {
    match addr.iter().last() {
        Some(multiaddr::Protocol::P2p(p)) => p,
        _ => panic!("no /p2p/ in {addr}"),
    }
}

/// `GET path` from `hostport`: the whole answer, status line to body.
pub(crate) async fn http_get(hostport: &str, path: &str) -> String {
    http::get(hostport, path, T).await
}

/// Polls `path` until its answer contains `needle`; returns that answer. (The process
/// under test tells this one nothing: polled.)
pub(crate) async fn wait_http(hostport: &str, path: &str, needle: &str) -> String {
    let mut body = String::new();
    let what = format!("{path} answering {needle:?}");
    wait::until_async(&what, T, async || {
        body = http_get(hostport, path).await;
        body.contains(needle)
    })
    .await;
    body
}

/// Polls the metrics endpoint until `line` (a sample, value included) shows up.
pub(crate) async fn wait_metric(hostport: &str, line: &str) {
    wait_http(hostport, "/metrics", line).await;
}

/// A plain peer in this process on [`LOCAL_TCP`]: identify and ping, no DHT, nothing
/// stored. (A DHT node: [`kad_node`].)
pub(crate) async fn client() -> Node {
    kit::start(&[LOCAL_TCP]).await
}

/// One AutoNAT v1 exchange with `server`, asking it to dial `addrs`.
pub(crate) async fn ask_v1(from: &Node, server: PeerId, addrs: &[Multiaddr]) -> V1Message {
    use prost::Message;
    use pylon_node::varint::{read_frame, write_frame};
    let mut s = from
        .host
        .open_stream(&server, &[V1_PROTOCOL])
        .await
        .unwrap();
    let msg = V1Message::dial(from.peer_id(), addrs);
    write_frame(&mut s, &msg.encode_to_vec()).await.unwrap();
    let bytes = tokio::time::timeout(T, read_frame(&mut s, 4096))
        .await
        .unwrap()
        .unwrap();
    V1Message::decode(bytes.as_slice()).unwrap()
}
