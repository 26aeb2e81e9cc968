//! The AutoNAT server's decisions, without I/O: how many requests it takes (sliding
//! one-minute windows in total, per peer, per IP, per subnet, and for requests that need
//! dial data), how many run at once, and which of a client's addresses it is willing to
//! dial. Time is an input (`now`); nothing here sleeps, spawns or reads a clock.
//!
//! What it is not: the protocol driver (`server.rs` reads and writes the messages and
//! makes the dials) or the wire codec (`pylon_node::protocols::autonat::proto`).
//!
//! Every table is bounded: the request log holds at most `requests_per_minute` entries
//! (only admitted requests are logged), the per-key counts are derived from it and go
//! with their last entry, and no table tracks more than [`MAX_TRACKED`] keys.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use multiaddr::{Multiaddr, Protocol};
use pylon_node::addresses::is_public;
use pylon_node::ipprefix::IpPrefix;
use pylon_node::PeerId;

/// The window every rate is counted over.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The most keys (peers, IPs, subnets, running peers) one table tracks; a request that
/// would add one more is refused ([`Refusal::TrackingFull`]). With the checked
/// `requests_per_minute` the log bounds the tables long before this.
pub const MAX_TRACKED: usize = 16_384;

/// The most addresses of a v2 request examined (go-libp2p: 50); later ones are ignored.
pub const MAX_V2_ADDRS: usize = 50;

/// The server's budgets (the role's config, checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Requests admitted per minute, both versions together.
    pub requests_per_minute: usize,
    /// The same per requesting peer.
    pub per_peer_per_minute: usize,
    /// The same per IP address the request came from.
    pub per_ip_per_minute: usize,
    /// The same per subnet (IPv4 /24, IPv6 /48).
    pub per_subnet_per_minute: usize,
    /// v2 requests that needed dial data, per minute.
    pub dial_data_per_minute: usize,
    /// Admitted requests running at once (from admission to the answer).
    pub max_concurrent: usize,
    /// The same per peer.
    pub per_peer_concurrent: usize,
}

/// Why a request was refused: the metric label and the v1 status text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `requests_per_minute` used up.
    RateLimited,
    PeerRateLimited,
    IpRateLimited,
    SubnetRateLimited,
    /// `dial_data_per_minute` used up.
    DialDataRateLimited,
    /// `max_concurrent` requests running.
    Busy,
    /// The peer has `per_peer_concurrent` requests running.
    PeerBusy,
    /// A table holds [`MAX_TRACKED`] keys.
    TrackingFull,
}

impl Refusal {
    /// The `reason` label (and the v1 `statusText`).
    pub fn label(self) -> &'static str {
        match self {
            Refusal::RateLimited => "rate limited",
            Refusal::PeerRateLimited => "peer rate limited",
            Refusal::IpRateLimited => "ip rate limited",
            Refusal::SubnetRateLimited => "subnet rate limited",
            Refusal::DialDataRateLimited => "dial data rate limited",
            Refusal::Busy => "busy",
            Refusal::PeerBusy => "peer busy",
            Refusal::TrackingFull => "tracking full",
        }
    }
}

/// An admitted request's share of the concurrency budget: only [`Budget::admit`] makes
/// one, and [`Budget::release`] takes it back.
#[derive(Debug, PartialEq, Eq)]
pub struct Permit {
    peer: PeerId,
}

impl Permit {
    pub fn peer(&self) -> PeerId {
        self.peer
    }
}

/// One admitted request in the window.
#[derive(Debug)]
struct Logged {
    at: Instant,
    peer: PeerId,
    ip: Option<IpAddr>,
}

/// The budgets: sliding one-minute windows and concurrency counters.
#[derive(Debug)]
pub struct Budget {
    limits: Limits,
    /// Admitted requests of the last [`WINDOW`], oldest first.
    log: VecDeque<Logged>,
    per_peer: HashMap<PeerId, usize>,
    per_ip: HashMap<IpAddr, usize>,
    per_subnet: HashMap<IpPrefix, usize>,
    /// Dial-data grants of the last [`WINDOW`], oldest first.
    dial_data: VecDeque<Instant>,
    running: usize,
    running_per_peer: HashMap<PeerId, usize>,
}

impl Budget {
    pub fn new(limits: Limits) -> Budget {
        Budget {
            limits,
            log: VecDeque::new(),
            per_peer: HashMap::new(),
            per_ip: HashMap::new(),
            per_subnet: HashMap::new(),
            dial_data: VecDeque::new(),
            running: 0,
            running_per_peer: HashMap::new(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Admits a request from `peer`, connected from `ip`, at `now`: it is logged against
    /// every window and holds a concurrency slot until [`Budget::release`]. Nothing is
    /// counted when it is refused.
    pub fn admit(
        &mut self,
        peer: PeerId,
        ip: Option<IpAddr>,
        now: Instant,
    ) -> Result<Permit, Refusal> {
        self.expire(now);
        let l = &self.limits;
        if self.running >= l.max_concurrent {
            return Err(Refusal::Busy);
        }
        let running = self.running_per_peer.get(&peer).copied().unwrap_or(0);
        if running >= l.per_peer_concurrent {
            return Err(Refusal::PeerBusy);
        }
        if self.log.len() >= l.requests_per_minute {
            return Err(Refusal::RateLimited);
        }
        if count(&self.per_peer, &peer) >= l.per_peer_per_minute {
            return Err(Refusal::PeerRateLimited);
        }
        let ip = ip.map(|ip| ip.to_canonical());
        if let Some(ip) = ip {
            if count(&self.per_ip, &ip) >= l.per_ip_per_minute {
                return Err(Refusal::IpRateLimited);
            }
            if count(&self.per_subnet, &IpPrefix::subnet(ip)) >= l.per_subnet_per_minute {
                return Err(Refusal::SubnetRateLimited);
            }
        }
        let full = |tracked: bool, len: usize| !tracked && len >= MAX_TRACKED;
        if full(self.per_peer.contains_key(&peer), self.per_peer.len())
            || full(running > 0, self.running_per_peer.len())
            || ip.is_some_and(|ip| {
                full(self.per_ip.contains_key(&ip), self.per_ip.len())
                    || full(
                        self.per_subnet.contains_key(&IpPrefix::subnet(ip)),
                        self.per_subnet.len(),
                    )
            })
        {
            return Err(Refusal::TrackingFull);
        }
        *self.per_peer.entry(peer).or_default() += 1;
        if let Some(ip) = ip {
            *self.per_ip.entry(ip).or_default() += 1;
            *self.per_subnet.entry(IpPrefix::subnet(ip)).or_default() += 1;
        }
        self.log.push_back(Logged { at: now, peer, ip });
        self.running += 1;
        *self.running_per_peer.entry(peer).or_default() += 1;
        Ok(Permit { peer })
    }

    /// Takes one grant of the dial-data budget (a v2 request whose address has another IP
    /// than the client's), at `now`.
    pub fn admit_dial_data(&mut self, now: Instant) -> Result<(), Refusal> {
        self.expire(now);
        if self.dial_data.len() >= self.limits.dial_data_per_minute {
            return Err(Refusal::DialDataRateLimited);
        }
        self.dial_data.push_back(now);
        Ok(())
    }

    /// An admitted request finished: its concurrency slot comes back (its place in the
    /// windows stays until they move past it).
    pub fn release(&mut self, permit: Permit) {
        self.running = self.running.saturating_sub(1);
        decrement(&mut self.running_per_peer, &permit.peer);
    }

    /// Drops what the windows moved past at `now`, with the keys it was the last of.
    pub fn expire(&mut self, now: Instant) {
        let old = |at: Instant| now.saturating_duration_since(at) >= WINDOW;
        while let Some(front) = self.log.front() {
            if !old(front.at) {
                break;
            }
            let Some(gone) = self.log.pop_front() else {
                break;
            };
            decrement(&mut self.per_peer, &gone.peer);
            if let Some(ip) = gone.ip {
                decrement(&mut self.per_ip, &ip);
                decrement(&mut self.per_subnet, &IpPrefix::subnet(ip));
            }
        }
        while self.dial_data.front().is_some_and(|at| old(*at)) {
            self.dial_data.pop_front();
        }
    }

    /// Admitted requests running now.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Requests in the window (admitted within the last minute as of the last call).
    pub fn in_window(&self) -> usize {
        self.log.len()
    }

    /// Keys tracked, over every table (for tests of the bounds).
    pub fn tracked(&self) -> usize {
        self.per_peer.len()
            + self.per_ip.len()
            + self.per_subnet.len()
            + self.running_per_peer.len()
    }
}

fn count<K: std::hash::Hash + Eq>(map: &HashMap<K, usize>, key: &K) -> usize {
    map.get(key).copied().unwrap_or(0)
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

// ---- Which addresses ------------------------------------------------------------------

/// What the server can and may dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    /// We listen on IPv4 (so we take it we can dial it).
    pub ipv4: bool,
    /// We listen on IPv6.
    pub ipv6: bool,
    /// Lab setting: also private, loopback and link-local addresses.
    pub allow_loopback: bool,
}

impl Reach {
    /// The families of our listen addresses (relayed ones left out), with `allow_loopback`.
    pub fn of_listen_addrs(listen: &[Multiaddr], allow_loopback: bool) -> Reach {
        let mut reach = Reach {
            ipv4: false,
            ipv6: false,
            allow_loopback,
        };
        for a in listen {
            if a.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
                continue;
            }
            match a.iter().next() {
                Some(Protocol::Ip4(_)) => reach.ipv4 = true,
                Some(Protocol::Ip6(_)) => reach.ipv6 = true,
                _ => {}
            }
        }
        reach
    }

    /// Whether an IP is one we would send a packet to: public, or any unicast address in
    /// the lab setting; and of a family we have.
    pub fn accepts_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        //= specs/autonat/autonat-v2.md#implementation-suggestions
        //# IPv4 only servers SHOULD refuse requests for dialing IPv6 addresses and IPv6 only
        //# servers SHOULD refuse requests for dialing IPv4 addresses.
        let family = match ip {
            IpAddr::V4(_) => self.ipv4,
            IpAddr::V6(_) => self.ipv6,
        };
        if !family {
            return false;
        }
        let unicast = match ip {
            IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast()),
            IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
        };
        //= specs/autonat/autonat-v2.md#autonat-v2-protocol
        //# The Server SHOULD NOT dial any private address.
        unicast && (self.allow_loopback || is_public(&ip_multiaddr(ip)))
    }

    /// The address to dial for `addr` (its `/p2p/` suffix dropped) and its IP, if it is
    /// one we can and may dial for `peer`: an IP address we accept ([`Reach::accepts_ip`]),
    /// then TCP, TCP with `/ws`, or UDP with `/quic-v1`, then at most `/p2p/<peer>`. DNS
    /// names are not dialed: a name could lead to an address we promise not to dial.
    pub fn dialable(&self, addr: &Multiaddr, peer: &PeerId) -> Option<(Multiaddr, IpAddr)> {
        let mut parts = addr.iter();
        let ip = match parts.next()? {
            Protocol::Ip4(ip) => IpAddr::V4(ip),
            Protocol::Ip6(ip) => IpAddr::V6(ip),
            _ => return None,
        };
        if !self.accepts_ip(ip) {
            return None;
        }
        let mut out = Multiaddr::empty().with(ip_protocol(ip));
        match parts.next()? {
            Protocol::Tcp(port) if port != 0 => {
                out.push(Protocol::Tcp(port));
                match parts.next() {
                    None => return Some((out, ip)),
                    Some(Protocol::Ws(path)) if path == "/" => out.push(Protocol::Ws(path)),
                    Some(Protocol::P2p(p)) if p == *peer && parts.next().is_none() => {
                        return Some((out, ip))
                    }
                    Some(_) => return None,
                }
            }
            Protocol::Udp(port) if port != 0 => {
                out.push(Protocol::Udp(port));
                match parts.next()? {
                    Protocol::QuicV1 => out.push(Protocol::QuicV1),
                    _ => return None,
                }
            }
            _ => return None,
        }
        match parts.next() {
            None => Some((out, ip)),
            Some(Protocol::P2p(p)) if p == *peer && parts.next().is_none() => Some((out, ip)),
            _ => None,
        }
    }
}

fn ip_protocol(ip: IpAddr) -> Protocol<'static> {
    match ip {
        IpAddr::V4(v4) => Protocol::Ip4(v4),
        IpAddr::V6(v6) => Protocol::Ip6(v6),
    }
}

fn ip_multiaddr(ip: IpAddr) -> Multiaddr {
    Multiaddr::empty().with(ip_protocol(ip))
}

/// The addresses a v1 request may be dialed on, in the request's order: those we can and
/// may dial ([`Reach::dialable`]) whose IP is the one the request came from, without
/// duplicates, at most `max`.
pub fn select_v1(
    addrs: &[Multiaddr],
    observed: IpAddr,
    peer: &PeerId,
    reach: &Reach,
    max: usize,
) -> Vec<Multiaddr> {
    let observed = observed.to_canonical();
    let mut out: Vec<Multiaddr> = Vec::new();
    for a in addrs {
        if out.len() >= max {
            break;
        }
        //= specs/autonat/autonat-v1.md#autonat-protocol
        //# implementations MUST NOT dial any multiaddress unless it is based on the
        //# IP address the requesting node is observed as.
        let Some((addr, ip)) = reach.dialable(a, peer) else {
            continue;
        };
        if ip.to_canonical() == observed && !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// The address a v2 request is dialed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// Its index in the request (what the answer names).
    pub idx: usize,
    /// What we dial (its `/p2p/` suffix dropped).
    pub addr: Multiaddr,
    /// Its IP is not the one the request came from: the client pays with dial data first.
    pub needs_dial_data: bool,
}

/// The address a v2 request is dialed on: the first we can and may dial
/// ([`Reach::dialable`]) among the first [`MAX_V2_ADDRS`] of the request; `None` if
/// there is none.
pub fn select_v2(
    addrs: &[(usize, Multiaddr)],
    observed: IpAddr,
    peer: &PeerId,
    reach: &Reach,
) -> Option<Selected> {
    //= specs/autonat/autonat-v2.md#autonat-v2-protocol
    //# The server SHOULD use the first address it is willing to dial. The server
    //# MUST NOT dial any address other than this one.
    addrs
        .iter()
        .filter(|(idx, _)| *idx < MAX_V2_ADDRS)
        .find_map(|(idx, a)| {
            let (addr, ip) = reach.dialable(a, peer)?;
            //= specs/autonat/autonat-v2.md#autonat-v2-protocol
            //# If this selected address has an IP address different from the requesting
            //# node's observed IP address, server initiates the Amplification attack
            //# prevention mechanism
            Some(Selected {
                idx: *idx,
                addr,
                needs_dial_data: ip.to_canonical() != observed.to_canonical(),
            })
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use pylon_node::Keypair;

    fn peer() -> PeerId {
        Keypair::generate_ed25519().public().to_peer_id()
    }

    fn limits() -> Limits {
        Limits {
            requests_per_minute: 6,
            per_peer_per_minute: 2,
            per_ip_per_minute: 3,
            per_subnet_per_minute: 4,
            dial_data_per_minute: 2,
            max_concurrent: 5,
            per_peer_concurrent: 1,
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn m(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    /// Admits and releases at once (the request finished).
    fn served(
        b: &mut Budget,
        p: PeerId,
        from: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Refusal> {
        b.admit(p, from, now).map(|permit| b.release(permit))
    }

    #[test]
    fn each_rate_refuses_at_one_past_its_budget() {
        let t0 = Instant::now();
        // Per peer: 2.
        let mut b = Budget::new(limits());
        let a = peer();
        served(&mut b, a, ip("11.0.0.1"), t0).unwrap();
        served(&mut b, a, ip("11.0.0.1"), t0).unwrap();
        assert_eq!(
            served(&mut b, a, ip("11.0.0.1"), t0),
            Err(Refusal::PeerRateLimited)
        );
        // Per IP: 3 (peers of one IP).
        let mut b = Budget::new(limits());
        for _ in 0..3 {
            served(&mut b, peer(), ip("11.0.0.1"), t0).unwrap();
        }
        assert_eq!(
            served(&mut b, peer(), ip("11.0.0.1"), t0),
            Err(Refusal::IpRateLimited)
        );
        served(&mut b, peer(), ip("11.0.0.2"), t0).unwrap();
        // Per subnet: 4 (the /24 holds 4 now).
        assert_eq!(
            served(&mut b, peer(), ip("11.0.0.3"), t0),
            Err(Refusal::SubnetRateLimited)
        );
        // IPv6 subnets are /48s; IPv4-mapped IPv6 counts as its IPv4 address.
        assert_eq!(
            served(&mut b, peer(), ip("::ffff:11.0.0.9"), t0),
            Err(Refusal::SubnetRateLimited)
        );
        served(&mut b, peer(), ip("2001:db8:1:2::1"), t0).unwrap();
        // Global: 6 in the window.
        served(&mut b, peer(), ip("12.0.0.1"), t0).unwrap();
        assert_eq!(b.in_window(), 6);
        assert_eq!(
            served(&mut b, peer(), ip("13.0.0.1"), t0),
            Err(Refusal::RateLimited)
        );
        // Refusals are not counted: the window still holds 6.
        assert_eq!(b.in_window(), 6);
    }

    #[test]
    fn windows_slide_and_their_keys_go_with_them() {
        let t0 = Instant::now();
        let mut b = Budget::new(limits());
        let a = peer();
        served(&mut b, a, ip("11.0.0.1"), t0).unwrap();
        let t1 = t0 + Duration::from_secs(30);
        served(&mut b, a, ip("11.0.0.1"), t1).unwrap();
        assert_eq!(
            served(&mut b, a, ip("11.0.0.1"), t1),
            Err(Refusal::PeerRateLimited)
        );
        // Just short of a minute after the first: still refused.
        let t2 = t0 + WINDOW - Duration::from_millis(1);
        assert_eq!(
            served(&mut b, a, ip("11.0.0.1"), t2),
            Err(Refusal::PeerRateLimited)
        );
        // A minute after the first: one slot back, not two.
        let t3 = t0 + WINDOW;
        served(&mut b, a, ip("11.0.0.1"), t3).unwrap();
        assert_eq!(
            served(&mut b, a, ip("11.0.0.1"), t3),
            Err(Refusal::PeerRateLimited)
        );
        // Once every entry is past, nothing is tracked.
        b.expire(t3 + WINDOW);
        assert_eq!((b.in_window(), b.tracked()), (0, 0));
    }

    #[test]
    fn concurrency_is_bounded_and_released() {
        let t0 = Instant::now();
        let mut b = Budget::new(Limits {
            requests_per_minute: 100,
            per_peer_per_minute: 10,
            per_ip_per_minute: 100,
            per_subnet_per_minute: 100,
            max_concurrent: 2,
            per_peer_concurrent: 1,
            ..limits()
        });
        let (a, c, d) = (peer(), peer(), peer());
        let first = b.admit(a, ip("11.0.0.1"), t0).unwrap();
        assert_eq!(first.peer(), a);
        assert_eq!(b.admit(a, ip("11.0.0.1"), t0), Err(Refusal::PeerBusy));
        let second = b.admit(c, ip("11.0.0.2"), t0).unwrap();
        assert_eq!(b.admit(d, ip("11.0.0.3"), t0), Err(Refusal::Busy));
        assert_eq!(b.running(), 2);
        b.release(first);
        let third = b.admit(a, ip("11.0.0.1"), t0).unwrap();
        b.release(second);
        b.release(third);
        assert_eq!(b.running(), 0);
        b.expire(t0 + WINDOW);
        assert_eq!(b.tracked(), 0, "running_per_peer emptied too");
    }

    #[test]
    fn the_dial_data_budget_slides_on_its_own() {
        let t0 = Instant::now();
        let mut b = Budget::new(limits());
        b.admit_dial_data(t0).unwrap();
        b.admit_dial_data(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(
            b.admit_dial_data(t0 + Duration::from_secs(20)),
            Err(Refusal::DialDataRateLimited)
        );
        b.admit_dial_data(t0 + WINDOW).unwrap();
        assert_eq!(
            b.admit_dial_data(t0 + WINDOW),
            Err(Refusal::DialDataRateLimited)
        );
    }

    #[test]
    fn tables_refuse_new_keys_when_full() {
        let t0 = Instant::now();
        let mut b = Budget::new(Limits {
            requests_per_minute: MAX_TRACKED + 10,
            per_peer_per_minute: 1,
            per_ip_per_minute: MAX_TRACKED + 10,
            per_subnet_per_minute: MAX_TRACKED + 10,
            max_concurrent: 1,
            ..limits()
        });
        for _ in 0..MAX_TRACKED {
            served(&mut b, peer(), None, t0).unwrap();
        }
        assert_eq!(served(&mut b, peer(), None, t0), Err(Refusal::TrackingFull));
        b.expire(t0 + WINDOW);
        served(&mut b, peer(), None, t0 + WINDOW).unwrap();
    }

    fn lab() -> Reach {
        Reach {
            ipv4: true,
            ipv6: true,
            allow_loopback: true,
        }
    }

    fn public() -> Reach {
        Reach {
            allow_loopback: false,
            ..lab()
        }
    }

    #[test]
    fn v1_dials_only_the_observed_ip_on_transports_we_speak() {
        let p = peer();
        let other = peer();
        let observed = "11.0.0.1".parse().unwrap();
        let addrs = [
            m("/ip4/11.0.0.2/tcp/4001"),                       // another IP
            m("/ip4/11.0.0.1/tcp/4001"),                       // yes
            m("/ip4/11.0.0.1/tcp/4001"),                       // duplicate
            m(&format!("/ip4/11.0.0.1/tcp/4001/p2p/{p}")),     // the same, with the peer
            m(&format!("/ip4/11.0.0.1/tcp/4002/p2p/{other}")), // another peer's
            m("/ip4/11.0.0.1/udp/4001/quic-v1"),               // yes
            m("/ip4/11.0.0.1/udp/4001/quic"),                  // draft-29: no
            m("/ip4/11.0.0.1/udp/4001/quic-v1/webtransport"),
            m("/ip4/11.0.0.1/tcp/4003/ws"), // yes
            m("/ip4/11.0.0.1/tcp/4004/wss"),
            m(&format!("/ip4/11.0.0.1/tcp/4001/p2p/{other}/p2p-circuit")),
            m("/dns4/example.com/tcp/4001"),
            m("/ip4/11.0.0.1/tcp/0"),
            m("/ip4/11.0.0.1/tcp/4005"), // over the max
        ];
        assert_eq!(
            select_v1(&addrs, observed, &p, &public(), 3),
            vec![
                m("/ip4/11.0.0.1/tcp/4001"),
                m("/ip4/11.0.0.1/udp/4001/quic-v1"),
                m("/ip4/11.0.0.1/tcp/4003/ws"),
            ]
        );
        // IPv4-mapped IPv6 observed addresses match their IPv4 form.
        let mapped: IpAddr = "::ffff:11.0.0.1".parse().unwrap();
        assert_eq!(select_v1(&addrs, mapped, &p, &public(), 1).len(), 1);
    }

    #[test]
    fn private_addresses_only_in_the_lab() {
        let p = peer();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let addrs = [m("/ip4/127.0.0.1/tcp/4001"), m("/ip4/10.0.0.1/tcp/4001")];
        assert!(select_v1(&addrs, lo, &p, &public(), 4).is_empty());
        assert_eq!(
            select_v1(&addrs, lo, &p, &lab(), 4),
            vec![m("/ip4/127.0.0.1/tcp/4001")]
        );
        // Never the unspecified, broadcast or multicast addresses, lab or not.
        for bad in [
            "/ip4/0.0.0.0/tcp/1",
            "/ip4/255.255.255.255/tcp/1",
            "/ip4/224.0.0.1/tcp/1",
            "/ip6/::/tcp/1",
        ] {
            assert_eq!(lab().dialable(&m(bad), &p), None, "{bad}");
        }
        for private in [
            "/ip4/192.168.1.1/tcp/1",
            "/ip4/100.64.0.1/tcp/1",
            "/ip6/fe80::1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/::1/tcp/1",
        ] {
            assert_eq!(public().dialable(&m(private), &p), None, "{private}");
            assert!(lab().dialable(&m(private), &p).is_some(), "{private}");
        }
    }

    #[test]
    fn v2_takes_the_first_address_it_will_dial_and_asks_data_for_another_ip() {
        let p = peer();
        let observed: IpAddr = "11.0.0.1".parse().unwrap();
        let addrs = vec![
            (0, m("/ip4/10.0.0.1/tcp/4001")), // private: skipped
            (2, m("/ip4/11.0.0.1/udp/1/webrtc-direct")),
            (3, m("/ip4/12.0.0.1/tcp/4001")), // the first it will dial: another IP
            (4, m("/ip4/11.0.0.1/tcp/4001")),
        ];
        assert_eq!(
            select_v2(&addrs, observed, &p, &public()),
            Some(Selected {
                idx: 3,
                addr: m("/ip4/12.0.0.1/tcp/4001"),
                needs_dial_data: true
            })
        );
        let same = vec![(7, m(&format!("/ip4/11.0.0.1/tcp/4001/p2p/{p}")))];
        assert_eq!(
            select_v2(&same, observed, &p, &public()),
            Some(Selected {
                idx: 7,
                addr: m("/ip4/11.0.0.1/tcp/4001"),
                needs_dial_data: false
            })
        );
        assert_eq!(select_v2(&addrs[..2], observed, &p, &public()), None);
        // Past the first MAX_V2_ADDRS, nothing is looked at.
        let late = vec![(MAX_V2_ADDRS, m("/ip4/11.0.0.1/tcp/4001"))];
        assert_eq!(select_v2(&late, observed, &p, &public()), None);
    }

    #[test]
    fn a_server_without_a_family_refuses_it() {
        let relay = peer();
        let listen = [
            m("/ip4/0.0.0.0/tcp/4001"),
            m(&format!(
                "/ip6/2001:db8::1/tcp/4001/p2p/{relay}/p2p-circuit"
            )),
        ];
        let reach = Reach::of_listen_addrs(&listen, false);
        assert!(reach.ipv4 && !reach.ipv6);
        let p = peer();
        assert_eq!(reach.dialable(&m("/ip6/2600::1/tcp/4001"), &p), None);
        assert!(reach.dialable(&m("/ip4/11.0.0.1/tcp/4001"), &p).is_some());
        let v6 = vec![
            (0, m("/ip6/2600::1/tcp/4001")),
            (1, m("/ip4/11.0.0.1/tcp/4001")),
        ];
        assert_eq!(
            select_v2(&v6, "11.0.0.1".parse().unwrap(), &p, &reach).map(|s| s.idx),
            Some(1)
        );
    }
}
