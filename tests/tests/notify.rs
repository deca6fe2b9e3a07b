//! Notifications (SPEC §9) end to end: the gateway in-process, a real webhook receiver
//! on loopback. Breaker transitions are steered through the admin API.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentgate_e2e::{base_config, eventually, send, EchoServer, Gateway};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

const TOKEN_ENV: &str = "AGENTGATE_TEST_NOTIFY_ADMIN_TOKEN";
const TOKEN: &str = "notify-admin";
const HOOK_TOKEN_ENV: &str = "AGENTGATE_TEST_HOOK_TOKEN";

/// A webhook receiver: answers each request with `status_for(n)` and keeps what it got.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(HeaderMap, Value, StatusCode)>>>,
    count: watch::Receiver<usize>,
}

impl Receiver {
    async fn start(status_for: impl Fn(usize) -> StatusCode + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/agentgate", listener.local_addr().unwrap());
        let got: Arc<Mutex<Vec<(HeaderMap, Value, StatusCode)>>> = Arc::default();
        let (count_tx, count) = watch::channel(0);
        let (got2, status_for) = (got.clone(), Arc::new(status_for));
        let count_tx = Arc::new(count_tx);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (got, status_for, count_tx) =
                    (got2.clone(), status_for.clone(), count_tx.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (got, status_for, count_tx) =
                            (got.clone(), status_for.clone(), count_tx.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let status = {
                                let mut got = got.lock().unwrap();
                                let status = status_for(got.len());
                                got.push((
                                    parts.headers,
                                    serde_json::from_slice(&body).unwrap(),
                                    status,
                                ));
                                status
                            };
                            count_tx.send_modify(|n| *n += 1);
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { url, got, count }
    }

    /// Waits until `n` requests have arrived.
    async fn until(&mut self, n: usize) {
        let arrived =
            tokio::time::timeout(Duration::from_secs(20), self.count.wait_for(|c| *c >= n))
                .await
                .is_ok();
        assert!(
            arrived,
            "{} of {n} notifications arrived",
            self.got.lock().unwrap().len()
        );
    }

    /// What was delivered (answered 2xx), as `(event, agent)`.
    fn delivered(&self) -> Vec<(String, String)> {
        let got = self.got.lock().unwrap();
        got.iter()
            .filter(|(_, _, status)| status.is_success())
            .map(|(_, b, _)| {
                (
                    b["event"].as_str().unwrap().to_owned(),
                    b["agent"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}

/// Agents `nlp`, `data` and `viz` (all answering), a one-stage pipeline, the admin token,
/// and one `[[notify]]` table with `hook`'s lines.
fn config(echo: &EchoServer, hook: &str) -> String {
    let mut out = base_config(r#"admin_listen = "127.0.0.1:1""#, "5s");
    out.push_str(&format!("\n[admin]\ntoken_env = \"{TOKEN_ENV}\"\n"));
    for agent in ["nlp", "data", "viz"] {
        out.push_str(&format!("[agents.{agent}]\nurl = \"{}\"\n", echo.url()));
    }
    out.push_str(
        "[pipelines.default]\n[[pipelines.default.stages]]\nname = \"s\"\nagent = \"nlp\"\n",
    );
    out.push_str(&format!("\n[[notify]]\n{hook}"));
    out
}

async fn breaker(gw: &Gateway, agent: &str, action: &str) {
    let auth = format!("Bearer {TOKEN}");
    let path = format!("/api/orchestration/circuit-breakers/{agent}/{action}");
    let res = gw
        .call_admin("POST", &path, &[("authorization", &auth)], "")
        .await;
    assert_eq!(res.status, StatusCode::OK);
}

async fn sample(gw: &Gateway, series: &str) -> f64 {
    let res = gw.call_admin("GET", "/metrics", &[], "").await;
    String::from_utf8_lossy(&res.body)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An admin WebSocket subscribed to the breaker transitions.
async fn transitions(gw: &Gateway) -> Ws {
    use futures_util::SinkExt;
    let url = format!("ws://{}/ws", gw.admin);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("upgrade");
    let subscribe = json!({"type": "subscribe_metrics", "interval_ms": 60_000}).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::text(subscribe))
        .await
        .unwrap();
    // The first `metrics` frame comes once the subscription follows the transitions.
    next_of(&mut ws, "metrics").await;
    ws
}

/// The next `circuit_breaker` frame.
async fn next_transition(ws: &mut Ws) -> Value {
    next_of(ws, "circuit_breaker").await
}

/// The next frame of type `kind`.
async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    use futures_util::StreamExt;
    let next = async {
        while let Some(Ok(frame)) = ws.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["type"] == kind {
                    return v;
                }
            }
        }
        panic!("the admin WebSocket closed");
    };
    let found = tokio::time::timeout(Duration::from_secs(20), next).await;
    found.unwrap_or_else(|_| panic!("no {kind} frame"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_gets_breaker_opened_once_per_min_interval_through_retries() {
    std::env::set_var(TOKEN_ENV, TOKEN);
    std::env::set_var(HOOK_TOKEN_ENV, "hook-token");
    let echo = EchoServer::start(|_| StatusCode::OK).await;
    // The hook fails its first delivery once: the retry layer sends it again.
    let mut hook = Receiver::start(|n| {
        if n == 0 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    })
    .await;
    let lines = format!(
        "url = \"{}\"\nevents = [\"breaker_opened\", \"breaker_closed\"]\n\
         headers = {{ authorization = \"Bearer ${{{HOOK_TOKEN_ENV}}}\" }}\nmin_interval = \"1m\"\n\
         [notify.retry]\nbase_delay = \"10ms\"\nmax_delay = \"50ms\"\njitter = \"none\"\n",
        hook.url
    );
    let gw = Gateway::start(&config(&echo, &lines)).await;
    let sent_before = sample(&gw, "agentgate_notifications_total{outcome=\"sent\"}").await;

    // nlp flaps twice within the interval, then data opens. Each breaker's transitions
    // reach the notifier in order, but two breakers' may cross: data acts once the admin
    // WebSocket (fed in the same order as the notifier) has seen nlp's four.
    let mut feed = transitions(&gw).await;
    for action in ["force-open", "reset", "force-open", "reset"] {
        breaker(&gw, "nlp", action).await;
    }
    for _ in 0..4 {
        let t = next_transition(&mut feed).await;
        assert_eq!(t["agent"], "nlp", "{t}");
    }
    breaker(&gw, "data", "force-open").await;
    // One hook, one queue, in order: once data's arrives, every earlier one has been
    // delivered or skipped.
    hook.until(4).await;
    assert_eq!(
        hook.delivered(),
        [
            ("breaker_opened".to_owned(), "nlp".to_owned()),
            ("breaker_closed".to_owned(), "nlp".to_owned()),
            ("breaker_opened".to_owned(), "data".to_owned()),
        ]
    );
    let got = hook.got.lock().unwrap().clone();
    let ((refused, _, first_status), (retried, first, _)) = (&got[0], &got[1]);
    assert_eq!(*first_status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retried["x-agentgate-attempt"], "2", "the retry is numbered");
    assert_eq!(
        refused["idempotency-key"], retried["idempotency-key"],
        "one key per notification"
    );
    assert_ne!(got[2].0["idempotency-key"], retried["idempotency-key"]);
    assert_eq!(retried["authorization"], "Bearer hook-token");
    assert_eq!(retried["content-type"], "application/json");
    assert_eq!(first["from"], "closed");
    assert_eq!(first["to"], "forced_open");
    assert_eq!(first["reason"], "manual");
    assert!(first["ts"].as_str().unwrap().ends_with('Z'), "{first}");
    assert!(!first["replica"].as_str().unwrap().is_empty(), "{first}");
    assert_eq!(
        first.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["agent", "event", "from", "reason", "replica", "to", "ts"]
    );
    // Counted once the hook's answer is read, a moment after the hook has the request.
    eventually("the three deliveries are counted as sent", || async {
        let sent = sample(&gw, "agentgate_notifications_total{outcome=\"sent\"}").await;
        (sent >= sent_before + 3.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_status_is_told_when_it_changes() {
    std::env::set_var(TOKEN_ENV, TOKEN);
    let echo = EchoServer::start(|_| StatusCode::OK).await;
    let mut hook = Receiver::start(|_| StatusCode::NO_CONTENT).await;
    let lines = format!(
        "url = \"{}\"\nevents = [\"health_changed\"]\nmin_interval = \"0s\"\n",
        hook.url
    );
    let gw = Gateway::start(&config(&echo, &lines)).await;
    // Once the gateway serves (it answers on its socket), the health status it started
    // with is where changes count from; then a breaker opens.
    assert_eq!(
        send("GET", &gw.url("/healthz"), &[], "").await.status,
        StatusCode::OK
    );
    let mut health = gw
        .call_admin("GET", "/api/orchestration/health", &[], "")
        .await
        .json();
    assert_eq!(health["status"], "healthy");
    breaker(&gw, "viz", "force-open").await;
    hook.until(1).await;
    breaker(&gw, "viz", "reset").await;
    hook.until(2).await;
    let got = hook.got.lock().unwrap().clone();
    let (first, second) = (&got[0].1, &got[1].1);
    assert_eq!(
        (
            first["event"].as_str(),
            first["from"].as_str(),
            first["to"].as_str()
        ),
        (Some("health_changed"), Some("healthy"), Some("degraded"))
    );
    assert!(first.get("agent").is_none());
    health = first["health"].clone();
    assert_eq!(health["status"], "degraded");
    assert_eq!(
        health["reasons"],
        json!(["circuit breaker of `viz` is open"])
    );
    assert_eq!(
        (second["from"].as_str(), second["to"].as_str()),
        (Some("degraded"), Some("healthy"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_hangs_never_slows_queries_and_drops_beyond_its_queue() {
    std::env::set_var(TOKEN_ENV, TOKEN);
    let echo = EchoServer::start(|_| StatusCode::OK).await;
    let hung = EchoServer::held().await;
    let lines = format!(
        "url = \"{}\"\nevents = [\"breaker_opened\"]\nqueue = 1\ntimeout = \"60s\"\n[notify.retry]\nmax_attempts = 1\n",
        hung.url()
    );
    let gw = Gateway::start(&config(&echo, &lines)).await;
    let dropped = "agentgate_notifications_total{outcome=\"dropped\"}";
    let before = sample(&gw, dropped).await;

    breaker(&gw, "nlp", "force-open").await;
    hung.until_hits(1).await; // in flight, and hanging: the queue is empty again
    breaker(&gw, "data", "force-open").await; // waits in the queue
    breaker(&gw, "viz", "force-open").await; // the queue is full: dropped
    eventually("the third notification is dropped", || async {
        (sample(&gw, dropped).await >= before + 1.0).then_some(())
    })
    .await;
    // Queries go on as if there were no hook (nlp is forced open: its stage fails at
    // once, without waiting for anything).
    let res = gw.post_json("/api/query", &json!({"query": "q"})).await;
    assert_eq!(
        res.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        res.body
    );
    breaker(&gw, "nlp", "reset").await;
    let res = gw.post_json("/api/query", &json!({"query": "q"})).await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    assert_eq!(hung.hits(), 1, "the hook is still on its first delivery");
}
