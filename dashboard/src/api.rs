//! The handlers of `/api/v1`. Each answers JSON in the shape `openapi.json` describes
//! (a test validates live answers against it); each action logs one audit line.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pylon_node::host::{Ban, BanId, BanTarget, Connection};
use pylon_node::ipprefix::IpPrefix;
use pylon_node::PeerId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::paging::Params;
use crate::{Admin, AUDIT, OPENAPI};

type Answer = Result<Response, ApiError>;

fn ok<T: Serialize>(body: T) -> Answer {
    Ok(Json(body).into_response())
}

/// One audit line: what was done, to what, and how it ended. Never the token.
fn audit(action: &str, target: &str, result: &str) {
    tracing::info!(target: AUDIT, action, "target" = target, result, "admin action");
}

pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whole seconds from now until `until`, rounded up.
fn secs_until(until: Instant, now: Instant) -> u64 {
    let left = until.saturating_duration_since(now);
    left.as_secs() + u64::from(left.subsec_nanos() > 0)
}

fn parse_peer(text: &str) -> Result<PeerId, ApiError> {
    text.parse()
        .map_err(|e| ApiError::bad_request(format!("{text:?} is not a PeerId: {e}")))
}

fn strings<T: ToString>(items: impl IntoIterator<Item = T>) -> Vec<String> {
    items.into_iter().map(|i| i.to_string()).collect()
}

// ---- Fallbacks --------------------------------------------------------------------------

pub(crate) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no such route: {method} {}; the routes are listed in /api/v1/openapi.json",
        uri.path()
    ))
}

pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

pub(crate) async fn openapi(RawQuery(q): RawQuery) -> Answer {
    Params::parse(q.as_deref(), &[])?;
    Ok(([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response())
}

// ---- Reads ------------------------------------------------------------------------------

pub(crate) async fn identity(State(a): State<Arc<Admin>>, RawQuery(q): RawQuery) -> Answer {
    Params::parse(q.as_deref(), &[])?;
    let node = &a.node;
    let connections = node.host.connections();
    let mut protocols = node.host.protocols();
    protocols.sort();
    ok(json!({
        "peer_id": node.peer_id().to_string(),
        "version": a.info.version,
        "agent_version": a.info.agent_version,
        "protocol_version": a.info.protocol_version,
        "listen_addrs": strings(node.listen_multiaddrs()),
        "advertised_addrs": strings(node.identify.advertised_addrs()),
        "reachability": node.autonat.reachability().label(),
        "protocols": protocols,
        "roles": a.roles.iter().map(|r| r.name()).collect::<Vec<_>>(),
        "started_unix_ms": a.info.started_unix_ms,
        "uptime_secs": a.info.started.elapsed().as_secs(),
        "connections": connections.len(),
        "connected_peers": node.host.connected_peers().len(),
        "draining": node.host.is_draining(),
    }))
}

pub(crate) async fn config(State(a): State<Arc<Admin>>, RawQuery(q): RawQuery) -> Answer {
    Params::parse(q.as_deref(), &[])?;
    ok(a.control.config())
}

pub(crate) async fn roles(State(a): State<Arc<Admin>>, RawQuery(q): RawQuery) -> Answer {
    Params::parse(q.as_deref(), &[])?;
    let roles: Vec<Value> = a
        .roles
        .iter()
        .map(|r| json!({ "name": r.name(), "status": r.status() }))
        .collect();
    ok(json!({ "roles": roles }))
}

#[derive(Serialize)]
struct PeerView {
    peer_id: String,
    connected: bool,
    agent_version: Option<String>,
    protocol_version: Option<String>,
    addrs: Vec<String>,
    protocols: Vec<String>,
    /// Unix milliseconds; 0 when never seen since it was stored.
    last_seen_unix_ms: u64,
}

pub(crate) async fn peers(State(a): State<Arc<Admin>>, RawQuery(q): RawQuery) -> Answer {
    let params = Params::parse(q.as_deref(), &["q", "offset", "limit"])?;
    let page = params.page()?;
    let needle = params.get("q").map(str::to_lowercase);
    let node = &a.node;
    let now = now_unix_ms();
    // Where each connected peer is, from its connections (one pass over them).
    let mut remote: BTreeMap<PeerId, Vec<String>> = BTreeMap::new();
    for c in node.host.connections() {
        remote
            .entry(c.peer())
            .or_default()
            .push(c.remote_addr().to_string());
    }
    let mut ids = node.peerstore.peer_ids();
    ids.extend(remote.keys().copied());
    ids.sort_unstable_by_key(|p| p.to_bytes());
    ids.dedup();
    let mut views: Vec<PeerView> = ids
        .into_iter()
        .map(|peer| {
            let info = node.peerstore.get(&peer).unwrap_or_default();
            let mut addrs = strings(info.live_addrs(now));
            if addrs.is_empty() {
                // A peer we are connected to but have not identified yet: where it is.
                addrs = remote.get(&peer).cloned().unwrap_or_default();
            }
            PeerView {
                peer_id: peer.to_string(),
                connected: remote.contains_key(&peer),
                agent_version: info.agent_version,
                protocol_version: info.protocol_version,
                addrs,
                protocols: info.protocols,
                last_seen_unix_ms: info.last_seen_ms,
            }
        })
        .filter(|v| needle.as_deref().is_none_or(|n| peer_matches(v, n)))
        .collect();
    // Connected peers first, then by PeerId: a stable order to page through.
    views.sort_by(|x, y| (!x.connected, &x.peer_id).cmp(&(!y.connected, &y.peer_id)));
    let (total, views) = page.apply(views);
    ok(json!({
        "total": total,
        "offset": page.offset,
        "limit": page.limit,
        "peers": views,
    }))
}

/// Whether a peer matches a (lowercased) search: its PeerId, agent, an address or a
/// protocol contains it.
fn peer_matches(v: &PeerView, needle: &str) -> bool {
    let has = |s: &str| s.to_lowercase().contains(needle);
    has(&v.peer_id)
        || v.agent_version.as_deref().is_some_and(has)
        || v.addrs.iter().any(|a| has(a))
        || v.protocols.iter().any(|p| has(p))
}

fn connection_view(c: &Connection) -> Value {
    json!({
        "id": c.id().to_string(),
        "peer_id": c.peer().to_string(),
        "direction": c.direction().as_str(),
        "transport": c.transport(),
        "security": c.security(),
        "muxer": c.muxer(),
        "remote_addr": c.remote_addr().to_string(),
        "local_addr": c.local_addr().to_string(),
        "age_secs": c.established().elapsed().as_secs(),
        "streams": c.stream_count(),
    })
}

pub(crate) async fn connections(State(a): State<Arc<Admin>>, RawQuery(q): RawQuery) -> Answer {
    let params = Params::parse(q.as_deref(), &["peer", "transport", "offset", "limit"])?;
    let page = params.page()?;
    let peer = params.get("peer").map(parse_peer).transpose()?;
    let transport = params.get("transport");
    let mut conns: Vec<Connection> = a
        .node
        .host
        .connections()
        .into_iter()
        .filter(|c| peer.is_none_or(|p| c.peer() == p))
        .filter(|c| transport.is_none_or(|t| c.transport() == t))
        .collect();
    // Oldest first (connection ids grow).
    conns.sort_by_key(|c| c.established());
    let (total, conns) = page.apply(conns);
    ok(json!({
        "total": total,
        "offset": page.offset,
        "limit": page.limit,
        "connections": conns.iter().map(connection_view).collect::<Vec<_>>(),
    }))
}

fn kad_of(a: &Admin) -> Result<&Arc<pylon_node::protocols::kad::Kad>, ApiError> {
    a.node
        .kad
        .as_ref()
        .ok_or_else(|| ApiError::not_found("the DHT is off on this node ([kad] is not configured)"))
}

pub(crate) async fn kad_buckets(State(a): State<Arc<Admin>>, RawQuery(q): RawQuery) -> Answer {
    use pylon_node::protocols::kad::Key;
    Params::parse(q.as_deref(), &[])?;
    let kad = kad_of(&a)?;
    let local = Key::from_peer(&a.node.peer_id());
    let now = now_unix_ms();
    let mut buckets: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
    let entries = kad.table_entries();
    for e in &entries {
        let Some(index) = local.distance(&e.key).bucket() else {
            continue;
        };
        buckets.entry(index).or_default().push(json!({
            "peer_id": e.peer.to_string(),
            "addrs": strings(&e.addrs),
            "last_seen_secs_ago": now.saturating_sub(e.last_seen_ms) / 1000,
            "connected": a.node.host.connection(&e.peer).is_some(),
        }));
    }
    let buckets: Vec<Value> = buckets
        .into_iter()
        .map(|(index, peers)| json!({ "index": index, "size": peers.len(), "peers": peers }))
        .collect();
    ok(json!({
        "protocol": kad.config().protocol,
        "mode": if kad.is_server() { "server" } else { "client" },
        "k": kad.config().table.k,
        "peers": entries.len(),
        "buckets": buckets,
    }))
}

/// The namespace of a record key (`pk` of `/pk/…`), if it has one.
fn namespace(key: &[u8]) -> Option<String> {
    let rest = key.strip_prefix(b"/")?;
    let end = rest.iter().take(64).position(|b| *b == b'/')?;
    let ns = &rest[..end];
    (!ns.is_empty() && ns.iter().all(|b| b.is_ascii_graphic()))
        .then(|| String::from_utf8_lossy(ns).into_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) async fn kad_records(State(a): State<Arc<Admin>>, RawQuery(q): RawQuery) -> Answer {
    let params = Params::parse(q.as_deref(), &["offset", "limit"])?;
    let page = params.page()?;
    let kad = kad_of(&a)?.clone();
    let storage = a.node.storage().cloned();
    // Keys only (never the values of the whole store), off the async threads.
    let listed = tokio::task::spawn_blocking(move || -> Result<Value, String> {
        let counts = kad.store().counts();
        let keys = match &storage {
            Some(s) => s
                .tree("kad_records")
                .map_err(|e| e.to_string())
                .and_then(|t| t.keys().map_err(|e| e.to_string()))
                .map_err(|e| format!("reading the record store: {e}"))?,
            None => Vec::new(),
        };
        let now = now_unix_ms();
        let (_, keys) = page.apply(keys);
        let mut records = Vec::with_capacity(keys.len());
        for key in keys {
            // Expired (not yet swept) and unreadable records are skipped.
            let Ok(Some(r)) = kad.store().get(&key, now) else {
                continue;
            };
            records.push(json!({
                "key": hex(&r.key),
                "namespace": namespace(&r.key),
                "value_bytes": r.value.len(),
                "received_unix_ms": r.received_ms,
                "expires_in_secs": r.expires_ms.saturating_sub(now).div_ceil(1000),
            }));
        }
        Ok(json!({
            "total": counts.records,
            "provider_records": counts.providers,
            "offset": page.offset,
            "limit": page.limit,
            "records": records,
        }))
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the listing failed"))?
    .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    ok(listed)
}

/// A number from a `/proc/self/status` line (`VmRSS:  1234 kB`).
fn proc_status(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The soft `RLIMIT_NOFILE`, from `/proc/self/limits`.
fn fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub(crate) async fn resources(State(a): State<Arc<Admin>>, RawQuery(q): RawQuery) -> Answer {
    Params::parse(q.as_deref(), &[])?;
    let host = &a.node.host;
    let limits = &a.info.limits;
    let conns = host.connections();
    let inbound = conns
        .iter()
        .filter(|c| c.direction() == pylon_node::host::Direction::Inbound)
        .count();
    let streams: usize = conns.iter().map(Connection::stream_count).sum();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // The directory's own descriptor is listed too while it is read.
    let fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| (d.count() as u64).saturating_sub(1));
    let pending: BTreeMap<&str, usize> = ["tcp", "quic-v1", "ws", "wss"]
        .into_iter()
        .map(|t| (t, host.pending_incoming(t)))
        .collect();
    ok(json!({
        "connections": {
            "in_use": conns.len(),
            "inbound": inbound,
            "outbound": conns.len() - inbound,
            "limit": limits.max_connections,
            "per_peer_limit": limits.max_connections_per_peer,
        },
        "streams": {
            "in_use": streams,
            "per_connection_limit": limits.max_streams_per_connection,
        },
        "pending_inbound": {
            "by_transport": pending,
            "limit_per_transport": limits.max_pending_incoming,
        },
        "peerstore": {
            "peers": a.node.peerstore.len(),
            "limit": limits.max_peers,
        },
        "fds": { "open": fds, "limit": fd_limit() },
        "memory": { "resident_bytes": proc_status(&status, "VmRSS").map(|kb| kb * 1024) },
        "threads": proc_status(&status, "Threads"),
    }))
}

pub(crate) async fn history(State(a): State<Arc<Admin>>, RawQuery(q): RawQuery) -> Answer {
    let params = Params::parse(q.as_deref(), &["since"])?;
    let since = params
        .get("since")
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!(
                    "query parameter since={v:?}: expected Unix milliseconds"
                ))
            })
        })
        .transpose()?;
    ok(json!({
        "interval_secs": crate::history::INTERVAL.as_secs(),
        "capacity": a.history.capacity(),
        "roles": a.roles.iter().map(|r| r.name()).collect::<Vec<_>>(),
        "samples": a.history.samples(since),
    }))
}

// ---- Actions ----------------------------------------------------------------------------

/// The request body as JSON of type `T`: 400 naming what is wrong when it is not.
fn body<T: serde::de::DeserializeOwned>(
    bytes: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = bytes.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the request needs a JSON body"));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

pub(crate) async fn disconnect(
    State(a): State<Arc<Admin>>,
    Path(peer): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer {
    Params::parse(q.as_deref(), &[])?;
    let peer = parse_peer(&peer)?;
    let host = &a.node.host;
    let open = host
        .connections()
        .iter()
        .filter(|c| c.peer() == peer)
        .count();
    if open == 0 {
        audit("disconnect", &peer.to_string(), "not connected");
        return Err(ApiError::not_found(format!("not connected to {peer}")));
    }
    host.disconnect(&peer);
    audit(
        "disconnect",
        &peer.to_string(),
        &format!("closing {open} connection(s)"),
    );
    ok(json!({ "peer_id": peer.to_string(), "connections_closed": open }))
}

fn ban_view(ban: &Ban, now: Instant) -> Value {
    let kind = match ban.target {
        BanTarget::Peer(_) => "peer",
        BanTarget::Prefix(_) => "cidr",
    };
    json!({
        "id": ban.id.0,
        "kind": kind,
        "target": ban.target.to_string(),
        "origin": ban.origin,
        "expires_in_secs": ban.until.map(|u| secs_until(u, now)),
    })
}

pub(crate) async fn bans(State(a): State<Arc<Admin>>, RawQuery(q): RawQuery) -> Answer {
    Params::parse(q.as_deref(), &[])?;
    let now = Instant::now();
    let bans: Vec<Value> = a
        .node
        .host
        .bans()
        .iter()
        .map(|b| ban_view(b, now))
        .collect();
    ok(json!({ "bans": bans }))
}

/// `POST /bans`: exactly one of `peer` and `cidr`; `duration` like the config's
/// (`10m`, `1.5h`), absent for a ban that lasts until lifted (or the node restarts).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BanRequest {
    peer: Option<String>,
    cidr: Option<String>,
    duration: Option<String>,
}

/// The origin of bans set through the API.
pub(crate) const ORIGIN: &str = "admin";

pub(crate) async fn ban(
    State(a): State<Arc<Admin>>,
    RawQuery(q): RawQuery,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer {
    Params::parse(q.as_deref(), &[])?;
    let req: BanRequest = body(bytes)?;
    let target = match (&req.peer, &req.cidr) {
        (Some(p), None) => {
            let peer = parse_peer(p)?;
            if peer == a.node.peer_id() {
                return Err(ApiError::bad_request(format!("{peer} is this node")));
            }
            BanTarget::Peer(peer)
        }
        (None, Some(c)) => BanTarget::Prefix(
            c.parse::<IpPrefix>()
                .map_err(|e| ApiError::bad_request(format!("cidr {c:?}: {e}")))?,
        ),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of \"peer\" (a PeerId) and \"cidr\" (an IP prefix)",
            ))
        }
    };
    let now = Instant::now();
    let until = match &req.duration {
        None => None,
        Some(d) => {
            let d: Duration = pylon_roles::config::parse_duration(d)
                .map_err(|m| ApiError::bad_request(format!("duration {d:?}: {m}")))?;
            Some(
                now.checked_add(d)
                    .ok_or_else(|| ApiError::bad_request(format!("duration {d:?} is too long")))?,
            )
        }
    };
    let shown = match &req.duration {
        Some(d) => format!("{target} for {d}"),
        None => format!("{target} until lifted"),
    };
    match a.node.host.ban(target, until, ORIGIN) {
        Ok(ban) => {
            audit("ban", &shown, &format!("ok, id {}", ban.id));
            Ok((StatusCode::CREATED, Json(ban_view(&ban, now))).into_response())
        }
        Err(e) => {
            audit("ban", &shown, &e.to_string());
            Err(ApiError::new(StatusCode::CONFLICT, e.to_string()))
        }
    }
}

pub(crate) async fn unban(
    State(a): State<Arc<Admin>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer {
    Params::parse(q.as_deref(), &[])?;
    let id = id
        .parse::<u64>()
        .map(BanId)
        .map_err(|_| ApiError::bad_request(format!("{id:?} is not a ban id (a number)")))?;
    match a.node.host.unban(id) {
        Some(ban) => {
            audit("unban", &format!("{id} ({})", ban.target), "ok");
            ok(json!({ "removed": ban_view(&ban, Instant::now()) }))
        }
        None => {
            audit("unban", &id.to_string(), "no such ban");
            Err(ApiError::not_found(format!("no ban {id} in force")))
        }
    }
}

pub(crate) async fn drain(State(a): State<Arc<Admin>>, RawQuery(q): RawQuery) -> Answer {
    Params::parse(q.as_deref(), &[])?;
    let grace = a.control.drain();
    audit(
        "drain",
        "node",
        &format!("draining, stopping within {grace:?}"),
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "draining": true, "grace_secs": grace.as_secs_f64() })),
    )
        .into_response())
}

pub(crate) async fn reload(State(a): State<Arc<Admin>>, RawQuery(q): RawQuery) -> Answer {
    Params::parse(q.as_deref(), &[])?;
    let control = a.control.clone();
    let result = tokio::task::spawn_blocking(move || control.reload())
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the reload failed"))?;
    match result {
        Ok(report) => {
            audit(
                "reload",
                "config",
                &format!(
                    "applied [{}], restart required for [{}]",
                    report.applied.join(", "),
                    report.restart_required.join(", ")
                ),
            );
            ok(report)
        }
        Err(e) => {
            audit("reload", "config", &format!("refused: {e}"));
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{e}; nothing was applied"),
            ))
        }
    }
}
