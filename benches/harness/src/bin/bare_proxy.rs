//! The floor of a hyper-based reverse proxy: a hyper HTTP/1 server whose only service
//! forwards every request to one backend through a bare `hyper_util` legacy client (the
//! transport `AgentClient` wraps), with no layers, no header work and no routing. It
//! answers "how fast can any proxy built on this transport be" next to `agentgate run`
//! and nginx in `benches/proxy.sh`-style runs (docs/BENCHMARKS.md).
//!
//! ```sh
//! cargo build --release -p agentgate-bench-harness --bin bare_proxy
//! taskset -c 1 target/release/bare_proxy 127.0.0.1:18070 http://127.0.0.1:18090
//! ```
//!
//! Requests to `/anything` go to `<backend>/anything`. Not a product: there is no
//! hop-by-hop handling, and errors answer 502 with no body.
//!
//! With `--inline` as a third argument it measures another transport instead, the one
//! hyper-util's legacy client is not: every client connection gets its own upstream
//! connection (`hyper::client::conn::http1`), and both connections are driven by the same
//! task, so a request is handed to the upstream connection without a pool checkout and
//! without waking another task (`FLOOR_MODE=inline benches/proxy.sh`). That is
//! closer to what nginx does with upstream keepalive.

use std::convert::Infallible;

use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// The gateway binary's allocator, so the figures are the ones it would show.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(backend)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_proxy LISTEN_ADDR BACKEND_URL");
        std::process::exit(2);
    };
    let backend: Uri = backend.parse().expect("a backend URL");
    let inline = match args.next().as_deref() {
        None => false,
        Some("--inline") => true,
        Some(other) => {
            eprintln!("bare_proxy: unknown argument {other:?} (expected --inline)");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if inline {
        runtime.block_on(serve_inline(listen, backend));
    } else {
        runtime.block_on(serve(listen, backend));
    }
}

async fn serve(listen: String, backend: Uri) {
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http();
    accept_loop(&listen, move |stream| {
        let (client, backend) = (client.clone(), backend.clone());
        async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (client, backend) = (client.clone(), backend.clone());
                async move { Ok::<_, Infallible>(forward(&client, &backend, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        }
    })
    .await
}

/// Accepts connections on `listen` for ever, each served by its own task.
async fn accept_loop<F, Fut>(listen: &str, serve_connection: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .expect("bind the listen address");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream));
    }
}

/// What either mode answers when the backend cannot be reached.
fn bad_gateway() -> Response<Body> {
    let mut res = Response::new(Empty::new().map_err(|e| match e {}).boxed_unsync());
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res
}

async fn forward(
    client: &Client<HttpConnector, Incoming>,
    backend: &Uri,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let mut parts = backend.clone().into_parts();
    parts.path_and_query = req.uri().path_and_query().cloned();
    *req.uri_mut() = Uri::from_parts(parts).expect("backend URL plus the request path");
    match client.request(req).await {
        Ok(res) => res.map(|b| b.boxed_unsync()),
        Err(_) => bad_gateway(),
    }
}

/// `--inline`: one upstream connection per client connection, driven in the client
/// connection's task.
async fn serve_inline(listen: String, backend: Uri) {
    let authority = backend
        .authority()
        .expect("a backend URL with a host")
        .clone();
    accept_loop(&listen, move |stream| {
        let authority = authority.clone();
        async move {
            let Ok(upstream) = tokio::net::TcpStream::connect(authority.as_str()).await else {
                return;
            };
            let _ = upstream.set_nodelay(true);
            let Ok((sender, upstream_conn)) =
                hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(upstream)).await
            else {
                return;
            };
            // hyper's HTTP/1 server calls the service for one request at a time, so the
            // lock is never contended.
            let sender = std::sync::Arc::new(tokio::sync::Mutex::new(sender));
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let sender = sender.clone();
                async move { Ok::<_, Infallible>(forward_inline(&sender, req).await) }
            });
            let downstream = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            // Both connections in this one task: whichever ends first ends the pair.
            tokio::select! {
                _ = downstream => {}
                _ = upstream_conn => {}
            }
        }
    })
    .await
}

async fn forward_inline(
    sender: &tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Incoming>>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    // The upstream connection is the backend's already: send the origin form, the path.
    if let Some(path) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = Uri::from(path);
    }
    let mut sender = sender.lock().await;
    let answer = match sender.ready().await {
        Ok(()) => sender.send_request(req).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(res) => res.map(|b| b.boxed_unsync()),
        Err(_) => bad_gateway(),
    }
}
