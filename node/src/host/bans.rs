//! The operator's hand on admission: bans (peers and IP prefixes, decided by the pure
//! table in `admission.rs`) and draining (no new inbound connections while the node winds
//! down). Enforced in three places: a listener closes a socket from a banned prefix (or
//! any, while draining) as soon as it is accepted; a dial to a banned peer or address is
//! refused before it starts; and a handshake that names a banned peer — the first moment
//! an inbound peer is known — is not established. Setting a ban also closes the matching
//! connections that are open.
//!
//! Not here: where bans come from (the config's `connections.deny`, the admin API) or
//! whether they survive a restart (they do not: the config is the durable list).

use super::*;
pub use admission::{Ban, BanError, BanId, BanTarget, MAX_BANS};

impl Host {
    /// Bans `target` until `until` (`None`: until [`Host::unban`]), on behalf of `origin`
    /// (`"config"`, `"admin"`), and closes its open connections. The same target and
    /// origin again moves that ban's expiry.
    pub fn ban(
        &self,
        target: BanTarget,
        until: Option<Instant>,
        origin: &'static str,
    ) -> Result<Ban, BanError> {
        let ban = lock(&self.inner.bans).handle_ban(Instant::now(), target, until, origin)?;
        let closed = self.close_matching(&target);
        tracing::debug!(%target, origin, closed, "ban set");
        Ok(ban)
    }

    /// Lifts a ban; what it was, if it was in force.
    pub fn unban(&self, id: BanId) -> Option<Ban> {
        lock(&self.inner.bans).remove(Instant::now(), id)
    }

    /// The bans in force, oldest first.
    pub fn bans(&self) -> Vec<Ban> {
        lock(&self.inner.bans).list(Instant::now())
    }

    /// Whether `peer` is banned now.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        lock(&self.inner.bans).peer_banned(peer, Instant::now())
    }

    /// Stops accepting inbound connections, for good: listeners close new sockets at once
    /// and inbound connections through relays are not established. Open connections and
    /// outbound dials are left alone; [`Host::shutdown`] ends them.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    /// Whether [`Host::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// Closes the open connections `target` matches; how many.
    fn close_matching(&self, target: &BanTarget) -> usize {
        let matching: Vec<Connection> = self
            .connections()
            .into_iter()
            .filter(|c| match target {
                BanTarget::Peer(p) => c.peer() == *p,
                BanTarget::Prefix(prefix) => {
                    ip_of(c.remote_addr()).is_some_and(|ip| prefix.contains(ip))
                }
            })
            .collect();
        for c in &matching {
            c.close();
        }
        matching.len()
    }

    /// Whether a listener must close a socket from `remote` at once (banned prefix, or
    /// draining); counted as a handshake error (`banned`, `draining`).
    pub(super) fn refuses_inbound(
        &self,
        remote: &Multiaddr,
        transport: &'static str,
        ip_version: &'static str,
    ) -> bool {
        let reason = if self.is_draining() {
            "draining"
        } else if ip_of(remote)
            .is_some_and(|ip| lock(&self.inner.bans).ip_banned(ip, Instant::now()))
        {
            "banned"
        } else {
            return false;
        };
        count_error(
            &self.inner.metrics.handshake_errors,
            transport,
            reason,
            Fault::Local,
            ip_version,
        );
        true
    }

    /// Refuses a dial to a banned peer or to an address in a banned prefix.
    pub(super) fn check_dial(
        &self,
        addr: &Multiaddr,
        peer: Option<&PeerId>,
    ) -> Result<(), DialError> {
        let bans = lock(&self.inner.bans);
        let now = Instant::now();
        if peer.is_some_and(|p| bans.peer_banned(p, now))
            || ip_of(addr).is_some_and(|ip| bans.ip_banned(ip, now))
        {
            return Err(DialError::Banned);
        }
        Ok(())
    }

    /// Whether a connection whose handshake is done may join the pool: not from or to a
    /// banned peer or prefix, and not inbound while draining.
    pub(super) fn check_established(
        &self,
        peer: &PeerId,
        remote: &Multiaddr,
        direction: Direction,
    ) -> Result<(), DialError> {
        if direction == Direction::Inbound && self.is_draining() {
            return Err(DialError::ShuttingDown);
        }
        self.check_dial(remote, Some(peer))
    }
}
