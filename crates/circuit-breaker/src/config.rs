use std::time::Duration;

use agentgate_config::{Invalid, Validate};
use serde::{Deserialize, Serialize};

/// The `[defaults.circuit_breaker]` / `[agents.X.circuit_breaker]` keys of SPEC §2.
///
/// `Default` gives the SPEC's defaults. Unknown keys are rejected when deserializing;
/// [`Validate::problems`] names every value that cannot work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    /// Trip after this many failures in a row. `0` turns the consecutive trip off.
    pub consecutive_failures: u32,
    /// Trip when the failure rate in the window reaches this share (0 < x ≤ 1) …
    /// `0` turns the rate trip off; with slow-call detection off too, no window is kept
    /// and a closed call reads no clock (a consecutive-failures breaker, as Polly's basic
    /// one).
    pub failure_rate_threshold: f64,
    /// … once the window holds at least this many calls (≥ 1).
    pub minimum_calls: u32,
    /// Length of the time-based sliding window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Calls slower than this count as slow; `0s` turns slow-call detection off.
    #[serde(with = "humantime_serde")]
    pub slow_call_duration: Duration,
    /// Trip when this share of the window's calls is slow (0 < x ≤ 1).
    pub slow_call_rate_threshold: f64,
    /// How long the breaker stays open after tripping from closed.
    #[serde(with = "humantime_serde")]
    pub open_duration: Duration,
    /// Cap for the open period, which doubles after each failed probe round.
    #[serde(with = "humantime_serde")]
    pub max_open_duration: Duration,
    /// Concurrent probes admitted in half-open (≥ 1).
    pub half_open_max_calls: u32,
    /// A 429/503 with `Retry-After` opens the breaker until then.
    pub open_on_retry_after: bool,
    /// Cap for a `Retry-After` trip.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
}

/// A configuration value the breaker cannot work with: the key (relative to
/// [`CircuitBreakerConfig`]), its value and why.
pub type ConfigError = Invalid;

// === impl CircuitBreakerConfig ===

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate_threshold: 0.5,
            minimum_calls: 20,
            window: Duration::from_secs(30),
            slow_call_duration: Duration::ZERO,
            slow_call_rate_threshold: 1.0,
            open_duration: Duration::from_secs(60),
            max_open_duration: Duration::from_secs(300),
            half_open_max_calls: 1,
            open_on_retry_after: true,
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl Validate for CircuitBreakerConfig {
    fn problems(&self) -> Vec<Invalid> {
        let share = |x: f64| x.is_finite() && x > 0.0 && x <= 1.0;
        let dur = |d: Duration| humantime::format_duration(d);
        let checks = [
            (
                self.failure_rate_threshold == 0.0 || share(self.failure_rate_threshold),
                Invalid::new(
                    "failure_rate_threshold",
                    self.failure_rate_threshold,
                    "must be 0 (off) or a share greater than 0 and at most 1",
                ),
            ),
            (
                self.minimum_calls >= 1,
                Invalid::new("minimum_calls", self.minimum_calls, "must be at least 1"),
            ),
            (
                self.window >= Duration::from_millis(10),
                Invalid::new("window", dur(self.window), "must be at least 10ms"),
            ),
            (
                share(self.slow_call_rate_threshold),
                Invalid::new(
                    "slow_call_rate_threshold",
                    self.slow_call_rate_threshold,
                    "must be a share greater than 0 and at most 1",
                ),
            ),
            (
                !self.open_duration.is_zero(),
                Invalid::new(
                    "open_duration",
                    dur(self.open_duration),
                    "must be greater than 0",
                ),
            ),
            (
                self.max_open_duration >= self.open_duration,
                Invalid::new(
                    "max_open_duration",
                    dur(self.max_open_duration),
                    "must not be shorter than open_duration",
                )
                .or(Invalid::new(
                    "open_duration",
                    dur(self.open_duration),
                    format!(
                        "must not be longer than max_open_duration ({})",
                        dur(self.max_open_duration)
                    ),
                )),
            ),
            (
                self.half_open_max_calls >= 1,
                Invalid::new(
                    "half_open_max_calls",
                    self.half_open_max_calls,
                    "must be at least 1",
                ),
            ),
        ];
        checks
            .into_iter()
            .filter_map(|(ok, problem)| (!ok).then_some(problem))
            .collect()
    }
}

impl CircuitBreakerConfig {
    /// The first problem of [`Validate::problems`], if any (for [`try_new`]).
    ///
    /// [`try_new`]: crate::CircuitBreakerLayer::try_new
    pub fn validate(&self) -> Result<(), ConfigError> {
        Validate::validate(self)
    }

    #[inline]
    pub(crate) fn slow_calls_enabled(&self) -> bool {
        !self.slow_call_duration.is_zero()
    }

    /// Whether the failure rate can trip the breaker (`failure_rate_threshold > 0`).
    #[inline]
    pub(crate) fn rate_trip_enabled(&self) -> bool {
        self.failure_rate_threshold > 0.0
    }

    /// Whether the breaker keeps a sliding window: only a rate (of failures or of slow
    /// calls) needs one.
    #[inline]
    pub(crate) fn windowed(&self) -> bool {
        self.rate_trip_enabled() || self.slow_calls_enabled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_defaults_and_toml() {
        let cfg: CircuitBreakerConfig = toml::from_str(
            r#"
            consecutive_failures = 3
            window = "10s"
            slow_call_duration = "250ms"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.consecutive_failures, 3);
        assert_eq!(cfg.window, Duration::from_secs(10));
        assert_eq!(cfg.slow_call_duration, Duration::from_millis(250));
        assert_eq!(cfg.open_duration, Duration::from_secs(60));
        assert_eq!(cfg.max_open_duration, Duration::from_secs(300));
        cfg.validate().unwrap();
        CircuitBreakerConfig::default().validate().unwrap();
        assert!(CircuitBreakerConfig::default().windowed());
    }

    #[test]
    fn a_zero_rate_threshold_turns_the_window_off() {
        let off = CircuitBreakerConfig {
            failure_rate_threshold: 0.0,
            ..Default::default()
        };
        off.validate().unwrap();
        assert!(!off.rate_trip_enabled() && !off.windowed());
        // Slow-call detection still needs the window.
        let slow = CircuitBreakerConfig {
            slow_call_duration: Duration::from_millis(250),
            ..off
        };
        assert!(slow.windowed());
    }

    #[test]
    fn unknown_keys_rejected() {
        let err = toml::from_str::<CircuitBreakerConfig>("recovery_timeout = \"5s\"").unwrap_err();
        assert!(err.to_string().contains("recovery_timeout"), "{err}");
    }

    #[test]
    fn validation_names_field_and_value() {
        let cases: Vec<(CircuitBreakerConfig, &str)> = vec![
            (
                CircuitBreakerConfig {
                    failure_rate_threshold: 1.5,
                    ..Default::default()
                },
                "failure_rate_threshold = 1.5",
            ),
            (
                CircuitBreakerConfig {
                    failure_rate_threshold: f64::NAN,
                    ..Default::default()
                },
                "failure_rate_threshold = NaN",
            ),
            (
                CircuitBreakerConfig {
                    failure_rate_threshold: -0.1,
                    ..Default::default()
                },
                "failure_rate_threshold = -0.1: must be 0 (off)",
            ),
            (
                CircuitBreakerConfig {
                    minimum_calls: 0,
                    ..Default::default()
                },
                "minimum_calls = 0",
            ),
            (
                CircuitBreakerConfig {
                    window: Duration::ZERO,
                    ..Default::default()
                },
                "window = 0s",
            ),
            (
                CircuitBreakerConfig {
                    slow_call_rate_threshold: 0.0,
                    ..Default::default()
                },
                "slow_call_rate_threshold = 0",
            ),
            (
                CircuitBreakerConfig {
                    open_duration: Duration::ZERO,
                    ..Default::default()
                },
                "open_duration = 0s",
            ),
            (
                CircuitBreakerConfig {
                    max_open_duration: Duration::from_secs(10),
                    ..Default::default()
                },
                "max_open_duration = 10s: must not be shorter than open_duration",
            ),
            (
                CircuitBreakerConfig {
                    half_open_max_calls: 0,
                    ..Default::default()
                },
                "half_open_max_calls = 0",
            ),
        ];
        for (cfg, want) in cases {
            let got = cfg.validate().unwrap_err().to_string();
            assert!(got.starts_with(want), "got {got:?}, want prefix {want:?}");
        }
    }

    #[test]
    fn every_problem_is_told_and_pairs_name_both_keys() {
        let cfg = CircuitBreakerConfig {
            minimum_calls: 0,
            open_duration: Duration::from_secs(600),
            half_open_max_calls: 0,
            ..Default::default()
        };
        let problems = cfg.problems();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["minimum_calls", "max_open_duration", "half_open_max_calls"]
        );
        let pair: Vec<String> = problems[1].blames().map(ToString::to_string).collect();
        assert_eq!(
            pair,
            [
                "max_open_duration = 5m: must not be shorter than open_duration",
                "open_duration = 10m: must not be longer than max_open_duration (5m)",
            ]
        );
    }
}
