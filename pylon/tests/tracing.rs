//! OpenTelemetry traces from a real `pylon run` (relay and AutoNAT roles on) to a real
//! OTLP/HTTP receiver started by the test (protobuf `ExportTraceServiceRequest`s decoded
//! with the opentelemetry-proto types): the spans of connection establishment, inbound
//! requests, a DHT lookup, a relay circuit and an AutoNAT dial-back arrive with their
//! attributes;
//! and a collector that never answers costs the node nothing but dropped, counted spans.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::routing::post;
use common::{client, pylon_command, wait_metric, Running, T};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use pylon_node::multiaddr::Protocol;
use pylon_node::protocols::ping;
use tokio::sync::Notify;

/// A span as the receiver got it: its name, its attributes as strings, its service.
#[derive(Debug, Clone)]
struct Received {
    name: String,
    attrs: HashMap<String, String>,
    service: String,
}

/// An OTLP/HTTP receiver on loopback: `POST /v1/traces` with protobuf.
struct Receiver {
    addr: std::net::SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let arrived = Arc::new(Notify::new());
        let (store, notify) = (spans.clone(), arrived.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let (store, notify) = (store.clone(), notify.clone());
                async move {
                    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                        return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
                    };
                    let mut got = Vec::new();
                    for rs in request.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|kv| kv.key == "service.name")
                            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            for span in ss.spans {
                                let attrs = span
                                    .attributes
                                    .iter()
                                    .map(|kv| {
                                        let v = kv.value.as_ref().and_then(|v| v.value.as_ref());
                                        (kv.key.clone(), text(v))
                                    })
                                    .collect();
                                got.push(Received {
                                    name: span.name,
                                    attrs,
                                    service: service.clone(),
                                });
                            }
                        }
                    }
                    store.lock().unwrap().extend(got);
                    notify.notify_waiters();
                    (
                        axum::http::StatusCode::OK,
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            addr,
            spans,
            arrived,
        }
    }

    /// Waits until a span satisfies `pick`; bounded by `T`.
    async fn until(&self, what: &str, pick: impl Fn(&Received) -> bool) -> Received {
        let found = tokio::time::timeout(T, async {
            loop {
                let notified = self.arrived.notified();
                if let Some(s) = self.spans.lock().unwrap().iter().find(|s| pick(s)) {
                    return s.clone();
                }
                notified.await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            let names: Vec<String> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .map(|s| format!("{} {:?}", s.name, s.attrs))
                .collect();
            panic!("no span for {what} within {T:?}; got:\n{names:#?}")
        })
    }
}

/// `pylon run` with `roles` (`--role` arguments) exporting to `endpoint`, batches every
/// 50 ms; the AutoNAT server in its lab setting (the peers are on loopback).
fn traced_node(
    dir: &std::path::Path,
    endpoint: &str,
    roles: &[&str],
    extra_env: &[(&str, &str)],
) -> Running {
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_SERVICE_NAME", "pylon-under-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ("PYLON_ROLES__AUTONAT__ALLOW_LOOPBACK", "true"),
    ];
    env.extend_from_slice(extra_env);
    Running::spawn(pylon_command(dir, "/ip4/127.0.0.1/tcp/0", roles, &env))
}

#[tokio::test]
async fn spans_of_connections_requests_and_a_relay_circuit_reach_the_collector() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{}", receiver.addr);
    // A DHT peer to join through: the node's joining lookup is a `kad.lookup` span.
    let dht = pylon_testkit::node::kad_node(true, Vec::new()).await;
    let bootstrap = pylon_testkit::node::addr_of(&dht).to_string();
    let mut node = traced_node(
        dir.path(),
        &endpoint,
        &[
            "--role",
            "relay",
            "--role",
            "autonat",
            "--role",
            "bootstrap",
        ],
        &[("PYLON_KAD__BOOTSTRAP", bootstrap.as_str())],
    );
    let (addr, _metrics) = node.addresses().await;
    let node_id = common::peer_of(&addr);
    let lookup = receiver
        .until("the joining lookup", |s| s.name == "kad.lookup")
        .await;
    assert!(lookup.attrs.contains_key("kind"), "{lookup:?}");

    // A peer connects and pings: an inbound connection, then identify and ping streams.
    let peer = client().await;
    peer.host.dial(&addr).await.unwrap();
    tokio::time::timeout(T, ping::ping(&peer.host, &node_id))
        .await
        .unwrap()
        .unwrap();
    let conn = receiver
        .until("the inbound connection", |s| {
            s.name == "connection.inbound"
                && s.attrs.get("peer") == Some(&peer.peer_id().to_string())
        })
        .await;
    assert_eq!(conn.attrs["outcome"], "ok");
    assert_eq!(conn.attrs["transport"], "tcp");
    assert_eq!(conn.service, "pylon-under-test");
    receiver
        .until("the ping stream", |s| {
            s.name == "stream.inbound"
                && s.attrs.get("protocol").map(String::as_str) == Some(ping::PROTOCOL)
        })
        .await;

    // A relay circuit: a target reserves, the peer connects through the node to it.
    let target = client().await;
    target.relay.listen_via(addr.clone());
    pylon_testkit::wait::until("the target's reservation", T, || {
        !target.relay.reservations().is_empty()
    })
    .await;
    let through = addr
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(target.peer_id()));
    let circuit = tokio::time::timeout(T, peer.host.dial(&through))
        .await
        .unwrap()
        .unwrap();
    let mut stream = circuit.open_stream(&[ping::PROTOCOL]).await.unwrap();
    tokio::time::timeout(T, ping::ping_on(&mut stream))
        .await
        .unwrap()
        .unwrap();
    drop(stream);
    circuit.close();
    let span = receiver
        .until("the relay circuit", |s| {
            s.name == "relay.circuit" && s.attrs.contains_key("outcome")
        })
        .await;
    assert_eq!(span.attrs["src"], peer.peer_id().to_string());
    assert_eq!(span.attrs["dst"], target.peer_id().to_string());
    assert!(span.attrs["bytes"].parse::<u64>().unwrap() > 0, "{span:?}");

    // An AutoNAT client asks the node to dial it back: an `autonat.dial_back` span.
    let asker = pylon_testkit::node::start_with(pylon_node::node::Config {
        autonat: pylon_node::protocols::autonat::Config {
            allow_loopback: true,
            confirmations: 1,
            ..Default::default()
        },
        ..pylon_testkit::node::config(&["/ip4/127.0.0.1/tcp/0"])
    })
    .await;
    asker.host.dial(&addr).await.unwrap();
    let back = receiver
        .until("the AutoNAT dial-back", |s| s.name == "autonat.dial_back")
        .await;
    assert_eq!(back.attrs["peer"], asker.peer_id().to_string());
    node.stop("-TERM").await;
}

/// A collector that accepts connections and never answers: the node goes on serving, and
/// the spans it cannot export are dropped and counted, not queued without bound.
#[tokio::test]
async fn a_stalled_collector_costs_dropped_spans_not_a_stalled_node() {
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", stalled.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        loop {
            if let Ok((s, _)) = stalled.accept().await {
                open.push(s); // read nothing, answer nothing
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut node = traced_node(
        dir.path(),
        &endpoint,
        &["--role", "relay"],
        &[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "4"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "200"),
        ],
    );
    let (addr, metrics) = node.addresses().await;
    let node_id = common::peer_of(&addr);
    // Many requests, each with its span: far more than the queue holds. Each ping opens
    // a stream of its own (a `stream.inbound` span on the node).
    let peer = client().await;
    peer.host.dial(&addr).await.unwrap();
    for _ in 0..40 {
        tokio::time::timeout(T, ping::ping(&peer.host, &node_id))
            .await
            .expect("the node answers pings while its collector stalls")
            .unwrap();
    }
    wait_metric(
        &metrics,
        "pylon_trace_spans_dropped_total{reason=\"queue_full\"}",
    )
    .await;
    let exposition = common::http_get(&metrics, "/metrics").await;
    let dropped: f64 = common::http::sample(
        &exposition,
        "pylon_trace_spans_dropped_total{reason=\"queue_full\"}",
    )
    .unwrap();
    assert!(dropped > 0.0, "{dropped}");
    node.stop("-TERM").await;
    held.abort();
}
