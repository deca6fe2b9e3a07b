//! Reloading the configuration (SPEC §9): `SIGHUP` (the binary) or
//! `POST /api/orchestration/reload` re-read the config file the gateway started with.
//!
//! An invalid file changes nothing: the old configuration stays, the error is logged
//! and returned (`file:line:col: message`). A valid one becomes the [`Runtime`] of new
//! requests, as one unit: agents, pipelines, the admin token, the `[auth]` clients and
//! their quotas, the `[[notify]]` hooks. Requests and queries in
//! flight keep the runtime they started with (a query its pipeline and agents to the
//! end). An agent whose `url` and `circuit_breaker` keys are unchanged keeps its breaker
//! (state, window, open period) and, with its pool keys unchanged, its pool of
//! connections. No listener or connection is touched: WebSocket clients stay connected
//! and subscribed.
//!
//! Some keys are read once at startup, as Envoy and Linkerd treat listeners:
//! `server.listen`, `server.admin_listen`, `server.max_ws_connections`,
//! `server.query_retention`, `server.max_running_queries`, `server.max_connections`,
//! `server.body_read_timeout`, `admin.protect_reads`, `[progress]`, and whether
//! `[server.tls]` is there at all. A
//! reload that changes them keeps their running values, says so in its answer
//! (`restart_required`) and in a warning. `[server.tls]`'s certificate and key files
//! are read again by every reload: new connections get the new certificate.
//!
//! `agentgate_config_reloads_total{result}` counts reloads (`ok`, `error`).

use std::path::PathBuf;

use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ConfigError};
use crate::notify::Notifier;
use crate::runtime::{build_agents, Access, AgentChanges, Runtime};
use crate::server::{tls_acceptor, GatewayError};
use crate::AppState;

/// What a reload changed: the answer of `POST /api/orchestration/reload`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Reloaded {
    /// The file read.
    pub file: String,
    /// How each agent fared.
    pub agents: AgentChanges,
    /// The pipelines now configured.
    pub pipelines: Vec<String>,
    /// Keys that changed but keep their running value until a restart.
    pub restart_required: Vec<&'static str>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is not a valid config (`file:line:col: message`).
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The gateway was given its config in-process, not from a file.
    #[error("the gateway was started without a config file: there is nothing to re-read")]
    NoFile,
    /// Building what the config describes failed.
    #[error(transparent)]
    Build(#[from] GatewayError),
}

/// Describes the reload counter, whose series exist (at 0) from the start, so that
/// `increase()` and alerts see the first reload.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "agentgate_config_reloads_total",
        "Configuration reloads (SIGHUP, POST /api/orchestration/reload), by result (ok, error)"
    );
    for result in ["ok", "error"] {
        metrics::counter!("agentgate_config_reloads_total", "result" => result).increment(0);
    }
}

// === impl AppState ===

impl AppState {
    /// Re-reads the config file the gateway started with and applies it; on any error
    /// the running configuration stays.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one = self.reload_lock();
        let file = self.runtime().config().file.clone();
        let loaded = file
            .ok_or(ReloadError::NoFile)
            .and_then(|file| Config::load(&file).map_err(ReloadError::from));
        let result = loaded.and_then(|config| self.swap(config));
        counted(result)
    }

    /// Applies `config` as a reload of the file would (for embedders and tests that
    /// build their config in memory).
    pub fn apply(&self, config: Config) -> Result<Reloaded, ReloadError> {
        let _one = self.reload_lock();
        counted(self.swap(config))
    }

    fn swap(&self, mut config: Config) -> Result<Reloaded, ReloadError> {
        let old = self.runtime();
        let mut restart_required = keep_startup_values(&mut config, old.config());
        if config.file.is_none() {
            config.file.clone_from(&old.config().file);
        }
        let (agents, changes) = build_agents(&config, Some(old.agents()))?;
        for name in changes.added.iter().chain(&changes.rebuilt) {
            self.transitions().watch(agents[name].breaker());
        }
        let access = Access::read(&config)?;
        let notifier = Notifier::build(&config.notify, Some(old.notifier()))?;
        let tls = tls_reloaded(&mut config, old.config(), &mut restart_required)?;
        let agents = self.engine().reconfigure(config.pipelines.clone(), agents);
        let reloaded = Reloaded {
            file: shown(&config.file),
            agents: changes,
            pipelines: config.pipelines.keys().cloned().collect(),
            restart_required,
        };
        self.install(Runtime::new(config, agents, access, notifier));
        if let Some(tls) = tls {
            self.set_tls_acceptor(Some(tls));
        }
        Ok(reloaded)
    }
}

/// Counts and logs the outcome of a reload.
fn counted(result: Result<Reloaded, ReloadError>) -> Result<Reloaded, ReloadError> {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!("agentgate_config_reloads_total", "result" => outcome).increment(1);
    match &result {
        Ok(r) => {
            let a = &r.agents;
            tracing::info!(file = %r.file, added = ?a.added, removed = ?a.removed,
                kept = ?a.kept, rebuilt = ?a.rebuilt, pipelines = ?r.pipelines,
                "configuration reloaded");
            if !r.restart_required.is_empty() {
                tracing::warn!(keys = ?r.restart_required,
                    "configuration reloaded, but these keys only change on a restart: they keep their running values");
            }
        }
        Err(e) => tracing::warn!(error = %e, "configuration not reloaded: the running one stays"),
    }
    result
}

/// Puts back in `new` the running values of the keys read once at startup; returns
/// those that `new` had changed.
fn keep_startup_values(new: &mut Config, running: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let (server, old) = (&mut new.server, &running.server);
    macro_rules! keep {
        ($($field:ident => $key:literal),*) => {$(
            if server.$field != old.$field {
                changed.push($key);
                server.$field = old.$field.clone();
            }
        )*};
    }
    keep!(
        listen => "server.listen",
        admin_listen => "server.admin_listen",
        max_ws_connections => "server.max_ws_connections",
        query_retention => "server.query_retention",
        max_running_queries => "server.max_running_queries",
        max_connections => "server.max_connections",
        body_read_timeout => "server.body_read_timeout"
    );
    if new.admin.protect_reads != running.admin.protect_reads {
        changed.push("admin.protect_reads");
        new.admin.protect_reads = running.admin.protect_reads;
    }
    if new.progress != running.progress {
        changed.push("progress");
        new.progress = running.progress.clone();
    }
    changed
}

/// `[server.tls]` of a reload: its certificate files read again when the listener
/// serves HTTPS and still should; turning TLS on or off needs a restart (the running
/// setting is kept and `server.tls` named).
fn tls_reloaded(
    new: &mut Config,
    running: &Config,
    restart_required: &mut Vec<&'static str>,
) -> Result<Option<TlsAcceptor>, GatewayError> {
    if new.server.tls.is_some() != running.server.tls.is_some() {
        restart_required.push("server.tls");
        new.server.tls.clone_from(&running.server.tls);
        return Ok(None);
    }
    tls_acceptor(new)
}

fn shown(file: &Option<PathBuf>) -> String {
    file.as_ref()
        .map_or_else(String::new, |f| f.display().to_string())
}
