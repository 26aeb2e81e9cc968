//! Dialing: addresses, port reuse, the per-peer dial gate, happy eyeballs, QUIC dials.

use super::*;

/// Which local port a dial may leave from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ports {
    /// A listening port when `port_reuse` is on (TCP: one not in TIME_WAIT towards the
    /// remote; QUIC: the listening endpoint).
    Configured,
    /// Never a listening port.
    Ephemeral,
}

/// A caller's share of a peer's dial gate. The map entry goes with the last share, also
/// when a caller's future is cancelled mid-dial, so the map only holds peers being dialed.
pub(super) struct DialGate<'a> {
    pub(super) gates: &'a Mutex<HashMap<PeerId, Arc<tokio::sync::Mutex<()>>>>,
    pub(super) peer: PeerId,
    pub(super) gate: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> DialGate<'a> {
    pub(super) fn enter(
        gates: &'a Mutex<HashMap<PeerId, Arc<tokio::sync::Mutex<()>>>>,
        peer: PeerId,
    ) -> Self {
        let gate = lock(gates).entry(peer).or_default().clone();
        DialGate { gates, peer, gate }
    }
}

impl Drop for DialGate<'_> {
    fn drop(&mut self) {
        let mut gates = lock(self.gates);
        // Ours and the map's: nobody else is waiting.
        if Arc::strong_count(&self.gate) <= 2 {
            gates.remove(&self.peer);
        }
    }
}

impl Host {
    /// The endpoint to dial `remote` from: a listening one of the same family whose
    /// address can reach it (so the remote sees our listen port), else a dial-only one.
    pub(super) fn quic_endpoint_for(
        &self,
        remote: std::net::SocketAddr,
        ports: Ports,
    ) -> Result<quinn::Endpoint, DialError> {
        let mut eps = lock(&self.inner.quic);
        let fits = |ep: &quinn::Endpoint| {
            ep.local_addr().is_ok_and(|l| {
                l.is_ipv4() == remote.is_ipv4()
                    && (l.ip().is_unspecified()
                        || l.ip().is_loopback() == remote.ip().is_loopback())
            })
        };
        if self.inner.config.port_reuse && ports == Ports::Configured {
            if let Some(ep) = eps.listening.iter().find(|ep| fits(ep)) {
                return Ok(ep.clone());
            }
        }
        let slot = if remote.is_ipv4() {
            &mut eps.client_v4
        } else {
            &mut eps.client_v6
        };
        if let Some(ep) = slot {
            return Ok(ep.clone());
        }
        let any: std::net::SocketAddr = if remote.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let ep = crate::quic::bind(any, None).map_err(|e| match e {
            crate::quic::Error::Io(e) => DialError::LocalSocket(e),
            other => DialError::Quic(other),
        })?;
        *slot = Some(ep.clone());
        Ok(ep)
    }

    /// The QUIC handshake: TLS with the expected PeerId checked inside it. Returns the
    /// handshaken connection, our local address and when the handshake started.
    pub(super) async fn dial_quic(
        &self,
        remote: std::net::SocketAddr,
        expected: Option<PeerId>,
        ports: Ports,
    ) -> Result<(Handshaken, Multiaddr, Instant), DialError> {
        let endpoint = self.quic_endpoint_for(remote, ports)?;
        let (config, setup) = crate::quic::client_config(
            self.inner.security.certificate(),
            expected,
            self.inner.config.max_streams_per_connection + YAMUX_STREAM_HEADROOM,
        )
        .map_err(DialError::Quic)?;
        let started = Instant::now();
        let connecting = crate::quic::connect(&endpoint, config, remote);
        let conn = match tokio::time::timeout(self.inner.config.handshake_timeout, connecting).await
        {
            Err(_) => return Err(DialError::Timeout),
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(match (expected, setup.seen_peer()) {
                    (Some(expected), Some(got)) if got != expected => DialError::WrongPeer {
                        expected: Box::new(expected),
                        got: Box::new(got),
                    },
                    _ => match e {
                        crate::quic::Error::Connection(quinn::ConnectionError::TimedOut) => {
                            DialError::Timeout
                        }
                        other => DialError::Quic(other),
                    },
                })
            }
        };
        let key = crate::quic::peer_key(&conn).map_err(DialError::Quic)?;
        let local = endpoint
            .local_addr()
            .map(crate::quic::multiaddr)
            .map_err(DialError::LocalSocket)?;
        let handshaken = Handshaken {
            mux: Muxer::Quic(conn),
            peer: key.to_peer_id(),
            key,
            route: quic_route(if remote.is_ipv4() { "ip4" } else { "ip6" }),
        };
        Ok((handshaken, local, started))
    }

    /// The listen address to dial `target` from, unless we did so within the last
    /// TIME_WAIT period: the same 4-tuple again can cost a 1 s SYN retransmission (seen as a
    /// p99 of ~1 s when one peer is redialed in a loop).
    pub(super) fn reuse_addr_for(&self, target: &Target) -> Option<std::net::SocketAddr> {
        let local = self.listen_addr_for(target)?;
        let Target::Tcp(remote) = target else {
            return None;
        };
        let now = Instant::now();
        let mut recent = lock(&self.inner.reused_tuples);
        if recent
            .get(remote)
            .is_some_and(|t| now.duration_since(*t) < TIME_WAIT)
        {
            return None;
        }
        if recent.len() >= MAX_REUSED_TUPLES {
            recent.retain(|_, t| now.duration_since(*t) < TIME_WAIT);
            if recent.len() >= MAX_REUSED_TUPLES {
                return None; // too many fresh entries: skip reuse rather than grow
            }
        }
        recent.insert(*remote, now);
        Some(local)
    }

    /// The TCP listen address to dial the target from: one of its IP family that can
    /// reach it — on every interface, or on an IP as loopback as the target's. Bound to
    /// that IP, not to every interface: a host with several addresses would otherwise send
    /// from whichever the route picks, and the remote would see us at an address nothing
    /// listens on.
    pub(super) fn listen_addr_for(&self, target: &Target) -> Option<std::net::SocketAddr> {
        let Target::Tcp(addr) = target else {
            return None;
        };
        let listeners: Vec<std::net::SocketAddr> = self
            .listen_addrs()
            .iter()
            .filter_map(|a| match transport::parse(a) {
                Ok((Target::Tcp(l), _)) if l.is_ipv4() == addr.is_ipv4() => Some(l),
                _ => None,
            })
            .collect();
        listeners
            .iter()
            .find(|l| l.ip().is_unspecified())
            .or_else(|| {
                listeners
                    .iter()
                    .find(|l| l.ip().is_loopback() == addr.ip().is_loopback())
            })
            .copied()
    }

    /// The DNS resolver, built on first use from the configuration.
    pub(super) fn resolver(&self) -> Result<Arc<crate::dns::Resolver>, DialError> {
        if let Some(r) = self.inner.resolver.get() {
            return Ok(r.clone());
        }
        let r =
            Arc::new(crate::dns::Resolver::new(&self.inner.config.dns).map_err(DialError::Dns)?);
        Ok(self.inner.resolver.get_or_init(|| r).clone())
    }

    /// Dials an address; a `/p2p/` suffix is checked against the peer we reach. DNS
    /// addresses are resolved first and the results tried in order.
    pub async fn dial(&self, addr: &Multiaddr) -> Result<Connection, DialError> {
        self.dial_with(addr, Ports::Configured).await
    }

    /// Dials `addr` like [`Host::dial`], but never from a listening port, whatever
    /// `port_reuse` says: TCP from an ephemeral port, QUIC from the client endpoint. A
    /// connection that must not ride on a NAT mapping the remote opened towards our
    /// listening port — an AutoNAT dial-back, which would otherwise punch the very hole it
    /// is meant to test (`specs/autonat/autonat-v2.md`, "Implementation Suggestions").
    pub async fn dial_from_new_port(&self, addr: &Multiaddr) -> Result<Connection, DialError> {
        self.dial_with(addr, Ports::Ephemeral).await
    }

    async fn dial_with(&self, addr: &Multiaddr, ports: Ports) -> Result<Connection, DialError> {
        // The establishment of one outbound connection, as a trace span.
        let span = tracing::info_span!(
            "connection.outbound",
            addr = %addr,
            peer = tracing::field::Empty,
            transport = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let result =
            tracing::Instrument::instrument(self.dial_any(addr, ports), span.clone()).await;
        match &result {
            Ok(c) => {
                span.record("peer", tracing::field::display(c.peer()));
                span.record("transport", c.transport());
                span.record("outcome", "ok");
            }
            Err(e) => {
                span.record("outcome", e.label());
            }
        }
        if let Err(e) = &result {
            self.emit(Event::DialFailed {
                addr: addr.clone(),
                kind: e.label(),
                error: e.to_string(),
            });
        }
        result
    }

    pub(super) async fn dial_any(
        &self,
        addr: &Multiaddr,
        ports: Ports,
    ) -> Result<Connection, DialError> {
        if let Some(transport) = self.added_transport(addr) {
            let label = transport.label();
            let result = self.dial_added(transport, addr).await;
            if let Err(e) = &result {
                count_error(
                    &self.inner.metrics.dial_errors,
                    label,
                    e.label(),
                    e.fault(),
                    transports::ip_version_of(addr),
                );
            }
            return result;
        }
        if !crate::dns::is_dns(addr) {
            return self.dial_resolved(addr, ports).await;
        }
        let resolved = match self.resolver()?.resolve(addr).await {
            Ok(r) => r,
            Err(e) => {
                count_error(&self.inner.metrics.dial_errors, "dns", "dns", e.fault(), "");
                return Err(DialError::Dns(e));
            }
        };
        let mut last = DialError::NoAddresses;
        for a in resolved {
            match self.dial_resolved(&a, ports).await {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    pub(super) async fn dial_resolved(
        &self,
        addr: &Multiaddr,
        ports: Ports,
    ) -> Result<Connection, DialError> {
        let (target, expected) = match transport::parse(addr) {
            Ok(t) => t,
            Err(e) => {
                count_error(
                    &self.inner.metrics.dial_errors,
                    "other",
                    "unsupported",
                    Fault::Unsupported,
                    "",
                );
                return Err(e.into());
            }
        };
        if expected == Some(self.peer_id()) {
            return Err(DialError::SelfDial);
        }
        let transport = target.transport_label();
        let ip_version = target.ip_version();
        let result = self.dial_target(&target, addr, expected, ports).await;
        if let Err(e) = &result {
            count_error(
                &self.inner.metrics.dial_errors,
                transport,
                e.label(),
                e.fault(),
                ip_version,
            );
        }
        result
    }

    pub(super) async fn dial_target(
        &self,
        target: &Target,
        addr: &Multiaddr,
        expected: Option<PeerId>,
        ports: Ports,
    ) -> Result<Connection, DialError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(DialError::ShuttingDown);
        }
        self.check_dial(addr, expected.as_ref())?;
        if let Some(peer) = &expected {
            self.admit(peer)?;
        }
        let cfg = &self.inner.config;
        let handshake = self
            .inner
            .metrics
            .resources
            .handshake("outbound", uses_fd(target.transport_label()));
        let (handshaken, local, started) = match target {
            Target::Quic(remote) => self.dial_quic(*remote, expected, ports).await?,
            _ => {
                let reuse = if cfg.port_reuse && ports == Ports::Configured {
                    self.reuse_addr_for(target)
                } else {
                    None
                };
                let (raw, local) = tokio::time::timeout(
                    cfg.dial_timeout,
                    transport::dial(target, reuse, &self.inner.ws_tls),
                )
                .await
                .map_err(|_| DialError::Timeout)??;
                let started = Instant::now();
                let handshaken =
                    tokio::time::timeout(cfg.handshake_timeout, self.upgrade(raw, true, expected))
                        .await
                        .map_err(|_| DialError::Timeout)??;
                (handshaken, local, started)
            }
        };
        drop(handshake);
        self.establish_outbound(
            handshaken,
            (target.transport_label(), target.ip_version()),
            strip_p2p(addr),
            local,
            started,
        )
    }

    /// Registers an outbound connection whose handshake is done, with its transport's
    /// labels (`transport`, `ip_version`) and the address as dialed.
    pub(super) fn establish_outbound(
        &self,
        handshaken: Handshaken,
        (transport, ip_version): (&'static str, &'static str),
        remote: Multiaddr,
        local: Multiaddr,
        started: Instant,
    ) -> Result<Connection, DialError> {
        let handshaken = Handshaken {
            route: Route {
                transport,
                ip_version,
                ..handshaken.route
            },
            ..handshaken
        };
        let ends = Ends {
            remote,
            local,
            direction: Direction::Outbound,
            ip_slot: None,
        };
        self.establish(handshaken, ends, started)
    }

    /// Dials `addr` (TCP, ending with `/p2p/<peer>`) from our listen port but takes the
    /// listener's part in the upgrade: the second side of a TCP simultaneous open (hole
    /// punching, `specs/relay/DCUtR.md`), where the remote runs the dialer's part on the
    /// same connection. The connection counts as outbound.
    pub async fn dial_as_listener(&self, addr: &Multiaddr) -> Result<Connection, DialError> {
        let (target, expected) = transport::parse(addr)?;
        let (Target::Tcp(remote), Some(expected)) = (&target, expected) else {
            return Err(DialError::Unsupported(addr.clone()));
        };
        let remote = *remote;
        if self.inner.shutdown.is_cancelled() {
            return Err(DialError::ShuttingDown);
        }
        self.check_dial(addr, Some(&expected))?;
        self.admit(&expected)?;
        let cfg = &self.inner.config;
        // Always the listen port, and only it: the NAT mapping the remote was told about is
        // the listen port's, and from another port the remote (a listener too, then) would
        // wait for us to speak first.
        let local = self
            .listen_addr_for(&target)
            .ok_or_else(|| DialError::Unsupported(addr.clone()))?;
        let result = async {
            let handshake = self.inner.metrics.resources.handshake("outbound", true);
            let (raw, local) =
                tokio::time::timeout(cfg.dial_timeout, transport::dial_tcp_from(remote, local))
                    .await
                    .map_err(|_| DialError::Timeout)??;
            let started = Instant::now();
            let handshaken =
                tokio::time::timeout(cfg.handshake_timeout, self.upgrade(raw, false, None))
                    .await
                    .map_err(|_| DialError::Timeout)??;
            if handshaken.peer != expected {
                let got = handshaken.peer;
                handshaken.mux.abandon(b"wrong peer");
                return Err(DialError::WrongPeer {
                    expected: Box::new(expected),
                    got: Box::new(got),
                });
            }
            drop(handshake);
            self.establish_outbound(
                handshaken,
                (target.transport_label(), target.ip_version()),
                strip_p2p(addr),
                local,
                started,
            )
        }
        .await;
        if let Err(e) = &result {
            count_error(
                &self.inner.metrics.dial_errors,
                target.transport_label(),
                e.label(),
                e.fault(),
                target.ip_version(),
            );
        }
        result
    }

    /// Returns an open connection to `peer`, or dials `addrs` in order until one works.
    pub async fn connect(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
    ) -> Result<Connection, DialError> {
        if let Some(c) = self.connection(&peer) {
            return Ok(c);
        }
        if self.is_banned(&peer) {
            return Err(DialError::Banned);
        }
        // One dial per peer at a time: later callers wait, then reuse its connection.
        let gate = DialGate::enter(&self.inner.dial_gates, peer);
        let _turn = gate.gate.lock().await;
        match self.connection(&peer) {
            Some(c) => Ok(c),
            None => self.connect_ranked(peer, addrs).await,
        }
    }

    /// Tries the ranked, not backed-off addresses, staggered (happy eyeballs): the first
    /// connection wins and the other attempts are dropped. Counted as go-libp2p's dial
    /// worker counts a peer dial (`libp2p_swarm_dials_per_peer_total`,
    /// `…_dial_latency_seconds`, `…_dial_ranking_delay_seconds`).
    pub(super) async fn connect_ranked(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
    ) -> Result<Connection, DialError> {
        let local =
            crate::dialer::Local::from_addrs(&self.listen_addrs(), &self.interface_listen_addrs());
        let now = Instant::now();
        let ranked = crate::dialer::rank(addrs, local);
        let mut dials = 0;
        let result = self
            .connect_ranked_dials(peer, &ranked, now, &mut dials)
            .await;
        let outcome = DialOutcomeLabels {
            outcome: if result.is_ok() { "success" } else { "failed" },
            num_dials: crate::metrics::num_dials_label(dials),
        };
        let m = &self.inner.metrics;
        m.dials_per_peer.get_or_create(&outcome).inc();
        m.dial_latency
            .get_or_create(&outcome)
            .observe(now.elapsed().as_secs_f64());
        result
    }

    /// [`Host::connect_ranked`]'s dials: counts the attempts started in `dials`, and
    /// observes how long the one that connected waited for its turn.
    async fn connect_ranked_dials(
        &self,
        peer: PeerId,
        ranked: &[Multiaddr],
        now: Instant,
        dials: &mut usize,
    ) -> Result<Connection, DialError> {
        use futures::StreamExt;
        let candidates: Vec<Multiaddr> = {
            let backoff = lock(&self.inner.backoff);
            ranked
                .iter()
                .filter(|a| !backoff.is_backing_off(a, now))
                .cloned()
                .collect()
        };
        if candidates.is_empty() {
            return Err(if ranked.is_empty() {
                DialError::NoAddresses
            } else {
                DialError::Backoff
            });
        }
        // Happy eyeballs: a new attempt starts every STAGGER, or at once when one fails.
        let mut queue: VecDeque<Multiaddr> = candidates
            .into_iter()
            .take(crate::dialer::MAX_PARALLEL)
            .collect();
        let attempt = |addr: Multiaddr| {
            let with_peer = match addr.iter().last() {
                Some(Protocol::P2p(_)) => addr.clone(),
                _ => addr.clone().with(Protocol::P2p(peer)),
            };
            let waited = now.elapsed();
            async move {
                let result = self.dial(&with_peer).await;
                (addr, result, waited)
            }
        };
        let mut attempts = futures::stream::FuturesUnordered::new();
        let mut last = DialError::NoAddresses;
        let mut timer = std::pin::pin!(tokio::time::sleep(std::time::Duration::ZERO));
        loop {
            tokio::select! {
                _ = &mut timer, if !queue.is_empty() => {
                    if let Some(addr) = queue.pop_front() {
                        *dials += 1;
                        attempts.push(attempt(addr));
                    }
                    timer.as_mut().reset(tokio::time::Instant::now() + crate::dialer::STAGGER);
                }
                Some((addr, result, waited)) = attempts.next(), if !attempts.is_empty() => match result {
                    Ok(c) => {
                        lock(&self.inner.backoff).succeeded(&addr);
                        self.inner
                            .metrics
                            .dial_ranking_delay
                            .observe(waited.as_secs_f64());
                        return Ok(c);
                    }
                    Err(e) => {
                        lock(&self.inner.backoff).failed(&addr, Instant::now());
                        last = e;
                        // Fire the next attempt now rather than at the next tick.
                        timer.as_mut().reset(tokio::time::Instant::now());
                    }
                },
                else => break,
            }
        }
        Err(last)
    }
}
