//! Admission of inbound handshakes: whether a new inbound connection may start its
//! handshake, which stalled handshake makes room for it, and how long it may take.
//!
//! What it is not: the caps on connections once established (the host's per-IP `IpSlot`
//! and connection limits), and no I/O at all — it holds no sockets and reads no clock.
//! The host passes `now` in and carries the decisions out: it closes a refused socket,
//! cancels the handshake handed back as evicted, and arms the deadline it is given.
//!
//! The policy (issue 11: stalled sockets from one host, or from hundreds of addresses,
//! took every handshake slot and honest clients were refused):
//! - every transport has its own pool of `max_pending` slots, so a TCP flood leaves QUIC
//!   (and WebSocket) alone;
//! - one IP may hold `per_ip` slots and one subnet (IPv4 /24, IPv6 /48) `per_subnet`,
//!   over all transports together; past them the newcomer is refused — it only competes
//!   with its own neighbours;
//! - past half a pool, a new handshake's deadline shrinks linearly from `deadline` to
//!   `deadline_floor` at full, so stalled sockets give their slots back sooner;
//! - a full pool evicts the oldest handshake of its most crowded subnet instead of
//!   refusing the newcomer. An attacker spread over enough addresses passes the per-IP
//!   and per-subnet budgets; eviction is what lets an honest client in at once, and
//!   choosing the victim from the most crowded subnet keeps a lone honest handshake (its
//!   subnet holds one slot) from being the one that goes.
//!
//! Also here, as pure as the rest: the operator's bans ([`Bans`]), peers and IP prefixes
//! refused on inbound accept, on outbound dial and once a handshake names the peer, each
//! until its expiry. The host applies them (`bans.rs`); this table only decides.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::identity::PeerId;
use crate::ipprefix::IpPrefix;

/// Budgets and deadlines of inbound handshakes.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Handshakes in progress at once, per transport (at least 1 is used).
    pub max_pending: usize,
    /// Handshakes in progress from one IP address, all transports; 0 = no budget.
    pub per_ip: usize,
    /// Handshakes in progress from one subnet, all transports; 0 = no budget.
    pub per_subnet: usize,
    /// The deadline of a handshake that starts while its pool is at most half full.
    pub deadline: Duration,
    /// The deadline of one that starts when its pool is full (at most `deadline`).
    pub deadline_floor: Duration,
}

/// A subnet as the host counts inbound connections by: [`IpPrefix::subnet`] (IPv4 /24,
/// IPv6 /48, IPv4-mapped IPv6 as IPv4). A thin name kept for the host's per-subnet
/// connection caps; new code uses [`IpPrefix`] directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Subnet(IpPrefix);

impl Subnet {
    pub(crate) fn of(ip: IpAddr) -> Subnet {
        Subnet(IpPrefix::subnet(ip))
    }
}

/// One admitted handshake, in arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PendingId(u64);

/// Why a newcomer was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Its IP address holds `per_ip` handshakes already.
    Ip,
    /// Its subnet holds `per_subnet` handshakes already.
    Subnet,
}

impl Refusal {
    /// The `error` label of `libp2p_swarm_handshake_errors_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Ip => "pending_ip_limit",
            Refusal::Subnet => "pending_subnet_limit",
        }
    }
}

/// The `error` label of a handshake cut short to make room for a newer one.
pub(crate) const EVICTED: &str = "pending_evicted";

/// A newcomer's admission.
#[derive(Debug)]
pub(crate) struct Admitted<T> {
    pub id: PendingId,
    /// When its handshake must be done.
    pub deadline: Instant,
    /// The payload of the handshake that was evicted to make room; the caller ends it.
    pub evicted: Option<T>,
}

struct Entry<T> {
    pool: &'static str,
    ip: Option<IpAddr>,
    payload: T,
}

/// One transport's handshakes, grouped by subnet (`None`: no IP, e.g. `/memory`), each
/// group oldest first.
#[derive(Default)]
struct Pool {
    len: usize,
    groups: HashMap<Option<IpPrefix>, VecDeque<PendingId>>,
}

impl Pool {
    /// The oldest handshake of the most crowded group (ties: the older one).
    fn victim(&self) -> Option<PendingId> {
        self.groups
            .values()
            .filter_map(|g| g.front().map(|oldest| (g.len(), *oldest)))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, id)| id)
    }
}

/// The handshakes in progress, each with a payload `T` (the host's cancellation handle).
pub(crate) struct Admission<T> {
    config: Config,
    next_id: u64,
    entries: HashMap<PendingId, Entry<T>>,
    pools: HashMap<&'static str, Pool>,
    ips: HashMap<IpAddr, usize>,
    subnets: HashMap<IpPrefix, usize>,
}

impl<T> Admission<T> {
    pub(crate) fn new(config: Config) -> Self {
        Admission {
            config,
            next_id: 0,
            entries: HashMap::new(),
            pools: HashMap::new(),
            ips: HashMap::new(),
            subnets: HashMap::new(),
        }
    }

    /// A new inbound connection on `transport` from `ip` asks to start its handshake.
    pub(crate) fn handle_incoming(
        &mut self,
        now: Instant,
        transport: &'static str,
        ip: Option<IpAddr>,
        payload: T,
    ) -> Result<Admitted<T>, Refusal> {
        let ip = ip.map(|ip| ip.to_canonical());
        let subnet = ip.map(IpPrefix::subnet);
        if let Some(ip) = ip {
            let per_ip = self.config.per_ip;
            if per_ip > 0 && self.ips.get(&ip).copied().unwrap_or(0) >= per_ip {
                return Err(Refusal::Ip);
            }
        }
        if let Some(subnet) = subnet {
            let per_subnet = self.config.per_subnet;
            if per_subnet > 0 && self.subnets.get(&subnet).copied().unwrap_or(0) >= per_subnet {
                return Err(Refusal::Subnet);
            }
        }
        let max = self.config.max_pending.max(1);
        let full = self.pools.get(transport).is_some_and(|p| p.len >= max);
        let evicted = if full {
            let victim = self.pools.get(transport).and_then(Pool::victim);
            victim.and_then(|id| self.release(id))
        } else {
            None
        };
        let id = PendingId(self.next_id);
        self.next_id += 1;
        let pool = self.pools.entry(transport).or_default();
        pool.len += 1;
        pool.groups.entry(subnet).or_default().push_back(id);
        let occupied = pool.len;
        if let Some(ip) = ip {
            *self.ips.entry(ip).or_insert(0) += 1;
        }
        if let Some(subnet) = subnet {
            *self.subnets.entry(subnet).or_insert(0) += 1;
        }
        self.entries.insert(
            id,
            Entry {
                pool: transport,
                ip,
                payload,
            },
        );
        Ok(Admitted {
            id,
            deadline: now + self.deadline(occupied, max),
            evicted,
        })
    }

    /// A handshake ended (done, failed, timed out or cancelled); its payload if it was
    /// still admitted (not evicted already).
    pub(crate) fn release(&mut self, id: PendingId) -> Option<T> {
        let entry = self.entries.remove(&id)?;
        let subnet = entry.ip.map(IpPrefix::subnet);
        if let Some(pool) = self.pools.get_mut(entry.pool) {
            pool.len -= 1;
            if let Some(group) = pool.groups.get_mut(&subnet) {
                group.retain(|g| *g != id);
                if group.is_empty() {
                    pool.groups.remove(&subnet);
                }
            }
            if pool.len == 0 {
                self.pools.remove(entry.pool);
            }
        }
        if let Some(ip) = entry.ip {
            decrement(&mut self.ips, &ip);
        }
        if let Some(subnet) = subnet {
            decrement(&mut self.subnets, &subnet);
        }
        Some(entry.payload)
    }

    /// Handshakes in progress on `transport`.
    pub(crate) fn pending(&self, transport: &str) -> usize {
        self.pools.get(transport).map_or(0, |p| p.len)
    }

    /// The deadline of a handshake that makes its pool hold `occupied` of `max`: the full
    /// one up to half, then shrinking linearly to the floor at full.
    fn deadline(&self, occupied: usize, max: usize) -> Duration {
        let full = self.config.deadline;
        let floor = self.config.deadline_floor.min(full);
        let half = max / 2;
        if occupied <= half {
            return full;
        }
        let left = max.saturating_sub(occupied) as f64 / (max - half) as f64;
        floor + (full - floor).mul_f64(left)
    }
}

fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

// ---- Bans -----------------------------------------------------------------------------

/// Most bans held at once, from every origin together.
pub const MAX_BANS: usize = 4096;

/// What a ban refuses: one peer (whatever its address), or every address in a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BanTarget {
    Peer(PeerId),
    Prefix(IpPrefix),
}

impl std::fmt::Display for BanTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BanTarget::Peer(p) => write!(f, "{p}"),
            BanTarget::Prefix(p) => write!(f, "{p}"),
        }
    }
}

/// A ban's handle, for lifting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BanId(pub u64);

impl std::fmt::Display for BanId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One ban in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub id: BanId,
    pub target: BanTarget,
    /// When it lapses; `None`: until lifted.
    pub until: Option<Instant>,
    /// Who set it (`"config"`, `"admin"`): a target banned by two origins is two bans,
    /// so reloading the config never lifts what an operator set by hand.
    pub origin: &'static str,
}

/// Why a ban was not set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BanError {
    #[error("the ban list is full ({MAX_BANS} bans); lift some first")]
    Full,
}

/// The bans in force. Expired ones are dropped as the table is used; time is an input.
#[derive(Debug, Default)]
pub(crate) struct Bans {
    next_id: u64,
    list: Vec<Ban>,
}

impl Bans {
    /// Bans `target` until `until` (`None`: until lifted). The same target and origin
    /// again updates the expiry of that ban rather than adding one.
    pub(crate) fn handle_ban(
        &mut self,
        now: Instant,
        target: BanTarget,
        until: Option<Instant>,
        origin: &'static str,
    ) -> Result<Ban, BanError> {
        self.expire(now);
        if let Some(b) = self
            .list
            .iter_mut()
            .find(|b| b.target == target && b.origin == origin)
        {
            b.until = until;
            return Ok(b.clone());
        }
        if self.list.len() >= MAX_BANS {
            return Err(BanError::Full);
        }
        self.next_id += 1;
        let ban = Ban {
            id: BanId(self.next_id),
            target,
            until,
            origin,
        };
        self.list.push(ban.clone());
        Ok(ban)
    }

    /// Lifts a ban; what it was, if it was in force.
    pub(crate) fn remove(&mut self, now: Instant, id: BanId) -> Option<Ban> {
        self.expire(now);
        let i = self.list.iter().position(|b| b.id == id)?;
        Some(self.list.remove(i))
    }

    /// The bans in force, oldest first.
    pub(crate) fn list(&mut self, now: Instant) -> Vec<Ban> {
        self.expire(now);
        self.list.clone()
    }

    /// Whether `peer` is banned at `now`.
    pub(crate) fn peer_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.list
            .iter()
            .any(|b| b.target == BanTarget::Peer(*peer) && in_force(b, now))
    }

    /// Whether `ip` falls in a banned prefix at `now`.
    pub(crate) fn ip_banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.list.iter().any(|b| match b.target {
            BanTarget::Prefix(p) => p.contains(ip) && in_force(b, now),
            BanTarget::Peer(_) => false,
        })
    }

    fn expire(&mut self, now: Instant) {
        self.list.retain(|b| in_force(b, now));
    }
}

fn in_force(ban: &Ban, now: Instant) -> bool {
    ban.until.is_none_or(|until| now < until)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: Duration = Duration::from_secs(10);
    const FLOOR: Duration = Duration::from_secs(2);

    fn admission(max_pending: usize, per_ip: usize, per_subnet: usize) -> Admission<u32> {
        Admission::new(Config {
            max_pending,
            per_ip,
            per_subnet,
            deadline: FULL,
            deadline_floor: FLOOR,
        })
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn one_ip_and_one_subnet_are_held_to_their_budgets() {
        let now = Instant::now();
        let mut a = admission(100, 2, 3);
        assert!(a.handle_incoming(now, "tcp", ip("10.0.0.1"), 0).is_ok());
        // The budgets span transports.
        assert!(a.handle_incoming(now, "quic-v1", ip("10.0.0.1"), 1).is_ok());
        assert_eq!(
            a.handle_incoming(now, "tcp", ip("10.0.0.1"), 2)
                .unwrap_err(),
            Refusal::Ip
        );
        let third = a.handle_incoming(now, "tcp", ip("10.0.0.2"), 3).unwrap();
        assert_eq!(
            a.handle_incoming(now, "tcp", ip("10.0.0.3"), 4)
                .unwrap_err(),
            Refusal::Subnet
        );
        // Another /24 is not affected; IPv4-mapped IPv6 counts as its IPv4 address.
        assert!(a.handle_incoming(now, "tcp", ip("10.0.1.1"), 5).is_ok());
        assert_eq!(
            a.handle_incoming(now, "tcp", ip("::ffff:10.0.0.9"), 6)
                .unwrap_err(),
            Refusal::Subnet
        );
        // A finished handshake gives its place back, once.
        assert_eq!(a.release(third.id), Some(3));
        assert_eq!(a.release(third.id), None);
        assert!(a.handle_incoming(now, "tcp", ip("10.0.0.3"), 7).is_ok());
    }

    #[test]
    fn zero_means_no_budget() {
        let now = Instant::now();
        let mut a = admission(100, 0, 0);
        for i in 0..50 {
            assert!(a.handle_incoming(now, "tcp", ip("10.0.0.1"), i).is_ok());
        }
        assert_eq!(a.pending("tcp"), 50);
    }

    #[test]
    fn transports_have_separate_pools() {
        let now = Instant::now();
        let mut a = admission(4, 0, 0);
        for i in 0..4 {
            let ok = a
                .handle_incoming(now, "tcp", ip(&format!("10.0.{i}.1")), i)
                .unwrap();
            assert!(ok.evicted.is_none());
        }
        let quic = a
            .handle_incoming(now, "quic-v1", ip("10.9.0.1"), 9)
            .unwrap();
        assert!(quic.evicted.is_none(), "a full TCP pool leaves QUIC alone");
        assert_eq!(quic.deadline, now + FULL);
        assert_eq!((a.pending("tcp"), a.pending("quic-v1")), (4, 1));
    }

    #[test]
    fn a_full_pool_evicts_the_oldest_of_the_most_crowded_subnet() {
        let t0 = Instant::now();
        let mut a = admission(4, 0, 0);
        // An honest handshake first, then three from one attacker /24.
        a.handle_incoming(t0, "tcp", ip("192.0.2.1"), 100).unwrap();
        for i in 0..3u32 {
            let t = t0 + Duration::from_millis(u64::from(i) + 1);
            a.handle_incoming(t, "tcp", ip(&format!("198.51.100.{i}")), i)
                .unwrap();
        }
        // Full: the next attacker socket evicts the attacker's oldest, not the older
        // honest one.
        let t = t0 + Duration::from_millis(10);
        let next = a.handle_incoming(t, "tcp", ip("198.51.100.9"), 3).unwrap();
        assert_eq!(next.evicted, Some(0));
        assert_eq!(a.pending("tcp"), 4);
        // So does an honest newcomer from elsewhere.
        let honest = a.handle_incoming(t, "tcp", ip("203.0.113.1"), 101).unwrap();
        assert_eq!(honest.evicted, Some(1));
    }

    #[test]
    fn with_every_subnet_alike_the_oldest_goes() {
        let t0 = Instant::now();
        let mut a = admission(3, 0, 0);
        for i in 0..3u32 {
            let t = t0 + Duration::from_millis(u64::from(i));
            a.handle_incoming(t, "tcp", ip(&format!("10.0.{i}.1")), i)
                .unwrap();
        }
        let mut evicted = Vec::new();
        for i in 3..6u32 {
            let t = t0 + Duration::from_millis(u64::from(i));
            let ok = a
                .handle_incoming(t, "tcp", ip(&format!("10.0.{i}.1")), i)
                .unwrap();
            evicted.extend(ok.evicted);
        }
        assert_eq!(evicted, vec![0, 1, 2]);
    }

    #[test]
    fn the_deadline_tightens_past_half_full() {
        let now = Instant::now();
        let mut a = admission(10, 0, 0);
        let mut deadlines = Vec::new();
        for i in 0..11u32 {
            let ok = a
                .handle_incoming(now, "tcp", ip(&format!("10.0.{i}.1")), i)
                .unwrap();
            deadlines.push(ok.deadline - now);
        }
        assert!(deadlines[..5].iter().all(|d| *d == FULL), "{deadlines:?}");
        // 6 of 10: 4/5 of the way from the floor to the full deadline.
        assert_eq!(deadlines[5], FLOOR + (FULL - FLOOR).mul_f64(0.8));
        assert!(deadlines[5..].windows(2).all(|w| w[1] <= w[0]));
        assert_eq!(deadlines[9], FLOOR);
        assert_eq!(deadlines[10], FLOOR, "full, after an eviction");
        // The floor never exceeds the full deadline.
        let mut b = Admission::new(Config {
            max_pending: 1,
            per_ip: 0,
            per_subnet: 0,
            deadline: Duration::from_millis(500),
            deadline_floor: FLOOR,
        });
        let ok = b.handle_incoming(now, "tcp", None, 0).unwrap();
        assert_eq!(ok.deadline - now, Duration::from_millis(500));
    }

    #[test]
    fn released_places_are_reused_and_counts_return_to_zero() {
        let now = Instant::now();
        let mut a = admission(2, 1, 1);
        let ids: Vec<PendingId> = (0..2u32)
            .map(|i| {
                a.handle_incoming(now, "tcp", ip(&format!("10.0.{i}.1")), i)
                    .unwrap()
                    .id
            })
            .collect();
        for id in ids {
            a.release(id);
        }
        assert_eq!(a.pending("tcp"), 0);
        assert!(a.pools.is_empty() && a.ips.is_empty() && a.subnets.is_empty());
        assert!(a.handle_incoming(now, "tcp", ip("10.0.0.1"), 9).is_ok());
    }
    fn peer() -> PeerId {
        crate::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    #[test]
    fn bans_refuse_their_peer_or_prefix_until_they_lapse() {
        let t0 = Instant::now();
        let mut bans = Bans::default();
        let (p, q) = (peer(), peer());
        let net: IpPrefix = "10.1.0.0/16".parse().unwrap();
        let a = bans
            .handle_ban(t0, BanTarget::Peer(p), Some(t0 + FULL), "admin")
            .unwrap();
        bans.handle_ban(t0, BanTarget::Prefix(net), None, "config")
            .unwrap();
        assert!(bans.peer_banned(&p, t0) && !bans.peer_banned(&q, t0));
        assert!(bans.ip_banned(ip("10.1.200.3").unwrap(), t0));
        assert!(
            bans.ip_banned(ip("::ffff:10.1.0.1").unwrap(), t0),
            "IPv4-mapped"
        );
        assert!(!bans.ip_banned(ip("10.2.0.1").unwrap(), t0));
        // The peer's ban lapses; the prefix's (no expiry) stays.
        assert!(!bans.peer_banned(&p, t0 + FULL));
        assert_eq!(bans.list(t0 + FULL).len(), 1);
        assert_eq!(bans.remove(t0 + FULL, a.id), None, "lapsed already");
    }

    #[test]
    fn the_same_target_and_origin_is_one_ban_and_lifting_is_by_id() {
        let t0 = Instant::now();
        let mut bans = Bans::default();
        let p = peer();
        let a = bans
            .handle_ban(t0, BanTarget::Peer(p), None, "admin")
            .unwrap();
        let again = bans
            .handle_ban(t0, BanTarget::Peer(p), Some(t0 + FLOOR), "admin")
            .unwrap();
        assert_eq!((again.id, again.until), (a.id, Some(t0 + FLOOR)));
        // Another origin is another ban: lifting one leaves the other.
        let c = bans
            .handle_ban(t0, BanTarget::Peer(p), None, "config")
            .unwrap();
        assert_ne!(c.id, a.id);
        assert_eq!(bans.remove(t0, a.id).map(|b| b.origin), Some("admin"));
        assert!(bans.peer_banned(&p, t0));
        assert!(bans.remove(t0, c.id).is_some());
        assert!(!bans.peer_banned(&p, t0) && bans.list(t0).is_empty());
    }

    #[test]
    fn the_ban_list_is_bounded() {
        let t0 = Instant::now();
        let mut bans = Bans::default();
        for i in 0..MAX_BANS {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i as u32);
            let prefix = IpPrefix::of(ip.into(), 32, 128);
            bans.handle_ban(t0, BanTarget::Prefix(prefix), None, "admin")
                .unwrap();
        }
        let more = BanTarget::Peer(peer());
        assert_eq!(
            bans.handle_ban(t0, more, None, "admin"),
            Err(BanError::Full)
        );
        // Lapsed bans make room.
        let mut bans = Bans::default();
        for i in 0..MAX_BANS {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i as u32);
            let prefix = IpPrefix::of(ip.into(), 32, 128);
            bans.handle_ban(t0, BanTarget::Prefix(prefix), Some(t0 + FLOOR), "admin")
                .unwrap();
        }
        assert!(bans.handle_ban(t0 + FLOOR, more, None, "admin").is_ok());
    }
}
