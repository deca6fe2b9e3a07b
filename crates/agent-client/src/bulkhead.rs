//! The per-agent bulkhead (SPEC §8 `max_concurrency` + `queue_timeout`): at most
//! `max_concurrency` requests in flight to one agent; a request that finds every slot
//! taken waits up to `queue_timeout` for one, then fails with [`Overloaded`] without
//! reaching the agent.
//!
//! It sits between the retry layer and the circuit breaker:
//!
//! - its refusal carries [`Rejected`] with [`Rejection::Overloaded`], so the retry layer
//!   does not retry it against the same agent, the metrics count it `rejected`, and the
//!   pipeline goes on to the stage's fallbacks (kind `overloaded`);
//! - the breaker, below it, never sees it: a full bulkhead says the agent is slow or
//!   busy, which the breaker learns from the calls that do reach the agent.
//!
//! Slots are tokio's semaphore, as in `tower::limit::ConcurrencyLimit`, but taken in
//! `call` rather than in `poll_ready`: a request that finds no slot must fail after
//! `queue_timeout` with an error the layers above recognise, and readiness cannot say
//! why it failed. The fast path is one `try_acquire`; only a request that has to queue
//! allocates (a boxed wait). With `max_concurrency = 0` the layer is a pass-through.
//!
//! A slot is held until the response head arrives (for pipeline stages, whose transport
//! reads the JSON body, until the body is read too); a streamed answer through the
//! reverse proxy gives its slot back once the head is there.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use agentgate_classify::{BoxError, Rejected, Rejection};
use metrics::{Counter, Gauge};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_layer::Layer;
use tower_service::Service;

/// `agentgate_agent_in_flight{agent}`: requests holding a slot.
pub(crate) const IN_FLIGHT: &str = "agentgate_agent_in_flight";
/// `agentgate_overload_rejected_total{scope}`: refusals by admission control.
pub const OVERLOAD_REJECTED: &str = "agentgate_overload_rejected_total";

/// What a full bulkhead answers after `queue_timeout`.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Builds [`Bulkhead`]s that share one set of slots. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BulkheadLayer {
    shared: Option<Arc<Shared>>,
}

/// The service: see the module docs.
#[derive(Clone, Debug)]
pub struct Bulkhead<S> {
    inner: S,
    shared: Option<Arc<Shared>>,
}

/// A request refused because every slot of the agent was taken for `queue_timeout`.
/// Its [`source()`](std::error::Error::source) is [`Rejected`] (`overloaded`).
#[derive(Debug)]
pub struct Overloaded {
    agent: Arc<str>,
    max_concurrency: usize,
    rejected: Rejected,
}

struct Shared {
    agent: Arc<str>,
    slots: Arc<Semaphore>,
    max_concurrency: usize,
    queue_timeout: Duration,
    in_flight: Gauge,
    rejected: Counter,
}

/// A taken slot; the gauge follows it.
struct Slot {
    _permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
}

type Wait = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

pin_project! {
    /// The response future of [`Bulkhead`].
    #[project = FutureProj]
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        // A slot is held (or there is no limit): the inner call runs.
        Called { #[pin] fut: S::Future, slot: Option<Slot> },
        // Every slot was taken: waiting up to `queue_timeout` for one, with the inner
        // service that was made ready for this request.
        Queued { wait: Wait, inner: Option<S>, req: Option<Req>, shared: Arc<Shared> },
        // Refused at once.
        Refused { error: Option<Overloaded> },
    }
}

// === impl BulkheadLayer ===

impl BulkheadLayer {
    /// A bulkhead of `max_concurrency` slots for `agent` (0: no limit), where a request
    /// waits up to `queue_timeout` for a slot.
    pub fn new(agent: &str, max_concurrency: usize, queue_timeout: Duration) -> Self {
        let shared = (max_concurrency > 0).then(|| {
            let in_flight = metrics::gauge!(IN_FLIGHT, "agent" => agent.to_owned());
            in_flight.set(0.0);
            Arc::new(Shared {
                agent: agent.into(),
                slots: Arc::new(Semaphore::new(max_concurrency)),
                max_concurrency,
                queue_timeout,
                in_flight,
                rejected: metrics::counter!(OVERLOAD_REJECTED, "scope" => "agent"),
            })
        });
        Self { shared }
    }

    /// Requests holding a slot now (0 without a limit).
    pub fn in_flight(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| {
            s.max_concurrency - s.slots.available_permits().min(s.max_concurrency)
        })
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Bulkhead<S> {
        Bulkhead {
            inner,
            shared: self.shared.clone(),
        }
    }
}

// === impl Bulkhead ===

impl<S, Req> Service<Req> for Bulkhead<S>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(shared) = &self.shared else {
            let fut = self.inner.call(req);
            return ResponseFuture::new(State::Called { fut, slot: None });
        };
        let state = match shared.slots.clone().try_acquire_owned() {
            Ok(permit) => State::Called {
                fut: self.inner.call(req),
                slot: Some(Slot::new(permit, shared.clone())),
            },
            Err(_) if shared.queue_timeout.is_zero() => State::Refused {
                error: Some(shared.refuse()),
            },
            Err(_) => {
                let (slots, timeout) = (shared.slots.clone(), shared.queue_timeout);
                let wait = Box::pin(async move {
                    tokio::time::timeout(timeout, slots.acquire_owned())
                        .await
                        .ok()
                        .and_then(Result::ok)
                });
                // The ready service goes with the request; this one gets a clone.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                State::Queued {
                    wait,
                    inner: Some(inner),
                    req: Some(req),
                    shared: shared.clone(),
                }
            }
        };
        ResponseFuture::new(state)
    }
}

// === impl ResponseFuture ===

impl<S: Service<Req>, Req> ResponseFuture<S, Req> {
    fn new(state: State<S, Req>) -> Self {
        Self { state }
    }
}

impl<S, Req> Future for ResponseFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Called { fut, slot: _ } => {
                    return fut.poll(cx).map_err(Into::into);
                }
                StateProj::Refused { error } => {
                    let error = error.take().expect("polled after completion");
                    return Poll::Ready(Err(error.into()));
                }
                StateProj::Queued {
                    wait,
                    inner,
                    req,
                    shared,
                } => match ready!(wait.as_mut().poll(cx)) {
                    Some(permit) => {
                        let mut inner = inner.take().expect("polled after completion");
                        let req = req.take().expect("polled after completion");
                        State::Called {
                            fut: inner.call(req),
                            slot: Some(Slot::new(permit, shared.clone())),
                        }
                    }
                    None => State::Refused {
                        error: Some(shared.refuse()),
                    },
                },
            };
            this.state.set(next);
        }
    }
}

// === impl Shared ===

impl Shared {
    fn refuse(&self) -> Overloaded {
        self.rejected.increment(1);
        Overloaded {
            agent: self.agent.clone(),
            max_concurrency: self.max_concurrency,
            rejected: Rejected::new(Rejection::Overloaded, Some(RETRY_AFTER)),
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("agent", &self.agent)
            .field("max_concurrency", &self.max_concurrency)
            .field("available", &self.slots.available_permits())
            .field("queue_timeout", &self.queue_timeout)
            .finish()
    }
}

// === impl Slot ===

impl Slot {
    fn new(permit: OwnedSemaphorePermit, shared: Arc<Shared>) -> Self {
        shared.in_flight.increment(1.0);
        Self {
            _permit: permit,
            shared,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.in_flight.decrement(1.0);
    }
}

// === impl Overloaded ===

impl Overloaded {
    /// The agent whose slots were all taken.
    pub fn agent(&self) -> &str {
        &self.agent
    }
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "agent `{}` is overloaded: all {} of its slots are busy",
            self.agent, self.max_concurrency
        )
    }
}

impl std::error::Error for Overloaded {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentgate_classify::{cause_ref, is_caused_by};
    use tokio::sync::oneshot;
    use tower::ServiceExt;

    /// A service whose calls end when the test says so.
    fn gated(
    ) -> impl Service<oneshot::Receiver<()>, Response = (), Error = BoxError, Future: Send + 'static>
           + Clone
           + Send
           + 'static {
        tower::service_fn(|rx: oneshot::Receiver<()>| async move {
            rx.await.map_err(|e| Box::new(e) as BoxError)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_bulkhead_refuses_at_once_without_queue_timeout() {
        let layer = BulkheadLayer::new("a", 1, Duration::ZERO);
        let svc = gated();
        let svc = layer.layer(svc);
        let (tx, rx) = oneshot::channel();
        let first = tokio::spawn(svc.clone().oneshot(rx));
        tokio::task::yield_now().await;
        assert_eq!(layer.in_flight(), 1);
        let (_tx2, rx2) = oneshot::channel();
        let err = svc.clone().oneshot(rx2).await.unwrap_err();
        let rejected = cause_ref::<Rejected>(&*err).expect("a refusal");
        assert_eq!(rejected.reason(), Rejection::Overloaded);
        assert_eq!(rejected.retry_after(), Some(Duration::from_secs(1)));
        assert!(is_caused_by::<Overloaded>(&*err));
        assert_eq!(
            err.to_string(),
            "agent `a` is overloaded: all 1 of its slots are busy"
        );
        tx.send(()).unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(layer.in_flight(), 0);
        // The slot is free again.
        let (tx3, rx3) = oneshot::channel();
        tx3.send(()).unwrap();
        svc.oneshot(rx3).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_gets_a_freed_slot_or_fails_after_queue_timeout() {
        let layer = BulkheadLayer::new("a", 1, Duration::from_millis(100));
        let svc = gated();
        let svc = layer.layer(svc);
        let (tx, rx) = oneshot::channel();
        let first = tokio::spawn(svc.clone().oneshot(rx));
        tokio::task::yield_now().await;

        // Freed within the wait: the queued request runs.
        let (tx2, rx2) = oneshot::channel();
        let second = tokio::spawn(svc.clone().oneshot(rx2));
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(()).unwrap();
        first.await.unwrap().unwrap();
        tokio::task::yield_now().await;
        assert_eq!(layer.in_flight(), 1, "the queued request holds the slot");

        // Not freed within the wait: refused after exactly queue_timeout.
        let started = tokio::time::Instant::now();
        let (_tx3, rx3) = oneshot::channel();
        let err = svc.clone().oneshot(rx3).await.unwrap_err();
        assert!(is_caused_by::<Rejected>(&*err));
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        tx2.send(()).unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(layer.in_flight(), 0);
    }

    #[tokio::test]
    async fn no_limit_is_a_pass_through() {
        let layer = BulkheadLayer::new("a", 0, Duration::ZERO);
        let svc = gated();
        let svc = layer.layer(svc);
        let mut pending = Vec::new();
        for _ in 0..100 {
            let (tx, rx) = oneshot::channel();
            pending.push((tx, tokio::spawn(svc.clone().oneshot(rx))));
        }
        for (tx, call) in pending {
            tx.send(()).unwrap();
            call.await.unwrap().unwrap();
        }
        assert_eq!(layer.in_flight(), 0);
    }
}
