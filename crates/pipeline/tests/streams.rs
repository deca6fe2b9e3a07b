//! Streamed stage answers (SPEC §6) from real agents on loopback, on a paused clock:
//! chunks published as they come, each `stream_result`, breaks, silences, the deadline
//! and bad input.

mod support;

use std::time::Duration;

use agentgate_pipeline::{
    EngineSettings, ErrorKind, QueryInput, QueryRecord, QueryStatus, StageOutcome,
};
use agentgate_progress::SubscriptionItem;
use bytes::Bytes;
use serde_json::{json, Value};
use support::{agent_config, brief, engine, events, result, Agent, Reply, Setup};
use tokio::time::Instant;

const SSE: &str = "text/event-stream";
const NDJSON: &str = "application/x-ndjson";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A stream of `frames`, each 100 ms after the one before.
fn stream(content_type: &'static str, frames: &[&str], then_break: bool) -> Reply {
    Reply::Stream {
        content_type,
        frames: frames
            .iter()
            .map(|f| (ms(100), Bytes::copy_from_slice(f.as_bytes())))
            .collect(),
        then_break,
    }
}

/// Stage `llm` on agent `a` (fallbacks on `b`), with `extra` stage keys, then stage
/// `after` on a JSON agent of its own (returned).
async fn two_stages(a: &Agent, b: Option<&Agent>, extra: &str) -> (Setup, Agent) {
    let src = format!(
        "deadline = \"60s\"\n[[stages]]\nname = \"llm\"\nagent = \"a\"\nweight = 50\n{extra}\n\
         [[stages]]\nname = \"after\"\nagent = \"c\"\nweight = 50\n"
    );
    let c = Agent::start(vec![Reply::Json(json!("next"))]).await;
    let mut agents = vec![("a", agent_config(a.url())), ("c", agent_config(c.url()))];
    if let Some(b) = b {
        agents.push(("b", agent_config(b.url())));
    }
    let setup = engine(&[("default", &src)], agents, EngineSettings::default());
    (setup, c)
}

/// The `output` events: `(attempt, index, chunk)`.
fn outputs(events: &[Value]) -> Vec<(u64, u64, Value)> {
    events
        .iter()
        .filter(|e| e["type"] == "output")
        .map(|e| {
            assert_eq!(e["stage"], "llm");
            (
                e["attempt"].as_u64().unwrap(),
                e["index"].as_u64().unwrap(),
                e["chunk"].clone(),
            )
        })
        .collect()
}

async fn run(s: &Setup) -> (QueryRecord, Vec<Value>) {
    let submitted = s.engine.submit(QueryInput::new("hi")).unwrap();
    let id = submitted.query_id.clone();
    let record = submitted.finished().await;
    (record, events(&s.hub, &id).await)
}

#[tokio::test(start_paused = true)]
async fn sse_chunks_are_published_as_they_come_and_make_the_output() {
    let a = Agent::start(vec![stream(
        SSE,
        &[
            ": keep-alive\n\ndata: {\"delta\":\"Hel\"}\n\n",
            "data: \"lo\"\n\nevent: note\ndata: plain text\n\n",
            "data: [DONE]\n\ndata: never\n\n",
        ],
        false,
    )])
    .await;
    let (s, c) = two_stages(&a, None, "").await;
    let started = Instant::now();
    let submitted = s.engine.submit(QueryInput::new("hi")).unwrap();
    let id = submitted.query_id.clone();

    // The first chunk is out 100 ms in, while the agent still has 200 ms to go.
    let mut sub = s.hub.subscribe(&id, 0).unwrap();
    loop {
        let Some(SubscriptionItem::Event(e)) = sub.recv().await else {
            panic!("ended before any output")
        };
        if e.is_output() {
            assert_eq!(started.elapsed(), ms(100));
            break;
        }
    }

    let record = submitted.finished().await;
    assert_eq!(record.status, QueryStatus::Completed);
    let chunks = vec![json!({"delta": "Hel"}), json!("lo"), json!("plain text")];
    assert_eq!(
        result(&record).unwrap()["llm"],
        Value::Array(chunks.clone())
    );
    // Later stages get the output like any other.
    assert_eq!(
        c.seen()[0].body["results"]["llm"],
        Value::Array(chunks.clone())
    );
    let events = events(&s.hub, &id).await;
    let expected: Vec<_> = (0u64..).zip(chunks).map(|(i, c)| (1, i, c)).collect();
    assert_eq!(outputs(&events), expected);
    assert_eq!(
        brief(&events),
        [
            "llm:started@0",
            "output",
            "output",
            "output",
            "llm:completed@50",
            "after:started@50",
            "after:completed@100",
            "completed"
        ]
    );
    // The record tells the attempt, never the chunks as events.
    let stage = &record.stages[0];
    assert_eq!(stage.attempts.len(), 1);
    assert_eq!(stage.attempts[0].status, Some(200));
    assert_eq!(
        stage.attempts[0].duration_ms, 300,
        "the stream's time included"
    );
    assert!(!serde_json::to_string(&record)
        .unwrap()
        .contains("\"index\""));
}

#[tokio::test(start_paused = true)]
async fn ndjson_with_last_and_concat() {
    let lines = [
        "{\"text\":\"The \"}\n{\"delta\":\"answer\"}\n",
        "\"!\"\n{\"content\":7,\"other\":\"x\"}\n",
    ];
    for (extra, want) in [
        (
            "stream_result = \"last\"",
            json!({"content": 7, "other": "x"}),
        ),
        ("stream_result = \"concat\"", json!("The answer!")),
    ] {
        let a = Agent::start(vec![stream(NDJSON, &lines, false)]).await;
        let (s, _c) = two_stages(&a, None, extra).await;
        let (record, events) = run(&s).await;
        assert_eq!(result(&record).unwrap()["llm"], want, "{extra}");
        assert_eq!(outputs(&events).len(), 4, "every chunk is published");
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_broken_after_two_chunks_fails_over_without_a_retry() {
    let a = Agent::start(vec![stream(
        NDJSON,
        &["{\"delta\":\"a\"}\n", "{\"delta\":\"b\"}\n"],
        true,
    )])
    .await;
    let b = Agent::start(vec![stream(SSE, &["data: {\"delta\":\"B\"}\n\n"], false)]).await;
    let (s, _c) = two_stages(&a, Some(&b), "fallback = [ { agent = \"b\" } ]").await;
    let (record, events) = run(&s).await;
    assert_eq!(record.status, QueryStatus::Completed);
    assert_eq!(a.hits(), 1, "chunks went out: never retried");
    assert_eq!(record.stages[0].status, StageOutcome::Fallback);
    assert_eq!(result(&record).unwrap()["llm"], json!([{"delta": "B"}]));
    let errors: Vec<_> = record.stages[0]
        .attempts
        .iter()
        .map(|a| (a.attempt, a.status, a.error))
        .collect();
    assert_eq!(
        errors,
        [
            (1, Some(200), Some(ErrorKind::StreamBroken)),
            (1, Some(200), None)
        ]
    );
    // Both agents' chunks reached clients; `attempt` and the fallback event between
    // them tell them apart.
    assert_eq!(
        outputs(&events),
        [
            (1, 0, json!({"delta": "a"})),
            (1, 1, json!({"delta": "b"})),
            (1, 0, json!({"delta": "B"})),
        ]
    );
    let kinds = brief(&events);
    let broken = kinds.iter().position(|k| k == "llm:error/stream_broken");
    let fallback = kinds.iter().position(|k| k.starts_with("llm:fallback"));
    assert!(broken.is_some() && broken < fallback, "{kinds:?}");
    let message = events
        .iter()
        .find(|e| e["type"] == "error")
        .map(|e| e["error"]["message"].as_str().unwrap().to_owned())
        .unwrap();
    assert!(message.contains("broke after 2 chunks"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn silence_longer_than_stream_idle_timeout_breaks_the_stream() {
    let a = Agent::start(vec![Reply::Stream {
        content_type: SSE,
        frames: vec![
            (ms(10), Bytes::from_static(b"data: 1\n\n")),
            (Duration::from_secs(40), Bytes::from_static(b"data: 2\n\n")),
        ],
        then_break: false,
    }])
    .await;
    let (s, _c) = two_stages(&a, None, "fallback = [ { static = \"gave up\" } ]").await;
    let started = Instant::now();
    let (record, events) = run(&s).await;
    assert_eq!(result(&record).unwrap()["llm"], "gave up");
    // 10 ms to the first chunk, then the default 30 s of silence.
    assert!(
        started.elapsed() < Duration::from_secs(31),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        record.stages[0].attempts[0].error,
        Some(ErrorKind::StreamBroken)
    );
    let error = events.iter().find(|e| e["type"] == "error").unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.ends_with("no data for 30s (stream_idle_timeout)"),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_cuts_a_stream_short() {
    let a = Agent::start(vec![Reply::Stream {
        content_type: NDJSON,
        frames: (0..100)
            .map(|i| (ms(1000), Bytes::from(format!("{i}\n"))))
            .collect(),
        then_break: false,
    }])
    .await;
    let src = "deadline = \"5s\"\n[[stages]]\nname = \"llm\"\nagent = \"a\"";
    let s = engine(
        &[("default", src)],
        vec![("a", agent_config(a.url()))],
        EngineSettings::default(),
    );
    let (record, events) = run(&s).await;
    assert_eq!(record.failure(), Some(ErrorKind::Deadline));
    assert_eq!(outputs(&events).len(), 4, "chunks 0..=3 came before 5 s");
}

/// Bad input from agents: each a clean stage failure, and the engine goes on serving.
#[tokio::test(start_paused = true)]
async fn malformed_sse_a_10_mb_line_and_invalid_utf8_fail_the_stage() {
    let ten_mb: Vec<(Duration, Bytes)> = (0..160)
        .map(|_| (Duration::ZERO, Bytes::from(vec![b'x'; 64 * 1024])))
        .collect();
    let cases = [
        (
            stream(SSE, &["data: ok\n\n", "<html>oops</html>\n\n"], false),
            "no SSE field",
        ),
        (
            Reply::Stream {
                content_type: NDJSON,
                frames: ten_mb,
                then_break: false,
            },
            "longer than 1048576 bytes",
        ),
        (
            Reply::Stream {
                content_type: NDJSON,
                frames: vec![(ms(1), Bytes::from_static(b"{\"a\":1}\n\"\xff\xfe\"\n"))],
                then_break: false,
            },
            "not UTF-8",
        ),
    ];
    for (reply, want) in cases {
        let a = Agent::start(vec![reply, Reply::Json(json!({"fine": true}))]).await;
        let src = "[[stages]]\nname = \"llm\"\nagent = \"a\"";
        let s = engine(
            &[("default", src)],
            vec![("a", agent_config(a.url()))],
            EngineSettings::default(),
        );
        let (record, _) = run(&s).await;
        assert_eq!(record.failure(), Some(ErrorKind::BadResponse), "{want}");
        let message = &record.error.as_ref().unwrap().message;
        assert!(message.contains(want), "{message}");
        assert_eq!(a.hits(), 1, "{want}: not retried");
        // The same engine and agent serve the next query.
        let (next, _) = run(&s).await;
        assert_eq!(result(&next).unwrap()["llm"], json!({"fine": true}));
    }
}

#[tokio::test(start_paused = true)]
async fn the_output_is_bounded_by_max_response_bytes() {
    let a = Agent::start(vec![stream(NDJSON, &["\"aaaa\"\n", "\"bbbb\"\n"], false)]).await;
    let mut cfg = agent_config(a.url());
    cfg.max_response_bytes = 10; // `["aaaa"]` is 8 bytes; two chunks are 15
    let src = "[[stages]]\nname = \"llm\"\nagent = \"a\"";
    let s = engine(
        &[("default", src)],
        vec![("a", cfg)],
        EngineSettings::default(),
    );
    let (record, events) = run(&s).await;
    assert_eq!(record.failure(), Some(ErrorKind::BadResponse));
    assert_eq!(outputs(&events), [(1, 0, json!("aaaa"))]);
}
