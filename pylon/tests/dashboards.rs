//! go-libp2p's published Grafana dashboards against a live Pylon: every panel's PromQL
//! is read from the dashboards' JSON, the metric families and labels it uses are checked
//! against the exposition of a running `pylon run` (roles relay, autonat and bootstrap,
//! with real peers in this process doing real traffic), and each panel is reported as
//! OK (it would show data) or EMPTY with the reason.
//!
//! The dashboards are test data outside the repository (go-libp2p's `dashboards/`, not
//! copied here): `PYLON_GRAFANA_ANCHORS`, else `<workspace>/../shared/anchors/
//! go-libp2p-dashboards`, else `/work/shared/anchors/go-libp2p-dashboards`. Without them
//! the test prints `SKIPPED` and passes (a clean clone elsewhere has none).
//!
//! What "OK" means here: every metric the panel's queries select exists in the
//! exposition with the type the name implies (`_total` a counter, `_bucket`/`_sum`/
//! `_count` a histogram), carries every label the query filters, groups by or shows in
//! its legend (`instance` and `job` are Prometheus's), and for at least one query every
//! selector matches a sample. Values are not judged, except that a panel whose samples
//! are all zero says so. The floor: [`EXPECTED_OK`] must stay OK.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use multiaddr::{Multiaddr, Protocol};
use prometheus_client::registry::Registry;
use prost::Message;
use pylon_node::host::{handler, Stream};
use pylon_node::node::{self, Node};
use pylon_node::protocols::autonat::proto::{V2Message, V2_DIAL_REQUEST};
use pylon_node::protocols::autonat::Config as ClientConfig;
use pylon_node::protocols::{identify, kad, ping};
use pylon_node::varint::{read_frame, write_frame};
use pylon_node::PeerId;
use pylon_roles::{autonat, relay, Metrics, Role};
use pylon_testkit::node as kit;
use tokio::io::AsyncWriteExt;

mod common;
use common::{
    ask_v1, http_get, kad_node, peer_of, pylon_command, wait_http, Running, LOCAL_TCP, T,
};

/// The panels that show data against Pylon (`dashboard / row / title`, the row left out
/// when the panel has none). A regression that empties one fails the test.
const EXPECTED_OK: &[&str] = &[
    // autonat: Pylon is AutoNAT client (v1 and v2) and server.
    "autonat / Reachability Status",
    "autonat / Reachability status confidence",
    "autonat / Next Probe Time",
    "autonat / Received Dial Responses",
    "autonat / Outgoing Dial Responses",
    "autonat / Outgoing Dial Refused",
    "autonatv2 / Requests by Reachability",
    "autonatv2 / All Requests",
    "autonatv2 / Server / Dial Request by Response Status",
    "autonatv2 / Server / Dial Request by Dial Status",
    "autonatv2 / Server / Dial Request Errors",
    // autorelay: the relay client's reservations on configured relays.
    "autorelay / Status / Relay Finder Status",
    "autorelay / Reservations / Current Reservations",
    "autorelay / Reservations / Reservation Requests Outcome",
    "autorelay / Relay Addresses / Relay Addresses",
    "autorelay / Relay Addresses / Relay Addresses Updated",
    // holepunch: everything but the direct dial before a punch.
    "holepunch / DCUtR Initiator / Hole punches: TCP",
    "holepunch / DCUtR Initiator / Hole punches: QUIC",
    "holepunch / DCUtR Initiator / Hole punches: Total",
    "holepunch / DCUtR Initiator / Hole punches",
    "holepunch / DCUtR Receiver / Hole punches: QUIC",
    "holepunch / DCUtR Receiver / Hole punches: TCP",
    "holepunch / DCUtR Receiver / Hole punches: Total",
    "holepunch / DCUtR Receiver / Hole punches",
    "host-addrs / Reachable Addrs",
    "host-addrs / Unreachable Addrs",
    "host-addrs / Unknown Reachability Addrs",
    "identify / Pushes triggered",
    "identify / Identify Messages",
    "identify / Outgoing Address Count",
    "identify / Outgoing Protocols Count",
    "identify / Identify Push Messages",
    "identify / Incoming Address Count (Avg)",
    "identify / Incoming Protocols Count (Avg)",
    "identify / New Connections: Push Support",
    "relaysvc / Relay Service / Status",
    "relaysvc / Reservations / Active Reservations",
    "relaysvc / Reservations / Reservation Request Response Status",
    "relaysvc / Reservations / Reservation Requests: New vs Renewal",
    "relaysvc / Reservations / Reservation Request Rejected",
    "relaysvc / Connections / Total Data Transferred",
    "relaysvc / Connections / Active Connections",
    "relaysvc / Connections / Connection Request Response Status",
    "relaysvc / Connections / Bandwidth Used",
    "relaysvc / Connections / Connection Request Rejected",
    "relaysvc / Connections / Connection Duration",
    "resource-manager / Blocked Resources / Number of blocked resource requests",
    "resource-manager / Streams / System Streams",
    "resource-manager / Streams / Transient Streams",
    "resource-manager / Streams / Streams by protocol",
    "resource-manager / Streams / Streams per peer, aggregated",
    "resource-manager / Streams / Current inbound streams per peer histogram. Across all instances",
    "resource-manager / Streams / Current outbound streams per peer histogram. Across all instances",
    "resource-manager / Connections / System Connections",
    "resource-manager / Connections / Transient Connections",
    "resource-manager / Connections / Connections per peer, aggregated",
    "resource-manager / Connections / Current inbound connections per peer histogram. Across all instances",
    "resource-manager / Connections / Curent outbound connections per peer histogram. Across all instances",
    "resource-manager / File Descriptors / FDs in use",
    "swarm / Currently Established Connections / Active Connections",
    "swarm / Currently Established Connections / Active Connections: Inbound",
    "swarm / Currently Established Connections / Active Connections: Outgoing",
    "swarm / Currently Established Connections / Handshake Latency (QUIC, QUIC v1)",
    "swarm / Currently Established Connections / Handshake Latency (TCP)",
    "swarm / Currently Established Connections / Connection Duration",
    "swarm / Currently Established Connections / Active Connections: Early Muxer Negotiation",
    "swarm / Connection Establishment / New Connections: Inbound",
    "swarm / Connection Establishment / New Connections: Outgoing",
    "swarm / Connection Establishment / New Inbound Connections: Transports / Security / Muxers",
    "swarm / Connection Establishment / New Outgoing Connections: Transports / Security / Muxers",
    "swarm / Connection Establishment / New Inbound Connections: IP Version",
    "swarm / Connection Establishment / New Outbound Connections: IP Version",
    "swarm / Connection Establishment / Dial Errors",
    "swarm / Connection Establishment / Dial Success Rates",
    "swarm / Connection Establishment / Peer Dial Latency (Seconds)",
    "swarm / Connection Establishment / libp2p key types",
    "swarm / Dial Prioritisation / Dial Ranking Delay",
    "swarm / Dial Prioritisation / Dials per connection",
];

/// Why the families of the remaining panels are not exported, by family prefix (printed
/// next to the mechanical reason).
const NOT_EXPORTED: &[(&str, &str)] = &[
    (
        "libp2p_eventbus_",
        "Pylon has no typed event bus: the host reports to extensions synchronously and to observers on one bounded broadcast",
    ),
    (
        "libp2p_autorelay_candidate",
        "Pylon does not search for relays: it keeps reservations on configured ones (relay_client.listen_via)",
    ),
    (
        "libp2p_autorelay_scheduled_work_time",
        "Pylon does not search for relays: no peer source calls or candidate checks are scheduled",
    ),
    (
        "libp2p_holepunch_direct_dials",
        "Pylon's DCUtR punches at once; it makes no direct dial before the exchange",
    ),
    (
        "libp2p_rcmgr_memory",
        "Pylon's host reserves no memory per scope (its limits count connections and streams)",
    ),
    (
        "libp2p_rcmgr_peer_memory",
        "Pylon's host reserves no memory per scope (its limits count connections and streams)",
    ),
    (
        "libp2p_swarm_black_hole_filter",
        "Pylon has no black hole filter (dials are ranked and backed off per address)",
    ),
];

// ---- Locating the dashboards ------------------------------------------------------

/// The dashboards' directory, or every place looked at.
fn anchors() -> Result<PathBuf, Vec<PathBuf>> {
    let candidates: Vec<PathBuf> = match std::env::var_os("PYLON_GRAFANA_ANCHORS") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap()
                .to_path_buf();
            vec![
                workspace.join("../shared/anchors/go-libp2p-dashboards"),
                PathBuf::from("/work/shared/anchors/go-libp2p-dashboards"),
            ]
        }
    };
    match candidates.iter().find(|d| d.is_dir()) {
        Some(d) => Ok(d.clone()),
        None => Err(candidates),
    }
}

// ---- The dashboards' panels ---------------------------------------------------------

#[derive(Debug, Clone)]
struct Target {
    expr: String,
    legend: String,
}

#[derive(Debug, Clone)]
struct Panel {
    dashboard: String,
    row: String,
    title: String,
    targets: Vec<Target>,
}

impl Panel {
    fn key(&self) -> String {
        if self.row.is_empty() {
            format!("{} / {}", self.dashboard, self.title)
        } else {
            format!("{} / {} / {}", self.dashboard, self.row, self.title)
        }
    }
}

/// Every panel with queries of every `*/*.json` under `dir`, in file order; a panel
/// belongs to the row above it (or the row it is folded into).
fn load_panels(dir: &Path) -> Vec<Panel> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .flat_map(|d| {
            std::fs::read_dir(&d)
                .unwrap()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect::<Vec<_>>()
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let dashboard = file
            .parent()
            .and_then(|p| p.file_name())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let mut row = String::new();
        for p in json["panels"].as_array().into_iter().flatten() {
            if p["type"] == "row" {
                row = title_of(p);
                for inner in p["panels"].as_array().into_iter().flatten() {
                    push_panel(&mut out, &dashboard, &row, inner);
                }
            } else {
                push_panel(&mut out, &dashboard, &row, p);
            }
        }
    }
    out
}

fn title_of(p: &serde_json::Value) -> String {
    p["title"].as_str().unwrap_or("").trim().to_string()
}

fn push_panel(out: &mut Vec<Panel>, dashboard: &str, row: &str, p: &serde_json::Value) {
    let targets: Vec<Target> = p["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some(Target {
                expr: t["expr"].as_str()?.to_string(),
                legend: t["legendFormat"].as_str().unwrap_or("").to_string(),
            })
        })
        .collect();
    if !targets.is_empty() {
        out.push(Panel {
            dashboard: dashboard.to_string(),
            row: row.to_string(),
            title: title_of(p),
            targets,
        });
    }
}

// ---- PromQL, as far as the dashboards use it ----------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Op(String),
    Punct(char),
    /// A number, a `$variable` or a `[range]`: nothing to check.
    Other,
}

fn lex(expr: &str) -> Vec<Tok> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push(Tok::Other);
        } else if c == '$' {
            i += 1;
            while i < chars.len() && (ident(chars[i]) || chars[i] == '{' || chars[i] == '}') {
                i += 1;
            }
            out.push(Tok::Other);
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
            out.push(Tok::Other);
        } else if c == '"' || c == '\'' {
            let mut s = String::new();
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                s.push(chars[i]);
                i += 1;
            }
            i += 1;
            out.push(Tok::Str(s));
        } else if "=!~<>".contains(c) {
            let start = i;
            while i < chars.len() && "=!~<>".contains(chars[i]) {
                i += 1;
            }
            out.push(Tok::Op(chars[start..i].iter().collect()));
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

impl Matcher {
    fn matches(&self, value: Option<&str>) -> bool {
        let v = value.unwrap_or("");
        let hit = match self.op.as_str() {
            "=" | "!=" => self.value_eq(v),
            // The dashboards' regexes are alternations of literals ("quic|quic-v1").
            _ => self.value.split('|').any(|alt| alt == v),
        };
        hit == (self.op == "=" || self.op == "=~")
    }

    /// `le` is compared as a number: "1" and "1.0" are one bucket.
    fn value_eq(&self, v: &str) -> bool {
        if self.label == "le" {
            if let (Ok(a), Ok(b)) = (self.value.parse::<f64>(), v.parse::<f64>()) {
                return a == b;
            }
        }
        self.value == v
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Selector {
    metric: String,
    matchers: Vec<Matcher>,
}

/// What one query needs: its selectors, and the labels it groups by (`by (...)`).
#[derive(Debug, Default, PartialEq)]
struct Query {
    selectors: Vec<Selector>,
    by: Vec<String>,
}

const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset"];

fn parse(expr: &str) -> Query {
    let toks = lex(expr);
    let mut q = Query::default();
    let mut i = 0;
    let next_is = |i: usize, c: char| toks.get(i + 1) == Some(&Tok::Punct(c));
    // `sum by (x) (...)`: an aggregation whose grouping comes first.
    let grouped_next =
        |i: usize| matches!(toks.get(i + 1), Some(Tok::Ident(w)) if w == "by" || w == "without");
    while i < toks.len() {
        let Tok::Ident(word) = &toks[i] else {
            i += 1;
            continue;
        };
        let grouping = [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ];
        if grouping.contains(&word.as_str()) && next_is(i, '(') {
            let mut j = i + 2;
            while j < toks.len() && toks[j] != Tok::Punct(')') {
                if let (Tok::Ident(l), "by") = (&toks[j], word.as_str()) {
                    q.by.push(l.clone());
                }
                j += 1;
            }
            i = j + 1;
        } else if word == "offset" {
            i += 2;
        } else if next_is(i, '(') || grouped_next(i) || KEYWORDS.contains(&word.as_str()) {
            i += 1; // a function, an aggregation or an operator
        } else {
            let mut sel = Selector {
                metric: word.clone(),
                matchers: Vec::new(),
            };
            i += 1;
            if toks.get(i) == Some(&Tok::Punct('{')) {
                i += 1;
                while i < toks.len() && toks[i] != Tok::Punct('}') {
                    if let (Some(Tok::Ident(l)), Some(Tok::Op(op)), Some(Tok::Str(v))) =
                        (toks.get(i), toks.get(i + 1), toks.get(i + 2))
                    {
                        sel.matchers.push(Matcher {
                            label: l.clone(),
                            op: op.clone(),
                            value: v.clone(),
                        });
                        i += 3;
                    } else {
                        i += 1;
                    }
                }
                i += 1;
            }
            q.selectors.push(sel);
        }
    }
    q
}

/// The labels a legend shows (`{{label}}`).
fn legend_labels(legend: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = legend;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        out.push(rest[start + 2..start + end].trim().to_string());
        rest = &rest[start + end + 2..];
    }
    out
}

/// Labels Prometheus adds itself when it scrapes.
fn scrape_label(l: &str) -> bool {
    l == "instance" || l == "job"
}

// ---- The exposition -----------------------------------------------------------------

#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, l: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == l)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty()) // Prometheus: an empty label is no label
    }
}

#[derive(Debug, Default)]
struct Exposition {
    /// Sample name → (family, type).
    names: HashMap<String, (String, String)>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                let (Some(family), Some(kind)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let names: Vec<String> = match kind {
                    "counter" => vec![format!("{family}_total")],
                    "histogram" => ["_bucket", "_sum", "_count"]
                        .iter()
                        .map(|s| format!("{family}{s}"))
                        .collect(),
                    "info" => vec![format!("{family}_info")],
                    _ => vec![family.to_string()],
                };
                for n in names {
                    e.names.insert(n, (family.to_string(), kind.to_string()));
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                if let Some(s) = parse_sample(line) {
                    e.samples.push(s);
                }
            }
        }
        e
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut key = String::new();
        loop {
            let (idx, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &body[idx + 1..];
                    break;
                }
                ',' => {}
                '=' => {
                    chars.next(); // the opening quote
                    let mut value = String::new();
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '\\' => {
                                let (_, e) = chars.next()?;
                                value.push(if e == 'n' { '\n' } else { e });
                            }
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                c => key.push(c),
            }
        }
    }
    let value = rest.split_whitespace().next()?;
    Some(Sample {
        name,
        labels,
        value: value.parse().ok()?,
    })
}

// ---- Checking a panel -----------------------------------------------------------------

/// Why a query shows nothing. The first three are Pylon's exposition disagreeing with
/// the dashboard; the last two are a run that has not produced the data (yet).
#[derive(Debug, Clone, PartialEq)]
enum Empty {
    MissingFamily(String),
    WrongType { name: String, found: String },
    MissingLabel { name: String, label: String },
    NoSamples(String),
    NoMatch(String),
}

impl Empty {
    fn structural(&self) -> bool {
        !matches!(self, Empty::NoSamples(_) | Empty::NoMatch(_))
    }

    fn metric(&self) -> &str {
        match self {
            Empty::MissingFamily(n)
            | Empty::WrongType { name: n, .. }
            | Empty::MissingLabel { name: n, .. }
            | Empty::NoSamples(n)
            | Empty::NoMatch(n) => n,
        }
    }
}

impl std::fmt::Display for Empty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Empty::MissingFamily(n) => write!(f, "missing family {n}"),
            Empty::WrongType { name, found } => write!(f, "{name} is a {found}"),
            Empty::MissingLabel { name, label } => write!(f, "{name} lacks label {label:?}"),
            Empty::NoSamples(n) => write!(f, "no samples of {n} yet"),
            Empty::NoMatch(s) => write!(f, "no sample matches {s}"),
        }
    }
}

/// The samples a query's selectors match: `Ok(all zero?)` when every selector matches
/// some.
fn check_query(expo: &Exposition, target: &Target) -> Result<bool, Empty> {
    let q = parse(&target.expr);
    let legend = legend_labels(&target.legend);
    let mut all_zero = true;
    let mut no_data = None;
    for sel in &q.selectors {
        let name = &sel.metric;
        let Some((_, kind)) = expo.names.get(name) else {
            return Err(Empty::MissingFamily(name.clone()));
        };
        let wants = if name.ends_with("_total") {
            Some("counter")
        } else if name.ends_with("_bucket") {
            Some("histogram")
        } else {
            None
        };
        let ok = match wants {
            Some(w) => kind == w,
            // `_sum`/`_count` of a histogram, or a gauge of that very name.
            None => kind != "counter",
        };
        if !ok {
            return Err(Empty::WrongType {
                name: name.clone(),
                found: kind.clone(),
            });
        }
        let samples: Vec<&Sample> = expo.samples.iter().filter(|s| &s.name == name).collect();
        if samples.is_empty() {
            no_data.get_or_insert(Empty::NoSamples(name.clone()));
            continue;
        }
        let needed = sel
            .matchers
            .iter()
            .filter(|m| m.op == "=" || m.op == "=~")
            .map(|m| m.label.clone())
            .chain(q.by.iter().cloned())
            .chain(legend.iter().cloned())
            .filter(|l| !scrape_label(l));
        for label in needed {
            if !samples.iter().any(|s| s.label(&label).is_some()) {
                return Err(Empty::MissingLabel {
                    name: name.clone(),
                    label,
                });
            }
        }
        let matching: Vec<&&Sample> = samples
            .iter()
            .filter(|s| {
                sel.matchers
                    .iter()
                    .filter(|m| !scrape_label(&m.label))
                    .all(|m| m.matches(s.label(&m.label)))
            })
            .collect();
        if matching.is_empty() {
            let shown: Vec<String> = sel
                .matchers
                .iter()
                .filter(|m| !scrape_label(&m.label))
                .map(|m| format!("{}{}{:?}", m.label, m.op, m.value))
                .collect();
            no_data.get_or_insert(Empty::NoMatch(format!("{name}{{{}}}", shown.join(","))));
            continue;
        }
        all_zero &= matching.iter().all(|s| s.value == 0.0);
    }
    match no_data {
        Some(e) => Err(e),
        None => Ok(all_zero),
    }
}

#[derive(Debug)]
enum Status {
    /// Every query fine; `zeros`: every sample is 0; `partial`: queries without data.
    Ok {
        zeros: bool,
        partial: Vec<String>,
    },
    Empty(Empty),
}

fn check_panel(expo: &Exposition, panel: &Panel) -> Status {
    let results: Vec<Result<bool, Empty>> =
        panel.targets.iter().map(|t| check_query(expo, t)).collect();
    if let Some(Err(e)) = results
        .iter()
        .find(|r| r.as_ref().is_err_and(Empty::structural))
    {
        return Status::Empty(e.clone());
    }
    let with_data: Vec<bool> = results.iter().filter_map(|r| r.clone().ok()).collect();
    if with_data.is_empty() {
        let first = results.into_iter().find_map(Result::err).unwrap();
        return Status::Empty(first);
    }
    Status::Ok {
        zeros: with_data.iter().all(|z| *z),
        partial: results
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
            .collect(),
    }
}

fn why_not_exported(e: &Empty) -> Option<&'static str> {
    NOT_EXPORTED
        .iter()
        .find(|(prefix, _)| e.metric().starts_with(prefix))
        .map(|(_, why)| *why)
}

#[test]
fn promql_selectors_labels_and_legends_are_read() {
    let q = parse(
        "sum by (transport, security) (rate(libp2p_swarm_connections_opened_total\
         {dir=\"inbound\",instance=~\"$instance\"}[$__rate_interval])) - ignoring(type) \
         libp2p_x_total{type=\"closed\"} offset $__interval or vector(0)",
    );
    assert_eq!(q.by, ["transport", "security"]);
    let names: Vec<&str> = q.selectors.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(
        names,
        ["libp2p_swarm_connections_opened_total", "libp2p_x_total"]
    );
    assert_eq!(q.selectors[0].matchers.len(), 2);
    assert_eq!(q.selectors[0].matchers[1].op, "=~");
    let q = parse(
        "histogram_quantile(0.5, sum(rate(a_bucket{le=\"0.05\"}[5m])) by (le)) * 1000 \
         - round(b{work_type=\"x y\"} - time())",
    );
    assert_eq!(q.by, ["le"]);
    assert_eq!(q.selectors.len(), 2);
    assert_eq!(q.selectors[1].matchers[0].value, "x y");
    assert_eq!(
        legend_labels("{{instance}} {{ ipv }}, {{transport}}"),
        ["instance", "ipv", "transport"]
    );
    let m = Matcher {
        label: "transport".into(),
        op: "=~".into(),
        value: "quic|quic-v1".into(),
    };
    assert!(m.matches(Some("quic-v1")) && !m.matches(Some("tcp")));
    let le = Matcher {
        label: "le".into(),
        op: "=".into(),
        value: "1".into(),
    };
    assert!(le.matches(Some("1.0")));
    let s = parse_sample(r#"x_bucket{le="+Inf",dir="in\"b"} 3"#).unwrap();
    assert_eq!(s.label("dir"), Some("in\"b"));
    assert_eq!(s.value, 3.0);
}

// ---- The live node and its peers ------------------------------------------------------

/// A node config whose own AutoNAT client stays quiet (servers in this test must not ask
/// Pylon by themselves and spend its budgets).
fn quiet(listen: &[&str]) -> node::Config {
    node::Config {
        autonat: ClientConfig {
            enabled: false,
            ..ClientConfig::default()
        },
        ..kit::config(listen)
    }
}

/// AutoNAT server settings for a lab on loopback, with budgets for a test's requests.
fn lab_autonat(v2: bool) -> autonat::Config {
    autonat::Config {
        v2,
        allow_loopback: true,
        per_peer_per_minute: 8,
        per_ip_per_minute: 24,
        per_subnet_per_minute: 24,
        ..autonat::Config::default()
    }
}

/// A node with the AutoNAT server role (and the relay role if `relay`), as Pylon's
/// relay and AutoNAT servers; the roles' handles keep them running (their handlers hold
/// them weakly).
struct Server {
    node: Node,
    _roles: (Option<Arc<relay::Relay>>, Arc<autonat::AutoNat>),
    _registry: Registry,
}

async fn server(listen: &str, relay: bool, v2: bool) -> Server {
    let node = kit::start_with(quiet(&[listen])).await;
    let mut registry = Registry::default();
    let relay = relay.then(|| {
        relay::Relay::start(
            &node,
            relay::Config::default(),
            &mut Metrics::of::<relay::Relay>(&mut registry),
        )
        .unwrap()
    });
    let autonat = autonat::AutoNat::start(
        &node,
        lab_autonat(v2),
        &mut Metrics::of::<autonat::AutoNat>(&mut registry),
    )
    .unwrap();
    Server {
        node,
        _roles: (relay, autonat),
        _registry: registry,
    }
}

/// Waits for the first identify answer `node` gets from `peer`.
async fn identified(events: &mut tokio::sync::broadcast::Receiver<identify::Event>, peer: PeerId) {
    tokio::time::timeout(T, async {
        loop {
            match events.recv().await {
                Ok(identify::Event::Identified(info)) if info.peer == peer => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("identified in time");
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls the exposition until it has a line starting with `prefix` whose value is at
/// least `at_least`; panics showing the family's lines (and the AutoNAT ones, the usual
/// suspects) if it does not come.
async fn wait_sample(metrics: &str, prefix: &str, at_least: f64) {
    let mut body = String::new();
    let found = pylon_testkit::wait::within(T, async || {
        body = http_get(metrics, "/metrics").await;
        body.lines().any(|l| {
            l.starts_with(prefix)
                && l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v >= at_least)
        })
    })
    .await;
    if !found {
        let family = &prefix[..prefix.find('{').unwrap_or(prefix.len())];
        let stem = family.trim_end_matches("_total");
        let lines: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with(stem) || l.starts_with("libp2p_autonat"))
            .collect();
        panic!(
            "no {prefix} >= {at_least} within {T:?}; related lines:\n{}",
            lines.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_libp2p_dashboards_read_a_live_pylon() {
    let dir = match anchors() {
        Ok(d) => d,
        Err(tried) => {
            println!(
                "SKIPPED: anchors not found at {} (set PYLON_GRAFANA_ANCHORS to go-libp2p's dashboards/)",
                tried
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return;
        }
    };
    let panels = load_panels(&dir);
    assert!(
        panels.len() > 50,
        "{} panels in {}",
        panels.len(),
        dir.display()
    );

    // The relay Pylon reserves on (with an AutoNAT v2 server), an AutoNAT v1-only server
    // on another loopback IP (AutoNAT counts servers by IP), and a peer the relay role
    // will refuse.
    let r_server = server(LOCAL_TCP, true, true).await;
    let s_server = server("/ip4/127.0.0.2/tcp/0", false, false).await;
    let (r, s) = (&r_server.node, &s_server.node);
    let denied = kit::start_with(quiet(&[LOCAL_TCP])).await;
    let dead = format!(
        "/ip4/127.0.0.1/tcp/{}/p2p/{}",
        closed_port(),
        pylon_node::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    );

    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("pylon.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[autonat]
allow_loopback = true
confirmations = 2

[kad]
bootstrap = ["{dead}", "{s_addr}"]

[relay_client]
listen_via = ["{relay}"]

[roles.bootstrap]
max_connections_per_ip = 64

[roles.relay]
deny = ["{denied}"]

[roles.autonat]
allow_loopback = true
per_peer_per_minute = 8
per_ip_per_minute = 24
per_subnet_per_minute = 24
"#,
            relay = kit::addr_of(r),
            s_addr = kit::addr_of(s),
            denied = denied.peer_id(),
        ),
    )
    .unwrap();
    let mut pylon = Running::spawn(pylon_command(
        data.path(),
        LOCAL_TCP,
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ],
        &[],
    ));
    let (tcp, metrics) = pylon.addresses().await;
    let pylon_id = peer_of(&tcp);
    let quic: Multiaddr = pylon
        .log
        .iter()
        .find_map(|l| {
            let a = l.split("listening on ").nth(1)?;
            a.contains("/quic-v1").then(|| a.trim().parse().ok())?
        })
        .expect("a QUIC listen line before the metrics line");

    // AutoNAT: Pylon asks R (v2) and S (v1) about its two addresses; both must agree.
    // (Pylon dials S, a "bootstrap peer", so it sees S at 127.0.0.2.)
    wait_sample(
        &metrics,
        "libp2p_host_addrs_reachable{ipv=\"ip4\",transport=\"tcp\"}",
        1.0,
    )
    .await;
    wait_sample(&metrics, "libp2p_autonat_received_dial_response_total", 1.0).await;

    // Pylon as AutoNAT server: a v2 client that tests its own address...
    let c = kit::start_with(node::Config {
        autonat: ClientConfig {
            allow_loopback: true,
            confirmations: 1,
            ..ClientConfig::default()
        },
        ..kit::config(&[LOCAL_TCP])
    })
    .await;
    c.host.dial(&tcp).await.unwrap();
    wait_sample(
        &metrics,
        "libp2p_autonatv2_requests_completed_total{server_error=\"nil\",response_status=\"OK\",dial_status=\"OK\"",
        1.0,
    )
    .await;
    // ...and v1 requests by hand: one answered, one refused, and a broken v2 request.
    let v = kit::start_with(quiet(&[LOCAL_TCP])).await;
    v.host.dial(&tcp).await.unwrap();
    let answer = ask_v1(&v, pylon_id, &[kit::addr_of(&v)]).await;
    assert!(answer.answer().is_some(), "{answer:?}");
    let elsewhere: Multiaddr = "/ip4/127.0.0.9/tcp/9".parse().unwrap();
    ask_v1(&v, pylon_id, &[elsewhere]).await;
    let mut bad = v
        .host
        .open_stream(&pylon_id, &[V2_DIAL_REQUEST])
        .await
        .unwrap();
    let wrong_first = V2Message::data(vec![0; 8]).encode_to_vec();
    write_frame(&mut bad, &wrong_first).await.unwrap();
    let _ = tokio::time::timeout(T, read_frame(&mut bad, 4096)).await;
    wait_sample(
        &metrics,
        "libp2p_autonatv2_requests_completed_total{server_error=\"bad request\"",
        1.0,
    )
    .await;

    // The DHT: a server joins through Pylon and asks it a FIND_NODE.
    let k = kad_node(true, vec![tcp.clone()]).await;
    let find = kad::proto::Message::new(kad::MessageType::FindNode, k.peer_id().to_bytes());
    k.kad
        .as_ref()
        .unwrap()
        .query(pylon_id, std::slice::from_ref(&tcp), &find)
        .await
        .unwrap();
    wait_sample(
        &metrics,
        "libp2p_kad_inbound_requests_total{kind=\"find_node\"",
        1.0,
    )
    .await;

    // Pylon's relay role: a reservation, a circuit carrying a ping, then closed; a
    // reservation renewed then dropped; a denied peer; a circuit to nobody.
    let q = kit::start(&[LOCAL_TCP]).await;
    q.relay.listen_via(tcp.clone());
    let via_pylon = tcp.clone().with(Protocol::P2pCircuit);
    kit::until(&q, "Q listens through Pylon", T, || {
        q.host.listen_addrs().contains(&via_pylon)
    })
    .await;
    let p = kit::start(&[LOCAL_TCP]).await;
    let circuit = tokio::time::timeout(
        T,
        p.host
            .dial(&via_pylon.clone().with(Protocol::P2p(q.peer_id()))),
    )
    .await
    .unwrap()
    .unwrap();
    let mut ping_stream = circuit.open_stream(&[ping::PROTOCOL]).await.unwrap();
    tokio::time::timeout(T, ping::ping_on(&mut ping_stream))
        .await
        .unwrap()
        .unwrap();
    drop(ping_stream);
    circuit.close();
    wait_sample(
        &metrics,
        "libp2p_relaysvc_connections_total{type=\"closed\"}",
        1.0,
    )
    .await;
    let q2 = kit::start(&[LOCAL_TCP]).await;
    q2.relay.reserve(&tcp).await.unwrap();
    q2.relay.reserve(&tcp).await.unwrap();
    q2.host.disconnect(&pylon_id);
    wait_sample(
        &metrics,
        "libp2p_relaysvc_reservations_total{type=\"closed\"}",
        1.0,
    )
    .await;
    assert!(denied.relay.reserve(&tcp).await.is_err());
    let nobody = via_pylon.clone().with(Protocol::P2p(denied.peer_id()));
    assert!(p.host.dial(&nobody).await.is_err());

    // Pylon reachable through R: a peer comes in over the circuit and pings; Pylon, the
    // spec's B, starts DCUtR (it has no loopback candidates to offer: no punch).
    wait_sample(&metrics, "libp2p_autorelay_relay_addresses_count", 1.0).await;
    let a = kit::start(&[LOCAL_TCP]).await;
    let through_r = kit::addr_of(r)
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(pylon_id));
    let relayed = tokio::time::timeout(T, a.host.dial(&through_r))
        .await
        .unwrap()
        .unwrap();
    let mut over_r = relayed.open_stream(&[ping::PROTOCOL]).await.unwrap();
    tokio::time::timeout(T, ping::ping_on(&mut over_r))
        .await
        .unwrap()
        .unwrap();

    // Transports and handshakes: QUIC, TCP without the muxer in the handshake; an
    // identify push; one peer over its connection limit at Pylon.
    let u = kit::start(&["/ip4/127.0.0.1/udp/0/quic-v1"]).await;
    u.host.dial(&quic).await.unwrap();
    ping::ping(&u.host, &pylon_id).await.unwrap();
    let e = kit::start_with(node::Config {
        host: pylon_node::host::Config {
            inline_muxer: false,
            ..Default::default()
        },
        ..kit::config(&[LOCAL_TCP])
    })
    .await;
    let mut e_events = e.identify.subscribe();
    e.host.dial(&tcp).await.unwrap();
    identified(&mut e_events, pylon_id).await;
    // A new protocol of E's: E pushes its identify to Pylon.
    e.host.set_handler(
        "/pylon/dashboards-test/1.0.0",
        handler(|_s: Stream| async {}),
    );
    wait_sample(
        &metrics,
        "libp2p_identify_identify_push_total{dir=\"inbound\"}",
        1.0,
    )
    .await;
    let b = kit::start_with(node::Config {
        host: pylon_node::host::Config {
            max_connections_per_peer: 16,
            ..Default::default()
        },
        ..kit::config(&[LOCAL_TCP])
    })
    .await;
    for _ in 0..9 {
        let _ = b.host.dial(&tcp).await; // the ninth is over Pylon's limit (8 per peer)
    }
    wait_sample(
        &metrics,
        "libp2p_rcmgr_blocked_resources{dir=\"inbound\",scope=\"peer\",resource=\"connection\"}",
        1.0,
    )
    .await;
    // Some go: closed connections of each kind, and a stream on one that stays.
    let mut held = a
        .host
        .open_stream(&pylon_id, &[ping::PROTOCOL])
        .await
        .unwrap();
    held.write_all(&[0u8; 32]).await.unwrap();
    for peer in [&u, &e, &b] {
        peer.shutdown(T).await;
    }
    wait_sample(
        &metrics,
        "libp2p_swarm_connections_closed_total{dir=\"inbound\",transport=\"quic-v1\"",
        1.0,
    )
    .await;
    wait_sample(
        &metrics,
        "libp2p_swarm_connections_closed_total{dir=\"outbound\"",
        1.0,
    )
    .await;

    // The scrape every panel is checked against.
    let body = wait_http(&metrics, "/metrics", "# EOF").await;
    let exposition = &body[body.find("\r\n\r\n").unwrap() + 4..];
    for id in [
        pylon_id,
        r.peer_id(),
        s.peer_id(),
        c.peer_id(),
        q.peer_id(),
        p.peer_id(),
    ] {
        assert!(
            !exposition.contains(&id.to_string()),
            "no PeerId in the exposition: {id}"
        );
    }
    let expo = Exposition::parse(exposition);
    // Not on these dashboards, but what every Prometheus process panel reads.
    for (name, kind) in [
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_threads", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("pylon_build_info", "gauge"),
    ] {
        assert_eq!(
            expo.names.get(name).map(|(_, k)| k.as_str()),
            Some(kind),
            "{name}"
        );
    }
    assert!(exposition.contains(concat!(
        "pylon_build_info{version=\"",
        env!("CARGO_PKG_VERSION"),
        "\"} 1"
    )));
    let results: Vec<(Panel, Status)> = panels
        .into_iter()
        .map(|p| {
            let s = check_panel(&expo, &p);
            (p, s)
        })
        .collect();
    report(&results);

    // The floor: every panel expected to work works.
    let by_key: BTreeMap<String, &Status> = results.iter().map(|(p, s)| (p.key(), s)).collect();
    for key in EXPECTED_OK {
        assert!(
            by_key.contains_key(*key),
            "no panel {key:?} in the dashboards"
        );
    }
    let broken: Vec<String> = EXPECTED_OK
        .iter()
        .filter_map(|k| match by_key.get(*k) {
            Some(Status::Empty(e)) => Some(format!("{k}: {e}")),
            _ => None,
        })
        .collect();
    assert!(
        broken.is_empty(),
        "panels that should show data are empty:\n{}",
        broken.join("\n")
    );

    for n in [&c, &v, &k, &q, &q2, &p, &a, &denied, r, s] {
        n.shutdown(T).await;
    }
    pylon.stop("-TERM").await;
}

/// The table: dashboard, panel, OK or EMPTY and why; then the counts.
fn report(results: &[(Panel, Status)]) {
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    println!(
        "\n{:<18} {:<62} {:<6} detail",
        "dashboard", "panel", "status"
    );
    for (p, s) in results {
        let panel = if p.row.is_empty() {
            p.title.clone()
        } else {
            format!("{} / {}", p.row, p.title)
        };
        let c = counts.entry(p.dashboard.as_str()).or_default();
        let (status, detail) = match s {
            Status::Ok { zeros, partial } => {
                c.0 += 1;
                let mut d = Vec::new();
                if *zeros {
                    d.push("all samples 0 in this run".to_string());
                }
                if !partial.is_empty() {
                    d.push(format!("some queries empty: {}", partial.join("; ")));
                }
                if !EXPECTED_OK.contains(&p.key().as_str()) {
                    d.push("NEW: add to EXPECTED_OK".to_string());
                }
                ("OK", d.join("; "))
            }
            Status::Empty(e) => {
                c.1 += 1;
                let why = why_not_exported(e)
                    .map(|w| format!(" — {w}"))
                    .unwrap_or_default();
                ("EMPTY", format!("{e}{why}"))
            }
        };
        println!("{:<18} {:<62} {:<6} {}", p.dashboard, panel, status, detail);
    }
    println!("\n{:<18} {:>3} {:>6}", "dashboard", "OK", "EMPTY");
    let (mut ok, mut empty) = (0, 0);
    for (d, (o, e)) in &counts {
        println!("{d:<18} {o:>3} {e:>6}");
        ok += o;
        empty += e;
    }
    println!("{:<18} {ok:>3} {empty:>6}\n", "total");
}
