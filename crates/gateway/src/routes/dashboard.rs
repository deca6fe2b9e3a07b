//! `GET /dashboard` (SPEC §4): one self-contained page — no build step, nothing loaded
//! from elsewhere — fed by the WebSocket of the listener that served it.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page, compiled into the binary.
pub(crate) const DASHBOARD_HTML: &str = include_str!("../dashboard.html");

/// The page allows only itself: its inline script and style, and connections back to
/// the origin (the `/ws` feed and the admin actions).
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// `GET /dashboard`.
///
/// The page holds no data, so it is served without the admin token even where admin
/// routes share the public listener; its WebSocket feed needs `?token=` there.
pub(crate) async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        DASHBOARD_HTML,
    )
        .into_response()
}
