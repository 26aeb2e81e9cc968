//! The AutoNAT server role on real nodes in this process (loopback TCP, Noise, yamux):
//! clients speak the v1 and v2 messages themselves, and answer the v2 dial-back with a
//! handler of their own that records the nonce and the connection it came on, so every
//! answer and every dial is checked. The server runs with `allow_loopback` (a lab: on
//! one machine every address is a loopback one). All of 127.0.0.0/8 is loopback here:
//! a client connected from 127.0.0.1 that listens on 0.0.0.0 can ask to be dialed at
//! 127.0.0.2, an address with another IP than the one it is observed at.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use multiaddr::{Multiaddr, Protocol};
use prometheus_client::registry::Registry;
use prost::Message;
use pylon_node::host::{handler, ConnectionId, Direction, Event, Stream};
use pylon_node::node::{self, Node};
use pylon_node::proto::decode;
use pylon_node::protocols::autonat::proto::{
    DialBack, DialBackResponse, DialStatus, ResponseStatus, V1Message, V1Status, V2Message, V2Msg,
    MAX_DIAL_DATA, MAX_DIAL_DATA_CHUNK, MAX_MESSAGE, MIN_DIAL_DATA, V1_PROTOCOL, V2_DIAL_BACK,
    V2_DIAL_REQUEST,
};
use pylon_node::protocols::autonat::Config as ClientConfig;
use pylon_node::varint::{read_frame, write_frame};
use pylon_roles::autonat::{AutoNat, Config};
use pylon_roles::{Metrics, Role};
use pylon_testkit::node as kit;
use pylon_testkit::wait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(20);

/// A node config on `listen` whose own AutoNAT client stays quiet (it would otherwise
/// ask the server by itself and spend the budgets the tests count).
fn quiet(listen: &[&str]) -> node::Config {
    node::Config {
        autonat: ClientConfig {
            enabled: false,
            ..ClientConfig::default()
        },
        ..kit::config(listen)
    }
}

/// The defaults, in the lab (loopback addresses dialed).
fn lab() -> Config {
    Config {
        allow_loopback: true,
        ..Config::default()
    }
}

/// Budgets wide enough for a test's handful of requests from one IP.
fn roomy() -> Config {
    Config {
        per_peer_per_minute: 10,
        per_ip_per_minute: 20,
        per_subnet_per_minute: 20,
        ..lab()
    }
}

/// A server on loopback TCP with `config`; its registry (to read the metrics).
async fn server(config: Config) -> (Node, Arc<AutoNat>, Registry) {
    let node = kit::start_with(quiet(&[kit::LOCAL_TCP])).await;
    let mut registry = Registry::default();
    let role = AutoNat::start(&node, config, &mut Metrics::of::<AutoNat>(&mut registry)).unwrap();
    (node, role, registry)
}

fn metric(registry: &Registry, line_start: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A dial-back as the client saw it.
#[derive(Debug)]
struct Back {
    nonce: u64,
    conn: ConnectionId,
    /// The server's address on the dial-back connection.
    from: Multiaddr,
}

/// A client connected to a server: listening on every IPv4 address (so 127.0.0.2
/// reaches it too), answering dial-backs itself.
struct Client {
    node: Node,
    /// Its listen port.
    port: u16,
    backs: mpsc::Receiver<Back>,
}

impl Client {
    async fn connect(server: &Node) -> Client {
        let node = kit::start_with(quiet(&["/ip4/0.0.0.0/tcp/0"])).await;
        let (tx, backs) = mpsc::channel(64);
        // After the start: replaces the node's own dial-back handler.
        node.host.set_handler(
            V2_DIAL_BACK,
            handler(move |mut s: Stream| {
                let tx = tx.clone();
                async move {
                    let Ok(bytes) = read_frame(&mut s, MAX_MESSAGE).await else {
                        return;
                    };
                    let Ok(msg) = decode::<DialBack>(&bytes, MAX_MESSAGE) else {
                        return;
                    };
                    let _ = tx.try_send(Back {
                        nonce: msg.nonce,
                        conn: s.connection().id(),
                        from: s.connection().remote_addr().clone(),
                    });
                    let answer = DialBackResponse { status: 0 }.encode_to_vec();
                    let _ = write_frame(&mut s, &answer).await;
                    let _ = s.shutdown().await;
                }
            }),
        );
        node.host.dial(&kit::addr_of(server)).await.unwrap();
        let port = kit::port_of(&node);
        Client { node, port, backs }
    }

    fn addr(&self, ip: &str) -> Multiaddr {
        format!("/ip4/{ip}/tcp/{}", self.port).parse().unwrap()
    }

    /// The connection requests go over.
    fn conn_to(&self, server: &Node) -> pylon_node::host::Connection {
        self.node.host.connection(&server.peer_id()).unwrap()
    }

    async fn v2_stream(&self, server: &Node) -> Stream {
        self.conn_to(server)
            .open_stream(&[V2_DIAL_REQUEST])
            .await
            .unwrap()
    }

    /// A v2 request on a new stream; the stream, to read what comes.
    async fn v2_request(&self, server: &Node, addrs: &[Multiaddr], nonce: u64) -> Stream {
        let mut s = self.v2_stream(server).await;
        send(&mut s, &V2Message::request(addrs, nonce)).await;
        s
    }

    /// A v2 request that needs no dial data, and its answer.
    async fn v2(
        &self,
        server: &Node,
        addrs: &[Multiaddr],
        nonce: u64,
    ) -> (ResponseStatus, u32, DialStatus) {
        let mut s = self.v2_request(server, addrs, nonce).await;
        match read_v2(&mut s).await {
            Some(V2Msg::DialResponse(r)) => response(&r),
            other => panic!("expected a DialResponse, got {other:?}"),
        }
    }

    /// A v1 request and its answer: status, text, address.
    async fn v1(&self, server: &Node, msg: &V1Message) -> (V1Status, String, Option<Multiaddr>) {
        let mut s = self
            .node
            .host
            .open_stream(&server.peer_id(), &[V1_PROTOCOL])
            .await
            .unwrap();
        send(&mut s, msg).await;
        read_v1(&mut s).await
    }
}

async fn send<M: Message>(s: &mut Stream, msg: &M) {
    write_frame(s, &msg.encode_to_vec()).await.unwrap();
}

/// The next v2 message; `None` when the stream ends or is reset first.
async fn read_v2(s: &mut Stream) -> Option<V2Msg> {
    let bytes = tokio::time::timeout(T, read_frame(s, MAX_MESSAGE))
        .await
        .expect("the server answers or ends the stream in time")
        .ok()?;
    decode::<V2Message>(&bytes, MAX_MESSAGE).unwrap().msg
}

async fn read_v1(s: &mut Stream) -> (V1Status, String, Option<Multiaddr>) {
    let bytes = tokio::time::timeout(T, read_frame(s, MAX_MESSAGE))
        .await
        .unwrap()
        .unwrap();
    let msg = decode::<V1Message>(&bytes, MAX_MESSAGE).unwrap();
    let text = msg
        .dial_response
        .as_ref()
        .and_then(|r| r.status_text.clone())
        .unwrap_or_default();
    let (status, addr) = msg.answer().expect("a DIAL_RESPONSE with a known status");
    (status, text, addr)
}

fn response(
    r: &pylon_node::protocols::autonat::proto::DialResponse,
) -> (ResponseStatus, u32, DialStatus) {
    (
        ResponseStatus::from_code(r.status).unwrap(),
        r.addr_idx,
        DialStatus::from_code(r.dial_status).unwrap(),
    )
}

/// Whether the stream ends (EOF or reset) without another message.
async fn ends(s: &mut Stream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(T, s.read(&mut buf))
            .await
            .expect("the stream ends in time"),
        Ok(0) | Err(_)
    )
}

/// A TCP port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn next_back(c: &mut Client) -> Back {
    tokio::time::timeout(T, c.backs.recv())
        .await
        .expect("a dial-back in time")
        .unwrap()
}

#[tokio::test]
async fn v2_dials_back_the_first_usable_address_with_the_nonce_on_a_new_connection() {
    let (s, role, registry) = server(roomy()).await;
    let mut c = Client::connect(&s).await;
    let request_conn = c.conn_to(&s).id();
    let relayed: Multiaddr = format!("/ip4/127.0.0.1/tcp/1/p2p/{}/p2p-circuit", s.peer_id())
        .parse()
        .unwrap();
    let addrs = [relayed, c.addr("127.0.0.1")];
    let answer = c.v2(&s, &addrs, 0xfeed_beef).await;
    assert_eq!(answer, (ResponseStatus::Ok, 1, DialStatus::Ok));
    let back = next_back(&mut c).await;
    assert_eq!(back.nonce, 0xfeed_beef);
    assert_ne!(
        back.conn, request_conn,
        "the dial-back comes on a new connection"
    );
    assert_ne!(
        kit::tcp_port(&back.from),
        kit::port_of(&s),
        "and from a port the server does not listen on"
    );
    assert_eq!(role.dial_backs(), 1);
    // The dial-back connection is closed once the nonce is through.
    kit::until(&c.node, "the dial-back connection closed", T, || {
        c.node
            .host
            .connections()
            .iter()
            .all(|x| x.id() != back.conn)
    })
    .await;
    assert_eq!(
        metric(
            &registry,
            "libp2p_autonatv2_requests_completed_total{server_error=\"nil\",response_status=\"OK\",dial_status=\"OK\",dial_data_required=\"false\",ip_or_dns_version=\"ip4\",transport=\"tcp\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &registry,
            "pylon_autonat_dial_backs_total{version=\"v2\",outcome=\"ok\"}"
        ),
        1.0
    );
    let status = role.status();
    assert_eq!(status.served.get("v2"), Some(&1));
    assert_eq!(status.dial_backs.get("ok"), Some(&1));
    assert_eq!(status.in_progress, 0);
    assert_eq!(status.requests_last_minute, 1);
}

#[tokio::test]
async fn v2_an_unreachable_address_is_a_dial_error_and_unusable_ones_are_refused() {
    let (s, role, registry) = server(roomy()).await;
    let c = Client::connect(&s).await;
    let closed: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", closed_port())
        .parse()
        .unwrap();
    assert_eq!(
        c.v2(&s, &[closed], 1).await,
        (ResponseStatus::Ok, 0, DialStatus::DialError)
    );
    assert_eq!(role.dial_backs(), 1);
    // Nothing it will dial: DNS, webtransport, no transport at all, a private address
    // on a server that is not in the lab.
    let unusable: Vec<Multiaddr> = [
        "/dns4/localhost/tcp/4001",
        "/ip4/127.0.0.1/udp/4001/quic-v1/webtransport",
        "/ip4/127.0.0.1",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    let (status, _, _) = c.v2(&s, &unusable, 2).await;
    assert_eq!(status, ResponseStatus::DialRefused);
    assert_eq!(role.dial_backs(), 1, "no dial for a refusal");
    assert_eq!(
        metric(
            &registry,
            "pylon_autonat_refused_total{version=\"v2\",reason=\"no valid address\"}"
        ),
        1.0
    );

    let (p, public_only, _) = server(Config {
        allow_loopback: false,
        ..roomy()
    })
    .await;
    let c = Client::connect(&p).await;
    let (status, _, _) = c.v2(&p, &[c.addr("127.0.0.1")], 3).await;
    assert_eq!(
        status,
        ResponseStatus::DialRefused,
        "loopback outside the lab"
    );
    assert_eq!(public_only.dial_backs(), 0);
}

#[tokio::test]
async fn v2_another_ip_is_dialed_only_after_the_dial_data() {
    let (s, role, registry) = server(Config {
        dial_data_timeout: Duration::from_secs(1),
        ..roomy()
    })
    .await;
    let mut c = Client::connect(&s).await;
    let elsewhere = vec![c.addr("127.0.0.2")];

    // A client that stalls after the DialDataRequest: reset at the timeout, no dial.
    let mut stalled = c.v2_request(&s, &elsewhere, 10).await;
    let Some(V2Msg::DialDataRequest(ask)) = read_v2(&mut stalled).await else {
        panic!("expected a DialDataRequest");
    };
    assert_eq!(ask.addr_idx, 0);
    assert!(
        (MIN_DIAL_DATA..=MAX_DIAL_DATA).contains(&ask.num_bytes),
        "{}",
        ask.num_bytes
    );
    assert_eq!(ask.num_bytes, 50_000);
    assert!(ends(&mut stalled).await, "reset, no answer");
    assert_eq!(role.dial_backs(), 0);
    assert_eq!(
        metric(
            &registry,
            "pylon_autonat_refused_total{version=\"v2\",reason=\"dial data timeout\"}"
        ),
        1.0
    );

    // A client that resets the stream instead of paying: no dial either.
    let mut refusing = c.v2_request(&s, &elsewhere, 11).await;
    assert!(matches!(
        read_v2(&mut refusing).await,
        Some(V2Msg::DialDataRequest(_))
    ));
    drop(refusing);
    wait::until("the refusal counted", T, || {
        metric(
            &registry,
            "pylon_autonat_refused_total{version=\"v2\",reason=\"dial data refused\"}",
        ) == 1.0
    })
    .await;
    assert_eq!(role.dial_backs(), 0);

    // A client that pays in 4096-byte chunks, the last one past the amount: dialed.
    let mut paying = c.v2_request(&s, &elsewhere, 12).await;
    let Some(V2Msg::DialDataRequest(ask)) = read_v2(&mut paying).await else {
        panic!("expected a DialDataRequest");
    };
    let mut sent = 0;
    while sent < ask.num_bytes {
        send(&mut paying, &V2Message::data(vec![7; MAX_DIAL_DATA_CHUNK])).await;
        sent += MAX_DIAL_DATA_CHUNK as u64;
    }
    let Some(V2Msg::DialResponse(r)) = read_v2(&mut paying).await else {
        panic!("expected a DialResponse");
    };
    assert_eq!(response(&r), (ResponseStatus::Ok, 0, DialStatus::Ok));
    let back = next_back(&mut c).await;
    assert_eq!(back.nonce, 12);
    assert_eq!(role.dial_backs(), 1);
    assert_eq!(
        metric(&registry, "pylon_autonat_dial_data_bytes_total"),
        sent as f64
    );
    assert_eq!(
        metric(
            &registry,
            "libp2p_autonatv2_requests_completed_total{server_error=\"nil\",response_status=\"OK\",dial_status=\"OK\",dial_data_required=\"true\""
        ),
        1.0
    );
    assert_eq!(
        metric(
            &registry,
            "libp2p_autonatv2_requests_completed_total{server_error=\"dial data refused\",response_status=\"E_INTERNAL_ERROR\",dial_status=\"UNUSED\",dial_data_required=\"true\""
        ),
        2.0
    );
}

#[tokio::test]
async fn v2_bad_input_resets_the_stream_and_is_counted() {
    let (s, role, registry) = server(roomy()).await;
    let c = Client::connect(&s).await;

    // A dial-data chunk over 4096 bytes.
    let mut big = c.v2_request(&s, &[c.addr("127.0.0.2")], 20).await;
    assert!(matches!(
        read_v2(&mut big).await,
        Some(V2Msg::DialDataRequest(_))
    ));
    send(&mut big, &V2Message::data(vec![1; MAX_DIAL_DATA_CHUNK + 1])).await;
    assert!(ends(&mut big).await);
    assert_eq!(
        metric(
            &registry,
            "pylon_autonat_refused_total{version=\"v2\",reason=\"dial data chunk too large\"}"
        ),
        1.0
    );
    // Something else than dial data, in its place.
    let mut other = c.v2_request(&s, &[c.addr("127.0.0.2")], 21).await;
    assert!(matches!(
        read_v2(&mut other).await,
        Some(V2Msg::DialDataRequest(_))
    ));
    send(&mut other, &V2Message::request(&[c.addr("127.0.0.1")], 22)).await;
    assert!(ends(&mut other).await);
    // A first message that is no DialRequest, and bytes that are no message at all.
    let mut wrong = c.v2_stream(&s).await;
    send(&mut wrong, &V2Message::data(vec![0; 10])).await;
    assert!(ends(&mut wrong).await);
    let mut garbage = c.v2_stream(&s).await;
    garbage.write_all(&[0xff; 32]).await.unwrap();
    assert!(ends(&mut garbage).await);
    assert_eq!(
        metric(
            &registry,
            "pylon_autonat_refused_total{version=\"v2\",reason=\"bad request\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &registry,
            "pylon_autonat_refused_total{version=\"v2\",reason=\"bad dial data\"}"
        ),
        1.0
    );
    assert_eq!(role.dial_backs(), 0);
    // The server is still serving.
    assert_eq!(
        c.v2(&s, &[c.addr("127.0.0.1")], 23).await,
        (ResponseStatus::Ok, 0, DialStatus::Ok)
    );
}

#[tokio::test]
async fn v1_dials_the_observed_ip_and_answers_ok() {
    let (s, role, registry) = server(roomy()).await;
    let c = Client::connect(&s).await;
    let mut events = c.node.host.subscribe();
    let mine = c.addr("127.0.0.1");
    // Another IP first: never dialed in v1. Then ours.
    let msg = V1Message::dial(c.node.peer_id(), &[c.addr("127.0.0.2"), mine.clone()]);
    let (status, _, addr) = c.v1(&s, &msg).await;
    assert_eq!((status, addr), (V1Status::Ok, Some(mine)));
    assert_eq!(role.dial_backs(), 1, "only the address on the observed IP");
    // The client saw the server come in on a new connection.
    tokio::time::timeout(T, async {
        loop {
            match events.recv().await {
                Ok(Event::ConnectionEstablished(conn))
                    if conn.peer() == s.peer_id() && conn.direction() == Direction::Inbound =>
                {
                    break
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("an inbound connection from the server");
    assert_eq!(
        metric(
            &registry,
            "libp2p_autonat_outgoing_dial_response_total{response_status=\"ok\"}"
        ),
        1.0
    );
    // A closed port: E_DIAL_ERROR.
    let closed: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", closed_port())
        .parse()
        .unwrap();
    let (status, _, _) = c
        .v1(&s, &V1Message::dial(c.node.peer_id(), &[closed]))
        .await;
    assert_eq!(status, V1Status::DialError);
    assert_eq!(role.status().served.get("v1"), Some(&2));
}

#[tokio::test]
async fn v1_refuses_other_ips_and_bad_requests() {
    let (s, role, registry) = server(roomy()).await;
    let c = Client::connect(&s).await;
    let me = c.node.peer_id();
    // Only another IP: nothing to dial.
    let (status, text, _) = c.v1(&s, &V1Message::dial(me, &[c.addr("127.0.0.2")])).await;
    assert_eq!(
        (status, text.as_str()),
        (V1Status::DialRefused, "no valid address")
    );
    assert_eq!(
        metric(
            &registry,
            "libp2p_autonat_outgoing_dial_refused_total{refusal_reason=\"no valid address\"}"
        ),
        1.0
    );
    // A response where a request belongs; a peer id that is not the connection's.
    let (status, _, _) = c.v1(&s, &V1Message::response(V1Status::Ok, "", None)).await;
    assert_eq!(status, V1Status::BadRequest);
    let stranger = pylon_node::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let (status, _, _) = c
        .v1(&s, &V1Message::dial(stranger, &[c.addr("127.0.0.1")]))
        .await;
    assert_eq!(status, V1Status::BadRequest);
    // A frame that is no protobuf, and bytes that are no frame.
    for garbage in [
        pylon_node::varint::length_prefixed(&[0xff; 40]),
        vec![0xff; 12],
    ] {
        let mut st = c
            .node
            .host
            .open_stream(&s.peer_id(), &[V1_PROTOCOL])
            .await
            .unwrap();
        st.write_all(&garbage).await.unwrap();
        let (status, _, _) = read_v1(&mut st).await;
        assert_eq!(status, V1Status::BadRequest);
    }
    assert_eq!(
        metric(
            &registry,
            "libp2p_autonat_outgoing_dial_response_total{response_status=\"bad request\"}"
        ),
        4.0
    );
    assert_eq!(
        metric(
            &registry,
            "pylon_autonat_refused_total{version=\"v1\",reason=\"bad request\"}"
        ),
        4.0
    );
    assert_eq!(role.dial_backs(), 0);
    // Still serving.
    let (status, _, _) = c.v1(&s, &V1Message::dial(me, &[c.addr("127.0.0.1")])).await;
    assert_eq!(status, V1Status::Ok);
}

/// The budgets on the wire: one peer's requests past `per_peer_per_minute`, many peers'
/// past `per_ip_per_minute` (all come from 127.0.0.1), a second request while one runs.
#[tokio::test]
async fn floods_get_no_more_dials_than_the_budgets() {
    // One peer: 2 a minute (the default).
    let (s, role, registry) = server(lab()).await;
    let c = Client::connect(&s).await;
    let mut answers = Vec::new();
    for nonce in 0..6 {
        answers.push(c.v2(&s, &[c.addr("127.0.0.1")], nonce).await.0);
    }
    assert_eq!(role.dial_backs(), 2);
    assert_eq!(
        answers.iter().filter(|a| **a == ResponseStatus::Ok).count(),
        2
    );
    assert!(
        answers[2..]
            .iter()
            .all(|a| *a == ResponseStatus::RequestRejected),
        "{answers:?}"
    );
    let (status, text, _) = c
        .v1(
            &s,
            &V1Message::dial(c.node.peer_id(), &[c.addr("127.0.0.1")]),
        )
        .await;
    assert_eq!(
        (status, text.as_str()),
        (V1Status::DialRefused, "peer rate limited")
    );
    assert_eq!(
        metric(
            &registry,
            "libp2p_autonat_outgoing_dial_refused_total{refusal_reason=\"rate limited\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &registry,
            "pylon_autonat_refused_total{version=\"v2\",reason=\"peer rate limited\"}"
        ),
        4.0
    );
    assert_eq!(role.dial_backs(), 2);

    // Many peers at once, one IP: 4 a minute (the default), whoever asks.
    let (s, role, _registry) = server(lab()).await;
    let mut clients = Vec::new();
    for _ in 0..7 {
        clients.push(Client::connect(&s).await);
    }
    let addrs: Vec<Vec<Multiaddr>> = clients.iter().map(|c| vec![c.addr("127.0.0.1")]).collect();
    let answers =
        futures::future::join_all(clients.iter().zip(&addrs).map(|(c, a)| c.v2(&s, a, 9))).await;
    let ok = answers.iter().filter(|a| a.0 == ResponseStatus::Ok).count();
    assert_eq!(ok, 4, "{answers:?}");
    assert!(answers
        .iter()
        .all(|a| a.0 == ResponseStatus::Ok || a.0 == ResponseStatus::RequestRejected));
    assert_eq!(role.dial_backs(), 4);

    // One request at a time per peer: a second while the first waits for its dial data.
    let (s, role, registry) = server(roomy()).await;
    let c = Client::connect(&s).await;
    let mut first = c.v2_request(&s, &[c.addr("127.0.0.2")], 30).await;
    assert!(matches!(
        read_v2(&mut first).await,
        Some(V2Msg::DialDataRequest(_))
    ));
    assert_eq!(
        c.v2(&s, &[c.addr("127.0.0.1")], 31).await.0,
        ResponseStatus::RequestRejected
    );
    assert_eq!(
        metric(
            &registry,
            "pylon_autonat_refused_total{version=\"v2\",reason=\"peer busy\"}"
        ),
        1.0
    );
    drop(first);
    // Once it is gone, the peer is served again.
    wait::until("the first request ended", T, || {
        role.status().in_progress == 0
    })
    .await;
    assert_eq!(
        c.v2(&s, &[c.addr("127.0.0.1")], 32).await,
        (ResponseStatus::Ok, 0, DialStatus::Ok)
    );
}

/// The spec: no dial requests over a relayed connection (the requester's IP is the
/// relay's). The server holds a reservation on a relay; the client reaches it through
/// the circuit and asks there.
#[tokio::test]
async fn requests_over_a_relayed_connection_are_refused() {
    use pylon_roles::relay::Relay;
    let r = kit::start_with(quiet(&[kit::LOCAL_TCP])).await;
    let mut relay_registry = Registry::default();
    let _relay = Relay::start(
        &r,
        pylon_roles::relay::Config::default(),
        &mut Metrics::of::<Relay>(&mut relay_registry),
    )
    .unwrap();
    let (s, role, registry) = server(roomy()).await;
    let relay_addr = kit::addr_of(&r);
    s.relay.listen_via(relay_addr.clone());
    let circuit = relay_addr.with(Protocol::P2pCircuit);
    kit::until(&s, "the server listens through the relay", T, || {
        s.host.listen_addrs().contains(&circuit)
    })
    .await;
    let c = kit::start_with(quiet(&[kit::LOCAL_TCP])).await;
    let conn = tokio::time::timeout(T, c.host.dial(&circuit.with(Protocol::P2p(s.peer_id()))))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.transport(), "p2p-circuit");
    let mine: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", kit::port_of(&c))
        .parse()
        .unwrap();

    let mut st = conn.open_stream(&[V2_DIAL_REQUEST]).await.unwrap();
    send(&mut st, &V2Message::request(std::slice::from_ref(&mine), 1)).await;
    let Some(V2Msg::DialResponse(resp)) = read_v2(&mut st).await else {
        panic!("expected a DialResponse");
    };
    assert_eq!(
        ResponseStatus::from_code(resp.status),
        Some(ResponseStatus::DialRefused)
    );

    let mut st = conn.open_stream(&[V1_PROTOCOL]).await.unwrap();
    send(&mut st, &V1Message::dial(c.peer_id(), &[mine])).await;
    let (status, text, _) = read_v1(&mut st).await;
    assert_eq!(
        (status, text.as_str()),
        (V1Status::DialRefused, "relayed connection")
    );
    assert_eq!(role.dial_backs(), 0);
    assert_eq!(
        metric(
            &registry,
            "libp2p_autonat_outgoing_dial_refused_total{refusal_reason=\"dial blocked\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &registry,
            "pylon_autonat_refused_total{version=\"v2\",reason=\"relayed\"}"
        ),
        1.0
    );
}

/// Pylon's own AutoNAT client (in every node) against the server: with the lab setting
/// on both sides and one confirmation, the client finds its loopback address public.
#[tokio::test]
async fn a_pylon_client_learns_its_reachability_from_the_server() {
    let (s, role, _registry) = server(roomy()).await;
    let c = kit::start_with(node::Config {
        autonat: ClientConfig {
            confirmations: 1,
            allow_loopback: true,
            ..ClientConfig::default()
        },
        ..kit::config(&[kit::LOCAL_TCP])
    })
    .await;
    let mut verdict = c.autonat.watch();
    c.host.dial(&kit::addr_of(&s)).await.unwrap();
    tokio::time::timeout(
        T,
        verdict.wait_for(|v| *v == pylon_node::protocols::autonat::Verdict::Public),
    )
    .await
    .expect("a verdict in time")
    .unwrap();
    assert!(role.dial_backs() >= 1);
    assert!(role.status().dial_backs.get("ok").is_some_and(|n| *n >= 1));
}

#[test]
fn config_errors_name_the_keys() {
    let autonat = pylon_roles::find("autonat").expect("the role is registered");
    let section = |text: &str| -> toml::Value { toml::from_str(text).unwrap() };
    let e = autonat
        .configure(&section("per_peer_per_minute = 50\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("roles.autonat.per_peer_per_minute")
            && e.contains("roles.autonat.requests_per_minute"),
        "{e}"
    );
    let e = autonat
        .configure(&section("dial_data_bytes = 1000\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("roles.autonat.dial_data_bytes"), "{e}");
    let e = autonat
        .configure(&section("v1 = false\nv2 = false\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("roles.autonat.v1") && e.contains("roles.autonat.v2"),
        "{e}"
    );
    let e = autonat
        .configure(&section("dial_back_timeout = \"soon\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("roles.autonat.dial_back_timeout"), "{e}");
    let ok = autonat
        .configure(&section(
            "dial_back_timeout = \"5s\"\nallow_loopback = true\n",
        ))
        .unwrap();
    let c = ok.config::<AutoNat>().unwrap();
    assert_eq!(c.dial_back_timeout, Duration::from_secs(5));
    assert!(c.allow_loopback);
}

/// The note's figure: a flood of 320 requests from 64 peers, each asking five times to be
/// dialed back on its own address, gets no more dial-backs than the global budget (30 a
/// minute by default; the per-IP and per-subnet budgets are raised to it here, as all the
/// peers come from 127.0.0.1), and asking for a third party's address without paying the
/// dial data gets none at all.
#[tokio::test]
async fn a_flood_from_many_peers_gets_at_most_the_global_budget() {
    let wide = Config {
        per_ip_per_minute: 30,
        per_subnet_per_minute: 30,
        ..lab()
    };
    let (s, role, _registry) = server(wide).await;
    let mut clients = Vec::new();
    for _ in 0..64 {
        clients.push(Client::connect(&s).await);
    }
    let requests = futures::future::join_all(clients.iter().enumerate().flat_map(|(i, c)| {
        let own = c.addr("127.0.0.1");
        let s = &s;
        (0..5u64).map(move |n| {
            let own = own.clone();
            async move { c.v2(s, &[own], ((i as u64) << 8) | n).await.0 }
        })
    }))
    .await;
    let served = requests
        .iter()
        .filter(|a| **a == ResponseStatus::Ok)
        .count();
    let dials = role.dial_backs();
    println!(
        "flood: {} requests from {} peers -> {served} served, {dials} dial-backs",
        requests.len(),
        clients.len()
    );
    assert_eq!(requests.len(), 320);
    assert!(dials <= 30, "{dials} dial-backs");
    assert_eq!(served as u64, dials);
    assert!(requests
        .iter()
        .all(|a| *a == ResponseStatus::Ok || *a == ResponseStatus::RequestRejected));

    // A third party's address, without the dial data: no dial, whoever asks.
    let (s, role, _registry) = server(roomy()).await;
    let mut askers = Vec::new();
    for _ in 0..8 {
        askers.push(Client::connect(&s).await);
    }
    let victim: Multiaddr = "/ip4/127.0.9.9/tcp/4001".parse().unwrap();
    let asked = futures::future::join_all(askers.iter().enumerate().map(|(i, c)| {
        let (s, victim) = (&s, victim.clone());
        async move {
            let mut stream = c.v2_request(s, &[victim], i as u64).await;
            // The server wants the dial data first; the asker hangs up instead.
            matches!(read_v2(&mut stream).await, Some(V2Msg::DialDataRequest(_)))
        }
    }))
    .await;
    assert!(asked.iter().all(|a| *a), "each was asked for dial data");
    wait::until("the requests to end", T, || role.status().in_progress == 0).await;
    println!(
        "flood: 8 requests to dial a third party without dial data -> {} dial-backs",
        role.dial_backs()
    );
    assert_eq!(role.dial_backs(), 0);
}
