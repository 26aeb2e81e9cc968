//! One iterative lookup (`specs/kad-dht/README.md#peer-routing`) as a state machine: it
//! says which peer to ask next and learns what each one answered; it sends nothing and
//! reads no clock.
//!
//! The driver ([`Kad::lookup`](super::Kad::lookup), or a simulator) loops:
//! [`Lookup::poll`] gives [`Poll::Request`] (ask this peer, at these addresses),
//! [`Poll::Wait`] (nothing to do before this instant unless an answer comes) or
//! [`Poll::Done`]; answers go in through [`Lookup::handle_success`] and
//! [`Lookup::handle_failure`]; [`Lookup::finish`] gives the [`Outcome`]. Time is an input
//! to every call: a request not answered within [`Config::request_timeout`] counts as
//! failed, and the whole lookup ends at [`Config::query_timeout`].
//!
//! What it is not: the requests themselves (dialing, streams, framing), record
//! validation (the driver checks a record before handing it in, see
//! [`Response::from_message`]), or routing-table upkeep (the driver decides whether a
//! failed peer leaves the table).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use multiaddr::Multiaddr;

use super::key::{Distance, Key};
use super::proto::{self, MessageType};
use super::{parse_peer, MAX_RESPONSE_PEERS};
use crate::identity::PeerId;

/// A peer found by a lookup, with the addresses we got for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
}

/// Parameters of one lookup.
#[derive(Debug, Clone)]
pub struct Config {
    //= specs/kad-dht/README.md#replication-parameter-k
    //# The recommended value for `k` is 20.
    pub k: usize,
    //= specs/kad-dht/README.md#alpha-concurrency-parameter-α
    //# The concurrency of node and value lookups are limited by parameter `α`, with a
    //# default value of 10.
    pub alpha: usize,
    /// A request not answered within this counts as failed.
    pub request_timeout: Duration,
    /// The whole lookup ends this long after it started.
    pub query_timeout: Duration,
    /// Candidates remembered; past it, the farthest not yet asked are dropped.
    pub max_candidates: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            k: 20,
            alpha: 10,
            request_timeout: Duration::from_secs(10),
            query_timeout: Duration::from_secs(10),
            max_candidates: 20 * super::CANDIDATES_PER_K,
        }
    }
}

/// When a value or provider lookup may stop before the k closest peers answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enough {
    /// Only when the k closest answered (FIND_NODE).
    Never,
    /// Once this many valid records came in (GET_VALUE).
    Records(usize),
    /// Once this many distinct providers came in (GET_PROVIDERS).
    Providers(usize),
}

impl Enough {
    /// What `enough` means for a lookup made of `kind` requests.
    pub fn of(kind: MessageType, enough: Option<usize>) -> Enough {
        match (kind, enough) {
            (MessageType::GetValue, Some(n)) => Enough::Records(n),
            (MessageType::GetProviders, Some(n)) => Enough::Providers(n),
            _ => Enough::Never,
        }
    }
}

/// What one peer answered, as a lookup needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// The peers it knows closer to the key.
    pub closer: Vec<Found>,
    /// A record under the lookup's key that the driver found valid.
    pub record: Option<Vec<u8>>,
    /// Providers of the key.
    pub providers: Vec<Found>,
}

impl Response {
    /// Reads a reply: at most 64 peer entries of each list (with at most 16 parsed
    /// addresses each; entries whose id does not parse are skipped), and its record when
    /// it is under `key` and `valid` accepts the value.
    pub fn from_message(
        reply: proto::Message,
        key: &[u8],
        valid: impl FnOnce(&[u8]) -> bool,
    ) -> Response {
        let parse = |peers: &[proto::Peer]| -> Vec<Found> {
            peers
                .iter()
                .take(MAX_RESPONSE_PEERS)
                .filter_map(parse_peer)
                .collect()
        };
        Response {
            closer: parse(&reply.closer_peers),
            providers: parse(&reply.provider_peers),
            record: reply
                .record
                .filter(|r| r.key == key && valid(&r.value))
                .map(|r| r.value),
        }
    }
}

impl Response {
    /// Keeps only the public addresses of the closer peers (peers left with none are
    /// dropped) and of the providers (kept without addresses: they can be looked up),
    /// and returns how many addresses went. For the answer of a peer reached at a public
    /// address: its private and loopback addresses are not ours to dial, following them
    /// would let any remote peer point our lookups into this host's own networks, and
    /// handing them on (the booster caches providers for others) would spread the lure.
    pub fn keep_public(&mut self) -> usize {
        let mut dropped = 0;
        let mut keep = |f: &mut Found| {
            let before = f.addrs.len();
            f.addrs.retain(crate::addresses::is_public);
            dropped += before - f.addrs.len();
            !f.addrs.is_empty()
        };
        self.closer.retain_mut(&mut keep);
        for p in &mut self.providers {
            keep(p);
        }
        dropped
    }
}

/// What [`Lookup::poll`] asks of the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Send the request to this peer, then report with `handle_success`/`handle_failure`.
    Request(Found),
    /// Nothing to send: call `poll` again when an answer came in or at this instant
    /// (a request's or the lookup's deadline), whichever is first.
    Wait(Instant),
    /// The lookup is over: take its [`Outcome`] with [`Lookup::finish`].
    Done,
}

/// What one lookup collected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The closest peers that answered, nearest first (at most k).
    pub closest: Vec<Found>,
    /// Valid records received (GET_VALUE), with the peer that sent each.
    pub records: Vec<(PeerId, Vec<u8>)>,
    /// Providers received (GET_PROVIDERS), deduplicated.
    pub providers: Vec<Found>,
    /// Peers asked, and how many of them failed (error or timeout).
    pub queried: usize,
    pub failed: usize,
}

/// A candidate's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not asked yet.
    Waiting,
    /// Asked; counts as failed if not answered by its deadline (kept in
    /// `Lookup::in_flight`).
    InFlight,
    Answered,
    Failed,
}

#[derive(Debug, Clone)]
struct Candidate {
    found: Found,
    state: State,
}

/// One lookup in progress.
#[derive(Debug)]
pub struct Lookup {
    target: Key,
    local: PeerId,
    config: Config,
    enough: Enough,
    deadline: Instant,
    /// Everyone seen, nearest first (distances of distinct peers are distinct).
    candidates: BTreeMap<Distance, Candidate>,
    /// The candidates in flight (at most α), with their deadlines.
    in_flight: Vec<(Distance, Instant)>,
    seen_providers: HashSet<PeerId>,
    out: Outcome,
    done: bool,
}

impl Lookup {
    /// A lookup of `target` started at `now` by `local`, seeded with the peers of our
    /// table closest to it (the first k are taken).
    //= specs/kad-dht/README.md#peer-routing
    //# At initialization `Pn` is seeded with the `k` peers from our routing table we
    //# know are closest to `Key`, based on the XOR distance function
    pub fn new(
        now: Instant,
        target: Key,
        local: PeerId,
        seeds: impl IntoIterator<Item = Found>,
        enough: Enough,
        config: Config,
    ) -> Lookup {
        let mut lookup = Lookup {
            target,
            local,
            deadline: now + config.query_timeout,
            enough,
            candidates: BTreeMap::new(),
            in_flight: Vec::new(),
            seen_providers: HashSet::new(),
            out: Outcome::default(),
            done: false,
            config,
        };
        for found in seeds.into_iter().take(lookup.config.k) {
            lookup.offer(found);
        }
        lookup
    }

    pub fn target(&self) -> &Key {
        &self.target
    }

    /// Requests sent and not answered, failed or timed out yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The next thing to do at `now`. Applies the timeouts first.
    pub fn poll(&mut self, now: Instant) -> Poll {
        if self.done {
            return Poll::Done;
        }
        if now >= self.deadline {
            return self.end();
        }
        //= specs/kad-dht/README.md#peer-routing
        //# If an error or timeout occurs, discard it.
        let mut i = 0;
        while i < self.in_flight.len() {
            let (d, deadline) = self.in_flight[i];
            if now < deadline {
                i += 1;
                continue;
            }
            self.in_flight.swap_remove(i);
            if let Some(c) = self.candidates.get_mut(&d) {
                c.state = State::Failed;
            }
            self.out.failed += 1;
        }
        if self.closest_answered() || self.satisfied() {
            return self.end();
        }
        //= specs/kad-dht/README.md#peer-routing
        //# Pick as many peers from the candidate peers (`Pn`) as the `α` concurrency
        //# factor allows.
        if self.in_flight.len() < self.config.alpha.max(1) {
            let deadline = now + self.config.request_timeout;
            let next = self
                .candidates
                .iter_mut()
                .find(|(_, c)| c.state == State::Waiting);
            if let Some((d, c)) = next {
                c.state = State::InFlight;
                self.in_flight.push((*d, deadline));
                self.out.queried += 1;
                return Poll::Request(c.found.clone());
            }
        }
        //= specs/kad-dht/README.md#peer-routing
        //# The lookup might terminate early in case the local node queried all known
        //# nodes, with the number of nodes being smaller than `k`.
        let Some(first_deadline) = self.in_flight.iter().map(|(_, t)| *t).min() else {
            return self.end();
        };
        Poll::Wait(first_deadline.min(self.deadline))
    }

    /// `peer` answered. Returns false (and ignores the answer) when no request to it is
    /// in flight — never asked, answered already, or timed out.
    pub fn handle_success(&mut self, _now: Instant, peer: &PeerId, response: Response) -> bool {
        if !self.settle(peer, State::Answered) {
            return false;
        }
        //= specs/kad-dht/README.md#peer-routing
        //# If successful the response will contain the `k` closest nodes the peer
        //# knows to the key `Key`. Add them to the candidate list `Pn`, except for
        //# those that have already been queried.
        for found in response.closer {
            if found.peer != self.local && !found.addrs.is_empty() {
                self.offer(found);
            }
        }
        // Remember a bounded number of candidates: drop the farthest not asked yet.
        while self.candidates.len() > self.config.max_candidates {
            let far = self
                .candidates
                .iter()
                .rev()
                .find(|(_, c)| c.state == State::Waiting)
                .map(|(d, _)| *d);
            match far {
                Some(d) => {
                    self.candidates.remove(&d);
                }
                None => break,
            }
        }
        if let Some(value) = response.record {
            self.out.records.push((*peer, value));
        }
        for p in response.providers {
            if self.seen_providers.insert(p.peer) {
                self.out.providers.push(p);
            }
        }
        true
    }

    /// The request to `peer` failed (an error, or the driver's own timeout). Returns false
    /// when no request to it is in flight.
    pub fn handle_failure(&mut self, _now: Instant, peer: &PeerId) -> bool {
        let failed = self.settle(peer, State::Failed);
        if failed {
            self.out.failed += 1;
        }
        failed
    }

    /// The result: the closest peers that answered (at most k) and what they sent.
    pub fn finish(mut self) -> Outcome {
        let k = self.config.k;
        self.out.closest = self
            .candidates
            .into_values()
            .filter(|c| c.state == State::Answered)
            .map(|c| c.found)
            .take(k)
            .collect();
        self.out
    }

    fn end(&mut self) -> Poll {
        self.done = true;
        Poll::Done
    }

    /// Adds a candidate we did not know (the first addresses heard of are kept).
    fn offer(&mut self, found: Found) {
        let d = Key::from_peer(&found.peer).distance(&self.target);
        self.candidates.entry(d).or_insert(Candidate {
            found,
            state: State::Waiting,
        });
    }

    /// Moves `peer` from in flight to `to`.
    fn settle(&mut self, peer: &PeerId, to: State) -> bool {
        let d = Key::from_peer(peer).distance(&self.target);
        match self.candidates.get_mut(&d) {
            Some(c) if c.state == State::InFlight && c.found.peer == *peer => {
                c.state = to;
                self.in_flight.retain(|(f, _)| *f != d);
                true
            }
            _ => false,
        }
    }

    //= specs/kad-dht/README.md#peer-routing
    //# The lookup terminates when the initiator has queried and gotten responses
    //# from the k (see [replication parameter `k`](#replication-parameter-k))
    //# closest nodes it has seen.
    fn closest_answered(&self) -> bool {
        self.candidates
            .values()
            .filter(|c| c.state != State::Failed)
            .take(self.config.k)
            .all(|c| c.state == State::Answered)
    }

    fn satisfied(&self) -> bool {
        match self.enough {
            Enough::Never => false,
            Enough::Records(n) => self.out.records.len() >= n,
            Enough::Providers(n) => self.out.providers.len() >= n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PeerId made from a number (a SHA-256 multihash of its bytes).
    fn peer(n: u32) -> PeerId {
        let mut mh = vec![0x12, 0x20];
        mh.extend_from_slice(Key::new(&n.to_be_bytes()).hash());
        PeerId::from_bytes(&mh).unwrap()
    }

    fn found(p: PeerId) -> Found {
        Found {
            peer: p,
            addrs: vec!["/ip4/10.0.0.1/tcp/1".parse().unwrap()],
        }
    }

    /// Peer `n` at `addrs`.
    fn at(n: u32, addrs: &[&str]) -> Found {
        Found {
            peer: peer(n),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn only_public_addresses_of_closer_peers_and_providers_are_kept() {
        let mut r = Response {
            closer: vec![
                at(1, &["/ip4/10.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/1"]),
                at(2, &["/ip4/192.168.1.2/tcp/1", "/ip4/8.8.8.8/tcp/1"]),
                at(3, &["/dns4/boot.example.com/tcp/1"]),
            ],
            providers: vec![
                at(4, &["/ip4/172.16.0.4/udp/1/quic-v1", "/ip4/1.1.1.1/tcp/1"]),
                at(5, &["/ip6/::1/tcp/1"]),
            ],
            record: None,
        };
        assert_eq!(r.keep_public(), 5);
        assert_eq!(
            r.closer,
            [
                at(2, &["/ip4/8.8.8.8/tcp/1"]),
                at(3, &["/dns4/boot.example.com/tcp/1"])
            ],
            "a peer with only private addresses left out"
        );
        assert_eq!(
            r.providers,
            [at(4, &["/ip4/1.1.1.1/tcp/1"]), at(5, &[])],
            "a provider left without addresses stays: it can be looked up"
        );
    }

    fn config(k: usize, alpha: usize) -> Config {
        Config {
            k,
            alpha,
            request_timeout: Duration::from_secs(3),
            query_timeout: Duration::from_secs(10),
            max_candidates: 8 * k,
        }
    }

    /// Peers sorted by distance to `target`.
    fn by_distance(target: &Key, peers: impl IntoIterator<Item = PeerId>) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = peers.into_iter().collect();
        v.sort_by_key(|p| Key::from_peer(p).distance(target));
        v
    }

    /// Polls until it waits or is done; returns the peers asked.
    fn drain(l: &mut Lookup, now: Instant) -> (Vec<PeerId>, Poll) {
        let mut asked = Vec::new();
        loop {
            match l.poll(now) {
                Poll::Request(f) => asked.push(f.peer),
                other => return (asked, other),
            }
        }
    }

    #[test]
    fn asks_alpha_nearest_first_and_ends_when_the_k_closest_answered() {
        let t0 = Instant::now();
        let target = Key::new(b"target");
        let local = peer(0);
        let all = by_distance(&target, (1..=30).map(peer));
        // Seeded with the 10 farthest of them.
        let seeds = all[20..].iter().copied().map(found);
        let mut l = Lookup::new(t0, target, local, seeds, Enough::Never, config(4, 3));
        // Only k seeds are taken, α asked, nearest first.
        let (asked, wait) = drain(&mut l, t0);
        assert_eq!(asked, all[20..23].to_vec());
        assert_eq!(wait, Poll::Wait(t0 + Duration::from_secs(3)));
        // The first answer names the 4 nearest peers overall (and us, and a peer without
        // addresses: both ignored).
        let mut closer: Vec<Found> = all[..4].iter().copied().map(found).collect();
        closer.push(found(local));
        closer.push(Found {
            peer: all[4],
            addrs: vec![],
        });
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.handle_success(
            t1,
            &all[20],
            Response {
                closer,
                ..Response::default()
            }
        ));
        // An answer from a peer we did not ask, or a second one, is ignored.
        assert!(!l.handle_success(t1, &all[29], Response::default()));
        assert!(!l.handle_success(t1, &all[20], Response::default()));
        let (asked, _) = drain(&mut l, t1);
        assert_eq!(asked, vec![all[0]], "one slot free: the nearest new peer");
        for p in [all[21], all[22], all[0]] {
            assert!(l.handle_success(t1, &p, Response::default()));
        }
        let (asked, _) = drain(&mut l, t1);
        assert_eq!(asked, all[1..4].to_vec());
        for p in &all[1..3] {
            l.handle_success(t1, p, Response::default());
        }
        // all[3] fails: the k closest not failed are then 0, 1, 2 and 20 — all answered.
        assert!(l.handle_failure(t1, &all[3]));
        assert_eq!(l.poll(t1), Poll::Done);
        let out = l.finish();
        let closest: Vec<PeerId> = out.closest.iter().map(|f| f.peer).collect();
        assert_eq!(closest, vec![all[0], all[1], all[2], all[20]]);
        assert_eq!((out.queried, out.failed), (7, 1));
    }

    #[test]
    fn a_request_times_out_and_the_lookup_moves_on() {
        let t0 = Instant::now();
        let target = Key::new(b"t");
        let all = by_distance(&target, (1..=3).map(peer));
        let seeds = all.iter().copied().map(found);
        let mut l = Lookup::new(t0, target, peer(0), seeds, Enough::Never, config(3, 2));
        let (asked, wait) = drain(&mut l, t0);
        assert_eq!(asked, all[..2].to_vec());
        let t1 = t0 + Duration::from_secs(1);
        l.handle_success(t1, &all[0], Response::default());
        let (asked, wait2) = drain(&mut l, t1);
        assert_eq!(asked, vec![all[2]]);
        // all[1] was asked at t0: its deadline comes first.
        assert_eq!(wait, Poll::Wait(t0 + Duration::from_secs(3)));
        assert_eq!(wait2, Poll::Wait(t0 + Duration::from_secs(3)));
        let t3 = t0 + Duration::from_secs(3);
        assert_eq!(l.poll(t3), Poll::Wait(t1 + Duration::from_secs(3)));
        assert_eq!(l.in_flight(), 1);
        // Its answer after the deadline does not count.
        assert!(!l.handle_success(t3, &all[1], Response::default()));
        l.handle_success(t3, &all[2], Response::default());
        assert_eq!(l.poll(t3), Poll::Done);
        let out = l.finish();
        assert_eq!(out.closest.len(), 2);
        assert_eq!((out.queried, out.failed), (3, 1));
    }

    #[test]
    fn the_query_timeout_ends_it_with_what_answered() {
        let t0 = Instant::now();
        let target = Key::new(b"t");
        let all = by_distance(&target, (1..=5).map(peer));
        let mut cfg = config(5, 1);
        cfg.request_timeout = Duration::from_secs(60);
        let mut l = Lookup::new(
            t0,
            target,
            peer(0),
            all.iter().copied().map(found),
            Enough::Never,
            cfg,
        );
        let (asked, wait) = drain(&mut l, t0);
        assert_eq!(asked, vec![all[0]]);
        assert_eq!(wait, Poll::Wait(t0 + Duration::from_secs(10)));
        l.handle_success(t0, &all[0], Response::default());
        drain(&mut l, t0);
        assert_eq!(l.poll(t0 + Duration::from_secs(10)), Poll::Done);
        assert!(l.is_done());
        let out = l.finish();
        assert_eq!(out.closest, vec![found(all[0])]);
    }

    #[test]
    fn nothing_to_ask_ends_at_once() {
        let t0 = Instant::now();
        let mut l = Lookup::new(
            t0,
            Key::new(b"t"),
            peer(0),
            [],
            Enough::Never,
            config(20, 10),
        );
        assert_eq!(l.poll(t0), Poll::Done);
        assert_eq!(l.finish(), Outcome::default());
    }

    #[test]
    fn value_and_provider_lookups_stop_when_they_have_enough() {
        let t0 = Instant::now();
        let key = b"/pk/whatever".to_vec();
        let target = Key::new(&key);
        let all = by_distance(&target, (1..=6).map(peer));
        let seeds = || all.iter().copied().map(found);
        let mut l = Lookup::new(
            t0,
            target,
            peer(0),
            seeds(),
            Enough::Records(1),
            config(6, 2),
        );
        drain(&mut l, t0);
        // A record under another key, or one the validator refuses, is not taken.
        let mut reply = proto::Message::new(MessageType::GetValue, key.clone());
        reply.record = Some(proto::Record {
            key: b"/pk/other".to_vec(),
            value: b"v".to_vec(),
            time_received: String::new(),
        });
        let r = Response::from_message(reply.clone(), &key, |_| true);
        assert_eq!(r.record, None);
        reply.record = Some(proto::Record {
            key: key.clone(),
            value: b"v".to_vec(),
            time_received: String::new(),
        });
        let refused = Response::from_message(reply.clone(), &key, |_| false);
        assert_eq!(refused.record, None);
        l.handle_success(t0, &all[0], refused);
        assert!(matches!(l.poll(t0), Poll::Request(_)));
        let r = Response::from_message(reply, &key, |v| v == b"v");
        l.handle_success(t0, &all[1], r);
        assert_eq!(l.poll(t0), Poll::Done);
        assert_eq!(l.finish().records, vec![(all[1], b"v".to_vec())]);

        // Providers: deduplicated, stop at 2.
        let mut l = Lookup::new(
            t0,
            target,
            peer(0),
            seeds(),
            Enough::Providers(2),
            config(6, 2),
        );
        drain(&mut l, t0);
        let p = |n| Response {
            providers: vec![found(peer(n))],
            ..Response::default()
        };
        l.handle_success(t0, &all[0], p(100));
        drain(&mut l, t0);
        l.handle_success(t0, &all[1], p(100));
        assert!(!matches!(l.poll(t0), Poll::Done), "one distinct provider");
        l.handle_success(t0, &all[2], p(101));
        assert_eq!(l.poll(t0), Poll::Done);
        assert_eq!(l.finish().providers.len(), 2);
        assert_eq!(
            Enough::of(MessageType::FindNode, Some(3)),
            Enough::Never,
            "enough means nothing to FIND_NODE"
        );
    }

    #[test]
    fn candidates_stay_bounded_dropping_the_farthest_unasked() {
        let t0 = Instant::now();
        let target = Key::new(b"t");
        let all = by_distance(&target, (1..=100).map(peer));
        let mut cfg = config(2, 1);
        cfg.max_candidates = 10;
        let mut l = Lookup::new(t0, target, peer(0), [found(all[99])], Enough::Never, cfg);
        drain(&mut l, t0);
        let closer = all[..99].iter().copied().map(found).collect();
        l.handle_success(
            t0,
            &all[99],
            Response {
                closer,
                ..Response::default()
            },
        );
        // 10 kept: the answered one (never dropped) and the 9 nearest.
        let (asked, _) = drain(&mut l, t0);
        assert_eq!(asked, vec![all[0]]);
        l.handle_success(t0, &all[0], Response::default());
        let (asked, _) = drain(&mut l, t0);
        assert_eq!(asked, vec![all[1]]);
        l.handle_success(t0, &all[1], Response::default());
        assert_eq!(l.poll(t0), Poll::Done);
        assert_eq!(l.out.queried, 3);
        assert_eq!(l.candidates.len(), 10);
        assert!(l.candidates.values().all(|c| c.found.peer != all[9]));
    }

    #[test]
    fn responses_are_read_within_bounds() {
        let mut reply = proto::Message::new(MessageType::FindNode, b"k".to_vec());
        let good = |n: u32| proto::Peer {
            id: peer(n).to_bytes(),
            addrs: (0..20)
                .map(|i| {
                    format!("/ip4/10.0.0.{i}/tcp/1")
                        .parse::<Multiaddr>()
                        .unwrap()
                        .to_vec()
                })
                .collect(),
            connection: 0,
        };
        reply.closer_peers.push(proto::Peer {
            id: b"not a peer id".to_vec(),
            ..Default::default()
        });
        reply.closer_peers.extend((0..70).map(good));
        reply.provider_peers.push(good(1));
        let r = Response::from_message(reply, b"k", |_| true);
        assert_eq!(r.closer.len(), 63, "64 entries read, one of them bad");
        assert!(r.closer.iter().all(|f| f.addrs.len() == 16));
        assert_eq!(r.providers.len(), 1);
    }
}
