//! What the mock agent does with each request: latency, fault rates, outage windows.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The script a [`MockAgent`](crate::MockAgent) follows.
///
/// Every field has a default, so a TOML/JSON table, a `PUT /_mock` patch or a command line
/// only names what it changes. Durations are humantime strings (`"250ms"`, `"2s"`).
///
/// # How a request is answered
///
/// For each request (control requests on `/_mock` excluded) the agent decides, in this
/// fixed order, stopping at the first that applies:
///
/// 1. **outage** — when `outage_down` and `outage_every` are both non-zero and the request
///    arrives in the first `outage_down` of an `outage_every` period (measured from the
///    agent's start): `503` at once, with `Retry-After` set to the rest of the down window.
/// 2. **hang** (`hang_rate`) — never answer; the connection stays open.
/// 3. **reset** (`reset_rate`) — send the head and part of the body, then break the
///    connection.
/// 4. **throttle** (`throttle_rate`) — `throttle_status` with `Retry-After: retry_after`.
/// 5. **error** (`error_rate`) — `error_status` with `{"error": "injected"}`.
/// 6. **bad JSON** (`bad_json_rate`) — `200` with `text/plain` `this is not json`.
/// 7. otherwise the normal JSON echo; or, with `stream`, `stream_chunks` chunks one
///    `stream_interval` apart (the connection broken after `stream_break_after` of
///    them); or, for a request with `Upgrade: websocket`, a WebSocket that echoes every
///    text and binary message.
///
/// Transport faults come first because they pre-empt any answer; among the answers the
/// explicit back-pressure signal (throttle) wins over a generic error, and the "successful
/// but unusable" answer comes last. Each rate gets its own uniform draw from `[0, 1)`, and
/// all five draws (plus one for the jitter) are taken for every request whatever the
/// outcome, so a seeded agent consumes its random sequence identically whatever the rates.
///
/// `latency` plus a uniform share of `latency_jitter` is waited before every answer
/// except outage answers (a down service's load balancer answers at once) and hangs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct Behavior {
    /// Name reported as `agent` in answers.
    #[arg(long, default_value = "mock")]
    pub name: String,

    /// Fixed delay before answering.
    #[arg(long, default_value = "0ms", value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub latency: Duration,

    /// Extra delay, drawn uniformly from `0..=latency_jitter`, added to `latency`.
    #[arg(long, default_value = "0ms", value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub latency_jitter: Duration,

    /// Share of requests answered with `error_status` and `{"error": "injected"}`.
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    pub error_rate: f64,

    /// Status of injected errors (400..=599).
    #[arg(long, default_value_t = 500, value_name = "STATUS")]
    pub error_status: u16,

    /// Share of requests never answered (the connection is held open).
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    pub hang_rate: f64,

    /// Share of requests whose connection breaks after the head, mid-body.
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    pub reset_rate: f64,

    /// Share of requests answered with `throttle_status` and `Retry-After`.
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    pub throttle_rate: f64,

    /// Status of throttled answers (400..=599, usually 429 or 503).
    #[arg(long, default_value_t = 503, value_name = "STATUS")]
    pub throttle_status: u16,

    /// `Retry-After` sent with throttled answers (whole seconds, rounded up).
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,

    /// Share of requests answered `200 text/plain` with a body that is not JSON.
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    pub bad_json_rate: f64,

    /// Length of the down window at the start of every `outage_every` period (0: never).
    #[arg(long, default_value = "0s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub outage_down: Duration,

    /// Period of the outage cycle, measured from the agent's start (0: no outages).
    #[arg(long, default_value = "0s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub outage_every: Duration,

    /// Seed for the random draws; the same seed gives the same sequence of faults.
    #[arg(long, value_name = "SEED")]
    pub seed: Option<u64>,

    /// Answer successful requests with a stream of chunks instead of one JSON body:
    /// `sse` (`text/event-stream`, ending with `data: [DONE]`) or `ndjson`
    /// (`application/x-ndjson`). Each chunk is `{"index","delta","ts_us"}`: a word of a
    /// canned answer and the wall-clock time it was written (µs since the Unix epoch).
    #[arg(long, value_enum, default_value = "none", value_name = "MODE")]
    pub stream: StreamMode,

    /// Chunks in a streamed answer.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub stream_chunks: u32,

    /// Pause before each chunk of a streamed answer.
    #[arg(long, default_value = "50ms", value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub stream_interval: Duration,

    /// Break the connection after this many chunks of a streamed answer.
    #[arg(long, value_name = "N")]
    pub stream_break_after: Option<u32>,
}

/// `stream`: how the mock agent answers successful requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StreamMode {
    /// One JSON body (the echo).
    #[default]
    None,
    /// Server-sent events.
    Sse,
    /// Newline-delimited JSON.
    Ndjson,
}

/// Why a [`Behavior`] was rejected by [`Behavior::validate`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BehaviorError {
    /// A `*_rate` field is not within `0.0..=1.0` (or is NaN).
    #[error("{field} = {value} is out of range: rates must be within 0.0..=1.0")]
    RateOutOfRange {
        /// The field, e.g. `error_rate`.
        field: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// A status field is not an HTTP error status.
    #[error("{field} = {value} is not an error status: expected 400..=599")]
    InvalidStatus {
        /// The field, e.g. `throttle_status`.
        field: &'static str,
        /// The rejected value.
        value: u16,
    },
    /// `outage_down` is not shorter than `outage_every`.
    #[error(
        "outage_down = {} must be shorter than outage_every = {}",
        humantime::format_duration(*down),
        humantime::format_duration(*every)
    )]
    OutageTooLong {
        /// The rejected `outage_down`.
        down: Duration,
        /// The `outage_every` it was compared with.
        every: Duration,
    },
    /// `outage_down` is set but `outage_every` is zero, so no outage would ever happen.
    #[error(
        "outage_down = {} needs outage_every > 0",
        humantime::format_duration(*down)
    )]
    OutageWithoutPeriod {
        /// The rejected `outage_down`.
        down: Duration,
    },
}

/// Why a `PUT /_mock` patch could not be applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PatchError {
    #[error("the body must be a JSON object of behavior fields")]
    NotAnObject,
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Invalid(#[from] BehaviorError),
}

// === impl Behavior ===

impl Default for Behavior {
    fn default() -> Self {
        Self {
            name: "mock".to_owned(),
            latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            error_rate: 0.0,
            error_status: 500,
            hang_rate: 0.0,
            reset_rate: 0.0,
            throttle_rate: 0.0,
            throttle_status: 503,
            retry_after: Duration::from_secs(1),
            bad_json_rate: 0.0,
            outage_down: Duration::ZERO,
            outage_every: Duration::ZERO,
            seed: None,
            stream: StreamMode::None,
            stream_chunks: 10,
            stream_interval: Duration::from_millis(50),
            stream_break_after: None,
        }
    }
}

impl Behavior {
    /// Checks that rates are within `0.0..=1.0`, statuses are error statuses (400..=599)
    /// and an outage window is shorter than its period.
    pub fn validate(&self) -> Result<(), BehaviorError> {
        let rates = [
            ("error_rate", self.error_rate),
            ("hang_rate", self.hang_rate),
            ("reset_rate", self.reset_rate),
            ("throttle_rate", self.throttle_rate),
            ("bad_json_rate", self.bad_json_rate),
        ];
        for (field, value) in rates {
            // `contains` is false for NaN, which is what we want.
            if !(0.0..=1.0).contains(&value) {
                return Err(BehaviorError::RateOutOfRange { field, value });
            }
        }
        for (field, value) in [
            ("error_status", self.error_status),
            ("throttle_status", self.throttle_status),
        ] {
            if !(400..=599).contains(&value) {
                return Err(BehaviorError::InvalidStatus { field, value });
            }
        }
        if !self.outage_down.is_zero() {
            if self.outage_every.is_zero() {
                return Err(BehaviorError::OutageWithoutPeriod {
                    down: self.outage_down,
                });
            }
            if self.outage_down >= self.outage_every {
                return Err(BehaviorError::OutageTooLong {
                    down: self.outage_down,
                    every: self.outage_every,
                });
            }
        }
        Ok(())
    }

    /// Returns `self` with the fields of a JSON object patch applied, validated.
    ///
    /// Unknown fields and ill-typed values are rejected by the same `Deserialize` impl that
    /// reads config files, so the control endpoint and config files cannot drift apart.
    pub(crate) fn patched(&self, patch: serde_json::Value) -> Result<Behavior, PatchError> {
        let serde_json::Value::Object(patch) = patch else {
            return Err(PatchError::NotAnObject);
        };
        let mut current = match serde_json::to_value(self)? {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        current.extend(patch);
        let next: Behavior = serde_json::from_value(serde_json::Value::Object(current))?;
        next.validate()?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn default_is_valid_and_matches_empty_json() {
        let b = Behavior::default();
        b.validate().unwrap();
        let parsed: Behavior = serde_json::from_value(json!({})).unwrap();
        assert_eq!(parsed, b);
    }

    #[test]
    fn serializes_durations_as_humantime() {
        let b = Behavior {
            latency: Duration::from_millis(20),
            ..Behavior::default()
        };
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(v["latency"], "20ms");
        assert_eq!(v["retry_after"], "1s");
        assert_eq!(v["seed"], serde_json::Value::Null);
        let back: Behavior = serde_json::from_value(v).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn rejects_rates_out_of_range() {
        for bad in [-0.1, 1.5, f64::NAN] {
            let b = Behavior {
                reset_rate: bad,
                ..Behavior::default()
            };
            let err = b.validate().unwrap_err();
            assert!(
                matches!(
                    err,
                    BehaviorError::RateOutOfRange {
                        field: "reset_rate",
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(err.to_string().starts_with("reset_rate = "), "{err}");
        }
        let edge = Behavior {
            error_rate: 1.0,
            hang_rate: 0.0,
            ..Behavior::default()
        };
        edge.validate().unwrap();
    }

    #[test]
    fn rejects_non_error_statuses() {
        let b = Behavior {
            throttle_status: 200,
            ..Behavior::default()
        };
        assert_eq!(
            b.validate().unwrap_err().to_string(),
            "throttle_status = 200 is not an error status: expected 400..=599"
        );
        let b = Behavior {
            error_status: 600,
            ..Behavior::default()
        };
        assert!(b
            .validate()
            .unwrap_err()
            .to_string()
            .contains("error_status = 600"));
    }

    #[test]
    fn rejects_bad_outage_windows() {
        let b = Behavior {
            outage_down: Duration::from_secs(10),
            outage_every: Duration::from_secs(10),
            ..Behavior::default()
        };
        assert_eq!(
            b.validate().unwrap_err().to_string(),
            "outage_down = 10s must be shorter than outage_every = 10s"
        );
        let b = Behavior {
            outage_down: Duration::from_secs(1),
            ..Behavior::default()
        };
        assert_eq!(
            b.validate().unwrap_err().to_string(),
            "outage_down = 1s needs outage_every > 0"
        );
        let ok = Behavior {
            outage_every: Duration::from_secs(1),
            ..Behavior::default()
        };
        ok.validate().unwrap();
    }

    #[test]
    fn patch_merges_known_fields() {
        let b = Behavior::default();
        let next = b
            .patched(json!({"error_rate": 0.25, "latency": "15ms", "seed": 7}))
            .unwrap();
        assert_eq!(next.error_rate, 0.25);
        assert_eq!(next.latency, Duration::from_millis(15));
        assert_eq!(next.seed, Some(7));
        assert_eq!(next.name, "mock");
        let cleared = next.patched(json!({"seed": null})).unwrap();
        assert_eq!(cleared.seed, None);
    }

    #[test]
    fn patch_rejects_unknown_ill_typed_and_invalid() {
        let b = Behavior::default();
        let err = b.patched(json!({"nope": 1})).unwrap_err().to_string();
        assert!(err.contains("unknown field `nope`"), "{err}");
        let err = b
            .patched(json!({"latency": "soon"}))
            .unwrap_err()
            .to_string();
        assert!(!err.is_empty());
        let err = b
            .patched(json!({"error_rate": 2.0}))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("error_rate = 2"), "{err}");
        assert!(matches!(
            b.patched(json!([1, 2])),
            Err(PatchError::NotAnObject)
        ));
    }

    #[test]
    fn clap_defaults_match_default() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            behavior: Behavior,
        }
        let cli = Cli::try_parse_from(["mock"]).unwrap();
        assert_eq!(cli.behavior, Behavior::default());
        let cli = Cli::try_parse_from([
            "mock",
            "--error-rate",
            "0.3",
            "--latency",
            "20ms",
            "--throttle-status",
            "429",
            "--seed",
            "9",
        ])
        .unwrap();
        assert_eq!(cli.behavior.error_rate, 0.3);
        assert_eq!(cli.behavior.latency, Duration::from_millis(20));
        assert_eq!(cli.behavior.throttle_status, 429);
        assert_eq!(cli.behavior.seed, Some(9));
    }
}
