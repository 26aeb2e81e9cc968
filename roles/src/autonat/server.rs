//! The AutoNAT server's driver: reads a v1 or v2 request, asks the core ([`Budget`],
//! [`select_v1`], [`select_v2`]) what to do, collects v2 dial data, dials back from a new
//! port and answers. The budget's lock is never held across an await; every read, write
//! and dial is under a timeout; the whole of a request is bounded by the first read's
//! timeout plus `dial_data_timeout` plus `dial_back_timeout` (and the answer's write).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use multiaddr::{Multiaddr, Protocol};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prost::Message;
use pylon_node::host::{handler, Connection, DialError, Stream};
use pylon_node::node::Node;
use pylon_node::protocols::autonat::proto::{
    parse_indexed, DialBack, DialBackResponse, DialStatus, ResponseStatus, V1Message, V1Status,
    V2Message, V2Msg, MAX_DIAL_DATA_CHUNK, MAX_MESSAGE, V1_PROTOCOL, V2_DIAL_BACK, V2_DIAL_REQUEST,
};
use pylon_node::varint::{read_frame, write_frame, FrameError};
use pylon_node::PeerId;
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

use super::core::{select_v1, select_v2, Budget, Permit, Reach, Refusal, MAX_V2_ADDRS};
use super::{Budgets, Config, Status};
use crate::Metrics;

/// How long a client has to send its request (the first message).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing an answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest `DialBackResponse` read (it is 2 bytes).
const MAX_DIAL_BACK_RESPONSE: usize = 64;
/// `DialDataResponse` messages with no data taken per request (a client sending empty
/// chunks makes no progress; past this the stream is reset).
const MAX_EMPTY_CHUNKS: usize = 16;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct V1ResponseLabels {
    response_status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct V1RefusalLabels {
    refusal_reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct V2Labels {
    server_error: &'static str,
    response_status: &'static str,
    dial_status: &'static str,
    dial_data_required: &'static str,
    ip_or_dns_version: &'static str,
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DialBackLabels {
    version: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    version: &'static str,
    reason: &'static str,
}

/// go-libp2p's `libp2p_autonat_*` (v1 server) and `libp2p_autonatv2_*` families, and the
/// role's own.
struct AutoNatMetrics {
    v1_responses: Family<V1ResponseLabels, Counter>,
    v1_refused: Family<V1RefusalLabels, Counter>,
    v2_completed: Family<V2Labels, Counter>,
    dial_backs: Family<DialBackLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    dial_data_bytes: Counter,
    in_progress: Gauge,
}

impl AutoNatMetrics {
    fn register(metrics: &mut Metrics<'_>) -> AutoNatMetrics {
        let m = AutoNatMetrics {
            v1_responses: Family::default(),
            v1_refused: Family::default(),
            v2_completed: Family::default(),
            dial_backs: Family::default(),
            refused: Family::default(),
            dial_data_bytes: Counter::default(),
            in_progress: Gauge::default(),
        };
        let v1 = metrics.standard("libp2p_autonat");
        v1.register(
            "outgoing_dial_response",
            "AutoNAT v1 answers sent, by status",
            m.v1_responses.clone(),
        );
        v1.register(
            "outgoing_dial_refused",
            "AutoNAT v1 requests refused without a dial, by reason",
            m.v1_refused.clone(),
        );
        let v2 = metrics.standard("libp2p_autonatv2");
        v2.register(
            "requests_completed",
            "Requests processed by the server",
            m.v2_completed.clone(),
        );
        let own = metrics.own();
        own.register(
            "dial_backs",
            "Dials the AutoNAT server made, by version and outcome (ok, dial_error, dial_back_error, internal_error)",
            m.dial_backs.clone(),
        );
        own.register(
            "refused",
            "AutoNAT requests refused, dropped or reset, by version and reason",
            m.refused.clone(),
        );
        own.register(
            "dial_data_bytes",
            "Dial data received from AutoNAT v2 clients",
            m.dial_data_bytes.clone(),
        );
        own.register(
            "dial_backs_in_progress",
            "AutoNAT dial-backs in progress",
            m.in_progress.clone(),
        );
        m
    }
}

/// The counts behind [`Status`]: keys are static labels, so every map is bounded.
#[derive(Default)]
struct Tally {
    served: BTreeMap<&'static str, u64>,
    refused: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    dial_backs: BTreeMap<&'static str, u64>,
    dial_data_bytes: u64,
}

/// The AutoNAT server on one node.
pub(super) struct Server {
    node: Node,
    config: Config,
    budget: Mutex<Budget>,
    tally: Mutex<Tally>,
    dial_backs: AtomicU64,
    metrics: AutoNatMetrics,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An admitted request: its permit goes back to the budget when this is dropped (also
/// when the request's task is cancelled).
struct Admitted<'a> {
    server: &'a Server,
    permit: Option<Permit>,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            lock(&self.server.budget).release(p);
        }
    }
}

/// A dial in progress, for the gauge.
struct InFlight<'a>(&'a Gauge);

impl<'a> InFlight<'a> {
    fn start(g: &'a Gauge) -> Self {
        g.inc();
        InFlight(g)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What became of the first message.
enum Read<M> {
    Message(M),
    /// Bytes that are no message (a bad frame, a bad protobuf).
    Garbage,
    /// Nothing in time, or the stream failed.
    Gone,
}

/// Why a dial-back did not connect.
enum DialFail {
    /// The address did not answer, refused, or was someone else: the client's reachability.
    Unreachable,
    /// Our side failed (a connection limit, shutting down, no socket).
    Internal,
}

/// The outcome of one dial, as the own metric labels it.
#[derive(Clone, Copy)]
enum Outcome {
    Ok,
    DialError,
    DialBackError,
    Internal,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::DialError => "dial_error",
            Outcome::DialBackError => "dial_back_error",
            Outcome::Internal => "internal_error",
        }
    }
}

/// A v2 request's end, for the answer and `libp2p_autonatv2_requests_completed_total`.
struct V2End {
    /// `None`: the stream is reset, nothing answered.
    answer: Option<(ResponseStatus, u32, DialStatus)>,
    server_error: &'static str,
    dial_data_required: bool,
    dialed: Option<Multiaddr>,
}

impl V2End {
    fn answer(status: ResponseStatus) -> V2End {
        V2End {
            answer: Some((status, 0, DialStatus::Unused)),
            server_error: "nil",
            dial_data_required: false,
            dialed: None,
        }
    }

    fn reset(server_error: &'static str) -> V2End {
        V2End {
            answer: None,
            server_error,
            dial_data_required: false,
            dialed: None,
        }
    }
}

impl Server {
    pub(super) fn start(node: &Node, config: Config, metrics: &mut Metrics<'_>) -> Arc<Server> {
        let server = Arc::new(Server {
            node: node.clone(),
            budget: Mutex::new(Budget::new(config.limits())),
            config,
            tally: Mutex::new(Tally::default()),
            dial_backs: AtomicU64::new(0),
            metrics: AutoNatMetrics::register(metrics),
        });
        let weak = Arc::downgrade(&server);
        if server.config.v1 {
            node.host
                .set_handler(V1_PROTOCOL, on_stream(weak.clone(), Server::serve_v1));
        }
        if server.config.v2 {
            node.host
                .set_handler(V2_DIAL_REQUEST, on_stream(weak, Server::serve_v2));
        }
        server
    }

    pub(super) fn dial_backs(&self) -> u64 {
        self.dial_backs.load(Ordering::Relaxed)
    }

    /// The protocols served: the versions enabled.
    pub(super) fn protocols(&self) -> Vec<String> {
        let v1 = self.config.v1.then_some(V1_PROTOCOL);
        let v2 = self.config.v2.then_some(V2_DIAL_REQUEST);
        v1.into_iter().chain(v2).map(str::to_string).collect()
    }

    pub(super) fn status(&self) -> Status {
        let (running, in_window) = {
            let mut b = lock(&self.budget);
            b.expire(Instant::now());
            (b.running(), b.in_window())
        };
        let t = lock(&self.tally);
        let c = &self.config;
        Status {
            v1: c.v1,
            v2: c.v2,
            served: t.served.clone(),
            refused: t.refused.clone(),
            dial_backs: t.dial_backs.clone(),
            in_progress: running,
            requests_last_minute: in_window,
            dial_data_bytes: t.dial_data_bytes,
            budgets: Budgets {
                requests_per_minute: c.requests_per_minute,
                per_peer_per_minute: c.per_peer_per_minute,
                per_ip_per_minute: c.per_ip_per_minute,
                per_subnet_per_minute: c.per_subnet_per_minute,
                dial_data_per_minute: c.dial_data_per_minute,
                max_concurrent_dial_backs: c.max_concurrent_dial_backs,
                per_peer_concurrent: c.per_peer_concurrent,
                dial_data_bytes: c.dial_data_bytes,
                allow_loopback: c.allow_loopback,
            },
        }
    }

    /// A refusal (or a dropped or reset request), counted.
    fn refused(&self, version: &'static str, reason: &'static str) {
        self.metrics
            .refused
            .get_or_create(&RefusedLabels { version, reason })
            .inc();
        *lock(&self.tally)
            .refused
            .entry(version)
            .or_default()
            .entry(reason)
            .or_default() += 1;
    }

    fn served(&self, version: &'static str) {
        *lock(&self.tally).served.entry(version).or_default() += 1;
    }

    fn admit(&self, peer: PeerId, ip: Option<IpAddr>) -> Result<Admitted<'_>, Refusal> {
        let permit = lock(&self.budget).admit(peer, ip, Instant::now())?;
        Ok(Admitted {
            server: self,
            permit: Some(permit),
        })
    }

    fn reach(&self) -> Reach {
        Reach::of_listen_addrs(&self.node.host.listen_addrs(), self.config.allow_loopback)
    }

    /// Reads the first message, bounded in size and time.
    async fn read_request<M: Message + Default>(stream: &mut Stream) -> Read<M> {
        match timeout(REQUEST_TIMEOUT, read_frame(stream, MAX_MESSAGE)).await {
            Ok(Ok(bytes)) => match pylon_node::proto::decode::<M>(&bytes, MAX_MESSAGE) {
                Ok(m) => Read::Message(m),
                Err(_) => Read::Garbage,
            },
            Ok(Err(FrameError::Decode(_))) => Read::Garbage,
            Ok(Err(FrameError::Io(_))) | Err(_) => Read::Gone,
        }
    }

    /// Dials `addr` as `peer` from a new port, before `deadline`; counts the dial.
    async fn dial(
        &self,
        addr: &Multiaddr,
        peer: PeerId,
        deadline: tokio::time::Instant,
    ) -> Result<Connection, DialFail> {
        self.dial_backs.fetch_add(1, Ordering::Relaxed);
        let target = addr.clone().with(Protocol::P2p(peer));
        let span = tracing::info_span!("autonat.dial_back", addr = %addr, peer = %peer);
        //= specs/autonat/autonat-v2.md#implementation-suggestions
        //# Servers SHOULD NOT reuse their listening port when making a dial back.
        let dial = self.node.host.dial_from_new_port(&target);
        let dial = tracing::Instrument::instrument(tokio::time::timeout_at(deadline, dial), span);
        match dial.await {
            Ok(Ok(conn)) if conn.peer() == peer => Ok(conn),
            Ok(Ok(conn)) => {
                conn.close();
                Err(DialFail::Unreachable)
            }
            Ok(Err(DialError::Limit(_) | DialError::ShuttingDown | DialError::LocalSocket(_))) => {
                Err(DialFail::Internal)
            }
            Ok(Err(e)) => {
                tracing::debug!("autonat dial-back failed: {e}");
                Err(DialFail::Unreachable)
            }
            Err(_) => Err(DialFail::Unreachable),
        }
    }

    fn dialed(&self, version: &'static str, outcome: Outcome) {
        self.metrics
            .dial_backs
            .get_or_create(&DialBackLabels {
                version,
                outcome: outcome.label(),
            })
            .inc();
        *lock(&self.tally)
            .dial_backs
            .entry(outcome.label())
            .or_default() += 1;
    }

    // ---- v1 ---------------------------------------------------------------------------

    async fn serve_v1(self: Arc<Self>, mut stream: Stream) {
        let peer = stream.peer();
        let conn = stream.connection().clone();
        let msg = match Self::read_request::<V1Message>(&mut stream).await {
            Read::Message(m) => m,
            Read::Garbage => return self.bad_v1(stream, "bad request").await,
            Read::Gone => return self.refused("v1", "no request"),
        };
        let Ok(request) = msg.request() else {
            return self.bad_v1(stream, "bad request").await;
        };
        if request.peer.is_some_and(|p| p != peer) {
            return self.bad_v1(stream, "peer id mismatch").await;
        }
        //= specs/autonat/autonat-v1.md#autonat-protocol
        //# implementations MUST NOT accept dial requests via relayed connections as one can
        //# not validate the IP address of the requesting node.
        if is_relayed(&conn) {
            return self
                .refuse_v1(stream, "dial blocked", "relayed", "relayed connection")
                .await;
        }
        let reach = self.reach();
        let Some(observed) = ip_of(conn.remote_addr()).filter(|ip| reach.accepts_ip(*ip)) else {
            return self
                .refuse_v1(stream, "dial blocked", "dial blocked", "dial blocked")
                .await;
        };
        let addrs = select_v1(
            &request.addrs,
            observed,
            &peer,
            &reach,
            self.config.max_v1_addrs,
        );
        if addrs.is_empty() {
            return self
                .refuse_v1(
                    stream,
                    "no valid address",
                    "no valid address",
                    "no valid address",
                )
                .await;
        }
        let admitted = match self.admit(peer, Some(observed)) {
            Ok(a) => a,
            Err(r) => {
                return self
                    .refuse_v1(stream, "rate limited", r.label(), r.label())
                    .await
            }
        };
        let deadline = tokio::time::Instant::now() + self.config.dial_back_timeout;
        let mut answer = (V1Status::DialError, "dial failed", None);
        for addr in addrs {
            let flight = InFlight::start(&self.metrics.in_progress);
            let dialed = self.dial(&addr, peer, deadline).await;
            drop(flight);
            match dialed {
                Ok(c) => {
                    c.close();
                    self.dialed("v1", Outcome::Ok);
                    answer = (V1Status::Ok, "", Some(addr));
                    break;
                }
                Err(DialFail::Internal) => {
                    self.dialed("v1", Outcome::Internal);
                    answer = (V1Status::InternalError, "internal error", None);
                    break;
                }
                Err(DialFail::Unreachable) => self.dialed("v1", Outcome::DialError),
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        drop(admitted);
        self.served("v1");
        let (status, text, addr) = answer;
        self.answer_v1(stream, status, text, addr.as_ref()).await;
    }

    async fn bad_v1(&self, stream: Stream, text: &'static str) {
        self.refused("v1", "bad request");
        self.answer_v1(stream, V1Status::BadRequest, text, None)
            .await;
    }

    /// A v1 request refused: `E_DIAL_REFUSED`, go-libp2p's `refusal_reason` and ours.
    async fn refuse_v1(
        &self,
        stream: Stream,
        go_reason: &'static str,
        reason: &'static str,
        text: &'static str,
    ) {
        self.metrics
            .v1_refused
            .get_or_create(&V1RefusalLabels {
                refusal_reason: go_reason,
            })
            .inc();
        self.refused("v1", reason);
        self.answer_v1(stream, V1Status::DialRefused, text, None)
            .await;
    }

    async fn answer_v1(
        &self,
        mut stream: Stream,
        status: V1Status,
        text: &str,
        addr: Option<&Multiaddr>,
    ) {
        self.metrics
            .v1_responses
            .get_or_create(&V1ResponseLabels {
                response_status: status.label(),
            })
            .inc();
        let bytes = V1Message::response(status, text, addr).encode_to_vec();
        let _ = timeout(WRITE_TIMEOUT, async {
            write_frame(&mut stream, &bytes).await?;
            stream.shutdown().await
        })
        .await;
    }

    // ---- v2 ---------------------------------------------------------------------------

    async fn serve_v2(self: Arc<Self>, mut stream: Stream) {
        let end = self.v2(&mut stream).await;
        let (status, dial) = match end.answer {
            Some((status, idx, dial)) => {
                let bytes = V2Message::response(status, idx, dial).encode_to_vec();
                //= specs/autonat/autonat-v2.md#autonat-v2-protocol
                //# The server MUST close the stream after sending the response.
                let _ = timeout(WRITE_TIMEOUT, async {
                    write_frame(&mut stream, &bytes).await?;
                    stream.shutdown().await
                })
                .await;
                (status, dial)
            }
            // Dropped unanswered: the stream is reset.
            None => (ResponseStatus::InternalError, DialStatus::Unused),
        };
        drop(stream);
        let dialed = end.dialed.as_ref();
        self.metrics
            .v2_completed
            .get_or_create(&V2Labels {
                server_error: end.server_error,
                response_status: status.label(),
                dial_status: dial.label(),
                dial_data_required: if end.dial_data_required {
                    "true"
                } else {
                    "false"
                },
                ip_or_dns_version: dialed.map_or("", ip_or_dns_version),
                transport: dialed.map_or("", transport),
            })
            .inc();
    }

    /// Runs a v2 request up to its answer (or reset).
    async fn v2(&self, stream: &mut Stream) -> V2End {
        let peer = stream.peer();
        let conn = stream.connection().clone();
        let request = match Self::read_request::<V2Message>(stream).await {
            Read::Message(V2Message {
                msg: Some(V2Msg::DialRequest(r)),
            }) => r,
            Read::Message(_) | Read::Garbage => {
                self.refused("v2", "bad request");
                return V2End::reset("bad request");
            }
            Read::Gone => {
                self.refused("v2", "no request");
                return V2End::reset("other");
            }
        };
        if is_relayed(&conn) {
            self.refused("v2", "relayed");
            return V2End::answer(ResponseStatus::DialRefused);
        }
        let Some(observed) = ip_of(conn.remote_addr()) else {
            self.refused("v2", "dial blocked");
            return V2End::answer(ResponseStatus::DialRefused);
        };
        let raw = &request.addrs[..request.addrs.len().min(MAX_V2_ADDRS)];
        //= specs/autonat/autonat-v2.md#requirements-for-responsestatus
        //# `E_DIAL_REFUSED`: The server didn't dial back any address because it was
        //# incapable of dialing or unwilling to dial any of the requested addresses.
        let Some(selected) = select_v2(&parse_indexed(raw), observed, &peer, &self.reach()) else {
            self.refused("v2", "no valid address");
            return V2End::answer(ResponseStatus::DialRefused);
        };
        // Below MAX_V2_ADDRS: fits.
        let idx = u32::try_from(selected.idx).unwrap_or(u32::MAX);
        //= specs/autonat/autonat-v2.md#requirements-for-responsestatus
        //# `E_REQUEST_REJECTED`: The server didn't serve the request because of rate
        //# limiting, resource limit reached or blacklisting.
        let _admitted = match self.admit(peer, Some(observed)) {
            Ok(a) => a,
            Err(r) => {
                self.refused("v2", r.label());
                return V2End {
                    server_error: "resource limit exceeded",
                    ..V2End::answer(ResponseStatus::RequestRejected)
                };
            }
        };
        let mut end = V2End::answer(ResponseStatus::Ok);
        end.dial_data_required = selected.needs_dial_data;
        if selected.needs_dial_data {
            let granted = lock(&self.budget).admit_dial_data(Instant::now());
            if let Err(r) = granted {
                self.refused("v2", r.label());
                end.server_error = "resource limit exceeded";
                end.answer = Some((ResponseStatus::RequestRejected, 0, DialStatus::Unused));
                return end;
            }
            if let Err(reason) = self.dial_data(stream, idx).await {
                self.refused("v2", reason);
                end.answer = None;
                end.server_error = "dial data refused";
                return end;
            }
        }
        end.dialed = Some(selected.addr.clone());
        let dial = match self.dial_v2(&selected.addr, peer, request.nonce).await {
            Outcome::Ok => DialStatus::Ok,
            Outcome::DialError => DialStatus::DialError,
            Outcome::DialBackError => DialStatus::DialBackError,
            Outcome::Internal => {
                end.server_error = "other";
                end.answer = Some((ResponseStatus::InternalError, 0, DialStatus::Unused));
                return end;
            }
        };
        self.served("v2");
        //= specs/autonat/autonat-v2.md#requirements-for-responsestatus
        //# `OK`: The server completed the request successfully. A request is considered
        //# a success when the server selects an address to dial and dials it, successfully or unsuccessfully.
        end.answer = Some((ResponseStatus::Ok, idx, dial));
        end
    }

    /// Asks for `dial_data_bytes` and reads them: `Err(reason)` if the client does not
    /// send them in time or breaks the rules (the caller resets the stream, no dial).
    async fn dial_data(&self, stream: &mut Stream, idx: u32) -> Result<(), &'static str> {
        let wanted = self.config.dial_data_bytes;
        //= specs/autonat/autonat-v2.md#amplification-attack-prevention
        //# If this selected address has a IP different from the client's
        //# observed IP, the server sends a `DialDataRequest` message with the selected
        //# address's index(zero-based) and `numBytes` set to a sufficiently large value
        let ask = V2Message::data_request(idx, wanted).encode_to_vec();
        match timeout(WRITE_TIMEOUT, write_frame(stream, &ask)).await {
            Ok(Ok(())) => {}
            _ => return Err("dial data refused"),
        }
        let collect = async {
            let mut got: u64 = 0;
            let mut empty = 0;
            //= specs/autonat/autonat-v2.md#amplification-attack-prevention
            //# Once the server has received at least
            //# numBytes bytes, it proceeds to dial the selected address.
            while got < wanted {
                let bytes = match read_frame(stream, MAX_MESSAGE).await {
                    Ok(b) => b,
                    Err(FrameError::Decode(_)) => return Err("bad dial data"),
                    Err(FrameError::Io(_)) => return Err("dial data refused"),
                };
                let data = match pylon_node::proto::decode::<V2Message>(&bytes, MAX_MESSAGE) {
                    Ok(V2Message {
                        msg: Some(V2Msg::DialDataResponse(d)),
                    }) => d.data,
                    _ => return Err("bad dial data"),
                };
                //= specs/autonat/autonat-v2.md#amplification-attack-prevention
                //# the `data` field in each individual protobuf is limited to 4096 bytes in length.
                if data.len() > MAX_DIAL_DATA_CHUNK {
                    return Err("dial data chunk too large");
                }
                if data.is_empty() {
                    empty += 1;
                    if empty > MAX_EMPTY_CHUNKS {
                        return Err("bad dial data");
                    }
                }
                got += data.len() as u64;
                self.metrics.dial_data_bytes.inc_by(data.len() as u64);
                lock(&self.tally).dial_data_bytes += data.len() as u64;
            }
            Ok(())
        };
        match timeout(self.config.dial_data_timeout, collect).await {
            Ok(r) => r,
            Err(_) => Err("dial data timeout"),
        }
    }

    /// Dials `addr` and hands over `nonce` on the dial-back protocol.
    async fn dial_v2(&self, addr: &Multiaddr, peer: PeerId, nonce: u64) -> Outcome {
        let _flight = InFlight::start(&self.metrics.in_progress);
        let deadline = tokio::time::Instant::now() + self.config.dial_back_timeout;
        let conn = match self.dial(addr, peer, deadline).await {
            Ok(c) => c,
            //= specs/autonat/autonat-v2.md#requirements-for-dialstatus
            //# If the server was unable to connect to the client on the selected address,
            //# `DialStatus` is set to `E_DIAL_ERROR`
            Err(DialFail::Unreachable) => {
                self.dialed("v2", Outcome::DialError);
                return Outcome::DialError;
            }
            Err(DialFail::Internal) => {
                self.dialed("v2", Outcome::Internal);
                return Outcome::Internal;
            }
        };
        //= specs/autonat/autonat-v2.md#autonat-v2-protocol
        //# The server dials the selected address, opens a stream with Protocol ID
        //# `/libp2p/autonat/2/dial-back` and sends a `DialBack` message with the nonce
        //# received in the request.
        let exchange = async {
            let mut s = conn.open_stream(&[V2_DIAL_BACK]).await.ok()?;
            write_frame(&mut s, &DialBack { nonce }.encode_to_vec())
                .await
                .ok()?;
            let bytes = read_frame(&mut s, MAX_DIAL_BACK_RESPONSE).await.ok()?;
            let answer =
                pylon_node::proto::decode::<DialBackResponse>(&bytes, MAX_DIAL_BACK_RESPONSE)
                    .ok()?;
            (answer.status == 0).then_some(())
        };
        let delivered = tokio::time::timeout_at(deadline, exchange)
            .await
            .ok()
            .flatten()
            .is_some();
        //= specs/autonat/autonat-v2.md#autonat-v2-protocol
        //# The dial back response provides
        //# the server assurance that the message was delivered so that it can close the
        //# connection.
        conn.close();
        //= specs/autonat/autonat-v2.md#requirements-for-dialstatus
        //# If the server was able to connect to the client on the selected address, but an
        //# error occured while sending an nonce on the `/libp2p/autonat/2/dial-back`
        //# stream, `DialStatus` is set to `E_DIAL_BACK_ERROR`.
        let outcome = if delivered {
            Outcome::Ok
        } else {
            Outcome::DialBackError
        };
        self.dialed("v2", outcome);
        outcome
    }
}

/// The handler of one protocol: `serve` on the server, while it lives.
fn on_stream<F, Fut>(server: Weak<Server>, serve: F) -> pylon_node::host::Handler
where
    F: Fn(Arc<Server>, Stream) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    handler(move |stream: Stream| {
        let server = server.upgrade();
        async move {
            if let Some(s) = server {
                serve(s, stream).await;
            }
        }
    })
}

/// Is this connection itself relayed (its remote address goes through `/p2p-circuit`)?
fn is_relayed(conn: &Connection) -> bool {
    conn.transport() == pylon_node::protocols::relay::client::LABEL
        || conn
            .remote_addr()
            .iter()
            .any(|p| matches!(p, Protocol::P2pCircuit))
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => Some(ip.into()),
        Some(Protocol::Ip6(ip)) => Some(ip.into()),
        _ => None,
    }
}

/// go-libp2p's `ip_or_dns_version` label: the address's first component.
fn ip_or_dns_version(addr: &Multiaddr) -> &'static str {
    match addr.iter().next() {
        Some(Protocol::Ip4(_)) => "ip4",
        Some(Protocol::Ip6(_)) => "ip6",
        Some(Protocol::Dns(_) | Protocol::Dnsaddr(_)) => "dns",
        Some(Protocol::Dns4(_)) => "dns4",
        Some(Protocol::Dns6(_)) => "dns6",
        _ => "unknown",
    }
}

/// go-libp2p's `transport` label: the name of the last transport component.
fn transport(addr: &Multiaddr) -> &'static str {
    addr.iter()
        .filter_map(|p| match p {
            Protocol::P2pCircuit => Some("p2p-circuit"),
            Protocol::WebRTC => Some("webrtc"),
            Protocol::WebRTCDirect => Some("webrtc-direct"),
            Protocol::WebTransport => Some("webtransport"),
            Protocol::Quic => Some("quic"),
            Protocol::QuicV1 => Some("quic-v1"),
            Protocol::Wss(_) => Some("wss"),
            Protocol::Ws(_) => Some("ws"),
            Protocol::Tcp(_) => Some("tcp"),
            _ => None,
        })
        .last()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn labels_follow_go_libp2p() {
        let m = |s: &str| s.parse::<Multiaddr>().unwrap();
        assert_eq!(transport(&m("/ip4/1.2.3.4/tcp/1")), "tcp");
        assert_eq!(transport(&m("/ip4/1.2.3.4/tcp/1/ws")), "ws");
        assert_eq!(transport(&m("/ip6/::1/udp/1/quic-v1")), "quic-v1");
        assert_eq!(ip_or_dns_version(&m("/ip6/::1/udp/1/quic-v1")), "ip6");
        assert_eq!(ip_or_dns_version(&m("/dns4/a.b/tcp/1")), "dns4");
    }
}
