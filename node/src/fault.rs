//! Whose fault a failure was: the one axis every layer's error type is classified on.
//!
//! Each layer keeps its own error enum (multistream-select, Noise, TLS, the WebSocket and
//! QUIC transports, the host's dial and stream errors, Kademlia), saying what went wrong in
//! that layer's terms; [`Classify::fault`] maps each variant onto a [`Fault`], so code can
//! decide on it (a DHT drops a peer only for the peer's faults, not for our limits) and
//! metrics can carry it as a bounded label.

use std::io;

/// The kind of a failure, seen from our side of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The remote sent bytes that do not parse.
    Malformed,
    /// The remote's messages parse, but it broke the protocol: a wrong identity, a bad
    /// signature, a message out of turn, a connection closed with a protocol error.
    Protocol,
    /// The two sides share no protocol, or an address is of a kind nobody here speaks.
    Unsupported,
    /// A capacity limit was hit: ours (connection and stream caps, handshake budgets) or
    /// the remote's (it has no room for another stream). A remote that goes past a bound
    /// we set on its messages (size, count) broke the protocol instead: [`Fault::Protocol`].
    Limit,
    /// The remote or the network took too long.
    Timeout,
    /// The network or the operating system failed: refused, reset, unreachable, closed.
    Io,
    /// Our own side: configuration, shutdown, backoff we chose, nothing left to try.
    Local,
}

impl Fault {
    /// The `fault` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Fault::Malformed => "malformed",
            Fault::Protocol => "protocol",
            Fault::Unsupported => "unsupported",
            Fault::Limit => "limit",
            Fault::Timeout => "timeout",
            Fault::Io => "io",
            Fault::Local => "local",
        }
    }

    /// Is the remote (or the path to it) the cause, rather than something we decided?
    pub fn is_remote(self) -> bool {
        !matches!(self, Fault::Local | Fault::Limit)
    }

    /// The fault of an I/O error: a timeout, data that failed to decode (TLS and Noise
    /// report a bad record this way), or the network.
    pub fn of_io(e: &io::Error) -> Fault {
        if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
            return Fault::Protocol;
        }
        match e.kind() {
            io::ErrorKind::TimedOut => Fault::Timeout,
            io::ErrorKind::InvalidData => Fault::Malformed,
            _ => Fault::Io,
        }
    }
}

/// An error that knows whose fault it was.
pub trait Classify {
    fn fault(&self) -> Fault;
}

impl Classify for io::Error {
    fn fault(&self) -> Fault {
        Fault::of_io(self)
    }
}

impl Classify for yamux::ConnectionError {
    fn fault(&self) -> Fault {
        match self {
            yamux::ConnectionError::Io(e) => Fault::of_io(e),
            yamux::ConnectionError::Decode(_) => Fault::Malformed,
            yamux::ConnectionError::InvalidWindowUpdate => Fault::Protocol,
            yamux::ConnectionError::NoMoreStreamIds | yamux::ConnectionError::TooManyStreams => {
                Fault::Limit
            }
            yamux::ConnectionError::Closed => Fault::Io,
            _ => Fault::Protocol,
        }
    }
}

impl Classify for quinn::ConnectionError {
    fn fault(&self) -> Fault {
        use quinn::ConnectionError as E;
        match self {
            E::VersionMismatch => Fault::Unsupported,
            E::TransportError(_) => Fault::Protocol,
            E::ConnectionClosed(_) | E::ApplicationClosed(_) | E::Reset => Fault::Io,
            E::TimedOut => Fault::Timeout,
            E::LocallyClosed | E::CidsExhausted => Fault::Local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_classified_by_kind_and_cause() {
        let timed_out = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(timed_out.fault(), Fault::Timeout);
        let bad = io::Error::new(io::ErrorKind::InvalidData, "bad frame");
        assert_eq!(bad.fault(), Fault::Malformed);
        let tls = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert_eq!(tls.fault(), Fault::Protocol);
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(reset.fault(), Fault::Io);
        assert!(reset.fault().is_remote());
        assert!(!Fault::Limit.is_remote() && !Fault::Local.is_remote());
    }
}
