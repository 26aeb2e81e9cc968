//! The Prometheus alert rules in `ops/alerts/pylon.rules.yml` and the Grafana dashboards
//! in `ops/grafana/` against a live Pylon: every metric family an alert's `expr` or a
//! dashboard query names must be exported by `pylon run` with the relay, AutoNAT, booster and
//! bootstrap roles (a `# TYPE` line in its exposition); every alert must carry `for`, a
//! severity, a summary, a description and a runbook that exists in `ops/runbooks/`, and
//! every runbook there must be linked by an alert; every dashboard is well formed.
//!
//! No YAML parser is in the workspace, so the rules file keeps to a subset a line reader
//! checks: one `- alert:` per rule, its `expr:` on one line, plain `key: value` lines.
//!
//! Real traffic: a peer connects, asks Pylon's relay for a circuit to a peer without
//! a reservation (refused), and sends its AutoNAT server a malformed request (refused). Families with labels appear in the exposition only once their first series exists
//! (an error, a refusal, a task failure). Those this test cannot provoke are listed in
//! [`LAZY`]: absent, they must at least be documented in README's "Metrics" section, and
//! the test prints them.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use multiaddr::Protocol;
use prost::Message;
use pylon_node::protocols::autonat::proto::{V2Message, V2_DIAL_REQUEST};
use pylon_node::varint::{read_frame, write_frame};
use pylon_testkit::node as kit;

mod common;
use common::{ask_v1, http_get, kad_node, peer_of, Running, LOCAL_TCP, T};
use pylon_node::protocols::kad;

/// Where every `runbook_url` points: this prefix, then a path in the repository.
const RUNBOOK_BASE: &str = "https://github.com/pylon/pylon/blob/main/";

/// Families whose series appear only on an event this test does not provoke (or not
/// always within its bound: a dial-back, a reservation, Pylon's own DHT request, an
/// AutoNAT verdict). `cargo test -p pylon --test dashboards` provokes most of them.
const LAZY: &[&str] = &[
    "libp2p_kad_outbound_requests",
    "libp2p_relaysvc_reservations",
    "libp2p_swarm_handshake_errors",
    "pylon_autonat_dial_backs",
    // The booster's: a request to a head, a prefetch, a crawl's decision.
    "pylon_booster_decisions",
    "pylon_booster_gets",
    "pylon_booster_prefetch",
    "pylon_booster_prefetch_results",
    "pylon_reachability_addresses",
    "pylon_relay_bad_requests",
    "pylon_relay_circuits_ended",
    // The AutoNAT client's answers: it asks public servers only, none here.
    "libp2p_autonat_received_dial_response",
    "libp2p_autonatv2_client_requests",
    "libp2p_kad_routing_table_refusals",
    "libp2p_rcmgr_blocked_resources",
    "libp2p_relaysvc_reservation_rejections",
    "libp2p_swarm_dial_errors",
    "pylon_storage_write_errors",
    "pylon_task_failures",
];

/// PromQL functions, aggregations, operators and modifiers: never metric names.
const KEYWORDS: &[&str] = &[
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "predict_linear",
    "changes",
    "resets",
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "count_values",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "histogram_quantile",
    "by",
    "without",
    "and",
    "or",
    "unless",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "clamp",
    "clamp_min",
    "clamp_max",
    "abs",
    "absent",
    "absent_over_time",
    "ceil",
    "floor",
    "round",
    "exp",
    "ln",
    "log2",
    "log10",
    "sqrt",
    "label_replace",
    "label_join",
    "vector",
    "scalar",
    "time",
    "timestamp",
    "sort",
    "sort_desc",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "last_over_time",
    "present_over_time",
    "inf",
    "nan",
    "label_values",
];

/// Keywords followed by a parenthesised list of label names.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

#[derive(Debug, Default)]
struct Alert {
    name: String,
    fields: BTreeMap<String, String>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        v[1..v.len() - 1].replace("\\\"", "\"")
    } else {
        v.to_string()
    }
}

/// Every rule of the file, its `key: value` lines (the labels' and annotations' keys
/// included) by key.
fn read_rules(text: &str) -> Vec<Alert> {
    let mut alerts: Vec<Alert> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        if let Some(name) = t.strip_prefix("- alert:") {
            alerts.push(Alert {
                name: unquote(name),
                ..Alert::default()
            });
            continue;
        }
        if t.starts_with("- record:") {
            panic!("recording rules are not expected here: {t}");
        }
        let Some(alert) = alerts.last_mut() else {
            continue;
        };
        if let Some((k, v)) = t.split_once(':') {
            if !k.contains(' ') && !v.trim().is_empty() {
                let previous = alert.fields.insert(k.to_string(), unquote(v));
                assert!(previous.is_none(), "{}: `{k}` twice", alert.name);
            }
        }
    }
    alerts
}

/// The metric names an expression selects.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_list = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    if chars[i] == '"' {
                        i += 1;
                        while i < chars.len() && chars[i] != '"' {
                            i += 1;
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            '(' if skip_list => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                skip_list = false;
                i += 1;
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || ".+-_".contains(chars[i]))
                {
                    // A sign belongs to the number only after an exponent.
                    if "+-".contains(chars[i]) && !matches!(chars[i - 1], 'e' | 'E') {
                        break;
                    }
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i]))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let lower = word.to_ascii_lowercase();
                if GROUPING.contains(&lower.as_str()) {
                    skip_list = true;
                } else if !KEYWORDS.contains(&lower.as_str()) {
                    names.insert(word);
                }
            }
            _ => {
                if !c.is_whitespace() {
                    skip_list = false;
                }
                i += 1;
            }
        }
    }
    names
}

/// The families a sample name may belong to: itself, a counter's, a histogram's.
fn families(name: &str) -> Vec<&str> {
    let mut out = vec![name];
    for suffix in ["_total", "_bucket", "_sum", "_count"] {
        if let Some(f) = name.strip_suffix(suffix) {
            out.push(f);
        }
    }
    out
}

/// Whether README's Metrics section names `name`: whole, or as its family prefix (the
/// first two words, `libp2p_swarm_`) and the rest (`dial_errors_total`), the way the
/// README lists families.
fn documented(section: &str, name: &str) -> bool {
    if section.contains(name) {
        return true;
    }
    let mut words = name.splitn(3, '_');
    let (Some(a), Some(b), Some(rest)) = (words.next(), words.next(), words.next()) else {
        return false;
    };
    section.contains(&format!("{a}_{b}_"))
        && (section.contains(&format!("`{rest}")) || section.contains(&format!("…_{rest}")))
}

/// Every query of the dashboards in `ops/grafana/`, as (where, expression): panel
/// targets (rows' nested panels too) and the `label_values(metric, label)` variables
/// (their metric). Checks, on the way, that each dashboard is well formed: a unique uid,
/// the `pylon` tag, the `datasource` variable on every query panel, unique refIds, panels
/// inside the 24-column grid.
fn dashboard_queries(root: &Path) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    let mut uids = BTreeSet::new();
    let dir = root.join("ops/grafana");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "an overview and one per role: {files:?}");
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let uid = d["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no uid"));
        assert!(uids.insert(uid.to_string()), "{name}: uid {uid} twice");
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "{name}");
        assert!(
            d["tags"].as_array().unwrap().iter().any(|t| t == "pylon"),
            "{name}: the pylon tag links the dashboards together"
        );
        for var in d["templating"]["list"].as_array().unwrap() {
            if let Some(q) = var["definition"].as_str() {
                let inner = q
                    .strip_prefix("label_values(")
                    .and_then(|r| r.split(',').next())
                    .unwrap_or_else(|| panic!("{name}: variable query {q}"));
                queries.push((
                    format!("{name} variable {}", var["name"]),
                    inner.to_string(),
                ));
            }
        }
        let mut panels: Vec<&serde_json::Value> = d["panels"].as_array().unwrap().iter().collect();
        let mut count = 0;
        while let Some(p) = panels.pop() {
            if let Some(nested) = p["panels"].as_array() {
                panels.extend(nested);
            }
            let title = p["title"].as_str().unwrap_or("");
            let grid = &p["gridPos"];
            let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
            assert!(x + w <= 24, "{name} / {title}: outside the grid");
            if p["type"] == "row" {
                continue;
            }
            count += 1;
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{name} / {title}");
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name} / {title}: no query");
            let refs: BTreeSet<&str> = targets
                .iter()
                .map(|t| t["refId"].as_str().unwrap())
                .collect();
            assert_eq!(refs.len(), targets.len(), "{name} / {title}: refIds repeat");
            for t in targets {
                let expr = t["expr"].as_str().unwrap();
                queries.push((format!("{name} / {title}"), expr.to_string()));
            }
        }
        assert!(count >= 8, "{name}: {count} panels");
    }
    queries
}

#[test]
fn extracts_metric_names() {
    let got = metric_names(
        r#"(sum by (instance, job) (rate(a_total{reason="x by y"}[5m])) / clamp_min(b_bucket offset 1d, 1e-9) > 0.8 * 1024) and on(instance) max_over_time(c[30m]) < 2e+3"#,
    );
    let want: BTreeSet<String> = ["a_total", "b_bucket", "c"].map(String::from).into();
    assert_eq!(got, want);
    assert_eq!(families("x_total"), ["x_total", "x"]);
}

#[test]
fn every_alert_is_complete_and_has_a_runbook() {
    let root = workspace();
    let text = std::fs::read_to_string(root.join("ops/alerts/pylon.rules.yml")).unwrap();
    assert!(text.starts_with("#") || text.starts_with("groups:"));
    assert!(text.contains("\ngroups:\n") || text.starts_with("groups:\n"));
    let alerts = read_rules(&text);
    assert!(alerts.len() >= 6, "{} alerts", alerts.len());
    let mut problems = Vec::new();
    let mut linked = BTreeSet::new();
    for a in &alerts {
        for key in [
            "expr",
            "for",
            "severity",
            "summary",
            "description",
            "runbook_url",
        ] {
            if !a.fields.contains_key(key) {
                problems.push(format!("{}: no `{key}`", a.name));
            }
        }
        if let Some(expr) = a.fields.get("expr") {
            // A cheap syntax check: brackets balance and nest.
            let mut open = Vec::new();
            for c in expr.chars() {
                match c {
                    '(' | '[' | '{' => open.push(c),
                    ')' | ']' | '}' => {
                        let want = match c {
                            ')' => '(',
                            ']' => '[',
                            _ => '{',
                        };
                        if open.pop() != Some(want) {
                            problems.push(format!("{}: unbalanced `{c}` in expr", a.name));
                            break;
                        }
                    }
                    _ => {}
                }
            }
            if !open.is_empty() {
                problems.push(format!("{}: unclosed brackets in expr", a.name));
            }
        }
        if let Some(sev) = a.fields.get("severity") {
            if !["critical", "warning", "info"].contains(&sev.as_str()) {
                problems.push(format!("{}: severity {sev}", a.name));
            }
        }
        if let Some(url) = a.fields.get("runbook_url") {
            match url.strip_prefix(RUNBOOK_BASE) {
                Some(path) if path.starts_with("ops/runbooks/") && path.ends_with(".md") => {
                    if root.join(path).is_file() {
                        linked.insert(path.to_string());
                    } else {
                        problems.push(format!("{}: runbook {path} does not exist", a.name));
                    }
                }
                _ => problems.push(format!(
                    "{}: runbook_url {url} not under {RUNBOOK_BASE}ops/runbooks/",
                    a.name
                )),
            }
        }
    }
    for entry in std::fs::read_dir(root.join("ops/runbooks")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let path = format!("ops/runbooks/{name}");
        if name.ends_with(".md") && !linked.contains(&path) {
            problems.push(format!("{path} is linked by no alert"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_and_dashboard_query_names_only_exported_metrics() {
    let root = workspace();
    let text = std::fs::read_to_string(root.join("ops/alerts/pylon.rules.yml")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let metrics_section = readme
        .split("\n## Metrics")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap()
        .to_string();

    let data = tempfile::tempdir().unwrap();
    // The booster with one head on a loopback port the system picks.
    let config = data.path().join("booster.toml");
    std::fs::write(
        &config,
        "[roles.booster]\nheads = 1\nport_base = 0\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\n",
    )
    .unwrap();
    let mut pylon = Running::start(
        data.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--role",
            "relay",
            "--role",
            "autonat",
            "--role",
            "bootstrap",
        ],
    );
    let (tcp, metrics) = pylon.addresses().await;
    // Real traffic: a peer connects (the swarm's connection families get their series).
    let peer = kit::start(&[LOCAL_TCP]).await;
    tokio::time::timeout(T, peer.host.dial(&tcp))
        .await
        .unwrap()
        .unwrap();
    // A circuit through Pylon's relay to a peer that holds no reservation: refused
    // (`libp2p_relaysvc_connection_rejections_total{reason="no_reservation"}`).
    let nobody = kit::start(&[LOCAL_TCP]).await;
    let to_nobody = tcp
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(nobody.peer_id()));
    let refused = tokio::time::timeout(T, peer.host.dial(&to_nobody)).await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a circuit to a peer without a reservation"
    );
    // A malformed AutoNAT v2 request: the autonat role refuses it
    // (`pylon_autonat_refused_total{version="v2",reason="bad request"}`).
    let mut bad =
        tokio::time::timeout(T, peer.host.open_stream(&peer_of(&tcp), &[V2_DIAL_REQUEST]))
            .await
            .unwrap()
            .unwrap();
    let wrong_first = V2Message::data(vec![0; 8]).encode_to_vec();
    write_frame(&mut bad, &wrong_first).await.unwrap();
    let _ = tokio::time::timeout(T, read_frame(&mut bad, 4096)).await;
    drop(bad);
    // An AutoNAT v1 request to dial an address the peer is not on: refused
    // (`libp2p_autonat_outgoing_dial_response_total{response_status="E_DIAL_REFUSED"}`).
    let elsewhere: multiaddr::Multiaddr = "/ip4/127.0.0.9/tcp/9".parse().unwrap();
    ask_v1(&peer, peer_of(&tcp), &[elsewhere]).await;
    // The DHT: a server joins through Pylon and asks it a FIND_NODE
    // (`libp2p_kad_inbound_requests_total`); Pylon's bootstrap role asks it back
    // (`libp2p_kad_outbound_requests_total`).
    let k = kad_node(true, vec![tcp.clone()]).await;
    let find = kad::proto::Message::new(kad::MessageType::FindNode, k.peer_id().to_bytes());
    tokio::time::timeout(
        T,
        k.kad
            .as_ref()
            .unwrap()
            .query(peer_of(&tcp), std::slice::from_ref(&tcp), &find),
    )
    .await
    .unwrap()
    .unwrap();
    // Every name the alerts and the dashboards select, where each is used.
    let alerts = read_rules(&text)
        .into_iter()
        .map(|a| (a.name.clone(), a.fields.get("expr").unwrap().clone()));
    let mut uses: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (place, expr) in alerts.chain(dashboard_queries(&root)) {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{place}: no metric in {expr}");
        for name in names {
            uses.entry(name).or_default().push(place.clone());
        }
    }
    let lazy = |name: &str| families(name).iter().any(|f| LAZY.contains(f));
    // The process under test reports nothing to this one: its metrics are polled until
    // every family the traffic creates is there, bounded; what is still missing then is
    // reported below.
    let mut exported: BTreeSet<String>;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let exposition = http_get(&metrics, "/metrics").await;
        exported = exposition
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(String::from)
            .collect();
        let missing = uses
            .keys()
            .any(|name| !lazy(name) && !families(name).iter().any(|f| exported.contains(*f)));
        if !missing || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let mut offenders = Vec::new();
    let mut lazy_absent = BTreeSet::new();
    for (name, places) in &uses {
        if families(name).iter().any(|f| exported.contains(*f)) {
            continue;
        }
        if lazy(name) && documented(&metrics_section, name) {
            lazy_absent.insert(name.clone());
        } else {
            offenders.extend(places.iter().map(|p| format!("{p}: {name}")));
        }
    }
    println!(
        "not in this exposition (no event yet), documented in README's Metrics: {lazy_absent:?}"
    );
    assert!(
        offenders.is_empty(),
        "alert expressions and dashboard queries name metrics Pylon does not export:\n{}",
        offenders.join("\n")
    );
    drop((peer, nobody, k));
    pylon.stop("-TERM").await;
}
