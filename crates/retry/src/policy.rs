use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use agentgate_circuit_breaker::CircuitOpen;
use agentgate_classify::{
    classify_error, is_caused_by, retry_after_from_headers, BoxError, FailureClass,
};
use http::{Method, Request, Response};
use metrics::Counter;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::time::Instant;
use tower::retry::budget::Budget;
use tower::retry::Policy;

use crate::{
    AttemptLedger, Backoff, ConfigError, Deadline, RetryAllowance, RetryBody, RetryBudget,
    RetryConfig, RetryOn,
};

/// Header telling the agent how long the caller will still wait (SPEC §3); kept
/// current on retries when the request carries a [`Deadline`].
pub const DEADLINE_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-agentgate-deadline-ms");

/// Registers the help text of `agentgate_retry_budget_exhausted_total`.
pub fn describe_metrics() {
    metrics::describe_counter!(
        BUDGET_EXHAUSTED,
        "Retries refused by an agent's retry budget"
    );
}

const BUDGET_EXHAUSTED: &str = "agentgate_retry_budget_exhausted_total";

/// How long the budget remembers requests (as in Linkerd and Finagle).
const BUDGET_TTL: Duration = Duration::from_secs(10);

/// The retry policy of one agent, for `tower::retry::Retry`.
///
/// Everything shared — config, budget, RNG — is behind an `Arc`. The attempt number
/// is the request's own ([`RetryBody::attempt`]), not the policy's: tower's `Retry`
/// calls `clone_request` on the service's policy before it clones the policy into the
/// response future, so state kept in the policy there would leak into the next call
/// made through the same service. The one per-request field, the previous delay, is
/// only changed in `retry`, on the response future's clone.
#[derive(Clone)]
pub struct RetryPolicy {
    shared: Arc<Shared>,
    prev_delay: Duration,
}

struct Shared {
    agent: Arc<str>,
    config: RetryConfig,
    /// The statuses of `retry_on`, looked up on every response.
    retry_statuses: StatusSet,
    backoff: Backoff,
    budget: RetryBudget,
    rng: Option<Mutex<SmallRng>>,
    budget_exhausted: Counter,
}

/// A set of HTTP statuses (100–999), one bit each.
#[derive(Clone, Copy, Debug, Default)]
struct StatusSet([u64; 16]);

/// Why a failed attempt will not be retried (for logs and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoRetry {
    /// `max_attempts` reached.
    Attempts,
    /// The failure is not in `retry_on`, or is never retried (circuit open, bad response).
    NotRetryable,
    /// A non-idempotent request that may have reached the agent.
    NotIdempotent,
    /// The agent's `Retry-After` is longer than `max_retry_after`.
    RetryAfterTooLong,
    /// The backoff would end past the caller's deadline.
    Deadline,
    /// The query's `retry_allowance` is used up.
    Allowance,
    /// The agent's retry budget is used up.
    Budget,
}

// === impl RetryPolicy ===

impl RetryPolicy {
    /// A policy for `agent`. Fails if `config` does not validate.
    pub fn try_new(agent: impl Into<Arc<str>>, config: RetryConfig) -> Result<Self, ConfigError> {
        Self::build(agent.into(), config, None)
    }

    /// A policy whose jitter comes from an RNG seeded with `seed` (deterministic tests).
    pub fn try_with_seed(
        agent: impl Into<Arc<str>>,
        config: RetryConfig,
        seed: u64,
    ) -> Result<Self, ConfigError> {
        Self::build(agent.into(), config, Some(SmallRng::seed_from_u64(seed)))
    }

    fn build(
        agent: Arc<str>,
        config: RetryConfig,
        rng: Option<SmallRng>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let budget = RetryBudget::new(
            BUDGET_TTL,
            config.budget_min_per_sec,
            config.budget_ratio as f32,
        );
        let backoff = Backoff {
            base: config.base_delay,
            max: config.max_delay,
            jitter: config.jitter,
        };
        let budget_exhausted = metrics::counter!(BUDGET_EXHAUSTED, "agent" => agent.to_string());
        Ok(Self {
            prev_delay: config.base_delay,
            shared: Arc::new(Shared {
                retry_statuses: StatusSet::of(&config.retry_on),
                agent,
                config,
                backoff,
                budget,
                rng: rng.map(Mutex::new),
                budget_exhausted,
            }),
        })
    }

    /// The agent's name.
    pub fn agent(&self) -> &str {
        &self.shared.agent
    }

    /// The configuration.
    pub fn config(&self) -> &RetryConfig {
        &self.shared.config
    }

    /// Decides whether attempt `req.body().attempt()` of `req`, which ended in `result`,
    /// is retried, and after how long.
    pub fn decide<B>(
        &mut self,
        req: &Request<RetryBody>,
        result: &Result<Response<B>, BoxError>,
    ) -> Result<Duration, NoRetry> {
        let cfg = &self.shared.config;
        let (retry_after, nothing_sent) = match result {
            Ok(res) => {
                let status = res.status().as_u16();
                if !self.shared.retry_statuses.contains(status) {
                    return Err(NoRetry::NotRetryable);
                }
                let retry_after = (cfg.honor_retry_after && matches!(status, 429 | 503))
                    .then(|| retry_after_from_headers(res.headers(), SystemTime::now()))
                    .flatten();
                (retry_after, false)
            }
            Err(err) => {
                if is_caused_by::<CircuitOpen>(&**err) {
                    return Err(NoRetry::NotRetryable);
                }
                let class = classify_error(&**err);
                let listed = match class {
                    FailureClass::Connect => cfg.retry_on.contains(&RetryOn::Connect),
                    FailureClass::Timeout => cfg.retry_on.contains(&RetryOn::Timeout),
                    FailureClass::Reset => cfg.retry_on.contains(&RetryOn::Reset),
                    _ => false,
                };
                if !listed || !class.is_retryable() {
                    return Err(NoRetry::NotRetryable);
                }
                (None, class == FailureClass::Connect)
            }
        };
        let sent = req.body().attempt();
        if sent >= cfg.max_attempts {
            return Err(NoRetry::Attempts);
        }
        if !(nothing_sent || cfg.retry_non_idempotent || is_idempotent(req)) {
            return Err(NoRetry::NotIdempotent);
        }
        let mut delay = self.next_delay(sent);
        if let Some(ra) = retry_after {
            if ra > cfg.max_retry_after {
                return Err(NoRetry::RetryAfterTooLong);
            }
            delay = delay.max(ra);
        }
        if let Some(Deadline(deadline)) = req.extensions().get::<Deadline>() {
            if Instant::now() + delay >= *deadline {
                return Err(NoRetry::Deadline);
            }
        }
        let allowance = req.extensions().get::<RetryAllowance>();
        if allowance.is_some_and(|a| a.remaining() == 0) {
            return Err(NoRetry::Allowance);
        }
        if !self.shared.budget.withdraw() {
            self.shared.budget_exhausted.increment(1);
            return Err(NoRetry::Budget);
        }
        if allowance.is_some_and(|a| !a.try_take()) {
            return Err(NoRetry::Allowance);
        }
        self.prev_delay = delay;
        Ok(delay)
    }

    /// The delay before retry `n` (which follows attempt `n`).
    fn next_delay(&self, n: u32) -> Duration {
        match &self.shared.rng {
            Some(rng) => {
                let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
                self.shared.backoff.delay(n, self.prev_delay, &mut *rng)
            }
            None => self
                .shared
                .backoff
                .delay(n, self.prev_delay, &mut rand::rng()),
        }
    }
}

// === impl StatusSet ===

impl StatusSet {
    fn of(list: &[RetryOn]) -> Self {
        let mut set = Self::default();
        for entry in list {
            if let RetryOn::Status(code) = *entry {
                let i = usize::from(code);
                if i < 1024 {
                    set.0[i / 64] |= 1 << (i % 64);
                }
            }
        }
        set
    }

    #[inline]
    fn contains(&self, code: u16) -> bool {
        let i = usize::from(code);
        i < 1024 && self.0[i / 64] & (1 << (i % 64)) != 0
    }
}

/// Safe to send twice: an idempotent method (RFC 9110 §9.2.2) or an `Idempotency-Key`.
fn is_idempotent<B>(req: &Request<B>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || req.headers().contains_key("idempotency-key")
}

impl<B> Policy<Request<RetryBody>, Response<B>, BoxError> for RetryPolicy {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        req: &mut Request<RetryBody>,
        result: &mut Result<Response<B>, BoxError>,
    ) -> Option<Self::Future> {
        let delay = self.decide(req, result).ok()?;
        // `req` is the copy `clone_request` kept: number it for the attempt it becomes
        // (the `Attempt` stage turns the number into `x-agentgate-attempt`).
        let next = req.body().attempt() + 1;
        req.body_mut().set_attempt(next);
        if let Some(ledger) = req.extensions().get::<AttemptLedger>() {
            ledger.retry_scheduled(next, delay);
        }
        // Keep `x-agentgate-deadline-ms` true for the retry: the time left when it is sent.
        if let Some(Deadline(deadline)) = req.extensions().get::<Deadline>().copied() {
            if req.headers().contains_key(DEADLINE_HEADER) {
                let at = Instant::now() + delay;
                let left = deadline.saturating_duration_since(at).as_millis() as u64;
                req.headers_mut()
                    .insert(DEADLINE_HEADER, http::HeaderValue::from(left));
            }
        }
        Some(Box::pin(tokio::time::sleep(delay)))
    }

    fn clone_request(&mut self, req: &Request<RetryBody>) -> Option<Request<RetryBody>> {
        let attempt = req.body().attempt();
        if attempt == 1 {
            // Every original request earns the budget its share of retries.
            self.shared.budget.deposit();
        }
        // No copy is needed when this is the last attempt we would make.
        if attempt >= self.shared.config.max_attempts {
            return None;
        }
        let body = req.body().try_clone()?;
        let mut copy = Request::new(body);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        // The copy still carries this attempt's number: `retry` renumbers it if it is
        // ever sent. It has no `x-agentgate-attempt` header: the `Attempt` stage under
        // tower's `Retry` adds it to each attempt after this copy was made.
        Some(copy)
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("agent", &self.shared.agent)
            .field("config", &self.shared.config)
            .finish()
    }
}
