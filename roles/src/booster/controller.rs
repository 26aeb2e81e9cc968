//! The sizing controller: how many heads the booster runs, from the coverage a crawl
//! measured, each head's figures and the budget. Sans-IO: time is an input
//! ([`Controller::handle_tick`] takes `now` as a `Duration` since any fixed origin), the
//! output a [`Decision`] the role carries out; every decision names the figure that made
//! it ([`Reason`]).
//!
//! What it is not: the crawler, nor the heads' lifecycle. It never picks the indices of
//! new heads (the role adds the lowest free ones, keeping the set balanced, see
//! [`super::keys`]), only which running heads to stop.
//!
//! ## The rules, in order
//! 1. **Budget**: more heads than the budget allows (max heads, connections, memory, with
//!    per-head costs) → stop the least valuable at once, whatever the rate limit.
//! 2. **Floor**: fewer than `min_heads` → add up to it at once.
//! 3. **Rate limit**: at most one change per `min_interval`; a measurement taken with
//!    another head count than the current one (the crawl predates the last change) is
//!    stale → hold.
//! 4. **Below target** → add toward the estimate of the heads needed for the middle of
//!    the band, target + hysteresis/2 (at most `max_step` at once, within the budget: at
//!    the budget, hold with reason `budget`).
//! 5. **Above target + hysteresis** (the network shrank, or the heads overshoot) →
//!    remove toward the middle of the band, heads with the smallest marginal coverage
//!    (then the lowest value) first, never below `min_heads`.
//! 6. **In the band**, a head whose marginal coverage is tiny and whose value is the
//!    lowest goes when the coverage left without it stays in the upper half of the band
//!    (`low_value`); otherwise hold. Removals never bring the measured coverage below
//!    target + hysteresis/2 by the head's own marginal figure, and additions only happen
//!    below target, so a step out of the band is not undone by the next one.
//!
//! ## How many heads a coverage needs
//! With N peers and H heads, a peer's k closest (among N + H) each are a head with
//! probability H/(N+H). Heads placed at random would give `c = 1 − (N/(N+H))^k ≈
//! 1 − exp(−k·H/N)`: many peers see two heads while others see none. Balanced heads
//! ([`super::keys`]) do better: the k closest of a peer fill about k/N of the keyspace,
//! and heads spaced 1/H apart put one in it with probability about k·H/N, with little
//! overlap, so `c ≈ min(1, k·H/N)` — linear until it saturates. The simulation measures
//! it (docs/BOOSTER.md): within a few percent of k·H/N up to c ≈ 0.7, then ≈ 0.92 at
//! k·H/N = 1 and 1 beyond. [`expected_coverage`] is `min(1, a·k·H/N)` with an
//! efficiency `a` (≈ 1 for balanced heads); the controller fits `a` from the last
//! measurement (`a = c·N/(k·H)`, when c < [`SATURATED`]: above it the line says little),
//! so the estimate of heads needed for coverage t, `H* = t·N/(a·k)`, is right where the
//! measurement is, whatever the network's real geometry. Without a fit it takes `a = 1`.

use std::time::Duration;

/// The controller's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The coverage aimed at (share of peers whose k closest include a head).
    pub target_coverage: f64,
    /// Heads are removed only above `target_coverage + hysteresis`.
    pub hysteresis: f64,
    /// Never fewer heads.
    pub min_heads: usize,
    /// Heads added or removed by one decision at most (the budget rule excepted).
    pub max_step: usize,
    /// At most one change per this much time (the budget and floor rules excepted).
    pub min_interval: Duration,
    /// The DHT's k.
    pub k: usize,
    /// A marginal coverage below this is tiny (rule 6).
    pub low_marginal: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            target_coverage: 0.3,
            hysteresis: 0.05,
            min_heads: 1,
            max_step: 16,
            min_interval: Duration::from_secs(600),
            k: 20,
            low_marginal: 0.001,
        }
    }
}

/// What the operator allows the heads to cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub max_heads: usize,
    pub max_connections: usize,
    pub max_memory_bytes: u64,
    /// Estimates of one head's cost.
    pub connections_per_head: usize,
    pub memory_per_head_bytes: u64,
}

impl Budget {
    /// The most heads every limit allows.
    pub fn heads_allowed(&self) -> usize {
        let by_conns = self
            .max_connections
            .checked_div(self.connections_per_head)
            .unwrap_or(usize::MAX);
        let by_memory = self
            .max_memory_bytes
            .checked_div(self.memory_per_head_bytes)
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        self.max_heads.min(by_conns).min(by_memory)
    }
}

/// One running head's figures since it started (or over a recent window: the controller
/// only compares heads with each other).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HeadFigures {
    pub index: u32,
    /// Requests it answered.
    pub requests: u64,
    /// Of which with records or providers from the shared store.
    pub from_store: u64,
    /// Of which with providers the prefetch had cached.
    pub cache_hits: u64,
    pub bytes_served: u64,
    /// The coverage share only this head gives ([`super::coverage::HeadCoverage`]).
    pub marginal_coverage: f64,
}

impl HeadFigures {
    /// What the head is worth, to rank heads: answers from the shared store (what only a
    /// booster gives) count double, cache hits once more.
    pub fn value(&self) -> u64 {
        self.requests
            .saturating_add(self.from_store.saturating_mul(2))
            .saturating_add(self.cache_hits)
    }
}

/// The last crawl's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// Coverage share, in [0, 1].
    pub coverage: f64,
    /// The heads running when the crawl measured it.
    pub heads: usize,
    /// Estimated network size (peers).
    pub network_size: usize,
}

/// The input of one tick.
#[derive(Debug, Clone, Copy)]
pub struct Tick<'a> {
    /// Now, as time since a fixed origin (the role's start).
    pub now: Duration,
    /// The heads running.
    pub heads: &'a [HeadFigures],
    /// The last crawl's figures, when there was one.
    pub measured: Option<Measured>,
    pub budget: Budget,
}

/// Why a decision was taken: the figure behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Coverage below target (or fewer heads than the floor): grow.
    BelowTarget,
    /// Coverage above target + hysteresis: shrink.
    AboveTarget,
    /// Over budget: shrink; or below target at the budget: hold.
    Budget,
    /// A head adds little coverage and little value: stop it.
    LowValue,
    /// Nothing to do (in the band, rate-limited, or no fresh measurement).
    Hold,
}

impl Reason {
    /// The label in metrics and the status view.
    pub fn label(self) -> &'static str {
        match self {
            Reason::BelowTarget => "below_target",
            Reason::AboveTarget => "above_target",
            Reason::Budget => "budget",
            Reason::LowValue => "low_value",
            Reason::Hold => "hold",
        }
    }
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Heads to start (the role picks their indices).
    pub add: usize,
    /// Heads to stop, by index.
    pub remove: Vec<u32>,
    pub reason: Reason,
}

impl Decision {
    fn hold(reason: Reason) -> Decision {
        Decision {
            add: 0,
            remove: Vec::new(),
            reason,
        }
    }

    /// Does it change anything?
    pub fn is_change(&self) -> bool {
        self.add > 0 || !self.remove.is_empty()
    }
}

/// Above this coverage the linear model is saturated: no efficiency is fitted from it.
pub const SATURATED: f64 = 0.8;

/// The coverage `heads` balanced heads give a network of `network_size` peers with k
/// closest, at efficiency `a` (see the module doc): `min(1, a·k·H/N)`.
pub fn expected_coverage(heads: usize, network_size: usize, k: usize, a: f64) -> f64 {
    if heads == 0 {
        return 0.0;
    }
    if network_size == 0 {
        return 1.0;
    }
    (a * k as f64 * heads as f64 / network_size as f64).min(1.0)
}

/// The heads needed for `coverage` of a network of `network_size` peers at efficiency
/// `a` (rounded up): `c·N/(a·k)`.
pub fn heads_for(coverage: f64, network_size: usize, k: usize, a: f64) -> usize {
    let per_head = a * k as f64 / network_size.max(1) as f64;
    if per_head <= 0.0 {
        return 0;
    }
    (coverage.clamp(0.0, 1.0) / per_head - 1e-9).ceil().max(0.0) as usize
}

/// The efficiency that explains `coverage` measured with `heads` heads (see the module
/// doc), or `None` when the measurement says nothing (no heads, coverage 0 or at least
/// [`SATURATED`]).
pub fn fit_efficiency(coverage: f64, heads: usize, network_size: usize, k: usize) -> Option<f64> {
    if heads == 0 || network_size == 0 || k == 0 || !(coverage > 0.0 && coverage < SATURATED) {
        return None;
    }
    Some(coverage * network_size as f64 / (k as f64 * heads as f64))
}

/// The controller: its settings and when it last changed something.
#[derive(Debug, Clone)]
pub struct Controller {
    config: Config,
    last_change: Option<Duration>,
}

impl Controller {
    pub fn new(config: Config) -> Controller {
        Controller {
            config,
            last_change: None,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// When it last changed the head count.
    pub fn last_change(&self) -> Option<Duration> {
        self.last_change
    }

    /// One tick: what to do now. A decision that changes something starts the rate
    /// limit's interval.
    pub fn handle_tick(&mut self, tick: &Tick<'_>) -> Decision {
        let decision = self.decide(tick);
        if decision.is_change() {
            self.last_change = Some(tick.now);
        }
        decision
    }

    fn decide(&self, tick: &Tick<'_>) -> Decision {
        let c = &self.config;
        let running = tick.heads.len();
        let allowed = tick.budget.heads_allowed();
        // 1. Budget.
        if running > allowed {
            return Decision {
                add: 0,
                remove: self.least_valuable(tick.heads, running - allowed),
                reason: Reason::Budget,
            };
        }
        // 2. Floor.
        let floor = c.min_heads.min(allowed);
        if running < floor {
            return Decision {
                add: floor - running,
                remove: Vec::new(),
                reason: Reason::BelowTarget,
            };
        }
        // 3. Rate limit and freshness.
        if self
            .last_change
            .is_some_and(|at| tick.now < at.saturating_add(c.min_interval))
        {
            return Decision::hold(Reason::Hold);
        }
        let Some(m) = tick.measured.filter(|m| m.heads == running) else {
            return Decision::hold(Reason::Hold);
        };
        let a = fit_efficiency(m.coverage, running, m.network_size, c.k)
            .unwrap_or(1.0)
            .clamp(0.25, 4.0);
        let middle = c.target_coverage + c.hysteresis / 2.0;
        // 4. Below target: aim at the middle of the band, where noise in the measurement
        // crosses neither edge.
        if m.coverage < c.target_coverage {
            let room = allowed.saturating_sub(running);
            if room == 0 {
                return Decision::hold(Reason::Budget);
            }
            let needed = heads_for(middle, m.network_size, c.k, a);
            let add = needed
                .saturating_sub(running)
                .clamp(1, c.max_step.max(1))
                .min(room);
            return Decision {
                add,
                remove: Vec::new(),
                reason: Reason::BelowTarget,
            };
        }
        // 5. Above the band.
        if m.coverage > c.target_coverage + c.hysteresis {
            let needed = heads_for(middle, m.network_size, c.k, a).max(c.min_heads);
            let n = running
                .saturating_sub(needed)
                .clamp(1, c.max_step.max(1))
                .min(running.saturating_sub(c.min_heads));
            if n == 0 {
                return Decision::hold(Reason::Hold);
            }
            return Decision {
                add: 0,
                remove: self.least_valuable(tick.heads, n),
                reason: Reason::AboveTarget,
            };
        }
        // 6. In the band: one head of tiny marginal coverage and the lowest value.
        if running > c.min_heads {
            let lowest = tick
                .heads
                .iter()
                .filter(|h| h.marginal_coverage < c.low_marginal)
                .filter(|h| m.coverage - h.marginal_coverage >= middle)
                .min_by(|x, y| x.value().cmp(&y.value()).then(y.index.cmp(&x.index)));
            let min_value = tick.heads.iter().map(HeadFigures::value).min();
            if let Some(h) = lowest.filter(|h| Some(h.value()) == min_value) {
                return Decision {
                    add: 0,
                    remove: vec![h.index],
                    reason: Reason::LowValue,
                };
            }
        }
        Decision::hold(Reason::Hold)
    }

    /// The `n` heads to stop first: the smallest marginal coverage, then the lowest
    /// value, then the highest index (the set that stays is the most balanced).
    fn least_valuable(&self, heads: &[HeadFigures], n: usize) -> Vec<u32> {
        let mut ranked: Vec<&HeadFigures> = heads.iter().collect();
        ranked.sort_by(|x, y| {
            x.marginal_coverage
                .total_cmp(&y.marginal_coverage)
                .then(x.value().cmp(&y.value()))
                .then(y.index.cmp(&x.index))
        });
        ranked.into_iter().take(n).map(|h| h.index).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn plant_coverage(heads: usize, n: usize) -> f64 {
        1.0 - (-1.3 * 20.0 * heads as f64 / n as f64).exp()
    }

    fn budget(max_heads: usize) -> Budget {
        Budget {
            max_heads,
            max_connections: 100_000,
            max_memory_bytes: 1 << 40,
            connections_per_head: 200,
            memory_per_head_bytes: 4 << 20,
        }
    }

    /// A booster against a modelled network: coverage `1 − exp(−1.3·k·H/N)` (not the
    /// controller's own line: it must cope with a curve it does not assume) with a little deterministic noise, measured by a crawl every
    /// `crawl_every` with the heads running at the time; each head's marginal coverage an
    /// equal share.
    struct Plant {
        n: usize,
        heads: Vec<u32>,
        measured: Option<Measured>,
        noise: u64,
    }

    impl Plant {
        fn new(n: usize) -> Plant {
            Plant {
                n,
                heads: Vec::new(),
                measured: None,
                noise: 7,
            }
        }

        fn crawl(&mut self) {
            self.noise = self.noise.wrapping_mul(6364136223846793005).wrapping_add(1);
            let jitter = ((self.noise >> 33) % 1000) as f64 / 1000.0 * 0.02 - 0.01;
            let c = plant_coverage(self.heads.len(), self.n);
            self.measured = Some(Measured {
                coverage: (c + jitter).clamp(0.0, 1.0),
                heads: self.heads.len(),
                network_size: self.n,
            });
        }

        fn figures(&self) -> Vec<HeadFigures> {
            let c = self.measured.map_or(0.0, |m| m.coverage);
            self.heads
                .iter()
                .map(|&index| HeadFigures {
                    index,
                    requests: 100 + u64::from(index % 7),
                    marginal_coverage: c / self.heads.len().max(1) as f64 * 0.8,
                    ..HeadFigures::default()
                })
                .collect()
        }

        fn apply(&mut self, d: &Decision) {
            self.heads.retain(|i| !d.remove.contains(i));
            for _ in 0..d.add {
                let free = (0..).find(|i| !self.heads.contains(i)).unwrap();
                self.heads.push(free);
            }
        }
    }

    /// Runs the controller for `minutes`, a tick a minute and a crawl every 5; returns the
    /// head count after each tick and the decisions that changed something.
    fn run(
        ctl: &mut Controller,
        plant: &mut Plant,
        from: Duration,
        minutes: u32,
        budget: Budget,
    ) -> (Vec<usize>, Vec<Decision>) {
        let mut counts = Vec::new();
        let mut changes = Vec::new();
        for m in 0..minutes {
            let now = from + MINUTE * m;
            if m % 5 == 0 {
                plant.crawl();
            }
            let figures = plant.figures();
            let d = ctl.handle_tick(&Tick {
                now,
                heads: &figures,
                measured: plant.measured,
                budget,
            });
            assert!(plant.heads.len() + d.add <= budget.heads_allowed());
            plant.apply(&d);
            counts.push(plant.heads.len());
            if d.is_change() {
                changes.push(d);
            }
        }
        (counts, changes)
    }

    fn config() -> Config {
        Config {
            min_interval: Duration::from_secs(600),
            ..Config::default()
        }
    }

    fn coverage_of(plant: &Plant) -> f64 {
        plant_coverage(plant.heads.len(), plant.n)
    }

    #[test]
    fn grows_to_the_target_and_stays() {
        let mut ctl = Controller::new(config());
        let mut plant = Plant::new(5000);
        let (counts, changes) = run(&mut ctl, &mut plant, Duration::ZERO, 360, budget(1000));
        let c = coverage_of(&plant);
        assert!(
            (0.3 - 0.01..=0.35 + 0.01).contains(&c),
            "{c} with {counts:?}"
        );
        // Converged within 2 hours, then no change for the last 4.
        let at_2h = counts[119];
        assert!(counts[120..].iter().all(|&n| n == at_2h), "{counts:?}");
        // Growth only: no oscillation.
        assert!(
            changes
                .iter()
                .all(|d| d.reason == Reason::BelowTarget || d.reason == Reason::LowValue),
            "{changes:?}"
        );
        assert!(changes.len() <= 10, "{changes:?}");
        // One change per interval at most.
        assert!(counts.windows(2).filter(|w| w[0] != w[1]).count() <= 360 / 10 + 1);
    }

    #[test]
    fn respects_the_budget() {
        let mut ctl = Controller::new(config());
        let mut plant = Plant::new(20_000);
        // Memory for 40 heads; the target needs ~200.
        let b = Budget {
            max_memory_bytes: 40 * (4 << 20),
            ..budget(1000)
        };
        let (counts, _) = run(&mut ctl, &mut plant, Duration::ZERO, 240, b);
        assert_eq!(*counts.last().unwrap(), 40);
        assert!(counts.iter().all(|&n| n <= 40));
        plant.crawl();
        let d = ctl.handle_tick(&Tick {
            now: MINUTE * 1000,
            heads: &plant.figures(),
            measured: plant.measured,
            budget: b,
        });
        assert_eq!(
            (d.add, d.reason),
            (0, Reason::Budget),
            "at the budget, below target"
        );
        // The budget drops: heads go at once, the rate limit notwithstanding.
        let tight = Budget {
            max_connections: 30 * 200,
            ..b
        };
        let d = ctl.handle_tick(&Tick {
            now: MINUTE * 1001,
            heads: &plant.figures(),
            measured: plant.measured,
            budget: tight,
        });
        assert_eq!((d.remove.len(), d.reason), (10, Reason::Budget));
    }

    #[test]
    fn shrinks_when_the_network_shrinks() {
        let mut ctl = Controller::new(config());
        let mut plant = Plant::new(5000);
        let (counts, _) = run(&mut ctl, &mut plant, Duration::ZERO, 240, budget(1000));
        let big = *counts.last().unwrap();
        plant.n = 2000;
        let (counts, changes) = run(&mut ctl, &mut plant, MINUTE * 240, 360, budget(1000));
        let small = *counts.last().unwrap();
        let c = coverage_of(&plant);
        assert!(small < big / 2 + 2, "{big} -> {small}");
        assert!((0.29..=0.36).contains(&c), "{c}");
        assert!(changes.iter().any(|d| d.reason == Reason::AboveTarget));
        assert!(
            changes.iter().all(|d| d.reason != Reason::BelowTarget),
            "{changes:?}"
        );
    }

    #[test]
    fn holds_on_stale_measurements_and_keeps_the_floor() {
        let mut ctl = Controller::new(Config {
            min_heads: 2,
            ..config()
        });
        let d = ctl.handle_tick(&Tick {
            now: Duration::ZERO,
            heads: &[],
            measured: None,
            budget: budget(10),
        });
        assert_eq!((d.add, d.reason), (2, Reason::BelowTarget));
        let heads = [
            HeadFigures {
                index: 0,
                ..HeadFigures::default()
            },
            HeadFigures {
                index: 1,
                ..HeadFigures::default()
            },
        ];
        // Measured with one head: stale.
        let stale = Measured {
            coverage: 0.01,
            heads: 1,
            network_size: 1000,
        };
        let d = ctl.handle_tick(&Tick {
            now: Duration::from_secs(3600),
            heads: &heads,
            measured: Some(stale),
            budget: budget(10),
        });
        assert_eq!(d, Decision::hold(Reason::Hold));
        // Far above target with the floor's two heads: nothing to remove.
        let d = ctl.handle_tick(&Tick {
            now: Duration::from_secs(7200),
            heads: &heads,
            measured: Some(Measured {
                coverage: 0.9,
                heads: 2,
                network_size: 10,
            }),
            budget: budget(10),
        });
        assert_eq!(d.remove, Vec::<u32>::new());
    }

    #[test]
    fn a_low_value_head_goes_in_the_band_when_the_rest_suffices() {
        let mut ctl = Controller::new(config());
        let mut heads: Vec<HeadFigures> = (0..10)
            .map(|index| HeadFigures {
                index,
                requests: 500,
                marginal_coverage: 0.03,
                ..HeadFigures::default()
            })
            .collect();
        heads[4].requests = 3;
        heads[4].marginal_coverage = 0.0005;
        fn tick(heads: &[HeadFigures], coverage: f64) -> Tick<'_> {
            Tick {
                now: Duration::from_secs(3600),
                heads,
                measured: Some(Measured {
                    coverage,
                    heads: 10,
                    network_size: 1000,
                }),
                budget: budget(100),
            }
        }
        // 0.34 in the band [0.30, 0.35], and 0.34 - 0.0005 stays above the middle.
        let d = ctl.handle_tick(&tick(&heads, 0.34));
        assert_eq!((d.remove, d.reason), (vec![4], Reason::LowValue));
        // Near the lower edge it stays.
        let mut ctl = Controller::new(config());
        assert_eq!(
            ctl.handle_tick(&tick(&heads, 0.31)),
            Decision::hold(Reason::Hold)
        );
        assert_eq!(Reason::LowValue.label(), "low_value");
    }

    #[test]
    fn the_model_inverts() {
        for n in [1000, 5000, 20_000] {
            for t in [0.1, 0.3, 0.6] {
                let h = heads_for(t, n, 20, 1.0);
                assert!(expected_coverage(h, n, 20, 1.0) >= t - 1e-9);
                assert!(expected_coverage(h - 1, n, 20, 1.0) < t);
                let a = fit_efficiency(expected_coverage(h, n, 20, 1.2), h, n, 20).unwrap();
                assert!((a - 1.2).abs() < 1e-9);
            }
        }
        assert_eq!(expected_coverage(0, 100, 20, 1.0), 0.0);
        assert_eq!(expected_coverage(10, 100, 20, 1.0), 1.0);
        assert_eq!(fit_efficiency(0.0, 5, 100, 20), None);
        assert_eq!(fit_efficiency(0.9, 5, 100, 20), None, "saturated");
    }
}
