//! The hop protocol's server: reads a client's request, asks the bookkeeping
//! ([`Table`]), answers, and for a circuit opens the stop stream to the target and runs
//! the splice. The table's lock is never held across an await.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use multiaddr::{Multiaddr, Protocol};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use pylon_node::host::{Connection, Extension, Stream};
use pylon_node::node::Node;
use pylon_node::protocols::relay::proto::{
    self, HopMessage, HopRequest, HopType, Limit, ReadError, Reservation, Status, StopMessage,
};
use pylon_node::protocols::relay::{voucher, HOP, STOP};
use pylon_node::PeerId;
use tokio_util::sync::CancellationToken;

use super::core::{CircuitId, Refusal, Table};
use super::splice::{self, Carried, CircuitLimits, End};
use super::{CircuitView, Config, ReservationView, Status as RoleStatus};
use crate::Metrics;

/// How long a client has to send its request, and the target to answer a `STOP`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The reason the relay gives `Host::protect` for a reservation holder's connections.
const PROTECT: &str = "relay_reservation";
/// How often expired reservations are dropped and counted (they are also dropped lazily
/// whenever a request comes in).
const EXPIRY_SWEEP: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// go-libp2p's `libp2p_relaysvc_*` families and the role's own.
struct RelayMetrics {
    status: Gauge,
    reservations: Family<TypeLabels, Counter>,
    reservation_status: Family<StatusLabels, Counter>,
    reservation_rejections: Family<ReasonLabels, Counter>,
    connections: Family<TypeLabels, Counter>,
    connection_status: Family<StatusLabels, Counter>,
    connection_rejections: Family<ReasonLabels, Counter>,
    connection_duration: Histogram,
    data: Counter,
    held: Gauge,
    open: Gauge,
    max_reservations: Gauge,
    max_circuits: Gauge,
    circuits_ended: Family<OutcomeLabels, Counter>,
    bad_requests: Family<StatusLabels, Counter>,
}

impl RelayMetrics {
    fn register(metrics: &mut Metrics<'_>) -> RelayMetrics {
        let m = RelayMetrics {
            status: Gauge::default(),
            reservations: Family::default(),
            reservation_status: Family::default(),
            reservation_rejections: Family::default(),
            connections: Family::default(),
            connection_status: Family::default(),
            connection_rejections: Family::default(),
            connection_duration: Histogram::new([
                0.1, 1.0, 10.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
            ]),
            data: Counter::default(),
            held: Gauge::default(),
            open: Gauge::default(),
            max_reservations: Gauge::default(),
            max_circuits: Gauge::default(),
            circuits_ended: Family::default(),
            bad_requests: Family::default(),
        };
        let go = metrics.standard("libp2p_relaysvc");
        go.register("status", "Relay service on (1)", m.status.clone());
        go.register(
            "reservations",
            "Reservations opened, renewed and closed",
            m.reservations.clone(),
        );
        go.register(
            "reservation_request_response_status",
            "Answers to reservation requests, by status",
            m.reservation_status.clone(),
        );
        go.register(
            "reservation_rejections",
            "Reservation requests refused, by reason",
            m.reservation_rejections.clone(),
        );
        go.register(
            "connections",
            "Circuits opened and closed",
            m.connections.clone(),
        );
        go.register(
            "connection_request_response_status",
            "Answers to circuit requests, by status",
            m.connection_status.clone(),
        );
        go.register(
            "connection_rejections",
            "Circuit requests refused, by reason",
            m.connection_rejections.clone(),
        );
        go.register(
            "connection_duration_seconds",
            "Life of closed circuits",
            m.connection_duration.clone(),
        );
        go.register(
            "data_transferred_bytes",
            "Bytes relayed, both directions",
            m.data.clone(),
        );
        let own = metrics.own();
        own.register("reservations", "Reservations held now", m.held.clone());
        own.register("circuits", "Circuits open now", m.open.clone());
        own.register(
            "max_reservations",
            "Configured limit on reservations held (roles.relay.max_reservations)",
            m.max_reservations.clone(),
        );
        own.register(
            "max_circuits",
            "Configured limit on circuits open (roles.relay.max_circuits)",
            m.max_circuits.clone(),
        );
        own.register(
            "circuits_ended",
            "Circuits ended, by how (closed, data_limit, duration_limit, failed, shutdown)",
            m.circuits_ended.clone(),
        );
        own.register(
            "bad_requests",
            "Hop requests answered with an error status before any bookkeeping (malformed, unexpected)",
            m.bad_requests.clone(),
        );
        m
    }
}

/// The relay service on one node.
pub(super) struct Service {
    node: Node,
    config: Config,
    table: Mutex<Table>,
    /// Bytes of each open circuit, for the status view.
    carried: Mutex<HashMap<CircuitId, Arc<Carried>>>,
    metrics: RelayMetrics,
    cancel: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the host calls: inbound hop streams, and connections closing.
struct HopExtension(Weak<Service>);

impl Extension for HopExtension {
    fn protocol_ids(&self) -> Vec<String> {
        vec![HOP.to_string()]
    }

    fn handle_stream(self: Arc<Self>, stream: Stream) -> BoxFuture<'static, ()> {
        let service = self.0.upgrade();
        Box::pin(async move {
            if let Some(s) = service {
                s.serve(stream).await;
            }
        })
    }

    fn on_connection_closed(&self, conn: &Connection, _reason: &str) {
        let Some(s) = self.0.upgrade() else { return };
        // The spec: a reservation is valid while the peer stays connected.
        if s.node.host.connection(&conn.peer()).is_none() && lock(&s.table).release(&conn.peer()) {
            s.node.host.unprotect(&conn.peer(), PROTECT);
            s.metrics
                .reservations
                .get_or_create(&TypeLabels { r#type: "closed" })
                .inc();
            s.metrics.held.dec();
        }
    }
}

impl Service {
    pub(super) fn start(node: &Node, config: Config, metrics: &mut Metrics<'_>) -> Arc<Service> {
        let metrics = RelayMetrics::register(metrics);
        metrics.status.set(1);
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        metrics.max_reservations.set(gauge(config.max_reservations));
        metrics.max_circuits.set(gauge(config.max_circuits));
        let service = Arc::new(Service {
            node: node.clone(),
            table: Mutex::new(Table::new(config.limits(), config.policy())),
            config,
            carried: Mutex::new(HashMap::new()),
            metrics,
            cancel: node.host.shutdown_token(),
        });
        node.host
            .install(Arc::new(HopExtension(Arc::downgrade(&service))));
        let weak = Arc::downgrade(&service);
        let cancel = service.cancel.clone();
        node.host.spawn_supervised("relay_expiry", async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(EXPIRY_SWEEP) => {}
                }
                let Some(s) = weak.upgrade() else { break };
                s.expire(Instant::now());
            }
        });
        service
    }

    fn expire(&self, now: Instant) {
        let expired = lock(&self.table).expire(now);
        for peer in &expired {
            self.node.host.unprotect(peer, PROTECT);
        }
        let expired = expired.len();
        if expired > 0 {
            self.metrics
                .reservations
                .get_or_create(&TypeLabels { r#type: "closed" })
                .inc_by(expired as u64);
            self.metrics.held.dec_by(expired as i64);
        }
    }

    pub(super) fn reservation_count(&self) -> usize {
        lock(&self.table).reservation_count()
    }

    pub(super) fn circuit_count(&self) -> usize {
        lock(&self.table).circuit_count()
    }

    async fn serve(self: Arc<Self>, mut stream: Stream) {
        let msg =
            match tokio::time::timeout(REQUEST_TIMEOUT, proto::read::<HopMessage, _>(&mut stream))
                .await
            {
                Ok(Ok(msg)) => msg,
                Ok(Err(ReadError::Malformed)) => {
                    return self.refuse_request(stream, Status::MalformedMessage).await
                }
                // Silent or gone: dropping the stream resets it.
                Ok(Err(ReadError::Io(_))) | Err(_) => return,
            };
        match HopRequest::parse(&msg) {
            Ok(HopRequest::Reserve) => self.reserve(stream).await,
            Ok(HopRequest::Connect { peer }) => self.connect(stream, peer).await,
            Err(status) => self.refuse_request(stream, status).await,
        }
    }

    /// A request answered with an error before any bookkeeping (malformed, unexpected).
    async fn refuse_request(&self, mut stream: Stream, status: Status) {
        self.metrics
            .bad_requests
            .get_or_create(&StatusLabels {
                status: status.label(),
            })
            .inc();
        let _ = proto::write(&mut stream, &HopMessage::answer(status)).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
    }

    async fn reserve(&self, mut stream: Stream) {
        let peer = stream.peer();
        let now = Instant::now();
        self.expire(now);
        let decided = if is_relayed(stream.connection()) {
            Err(Refusal::Relayed)
        } else {
            let ip = ip_of(stream.connection().remote_addr());
            let mut table = lock(&self.table);
            let renewal = table.has_reservation(now, &peer);
            table.reserve(now, peer, ip).map(|expires| {
                let trusted = table.held(&peer).is_some_and(|h| h.trusted);
                (expires, renewal, trusted)
            })
        };
        let answer = match decided {
            Ok((expires, renewal, trusted)) => {
                let kind = if renewal { "renewed" } else { "opened" };
                self.metrics
                    .reservations
                    .get_or_create(&TypeLabels { r#type: kind })
                    .inc();
                if !renewal {
                    self.metrics.held.inc();
                    // Keep its connection: the reservation lives as long as it does.
                    self.node.host.protect(peer, PROTECT);
                }
                self.reservation(peer, now, expires, trusted)
            }
            Err(refusal) => {
                self.metrics
                    .reservation_rejections
                    .get_or_create(&ReasonLabels {
                        reason: refusal.label(),
                    })
                    .inc();
                HopMessage::answer(refusal.status())
            }
        };
        let status = answer.status_of().unwrap_or(Status::ConnectionFailed);
        self.metrics
            .reservation_status
            .get_or_create(&StatusLabels {
                status: status.label(),
            })
            .inc();
        let _ = proto::write(&mut stream, &answer).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
    }

    /// The `STATUS: OK` of a reservation: expiry, our addresses, a voucher, the limits.
    fn reservation(
        &self,
        peer: PeerId,
        now: Instant,
        expires: Instant,
        trusted: bool,
    ) -> HopMessage {
        let expire = unix_secs(SystemTime::now() + expires.saturating_duration_since(now));
        let me = self.node.peer_id();
        let addrs = self
            .node
            .host
            .interface_listen_addrs()
            .into_iter()
            // Our own addresses, not those we are reachable at through other relays.
            .filter(|a| !a.iter().any(|p| matches!(p, Protocol::P2pCircuit)))
            .map(|a| a.with(Protocol::P2p(me)).to_vec())
            .collect();
        let voucher = voucher::seal(self.node.host.keypair(), peer, expire).ok();
        HopMessage {
            r#type: Some(HopType::Status as i32),
            status: Some(Status::Ok.code()),
            reservation: Some(Reservation {
                expire: Some(expire),
                addrs,
                voucher,
            }),
            limit: self.wire_limit(trusted),
            peer: None,
        }
    }

    /// The limits announced for a circuit: none to a trusted peer.
    fn wire_limit(&self, trusted: bool) -> Option<Limit> {
        if trusted {
            return None;
        }
        let secs = u32::try_from(self.config.circuit_duration.as_secs()).unwrap_or(u32::MAX);
        Limit::new(secs, self.config.circuit_data)
    }

    /// One CONNECT: the circuit from the decision to its end, as a trace span.
    async fn connect(&self, caller: Stream, dst: PeerId) {
        let span = tracing::info_span!(
            "relay.circuit",
            src = %caller.peer(),
            dst = %dst,
            outcome = tracing::field::Empty,
            bytes = tracing::field::Empty,
        );
        tracing::Instrument::instrument(self.connect_traced(caller, dst), span).await
    }

    async fn connect_traced(&self, mut caller: Stream, dst: PeerId) {
        let src = caller.peer();
        let now = Instant::now();
        // Expired reservations leave (counted, unprotected) before the decision.
        self.expire(now);
        let decided = if is_relayed(caller.connection()) {
            Err(Refusal::Relayed)
        } else {
            let ip = ip_of(caller.connection().remote_addr());
            lock(&self.table).connect(now, src, ip, dst)
        };
        let (id, trusted) = match decided {
            Ok(decided) => decided,
            Err(refusal) => {
                tracing::Span::current().record("outcome", refusal.label());
                self.metrics
                    .connection_rejections
                    .get_or_create(&ReasonLabels {
                        reason: refusal.label(),
                    })
                    .inc();
                return self.answer_connect(caller, refusal.status()).await;
            }
        };
        self.metrics.open.inc();
        let target = match self.open_stop(src, dst, trusted).await {
            Ok(t) => t,
            Err(()) => {
                lock(&self.table).close(id);
                self.metrics.open.dec();
                return self.answer_connect(caller, Status::ConnectionFailed).await;
            }
        };
        let mut ok = HopMessage::answer(Status::Ok);
        ok.limit = self.wire_limit(trusted);
        self.metrics
            .connection_status
            .get_or_create(&StatusLabels {
                status: Status::Ok.label(),
            })
            .inc();
        if proto::write(&mut caller, &ok).await.is_err() {
            lock(&self.table).close(id);
            self.metrics.open.dec();
            return;
        }
        self.metrics
            .connections
            .get_or_create(&TypeLabels { r#type: "opened" })
            .inc();
        let carried = Arc::new(Carried::default());
        lock(&self.carried).insert(id, carried.clone());
        let opened = Instant::now();
        let limits = if trusted {
            CircuitLimits {
                data: 0,
                duration: None,
            }
        } else {
            self.config.circuit_limits()
        };
        let end = splice::splice(
            caller,
            target,
            limits,
            self.config.circuit_buffer,
            &carried,
            &self.cancel,
        )
        .await;
        lock(&self.carried).remove(&id);
        lock(&self.table).close(id);
        self.metrics.open.dec();
        self.metrics
            .connections
            .get_or_create(&TypeLabels { r#type: "closed" })
            .inc();
        self.metrics
            .connection_duration
            .observe(opened.elapsed().as_secs_f64());
        let bytes = carried.up.load(std::sync::atomic::Ordering::Relaxed)
            + carried.down.load(std::sync::atomic::Ordering::Relaxed);
        self.metrics.data.inc_by(bytes);
        let span = tracing::Span::current();
        span.record("outcome", end.label());
        span.record("bytes", bytes);
        self.metrics
            .circuits_ended
            .get_or_create(&OutcomeLabels {
                outcome: end.label(),
            })
            .inc();
        if let End::Failed(e) = &end {
            tracing::debug!(%src, %dst, "circuit failed: {e}");
        }
    }

    async fn answer_connect(&self, mut caller: Stream, status: Status) {
        self.metrics
            .connection_status
            .get_or_create(&StatusLabels {
                status: status.label(),
            })
            .inc();
        let _ = proto::write(&mut caller, &HopMessage::answer(status)).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut caller).await;
    }

    /// Opens the stop stream to `dst` and asks it to take the circuit from `src`.
    async fn open_stop(&self, src: PeerId, dst: PeerId, trusted: bool) -> Result<Stream, ()> {
        let conn = self.node.host.connection(&dst).ok_or(())?;
        let attempt = async {
            let mut stop = conn.open_stream(&[STOP]).await.map_err(|_| ())?;
            proto::write(
                &mut stop,
                &StopMessage::connect(src, self.wire_limit(trusted)),
            )
            .await
            .map_err(|_| ())?;
            let answer: StopMessage = proto::read(&mut stop).await.map_err(|_| ())?;
            match answer.status_of() {
                Some(Status::Ok) => Ok(stop),
                _ => Err(()),
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, attempt)
            .await
            .map_err(|_| ())?
    }

    pub(super) fn status(&self) -> RoleStatus {
        let now = Instant::now();
        let table = lock(&self.table);
        let carried = lock(&self.carried);
        let reservations = table
            .reservations()
            .map(|(peer, held)| ReservationView {
                peer: peer.to_string(),
                age_secs: now.saturating_duration_since(held.since).as_secs(),
                expires_in_secs: held.expires.saturating_duration_since(now).as_secs(),
            })
            .collect();
        let circuits = table
            .circuits()
            .map(|(id, c)| {
                let (up, down) = carried.get(id).map_or((0, 0), |b| {
                    (
                        b.up.load(std::sync::atomic::Ordering::Relaxed),
                        b.down.load(std::sync::atomic::Ordering::Relaxed),
                    )
                });
                CircuitView {
                    src: c.src.to_string(),
                    dst: c.dst.to_string(),
                    age_secs: now.saturating_duration_since(c.opened).as_secs(),
                    bytes_up: up,
                    bytes_down: down,
                }
            })
            .collect();
        RoleStatus {
            reservations,
            circuits,
            max_reservations: self.config.max_reservations,
            max_circuits: self.config.max_circuits,
            circuit_data: self.config.circuit_data,
            circuit_duration_secs: self.config.circuit_duration.as_secs(),
            reachability: self.node.autonat.reachability().label(),
        }
    }
}

/// Is this connection itself relayed (its remote address goes through `/p2p-circuit`)?
fn is_relayed(conn: &Connection) -> bool {
    conn.remote_addr()
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

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
