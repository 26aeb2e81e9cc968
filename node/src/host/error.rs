//! Errors of dialing and of opening streams. Each variant says what failed in the host's
//! terms; [`Classify::fault`] says whose fault it was (the layers below classify their own
//! errors), and `label` gives the `error` label of go-libp2p's swarm metrics.

use super::*;
use crate::fault::{Classify, Fault};

/// Why a dial failed. [`DialError::label`] is the `error` label of `libp2p_swarm_dial_errors_total`.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("no usable address")]
    NoAddresses,
    #[error("unsupported address: {0}")]
    Unsupported(Multiaddr),
    #[error("connection refused")]
    Refused,
    #[error("timed out")]
    Timeout,
    #[error("wrong peer: expected {expected}, got {got}")]
    WrongPeer {
        expected: Box<PeerId>,
        got: Box<PeerId>,
    },
    #[error("no common protocol ({0})")]
    NoCommonProtocol(&'static str),
    /// The security handshake (Noise or TLS) failed.
    #[error("handshake failed: {0}")]
    Security(crate::secure::Error),
    /// The muxer could not be agreed with multistream-select after the handshake.
    #[error("muxer negotiation: {0}")]
    MuxerNegotiation(multistream::Error),
    /// The handshake agreed on a muxer we never offered.
    #[error("handshake agreed on unknown muxer {0:?}")]
    UnknownMuxer(String),
    /// The QUIC handshake failed.
    #[error("quic: {0}")]
    Quic(crate::quic::Error),
    /// The transport failed on top of a connected socket (the WebSocket upgrade) or could
    /// not be set up for this address (a `/wss` server name).
    #[error("transport: {0}")]
    Transport(transport::Error),
    #[error("{0} limit reached")]
    Limit(LimitScope),
    /// A relay answered our circuit request with an error status
    /// (`specs/relay/circuit-v2.md`: 201 resource limit, 202 permission denied, 203
    /// connection failed, 204 no reservation, ...).
    #[error("relay refused the circuit with status {0}")]
    RelayRefused(u16),
    /// The relay's answer was not a hop message.
    #[error("relay answered with a malformed message")]
    RelayMalformed,
    /// The stream to the relay failed before it answered.
    #[error("relay stream: {0}")]
    RelayStream(StreamError),
    /// Our own socket could not be set up (a QUIC endpoint to dial from: out of file
    /// descriptors, say).
    #[error("local socket: {0}")]
    LocalSocket(io::Error),
    #[error("dialing ourselves")]
    SelfDial,
    #[error("host is shutting down")]
    ShuttingDown,
    #[error("i/o: {0}")]
    Io(io::Error),
    #[error("dns: {0}")]
    Dns(crate::dns::Error),
    #[error("every address is backing off after recent failures")]
    Backoff,
    /// The peer, or the address's IP prefix, is banned ([`Host::ban`]).
    #[error("banned")]
    Banned,
}

impl DialError {
    pub fn label(&self) -> &'static str {
        match self {
            DialError::NoAddresses => "no_addresses",
            DialError::Unsupported(_) => "unsupported",
            DialError::Refused => "connection_refused",
            DialError::Timeout => "deadline",
            DialError::WrongPeer { .. } => "wrong_peer",
            DialError::NoCommonProtocol(_) => "no_common_protocol",
            DialError::Security(_)
            | DialError::MuxerNegotiation(_)
            | DialError::UnknownMuxer(_)
            | DialError::Quic(_)
            | DialError::Transport(_) => "handshake",
            DialError::Limit(_) => "limit",
            DialError::LocalSocket(_) => "other",
            DialError::RelayRefused(_) | DialError::RelayMalformed | DialError::RelayStream(_) => {
                "relay"
            }
            DialError::SelfDial => "self_dial",
            DialError::ShuttingDown => "shutting_down",
            DialError::Io(_) => "io",
            DialError::Dns(_) => "dns",
            DialError::Backoff => "backoff",
            DialError::Banned => "banned",
        }
    }
}

impl From<transport::Error> for DialError {
    fn from(e: transport::Error) -> Self {
        match e {
            transport::Error::Unsupported(a) => DialError::Unsupported(a),
            transport::Error::Refused => DialError::Refused,
            transport::Error::Io(e) => DialError::Io(e),
            e @ (transport::Error::WebSocket(_)
            | transport::Error::NoCertificate
            | transport::Error::ServerName(_)) => DialError::Transport(e),
        }
    }
}

impl Classify for DialError {
    fn fault(&self) -> Fault {
        match self {
            DialError::NoAddresses
            | DialError::SelfDial
            | DialError::ShuttingDown
            | DialError::Backoff
            | DialError::Banned
            | DialError::LocalSocket(_) => Fault::Local,
            DialError::Unsupported(_) | DialError::NoCommonProtocol(_) => Fault::Unsupported,
            DialError::Refused => Fault::Io,
            DialError::Timeout => Fault::Timeout,
            DialError::WrongPeer { .. } | DialError::UnknownMuxer(_) => Fault::Protocol,
            DialError::Security(e) => e.fault(),
            DialError::MuxerNegotiation(e) => e.fault(),
            DialError::Quic(e) => e.fault(),
            DialError::Transport(e) => e.fault(),
            DialError::Limit(_) => Fault::Limit,
            // RESOURCE_LIMIT_EXCEEDED; the rest (no reservation, connection failed, denied)
            // say the target cannot be reached this way.
            DialError::RelayRefused(201) => Fault::Limit,
            DialError::RelayRefused(_) => Fault::Io,
            DialError::RelayMalformed => Fault::Malformed,
            DialError::RelayStream(e) => e.fault(),
            DialError::Io(e) => e.fault(),
            DialError::Dns(e) => e.fault(),
        }
    }
}

/// Which connection limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// `connections.max` over all peers.
    Connections,
    /// `connections.max_per_peer`.
    ConnectionsPerPeer,
}

impl std::fmt::Display for LimitScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LimitScope::Connections => "connection",
            LimitScope::ConnectionsPerPeer => "per-peer connection",
        })
    }
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("not connected to {0}")]
    NotConnected(PeerId),
    #[error("connection closed")]
    Closed,
    #[error("protocol negotiation timed out")]
    Timeout,
    #[error("remote supports none of the protocols")]
    Unsupported,
    #[error("negotiation: {0}")]
    Negotiation(multistream::Error),
    #[error("muxer: {0}")]
    Muxer(MuxerError),
    #[error("stream limit of the connection reached")]
    Limit,
}

impl Classify for StreamError {
    fn fault(&self) -> Fault {
        match self {
            StreamError::NotConnected(_) => Fault::Local,
            StreamError::Closed => Fault::Io,
            StreamError::Timeout => Fault::Timeout,
            StreamError::Unsupported => Fault::Unsupported,
            StreamError::Negotiation(e) => e.fault(),
            StreamError::Muxer(e) => e.fault(),
            StreamError::Limit => Fault::Limit,
        }
    }
}

/// The connection's muxer failed while a stream was being opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MuxerError {
    /// Shared: every stream waiting on the connection gets the same error.
    #[error("yamux: {0}")]
    Yamux(Arc<yamux::ConnectionError>),
    #[error("quic: {0}")]
    Quic(quinn::ConnectionError),
}

impl Classify for MuxerError {
    fn fault(&self) -> Fault {
        match self {
            MuxerError::Yamux(e) => e.fault(),
            MuxerError::Quic(e) => e.fault(),
        }
    }
}
