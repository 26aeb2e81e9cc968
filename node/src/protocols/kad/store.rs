//! The DHT's durable state: value records, provider records and the routing table's
//! peers, each in its own [`Store`](crate::peerstore::Store) tree (sled in a node with a
//! data directory).
//!
//! Bounded: a record's key and value sizes, the number of records, providers per key and
//! provider records in total; a full store refuses new entries (updates of held ones still
//! go through). Records and providers expire (`specs/kad-dht/README.md` "Provider Record
//! Expiration Interval", 48 h); reads skip expired entries and [`KadStore::sweep`] deletes
//! them. A record or provider write returns after the store flushed it, so whatever we
//! acknowledged survives a crash; routing-table entries are our own soft state and are
//! made durable by the storage's periodic flush. Provider records are also indexed in memory (GET_PROVIDERS is a hot path);
//! sled is the durable copy the index is rebuilt from at start. Time is an input
//! (`now_ms`, Unix milliseconds).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use multiaddr::Multiaddr;
use prost::Message;

use crate::identity::PeerId;
use crate::peerstore::{self, Store};

/// Limits and lifetimes of the store.
#[derive(Debug, Clone)]
pub struct Config {
    pub max_records: usize,
    pub max_key_len: usize,
    pub max_value_len: usize,
    pub record_ttl: Duration,
    pub max_provider_records: usize,
    pub max_providers_per_key: usize,
    //= specs/kad-dht/README.md#content-provider-advertisement-and-discovery
    //# In the IPFS DHT the Expiration Interval is set to **48 hours**.
    pub provider_ttl: Duration,
    //= specs/kad-dht/README.md#content-provider-advertisement
    //# A safe value here is the Routing Table Refresh Interval.
    //# In the kubo IPFS implementation, this is set to 30 mins.
    pub provider_addr_ttl: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_records: 65_536,
            max_key_len: 200,
            max_value_len: 16 * 1024,
            record_ttl: Duration::from_secs(48 * 3600),
            max_provider_records: 262_144,
            max_providers_per_key: 64,
            provider_ttl: Duration::from_secs(48 * 3600),
            provider_addr_ttl: Duration::from_secs(30 * 60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key of {0} bytes is too long")]
    KeyTooLong(usize),
    #[error("value of {0} bytes is too long")]
    ValueTooLong(usize),
    #[error("the store is full")]
    Full,
    #[error("too many providers for this key")]
    KeyFull,
    #[error(transparent)]
    Storage(#[from] peerstore::Error),
}

impl Error {
    pub fn label(&self) -> &'static str {
        match self {
            Error::KeyTooLong(_) => "key_too_long",
            Error::ValueTooLong(_) => "value_too_long",
            Error::Full => "store_full",
            Error::KeyFull => "providers_full",
            Error::Storage(_) => "storage",
        }
    }
}

#[derive(Clone, PartialEq, Message)]
struct StoredRecord {
    #[prost(bytes = "vec", tag = "1")]
    value: Vec<u8>,
    #[prost(uint64, tag = "2")]
    received_ms: u64,
    #[prost(uint64, tag = "3")]
    expires_ms: u64,
}

#[derive(Clone, PartialEq, Message)]
struct StoredProvider {
    #[prost(bytes = "vec", repeated, tag = "1")]
    addrs: Vec<Vec<u8>>,
    #[prost(uint64, tag = "2")]
    expires_ms: u64,
    #[prost(uint64, tag = "3")]
    addrs_expire_ms: u64,
}

/// A value record as held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub received_ms: u64,
    pub expires_ms: u64,
}

/// One provider of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub peer: PeerId,
    /// The addresses it announced, while they are fresh (empty after
    /// `provider_addr_ttl`: look the peer up instead).
    pub addrs: Vec<Multiaddr>,
    pub expires_ms: u64,
}

#[derive(Clone, PartialEq, Message)]
struct StoredPeer {
    #[prost(bytes = "vec", repeated, tag = "1")]
    addrs: Vec<Vec<u8>>,
    #[prost(uint64, tag = "2")]
    added_ms: u64,
    #[prost(uint64, tag = "3")]
    last_seen_ms: u64,
}

/// A routing-table peer as saved for a warm start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedPeer {
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
    pub added_ms: u64,
    pub last_seen_ms: u64,
}

/// Most addresses kept per provider.
const MAX_PROVIDER_ADDRS: usize = 16;

/// Records and providers.
pub struct KadStore {
    records: Arc<dyn Store>,
    providers: Arc<dyn Store>,
    table: Arc<dyn Store>,
    config: Config,
    /// Shared with the stores [`KadStore::sharing`] made (one count, one index).
    counts: Arc<Mutex<Counts>>,
    /// Provider records by key, mirroring the `providers` tree.
    index: Arc<Mutex<HashMap<Vec<u8>, Vec<Held>>>>,
    /// What the sweep at open removed.
    opened: Swept,
}

/// A provider record as indexed in memory.
#[derive(Debug, Clone)]
struct Held {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    expires_ms: u64,
    addrs_expire_ms: u64,
}

/// What a sweep removed.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub expired: usize,
    /// Undecodable value and provider records (a damaged database).
    pub corrupt_records: usize,
    pub corrupt_providers: usize,
}

impl Swept {
    pub fn removed(&self) -> usize {
        self.expired + self.corrupt_records + self.corrupt_providers
    }
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub records: usize,
    pub providers: usize,
}

/// Provider tree key: key length (1 byte), key, provider PeerId bytes.
fn provider_prefix(key: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(1 + key.len() + 40);
    p.push(key.len() as u8);
    p.extend_from_slice(key);
    p
}

impl KadStore {
    /// Opens both trees, dropping undecodable and expired entries (see
    /// [`KadStore::opened`]).
    pub fn open(
        records: Arc<dyn Store>,
        providers: Arc<dyn Store>,
        table: Arc<dyn Store>,
        config: Config,
        now_ms: u64,
    ) -> Result<Self, Error> {
        let mut store = KadStore {
            records,
            providers,
            table,
            config,
            counts: Arc::new(Mutex::new(Counts::default())),
            index: Arc::new(Mutex::new(HashMap::new())),
            opened: Swept::default(),
        };
        store.opened = store.sweep(now_ms)?;
        Ok(store)
    }

    /// A store sharing this one's records and providers (trees, counts and provider
    /// index: what one writes the other reads) with a routing table of its own, kept in
    /// `table`: several DHT identities of one process answering from one store (the
    /// booster's heads).
    pub fn sharing(&self, table: Arc<dyn Store>) -> KadStore {
        KadStore {
            records: self.records.clone(),
            providers: self.providers.clone(),
            table,
            config: self.config.clone(),
            counts: self.counts.clone(),
            index: self.index.clone(),
            opened: Swept::default(),
        }
    }

    /// What opening removed (expired and undecodable entries).
    pub fn opened(&self) -> Swept {
        self.opened
    }

    /// Registers what to write back after the database recovered from a failure.
    pub fn on_reopen(&self, hook: crate::storage::ReopenHook) {
        self.table.on_reopen(hook);
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn counts(&self) -> Counts {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Vec<Held>>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes expired and undecodable entries, recounts and rebuilds the provider index
    /// from the trees; returns what went.
    pub fn sweep(&self, now_ms: u64) -> Result<Swept, Error> {
        let mut swept = Swept::default();
        let mut counts = Counts::default();
        for (k, v) in self.records.scan()? {
            match StoredRecord::decode(v.as_slice()) {
                Ok(r) if r.expires_ms > now_ms => counts.records += 1,
                Ok(_) => {
                    self.records.delete(&k)?;
                    swept.expired += 1;
                }
                Err(_) => {
                    self.records.delete(&k)?;
                    swept.corrupt_records += 1;
                }
            }
        }
        let mut index: HashMap<Vec<u8>, Vec<Held>> = HashMap::new();
        for (k, v) in self.providers.scan()? {
            let parts = k.first().and_then(|&n| {
                let n = n as usize;
                let peer = PeerId::from_bytes(k.get(1 + n..)?).ok()?;
                Some((k[1..1 + n].to_vec(), peer))
            });
            match (parts, StoredProvider::decode(v.as_slice())) {
                (Some((key, peer)), Ok(p)) if p.expires_ms > now_ms => {
                    counts.providers += 1;
                    index.entry(key).or_default().push(Held {
                        peer,
                        addrs: p
                            .addrs
                            .into_iter()
                            .filter_map(|a| Multiaddr::try_from(a).ok())
                            .collect(),
                        expires_ms: p.expires_ms,
                        addrs_expire_ms: p.addrs_expire_ms,
                    });
                }
                (Some(_), Ok(_)) => {
                    self.providers.delete(&k)?;
                    swept.expired += 1;
                }
                _ => {
                    self.providers.delete(&k)?;
                    swept.corrupt_providers += 1;
                }
            }
        }
        *self.index() = index;
        *self.lock() = counts;
        Ok(swept)
    }

    fn check_key(&self, key: &[u8]) -> Result<(), Error> {
        if key.is_empty() || key.len() > self.config.max_key_len.min(255) {
            return Err(Error::KeyTooLong(key.len()));
        }
        Ok(())
    }

    /// The live record under `key`.
    pub fn get(&self, key: &[u8], now_ms: u64) -> Result<Option<Record>, Error> {
        if self.check_key(key).is_err() {
            return Ok(None);
        }
        let Some(bytes) = self.records.get(key)? else {
            return Ok(None);
        };
        Ok(StoredRecord::decode(bytes.as_slice())
            .ok()
            .filter(|r| r.expires_ms > now_ms)
            .map(|r| Record {
                key: key.to_vec(),
                value: r.value,
                received_ms: r.received_ms,
                expires_ms: r.expires_ms,
            }))
    }

    /// Stores (or replaces) a validated record, durably.
    pub async fn put(&self, key: &[u8], value: &[u8], now_ms: u64) -> Result<Record, Error> {
        self.check_key(key)?;
        if value.len() > self.config.max_value_len {
            return Err(Error::ValueTooLong(value.len()));
        }
        let existed = self.records.get(key)?.is_some();
        {
            let mut counts = self.lock();
            if !existed {
                if counts.records >= self.config.max_records {
                    return Err(Error::Full);
                }
                counts.records += 1;
            }
        }
        let stored = StoredRecord {
            value: value.to_vec(),
            received_ms: now_ms,
            expires_ms: now_ms.saturating_add(self.config.record_ttl.as_millis() as u64),
        };
        if let Err(e) = self.records.put(key, &stored.encode_to_vec()) {
            if !existed {
                self.lock().records -= 1;
            }
            return Err(e.into());
        }
        self.records.flush().await?;
        Ok(Record {
            key: key.to_vec(),
            value: stored.value,
            received_ms: now_ms,
            expires_ms: stored.expires_ms,
        })
    }

    pub async fn remove(&self, key: &[u8]) -> Result<(), Error> {
        if self.records.get(key)?.is_some() {
            self.records.delete(key)?;
            let mut c = self.lock();
            c.records = c.records.saturating_sub(1);
        }
        self.records.flush().await?;
        Ok(())
    }

    /// Adds or refreshes `peer` as a provider of `key`, durably, for the configured
    /// `provider_ttl`.
    pub async fn add_provider(
        &self,
        key: &[u8],
        peer: PeerId,
        addrs: &[Multiaddr],
        now_ms: u64,
    ) -> Result<(), Error> {
        self.add_provider_for(key, peer, addrs, now_ms, self.config.provider_ttl)
            .await
    }

    /// [`KadStore::add_provider`] for `ttl` (at most `provider_ttl`): a provider record
    /// learned from others rather than announced to us (the booster's prefetch cache). A
    /// record held already keeps the later of the two expiries.
    pub async fn add_provider_for(
        &self,
        key: &[u8],
        peer: PeerId,
        addrs: &[Multiaddr],
        now_ms: u64,
        ttl: Duration,
    ) -> Result<(), Error> {
        self.check_key(key)?;
        let mut full_key = provider_prefix(key);
        full_key.extend_from_slice(&peer.to_bytes());
        let ttl = ttl.min(self.config.provider_ttl);
        let mut held = Held {
            peer,
            addrs: addrs.iter().take(MAX_PROVIDER_ADDRS).cloned().collect(),
            expires_ms: now_ms.saturating_add(ttl.as_millis() as u64),
            addrs_expire_ms: now_ms
                .saturating_add(self.config.provider_addr_ttl.min(ttl).as_millis() as u64),
        };
        // Decide and reserve under the index lock, so concurrent adds cannot overshoot.
        let previous = {
            let mut index = self.index();
            let list = index.entry(key.to_vec()).or_default();
            match list.iter().position(|h| h.peer == peer) {
                Some(i) => {
                    held.expires_ms = held.expires_ms.max(list[i].expires_ms);
                    held.addrs_expire_ms = held.addrs_expire_ms.max(list[i].addrs_expire_ms);
                    Some(std::mem::replace(&mut list[i], held.clone()))
                }
                None => {
                    if list.len() >= self.config.max_providers_per_key {
                        return Err(Error::KeyFull);
                    }
                    let mut counts = self.lock();
                    if counts.providers >= self.config.max_provider_records {
                        if list.is_empty() {
                            index.remove(key);
                        }
                        return Err(Error::Full);
                    }
                    counts.providers += 1;
                    list.push(held.clone());
                    None
                }
            }
        };
        let stored = StoredProvider {
            addrs: addrs
                .iter()
                .take(MAX_PROVIDER_ADDRS)
                .map(|a| a.to_vec())
                .collect(),
            expires_ms: held.expires_ms,
            addrs_expire_ms: held.addrs_expire_ms,
        };
        if let Err(e) = self.providers.put(&full_key, &stored.encode_to_vec()) {
            // Undo the reservation: back to what sled holds.
            let mut index = self.index();
            if let Some(list) = index.get_mut(key) {
                match previous {
                    Some(p) => {
                        if let Some(h) = list.iter_mut().find(|h| h.peer == peer) {
                            *h = p;
                        }
                    }
                    None => {
                        list.retain(|h| h.peer != peer);
                        self.lock().providers -= 1;
                        if list.is_empty() {
                            index.remove(key);
                        }
                    }
                }
            }
            return Err(e.into());
        }
        self.providers.flush().await?;
        Ok(())
    }

    /// Saves (or refreshes) a routing-table peer. Not flushed: see [`KadStore::flush`].
    pub fn save_peer(&self, peer: &SavedPeer) -> Result<(), Error> {
        let stored = StoredPeer {
            addrs: peer
                .addrs
                .iter()
                .take(MAX_PROVIDER_ADDRS)
                .map(|a| a.to_vec())
                .collect(),
            added_ms: peer.added_ms,
            last_seen_ms: peer.last_seen_ms,
        };
        self.table
            .put(&peer.peer.to_bytes(), &stored.encode_to_vec())?;
        Ok(())
    }

    pub fn forget_peer(&self, peer: &PeerId) -> Result<(), Error> {
        self.table.delete(&peer.to_bytes())?;
        Ok(())
    }

    /// Every saved routing-table peer, and how many undecodable entries were deleted.
    pub fn saved_peers(&self) -> Result<(Vec<SavedPeer>, usize), Error> {
        let mut out = Vec::new();
        let mut dropped = 0;
        for (k, v) in self.table.scan()? {
            let decoded = PeerId::from_bytes(&k)
                .ok()
                .zip(StoredPeer::decode(v.as_slice()).ok());
            match decoded {
                Some((peer, p)) => out.push(SavedPeer {
                    peer,
                    addrs: p
                        .addrs
                        .into_iter()
                        .filter_map(|a| Multiaddr::try_from(a).ok())
                        .collect(),
                    added_ms: p.added_ms,
                    last_seen_ms: p.last_seen_ms,
                }),
                None => {
                    self.table.delete(&k)?;
                    dropped += 1;
                }
            }
        }
        Ok((out, dropped))
    }

    /// The keys of every saved routing-table peer.
    pub fn saved_peer_keys(&self) -> Result<Vec<Vec<u8>>, Error> {
        Ok(self.table.scan()?.into_iter().map(|(k, _)| k).collect())
    }

    /// Makes the saved routing table durable.
    pub async fn flush(&self) -> Result<(), Error> {
        self.table.flush().await?;
        Ok(())
    }

    /// The live providers of `key`.
    pub fn providers(&self, key: &[u8], now_ms: u64) -> Result<Vec<Provider>, Error> {
        let index = self.index();
        let Some(list) = index.get(key) else {
            return Ok(Vec::new());
        };
        Ok(list
            .iter()
            .filter(|h| h.expires_ms > now_ms)
            .map(|h| Provider {
                peer: h.peer,
                addrs: if h.addrs_expire_ms > now_ms {
                    h.addrs.clone()
                } else {
                    Vec::new()
                },
                expires_ms: h.expires_ms,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peerstore::MemoryStore;
    use crate::storage::Storage;

    fn peer() -> PeerId {
        crate::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn memory(config: Config) -> KadStore {
        KadStore::open(
            Arc::new(MemoryStore::default()),
            Arc::new(MemoryStore::default()),
            Arc::new(MemoryStore::default()),
            config,
            0,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn records_are_bounded_and_expire() {
        let s = memory(Config {
            max_records: 2,
            max_value_len: 8,
            record_ttl: Duration::from_millis(100),
            ..Config::default()
        });
        s.put(b"/pk/a", b"1", 0).await.unwrap();
        s.put(b"/pk/b", b"2", 0).await.unwrap();
        assert!(matches!(s.put(b"/pk/c", b"3", 0).await, Err(Error::Full)));
        // Replacing a held key is not a new record.
        s.put(b"/pk/a", b"11", 10).await.unwrap();
        assert!(matches!(
            s.put(b"/pk/a", &[0; 9], 10).await,
            Err(Error::ValueTooLong(9))
        ));
        assert!(matches!(
            s.put(&[b'x'; 256], b"1", 0).await,
            Err(Error::KeyTooLong(256))
        ));
        assert_eq!(s.get(b"/pk/a", 50).unwrap().unwrap().value, b"11");
        assert!(s.get(b"/pk/b", 100).unwrap().is_none(), "expired at 100");
        assert_eq!(
            s.sweep(105).unwrap().expired,
            1,
            "b expired, a (refreshed at 10) not yet"
        );
        assert_eq!(s.counts().records, 1);
        s.put(b"/pk/c", b"3", 105).await.unwrap();
    }

    #[tokio::test]
    async fn providers_are_bounded_per_key_and_lose_addresses_first() {
        let s = memory(Config {
            max_providers_per_key: 2,
            max_provider_records: 3,
            provider_ttl: Duration::from_millis(1000),
            provider_addr_ttl: Duration::from_millis(100),
            ..Config::default()
        });
        let addr: Multiaddr = "/ip4/1.2.3.4/tcp/1".parse().unwrap();
        let (a, b, c) = (peer(), peer(), peer());
        s.add_provider(b"k1", a, std::slice::from_ref(&addr), 0)
            .await
            .unwrap();
        s.add_provider(b"k1", b, &[], 0).await.unwrap();
        assert!(matches!(
            s.add_provider(b"k1", c, &[], 0).await,
            Err(Error::KeyFull)
        ));
        s.add_provider(b"k1", a, std::slice::from_ref(&addr), 5)
            .await
            .unwrap(); // refresh
        s.add_provider(b"k2", c, &[], 0).await.unwrap();
        assert!(matches!(
            s.add_provider(b"k3", c, &[], 0).await,
            Err(Error::Full)
        ));
        // A key that is a prefix of another key does not see its providers.
        assert!(s.providers(b"k", 0).unwrap().is_empty());
        let got = s.providers(b"k1", 50).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got.iter().find(|p| p.peer == a).unwrap().addrs, vec![addr]);
        let got = s.providers(b"k1", 500).unwrap();
        assert!(
            got.iter().all(|p| p.addrs.is_empty()),
            "addresses outlived their TTL"
        );
        assert!(s
            .providers(b"k1", 1001)
            .unwrap()
            .iter()
            .all(|p| p.peer == a));
        assert_eq!(s.sweep(1006).unwrap().expired, 3);
        assert_eq!(s.counts(), Counts::default());
    }

    #[tokio::test]
    async fn survives_reopen_on_sled_and_drops_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = peer();
        let open_storage = || {
            Storage::open(
                dir.path(),
                crate::storage::Config::default(),
                crate::storage::Metrics::unregistered(),
            )
            .unwrap()
        };
        let open = |storage: &Storage, now| {
            KadStore::open(
                storage.tree("r").unwrap(),
                storage.tree("p").unwrap(),
                storage.tree("t").unwrap(),
                Config::default(),
                now,
            )
            .unwrap()
        };
        {
            let storage = open_storage();
            let s = open(&storage, 0);
            s.put(b"/pk/x", b"v", 0).await.unwrap();
            s.add_provider(b"mh", p, &[], 0).await.unwrap();
            s.save_peer(&SavedPeer {
                peer: p,
                addrs: vec!["/ip4/1.2.3.4/tcp/4001".parse().unwrap()],
                added_ms: 1,
                last_seen_ms: 2,
            })
            .unwrap();
            storage.tree("t").unwrap().put(b"not a peer", &[]).unwrap();
            storage
                .tree("r")
                .unwrap()
                .put(b"junk", &[0xff, 0xff])
                .unwrap();
            storage.tree("p").unwrap().put(b"\x09short", &[]).unwrap();
            storage
                .close(std::time::Duration::from_secs(10))
                .await
                .unwrap();
        }
        let storage = open_storage();
        let s = open(&storage, 1);
        assert_eq!(
            s.counts(),
            Counts {
                records: 1,
                providers: 1
            }
        );
        assert_eq!(
            s.opened(),
            Swept {
                expired: 0,
                corrupt_records: 1,
                corrupt_providers: 1
            }
        );
        assert_eq!(s.get(b"/pk/x", 1).unwrap().unwrap().value, b"v");
        assert_eq!(s.providers(b"mh", 1).unwrap()[0].peer, p);
        let (saved, dropped) = s.saved_peers().unwrap();
        assert_eq!(
            (saved.len(), dropped),
            (1, 1),
            "the undecodable entry was dropped"
        );
        assert_eq!((saved[0].peer, saved[0].last_seen_ms), (p, 2));
    }
}
