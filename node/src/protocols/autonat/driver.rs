//! The AutoNAT client on the host: asks the AutoNAT servers we are connected to whether
//! they can reach our addresses, and answers their v2 dial-backs.
//!
//! Every node runs it. Candidates are our public listen addresses and the addresses peers
//! observed us at; servers are peers on a direct connection whose identify lists
//! `/libp2p/autonat/2/dial-request` (preferred) or `/libp2p/autonat/1.0.0`, on a public IP
//! (any IP in a lab). Each request tests one address ([`super::client`] decides which,
//! with whom, and what the answers add up to):
//!
//! - **v2**: a `DialRequest` with the address and a random nonce; dial data is sent when
//!   the server asks for at most 100 kB; the address counts as reached only if the nonce
//!   came back on a dial-back connection of the same transport (a server's word alone
//!   is not enough).
//! - **v1**: a `Dial` with the address; `OK` means reached, `E_DIAL_ERROR` not.
//!
//! Verdicts flow into what identify advertises ([`Identify::set_verified`]), the metrics
//! (go-libp2p's `libp2p_autonat_*` and `libp2p_autonatv2_client_*`), the log, and
//! [`Autonat::watch`] (the DHT's `auto` mode follows it).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use multiaddr::{Multiaddr, Protocol};
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Notify};

use super::client::{self, Answer, Change, Client, Probe, Server, Verdict, Version};
use super::proto::{
    DialBack, DialBackResponse, DialStatus, ResponseStatus, V1Message, V1Status, V2Message, V2Msg,
    MAX_DIAL_DATA, MAX_DIAL_DATA_CHUNK, MAX_MESSAGE, V1_PROTOCOL, V2_DIAL_BACK, V2_DIAL_REQUEST,
};
use crate::addresses::{self, Verified};
use crate::host::{Connection, Extension, Host, LocalChange, Stream};
use crate::identity::PeerId;
use crate::metrics::{AutonatClientLabels, AutonatResponseLabels, OutcomeLabels, VerdictLabels};
use crate::peerstore::Peerstore;
use crate::protocols::identify::Identify;
use crate::protocols::relay::client::LABEL as RELAYED;
use crate::{proto, varint};

/// Requests of ours running at once, at most.
const MAX_IN_FLIGHT: usize = 3;
/// Nonces of ours awaiting their dial-back, at most (one per request in flight, and some
/// room for stale ones).
const MAX_PENDING: usize = 64;
/// How long a server's dial-back stream may take.
const DIAL_BACK_STREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// A nonce we sent, and the transport its dial-back arrived over (once it did).
struct Pending {
    addr: Multiaddr,
    came_back_over: Option<&'static str>,
}

/// The AutoNAT client of one host.
pub struct Autonat {
    host: Host,
    identify: Arc<Identify>,
    peerstore: Peerstore,
    me: Weak<Autonat>,
    state: Mutex<Client>,
    pending: Mutex<HashMap<u64, Pending>>,
    in_flight: Mutex<usize>,
    /// The servers seen at the last step: a new one makes undecided addresses due.
    known_servers: Mutex<Vec<PeerId>>,
    wake: Notify,
    overall: watch::Sender<Verdict>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Autonat {
    /// Installs the dial-back handler (always: a server may test us whenever we ask) and,
    /// when `config.enabled`, the task that asks servers.
    pub fn install(
        host: &Host,
        identify: Arc<Identify>,
        peerstore: Peerstore,
        config: client::Config,
    ) -> Arc<Self> {
        let enabled = config.enabled;
        let this = Arc::new_cyclic(|me| Autonat {
            host: host.clone(),
            identify: identify.clone(),
            peerstore,
            me: me.clone(),
            state: Mutex::new(Client::new(config)),
            pending: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(0),
            known_servers: Mutex::new(Vec::new()),
            wake: Notify::new(),
            overall: watch::channel(Verdict::Unknown).0,
        });
        host.install(this.clone());
        if enabled {
            let weak = Arc::downgrade(&this);
            identify.observe(Arc::new(move |_| {
                if let Some(me) = weak.upgrade() {
                    me.wake.notify_one();
                }
            }));
            let me = this.clone();
            host.spawn_supervised("autonat", async move { me.run().await });
        }
        this
    }

    /// The node's reachability: public when a server-confirmed address is.
    pub fn reachability(&self) -> Verdict {
        *self.overall.borrow()
    }

    /// Follows [`Autonat::reachability`].
    pub fn watch(&self) -> watch::Receiver<Verdict> {
        self.overall.subscribe()
    }

    /// Each tested address and its verdict.
    pub fn verdicts(&self) -> Vec<(Multiaddr, Verdict)> {
        lock(&self.state).verdicts()
    }

    async fn run(self: Arc<Self>) {
        loop {
            let next = self.step(Instant::now());
            match next {
                Some(at) => {
                    let at = tokio::time::Instant::from_std(at);
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }

    /// Takes in the current candidates and servers, starts what requests it may, and
    /// returns when to look again (besides wake-ups).
    fn step(&self, now: Instant) -> Option<Instant> {
        let candidates = self.candidates();
        let servers = self.servers();
        let fresh = {
            let mut known = lock(&self.known_servers);
            let fresh = servers.iter().any(|s| !known.contains(&s.peer));
            *known = servers.iter().map(|s| s.peer).collect();
            fresh
        };
        let mut changes = Vec::new();
        let mut probes = Vec::new();
        let next = {
            let mut state = lock(&self.state);
            changes.extend(state.set_candidates(&candidates, now));
            if fresh {
                state.handle_new_server(now);
            }
            let mut in_flight = lock(&self.in_flight);
            while *in_flight < MAX_IN_FLIGHT {
                match state.poll_probe(&servers, now) {
                    Some(p) => {
                        *in_flight += 1;
                        probes.push(p);
                    }
                    None => break,
                }
            }
            if probes.is_empty() && *in_flight == 0 {
                state.back_off(now);
            }
            count_addrs(self.host.metrics(), &state.verdicts());
            state.next_due()
        };
        self.publish(&changes);
        for probe in probes {
            let Some(me) = self.me.upgrade() else { break };
            self.host.spawn(async move {
                let answer = me.ask(&probe).await;
                let change = {
                    let mut state = lock(&me.state);
                    state.handle_answer(&probe, answer, Instant::now())
                };
                *lock(&me.in_flight) -= 1;
                me.publish(&change.into_iter().collect::<Vec<_>>());
                me.wake.notify_one();
            });
        }
        if let Some(at) = next {
            let unix = std::time::SystemTime::now()
                .checked_add(at.saturating_duration_since(now))
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            self.host
                .metrics()
                .autonat_next_probe
                .set(i64::try_from(unix).unwrap_or(i64::MAX));
        }
        next
    }

    /// Our addresses worth testing: public listen addresses, then the addresses enough
    /// distinct peers agree they observed us at (`identify.observed_confirmations`; the
    /// client keeps the testable ones). An address one peer alone reports (an ephemeral
    /// source port, a symmetric NAT's per-peer mapping) is not tested: servers take only a
    /// few requests per peer a minute, and each spent on such an address is one the
    /// addresses we can be reached at do not get.
    fn candidates(&self) -> Vec<Multiaddr> {
        let mut out = self.host.interface_listen_addrs();
        out.extend(self.identify.confirmed_observed_addrs());
        out
    }

    /// Connected peers that serve AutoNAT, on a direct connection, at a public IP (any IP
    /// in a lab); one entry per peer.
    fn servers(&self) -> Vec<Server> {
        let allow_loopback = lock(&self.state).config().allow_loopback;
        let mut out: Vec<Server> = Vec::new();
        for conn in self.host.connections() {
            if conn.transport() == RELAYED || out.iter().any(|s| s.peer == conn.peer()) {
                continue;
            }
            let Some(ip) = ip_of(conn.remote_addr()) else {
                continue;
            };
            if !allow_loopback && !addresses::is_public(conn.remote_addr()) {
                continue;
            }
            let version = self
                .peerstore
                .inspect(&conn.peer(), |info| {
                    if info.protocols.iter().any(|p| p == V2_DIAL_REQUEST) {
                        Some(Version::V2)
                    } else if info.protocols.iter().any(|p| p == V1_PROTOCOL) {
                        Some(Version::V1)
                    } else {
                        None
                    }
                })
                .flatten();
            if let Some(version) = version {
                out.push(Server {
                    peer: conn.peer(),
                    ip,
                    version,
                });
            }
        }
        out
    }

    /// Asks one server about one address.
    async fn ask(&self, probe: &Probe) -> Answer {
        let timeout = lock(&self.state).config().request_timeout;
        let Some(conn) = self
            .host
            .connections()
            .into_iter()
            .find(|c| c.peer() == probe.server && c.transport() != RELAYED)
        else {
            return Answer::Failed;
        };
        let answer = match probe.version {
            Version::V2 => tokio::time::timeout(timeout, self.ask_v2(&conn, &probe.addr)).await,
            Version::V1 => tokio::time::timeout(timeout, self.ask_v1(&conn, &probe.addr)).await,
        };
        let answer = answer.unwrap_or(Answer::Failed);
        tracing::debug!(
            server = %probe.server,
            addr = %probe.addr,
            version = ?probe.version,
            "AutoNAT answer: {answer:?}"
        );
        answer
    }

    async fn ask_v1(&self, conn: &Connection, addr: &Multiaddr) -> Answer {
        let metrics = self.host.metrics().clone();
        let count = |status: &'static str| {
            metrics
                .autonat_v1_responses
                .get_or_create(&AutonatResponseLabels {
                    response_status: status,
                })
                .inc();
        };
        let Ok(mut stream) = conn.open_stream(&[V1_PROTOCOL]).await else {
            return Answer::Failed;
        };
        let request = V1Message::dial(self.host.peer_id(), std::slice::from_ref(addr));
        if varint::write_frame(&mut stream, &request.encode_to_vec())
            .await
            .is_err()
        {
            return Answer::Failed;
        }
        let Ok(bytes) = varint::read_frame(&mut stream, MAX_MESSAGE).await else {
            return Answer::Failed;
        };
        let _ = stream.shutdown().await;
        let Some((status, _)) = proto::decode::<V1Message>(&bytes, MAX_MESSAGE)
            .ok()
            .and_then(|m| m.answer())
        else {
            count("unknown");
            return Answer::Refused;
        };
        count(status.label());
        match status {
            V1Status::Ok => Answer::Reachable,
            V1Status::DialError => Answer::Unreachable,
            V1Status::DialRefused | V1Status::BadRequest | V1Status::InternalError => {
                Answer::Refused
            }
        }
    }

    async fn ask_v2(&self, conn: &Connection, addr: &Multiaddr) -> Answer {
        let outcome = |ok: bool| OutcomeLabels {
            outcome: if ok { "success" } else { "failure" },
        };
        let nonce: u64 = rand::random();
        {
            let mut pending = lock(&self.pending);
            if pending.len() >= MAX_PENDING {
                return Answer::Failed;
            }
            pending.insert(
                nonce,
                Pending {
                    addr: addr.clone(),
                    came_back_over: None,
                },
            );
        }
        let answer = self.exchange_v2(conn, addr, nonce).await;
        let came_back_over = lock(&self.pending)
            .remove(&nonce)
            .and_then(|p| p.came_back_over);
        let metrics = self.host.metrics();
        metrics
            .autonat_v2_requests
            .get_or_create(&outcome(answer.is_some()))
            .inc();
        let Some((status, dial)) = answer else {
            return Answer::Failed;
        };
        let verdict = match (status, dial) {
            (ResponseStatus::Ok, DialStatus::Ok) => {
                //= specs/autonat/autonat-v2.md#autonat-v2-protocol
                //# The client MUST check that the nonce received in the `DialBack` is the
                //# same as the nonce it sent in the `DialRequest`. If the nonce is
                //# different, it MUST discard this response.
                if came_back_over == Some(transport_of(addr)) {
                    Answer::Reachable
                } else {
                    Answer::Refused
                }
            }
            (ResponseStatus::Ok, DialStatus::DialError) => Answer::Unreachable,
            _ => Answer::Refused,
        };
        let reachability = match verdict {
            Answer::Reachable => "public",
            Answer::Unreachable => "private",
            _ => "unknown",
        };
        metrics
            .autonat_v2_completed
            .get_or_create(&AutonatClientLabels {
                ip_or_dns_version: ip_version(addr),
                transport: transport_of(addr),
                addr_count: "1",
                dial_refused: if status == ResponseStatus::DialRefused {
                    "true"
                } else {
                    "false"
                },
                reachability,
            })
            .inc();
        verdict
    }

    /// The v2 request on its stream: `None` if the stream failed or the server broke the
    /// protocol.
    async fn exchange_v2(
        &self,
        conn: &Connection,
        addr: &Multiaddr,
        nonce: u64,
    ) -> Option<(ResponseStatus, DialStatus)> {
        let mut stream = conn.open_stream(&[V2_DIAL_REQUEST]).await.ok()?;
        let request = V2Message::request(std::slice::from_ref(addr), nonce);
        varint::write_frame(&mut stream, &request.encode_to_vec())
            .await
            .ok()?;
        let mut data_sent = false;
        loop {
            let bytes = varint::read_frame(&mut stream, MAX_MESSAGE).await.ok()?;
            let msg: V2Message = proto::decode(&bytes, MAX_MESSAGE).ok()?;
            match msg.msg? {
                V2Msg::DialResponse(r) => {
                    let _ = stream.shutdown().await;
                    return Some((
                        ResponseStatus::from_code(r.status)?,
                        DialStatus::from_code(r.dial_status).unwrap_or(DialStatus::Unused),
                    ));
                }
                V2Msg::DialDataRequest(d) if !data_sent => {
                    //= specs/autonat/autonat-v2.md#amplification-attack-prevention
                    //# Upon receiving a `DialDataRequest` message, the client decides
                    //# whether to accept or reject the cost of dial. If the client
                    //# rejects the cost, the client resets the stream
                    if d.addr_idx != 0 || d.num_bytes > MAX_DIAL_DATA {
                        drop(stream); // dropping an unfinished stream resets it
                        return None;
                    }
                    data_sent = true;
                    let chunk = V2Message::data(vec![0; MAX_DIAL_DATA_CHUNK]).encode_to_vec();
                    let framed = varint::length_prefixed(&chunk);
                    let mut sent = 0u64;
                    while sent < d.num_bytes {
                        stream.write_all(&framed).await.ok()?;
                        sent += MAX_DIAL_DATA_CHUNK as u64;
                    }
                }
                _ => {
                    drop(stream); // dropping an unfinished stream resets it
                    return None;
                }
            }
        }
    }

    /// A server's dial-back: record its nonce (if it is ours) with the transport it came
    /// over, then confirm.
    async fn on_dial_back(&self, mut stream: Stream) {
        let transport = stream.connection().transport();
        let work = async {
            let bytes = varint::read_frame(&mut stream, MAX_MESSAGE).await.ok()?;
            let msg: DialBack = proto::decode(&bytes, MAX_MESSAGE).ok()?;
            if let Some(p) = lock(&self.pending).get_mut(&msg.nonce) {
                p.came_back_over = Some(transport);
                tracing::debug!(addr = %p.addr, "AutoNAT dial-back arrived");
            }
            let answer = DialBackResponse { status: 0 }.encode_to_vec();
            varint::write_frame(&mut stream, &answer).await.ok()?;
            stream.shutdown().await.ok()
        };
        if tokio::time::timeout(DIAL_BACK_STREAM_TIMEOUT, work)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            self.host
                .metrics()
                .protocol_error("autonat", "bad_dial_back");
        }
    }

    /// Verdict changes: into identify's advertisement, the metrics, the log and the watch.
    fn publish(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let (verdicts, overall, confidence) = {
            let state = lock(&self.state);
            (state.verdicts(), state.overall(), state.confidence())
        };
        for c in changes {
            tracing::info!(
                addr = %c.addr,
                "reachability of our address: {} (was {})",
                c.to.label(),
                c.from.label()
            );
        }
        let mut verified = Verified::default();
        for (addr, v) in &verdicts {
            match v {
                Verdict::Public => verified.reachable.push(addr.clone()),
                Verdict::Private => verified.unreachable.push(addr.clone()),
                Verdict::Unknown => {}
            }
        }
        let metrics = self.host.metrics();
        for v in [Verdict::Unknown, Verdict::Public, Verdict::Private] {
            let n = verdicts.iter().filter(|(_, x)| *x == v).count();
            metrics
                .reachability_addresses
                .get_or_create(&VerdictLabels { verdict: v.label() })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        metrics.autonat_reachability.set(overall.code());
        metrics
            .autonat_confidence
            .set(i64::try_from(confidence).unwrap_or(i64::MAX));
        self.identify.set_verified(verified);
        self.overall.send_if_modified(|o| {
            let changed = *o != overall;
            if changed {
                tracing::info!("reachability: {}", overall.label());
                *o = overall;
            }
            changed
        });
    }
}

impl Extension for Autonat {
    fn protocol_ids(&self) -> Vec<String> {
        vec![V2_DIAL_BACK.to_string()]
    }

    fn handle_stream(self: Arc<Self>, stream: Stream) -> BoxFuture<'static, ()> {
        Box::pin(async move { self.on_dial_back(stream).await })
    }

    fn on_connection_established(&self, _conn: &Connection) {
        // Whether the peer serves AutoNAT shows after identify, which wakes us again.
        self.wake.notify_one();
    }

    fn on_local_change(&self, change: LocalChange) {
        if change == LocalChange::ListenAddrs {
            self.wake.notify_one();
        }
    }
}

/// Our tested addresses by verdict, IP version and transport (`libp2p_host_addrs_*`).
fn count_addrs(metrics: &crate::metrics::Metrics, verdicts: &[(Multiaddr, Verdict)]) {
    let of = |v: Verdict| -> Vec<Multiaddr> {
        verdicts
            .iter()
            .filter(|(_, x)| *x == v)
            .map(|(a, _)| a.clone())
            .collect()
    };
    metrics.host_addrs.set(
        &of(Verdict::Public),
        &of(Verdict::Private),
        &of(Verdict::Unknown),
    );
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => Some(ip.into()),
        Some(Protocol::Ip6(ip)) => Some(ip.into()),
        _ => None,
    }
}

/// The host's transport label an address dials with (`tcp`, `quic-v1`, `ws`).
fn transport_of(addr: &Multiaddr) -> &'static str {
    let mut transport = "";
    for p in addr.iter() {
        match p {
            Protocol::Tcp(_) if transport.is_empty() => transport = "tcp",
            Protocol::QuicV1 => transport = "quic-v1",
            Protocol::Ws(_) | Protocol::Wss(_) => transport = "ws",
            _ => {}
        }
    }
    transport
}

fn ip_version(addr: &Multiaddr) -> &'static str {
    match addr.iter().next() {
        Some(Protocol::Ip4(_)) => "ip4",
        Some(Protocol::Ip6(_)) => "ip6",
        Some(Protocol::Dns(_) | Protocol::Dnsaddr(_)) => "dns",
        Some(Protocol::Dns4(_)) => "dns4",
        Some(Protocol::Dns6(_)) => "dns6",
        _ => "unknown",
    }
}
