//! The web dashboard's files: plain HTML, CSS and JavaScript modules under
//! `dashboard/assets/`, embedded in the binary (no build step, nothing fetched from
//! elsewhere), served at `/` (the page) and `/ui/<file>`. They need no token: the page
//! holds no data, and asks the API for everything with the token the operator types in
//! (kept in the tab's sessionStorage, never in the HTML).
//!
//! Every answer of the router, the API's included, carries the headers of
//! [`security_headers`]: a Content-Security-Policy of `default-src 'self'` (no inline
//! script or style, no other origin, no framing), `nosniff`, no referrer. The files are
//! served with `Cache-Control: no-cache` and an `ETag` (a hash of their bytes), so a
//! browser revalidates them and gets a 304 until the binary changes; the API's answers are
//! `no-store`.
//!
//! Not here: the API (`api.rs`), the listener (the binary's `http.rs`).

use axum::extract::{Path, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// One embedded file.
pub(crate) struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
    /// FNV-1a of the body, computed at compile time.
    pub hash: u64,
}

/// FNV-1a (64 bits): a content hash for the ETag, not for security.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

macro_rules! asset {
    ($name:literal, $type:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../assets/", $name)),
            hash: fnv1a(include_bytes!(concat!("../assets/", $name))),
        }
    };
}

/// The page, served at `/`.
pub(crate) static INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");

/// The files under `/ui/`.
pub(crate) static ASSETS: &[Asset] = &[
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("charts.js", "text/javascript; charset=utf-8"),
    asset!("dom.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

/// The Content-Security-Policy of every answer: this origin only, no inline code, no
/// framing, no `<base>` or plugins.
pub(crate) const CSP: &str =
    "default-src 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'; form-action 'self'";

fn serve(asset: &'static Asset, headers: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", asset.hash);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let cache = [
        (header::CACHE_CONTROL, "no-cache".to_string()),
        (header::ETAG, etag),
    ];
    if matches {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        [(header::CONTENT_TYPE, asset.content_type.to_string())],
        cache,
        asset.body,
    )
        .into_response()
}

/// `GET /`: the page.
pub(crate) async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

/// `GET /ui/<file>`.
pub(crate) async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => serve(a, &headers),
        None => ApiError::not_found(format!("no such file: /ui/{name}")).into_response(),
    }
}

/// Adds the security headers to every answer, and `Cache-Control: no-store` to the API's.
pub(crate) async fn security_headers(req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api");
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if api && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
