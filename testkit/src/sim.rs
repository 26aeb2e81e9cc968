//! The simulator's time and randomness: a virtual clock, an event queue that jumps the
//! clock to the next event, and seeded random numbers.
//!
//! What it is not: a runtime. Nothing here sleeps, spawns or reads the wall clock (one
//! `Instant` is taken once as the origin of virtual time, because `Instant` has no other
//! constructor; nothing depends on its value). Same seed, same events, same results.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

/// The random numbers of one run: everything random in a simulation comes from here.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Virtual time: a monotonic `Instant` for the cores' timeouts and a Unix-milliseconds
/// wall clock for records and the routing table, both advanced only by the simulator.
#[derive(Debug, Clone)]
pub struct Clock {
    origin: Instant,
    elapsed: Duration,
}

impl Clock {
    /// The virtual wall clock at the start of every run (2023-11-14T22:13:20Z).
    pub const START_UNIX_MS: u64 = 1_700_000_000_000;

    pub fn new() -> Clock {
        Clock {
            origin: Instant::now(),
            elapsed: Duration::ZERO,
        }
    }

    /// Now, as the cores take it.
    pub fn now(&self) -> Instant {
        self.origin + self.elapsed
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Now, as Unix milliseconds.
    pub fn unix_ms(&self) -> u64 {
        Self::START_UNIX_MS + self.elapsed.as_millis() as u64
    }

    /// The virtual time of an instant (instants before the start count as the start).
    pub fn since_start(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.origin)
    }

    /// Moves the clock forward to `to` (never back).
    fn advance_to(&mut self, to: Duration) {
        self.elapsed = self.elapsed.max(to);
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

struct Scheduled<E> {
    at: Duration,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<E> Eq for Scheduled<E> {}

impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Scheduled<E> {
    // Reversed: the heap's top is the earliest event, and of events at the same time the
    // one scheduled first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Events in time order, with the clock they drive.
pub struct Scheduler<E> {
    clock: Clock,
    queue: BinaryHeap<Scheduled<E>>,
    seq: u64,
}

impl<E> Scheduler<E> {
    pub fn new() -> Self {
        Scheduler {
            clock: Clock::new(),
            queue: BinaryHeap::new(),
            seq: 0,
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Schedules `event` at `at` (an instant in the past means now).
    pub fn at(&mut self, at: Instant, event: E) {
        let at = self.clock.since_start(at).max(self.clock.elapsed);
        self.push(at, event);
    }

    /// Schedules `event` after `delay`.
    pub fn after(&mut self, delay: Duration, event: E) {
        let at = self.clock.elapsed + delay;
        self.push(at, event);
    }

    fn push(&mut self, at: Duration, event: E) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            event,
        });
    }

    /// The next event due no later than `until` (virtual time since the start), with the
    /// clock moved to it; `None` (and the clock at `until`) when there is none.
    pub fn next_until(&mut self, until: Duration) -> Option<E> {
        match self.queue.peek() {
            Some(s) if s.at <= until => {
                let s = self.queue.pop()?;
                self.clock.advance_to(s.at);
                Some(s.event)
            }
            _ => {
                self.clock.advance_to(until);
                None
            }
        }
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

impl<E> Default for Scheduler<E> {
    fn default() -> Self {
        Scheduler::new()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rand::Rng;

    #[test]
    fn events_come_in_time_order_then_fifo_and_move_the_clock() {
        let mut s = Scheduler::new();
        let t0 = s.now();
        s.after(Duration::from_millis(30), "c");
        s.after(Duration::from_millis(10), "a");
        s.after(Duration::from_millis(10), "b");
        s.at(t0 + Duration::from_millis(50), "d");
        assert_eq!(s.next_until(Duration::from_millis(100)), Some("a"));
        assert_eq!(s.clock().elapsed(), Duration::from_millis(10));
        assert_eq!(s.next_until(Duration::from_millis(100)), Some("b"));
        assert_eq!(s.next_until(Duration::from_millis(100)), Some("c"));
        assert_eq!(s.now(), t0 + Duration::from_millis(30));
        assert_eq!(s.clock().unix_ms(), Clock::START_UNIX_MS + 30);
        // Not due before 40 ms: the clock stops there.
        assert_eq!(s.next_until(Duration::from_millis(40)), None);
        assert_eq!(s.clock().elapsed(), Duration::from_millis(40));
        // An event in the past runs now; the clock never goes back.
        s.at(t0, "late");
        assert_eq!(s.next_until(Duration::from_millis(40)), Some("late"));
        assert_eq!(s.clock().elapsed(), Duration::from_millis(40));
        assert_eq!(s.next_until(Duration::MAX), Some("d"));
        assert!(s.is_empty());
    }

    #[test]
    fn a_seed_gives_one_sequence() {
        let a: Vec<u64> = (0..8)
            .map({
                let mut r = rng(7);
                move |_| r.random()
            })
            .collect();
        let b: Vec<u64> = (0..8)
            .map({
                let mut r = rng(7);
                move |_| r.random()
            })
            .collect();
        let c: u64 = rng(8).random();
        assert_eq!(a, b);
        assert_ne!(a[0], c);
    }
}
