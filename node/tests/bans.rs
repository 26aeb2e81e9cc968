//! The host's bans and draining, between real hosts over loopback: a ban closes what is
//! open and refuses what comes next, in both directions, until it is lifted or lapses; a
//! prefix ban refuses at accept; a draining host takes no newcomer but keeps what it has.
//! Every wait is bounded; the hosts' own events say when a connection is up or gone.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use pylon_node::host::{BanTarget, DialError};
use pylon_node::ipprefix::IpPrefix;
use pylon_node::node::Node;
use pylon_testkit::node::{self as kit, LOCAL_TCP};

const T: Duration = Duration::from_secs(20);

/// `from` dials `to` and does not end up connected: the dial fails, or `to` closes the
/// connection before it is ever registered there.
async fn refused(from: &Node, to: &Node) {
    match tokio::time::timeout(T, from.host.dial(&kit::addr_of(to)))
        .await
        .unwrap()
    {
        Err(_) => {}
        Ok(conn) => tokio::time::timeout(T, conn.closed()).await.unwrap(),
    }
    assert!(to.host.connection(&from.peer_id()).is_none());
}

#[tokio::test]
async fn a_peer_ban_closes_and_refuses_both_ways_until_lifted() {
    let (a, b) = (
        kit::start(&[LOCAL_TCP]).await,
        kit::start(&[LOCAL_TCP]).await,
    );
    b.host.dial(&kit::addr_of(&a)).await.unwrap();
    let conn = kit::connection(&a, b.peer_id(), T).await;
    let ban = a
        .host
        .ban(BanTarget::Peer(b.peer_id()), None, "test")
        .unwrap();
    tokio::time::timeout(T, conn.closed()).await.unwrap();
    assert!(a.host.is_banned(&b.peer_id()));
    // Inbound: refused once the handshake names the peer.
    refused(&b, &a).await;
    // Outbound: refused before dialing, by address or by PeerId.
    let err = a.host.dial(&kit::addr_of(&b)).await.unwrap_err();
    assert!(matches!(err, DialError::Banned), "{err}");
    let err = a.dial_peer(b.peer_id()).await.unwrap_err();
    assert!(matches!(err, DialError::Banned), "{err}");
    assert_eq!(a.host.bans().len(), 1);
    assert_eq!(a.host.unban(ban.id).map(|b| b.id), Some(ban.id));
    b.host.dial(&kit::addr_of(&a)).await.unwrap();
    kit::connection(&a, b.peer_id(), T).await;
}

#[tokio::test]
async fn a_prefix_ban_refuses_at_accept_and_lapses() {
    let (a, b) = (
        kit::start(&[LOCAL_TCP]).await,
        kit::start(&[LOCAL_TCP]).await,
    );
    b.host.dial(&kit::addr_of(&a)).await.unwrap();
    let conn = kit::connection(&a, b.peer_id(), T).await;
    let loopback = BanTarget::Prefix("127.0.0.0/8".parse::<IpPrefix>().unwrap());
    let ban = a.host.ban(loopback, None, "test").unwrap();
    tokio::time::timeout(T, conn.closed()).await.unwrap();
    // The listener closes the socket before any handshake: the dial itself fails.
    let fresh = kit::start(&[LOCAL_TCP]).await;
    assert!(fresh.host.dial(&kit::addr_of(&a)).await.is_err());
    let err = a.host.dial(&kit::addr_of(&fresh)).await.unwrap_err();
    assert!(matches!(err, DialError::Banned), "{err}");
    // Banning the same target again moves its expiry: soon, then it lapses and dials
    // go through again (polled: nothing reports an expiry).
    let soon = Instant::now() + Duration::from_millis(200);
    assert_eq!(a.host.ban(loopback, Some(soon), "test").unwrap().id, ban.id);
    pylon_testkit::wait::until_async("the prefix ban lapsed", T, async || {
        fresh.host.dial(&kit::addr_of(&a)).await.is_ok()
    })
    .await;
    kit::connection(&a, fresh.peer_id(), T).await;
    assert!(a.host.bans().is_empty());
}

#[tokio::test]
async fn a_draining_host_keeps_its_connections_and_takes_no_new_one() {
    let (a, b, c) = (
        kit::start(&[LOCAL_TCP]).await,
        kit::start(&[LOCAL_TCP]).await,
        kit::start(&[LOCAL_TCP]).await,
    );
    b.host.dial(&kit::addr_of(&a)).await.unwrap();
    let kept = kit::connection(&a, b.peer_id(), T).await;
    a.host.drain();
    assert!(a.host.is_draining());
    assert!(c.host.dial(&kit::addr_of(&a)).await.is_err());
    assert!(!kept.is_closed());
    pylon_node::protocols::ping::ping(&b.host, &a.peer_id())
        .await
        .unwrap();
    // Outbound dials are still allowed.
    a.host.dial(&kit::addr_of(&c)).await.unwrap();
}
