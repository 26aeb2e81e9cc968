//! In-memory links between simulated nodes: each message takes a one-way latency that
//! depends on how far apart the two nodes are (each sits at a random point of a unit
//! square, a rough stand-in for geography), plus jitter, and may be lost.
//!
//! What it is not: a transport model. There are no connections, handshakes, congestion
//! or reordering beyond what jitter gives; a message is delivered once or not at all.

use std::time::Duration;

use rand::Rng;

/// How the links behave.
#[derive(Debug, Clone)]
pub struct Config {
    /// One-way latency between two nodes at the same point.
    pub base: Duration,
    /// Added to `base` for two nodes at opposite corners (linear in distance).
    pub spread: Duration,
    /// Up to this much more, drawn per message.
    pub jitter: Duration,
    /// Probability that a message is lost.
    pub loss: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            base: Duration::from_millis(5),
            spread: Duration::from_millis(145),
            jitter: Duration::from_millis(5),
            loss: 0.01,
        }
    }
}

/// The nodes' positions and the link rules.
#[derive(Debug, Clone)]
pub struct Links {
    config: Config,
    positions: Vec<(f64, f64)>,
}

impl Links {
    pub fn new(config: Config) -> Self {
        Links {
            config,
            positions: Vec::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Places a new node; returns its index (0, 1, 2, ... in order of addition).
    pub fn add_node(&mut self, rng: &mut impl Rng) -> usize {
        self.positions.push((rng.random(), rng.random()));
        self.positions.len() - 1
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// The one-way latency from `a` to `b` without jitter.
    pub fn latency(&self, a: usize, b: usize) -> Duration {
        let (pa, pb) = (self.positions[a], self.positions[b]);
        let d = ((pa.0 - pb.0).powi(2) + (pa.1 - pb.1).powi(2)).sqrt() / std::f64::consts::SQRT_2;
        self.config.base + self.config.spread.mul_f64(d.clamp(0.0, 1.0))
    }

    /// How long one message from `a` to `b` takes, or `None` if it is lost.
    pub fn transit(&self, rng: &mut impl Rng, a: usize, b: usize) -> Option<Duration> {
        if self.config.loss > 0.0 && rng.random_bool(self.config.loss.min(1.0)) {
            return None;
        }
        let jitter = self.config.jitter.mul_f64(rng.random());
        Some(self.latency(a, b) + jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::rng;

    #[test]
    fn latency_grows_with_distance_and_loss_is_about_its_rate() {
        let mut r = rng(1);
        let mut links = Links::new(Config {
            loss: 0.1,
            ..Config::default()
        });
        for _ in 0..50 {
            links.add_node(&mut r);
        }
        let c = links.config().clone();
        for a in 0..50 {
            assert_eq!(links.latency(a, a), c.base);
            for b in 0..50 {
                let l = links.latency(a, b);
                assert_eq!(l, links.latency(b, a), "symmetric");
                assert!(l >= c.base && l <= c.base + c.spread);
            }
        }
        let sent = 20_000;
        let mut lost = 0;
        for i in 0..sent {
            match links.transit(&mut r, i % 50, (i * 7) % 50) {
                None => lost += 1,
                Some(t) => {
                    let l = links.latency(i % 50, (i * 7) % 50);
                    assert!(t >= l && t <= l + c.jitter);
                }
            }
        }
        // 10 % of 20 000: the binomial's standard deviation is ~42.
        assert!((1800..=2200).contains(&lost), "{lost}");
    }
}
