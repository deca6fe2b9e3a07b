//! Streamed answers and the WebSocket echo, over real loopback connections.

mod support;

use std::time::Duration;

use agentgate_mock_agent::{Behavior, MockAgent, StreamMode};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use support::client;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

fn streaming(mode: StreamMode, chunks: u32, break_after: Option<u32>) -> Behavior {
    Behavior {
        name: "llm".to_owned(),
        stream: mode,
        stream_chunks: chunks,
        stream_interval: Duration::from_millis(100),
        stream_break_after: break_after,
        ..Behavior::default()
    }
}

/// The body's frames as they arrive, each with when it came.
async fn frames(body: hyper::body::Incoming) -> (Vec<(String, Instant)>, Option<hyper::Error>) {
    let mut body = body;
    let mut out = Vec::new();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    out.push((String::from_utf8(data.to_vec()).unwrap(), Instant::now()));
                }
            }
            Some(Err(e)) => return (out, Some(e)),
            None => return (out, None),
        }
    }
}

fn get(url: String) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn sse_chunks_come_one_interval_apart_then_done() {
    let agent = MockAgent::start(streaming(StreamMode::Sse, 3, None))
        .await
        .unwrap();
    let started = Instant::now();
    let res = client().request(get(agent.url())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let (frames, err) = frames(res.into_body()).await;
    assert!(err.is_none());
    let texts: Vec<&str> = frames.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(texts.len(), 4, "{texts:?}");
    assert_eq!(texts[3], "data: [DONE]\n\n");
    for (i, (text, at)) in frames[..3].iter().enumerate() {
        let json = text.strip_prefix("data: ").unwrap().trim_end();
        let chunk: Value = serde_json::from_str(json).unwrap();
        assert_eq!(chunk["index"], i);
        assert!(chunk["delta"].as_str().unwrap().ends_with(' '));
        assert!(chunk["ts_us"].as_u64().unwrap() > 0);
        assert_eq!(*at - started, Duration::from_millis(100 * (i as u64 + 1)));
    }
}

#[tokio::test(start_paused = true)]
async fn ndjson_breaks_after_n_chunks() {
    let agent = MockAgent::start(streaming(StreamMode::Ndjson, 10, Some(2)))
        .await
        .unwrap();
    let res = client().request(get(agent.url())).await.unwrap();
    assert_eq!(res.headers()["content-type"], "application/x-ndjson");
    let (frames, err) = frames(res.into_body()).await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    for (i, (line, _)) in frames.iter().enumerate() {
        let chunk: Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(chunk["index"], i);
    }
    assert!(err.is_some(), "the connection breaks after 2 chunks");
}

#[tokio::test]
async fn a_websocket_upgrade_is_an_echo() {
    let agent = MockAgent::start(Behavior::default()).await.unwrap();
    let url = format!("ws://{}/socket", agent.addr());
    let (mut ws, res) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
    ws.close(None).await.unwrap();

    // Injected errors apply to the handshake too.
    agent
        .set_behavior(Behavior {
            error_rate: 1.0,
            ..Behavior::default()
        })
        .unwrap();
    let err = tokio_tungstenite::connect_async(format!("ws://{}/socket", agent.addr()))
        .await
        .unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(res) = err else {
        panic!("{err}")
    };
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
}
