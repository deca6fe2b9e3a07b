use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use agentgate_circuit_breaker::CircuitBreakerConfig;
use agentgate_config::{Invalid, Secret, Validate};
use agentgate_retry::RetryConfig;
use agentgate_tls::ClientTlsConfig;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Uri};
use serde::{de, Deserialize, Deserializer};

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
    /// Base URL, `http://host:port[/base/path]` or `https://…`.
    #[serde(deserialize_with = "url")]
    pub url: Uri,
    /// Headers added to every request to this agent, replacing any of the same name
    /// (credentials: `authorization = "Bearer ${LLM_API_KEY}"`). Values are secrets:
    /// `${VAR}` is read from the environment as the config is read, and a value is
    /// never shown (`"***"`).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret<String>>,
    /// Which HTTP version to speak (`http_version`): `"auto"` (default; ALPN on https,
    /// HTTP/1.1 on http), `"2"` (ALPN h2 on https, prior knowledge on http) or `"1.1"`.
    #[serde(default)]
    pub http_version: HttpVersion,
    /// `tls.*`: trust roots, client certificate and name to verify, for `https://`.
    #[serde(default)]
    pub tls: ClientTlsConfig,
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
    /// Largest response body read for a pipeline stage (larger: `bad_response`); for a
    /// streamed answer, the most its chunks may add up to in the stage's output.
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
    /// Streamed answers (SSE, NDJSON): the longest silence between two reads
    /// (`stream_idle_timeout`); the per-attempt `timeout` covers the time to the head.
    #[serde(with = "humantime_serde", default = "defaults::stream_idle_timeout")]
    pub stream_idle_timeout: Duration,
}

/// An agent setting that cannot work: the key (relative to [`AgentConfig`], e.g.
/// `circuit_breaker.window`), its value and why.
pub type AgentConfigError = Invalid;

/// `http_version`: the HTTP version spoken to an agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    /// `"auto"`: on https whatever the agent picks by ALPN (h2 or HTTP/1.1); on http
    /// HTTP/1.1.
    #[default]
    Auto,
    /// `"1.1"`: HTTP/1.1 only.
    Http1,
    /// `"2"`: HTTP/2 only (ALPN h2 on https, prior knowledge on http).
    Http2,
}

/// Headers agentgate sets itself, per request or per connection: an agent's `headers`
/// may not name them.
const OWN_HEADERS: [&str; 12] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
    "x-query-id",
    "idempotency-key",
    "traceparent",
];

/// Prefixes of header names agentgate sets itself.
const OWN_PREFIXES: [&str; 2] = ["x-agentgate-", "x-forwarded-"];

// === impl AgentConfig ===

impl AgentConfig {
    /// SPEC defaults for an agent at `url`.
    pub fn new(url: Uri) -> Self {
        Self {
            url,
            headers: BTreeMap::new(),
            http_version: HttpVersion::Auto,
            tls: ClientTlsConfig::default(),
            timeout: defaults::timeout(),
            circuit_breaker: CircuitBreakerConfig::default(),
            retry: RetryConfig::default(),
            pool_max_idle_per_host: defaults::pool_max_idle_per_host(),
            pool_idle_timeout: defaults::pool_idle_timeout(),
            connect_timeout: defaults::connect_timeout(),
            max_response_bytes: defaults::max_response_bytes(),
            max_concurrency: 0,
            queue_timeout: Duration::ZERO,
            stream_idle_timeout: defaults::stream_idle_timeout(),
        }
    }

    /// The first problem of [`Validate::problems`], if any (for [`AgentClient::new`]).
    ///
    /// [`AgentClient::new`]: crate::AgentClient::new
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        Validate::validate(self)
    }

    /// `headers` as sent: names checked, values marked sensitive (never indexed by
    /// HPACK, shown as `Sensitive` by `Debug`).
    pub fn header_map(&self) -> Result<HeaderMap, AgentConfigError> {
        let mut map = HeaderMap::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            // As the document writes the key path (quoted when not a bare TOML key).
            let bare = name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            let key = match bare && !name.is_empty() {
                true => format!("headers.{name}"),
                false => format!("headers.{name:?}"),
            };
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Invalid::named(&key, "is not a valid header name"))?;
            let own = OWN_HEADERS.contains(&name.as_str())
                || OWN_PREFIXES.iter().any(|p| name.as_str().starts_with(p));
            if own {
                let reason = "is set by agentgate itself and cannot be configured";
                return Err(Invalid::named(key, reason));
            }
            let mut value = HeaderValue::from_str(value.expose()).map_err(|_| {
                let reason = "must be visible ASCII (no control characters such as newlines)";
                Invalid::new(&key, format!("{value:?}"), reason)
            })?;
            value.set_sensitive(true);
            map.insert(name, value);
        }
        Ok(map)
    }
}

impl Validate for AgentConfig {
    fn problems(&self) -> Vec<Invalid> {
        let mut out: Vec<Invalid> = check_url(&self.url).err().into_iter().collect();
        out.extend(self.header_map().err());
        out.extend(self.tls.problems().into_iter().map(|p| p.within("tls")));
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
        if self.stream_idle_timeout.is_zero() {
            let reason = "must be greater than 0";
            out.push(Invalid::new("stream_idle_timeout", "0s", reason));
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

/// Agents are `http://` or `https://` services (SPEC §6).
pub fn check_url(url: &Uri) -> Result<(), AgentConfigError> {
    let reason = match url.scheme_str() {
        Some("http" | "https") if url.host().is_none_or(str::is_empty) => "has no host",
        Some("http" | "https") if url.query().is_some() => "must not have a query string",
        Some("http" | "https") => return Ok(()),
        Some(_) => "must be an http:// or https:// URL",
        None => "must be an absolute http:// or https:// URL",
    };
    Err(Invalid::new(
        "url",
        format!("{:?}", url.to_string()),
        reason,
    ))
}

// === impl HttpVersion ===

impl HttpVersion {
    /// The config value (`auto`, `1.1`, `2`).
    pub const fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Auto => "auto",
            HttpVersion::Http1 => "1.1",
            HttpVersion::Http2 => "2",
        }
    }
}

impl fmt::Display for HttpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for HttpVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "auto" => Ok(HttpVersion::Auto),
            "1.1" => Ok(HttpVersion::Http1),
            "2" => Ok(HttpVersion::Http2),
            other => Err(de::Error::invalid_value(
                de::Unexpected::Str(other),
                &"\"auto\", \"1.1\" or \"2\"",
            )),
        }
    }
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
        "{reason}; write e.g. \"http://127.0.0.1:7001\" or \"https://llm.internal:8443\""
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

    pub(super) fn stream_idle_timeout() -> Duration {
        Duration::from_secs(30)
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
        let hint = "; write e.g. \"http://127.0.0.1:7001\" or \"https://llm.internal:8443\"";
        for (url, want) in [
            ("ftp://a", "must be an http:// or https:// URL"),
            ("a:7001", "must be an absolute http:// or https:// URL"),
            ("http://a/?x=1", "must not have a query string"),
            ("https://a/?x=1", "must not have a query string"),
        ] {
            let err = parse(&format!("url = {url:?}")).unwrap_err();
            assert_eq!(err.message(), format!("{want}{hint}"), "{url}");
        }
        let https = parse("url = \"https://llm.internal:8443/v1\"").unwrap();
        assert_eq!(https.url.scheme_str(), Some("https"));
        let err = parse("timeout = \"1s\"").unwrap_err();
        assert_eq!(err.message(), "missing field `url`");
    }

    #[test]
    fn http_versions() {
        for (text, want) in [
            ("auto", HttpVersion::Auto),
            ("1.1", HttpVersion::Http1),
            ("2", HttpVersion::Http2),
        ] {
            let a = parse(&format!("url = \"http://a\"\nhttp_version = {text:?}")).unwrap();
            assert_eq!((a.http_version, a.http_version.as_str()), (want, text));
        }
        let err = parse("url = \"http://a\"\nhttp_version = \"3\"").unwrap_err();
        assert!(
            err.message()
                .contains("expected \"auto\", \"1.1\" or \"2\""),
            "{err}"
        );
    }

    #[test]
    fn headers_are_secrets_read_from_the_environment() {
        // PATH: a variable every test environment has (set_var races other tests).
        let path = std::env::var("PATH").expect("PATH is set");
        let a = parse(
            "url = \"https://a\"\nheaders = { authorization = \"Bearer ${PATH}\", x-team = \"s3cr3t\" }",
        )
        .unwrap();
        let map = a.header_map().unwrap();
        assert_eq!(map["authorization"], format!("Bearer {path}").as_str());
        assert!(map["authorization"].is_sensitive());
        assert_eq!(map["x-team"], "s3cr3t");
        // Neither the config's Debug nor the header map's shows a value.
        let shown = format!("{a:?} {map:?}");
        assert!(!shown.contains(&path), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");

        let err = parse(
            "url = \"http://a\"\nheaders = { authorization = \"${AGENT_CLIENT_TEST_UNSET}\" }",
        )
        .unwrap_err();
        assert_eq!(
            err.message(),
            "environment variable `AGENT_CLIENT_TEST_UNSET` is not set"
        );

        let mut bad = AgentConfig::new("http://a".parse().unwrap());
        for (name, value, want) in [
            ("bad name", "x", "headers.\"bad name\": is not a valid header name"),
            ("host", "x", "headers.host: is set by agentgate itself and cannot be configured"),
            (
                "x-agentgate-stage",
                "x",
                "headers.x-agentgate-stage: is set by agentgate itself and cannot be configured",
            ),
            (
                "x-key",
                "s3cr3t\nx",
                "headers.x-key = \"***\": must be visible ASCII (no control characters such as newlines)",
            ),
        ] {
            bad.headers = BTreeMap::from([(name.to_owned(), Secret::new(value.to_owned()))]);
            assert_eq!(bad.validate().unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn problems_name_nested_keys() {
        let mut a = AgentConfig::new("http://a".parse().unwrap());
        a.timeout = Duration::ZERO;
        a.stream_idle_timeout = Duration::ZERO;
        a.circuit_breaker.minimum_calls = 0;
        a.retry.max_attempts = 0;
        let keys: Vec<String> = a.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "timeout",
                "stream_idle_timeout",
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
