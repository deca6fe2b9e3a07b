//! SPEC §7 (clients, ownership, quotas) and §8 (admission control) through the real
//! gateway: keys on every public route, another client's query indistinguishable from
//! an unknown one on every route and WebSocket frame, quotas under racing requests,
//! the global cap, the agent bulkhead, stalled bodies, the connection cap, protected
//! admin reads, WebSocket origins — and no key ever in an answer, a log line or a metric.
//!
//! Metrics are per process and these tests share one, so each test uses client names
//! of its own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use agentgate_e2e::{base_config, mock, send, EchoServer, Gateway};
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const ADMIN_TOKEN: &str = "admin-s3cret-token";
const ADMIN_ENV: &str = "AGENTGATE_CLIENTS_TEST_ADMIN_TOKEN";

// === logs: every line the gateway writes, kept to look for secrets ===

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per process) a subscriber that keeps every log line at `trace` —
/// but this test's own WebSocket client's, which logs the URL it asks for.
fn logs() -> &'static Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("trace,tungstenite::handshake::client=off")
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        logs
    })
}

// === config ===

fn sha(key: &str) -> String {
    format!("{:x}", Sha256::digest(key.as_bytes()))
}

/// Two agents (`nlp`, `data`), a `default` pipeline on nlp (falling back to a static
/// value) and an `other` one on data; `clients` is `[[auth.clients]]` tables.
fn config(server: &str, nlp: &str, data: &str, nlp_extra: &str, clients: &str) -> String {
    std::env::set_var(ADMIN_ENV, ADMIN_TOKEN);
    format!(
        r#"{}
[admin]
token_env = "{ADMIN_ENV}"
[auth]
mode = "api_key"
{clients}
[agents.nlp]
url = "{nlp}"
{nlp_extra}
[agents.data]
url = "{data}"
[pipelines.default]
deadline = "10s"
[[pipelines.default.stages]]
name = "nlp"
agent = "nlp"
fallback = [ {{ static = {{ intent = "unknown" }} }} ]
[pipelines.other]
[[pipelines.other.stages]]
name = "data"
agent = "data"
"#,
        base_config(&format!("admin_listen = \"127.0.0.1:1\"\n{server}"), "5s")
    )
}

fn client(name: &str, key: &str, extra: &str) -> String {
    format!(
        "[[auth.clients]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\n{extra}\n",
        sha(key)
    )
}

/// A gateway of [`config`] with `server` lines, on an `nlp` mock shaped by `nlp` (and
/// `nlp_extra` keys) and a plain `data` mock.
async fn start(
    server: &str,
    nlp: impl FnOnce(&mut agentgate_mock_agent::Behavior),
    nlp_extra: &str,
    clients: &str,
) -> (
    Gateway,
    agentgate_mock_agent::MockAgent,
    agentgate_mock_agent::MockAgent,
) {
    let (nlp, data) = (mock("nlp", nlp).await, mock("data", |_| {}).await);
    let gw = Gateway::start(&config(server, &nlp.url(), &data.url(), nlp_extra, clients)).await;
    (gw, nlp, data)
}

/// `n` async submits of `key`'s, each accepted.
async fn accept_async(gw: &Gateway, key: &str, n: usize) {
    for _ in 0..n {
        let res = submit(gw, key, &json!({"query": "q"}), true).await;
        assert_eq!(res.status, StatusCode::ACCEPTED, "{:?}", res.json());
    }
}

/// `method url` with the key as `x-api-key` and no body.
async fn keyed(method: &str, url: &str, key: &str) -> agentgate_e2e::Answer {
    send(method, url, &[("x-api-key", key)], "").await
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn submit(
    gw: &Gateway,
    key: &str,
    body: &Value,
    prefer_async: bool,
) -> agentgate_e2e::Answer {
    let auth = bearer(key);
    let mut headers = vec![
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
    ];
    if prefer_async {
        headers.push(("prefer", "respond-async"));
    }
    send("POST", &gw.url("/api/query"), &headers, body.to_string()).await
}

// === WebSocket ===

async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tungstenite::Error> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

async fn ws_send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

async fn ws_recv(ws: &mut Ws) -> Value {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str::<Value>(&t).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("a frame within 10 s")
}

/// The status an upgrade was refused with.
fn refused_status(e: tungstenite::Error) -> u16 {
    match e {
        tungstenite::Error::Http(res) => res.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

// === /metrics ===

async fn metrics(gw: &Gateway) -> String {
    let res = send("GET", &gw.admin_url("/metrics"), &[], "").await;
    String::from_utf8(res.body.to_vec()).unwrap()
}

/// The value of the series whose line starts with `series` (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_required_on_every_public_route_but_health() {
    let (nlp, data) = (mock("nlp", |_| {}).await, mock("data", |_| {}).await);
    let gw = Gateway::start(&config(
        "",
        &nlp.url(),
        &data.url(),
        "",
        &(client(
            "k-alpha",
            "key-alpha",
            "agents = [\"nlp\"]\npipelines = [\"default\"]",
        ) + &client("k-beta", "key-beta", "")),
    ))
    .await;
    let before = metrics(&gw).await;

    for (method, path) in [
        ("POST", "/api/query"),
        ("GET", "/api/query/some-id"),
        ("DELETE", "/api/query/some-id"),
        ("GET", "/agents/nlp/x"),
        ("GET", "/ws"),
    ] {
        for headers in [
            vec![],
            vec![("authorization", "Bearer wrong-key")],
            vec![("x-api-key", "key-alph")],
            vec![("authorization", "Basic a2V5LWFscGhh")],
        ] {
            let res = send(method, &gw.url(path), &headers, "").await;
            assert_eq!(
                res.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {headers:?}"
            );
            assert_eq!(res.headers["www-authenticate"], "Bearer");
            assert_eq!(res.json()["error"]["kind"], "unauthorized");
        }
    }
    // `?api_key=` is for WebSocket upgrades only.
    let res = send("GET", &gw.url("/api/query/x?api_key=key-alpha"), &[], "").await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            send("GET", &gw.url(path), &[], "").await.status,
            StatusCode::OK
        );
    }

    // Both headers work; the answer is the route's own.
    let res = keyed("GET", &gw.url("/api/query/nope"), "key-alpha").await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    let res = send(
        "GET",
        &gw.url("/api/query/nope"),
        &[("authorization", "bearer key-beta")],
        "",
    )
    .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    // The proxy: an agent on the list, then one off it.
    let res = keyed("GET", &gw.url("/agents/nlp/x"), "key-alpha").await;
    assert_eq!(res.status, StatusCode::OK);
    let res = keyed("GET", &gw.url("/agents/data/x"), "key-alpha").await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(res.json()["error"]["kind"], "forbidden");
    assert_eq!(
        data.stats().requests,
        0,
        "a forbidden call reaches no agent"
    );
    // A pipeline off the list, over HTTP and over the WebSocket.
    let res = submit(
        &gw,
        "key-alpha",
        &json!({"query": "q", "pipeline": "other"}),
        false,
    )
    .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let mut ws = ws_connect(gw.addr, "/ws?api_key=key-alpha", &[])
        .await
        .expect("upgrade with ?api_key=");
    ws_send(
        &mut ws,
        json!({"type": "query", "query": "q", "pipeline": "other", "request_id": 7}),
    )
    .await;
    let frame = ws_recv(&mut ws).await;
    assert_eq!(
        (frame["code"].as_str(), frame["request_id"].as_i64()),
        (Some("forbidden"), Some(7))
    );
    let err = ws_connect(gw.addr, "/ws?api_key=nope", &[])
        .await
        .unwrap_err();
    assert_eq!(refused_status(err), 401);

    let after = metrics(&gw).await;
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(
        delta(r#"agentgate_client_rejected_total{client="unknown",reason="unauthorized"}"#),
        22.0
    );
    assert_eq!(
        delta(r#"agentgate_client_rejected_total{client="k-alpha",reason="forbidden"}"#),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clients_query_looks_unknown_on_every_route_and_frame() {
    let (gw, _nlp, _data) = start(
        "",
        |b| b.latency = Duration::from_secs(30),
        "",
        &(client("own-a", "key-own-a", "") + &client("own-b", "key-own-b", "")),
    )
    .await;
    let res = submit(&gw, "key-own-a", &json!({"query": "q"}), true).await;
    assert_eq!(res.status, StatusCode::ACCEPTED);
    let id = res.json()["query_id"].as_str().unwrap().to_owned();
    let unknown = "00000000-0000-4000-8000-000000000000";

    // The owner sees it, with its client.
    let mine = keyed("GET", &gw.url(&format!("/api/query/{id}")), "key-own-a").await;
    assert_eq!(mine.status, StatusCode::OK);
    assert_eq!(mine.json()["client"], "own-a");

    // The other client: GET and DELETE answer exactly as for an unknown id.
    for method in ["GET", "DELETE"] {
        let (their_url, unknown_url) = (
            gw.url(&format!("/api/query/{id}")),
            gw.url(&format!("/api/query/{unknown}")),
        );
        let key = [("x-api-key", "key-own-b")];
        let theirs = send(method, &their_url, &key, "").await;
        let none = send(method, &unknown_url, &key, "").await;
        assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{method}");
        assert_eq!(
            theirs.json()["error"]["message"]
                .as_str()
                .unwrap()
                .replace(&id, "ID"),
            none.json()["error"]["message"]
                .as_str()
                .unwrap()
                .replace(unknown, "ID"),
            "{method}"
        );
        assert_eq!(theirs.json()["error"]["kind"], none.json()["error"]["kind"]);
    }
    // WS subscribe, cancel and ?query_id= likewise.
    let mut ws = ws_connect(gw.addr, "/ws", &[("x-api-key", "key-own-b")])
        .await
        .unwrap();
    let mut frames = BTreeMap::new();
    for kind in ["subscribe", "cancel"] {
        for q in [id.as_str(), unknown] {
            ws_send(&mut ws, json!({"type": kind, "query_id": q})).await;
            let mut f = ws_recv(&mut ws).await;
            f["query_id"] = json!("ID");
            f["message"] = json!(f["message"].as_str().unwrap().replace(q, "ID"));
            frames.entry(kind).or_insert_with(Vec::new).push(f);
        }
    }
    for (kind, pair) in &frames {
        assert_eq!(pair[0], pair[1], "{kind}");
        assert_eq!(pair[0]["code"], "unknown_query", "{kind}");
    }
    for q in [id.as_str(), unknown] {
        let mut ws = ws_connect(
            gw.addr,
            &format!("/ws?query_id={q}"),
            &[("x-api-key", "key-own-b")],
        )
        .await
        .unwrap();
        let f = ws_recv(&mut ws).await;
        assert_eq!(f["code"], "unknown_query", "{f}");
    }
    // Still running: nothing the other client did touched it.
    let mine = keyed("GET", &gw.url(&format!("/api/query/{id}")), "key-own-a").await;
    assert_eq!(mine.json()["status"], "running");

    // The admin token sees every query: on the public listener as a key, and on the
    // admin listener's WebSocket.
    let admin = send(
        "GET",
        &gw.url(&format!("/api/query/{id}")),
        &[("authorization", &bearer(ADMIN_TOKEN))],
        "",
    )
    .await;
    assert_eq!(admin.status, StatusCode::OK);
    let mut admin_ws = ws_connect(gw.admin, &format!("/ws?query_id={id}"), &[])
        .await
        .unwrap();
    assert_eq!(ws_recv(&mut admin_ws).await["type"], "subscribed");

    // The owner subscribes and cancels over the WebSocket.
    let mut ws = ws_connect(gw.addr, "/ws", &[("authorization", "Bearer key-own-a")])
        .await
        .unwrap();
    ws_send(&mut ws, json!({"type": "subscribe", "query_id": id})).await;
    assert_eq!(ws_recv(&mut ws).await["type"], "subscribed");
    ws_send(&mut ws, json!({"type": "cancel", "query_id": id})).await;
    loop {
        let f = ws_recv(&mut ws).await;
        if f["type"] == "cancelled" {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_with_their_codes_and_never_over_admit() {
    let nlp = mock("nlp", |b| b.latency = Duration::from_secs(30)).await;
    let data = mock("data", |_| {}).await;
    let gw = Gateway::start(&config(
        "",
        &nlp.url(),
        &data.url(),
        "",
        &(client("q-run", "key-q-run", "max_running_queries = 5")
            + &client("q-rate", "key-q-rate", "rate = 1")),
    ))
    .await;
    let before = metrics(&gw).await;
    // Four run; then 50 requests race for the last slot.
    for _ in 0..4 {
        let res = submit(&gw, "key-q-run", &json!({"query": "q"}), true).await;
        assert_eq!(res.status, StatusCode::ACCEPTED);
    }
    let racers: Vec<_> = (0..50)
        .map(|_| {
            let url = gw.url("/api/query");
            tokio::spawn(async move {
                send(
                    "POST",
                    &url,
                    &[
                        ("content-type", "application/json"),
                        ("x-api-key", "key-q-run"),
                        ("prefer", "respond-async"),
                    ],
                    json!({"query": "q"}).to_string(),
                )
                .await
            })
        })
        .collect();
    let mut statuses = BTreeMap::new();
    for r in racers {
        let res = r.await.unwrap();
        if res.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(res.json()["error"]["kind"], "too_many_queries");
        }
        *statuses.entry(res.status.as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, BTreeMap::from([(202, 1), (429, 49)]));
    assert_eq!(
        gw.state.engine().stats().total,
        5,
        "nothing started for a refusal"
    );
    // The WebSocket gets the same code.
    let mut ws = ws_connect(gw.addr, "/ws", &[("x-api-key", "key-q-run")])
        .await
        .unwrap();
    ws_send(&mut ws, json!({"type": "query", "query": "q"})).await;
    assert_eq!(ws_recv(&mut ws).await["code"], "too_many_queries");

    // The rate: a burst of 1, then 429 rate_limited with Retry-After until a second
    // has passed.
    let res = submit(&gw, "key-q-rate", &json!({"query": "q"}), true).await;
    assert_eq!(res.status, StatusCode::ACCEPTED);
    let res = submit(&gw, "key-q-rate", &json!({"query": "q"}), true).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.json()["error"]["kind"], "rate_limited");
    assert_eq!(res.headers["retry-after"], "1");
    let mut ws = ws_connect(gw.addr, "/ws", &[("x-api-key", "key-q-rate")])
        .await
        .unwrap();
    ws_send(
        &mut ws,
        json!({"type": "query", "query": "q", "request_id": "r"}),
    )
    .await;
    let f = ws_recv(&mut ws).await;
    assert_eq!(
        (f["code"].as_str(), f["request_id"].as_str()),
        (Some("rate_limited"), Some("r"))
    );
    assert!(f["retry_after_ms"].as_u64().unwrap() <= 1000, "{f}");

    let after = metrics(&gw).await;
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(
        delta(r#"agentgate_client_rejected_total{client="q-run",reason="too_many_queries"}"#),
        50.0
    );
    assert_eq!(
        delta(r#"agentgate_client_rejected_total{client="q-rate",reason="rate_limited"}"#),
        2.0
    );
    // Cancelling frees a slot, and the outcome is counted per client.
    let id = gw.state.engine().live(1)[0].query_id.clone();
    let res = keyed("DELETE", &gw.url(&format!("/api/query/{id}")), "key-q-run").await;
    assert_eq!(res.status, StatusCode::OK);
    let res = submit(&gw, "key-q-run", &json!({"query": "q"}), true).await;
    assert_eq!(res.status, StatusCode::ACCEPTED);
    let after = metrics(&gw).await;
    assert_eq!(
        sample(
            &after,
            r#"agentgate_client_queries_total{client="q-run",outcome="cancelled"}"#
        ) - sample(
            &before,
            r#"agentgate_client_queries_total{client="q-run",outcome="cancelled"}"#
        ),
        1.0
    );
    gw.state.engine().drain(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_cap_answers_503_overloaded_and_starts_nothing() {
    let (gw, _nlp, _data) = start(
        "max_running_queries = 2",
        |b| b.latency = Duration::from_secs(30),
        "",
        &client("g-one", "key-g-one", ""),
    )
    .await;
    accept_async(&gw, "key-g-one", 2).await;
    let res = submit(&gw, "key-g-one", &json!({"query": "q"}), true).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.json()["error"]["kind"], "overloaded");
    assert_eq!(res.headers["retry-after"], "1");
    // The WebSocket `query` frame gets the same refusal, and nothing more runs.
    let mut ws = ws_connect(gw.addr, "/ws", &[("x-api-key", "key-g-one")])
        .await
        .unwrap();
    ws_send(&mut ws, json!({"type": "query", "query": "q"})).await;
    assert_eq!(ws_recv(&mut ws).await["code"], "overloaded");
    assert_eq!(gw.state.engine().stats().total, 2);
    let text = metrics(&gw).await;
    assert!(
        sample(
            &text,
            r#"agentgate_overload_rejected_total{scope="global"}"#
        ) >= 2.0,
        "{text}"
    );
    gw.state.engine().drain(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bulkhead_goes_to_the_fallback_and_leaves_the_breaker_closed() {
    let (gw, nlp, _data) = start("", |b| b.hang_rate = 1.0, "max_concurrency = 2\nqueue_timeout = \"50ms\"\ntimeout = \"30s\"\n[agents.nlp.circuit_breaker]\nconsecutive_failures = 1", &client("b-one", "key-b-one", "")).await;
    // Two queries take both slots and hang.
    accept_async(&gw, "key-b-one", 2).await;
    let text = loop {
        let text = metrics(&gw).await;
        if sample(&text, r#"agentgate_agent_in_flight{agent="nlp"}"#) == 2.0 {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let before = sample(&text, r#"agentgate_overload_rejected_total{scope="agent"}"#);
    // A third is refused by the bulkhead after queue_timeout: the static fallback
    // answers, the breaker stays closed, the agent never sees it.
    let seen = nlp.stats().requests;
    let res = submit(&gw, "key-b-one", &json!({"query": "q"}), false).await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.json());
    let record = res.json();
    assert_eq!(record["stages"][0]["status"], "fallback");
    assert_eq!(record["stages"][0]["attempts"][0]["error"], "overloaded");
    assert_eq!(
        record["stages"][0]["attempts"].as_array().unwrap().len(),
        1,
        "not retried"
    );
    let breaker = || gw.state.agent("nlp").unwrap().breaker().snapshot().state;
    assert_eq!(breaker().as_str(), "closed");
    assert_eq!(nlp.stats().requests, seen);
    // Through the proxy: 503 agent_overloaded with Retry-After: 1.
    let res = send(
        "POST",
        &gw.url("/agents/nlp/x"),
        &[("x-api-key", "key-b-one")],
        "{}",
    )
    .await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.json()["error"]["kind"], "agent_overloaded");
    assert_eq!(res.headers["retry-after"], "1");
    let text = metrics(&gw).await;
    assert_eq!(
        sample(&text, r#"agentgate_overload_rejected_total{scope="agent"}"#) - before,
        2.0
    );
    assert_eq!(breaker().as_str(), "closed");
    gw.state.engine().drain(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_while_others_are_served() {
    // An agent that reads the whole body before it answers.
    let nlp = EchoServer::start(|_| StatusCode::OK).await;
    let data = mock("data", |_| {}).await;
    let gw = Gateway::start(&config(
        "body_read_timeout = \"300ms\"",
        &nlp.url(),
        &data.url(),
        "",
        &client("s-one", "key-s-one", ""),
    ))
    .await;
    for path in ["/api/query", "/agents/nlp/upload"] {
        let mut slow = TcpStream::connect(gw.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nx-api-key: key-s-one\r\ncontent-type: application/json\r\ncontent-length: 50\r\n\r\n{{\"query\""
        );
        slow.write_all(head.as_bytes()).await.unwrap();
        // Meanwhile another client is served.
        let ok = submit(&gw, "key-s-one", &json!({"query": "q"}), false).await;
        assert_eq!(ok.status, StatusCode::OK);
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut answer))
            .await
            .expect("the gateway answers and closes")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(answer.contains("request_timeout"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let (gw, _nlp, _data) = start(
        "max_connections = 3",
        |_| {},
        "",
        &client("c-one", "key-c-one", ""),
    )
    .await;
    let before = sample(
        &metrics(&gw).await,
        r#"agentgate_overload_rejected_total{scope="connections"}"#,
    );
    // Three held: one WebSocket and two idle keep-alive connections.
    let _ws = ws_connect(gw.addr, "/ws", &[("x-api-key", "key-c-one")])
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(gw.addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0; 512];
        assert!(c.read(&mut buf).await.unwrap() > 0);
        held.push(c);
    }
    let mut fourth = TcpStream::connect(gw.addr).await.unwrap();
    let _ = fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), fourth.read_to_end(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed without an answer: {read:?} {buf:?}"
    );
    let after = sample(
        &metrics(&gw).await,
        r#"agentgate_overload_rejected_total{scope="connections"}"#,
    );
    assert_eq!(after - before, 1.0);
    // The admin listener is not capped, and one closed connection makes room.
    assert_eq!(
        send("GET", &gw.admin_url("/healthz"), &[], "").await.status,
        StatusCode::OK
    );
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while gw.state.connections() >= 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the count never went down"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        send("GET", &gw.url("/healthz"), &[], "").await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_admin_reads_and_websocket_origins() {
    let nlp = mock("nlp", |_| {}).await;
    let data = mock("data", |_| {}).await;
    let gw = Gateway::start(
        &config(
            "ws_allowed_origins = [\"https://app.example\"]",
            &nlp.url(),
            &data.url(),
            "",
            &client("o-one", "key-o-one", ""),
        )
        .replace("[admin]\n", "[admin]\nprotect_reads = true\n"),
    )
    .await;
    let auth = bearer(ADMIN_TOKEN);
    for path in [
        "/api/orchestration/metrics",
        "/api/orchestration/health",
        "/api/orchestration/circuit-breakers",
        "/dashboard",
    ] {
        let res = send("GET", &gw.admin_url(path), &[], "").await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{path}");
        let res = send("GET", &gw.admin_url(path), &[("authorization", &auth)], "").await;
        assert_eq!(res.status, StatusCode::OK, "{path}");
    }
    let res = send(
        "GET",
        &gw.admin_url(&format!("/dashboard?token={ADMIN_TOKEN}")),
        &[],
        "",
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(
        send("GET", &gw.admin_url("/metrics"), &[], "").await.status,
        StatusCode::OK
    );
    let err = ws_connect(gw.admin, "/ws", &[]).await.unwrap_err();
    assert_eq!(refused_status(err), 401);
    assert!(
        ws_connect(gw.admin, &format!("/ws?token={ADMIN_TOKEN}"), &[])
            .await
            .is_ok()
    );

    // Origins: listed or none at all pass; another is 403.
    let key = ("x-api-key", "key-o-one");
    assert!(
        ws_connect(gw.addr, "/ws", &[key, ("origin", "https://app.example")])
            .await
            .is_ok()
    );
    assert!(ws_connect(gw.addr, "/ws", &[key]).await.is_ok());
    let err = ws_connect(gw.addr, "/ws", &[key, ("origin", "https://evil.example")])
        .await
        .unwrap_err();
    assert_eq!(refused_status(err), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_never_appears_in_an_answer_a_log_line_a_metric_or_an_agent_request() {
    let logs = logs();
    let echo = EchoServer::start(|_| StatusCode::OK).await;
    let data = mock("data", |_| {}).await;
    let key = "sup3r-secret-client-key-8c1f";
    std::env::set_var("AGENTGATE_CLIENTS_TEST_KEY", key);
    let gw = Gateway::start(&config(
        "",
        &echo.url(),
        &data.url(),
        "",
        "[[auth.clients]]\nname = \"x-secret\"\nkey_env = \"AGENTGATE_CLIENTS_TEST_KEY\"\n",
    ))
    .await;
    let mut answers = Vec::new();
    for headers in [
        vec![("authorization", format!("Bearer {key}"))],
        vec![("x-api-key", key.to_owned())],
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let proxied = send("POST", &gw.url("/agents/nlp/echo"), &h, "{}").await;
        assert_eq!(proxied.status, StatusCode::OK);
        // The agent never gets the client's credential.
        let seen = proxied.json();
        assert!(
            seen["headers"].get("x-api-key").is_none()
                && seen["headers"].get("authorization").is_none(),
            "{seen}"
        );
        answers.push(proxied.body);
        let mut with_body = h.clone();
        with_body.push(("content-type", "application/json"));
        answers.push(
            send(
                "POST",
                &gw.url("/api/query"),
                &with_body,
                r#"{"query":"q"}"#,
            )
            .await
            .body,
        );
    }
    // Wrong keys (close to the right one) are refused without an echo of them.
    let wrong = format!("{key}x");
    answers.push(keyed("GET", &gw.url("/api/query/x"), &wrong).await.body);
    let mut ws = ws_connect(gw.addr, &format!("/ws?api_key={key}"), &[])
        .await
        .unwrap();
    ws_send(&mut ws, json!({"type": "query", "query": "q"})).await;
    answers.push(ws_recv(&mut ws).await.to_string().into());
    for path in [
        "/api/orchestration/metrics",
        "/api/orchestration/health",
        "/metrics",
    ] {
        answers.push(
            send(
                "GET",
                &gw.admin_url(path),
                &[("authorization", &bearer(ADMIN_TOKEN))],
                "",
            )
            .await
            .body,
        );
    }
    let digest = sha(key);
    for answer in &answers {
        let text = String::from_utf8_lossy(answer);
        assert!(
            !text.contains(key) && !text.contains(&wrong) && !text.contains(&digest),
            "{text}"
        );
    }
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(!logged.is_empty(), "the gateway logs");
    let leaks: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains(key) || l.contains(&digest))
        .collect();
    assert!(leaks.is_empty(), "a key in the logs: {leaks:#?}");
    let config = format!("{:?}", gw.state.runtime().config());
    assert!(
        !config.contains(key) && !config.contains(&digest),
        "{config}"
    );
}

/// Until `/readyz` says the replica's Redis connections are up.
async fn redis_connected(gw: &Gateway) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ready = send("GET", &gw.url("/readyz"), &[], "").await;
        if ready.json()["redis"] == "connected" {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis never connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_quota_and_one_owner_view() {
    let redis = agentgate_e2e::RedisServer::start().await;
    let nlp = mock("nlp", |b| b.latency = Duration::from_secs(30)).await;
    let data = mock("data", |_| {}).await;
    let toml = config(
        "",
        &nlp.url(),
        &data.url(),
        "",
        &(client("r-one", "key-r-one", "max_running_queries = 3")
            + &client("r-two", "key-r-two", "")),
    )
    .replace(
        "[admin]\n",
        &format!(
            "[progress]\nbackend = \"redis\"\nredis_url = \"{}\"\n[admin]\n",
            redis.url()
        ),
    );
    let (a, b) = (Gateway::start(&toml).await, Gateway::start(&toml).await);
    redis_connected(&a).await;
    redis_connected(&b).await;
    // 20 racing submits spread over both replicas: 3 run, on whichever replica.
    let racers: Vec<_> = (0..20)
        .map(|i| {
            let url = if i % 2 == 0 {
                a.url("/api/query")
            } else {
                b.url("/api/query")
            };
            tokio::spawn(async move {
                let headers = [
                    ("content-type", "application/json"),
                    ("x-api-key", "key-r-one"),
                    ("prefer", "respond-async"),
                ];
                let res = send("POST", &url, &headers, r#"{"query":"q"}"#).await;
                (
                    res.status,
                    res.json()["query_id"].as_str().map(str::to_owned),
                )
            })
        })
        .collect();
    let mut ids = Vec::new();
    for r in racers {
        let (status, id) = r.await.unwrap();
        match status {
            StatusCode::ACCEPTED => ids.push(id.unwrap()),
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{other}"),
        }
    }
    assert_eq!(
        ids.len(),
        3,
        "the quota is not multiplied by the replica count"
    );
    // Each query is its owner's on either replica, and unknown to the other client there.
    for gw in [&a, &b] {
        for id in &ids {
            let url = gw.url(&format!("/api/query/{id}"));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let res = keyed("GET", &url, "key-r-one").await;
                if res.status == StatusCode::OK {
                    assert_eq!(res.json()["client"], "r-one");
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{id} never reached the other replica"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let res = keyed("GET", &url, "key-r-two").await;
            assert_eq!(res.status, StatusCode::NOT_FOUND);
            let res = keyed("DELETE", &url, "key-r-two").await;
            assert_eq!(res.status, StatusCode::NOT_FOUND);
        }
    }
    // Cancelled on the replica that does not run it: the place frees on both.
    let res = send(
        "DELETE",
        &b.url(&format!("/api/query/{}", ids[0])),
        &[("x-api-key", "key-r-one")],
        "",
    )
    .await;
    assert!(
        res.status == StatusCode::OK || res.status == StatusCode::ACCEPTED,
        "{}",
        res.status
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let res = submit(&a, "key-r-one", &json!({"query": "q"}), true).await;
        if res.status == StatusCode::ACCEPTED {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cancelled query's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.state.engine().drain(Duration::ZERO).await;
    b.state.engine().drain(Duration::ZERO).await;
}
