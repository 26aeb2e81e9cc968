//! The relay role: a circuit relay v2 service (`specs/relay/circuit-v2.md`) for peers
//! behind NAT.
//!
//! - **Reservations**: a peer reserves a slot with `RESERVE` on the hop protocol and gets
//!   the expiry, the relay's addresses and a signed voucher; it refreshes before the
//!   expiry; the slot goes with its last connection.
//! - **Circuits**: `CONNECT` to a peer holding a reservation opens a `STOP` stream to it
//!   and splices the two streams, with the data and duration limits announced to both
//!   ends (duration in seconds, as the spec says).
//! - **Limits** (`core.rs`, pure, on simulated time): reservations in total, per IP and per
//!   subnet; circuits in total and per peer; never over a relayed connection, never a
//!   circuit from a peer to itself.
//! - **Visibility**: go-libp2p's `libp2p_relaysvc_*` families (its Grafana dashboard
//!   reads them), `pylon_relay_*` gauges, and [`Status`] for the admin API. No PeerId
//!   label on any metric.
//!
//! Files: `core.rs` the bookkeeping and limits; `hop.rs` the protocol driver; `splice.rs`
//! the bounded copy of a circuit.

pub mod core;
mod hop;
pub mod splice;

use std::sync::Arc;
use std::time::Duration;

use pylon_node::node::{self, Node};
use serde::{Deserialize, Serialize};

pub use self::core::{Entry, Limits, Policy, Refusal};
pub use self::splice::{CircuitLimits, End};
use crate::config::{self, serde_duration};
use crate::{Metrics, Role};

/// Settings of the role: the section `[roles.relay]`, every key optional (its default is
/// [`Config::default`], documented in README.md and default.toml). The defaults are
/// more generous than go-libp2p's (128 reservations, 16 circuits per peer, 2 min and
/// 128 KiB per circuit), which operators find too small for real traffic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Reservations held at once.
    pub max_reservations: usize,
    /// Reservations held by peers connected from one IP address.
    pub max_reservations_per_ip: usize,
    /// Reservations held by peers connected from one subnet (IPv4 /24, IPv6 /48).
    pub max_reservations_per_subnet: usize,
    /// How long a reservation lasts without a refresh.
    #[serde(with = "serde_duration")]
    pub reservation_ttl: Duration,
    /// Circuits open at once.
    pub max_circuits: usize,
    /// Circuits one peer takes part in at once (as caller or target).
    pub max_circuits_per_peer: usize,
    /// Longest life of a circuit.
    #[serde(with = "serde_duration")]
    pub circuit_duration: Duration,
    /// Bytes a circuit carries in each direction before it is cut; 0 = no limit.
    pub circuit_data: u64,
    /// Bytes buffered per direction of a circuit (its memory is twice this).
    pub circuit_buffer: usize,
    /// PeerIds and IP prefixes never served.
    #[serde(deserialize_with = "config::string_list")]
    pub deny: Vec<String>,
    /// PeerIds and IP prefixes served in private mode.
    #[serde(deserialize_with = "config::string_list")]
    pub allow: Vec<String>,
    /// PeerIds and IP prefixes of the trusted class (fleet members, paying tenants):
    /// served in any mode, exempt from the per-IP, per-subnet and per-peer limits, and
    /// circuits to them carry no data or duration limit. The totals still apply.
    #[serde(deserialize_with = "config::string_list")]
    pub trusted: Vec<String>,
    /// Serve only `allow` and `trusted`.
    pub private: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_reservations: 1024,
            max_reservations_per_ip: 8,
            max_reservations_per_subnet: 32,
            reservation_ttl: Duration::from_secs(3600),
            max_circuits: 1024,
            max_circuits_per_peer: 16,
            circuit_duration: Duration::from_secs(600),
            circuit_data: 16 * 1024 * 1024,
            circuit_buffer: 16 * 1024,
            deny: Vec::new(),
            allow: Vec::new(),
            trusted: Vec::new(),
            private: false,
        }
    }
}

impl Config {
    /// The limits the bookkeeping enforces.
    pub fn limits(&self) -> Limits {
        Limits {
            max_reservations: self.max_reservations,
            max_reservations_per_ip: self.max_reservations_per_ip,
            max_reservations_per_subnet: self.max_reservations_per_subnet,
            reservation_ttl: self.reservation_ttl,
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
        }
    }

    /// The access lists, parsed ([`Relay::check`] refuses entries that do not parse).
    pub fn policy(&self) -> Policy {
        let parse = |list: &[String]| list.iter().filter_map(|e| e.parse().ok()).collect();
        Policy {
            deny: parse(&self.deny),
            allow: parse(&self.allow),
            trusted: parse(&self.trusted),
            private: self.private,
        }
    }

    /// The limits announced for, and applied to, each circuit.
    pub fn circuit_limits(&self) -> CircuitLimits {
        CircuitLimits {
            data: self.circuit_data,
            duration: Some(self.circuit_duration),
        }
    }
}

/// What the running role is doing (the admin API lists it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub reservations: Vec<ReservationView>,
    pub circuits: Vec<CircuitView>,
    pub max_reservations: usize,
    pub max_circuits: usize,
    /// Per circuit, each direction; 0 = none.
    pub circuit_data: u64,
    pub circuit_duration_secs: u64,
    /// Whether the relay itself is reachable from the Internet, as AutoNAT servers find
    /// (`public`, `private`, `unknown`): a relay nobody can reach serves nobody.
    pub reachability: &'static str,
}

/// A reservation held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReservationView {
    pub peer: String,
    pub age_secs: u64,
    pub expires_in_secs: u64,
}

/// A circuit open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CircuitView {
    pub src: String,
    pub dst: String,
    pub age_secs: u64,
    /// Bytes caller to target.
    pub bytes_up: u64,
    /// Bytes target to caller.
    pub bytes_down: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {}

/// The running role.
pub struct Relay {
    service: Arc<hop::Service>,
}

impl Relay {
    /// Starts the relay on `node`, its metrics in `metrics`.
    pub fn start_on(node: &Node, config: Config, metrics: &mut Metrics<'_>) -> Arc<Relay> {
        Arc::new(Relay {
            service: hop::Service::start(node, config, metrics),
        })
    }

    /// Reservations held now.
    pub fn reservation_count(&self) -> usize {
        self.service.reservation_count()
    }

    /// Circuits open now.
    pub fn circuit_count(&self) -> usize {
        self.service.circuit_count()
    }
}

impl Role for Relay {
    const NAME: &'static str = "relay";
    type Config = Config;
    type Status = Status;
    type Error = Error;

    fn check(c: &Config) -> Result<(), config::Error> {
        for (key, v) in [
            ("roles.relay.max_reservations", c.max_reservations),
            (
                "roles.relay.max_reservations_per_ip",
                c.max_reservations_per_ip,
            ),
            (
                "roles.relay.max_reservations_per_subnet",
                c.max_reservations_per_subnet,
            ),
            ("roles.relay.max_circuits", c.max_circuits),
            ("roles.relay.max_circuits_per_peer", c.max_circuits_per_peer),
        ] {
            if v == 0 {
                return Err(config::bad(key, "0", "must be at least 1"));
            }
        }
        let contradiction = |key: &str, v: usize, other: &str, o: usize| {
            Err(config::bad(
                key,
                &v.to_string(),
                &format!("must not exceed {other} ({o})"),
            ))
        };
        if c.max_reservations_per_ip > c.max_reservations_per_subnet {
            return contradiction(
                "roles.relay.max_reservations_per_ip",
                c.max_reservations_per_ip,
                "roles.relay.max_reservations_per_subnet",
                c.max_reservations_per_subnet,
            );
        }
        if c.max_reservations_per_subnet > c.max_reservations {
            return contradiction(
                "roles.relay.max_reservations_per_subnet",
                c.max_reservations_per_subnet,
                "roles.relay.max_reservations",
                c.max_reservations,
            );
        }
        if c.max_circuits_per_peer > c.max_circuits {
            return contradiction(
                "roles.relay.max_circuits_per_peer",
                c.max_circuits_per_peer,
                "roles.relay.max_circuits",
                c.max_circuits,
            );
        }
        if c.reservation_ttl < Duration::from_secs(60) {
            return Err(config::bad(
                "roles.relay.reservation_ttl",
                &config::format_duration(c.reservation_ttl),
                "must be at least 1m (clients refresh shortly before the expiry)",
            ));
        }
        if c.circuit_duration.as_secs() > u64::from(u32::MAX) {
            return Err(config::bad(
                "roles.relay.circuit_duration",
                &config::format_duration(c.circuit_duration),
                "must fit the wire's 32-bit seconds",
            ));
        }
        for (key, list) in [
            ("roles.relay.deny", &c.deny),
            ("roles.relay.allow", &c.allow),
            ("roles.relay.trusted", &c.trusted),
        ] {
            for entry in list {
                if let Err(e) = entry.parse::<Entry>() {
                    return Err(config::bad(key, entry, &e));
                }
            }
        }
        if c.private && c.allow.is_empty() && c.trusted.is_empty() {
            return Err(config::bad(
                "roles.relay.private",
                "true",
                "a private relay needs roles.relay.allow or roles.relay.trusted entries, or it serves nobody",
            ));
        }
        if !(1024..=1024 * 1024).contains(&c.circuit_buffer) {
            return Err(config::bad(
                "roles.relay.circuit_buffer",
                &c.circuit_buffer.to_string(),
                "must be between 1024 and 1048576 bytes",
            ));
        }
        Ok(())
    }

    /// The relay needs nothing the node does not do anyway: it serves on whatever
    /// connections peers open to it.
    fn require(_config: &Config, _node: &mut node::Config) -> Result<(), config::Error> {
        Ok(())
    }

    fn start(node: &Node, config: Config, metrics: &mut Metrics<'_>) -> Result<Arc<Self>, Error> {
        Ok(Relay::start_on(node, config, metrics))
    }

    fn status(&self) -> Status {
        self.service.status()
    }

    fn protocols(&self) -> Vec<String> {
        vec![pylon_node::protocols::relay::HOP.to_string()]
    }
}
