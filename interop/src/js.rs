//! Drives the js-libp2p interop peer (`interop/js/peer.mjs`) as a child process.
//!
//! The script runs a js-libp2p 3.x node (TCP, WebSocket and optionally QUIC transports; noise or
//! TLS; yamux; identify + ping; agent version `js-libp2p-interop`) and reports what it sees as one
//! JSON object per line on stdout, e.g. `{"event":"identify",...}`, `{"event":"ping",...}`; the full
//! list of events is documented at the top of `peer.mjs`. [`JsPeer`] spawns it, reads those lines
//! with a timeout on every wait, and stops it by closing its stdin. The child is killed if a
//! [`JsPeer`] is dropped, so a failing test leaves no stray process; its stderr is inherited so
//! failures are visible in the test output.
//!
//! [`JsPeer::listen`] and [`JsPeer::dial`] use TCP + noise; [`JsPeer::listen_with`] and
//! [`JsPeer::dial_with`] take [`JsOptions`] to pick the transport and the security protocol. Every
//! `connection_open` event reports what js-libp2p negotiated; parse it as [`ConnectionOpen`].
//!
//! The npm dependencies must be installed first: `npm ci --prefix interop/js`.
//!
//! ```text
//! let mut js = JsPeer::listen().await?;
//! // ... dial js.addrs[0] from the node under test ...
//! let id: Identify = serde_json::from_value(js.wait_for("identify", T).await?)?;
//! js.wait_for("ping", T).await?;
//! js.stop().await?;
//!
//! let opts = JsOptions { transport: JsTransport::Ws, security: JsSecurity::Tls };
//! let mut js = JsPeer::listen_with(&opts).await?; // js.addrs[0] is /ip4/127.0.0.1/tcp/N/ws/p2p/..
//! // ... dial it ...
//! let open: ConnectionOpen = serde_json::from_value(js.wait_for("connection_open", T).await?)?;
//! assert_eq!(open.encryption.as_deref(), Some(JsSecurity::Tls.protocol_id()));
//! ```

use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::{timeout_at, Instant};

/// Path of the js-libp2p peer script.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/js/peer.mjs");
/// Directory of the npm project holding the script.
pub const JS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/js");
/// How long [`JsPeer::listen`] and [`JsPeer::dial`] wait for the node to start.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`JsPeer::stop`] waits for the process to exit before killing it.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How many recent events an error message quotes.
const CONTEXT_EVENTS: usize = 5;

/// The transport a js peer listens on (`peer.mjs --transport`). Whatever it listens on, a js peer
/// can dial TCP and WebSocket addresses, and QUIC ones too (`peer.mjs` loads QUIC when the dialed
/// address is `/quic-v1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JsTransport {
    /// `/ip4/127.0.0.1/tcp/0`.
    #[default]
    Tcp,
    /// Plain WebSocket: `/ip4/127.0.0.1/tcp/0/ws`.
    Ws,
    /// `/ip4/127.0.0.1/udp/0/quic-v1` (`@chainsafe/libp2p-quic`). QUIC has its own TLS 1.3
    /// handshake and muxing, so [`JsOptions::security`] does not apply to it.
    Quic,
}

impl JsTransport {
    /// The `--transport` value, which is also the `transport` field of a [`ConnectionOpen`] event
    /// on a connection of this transport.
    pub fn name(self) -> &'static str {
        match self {
            JsTransport::Tcp => "tcp",
            JsTransport::Ws => "ws",
            JsTransport::Quic => "quic",
        }
    }
}

/// The connection encrypter a js peer offers and accepts (`peer.mjs --security`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JsSecurity {
    /// `@chainsafe/libp2p-noise`.
    #[default]
    Noise,
    /// `@libp2p/tls` (libp2p TLS 1.3; offers the muxers then `libp2p` as ALPN protocols).
    Tls,
}

impl JsSecurity {
    /// The `--security` value.
    pub fn name(self) -> &'static str {
        match self {
            JsSecurity::Noise => "noise",
            JsSecurity::Tls => "tls",
        }
    }

    /// The protocol id js-libp2p reports as [`ConnectionOpen::encryption`].
    pub fn protocol_id(self) -> &'static str {
        match self {
            JsSecurity::Noise => "/noise",
            JsSecurity::Tls => "/tls/1.0.0",
        }
    }
}

/// How to start a js peer. The default, TCP + noise, is what [`JsPeer::listen`] and
/// [`JsPeer::dial`] use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JsOptions {
    /// What to listen on.
    pub transport: JsTransport,
    /// The only security protocol offered (on TCP and WebSocket connections).
    pub security: JsSecurity,
}

impl JsOptions {
    fn args(&self) -> [&'static str; 4] {
        [
            "--transport",
            self.transport.name(),
            "--security",
            self.security.name(),
        ]
    }
}

/// A `connection_open` event: a connection js-libp2p upgraded, and what it negotiated on it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionOpen {
    pub peer_id: String,
    /// Ends in `/p2p/<remote peer id>`. For an inbound connection, the remote's source address.
    pub remote_addr: String,
    /// `"inbound"` or `"outbound"`.
    pub direction: String,
    /// `"tcp"`, `"ws"`, `"wss"` or `"quic"`, from `remote_addr` (see [`JsTransport::name`]).
    pub transport: Option<String>,
    /// The security protocol id (see [`JsSecurity::protocol_id`]); `"native"` on QUIC.
    pub encryption: Option<String>,
    /// The stream muxer protocol id, e.g. `"/yamux/1.0.0"`; `"quic"` on QUIC.
    pub multiplexer: Option<String>,
    /// How the muxer was chosen: `"inlined"` (in the security handshake: noise extensions or TLS
    /// ALPN), `"multistream-select"` (after it), or `"native"` (QUIC).
    pub muxer_negotiation: Option<String>,
}

/// An `identify` event: what js-libp2p learned from the remote's identify message.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identify {
    pub peer_id: String,
    pub remote_addr: Option<String>,
    pub agent_version: Option<String>,
    pub protocol_version: Option<String>,
    pub protocols: Vec<String>,
    pub listen_addrs: Vec<String>,
    /// As js-libp2p reports it: includes a `/p2p/<js peer id>` suffix.
    pub observed_addr: Option<String>,
    /// Present only if js-libp2p verified the remote's signed peer record (RFC 0003).
    pub signed_peer_record: Option<SignedPeerRecord>,
    /// Whether js-libp2p's peer store holds a signed envelope for the remote.
    pub peer_store_has_envelope: bool,
}

/// The verified signed peer record of an [`Identify`] event.
#[derive(Debug, Clone, Deserialize)]
pub struct SignedPeerRecord {
    /// Sequence number, as a decimal string (it is a u64).
    pub seq: String,
    pub addrs: Vec<String>,
}

/// A `ping` event.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ping {
    pub peer_id: String,
    pub rtt_ms: f64,
}

/// A running js-libp2p peer.
pub struct JsPeer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    history: Vec<Value>,
    /// The js node's peer id.
    pub peer_id: String,
    /// The js node's listen addresses, each with a `/p2p/<peer id>` suffix.
    pub addrs: Vec<String>,
}

impl JsPeer {
    /// Spawns `node peer.mjs listen` (TCP + noise) and waits for its `listening` line.
    pub async fn listen() -> Result<JsPeer> {
        Self::spawn(&["listen"]).await
    }

    /// Spawns `node peer.mjs listen --transport T --security S` and waits for its `listening`
    /// line.
    pub async fn listen_with(opts: &JsOptions) -> Result<JsPeer> {
        let [a, b, c, d] = opts.args();
        Self::spawn(&["listen", a, b, c, d]).await
    }

    /// Spawns `node peer.mjs dial ADDR` and waits for its `listening` line. `addr` must end in
    /// `/p2p/<peer id>`. The outcome of the dial shows up as later events: `identify`, `ping`,
    /// then `done`, or `error`. The js peer offers noise and listens on the transport of `addr`.
    pub async fn dial(addr: &str) -> Result<JsPeer> {
        Self::spawn(&["dial", addr]).await
    }

    /// Like [`JsPeer::dial`], with `--transport T --security S`. `addr` picks the transport of
    /// the dial; `opts.transport` is only what the js peer listens on.
    pub async fn dial_with(addr: &str, opts: &JsOptions) -> Result<JsPeer> {
        let [a, b, c, d] = opts.args();
        Self::spawn(&["dial", addr, a, b, c, d]).await
    }

    async fn spawn(args: &[&str]) -> Result<JsPeer> {
        let modules = Path::new(JS_DIR).join("node_modules");
        if !modules.is_dir() {
            bail!(
                "js-libp2p interop peer is not installed ({} is missing): run `npm ci --prefix interop/js`",
                modules.display()
            );
        }
        let mut child = Command::new("node")
            .arg(SCRIPT)
            .args(args)
            .current_dir(JS_DIR)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning `node` (is Node.js >= 20 on PATH?)")?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("child has no stdout pipe"))?;
        let mut peer = JsPeer {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            history: Vec::new(),
            peer_id: String::new(),
            addrs: Vec::new(),
        };
        let listening = peer
            .wait_for("listening", STARTUP_TIMEOUT)
            .await
            .with_context(|| format!("starting js peer `node peer.mjs {}`", args.join(" ")))?;
        peer.peer_id = listening["peerId"]
            .as_str()
            .ok_or_else(|| anyhow!("listening event without peerId: {listening}"))?
            .to_owned();
        peer.addrs = serde_json::from_value(listening["addrs"].clone())
            .with_context(|| format!("listening event with bad addrs: {listening}"))?;
        Ok(peer)
    }

    /// Returns the next event. Errors on timeout, on EOF (the process exited), and on a stdout
    /// line that is not a JSON object with an `event` field.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Value> {
        self.next_event_until(Instant::now() + timeout).await
    }

    async fn next_event_until(&mut self, deadline: Instant) -> Result<Value> {
        let line = match timeout_at(deadline, self.lines.next_line()).await {
            Err(_) => bail!("timed out waiting for the js peer{}", self.recent()),
            Ok(Err(e)) => return Err(e).context("reading the js peer's stdout"),
            Ok(Ok(None)) => {
                let status = match self.child.try_wait() {
                    Ok(Some(status)) => status.to_string(),
                    _ => "still running".to_owned(),
                };
                bail!(
                    "js peer closed its stdout (process: {status}){}",
                    self.recent()
                )
            }
            Ok(Ok(Some(line))) => line,
        };
        let event: Value = serde_json::from_str(&line)
            .with_context(|| format!("js peer printed a non-JSON line: {line:?}"))?;
        if event.get("event").and_then(Value::as_str).is_none() {
            bail!("js peer printed a line without an \"event\" field: {line}");
        }
        self.history.push(event.clone());
        Ok(event)
    }

    /// Waits for the next event named `event`, skipping others. Returns early with an error if
    /// an `error` event (fatal) or an `{event}_error` event (e.g. `identify_error`,
    /// `ping_error`) arrives, and on timeout or EOF.
    pub async fn wait_for(&mut self, event: &str, timeout: Duration) -> Result<Value> {
        self.wait_matching(event, None, timeout).await
    }

    /// Like [`JsPeer::wait_for`], but only considers events (and `{event}_error` events) whose
    /// `peerId` is `peer_id`. A fatal `error` event still ends the wait.
    pub async fn wait_for_peer(
        &mut self,
        event: &str,
        peer_id: &str,
        timeout: Duration,
    ) -> Result<Value> {
        self.wait_matching(event, Some(peer_id), timeout).await
    }

    async fn wait_matching(
        &mut self,
        event: &str,
        peer_id: Option<&str>,
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let error_name = format!("{event}_error");
        loop {
            let ev = self
                .next_event_until(deadline)
                .await
                .with_context(|| format!("waiting for {event:?} event"))?;
            let name = ev["event"].as_str().unwrap_or_default();
            if name == "error" {
                bail!("js peer failed while waiting for {event:?}: {ev}");
            }
            if peer_id.is_some_and(|p| ev["peerId"].as_str() != Some(p)) {
                continue;
            }
            if name == event {
                return Ok(ev);
            }
            if name == error_name {
                bail!("js peer reported {error_name}: {ev}");
            }
        }
    }

    /// All events received so far, oldest first.
    pub fn history(&self) -> &[Value] {
        &self.history
    }

    /// Closes the child's stdin, waits up to [`STOP_TIMEOUT`] for it to exit, and kills it if it
    /// has not. Errors if it had to be killed or exited unsuccessfully.
    pub async fn stop(mut self) -> Result<()> {
        drop(self.stdin.take());
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status.context("waiting for the js peer to exit")?;
                if !status.success() {
                    bail!("js peer exited with {status}{}", self.recent());
                }
                Ok(())
            }
            Err(_) => {
                self.child
                    .kill()
                    .await
                    .context("killing the js peer after it did not exit")?;
                bail!("js peer did not exit within {STOP_TIMEOUT:?} of closing stdin; killed it")
            }
        }
    }

    /// The last few events, for error messages.
    fn recent(&self) -> String {
        let start = self.history.len().saturating_sub(CONTEXT_EVENTS);
        let mut out = String::new();
        if start < self.history.len() {
            out.push_str("; last events:");
            for ev in &self.history[start..] {
                let _ = write!(out, "\n  {ev}");
            }
        }
        out
    }
}
