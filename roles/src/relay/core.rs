//! The relay's bookkeeping, without I/O: who holds a reservation until when, which
//! circuits are open, and every limit on both. Time is an input (`now`); nothing here
//! sleeps, spawns or reads a clock, so every decision is tested on simulated time.
//!
//! What it is not: the protocol driver (`hop.rs` reads and writes the messages, opens the
//! stop stream and splices) or the byte counting of a circuit (`splice.rs`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use pylon_node::ipprefix::IpPrefix;
use pylon_node::protocols::relay::proto::Status;
use pylon_node::PeerId;

/// The limits the table enforces (the role's config, checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Reservations held at once.
    pub max_reservations: usize,
    /// Reservations held by peers connected from one IP address.
    pub max_reservations_per_ip: usize,
    /// The same per subnet (IPv4 /24, IPv6 /48).
    pub max_reservations_per_subnet: usize,
    /// How long a reservation lasts without a refresh.
    pub reservation_ttl: Duration,
    /// Circuits open at once.
    pub max_circuits: usize,
    /// Circuits one peer takes part in at once, as caller or as target.
    pub max_circuits_per_peer: usize,
}

/// Who may use the relay, and who is trusted: entries are PeerIds or IP prefixes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Never served.
    pub deny: Vec<Entry>,
    /// Served in private mode (everyone is, otherwise).
    pub allow: Vec<Entry>,
    /// Served in any mode, exempt from the per-IP, per-subnet and per-peer limits, and
    /// circuits to them carry no data or duration limit (the totals still apply).
    pub trusted: Vec<Entry>,
    /// Refuse everyone not in `allow` or `trusted`.
    pub private: bool,
}

/// One access-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Peer(PeerId),
    Prefix(IpPrefix),
}

impl Entry {
    fn matches(&self, peer: &PeerId, ip: Option<IpAddr>) -> bool {
        match self {
            Entry::Peer(p) => p == peer,
            Entry::Prefix(prefix) => ip.is_some_and(|ip| prefix.contains(ip)),
        }
    }
}

impl std::str::FromStr for Entry {
    type Err = String;

    /// A PeerId (`12D3Koo…`) or an IP prefix (`203.0.113.0/24`, a bare address).
    fn from_str(s: &str) -> Result<Entry, String> {
        if let Ok(peer) = s.trim().parse::<PeerId>() {
            return Ok(Entry::Peer(peer));
        }
        s.parse::<IpPrefix>()
            .map(Entry::Prefix)
            .map_err(|e| format!("neither a PeerId nor an IP prefix: {e}"))
    }
}

/// How the policy classes a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Denied,
    /// Served with the ordinary limits.
    Served,
    Trusted,
}

impl Policy {
    /// The class of `peer` connected from `ip`: a deny entry wins over everything.
    pub fn class(&self, peer: &PeerId, ip: Option<IpAddr>) -> Class {
        let any = |list: &[Entry]| list.iter().any(|e| e.matches(peer, ip));
        if any(&self.deny) {
            Class::Denied
        } else if any(&self.trusted) {
            Class::Trusted
        } else if !self.private || any(&self.allow) {
            Class::Served
        } else {
            Class::Denied
        }
    }
}

/// Why a request was refused: the status the client gets and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The request came over a relayed connection (the spec: should not be accepted).
    Relayed,
    /// The peer is not allowed (policy).
    Denied,
    /// A circuit from a peer to itself.
    ToItself,
    ReservationsFull,
    ReservationsPerIp,
    ReservationsPerSubnet,
    /// The target holds no valid reservation.
    NoReservation,
    CircuitsFull,
    CircuitsPerPeer,
}

impl Refusal {
    /// The status code the client is answered with.
    pub fn status(self) -> Status {
        match self {
            Refusal::Relayed | Refusal::Denied | Refusal::ToItself => Status::PermissionDenied,
            Refusal::ReservationsFull
            | Refusal::ReservationsPerIp
            | Refusal::ReservationsPerSubnet => Status::ReservationRefused,
            Refusal::NoReservation => Status::NoReservation,
            Refusal::CircuitsFull | Refusal::CircuitsPerPeer => Status::ResourceLimitExceeded,
        }
    }

    /// The `reason` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Relayed => "relayed",
            Refusal::Denied => "denied",
            Refusal::ToItself => "to_itself",
            Refusal::ReservationsFull => "reservations_full",
            Refusal::ReservationsPerIp => "reservations_per_ip",
            Refusal::ReservationsPerSubnet => "reservations_per_subnet",
            Refusal::NoReservation => "no_reservation",
            Refusal::CircuitsFull => "circuits_full",
            Refusal::CircuitsPerPeer => "circuits_per_peer",
        }
    }
}

/// One open circuit's id in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CircuitId(u64);

/// A reservation held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub since: Instant,
    pub expires: Instant,
    /// The IP the peer reserved from (counted against the per-IP and per-subnet limits,
    /// unless trusted).
    pub ip: Option<IpAddr>,
    pub trusted: bool,
}

/// An open circuit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Circuit {
    pub src: PeerId,
    pub dst: PeerId,
    pub opened: Instant,
    /// To a trusted peer: no per-circuit data or duration limit.
    pub trusted: bool,
}

/// Reservations and circuits, with their limits.
#[derive(Debug)]
pub struct Table {
    limits: Limits,
    policy: Policy,
    reservations: HashMap<PeerId, Held>,
    per_ip: HashMap<IpAddr, usize>,
    per_subnet: HashMap<IpPrefix, usize>,
    circuits: HashMap<CircuitId, Circuit>,
    per_peer_circuits: HashMap<PeerId, usize>,
    next_circuit: u64,
}

impl Table {
    pub fn new(limits: Limits, policy: Policy) -> Table {
        Table {
            limits,
            policy,
            reservations: HashMap::new(),
            per_ip: HashMap::new(),
            per_subnet: HashMap::new(),
            circuits: HashMap::new(),
            per_peer_circuits: HashMap::new(),
            next_circuit: 0,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A reservation for `peer`, connected from `ip`, or the renewal of the one it holds;
    /// returns when it expires. Expired reservations are dropped first.
    pub fn reserve(
        &mut self,
        now: Instant,
        peer: PeerId,
        ip: Option<IpAddr>,
    ) -> Result<Instant, Refusal> {
        self.expire(now);
        let ip = ip.map(|ip| ip.to_canonical());
        let trusted = match self.policy.class(&peer, ip) {
            Class::Denied => return Err(Refusal::Denied),
            Class::Served => false,
            Class::Trusted => true,
        };
        // A trusted peer's IP is not counted: fleet members may share one.
        let ip = if trusted { None } else { ip };
        let expires = now + self.limits.reservation_ttl;
        if let Some(held) = self.reservations.get_mut(&peer) {
            if held.ip == ip {
                held.expires = expires;
                return Ok(expires);
            }
            // Refreshed from another address: counted anew against the new one.
            let since = held.since;
            self.release(&peer);
            return self.admit(peer, ip, trusted, since, expires);
        }
        if self.reservations.len() >= self.limits.max_reservations {
            return Err(Refusal::ReservationsFull);
        }
        self.admit(peer, ip, trusted, now, expires)
    }

    fn admit(
        &mut self,
        peer: PeerId,
        ip: Option<IpAddr>,
        trusted: bool,
        since: Instant,
        expires: Instant,
    ) -> Result<Instant, Refusal> {
        if let Some(ip) = ip {
            if self.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.max_reservations_per_ip {
                return Err(Refusal::ReservationsPerIp);
            }
            let subnet = IpPrefix::subnet(ip);
            if self.per_subnet.get(&subnet).copied().unwrap_or(0)
                >= self.limits.max_reservations_per_subnet
            {
                return Err(Refusal::ReservationsPerSubnet);
            }
            *self.per_ip.entry(ip).or_default() += 1;
            *self.per_subnet.entry(subnet).or_default() += 1;
        }
        self.reservations.insert(
            peer,
            Held {
                since,
                expires,
                ip,
                trusted,
            },
        );
        Ok(expires)
    }

    /// Drops `peer`'s reservation, if it holds one (it disconnected: the spec says the
    /// reservation is then no longer valid).
    pub fn release(&mut self, peer: &PeerId) -> bool {
        let Some(held) = self.reservations.remove(peer) else {
            return false;
        };
        if let Some(ip) = held.ip {
            decrement(&mut self.per_ip, &ip);
            decrement(&mut self.per_subnet, &IpPrefix::subnet(ip));
        }
        true
    }

    /// Drops the reservations expired at `now`; returns their peers.
    pub fn expire(&mut self, now: Instant) -> Vec<PeerId> {
        let expired: Vec<PeerId> = self
            .reservations
            .iter()
            .filter(|(_, h)| h.expires <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in &expired {
            self.release(p);
        }
        expired
    }

    /// `peer`'s reservation, valid or not yet swept.
    pub fn held(&self, peer: &PeerId) -> Option<&Held> {
        self.reservations.get(peer)
    }

    /// Whether `peer` holds a reservation valid at `now`.
    pub fn has_reservation(&self, now: Instant, peer: &PeerId) -> bool {
        self.reservations.get(peer).is_some_and(|h| h.expires > now)
    }

    /// Opens a circuit from `src` (connected from `src_ip`) to `dst`, which must hold a
    /// valid reservation; returns its id and whether it is trusted. A circuit to a trusted
    /// peer is exempt from the per-peer limit and from the per-circuit data and duration
    /// limits ([`Circuit::trusted`]); a trusted caller from its own per-peer count.
    pub fn connect(
        &mut self,
        now: Instant,
        src: PeerId,
        src_ip: Option<IpAddr>,
        dst: PeerId,
    ) -> Result<(CircuitId, bool), Refusal> {
        if src == dst {
            return Err(Refusal::ToItself);
        }
        let src_class = self.policy.class(&src, src_ip.map(|ip| ip.to_canonical()));
        if src_class == Class::Denied {
            return Err(Refusal::Denied);
        }
        let Some(trusted) = self
            .reservations
            .get(&dst)
            .filter(|h| h.expires > now)
            .map(|h| h.trusted)
        else {
            return Err(Refusal::NoReservation);
        };
        if self.circuits.len() >= self.limits.max_circuits {
            return Err(Refusal::CircuitsFull);
        }
        let busy = |p: &PeerId| self.per_peer_circuits.get(p).copied().unwrap_or(0);
        let max = self.limits.max_circuits_per_peer;
        let src_over = src_class != Class::Trusted && busy(&src) >= max;
        if !trusted && (src_over || busy(&dst) >= max) {
            return Err(Refusal::CircuitsPerPeer);
        }
        let id = CircuitId(self.next_circuit);
        self.next_circuit += 1;
        *self.per_peer_circuits.entry(src).or_default() += 1;
        *self.per_peer_circuits.entry(dst).or_default() += 1;
        self.circuits.insert(
            id,
            Circuit {
                src,
                dst,
                opened: now,
                trusted,
            },
        );
        Ok((id, trusted))
    }

    /// A circuit ended (either side closed, a limit cut it, the target refused it).
    pub fn close(&mut self, id: CircuitId) -> Option<Circuit> {
        let c = self.circuits.remove(&id)?;
        decrement(&mut self.per_peer_circuits, &c.src);
        decrement(&mut self.per_peer_circuits, &c.dst);
        Some(c)
    }

    pub fn reservations(&self) -> impl Iterator<Item = (&PeerId, &Held)> {
        self.reservations.iter()
    }

    pub fn circuits(&self) -> impl Iterator<Item = (&CircuitId, &Circuit)> {
        self.circuits.iter()
    }

    pub fn reservation_count(&self) -> usize {
        self.reservations.len()
    }

    pub fn circuit_count(&self) -> usize {
        self.circuits.len()
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pylon_node::Keypair;

    fn peer() -> PeerId {
        Keypair::generate_ed25519().public().to_peer_id()
    }

    fn limits() -> Limits {
        Limits {
            max_reservations: 3,
            max_reservations_per_ip: 2,
            max_reservations_per_subnet: 3,
            reservation_ttl: Duration::from_secs(3600),
            max_circuits: 3,
            max_circuits_per_peer: 2,
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn reservations_are_bounded_in_total_per_ip_and_per_subnet() {
        let t0 = Instant::now();
        let mut t = Table::new(limits(), Policy::default());
        let (a, b, c, d) = (peer(), peer(), peer(), peer());
        t.reserve(t0, a, ip("10.0.0.1")).unwrap();
        t.reserve(t0, b, ip("10.0.0.1")).unwrap();
        assert_eq!(
            t.reserve(t0, c, ip("10.0.0.1")),
            Err(Refusal::ReservationsPerIp)
        );
        t.reserve(t0, c, ip("10.0.0.2")).unwrap();
        assert_eq!(
            t.reserve(t0, d, ip("10.9.9.9")),
            Err(Refusal::ReservationsFull)
        );
        // A refresh is never refused for the total, and keeps the count.
        t.reserve(t0, a, ip("10.0.0.1")).unwrap();
        assert_eq!(t.reservation_count(), 3);
        // Per subnet: a fourth peer in 10.0.0.0/24, with room in the total.
        t.release(&c);
        assert_eq!(
            t.reserve(t0, d, ip("10.0.0.3")),
            Ok(t0 + Duration::from_secs(3600))
        );
        t.release(&d);
        let mut wide = Table::new(
            Limits {
                max_reservations: 10,
                max_reservations_per_ip: 10,
                max_reservations_per_subnet: 2,
                ..limits()
            },
            Policy::default(),
        );
        wide.reserve(t0, a, ip("10.1.1.1")).unwrap();
        wide.reserve(t0, b, ip("10.1.1.2")).unwrap();
        assert_eq!(
            wide.reserve(t0, c, ip("10.1.1.3")),
            Err(Refusal::ReservationsPerSubnet)
        );
        wide.reserve(t0, c, ip("10.1.2.3")).unwrap();
    }

    #[test]
    fn a_reservation_expires_without_a_refresh_and_lives_on_with_one() {
        let t0 = Instant::now();
        let ttl = limits().reservation_ttl;
        let mut t = Table::new(limits(), Policy::default());
        let (a, b) = (peer(), peer());
        t.reserve(t0, a, ip("10.0.0.1")).unwrap();
        t.reserve(t0, b, ip("10.0.0.2")).unwrap();
        let half = t0 + ttl / 2;
        assert_eq!(t.reserve(half, a, ip("10.0.0.1")), Ok(half + ttl));
        let later = t0 + ttl;
        assert!(t.has_reservation(later, &a));
        assert!(!t.has_reservation(later, &b));
        assert_eq!(t.expire(later), vec![b]);
        assert_eq!(t.reservation_count(), 1);
        // b's IP budget came back with the expiry.
        assert!(!t
            .per_ip
            .contains_key(&"10.0.0.2".parse::<IpAddr>().unwrap()));
    }

    #[test]
    fn circuits_need_a_reservation_and_are_bounded() {
        let t0 = Instant::now();
        let mut t = Table::new(limits(), Policy::default());
        let (a, b, c, d) = (peer(), peer(), peer(), peer());
        assert_eq!(t.connect(t0, b, None, a), Err(Refusal::NoReservation));
        t.reserve(t0, a, ip("10.0.0.1")).unwrap();
        assert_eq!(t.connect(t0, a, None, a), Err(Refusal::ToItself));
        let (first, _) = t.connect(t0, b, None, a).unwrap();
        t.connect(t0, c, None, a).unwrap();
        // a takes part in two circuits already.
        assert_eq!(t.connect(t0, d, None, a), Err(Refusal::CircuitsPerPeer));
        t.close(first);
        t.connect(t0, d, None, a).unwrap();
        // The total: a third circuit to another target.
        t.reserve(t0, b, ip("10.0.0.2")).unwrap();
        t.connect(t0, c, None, b).unwrap();
        assert_eq!(t.circuit_count(), 3);
        assert_eq!(t.connect(t0, d, None, b), Err(Refusal::CircuitsFull));
        // Past its expiry a reservation no longer admits circuits.
        let later = t0 + limits().reservation_ttl;
        let mut t2 = Table::new(limits(), Policy::default());
        t2.reserve(t0, a, None).unwrap();
        assert_eq!(t2.connect(later, b, None, a), Err(Refusal::NoReservation));
    }

    #[test]
    fn the_policy_denies_admits_privately_and_trusts() {
        let t0 = Instant::now();
        let (a, b, fleet, stranger) = (peer(), peer(), peer(), peer());
        let policy = Policy {
            deny: vec![Entry::Peer(b), "10.6.6.0/24".parse().unwrap()],
            allow: vec![Entry::Peer(a)],
            trusted: vec![Entry::Peer(fleet), "10.9.0.0/16".parse().unwrap()],
            private: true,
        };
        assert_eq!(policy.class(&a, ip("10.0.0.1")), Class::Served);
        assert_eq!(policy.class(&b, ip("10.0.0.1")), Class::Denied);
        // A deny prefix wins over an allow entry.
        assert_eq!(policy.class(&a, ip("10.6.6.6")), Class::Denied);
        assert_eq!(
            policy.class(&stranger, ip("10.0.0.1")),
            Class::Denied,
            "private"
        );
        assert_eq!(
            policy.class(&stranger, ip("10.9.1.1")),
            Class::Trusted,
            "by prefix"
        );
        let open = Policy {
            private: false,
            ..policy.clone()
        };
        assert_eq!(open.class(&stranger, ip("10.0.0.1")), Class::Served);

        let mut t = Table::new(
            Limits {
                max_reservations_per_ip: 1,
                max_reservations_per_subnet: 1,
                max_circuits: 10,
                ..limits()
            },
            policy,
        );
        assert_eq!(t.reserve(t0, b, ip("10.0.0.2")), Err(Refusal::Denied));
        assert_eq!(
            t.reserve(t0, stranger, ip("10.0.0.3")),
            Err(Refusal::Denied)
        );
        t.reserve(t0, a, ip("10.0.0.1")).unwrap();
        // Trusted: not held to the per-IP limit a already fills.
        t.reserve(t0, fleet, ip("10.0.0.1")).unwrap();
        assert!(t.held(&fleet).unwrap().trusted);
        // Circuits: a denied caller is refused; circuits to the trusted peer are trusted
        // and exempt from the per-peer limit (2 here).
        assert_eq!(t.connect(t0, b, None, a), Err(Refusal::Denied));
        for _ in 0..3 {
            assert!(t.connect(t0, a, ip("10.0.0.1"), fleet).unwrap().1);
        }
        // a takes part in three circuits (to the trusted peer): one to a itself is over
        // its per-peer limit, whoever calls.
        assert_eq!(
            t.connect(t0, fleet, None, a),
            Err(Refusal::CircuitsPerPeer),
            "a circuit to an ordinary peer keeps the limits"
        );
    }

    #[test]
    fn entries_are_peer_ids_or_prefixes() {
        let p = peer();
        assert_eq!(p.to_string().parse::<Entry>(), Ok(Entry::Peer(p)));
        assert!(matches!(
            "2001:db8::/32".parse::<Entry>(),
            Ok(Entry::Prefix(_))
        ));
        assert!("10.0.0.1/8"
            .parse::<Entry>()
            .unwrap_err()
            .contains("network address"));
        assert!("fleet-1".parse::<Entry>().is_err());
    }

    #[test]
    fn refusals_map_to_the_spec_statuses() {
        assert_eq!(
            Refusal::ReservationsFull.status(),
            Status::ReservationRefused
        );
        assert_eq!(Refusal::NoReservation.status(), Status::NoReservation);
        assert_eq!(
            Refusal::CircuitsPerPeer.status(),
            Status::ResourceLimitExceeded
        );
        assert_eq!(Refusal::Relayed.status(), Status::PermissionDenied);
    }
}
