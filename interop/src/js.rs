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
//! [`JsPeer::listen_kad`] adds a Kademlia DHT (`@libp2p/kad-dht` on `/ipfs/kad/1.0.0`, server or
//! client mode); the `kad_*` methods run its operations through `peer.mjs`'s stdin commands
//! ([`JsPeer::command`]) and return what js-libp2p reported, per-peer failures included.
//!
//! [`JsOptions::autonat`] adds js-libp2p's AutoNAT v1 and/or v2 clients (`@libp2p/autonat`,
//! `@libp2p/autonat-v2`); [`JsPeer::addresses`] shows which of its addresses js-libp2p holds
//! verified and what the clients counted so far.
//!
//! [`JsOptions::relay`] adds circuit relay v2 (`@libp2p/circuit-relay-v2`'s
//! `circuitRelayTransport`): the js peer dials `…/p2p/R/p2p-circuit/p2p/D` addresses
//! ([`JsPeer::connect`]), accepts relayed connections, and listens through a relay
//! ([`JsPeer::listen_relay`], which reserves). A relayed connection shows up as a
//! [`ConnectionOpen`] of transport `"p2p-circuit"` with [`ConnectionOpen::limits`]; the js peer
//! pings over it with [`JsPeer::ping`] (js-libp2p's own ping service would dial again rather
//! than use a limited connection).
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
//! let opts = JsOptions { transport: JsTransport::Ws, security: JsSecurity::Tls, ..Default::default() };
//! let mut js = JsPeer::listen_with(&opts).await?; // js.addrs[0] is /ip4/127.0.0.1/tcp/N/ws/p2p/..
//! // ... dial it ...
//! let open: ConnectionOpen = serde_json::from_value(js.wait_for("connection_open", T).await?)?;
//! assert_eq!(open.encryption.as_deref(), Some(JsSecurity::Tls.protocol_id()));
//!
//! let opts = JsOptions { relay: true, ..Default::default() };
//! let mut js = JsPeer::listen_with(&opts).await?;
//! let listening = js.listen_relay(&relay_addr).await?; // reserved; listening.addrs: its circuit addresses
//! let conn = js.connect(&format!("{relay_addr}/p2p-circuit/p2p/{other}")).await?;
//! let rtt = js.ping(&other).await?; // over the newest connection to `other`, the circuit
//!
//! // In a network namespace, on every interface, with DCUtR:
//! let opts = JsOptions { transport: JsTransport::Quic, relay: true, dcutr: true,
//!                        host: Some(Ipv4Addr::UNSPECIFIED), ..Default::default() };
//! let mut js = JsPeer::listen_in("ns-name", &opts).await?;
//!
//! // AutoNAT v1 client (and server); watch js-libp2p verify its addresses:
//! let opts = JsOptions { autonat: JsAutonat::V1, host: Some(public_ip), ..Default::default() };
//! let mut js = JsPeer::listen_in("ns-name", &opts).await?;
//! js.connect(&autonat_server_addr).await?; // js asks once identify shows the protocol
//! let addrs = js.addresses().await?; // addrs.addrs[..].verified, addrs.autonat.v1: counts
//!
//! let mut js = JsPeer::listen_kad(JsKadMode::Server).await?;
//! js.kad_bootstrap(&bootstrap_addr).await?; // dials, waits until it is in js's routing table
//! let closest = js.kad_closest(b"some key").await?.peers;
//! ```

use std::fmt::Write as _;
use std::net::Ipv4Addr;
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

/// How long the `kad_*` methods let a DHT operation run (js aborts it then); the wait for the
/// answer is [`COMMAND_SLACK`] longer so that js's own error arrives first.
pub const KAD_TIMEOUT: Duration = Duration::from_secs(20);
/// Added to a command's timeout when waiting for its answer.
pub const COMMAND_SLACK: Duration = Duration::from_secs(3);
/// How long [`JsPeer::connect`], [`JsPeer::ping`] and [`JsPeer::listen_relay`] let js try
/// (js aborts then; the wait is [`COMMAND_SLACK`] longer).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

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

/// Which AutoNAT clients a js peer runs (`peer.mjs --autonat`); each also serves its own
/// protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JsAutonat {
    /// No AutoNAT.
    #[default]
    Off,
    /// `@libp2p/autonat` (`/libp2p/autonat/1.0.0`).
    V1,
    /// `@libp2p/autonat-v2` (`/libp2p/autonat/2/dial-request`, `/dial-back`).
    V2,
    /// Both.
    Both,
}

impl JsAutonat {
    /// The `--autonat` value, if any.
    pub fn name(self) -> Option<&'static str> {
        match self {
            JsAutonat::Off => None,
            JsAutonat::V1 => Some("v1"),
            JsAutonat::V2 => Some("v2"),
            JsAutonat::Both => Some("v1,v2"),
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
    /// Also load circuit relay v2's client (`peer.mjs --relay`): dial through relays, accept
    /// relayed connections (from any relay), [`JsPeer::listen_relay`].
    pub relay: bool,
    /// Also run DCUtR (`peer.mjs --dcutr`; needs `relay`): js-libp2p upgrades relayed
    /// connections to direct ones. It sends only verified addresses of its own: see
    /// [`JsPeer::confirm_observed`].
    pub dcutr: bool,
    /// The address to listen on; `None` is 127.0.0.1.
    pub host: Option<Ipv4Addr>,
    /// AutoNAT clients to run ([`JsPeer::addresses`] shows their work).
    pub autonat: JsAutonat,
}

impl JsOptions {
    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--transport".to_owned(),
            self.transport.name().to_owned(),
            "--security".to_owned(),
            self.security.name().to_owned(),
        ];
        if self.relay {
            args.push("--relay".to_owned());
        }
        if self.dcutr {
            args.push("--dcutr".to_owned());
        }
        if let Some(host) = self.host {
            args.extend(["--host".to_owned(), host.to_string()]);
        }
        if let Some(versions) = self.autonat.name() {
            args.extend(["--autonat".to_owned(), versions.to_owned()]);
        }
        args
    }
}

/// The mode of a js peer's Kademlia DHT (`peer.mjs --kad`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsKadMode {
    /// Answers DHT requests and advertises `/ipfs/kad/1.0.0` (js-libp2p `clientMode: false`).
    Server,
    /// Only queries (js-libp2p `clientMode: true`); stays out of other peers' routing tables.
    Client,
}

impl JsKadMode {
    /// The `--kad` value.
    pub fn name(self) -> &'static str {
        match self {
            JsKadMode::Server => "server",
            JsKadMode::Client => "client",
        }
    }
}

/// A peer that failed during a DHT query (js-libp2p's `QUERY_ERROR` event). The query goes on
/// without it.
#[derive(Debug, Clone, Deserialize)]
pub struct KadQueryError {
    pub from: String,
    pub error: String,
}

/// Answer to [`JsPeer::kad_closest`].
#[derive(Debug, Clone, Deserialize)]
pub struct KadClosest {
    /// What `getClosestPeers` returned (peers that answered, nearest first).
    pub peers: Vec<String>,
    pub errors: Vec<KadQueryError>,
}

/// Answer to [`JsPeer::kad_put`].
#[derive(Debug, Clone, Deserialize)]
pub struct KadPut {
    /// Peers that answered PUT_VALUE by echoing the record.
    pub acks: Vec<String>,
    pub errors: Vec<KadQueryError>,
}

/// A record a peer returned to GET_VALUE.
#[derive(Debug, Clone, Deserialize)]
pub struct KadRecord {
    pub from: String,
    #[serde(deserialize_with = "hex_bytes")]
    pub value: Vec<u8>,
}

/// Answer to [`JsPeer::kad_get`].
#[derive(Debug, Clone, Deserialize)]
pub struct KadGet {
    /// The value js-libp2p picked (its `get` result), if any.
    #[serde(deserialize_with = "opt_hex_bytes")]
    pub value: Option<Vec<u8>>,
    /// Who gave that value; the js peer's own id if it came from its local store.
    pub from: Option<String>,
    /// Every GET_VALUE answer that carried a (valid) record.
    pub records: Vec<KadRecord>,
    pub errors: Vec<KadQueryError>,
}

/// Answer to [`JsPeer::kad_provide`].
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KadProvide {
    /// Peers ADD_PROVIDER was sent to (it has no reply).
    pub sent_to: Vec<String>,
    /// The js peer's addresses (what the announcement carried).
    pub addrs: Vec<String>,
    pub errors: Vec<KadQueryError>,
}

/// A provider as one peer reported it (or the js peer's own store, `from` = its own id).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KadProvider {
    pub from: String,
    pub peer_id: String,
    pub addrs: Vec<String>,
}

/// Answer to [`JsPeer::kad_providers`].
#[derive(Debug, Clone, Deserialize)]
pub struct KadProviders {
    pub providers: Vec<KadProvider>,
    pub errors: Vec<KadQueryError>,
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        bail!("not hex: {s:?}");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).with_context(|| format!("not hex: {s:?}")))
        .collect()
}

fn hex_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    unhex(&s).map_err(serde::de::Error::custom)
}

fn opt_hex_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| unhex(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// A u64 that `peer.mjs` prints as a decimal string (a js BigInt).
fn decimal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    s.parse()
        .map_err(|e| serde::de::Error::custom(format!("not a u64: {s:?}: {e}")))
}

fn opt_decimal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| {
            s.parse()
                .map_err(|e| serde::de::Error::custom(format!("not a u64: {s:?}: {e}")))
        })
        .transpose()
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
    /// `"tcp"`, `"ws"`, `"wss"` or `"quic"` (see [`JsTransport::name`]), or `"p2p-circuit"` for a
    /// relayed connection (whose `remote_addr` is `<relay addr>/p2p-circuit/p2p/<peer>`); from
    /// `remote_addr`.
    pub transport: Option<String>,
    /// The security protocol id (see [`JsSecurity::protocol_id`]); `"native"` on QUIC.
    pub encryption: Option<String>,
    /// The stream muxer protocol id, e.g. `"/yamux/1.0.0"`; `"quic"` on QUIC.
    pub multiplexer: Option<String>,
    /// How the muxer was chosen: `"inlined"` (in the security handshake: noise extensions or TLS
    /// ALPN), `"multistream-select"` (after it), or `"native"` (QUIC).
    pub muxer_negotiation: Option<String>,
    /// `None` for an unlimited connection; for a relayed one, the limits js-libp2p's relay
    /// client took from the relay's `Limit` (when dialing: the HOP `STATUS`; when accepting: the
    /// `STOP` `CONNECT`).
    #[serde(default)]
    pub limits: Option<ConnectionLimits>,
}

/// What js-libp2p made of a relay's `Limit` for one connection, read when it opened
/// (js-libp2p keeps a countdown; it does not end the connection itself).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConnectionLimits {
    /// Whole seconds left: js-libp2p reads `Limit.duration` as seconds.
    pub seconds: Option<u64>,
    /// Bytes left (`Limit.data`).
    #[serde(deserialize_with = "opt_decimal")]
    pub bytes: Option<u64>,
}

/// A `connection_close` event.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionClose {
    pub peer_id: String,
    pub remote_addr: String,
    /// As in [`ConnectionOpen::transport`].
    pub transport: Option<String>,
}

/// Answer to [`JsPeer::listen_relay`]: the js peer listens through a relay.
#[derive(Debug, Clone, Deserialize)]
pub struct RelayListen {
    /// The relay's peer id.
    pub relay: String,
    /// The js peer's `/p2p-circuit` addresses (with `/p2p/<js peer id>`) among its addresses.
    pub addrs: Vec<String>,
    pub reservation: JsReservation,
}

/// A reservation as js-libp2p's relay client holds it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JsReservation {
    /// `Reservation.expire`: Unix seconds.
    #[serde(deserialize_with = "decimal")]
    pub expire: u64,
    /// `expire` against js's clock, in ms (js refreshes 5 minutes before, at least 30 s on).
    pub expires_in_ms: f64,
    /// The relay's addresses: those of the answer plus the one js is connected to.
    pub addrs: Vec<String>,
    /// The voucher as js-libp2p decoded it (it checks no signature).
    pub voucher: Option<JsVoucher>,
}

/// The payload of a reservation voucher, as js-libp2p decoded it.
#[derive(Debug, Clone, Deserialize)]
pub struct JsVoucher {
    pub relay: String,
    pub peer: String,
    /// Unix seconds.
    #[serde(deserialize_with = "decimal")]
    pub expiration: u64,
}

/// One of the js peer's addresses as its address manager holds it.
#[derive(Debug, Clone, Deserialize)]
pub struct JsAddress {
    /// Without `/p2p/`.
    pub multiaddr: String,
    /// Whether js-libp2p counts it as verified (and so advertises it). Private addresses
    /// always are.
    pub verified: bool,
    /// `"transport"` (a listener's), `"observed"`, `"announce"`, `"ip-mapping"` or
    /// `"dns-mapping"`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// What one js AutoNAT client has counted so far for one address it is still deciding.
#[derive(Debug, Clone, Deserialize)]
pub struct JsAutonatResult {
    pub multiaddr: String,
    /// Servers that reached it.
    pub success: u32,
    /// Servers that could not.
    pub failure: u32,
    /// The "network segments" of the servers that answered (js-libp2p: an IPv4 address's
    /// first octet); one answer per segment counts.
    pub segments: Vec<String>,
}

/// The AutoNAT clients' pending results; `None` for a client the peer does not run.
#[derive(Debug, Clone, Deserialize)]
pub struct JsAutonatResults {
    pub v1: Option<Vec<JsAutonatResult>>,
    pub v2: Option<Vec<JsAutonatResult>>,
}

/// Answer to [`JsPeer::addresses`].
#[derive(Debug, Clone, Deserialize)]
pub struct JsAddresses {
    pub addrs: Vec<JsAddress>,
    pub autonat: JsAutonatResults,
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

/// A `ping` event, or the answer to [`JsPeer::ping`].
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ping {
    pub peer_id: String,
    pub rtt_ms: f64,
    /// The connection the ping ran on; `None` when js-libp2p's ping service chose it (the
    /// `ping` event of an unlimited connection).
    #[serde(default)]
    pub remote_addr: Option<String>,
}

/// A running js-libp2p peer.
pub struct JsPeer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    history: Vec<Value>,
    next_command_id: u64,
    /// The js node's peer id.
    pub peer_id: String,
    /// The js node's listen addresses, each with a `/p2p/<peer id>` suffix: those js-libp2p
    /// counts as verified (`getMultiaddrs()`), so a public address AutoNAT has not verified
    /// yet is missing here ([`JsPeer::addresses`] lists it).
    pub addrs: Vec<String>,
}

impl JsPeer {
    /// Spawns `node peer.mjs listen` (TCP + noise) and waits for its `listening` line.
    pub async fn listen() -> Result<JsPeer> {
        Self::spawn(None, &["listen"]).await
    }

    /// Spawns `node peer.mjs listen --transport T --security S` and waits for its `listening`
    /// line.
    pub async fn listen_with(opts: &JsOptions) -> Result<JsPeer> {
        let mut args = vec!["listen".to_owned()];
        args.extend(opts.args());
        Self::spawn(None, &args).await
    }

    /// Like [`JsPeer::listen_with`], in the network namespace `ns` (`ip netns exec`, so it
    /// needs root): its sockets, listening and dialing, are that namespace's.
    pub async fn listen_in(ns: &str, opts: &JsOptions) -> Result<JsPeer> {
        let mut args = vec!["listen".to_owned()];
        args.extend(opts.args());
        Self::spawn(Some(ns), &args).await
    }

    /// Spawns `node peer.mjs dial ADDR` and waits for its `listening` line. `addr` must end in
    /// `/p2p/<peer id>`. The outcome of the dial shows up as later events: `identify`, `ping`,
    /// then `done`, or `error`. The js peer offers noise and listens on the transport of `addr`.
    pub async fn dial(addr: &str) -> Result<JsPeer> {
        Self::spawn(None, &["dial", addr]).await
    }

    /// Like [`JsPeer::dial`], with `--transport T --security S`. `addr` picks the transport of
    /// the dial; `opts.transport` is only what the js peer listens on.
    pub async fn dial_with(addr: &str, opts: &JsOptions) -> Result<JsPeer> {
        let mut args = vec!["dial".to_owned(), addr.to_owned()];
        args.extend(opts.args());
        Self::spawn(None, &args).await
    }

    /// Spawns `node peer.mjs listen --kad MODE` (TCP + noise, plus a Kademlia DHT on
    /// `/ipfs/kad/1.0.0`) and waits for its `listening` line. It knows no DHT peer until
    /// [`JsPeer::kad_bootstrap`].
    pub async fn listen_kad(mode: JsKadMode) -> Result<JsPeer> {
        Self::spawn(None, &["listen", "--kad", mode.name()]).await
    }

    /// Runs `node peer.mjs ARGS`, in the network namespace `netns` if given.
    async fn spawn<S: AsRef<str>>(netns: Option<&str>, args: &[S]) -> Result<JsPeer> {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let modules = Path::new(JS_DIR).join("node_modules");
        if !modules.is_dir() {
            bail!(
                "js-libp2p interop peer is not installed ({} is missing): run `npm ci --prefix interop/js`",
                modules.display()
            );
        }
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "node"]);
                c
            }
            None => Command::new("node"),
        };
        let mut child = command
            .arg(SCRIPT)
            .args(&args)
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
            next_command_id: 1,
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

    /// Sends the command `{"cmd":cmd,"id":N,"timeoutMs":..,...args}` (see "Commands" in
    /// `peer.mjs`; `args` must be a JSON object) and waits for its answer: the `cmd` event with
    /// id N, returned as is. js aborts the command after `timeout`; this waits
    /// [`COMMAND_SLACK`] longer. Errors on the command's `{cmd}_error` event, on a fatal
    /// `error` event, on timeout and on EOF. Events in between are kept in the history.
    pub async fn command(&mut self, cmd: &str, args: Value, timeout: Duration) -> Result<Value> {
        use tokio::io::AsyncWriteExt as _;
        let id = self.next_command_id;
        self.next_command_id += 1;
        let mut line = match args {
            Value::Object(map) => map,
            Value::Null => serde_json::Map::new(),
            other => bail!("command arguments must be a JSON object, not {other}"),
        };
        line.insert("cmd".into(), cmd.into());
        line.insert("id".into(), id.into());
        line.insert("timeoutMs".into(), (timeout.as_millis() as u64).into());
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("the js peer's stdin is closed"))?;
        stdin
            .write_all(text.as_bytes())
            .await
            .with_context(|| format!("sending {cmd:?} to the js peer"))?;
        stdin
            .flush()
            .await
            .context("flushing the js peer's stdin")?;

        let deadline = Instant::now() + timeout + COMMAND_SLACK;
        let error_name = format!("{cmd}_error");
        loop {
            let ev = self
                .next_event_until(deadline)
                .await
                .with_context(|| format!("waiting for the answer to {cmd:?} (id {id})"))?;
            let name = ev["event"].as_str().unwrap_or_default();
            if name == "error" {
                bail!("js peer failed while running {cmd:?}: {ev}");
            }
            if ev["id"].as_u64() != Some(id) {
                continue;
            }
            if name == cmd {
                return Ok(ev);
            }
            if name == error_name {
                bail!("js peer: {cmd} failed: {}", ev["error"]);
            }
        }
    }

    async fn kad<T: serde::de::DeserializeOwned>(&mut self, cmd: &str, args: Value) -> Result<T> {
        self.typed(cmd, args, KAD_TIMEOUT).await
    }

    async fn typed<T: serde::de::DeserializeOwned>(
        &mut self,
        cmd: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<T> {
        let answer = self.command(cmd, args, timeout).await?;
        serde_json::from_value(answer.clone())
            .with_context(|| format!("unexpected answer to {cmd}: {answer}"))
    }

    /// Has the running js peer dial `addr` (ending in `/p2p/<peer id>`; a
    /// `…/p2p-circuit/p2p/<peer id>` address needs [`JsOptions::relay`]) and returns the
    /// connection. js-libp2p hands back an open unlimited connection to that peer instead of
    /// dialing, if it has one.
    pub async fn connect(&mut self, addr: &str) -> Result<ConnectionOpen> {
        self.typed("dial", serde_json::json!({ "addr": addr }), COMMAND_TIMEOUT)
            .await
    }

    /// One ping from the js peer to `peer_id` over its newest open connection to it, limited
    /// (relayed) or not; it never dials. [`Ping::remote_addr`] says which connection.
    pub async fn ping(&mut self, peer_id: &str) -> Result<Ping> {
        self.typed(
            "ping",
            serde_json::json!({ "peerId": peer_id }),
            COMMAND_TIMEOUT,
        )
        .await
    }

    /// Listens through the relay at `relay_addr` (ending in `/p2p/<relay id>`): the js peer
    /// connects, reserves, and keeps the reservation. Needs [`JsOptions::relay`].
    pub async fn listen_relay(&mut self, relay_addr: &str) -> Result<RelayListen> {
        self.typed(
            "listen_relay",
            serde_json::json!({ "addr": relay_addr }),
            COMMAND_TIMEOUT,
        )
        .await
    }

    /// Waits until identify has given the js peer an observed address of its own on
    /// `transport` (`"tcp"` or `"quic"`; js-libp2p keeps only public ones, and no TCP ones),
    /// then marks them verified, as a positive AutoNAT or UPnP answer would, and returns
    /// them. js-libp2p's DCUtR offers only verified addresses; behind a NAT that drops
    /// unsolicited packets no dial-back verifies one, yet it is what a hole punch goes
    /// through.
    pub async fn confirm_observed(&mut self, transport: &str) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Confirmed {
            addrs: Vec<String>,
        }
        let confirmed: Confirmed = self
            .typed(
                "confirm_observed",
                serde_json::json!({ "transport": transport }),
                COMMAND_TIMEOUT,
            )
            .await?;
        Ok(confirmed.addrs)
    }

    /// The js peer's addresses with what its address manager knows of them (verified or
    /// not, and where they came from), and the counts its AutoNAT clients
    /// ([`JsOptions::autonat`]) keep for the addresses they are still deciding. Nothing
    /// reports a change of these: poll.
    pub async fn addresses(&mut self) -> Result<JsAddresses> {
        self.typed("addresses", Value::Null, COMMAND_TIMEOUT).await
    }

    /// Dials `addr` (ending in `/p2p/<peer id>`) and waits until that peer is in the js DHT's
    /// routing table (js-libp2p admits a peer once identify shows it serves the DHT protocol and
    /// a ping answers). Returns the table's size.
    pub async fn kad_bootstrap(&mut self, addr: &str) -> Result<usize> {
        let answer = self
            .command(
                "kad_bootstrap",
                serde_json::json!({ "addr": addr }),
                KAD_TIMEOUT,
            )
            .await?;
        answer["tableSize"]
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| anyhow!("kad_bootstrap answer without tableSize: {answer}"))
    }

    /// The peer ids in the js DHT's routing table.
    pub async fn kad_table(&mut self) -> Result<Vec<String>> {
        let answer = self.command("kad_table", Value::Null, KAD_TIMEOUT).await?;
        serde_json::from_value(answer["peers"].clone())
            .with_context(|| format!("unexpected answer to kad_table: {answer}"))
    }

    /// `getClosestPeers(key)`.
    pub async fn kad_closest(&mut self, key: &[u8]) -> Result<KadClosest> {
        self.kad("kad_closest", serde_json::json!({ "key": hex(key) }))
            .await
    }

    /// `put(key, value)`: stores the record locally and sends PUT_VALUE to the closest peers.
    pub async fn kad_put(&mut self, key: &[u8], value: &[u8]) -> Result<KadPut> {
        self.kad(
            "kad_put",
            serde_json::json!({ "key": hex(key), "value": hex(value) }),
        )
        .await
    }

    /// `get(key)`: the local record if any, and every record the network returns.
    pub async fn kad_get(&mut self, key: &[u8]) -> Result<KadGet> {
        self.kad("kad_get", serde_json::json!({ "key": hex(key) }))
            .await
    }

    /// `provide(cid)` for the CIDv1 (raw codec) of `multihash`; the DHT key is the multihash.
    /// js-libp2p decodes ADD_PROVIDER and GET_PROVIDERS keys as CIDs, so `multihash` should be
    /// a sha2-256 one.
    pub async fn kad_provide(&mut self, multihash: &[u8]) -> Result<KadProvide> {
        self.kad("kad_provide", serde_json::json!({ "key": hex(multihash) }))
            .await
    }

    /// `findProviders(cid)` for the CIDv1 (raw codec) of `multihash`.
    pub async fn kad_providers(&mut self, multihash: &[u8]) -> Result<KadProviders> {
        self.kad(
            "kad_providers",
            serde_json::json!({ "key": hex(multihash) }),
        )
        .await
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
