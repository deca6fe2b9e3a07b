//! What the agent answers, for each fault, over real loopback connections.

mod support;

use std::time::Duration;

use agentgate_mock_agent::{Behavior, MockAgent, Stats};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use support::{client, get, send};
use tokio::time::{self, Instant};

fn behavior() -> Behavior {
    Behavior {
        name: "nlp".to_owned(),
        ..Behavior::default()
    }
}

#[tokio::test]
async fn normal_answer_echoes_request() {
    let agent = MockAgent::start(behavior()).await.unwrap();
    let client = client();
    let res = send(
        &client,
        Method::POST,
        &format!("{}/process?x=1", agent.url()),
        &[
            ("content-type", "application/json"),
            ("x-query-id", "q-1"),
            ("x-agentgate-stage", "nlp_processing"),
            ("x-agentgate-attempt", "2"),
            ("x-agentgate-deadline-ms", "5000"),
            ("idempotency-key", "q-1/nlp_processing"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("x-not-echoed", "secret"),
        ],
        r#"{"query_id": "q-1", "query": "hello", "results": {}}"#,
    )
    .await;

    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.header("content-type"), Some("application/json"));
    let v = res.json();
    assert_eq!(v["agent"], "nlp");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/process");
    assert_eq!(
        v["received"],
        json!({"query_id": "q-1", "query": "hello", "results": {}})
    );
    assert_eq!(
        v["headers"],
        json!({
            "content-type": "application/json",
            "x-query-id": "q-1",
            "x-agentgate-stage": "nlp_processing",
            "x-agentgate-attempt": "2",
            "x-agentgate-deadline-ms": "5000",
            "idempotency-key": "q-1/nlp_processing",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        })
    );
    assert_eq!(
        v["output"],
        json!({"agent": "nlp", "stage": "nlp_processing", "echo": "hello"})
    );

    // Any method and path; a body that is not JSON is just `null`.
    let res = send(
        &client,
        Method::DELETE,
        &format!("{}/a/b", agent.url()),
        &[],
        "not json",
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    let v = res.json();
    assert_eq!(v["method"], "DELETE");
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["received"], serde_json::Value::Null);
    assert_eq!(v["headers"], json!({}));
    assert_eq!(
        v["output"],
        json!({"agent": "nlp", "stage": null, "echo": null})
    );

    assert_eq!(
        agent.stats(),
        Stats {
            requests: 2,
            ok: 2,
            ..Stats::default()
        }
    );
}

#[tokio::test]
async fn error_rate_one_answers_error_status() {
    let agent = MockAgent::start(Behavior {
        error_rate: 1.0,
        ..behavior()
    })
    .await
    .unwrap();
    let res = get(&client(), &format!("{}/x", agent.url())).await;
    assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(res.json(), json!({"error": "injected"}));

    agent
        .set_behavior(Behavior {
            error_rate: 1.0,
            error_status: 502,
            ..behavior()
        })
        .unwrap();
    let res = get(&client(), &format!("{}/x", agent.url())).await;
    assert_eq!(res.status, StatusCode::BAD_GATEWAY);
    assert_eq!(agent.stats().errors, 2);
}

#[tokio::test]
async fn throttle_rate_one_answers_retry_after() {
    let agent = MockAgent::start(Behavior {
        throttle_rate: 1.0,
        retry_after: Duration::from_millis(2_500),
        ..behavior()
    })
    .await
    .unwrap();
    let res = get(&client(), &format!("{}/x", agent.url())).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    // Rounded up: a client must not come back early.
    assert_eq!(res.header("retry-after"), Some("3"));

    agent
        .set_behavior(Behavior {
            throttle_rate: 1.0,
            throttle_status: 429,
            ..behavior()
        })
        .unwrap();
    let res = get(&client(), &format!("{}/x", agent.url())).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.header("retry-after"), Some("1"));
    assert_eq!(agent.stats().throttled, 2);
}

#[tokio::test]
async fn bad_json_rate_one_answers_text() {
    let agent = MockAgent::start(Behavior {
        bad_json_rate: 1.0,
        ..behavior()
    })
    .await
    .unwrap();
    let res = get(&client(), &format!("{}/x", agent.url())).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(&res.body[..], b"this is not json");
    assert!(serde_json::from_slice::<serde_json::Value>(&res.body).is_err());
    assert_eq!(agent.stats().bad_json, 1);
}

#[tokio::test(start_paused = true)]
async fn hang_rate_one_never_answers() {
    let agent = MockAgent::start(Behavior {
        hang_rate: 1.0,
        ..behavior()
    })
    .await
    .unwrap();
    let client = client();
    let req = Request::get(format!("{}/x", agent.url()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    // The clock is paused: the runtime jumps to the timeout as soon as everything idles.
    let start = Instant::now();
    let res = time::timeout(Duration::from_secs(3600), client.request(req)).await;
    assert!(res.is_err(), "a hung request must not be answered");
    assert!(start.elapsed() >= Duration::from_secs(3600));
    assert_eq!(
        agent.stats(),
        Stats {
            requests: 1,
            hangs: 1,
            ..Stats::default()
        }
    );
}

#[tokio::test]
async fn reset_rate_one_breaks_the_body() {
    let agent = MockAgent::start(Behavior {
        reset_rate: 1.0,
        ..behavior()
    })
    .await
    .unwrap();
    let client = client();
    let req = Request::post(format!("{}/x", agent.url()))
        .body(Full::new(Bytes::from(r#"{"query": "some text to echo"}"#)))
        .unwrap();
    // The head arrives …
    let res = client.request(req).await.expect("the head is sent");
    assert_eq!(res.status(), StatusCode::OK);
    let declared: usize = res.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(declared > 0);
    // … the body does not.
    let err = res
        .into_body()
        .collect()
        .await
        .expect_err("the body must break");
    // hyper reports the cut as an unexpected end of file in the body.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    let mut eof = false;
    while let Some(e) = source {
        eof |= e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof);
        source = e.source();
    }
    assert!(eof || err.is_incomplete_message(), "{err:?}");
    assert_eq!(agent.stats().resets, 1);
}

#[tokio::test(start_paused = true)]
async fn outage_windows_follow_the_clock() {
    let agent = MockAgent::start(Behavior {
        outage_down: Duration::from_secs(3),
        outage_every: Duration::from_secs(10),
        ..behavior()
    })
    .await
    .unwrap();
    let client = client();
    let url = format!("{}/x", agent.url());

    // t = 0: down, for 3 more seconds.
    let res = get(&client, &url).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.header("retry-after"), Some("3"));

    // t = 1.5s: still down, 1.5s left → rounded up to 2.
    time::advance(Duration::from_millis(1_500)).await;
    let res = get(&client, &url).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.header("retry-after"), Some("2"));

    // t = 4s: up.
    time::advance(Duration::from_millis(2_500)).await;
    assert_eq!(get(&client, &url).await.status, StatusCode::OK);

    // t = 10.5s: the next period's down window.
    time::advance(Duration::from_millis(6_500)).await;
    assert_eq!(
        get(&client, &url).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // t = 13s: up again.
    time::advance(Duration::from_millis(2_500)).await;
    assert_eq!(get(&client, &url).await.status, StatusCode::OK);

    let stats = agent.stats();
    assert_eq!((stats.requests, stats.outage, stats.ok), (5, 3, 2));
}

#[tokio::test(start_paused = true)]
async fn latency_delays_the_answer() {
    let agent = MockAgent::start(Behavior {
        latency: Duration::from_millis(250),
        ..behavior()
    })
    .await
    .unwrap();
    let client = client();
    let url = format!("{}/x", agent.url());
    let start = Instant::now();
    assert_eq!(get(&client, &url).await.status, StatusCode::OK);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(260),
        "{took:?}"
    );

    // Jitter adds a uniform share of `latency_jitter` on top.
    agent
        .set_behavior(Behavior {
            latency: Duration::from_millis(100),
            latency_jitter: Duration::from_millis(400),
            seed: Some(3),
            ..behavior()
        })
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        assert_eq!(get(&client, &url).await.status, StatusCode::OK);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(100) && took <= Duration::from_millis(510),
            "{took:?}"
        );
        seen.push(took);
    }
    seen.dedup();
    assert!(seen.len() > 1, "jitter should vary the delay: {seen:?}");
}

#[tokio::test]
async fn same_seed_same_faults() {
    let script = Behavior {
        error_rate: 0.5,
        seed: Some(1234),
        ..behavior()
    };
    let client = client();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let agent = MockAgent::start(script.clone()).await.unwrap();
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(
                get(&client, &format!("{}/x", agent.url()))
                    .await
                    .status
                    .as_u16(),
            );
        }
        agent.shutdown().await;
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(
        runs[0].contains(&200) && runs[0].contains(&500),
        "{:?}",
        runs[0]
    );
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let agent = MockAgent::start(behavior()).await.unwrap();
    let body = vec![b'x'; 1024 * 1024 + 1];
    let res = send(
        &client(),
        Method::POST,
        &format!("{}/x", agent.url()),
        &[],
        body,
    )
    .await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(res.json()["error"]["kind"], "payload_too_large");
    let stats = agent.stats();
    assert_eq!((stats.requests, stats.ok), (1, 0));
}
