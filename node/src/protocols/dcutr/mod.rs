//! Direct Connection Upgrade through Relay (`specs/relay/DCUtR.md`, `/libp2p/dcutr`): two
//! peers on a relayed connection exchange their addresses, synchronise on the relay's
//! round-trip time and open a direct connection at the same moment (TCP simultaneous
//! open, or QUIC), so NATs on both sides let it through.
//!
//! - [`proto`]: the `HolePunch` message and its framing;
//! - [`core`]: the exchange as sans-IO state machines (time is an input), the choice of
//!   candidate addresses, the spec's three attempts;
//! - [`driver`]: the exchange run on every relayed connection of the host.

pub mod core;
pub mod driver;
pub mod proto;

pub use driver::{Config, Dcutr};

/// The protocol id.
pub const PROTOCOL: &str = "/libp2p/dcutr";
