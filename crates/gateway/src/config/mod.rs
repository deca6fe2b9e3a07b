//! The gateway's TOML configuration (SPEC §2): loading, `[defaults]` inheritance, and
//! errors as `file:line:col: message`.
//!
//! Each section is a typed struct owned by the crate that uses it ([`AgentConfig`],
//! holding the breaker's and retry's; [`PipelineConfig`]; the three sections here): its
//! serde attributes say what its keys are, its [`Validate`] impl names each value that
//! cannot work. This module lists no keys. It reads the document into a
//! [`Document`](agentgate_config::Document), which knows where each key and value is
//! written and words every serde error and [`Invalid`] at its position; merges
//! `[defaults]` into each agent key by key, down nested tables (an inherited value keeps
//! its position; `[defaults]` is also read alone, so a bad default is told even when
//! every agent overrides it); validates each section that read cleanly, telling each
//! problem where its key is written (the agent's table before `[defaults]`; for a pair,
//! whichever key is written); and cross-checks names, stage agents and stage lists.
//! The first problem in the document is reported, so fixing top to bottom always works.
//!
//! `[defaults]` and `[agents.X]` also take the agent client's pool settings
//! (`connect_timeout`, `pool_idle_timeout`, `pool_max_idle_per_host`,
//! `max_response_bytes`). `max_retry_after` is a `circuit_breaker` key only: one key caps
//! `Retry-After` for both the breaker and the retry layer.

mod auth;
mod read;

pub use auth::{AuthConfig, AuthMode, ClientConfig, RESERVED_CLIENT_NAMES};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentgate_agent_client::AgentConfig;
use agentgate_config::{Invalid, Secret, Validate};
use agentgate_pipeline::PipelineConfig;
use agentgate_tls::ServerTlsConfig;
use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::notify::NotifyConfig;

/// A validated gateway configuration: SPEC §2 with every default filled in and every
/// agent's `[defaults]` merged.
///
/// `Deserialize` is the typed half of [`Config::from_toml`] and expects `[defaults]`
/// merged already; read files with [`Config::load`] or [`Config::from_toml`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`: listeners and limits.
    pub server: ServerConfig,
    /// `[admin]`: how the admin token is found.
    pub admin: AdminConfig,
    /// `[auth]`: clients, their keys, allow-lists and quotas (SPEC §7).
    pub auth: AuthConfig,
    /// `[progress]`: where query events are kept.
    pub progress: ProgressConfig,
    /// `[agents.X]` merged with `[defaults]`, by name (at least one).
    pub agents: BTreeMap<String, AgentConfig>,
    /// `[pipelines.P]`, by name; every stage and fallback names a defined agent.
    pub pipelines: BTreeMap<String, PipelineConfig>,
    /// `[[notify]]`: webhooks told of breaker and health transitions.
    pub notify: Vec<NotifyConfig>,
    /// The file it was read from ([`Config::load`]), which a reload reads again.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// The `[server]` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Public listener (`/api/query*`, `/ws`, `/agents/*`, `/healthz`, `/readyz`).
    /// Default `127.0.0.1:8080`.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Admin listener (`/metrics`, `/api/orchestration/*`, `/dashboard`). `None` when the
    /// key is omitted: admin routes are then served on `listen` and reads need the token.
    #[serde(deserialize_with = "socket_addr")]
    pub admin_listen: Option<SocketAddr>,
    /// Request bodies above this are refused with 413. Default 1 MiB.
    pub max_body_bytes: usize,
    /// How long running queries may finish after SIGTERM. Default 30s.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// WebSocket upgrades beyond this answer 503. Default 10000.
    pub max_ws_connections: usize,
    /// A larger client frame closes the connection with 1009. Default 64 KiB.
    pub ws_max_message_bytes: usize,
    /// Subscriptions per WebSocket connection. Default 100.
    pub ws_max_subscriptions: usize,
    /// How long finished queries stay readable. Default 10m.
    #[serde(with = "humantime_serde")]
    pub query_retention: Duration,
    /// Queries running at once, all clients together, on this replica; beyond, 503
    /// `overloaded` (SPEC §8). Default 10000.
    pub max_running_queries: usize,
    /// Open client connections on the public listener; beyond, a new one is accepted
    /// and closed at once (SPEC §8). Default 25000.
    pub max_connections: usize,
    /// A request body that sends nothing for this long: 408, connection closed
    /// (SPEC §8). Default 30s.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// When not empty, WebSocket upgrades whose `Origin` is not listed answer 403
    /// (SPEC §7). Default: empty (any origin).
    pub ws_allowed_origins: Vec<String>,
    /// `[server.tls]`: the public listener serves HTTPS and WSS with this certificate
    /// (the admin listener stays plain: keep it on a private address). Default none.
    pub tls: Option<ServerTlsConfig>,
}

/// The `[admin]` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// The environment variable holding the bearer token for mutating admin routes.
    /// The token itself never appears in the file, so configs can be committed.
    /// Default `AGENTGATE_ADMIN_TOKEN`.
    pub token_env: String,
    /// Admin reads (`GET /api/orchestration/*`, `/dashboard`, the admin `/ws`) need the
    /// token too (SPEC §7). Default false; always true when admin routes share the
    /// public listener (no `admin_listen`).
    pub protect_reads: bool,
}

/// Where query events are kept (`progress.backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProgressBackend {
    /// `"memory"`: in this process (one replica).
    #[default]
    Memory,
    /// `"redis"`: shared, so any replica can serve any query's record and replay.
    Redis,
}

/// The `[progress]` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProgressConfig {
    /// `"memory"` (default) or `"redis"`.
    pub backend: ProgressBackend,
    /// Used when `backend = "redis"`: `redis://[:password@]host:port[/db]`, or
    /// `rediss://…` for TLS. A secret (it may hold a password): never shown, and
    /// `${VAR}` in it is read from the environment. Default `redis://127.0.0.1:6379`.
    pub redis_url: Secret<String>,
    /// Trust roots (PEM) for a `rediss://` Redis, in place of the system's. Default none.
    pub redis_ca_file: Option<PathBuf>,
    /// Events kept per query for resuming subscribers (≥ 1). Default 256.
    pub replay_events: usize,
    /// Each replica's lease in Redis (SPEC §9), renewed every third of it; a replica
    /// whose lease expires is lost, and its unfinished queries are ended. Default 10s.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

/// A config that cannot be used, and where: `file:line:col: message`.
///
/// `line` and `col` are 1-based (the column counts characters); both are 0 when the
/// problem has no position (the file could not be read), and `Display` then prints
/// `file: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name, as given to [`Config::load`] or [`Config::from_toml`].
    pub file: String,
    /// 1-based line of the offending key or value.
    pub line: usize,
    /// 1-based column (in characters) of the offending key or value.
    pub col: usize,
    /// What is wrong, naming the key path (`agents.nlp.timeout = "0s": …`).
    pub message: String,
}

// === impl Config ===

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(src) => Config::from_toml(&src, &file).map(|config| Config {
                file: Some(path.to_owned()),
                ..config
            }),
            Err(e) => Err(ConfigError {
                file,
                line: 0,
                col: 0,
                message: format!("cannot read the config file: {e}"),
            }),
        }
    }

    /// Parses and validates a config document; `file_name` only labels errors.
    pub fn from_toml(src: &str, file_name: &str) -> Result<Config, ConfigError> {
        read::read(src, file_name)
    }

    /// One line for `agentgate check` and the startup log, e.g.
    /// `ok: 2 agents (nlp, nlp_backup), 1 pipeline (default: 1 stage), listen
    /// 127.0.0.1:8080, admin 127.0.0.1:9090`.
    pub fn summary(&self) -> String {
        let plural = |n: usize, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
        let agents: Vec<&str> = self.agents.keys().map(String::as_str).collect();
        let agents = format!("{} ({})", plural(agents.len(), "agent"), agents.join(", "));
        let mut pipelines = plural(self.pipelines.len(), "pipeline");
        if !self.pipelines.is_empty() {
            let stages = self.pipelines.iter();
            let stages =
                stages.map(|(name, p)| format!("{name}: {}", plural(p.stages.len(), "stage")));
            pipelines = format!("{pipelines} ({}", stages.collect::<Vec<_>>().join(", "));
            if !self.pipelines.contains_key("default") {
                pipelines.push_str("; none named \"default\", so queries must name their pipeline");
            }
            pipelines.push(')');
        }
        let admin = match self.server.admin_listen {
            Some(admin) => admin.to_string(),
            None => "on listen (token required)".to_owned(),
        };
        let tls = if self.server.tls.is_some() {
            " (tls)"
        } else {
            ""
        };
        let mut out = format!(
            "ok: {agents}, {pipelines}, listen {}{tls}, admin {admin}",
            self.server.listen
        );
        if self.progress.backend == ProgressBackend::Redis {
            let url = agentgate_progress_redis::redact(self.progress.redis_url.expose());
            out.push_str(&format!(", progress redis {url}"));
        }
        if self.auth.mode == AuthMode::ApiKey {
            out.push_str(&format!(
                ", auth api_key ({})",
                plural(self.auth.clients.len(), "client")
            ));
        }
        out
    }
}

// === impl ServerConfig ===

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: None,
            max_body_bytes: 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            max_ws_connections: 10_000,
            ws_max_message_bytes: 64 * 1024,
            ws_max_subscriptions: 100,
            query_retention: Duration::from_secs(600),
            max_running_queries: 10_000,
            max_connections: 25_000,
            body_read_timeout: Duration::from_secs(30),
            ws_allowed_origins: Vec::new(),
            tls: None,
        }
    }
}

impl Validate for ServerConfig {
    fn problems(&self) -> Vec<Invalid> {
        let counts = [
            ("max_body_bytes", self.max_body_bytes),
            ("max_ws_connections", self.max_ws_connections),
            ("ws_max_message_bytes", self.ws_max_message_bytes),
            ("ws_max_subscriptions", self.ws_max_subscriptions),
            ("max_running_queries", self.max_running_queries),
            ("max_connections", self.max_connections),
        ];
        let zero = counts.into_iter().filter(|(_, n)| *n == 0);
        let mut out: Vec<Invalid> = zero
            .map(|(key, n)| Invalid::new(key, n, "must be at least 1"))
            .collect();
        if self.body_read_timeout.is_zero() {
            out.push(Invalid::new(
                "body_read_timeout",
                "0s",
                "must be greater than 0",
            ));
        }
        for (i, origin) in self.ws_allowed_origins.iter().enumerate() {
            if !valid_origin(origin) {
                let reason = "must be an origin: scheme://host[:port], no path (e.g. \"https://app.example\")";
                out.push(Invalid::new(
                    format!("ws_allowed_origins[{i}]"),
                    format!("{origin:?}"),
                    reason,
                ));
            }
        }
        if let Some(admin) = self.admin_listen.filter(|a| conflicts(self.listen, *a)) {
            let reason = format!(
                "conflicts with server.listen = \"{}\" (omit admin_listen to serve admin routes on listen)",
                self.listen
            );
            out.push(Invalid::new("admin_listen", format!("\"{admin}\""), reason));
        }
        if let Some(tls) = &self.tls {
            out.extend(tls.problems().into_iter().map(|p| p.within("tls")));
        }
        out
    }
}

// === impl AdminConfig ===

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            token_env: "AGENTGATE_ADMIN_TOKEN".to_owned(),
            protect_reads: false,
        }
    }
}

impl AdminConfig {
    /// The admin token from the environment; `None` when unset or empty (mutating admin
    /// routes then answer 403).
    pub fn token(&self) -> Option<String> {
        std::env::var(&self.token_env)
            .ok()
            .filter(|t| !t.is_empty())
    }
}

impl Validate for AdminConfig {
    fn problems(&self) -> Vec<Invalid> {
        let (name, reason) = (
            &self.token_env,
            "must be the name of an environment variable",
        );
        let bad = name.is_empty() || name.contains(['=', '\0']);
        Vec::from_iter(bad.then(|| Invalid::new("token_env", format!("{name:?}"), reason)))
    }
}

// === impl ProgressBackend ===

impl fmt::Display for ProgressBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProgressBackend::Memory => "memory",
            ProgressBackend::Redis => "redis",
        })
    }
}

impl<'de> Deserialize<'de> for ProgressBackend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "memory" => Ok(ProgressBackend::Memory),
            "redis" => Ok(ProgressBackend::Redis),
            other => Err(de::Error::invalid_value(
                de::Unexpected::Str(other),
                &"\"memory\" or \"redis\"",
            )),
        }
    }
}

// === impl ProgressConfig ===

impl Default for ProgressConfig {
    fn default() -> Self {
        Self {
            backend: ProgressBackend::Memory,
            redis_url: Secret::new("redis://127.0.0.1:6379".to_owned()),
            redis_ca_file: None,
            replay_events: 256,
            lease: Duration::from_secs(10),
        }
    }
}

impl ProgressConfig {
    /// The shortest `lease`: below it, a replica's renewals (every third) would race
    /// the round trips to Redis, and a short pause would pass for a lost replica.
    pub const MIN_LEASE: Duration = Duration::from_secs(1);

    /// Whether `redis_url` asks for TLS (`rediss://`).
    pub fn redis_tls(&self) -> bool {
        self.redis_url.expose().starts_with("rediss://")
    }
}

impl Validate for ProgressConfig {
    fn problems(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        if self.replay_events == 0 {
            out.push(Invalid::new("replay_events", 0, "must be at least 1"));
        }
        if self.lease < Self::MIN_LEASE {
            let reason = "must be at least 1s (renewed every third of it)";
            out.push(Invalid::new(
                "lease",
                humantime::format_duration(self.lease),
                reason,
            ));
        }
        if self.backend != ProgressBackend::Redis {
            return out;
        }
        let url = self.redis_url.expose();
        let host = ["redis://", "rediss://"]
            .iter()
            .find_map(|scheme| url.strip_prefix(scheme))
            .map(|rest| rest.rsplit_once('@').map_or(rest, |(_, host)| host));
        if !matches!(host, Some(host) if !host.is_empty() && !host.starts_with('/')) {
            let reason = "progress.backend = \"redis\" needs a redis:// or rediss:// URL with a host in progress.redis_url, e.g. \"redis://127.0.0.1:6379\"";
            let backend = Invalid::new("backend", "\"redis\"", reason);
            out.push(Invalid::new("redis_url", "\"***\"", reason).or(backend));
        }
        if let Some(file) = &self.redis_ca_file {
            let shown = format!("{:?}", file.display().to_string());
            if !self.redis_tls() {
                let reason = "only applies to a rediss:// redis_url (TLS)";
                out.push(Invalid::new("redis_ca_file", shown, reason));
            } else if let Err(reason) = read_pem_certificates(file) {
                out.push(Invalid::new("redis_ca_file", shown, reason));
            }
        }
        out
    }
}

/// Reads a PEM file that must hold at least one certificate.
pub fn read_pem_certificates(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))?;
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned());
    }
    Ok(pem)
}

// === impl ConfigError ===

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.file, self.message),
            line => write!(f, "{}:{line}:{}: {}", self.file, self.col, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

// === helpers ===

/// `listen = "127.0.0.1:8080"`, for `SocketAddr` and `Option<SocketAddr>` fields.
fn socket_addr<'de, D: Deserializer<'de>, T: From<SocketAddr>>(d: D) -> Result<T, D::Error> {
    let text = String::deserialize(d)?;
    text.parse::<SocketAddr>().map(T::from).map_err(|_| {
        de::Error::custom(
            "expected an IP address and port, e.g. \"127.0.0.1:8080\" or \"[::]:8080\"",
        )
    })
}

/// `https://app.example`, `http://127.0.0.1:3000`: what browsers send as `Origin`.
fn valid_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', ' '])
}

/// Whether two listeners would fight over one port (port 0 picks a free one: never).
fn conflicts(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
