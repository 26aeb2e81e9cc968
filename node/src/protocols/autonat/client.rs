//! The client side of AutoNAT without I/O: which of our addresses to test next, with
//! which server, and what the answers add up to. Time is an input; the driver owns the
//! streams, the dial-back handler and the clock.
//!
//! Each candidate address (a public address we listen on, or one enough peers observed us at)
//! is tested on its own, one server at a time, each server on a distinct IP within a
//! round (one operator with many peer ids on one host counts once). An address is
//! **public** once `confirmations` distinct servers reached it and more reached it than
//! failed; **private** once as many failed and more failed than reached it; otherwise
//! its verdict stays what it was (no flapping on one odd answer). A decided address is
//! tested again after `refresh`; an undecided one as soon as a server on a new IP is
//! there, or after `retry`. The node is public when any address is.
//!
//! Not here: the wire (the driver, [`super::proto`]), and what the node does with a
//! verdict (identify's advertised addresses, the DHT's mode).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use multiaddr::{Multiaddr, Protocol};

use crate::identity::PeerId;

/// Results remembered per address: the latest per server IP, at most this many.
pub const MAX_RESULTS: usize = 16;
/// Candidate addresses tracked at most (the rest wait for a slot).
pub const MAX_ADDRS: usize = 16;
/// Servers remembered as cooling down after a refusal, at most.
pub const MAX_COOLING: usize = 256;

/// Settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Test our addresses at all.
    pub enabled: bool,
    /// Distinct servers (by IP) that must agree before an address is public or private.
    pub confirmations: usize,
    /// How long a verdict holds before the address is tested again.
    pub refresh: Duration,
    /// How long an undecided address waits when no fresh server is at hand.
    pub retry: Duration,
    /// How long a server that refused us is left alone.
    pub cooldown: Duration,
    /// How long one request may take, dial-back included.
    pub request_timeout: Duration,
    /// Test loopback and private addresses too (a lab on one machine; never in
    /// production: no AutoNAT server dials them).
    pub allow_loopback: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            confirmations: 3,
            refresh: Duration::from_secs(15 * 60),
            retry: Duration::from_secs(90),
            cooldown: Duration::from_secs(5 * 60),
            request_timeout: Duration::from_secs(60),
            allow_loopback: false,
        }
    }
}

/// What is known of an address (or of the node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Unknown,
    Public,
    Private,
}

impl Verdict {
    /// go-libp2p's `network.Reachability` numbering (its `reachability_status` gauge).
    pub fn code(self) -> i64 {
        match self {
            Verdict::Unknown => 0,
            Verdict::Public => 1,
            Verdict::Private => 2,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Unknown => "unknown",
            Verdict::Public => "public",
            Verdict::Private => "private",
        }
    }
}

/// Which AutoNAT a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    V1,
    V2,
}

/// A peer we could ask: connected directly, and serving AutoNAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub peer: PeerId,
    /// The IP we reach it at (distinct servers are distinct IPs).
    pub ip: IpAddr,
    /// Its best version: v2 when it serves both.
    pub version: Version,
}

/// One request to make: ask `server` to dial `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub server: PeerId,
    pub ip: IpAddr,
    pub version: Version,
    pub addr: Multiaddr,
}

/// What one server said about one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// It dialed the address and (v2) the nonce came back over that dial.
    Reachable,
    /// It tried and could not connect.
    Unreachable,
    /// No information: it refused, rejected us, failed inside, or answered nonsense.
    Refused,
    /// Nothing within the time, or the stream broke (the server rests for the cooldown,
    /// as after a refusal).
    Failed,
}

/// A verdict that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub addr: Multiaddr,
    pub from: Verdict,
    pub to: Verdict,
}

#[derive(Debug)]
struct AddrState {
    /// The latest result per server IP: (reached?, when).
    results: HashMap<IpAddr, (bool, Instant)>,
    /// Server IPs asked in this round (a round ends when the address is due again).
    asked: HashSet<IpAddr>,
    verdict: Verdict,
    /// When the address may be tested next.
    due: Instant,
    /// A request about it is running.
    in_flight: bool,
}

impl AddrState {
    fn new(now: Instant) -> Self {
        AddrState {
            results: HashMap::new(),
            asked: HashSet::new(),
            verdict: Verdict::Unknown,
            due: now,
            in_flight: false,
        }
    }

    fn counts(&self) -> (usize, usize) {
        let reached = self.results.values().filter(|(ok, _)| *ok).count();
        (reached, self.results.len() - reached)
    }
}

/// The client's state.
#[derive(Debug)]
pub struct Client {
    config: Config,
    addrs: HashMap<Multiaddr, AddrState>,
    /// Servers with a request of ours running.
    busy: HashSet<PeerId>,
    /// Servers that refused us, until when.
    cooling: HashMap<PeerId, Instant>,
}

impl Client {
    pub fn new(config: Config) -> Self {
        Client {
            config,
            addrs: HashMap::new(),
            busy: HashSet::new(),
            cooling: HashMap::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Is `addr` worth testing: an IP address (public unless `allow_loopback`) on TCP,
    /// QUIC v1 or WebSocket, not relayed, with a port.
    pub fn testable(&self, addr: &Multiaddr) -> bool {
        let parts: Vec<Protocol<'_>> = addr.iter().collect();
        if parts
            .iter()
            .any(|p| matches!(p, Protocol::P2pCircuit | Protocol::Memory(_)))
        {
            return false;
        }
        let ip_ok = match parts.first() {
            Some(Protocol::Ip4(ip)) if ip.is_unspecified() => false,
            Some(Protocol::Ip6(ip)) if ip.is_unspecified() => false,
            Some(Protocol::Ip4(_) | Protocol::Ip6(_)) => {
                self.config.allow_loopback || crate::addresses::is_public(addr)
            }
            _ => false,
        };
        let transport_ok = match parts.get(1) {
            Some(Protocol::Tcp(port)) => *port != 0,
            Some(Protocol::Udp(port)) => {
                *port != 0 && matches!(parts.get(2), Some(Protocol::QuicV1))
            }
            _ => false,
        };
        ip_ok && transport_ok
    }

    /// The addresses to test now (our listen and observed addresses; a `/p2p/` suffix is
    /// dropped, the untestable are skipped). Addresses no longer among them are forgotten;
    /// at most [`MAX_ADDRS`] are tracked, the first ones first.
    pub fn set_candidates(&mut self, candidates: &[Multiaddr], now: Instant) -> Vec<Change> {
        let mut wanted: Vec<Multiaddr> = Vec::new();
        for addr in candidates {
            let addr: Multiaddr = addr
                .iter()
                .filter(|p| !matches!(p, Protocol::P2p(_)))
                .collect();
            if self.testable(&addr) && !wanted.contains(&addr) {
                wanted.push(addr);
            }
            if wanted.len() == MAX_ADDRS {
                break;
            }
        }
        let mut changes = Vec::new();
        self.addrs.retain(|addr, state| {
            let keep = wanted.contains(addr);
            if !keep && state.verdict != Verdict::Unknown {
                changes.push(Change {
                    addr: addr.clone(),
                    from: state.verdict,
                    to: Verdict::Unknown,
                });
            }
            keep
        });
        for addr in wanted {
            self.addrs
                .entry(addr)
                .or_insert_with(|| AddrState::new(now));
        }
        changes
    }

    /// The next request to make, if an address is due and a fitting server is free: the
    /// server must not be busy with us, cooling down, or on an IP already asked about this
    /// address in this round. v2 servers first.
    pub fn poll_probe(&mut self, servers: &[Server], now: Instant) -> Option<Probe> {
        self.cooling.retain(|_, until| *until > now);
        let mut due: Vec<(&Multiaddr, &mut AddrState)> = self
            .addrs
            .iter_mut()
            .filter(|(_, s)| !s.in_flight && s.due <= now)
            .collect();
        // Undecided addresses first, then the longest due.
        due.sort_by_key(|(a, s)| (s.verdict != Verdict::Unknown, s.due, a.to_vec()));
        for (addr, state) in due {
            if state.verdict != Verdict::Unknown && state.asked.len() >= self.config.confirmations {
                // A decided address whose refresh is due: a new round.
                state.asked.clear();
            }
            let pick = servers
                .iter()
                .filter(|s| {
                    !self.busy.contains(&s.peer)
                        && !self.cooling.contains_key(&s.peer)
                        && !state.asked.contains(&s.ip)
                })
                .min_by_key(|s| (s.version != Version::V2, s.ip, s.peer.to_bytes()));
            let Some(server) = pick else {
                continue;
            };
            state.in_flight = true;
            state.asked.insert(server.ip);
            self.busy.insert(server.peer);
            return Some(Probe {
                server: server.peer,
                ip: server.ip,
                version: server.version,
                addr: addr.clone(),
            });
        }
        None
    }

    /// The answer to `probe`. Returns the verdict's change, if any.
    pub fn handle_answer(&mut self, probe: &Probe, answer: Answer, now: Instant) -> Option<Change> {
        self.busy.remove(&probe.server);
        // A server that refused us, or whose request failed (a reset stream, a timeout),
        // rests for the cooldown: asking it again at once would spin on a server that
        // always fails.
        if matches!(answer, Answer::Refused | Answer::Failed) {
            if self.cooling.len() >= MAX_COOLING {
                self.cooling.retain(|_, until| *until > now);
            }
            if self.cooling.len() < MAX_COOLING {
                self.cooling
                    .insert(probe.server, now + self.config.cooldown);
            }
        }
        let k = self.config.confirmations.max(1);
        let state = self.addrs.get_mut(&probe.addr)?;
        state.in_flight = false;
        let reached = match answer {
            Answer::Reachable => true,
            Answer::Unreachable => false,
            Answer::Refused | Answer::Failed => {
                // No information: the IP may be asked again later in the round.
                state.asked.remove(&probe.ip);
                if state.verdict == Verdict::Unknown {
                    state.due = now;
                }
                return None;
            }
        };
        if state.results.len() >= MAX_RESULTS && !state.results.contains_key(&probe.ip) {
            if let Some(oldest) = state
                .results
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(ip, _)| *ip)
            {
                state.results.remove(&oldest);
            }
        }
        state.results.insert(probe.ip, (reached, now));
        let (yes, no) = state.counts();
        let before = state.verdict;
        if yes >= k && yes > no {
            state.verdict = Verdict::Public;
        } else if no >= k && no > yes {
            state.verdict = Verdict::Private;
        }
        if state.verdict != Verdict::Unknown && state.asked.len() >= k {
            state.due = now + self.config.refresh;
        } else {
            state.due = now;
        }
        (state.verdict != before).then(|| Change {
            addr: probe.addr.clone(),
            from: before,
            to: state.verdict,
        })
    }

    /// Nothing fitting was at hand for the undecided addresses: wait `retry` (or for a new
    /// server) before trying them again.
    pub fn back_off(&mut self, now: Instant) {
        for state in self.addrs.values_mut() {
            if !state.in_flight && state.due <= now {
                state.due = now + self.config.retry;
            }
        }
    }

    /// A new server appeared: undecided addresses are due at once.
    pub fn handle_new_server(&mut self, now: Instant) {
        for state in self.addrs.values_mut() {
            if state.verdict == Verdict::Unknown && !state.in_flight {
                state.due = state.due.min(now);
            }
        }
    }

    /// When the next address is due (for the driver's timer).
    pub fn next_due(&self) -> Option<Instant> {
        self.addrs
            .values()
            .filter(|s| !s.in_flight)
            .map(|s| s.due)
            .min()
    }

    /// Each tracked address and its verdict, sorted.
    pub fn verdicts(&self) -> Vec<(Multiaddr, Verdict)> {
        let mut out: Vec<(Multiaddr, Verdict)> = self
            .addrs
            .iter()
            .map(|(a, s)| (a.clone(), s.verdict))
            .collect();
        out.sort_by_key(|(a, _)| a.to_vec());
        out
    }

    /// The verdict on `addr`.
    pub fn verdict(&self, addr: &Multiaddr) -> Verdict {
        self.addrs.get(addr).map_or(Verdict::Unknown, |s| s.verdict)
    }

    /// The node's: public when any address is, private when some are and none is public.
    pub fn overall(&self) -> Verdict {
        let verdicts: Vec<Verdict> = self.addrs.values().map(|s| s.verdict).collect();
        if verdicts.contains(&Verdict::Public) {
            Verdict::Public
        } else if verdicts.contains(&Verdict::Private) {
            Verdict::Private
        } else {
            Verdict::Unknown
        }
    }

    /// How many distinct servers back the overall verdict (go-libp2p's
    /// `reachability_status_confidence`): the best-supported address's agreeing results.
    pub fn confidence(&self) -> usize {
        let overall = self.overall();
        self.addrs
            .values()
            .filter(|s| s.verdict == overall && overall != Verdict::Unknown)
            .map(|s| {
                let (yes, no) = s.counts();
                if overall == Verdict::Public {
                    yes
                } else {
                    no
                }
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;

    fn m(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    fn server(i: u8, version: Version) -> Server {
        Server {
            peer: Keypair::generate_ed25519().public().to_peer_id(),
            ip: IpAddr::from([11, 0, 0, i]),
            version,
        }
    }

    #[test]
    fn three_distinct_servers_make_an_address_public() {
        let t0 = Instant::now();
        let mut c = Client::new(Config::default());
        let addr = m("/ip4/11.1.1.1/tcp/4001");
        c.set_candidates(
            &[
                addr.clone(),
                m("/ip4/192.168.1.2/tcp/4001"),
                m("/ip4/11.1.1.1/tcp/4001/p2p-circuit"),
            ],
            t0,
        );
        assert_eq!(c.verdicts(), vec![(addr.clone(), Verdict::Unknown)]);
        let servers: Vec<Server> = (1..=4).map(|i| server(i, Version::V2)).collect();
        let mut changes = Vec::new();
        for _ in 0..3 {
            let p = c.poll_probe(&servers, t0).expect("a probe");
            assert_eq!(p.addr, addr);
            // One request per address at a time.
            assert_eq!(c.poll_probe(&servers, t0), None);
            changes.extend(c.handle_answer(&p, Answer::Reachable, t0));
        }
        assert_eq!(
            changes,
            vec![Change {
                addr: addr.clone(),
                from: Verdict::Unknown,
                to: Verdict::Public
            }]
        );
        assert_eq!(c.overall(), Verdict::Public);
        assert_eq!(c.confidence(), 3);
        // Decided: nothing until the refresh, then a new round.
        assert_eq!(c.poll_probe(&servers, t0 + Duration::from_secs(60)), None);
        assert_eq!(c.next_due(), Some(t0 + Config::default().refresh));
        let later = t0 + Config::default().refresh;
        assert!(c.poll_probe(&servers, later).is_some());
    }

    #[test]
    fn servers_on_one_ip_count_once_and_failures_make_it_private() {
        let t0 = Instant::now();
        let mut c = Client::new(Config::default());
        let addr = m("/ip4/11.1.1.1/udp/4001/quic-v1");
        c.set_candidates(std::slice::from_ref(&addr), t0);
        let mut same_ip: Vec<Server> = (0..3).map(|_| server(1, Version::V2)).collect();
        let p = c.poll_probe(&same_ip, t0).unwrap();
        c.handle_answer(&p, Answer::Unreachable, t0);
        // The other two share the IP already asked: no probe.
        assert_eq!(c.poll_probe(&same_ip, t0), None);
        same_ip.push(server(2, Version::V1));
        same_ip.push(server(3, Version::V2));
        let p = c.poll_probe(&same_ip, t0).unwrap();
        assert_eq!(p.version, Version::V2, "v2 first");
        c.handle_answer(&p, Answer::Unreachable, t0);
        let p = c.poll_probe(&same_ip, t0).unwrap();
        assert_eq!(p.version, Version::V1);
        let change = c.handle_answer(&p, Answer::Unreachable, t0).unwrap();
        assert_eq!(change.to, Verdict::Private);
        assert_eq!(c.overall(), Verdict::Private);
    }

    #[test]
    fn one_odd_answer_does_not_flip_a_verdict_and_refusals_cool_a_server() {
        let t0 = Instant::now();
        let cfg = Config::default();
        let mut c = Client::new(cfg.clone());
        let addr = m("/ip4/11.1.1.1/tcp/1");
        c.set_candidates(std::slice::from_ref(&addr), t0);
        let servers: Vec<Server> = (1..=5).map(|i| server(i, Version::V2)).collect();
        for _ in 0..3 {
            let p = c.poll_probe(&servers, t0).unwrap();
            c.handle_answer(&p, Answer::Reachable, t0);
        }
        let t1 = t0 + cfg.refresh;
        let p = c.poll_probe(&servers, t1).unwrap();
        assert_eq!(c.handle_answer(&p, Answer::Unreachable, t1), None);
        assert_eq!(c.verdict(&addr), Verdict::Public);
        // A refusal: no information, and that server rests for the cooldown.
        let p = c.poll_probe(&servers, t1).unwrap();
        let refused = p.server;
        assert_eq!(c.handle_answer(&p, Answer::Refused, t1), None);
        for _ in 0..4 {
            if let Some(p) = c.poll_probe(&servers, t1) {
                assert_ne!(p.server, refused);
                c.handle_answer(&p, Answer::Failed, t1);
            }
        }
        // An address no longer a candidate is forgotten, its verdict reported gone.
        let gone = c.set_candidates(&[], t1);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].to, Verdict::Unknown);
        assert_eq!(c.overall(), Verdict::Unknown);
    }

    #[test]
    fn a_server_whose_requests_fail_is_not_asked_again_at_once() {
        let t0 = Instant::now();
        let cfg = Config::default();
        let mut c = Client::new(cfg.clone());
        c.set_candidates(&[m("/ip4/11.1.1.1/tcp/1")], t0);
        let servers = vec![server(1, Version::V2)];
        let p = c.poll_probe(&servers, t0).unwrap();
        c.handle_answer(&p, Answer::Failed, t0);
        assert_eq!(c.poll_probe(&servers, t0), None, "cooling down");
        let later = t0 + cfg.cooldown;
        assert!(c.poll_probe(&servers, later).is_some());
    }

    #[test]
    fn nothing_to_ask_backs_off_until_retry_or_a_new_server() {
        let t0 = Instant::now();
        let cfg = Config::default();
        let mut c = Client::new(cfg.clone());
        c.set_candidates(&[m("/ip4/11.1.1.1/tcp/1")], t0);
        assert_eq!(c.poll_probe(&[], t0), None);
        c.back_off(t0);
        assert_eq!(c.next_due(), Some(t0 + cfg.retry));
        c.handle_new_server(t0 + Duration::from_secs(1));
        assert_eq!(c.next_due(), Some(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn loopback_is_testable_only_in_a_lab() {
        let c = Client::new(Config::default());
        assert!(!c.testable(&m("/ip4/127.0.0.1/tcp/1")));
        assert!(c.testable(&m("/ip4/11.0.0.1/tcp/1")));
        assert!(!c.testable(&m("/ip4/11.0.0.1/tcp/0")));
        assert!(!c.testable(&m("/ip4/11.0.0.1/udp/1")));
        let lab = Client::new(Config {
            allow_loopback: true,
            ..Config::default()
        });
        assert!(lab.testable(&m("/ip4/127.0.0.1/tcp/1")));
        assert!(!lab.testable(&m("/ip4/0.0.0.0/tcp/1")));
    }
}
