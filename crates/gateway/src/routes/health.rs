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

/// 200 while serving, 503 once shutdown began. With a progress backend shared between
/// replicas, the body also says whether it is reachable, under its name (`"redis":
/// "connected" | "unavailable"`); an unreachable backend does not make the replica
/// unready — it still runs queries and serves its own clients — it only stops other
/// replicas from following its queries (see `/api/orchestration/health` and
/// `agentgate_progress_redis_connected`).
pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (code, status) = if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ready")
    };
    let mut body = json!({ "status": status });
    let backend = state.engine().backend();
    if backend.is_shared() {
        let health = backend.health();
        body[health.name] = Value::from(if health.connected {
            "connected"
        } else {
            "unavailable"
        });
    }
    (code, Json(body))
}
