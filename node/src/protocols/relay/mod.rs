//! Circuit relay v2 (`specs/relay/circuit-v2.md`): what both ends of a relay speak.
//!
//! - [`proto`]: the hop and stop messages, status codes and their framing;
//! - [`voucher`]: reservation vouchers (signed envelopes);
//! - [`client`]: dialing through relays (`/p2p-circuit` as a transport), reservations,
//!   and answering `STOP`.
//!
//! The relay service — the hop protocol's server, its limits and policy, the splice of
//! circuits — is the relay role's (`pylon_roles::relay`).

pub mod client;
pub mod proto;
pub mod voucher;

/// The hop protocol: clients to the relay.
pub const HOP: &str = "/libp2p/circuit/relay/0.2.0/hop";
/// The stop protocol: the relay to the target of a circuit.
pub const STOP: &str = "/libp2p/circuit/relay/0.2.0/stop";
