//! `/healthz` and `/readyz`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::AppState;

/// 200 while the process lives.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 while serving; 503 once shutdown began, or while the Redis progress backend is
/// not connected (queries still run, but other replicas cannot follow them).
pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining" })),
        )
    } else if state.redis().is_some_and(|r| !r.is_ready()) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "redis_unavailable" })),
        )
    } else {
        (StatusCode::OK, Json(json!({ "status": "ready" })))
    }
}
