//! The state one breaker shares between its layer, every service it wraps, every clone
//! of those, and its handles.
//!
//! The closed-state path touches only atomics: the packed `state word`
//! (generation · state), the consecutive-failure counter and the sliding window. The
//! mutex around the [`Machine`] is taken only to change state, to admit half-open
//! probes, and to reject once an open period may have ended.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use agentgate_classify::{Classified, Outcome};
use rand::rngs::SmallRng;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::handle::{ManualChange, Snapshot, Transition};
use crate::metrics::Metrics;
use crate::state::{Change, Decision, Machine, Mode, Reason, State};
use crate::window::Window;
use crate::{CircuitBreakerConfig, CircuitOpen};

const STATE_BITS: u32 = 3;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;
/// `reject_until` value for "no lock-free rejection".
const NO_DEADLINE: u64 = 0;
/// `reject_until` value for a forced-open breaker without expiry.
const FOREVER: u64 = u64::MAX;
const EVENT_CAPACITY: usize = 256;

/// One breaker: the shared [`Core`] and one reference-count domain per shard.
///
/// A call's response future must keep the breaker alive until it records its outcome.
/// Cloning one `Arc` per call would make every core write the same reference count;
/// instead each thread clones the `Arc<Shard>` of its own shard.
#[derive(Debug)]
pub(crate) struct Breaker {
    core: Arc<Core>,
    shards: Box<[Arc<Shard>]>,
}

/// What a response future holds: the core, and which shard of the window to count in.
///
/// Aligned so that the reference counts of two shards never share a cache line.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Shard {
    core: Arc<Core>,
    index: usize,
}

#[derive(Debug)]
pub(crate) struct Core {
    name: Arc<str>,
    config: CircuitBreakerConfig,
    origin: Instant,
    /// `generation << STATE_BITS | state index`; changes only under the machine's lock.
    word: AtomicU64,
    /// Nanoseconds since `origin` until which open/forced-open rejects without the lock.
    reject_until: AtomicU64,
    consecutive: AtomicU32,
    rejected: AtomicU64,
    /// [`CircuitBreakerConfig::windowed`]: outcomes are counted in `window`.
    windowed: bool,
    window: Window,
    machine: Mutex<Machine>,
    events: broadcast::Sender<Transition>,
    metrics: Metrics,
}

/// What the breaker decided for one call, carried from `poll_ready` to the response.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Closed: the outcome is counted if the breaker is still closed when it arrives.
    Closed,
    /// Disabled: nothing is counted.
    Disabled,
    /// A half-open probe holding one permit.
    Probe(ProbePermit),
    /// Rejected without touching the inner service.
    Rejected {
        state: State,
        retry_after: Option<Duration>,
    },
}

/// One of the `half_open_max_calls` permits. Dropping it unused gives it back.
#[derive(Debug)]
pub(crate) struct ProbePermit {
    breaker: Arc<Core>,
    generation: u64,
    used: bool,
}

// === impl Breaker ===

impl Breaker {
    pub(crate) fn new(
        name: Arc<str>,
        config: CircuitBreakerConfig,
        jitter: f64,
        rng: SmallRng,
    ) -> Self {
        let core = Arc::new(Core::new(name, config, jitter, rng, shard_count()));
        let shards = (0..core.window.shards())
            .map(|index| {
                Arc::new(Shard {
                    core: core.clone(),
                    index,
                })
            })
            .collect();
        Self { core, shards }
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The calling thread's shard.
    #[inline]
    pub(crate) fn shard(&self) -> Arc<Shard> {
        self.shards[thread_shard() & (self.shards.len() - 1)].clone()
    }
}

/// Shards: four per CPU (so threads that outnumber CPUs rarely share one), rounded up to
/// a power of two, between 4 and 64.
fn shard_count() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus * 4).next_power_of_two().clamp(4, 64)
}

/// A small number per thread, handed out in turn, so threads spread over the shards.
#[inline]
fn thread_shard() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|s| {
        let mut v = s.get();
        if v == usize::MAX {
            v = NEXT.fetch_add(1, Ordering::Relaxed);
            s.set(v);
        }
        v
    })
}

// === impl Shard ===

impl Shard {
    /// Records the outcome of a closed-state call that finished. `start` is the call's
    /// [`Core::stamp`], or 0 when slow calls are not detected.
    #[inline]
    pub(crate) fn finish_closed(
        &self,
        classified: Classified,
        start: u64,
        now: impl FnOnce() -> Instant,
    ) {
        if start == 0 {
            self.core.record_closed(self.index, classified, None, now);
        } else {
            self.finish_timed(classified, start, now());
        }
    }

    /// A closed-state call timed for slow-call detection.
    #[inline(never)]
    fn finish_timed(&self, classified: Classified, start: u64, now: Instant) {
        let elapsed = self.core.elapsed_since(start, now);
        self.core
            .record_closed(self.index, classified, Some(elapsed), || now);
    }

    /// Records a probe's outcome, once (a permit already used records nothing).
    #[inline(never)]
    pub(crate) fn finish_probe(
        &self,
        permit: &mut ProbePermit,
        classified: Classified,
        start: u64,
        now: Instant,
    ) {
        if permit.used {
            return;
        }
        permit.used = true;
        let elapsed = (start != 0).then(|| self.core.elapsed_since(start, now));
        self.core
            .record_probe(permit.generation, classified, elapsed, now);
    }

    pub(crate) fn core(&self) -> &Core {
        &self.core
    }
}

// === impl Core ===

impl Core {
    fn new(
        name: Arc<str>,
        config: CircuitBreakerConfig,
        jitter: f64,
        rng: SmallRng,
        shards: usize,
    ) -> Self {
        let origin = Instant::now();
        let machine = Machine::new(
            config.open_duration,
            config.max_open_duration,
            config.half_open_max_calls,
            jitter,
            rng,
        );
        Self {
            windowed: config.windowed(),
            window: Window::new(config.window, origin, shards),
            metrics: Metrics::new(&name),
            events: broadcast::channel(EVENT_CAPACITY).0,
            name,
            config,
            origin,
            word: AtomicU64::new(State::Closed.index() as u64),
            reject_until: AtomicU64::new(NO_DEADLINE),
            consecutive: AtomicU32::new(0),
            rejected: AtomicU64::new(0),
            machine: Mutex::new(machine),
        }
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub(crate) fn config(&self) -> &CircuitBreakerConfig {
        &self.config
    }

    #[inline]
    pub(crate) fn slow_calls_enabled(&self) -> bool {
        self.config.slow_calls_enabled()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.events.subscribe()
    }

    /// A call's start as nanoseconds since the breaker was built, plus one (so that 0
    /// can mean "not timed"): eight plain bytes in the response future.
    #[inline]
    pub(crate) fn stamp(&self, now: Instant) -> u64 {
        self.nanos(now) + 1
    }

    /// The time since a [`Core::stamp`].
    fn elapsed_since(&self, start: u64, now: Instant) -> Duration {
        Duration::from_nanos(self.nanos(now).saturating_sub(start - 1))
    }

    #[inline]
    fn nanos(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_nanos() as u64
    }

    fn lock(&self) -> MutexGuard<'_, Machine> {
        // A panic while holding the lock cannot leave the machine half-updated in a way
        // that matters more than refusing every later call would.
        self.machine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides for one call. `now` is read only when the breaker is not closed, so the
    /// closed path costs one atomic load (inlined into the caller; the rest is not).
    #[inline]
    pub(crate) fn admit(self: &Arc<Self>, now: impl FnOnce() -> Instant) -> Admission {
        if self.is_closed() {
            return Admission::Closed;
        }
        self.admit_not_closed(now)
    }

    #[cold]
    #[inline(never)]
    fn admit_not_closed(self: &Arc<Self>, now: impl FnOnce() -> Instant) -> Admission {
        let word = self.word.load(Ordering::Acquire);
        match State::from_index(word & STATE_MASK) {
            State::Closed => Admission::Closed,
            State::Disabled => Admission::Disabled,
            state @ (State::Open | State::ForcedOpen) => {
                let until = self.reject_until.load(Ordering::Acquire);
                if until == FOREVER {
                    return Admission::Rejected {
                        state,
                        retry_after: None,
                    };
                }
                let now = now();
                match self.time_left(until, now) {
                    Some(left) => Admission::Rejected {
                        state,
                        retry_after: Some(left),
                    },
                    None => self.admit_slow(now),
                }
            }
            State::HalfOpen => self.admit_slow(now()),
        }
    }

    /// How long an open period ending at `until` (nanoseconds since the breaker was
    /// built, as `reject_until` holds it) still has at `now`; `None` once it is over.
    #[inline]
    fn time_left(&self, until: u64, now: Instant) -> Option<Duration> {
        let at = self.nanos(now);
        (at < until).then(|| Duration::from_nanos(until - at))
    }

    fn admit_slow(self: &Arc<Self>, now: Instant) -> Admission {
        let mut m = self.lock();
        self.advance(&mut m, now);
        match m.decide(now) {
            Decision::Pass(State::Disabled) => Admission::Disabled,
            Decision::Pass(_) => Admission::Closed,
            Decision::Probe { generation } => Admission::Probe(ProbePermit {
                breaker: self.clone(),
                generation,
                used: false,
            }),
            Decision::Reject { state, retry_after } => Admission::Rejected { state, retry_after },
        }
    }

    /// Whether the breaker is closed right now (one atomic load).
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.word.load(Ordering::Acquire) & STATE_MASK == State::Closed.index() as u64
    }

    /// Counts a rejection and builds its error.
    pub(crate) fn reject(&self, state: State, retry_after: Option<Duration>) -> CircuitOpen {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.metrics.rejected();
        CircuitOpen::new(self.name.clone(), state, retry_after)
    }

    /// Records the outcome of an admitted call that finished, counting it in `shard`
    /// (the unit tests' way in; the response future goes through [`Shard`]).
    #[cfg(test)]
    pub(crate) fn finish(
        &self,
        shard: usize,
        admission: Admission,
        classified: Classified,
        elapsed: Option<Duration>,
        now: impl FnOnce() -> Instant,
    ) {
        match admission {
            Admission::Closed => self.record_closed(shard, classified, elapsed, now),
            Admission::Probe(mut permit) => {
                permit.used = true;
                self.record_probe(permit.generation, classified, elapsed, now());
            }
            Admission::Disabled | Admission::Rejected { .. } => {}
        }
    }

    #[inline]
    fn retry_after_trip(&self, classified: &Classified) -> Option<Duration> {
        if !self.config.open_on_retry_after {
            return None;
        }
        classified
            .retry_after
            .map(|d| d.min(self.config.max_retry_after))
            .filter(|d| !d.is_zero())
    }

    #[inline]
    fn is_slow(&self, elapsed: Option<Duration>) -> bool {
        self.slow_calls_enabled() && elapsed.is_some_and(|e| e > self.config.slow_call_duration)
    }

    /// Counts a closed-state call's outcome: in the window, and in the consecutive
    /// count; trips when a threshold is reached.
    #[inline]
    fn record_closed(
        &self,
        shard: usize,
        classified: Classified,
        elapsed: Option<Duration>,
        now: impl FnOnce() -> Instant,
    ) {
        let failure = match classified.outcome {
            Outcome::Success => false,
            Outcome::Failure(class) if class.counts_for_breaker() => true,
            // Our own rejections and cancellations say nothing about the agent.
            Outcome::Failure(_) => return,
        };
        // A call admitted before a trip that ends after it says nothing new; one that
        // ends in a later closed period is a fresh outcome and counts there.
        let word = self.word.load(Ordering::Acquire);
        if word & STATE_MASK != State::Closed.index() as u64 {
            return;
        }
        let slow = self.is_slow(elapsed);
        let may_trip = failure || slow || classified.retry_after.is_some();
        if self.windowed {
            let now = now();
            self.window.record(shard, now, failure, slow);
            if may_trip {
                return self.check_trips(word >> STATE_BITS, &classified, failure, slow, now);
            }
        } else if may_trip {
            // Without a window only an outcome that may trip needs the time (for the
            // open period); a success reads no clock.
            return self.check_trips(word >> STATE_BITS, &classified, failure, slow, now());
        }
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            // A success ends a run of failures.
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// The rest of [`Core::record_closed`] for an outcome that may trip the breaker:
    /// a failure, a slow call, or an answer carrying `Retry-After`.
    #[inline(never)]
    fn check_trips(
        &self,
        generation: u64,
        classified: &Classified,
        failure: bool,
        slow: bool,
        now: Instant,
    ) {
        if let Some(open_for) = self.retry_after_trip(classified) {
            self.trip(generation, Reason::RetryAfter, Some(open_for), now);
            return;
        }
        if failure {
            let consecutive = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
            let limit = self.config.consecutive_failures;
            if limit > 0 && consecutive >= limit {
                self.trip(generation, Reason::Consecutive, None, now);
                return;
            }
        } else if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        if (failure || slow) && self.windowed {
            let totals = self.window.totals(now);
            if totals.calls >= u64::from(self.config.minimum_calls) {
                if self.config.rate_trip_enabled()
                    && totals.failure_rate() >= self.config.failure_rate_threshold
                {
                    self.trip(generation, Reason::Rate, None, now);
                } else if self.slow_calls_enabled()
                    && totals.slow_rate() >= self.config.slow_call_rate_threshold
                {
                    self.trip(generation, Reason::Slow, None, now);
                }
            }
        }
    }

    fn record_probe(
        &self,
        generation: u64,
        classified: Classified,
        elapsed: Option<Duration>,
        now: Instant,
    ) {
        let mut m = self.lock();
        let failure = match classified.outcome {
            Outcome::Success => false,
            Outcome::Failure(class) if class.counts_for_breaker() => true,
            Outcome::Failure(_) => {
                m.release_probe(generation);
                return;
            }
        };
        // With slow-call detection on, a slow probe is a failed probe: closing on it would
        // only trip again on the slow-call rate.
        let success = !failure && !self.is_slow(elapsed);
        if let Some(change) =
            m.probe_result(generation, success, self.retry_after_trip(&classified), now)
        {
            self.apply(&m, change, now);
        }
    }

    fn trip(&self, generation: u64, reason: Reason, open_for: Option<Duration>, now: Instant) {
        let mut m = self.lock();
        if let Some(change) = m.trip(generation, reason, open_for, now) {
            self.apply(&m, change, now);
        }
    }

    /// Applies time-driven changes due at `now`.
    fn advance(&self, m: &mut Machine, now: Instant) {
        if let Some(change) = m.advance(now) {
            self.apply(m, change, now);
        }
    }

    /// Publishes a change the machine made: atomics first (so the lock-free paths see
    /// it), then metrics and the event.
    fn apply(&self, m: &Machine, change: Change, now: Instant) {
        let totals = self.window.totals(now);
        let consecutive = self.consecutive.load(Ordering::Relaxed);
        let until = match m.reject_until() {
            (_, true) => FOREVER,
            (Some(until), _) => self.nanos(until).max(1),
            (None, _) => NO_DEADLINE,
        };
        self.reject_until.store(until, Ordering::Release);
        if change.from == State::Closed || change.to == State::Closed {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        if change.to == State::Closed {
            self.window.clear();
        }
        let word = (m.generation() << STATE_BITS) | change.to.index() as u64;
        self.word.store(word, Ordering::Release);

        self.metrics.transition(&change);
        let wall = SystemTime::now()
            .checked_sub(Instant::now().saturating_duration_since(change.at))
            .unwrap_or_else(SystemTime::now);
        // No receiver is not an error: events are for whoever listens.
        let _ = self.events.send(Transition {
            agent: self.name.clone(),
            from: change.from,
            to: change.to,
            reason: change.reason,
            at: change.at,
            wall,
            calls_in_window: totals.calls,
            failure_rate: totals.failure_rate(),
            consecutive_failures: consecutive,
        });
    }

    pub(crate) fn manual(&self, op: Manual, now: Instant) -> ManualChange {
        let mut m = self.lock();
        self.advance(&mut m, now);
        let change = match op {
            Manual::Reset => m.reset(now),
            Manual::ForceOpen(d) => m.force_open(d, now),
            Manual::Disable => m.disable(now),
        };
        self.apply(&m, change, now);
        ManualChange {
            agent: self.name.clone(),
            from: change.from,
            to: change.to,
        }
    }

    pub(crate) fn snapshot(&self, now: Instant) -> Snapshot {
        let mut m = self.lock();
        self.advance(&mut m, now);
        let totals = self.window.totals(now);
        let mode = m.mode();
        let half_open_in_flight = match mode {
            Mode::HalfOpen { in_flight, .. } => in_flight,
            _ => 0,
        };
        let opened_at = m.opened_at().map(|at| {
            SystemTime::now()
                .checked_sub(now.saturating_duration_since(at))
                .unwrap_or_else(SystemTime::now)
        });
        Snapshot {
            agent: self.name.clone(),
            state: mode.state(),
            trip_reason: m.trip_reason(),
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
            failure_rate: totals.failure_rate(),
            slow_call_rate: totals.slow_rate(),
            calls_in_window: totals.calls,
            failures_in_window: totals.failures,
            slow_calls_in_window: totals.slow,
            opened_at,
            retry_after: m.time_left(now),
            half_open_in_flight,
            transitions: m.transitions(),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

/// An operator action.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Manual {
    Reset,
    ForceOpen(Option<Duration>),
    Disable,
}

// === impl ProbePermit ===

impl Drop for ProbePermit {
    fn drop(&mut self) {
        if !self.used {
            self.breaker.lock().release_probe(self.generation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentgate_classify::FailureClass;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn breaker(config: CircuitBreakerConfig) -> Arc<Core> {
        config.validate().unwrap();
        Arc::new(Core::new(
            "t".into(),
            config,
            0.0,
            SmallRng::seed_from_u64(1),
            2,
        ))
    }

    const OK: Classified = Classified::SUCCESS;
    const FAIL: Classified = Classified::failure(FailureClass::Status);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Admits and finishes one call at `now`.
    fn run(b: &Arc<Core>, now: Instant, outcome: Classified) -> bool {
        match b.admit(|| now) {
            Admission::Rejected { .. } => false,
            a => {
                b.finish(0, a, outcome, None, || now);
                true
            }
        }
    }

    fn state(b: &Core, now: Instant) -> State {
        b.snapshot(now).state
    }

    #[test]
    fn rate_trip_waits_for_minimum_calls() {
        let t0 = Instant::now();
        let b = breaker(CircuitBreakerConfig {
            consecutive_failures: 0,
            minimum_calls: 10,
            failure_rate_threshold: 0.5,
            ..Default::default()
        });
        for i in 0..4 {
            assert!(run(&b, t0, OK), "{i}");
            assert!(run(&b, t0, FAIL));
        }
        // 8 calls, 50% failures: not yet minimum_calls.
        assert_eq!(state(&b, t0), State::Closed);
        assert!(run(&b, t0, OK));
        assert!(run(&b, t0, FAIL)); // 10 calls, 5 failures: trips.
        let snap = b.snapshot(t0);
        assert_eq!(
            (snap.state, snap.trip_reason),
            (State::Open, Some(Reason::Rate))
        );
    }

    #[test]
    fn old_failures_leave_the_window() {
        let t0 = Instant::now();
        let b = breaker(CircuitBreakerConfig {
            consecutive_failures: 0,
            minimum_calls: 4,
            window: secs(10),
            ..Default::default()
        });
        for _ in 0..3 {
            run(&b, t0, FAIL);
        }
        let later = t0 + secs(11);
        run(&b, later, FAIL);
        let snap = b.snapshot(later);
        assert_eq!((snap.state, snap.calls_in_window), (State::Closed, 1));
    }

    #[test]
    fn slow_calls_trip_on_slow_rate() {
        let t0 = Instant::now();
        let b = breaker(CircuitBreakerConfig {
            minimum_calls: 4,
            slow_call_duration: Duration::from_millis(100),
            slow_call_rate_threshold: 0.75,
            ..Default::default()
        });
        let slow = Some(Duration::from_millis(150));
        let fast = Some(Duration::from_millis(100)); // not slower than the limit
        for elapsed in [fast, slow, slow] {
            let a = b.admit(|| t0);
            b.finish(1, a, OK, elapsed, || t0);
        }
        assert_eq!(state(&b, t0), State::Closed);
        let a = b.admit(|| t0);
        b.finish(0, a, OK, slow, || t0);
        assert_eq!(b.snapshot(t0).trip_reason, Some(Reason::Slow));
    }

    #[test]
    fn retry_after_trips_for_the_capped_delay() {
        let t0 = Instant::now();
        let b = breaker(CircuitBreakerConfig {
            max_retry_after: secs(60),
            ..Default::default()
        });
        let throttled = Classified {
            outcome: Outcome::Success,
            retry_after: Some(secs(3600)),
        };
        run(&b, t0, throttled);
        let snap = b.snapshot(t0);
        assert_eq!(snap.trip_reason, Some(Reason::RetryAfter));
        assert_eq!(snap.retry_after, Some(secs(60)));
        assert_eq!(state(&b, t0 + secs(59)), State::Open);
        assert_eq!(state(&b, t0 + secs(60)), State::HalfOpen);

        // Retry-After: 0 and open_on_retry_after = false never open.
        let b = breaker(CircuitBreakerConfig::default());
        run(
            &b,
            t0,
            Classified {
                outcome: Outcome::Success,
                retry_after: Some(Duration::ZERO),
            },
        );
        assert_eq!(state(&b, t0), State::Closed);
        let b = breaker(CircuitBreakerConfig {
            open_on_retry_after: false,
            ..Default::default()
        });
        run(&b, t0, throttled);
        assert_eq!(state(&b, t0), State::Closed);
    }

    #[test]
    fn successes_reset_consecutive_and_ignored_outcomes_do_not() {
        let t0 = Instant::now();
        let b = breaker(CircuitBreakerConfig {
            consecutive_failures: 3,
            ..Default::default()
        });
        run(&b, t0, FAIL);
        run(&b, t0, FAIL);
        run(&b, t0, OK);
        run(&b, t0, FAIL);
        run(&b, t0, FAIL);
        assert_eq!(b.snapshot(t0).consecutive_failures, 2);
        // Our own rejections and cancellations neither count nor reset.
        run(&b, t0, Classified::failure(FailureClass::Rejected));
        run(&b, t0, Classified::failure(FailureClass::Cancelled));
        let snap = b.snapshot(t0);
        assert_eq!((snap.consecutive_failures, snap.calls_in_window), (2, 5));
        run(&b, t0, Classified::failure(FailureClass::Timeout));
        assert_eq!(b.snapshot(t0).trip_reason, Some(Reason::Consecutive));
    }

    #[test]
    fn without_a_rate_trip_successes_read_no_clock_and_failures_still_trip() {
        let t0 = Instant::now();
        let b = breaker(CircuitBreakerConfig {
            consecutive_failures: 3,
            failure_rate_threshold: 0.0,
            minimum_calls: 1,
            ..Default::default()
        });
        let admit = |b: &Arc<Core>| b.admit(|| panic!("a closed breaker read the clock"));
        // Successes: never a clock read, nothing in the window.
        for _ in 0..10 {
            let a = admit(&b);
            b.finish(0, a, OK, None, || panic!("a success read the clock"));
        }
        // Two failures out of twelve calls would trip a 1-call-minimum rate at any
        // threshold; with the rate off only the run of failures counts.
        for _ in 0..2 {
            let a = admit(&b);
            b.finish(0, a, FAIL, None, || t0);
        }
        let snap = b.snapshot(t0);
        assert_eq!(
            (snap.state, snap.consecutive_failures, snap.calls_in_window),
            (State::Closed, 2, 0)
        );
        let a = admit(&b);
        b.finish(0, a, OK, None, || panic!("a success read the clock"));
        assert_eq!(b.snapshot(t0).consecutive_failures, 0);
        // The third failure in a row trips, and the open period starts at its time.
        let at = t0 + secs(5);
        for _ in 0..3 {
            let a = admit(&b);
            b.finish(0, a, FAIL, None, || at);
        }
        let snap = b.snapshot(at);
        assert_eq!(
            (snap.state, snap.trip_reason, snap.retry_after),
            (State::Open, Some(Reason::Consecutive), Some(secs(60)))
        );
        assert_eq!(state(&b, at + secs(60)), State::HalfOpen);

        // Retry-After still trips a window-less breaker.
        let b = breaker(CircuitBreakerConfig {
            failure_rate_threshold: 0.0,
            ..Default::default()
        });
        run(
            &b,
            t0,
            Classified {
                outcome: Outcome::Success,
                retry_after: Some(secs(7)),
            },
        );
        assert_eq!(b.snapshot(t0).trip_reason, Some(Reason::RetryAfter));
    }

    #[test]
    fn failed_probe_rounds_double_the_open_period() {
        let t0 = Instant::now();
        let b = breaker(CircuitBreakerConfig {
            consecutive_failures: 1,
            open_duration: secs(10),
            max_open_duration: secs(30),
            ..Default::default()
        });
        run(&b, t0, FAIL);
        let mut now = t0;
        for expected in [10, 20, 30, 30] {
            assert_eq!(b.snapshot(now).retry_after, Some(secs(expected)));
            now += secs(expected);
            assert_eq!(state(&b, now), State::HalfOpen);
            assert!(run(&b, now, FAIL), "probe admitted");
        }
        assert!(run(&b, now + secs(30), OK));
        let snap = b.snapshot(now + secs(30));
        assert_eq!(
            (snap.state, snap.calls_in_window, snap.trip_reason),
            (State::Closed, 0, None)
        );
        // The doubling starts over after closing.
        run(&b, now + secs(30), FAIL);
        assert_eq!(b.snapshot(now + secs(30)).retry_after, Some(secs(10)));
    }

    #[test]
    fn manual_changes_and_forced_expiry() {
        let t0 = Instant::now();
        let b = breaker(CircuitBreakerConfig::default());
        let mut events = b.subscribe();
        let change = b.manual(Manual::ForceOpen(Some(secs(300))), t0);
        assert_eq!((change.from, change.to), (State::Closed, State::ForcedOpen));
        assert!(!run(&b, t0 + secs(299), OK));
        assert_eq!(state(&b, t0 + secs(300)), State::HalfOpen);
        let change = b.manual(Manual::Disable, t0 + secs(301));
        assert_eq!((change.from, change.to), (State::HalfOpen, State::Disabled));
        for _ in 0..100 {
            assert!(run(&b, t0 + secs(301), FAIL));
        }
        assert_eq!(state(&b, t0 + secs(301)), State::Disabled);
        let change = b.manual(Manual::Reset, t0 + secs(302));
        assert_eq!((change.from, change.to), (State::Disabled, State::Closed));
        let got: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|e| (e.from, e.to, e.reason))
            .collect();
        assert_eq!(
            got,
            [
                (State::Closed, State::ForcedOpen, Reason::Manual),
                (State::ForcedOpen, State::HalfOpen, Reason::ForceExpired),
                (State::HalfOpen, State::Disabled, Reason::Manual),
                (State::Disabled, State::Closed, Reason::Manual),
            ]
        );
        // Forced open without expiry rejects lock-free, forever.
        b.manual(Manual::ForceOpen(None), t0);
        assert!(!run(&b, t0 + secs(1_000_000), OK));
    }

    // --- properties ---

    #[derive(Clone, Debug)]
    enum Op {
        Admit,
        Finish(usize, u8),
        Drop(usize),
        Advance(u64),
        Reset,
        ForceOpen(Option<u64>),
        Disable,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Admit),
            6 => (any::<usize>(), 0u8..5).prop_map(|(i, o)| Op::Finish(i, o)),
            2 => any::<usize>().prop_map(Op::Drop),
            4 => (0u64..40_000).prop_map(Op::Advance),
            1 => Just(Op::Reset),
            1 => proptest::option::of(0u64..20_000).prop_map(Op::ForceOpen),
            1 => Just(Op::Disable),
        ]
    }

    fn outcome(code: u8) -> Classified {
        match code {
            0 => OK,
            1 => FAIL,
            2 => Classified::failure(FailureClass::Timeout),
            3 => Classified::failure(FailureClass::Cancelled),
            _ => Classified {
                outcome: Outcome::Failure(FailureClass::Status),
                retry_after: Some(Duration::from_millis(1500)),
            },
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// For any interleaving of calls, outcomes, cancellations, time and operator
        /// actions: never more than `half_open_max_calls` probes in flight; never closed
        /// except by a successful probe or a reset; the handle's state is the state the
        /// next call meets.
        #[test]
        fn breaker_invariants(
            max_probes in 1u32..4,
            consecutive in 1u32..4,
            windowed in any::<bool>(),
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let b = breaker(CircuitBreakerConfig {
                consecutive_failures: consecutive,
                // The window-less breaker (rate trip off) keeps the same invariants.
                failure_rate_threshold: if windowed { 0.5 } else { 0.0 },
                minimum_calls: 3,
                window: secs(10),
                open_duration: secs(5),
                max_open_duration: secs(20),
                half_open_max_calls: max_probes,
                ..Default::default()
            });
            let mut events = b.subscribe();
            let mut now = Instant::now();
            let mut open: Vec<Admission> = Vec::new();
            for op in ops {
                let mut probe_succeeded = false;
                match op {
                    Op::Admit => {
                        let a = b.admit(|| now);
                        if !matches!(a, Admission::Rejected { .. }) {
                            open.push(a);
                        }
                    }
                    Op::Finish(i, code) if !open.is_empty() => {
                        let a = open.swap_remove(i % open.len());
                        let outcome = outcome(code);
                        if let Admission::Probe(p) = &a {
                            probe_succeeded = outcome == OK && p.generation == b.lock().generation();
                        }
                        b.finish(i % 2, a, outcome, None, || now);
                    }
                    Op::Drop(i) if !open.is_empty() => {
                        drop(open.swap_remove(i % open.len()));
                    }
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                    Op::Reset => { b.manual(Manual::Reset, now); }
                    Op::ForceOpen(ms) => { b.manual(Manual::ForceOpen(ms.map(Duration::from_millis)), now); }
                    Op::Disable => { b.manual(Manual::Disable, now); }
                    _ => {}
                }

                // Never closed without a successful probe (or an operator's reset).
                while let Ok(t) = events.try_recv() {
                    if t.to == State::Closed {
                        prop_assert!(
                            t.reason == Reason::Manual || (t.reason == Reason::ProbeSuccess && probe_succeeded),
                            "closed by {:?}", t.reason
                        );
                        prop_assert_eq!(t.from, if t.reason == Reason::ProbeSuccess { State::HalfOpen } else { t.from });
                    }
                }

                // Never more probes in flight than permitted.
                let generation = b.lock().generation();
                let live_probes = open
                    .iter()
                    .filter(|a| matches!(a, Admission::Probe(p) if p.generation == generation))
                    .count();
                prop_assert!(live_probes <= max_probes as usize, "{live_probes} probes");

                // The handle's state is the state enforced on the next call.
                let snap = b.snapshot(now);
                prop_assert_eq!(snap.half_open_in_flight as usize, if snap.state == State::HalfOpen { live_probes } else { 0 });
                let probe = b.admit(|| now);
                match (snap.state, &probe) {
                    (State::Closed, Admission::Closed) | (State::Disabled, Admission::Disabled) => {}
                    (State::Open | State::ForcedOpen, Admission::Rejected { state, .. }) => prop_assert_eq!(*state, snap.state),
                    (State::HalfOpen, Admission::Probe(_)) => prop_assert!(live_probes < max_probes as usize),
                    (State::HalfOpen, Admission::Rejected { .. }) => prop_assert_eq!(live_probes, max_probes as usize),
                    (s, a) => prop_assert!(false, "snapshot says {:?}, call met {:?}", s, a),
                }
                drop(probe);
            }
        }
    }
}
