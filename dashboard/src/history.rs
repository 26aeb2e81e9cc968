//! The node's recent history, kept in memory for the web dashboard's charts: every
//! [`INTERVAL`] a reading of connections, bandwidth and requests per role, the last
//! [`CAPACITY`] of them (an hour) in a ring that drops the oldest. [`History`] is the core:
//! it takes readings with their time (never reads a clock) and keeps, per sample, the
//! gauges as read and the counters as differences from the reading before. [`sample`]
//! reads the node on a timer and feeds it. Served as `GET /api/v1/history`.
//!
//! Not here: long-term storage (Prometheus scrapes `/metrics` for that), per-peer history,
//! anything that survives a restart.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pylon_node::metrics::StreamLabels;
use serde::Serialize;

use crate::Admin;

/// How often the node is read.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// How many samples are kept: an hour at [`INTERVAL`].
pub const CAPACITY: usize = 720;

/// What the node's gauges and counters say at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    pub connections: usize,
    pub inbound: usize,
    pub connected_peers: usize,
    pub streams: usize,
    /// Stream payload read and written since the node started.
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Inbound streams of each role's protocols since the node started, by role.
    pub requests: BTreeMap<String, u64>,
}

/// One point of the history: gauges as read, counters as what happened in the `span_ms`
/// before `unix_ms`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Sample {
    /// When the reading was taken (Unix milliseconds).
    pub unix_ms: u64,
    /// The time the counts below cover: since the reading before, 0 for the first.
    pub span_ms: u64,
    pub connections: usize,
    pub inbound: usize,
    pub outbound: usize,
    pub connected_peers: usize,
    pub streams: usize,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Requests each role served in the span.
    pub requests: BTreeMap<String, u64>,
}

/// The ring of samples. Cheap to share: one short lock per reading and per request.
#[derive(Debug)]
pub struct History {
    capacity: usize,
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    samples: VecDeque<Sample>,
    last: Option<(Instant, Reading)>,
}

impl Default for History {
    fn default() -> Self {
        History::new(CAPACITY)
    }
}

impl History {
    /// A history keeping the last `capacity` samples (at least one).
    pub fn new(capacity: usize) -> History {
        let capacity = capacity.max(1);
        History {
            capacity,
            inner: Mutex::new(Ring {
                samples: VecDeque::with_capacity(capacity),
                last: None,
            }),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a reading made at `now` (`unix_ms` on the wall clock): appends a sample, the
    /// oldest dropped past the capacity. A counter lower than before (it cannot be, but a
    /// role could come and go) counts as 0 for the span.
    pub fn handle_reading(&self, now: Instant, unix_ms: u64, reading: Reading) {
        let mut ring = self.ring();
        let (span, bytes_received, bytes_sent, requests) = match &ring.last {
            None => (
                Duration::ZERO,
                0,
                0,
                reading.requests.keys().map(|k| (k.clone(), 0)).collect(),
            ),
            Some((then, before)) => (
                now.saturating_duration_since(*then),
                reading.bytes_received.saturating_sub(before.bytes_received),
                reading.bytes_sent.saturating_sub(before.bytes_sent),
                reading
                    .requests
                    .iter()
                    .map(|(role, n)| {
                        let was = before.requests.get(role).copied().unwrap_or(*n);
                        (role.clone(), n.saturating_sub(was))
                    })
                    .collect(),
            ),
        };
        let sample = Sample {
            unix_ms,
            span_ms: u64::try_from(span.as_millis()).unwrap_or(u64::MAX),
            connections: reading.connections,
            inbound: reading.inbound,
            outbound: reading.connections.saturating_sub(reading.inbound),
            connected_peers: reading.connected_peers,
            streams: reading.streams,
            bytes_received,
            bytes_sent,
            requests,
        };
        if ring.samples.len() == self.capacity {
            ring.samples.pop_front();
        }
        ring.samples.push_back(sample);
        ring.last = Some((now, reading));
    }

    /// The samples taken after `since` (Unix milliseconds), or all of them, oldest first.
    pub fn samples(&self, since: Option<u64>) -> Vec<Sample> {
        let ring = self.ring();
        ring.samples
            .iter()
            .filter(|s| since.is_none_or(|t| s.unix_ms > t))
            .cloned()
            .collect()
    }
}

/// What the node says now.
pub(crate) fn read(admin: &Admin) -> Reading {
    let host = &admin.node.host;
    let conns = host.connections();
    let inbound = conns
        .iter()
        .filter(|c| c.direction() == pylon_node::host::Direction::Inbound)
        .count();
    let metrics = host.metrics();
    let inbound_streams = |protocol: &String| {
        metrics
            .streams_opened
            .get(&StreamLabels {
                dir: "inbound",
                protocol: protocol.clone(),
            })
            .map_or(0, |c| c.get())
    };
    let requests = admin
        .roles
        .iter()
        .map(|r| {
            let n = r.protocols().iter().map(inbound_streams).sum();
            (r.name().to_string(), n)
        })
        .collect();
    Reading {
        connections: conns.len(),
        inbound,
        connected_peers: host.connected_peers().len(),
        streams: conns.iter().map(|c| c.stream_count()).sum(),
        bytes_received: metrics.stream_bytes_received.get(),
        bytes_sent: metrics.stream_bytes_sent.get(),
        requests,
    }
}

/// Reads the node into `admin.history` now and every [`INTERVAL`] after; runs until
/// dropped (the binary runs it beside the admin listener, in the same task).
pub async fn sample(admin: Arc<Admin>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let reading = read(&admin);
        admin
            .history
            .handle_reading(Instant::now(), crate::api::now_unix_ms(), reading);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn reading(conns: usize, rx: u64, tx: u64, relay: u64) -> Reading {
        Reading {
            connections: conns,
            inbound: 1.min(conns),
            connected_peers: conns,
            streams: 2 * conns,
            bytes_received: rx,
            bytes_sent: tx,
            requests: [("relay".to_string(), relay)].into(),
        }
    }

    #[test]
    fn counters_become_differences_and_gauges_stay() {
        let h = History::new(10);
        let t0 = Instant::now();
        h.handle_reading(t0, 1_000, reading(2, 500, 700, 9));
        h.handle_reading(t0 + INTERVAL, 6_000, reading(3, 800, 1_700, 12));
        let s = h.samples(None);
        assert_eq!(s.len(), 2);
        // The first sample is the baseline: gauges, no counts.
        assert_eq!(
            (s[0].span_ms, s[0].bytes_received, s[0].bytes_sent),
            (0, 0, 0)
        );
        assert_eq!(s[0].requests["relay"], 0);
        assert_eq!(s[0].connections, 2);
        assert_eq!((s[0].inbound, s[0].outbound), (1, 1));
        assert_eq!(s[1].span_ms, 5_000);
        assert_eq!((s[1].bytes_received, s[1].bytes_sent), (300, 1_000));
        assert_eq!(s[1].requests["relay"], 3);
        assert_eq!((s[1].connections, s[1].streams), (3, 6));
        assert_eq!(h.samples(Some(1_000)), s[1..]);
        assert!(h.samples(Some(6_000)).is_empty());
    }

    #[test]
    fn the_ring_keeps_the_newest_and_is_bounded() {
        let h = History::new(3);
        let t0 = Instant::now();
        for i in 0..10u64 {
            h.handle_reading(
                t0 + INTERVAL * i as u32,
                i * 5_000,
                reading(1, i * 10, 0, i),
            );
        }
        let s = h.samples(None);
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.iter().map(|s| s.unix_ms).collect::<Vec<_>>(),
            [35_000, 40_000, 45_000]
        );
        assert!(s.iter().all(|s| s.bytes_received == 10));
        assert_eq!(History::default().capacity(), CAPACITY);
        assert_eq!(History::new(0).capacity(), 1);
    }

    #[test]
    fn a_counter_going_back_or_a_new_role_counts_zero() {
        let h = History::new(4);
        let t0 = Instant::now();
        h.handle_reading(t0, 0, reading(1, 100, 100, 5));
        let mut r = reading(1, 50, 100, 2);
        r.requests.insert("autonat".into(), 7);
        // The wall clock went back too: the span comes from the monotonic clock.
        h.handle_reading(t0 + Duration::from_secs(1), 0, r);
        let s = &h.samples(None)[1];
        assert_eq!(s.bytes_received, 0);
        assert_eq!(s.requests["relay"], 0);
        assert_eq!(s.requests["autonat"], 0);
        assert_eq!(s.span_ms, 1_000);
    }
}
