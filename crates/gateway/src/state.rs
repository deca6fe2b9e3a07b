//! What every handler shares.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use agentgate_agent_client::AgentClient;
use agentgate_pipeline::Engine;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::auth::Clients;
use crate::config::Config;
use crate::transitions::{TransitionLog, RECENT_PER_AGENT};
use crate::ws::WsRegistry;

/// Shared gateway state. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    engine: Engine,
    prometheus: PrometheusHandle,
    /// Read on every request, hence an atomic (`began_draining` wakes those waiting).
    draining: AtomicBool,
    /// Told once draining has begun, for [`AppState::draining`].
    began_draining: Notify,
    started: Instant,
    admin_token: Option<String>,
    clients: Clients,
    ws: WsRegistry,
    transitions: TransitionLog,
    /// Open connections on the public listener (`max_connections`).
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl AppState {
    /// State for a gateway running `config` on `engine` (whose progress backend decides
    /// what is shared with other replicas). Fails when a client's key cannot be read
    /// (`key_env` unset since the config was checked).
    pub fn new(
        config: Config,
        engine: Engine,
        prometheus: PrometheusHandle,
    ) -> Result<Self, agentgate_config::Invalid> {
        let admin_token = config.admin.token();
        let clients = Clients::new(&config.auth, admin_token.as_deref())?;
        let ws = WsRegistry::new(config.server.max_ws_connections);
        let transitions = TransitionLog::new(
            RECENT_PER_AGENT,
            engine.agents().values().map(AgentClient::breaker),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                engine,
                prometheus,
                draining: AtomicBool::new(false),
                began_draining: Notify::new(),
                started: Instant::now(),
                admin_token,
                ws,
                clients,
                transitions,
                connections: Arc::default(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The query engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The agent called `name`.
    pub fn agent(&self, name: &str) -> Option<&AgentClient> {
        self.inner.engine.agents().get(name)
    }

    /// The Prometheus exposition.
    pub fn prometheus(&self) -> &PrometheusHandle {
        &self.inner.prometheus
    }

    /// Whether shutdown has begun (`/readyz` answers 503, new work is refused).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Resolves once shutdown has begun (at once if it has): for whatever should stop
    /// taking new work then, and for tests that must not guess when that is.
    pub async fn draining(&self) {
        let began = self.inner.began_draining.notified();
        let mut began = std::pin::pin!(began);
        // Registered before the flag is read, so a `start_draining` in between is seen.
        began.as_mut().enable();
        if !self.is_draining() {
            began.await;
        }
    }

    /// Starts draining: new queries and WebSocket upgrades are refused, and WebSocket
    /// connections close (1001) once the queries they watch have ended.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
        self.inner.engine.close();
        self.inner.ws.start_draining();
        self.inner.began_draining.notify_waiters();
    }

    /// When the gateway started.
    pub fn started(&self) -> Instant {
        self.inner.started
    }

    /// The WebSocket connections: their count, figures and shutdown.
    pub fn ws(&self) -> &WsRegistry {
        &self.inner.ws
    }

    /// The recent breaker transitions (recorded from when this state was built, once
    /// [`crate::serve`] runs).
    pub fn transitions(&self) -> &TransitionLog {
        &self.inner.transitions
    }

    /// The clients' keys (SPEC §7).
    pub fn clients(&self) -> &Clients {
        &self.inner.clients
    }

    /// Open connections on the public listener.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    pub(crate) fn connection_count(&self) -> &Arc<std::sync::atomic::AtomicUsize> {
        &self.inner.connections
    }

    /// The admin bearer token, if configured.
    pub fn admin_token(&self) -> Option<&str> {
        self.inner.admin_token.as_deref()
    }
}
