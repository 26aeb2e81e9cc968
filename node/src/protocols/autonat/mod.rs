//! AutoNAT (`specs/autonat/autonat-v1.md`, `specs/autonat/autonat-v2.md`): peers ask
//! servers to dial them back, to learn which of their addresses are reachable from the
//! Internet.
//!
//! - [`proto`]: the v1 and v2 messages and protocol ids;
//! - [`client`]: our own reachability without I/O: which address to test with which
//!   server, and what the answers add up to;
//! - [`driver`]: the client on the host (requests, dial-backs, verdicts into identify).
//!
//! The server side is a role (`pylon_roles::autonat`): which addresses it is willing to
//! dial, and how often, is policy.

pub mod client;
pub mod driver;
pub mod proto;

pub use client::{Config, Verdict};
pub use driver::Autonat;
