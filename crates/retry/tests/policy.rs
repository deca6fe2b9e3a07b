//! The retry layer end to end on a paused clock: what is retried, when, and how often.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentgate_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
use agentgate_classify::{
    AttemptLedger, AttemptNumber, AttemptObserver, AttemptOutcome, AttemptRecord, BoxError,
};
use agentgate_retry::{
    Deadline, Jitter, ReplayBody, RetryAllowance, RetryConfig, RetryLayer, RetryOn, RetryPolicy,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};

/// What the tests send: an empty body (GET) or a small JSON one (POST, PUT).
type TestBody = Full<Bytes>;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// What the agent saw: (attempt header, instant).
type Seen = Arc<Mutex<Vec<(u32, Instant)>>>;

/// An agent answering from a script of results, one per call (the last repeats).
fn agent(
    script: Vec<Result<u16, std::io::ErrorKind>>,
    retry_after: Option<&str>,
) -> (
    impl Service<Request<ReplayBody<TestBody>>, Response = Response<()>, Error = BoxError> + Clone,
    Seen,
) {
    let seen: Seen = Arc::default();
    let retry_after = retry_after.map(str::to_owned);
    let svc = tower::service_fn({
        let seen = seen.clone();
        move |req: Request<ReplayBody<TestBody>>| {
            let mut seen = seen.lock().unwrap();
            let attempt: u32 = req.headers()["x-agentgate-attempt"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            // The layers below read the number from the extension (set on retries; none
            // means the first attempt), without parsing.
            assert_eq!(AttemptNumber::of(req.extensions()), attempt);
            assert_eq!(
                req.extensions().get::<AttemptNumber>().is_some(),
                attempt > 1
            );
            let step = script[seen.len().min(script.len() - 1)];
            seen.push((attempt, Instant::now()));
            let retry_after = retry_after.clone();
            async move {
                // The agent reads the body, as a real one would.
                req.into_body().collect().await?;
                match step {
                    Ok(code) => {
                        let mut res = Response::builder().status(code);
                        if let Some(ra) = retry_after {
                            res = res.header("retry-after", ra);
                        }
                        Ok(res.body(()).unwrap())
                    }
                    Err(kind) => Err(BoxError::from(std::io::Error::new(kind, "scripted"))),
                }
            }
        }
    });
    (svc, seen)
}

fn config(jitter: Jitter) -> RetryConfig {
    RetryConfig {
        max_attempts: 4,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(1000),
        jitter,
        budget_min_per_sec: 1000,
        ..Default::default()
    }
}

fn retry(config: RetryConfig) -> RetryLayer {
    RetryLayer::new(RetryPolicy::try_with_seed("agent", config, 42).unwrap())
}

fn get() -> Request<TestBody> {
    Request::get("http://agent/x")
        .body(Full::default())
        .unwrap()
}

#[derive(Debug, Default)]
struct Delays(Mutex<Vec<(u32, Duration)>>);

impl AttemptObserver for Delays {
    fn attempt_finished(&self, _: &AttemptRecord) {}
    fn retry_scheduled(&self, next: u32, delay: Duration) {
        self.0.lock().unwrap().push((next, delay));
    }
}

/// Runs one request that fails with 503 until the 4th attempt; returns the scheduled
/// delays and the gaps the agent actually saw between attempts.
async fn delays(jitter: Jitter) -> Vec<(Duration, Duration)> {
    let (svc, seen) = agent(vec![Ok(503), Ok(503), Ok(503), Ok(200)], None);
    let ledger = AttemptLedger::new();
    let observed = Arc::new(Delays::default());
    ledger.observe(observed.clone());
    let mut req = get();
    req.extensions_mut().insert(ledger.clone());
    let res = retry(config(jitter)).layer(svc).oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
    let scheduled = observed.0.lock().unwrap();
    assert_eq!(scheduled.iter().map(|s| s.0).collect::<Vec<_>>(), [2, 3, 4]);
    scheduled
        .iter()
        .zip(seen.windows(2))
        .map(|((_, d), w)| (*d, w[1].1 - w[0].1))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn no_jitter_sleeps_exactly_the_doubling_delays() {
    let got = delays(Jitter::None).await;
    let ms = |v: u64| Duration::from_millis(v);
    assert_eq!(
        got,
        [(ms(100), ms(100)), (ms(200), ms(200)), (ms(400), ms(400))]
    );
}

/// tokio's timer wheel has millisecond resolution: a sleep ends on the next whole ms.
fn assert_sleeps(scheduled: Duration, slept: Duration) {
    assert!(
        slept >= scheduled && slept - scheduled < Duration::from_millis(1),
        "scheduled {scheduled:?}, slept {slept:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn each_jitter_kind_sleeps_within_its_bounds() {
    let ms = |v: u64| Duration::from_millis(v);
    for (jitter, bounds) in [
        (
            Jitter::Full,
            [(ms(0), ms(100)), (ms(0), ms(200)), (ms(0), ms(400))],
        ),
        (
            Jitter::Equal,
            [(ms(50), ms(100)), (ms(100), ms(200)), (ms(200), ms(400))],
        ),
    ] {
        for (i, (scheduled, slept)) in delays(jitter).await.into_iter().enumerate() {
            assert_sleeps(scheduled, slept);
            let (lo, hi) = bounds[i];
            assert!(
                scheduled >= lo && scheduled <= hi,
                "{jitter:?} retry {}: {scheduled:?}",
                i + 1
            );
        }
    }
    // Decorrelated: each delay in [base, prev * 3], capped.
    let mut prev = ms(100);
    for (scheduled, slept) in delays(Jitter::Decorrelated).await {
        assert_sleeps(scheduled, slept);
        assert!(
            scheduled >= ms(100) && scheduled <= (prev * 3).min(ms(1000)),
            "{scheduled:?} after {prev:?}"
        );
        prev = scheduled;
    }
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_and_records_every_attempt() {
    let (svc, seen) = agent(vec![Ok(502)], None);
    let ledger = AttemptLedger::new();
    let mut req = get();
    req.extensions_mut().insert(ledger.clone());
    let res = retry(config(Jitter::None))
        .layer(svc)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(seen.lock().unwrap().len(), 4);
    let records = ledger.records();
    assert_eq!(
        records.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(records
        .iter()
        .all(|r| r.status == Some(502) && r.outcome == AttemptOutcome::Failure));
    assert_eq!(res.headers()["x-agentgate-attempts"], "4");
}

#[tokio::test(start_paused = true)]
async fn statuses_not_listed_are_not_retried() {
    let (svc, seen) = agent(vec![Ok(500)], None);
    let cfg = RetryConfig {
        retry_on: vec![RetryOn::Status(503)],
        ..config(Jitter::None)
    };
    assert_eq!(
        retry(cfg).layer(svc).oneshot(get()).await.unwrap().status(),
        500
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    let (svc, seen) = agent(vec![Ok(404)], None);
    assert_eq!(
        retry(config(Jitter::None))
            .layer(svc)
            .oneshot(get())
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn protocol_upgrades_are_never_retried() {
    for first in [Ok(503), Err(std::io::ErrorKind::ConnectionRefused)] {
        let (svc, seen) = agent(vec![first, Ok(101)], None);
        let mut req = get();
        req.headers_mut()
            .insert("upgrade", http::HeaderValue::from_static("websocket"));
        let res = retry(config(Jitter::None)).layer(svc).oneshot(req).await;
        assert_eq!(seen.lock().unwrap().len(), 1, "{first:?}");
        assert_eq!(res.map(|r| r.status().as_u16()).ok(), first.ok());
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_a_floor_in_both_forms() {
    let (svc, seen) = agent(vec![Ok(503), Ok(200)], Some("3"));
    retry(config(Jitter::None))
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(gap(&seen), Duration::from_secs(3));

    // An HTTP-date 5 s ahead of the wall clock.
    let date = httpdate_in(Duration::from_secs(5));
    let (svc, seen) = agent(vec![Ok(429), Ok(200)], Some(&date));
    retry(config(Jitter::None))
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    let waited = gap(&seen);
    assert!(
        waited > Duration::from_secs(3) && waited <= Duration::from_secs(5),
        "{waited:?}"
    );

    // Garbage is ignored: the backoff applies.
    let (svc, seen) = agent(vec![Ok(503), Ok(200)], Some("soon"));
    retry(config(Jitter::None))
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(gap(&seen), Duration::from_millis(100));
}

/// Time between the agent seeing attempts 1 and 2.
fn gap(seen: &Seen) -> Duration {
    let seen = seen.lock().unwrap();
    seen[1].1 - seen[0].1
}

fn httpdate_in(d: Duration) -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now() + d)
}

#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_cap_is_not_waited_for() {
    let (svc, seen) = agent(vec![Ok(503), Ok(200)], Some("120"));
    let res = retry(config(Jitter::None))
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn post_is_retried_only_with_an_idempotency_key_or_when_nothing_was_sent() {
    let post = |key: bool| {
        let mut b = Request::post("http://agent/x");
        if key {
            b = b.header("idempotency-key", "q1:stage");
        }
        b.body(Full::from("{}")).unwrap()
    };
    let (svc, seen) = agent(vec![Ok(503), Ok(200)], None);
    assert_eq!(
        retry(config(Jitter::None))
            .layer(svc)
            .oneshot(post(false))
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(seen.lock().unwrap().len(), 1);

    let (svc, seen) = agent(vec![Ok(503), Ok(200)], None);
    assert_eq!(
        retry(config(Jitter::None))
            .layer(svc)
            .oneshot(post(true))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(seen.lock().unwrap().len(), 2);

    // A reset may have reached the agent: not retried. A refused connection did not.
    let (svc, seen) = agent(
        vec![Err(std::io::ErrorKind::ConnectionReset), Ok(200)],
        None,
    );
    assert!(retry(config(Jitter::None))
        .layer(svc)
        .oneshot(post(false))
        .await
        .is_err());
    assert_eq!(seen.lock().unwrap().len(), 1);
    let (svc, seen) = agent(
        vec![Err(std::io::ErrorKind::ConnectionRefused), Ok(200)],
        None,
    );
    assert_eq!(
        retry(config(Jitter::None))
            .layer(svc)
            .oneshot(post(false))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(seen.lock().unwrap().len(), 2);

    // retry_non_idempotent lifts the guard.
    let (svc, seen) = agent(vec![Ok(503), Ok(200)], None);
    let cfg = RetryConfig {
        retry_non_idempotent: true,
        ..config(Jitter::None)
    };
    assert_eq!(
        retry(cfg)
            .layer(svc)
            .oneshot(post(false))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn bodies_over_the_replay_cap_are_sent_once() {
    let put = |n: usize| {
        Request::put("http://agent/x")
            .body(Full::new(Bytes::from(vec![b'x'; n])))
            .unwrap()
    };
    let (svc, seen) = agent(vec![Ok(503), Ok(200)], None);
    let res = retry(config(Jitter::None))
        .layer(svc)
        .oneshot(put(65_537))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(seen.lock().unwrap().len(), 1);

    let (svc, seen) = agent(vec![Ok(503), Ok(200)], None);
    let res = retry(config(Jitter::None))
        .layer(svc)
        .oneshot(put(65_536))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn every_attempt_sends_the_whole_body() {
    let bodies: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let svc = tower::service_fn({
        let bodies = bodies.clone();
        move |req: Request<ReplayBody<TestBody>>| {
            let bodies = bodies.clone();
            async move {
                let body = req.into_body().collect().await?.to_bytes();
                let mut bodies = bodies.lock().unwrap();
                bodies.push(body);
                let status = if bodies.len() < 3 { 503 } else { 200 };
                Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
            }
        }
    });
    let req = Request::put("http://agent/x")
        .body(Full::from(r#"{"a":1}"#))
        .unwrap();
    let res = retry(config(Jitter::None))
        .layer(svc)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(*bodies.lock().unwrap(), [r#"{"a":1}"#; 3]);
}

#[tokio::test(start_paused = true)]
async fn a_body_still_being_sent_is_not_sent_again() {
    // The agent answers 503 without reading the body (an HTTP/1 connection may still be
    // writing it): the next attempt could not send it from its start, so none is made.
    type Frames = std::vec::IntoIter<Result<http_body::Frame<Bytes>, std::io::Error>>;
    type Streamed = StreamBody<futures_util::stream::Iter<Frames>>;
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let held: Arc<Mutex<Vec<ReplayBody<Streamed>>>> = Arc::default();
    let svc = tower::service_fn({
        let (calls, held) = (calls.clone(), held.clone());
        move |req: Request<ReplayBody<Streamed>>| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut body = req.into_body();
            let held = held.clone();
            async move {
                // One chunk read; the rest is still "on its way" when the answer goes.
                let _ = body.frame().await;
                held.lock().unwrap().push(body);
                Ok::<_, BoxError>(Response::builder().status(503).body(()).unwrap())
            }
        }
    });
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"ab"))),
        Ok(http_body::Frame::data(Bytes::from_static(b"cd"))),
    ];
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let req = Request::put("http://agent/x").body(body).unwrap();
    let res =
        RetryLayer::new(RetryPolicy::try_with_seed("agent", config(Jitter::None), 1).unwrap())
            .layer(svc)
            .oneshot(req)
            .await
            .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_is_never_retried() {
    let breaker = CircuitBreakerLayer::try_new("agent", CircuitBreakerConfig::default()).unwrap();
    breaker.handle().force_open(None);
    let (svc, seen) = agent(vec![Ok(200)], None);
    let ledger = AttemptLedger::new();
    let mut req = get();
    req.extensions_mut().insert(ledger.clone());
    let stack = retry(config(Jitter::None)).layer(breaker.layer(svc));
    assert!(stack.oneshot(req).await.is_err());
    assert_eq!(seen.lock().unwrap().len(), 0);
    let records = ledger.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, AttemptOutcome::Rejected);
}

#[tokio::test(start_paused = true)]
async fn no_backoff_past_the_deadline() {
    let (svc, seen) = agent(vec![Ok(503), Ok(200)], None);
    let mut req = get();
    req.extensions_mut()
        .insert(Deadline(Instant::now() + Duration::from_millis(99)));
    assert_eq!(
        retry(config(Jitter::None))
            .layer(svc)
            .oneshot(req)
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(seen.lock().unwrap().len(), 1);

    let (svc, seen) = agent(vec![Ok(503), Ok(200)], None);
    let mut req = get();
    req.extensions_mut()
        .insert(Deadline(Instant::now() + Duration::from_millis(101)));
    assert_eq!(
        retry(config(Jitter::None))
            .layer(svc)
            .oneshot(req)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_allowance_is_shared_by_every_stage_of_a_query() {
    let allowance = RetryAllowance::new(1);
    let layer = retry(config(Jitter::None));
    let (svc, seen) = agent(vec![Ok(503)], None);
    for _ in 0..3 {
        let mut req = get();
        req.extensions_mut().insert(allowance.clone());
        layer.layer(svc.clone()).oneshot(req).await.unwrap();
    }
    assert_eq!(seen.lock().unwrap().len(), 3 + 1);
    assert_eq!(allowance.remaining(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_budget_caps_retries() {
    let cfg = RetryConfig {
        max_attempts: 2,
        budget_ratio: 0.0,
        budget_min_per_sec: 1,
        ..config(Jitter::None)
    };
    let layer = retry(cfg);
    let (svc, seen) = agent(vec![Ok(503)], None);
    for _ in 0..50 {
        layer.layer(svc.clone()).oneshot(get()).await.unwrap();
    }
    let retries = seen.lock().unwrap().len() - 50;
    // `min_per_sec = 1` over the budget's 10 s window allows about 10 retries, not 50.
    assert!((1..=15).contains(&retries), "{retries} retries");
}

#[tokio::test(start_paused = true)]
async fn a_retry_carries_the_time_left_when_it_is_sent() {
    let left: Arc<Mutex<Vec<String>>> = Arc::default();
    let svc = tower::service_fn({
        let left = left.clone();
        move |req: Request<ReplayBody<TestBody>>| {
            let mut left = left.lock().unwrap();
            left.push(
                req.headers()["x-agentgate-deadline-ms"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
            let status = if left.len() == 1 { 503 } else { 200 };
            async move { Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap()) }
        }
    });
    let mut req = get();
    req.extensions_mut()
        .insert(Deadline(Instant::now() + Duration::from_millis(5000)));
    req.headers_mut()
        .insert("x-agentgate-deadline-ms", http::HeaderValue::from(5000u64));
    let res = retry(config(Jitter::None))
        .layer(svc)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // The retry is sent 100 ms later, with 100 ms less left.
    assert_eq!(*left.lock().unwrap(), ["5000", "4900"]);
}

#[tokio::test(start_paused = true)]
async fn calls_through_one_service_are_numbered_and_retried_alike() {
    // Each call fails once with 503, then succeeds.
    let (agent, seen) = agent(
        vec![Ok(503), Ok(200), Ok(503), Ok(200), Ok(503), Ok(200)],
        None,
    );
    let mut svc = retry(config(Jitter::None)).layer(agent);
    for _ in 0..3 {
        // The same service instance each time, not a fresh clone.
        let res = svc.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-agentgate-attempts"], "2");
    }
    let attempts: Vec<u32> = seen.lock().unwrap().iter().map(|s| s.0).collect();
    assert_eq!(attempts, [1, 2, 1, 2, 1, 2]);
}
