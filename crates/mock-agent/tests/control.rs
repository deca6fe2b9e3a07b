//! The `/_mock` control endpoint, the handle's API and the server's lifecycle.

mod support;

use std::time::Duration;

use agentgate_mock_agent::{serve, Behavior, BehaviorError, MockAgent, Stats};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use support::{client, get, send};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

#[tokio::test]
async fn get_mock_shows_behavior_and_stats() {
    let agent = MockAgent::start(Behavior {
        name: "search".to_owned(),
        latency: Duration::from_millis(0),
        seed: Some(5),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let client = client();
    get(&client, &format!("{}/anything", agent.url())).await;

    let v = get(&client, &format!("{}/_mock", agent.url())).await.json();
    assert_eq!(v["behavior"]["name"], "search");
    assert_eq!(v["behavior"]["latency"], "0s");
    assert_eq!(v["behavior"]["retry_after"], "1s");
    assert_eq!(v["behavior"]["seed"], 5);
    assert_eq!(v["stats"]["requests"], 1);
    assert_eq!(v["stats"]["ok"], 1);

    let stats: Stats = serde_json::from_value(
        get(&client, &format!("{}/_mock/stats", agent.url()))
            .await
            .json(),
    )
    .unwrap();
    assert_eq!(
        stats,
        Stats {
            requests: 1,
            ok: 1,
            ..Stats::default()
        }
    );
}

#[tokio::test]
async fn put_mock_changes_behavior_at_runtime() {
    let agent = MockAgent::start(Behavior::default()).await.unwrap();
    let client = client();
    let url = format!("{}/x", agent.url());
    assert_eq!(get(&client, &url).await.status, StatusCode::OK);

    let res = send(
        &client,
        Method::PUT,
        &format!("{}/_mock", agent.url()),
        &[("content-type", "application/json")],
        r#"{"error_rate": 1.0, "error_status": 503, "latency": "5ms"}"#,
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    let v = res.json();
    assert_eq!(v["error_rate"], 1.0);
    assert_eq!(v["error_status"], 503);
    assert_eq!(v["latency"], "5ms");
    assert_eq!(v["name"], "mock", "fields not in the patch are kept");

    let b = agent.behavior();
    assert_eq!((b.error_rate, b.error_status), (1.0, 503));
    assert_eq!(b.latency, Duration::from_millis(5));
    assert_eq!(
        get(&client, &url).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // Back to healthy.
    let res = send(
        &client,
        Method::PUT,
        &format!("{}/_mock", agent.url()),
        &[],
        r#"{"error_rate": 0}"#,
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(get(&client, &url).await.status, StatusCode::OK);

    // Control requests are neither counted nor faulted.
    let stats = agent.stats();
    assert_eq!((stats.requests, stats.ok, stats.errors), (3, 2, 1));
}

#[tokio::test]
async fn bad_put_is_400_and_changes_nothing() {
    let agent = MockAgent::start(Behavior::default()).await.unwrap();
    let client = client();
    let put = |body: &'static str| {
        let client = client.clone();
        let url = format!("{}/_mock", agent.url());
        async move { send(&client, Method::PUT, &url, &[], body).await }
    };
    for (body, needle) in [
        (r#"{"nope": 1}"#, "unknown field `nope`"),
        (r#"{"error_rate": 1.5}"#, "error_rate = 1.5"),
        (r#"{"throttle_status": 200}"#, "throttle_status = 200"),
        (r#"{"latency": "soon"}"#, ""),
        (r#"{"outage_down": "5s"}"#, "outage_down = 5s"),
        ("[1, 2]", "JSON object"),
        ("not json", "not JSON"),
    ] {
        let res = put(body).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{body}");
        let v = res.json();
        assert_eq!(v["error"]["kind"], "bad_request", "{body}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    assert_eq!(agent.behavior(), Behavior::default());
    assert_eq!(agent.stats(), Stats::default());
}

#[tokio::test]
async fn control_paths_check_methods_and_routes() {
    let agent = MockAgent::start(Behavior {
        error_rate: 1.0,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let client = client();
    let res = send(
        &client,
        Method::POST,
        &format!("{}/_mock", agent.url()),
        &[],
        "{}",
    )
    .await;
    assert_eq!(res.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.header("allow"), Some("GET, PUT"));
    let res = send(
        &client,
        Method::DELETE,
        &format!("{}/_mock/stats", agent.url()),
        &[],
        "",
    )
    .await;
    assert_eq!(res.status, StatusCode::METHOD_NOT_ALLOWED);
    let res = get(&client, &format!("{}/_mock/nope", agent.url())).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    // Even with error_rate 1.0 the control endpoint answers normally.
    assert_eq!(
        get(&client, &format!("{}/_mock", agent.url())).await.status,
        StatusCode::OK
    );
    assert_eq!(agent.stats(), Stats::default());
}

#[tokio::test]
async fn invalid_behaviors_are_rejected() {
    let err = MockAgent::start(Behavior {
        hang_rate: -1.0,
        ..Behavior::default()
    })
    .await
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("hang_rate = -1"), "{err}");

    let agent = MockAgent::start(Behavior::default()).await.unwrap();
    let err = agent
        .set_behavior(Behavior {
            outage_down: Duration::from_secs(2),
            outage_every: Duration::from_secs(1),
            ..Behavior::default()
        })
        .unwrap_err();
    assert!(
        matches!(err, BehaviorError::OutageTooLong { .. }),
        "{err:?}"
    );
    assert_eq!(agent.behavior(), Behavior::default());

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = serve(
        listener,
        Behavior {
            error_status: 99,
            ..Behavior::default()
        },
        std::future::ready(()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn start_on_uses_the_given_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let agent = MockAgent::start_on(listener, Behavior::default())
        .await
        .unwrap();
    assert_eq!(agent.addr(), addr);
    assert_eq!(agent.url(), format!("http://{addr}"));
    assert_eq!(
        get(&client(), &format!("{}/", agent.url())).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn serve_runs_until_shutdown() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, Behavior::default(), async move {
        let _ = rx.await;
    }));
    let res = get(&client(), &format!("http://{addr}/ping")).await;
    assert_eq!(res.status, StatusCode::OK);
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn shutdown_aborts_hung_connections() {
    let agent = MockAgent::start(Behavior {
        hang_rate: 1.0,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let addr = agent.addr();
    let client = client();
    let req = Request::get(format!("{}/x", agent.url()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let pending = tokio::spawn(async move { client.request(req).await });
    // Wait until the request is hanging inside the agent.
    while agent.stats().hangs == 0 {
        tokio::task::yield_now().await;
    }
    agent.shutdown().await;
    let res = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the hung request ends when the agent shuts down")
        .unwrap();
    assert!(res.is_err(), "no answer, a closed connection");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let agent = MockAgent::start(Behavior::default()).await.unwrap();
    let addr = agent.addr();
    assert_eq!(
        get(&client(), &format!("http://{addr}/")).await.status,
        StatusCode::OK
    );
    drop(agent);
    // The abort takes effect when the runtime next polls the server task.
    let mut closed = false;
    for _ in 0..100 {
        tokio::task::yield_now().await;
        if TcpStream::connect(addr).await.is_err() {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "the listener must close after the handle is dropped"
    );
}
