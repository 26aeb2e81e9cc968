//! Transports: how bytes move. `transport` parses multiaddrs into targets and dials and
//! listens on TCP (and the in-memory transport of tests); `websocket` carries the same
//! over `/ws` and `/wss`; `quic` is QUIC v1 on quinn (which brings its own security and
//! streams); `dns` resolves `/dns*` and `/dnsaddr` before a dial. Security and muxing are
//! layered on top by the host (`crate::host::upgrade`). Re-exported at the crate root
//! (`pylon_node::transport`, …).

pub mod dns;
pub mod quic;
pub mod transport;
pub mod websocket;
