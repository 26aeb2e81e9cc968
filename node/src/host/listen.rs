//! Listening: TCP, WebSocket and QUIC listeners and the inbound path all transports share.

use super::*;

impl Host {
    /// Starts listening; returns the bound address (port 0 resolved).
    pub async fn listen(&self, addr: &Multiaddr) -> Result<Multiaddr, transport::Error> {
        let (target, _) = transport::parse(addr)?;
        if let Target::Quic(socket) = target {
            return self.listen_quic(socket);
        }
        let mut listener = transport::Listener::bind(&target, &self.inner.ws_tls).await?;
        let bound = listener.local_addr()?;
        write(&self.inner.listen_addrs).push(bound.clone());
        self.notify(|p| p.on_local_change(LocalChange::ListenAddrs));
        self.emit(Event::ListenAddrsChanged);
        let host = self.clone();
        let token = self.inner.shutdown.clone();
        let transport_label = target.transport_label();
        let ip_version = target.ip_version();
        let local_addr = bound.clone();
        self.spawn_supervised("listener", async move {
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => break,
                    a = listener.accept() => a,
                };
                let (raw, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!("accept failed: {e}");
                        // EMFILE and friends: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Dropping `raw` closes the socket.
                if host.refuses_inbound(&remote, transport_label, ip_version) {
                    continue;
                }
                let Ok(slot) = host.ip_slot(&remote, transport_label, ip_version) else {
                    continue;
                };
                let Some(pending) = host.pending_slot(ip_of(&remote), transport_label, ip_version)
                else {
                    continue;
                };
                let places = Places { ip: slot, pending };
                let host2 = host.clone();
                let local = local_addr.clone();
                let ends = Ends {
                    remote,
                    local,
                    direction: Direction::Inbound,
                    ip_slot: None,
                };
                host.spawn(async move {
                    host2
                        .handle_incoming(raw, ends, transport_label, ip_version, places)
                        .await;
                });
            }
        });
        Ok(bound)
    }

    /// Adds an address we are reachable at without a listener of our own (a relay's
    /// `/p2p-circuit` address while we hold a reservation there); protocols advertise it.
    pub fn add_listen_addr(&self, addr: Multiaddr) {
        {
            let mut addrs = write(&self.inner.listen_addrs);
            if addrs.contains(&addr) {
                return;
            }
            addrs.push(addr);
        }
        self.notify(|p| p.on_local_change(LocalChange::ListenAddrs));
        self.emit(Event::ListenAddrsChanged);
    }

    /// Removes an address added with [`Host::add_listen_addr`].
    pub fn remove_listen_addr(&self, addr: &Multiaddr) {
        {
            let mut addrs = write(&self.inner.listen_addrs);
            let before = addrs.len();
            addrs.retain(|a| a != addr);
            if addrs.len() == before {
                return;
            }
        }
        self.notify(|p| p.on_local_change(LocalChange::ListenAddrs));
        self.emit(Event::ListenAddrsChanged);
    }

    pub(super) fn listen_quic(
        &self,
        socket: std::net::SocketAddr,
    ) -> Result<Multiaddr, transport::Error> {
        let quic_err = |e: crate::quic::Error| match e {
            crate::quic::Error::Io(e) => transport::Error::Io(e),
            other => transport::Error::Io(io::Error::other(other)),
        };
        let server = crate::quic::server_config(
            self.inner.security.certificate(),
            self.inner.config.max_streams_per_connection + YAMUX_STREAM_HEADROOM,
        )
        .map_err(quic_err)?;
        let endpoint = crate::quic::bind(socket, Some(server)).map_err(quic_err)?;
        let bound = crate::quic::multiaddr(endpoint.local_addr()?);
        lock(&self.inner.quic).listening.push(endpoint.clone());
        write(&self.inner.listen_addrs).push(bound.clone());
        self.notify(|p| p.on_local_change(LocalChange::ListenAddrs));
        self.emit(Event::ListenAddrsChanged);
        let host = self.clone();
        let token = self.inner.shutdown.clone();
        let ip_version = if socket.is_ipv4() { "ip4" } else { "ip6" };
        let local_addr = bound.clone();
        self.spawn_supervised("quic_listener", async move {
            loop {
                let incoming = tokio::select! {
                    _ = token.cancelled() => break,
                    i = endpoint.accept() => match i {
                        Some(i) => i,
                        None => break,
                    },
                };
                let remote = crate::quic::multiaddr(incoming.remote_address());
                if host.refuses_inbound(&remote, "quic-v1", ip_version) {
                    incoming.refuse();
                    continue;
                }
                let Ok(slot) = host.ip_slot(&remote, "quic-v1", ip_version) else {
                    incoming.refuse();
                    continue;
                };
                let ip = Some(incoming.remote_address().ip());
                let Some(pending) = host.pending_slot(ip, "quic-v1", ip_version) else {
                    incoming.refuse();
                    continue;
                };
                let places = Places { ip: slot, pending };
                let host2 = host.clone();
                let local = local_addr.clone();
                host.spawn(async move {
                    host2
                        .handle_incoming_quic(incoming, local, ip_version, places)
                        .await;
                });
            }
        });
        Ok(bound)
    }

    /// An inbound QUIC connection: quinn runs the TLS handshake inside its pending place.
    pub(super) async fn handle_incoming_quic(
        &self,
        incoming: quinn::Incoming,
        local: Multiaddr,
        ip_version: &'static str,
        places: Places,
    ) {
        let remote = crate::quic::multiaddr(incoming.remote_address());
        let handshake = async {
            let conn = incoming
                .accept()
                .map_err(|e| DialError::Quic(crate::quic::Error::Connection(e)))?
                .await
                .map_err(|e| DialError::Quic(crate::quic::Error::Connection(e)))?;
            let key = crate::quic::peer_key(&conn).map_err(DialError::Quic)?;
            Ok(Handshaken {
                mux: Muxer::Quic(conn),
                peer: key.to_peer_id(),
                key,
                route: quic_route(ip_version),
            })
        };
        let ends = Ends {
            remote,
            local,
            direction: Direction::Inbound,
            ip_slot: None,
        };
        self.accept_inbound(handshake, ends, "quic-v1", ip_version, places)
            .await;
    }

    /// An inbound connection of a byte-stream transport (TCP, WebSocket, memory, or one
    /// added with [`Host::add_transport`]): the transport's own upgrade (WebSocket), then
    /// security and muxer, inside its pending place.
    pub(super) async fn handle_incoming(
        &self,
        raw: transport::Inbound,
        ends: Ends,
        transport: &'static str,
        ip_version: &'static str,
        places: Places,
    ) {
        let handshake = async {
            let raw = raw.upgrade().await?;
            self.upgrade(raw, false, None).await
        };
        self.accept_inbound(handshake, ends, transport, ip_version, places)
            .await;
    }

    /// The inbound path every transport shares: the handshake runs in its pending place
    /// (cut short at its deadline or when evicted for a newcomer), then the connection is
    /// established and keeps its per-IP place until it closes.
    pub(super) async fn accept_inbound(
        &self,
        handshake: impl Future<Output = Result<Handshaken, DialError>>,
        ends: Ends,
        transport: &'static str,
        ip_version: &'static str,
        places: Places,
    ) {
        // The establishment of one inbound connection, as a trace span: the peer and the
        // outcome are recorded once known.
        let span = tracing::info_span!(
            "connection.inbound",
            transport,
            ip_version,
            peer = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let accept = self.accept_inbound_traced(handshake, ends, transport, ip_version, places);
        tracing::Instrument::instrument(accept, span).await
    }

    async fn accept_inbound_traced(
        &self,
        handshake: impl Future<Output = Result<Handshaken, DialError>>,
        ends: Ends,
        transport: &'static str,
        ip_version: &'static str,
        places: Places,
    ) {
        let span = tracing::Span::current();
        let Places { ip: slot, pending } = places;
        let started = Instant::now();
        let result = pending.run(handshake).await;
        drop(pending);
        let handshaken = match result {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                span.record("outcome", e.label());
                return self.inbound_failed(transport, ip_version, &e);
            }
            Err(cut) => {
                span.record("outcome", cut.label());
                count_error(
                    &self.inner.metrics.handshake_errors,
                    transport,
                    cut.label(),
                    cut.fault(),
                    ip_version,
                );
                if let CutShort::Deadline = cut {
                    self.emit(Event::IncomingConnectionError {
                        error: "handshake timed out".into(),
                    });
                }
                return;
            }
        };
        let handshaken = Handshaken {
            route: Route {
                transport,
                ip_version,
                ..handshaken.route
            },
            ..handshaken
        };
        // The connection holds its per-IP place from the moment it is registered.
        let ends = Ends {
            ip_slot: slot,
            ..ends
        };
        span.record("peer", tracing::field::display(handshaken.peer));
        let established = self.establish(handshaken, ends, started);
        span.record(
            "outcome",
            established.as_ref().map_or_else(|e| e.label(), |_| "ok"),
        );
        if let Err(e) = established {
            count_error(
                &self.inner.metrics.handshake_errors,
                transport,
                e.label(),
                e.fault(),
                ip_version,
            );
        }
    }
}
