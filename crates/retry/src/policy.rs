//! Whether a failed attempt is tried again, and after how long (SPEC §5).

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use agentgate_classify::{classify_error, retry_after_from_headers, BoxError, FailureClass};
use http::request::Parts;
use http::{Method, Response};
use metrics::Counter;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::time::Instant;

use crate::{Backoff, ConfigError, RetryBudget, RetryConfig, RetryOn};

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

/// The retry policy of one agent: its config, its retry budget and its jitter's RNG.
/// Cheap to clone; clones share the budget.
#[derive(Clone)]
pub struct RetryPolicy {
    shared: Arc<Shared>,
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

/// Why a failed attempt is not retried (for logs and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoRetry {
    /// `max_attempts` reached.
    Attempts,
    /// The failure is not in `retry_on`, or is never retried (a refusal by one of our
    /// layers, a bad response, the caller's own body).
    NotRetryable,
    /// A non-idempotent request that may have reached the agent.
    NotIdempotent,
    /// The request body cannot be sent again (over `max_replay_body_bytes`, or still
    /// being sent by the attempt that failed).
    Body,
    /// The agent's `Retry-After` is longer than `max_retry_after`.
    RetryAfterTooLong,
    /// The backoff would end past the caller's deadline.
    Deadline,
    /// The query's `retry_allowance` is used up.
    Allowance,
    /// The agent's retry budget is used up.
    Budget,
    /// A protocol upgrade (`Upgrade: websocket`): a handshake is sent once, the client
    /// that asked for it decides whether to try again.
    Upgrade,
}

/// The instant by which the whole call must be done (request extension). The retry
/// policy never schedules a retry whose backoff would end past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline(pub Instant);

/// Retries left for a whole query, shared by all its stages (request extension;
/// SPEC's `retry_allowance`).
#[derive(Clone, Debug)]
pub struct RetryAllowance(Arc<AtomicU32>);

/// One failed attempt, as the policy weighs it.
#[derive(Debug)]
pub struct Attempted<'a, R> {
    /// The request's head (method, headers, extensions).
    pub head: &'a Parts,
    /// Which attempt it was (1 for the first).
    pub attempt: u32,
    /// How it ended.
    pub result: &'a Result<Response<R>, BoxError>,
    /// Whether its body could be sent again now.
    pub replayable: bool,
    /// The delay before it (for decorrelated jitter; `base_delay` before a retry).
    pub prev_delay: Duration,
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

    /// Counts an original request (not a retry), sent `now`, towards the budget.
    #[inline]
    pub(crate) fn deposit_at(&self, now: Instant) {
        self.shared.budget.deposit_at(now);
    }

    /// Decides whether a failed attempt is retried, and after how long. A retry it
    /// allows has been withdrawn from the budget and the query's allowance.
    pub fn decide<R>(&self, a: &Attempted<'_, R>) -> Result<Duration, NoRetry> {
        let cfg = &self.shared.config;
        let (retry_after, nothing_sent) = match a.result {
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
        if a.attempt >= cfg.max_attempts {
            return Err(NoRetry::Attempts);
        }
        if a.head.headers.contains_key(http::header::UPGRADE) {
            return Err(NoRetry::Upgrade);
        }
        if !(nothing_sent || cfg.retry_non_idempotent || is_idempotent(a.head)) {
            return Err(NoRetry::NotIdempotent);
        }
        if !a.replayable {
            return Err(NoRetry::Body);
        }
        let mut delay = self.next_delay(a.attempt, a.prev_delay);
        if let Some(ra) = retry_after {
            if ra > cfg.max_retry_after {
                return Err(NoRetry::RetryAfterTooLong);
            }
            delay = delay.max(ra);
        }
        if let Some(Deadline(deadline)) = a.head.extensions.get::<Deadline>() {
            if Instant::now() + delay >= *deadline {
                return Err(NoRetry::Deadline);
            }
        }
        let allowance = a.head.extensions.get::<RetryAllowance>();
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
        Ok(delay)
    }

    /// The delay before retry `n` (which follows attempt `n`).
    fn next_delay(&self, n: u32, prev: Duration) -> Duration {
        match &self.shared.rng {
            Some(rng) => {
                let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
                self.shared.backoff.delay(n, prev, &mut *rng)
            }
            None => self.shared.backoff.delay(n, prev, &mut rand::rng()),
        }
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
fn is_idempotent(head: &Parts) -> bool {
    matches!(
        head.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || head.headers.contains_key("idempotency-key")
}

// === impl RetryAllowance ===

impl RetryAllowance {
    /// `n` retries to share.
    pub fn new(n: u32) -> Self {
        Self(Arc::new(AtomicU32::new(n)))
    }

    /// Retries left.
    pub fn remaining(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// Takes one retry if any is left.
    pub fn try_take(&self) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}
