//! The DHT booster role: many DHT server identities ("heads") in one node, spread evenly
//! over the keyspace, answering from one shared record and provider store.
//!
//! - **Heads** (`heads.rs` starts and stops them): each a node of its own in this
//!   process — its own key, listen ports and routing table — sharing the main node's
//!   peerstore and DHT store ([`pylon_node::node::Node::start_sharing`],
//!   [`kad::KadStore::sharing`]). Keys come from the node key and the head's index
//!   ([`keys`]): deterministic, so heads come back with the same identities after a
//!   restart, and balanced, so any first n heads split the keyspace evenly. Every head
//!   keeps the node's other identities out of its routing table ([`kad::Kad::exclude`]):
//!   heads never refer lookups to each other in place of the network's peers.
//! - **Shared answers and prefetch**: a record or provider record stored through any head
//!   is answered by every head. A GET_PROVIDERS (or GET_VALUE) that misses on a head
//!   close to the key starts one DHT lookup for its providers (or record; concurrent
//!   misses coalesce; bounded in concurrency and per minute: [`prefetch`]); what it finds
//!   is kept in the shared store (providers for `cache_ttl`, a valid record as records
//!   are), so the next request is answered from it.
//! - **Visibility**: `pylon_booster_*` metrics (heads, requests answered per head from
//!   the shared store, cache hits, prefetch outcomes) and [`Status`] for the admin API.
//!
//! - **Measured, and sized by it**: every `crawl_interval` the role crawls the DHT
//!   (FIND_NODE over the first 16 buckets of every reachable peer, rate-bounded:
//!   [`crawl`]), estimates the network's size, the heads' keyspace coverage (the share of
//!   peers whose k closest include a head) and the churn ([`coverage`]); with `autoscale`
//!   the controller ([`controller`]) then adds heads toward `target_coverage` and stops
//!   those worth least, within `max_heads`, `max_connections` and `max_memory_mb`.
//!
//! Files: `heads.rs` the heads' lifecycle; `prefetch.rs` the prefetch's bookkeeping;
//! `keys.rs` the heads' identities; `crawl.rs` the crawl; `coverage.rs` what it
//! measures; `controller.rs` how the head count follows; `sizing.rs` the loop that runs
//! them.

pub mod controller;
pub mod coverage;
pub mod crawl;
mod heads;
pub mod keys;
pub mod prefetch;
mod sizing;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use multiaddr::Multiaddr;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use pylon_node::node::{self, Node};
use pylon_node::protocols::kad::{self, MessageType};
use pylon_node::PeerId;
use serde::{Deserialize, Serialize};

use self::prefetch::{Admit, Prefetch};
use crate::config::{self, serde_duration};
use crate::{Metrics, Role};

/// Settings of the role: the section `[roles.booster]`, every key optional (its default
/// is [`Config::default`], documented in README.md and default.toml).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Heads started.
    pub heads: u32,
    /// The most heads this node may run; sizes the port range and the balance of the
    /// head keys (changing it changes the heads' identities).
    pub max_heads: u32,
    /// The listen addresses of each head, `{port}` standing for `port_base + index`
    /// (`port_base = 0`: every head takes ports the system picks).
    pub listen: Vec<String>,
    pub port_base: u16,
    /// The addresses each head announces, `{port}` as in `listen` (for a port mapping the
    /// node cannot see). Empty: the node's `identify.announce` with each address's port
    /// replaced by the head's own port of that transport.
    pub announce: Vec<String>,
    /// Prefetch providers (records) on a GET_PROVIDERS (GET_VALUE) miss on a head close
    /// to the key.
    pub prefetch: bool,
    /// Prefetch lookups running at once.
    pub prefetch_concurrency: usize,
    /// Prefetch lookups started per minute.
    pub prefetch_per_minute: u32,
    /// One prefetch lookup.
    #[serde(with = "serde_duration")]
    pub prefetch_timeout: Duration,
    /// How long prefetched provider records are kept (and a fetched key is not fetched
    /// again).
    #[serde(with = "serde_duration")]
    pub cache_ttl: Duration,
    /// Keys remembered as fetched (the bound of the prefetch's memory).
    pub max_cached_keys: usize,
    /// Let the controller add and stop heads toward `target_coverage`.
    pub autoscale: bool,
    /// The share of the network's peers whose k closest should include a head.
    pub target_coverage: f64,
    /// Never fewer heads (with `autoscale`).
    pub min_heads: u32,
    /// The first crawl, after the heads' tables filled; then one every `crawl_interval`.
    #[serde(with = "serde_duration")]
    pub crawl_delay: Duration,
    #[serde(with = "serde_duration")]
    pub crawl_interval: Duration,
    /// Crawl requests per second.
    pub crawl_per_second: u32,
    /// Peers one crawl learns of at most.
    pub crawl_max_peers: usize,
    /// Budget of the heads' connections together (0: none but `connections.max` of each).
    pub max_connections: usize,
    /// Budget of the heads' memory, in MiB (0: none), at an estimated 1 MiB a head.
    pub max_memory_mb: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heads: 8,
            max_heads: 64,
            listen: vec![
                "/ip4/0.0.0.0/tcp/{port}".into(),
                "/ip4/0.0.0.0/udp/{port}/quic-v1".into(),
            ],
            port_base: 4101,
            announce: Vec::new(),
            prefetch: true,
            prefetch_concurrency: 8,
            prefetch_per_minute: 120,
            prefetch_timeout: Duration::from_secs(30),
            cache_ttl: Duration::from_secs(30 * 60),
            max_cached_keys: 10_000,
            autoscale: true,
            target_coverage: 0.3,
            min_heads: 1,
            crawl_delay: sizing::FIRST_CRAWL,
            crawl_interval: Duration::from_secs(30 * 60),
            crawl_per_second: 20,
            crawl_max_peers: 20_000,
            max_connections: 0,
            max_memory_mb: 0,
        }
    }
}

/// Most heads a node may be configured to run.
pub const MAX_HEADS: u32 = 1024;

impl Config {
    /// Head `index`'s port (0: the system picks).
    fn port_of(&self, index: u32) -> u32 {
        if self.port_base == 0 {
            0
        } else {
            u32::from(self.port_base) + index
        }
    }

    /// Head `index`'s listen addresses.
    pub fn listen_of(&self, index: u32) -> Result<Vec<Multiaddr>, String> {
        fill(&self.listen, self.port_of(index))
    }

    /// Head `index`'s explicit `announce` addresses (none when `announce` is empty).
    pub fn announce_of(&self, index: u32) -> Result<Vec<Multiaddr>, String> {
        fill(&self.announce, self.port_of(index))
    }

    fn controller(&self) -> controller::Config {
        controller::Config {
            target_coverage: self.target_coverage,
            min_heads: self.min_heads as usize,
            ..controller::Config::default()
        }
    }

    fn limits(&self) -> prefetch::Limits {
        prefetch::Limits {
            max_concurrent: self.prefetch_concurrency,
            per_minute: self.prefetch_per_minute,
            remember: self.cache_ttl,
            max_remembered: self.max_cached_keys,
        }
    }
}

/// `templates` with `{port}` replaced by `port`, parsed.
fn fill(templates: &[String], port: u32) -> Result<Vec<Multiaddr>, String> {
    templates
        .iter()
        .map(|t| {
            t.replace("{port}", &port.to_string())
                .parse::<Multiaddr>()
                .map_err(|e| format!("{t}: {e}"))
        })
        .collect()
}

/// The node's `addrs` as a head listening on `head_listen` is reached: each address with
/// its TCP or UDP port replaced by the head's port of the same transport (the protocols
/// after the port alike: `/tcp/P`, `/tcp/P/ws`, `/udp/P/quic-v1` …). An address whose
/// transport the head does not listen on, or only on a port not yet known (0), is left
/// out; so is one without a port (a relayed address).
pub fn head_addrs(addrs: &[Multiaddr], head_listen: &[Multiaddr]) -> Vec<Multiaddr> {
    use multiaddr::Protocol;
    /// The port and what follows the host part: `(port, [tcp|udp, rest…])`.
    fn transport(addr: &Multiaddr) -> Option<(u16, Vec<String>)> {
        let mut port = None;
        let mut shape = Vec::new();
        for p in addr.iter() {
            match p {
                Protocol::Tcp(n) | Protocol::Udp(n) if port.is_none() => {
                    port = Some(n);
                    shape.push(p.tag().to_string());
                }
                Protocol::P2p(_) => {}
                _ if port.is_some() => shape.push(p.tag().to_string()),
                _ => {}
            }
        }
        port.map(|n| (n, shape))
    }
    let mut out: Vec<Multiaddr> = Vec::new();
    for addr in addrs {
        let Some((_, shape)) = transport(addr) else {
            continue;
        };
        if shape.iter().any(|t| t == "p2p-circuit") {
            continue;
        }
        let Some(port) = head_listen
            .iter()
            .filter_map(transport)
            .find(|(port, s)| *port != 0 && *s == shape)
            .map(|(port, _)| port)
        else {
            continue;
        };
        let mut replaced = false;
        let mapped: Multiaddr = addr
            .iter()
            .filter(|p| !matches!(p, Protocol::P2p(_)))
            .map(|p| match p {
                Protocol::Tcp(_) if !replaced => {
                    replaced = true;
                    Protocol::Tcp(port)
                }
                Protocol::Udp(_) if !replaced => {
                    replaced = true;
                    Protocol::Udp(port)
                }
                other => other,
            })
            .collect();
        if !out.contains(&mapped) {
            out.push(mapped);
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the booster role needs the Kademlia DHT")]
    NoKad,
}

/// One head as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HeadStatus {
    pub index: u32,
    pub peer_id: String,
    pub listen: Vec<String>,
    /// What it tells peers on the public internet about where to reach it (`announce`,
    /// or the node's verified addresses on its ports, or its public listen addresses).
    pub advertised: Vec<String>,
    pub connections: usize,
    pub table_size: usize,
    /// GET_PROVIDERS and GET_VALUE requests answered.
    pub gets: u64,
    /// ...with what was asked for, from the shared store.
    pub found: u64,
    /// ...of which the prefetch had put there.
    pub cache_hits: u64,
    /// Prefetch lookups this head's misses started.
    pub prefetches: u64,
    /// Stream payload bytes it sent (its answers, mostly).
    pub bytes_sent: u64,
}

/// What the last crawl measured.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Peers that answered the crawl.
    pub network_size: usize,
    /// Share of them whose k closest include a head.
    pub coverage: f64,
    /// Heads running when it was measured.
    pub heads: usize,
    /// Per head (index): the coverage only it gives.
    pub marginal: Vec<(u32, f64)>,
    /// Share of the previous crawl's peers gone, per hour.
    pub churn_per_hour: Option<f64>,
    /// The crawl hit `crawl_max_peers`: the network is larger.
    pub truncated: bool,
    pub took_seconds: f64,
}

/// What the running role is doing.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub heads: Vec<HeadStatus>,
    pub max_heads: u32,
    pub autoscale: bool,
    pub target_coverage: f64,
    /// The last crawl's figures (none before the first).
    pub measured: Option<Measurement>,
    /// Process memory over the heads running: resident bytes per head, an upper bound
    /// of a head's cost (the main node's share included).
    pub resident_bytes_per_head: Option<u64>,
    /// Answered from the shared store / all GET requests, over every head.
    pub found_share: Option<f64>,
    /// Cache hits / GET requests answered with what was asked for.
    pub cache_hit_share: Option<f64>,
    pub prefetch_running: usize,
    pub prefetch_keys_remembered: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GetLabels {
    kind: &'static str,
    /// `found` (from the shared store), `cached` (found, put there by the prefetch),
    /// `missed`.
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

struct BoosterMetrics {
    heads: Gauge,
    gets: Family<GetLabels, Counter>,
    prefetch: Family<OutcomeLabels, Counter>,
    prefetch_results: Family<OutcomeLabels, Counter>,
    prefetch_running: Gauge,
    head_failures: Counter,
    decisions: Family<OutcomeLabels, Counter>,
    crawl_requests: Counter,
    network_size: Gauge,
    coverage: Gauge<f64, AtomicU64>,
    churn: Gauge<f64, AtomicU64>,
}

impl BoosterMetrics {
    fn register(metrics: &mut Metrics<'_>) -> Self {
        let m = BoosterMetrics {
            heads: Gauge::default(),
            gets: Family::default(),
            prefetch: Family::default(),
            prefetch_results: Family::default(),
            prefetch_running: Gauge::default(),
            head_failures: Counter::default(),
            decisions: Family::default(),
            crawl_requests: Counter::default(),
            network_size: Gauge::default(),
            coverage: Gauge::default(),
            churn: Gauge::default(),
        };
        let r = metrics.own();
        r.register("heads", "Heads running", m.heads.clone());
        r.register(
            "gets",
            "GET_PROVIDERS and GET_VALUE requests answered by the heads, by kind and result (found in the shared store, cached by the prefetch, missed)",
            m.gets.clone(),
        );
        r.register(
            "prefetch",
            "Misses on a head close to the key, by what the prefetch did (started, coalesced, recent, busy, over_budget)",
            m.prefetch.clone(),
        );
        r.register(
            "prefetch_results",
            "Prefetch lookups ended, by result (found, empty, failed, timeout, invalid)",
            m.prefetch_results.clone(),
        );
        r.register(
            "prefetch_running",
            "Prefetch lookups running now",
            m.prefetch_running.clone(),
        );
        r.register(
            "head_failures",
            "Heads that failed to start or whose core task died",
            m.head_failures.clone(),
        );
        r.register(
            "decisions",
            "Sizing decisions after each crawl, by reason (below_target, above_target, budget, low_value, hold)",
            m.decisions.clone(),
        );
        r.register(
            "crawl_requests",
            "FIND_NODE requests the crawls made",
            m.crawl_requests.clone(),
        );
        r.register(
            "network_size",
            "DHT peers that answered the last crawl",
            m.network_size.clone(),
        );
        r.register(
            "coverage",
            "Share of the last crawl's peers whose k closest include a head",
            m.coverage.clone(),
        );
        r.register(
            "churn_per_hour",
            "Share of the previous crawl's peers gone by the last one, per hour",
            m.churn.clone(),
        );
        m
    }
}

/// Counts of one head.
#[derive(Debug, Default)]
struct Figures {
    gets: AtomicU64,
    found: AtomicU64,
    cache_hits: AtomicU64,
    prefetches: AtomicU64,
}

/// A running head.
struct Head {
    node: Node,
    figures: Arc<Figures>,
}

/// The booster on one node.
pub struct Booster {
    node: Node,
    config: Config,
    depth: u8,
    heads: Mutex<BTreeMap<u32, Head>>,
    /// Every DHT identity of this process: the node's and its heads'.
    siblings: Arc<RwLock<HashSet<PeerId>>>,
    prefetch: Mutex<Prefetch>,
    controller: Mutex<controller::Controller>,
    measured: Mutex<Option<Measurement>>,
    /// The last crawl's responsive peers and when (since `started`), for the churn.
    last_crawl: Mutex<Option<(Vec<PeerId>, Duration)>>,
    started: Instant,
    metrics: BoosterMetrics,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Booster {
    /// Starts the role: the heads come up in the background (see [`Booster::heads`]).
    pub fn start_on(
        node: &Node,
        config: Config,
        metrics: &mut Metrics<'_>,
    ) -> Result<Arc<Self>, Error> {
        let Some(kad) = &node.kad else {
            return Err(Error::NoKad);
        };
        let siblings = Arc::new(RwLock::new(HashSet::from([node.peer_id()])));
        let booster = Arc::new(Booster {
            node: node.clone(),
            depth: keys::depth_for(config.max_heads),
            heads: Mutex::new(BTreeMap::new()),
            siblings,
            prefetch: Mutex::new(Prefetch::new(config.limits())),
            controller: Mutex::new(controller::Controller::new(config.controller())),
            measured: Mutex::new(None),
            last_crawl: Mutex::new(None),
            started: Instant::now(),
            metrics: BoosterMetrics::register(metrics),
            config,
        });
        kad.exclude(booster.sibling_filter());
        let weak = Arc::downgrade(&booster);
        let initial = booster.config.heads;
        node.host.spawn(async move {
            for index in 0..initial {
                let Some(b) = weak.upgrade() else { return };
                b.add_head(index).await;
            }
        });
        node.host.spawn(booster.clone().size_forever());
        // The heads stop with the node, before its database closes (this task holds the
        // role until then).
        let b = booster.clone();
        node.host
            .spawn_at_shutdown(async move { b.stop_all().await });
        Ok(booster)
    }

    /// The nodes of the heads running now, by index.
    pub fn heads(&self) -> Vec<(u32, Node)> {
        lock(&self.heads)
            .iter()
            .map(|(i, h)| (*i, h.node.clone()))
            .collect()
    }

    /// The PeerIds head `index` would have (whether it runs or not).
    pub fn head_peer_id(&self, index: u32) -> PeerId {
        keys::head_keypair(self.node.host.keypair(), index, self.depth)
            .public()
            .to_peer_id()
    }

    fn sibling_filter(&self) -> kad::PeerFilter {
        let siblings = self.siblings.clone();
        Arc::new(move |peer: &PeerId| {
            siblings
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(peer)
        })
    }

    /// A GET answered by head `index`.
    fn on_get(self: &Arc<Self>, index: u32, head_kad: &Weak<kad::Kad>, get: kad::Get) {
        // A head's own lookups reach its siblings: not the network's requests.
        if self
            .siblings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&get.from)
        {
            return;
        }
        let figures = lock(&self.heads).get(&index).map(|h| h.figures.clone());
        let now = Instant::now();
        let kind = get.kind.label();
        let cached =
            get.found && lock(&self.prefetch).was_fetched(&prefetch_slot(get.kind, &get.key), now);
        let result = match (get.found, cached) {
            (true, true) => "cached",
            (true, false) => "found",
            (false, _) => "missed",
        };
        self.metrics
            .gets
            .get_or_create(&GetLabels { kind, result })
            .inc();
        if let Some(f) = &figures {
            f.gets.fetch_add(1, Ordering::Relaxed);
            if get.found {
                f.found.fetch_add(1, Ordering::Relaxed);
            }
            if cached {
                f.cache_hits.fetch_add(1, Ordering::Relaxed);
            }
        }
        if get.found || !self.config.prefetch {
            return;
        }
        let Some(head_kad) = head_kad.upgrade() else {
            return;
        };
        if !head_kad.is_close_to(&get.key, head_kad.config().table.k) {
            return;
        }
        // Providers and records of one key are fetched apart.
        let slot = prefetch_slot(get.kind, &get.key);
        let admit = lock(&self.prefetch).admit(&slot, now);
        self.metrics
            .prefetch
            .get_or_create(&OutcomeLabels {
                outcome: admit.label(),
            })
            .inc();
        if admit != Admit::Start {
            return;
        }
        if let Some(f) = &figures {
            f.prefetches.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics.prefetch_running.inc();
        let me = self.clone();
        self.node.host.spawn(async move {
            let result = match get.kind {
                MessageType::GetValue => me.fetch_value(&head_kad, &get.key).await,
                _ => me.fetch_providers(&head_kad, &get.key).await,
            };
            lock(&me.prefetch).finish(&slot, Instant::now());
            me.metrics.prefetch_running.dec();
            me.metrics
                .prefetch_results
                .get_or_create(&OutcomeLabels { outcome: result })
                .inc();
        });
    }

    /// One prefetch: the providers of `key` found through `kad`, cached in the shared
    /// store for `cache_ttl`; the result's label.
    async fn fetch_providers(&self, kad: &kad::Kad, key: &[u8]) -> &'static str {
        let want = kad.config().table.k;
        let found = match tokio::time::timeout(
            self.config.prefetch_timeout,
            kad.providers(key, want),
        )
        .await
        {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::debug!("booster prefetch: {e}");
                return "failed";
            }
            Err(_) => return "timeout",
        };
        let mut stored = 0;
        for f in &found {
            if f.addrs.is_empty() {
                continue;
            }
            let put = kad.store().add_provider_for(
                key,
                f.peer,
                &f.addrs,
                now_ms(),
                self.config.cache_ttl,
            );
            match put.await {
                Ok(()) => stored += 1,
                Err(e) => tracing::debug!("booster prefetch: caching a provider: {e}"),
            }
        }
        if stored > 0 {
            "found"
        } else {
            "empty"
        }
    }

    /// One prefetch of a record: the best valid value of `key` found through `kad`, kept
    /// in the shared store (records carry their own validity: a `/pk/` key, an IPNS
    /// record's EOL); the result's label.
    async fn fetch_value(&self, kad: &kad::Kad, key: &[u8]) -> &'static str {
        let value =
            match tokio::time::timeout(self.config.prefetch_timeout, kad.get_value(key)).await {
                Ok(Ok(Some(value))) => value,
                Ok(Ok(None)) => return "empty",
                Ok(Err(e)) => {
                    tracing::debug!("booster prefetch: {e}");
                    return "failed";
                }
                Err(_) => return "timeout",
            };
        let now = now_ms();
        if kad.config().validators.validate(key, &value, now).is_err() {
            return "invalid";
        }
        match kad.store().put(key, &value, now).await {
            Ok(_) => "found",
            Err(e) => {
                tracing::debug!("booster prefetch: caching a record: {e}");
                "failed"
            }
        }
    }

    fn status_now(&self) -> Status {
        let heads = lock(&self.heads);
        let list: Vec<HeadStatus> = heads
            .iter()
            .map(|(index, h)| HeadStatus {
                index: *index,
                peer_id: h.node.peer_id().to_string(),
                listen: h
                    .node
                    .host
                    .listen_addrs()
                    .iter()
                    .map(|a| a.to_string())
                    .collect(),
                advertised: h
                    .node
                    .identify
                    .advertised_to_public()
                    .iter()
                    .map(|a| a.to_string())
                    .collect(),
                connections: h.node.host.connections().len(),
                table_size: h.node.kad.as_ref().map_or(0, |k| k.table_len()),
                gets: h.figures.gets.load(Ordering::Relaxed),
                found: h.figures.found.load(Ordering::Relaxed),
                cache_hits: h.figures.cache_hits.load(Ordering::Relaxed),
                prefetches: h.figures.prefetches.load(Ordering::Relaxed),
                bytes_sent: h.node.host.metrics().stream_bytes_sent.get(),
            })
            .collect();
        let gets: u64 = list.iter().map(|h| h.gets).sum();
        let found: u64 = list.iter().map(|h| h.found).sum();
        let hits: u64 = list.iter().map(|h| h.cache_hits).sum();
        let share = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let prefetch = lock(&self.prefetch);
        let resident = pylon_node::process_metrics::Sample::read(
            std::path::Path::new("/proc/self"),
            std::path::Path::new("/proc/stat"),
        )
        .resident_bytes;
        Status {
            resident_bytes_per_head: resident
                .filter(|_| !list.is_empty())
                .map(|r| r / list.len() as u64),
            heads: list,
            max_heads: self.config.max_heads,
            autoscale: self.config.autoscale,
            target_coverage: self.config.target_coverage,
            measured: lock(&self.measured).clone(),
            found_share: share(found, gets),
            cache_hit_share: share(hits, found),
            prefetch_running: prefetch.running(),
            prefetch_keys_remembered: prefetch.remembered(),
        }
    }
}

/// The prefetch's key for a request: its kind, then the key.
fn prefetch_slot(kind: MessageType, key: &[u8]) -> Vec<u8> {
    let mut slot = Vec::with_capacity(key.len() + 1);
    slot.push(u8::from(kind == MessageType::GetValue));
    slot.extend_from_slice(key);
    slot
}

impl Role for Booster {
    const NAME: &'static str = "booster";
    type Config = Config;
    type Status = Status;
    type Error = Error;

    fn check(c: &Config) -> Result<(), config::Error> {
        let key = |k: &str| format!("roles.booster.{k}");
        if !(1..=MAX_HEADS).contains(&c.max_heads) {
            return Err(config::bad(
                &key("max_heads"),
                &c.max_heads.to_string(),
                &format!("must be between 1 and {MAX_HEADS}"),
            ));
        }
        if c.heads > c.max_heads {
            return Err(config::bad(
                &key("heads"),
                &c.heads.to_string(),
                &format!("must not exceed roles.booster.max_heads ({})", c.max_heads),
            ));
        }
        if c.port_base != 0 && u32::from(c.port_base) + c.max_heads > 65_536 {
            return Err(config::bad(
                &key("port_base"),
                &c.port_base.to_string(),
                "port_base + max_heads must stay within 65535",
            ));
        }
        if c.listen.is_empty() || c.listen.iter().any(|t| !t.contains("{port}")) {
            return Err(config::bad(
                &key("listen"),
                &format!("{:?}", c.listen),
                "each address must contain {port}, e.g. \"/ip4/0.0.0.0/tcp/{port}\"",
            ));
        }
        if let Err(e) = c.listen_of(0) {
            return Err(config::bad(&key("listen"), &format!("{:?}", c.listen), &e));
        }
        if let Err(e) = c.announce_of(0) {
            return Err(config::bad(
                &key("announce"),
                &format!("{:?}", c.announce),
                &e,
            ));
        }
        if c.prefetch_concurrency == 0 || c.prefetch_concurrency > 256 {
            return Err(config::bad(
                &key("prefetch_concurrency"),
                &c.prefetch_concurrency.to_string(),
                "must be between 1 and 256",
            ));
        }
        if c.max_cached_keys == 0 || c.max_cached_keys > 1_000_000 {
            return Err(config::bad(
                &key("max_cached_keys"),
                &c.max_cached_keys.to_string(),
                "must be between 1 and 1000000",
            ));
        }
        if !(c.target_coverage > 0.0 && c.target_coverage < 1.0) {
            return Err(config::bad(
                &key("target_coverage"),
                &c.target_coverage.to_string(),
                "must be above 0 and below 1",
            ));
        }
        if c.min_heads > c.max_heads {
            return Err(config::bad(
                &key("min_heads"),
                &c.min_heads.to_string(),
                &format!("must not exceed roles.booster.max_heads ({})", c.max_heads),
            ));
        }
        if c.crawl_per_second == 0 || c.crawl_per_second > 1000 {
            return Err(config::bad(
                &key("crawl_per_second"),
                &c.crawl_per_second.to_string(),
                "must be between 1 and 1000",
            ));
        }
        if c.crawl_max_peers == 0 || c.crawl_max_peers > 1_000_000 {
            return Err(config::bad(
                &key("crawl_max_peers"),
                &c.crawl_max_peers.to_string(),
                "must be between 1 and 1000000",
            ));
        }
        for (k, d) in [
            ("prefetch_timeout", c.prefetch_timeout),
            ("cache_ttl", c.cache_ttl),
            ("crawl_delay", c.crawl_delay),
            ("crawl_interval", c.crawl_interval),
        ] {
            if d < Duration::from_secs(1) {
                return Err(config::bad(
                    &key(k),
                    &config::format_duration(d),
                    "must be at least 1s",
                ));
            }
        }
        Ok(())
    }

    fn require(_config: &Config, node: &mut node::Config) -> Result<(), config::Error> {
        // The node's own identity serves the DHT too, with a saved table.
        let kad = node.kad.get_or_insert_with(kad::Config::default);
        kad.server = true;
        kad.auto_server = false;
        kad.persist_table = true;
        Ok(())
    }

    fn start(node: &Node, config: Config, metrics: &mut Metrics<'_>) -> Result<Arc<Self>, Error> {
        Booster::start_on(node, config, metrics)
    }

    fn status(&self) -> Status {
        self.status_now()
    }

    fn protocols(&self) -> Vec<String> {
        self.node
            .kad
            .as_ref()
            .map(|k| vec![k.config().protocol.clone()])
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn head_addrs_take_the_heads_port_of_each_transport() {
        let listen = [
            m("/ip4/0.0.0.0/tcp/4103"),
            m("/ip4/0.0.0.0/udp/4103/quic-v1"),
            m("/ip6/::/tcp/4203/ws"),
        ];
        let node = [
            m("/ip4/203.0.113.7/tcp/4001"),
            m("/dns4/boot.example.com/udp/4001/quic-v1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"),
            m("/ip6/2001:db8::1/tcp/4001/ws"),
            m("/ip6/2001:db8::1/tcp/4001/tls/ws"),
            m("/ip4/203.0.113.7/udp/4001/webrtc-direct"),
            m("/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"),
        ];
        assert_eq!(
            head_addrs(&node, &listen),
            [
                m("/ip4/203.0.113.7/tcp/4103"),
                m("/dns4/boot.example.com/udp/4103/quic-v1"),
                m("/ip6/2001:db8::1/tcp/4203/ws"),
            ],
            "the node's PeerId dropped; transports the head lacks and relayed addresses left out"
        );
        // Ports not known yet: nothing.
        assert!(head_addrs(&node, &[m("/ip4/0.0.0.0/tcp/0")]).is_empty());
    }

    #[test]
    fn announce_templates_take_the_heads_port() {
        let c = Config {
            port_base: 4101,
            announce: vec!["/ip4/198.51.100.9/tcp/{port}".into()],
            ..Config::default()
        };
        assert_eq!(c.announce_of(3).unwrap(), [m("/ip4/198.51.100.9/tcp/4104")]);
        assert!(Config::default().announce_of(3).unwrap().is_empty());
        let bad = Config {
            announce: vec!["/ip4/nonsense/tcp/{port}".into()],
            ..Config::default()
        };
        let e = Booster::check(&bad).unwrap_err().to_string();
        assert!(e.contains("roles.booster.announce"), "{e}");
    }
}
