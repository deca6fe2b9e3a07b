//! The hyper server: the accept loop, [`serve`] for the CLI and the [`MockAgent`] handle.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentgate_tls::rustls::ServerConfig;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::handler::handle;
use crate::state::Shared;
use crate::{Behavior, BehaviorError, Stats};

/// A running mock agent, serving on its own task until [`shutdown`](MockAgent::shutdown)
/// or drop.
///
/// Dropping the handle stops the server too: the accept loop is aborted, and with it every
/// connection task (including hung requests), so tests never leak servers.
pub struct MockAgent {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

// === impl MockAgent ===

impl MockAgent {
    /// Starts an agent on `127.0.0.1` with a port chosen by the OS.
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] when `behavior` does not validate.
    pub async fn start(behavior: Behavior) -> io::Result<MockAgent> {
        behavior.validate().map_err(invalid_input)?;
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        Self::start_on(listener, behavior).await
    }

    /// Starts an agent on an already bound listener.
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] when `behavior` does not validate.
    pub async fn start_on(listener: TcpListener, behavior: Behavior) -> io::Result<MockAgent> {
        Self::start_with(listener, behavior, None).await
    }

    /// Starts an agent on `127.0.0.1` that speaks TLS with `tls` (HTTP/2 when the
    /// client picks `h2` by ALPN and `tls` offers it).
    pub async fn start_tls(behavior: Behavior, tls: Arc<ServerConfig>) -> io::Result<MockAgent> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        Self::start_with(listener, behavior, Some(tls)).await
    }

    async fn start_with(
        listener: TcpListener,
        behavior: Behavior,
        tls: Option<Arc<ServerConfig>>,
    ) -> io::Result<MockAgent> {
        behavior.validate().map_err(invalid_input)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(behavior));
        let (tx, rx) = oneshot::channel();
        let is_tls = tls.is_some();
        let acceptor = tls.map(TlsAcceptor::from);
        let task = tokio::spawn(accept_loop(
            listener,
            acceptor,
            shared.clone(),
            async move {
                // A dropped sender also means "stop".
                let _ = rx.await;
            },
        ));
        Ok(MockAgent {
            addr,
            tls: is_tls,
            shared,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The address the agent listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The agent's base URL, e.g. `http://127.0.0.1:40123` (`https://` with TLS; no
    /// trailing slash).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The current behavior.
    pub fn behavior(&self) -> Behavior {
        self.shared.behavior()
    }

    /// Replaces the behavior for requests that arrive from now on; requests already being
    /// answered keep the behavior they started with.
    ///
    /// The random sequence is re-seeded only when `seed` changes to a new value.
    pub fn set_behavior(&self, behavior: Behavior) -> Result<(), BehaviorError> {
        self.shared.set_behavior(behavior)
    }

    /// A snapshot of the request counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Stops accepting connections and aborts the open ones (hung requests included), then
    /// waits until the server task has finished.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MockAgent {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl fmt::Debug for MockAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockAgent")
            .field("addr", &self.addr)
            .field("behavior", &self.shared.behavior())
            .finish_non_exhaustive()
    }
}

// === serve ===

/// Serves a mock agent on `listener` until `shutdown` resolves, then aborts the open
/// connections and returns. This is what `agentgate mock-agent` runs.
///
/// Fails with [`io::ErrorKind::InvalidInput`] when `behavior` does not validate.
pub async fn serve<F>(listener: TcpListener, behavior: Behavior, shutdown: F) -> io::Result<()>
where
    F: Future<Output = ()>,
{
    serve_tls(listener, behavior, None, shutdown).await
}

/// [`serve`], speaking TLS with `tls` when given (`agentgate mock-agent --tls-cert …
/// --tls-key …`).
pub async fn serve_tls<F>(
    listener: TcpListener,
    behavior: Behavior,
    tls: Option<Arc<ServerConfig>>,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()>,
{
    behavior.validate().map_err(invalid_input)?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, agent = %behavior.name, "mock agent listening");
    let acceptor = tls.map(TlsAcceptor::from);
    accept_loop(
        listener,
        acceptor,
        Arc::new(Shared::new(behavior)),
        shutdown,
    )
    .await;
    tracing::info!(%addr, "mock agent stopped");
    Ok(())
}

/// How long a client may take over the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown` resolves. Each connection runs in `connections`,
/// which aborts them all when it is dropped on the way out.
async fn accept_loop<F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    shutdown: F,
) where
    F: Future<Output = ()>,
{
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    let tls = tls.clone();
                    connections.spawn(async move {
                        let Some(tls) = tls else {
                            return serve_connection(stream, shared, peer).await;
                        };
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                            Ok(Ok(stream)) => serve_connection(stream, shared, peer).await,
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
                Err(e) if is_per_connection(&e) => {
                    tracing::debug!(error = %e, "accept failed for one connection");
                }
                Err(e) => {
                    // e.g. too many open files: back off instead of spinning.
                    tracing::warn!(error = %e, "mock agent accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    connections.abort_all();
}

/// Serves one connection: HTTP/1.1, or HTTP/2 (by ALPN over TLS, by its preface
/// otherwise).
async fn serve_connection<I>(io: I, shared: Arc<Shared>, peer: SocketAddr)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(shared.clone(), req));
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await
    {
        // Injected resets end here on purpose; nothing to report loudly.
        tracing::debug!(%peer, error = %e, "mock agent connection ended");
    }
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

fn invalid_input(e: BehaviorError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}
