//! IP prefixes: the network an address sits in, for budgets that one operator should not
//! be able to dodge by using many addresses (handshake admission, per-subnet connection
//! caps, DHT request rates, routing-table diversity).
//!
//! What it is not: a routing or CIDR-matching library. A prefix is a key for counting —
//! two addresses share a budget exactly when they share the prefix. An IPv4-mapped IPv6
//! address (`::ffff:a.b.c.d`) counts as its IPv4 address, so a dual-stack listener cannot
//! be used to double a budget.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use multiaddr::{Multiaddr, Protocol};

/// The first `bits` bits of an address, the rest zeroed. Prefixes of different lengths are
/// different keys, even when one contains the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpPrefix {
    V4 { net: Ipv4Addr, bits: u8 },
    V6 { net: Ipv6Addr, bits: u8 },
}

impl IpPrefix {
    /// Prefix lengths of a network operator's block: IPv4 /16, IPv6 /48. Used for DHT
    /// routing-table diversity and per-group request rates.
    pub const GROUP: (u8, u8) = (16, 48);
    /// Prefix lengths of one site: IPv4 /24, IPv6 /48. Used for handshake admission and
    /// per-subnet connection caps.
    pub const SUBNET: (u8, u8) = (24, 48);

    /// The prefix of `ip`: its first `v4_bits` (at most 32) bits if it is IPv4 (or
    /// IPv4-mapped IPv6), its first `v6_bits` (at most 128) otherwise.
    pub fn of(ip: IpAddr, v4_bits: u8, v6_bits: u8) -> IpPrefix {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let bits = v4_bits.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
                IpPrefix::V4 {
                    net: Ipv4Addr::from(u32::from(v4) & mask),
                    bits,
                }
            }
            IpAddr::V6(v6) => {
                let bits = v6_bits.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
                IpPrefix::V6 {
                    net: Ipv6Addr::from(u128::from(v6) & mask),
                    bits,
                }
            }
        }
    }

    /// IPv4 /16 or IPv6 /48 ([`IpPrefix::GROUP`]).
    pub fn group(ip: IpAddr) -> IpPrefix {
        IpPrefix::of(ip, Self::GROUP.0, Self::GROUP.1)
    }

    /// IPv4 /24 or IPv6 /48 ([`IpPrefix::SUBNET`]).
    pub fn subnet(ip: IpAddr) -> IpPrefix {
        IpPrefix::of(ip, Self::SUBNET.0, Self::SUBNET.1)
    }

    /// The prefix of a multiaddr's leading IP address, if it starts with one.
    pub fn of_addr(addr: &Multiaddr, v4_bits: u8, v6_bits: u8) -> Option<IpPrefix> {
        let ip = match addr.iter().next()? {
            Protocol::Ip4(ip) => IpAddr::V4(ip),
            Protocol::Ip6(ip) => IpAddr::V6(ip),
            _ => return None,
        };
        Some(IpPrefix::of(ip, v4_bits, v6_bits))
    }

    /// The prefix length.
    pub fn bits(&self) -> u8 {
        match self {
            IpPrefix::V4 { bits, .. } | IpPrefix::V6 { bits, .. } => *bits,
        }
    }

    /// Does `ip` fall in this prefix?
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = self.bits();
        match (self, ip.to_canonical()) {
            (IpPrefix::V4 { .. }, ip @ IpAddr::V4(_)) => IpPrefix::of(ip, bits, 0) == *self,
            (IpPrefix::V6 { .. }, ip @ IpAddr::V6(_)) => IpPrefix::of(ip, 0, bits) == *self,
            _ => false,
        }
    }
}

/// Why a prefix does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error(
        "not an IP address or prefix (expected e.g. 203.0.113.0/24, 2001:db8::/32 or 198.51.100.7)"
    )]
    Syntax,
    #[error("prefix length {0} is longer than the address")]
    Length(u8),
    #[error("bits set past the prefix length: write the network address, {0}")]
    HostBits(IpPrefix),
}

impl std::str::FromStr for IpPrefix {
    type Err = ParseError;

    /// `203.0.113.0/24`, `2001:db8::/32`, or a bare address (a /32 or /128). Bits past the
    /// prefix length are refused rather than cleared: in an access list they are a typo
    /// more often than not.
    fn from_str(s: &str) -> Result<IpPrefix, ParseError> {
        let (ip, bits) = match s.trim().split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (s.trim(), None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| ParseError::Syntax)?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits: u8 = match bits {
            Some(b) => b.parse().map_err(|_| ParseError::Syntax)?,
            None => max,
        };
        if bits > max {
            return Err(ParseError::Length(bits));
        }
        let prefix = match ip {
            IpAddr::V4(_) => IpPrefix::of(ip, bits, 0),
            IpAddr::V6(_) => IpPrefix::of(ip, 0, bits),
        };
        let exact = match (prefix, ip) {
            (IpPrefix::V4 { net, .. }, IpAddr::V4(v4)) => net == v4,
            (IpPrefix::V6 { net, .. }, IpAddr::V6(v6)) => net == v6,
            _ => true,
        };
        if !exact {
            return Err(ParseError::HostBits(prefix));
        }
        Ok(prefix)
    }
}

impl std::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IpPrefix::V4 { net, bits } => write!(f, "{net}/{bits}"),
            IpPrefix::V6 { net, bits } => write!(f, "{net}/{bits}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_strictly() {
        let p: IpPrefix = "203.0.113.0/24".parse().unwrap();
        assert!(p.contains("203.0.113.77".parse().unwrap()));
        assert!(!p.contains("203.0.114.1".parse().unwrap()));
        let one: IpPrefix = "198.51.100.7".parse().unwrap();
        assert_eq!(one.bits(), 32);
        let v6: IpPrefix = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert_eq!(
            "10.0.0.1/24".parse::<IpPrefix>(),
            Err(ParseError::HostBits("10.0.0.0/24".parse().unwrap()))
        );
        assert_eq!(
            "10.0.0.0/33".parse::<IpPrefix>(),
            Err(ParseError::Length(33))
        );
        assert_eq!("peer".parse::<IpPrefix>(), Err(ParseError::Syntax));
        assert_eq!(p.to_string(), "203.0.113.0/24");
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn groups_and_subnets_cut_where_they_say() {
        assert_eq!(
            IpPrefix::group(ip("8.8.4.4")),
            IpPrefix::group(ip("8.8.200.1"))
        );
        assert_ne!(
            IpPrefix::group(ip("8.8.4.4")),
            IpPrefix::group(ip("8.9.4.4"))
        );
        assert_eq!(
            IpPrefix::subnet(ip("10.0.0.1")),
            IpPrefix::subnet(ip("10.0.0.254"))
        );
        assert_ne!(
            IpPrefix::subnet(ip("10.0.0.1")),
            IpPrefix::subnet(ip("10.0.1.1"))
        );
        // IPv6: /48 both ways.
        assert_eq!(
            IpPrefix::group(ip("2600:1:2::1")),
            IpPrefix::group(ip("2600:1:2:ffff::9"))
        );
        // On IPv6, a group and a subnet are the same /48 (equal lengths, equal keys).
        assert_eq!(
            IpPrefix::group(ip("2600:1:2::1")),
            IpPrefix::subnet(ip("2600:1:2::1"))
        );
        assert_ne!(
            IpPrefix::group(ip("2600:1:2::1")),
            IpPrefix::group(ip("2600:1:3::1"))
        );
        assert_eq!(
            IpPrefix::group(ip("2600:1:2::1")).to_string(),
            "2600:1:2::/48"
        );
        assert_eq!(IpPrefix::subnet(ip("10.1.2.3")).to_string(), "10.1.2.0/24");
        // The same network at two lengths is two keys.
        assert_ne!(
            IpPrefix::group(ip("10.1.0.0")),
            IpPrefix::subnet(ip("10.1.0.0"))
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_ipv4() {
        assert_eq!(
            IpPrefix::subnet(ip("::ffff:10.0.0.9")),
            IpPrefix::subnet(ip("10.0.0.1"))
        );
        assert_eq!(
            IpPrefix::group(ip("::ffff:8.8.1.1")),
            IpPrefix::group(ip("8.8.9.9"))
        );
    }

    #[test]
    fn edge_lengths_and_containment() {
        assert_eq!(
            IpPrefix::of(ip("1.2.3.4"), 0, 0),
            IpPrefix::of(ip("200.2.3.4"), 0, 0)
        );
        assert_eq!(
            IpPrefix::of(ip("1.2.3.4"), 40, 0),
            IpPrefix::V4 {
                net: "1.2.3.4".parse().unwrap(),
                bits: 32
            }
        );
        assert_eq!(IpPrefix::of(ip("::1"), 0, 200).bits(), 128);
        let p = IpPrefix::group(ip("8.8.0.0"));
        assert!(p.contains(ip("8.8.255.255")));
        assert!(p.contains(ip("::ffff:8.8.1.1")));
        assert!(!p.contains(ip("8.9.0.0")));
        assert!(!p.contains(ip("2600::1")));
    }

    #[test]
    fn from_multiaddrs() {
        let a: Multiaddr = "/ip4/8.8.4.4/tcp/1".parse().unwrap();
        assert_eq!(
            IpPrefix::of_addr(&a, 16, 48),
            Some(IpPrefix::group(ip("8.8.0.1")))
        );
        let d: Multiaddr = "/dns4/example.com/tcp/1".parse().unwrap();
        assert_eq!(IpPrefix::of_addr(&d, 16, 48), None);
    }
}
