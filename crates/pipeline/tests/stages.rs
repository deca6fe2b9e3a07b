//! The stage contract, fallbacks, skips, the deadline, breakers and retries, against
//! real agents on loopback and a paused clock.

mod support;

use std::time::Duration;

use agentgate_pipeline::{EngineSettings, ErrorKind, QueryInput, QueryStatus, StageOutcome};
use agentgate_progress::SubscriptionItem;
use serde_json::{json, Value};
use support::{agent_config, closed_port, engine, result, Agent, Reply};

fn input(query: &str) -> QueryInput {
    QueryInput::new(query)
}

fn attempts(record: &agentgate_pipeline::StageRecord) -> Vec<(u32, Option<u16>, Option<&str>)> {
    record
        .attempts
        .iter()
        .map(|a| (a.attempt, a.status, a.error.map(|k| k.as_str())))
        .collect()
}

const TWO_STAGES: &str = r#"
    deadline = "30s"
    [[stages]]
    name = "nlp"
    agent = "a"
    path = "/process"
    weight = 30
    [[stages]]
    name = "answer"
    agent = "b"
    path = "/answer"
    weight = 70
"#;

#[tokio::test(start_paused = true)]
async fn the_result_reads_as_a_parsed_value_would_and_is_held_once() {
    let odd = json!({
        "z": 1, "a": [1.5, -0.0, 1e300, "é\"\n\u{1F600}"], "m": {"y": null, "b": true},
        "big": u64::MAX, "neg": i64::MIN,
    });
    let a = Agent::start(vec![Reply::Json(odd.clone())]).await;
    let b = Agent::start(vec![Reply::Status(503)]).await;
    let s = engine(
        &[(
            "default",
            r#"
            [[stages]]
            name = "nlp"
            agent = "a"
            [[stages]]
            name = "answer"
            agent = "b"
            fallback = [ { static = { text = "sorry", n = 2.25 } } ]
            "#,
        )],
        vec![("a", agent_config(a.url())), ("b", agent_config(b.url()))],
        EngineSettings::default(),
    );
    let submitted = s.engine.submit(input("q")).unwrap();
    let id = submitted.query_id.clone();
    let record = submitted.finished().await;
    let expected = json!({"nlp": odd, "answer": {"text": "sorry", "n": 2.25}});
    assert_eq!(result(&record), Some(expected.clone()));

    // Byte for byte what serializing a parsed `serde_json::Value` gives (sorted keys,
    // compact), in the record and in the terminal event.
    let text = record.result.as_ref().unwrap().get();
    assert_eq!(text, serde_json::to_string(&expected).unwrap());
    let json = serde_json::to_string(&record).unwrap();
    assert!(
        json.contains(&format!(r#","result":{text},"stages":"#)),
        "{json}"
    );
    let mut sub = s.hub.subscribe(&id, 0).unwrap();
    let mut last = None;
    while let Some(SubscriptionItem::Event(e)) = sub.recv().await {
        last = Some(e);
    }
    let terminal = last.unwrap();
    assert_eq!(
        *terminal.json,
        serde_json::to_string(&terminal.event()).unwrap()
    );
    assert!(terminal.json.contains(&format!(r#""result":{text},"#)));

    // Held once: the record's result is the terminal event's text, wherever it is read.
    let in_event = terminal.completed_result().unwrap();
    let retained = s.engine.get(&id).unwrap();
    for r in [&record, &retained] {
        assert_eq!(
            r.result.as_ref().unwrap().get().as_ptr(),
            in_event.get().as_ptr()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn stages_receive_the_contract_and_earlier_results() {
    let a = Agent::start(vec![
        Reply::Status(503),
        Reply::Json(json!({"intent": "greet"})),
    ])
    .await;
    let b = Agent::start(vec![Reply::Json(json!({"text": "hello"}))]).await;
    let s = engine(
        &[("default", TWO_STAGES)],
        vec![("a", agent_config(a.url())), ("b", agent_config(b.url()))],
        EngineSettings::default(),
    );
    let mut q = input("hi there");
    q.context.insert("user".into(), json!("u1"));
    q.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    let submitted = s.engine.submit(q).unwrap();
    let id = submitted.query_id.clone();
    let record = submitted.finished().await;

    assert_eq!(record.status, QueryStatus::Completed, "{record:?}");
    assert_eq!(record.failure(), None);
    assert_eq!(
        result(&record),
        Some(json!({"nlp": {"intent": "greet"}, "answer": {"text": "hello"}}))
    );
    assert_eq!(record.pipeline, "default");

    // The stage's agent: retried once, with the same idempotency key.
    let seen = a.seen();
    assert_eq!(seen.len(), 2);
    for (i, req) in seen.iter().enumerate() {
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/process");
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(req.header("x-query-id"), Some(id.as_str()));
        assert_eq!(req.header("x-agentgate-stage"), Some("nlp"));
        assert_eq!(req.header("x-agentgate-attempt"), Some(["1", "2"][i]));
        assert_eq!(
            req.header("idempotency-key"),
            Some(format!("{id}:nlp").as_str())
        );
        assert_eq!(
            req.header("traceparent"),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        let left: u64 = req
            .header("x-agentgate-deadline-ms")
            .unwrap()
            .parse()
            .unwrap();
        assert!(left > 29_000 && left <= 30_000, "{left}");
        assert_eq!(
            req.body,
            json!({"query_id": id, "query": "hi there", "context": {"user": "u1"}, "results": {}})
        );
    }
    // The next stage sees the earlier output.
    let seen = b.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/answer");
    assert_eq!(seen[0].header("x-agentgate-stage"), Some("answer"));
    assert_eq!(
        seen[0].header("idempotency-key"),
        Some(format!("{id}:answer").as_str())
    );
    assert_eq!(seen[0].body["results"], json!({"nlp": {"intent": "greet"}}));

    // Attempts recorded, backoff included in the stage's time.
    let nlp = &record.stages[0];
    assert_eq!((nlp.name.as_str(), nlp.agent.as_str()), ("nlp", "a"));
    assert_eq!(nlp.status, StageOutcome::Completed);
    assert_eq!(
        attempts(nlp),
        [(1, Some(503), Some("status")), (2, Some(200), None)]
    );
    assert_eq!(nlp.duration_ms, 100);
    assert_eq!(nlp.fallback, None);
    assert_eq!(record.stages[1].status, StageOutcome::Completed);
    assert_eq!(record.duration_ms, Some(100));

    let json = serde_json::to_value(&record).unwrap();
    assert_eq!(json["status"], "completed");
    assert!(json.get("error").is_none());
    assert_eq!(
        json["stages"][0]["attempts"],
        json!([{"attempt":1,"status":503,"error":"status","duration_ms":0},
               {"attempt":2,"status":200,"duration_ms":0}])
    );
}

const WITH_FALLBACKS: &str = r#"
    [[stages]]
    name = "nlp"
    agent = "primary"
    path = "/process"
    fallback = [ { agent = "backup" }, { static = { intent = "unknown" } } ]
"#;

#[tokio::test(start_paused = true)]
async fn a_failing_stage_falls_back_to_another_agent() {
    let primary = Agent::start(vec![Reply::Status(502)]).await;
    let backup = Agent::start(vec![Reply::Json(json!({"intent": "from-backup"}))]).await;
    let s = engine(
        &[("default", WITH_FALLBACKS)],
        vec![
            ("primary", agent_config(primary.url())),
            ("backup", agent_config(backup.url())),
        ],
        EngineSettings::default(),
    );
    let sub = s.engine.submit(input("q")).unwrap();
    let id = sub.query_id.clone();
    let record = sub.finished().await;
    assert_eq!(record.status, QueryStatus::Completed);
    assert_eq!(
        result(&record),
        Some(json!({"nlp": {"intent": "from-backup"}}))
    );
    let stage = &record.stages[0];
    assert_eq!(stage.status, StageOutcome::Fallback);
    assert_eq!(stage.agent, "primary");
    assert_eq!(stage.fallback.as_deref(), Some("backup"));
    // The primary's three attempts, then the backup's one.
    assert_eq!(
        attempts(stage),
        [
            (1, Some(502), Some("status")),
            (2, Some(502), Some("status")),
            (3, Some(502), Some("status")),
            (1, Some(200), None)
        ]
    );
    // Same path, body and idempotency key as the primary got.
    let (p, b) = (&primary.seen()[0], &backup.seen()[0]);
    assert_eq!(b.path, "/process");
    assert_eq!(b.body, p.body);
    assert_eq!(
        b.header("idempotency-key"),
        Some(format!("{id}:nlp").as_str())
    );
    assert_eq!(b.header("x-agentgate-stage"), Some("nlp"));
}

#[tokio::test(start_paused = true)]
async fn when_every_agent_fails_the_static_fallback_answers() {
    let primary = Agent::start(vec![Reply::Status(503)]).await;
    let backup = Agent::start(vec![Reply::Status(500)]).await;
    let s = engine(
        &[("default", WITH_FALLBACKS)],
        vec![
            ("primary", agent_config(primary.url())),
            ("backup", agent_config(backup.url())),
        ],
        EngineSettings::default(),
    );
    let record = s.engine.submit(input("q")).unwrap().finished().await;
    assert_eq!(record.status, QueryStatus::Completed);
    assert_eq!(result(&record), Some(json!({"nlp": {"intent": "unknown"}})));
    let stage = &record.stages[0];
    assert_eq!(stage.status, StageOutcome::Fallback);
    assert_eq!(stage.fallback.as_deref(), Some("static"));
    // 500 is not in retry_on: the backup is tried once.
    assert_eq!(stage.attempts.len(), 4);
    assert_eq!(backup.hits(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_optional_stage_that_fails_is_skipped() {
    let down = closed_port();
    let b = Agent::start(vec![Reply::Json(json!({"ok": true}))]).await;
    let s = engine(
        &[(
            "default",
            r#"
            [[stages]]
            name = "enrich"
            agent = "down"
            optional = true
            [[stages]]
            name = "answer"
            agent = "b"
            "#,
        )],
        vec![
            (
                "down",
                agent_config(format!("http://{down}").parse().unwrap()),
            ),
            ("b", agent_config(b.url())),
        ],
        EngineSettings::default(),
    );
    let record = s.engine.submit(input("q")).unwrap().finished().await;
    assert_eq!(record.status, QueryStatus::Completed);
    assert_eq!(result(&record), Some(json!({"answer": {"ok": true}})));
    let enrich = &record.stages[0];
    assert_eq!(enrich.status, StageOutcome::Skipped);
    assert_eq!(
        attempts(enrich),
        [
            (1, None, Some("connect")),
            (2, None, Some("connect")),
            (3, None, Some("connect"))
        ]
    );
    assert_eq!(b.seen()[0].body["results"], json!({}));
}

const HANGING: &str = r#"
    deadline = "2s"
    [[stages]]
    name = "nlp"
    agent = "slow"
"#;

#[tokio::test(start_paused = true)]
async fn the_deadline_cuts_a_hanging_agent() {
    let slow = Agent::start(vec![Reply::Hang]).await;
    let s = engine(
        &[("default", HANGING)],
        vec![("slow", agent_config(slow.url()))],
        EngineSettings::default(),
    );
    let sub = s.engine.submit(input("q")).unwrap();
    let id = sub.query_id.clone();
    let record = sub.finished().await;
    assert_eq!(record.status, QueryStatus::Failed);
    assert_eq!(record.failure(), Some(ErrorKind::Deadline));
    let error = record.error.as_ref().unwrap();
    assert_eq!(
        (error.stage.as_str(), error.kind.as_str()),
        ("nlp", "deadline")
    );
    assert_eq!(record.duration_ms, Some(2000));
    assert_eq!(record.retry_after(), None);
    assert_eq!(attempts(&record.stages[0]), [(1, None, Some("deadline"))]);
    assert_eq!(record.stages[0].attempts[0].duration_ms, 2000);
    assert_eq!(record.stages[0].status, StageOutcome::Failed);
    support::until(|| slow.dropped() == 1).await;

    let events = support::brief(&support::events(&s.hub, &id).await);
    assert_eq!(
        events,
        [
            "nlp:started@0",
            "nlp:error/deadline",
            "nlp:failed@0",
            "failed"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn after_the_deadline_static_fallbacks_still_apply_and_agent_ones_do_not() {
    let slow = Agent::start(vec![Reply::Hang]).await;
    let backup = Agent::start(vec![Reply::Json(json!({}))]).await;
    let s = engine(
        &[(
            "default",
            r#"
            deadline = "2s"
            [[stages]]
            name = "nlp"
            agent = "slow"
            fallback = [ { agent = "backup" }, { static = "canned" } ]
            [[stages]]
            name = "extra"
            agent = "backup"
            optional = true
            "#,
        )],
        vec![
            ("slow", agent_config(slow.url())),
            ("backup", agent_config(backup.url())),
        ],
        EngineSettings::default(),
    );
    let record = s.engine.submit(input("q")).unwrap().finished().await;
    assert_eq!(record.status, QueryStatus::Completed, "{record:?}");
    assert_eq!(result(&record), Some(json!({"nlp": "canned"})));
    assert_eq!(record.stages[0].fallback.as_deref(), Some("static"));
    assert_eq!(record.stages[1].status, StageOutcome::Skipped);
    assert_eq!(record.stages[1].attempts, []);
    assert_eq!(backup.hits(), 0, "no time was left for agent calls");
    assert_eq!(record.duration_ms, Some(2000));
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_fails_the_query_with_retry_after() {
    let flaky = Agent::start(vec![Reply::Status(503)]).await;
    let mut cfg = agent_config(flaky.url());
    cfg.retry.max_attempts = 1;
    cfg.circuit_breaker.consecutive_failures = 1;
    cfg.circuit_breaker.open_duration = Duration::from_secs(30);
    let s = engine(
        &[(
            "default",
            r#"
            [[stages]]
            name = "nlp"
            agent = "flaky"
            "#,
        )],
        vec![("flaky", cfg)],
        EngineSettings::default(),
    );
    // The first query trips the breaker …
    let first = s.engine.submit(input("q")).unwrap().finished().await;
    assert_eq!(first.failure(), Some(ErrorKind::Status));
    assert_eq!(first.retry_after(), None);
    tokio::time::advance(Duration::from_millis(10_500)).await;
    // … the second meets it open.
    let second = s.engine.submit(input("q")).unwrap().finished().await;
    assert_eq!(second.status, QueryStatus::Failed);
    let error = second.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::CircuitOpen);
    assert_eq!(error.message, "circuit breaker for agent `flaky` is open");
    let ra = second.retry_after().unwrap();
    // About 19.5 s left of a jittered 30 s open period, rounded up.
    assert!(
        ra >= Duration::from_secs(15) && ra <= Duration::from_secs(20),
        "{ra:?}"
    );
    assert_eq!(ra.subsec_nanos(), 0);
    assert_eq!(
        attempts(&second.stages[0]),
        [(1, None, Some("circuit_open"))]
    );
    assert_eq!(flaky.hits(), 1, "an open breaker never reaches the agent");
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_goes_straight_to_the_fallback() {
    let primary = Agent::start(vec![Reply::Json(json!({}))]).await;
    let backup = Agent::start(vec![Reply::Json(json!({"intent": "b"}))]).await;
    let s = engine(
        &[("default", WITH_FALLBACKS)],
        vec![
            ("primary", agent_config(primary.url())),
            ("backup", agent_config(backup.url())),
        ],
        EngineSettings::default(),
    );
    s.engine.agents()["primary"]
        .breaker()
        .force_open(Some(Duration::from_secs(60)));
    let record = s.engine.submit(input("q")).unwrap().finished().await;
    assert_eq!(record.status, QueryStatus::Completed);
    assert_eq!(result(&record), Some(json!({"nlp": {"intent": "b"}})));
    let stage = &record.stages[0];
    assert_eq!(stage.fallback.as_deref(), Some("backup"));
    assert_eq!(
        attempts(stage),
        [(1, None, Some("circuit_open")), (1, Some(200), None)]
    );
    assert_eq!(primary.hits(), 0);
    assert_eq!(
        record.duration_ms,
        Some(0),
        "no backoff before the fallback"
    );
}

#[tokio::test(start_paused = true)]
async fn the_retry_allowance_is_shared_by_all_stages() {
    let a = Agent::start(vec![Reply::Status(503), Reply::Json(json!(1))]).await;
    let b = Agent::start(vec![Reply::Status(503), Reply::Json(json!(2))]).await;
    let src = format!("retry_allowance = 1\n{TWO_STAGES}");
    let s = engine(
        &[("default", src.as_str())],
        vec![("a", agent_config(a.url())), ("b", agent_config(b.url()))],
        EngineSettings::default(),
    );
    let record = s.engine.submit(input("q")).unwrap().finished().await;
    // Stage one used the only retry; stage two's 503 cannot be retried.
    assert_eq!(record.stages[0].attempts.len(), 2);
    assert_eq!(
        attempts(&record.stages[1]),
        [(1, Some(503), Some("status"))]
    );
    assert_eq!((a.hits(), b.hits()), (2, 1));
    assert_eq!(record.status, QueryStatus::Failed);
    let error = record.error.unwrap();
    assert_eq!(
        (error.stage.as_str(), error.kind.as_str()),
        ("answer", "status")
    );
    assert_eq!(error.message, "agent `b` answered 503");
    // The failed stage is in the record, after the completed one.
    assert_eq!(record.stages[1].status, StageOutcome::Failed);
    assert!(record.result.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_2xx_that_is_not_json_is_a_bad_response() {
    let a = Agent::start(vec![Reply::Text("<html>hello</html>")]).await;
    let s = engine(
        &[(
            "default",
            r#"
            [[stages]]
            name = "nlp"
            agent = "a"
            "#,
        )],
        vec![("a", agent_config(a.url()))],
        EngineSettings::default(),
    );
    let record = s.engine.submit(input("q")).unwrap().finished().await;
    assert_eq!(record.status, QueryStatus::Failed);
    let error = record.error.as_ref().unwrap();
    assert_eq!(record.failure(), Some(ErrorKind::BadResponse));
    assert!(
        !error.message.contains("expected"),
        "no parser internals: {}",
        error.message
    );
    assert_eq!(
        attempts(&record.stages[0]),
        [(1, None, Some("bad_response"))]
    );
    assert_eq!(a.hits(), 1, "a bad response is not retried");
    let json: Value = serde_json::to_value(&record).unwrap();
    assert_eq!(json["error"]["kind"], "bad_response");
    assert!(json.get("result").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_4xx_answer_fails_the_stage_with_kind_status() {
    let a = Agent::start(vec![Reply::Status(404)]).await;
    let s = engine(
        &[(
            "default",
            r#"
            [[stages]]
            name = "nlp"
            agent = "a"
            weight = 10
            fallback = [ { static = {} } ]
            "#,
        )],
        vec![("a", agent_config(a.url()))],
        EngineSettings::default(),
    );
    let sub = s.engine.submit(input("q")).unwrap();
    let id = sub.query_id.clone();
    let record = sub.finished().await;
    assert_eq!(record.stages[0].fallback.as_deref(), Some("static"));
    assert_eq!(
        attempts(&record.stages[0]),
        [(1, Some(404), Some("status"))]
    );
    // Progress never goes back, even though the agent stack called the 404 "completed".
    let events = support::events(&s.hub, &id).await;
    let progress: Vec<u64> = events
        .iter()
        .filter_map(|e| e["progress"].as_u64())
        .collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
}
