//! The backend of `benches/proxy.sh`: a hyper HTTP/1 server that answers every `GET` with
//! a body of a chosen size and does nothing else, so that the proxies in front of it, not
//! the backend, spend the CPU they share with it (the mock agent parses the request and
//! writes JSON; this answers a slice of one buffer that never changes).
//!
//! ```sh
//! cargo build --release -p agentgate-bench-harness --bin hello_backend
//! taskset -c 1 target/release/hello_backend 127.0.0.1:18090
//! curl http://127.0.0.1:18090/bytes/16384   # 16 KiB of "hello\nhello\n…"
//! curl http://127.0.0.1:18090/              # "hello\n"
//! ```
//!
//! `/bytes/N` answers `N` bytes (0 ≤ N ≤ 1 MiB); any other path answers `hello\n`, 6 bytes.
//! A bad `N` answers 400 with the reason. One proxy route then serves every answer size
//! of a run, and every size costs the backend the same: a reference-counted slice of one
//! buffer, no copy. It runs on a current-thread runtime: pinned to one CPU next to the
//! proxy, one thread is all it could use.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// The gateway binary's allocator, as in every binary of this package.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The answer of every path but `/bytes/N`.
const HELLO: &[u8] = b"hello\n";

/// The largest `/bytes/N`.
const MAX_BYTES: usize = 1 << 20;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), None) = (args.next(), args.next()) else {
        eprintln!("usage: hello_backend LISTEN_ADDR   (e.g. 127.0.0.1:18090)");
        std::process::exit(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => fail(format_args!("cannot start a runtime: {e}")),
    };
    runtime.block_on(serve(&listen));
}

fn fail(why: std::fmt::Arguments<'_>) -> ! {
    eprintln!("hello_backend: {why}");
    std::process::exit(1);
}

/// Accepts connections on `listen` for ever, each served by its own task.
async fn serve(listen: &str) {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => fail(format_args!("cannot listen on {listen:?}: {e}")),
    };
    let body = hello_bytes();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                std::future::ready(Ok::<_, Infallible>(answer(&body, req.uri().path())))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// `MAX_BYTES` of `hello\n` repeated: every answer is a slice of it.
fn hello_bytes() -> Bytes {
    HELLO.iter().copied().cycle().take(MAX_BYTES).collect()
}

/// The answer to `path`: `body`'s first N bytes for `/bytes/N`, else `hello\n`.
fn answer(body: &Bytes, path: &str) -> Response<Full<Bytes>> {
    let Some(n) = path.strip_prefix("/bytes/") else {
        return text(StatusCode::OK, body.slice(..HELLO.len()));
    };
    match n.parse::<usize>() {
        Ok(n) if n <= MAX_BYTES => text(StatusCode::OK, body.slice(..n)),
        _ => text(
            StatusCode::BAD_REQUEST,
            Bytes::from(format!(
                "/bytes/N takes N from 0 to {MAX_BYTES}, not {n:?}\n"
            )),
        ),
    }
}

fn text(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(res: Response<Full<Bytes>>) -> (StatusCode, Bytes) {
        use http_body_util::BodyExt;
        let status = res.status();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        (
            status,
            rt.block_on(res.into_body().collect()).unwrap().to_bytes(),
        )
    }

    #[test]
    fn answers_the_size_the_path_names() {
        let body = hello_bytes();
        for n in [0, 6, 7, 16384, MAX_BYTES] {
            let (status, got) = bytes_of(answer(&body, &format!("/bytes/{n}")));
            assert_eq!((status, got.len()), (StatusCode::OK, n));
            assert!(got.iter().zip(HELLO.iter().cycle()).all(|(a, b)| a == b));
        }
        assert_eq!(bytes_of(answer(&body, "/")).1, HELLO);
        assert_eq!(bytes_of(answer(&body, "/echo")).1, HELLO);
    }

    #[test]
    fn a_bad_size_is_a_400_that_says_why() {
        let body = hello_bytes();
        for path in ["/bytes/", "/bytes/x", "/bytes/-1", "/bytes/1048577"] {
            let (status, got) = bytes_of(answer(&body, path));
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
            assert!(String::from_utf8_lossy(&got).starts_with("/bytes/N takes N from 0 to 1048576"));
        }
    }
}
