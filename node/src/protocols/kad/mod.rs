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
pub mod limits;
pub mod proto;
pub mod store;
pub mod table;
pub mod validator;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::{FuturesUnordered, StreamExt};
use multiaddr::Multiaddr;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::addresses;
use crate::host::{self, DialError, Host, Stream, StreamError};
use crate::identity::PeerId;
use crate::metrics::{KadLabels, Metrics, ReasonLabels};
use crate::peerstore::Peerstore;
use crate::protocols::identify;
use crate::varint::{self, FrameError};

pub use key::{Distance, Key};
pub use proto::MessageType;
pub use store::KadStore;
pub use table::{IpGroup, RoutingTable};
pub use validator::Validators;

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
    /// Serve the protocol (and advertise it through identify). Off: client mode.
    pub server: bool,
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
    #[error("bad response: {0}")]
    BadResponse(&'static str),
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
            Error::BadResponse(r) => r,
            Error::Timeout => "timeout",
            Error::Record(e) => e.label(),
            Error::Store(e) => e.label(),
            Error::NoPeers => "no_peers",
        }
    }
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => Error::Io(e),
            FrameError::Decode(_) => Error::BadResponse("malformed"),
        }
    }
}

/// A peer found by a lookup, with the addresses we got for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
}

/// What one lookup collected.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    /// The closest peers that answered, nearest first (at most k).
    pub closest: Vec<Found>,
    /// Valid records received (GET_VALUE), with the peer that sent each.
    pub records: Vec<(PeerId, Vec<u8>)>,
    /// Providers received (GET_PROVIDERS), deduplicated.
    pub providers: Vec<Found>,
    /// Peers asked, and how many of them failed.
    pub queried: usize,
    pub failed: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CandidateState {
    Waiting,
    InFlight,
    Answered,
    Failed,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
/// we may dial yet, our limits, backoff, shutdown)?
fn unreachable(e: &DialError) -> bool {
    matches!(
        e,
        DialError::Refused
            | DialError::Timeout
            | DialError::WrongPeer { .. }
            | DialError::NoCommonProtocol(_)
            | DialError::Handshake(_)
            | DialError::Io(_)
    )
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
    peer_limiter: Mutex<limits::RateLimiter<PeerId>>,
    group_limiter: Mutex<limits::RateLimiter<IpGroup>>,
    inbound: Arc<Semaphore>,
    streams_per_peer: Mutex<HashMap<PeerId, usize>>,
    checking: Mutex<HashSet<PeerId>>,
    network_size: Mutex<Option<f64>>,
    metrics: Arc<Metrics>,
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
            peer_limiter: Mutex::new(limits::RateLimiter::new(
                config.peer_rate.0,
                config.peer_rate.1,
                tracked,
            )),
            group_limiter: Mutex::new(limits::RateLimiter::new(
                config.group_rate.0,
                config.group_rate.1,
                tracked,
            )),
            inbound: Arc::new(Semaphore::new(config.max_inbound_streams.max(1))),
            streams_per_peer: Mutex::new(HashMap::new()),
            checking: Mutex::new(HashSet::new()),
            network_size: Mutex::new(None),
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
        if kad.config.server {
            let me = kad.clone();
            host.set_handler(
                &kad.config.protocol,
                host::handler(move |stream| {
                    let me = me.clone();
                    async move { me.serve(stream).await }
                }),
            );
        }
        let mut events = kad.identify.subscribe();
        let me = kad.clone();
        host.spawn(async move {
            loop {
                match events.recv().await {
                    Ok(identify::Event::Identified(info)) => me.on_identified(&info),
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        me.sweep_connected()
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        kad
    }

    /// Joins through the bootstrap peers and runs the periodic refresh.
    pub fn start(self: &Arc<Self>) {
        let me = self.clone();
        let shutdown = self.host.shutdown_token();
        self.host.spawn(async move {
            me.join().await;
            let Some(every) = me.config.refresh_interval else {
                return;
            };
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

    /// After missed identify events: offers every connected peer the peerstore says
    /// serves the protocol.
    fn sweep_connected(self: &Arc<Self>) {
        let now = now_ms();
        for peer in self.host.connected_peers() {
            let found = self.peerstore.inspect(&peer, |i| {
                let serves = i.protocols.iter().any(|p| *p == self.config.protocol);
                let addrs = match &i.record {
                    Some(r) => r.addrs().to_vec(),
                    None => i.live_addrs(now),
                };
                serves.then_some(addrs)
            });
            if let Some(Some(addrs)) = found {
                self.consider(peer, addrs);
            }
        }
    }

    /// Offers a peer known to serve the protocol to the table.
    pub fn consider(self: &Arc<Self>, peer: PeerId, mut addrs: Vec<Multiaddr>) {
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
        let group = IpGroup::of_addr(&remote)
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
            match self
                .handle(peer, &remote, public_requester, kind, msg)
                .await
            {
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
                Err(reason) => {
                    self.inbound_count(kind.label(), reason);
                    // Our database failing is not the peer's fault (counted by storage).
                    if reason != "storage" {
                        self.metrics.protocol_error("kad", reason);
                    }
                    return;
                }
            }
        }
        let _ = tokio::time::timeout(self.config.request_timeout, stream.shutdown()).await;
    }

    /// Answers one request; `Err` is the counted reason the stream is reset.
    async fn handle(
        &self,
        from: PeerId,
        remote: &Multiaddr,
        public_requester: bool,
        kind: MessageType,
        msg: proto::Message,
    ) -> Result<Option<proto::Message>, &'static str> {
        let now = now_ms();
        if kind != MessageType::Ping
            && (msg.key.is_empty() || msg.key.len() > self.config.store.max_key_len)
        {
            return Err("bad_key");
        }
        match kind {
            MessageType::FindNode => {
                let mut reply = proto::Message::new(kind, msg.key.clone());
                reply.closer_peers =
                    self.closer_peers(from, remote, public_requester, &msg.key, true);
                Ok(Some(reply))
            }
            MessageType::GetValue => {
                let mut reply = proto::Message::new(kind, msg.key.clone());
                if let Some(r) = self.store.get(&msg.key, now).map_err(|e| e.label())? {
                    reply.record = Some(proto::Record {
                        key: r.key,
                        value: r.value,
                        time_received: validator::format_rfc3339(r.received_ms),
                    });
                }
                if let Some(envelope) = self.peer_record_for(&msg.key, reply.record.as_ref()) {
                    reply.record = Some(proto::Record {
                        key: msg.key.clone(),
                        value: envelope,
                        time_received: validator::format_rfc3339(now),
                    });
                }
                reply.closer_peers =
                    self.closer_peers(from, remote, public_requester, &msg.key, false);
                Ok(Some(reply))
            }
            MessageType::PutValue => {
                let record = msg.record.as_ref().ok_or("no_record")?;
                if record.key != msg.key {
                    return Err("key_mismatch");
                }
                self.config
                    .validators
                    .validate(&record.key, &record.value, now)
                    .map_err(|e| e.label())?;
                if let Some(held) = self.store.get(&record.key, now).map_err(|e| e.label())? {
                    if held.value != record.value
                        && self
                            .config
                            .validators
                            .select(&record.key, &[&held.value, &record.value])
                            == 0
                    {
                        return Err("outdated");
                    }
                }
                self.store
                    .put(&record.key, &record.value, now)
                    .await
                    .map_err(|e| e.label())?;
                self.update_store_gauges();
                //= specs/kad-dht/README.md#rpc-messages
                //# The target node validates `record`, and if it is valid, it stores it in
                //# the datastore and as a response echoes the request.
                Ok(Some(msg))
            }
            MessageType::AddProvider => {
                //= specs/kad-dht/README.md#rpc-messages
                //# all `providerPeers` that match the RPC sender's PeerID are recorded as
                //# providers.
                // The sender's first entry is its record (one store write, however many
                // times it repeats itself); entries for other peers are counted, not kept.
                let mut own = None;
                for p in msg.provider_peers.iter().take(MAX_RESPONSE_PEERS) {
                    if PeerId::from_bytes(&p.id).ok() != Some(from) {
                        self.metrics.protocol_error("kad", "foreign_provider");
                    } else if own.is_none() {
                        own = Some(parse_addrs(&p.addrs));
                    }
                }
                if let Some(addrs) = own {
                    self.store
                        .add_provider(&msg.key, from, &addrs, now)
                        .await
                        .map_err(|e| e.label())?;
                    self.update_store_gauges();
                }
                Ok(None)
            }
            MessageType::GetProviders => {
                let mut reply = proto::Message::new(kind, msg.key.clone());
                let providers = self.store.providers(&msg.key, now).map_err(|e| e.label())?;
                reply.provider_peers = providers
                    .iter()
                    .map(|p| {
                        self.peer_entry(&p.peer, &p.addrs, public_requester)
                            .unwrap_or_else(|| proto::Peer {
                                id: p.peer.to_bytes(),
                                ..Default::default()
                            })
                    })
                    .collect();
                reply.closer_peers =
                    self.closer_peers(from, remote, public_requester, &msg.key, false);
                Ok(Some(reply))
            }
            MessageType::Ping => Ok(Some(msg)),
        }
    }

    /// For a `/peer-record/<id>` key: the peer's verified signed record from the
    /// peerstore (or ours), when it is newer than the stored value.
    fn peer_record_for(&self, key: &[u8], stored: Option<&proto::Record>) -> Option<Vec<u8>> {
        let (ns, id) = validator::split_key(key)?;
        if ns != validator::PEER_RECORD_NAMESPACE.as_bytes() {
            return None;
        }
        let peer = PeerId::from_bytes(id).ok()?;
        let envelope = if peer == self.host.peer_id() {
            self.identify.own_record()?
        } else {
            self.peerstore
                .inspect(&peer, |i| i.record.as_ref().map(|r| r.envelope().to_vec()))??
        };
        match stored {
            Some(s)
                if self
                    .config
                    .validators
                    .select(key, &[s.value.as_slice(), envelope.as_slice()])
                    == 0 =>
            {
                None
            }
            _ => Some(envelope),
        }
    }

    /// A peer as we describe it to others: addresses from its verified signed record
    /// when we hold one, else `known`, else the peerstore's; private ones only to
    /// private requesters. `None` when no address is left.
    fn peer_entry(
        &self,
        peer: &PeerId,
        known: &[Multiaddr],
        public_requester: bool,
    ) -> Option<proto::Peer> {
        let now = now_ms();
        let mut addrs: Vec<Multiaddr> = self
            .peerstore
            .inspect(peer, |info| match &info.record {
                Some(record) => record.addrs().to_vec(),
                None if !known.is_empty() => known.to_vec(),
                None => info.live_addrs(now),
            })
            .unwrap_or_else(|| known.to_vec());
        if public_requester && !self.config.private_addrs_to_public {
            addrs.retain(addresses::is_public);
        }
        addrs.truncate(MAX_PEER_ADDRS);
        if addrs.is_empty() {
            return None;
        }
        let connected = self.host.connection(peer).is_some();
        Some(proto::Peer {
            id: peer.to_bytes(),
            addrs: addrs.iter().map(|a| a.to_vec()).collect(),
            connection: if connected {
                proto::ConnectionType::Connected
            } else {
                proto::ConnectionType::NotConnected
            } as i32,
        })
    }

    /// The k peers of our table closest to `key`, never the requester. For FIND_NODE of
    /// a specific peer we also add that peer when we know where it is — ourselves
    /// included — as go-libp2p does (specs issue 609: rust-libp2p leaves itself out).
    fn closer_peers(
        &self,
        from: PeerId,
        remote: &Multiaddr,
        public_requester: bool,
        key: &[u8],
        find_node: bool,
    ) -> Vec<proto::Peer> {
        let k = self.config.table.k;
        let target = Key::new(key);
        let seen_since = self
            .config
            .serve_verified_within
            .map_or(0, |w| now_ms().saturating_sub(w.as_millis() as u64));
        let closest: Vec<(PeerId, Vec<Multiaddr>)> = lock(&self.table)
            .closest_where(&target, k, |e| {
                e.peer != from && e.last_seen_ms >= seen_since
            })
            .into_iter()
            .map(|e| (e.peer, e.addrs.clone()))
            .collect();
        let mut out: Vec<proto::Peer> = closest
            .iter()
            .filter_map(|(p, addrs)| self.peer_entry(p, addrs, public_requester))
            .collect();
        if find_node {
            if let Ok(wanted) = PeerId::from_bytes(key) {
                let listed = closest.iter().any(|(p, _)| *p == wanted);
                if wanted != from && !listed {
                    let entry = if wanted == self.host.peer_id() {
                        let addrs = self.identify.advertised_addrs_for(remote);
                        (!addrs.is_empty()).then(|| proto::Peer {
                            id: wanted.to_bytes(),
                            addrs: addrs.iter().map(|a| a.to_vec()).collect(),
                            connection: proto::ConnectionType::Connected as i32,
                        })
                    } else {
                        self.peer_entry(&wanted, &[], public_requester)
                    };
                    out.extend(entry);
                }
            }
        }
        out
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
                Some(proto::decode(&frame, max).map_err(|_| Error::BadResponse("malformed"))?)
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
            .ok_or(Error::BadResponse("no reply"))
    }

    /// An iterative lookup of `key` with `kind` requests (FIND_NODE, GET_VALUE or
    /// GET_PROVIDERS), per `specs/kad-dht/README.md#peer-routing`. `enough` ends a value or
    /// provider lookup early once that many records or providers came in.
    pub async fn lookup(&self, key: Vec<u8>, kind: MessageType, enough: Option<usize>) -> Lookup {
        let k = self.config.table.k;
        let target = Key::new(&key);
        let local = self.host.peer_id();
        let mut candidates: BTreeMap<Distance, (Found, CandidateState)> = BTreeMap::new();
        for e in lock(&self.table).closest(&target, k) {
            candidates.insert(
                e.key.distance(&target),
                (
                    Found {
                        peer: e.peer,
                        addrs: e.addrs.clone(),
                    },
                    CandidateState::Waiting,
                ),
            );
        }
        let mut out = Lookup::default();
        let mut seen_providers = HashSet::new();
        let request = proto::Message::new(kind, key.clone());
        let deadline = tokio::time::Instant::now() + self.config.query_timeout;
        let mut in_flight = FuturesUnordered::new();
        loop {
            //= specs/kad-dht/README.md#peer-routing
            //# The lookup terminates when the initiator has queried and gotten responses
            //# from the k (see [replication parameter `k`](#replication-parameter-k))
            //# closest nodes it has seen.
            let closest_answered = candidates
                .values()
                .filter(|(_, s)| *s != CandidateState::Failed)
                .take(k)
                .all(|(_, s)| *s == CandidateState::Answered);
            let satisfied = enough.is_some_and(|n| match kind {
                MessageType::GetValue => out.records.len() >= n,
                MessageType::GetProviders => out.providers.len() >= n,
                _ => false,
            });
            if closest_answered || satisfied {
                break;
            }
            //= specs/kad-dht/README.md#peer-routing
            //# Pick as many peers from the candidate peers (`Pn`) as the `α` concurrency
            //# factor allows.
            while in_flight.len() < self.config.alpha.max(1) {
                let Some((d, (found, state))) = candidates
                    .iter_mut()
                    .find(|(_, (_, s))| *s == CandidateState::Waiting)
                else {
                    break;
                };
                *state = CandidateState::InFlight;
                out.queried += 1;
                let (d, found) = (*d, found.clone());
                let request = &request;
                in_flight.push(async move {
                    let r = self.request(found.peer, &found.addrs, request, true).await;
                    (d, found, r)
                });
            }
            if in_flight.is_empty() {
                break;
            }
            let Ok(Some((d, found, result))) =
                tokio::time::timeout_at(deadline, in_flight.next()).await
            else {
                break;
            };
            let reply = match result {
                Ok(Some(reply)) => reply,
                Ok(None) | Err(_) => {
                    if let Err(Error::Dial(e)) = &result {
                        if unreachable(e) {
                            // It leaves the table (and comes back through identify when
                            // it connects again).
                            self.forget(&found.peer);
                        }
                    }
                    out.failed += 1;
                    if let Some((_, s)) = candidates.get_mut(&d) {
                        *s = CandidateState::Failed;
                    }
                    continue;
                }
            };
            if let Some((_, s)) = candidates.get_mut(&d) {
                *s = CandidateState::Answered;
            }
            lock(&self.table).seen(&found.peer, now_ms());
            for p in reply.closer_peers.iter().take(MAX_RESPONSE_PEERS) {
                let Some(f) = parse_peer(p) else { continue };
                if f.peer == local || f.addrs.is_empty() {
                    continue;
                }
                candidates
                    .entry(Key::from_peer(&f.peer).distance(&target))
                    .or_insert((f, CandidateState::Waiting));
            }
            // Remember a bounded number of candidates: drop the farthest waiting ones.
            while candidates.len() > k * CANDIDATES_PER_K {
                let far = candidates
                    .iter()
                    .rev()
                    .find(|(_, (_, s))| *s == CandidateState::Waiting)
                    .map(|(d, _)| *d);
                match far {
                    Some(d) => {
                        candidates.remove(&d);
                    }
                    None => break,
                }
            }
            if let Some(r) = &reply.record {
                if r.key == key
                    && self
                        .config
                        .validators
                        .validate(&r.key, &r.value, now_ms())
                        .is_ok()
                {
                    out.records.push((found.peer, r.value.clone()));
                }
            }
            for p in reply.provider_peers.iter().take(MAX_RESPONSE_PEERS) {
                if let Some(f) = parse_peer(p) {
                    if seen_providers.insert(f.peer) {
                        out.providers.push(f);
                    }
                }
            }
        }
        out.closest = candidates
            .into_values()
            .filter(|(_, s)| *s == CandidateState::Answered)
            .map(|(f, _)| f)
            .take(k)
            .collect();
        self.estimate_size(&target, &out.closest);
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
        if self.config.server {
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
        if acks == 0 && !self.config.server {
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
        if self.config.server {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::node::{self, Node};

    async fn server(verified_within: Option<Duration>) -> Node {
        let config = node::Config {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            kad: Some(Config {
                server: true,
                refresh_interval: None,
                serve_verified_within: verified_within,
                ..Config::default()
            }),
            ..Default::default()
        };
        Node::start_volatile(config, Metrics::unregistered())
            .await
            .unwrap()
    }

    fn peer() -> PeerId {
        crate::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    fn listed(reply: &[proto::Peer]) -> HashMap<PeerId, Vec<Multiaddr>> {
        reply
            .iter()
            .map(|p| (PeerId::from_bytes(&p.id).unwrap(), parse_addrs(&p.addrs)))
            .collect()
    }

    #[tokio::test]
    async fn public_requesters_get_only_public_addresses() {
        let node = server(None).await;
        let kad = node.kad.as_ref().unwrap();
        let (mixed, private) = (peer(), peer());
        kad.add_peer(
            mixed,
            vec![ma("/ip4/10.0.0.1/tcp/1"), ma("/ip4/8.8.8.8/tcp/1")],
        );
        kad.add_peer(private, vec![ma("/ip4/192.168.1.1/tcp/1")]);
        let from = peer();
        let key = peer().to_bytes();
        let public = listed(&kad.closer_peers(from, &ma("/ip4/9.9.9.9/tcp/5"), true, &key, true));
        assert_eq!(public.len(), 1, "the private-only peer is left out");
        assert_eq!(public[&mixed], vec![ma("/ip4/8.8.8.8/tcp/1")]);
        let local = listed(&kad.closer_peers(from, &ma("/ip4/10.1.1.1/tcp/5"), false, &key, true));
        assert_eq!(local.len(), 2);
        assert_eq!(local[&mixed].len(), 2);
        // Never the requester itself.
        let asked_by_mixed =
            listed(&kad.closer_peers(mixed, &ma("/ip4/10.1.1.1/tcp/5"), false, &key, true));
        assert!(!asked_by_mixed.contains_key(&mixed));
    }

    #[tokio::test]
    async fn only_recently_seen_peers_are_handed_out() {
        let node = server(Some(Duration::from_secs(3600))).await;
        let kad = node.kad.as_ref().unwrap();
        let (fresh, stale) = (peer(), peer());
        kad.add_peer(fresh, vec![ma("/ip4/10.0.0.1/tcp/1")]);
        let two_hours_ago = now_ms() - 2 * 3600 * 1000;
        lock(&kad.table).insert(stale, vec![ma("/ip4/10.0.0.2/tcp/1")], two_hours_ago);
        let remote = ma("/ip4/10.1.1.1/tcp/5");
        let key = peer().to_bytes();
        let got = listed(&kad.closer_peers(peer(), &remote, false, &key, false));
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![fresh]);
        // A liveness check or an answer refreshes it.
        lock(&kad.table).seen(&stale, now_ms());
        let got = listed(&kad.closer_peers(peer(), &remote, false, &key, false));
        assert_eq!(got.len(), 2);
    }

    #[tokio::test]
    async fn find_node_for_ourselves_or_a_known_peer_includes_it() {
        let node = server(None).await;
        let kad = node.kad.as_ref().unwrap();
        let remote = ma("/ip4/127.0.0.1/tcp/5");
        // Our own key: we answer with ourselves and our addresses, as go-libp2p does.
        let own = node.peer_id().to_bytes();
        let got = listed(&kad.closer_peers(peer(), &remote, false, &own, true));
        assert!(!got[&node.peer_id()].is_empty());
        // GET_VALUE/GET_PROVIDERS closer peers never list us.
        assert!(kad
            .closer_peers(peer(), &remote, false, &own, false)
            .is_empty());
        // A peer known to the peerstore but not in the table is added for FIND_NODE.
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
        let got = listed(&kad.closer_peers(peer(), &remote, false, &known.to_bytes(), true));
        assert_eq!(got[&known], vec![ma("/ip4/10.9.9.9/tcp/1")]);
        // ... but never to itself.
        assert!(kad
            .closer_peers(known, &remote, false, &known.to_bytes(), true)
            .is_empty());
    }
}
