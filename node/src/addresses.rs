//! Which of our addresses we tell a peer about.
//!
//! Candidates are our listen addresses (interfaces expanded), the addresses peers observe
//! us at once enough distinct peers agree, and addresses the operator announces. An
//! operator's announce list, when set, is used as given. Otherwise private, loopback and
//! link-local addresses are left out of what public peers hear (they cannot use them, and
//! they reveal the internal network), unless the operator allows it.
//! Pure logic: no clock, no I/O.

use std::collections::HashMap;
use std::net::IpAddr;

use multiaddr::{Multiaddr, Protocol};

use crate::identity::PeerId;

/// Distinct observed addresses we track.
pub const MAX_OBSERVED: usize = 16;
/// Reporters remembered per observed address.
pub const MAX_REPORTERS: usize = 8;

#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to advertise instead of the computed ones (e.g. a public DNS name).
    pub announce: Vec<Multiaddr>,
    /// Advertise private and loopback addresses to public peers too.
    pub advertise_private: bool,
    /// Distinct peers that must report the same observed address before we use it.
    pub observed_confirmations: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            announce: Vec::new(),
            advertise_private: false,
            observed_confirmations: 3,
        }
    }
}

/// Is the address's IP globally routable?
pub fn is_public(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => is_global(IpAddr::V4(ip)),
        Some(Protocol::Ip6(ip)) => is_global(IpAddr::V6(ip)),
        // Names are the operator's choice; treat them as public.
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_) | Protocol::Dnsaddr(_)) => {
            true
        }
        _ => false,
    }
}

fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_global(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}

/// Addresses peers say they see us at, with who said so.
#[derive(Debug, Default)]
pub struct Observed {
    entries: HashMap<Multiaddr, Vec<PeerId>>,
}

impl Observed {
    /// Records that `reporter` sees us at `addr` (a `/p2p/` suffix is dropped).
    pub fn record(&mut self, addr: &Multiaddr, reporter: PeerId) {
        let addr: Multiaddr = addr
            .iter()
            .filter(|p| !matches!(p, Protocol::P2p(_)))
            .collect();
        if !matches!(
            addr.iter().next(),
            Some(Protocol::Ip4(_) | Protocol::Ip6(_))
        ) {
            return;
        }
        if !self.entries.contains_key(&addr) && self.entries.len() >= MAX_OBSERVED {
            // Make room by forgetting the least supported address.
            if let Some(weakest) = self
                .entries
                .iter()
                .min_by_key(|(_, r)| r.len())
                .map(|(a, _)| a.clone())
            {
                self.entries.remove(&weakest);
            }
        }
        let reporters = self.entries.entry(addr).or_default();
        if !reporters.contains(&reporter) {
            if reporters.len() >= MAX_REPORTERS {
                reporters.remove(0);
            }
            reporters.push(reporter);
        }
    }

    /// Addresses reported by at least `n` distinct peers.
    /// Every address reported, the best supported first (ties in address order): the
    /// candidates hole punching tries, where one report (the relay's) may be all there is.
    pub fn reported(&self) -> Vec<Multiaddr> {
        let mut out: Vec<(&Multiaddr, usize)> =
            self.entries.iter().map(|(a, r)| (a, r.len())).collect();
        out.sort_by(|(a, x), (b, y)| y.cmp(x).then_with(|| a.to_string().cmp(&b.to_string())));
        out.into_iter().map(|(a, _)| a.clone()).collect()
    }

    pub fn confirmed(&self, n: usize) -> Vec<Multiaddr> {
        let mut out: Vec<Multiaddr> = self
            .entries
            .iter()
            .filter(|(_, r)| r.len() >= n.max(1))
            .map(|(a, _)| a.clone())
            .collect();
        out.sort_by_key(|a| a.to_string());
        out
    }
}

/// What AutoNAT found about our addresses: reached from outside, or not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    pub reachable: Vec<Multiaddr>,
    pub unreachable: Vec<Multiaddr>,
}

/// What we advertise to a peer, given whether that peer reached us over a public address:
/// listen addresses, observed ones enough peers agree on, and those AutoNAT servers
/// reached (however few peers observed them); public peers never hear the ones AutoNAT
/// servers could not reach (they would only waste their dials).
pub fn advertise(
    listen: &[Multiaddr],
    confirmed: &[Multiaddr],
    verified: &Verified,
    config: &Config,
    to_public_peer: bool,
) -> Vec<Multiaddr> {
    if !config.announce.is_empty() {
        return config.announce.clone();
    }
    let mut out: Vec<Multiaddr> = Vec::new();
    for a in listen.iter().chain(confirmed).chain(&verified.reachable) {
        if out.contains(a) {
            continue;
        }
        if to_public_peer && !config.advertise_private && !is_public(a) {
            continue;
        }
        if to_public_peer && verified.unreachable.contains(a) {
            continue;
        }
        out.push(a.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;

    fn m(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn classifies_addresses() {
        for public in [
            "/ip4/8.8.8.8/tcp/1",
            "/ip6/2606:4700::1/tcp/1",
            "/dns4/boot.example.com/tcp/1",
        ] {
            assert!(is_public(&m(public)), "{public}");
        }
        for private in [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/10.1.2.3/tcp/1",
            "/ip4/192.168.1.1/tcp/1",
            "/ip4/172.16.0.1/tcp/1",
            "/ip4/100.64.0.1/tcp/1",
            "/ip4/169.254.1.1/tcp/1",
            "/ip4/0.0.0.0/tcp/1",
            "/ip6/::1/tcp/1",
            "/ip6/fd00::2/tcp/1",
            "/ip6/fe80::1/tcp/1",
            "/ip6/::ffff:10.0.0.1/tcp/1",
            "/memory/5",
        ] {
            assert!(!is_public(&m(private)), "{private}");
        }
    }

    #[test]
    fn observed_needs_distinct_confirmations_and_stays_bounded() {
        let mut o = Observed::default();
        let a = m("/ip4/203.0.113.7/tcp/4001");
        let p1 = Keypair::generate_ed25519().public().to_peer_id();
        let p2 = Keypair::generate_ed25519().public().to_peer_id();
        let p3 = Keypair::generate_ed25519().public().to_peer_id();
        o.record(&a, p1);
        o.record(&a, p1);
        o.record(&a.clone().with(Protocol::P2p(p2)), p2);
        assert!(o.confirmed(3).is_empty());
        o.record(&a, p3);
        assert_eq!(o.confirmed(3), vec![a.clone()]);
        // A flood of distinct addresses from one peer cannot push the confirmed one out.
        for port in 0..100u16 {
            o.record(&m(&format!("/ip4/198.51.100.1/tcp/{port}")), p1);
        }
        assert!(o.entries.len() <= MAX_OBSERVED);
        assert_eq!(o.confirmed(3), vec![a]);
        o.record(&m("/memory/1"), p1);
        assert!(!o.entries.contains_key(&m("/memory/1")));
    }

    #[test]
    fn advertisement_policy() {
        let listen = vec![
            m("/ip4/127.0.0.1/tcp/1"),
            m("/ip4/10.0.0.5/tcp/1"),
            m("/ip4/8.8.4.4/tcp/1"),
        ];
        let confirmed = vec![m("/ip4/1.0.0.1/tcp/1")];
        let cfg = Config::default();
        let none = Verified::default();
        assert_eq!(advertise(&listen, &confirmed, &none, &cfg, false).len(), 4);
        assert_eq!(
            advertise(&listen, &confirmed, &none, &cfg, true),
            vec![m("/ip4/8.8.4.4/tcp/1"), m("/ip4/1.0.0.1/tcp/1")]
        );
        // AutoNAT's verdicts: an unreachable address is kept from public peers only, a
        // reachable one is added though no peer confirmed it.
        let verified = Verified {
            reachable: vec![m("/ip4/9.9.9.9/udp/1/quic-v1")],
            unreachable: vec![m("/ip4/1.0.0.1/tcp/1")],
        };
        assert_eq!(
            advertise(&listen, &confirmed, &verified, &cfg, true),
            vec![m("/ip4/8.8.4.4/tcp/1"), m("/ip4/9.9.9.9/udp/1/quic-v1")]
        );
        assert_eq!(
            advertise(&listen, &confirmed, &verified, &cfg, false).len(),
            5
        );
        let open = Config {
            advertise_private: true,
            ..Config::default()
        };
        assert_eq!(advertise(&listen, &confirmed, &none, &open, true).len(), 4);
        let announce = Config {
            announce: vec![m("/dns4/boot.example.com/tcp/4001")],
            ..Config::default()
        };
        assert_eq!(
            advertise(&listen, &confirmed, &none, &announce, true),
            announce.announce
        );
    }
}
