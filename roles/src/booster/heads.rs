//! Starting and stopping the booster's heads.
//!
//! A head is a node of its own in this process: the key of its index ([`super::keys`]),
//! the listen addresses of its index, the node's host limits, identify and DHT settings,
//! a routing table saved in its own tree (`booster_table_INDEX`), and the main node's
//! peerstore and DHT store. It does not run the AutoNAT client (the main node's verdict
//! is the host's) nor hold relay reservations. It joins through the main node's table
//! (copied in at start) and the configured bootstrap peers.

use std::sync::Arc;
use std::time::Duration;

use pylon_node::metrics::Metrics as NodeMetrics;
use pylon_node::node::Node;
use pylon_node::peerstore::MemoryStore;

use super::{lock, Booster, Figures, Head};

/// How long a stopped head's connections get to close.
const STOP_GRACE: Duration = Duration::from_secs(2);

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
}
