//! Kademlia DHT (`specs/kad-dht/README.md`): protocol `/ipfs/kad/1.0.0`, or a network's
//! own id such as `/myapp/kad/1.0.0`.
//!
//! - **server side** (when [`Config::server`]): FIND_NODE, GET_VALUE, PUT_VALUE,
//!   ADD_PROVIDER, GET_PROVIDERS and the legacy PING, several requests per stream, with
//!   bounded message size, concurrent streams (in total and per peer) and request rates
//!   (per peer and per IP group). Bad input resets the stream and counts
//!   `libp2p_protocol_errors{protocol="kad",reason}`.
//! - **client side**: iterative lookups with α requests in flight that end when the k
//!   closest peers seen have answered, and the operations built on them.
//! - **routing table** ([`table`]): only peers that identify says serve the protocol, with
//!   dialable addresses (from their verified signed record when we hold one), under IP
//!   diversity limits; a full bucket keeps its peers unless the least recently seen one
//!   fails a liveness check (a FIND_NODE it must answer). A refresh task looks up our own key and random keys, and
//!   checks peers not seen for a while.
//! - **records** ([`store`], [`validator`]): value records validated per namespace and
//!   provider records, both durable and bounded.
//!
//! Not here: which peers to admit or shed (the bootstrap role's policy).

pub mod key;
pub mod lookup;
pub mod proto;
pub mod server;
pub mod store;
pub mod table;
pub mod validator;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::{FuturesUnordered, StreamExt};
use multiaddr::Multiaddr;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::addresses;
use crate::host::{self, DialError, Host, Stream, StreamError};
use crate::identity::PeerId;
use crate::ipprefix::IpPrefix;
use crate::limits::RateLimiter;
use crate::metrics::{KadLabels, Metrics, ReasonLabels};
use crate::peerstore::Peerstore;
use crate::protocols::identify;
use crate::varint::{self, FrameError};

pub use key::{Distance, Key};
pub use lookup::{Found, Outcome};
pub use proto::MessageType;
pub use store::KadStore;
pub use table::RoutingTable;
pub use validator::Validators;

use server::{Answer, Requester};

/// The IPFS DHT's protocol id.
pub const DEFAULT_PROTOCOL: &str = "/ipfs/kad/1.0.0";
/// Most addresses taken from one peer entry of a response.
const MAX_PEER_ADDRS: usize = 16;
/// Most peer entries taken from one response.
const MAX_RESPONSE_PEERS: usize = 64;
/// Liveness checks running at once.
const MAX_CHECKS: usize = 8;
/// Candidates a lookup remembers, in units of k.
const CANDIDATES_PER_K: usize = 8;

/// Settings of the DHT.
#[derive(Debug, Clone)]
pub struct Config {
    pub protocol: String,
    /// Serve the protocol (and advertise it through identify). Off: client mode. With
    /// `auto_server`, only the mode to start in.
    pub server: bool,
    /// Follow our reachability ([`Kad::set_server`], called by the node when AutoNAT
    /// decides): server mode while we are publicly reachable, client mode while not.
    pub auto_server: bool,
    /// Peers to join the DHT through (multiaddrs ending in `/p2p/<id>`), dialed at start
    /// and whenever the routing table is empty.
    pub bootstrap: Vec<Multiaddr>,
    pub table: table::Config,
    pub store: store::Config,
    pub validators: Validators,
    //= specs/kad-dht/README.md#alpha-concurrency-parameter-α
    //# The concurrency of node and value lookups are limited by parameter `α`, with a
    //# default value of 10.
    pub alpha: usize,
    /// One request: dial, stream, answer.
    pub request_timeout: Duration,
    /// One whole lookup.
    pub query_timeout: Duration,
    /// Largest message read or written.
    pub max_message_len: usize,
    /// A served stream with no request for this long is closed.
    pub stream_idle_timeout: Duration,
    /// Streams served at once, in total and per peer.
    pub max_inbound_streams: usize,
    pub max_inbound_streams_per_peer: usize,
    /// Requests per peer: burst, then per second.
    pub peer_rate: (u32, u32),
    /// Requests per IP group (IPv4 /16, IPv6 /48): burst, then per second.
    pub group_rate: (u32, u32),
    /// Table refresh (self lookup, random walk, liveness checks); `None` turns it off.
    pub refresh_interval: Option<Duration>,
    /// Peers not seen for this long are checked during a refresh.
    pub liveness_interval: Duration,
    /// How long addresses learned from responses stay in the peerstore.
    pub learned_addr_ttl: Duration,
    /// Also give private and loopback addresses to peers that reached us from a public
    /// address.
    pub private_addrs_to_public: bool,
    /// Save the routing table's peers and reload them at start (a warm start).
    pub persist_table: bool,
    /// Hand out only table peers seen (answered, identified, or passed a liveness check)
    /// within this window; `None` hands out every table peer.
    pub serve_verified_within: Option<Duration>,
    /// Apply the per-subnet request rate to requesters on private and loopback
    /// addresses too (by default only public subnets share a budget).
    pub limit_private_subnets: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            protocol: DEFAULT_PROTOCOL.to_string(),
            server: false,
            auto_server: false,
            bootstrap: Vec::new(),
            table: table::Config::default(),
            store: store::Config::default(),
            validators: Validators::standard(),
            alpha: 10,
            request_timeout: Duration::from_secs(10),
            //= specs/kad-dht/README.md#bootstrap-process
            //# Every repetition is subject to a `QueryTimeout` (default: 10 seconds)
            query_timeout: Duration::from_secs(10),
            max_message_len: 64 * 1024,
            stream_idle_timeout: Duration::from_secs(60),
            max_inbound_streams: 1024,
            max_inbound_streams_per_peer: 16,
            peer_rate: (64, 32),
            group_rate: (256, 128),
            //= specs/kad-dht/README.md#bootstrap-process
            //# The process runs once on startup, then periodically with a configurable
            //# frequency (default: 10 minutes).
            refresh_interval: Some(Duration::from_secs(600)),
            liveness_interval: Duration::from_secs(600),
            learned_addr_ttl: Duration::from_secs(600),
            private_addrs_to_public: false,
            persist_table: true,
            serve_verified_within: None,
            limit_private_subnets: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("dial: {0}")]
    Dial(#[from] DialError),
    #[error("stream: {0}")]
    Stream(#[from] StreamError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The response does not decode.
    #[error("malformed response")]
    Malformed,
    /// The remote closed the stream without answering.
    #[error("no reply")]
    NoReply,
    #[error("timed out")]
    Timeout,
    #[error("record refused: {0}")]
    Record(#[from] validator::Error),
    #[error("store: {0}")]
    Store(#[from] store::Error),
    #[error("no peer to ask")]
    NoPeers,
}

impl Error {
    fn label(&self) -> &'static str {
        match self {
            Error::Dial(_) => "dial",
            Error::Stream(_) => "stream",
            Error::Io(_) => "io",
            Error::Malformed => "malformed",
            Error::NoReply => "no reply",
            Error::Timeout => "timeout",
            Error::Record(e) => e.label(),
            Error::Store(e) => e.label(),
            Error::NoPeers => "no_peers",
        }
    }
}

impl crate::fault::Classify for Error {
    fn fault(&self) -> crate::fault::Fault {
        use crate::fault::Fault;
        match self {
            Error::Dial(e) => e.fault(),
            Error::Stream(e) => e.fault(),
            Error::Io(e) => e.fault(),
            Error::Malformed => Fault::Malformed,
            Error::NoReply => Fault::Protocol,
            Error::Timeout => Fault::Timeout,
            // A record that fails validation is the sender's; a store that cannot take it
            // is ours.
            Error::Record(_) => Fault::Protocol,
            Error::Store(_) => Fault::Local,
            Error::NoPeers => Fault::Local,
        }
    }
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => Error::Io(e),
            FrameError::Decode(_) => Error::Malformed,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The driver's clock: tokio's, so a paused test runtime pauses lookups too.
fn clock() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn parse_addrs(raw: &[Vec<u8>]) -> Vec<Multiaddr> {
    raw.iter()
        .take(MAX_PEER_ADDRS)
        .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
        .collect()
}

/// Does a dial error say the peer is gone, rather than something about us (no address
/// we may dial yet, our limits, backoff, shutdown, our DNS)?
fn unreachable(e: &DialError) -> bool {
    use crate::fault::Classify;
    !matches!(e, DialError::Unsupported(_) | DialError::Dns(_)) && e.fault().is_remote()
}

/// A peer's entry in a lookup's answers, checked.
fn parse_peer(p: &proto::Peer) -> Option<Found> {
    Some(Found {
        peer: PeerId::from_bytes(&p.id).ok()?,
        addrs: parse_addrs(&p.addrs),
    })
}

/// The DHT service of a host. Cheap to share (`Arc`).
pub struct Kad {
    host: Host,
    peerstore: Peerstore,
    identify: Arc<identify::Identify>,
    config: Config,
    table: Mutex<RoutingTable>,
    store: KadStore,
    peer_limiter: Mutex<RateLimiter<PeerId>>,
    group_limiter: Mutex<RateLimiter<IpPrefix>>,
    inbound: Arc<Semaphore>,
    streams_per_peer: Mutex<HashMap<PeerId, usize>>,
    checking: Mutex<HashSet<PeerId>>,
    network_size: Mutex<Option<f64>>,
    /// Server mode now ([`Kad::set_server`]).
    serving: std::sync::atomic::AtomicBool,
    /// Peers never taken into the routing table ([`Kad::exclude`]).
    excluded: Mutex<Option<PeerFilter>>,
    /// Told of every GET_PROVIDERS and GET_VALUE answered ([`Kad::on_get`]).
    get_hook: Mutex<Option<GetHook>>,
    metrics: Arc<Metrics>,
}

/// Which peers to keep out of the routing table.
pub type PeerFilter = Arc<dyn Fn(&PeerId) -> bool + Send + Sync>;
/// What hears of the GET requests answered.
pub type GetHook = Arc<dyn Fn(Get) + Send + Sync>;

/// A GET_PROVIDERS or GET_VALUE request answered.
#[derive(Debug, Clone)]
pub struct Get {
    pub kind: MessageType,
    pub key: Vec<u8>,
    /// Who asked.
    pub from: PeerId,
    /// The store had what it asked for (providers, a record); otherwise the answer held
    /// closer peers only: a miss.
    pub found: bool,
}

/// Releases a peer's share of the per-peer stream limit.
struct PeerStreamGuard<'a> {
    kad: &'a Kad,
    peer: PeerId,
}

impl Drop for PeerStreamGuard<'_> {
    fn drop(&mut self) {
        let mut m = lock(&self.kad.streams_per_peer);
        if let Some(n) = m.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.peer);
            }
        }
    }
}

/// What the server knows of other peers and of itself, from the peerstore, the host and
/// identify.
struct HostPeers<'a>(&'a Kad);

impl server::Peers for HostPeers<'_> {
    fn signed_addrs(&self, peer: &PeerId) -> Option<Vec<Multiaddr>> {
        self.0
            .peerstore
            .inspect(peer, |i| i.record.as_ref().map(|r| r.addrs().to_vec()))?
    }

    fn live_addrs(&self, peer: &PeerId, now_ms: u64) -> Vec<Multiaddr> {
        self.0
            .peerstore
            .inspect(peer, |i| i.live_addrs(now_ms))
            .unwrap_or_default()
    }

    fn signed_envelope(&self, peer: &PeerId) -> Option<Vec<u8>> {
        self.0
            .peerstore
            .inspect(peer, |i| i.record.as_ref().map(|r| r.envelope().to_vec()))?
    }

    fn is_connected(&self, peer: &PeerId) -> bool {
        self.0.host.connection(peer).is_some()
    }

    fn own_addrs_for(&self, remote: &Multiaddr) -> Vec<Multiaddr> {
        self.0.identify.advertised_addrs_for(remote)
    }

    fn own_envelope(&self) -> Option<Vec<u8>> {
        self.0.identify.own_record()
    }
}

impl Kad {
    /// Installs the DHT on `host`: the server (in server mode) and the routing table fed
    /// by identify (warm-started from the saved table). Joining and the refresh task
    /// start with [`Kad::start`], once the host listens (before that, loopback and private
    /// peers are not dialable and would look unreachable).
    pub fn install(
        host: &Host,
        peerstore: Peerstore,
        identify: Arc<identify::Identify>,
        store: KadStore,
        config: Config,
    ) -> Arc<Self> {
        let metrics = host.metrics().clone();
        let tracked = config.max_inbound_streams.max(1024) * 4;
        let kad = Arc::new(Kad {
            host: host.clone(),
            peerstore,
            identify,
            table: Mutex::new(RoutingTable::new(host.peer_id(), config.table.clone())),
            peer_limiter: Mutex::new(RateLimiter::new(
                config.peer_rate.0,
                config.peer_rate.1,
                tracked,
            )),
            group_limiter: Mutex::new(RateLimiter::new(
                config.group_rate.0,
                config.group_rate.1,
                tracked,
            )),
            inbound: Arc::new(Semaphore::new(config.max_inbound_streams.max(1))),
            streams_per_peer: Mutex::new(HashMap::new()),
            checking: Mutex::new(HashSet::new()),
            network_size: Mutex::new(None),
            serving: std::sync::atomic::AtomicBool::new(false),
            excluded: Mutex::new(None),
            get_hook: Mutex::new(None),
            store,
            config,
            metrics,
        });
        kad.update_store_gauges();
        let opened = kad.store.opened();
        kad.metrics
            .storage
            .dropped("kad_records", opened.corrupt_records as u64);
        kad.metrics
            .storage
            .dropped("kad_providers", opened.corrupt_providers as u64);
        if kad.config.persist_table {
            kad.warm_start();
        }
        let weak = Arc::downgrade(&kad);
        kad.store.on_reopen(Box::new(move || {
            if let Some(kad) = weak.upgrade() {
                kad.write_back();
            }
        }));
        // Every identified peer is offered to the table, synchronously: none is missed.
        let weak = Arc::downgrade(&kad);
        kad.identify.observe(Arc::new(move |event| {
            if let (identify::Event::Identified(info), Some(kad)) = (event, weak.upgrade()) {
                kad.on_identified(info);
            }
        }));
        if kad.config.server {
            kad.set_server(true);
        }
        kad
    }

    /// Keeps the peers `filter` names out of the routing table (and so out of every
    /// answer and refresh): this process's other DHT identities, which must not refer
    /// lookups to each other in place of the network's peers. Applies to later inserts;
    /// a peer already in the table is removed.
    pub fn exclude(&self, filter: PeerFilter) {
        let present: Vec<PeerId> = lock(&self.table).iter().map(|e| e.peer).collect();
        for peer in present.into_iter().filter(|p| filter(p)) {
            self.forget(&peer);
        }
        *lock(&self.excluded) = Some(filter);
    }

    fn is_excluded(&self, peer: &PeerId) -> bool {
        let filter = lock(&self.excluded).clone();
        filter.is_some_and(|f| f(peer))
    }

    /// Calls `hook` (synchronously, after the answer is built and before it is sent: it
    /// must not block) for every GET_PROVIDERS and GET_VALUE answered, found or missed.
    pub fn on_get(&self, hook: GetHook) {
        *lock(&self.get_hook) = Some(hook);
    }

    /// Whether we are among the `k` peers closest to `key` that we know of: fewer than
    /// `k` peers of our table are closer to it than we are.
    pub fn is_close_to(&self, key: &[u8], k: usize) -> bool {
        let target = Key::new(key);
        let table = lock(&self.table);
        let own = table.local_key().distance(&target);
        table
            .closest(&target, k)
            .iter()
            .filter(|e| Key::from_peer(&e.peer).distance(&target) < own)
            .count()
            < k
    }

    /// Whether we serve the DHT now.
    pub fn is_server(&self) -> bool {
        self.serving.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Switches between server mode (serve the protocol and advertise it: other peers put
    /// us in their routing tables) and client mode (only query). Connected peers hear of
    /// it through identify push.
    pub fn set_server(self: &Arc<Self>, on: bool) {
        use std::sync::atomic::Ordering;
        if self.serving.swap(on, Ordering::Relaxed) == on {
            return;
        }
        if on {
            let server = Arc::new(Server(self.clone()));
            self.host.set_handler(
                &self.config.protocol,
                Arc::new(move |s| host::Extension::handle_stream(server.clone(), s)),
            );
        } else {
            self.host.remove_handler(&self.config.protocol);
        }
        tracing::info!("DHT mode: {}", if on { "server" } else { "client" });
    }

    /// Joins through the bootstrap peers and runs the periodic refresh.
    pub fn start(self: &Arc<Self>) {
        let me = self.clone();
        let shutdown = self.host.shutdown_token();
        let Some(every) = self.config.refresh_interval else {
            self.host.spawn(async move { me.join().await });
            return;
        };
        self.host.spawn_supervised("kad_refresh", async move {
            me.join().await;
            loop {
                // The first run right after joining, then periodically.
                me.refresh().await;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                if me.table_len() == 0 {
                    me.join().await;
                }
            }
        });
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &KadStore {
        &self.store
    }

    /// Peers in the routing table.
    pub fn table_len(&self) -> usize {
        lock(&self.table).len()
    }

    /// A snapshot of the routing table's entries.
    pub fn table_entries(&self) -> Vec<table::Entry> {
        lock(&self.table).iter().cloned().collect()
    }

    /// Estimated number of DHT servers, once a lookup gave enough data.
    pub fn network_size(&self) -> Option<f64> {
        *lock(&self.network_size)
    }

    /// Puts the saved routing-table peers back, with the last time each was seen.
    fn warm_start(&self) {
        let saved = match self.store.saved_peers() {
            Ok((saved, dropped)) => {
                self.metrics.storage.dropped("kad_table", dropped as u64);
                saved
            }
            Err(e) => {
                tracing::warn!("kad: saved routing table unreadable: {e}");
                return;
            }
        };
        let mut table = lock(&self.table);
        for p in saved {
            if !matches!(
                table.insert(p.peer, p.addrs, p.last_seen_ms),
                table::Insert::Added
            ) {
                let _ = self.store.forget_peer(&p.peer);
            }
        }
        self.metrics.kad_table_peers.set(table.len() as i64);
    }

    /// After the database recovered from a failure: recount what it holds, rebuild the
    /// provider index from it, and save the routing table as it is in memory (entries
    /// added, refreshed or removed during the outage included). Runs on the storage
    /// thread.
    fn write_back(&self) {
        if let Err(e) = self.store.sweep(now_ms()) {
            tracing::debug!("kad: recounting the store failed: {e}");
        }
        self.update_store_gauges();
        if !self.config.persist_table {
            return;
        }
        let peers: Vec<PeerId> = lock(&self.table).iter().map(|e| e.peer).collect();
        if let Ok(keys) = self.store.saved_peer_keys() {
            let held: HashSet<Vec<u8>> = peers.iter().map(|p| p.to_bytes()).collect();
            for k in keys.iter().filter(|k| !held.contains(*k)) {
                if let Ok(p) = PeerId::from_bytes(k) {
                    let _ = self.store.forget_peer(&p);
                }
            }
        }
        for p in &peers {
            self.save(p);
        }
    }

    /// Takes a peer out of the table (and its saved copy).
    fn forget(&self, peer: &PeerId) {
        if lock(&self.table).remove(peer).is_some() {
            if self.config.persist_table {
                let _ = self.store.forget_peer(peer);
            }
            self.metrics.kad_table_peers.set(self.table_len() as i64);
        }
    }

    /// Saves a table peer's current entry.
    fn save(&self, peer: &PeerId) {
        if !self.config.persist_table {
            return;
        }
        let entry = lock(&self.table).get(peer).cloned();
        if let Some(e) = entry {
            let saved = store::SavedPeer {
                peer: e.peer,
                addrs: e.addrs,
                added_ms: e.added_ms,
                last_seen_ms: e.last_seen_ms,
            };
            if let Err(e) = self.store.save_peer(&saved) {
                tracing::warn!("kad: saving a table peer failed: {e}");
            }
        }
    }

    fn update_store_gauges(&self) {
        let c = self.store.counts();
        self.metrics.kad_records.set(c.records as i64);
        self.metrics.kad_provider_records.set(c.providers as i64);
    }

    fn inbound_count(&self, kind: &'static str, outcome: &'static str) {
        self.metrics
            .kad_inbound
            .get_or_create(&KadLabels { kind, outcome })
            .inc();
    }

    fn outbound_count(&self, kind: &'static str, outcome: &'static str) {
        self.metrics
            .kad_outbound
            .get_or_create(&KadLabels { kind, outcome })
            .inc();
    }

    // ---- routing table upkeep ------------------------------------------------------

    fn on_identified(self: &Arc<Self>, info: &identify::Info) {
        let serves = info.protocols.iter().any(|p| *p == self.config.protocol);
        if !serves {
            // Client-mode peers stay out; a peer that stopped serving leaves.
            self.forget(&info.peer);
            return;
        }
        let addrs = match &info.record {
            Some(record) => record.addrs().to_vec(),
            None => info.listen_addrs.clone(),
        };
        self.consider(info.peer, addrs);
    }

    /// Offers a peer known to serve the protocol to the table.
    pub fn consider(self: &Arc<Self>, peer: PeerId, mut addrs: Vec<Multiaddr>) {
        if self.is_excluded(&peer) {
            return;
        }
        addrs.truncate(MAX_PEER_ADDRS);
        let outcome = lock(&self.table).insert(peer, addrs.clone(), now_ms());
        match outcome {
            table::Insert::Added => {
                self.metrics.kad_table_peers.set(self.table_len() as i64);
                // Durable at the storage's next periodic flush (no flush per insert:
                // the table is our own soft state).
                self.save(&peer);
            }
            table::Insert::Updated => self.save(&peer),
            table::Insert::Full { oldest } => self.check_then_replace(oldest, peer, addrs),
            table::Insert::Refused(r) => {
                self.metrics
                    .kad_table_refusals
                    .get_or_create(&ReasonLabels { reason: r.label() })
                    .inc();
            }
        }
    }

    /// Adds a peer the caller vouches for (serves the protocol at `addrs`) without a
    /// liveness check of a full bucket's oldest peer: static peers, tests, benchmarks.
    pub fn add_peer(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> table::Insert {
        if self.is_excluded(&peer) {
            return table::Insert::Refused(table::Refusal::Excluded);
        }
        let outcome = lock(&self.table).insert(peer, addrs, now_ms());
        if outcome == table::Insert::Added {
            self.metrics.kad_table_peers.set(self.table_len() as i64);
            self.save(&peer);
        }
        outcome
    }

    /// A full bucket: the newcomer takes the oldest peer's place only if that one is gone.
    fn check_then_replace(self: &Arc<Self>, oldest: PeerId, peer: PeerId, addrs: Vec<Multiaddr>) {
        {
            let mut checking = lock(&self.checking);
            if checking.len() >= MAX_CHECKS || !checking.insert(oldest) {
                return;
            }
        }
        let me = self.clone();
        self.host.spawn(async move {
            let alive = me.check_alive(&oldest).await;
            lock(&me.checking).remove(&oldest);
            match alive {
                Some(true) => {
                    lock(&me.table).seen(&oldest, now_ms());
                    me.save(&oldest);
                }
                Some(false) => {
                    me.forget(&oldest);
                    me.consider(peer, addrs);
                }
                None => {} // could not tell: the incumbent stays
            }
        });
    }

    /// Does a table peer still answer the DHT protocol? (Dial if needed, then a FIND_NODE
    /// for our own key: the protocol it is in the table for, not ping, which a DHT peer
    /// need not serve.) `None` when the dial failed for a reason of ours (no address we
    /// may dial, limits, backoff, shutdown).
    async fn check_alive(&self, peer: &PeerId) -> Option<bool> {
        let addrs = lock(&self.table)
            .get(peer)
            .map(|e| e.addrs.clone())
            .unwrap_or_default();
        let msg = proto::Message::new(MessageType::FindNode, self.host.peer_id().to_bytes());
        match self.request(*peer, &addrs, &msg, true).await {
            Ok(Some(_)) => Some(true),
            Err(Error::Dial(e)) if !unreachable(&e) => None,
            _ => Some(false),
        }
    }

    /// Dials the bootstrap peers and waits (a few seconds at most) for identify to put
    /// the ones that serve the protocol in the table.
    pub async fn join(&self) {
        if self.config.bootstrap.is_empty() {
            return;
        }
        let dials = self.config.bootstrap.iter().map(|a| async move {
            if let Err(e) = self.host.dial(a).await {
                tracing::debug!("kad bootstrap peer {a}: {e}");
            }
        });
        futures::future::join_all(dials).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.table_len() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One refresh run: our own key, a random key in each non-empty bucket we can aim at,
    /// then liveness checks of peers not seen for a while.
    pub async fn refresh(self: &Arc<Self>) {
        let own = self.host.peer_id().to_bytes();
        let _ = self.lookup(own, MessageType::FindNode, None).await;
        let buckets: Vec<usize> = {
            let t = lock(&self.table);
            t.bucket_sizes()
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, _)| i)
                .collect()
        };
        for b in buckets.into_iter().rev().take(16) {
            if let Some(target) = self.random_peer_in_bucket(b) {
                let _ = self
                    .lookup(target.to_bytes(), MessageType::FindNode, None)
                    .await;
            }
        }
        let stale = {
            let before = now_ms().saturating_sub(self.config.liveness_interval.as_millis() as u64);
            lock(&self.table).stale(before, MAX_CHECKS * 4)
        };
        let checks = stale.into_iter().map(|p| async move {
            match self.check_alive(&p).await {
                Some(true) => lock(&self.table).seen(&p, now_ms()),
                Some(false) => self.forget(&p),
                None => {}
            }
        });
        futures::stream::iter(checks)
            .buffer_unordered(MAX_CHECKS)
            .collect::<Vec<()>>()
            .await;
        self.metrics.kad_table_peers.set(self.table_len() as i64);
        if self.config.persist_table {
            let peers: Vec<PeerId> = lock(&self.table).iter().map(|e| e.peer).collect();
            for p in &peers {
                self.save(p);
            }
        }
        if let Ok(swept) = self.store.sweep(now_ms()) {
            if swept.removed() > 0 {
                self.update_store_gauges();
            }
        }
    }

    /// A random PeerId (SHA-256 multihash) whose key falls in bucket `b`, when one can be
    /// found by chance in a few thousand tries (the nearer buckets are out of reach).
    fn random_peer_in_bucket(&self, b: usize) -> Option<PeerId> {
        let local = *lock(&self.table).local_key();
        for _ in 0..4096 {
            let mut mh = vec![0x12, 0x20];
            mh.extend_from_slice(&rand::random::<[u8; 32]>());
            let peer = PeerId::from_bytes(&mh).ok()?;
            if local.distance(&Key::from_peer(&peer)).bucket() == Some(b) {
                return Some(peer);
            }
        }
        None
    }

    // ---- server --------------------------------------------------------------------

    async fn serve(&self, mut stream: Stream) {
        let peer = stream.peer();
        let remote = stream.connection().remote_addr().clone();
        let public_requester = addresses::is_public(&remote);
        let group = IpPrefix::of_addr(&remote, IpPrefix::GROUP.0, IpPrefix::GROUP.1)
            .filter(|_| public_requester || self.config.limit_private_subnets);
        let Ok(_permit) = self.inbound.clone().try_acquire_owned() else {
            self.metrics.protocol_error("kad", "streams_full");
            return; // dropped: reset
        };
        {
            let mut m = lock(&self.streams_per_peer);
            let n = m.entry(peer).or_insert(0);
            if *n >= self.config.max_inbound_streams_per_peer {
                drop(m);
                self.metrics.protocol_error("kad", "peer_streams_full");
                return;
            }
            *n += 1;
        }
        let _guard = PeerStreamGuard { kad: self, peer };
        let max = self.config.max_message_len;
        loop {
            let read = varint::read_frame(&mut stream, max);
            let frame = match tokio::time::timeout(self.config.stream_idle_timeout, read).await {
                Err(_) => break,
                Ok(Ok(f)) => f,
                Ok(Err(FrameError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    break
                }
                Ok(Err(FrameError::Decode(varint::DecodeError::TooLarge { .. }))) => {
                    self.metrics.protocol_error("kad", "too_large");
                    return;
                }
                Ok(Err(FrameError::Decode(_))) => {
                    self.metrics.protocol_error("kad", "truncated");
                    return;
                }
                Ok(Err(FrameError::Io(_))) => return,
            };
            let allowed = {
                let now = Instant::now();
                lock(&self.peer_limiter).allow(&peer, now)
                    && group.is_none_or(|g| lock(&self.group_limiter).allow(&g, now))
            };
            if !allowed {
                self.inbound_count("any", "rate_limited");
                self.metrics.protocol_error("kad", "rate_limited");
                return;
            }
            let Ok(msg) = proto::decode(&frame, max) else {
                self.metrics.protocol_error("kad", "malformed");
                return;
            };
            let Some(kind) = msg.kind() else {
                self.metrics.protocol_error("kad", "unknown_type");
                return;
            };
            let from = Requester {
                peer,
                remote: &remote,
                public: public_requester,
            };
            match self.handle(&from, msg).await {
                Ok(reply) => {
                    self.inbound_count(kind.label(), "ok");
                    if let Some(reply) = reply {
                        let write = async {
                            varint::write_frame(&mut stream, &reply.to_bytes()).await?;
                            stream.flush().await
                        };
                        if !matches!(
                            tokio::time::timeout(self.config.request_timeout, write).await,
                            Ok(Ok(()))
                        ) {
                            return;
                        }
                    }
                }
                Err(refusal) => {
                    self.inbound_count(kind.label(), refusal.label());
                    // Our database failing is not the peer's fault (counted by storage).
                    if refusal.is_peer_fault() {
                        self.metrics.protocol_error("kad", refusal.label());
                    }
                    return;
                }
            }
        }
        let _ = tokio::time::timeout(self.config.request_timeout, stream.shutdown()).await;
    }

    /// Answers one request ([`server::Server::answer`] over the table, the store and the
    /// peerstore), doing the store write it asks for; `Err` is the counted reason the
    /// stream is reset.
    async fn handle(
        &self,
        from: &Requester<'_>,
        msg: proto::Message,
    ) -> Result<Option<proto::Message>, server::Refusal> {
        let now = now_ms();
        match self.answer(from, msg, now)? {
            Answer::Reply(reply) => {
                self.notice_get(from, &reply);
                Ok(Some(reply))
            }
            Answer::Store(accepted) => {
                self.store
                    .put(accepted.key(), accepted.value(), now)
                    .await?;
                self.update_store_gauges();
                Ok(Some(accepted.into_echo()))
            }
            Answer::Provide {
                key,
                addrs,
                foreign,
            } => {
                for _ in 0..foreign {
                    self.metrics.protocol_error("kad", "foreign_provider");
                }
                if let Some(addrs) = addrs {
                    self.store
                        .add_provider(&key, from.peer, &addrs, now)
                        .await?;
                    self.update_store_gauges();
                }
                Ok(None)
            }
        }
    }

    /// Tells the GET hook of a GET_PROVIDERS or GET_VALUE answered.
    fn notice_get(&self, from: &Requester<'_>, reply: &proto::Message) {
        let found = match reply.kind() {
            Some(MessageType::GetProviders) => !reply.provider_peers.is_empty(),
            Some(MessageType::GetValue) => reply.record.is_some(),
            _ => return,
        };
        let hook = lock(&self.get_hook).clone();
        if let (Some(hook), Some(kind)) = (hook, reply.kind()) {
            hook(Get {
                kind,
                key: reply.key.clone(),
                from: from.peer,
                found,
            });
        }
    }

    /// The pure answer to one request, with the table locked while it is read.
    fn answer(
        &self,
        from: &Requester<'_>,
        msg: proto::Message,
        now: u64,
    ) -> Result<Answer, server::Refusal> {
        let table = lock(&self.table);
        let server = server::Server {
            config: &self.config,
            table: &table,
            store: &self.store,
            peers: &HostPeers(self),
        };
        server.answer(from, msg, now)
    }

    // ---- client --------------------------------------------------------------------

    /// Sends one request on a new stream and reads the reply when one is expected.
    async fn request(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
        msg: &proto::Message,
        want_reply: bool,
    ) -> Result<Option<proto::Message>, Error> {
        let kind = msg.kind().map_or("unknown", MessageType::label);
        let max = self.config.max_message_len;
        let exchange = async {
            let conn = self.host.connect(peer, addrs).await?;
            let mut stream = conn.open_stream_lazy(&self.config.protocol).await?;
            varint::write_frame(&mut stream, &msg.to_bytes()).await?;
            stream.flush().await?;
            let reply = if want_reply {
                let frame = varint::read_frame(&mut stream, max).await?;
                Some(proto::decode(&frame, max).map_err(|_| Error::Malformed)?)
            } else {
                None
            };
            let _ = stream.shutdown().await;
            Ok::<_, Error>(reply)
        };
        let result = match tokio::time::timeout(self.config.request_timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout),
        };
        match &result {
            Ok(_) => self.outbound_count(kind, "ok"),
            Err(e) => self.outbound_count(kind, e.label()),
        }
        result
    }

    /// One request to one peer, and its reply (not for ADD_PROVIDER, which has none).
    pub async fn query(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
        msg: &proto::Message,
    ) -> Result<proto::Message, Error> {
        self.request(peer, addrs, msg, true)
            .await?
            .ok_or(Error::NoReply)
    }

    /// An iterative lookup of `key` with `kind` requests (FIND_NODE, GET_VALUE or
    /// GET_PROVIDERS), per `specs/kad-dht/README.md#peer-routing`. `enough` ends a value or
    /// provider lookup early once that many records or providers came in. The algorithm
    /// is [`lookup::Lookup`]; this drives it: sends the requests it asks for, feeds the
    /// answers back, and keeps the routing table up to date with what it learns.
    pub async fn lookup(&self, key: Vec<u8>, kind: MessageType, enough: Option<usize>) -> Outcome {
        // The whole lookup as one trace span (its requests are `connection.outbound` and
        // the remote's `stream.inbound` spans of their own).
        let span = tracing::info_span!(
            "kad.lookup",
            kind = ?kind,
            key = %hex_prefix(&key),
            key_len = key.len(),
        );
        tracing::Instrument::instrument(self.lookup_traced(key, kind, enough), span).await
    }

    async fn lookup_traced(
        &self,
        key: Vec<u8>,
        kind: MessageType,
        enough: Option<usize>,
    ) -> Outcome {
        let started = std::time::Instant::now();
        let k = self.config.table.k;
        let target = Key::new(&key);
        let seeds: Vec<Found> = lock(&self.table)
            .closest(&target, k)
            .into_iter()
            .map(|e| Found {
                peer: e.peer,
                addrs: e.addrs.clone(),
            })
            .collect();
        let config = lookup::Config {
            k,
            alpha: self.config.alpha,
            request_timeout: self.config.request_timeout,
            query_timeout: self.config.query_timeout,
            max_candidates: k * CANDIDATES_PER_K,
        };
        let mut core = lookup::Lookup::new(
            clock(),
            target,
            self.host.peer_id(),
            seeds,
            lookup::Enough::of(kind, enough),
            config,
        );
        let request = proto::Message::new(kind, key.clone());
        let mut in_flight = FuturesUnordered::new();
        loop {
            let now = clock();
            let wake = loop {
                match core.poll(now) {
                    lookup::Poll::Request(found) => {
                        let request = &request;
                        let public = found.addrs.iter().any(crate::addresses::is_public);
                        in_flight.push(async move {
                            let r = self.request(found.peer, &found.addrs, request, true).await;
                            (found.peer, public, r)
                        });
                    }
                    lookup::Poll::Wait(until) => break Some(until),
                    lookup::Poll::Done => break None,
                }
            };
            let Some(wake) = wake else { break };
            tokio::select! {
                Some((peer, public, result)) = in_flight.next() => {
                    let now = clock();
                    match result {
                        Ok(Some(reply)) => {
                            let wall_ms = now_ms();
                            lock(&self.table).seen(&peer, wall_ms);
                            let validators = &self.config.validators;
                            let mut response =
                                lookup::Response::from_message(reply, &key, |value| {
                                    validators.validate(&key, value, wall_ms).is_ok()
                                });
                            if public {
                                let dropped = response.keep_public();
                                if dropped > 0 {
                                    self.metrics.kad_private_addrs_dropped.inc_by(dropped as u64);
                                }
                            }
                            core.handle_success(now, &peer, response);
                        }
                        Ok(None) | Err(_) => {
                            if let Err(Error::Dial(e)) = &result {
                                if unreachable(e) {
                                    // It leaves the table (and comes back through identify
                                    // when it connects again).
                                    self.forget(&peer);
                                }
                            }
                            core.handle_failure(now, &peer);
                        }
                    }
                }
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            }
        }
        let out = core.finish();
        self.estimate_size(&target, &out.closest);
        let labels = crate::metrics::KadQueryLabels {
            r#type: match kind {
                MessageType::GetValue => "GetRecord",
                MessageType::GetProviders => "GetProviders",
                _ => "GetClosestPeers",
            },
        };
        let m = &self.metrics;
        m.kad_query_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        m.kad_query_requests
            .get_or_create(&labels)
            .observe(out.queried as f64);
        m.kad_query_success
            .get_or_create(&labels)
            .observe(out.queried.saturating_sub(out.failed) as f64);
        m.kad_query_failure
            .get_or_create(&labels)
            .observe(out.failed as f64);
        out
    }

    /// Updates the network size estimate from the distances of a lookup's closest peers:
    /// the i-th closest of N uniformly spread keys sits near i/(N+1) of the keyspace.
    fn estimate_size(&self, target: &Key, closest: &[Found]) {
        if closest.len() < 4 {
            return;
        }
        let estimates: Vec<f64> = closest
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let d = Key::from_peer(&f.peer).distance(target);
                let top = u64::from_be_bytes(d.as_bytes()[..8].try_into().unwrap_or([0xff; 8]));
                let share = (top as f64 + 1.0) / 18_446_744_073_709_551_616.0;
                (i as f64 + 1.0) / share - 1.0
            })
            .collect();
        let sample = estimates.iter().sum::<f64>() / estimates.len() as f64;
        let mut size = lock(&self.network_size);
        let next = match *size {
            Some(prev) => prev * 0.8 + sample * 0.2,
            None => sample,
        };
        *size = Some(next);
        self.metrics.kad_network_size.set(next.round() as i64);
    }

    /// Fills the routing table from the peers it has: a lookup of our own key.
    pub async fn bootstrap(&self) -> Result<usize, Error> {
        if self.table_len() == 0 {
            return Err(Error::NoPeers);
        }
        self.lookup(self.host.peer_id().to_bytes(), MessageType::FindNode, None)
            .await;
        Ok(self.table_len())
    }

    /// The k closest DHT servers to `key` the network knows.
    pub async fn closest_peers(&self, key: &[u8]) -> Vec<Found> {
        self.lookup(key.to_vec(), MessageType::FindNode, None)
            .await
            .closest
    }

    /// Stores a record locally (in server mode) and on the k closest peers; returns how
    /// many peers acknowledged it.
    pub async fn put_value(&self, key: &[u8], value: &[u8]) -> Result<usize, Error> {
        let now = now_ms();
        self.config.validators.validate(key, value, now)?;
        if self.is_server() {
            self.store.put(key, value, now).await?;
            self.update_store_gauges();
        }
        let closest = self.closest_peers(key).await;
        let mut msg = proto::Message::new(MessageType::PutValue, key.to_vec());
        msg.record = Some(proto::Record {
            key: key.to_vec(),
            value: value.to_vec(),
            time_received: String::new(),
        });
        let msg = &msg;
        let acks = futures::stream::iter(closest)
            .map(|f| async move {
                matches!(
                    self.request(f.peer, &f.addrs, msg, true).await,
                    Ok(Some(echo)) if echo.record == msg.record
                )
            })
            .buffer_unordered(self.config.alpha.max(1))
            .filter(|ok| futures::future::ready(*ok))
            .count()
            .await;
        if acks == 0 && !self.is_server() {
            return Err(Error::NoPeers);
        }
        Ok(acks)
    }

    /// The best valid record for `key`: ours, else the first one the network gives.
    pub async fn get_value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let now = now_ms();
        let local = self.store.get(key, now)?.map(|r| r.value);
        let mut values: Vec<Vec<u8>> = local.into_iter().collect();
        if values.is_empty() {
            let found = self
                .lookup(key.to_vec(), MessageType::GetValue, Some(1))
                .await;
            values.extend(found.records.into_iter().map(|(_, v)| v));
        }
        if values.is_empty() {
            return Ok(None);
        }
        let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let best = self.config.validators.select(key, &refs);
        Ok(values.into_iter().nth(best))
    }

    /// Announces us as a provider of `key` to the k closest peers (and records it locally
    /// in server mode); returns to how many peers the announcement went.
    pub async fn provide(&self, key: &[u8]) -> Result<usize, Error> {
        let now = now_ms();
        let own_addrs = self.identify.advertised_addrs();
        if self.is_server() {
            self.store
                .add_provider(key, self.host.peer_id(), &own_addrs, now)
                .await?;
            self.update_store_gauges();
        }
        let closest = self.closest_peers(key).await;
        let mut msg = proto::Message::new(MessageType::AddProvider, key.to_vec());
        msg.provider_peers.push(proto::Peer {
            id: self.host.peer_id().to_bytes(),
            addrs: own_addrs.iter().map(|a| a.to_vec()).collect(),
            connection: proto::ConnectionType::Connected as i32,
        });
        let msg = &msg;
        let sent = futures::stream::iter(closest)
            .map(|f| async move { self.request(f.peer, &f.addrs, msg, false).await.is_ok() })
            .buffer_unordered(self.config.alpha.max(1))
            .filter(|ok| futures::future::ready(*ok))
            .count()
            .await;
        Ok(sent)
    }

    /// Providers of `key`: the ones we hold, then the network's, up to `want`.
    pub async fn providers(&self, key: &[u8], want: usize) -> Result<Vec<Found>, Error> {
        let now = now_ms();
        let mut out: Vec<Found> = self
            .store
            .providers(key, now)?
            .into_iter()
            .map(|p| Found {
                peer: p.peer,
                addrs: p.addrs,
            })
            .collect();
        if out.len() < want {
            let found = self
                .lookup(
                    key.to_vec(),
                    MessageType::GetProviders,
                    Some(want - out.len()),
                )
                .await;
            for f in found.providers {
                if !out.iter().any(|o| o.peer == f.peer) {
                    out.push(f);
                }
            }
        }
        out.truncate(want);
        Ok(out)
    }
}

/// Kad's inbound side on the host: the streams of the DHT protocol, served.
struct Server(Arc<Kad>);

impl host::Extension for Server {
    fn protocol_ids(&self) -> Vec<String> {
        vec![self.0.config.protocol.clone()]
    }

    fn handle_stream(self: Arc<Self>, stream: Stream) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move { self.0.serve(stream).await })
    }
}

/// The first 16 bytes of a key in hex, for spans (keys can be long).
fn hex_prefix(key: &[u8]) -> String {
    key.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::node::{self, Node};

    // The answers themselves are tested without a host in `server.rs`; this checks the
    // driver's view of the peerstore, identify and the table.
    #[tokio::test]
    async fn the_driver_answers_from_its_table_peerstore_and_identify() {
        let config = node::Config {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            kad: Some(Config {
                server: true,
                refresh_interval: None,
                ..Config::default()
            }),
            ..Default::default()
        };
        let node = Node::start_volatile(config, Metrics::unregistered())
            .await
            .unwrap();
        let kad = node.kad.as_ref().unwrap();
        let peer = || {
            crate::identity::Keypair::generate_ed25519()
                .public()
                .to_peer_id()
        };
        let ma = |s: &str| -> Multiaddr { s.parse().unwrap() };
        let listed = |answer: Result<Answer, server::Refusal>| -> HashMap<PeerId, Vec<Multiaddr>> {
            let Ok(Answer::Reply(reply)) = answer else {
                panic!("expected a reply");
            };
            reply
                .closer_peers
                .iter()
                .map(|p| (PeerId::from_bytes(&p.id).unwrap(), parse_addrs(&p.addrs)))
                .collect()
        };
        let remote = ma("/ip4/127.0.0.1/tcp/5");
        let from = Requester::new(peer(), &remote);
        let find = |key: Vec<u8>| proto::Message::new(MessageType::FindNode, key);
        // A table peer.
        let in_table = peer();
        kad.add_peer(in_table, vec![ma("/ip4/10.0.0.1/tcp/1")]);
        let got = listed(kad.answer(&from, find(b"k".to_vec()), now_ms()));
        assert_eq!(got[&in_table], vec![ma("/ip4/10.0.0.1/tcp/1")]);
        // Ourselves, with the addresses identify announces.
        let own = node.peer_id();
        let got = listed(kad.answer(&from, find(own.to_bytes()), now_ms()));
        assert_eq!(got[&own], node.identify.advertised_addrs_for(&remote));
        assert!(!got[&own].is_empty());
        // A peer the peerstore knows.
        let known = peer();
        node.peerstore.apply(
            known,
            crate::peerstore::Update {
                addrs: vec![ma("/ip4/10.9.9.9/tcp/1")],
                addr_ttl_ms: 60_000,
                ..Default::default()
            },
            now_ms(),
        );
        let got = listed(kad.answer(&from, find(known.to_bytes()), now_ms()));
        assert_eq!(got[&known], vec![ma("/ip4/10.9.9.9/tcp/1")]);
    }
}
