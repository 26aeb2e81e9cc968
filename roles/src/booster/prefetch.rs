//! The provider prefetch's bookkeeping, sans-IO (time is an input): which GET_PROVIDERS
//! misses start a DHT lookup, and which are refused, so the prefetcher never turns into a
//! lookup amplifier.
//!
//! - **coalescing**: one lookup per key at a time; a miss on a key being fetched joins it;
//! - **remembering**: a key fetched within `remember` is not fetched again (found or
//!   not: a flood of random keys that miss costs one lookup per key, once);
//! - **bounds**: lookups running at once (`max_concurrent`), started per minute
//!   (`per_minute`, a sliding window), and keys remembered (`max_remembered`, oldest
//!   forgotten first).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// The bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_concurrent: usize,
    pub per_minute: u32,
    pub remember: Duration,
    pub max_remembered: usize,
}

/// What to do with a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Start a lookup; call [`Prefetch::finish`] when it ends.
    Start,
    /// A lookup for this key is running.
    Coalesced,
    /// Fetched a moment ago: what it found is in the store already.
    Recent,
    /// `max_concurrent` lookups are running.
    Busy,
    /// `per_minute` lookups started in the last minute.
    OverBudget,
}

impl Admit {
    /// The metric's `outcome`.
    pub fn label(self) -> &'static str {
        match self {
            Admit::Start => "started",
            Admit::Coalesced => "coalesced",
            Admit::Recent => "recent",
            Admit::Busy => "busy",
            Admit::OverBudget => "over_budget",
        }
    }
}

/// The state: lookups running, recent starts, keys fetched lately.
#[derive(Debug)]
pub struct Prefetch {
    limits: Limits,
    running: HashSet<Vec<u8>>,
    starts: VecDeque<Instant>,
    /// Key → when it was fetched; `order` keeps the insertion order for eviction.
    fetched: HashMap<Vec<u8>, Instant>,
    order: VecDeque<(Vec<u8>, Instant)>,
}

const MINUTE: Duration = Duration::from_secs(60);

impl Prefetch {
    pub fn new(limits: Limits) -> Self {
        Prefetch {
            limits,
            running: HashSet::new(),
            starts: VecDeque::new(),
            fetched: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// A miss on `key` at `now`.
    pub fn admit(&mut self, key: &[u8], now: Instant) -> Admit {
        self.expire(now);
        if self.running.contains(key) {
            return Admit::Coalesced;
        }
        if self.fetched.contains_key(key) {
            return Admit::Recent;
        }
        if self.running.len() >= self.limits.max_concurrent {
            return Admit::Busy;
        }
        if self.starts.len() >= self.limits.per_minute as usize {
            return Admit::OverBudget;
        }
        self.running.insert(key.to_vec());
        self.starts.push_back(now);
        Admit::Start
    }

    /// The lookup for `key` ended at `now` (whatever it found).
    pub fn finish(&mut self, key: &[u8], now: Instant) {
        if !self.running.remove(key) {
            return;
        }
        if self.fetched.insert(key.to_vec(), now).is_none() {
            self.order.push_back((key.to_vec(), now));
        }
        while self.order.len() > self.limits.max_remembered {
            if let Some((old, _)) = self.order.pop_front() {
                self.fetched.remove(&old);
            }
        }
    }

    /// Was `key` fetched within `remember` of `now`? (A GET_PROVIDERS answered with
    /// providers for it is then a cache hit.)
    pub fn was_fetched(&self, key: &[u8], now: Instant) -> bool {
        self.fetched
            .get(key)
            .is_some_and(|at| now.saturating_duration_since(*at) < self.limits.remember)
    }

    /// Lookups running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Keys remembered now.
    pub fn remembered(&self) -> usize {
        self.fetched.len()
    }

    fn expire(&mut self, now: Instant) {
        while self
            .starts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= MINUTE)
        {
            self.starts.pop_front();
        }
        while let Some((key, at)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.limits.remember {
                break;
            }
            // Refetched since: a newer entry in `order` holds it.
            if self.fetched.get(key) == Some(at) {
                self.fetched.remove(key);
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_concurrent: 2,
            per_minute: 3,
            remember: Duration::from_secs(600),
            max_remembered: 4,
        }
    }

    #[test]
    fn concurrent_misses_on_one_key_coalesce_and_a_fetched_key_is_not_fetched_again() {
        let t0 = Instant::now();
        let mut p = Prefetch::new(limits());
        assert_eq!(p.admit(b"a", t0), Admit::Start);
        assert_eq!(p.admit(b"a", t0), Admit::Coalesced);
        assert_eq!(p.running(), 1);
        p.finish(b"a", t0 + Duration::from_secs(1));
        assert!(p.was_fetched(b"a", t0 + Duration::from_secs(2)));
        assert_eq!(p.admit(b"a", t0 + Duration::from_secs(2)), Admit::Recent);
        // After `remember`, fetched again.
        let later = t0 + Duration::from_secs(700);
        assert!(!p.was_fetched(b"a", later));
        assert_eq!(p.admit(b"a", later), Admit::Start);
    }

    #[test]
    fn a_flood_of_random_keys_is_bounded_by_concurrency_and_rate() {
        let t0 = Instant::now();
        let mut p = Prefetch::new(limits());
        let outcomes: Vec<Admit> = (0u32..10).map(|i| p.admit(&i.to_be_bytes(), t0)).collect();
        assert_eq!(
            outcomes.iter().filter(|a| **a == Admit::Start).count(),
            2,
            "{outcomes:?}"
        );
        assert!(outcomes[2..].iter().all(|a| *a == Admit::Busy));
        // The two end: one more start fits the minute's budget of 3, then no more.
        p.finish(&0u32.to_be_bytes(), t0);
        p.finish(&1u32.to_be_bytes(), t0);
        assert_eq!(p.admit(&20u32.to_be_bytes(), t0), Admit::Start);
        p.finish(&20u32.to_be_bytes(), t0);
        assert_eq!(p.admit(&21u32.to_be_bytes(), t0), Admit::OverBudget);
        // A minute later the window has room again.
        assert_eq!(
            p.admit(&21u32.to_be_bytes(), t0 + Duration::from_secs(60)),
            Admit::Start
        );
    }

    #[test]
    fn remembered_keys_are_bounded() {
        let t0 = Instant::now();
        let mut p = Prefetch::new(Limits {
            max_concurrent: 100,
            per_minute: 100,
            ..limits()
        });
        for i in 0u32..10 {
            assert_eq!(p.admit(&i.to_be_bytes(), t0), Admit::Start);
            p.finish(&i.to_be_bytes(), t0);
        }
        assert_eq!(p.remembered(), 4);
        assert!(!p.was_fetched(&0u32.to_be_bytes(), t0), "oldest forgotten");
        assert!(p.was_fetched(&9u32.to_be_bytes(), t0));
        // A finish without a start changes nothing.
        p.finish(b"never", t0);
        assert!(!p.was_fetched(b"never", t0));
    }
}
