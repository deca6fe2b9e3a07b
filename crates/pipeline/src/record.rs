//! What a query looks like to clients (`GET /api/query/{id}`, the answer to
//! `POST /api/query`), and the store that keeps those records for `query_retention`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use agentgate_classify::AttemptRecord;
use agentgate_progress::{JsonText, QueryPublisher};

use crate::plan::Plan;
use crate::ErrorKind;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Where a query is (`status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryStatus {
    /// Stages are still running.
    Running,
    /// Every stage produced an output or was skipped; `result` holds the outputs.
    Completed,
    /// A required stage failed; `error` says which and why.
    Failed,
    /// Cancelled by a client or by shutdown.
    Cancelled,
}

/// Why a query failed: SPEC's `{"stage","kind","message"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryError {
    /// The stage that failed.
    pub stage: String,
    /// Why (`status`, `connect`, `timeout`, `circuit_open`, `deadline`, …).
    pub kind: ErrorKind,
    /// A short human-readable reason; never internals.
    pub message: String,
}

/// One query as clients see it.
///
/// Also `Deserialize`, so a record can travel between replicas; `retry_after` does not
/// travel (a deserialized `circuit_open` record says 1 second).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueryRecord {
    /// The query's id (a UUID).
    pub query_id: String,
    /// Where the query is.
    pub status: QueryStatus,
    /// The pipeline it runs.
    pub pipeline: String,
    /// The client that started it (SPEC §7); absent without `[auth]`. Other clients
    /// cannot see the query at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// `{stage: output}`, when completed. Skipped stages have no entry.
    ///
    /// Kept as JSON text, shared with the query's terminal `completed` event (see
    /// [`JsonText`]); [`JsonText::to_value`] parses it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<JsonText>,
    /// Why it failed, when failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<QueryError>,
    /// The stages finished so far, in order.
    pub stages: Vec<StageRecord>,
    /// Wall time from submit to the end, when finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// When the breaker that failed the query lets probes through again.
    #[serde(skip, default)]
    retry_at: Option<Instant>,
}

/// How a stage ended (`stages[].status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageOutcome {
    /// The stage's own agent answered.
    Completed,
    /// A fallback (another agent, or the static value) supplied the output.
    Fallback,
    /// An optional stage failed and the query went on without it.
    Skipped,
    /// The stage failed, and with it the query.
    Failed,
}

/// One stage of a query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    /// The stage's name.
    pub name: String,
    /// How it ended.
    pub status: StageOutcome,
    /// The stage's own agent (fallback agents are named in `fallback`).
    pub agent: String,
    /// Every attempt made for the stage: the stage's agent's first, then each fallback
    /// agent's, in order (`attempt` restarts at 1 for each agent).
    pub attempts: Vec<AttemptJson>,
    /// The fallback that supplied the output: an agent's name or `"static"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Wall time of the stage, fallbacks included.
    pub duration_ms: u64,
}

/// One attempt: `{"attempt","status"?,"error"?,"duration_ms"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptJson {
    /// 1-based, per agent call.
    pub attempt: u32,
    /// The status the agent answered with, if it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why the attempt failed: a failure class (`status` for any answer that is not
    /// 2xx), `circuit_open`, or `deadline` for an attempt cut off by the query deadline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorKind>,
    /// How long the attempt took.
    pub duration_ms: u64,
}

/// The records of running and recently finished queries.
///
/// Running records are never evicted. Finished ones are dropped once older than
/// `retention`, and the oldest finished go first whenever more than `max_records`
/// records, or more than about `max_bytes` of finished ones, are held.
///
/// A finished query may be held for minutes, up to `max_records` of them, so it keeps
/// only its record (whose result is shared text, see [`JsonText`]); the id that keys
/// it is shared with the eviction queue and the progress hub.
#[derive(Debug)]
pub(crate) struct Records {
    retention: Duration,
    max_records: usize,
    max_bytes: usize,
    /// Boxed: a map keeps spare slots (up to half of them empty after it grows), and an
    /// empty slot then costs a pointer, not a whole entry.
    entries: HashMap<Arc<str>, Box<Entry>>,
    /// Finished queries, oldest first, with the bytes each holds (about).
    finished: VecDeque<(Instant, Arc<str>, usize)>,
    /// Their sum.
    finished_bytes: usize,
}

/// One query's record, and while it runs, what it takes to finish it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) record: QueryRecord,
    /// Taken (and dropped) when the query finishes.
    pub(crate) running: Option<Box<Running>>,
}

/// What only a running query needs.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) started: Instant,
    /// Publishes the terminal event (whoever finishes the query).
    pub(crate) publisher: QueryPublisher,
    /// Tells `Submitted::finished` the final record.
    pub(crate) done: watch::Sender<Option<QueryRecord>>,
    /// The client whose running count this query holds in the backend (released when
    /// it ends).
    pub(crate) quota_slot: Option<Arc<str>>,
    /// Stops the query's task, once it is spawned.
    pub(crate) abort: Option<AbortHandle>,
    /// The plan it runs (kept across a reload that changes its pipeline).
    pub(crate) plan: Arc<Plan>,
}

// === impl QueryStatus ===

impl QueryStatus {
    /// The SPEC name (`running`, `completed`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            QueryStatus::Running => "running",
            QueryStatus::Completed => "completed",
            QueryStatus::Failed => "failed",
            QueryStatus::Cancelled => "cancelled",
        }
    }

    /// Anything but `running`.
    pub const fn is_finished(self) -> bool {
        !matches!(self, QueryStatus::Running)
    }
}

// === impl QueryRecord ===

impl QueryRecord {
    /// A query that has just started.
    pub(crate) fn running(query_id: String, pipeline: String) -> Self {
        Self {
            query_id,
            status: QueryStatus::Running,
            pipeline,
            client: None,
            result: None,
            error: None,
            stages: Vec::new(),
            duration_ms: None,
            retry_at: None,
        }
    }

    /// About how many bytes the record holds: its text and its structures (the
    /// eviction of finished records counts this against a byte budget).
    pub(crate) fn approx_bytes(&self) -> usize {
        use std::mem::size_of;
        let text = |s: &str| s.len();
        let stages: usize = self
            .stages
            .iter()
            .map(|s| {
                size_of::<StageRecord>()
                    + text(&s.name)
                    + text(&s.agent)
                    + s.fallback.as_deref().map_or(0, text)
                    + s.attempts.capacity() * size_of::<AttemptJson>()
            })
            .sum();
        size_of::<Entry>()
            + text(&self.query_id)
            + text(&self.pipeline)
            + self.client.as_deref().map_or(0, text)
            + self.result.as_ref().map_or(0, |r| r.get().len())
            + self
                .error
                .as_ref()
                .map_or(0, |e| text(&e.stage) + text(&e.message))
            + stages
    }

    pub(crate) fn set_retry_at(&mut self, at: Option<Instant>) {
        self.retry_at = at;
    }

    /// Why the query failed, when it did.
    pub fn failure(&self) -> Option<ErrorKind> {
        match self.status {
            QueryStatus::Failed => self.error.as_ref().map(|e| e.kind),
            _ => None,
        }
    }

    /// For a query failed by a refusal (an open breaker): how long until the refusing
    /// layer lets calls through again, rounded up to whole seconds and at least 1 (what
    /// a client should wait before trying again). `None` for every other record.
    pub fn retry_after(&self) -> Option<Duration> {
        if !self.failure().is_some_and(ErrorKind::is_refusal) {
            return None;
        }
        let left = self
            .retry_at
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        Some(Duration::from_secs(secs.max(1)))
    }
}

// === impl AttemptJson ===

impl AttemptJson {
    /// An attempt as the retry layer's ledger recorded it.
    pub(crate) fn from_record(record: &AttemptRecord) -> Self {
        // Any answer but a 2xx fails the stage, even one the breaker calls a success.
        let error = ErrorKind::of_attempt(record);
        Self {
            attempt: record.attempt,
            status: record.status,
            error,
            duration_ms: millis(record.duration),
        }
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// === impl Records ===

impl Records {
    pub(crate) fn new(retention: Duration, max_records: usize, max_bytes: usize) -> Self {
        Self {
            retention,
            max_records,
            max_bytes,
            entries: HashMap::new(),
            finished: VecDeque::new(),
            finished_bytes: 0,
        }
    }

    /// Adds the record of a query that has just started, under `query_id` (the same
    /// text as `entry.record.query_id`, shared).
    pub(crate) fn insert(&mut self, query_id: Arc<str>, entry: Entry) {
        debug_assert_eq!(*query_id, entry.record.query_id);
        self.entries.insert(query_id, Box::new(entry));
        self.evict(Instant::now());
    }

    pub(crate) fn get(&self, query_id: &str) -> Option<&Entry> {
        self.entries.get(query_id).map(|e| &**e)
    }

    pub(crate) fn get_mut(&mut self, query_id: &str) -> Option<&mut Entry> {
        self.entries.get_mut(query_id).map(|e| &mut **e)
    }

    /// Every record held.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values().map(|e| &**e)
    }

    /// The ids of running queries.
    pub(crate) fn running(&self) -> Vec<String> {
        self.entries
            .values()
            .filter(|e| e.record.status == QueryStatus::Running)
            .map(|e| e.record.query_id.clone())
            .collect()
    }

    /// Records that `query_id` finished `at`, then evicts what is due.
    pub(crate) fn finished(&mut self, query_id: &str, at: Instant) {
        if let Some((id, entry)) = self.entries.get_key_value(query_id) {
            let bytes = entry.record.approx_bytes();
            self.finished.push_back((at, id.clone(), bytes));
            self.finished_bytes += bytes;
        }
        self.evict(at);
    }

    /// Drops finished records past their retention, and the oldest finished ones while
    /// more than `max_records` records, or more than `max_bytes` of finished ones, are
    /// held.
    pub(crate) fn evict(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.finished.front() {
            let expired = now.saturating_duration_since(*at) >= self.retention;
            let full =
                self.entries.len() > self.max_records || self.finished_bytes > self.max_bytes;
            if !expired && !full {
                break;
            }
            if let Some((_, id, bytes)) = self.finished.pop_front() {
                self.finished_bytes -= bytes;
                self.entries.remove(&id);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn failed(kind: ErrorKind) -> QueryRecord {
        QueryRecord {
            status: QueryStatus::Failed,
            error: Some(QueryError {
                stage: "nlp".into(),
                kind,
                message: "m".into(),
            }),
            ..QueryRecord::running("q".into(), "default".into())
        }
    }

    #[test]
    fn only_failed_records_have_a_failure() {
        assert_eq!(
            failed(ErrorKind::Deadline).failure(),
            Some(ErrorKind::Deadline)
        );
        let mut done = QueryRecord::running("q".into(), "p".into());
        assert_eq!(done.failure(), None);
        done.status = QueryStatus::Cancelled;
        assert_eq!((done.failure(), done.retry_after()), (None, None));
        // The kind travels as SPEC's string, both ways.
        let json = serde_json::to_value(failed(ErrorKind::CircuitOpen)).unwrap();
        assert_eq!(json["error"]["kind"], "circuit_open");
        let back: QueryRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back.failure(), Some(ErrorKind::CircuitOpen));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_rounds_up_and_is_at_least_one_second() {
        let mut r = failed(ErrorKind::CircuitOpen);
        assert_eq!(r.retry_after(), Some(Duration::from_secs(1)));
        r.set_retry_at(Some(Instant::now() + Duration::from_millis(2100)));
        assert_eq!(r.retry_after(), Some(Duration::from_secs(3)));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(r.retry_after(), Some(Duration::from_secs(1)));
        let mut other = failed(ErrorKind::Status);
        other.set_retry_at(Some(Instant::now() + Duration::from_secs(9)));
        assert_eq!(other.retry_after(), None);
    }

    #[test]
    fn json_shape() {
        let mut r = QueryRecord::running("q1".into(), "default".into());
        r.stages.push(StageRecord {
            name: "nlp".into(),
            status: StageOutcome::Fallback,
            agent: "nlp".into(),
            attempts: vec![AttemptJson {
                attempt: 1,
                status: Some(503),
                error: Some(ErrorKind::Status),
                duration_ms: 3,
            }],
            fallback: Some("static".into()),
            duration_ms: 4,
        });
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"query_id":"q1","status":"running","pipeline":"default","stages":[
                {"name":"nlp","status":"fallback","agent":"nlp",
                 "attempts":[{"attempt":1,"status":503,"error":"status","duration_ms":3}],
                 "fallback":"static","duration_ms":4}]})
        );
    }

    fn entry(id: &str, status: QueryStatus) -> Entry {
        use agentgate_progress::{HubConfig, MemoryHub};
        let hub = MemoryHub::new(HubConfig::default());
        let config =
            toml::from_str("[[stages]]\nname = \"s\"\nagent = \"a\"\npath = \"/\"\n").unwrap();
        let mut record = QueryRecord::running(id.into(), "p".into());
        record.status = status;
        Entry {
            record,
            running: Some(Box::new(Running {
                started: Instant::now(),
                publisher: hub.open(id).unwrap(),
                done: watch::channel(None).0,
                abort: None,
                plan: Arc::new(Plan::new("p".into(), config)),
                quota_slot: None,
            })),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_keeps_running_records_and_drops_oldest_finished() {
        let mut records = Records::new(Duration::from_secs(60), 3, usize::MAX);
        records.insert("running".into(), entry("running", QueryStatus::Running));
        for id in ["a", "b", "c"] {
            records.insert(id.into(), entry(id, QueryStatus::Completed));
            records.finished(id, Instant::now());
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // Four held, three allowed: the oldest finished went.
        assert_eq!(records.len(), 3);
        assert!(records.get("a").is_none() && records.get("running").is_some());
        // Past retention, every finished record goes; the running one stays.
        tokio::time::advance(Duration::from_secs(60)).await;
        records.evict(Instant::now());
        assert_eq!(records.running(), ["running"]);
        assert_eq!(records.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn large_finished_records_are_bounded_by_bytes_too() {
        let big = JsonText::new(&json!({ "x": "y".repeat(10_000) })).unwrap();
        let size = {
            let mut r = QueryRecord::running("a".into(), "p".into());
            r.result = Some(big.clone());
            r.approx_bytes()
        };
        assert!(size > 10_000, "{size}");
        // Room for two of them, by bytes; plenty by count.
        let mut records = Records::new(Duration::from_secs(60), 1000, size * 2 + size / 2);
        for id in ["a", "b", "c", "d"] {
            let mut e = entry(id, QueryStatus::Completed);
            e.record.result = Some(big.clone());
            e.running = None;
            records.insert(id.into(), e);
            records.finished(id, Instant::now());
        }
        assert_eq!(records.len(), 2);
        assert!(records.get("c").is_some() && records.get("d").is_some());
        assert!(records.finished_bytes <= size * 2 + size / 2);
    }
}
