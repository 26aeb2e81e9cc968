//! Per-key rate limits (token buckets) with a bounded number of tracked keys, shared by
//! the protocols (kad's per-peer and per-group request rates, identify's pushes per peer). Time is an input: no clock is read here.
//!
//! What it is not: a scheduler or a queue — it answers "may this key act now?" and keeps
//! no backlog. Keys are whatever the caller counts by (a `PeerId`, an
//! [`IpPrefix`](crate::ipprefix::IpPrefix)).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A token bucket per key: `burst` requests at once, refilled at `per_second`.
pub struct RateLimiter<K> {
    burst: f64,
    per_second: f64,
    max_keys: usize,
    buckets: HashMap<K, (f64, Instant)>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(burst: u32, per_second: u32, max_keys: usize) -> Self {
        RateLimiter {
            burst: f64::from(burst.max(1)),
            per_second: f64::from(per_second),
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `key`; false when the key is over its rate.
    pub fn allow(&mut self, key: &K, now: Instant) -> bool {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            self.prune(now);
            if self.buckets.len() >= self.max_keys {
                // Every tracked key is busy: refuse newcomers rather than forget limits.
                return false;
            }
        }
        let (burst, rate) = (self.burst, self.per_second);
        let (tokens, last) = self.buckets.entry(key.clone()).or_insert((burst, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * rate;
        *tokens = (*tokens + refill).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets `key` (it left: a peer that disconnected); it starts again with a full
    /// bucket.
    pub fn forget(&mut self, key: &K) {
        self.buckets.remove(key);
    }

    /// Forgets keys whose bucket has refilled (they are back to the default state).
    fn prune(&mut self, now: Instant) {
        let full_after = if self.per_second > 0.0 {
            Duration::from_secs_f64(self.burst / self.per_second)
        } else {
            Duration::MAX
        };
        self.buckets
            .retain(|_, (_, last)| now.saturating_duration_since(*last) < full_after);
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_and_stays_bounded() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(3, 2, 2);
        assert!((0..3).all(|_| l.allow(&"a", t0)));
        assert!(!l.allow(&"a", t0));
        assert!(l.allow(&"a", t0 + Duration::from_millis(500)));
        assert!(!l.allow(&"a", t0 + Duration::from_millis(500)));
        assert!(l.allow(&"b", t0));
        // Two keys tracked and both busy: a third is refused.
        assert!(!l.allow(&"c", t0 + Duration::from_millis(600)));
        // Once their buckets refill they are forgotten and make room.
        assert!(l.allow(&"c", t0 + Duration::from_secs(5)));
        assert!(l.len() <= 2);
    }
}
