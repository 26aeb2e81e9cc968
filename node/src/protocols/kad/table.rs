//! The routing table: k-buckets by common prefix length with the local key
//! (`specs/kad-dht/README.md#kademlia-routing-table`), with IP diversity limits against
//! eclipse attacks. No I/O and no clock: callers pass `now_ms`, and a full bucket hands
//! back its least recently seen peer for the caller to check before anything is evicted
//! (Kademlia keeps long-lived peers).

use std::collections::HashMap;

use multiaddr::Multiaddr;

use super::key::Key;
use crate::identity::PeerId;
use crate::ipprefix::IpPrefix;

/// Limits of the table.
#[derive(Debug, Clone)]
pub struct Config {
    //= specs/kad-dht/README.md#replication-parameter-k
    //# The recommended value for `k` is 20.
    pub k: usize,
    /// Most peers of one IP group (IPv4 /16, IPv6 /48) in one bucket.
    pub max_per_group_bucket: usize,
    /// Most peers of one IP group in the whole table.
    pub max_per_group_table: usize,
    /// Peers whose addresses are all private or loopback are not counted against the
    /// group limits (a LAN or a test bed); public peers always are.
    pub exempt_private: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            k: 20,
            max_per_group_bucket: 2,
            max_per_group_table: 8,
            exempt_private: true,
        }
    }
}

/// The diversity group of an address: IPv4 /16 or IPv6 /48 of its leading IP.
fn group_of_addr(addr: &Multiaddr) -> Option<IpPrefix> {
    IpPrefix::of_addr(addr, IpPrefix::GROUP.0, IpPrefix::GROUP.1)
}

/// The buckets in order of the distance of their keys to a target at distance `d` from
/// the local key, nearest first: every key of an earlier bucket is nearer the target than
/// every key of a later one.
///
/// A key in bucket `i` is `x` from the local key, with `x`'s top bit `i`; its distance to
/// the target is `x ^ d`. With `t` the target's own bucket (the top bit of `d`): bucket `t`
/// clears that bit (distances below 2^t); a bucket `i < t` keeps `d`'s bits above `i` and
/// flips bit `i` — below `d` when `d` has it set (the higher such `i`, the nearer), above
/// `d` otherwise (the lower `i`, the nearer); a bucket `i > t` sets bit `i` (the higher,
/// the farther).
pub fn buckets_by_distance(d: &super::key::Distance) -> impl Iterator<Item = usize> {
    let bytes = *d.as_bytes();
    let bit = move |i: usize| bytes[31 - i / 8] & (1 << (i % 8)) != 0;
    let t = d.bucket();
    let below = t.unwrap_or(256);
    let own = t.into_iter();
    let nearer = (0..below).rev().filter(move |&i| bit(i));
    let farther = (0..below).filter(move |&i| !bit(i));
    let above = t.map_or(256, |t| t + 1)..256;
    own.chain(nearer).chain(farther).chain(above)
}

/// One peer in the table.
#[derive(Debug, Clone)]
pub struct Entry {
    pub peer: PeerId,
    pub key: Key,
    pub addrs: Vec<Multiaddr>,
    /// The group ([`IpPrefix::group`]: IPv4 /16, IPv6 /48) counted against the diversity
    /// limits (`None`: exempt).
    pub group: Option<IpPrefix>,
    pub added_ms: u64,
    /// Last time the peer answered us or we saw it connected.
    pub last_seen_ms: u64,
}

/// What an insert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Insert {
    Added,
    /// Already present: addresses and last-seen refreshed.
    Updated,
    /// The bucket is full. The caller may check `oldest` and, if it is gone, remove it and
    /// insert again.
    Full {
        oldest: PeerId,
    },
    Refused(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The local peer is never in its own table.
    Local,
    /// A peer without a dialable address is useless to others.
    NoAddress,
    /// Too many peers of the same IP group in the bucket.
    BucketDiversity,
    /// Too many peers of the same IP group in the table.
    TableDiversity,
    /// Kept out by the owner ([`super::Kad::exclude`]): another identity of this process.
    Excluded,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Local => "local",
            Refusal::NoAddress => "no_address",
            Refusal::BucketDiversity => "bucket_diversity",
            Refusal::TableDiversity => "table_diversity",
            Refusal::Excluded => "excluded",
        }
    }
}

/// 256 k-buckets around the local key.
pub struct RoutingTable {
    local: PeerId,
    local_key: Key,
    config: Config,
    buckets: Vec<Vec<Entry>>,
    index: HashMap<PeerId, usize>,
    groups: HashMap<IpPrefix, usize>,
}

impl RoutingTable {
    pub fn new(local: PeerId, config: Config) -> Self {
        RoutingTable {
            local,
            local_key: Key::from_peer(&local),
            config,
            buckets: vec![Vec::new(); 256],
            index: HashMap::new(),
            groups: HashMap::new(),
        }
    }

    /// The local peer (never in the table).
    pub fn local(&self) -> &PeerId {
        &self.local
    }

    pub fn local_key(&self) -> &Key {
        &self.local_key
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains(&self, peer: &PeerId) -> bool {
        self.index.contains_key(peer)
    }

    pub fn get(&self, peer: &PeerId) -> Option<&Entry> {
        let b = *self.index.get(peer)?;
        self.buckets[b].iter().find(|e| e.peer == *peer)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flatten()
    }

    /// The bucket a key falls in (`None` for the local key).
    pub fn bucket_of(&self, key: &Key) -> Option<usize> {
        self.local_key.distance(key).bucket()
    }

    /// Peers per bucket, nearest bucket (0) first.
    pub fn bucket_sizes(&self) -> Vec<usize> {
        self.buckets.iter().map(Vec::len).collect()
    }

    fn group_of(&self, addrs: &[Multiaddr]) -> Option<IpPrefix> {
        let public = addrs
            .iter()
            .find(|a| crate::addresses::is_public(a))
            .and_then(group_of_addr);
        if public.is_some() || self.config.exempt_private {
            return public;
        }
        addrs.iter().find_map(group_of_addr)
    }

    /// Adds a peer that serves the protocol and has the given dialable addresses, or
    /// refreshes it.
    pub fn insert(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, now_ms: u64) -> Insert {
        if peer == self.local {
            return Insert::Refused(Refusal::Local);
        }
        if addrs.is_empty() {
            return Insert::Refused(Refusal::NoAddress);
        }
        let key = Key::from_peer(&peer);
        let Some(b) = self.bucket_of(&key) else {
            return Insert::Refused(Refusal::Local);
        };
        let group = self.group_of(&addrs);
        if let Some(pos) = self.buckets[b].iter().position(|e| e.peer == peer) {
            let old = self.buckets[b][pos].group;
            if old != group {
                if let Some(refusal) = self.diversity(b, group) {
                    return Insert::Refused(refusal);
                }
                self.uncount(old);
                self.count(group);
            }
            let e = &mut self.buckets[b][pos];
            e.addrs = addrs;
            e.group = group;
            e.last_seen_ms = now_ms;
            return Insert::Updated;
        }
        if let Some(refusal) = self.diversity(b, group) {
            return Insert::Refused(refusal);
        }
        if self.buckets[b].len() >= self.config.k {
            let oldest = self.buckets[b]
                .iter()
                .min_by_key(|e| e.last_seen_ms)
                .map(|e| e.peer)
                .unwrap_or(peer);
            return Insert::Full { oldest };
        }
        self.count(group);
        self.buckets[b].push(Entry {
            peer,
            key,
            addrs,
            group,
            added_ms: now_ms,
            last_seen_ms: now_ms,
        });
        self.index.insert(peer, b);
        Insert::Added
    }

    /// Would one more peer of `group` in bucket `b` break a limit? (A peer changing groups
    /// is not in its new group yet, so the counts never include it.)
    fn diversity(&self, b: usize, group: Option<IpPrefix>) -> Option<Refusal> {
        let g = group?;
        let in_bucket = self.buckets[b]
            .iter()
            .filter(|e| e.group == Some(g))
            .count();
        if in_bucket >= self.config.max_per_group_bucket {
            return Some(Refusal::BucketDiversity);
        }
        if self.groups.get(&g).copied().unwrap_or(0) >= self.config.max_per_group_table {
            return Some(Refusal::TableDiversity);
        }
        None
    }

    fn count(&mut self, group: Option<IpPrefix>) {
        if let Some(g) = group {
            *self.groups.entry(g).or_insert(0) += 1;
        }
    }

    fn uncount(&mut self, group: Option<IpPrefix>) {
        if let Some(g) = group {
            if let Some(n) = self.groups.get_mut(&g) {
                *n -= 1;
                if *n == 0 {
                    self.groups.remove(&g);
                }
            }
        }
    }

    pub fn remove(&mut self, peer: &PeerId) -> Option<Entry> {
        let b = self.index.remove(peer)?;
        let pos = self.buckets[b].iter().position(|e| e.peer == *peer)?;
        let e = self.buckets[b].swap_remove(pos);
        self.uncount(e.group);
        Some(e)
    }

    /// Records that a peer answered or is connected.
    pub fn seen(&mut self, peer: &PeerId, now_ms: u64) {
        if let Some(&b) = self.index.get(peer) {
            if let Some(e) = self.buckets[b].iter_mut().find(|e| e.peer == *peer) {
                e.last_seen_ms = e.last_seen_ms.max(now_ms);
            }
        }
    }

    /// The `n` peers closest to `key`, nearest first.
    pub fn closest(&self, key: &Key, n: usize) -> Vec<&Entry> {
        self.closest_where(key, n, |_| true)
    }

    /// The `n` peers closest to `key` among those `keep` accepts, nearest first. Reads
    /// only as many buckets as it needs, in order of distance to `key` (see
    /// [`buckets_by_distance`]).
    pub fn closest_where(&self, key: &Key, n: usize, keep: impl Fn(&Entry) -> bool) -> Vec<&Entry> {
        if n == 0 {
            return Vec::new();
        }
        let mut all: Vec<(super::key::Distance, &Entry)> = Vec::new();
        for b in buckets_by_distance(&self.local_key.distance(key)) {
            all.extend(
                self.buckets[b]
                    .iter()
                    .filter(|e| keep(e))
                    .map(|e| (e.key.distance(key), e)),
            );
            // Every entry of a later bucket is farther than every one taken so far.
            if all.len() >= n {
                break;
            }
        }
        if all.len() > n {
            all.select_nth_unstable_by(n - 1, |a, b| a.0.cmp(&b.0));
            all.truncate(n);
        }
        all.sort_unstable_by_key(|a| a.0);
        all.into_iter().map(|(_, e)| e).collect()
    }

    /// Peers not seen since `before_ms`, least recently seen first: candidates for a
    /// liveness check.
    pub fn stale(&self, before_ms: u64, max: usize) -> Vec<PeerId> {
        let mut s: Vec<&Entry> = self.iter().filter(|e| e.last_seen_ms < before_ms).collect();
        s.sort_by_key(|e| e.last_seen_ms);
        s.into_iter().take(max).map(|e| e.peer).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        crate::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn addr(s: &str) -> Vec<Multiaddr> {
        vec![s.parse().unwrap()]
    }

    #[test]
    fn buckets_fill_to_k_then_report_the_oldest() {
        let local = peer();
        let config = Config {
            k: 3,
            ..Config::default()
        };
        let mut t = RoutingTable::new(local, config);
        assert_eq!(
            t.insert(local, addr("/ip4/10.0.0.1/tcp/1"), 0),
            Insert::Refused(Refusal::Local)
        );
        assert_eq!(
            t.insert(peer(), vec![], 0),
            Insert::Refused(Refusal::NoAddress)
        );
        // Half of all keys fall in bucket 255: fill it with private-address peers.
        let mut far = Vec::new();
        while far.len() < 4 {
            let p = peer();
            if t.bucket_of(&Key::from_peer(&p)) == Some(255) {
                far.push(p);
            }
        }
        for (i, p) in far[..3].iter().enumerate() {
            assert_eq!(
                t.insert(*p, addr("/ip4/10.0.0.1/tcp/1"), 10 + i as u64),
                Insert::Added
            );
        }
        assert_eq!(
            t.insert(far[1], addr("/ip4/10.0.0.2/tcp/1"), 50),
            Insert::Updated
        );
        assert_eq!(
            t.insert(far[3], addr("/ip4/10.0.0.1/tcp/1"), 60),
            Insert::Full { oldest: far[0] }
        );
        assert_eq!(t.stale(40, 10), vec![far[0], far[2]]);
        t.remove(&far[0]);
        assert_eq!(
            t.insert(far[3], addr("/ip4/10.0.0.1/tcp/1"), 60),
            Insert::Added
        );
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn ip_diversity_limits_per_bucket_and_table() {
        let mut t = RoutingTable::new(
            peer(),
            Config {
                k: 20,
                max_per_group_bucket: 2,
                max_per_group_table: 3,
                exempt_private: true,
            },
        );
        let mut in_255 = Vec::new();
        let mut in_254 = Vec::new();
        while in_255.len() < 3 || in_254.len() < 3 {
            let p = peer();
            match t.bucket_of(&Key::from_peer(&p)) {
                Some(255) if in_255.len() < 3 => in_255.push(p),
                Some(254) if in_254.len() < 3 => in_254.push(p),
                _ => {}
            }
        }
        // Same /16 (8.8.0.0/16), different hosts.
        assert_eq!(
            t.insert(in_255[0], addr("/ip4/8.8.1.1/tcp/1"), 0),
            Insert::Added
        );
        assert_eq!(
            t.insert(in_255[1], addr("/ip4/8.8.2.2/tcp/1"), 0),
            Insert::Added
        );
        assert_eq!(
            t.insert(in_255[2], addr("/ip4/8.8.3.3/tcp/1"), 0),
            Insert::Refused(Refusal::BucketDiversity)
        );
        assert_eq!(
            t.insert(in_254[0], addr("/ip4/8.8.4.4/tcp/1"), 0),
            Insert::Added
        );
        assert_eq!(
            t.insert(in_254[1], addr("/ip4/8.8.5.5/tcp/1"), 0),
            Insert::Refused(Refusal::TableDiversity)
        );
        // Another /16 is fine; so are private addresses (exempt).
        assert_eq!(
            t.insert(in_254[1], addr("/ip4/9.9.5.5/tcp/1"), 0),
            Insert::Added
        );
        assert_eq!(
            t.insert(in_255[2], addr("/ip4/192.168.1.1/tcp/1"), 0),
            Insert::Added
        );
        // IPv6: one /48.
        assert_eq!(
            t.insert(in_254[2], addr("/ip6/2600:1:2::1/tcp/1"), 0),
            Insert::Added
        );
        // Moving a peer into a full group is refused; removing frees the slot.
        assert_eq!(
            t.insert(in_254[1], addr("/ip4/8.8.9.9/tcp/1"), 0),
            Insert::Refused(Refusal::TableDiversity)
        );
        t.remove(&in_255[0]);
        assert_eq!(
            t.insert(in_254[1], addr("/ip4/8.8.9.9/tcp/1"), 0),
            Insert::Updated
        );
        // Updating a peer within its own group does not count it twice.
        assert_eq!(
            t.insert(in_254[1], addr("/ip4/8.8.9.10/tcp/1"), 1),
            Insert::Updated
        );
    }

    #[test]
    fn closest_is_sorted_by_xor_distance() {
        let mut t = RoutingTable::new(peer(), Config::default());
        let peers: Vec<PeerId> = (0..200).map(|_| peer()).collect();
        for p in &peers {
            let _ = t.insert(*p, addr("/ip4/10.1.1.1/tcp/1"), 0);
        }
        let target = Key::new(b"target");
        let got: Vec<PeerId> = t.closest(&target, 20).iter().map(|e| e.peer).collect();
        let mut want: Vec<&Entry> = t.iter().collect();
        want.sort_by_key(|e| e.key.distance(&target));
        let want: Vec<PeerId> = want.iter().take(20).map(|e| e.peer).collect();
        assert_eq!(got, want);
        assert_eq!(t.closest(&target, 0).len(), 0);
    }

    #[test]
    fn closest_where_reads_buckets_nearest_first_and_equals_a_full_sort() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let random_peer = |rng: &mut rand::rngs::StdRng| {
            let mut mh = vec![0x12, 0x20];
            mh.extend_from_slice(&rng.random::<[u8; 32]>());
            PeerId::from_bytes(&mh).unwrap()
        };
        for round in 0..40 {
            let local = random_peer(&mut rng);
            let mut t = RoutingTable::new(
                local,
                Config {
                    k: 1 + round % 20,
                    ..Config::default()
                },
            );
            for _ in 0..rng.random_range(0..400) {
                let _ = t.insert(random_peer(&mut rng), addr("/ip4/10.1.1.1/tcp/1"), 0);
            }
            // Targets: random, the local key itself, and keys of table peers.
            let mut targets: Vec<Key> = (0..5)
                .map(|_| Key::from_hash(rng.random::<[u8; 32]>()))
                .collect();
            targets.push(*t.local_key());
            targets.extend(t.iter().take(3).map(|e| e.key));
            for target in targets {
                // The bucket order is by distance.
                let d = t.local_key().distance(&target);
                let order: Vec<usize> = buckets_by_distance(&d).collect();
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..256).collect::<Vec<_>>(), "each bucket once");
                let mut last = None;
                for b in &order {
                    for e in &t.buckets[*b] {
                        let de = e.key.distance(&target);
                        assert!(last.is_none_or(|l| l < de), "bucket {b} out of order");
                    }
                    if let Some(max) = t.buckets[*b].iter().map(|e| e.key.distance(&target)).max() {
                        last = Some(max);
                    }
                }
                // And closest_where is the brute force's answer, with or without a filter.
                for n in [1, 3, 20, 50, 1000] {
                    let odd = |e: &Entry| e.key.hash()[0] % 2 == 1;
                    let got: Vec<PeerId> = t
                        .closest_where(&target, n, odd)
                        .iter()
                        .map(|e| e.peer)
                        .collect();
                    let mut want: Vec<&Entry> = t.iter().filter(|e| odd(e)).collect();
                    want.sort_by_key(|e| e.key.distance(&target));
                    let want: Vec<PeerId> = want.iter().take(n).map(|e| e.peer).collect();
                    assert_eq!(got, want);
                    assert_eq!(t.closest(&target, n).len(), n.min(t.len()));
                }
            }
        }
    }
}
