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

/// 200 while serving, 503 once shutdown began. With the Redis progress backend, the
/// body also says whether Redis is reachable (`"redis": "connected" | "unavailable"`);
/// an unreachable Redis does not make the replica unready — it still runs queries and
/// serves its own clients — it only stops other replicas from following its queries
/// (see `/api/orchestration/health` and `agentgate_progress_redis_connected`).
pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (code, status) = if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ready")
    };
    let mut body = json!({ "status": status });
    if let Some(redis) = state.redis() {
        body["redis"] = Value::from(if redis.is_ready() {
            "connected"
        } else {
            "unavailable"
        });
    }
    (code, Json(body))
}
