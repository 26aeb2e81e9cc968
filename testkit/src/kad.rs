//! A Kademlia network of simulated nodes built from pylon-node's pure cores: each node
//! has a [`RoutingTable`], a memory [`KadStore`], answers with [`server::Server::answer`]
//! and looks up with [`lookup::Lookup`]; messages travel over [`Links`] on virtual time.
//! Nodes join, leave and refresh their tables; measured lookups are checked against the
//! true k closest live nodes, computed by brute force.
//!
//! The driver here models what [`Kad`](pylon_node::protocols::kad::Kad) does around the
//! cores, in the same order:
//! - identify on a new connection puts each side in the other's table (`consider`);
//!   connections persist, so this happens once per pair; a full bucket checks its least
//!   recently seen peer with a FIND_NODE and replaces it only if that fails;
//! - a lookup answer marks the peer seen; a refused connection takes the peer out of the
//!   table; a timeout does not (as `Kad::lookup` with its request timeout equal to the
//!   dial timeout);
//! - the refresh runs once a node joined and then every `refresh_interval`: a self
//!   lookup, lookups of random PeerIds in non-empty buckets (farthest first), then
//!   liveness checks of peers not seen for `liveness_interval`.
//!
//! A booster (optional, [`Booster`]) adds heads: DHT identities of one host that answer
//! from one shared store ([`KadStore::sharing`]: a provider record stored at any head is
//! answered by every head), keep each other out of their tables (a head never refers a
//! lookup to a sibling), never churn, and — on one host — share one IP address, so the
//! tables' IP-diversity limits count them as one group. [`Sim`] runs a network step by
//! step, for a controller that adds and removes heads as it goes.
//!
//! Simplifications: a request is one round trip (no dial or handshake time), a gone node
//! either refuses at once or drops everything, a node never comes back under the same
//! PeerId, and every node is a server with one public address.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use multiaddr::Multiaddr;
use pylon_node::identity::Keypair;
use pylon_node::peerstore::{MemoryStore, Store};
use pylon_node::protocols::kad::{
    self, lookup, proto, server, table, KadStore, Key, MessageType, RoutingTable,
};
use pylon_node::PeerId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::links::{self, Links};
use crate::sim::{self, Scheduler};

/// Full-bucket checks running at once per node (as `Kad`).
const MAX_CHECKS: usize = 8;

/// One simulation.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// Nodes at the start; churn keeps the number (one leaves, one joins).
    pub nodes: usize,
    /// The nodes' Kad settings: k, α, timeouts, table limits, refresh and liveness
    /// intervals, as a Pylon node takes them.
    pub kad: kad::Config,
    pub links: links::Config,
    /// Share of gone nodes whose address refuses connections at once; requests to the
    /// others time out.
    pub refuse_when_gone: f64,
    /// Churn: one node leaves and one joins every `churn_every`, from the start to the
    /// end of the run.
    pub churn_every: Duration,
    /// Churn before measuring.
    pub churn_before: Duration,
    /// Lookups of the self key and of random PeerIds in this many non-empty buckets per
    /// refresh (Kad: 16).
    pub random_walks: usize,
    /// Measured FIND_NODE lookups of random keys from random live nodes, one every
    /// `measure_every`, while churn goes on.
    pub measured_lookups: usize,
    pub measure_every: Duration,
    /// `/pk/` records put by random nodes after the measured lookups, then looked up
    /// (GET_VALUE) by other random nodes a minute later.
    pub records: usize,
    /// Provider records: after the records, this many random nodes each provide a random
    /// key (FIND_NODE, then ADD_PROVIDER to the k closest); a minute later other random
    /// nodes look each up with GET_PROVIDERS, stopping at the first provider.
    pub providers: usize,
    /// Heads of a booster, or none.
    pub booster: Option<Booster>,
}

/// A booster's heads in the simulation.
#[derive(Debug, Clone)]
pub struct Booster {
    /// The heads' identities by index (`identities[i]` is head i); a head can only be
    /// added while its identity is listed.
    pub identities: Vec<PeerId>,
    /// Heads 0..`heads` run from the start, with warm tables like the other nodes.
    pub heads: usize,
    /// All heads on one IP address (one host), as a booster runs: the tables' diversity
    /// limits (per IPv4 /16: 2 per bucket, 8 per table) count them as one group. `false`
    /// gives each head an address of its own (an upper bound on what heads can do).
    pub one_host: bool,
}

impl Config {
    /// A 1,000-node network with Pylon's default Kad settings (k = 20, α = 10, 10 s
    /// timeouts, 10 min refresh and liveness intervals) on 5–150 ms links that lose 1 % of
    /// messages. It starts warm (tables as after a long run), then churns: one node leaves
    /// and one joins every 5 s (12 % of the nodes replaced per 10 min, half of the gone
    /// ones refusing connections, half silent). After 10 min — every node has refreshed
    /// once — 300 lookups of random keys are measured, one a second, while churn goes on;
    /// then 20 records are put and fetched.
    ///
    /// The refresh is the self lookup and the liveness checks, without random walks
    /// (`random_walks: 0`): each walk is one more lookup per node per round, which a
    /// debug build pays for in seconds, and with a warm start they barely move the
    /// results (compare with `random_walks: 16` on a smaller network).
    pub fn thousand_nodes(seed: u64) -> Config {
        Config {
            seed,
            nodes: 1000,
            kad: kad::Config {
                server: true,
                ..kad::Config::default()
            },
            links: links::Config::default(),
            refuse_when_gone: 0.5,
            churn_every: Duration::from_secs(5),
            churn_before: Duration::from_secs(600),
            random_walks: 0,
            measured_lookups: 300,
            measure_every: Duration::from_secs(1),
            records: 20,
            providers: 0,
            booster: None,
        }
    }
}

/// What a run measured. Two runs of one config give equal reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub seed: u64,
    pub k: usize,
    /// `overlap[i]`: measured lookups whose result held exactly `i` of the true k closest
    /// live nodes.
    pub overlap: Vec<usize>,
    /// Measured lookups that returned fewer than k peers.
    pub short_results: usize,
    /// Mean peers asked and failed per measured lookup, and the mean and worst virtual
    /// time one took.
    pub mean_queried: f64,
    pub mean_failed: f64,
    pub mean_lookup_time: Duration,
    pub max_lookup_time: Duration,
    /// Measured lookups that ran until the query timeout (a request to one of the
    /// closest peers still unanswered).
    pub ended_by_timeout: usize,
    /// Records put, acknowledged copies in total, and records a GET_VALUE found.
    pub records_put: usize,
    pub record_acks: usize,
    pub records_found: usize,
    /// Hops of the measured lookups: how many answers away from the seeds (a seed is 1
    /// hop) the lookup learned the last of the k closest it returned; mean.
    pub mean_hops: f64,
    /// Provider records put (with `providers`), copies stored, and GET_PROVIDERS lookups
    /// that found the provider; for those lookups, the mean peers asked, hops to the
    /// first answer with a provider (found ones only), and virtual time.
    pub providers_put: usize,
    pub provider_copies: usize,
    pub providers_found: usize,
    pub mean_provider_queried: f64,
    pub mean_provider_hops: f64,
    pub mean_provider_time: Duration,
    /// Heads running at the end, requests they answered, and answers with records or
    /// providers from the shared store.
    pub heads: usize,
    pub head_requests: u64,
    pub head_answers_from_store: u64,
    pub joined: usize,
    pub left: usize,
    pub live_at_end: usize,
    /// Routing tables of live nodes at the end: mean size, and the share of their entries
    /// that point at gone nodes.
    pub mean_table_size: f64,
    pub dead_entry_share: f64,
    pub lookups_run: usize,
    pub requests: u64,
    pub lost: u64,
    pub refused: u64,
    /// Requests a server refused (stream reset): none expected.
    pub resets: u64,
    pub timeouts: u64,
    pub virtual_time: Duration,
    /// A hash of every measured result (peers, in order) and every counter above.
    pub digest: u64,
}

impl Report {
    /// Measured lookups.
    pub fn measured(&self) -> usize {
        self.overlap.iter().sum()
    }

    /// Share of measured lookups that found at least `n` of the true k closest.
    pub fn share_at_least(&self, n: usize) -> f64 {
        let hits: usize = self.overlap.iter().skip(n).sum();
        hits as f64 / self.measured().max(1) as f64
    }

    pub fn mean_overlap(&self) -> f64 {
        let total: usize = self.overlap.iter().enumerate().map(|(i, n)| i * n).sum();
        total as f64 / self.measured().max(1) as f64
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let k = self.k;
        writeln!(
            f,
            "seed {}: {} measured lookups, overlap with the true {k} closest:",
            self.seed,
            self.measured()
        )?;
        for (i, n) in self.overlap.iter().enumerate().rev() {
            if *n > 0 {
                writeln!(f, "  {i:>2}/{k}: {n}")?;
            }
        }
        writeln!(
            f,
            "  >= k: {:.1} %, >= k-1: {:.1} %, >= k-2: {:.1} %, mean {:.2}, short results {}",
            100.0 * self.share_at_least(k),
            100.0 * self.share_at_least(k.saturating_sub(1)),
            100.0 * self.share_at_least(k.saturating_sub(2)),
            self.mean_overlap(),
            self.short_results
        )?;
        writeln!(
            f,
            "  per lookup: {:.1} asked, {:.2} failed, {:?} mean, {:?} worst, {} ended by the query timeout",
            self.mean_queried,
            self.mean_failed,
            self.mean_lookup_time,
            self.max_lookup_time,
            self.ended_by_timeout
        )?;
        writeln!(
            f,
            "records: {} put, {} copies acknowledged, {} found by GET_VALUE; {:.2} hops per lookup",
            self.records_put, self.record_acks, self.records_found, self.mean_hops
        )?;
        if self.providers_put > 0 {
            writeln!(
                f,
                "providers: {} put, {} copies, {} found by GET_PROVIDERS; {:.1} asked, {:.2} hops, {:?} per lookup",
                self.providers_put,
                self.provider_copies,
                self.providers_found,
                self.mean_provider_queried,
                self.mean_provider_hops,
                self.mean_provider_time
            )?;
        }
        if self.heads > 0 || self.head_requests > 0 {
            writeln!(
                f,
                "booster: {} heads, {} requests answered, {} from the shared store",
                self.heads, self.head_requests, self.head_answers_from_store
            )?;
        }
        writeln!(
            f,
            "churn: {} joined, {} left, {} live at the end; tables: {:.1} peers, {:.1} % gone",
            self.joined,
            self.left,
            self.live_at_end,
            self.mean_table_size,
            100.0 * self.dead_entry_share
        )?;
        write!(
            f,
            "traffic: {} lookups, {} requests, {} lost, {} refused, {} reset, {} timed out; {:?} simulated; digest {:016x}",
            self.lookups_run,
            self.requests,
            self.lost,
            self.refused,
            self.resets,
            self.timeouts,
            self.virtual_time,
            self.digest
        )
    }
}

/// Runs one simulation to its end.
pub fn run(config: Config) -> Report {
    let mut net = Network::new(config);
    net.run();
    net.report()
}

/// A network run step by step, on the schedule [`run`] follows (warm start, churn, the
/// measured lookups, records and providers of the config), for a driver that looks at
/// the live nodes and adds and removes booster heads between steps.
pub struct Sim {
    net: Network,
}

impl Sim {
    /// The network at time zero, warm, with the booster's first heads.
    pub fn new(config: Config) -> Sim {
        let mut net = Network::new(config);
        net.start();
        Sim { net }
    }

    /// Runs the network to the end of its schedule (see [`Config`]).
    pub fn run_to_end(&mut self) {
        let end = self.net.end;
        while let Some(event) = self.net.sched.next_until(end) {
            self.net.handle(event);
        }
    }

    /// Runs the network for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.net.sched.clock().elapsed() + d;
        while let Some(event) = self.net.sched.next_until(until) {
            self.net.handle(event);
        }
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.net.sched.clock().elapsed()
    }

    /// The keys of the live nodes other than heads: what a perfect crawl finds.
    pub fn live_keys(&self) -> Vec<Key> {
        self.net
            .nodes
            .iter()
            .filter(|n| n.live.is_some() && n.head.is_none())
            .map(|n| n.key)
            .collect()
    }

    /// The running heads: index, key and figures, by index.
    pub fn heads(&self) -> Vec<(u32, Key, HeadStats)> {
        self.net
            .heads
            .iter()
            .filter(|(_, &i)| self.net.is_live(i))
            .map(|(&h, &i)| {
                let stats = self.net.head_stats.get(&h).copied().unwrap_or_default();
                (h, self.net.nodes[i].key, stats)
            })
            .collect()
    }

    /// Starts head `index`: it joins through a random node and runs its first refresh
    /// (the self lookup that makes it known). `false` when it runs already or has no
    /// identity in the config.
    pub fn add_head(&mut self, index: u32) -> bool {
        let Some(node) = self.net.add_head_node(index) else {
            return false;
        };
        match self.net.pick_live(true, Some(node)) {
            Some(b) => {
                self.net.connect(node, b);
                self.net.start_refresh(node);
            }
            None => {
                if let Some(l) = self.net.live_mut(node) {
                    l.ready = true;
                }
            }
        }
        true
    }

    /// Stops head `index` (its port refuses connections from now on).
    pub fn remove_head(&mut self, index: u32) -> bool {
        let Some(node) = self.net.heads.remove(&index) else {
            return false;
        };
        let n = &mut self.net.nodes[node];
        n.live = None;
        n.refuses = true;
        self.net.lookups.retain(|_, a| a.node != node);
        true
    }

    /// Nodes (not heads) leave at random until `live` remain: the network shrinks.
    pub fn shrink_to(&mut self, live: usize) {
        let mut now_live = self.live_keys().len();
        while now_live > live && self.net.leave() {
            now_live -= 1;
        }
    }

    pub fn report(&self) -> Report {
        self.net.report()
    }
}

// ---- the model ---------------------------------------------------------------------

enum Event {
    Churn,
    Deliver { to: usize, msg: Box<Msg> },
    Timeout { node: usize, rid: u64 },
    Wake { lookup: u64 },
    Refresh { node: usize },
    Measure,
    PutRecords,
    GetRecords,
    PutProviders,
    GetProviders,
}

enum Msg {
    Request {
        from: usize,
        rid: u64,
        body: proto::Message,
    },
    Reply {
        from: usize,
        rid: u64,
        body: proto::Message,
    },
    /// The connection was refused: the node is gone.
    Refused { rid: u64 },
    /// The server reset the stream (it refused the request).
    Reset { rid: u64 },
}

/// What an outbound request was for.
enum Pending {
    Lookup {
        lookup: u64,
        peer: PeerId,
    },
    /// A full bucket's least recently seen peer, checked before `newcomer` may replace it.
    Check {
        oldest: PeerId,
        newcomer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    /// A refresh's liveness check.
    Liveness {
        peer: PeerId,
    },
    Put {
        record: usize,
    },
}

enum Purpose {
    Refresh,
    Measure {
        truth: Vec<PeerId>,
        started: Duration,
    },
    Put {
        record: usize,
    },
    Get {
        record: usize,
    },
    Provide {
        provider: usize,
    },
    GetProviders {
        provider: usize,
        started: Duration,
    },
}

struct Active {
    node: usize,
    kind: MessageType,
    key: Vec<u8>,
    core: lookup::Lookup,
    purpose: Purpose,
    wake: Option<Instant>,
    /// For measured lookups: how many answers away from the seeds each peer was learned
    /// (seeds: 1), and the hops of the first answer that held a provider.
    depths: Option<HashMap<PeerId, u32>>,
    provider_hops: Option<u32>,
}

/// A refresh in progress.
#[derive(Default)]
struct RefreshRun {
    /// Buckets still to walk (`None` until the self lookup is done).
    walks: Option<VecDeque<usize>>,
    checks: VecDeque<PeerId>,
    checks_in_flight: usize,
}

struct Live {
    table: RoutingTable,
    store: KadStore,
    pending: BTreeMap<u64, Pending>,
    /// Nodes we hold a connection to (identify ran on it).
    connected: HashSet<usize>,
    /// Full-bucket checks in progress, by the peer checked.
    checking: HashSet<PeerId>,
    refresh: Option<RefreshRun>,
    ready: bool,
}

struct SimNode {
    peer: PeerId,
    key: Key,
    addr: Multiaddr,
    live: Option<Box<Live>>,
    /// Once gone: does its address refuse connections (else it drops them)?
    refuses: bool,
    /// The booster head index, for a head.
    head: Option<u32>,
}

struct SimProvider {
    key: Vec<u8>,
    provider: usize,
    found: bool,
}

struct ProviderMeasured {
    found: bool,
    queried: usize,
    hops: Option<u32>,
    took: Duration,
}

/// What a head did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeadStats {
    pub index: u32,
    /// Requests it answered, and of those the ones with records or providers from the
    /// shared store.
    pub requests: u64,
    pub from_store: u64,
}

struct SimRecord {
    key: Vec<u8>,
    value: Vec<u8>,
    putter: usize,
    acks: usize,
    found: bool,
}

struct Measured {
    overlap: usize,
    hops: u32,
    closest: Vec<PeerId>,
    queried: usize,
    failed: usize,
    took: Duration,
}

/// What the server knows beyond its table: its own address. (No signed records, no
/// peerstore, and every peer is described as not connected: the connection type is not
/// modelled.)
struct SimPeers<'a> {
    own: &'a Multiaddr,
}

impl server::Peers for SimPeers<'_> {
    fn signed_addrs(&self, _peer: &PeerId) -> Option<Vec<Multiaddr>> {
        None
    }
    fn live_addrs(&self, _peer: &PeerId, _now_ms: u64) -> Vec<Multiaddr> {
        Vec::new()
    }
    fn signed_envelope(&self, _peer: &PeerId) -> Option<Vec<u8>> {
        None
    }
    fn is_connected(&self, _peer: &PeerId) -> bool {
        false
    }
    fn own_addrs_for(&self, _remote: &Multiaddr) -> Vec<Multiaddr> {
        vec![self.own.clone()]
    }
    fn own_envelope(&self) -> Option<Vec<u8>> {
        None
    }
}

#[derive(Default)]
struct Stats {
    joined: usize,
    left: usize,
    lookups: usize,
    requests: u64,
    lost: u64,
    refused: u64,
    resets: u64,
    timeouts: u64,
}

struct Network {
    config: Config,
    rng: StdRng,
    sched: Scheduler<Event>,
    links: Links,
    nodes: Vec<SimNode>,
    by_peer: HashMap<PeerId, usize>,
    lookups: BTreeMap<u64, Active>,
    next_id: u64,
    measures_left: usize,
    end: Duration,
    stats: Stats,
    measured: Vec<Measured>,
    records: Vec<SimRecord>,
    providers: Vec<SimProvider>,
    provider_measured: Vec<ProviderMeasured>,
    provider_copies: usize,
    /// The booster's store, which every head's store shares, once a head ran.
    booster_store: Option<KadStore>,
    /// The booster host's address (one host), and each head's node and figures.
    head_ip: Option<std::net::Ipv4Addr>,
    heads: BTreeMap<u32, usize>,
    head_stats: BTreeMap<u32, HeadStats>,
}

impl Network {
    fn new(config: Config) -> Network {
        Network {
            rng: sim::rng(config.seed),
            sched: Scheduler::new(),
            links: Links::new(config.links.clone()),
            nodes: Vec::new(),
            by_peer: HashMap::new(),
            lookups: BTreeMap::new(),
            next_id: 0,
            measures_left: config.measured_lookups,
            end: Duration::MAX,
            stats: Stats::default(),
            measured: Vec::new(),
            records: Vec::new(),
            providers: Vec::new(),
            provider_measured: Vec::new(),
            provider_copies: 0,
            booster_store: None,
            head_ip: None,
            heads: BTreeMap::new(),
            head_stats: BTreeMap::new(),
            config,
        }
    }

    fn k(&self) -> usize {
        self.config.kad.table.k
    }

    fn now_ms(&self) -> u64 {
        self.sched.clock().unix_ms()
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn run(&mut self) {
        self.start();
        while let Some(event) = self.sched.next_until(self.end) {
            self.handle(event);
        }
    }

    /// The warm start and the run's schedule: churn, measured lookups (none when
    /// `measured_lookups` is 0), records, providers; sets the end.
    fn start(&mut self) {
        let c = &self.config;
        let measure_from = c.churn_before;
        let measured = measure_from + c.measure_every * c.measured_lookups as u32;
        let put_at = measured + Duration::from_secs(30);
        let get_at = put_at + Duration::from_secs(60);
        let provide_at = get_at + Duration::from_secs(30);
        let providers = c.providers > 0;
        let measures = c.measured_lookups > 0;
        self.end = get_at + Duration::from_secs(60);
        if providers {
            self.end = provide_at + Duration::from_secs(120);
        }
        self.sched.after(c.churn_every, Event::Churn);
        if measures {
            self.sched.after(measure_from, Event::Measure);
        }
        self.warm_start();
        self.sched.after(put_at, Event::PutRecords);
        self.sched.after(get_at, Event::GetRecords);
        if providers {
            self.sched.after(provide_at, Event::PutProviders);
            self.sched
                .after(provide_at + Duration::from_secs(60), Event::GetProviders);
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Churn => {
                let _ = self.leave();
                self.join();
                self.sched.after(self.config.churn_every, Event::Churn);
            }
            Event::Deliver { to, msg } => self.deliver(to, *msg),
            Event::Timeout { node, rid } => {
                let Some(pending) = self.live_mut(node).and_then(|l| l.pending.remove(&rid)) else {
                    return;
                };
                self.stats.timeouts += 1;
                self.failed(node, pending, false);
            }
            Event::Wake { lookup } => {
                let now = self.sched.now();
                if let Some(a) = self.lookups.get_mut(&lookup) {
                    if a.wake.is_some_and(|w| w <= now) {
                        a.wake = None;
                    }
                    self.drive(lookup);
                }
            }
            Event::Refresh { node } => self.start_refresh(node),
            Event::Measure => {
                self.measure();
                self.measures_left = self.measures_left.saturating_sub(1);
                if self.measures_left > 0 {
                    self.sched.after(self.config.measure_every, Event::Measure);
                }
            }
            Event::PutRecords => {
                for _ in 0..self.config.records {
                    self.put_record();
                }
            }
            Event::GetRecords => {
                for r in 0..self.records.len() {
                    self.get_record(r);
                }
            }
            Event::PutProviders => {
                for _ in 0..self.config.providers {
                    self.put_provider();
                }
            }
            Event::GetProviders => {
                for p in 0..self.providers.len() {
                    self.get_providers(p);
                }
            }
        }
    }

    fn live_mut(&mut self, node: usize) -> Option<&mut Live> {
        self.nodes[node].live.as_deref_mut()
    }

    fn is_live(&self, node: usize) -> bool {
        self.nodes[node].live.is_some()
    }

    /// A random live node (that finished its first refresh, when `ready`), other than
    /// `not`.
    fn pick_live(&mut self, ready: bool, not: Option<usize>) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| Some(i) != not && self.nodes[i].head.is_none())
            .filter(|&i| {
                self.nodes[i]
                    .live
                    .as_ref()
                    .is_some_and(|l| l.ready || !ready)
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[self.rng.random_range(0..candidates.len())])
    }

    // ---- membership ------------------------------------------------------------------

    /// A new live node, with an empty table; returns its index.
    fn add_node(&mut self) -> usize {
        let peer = random_peer(&mut self.rng);
        let ip = self.random_public_ip();
        self.push_node(peer, ip, 4001, None)
    }

    /// A random public IPv4 address.
    fn random_public_ip(&mut self) -> std::net::Ipv4Addr {
        loop {
            let ip = std::net::Ipv4Addr::from(self.rng.random::<u32>());
            let a: Multiaddr = format!("/ip4/{ip}/tcp/4001")
                .parse()
                .unwrap_or_else(|_| Multiaddr::empty());
            if pylon_node::addresses::is_public(&a) {
                break ip;
            }
        }
    }

    fn push_node(
        &mut self,
        peer: PeerId,
        ip: std::net::Ipv4Addr,
        port: u16,
        head: Option<u32>,
    ) -> usize {
        let addr: Multiaddr = format!("/ip4/{ip}/tcp/{port}")
            .parse()
            .unwrap_or_else(|_| Multiaddr::empty());
        let index = self.links.add_node(&mut self.rng);
        let mem = || -> Arc<dyn Store> { Arc::new(MemoryStore::default()) };
        let store = match (head, &self.booster_store) {
            (Some(_), Some(shared)) => shared.sharing(mem()),
            _ => KadStore::open(
                mem(),
                mem(),
                mem(),
                self.config.kad.store.clone(),
                self.now_ms(),
            )
            .unwrap_or_else(|e| panic!("a memory store opens: {e}")),
        };
        if head.is_some() && self.booster_store.is_none() {
            self.booster_store = Some(store.sharing(mem()));
        }
        self.nodes.push(SimNode {
            peer,
            key: Key::from_peer(&peer),
            addr,
            live: Some(Box::new(Live {
                table: RoutingTable::new(peer, self.config.kad.table.clone()),
                store,
                pending: BTreeMap::new(),
                connected: HashSet::new(),
                checking: HashSet::new(),
                refresh: None,
                ready: false,
            })),
            refuses: false,
            head,
        });
        self.by_peer.insert(peer, index);
        if let Some(h) = head {
            self.heads.insert(h, index);
            self.head_stats.entry(h).or_insert(HeadStats {
                index: h,
                ..HeadStats::default()
            });
        }
        index
    }

    /// Head `index` as a new live node (not yet known to anyone); `None` when it runs
    /// already or has no identity.
    fn add_head_node(&mut self, index: u32) -> Option<usize> {
        if self.heads.contains_key(&index) {
            return None;
        }
        let booster = self.config.booster.as_ref()?;
        let peer = *booster.identities.get(index as usize)?;
        let one_host = booster.one_host;
        let (ip, port) = if one_host {
            let ip = match self.head_ip {
                Some(ip) => ip,
                None => {
                    let ip = self.random_public_ip();
                    self.head_ip = Some(ip);
                    ip
                }
            };
            (ip, 4001u16.saturating_add(index as u16))
        } else {
            (self.random_public_ip(), 4001)
        };
        Some(self.push_node(peer, ip, port, Some(index)))
    }

    fn is_head(&self, node: usize) -> bool {
        self.nodes[node].head.is_some()
    }

    /// The first nodes, with the tables of a network that has run for a while: each
    /// bucket holds up to k peers drawn at random from the nodes that fall in it, last
    /// seen at random within the liveness interval. Each node's first refresh comes at a
    /// random time within the refresh interval.
    fn warm_start(&mut self) {
        let n = self.config.nodes;
        let k = self.k();
        let mut nodes: Vec<usize> = (0..n).map(|_| self.add_node()).collect();
        let first_heads = self.config.booster.as_ref().map_or(0, |b| b.heads);
        for h in 0..first_heads {
            nodes.extend(self.add_head_node(h as u32));
        }
        let window = self.config.kad.liveness_interval.as_millis() as u64;
        let now_ms = self.now_ms();
        let every = self.refresh_interval();
        for &i in &nodes {
            let local = self.nodes[i].key;
            let mut by_bucket: Vec<Vec<usize>> = vec![Vec::new(); 256];
            let head = self.is_head(i);
            for &j in &nodes {
                if head && self.is_head(j) {
                    continue; // heads keep their siblings out of their tables
                }
                if let Some(b) = local.distance(&self.nodes[j].key).bucket() {
                    by_bucket[b].push(j);
                }
            }
            for mut bucket in by_bucket {
                bucket.shuffle(&mut self.rng);
                for j in bucket.into_iter().take(k) {
                    let seen = now_ms - self.rng.random_range(0..window.max(1));
                    let (peer, addr) = (self.nodes[j].peer, self.nodes[j].addr.clone());
                    if let Some(l) = self.nodes[i].live.as_deref_mut() {
                        let _ = l.table.insert(peer, vec![addr], seen);
                    }
                }
            }
            if let Some(l) = self.live_mut(i) {
                l.ready = true;
            }
            let first = every.mul_f64(self.rng.random());
            self.sched.after(first, Event::Refresh { node: i });
        }
    }

    /// A node joins (Kad::join): it dials a bootstrap peer, identify puts each in the
    /// other's table, then it runs its first refresh.
    fn join(&mut self) {
        let index = self.add_node();
        self.stats.joined += 1;
        let bootstrap = self
            .pick_live(true, Some(index))
            .or_else(|| self.pick_live(false, Some(index)));
        match bootstrap {
            Some(b) => {
                self.connect(index, b);
                self.start_refresh(index);
            }
            None => {
                if let Some(l) = self.live_mut(index) {
                    l.ready = true;
                }
                let every = self.refresh_interval();
                self.sched.after(every, Event::Refresh { node: index });
            }
        }
    }

    /// One node (not a head) leaves; `false` when none could.
    fn leave(&mut self) -> bool {
        // Not a node in the middle of a measured lookup: its result would be lost.
        let busy: HashSet<usize> = self
            .lookups
            .values()
            .filter(|a| matches!(a.purpose, Purpose::Measure { .. }))
            .map(|a| a.node)
            .collect();
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.is_live(i) && !busy.contains(&i) && self.nodes[i].head.is_none())
            .collect();
        if live.len() <= 1 {
            return false;
        }
        let gone = live[self.rng.random_range(0..live.len())];
        let refuses = self.rng.random_bool(self.config.refuse_when_gone);
        let node = &mut self.nodes[gone];
        node.live = None;
        node.refuses = refuses;
        self.lookups.retain(|_, a| a.node != gone);
        self.stats.left += 1;
        true
    }

    fn refresh_interval(&self) -> Duration {
        self.config
            .kad
            .refresh_interval
            .unwrap_or(Duration::from_secs(600))
    }

    /// `a` and `b` hold a connection: on a new one, identify tells each that the other
    /// serves the DHT.
    fn connect(&mut self, a: usize, b: usize) {
        for (me, other) in [(a, b), (b, a)] {
            let Some(l) = self.live_mut(me) else { continue };
            if l.connected.insert(other) {
                let (peer, addr) = (self.nodes[other].peer, self.nodes[other].addr.clone());
                self.consider(me, peer, vec![addr]);
            }
        }
    }

    /// Kad::consider: offers a peer that serves the protocol to `node`'s table.
    fn consider(&mut self, node: usize, peer: PeerId, addrs: Vec<Multiaddr>) {
        let now_ms = self.now_ms();
        if self.is_head(node)
            && self
                .by_peer
                .get(&peer)
                .is_some_and(|&other| self.is_head(other))
        {
            return; // Kad::exclude: a head's table never takes a sibling
        }
        let Some(l) = self.live_mut(node) else { return };
        if let table::Insert::Full { oldest } = l.table.insert(peer, addrs.clone(), now_ms) {
            if l.checking.len() >= MAX_CHECKS || !l.checking.insert(oldest) {
                return;
            }
            let own = self.nodes[node].peer.to_bytes();
            let body = proto::Message::new(MessageType::FindNode, own);
            self.request(
                node,
                oldest,
                body,
                Pending::Check {
                    oldest,
                    newcomer: peer,
                    addrs,
                },
            );
        }
    }

    // ---- messages --------------------------------------------------------------------

    fn request(&mut self, from: usize, to: PeerId, body: proto::Message, pending: Pending) {
        let rid = self.id();
        let Some(&to) = self.by_peer.get(&to) else {
            return;
        };
        let timeout = self.config.kad.request_timeout;
        let Some(l) = self.live_mut(from) else { return };
        l.pending.insert(rid, pending);
        self.stats.requests += 1;
        self.sched
            .after(timeout, Event::Timeout { node: from, rid });
        self.send(from, to, Msg::Request { from, rid, body });
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        match self.links.transit(&mut self.rng, from, to) {
            Some(delay) => self.sched.after(
                delay,
                Event::Deliver {
                    to,
                    msg: Box::new(msg),
                },
            ),
            None => self.stats.lost += 1,
        }
    }

    fn deliver(&mut self, to: usize, msg: Msg) {
        match msg {
            Msg::Request { from, rid, body } => {
                if !self.is_live(to) {
                    if self.nodes[to].refuses {
                        self.send(to, from, Msg::Refused { rid });
                    }
                    return;
                }
                if !self.is_live(from) {
                    return;
                }
                self.connect(from, to);
                self.serve(to, from, rid, body);
            }
            Msg::Reply { from, rid, body } => {
                let Some(pending) = self.live_mut(to).and_then(|l| l.pending.remove(&rid)) else {
                    return; // timed out already, or we are gone
                };
                self.answered(to, from, pending, body);
            }
            Msg::Refused { rid } => {
                let Some(pending) = self.live_mut(to).and_then(|l| l.pending.remove(&rid)) else {
                    return;
                };
                self.stats.refused += 1;
                self.failed(to, pending, true);
            }
            Msg::Reset { rid } => {
                let Some(pending) = self.live_mut(to).and_then(|l| l.pending.remove(&rid)) else {
                    return;
                };
                self.stats.resets += 1;
                self.failed(to, pending, false);
            }
        }
    }

    /// `node` answers a request from `from`, with the pure server.
    fn serve(&mut self, node: usize, from: usize, rid: u64, body: proto::Message) {
        let now_ms = self.now_ms();
        let from_peer = self.nodes[from].peer;
        let reply = {
            let n = &self.nodes[node];
            let Some(l) = n.live.as_deref() else { return };
            let peers = SimPeers { own: &n.addr };
            let srv = server::Server {
                config: &self.config.kad,
                table: &l.table,
                store: &l.store,
                peers: &peers,
            };
            let requester = server::Requester::new(from_peer, &self.nodes[from].addr);
            match srv.answer(&requester, body, now_ms) {
                Ok(server::Answer::Reply(reply)) => Some(reply),
                Ok(server::Answer::Store(accepted)) => {
                    let stored = l
                        .store
                        .put(accepted.key(), accepted.value(), now_ms)
                        .now_or_never();
                    match stored {
                        Some(Ok(_)) => Some(accepted.into_echo()),
                        _ => None,
                    }
                }
                Ok(server::Answer::Provide { key, addrs, .. }) => {
                    if let Some(addrs) = addrs {
                        let stored = l
                            .store
                            .add_provider(&key, from_peer, &addrs, now_ms)
                            .now_or_never();
                        if matches!(stored, Some(Ok(_))) {
                            self.provider_copies += 1;
                        }
                    }
                    return;
                }
                Err(_) => None,
            }
        };
        let msg = match reply {
            Some(body) => Msg::Reply {
                from: node,
                rid,
                body,
            },
            None => Msg::Reset { rid },
        };
        if let Some(h) = self.nodes[node].head {
            if let Some(stats) = self.head_stats.get_mut(&h) {
                stats.requests += 1;
                if let Msg::Reply { body, .. } = &msg {
                    if body.record.is_some() || !body.provider_peers.is_empty() {
                        stats.from_store += 1;
                    }
                }
            }
        }
        self.send(node, from, msg);
    }

    /// `node`'s request to `from` was answered.
    fn answered(&mut self, node: usize, from: usize, pending: Pending, body: proto::Message) {
        let now = self.sched.now();
        let now_ms = self.now_ms();
        let peer = self.nodes[from].peer;
        match pending {
            Pending::Lookup { lookup, .. } => {
                if let Some(l) = self.live_mut(node) {
                    l.table.seen(&peer, now_ms);
                }
                let Some(a) = self.lookups.get_mut(&lookup) else {
                    return;
                };
                let validators = &self.config.kad.validators;
                let key = &a.key;
                let response = lookup::Response::from_message(body, key, |v| {
                    validators.validate(key, v, now_ms).is_ok()
                });
                if let Some(depths) = a.depths.as_mut() {
                    let d = depths.get(&peer).copied().unwrap_or(1);
                    for f in &response.closer {
                        depths.entry(f.peer).or_insert(d + 1);
                    }
                    if !response.providers.is_empty() && a.provider_hops.is_none() {
                        a.provider_hops = Some(d);
                    }
                }
                a.core.handle_success(now, &peer, response);
                self.drive(lookup);
            }
            Pending::Check { oldest, .. } => {
                if let Some(l) = self.live_mut(node) {
                    l.checking.remove(&oldest);
                    l.table.seen(&oldest, now_ms);
                }
            }
            Pending::Liveness { peer } => {
                if let Some(l) = self.live_mut(node) {
                    l.table.seen(&peer, now_ms);
                }
                self.liveness_done(node);
            }
            Pending::Put { record } => {
                let echoed = body
                    .record
                    .is_some_and(|r| r.value == self.records[record].value);
                if echoed {
                    self.records[record].acks += 1;
                }
            }
        }
    }

    /// `node`'s request failed: refused (the peer is unreachable) or timed out.
    fn failed(&mut self, node: usize, pending: Pending, refused: bool) {
        let now = self.sched.now();
        match pending {
            Pending::Lookup { lookup, peer } => {
                if refused {
                    if let Some(l) = self.live_mut(node) {
                        l.table.remove(&peer);
                    }
                }
                if let Some(a) = self.lookups.get_mut(&lookup) {
                    a.core.handle_failure(now, &peer);
                    self.drive(lookup);
                }
            }
            Pending::Check {
                oldest,
                newcomer,
                addrs,
            } => {
                if let Some(l) = self.live_mut(node) {
                    l.checking.remove(&oldest);
                    l.table.remove(&oldest);
                }
                self.consider(node, newcomer, addrs);
            }
            Pending::Liveness { peer } => {
                if let Some(l) = self.live_mut(node) {
                    l.table.remove(&peer);
                }
                self.liveness_done(node);
            }
            Pending::Put { .. } => {}
        }
    }

    // ---- lookups ---------------------------------------------------------------------

    fn start_lookup(
        &mut self,
        node: usize,
        kind: MessageType,
        key: Vec<u8>,
        enough: Option<usize>,
        purpose: Purpose,
    ) {
        let now = self.sched.now();
        let k = self.k();
        let Some(l) = self.nodes[node].live.as_deref() else {
            return;
        };
        let target = Key::new(&key);
        let seeds: Vec<lookup::Found> = l
            .table
            .closest(&target, k)
            .into_iter()
            .map(|e| lookup::Found {
                peer: e.peer,
                addrs: e.addrs.clone(),
            })
            .collect();
        let config = lookup::Config {
            k,
            alpha: self.config.kad.alpha,
            request_timeout: self.config.kad.request_timeout,
            query_timeout: self.config.kad.query_timeout,
            max_candidates: k * 8,
        };
        let seeds_peers: Vec<PeerId> = seeds.iter().map(|f| f.peer).collect();
        let core = lookup::Lookup::new(
            now,
            target,
            self.nodes[node].peer,
            seeds,
            lookup::Enough::of(kind, enough),
            config,
        );
        let measured = matches!(
            purpose,
            Purpose::Measure { .. } | Purpose::GetProviders { .. }
        );
        let depths = measured.then(|| seeds_peers.into_iter().map(|p| (p, 1)).collect());
        let id = self.id();
        self.stats.lookups += 1;
        self.lookups.insert(
            id,
            Active {
                node,
                kind,
                key,
                core,
                purpose,
                wake: None,
                depths,
                provider_hops: None,
            },
        );
        self.drive(id);
    }

    /// Polls a lookup until it waits or ends.
    fn drive(&mut self, id: u64) {
        loop {
            let now = self.sched.now();
            let Some(a) = self.lookups.get_mut(&id) else {
                return;
            };
            match a.core.poll(now) {
                lookup::Poll::Request(found) => {
                    let (node, body) = (a.node, proto::Message::new(a.kind, a.key.clone()));
                    self.request(
                        node,
                        found.peer,
                        body,
                        Pending::Lookup {
                            lookup: id,
                            peer: found.peer,
                        },
                    );
                }
                lookup::Poll::Wait(until) => {
                    if a.wake.is_none_or(|w| until < w) {
                        a.wake = Some(until);
                        self.sched.at(until, Event::Wake { lookup: id });
                    }
                    return;
                }
                lookup::Poll::Done => {
                    if let Some(a) = self.lookups.remove(&id) {
                        let outcome = a.core.finish();
                        self.finished(a.node, a.purpose, outcome, a.depths, a.provider_hops);
                    }
                    return;
                }
            }
        }
    }

    fn finished(
        &mut self,
        node: usize,
        purpose: Purpose,
        outcome: lookup::Outcome,
        depths: Option<HashMap<PeerId, u32>>,
        provider_hops: Option<u32>,
    ) {
        match purpose {
            Purpose::Refresh => self.next_walk(node),
            Purpose::Measure { truth, started } => {
                let closest: Vec<PeerId> = outcome.closest.iter().map(|f| f.peer).collect();
                let overlap = closest.iter().filter(|p| truth.contains(p)).count();
                let hops = depths.as_ref().map_or(0, |d| {
                    closest
                        .iter()
                        .filter_map(|p| d.get(p).copied())
                        .max()
                        .unwrap_or(0)
                });
                self.measured.push(Measured {
                    overlap,
                    hops,
                    closest,
                    queried: outcome.queried,
                    failed: outcome.failed,
                    took: self.sched.clock().elapsed() - started,
                });
            }
            Purpose::Put { record } => {
                // Kad::put_value: the record to each of the k closest.
                let r = &self.records[record];
                let mut body = proto::Message::new(MessageType::PutValue, r.key.clone());
                body.record = Some(proto::Record {
                    key: r.key.clone(),
                    value: r.value.clone(),
                    time_received: String::new(),
                });
                for f in outcome.closest {
                    self.request(node, f.peer, body.clone(), Pending::Put { record });
                }
            }
            Purpose::Get { record } => {
                let value = &self.records[record].value;
                self.records[record].found = outcome.records.iter().any(|(_, v)| v == value);
            }
            Purpose::Provide { provider } => {
                // Kad::provide: ADD_PROVIDER to each of the k closest, no answer expected.
                let p = &self.providers[provider];
                let me = &self.nodes[p.provider];
                let mut body = proto::Message::new(MessageType::AddProvider, p.key.clone());
                body.provider_peers = vec![proto::Peer {
                    id: me.peer.to_bytes(),
                    addrs: vec![me.addr.to_vec()],
                    ..Default::default()
                }];
                for f in outcome.closest {
                    if let Some(&to) = self.by_peer.get(&f.peer) {
                        let rid = self.id();
                        self.stats.requests += 1;
                        self.send(
                            node,
                            to,
                            Msg::Request {
                                from: node,
                                rid,
                                body: body.clone(),
                            },
                        );
                    }
                }
            }
            Purpose::GetProviders { provider, started } => {
                let want = self.nodes[self.providers[provider].provider].peer;
                let found = outcome.providers.iter().any(|f| f.peer == want);
                self.providers[provider].found = found;
                self.provider_measured.push(ProviderMeasured {
                    found,
                    queried: outcome.queried,
                    hops: provider_hops,
                    took: self.sched.clock().elapsed() - started,
                });
            }
        }
    }

    // ---- refresh ---------------------------------------------------------------------

    fn start_refresh(&mut self, node: usize) {
        let Some(l) = self.live_mut(node) else { return };
        if l.refresh.is_some() {
            return;
        }
        l.refresh = Some(RefreshRun::default());
        if l.table.is_empty() {
            // Kad::start: an empty table joins again first.
            if let Some(b) = self.pick_live(true, Some(node)) {
                self.connect(node, b);
            }
        }
        let own = self.nodes[node].peer.to_bytes();
        self.start_lookup(node, MessageType::FindNode, own, None, Purpose::Refresh);
    }

    /// After a refresh lookup: the next random walk, else the liveness checks.
    fn next_walk(&mut self, node: usize) {
        let walks = self.config.random_walks.min(16);
        let Some(l) = self.live_mut(node) else { return };
        let Some(run) = l.refresh.as_mut() else {
            return;
        };
        if run.walks.is_none() {
            let buckets: VecDeque<usize> = l
                .table
                .bucket_sizes()
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, _)| i)
                .rev()
                .take(walks)
                .collect();
            run.walks = Some(buckets);
        }
        let local = *l.table.local_key();
        while let Some(b) = self
            .live_mut(node)
            .and_then(|l| l.refresh.as_mut())
            .and_then(|r| r.walks.as_mut())
            .and_then(VecDeque::pop_front)
        {
            if let Some(target) = random_peer_in_bucket(&mut self.rng, &local, b) {
                self.start_lookup(
                    node,
                    MessageType::FindNode,
                    target.to_bytes(),
                    None,
                    Purpose::Refresh,
                );
                return;
            }
        }
        self.start_checks(node);
    }

    fn start_checks(&mut self, node: usize) {
        let before = self
            .now_ms()
            .saturating_sub(self.config.kad.liveness_interval.as_millis() as u64);
        let Some(l) = self.live_mut(node) else { return };
        let stale = l.table.stale(before, MAX_CHECKS * 4);
        if let Some(run) = l.refresh.as_mut() {
            run.checks = stale.into();
        }
        self.liveness_done_inner(node, false);
    }

    fn liveness_done(&mut self, node: usize) {
        self.liveness_done_inner(node, true);
    }

    /// Starts liveness checks up to the limit; ends the refresh when all are done.
    fn liveness_done_inner(&mut self, node: usize, one_done: bool) {
        let own = self.nodes[node].peer.to_bytes();
        let mut to_check = Vec::new();
        let finished = {
            let Some(l) = self.live_mut(node) else { return };
            let Some(run) = l.refresh.as_mut() else {
                return;
            };
            if one_done {
                run.checks_in_flight = run.checks_in_flight.saturating_sub(1);
            }
            while run.checks_in_flight < MAX_CHECKS {
                let Some(p) = run.checks.pop_front() else {
                    break;
                };
                run.checks_in_flight += 1;
                to_check.push(p);
            }
            run.checks_in_flight == 0
        };
        for peer in to_check {
            let body = proto::Message::new(MessageType::FindNode, own.clone());
            self.request(node, peer, body, Pending::Liveness { peer });
        }
        if finished {
            if let Some(l) = self.live_mut(node) {
                l.refresh = None;
                l.ready = true;
            }
            let every = self.refresh_interval();
            self.sched.after(every, Event::Refresh { node });
        }
    }

    // ---- measurement -----------------------------------------------------------------

    /// The true k closest live nodes to `target`, other than `not`, nearest first.
    fn truth(&self, target: &Key, not: usize) -> Vec<PeerId> {
        let mut all: Vec<(kad::Distance, PeerId)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| *i != not && n.live.is_some())
            .map(|(_, n)| (n.key.distance(target), n.peer))
            .collect();
        all.sort_unstable();
        all.truncate(self.k());
        all.into_iter().map(|(_, p)| p).collect()
    }

    fn measure(&mut self) {
        let Some(node) = self.pick_live(true, None) else {
            return;
        };
        let key: [u8; 32] = self.rng.random();
        let truth = self.truth(&Key::new(&key), node);
        let started = self.sched.clock().elapsed();
        self.start_lookup(
            node,
            MessageType::FindNode,
            key.to_vec(),
            None,
            Purpose::Measure { truth, started },
        );
    }

    fn put_record(&mut self) {
        let Some(putter) = self.pick_live(true, None) else {
            return;
        };
        let mut secret: [u8; 32] = self.rng.random();
        let Ok(keypair) = Keypair::ed25519_from_bytes(&mut secret) else {
            return;
        };
        let mut key = b"/pk/".to_vec();
        key.extend_from_slice(&keypair.public().to_peer_id().to_bytes());
        let value = keypair.public().encode_protobuf();
        let record = self.records.len();
        self.records.push(SimRecord {
            key: key.clone(),
            value,
            putter,
            acks: 0,
            found: false,
        });
        self.start_lookup(
            putter,
            MessageType::FindNode,
            key,
            None,
            Purpose::Put { record },
        );
    }

    fn get_record(&mut self, record: usize) {
        let putter = self.records[record].putter;
        let Some(node) = self.pick_live(true, Some(putter)) else {
            return;
        };
        let key = self.records[record].key.clone();
        self.start_lookup(
            node,
            MessageType::GetValue,
            key,
            Some(1),
            Purpose::Get { record },
        );
    }

    fn put_provider(&mut self) {
        let Some(provider) = self.pick_live(true, None) else {
            return;
        };
        // A CID's multihash: SHA-256 of random content.
        let mut key = vec![0x12, 0x20];
        key.extend_from_slice(&self.rng.random::<[u8; 32]>());
        let index = self.providers.len();
        self.providers.push(SimProvider {
            key: key.clone(),
            provider,
            found: false,
        });
        self.start_lookup(
            provider,
            MessageType::FindNode,
            key,
            None,
            Purpose::Provide { provider: index },
        );
    }

    fn get_providers(&mut self, index: usize) {
        let provider = self.providers[index].provider;
        let Some(node) = self.pick_live(true, Some(provider)) else {
            return;
        };
        let key = self.providers[index].key.clone();
        let started = self.sched.clock().elapsed();
        self.start_lookup(
            node,
            MessageType::GetProviders,
            key,
            Some(1),
            Purpose::GetProviders {
                provider: index,
                started,
            },
        );
    }

    fn report(&self) -> Report {
        let k = self.k();
        let mut overlap = vec![0; k + 1];
        let mut hasher = DefaultHasher::new();
        for m in &self.measured {
            overlap[m.overlap.min(k)] += 1;
            m.closest.hash(&mut hasher);
        }
        let n = self.measured.len().max(1) as f64;
        let live: Vec<&Live> = self
            .nodes
            .iter()
            .filter_map(|n| n.live.as_deref())
            .collect();
        let entries: usize = live.iter().map(|l| l.table.len()).sum();
        let dead: usize = live
            .iter()
            .flat_map(|l| l.table.iter())
            .filter(|e| {
                self.by_peer
                    .get(&e.peer)
                    .is_none_or(|&i| self.nodes[i].live.is_none())
            })
            .count();
        let took: Vec<Duration> = self.measured.iter().map(|m| m.took).collect();
        let mut report = Report {
            seed: self.config.seed,
            k,
            short_results: self.measured.iter().filter(|m| m.closest.len() < k).count(),
            mean_queried: self.measured.iter().map(|m| m.queried).sum::<usize>() as f64 / n,
            mean_failed: self.measured.iter().map(|m| m.failed).sum::<usize>() as f64 / n,
            mean_lookup_time: took.iter().sum::<Duration>() / self.measured.len().max(1) as u32,
            max_lookup_time: took.iter().max().copied().unwrap_or_default(),
            ended_by_timeout: took
                .iter()
                .filter(|t| **t >= self.config.kad.query_timeout)
                .count(),
            overlap,
            records_put: self.records.len(),
            record_acks: self.records.iter().map(|r| r.acks).sum(),
            records_found: self.records.iter().filter(|r| r.found).count(),
            mean_hops: self.measured.iter().map(|m| f64::from(m.hops)).sum::<f64>() / n,
            providers_put: self.providers.len(),
            provider_copies: self.provider_copies,
            providers_found: self.provider_measured.iter().filter(|m| m.found).count(),
            mean_provider_queried: mean(self.provider_measured.iter().map(|m| m.queried as f64)),
            mean_provider_hops: mean(
                self.provider_measured
                    .iter()
                    .filter(|m| m.found)
                    .filter_map(|m| m.hops.map(f64::from)),
            ),
            mean_provider_time: Duration::from_secs_f64(mean(
                self.provider_measured.iter().map(|m| m.took.as_secs_f64()),
            )),
            heads: self.heads.values().filter(|&&i| self.is_live(i)).count(),
            head_requests: self.head_stats.values().map(|h| h.requests).sum(),
            head_answers_from_store: self.head_stats.values().map(|h| h.from_store).sum(),
            joined: self.stats.joined,
            left: self.stats.left,
            live_at_end: live.len(),
            mean_table_size: entries as f64 / live.len().max(1) as f64,
            dead_entry_share: dead as f64 / entries.max(1) as f64,
            lookups_run: self.stats.lookups,
            requests: self.stats.requests,
            lost: self.stats.lost,
            refused: self.stats.refused,
            resets: self.stats.resets,
            timeouts: self.stats.timeouts,
            virtual_time: self.sched.clock().elapsed(),
            digest: 0,
        };
        format!("{report:?}").hash(&mut hasher);
        report.digest = hasher.finish();
        report
    }
}

/// The mean of some values (0 for none).
fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// A random PeerId (a SHA-256 multihash of random bytes, as `Kad`'s random walk makes).
fn random_peer(rng: &mut StdRng) -> PeerId {
    let mut mh = vec![0x12, 0x20];
    mh.extend_from_slice(&rng.random::<[u8; 32]>());
    PeerId::from_bytes(&mh).unwrap_or_else(|e| panic!("a SHA-256 multihash is a PeerId: {e}"))
}

/// As `Kad::random_peer_in_bucket`: a random PeerId whose key falls in bucket `b` of
/// `local`, when a few thousand tries find one. (The same search, made cheap for a debug
/// build: the bucket is read from the first 128 bits of the distance, which decide it
/// for every bucket a network of this size can fill.)
fn random_peer_in_bucket(rng: &mut StdRng, local: &Key, b: usize) -> Option<PeerId> {
    let top = |k: &Key| {
        let mut h = [0u8; 16];
        h.copy_from_slice(&k.hash()[..16]);
        u128::from_be_bytes(h)
    };
    let cpl = 255usize.checked_sub(b)?;
    if cpl >= 128 {
        return None;
    }
    let local = top(local);
    let mut mh = [0u8; 34];
    mh[0] = 0x12;
    mh[1] = 0x20;
    for _ in 0..4096 {
        rng.fill(&mut mh[2..]);
        if (local ^ top(&Key::new(&mh))).leading_zeros() as usize == cpl {
            return PeerId::from_bytes(&mh).ok();
        }
    }
    None
}
