//! The health score looks at recent queries only: after an incident it recovers.

use std::convert::Infallible;
use std::time::Duration;

use agentgate_gateway::app::admin_app;
use agentgate_gateway::{build_state, AppState, Config};
use agentgate_pipeline::{QueryInput, RECENT};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tower::ServiceExt;

/// An agent on loopback answering 404 to everything: each query fails (kind `status`)
/// while the breaker, which counts a 404 as an answer from a healthy agent, stays closed.
async fn not_found_agent() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let mut res = Response::new(Full::new(Bytes::from_static(b"{}")));
                    *res.status_mut() = StatusCode::NOT_FOUND;
                    Ok::<_, Infallible>(res)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A gateway state with one agent `a` (answering 404) in a one-stage pipeline.
async fn one_agent_gateway() -> AppState {
    let addr = not_found_agent().await;
    let toml = format!(
        "[agents.a]\nurl = \"http://{addr}\"\n[pipelines.default]\n\
         [[pipelines.default.stages]]\nname = \"s\"\nagent = \"a\"\n"
    );
    build_state(Config::from_toml(&toml, "health.toml").unwrap()).unwrap()
}

async fn health(state: &AppState) -> Value {
    let req = Request::get("/api/orchestration/health")
        .body(axum::body::Body::empty())
        .unwrap();
    let res = admin_app(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_failures_stops_lowering_the_score_once_it_leaves_the_window() {
    let state = one_agent_gateway().await;
    assert_eq!(health(&state).await["score"], 100);

    for _ in 0..3 {
        let submitted = state.engine().submit(QueryInput::new("q")).unwrap();
        submitted.finished().await;
    }
    let during = health(&state).await;
    assert_eq!(during["score"], 60, "{during}");
    assert_eq!(during["status"], "degraded");
    assert_eq!(during["reasons"][0], "100% of recent queries failed");

    // Almost 5 minutes later the burst still counts …
    tokio::time::advance(RECENT - Duration::from_secs(1)).await;
    assert_eq!(health(&state).await["score"], 60);
    // … then it has left the window: healthy again, although the lifetime count of
    // failed queries never goes down.
    tokio::time::advance(Duration::from_secs(1)).await;
    let after = health(&state).await;
    assert_eq!(
        (after["score"].clone(), after["status"].clone()),
        (Value::from(100), Value::from("healthy")),
        "{after}"
    );
    assert_eq!(after["reasons"], Value::Array(vec![]));
    assert_eq!(state.engine().stats().failed, 3);
}

async fn metrics_text(state: &AppState) -> String {
    let req = Request::get("/metrics")
        .body(axum::body::Body::empty())
        .unwrap();
    let res = admin_app(state.clone()).oneshot(req).await.unwrap();
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// The value of `agentgate_health_status{status="…"}` for each status, in order.
fn status_gauges(text: &str) -> Vec<(String, f64)> {
    ["healthy", "degraded", "unhealthy"]
        .iter()
        .map(|s| {
            let prefix = format!("agentgate_health_status{{status=\"{s}\"}} ");
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
            ((*s).to_owned(), value.trim().parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn the_status_gauge_is_one_hot_for_alerts() {
    let state = one_agent_gateway().await;
    let one_hot = |want: &str| -> Vec<(String, f64)> {
        ["healthy", "degraded", "unhealthy"]
            .iter()
            .map(|s| ((*s).to_owned(), if *s == want { 1.0 } else { 0.0 }))
            .collect()
    };
    assert_eq!(
        status_gauges(&metrics_text(&state).await),
        one_hot("healthy")
    );
    // The only agent of a required stage is open: unhealthy (AgentgateRequiredStageDown).
    let breaker = state.agent("a").unwrap().breaker();
    breaker.force_open(None);
    assert_eq!(
        status_gauges(&metrics_text(&state).await),
        one_hot("unhealthy")
    );
    breaker.reset();
    assert_eq!(
        status_gauges(&metrics_text(&state).await),
        one_hot("healthy")
    );
}
