//! A connection from handshake to close: registering it, driving its muxer (yamux or
//! QUIC), and removing it.

use super::*;

/// A connection whose handshake is done, from whichever transport: who is at the other
/// end and the muxer that will carry its streams. Every transport's path ends in one of
/// these and hands it to [`Host::establish`].
pub(super) struct Handshaken {
    pub(super) mux: Muxer,
    pub(super) peer: PeerId,
    pub(super) key: PublicKey,
    pub(super) route: Route,
}

/// The two ends of a connection, which side opened it, and (inbound) the per-IP place the
/// connection holds while it lives.
pub(super) struct Ends {
    pub(super) remote: Multiaddr,
    pub(super) local: Multiaddr,
    pub(super) direction: Direction,
    pub(super) ip_slot: Option<IpSlot>,
}

impl Muxer {
    /// How the connection will open outbound streams, and the command queue its driver
    /// reads (yamux streams are opened by the driver task).
    fn opener(&self) -> (Opener, Option<mpsc::Receiver<Command>>) {
        match self {
            Muxer::Yamux(_) => {
                let (tx, rx) = mpsc::channel(32);
                (Opener::Yamux(tx), Some(rx))
            }
            Muxer::Quic(c) => (Opener::Quic(c.clone()), None),
        }
    }

    /// Drops a connection that will not be established: dropping yamux closes the socket,
    /// QUIC tells the remote why.
    pub(super) fn abandon(self, reason: &'static [u8]) {
        if let Muxer::Quic(c) = self {
            c.close(0u32.into(), reason);
        }
    }
}

impl Host {
    /// The one place where a connection of any transport joins the pool: refuses a
    /// connection to ourselves and one over the connection limits (checked and registered
    /// under one lock, so concurrent handshakes cannot overshoot), records the handshake
    /// latency, tells the extensions and observers, and starts the muxer's driver.
    pub(super) fn establish(
        &self,
        handshaken: Handshaken,
        ends: Ends,
        started: Instant,
    ) -> Result<Connection, DialError> {
        let Handshaken {
            mux,
            peer,
            key: remote_key,
            route,
        } = handshaken;
        if peer == self.peer_id() {
            mux.abandon(b"self dial");
            return Err(DialError::SelfDial);
        }
        let Ends {
            remote: remote_addr,
            local: local_addr,
            direction,
            ip_slot,
        } = ends;
        if let Err(e) = self.check_established(&peer, &remote_addr, direction) {
            mux.abandon(b"refused");
            return Err(e);
        }
        let (opener, cmd_rx) = mux.opener();
        let id = ConnectionId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let conn = Connection {
            inner: Arc::new(ConnInner {
                id,
                peer,
                remote_key,
                remote_addr,
                local_addr,
                direction,
                transport: route.transport,
                security: route.security,
                muxer: route.muxer,
                early_muxer: route.early_muxer == "true",
                established: Instant::now(),
                negotiation_timeout: self.inner.config.negotiation_timeout,
                opener,
                close_requested: CancellationToken::new(),
                closed: CancellationToken::new(),
                live_streams: AtomicUsize::new(0),
                ip_slot: Mutex::new(ip_slot),
                max_streams: self.inner.config.max_streams_per_connection.max(1),
                metrics: self.inner.metrics.clone(),
            }),
        };
        let same_dir = {
            let mut conns = lock(&self.inner.connections);
            if let Some(scope) = self.limit_hit(&conns, &peer) {
                drop(conns);
                mux.abandon(b"connection limit");
                self.count_blocked_connection(direction, scope);
                return Err(DialError::Limit(scope));
            }
            let list = conns.entry(peer).or_default();
            list.push(conn.clone());
            list.iter().filter(|c| c.direction() == direction).count()
        };
        self.observe_handshake(started, route);
        let labels = ConnLabels {
            dir: direction.as_str(),
            transport: route.transport,
            security: route.security,
            muxer: route.muxer,
            early_muxer: route.early_muxer,
            ip_version: route.ip_version,
        };
        let m = &self.inner.metrics;
        m.connections_opened.get_or_create(&labels).inc();
        m.connections
            .get_or_create(&DirLabels {
                dir: direction.as_str(),
            })
            .inc();
        m.key_types
            .get_or_create(&KeyTypeLabels {
                dir: direction.as_str(),
                key_type: key_type_label(conn.remote_key()),
            })
            .inc();
        let r = &m.resources;
        r.connection_opened(direction.as_str(), uses_fd(route.transport));
        r.peer_connections_changed(direction.as_str(), same_dir - 1, same_dir);
        tracing::debug!(%peer, %id, dir = direction.as_str(), "connection established");
        self.notify(|p| p.on_connection_established(&conn));
        self.emit(Event::ConnectionEstablished(conn.clone()));
        let host = self.clone();
        let conn2 = conn.clone();
        // Not `spawn`: the driver must see shutdown as a polite close, not an abort.
        self.inner.tasks.spawn(async move {
            let reason = match (mux, cmd_rx) {
                (Muxer::Yamux(mux), Some(cmds)) => host.drive(*mux, cmds, conn2.clone()).await,
                (Muxer::Quic(quic), _) => host.drive_quic(quic, conn2.clone()).await,
                (Muxer::Yamux(_), None) => "no command channel".to_string(),
            };
            host.remove_connection(&conn2, labels, reason);
        });
        Ok(conn)
    }

    pub(super) fn remove_connection(&self, conn: &Connection, labels: ConnLabels, reason: String) {
        drop(lock(&conn.inner.ip_slot).take());
        let dir = conn.direction();
        let same_dir = {
            let mut conns = lock(&self.inner.connections);
            match conns.get_mut(&conn.peer()) {
                Some(list) => {
                    list.retain(|c| c.id() != conn.id());
                    let n = list.iter().filter(|c| c.direction() == dir).count();
                    if list.is_empty() {
                        conns.remove(&conn.peer());
                    }
                    n
                }
                None => 0,
            }
        };
        conn.inner.closed.cancel();
        let m = &self.inner.metrics;
        m.resources
            .connection_closed(dir.as_str(), uses_fd(conn.transport()));
        m.resources
            .peer_connections_changed(dir.as_str(), same_dir + 1, same_dir);
        m.connections_closed.get_or_create(&labels).inc();
        m.connection_duration
            .get_or_create(&labels)
            .observe(conn.established().elapsed().as_secs_f64());
        m.connections
            .get_or_create(&DirLabels {
                dir: conn.direction().as_str(),
            })
            .dec();
        tracing::debug!(peer = %conn.peer(), id = %conn.id(), %reason, "connection closed");
        self.notify(|p| p.on_connection_closed(conn, &reason));
        self.emit(Event::ConnectionClosed {
            id: conn.id(),
            peer: conn.peer(),
            direction: conn.direction(),
            reason,
        });
    }

    /// Runs one connection's muxer until it ends; returns why it ended.
    pub(super) async fn drive(
        &self,
        mut mux: YamuxConnection,
        mut cmds: mpsc::Receiver<Command>,
        conn: Connection,
    ) -> String {
        let mut opening: VecDeque<oneshot::Sender<Result<yamux::Stream, StreamError>>> =
            VecDeque::new();
        let mut closing = false;
        let mut close_deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut shutdown_wait = std::pin::pin!(self.inner.shutdown.clone().cancelled_owned());
        let mut close_wait = std::pin::pin!(conn.inner.close_requested.clone().cancelled_owned());
        poll_fn(|cx| loop {
            if !closing
                && (shutdown_wait.as_mut().poll(cx).is_ready()
                    || close_wait.as_mut().poll(cx).is_ready())
            {
                closing = true;
            }
            // Requests whose caller gave up (timed out) are dropped; the queue is bounded,
            // so a remote that never acknowledges streams cannot make it grow.
            opening.retain(|tx| !tx.is_closed());
            while !closing && opening.len() < MAX_PENDING_OPENS {
                match cmds.poll_recv(cx) {
                    Poll::Ready(Some(Command::Open(tx))) => opening.push_back(tx),
                    Poll::Ready(None) => closing = true,
                    Poll::Pending => break,
                }
            }
            let queue_was_full = opening.len() >= MAX_PENDING_OPENS;
            if closing {
                for tx in opening.drain(..) {
                    let _ = tx.send(Err(StreamError::Closed));
                }
                // A remote that stops reading cannot hold the close open forever.
                let deadline = close_deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_TIMEOUT)));
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready("close timed out".to_string());
                }
                return match mux.poll_close(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready("closed locally".to_string()),
                    Poll::Ready(Err(e)) => Poll::Ready(format!("error while closing: {e}")),
                    Poll::Pending => Poll::Pending,
                };
            }
            while !opening.is_empty() {
                match mux.poll_new_outbound(cx) {
                    Poll::Ready(Ok(stream)) => {
                        if let Some(tx) = opening.pop_front() {
                            let _ = tx.send(Ok(stream));
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        let reason = format!("muxer error: {e}");
                        let e = MuxerError::Yamux(Arc::new(e));
                        for tx in opening.drain(..) {
                            let _ = tx.send(Err(StreamError::Muxer(e.clone())));
                        }
                        return Poll::Ready(reason);
                    }
                    Poll::Pending => break,
                }
            }
            match mux.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    self.handle_inbound_stream(Substream::Yamux(stream.compat()), &conn)
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(format!("muxer error: {e}")),
                Poll::Ready(None) => return Poll::Ready("closed by remote".to_string()),
                // The command queue was not polled while full: poll it again now that
                // requests left it, or their wake-up would be lost.
                Poll::Pending if queue_was_full && opening.len() < MAX_PENDING_OPENS => continue,
                Poll::Pending => return Poll::Pending,
            }
        })
        .await
    }

    /// Runs a QUIC connection until it ends: quinn drives the protocol itself; here inbound
    /// streams are accepted and a close is requested.
    pub(super) async fn drive_quic(&self, quic: quinn::Connection, conn: Connection) -> String {
        let shutdown = self.inner.shutdown.clone();
        let close = conn.inner.close_requested.clone();
        let most = crate::quic::stream_limit(
            self.inner.config.max_streams_per_connection + YAMUX_STREAM_HEADROOM,
        );
        let mut credit = crate::quic::INITIAL_STREAMS.min(most);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = close.cancelled() => break,
                accepted = quic.accept_bi() => match accepted {
                    Ok((send, recv)) => {
                        self.handle_inbound_stream(
                            Substream::Quic(crate::quic::QuicStream::new(send, recv)),
                            &conn,
                        );
                        // Half the credit in use: double it (up to the limit) before the
                        // remote has to wait for it.
                        let live = conn.inner.live_streams.load(Ordering::Relaxed);
                        if credit < most && live.saturating_mul(2) >= credit as usize {
                            credit = credit.saturating_mul(2).min(most);
                            quic.set_max_concurrent_bi_streams(credit.into());
                        }
                    }
                    Err(quinn::ConnectionError::ApplicationClosed(_)) => {
                        return "closed by remote".to_string()
                    }
                    Err(e) => return format!("quic: {e}"),
                },
            }
        }
        quic.close(0u32.into(), b"");
        "closed locally".to_string()
    }
}
