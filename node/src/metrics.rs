//! Prometheus metrics of the stack, named after go-libp2p's families so its Grafana
//! dashboards read them (`libp2p_swarm_*`, `libp2p_identify_*`, `libp2p_host_addrs_*`,
//! `libp2p_autorelay_*`, `libp2p_holepunch_*`, `libp2p_autonat*`, and the resource
//! manager's `libp2p_rcmgr_*` in [`crate::resource_metrics`]), plus the process's own
//! (`process_*`, `pylon_build_info`: [`crate::process_metrics`]). No label ever carries a
//! PeerId or an IP, and protocol labels only take values we registered ourselves, so
//! cardinality is bounded.
//!
//! Label values follow go-libp2p's where a dashboard filters on them (`dir` is `inbound`
//! or `outbound`, `side` `initiator` or `receiver`, `num_dials` `0` to `5` or `>=6`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use multiaddr::{Multiaddr, Protocol};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of go-libp2p's `libp2p_swarm_connections_*` families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub dir: &'static str,
    pub transport: &'static str,
    pub security: &'static str,
    pub muxer: &'static str,
    pub early_muxer: &'static str,
    pub ip_version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub transport: &'static str,
    pub security: &'static str,
    pub muxer: &'static str,
    pub early_muxer: &'static str,
    pub ip_version: &'static str,
}

/// `libp2p_holepunch_outcomes_total`: which side of the exchange, and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HolepunchLabels {
    /// `initiator` (received the relayed connection) or `receiver`.
    pub side: &'static str,
    /// `success`, `failed`, `no_suitable_address`.
    pub outcome: &'static str,
}

/// `libp2p_holepunch_address_outcomes_total`: one address dialed in a punch.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HolepunchAddrLabels {
    pub side: &'static str,
    /// `tcp` or `quic-v1`.
    pub transport: &'static str,
    pub outcome: &'static str,
}

/// `libp2p_autonat_received_dial_response_total`: v1 answers we received.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AutonatResponseLabels {
    /// go-libp2p's wording: `ok`, `dial error`, `dial refused`, `bad request`,
    /// `internal error`, `unknown`.
    pub response_status: &'static str,
}

/// `libp2p_autonatv2_client_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `success` (an answer came) or `failure`.
    pub outcome: &'static str,
}

/// `libp2p_autonatv2_client_requests_completed_total`, go-libp2p's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AutonatClientLabels {
    pub ip_or_dns_version: &'static str,
    pub transport: &'static str,
    pub addr_count: &'static str,
    pub dial_refused: &'static str,
    /// What the answer said of the address: `public`, `private`, `unknown`.
    pub reachability: &'static str,
}

/// `pylon_reachability_addresses`: our tested addresses by verdict.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DialErrorLabels {
    pub transport: &'static str,
    /// What failed, in go-libp2p's terms (`deadline`, `connection_refused`, `handshake`, ...).
    pub error: &'static str,
    /// Whose fault it was ([`crate::fault::Fault::label`]).
    pub fault: &'static str,
    pub ip_version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyTypeLabels {
    pub dir: &'static str,
    pub key_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirLabels {
    pub dir: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub dir: &'static str,
    /// A protocol we registered, or `other`.
    pub protocol: String,
}

/// `pylon_stream_bytes_total`: which way the bytes went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    /// `received` (read from a stream) or `sent` (written to one).
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub protocol: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecordLabels {
    pub outcome: &'static str,
    /// The record format when accepted or unchanged, the reason when rejected.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KadLabels {
    /// Message type (`find_node`, `get_value`, ...).
    pub kind: &'static str,
    /// `ok`, or why the request failed.
    pub outcome: &'static str,
}

/// rust-libp2p's `libp2p_kad_query_result_*` families: the kind of lookup, in its words
/// (`GetClosestPeers`, `GetRecord`, `GetProviders`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KadQueryLabels {
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// `libp2p_swarm_dials_per_peer_total` and `libp2p_swarm_dial_latency_seconds`: one
/// [`crate::host::Host::connect`] that had to dial.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DialOutcomeLabels {
    /// `success` or `failed`.
    pub outcome: &'static str,
    /// Addresses dialed: `0` to `5`, or `>=6`.
    pub num_dials: &'static str,
}

/// `libp2p_identify_identify_pushes_triggered_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    /// `protocols_updated` or `addresses_updated`.
    pub trigger: &'static str,
}

/// `libp2p_identify_conn_push_support_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushSupportLabels {
    /// `supported`, `not supported` (go-libp2p's words), or `unknown` (identify failed).
    pub support: &'static str,
}

/// `libp2p_host_addrs_*`: our addresses by IP version and transport.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AddrLabels {
    /// `ip4`, `ip6` or `unknown`.
    pub ipv: &'static str,
    pub transport: &'static str,
}

/// `libp2p_autorelay_reservation_requests_outcome_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReservationRequestLabels {
    /// `new` or `refresh`.
    pub request_type: &'static str,
    /// `success`, or go-libp2p's words for the relay's refusal (`reservation refused`,
    /// `resource limit exceeded`, `permission denied`, `connection failed`, `malformed
    /// message`), or `err other` (no answer, a broken one, a failed dial).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// The supervised task (`tcp_listener`, `kad_refresh`, ...).
    pub task: &'static str,
    /// `ended` or `panicked`.
    pub how: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// rust-libp2p's buckets for lookup durations (0.1 s doubling) and request counts (1
/// doubling).
fn query_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 10))
}

fn query_count_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 10))
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.5, 2.0, 20))
}

/// go-libp2p's buckets of the dial latency and the dial ranking delay (its dashboard
/// picks `le` values out of these).
const DIAL_BUCKETS: [f64; 11] = [0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0];

fn dial_histogram() -> Histogram {
    Histogram::new(DIAL_BUCKETS)
}

/// go-libp2p's buckets of identify's received address and protocol counts: 1 to 20,
/// then 25 to 100 in steps of 5.
fn count_histogram() -> Histogram {
    Histogram::new((1..=20).chain((5..=20).map(|i| i * 5)).map(f64::from))
}

/// The `num_dials` label of a count of dials.
pub fn num_dials_label(n: usize) -> &'static str {
    ["0", "1", "2", "3", "4", "5"]
        .get(n)
        .copied()
        .unwrap_or(">=6")
}

/// go-libp2p's transport of an address: the last of circuit, WebRTC, WebTransport, QUIC,
/// WebSocket or TCP in it, else `other`.
pub fn transport_label(addr: &Multiaddr) -> &'static str {
    let components: Vec<Protocol<'_>> = addr.iter().collect();
    for p in components.iter().rev() {
        let label = match p {
            Protocol::P2pCircuit => "p2p-circuit",
            Protocol::WebRTC => "webrtc",
            Protocol::WebRTCDirect => "webrtc-direct",
            Protocol::WebTransport => "webtransport",
            Protocol::Quic => "quic",
            Protocol::QuicV1 => "quic-v1",
            Protocol::Wss(_) => "wss",
            Protocol::Ws(_) => "ws",
            Protocol::Tcp(_) => "tcp",
            _ => continue,
        };
        return label;
    }
    "other"
}

/// go-libp2p's IP version of an address: that of its first component.
pub fn ipv_label(addr: &Multiaddr) -> &'static str {
    match addr.iter().next() {
        Some(Protocol::Ip4(_) | Protocol::Dns4(_)) => "ip4",
        Some(Protocol::Ip6(_) | Protocol::Dns6(_)) => "ip6",
        _ => "unknown",
    }
}

/// Identify's families (`libp2p_identify_*`), as go-libp2p counts them: `dir` is the
/// direction of the identify message (we answer a request: `inbound`; we asked and got
/// an answer: `outbound`; a push we received: `inbound`, one we sent: `outbound`).
pub struct IdentifyMetrics {
    pub pushes_triggered: Family<TriggerLabels, Counter>,
    pub exchanges: Family<DirLabels, Counter>,
    pub pushes: Family<DirLabels, Counter>,
    pub push_support: Family<PushSupportLabels, Counter>,
    /// Protocols in the last identify message we sent.
    pub protocols_count: Gauge,
    /// Addresses in the last identify message we sent.
    pub addrs_count: Gauge,
    pub protocols_received: Histogram,
    pub addrs_received: Histogram,
}

impl IdentifyMetrics {
    fn new() -> Self {
        IdentifyMetrics {
            pushes_triggered: Family::default(),
            exchanges: Family::default(),
            pushes: Family::default(),
            push_support: Family::default(),
            protocols_count: Gauge::default(),
            addrs_count: Gauge::default(),
            protocols_received: count_histogram(),
            addrs_received: count_histogram(),
        }
    }

    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("libp2p_identify");
        r.register(
            "identify_pushes_triggered",
            "Identify pushes triggered, by what changed",
            self.pushes_triggered.clone(),
        );
        r.register(
            "identify",
            "Identify messages (answers to identify requests), by direction",
            self.exchanges.clone(),
        );
        r.register(
            "identify_push",
            "Identify push messages, by direction",
            self.pushes.clone(),
        );
        r.register(
            "conn_push_support",
            "New connections by whether the peer supports identify push",
            self.push_support.clone(),
        );
        r.register(
            "protocols_count",
            "Protocols in the last identify message we sent",
            self.protocols_count.clone(),
        );
        r.register(
            "addrs_count",
            "Addresses in the last identify message we sent",
            self.addrs_count.clone(),
        );
        r.register(
            "protocols_received",
            "Protocols in identify messages received",
            self.protocols_received.clone(),
        );
        r.register(
            "addrs_received",
            "Addresses in identify messages received",
            self.addrs_received.clone(),
        );
    }

    /// Counts an identify message we sent (a push or an answer) with these counts.
    pub fn sent(&self, push: bool, protocols: usize, addrs: usize) {
        let (family, dir) = if push {
            (&self.pushes, "outbound")
        } else {
            (&self.exchanges, "inbound")
        };
        family.get_or_create(&DirLabels { dir }).inc();
        self.protocols_count
            .set(i64::try_from(protocols).unwrap_or(i64::MAX));
        self.addrs_count
            .set(i64::try_from(addrs).unwrap_or(i64::MAX));
    }

    /// Counts an identify message we received (a push or an answer) with these counts.
    pub fn received(&self, push: bool, protocols: usize, addrs: usize) {
        let (family, dir) = if push {
            (&self.pushes, "inbound")
        } else {
            (&self.exchanges, "outbound")
        };
        family.get_or_create(&DirLabels { dir }).inc();
        self.protocols_received.observe(protocols as f64);
        self.addrs_received.observe(addrs as f64);
    }
}

/// Our addresses by reachability (`libp2p_host_addrs_{reachable,unreachable,unknown}`),
/// counted by IP version and transport as AutoNAT judges them.
pub struct HostAddrMetrics {
    pub reachable: Family<AddrLabels, Gauge>,
    pub unreachable: Family<AddrLabels, Gauge>,
    pub unknown: Family<AddrLabels, Gauge>,
    /// Every (IP version, transport) reported so far: a key that empties is set to 0
    /// rather than left at its last count. Bounded by the label values.
    seen: Mutex<HashSet<AddrLabels>>,
}

impl HostAddrMetrics {
    fn new() -> Self {
        HostAddrMetrics {
            reachable: Family::default(),
            unreachable: Family::default(),
            unknown: Family::default(),
            seen: Mutex::new(HashSet::new()),
        }
    }

    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("libp2p_host_addrs");
        r.register(
            "reachable",
            "Our addresses AutoNAT found reachable, by IP version and transport",
            self.reachable.clone(),
        );
        r.register(
            "unreachable",
            "Our addresses AutoNAT found unreachable, by IP version and transport",
            self.unreachable.clone(),
        );
        r.register(
            "unknown",
            "Our addresses AutoNAT has no verdict on yet, by IP version and transport",
            self.unknown.clone(),
        );
    }

    /// Sets the counts from the addresses of each verdict.
    pub fn set(&self, reachable: &[Multiaddr], unreachable: &[Multiaddr], unknown: &[Multiaddr]) {
        let key = |a: &Multiaddr| AddrLabels {
            ipv: ipv_label(a),
            transport: transport_label(a),
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.extend(reachable.iter().chain(unreachable).chain(unknown).map(key));
        for (family, addrs) in [
            (&self.reachable, reachable),
            (&self.unreachable, unreachable),
            (&self.unknown, unknown),
        ] {
            for k in seen.iter() {
                let n = addrs.iter().filter(|a| key(a) == *k).count();
                family
                    .get_or_create(k)
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }
}

/// The relay client's reservations under go-libp2p's autorelay families
/// (`libp2p_autorelay_*`). Pylon holds reservations on the relays it is configured with
/// (`relay_client.listen_via`); it does not search for relays, so the candidate families
/// of go-libp2p's relay finder have nothing to report and are not exported.
pub struct AutorelayMetrics {
    /// 1 while the client keeps reservations (relays are configured), else 0.
    pub status: Gauge,
    /// Reservations the client keeps (the configured relays).
    pub desired_reservations: Gauge,
    pub reservations_opened: Counter,
    pub reservations_closed: Counter,
    pub reservation_requests: Family<ReservationRequestLabels, Counter>,
    /// Circuit addresses we hold now (one per relay holding our reservation).
    pub relay_addresses: Gauge,
    pub relay_addresses_updated: Counter,
}

impl AutorelayMetrics {
    fn new() -> Self {
        let m = AutorelayMetrics {
            status: Gauge::default(),
            desired_reservations: Gauge::default(),
            reservations_opened: Counter::default(),
            reservations_closed: Counter::default(),
            reservation_requests: Family::default(),
            relay_addresses: Gauge::default(),
            relay_addresses_updated: Counter::default(),
        };
        // As go-libp2p: present from the start, so `increase` sees the first success.
        for request_type in ["new", "refresh"] {
            m.reservation_requests
                .get_or_create_owned(&ReservationRequestLabels {
                    request_type,
                    outcome: "success",
                });
        }
        m
    }

    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("libp2p_autorelay");
        r.register(
            "status",
            "1 while the relay client keeps reservations on configured relays",
            self.status.clone(),
        );
        r.register(
            "desired_reservations",
            "Relays the client keeps a reservation on (relay_client.listen_via)",
            self.desired_reservations.clone(),
        );
        r.register(
            "reservations_opened",
            "Reservations made (not counting refreshes)",
            self.reservations_opened.clone(),
        );
        r.register(
            "reservations_closed",
            "Reservations lost (the relay connection closed, or a refresh failed)",
            self.reservations_closed.clone(),
        );
        r.register(
            "reservation_requests_outcome",
            "Reservation requests, by type (new, refresh) and outcome",
            self.reservation_requests.clone(),
        );
        r.register(
            "relay_addresses_count",
            "Circuit addresses we are reachable at now",
            self.relay_addresses.clone(),
        );
        r.register(
            "relay_addresses_updated",
            "Changes of our circuit addresses",
            self.relay_addresses_updated.clone(),
        );
    }
}

/// Every metric of the node stack, registered once in [`Metrics::new`].
pub struct Metrics {
    pub connections_opened: Family<ConnLabels, Counter>,
    pub connections_closed: Family<ConnLabels, Counter>,
    pub connection_duration: Family<ConnLabels, Histogram, fn() -> Histogram>,
    pub handshake_latency: Family<HandshakeLabels, Histogram, fn() -> Histogram>,
    pub dial_errors: Family<DialErrorLabels, Counter>,
    pub handshake_errors: Family<DialErrorLabels, Counter>,
    pub key_types: Family<KeyTypeLabels, Counter>,
    pub connections: Family<DirLabels, Gauge>,
    pub streams_opened: Family<StreamLabels, Counter>,
    pub streams: Family<DirLabels, Gauge>,
    /// `pylon_stream_bytes_total{direction}`: protocol payload read from and written to
    /// streams (after the muxer and the security layer, so without their framing).
    pub stream_bytes: Family<BytesLabels, Counter>,
    /// The `received` series of `stream_bytes`, held so a stream counts without a lookup.
    pub stream_bytes_received: Counter,
    /// The `sent` series of `stream_bytes`.
    pub stream_bytes_sent: Counter,
    pub protocol_errors: Family<ErrorLabels, Counter>,
    pub signed_records: Family<RecordLabels, Counter>,
    pub ping_rtt: Histogram,
    pub peerstore_peers: Gauge,
    pub peerstore_evictions: Counter,
    pub kad_inbound: Family<KadLabels, Counter>,
    pub kad_outbound: Family<KadLabels, Counter>,
    pub kad_table_peers: Gauge,
    pub kad_table_refusals: Family<ReasonLabels, Counter>,
    pub kad_records: Gauge,
    pub kad_provider_records: Gauge,
    pub kad_network_size: Gauge,
    /// Addresses of closer peers that a peer at a public address named in a private or
    /// loopback range: not dialed.
    pub kad_private_addrs_dropped: Counter,
    /// One lookup: how long it took, how many requests it sent, how many were answered
    /// and how many failed (rust-libp2p's `libp2p_kad_query_result_*`).
    pub kad_query_duration: Family<KadQueryLabels, Histogram, fn() -> Histogram>,
    pub kad_query_requests: Family<KadQueryLabels, Histogram, fn() -> Histogram>,
    pub kad_query_success: Family<KadQueryLabels, Histogram, fn() -> Histogram>,
    pub kad_query_failure: Family<KadQueryLabels, Histogram, fn() -> Histogram>,
    pub holepunch_outcomes: Family<HolepunchLabels, Counter>,
    pub holepunch_addresses: Family<HolepunchAddrLabels, Counter>,
    /// The node's reachability (AutoNAT client): go-libp2p's numbering, 0 unknown, 1
    /// public, 2 private.
    pub autonat_reachability: Gauge,
    pub autonat_confidence: Gauge,
    pub autonat_next_probe: Gauge,
    pub autonat_v1_responses: Family<AutonatResponseLabels, Counter>,
    pub autonat_v2_requests: Family<OutcomeLabels, Counter>,
    pub autonat_v2_completed: Family<AutonatClientLabels, Counter>,
    pub reachability_addresses: Family<VerdictLabels, Gauge>,
    /// `libp2p_swarm_dials_per_peer_total`: connects that had to dial, by outcome and
    /// addresses tried.
    pub dials_per_peer: Family<DialOutcomeLabels, Counter>,
    /// `libp2p_swarm_dial_latency_seconds`: from the first dial to the outcome.
    pub dial_latency: Family<DialOutcomeLabels, Histogram, fn() -> Histogram>,
    /// `libp2p_swarm_dial_ranking_delay_seconds`: how long the address that connected
    /// waited for its turn (happy eyeballs).
    pub dial_ranking_delay: Histogram,
    pub identify: IdentifyMetrics,
    pub host_addrs: HostAddrMetrics,
    pub autorelay: AutorelayMetrics,
    /// go-libp2p's resource manager families (`libp2p_rcmgr_*`).
    pub resources: Arc<crate::resource_metrics::Resources>,
    /// The node's database (`pylon_storage_*`).
    pub storage: Arc<crate::storage::Metrics>,
    /// Supervised tasks that ended before shutdown (`pylon_task_failures_total`).
    pub task_failures: Family<TaskLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Arc<Self> {
        let stream_bytes = Family::<BytesLabels, Counter>::default();
        let stream_bytes_received = stream_bytes.get_or_create_owned(&BytesLabels {
            direction: "received",
        });
        let stream_bytes_sent =
            stream_bytes.get_or_create_owned(&BytesLabels { direction: "sent" });
        let m = Metrics {
            connections_opened: Family::default(),
            connections_closed: Family::default(),
            connection_duration: Family::new_with_constructor(duration_histogram),
            handshake_latency: Family::new_with_constructor(latency_histogram),
            dial_errors: Family::default(),
            handshake_errors: Family::default(),
            key_types: Family::default(),
            connections: Family::default(),
            streams_opened: Family::default(),
            streams: Family::default(),
            stream_bytes,
            stream_bytes_received,
            stream_bytes_sent,
            protocol_errors: Family::default(),
            signed_records: Family::default(),
            ping_rtt: latency_histogram(),
            peerstore_peers: Gauge::default(),
            peerstore_evictions: Counter::default(),
            kad_inbound: Family::default(),
            kad_outbound: Family::default(),
            kad_table_peers: Gauge::default(),
            kad_table_refusals: Family::default(),
            kad_records: Gauge::default(),
            kad_provider_records: Gauge::default(),
            kad_network_size: Gauge::default(),
            kad_private_addrs_dropped: Counter::default(),
            kad_query_duration: Family::new_with_constructor(query_duration_histogram),
            kad_query_requests: Family::new_with_constructor(query_count_histogram),
            kad_query_success: Family::new_with_constructor(query_count_histogram),
            kad_query_failure: Family::new_with_constructor(query_count_histogram),
            holepunch_outcomes: Family::default(),
            holepunch_addresses: Family::default(),
            autonat_reachability: Gauge::default(),
            autonat_confidence: Gauge::default(),
            autonat_next_probe: Gauge::default(),
            autonat_v1_responses: Family::default(),
            autonat_v2_requests: Family::default(),
            autonat_v2_completed: Family::default(),
            reachability_addresses: Family::default(),
            dials_per_peer: Family::default(),
            dial_latency: Family::new_with_constructor(dial_histogram),
            dial_ranking_delay: dial_histogram(),
            identify: IdentifyMetrics::new(),
            host_addrs: HostAddrMetrics::new(),
            autorelay: AutorelayMetrics::new(),
            resources: crate::resource_metrics::Resources::new(registry),
            storage: crate::storage::Metrics::new(registry),
            task_failures: Family::default(),
        };
        crate::process_metrics::register(registry);
        // Hole punching as go-libp2p starts it: every side and outcome present at 0, so
        // a node that never punched shows zeros rather than no data.
        for side in ["initiator", "receiver"] {
            for outcome in ["success", "failed", "no_suitable_address"] {
                m.holepunch_outcomes
                    .get_or_create_owned(&HolepunchLabels { side, outcome });
            }
            for transport in ["tcp", "quic-v1"] {
                for outcome in ["success", "failed"] {
                    m.holepunch_addresses
                        .get_or_create_owned(&HolepunchAddrLabels {
                            side,
                            transport,
                            outcome,
                        });
                }
            }
        }
        m.identify.register(registry);
        m.host_addrs.register(registry);
        m.autorelay.register(registry);
        registry.register(
            "pylon_stream_bytes",
            "Bytes read from (received) and written to (sent) streams: protocol payload, \
             without the muxer's and the security layer's framing",
            m.stream_bytes.clone(),
        );
        registry.register(
            "pylon_task_failures",
            "Core tasks (listeners, periodic jobs) that ended or panicked before shutdown",
            m.task_failures.clone(),
        );
        let swarm = registry.sub_registry_with_prefix("libp2p_swarm");
        swarm.register(
            "connections_opened",
            "Connections opened",
            m.connections_opened.clone(),
        );
        swarm.register(
            "connections_closed",
            "Connections closed",
            m.connections_closed.clone(),
        );
        swarm.register(
            "connection_duration_seconds",
            "Duration of closed connections",
            m.connection_duration.clone(),
        );
        swarm.register(
            "handshake_latency_seconds",
            "Duration of the connection upgrade (security + muxer)",
            m.handshake_latency.clone(),
        );
        swarm.register(
            "dial_errors",
            "Outbound dials that failed, by error",
            m.dial_errors.clone(),
        );
        swarm.register(
            "handshake_errors",
            "Inbound connections that failed their upgrade, by error",
            m.handshake_errors.clone(),
        );
        swarm.register(
            "key_types",
            "Remote identity key types",
            m.key_types.clone(),
        );
        swarm.register("connections", "Connections open now", m.connections.clone());
        swarm.register(
            "streams_opened",
            "Streams opened, by negotiated protocol",
            m.streams_opened.clone(),
        );
        swarm.register("streams", "Streams open now", m.streams.clone());
        swarm.register(
            "dials_per_peer",
            "Connects that had to dial, by outcome and addresses dialed",
            m.dials_per_peer.clone(),
        );
        swarm.register(
            "dial_latency_seconds",
            "Time from a connect's first dial to its outcome",
            m.dial_latency.clone(),
        );
        swarm.register(
            "dial_ranking_delay_seconds",
            "How long the address that connected waited for its turn (happy eyeballs)",
            m.dial_ranking_delay.clone(),
        );
        let libp2p = registry.sub_registry_with_prefix("libp2p");
        libp2p.register(
            "protocol_errors",
            "Bad input or protocol violations by remote peers",
            m.protocol_errors.clone(),
        );
        libp2p.register(
            "identify_signed_records",
            "Signed peer records received in identify, by outcome",
            m.signed_records.clone(),
        );
        libp2p.register(
            "ping_rtt_seconds",
            "Round-trip time of our outbound pings",
            m.ping_rtt.clone(),
        );
        libp2p.register(
            "peerstore_peers",
            "Peers held in the peerstore",
            m.peerstore_peers.clone(),
        );
        libp2p.register(
            "peerstore_evictions",
            "Peers dropped from the full peerstore",
            m.peerstore_evictions.clone(),
        );
        let holepunch = registry.sub_registry_with_prefix("libp2p_holepunch");
        holepunch.register(
            "outcomes",
            "Hole punching exchanges (DCUtR), by side and outcome",
            m.holepunch_outcomes.clone(),
        );
        holepunch.register(
            "address_outcomes",
            "Addresses dialed while hole punching, by side, transport and outcome",
            m.holepunch_addresses.clone(),
        );
        let autonat = registry.sub_registry_with_prefix("libp2p_autonat");
        autonat.register(
            "reachability_status",
            "Our reachability from AutoNAT: 0 unknown, 1 public, 2 private",
            m.autonat_reachability.clone(),
        );
        autonat.register(
            "reachability_status_confidence",
            "Distinct servers that agree on our reachability",
            m.autonat_confidence.clone(),
        );
        autonat.register(
            "next_probe_timestamp",
            "Unix time of our next AutoNAT request",
            m.autonat_next_probe.clone(),
        );
        autonat.register(
            "received_dial_response",
            "AutoNAT v1 answers received, by status",
            m.autonat_v1_responses.clone(),
        );
        let autonat_v2 = registry.sub_registry_with_prefix("libp2p_autonatv2");
        autonat_v2.register(
            "client_requests",
            "AutoNAT v2 requests we made, by outcome",
            m.autonat_v2_requests.clone(),
        );
        autonat_v2.register(
            "client_requests_completed",
            "AutoNAT v2 requests answered, by the address tested and the verdict",
            m.autonat_v2_completed.clone(),
        );
        registry.register(
            "pylon_reachability_addresses",
            "Our addresses tested by AutoNAT, by verdict",
            m.reachability_addresses.clone(),
        );
        let kad = registry.sub_registry_with_prefix("libp2p_kad");
        kad.register(
            "inbound_requests",
            "Kademlia requests served, by message type and outcome",
            m.kad_inbound.clone(),
        );
        kad.register(
            "outbound_requests",
            "Kademlia requests sent, by message type and outcome",
            m.kad_outbound.clone(),
        );
        kad.register(
            "routing_table_peers",
            "Peers in the Kademlia routing table",
            m.kad_table_peers.clone(),
        );
        kad.register(
            "routing_table_refusals",
            "Peers kept out of the routing table, by reason",
            m.kad_table_refusals.clone(),
        );
        kad.register("records", "Value records held", m.kad_records.clone());
        kad.register(
            "provider_records",
            "Provider records held",
            m.kad_provider_records.clone(),
        );
        kad.register(
            "lookup_private_addresses_dropped",
            "Private and loopback addresses of closer peers and providers named by a peer at a public address, dropped",
            m.kad_private_addrs_dropped.clone(),
        );
        kad.register(
            "network_size_estimate",
            "Estimated number of DHT server peers, from lookup distances",
            m.kad_network_size.clone(),
        );
        kad.register_with_unit(
            "query_result_duration",
            "Duration of a Kademlia lookup",
            prometheus_client::registry::Unit::Seconds,
            m.kad_query_duration.clone(),
        );
        kad.register(
            "query_result_num_requests",
            "Requests a Kademlia lookup sent",
            m.kad_query_requests.clone(),
        );
        kad.register(
            "query_result_num_success",
            "Requests of a Kademlia lookup that were answered",
            m.kad_query_success.clone(),
        );
        kad.register(
            "query_result_num_failure",
            "Requests of a Kademlia lookup that failed or timed out",
            m.kad_query_failure.clone(),
        );
        Arc::new(m)
    }

    /// Metrics registered nowhere, for tests and embedders that do not export them.
    pub fn unregistered() -> Arc<Self> {
        Self::new(&mut Registry::default())
    }

    /// Counts a remote's bad input or protocol violation.
    pub fn protocol_error(&self, protocol: &'static str, reason: &'static str) {
        self.protocol_errors
            .get_or_create(&ErrorLabels { protocol, reason })
            .inc();
    }
}
