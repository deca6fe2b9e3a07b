//! What every handler shares.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use agentgate_pipeline::Engine;
use arc_swap::{ArcSwap, ArcSwapOption};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::notify::Notifier;
use crate::runtime::{Access, Runtime};
use crate::server::GatewayError;
use crate::transitions::{TransitionLog, RECENT_PER_AGENT};
use crate::ws::WsRegistry;

/// Shared gateway state. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The configuration and what is built from it, swapped whole by a reload.
    runtime: ArcSwap<Runtime>,
    /// One reload at a time.
    reloading: Mutex<()>,
    engine: Engine,
    prometheus: PrometheusHandle,
    /// Read on every request, hence an atomic (`began_draining` wakes those waiting).
    draining: AtomicBool,
    /// Told once draining has begun, for [`AppState::draining`].
    began_draining: Notify,
    started: Instant,
    ws: WsRegistry,
    transitions: TransitionLog,
    /// Open connections on the public listener (`max_connections`).
    connections: Arc<std::sync::atomic::AtomicUsize>,
    /// The public listener's TLS (`[server.tls]`): set when serving starts, replaced by
    /// a reload, which reads the certificate files again.
    tls: PublicTls,
}

/// [`Inner::tls`]: `TlsAcceptor` has no `Debug`.
struct PublicTls(ArcSwapOption<TlsAcceptor>);

impl std::fmt::Debug for PublicTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let https = self.0.load().is_some();
        f.debug_struct("PublicTls").field("https", &https).finish()
    }
}

impl AppState {
    /// State for a gateway running `config` on `engine` (whose agents are the config's,
    /// and whose progress backend decides what is shared with other replicas).
    ///
    /// Starts the delivery tasks of `config`'s `[[notify]]` hooks: call it within a
    /// tokio runtime when it has any. Fails when a client's key cannot be read
    /// (`key_env` unset since the config was checked).
    pub fn new(
        config: Config,
        engine: Engine,
        prometheus: PrometheusHandle,
    ) -> Result<Self, GatewayError> {
        let ws = WsRegistry::new(config.server.max_ws_connections);
        let agents = engine.agents();
        let transitions =
            TransitionLog::new(RECENT_PER_AGENT, agents.values().map(|a| a.breaker()));
        let notifier = Notifier::build(&config.notify, None)?;
        let access = Access::read(&config)?;
        let runtime = Runtime::new(config, agents, access, notifier);
        Ok(Self {
            inner: Arc::new(Inner {
                runtime: ArcSwap::from_pointee(runtime),
                reloading: Mutex::new(()),
                engine,
                prometheus,
                draining: AtomicBool::new(false),
                began_draining: Notify::new(),
                started: Instant::now(),
                ws,
                transitions,
                tls: PublicTls(ArcSwapOption::empty()),
                connections: Arc::default(),
            }),
        })
    }

    /// The running configuration, its agents and admin token, as one unit: read it once
    /// per request, and use what it holds for the whole request. A reload swaps it for
    /// new requests only.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.inner.runtime.load_full()
    }

    /// The agent called `name` in the running configuration (a clone of its client:
    /// for callers outside a request, such as tests and embedders).
    pub fn agent(&self, name: &str) -> Option<agentgate_agent_client::AgentClient> {
        self.runtime().agent(name).cloned()
    }

    /// The public listener's TLS acceptor, when it serves HTTPS: what the next
    /// connection's handshake uses.
    pub(crate) fn tls_acceptor(&self) -> Option<Arc<TlsAcceptor>> {
        self.inner.tls.0.load_full()
    }

    /// Sets the public listener's TLS acceptor (serving starts, or a reload).
    pub(crate) fn set_tls_acceptor(&self, acceptor: Option<TlsAcceptor>) {
        self.inner.tls.0.store(acceptor.map(Arc::new));
    }

    /// Installs `runtime` for new requests (a reload).
    pub(crate) fn install(&self, runtime: Runtime) {
        self.inner.runtime.store(Arc::new(runtime));
    }

    /// Held while a reload runs, so that two never interleave.
    pub(crate) fn reload_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .reloading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The query engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
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

    /// Every breaker's transitions, the agents of every reload's included: the recent
    /// ones (recorded from when this state was built, once [`crate::serve`] runs) and
    /// the live ones.
    pub fn transitions(&self) -> &TransitionLog {
        &self.inner.transitions
    }

    /// Open connections on the public listener.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    pub(crate) fn connection_count(&self) -> &Arc<std::sync::atomic::AtomicUsize> {
        &self.inner.connections
    }
}
