use std::fmt;
use std::time::Duration;

use agentgate_config::{Invalid, Validate};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// How the delay before a retry is randomised (SPEC §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// `U(0, v)` with `v = min(max_delay, base_delay · 2^(n-1))`.
    Full,
    /// `v/2 + U(0, v/2)`.
    Equal,
    /// `min(max_delay, U(base_delay, prev · 3))`.
    Decorrelated,
    /// `v`.
    None,
}

/// One entry of `retry_on`: a failure class name or a status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOn {
    /// `"connect"`: the connection could not be made.
    Connect,
    /// `"timeout"`: the per-attempt timeout elapsed.
    Timeout,
    /// `"reset"`: the connection broke.
    Reset,
    /// A response status, e.g. `503`.
    Status(u16),
}

/// The `[defaults.retry]` / `[agents.X.retry]` keys of SPEC §2. `Default` gives the
/// SPEC's defaults; unknown keys are rejected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in total, the first included (≥ 1; 1 means never retry).
    pub max_attempts: u32,
    /// The first retry's nominal delay.
    #[serde(with = "humantime_serde")]
    pub base_delay: Duration,
    /// No delay exceeds this.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// How delays are randomised.
    pub jitter: Jitter,
    /// Which failures are retried.
    pub retry_on: Vec<RetryOn>,
    /// Retries may add at most this share of recent requests …
    pub budget_ratio: f64,
    /// … plus this many per second.
    pub budget_min_per_sec: u32,
    /// Use a 429/503's `Retry-After` as the minimum delay.
    pub honor_retry_after: bool,
    /// Retry POST/PATCH even without an `Idempotency-Key`.
    pub retry_non_idempotent: bool,
    /// Request bodies larger than this are sent once and never retried.
    pub max_replay_body_bytes: usize,
    /// A `Retry-After` longer than this is not waited for (the call fails over instead).
    /// Not a key of its own: `circuit_breaker.max_retry_after` caps `Retry-After` for
    /// both layers, and the agent client copies it here.
    #[serde(skip)]
    pub max_retry_after: Duration,
}

/// A retry setting that cannot work: the key (relative to [`RetryConfig`]), its value
/// and why.
pub type ConfigError = Invalid;

// === impl RetryConfig ===

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            jitter: Jitter::Full,
            retry_on: vec![
                RetryOn::Connect,
                RetryOn::Timeout,
                RetryOn::Reset,
                RetryOn::Status(502),
                RetryOn::Status(503),
                RetryOn::Status(504),
                RetryOn::Status(429),
            ],
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
            honor_retry_after: true,
            retry_non_idempotent: false,
            max_replay_body_bytes: 65536,
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl Validate for RetryConfig {
    fn problems(&self) -> Vec<Invalid> {
        let dur = |d: Duration| humantime::format_duration(d);
        let mut out = Vec::new();
        if self.max_attempts == 0 {
            out.push(Invalid::new(
                "max_attempts",
                0,
                "must be at least 1 (the first attempt counts)",
            ));
        }
        if self.base_delay > self.max_delay {
            out.push(
                Invalid::new(
                    "base_delay",
                    dur(self.base_delay),
                    "must not be longer than max_delay",
                )
                .or(Invalid::new(
                    "max_delay",
                    dur(self.max_delay),
                    format!(
                        "must not be shorter than base_delay ({})",
                        dur(self.base_delay)
                    ),
                )),
            );
        }
        if !(self.budget_ratio.is_finite() && (0.0..=1000.0).contains(&self.budget_ratio)) {
            out.push(Invalid::new(
                "budget_ratio",
                self.budget_ratio,
                "must be a share between 0 and 1000",
            ));
        }
        out
    }
}

impl RetryConfig {
    /// The first problem of [`Validate::problems`], if any (for [`RetryPolicy::try_new`]).
    ///
    /// [`RetryPolicy::try_new`]: crate::RetryPolicy::try_new
    pub fn validate(&self) -> Result<(), ConfigError> {
        Validate::validate(self)
    }
}

// === impl RetryOn ===

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryOn::Connect => f.write_str("connect"),
            RetryOn::Timeout => f.write_str("timeout"),
            RetryOn::Reset => f.write_str("reset"),
            RetryOn::Status(code) => write!(f, "{code}"),
        }
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RetryOn::Status(code) => s.serialize_u16(*code),
            other => s.serialize_str(&other.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RetryOn;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""connect", "timeout", "reset" or an HTTP status code (100..=599)"#)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RetryOn, E> {
                match v {
                    "connect" => Ok(RetryOn::Connect),
                    "timeout" => Ok(RetryOn::Timeout),
                    "reset" => Ok(RetryOn::Reset),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RetryOn, E> {
                match u16::try_from(v) {
                    Ok(code) if (100..=599).contains(&code) => Ok(RetryOn::Status(code)),
                    _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RetryOn, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_keys_parse() {
        let cfg: RetryConfig = toml::from_str(
            r#"
            max_attempts = 4
            base_delay = "250ms"
            jitter = "decorrelated"
            retry_on = ["connect", "timeout", 503, 429]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.max_attempts, 4);
        assert_eq!(cfg.base_delay, Duration::from_millis(250));
        assert_eq!(cfg.jitter, Jitter::Decorrelated);
        assert_eq!(
            cfg.retry_on,
            [
                RetryOn::Connect,
                RetryOn::Timeout,
                RetryOn::Status(503),
                RetryOn::Status(429)
            ]
        );
        cfg.validate().unwrap();
        RetryConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        for (src, want) in [
            (r#"retry_on = ["sometimes"]"#, "sometimes"),
            ("retry_on = [700]", "700"),
            (r#"jitter = "lots""#, "lots"),
            ("max_tries = 3", "max_tries"),
        ] {
            let err = toml::from_str::<RetryConfig>(src).unwrap_err().to_string();
            assert!(err.contains(want), "{src}: {err}");
        }
        let cfg = RetryConfig {
            max_attempts: 0,
            ..Default::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("max_attempts = 0"));
        let cfg = RetryConfig {
            base_delay: Duration::from_secs(60),
            ..Default::default()
        };
        assert_eq!(
            cfg.validate().unwrap_err().to_string(),
            "base_delay = 1m: must not be longer than max_delay"
        );
        let cfg = RetryConfig {
            max_attempts: 0,
            max_delay: Duration::from_millis(500),
            budget_ratio: f64::NAN,
            ..Default::default()
        };
        let all: Vec<String> = cfg
            .problems()
            .iter()
            .flat_map(|p| p.blames().map(ToString::to_string))
            .collect();
        assert_eq!(
            all,
            [
                "max_attempts = 0: must be at least 1 (the first attempt counts)",
                "base_delay = 1s: must not be longer than max_delay",
                "max_delay = 500ms: must not be shorter than base_delay (1s)",
                "budget_ratio = NaN: must be a share between 0 and 1000",
            ]
        );
    }

    #[test]
    fn max_retry_after_is_not_a_retry_key() {
        let err = toml::from_str::<RetryConfig>("max_retry_after = \"5s\"").unwrap_err();
        assert!(
            err.message().starts_with("unknown field `max_retry_after`"),
            "{err}"
        );
    }
}
