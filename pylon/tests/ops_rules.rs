//! The Prometheus alert rules in `ops/alerts/pylon.rules.yml` against a live Pylon: every
//! metric family an alert's `expr` names must be exported by `pylon run` with the relay,
//! AutoNAT and bootstrap roles (a `# TYPE` line in its exposition), every alert must carry
//! `for`, a severity, a summary, a description and a runbook that exists in
//! `ops/runbooks/`, and every runbook there must be linked by an alert.
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
use common::{http_get, peer_of, Running, LOCAL_TCP, T};

/// Where every `runbook_url` points: this prefix, then a path in the repository.
const RUNBOOK_BASE: &str = "https://github.com/pylon/pylon/blob/main/";

/// Families whose series appear only on an event this test does not provoke.
const LAZY: &[&str] = &[
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
async fn every_alert_names_only_exported_metrics() {
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
    let mut pylon = Running::start(
        data.path(),
        &[
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
    // The process under test reports nothing to this one: its metrics are polled, bounded.
    let mut exposition = String::new();
    pylon_testkit::wait::until_async("the families the traffic creates", T, async || {
        exposition = http_get(&metrics, "/metrics").await;
        exposition.contains("# TYPE libp2p_swarm_connections_opened counter")
            && exposition.contains("# TYPE libp2p_relaysvc_connection_rejections counter")
            && exposition.contains("# TYPE pylon_autonat_refused counter")
            && exposition.contains("# TYPE libp2p_kad_routing_table_peers ")
    })
    .await;
    let exported: BTreeSet<&str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();

    let mut offenders = Vec::new();
    let mut lazy_absent = BTreeSet::new();
    for a in read_rules(&text) {
        let expr = a.fields.get("expr").unwrap();
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{}: no metric in {expr}", a.name);
        for name in names {
            let fams = families(&name);
            if fams.iter().any(|f| exported.contains(f)) {
                continue;
            }
            match fams.iter().find(|f| LAZY.contains(f)) {
                Some(_) if documented(&metrics_section, &name) => {
                    lazy_absent.insert(format!("{name} ({})", a.name));
                }
                _ => offenders.push(format!("{}: {name}", a.name)),
            }
        }
    }
    println!(
        "not in this exposition (no event yet), documented in README's Metrics: {lazy_absent:?}"
    );
    assert!(
        offenders.is_empty(),
        "alert expressions name metrics Pylon does not export:\n{}",
        offenders.join("\n")
    );
    drop((peer, nobody));
    pylon.stop("-TERM").await;
}
