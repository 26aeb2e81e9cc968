//! The relay client: what makes a node behind NAT reachable through a circuit relay v2.
//!
//! - **Dialing through a relay**: `/p2p-circuit` is a transport added to the host
//!   ([`Client::install`]). Dialing `<relay addr>/p2p/R/p2p-circuit/p2p/D` connects to the
//!   relay R, sends `CONNECT D` on the hop protocol, and hands the host the hop stream as a
//!   raw byte stream; the host secures (the PeerId checked against D) and muxes it like
//!   TCP.
//! - **Being reached through a relay**: [`Client::reserve`] reserves a slot on a relay;
//!   [`Client::listen_via`] keeps one (refreshed at three quarters of its life, taken again
//!   after the connection to the relay drops, with backoff) and adds the circuit address
//!   to the host's listen addresses while it holds. The relay's `STOP` for a circuit to us
//!   is answered only from relays we hold a reservation on, and the stop stream goes to
//!   [`Host::accept`] as an inbound connection of transport `p2p-circuit`.
//!
//! What it is not: the relay service (the relay role), or the upgrade of a relayed
//! connection to a direct one (DCUtR).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use multiaddr::{Multiaddr, Protocol};

use super::proto::{self, HopMessage, Limit, ReadError, Status, StopMessage};
use super::{HOP, STOP};
use crate::host::{DialError, Extension, Host, Stream, StreamError, Transport};
use crate::identity::PeerId;
use crate::metrics::ReservationRequestLabels;
use crate::transport::RawStream;

/// The `transport` label of relayed connections.
pub const LABEL: &str = "p2p-circuit";
/// How long the relay has to answer, and the caller of a `STOP` to send it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff between failed reservation attempts: from the first to the longest.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// The longest reservation life we believe: a relay's `expire` is remote input (a far
/// future one would overflow `Instant`), and a day is longer than any relay grants.
const MAX_LIFE: Duration = Duration::from_secs(24 * 3600);
/// The soonest a reservation is refreshed: a relay answering with an expiry already past
/// (or a second away) must not make us ask again in a tight loop.
const MIN_REFRESH: Duration = Duration::from_secs(30);

/// How long a reservation expiring at `expire` (UNIX seconds, the relay's word) lasts
/// from `now_unix`, clamped to [`MAX_LIFE`].
fn reservation_life(expire: u64, now_unix: u64) -> Duration {
    Duration::from_secs(expire.saturating_sub(now_unix)).min(MAX_LIFE)
}

/// When to refresh a reservation with `life` left: at three quarters of it, not sooner
/// than [`MIN_REFRESH`].
fn refresh_after(life: Duration) -> Duration {
    (life * 3 / 4).max(MIN_REFRESH)
}

/// What the node's relay client does beyond dialing: the relays it stays reachable
/// through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Relays (`…/p2p/<relay id>`) to hold a reservation on, kept with
    /// [`Client::listen_via`].
    pub listen_via: Vec<Multiaddr>,
}

/// A reservation the relay granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    pub relay: PeerId,
    /// When it ends unless refreshed (our clock).
    pub expires: Instant,
    /// The relay's addresses, from its answer.
    pub relay_addrs: Vec<Multiaddr>,
    /// The limits the relay announced for circuits.
    pub limit: Option<Limit>,
    /// The voucher envelope, when the relay gave one.
    pub voucher: Option<Vec<u8>>,
}

/// Why a reservation was not made.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("the relay address must end with /p2p/<relay id>: {0}")]
    NoRelayId(Multiaddr),
    #[error("connecting to the relay: {0}")]
    Dial(#[from] DialError),
    #[error("opening the hop stream: {0}")]
    Stream(#[from] StreamError),
    #[error("relay refused the reservation with status {0}")]
    Refused(u16),
    #[error("the relay's answer is malformed")]
    Malformed,
    #[error("the relay did not answer in time")]
    Timeout,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl ReserveError {
    /// The `outcome` of `libp2p_autorelay_reservation_requests_outcome_total`, in
    /// go-libp2p's words for the relay's refusals.
    fn outcome_label(&self) -> &'static str {
        match self {
            ReserveError::Refused(code) => match Status::from_code(i32::from(*code)) {
                Some(Status::ReservationRefused) => "reservation refused",
                Some(Status::ResourceLimitExceeded) => "resource limit exceeded",
                Some(Status::PermissionDenied) => "permission denied",
                Some(Status::ConnectionFailed) => "connection failed",
                Some(Status::MalformedMessage) => "malformed message",
                _ => "err other",
            },
            _ => "err other",
        }
    }
}

struct Held {
    /// The relay's address we reserved through, with `/p2p/R`.
    relay_addr: Multiaddr,
    reserved: Reserved,
}

struct Inner {
    host: Host,
    reservations: Mutex<HashMap<PeerId, Held>>,
}

/// The relay client of one host. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// Adds `/p2p-circuit` to the host's transports and answers relays' `STOP`s.
    pub fn install(host: &Host) -> Client {
        let inner = Arc::new(Inner {
            host: host.clone(),
            reservations: Mutex::new(HashMap::new()),
        });
        host.add_transport(Arc::new(Circuits));
        host.install(Arc::new(StopHandler(Arc::downgrade(&inner))));
        Client { inner }
    }

    /// Reserves a slot on the relay at `relay_addr` (ending with `/p2p/R`), once.
    pub async fn reserve(&self, relay_addr: &Multiaddr) -> Result<Reserved, ReserveError> {
        let relay = match relay_addr.iter().last() {
            Some(Protocol::P2p(id)) => id,
            _ => return Err(ReserveError::NoRelayId(relay_addr.clone())),
        };
        let host = &self.inner.host;
        let conn = host
            .connect(relay, std::slice::from_ref(relay_addr))
            .await?;
        let mut s = conn.open_stream(&[HOP]).await?;
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, async {
            proto::write(&mut s, &HopMessage::reserve()).await?;
            proto::read::<HopMessage, _>(&mut s)
                .await
                .map_err(|e| match e {
                    ReadError::Io(e) => ReserveError::Io(e),
                    ReadError::Malformed => ReserveError::Malformed,
                })
        })
        .await
        .map_err(|_| ReserveError::Timeout)??;
        match answer.status_of() {
            Some(Status::Ok) => {}
            Some(other) => return Err(ReserveError::Refused(other.code() as u16)),
            None => return Err(ReserveError::Malformed),
        }
        let reservation = answer.reservation.ok_or(ReserveError::Malformed)?;
        let expire = reservation.expire.ok_or(ReserveError::Malformed)?;
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let reserved = Reserved {
            relay,
            expires: Instant::now() + reservation_life(expire, now_unix),
            relay_addrs: reservation.relay_addrs(),
            limit: answer.limit,
            voucher: reservation.voucher,
        };
        lock(&self.inner.reservations).insert(
            relay,
            Held {
                relay_addr: relay_addr.clone(),
                reserved: reserved.clone(),
            },
        );
        Ok(reserved)
    }

    /// Keeps a reservation on the relay at `relay_addr` until the host shuts down, and the
    /// circuit address `relay_addr/p2p-circuit` among the host's listen addresses while it
    /// holds.
    pub fn listen_via(&self, relay_addr: Multiaddr) {
        let client = self.clone();
        let host = self.inner.host.clone();
        let shutdown = host.shutdown_token();
        let circuit_addr = relay_addr.clone().with(Protocol::P2pCircuit);
        let metrics = host.metrics().clone();
        metrics.autorelay.status.set(1);
        metrics.autorelay.desired_reservations.inc();
        host.clone()
            .spawn_supervised("relay_reservation", async move {
                let m = &metrics.autorelay;
                let mut retry = RETRY_FIRST;
                // Whether we hold the reservation (and the circuit address) now.
                let mut held = false;
                let lost = |held: &mut bool| {
                    if std::mem::take(held) {
                        m.reservations_closed.inc();
                        m.relay_addresses.dec();
                        m.relay_addresses_updated.inc();
                    }
                };
                loop {
                    let result = client.reserve(&relay_addr).await;
                    m.reservation_requests
                        .get_or_create(&ReservationRequestLabels {
                            request_type: if held { "refresh" } else { "new" },
                            outcome: match &result {
                                Ok(_) => "success",
                                Err(e) => e.outcome_label(),
                            },
                        })
                        .inc();
                    let wait = match result {
                        Ok(r) => {
                            retry = RETRY_FIRST;
                            host.add_listen_addr(circuit_addr.clone());
                            if !std::mem::replace(&mut held, true) {
                                m.reservations_opened.inc();
                                m.relay_addresses.inc();
                                m.relay_addresses_updated.inc();
                            }
                            let life = r.expires.saturating_duration_since(Instant::now());
                            let conn = host.connection(&r.relay);
                            tokio::select! {
                                _ = shutdown.cancelled() => break,
                                _ = tokio::time::sleep(refresh_after(life)) => {}
                                // The reservation goes with the connection: take it again.
                                _ = async {
                                    match conn {
                                        Some(c) => c.closed().await,
                                        None => std::future::pending().await,
                                    }
                                } => {
                                    host.remove_listen_addr(&circuit_addr);
                                    lock(&client.inner.reservations).remove(&r.relay);
                                    lost(&mut held);
                                }
                            }
                            continue;
                        }
                        Err(e) => {
                            tracing::debug!(%relay_addr, "relay reservation failed: {e}");
                            host.remove_listen_addr(&circuit_addr);
                            lost(&mut held);
                            let wait = retry;
                            retry = (retry * 2).min(RETRY_MAX);
                            wait
                        }
                    };
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            });
    }

    /// The relays we hold a reservation on.
    pub fn reservations(&self) -> Vec<Reserved> {
        lock(&self.inner.reservations)
            .values()
            .map(|h| h.reserved.clone())
            .collect()
    }
}

/// `/p2p-circuit` as a transport.
struct Circuits;

impl Transport for Circuits {
    fn label(&self) -> &'static str {
        LABEL
    }

    fn handles(&self, addr: &Multiaddr) -> bool {
        addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
    }

    fn dial(
        &self,
        host: &Host,
        addr: &Multiaddr,
    ) -> BoxFuture<'static, Result<(RawStream, Multiaddr), DialError>> {
        let host = host.clone();
        let addr = addr.clone();
        Box::pin(async move {
            let (relay_addr, relay, target) = split(&addr).ok_or(DialError::NoAddresses)?;
            // The relay by its address, or by a connection we hold when the address is
            // only `/p2p/R/p2p-circuit/p2p/D`.
            let conn = if relay_addr.iter().count() > 1 {
                host.connect(relay, std::slice::from_ref(&relay_addr))
                    .await?
            } else {
                host.connection(&relay).ok_or(DialError::NoAddresses)?
            };
            let mut s = conn
                .open_stream(&[HOP])
                .await
                .map_err(DialError::RelayStream)?;
            let answer = tokio::time::timeout(ANSWER_TIMEOUT, async {
                proto::write(&mut s, &HopMessage::connect(target))
                    .await
                    .map_err(|e| DialError::RelayStream(StreamError::Negotiation(e.into())))?;
                proto::read::<HopMessage, _>(&mut s)
                    .await
                    .map_err(|_| DialError::RelayMalformed)
            })
            .await
            .map_err(|_| DialError::Timeout)??;
            match answer.status_of() {
                Some(Status::Ok) => {
                    Ok((RawStream::other(s), relay_addr.with(Protocol::P2pCircuit)))
                }
                Some(other) => Err(DialError::RelayRefused(other.code() as u16)),
                None => Err(DialError::RelayMalformed),
            }
        })
    }
}

/// `<relay addr>/p2p/R/p2p-circuit/p2p/D` → (`<relay addr>/p2p/R`, R, D).
fn split(addr: &Multiaddr) -> Option<(Multiaddr, PeerId, PeerId)> {
    let parts: Vec<Protocol<'_>> = addr.iter().collect();
    let circuit = parts
        .iter()
        .position(|p| matches!(p, Protocol::P2pCircuit))?;
    let relay = match parts.get(circuit.checked_sub(1)?) {
        Some(Protocol::P2p(id)) => *id,
        _ => return None,
    };
    let target = match parts.get(circuit + 1..) {
        Some([Protocol::P2p(id)]) => *id,
        _ => return None,
    };
    let relay_addr = parts[..circuit].iter().cloned().collect();
    Some((relay_addr, relay, target))
}

/// Answers the relay's `STOP` for circuits to us.
struct StopHandler(Weak<Inner>);

impl Extension for StopHandler {
    fn protocol_ids(&self) -> Vec<String> {
        vec![STOP.to_string()]
    }

    fn handle_stream(self: Arc<Self>, stream: Stream) -> BoxFuture<'static, ()> {
        let inner = self.0.upgrade();
        Box::pin(async move {
            if let Some(inner) = inner {
                stop(&inner, stream).await;
            }
        })
    }
}

async fn stop(inner: &Inner, mut s: Stream) {
    let msg =
        match tokio::time::timeout(ANSWER_TIMEOUT, proto::read::<StopMessage, _>(&mut s)).await {
            Ok(Ok(m)) => m,
            Ok(Err(ReadError::Malformed)) => {
                let _ = proto::write(&mut s, &StopMessage::answer(Status::MalformedMessage)).await;
                return;
            }
            _ => return,
        };
    let caller = match msg.caller() {
        Ok(c) => c,
        Err(status) => {
            let _ = proto::write(&mut s, &StopMessage::answer(status)).await;
            return;
        }
    };
    let relay = s.peer();
    // Only from relays we reserved with: anyone else offering circuits is refused.
    let relay_addr = lock(&inner.reservations)
        .get(&relay)
        .map(|h| h.relay_addr.clone());
    let Some(relay_addr) = relay_addr else {
        let _ = proto::write(&mut s, &StopMessage::answer(Status::PermissionDenied)).await;
        return;
    };
    if proto::write(&mut s, &StopMessage::answer(Status::Ok))
        .await
        .is_err()
    {
        return;
    }
    let local = relay_addr.with(Protocol::P2pCircuit);
    let remote = local.clone().with(Protocol::P2p(caller));
    inner.host.accept(RawStream::other(s), remote, local, LABEL);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay's expiry is remote input: far in the future it is clamped (no `Instant`
    /// overflow), already past it does not make the client ask again at once.
    #[test]
    fn a_relays_expiry_is_clamped_and_refreshes_are_spaced() {
        let now = 1_900_000_000;
        assert_eq!(reservation_life(u64::MAX, now), MAX_LIFE);
        assert_eq!(reservation_life(now + 3600, now), Duration::from_secs(3600));
        assert_eq!(reservation_life(now - 10, now), Duration::ZERO);
        let _ = Instant::now() + reservation_life(u64::MAX, now);
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(2700)
        );
        assert_eq!(refresh_after(Duration::ZERO), MIN_REFRESH);
        assert_eq!(refresh_after(Duration::from_secs(2)), MIN_REFRESH);
    }

    #[test]
    fn circuit_addresses_split_into_relay_and_target() {
        let r = crate::Keypair::generate_ed25519().public().to_peer_id();
        let d = crate::Keypair::generate_ed25519().public().to_peer_id();
        let addr: Multiaddr = format!("/ip4/10.0.0.1/tcp/4001/p2p/{r}/p2p-circuit/p2p/{d}")
            .parse()
            .unwrap();
        let (relay_addr, relay, target) = split(&addr).unwrap();
        assert_eq!(
            relay_addr.to_string(),
            format!("/ip4/10.0.0.1/tcp/4001/p2p/{r}")
        );
        assert_eq!((relay, target), (r, d));
        let bare: Multiaddr = format!("/p2p/{r}/p2p-circuit/p2p/{d}").parse().unwrap();
        assert_eq!(split(&bare).unwrap().0.to_string(), format!("/p2p/{r}"));
        for bad in [
            format!("/ip4/10.0.0.1/tcp/4001/p2p-circuit/p2p/{d}"),
            format!("/ip4/10.0.0.1/tcp/4001/p2p/{r}/p2p-circuit"),
            format!("/ip4/10.0.0.1/tcp/4001/p2p/{r}"),
        ] {
            assert!(split(&bad.parse().unwrap()).is_none(), "{bad}");
        }
    }
}
