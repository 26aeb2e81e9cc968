//! The crawl of the DHT the booster serves, sans-IO (time is an input): which peer to ask
//! next, for which bucket, at what rate; what the crawl found.
//!
//! Every reachable peer is asked FIND_NODE for one key in each of its first
//! `buckets_per_peer` buckets (a key whose hash shares exactly `i` leading bits with the
//! peer's), which walks its routing table; every peer named in an answer joins the queue,
//! up to `max_peers`. A peer's deeper buckets are not asked once an answer shows they hold
//! nothing more: the key of bucket `i` is closer to every entry the peer holds at depth
//! `i` or more (sharing at least `i` leading bits with it) than to any shallower one, so an
//! answer naming fewer than k of those named all of them ([`Limits::exhausted_below`]).
//! In a network of N peers that is after about log2(N / k) buckets, not 16. Requests run at most `max_in_flight` at once and `per_second` per
//! second. Keys for a wanted prefix come from a table of 2^16 keys, one per 16-bit hash
//! prefix, made once per process ([`prefix_keys`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use multiaddr::Multiaddr;
use pylon_node::addresses;
use pylon_node::protocols::kad::Key;
use pylon_node::PeerId;

/// The bounds of one crawl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Peers the crawl learns of at most (the queue's and the snapshot's bound).
    pub max_peers: usize,
    /// Buckets asked per peer (1–16).
    pub buckets_per_peer: u8,
    /// An answer naming fewer peers than this at the asked depth or deeper ends the
    /// asking of that peer: k less 2, one for us (servers leave the requester out) and
    /// one for a peer a server may leave out (go-libp2p omits peers without addresses).
    pub exhausted_below: usize,
    pub max_in_flight: usize,
    pub per_second: u32,
}

/// One request to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
    /// The FIND_NODE key.
    pub key: Vec<u8>,
    /// The bucket of `peer`'s table the key falls in (the leading bits it shares).
    pub bucket: u8,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Ask(Request),
    /// The rate is spent: ask again after this long.
    Wait(Duration),
    /// Requests are running (or `max_in_flight` of them): wait for one to end.
    Pending,
    /// Every peer learned of has been asked.
    Done,
}

/// What a crawl found.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Peers that answered at least one request.
    pub responsive: Vec<PeerId>,
    /// Peers named by others that never answered.
    pub unreachable: usize,
    /// Requests made.
    pub requests: u64,
    /// Requests left out because an answer showed the peer's deeper buckets were named.
    pub skipped: u64,
    /// The bound on peers was reached: the network is larger than what was seen.
    pub truncated: bool,
    pub took: Duration,
}

#[derive(Debug)]
struct Peer {
    addrs: Vec<Multiaddr>,
    /// Next bucket to ask about.
    next_bucket: u8,
    in_flight: usize,
    answered: bool,
    failed: bool,
}

/// One crawl's state.
#[derive(Debug)]
pub struct Crawl {
    limits: Limits,
    peers: HashMap<PeerId, Peer>,
    queue: VecDeque<PeerId>,
    in_flight: usize,
    requests: u64,
    skipped: u64,
    truncated: bool,
    started: Instant,
    /// The rate's window: starts of the last second.
    recent: VecDeque<Instant>,
    /// Our own identities: never asked, never counted.
    exclude: HashSet<PeerId>,
}

impl Crawl {
    pub fn new(limits: Limits, now: Instant, exclude: HashSet<PeerId>) -> Self {
        Crawl {
            limits: Limits {
                buckets_per_peer: limits.buckets_per_peer.clamp(1, 16),
                ..limits
            },
            peers: HashMap::new(),
            queue: VecDeque::new(),
            in_flight: 0,
            requests: 0,
            skipped: 0,
            truncated: false,
            started: now,
            recent: VecDeque::new(),
            exclude,
        }
    }

    /// A peer to ask (from our tables, or named in an answer).
    pub fn learn(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if self.exclude.contains(&peer) {
            return;
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            if p.addrs.is_empty() {
                p.addrs = addrs;
            }
            return;
        }
        if self.peers.len() >= self.limits.max_peers {
            self.truncated = true;
            return;
        }
        if addrs.is_empty() {
            return;
        }
        self.peers.insert(
            peer,
            Peer {
                addrs,
                next_bucket: 0,
                in_flight: 0,
                answered: false,
                failed: false,
            },
        );
        self.queue.push_back(peer);
    }

    /// The next step at `now`.
    pub fn next(&mut self, now: Instant) -> Next {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(1))
        {
            self.recent.pop_front();
        }
        // Peers that failed, or whose deeper buckets an answer showed empty, while queued.
        while let Some(front) = self.queue.front() {
            match self.peers.get(front) {
                Some(p) if !p.failed && p.next_bucket < self.limits.buckets_per_peer => break,
                _ => {
                    self.queue.pop_front();
                }
            }
        }
        if self.queue.is_empty() {
            return if self.in_flight > 0 {
                Next::Pending
            } else {
                Next::Done
            };
        }
        if self.in_flight >= self.limits.max_in_flight {
            return Next::Pending;
        }
        if self.recent.len() >= self.limits.per_second as usize {
            let oldest = self.recent.front().copied().unwrap_or(now);
            return Next::Wait(
                Duration::from_secs(1).saturating_sub(now.saturating_duration_since(oldest)),
            );
        }
        let Some(peer) = self.queue.pop_front() else {
            return Next::Done;
        };
        let Some(p) = self.peers.get_mut(&peer) else {
            return Next::Pending;
        };
        let bucket = p.next_bucket;
        p.next_bucket += 1;
        p.in_flight += 1;
        // The peer's other buckets after the other peers' first ones: breadth first.
        if p.next_bucket < self.limits.buckets_per_peer && !p.failed {
            self.queue.push_back(peer);
        }
        self.in_flight += 1;
        self.requests += 1;
        self.recent.push_back(now);
        Next::Ask(Request {
            peer,
            addrs: p.addrs.clone(),
            key: key_in_bucket(&Key::from_peer(&peer), bucket, self.requests),
            bucket,
        })
    }

    /// `peer` answered the request for `bucket`, naming `found`. A peer we reached at a
    /// public address is not followed to the private or loopback addresses it names: the
    /// crawl would otherwise dial into this host's own networks wherever a remote peer
    /// points it.
    pub fn answered(&mut self, peer: &PeerId, bucket: u8, found: Vec<(PeerId, Vec<Multiaddr>)>) {
        self.end(peer, true);
        let own = Key::from_peer(peer);
        let deep = found
            .iter()
            .filter(|(p, _)| {
                own.distance(&Key::from_peer(p)).common_prefix_len() >= u32::from(bucket)
            })
            .count();
        if deep < self.limits.exhausted_below {
            if let Some(p) = self.peers.get_mut(peer) {
                // Its buckets past `bucket` hold nothing this answer did not name.
                let left = self.limits.buckets_per_peer.saturating_sub(p.next_bucket);
                self.skipped += u64::from(left);
                p.next_bucket = self.limits.buckets_per_peer;
            }
        }
        let from_public = self
            .peers
            .get(peer)
            .is_some_and(|p| p.addrs.iter().any(addresses::is_public));
        for (p, mut addrs) in found {
            if from_public {
                addrs.retain(addresses::is_public);
            }
            self.learn(p, addrs);
        }
    }

    /// A request to `peer` failed: its other buckets are not asked.
    pub fn failed(&mut self, peer: &PeerId) {
        self.end(peer, false);
        if let Some(p) = self.peers.get_mut(peer) {
            if !p.answered {
                // Its queued turn is dropped when it comes up.
                p.failed = true;
            }
        }
    }

    fn end(&mut self, peer: &PeerId, ok: bool) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(p) = self.peers.get_mut(peer) {
            p.in_flight = p.in_flight.saturating_sub(1);
            p.answered |= ok;
        }
    }

    /// What the crawl found so far.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        Snapshot {
            responsive: self
                .peers
                .iter()
                .filter(|(_, p)| p.answered)
                .map(|(id, _)| *id)
                .collect(),
            unreachable: self.peers.values().filter(|p| !p.answered).count(),
            requests: self.requests,
            skipped: self.skipped,
            truncated: self.truncated,
            took: now.saturating_duration_since(self.started),
        }
    }
}

/// A FIND_NODE key whose hash shares exactly `bucket` leading bits (0–15) with `peer`'s:
/// the table entry for the 16-bit prefix `peer`'s first bits, bit `bucket` flipped, the
/// bits after it varied by `salt`.
pub fn key_in_bucket(peer: &Key, bucket: u8, salt: u64) -> Vec<u8> {
    let hash = peer.hash();
    let own = u16::from_be_bytes([hash[0], hash[1]]);
    let b = u32::from(bucket.min(15));
    let keep = if b == 0 { 0 } else { u16::MAX << (16 - b) };
    let flip = 1u16 << (15 - b);
    let rest = !(keep | flip);
    let varied = (salt as u16).wrapping_mul(0x9E37) & rest;
    let prefix = (own & keep) | ((own & flip) ^ flip) | varied;
    prefix_keys()[usize::from(prefix)].clone()
}

/// 2^16 keys, the one at index `p` hashing to a key whose first 16 bits are `p`.
pub fn prefix_keys() -> &'static [Vec<u8>] {
    static KEYS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut keys: Vec<Option<Vec<u8>>> = vec![None; 1 << 16];
        let mut missing = 1usize << 16;
        let mut n: u64 = 0;
        while missing > 0 {
            let raw = n.to_be_bytes().to_vec();
            let h = Key::new(&raw);
            let p = usize::from(u16::from_be_bytes([h.hash()[0], h.hash()[1]]));
            if keys[p].is_none() {
                keys[p] = Some(raw);
                missing -= 1;
            }
            n += 1;
        }
        keys.into_iter().flatten().collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_peers: 100,
            buckets_per_peer: 3,
            // Every bucket asked, whatever the answers.
            exhausted_below: 0,
            max_in_flight: 2,
            per_second: 4,
        }
    }

    fn addr() -> Vec<Multiaddr> {
        vec!["/ip4/11.77.0.1/tcp/4001".parse().unwrap()]
    }

    #[test]
    fn keys_land_in_the_bucket_asked_for() {
        let peer = Key::from_peer(&PeerId::random());
        for bucket in 0..16u8 {
            for salt in 0..4 {
                let k = Key::new(&key_in_bucket(&peer, bucket, salt));
                assert_eq!(
                    peer.distance(&k).common_prefix_len(),
                    u32::from(bucket),
                    "bucket {bucket}"
                );
            }
        }
    }

    #[test]
    fn every_peer_learned_is_asked_each_bucket_within_the_bounds() {
        let t0 = Instant::now();
        let me = PeerId::random();
        let mut c = Crawl::new(limits(), t0, HashSet::from([me]));
        let (a, b) = (PeerId::random(), PeerId::random());
        c.learn(a, addr());
        c.learn(me, addr()); // ourselves: never asked
                             // Two in flight at once, then pending.
        let Next::Ask(r1) = c.next(t0) else { panic!() };
        let Next::Ask(r2) = c.next(t0) else { panic!() };
        assert_eq!((r1.peer, r2.peer), (a, a));
        assert_eq!(c.next(t0), Next::Pending);
        c.answered(&a, 0, vec![(b, addr()), (me, addr())]);
        c.answered(&a, 0, vec![]);
        // The rate: 4 a second.
        let Next::Ask(r3) = c.next(t0) else { panic!() };
        let Next::Ask(r4) = c.next(t0) else { panic!() };
        assert_eq!([r3.peer, r4.peer].iter().filter(|p| **p == b).count(), 1);
        assert!(matches!(c.next(t0), Next::Pending));
        c.answered(&r3.peer, r3.bucket, vec![]);
        assert!(
            matches!(c.next(t0), Next::Wait(_)),
            "4 requests in this second"
        );
        let t1 = t0 + Duration::from_secs(1);
        c.failed(&r4.peer);
        // What is left: the rest of the buckets of whoever did not fail.
        let mut asked = 4;
        loop {
            match c.next(t1 + Duration::from_secs(asked)) {
                Next::Ask(r) => {
                    asked += 1;
                    c.answered(&r.peer, r.bucket, vec![]);
                }
                Next::Done => break,
                other => panic!("{other:?}"),
            }
        }
        let snap = c.snapshot(t1);
        assert!(snap.responsive.contains(&a));
        assert!(!snap.responsive.contains(&me));
        assert!(asked <= 6, "{asked}: at most 3 buckets for each of 2 peers");
    }

    #[test]
    fn a_public_peer_does_not_send_the_crawl_into_private_networks() {
        let t0 = Instant::now();
        let mut c = Crawl::new(limits(), t0, HashSet::new());
        let public = PeerId::random();
        c.learn(public, addr());
        let Next::Ask(_) = c.next(t0) else { panic!() };
        let (inside, mixed) = (PeerId::random(), PeerId::random());
        let private: Multiaddr = "/ip4/10.0.0.7/tcp/22".parse().unwrap();
        let loopback: Multiaddr = "/ip4/127.0.0.1/tcp/5001".parse().unwrap();
        c.answered(
            &public,
            0,
            vec![
                (inside, vec![private.clone(), loopback]),
                (mixed, vec![private.clone(), addr()[0].clone()]),
            ],
        );
        assert!(
            !c.peers.contains_key(&inside),
            "only private addresses: dropped"
        );
        assert_eq!(c.peers[&mixed].addrs, addr(), "its public address kept");

        // A peer reached in a private network may name its neighbours there.
        let mut lab = Crawl::new(limits(), t0, HashSet::new());
        let local = PeerId::random();
        lab.learn(local, vec![private.clone()]);
        let Next::Ask(_) = lab.next(t0) else { panic!() };
        lab.answered(&local, 0, vec![(inside, vec![private])]);
        assert!(lab.peers.contains_key(&inside));
    }

    #[test]
    fn the_peer_bound_is_kept_and_reported() {
        let t0 = Instant::now();
        let mut c = Crawl::new(
            Limits {
                max_peers: 3,
                ..limits()
            },
            t0,
            HashSet::new(),
        );
        for _ in 0..10 {
            c.learn(PeerId::random(), addr());
        }
        let snap = c.snapshot(t0);
        assert!(snap.truncated);
        assert_eq!(snap.unreachable, 3);
    }

    /// A network of `n` peers with full Kademlia tables (k = 20 a bucket), crawled from
    /// one peer: every peer is found, and a peer's deeper buckets are asked only while
    /// its answers show more there, so far fewer than 16 requests a peer are made.
    #[test]
    fn the_crawl_finds_every_peer_and_stops_where_the_tables_end() {
        const K: usize = 20;
        let n = 1000;
        let ids: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
        let keys: Vec<Key> = ids.iter().map(Key::from_peer).collect();
        let index: HashMap<PeerId, usize> = ids.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        // Each peer's table: the first K peers it meets at each depth.
        let tables: Vec<Vec<usize>> = (0..n)
            .map(|i| {
                let mut per_depth: HashMap<u32, usize> = HashMap::new();
                (0..n)
                    .filter(|&j| {
                        if j == i {
                            return false;
                        }
                        let d = keys[i].distance(&keys[j]).common_prefix_len();
                        let held = per_depth.entry(d).or_default();
                        *held += 1;
                        *held <= K
                    })
                    .collect()
            })
            .collect();
        // A FIND_NODE answer: the K entries of the table closest to the key.
        let answer = |i: usize, key: &[u8]| -> Vec<(PeerId, Vec<Multiaddr>)> {
            let target = Key::new(key);
            let mut closest = tables[i].clone();
            closest.sort_by_key(|&j| keys[j].distance(&target));
            closest.truncate(K);
            closest.into_iter().map(|j| (ids[j], addr())).collect()
        };
        let run = |exhausted_below: usize| {
            let t0 = Instant::now();
            let limits = Limits {
                max_peers: 10_000,
                buckets_per_peer: 16,
                exhausted_below,
                max_in_flight: 1,
                per_second: u32::MAX,
            };
            let mut c = Crawl::new(limits, t0, HashSet::new());
            c.learn(ids[0], addr());
            loop {
                match c.next(t0) {
                    Next::Ask(r) => {
                        let found = answer(index[&r.peer], &r.key);
                        c.answered(&r.peer, r.bucket, found);
                    }
                    Next::Done => break,
                    other => panic!("{other:?}"),
                }
            }
            c.snapshot(t0)
        };
        let every = run(0);
        let stopping = run(K - 2);
        assert_eq!(
            every.responsive.len(),
            n,
            "asking every bucket finds everyone"
        );
        assert_eq!(
            stopping.responsive.len(),
            n,
            "stopping early finds everyone too"
        );
        assert_eq!(every.requests, 16 * n as u64);
        let per_peer = stopping.requests as f64 / n as f64;
        eprintln!(
            "{n} peers: {} requests asking every bucket, {} stopping where tables end ({per_peer:.2} a peer)",
            every.requests, stopping.requests
        );
        // log2(1000 / 20) is about 5.6: buckets 0 to 7 or so.
        assert!(
            (5.0..=10.0).contains(&per_peer),
            "{per_peer:.2} requests a peer"
        );
        assert_eq!(stopping.requests + stopping.skipped, every.requests);
    }
}
