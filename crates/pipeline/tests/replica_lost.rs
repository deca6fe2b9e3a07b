//! How the engine ends a query whose replica was lost (SPEC §9), when its backend picks
//! it as the one survivor: the record is marked failed (`replica_lost`, at the stage
//! that was running), and the terminal event matches it.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use agentgate_pipeline::{EngineSettings, ErrorKind, QueryRecord, QueryStatus};
use agentgate_progress::{
    Backend, BackendError, BackendHealth, BoxFuture, Ending, ErrorInfo, EventKind, HubConfig,
    HubStats, LostQuery, MemoryHub, OpenError, QueryControl, QueryPublisher, Quota, QuotaRefusal,
    SubscribeError, Subscription,
};
use serde_json::json;
use support::{agent_config, closed_port};

/// A backend that keeps the control the engine hands it, to act as the survivor's
/// backend does; everything else is the memory hub's.
#[derive(Debug)]
struct Survivor {
    hub: MemoryHub,
    control: Mutex<Option<Arc<dyn QueryControl>>>,
}

impl Survivor {
    fn end_lost(&self, lost: &LostQuery<'_>) -> Ending {
        let control = self
            .control
            .lock()
            .unwrap()
            .clone()
            .expect("the engine set itself");
        control.end_lost(lost)
    }
}

impl Backend for Survivor {
    fn open(&self, query_id: &str) -> Result<QueryPublisher, OpenError> {
        self.hub.open(query_id)
    }
    fn subscribe<'a>(
        &'a self,
        query_id: &'a str,
        after_seq: u64,
    ) -> BoxFuture<'a, Result<Subscription, SubscribeError>> {
        Backend::subscribe(&self.hub, query_id, after_seq)
    }
    fn is_shared(&self) -> bool {
        true
    }
    fn put_record(&self, _: &str, _: String, _: bool) {}
    fn record<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<String>, BackendError>> {
        Backend::record(&self.hub, id)
    }
    fn cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Backend::cancel(&self.hub, id)
    }
    fn set_control(&self, control: Arc<dyn QueryControl>) {
        *self.control.lock().unwrap() = Some(control);
    }
    fn health(&self) -> BackendHealth {
        Backend::health(&self.hub)
    }
    fn stats(&self) -> HubStats {
        self.hub.stats()
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        Backend::close(&self.hub)
    }
    fn admit<'a>(
        &'a self,
        client: &'a str,
        query_id: &'a str,
        quota: Quota,
        hold: Duration,
    ) -> BoxFuture<'a, Result<(), QuotaRefusal>> {
        Backend::admit(&self.hub, client, query_id, quota, hold)
    }
    fn release(&self, client: &str, query_id: &str) {
        Backend::release(&self.hub, client, query_id)
    }
}

/// An engine (whose agent is never called) on a [`Survivor`] backend.
fn survivor() -> (agentgate_pipeline::Engine, Arc<Survivor>) {
    let backend = Arc::new(Survivor {
        hub: MemoryHub::new(HubConfig::default()),
        control: Mutex::new(None),
    });
    let agent = agentgate_agent_client::AgentClient::new(
        "nlp",
        agent_config(format!("http://{}", closed_port()).parse().unwrap()),
    )
    .unwrap();
    let pipeline = support::pipeline(
        r#"
        [[stages]]
        name = "understand"
        agent = "nlp"
        path = "/a"
        [[stages]]
        name = "answer"
        agent = "nlp"
        path = "/b"
        "#,
    );
    let engine = agentgate_pipeline::Engine::new(
        [("default".to_owned(), pipeline)].into(),
        [("nlp".to_owned(), agent)].into(),
        backend.clone(),
        EngineSettings::default(),
    );
    (engine, backend)
}

#[tokio::test]
async fn a_running_record_is_marked_failed_at_the_running_stage() {
    let (_engine, backend) = survivor();
    // The lost replica had finished the first stage.
    let record = json!({"query_id": "q", "status": "running", "pipeline": "default",
        "stages": [{"name": "understand", "status": "completed", "agent": "nlp",
            "attempts": [{"attempt": 1, "status": 200, "duration_ms": 5}], "duration_ms": 5}]})
    .to_string();
    let started = SystemTime::now() - Duration::from_secs(3);
    let lost = LostQuery::new("q", "lost-1", Some(&record), Some(started), None);
    let ending = backend.end_lost(&lost);

    assert_eq!(
        ending,
        Ending {
            record: ending.record.clone(),
            ..Ending::replica_lost(Some("answer".to_owned()))
        }
    );
    let EventKind::Failed { error } = &ending.event else {
        panic!("{ending:?}");
    };
    assert_eq!(error.kind, ErrorKind::ReplicaLost.as_str());
    let record: QueryRecord = serde_json::from_str(ending.record.as_deref().unwrap()).unwrap();
    assert_eq!(record.status, QueryStatus::Failed);
    assert_eq!(record.failure(), Some(ErrorKind::ReplicaLost));
    let failed = record.error.as_ref().unwrap();
    assert_eq!(
        (failed.stage.as_str(), failed.message.as_str()),
        ("answer", Ending::LOST_MESSAGE)
    );
    assert_eq!(record.stages.len(), 1, "the finished stage stays");
    let took = record.duration_ms.unwrap();
    assert!(
        (3000..60_000).contains(&took),
        "from its first event: {took}"
    );

    // Its last event names the stage it was in: that one, whatever the record says.
    let running = record_json();
    let lost = LostQuery::new("q", "lost-1", Some(&running), None, Some("understand"));
    let ending = backend.end_lost(&lost);
    assert_eq!(
        ending.event,
        Ending::replica_lost(Some("understand".to_owned())).event
    );
    let record: QueryRecord = serde_json::from_str(ending.record.as_deref().unwrap()).unwrap();
    assert_eq!(record.error.unwrap().stage, "understand");
    assert_eq!(
        record.duration_ms, None,
        "its first event is no longer known"
    );
}

fn record_json() -> String {
    json!({"query_id": "q", "status": "running", "pipeline": "default", "stages": []}).to_string()
}

#[tokio::test]
async fn a_record_that_had_ended_gives_its_own_terminal_event() {
    let (_engine, backend) = survivor();
    let record = json!({"query_id": "q", "status": "failed", "pipeline": "default",
        "error": {"stage": "understand", "kind": "timeout", "message": "too slow"},
        "stages": [], "duration_ms": 9})
    .to_string();
    let ending = backend.end_lost(&LostQuery::new("q", "lost-1", Some(&record), None, None));
    assert_eq!(
        ending,
        Ending {
            event: EventKind::Failed {
                error: ErrorInfo {
                    stage: Some("understand".to_owned()),
                    kind: "timeout".to_owned(),
                    message: "too slow".to_owned(),
                }
            },
            record: None,
        }
    );
}

#[tokio::test]
async fn without_a_readable_record_the_query_still_ends_and_gets_one() {
    let (_engine, backend) = survivor();
    for record in [None, Some("{not json")] {
        let lost = LostQuery::new("q", "lost-1", record, None, Some("answer"));
        let ending = backend.end_lost(&lost);
        assert_eq!(
            ending.event,
            Ending::replica_lost(Some("answer".to_owned())).event
        );
        let record: QueryRecord = serde_json::from_str(ending.record.as_deref().unwrap()).unwrap();
        assert_eq!(
            (record.status, record.pipeline.as_str()),
            (QueryStatus::Failed, "")
        );
        assert_eq!(record.failure(), Some(ErrorKind::ReplicaLost));
    }
}
