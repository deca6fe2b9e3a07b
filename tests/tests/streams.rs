//! SPEC §6 streaming through the gateway: streamed stage answers as live `output`
//! events on the WebSocket, `outputs:false`, bad streams failing cleanly, SSE through
//! the reverse proxy chunk by chunk, and WebSocket through the proxy. Real gateway,
//! real agents, real sockets; waits are on signals, never sleeps.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentgate_e2e::{base_config, mock, send, Gateway};
use agentgate_mock_agent::StreamMode;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any one step may take before the test fails.
const STEP: Duration = Duration::from_secs(10);

fn config(agents: &[(&str, String)], stages: &str, server: &str) -> String {
    let mut out = base_config(server, "5s");
    for (name, url) in agents {
        out.push_str(&format!("[agents.{name}]\nurl = \"{url}\"\n"));
    }
    out.push_str(stages);
    out
}

async fn connect(addr: SocketAddr, path: &str) -> Ws {
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .unwrap_or_else(|e| panic!("upgrade {url}: {e}"));
    ws
}

async fn recv(ws: &mut Ws) -> Value {
    let frame = tokio::time::timeout(STEP, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str::<Value>(&t).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    });
    frame.await.expect("a frame in time")
}

/// The frames of one query up to its terminal event.
async fn until_terminal(ws: &mut Ws) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let v = recv(ws).await;
        let kind = v["type"].as_str().unwrap_or("").to_owned();
        out.push(v);
        if ["completed", "failed", "cancelled"].contains(&kind.as_str()) {
            return out;
        }
    }
}

#[tokio::test]
async fn a_streaming_stage_sends_tokens_live_over_the_websocket() {
    let llm = mock("llm", |b| {
        b.stream = StreamMode::Sse;
        b.stream_chunks = 6;
        b.stream_interval = Duration::from_millis(5);
    })
    .await;
    let stages = r#"
[[pipelines.default.stages]]
name = "answer"
agent = "llm"
stream_result = "concat"
"#;
    let gw = Gateway::start(&config(&[("llm", llm.url())], stages, "")).await;
    let mut ws = connect(gw.addr, "/ws").await;
    let query = json!({"type": "query", "query": "hi", "request_id": "r1"});
    ws.send(Message::text(query.to_string())).await.unwrap();
    let accepted = recv(&mut ws).await;
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    let query_id = accepted["query_id"].as_str().unwrap().to_owned();
    let events = until_terminal(&mut ws).await;

    let outputs: Vec<&Value> = events.iter().filter(|e| e["type"] == "output").collect();
    assert_eq!(outputs.len(), 6);
    let mut text = String::new();
    for (i, e) in outputs.iter().enumerate() {
        assert_eq!(
            (e["stage"].as_str(), e["attempt"].as_u64()),
            (Some("answer"), Some(1))
        );
        assert_eq!(e["index"], i);
        assert_eq!(e["chunk"]["index"], i, "in order: {e}");
        text.push_str(e["chunk"]["delta"].as_str().unwrap());
    }
    // Every output before the stage completes, and seq without gaps.
    let completed_at = events
        .iter()
        .position(|e| e["type"] == "progress" && e["status"] == "completed")
        .unwrap();
    assert!(
        events[..completed_at]
            .iter()
            .filter(|e| e["type"] == "output")
            .count()
            == 6
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let last = events.last().unwrap();
    assert_eq!(last["type"], "completed");
    assert_eq!(last["result"]["answer"], text.as_str());

    // A subscriber that wants no chunks replays the same query without them.
    let sub = json!({"type": "subscribe", "query_id": query_id, "outputs": false});
    ws.send(Message::text(sub.to_string())).await.unwrap();
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    let replay = until_terminal(&mut ws).await;
    assert!(replay.iter().all(|e| e["type"] != "output"), "{replay:?}");
    assert_eq!(replay.len(), events.len() - 6);

    // The record has the result, never the chunks.
    let record = gw
        .call("GET", &format!("/api/query/{query_id}"), &[], "")
        .await;
    let record = record.json();
    assert_eq!(record["result"]["answer"], text.as_str());
    assert!(!record.to_string().contains("\"output\""), "{record}");
}

#[tokio::test]
async fn a_stream_broken_after_n_chunks_falls_back_and_the_gateway_answers_502_otherwise() {
    let llm = mock("llm", |b| {
        b.stream = StreamMode::Ndjson;
        b.stream_chunks = 10;
        b.stream_interval = Duration::from_millis(2);
        b.stream_break_after = Some(3);
    })
    .await;
    let stages = r#"
[[pipelines.default.stages]]
name = "answer"
agent = "llm"
fallback = [ { static = "sorry" } ]
[[pipelines.bare.stages]]
name = "answer"
agent = "llm"
"#;
    let gw = Gateway::start(&config(&[("llm", llm.url())], stages, "")).await;
    let res = gw.post_json("/api/query", &json!({"query": "hi"})).await;
    assert_eq!(res.status, StatusCode::OK);
    let body = res.json();
    assert_eq!(body["result"]["answer"], "sorry");
    let attempts = &body["stages"][0]["attempts"];
    assert_eq!(attempts.as_array().unwrap().len(), 1, "not retried: {body}");
    assert_eq!(attempts[0]["error"], "stream_broken");

    let res = gw
        .post_json("/api/query", &json!({"query": "hi", "pipeline": "bare"}))
        .await;
    assert_eq!(res.status, StatusCode::BAD_GATEWAY);
    assert_eq!(res.json()["error"]["kind"], "stream_broken");
}

/// An agent that answers every request with `head` and then `body`, over a raw socket.
async fn raw_agent(head: &'static str, body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                // The request's head and JSON body fit one read here; then answer.
                let mut buf = vec![0; 64 * 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn bad_streams_fail_the_stage_cleanly_and_the_gateway_keeps_serving() {
    let sse = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
    let ndjson =
        "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n";
    let mut long = vec![b'x'; 4096];
    long.push(b'\n');
    let malformed = raw_agent(sse, b"data: fine\n\n<!doctype html>\n\n".to_vec()).await;
    let too_long = raw_agent(ndjson, long).await;
    let not_utf8 = raw_agent(ndjson, b"\"ok\"\n\"\xc3\x28\"\n".to_vec()).await;
    let fine = mock("fine", |_| {}).await;
    let mut stages = String::new();
    for name in ["malformed", "too_long", "not_utf8", "fine"] {
        stages.push_str(&format!(
            "[[pipelines.{name}.stages]]\nname = \"s\"\nagent = \"{name}\"\n"
        ));
    }
    let agents = [
        ("malformed", malformed),
        ("too_long", too_long),
        ("not_utf8", not_utf8),
        ("fine", fine.url()),
    ];
    // One line or event may not exceed max_body_bytes.
    let gw = Gateway::start(&config(&agents, &stages, "max_body_bytes = 1000")).await;
    for (pipeline, want) in [
        ("malformed", "no SSE field"),
        ("too_long", "longer than 1000 bytes"),
        ("not_utf8", "not UTF-8"),
    ] {
        let res = gw
            .post_json("/api/query", &json!({"query": "q", "pipeline": pipeline}))
            .await;
        assert_eq!(res.status, StatusCode::BAD_GATEWAY, "{pipeline}");
        let error = &res.json()["error"];
        assert_eq!(error["kind"], "bad_response", "{pipeline}");
        assert!(error["message"].as_str().unwrap().contains(want), "{error}");
        let res = gw
            .post_json("/api/query", &json!({"query": "q", "pipeline": "fine"}))
            .await;
        assert_eq!(res.status, StatusCode::OK, "still serving after {pipeline}");
    }
}

/// An SSE agent that writes its first event, then waits for `go` before the second and
/// the end of its answer.
async fn held_sse_agent(go: Arc<Notify>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let go = go.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let go = go.clone();
                    async move {
                        let frames = futures_util::stream::unfold(0, move |i| {
                            let go = go.clone();
                            async move {
                                let data: &[u8] = match i {
                                    0 => b"data: one\n\n",
                                    1 => {
                                        go.notified().await;
                                        b"data: two\n\n"
                                    }
                                    _ => return None,
                                };
                                let frame = Frame::data(Bytes::from_static(data));
                                Some((Ok::<_, Infallible>(frame), i + 1))
                            }
                        });
                        let res = Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(StreamBody::new(frames))
                            .unwrap();
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn sse_through_the_proxy_arrives_before_the_agent_finishes() {
    let go = Arc::new(Notify::new());
    let agent = held_sse_agent(go.clone()).await;
    let gw = Gateway::start(&config(&[("held", agent)], "", "")).await;
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(gw.url("/agents/held/events"))
        .body(Empty::new())
        .unwrap();
    let res = tokio::time::timeout(STEP, client.request(req))
        .await
        .expect("the head in time")
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    // The agent is still holding its answer: the first event must already be here.
    let first = tokio::time::timeout(STEP, body.frame())
        .await
        .expect("the first event before the agent finishes (nothing buffers it)")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "data: one\n\n");
    go.notify_one();
    let rest = tokio::time::timeout(STEP, body.collect())
        .await
        .expect("the rest")
        .unwrap();
    assert_eq!(rest.to_bytes(), "data: two\n\n");
}

#[tokio::test]
async fn a_websocket_is_tunnelled_to_the_agent_through_its_breaker() {
    let echo = mock("echo", |_| {}).await;
    let refusing = mock("refusing", |b| b.error_rate = 1.0).await;
    let agents = [("echo", echo.url()), ("refusing", refusing.url())];
    let gw = Gateway::start(&config(&agents, "", "")).await;

    let mut ws = connect(gw.addr, "/agents/echo/chat?room=1").await;
    for text in ["hello", "agentgate"] {
        ws.send(Message::text(text)).await.unwrap();
        let back = tokio::time::timeout(STEP, ws.next()).await.unwrap();
        assert_eq!(back.unwrap().unwrap(), Message::text(text));
    }
    ws.send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .unwrap();
    let back = tokio::time::timeout(STEP, ws.next()).await.unwrap();
    assert_eq!(
        back.unwrap().unwrap(),
        Message::binary(vec![0u8, 159, 146, 150])
    );
    ws.close(None).await.unwrap();

    // A handshake the agent fails is passed on and not retried (max_attempts = 2).
    let url = format!("ws://{}/agents/refusing/chat", gw.addr);
    let err = tokio_tungstenite::connect_async(&url).await.unwrap_err();
    let tungstenite::Error::Http(res) = err else {
        panic!("{err}")
    };
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(refusing.stats().requests, 1, "a handshake is sent once");

    // An open breaker refuses the handshake without touching the agent.
    gw.state.agent("echo").unwrap().breaker().force_open(None);
    let before = echo.stats().requests;
    let url = format!("ws://{}/agents/echo/chat", gw.addr);
    let err = tokio_tungstenite::connect_async(&url).await.unwrap_err();
    let tungstenite::Error::Http(res) = err else {
        panic!("{err}")
    };
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(echo.stats().requests, before);

    // Plain requests to the same route still work as before.
    gw.state.agent("echo").unwrap().breaker().reset();
    let res = send("GET", &gw.url("/agents/echo/x"), &[], "").await;
    assert_eq!(res.status, StatusCode::OK);
}
