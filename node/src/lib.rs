//! Pylon's libp2p stack: identity, transports, security, muxing, the host, the
//! peerstore, and the protocols every role stands on. Mechanism only — role policy lives
//! in the roles built on top.

pub mod addresses;
mod admission;
pub mod dialer;
pub mod dns;
pub mod host;
pub mod identity;
mod io_util;
pub mod ipprefix;
pub mod limits;
pub mod metrics;
pub mod multistream;
pub mod node;
pub mod noise;
pub mod peerstore;
pub mod proto;
pub mod protocols;
pub mod quic;
pub mod record;
pub mod secure;
pub mod storage;
pub mod tls;
pub mod transport;
pub mod varint;
pub mod websocket;

pub use identity::{Keypair, PeerId, PublicKey};
pub use multiaddr::{self, Multiaddr};
pub use rustls;
