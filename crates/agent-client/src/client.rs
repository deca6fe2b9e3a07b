use std::fmt;
use std::sync::Arc;

use agentgate_circuit_breaker::{CircuitBreakerHandle, CircuitBreakerLayer};
use agentgate_classify::BoxError;
use agentgate_retry::{RetryBody, RetryPolicy};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tower::ServiceExt;

use crate::stack::{stack, AgentService, StackParts};
use crate::{AgentConfig, AgentConfigError, AgentMetrics, AgentStats, JsonBody};

/// The transport under every agent's stack: one pooled keep-alive HTTP/1 client.
pub type HttpClient = Client<HttpConnector, RetryBody>;

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

impl tower_service::Service<Request<RetryBody>> for SharedClient {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // The pool hands out or opens connections inside the response future.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RetryBody>) -> Self::Future {
        self.0.request(req)
    }
}

/// Calls one agent through its full resilience stack.
///
/// Holds one pooled hyper-util client and two stacks over it that share a breaker,
/// a retry budget and metrics: [`AgentClient::send`] streams bodies both ways (the
/// reverse proxy), [`AgentClient::call_json`] reads a JSON answer (pipeline stages).
#[derive(Clone)]
pub struct AgentClient {
    name: Arc<str>,
    base: Uri,
    config: Arc<AgentConfig>,
    streaming: AgentService<Incoming>,
    json: AgentService<Value>,
    breaker: CircuitBreakerHandle,
    metrics: Arc<AgentMetrics>,
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
        Self::with_transport(name, config, SharedClient::new(client))
    }

    /// Builds the client over a transport of the caller's (tests, benches, other
    /// connectors). The config is validated as by [`AgentClient::new`].
    pub fn with_transport<S>(
        name: &str,
        config: AgentConfig,
        transport: S,
    ) -> Result<Self, AgentConfigError>
    where
        S: tower_service::Service<Request<RetryBody>, Response = Response<Incoming>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        config.validate()?;
        let breaker = CircuitBreakerLayer::try_new(name, config.circuit_breaker.clone())?;
        let parts = StackParts {
            metrics: Arc::new(AgentMetrics::new(name)),
            retry: RetryPolicy::try_new(name, config.retry.clone())?,
            breaker,
            timeout: config.timeout,
        };
        let streaming = stack(&parts, transport.clone());
        let json = stack(&parts, JsonBody::new(transport, config.max_response_bytes));
        Ok(Self {
            name: name.into(),
            base: config.url.clone(),
            breaker: parts.breaker.handle(),
            metrics: parts.metrics,
            config: Arc::new(config),
            streaming,
            json,
        })
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The agent's configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The agent's circuit breaker.
    pub fn breaker(&self) -> &CircuitBreakerHandle {
        &self.breaker
    }

    /// The agent's request figures.
    pub fn stats(&self) -> AgentStats {
        self.metrics.stats()
    }

    /// The absolute URI of `path_and_query` on this agent: the agent URL's path, then
    /// `path_and_query` (which must start with `/`).
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let base_path = self.base.path().trim_end_matches('/');
        let joined: PathAndQuery = format!("{base_path}{path_and_query}").parse()?;
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(joined);
        Ok(Uri::from_parts(parts)?)
    }

    /// Sends `req` through the streaming stack. `req`'s URI may be relative (a path):
    /// it is resolved against the agent's URL.
    pub async fn send(&self, req: Request<RetryBody>) -> Result<Response<Incoming>, BoxError> {
        let req = self.resolve(req)?;
        self.streaming.clone().oneshot(req).await
    }

    /// Sends `req` through the JSON stack: a 2xx must be JSON (else `bad_response`).
    pub async fn call_json(&self, req: Request<RetryBody>) -> Result<Response<Value>, BoxError> {
        let req = self.resolve(req)?;
        self.json.clone().oneshot(req).await
    }

    /// The streaming stack as a tower service (URIs must already be absolute).
    pub fn streaming_service(&self) -> AgentService<Incoming> {
        self.streaming.clone()
    }

    fn resolve(&self, mut req: Request<RetryBody>) -> Result<Request<RetryBody>, BoxError> {
        if req.uri().scheme().is_some() {
            return Ok(req);
        }
        let base_path = self.base.path().trim_end_matches('/');
        if base_path.is_empty() {
            // The common case: reuse the request's path as it is (no formatting, no parsing).
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = self.base.scheme().cloned();
            parts.authority = self.base.authority().cloned();
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(PathAndQuery::from_static("/"));
            }
            *req.uri_mut() = Uri::from_parts(parts)?;
        } else {
            let pq = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
            *req.uri_mut() = self.uri_for(pq)?;
        }
        Ok(req)
    }
}

impl fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentClient")
            .field("name", &self.name)
            .field("url", &self.base)
            .finish_non_exhaustive()
    }
}
