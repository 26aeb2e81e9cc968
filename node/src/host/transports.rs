//! The transport extension point: a transport added from outside the host (the relay's
//! `/p2p-circuit` is the first) dials the addresses it claims and hands the host raw byte
//! streams; the host secures and muxes them exactly like TCP. Inbound, the transport hands
//! its accepted streams to [`Host::accept`].
//!
//! Bounds: the host applies its connection limits (total, per peer) and the transport's
//! own pool of pending handshakes (`max_pending_incoming` per transport label, oldest
//! evicted when full). Per-IP and per-subnet caps do not apply, as an added transport's
//! remote carries no IP of its own (a relayed address carries the relay's): the transport
//! bounds its own inbound (the relay client accepts circuits only through the
//! reservations it holds, with the relay's limits).
//!
//! The built-in transports (TCP, WebSocket, memory in `transports/transport.rs`; QUIC,
//! which brings its own security and streams) need no registration.

use super::*;

/// A byte-stream transport added with [`Host::add_transport`].
pub trait Transport: Send + Sync + 'static {
    /// The `transport` label of the connection metrics (`"p2p-circuit"`).
    fn label(&self) -> &'static str;

    /// Whether this transport dials `addr`. Added transports are asked, in the order they
    /// were added, before the built-in ones and before DNS resolution.
    fn handles(&self, addr: &Multiaddr) -> bool;

    /// Opens a byte stream to `addr` (including its `/p2p/` suffix, if any) for `host`
    /// (which a transport over other connections, such as a relay's, dials through);
    /// returns it and our local address on it. Bounded by the host's `dial_timeout`.
    fn dial(
        &self,
        host: &Host,
        addr: &Multiaddr,
    ) -> BoxFuture<'static, Result<(RawStream, Multiaddr), DialError>>;
}

impl Host {
    /// Adds a transport. Its dials and its inbound streams go through the host's upgrade
    /// pipeline, admission and limits.
    pub fn add_transport(&self, transport: Arc<dyn Transport>) {
        write(&self.inner.transports).push(transport);
    }

    pub(super) fn added_transport(&self, addr: &Multiaddr) -> Option<Arc<dyn Transport>> {
        read(&self.inner.transports)
            .iter()
            .find(|t| t.handles(addr))
            .cloned()
    }

    /// Dials through an added transport: its byte stream, then security and muxer.
    pub(super) async fn dial_added(
        &self,
        transport: Arc<dyn Transport>,
        addr: &Multiaddr,
    ) -> Result<Connection, DialError> {
        let expected = last_peer(addr);
        if expected == Some(self.peer_id()) {
            return Err(DialError::SelfDial);
        }
        if self.inner.shutdown.is_cancelled() {
            return Err(DialError::ShuttingDown);
        }
        if let Some(peer) = &expected {
            self.admit(peer)?;
        }
        let cfg = &self.inner.config;
        let handshake = self
            .inner
            .metrics
            .resources
            .handshake("outbound", uses_fd(transport.label()));
        let (raw, local) = tokio::time::timeout(cfg.dial_timeout, transport.dial(self, addr))
            .await
            .map_err(|_| DialError::Timeout)??;
        let started = Instant::now();
        let handshaken =
            tokio::time::timeout(cfg.handshake_timeout, self.upgrade(raw, true, expected))
                .await
                .map_err(|_| DialError::Timeout)??;
        drop(handshake);
        self.establish_outbound(
            handshaken,
            (transport.label(), ip_version_of(addr)),
            without_last_peer(addr),
            local,
            started,
        )
    }

    /// Takes an inbound byte stream of an added transport (`transport` is its label, which
    /// must be its own: a built-in label such as `"tcp"` would share that pool):
    /// secures and muxes it in a pending-handshake place of that transport's pool, and
    /// establishes the connection. Returns at once; `false` when no place was free (the
    /// stream is dropped and the refusal counted).
    pub fn accept(
        &self,
        raw: RawStream,
        remote: Multiaddr,
        local: Multiaddr,
        transport: &'static str,
    ) -> bool {
        let ip_version = ip_version_of(&remote);
        // No per-IP place: the IP in a relayed address is the relay's, shared by everyone
        // behind it. The transport's own pool still bounds the handshakes in flight.
        let Some(pending) = self.pending_slot(None, transport, ip_version) else {
            return false;
        };
        let places = Places { ip: None, pending };
        let ends = Ends {
            remote,
            local,
            direction: Direction::Inbound,
            ip_slot: None,
        };
        let host = self.clone();
        self.spawn(async move {
            let handshake = async { host.upgrade(raw, false, None).await };
            host.accept_inbound(handshake, ends, transport, ip_version, places)
                .await;
        });
        true
    }
}

/// `addr` without the `/p2p/` it ends with (the peer is the connection's, not its
/// address's; a relayed address keeps the relay's own `/p2p/`).
fn without_last_peer(addr: &Multiaddr) -> Multiaddr {
    let mut addr = addr.clone();
    if let Some(Protocol::P2p(_)) = addr.iter().last() {
        addr.pop();
    }
    addr
}

/// The PeerId an address ends with (for a relayed address, the peer behind the relay).
fn last_peer(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// The `ip_version` label of an address: that of its first component.
pub(super) fn ip_version_of(addr: &Multiaddr) -> &'static str {
    match addr.iter().next() {
        Some(Protocol::Ip4(_)) => "ip4",
        Some(Protocol::Ip6(_)) => "ip6",
        _ => "",
    }
}
