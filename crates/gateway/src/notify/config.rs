//! The `[[notify]]` keys (SPEC §9) and their checks.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use agentgate_agent_client::{check_url, AgentConfig};
use agentgate_circuit_breaker::CircuitBreakerConfig;
use agentgate_config::{Invalid, Secret, Validate};
use agentgate_retry::RetryConfig;
use http::Uri;
use serde::{Deserialize, Deserializer};

/// One `[[notify]]` table: a webhook that receives breaker and health transitions.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Where the JSON is POSTed.
    #[serde(deserialize_with = "uri")]
    pub url: Uri,
    /// The events this hook receives. Default: all of them.
    #[serde(default = "NotifyEvent::all")]
    pub events: Vec<NotifyEvent>,
    /// Headers added to every delivery (secrets: never shown; `${VAR}` read from the
    /// environment).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret<String>>,
    /// At most one delivery per (event, agent) in this interval; the others are skipped.
    #[serde(with = "humantime_serde", default = "defaults::min_interval")]
    pub min_interval: Duration,
    /// Per attempt (the hook's answer's head must come within it).
    #[serde(with = "humantime_serde", default = "defaults::timeout")]
    pub timeout: Duration,
    /// Deliveries waiting for the hook; beyond, new ones are dropped (and counted).
    #[serde(default = "defaults::queue")]
    pub queue: usize,
    /// Retries of a failed delivery, as an agent's (`[defaults.retry]` keys).
    #[serde(default)]
    pub retry: RetryConfig,
    /// The hook's own breaker, as an agent's (`[defaults.circuit_breaker]` keys): a
    /// hook that keeps failing is not called for a while, and its deliveries fail fast.
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
}

/// What a hook can be told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    /// An agent's breaker opened (or was forced open).
    BreakerOpened,
    /// An agent's breaker closed again.
    BreakerClosed,
    /// The health status (`healthy`, `degraded`, `unhealthy`) changed.
    HealthChanged,
}

// === impl NotifyConfig ===

impl NotifyConfig {
    /// The hook's client config: the agent-client stack (retry, breaker, per-attempt
    /// timeout) over a pool to `url` (https with the system's roots), sending `headers`.
    pub fn client_config(&self) -> AgentConfig {
        let mut retry = self.retry.clone();
        // One key caps Retry-After for both layers, as for agents.
        retry.max_retry_after = self.circuit_breaker.max_retry_after;
        AgentConfig {
            timeout: self.timeout,
            retry,
            circuit_breaker: self.circuit_breaker.clone(),
            headers: self.headers.clone(),
            ..AgentConfig::new(self.url.clone())
        }
    }
}

impl Validate for NotifyConfig {
    fn problems(&self) -> Vec<Invalid> {
        let mut out: Vec<Invalid> = check_url(&self.url).err().into_iter().collect();
        if self.events.is_empty() {
            out.push(Invalid::new(
                "events",
                "[]",
                "name at least one of \"breaker_opened\", \"breaker_closed\", \"health_changed\"",
            ));
        }
        // Checked as an agent's: the hook's client sends them.
        out.extend(self.client_config().header_map().err());
        if self.timeout.is_zero() {
            out.push(Invalid::new("timeout", "0s", "must be greater than 0"));
        }
        if self.queue == 0 {
            out.push(Invalid::new("queue", 0, "must be at least 1"));
        }
        let breaker = self.circuit_breaker.problems().into_iter();
        out.extend(breaker.map(|p| p.within("circuit_breaker")));
        out.extend(self.retry.problems().into_iter().map(|p| p.within("retry")));
        out
    }
}

// === impl NotifyEvent ===

impl NotifyEvent {
    /// Every event.
    pub fn all() -> Vec<NotifyEvent> {
        vec![
            NotifyEvent::BreakerOpened,
            NotifyEvent::BreakerClosed,
            NotifyEvent::HealthChanged,
        ]
    }

    /// The `event` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::BreakerOpened => "breaker_opened",
            NotifyEvent::BreakerClosed => "breaker_closed",
            NotifyEvent::HealthChanged => "health_changed",
        }
    }
}

impl fmt::Display for NotifyEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `url = "…"`, parsed as it is read.
fn uri<'de, D: Deserializer<'de>>(d: D) -> Result<Uri, D::Error> {
    let text = String::deserialize(d)?;
    text.parse::<Uri>().map_err(|e| {
        serde::de::Error::custom(format!(
            "not a valid URL ({e}); write e.g. \"http://hooks.internal:8080/agentgate\""
        ))
    })
}

/// The defaults of the keys of [`NotifyConfig`].
mod defaults {
    use std::time::Duration;

    pub(super) fn min_interval() -> Duration {
        Duration::from_secs(60)
    }

    pub(super) fn timeout() -> Duration {
        Duration::from_secs(10)
    }

    pub(super) fn queue() -> usize {
        1024
    }
}
