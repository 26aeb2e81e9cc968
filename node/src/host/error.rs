//! Errors of dialing and of opening streams.

use super::*;

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
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("connection limit reached")]
    Limit,
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
            DialError::Handshake(_) => "handshake",
            DialError::Limit => "limit",
            DialError::SelfDial => "self_dial",
            DialError::ShuttingDown => "shutting_down",
            DialError::Io(_) => "io",
            DialError::Dns(_) => "dns",
            DialError::Backoff => "backoff",
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
            | transport::Error::ServerName(_)) => DialError::Handshake(e.to_string()),
        }
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
    Negotiation(String),
    #[error("muxer: {0}")]
    Muxer(String),
    #[error("stream limit of the connection reached")]
    Limit,
}
