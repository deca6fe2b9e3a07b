//! `GET /ws` end to end (SPEC §3, §5): the real gateway in-process, real mock agents on
//! loopback, tokio-tungstenite clients over real sockets. Plain HTTP around them (query
//! submissions, figures) goes through the gateway's routers in memory.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use agentgate_e2e::{base_config, eventually, mock, EchoServer, Gateway};
use agentgate_mock_agent::MockAgent;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const TERMINAL: [&str; 3] = ["completed", "failed", "cancelled"];
/// The `[server]` line that gives admin routes their own listener.
const ADMIN_APART: &str = r#"admin_listen = "127.0.0.1:1""#;

// === config ===

/// nlp → data → viz (viz optional), as in the SPEC's example.
fn three_stage(server: &str, nlp: &str, data: &str, viz: &str) -> String {
    format!(
        r#"{}
[agents.nlp]
url = "{nlp}"
[agents.data]
url = "{data}"
[agents.viz]
url = "{viz}"

[pipelines.default]
deadline = "30s"
retry_allowance = 4
[[pipelines.default.stages]]
name = "nlp_processing"
agent = "nlp"
path = "/process"
weight = 30
[[pipelines.default.stages]]
name = "data_retrieval"
agent = "data"
path = "/query"
weight = 40
[[pipelines.default.stages]]
name = "visualization"
agent = "viz"
path = "/render"
weight = 30
optional = true
"#,
        base_config(server, "10s")
    )
}

struct Agents {
    nlp: MockAgent,
    data: MockAgent,
    viz: MockAgent,
}

async fn agents() -> Agents {
    Agents {
        nlp: mock("nlp", |_| {}).await,
        data: mock("data", |_| {}).await,
        viz: mock("viz", |_| {}).await,
    }
}

async fn gateway(server: &str, a: &Agents) -> Gateway {
    Gateway::start(&three_stage(
        server,
        &a.nlp.url(),
        &a.data.url(),
        &a.viz.url(),
    ))
    .await
}

// === clients ===

fn ws_url(addr: SocketAddr, path: &str) -> String {
    format!("ws://{addr}{path}")
}

async fn connect(addr: SocketAddr, path: &str) -> Ws {
    let url = ws_url(addr, path);
    match tokio_tungstenite::connect_async(&url).await {
        Ok((ws, _)) => ws,
        Err(e) => panic!("upgrade {url}: {e}"),
    }
}

/// A client whose socket receive buffer is tiny, so the gateway's writes block as soon
/// as it stops reading.
async fn connect_small_buffer(addr: SocketAddr, path: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(addr).await.expect("connect");
    let (ws, _) =
        tokio_tungstenite::client_async(ws_url(addr, path), MaybeTlsStream::Plain(stream))
            .await
            .expect("upgrade");
    ws
}

async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// The next text frame as JSON (pings and pongs skipped), within 10 s.
async fn recv(ws: &mut Ws) -> Value {
    let frame = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str::<Value>(&t).expect("a JSON frame")
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    })
    .await;
    frame.expect("a frame within 10 s")
}

/// The next frame that is not a query event (events carry `seq`).
async fn answer(ws: &mut Ws) -> Value {
    loop {
        let v = recv(ws).await;
        if v.get("seq").is_none() {
            return v;
        }
    }
}

/// The next error frame's code, checking the connection stays usable.
async fn error_code(ws: &mut Ws) -> String {
    let v = answer(ws).await;
    assert_eq!(v["type"], "error", "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v["code"].as_str().expect("code").to_owned()
}

/// The events of `query_id` up to and including its terminal one (other frames of the
/// connection are skipped; an error frame fails the test).
async fn until_terminal(ws: &mut Ws, query_id: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let v = recv(ws).await;
        assert!(v.get("code").is_none(), "unexpected error frame {v}");
        if v["query_id"] != query_id {
            continue;
        }
        let terminal = TERMINAL.contains(&v["type"].as_str().unwrap_or(""));
        events.push(v);
        if terminal {
            return events;
        }
    }
}

/// The close frame's code, skipping any text frames before it.
async fn close_code(ws: &mut Ws) -> u16 {
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(Message::Close(None))) => panic!("a close frame without a code"),
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await;
    code.expect("a close frame within 10 s")
}

/// Waits until the gateway holds at most `n` WebSocket connections (closed ones have
/// given their place back).
async fn connections_down_to(gw: &Gateway, n: usize) {
    let mut open = gw.state.ws().connections();
    tokio::time::timeout(Duration::from_secs(10), open.wait_for(|open| *open <= n))
        .await
        .unwrap_or_else(|_| panic!("still open: {:?}", gw.state.ws().stats()))
        .expect("the gateway keeps its registry");
}

/// Waits until the gateway holds no WebSocket connection, then checks that none of their
/// subscriptions is left either.
async fn all_closed(gw: &Gateway) {
    connections_down_to(gw, 0).await;
    assert_eq!(
        gw.state.ws().stats().subscriptions,
        0,
        "{:?}",
        gw.state.ws().stats()
    );
}

/// Checks one query's events: `seq` 1, 2, 3 … without gaps, one `query_id`, an RFC 3339
/// `ts`, `progress` never decreasing, and exactly one terminal event, the last.
fn check_stream(events: &[Value], query_id: &str) {
    let mut high = 0;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], json!(i as u64 + 1), "gap before {e}");
        assert_eq!(e["query_id"], query_id, "{e}");
        let ts = e["ts"].as_str().expect("ts");
        assert!(
            ts.len() >= 20 && ts.contains('T') && ts.ends_with('Z'),
            "{ts}"
        );
        if let Some(p) = e["progress"].as_u64() {
            assert!(
                p >= high && p <= 100,
                "progress went from {high} to {p}: {e}"
            );
            high = p;
        }
        let terminal = TERMINAL.contains(&e["type"].as_str().unwrap_or(""));
        assert_eq!(terminal, i + 1 == events.len(), "terminal only last: {e}");
    }
}

fn progress_statuses(events: &[Value], stage: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "progress" && e["stage"] == stage)
        .map(|e| e["status"].as_str().unwrap_or("").to_owned())
        .collect()
}

async fn run_query(ws: &mut Ws, request_id: &str) -> (String, Vec<Value>) {
    send_json(
        ws,
        json!({"type": "query", "query": "sales by region", "context": {"user": "ana"}, "request_id": request_id}),
    )
    .await;
    let accepted = answer(ws).await;
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    assert_eq!(accepted["request_id"], request_id);
    let query_id = accepted["query_id"].as_str().expect("query_id").to_owned();
    let events = until_terminal(ws, &query_id).await;
    (query_id, events)
}

// === tests ===

#[tokio::test]
async fn a_query_over_ws_streams_gap_free_events_to_one_completed() {
    let a = agents().await;
    let gw = gateway(ADMIN_APART, &a).await;
    let mut ws = connect(gw.addr, "/ws").await;
    let (query_id, events) = run_query(&mut ws, "r-1").await;

    check_stream(&events, &query_id);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "completed", "{last}");
    assert!(last["duration_ms"].is_u64(), "{last}");
    assert_eq!(last["result"]["data_retrieval"]["agent"], "data");
    let top = events.iter().filter_map(|e| e["progress"].as_u64()).max();
    assert_eq!(top, Some(100), "progress reaches 100 by `completed`");
    for stage in ["nlp_processing", "data_retrieval", "visualization"] {
        let statuses = progress_statuses(&events, stage);
        assert_eq!(
            (
                statuses.first().map(String::as_str),
                statuses.last().map(String::as_str)
            ),
            (Some("started"), Some("completed")),
            "{stage}: {statuses:?}"
        );
    }

    // A second query on the same connection gets its own stream from seq 1.
    let (second, events) = run_query(&mut ws, "r-2").await;
    assert_ne!(second, query_id);
    check_stream(&events, &second);
}

#[tokio::test]
async fn a_failed_attempt_shows_an_error_event_and_retrying() {
    let nlp = EchoServer::failing_first(1).await;
    let a = agents().await;
    let gw = Gateway::start(&three_stage(
        ADMIN_APART,
        &nlp.url(),
        &a.data.url(),
        &a.viz.url(),
    ))
    .await;
    let mut ws = connect(gw.addr, "/ws").await;
    let (query_id, events) = run_query(&mut ws, "retry").await;
    check_stream(&events, &query_id);
    assert_eq!(
        progress_statuses(&events, "nlp_processing"),
        ["started", "retrying", "completed"]
    );
    let error = events
        .iter()
        .find(|e| e["type"] == "error")
        .expect("an error event for the failed attempt");
    assert_eq!(error["stage"], "nlp_processing");
    assert!(error["error"]["kind"].is_string(), "{error}");
    let retrying = events.iter().find(|e| e["status"] == "retrying").unwrap();
    assert_eq!(retrying["attempt"], 2, "{retrying}");
    assert_eq!(events.last().unwrap()["type"], "completed");
    assert_eq!(nlp.hits(), 2);
}

#[tokio::test]
async fn resuming_after_completion_replays_exactly_the_rest() {
    let a = agents().await;
    let gw = gateway(ADMIN_APART, &a).await;
    let mut first = connect(gw.addr, "/ws").await;
    let (query_id, events) = run_query(&mut first, "r").await;
    let n = events.len() as u64;
    assert!(n >= 5, "{events:?}");

    // With a `subscribe` frame …
    let mut ws = connect(gw.addr, "/ws").await;
    send_json(
        &mut ws,
        json!({"type": "subscribe", "query_id": query_id, "after_seq": 2}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "subscribed", "query_id": query_id, "after_seq": 2})
    );
    let replayed = until_terminal(&mut ws, &query_id).await;
    assert_eq!(replayed, events[2..], "the same events, from seq 3");
    send_json(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "pong"}),
        "nothing after the terminal"
    );

    // … and with the URL's query string.
    let mut ws = connect(gw.addr, &format!("/ws?query_id={query_id}&after_seq=4")).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "subscribed", "query_id": query_id, "after_seq": 4})
    );
    let replayed = until_terminal(&mut ws, &query_id).await;
    assert_eq!(replayed.len() as u64, n - 4);
    assert_eq!(replayed, events[4..]);
    send_json(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "pong"}));

    // From the start, it is the whole stream again.
    send_json(&mut ws, json!({"type": "subscribe", "query_id": query_id})).await;
    assert_eq!(recv(&mut ws).await["after_seq"], 0);
    assert_eq!(until_terminal(&mut ws, &query_id).await, events);

    // An unknown query on connect: an error frame, and the connection stays open.
    let mut ws = connect(gw.addr, "/ws?query_id=nope").await;
    assert_eq!(error_code(&mut ws).await, "unknown_query");
    send_json(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "pong"}));
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_stays_open() {
    let a = Agents {
        data: mock("data", |b| b.hang_rate = 1.0).await,
        ..agents().await
    };
    let gw = gateway(&format!("{ADMIN_APART}\nws_max_subscriptions = 2"), &a).await;
    let mut ws = connect(gw.addr, "/ws").await;

    ws.send(Message::text("not json")).await.unwrap();
    assert_eq!(error_code(&mut ws).await, "bad_request");
    send_json(&mut ws, json!({"type": "dance"})).await;
    assert_eq!(error_code(&mut ws).await, "bad_request");
    send_json(&mut ws, json!({"type": "subscribe"})).await;
    assert_eq!(error_code(&mut ws).await, "bad_request");
    send_json(&mut ws, json!({"type": "query", "query": 5})).await;
    assert_eq!(error_code(&mut ws).await, "bad_request");
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(error_code(&mut ws).await, "bad_request");

    send_json(
        &mut ws,
        json!({"type": "query", "query": "q", "pipeline": "nope", "request_id": 7}),
    )
    .await;
    let refused = answer(&mut ws).await;
    assert_eq!(
        (&refused["code"], &refused["request_id"]),
        (&json!("bad_request"), &json!(7))
    );
    assert!(
        refused["message"].as_str().unwrap().contains("nope"),
        "{refused}"
    );

    send_json(&mut ws, json!({"type": "subscribe", "query_id": "missing"})).await;
    let unknown = answer(&mut ws).await;
    assert_eq!(
        (&unknown["code"], &unknown["query_id"]),
        (&json!("unknown_query"), &json!("missing"))
    );
    send_json(&mut ws, json!({"type": "cancel", "query_id": "missing"})).await;
    assert_eq!(error_code(&mut ws).await, "unknown_query");

    // Admin routes have their own listener here: no metrics on the public one.
    send_json(&mut ws, json!({"type": "subscribe_metrics"})).await;
    assert_eq!(error_code(&mut ws).await, "unauthorized");

    // Two live subscriptions (the data agent hangs); a third is refused.
    let mut ids = Vec::new();
    for r in ["a", "b"] {
        send_json(
            &mut ws,
            json!({"type": "query", "query": "q", "request_id": r}),
        )
        .await;
        let accepted = answer(&mut ws).await;
        assert_eq!(accepted["type"], "accepted", "{accepted}");
        ids.push(accepted["query_id"].as_str().unwrap().to_owned());
    }
    send_json(
        &mut ws,
        json!({"type": "query", "query": "q", "request_id": "c"}),
    )
    .await;
    let refused = answer(&mut ws).await;
    assert_eq!(
        (&refused["code"], &refused["request_id"]),
        (&json!("too_many_subscriptions"), &json!("c"))
    );
    let other = gw.submit_async(&json!({"query": "q"})).await;
    send_json(&mut ws, json!({"type": "subscribe", "query_id": other})).await;
    assert_eq!(error_code(&mut ws).await, "too_many_subscriptions");
    // Subscribing again to a query already watched replaces it: allowed.
    send_json(
        &mut ws,
        json!({"type": "subscribe", "query_id": ids[0], "after_seq": 0}),
    )
    .await;
    assert_eq!(answer(&mut ws).await["type"], "subscribed");

    // Unsubscribing frees a place.
    send_json(&mut ws, json!({"type": "unsubscribe", "query_id": ids[1]})).await;
    assert_eq!(
        answer(&mut ws).await,
        json!({"type": "unsubscribed", "query_id": ids[1]})
    );
    send_json(&mut ws, json!({"type": "subscribe", "query_id": other})).await;
    assert_eq!(answer(&mut ws).await["type"], "subscribed");

    // Cancelling a watched query: its terminal event is `cancelled`, and the place frees.
    send_json(&mut ws, json!({"type": "cancel", "query_id": ids[0]})).await;
    let events = until_terminal(&mut ws, &ids[0]).await;
    assert_eq!(events.last().unwrap()["type"], "cancelled");
    let mut seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        events.len(),
        "no duplicate after the resubscribe"
    );
    send_json(&mut ws, json!({"type": "cancel", "query_id": ids[0]})).await;
    send_json(&mut ws, json!({"type": "subscribe", "query_id": ids[1]})).await;
    assert_eq!(
        answer(&mut ws).await["type"],
        "subscribed",
        "cancelling twice is a no-op"
    );

    gw.state
        .engine()
        .cancel(&ids[1], Duration::ZERO, agentgate_pipeline::Caller::Anyone)
        .await
        .unwrap();
    assert_eq!(
        until_terminal(&mut ws, &ids[1]).await.last().unwrap()["type"],
        "cancelled"
    );
    send_json(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(answer(&mut ws).await, json!({"type": "pong"}));

    // Not an upgrade at all: a JSON 4xx, not a 500.
    let plain = gw.call("GET", "/ws", &[], "").await;
    assert!(plain.status.is_client_error(), "{}", plain.status);
    assert!(plain.json()["error"]["kind"].is_string());
    let bad = gw.call("GET", "/ws?after_seq=-1", &[], "").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // Dropping the client ends the connection and its subscription to the query still
    // running.
    assert_eq!(
        gw.state.engine().get(&other).unwrap().status.as_str(),
        "running"
    );
    assert_eq!(gw.state.ws().stats().connections, 1);
    drop(ws);
    all_closed(&gw).await;
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_frames_is_rate_limited_and_the_connection_stays_open() {
    // The limiter's one-second windows follow tokio's clock. Held still, it puts every
    // frame of a flood into one window, and the next window begins when the test
    // advances the clock, not whenever a busy machine gets there.
    let _still = StillClock::hold();
    let a = agents().await;
    let gw = gateway(ADMIN_APART, &a).await;
    let mut ws = connect(gw.addr, "/ws").await;

    // 150 frames: the first 100 are answered, the 101st gets the window's one
    // `rate_limited`, the rest are dropped without a word.
    assert_eq!(
        window(&mut ws, 150, "second").await,
        "100 pong, 1 rate_limited"
    );
    // The next window's first frame was that marker: 99 more are answered, the 101st
    // is refused once again, and the marker after the window is answered too.
    assert_eq!(
        window(&mut ws, 110, "third").await,
        "99 pong, 1 rate_limited"
    );
}

/// While it lives, tokio's paused clock moves only when the test advances it: tokio does
/// not auto-advance while a blocking task runs, however long the runtime waits for a
/// socket. After 30 s of real time it lets go, so that a test stuck waiting for a frame
/// fails by its own timeouts rather than hanging.
struct StillClock(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

impl StillClock {
    fn hold() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        tokio::task::spawn_blocking(move || {
            // Ends when the test drops its `StillClock`, or after 30 s.
            let _ = rx.recv_timeout(Duration::from_secs(30));
        });
        Self(tx)
    }
}

/// Sends `pings` ping frames at once and waits until the gateway has read them all,
/// then starts the next rate-limit window and sends a `subscribe` to the unknown query
/// `marker` in it. Once the marker's `unknown_query` has come (the connection still
/// serves), returns what came back before it, in order: runs of `type`s or error
/// `code`s, like "100 pong, 1 rate_limited".
async fn window(ws: &mut Ws, pings: usize, marker: &str) -> String {
    for _ in 0..pings {
        ws.feed(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    }
    // A WebSocket ping is not rate limited, and the gateway reads frames in order: its
    // pong says every frame before has been read (answered or dropped).
    ws.feed(Message::Ping(marker.as_bytes().to_vec().into()))
        .await
        .unwrap();
    ws.flush().await.unwrap();
    let kind = |v: &Value| {
        let kind = if v["type"] == "error" {
            &v["code"]
        } else {
            &v["type"]
        };
        kind.as_str().unwrap_or_else(|| panic!("{v}")).to_owned()
    };
    let mut answers = Vec::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s");
        match frame {
            Some(Ok(Message::Text(t))) => answers.push(kind(&serde_json::from_str(&t).unwrap())),
            Some(Ok(Message::Pong(p))) if p == marker.as_bytes() => break,
            other => panic!("expected answers, then our pong: {other:?}"),
        }
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    send_json(ws, json!({"type": "subscribe", "query_id": marker})).await;
    loop {
        let v = answer(ws).await;
        if v["query_id"] == marker {
            assert_eq!(v["code"], "unknown_query", "{v}");
            break;
        }
        answers.push(kind(&v));
    }
    let mut runs: Vec<(usize, String)> = Vec::new();
    for answer in answers {
        match runs.last_mut() {
            Some((n, kind)) if *kind == answer => *n += 1,
            _ => runs.push((1, answer)),
        }
    }
    let runs: Vec<String> = runs.iter().map(|(n, kind)| format!("{n} {kind}")).collect();
    runs.join(", ")
}

#[tokio::test]
async fn websocket_pings_and_pongs_from_the_client_are_handled() {
    let a = agents().await;
    let gw = gateway(ADMIN_APART, &a).await;
    let mut ws = connect(gw.addr, "/ws").await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a pong")
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong(b"are you there".to_vec().into()));
    // An unsolicited pong is a heartbeat: no answer, no error.
    ws.send(Message::Pong(b"beat".to_vec().into()))
        .await
        .unwrap();
    send_json(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "pong"}));
}

#[tokio::test]
async fn an_oversized_frame_closes_the_connection_with_1009() {
    let a = agents().await;
    let gw = gateway(&format!("{ADMIN_APART}\nws_max_message_bytes = 1024"), &a).await;
    let mut ws = connect(gw.addr, "/ws").await;
    // Just under the limit: an ordinary bad request.
    ws.send(Message::text("x".repeat(1000))).await.unwrap();
    assert_eq!(error_code(&mut ws).await, "bad_request");
    let big = json!({"type": "query", "query": "x".repeat(4000)}).to_string();
    ws.send(Message::text(big)).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1009);
    all_closed(&gw).await;
}

#[tokio::test]
async fn upgrades_beyond_max_ws_connections_get_503() {
    let a = agents().await;
    let gw = gateway(&format!("{ADMIN_APART}\nmax_ws_connections = 2"), &a).await;
    let mut first = connect(gw.addr, "/ws").await;
    let _second = connect(gw.admin, "/ws").await;
    match tokio_tungstenite::connect_async(ws_url(gw.addr, "/ws")).await {
        Err(tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(res.headers().contains_key("retry-after"));
            let body: Value =
                serde_json::from_slice(res.body().as_deref().unwrap_or(b"{}")).unwrap();
            assert_eq!(body["error"]["kind"], "too_many_connections", "{body}");
        }
        other => panic!("expected a 503, got {other:?}"),
    }
    let figures = gw
        .call_admin("GET", "/api/orchestration/metrics", &[], "")
        .await;
    assert_eq!(figures.json()["websocket"]["connections"], 2);

    // A closed connection gives its place back.
    first.close(None).await.unwrap();
    while first.next().await.is_some() {}
    drop(first);
    connections_down_to(&gw, 1).await;
    let mut again = connect(gw.addr, "/ws").await;
    send_json(&mut again, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut again).await, json!({"type": "pong"}));
}

#[tokio::test]
async fn a_slow_reader_gets_lagged_while_others_and_the_queries_go_on() {
    let nlp = mock("nlp", |b| b.latency = Duration::from_millis(20)).await;
    let a = agents().await;
    let gw = Gateway::start(&three_stage(
        &format!("{ADMIN_APART}\nws_max_subscriptions = 1000"),
        &nlp.url(),
        &a.data.url(),
        &a.viz.url(),
    ))
    .await;

    // The normal reader reads all the time, on its own task.
    let normal = connect(gw.addr, "/ws").await;
    let (mut normal_tx, mut normal_rx) = normal.split();
    let (frames_tx, mut frames) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = normal_rx.next().await {
            if let Message::Text(t) = msg {
                let _ = frames_tx.send(serde_json::from_str(&t).unwrap());
            }
        }
    });
    // The slow reader may fall 4 events behind a query, has a tiny socket buffer, and
    // does not read for now.
    gw.state.ws().set_queue_capacity(4);
    let mut slow = connect_small_buffer(gw.addr, "/ws").await;

    // Large results (each stage echoes the query): the slow reader's socket fills at
    // once, and its subscriptions fall ever further behind, batch after batch. The normal
    // reader gets every event of a batch's queries before the next batch is submitted.
    let text = "x".repeat(24 * 1024);
    let mut ids = Vec::new();
    let mut per_query: HashMap<String, Vec<Value>> = HashMap::new();
    let mut finished = 0;
    for _ in 0..3 {
        for _ in 0..10 {
            let id = gw.submit_async(&json!({"query": text})).await;
            let sub = json!({"type": "subscribe", "query_id": id});
            slow.send(Message::text(sub.to_string())).await.unwrap();
            normal_tx
                .send(Message::text(sub.to_string()))
                .await
                .unwrap();
            ids.push(id);
        }
        while finished < ids.len() {
            let v = tokio::time::timeout(Duration::from_secs(10), frames.recv())
                .await
                .expect("normal reader frames")
                .expect("open");
            assert_ne!(v["type"], "lagged", "the normal reader never lags: {v}");
            if v.get("seq").is_none() {
                continue;
            }
            if TERMINAL.contains(&v["type"].as_str().unwrap()) {
                finished += 1;
            }
            per_query
                .entry(v["query_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(v);
        }
    }

    // Every query completed although the slow reader has not read a thing (a record is
    // final before its terminal event goes out), and the normal reader got every event
    // of every query, gap-free.
    for id in &ids {
        let record = gw.call("GET", &format!("/api/query/{id}"), &[], "").await;
        assert_eq!(record.json()["status"], "completed", "query {id}");
        check_stream(&per_query[id], id);
    }
    reader.abort();

    // The slow reader now reads: per query, seq only ever jumps right after a `lagged`
    // naming the seq it resumes at, and the terminal event is always there.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut resume: BTreeMap<String, u64> = BTreeMap::new();
    let mut terminals: BTreeMap<String, u32> = BTreeMap::new();
    let mut lagged = 0;
    while terminals.len() < ids.len() {
        let v = recv(&mut slow).await;
        let id = v["query_id"].as_str().unwrap_or("").to_owned();
        match v["type"].as_str().unwrap() {
            "subscribed" => {}
            "lagged" => {
                lagged += 1;
                resume.insert(id, v["next_seq"].as_u64().unwrap());
            }
            kind => {
                let seq = v["seq"].as_u64().unwrap_or_else(|| panic!("{v}"));
                let want = resume
                    .remove(&id)
                    .unwrap_or(last.get(&id).copied().unwrap_or(0) + 1);
                assert_eq!(seq, want, "{v}");
                last.insert(id.clone(), seq);
                if TERMINAL.contains(&kind) {
                    *terminals.entry(id).or_default() += 1;
                }
            }
        }
    }
    assert!(lagged > 0, "the slow reader was told it lagged");
    assert!(terminals.values().all(|n| *n == 1));
    let figures = gw
        .call_admin("GET", "/api/orchestration/metrics", &[], "")
        .await;
    let ws = &figures.json()["websocket"];
    assert!(ws["events_dropped"].as_u64().unwrap() > 0, "{ws}");
    assert!(ws["events_sent"].as_u64().unwrap() > 0, "{ws}");
}

#[tokio::test]
async fn metrics_subscribers_get_metrics_and_breaker_transitions() {
    let a = agents().await;
    let gw = gateway(ADMIN_APART, &a).await;
    let mut public = connect(gw.addr, "/ws").await;
    let _ = run_query(&mut public, "warm-up").await;

    let mut admin = connect(gw.admin, "/ws").await;
    send_json(
        &mut admin,
        json!({"type": "subscribe_metrics", "interval_ms": 100}),
    )
    .await;
    let first = recv(&mut admin).await;
    assert_eq!(first["type"], "metrics", "{first}");
    assert_eq!(first["websocket"]["connections"], 2, "{first}");
    assert!(
        first["websocket"]["events_sent"].as_u64().unwrap() >= 5,
        "{first}"
    );
    assert_eq!(first["queries"]["completed"], 1);
    assert_eq!(first["agents"]["nlp"]["circuit_breaker"]["state"], "closed");

    gw.state.agent("nlp").unwrap().breaker().force_open(None);
    let mut metrics_frames = 1;
    let transition = loop {
        let v = recv(&mut admin).await;
        match v["type"].as_str().unwrap() {
            "metrics" => metrics_frames += 1,
            "circuit_breaker" => break v,
            _ => panic!("{v}"),
        }
    };
    assert_eq!(
        (
            &transition["agent"],
            &transition["from"],
            &transition["to"],
            &transition["reason"]
        ),
        (
            &json!("nlp"),
            &json!("closed"),
            &json!("forced_open"),
            &json!("manual")
        )
    );
    assert!(transition["ts"].as_str().unwrap().ends_with('Z'));
    while metrics_frames < 3 {
        let v = recv(&mut admin).await;
        assert_eq!(v["type"], "metrics", "{v}");
        metrics_frames += 1;
        assert_eq!(
            v["agents"]["nlp"]["circuit_breaker"]["state"],
            "forced_open"
        );
    }

    // Not on the public listener.
    send_json(&mut public, json!({"type": "subscribe_metrics"})).await;
    assert_eq!(error_code(&mut public).await, "unauthorized");

    let text = String::from_utf8(
        gw.call_admin("GET", "/metrics", &[], "")
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    for name in [
        "agentgate_ws_connections",
        "agentgate_ws_events_sent_total",
        "agentgate_ws_events_dropped_total",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics"
        );
    }
}

#[tokio::test]
async fn a_late_metrics_subscriber_gets_the_kept_transitions_replayed_first() {
    let a = agents().await;
    let gw = gateway(ADMIN_APART, &a).await;
    // Two transitions before anyone listens.
    let nlp = gw.state.agent("nlp").unwrap().breaker().clone();
    nlp.force_open(None);
    nlp.reset();
    // The gateway records them in the background: wait until it has both.
    eventually("both transitions are kept", || async {
        (gw.state.transitions().recent_of("nlp").len() == 2).then_some(())
    })
    .await;
    let breakers = gw
        .call_admin("GET", "/api/orchestration/circuit-breakers", &[], "")
        .await;
    let kept = &breakers.json()["nlp"]["recent_transitions"];
    assert_eq!(kept.as_array().map(Vec::len), Some(2), "{kept}");
    assert_eq!(
        (&kept[0]["to"], &kept[1]["to"]),
        (&json!("forced_open"), &json!("closed"))
    );
    assert_eq!(kept[1]["reason"], "manual");

    let mut admin = connect(gw.admin, "/ws").await;
    send_json(
        &mut admin,
        json!({"type": "subscribe_metrics", "interval_ms": 60000}),
    )
    .await;
    assert_eq!(recv(&mut admin).await["type"], "metrics");
    for (from, to) in [("closed", "forced_open"), ("forced_open", "closed")] {
        let t = recv(&mut admin).await;
        assert_eq!(
            (
                &t["type"],
                &t["agent"],
                &t["from"],
                &t["to"],
                &t["replayed"]
            ),
            (
                &json!("circuit_breaker"),
                &json!("nlp"),
                &json!(from),
                &json!(to),
                &json!(true)
            ),
            "{t}"
        );
    }
    // What happens from now on is live news, not marked.
    nlp.disable();
    let live = recv(&mut admin).await;
    assert_eq!(
        (&live["type"], &live["to"]),
        (&json!("circuit_breaker"), &json!("disabled"))
    );
    assert!(live.get("replayed").is_none(), "{live}");
}

#[tokio::test]
async fn metrics_on_a_shared_listener_need_the_admin_token() {
    std::env::set_var("AGENTGATE_WS_TEST_TOKEN", "s3cret");
    let a = agents().await;
    let config = format!(
        "{}\n[admin]\ntoken_env = \"AGENTGATE_WS_TEST_TOKEN\"\n",
        three_stage("", &a.nlp.url(), &a.data.url(), &a.viz.url())
    );
    let gw = Gateway::start(&config).await;
    for path in ["/ws", "/ws?token=wrong"] {
        let mut ws = connect(gw.addr, path).await;
        send_json(&mut ws, json!({"type": "subscribe_metrics"})).await;
        assert_eq!(error_code(&mut ws).await, "unauthorized", "{path}");
    }
    let mut ws = connect(gw.addr, "/ws?token=s3cret").await;
    send_json(
        &mut ws,
        json!({"type": "subscribe_metrics", "interval_ms": 60000}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "metrics");
}

#[tokio::test]
async fn shutdown_delivers_terminal_events_then_closes_with_1001() {
    // The data agent holds the query in its second stage until the test lets it go.
    let data = EchoServer::held().await;
    let a = agents().await;
    let mut gw = Gateway::start(&three_stage(
        ADMIN_APART,
        &a.nlp.url(),
        &data.url(),
        &a.viz.url(),
    ))
    .await;
    let mut idle = connect(gw.addr, "/ws").await;
    let mut ws = connect(gw.addr, "/ws").await;
    send_json(&mut ws, json!({"type": "query", "query": "q"})).await;
    let accepted = answer(&mut ws).await;
    let query_id = accepted["query_id"].as_str().unwrap().to_owned();
    // Wait until the query is in its held stage.
    let mut events = Vec::new();
    while !events
        .iter()
        .any(|e: &Value| e["stage"] == "data_retrieval" && e["status"] == "started")
    {
        events.push(recv(&mut ws).await);
    }

    let stopped = gw.shutdown();
    assert_eq!(
        close_code(&mut idle).await,
        1001,
        "an idle client goes at once"
    );
    // Connections are told to drain after the gateway began to: no need to wait for it.
    assert!(gw.state.is_draining());
    send_json(&mut ws, json!({"type": "query", "query": "late"})).await;
    let refused = loop {
        let v = recv(&mut ws).await;
        if v.get("seq").is_none() {
            break v;
        }
        events.push(v);
    };
    assert_eq!(refused["code"], "shutting_down", "{refused}");
    // The listener stays open while the query runs: an upgrade is refused, not reset.
    match tokio_tungstenite::connect_async(ws_url(gw.addr, "/ws")).await {
        Err(tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE)
        }
        other => panic!("expected a 503 while shutting down, got {other:?}"),
    }

    data.release(1);
    events.extend(until_terminal(&mut ws, &query_id).await);
    check_stream(&events, &query_id);
    assert_eq!(events.last().unwrap()["type"], "completed");
    assert_eq!(close_code(&mut ws).await, 1001);
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("serve returns")
        .unwrap()
        .unwrap();
    assert_eq!(gw.state.ws().stats().connections, 0);
}
