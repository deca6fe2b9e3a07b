//! The pure decision: which fault (if any) a request gets, given the behavior, the random
//! draws and the time since the agent started. No clock, no RNG, no I/O here.

use std::time::Duration;

use rand::Rng;

use crate::Behavior;

/// What happens to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Inside an outage window; `retry_after` is what is left of the window.
    Outage {
        retry_after: Duration,
    },
    Hang,
    Reset,
    Throttle,
    Error,
    BadJson,
    /// The normal JSON echo.
    None,
}

/// One uniform draw from `[0, 1)` per rate, plus one for the latency jitter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Draws {
    pub(crate) hang: f64,
    pub(crate) reset: f64,
    pub(crate) throttle: f64,
    pub(crate) error: f64,
    pub(crate) bad_json: f64,
    pub(crate) jitter: f64,
}

// === impl Draws ===

impl Draws {
    /// Takes all six draws, always in the same order, whatever the rates are.
    pub(crate) fn take<R: Rng + ?Sized>(rng: &mut R) -> Self {
        Self {
            hang: rng.random(),
            reset: rng.random(),
            throttle: rng.random(),
            error: rng.random(),
            bad_json: rng.random(),
            jitter: rng.random(),
        }
    }
}

// === decisions ===

/// Picks the fault for one request; see [`Behavior`] for the order.
pub(crate) fn decide(behavior: &Behavior, draws: &Draws, since_start: Duration) -> Fault {
    if let Some(retry_after) = outage_remaining(behavior, since_start) {
        return Fault::Outage { retry_after };
    }
    // A draw in [0, 1) is below the rate with probability `rate`: 0.0 never fires, 1.0 always.
    let checks = [
        (draws.hang, behavior.hang_rate, Fault::Hang),
        (draws.reset, behavior.reset_rate, Fault::Reset),
        (draws.throttle, behavior.throttle_rate, Fault::Throttle),
        (draws.error, behavior.error_rate, Fault::Error),
        (draws.bad_json, behavior.bad_json_rate, Fault::BadJson),
    ];
    checks
        .into_iter()
        .find(|(draw, rate, _)| draw < rate)
        .map_or(Fault::None, |(_, _, fault)| fault)
}

/// The delay before answering: `latency` plus `jitter_draw` of `latency_jitter`.
pub(crate) fn delay(behavior: &Behavior, jitter_draw: f64) -> Duration {
    let jitter = behavior.latency_jitter.mul_f64(jitter_draw.clamp(0.0, 1.0));
    behavior.latency.saturating_add(jitter)
}

/// When `since_start` falls in a down window, what is left of that window.
pub(crate) fn outage_remaining(behavior: &Behavior, since_start: Duration) -> Option<Duration> {
    let down = behavior.outage_down.as_nanos();
    let every = behavior.outage_every.as_nanos();
    if down == 0 || every == 0 {
        return None;
    }
    let position = since_start.as_nanos() % every;
    (position < down)
        .then(|| Duration::from_nanos(u64::try_from(down - position).unwrap_or(u64::MAX)))
}

/// A duration as `Retry-After` seconds, rounded up so clients never come back early.
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    fn draws(v: f64) -> Draws {
        Draws {
            hang: v,
            reset: v,
            throttle: v,
            error: v,
            bad_json: v,
            jitter: v,
        }
    }

    fn all_rates(rate: f64) -> Behavior {
        Behavior {
            hang_rate: rate,
            reset_rate: rate,
            throttle_rate: rate,
            error_rate: rate,
            bad_json_rate: rate,
            ..Behavior::default()
        }
    }

    #[test]
    fn zero_rates_never_fire_and_one_always_fires() {
        let none = Behavior::default();
        assert_eq!(decide(&none, &draws(0.0), Duration::ZERO), Fault::None);
        let b = Behavior {
            error_rate: 1.0,
            ..Behavior::default()
        };
        assert_eq!(decide(&b, &draws(0.999_999), Duration::ZERO), Fault::Error);
    }

    #[test]
    fn order_is_outage_hang_reset_throttle_error_bad_json() {
        let mut b = all_rates(1.0);
        b.outage_down = Duration::from_secs(1);
        b.outage_every = Duration::from_secs(10);
        let d = draws(0.5);
        let at = Duration::from_millis(100);
        assert!(matches!(decide(&b, &d, at), Fault::Outage { .. }));
        b.outage_down = Duration::ZERO;
        assert_eq!(decide(&b, &d, at), Fault::Hang);
        b.hang_rate = 0.0;
        assert_eq!(decide(&b, &d, at), Fault::Reset);
        b.reset_rate = 0.0;
        assert_eq!(decide(&b, &d, at), Fault::Throttle);
        b.throttle_rate = 0.0;
        assert_eq!(decide(&b, &d, at), Fault::Error);
        b.error_rate = 0.0;
        assert_eq!(decide(&b, &d, at), Fault::BadJson);
        b.bad_json_rate = 0.0;
        assert_eq!(decide(&b, &d, at), Fault::None);
    }

    #[test]
    fn each_rate_uses_its_own_draw() {
        let b = all_rates(0.5);
        let d = Draws {
            hang: 0.9,
            reset: 0.9,
            throttle: 0.9,
            error: 0.1,
            bad_json: 0.1,
            jitter: 0.0,
        };
        assert_eq!(decide(&b, &d, Duration::ZERO), Fault::Error);
    }

    #[test]
    fn outage_windows_repeat_every_period() {
        let b = Behavior {
            outage_down: Duration::from_secs(2),
            outage_every: Duration::from_secs(10),
            ..Behavior::default()
        };
        let at = |ms| outage_remaining(&b, Duration::from_millis(ms));
        assert_eq!(at(0), Some(Duration::from_secs(2)));
        assert_eq!(at(1_500), Some(Duration::from_millis(500)));
        assert_eq!(at(2_000), None);
        assert_eq!(at(9_999), None);
        assert_eq!(at(10_000), Some(Duration::from_secs(2)));
        assert_eq!(at(21_000), Some(Duration::from_secs(1)));
        assert_eq!(outage_remaining(&Behavior::default(), Duration::ZERO), None);
    }

    #[test]
    fn delay_is_latency_plus_a_share_of_jitter() {
        let b = Behavior {
            latency: Duration::from_millis(100),
            latency_jitter: Duration::from_millis(50),
            ..Behavior::default()
        };
        assert_eq!(delay(&b, 0.0), Duration::from_millis(100));
        assert_eq!(delay(&b, 0.5), Duration::from_millis(125));
        assert_eq!(delay(&Behavior::default(), 0.7), Duration::ZERO);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 0);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_001)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(300)), 1);
    }

    #[test]
    fn same_seed_same_draws() {
        let mut a = SmallRng::seed_from_u64(42);
        let mut b = SmallRng::seed_from_u64(42);
        for _ in 0..10 {
            let (x, y) = (Draws::take(&mut a), Draws::take(&mut b));
            assert_eq!(x, y);
            assert!((0.0..1.0).contains(&x.hang));
        }
    }
}
