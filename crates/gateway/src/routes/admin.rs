//! Admin routes (SPEC §4): Prometheus, JSON metrics, health, circuit breakers.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use agentgate_circuit_breaker::{
    CircuitBreakerHandle, ManualChange, Snapshot, State as BreakerState,
};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{ApiError, Problem};
use crate::AppState;

/// `GET /metrics`: the Prometheus text exposition.
pub(crate) async fn prometheus(State(state): State<AppState>) -> Response {
    refresh(&state);
    let prom = state.prometheus();
    prom.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        prom.render(),
    )
        .into_response()
}

/// Applies time-driven breaker changes (open → half_open) so gauges are current, and
/// updates the health gauges.
fn refresh(state: &AppState) {
    for agent in state.engine().agents().values() {
        agent.breaker().snapshot();
    }
    let (score, status, _) = health(state);
    metrics::gauge!("agentgate_health_score").set(f64::from(score));
    // One-hot, like the breaker state: alerts select a status without knowing scores.
    for s in HEALTH_STATUSES {
        metrics::gauge!("agentgate_health_status", "status" => s).set(if s == status {
            1.0
        } else {
            0.0
        });
    }
}

/// The values of `health.status`, worst last.
const HEALTH_STATUSES: [&str; 3] = ["healthy", "degraded", "unhealthy"];

/// `GET /api/orchestration/metrics`.
pub(crate) async fn metrics_json(State(state): State<AppState>) -> Json<Value> {
    Json(metrics_value(&state))
}

/// The JSON of `/api/orchestration/metrics` (also sent to WebSocket metrics subscribers).
pub fn metrics_value(state: &AppState) -> Value {
    let q = state.engine().stats();
    let mut agents = Map::new();
    for (name, agent) in state.engine().agents() {
        let s = agent.stats();
        agents.insert(
            name.clone(),
            json!({
                "requests": s.requests,
                "successes": s.successes,
                "failures": s.failures,
                "timeouts": s.timeouts,
                "rejected": s.rejected,
                "retries": s.retries,
                "avg_latency_ms": round2(s.avg_latency_ms),
                "latency_histogram": {
                    "le_ms": latency_bounds_ms(),
                    "counts": s.latency_buckets,
                },
                "circuit_breaker": breaker_json(&agent.breaker().snapshot()),
            }),
        );
    }
    let (score, status, reasons) = health(state);
    let ws = state.ws().stats();
    json!({
        "uptime_s": state.started().elapsed().as_secs(),
        "queries": {
            "total": q.total,
            "completed": q.completed,
            "failed": q.failed,
            "cancelled": q.cancelled,
            "in_flight": q.in_flight,
            "success_rate": round2(q.success_rate),
            "avg_duration_ms": round2(q.avg_duration_ms),
            "p50_ms": round2(q.p50_ms),
            "p95_ms": round2(q.p95_ms),
            "p99_ms": round2(q.p99_ms),
        },
        "agents": agents,
        "websocket": {
            "connections": ws.connections,
            "subscriptions": ws.subscriptions,
            "events_sent": ws.events_sent,
            "events_dropped": ws.events_dropped,
        },
        "health": { "score": score, "status": status, "reasons": reasons },
        "live_queries": state.engine().live(LIVE_QUERIES),
    })
}

/// How many running queries `live_queries` lists (the oldest first).
pub(crate) const LIVE_QUERIES: usize = 20;

/// The bounds of `latency_histogram.counts`, in milliseconds (`counts` has one more
/// entry: every timed attempt, as Prometheus' `+Inf` bucket).
fn latency_bounds_ms() -> Vec<f64> {
    agentgate_agent_client::LATENCY_BUCKETS
        .iter()
        .map(|s| round2(s * 1000.0))
        .collect()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// One breaker as SPEC §4 shows it.
pub fn breaker_json(s: &Snapshot) -> Value {
    json!({
        "state": s.state.as_str(),
        "trip_reason": s.trip_reason.map(|r| r.as_str()),
        "consecutive_failures": s.consecutive_failures,
        "failure_rate": round2(s.failure_rate),
        "calls_in_window": s.calls_in_window,
        "failures_in_window": s.failures_in_window,
        "slow_call_rate": round2(s.slow_call_rate),
        "opened_at": s.opened_at.map(rfc3339),
        "retry_after_s": s.retry_after.map(|d| round2(d.as_secs_f64())),
        "half_open_in_flight": s.half_open_in_flight,
        "transitions": s.transitions,
        "rejected": s.rejected,
    })
}

/// The health score (0..=100), status and reasons.
///
/// Score = 100 − 60 × (breaker weight / agents) − 40 × (failure share of the queries
/// that finished in the last 5 minutes), where each open or forced-open breaker weighs 1
/// and each half-open one 0.5. Status: `unhealthy` when some pipeline has a required stage whose agent and
/// every agent fallback are open (and no static fallback), else `degraded` when the
/// score is below 90, any breaker is not closed or the progress backend cannot reach
/// the other replicas, else `healthy`.
pub fn health(state: &AppState) -> (u8, &'static str, Vec<String>) {
    let agents = state.engine().agents();
    let mut reasons = Vec::new();
    let mut weight = 0.0;
    let mut open = std::collections::BTreeSet::new();
    for (name, agent) in agents {
        match agent.breaker().snapshot().state {
            BreakerState::Open | BreakerState::ForcedOpen => {
                weight += 1.0;
                open.insert(name.clone());
                reasons.push(format!("circuit breaker of `{name}` is open"));
            }
            BreakerState::HalfOpen => {
                weight += 0.5;
                reasons.push(format!("circuit breaker of `{name}` is half-open"));
            }
            BreakerState::Closed | BreakerState::Disabled => {}
        }
    }
    // Recent queries only (the last 5 minutes), so that the score recovers once an
    // incident is over.
    let q = state.engine().stats();
    let finished = q.recent_completed + q.recent_failed;
    let failure_share = if finished == 0 {
        0.0
    } else {
        q.recent_failed as f64 / finished as f64
    };
    if failure_share > 0.0 {
        reasons.push(format!(
            "{:.0}% of recent queries failed",
            failure_share * 100.0
        ));
    }
    let agent_share = if agents.is_empty() {
        0.0
    } else {
        weight / agents.len() as f64
    };
    let score = (100.0 - 60.0 * agent_share - 40.0 * failure_share)
        .clamp(0.0, 100.0)
        .round() as u8;

    let mut unhealthy = false;
    for (pipeline, config) in &state.config().pipelines {
        for stage in config.stages.iter().filter(|s| !s.optional) {
            let has_static = stage
                .fallback
                .iter()
                .any(|f| matches!(f, agentgate_pipeline::Fallback::Static(_)));
            let all_open = open.contains(&stage.agent)
                && stage.fallback.iter().all(|f| match f {
                    agentgate_pipeline::Fallback::Agent(a) => open.contains(a),
                    agentgate_pipeline::Fallback::Static(_) => false,
                });
            if all_open && !has_static {
                unhealthy = true;
                reasons.push(format!(
                    "pipeline `{pipeline}` stage `{}`: every agent is open",
                    stage.name
                ));
            }
        }
    }
    // A backend that is down does not lower the score (queries run as before), but
    // other replicas cannot follow this one's queries: degraded.
    let backend = state.engine().backend().health();
    let backend_down = !backend.connected;
    if backend_down {
        reasons.extend(backend.reason);
    }
    let status = if unhealthy {
        "unhealthy"
    } else if score < 90 || weight > 0.0 || backend_down {
        "degraded"
    } else {
        "healthy"
    };
    (score, status, reasons)
}

/// `GET /api/orchestration/health`.
pub(crate) async fn health_json(State(state): State<AppState>) -> Json<Value> {
    let (score, status, reasons) = health(&state);
    Json(json!({ "score": score, "status": status, "reasons": reasons }))
}

/// `GET /api/orchestration/circuit-breakers`.
pub(crate) async fn breakers(State(state): State<AppState>) -> Json<Value> {
    let mut out = Map::new();
    for (name, agent) in state.engine().agents() {
        let cfg = agent.breaker().config();
        let mut v = breaker_json(&agent.breaker().snapshot());
        v["window"] = json!({
            "length_s": cfg.window.as_secs_f64(),
            "minimum_calls": cfg.minimum_calls,
            "failure_rate_threshold": cfg.failure_rate_threshold,
            "consecutive_failures": cfg.consecutive_failures,
        });
        v["recent_transitions"] = state
            .transitions()
            .recent_of(name)
            .iter()
            .map(|t| {
                json!({
                    "from": t.from.as_str(),
                    "to": t.to.as_str(),
                    "reason": t.reason.as_str(),
                    "ts": rfc3339(t.wall),
                })
            })
            .collect();
        out.insert(name.clone(), v);
    }
    Json(Value::Object(out))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForceOpen {
    #[serde(default, rename = "for", with = "humantime_serde")]
    duration: Option<Duration>,
}

/// Checks `Authorization: Bearer <token>` in constant time: 403 when no token is
/// configured, 401 when it is missing or wrong.
pub(crate) fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = state.admin_token() else {
        return Err(ApiError::new(
            Problem::Forbidden,
            format!(
                "admin actions are disabled: set the `{}` environment variable",
                state.config().admin.token_env
            ),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(
            Problem::Unauthorized,
            "a valid bearer token is required",
        ))
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

fn answer(change: &ManualChange) -> Value {
    json!({ "agent": &*change.agent, "from": change.from.as_str(), "to": change.to.as_str() })
}

fn find<'a>(state: &'a AppState, agent: &str) -> Result<&'a CircuitBreakerHandle, ApiError> {
    state
        .agent(agent)
        .map(|a| a.breaker())
        .ok_or_else(|| ApiError::unknown_agent(agent))
}

/// `POST /api/orchestration/circuit-breakers/reset`: resets every breaker.
pub(crate) async fn reset_all(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let changes: Vec<Value> = state
        .engine()
        .agents()
        .values()
        .map(|a| {
            let change = a.breaker().reset();
            tracing::info!(agent = %change.agent, from = %change.from, caller = %peer, "circuit breaker reset by admin");
            answer(&change)
        })
        .collect();
    Json(Value::Array(changes)).into_response()
}

/// `POST /api/orchestration/circuit-breakers/{agent}/{action}`: reset, force-open, disable.
pub(crate) async fn act(
    State(state): State<AppState>,
    Path((agent, action)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let breaker = match find(&state, &agent) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let change = match action.as_str() {
        "reset" => breaker.reset(),
        "disable" => breaker.disable(),
        "force-open" => {
            let parsed: Result<ForceOpen, _> = if body.iter().all(u8::is_ascii_whitespace) {
                Ok(ForceOpen { duration: None })
            } else {
                serde_json::from_slice(&body)
            };
            match parsed {
                Ok(f) => breaker.force_open(f.duration),
                Err(e) => {
                    return ApiError::bad_request(format!(
                        "invalid force-open body (want {{\"for\": \"5m\"}}): {e}"
                    ))
                    .into_response()
                }
            }
        }
        other => {
            return ApiError::new(
                Problem::NotFound,
                format!("no breaker action `{other}` (reset, force-open, disable)"),
            )
            .into_response()
        }
    };
    tracing::info!(agent = %change.agent, from = %change.from, to = %change.to, action, caller = %peer, "circuit breaker changed by admin");
    Json(answer(&change)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
