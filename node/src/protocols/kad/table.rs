//! The routing table: k-buckets by common prefix length with the local key
//! (`specs/kad-dht/README.md#kademlia-routing-table`), with IP diversity limits against
//! eclipse attacks. No I/O and no clock: callers pass `now_ms`, and a full bucket hands
//! back its least recently seen peer for the caller to check before anything is evicted
//! (Kademlia keeps long-lived peers).

use std::collections::HashMap;
use std::net::IpAddr;

use multiaddr::{Multiaddr, Protocol};

use super::key::Key;
use crate::identity::PeerId;

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

/// The network a peer's address sits in, for diversity limits: IPv4 /16 or IPv6 /48.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpGroup {
    V4([u8; 2]),
    V6([u8; 6]),
}

impl IpGroup {
    pub fn of_ip(ip: IpAddr) -> IpGroup {
        match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                IpGroup::V4([o[0], o[1]])
            }
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpGroup::of_ip(IpAddr::V4(v4)),
                None => {
                    let o = v6.octets();
                    IpGroup::V6([o[0], o[1], o[2], o[3], o[4], o[5]])
                }
            },
        }
    }

    /// The group of a multiaddr's leading IP, if it has one.
    pub fn of_addr(addr: &Multiaddr) -> Option<IpGroup> {
        match addr.iter().next()? {
            Protocol::Ip4(ip) => Some(IpGroup::of_ip(IpAddr::V4(ip))),
            Protocol::Ip6(ip) => Some(IpGroup::of_ip(IpAddr::V6(ip))),
            _ => None,
        }
    }
}

/// One peer in the table.
#[derive(Debug, Clone)]
pub struct Entry {
    pub peer: PeerId,
    pub key: Key,
    pub addrs: Vec<Multiaddr>,
    /// The group counted against the diversity limits (`None`: exempt).
    pub group: Option<IpGroup>,
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
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Local => "local",
            Refusal::NoAddress => "no_address",
            Refusal::BucketDiversity => "bucket_diversity",
            Refusal::TableDiversity => "table_diversity",
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
    groups: HashMap<IpGroup, usize>,
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

    fn group_of(&self, addrs: &[Multiaddr]) -> Option<IpGroup> {
        let public = addrs
            .iter()
            .find(|a| crate::addresses::is_public(a))
            .and_then(IpGroup::of_addr);
        if public.is_some() || self.config.exempt_private {
            return public;
        }
        addrs.iter().find_map(IpGroup::of_addr)
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
    fn diversity(&self, b: usize, group: Option<IpGroup>) -> Option<Refusal> {
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

    fn count(&mut self, group: Option<IpGroup>) {
        if let Some(g) = group {
            *self.groups.entry(g).or_insert(0) += 1;
        }
    }

    fn uncount(&mut self, group: Option<IpGroup>) {
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

    /// The `n` peers closest to `key` among those `keep` accepts, nearest first.
    pub fn closest_where(&self, key: &Key, n: usize, keep: impl Fn(&Entry) -> bool) -> Vec<&Entry> {
        let mut all: Vec<(super::key::Distance, &Entry)> = self
            .iter()
            .filter(|e| keep(e))
            .map(|e| (e.key.distance(key), e))
            .collect();
        if all.len() > n && n > 0 {
            all.select_nth_unstable_by(n - 1, |a, b| a.0.cmp(&b.0));
            all.truncate(n);
        }
        all.sort_unstable_by_key(|a| a.0);
        all.truncate(n);
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
}
