//! Events the host publishes to observers.

use super::*;

/// What the host tells subscribers ([`Host::subscribe`]): for observers (metrics, the
/// dashboard). Lagging subscribers lose the oldest events; protocols and roles that must
/// not miss one install an [`Extension`] instead.
#[derive(Debug, Clone)]
pub enum Event {
    ConnectionEstablished(Connection),
    ConnectionClosed {
        id: ConnectionId,
        peer: PeerId,
        direction: Direction,
        reason: String,
    },
    IncomingConnectionError {
        error: String,
    },
    /// An outbound dial failed; `kind` is [`DialError::label`].
    DialFailed {
        addr: Multiaddr,
        kind: &'static str,
        error: String,
    },
    StreamOpened {
        peer: PeerId,
        connection: ConnectionId,
        direction: Direction,
        protocol: String,
    },
    ListenAddrsChanged,
    ProtocolsChanged,
}
