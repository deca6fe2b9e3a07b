//! The gateway end to end (SPEC §3): real mock agents on loopback, the real gateway
//! started in-process. Route behaviour goes through the gateway's routers in memory
//! (`Gateway::call`); the proxy's forwarding and shutdown go over real sockets, which
//! are their point.

use std::time::Duration;

use agentgate_e2e::{base_config, mock, post_json, send, send_streamed, EchoServer, Gateway};
use agentgate_mock_agent::{Behavior, MockAgent};
use http::StatusCode;
use serde_json::{json, Value};

/// Server and defaults shared by these tests (admin routes on their own listener).
fn defaults() -> String {
    base_config(
        "admin_listen = \"127.0.0.1:1\"\nmax_body_bytes = 1048576",
        "2s",
    )
}

/// A config with the given agents and a three-stage `default` pipeline nlp → data → viz
/// (viz optional), nlp falling back to `nlp_backup` then a static value.
fn three_stage(nlp: &str, backup: &str, data: &str, viz: &str, deadline: &str) -> String {
    let defaults = defaults();
    format!(
        r#"{defaults}
[agents.nlp]
url = "{nlp}"
[agents.nlp_backup]
url = "{backup}"
[agents.data]
url = "{data}"
[agents.viz]
url = "{viz}"

[pipelines.default]
deadline = "{deadline}"
retry_allowance = 4
[[pipelines.default.stages]]
name = "nlp_processing"
agent = "nlp"
path = "/process"
weight = 30
fallback = [ {{ agent = "nlp_backup" }}, {{ static = {{ intent = "unknown" }} }} ]
[[pipelines.default.stages]]
name = "data_retrieval"
agent = "data"
path = "/query"
weight = 40
[[pipelines.default.stages]]
name = "visualization"
agent = "viz"
path = "/render"
weight = 30
optional = true
"#
    )
}

struct Agents {
    nlp: MockAgent,
    backup: MockAgent,
    data: MockAgent,
    viz: MockAgent,
}

async fn agents() -> Agents {
    Agents {
        nlp: mock("nlp", |_| {}).await,
        backup: mock("nlp_backup", |_| {}).await,
        data: mock("data", |_| {}).await,
        viz: mock("viz", |_| {}).await,
    }
}

async fn gateway(a: &Agents, deadline: &str) -> Gateway {
    Gateway::start(&three_stage(
        &a.nlp.url(),
        &a.backup.url(),
        &a.data.url(),
        &a.viz.url(),
        deadline,
    ))
    .await
}

/// A gateway with one agent, `name`, served by `echo`, and no pipeline: for the proxy.
async fn proxy_to(name: &str, echo: &EchoServer) -> Gateway {
    Gateway::start(&format!(
        "{}\n[agents.{name}]\nurl = \"{}\"\n",
        defaults(),
        echo.url()
    ))
    .await
}

fn stage<'a>(answer: &'a Value, name: &str) -> &'a Value {
    answer["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no stage {name} in {answer}"))
}

#[tokio::test]
async fn a_query_runs_every_stage_with_the_stage_contract() {
    let a = agents().await;
    let gw = gateway(&a, "10s").await;
    let res = gw
        .call(
            "POST",
            "/api/query",
            &[
                ("content-type", "application/json"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
            ],
            json!({"query": "sales by region", "context": {"user": "ana"}}).to_string(),
        )
        .await;
    assert_eq!(
        res.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&res.body)
    );
    let body = res.json();
    assert_eq!(body["status"], "completed");
    let query_id = body["query_id"].as_str().unwrap().to_owned();

    // What the data agent (stage 2) received: the SPEC body and headers.
    let data = &body["result"]["data_retrieval"];
    assert_eq!(data["path"], "/query");
    let received = &data["received"];
    assert_eq!(received["query_id"], query_id.as_str());
    assert_eq!(received["query"], "sales by region");
    assert_eq!(received["context"], json!({"user": "ana"}));
    assert_eq!(received["results"]["nlp_processing"]["agent"], "nlp");
    let headers = &data["headers"];
    assert_eq!(headers["x-query-id"], query_id.as_str());
    assert_eq!(headers["x-agentgate-stage"], "data_retrieval");
    assert_eq!(headers["x-agentgate-attempt"], "1");
    assert_eq!(
        headers["idempotency-key"],
        format!("{query_id}:data_retrieval").as_str()
    );
    assert_eq!(
        headers["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    let left: u64 = headers["x-agentgate-deadline-ms"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(left > 0 && left <= 10_000, "{left}");

    for name in ["nlp_processing", "data_retrieval", "visualization"] {
        let s = stage(&body, name);
        assert_eq!(s["status"], "completed", "{s}");
        assert_eq!(s["attempts"][0]["attempt"], 1);
        assert_eq!(s["attempts"][0]["status"], 200);
    }
    // The record stays readable.
    let record = gw
        .call("GET", &format!("/api/query/{query_id}"), &[], "")
        .await;
    assert_eq!(record.status, StatusCode::OK);
    assert_eq!(record.json()["status"], "completed");
    // Every answer carries a request id, different for each request.
    let (a, b) = (
        &res.headers["x-request-id"],
        &record.headers["x-request-id"],
    );
    assert!(!a.is_empty() && a != b, "{a:?} {b:?}");
}

#[tokio::test]
async fn fallbacks_go_to_the_backup_agent_then_the_static_value() {
    let a = Agents {
        nlp: mock("nlp", |b| b.error_rate = 1.0).await,
        ..agents().await
    };
    let gw = gateway(&a, "10s").await;
    let body = gw
        .post_json("/api/query", &json!({"query": "q"}))
        .await
        .json();
    assert_eq!(body["status"], "completed", "{body}");
    let nlp = stage(&body, "nlp_processing");
    assert_eq!(
        (&nlp["status"], &nlp["fallback"]),
        (&json!("fallback"), &json!("nlp_backup"))
    );
    assert_eq!(body["result"]["nlp_processing"]["agent"], "nlp_backup");

    a.backup
        .set_behavior(Behavior {
            name: "nlp_backup".into(),
            error_rate: 1.0,
            ..Behavior::default()
        })
        .unwrap();
    let body = gw
        .post_json("/api/query", &json!({"query": "q"}))
        .await
        .json();
    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(stage(&body, "nlp_processing")["fallback"], "static");
    assert_eq!(
        body["result"]["nlp_processing"],
        json!({"intent": "unknown"})
    );
}

#[tokio::test]
async fn an_optional_stage_that_fails_is_skipped() {
    let a = Agents {
        viz: mock("viz", |b| b.error_rate = 1.0).await,
        ..agents().await
    };
    let gw = gateway(&a, "10s").await;
    let body = gw
        .post_json("/api/query", &json!({"query": "q"}))
        .await
        .json();
    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(stage(&body, "visualization")["status"], "skipped");
    assert!(body["result"].get("visualization").is_none());
}

#[tokio::test]
async fn a_hanging_agent_runs_into_the_deadline() {
    let a = Agents {
        data: mock("data", |b| b.hang_rate = 1.0).await,
        ..agents().await
    };
    let gw = gateway(&a, "700ms").await;
    let res = gw.post_json("/api/query", &json!({"query": "q"})).await;
    assert_eq!(
        res.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        String::from_utf8_lossy(&res.body)
    );
    let body = res.json();
    assert_eq!(body["status"], "failed");
    assert_eq!(body["error"]["stage"], "data_retrieval");
    assert_eq!(body["error"]["kind"], "deadline");
}

#[tokio::test]
async fn a_2xx_that_is_not_json_fails_the_stage_as_bad_response() {
    let a = Agents {
        data: mock("data", |b| b.bad_json_rate = 1.0).await,
        ..agents().await
    };
    let gw = gateway(&a, "10s").await;
    let res = gw.post_json("/api/query", &json!({"query": "q"})).await;
    assert_eq!(res.status, StatusCode::BAD_GATEWAY);
    assert_eq!(res.json()["error"]["kind"], "bad_response");
}

#[tokio::test]
async fn an_open_breaker_fails_fast_with_503_and_retry_after() {
    let a = agents().await;
    let gw = gateway(&a, "10s").await;
    gw.state
        .agent("data")
        .unwrap()
        .breaker()
        .force_open(Some(Duration::from_secs(42)));
    let before = a.data.stats().requests;
    let res = gw.post_json("/api/query", &json!({"query": "q"})).await;
    assert_eq!(
        res.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&res.body)
    );
    let retry_after: u64 = res.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((41..=42).contains(&retry_after), "{retry_after}");
    assert_eq!(res.json()["error"]["kind"], "circuit_open");
    assert_eq!(a.data.stats().requests, before, "the agent was not called");

    // The proxy answers the same way.
    let res = gw.call("GET", "/agents/data/query", &[], "").await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers.contains_key("retry-after"));
    assert_eq!(res.json()["error"]["kind"], "circuit_open");
}

#[tokio::test]
async fn a_failing_attempt_is_retried_with_attempt_headers() {
    let nlp = EchoServer::failing_first(1).await;
    let a = agents().await;
    let gw = Gateway::start(&three_stage(
        &nlp.url(),
        &a.backup.url(),
        &a.data.url(),
        &a.viz.url(),
        "10s",
    ))
    .await;
    let body = gw
        .post_json("/api/query", &json!({"query": "q"}))
        .await
        .json();
    assert_eq!(body["status"], "completed", "{body}");
    let s = stage(&body, "nlp_processing");
    assert_eq!(s["status"], "completed");
    assert_eq!(s["attempts"].as_array().unwrap().len(), 2, "{s}");
    assert_eq!(
        (&s["attempts"][0]["status"], &s["attempts"][1]["status"]),
        (&json!(503), &json!(200))
    );
    assert_eq!(
        body["result"]["nlp_processing"]["headers"]["x-agentgate-attempt"],
        "2"
    );
    assert_eq!(nlp.hits(), 2);
}

#[tokio::test]
async fn async_queries_can_be_read_and_cancelled() {
    // The data agent holds the query in its second stage until it is cancelled.
    let data = EchoServer::held().await;
    let a = agents().await;
    let gw = Gateway::start(&three_stage(
        &a.nlp.url(),
        &a.backup.url(),
        &data.url(),
        &a.viz.url(),
        "60s",
    ))
    .await;
    let id = gw.submit_async(&json!({"query": "q"})).await;

    // Running, with the stage it has finished, while the data agent holds it.
    data.until_hits(1).await;
    let rec = gw
        .call("GET", &format!("/api/query/{id}"), &[], "")
        .await
        .json();
    assert_eq!(rec["status"], "running", "{rec}");
    let stages: Vec<_> = rec["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["name"])
        .collect();
    assert_eq!(stages, ["nlp_processing"], "{rec}");
    let res = gw
        .call("DELETE", &format!("/api/query/{id}"), &[], "")
        .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.json()["status"], "cancelled");
    let rec = gw
        .call("GET", &format!("/api/query/{id}"), &[], "")
        .await
        .json();
    assert_eq!(rec["status"], "cancelled");
    let again = gw
        .call("DELETE", &format!("/api/query/{id}"), &[], "")
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    let unknown = gw.call("GET", "/api/query/nope", &[], "").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["error"]["kind"], "unknown_query");
}

#[tokio::test]
async fn the_proxy_forwards_streams_and_strips_hop_by_hop_headers() {
    let echo = EchoServer::start(|_| StatusCode::OK).await;
    let config = defaults().replace("max_body_bytes = 1048576", "max_body_bytes = 8388608")
        + &format!("[agents.echo]\nurl = \"{}\"\n", echo.url());
    let gw = Gateway::start(&config).await;

    let res = send(
        "GET",
        &gw.url("/agents/echo/v1/items?limit=5"),
        &[
            ("connection", "x-hop"),
            ("x-hop", "secret"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "yes"),
        ],
        "",
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    let seen = res.json();
    assert_eq!(seen["path"], "/v1/items");
    assert_eq!(seen["query"], "limit=5");
    assert_eq!(seen["headers"]["x-kept"], "yes");
    assert!(
        seen["headers"].get("x-hop").is_none() && seen["headers"].get("keep-alive").is_none(),
        "{seen}"
    );
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
    assert_eq!(
        seen["headers"]["x-forwarded-host"],
        gw.addr.to_string().as_str()
    );
    assert_eq!(res.headers["x-agentgate-attempts"], "1");
    assert_eq!(res.headers["x-agent-answer"], "1");
    assert!(
        !res.headers.contains_key("x-agent-private"),
        "hop-by-hop headers of the answer are stripped"
    );

    // 5 MB streams through (and is not kept for replay).
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let sum: u64 = big.iter().map(|b| u64::from(*b)).sum();
    let res = send(
        "PUT",
        &gw.url("/agents/echo/upload"),
        &[("content-type", "application/octet-stream")],
        big,
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.json()["body_len"], 5_000_000);
    assert_eq!(res.json()["body_sum"], sum);

    let res = send("GET", &gw.url("/agents/echo/"), &[], "").await;
    assert_eq!(
        (res.status, res.json()["path"].clone()),
        (StatusCode::OK, json!("/"))
    );
}

#[tokio::test]
async fn the_proxy_refuses_unknown_agents_and_dot_segments() {
    let echo = EchoServer::start(|_| StatusCode::OK).await;
    let gw = proxy_to("echo", &echo).await;
    let res = gw.call("GET", "/agents/nope/x", &[], "").await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert_eq!(res.json()["error"]["kind"], "unknown_agent");
    let res = gw.call("GET", "/agents/echo/a/%2e%2e/b", &[], "").await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(echo.hits(), 0);
}

#[tokio::test]
async fn the_proxy_refuses_an_upload_before_reading_it_and_caps_a_streamed_one() {
    let echo = EchoServer::start(|_| StatusCode::OK).await;
    let gw = proxy_to("echo", &echo).await;
    let breaker = gw.state.agent("echo").unwrap().breaker().clone();

    // An open breaker answers while the client is still uploading: nothing is read.
    breaker.force_open(Some(Duration::from_secs(30)));
    let (upload, answer) = send_streamed("PUT", &gw.url("/agents/echo/upload")).await;
    upload
        .send(bytes::Bytes::from_static(b"first chunk"))
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("answered before the upload ended")
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(echo.hits(), 0);
    drop(upload);

    // Closed: a chunked upload past `max_body_bytes` (no content-length to refuse it
    // up front) is cut off with 413, and the caller's fault is not the agent's.
    breaker.reset();
    let (upload, answer) = send_streamed("PUT", &gw.url("/agents/echo/upload")).await;
    let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    let feed = tokio::spawn(async move {
        for _ in 0..32 {
            if upload.send(chunk.clone()).await.is_err() {
                break;
            }
        }
    });
    let status = answer.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    feed.abort();
    let snapshot = breaker.snapshot();
    assert_eq!(
        (snapshot.consecutive_failures, snapshot.failures_in_window),
        (0, 0)
    );
    assert_eq!(gw.state.agent("echo").unwrap().stats().failures, 0);
}

#[tokio::test]
async fn the_proxy_retries_get_but_not_post() {
    // Requests 0, 2 and 3 fail: GET (0 fails, 1 succeeds), POST (2 fails, not retried),
    // POST with a key (3 fails, 4 succeeds).
    let flaky = EchoServer::start(|n| {
        if matches!(n, 0 | 2 | 3) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    })
    .await;
    let gw = proxy_to("flaky", &flaky).await;
    let res = send("GET", &gw.url("/agents/flaky/x"), &[], "").await;
    assert_eq!(
        (
            res.status,
            res.headers["x-agentgate-attempts"].to_str().unwrap()
        ),
        (StatusCode::OK, "2")
    );
    let res = send(
        "POST",
        &gw.url("/agents/flaky/x"),
        &[("content-type", "application/json")],
        "{}",
    )
    .await;
    assert_eq!(
        (
            res.status,
            res.headers["x-agentgate-attempts"].to_str().unwrap()
        ),
        (StatusCode::SERVICE_UNAVAILABLE, "1")
    );
    let res = send(
        "POST",
        &gw.url("/agents/flaky/x"),
        &[
            ("content-type", "application/json"),
            ("idempotency-key", "k1"),
        ],
        "{}",
    )
    .await;
    assert_eq!(
        (
            res.status,
            res.headers["x-agentgate-attempts"].to_str().unwrap()
        ),
        (StatusCode::OK, "2")
    );
    assert_eq!(flaky.hits(), 5);
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_the_gateway_keeps_serving() {
    let a = agents().await;
    let gw = gateway(&a, "10s").await;
    let url = "/api/query";
    let json = [("content-type", "application/json")];
    let deep = format!(
        "{{\"query\":\"q\",\"context\":{{\"x\":{}0{}}}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    /// (what, headers, body, expected status, expected error kind)
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, &'a str)>,
        Vec<u8>,
        StatusCode,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "malformed",
            json.to_vec(),
            b"{\"query\":".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "wrong type",
            json.to_vec(),
            br#"{"query": 42}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "context not an object",
            json.to_vec(),
            br#"{"query":"q","context":"x"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "unknown pipeline",
            json.to_vec(),
            br#"{"query":"q","pipeline":"nope"}"#.to_vec(),
            StatusCode::NOT_FOUND,
            "unknown_pipeline",
        ),
        (
            "no content type",
            vec![],
            br#"{"query":"q"}"#.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "text",
            vec![("content-type", "text/plain")],
            br#"{"query":"q"}"#.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "oversized",
            json.to_vec(),
            vec![b' '; 2 * 1024 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "deeply nested",
            json.to_vec(),
            deep.into_bytes(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "invalid utf-8",
            json.to_vec(),
            b"{\"query\":\"\xff\xfe\"}".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (what, headers, body, status, kind) in cases {
        let res = gw.call("POST", url, &headers, body).await;
        assert_eq!(
            res.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&res.body)
        );
        let body = res.json();
        assert_eq!(body["error"]["kind"], kind, "{what}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    assert_eq!(
        gw.call("GET", "/healthz", &[], "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        gw.post_json(url, &json!({"query": "still fine"}))
            .await
            .status,
        StatusCode::OK
    );
    let res = gw.call("GET", "/nope", &[], "").await;
    assert_eq!(
        (res.status, res.json()["error"]["kind"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
}

#[tokio::test]
async fn shutdown_lets_the_running_query_finish() {
    // The data agent holds the query in its second stage until the test lets it go.
    let data = EchoServer::held().await;
    let a = agents().await;
    let mut gw = Gateway::start(&three_stage(
        &a.nlp.url(),
        &a.backup.url(),
        &data.url(),
        &a.viz.url(),
        "10s",
    ))
    .await;
    let url = gw.url("/api/query");
    let running = tokio::spawn(async move { post_json(&url, &json!({"query": "q"})).await });
    data.until_hits(1).await;
    let stopped = gw.shutdown();
    tokio::time::timeout(Duration::from_secs(10), gw.state.draining())
        .await
        .expect("shutdown begins");
    assert_eq!(
        send("GET", &gw.url("/readyz"), &[], "").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let refused = post_json(&gw.url("/api/query"), &json!({"query": "late"})).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        !running.is_finished(),
        "the query is still in its second stage"
    );
    assert!(!stopped.is_finished(), "serve waits for the running query");

    data.release(1);
    let res = running.await.unwrap();
    assert_eq!(
        res.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&res.body)
    );
    assert_eq!(res.json()["status"], "completed");
    stopped.await.unwrap().unwrap();
}

#[tokio::test]
async fn metrics_and_admin_routes() {
    let a = agents().await;
    let gw = gateway(&a, "10s").await;
    assert_eq!(
        gw.post_json("/api/query", &json!({"query": "q"}))
            .await
            .status,
        StatusCode::OK
    );
    let text = String::from_utf8(
        gw.call_admin("GET", "/metrics", &[], "")
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    for name in [
        "agentgate_agent_requests_total{agent=\"data\",outcome=\"success\"}",
        "agentgate_circuit_breaker_state{agent=\"nlp\",state=\"closed\"} 1",
        "agentgate_queries_total{pipeline=\"default\",outcome=\"completed\"}",
        "agentgate_query_duration_seconds_bucket{pipeline=\"default\",le=\"0.001\"}",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    let m = gw
        .call_admin("GET", "/api/orchestration/metrics", &[], "")
        .await
        .json();
    assert!(m["queries"]["completed"].as_u64().unwrap() >= 1);
    assert_eq!(m["agents"]["data"]["circuit_breaker"]["state"], "closed");
    assert_eq!(m["health"]["status"], "healthy");
    // Without a token configured, mutating routes are forbidden; GET is not allowed.
    let res = gw
        .call_admin(
            "POST",
            "/api/orchestration/circuit-breakers/data/reset",
            &[],
            "",
        )
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let res = gw
        .call_admin(
            "GET",
            "/api/orchestration/circuit-breakers/data/reset",
            &[],
            "",
        )
        .await;
    assert_eq!(res.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn the_admin_api_needs_the_token_and_steers_breakers() {
    // A variable only this test uses, so tests running in parallel do not interfere.
    std::env::set_var("AGENTGATE_TEST_ADMIN_TOKEN_STEER", "s3cret");
    let a = agents().await;
    let config = three_stage(
        &a.nlp.url(),
        &a.backup.url(),
        &a.data.url(),
        &a.viz.url(),
        "10s",
    ) + "\n[admin]\ntoken_env = \"AGENTGATE_TEST_ADMIN_TOKEN_STEER\"\n";
    let gw = Gateway::start(&config).await;
    let url = "/api/orchestration/circuit-breakers/data/force-open";
    let body = r#"{"for":"1s"}"#;

    let res = gw.call_admin("POST", url, &[], body).await;
    assert_eq!(
        (res.status, res.json()["error"]["kind"].clone()),
        (StatusCode::UNAUTHORIZED, json!("unauthorized"))
    );
    let res = gw
        .call_admin("POST", url, &[("authorization", "Bearer wrong")], body)
        .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    let auth = [("authorization", "Bearer s3cret")];
    let res = gw.call_admin("POST", url, &auth, body).await;
    assert_eq!(
        res.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&res.body)
    );
    assert_eq!(
        res.json(),
        json!({"agent": "data", "from": "closed", "to": "forced_open"})
    );
    let bad = gw.call_admin("POST", url, &auth, r#"{"for":"soon"}"#).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let breakers = gw
        .call_admin("GET", "/api/orchestration/circuit-breakers", &[], "")
        .await
        .json();
    assert_eq!(breakers["data"]["state"], "forced_open");
    assert_eq!(breakers["data"]["trip_reason"], "manual");
    // A forced-open period expires by itself (into half-open, so a probe decides); one
    // of 0 s has expired by the next read, so no test time is spent waiting.
    let res = gw.call_admin("POST", url, &auth, r#"{"for":"0s"}"#).await;
    assert_eq!(res.json()["to"], "forced_open");
    let breakers = gw
        .call_admin("GET", "/api/orchestration/circuit-breakers", &[], "")
        .await
        .json();
    assert_eq!(breakers["data"]["state"], "half_open");

    let res = gw
        .call_admin(
            "POST",
            "/api/orchestration/circuit-breakers/data/disable",
            &auth,
            "",
        )
        .await;
    assert_eq!(
        res.json(),
        json!({"agent": "data", "from": "half_open", "to": "disabled"})
    );
    let res = gw
        .call_admin(
            "POST",
            "/api/orchestration/circuit-breakers/reset",
            &auth,
            "",
        )
        .await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res
        .json()
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == &json!({"agent": "data", "from": "disabled", "to": "closed"})));
    let res = gw
        .call_admin(
            "POST",
            "/api/orchestration/circuit-breakers/nope/reset",
            &auth,
            "",
        )
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    let metrics = String::from_utf8(
        gw.call_admin("GET", "/metrics", &[], "")
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    // Metrics are per process and other tests force `data` open too: at least this one.
    let series = r#"agentgate_circuit_breaker_transitions_total{agent="data",from="closed",to="forced_open",reason="manual"} "#;
    let count: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .unwrap_or_else(|| panic!("no {series} in {metrics}"))
        .parse()
        .unwrap();
    assert!(count >= 1.0);
}
