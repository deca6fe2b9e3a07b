//! `progress.backend = "redis"` (SPEC §5 "Scale-out") end to end: several gateways —
//! replicas — in this process sharing one real `redis-server`; each serves
//! `GET /api/query/{id}` and WebSocket subscribe / replay for queries run on any other.
//!
//! What one replica learns from another goes through redis-server, another process:
//! tests wait for it with `eventually`. HTTP goes through each replica's router in
//! memory; WebSocket clients use real sockets.

use std::net::SocketAddr;
use std::time::Duration;

use agentgate_e2e::{base_config, eventually, free_port, mock, Gateway, RedisServer};
use agentgate_mock_agent::MockAgent;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Agents {
    nlp: MockAgent,
    data: MockAgent,
}

async fn agents(latency: Duration) -> Agents {
    Agents {
        nlp: mock("nlp", |_| {}).await,
        data: mock("data", |b| b.latency = latency).await,
    }
}

fn config(redis_url: &str, a: &Agents) -> String {
    format!(
        r#"{}
[progress]
backend = "redis"
redis_url = "{redis_url}"

[agents.nlp]
url = "{}"
[agents.data]
url = "{}"

[pipelines.default]
deadline = "30s"
[[pipelines.default.stages]]
name = "nlp_processing"
agent = "nlp"
path = "/process"
[[pipelines.default.stages]]
name = "data_retrieval"
agent = "data"
path = "/query"
"#,
        base_config(r#"admin_listen = "127.0.0.1:1""#, "10s"),
        a.nlp.url(),
        a.data.url()
    )
}

/// A replica, once `/readyz` says its Redis connections are up.
async fn replica(redis_url: &str, a: &Agents) -> Gateway {
    let gw = Gateway::start(&config(redis_url, a)).await;
    wait_redis(&gw, "connected").await;
    gw
}

/// Until `/readyz` reports Redis `want` (`connected` or `unavailable`).
async fn wait_redis(gw: &Gateway, want: &str) -> Value {
    eventually(&format!("/readyz reports redis {want}"), || async {
        let res = gw.call("GET", "/readyz", &[], "").await;
        // Ready either way: queries run whether or not Redis is there.
        assert_eq!(res.status, StatusCode::OK);
        let body = res.json();
        (body["redis"] == want).then_some(body)
    })
    .await
}

async fn connect(addr: SocketAddr, path: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
        .await
        .expect("upgrade");
    ws
}

/// Text frames until the terminal event of the subscription, as raw JSON text.
async fn events_until_terminal(ws: &mut Ws) -> Vec<String> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(msg) = ws.next().await {
            let Message::Text(text) = msg.expect("frame") else {
                continue;
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            match v["type"].as_str().unwrap() {
                "subscribed" => continue,
                "completed" | "failed" | "cancelled" => {
                    out.push(text.to_string());
                    return;
                }
                _ => out.push(text.to_string()),
            }
        }
        panic!("connection closed before the terminal event: {out:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no terminal event within 20 s: {out:?}"));
    out
}

fn seqs(events: &[String]) -> Vec<u64> {
    events
        .iter()
        .map(|t| {
            serde_json::from_str::<Value>(t).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_each_others_records_and_event_streams() {
    let redis = RedisServer::start().await;
    let a = agents(Duration::from_millis(300)).await;
    let one = replica(&redis.url(), &a).await;
    let two = replica(&redis.url(), &a).await;

    // A query runs on replica one; replica two follows it live, from the start.
    let id = one.submit_async(&json!({"query": "sales by region"})).await;
    let mut on_one = connect(one.addr, &format!("/ws?query_id={id}&after_seq=0")).await;
    let mut on_two = connect(two.addr, "/ws").await;
    on_two
        .send(Message::text(
            json!({"type": "subscribe", "query_id": id, "after_seq": 0}).to_string(),
        ))
        .await
        .unwrap();
    let here = events_until_terminal(&mut on_one).await;
    let there = events_until_terminal(&mut on_two).await;
    assert_eq!(seqs(&here), (1..=here.len() as u64).collect::<Vec<_>>());
    // The same events, byte for byte: seq, ts and all.
    assert_eq!(here, there);
    let last: Value = serde_json::from_str(there.last().unwrap()).unwrap();
    assert_eq!(last["type"], "completed");
    assert_eq!(last["query_id"], id.as_str());

    // Its record, from the other replica.
    let path = format!("/api/query/{id}");
    let local = one.call("GET", &path, &[], "").await;
    let remote = eventually("the record reaches the other replica", || async {
        let res = two.call("GET", &path, &[], "").await;
        (res.status == StatusCode::OK && res.json()["status"] == "completed").then_some(res)
    })
    .await;
    assert_eq!(remote.headers["content-type"], "application/json");
    assert_eq!(remote.json(), local.json());

    // A replica started after the query ended replays it on demand (resume included).
    let three = replica(&redis.url(), &a).await;
    let mut late = connect(three.addr, &format!("/ws?query_id={id}&after_seq=2")).await;
    let replayed = events_until_terminal(&mut late).await;
    assert_eq!(replayed, here[2..].to_vec());
    assert_eq!(
        three
            .call("GET", &format!("/api/query/{id}"), &[], "")
            .await
            .json(),
        local.json()
    );

    // Unknown everywhere: 404, and `unknown_query` over WebSocket.
    let missing = two.call("GET", "/api/query/nope", &[], "").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    late.send(Message::text(
        json!({"type": "subscribe", "query_id": "nope"}).to_string(),
    ))
    .await
    .unwrap();
    let err = loop {
        let Some(Ok(Message::Text(t))) = late.next().await else {
            panic!("no answer")
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "error" {
            break v;
        }
    };
    assert_eq!(err["code"], "unknown_query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_redis_serves_its_own_queries_and_says_so() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let a = agents(Duration::ZERO).await;
    let gw = Gateway::start(&config(&url, &a)).await;

    let body = wait_redis(&gw, "unavailable").await;
    assert_eq!(body["status"], "ready");
    let health = gw
        .call_admin("GET", "/api/orchestration/health", &[], "")
        .await
        .json();
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(health["reasons"].to_string().contains("redis"), "{health}");
    // Queries still run and their records and events are served locally.
    let res = gw.post_json("/api/query", &json!({"query": "q"})).await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.json());
    let id = res.json()["query_id"].as_str().unwrap().to_owned();
    let mut ws = connect(gw.addr, &format!("/ws?query_id={id}&after_seq=0")).await;
    assert!(!events_until_terminal(&mut ws).await.is_empty());

    // Redis comes up: the replica connects by itself; Redis dies: it notices.
    let mut redis = RedisServer::start_on(port).await;
    wait_redis(&gw, "connected").await;
    redis.kill();
    wait_redis(&gw, "unavailable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_is_cancelled_from_any_replica() {
    let redis = RedisServer::start().await;
    let a = agents(Duration::from_secs(30)).await;
    let one = replica(&redis.url(), &a).await;
    let two = replica(&redis.url(), &a).await;

    // Over HTTP: DELETE on replica two cancels the query running on replica one.
    let id = one.submit_async(&json!({"query": "sales by region"})).await;
    wait_running_elsewhere(&two, &id).await;
    let res = two
        .call("DELETE", &format!("/api/query/{id}"), &[], "")
        .await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.json());
    assert_eq!(res.json()["status"], "cancelled");
    let here = one.call("GET", &format!("/api/query/{id}"), &[], "").await;
    assert_eq!(here.json()["status"], "cancelled");
    // A second DELETE: already finished, wherever it is asked.
    for gw in [&one, &two] {
        let again = gw
            .call("DELETE", &format!("/api/query/{id}"), &[], "")
            .await;
        assert_eq!(again.status, StatusCode::CONFLICT, "{:?}", again.json());
    }

    // Over WebSocket: `cancel` on replica two; its subscribers get the terminal event.
    let id = one.submit_async(&json!({"query": "sales by region"})).await;
    wait_running_elsewhere(&two, &id).await;
    let mut ws = connect(two.addr, &format!("/ws?query_id={id}&after_seq=0")).await;
    ws.send(Message::text(
        json!({"type": "cancel", "query_id": id}).to_string(),
    ))
    .await
    .unwrap();
    let events = events_until_terminal(&mut ws).await;
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["type"], "cancelled");
    assert_eq!(seqs(&events), (1..=events.len() as u64).collect::<Vec<_>>());
    let missing = two.call("DELETE", "/api/query/nope", &[], "").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

/// Until `gw` (not the replica running it) reads `id`'s record as running.
async fn wait_running_elsewhere(gw: &Gateway, id: &str) {
    let path = format!("/api/query/{id}");
    let record = eventually(
        &format!("query {id} shows on the other replica"),
        || async {
            let res = gw.call("GET", &path, &[], "").await;
            (res.status == StatusCode::OK).then(|| res.json())
        },
    )
    .await;
    assert_eq!(record["status"], "running");
}

/// `redis-cli` against the test server (a peer that writes as another replica would).
fn cli(redis: &RedisServer, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (from Debian's redis-tools, a dependency of redis-server)");
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes event `seq` of query `q` as another replica would: into the query's stream,
/// and (`announce`) on the events channel.
fn peer_event(redis: &RedisServer, q: &str, seq: u64, kind: &str, announce: bool) -> String {
    let json = match kind {
        "completed" => json!({"type": "completed", "query_id": q, "seq": seq,
            "ts": "2026-11-25T12:00:00.000Z", "result": {}, "duration_ms": 1}),
        _ => json!({"type": "progress", "query_id": q, "seq": seq,
            "ts": "2026-11-25T12:00:00.000Z", "stage": "s", "status": "started",
            "progress": seq}),
    }
    .to_string();
    cli(
        redis,
        &["XADD", &format!("agentgate:q:{q}:events"), "*", "e", &json],
    );
    if announce {
        cli(
            redis,
            &["PUBLISH", "agentgate:events", &format!("peer|{json}")],
        );
    }
    json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_messages_are_filled_from_the_streams() {
    let redis = RedisServer::start().await;
    let a = agents(Duration::ZERO).await;
    let gw = replica(&redis.url(), &a).await;

    // A peer's query: its first event is announced and followed here.
    let first = peer_event(&redis, "peer-q", 1, "progress", true);
    // Each try is a subscribe and its answer on the same connection.
    let ws = tokio::sync::Mutex::new(connect(gw.addr, "/ws").await);
    eventually("the peer's query is known here", || async {
        let mut ws = ws.lock().await;
        ws.send(Message::text(
            json!({"type": "subscribe", "query_id": "peer-q", "after_seq": 0}).to_string(),
        ))
        .await
        .unwrap();
        let answer = next_text(&mut ws).await;
        if answer.contains("\"subscribed\"") {
            return Some(());
        }
        assert!(answer.contains("unknown_query"), "{answer}");
        None
    })
    .await;
    let mut ws = ws.into_inner();
    assert_eq!(next_text(&mut ws).await, first);
    // The second is never announced; when the third is, the gap is filled from the
    // stream, and the subscriber gets both in order.
    let second = peer_event(&redis, "peer-q", 2, "progress", false);
    let third = peer_event(&redis, "peer-q", 3, "progress", true);
    assert_eq!(next_text(&mut ws).await, second);
    assert_eq!(next_text(&mut ws).await, third);

    // The subscription to Redis breaks; an event published meanwhile is caught up from
    // the stream after the reconnect, and the stream goes on live to its end.
    cli(&redis, &["CLIENT", "KILL", "TYPE", "pubsub"]);
    let missed = peer_event(&redis, "peer-q", 4, "progress", false);
    assert_eq!(next_text(&mut ws).await, missed);
    wait_redis(&gw, "connected").await;
    let last = peer_event(&redis, "peer-q", 5, "completed", true);
    assert_eq!(next_text(&mut ws).await, last);
}

/// The next text frame, within 10 s.
async fn next_text(ws: &mut Ws) -> String {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a frame within 10 s")
}
