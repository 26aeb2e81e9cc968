//! Admission of inbound connections: per-IP and per-subnet counts of established
//! connections, pending-handshake places (decided by the pure table in `admission.rs`), and the
//! connection limits.

use super::*;

/// Inbound connections per source IP and per subnet.
#[derive(Default)]
pub(super) struct IpCounts {
    pub(super) ips: HashMap<std::net::IpAddr, usize>,
    pub(super) subnets: HashMap<Subnet, usize>,
}

/// One inbound connection's place in the per-IP and per-subnet counts.
pub(super) struct IpSlot {
    pub(super) counts: Arc<Mutex<IpCounts>>,
    pub(super) ip: std::net::IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut c = lock(&self.counts);
        let subnet = Subnet::of(self.ip);
        if let Some(n) = c.ips.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.ips.remove(&self.ip);
            }
        }
        if let Some(n) = c.subnets.get_mut(&subnet) {
            *n -= 1;
            if *n == 0 {
                c.subnets.remove(&subnet);
            }
        }
    }
}

/// An inbound handshake's place among the pending ones (see [`admission`]): its
/// deadline, the token a newer handshake cancels to evict it, and the place given back
/// when dropped.
pub(super) struct PendingSlot {
    pub(super) table: Arc<Mutex<Admission<CancellationToken>>>,
    pub(super) id: PendingId,
    pub(super) deadline: Instant,
    pub(super) evicted: CancellationToken,
    /// The handshake's place in the transient scope of the resource metrics.
    pub(super) _counted: crate::resource_metrics::Handshake,
}

/// Why an inbound handshake was cut short.
#[derive(Debug, Clone, Copy)]
pub(super) enum CutShort {
    Deadline,
    Evicted,
}

impl CutShort {
    /// The `error` label of `libp2p_swarm_handshake_errors_total`.
    pub(super) fn label(self) -> &'static str {
        match self {
            CutShort::Deadline => "deadline",
            CutShort::Evicted => admission::EVICTED,
        }
    }

    pub(super) fn fault(self) -> Fault {
        match self {
            CutShort::Deadline => Fault::Timeout,
            CutShort::Evicted => Fault::Limit,
        }
    }
}

impl PendingSlot {
    /// Runs `handshake` until it is done, its deadline passes, or it is evicted.
    pub(super) async fn run<F: Future>(&self, handshake: F) -> Result<F::Output, CutShort> {
        tokio::select! {
            biased;
            _ = self.evicted.cancelled() => Err(CutShort::Evicted),
            r = tokio::time::timeout_at(self.deadline.into(), handshake) => {
                r.map_err(|_| CutShort::Deadline)
            }
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        lock(&self.table).release(self.id);
    }
}

/// The places an inbound connection was admitted with: its share of the per-IP caps,
/// kept while the connection lives, and its pending-handshake place, given back when the
/// handshake ends.
pub(super) struct Places {
    pub(super) ip: Option<IpSlot>,
    pub(super) pending: PendingSlot,
}

impl Host {
    /// A place for one more inbound connection from `remote`'s IP, `Ok(None)` when no
    /// cap is configured, `Err` (counted) when the IP or its subnet is at its cap.
    pub(super) fn ip_slot(
        &self,
        remote: &Multiaddr,
        transport: &'static str,
        ip_version: &'static str,
    ) -> Result<Option<IpSlot>, ()> {
        let (per_ip, per_subnet) = (
            self.inner.config.max_incoming_per_ip,
            self.inner.config.max_incoming_per_subnet,
        );
        if per_ip == 0 && per_subnet == 0 {
            return Ok(None);
        }
        let Some(ip) = ip_of(remote) else {
            return Ok(None);
        };
        let subnet = Subnet::of(ip);
        let mut c = lock(&self.inner.ip_counts);
        let refused = if per_ip > 0 && c.ips.get(&ip).copied().unwrap_or(0) >= per_ip {
            Some("ip_limit")
        } else if per_subnet > 0 && c.subnets.get(&subnet).copied().unwrap_or(0) >= per_subnet {
            Some("subnet_limit")
        } else {
            None
        };
        if let Some(reason) = refused {
            drop(c);
            count_error(
                &self.inner.metrics.handshake_errors,
                transport,
                reason,
                Fault::Limit,
                ip_version,
            );
            return Err(());
        }
        *c.ips.entry(ip).or_insert(0) += 1;
        *c.subnets.entry(subnet).or_insert(0) += 1;
        Ok(Some(IpSlot {
            counts: self.inner.ip_counts.clone(),
            ip,
        }))
    }

    /// A place among the inbound handshakes in progress on `transport`, or `None`
    /// (counted) when the source's IP or subnet holds its budget already. When the
    /// transport's places are all taken, an older handshake is evicted to make room; it
    /// counts itself as it ends.
    pub(super) fn pending_slot(
        &self,
        ip: Option<std::net::IpAddr>,
        transport: &'static str,
        ip_version: &'static str,
    ) -> Option<PendingSlot> {
        let token = CancellationToken::new();
        let admitted = lock(&self.inner.pending_incoming).handle_incoming(
            Instant::now(),
            transport,
            ip,
            token.clone(),
        );
        match admitted {
            Ok(a) => {
                if let Some(victim) = a.evicted {
                    victim.cancel();
                }
                Some(PendingSlot {
                    table: self.inner.pending_incoming.clone(),
                    id: a.id,
                    deadline: a.deadline,
                    evicted: token,
                    _counted: self
                        .inner
                        .metrics
                        .resources
                        .handshake("inbound", uses_fd(transport)),
                })
            }
            Err(refusal) => {
                self.inner
                    .metrics
                    .resources
                    .blocked("inbound", "transient", "connection");
                count_error(
                    &self.inner.metrics.handshake_errors,
                    transport,
                    refusal.label(),
                    Fault::Limit,
                    ip_version,
                );
                None
            }
        }
    }

    /// Inbound connections in their handshake on `transport` (a label: `"tcp"`,
    /// `"quic-v1"`, `"ws"`, ...).
    pub fn pending_incoming(&self, transport: &str) -> usize {
        lock(&self.inner.pending_incoming).pending(transport)
    }

    /// Counts and reports an inbound connection whose handshake failed.
    pub(super) fn inbound_failed(
        &self,
        transport: &'static str,
        ip_version: &'static str,
        e: &DialError,
    ) {
        count_error(
            &self.inner.metrics.handshake_errors,
            transport,
            e.label(),
            e.fault(),
            ip_version,
        );
        tracing::debug!("inbound {transport} handshake failed: {e}");
        self.emit(Event::IncomingConnectionError {
            error: e.to_string(),
        });
    }

    /// Refuses early (before dialing) when a connection to `peer` would be over a limit;
    /// [`Host::establish`] checks again when the connection is registered.
    pub(super) fn admit(&self, peer: &PeerId) -> Result<(), DialError> {
        let hit = self.limit_hit(&lock(&self.inner.connections), peer);
        match hit {
            Some(scope) => {
                self.count_blocked_connection(Direction::Outbound, scope);
                Err(DialError::Limit(scope))
            }
            None => Ok(()),
        }
    }

    /// Counts a connection a limit refused (`libp2p_rcmgr_blocked_resources`).
    pub(super) fn count_blocked_connection(&self, dir: Direction, scope: LimitScope) {
        let scope = match scope {
            LimitScope::Connections => "system",
            LimitScope::ConnectionsPerPeer => "peer",
        };
        self.inner
            .metrics
            .resources
            .blocked(dir.as_str(), scope, "connection");
    }

    /// The connection limit one more connection to `peer` would break, if any.
    pub(super) fn limit_hit(
        &self,
        conns: &HashMap<PeerId, Vec<Connection>>,
        peer: &PeerId,
    ) -> Option<LimitScope> {
        let total: usize = conns.values().map(Vec::len).sum();
        if total >= self.inner.config.max_connections {
            return Some(LimitScope::Connections);
        }
        let per_peer = conns.get(peer).map_or(0, Vec::len);
        (per_peer >= self.inner.config.max_connections_per_peer)
            .then_some(LimitScope::ConnectionsPerPeer)
    }
}
