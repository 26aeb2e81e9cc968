//! DCUtR's exchange without I/O: who sends what when, when to dial, when to give up.
//! Time is an input; the driver (which owns the stream, the clock and the dials) feeds
//! events in and carries [`Action`]s out.
//!
//! Roles, as the spec names them: the peer that *received* the relayed connection (B)
//! is the [`Initiator`]: it sends `CONNECT` with its addresses, measures the round trip
//! until the answer, sends `SYNC` and dials half a round trip later; the peer that dialed
//! through the relay (A) is the [`Responder`]: it answers `CONNECT` with its own
//! addresses and dials as soon as `SYNC` arrives, so both dials leave at the same moment.
//! A failed attempt is retried from `CONNECT` (a fresh RTT measurement), three attempts
//! in all.

use std::time::{Duration, Instant};

use multiaddr::{Multiaddr, Protocol};

/// Attempts before the upgrade counts as failed (the spec: retry twice).
pub const MAX_ATTEMPTS: u32 = 3;
/// Addresses sent or dialed at most (a message stays far below the 4 KiB limit).
pub const MAX_ADDRS: usize = 16;

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `CONNECT` with these addresses.
    SendConnect(Vec<Multiaddr>),
    /// Send `SYNC`.
    SendSync,
    /// Dial these addresses now, all of them at once; report the first success with
    /// `on_connected` or the failure of all with `on_dial_failed`.
    Dial(Vec<Multiaddr>),
    /// The exchange is over.
    Done(Outcome),
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A direct connection exists.
    Direct,
    /// We have no address worth sending (nothing observed us from outside).
    NoAddresses,
    /// Every attempt failed.
    Failed,
}

/// The candidate addresses of one side: what identify says others observed us at, and
/// our listen addresses, without relayed, unspecified or (unless `allow_loopback`, for a
/// lab) loopback ones, without `/p2p/`, TCP and QUIC only, deduplicated, observed first,
/// at most [`MAX_ADDRS`].
pub fn candidates(
    observed: &[Multiaddr],
    listen: &[Multiaddr],
    allow_loopback: bool,
) -> Vec<Multiaddr> {
    let mut out: Vec<Multiaddr> = Vec::new();
    for addr in observed.iter().chain(listen) {
        let addr: Multiaddr = addr
            .iter()
            .filter(|p| !matches!(p, Protocol::P2p(_)))
            .collect();
        if usable(&addr, allow_loopback) && !out.contains(&addr) {
            out.push(addr);
        }
        if out.len() == MAX_ADDRS {
            break;
        }
    }
    out
}

fn usable(addr: &Multiaddr, allow_loopback: bool) -> bool {
    let parts: Vec<Protocol<'_>> = addr.iter().collect();
    let ip_ok = match parts.first() {
        Some(Protocol::Ip4(ip)) => (allow_loopback || !ip.is_loopback()) && !ip.is_unspecified(),
        Some(Protocol::Ip6(ip)) => (allow_loopback || !ip.is_loopback()) && !ip.is_unspecified(),
        _ => false,
    };
    let transport_ok = matches!(
        parts.get(1..),
        Some([Protocol::Tcp(_)]) | Some([Protocol::Udp(_), Protocol::QuicV1])
    );
    ip_ok && transport_ok
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Ready to start an attempt.
    Ready,
    /// `CONNECT` sent at this moment; waiting for the answer.
    AwaitingConnect {
        sent: Instant,
    },
    /// `SYNC` sent; dial at `at`.
    Waiting {
        at: Instant,
        theirs: Vec<Multiaddr>,
    },
    /// Dials out; waiting for their result.
    Dialing,
    Done(Outcome),
}

/// The side that received the relayed connection (B): drives the exchange.
#[derive(Debug)]
pub struct Initiator {
    ours: Vec<Multiaddr>,
    allow_loopback: bool,
    attempts: u32,
    state: State,
}

impl Initiator {
    /// `ours`: our [`candidates`]; `allow_loopback` as there, for the remote's.
    pub fn new(ours: Vec<Multiaddr>, allow_loopback: bool) -> Initiator {
        Initiator {
            ours,
            allow_loopback,
            attempts: 0,
            state: State::Ready,
        }
    }

    /// The next action at `now`, if any; otherwise wait for an input or until
    /// [`Initiator::deadline`].
    pub fn poll(&mut self, now: Instant) -> Option<Action> {
        match &self.state {
            State::Ready if self.ours.is_empty() => {
                self.state = State::Done(Outcome::NoAddresses);
                Some(Action::Done(Outcome::NoAddresses))
            }
            State::Ready => {
                self.attempts += 1;
                self.state = State::AwaitingConnect { sent: now };
                Some(Action::SendConnect(self.ours.clone()))
            }
            State::Waiting { at, theirs } if now >= *at => {
                let theirs = theirs.clone();
                self.state = State::Dialing;
                Some(Action::Dial(theirs))
            }
            _ => None,
        }
    }

    /// When [`Initiator::poll`] has something to do without an input.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Waiting { at, .. } => Some(*at),
            State::Ready => Some(Instant::now()),
            _ => None,
        }
    }

    /// The remote's `CONNECT` answer arrived: send `SYNC`, dial half a round trip later.
    pub fn on_connect(&mut self, now: Instant, theirs: Vec<Multiaddr>) -> Option<Action> {
        let State::AwaitingConnect { sent } = self.state else {
            return None; // out of turn: ignored
        };
        let theirs = candidates(&theirs, &[], self.allow_loopback);
        if theirs.is_empty() {
            return self.on_dial_failed();
        }
        let rtt = now.saturating_duration_since(sent);
        self.state = State::Waiting {
            at: now + rtt / 2,
            theirs,
        };
        Some(Action::SendSync)
    }

    /// Every dial of this attempt failed (or the remote gave nothing to dial): another
    /// attempt, or the end.
    pub fn on_dial_failed(&mut self) -> Option<Action> {
        if matches!(self.state, State::Done(_)) {
            return None;
        }
        if self.attempts >= MAX_ATTEMPTS {
            self.state = State::Done(Outcome::Failed);
            return Some(Action::Done(Outcome::Failed));
        }
        self.state = State::Ready;
        None
    }

    /// A direct connection to the remote exists.
    pub fn on_connected(&mut self) -> Action {
        self.state = State::Done(Outcome::Direct);
        Action::Done(Outcome::Direct)
    }

    /// Attempts started so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

/// The side that dialed through the relay (A): answers and dials on `SYNC`.
#[derive(Debug)]
pub struct Responder {
    ours: Vec<Multiaddr>,
    allow_loopback: bool,
    theirs: Option<Vec<Multiaddr>>,
}

impl Responder {
    /// `ours`: our [`candidates`]; `allow_loopback` as there, for the remote's.
    pub fn new(ours: Vec<Multiaddr>, allow_loopback: bool) -> Responder {
        Responder {
            ours,
            allow_loopback,
            theirs: None,
        }
    }

    /// The initiator's `CONNECT`: answer with ours (also on a retry, which starts over).
    pub fn on_connect(&mut self, theirs: Vec<Multiaddr>) -> Action {
        self.theirs = Some(candidates(&theirs, &[], self.allow_loopback));
        Action::SendConnect(self.ours.clone())
    }

    /// `SYNC`: dial at once. `None` when no `CONNECT` came first, or it gave no address.
    pub fn on_sync(&mut self) -> Option<Action> {
        match self.theirs.take() {
            Some(theirs) if !theirs.is_empty() => Some(Action::Dial(theirs)),
            _ => None,
        }
    }
}

/// How long a responder waits for the next message before it gives the exchange up.
pub const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<Multiaddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn candidates_keep_direct_tcp_and_quic_addresses_only() {
        let observed = addrs(&[
            "/ip4/198.51.100.7/tcp/4001",
            "/ip4/198.51.100.7/tcp/4001/p2p/12D3KooWGC6TvWhfapngNDsCf7RGSGkrjRZ7dKYQPM6Lq4NN2pw5",
            "/ip4/127.0.0.1/tcp/4001",
            "/ip4/203.0.113.9/tcp/4001/p2p/12D3KooWGC6TvWhfapngNDsCf7RGSGkrjRZ7dKYQPM6Lq4NN2pw5/p2p-circuit",
            "/ip4/10.0.0.2/udp/4001/quic-v1",
            "/ip4/10.0.0.2/tcp/4001/ws",
        ]);
        let listen = addrs(&["/ip4/0.0.0.0/tcp/4001", "/ip4/10.0.0.2/tcp/4001"]);
        assert_eq!(
            candidates(&observed, &listen, false),
            addrs(&[
                "/ip4/198.51.100.7/tcp/4001",
                "/ip4/10.0.0.2/udp/4001/quic-v1",
                "/ip4/10.0.0.2/tcp/4001",
            ])
        );
        let many: Vec<Multiaddr> = (0..40)
            .map(|i| format!("/ip4/198.51.100.{i}/tcp/4001").parse().unwrap())
            .collect();
        assert_eq!(candidates(&many, &[], false).len(), MAX_ADDRS);
    }

    /// Simulated time: the initiator dials exactly half a round trip after SYNC, which is
    /// when the responder's dial (on receiving SYNC, half a round trip later) leaves too.
    #[test]
    fn both_sides_dial_at_the_same_moment() {
        let t0 = Instant::now();
        let rtt = Duration::from_millis(80);
        let b_addrs = addrs(&["/ip4/198.51.100.7/tcp/4001"]);
        let a_addrs = addrs(&["/ip4/203.0.113.5/tcp/5001"]);
        let mut b = Initiator::new(b_addrs.clone(), false);
        let mut a = Responder::new(a_addrs.clone(), false);

        let Some(Action::SendConnect(sent)) = b.poll(t0) else {
            panic!("B starts with CONNECT")
        };
        assert_eq!(sent, b_addrs);
        // A gets it half a round trip later and answers at once.
        assert_eq!(a.on_connect(sent), Action::SendConnect(a_addrs.clone()));
        // B gets the answer one round trip after sending: SYNC, dial at t0 + 1.5 RTT.
        let t1 = t0 + rtt;
        assert_eq!(b.on_connect(t1, a_addrs.clone()), Some(Action::SendSync));
        assert_eq!(b.deadline(), Some(t1 + rtt / 2));
        assert_eq!(b.poll(t1 + rtt / 4), None, "not yet");
        // SYNC reaches A half a round trip later: A dials at t1 + RTT/2 as well.
        assert_eq!(a.on_sync(), Some(Action::Dial(b_addrs)));
        assert_eq!(b.poll(t1 + rtt / 2), Some(Action::Dial(a_addrs)));
        assert_eq!(b.on_connected(), Action::Done(Outcome::Direct));
    }

    #[test]
    fn three_attempts_then_failure() {
        let t0 = Instant::now();
        let theirs = addrs(&["/ip4/203.0.113.5/tcp/5001"]);
        let mut b = Initiator::new(addrs(&["/ip4/198.51.100.7/tcp/4001"]), false);
        for attempt in 1..=MAX_ATTEMPTS {
            assert!(matches!(b.poll(t0), Some(Action::SendConnect(_))));
            assert_eq!(b.attempts(), attempt);
            assert_eq!(b.on_connect(t0, theirs.clone()), Some(Action::SendSync));
            assert!(matches!(b.poll(t0), Some(Action::Dial(_))));
            let next = b.on_dial_failed();
            if attempt < MAX_ATTEMPTS {
                assert_eq!(next, None, "attempt {attempt} is retried");
            } else {
                assert_eq!(next, Some(Action::Done(Outcome::Failed)));
            }
        }
        assert_eq!(b.poll(t0), None, "over");
    }

    #[test]
    fn nothing_to_offer_or_nothing_offered() {
        let t0 = Instant::now();
        let mut lonely = Initiator::new(Vec::new(), false);
        assert_eq!(lonely.poll(t0), Some(Action::Done(Outcome::NoAddresses)));
        // The remote answers with no usable address: that attempt failed.
        let mut b = Initiator::new(addrs(&["/ip4/198.51.100.7/tcp/4001"]), false);
        b.poll(t0);
        assert_eq!(b.on_connect(t0, addrs(&["/ip4/127.0.0.1/tcp/1"])), None);
        assert!(
            matches!(b.poll(t0), Some(Action::SendConnect(_))),
            "retried"
        );
        // A SYNC without a CONNECT before it is ignored by the responder.
        let mut a = Responder::new(Vec::new(), false);
        assert_eq!(a.on_sync(), None);
        // A CONNECT out of turn is ignored by the initiator.
        let mut idle = Initiator::new(addrs(&["/ip4/198.51.100.7/tcp/4001"]), false);
        assert_eq!(
            idle.on_connect(t0, addrs(&["/ip4/203.0.113.5/tcp/5001"])),
            None
        );
    }
}
