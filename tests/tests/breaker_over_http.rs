//! The circuit breaker around a real hyper-util client, against real hyper servers on
//! loopback: real transport errors and real status codes drive it.

use std::time::Duration;

use agentgate::circuit_breaker::{Reason, State};
use agentgate::classify::{cause_ref, classify_error, FailureClass};
use agentgate::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen};
use agentgate_e2e::EchoServer;
use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service, ServiceExt};

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn get(addr: std::net::SocketAddr) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{addr}/process"))
        .body(Empty::new())
        .unwrap()
}

fn breaker(consecutive_failures: u32) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder("nlp")
        .config(CircuitBreakerConfig {
            consecutive_failures,
            open_duration: Duration::from_secs(30),
            ..Default::default()
        })
        .open_jitter(0.0)
        .build()
        .unwrap()
}

#[tokio::test]
async fn failing_agent_trips_then_recovers_through_a_probe() {
    let server = EchoServer::failing_first(3).await;
    let layer = breaker(3);
    let handle = layer.handle();
    let mut svc = layer.layer(client());

    for _ in 0..3 {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(get(server.addr))
            .await
            .unwrap();
        assert_eq!(res.status(), 503);
    }
    assert_eq!(handle.snapshot().state, State::Open);

    // Open: the agent sees nothing more.
    for _ in 0..5 {
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(get(server.addr))
            .await
            .unwrap_err();
        assert!(cause_ref::<CircuitOpen>(&*err).is_some(), "{err}");
    }
    assert_eq!(server.hits(), 3);

    // Let the open period pass on tokio's clock, then probe for real.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(30)).await;
    tokio::time::resume();
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(get(server.addr))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(server.hits(), 4);
    let snap = handle.snapshot();
    assert_eq!((snap.state, snap.transitions), (State::Closed, 3));
}

#[tokio::test]
async fn refused_connections_count_as_connect_failures() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let layer = breaker(2);
    let handle = layer.handle();
    let mut svc = layer.layer(client());
    for _ in 0..2 {
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(get(addr))
            .await
            .unwrap_err();
        assert_eq!(classify_error(&*err), FailureClass::Connect);
    }
    let snap = handle.snapshot();
    assert_eq!(
        (snap.state, snap.trip_reason),
        (State::Open, Some(Reason::Consecutive))
    );
}

#[tokio::test]
async fn retry_after_from_a_real_agent_opens_the_breaker() {
    use std::convert::Infallible;
    use tokio::net::TcpListener;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(
                        http::Response::builder()
                            .status(429)
                            .header("retry-after", "12")
                            .body(http_body_util::Full::new(Bytes::new()))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let layer = breaker(5);
    let handle = layer.handle();
    let mut svc = layer.layer(client());
    let res = svc.ready().await.unwrap().call(get(addr)).await.unwrap();
    assert_eq!(res.status(), 429);
    let snap = handle.snapshot();
    assert_eq!(
        (snap.state, snap.trip_reason),
        (State::Open, Some(Reason::RetryAfter))
    );
    let left = snap.retry_after.unwrap();
    assert!(
        left <= Duration::from_secs(12) && left > Duration::from_secs(10),
        "{left:?}"
    );
}
