//! The peerstore: what we know about other peers — addresses with TTLs, protocols, agent,
//! public key, latest verified signed peer record — kept in memory and written through
//! to a [`Store`] (sled by default) so it survives restarts.
//!
//! Bounded everywhere a remote can push: addresses and protocols per peer, and peers in
//! total (the least recently seen peer is evicted). The peerstore is the node's memory
//! of the network, not an acknowledgement to anyone: a mutation is written to the store
//! at once and made durable by the storage's next flush (within a second by default), and
//! a write that fails (a full disk) never stops the in-memory update — the whole
//! peerstore is written back when the storage recovers.
//! Time is an input: every method that ages data takes `now_ms` (Unix milliseconds).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use multiaddr::Multiaddr;
use prost::Message;

use crate::identity::{PeerId, PublicKey};
use crate::metrics::Metrics;
use crate::record::{self, VerifiedPeerRecord};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage: {0}")]
    Storage(String),
}

/// Every key-value pair of a store.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A small key-value engine behind the peerstore (and, later, other durable state).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Error>;
    fn delete(&self, key: &[u8]) -> Result<(), Error>;
    fn scan(&self) -> Result<Entries, Error>;
    /// Every pair whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, Error> {
        Ok(self
            .scan()?
            .into_iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .collect())
    }
    /// Every key, in key order, without the values (a listing that must not load them).
    fn keys(&self) -> Result<Vec<Vec<u8>>, Error> {
        Ok(self.scan()?.into_iter().map(|(k, _)| k).collect())
    }
    /// Makes every earlier write durable.
    async fn flush(&self) -> Result<(), Error>;
    /// Registers what to write back after the engine recovered from a failure (see
    /// [`crate::storage::ReopenHook`]); engines that cannot fail ignore it.
    fn on_reopen(&self, _hook: crate::storage::ReopenHook) {}
}

/// A volatile engine for tests and for nodes run without a data directory.
#[derive(Default)]
pub struct MemoryStore(Mutex<std::collections::BTreeMap<Vec<u8>, Vec<u8>>>);

impl MemoryStore {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<Vec<u8>, Vec<u8>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.map().get(key).cloned())
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.map().insert(key.to_vec(), value.to_vec());
        Ok(())
    }
    fn delete(&self, key: &[u8]) -> Result<(), Error> {
        self.map().remove(key);
        Ok(())
    }
    fn scan(&self) -> Result<Entries, Error> {
        Ok(self
            .map()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, Error> {
        Ok(self
            .map()
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    async fn flush(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// Limits of the peerstore.
#[derive(Debug, Clone)]
pub struct Config {
    pub max_peers: usize,
    pub max_addrs_per_peer: usize,
    pub max_protocols_per_peer: usize,
    /// Longest protocol id or agent string kept.
    pub max_string_len: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_peers: 10_000,
            max_addrs_per_peer: 32,
            max_protocols_per_peer: 128,
            max_string_len: 256,
        }
    }
}

// The stored form of a peer (our own schema, versioned by field numbers).
#[derive(Clone, PartialEq, Message)]
struct StoredAddr {
    #[prost(bytes = "vec", tag = "1")]
    addr: Vec<u8>,
    #[prost(uint64, tag = "2")]
    expires_ms: u64,
    #[prost(bool, tag = "3")]
    certified: bool,
}

#[derive(Clone, PartialEq, Message)]
struct StoredPeer {
    #[prost(message, repeated, tag = "1")]
    addrs: Vec<StoredAddr>,
    #[prost(string, repeated, tag = "2")]
    protocols: Vec<String>,
    #[prost(string, optional, tag = "3")]
    agent_version: Option<String>,
    #[prost(string, optional, tag = "4")]
    protocol_version: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    public_key: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "6")]
    signed_record: Option<Vec<u8>>,
    #[prost(uint64, tag = "7")]
    last_seen_ms: u64,
}

fn durable_form(mut stored: StoredPeer) -> Vec<u8> {
    stored.last_seen_ms = 0;
    stored.encode_to_vec()
}

/// An address we hold for a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrEntry {
    pub addr: Multiaddr,
    pub expires_ms: u64,
    /// True when the address came from the peer's verified signed record.
    pub certified: bool,
}

/// Everything we know about one peer.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub addrs: Vec<AddrEntry>,
    pub protocols: Vec<String>,
    pub agent_version: Option<String>,
    pub protocol_version: Option<String>,
    pub public_key: Option<PublicKey>,
    pub record: Option<VerifiedPeerRecord>,
    pub last_seen_ms: u64,
}

impl PeerInfo {
    fn to_stored(&self) -> StoredPeer {
        StoredPeer {
            addrs: self
                .addrs
                .iter()
                .map(|a| StoredAddr {
                    addr: a.addr.to_vec(),
                    expires_ms: a.expires_ms,
                    certified: a.certified,
                })
                .collect(),
            protocols: self.protocols.clone(),
            agent_version: self.agent_version.clone(),
            protocol_version: self.protocol_version.clone(),
            public_key: self.public_key.as_ref().map(|k| k.encode_protobuf()),
            signed_record: self.record.as_ref().map(|r| r.envelope().to_vec()),
            last_seen_ms: self.last_seen_ms,
        }
    }

    /// Rebuilds from disk. Everything is re-verified: a corrupted or tampered entry loses
    /// the affected fields instead of poisoning the store.
    fn from_stored(s: StoredPeer, peer: &PeerId) -> Self {
        PeerInfo {
            addrs: s
                .addrs
                .into_iter()
                .filter_map(|a| {
                    Some(AddrEntry {
                        addr: Multiaddr::try_from(a.addr).ok()?,
                        expires_ms: a.expires_ms,
                        certified: a.certified,
                    })
                })
                .collect(),
            protocols: s.protocols,
            agent_version: s.agent_version,
            protocol_version: s.protocol_version,
            public_key: s
                .public_key
                .and_then(|k| crate::identity::decode_public_key(&k).ok())
                .filter(|k| k.to_peer_id() == *peer),
            record: s
                .signed_record
                .and_then(|r| record::open_peer_record(&r).ok())
                .filter(|r| r.peer_id() == *peer),
            last_seen_ms: s.last_seen_ms,
        }
    }

    /// Addresses not yet expired at `now_ms`, certified ones first.
    pub fn live_addrs(&self, now_ms: u64) -> Vec<Multiaddr> {
        let mut live: Vec<&AddrEntry> = self
            .addrs
            .iter()
            .filter(|a| a.expires_ms > now_ms)
            .collect();
        live.sort_by_key(|a| !a.certified);
        live.into_iter().map(|a| a.addr.clone()).collect()
    }
}

/// What became of a received signed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Newer than what we held; stored.
    Accepted,
    /// The very record we already hold.
    Unchanged,
}

/// One batch of facts learned about a peer (typically one identify message).
#[derive(Debug, Default, Clone)]
pub struct Update {
    pub addrs: Vec<Multiaddr>,
    pub addr_ttl_ms: u64,
    pub protocols: Option<Vec<String>>,
    pub agent_version: Option<String>,
    pub protocol_version: Option<String>,
    pub public_key: Option<PublicKey>,
    pub record: Option<VerifiedPeerRecord>,
}

/// The peerstore. Cheap to clone.
#[derive(Clone)]
pub struct Peerstore {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    config: Config,
    peers: Mutex<HashMap<PeerId, PeerInfo>>,
    metrics: Arc<Metrics>,
}

impl Peerstore {
    /// Loads every stored peer (dropping undecodable entries, counted and logged) and the
    /// limits to keep.
    pub fn open(
        store: Arc<dyn Store>,
        config: Config,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        let mut peers = HashMap::new();
        let mut dropped = 0;
        for (key, value) in store.scan()? {
            let (Ok(peer), Ok(stored)) = (
                PeerId::from_bytes(&key),
                StoredPeer::decode(value.as_slice()),
            ) else {
                dropped += 1;
                store.delete(&key)?;
                continue;
            };
            peers.insert(peer, PeerInfo::from_stored(stored, &peer));
        }
        metrics.storage.dropped("peers", dropped);
        metrics.peerstore_peers.set(peers.len() as i64);
        let peerstore = Peerstore {
            inner: Arc::new(Inner {
                store,
                config,
                peers: Mutex::new(peers),
                metrics,
            }),
        };
        let weak = Arc::downgrade(&peerstore.inner);
        peerstore.inner.store.on_reopen(Box::new(move || {
            if let Some(inner) = weak.upgrade() {
                (Peerstore { inner }).write_back();
            }
        }));
        Ok(peerstore)
    }

    /// Writes every peer held in memory to the store and deletes what it holds beyond
    /// them: after the store recovered from a failure, it matches memory again.
    fn write_back(&self) {
        let store = &self.inner.store;
        let peers = self.peers();
        let mut failed = 0usize;
        if let Ok(held) = store.scan() {
            for (key, _) in held {
                let known = PeerId::from_bytes(&key).is_ok_and(|p| peers.contains_key(&p));
                if !known && store.delete(&key).is_err() {
                    failed += 1;
                }
            }
        }
        for (peer, info) in peers.iter() {
            if store
                .put(&peer.to_bytes(), &info.to_stored().encode_to_vec())
                .is_err()
            {
                failed += 1;
            }
        }
        if failed > 0 {
            tracing::debug!("peerstore: {failed} writes failed while writing back");
        }
    }

    /// A write-through that failed: the in-memory state stays and is written back when the
    /// store recovers (the storage counts and logs the failure).
    fn write_failed(&self, e: &Error) {
        tracing::debug!("peerstore: write failed, kept in memory: {e}");
    }

    /// A volatile peerstore (memory engine).
    pub fn in_memory(metrics: Arc<Metrics>) -> Self {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        // Opening an empty memory store cannot fail.
        Self::open(store, Config::default(), metrics)
            .unwrap_or_else(|_| unreachable!("empty memory store"))
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, PeerInfo>> {
        self.inner.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, peer: &PeerId) -> Option<PeerInfo> {
        self.peers().get(peer).cloned()
    }

    /// Reads what we know about `peer` without copying all of it (hot paths). `f` runs
    /// under the peerstore's lock: keep it short.
    pub fn inspect<R>(&self, peer: &PeerId, f: impl FnOnce(&PeerInfo) -> R) -> Option<R> {
        self.peers().get(peer).map(f)
    }

    pub fn len(&self) -> usize {
        self.peers().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn peer_ids(&self) -> Vec<PeerId> {
        self.peers().keys().copied().collect()
    }

    /// Addresses to dial `peer` at, at time `now_ms`.
    pub fn addrs(&self, peer: &PeerId, now_ms: u64) -> Vec<Multiaddr> {
        self.peers()
            .get(peer)
            .map(|p| p.live_addrs(now_ms))
            .unwrap_or_default()
    }

    /// Checks a record against the one held, without storing anything.
    pub fn check_record(
        &self,
        peer: &PeerId,
        rec: &VerifiedPeerRecord,
    ) -> Result<RecordOutcome, record::Error> {
        if rec.peer_id() != *peer {
            return Err(record::Error::WrongPeer);
        }
        match self.peers().get(peer).and_then(|p| p.record.as_ref()) {
            Some(held) if held.envelope() == rec.envelope() => Ok(RecordOutcome::Unchanged),
            //= specs/RFC/0003-routing-records.md#peer-record-protobuf
            //# Newer records MUST have a higher `seq` value than older records.
            Some(held) if rec.seq() <= held.seq() => Err(record::Error::Stale {
                got: rec.seq(),
                held: held.seq(),
            }),
            _ => Ok(RecordOutcome::Accepted),
        }
    }

    /// Applies an update in memory and writes it through to the store (durable at the
    /// storage's next flush; see the module docs). A record in the update must have
    /// passed [`Peerstore::check_record`]; a stale one is ignored here.
    pub fn apply(&self, peer: PeerId, update: Update, now_ms: u64) {
        let cfg = &self.inner.config;
        {
            let mut peers = self.peers();
            // What is durable now, ignoring `last_seen` (refreshing it alone is not worth a
            // disk write; it only orders evictions).
            let before = peers.get(&peer).map(|p| durable_form(p.to_stored()));
            let mut evicted = None;
            if !peers.contains_key(&peer) && peers.len() >= cfg.max_peers {
                evicted = peers
                    .iter()
                    .min_by_key(|(_, p)| p.last_seen_ms)
                    .map(|(id, _)| *id);
                if let Some(id) = evicted {
                    peers.remove(&id);
                    self.inner.metrics.peerstore_evictions.inc();
                }
            }
            let info = peers.entry(peer).or_default();
            info.last_seen_ms = now_ms;
            info.addrs.retain(|a| a.expires_ms > now_ms);
            if let Some(rec) = update.record {
                let newer = info
                    .record
                    .as_ref()
                    .is_none_or(|held| rec.seq() > held.seq());
                if newer {
                    // Certified addresses replace the previous certified set.
                    info.addrs.retain(|a| !a.certified);
                    let expires = now_ms.saturating_add(update.addr_ttl_ms);
                    for addr in rec.addrs() {
                        info.addrs.retain(|a| a.addr != *addr);
                        info.addrs.push(AddrEntry {
                            addr: addr.clone(),
                            expires_ms: expires,
                            certified: true,
                        });
                    }
                    info.record = Some(rec);
                }
            }
            let expires = now_ms.saturating_add(update.addr_ttl_ms);
            for addr in update.addrs {
                match info.addrs.iter_mut().find(|a| a.addr == addr) {
                    Some(a) => a.expires_ms = a.expires_ms.max(expires),
                    None => info.addrs.push(AddrEntry {
                        addr,
                        expires_ms: expires,
                        certified: false,
                    }),
                }
            }
            // Keep certified addresses first, then the freshest.
            info.addrs
                .sort_by_key(|a| (!a.certified, u64::MAX - a.expires_ms));
            info.addrs.truncate(cfg.max_addrs_per_peer);
            if let Some(mut protocols) = update.protocols {
                protocols.retain(|p| !p.is_empty() && p.len() <= cfg.max_string_len);
                protocols.sort();
                protocols.dedup();
                protocols.truncate(cfg.max_protocols_per_peer);
                info.protocols = protocols;
            }
            let clip = |s: String| -> String {
                let mut end = s.len().min(cfg.max_string_len);
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                s[..end].to_string()
            };
            if let Some(a) = update.agent_version {
                info.agent_version = Some(clip(a));
            }
            if let Some(v) = update.protocol_version {
                info.protocol_version = Some(clip(v));
            }
            if let Some(k) = update.public_key {
                if k.to_peer_id() == peer {
                    info.public_key = Some(k);
                }
            }
            let stored = info.to_stored();
            let changed = before.as_deref() != Some(durable_form(stored.clone()).as_slice());
            self.inner.metrics.peerstore_peers.set(peers.len() as i64);
            // Written under the lock so concurrent updates reach the engine in order.
            if let Some(id) = evicted {
                if let Err(e) = self.inner.store.delete(&id.to_bytes()) {
                    self.write_failed(&e);
                }
            }
            if changed {
                if let Err(e) = self
                    .inner
                    .store
                    .put(&peer.to_bytes(), &stored.encode_to_vec())
                {
                    self.write_failed(&e);
                }
            }
        }
    }

    /// Forgets a peer entirely.
    pub fn remove(&self, peer: &PeerId) {
        let mut peers = self.peers();
        peers.remove(peer);
        if let Err(e) = self.inner.store.delete(&peer.to_bytes()) {
            self.write_failed(&e);
        }
    }

    /// Flushes the engine (on shutdown).
    pub async fn flush(&self) -> Result<(), Error> {
        self.inner.store.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;

    fn addr(i: u16) -> Multiaddr {
        format!("/ip4/10.0.0.1/tcp/{i}").parse().unwrap()
    }

    #[tokio::test]
    async fn survives_reopen_on_sled() {
        let dir = tempfile::tempdir().unwrap();
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let rec = record::open_peer_record(&record::seal_peer_record(&key, 5, &[addr(1)]).unwrap())
            .unwrap();
        let open = || {
            let storage = crate::storage::Storage::open(
                &dir.path().join("db"),
                crate::storage::Config::default(),
                crate::storage::Metrics::unregistered(),
            )
            .unwrap();
            let tree = storage.tree("peers").unwrap();
            (storage, tree)
        };
        {
            let (storage, store) = open();
            let ps = Peerstore::open(store, Config::default(), Metrics::unregistered()).unwrap();
            let update = Update {
                addrs: vec![addr(2)],
                addr_ttl_ms: 60_000,
                protocols: Some(vec!["/ipfs/ping/1.0.0".into(), "/ipfs/id/1.0.0".into()]),
                agent_version: Some("test/1".into()),
                public_key: Some(key.public()),
                record: Some(rec.clone()),
                ..Default::default()
            };
            assert_eq!(ps.check_record(&peer, &rec), Ok(RecordOutcome::Accepted));
            ps.apply(peer, update, 1_000);
            storage
                .close(std::time::Duration::from_secs(10))
                .await
                .unwrap();
        }
        let (_storage, store) = open();
        let ps = Peerstore::open(store, Config::default(), Metrics::unregistered()).unwrap();
        let info = ps.get(&peer).unwrap();
        assert_eq!(info.agent_version.as_deref(), Some("test/1"));
        assert_eq!(info.protocols, vec!["/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"]);
        assert_eq!(info.record.as_ref().unwrap().seq(), 5);
        assert_eq!(info.public_key, Some(key.public()));
        // The certified address comes first; both live before the TTL, none after.
        assert_eq!(ps.addrs(&peer, 2_000), vec![addr(1), addr(2)]);
        assert!(ps.addrs(&peer, 1_000 + 60_001).is_empty());
        // Same record again: unchanged; an older one: stale.
        assert_eq!(ps.check_record(&peer, &rec), Ok(RecordOutcome::Unchanged));
        let old =
            record::open_peer_record(&record::seal_peer_record(&key, 4, &[]).unwrap()).unwrap();
        assert!(matches!(
            ps.check_record(&peer, &old),
            Err(record::Error::Stale { got: 4, held: 5 })
        ));
        let other = Keypair::generate_ed25519().public().to_peer_id();
        assert_eq!(ps.check_record(&other, &rec), Err(record::Error::WrongPeer));
    }

    #[tokio::test]
    async fn bounds_hold() {
        let cfg = Config {
            max_peers: 3,
            max_addrs_per_peer: 4,
            max_protocols_per_peer: 2,
            max_string_len: 8,
        };
        let ps = Peerstore::open(
            Arc::new(MemoryStore::default()),
            cfg,
            Metrics::unregistered(),
        )
        .unwrap();
        let peers: Vec<PeerId> = (0..5)
            .map(|_| Keypair::generate_ed25519().public().to_peer_id())
            .collect();
        for (i, p) in peers.iter().enumerate() {
            let update = Update {
                addrs: (0..10).map(addr).collect(),
                addr_ttl_ms: 1000,
                protocols: Some(vec![
                    "/a".into(),
                    "/b".into(),
                    "/c".into(),
                    "/very/long/protocol".into(),
                ]),
                agent_version: Some("x".repeat(100)),
                ..Default::default()
            };
            ps.apply(*p, update, i as u64);
        }
        assert_eq!(ps.len(), 3);
        // The two least recently seen were evicted.
        assert!(ps.get(&peers[0]).is_none() && ps.get(&peers[1]).is_none());
        let info = ps.get(&peers[4]).unwrap();
        assert_eq!(info.addrs.len(), 4);
        assert_eq!(info.protocols, vec!["/a", "/b"]);
        assert_eq!(info.agent_version.unwrap().len(), 8);
    }

    #[tokio::test]
    async fn corrupt_entries_are_dropped_not_fatal() {
        let store = Arc::new(MemoryStore::default());
        store.put(b"not a peer id", b"junk").unwrap();
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        store.put(&peer.to_bytes(), &[0xff, 0xff, 0xff]).unwrap();
        let metrics = Metrics::unregistered();
        let ps = Peerstore::open(store.clone(), Config::default(), metrics.clone()).unwrap();
        assert!(ps.is_empty());
        assert!(store.scan().unwrap().is_empty());
        let tree = crate::storage::TreeLabels {
            tree: "peers".into(),
        };
        assert_eq!(
            metrics.storage.dropped_on_load.get_or_create(&tree).get(),
            2,
            "both dropped entries are counted"
        );
    }
}
