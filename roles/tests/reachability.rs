//! A node learning its own reachability (`pylon_node::protocols::autonat`, the client every
//! node runs) from AutoNAT servers (the `autonat` role), on loopback: servers on distinct
//! addresses of 127.0.0.0/8 count as distinct IPs, and both sides run their lab setting
//! (`allow_loopback`), since no AutoNAT server dials loopback addresses otherwise.
//! Through real NAT, and against rust-libp2p and js-libp2p: `interop/tests/autonat.rs`.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use prost::Message;
use pylon_node::host::handler;
use pylon_node::node::{self, Node};
use pylon_node::protocols::autonat::proto::{
    DialStatus, ResponseStatus, V2Message, V2Msg, MAX_MESSAGE, V2_DIAL_REQUEST,
};
use pylon_node::protocols::autonat::{self, Verdict};
use pylon_node::protocols::kad;
use pylon_node::{proto, varint};
use pylon_roles::autonat::{AutoNat, Config};
use pylon_roles::{Metrics, Role};
use pylon_testkit::node as kit;
use pylon_testkit::wait;

const T: Duration = Duration::from_secs(20);

/// An AutoNAT server on `ip` (loopback), lab setting on.
async fn server(ip: &str) -> (Node, Arc<AutoNat>) {
    let node = kit::start(&[&format!("/ip4/{ip}/tcp/0")]).await;
    let mut registry = Registry::default();
    let config = Config {
        allow_loopback: true,
        ..Config::default()
    };
    let role = AutoNat::start(&node, config, &mut Metrics::of::<AutoNat>(&mut registry)).unwrap();
    (node, role)
}

/// A client node config on 127.0.0.1: asks servers on loopback, `confirmations` of them.
fn client_config(confirmations: usize) -> node::Config {
    node::Config {
        autonat: autonat::Config {
            allow_loopback: true,
            confirmations,
            ..Default::default()
        },
        ..kit::config(&[kit::LOCAL_TCP])
    }
}

/// v2 answers about one loopback TCP address that `client` judged `reachability`
/// (`libp2p_autonatv2_client_requests_completed_total`).
fn answers(client: &Node, reachability: &'static str) -> u64 {
    client
        .host
        .metrics()
        .autonat_v2_completed
        .get_or_create(&pylon_node::metrics::AutonatClientLabels {
            ip_or_dns_version: "ip4",
            transport: "tcp",
            addr_count: "1",
            dial_refused: "false",
            reachability,
        })
        .get()
}

/// Waits (within `T`) for `client` to be public; says what it knows if it is not.
async fn until_public(client: &Node, verdicts: &mut tokio::sync::watch::Receiver<Verdict>) {
    if tokio::time::timeout(T, verdicts.wait_for(|v| *v == Verdict::Public))
        .await
        .is_err()
    {
        panic!(
            "not public within {T:?}: verdicts {:?}, answers public {}, private {}, \
             unknown {}, observed {:?}",
            client.autonat.verdicts(),
            answers(client, "public"),
            answers(client, "private"),
            answers(client, "unknown"),
            client.identify.observed_addrs(),
        );
    }
}

/// Three servers on three IPs reach the client's listen address: it is public, the node
/// is, the metrics say so, and a DHT in `auto` mode turns to server mode.
#[tokio::test]
async fn three_servers_on_distinct_ips_make_a_node_public_and_its_dht_a_server() {
    let mut servers = Vec::new();
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        servers.push(server(ip).await);
    }
    let client = kit::start_with(node::Config {
        kad: Some(kad::Config {
            auto_server: true,
            refresh_interval: None,
            ..Default::default()
        }),
        ..client_config(3)
    })
    .await;
    let kad = client.kad.clone().unwrap();
    assert!(!kad.is_server(), "auto mode starts as a client");
    let listen = client.host.listen_addrs()[0].clone();
    let mut verdicts = client.autonat.watch();
    for (s, _) in &servers {
        client.host.dial(&kit::addr_of(s)).await.unwrap();
    }
    until_public(&client, &mut verdicts).await;
    assert!(
        client
            .autonat
            .verdicts()
            .contains(&(listen.clone(), Verdict::Public)),
        "{:?}",
        client.autonat.verdicts()
    );
    // Each server dialed back once or more (a fresh connection each time).
    for (_, role) in &servers {
        assert!(role.dial_backs() >= 1);
    }
    let metrics = client.host.metrics();
    assert_eq!(metrics.autonat_reachability.get(), Verdict::Public.code());
    assert!(metrics.autonat_confidence.get() >= 3);
    wait::until("the DHT to turn to server mode", T, || kad.is_server()).await;
    assert!(client
        .host
        .protocols()
        .contains(&kad::DEFAULT_PROTOCOL.to_string()));
}

/// Dials that leave from ephemeral ports (port reuse off) make each server observe us at
/// an address of its own. No two peers agree on one, so none is tested: the servers'
/// per-peer budgets (two requests a minute) go to the listen address, which turns public.
/// (Testing every observed address spent them on the ephemeral ones and refused the
/// listen address its third confirmation.)
#[tokio::test]
async fn addresses_one_peer_alone_observed_do_not_starve_the_listen_address() {
    let mut servers = Vec::new();
    for ip in ["127.0.0.5", "127.0.0.6", "127.0.0.7"] {
        servers.push(server(ip).await);
    }
    let mut config = client_config(3);
    config.host.port_reuse = false;
    let client = kit::start_with(config).await;
    let listen = client.host.listen_addrs()[0].clone();
    let mut verdicts = client.autonat.watch();
    for (s, _) in &servers {
        client.host.dial(&kit::addr_of(s)).await.unwrap();
    }
    // (A dial-back connection's identify may add the listen address itself.)
    wait::until("each server to have said where it saw us", T, || {
        let observed = client.identify.observed_addrs();
        observed.iter().filter(|a| **a != listen).count() >= 3
    })
    .await;
    until_public(&client, &mut verdicts).await;
    assert_eq!(client.autonat.verdicts(), [(listen, Verdict::Public)]);
    assert_eq!(answers(&client, "private") + answers(&client, "unknown"), 0);
}

/// Two servers are not three: with the default of three confirmations the verdict stays
/// unknown, and nothing turns the DHT into a server.
#[tokio::test]
async fn fewer_servers_than_confirmations_leave_reachability_unknown() {
    let (s1, r1) = server("127.0.0.2").await;
    let (s2, r2) = server("127.0.0.3").await;
    let client = kit::start_with(client_config(3)).await;
    client.host.dial(&kit::addr_of(&s1)).await.unwrap();
    client.host.dial(&kit::addr_of(&s2)).await.unwrap();
    wait::until("both servers to have dialed back", T, || {
        r1.dial_backs() >= 1 && r2.dial_backs() >= 1
    })
    .await;
    // The second answer is in once the second dial-back is: give the client its turn.
    wait::until("the client to have both answers", T, || {
        answers(&client, "public") >= 2
    })
    .await;
    assert_eq!(client.autonat.reachability(), Verdict::Unknown);
}

/// A "server" that answers OK / OK without ever dialing back does not make an address
/// public: the v2 client counts an address as reached only when the nonce came back.
#[tokio::test]
async fn a_server_claiming_a_dial_back_it_never_made_is_not_believed() {
    let liar = kit::start(&["/ip4/127.0.0.2/tcp/0"]).await;
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    liar.host.set_handler(
        V2_DIAL_REQUEST,
        handler(move |mut stream| {
            let count = count.clone();
            async move {
                let Ok(bytes) = varint::read_frame(&mut stream, MAX_MESSAGE).await else {
                    return;
                };
                let Ok(V2Message {
                    msg: Some(V2Msg::DialRequest(_)),
                }) = proto::decode::<V2Message>(&bytes, MAX_MESSAGE)
                else {
                    return;
                };
                let lie = V2Message::response(ResponseStatus::Ok, 0, DialStatus::Ok);
                if varint::write_frame(&mut stream, &lie.encode_to_vec())
                    .await
                    .is_ok()
                {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        }),
    );
    let client = kit::start_with(client_config(1)).await;
    client.host.dial(&kit::addr_of(&liar)).await.unwrap();
    wait::until("the liar to have answered", T, || {
        answered.load(Ordering::SeqCst) >= 1
    })
    .await;
    wait::until("the client to have judged the answer", T, || {
        answers(&client, "unknown") >= 1
    })
    .await;
    assert_eq!(client.autonat.reachability(), Verdict::Unknown);
    assert!(client
        .autonat
        .verdicts()
        .iter()
        .all(|(_, v)| *v == Verdict::Unknown));
}
