//! Pylon's libp2p stack: identity, transports, security, muxing, the host, the
//! peerstore, and the protocols every role stands on. Mechanism only — role policy lives
//! in the roles built on top.

pub mod addresses;
pub mod dialer;
pub mod fault;
pub mod host;
pub mod identity;
mod io_util;
pub mod ipprefix;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod peerstore;
pub mod private_file;
pub mod process_metrics;
pub mod proto;
pub mod protocols;
pub mod record;
pub mod resource_metrics;
pub mod security;
pub mod storage;
pub mod transports;
pub mod varint;

pub use identity::{Keypair, PeerId, PublicKey};
pub use multiaddr::{self, Multiaddr};
pub use rustls;
pub use security::{multistream, noise, secure, tls};
pub use transports::{dns, quic, transport, websocket};
