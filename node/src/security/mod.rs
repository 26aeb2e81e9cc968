//! Security and negotiation: `multistream` (multistream-select 1.0), `noise` (Noise XX
//! with the libp2p handshake payload), `tls` (libp2p TLS 1.3 certificates and verifiers)
//! and `secure`, which runs either over a raw stream and agrees on the muxer inside the
//! handshake where the peer offers it. Re-exported at the crate root
//! (`pylon_node::noise`, …).

pub mod multistream;
pub mod noise;
pub mod secure;
pub mod tls;
