//! Prometheus metrics of the stack, named after go-libp2p's families so its Grafana
//! dashboards read them (`libp2p_swarm_*`). No label ever carries a PeerId or an IP, and
//! protocol labels only take values we registered ourselves, so cardinality is bounded.

use std::sync::Arc;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
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

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.5, 2.0, 20))
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
    /// The node's database (`pylon_storage_*`).
    pub storage: Arc<crate::storage::Metrics>,
    /// Supervised tasks that ended before shutdown (`pylon_task_failures_total`).
    pub task_failures: Family<TaskLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Arc<Self> {
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
            holepunch_outcomes: Family::default(),
            holepunch_addresses: Family::default(),
            autonat_reachability: Gauge::default(),
            autonat_confidence: Gauge::default(),
            autonat_next_probe: Gauge::default(),
            autonat_v1_responses: Family::default(),
            autonat_v2_requests: Family::default(),
            autonat_v2_completed: Family::default(),
            reachability_addresses: Family::default(),
            storage: crate::storage::Metrics::new(registry),
            task_failures: Family::default(),
        };
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
            "network_size_estimate",
            "Estimated number of DHT server peers, from lookup distances",
            m.kad_network_size.clone(),
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
