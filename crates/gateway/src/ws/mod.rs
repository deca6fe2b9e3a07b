//! `GET /ws` (SPEC §3): run queries, watch their events live, resume after a gap, and
//! (with admin rights) watch metrics and breaker transitions — JSON text frames over one
//! WebSocket.
//!
//! - `protocol`: the frames, parsed and built.
//! - `connection`: one connection — a read loop, one writer task draining one bounded
//!   outgoing queue, one task per query subscription (fed by the progress hub, never
//!   blocking it), an optional metrics task.
//! - [`WsRegistry`]: the connection count (and `max_ws_connections`), the `websocket`
//!   figures of `/api/orchestration/metrics`, and the shutdown signal.
//!
//! # Choices where the SPEC is silent
//!
//! - A slow client whose queue is full loses events, never the terminal one: the
//!   subscription skips to the newest event and sends `lagged` with the seq delivery
//!   resumes at; `subscribe` again with `after_seq` recovers what the hub still retains
//!   (subscribing to a query already subscribed replaces that subscription).
//! - `subscribe_metrics` sends its first `metrics` frame at once (that is its answer),
//!   then the breaker transitions the gateway kept (the last 20 per agent) marked
//!   `"replayed": true`, so a dashboard opened after a trip still shows it.
//! - `cancel` of a query that already ended is a no-op; `unsubscribe` of a query not
//!   subscribed answers `unsubscribed` anyway.
//! - Error frames also carry `request_id` / `query_id` when the refused frame had them;
//!   a `query` refused while shutting down gets code `shutting_down`.
//! - Rate limit: more than [`MAX_CLIENT_FRAMES_PER_SEC`] data frames in a one-second
//!   window are dropped, with one `rate_limited` error per window.
//! - Any frame from the client counts as an answer to the server's pings.
//! - Shutdown: a connection closes with 1001 as soon as every query it subscribed to has
//!   delivered its terminal event (at once when it has none); the server waits for that
//!   at most until `shutdown_grace` ends (at least 2 s after running queries ended), then
//!   closes the rest with 1001.

mod connection;
pub(crate) mod protocol;
mod stats;

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;

pub use stats::{WsRegistry, WsStats, OUTGOING_QUEUE_FRAMES};

use crate::auth::Client;
use crate::error::{ApiError, Problem};
use crate::routes::admin;
use crate::AppState;

/// How often the server pings each connection.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// A connection that has not answered this many pings in a row is closed.
pub const MAX_UNANSWERED_PINGS: u32 = 2;
/// Client data frames allowed per connection and second; more are dropped.
pub const MAX_CLIENT_FRAMES_PER_SEC: u32 = 100;

/// The query string of `/ws`.
#[derive(Debug, Deserialize)]
pub(crate) struct Params {
    /// Subscribe to this query on connect …
    query_id: Option<String>,
    /// … from this seq on.
    after_seq: Option<u64>,
    /// The admin token, for `subscribe_metrics` on a shared listener.
    token: Option<String>,
}

/// Which listener the upgrade came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listener {
    Public,
    Admin,
}

/// `GET /ws` on the public listener, as the client that [`auth::authenticate`] found.
///
/// [`auth::authenticate`]: crate::auth::authenticate
pub(crate) async fn handler(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    params: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    accept(state, Listener::Public, client, params, &headers, upgrade)
}

/// `GET /ws` on the admin listener: `subscribe_metrics` allowed, every query visible.
pub(crate) async fn admin_handler(
    State(state): State<AppState>,
    params: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    accept(
        state,
        Listener::Admin,
        Client::Admin,
        params,
        &headers,
        upgrade,
    )
}

/// Everything that can refuse a connection happens here, before the upgrade, as an
/// HTTP answer with the usual JSON error body.
fn accept(
    state: AppState,
    listener: Listener,
    client: Client,
    params: Result<Query<Params>, QueryRejection>,
    headers: &HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return not_an_upgrade(&rejection).into_response(),
    };
    if let Err(e) = check_origin(&state.runtime().config().server.ws_allowed_origins, headers) {
        return e.into_response();
    }
    let Query(params) = match params {
        Ok(params) => params,
        Err(e) => {
            return ApiError::bad_request(format!("invalid query string: {}", e.body_text()))
                .into_response()
        }
    };
    if state.is_draining() || !state.ws().is_serving() {
        return ApiError::draining().into_response();
    }
    let Some(guard) = state.ws().try_connect() else {
        let max = state.ws().max_connections();
        return ApiError::new(
            Problem::TooManyConnections,
            format!("the gateway already holds its maximum of {max} WebSocket connections"),
        )
        .retry_after(Duration::from_secs(1))
        .into_response();
    };
    let metrics = match client {
        Client::Admin => Ok(()),
        _ => metrics_rights(&state, listener, params.token.as_deref(), headers),
    };
    let setup = connection::Setup {
        metrics,
        client,
        subscribe: params.query_id.map(|q| {
            let after_seq = params.after_seq.unwrap_or(0);
            (q, after_seq.min(protocol::MAX_AFTER_SEQ))
        }),
        guard,
        state,
    };
    let limit = setup.state.runtime().config().server.ws_max_message_bytes;
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        // Client frames are small; tungstenite's default read buffer (128 KiB, allocated
        // up front) would cost 1.3 GB for 10,000 connections. It grows to a frame's
        // length when a larger one comes.
        .read_buffer_size(WS_READ_BUFFER)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| connection::serve(socket, setup))
}

/// Initial read buffer of a WebSocket connection. Client frames are a few dozen bytes;
/// 1 KiB instead of 4 KiB took `benches/ws_fanout.sh`'s 10,000 idle connections from 137 MB to
/// 107 MB (and tungstenite zero-fills this much before every socket read).
const WS_READ_BUFFER: usize = 1024;

fn not_an_upgrade(rejection: &WebSocketUpgradeRejection) -> ApiError {
    let problem = match rejection.status() {
        StatusCode::METHOD_NOT_ALLOWED => Problem::MethodNotAllowed,
        StatusCode::UPGRADE_REQUIRED => Problem::UpgradeRequired,
        _ => Problem::BadRequest,
    };
    ApiError::new(
        problem,
        format!(
            "/ws is a WebSocket endpoint: {}",
            rejection.body_text().trim_end_matches('.')
        ),
    )
}

/// With `[server] ws_allowed_origins` set, a browser's upgrade from another origin is
/// refused (403): another site's page cannot open a WebSocket with the user's
/// credentials. Clients that are not browsers send no `Origin` and are let through
/// (they can send any header anyway).
fn check_origin(allowed: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let ok = allowed.is_empty()
        || origin
            .to_str()
            .is_ok_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            Problem::Forbidden,
            "WebSocket connections from this origin are not allowed (server.ws_allowed_origins)",
        ))
    }
}

/// `subscribe_metrics` is for operators: always on the admin listener; on the public
/// one only when admin routes share it and the client shows the admin token
/// (`?token=`, since browsers cannot set headers on an upgrade, or `Authorization`).
fn metrics_rights(
    state: &AppState,
    listener: Listener,
    token: Option<&str>,
    headers: &HeaderMap,
) -> Result<(), &'static str> {
    if listener == Listener::Admin {
        return Ok(());
    }
    let runtime = state.runtime();
    if runtime.config().server.admin_listen.is_some() {
        return Err("metrics are served on the admin listener: connect to its /ws");
    }
    if runtime.admin_token().is_none() {
        return Err("metrics need the admin token, and none is configured");
    }
    let shown = |value: Option<HeaderValue>| {
        let mut auth = HeaderMap::new();
        if let Some(v) = value {
            auth.insert(header::AUTHORIZATION, v);
        }
        admin::authorize(state, &auth).is_ok()
    };
    let bearer = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok());
    if (token.is_some() && shown(bearer))
        || (headers.contains_key(header::AUTHORIZATION)
            && shown(headers.get(header::AUTHORIZATION).cloned()))
    {
        Ok(())
    } else {
        Err("metrics need the admin token: connect to /ws?token=<admin token>")
    }
}
