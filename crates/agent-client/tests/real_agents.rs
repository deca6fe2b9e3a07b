//! The agent client against real hyper servers on loopback, on a paused clock: the right
//! attempts, delays, breaker trips and metrics for each way an agent can fail.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agentgate_agent_client::AgentBody;
use agentgate_agent_client::{AgentClient, AgentConfig, StageAnswer, StreamFormat};
use agentgate_circuit_breaker::{CircuitBreakerConfig, CircuitOpen, Reason, State};
use agentgate_classify::{
    cause_ref, classify_error, is_caused_by, AttemptLedger, AttemptOutcome, BadResponse,
    FailureClass,
};
use agentgate_progress::StreamedAnswer;
use agentgate_retry::{Jitter, RetryConfig};
use http::Request;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use support::{closed_port, ScriptedAgent, Step};

fn prometheus() -> &'static PrometheusHandle {
    static PROM: OnceLock<PrometheusHandle> = OnceLock::new();
    PROM.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).unwrap();
        handle
    })
}

/// A sample of the exposition, `None` when the series does not exist.
fn sample(series: &str) -> Option<f64> {
    prometheus().render().lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series).then(|| v.parse().unwrap())
    })
}

fn config(url: http::Uri) -> AgentConfig {
    AgentConfig {
        timeout: Duration::from_secs(2),
        retry: RetryConfig {
            max_attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            jitter: Jitter::None,
            budget_min_per_sec: 100,
            ..RetryConfig::default()
        },
        circuit_breaker: CircuitBreakerConfig {
            consecutive_failures: 10,
            ..CircuitBreakerConfig::default()
        },
        ..AgentConfig::new(url)
    }
}

fn get(path: &str) -> (Request<AgentBody>, AttemptLedger) {
    let ledger = AttemptLedger::new();
    let mut req = Request::get(path).body(AgentBody::empty()).unwrap();
    req.extensions_mut().insert(ledger.clone());
    (req, ledger)
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[tokio::test(start_paused = true)]
async fn an_agent_failing_twice_is_retried_with_backoff() {
    prometheus();
    let agent = ScriptedAgent::start(vec![
        Step::Status(503),
        Step::Status(502),
        Step::Json(r#"{"ok":true}"#),
    ])
    .await;
    let client = AgentClient::new("flaky", config(agent.url())).unwrap();
    let (req, ledger) = get("/process");
    let res = client.call_json(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.body()["ok"], true);

    let attempts: Vec<_> = agent
        .seen()
        .iter()
        .map(|s| s.attempt.clone().unwrap())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert!(agent.seen().iter().all(|s| s.path == "/process"));
    let gaps = agent.gaps();
    assert!(gaps[0] >= ms(100) && gaps[0] < ms(102), "{gaps:?}");
    assert!(gaps[1] >= ms(200) && gaps[1] < ms(202), "{gaps:?}");

    let outcomes: Vec<_> = ledger
        .records()
        .iter()
        .map(|r| (r.attempt, r.status, r.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            (1, Some(503), AttemptOutcome::Failure),
            (2, Some(502), AttemptOutcome::Failure),
            (3, Some(200), AttemptOutcome::Success)
        ]
    );
    let stats = client.stats();
    assert_eq!(
        (
            stats.requests,
            stats.successes,
            stats.failures,
            stats.retries
        ),
        (3, 1, 2, 2)
    );
    assert_eq!(
        sample(r#"agentgate_agent_requests_total{agent="flaky",outcome="failure"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(r#"agentgate_agent_requests_total{agent="flaky",outcome="success"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(r#"agentgate_agent_retries_total{agent="flaky"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(r#"agentgate_agent_request_duration_seconds_count{agent="flaky"}"#),
        Some(3.0)
    );
    assert_eq!(client.breaker().snapshot().state, State::Closed);
}

#[tokio::test(start_paused = true)]
async fn retry_after_opens_the_breaker_and_the_retry_waits_for_it() {
    prometheus();
    let agent = ScriptedAgent::start(vec![Step::RetryAfter(503, "2"), Step::Json("{}")]).await;
    let client = AgentClient::new("throttled", config(agent.url())).unwrap();
    let mut events = client.breaker().subscribe();
    let (req, ledger) = get("/x");
    assert_eq!(client.call_json(req).await.unwrap().status(), 200);
    assert_eq!(agent.gaps(), [Duration::from_secs(2)]);
    assert_eq!(ledger.attempts(), 2);
    // Open on Retry-After, half-open when it expired, closed by the retry as a probe.
    let got: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|t| (t.to, t.reason))
        .collect();
    assert_eq!(
        got,
        [
            (State::Open, Reason::RetryAfter),
            (State::HalfOpen, Reason::OpenElapsed),
            (State::Closed, Reason::ProbeSuccess)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_hanging_agent_times_out_per_attempt() {
    prometheus();
    let agent = ScriptedAgent::start(vec![Step::Hang]).await;
    let client = AgentClient::new(
        "hangs",
        AgentConfig {
            timeout: Duration::from_secs(1),
            retry: RetryConfig {
                max_attempts: 2,
                ..config(agent.url()).retry
            },
            ..config(agent.url())
        },
    )
    .unwrap();
    let (req, ledger) = get("/x");
    let err = client.call_json(req).await.unwrap_err();
    assert_eq!(classify_error(&*err), FailureClass::Timeout);
    assert_eq!(agent.hits(), 2);
    let records = ledger.records();
    assert!(records
        .iter()
        .all(|r| r.outcome == AttemptOutcome::Timeout && r.duration == Duration::from_secs(1)));
    assert_eq!(client.stats().timeouts, 2);
    assert_eq!(
        sample(r#"agentgate_agent_requests_total{agent="hangs",outcome="timeout"}"#),
        Some(2.0)
    );
}

#[tokio::test(start_paused = true)]
async fn refused_connections_trip_the_breaker_and_then_fail_fast() {
    prometheus();
    let addr = closed_port();
    let mut cfg = config(format!("http://{addr}").parse().unwrap());
    cfg.circuit_breaker.consecutive_failures = 3;
    let client = AgentClient::new("down", cfg).unwrap();

    let (req, ledger) = get("/x");
    let err = client.call_json(req).await.unwrap_err();
    assert_eq!(classify_error(&*err), FailureClass::Connect);
    assert_eq!(ledger.attempts(), 3);
    let snap = client.breaker().snapshot();
    assert_eq!(
        (snap.state, snap.trip_reason),
        (State::Open, Some(Reason::Consecutive))
    );

    // Open: one attempt, rejected at once, not retried.
    let (req, ledger) = get("/x");
    let err = client.call_json(req).await.unwrap_err();
    assert!(is_caused_by::<CircuitOpen>(&*err));
    assert!(cause_ref::<CircuitOpen>(&*err)
        .unwrap()
        .retry_after()
        .is_some());
    let records = ledger.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, AttemptOutcome::Rejected);
    assert_eq!(
        sample(r#"agentgate_agent_requests_total{agent="down",outcome="rejected"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(r#"agentgate_circuit_breaker_rejected_total{agent="down"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(r#"agentgate_circuit_breaker_state{agent="down",state="open"}"#),
        Some(1.0)
    );

    // An upload is refused before a byte of it is read: the body is only read once the
    // breaker has admitted an attempt.
    let polled = Arc::new(AtomicBool::new(false));
    let upload = futures_util::stream::poll_fn({
        let polled = polled.clone();
        move |_| {
            polled.store(true, Ordering::SeqCst);
            std::task::Poll::Ready(None::<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>)
        }
    });
    let req = Request::put("/x")
        .body(AgentBody::stream(http_body_util::StreamBody::new(upload)))
        .unwrap();
    let err = client.send(req).await.unwrap_err();
    assert!(is_caused_by::<CircuitOpen>(&*err));
    assert!(!polled.load(Ordering::SeqCst), "the body was read");
    assert_eq!(client.stats().rejected, 2);
    assert_eq!(
        sample(r#"agentgate_circuit_breaker_rejected_total{agent="down"}"#),
        Some(2.0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_reset_mid_response_is_retried_for_idempotent_calls() {
    prometheus();
    let agent = ScriptedAgent::start(vec![Step::ResetMidBody, Step::Json(r#"{"n":2}"#)]).await;
    let client = AgentClient::new("resets", config(agent.url())).unwrap();
    let (req, ledger) = get("/x");
    let res = client.call_json(req).await.unwrap();
    assert_eq!(res.body()["n"], 2);
    assert_eq!(agent.hits(), 2);
    assert_eq!(ledger.records()[0].error, Some(FailureClass::Reset));
}

#[tokio::test(start_paused = true)]
async fn a_2xx_that_is_not_json_is_a_bad_response_the_breaker_counts() {
    prometheus();
    let agent = ScriptedAgent::start(vec![Step::Text("hello")]).await;
    let mut cfg = config(agent.url());
    cfg.circuit_breaker.consecutive_failures = 1;
    let client = AgentClient::new("garbled", cfg).unwrap();
    let (req, ledger) = get("/x");
    let err = client.call_json(req).await.unwrap_err();
    assert!(cause_ref::<BadResponse>(&*err).is_some(), "{err}");
    assert_eq!(agent.hits(), 1, "a bad response is not retried");
    assert_eq!(ledger.records()[0].error, Some(FailureClass::BadResponse));
    assert_eq!(client.breaker().snapshot().state, State::Open);

    // The streaming stack does not parse bodies: the same answer is a success there.
    let agent = ScriptedAgent::start(vec![Step::Text("hello")]).await;
    let client = AgentClient::new("garbled-proxy", config(agent.url())).unwrap();
    let (req, _) = get("/x");
    assert_eq!(client.send(req).await.unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn post_is_retried_only_with_an_idempotency_key() {
    prometheus();
    let post = |key: bool| {
        let mut b = Request::post("/process").header("content-type", "application/json");
        if key {
            b = b.header("idempotency-key", "q1:nlp");
        }
        b.body(AgentBody::from(bytes::Bytes::from_static(
            br#"{"query":"hi"}"#,
        )))
        .unwrap()
    };
    let agent =
        ScriptedAgent::start(vec![Step::Status(503), Step::Status(503), Step::Json("{}")]).await;
    let client = AgentClient::new("posts", config(agent.url())).unwrap();
    assert_eq!(client.call_json(post(false)).await.unwrap().status(), 503);
    assert_eq!(agent.hits(), 1);
    assert_eq!(client.call_json(post(true)).await.unwrap().status(), 200);
    let seen = agent.seen();
    assert_eq!(seen.len(), 3);
    // The replayed body and key reach the agent intact on the retry.
    assert_eq!(seen[2].body, r#"{"query":"hi"}"#);
    assert_eq!(seen[2].headers["idempotency-key"], "q1:nlp");
    assert_eq!(seen[2].attempt.as_deref(), Some("2"));
}

#[tokio::test]
async fn uris_join_the_agent_base_path() {
    let client = AgentClient::new(
        "based",
        AgentConfig::new("http://127.0.0.1:9/api/v1/".parse().unwrap()),
    )
    .unwrap();
    assert_eq!(
        client.uri_for("/process?x=1").unwrap(),
        "http://127.0.0.1:9/api/v1/process?x=1"
    );
    for bad in ["ftp://h", "h:80", "http://h/?q=1"] {
        let err = AgentClient::new("bad", AgentConfig::new(bad.parse().unwrap())).unwrap_err();
        assert!(err.to_string().starts_with("url = "), "{bad}: {err}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_transport_of_the_callers_gets_the_same_stack() {
    let agent = ScriptedAgent::start(vec![Step::Status(503), Step::Json(r#"{"ok":true}"#)]).await;
    let client: hyper_util::client::legacy::Client<_, agentgate_agent_client::TransportBody> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let client = AgentClient::with_transport("custom", config(agent.url()), client).unwrap();
    let (req, ledger) = get("/process");
    let res = client.send(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-agentgate-attempts"], "2");
    // The streaming (proxy) stack numbers retries only: the first attempt goes out as
    // the caller sent it.
    let attempts: Vec<_> = agent.seen().iter().map(|s| s.attempt.clone()).collect();
    assert_eq!(attempts, [None, Some("2".to_owned())]);
    assert_eq!(ledger.attempts(), 2);
    assert_eq!((client.stats().requests, client.stats().retries), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn a_streamed_answer_is_handed_on_at_its_head() {
    prometheus();
    // Each event comes after longer than the per-attempt timeout (2 s): the timeout
    // covers the time to the head only, `stream_idle_timeout` each silence.
    let agent = ScriptedAgent::start(vec![Step::Sse {
        every: ms(3000),
        events: &[r#"{"delta":"a"}"#, "b"],
        then_break: false,
    }])
    .await;
    let mut cfg = config(agent.url());
    cfg.stream_idle_timeout = ms(5000);
    let client = AgentClient::new("streams", cfg).unwrap();
    let (req, ledger) = get("/chat");
    let res = client.call_stage(req).await.unwrap();
    assert!(res.extensions().get::<StreamedAnswer>().is_some());
    let StageAnswer::Stream(mut stream) = res.into_body() else {
        panic!("a JSON answer")
    };
    assert_eq!(stream.format(), StreamFormat::Sse);
    assert_eq!(ledger.records()[0].outcome, AttemptOutcome::Success);
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next_chunk().await.unwrap() {
        chunks.push(chunk);
    }
    assert_eq!(chunks, [r#"{"delta":"a"}"#, "b"]);

    // JSON-only callers are told it is not JSON.
    let (req, _) = get("/chat");
    let err = client.call_json(req).await.unwrap_err();
    assert!(cause_ref::<BadResponse>(&*err).is_some(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_breaks_after_its_head_is_not_retried_nor_counted_by_the_breaker() {
    prometheus();
    let agent = ScriptedAgent::start(vec![Step::Sse {
        every: ms(10),
        events: &["one"],
        then_break: true,
    }])
    .await;
    let mut cfg = config(agent.url());
    cfg.circuit_breaker.consecutive_failures = 1;
    let client = AgentClient::new("breaks", cfg).unwrap();
    let (req, ledger) = get("/chat");
    let StageAnswer::Stream(mut stream) = client.call_stage(req).await.unwrap().into_body() else {
        panic!("a JSON answer")
    };
    assert_eq!(stream.next_chunk().await.unwrap().as_deref(), Some("one"));
    let err = stream.next_chunk().await.unwrap_err();
    assert!(err.is_broken(), "{err}");
    assert_eq!(agent.hits(), 1, "the attempt ended at the head: no retry");
    assert_eq!(ledger.records().len(), 1);
    assert_eq!(client.breaker().snapshot().state, State::Closed);
}
