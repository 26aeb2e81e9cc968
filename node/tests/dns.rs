//! DNS multiaddrs against a real DNS server on loopback (hickory-server, in process,
//! serving an in-memory zone over UDP and TCP), plus a server that answers garbage.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::rdata::{A, AAAA, SOA, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;
use pylon_node::dns::{self, Resolver};
use pylon_node::node;
use pylon_node::protocols::ping;
use pylon_node::{Keypair, Multiaddr};
use pylon_testkit::node::{self as kit, port_of};

const T: Duration = Duration::from_secs(10);
const ZONE: &str = "pylon.test.";

/// Serves `records` (name relative to the zone, data) on 127.0.0.1, UDP and TCP, one port.
async fn dns_server(records: Vec<(&str, RData)>) -> (SocketAddr, Server<Catalog>) {
    let origin = Name::from_str(ZONE).unwrap();
    let mut zone = InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
    );
    let soa = SOA::new(
        Name::from_str("ns.pylon.test.").unwrap(),
        Name::from_str("ops.pylon.test.").unwrap(),
        1,
        60,
        60,
        60,
        60,
    );
    assert!(zone.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1));
    for (name, data) in records {
        let name = Name::from_str(name)
            .unwrap()
            .append_domain(&origin)
            .unwrap();
        assert!(zone.upsert_mut(Record::from_rdata(name, 60, data), 1));
    }
    let mut catalog = Catalog::new();
    catalog.upsert(
        LowerName::new(&origin),
        vec![Arc::new(zone) as Arc<dyn ZoneHandler>],
    );
    let mut server = Server::new(catalog);
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
    server.register_socket(udp);
    server.register_listener(tcp, T, 16);
    (addr, server)
}

fn txt(value: &str) -> RData {
    RData::TXT(TXT::new(vec![value.to_string()]))
}

fn resolver(server: SocketAddr) -> Resolver {
    Resolver::new(&dns::Config {
        nameservers: vec![server],
        timeout: Duration::from_secs(2),
    })
    .unwrap()
}

#[tokio::test]
async fn dns_and_dnsaddr_resolve_and_dial() {
    let a = kit::start(&[kit::LOCAL_TCP]).await;
    let port = port_of(&a);
    let id = a.peer_id();
    let other = Keypair::generate_ed25519().public().to_peer_id();
    let mut records = vec![
        ("node", RData::A(A(Ipv4Addr::LOCALHOST))),
        ("node", RData::AAAA(AAAA(Ipv6Addr::LOCALHOST))),
        (
            "_dnsaddr.boot",
            txt(&format!("dnsaddr=/ip4/127.0.0.1/tcp/{port}/p2p/{id}")),
        ),
        (
            "_dnsaddr.boot",
            txt(&format!("dnsaddr=/ip4/127.0.0.1/tcp/1/p2p/{other}")),
        ),
        ("_dnsaddr.boot", txt("dnsaddr=this is not a multiaddr")),
        ("_dnsaddr.boot", txt("v=spf1 -all")),
        ("_dnsaddr.nested", txt("dnsaddr=/dnsaddr/boot.pylon.test")),
        (
            "_dnsaddr.named",
            txt(&format!(
                "dnsaddr=/dns4/node.pylon.test/tcp/{port}/p2p/{id}"
            )),
        ),
        ("_dnsaddr.loop1", txt("dnsaddr=/dnsaddr/loop2.pylon.test")),
        ("_dnsaddr.loop2", txt("dnsaddr=/dnsaddr/loop1.pylon.test")),
    ];
    // A chain one longer than we follow.
    for i in 0..=dns::MAX_DEPTH {
        records.push((
            Box::leak(format!("_dnsaddr.deep{i}").into_boxed_str()),
            txt(&format!("dnsaddr=/dnsaddr/deep{}.pylon.test", i + 1)),
        ));
    }
    records.push((
        Box::leak(format!("_dnsaddr.deep{}", dns::MAX_DEPTH + 1).into_boxed_str()),
        txt(&format!("dnsaddr=/ip4/127.0.0.1/tcp/{port}/p2p/{id}")),
    ));
    let (server_addr, _server) = dns_server(records).await;
    let r = resolver(server_addr);
    let m = |s: &str| s.parse::<Multiaddr>().unwrap();

    assert_eq!(
        r.resolve(&m(&format!("/dns4/node.pylon.test/tcp/{port}")))
            .await
            .unwrap(),
        vec![m(&format!("/ip4/127.0.0.1/tcp/{port}"))]
    );
    assert_eq!(
        r.resolve(&m("/dns6/node.pylon.test/tcp/9")).await.unwrap(),
        vec![m("/ip6/::1/tcp/9")]
    );
    assert_eq!(
        r.resolve(&m("/dns/node.pylon.test/tcp/9"))
            .await
            .unwrap()
            .len(),
        2
    );
    // /dnsaddr with a /p2p/ suffix keeps only that peer's addresses; garbage is skipped.
    let want = vec![m(&format!("/ip4/127.0.0.1/tcp/{port}/p2p/{id}"))];
    assert_eq!(
        r.resolve(&m(&format!("/dnsaddr/boot.pylon.test/p2p/{id}")))
            .await
            .unwrap(),
        want
    );
    assert_eq!(
        r.resolve(&m("/dnsaddr/boot.pylon.test"))
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        r.resolve(&m(&format!("/dnsaddr/nested.pylon.test/p2p/{id}")))
            .await
            .unwrap(),
        want
    );
    assert_eq!(
        r.resolve(&m(&format!("/dnsaddr/named.pylon.test/p2p/{id}")))
            .await
            .unwrap(),
        want
    );
    // Loops and too-deep chains end with an error, quickly.
    assert_eq!(
        tokio::time::timeout(T, r.resolve(&m("/dnsaddr/loop1.pylon.test")))
            .await
            .unwrap(),
        Err(dns::Error::Loop)
    );
    assert_eq!(
        tokio::time::timeout(T, r.resolve(&m("/dnsaddr/deep0.pylon.test")))
            .await
            .unwrap(),
        Err(dns::Error::TooDeep)
    );
    assert!(matches!(
        r.resolve(&m("/dns4/missing.pylon.test/tcp/1")).await,
        Err(dns::Error::NotFound(_))
    ));
    assert!(matches!(
        r.resolve(&m("/dnsaddr/missing.pylon.test")).await,
        Err(dns::Error::NotFound(_))
    ));

    // The host dials DNS addresses end to end.
    let mut config = node::Config::default();
    config.host.dns = dns::Config {
        nameservers: vec![server_addr],
        timeout: Duration::from_secs(2),
    };
    let b = kit::start_with(config).await;
    let conn = b
        .host
        .dial(&m(&format!("/dnsaddr/nested.pylon.test/p2p/{id}")))
        .await
        .unwrap();
    assert_eq!(conn.peer(), id);
    ping::ping(&b.host, &id).await.unwrap();
    b.host.disconnect(&id);
    tokio::time::timeout(T, conn.closed()).await.unwrap();
    b.host
        .dial(&m(&format!("/dns4/node.pylon.test/tcp/{port}/p2p/{id}")))
        .await
        .unwrap();
    assert!(matches!(
        b.host.dial(&m("/dnsaddr/loop1.pylon.test")).await,
        Err(pylon_node::host::DialError::Dns(dns::Error::Loop))
    ));
}

#[tokio::test]
async fn garbage_and_silent_servers_are_survived() {
    // A "server" that answers every query with random bytes, and one that never answers.
    let garbage = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let garbage_addr = garbage.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        let mut n = 0u8;
        while let Ok((len, from)) = garbage.recv_from(&mut buf).await {
            n = n.wrapping_add(1);
            // Keep the query id (so the answer is matched) and corrupt everything else.
            let mut reply = buf[..len.min(2)].to_vec();
            reply.extend((0..40).map(|i| n.wrapping_mul(31).wrapping_add(i)));
            let _ = garbage.send_to(&reply, from).await;
        }
    });
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let m = |s: &str| s.parse::<Multiaddr>().unwrap();
    for server in [garbage_addr, silent_addr] {
        let r = Resolver::new(&dns::Config {
            nameservers: vec![server],
            timeout: Duration::from_millis(500),
        })
        .unwrap();
        let result = tokio::time::timeout(T, r.resolve(&m("/dnsaddr/boot.pylon.test")))
            .await
            .expect("bounded");
        assert!(result.is_err(), "{result:?}");
        let result = tokio::time::timeout(T, r.resolve(&m("/dns4/node.pylon.test/tcp/1")))
            .await
            .expect("bounded");
        assert!(result.is_err(), "{result:?}");
    }
    drop(silent);
}
