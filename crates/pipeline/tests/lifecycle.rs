//! A query's life as the gateway sees it: submit, read while running, cancel, drain,
//! its progress events, records retention and the figures.

mod support;

use std::time::Duration;

use agentgate_pipeline::{
    Caller, CancelError, EngineSettings, QueryInput, QueryStatus, StageOutcome, SubmitError,
};
use serde_json::json;
use support::{agent_config, engine, Agent, Reply};

const ONE_STAGE: &str = r#"
    [[stages]]
    name = "nlp"
    agent = "a"
"#;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[tokio::test(start_paused = true)]
async fn submit_returns_at_once_and_the_record_follows_the_query() {
    let a = Agent::start(vec![Reply::After(
        ms(500),
        Box::new(Reply::Json(json!({"x": 1}))),
    )])
    .await;
    let s = engine(
        &[("default", ONE_STAGE)],
        vec![("a", agent_config(a.url()))],
        EngineSettings::default(),
    );
    let sub = s.engine.submit(QueryInput::new("q")).unwrap();
    let id = sub.query_id.clone();

    let running = s.engine.get(&id).unwrap();
    assert_eq!(running.status, QueryStatus::Running);
    assert_eq!(running.failure(), None);
    assert!(running.stages.is_empty() && running.duration_ms.is_none());
    let json = serde_json::to_value(&running).unwrap();
    assert_eq!(
        json,
        json!({"query_id": id, "status": "running", "pipeline": "default", "stages": []})
    );
    assert_eq!(s.engine.stats().in_flight, 1);

    let done = sub.finished().await;
    assert_eq!(done.status, QueryStatus::Completed);
    assert_eq!(done.duration_ms, Some(500));
    assert_eq!(s.engine.get(&id), Some(done));
    assert_eq!(s.engine.stats().in_flight, 0);
    assert!(s.engine.get("no-such-query").is_none());
}

#[tokio::test(start_paused = true)]
async fn cancel_stops_the_query_and_drops_the_agent_request() {
    let a = Agent::start(vec![Reply::Hang]).await;
    let s = engine(
        &[("default", ONE_STAGE)],
        vec![("a", agent_config(a.url()))],
        EngineSettings::default(),
    );
    let sub = s.engine.submit(QueryInput::new("q")).unwrap();
    let id = sub.query_id.clone();
    support::until(|| a.hits() == 1).await;

    let record = support::cancel(&s.engine, &id).await.unwrap();
    assert_eq!(record.status, QueryStatus::Cancelled);
    assert!(record.duration_ms.is_some());
    assert_eq!(record.failure(), None);
    // The request in flight is abandoned, and nothing more is sent.
    support::until(|| a.dropped() == 1).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(a.hits(), 1);

    assert_eq!(sub.finished().await.status, QueryStatus::Cancelled);
    assert_eq!(s.engine.get(&id).unwrap().status, QueryStatus::Cancelled);
    match support::cancel(&s.engine, &id).await {
        Err(CancelError::AlreadyFinished(r)) => assert_eq!(r.status, QueryStatus::Cancelled),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        support::cancel(&s.engine, "nope").await,
        Err(CancelError::NotFound)
    ));

    let events = support::brief(&support::events(&s.hub, &id).await);
    assert_eq!(events, ["nlp:started@0", "cancelled"]);
    let stats = s.engine.stats();
    assert_eq!((stats.total, stats.cancelled, stats.in_flight), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_whole_query_publishes_gap_free_monotonic_events_ending_at_100() {
    let a = Agent::start(vec![
        Reply::Status(503),
        Reply::Json(json!({"intent": "x"})),
    ])
    .await;
    let b = Agent::start(vec![Reply::Status(500)]).await;
    let c = Agent::start(vec![Reply::Status(502)]).await;
    let mut no_retry = agent_config(c.url());
    no_retry.retry.max_attempts = 1;
    let s = engine(
        &[(
            "default",
            r#"
            [[stages]]
            name = "nlp"
            agent = "a"
            weight = 30
            [[stages]]
            name = "search"
            agent = "c"
            weight = 20
            optional = true
            [[stages]]
            name = "answer"
            agent = "b"
            weight = 50
            fallback = [ { static = { text = "sorry" } } ]
            "#,
        )],
        vec![
            ("a", agent_config(a.url())),
            ("b", agent_config(b.url())),
            ("c", no_retry),
        ],
        EngineSettings::default(),
    );
    let sub = s.engine.submit(QueryInput::new("q")).unwrap();
    let id = sub.query_id.clone();
    let record = sub.finished().await;
    assert_eq!(record.status, QueryStatus::Completed);
    let stages: Vec<_> = record.stages.iter().map(|s| s.status).collect();
    assert_eq!(
        stages,
        [
            StageOutcome::Completed,
            StageOutcome::Skipped,
            StageOutcome::Fallback
        ]
    );

    let events = support::events(&s.hub, &id).await;
    assert_eq!(
        support::brief(&events),
        [
            "nlp:started@0",
            "nlp:error/status",
            "nlp:retrying@0",
            "nlp:completed@30",
            "search:started@30",
            "search:error/status",
            "search:skipped@50",
            "answer:started@50",
            "answer:error/status",
            "answer:fallback@50",
            "answer:completed@100",
            "completed",
        ]
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    assert!(events.iter().all(|e| e["query_id"] == id.as_str()));
    assert_eq!(events[2]["attempt"], 2);
    assert_eq!(events[9]["detail"], json!({"to": "static"}));
    assert_eq!(events[10]["detail"], json!({"fallback": "static"}));
    let terminal = events.last().unwrap();
    assert_eq!(
        terminal["result"],
        json!({"nlp": {"intent": "x"}, "answer": {"text": "sorry"}})
    );
    assert_eq!(terminal["duration_ms"], 100);
    let terminals = events
        .iter()
        .filter(|e| {
            matches!(
                e["type"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
        })
        .count();
    assert_eq!(terminals, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_query_reports_the_stage_then_one_terminal_failed() {
    let a = Agent::start(vec![Reply::Json(json!(1))]).await;
    let b = Agent::start(vec![Reply::Status(500)]).await;
    let backup = Agent::start(vec![Reply::Status(500)]).await;
    let s = engine(
        &[(
            "default",
            r#"
            [[stages]]
            name = "one"
            agent = "a"
            [[stages]]
            name = "two"
            agent = "b"
            fallback = [ { agent = "backup" } ]
            "#,
        )],
        vec![
            ("a", agent_config(a.url())),
            ("b", agent_config(b.url())),
            ("backup", agent_config(backup.url())),
        ],
        EngineSettings::default(),
    );
    let sub = s.engine.submit(QueryInput::new("q")).unwrap();
    let id = sub.query_id.clone();
    let record = sub.finished().await;
    let error = record.error.clone().unwrap();
    assert_eq!(
        (error.stage.as_str(), error.kind.as_str()),
        ("two", "status")
    );
    assert_eq!(error.message, "agent `b` answered 500");
    let events = support::events(&s.hub, &id).await;
    assert_eq!(
        support::brief(&events),
        [
            "one:started@0",
            "one:completed@50",
            "two:started@50",
            "two:error/status",
            "two:fallback@50",
            "two:started@50",
            "two:error/status",
            "two:failed@50",
            "failed",
        ]
    );
    assert_eq!(
        events.last().unwrap()["error"],
        json!({"stage": "two", "kind": "status", "message": "agent `b` answered 500"})
    );
    assert_eq!(events[4]["detail"], json!({"to": "backup"}));
}

#[tokio::test(start_paused = true)]
async fn records_are_kept_for_the_retention_and_up_to_max_records() {
    let a = Agent::start(vec![Reply::Json(json!({}))]).await;
    let settings = EngineSettings {
        retention: Duration::from_secs(60),
        max_records: 2,
        ..EngineSettings::default()
    };
    let s = engine(
        &[("default", ONE_STAGE)],
        vec![("a", agent_config(a.url()))],
        settings,
    );
    let mut ids = Vec::new();
    for _ in 0..3 {
        let sub = s.engine.submit(QueryInput::new("q")).unwrap();
        ids.push(sub.query_id.clone());
        sub.finished().await;
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert!(s.engine.get(&ids[0]).is_none(), "oldest finished evicted");
    assert!(s.engine.get(&ids[1]).is_some() && s.engine.get(&ids[2]).is_some());

    // A running query is never evicted, even beyond max_records.
    let hang = Agent::start(vec![Reply::Hang]).await;
    let s2 = engine(
        &[("default", ONE_STAGE)],
        vec![("a", agent_config(hang.url()))],
        EngineSettings {
            max_records: 0,
            ..EngineSettings::default()
        },
    );
    let running = s2.engine.submit(QueryInput::new("q")).unwrap();
    assert_eq!(
        s2.engine.get(&running.query_id).unwrap().status,
        QueryStatus::Running
    );

    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(
        s.engine.get(&ids[1]).is_none() && s.engine.get(&ids[2]).is_none(),
        "retention over"
    );
}

#[tokio::test(start_paused = true)]
async fn stats_count_outcomes_and_latency() {
    let fast = Agent::start(vec![Reply::After(
        ms(100),
        Box::new(Reply::Json(json!({}))),
    )])
    .await;
    let slow = Agent::start(vec![Reply::After(
        ms(300),
        Box::new(Reply::Json(json!({}))),
    )])
    .await;
    let bad = Agent::start(vec![Reply::After(ms(200), Box::new(Reply::Status(404)))]).await;
    let stage = |agent: &str| format!("[[stages]]\nname = \"s\"\nagent = \"{agent}\"");
    let (f, sl, b) = (stage("fast"), stage("slow"), stage("bad"));
    let s = engine(
        &[
            ("fast", f.as_str()),
            ("slow", sl.as_str()),
            ("bad", b.as_str()),
        ],
        vec![
            ("fast", agent_config(fast.url())),
            ("slow", agent_config(slow.url())),
            ("bad", agent_config(bad.url())),
        ],
        EngineSettings::default(),
    );
    assert_eq!(s.engine.pipeline_names(), ["bad", "fast", "slow"]);
    let zero = s.engine.stats();
    assert_eq!((zero.total, zero.success_rate, zero.p99_ms), (0, 1.0, 0.0));
    let run = |p: &str| QueryInput {
        pipeline: Some(p.to_owned()),
        ..QueryInput::new("q")
    };
    for p in ["fast", "fast", "slow", "bad"] {
        s.engine.submit(run(p)).unwrap().finished().await;
    }
    let stats = s.engine.stats();
    assert_eq!(
        (
            stats.total,
            stats.completed,
            stats.failed,
            stats.cancelled,
            stats.in_flight
        ),
        (4, 3, 1, 0, 0)
    );
    assert_eq!(stats.success_rate, 0.75);
    assert_eq!(stats.avg_duration_ms, 175.0);
    assert_eq!(
        (stats.p50_ms, stats.p95_ms, stats.p99_ms),
        (100.0, 300.0, 300.0)
    );
}

#[tokio::test(start_paused = true)]
async fn submit_refuses_unknown_pipelines_and_work_after_close() {
    let a = Agent::start(vec![Reply::Json(json!({}))]).await;
    let s = engine(
        &[("main", ONE_STAGE)],
        vec![("a", agent_config(a.url()))],
        EngineSettings::default(),
    );
    // No pipeline named, and no "default" configured.
    assert_eq!(
        s.engine.submit(QueryInput::new("q")).unwrap_err(),
        SubmitError::UnknownPipeline("default".into())
    );
    let other = QueryInput {
        pipeline: Some("other".into()),
        ..QueryInput::new("q")
    };
    let err = s.engine.submit(other).unwrap_err();
    assert_eq!(err.to_string(), "unknown pipeline `other`");
    let main = QueryInput {
        pipeline: Some("main".into()),
        ..QueryInput::new("q")
    };
    assert!(s.engine.submit(main.clone()).is_ok());
    s.engine.close();
    assert_eq!(
        s.engine.submit(main).unwrap_err(),
        SubmitError::ShuttingDown
    );
    assert_eq!(s.engine.stats().total, 1);
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_running_queries_then_cancels_the_rest() {
    let quick = Agent::start(vec![Reply::After(
        ms(300),
        Box::new(Reply::Json(json!({}))),
    )])
    .await;
    let hang = Agent::start(vec![Reply::Hang]).await;
    let s = engine(
        &[
            ("quick", "[[stages]]\nname = \"s\"\nagent = \"quick\""),
            ("hang", "[[stages]]\nname = \"s\"\nagent = \"hang\""),
        ],
        vec![
            ("quick", agent_config(quick.url())),
            ("hang", agent_config(hang.url())),
        ],
        EngineSettings::default(),
    );
    let q = |p: &str| QueryInput {
        pipeline: Some(p.to_owned()),
        ..QueryInput::new("q")
    };
    let quick_q = s.engine.submit(q("quick")).unwrap();
    let hang_q = s.engine.submit(q("hang")).unwrap();
    let hang_id = hang_q.query_id.clone();

    let start = tokio::time::Instant::now();
    s.engine.drain(Duration::from_secs(1)).await;
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(quick_q.finished().await.status, QueryStatus::Completed);
    assert_eq!(hang_q.finished().await.status, QueryStatus::Cancelled);
    assert_eq!(
        s.engine.submit(q("quick")).unwrap_err(),
        SubmitError::ShuttingDown
    );
    let events = support::brief(&support::events(&s.hub, &hang_id).await);
    assert_eq!(events.last().unwrap(), "cancelled");

    // With nothing running, drain returns at once.
    let start = tokio::time::Instant::now();
    s.engine.drain(Duration::from_secs(30)).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[test]
fn query_input_from_json() {
    let q: QueryInput = serde_json::from_value(json!({
        "type": "query", "request_id": "r1", "query": "hi", "context": {"k": 1}, "pipeline": "p"
    }))
    .unwrap();
    assert_eq!(q.query, "hi");
    assert_eq!(q.context["k"], 1);
    assert_eq!(q.pipeline.as_deref(), Some("p"));
    assert_eq!(q.traceparent, None);
    let bare: QueryInput = serde_json::from_value(json!({"query": "x"})).unwrap();
    assert!(bare.context.is_empty() && bare.pipeline.is_none());
    assert!(serde_json::from_value::<QueryInput>(json!({"context": {}})).is_err());
}

#[test]
fn the_api_is_usable_from_axum_handlers() {
    fn send_sync<T: Send + Sync + Clone + 'static>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<agentgate_pipeline::Engine>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = engine(
            &[("default", ONE_STAGE)],
            vec![("a", agent_config("http://127.0.0.1:9".parse().unwrap()))],
            EngineSettings::default(),
        );
        s.engine.close();
        let _ = s.engine.submit(QueryInput::new("q"));
        let drain = s.engine.drain(Duration::ZERO);
        send(&drain);
        drain.await;
        let (record, subscribe) = (
            s.engine.record("q", Caller::Anyone),
            s.engine.subscribe("q", 0, Caller::Anyone),
        );
        let cancel = s.engine.cancel("q", Duration::from_secs(2), Caller::Anyone);
        send(&record);
        send(&subscribe);
        send(&cancel);
        assert!(matches!(cancel.await, Err(CancelError::NotFound)));
    });
}

#[tokio::test(start_paused = true)]
async fn finished_futures_are_send_and_records_round_trip() {
    fn send<T: Send>(_: &T) {}
    let a = Agent::start(vec![Reply::Status(503)]).await;
    let mut cfg = agent_config(a.url());
    cfg.retry.max_attempts = 1;
    let s = engine(
        &[("default", ONE_STAGE)],
        vec![("a", cfg)],
        EngineSettings::default(),
    );
    let finished = s.engine.submit(QueryInput::new("q")).unwrap().finished();
    send(&finished);
    let record = finished.await;
    let back: agentgate_pipeline::QueryRecord =
        serde_json::from_value(serde_json::to_value(&record).unwrap()).unwrap();
    assert_eq!(back, record);
}

#[tokio::test(start_paused = true)]
async fn records_and_events_are_read_through_the_backend() {
    let a = Agent::start(vec![Reply::After(ms(50), Box::new(Reply::Json(json!({}))))]).await;
    let s = engine(
        &[("default", ONE_STAGE)],
        vec![("a", agent_config(a.url()))],
        EngineSettings::default(),
    );
    let sub = s.engine.submit(QueryInput::new("q")).unwrap();
    let id = sub.query_id.clone();
    let mut events = s.engine.subscribe(&id, 0, Caller::Anyone).await.unwrap();
    let done = sub.finished().await;
    assert_eq!(
        s.engine.record(&id, Caller::Anyone).await.unwrap(),
        Some(done)
    );
    let mut types = Vec::new();
    while let Some(agentgate_progress::SubscriptionItem::Event(e)) = events.recv().await {
        types.push(e.event().kind.type_name());
    }
    assert_eq!(types, ["progress", "progress", "completed"]);

    // In one process, a query the engine does not know is unknown everywhere.
    assert_eq!(s.engine.record("nope", Caller::Anyone).await.unwrap(), None);
    assert!(matches!(
        s.engine.subscribe("nope", 0, Caller::Anyone).await,
        Err(agentgate_progress::SubscribeError::UnknownQuery(q)) if q == "nope"
    ));
    let health = s.engine.backend().health();
    assert_eq!((health.name, health.connected), ("memory", true));
    assert!(!s.engine.backend().is_shared());
}

/// Cancels racing with completions on a multi-threaded runtime: every query still ends
/// exactly once, and its record agrees with its terminal event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_racing_completion_ends_each_query_once() {
    let a = Agent::start(vec![Reply::After(ms(2), Box::new(Reply::Json(json!({}))))]).await;
    let s = engine(
        &[("default", ONE_STAGE)],
        vec![("a", agent_config(a.url()))],
        EngineSettings::default(),
    );
    let mut subs = Vec::new();
    for i in 0..60u64 {
        let sub = s.engine.submit(QueryInput::new("q")).unwrap();
        let (engine, id) = (s.engine.clone(), sub.query_id.clone());
        tokio::spawn(async move {
            tokio::time::sleep(ms(i % 6)).await;
            let _ = support::cancel(&engine, &id).await;
        });
        subs.push(sub);
    }
    for sub in subs {
        let id = sub.query_id.clone();
        let record = sub.finished().await;
        let events = support::events(&s.hub, &id).await;
        let terminals: Vec<_> = events
            .iter()
            .filter_map(|e| e["type"].as_str())
            .filter(|t| matches!(*t, "completed" | "failed" | "cancelled"))
            .collect();
        assert_eq!(terminals, [record.status.as_str()], "{id}");
        assert_eq!(s.engine.get(&id).unwrap(), record);
    }
    let stats = s.engine.stats();
    assert_eq!(
        (stats.completed + stats.cancelled, stats.in_flight),
        (60, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn live_lists_running_queries_oldest_first_with_their_stage() {
    let fast = Agent::start(vec![Reply::Json(json!({"n": 1})); 4]).await;
    let slow = Agent::start(vec![Reply::Hang, Reply::Hang, Reply::Hang]).await;
    let two_stages = r#"
        [[stages]]
        name = "first"
        agent = "fast"
        weight = 1
        [[stages]]
        name = "second"
        agent = "slow"
        weight = 3
    "#;
    let s = engine(
        &[("default", two_stages)],
        vec![
            ("fast", agent_config(fast.url())),
            ("slow", agent_config(slow.url())),
        ],
        EngineSettings::default(),
    );
    assert!(s.engine.live(10).is_empty());
    let a = s.engine.submit(QueryInput::new("a")).unwrap();
    support::until(|| slow.hits() == 1).await;
    tokio::time::advance(ms(100)).await;
    let b = s.engine.submit(QueryInput::new("b")).unwrap();
    support::until(|| slow.hits() == 2).await;

    let live = s.engine.live(10);
    assert_eq!(live.len(), 2);
    assert_eq!(live[0].query_id, a.query_id);
    assert_eq!(live[1].query_id, b.query_id);
    assert!(live[0].elapsed_ms >= live[1].elapsed_ms + 100);
    assert_eq!(live[0].stage.as_deref(), Some("second"));
    assert_eq!((live[0].stages_done, live[0].stages_total), (1, 2));
    assert_eq!(live[0].progress, 25);
    assert_eq!(s.engine.live(1).len(), 1);

    support::cancel(&s.engine, &a.query_id).await.unwrap();
    let live = s.engine.live(10);
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].query_id, b.query_id);
    let json = serde_json::to_value(&live[0]).unwrap();
    assert_eq!(json["pipeline"], "default");
    assert_eq!(json["stage"], "second");
}
