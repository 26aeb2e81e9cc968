//! Starting and stopping the booster's heads.
//!
//! A head is a node of its own in this process: the key of its index ([`super::keys`]),
//! the listen addresses of its index, the node's host limits, identify and DHT settings,
//! a routing table saved in its own tree (`booster_table_INDEX`), and the main node's
//! peerstore and DHT store. It does not run the AutoNAT client (the main node's verdict
//! is the host's: the addresses it verified count for the heads on their own ports) nor
//! hold relay reservations. It announces the node's announced addresses on its own
//! ports, or `announce`. It joins through the main node's table
//! (copied in at start) and the configured bootstrap peers.

use std::sync::Arc;
use std::time::Duration;

use pylon_node::addresses::Verified;
use pylon_node::metrics::Metrics as NodeMetrics;
use pylon_node::node::Node;
use pylon_node::peerstore::MemoryStore;
use pylon_node::protocols::autonat::Verdict;

use super::{lock, Booster, Figures, Head};

/// How long a stopped head's connections get to close.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often a head looks again at the addresses the node's AutoNAT servers reached.
const FOLLOW_EVERY: Duration = Duration::from_secs(60);

impl Booster {
    /// Starts head `index` (nothing if it runs); a failure is logged and counted.
    pub(super) async fn add_head(self: &Arc<Self>, index: u32) {
        if lock(&self.heads).contains_key(&index) {
            return;
        }
        match self.start_head(index).await {
            Ok(head) => {
                tracing::info!(
                    "booster head {index}: {} on {:?}",
                    head.node.peer_id(),
                    head.node.listen_multiaddrs()
                );
                lock(&self.heads).insert(index, head);
                self.metrics.heads.set(lock(&self.heads).len() as i64);
            }
            Err(e) => {
                self.metrics.head_failures.inc();
                tracing::error!("booster head {index} did not start: {e}");
            }
        }
    }

    /// Stops head `index`: its connections close, its identity leaves the siblings.
    pub async fn remove_head(&self, index: u32) {
        let Some(head) = lock(&self.heads).remove(&index) else {
            return;
        };
        self.metrics.heads.set(lock(&self.heads).len() as i64);
        head.node.host.shutdown(STOP_GRACE).await;
        self.siblings
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&head.node.peer_id());
    }

    pub(super) async fn stop_all(&self) {
        let heads: Vec<Head> = std::mem::take(&mut *lock(&self.heads))
            .into_values()
            .collect();
        self.metrics.heads.set(0);
        futures::future::join_all(heads.iter().map(|h| h.node.host.shutdown(STOP_GRACE))).await;
    }

    async fn start_head(self: &Arc<Self>, index: u32) -> Result<Head, String> {
        let main_kad = self.node.kad.as_ref().ok_or("no DHT")?;
        let key = super::keys::head_keypair(self.node.host.keypair(), index, self.depth);
        let peer = key.public().to_peer_id();
        // A sibling before it can meet anyone: no table takes it in.
        self.siblings
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer);

        let mut config = self.node.config().clone();
        config.listen = self.config.listen_of(index)?;
        // What it announces: the configured template, else the node's announced
        // addresses on the head's ports (known ahead unless the system picks them;
        // then set once it listens).
        let explicit = self.config.announce_of(index)?;
        let node_announce = std::mem::take(&mut config.identify.addresses.announce);
        config.identify.addresses.announce = if explicit.is_empty() {
            super::head_addrs(&node_announce, &config.listen)
        } else {
            explicit.clone()
        };
        config.perf = None;
        config.autonat.enabled = false;
        config.relay_client.listen_via.clear();
        let kad_config = config.kad.as_mut().ok_or("no DHT")?;
        kad_config.server = true;
        kad_config.auto_server = false;
        kad_config.persist_table = true;
        let table = match self.node.storage() {
            Some(storage) => storage
                .tree(&format!("booster_table_{index}"))
                .map_err(|e| e.to_string())?,
            None => Arc::new(MemoryStore::default()),
        };
        let store = main_kad.store().sharing(table);
        // Its own counters: the node's families stay the main identity's; the role
        // exports the heads' figures itself.
        let node = Node::start_sharing(
            key,
            config,
            self.node.peerstore.clone(),
            Some(store),
            NodeMetrics::unregistered(),
        )
        .await
        .map_err(|e| {
            self.siblings
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&peer);
            e.to_string()
        })?;
        if explicit.is_empty() && !node_announce.is_empty() {
            let announce = super::head_addrs(&node_announce, &node.host.listen_addrs());
            node.identify.set_announce(announce);
        }
        self.follow_verified(&node);
        let kad = node.kad.clone().ok_or("no DHT")?;
        kad.exclude(self.sibling_filter());
        // Warm start: the main identity's table (its peers, not the siblings).
        for entry in main_kad.table_entries() {
            kad.add_peer(entry.peer, entry.addrs);
        }
        let weak = Arc::downgrade(self);
        let head_kad = Arc::downgrade(&kad);
        kad.on_get(Arc::new(move |get| {
            if let Some(b) = weak.upgrade() {
                b.on_get(index, &head_kad, get);
            }
        }));
        // A head whose core task dies is stopped and counted; the others go on. (Watched
        // from the main node: a head's shutdown waits for the head's own tasks.)
        let mut failure = node.host.watch_failure();
        let weak = Arc::downgrade(self);
        self.node.host.spawn(async move {
            while failure.changed().await.is_ok() {
                let what = failure.borrow_and_update().clone();
                if let (Some(what), Some(b)) = (what, weak.upgrade()) {
                    tracing::error!("booster head {index}: {what}");
                    b.metrics.head_failures.inc();
                    b.remove_head(index).await;
                    return;
                }
            }
        });
        Ok(Head {
            node,
            figures: Arc::new(Figures::default()),
        })
    }

    /// A head runs no AutoNAT client of its own: the addresses the node's servers reached
    /// count for the head on its own ports (same host, same NAT or load balancer, which
    /// publishes the heads' ports too), so peers beyond a NAT learn an address they can
    /// dial. Followed while the head runs: at each change of the node's reachability,
    /// and every [`FOLLOW_EVERY`] for changes of address under one verdict.
    fn follow_verified(&self, head: &pylon_node::node::Node) {
        let main = self.node.autonat.clone();
        let identify = head.identify.clone();
        let host = head.host.clone();
        head.host.spawn(async move {
            let mut changes = main.watch();
            loop {
                let reached: Vec<_> = main
                    .verdicts()
                    .into_iter()
                    .filter(|(_, v)| *v == Verdict::Public)
                    .map(|(a, _)| a)
                    .collect();
                identify.set_verified(Verified {
                    reachable: super::head_addrs(&reached, &host.listen_addrs()),
                    unreachable: Vec::new(),
                });
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(FOLLOW_EVERY) => {}
                }
            }
        });
    }
}
