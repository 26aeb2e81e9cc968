//! The booster's measuring loop: crawl the DHT ([`super::crawl`]), measure the network's
//! size, the heads' keyspace coverage and the churn ([`super::coverage`]), then let the
//! controller ([`super::controller`]) add or stop heads toward the target coverage within
//! the budget. One round every `crawl_interval`, the first `crawl_delay` after start.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use pylon_node::protocols::kad::{self, Key, MessageType};
use pylon_node::PeerId;

use super::controller::{Budget, HeadFigures, Measured, Tick};
use super::crawl::{Crawl, Next};
use super::{coverage, lock, Booster, Measurement};

/// A head's memory estimate for the budget: measured idle at 0.3 MiB with a 200-peer
/// table (docs/BOOSTER.md, `bench --only booster`), rounded up for its connections'
/// buffers under load.
pub(super) const MEMORY_PER_HEAD: u64 = 1 << 20;

impl Booster {
    /// The measuring loop, until the node stops.
    pub(super) async fn size_forever(self: Arc<Self>) {
        let start = Instant::now();
        let shutdown = self.node.host.shutdown_token();
        let mut wait = self.config.crawl_delay;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            self.measure_and_resize(start).await;
            wait = self.config.crawl_interval;
        }
    }

    /// One round: crawl, measure, decide, apply.
    pub async fn measure_and_resize(self: &Arc<Self>, origin: Instant) {
        let measured = self.measure().await;
        if !self.config.autoscale {
            return;
        }
        let figures = self.head_figures(measured.as_ref());
        let connections: usize = self
            .heads()
            .iter()
            .map(|(_, h)| h.host.connections().len())
            .sum();
        let running = figures.len().max(1);
        let budget = Budget {
            max_heads: self.config.max_heads as usize,
            max_connections: if self.config.max_connections == 0 {
                usize::MAX
            } else {
                self.config.max_connections
            },
            max_memory_bytes: if self.config.max_memory_mb == 0 {
                u64::MAX
            } else {
                self.config.max_memory_mb.saturating_mul(1 << 20)
            },
            connections_per_head: (connections / running).max(1),
            memory_per_head_bytes: MEMORY_PER_HEAD,
        };
        let decision = lock(&self.controller).handle_tick(&Tick {
            now: origin.elapsed(),
            heads: &figures,
            measured: measured.as_ref().map(|m| Measured {
                coverage: m.coverage,
                heads: m.heads,
                network_size: m.network_size,
            }),
            budget,
        });
        self.metrics
            .decisions
            .get_or_create(&super::OutcomeLabels {
                outcome: decision.reason.label(),
            })
            .inc();
        if !decision.is_change() {
            return;
        }
        tracing::info!(
            "booster: {} head(s) added, {:?} stopped ({})",
            decision.add,
            decision.remove,
            decision.reason.label()
        );
        for index in &decision.remove {
            self.remove_head(*index).await;
        }
        // New heads take the lowest free indices: the set stays balanced.
        let mut added = 0;
        let mut index = 0;
        while added < decision.add && index < self.config.max_heads {
            if !lock(&self.heads).contains_key(&index) {
                self.add_head(index).await;
                added += 1;
            }
            index += 1;
        }
    }

    /// Crawls and records what it found (metrics, status); `None` when nothing answered.
    pub async fn measure(&self) -> Option<Measurement> {
        let began = Instant::now();
        let heads = self.heads();
        let exclude: HashSet<PeerId> = self
            .siblings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let main_kad = self.node.kad.as_ref()?;
        let mut crawl = Crawl::new(self.crawl_limits(main_kad.config().table.k), began, exclude);
        for entry in main_kad.table_entries().into_iter().chain(
            heads
                .iter()
                .filter_map(|(_, h)| h.kad.as_ref())
                .flat_map(|k| k.table_entries()),
        ) {
            crawl.learn(entry.peer, entry.addrs);
        }
        let mut running = FuturesUnordered::new();
        loop {
            match crawl.next(Instant::now()) {
                Next::Ask(req) => {
                    let kad = main_kad.clone();
                    running.push(async move {
                        let msg = kad::proto::Message::new(MessageType::FindNode, req.key);
                        let result = kad.query(req.peer, &req.addrs, &msg).await;
                        (req.peer, req.bucket, result)
                    });
                }
                Next::Wait(d) => {
                    tokio::select! {
                        Some((peer, bucket, result)) = running.next() => crawl_answer(&mut crawl, peer, bucket, result),
                        _ = tokio::time::sleep(d) => {}
                    }
                }
                Next::Pending => match running.next().await {
                    Some((peer, bucket, result)) => crawl_answer(&mut crawl, peer, bucket, result),
                    None => break,
                },
                Next::Done => break,
            }
        }
        let snapshot = crawl.snapshot(Instant::now());
        self.metrics.crawl_requests.inc_by(snapshot.requests);
        if snapshot.responsive.is_empty() {
            return None;
        }
        let peer_keys: Vec<Key> = snapshot.responsive.iter().map(Key::from_peer).collect();
        let head_keys: Vec<Key> = heads
            .iter()
            .map(|(_, h)| Key::from_peer(&h.peer_id()))
            .collect();
        let k = main_kad.config().table.k;
        let cov = coverage::coverage(&peer_keys, &head_keys, k);
        let at = self.started.elapsed();
        let churn = {
            let mut last = lock(&self.last_crawl);
            let churn = last.as_ref().map(|(before, before_at)| {
                coverage::churn(before, *before_at, &snapshot.responsive, at)
            });
            *last = Some((snapshot.responsive.clone(), at));
            churn
        };
        let m = Measurement {
            network_size: coverage::size_from_crawl(&snapshot.responsive),
            coverage: cov.share,
            heads: heads.len(),
            marginal: heads
                .iter()
                .zip(&cov.heads)
                .map(|((i, _), c)| (*i, c.marginal))
                .collect(),
            churn_per_hour: churn.map(|c| c.gone_per_hour),
            truncated: snapshot.truncated,
            took_seconds: snapshot.took.as_secs_f64(),
        };
        self.metrics.network_size.set(m.network_size as i64);
        self.metrics.coverage.set(m.coverage);
        if let Some(c) = m.churn_per_hour {
            self.metrics.churn.set(c);
        }
        *lock(&self.measured) = Some(m.clone());
        tracing::info!(
            "booster crawl: {} peers, coverage {:.3} with {} heads, {} requests ({} not needed) in {:.1} s",
            m.network_size,
            m.coverage,
            m.heads,
            snapshot.requests,
            snapshot.skipped,
            m.took_seconds
        );
        Some(m)
    }

    fn head_figures(&self, measured: Option<&Measurement>) -> Vec<HeadFigures> {
        lock(&self.heads)
            .iter()
            .map(|(index, h)| HeadFigures {
                index: *index,
                requests: h.figures.gets.load(Ordering::Relaxed),
                from_store: h.figures.found.load(Ordering::Relaxed),
                cache_hits: h.figures.cache_hits.load(Ordering::Relaxed),
                // Every stream payload the head sent (its answers, and its own lookups'
                // requests, which are small).
                bytes_served: h.node.host.metrics().stream_bytes_sent.get(),
                marginal_coverage: measured
                    .and_then(|m| m.marginal.iter().find(|(i, _)| i == index))
                    .map_or(0.0, |(_, c)| *c),
            })
            .collect()
    }

    fn crawl_limits(&self, k: usize) -> super::crawl::Limits {
        super::crawl::Limits {
            max_peers: self.config.crawl_max_peers,
            buckets_per_peer: 16,
            exhausted_below: k.saturating_sub(2),
            max_in_flight: 16,
            per_second: self.config.crawl_per_second,
        }
    }
}

fn crawl_answer(
    crawl: &mut Crawl,
    peer: PeerId,
    bucket: u8,
    result: Result<kad::proto::Message, kad::Error>,
) {
    match result {
        Ok(reply) => {
            let found = reply
                .closer_peers
                .iter()
                .filter_map(|p| {
                    let id = PeerId::from_bytes(&p.id).ok()?;
                    let addrs = p
                        .addrs
                        .iter()
                        .filter_map(|a| multiaddr::Multiaddr::try_from(a.clone()).ok())
                        .collect();
                    Some((id, addrs))
                })
                .collect();
            crawl.answered(&peer, bucket, found);
        }
        Err(_) => crawl.failed(&peer),
    }
}

/// How long the first round waits by default: the heads' tables fill first.
pub(super) const FIRST_CRAWL: Duration = Duration::from_secs(120);
