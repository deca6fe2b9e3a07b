//! The tower contracts of the circuit breaker, on a paused clock.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use agentgate_circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitOpen, Reason, State,
};
use agentgate_classify::{
    cause_ref, classify_error, is_caused_by, BoxError, FailureClass, Rejected, Rejection,
};
use http::{Request, Response, StatusCode};
use tokio::sync::oneshot;
use tokio::time::{self, Instant};
use tokio_test::{assert_pending, assert_ready, assert_ready_ok};
use tower::{Layer, Service, ServiceExt};

type Res = Response<()>;

fn layer(config: CircuitBreakerConfig) -> (CircuitBreakerLayer, CircuitBreakerHandle) {
    let layer = CircuitBreakerLayer::builder("agent")
        .config(config)
        .open_jitter(0.0)
        .build()
        .expect("valid config");
    let handle = layer.handle();
    (layer, handle)
}

fn status(code: u16) -> Res {
    Response::builder().status(code).body(()).unwrap()
}

/// An inner service that is never ready and counts how often it was asked.
#[derive(Clone, Default)]
struct NeverReady {
    polls: Arc<AtomicUsize>,
}

impl Service<Request<()>> for NeverReady {
    type Response = Res;
    type Error = Infallible;
    type Future = std::future::Pending<Result<Res, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        Poll::Pending
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        panic!("a never-ready service must not be called");
    }
}

/// An always-ready inner service whose calls wait until the test answers them.
#[derive(Clone, Default)]
struct Held {
    calls: Arc<std::sync::Mutex<Vec<oneshot::Sender<Res>>>>,
}

impl Held {
    fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn answer(&self, i: usize, res: Res) {
        let tx = std::mem::replace(&mut self.calls.lock().unwrap()[i], oneshot::channel().0);
        let _ = tx.send(res);
    }
}

impl Service<Request<()>> for Held {
    type Response = Res;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Res, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        let (tx, rx) = oneshot::channel();
        self.calls.lock().unwrap().push(tx);
        Box::pin(async move { rx.await.map_err(|_| "dropped".into()) })
    }
}

async fn call<S>(svc: &mut S) -> Result<Res, BoxError>
where
    S: Service<Request<()>, Response = Res, Error = BoxError>,
{
    svc.ready().await?.call(Request::new(())).await
}

fn trip(handle: &CircuitBreakerHandle) {
    handle.force_open(None);
    assert_eq!(handle.snapshot().state, State::ForcedOpen);
}

#[tokio::test(start_paused = true)]
async fn open_breaker_rejects_at_once_without_polling_inner() {
    let (layer, handle) = layer(CircuitBreakerConfig::default());
    let inner = NeverReady::default();
    let polls = inner.polls.clone();
    let mut svc = tokio_test::task::spawn(layer.layer(inner));

    // Closed: readiness is the inner service's.
    assert_pending!(svc.enter(|cx, mut s| s.poll_ready(cx)));
    assert_eq!(polls.load(Ordering::SeqCst), 1);

    trip(&handle);
    assert_ready_ok!(svc.enter(|cx, mut s| s.poll_ready(cx)));
    let mut fut = tokio_test::task::spawn(svc.enter(|_, mut s| s.call(Request::new(()))));
    let err = assert_ready!(fut.poll()).unwrap_err();
    let open = cause_ref::<CircuitOpen>(&*err).expect("CircuitOpen");
    assert_eq!((open.agent(), open.state()), ("agent", State::ForcedOpen));
    assert_eq!(polls.load(Ordering::SeqCst), 1, "inner polled while open");
    assert_eq!(handle.snapshot().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn call_uses_the_ready_inner_service() {
    // tower-test's mock panics if a clone that was never made ready is called.
    let (layer, _handle) = layer(CircuitBreakerConfig::default());
    let (mut svc, mut mock) = tower_test::mock::spawn_with(|m| layer.layer(m));
    mock.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(Request::new(()));
    let (_req, send) = mock.next_request().await.expect("request reached inner");
    send.send_response(status(200));
    assert_eq!(fut.await.unwrap().status(), 200);
    // The inner service's readiness was consumed: no more permits.
    assert_pending!(svc.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_at_most_max_probes_across_clones() {
    let (layer, handle) = layer(CircuitBreakerConfig {
        consecutive_failures: 1,
        half_open_max_calls: 3,
        open_duration: Duration::from_secs(10),
        ..Default::default()
    });
    let inner = Held::default();
    let svc = layer.layer(inner.clone());
    let mut first = svc.clone();
    let pending = tokio::spawn(async move { call(&mut first).await });
    tokio::task::yield_now().await;
    inner.answer(0, status(503));
    pending.await.unwrap().unwrap();
    assert_eq!(handle.snapshot().state, State::Open);

    time::advance(Duration::from_secs(10)).await;
    let clones: Vec<_> = (0..8).map(|_| svc.clone()).collect();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut s = clones[i % 8].clone();
        tasks.push(tokio::spawn(async move { call(&mut s).await }));
    }
    // Let every task reach its decision.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(inner.count(), 1 + 3, "only the probes reach the agent");
    let snap = handle.snapshot();
    assert_eq!((snap.state, snap.half_open_in_flight), (State::HalfOpen, 3));
    let mut rejected = 0;
    let mut probes = Vec::new();
    for t in tasks {
        if t.is_finished() {
            let err = t.await.unwrap().unwrap_err();
            assert_eq!(
                cause_ref::<CircuitOpen>(&*err).unwrap().state(),
                State::HalfOpen
            );
            rejected += 1;
        } else {
            probes.push(t);
        }
    }
    assert_eq!((rejected, probes.len()), (97, 3));

    // A dropped probe gives its permit back: exactly one more call gets through.
    probes.pop().unwrap().abort();
    tokio::task::yield_now().await;
    assert_eq!(handle.snapshot().half_open_in_flight, 2);
    let mut s = svc.clone();
    let extra = tokio::spawn(async move { call(&mut s).await });
    tokio::task::yield_now().await;
    assert_eq!(inner.count(), 5);
    let mut s = svc.clone();
    assert!(is_caused_by::<CircuitOpen>(
        &*call(&mut s).await.unwrap_err()
    ));

    // One successful probe closes the breaker; the others' outcomes no longer count.
    inner.answer(4, status(200));
    extra.await.unwrap().unwrap();
    assert_eq!(handle.snapshot().state, State::Closed);
    inner.answer(1, status(503));
    probes.remove(0).await.unwrap().unwrap();
    let snap = handle.snapshot();
    assert_eq!(
        (snap.state, snap.consecutive_failures, snap.calls_in_window),
        (State::Closed, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn transitions_happen_at_the_right_instants() {
    let (layer, handle) = layer(CircuitBreakerConfig {
        consecutive_failures: 2,
        open_duration: Duration::from_secs(30),
        max_open_duration: Duration::from_secs(120),
        ..Default::default()
    });
    let mut events = handle.subscribe();
    let fail_for_5s = tower::service_fn(|_: Request<()>| async {
        time::sleep(Duration::from_secs(5)).await;
        Ok::<_, Infallible>(status(503))
    });
    let mut svc = layer.layer(fail_for_5s);
    let t0 = Instant::now();

    call(&mut svc).await.unwrap(); // ends at t0+5
    call(&mut svc).await.unwrap(); // ends at t0+10: trips
    let e = events.recv().await.unwrap();
    assert_eq!(
        (e.from, e.to, e.reason, e.at),
        (
            State::Closed,
            State::Open,
            Reason::Consecutive,
            t0 + Duration::from_secs(10)
        )
    );
    assert_eq!((e.consecutive_failures, e.calls_in_window), (2, 2));

    time::advance(Duration::from_millis(29_999)).await;
    let err = call(&mut svc).await.unwrap_err();
    let open = cause_ref::<CircuitOpen>(&*err).unwrap();
    assert_eq!(open.retry_after(), Some(Duration::from_millis(1)));
    assert_eq!(handle.snapshot().state, State::Open);

    time::advance(Duration::from_millis(1)).await;
    // The probe starts at t0+40 and fails at t0+45: open again, for 60s (doubled).
    call(&mut svc).await.unwrap();
    let e = events.recv().await.unwrap();
    assert_eq!(
        (e.from, e.to, e.reason, e.at),
        (
            State::Open,
            State::HalfOpen,
            Reason::OpenElapsed,
            t0 + Duration::from_secs(40)
        )
    );
    let e = events.recv().await.unwrap();
    assert_eq!(
        (e.from, e.to, e.reason, e.at),
        (
            State::HalfOpen,
            State::Open,
            Reason::ProbeFailure,
            t0 + Duration::from_secs(45)
        )
    );
    assert_eq!(handle.snapshot().retry_after, Some(Duration::from_secs(60)));

    // Nothing happens until someone looks; then the change is stamped when it was due.
    time::advance(Duration::from_secs(90)).await;
    assert_eq!(handle.snapshot().state, State::HalfOpen);
    let e = events.recv().await.unwrap();
    assert_eq!(
        (e.to, e.at),
        (State::HalfOpen, t0 + Duration::from_secs(105))
    );
}

/// With the rate trip off the breaker keeps no window, but every time-driven step still
/// happens at the paused clock's instant: the trip is stamped when the failure ended, the
/// open period runs from there, and a successful probe closes.
#[tokio::test(start_paused = true)]
async fn a_window_less_breaker_keeps_the_paused_clock_instants() {
    let (layer, handle) = layer(CircuitBreakerConfig {
        consecutive_failures: 2,
        failure_rate_threshold: 0.0,
        open_duration: Duration::from_secs(30),
        ..Default::default()
    });
    let mut events = handle.subscribe();
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let agent = {
        let fail = fail.clone();
        tower::service_fn(move |_: Request<()>| {
            let code = if fail.load(Ordering::SeqCst) {
                503
            } else {
                200
            };
            async move {
                time::sleep(Duration::from_secs(5)).await;
                Ok::<_, Infallible>(status(code))
            }
        })
    };
    let mut svc = layer.layer(agent);
    let t0 = Instant::now();
    call(&mut svc).await.unwrap(); // fails at t0+5
    call(&mut svc).await.unwrap(); // fails at t0+10: trips
    let e = events.recv().await.unwrap();
    assert_eq!(
        (e.to, e.reason, e.at, e.calls_in_window),
        (
            State::Open,
            Reason::Consecutive,
            t0 + Duration::from_secs(10),
            0
        )
    );
    time::advance(Duration::from_millis(29_999)).await;
    assert!(is_caused_by::<CircuitOpen>(
        &*call(&mut svc).await.unwrap_err()
    ));
    time::advance(Duration::from_millis(1)).await;
    fail.store(false, Ordering::SeqCst);
    call(&mut svc).await.unwrap(); // the probe, t0+40 .. t0+45
    let to: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| (e.to, e.at))
        .collect();
    assert_eq!(
        to,
        [
            (State::HalfOpen, t0 + Duration::from_secs(40)),
            (State::Closed, t0 + Duration::from_secs(45)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn timeouts_count_as_failures() {
    let (breaker, handle) = layer(CircuitBreakerConfig {
        consecutive_failures: 2,
        ..Default::default()
    });
    let hits = Arc::new(AtomicUsize::new(0));
    let hang = {
        let hits = hits.clone();
        tower::service_fn(move |_: Request<()>| {
            hits.fetch_add(1, Ordering::SeqCst);
            async {
                time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, Infallible>(status(200))
            }
        })
    };
    let mut svc = tower::ServiceBuilder::new()
        .layer(breaker)
        .timeout(Duration::from_secs(1))
        .service(hang);
    for _ in 0..2 {
        let err = call(&mut svc).await.unwrap_err();
        assert!(is_caused_by::<tower::timeout::error::Elapsed>(&*err));
    }
    let snap = handle.snapshot();
    assert_eq!(
        (snap.state, snap.trip_reason),
        (State::Open, Some(Reason::Consecutive))
    );
    let err = call(&mut svc).await.unwrap_err();
    assert!(is_caused_by::<CircuitOpen>(&*err));
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn client_errors_and_cancellation_do_not_count() {
    let (layer, handle) = layer(CircuitBreakerConfig {
        consecutive_failures: 1,
        ..Default::default()
    });
    let inner = Held::default();
    let mut svc = layer.layer(inner.clone());

    for (i, code) in [404u16, 400, 409, 422, 429].into_iter().enumerate() {
        let mut s = svc.clone();
        let t = tokio::spawn(async move { call(&mut s).await });
        tokio::task::yield_now().await;
        inner.answer(i, status(code));
        assert_eq!(t.await.unwrap().unwrap().status(), code);
    }
    // Cancelled calls: the caller went away before the agent answered.
    for _ in 0..3 {
        let mut s = svc.clone();
        let t = tokio::spawn(async move { call(&mut s).await });
        tokio::task::yield_now().await;
        t.abort();
        let _ = t.await;
    }
    let snap = handle.snapshot();
    assert_eq!(
        (snap.state, snap.calls_in_window, snap.failures_in_window),
        (State::Closed, 5, 0)
    );

    // A single 500 does trip it (consecutive_failures = 1).
    let t = tokio::spawn(async move { call(&mut svc).await });
    tokio::task::yield_now().await;
    inner.answer(8, status(500));
    t.await.unwrap().unwrap();
    assert_eq!(handle.snapshot().state, State::Open);
}

#[tokio::test(start_paused = true)]
async fn retry_after_opens_until_then() {
    let (layer, handle) = layer(CircuitBreakerConfig::default());
    let throttle = tower::service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header("retry-after", "7")
                .body(())
                .unwrap(),
        )
    });
    let mut svc = layer.layer(throttle);
    assert_eq!(call(&mut svc).await.unwrap().status(), 429);
    let snap = handle.snapshot();
    assert_eq!(
        (snap.state, snap.trip_reason, snap.retry_after),
        (
            State::Open,
            Some(Reason::RetryAfter),
            Some(Duration::from_secs(7))
        )
    );
    time::advance(Duration::from_secs(7)).await;
    assert_eq!(handle.snapshot().state, State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn disabled_lets_everything_through_and_force_open_expires() {
    let (layer, handle) = layer(CircuitBreakerConfig {
        consecutive_failures: 1,
        ..Default::default()
    });
    let mut svc = layer.layer(tower::service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(status(503))
    }));
    let change = handle.disable();
    assert_eq!((change.from, change.to), (State::Closed, State::Disabled));
    for _ in 0..10 {
        assert_eq!(call(&mut svc).await.unwrap().status(), 503);
    }
    assert_eq!(handle.snapshot().state, State::Disabled);

    let change = handle.force_open(Some(Duration::from_secs(300)));
    assert_eq!(
        (change.from, change.to),
        (State::Disabled, State::ForcedOpen)
    );
    time::advance(Duration::from_secs(299)).await;
    let err = call(&mut svc).await.unwrap_err();
    assert_eq!(
        cause_ref::<CircuitOpen>(&*err).unwrap().retry_after(),
        Some(Duration::from_secs(1))
    );
    time::advance(Duration::from_secs(1)).await;
    assert_eq!(handle.snapshot().state, State::HalfOpen);

    let change = handle.reset();
    assert_eq!((change.from, change.to), (State::HalfOpen, State::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_rejection_carries_the_rejected_marker_with_the_time_left() {
    let (layer, handle) = layer(CircuitBreakerConfig {
        consecutive_failures: 1,
        open_duration: Duration::from_secs(10),
        ..Default::default()
    });
    let mut svc = layer.layer(tower::service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(status(503))
    }));
    assert_eq!(call(&mut svc).await.unwrap().status(), 503);
    time::advance(Duration::from_secs(4)).await;

    // Layers that do not know the breaker see a refusal, not an agent failure.
    let err = call(&mut svc).await.unwrap_err();
    let open = cause_ref::<CircuitOpen>(&*err).expect("CircuitOpen");
    assert_eq!(open.retry_after(), Some(Duration::from_secs(6)));
    let rejected = cause_ref::<Rejected>(&*err).expect("the Rejected marker");
    assert_eq!(rejected.reason(), Rejection::CircuitOpen);
    assert_eq!(rejected.retry_after(), Some(Duration::from_secs(6)));
    assert_eq!(classify_error(&*err), FailureClass::Rejected);
    assert_eq!(handle.snapshot().rejected, 1);

    // Forced open without an end: a refusal with no time to come back at.
    handle.force_open(None);
    let err = call(&mut svc).await.unwrap_err();
    assert_eq!(cause_ref::<Rejected>(&*err).unwrap().retry_after(), None);
}
