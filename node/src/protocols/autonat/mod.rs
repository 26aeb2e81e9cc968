//! AutoNAT (`specs/autonat/autonat-v1.md`, `specs/autonat/autonat-v2.md`): peers ask
//! servers to dial them back, to learn which of their addresses are reachable from the
//! Internet.
//!
//! - [`proto`]: the v1 and v2 messages and protocol ids;
//!
//! The server side is a role (`pylon_roles::autonat`): which addresses it is willing to
//! dial, and how often, is policy.

pub mod proto;
