use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use agentgate_circuit_breaker::{CircuitBreakerHandle, CircuitBreakerLayer};
use agentgate_classify::BoxError;
use agentgate_retry::{AttemptHeader, RetryPolicy};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pin_project_lite::pin_project;
use serde_json::Value;
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;

use crate::bulkhead::BulkheadLayer;
use crate::stack::{layered, AgentService, Stack, StackParts, TransportBody};
use crate::{AgentBody, AgentConfig, AgentConfigError, AgentMetrics, AgentStats, JsonBody};

/// The transport under every agent's stack: one pooled keep-alive HTTP/1 client.
pub type HttpClient = Client<HttpConnector, TransportBody>;

/// The agent's client behind an `Arc`: hyper-util's `Client` is a large struct, and the
/// stack is cloned per call (tower's `Retry` clones its inner service), so sharing it
/// keeps each clone to one reference count.
#[derive(Clone, Debug)]
pub struct SharedClient(Arc<HttpClient>);

impl SharedClient {
    /// Shares `client`.
    pub fn new(client: HttpClient) -> Self {
        Self(Arc::new(client))
    }
}

impl tower_service::Service<Request<TransportBody>> for SharedClient {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pool hands out or opens connections inside the response future.
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Request<TransportBody>) -> Self::Future {
        self.0.request(req)
    }
}

/// Calls one agent through its full resilience stack.
///
/// Holds one pooled hyper-util client and two stacks over it that share a breaker,
/// a retry budget and metrics: [`AgentClient::send`] streams bodies both ways (the
/// reverse proxy), [`AgentClient::call_json`] reads a JSON answer (pipeline stages).
///
/// Cloning it is one reference count: everything lives behind one `Arc`. The stacks
/// are kept unboxed, so a call clones the stack (a few reference counts, no
/// allocation) and polls its concrete future.
#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    base: Uri,
    /// The agent URL's path without its trailing `/` (empty for the common `http://host:port`).
    base_path: Box<str>,
    config: AgentConfig,
    streaming: Stack<Transport>,
    json: Stack<JsonBody<Transport>>,
    breaker: CircuitBreakerHandle,
    metrics: Arc<AgentMetrics>,
}

/// What sits under the stacks: the pooled hyper-util client, or the caller's own
/// transport ([`AgentClient::with_transport`]), boxed.
#[derive(Clone)]
enum Transport {
    Hyper(SharedClient),
    Custom(BoxCloneSyncService<Request<TransportBody>, Response<Incoming>, BoxError>),
}

pin_project! {
    /// The response future of [`Transport`].
    #[project = TransportProj]
    enum TransportFuture {
        Hyper { #[pin] fut: hyper_util::client::legacy::ResponseFuture },
        Custom { #[pin] fut: Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>> },
    }
}

impl AgentClient {
    /// Builds the client of agent `name`. Validates the whole config first.
    pub fn new(name: &str, config: AgentConfig) -> Result<Self, AgentConfigError> {
        config.validate()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout.min(config.timeout)));
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_idle_timeout(config.pool_idle_timeout)
            .build(connector);
        Self::build(name, config, Transport::Hyper(SharedClient::new(client)))
    }

    /// Builds the client over a transport of the caller's (tests, benches, other
    /// connectors). The config is validated as by [`AgentClient::new`].
    pub fn with_transport<S>(
        name: &str,
        config: AgentConfig,
        transport: S,
    ) -> Result<Self, AgentConfigError>
    where
        S: tower_service::Service<Request<TransportBody>, Response = Response<Incoming>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let transport = BoxCloneSyncService::new(transport.map_err(Into::into));
        Self::build(name, config, Transport::Custom(transport))
    }

    fn build(
        name: &str,
        config: AgentConfig,
        transport: Transport,
    ) -> Result<Self, AgentConfigError> {
        config.validate()?;
        let breaker = CircuitBreakerLayer::try_new(name, config.circuit_breaker.clone())?;
        let parts = StackParts {
            metrics: Arc::new(AgentMetrics::new(name)),
            retry: RetryPolicy::try_new(name, config.retry.clone())?,
            bulkhead: BulkheadLayer::new(name, config.max_concurrency, config.queue_timeout),
            breaker,
            timeout: config.timeout,
            attempt_header: AttemptHeader::Always,
        };
        let json = layered(
            &parts,
            JsonBody::new(transport.clone(), config.max_response_bytes),
        );
        // Proxied requests go out as the client sent them; only retries are numbered.
        let proxied = StackParts {
            attempt_header: AttemptHeader::Retries,
            ..parts.clone()
        };
        let streaming = layered(&proxied, transport);
        Ok(Self {
            inner: Arc::new(Inner {
                name: name.into(),
                base: config.url.clone(),
                base_path: config.url.path().trim_end_matches('/').into(),
                breaker: parts.breaker.handle(),
                metrics: parts.metrics,
                config,
                streaming,
                json,
            }),
        })
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The agent's configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.inner.config
    }

    /// The agent's circuit breaker.
    pub fn breaker(&self) -> &CircuitBreakerHandle {
        &self.inner.breaker
    }

    /// The agent's request figures.
    pub fn stats(&self) -> AgentStats {
        self.inner.metrics.stats()
    }

    /// The absolute URI of `path_and_query` on this agent: the agent URL's path, then
    /// `path_and_query` (which must start with `/`).
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let base = &self.inner.base;
        let base_path = &self.inner.base_path;
        let joined: PathAndQuery = format!("{base_path}{path_and_query}").parse()?;
        let mut parts = base.clone().into_parts();
        parts.path_and_query = Some(joined);
        Ok(Uri::from_parts(parts)?)
    }

    /// Sends `req` through the streaming stack. `req`'s URI may be relative (a path):
    /// it is resolved against the agent's URL. The body is read only once the breaker
    /// has admitted an attempt, as the agent takes it.
    pub async fn send(&self, mut req: Request<AgentBody>) -> Result<Response<Incoming>, BoxError> {
        self.resolve(req.uri_mut())?;
        self.inner.streaming.clone().oneshot(req).await
    }

    /// Sends `req` through the JSON stack: a 2xx must be JSON (else `bad_response`).
    pub async fn call_json(
        &self,
        mut req: Request<AgentBody>,
    ) -> Result<Response<Value>, BoxError> {
        self.resolve(req.uri_mut())?;
        self.inner.json.clone().oneshot(req).await
    }

    /// The streaming stack as a tower service (URIs must already be absolute).
    pub fn streaming_service(&self) -> AgentService<Incoming> {
        AgentService::new(self.inner.streaming.clone())
    }

    /// Makes `uri` absolute on this agent (in place: the request is not moved).
    fn resolve(&self, uri: &mut Uri) -> Result<(), BoxError> {
        if uri.scheme().is_some() {
            return Ok(());
        }
        let base = &self.inner.base;
        if self.inner.base_path.is_empty() {
            // The common case: reuse the request's path as it is (no formatting, no parsing).
            let mut parts = std::mem::take(uri).into_parts();
            parts.scheme = base.scheme().cloned();
            parts.authority = base.authority().cloned();
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(PathAndQuery::from_static("/"));
            }
            *uri = Uri::from_parts(parts)?;
        } else {
            let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
            *uri = self.uri_for(pq)?;
        }
        Ok(())
    }
}

impl fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentClient")
            .field("name", &self.inner.name)
            .field("url", &self.inner.base)
            .finish_non_exhaustive()
    }
}

// === impl Transport ===

impl tower_service::Service<Request<TransportBody>> for Transport {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = TransportFuture;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Transport::Hyper(client) => client.poll_ready(cx).map_err(Into::into),
            Transport::Custom(svc) => svc.poll_ready(cx),
        }
    }

    #[inline]
    fn call(&mut self, req: Request<TransportBody>) -> TransportFuture {
        match self {
            Transport::Hyper(client) => TransportFuture::Hyper {
                fut: client.call(req),
            },
            Transport::Custom(svc) => TransportFuture::Custom { fut: svc.call(req) },
        }
    }
}

impl Future for TransportFuture {
    type Output = Result<Response<Incoming>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            TransportProj::Hyper { fut } => fut.poll(cx).map_err(Into::into),
            TransportProj::Custom { fut } => fut.poll(cx),
        }
    }
}
