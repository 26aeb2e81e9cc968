//! Dial planning: which of a peer's addresses to try, in what order, and which to skip
//! for now. Pure logic — time is an input — used by [`crate::host::Host::connect`].
//!
//! Order: by transport (QUIC, then TCP, then WebSocket, relayed circuits last), IPv6 and
//! IPv4 interleaved within a rank (happy eyeballs; the host staggers the attempts).
//! Loopback addresses are tried only when we ourselves are on loopback, private ones only
//! when we have a private address too. A failing address backs off exponentially.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use multiaddr::{Multiaddr, Protocol};

use crate::addresses;

/// Delay between starting successive attempts (happy eyeballs).
pub const STAGGER: Duration = Duration::from_millis(250);
/// Attempts in flight for one peer at most.
pub const MAX_PARALLEL: usize = 8;
/// First backoff after a failure; doubles per failure up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Addresses remembered in the backoff table.
pub const MAX_BACKOFF_ENTRIES: usize = 4096;

/// What we know about our own network position.
#[derive(Debug, Clone, Copy, Default)]
pub struct Local {
    pub on_loopback: bool,
    pub on_private_network: bool,
}

impl Local {
    /// `bound` are the listen addresses as configured (a node bound to `0.0.0.0` is not
    /// "on loopback": remote peers' loopback addresses are useless to it, and dialing them
    /// would reach local services); `interfaces` are those addresses expanded.
    pub fn from_addrs(bound: &[Multiaddr], interfaces: &[Multiaddr]) -> Self {
        Local {
            on_loopback: bound.iter().any(|a| ip_class(a) == Some(IpClass::Loopback)),
            on_private_network: interfaces
                .iter()
                .any(|a| ip_class(a) == Some(IpClass::Private)),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum IpClass {
    Loopback,
    Private,
    Public,
}

fn ip_class(a: &Multiaddr) -> Option<IpClass> {
    let ip: std::net::IpAddr = match a.iter().next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    Some(if ip.is_loopback() {
        IpClass::Loopback
    } else if addresses::is_public(a) {
        IpClass::Public
    } else {
        IpClass::Private
    })
}

fn transport_rank(a: &Multiaddr) -> u8 {
    let mut rank = 1; // TCP and anything unknown
    for p in a.iter() {
        match p {
            Protocol::P2pCircuit => return 9,
            Protocol::QuicV1 => rank = 0,
            Protocol::Ws(_) | Protocol::Wss(_) => rank = rank.max(2),
            _ => {}
        }
    }
    rank
}

fn is_ipv6(a: &Multiaddr) -> bool {
    matches!(a.iter().next(), Some(Protocol::Ip6(_) | Protocol::Dns6(_)))
}

/// Orders and filters a peer's addresses for dialing.
pub fn rank(addrs: &[Multiaddr], local: Local) -> Vec<Multiaddr> {
    let mut usable: Vec<&Multiaddr> = addrs
        .iter()
        .filter(|a| match ip_class(a) {
            Some(IpClass::Loopback) => local.on_loopback,
            Some(IpClass::Private) => local.on_private_network || local.on_loopback,
            _ => true,
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    usable.retain(|a| seen.insert(*a));
    usable.sort_by_key(|a| transport_rank(a));
    // Interleave IPv6 and IPv4 within each transport rank, IPv6 first.
    let mut out = Vec::with_capacity(usable.len());
    let mut i = 0;
    while i < usable.len() {
        let r = transport_rank(usable[i]);
        let group: Vec<&Multiaddr> = usable[i..]
            .iter()
            .take_while(|a| transport_rank(a) == r)
            .copied()
            .collect();
        i += group.len();
        let (v6, v4): (Vec<&Multiaddr>, Vec<&Multiaddr>) =
            group.into_iter().partition(|a| is_ipv6(a));
        let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
        loop {
            match (a.next(), b.next()) {
                (None, None) => break,
                (x, y) => out.extend(x.into_iter().chain(y).cloned()),
            }
        }
    }
    out
}

/// Failing addresses and until when we leave them alone.
#[derive(Debug, Default)]
pub struct Backoff {
    entries: HashMap<Multiaddr, (Instant, u32)>,
}

impl Backoff {
    pub fn is_backing_off(&self, addr: &Multiaddr, now: Instant) -> bool {
        self.entries
            .get(addr)
            .is_some_and(|(until, _)| *until > now)
    }

    pub fn failed(&mut self, addr: &Multiaddr, now: Instant) {
        if !self.entries.contains_key(addr) && self.entries.len() >= MAX_BACKOFF_ENTRIES {
            // Forget expired entries first, else the one that frees soonest.
            self.entries.retain(|_, (until, _)| *until > now);
            if self.entries.len() >= MAX_BACKOFF_ENTRIES {
                if let Some(a) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (until, _))| *until)
                    .map(|(a, _)| a.clone())
                {
                    self.entries.remove(&a);
                }
            }
        }
        let entry = self.entries.entry(addr.clone()).or_insert((now, 0));
        entry.1 = entry.1.saturating_add(1);
        let factor = 1u32 << (entry.1 - 1).min(16);
        entry.0 = now + BASE_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF);
    }

    pub fn succeeded(&mut self, addr: &Multiaddr) {
        self.entries.remove(addr);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranks_quic_tcp_ws_relay_and_interleaves_families() {
        let addrs = vec![
            m("/ip4/1.1.1.1/tcp/1/p2p-circuit"),
            m("/ip4/1.1.1.1/tcp/1/ws"),
            m("/ip4/1.1.1.1/tcp/1"),
            m("/ip4/1.1.1.2/tcp/1"),
            m("/ip6/2606:4700::1/tcp/1"),
            m("/ip4/1.1.1.1/udp/1/quic-v1"),
        ];
        let ranked = rank(&addrs, Local::default());
        assert_eq!(
            ranked,
            vec![
                m("/ip4/1.1.1.1/udp/1/quic-v1"),
                m("/ip6/2606:4700::1/tcp/1"),
                m("/ip4/1.1.1.1/tcp/1"),
                m("/ip4/1.1.1.2/tcp/1"),
                m("/ip4/1.1.1.1/tcp/1/ws"),
                m("/ip4/1.1.1.1/tcp/1/p2p-circuit"),
            ]
        );
    }

    #[test]
    fn private_and_loopback_only_from_matching_networks() {
        let addrs = vec![
            m("/ip4/127.0.0.1/tcp/1"),
            m("/ip4/10.0.0.1/tcp/1"),
            m("/ip4/8.8.8.8/tcp/1"),
        ];
        assert_eq!(
            rank(&addrs, Local::default()),
            vec![m("/ip4/8.8.8.8/tcp/1")]
        );
        let private = Local::from_addrs(&[], &[m("/ip4/192.168.1.5/tcp/4001")]);
        assert_eq!(
            rank(&addrs, private),
            vec![m("/ip4/10.0.0.1/tcp/1"), m("/ip4/8.8.8.8/tcp/1")]
        );
        let loopback = Local::from_addrs(
            &[m("/ip4/127.0.0.1/tcp/4001")],
            &[m("/ip4/127.0.0.1/tcp/4001")],
        );
        assert_eq!(rank(&addrs, loopback).len(), 3);
        // Bound to 0.0.0.0: the interfaces include loopback, but that is not our network.
        let wildcard = Local::from_addrs(
            &[m("/ip4/0.0.0.0/tcp/4001")],
            &[m("/ip4/127.0.0.1/tcp/4001")],
        );
        assert_eq!(rank(&addrs, wildcard), vec![m("/ip4/8.8.8.8/tcp/1")]);
    }

    #[test]
    fn backoff_doubles_caps_and_clears() {
        let mut b = Backoff::default();
        let a = m("/ip4/1.1.1.1/tcp/1");
        let t0 = Instant::now();
        b.failed(&a, t0);
        assert!(b.is_backing_off(&a, t0 + Duration::from_millis(999)));
        assert!(!b.is_backing_off(&a, t0 + Duration::from_secs(1)));
        b.failed(&a, t0);
        assert!(b.is_backing_off(&a, t0 + Duration::from_millis(1999)));
        for _ in 0..40 {
            b.failed(&a, t0);
        }
        assert!(b.is_backing_off(&a, t0 + MAX_BACKOFF - Duration::from_secs(1)));
        assert!(!b.is_backing_off(&a, t0 + MAX_BACKOFF));
        b.succeeded(&a);
        assert!(!b.is_backing_off(&a, t0));
        for i in 0..(MAX_BACKOFF_ENTRIES + 10) {
            b.failed(&m(&format!("/ip4/2.2.2.2/tcp/{}", i % 65535)), t0);
        }
        assert!(b.len() <= MAX_BACKOFF_ENTRIES);
    }
}
