//! A running node: host + peerstore + identify + ping, started from one config.
//! This is what the binary runs and what the roles will build on.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use multiaddr::{Multiaddr, Protocol};

use crate::host::{self, Connection, DialError, Host};
use crate::identity::{Keypair, PeerId};
use crate::metrics::Metrics;
use crate::peerstore::{self, Peerstore, Store};
use crate::protocols::relay::client as relay_client;
use crate::protocols::{autonat, dcutr, identify, kad, perf, ping};
use crate::storage::{self, Storage};

#[derive(Debug, Clone, Default)]
pub struct Config {
    pub listen: Vec<Multiaddr>,
    pub host: host::Config,
    pub identify: identify::Config,
    pub peerstore: peerstore::Config,
    /// The perf server (`/perf/1.0.0`); off when `None`.
    pub perf: Option<perf::Config>,
    /// The Kademlia DHT; off when `None`.
    pub kad: Option<kad::Config>,
    /// Flushing and recovery of the database (nodes with a data directory).
    pub storage: storage::Config,
    /// Relays to stay reachable through (the relay client is always on: it dials
    /// `/p2p-circuit` addresses and answers the relays we reserve with).
    pub relay_client: relay_client::Config,
    /// Hole punching of relayed connections (DCUtR).
    pub dcutr: dcutr::Config,
    /// Testing our own addresses with AutoNAT servers (the client; the server is a role).
    pub autonat: autonat::Config,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("identity: {0}")]
    Identity(#[from] crate::identity::Error),
    #[error("storage: {0}")]
    Storage(#[from] peerstore::Error),
    #[error("storage: {0}")]
    Database(#[from] storage::Error),
    #[error("DHT storage: {0}")]
    KadStorage(#[from] kad::store::Error),
    #[error("security setup: {0}")]
    Security(#[from] crate::secure::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: Multiaddr,
        source: crate::transport::Error,
    },
}

fn family_unavailable(e: &std::io::Error) -> bool {
    const EAFNOSUPPORT: i32 = 97;
    const EADDRNOTAVAIL: i32 = 99;
    matches!(e.raw_os_error(), Some(EAFNOSUPPORT) | Some(EADDRNOTAVAIL))
}

/// A started node.
#[derive(Clone)]
pub struct Node {
    pub host: Host,
    pub peerstore: Peerstore,
    pub identify: Arc<identify::Identify>,
    pub kad: Option<Arc<kad::Kad>>,
    /// Dialing through relays and holding reservations on them.
    pub relay: relay_client::Client,
    /// Our reachability, as AutoNAT servers see it.
    pub autonat: Arc<autonat::Autonat>,
    storage: Option<Storage>,
    /// What it was started with.
    config: Arc<Config>,
}

/// The storage engines of a node's durable state.
pub struct Stores {
    pub peers: Arc<dyn Store>,
    pub kad_records: Arc<dyn Store>,
    pub kad_providers: Arc<dyn Store>,
    pub kad_table: Arc<dyn Store>,
}

impl Stores {
    /// Volatile stores: nothing survives the node.
    pub fn memory() -> Self {
        Stores {
            peers: Arc::new(crate::peerstore::MemoryStore::default()),
            kad_records: Arc::new(crate::peerstore::MemoryStore::default()),
            kad_providers: Arc::new(crate::peerstore::MemoryStore::default()),
            kad_table: Arc::new(crate::peerstore::MemoryStore::default()),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Name of the sled database directory inside the data directory.
pub const DB_DIR: &str = "db";

impl Node {
    /// Starts a node whose key and peerstore live in `data_dir`.
    pub async fn start_in(
        data_dir: &Path,
        config: Config,
        metrics: Arc<Metrics>,
    ) -> Result<Node, Error> {
        let key = crate::identity::load_or_generate(data_dir)?;
        let storage = Storage::open(
            &data_dir.join(DB_DIR),
            config.storage.clone(),
            metrics.storage.clone(),
        )?;
        let stores = Stores {
            peers: storage.tree("peers")?,
            kad_records: storage.tree("kad_records")?,
            kad_providers: storage.tree("kad_providers")?,
            kad_table: storage.tree("kad_table")?,
        };
        match Self::start(key, config, stores, metrics).await {
            Ok(mut node) => {
                node.storage = Some(storage);
                Ok(node)
            }
            Err(e) => {
                // Release the database before reporting (a retry in-process can open it).
                let _ = storage.close(Duration::from_secs(5)).await;
                Err(e)
            }
        }
    }

    /// Starts a node with a fresh Ed25519 identity and a memory peerstore: nothing survives
    /// it. For tests, benchmarks and short-lived embedded nodes.
    pub async fn start_volatile(config: Config, metrics: Arc<Metrics>) -> Result<Node, Error> {
        Self::start(
            Keypair::generate_ed25519(),
            config,
            Stores::memory(),
            metrics,
        )
        .await
    }

    /// Starts a node with the given key and storage.
    pub async fn start(
        key: Keypair,
        config: Config,
        stores: Stores,
        metrics: Arc<Metrics>,
    ) -> Result<Node, Error> {
        let peerstore = Peerstore::open(stores.peers, config.peerstore.clone(), metrics.clone())?;
        let kad_store = match &config.kad {
            Some(kad_config) => Some(kad::KadStore::open(
                stores.kad_records,
                stores.kad_providers,
                stores.kad_table,
                kad_config.store.clone(),
                now_ms(),
            )?),
            None => None,
        };
        Self::start_sharing(key, config, peerstore, kad_store, metrics).await
    }

    /// Starts a node with the given key on a peerstore and a DHT store it may share with
    /// other nodes of this process ([`Peerstore`] clones, [`kad::KadStore::sharing`]): the
    /// booster's heads, several identities answering from one store. `kad_store` is used
    /// when `config.kad` is set.
    pub async fn start_sharing(
        key: Keypair,
        config: Config,
        peerstore: Peerstore,
        kad_store: Option<kad::KadStore>,
        metrics: Arc<Metrics>,
    ) -> Result<Node, Error> {
        let host = Host::new(key, config.host.clone(), metrics)?;
        ping::install(&host);
        if let Some(perf) = &config.perf {
            perf::install(&host, perf.clone());
        }
        let identify =
            identify::Identify::install(&host, peerstore.clone(), config.identify.clone());
        let relay = relay_client::Client::install(&host);
        let autonat = autonat::Autonat::install(
            &host,
            identify.clone(),
            peerstore.clone(),
            config.autonat.clone(),
        );
        dcutr::Dcutr::install(&host, identify.clone(), config.dcutr.clone());
        let kad = match (&config.kad, kad_store) {
            (Some(kad_config), Some(store)) => Some(kad::Kad::install(
                &host,
                peerstore.clone(),
                identify.clone(),
                store,
                kad_config.clone(),
            )),
            _ => None,
        };
        // An address family this machine lacks (no IPv6 in a container, say) is skipped
        // with a warning as long as another address binds; every other failure is fatal.
        let mut skipped = None;
        for addr in &config.listen {
            match host.listen(addr).await {
                Ok(_) => {}
                Err(crate::transport::Error::Io(e)) if family_unavailable(&e) => {
                    tracing::warn!("not listening on {addr}: {e}");
                    skipped = Some(Error::Listen {
                        addr: addr.clone(),
                        source: crate::transport::Error::Io(e),
                    });
                }
                Err(source) => {
                    return Err(Error::Listen {
                        addr: addr.clone(),
                        source,
                    })
                }
            }
        }
        if let (Some(e), true) = (skipped, host.listen_addrs().is_empty()) {
            return Err(e);
        }
        if let Some(k) = &kad {
            k.start();
            if k.config().auto_server {
                // The DHT's mode follows our reachability; unknown keeps the mode it has.
                let (k, mut verdicts) = (k.clone(), autonat.watch());
                host.spawn(async move {
                    while verdicts.changed().await.is_ok() {
                        let verdict = *verdicts.borrow_and_update();
                        match verdict {
                            autonat::Verdict::Public => k.set_server(true),
                            autonat::Verdict::Private => k.set_server(false),
                            autonat::Verdict::Unknown => {}
                        }
                    }
                });
            }
        }
        for relay_addr in &config.relay_client.listen_via {
            relay.listen_via(relay_addr.clone());
        }
        Ok(Node {
            host,
            peerstore,
            identify,
            kad,
            relay,
            autonat,
            storage: None,
            config: Arc::new(config),
        })
    }

    pub fn peer_id(&self) -> PeerId {
        self.host.peer_id()
    }

    /// The configuration it was started with (roles that start nodes of their own, the
    /// booster's heads, derive theirs from it).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Full listen multiaddrs (interfaces expanded, `/p2p/` appended) for logs and users.
    pub fn listen_multiaddrs(&self) -> Vec<Multiaddr> {
        self.host
            .interface_listen_addrs()
            .into_iter()
            .map(|a| a.with(Protocol::P2p(self.peer_id())))
            .collect()
    }

    /// Dials a peer by PeerId using the addresses in the peerstore.
    pub async fn dial_peer(&self, peer: PeerId) -> Result<Connection, DialError> {
        let addrs = self.peerstore.addrs(&peer, now_ms());
        self.host.connect(peer, &addrs).await
    }

    /// How the node's database is doing (`None` for volatile nodes).
    pub fn storage_health(&self) -> Option<storage::Health> {
        self.storage.as_ref().map(|s| s.health())
    }

    /// The node's database (`None` for volatile nodes).
    pub fn storage(&self) -> Option<&Storage> {
        self.storage.as_ref()
    }

    /// Closes connections politely (within `grace`), then flushes and closes the database
    /// (within its stall timeout). `Err` when the final flush failed or did not finish:
    /// what the node held in memory since the last good flush is not on disk.
    pub async fn stop(&self, grace: Duration) -> Result<(), storage::Error> {
        self.host.shutdown(grace).await;
        match &self.storage {
            Some(storage) => {
                let deadline = storage.config().stall_timeout;
                storage.close(deadline).await
            }
            None => Ok(()),
        }
    }

    /// [`Node::stop`], logging a failed final flush.
    pub async fn shutdown(&self, grace: Duration) {
        if let Err(e) = self.stop(grace).await {
            tracing::error!("the final flush of the database failed: {e}");
        }
    }
}
