//! The gateway's TOML configuration (SPEC §2): loading, per-key inheritance from
//! `[defaults]`, and validation with `file:line:col: message` errors.
//!
//! # How it works
//!
//! The document is parsed once into `toml`'s spanned tree ([`DeTable`]), which keeps the
//! byte span of every key and value. A small hand-written walker then checks each table
//! against the keys it may hold, converts each value on its own (through serde, so the
//! layer crates' own types — [`CircuitBreakerConfig`], [`RetryConfig`], [`Fallback`] —
//! decide what a value means) and runs the layers' `validate()` on the merged result. Doing
//! it by hand rather than with one `#[derive(Deserialize)]` is what lets every error point
//! at the offending key or value, name its full key path, and let
//! `[agents.X.circuit_breaker]` override single keys of `[defaults.circuit_breaker]`.
//!
//! Every problem found is recorded with its position; the one reported is the first in
//! document order, so fixing errors top to bottom always works.
//!
//! # Keys beyond the SPEC's example
//!
//! `[defaults]` and `[agents.X]` also accept the agent client's pool settings
//! (`connect_timeout`, `pool_idle_timeout`, `pool_max_idle_per_host`, `max_response_bytes`).
//! The retry layer's `max_retry_after` is not a `retry` key: it is taken from
//! `circuit_breaker.max_retry_after`, so one key caps `Retry-After` for both layers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use agentgate_agent_client::{check_url, AgentConfig, AgentConfigError};
use agentgate_circuit_breaker::CircuitBreakerConfig;
use agentgate_pipeline::{Fallback, PipelineConfig, StageConfig};
use agentgate_retry::RetryConfig;
use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

/// A validated gateway configuration: SPEC §2 with every default filled in and every
/// agent's `[defaults]` merged.
#[derive(Clone, Debug)]
pub struct Config {
    /// `[server]`: listeners and limits.
    pub server: ServerConfig,
    /// `[admin]`: how the admin token is found.
    pub admin: AdminConfig,
    /// `[progress]`: where query events are kept.
    pub progress: ProgressConfig,
    /// `[agents.X]` merged with `[defaults]`, by name (at least one).
    pub agents: BTreeMap<String, AgentConfig>,
    /// `[pipelines.P]`, by name; every stage and fallback names a defined agent.
    pub pipelines: BTreeMap<String, PipelineConfig>,
}

/// The `[server]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Public listener (`/api/query*`, `/ws`, `/agents/*`, `/healthz`, `/readyz`).
    /// Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Admin listener (`/metrics`, `/api/orchestration/*`, `/dashboard`). `None` when the
    /// key is omitted: admin routes are then served on `listen` and reads need the token.
    pub admin_listen: Option<SocketAddr>,
    /// Request bodies above this are refused with 413. Default 1 MiB.
    pub max_body_bytes: usize,
    /// How long running queries may finish after SIGTERM. Default 30s.
    pub shutdown_grace: Duration,
    /// WebSocket upgrades beyond this answer 503. Default 10000.
    pub max_ws_connections: usize,
    /// A larger client frame closes the connection with 1009. Default 64 KiB.
    pub ws_max_message_bytes: usize,
    /// Subscriptions per WebSocket connection. Default 100.
    pub ws_max_subscriptions: usize,
    /// How long finished queries stay readable. Default 10m.
    pub query_retention: Duration,
}

/// The `[admin]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// The environment variable holding the bearer token for mutating admin routes.
    /// The token itself never appears in the file, so configs can be committed.
    /// Default `AGENTGATE_ADMIN_TOKEN`.
    pub token_env: String,
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgressConfig {
    /// `"memory"` (default) or `"redis"`.
    pub backend: ProgressBackend,
    /// Used when `backend = "redis"`; a `redis://` URL. Default `redis://127.0.0.1:6379`.
    pub redis_url: String,
    /// Events kept per query for resuming subscribers (≥ 1). Default 256.
    pub replay_events: usize,
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
            Ok(src) => Config::from_toml(&src, &file),
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
        let mut cx = Checker::new(src);
        let config = match DeTable::parse(src) {
            Ok(root) => {
                let span = root.span();
                cx.document(&Spanned::new(span, DeValue::Table(root.into_inner())))
            }
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let found = src.get(span.clone()).unwrap_or("").trim();
                let message = if e.message() == "duplicate key" && !found.is_empty() {
                    format!("duplicate key `{found}`")
                } else {
                    format!("invalid TOML: {}", e.message().trim())
                };
                cx.error(&span, message);
                None
            }
        };
        match (cx.first_error(file_name), config) {
            (Some(err), _) => Err(err),
            (None, Some(config)) => Ok(config),
            (None, None) => Err(ConfigError {
                file: file_name.to_owned(),
                line: 1,
                col: 1,
                message: "invalid config".to_owned(),
            }),
        }
    }

    /// One line for `agentgate check` and the startup log, e.g.
    /// `ok: 2 agents (nlp, nlp_backup), 1 pipeline (default: 1 stage), listen
    /// 127.0.0.1:8080, admin 127.0.0.1:9090`.
    pub fn summary(&self) -> String {
        let plural = |n: usize, one: &str| {
            if n == 1 {
                format!("{n} {one}")
            } else {
                format!("{n} {one}s")
            }
        };
        let agents: Vec<&str> = self.agents.keys().map(String::as_str).collect();
        let mut out = format!(
            "ok: {} ({})",
            plural(agents.len(), "agent"),
            agents.join(", ")
        );
        out.push_str(&format!(", {}", plural(self.pipelines.len(), "pipeline")));
        if !self.pipelines.is_empty() {
            let list: Vec<String> = self
                .pipelines
                .iter()
                .map(|(name, p)| format!("{name}: {}", plural(p.stages.len(), "stage")))
                .collect();
            out.push_str(&format!(" ({}", list.join(", ")));
            if !self.pipelines.contains_key("default") {
                out.push_str("; none named \"default\", so queries must name their pipeline");
            }
            out.push(')');
        }
        out.push_str(&format!(", listen {}", self.server.listen));
        match self.server.admin_listen {
            Some(admin) => out.push_str(&format!(", admin {admin}")),
            None => out.push_str(", admin on listen (token required)"),
        }
        if self.progress.backend == ProgressBackend::Redis {
            out.push_str(&format!(", progress redis {}", self.progress.redis_url));
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
        }
    }
}

// === impl AdminConfig ===

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            token_env: "AGENTGATE_ADMIN_TOKEN".to_owned(),
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

// === impl ProgressBackend ===

impl fmt::Display for ProgressBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProgressBackend::Memory => "memory",
            ProgressBackend::Redis => "redis",
        })
    }
}

// === impl ProgressConfig ===

impl Default for ProgressConfig {
    fn default() -> Self {
        Self {
            backend: ProgressBackend::Memory,
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            replay_events: 256,
        }
    }
}

// === impl ConfigError ===

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.col, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

// === the checker ===

type Span = Range<usize>;
type Node<'i> = Spanned<DeValue<'i>>;

const ROOT_KEYS: &[&str] = &[
    "server",
    "admin",
    "progress",
    "defaults",
    "agents",
    "pipelines",
];
const SERVER_KEYS: &[&str] = &[
    "listen",
    "admin_listen",
    "max_body_bytes",
    "shutdown_grace",
    "max_ws_connections",
    "ws_max_message_bytes",
    "ws_max_subscriptions",
    "query_retention",
];
const ADMIN_KEYS: &[&str] = &["token_env"];
const PROGRESS_KEYS: &[&str] = &["backend", "redis_url", "replay_events"];
/// Keys of `[defaults]`; an agent takes these plus `url`.
const DEFAULTS_KEYS: &[&str] = &[
    "timeout",
    "connect_timeout",
    "pool_idle_timeout",
    "pool_max_idle_per_host",
    "max_response_bytes",
    "circuit_breaker",
    "retry",
];
const AGENT_KEYS: &[&str] = &[
    "url",
    "timeout",
    "connect_timeout",
    "pool_idle_timeout",
    "pool_max_idle_per_host",
    "max_response_bytes",
    "circuit_breaker",
    "retry",
];
const BREAKER_KEYS: &[&str] = &[
    "consecutive_failures",
    "failure_rate_threshold",
    "minimum_calls",
    "window",
    "slow_call_duration",
    "slow_call_rate_threshold",
    "open_duration",
    "max_open_duration",
    "half_open_max_calls",
    "open_on_retry_after",
    "max_retry_after",
];
const RETRY_KEYS: &[&str] = &[
    "max_attempts",
    "base_delay",
    "max_delay",
    "jitter",
    "retry_on",
    "budget_ratio",
    "budget_min_per_sec",
    "honor_retry_after",
    "retry_non_idempotent",
    "max_replay_body_bytes",
];
const PIPELINE_KEYS: &[&str] = &["deadline", "retry_allowance", "stages"];
const STAGE_KEYS: &[&str] = &["name", "agent", "path", "weight", "optional", "fallback"];
const FALLBACK_KEYS: &[&str] = &["agent", "static"];

/// Names from other resilience libraries (and the seed project), mapped to ours.
const ALIASES: &[(&str, &str)] = &[
    ("recovery_timeout", "open_duration"),
    ("reset_timeout", "open_duration"),
    ("wait_duration_in_open_state", "open_duration"),
    ("failure_threshold", "consecutive_failures"),
    ("sliding_window", "window"),
    ("max_retries", "max_attempts"),
    ("retries", "max_attempts"),
    ("initial_delay", "base_delay"),
    ("deadline", "timeout"),
];

/// One `key = value` of a table.
struct Entry<'a, 'i> {
    key: &'a str,
    key_span: Span,
    value: &'a Node<'i>,
}

/// A table being checked: its key path, where it starts, its entries in document order.
struct Table<'a, 'i> {
    path: String,
    span: Span,
    entries: Vec<Entry<'a, 'i>>,
}

/// The explicitly written keys of one `circuit_breaker` or `retry` table (of
/// `[defaults]` or of an agent) that are valid on their own.
struct Layer<'a, 'i> {
    path: String,
    entries: Vec<Entry<'a, 'i>>,
}

/// A `validate()` failure of a layer crate's config, with the key that may be the one
/// to blame instead (`open_duration` for `max_open_duration`, …) and what to say then.
struct Invalid {
    field: &'static str,
    value: String,
    reason: &'static str,
    partner: Option<(&'static str, String)>,
}

/// `[defaults]` / `[agents.X]` scalar keys as written (unset = inherited).
#[derive(Default)]
struct AgentKeys {
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    pool_idle_timeout: Option<Duration>,
    pool_max_idle_per_host: Option<usize>,
    max_response_bytes: Option<usize>,
}

/// `[defaults]`, checked once and inherited by every agent.
#[derive(Default)]
struct Defaults<'a, 'i> {
    table: Option<Table<'a, 'i>>,
    keys: AgentKeys,
    breaker: Option<Layer<'a, 'i>>,
    retry: Option<Layer<'a, 'i>>,
}

/// Walks the spanned document, recording every problem with its position.
struct Checker<'s> {
    src: &'s str,
    errors: Vec<(usize, String)>,
}

impl<'a, 'i> Table<'a, 'i> {
    fn get(&self, key: &str) -> Option<&Entry<'a, 'i>> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// `in [agents.nlp]`, `in pipelines.default.stages[0]`, `at the top level`.
    fn location(&self) -> String {
        if self.path.is_empty() {
            "at the top level".to_owned()
        } else if self.path.ends_with(']') {
            format!("in {}", self.path)
        } else {
            format!("in [{}]", self.path)
        }
    }
}

impl<'a, 'i> Layer<'a, 'i> {
    fn get(&self, key: &str) -> Option<&Entry<'a, 'i>> {
        self.entries.iter().find(|e| e.key == key)
    }
}

impl<'s> Checker<'s> {
    fn new(src: &'s str) -> Self {
        Self {
            src,
            errors: Vec::new(),
        }
    }

    fn error(&mut self, span: &Span, message: impl Into<String>) {
        self.errors.push((span.start, message.into()));
    }

    /// The first problem in document order.
    fn first_error(&self, file: &str) -> Option<ConfigError> {
        let (offset, message) = self.errors.iter().min_by_key(|(offset, _)| *offset)?;
        let (line, col) = line_col(self.src, *offset);
        Some(ConfigError {
            file: file.to_owned(),
            line,
            col,
            message: message.clone(),
        })
    }

    // --- the document, section by section ---

    fn document(&mut self, root: &Node<'_>) -> Option<Config> {
        let root = self.table(String::new(), root)?;
        self.known_keys(&root, ROOT_KEYS);
        let server = match root.get("server") {
            Some(e) => self.server(e),
            None => ServerConfig::default(),
        };
        let admin = match root.get("admin") {
            Some(e) => self.admin(e),
            None => AdminConfig::default(),
        };
        let progress = match root.get("progress") {
            Some(e) => self.progress(e),
            None => ProgressConfig::default(),
        };
        let defaults = match root.get("defaults") {
            Some(e) => self.defaults(e),
            None => Defaults::default(),
        };

        let mut agents = BTreeMap::new();
        let mut agent_names = BTreeSet::new();
        match root.get("agents") {
            Some(e) => {
                if let Some(table) = self.table("agents".to_owned(), e.value) {
                    for entry in &table.entries {
                        self.name("agent", &table, entry);
                        agent_names.insert(entry.key.to_owned());
                        if let Some(agent) = self.agent(&table, entry, &defaults) {
                            agents.insert(entry.key.to_owned(), agent);
                        }
                    }
                    if table.entries.is_empty() {
                        self.error(
                            &e.key_span,
                            "[agents] is empty: define at least one [agents.NAME] with a `url`",
                        );
                    }
                }
            }
            None => self.error(
                &(0..0),
                "no agents configured: define at least one [agents.NAME] with a `url`",
            ),
        }

        let mut pipelines = BTreeMap::new();
        if let Some(e) = root.get("pipelines") {
            if let Some(table) = self.table("pipelines".to_owned(), e.value) {
                for entry in &table.entries {
                    self.name("pipeline", &table, entry);
                    if let Some(p) = self.pipeline(&table, entry, &agent_names) {
                        pipelines.insert(entry.key.to_owned(), p);
                    }
                }
            }
        }

        Some(Config {
            server,
            admin,
            progress,
            agents,
            pipelines,
        })
    }

    fn server(&mut self, at: &Entry<'_, '_>) -> ServerConfig {
        let mut out = ServerConfig::default();
        let Some(t) = self.table("server".to_owned(), at.value) else {
            return out;
        };
        self.known_keys(&t, SERVER_KEYS);
        if let Some(addr) = self.addr(&t, "listen") {
            out.listen = addr;
        }
        out.admin_listen = self.addr(&t, "admin_listen");
        if let (Some(admin), Some(e)) = (out.admin_listen, t.get("admin_listen")) {
            if conflicts(out.listen, admin) {
                let msg = format!(
                    "{}: conflicts with server.listen = \"{}\" (omit admin_listen to serve admin routes on listen)",
                    self.show(&t.path, e),
                    out.listen
                );
                self.error(&e.value.span(), msg);
            }
        }
        if let Some(n) = self.count(&t, "max_body_bytes", 1) {
            out.max_body_bytes = n;
        }
        if let Some(d) = self.duration_key(&t, "shutdown_grace", false) {
            out.shutdown_grace = d;
        }
        if let Some(n) = self.count(&t, "max_ws_connections", 1) {
            out.max_ws_connections = n;
        }
        if let Some(n) = self.count(&t, "ws_max_message_bytes", 1) {
            out.ws_max_message_bytes = n;
        }
        if let Some(n) = self.count(&t, "ws_max_subscriptions", 1) {
            out.ws_max_subscriptions = n;
        }
        if let Some(d) = self.duration_key(&t, "query_retention", false) {
            out.query_retention = d;
        }
        out
    }

    fn admin(&mut self, at: &Entry<'_, '_>) -> AdminConfig {
        let mut out = AdminConfig::default();
        let Some(t) = self.table("admin".to_owned(), at.value) else {
            return out;
        };
        self.known_keys(&t, ADMIN_KEYS);
        if let Some(e) = t.get("token_env") {
            if let Some(name) = self.value::<String>(&t.path, e) {
                if name.is_empty() || name.contains(['=', '\0']) {
                    let msg = format!(
                        "{}: must be the name of an environment variable",
                        self.show(&t.path, e)
                    );
                    self.error(&e.value.span(), msg);
                } else {
                    out.token_env = name;
                }
            }
        }
        out
    }

    fn progress(&mut self, at: &Entry<'_, '_>) -> ProgressConfig {
        let mut out = ProgressConfig::default();
        let Some(t) = self.table("progress".to_owned(), at.value) else {
            return out;
        };
        self.known_keys(&t, PROGRESS_KEYS);
        if let Some(e) = t.get("backend") {
            match self.value::<String>(&t.path, e).as_deref() {
                Some("memory") => out.backend = ProgressBackend::Memory,
                Some("redis") => out.backend = ProgressBackend::Redis,
                Some(_) => {
                    let msg = format!(
                        "{}: expected \"memory\" or \"redis\"",
                        self.show(&t.path, e)
                    );
                    self.error(&e.value.span(), msg);
                }
                None => {}
            }
        }
        if let Some(e) = t.get("redis_url") {
            if let Some(url) = self.value::<String>(&t.path, e) {
                out.redis_url = url;
            }
        }
        if let Some(n) = self.count(&t, "replay_events", 1) {
            out.replay_events = n;
        }
        let redis_ok = out
            .redis_url
            .strip_prefix("redis://")
            .is_some_and(|rest| !rest.is_empty());
        if out.backend == ProgressBackend::Redis && !redis_ok {
            if let Some(e) = t.get("redis_url").or(t.get("backend")) {
                let msg = format!(
                    "{}: progress.backend = \"redis\" needs a redis:// URL in progress.redis_url, e.g. \"redis://127.0.0.1:6379\"",
                    self.show(&t.path, e)
                );
                self.error(&e.value.span(), msg);
            }
        }
        out
    }

    fn defaults<'a, 'i>(&mut self, at: &Entry<'a, 'i>) -> Defaults<'a, 'i> {
        let mut out = Defaults::default();
        let Some(t) = self.table("defaults".to_owned(), at.value) else {
            return out;
        };
        self.known_keys(&t, DEFAULTS_KEYS);
        out.keys = self.agent_keys(&t);
        out.breaker = t
            .get("circuit_breaker")
            .and_then(|e| self.layer::<CircuitBreakerConfig>(&t, e, BREAKER_KEYS));
        out.retry = t
            .get("retry")
            .and_then(|e| self.layer::<RetryConfig>(&t, e, RETRY_KEYS));
        // Defaults are checked on their own, so a bad one is reported where it is written
        // even when no agent inherits it.
        let breaker_layers: Vec<&Layer<'_, '_>> = out.breaker.iter().collect();
        let retry_layers: Vec<&Layer<'_, '_>> = out.retry.iter().collect();
        self.resilience(&t, &breaker_layers, &retry_layers);
        out.table = Some(t);
        out
    }

    fn agent(
        &mut self,
        agents: &Table<'_, '_>,
        at: &Entry<'_, '_>,
        defaults: &Defaults<'_, '_>,
    ) -> Option<AgentConfig> {
        let errors_before = self.errors.len();
        let t = self.table(join(&agents.path, at.key), at.value)?;
        self.known_keys(&t, AGENT_KEYS);

        let url = match t.get("url") {
            Some(e) => self.url(&t.path, e),
            None => {
                let msg = format!("missing required key `url` {}", t.location());
                self.error(&t.span, msg);
                None
            }
        };
        let keys = self.agent_keys(&t);
        let breaker = t
            .get("circuit_breaker")
            .and_then(|e| self.layer::<CircuitBreakerConfig>(&t, e, BREAKER_KEYS));
        let retry = t
            .get("retry")
            .and_then(|e| self.layer::<RetryConfig>(&t, e, RETRY_KEYS));
        // Most specific first: the agent's own keys, then [defaults].
        let breaker_layers: Vec<&Layer<'_, '_>> =
            breaker.iter().chain(defaults.breaker.iter()).collect();
        let retry_layers: Vec<&Layer<'_, '_>> = retry.iter().chain(defaults.retry.iter()).collect();
        let (circuit_breaker, retry_config) =
            self.resilience(&t, &breaker_layers, &retry_layers)?;

        let mut agent = AgentConfig::new(url?);
        for keys in [&defaults.keys, &keys] {
            if let Some(d) = keys.timeout {
                agent.timeout = d;
            }
            if let Some(d) = keys.connect_timeout {
                agent.connect_timeout = d;
            }
            if let Some(d) = keys.pool_idle_timeout {
                agent.pool_idle_timeout = d;
            }
            if let Some(n) = keys.pool_max_idle_per_host {
                agent.pool_max_idle_per_host = n;
            }
            if let Some(n) = keys.max_response_bytes {
                agent.max_response_bytes = n;
            }
        }
        agent.circuit_breaker = circuit_breaker;
        agent.retry = retry_config;
        if self.errors.len() > errors_before {
            return None;
        }
        // Everything above was checked key by key; this catches checks the agent client
        // may add later.
        if let Err(e) = agent.validate() {
            let span = match &e {
                AgentConfigError::Url { .. } => t.get("url").map(|e| e.value.span()),
                AgentConfigError::Timeout => t
                    .get("timeout")
                    .or(defaults.table.as_ref().and_then(|d| d.get("timeout")))
                    .map(|e| e.value.span()),
                _ => None,
            };
            self.error(&span.unwrap_or(t.span.clone()), format!("{}.{e}", t.path));
            return None;
        }
        Some(agent)
    }

    /// `timeout`, `connect_timeout`, … of `[defaults]` or `[agents.X]`.
    fn agent_keys(&mut self, t: &Table<'_, '_>) -> AgentKeys {
        AgentKeys {
            timeout: self.duration_key(t, "timeout", true),
            connect_timeout: self.duration_key(t, "connect_timeout", true),
            pool_idle_timeout: self.duration_key(t, "pool_idle_timeout", false),
            pool_max_idle_per_host: self.count(t, "pool_max_idle_per_host", 0),
            max_response_bytes: self.count(t, "max_response_bytes", 1),
        }
    }

    /// A `circuit_breaker` or `retry` table: unknown keys are reported, and each known
    /// key is converted on its own so that a bad one is reported where it is written.
    fn layer<'a, 'i, T: DeserializeOwned>(
        &mut self,
        parent: &Table<'a, 'i>,
        at: &Entry<'a, 'i>,
        known: &[&str],
    ) -> Option<Layer<'a, 'i>> {
        let t = self.table(join(&parent.path, at.key), at.value)?;
        self.known_keys(&t, known);
        let mut entries = Vec::new();
        for e in t.entries {
            if !known.contains(&e.key) {
                continue;
            }
            match deserialize_table::<T>([(e.key, e.value)]) {
                Ok(_) => entries.push(e),
                Err(err) => {
                    let msg = format!(
                        "{}: {}",
                        self.show(&t.path, &e),
                        describe(err.message(), e.value)
                    );
                    self.error(&e.value.span(), msg);
                }
            }
        }
        Some(Layer {
            path: t.path,
            entries,
        })
    }

    /// Merges breaker and retry layers (most specific first) over the SPEC defaults and
    /// validates the result, pointing at the key a problem comes from.
    fn resilience(
        &mut self,
        owner: &Table<'_, '_>,
        breaker_layers: &[&Layer<'_, '_>],
        retry_layers: &[&Layer<'_, '_>],
    ) -> Option<(CircuitBreakerConfig, RetryConfig)> {
        let breaker = self.validated(
            owner,
            breaker_layers,
            "circuit_breaker",
            |c: &CircuitBreakerConfig| {
                c.validate().map_err(|e| Invalid {
                    field: e.field,
                    value: e.value,
                    reason: e.reason,
                    partner: (e.field == "max_open_duration").then(|| {
                        (
                            "open_duration",
                            format!(
                                "must not be longer than max_open_duration ({})",
                                humantime::format_duration(c.max_open_duration)
                            ),
                        )
                    }),
                })
            },
        );
        let retry = self.validated(owner, retry_layers, "retry", |c: &RetryConfig| {
            c.validate().map_err(|e| Invalid {
                field: e.field,
                value: e.value,
                reason: e.reason,
                partner: (e.field == "base_delay").then(|| {
                    (
                        "max_delay",
                        format!(
                            "must not be shorter than base_delay ({})",
                            humantime::format_duration(c.base_delay)
                        ),
                    )
                }),
            })
        });
        let (breaker, mut retry) = (breaker?, retry?);
        retry.max_retry_after = breaker.max_retry_after;
        Some((breaker, retry))
    }

    /// Merges `layers` into a `T` and runs `check` on it. `validate()` stops at its first
    /// problem, so the keys it blames are dropped (falling back to the SPEC default) and
    /// the check repeated: every bad key is recorded and the first in the file wins.
    fn validated<T: DeserializeOwned>(
        &mut self,
        owner: &Table<'_, '_>,
        layers: &[&Layer<'_, '_>],
        section: &str,
        check: impl Fn(&T) -> Result<(), Invalid>,
    ) -> Option<T> {
        let path = join(&owner.path, section);
        let mut dropped: Vec<&'static str> = Vec::new();
        loop {
            let config = self.merge::<T>(owner, layers, &path, &dropped)?;
            let Err(invalid) = check(&config) else {
                return dropped.is_empty().then_some(config);
            };
            if dropped.contains(&invalid.field) {
                return None;
            }
            dropped.push(invalid.field);
            dropped.extend(invalid.partner.as_ref().map(|(key, _)| *key));
            self.invalid(owner, layers, &path, invalid);
        }
    }

    fn merge<T: DeserializeOwned>(
        &mut self,
        owner: &Table<'_, '_>,
        layers: &[&Layer<'_, '_>],
        path: &str,
        dropped: &[&str],
    ) -> Option<T> {
        // Least specific first, so later (more specific) keys replace earlier ones.
        let entries = layers
            .iter()
            .rev()
            .flat_map(|l| l.entries.iter())
            .filter(|e| !dropped.contains(&e.key))
            .map(|e| (e.key, e.value));
        match deserialize_table::<T>(entries) {
            Ok(v) => Some(v),
            Err(err) => {
                // Each key was checked on its own; only a combination can fail here.
                self.error(&owner.span, format!("{path}: {}", err.message()));
                None
            }
        }
    }

    /// Reports a `validate()` failure at the key it is about: the most specific layer
    /// that writes it (or, for a "must not be longer than" pair, its partner key).
    fn invalid(
        &mut self,
        owner: &Table<'_, '_>,
        layers: &[&Layer<'_, '_>],
        path: &str,
        Invalid {
            field,
            value,
            reason,
            partner,
        }: Invalid,
    ) {
        for layer in layers {
            if let Some(e) = layer.get(field) {
                let msg = format!("{}: {reason}", self.show(&layer.path, e));
                self.error(&e.value.span(), msg);
                return;
            }
            if let Some((key, why)) = &partner {
                if let Some(e) = layer.get(key) {
                    let msg = format!("{}: {why}", self.show(&layer.path, e));
                    self.error(&e.value.span(), msg);
                    return;
                }
            }
        }
        self.error(
            &owner.span,
            format!("{path}.{field} = {value} (the default): {reason}"),
        );
    }

    fn url(&mut self, path: &str, e: &Entry<'_, '_>) -> Option<http::Uri> {
        let text = self.value::<String>(path, e)?;
        let problem = match text.parse::<http::Uri>() {
            Ok(uri) => match check_url(&uri) {
                Ok(()) => return Some(uri),
                Err(AgentConfigError::Url { reason, .. }) => reason.to_owned(),
                Err(other) => other.to_string(),
            },
            Err(err) => format!("not a valid URL ({err})"),
        };
        let msg = format!(
            "{}: {problem}; write e.g. \"http://127.0.0.1:7001\"",
            self.show(path, e)
        );
        self.error(&e.value.span(), msg);
        None
    }

    fn pipeline(
        &mut self,
        pipelines: &Table<'_, '_>,
        at: &Entry<'_, '_>,
        agents: &BTreeSet<String>,
    ) -> Option<PipelineConfig> {
        let errors_before = self.errors.len();
        let t = self.table(join(&pipelines.path, at.key), at.value)?;
        self.known_keys(&t, PIPELINE_KEYS);
        let deadline = self
            .duration_key(&t, "deadline", true)
            .unwrap_or(Duration::from_secs(60));
        let retry_allowance = match t.get("retry_allowance") {
            Some(e) => self.value::<u32>(&t.path, e).unwrap_or_default(),
            None => 4,
        };
        let mut stages = Vec::new();
        match t.get("stages") {
            None => {
                let msg = format!(
                    "pipeline `{}` has no stages: add at least one [[{}.stages]]",
                    at.key, t.path
                );
                self.error(&t.span, msg);
            }
            Some(e) => match e.value.get_ref() {
                DeValue::Array(items) => {
                    if items.iter().next().is_none() {
                        let msg = format!("{}.stages: a pipeline needs at least one stage", t.path);
                        self.error(&e.value.span(), msg);
                    }
                    let mut names: BTreeMap<String, usize> = BTreeMap::new();
                    for (i, item) in items.iter().enumerate() {
                        let path = format!("{}.stages[{i}]", t.path);
                        if let Some(stage) = self.stage(path, item, agents, &mut names, i) {
                            stages.push(stage);
                        }
                    }
                }
                other => {
                    let msg = format!(
                        "{}.stages: expected an array of tables ([[{}.stages]]), found {}",
                        t.path,
                        t.path,
                        a_type(other)
                    );
                    self.error(&e.value.span(), msg);
                }
            },
        }
        (self.errors.len() == errors_before).then_some(PipelineConfig {
            deadline,
            retry_allowance,
            stages,
        })
    }

    fn stage(
        &mut self,
        path: String,
        node: &Node<'_>,
        agents: &BTreeSet<String>,
        names: &mut BTreeMap<String, usize>,
        index: usize,
    ) -> Option<StageConfig> {
        let t = self.table(path, node)?;
        self.known_keys(&t, STAGE_KEYS);
        let required = |cx: &mut Self, key: &str| -> Option<(String, Span)> {
            match t.get(key) {
                Some(e) => {
                    let v = cx.value::<String>(&t.path, e)?;
                    if v.is_empty() {
                        let msg = format!("{}: must not be empty", cx.show(&t.path, e));
                        cx.error(&e.value.span(), msg);
                        return None;
                    }
                    Some((v, e.value.span()))
                }
                None => {
                    let msg = format!("missing required key `{key}` {}", t.location());
                    cx.error(&t.span, msg);
                    None
                }
            }
        };
        let name = required(self, "name");
        let agent = required(self, "agent");

        if let Some((name, span)) = &name {
            if let Some(first) = names.get(name) {
                let msg = format!(
                    "{}.name: duplicate stage name \"{name}\" (also stages[{first}])",
                    t.path
                );
                self.error(span, msg);
            } else {
                names.insert(name.clone(), index);
            }
        }
        if let Some((agent, span)) = &agent {
            if !agents.contains(agent) {
                let msg = format!("{}.agent: {}", t.path, unknown_agent(agent, agents));
                self.error(span, msg);
            }
        }
        let path = match t.get("path") {
            Some(e) => {
                let p = self.value::<String>(&t.path, e);
                if p.as_deref().is_some_and(|p| !p.starts_with('/')) {
                    let msg = format!("{}: must start with `/`", self.show(&t.path, e));
                    self.error(&e.value.span(), msg);
                }
                p
            }
            None => Some("/".to_owned()),
        };
        let weight = match t.get("weight") {
            Some(e) => {
                let w = self.value::<u32>(&t.path, e);
                if w == Some(0) {
                    let msg = format!(
                        "{}: must be at least 1 (a stage's share of the progress bar)",
                        self.show(&t.path, e)
                    );
                    self.error(&e.value.span(), msg);
                }
                w
            }
            None => Some(1),
        };
        let optional = match t.get("optional") {
            Some(e) => self.value::<bool>(&t.path, e),
            None => Some(false),
        };
        let fallback = match t.get("fallback") {
            Some(e) => {
                let own = agent.as_ref().map(|(a, _)| a.as_str());
                self.fallbacks(&t.path, e, agents, own)
            }
            None => Some(Vec::new()),
        };
        Some(StageConfig {
            name: name?.0,
            agent: agent?.0,
            path: path?,
            weight: weight?,
            optional: optional?,
            fallback: fallback?,
        })
    }

    fn fallbacks(
        &mut self,
        stage: &str,
        at: &Entry<'_, '_>,
        agents: &BTreeSet<String>,
        own: Option<&str>,
    ) -> Option<Vec<Fallback>> {
        let path = join(stage, "fallback");
        let DeValue::Array(items) = at.value.get_ref() else {
            let msg = format!(
                "{path}: expected an array such as [ {{ agent = \"backup\" }}, {{ static = {{ … }} }} ], found {}",
                a_type(at.value.get_ref())
            );
            self.error(&at.value.span(), msg);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let Some(t) = self.table(format!("{path}[{i}]"), item) else {
                ok = false;
                continue;
            };
            self.known_keys(&t, FALLBACK_KEYS);
            let mut known = t.entries.iter().filter(|e| FALLBACK_KEYS.contains(&e.key));
            let (Some(e), extra) = (known.next(), known.next()) else {
                // Unknown keys were reported above, more precisely.
                if t.entries.is_empty() {
                    let msg = format!(
                        "{}: expected {{ agent = \"NAME\" }} or {{ static = VALUE }}",
                        t.path
                    );
                    self.error(&t.span, msg);
                }
                ok = false;
                continue;
            };
            if let Some(extra) = extra {
                let msg = format!(
                    "{}: a fallback is either `agent` or `static`, not both",
                    t.path
                );
                self.error(&extra.key_span, msg);
                ok = false;
                continue;
            }
            if e.key == "agent" {
                let Some(name) = self.value::<String>(&t.path, e) else {
                    ok = false;
                    continue;
                };
                let span = e.value.span();
                if !agents.contains(&name) {
                    let msg = format!("{}.agent: {}", t.path, unknown_agent(&name, agents));
                    self.error(&span, msg);
                    ok = false;
                } else if own == Some(name.as_str()) {
                    let msg = format!(
                        "{}.agent: fallback to itself: \"{name}\" is the stage's own agent",
                        t.path
                    );
                    self.error(&span, msg);
                    ok = false;
                } else {
                    out.push(Fallback::Agent(name));
                }
            } else {
                match self.value::<serde_json::Value>(&t.path, e) {
                    Some(v) => out.push(Fallback::Static(v)),
                    None => ok = false,
                }
            }
        }
        ok.then_some(out)
    }

    // --- tables and keys ---

    fn table<'a, 'i>(&mut self, path: String, node: &'a Node<'i>) -> Option<Table<'a, 'i>> {
        let DeValue::Table(map) = node.get_ref() else {
            let what = if path.is_empty() {
                "the document".to_owned()
            } else {
                path.clone()
            };
            self.error(
                &node.span(),
                format!("{what}: expected a table, found {}", a_type(node.get_ref())),
            );
            return None;
        };
        let mut entries: Vec<Entry<'a, 'i>> = map
            .iter()
            .map(|(k, v)| Entry {
                key: k.get_ref().as_ref(),
                key_span: k.span(),
                value: v,
            })
            .collect();
        entries.sort_by_key(|e| e.key_span.start);
        Some(Table {
            path,
            span: node.span(),
            entries,
        })
    }

    fn known_keys(&mut self, t: &Table<'_, '_>, known: &[&str]) {
        for e in &t.entries {
            if known.contains(&e.key) {
                continue;
            }
            let hint = suggest(e.key, known)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            let msg = format!("unknown key `{}` {}{hint}", e.key, t.location());
            self.error(&e.key_span, msg);
        }
    }

    /// Agent and pipeline names appear in URLs, JSON and metric labels.
    fn name(&mut self, what: &str, parent: &Table<'_, '_>, e: &Entry<'_, '_>) {
        let ok = !e.key.is_empty()
            && e.key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            let msg = format!(
                "{}: {what} names may only use ASCII letters, digits, `_` and `-`",
                join(&parent.path, e.key)
            );
            self.error(&e.key_span, msg);
        }
    }

    // --- values ---

    /// Converts one value with serde; a failure names the key and its written value.
    fn value<T: DeserializeOwned>(&mut self, table: &str, e: &Entry<'_, '_>) -> Option<T> {
        match T::deserialize(ValueDeserializer::from(e.value.clone())) {
            Ok(v) => Some(v),
            Err(err) => {
                let msg = format!(
                    "{}: {}",
                    self.show(table, e),
                    describe(err.message(), e.value)
                );
                self.error(&e.value.span(), msg);
                None
            }
        }
    }

    fn duration_key(&mut self, t: &Table<'_, '_>, key: &str, positive: bool) -> Option<Duration> {
        let e = t.get(key)?;
        let d = match e.value.get_ref() {
            DeValue::String(s) => humantime::parse_duration(s).ok(),
            _ => None,
        };
        match d {
            None => {
                let msg = format!(
                    "{}: {}",
                    self.show(&t.path, e),
                    duration_problem(e.value.get_ref())
                );
                self.error(&e.value.span(), msg);
                None
            }
            Some(d) if positive && d.is_zero() => {
                let msg = format!("{}: must be greater than 0", self.show(&t.path, e));
                self.error(&e.value.span(), msg);
                None
            }
            Some(d) => Some(d),
        }
    }

    fn count(&mut self, t: &Table<'_, '_>, key: &str, min: usize) -> Option<usize> {
        let e = t.get(key)?;
        let n = self.value::<usize>(&t.path, e)?;
        if n < min {
            let msg = format!("{}: must be at least {min}", self.show(&t.path, e));
            self.error(&e.value.span(), msg);
            return None;
        }
        Some(n)
    }

    fn addr(&mut self, t: &Table<'_, '_>, key: &str) -> Option<SocketAddr> {
        let e = t.get(key)?;
        let text = self.value::<String>(&t.path, e)?;
        match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                let msg = format!(
                    "{}: expected an IP address and port, e.g. \"127.0.0.1:8080\" or \"[::]:8080\"",
                    self.show(&t.path, e)
                );
                self.error(&e.value.span(), msg);
                None
            }
        }
    }

    /// `agents.nlp.timeout = "0s"`: the key path and the value as written.
    fn show(&self, table: &str, e: &Entry<'_, '_>) -> String {
        let path = join(table, e.key);
        if matches!(e.value.get_ref(), DeValue::Table(_)) {
            return path;
        }
        let text = self.src.get(e.value.span()).unwrap_or("").trim();
        if text.is_empty() || text.contains('\n') {
            return path;
        }
        if text.chars().count() > 60 {
            let short: String = text.chars().take(57).collect();
            return format!("{path} = {short}…");
        }
        format!("{path} = {text}")
    }
}

// === helpers ===

/// 1-based line and column (in characters) of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = src[line_start..offset].chars().count() + 1;
    (line, col)
}

/// `parent.key`, quoting keys that are not bare TOML keys.
fn join(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// Deserializes `T` from a table holding `entries` (a later duplicate key replaces an
/// earlier one), keeping the values' spans.
fn deserialize_table<'a, 'i: 'a, T: DeserializeOwned>(
    entries: impl IntoIterator<Item = (&'a str, &'a Node<'i>)>,
) -> Result<T, toml::de::Error> {
    let mut map = DeTable::new();
    let mut start = usize::MAX;
    for (key, value) in entries {
        start = start.min(value.span().start);
        map.insert(
            Spanned::new(value.span(), key.to_owned().into()),
            value.clone(),
        );
    }
    let start = if start == usize::MAX { 0 } else { start };
    T::deserialize(ValueDeserializer::from(Spanned::new(
        start..start,
        DeValue::Table(map),
    )))
}

/// Turns serde's "invalid type: string \"x\", expected u32" into words for config
/// authors ("expected an integer from 0 to 4294967295, found a string").
fn describe(message: &str, value: &Node<'_>) -> String {
    if message.ends_with("expected a duration") {
        return duration_problem(value.get_ref());
    }
    let humanize = |expected: &str| -> String {
        match expected {
            "u16" => "an integer from 0 to 65535".to_owned(),
            "u32" => "an integer from 0 to 4294967295".to_owned(),
            "u64" | "usize" => "a non-negative integer".to_owned(),
            "f64" | "f32" => "a number".to_owned(),
            other => other.to_owned(),
        }
    };
    let (kind, rest) = if let Some(rest) = message.strip_prefix("invalid type: ") {
        (true, rest)
    } else if let Some(rest) = message.strip_prefix("invalid value: ") {
        (false, rest)
    } else {
        return message.to_owned();
    };
    match rest.rsplit_once(", expected ") {
        Some((_, expected)) if kind => format!(
            "expected {}, found {}",
            humanize(expected),
            a_type(value.get_ref())
        ),
        Some((_, expected)) => format!("expected {}", humanize(expected)),
        None => message.to_owned(),
    }
}

fn duration_problem(value: &DeValue<'_>) -> String {
    const EXAMPLE: &str = "write e.g. \"250ms\", \"30s\" or \"5m\"";
    match value {
        DeValue::String(s) => match humantime::parse_duration(s) {
            Err(e) => format!("invalid duration ({e}); {EXAMPLE}"),
            Ok(_) => format!("invalid duration; {EXAMPLE}"),
        },
        other => format!(
            "expected a duration string, found {}; {EXAMPLE}",
            a_type(other)
        ),
    }
}

fn a_type(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn unknown_agent(name: &str, agents: &BTreeSet<String>) -> String {
    let defined: Vec<&str> = agents.iter().map(String::as_str).collect();
    let hint = suggest(name, &defined)
        .map(|a| format!("; did you mean \"{a}\"?"))
        .unwrap_or_default();
    if defined.is_empty() {
        format!("unknown agent \"{name}\" (no agents are defined)")
    } else {
        format!(
            "unknown agent \"{name}\" (defined: {}){hint}",
            defined.join(", ")
        )
    }
}

/// A known key close to `key`: a known alias from other libraries, or a typo.
fn suggest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    if let Some((_, ours)) = ALIASES.iter().find(|(theirs, _)| *theirs == key) {
        if let Some(k) = known.iter().find(|k| *k == ours) {
            return Some(k);
        }
    }
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
        .or_else(|| {
            // `listen_on` → `listen`, `timeout_ms` → `timeout`.
            known
                .iter()
                .filter(|k| k.len() >= 4 && (key.starts_with(**k) || k.starts_with(key)))
                .max_by_key(|k| k.len())
                .copied()
        })
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Whether two listeners would fight over one port (port 0 picks a free one: never).
fn conflicts(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_chars() {
        let src = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        let x = src.find("\"x").unwrap();
        assert_eq!(line_col(src, x), (2, 6));
        assert_eq!(line_col(src, src.len()), (3, 1));
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("recovery_timeout", BREAKER_KEYS),
            Some("open_duration")
        );
        assert_eq!(suggest("windw", BREAKER_KEYS), Some("window"));
        assert_eq!(suggest("zzz", BREAKER_KEYS), None);
    }

    #[test]
    fn port_conflicts() {
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(conflicts(a, a));
        assert!(conflicts(a, "0.0.0.0:8080".parse().unwrap()));
        assert!(!conflicts(a, "127.0.0.1:9090".parse().unwrap()));
        let zero: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert!(!conflicts(zero, zero));
    }
}
