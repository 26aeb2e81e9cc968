//! DNS multiaddrs (`/dns`, `/dns4`, `/dns6`, `/dnsaddr`) resolved with hickory-resolver.
//!
//! `/dns*` names become `/ip4` or `/ip6` addresses (A/AAAA records, the rest of the
//! multiaddr kept). `/dnsaddr/DOMAIN` reads the TXT records of `_dnsaddr.DOMAIN`, each
//! `dnsaddr=<multiaddr>`, and resolves them in turn — recursively, but bounded in depth,
//! number of queries and number of results, with loops cut. When the dialed address ends
//! in `/p2p/ID`, only resolved addresses ending in the same `/p2p/ID` are kept.
//! Garbage in answers (bad multiaddrs, other TXT records) is skipped, never fatal.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use multiaddr::{Multiaddr, Protocol};

/// How many `/dnsaddr` levels we follow.
pub const MAX_DEPTH: usize = 4;
/// DNS queries one resolution may make.
pub const MAX_LOOKUPS: usize = 32;
/// Addresses one resolution may return.
pub const MAX_ADDRS: usize = 32;
/// `dnsaddr=` entries taken from one name.
pub const MAX_TXT_ENTRIES: usize = 16;

#[derive(Debug, Clone)]
pub struct Config {
    /// Name servers to ask; empty means the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// Bound on one query.
    pub timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("resolver setup: {0}")]
    Setup(String),
    #[error("lookup of {name} failed: {reason}")]
    Lookup { name: String, reason: String },
    #[error("{0} has no usable records")]
    NotFound(String),
    #[error("/dnsaddr chain deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("/dnsaddr records loop")]
    Loop,
    #[error("more than {MAX_LOOKUPS} DNS queries needed")]
    TooManyLookups,
}

impl crate::fault::Classify for Error {
    fn fault(&self) -> crate::fault::Fault {
        use crate::fault::Fault;
        match self {
            Error::Setup(_) => Fault::Local,
            Error::Lookup { .. } | Error::NotFound(_) => Fault::Io,
            Error::TooDeep | Error::TooManyLookups => Fault::Limit,
            Error::Loop => Fault::Protocol,
        }
    }
}

/// Is this a multiaddr that needs DNS before it can be dialed?
pub fn is_dns(addr: &Multiaddr) -> bool {
    matches!(
        addr.iter().next(),
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_) | Protocol::Dnsaddr(_))
    )
}

/// A DNS resolver for multiaddrs. Cheap to share behind an `Arc`.
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    pub fn new(config: &Config) -> Result<Self, Error> {
        let mut opts = ResolverOpts::default();
        opts.timeout = config.timeout;
        opts.attempts = 1;
        let builder = if config.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| Error::Setup(e.to_string()))?
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|sa| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = sa.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = sa.port();
                    NameServerConfig::new(sa.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let inner = builder
            .with_options(opts)
            .build()
            .map_err(|e| Error::Setup(e.to_string()))?;
        Ok(Resolver { inner })
    }

    /// Resolves a DNS multiaddr into dialable ones (a non-DNS address comes back as is).
    pub async fn resolve(&self, addr: &Multiaddr) -> Result<Vec<Multiaddr>, Error> {
        let wanted_peer = match addr.iter().last() {
            Some(Protocol::P2p(p)) => Some(p),
            _ => None,
        };
        let mut out: Vec<Multiaddr> = Vec::new();
        let mut queue: VecDeque<(Multiaddr, usize)> = VecDeque::from([(addr.clone(), 0)]);
        let mut seen: HashSet<String> = HashSet::new();
        let (mut lookups, mut too_deep, mut looped) = (0usize, false, false);
        let mut last_error = None;
        while let Some((current, depth)) = queue.pop_front() {
            if out.len() >= MAX_ADDRS {
                break;
            }
            let mut parts = current.iter();
            let first = parts.next();
            let rest: Multiaddr = parts.collect();
            match first {
                Some(Protocol::Dnsaddr(domain)) => {
                    if depth >= MAX_DEPTH {
                        too_deep = true;
                        continue;
                    }
                    if !seen.insert(domain.to_ascii_lowercase()) {
                        looped = true;
                        continue;
                    }
                    lookups += 1;
                    if lookups > MAX_LOOKUPS {
                        return Err(Error::TooManyLookups);
                    }
                    match self.txt_entries(&domain).await {
                        Ok(entries) => queue.extend(entries.into_iter().map(|a| (a, depth + 1))),
                        Err(e) => last_error = Some(e),
                    }
                }
                Some(p @ (Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_))) => {
                    lookups += 1;
                    if lookups > MAX_LOOKUPS {
                        return Err(Error::TooManyLookups);
                    }
                    let rest = keep_server_name(&p, &rest);
                    match self.ips(&p).await {
                        Ok(ips) => {
                            for ip in ips {
                                let head = match ip {
                                    IpAddr::V4(v4) => Protocol::Ip4(v4),
                                    IpAddr::V6(v6) => Protocol::Ip6(v6),
                                };
                                out.push(std::iter::once(head).chain(rest.iter()).collect());
                            }
                        }
                        Err(e) => last_error = Some(e),
                    }
                }
                Some(_) => out.push(current),
                None => {}
            }
        }
        // multiaddr's DNSADDR.md: with a /p2p/ suffix, keep only addresses ending in it.
        if let Some(peer) = wanted_peer {
            out.retain(|a| matches!(a.iter().last(), Some(Protocol::P2p(p)) if p == peer));
        }
        out.dedup();
        out.truncate(MAX_ADDRS);
        if !out.is_empty() {
            return Ok(out);
        }
        Err(if too_deep {
            Error::TooDeep
        } else if looped {
            Error::Loop
        } else {
            last_error.unwrap_or_else(|| Error::NotFound(addr.to_string()))
        })
    }

    async fn txt_entries(&self, domain: &str) -> Result<Vec<Multiaddr>, Error> {
        let name = format!("_dnsaddr.{}.", domain.trim_end_matches('.'));
        let lookup = self
            .inner
            .txt_lookup(name.as_str())
            .await
            .map_err(|e| lookup_error(&name, &e))?;
        let mut entries = Vec::new();
        for record in lookup.answers() {
            let RData::TXT(txt) = &record.data else {
                continue;
            };
            let text: Vec<u8> = txt
                .txt_data
                .iter()
                .flat_map(|chunk| chunk.iter().copied())
                .collect();
            let Some(value) = std::str::from_utf8(&text)
                .ok()
                .and_then(|t| t.strip_prefix("dnsaddr="))
            else {
                continue;
            };
            if let Ok(addr) = value.parse::<Multiaddr>() {
                entries.push(addr);
            }
            if entries.len() >= MAX_TXT_ENTRIES {
                break;
            }
        }
        Ok(entries)
    }

    async fn ips(&self, p: &Protocol<'_>) -> Result<Vec<IpAddr>, Error> {
        let (host, v4, v6) = match p {
            Protocol::Dns(h) => (h, true, true),
            Protocol::Dns4(h) => (h, true, false),
            Protocol::Dns6(h) => (h, false, true),
            _ => return Ok(Vec::new()),
        };
        let name = format!("{}.", host.trim_end_matches('.'));
        let lookup = self
            .inner
            .lookup_ip(name.as_str())
            .await
            .map_err(|e| lookup_error(&name, &e))?;
        let ips: Vec<IpAddr> = lookup
            .iter()
            .filter(|ip| (ip.is_ipv4() && v4) || (ip.is_ipv6() && v6))
            .collect();
        if ips.is_empty() {
            return Err(Error::NotFound(name));
        }
        Ok(ips)
    }
}

/// A resolved `/dns*/NAME/tcp/P/wss` becomes `/ipN/../tcp/P/tls/sni/NAME/ws`: TLS still
/// needs the name to check the server's certificate once the name is gone.
fn keep_server_name(dns: &Protocol<'_>, rest: &Multiaddr) -> Multiaddr {
    let (Protocol::Dns(name) | Protocol::Dns4(name) | Protocol::Dns6(name)) = dns else {
        return rest.clone();
    };
    let has_sni = rest.iter().any(|p| matches!(p, Protocol::Sni(_)));
    let mut out = Multiaddr::empty();
    for p in rest.iter() {
        match p {
            Protocol::Wss(path) if path == "/" => {
                out.push(Protocol::Tls);
                out.push(Protocol::Sni(name.clone()));
                out.push(Protocol::Ws(path));
            }
            Protocol::Tls if !has_sni => {
                out.push(Protocol::Tls);
                out.push(Protocol::Sni(name.clone()));
            }
            p => out.push(p),
        }
    }
    out
}

fn lookup_error(name: &str, e: &hickory_resolver::net::NetError) -> Error {
    if e.is_no_records_found() || e.is_nx_domain() {
        Error::NotFound(name.to_string())
    } else {
        Error::Lookup {
            name: name.to_string(),
            reason: e.to_string(),
        }
    }
}
