//! The DHT booster on the simulated DHT (`pylon_testkit::kad`): balanced head keys
//! (`pylon_roles::booster::keys`), the coverage they buy (`booster::coverage`, over the
//! true live set), lookups with and without a booster, and the sizing controller
//! (`booster::controller`) growing the heads to its target and shrinking them when the
//! network shrinks.
//!
//! Release runs the sizes of issue 17 (1,000 / 2,500 / 5,000 nodes; the controller on
//! 5,000 → 2,000); a debug build (CI's `cargo test --workspace`) runs the same tests on
//! smaller networks (500 / 1,000; 2,000 → 800) so it stays within its time. The figures
//! in docs/BOOSTER.md come from
//! `cargo test -p pylon-testkit --release --test booster_sim -- --nocapture --test-threads 1`.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use pylon_node::identity::Keypair;
use pylon_node::protocols::kad::Key;
use pylon_node::PeerId;
use pylon_roles::booster::controller::{
    self, Budget, Controller, HeadFigures, Measured, Reason, Tick,
};
use pylon_roles::booster::{coverage, keys};
use pylon_testkit::kad::{Booster, Config, Report, Sim};
use pylon_testkit::sim;
use rand::Rng;

const K: usize = 20;
const RELEASE: bool = !cfg!(debug_assertions);

/// The seed: fixed, so CI is deterministic; `PYLON_SIM_SEED=<n>` runs another.
fn seed() -> u64 {
    std::env::var("PYLON_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0b57)
}

/// The booster host's node key and its first `n` head identities.
fn identities(n: u32) -> Vec<PeerId> {
    let node = Keypair::ed25519_from_bytes([7u8; 32]).unwrap();
    let indices: Vec<u32> = (0..n).collect();
    keys::head_keypairs(&node, &indices, keys::depth_for(n))
        .iter()
        .map(|k| k.public().to_peer_id())
        .collect()
}

/// A network of `nodes` with Pylon's Kad settings, warm (tables as after a long run),
/// churning one node every 5 s (as `Config::thousand_nodes`: 12 % of 1,000 nodes per
/// 10 min, 2.4 % of 5,000), the joining nodes running their first refresh. The periodic
/// refresh is left out (24 h): over a run of minutes the warm tables carry the lookups,
/// and the refresh traffic is what would make a 5,000-node run slow.
fn network(seed: u64, nodes: usize) -> Config {
    let base = Config::thousand_nodes(seed);
    Config {
        nodes,
        kad: pylon_node::protocols::kad::Config {
            refresh_interval: Some(Duration::from_secs(24 * 3600)),
            ..base.kad.clone()
        },
        churn_every: Duration::from_secs(5),
        churn_before: Duration::from_secs(60),
        measured_lookups: if RELEASE { 100 } else { 40 },
        measure_every: Duration::from_secs(1),
        records: 0,
        providers: if RELEASE { 100 } else { 40 },
        ..base
    }
}

struct Row {
    nodes: usize,
    heads: usize,
    one_host: bool,
    coverage: f64,
    report: Report,
}

fn lookup_run(seed: u64, nodes: usize, heads: usize, one_host: bool, ids: &[PeerId]) -> Row {
    let config = Config {
        booster: (heads > 0).then(|| Booster {
            identities: ids[..heads].to_vec(),
            heads,
            one_host,
        }),
        ..network(seed, nodes)
    };
    let mut s = Sim::new(config);
    s.run_to_end();
    let head_keys: Vec<Key> = s.heads().iter().map(|h| h.1).collect();
    let coverage = coverage::coverage(&s.live_keys(), &head_keys, K).share;
    Row {
        nodes,
        heads,
        one_host,
        coverage,
        report: s.report(),
    }
}

/// Runs `jobs` on two threads (the machine's cores), results in order.
fn on_two_threads<T: Send, R: Send>(jobs: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let mut jobs: Vec<(usize, T)> = jobs.into_iter().enumerate().collect();
    let half = jobs.split_off(jobs.len().div_ceil(2));
    let mut out: Vec<(usize, R)> = std::thread::scope(|s| {
        let f = &f;
        let other = s.spawn(move || half.into_iter().map(|(i, j)| (i, f(j))).collect::<Vec<_>>());
        let mut mine: Vec<(usize, R)> = jobs.into_iter().map(|(i, j)| (i, f(j))).collect();
        mine.extend(other.join().unwrap());
        mine
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

#[test]
fn heads_buy_coverage_and_lookups_succeed_as_often() {
    if RELEASE {
        lookups_with_and_without(&[(1000, &[0, 64]), (2500, &[0, 64]), (5000, &[0, 64, 128])]);
    } else {
        lookups_with_and_without(&[(500, &[0, 16]), (1000, &[0, 16, 64])]);
    }
}

/// The whole table of docs/BOOSTER.md (about 2 min in release on 2 cores):
/// `cargo test -p pylon-testkit --release --test booster_sim full_table -- --ignored --nocapture`.
#[test]
#[ignore]
fn full_table() {
    let heads: &[usize] = &[0, 16, 64, 128];
    lookups_with_and_without(&[(1000, heads), (2500, heads), (5000, heads)]);
}

/// Lookups in networks of each size with each head count; prints the table and checks
/// what matters: heads raise the coverage, lookups succeed as often as without them.
fn lookups_with_and_without(matrix: &[(usize, &[usize])]) {
    let started = Instant::now();
    let seed = seed();
    let ids = identities(128);
    let mut jobs: Vec<(usize, usize, bool)> = Vec::new();
    for (n, head_counts) in matrix {
        for &h in *head_counts {
            jobs.push((*n, h, true));
        }
    }
    let sizes: Vec<usize> = matrix.iter().map(|(n, _)| *n).collect();
    let rows = on_two_threads(jobs, |(n, h, one_host)| {
        lookup_run(seed, n, h, one_host, &ids)
    });
    println!("seed {seed} (PYLON_SIM_SEED={seed} reruns this simulation)");
    println!(
        "| nodes | heads | coverage | FIND_NODE ≥k-2 of true k | mean overlap | hops | asked | GET_PROVIDERS found | asked | hops | time | head answers (from store) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let p = &r.report;
        println!(
            "| {} | {}{} | {:.1} % | {:.1} % | {:.2} | {:.2} | {:.1} | {}/{} | {:.1} | {:.2} | {:.2} s | {} ({}) |",
            r.nodes,
            r.heads,
            if r.one_host { "" } else { " (own IPs)" },
            100.0 * r.coverage,
            100.0 * p.share_at_least(p.k - 2),
            p.mean_overlap(),
            p.mean_hops,
            p.mean_queried,
            p.providers_found,
            p.providers_put,
            p.mean_provider_queried,
            p.mean_provider_hops,
            p.mean_provider_time.as_secs_f64(),
            p.head_requests,
            p.head_answers_from_store,
        );
    }
    println!("wall time {:?}", started.elapsed());

    for n in sizes {
        let of_size: Vec<&Row> = rows.iter().filter(|r| r.nodes == n && r.one_host).collect();
        let without = of_size[0];
        assert_eq!(without.heads, 0);
        assert_eq!(without.coverage, 0.0);
        for pair in of_size.windows(2) {
            assert!(
                pair[1].coverage > pair[0].coverage || pair[0].coverage > 0.99,
                "{n} nodes: {} heads cover {:.3}, {} heads {:.3}",
                pair[1].heads,
                pair[1].coverage,
                pair[0].heads,
                pair[0].coverage
            );
        }
        for r in &of_size[1..] {
            // Balanced heads cover at least what the random-placement model predicts,
            // less a margin for the churned network.
            // Balanced heads cover at least what random ones would (less a margin for
            // the churned network).
            let random = 1.0 - (-(K as f64) * r.heads as f64 / n as f64).exp();
            assert!(
                r.coverage >= random * 0.9,
                "{n}/{}: {:.3} < {random:.3}",
                r.heads,
                r.coverage
            );
            let (p, base) = (&r.report, &without.report);
            assert!(p.head_requests > 0, "{n}/{}: no head answered", r.heads);
            // Success not lower: the k closest (heads are live nodes among them) and the
            // providers are found as often as without a booster (the two runs are two
            // draws of the network, hence the margins).
            assert!(
                p.share_at_least(p.k - 2) >= base.share_at_least(base.k - 2) - 0.05,
                "{n}/{}: FIND_NODE success fell\n{p}\n{base}",
                r.heads
            );
            assert!(
                p.providers_found + p.providers_put / 20 >= base.providers_found,
                "{n}/{}: GET_PROVIDERS success fell\n{p}\n{base}",
                r.heads
            );
        }
        // Provider records stored through one head are answered by the others.
        let most = of_size.last().unwrap();
        assert!(
            most.report.head_answers_from_store > 0,
            "{n}: no answer from the shared store"
        );
    }
}

/// What coverage a number of balanced heads buys in a network of uniformly random peer
/// keys (the geometry alone, no lookups): the table in docs/BOOSTER.md, with the
/// controller's line `min(1, k·H/N)` and what random heads would give, `1 − exp(−k·H/N)`.
#[test]
fn coverage_per_head_count_and_network_size() {
    let (sizes, heads): (&[usize], &[usize]) = if RELEASE {
        (
            &[1000, 2500, 5000, 10_000, 20_000],
            &[8, 16, 32, 64, 128, 256, 512],
        )
    } else {
        (&[1000, 5000], &[8, 32, 128])
    };
    let max = *heads.last().unwrap();
    let ids = identities(max as u32);
    let head_keys: Vec<Key> = ids.iter().map(Key::from_peer).collect();
    let mut rng = sim::rng(seed());
    print!("| peers N |");
    for h in heads {
        print!(" {h} heads |");
    }
    println!();
    println!("|---:|{}", "---:|".repeat(heads.len()));
    for &n in sizes {
        let peers: Vec<Key> = (0..n).map(|_| Key::from_hash(rng.random())).collect();
        print!("| {n} |");
        let mut last = 0.0;
        for &h in heads {
            let c = coverage::coverage(&peers, &head_keys[..h], K);
            let line = controller::expected_coverage(h, n, K, 1.0);
            let random = 1.0 - (-(K as f64) * h as f64 / n as f64).exp();
            print!(
                " {:.1} % ({:.1} %, {:.1} %) |",
                100.0 * c.share,
                100.0 * line,
                100.0 * random
            );
            assert!(c.share >= last, "{n}/{h}: coverage fell with more heads");
            // Balanced heads do at least as well as random ones, and follow the
            // controller's line until it saturates.
            assert!(
                c.share >= random * 0.95 - 0.005,
                "{n}/{h}: {:.3} below random {random:.3}",
                c.share
            );
            if line < 0.7 {
                assert!(
                    (c.share / line - 1.0).abs() < 0.15,
                    "{n}/{h}: {:.3} off the line {line:.3}",
                    c.share
                );
            }
            // The marginal figures add up to the peers only one head covers.
            let only: usize = c.heads.iter().map(|x| x.only).sum();
            assert!(only <= c.covered);
            last = c.share;
        }
        println!();
    }
}

/// One step of the controller run.
#[derive(Debug, Clone)]
struct Step {
    at: Duration,
    nodes: usize,
    heads: usize,
    coverage: f64,
    reason: Reason,
    changed: bool,
}

/// The controller sizing a booster on a live network: every `crawl_every`, a perfect
/// crawl (the live set) gives the coverage and each head's marginal coverage, the heads'
/// figures come from the simulation, and the decision is carried out (new heads take the
/// lowest free indices and join through a random node). After `phase`, the network
/// shrinks to `to` nodes and the run goes on for another `phase`.
fn controller_run(seed: u64, from: usize, to: usize, phase: Duration) -> Vec<Step> {
    let max_heads = 256u32;
    let config = Config {
        // No periodic refresh (24 h): tables stay warm for the run; heads and joining
        // nodes still make themselves known with their first self lookup.
        kad: pylon_node::protocols::kad::Config {
            refresh_interval: Some(Duration::from_secs(24 * 3600)),
            ..Config::thousand_nodes(seed).kad
        },
        churn_every: Duration::from_secs(5),
        measured_lookups: 0,
        providers: 0,
        booster: Some(Booster {
            identities: identities(max_heads),
            heads: 0,
            one_host: true,
        }),
        ..network(seed, from)
    };
    let mut s = Sim::new(config);
    let mut ctl = Controller::new(controller::Config {
        target_coverage: 0.3,
        hysteresis: 0.05,
        min_heads: 1,
        max_step: 32,
        min_interval: Duration::from_secs(300),
        k: K,
        low_marginal: 0.001,
    });
    let budget = Budget {
        max_heads: max_heads as usize,
        max_connections: 100_000,
        max_memory_bytes: 64 << 30,
        connections_per_head: 200,
        memory_per_head_bytes: 16 << 20,
    };
    let crawl_every = Duration::from_secs(150);
    let mut steps = Vec::new();
    let ticks = (phase.as_secs() / crawl_every.as_secs()) as usize;
    for tick in 0..2 * ticks {
        if tick == ticks {
            s.shrink_to(to);
        }
        s.run_for(crawl_every);
        let live = s.live_keys();
        let heads = s.heads();
        let head_keys: Vec<Key> = heads.iter().map(|h| h.1).collect();
        let cov = coverage::coverage(&live, &head_keys, K);
        let figures: Vec<HeadFigures> = heads
            .iter()
            .zip(&cov.heads)
            .map(|((index, _, stats), c)| HeadFigures {
                index: *index,
                requests: stats.requests,
                from_store: stats.from_store,
                marginal_coverage: c.marginal,
                ..HeadFigures::default()
            })
            .collect();
        let d = ctl.handle_tick(&Tick {
            now: s.now(),
            heads: &figures,
            measured: Some(Measured {
                coverage: cov.share,
                heads: heads.len(),
                network_size: live.len(),
            }),
            budget,
        });
        for &i in &d.remove {
            assert!(s.remove_head(i));
        }
        let mut next = 0u32;
        for _ in 0..d.add {
            let running: Vec<u32> = s.heads().iter().map(|h| h.0).collect();
            while running.contains(&next) {
                next += 1;
            }
            assert!(s.add_head(next), "head {next} has an identity");
        }
        steps.push(Step {
            at: s.now(),
            nodes: live.len(),
            heads: heads.len(),
            coverage: cov.share,
            reason: d.reason,
            changed: d.is_change(),
        });
    }
    steps
}

#[test]
fn the_controller_converges_to_the_target_and_shrinks_with_the_network() {
    let started = Instant::now();
    let (from, to) = if RELEASE { (5000, 2000) } else { (2000, 800) };
    let phase = Duration::from_secs(60 * 60);
    let steps = controller_run(seed(), from, to, phase);
    println!("| time | nodes | heads | coverage | decision |");
    println!("|---:|---:|---:|---:|---|");
    for s in &steps {
        println!(
            "| {} min | {} | {} | {:.1} % | {}{} |",
            s.at.as_secs() / 60,
            s.nodes,
            s.heads,
            100.0 * s.coverage,
            s.reason.label(),
            if s.changed { " (change)" } else { "" }
        );
    }
    println!("wall time {:?}", started.elapsed());
    let (grow, shrink) = steps.split_at(steps.len() / 2);
    let in_band = |c: f64| (0.3..=0.35).contains(&c);

    // Growth: additions, then at most a trim (churn moves the coverage a little), never
    // additions again: no oscillation; the last change within 40 min and the coverage in
    // the band for the rest of the phase.
    let grow_reasons: Vec<Reason> = grow
        .iter()
        .filter(|s| s.changed)
        .map(|s| s.reason)
        .collect();
    let first_trim = grow_reasons
        .iter()
        .position(|r| *r != Reason::BelowTarget)
        .unwrap_or(grow_reasons.len());
    assert!(
        grow_reasons[first_trim..]
            .iter()
            .all(|r| *r != Reason::BelowTarget),
        "{grow_reasons:?}"
    );
    assert!(grow_reasons.len() <= 8, "{grow_reasons:?}");
    let last_change = grow
        .iter()
        .filter(|s| s.changed)
        .map(|s| s.at)
        .max()
        .unwrap();
    assert!(
        last_change <= Duration::from_secs(40 * 60),
        "converged at {last_change:?}"
    );
    let settled: Vec<&Step> = grow.iter().filter(|s| s.at > last_change).collect();
    assert!(
        !settled.is_empty() && settled.iter().all(|s| in_band(s.coverage)),
        "{settled:#?}"
    );
    let big = grow.last().unwrap().heads;

    // Shrink: heads go (above target), none come back, and the coverage ends in the band.
    let end = shrink.last().unwrap();
    assert!(end.heads < big, "{big} heads before, {} after", end.heads);
    assert!(
        shrink
            .iter()
            .filter(|s| s.changed)
            .all(|s| s.reason != Reason::BelowTarget),
        "{steps:#?}"
    );
    assert!(shrink.iter().any(|s| s.reason == Reason::AboveTarget));
    assert!(in_band(end.coverage), "{end:?}");
    // The head count follows the network size: the same coverage of 2/5 of the
    // network takes about 2/5 of the heads.
    let ratio = end.heads as f64 / big as f64;
    let expected = to as f64 / from as f64;
    assert!(
        (ratio - expected).abs() < 0.2,
        "heads {big} -> {}",
        end.heads
    );
}

/// The figures without assertions, for exploring: `N=5000 H=64 cargo test -p
/// pylon-testkit --release --test booster_sim explore -- --ignored --nocapture`.
#[test]
#[ignore]
fn explore() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (n, h) = (env("N", 5000) as usize, env("H", 64) as usize);
    let row = lookup_run(
        seed(),
        n,
        h,
        env("ONE_HOST", 1) == 1,
        &identities(h.max(1) as u32),
    );
    println!("coverage {:.3}\n{}", row.coverage, row.report);
}
