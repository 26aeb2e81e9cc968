//! The AutoNAT server role: dials peers back so they learn whether they are reachable,
//! over AutoNAT v1 (`/libp2p/autonat/1.0.0`, `specs/autonat/autonat-v1.md`) and v2
//! (`/libp2p/autonat/2/dial-request` and `/dial-back`, `specs/autonat/autonat-v2.md`).
//!
//! - **v1**: a peer sends its addresses; we dial those whose IP is the one its request
//!   came from (never another: that would make us a DDoS amplifier), up to
//!   `max_v1_addrs`, and answer `OK` with the address that connected, `E_DIAL_ERROR`,
//!   `E_DIAL_REFUSED` or `E_BAD_REQUEST`.
//! - **v2**: a peer sends addresses and a nonce; we pick the first address we are willing
//!   to dial; if its IP is not the peer's own, the peer first sends `dial_data_bytes`
//!   bytes (amplification attack prevention); we dial it, hand over the nonce on
//!   `/libp2p/autonat/2/dial-back` and answer with the dial's outcome.
//! - **Dial-backs** leave from a new port, never a listening one
//!   ([`pylon_node::host::Host::dial_from_new_port`]): a connection riding on a NAT
//!   mapping the client opened towards us would punch the very hole it tests. Each is
//!   closed once its answer is known.
//! - **Limits** (`core.rs`, pure, on simulated time): requests per minute in total, per
//!   peer, per IP and per subnet; v2 requests needing dial data per minute; requests
//!   running at once in total and per peer; every phase under a timeout. Never over a
//!   relayed connection; private and loopback addresses never (`allow_loopback` is a lab
//!   setting); only TCP, WebSocket and QUIC v1 addresses; no DNS names.
//! - **Visibility**: go-libp2p's `libp2p_autonat_outgoing_dial_*` (v1) and
//!   `libp2p_autonatv2_requests_completed_total` (v2) families, so its dashboards read
//!   them; `pylon_autonat_*`; and [`Status`] for the admin API. No PeerId label.
//!
//! What it is not: the client (which asks servers about our own addresses and decides
//! our reachability: `pylon_node::protocols::autonat`), nor the wire codec
//! (`pylon_node::protocols::autonat::proto`). We dial back with the node's own PeerId
//! (the spec allows another; clients check the nonce, not the PeerId).
//!
//! Files: `core.rs` the budgets and the choice of addresses; `server.rs` the driver.

pub mod core;
mod server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pylon_node::node::{self, Node};
use pylon_node::protocols::autonat::proto::{MAX_DIAL_DATA, MIN_DIAL_DATA};
use serde::{Deserialize, Serialize};

pub use self::core::{Budget, Limits, Permit, Reach, Refusal, Selected};
use crate::config::{self, serde_duration};
use crate::{Metrics, Role};

/// Settings of the role: the section `[roles.autonat]`, every key optional (its default
/// is [`Config::default`], documented in README.md and default.toml). The defaults are at
/// least as strict as go-libp2p's (v2: 60 requests per minute, 12 per peer, 12 needing
/// dial data, 2 at once per peer; v1: 30 per minute, 3 per peer per 90 s, 16 addresses).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Serve AutoNAT v1 (`/libp2p/autonat/1.0.0`).
    pub v1: bool,
    /// Serve AutoNAT v2 (`/libp2p/autonat/2/dial-request`).
    pub v2: bool,
    /// Requests taken per minute, both versions together.
    pub requests_per_minute: usize,
    /// Requests taken per minute from one peer.
    pub per_peer_per_minute: usize,
    /// Requests taken per minute from one IP address.
    pub per_ip_per_minute: usize,
    /// Requests taken per minute from one subnet (IPv4 /24, IPv6 /48).
    pub per_subnet_per_minute: usize,
    /// v2 requests taken per minute whose address needs dial data (another IP than the
    /// client's).
    pub dial_data_per_minute: usize,
    /// Requests running at once (from admission to the answer, dial-back included).
    pub max_concurrent_dial_backs: usize,
    /// Requests running at once for one peer.
    pub per_peer_concurrent: usize,
    /// The dial and, for v2, the nonce exchange on the new connection.
    #[serde(with = "serde_duration")]
    pub dial_back_timeout: Duration,
    /// Bytes a v2 client sends before we dial an address with another IP than its own
    /// (the spec: 30000 to 100000).
    pub dial_data_bytes: u64,
    /// How long a v2 client has to send them.
    #[serde(with = "serde_duration")]
    pub dial_data_timeout: Duration,
    /// Addresses of one v1 request dialed at most (one after the other).
    pub max_v1_addrs: usize,
    /// Lab setting: also dial loopback, private and link-local addresses. Never in
    /// production: it lets anyone make the node dial into its own network.
    pub allow_loopback: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            v1: true,
            v2: true,
            requests_per_minute: 30,
            per_peer_per_minute: 2,
            per_ip_per_minute: 4,
            per_subnet_per_minute: 8,
            dial_data_per_minute: 12,
            max_concurrent_dial_backs: 8,
            per_peer_concurrent: 1,
            dial_back_timeout: Duration::from_secs(15),
            dial_data_bytes: 50_000,
            dial_data_timeout: Duration::from_secs(30),
            max_v1_addrs: 4,
            allow_loopback: false,
        }
    }
}

/// The highest `requests_per_minute` taken: the request log holds this many entries.
pub const MAX_REQUESTS_PER_MINUTE: usize = 100_000;
/// The most addresses of a v1 request dialed (go-libp2p's default).
pub const MAX_V1_ADDRS: usize = 16;
/// The bounds of both timeouts.
const MIN_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

impl Config {
    /// The budgets the core enforces.
    pub fn limits(&self) -> Limits {
        Limits {
            requests_per_minute: self.requests_per_minute,
            per_peer_per_minute: self.per_peer_per_minute,
            per_ip_per_minute: self.per_ip_per_minute,
            per_subnet_per_minute: self.per_subnet_per_minute,
            dial_data_per_minute: self.dial_data_per_minute,
            max_concurrent: self.max_concurrent_dial_backs,
            per_peer_concurrent: self.per_peer_concurrent,
        }
    }
}

/// What the running role is doing (the admin API lists it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub v1: bool,
    pub v2: bool,
    /// Requests answered after a dial (whatever its outcome), per version.
    pub served: BTreeMap<&'static str, u64>,
    /// Requests refused, dropped or reset, per version and reason.
    pub refused: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// Dials made, by outcome (`ok`, `dial_error`, `dial_back_error`, `internal_error`).
    pub dial_backs: BTreeMap<&'static str, u64>,
    /// Admitted requests running now.
    pub in_progress: usize,
    /// Requests taken in the last minute.
    pub requests_last_minute: usize,
    /// Dial data received, bytes.
    pub dial_data_bytes: u64,
    pub budgets: Budgets,
}

/// The budgets configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Budgets {
    pub requests_per_minute: usize,
    pub per_peer_per_minute: usize,
    pub per_ip_per_minute: usize,
    pub per_subnet_per_minute: usize,
    pub dial_data_per_minute: usize,
    pub max_concurrent_dial_backs: usize,
    pub per_peer_concurrent: usize,
    pub dial_data_bytes: u64,
    pub allow_loopback: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {}

/// The running role.
pub struct AutoNat {
    server: Arc<server::Server>,
}

impl AutoNat {
    /// Starts the server on `node`, its metrics in `metrics`: the handlers of the enabled
    /// versions replace any the node had.
    pub fn start_on(node: &Node, config: Config, metrics: &mut Metrics<'_>) -> Arc<AutoNat> {
        Arc::new(AutoNat {
            server: server::Server::start(node, config, metrics),
        })
    }

    /// Dials made so far, both versions, whatever their outcome.
    pub fn dial_backs(&self) -> u64 {
        self.server.dial_backs()
    }
}

impl Role for AutoNat {
    const NAME: &'static str = "autonat";
    type Config = Config;
    type Status = Status;
    type Error = Error;

    fn check(c: &Config) -> Result<(), config::Error> {
        if !c.v1 && !c.v2 {
            return Err(config::bad(
                "roles.autonat.v1",
                "false",
                "roles.autonat.v2 is false too: the role would serve nothing",
            ));
        }
        for (key, v) in [
            ("roles.autonat.requests_per_minute", c.requests_per_minute),
            ("roles.autonat.per_peer_per_minute", c.per_peer_per_minute),
            ("roles.autonat.per_ip_per_minute", c.per_ip_per_minute),
            (
                "roles.autonat.per_subnet_per_minute",
                c.per_subnet_per_minute,
            ),
            ("roles.autonat.dial_data_per_minute", c.dial_data_per_minute),
            (
                "roles.autonat.max_concurrent_dial_backs",
                c.max_concurrent_dial_backs,
            ),
            ("roles.autonat.per_peer_concurrent", c.per_peer_concurrent),
            ("roles.autonat.max_v1_addrs", c.max_v1_addrs),
        ] {
            if v == 0 {
                return Err(config::bad(key, "0", "must be at least 1"));
            }
        }
        if c.requests_per_minute > MAX_REQUESTS_PER_MINUTE {
            return Err(config::bad(
                "roles.autonat.requests_per_minute",
                &c.requests_per_minute.to_string(),
                &format!("must not exceed {MAX_REQUESTS_PER_MINUTE}"),
            ));
        }
        let contradiction = |key: &str, v: usize, other: &str, o: usize| {
            Err(config::bad(
                key,
                &v.to_string(),
                &format!("must not exceed {other} ({o})"),
            ))
        };
        for (key, v, other, o) in [
            (
                "roles.autonat.per_peer_per_minute",
                c.per_peer_per_minute,
                "roles.autonat.requests_per_minute",
                c.requests_per_minute,
            ),
            (
                "roles.autonat.per_peer_per_minute",
                c.per_peer_per_minute,
                "roles.autonat.per_ip_per_minute",
                c.per_ip_per_minute,
            ),
            (
                "roles.autonat.per_ip_per_minute",
                c.per_ip_per_minute,
                "roles.autonat.per_subnet_per_minute",
                c.per_subnet_per_minute,
            ),
            (
                "roles.autonat.per_subnet_per_minute",
                c.per_subnet_per_minute,
                "roles.autonat.requests_per_minute",
                c.requests_per_minute,
            ),
            (
                "roles.autonat.dial_data_per_minute",
                c.dial_data_per_minute,
                "roles.autonat.requests_per_minute",
                c.requests_per_minute,
            ),
            (
                "roles.autonat.per_peer_concurrent",
                c.per_peer_concurrent,
                "roles.autonat.max_concurrent_dial_backs",
                c.max_concurrent_dial_backs,
            ),
            (
                "roles.autonat.max_concurrent_dial_backs",
                c.max_concurrent_dial_backs,
                "roles.autonat.requests_per_minute",
                c.requests_per_minute,
            ),
        ] {
            if v > o {
                return contradiction(key, v, other, o);
            }
        }
        if !(MIN_DIAL_DATA..=MAX_DIAL_DATA).contains(&c.dial_data_bytes) {
            //= specs/autonat/autonat-v2.md#amplification-attack-prevention
            //# To make amplification attacks
            //# unattractive, servers SHOULD ask for 30k to 100k bytes.
            return Err(config::bad(
                "roles.autonat.dial_data_bytes",
                &c.dial_data_bytes.to_string(),
                &format!("must be between {MIN_DIAL_DATA} and {MAX_DIAL_DATA} (the spec's range)"),
            ));
        }
        if c.max_v1_addrs > MAX_V1_ADDRS {
            return Err(config::bad(
                "roles.autonat.max_v1_addrs",
                &c.max_v1_addrs.to_string(),
                &format!("must be between 1 and {MAX_V1_ADDRS}"),
            ));
        }
        for (key, d) in [
            ("roles.autonat.dial_back_timeout", c.dial_back_timeout),
            ("roles.autonat.dial_data_timeout", c.dial_data_timeout),
        ] {
            if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&d) {
                return Err(config::bad(
                    key,
                    &config::format_duration(d),
                    "must be between 1s and 5m",
                ));
            }
        }
        Ok(())
    }

    /// The server needs nothing the node does not do anyway: it answers on whatever
    /// connections peers open to it and dials with the node's transports.
    fn require(_config: &Config, _node: &mut node::Config) -> Result<(), config::Error> {
        Ok(())
    }

    fn start(node: &Node, config: Config, metrics: &mut Metrics<'_>) -> Result<Arc<Self>, Error> {
        Ok(AutoNat::start_on(node, config, metrics))
    }

    fn status(&self) -> Status {
        self.server.status()
    }

    fn protocols(&self) -> Vec<String> {
        self.server.protocols()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn refused(c: Config) -> String {
        AutoNat::check(&c).unwrap_err().to_string()
    }

    #[test]
    fn the_defaults_pass_and_are_at_least_as_strict_as_go_libp2p() {
        let c = Config::default();
        AutoNat::check(&c).unwrap();
        // go-libp2p: v2 60/min global, 12/min per peer, 12/min dial data, 2 at once per
        // peer; v1 30/min global, 15 s dial timeout, 16 addresses.
        assert!(c.requests_per_minute <= 30 && c.per_peer_per_minute <= 12);
        assert!(c.dial_data_per_minute <= 12 && c.per_peer_concurrent <= 2);
        assert!(c.dial_back_timeout <= Duration::from_secs(15) && c.max_v1_addrs <= 16);
        assert!(!c.allow_loopback);
    }

    #[test]
    fn contradictions_name_both_keys() {
        let both = |e: String, a: &str, b: &str| {
            assert!(
                e.contains(&format!("roles.autonat.{a}"))
                    && e.contains(&format!("roles.autonat.{b}")),
                "{e}"
            );
        };
        both(
            refused(Config {
                per_peer_per_minute: 31,
                ..Config::default()
            }),
            "per_peer_per_minute",
            "requests_per_minute",
        );
        both(
            refused(Config {
                per_peer_per_minute: 5,
                ..Config::default()
            }),
            "per_peer_per_minute",
            "per_ip_per_minute",
        );
        both(
            refused(Config {
                per_ip_per_minute: 9,
                ..Config::default()
            }),
            "per_ip_per_minute",
            "per_subnet_per_minute",
        );
        both(
            refused(Config {
                per_subnet_per_minute: 40,
                ..Config::default()
            }),
            "per_subnet_per_minute",
            "requests_per_minute",
        );
        both(
            refused(Config {
                per_peer_concurrent: 9,
                ..Config::default()
            }),
            "per_peer_concurrent",
            "max_concurrent_dial_backs",
        );
        both(
            refused(Config {
                dial_data_per_minute: 31,
                ..Config::default()
            }),
            "dial_data_per_minute",
            "requests_per_minute",
        );
        both(
            refused(Config {
                v1: false,
                v2: false,
                ..Config::default()
            }),
            "v1",
            "v2",
        );
    }

    #[test]
    fn out_of_range_values_are_refused_by_key() {
        for (c, key) in [
            (
                Config {
                    max_concurrent_dial_backs: 0,
                    ..Config::default()
                },
                "max_concurrent_dial_backs",
            ),
            (
                Config {
                    dial_data_bytes: 29_999,
                    ..Config::default()
                },
                "dial_data_bytes",
            ),
            (
                Config {
                    dial_data_bytes: 100_001,
                    ..Config::default()
                },
                "dial_data_bytes",
            ),
            (
                Config {
                    max_v1_addrs: 17,
                    ..Config::default()
                },
                "max_v1_addrs",
            ),
            (
                Config {
                    dial_back_timeout: Duration::from_millis(500),
                    ..Config::default()
                },
                "dial_back_timeout",
            ),
        ] {
            let e = refused(c);
            assert!(e.contains(&format!("roles.autonat.{key}")), "{e}");
        }
        // Each version alone is fine.
        AutoNat::check(&Config {
            v1: false,
            ..Config::default()
        })
        .unwrap();
    }
}
