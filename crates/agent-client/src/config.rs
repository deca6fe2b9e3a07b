use std::time::Duration;

use agentgate_circuit_breaker::CircuitBreakerConfig;
use agentgate_retry::RetryConfig;
use http::Uri;

/// Everything needed to build one agent's client: SPEC §2's `[defaults]` merged with
/// `[agents.X]` (the gateway's config does the merging), plus pool settings.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    /// Base URL, `http://host:port[/base/path]`.
    pub url: Uri,
    /// Per-attempt timeout (`timeout`).
    pub timeout: Duration,
    /// `circuit_breaker.*`.
    pub circuit_breaker: CircuitBreakerConfig,
    /// `retry.*`.
    pub retry: RetryConfig,
    /// Idle keep-alive connections kept per agent.
    pub pool_max_idle_per_host: usize,
    /// How long an idle connection is kept.
    pub pool_idle_timeout: Duration,
    /// Limit for establishing a connection (also bounded by `timeout`).
    pub connect_timeout: Duration,
    /// Largest response body read for a pipeline stage (larger: `bad_response`).
    pub max_response_bytes: usize,
}

/// An agent setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    /// The URL is not `http://host[:port][/path]`.
    #[error("url = {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `timeout` is zero.
    #[error("timeout = 0s: must be greater than 0")]
    Timeout,
    /// A circuit breaker key.
    #[error(transparent)]
    CircuitBreaker(#[from] agentgate_circuit_breaker::ConfigError),
    /// A retry key.
    #[error(transparent)]
    Retry(#[from] agentgate_retry::ConfigError),
}

impl AgentConfig {
    /// SPEC defaults for an agent at `url`.
    pub fn new(url: Uri) -> Self {
        Self {
            url,
            timeout: Duration::from_secs(30),
            circuit_breaker: CircuitBreakerConfig::default(),
            retry: RetryConfig::default(),
            pool_max_idle_per_host: 256,
            pool_idle_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: 16 * 1024 * 1024,
        }
    }

    /// Checks the URL and every nested key.
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        check_url(&self.url)?;
        if self.timeout.is_zero() {
            return Err(AgentConfigError::Timeout);
        }
        self.circuit_breaker.validate()?;
        self.retry.validate()?;
        Ok(())
    }
}

/// Agents are plain-HTTP services on the operator's network (TLS terminates in front
/// of agentgate or in a mesh sidecar).
pub fn check_url(url: &Uri) -> Result<(), AgentConfigError> {
    let bad = |reason| AgentConfigError::Url {
        url: url.to_string(),
        reason,
    };
    match url.scheme_str() {
        Some("http") => {}
        Some(_) => return Err(bad("only http:// agents are supported")),
        None => return Err(bad("must be an absolute http:// URL")),
    }
    if url.host().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if url.query().is_some() {
        return Err(bad("must not have a query string"));
    }
    Ok(())
}
