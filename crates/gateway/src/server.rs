//! Serving: listeners, connections, graceful shutdown (SPEC §5).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agentgate_agent_client::LATENCY_BUCKETS;
use agentgate_pipeline::{Engine, EngineSettings};
use agentgate_progress::{Backend, HubConfig, MemoryHub};
use agentgate_progress_redis::{RedisBackend, RedisSettings};
use axum::extract::ConnectInfo;
use axum::Router;
use http::uri::Scheme;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::admission::{Counted, StallTimeout, OVERLOAD_REJECTED};
use crate::app::{admin_app, public_app};
use crate::config::{Config, ProgressBackend};
use crate::runtime::build_agents;
use crate::AppState;

/// How long a client may take to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the Prometheus recorder's histogram samples are folded into buckets.
///
/// The recorder keeps every histogram sample it is given until it is drained: by a
/// scrape of `/metrics`, or by this upkeep. Without it, a gateway that nobody scrapes
/// grew by a few bytes per recorded latency without end — issue 20's chaos run, 1,300
/// queries/s for 600 s, from 48 MB to 61 MB and still climbing (`benches/admission.sh
/// MEMORY=1`).
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// At shutdown, how long WebSocket connections may at least take to deliver the last
/// terminal events once running queries have ended.
const WS_FLUSH_MIN: Duration = Duration::from_secs(2);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// An agent's client could not be built.
    #[error("agent `{agent}`: {source}")]
    Agent {
        /// The agent.
        agent: String,
        /// What was wrong.
        source: agentgate_agent_client::AgentConfigError,
    },
    /// The Redis progress backend could not be set up.
    #[error("progress.redis_url: {0}")]
    Redis(#[from] agentgate_progress_redis::InvalidUrl),
    /// `progress.redis_ca_file` could not be read.
    #[error("progress.redis_ca_file: {0}")]
    RedisCaFile(String),
    /// A client's key could not be read (`key_env` unset since the config was checked).
    #[error("{0}")]
    Auth(#[from] agentgate_config::Invalid),
    /// `[server.tls]` cannot be used (its files changed since the config was read).
    #[error("server.{0}")]
    Tls(agentgate_config::Invalid),
    /// Listening failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// The process-wide Prometheus recorder (metrics are per process, as in Envoy and
/// Linkerd). The first gateway started in a process installs it.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                // Agent and query latencies alike: 1 ms … 60 s.
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".into()),
                    &LATENCY_BUCKETS,
                )
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe_metrics();
            handle
        })
        .clone()
}

fn describe_metrics() {
    agentgate_circuit_breaker::describe_metrics();
    agentgate_agent_client::describe_metrics();
    agentgate_retry::describe_metrics();
    agentgate_pipeline::describe_metrics();
    agentgate_progress_redis::describe_metrics();
    crate::reload::describe_metrics();
    crate::notify::describe_metrics();
    crate::auth::describe_metrics();
    metrics::describe_gauge!("agentgate_health_score", "Health score 0..100");
    metrics::describe_gauge!(
        "agentgate_health_status",
        "1 for the current health status (healthy, degraded, unhealthy), else 0"
    );
}

/// Builds the gateway's state from `config`: one client per agent, the progress
/// backend, the query engine. This is the one place that picks (and names) a backend.
pub fn build_state(config: Config) -> Result<AppState, GatewayError> {
    let prometheus = prometheus();
    let (agents, _) = build_agents(&config, None)?;
    let hub_config = HubConfig {
        replay_events: config.progress.replay_events,
        retention: config.server.query_retention,
        ..HubConfig::default()
    };
    // With Redis, each replica's hub forwards its queries' events and records to the
    // other replicas and mirrors theirs (`agentgate-progress-redis`); connecting happens
    // in the background.
    let backend: Arc<dyn Backend> = match config.progress.backend {
        ProgressBackend::Memory => Arc::new(MemoryHub::new(hub_config)),
        ProgressBackend::Redis => {
            let progress = &config.progress;
            let ca_pem = match &progress.redis_ca_file {
                Some(file) => {
                    Some(crate::config::read_pem_certificates(file).map_err(|e| {
                        GatewayError::RedisCaFile(format!("{}: {e}", file.display()))
                    })?)
                }
                None => None,
            };
            Arc::new(RedisBackend::start(RedisSettings {
                hub: hub_config,
                lease: progress.lease,
                ca_pem,
                ..RedisSettings::new(progress.redis_url.expose().clone())
            })?)
        }
    };
    let engine = Engine::new(
        config.pipelines.clone(),
        agents,
        backend,
        EngineSettings {
            retention: config.server.query_retention,
            // One line or event of a streamed stage answer is bounded like a request body.
            max_chunk_bytes: config.server.max_body_bytes,
            max_running: config.server.max_running_queries,
            ..EngineSettings::default()
        },
    );
    AppState::new(config, engine, prometheus)
}

/// Runs the gateway on `listener` (public routes) and `admin_listener` (admin routes;
/// `None` serves them on `listener`) until `shutdown` resolves, then drains: `/readyz`
/// answers 503, new queries are refused, running queries get `shutdown_grace` to
/// finish, open connections are closed, and `run` returns.
pub async fn run(
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GatewayError> {
    let state = build_state(config)?;
    serve(state, listener, admin_listener, shutdown).await
}

/// [`run`] with a state built by [`build_state`] (tests keep a clone of the state).
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GatewayError> {
    let tls = tls_acceptor(state.runtime().config())?;
    let https = tls.is_some();
    state.set_tls_acceptor(tls);
    // Every transition is logged and kept from now on (the dashboard lists them), those
    // since the state was built included, and the hooks are told what they asked for.
    let sources = crate::notify::Sources::new(&state);
    let mut recorders = state.transitions().spawn_recorders();
    recorders.push(tokio::spawn(metrics_upkeep(state.prometheus().clone())));
    let notifications = tokio::spawn(sources.run(state.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let graceful = Arc::new(GracefulShutdown::new());
    let runtime = state.runtime();
    let server = &runtime.config().server;
    let public = Limits {
        connections: Some((state.connection_count().clone(), server.max_connections)),
        body_read_timeout: server.body_read_timeout,
    };
    let mut accept = vec![tokio::spawn(accept_loop(
        listener,
        https.then(|| state.clone()),
        public_app(state.clone()),
        public,
        stop_rx.clone(),
        graceful.clone(),
    ))];
    if let Some(admin) = admin_listener {
        // Operators' connections are not capped: they must get in when clients flood.
        let admin_limits = Limits {
            connections: None,
            body_read_timeout: server.body_read_timeout,
        };
        accept.push(tokio::spawn(accept_loop(
            admin,
            None,
            admin_app(state.clone()),
            admin_limits,
            stop_rx.clone(),
            graceful.clone(),
        )));
    }

    shutdown.await;
    let began = tokio::time::Instant::now();
    let grace = state.runtime().config().server.shutdown_grace;
    tracing::info!(grace = ?grace, "shutting down: draining running queries");
    state.start_draining();
    state.engine().drain(grace).await;
    // Every query has ended, so every terminal event is published: WebSocket clients get
    // theirs, then a 1001 close. Upgraded connections are no longer hyper's, so the
    // registry counts them; the wait ends with the grace period (but leaves them a moment
    // to flush what the last cancellations published).
    let left = grace.saturating_sub(began.elapsed()).max(WS_FLUSH_MIN);
    state.ws().shutdown(left).await;

    let _ = stop_tx.send(true);
    for task in accept {
        let _ = task.await;
    }
    for task in recorders {
        task.abort();
    }
    notifications.abort();
    // What other replicas should still get of this one's last queries goes out now.
    state.engine().backend().close().await;
    // Connections finish their current request and close; give them a moment.
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close in time");
    }
    tracing::info!("shut down");
    Ok(())
}

/// The public listener's TLS acceptor for `config`'s `[server.tls]` (the files read
/// now), if it serves HTTPS.
pub(crate) fn tls_acceptor(config: &Config) -> Result<Option<TlsAcceptor>, GatewayError> {
    let Some(tls) = &config.server.tls else {
        return Ok(None);
    };
    let config = tls
        .server_config(&[b"h2", b"http/1.1"])
        .map_err(|p| GatewayError::Tls(p.within("tls")))?;
    Ok(Some(TlsAcceptor::from(config)))
}

/// What a listener admits (SPEC §8).
struct Limits {
    /// The count of open connections and its cap.
    connections: Option<(Arc<AtomicUsize>, usize)>,
    /// Longest silence of a request body.
    body_read_timeout: Duration,
}

/// Accepts connections on `listener` until `stop`; with `tls` (the state whose TLS
/// acceptor, which a reload may replace, each connection uses), each one's handshake
/// runs in its own task (a slow client never holds up the accept loop), bounded by
/// the header read timeout, before HTTP (1.1, or 2 by ALPN) is served over it. Beyond
/// the connection cap a new connection is closed at once (before any handshake).
async fn accept_loop(
    listener: TcpListener,
    tls: Option<AppState>,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
) {
    let refused = metrics::counter!(OVERLOAD_REJECTED, "scope" => "connections");
    let unlimited = Arc::new(AtomicUsize::new(0));
    let body_timeout = limits.body_read_timeout;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    // WebSockets over HTTP/2 (RFC 8441), for clients that negotiated h2 by ALPN.
    builder.http2().enable_connect_protocol();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = async { let _ = stop.wait_for(|stop| *stop).await; } => break,
        };
        let stream = match &limits.connections {
            Some((count, max)) => match Counted::admit(stream, count, *max) {
                Some(stream) => stream,
                None => {
                    // Accepted and closed at once: cheaper than leaving it in the backlog,
                    // where the client would wait for a timeout.
                    refused.increment(1);
                    continue;
                }
            },
            None => Counted::admit(stream, &unlimited, usize::MAX).expect("no cap"),
        };
        let _ = stream.get_ref().set_nodelay(true);
        let Some(tls) = tls.as_ref().and_then(AppState::tls_acceptor) else {
            let conn = connection(&builder, stream, &app, peer, None, body_timeout, &graceful);
            tokio::spawn(conn);
            continue;
        };
        let (builder, app, graceful) = (builder.clone(), app.clone(), graceful.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HEADER_READ_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let https = Some(Scheme::HTTPS);
                    let conn =
                        connection(&builder, stream, &app, peer, https, body_timeout, &graceful);
                    // Only the connection is watched from here: shutdown waits for no
                    // handshake task.
                    drop(graceful);
                    conn.await;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Serves one connection (watched for graceful shutdown) with `app`; requests carry
/// the peer's address and, over TLS, the `https` scheme (for `x-forwarded-proto`), and
/// their bodies fail once they stall for `body_timeout`.
fn connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    app: &Router,
    peer: SocketAddr,
    scheme: Option<Scheme>,
    body_timeout: Duration,
    graceful: &GracefulShutdown,
) -> impl Future<Output = ()> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = app.clone();
    let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
        if let Some(scheme) = &scheme {
            req.extensions_mut().insert(scheme.clone());
        }
        app.clone()
            .oneshot(req.map(|body| StallTimeout::new(body, body_timeout)))
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let conn = graceful.watch(conn.into_owned());
    async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
    }
}

/// Drains the recorder's histogram samples every [`METRICS_UPKEEP_EVERY`].
async fn metrics_upkeep(handle: PrometheusHandle) {
    let mut every = tokio::time::interval(METRICS_UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        handle.run_upkeep();
    }
}
