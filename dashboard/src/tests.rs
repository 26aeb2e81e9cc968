//! The router in-process, without a listener: authentication, error answers, paging and
//! the actions' input checks, against a volatile node.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::{json, Value};

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

#[derive(Default)]
struct TestControl {
    drains: AtomicUsize,
    reload_error: Mutex<Option<String>>,
}

impl Control for TestControl {
    fn config(&self) -> ConfigView {
        ConfigView {
            config: json!({ "log": "info" }),
            restart_required: vec![],
        }
    }
    fn reload(&self) -> Result<Reload, String> {
        match self.reload_error.lock().unwrap().clone() {
            Some(e) => Err(e),
            None => Ok(Reload {
                applied: vec!["log".into()],
                restart_required: vec!["listen".into()],
                notes: vec![],
            }),
        }
    }
    fn drain(&self) -> Duration {
        self.drains.fetch_add(1, Ordering::Relaxed);
        Duration::from_secs(5)
    }
}

struct Fixture {
    router: axum::Router,
    control: Arc<TestControl>,
    node: Node,
    admin: Arc<Admin>,
}

async fn fixture() -> Fixture {
    let metrics = pylon_node::metrics::Metrics::unregistered();
    let node = Node::start_volatile(Default::default(), metrics)
        .await
        .unwrap();
    let control = Arc::new(TestControl::default());
    let admin = Arc::new(Admin {
        node: node.clone(),
        roles: Vec::new(),
        token: Token::new(SECRET).unwrap(),
        control: control.clone(),
        info: Info {
            version: "0.0.0-test".into(),
            agent_version: "pylon/test".into(),
            protocol_version: "ipfs/0.1.0".into(),
            started: Instant::now(),
            started_unix_ms: 0,
            limits: Limits::default(),
        },
        history: History::default(),
    });
    Fixture {
        router: router(admin.clone()),
        control,
        node,
        admin,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    json: Value,
}

impl Fixture {
    async fn send(&self, method: &str, path: &str, auth: Option<&str>, body: &str) -> Answer {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let req = req.body(Body::from(body.to_string())).unwrap();
        let mut router = self.router.clone();
        let response = tower_service::Service::call(&mut router, req)
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        Answer {
            status,
            headers,
            json,
        }
    }

    /// `GET path` with `headers`, the body as it came.
    async fn raw(&self, path: &str, headers: &[(header::HeaderName, &str)]) -> Raw {
        let mut req = Request::builder().method("GET").uri(path);
        for (name, value) in headers {
            req = req.header(name, *value);
        }
        let mut router = self.router.clone();
        let response = tower_service::Service::call(&mut router, req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec();
        Raw {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, Some(&format!("Bearer {SECRET}")), "")
            .await
    }

    async fn post(&self, path: &str, body: &str) -> Answer {
        self.send("POST", path, Some(&format!("Bearer {SECRET}")), body)
            .await
    }
}

struct Raw {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

fn error_of(a: &Answer) -> &str {
    a.json["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", a.json))
}

#[tokio::test]
async fn every_api_route_needs_the_token() {
    let f = fixture().await;
    for (method, path) in [
        ("GET", "/api/v1/identity"),
        ("GET", "/api/v1/openapi.json"),
        ("POST", "/api/v1/drain"),
        ("POST", "/api/v1/bans"),
        ("DELETE", "/api/v1/bans/1"),
        ("GET", "/api/v1/no-such-route"),
        ("GET", "/api/v2/identity"),
    ] {
        for auth in [
            None,
            Some("Bearer wrong-token-wrong-token"),
            Some(&format!("Bearer {SECRET}x")[..]),
            Some(&format!("Basic {SECRET}")[..]),
            Some(SECRET),
            Some("Bearer"),
        ] {
            let a = f.send(method, path, auth, "").await;
            assert_eq!(
                a.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {auth:?}"
            );
            assert_eq!(a.headers[header::WWW_AUTHENTICATE], "Bearer");
            assert!(!error_of(&a).contains(SECRET));
        }
    }
    assert_eq!(f.control.drains.load(Ordering::Relaxed), 0, "no action ran");
    let missing = f.send("GET", "/api/v1/identity", None, "").await;
    assert!(error_of(&missing).contains("missing"), "{}", missing.json);
    let wrong = f
        .send(
            "GET",
            "/api/v1/identity",
            Some("Bearer wrong-token-wrong-token"),
            "",
        )
        .await;
    assert_eq!(error_of(&wrong), "wrong token");
    // The scheme is case-insensitive (RFC 7235); the token is not.
    let a = f
        .send(
            "GET",
            "/api/v1/identity",
            Some(&format!("bearer {SECRET}")),
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["peer_id"], f.node.peer_id().to_string());
    let upper = SECRET.to_uppercase();
    let a = f
        .send(
            "GET",
            "/api/v1/identity",
            Some(&format!("Bearer {upper}")),
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let f = fixture().await;
    let a = f.get("/api/v1/nope").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(error_of(&a).contains("/api/v1/nope"));
    let a = f.send("GET", "/elsewhere", None, "").await;
    assert_eq!(
        a.status,
        StatusCode::NOT_FOUND,
        "outside /api, no token needed"
    );
    let a = f.post("/api/v1/identity", "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(error_of(&a).contains("POST"));
    let a = f.get("/api/v1/kad/buckets").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "no DHT on this node");
    assert!(error_of(&a).contains("[kad]"));
}

#[tokio::test]
async fn lists_page_and_refuse_bad_parameters() {
    let f = fixture().await;
    let a = f.get("/api/v1/peers").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        (a.json["offset"].as_u64(), a.json["limit"].as_u64()),
        (Some(0), Some(100))
    );
    let a = f.get("/api/v1/connections?limit=5000&offset=2").await;
    assert_eq!(a.json["limit"], MAX_LIMIT);
    assert_eq!(a.json["offset"], 2);
    for (path, names) in [
        ("/api/v1/peers?limit=many", "limit"),
        ("/api/v1/peers?offset=-3", "offset"),
        ("/api/v1/peers?qq=x", "qq"),
        ("/api/v1/connections?peer=nobody", "nobody"),
        ("/api/v1/identity?x=1", "x"),
        ("/api/v1/bans/abc", "abc"),
    ] {
        let a = if path.starts_with("/api/v1/bans/") {
            f.send("DELETE", path, Some(&format!("Bearer {SECRET}")), "")
                .await
        } else {
            f.get(path).await
        };
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}: {}", a.json);
        assert!(error_of(&a).contains(names), "{path}: {}", a.json);
    }
}

#[tokio::test]
async fn bans_check_their_body_and_can_be_lifted() {
    let f = fixture().await;
    let other = pylon_node::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let me = f.node.peer_id();
    for (body, says) in [
        ("", "JSON body"),
        ("{", "malformed JSON"),
        ("[1]", "malformed JSON"),
        ("{}", "exactly one"),
        (
            &format!(r#"{{"peer":"{other}","cidr":"10.0.0.0/8"}}"#)[..],
            "exactly one",
        ),
        (r#"{"peer":"12D3nope"}"#, "not a PeerId"),
        (r#"{"cidr":"10.0.0.1/8"}"#, "network address"),
        (r#"{"cidr":"10.0.0.0/33"}"#, "longer than the address"),
        (r#"{"cidr":"10.0.0.0/8","duration":"soon"}"#, "duration"),
        (r#"{"cidr":"10.0.0.0/8","duration":"0s"}"#, "duration"),
        (r#"{"cidr":"10.0.0.0/8","for":"1m"}"#, "unknown field"),
        (&format!(r#"{{"peer":"{me}"}}"#)[..], "this node"),
    ] {
        let a = f.post("/api/v1/bans", body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.json);
        assert!(error_of(&a).contains(says), "{body}: {}", a.json);
    }
    let big = format!(r#"{{"cidr":"{}"}}"#, "1".repeat(MAX_BODY));
    let a = f.post("/api/v1/bans", &big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.json);
    assert!(f.node.host.bans().is_empty());

    let a = f
        .post(
            "/api/v1/bans",
            &format!(r#"{{"peer":"{other}","duration":"10m"}}"#),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.json);
    assert_eq!(a.json["kind"], "peer");
    assert_eq!(a.json["target"], other.to_string());
    assert_eq!(a.json["origin"], "admin");
    assert_eq!(a.json["expires_in_secs"], 600);
    let id = a.json["id"].as_u64().unwrap();
    assert!(f.node.host.is_banned(&other));
    let a = f.post("/api/v1/bans", r#"{"cidr":"203.0.113.0/24"}"#).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.json["expires_in_secs"], Value::Null);
    let a = f.get("/api/v1/bans").await;
    assert_eq!(a.json["bans"].as_array().unwrap().len(), 2);
    let path = format!("/api/v1/bans/{id}");
    let auth = format!("Bearer {SECRET}");
    let a = f.send("DELETE", &path, Some(&auth), "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["removed"]["id"], id);
    assert!(!f.node.host.is_banned(&other));
    let a = f.send("DELETE", &path, Some(&auth), "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    // Disconnecting a peer we are not connected to.
    let a = f
        .post(&format!("/api/v1/peers/{other}/disconnect"), "")
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = f.post("/api/v1/peers/x/disconnect", "").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn drain_and_reload_go_to_the_control() {
    let f = fixture().await;
    let a = f.post("/api/v1/drain", "").await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.json, json!({ "draining": true, "grace_secs": 5.0 }));
    assert_eq!(f.control.drains.load(Ordering::Relaxed), 1);
    let a = f.post("/api/v1/reload", "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["restart_required"], json!(["listen"]));
    *f.control.reload_error.lock().unwrap() = Some("config key `log`: bad".into());
    let a = f.post("/api/v1/reload", "").await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error_of(&a).contains("nothing was applied"));
}

/// Audit lines: one per action, with what and how it ended, never the token.
#[tokio::test]
async fn actions_are_audited_without_the_token() {
    // A global subscriber (scoped ones race with other tests over callsite interest)
    // writing into a buffer of the thread that logs: this test's, as its runtime has one.
    thread_local! {
        static CAPTURE: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
    }
    struct ThreadBuf;
    impl std::io::Write for ThreadBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            CAPTURE.with(|c| {
                if let Some(buf) = c.borrow_mut().as_mut() {
                    buf.extend_from_slice(b);
                }
            });
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter("pylon::audit=info")
            .with_writer(|| ThreadBuf)
            .with_ansi(false)
            .init();
    });
    CAPTURE.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let f = fixture().await;
    f.post(
        "/api/v1/bans",
        r#"{"cidr":"198.51.100.0/24","duration":"1h"}"#,
    )
    .await;
    f.post("/api/v1/reload", "").await;
    f.post("/api/v1/drain", "").await;
    f.get("/api/v1/identity").await;
    let log = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    let log = String::from_utf8(log).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert!(
        lines[0].contains("pylon::audit")
            && lines[0].contains("action=\"ban\"")
            && lines[0].contains("198.51.100.0/24 for 1h")
            && lines[0].contains("result=\"ok, id 1\""),
        "{log}"
    );
    assert!(lines[1].contains("action=\"reload\""), "{log}");
    assert!(lines[2].contains("action=\"drain\""), "{log}");
    assert!(!log.contains(SECRET));
}

/// The document parses, and names every route the router serves.
#[test]
fn the_openapi_document_lists_every_route() {
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut listed: Vec<String> = paths
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| format!("{} {path}", m.to_uppercase()))
        })
        .collect();
    listed.sort();
    let mut served = vec![
        "GET /identity",
        "GET /config",
        "GET /roles",
        "GET /peers",
        "POST /peers/{peer}/disconnect",
        "GET /connections",
        "GET /kad/buckets",
        "GET /kad/records",
        "GET /resources",
        "GET /history",
        "GET /bans",
        "POST /bans",
        "DELETE /bans/{id}",
        "POST /drain",
        "POST /reload",
        "GET /openapi.json",
    ];
    served.sort();
    assert_eq!(listed, served);
    // Every $ref points at something.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in all {
        let pointer = r.strip_prefix('#').unwrap();
        assert!(doc.pointer(pointer).is_some(), "dangling {r}");
    }
}

/// The page and its files need no token, come with their type, the security headers and
/// an ETag that a revalidation answers with 304; the page holds no token and no inline
/// script or style; every file it names is served.
#[tokio::test]
async fn the_dashboard_is_served_without_the_token_and_locked_down() {
    let f = fixture().await;
    let page = f.raw("/", &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    let h = &page.headers;
    assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(h[header::CACHE_CONTROL], "no-cache");
    let html = String::from_utf8(page.body.clone()).unwrap();
    assert!(!html.contains(SECRET));
    // No inline code: scripts and styles come from files, no handler attributes.
    assert!(!html.contains("<style"), "inline style element");
    assert!(!html.contains("style="), "inline style attribute");
    for part in html.split(" on").skip(1) {
        let name: String = part.chars().take_while(char::is_ascii_lowercase).collect();
        assert!(
            !part[name.len()..].starts_with('='),
            "inline event handler on{name}"
        );
    }
    let mut named = Vec::new();
    for part in html.split("<script").skip(1) {
        let tag = &part[..part.find('>').unwrap()];
        assert!(tag.contains("src=\"/ui/"), "inline script: <script{tag}>");
        assert!(part[part.find('>').unwrap() + 1..].starts_with("</script>"));
    }
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            let url = &part[..part.find('"').unwrap()];
            if let Some(file) = url.strip_prefix("/ui/") {
                named.push(file.to_string());
            } else {
                assert!(
                    url.starts_with('#'),
                    "{url} is neither a file of ours nor a page"
                );
            }
        }
    }
    assert!(named.iter().any(|n| n == "app.js") && named.iter().any(|n| n == "style.css"));

    // Every file is served with its type; the JavaScript modules import only files of
    // ours, and nothing names another origin.
    for asset in ui::ASSETS.iter().chain([&ui::INDEX]) {
        // The SVG namespace is a name, not a place anything is fetched from.
        let text = String::from_utf8_lossy(asset.body).replace("http://www.w3.org/2000/svg", "");
        assert!(
            !text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"),
            "{} names another origin",
            asset.name
        );
        if asset.name.ends_with(".js") {
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                assert!(line.contains("from './"), "{}: {line}", asset.name);
                let file = line
                    .split("from './")
                    .nth(1)
                    .unwrap()
                    .trim_end_matches("';");
                assert!(
                    ui::ASSETS.iter().any(|a| a.name == file),
                    "{}: {file}",
                    asset.name
                );
            }
        }
    }
    for file in ui::ASSETS
        .iter()
        .map(|a| a.name)
        .chain(named.iter().map(String::as_str))
    {
        let a = f.raw(&format!("/ui/{file}"), &[]).await;
        assert_eq!(a.status, StatusCode::OK, "/ui/{file}");
        let asset = ui::ASSETS.iter().find(|a| a.name == file).unwrap();
        assert_eq!(a.headers[header::CONTENT_TYPE], asset.content_type);
        assert_eq!(a.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(a.body, asset.body);
        let etag = a.headers[header::ETAG].to_str().unwrap().to_string();
        let again = f
            .raw(&format!("/ui/{file}"), &[(header::IF_NONE_MATCH, &etag)])
            .await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED);
        assert!(again.body.is_empty());
    }
    let js = f.raw("/ui/app.js", &[]).await;
    assert_eq!(
        js.headers[header::CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    let missing = f.raw("/ui/nope.js", &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.headers[header::CONTENT_TYPE], "application/json");

    // The API's answers: the same headers, never cached; the data still needs the token.
    let a = f.raw("/api/v1/identity", &[]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
    assert!(a.headers.contains_key(header::CONTENT_SECURITY_POLICY));
    let auth = format!("Bearer {SECRET}");
    let a = f
        .raw("/api/v1/identity", &[(header::AUTHORIZATION, &auth)])
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
}

/// `GET /history`: the samples the sampler took, `since` filtering them, and a bad
/// `since` refused.
#[tokio::test]
async fn history_answers_the_samples_kept() {
    let f = fixture().await;
    let a = f.get("/api/v1/history").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["interval_secs"], 5);
    assert_eq!(a.json["capacity"], 720);
    assert_eq!(a.json["samples"], json!([]));
    let admin = f.admin.clone();
    let now = Instant::now();
    admin
        .history
        .handle_reading(now, 1_000, history::read(&admin));
    admin
        .history
        .handle_reading(now + history::INTERVAL, 6_000, history::read(&admin));
    let a = f.get("/api/v1/history").await;
    let samples = a.json["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[1]["span_ms"], 5_000);
    assert_eq!(samples[1]["connections"], 0);
    assert_eq!(samples[1]["requests"], json!({}));
    let a = f.get("/api/v1/history?since=1000").await;
    assert_eq!(a.json["samples"].as_array().unwrap().len(), 1);
    let a = f.get("/api/v1/history?since=soon").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(error_of(&a).contains("since"));
}
