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
    /// The IP the peer reserved from (counted against the per-IP and per-subnet limits).
    pub ip: Option<IpAddr>,
}

/// An open circuit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Circuit {
    pub src: PeerId,
    pub dst: PeerId,
    pub opened: Instant,
}

/// Reservations and circuits, with their limits.
#[derive(Debug)]
pub struct Table {
    limits: Limits,
    reservations: HashMap<PeerId, Held>,
    per_ip: HashMap<IpAddr, usize>,
    per_subnet: HashMap<IpPrefix, usize>,
    circuits: HashMap<CircuitId, Circuit>,
    per_peer_circuits: HashMap<PeerId, usize>,
    next_circuit: u64,
}

impl Table {
    pub fn new(limits: Limits) -> Table {
        Table {
            limits,
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
        let expires = now + self.limits.reservation_ttl;
        let ip = ip.map(|ip| ip.to_canonical());
        if let Some(held) = self.reservations.get_mut(&peer) {
            if held.ip == ip {
                held.expires = expires;
                return Ok(expires);
            }
            // Refreshed from another address: counted anew against the new one.
            let since = held.since;
            self.release(&peer);
            return self.admit(peer, ip, since, expires);
        }
        if self.reservations.len() >= self.limits.max_reservations {
            return Err(Refusal::ReservationsFull);
        }
        self.admit(peer, ip, now, expires)
    }

    fn admit(
        &mut self,
        peer: PeerId,
        ip: Option<IpAddr>,
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
        self.reservations.insert(peer, Held { since, expires, ip });
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

    /// Drops the reservations expired at `now`; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let expired: Vec<PeerId> = self
            .reservations
            .iter()
            .filter(|(_, h)| h.expires <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in &expired {
            self.release(p);
        }
        expired.len()
    }

    /// Whether `peer` holds a reservation valid at `now`.
    pub fn has_reservation(&self, now: Instant, peer: &PeerId) -> bool {
        self.reservations.get(peer).is_some_and(|h| h.expires > now)
    }

    /// Opens a circuit from `src` to `dst`, which must hold a valid reservation.
    pub fn connect(
        &mut self,
        now: Instant,
        src: PeerId,
        dst: PeerId,
    ) -> Result<CircuitId, Refusal> {
        if src == dst {
            return Err(Refusal::ToItself);
        }
        if !self.has_reservation(now, &dst) {
            return Err(Refusal::NoReservation);
        }
        if self.circuits.len() >= self.limits.max_circuits {
            return Err(Refusal::CircuitsFull);
        }
        let busy = |p: &PeerId| self.per_peer_circuits.get(p).copied().unwrap_or(0);
        if busy(&src) >= self.limits.max_circuits_per_peer
            || busy(&dst) >= self.limits.max_circuits_per_peer
        {
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
            },
        );
        Ok(id)
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
        let mut t = Table::new(limits());
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
        let mut wide = Table::new(Limits {
            max_reservations: 10,
            max_reservations_per_ip: 10,
            max_reservations_per_subnet: 2,
            ..limits()
        });
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
        let mut t = Table::new(limits());
        let (a, b) = (peer(), peer());
        t.reserve(t0, a, ip("10.0.0.1")).unwrap();
        t.reserve(t0, b, ip("10.0.0.2")).unwrap();
        let half = t0 + ttl / 2;
        assert_eq!(t.reserve(half, a, ip("10.0.0.1")), Ok(half + ttl));
        let later = t0 + ttl;
        assert!(t.has_reservation(later, &a));
        assert!(!t.has_reservation(later, &b));
        assert_eq!(t.expire(later), 1);
        assert_eq!(t.reservation_count(), 1);
        // b's IP budget came back with the expiry.
        assert!(!t
            .per_ip
            .contains_key(&"10.0.0.2".parse::<IpAddr>().unwrap()));
    }

    #[test]
    fn circuits_need_a_reservation_and_are_bounded() {
        let t0 = Instant::now();
        let mut t = Table::new(limits());
        let (a, b, c, d) = (peer(), peer(), peer(), peer());
        assert_eq!(t.connect(t0, b, a), Err(Refusal::NoReservation));
        t.reserve(t0, a, ip("10.0.0.1")).unwrap();
        assert_eq!(t.connect(t0, a, a), Err(Refusal::ToItself));
        let first = t.connect(t0, b, a).unwrap();
        t.connect(t0, c, a).unwrap();
        // a takes part in two circuits already.
        assert_eq!(t.connect(t0, d, a), Err(Refusal::CircuitsPerPeer));
        t.close(first);
        t.connect(t0, d, a).unwrap();
        // The total: a third circuit to another target.
        t.reserve(t0, b, ip("10.0.0.2")).unwrap();
        t.connect(t0, c, b).unwrap();
        assert_eq!(t.circuit_count(), 3);
        assert_eq!(t.connect(t0, d, b), Err(Refusal::CircuitsFull));
        // Past its expiry a reservation no longer admits circuits.
        let later = t0 + limits().reservation_ttl;
        let mut t2 = Table::new(limits());
        t2.reserve(t0, a, None).unwrap();
        assert_eq!(t2.connect(later, b, a), Err(Refusal::NoReservation));
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
