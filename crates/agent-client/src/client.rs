use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use agentgate_circuit_breaker::{CircuitBreakerHandle, CircuitBreakerLayer};
use agentgate_classify::{
    cause_ref, is_caused_by, BadResponse, BoxError, RequestBodyError, TlsFailure,
};
use agentgate_retry::{AttemptHeader, RetryPolicy};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use hyper_rustls::{
    DefaultServerNameResolver, FixedServerNameResolver, HttpsConnector, ResolveServerName,
};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pin_project_lite::pin_project;
use serde_json::Value;
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;

use crate::bulkhead::BulkheadLayer;
use crate::stack::{layered, AgentService, Stack, StackParts, TransportBody};
use crate::{
    AgentBody, AgentConfig, AgentConfigError, AgentMetrics, AgentStats, HttpVersion, JsonBody,
    StageAnswer,
};

/// The transport under every agent's stack: one pooled keep-alive client (HTTP/1.1 or
/// HTTP/2, over TCP or TLS) with its own connector.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, TransportBody>;

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
/// reverse proxy), [`AgentClient::call_stage`] reads a JSON answer or opens a streamed
/// one (pipeline stages), [`AgentClient::call_json`] reads a JSON answer. All add the
/// agent's configured `headers` to every request.
///
/// The client has one connector of its own: TLS for an `https://` agent (never plain
/// TCP: an `http://` request to it fails), with the agent's trust roots, client
/// certificate, server name and ALPN; plain TCP for an `http://` agent. A TLS failure
/// is marked [`TlsFailure`] under the breaker, so it counts as class `connect` and is
/// reported with kind `tls`.
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
    /// `headers`, ready to send (values marked sensitive).
    headers: HeaderMap,
    config: AgentConfig,
    streaming: Stack<Transport>,
    json: Stack<JsonBody<Transport>>,
    breaker: CircuitBreakerHandle,
    metrics: Arc<AgentMetrics>,
    /// What [`AgentClient::reconfigured`] may keep.
    kept: Kept,
}

/// The parts of a client that a new config may leave as they are: the breaker (its
/// state and window), the transport (its pool of connections) and the metrics.
#[derive(Clone)]
struct Kept {
    breaker: CircuitBreakerLayer,
    transport: Transport,
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
        let client = http_client(&config)?;
        Self::build(
            name,
            config,
            Transport::Hyper(SharedClient::new(client)),
            None,
        )
    }

    /// This agent's client for `config`, the agent's new configuration (a reload): the
    /// same client when nothing changed; otherwise a new one that keeps, where the keys
    /// they depend on are unchanged, this one's circuit breaker (its state, window and
    /// open period: `url` and `circuit_breaker.*` the same) and pool of connections
    /// (`url`, `timeout`, `connect_timeout`, `pool_*`, `http_version` and `tls.*` the
    /// same), and always its metrics. Calls in flight finish on this client.
    pub fn reconfigured(&self, config: AgentConfig) -> Result<Self, AgentConfigError> {
        let old = &self.inner.config;
        if config == *old {
            return Ok(self.clone());
        }
        config.validate()?;
        let same_url = config.url == old.url;
        let same_pool = same_url
            && (config.timeout, config.connect_timeout) == (old.timeout, old.connect_timeout)
            && (config.pool_idle_timeout, config.pool_max_idle_per_host)
                == (old.pool_idle_timeout, old.pool_max_idle_per_host)
            && (config.http_version, &config.tls) == (old.http_version, &old.tls);
        let kept = &self.inner.kept;
        let transport = match &kept.transport {
            // The caller's own transport is not ours to replace.
            Transport::Hyper(_) if !same_pool => {
                Transport::Hyper(SharedClient::new(http_client(&config)?))
            }
            transport => transport.clone(),
        };
        let breaker = (same_url && config.circuit_breaker == old.circuit_breaker)
            .then(|| kept.breaker.clone());
        let reuse = Reuse {
            breaker,
            metrics: kept.metrics.clone(),
        };
        Self::build(&self.inner.name, config, transport, Some(reuse))
    }

    /// Whether `other` shares this client's circuit breaker (one state for both).
    pub fn shares_breaker(&self, other: &AgentClient) -> bool {
        self.inner.breaker.same_as(&other.inner.breaker)
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
        Self::build(name, config, Transport::Custom(transport), None)
    }

    fn build(
        name: &str,
        config: AgentConfig,
        transport: Transport,
        reuse: Option<Reuse>,
    ) -> Result<Self, AgentConfigError> {
        config.validate()?;
        let (breaker, metrics) = match reuse {
            Some(Reuse { breaker, metrics }) => (breaker, Some(metrics)),
            None => (None, None),
        };
        let breaker = match breaker {
            Some(breaker) => breaker,
            None => CircuitBreakerLayer::try_new(name, config.circuit_breaker.clone())?,
        };
        let parts = StackParts {
            metrics: metrics.unwrap_or_else(|| Arc::new(AgentMetrics::new(name))),
            retry: RetryPolicy::try_new(name, config.retry.clone())?,
            bulkhead: BulkheadLayer::new(name, config.max_concurrency, config.queue_timeout),
            breaker,
            timeout: config.timeout,
            attempt_header: AttemptHeader::Always,
        };
        let json = layered(
            &parts,
            JsonBody::new(transport.clone(), config.max_response_bytes)
                .stream_idle_timeout(config.stream_idle_timeout),
        );
        // Proxied requests go out as the client sent them; only retries are numbered.
        let proxied = StackParts {
            attempt_header: AttemptHeader::Retries,
            ..parts.clone()
        };
        let kept = Kept {
            breaker: parts.breaker.clone(),
            transport: transport.clone(),
            metrics: parts.metrics.clone(),
        };
        let streaming = layered(&proxied, transport);
        Ok(Self {
            inner: Arc::new(Inner {
                name: name.into(),
                base: config.url.clone(),
                base_path: config.url.path().trim_end_matches('/').into(),
                headers: config.header_map()?,
                breaker: parts.breaker.handle(),
                metrics: parts.metrics,
                config,
                streaming,
                json,
                kept,
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
        self.prepare(&mut req)?;
        self.inner.streaming.clone().oneshot(req).await
    }

    /// Sends `req` through the stage stack: a 2xx must be JSON (else `bad_response`) or
    /// a stream (SSE or NDJSON), handed back unread at its head (SPEC §6).
    pub async fn call_stage(
        &self,
        mut req: Request<AgentBody>,
    ) -> Result<Response<StageAnswer>, BoxError> {
        self.prepare(&mut req)?;
        self.inner.json.clone().oneshot(req).await
    }

    /// [`AgentClient::call_stage`] for callers that only take JSON: a streamed 2xx is a
    /// `bad_response` (after the breaker counted its head as a success).
    pub async fn call_json(&self, req: Request<AgentBody>) -> Result<Response<Value>, BoxError> {
        let (parts, answer) = self.call_stage(req).await?.into_parts();
        match answer {
            StageAnswer::Json(value) => Ok(Response::from_parts(parts, value)),
            StageAnswer::Stream(stream) => Err(BadResponse::new(format!(
                "a streamed answer ({}) where JSON was expected",
                stream.format()
            ))
            .into()),
        }
    }

    /// The streaming stack as a tower service (URIs must already be absolute); it adds
    /// the agent's `headers` as [`AgentClient::send`] does.
    pub fn streaming_service(&self) -> AgentService<Incoming> {
        let this = self.clone();
        let stack = self.inner.streaming.clone();
        AgentService::new(stack.map_request(move |mut req: Request<AgentBody>| {
            this.add_headers(req.headers_mut());
            req
        }))
    }

    /// Makes the request's URI absolute on this agent and adds the agent's `headers`.
    fn prepare(&self, req: &mut Request<AgentBody>) -> Result<(), BoxError> {
        self.resolve(req.uri_mut())?;
        self.add_headers(req.headers_mut());
        Ok(())
    }

    /// The configured headers replace any the caller set under the same names: a
    /// client of the proxy cannot swap the agent's credentials.
    fn add_headers(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.inner.headers {
            headers.insert(name, value.clone());
        }
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

/// What a rebuilt client takes over from the one it replaces.
struct Reuse {
    breaker: Option<CircuitBreakerLayer>,
    metrics: Arc<AgentMetrics>,
}

/// The transport [`AgentClient::new`] puts under the stack for `config`: a pooled
/// hyper-util client with the agent's own connector (see [`AgentClient`]) and HTTP
/// version. Public for benchmarks that measure the stack against the bare transport.
pub fn http_client(config: &AgentConfig) -> Result<HttpClient, AgentConfigError> {
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(config.pool_max_idle_per_host)
        .pool_idle_timeout(config.pool_idle_timeout)
        // "2" on http is prior knowledge; on https ALPN offers h2 alone.
        .http2_only(config.http_version == HttpVersion::Http2)
        .build(connector(config)?))
}

/// The agent's connector: TLS with the agent's `tls` settings and ALPN for an
/// `https://` URL (and only TLS: `https_only`), plain TCP for `http://`.
fn connector(config: &AgentConfig) -> Result<HttpsConnector<HttpConnector>, AgentConfigError> {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(config.connect_timeout.min(config.timeout)));
    tcp.enforce_http(false);
    let within_tls = |p: agentgate_config::Invalid| p.within("tls");
    let mut tls = config.tls.client_config().map_err(within_tls)?;
    tls.alpn_protocols = match config.http_version {
        HttpVersion::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        HttpVersion::Http2 => vec![b"h2".to_vec()],
        HttpVersion::Http1 => vec![b"http/1.1".to_vec()],
    };
    let names: Arc<dyn ResolveServerName + Send + Sync> =
        match config.tls.server_name().map_err(within_tls)? {
            Some(name) => Arc::new(FixedServerNameResolver::new(name)),
            None => Arc::new(DefaultServerNameResolver::default()),
        };
    let https_only = config.url.scheme_str() == Some("https");
    Ok(HttpsConnector::new(tcp, tls, https_only, names))
}

/// Marks an error caused by rustls as a [`TlsFailure`] (class `connect`, kind `tls`),
/// wherever rustls reported it: in the handshake, or (TLS 1.3) in the agent's alert
/// refusing our certificate, read with the answer. Other errors pass unchanged.
fn mark_tls(err: BoxError) -> BoxError {
    if is_tls_error(&*err) && !is_caused_by::<RequestBodyError>(&*err) {
        Box::new(TlsFailure::new(err))
    } else {
        err
    }
}

/// A rustls error anywhere in the chain; or, under hyper's I/O error, an I/O error of
/// kind `InvalidData`: over HTTP/2, h2 keeps an I/O error only as its kind and text,
/// and rustls is what reports `InvalidData` on a connection (sockets never do).
fn is_tls_error(err: &(dyn std::error::Error + 'static)) -> bool {
    if cause_ref::<rustls::Error>(err).is_some() {
        return true;
    }
    let io = cause_ref::<hyper::Error>(err).and_then(|h| cause_ref::<std::io::Error>(h));
    io.is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
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
            TransportProj::Hyper { fut } => fut.poll(cx).map_err(|e| mark_tls(e.into())),
            TransportProj::Custom { fut } => fut.poll(cx).map_err(mark_tls),
        }
    }
}
