//! The retry service: sends a request, and sends it again while the policy says so.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use agentgate_classify::{AttemptLedger, AttemptNumber, AttemptObserver, AttemptRecord, BoxError};
use http::header::HeaderName;
use http::request::Parts;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::{Attempted, Deadline, ReplayBody, RetryPolicy, DEADLINE_HEADER};

/// Request header carrying the 1-based attempt number to the agent (SPEC §3).
pub const ATTEMPT_HEADER: HeaderName = HeaderName::from_static("x-agentgate-attempt");
/// Response header carrying the number of attempts made (SPEC §3, reverse proxy).
pub const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-agentgate-attempts");

/// Retries calls to one agent with a [`RetryPolicy`].
///
/// Every attempt carries `x-agentgate-attempt: n` (or, with
/// [`AttemptHeader::Retries`], only the retries do) and every retry the
/// [`AttemptNumber`] extension (none means 1); the answer carries
/// `x-agentgate-attempts: n`. Each finished attempt becomes an
/// [`AttemptRecord`], told to the observer given with [`RetryLayer::on_attempt`] (the
/// agent's metrics) and to the request's [`AttemptLedger`], if it has one (a pipeline
/// stage's record, progress events); scheduled retries are told to both as well.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

/// What every service and call of one layer shares (one reference count per call).
#[derive(Clone, Debug)]
struct Shared {
    policy: RetryPolicy,
    observer: Option<Arc<dyn AttemptObserver>>,
    header: AttemptHeader,
}

/// Which attempts carry `x-agentgate-attempt`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttemptHeader {
    /// Every attempt, the first included (what pipeline stages send, SPEC §3).
    #[default]
    Always,
    /// Only retries (`2`, `3`, …): a first attempt goes out as the caller sent it, as
    /// through Envoy, which adds its attempt count only when asked to (the reverse
    /// proxy).
    Retries,
}

/// The service built by [`RetryLayer`].
///
/// It wraps each request body in a [`ReplayBody`], so the service under it takes
/// `Request<ReplayBody<B>>`, and it is `Clone` when that service is: a call that may be
/// retried keeps a clone of it for the later attempts.
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

pin_project! {
    /// The response future of [`Retry`].
    pub struct ResponseFuture<F, S, B> {
        #[pin]
        state: State<F>,
        // What a later attempt needs; `None` when `max_attempts` is 1. Boxed: every
        // layer above moves this future, and most calls never retry.
        again: Option<Box<Again<S, B>>>,
        shared: Arc<Shared>,
        ledger: Option<AttemptLedger>,
        attempt: u32,
        // When the attempt in flight started (only read when someone observes).
        started: Option<Instant>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // An attempt is in flight.
        Called { #[pin] fut: F },
        // Waiting out the backoff before the next attempt.
        Backoff { sleep: Pin<Box<Sleep>> },
        // The backoff is over: the service must be ready for the next attempt.
        Ready,
        // The answer was returned.
        Done,
    }
}

/// The request head as the caller sent it, a handle on its body, and a clone of the
/// service, for the attempts after the first.
struct Again<S, B> {
    head: Parts,
    body: ReplayBody<B>,
    service: S,
    /// The last backoff (for decorrelated jitter).
    prev_delay: Duration,
}

// === impl RetryLayer ===

impl RetryLayer {
    /// A layer retrying with `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            shared: Arc::new(Shared {
                policy,
                observer: None,
                header: AttemptHeader::default(),
            }),
        }
    }

    /// Which attempts carry `x-agentgate-attempt` (default: all).
    pub fn attempt_header(mut self, header: AttemptHeader) -> Self {
        Arc::make_mut(&mut self.shared).header = header;
        self
    }

    /// Tells `observer` about every attempt and every retry of every call (one observer;
    /// a later call replaces it).
    pub fn on_attempt(mut self, observer: Arc<dyn AttemptObserver>) -> Self {
        Arc::make_mut(&mut self.shared).observer = Some(observer);
        self
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            shared: self.shared.clone(),
        }
    }
}

// === impl Retry ===

impl<S> Retry<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, R> Service<Request<B>> for Retry<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<R>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Every original request earns the budget its share of retries.
        let shared = &self.shared;
        let now = Instant::now();
        shared.policy.deposit_at(now);
        let config = shared.policy.config();
        let (mut head, body) = req.into_parts();
        let body = ReplayBody::new(body, config.max_replay_body_bytes);
        let ledger = head.extensions.get::<AttemptLedger>().cloned();
        let again = (config.max_attempts > 1).then(|| {
            Box::new(Again {
                head: head.clone(),
                body: body.clone(),
                service: self.inner.clone(),
                prev_delay: config.base_delay,
            })
        });
        if shared.header == AttemptHeader::Always {
            head.headers.insert(ATTEMPT_HEADER, number_value(1));
        }
        let observed = shared.observer.is_some() || ledger.is_some();
        ResponseFuture {
            state: State::Called {
                fut: self.inner.call(Request::from_parts(head, body)),
            },
            started: observed.then_some(now),
            again,
            shared: shared.clone(),
            ledger,
            attempt: 1,
        }
    }
}

/// Numbers a retry: the header for the agent, the extension for the layers below.
fn stamp_retry(head: &mut Parts, attempt: u32) {
    head.headers.insert(ATTEMPT_HEADER, number_value(attempt));
    head.extensions.insert(AttemptNumber(attempt));
}

const NUMBERS: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

/// The header value for attempt `n` (static up to 16, so no allocation).
fn number_value(n: u32) -> HeaderValue {
    match NUMBERS.get(n as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(n),
    }
}

// === impl ResponseFuture ===

impl<F, S, B, R, E> Future for ResponseFuture<F, S, B>
where
    F: Future<Output = Result<Response<R>, E>>,
    E: Into<BoxError>,
    S: Service<Request<ReplayBody<B>>, Response = Response<R>, Error = E, Future = F>,
{
    type Output = Result<Response<R>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let this = self.as_mut().project();
            match this.state.project() {
                StateProj::Called { fut } => {
                    let result = ready!(fut.poll(cx)).map_err(Into::into);
                    let attempt = *this.attempt;
                    if let Some(started) = *this.started {
                        let record =
                            AttemptRecord::from_result(attempt, &result, started.elapsed());
                        if let Some(observer) = &this.shared.observer {
                            observer.attempt_finished(&record);
                        }
                        if let Some(ledger) = this.ledger {
                            ledger.finish(record);
                        }
                    }
                    let policy = &this.shared.policy;
                    let decided = this.again.as_mut().map(|again| {
                        let delay = policy.decide(&Attempted {
                            head: &again.head,
                            attempt,
                            result: &result,
                            replayable: again.body.is_replayable(),
                            prev_delay: again.prev_delay,
                        });
                        if let Ok(delay) = delay {
                            again.prev_delay = delay;
                        }
                        delay
                    });
                    let Some(Ok(delay)) = decided else {
                        self.as_mut().project().state.set(State::Done);
                        return Poll::Ready(answered(result, attempt));
                    };
                    // The failed answer (and its connection) goes now, not after the backoff.
                    drop(result);
                    *this.attempt += 1;
                    if let Some(observer) = &this.shared.observer {
                        observer.retry_scheduled(*this.attempt, delay);
                    }
                    if let Some(ledger) = this.ledger {
                        ledger.retry_scheduled(*this.attempt, delay);
                    }
                    let sleep = Box::pin(tokio::time::sleep(delay));
                    self.as_mut().project().state.set(State::Backoff { sleep });
                }
                StateProj::Backoff { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    self.as_mut().project().state.set(State::Ready);
                }
                StateProj::Ready => {
                    let again = this.again.as_mut().expect("retries need `again`");
                    if let Err(e) = ready!(again.service.poll_ready(cx)) {
                        self.as_mut().project().state.set(State::Done);
                        return Poll::Ready(Err(e.into()));
                    }
                    let attempt = *this.attempt;
                    let last = attempt >= this.shared.policy.config().max_attempts;
                    let mut head = if last {
                        // No attempt follows this one: the kept head itself is sent.
                        std::mem::replace(&mut again.head, Request::new(()).into_parts().0)
                    } else {
                        again.head.clone()
                    };
                    refresh_deadline(&mut head);
                    stamp_retry(&mut head, attempt);
                    let req = Request::from_parts(head, again.body.clone());
                    let fut = again.service.call(req);
                    if this.started.is_some() {
                        *this.started = Some(Instant::now());
                    }
                    if last {
                        *this.again = None;
                    }
                    self.as_mut().project().state.set(State::Called { fut });
                }
                StateProj::Done => panic!("retry future polled after completion"),
            }
        }
    }
}

/// The final result: the answer says how many attempts were made.
fn answered<R>(
    mut result: Result<Response<R>, BoxError>,
    attempts: u32,
) -> Result<Response<R>, BoxError> {
    if let Ok(res) = &mut result {
        res.headers_mut()
            .insert(ATTEMPTS_HEADER, number_value(attempts));
    }
    result
}

/// Keeps `x-agentgate-deadline-ms` true for a retry: the time left when it is sent.
fn refresh_deadline(head: &mut Parts) {
    if let Some(Deadline(deadline)) = head.extensions.get::<Deadline>().copied() {
        if head.headers.contains_key(DEADLINE_HEADER) {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64;
            head.headers
                .insert(DEADLINE_HEADER, HeaderValue::from(left));
        }
    }
}

impl<F, S, B> fmt::Debug for ResponseFuture<F, S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}
