//! The breaker's state machine for everything but the closed-state counting: trips,
//! open periods, half-open probe permits, manual changes. Pure logic over an explicit
//! `now`, so it is tested without a runtime; the caller holds it behind a mutex that is
//! never taken on the closed-state path.

use std::fmt;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::Rng;
use tokio::time::Instant;

/// The state of a breaker (SPEC §4 `agentgate_circuit_breaker_state` label values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls flow and are counted.
    Closed,
    /// Calls are rejected until the open period ends.
    Open,
    /// A limited number of probes are let through.
    HalfOpen,
    /// Opened by an operator; rejects until reset or until its expiry (then half-open).
    ForcedOpen,
    /// Turned off by an operator: every call flows, nothing is counted.
    Disabled,
}

/// Why a transition happened. The first five are the SPEC's `trip_reason`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `consecutive_failures` failures in a row.
    Consecutive,
    /// The failure rate reached `failure_rate_threshold`.
    Rate,
    /// The slow-call rate reached `slow_call_rate_threshold`.
    Slow,
    /// A 429/503 carried `Retry-After`.
    RetryAfter,
    /// An operator acted through the handle (admin API).
    Manual,
    /// The open period ended: open → half_open.
    OpenElapsed,
    /// A forced-open period ended: forced_open → half_open.
    ForceExpired,
    /// A probe succeeded: half_open → closed.
    ProbeSuccess,
    /// A probe failed: half_open → open, with a longer open period.
    ProbeFailure,
}

/// One change of state, as computed by the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) from: State,
    pub(crate) to: State,
    pub(crate) reason: Reason,
    /// When the change took effect. Time-driven changes (open → half_open) are observed
    /// lazily but stamped with the instant they became due.
    pub(crate) at: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Closed,
    Open { until: Instant, round: u32 },
    HalfOpen { in_flight: u32, round: u32 },
    ForcedOpen { until: Option<Instant> },
    Disabled,
}

/// What the machine decides for a call that finds the breaker not closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Closed or disabled: let the call through (the caller counts it).
    Pass(State),
    /// Half-open and a permit was reserved for this generation.
    Probe { generation: u64 },
    /// Rejected, with the time left when known.
    Reject {
        state: State,
        retry_after: Option<Duration>,
    },
}

#[derive(Debug)]
pub(crate) struct Machine {
    mode: Mode,
    generation: u64,
    trip_reason: Option<Reason>,
    opened_at: Option<Instant>,
    transitions: u64,
    open_duration: Duration,
    max_open_duration: Duration,
    half_open_max_calls: u32,
    jitter: f64,
    rng: SmallRng,
}

// === impl State ===

impl State {
    /// Every state, in the order of the one-hot gauge.
    pub const ALL: [State; 5] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::Disabled,
    ];

    /// The SPEC name: `closed`, `open`, `half_open`, `forced_open`, `disabled`.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
        }
    }

    pub(crate) const fn index(self) -> usize {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
            State::ForcedOpen => 3,
            State::Disabled => 4,
        }
    }

    pub(crate) const fn from_index(i: u64) -> State {
        match i {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            _ => State::Disabled,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Reason ===

impl Reason {
    /// The label value: `consecutive`, `rate`, `slow`, `retry_after`, `manual`,
    /// `open_elapsed`, `force_expired`, `probe_success`, `probe_failure`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Consecutive => "consecutive",
            Reason::Rate => "rate",
            Reason::Slow => "slow",
            Reason::RetryAfter => "retry_after",
            Reason::Manual => "manual",
            Reason::OpenElapsed => "open_elapsed",
            Reason::ForceExpired => "force_expired",
            Reason::ProbeSuccess => "probe_success",
            Reason::ProbeFailure => "probe_failure",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Mode ===

impl Mode {
    pub(crate) fn state(&self) -> State {
        match self {
            Mode::Closed => State::Closed,
            Mode::Open { .. } => State::Open,
            Mode::HalfOpen { .. } => State::HalfOpen,
            Mode::ForcedOpen { .. } => State::ForcedOpen,
            Mode::Disabled => State::Disabled,
        }
    }
}

// === impl Machine ===

impl Machine {
    pub(crate) fn new(
        open_duration: Duration,
        max_open_duration: Duration,
        half_open_max_calls: u32,
        jitter: f64,
        rng: SmallRng,
    ) -> Self {
        Self {
            mode: Mode::Closed,
            generation: 0,
            trip_reason: None,
            opened_at: None,
            transitions: 0,
            open_duration,
            max_open_duration,
            half_open_max_calls,
            jitter,
            rng,
        }
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn trip_reason(&self) -> Option<Reason> {
        self.trip_reason
    }

    pub(crate) fn opened_at(&self) -> Option<Instant> {
        self.opened_at
    }

    pub(crate) fn transitions(&self) -> u64 {
        self.transitions
    }

    /// The instant until which calls are rejected without a lock, if any: the end of an
    /// open period, or `None` with `forever = true` for a forced-open without expiry.
    pub(crate) fn reject_until(&self) -> (Option<Instant>, bool) {
        match self.mode {
            Mode::Open { until, .. } => (Some(until), false),
            Mode::ForcedOpen { until: Some(until) } => (Some(until), false),
            Mode::ForcedOpen { until: None } => (None, true),
            _ => (None, false),
        }
    }

    /// Time left before the breaker admits probes, if it is rejecting for a known time.
    pub(crate) fn time_left(&self, now: Instant) -> Option<Duration> {
        match self.reject_until() {
            (Some(until), _) => Some(until.saturating_duration_since(now)),
            _ => None,
        }
    }

    /// Applies time-driven changes due at `now`.
    pub(crate) fn advance(&mut self, now: Instant) -> Option<Change> {
        match self.mode {
            Mode::Open { until, round } if now >= until => Some(self.set(
                Mode::HalfOpen {
                    in_flight: 0,
                    round,
                },
                Reason::OpenElapsed,
                until,
            )),
            Mode::ForcedOpen { until: Some(until) } if now >= until => Some(self.set(
                Mode::HalfOpen {
                    in_flight: 0,
                    round: 0,
                },
                Reason::ForceExpired,
                until,
            )),
            _ => None,
        }
    }

    /// Decides for a call arriving at `now` (after [`Machine::advance`]).
    pub(crate) fn decide(&mut self, now: Instant) -> Decision {
        match &mut self.mode {
            Mode::Closed => Decision::Pass(State::Closed),
            Mode::Disabled => Decision::Pass(State::Disabled),
            Mode::HalfOpen { in_flight, .. } => {
                if *in_flight < self.half_open_max_calls {
                    *in_flight += 1;
                    Decision::Probe {
                        generation: self.generation,
                    }
                } else {
                    Decision::Reject {
                        state: State::HalfOpen,
                        retry_after: None,
                    }
                }
            }
            Mode::Open { .. } | Mode::ForcedOpen { .. } => Decision::Reject {
                state: self.mode.state(),
                retry_after: self.time_left(now),
            },
        }
    }

    /// Trips a closed breaker of `generation`. `open_for` overrides the open period
    /// (a `Retry-After` trip). Returns `None` if the breaker moved on meanwhile.
    pub(crate) fn trip(
        &mut self,
        generation: u64,
        reason: Reason,
        open_for: Option<Duration>,
        now: Instant,
    ) -> Option<Change> {
        if self.mode != Mode::Closed || self.generation != generation {
            return None;
        }
        let period = open_for.unwrap_or_else(|| self.open_period(0));
        self.trip_reason = Some(reason);
        self.opened_at = Some(now);
        Some(self.set(
            Mode::Open {
                until: now + period,
                round: 0,
            },
            reason,
            now,
        ))
    }

    /// A probe of `generation` gave up its permit without an outcome (dropped future,
    /// or an outcome that says nothing about the agent).
    pub(crate) fn release_probe(&mut self, generation: u64) {
        if self.generation != generation {
            return;
        }
        if let Mode::HalfOpen { in_flight, .. } = &mut self.mode {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    /// The outcome of a probe of `generation`: success closes; failure reopens for the
    /// next, longer period (or for `retry_after` when the agent said so).
    pub(crate) fn probe_result(
        &mut self,
        generation: u64,
        success: bool,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> Option<Change> {
        if self.generation != generation {
            return None;
        }
        let Mode::HalfOpen { round, .. } = self.mode else {
            return None;
        };
        if success && retry_after.is_none() {
            self.trip_reason = None;
            self.opened_at = None;
            return Some(self.set(Mode::Closed, Reason::ProbeSuccess, now));
        }
        let round = round.saturating_add(1);
        let (period, reason) = match retry_after {
            Some(ra) => (ra, Reason::RetryAfter),
            None => (self.open_period(round), Reason::ProbeFailure),
        };
        self.trip_reason = Some(reason);
        self.opened_at = Some(now);
        Some(self.set(
            Mode::Open {
                until: now + period,
                round,
            },
            reason,
            now,
        ))
    }

    /// Operator: back to closed (clears the window and the open-period doubling).
    pub(crate) fn reset(&mut self, now: Instant) -> Change {
        self.trip_reason = None;
        self.opened_at = None;
        self.set(Mode::Closed, Reason::Manual, now)
    }

    /// Operator: reject everything, for `duration` (then half-open) or until reset.
    pub(crate) fn force_open(&mut self, duration: Option<Duration>, now: Instant) -> Change {
        self.trip_reason = Some(Reason::Manual);
        self.opened_at = Some(now);
        let until = duration.map(|d| now + d);
        self.set(Mode::ForcedOpen { until }, Reason::Manual, now)
    }

    /// Operator: let everything through and count nothing, until reset.
    pub(crate) fn disable(&mut self, now: Instant) -> Change {
        self.trip_reason = None;
        self.opened_at = None;
        self.set(Mode::Disabled, Reason::Manual, now)
    }

    /// The open period after `round` failed probe rounds: exactly `open_duration` for a
    /// trip from closed; then `open_duration · 2^round`, capped at `max_open_duration`,
    /// minus up to `jitter` of it (never below `open_duration`), so replicas that tripped
    /// together spread their probes.
    pub(crate) fn open_period(&mut self, round: u32) -> Duration {
        if round == 0 {
            return self.open_duration;
        }
        let factor = 2f64.powi(round.min(62) as i32);
        let base =
            (self.open_duration.as_secs_f64() * factor).min(self.max_open_duration.as_secs_f64());
        let cut = if self.jitter > 0.0 {
            self.rng.random_range(0.0..=self.jitter)
        } else {
            0.0
        };
        let secs = (base * (1.0 - cut)).max(self.open_duration.as_secs_f64());
        Duration::from_secs_f64(secs)
    }

    fn set(&mut self, mode: Mode, reason: Reason, at: Instant) -> Change {
        let from = self.mode.state();
        self.mode = mode;
        self.generation += 1;
        self.transitions += 1;
        Change {
            from,
            to: mode.state(),
            reason,
            at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn machine(jitter: f64) -> Machine {
        Machine::new(
            Duration::from_secs(10),
            Duration::from_secs(60),
            2,
            jitter,
            SmallRng::seed_from_u64(7),
        )
    }

    #[test]
    fn open_period_doubles_and_caps() {
        let mut m = machine(0.0);
        let secs: Vec<u64> = (0..6).map(|r| m.open_period(r).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 60, 60, 60]);
        assert_eq!(m.open_period(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jittered_period_stays_in_bounds() {
        let mut m = machine(0.25);
        for round in 1..8 {
            for _ in 0..200 {
                let base = (10.0 * 2f64.powi(round as i32)).min(60.0);
                let d = m.open_period(round).as_secs_f64();
                assert!(
                    d <= base + 1e-9 && d >= (base * 0.75).max(10.0) - 1e-9,
                    "round {round}: {d}"
                );
            }
        }
        assert_eq!(m.open_period(0), Duration::from_secs(10));
    }

    #[test]
    fn probe_permits_and_generations() {
        let t0 = Instant::now();
        let mut m = machine(0.0);
        let g = m.generation();
        assert!(m.trip(g, Reason::Consecutive, None, t0).is_some());
        assert!(
            m.trip(g, Reason::Consecutive, None, t0).is_none(),
            "stale generation"
        );
        assert_eq!(m.advance(t0 + Duration::from_secs(9)), None);
        let change = m.advance(t0 + Duration::from_secs(11)).unwrap();
        assert_eq!(
            (change.from, change.to, change.at),
            (State::Open, State::HalfOpen, t0 + Duration::from_secs(10))
        );
        let now = t0 + Duration::from_secs(11);
        let Decision::Probe { generation } = m.decide(now) else {
            panic!()
        };
        assert!(matches!(m.decide(now), Decision::Probe { .. }));
        assert!(matches!(
            m.decide(now),
            Decision::Reject {
                state: State::HalfOpen,
                ..
            }
        ));
        m.release_probe(generation);
        assert!(matches!(m.decide(now), Decision::Probe { .. }));
        let change = m.probe_result(generation, false, None, now).unwrap();
        assert_eq!(change.reason, Reason::ProbeFailure);
        assert_eq!(m.time_left(now), Some(Duration::from_secs(20)));
        // The other probes of the failed round no longer matter.
        assert_eq!(m.probe_result(generation, true, None, now), None);
        assert_eq!(m.mode().state(), State::Open);
    }
}
