//! Clients (SPEC §7) and admission (SPEC §8) at the engine: each query belongs to the
//! client that started it and is invisible to the others, a client's quota and the
//! global running cap refuse before anything starts.

mod support;

use std::sync::Arc;
use std::time::Duration;

use agentgate_pipeline::{
    Caller, CancelError, Cancellation, EngineSettings, QueryInput, QueryStatus, SubmitError,
};
use agentgate_progress::{Quota, QuotaRefusal, SubscribeError};
use serde_json::json;
use support::{agent_config, engine, Agent, Reply};

const ONE_STAGE: &str = r#"
    [[stages]]
    name = "nlp"
    agent = "a"
"#;

fn of(client: &str) -> QueryInput {
    QueryInput {
        client: Some(client.to_owned()),
        ..QueryInput::new("q")
    }
}

#[tokio::test(start_paused = true)]
async fn another_clients_query_is_an_unknown_one_everywhere() {
    let a = Agent::start(vec![Reply::Hang]).await;
    let s = engine(
        &[("default", ONE_STAGE)],
        vec![("a", agent_config(a.url()))],
        EngineSettings::default(),
    );
    let mine = s.engine.submit(of("team-a")).unwrap();
    let id = mine.query_id.clone();
    let (a_, b) = (Caller::Client("team-a"), Caller::Client("team-b"));

    let record = s.engine.record(&id, a_).await.unwrap().unwrap();
    assert_eq!(record.client.as_deref(), Some("team-a"));
    assert_eq!(
        serde_json::to_value(&record).unwrap()["client"],
        json!("team-a")
    );
    assert_eq!(s.engine.record(&id, b).await.unwrap(), None);
    assert!(s
        .engine
        .record(&id, Caller::Anyone)
        .await
        .unwrap()
        .is_some());

    assert!(matches!(
        s.engine.subscribe(&id, 0, b).await,
        Err(SubscribeError::UnknownQuery(q)) if q == id
    ));
    assert!(s.engine.subscribe(&id, 0, a_).await.is_ok());

    // Another client cannot cancel it, and is told exactly what an unknown id gets.
    let theirs = s.engine.cancel(&id, Duration::ZERO, b).await;
    assert!(matches!(theirs, Err(CancelError::NotFound)));
    assert!(matches!(
        s.engine.cancel("nope", Duration::ZERO, b).await,
        Err(CancelError::NotFound)
    ));
    assert_eq!(
        s.engine.get(&id).unwrap().status,
        QueryStatus::Running,
        "still running"
    );
    let done = s.engine.cancel(&id, Duration::ZERO, a_).await.unwrap();
    assert!(matches!(done, Cancellation::Cancelled(r) if r.status == QueryStatus::Cancelled));
    // Finished: the owner hears "already finished", another client still "not found".
    assert!(matches!(
        s.engine.cancel(&id, Duration::ZERO, a_).await,
        Err(CancelError::AlreadyFinished(_))
    ));
    assert!(matches!(
        s.engine.cancel(&id, Duration::ZERO, b).await,
        Err(CancelError::NotFound)
    ));
    // A query without a client (no [auth]) is visible to no client.
    let anon = s.engine.submit(QueryInput::new("q")).unwrap();
    assert_eq!(s.engine.record(&anon.query_id, a_).await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn a_clients_running_quota_is_released_when_its_queries_end() {
    let a = Agent::start(vec![Reply::After(
        Duration::from_millis(100),
        Box::new(Reply::Json(json!({}))),
    )])
    .await;
    let s = engine(
        &[("default", ONE_STAGE)],
        vec![("a", agent_config(a.url()))],
        EngineSettings::default(),
    );
    let quota = Quota {
        max_running: Some(2),
        rate: None,
    };
    let first = s
        .engine
        .submit_with_quota(of("team-a"), quota)
        .await
        .unwrap();
    let second = s
        .engine
        .submit_with_quota(of("team-a"), quota)
        .await
        .unwrap();
    let refused = s.engine.submit_with_quota(of("team-a"), quota).await;
    assert_eq!(
        refused.unwrap_err(),
        SubmitError::Quota(QuotaRefusal::TooManyQueries)
    );
    assert_eq!(s.engine.stats().total, 2, "nothing started for the refusal");
    // Another client is not affected.
    assert!(s
        .engine
        .submit_with_quota(of("team-b"), quota)
        .await
        .is_ok());

    // A cancelled query frees its slot as a finished one does.
    s.engine
        .cancel(&first.query_id, Duration::ZERO, Caller::Anyone)
        .await
        .unwrap();
    let third = s
        .engine
        .submit_with_quota(of("team-a"), quota)
        .await
        .unwrap();
    second.finished().await;
    third.finished().await;
    for _ in 0..2 {
        assert!(s
            .engine
            .submit_with_quota(of("team-a"), quota)
            .await
            .is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_cap_admits_exactly_max_running_when_submits_race() {
    let a = Agent::start(vec![Reply::Hang]).await;
    let s = engine(
        &[("default", ONE_STAGE)],
        vec![("a", agent_config(a.url()))],
        EngineSettings {
            max_running: 5,
            ..EngineSettings::default()
        },
    );
    let engine = Arc::new(s.engine.clone());
    let quota = Quota {
        max_running: Some(100),
        rate: None,
    };
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let client = if i % 2 == 0 { "a" } else { "b" };
                engine.submit_with_quota(of(client), quota).await
            })
        })
        .collect();
    let (mut admitted, mut overloaded) = (Vec::new(), 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(sub) => admitted.push(sub.query_id),
            Err(SubmitError::Overloaded(5)) => overloaded += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((admitted.len(), overloaded), (5, 45));
    assert_eq!(engine.stats().in_flight, 5);
    // One ends: one more place.
    engine
        .cancel(&admitted[0], Duration::ZERO, Caller::Anyone)
        .await
        .unwrap();
    assert!(engine.submit(QueryInput::new("q")).is_ok());
    assert!(matches!(
        engine.submit(QueryInput::new("q")),
        Err(SubmitError::Overloaded(5))
    ));
    engine.drain(Duration::ZERO).await;
}
