//! What a crawl of the DHT tells the booster: how big the network is, how much of it our
//! heads cover, what each head adds, and how fast the peers change.
//!
//! Pure functions of plain values (keys, PeerIds, times as `Duration` since some start):
//! no I/O, no clock. The crawl itself (iterative FIND_NODE over every bucket of every
//! reachable peer) is the role's; this module only reads its snapshots.
//!
//! **Coverage** is the share of crawled peers P whose k closest peers (by XOR distance to
//! P's key, among the crawled peers and our heads, P itself left out) include at least
//! one of our heads: the share of lookups for a peer (or for a key near one) whose last
//! step asks one of our heads. It is computed exactly on a binary trie laid over the
//! sorted keys — a key's k closest in XOR are not simply its neighbours in sorted order —
//! in `O(n · (log2(n/k) + k) · log n)` for n keys.

use std::collections::HashSet;
use std::time::Duration;

use pylon_node::protocols::kad::{Distance, Key};
use pylon_node::PeerId;

/// What the heads cover of a crawled network.
#[derive(Debug, Clone, PartialEq)]
pub struct Coverage {
    /// Distinct crawled peers (our heads left out).
    pub peers: usize,
    /// Peers whose k closest include a head.
    pub covered: usize,
    /// `covered / peers` (0 for no peers).
    pub share: f64,
    /// Per head, in the order the heads were given.
    pub heads: Vec<HeadCoverage>,
}

/// What one head covers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HeadCoverage {
    /// Peers whose k closest include this head.
    pub covered: usize,
    /// Peers whose k closest include this head and no other: what removing it loses.
    pub only: usize,
    /// `only / peers`: the coverage share removing this head would lose (its marginal
    /// coverage).
    pub marginal: f64,
}

/// The coverage of `heads` over the crawled `peers`, with `k` closest (k = 20 in the
/// DHT). Duplicate peers count once, and a peer with a head's key is the head (a crawl
/// finds our heads too).
pub fn coverage(peers: &[Key], heads: &[Key], k: usize) -> Coverage {
    let head_set: HashSet<&Key> = heads.iter().collect();
    let mut points: Vec<Point> = peers
        .iter()
        .filter(|p| !head_set.contains(p))
        .map(|&key| Point { key, head: None })
        .collect();
    points.sort_unstable_by_key(|p| p.key);
    points.dedup_by(|a, b| a.key == b.key);
    let n_peers = points.len();
    let mut seen_heads = HashSet::new();
    for (i, &key) in heads.iter().enumerate() {
        if seen_heads.insert(key) {
            points.push(Point { key, head: Some(i) });
        }
    }
    points.sort_unstable_by_key(|p| p.key);

    let mut per_head = vec![HeadCoverage::default(); heads.len()];
    let mut covered = 0;
    let mut near = Vec::with_capacity(k + 1);
    for p in points.iter().filter(|p| p.head.is_none()) {
        near.clear();
        nearest(&points, 0, &p.key, 0, k + 1, &mut near);
        let mut found = near
            .iter()
            .filter(|&&i| points[i].key != p.key)
            .take(k)
            .filter_map(|&i| points[i].head);
        let Some(first) = found.next() else { continue };
        covered += 1;
        per_head[first].covered += 1;
        let mut alone = true;
        for h in found {
            per_head[h].covered += 1;
            alone = false;
        }
        if alone {
            per_head[first].only += 1;
        }
    }
    let share = |n: usize| {
        if n_peers == 0 {
            0.0
        } else {
            n as f64 / n_peers as f64
        }
    };
    for h in &mut per_head {
        h.marginal = share(h.only);
    }
    Coverage {
        peers: n_peers,
        covered,
        share: share(covered),
        heads: per_head,
    }
}

/// One key of the trie: a crawled peer, or head `head`.
#[derive(Debug, Clone, Copy)]
struct Point {
    key: Key,
    head: Option<usize>,
}

fn bit_at(key: &Key, bit: usize) -> bool {
    key.hash()[bit / 8] & (0x80 >> (bit % 8)) != 0
}

/// Pushes to `out` the indices (offset by `base`) of the `want` points of `points`
/// nearest `target`, as a set (not ordered). `points` is sorted and its keys share their
/// first `bit` bits: it is the trie's subtree at depth `bit`, which splits into the half
/// with `target`'s next bit (every key there nearer than every key in the other half)
/// and the other.
fn nearest(
    points: &[Point],
    base: usize,
    target: &Key,
    bit: usize,
    want: usize,
    out: &mut Vec<usize>,
) {
    if want == 0 || points.is_empty() {
        return;
    }
    if points.len() <= want || bit >= 256 {
        out.extend(base..base + points.len().min(want));
        return;
    }
    let split = points.partition_point(|p| !bit_at(&p.key, bit));
    let (zeros, ones) = points.split_at(split);
    let (near, near_base, far, far_base) = if bit_at(target, bit) {
        (ones, base + split, zeros, base)
    } else {
        (zeros, base, ones, base + split)
    };
    let before = out.len();
    nearest(near, near_base, target, bit + 1, want, out);
    let got = out.len() - before;
    nearest(far, far_base, target, bit + 1, want - got, out);
}

/// The size of a crawled network: its distinct responsive peers.
pub fn size_from_crawl(responsive: &[PeerId]) -> usize {
    responsive.iter().collect::<HashSet<_>>().len()
}

/// A distance as a share of the keyspace, in `[0, 1)` (its top 64 bits).
pub fn keyspace_share(d: &Distance) -> f64 {
    let b = d.as_bytes();
    let top = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    top as f64 / 2f64.powi(64)
}

/// The network size from how close peers sit to random keys, with no full crawl.
///
/// `samples`: for each of a few random keys, the distances of the closest peers a lookup
/// found, nearest first. In a network of N peers with uniform keys, the i-th closest
/// (from 1) lies on average at `i / (N + 1)` of the keyspace; the least-squares fit of
/// that line through all the samples gives `N + 1 = Σ i² / Σ i · dᵢ`. `None` without
/// distances. Each sample is as good as its lookup: a missed close peer inflates the
/// distances and shrinks the estimate.
pub fn size_from_distances(samples: &[Vec<Distance>]) -> Option<f64> {
    let (mut ii, mut id) = (0.0, 0.0);
    for s in samples {
        for (i, d) in s.iter().enumerate() {
            let i = (i + 1) as f64;
            ii += i * i;
            id += i * keyspace_share(d);
        }
    }
    (id > 0.0).then(|| (ii / id - 1.0).max(0.0))
}

/// The change between two crawls.
#[derive(Debug, Clone, PartialEq)]
pub struct Churn {
    /// Peers in the first crawl and not in the second, and the reverse.
    pub gone: usize,
    pub new: usize,
    /// `gone` over the first crawl's size, `new` over the second's.
    pub gone_share: f64,
    pub new_share: f64,
    /// The shares per hour of time between the crawls (0 when no time passed).
    pub gone_per_hour: f64,
    pub new_per_hour: f64,
}

/// The churn between a crawl at `before_at` and one at `after_at` (any common origin).
pub fn churn(
    before: &[PeerId],
    before_at: Duration,
    after: &[PeerId],
    after_at: Duration,
) -> Churn {
    let a: HashSet<&PeerId> = before.iter().collect();
    let b: HashSet<&PeerId> = after.iter().collect();
    let gone = a.difference(&b).count();
    let new = b.difference(&a).count();
    let share = |n: usize, of: usize| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    let (gone_share, new_share) = (share(gone, a.len()), share(new, b.len()));
    let hours = after_at.saturating_sub(before_at).as_secs_f64() / 3600.0;
    let per_hour = |s: f64| if hours > 0.0 { s / hours } else { 0.0 };
    Churn {
        gone,
        new,
        gone_share,
        new_share,
        gone_per_hour: per_hour(gone_share),
        new_per_hour: per_hour(new_share),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A small deterministic generator (no RNG dependency in this crate).
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            // splitmix64
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn key(&mut self) -> Key {
            let mut h = [0u8; 32];
            for c in h.chunks_mut(8) {
                c.copy_from_slice(&self.next().to_be_bytes());
            }
            Key::from_hash(h)
        }

        /// A key sharing its first `bits` bits with `near`.
        fn key_near(&mut self, near: &Key, bits: usize) -> Key {
            let mut h = *self.key().hash();
            for bit in 0..bits {
                let mask = 0x80 >> (bit % 8);
                h[bit / 8] = (h[bit / 8] & !mask) | (near.hash()[bit / 8] & mask);
            }
            Key::from_hash(h)
        }
    }

    /// Per peer, the heads among its k closest, by sorting every distance.
    fn brute(peers: &[Key], heads: &[Key], k: usize) -> Coverage {
        let mut per_head = vec![HeadCoverage::default(); heads.len()];
        let mut covered = 0;
        for p in peers {
            let mut all: Vec<(Distance, Option<usize>)> = peers
                .iter()
                .filter(|q| *q != p)
                .map(|q| (p.distance(q), None))
                .chain(
                    heads
                        .iter()
                        .enumerate()
                        .map(|(i, h)| (p.distance(h), Some(i))),
                )
                .collect();
            all.sort();
            let hs: Vec<usize> = all.iter().take(k).filter_map(|(_, h)| *h).collect();
            if !hs.is_empty() {
                covered += 1;
            }
            for &h in &hs {
                per_head[h].covered += 1;
            }
            if hs.len() == 1 {
                per_head[hs[0]].only += 1;
            }
        }
        for h in &mut per_head {
            h.marginal = h.only as f64 / peers.len() as f64;
        }
        Coverage {
            peers: peers.len(),
            covered,
            share: covered as f64 / peers.len() as f64,
            heads: per_head,
        }
    }

    #[test]
    fn the_trie_agrees_with_brute_force() {
        let mut g = Gen(1);
        for (n, h, k) in [
            (300, 10, 20),
            (500, 40, 20),
            (200, 3, 5),
            (64, 30, 20),
            (25, 5, 20),
        ] {
            let peers: Vec<Key> = (0..n).map(|_| g.key()).collect();
            let heads: Vec<Key> = (0..h).map(|_| g.key()).collect();
            assert_eq!(
                coverage(&peers, &heads, k),
                brute(&peers, &heads, k),
                "{n} {h} {k}"
            );
        }
        // Clusters: keys with long common prefixes, where sorted neighbours and XOR
        // neighbours differ most.
        let centre = g.key();
        let peers: Vec<Key> = (0..300).map(|i| g.key_near(&centre, i % 40)).collect();
        let heads: Vec<Key> = (0..12).map(|i| g.key_near(&centre, 3 * i)).collect();
        assert_eq!(coverage(&peers, &heads, 20), brute(&peers, &heads, 20));
    }

    #[test]
    fn duplicates_and_heads_in_the_crawl_count_once() {
        let mut g = Gen(2);
        let peers: Vec<Key> = (0..100).map(|_| g.key()).collect();
        let heads: Vec<Key> = (0..4).map(|_| g.key()).collect();
        let mut crawled = peers.clone();
        crawled.extend_from_slice(&peers[..10]);
        crawled.extend_from_slice(&heads);
        assert_eq!(coverage(&crawled, &heads, 20), coverage(&peers, &heads, 20));
        let none = coverage(&peers, &[], 20);
        assert_eq!((none.covered, none.share), (0, 0.0));
        assert_eq!(coverage(&[], &heads, 20).share, 0.0);
        // Fewer peers than k: every peer sees every head.
        let tiny = coverage(&peers[..5], &heads, 20);
        assert_eq!(tiny.share, 1.0);
        assert!(tiny.heads.iter().all(|h| h.covered == 5 && h.only == 0));
    }

    #[test]
    fn ten_thousand_peers_and_hundreds_of_heads_are_quick() {
        let mut g = Gen(3);
        let peers: Vec<Key> = (0..10_000).map(|_| g.key()).collect();
        let heads: Vec<Key> = (0..300).map(|_| g.key()).collect();
        let started = std::time::Instant::now();
        let c = coverage(&peers, &heads, 20);
        println!(
            "10,000 peers, 300 heads: coverage {:.3} in {:?}",
            c.share,
            started.elapsed()
        );
        // Random heads: about 1 - exp(-k·H/N) = 1 - exp(-0.6) = 0.45.
        assert!((0.35..0.55).contains(&c.share), "{}", c.share);
        let only: usize = c.heads.iter().map(|h| h.only).sum();
        let sum: f64 = c.heads.iter().map(|h| h.marginal).sum();
        assert!(only <= c.covered);
        assert!((sum - only as f64 / 10_000.0).abs() < 1e-9);
    }

    #[test]
    fn density_estimates_the_size() {
        let mut g = Gen(4);
        for n in [500usize, 2000, 8000] {
            let peers: Vec<Key> = (0..n).map(|_| g.key()).collect();
            let samples: Vec<Vec<Distance>> = (0..64)
                .map(|_| {
                    let t = g.key();
                    let mut d: Vec<Distance> = peers.iter().map(|p| p.distance(&t)).collect();
                    d.sort();
                    d.truncate(20);
                    d
                })
                .collect();
            let est = size_from_distances(&samples).unwrap();
            println!("{n} peers: estimated {est:.0}");
            assert!((est / n as f64 - 1.0).abs() < 0.2, "{n}: {est}");
        }
        assert_eq!(size_from_distances(&[]), None);
    }

    #[test]
    fn churn_is_the_share_gone_and_new_per_hour() {
        let peer = |i: u8| {
            let mut mh = vec![0x12, 0x20];
            mh.extend_from_slice(&[i; 32]);
            PeerId::from_bytes(&mh).unwrap()
        };
        let before: Vec<PeerId> = (0..10).map(peer).collect();
        let after: Vec<PeerId> = (2..12).map(peer).collect();
        let c = churn(&before, Duration::ZERO, &after, Duration::from_secs(1800));
        assert_eq!((c.gone, c.new), (2, 2));
        assert_eq!((c.gone_share, c.new_share), (0.2, 0.2));
        assert!((c.gone_per_hour - 0.4).abs() < 1e-12);
        let still = churn(
            &before,
            Duration::from_secs(5),
            &before,
            Duration::from_secs(5),
        );
        assert_eq!((still.gone, still.gone_per_hour), (0, 0.0));
        assert_eq!(size_from_crawl(&[peer(1), peer(1), peer(2)]), 2);
    }
}
