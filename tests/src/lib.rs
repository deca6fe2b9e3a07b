//! Shared helpers for agentgate's end-to-end tests: real hyper servers on loopback.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tower::ServiceExt;

/// A real `redis-server` per test, and a free loopback port (shared with
/// `agentgate-progress-redis`'s own tests).
pub use agentgate_progress_redis::test_util::{free_port, RedisServer};

/// How long [`eventually`] waits: reconnect backoffs top out at 2 s, a browser takes its
/// time to start, and the machines running the tests are busy.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Waits until `check` yields something, trying again every 5 ms; fails the test, saying
/// `what` never happened, after [`DEADLINE`].
///
/// Only for what the test observes across a process or a socket it does not drive
/// (redis-server, a browser, another replica reached through Redis): a change inside
/// this process has a signal to wait on instead.
pub async fn eventually<T, F>(what: &str, mut check: impl FnMut() -> F) -> T
where
    F: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An agent that answers every request with a JSON description of what it received:
/// method, path, query, HTTP version, all headers, and the body's length and (when
/// small) text. Streams nothing back but that summary, so large uploads can be checked.
/// Over TLS ([`EchoServer::start_tls`]) it also counts connections that spoke plaintext.
#[derive(Debug)]
pub struct EchoServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Whether it speaks TLS.
    tls: bool,
    /// Connections that did not begin with a TLS handshake, on a TLS echo server.
    plaintext: Arc<AtomicUsize>,
    /// Requests received so far, watched by [`EchoServer::until_hits`].
    hits: watch::Sender<usize>,
    /// When held, each request waits here for a permit from [`EchoServer::release`].
    gate: Option<Arc<Semaphore>>,
    task: JoinHandle<()>,
}

impl EchoServer {
    /// Answers 503 to the first `failures` requests, then 200.
    pub async fn failing_first(failures: usize) -> Self {
        Self::start(move |n| {
            if n < failures {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            }
        })
        .await
    }

    /// Starts an echo server; `status_for(n)` is the status of the n-th request.
    pub async fn start(status_for: impl Fn(usize) -> StatusCode + Send + Sync + 'static) -> Self {
        Self::serve(status_for, None, None).await
    }

    /// An echo server speaking TLS with `tls` (HTTP/2 when ALPN picks it).
    pub async fn start_tls(
        tls: Arc<agentgate_tls::rustls::ServerConfig>,
        status_for: impl Fn(usize) -> StatusCode + Send + Sync + 'static,
    ) -> Self {
        Self::serve(status_for, None, Some(tls)).await
    }

    /// An echo server (answering 200) that holds every request it receives until
    /// [`EchoServer::release`] lets it go: a stage or a proxied call that is in flight
    /// for exactly as long as the test wants, with no latency to guess.
    pub async fn held() -> Self {
        Self::serve(|_| StatusCode::OK, Some(Arc::new(Semaphore::new(0))), None).await
    }

    async fn serve(
        status_for: impl Fn(usize) -> StatusCode + Send + Sync + 'static,
        gate: Option<Arc<Semaphore>>,
        tls: Option<Arc<agentgate_tls::rustls::ServerConfig>>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let hits = watch::Sender::new(0);
        let plaintext = Arc::new(AtomicUsize::new(0));
        let status_for: StatusFor = Arc::new(status_for);
        let is_tls = tls.is_some();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = {
            let (hits, gate, plaintext) = (hits.clone(), gate.clone(), plaintext.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let echo = (hits.clone(), gate.clone(), status_for.clone());
                    let Some(acceptor) = acceptor.clone() else {
                        tokio::spawn(echo_connection(stream, echo));
                        continue;
                    };
                    let plaintext = plaintext.clone();
                    tokio::spawn(async move {
                        // A TLS connection starts with a handshake record (0x16).
                        let mut first = [0u8; 1];
                        if stream.peek(&mut first).await.unwrap_or(0) == 1 && first[0] != 0x16 {
                            plaintext.fetch_add(1, Ordering::SeqCst);
                        }
                        if let Ok(stream) = acceptor.accept(stream).await {
                            echo_connection(stream, echo).await;
                        }
                    });
                }
            })
        };
        Self {
            addr,
            tls: is_tls,
            plaintext,
            hits,
            gate,
            task,
        }
    }

    /// Connections that spoke plaintext to a TLS echo server.
    pub fn plaintext_connections(&self) -> usize {
        self.plaintext.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        *self.hits.borrow()
    }

    /// Waits until `n` requests have arrived (held ones included).
    pub async fn until_hits(&self, n: usize) {
        let mut hits = self.hits.subscribe();
        tokio::time::timeout(DEADLINE, hits.wait_for(|hits| *hits >= n))
            .await
            .unwrap_or_else(|_| panic!("{} of {n} requests reached the agent", self.hits()))
            .expect("the server keeps its sender");
    }

    /// Lets `n` held requests (earlier or later ones) be answered.
    pub fn release(&self, n: usize) {
        self.gate
            .as_ref()
            .expect("release is for EchoServer::held")
            .add_permits(n);
    }

    /// `http://addr` (`https://` over TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

/// The status of the n-th request to an [`EchoServer`].
type StatusFor = Arc<dyn Fn(usize) -> StatusCode + Send + Sync>;

/// Serves one [`EchoServer`] connection (HTTP/1.1, or HTTP/2 by preface or ALPN).
async fn echo_connection<I>(
    io: I,
    (hits, gate, status_for): (watch::Sender<usize>, Option<Arc<Semaphore>>, StatusFor),
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let mut n = 0;
        hits.send_modify(|hits| {
            n = *hits;
            *hits += 1;
        });
        let status = status_for(n);
        let gate = gate.clone();
        async move {
            if let Some(gate) = gate {
                // Closed when the server is dropped: then answer.
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
            }
            Ok::<_, Infallible>(echo(req, status).await)
        }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(gate) = &self.gate {
            gate.close();
        }
    }
}

/// The echo: what `req` looked like, as JSON, with `status`, an end-to-end header
/// (`x-agent-answer`) and a hop-by-hop one (`x-agent-private`, named in `connection`).
async fn echo(req: Request<Incoming>, status: StatusCode) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
        .collect();
    let summary = serde_json::json!({
        "version": format!("{:?}", parts.version),
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_len": body.len(),
        "body_sum": body.iter().map(|b| u64::from(*b)).sum::<u64>(),
        "body": if body.len() <= 4096 { String::from_utf8_lossy(&body).into_owned() } else { String::new() },
    });
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-agent-answer", "1")
        .header("connection", "x-agent-private")
        .header("x-agent-private", "hop")
        .body(Full::new(Bytes::from(summary.to_string())))
        .expect("valid response")
}

/// A gateway started in-process on `127.0.0.1:0` (public and admin listeners).
///
/// Tests reach its routes in memory, through the very routers it serves
/// ([`Gateway::call`], [`Gateway::call_admin`]), unless the socket is the point (the
/// proxy's connection handling, WebSocket, shutdown, slow clients): then over loopback,
/// with [`send`] to [`Gateway::url`] and [`Gateway::admin_url`].
#[derive(Debug)]
pub struct Gateway {
    /// Public listener.
    pub addr: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// The gateway's state (engine, agents, breakers).
    pub state: agentgate_gateway::AppState,
    public_app: axum::Router,
    admin_app: axum::Router,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), agentgate_gateway::GatewayError>>>,
}

impl Gateway {
    /// Loads `toml` (its listen addresses are ignored) and serves it.
    pub async fn start(toml: &str) -> Self {
        let config =
            agentgate_gateway::Config::from_toml(toml, "test.toml").expect("valid test config");
        let state = agentgate_gateway::build_state(config).expect("gateway state");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (addr, admin_addr) = (
            listener.local_addr().expect("addr"),
            admin.local_addr().expect("addr"),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(agentgate_gateway::serve(
            state.clone(),
            listener,
            Some(admin),
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            addr,
            admin: admin_addr,
            public_app: agentgate_gateway::app::public_app(state.clone()),
            admin_app: agentgate_gateway::app::admin_app(state.clone()),
            state,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// `http://addr{path}` on the public listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://admin{path}` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// `method path` through the public routes in memory, as [`send`] would send it to
    /// [`Gateway::url`] (same `host` and `content-length`, peer 127.0.0.1), but with no
    /// socket: the router answers the request itself.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let req = request(method, path, headers, body.into());
        oneshot(&self.public_app, self.addr, req).await
    }

    /// [`Gateway::call`] on the admin routes (those of [`Gateway::admin_url`]).
    pub async fn call_admin(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let req = request(method, path, headers, body.into());
        oneshot(&self.admin_app, self.admin, req).await
    }

    /// `POST path` with a JSON body, through the public routes in memory.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Answer {
        self.call(
            "POST",
            path,
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }

    /// Submits `query` (a `POST /api/query` body) with `Prefer: respond-async`, in
    /// memory; checks the 202 `accepted` answer and returns the query's id.
    pub async fn submit_async(&self, query: &serde_json::Value) -> String {
        let headers = [
            ("content-type", "application/json"),
            ("prefer", "respond-async"),
        ];
        let res = self
            .call("POST", "/api/query", &headers, query.to_string())
            .await;
        assert_eq!(
            res.status,
            StatusCode::ACCEPTED,
            "{}",
            String::from_utf8_lossy(&res.body)
        );
        let body = res.json();
        assert_eq!(body["status"], "accepted", "{body}");
        body["query_id"].as_str().expect("a query_id").to_owned()
    }

    /// Begins shutdown; returns the serving task to await.
    pub fn shutdown(&mut self) -> JoinHandle<Result<(), agentgate_gateway::GatewayError>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("not yet shut down")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A request with `headers` and `body`.
fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: Bytes) -> Request<Full<Bytes>> {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(body)).expect("valid request")
}

/// Has `app`, the router of `listener`, answer `req`, with what hyper's client and the
/// gateway's accept loop would add on its way there: `host` and `content-length` as the
/// client sends them, and the peer's address as [`ConnectInfo`] (the proxy's
/// `x-forwarded-for`, the admin audit log).
async fn oneshot(
    app: &axum::Router,
    listener: SocketAddr,
    mut req: Request<Full<Bytes>>,
) -> Answer {
    use http::header::{HeaderValue, CONTENT_LENGTH, HOST};
    use http_body::Body as _;
    let length = req.body().size_hint().exact().unwrap_or(0);
    let headers = req.headers_mut();
    if !headers.contains_key(HOST) {
        let host = HeaderValue::from_str(&listener.to_string()).expect("an address is a header");
        headers.insert(HOST, host);
    }
    if length > 0 && !headers.contains_key(CONTENT_LENGTH) {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000))));
    let Ok(res) = app.clone().oneshot(req).await;
    answer(res).await
}

/// Reads the whole answer.
async fn answer<B>(res: Response<B>) -> Answer
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = res.into_parts();
    Answer {
        version: parts.version,
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("whole body").to_bytes(),
    }
}

/// Runs an external checker (`promtool`, `hadolint`, …) with `args`, `stdin` piped in;
/// whether it exited 0, and what it printed (stdout then stderr). Panics when the
/// program is missing: `scripts/test.sh` installs every one, and a check is never
/// skipped.
pub fn run_tool(program: &str, args: &[&str], stdin: Option<&[u8]>) -> (bool, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e} (scripts/test.sh installs it)"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input)
            .expect("write to the tool's stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("the tool ran");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// What a test request got back.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP version it came over.
    pub version: http::Version,
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (panics with the body text if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends one request over a fresh connection-pooled client and reads the whole answer.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let res = client
        .request(request(method, url, headers, body.into()))
        .await
        .expect("gateway answered");
    answer(res).await
}

/// [`send`] to an `https://` URL, trusting the CA in `ca_file` (HTTP/2 or HTTP/1.1 by
/// ALPN).
pub async fn send_https(
    ca_file: &std::path::Path,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let tls = agentgate_tls::ClientTlsConfig {
        ca_file: Some(ca_file.to_owned()),
        ..Default::default()
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.client_config().expect("client TLS config"))
        .https_only()
        .enable_all_versions()
        .build();
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
    let res = client
        .request(request(method, url, headers, body.into()))
        .await
        .expect("gateway answered");
    answer(res).await
}

/// Starts a request whose body the caller streams chunk by chunk through the returned
/// sender (chunked: no `content-length`), and returns the answer's status, once the
/// gateway answers. The body ends when the sender is dropped.
pub async fn send_streamed(
    method: &str,
    url: &str,
) -> (
    tokio::sync::mpsc::Sender<Bytes>,
    JoinHandle<Result<StatusCode, hyper_util::client::legacy::Error>>,
) {
    type Frames = http_body_util::StreamBody<
        futures_util::stream::BoxStream<'static, Result<http_body::Frame<Bytes>, Infallible>>,
    >;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let chunks = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|c| c.map(|c| Ok(http_body::Frame::data(c))))
    });
    let body: Frames = http_body_util::StreamBody::new(futures_util::StreamExt::boxed(chunks));
    let client: hyper_util::client::legacy::Client<_, Frames> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(body)
        .expect("valid request");
    let answer = tokio::spawn(async move { client.request(req).await.map(|r| r.status()) });
    (tx, answer)
}

/// `POST url` with a JSON body.
pub async fn post_json(url: &str, body: &serde_json::Value) -> Answer {
    send(
        "POST",
        url,
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

/// The `[server]` and `[defaults]` tables of the end-to-end tests' configs: quick retries
/// (no jitter, a budget that never runs dry) and breakers that do not trip by accident.
/// `server` adds lines to `[server]`; `timeout` is the per-attempt timeout.
pub fn base_config(server: &str, timeout: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"
{server}

[defaults]
timeout = "{timeout}"
[defaults.retry]
max_attempts = 2
base_delay = "10ms"
max_delay = "50ms"
jitter = "none"
budget_min_per_sec = 1000
[defaults.circuit_breaker]
consecutive_failures = 50
"#
    )
}

/// A mock agent named `name`, its default behavior changed by `f`.
pub async fn mock(
    name: &str,
    f: impl FnOnce(&mut agentgate_mock_agent::Behavior),
) -> agentgate_mock_agent::MockAgent {
    let mut behavior = agentgate_mock_agent::Behavior {
        name: name.into(),
        ..agentgate_mock_agent::Behavior::default()
    };
    f(&mut behavior);
    agentgate_mock_agent::MockAgent::start(behavior)
        .await
        .expect("mock agent")
}
