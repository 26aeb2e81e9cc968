//! Bearer-token authentication of every `/api` route: `Authorization: Bearer <token>`,
//! compared in constant time ([`crate::token::Token::matches`]). A missing or wrong token
//! is a 401 with `WWW-Authenticate: Bearer` and a JSON body that says which it was; the
//! token itself is never logged or echoed.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::Admin;

/// Why a request is not authenticated, if it is not.
pub(crate) fn check(admin: &Admin, header: Option<&[u8]>) -> Result<(), ApiError> {
    let Some(value) = header else {
        return Err(ApiError::unauthorized(
            "missing `Authorization: Bearer <token>`; the token is in the admin token file \
             (admin.token_file, by default admin.token in the data directory)",
        ));
    };
    let scheme_len = "Bearer ".len();
    let presented = match value.get(..scheme_len) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => value[scheme_len..].trim_ascii(),
        _ => {
            return Err(ApiError::unauthorized(
                "the Authorization header must be `Bearer <token>`",
            ))
        }
    };
    if !admin.token.matches(presented) {
        return Err(ApiError::unauthorized("wrong token"));
    }
    Ok(())
}

/// The middleware: `/api` paths need the token; others (the web UI's files) pass.
pub(crate) async fn require_token(
    State(admin): State<Arc<Admin>>,
    req: Request,
    next: Next,
) -> Response {
    if !req.uri().path().starts_with("/api") {
        return next.run(req).await;
    }
    let header = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    match check(&admin, header) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            tracing::debug!(
                target: "pylon::audit",
                path = %req.uri().path(),
                reason = %e.message,
                "admin API: request refused"
            );
            e.into_response()
        }
    }
}
