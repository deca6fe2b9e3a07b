use std::time::Duration;

use agentgate_circuit_breaker::CircuitBreakerConfig;
use agentgate_config::{Invalid, Validate};
use agentgate_retry::RetryConfig;
use http::Uri;
use serde::{Deserialize, Deserializer};

/// Everything needed to build one agent's client: the keys of SPEC §2's `[agents.X]`
/// (the gateway's config merges `[defaults]` in first), plus pool settings.
///
/// Deserializing takes the SPEC defaults for every key but `url`, checks the URL, and
/// copies `circuit_breaker.max_retry_after` into `retry.max_retry_after` (one key caps
/// `Retry-After` for both layers). Unknown keys are rejected.
#[derive(Clone, Debug, PartialEq, Deserialize)]
// `remote = "Self"` makes the derived code an inherent `AgentConfig::deserialize`, which
// the `Deserialize` impl below wraps to share `max_retry_after`.
#[serde(remote = "Self", deny_unknown_fields)]
pub struct AgentConfig {
    /// Base URL, `http://host:port[/base/path]`.
    #[serde(deserialize_with = "url")]
    pub url: Uri,
    /// Per-attempt timeout (`timeout`).
    #[serde(with = "humantime_serde", default = "defaults::timeout")]
    pub timeout: Duration,
    /// `circuit_breaker.*`.
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
    /// `retry.*`.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Idle keep-alive connections kept per agent.
    #[serde(default = "defaults::pool_max_idle_per_host")]
    pub pool_max_idle_per_host: usize,
    /// How long an idle connection is kept.
    #[serde(with = "humantime_serde", default = "defaults::pool_idle_timeout")]
    pub pool_idle_timeout: Duration,
    /// Limit for establishing a connection (also bounded by `timeout`).
    #[serde(with = "humantime_serde", default = "defaults::connect_timeout")]
    pub connect_timeout: Duration,
    /// Largest response body read for a pipeline stage (larger: `bad_response`).
    #[serde(default = "defaults::max_response_bytes")]
    pub max_response_bytes: usize,
    /// Requests in flight to this agent at once (`max_concurrency`, SPEC §8); 0 means
    /// no limit. A bulkhead: one slow agent cannot take every connection and task.
    #[serde(default)]
    pub max_concurrency: usize,
    /// How long a request waits for a free slot under `max_concurrency` before it is
    /// refused (`overloaded`); 0 refuses at once.
    #[serde(with = "humantime_serde", default)]
    pub queue_timeout: Duration,
}

/// An agent setting that cannot work: the key (relative to [`AgentConfig`], e.g.
/// `circuit_breaker.window`), its value and why.
pub type AgentConfigError = Invalid;

// === impl AgentConfig ===

impl AgentConfig {
    /// SPEC defaults for an agent at `url`.
    pub fn new(url: Uri) -> Self {
        Self {
            url,
            timeout: defaults::timeout(),
            circuit_breaker: CircuitBreakerConfig::default(),
            retry: RetryConfig::default(),
            pool_max_idle_per_host: defaults::pool_max_idle_per_host(),
            pool_idle_timeout: defaults::pool_idle_timeout(),
            connect_timeout: defaults::connect_timeout(),
            max_response_bytes: defaults::max_response_bytes(),
            max_concurrency: 0,
            queue_timeout: Duration::ZERO,
        }
    }

    /// The first problem of [`Validate::problems`], if any (for [`AgentClient::new`]).
    ///
    /// [`AgentClient::new`]: crate::AgentClient::new
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        Validate::validate(self)
    }
}

impl Validate for AgentConfig {
    fn problems(&self) -> Vec<Invalid> {
        let mut out: Vec<Invalid> = check_url(&self.url).err().into_iter().collect();
        if self.timeout.is_zero() {
            out.push(Invalid::new("timeout", "0s", "must be greater than 0"));
        }
        if self.connect_timeout.is_zero() {
            out.push(Invalid::new(
                "connect_timeout",
                "0s",
                "must be greater than 0",
            ));
        }
        if self.max_response_bytes == 0 {
            out.push(Invalid::new("max_response_bytes", 0, "must be at least 1"));
        }
        let breaker = self.circuit_breaker.problems().into_iter();
        out.extend(breaker.map(|p| p.within("circuit_breaker")));
        out.extend(self.retry.problems().into_iter().map(|p| p.within("retry")));
        out
    }
}

impl<'de> Deserialize<'de> for AgentConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut config = AgentConfig::deserialize(d)?;
        config.retry.max_retry_after = config.circuit_breaker.max_retry_after;
        Ok(config)
    }
}

/// Agents are plain-HTTP services on the operator's network (TLS terminates in front
/// of agentgate or in a mesh sidecar).
pub fn check_url(url: &Uri) -> Result<(), AgentConfigError> {
    let reason = match url.scheme_str() {
        Some("http") if url.host().is_none_or(str::is_empty) => "has no host",
        Some("http") if url.query().is_some() => "must not have a query string",
        Some("http") => return Ok(()),
        Some(_) => "only http:// agents are supported",
        None => "must be an absolute http:// URL",
    };
    Err(Invalid::new(
        "url",
        format!("{:?}", url.to_string()),
        reason,
    ))
}

/// `url = "…"`: parsed and checked as it is read, so that a bad one is reported at once.
fn url<'de, D: Deserializer<'de>>(d: D) -> Result<Uri, D::Error> {
    let text = String::deserialize(d)?;
    let reason = match text.parse::<Uri>() {
        Ok(url) => match check_url(&url) {
            Ok(()) => return Ok(url),
            Err(invalid) => invalid.reason,
        },
        Err(e) => format!("not a valid URL ({e})"),
    };
    Err(serde::de::Error::custom(format!(
        "{reason}; write e.g. \"http://127.0.0.1:7001\""
    )))
}

/// The SPEC's defaults for the keys of [`AgentConfig`].
mod defaults {
    use std::time::Duration;

    pub(super) fn timeout() -> Duration {
        Duration::from_secs(30)
    }

    pub(super) fn pool_max_idle_per_host() -> usize {
        256
    }

    pub(super) fn pool_idle_timeout() -> Duration {
        Duration::from_secs(90)
    }

    pub(super) fn connect_timeout() -> Duration {
        Duration::from_secs(10)
    }

    pub(super) fn max_response_bytes() -> usize {
        16 * 1024 * 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<AgentConfig, toml::de::Error> {
        toml::from_str(src)
    }

    #[test]
    fn defaults_and_the_shared_retry_after_cap() {
        let a = parse("url = \"http://a:7001/base\"\n[circuit_breaker]\nmax_retry_after = \"15s\"")
            .unwrap();
        assert_eq!(a.url, "http://a:7001/base");
        assert_eq!(a.retry.max_retry_after, Duration::from_secs(15));
        let b = parse("url = \"http://b\"").unwrap();
        assert_eq!(b, AgentConfig::new("http://b".parse().unwrap()));
    }

    #[test]
    fn urls_are_checked_as_they_are_read() {
        for (url, want) in [
            (
                "https://a",
                "only http:// agents are supported; write e.g. \"http://127.0.0.1:7001\"",
            ),
            (
                "a:7001",
                "must be an absolute http:// URL; write e.g. \"http://127.0.0.1:7001\"",
            ),
            (
                "http://a/?x=1",
                "must not have a query string; write e.g. \"http://127.0.0.1:7001\"",
            ),
        ] {
            let err = parse(&format!("url = {url:?}")).unwrap_err();
            assert_eq!(err.message(), want, "{url}");
        }
        let err = parse("timeout = \"1s\"").unwrap_err();
        assert_eq!(err.message(), "missing field `url`");
    }

    #[test]
    fn problems_name_nested_keys() {
        let mut a = AgentConfig::new("http://a".parse().unwrap());
        a.timeout = Duration::ZERO;
        a.circuit_breaker.minimum_calls = 0;
        a.retry.max_attempts = 0;
        let keys: Vec<String> = a.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "timeout",
                "circuit_breaker.minimum_calls",
                "retry.max_attempts"
            ]
        );
        assert_eq!(
            a.validate().unwrap_err().to_string(),
            "timeout = 0s: must be greater than 0"
        );
    }
}
