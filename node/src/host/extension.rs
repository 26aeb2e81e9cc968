//! The extension point of the host: what a protocol (or a role) installs to hear about
//! connections and streams, and to take the inbound streams of its protocol ids.
//!
//! Unlike [`Host::subscribe`] (a bounded broadcast for observers such as metrics and the
//! dashboard, which may lag and lose events), calls through this trait are synchronous,
//! in order and never lost: a connection is announced before any of its inbound streams
//! is routed, and its close after it left the pool. The callbacks run on the host's own
//! tasks, so they must be quick and must not block; async work goes to [`Host::spawn`].

use super::*;

/// A change of the host's own state that protocols may advertise (identify pushes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalChange {
    ListenAddrs,
    Protocols,
}

/// A protocol or role installed on the host with [`Host::install`]. Every method has a
/// default that does nothing, so an implementation states only what it needs.
pub trait Extension: Send + Sync + 'static {
    /// Protocol ids whose inbound streams go to [`Extension::handle_stream`].
    fn protocol_ids(&self) -> Vec<String> {
        Vec::new()
    }

    /// One negotiated inbound stream of one of [`Extension::protocol_ids`] (see
    /// [`Stream::protocol`]), in its own task.
    fn handle_stream(self: Arc<Self>, stream: Stream) -> BoxFuture<'static, ()> {
        drop(stream);
        Box::pin(async {})
    }

    /// A connection joined the pool (before any of its inbound streams is routed).
    fn on_connection_established(&self, _conn: &Connection) {}

    /// A connection left the pool; `reason` says why it ended.
    fn on_connection_closed(&self, _conn: &Connection, _reason: &str) {}

    /// A stream was negotiated: inbound (routed to a handler) or outbound (opened with
    /// [`Host::open_stream`]).
    fn on_stream_opened(&self, _conn: &Connection, _direction: Direction, _protocol: &str) {}

    /// Our listen addresses or the protocols we serve changed.
    fn on_local_change(&self, _change: LocalChange) {}
}

impl Host {
    /// Installs a protocol: registers its inbound protocol ids and from now on tells it
    /// about connections and streams. Connections already established are announced to
    /// it at once, so a protocol installed late misses none.
    pub fn install(&self, protocol: Arc<dyn Extension>) {
        write(&self.inner.protocols).push(protocol.clone());
        for conn in self.connections() {
            protocol.on_connection_established(&conn);
        }
        for id in protocol.protocol_ids() {
            let p = protocol.clone();
            self.set_handler(&id, Arc::new(move |s| p.clone().handle_stream(s)));
        }
    }

    /// Calls every installed protocol (outside the registry's lock: a callback may
    /// install another).
    pub(super) fn notify(&self, f: impl Fn(&dyn Extension)) {
        let installed = read(&self.inner.protocols).clone();
        for p in installed {
            f(p.as_ref());
        }
    }
}
