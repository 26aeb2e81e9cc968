//! The NAT test bed itself (`pylon_testkit::netns`): a LAN host reaches the public host
//! through its router's address; an endpoint-independent NAT keeps a local port for every
//! destination, a symmetric one gives each destination another; the routers drop
//! unsolicited packets instead of refusing them; dropping the bed deletes its namespaces.
//! Needs root (CI runs as root) and the `ip` and `nft` commands (ops/test.sh installs them).
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use pylon_testkit::netns::{self, Bed, Nat};
use tokio::net::{TcpListener, TcpSocket};

const T: Duration = Duration::from_secs(10);

/// Long enough for a reset or an ICMP error to come back on a bridge; a dropped SYN is
/// never answered.
const NO_ANSWER: Duration = Duration::from_millis(500);

/// Two listeners on the public host; the addresses they saw, in accept order, from
/// `expected` connections.
fn public_listeners(
    bed: &Bed,
    expected: usize,
) -> (
    netns::Task<Vec<SocketAddr>>,
    tokio::sync::oneshot::Receiver<[SocketAddr; 2]>,
) {
    let ip = bed.public().ip();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let task = bed
        .public()
        .spawn(async move || {
            let a = TcpListener::bind((ip, 0)).await.unwrap();
            let b = TcpListener::bind((ip, 0)).await.unwrap();
            bound_tx
                .send([a.local_addr().unwrap(), b.local_addr().unwrap()])
                .unwrap();
            let mut seen = Vec::new();
            for listener in [&a, &b].into_iter().cycle().take(expected) {
                let (_stream, from) = listener.accept().await.unwrap();
                seen.push(from);
            }
            seen
        })
        .unwrap();
    (task, bound_rx)
}

/// From `lan`'s host, connects to both `targets` from one local port; returns that port.
async fn connect_from_one_port(bed: &Bed, lan: usize, targets: [SocketAddr; 2]) -> u16 {
    bed.lan(lan)
        .host
        .spawn(async move || {
            let mut port = 0;
            let mut streams = Vec::new();
            for target in targets {
                let socket = TcpSocket::new_v4().unwrap();
                socket.set_reuseaddr(true).unwrap();
                socket.set_reuseport(true).unwrap();
                socket
                    .bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())
                    .unwrap();
                let stream = socket.connect(target).await.unwrap();
                port = stream.local_addr().unwrap().port();
                streams.push(stream);
            }
            port
        })
        .unwrap()
        .join()
        .await
}

#[tokio::test]
async fn endpoint_independent_nat_keeps_the_port_and_drops_the_unsolicited() {
    let bed = Bed::builder()
        .lan(Nat::EndpointIndependent)
        .build()
        .unwrap();
    let router = bed.lan(0).router.ip();
    let (seen, bound) = public_listeners(&bed, 2);
    let targets = tokio::time::timeout(T, bound).await.unwrap().unwrap();
    let port = tokio::time::timeout(T, connect_from_one_port(&bed, 0, targets))
        .await
        .unwrap();
    let seen = tokio::time::timeout(T, seen.join()).await.unwrap();
    let mapped = SocketAddr::from((router, port));
    assert_eq!(
        seen,
        [mapped, mapped],
        "one public port for both destinations"
    );

    // From the public host, the mapped port and a closed one: no answer at all.
    let unanswered = bed
        .public()
        .spawn(async move || {
            let mut unanswered = 0;
            for target in [mapped, SocketAddr::from((router, 9))] {
                let socket = TcpSocket::new_v4().unwrap();
                match tokio::time::timeout(NO_ANSWER, socket.connect(target)).await {
                    Err(_elapsed) => unanswered += 1,
                    Ok(answer) => panic!("{target} answered an unsolicited SYN: {answer:?}"),
                }
            }
            unanswered
        })
        .unwrap()
        .join()
        .await;
    assert_eq!(unanswered, 2);
}

#[tokio::test]
async fn symmetric_nat_gives_each_destination_another_port() {
    let bed = Bed::builder()
        .lan(Nat::Symmetric)
        .lan(Nat::EndpointIndependent)
        .build()
        .unwrap();
    assert_eq!(bed.lans().len(), 2);
    assert_ne!(bed.lan(0).router.ip(), bed.lan(1).router.ip());
    let (seen, bound) = public_listeners(&bed, 2);
    let targets = tokio::time::timeout(T, bound).await.unwrap().unwrap();
    let port = tokio::time::timeout(T, connect_from_one_port(&bed, 0, targets))
        .await
        .unwrap();
    let seen = tokio::time::timeout(T, seen.join()).await.unwrap();
    assert!(seen.iter().all(|a| a.ip() == bed.lan(0).router.ip()));
    // fully-random draws from about 28 000 ports: a repeat is a one-in-28 000 chance.
    assert_ne!(
        seen[0].port(),
        seen[1].port(),
        "a port per destination (local port {port})"
    );
}

#[tokio::test]
async fn a_bed_deletes_its_namespaces_and_a_task_ends_when_dropped() {
    let bed = Bed::builder()
        .lan(Nat::EndpointIndependent)
        .build()
        .unwrap();
    let names: Vec<String> = [bed.public(), &bed.lan(0).router, &bed.lan(0).host]
        .iter()
        .map(|h| h.ns().to_owned())
        .collect();
    for ns in &names {
        assert!(Path::new(netns::NETNS_DIR).join(ns).exists(), "{ns}");
    }
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
    let forever = bed
        .lan(0)
        .host
        .spawn(async move || {
            entered_tx.send(()).unwrap();
            std::future::pending::<()>().await
        })
        .unwrap();
    tokio::time::timeout(T, entered_rx).await.unwrap().unwrap();
    assert!(!forever.is_finished());
    drop(forever);
    drop(bed);
    for ns in &names {
        assert!(!Path::new(netns::NETNS_DIR).join(ns).exists(), "{ns}");
    }
    let missing = netns::spawn_in(&names[0], async || ()).unwrap_err();
    assert!(missing.to_string().contains(&names[0]), "{missing}");
}

/// Public hosts sit on the bridge with addresses of their own: they reach each other
/// directly and are reached by a LAN host through its router, and a public host's
/// unsolicited SYN to a router goes unanswered like the public namespace's.
#[tokio::test]
async fn public_hosts_have_addresses_of_their_own_on_the_public_network() {
    let bed = Bed::builder()
        .public_hosts(2)
        .lan(Nat::EndpointIndependent)
        .build()
        .unwrap();
    let (a, b) = (bed.public_host(0).clone(), bed.public_host(1).clone());
    assert_eq!(bed.public_hosts().len(), 2);
    assert_eq!(a.ip(), Ipv4Addr::new(11, 77, 0, 2));
    assert_eq!(b.ip(), Ipv4Addr::new(11, 77, 0, 3));
    let b_ip = b.ip();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let accepted = b
        .spawn(async move || {
            let listener = TcpListener::bind((b_ip, 0)).await.unwrap();
            bound_tx.send(listener.local_addr().unwrap()).unwrap();
            let mut seen = Vec::new();
            for _ in 0..2 {
                seen.push(listener.accept().await.unwrap().1.ip());
            }
            seen
        })
        .unwrap();
    let target = tokio::time::timeout(T, bound_rx).await.unwrap().unwrap();
    let router = bed.lan(0).router.ip();
    for from in [&a, &bed.lan(0).host] {
        from.spawn(async move || TcpSocket::new_v4().unwrap().connect(target).await.unwrap())
            .unwrap()
            .join()
            .await;
    }
    let seen = tokio::time::timeout(T, accepted.join()).await.unwrap();
    assert_eq!(seen, [a.ip().into(), std::net::IpAddr::from(router)]);

    let unanswered = a
        .spawn(async move || {
            let socket = TcpSocket::new_v4().unwrap();
            tokio::time::timeout(NO_ANSWER, socket.connect((router, 9).into()))
                .await
                .is_err()
        })
        .unwrap()
        .join()
        .await;
    assert!(unanswered, "the router answered an unsolicited SYN");
}
