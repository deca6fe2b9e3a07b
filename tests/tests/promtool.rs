//! The live Prometheus exposition passes `promtool check metrics` (SPEC §4).
//! `scripts/test.sh` installs promtool (Debian package `prometheus`); without it this
//! test fails, it never skips. The shipped alert rules are checked in `deploy.rs`.

use agentgate_e2e::{base_config, mock, run_tool, Gateway};
use http::StatusCode;
use serde_json::json;

fn promtool(args: &[&str], stdin: Option<&[u8]>) -> (bool, String) {
    run_tool("promtool", args, stdin)
}

#[tokio::test]
async fn the_live_exposition_passes_promtool() {
    let nlp = mock("nlp", |b| b.error_rate = 0.5).await;
    let data = mock("data", |_| {}).await;
    let config = format!(
        "{}\n[agents.nlp]\nurl = \"{}\"\n[agents.data]\nurl = \"{}\"\n\n[pipelines.default]\n\
         [[pipelines.default.stages]]\nname = \"nlp\"\nagent = \"nlp\"\noptional = true\n\
         [[pipelines.default.stages]]\nname = \"data\"\nagent = \"data\"\n",
        base_config("admin_listen = \"127.0.0.1:1\"", "2s"),
        nlp.url(),
        data.url()
    );
    let gw = Gateway::start(&config).await;
    // Exercise every family: queries, attempts (some failing, retried), a fallback-free
    // skip, a forced-open breaker and its rejections, WebSocket gauges.
    for _ in 0..10 {
        gw.post_json("/api/query", &json!({"query": "q"})).await;
    }
    gw.state.agent("data").unwrap().breaker().force_open(None);
    assert_eq!(
        gw.post_json("/api/query", &json!({"query": "q"}))
            .await
            .status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let metrics = gw.call_admin("GET", "/metrics", &[], "").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    for family in [
        "agentgate_agent_requests_total",
        "agentgate_agent_request_duration_seconds",
        "agentgate_agent_retries_total",
        "agentgate_circuit_breaker_state",
        "agentgate_circuit_breaker_transitions_total",
        "agentgate_circuit_breaker_rejected_total",
        "agentgate_queries_total",
        "agentgate_query_duration_seconds",
        "agentgate_health_score",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "no {family} in\n{text}"
        );
    }
    let (ok, report) = promtool(&["check", "metrics"], Some(text.as_bytes()));
    assert!(
        ok && report.trim().is_empty(),
        "promtool: {report}\n--- exposition ---\n{text}"
    );
}
