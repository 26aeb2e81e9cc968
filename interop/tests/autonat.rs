//! AutoNAT in the NAT bed (`pylon_testkit::netns`): Pylon's AutoNAT server role
//! (`pylon_roles::autonat`) and the AutoNAT client every Pylon node runs, against
//! rust-libp2p 0.57 (`libp2p::autonat` v1 and v2) and js-libp2p 3.x (`@libp2p/autonat`,
//! `@libp2p/autonat-v2`, in `interop/js/peer.mjs --autonat`), both ways.
//!
//! Each test builds its own bed: the servers on the public network, each on an IP of its
//! own (clients count servers by IP), and the client either on the public network too
//! (a public host of its own: the servers' dial-backs reach it) or on a LAN behind an
//! endpoint-independent NAT (the router drops the dial-backs: no mapping exists for a
//! connection the client did not open). So a client on the public network must learn that
//! its address is reachable, and one behind the NAT that the address its servers observed
//! (its router's, with its own port, kept by port reuse and the port-preserving NAT) is
//! not.
//!
//! - rust-libp2p clients with Pylon servers: the v2 client reports each tested address
//!   (reached, or the server's dial failed); the v1 client flips its NAT status.
//! - js-libp2p clients with a Pylon server: on the public network js marks its listen
//!   address (TCP or QUIC) verified after one success; behind the NAT, over QUIC (js keeps
//!   no observed TCP address), it counts the server's failure against its observed address
//!   and verifies nothing.
//! - A Pylon client with Pylon servers, rust-libp2p v1 servers and rust-libp2p v2 servers:
//!   `reachability()` becomes public, or private behind the NAT.
//!
//! Every peer runs on a thread (or, for js, in a process) inside its namespace; the test
//! drives it through channels or commands, and every wait is bounded. Needs root, `ip` and
//! `nft` (CI has them) and `npm ci --prefix interop/js`.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::ns_pylon::NsPylon;
use common::ns_swarm::NsSwarm;
use libp2p::autonat::v1::{self, InboundProbeEvent, NatStatus, OutboundProbeEvent};
use libp2p::autonat::v2;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, Swarm, SwarmEvent};
use libp2p::{identify, noise, tcp, yamux, Multiaddr, PeerId};
use pylon_interop::js::{JsAddresses, JsAutonat, JsAutonatResult, JsOptions, JsPeer, JsTransport};
use pylon_node::protocols::autonat::{self as client, Verdict};
use pylon_roles::autonat::{AutoNat, Config};
use pylon_roles::Role;
use pylon_testkit::netns::{self, Bed, Nat};
use pylon_testkit::node as kit;
use pylon_testkit::wait;

/// The bound on each wait.
const T: Duration = Duration::from_secs(30);

/// How long a dial-back may take, on every server here (Pylon's `dial_back_timeout`,
/// rust-libp2p's connection timeout): a dial into a NAT that drops it fails by this
/// timeout. It must stay below rust-libp2p's v2 client and server request timeouts (10 s),
/// or a failed dial-back shows up as a timed-out request instead of an answer.
const DIAL_BACK_TIMEOUT: Duration = Duration::from_secs(3);

/// The rust-libp2p v1 client's probe interval (its default is 90 s): how soon it asks
/// again after a probe that taught it nothing (its first may go out before identify gave
/// it the address its server observed).
const V1_RETRY: Duration = Duration::from_secs(1);

// ---- the bed ----------------------------------------------------------------------------

/// Where the client under test sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Site {
    /// On a public host of its own: dial-backs reach it.
    Public,
    /// On a LAN behind an endpoint-independent NAT that drops unsolicited packets.
    BehindNat,
}

/// A bed with `servers` server hosts on distinct public IPs (the public namespace, then
/// public hosts) and the client's host.
struct Setup {
    bed: Bed,
    site: Site,
    servers: usize,
}

impl Setup {
    fn new(site: Site, servers: usize) -> Setup {
        assert!(servers >= 1);
        let client_hosts = usize::from(site == Site::Public);
        let mut builder = Bed::builder().public_hosts(servers - 1 + client_hosts);
        if site == Site::BehindNat {
            builder = builder.lan(Nat::EndpointIndependent);
        }
        Setup {
            bed: builder.build().unwrap(),
            site,
            servers,
        }
    }

    /// Server `i`'s host: 11.77.0.1, then 11.77.0.2, ...
    fn server_host(&self, i: usize) -> &netns::Host {
        assert!(i < self.servers);
        match i {
            0 => self.bed.public(),
            _ => self.bed.public_host(i - 1),
        }
    }

    fn client_host(&self) -> &netns::Host {
        match self.site {
            Site::Public => self.bed.public_host(self.servers - 1),
            Site::BehindNat => &self.bed.lan(0).host,
        }
    }

    /// The IP the servers see the client at: its own, or its router's.
    fn client_seen_at(&self) -> Ipv4Addr {
        match self.site {
            Site::Public => self.client_host().ip(),
            Site::BehindNat => self.bed.lan(0).router.ip(),
        }
    }
}

/// `/ip4/<ip>/tcp/<port>`.
fn tcp_addr(ip: Ipv4Addr, port: u16) -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4(ip))
        .with(Protocol::Tcp(port))
}

fn tcp_port(addr: &Multiaddr) -> u16 {
    addr.iter()
        .find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap_or_else(|| panic!("not a TCP address: {addr}"))
}

// ---- a Pylon AutoNAT server -------------------------------------------------------------

/// The server role's settings in these tests: the defaults, except a dial-back bounded
/// by [`DIAL_BACK_TIMEOUT`] and budgets per peer, IP and subnet (the whole bed is one /24)
/// that a client re-asking while the test runs cannot exhaust.
fn server_config() -> Config {
    let config = Config {
        dial_back_timeout: DIAL_BACK_TIMEOUT,
        per_peer_per_minute: 10,
        per_ip_per_minute: 10,
        per_subnet_per_minute: 30,
        per_peer_concurrent: 2,
        ..Config::default()
    };
    AutoNat::check(&config).unwrap();
    config
}

/// A Pylon node with the AutoNAT server role, on TCP and QUIC.
type PylonServer = NsPylon<AutoNat>;

impl NsPylon<AutoNat> {
    async fn start_server(host: &netns::Host) -> PylonServer {
        let mut config = pylon_node::node::Config::default();
        // A server only: its own client would ask the peers under test about it.
        config.autonat.enabled = false;
        NsPylon::start(host, config, server_config(), T).await
    }

    fn addr(&self, transport: JsTransport) -> Multiaddr {
        match transport {
            JsTransport::Quic => self.quic.clone(),
            _ => self.tcp.clone(),
        }
    }

    /// Dial-backs made with `outcome` (`ok`, `dial_error`, `dial_back_error`,
    /// `internal_error`), both versions.
    fn dial_backs(&self, outcome: &str) -> u64 {
        self.role
            .status()
            .dial_backs
            .get(outcome)
            .copied()
            .unwrap_or(0)
    }

    /// Requests of `version` (`v1`, `v2`) answered after a dial.
    fn served(&self, version: &str) -> u64 {
        self.role.status().served.get(version).copied().unwrap_or(0)
    }

    async fn start_all(setup: &Setup) -> Vec<PylonServer> {
        let mut servers = Vec::new();
        for i in 0..setup.servers {
            servers.push(PylonServer::start_server(setup.server_host(i)).await);
        }
        servers
    }
}

// ---- a rust-libp2p AutoNAT peer ---------------------------------------------------------

/// What a rust-libp2p peer runs besides identify (which gives a client the address its
/// server observed, its candidate, and tells each side the other's protocols).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RustRole {
    /// `autonat::v1::Behaviour` asking its connected peers (`only_global_ips` as by
    /// default), probing every [`V1_RETRY`].
    V1Client,
    /// `autonat::v2::client::Behaviour` with its defaults (a probe round every 5 s).
    V2Client,
    /// `autonat::v1::Behaviour` answering requests (and asking no one).
    V1Server,
    /// `autonat::v2::server::Behaviour`.
    V2Server,
}

#[derive(NetworkBehaviour)]
struct AutonatPeer {
    identify: identify::Behaviour,
    v1: Toggle<v1::Behaviour>,
    v2_client: Toggle<v2::client::Behaviour>,
    v2_server: Toggle<v2::server::Behaviour>,
}

fn v1_config(role: RustRole) -> v1::Config {
    match role {
        RustRole::V1Client => v1::Config {
            boot_delay: V1_RETRY,
            retry_interval: V1_RETRY,
            // Its one server may be asked again as soon as it is due.
            throttle_server_period: V1_RETRY,
            ..v1::Config::default()
        },
        _ => v1::Config {
            use_connected: false,
            ..v1::Config::default()
        },
    }
}

fn rust_swarm(role: RustRole) -> Swarm<AutonatPeer> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| {
            let id = key.public().to_peer_id();
            let v1 = matches!(role, RustRole::V1Client | RustRole::V1Server)
                .then(|| v1::Behaviour::new(id, v1_config(role)));
            AutonatPeer {
                identify: identify::Behaviour::new(identify::Config::new(
                    "/interop/autonat/1.0.0".into(),
                    key.public(),
                )),
                v1: v1.into(),
                v2_client: (role == RustRole::V2Client)
                    .then(v2::client::Behaviour::default)
                    .into(),
                v2_server: (role == RustRole::V2Server)
                    .then(v2::server::Behaviour::default)
                    .into(),
            }
        })
        .unwrap()
        // rust-libp2p closes idle connections after 10 s; a test may take longer.
        .with_swarm_config(|c| c.with_idle_connection_timeout(T))
        // Bounds the servers' dial-backs (and every other dial, all on one bridge).
        .with_connection_timeout(DIAL_BACK_TIMEOUT)
        .build()
}

/// What a rust peer reported that the tests judge, in the order it happened.
#[derive(Debug, Clone)]
enum Seen {
    /// An address a remote observed us at (identify): what the v2 client tests.
    Candidate(Multiaddr),
    /// An address the swarm took as external: a v2 (or v1) client's success.
    Confirmed(Multiaddr),
    /// v2 client: a server's verdict on one address of ours.
    Tested {
        server: PeerId,
        addr: Multiaddr,
        result: Result<(), String>,
    },
    /// v1 client: a server's answer (the address it reached, or why not).
    Probed {
        server: Option<PeerId>,
        result: Result<Multiaddr, String>,
    },
    /// v1 client: its NAT status changed to this.
    Status(NatStatus),
    /// As a server: a request answered. v1: the address reached, or why none was; v2: the
    /// address tested, and whether the answer went out (its dial's outcome is not
    /// reported).
    Served {
        client: PeerId,
        addr: Option<Multiaddr>,
        result: Result<(), String>,
        /// v2: the dial data the client sent (0 for v1).
        dial_data: usize,
    },
}

impl Seen {
    fn of(event: &SwarmEvent<AutonatPeerEvent>) -> Option<Seen> {
        Some(match event {
            SwarmEvent::NewExternalAddrCandidate { address } => Seen::Candidate(address.clone()),
            SwarmEvent::ExternalAddrConfirmed { address } => Seen::Confirmed(address.clone()),
            SwarmEvent::Behaviour(AutonatPeerEvent::V2Client(e)) => Seen::Tested {
                server: e.server,
                addr: e.tested_addr.clone(),
                result: e.result.as_ref().map_err(ToString::to_string).copied(),
            },
            SwarmEvent::Behaviour(AutonatPeerEvent::V2Server(e)) => Seen::Served {
                client: e.client,
                addr: Some(e.tested_addr.clone()),
                result: e.result.as_ref().map_err(ToString::to_string).copied(),
                dial_data: e.data_amount,
            },
            SwarmEvent::Behaviour(AutonatPeerEvent::V1(e)) => match e {
                v1::Event::StatusChanged { new, .. } => Seen::Status(new.clone()),
                v1::Event::OutboundProbe(OutboundProbeEvent::Response {
                    peer, address, ..
                }) => Seen::Probed {
                    server: Some(*peer),
                    result: Ok(address.clone()),
                },
                v1::Event::OutboundProbe(OutboundProbeEvent::Error { peer, error, .. }) => {
                    Seen::Probed {
                        server: *peer,
                        result: Err(format!("{error:?}")),
                    }
                }
                v1::Event::InboundProbe(InboundProbeEvent::Response { peer, address, .. }) => {
                    Seen::Served {
                        client: *peer,
                        addr: Some(address.clone()),
                        result: Ok(()),
                        dial_data: 0,
                    }
                }
                v1::Event::InboundProbe(InboundProbeEvent::Error { peer, error, .. }) => {
                    Seen::Served {
                        client: *peer,
                        addr: None,
                        result: Err(format!("{error:?}")),
                        dial_data: 0,
                    }
                }
                _ => return None,
            },
            _ => return None,
        })
    }
}

/// A rust-libp2p peer on a thread inside a host's namespace, listening on TCP at the
/// host's address (so its dials leave from that port: rust-libp2p's port reuse).
type RustPeer = NsSwarm<AutonatPeer, Seen>;

async fn start_rust(name: &str, host: &netns::Host, role: RustRole) -> RustPeer {
    let listen = vec![tcp_addr(host.ip(), 0)];
    NsSwarm::start(name, host, move || rust_swarm(role), listen, Seen::of, T).await
}

/// `peer`'s address with `/p2p/<id>`.
fn rust_addr(peer: &RustPeer) -> Multiaddr {
    peer.listen[0].clone().with(Protocol::P2p(peer.id))
}

/// The address the client under test is expected at: its router's IP (or its own on the
/// public network) with its own port.
fn seen_at(client: &RustPeer, setup: &Setup) -> Multiaddr {
    tcp_addr(setup.client_seen_at(), tcp_port(&client.listen[0]))
}

// ---- 1. rust-libp2p clients, Pylon servers ----------------------------------------------

/// The rust-libp2p v2 client tests the address its Pylon server observed (rust-libp2p
/// tests only what identify reported, its "candidates"): reached on the public network,
/// and confirmed as external; behind the NAT, the server's dial fails.
async fn rust_v2_client_with_a_pylon_server(site: Site) {
    let setup = Setup::new(site, 1);
    let server = PylonServer::start_server(setup.server_host(0)).await;
    let mut client = start_rust("v2 client", setup.client_host(), RustRole::V2Client).await;
    let expected = seen_at(&client, &setup);
    client.dial(server.tcp.clone()).await;

    let candidate = client
        .until("the address the server observed", |h| {
            h.iter().find_map(|s| match s {
                Seen::Candidate(a) => Some(a.clone()),
                _ => None,
            })
        })
        .await;
    assert_eq!(candidate, expected, "port reuse, port-preserving NAT");
    let (tested_by, tested, result) = client
        .until("the v2 client's test of its candidate", |h| {
            h.iter().find_map(|s| match s {
                Seen::Tested {
                    server,
                    addr,
                    result,
                } => Some((*server, addr.clone(), result.clone())),
                _ => None,
            })
        })
        .await;
    assert_eq!(tested_by, server.id);
    assert_eq!(tested, expected);
    match site {
        Site::Public => {
            result.unwrap_or_else(|e| panic!("{tested} not reached: {e}"));
            client
                .until("the tested address confirmed", |h| {
                    h.iter()
                        .any(|s| matches!(s, Seen::Confirmed(a) if *a == expected))
                        .then_some(())
                })
                .await;
            assert_eq!(server.dial_backs("dial_error"), 0);
            assert!(server.dial_backs("ok") >= 1);
        }
        Site::BehindNat => {
            let error = result.expect_err("a dial-back through the NAT");
            assert!(
                error.contains("failed to establish a connection"),
                "{error}"
            );
            assert!(server.dial_backs("dial_error") >= 1);
            assert_eq!(server.dial_backs("ok"), 0);
            client.catch_up();
            assert!(
                !client
                    .history
                    .iter()
                    .any(|s| matches!(s, Seen::Confirmed(_))),
                "nothing confirmed behind the NAT: {:?}",
                client.history
            );
        }
    }
    assert!(server.served("v2") >= 1);
}

#[tokio::test]
async fn rust_v2_client_on_the_public_network_is_reached_by_a_pylon_server() {
    rust_v2_client_with_a_pylon_server(Site::Public).await;
}

#[tokio::test]
async fn rust_v2_client_behind_nat_is_not_reached_by_a_pylon_server() {
    rust_v2_client_with_a_pylon_server(Site::BehindNat).await;
}

/// The rust-libp2p v1 client asks its Pylon server to dial its candidates and listen
/// addresses (the server dials only those on the IP it sees the client at, with the
/// client's port): public on the public network, private behind the NAT. Its first
/// answer decides (from `Unknown`, its confidence starts at 0).
async fn rust_v1_client_with_a_pylon_server(site: Site) {
    let setup = Setup::new(site, 1);
    let server = PylonServer::start_server(setup.server_host(0)).await;
    let mut client = start_rust("v1 client", setup.client_host(), RustRole::V1Client).await;
    let expected = seen_at(&client, &setup);
    client.dial(server.tcp.clone()).await;

    let status = client
        .until("the v1 client's NAT status", |h| {
            h.iter().find_map(|s| match s {
                Seen::Status(status) => Some(status.clone()),
                _ => None,
            })
        })
        .await;
    // The answer that decided it came from the server, just before.
    let probed: Vec<&Result<Multiaddr, String>> = client
        .history
        .iter()
        .filter_map(|s| match s {
            Seen::Probed {
                server: Some(p),
                result,
            } if *p == server.id => Some(result),
            _ => None,
        })
        .collect();
    match site {
        Site::Public => {
            assert_eq!(status, NatStatus::Public(expected.clone()));
            assert_eq!(probed.last(), Some(&&Ok(expected)), "{probed:?}");
            assert!(server.dial_backs("ok") >= 1);
            assert_eq!(server.dial_backs("dial_error"), 0);
        }
        Site::BehindNat => {
            assert_eq!(status, NatStatus::Private);
            let last = probed.last().expect("an answer from the server");
            let error = last.as_ref().expect_err("no dial-back through the NAT");
            assert!(error.contains("DialError"), "{error}");
            assert!(server.dial_backs("dial_error") >= 1);
            assert_eq!(server.dial_backs("ok"), 0);
        }
    }
    assert!(server.served("v1") >= 1);
}

#[tokio::test]
async fn rust_v1_client_on_the_public_network_is_public_for_a_pylon_server() {
    rust_v1_client_with_a_pylon_server(Site::Public).await;
}

#[tokio::test]
async fn rust_v1_client_behind_nat_is_private_for_a_pylon_server() {
    rust_v1_client_with_a_pylon_server(Site::BehindNat).await;
}

// ---- 2. js-libp2p clients, a Pylon server -----------------------------------------------

/// The js peer's pending results of `version`'s client.
fn pending(addrs: &JsAddresses, version: JsAutonat) -> &[JsAutonatResult] {
    let results = match version {
        JsAutonat::V1 => &addrs.autonat.v1,
        JsAutonat::V2 => &addrs.autonat.v2,
        other => panic!("one version at a time, not {other:?}"),
    };
    results
        .as_deref()
        .unwrap_or_else(|| panic!("the js peer runs no {version:?} client"))
}

/// Asks the js peer for its addresses until `done` holds; the last answer.
async fn js_addresses_until(
    js: &mut JsPeer,
    what: &str,
    mut done: impl FnMut(&JsAddresses) -> bool,
) -> JsAddresses {
    let mut last = None;
    let held = wait::within(T, async || {
        let addrs = js.addresses().await.unwrap();
        let held = done(&addrs);
        last = Some(addrs);
        held
    })
    .await;
    let last = last.expect("asked at least once");
    assert!(held, "js: {what}: not within {T:?}; last: {last:#?}");
    last
}

/// A js-libp2p peer running one AutoNAT client, listening on `transport` at its host's
/// address, connects to a Pylon server over it. On the public network: one success
/// verifies its listen address. Behind the NAT (QUIC only: js-libp2p keeps no observed TCP
/// address, so over TCP it would have nothing to ask about): the server's dial-back of its
/// observed address fails, js counts the failure, and no public address of it is verified
/// (js removes an observed address only after 8 failures from 8 "segments", first octets,
/// which one bed cannot offer).
async fn js_client_with_a_pylon_server(version: JsAutonat, site: Site, transport: JsTransport) {
    let setup = Setup::new(site, 1);
    let server = PylonServer::start_server(setup.server_host(0)).await;
    let host = setup.client_host();
    let mut js = JsPeer::listen_in(
        host.ns(),
        &JsOptions {
            transport,
            host: Some(host.ip()),
            autonat: version,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    js.connect(&server.addr(transport).to_string())
        .await
        .unwrap();

    match site {
        Site::Public => {
            // Not among `js.addrs`: js-libp2p lists only verified addresses there.
            let unverified = js.addresses().await.unwrap();
            let listening: Vec<&str> = unverified
                .addrs
                .iter()
                .filter(|a| a.kind == "transport")
                .map(|a| a.multiaddr.as_str())
                .collect();
            let [listen] = listening[..] else {
                panic!("js listens on its public address alone: {unverified:#?}");
            };
            let listen = listen.to_owned();
            let prefix = match transport {
                JsTransport::Quic => format!("/ip4/{}/udp/", host.ip()),
                _ => format!("/ip4/{}/tcp/", host.ip()),
            };
            assert!(listen.starts_with(&prefix), "{listen}");
            let addrs = js_addresses_until(&mut js, "its listen address verified", |a| {
                a.addrs.iter().any(|x| x.multiaddr == listen && x.verified)
            })
            .await;
            let verified = addrs.addrs.iter().find(|x| x.multiaddr == listen).unwrap();
            assert_eq!(verified.kind, "transport");
            assert!(server.dial_backs("ok") >= 1);
            assert_eq!(server.dial_backs("dial_error"), 0);
        }
        Site::BehindNat => {
            let addrs = js_addresses_until(&mut js, "a failure counted", |a| {
                pending(a, version).iter().any(|r| r.failure > 0)
            })
            .await;
            // What the server observed: its router's address, and the port of the socket
            // js-libp2p's QUIC dials leave from (not its listener's).
            let observed: Vec<&str> = addrs
                .addrs
                .iter()
                .filter(|a| a.kind == "observed")
                .map(|a| a.multiaddr.as_str())
                .collect();
            let [observed] = observed[..] else {
                panic!("one observed address: {addrs:#?}");
            };
            let router = format!("/ip4/{}/udp/", setup.client_seen_at());
            assert!(
                observed.starts_with(&router) && observed.ends_with("/quic-v1"),
                "{observed}"
            );
            let counted = pending(&addrs, version);
            assert_eq!(counted.len(), 1, "{counted:?}");
            assert_eq!(counted[0].multiaddr, observed, "{counted:?}");
            assert_eq!((counted[0].success, counted[0].failure), (0, 1));
            assert_eq!(counted[0].segments, ["011"], "11.77.0.1's first octet");
            // Only private ones (its LAN and loopback addresses) count as verified.
            for a in &addrs.addrs {
                assert_eq!(
                    a.verified,
                    a.multiaddr.starts_with("/ip4/192.168.")
                        || a.multiaddr.starts_with("/ip4/127."),
                    "{a:?}"
                );
            }
            assert!(server.dial_backs("dial_error") >= 1);
            assert_eq!(server.dial_backs("ok"), 0);
        }
    }
    let version_label = match version {
        JsAutonat::V1 => "v1",
        _ => "v2",
    };
    assert!(server.served(version_label) >= 1);
    js.stop().await.unwrap();
}

#[tokio::test]
async fn js_v1_client_on_the_public_network_gets_its_tcp_address_verified_by_a_pylon_server() {
    js_client_with_a_pylon_server(JsAutonat::V1, Site::Public, JsTransport::Tcp).await;
}

#[tokio::test]
async fn js_v2_client_on_the_public_network_gets_its_tcp_address_verified_by_a_pylon_server() {
    js_client_with_a_pylon_server(JsAutonat::V2, Site::Public, JsTransport::Tcp).await;
}

#[tokio::test]
async fn js_v1_client_on_the_public_network_gets_its_quic_address_verified_by_a_pylon_server() {
    js_client_with_a_pylon_server(JsAutonat::V1, Site::Public, JsTransport::Quic).await;
}

#[tokio::test]
async fn js_v2_client_on_the_public_network_gets_its_quic_address_verified_by_a_pylon_server() {
    js_client_with_a_pylon_server(JsAutonat::V2, Site::Public, JsTransport::Quic).await;
}

#[tokio::test]
async fn js_v1_client_behind_nat_counts_a_failed_dial_back_from_a_pylon_server() {
    js_client_with_a_pylon_server(JsAutonat::V1, Site::BehindNat, JsTransport::Quic).await;
}

#[tokio::test]
async fn js_v2_client_behind_nat_counts_a_failed_dial_back_from_a_pylon_server() {
    js_client_with_a_pylon_server(JsAutonat::V2, Site::BehindNat, JsTransport::Quic).await;
}

// ---- 3. a Pylon client ------------------------------------------------------------------

/// What a Pylon client made of its servers' answers.
#[derive(Debug)]
struct Decided {
    id: PeerId,
    reachability: Verdict,
    verdicts: Vec<(Multiaddr, Verdict)>,
    /// Its TCP listen port.
    port: u16,
}

/// Servers to ask (3 at most, on distinct IPs): that many must agree.
const SERVERS: usize = 3;

/// A Pylon node on `setup`'s client host that dials `servers` (addresses with `/p2p/`)
/// and waits until its AutoNAT client decides.
async fn pylon_client(setup: &Setup, servers: &[Multiaddr]) -> Decided {
    let host = setup.client_host();
    let ip = host.ip();
    let servers: Vec<String> = servers.iter().map(ToString::to_string).collect();
    host.spawn(async move || {
        let mut config = kit::config(&[&format!("/ip4/{ip}/tcp/0")]);
        config.autonat = client::Config {
            // As many distinct servers (by IP) as there are must agree: all of them.
            confirmations: servers.len(),
            request_timeout: Duration::from_secs(10),
            ..client::Config::default()
        };
        let node = kit::start_with(config).await;
        let port = kit::tcp_port(&node.host.listen_addrs()[0]);
        let mut reachability = node.autonat.watch();
        for s in &servers {
            node.host
                .dial(&s.parse().unwrap())
                .await
                .unwrap_or_else(|e| panic!("Pylon client: dial {s}: {e}"));
        }
        let decided =
            tokio::time::timeout(T, reachability.wait_for(|v| *v != Verdict::Unknown)).await;
        let verdicts: Vec<(Multiaddr, Verdict)> = node
            .autonat
            .verdicts()
            .into_iter()
            .map(|(a, v)| (a.to_string().parse().unwrap(), v))
            .collect();
        assert!(
            decided.is_ok(),
            "the Pylon client decided nothing within {T:?}; its verdicts: {verdicts:?}, \
             observed: {:?}",
            node.identify.observed_addrs()
        );
        Decided {
            id: node.peer_id().to_string().parse().unwrap(),
            reachability: node.autonat.reachability(),
            verdicts,
            port,
        }
    })
    .unwrap()
    .join()
    .await
}

/// The Pylon client's verdict matches the site: its one testable address, the one its
/// servers see it at, public or private.
fn assert_decided(setup: &Setup, decided: &Decided) {
    let seen_at = tcp_addr(setup.client_seen_at(), decided.port);
    let expected = match setup.site {
        Site::Public => Verdict::Public,
        Site::BehindNat => Verdict::Private,
    };
    assert_eq!(decided.reachability, expected, "{decided:?}");
    assert_eq!(decided.verdicts, [(seen_at, expected)], "{decided:?}");
}

async fn pylon_client_with_pylon_servers(site: Site) {
    let setup = Setup::new(site, SERVERS);
    let servers = PylonServer::start_all(&setup).await;
    let addrs: Vec<Multiaddr> = servers.iter().map(|s| s.tcp.clone()).collect();
    let decided = pylon_client(&setup, &addrs).await;
    assert_decided(&setup, &decided);
    // Every server was asked (over v2, the version both sides prefer) and dialed, without
    // dial data: the client asked about the address the server saw it at.
    let outcome = match site {
        Site::Public => "ok",
        Site::BehindNat => "dial_error",
    };
    for (i, server) in servers.iter().enumerate() {
        assert!(server.served("v2") >= 1, "server {i}");
        assert!(server.dial_backs(outcome) >= 1, "server {i}");
        assert_eq!(
            server.dial_backs("ok") + server.dial_backs("dial_error"),
            server.dial_backs(outcome),
            "server {i}: only {outcome}"
        );
        assert_eq!(server.role.status().dial_data_bytes, 0, "server {i}");
    }
}

#[tokio::test]
async fn pylon_client_on_the_public_network_is_public_for_pylon_servers() {
    pylon_client_with_pylon_servers(Site::Public).await;
}

#[tokio::test]
async fn pylon_client_behind_nat_is_private_for_pylon_servers() {
    pylon_client_with_pylon_servers(Site::BehindNat).await;
}

/// Rust-libp2p servers of one version, one per server host.
async fn rust_servers(setup: &Setup, role: RustRole) -> Vec<RustPeer> {
    let mut servers = Vec::new();
    for i in 0..setup.servers {
        servers.push(start_rust(&format!("{role:?} {i}"), setup.server_host(i), role).await);
    }
    servers
}

/// A Pylon client with rust-libp2p servers of one version: it decides, and each server
/// answered a request from it (v1: the address it reached, or `DialError`; v2: the
/// address it tested, the one it saw the client at). rust-libp2p's v2 server asks for
/// dial data unless the address is exactly the observed one, port included: Pylon's
/// dials leave from its listening port, so it asks about that very address and pays
/// nothing.
async fn pylon_client_with_rust_servers(site: Site, role: RustRole) {
    let setup = Setup::new(site, SERVERS);
    let mut servers = rust_servers(&setup, role).await;
    let addrs: Vec<Multiaddr> = servers.iter().map(rust_addr).collect();
    let decided = pylon_client(&setup, &addrs).await;
    assert_decided(&setup, &decided);
    let seen_at = tcp_addr(setup.client_seen_at(), decided.port);
    for server in &mut servers {
        let (addr, result, dial_data) = server
            .until("a request served", |h| {
                h.iter().find_map(|s| match s {
                    Seen::Served {
                        client,
                        addr,
                        result,
                        dial_data,
                    } if *client == decided.id => Some((addr.clone(), result.clone(), *dial_data)),
                    _ => None,
                })
            })
            .await;
        assert_eq!(dial_data, 0, "{}", server.name);
        let addr = addr.map(|a| {
            a.iter()
                .filter(|p| !matches!(p, Protocol::P2p(_)))
                .collect::<Multiaddr>()
        });
        match (role, site) {
            (RustRole::V1Server, Site::Public) | (RustRole::V2Server, _) => {
                assert_eq!(addr.as_ref(), Some(&seen_at), "{}", server.name);
                assert_eq!(result, Ok(()), "{}", server.name);
            }
            (RustRole::V1Server, Site::BehindNat) => {
                let error = result.expect_err("no dial-back through the NAT");
                assert!(error.contains("DialError"), "{}: {error}", server.name);
            }
            other => panic!("not a server: {other:?}"),
        }
    }
}

#[tokio::test]
async fn pylon_client_on_the_public_network_is_public_for_rust_v1_servers() {
    pylon_client_with_rust_servers(Site::Public, RustRole::V1Server).await;
}

#[tokio::test]
async fn pylon_client_behind_nat_is_private_for_rust_v1_servers() {
    pylon_client_with_rust_servers(Site::BehindNat, RustRole::V1Server).await;
}

#[tokio::test]
async fn pylon_client_on_the_public_network_is_public_for_rust_v2_servers() {
    pylon_client_with_rust_servers(Site::Public, RustRole::V2Server).await;
}

#[tokio::test]
async fn pylon_client_behind_nat_is_private_for_rust_v2_servers() {
    pylon_client_with_rust_servers(Site::BehindNat, RustRole::V2Server).await;
}
