//! Pylon's admin API: what an operator reads and does on a running node, as JSON under
//! `/api/v1`, described by an OpenAPI 3.1 document ([`OPENAPI`], served at
//! `/api/v1/openapi.json`). Every `/api` route needs the bearer token
//! ([`token`], `auth.rs`); errors are `{"error": "..."}` with a 4xx status; every action
//! writes one audit line (tracing target `pylon::audit`, level info: action, target,
//! result — never the token).
//!
//! Reads: identity and addresses, the configuration in force (secrets redacted), roles
//! and their status, peers and connections (filters, paging), the DHT's buckets and
//! records, resource use. Actions: disconnect a peer, ban a peer or a CIDR (for a
//! duration), lift a ban, drain, reload the configuration.
//!
//! The web dashboard (`ui.rs`, files in `dashboard/assets/`) is served by the same router
//! at `/` and `/ui/…` without the token; it reads everything through the API with the
//! token the operator types in. Its charts come from [`history`]: the node read every
//! 5 s, the last hour kept in memory (`GET /history`).
//!
//! Not here: the HTTP listener and its bounds (the binary's `http.rs` serves this
//! router), what reload and drain do to the process (the binary implements [`Control`]),
//! and the bans themselves (`pylon_node::host::Host::ban`).

mod api;
mod auth;
mod error;
pub mod history;
mod paging;
pub mod token;
mod ui;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use pylon_node::node::Node;
use serde::Serialize;

pub use error::ApiError;
pub use history::{sample, History};
pub use paging::{DEFAULT_LIMIT, MAX_LIMIT};
pub use token::Token;

/// The API's description (OpenAPI 3.1), as served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The tracing target of audit lines.
pub const AUDIT: &str = "pylon::audit";

/// Largest request body accepted (the actions take a few fields at most).
pub const MAX_BODY: usize = 16 * 1024;

/// What the API serves from: the running node and its roles, the token, and the
/// process-level controls the binary provides.
pub struct Admin {
    pub node: Node,
    pub roles: Vec<pylon_roles::Running>,
    pub token: Token,
    pub control: Arc<dyn Control>,
    pub info: Info,
    /// The recent history the dashboard charts, fed by [`sample`].
    pub history: History,
}

/// Facts about the process the node itself does not hold.
#[derive(Debug, Clone)]
pub struct Info {
    /// The binary's version.
    pub version: String,
    /// What identify announces.
    pub agent_version: String,
    pub protocol_version: String,
    /// When the node started.
    pub started: Instant,
    /// The same, as Unix milliseconds.
    pub started_unix_ms: u64,
    pub limits: Limits,
}

/// The limits resource use is shown against (after the binary fitted them to the
/// file-descriptor limit).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub max_streams_per_connection: usize,
    /// Per transport.
    pub max_pending_incoming: usize,
    pub max_peers: usize,
}

/// What only the binary can do: show and re-read its configuration, and stop.
pub trait Control: Send + Sync + 'static {
    /// The configuration in force (defaults, file, environment and flags merged), secrets
    /// redacted.
    fn config(&self) -> ConfigView;
    /// Re-reads the config file and the environment and applies what can change while
    /// running; `Err` (nothing applied) when the new configuration does not check.
    fn reload(&self) -> Result<Reload, String>;
    /// Starts draining: no new inbound connections, open ones get `grace` to finish, then
    /// the process stops as on SIGTERM (exit 0). A second call changes nothing.
    fn drain(&self) -> Duration;
}

/// `GET /config`.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigView {
    /// Keys as in the config file, each section an object.
    pub config: serde_json::Value,
    /// Keys changed in the file (or environment) that wait for a restart, as of the last
    /// reload.
    pub restart_required: Vec<String>,
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Reload {
    /// Keys whose new values are in force.
    pub applied: Vec<String>,
    /// Keys whose new values wait for a restart.
    pub restart_required: Vec<String>,
    /// Anything else to know (e.g. `RUST_LOG` overriding `log`).
    pub notes: Vec<String>,
}

/// The API's router: `/api/v1/...` and the web dashboard (`/`, `/ui/…`), JSON 404 and 405
/// for anything else, the token checked before any `/api` handler runs, the security
/// headers on every answer.
pub fn router(admin: Arc<Admin>) -> axum::Router {
    let api = axum::Router::new()
        .route("/identity", get(api::identity))
        .route("/config", get(api::config))
        .route("/roles", get(api::roles))
        .route("/peers", get(api::peers))
        .route("/peers/{peer}/disconnect", post(api::disconnect))
        .route("/connections", get(api::connections))
        .route("/kad/buckets", get(api::kad_buckets))
        .route("/kad/records", get(api::kad_records))
        .route("/resources", get(api::resources))
        .route("/history", get(api::history))
        .route("/bans", get(api::bans).post(api::ban))
        .route("/bans/{id}", delete(api::unban))
        .route("/drain", post(api::drain))
        .route("/reload", post(api::reload))
        .route("/openapi.json", get(api::openapi));
    axum::Router::new()
        .nest("/api/v1", api)
        .route("/", get(ui::index))
        .route("/ui/{file}", get(ui::asset))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            auth::require_token,
        ))
        .layer(axum::middleware::from_fn(ui::security_headers))
        .with_state(admin)
}

#[cfg(test)]
mod tests;
