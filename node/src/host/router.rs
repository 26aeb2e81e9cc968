//! The stream router: protocol handlers by protocol id, and the negotiation of each
//! inbound stream.

use super::*;

/// An inbound protocol handler: called with each negotiated stream, in its own task.
pub type Handler = Arc<dyn Fn(Stream) -> BoxFuture<'static, ()> + Send + Sync>;

/// Wraps an async closure as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Stream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |s| Box::pin(f(s)))
}

impl Host {
    /// Registers (or replaces) the handler of an inbound protocol.
    pub fn set_handler(&self, protocol: &str, handler: Handler) {
        write(&self.inner.handlers).insert(protocol.to_string(), handler);
        self.notify(|p| p.on_local_change(LocalChange::Protocols));
        self.emit(Event::ProtocolsChanged);
    }

    pub fn remove_handler(&self, protocol: &str) {
        write(&self.inner.handlers).remove(protocol);
        self.notify(|p| p.on_local_change(LocalChange::Protocols));
        self.emit(Event::ProtocolsChanged);
    }

    /// The protocols we serve, sorted.
    pub fn protocols(&self) -> Vec<String> {
        let mut p: Vec<String> = read(&self.inner.handlers).keys().cloned().collect();
        p.sort();
        p
    }

    pub(super) fn handle_inbound_stream(&self, stream: Substream, conn: &Connection) {
        let Some(slot) = StreamSlot::try_take(conn, Direction::Inbound) else {
            // Over our limit: the stream is reset; the connection lives on.
            self.inner
                .metrics
                .protocol_error(conn.muxer(), "stream_limit");
            stream.reset();
            return;
        };
        let host = self.clone();
        self.spawn(async move {
            let conn = slot.conn.clone();
            let mut io = stream;
            let timeout = host.inner.config.negotiation_timeout;
            let handlers = &host.inner.handlers;
            // Boxed: the task lives as long as the stream (an idle ping stream for hours),
            // and its future would otherwise keep the negotiation's room (264 bytes)
            // beside the handler's.
            let negotiated = Box::pin(tokio::time::timeout(
                timeout,
                multistream::listener_select(&mut io, |p| read(handlers).contains_key(p)),
            ))
            .await;
            let protocol = match negotiated {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    let reason = match e {
                        multistream::Error::TooManyProposals => "too_many_proposals",
                        multistream::Error::Io(_) => "io",
                        _ => "malformed",
                    };
                    host.inner.metrics.protocol_error("multistream", reason);
                    return;
                }
                Err(_) => {
                    host.inner.metrics.protocol_error("multistream", "timeout");
                    return;
                }
            };
            let Some(handler) = read(handlers).get(&protocol).cloned() else {
                return; // removed during negotiation
            };
            host.notify(|p| p.on_stream_opened(&conn, Direction::Inbound, &protocol));
            host.emit(Event::StreamOpened {
                peer: conn.peer(),
                connection: conn.id(),
                direction: Direction::Inbound,
                protocol: protocol.clone(),
            });
            // One span per inbound request of any protocol or role (exported as a trace
            // when the binary configures OpenTelemetry).
            let span = tracing::info_span!(
                "stream.inbound",
                protocol = %protocol,
                peer = %conn.peer(),
                transport = conn.transport(),
            );
            let stream = Stream::new(Negotiated::done(io), protocol, slot, Direction::Inbound);
            tracing::Instrument::instrument(handler(stream), span).await;
        });
    }
}
