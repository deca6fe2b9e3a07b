//! The engine: starts queries, keeps their records, cancels and drains them.
//!
//! Each query runs on its own task. Whoever ends a query — its task when the last stage
//! is done, `cancel`, `drain`, or the task being dropped — goes through
//! [`Inner::finish`], which moves the record out of `running` under the records lock.
//! Only the one that succeeds publishes the terminal event, updates the figures and
//! wakes [`Submitted::finished`], so each of those happens exactly once.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use agentgate_agent_client::AgentClient;
use agentgate_progress::{ErrorInfo, EventKind, ProgressHub, QueryPublisher};
use agentgate_retry::RetryAllowance;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::call::traceparent_value;
use crate::plan::Plan;
use crate::query::{End, QueryRun};
use crate::record::{millis, Entry, QueryError, Records, Running};
use crate::stats::StatsCollector;
use crate::{
    CancelError, PipelineConfig, QueryInput, QueryRecord, QueryStats, QueryStatus, StageRecord,
    SubmitError,
};

/// Stands in for deadlines too far away to represent.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Runs queries through pipelines of agent stages. Cheap to clone; clones share
/// everything.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// How long and how many query records are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineSettings {
    /// Finished queries stay readable this long (`[server] query_retention`).
    pub retention: Duration,
    /// At most this many records are kept; the oldest finished ones go first. Running
    /// queries are never dropped, even beyond this.
    pub max_records: usize,
    /// The pipeline of queries that name none.
    pub default_pipeline: String,
}

/// A running query as [`Engine::live`] sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LiveQuery {
    /// The query's id.
    pub query_id: String,
    /// Its pipeline.
    pub pipeline: String,
    /// The stage it is running (`None` once past the last one).
    pub stage: Option<String>,
    /// Stages finished so far.
    pub stages_done: usize,
    /// Stages in its pipeline.
    pub stages_total: usize,
    /// Where the progress bar stands: the start of the running stage's share.
    pub progress: u8,
    /// Time since it was submitted.
    pub elapsed_ms: u64,
}

/// An [`Engine`] that may be gone ([`Engine::downgrade`]).
#[derive(Clone, Debug)]
pub struct WeakEngine(std::sync::Weak<Inner>);

impl WeakEngine {
    /// The engine, if it still exists.
    pub fn upgrade(&self) -> Option<Engine> {
        self.0.upgrade().map(|inner| Engine { inner })
    }
}

/// A started query. Its id is known at once; [`Submitted::finished`] waits for the end.
#[derive(Debug)]
pub struct Submitted {
    /// The query's id.
    pub query_id: String,
    done: watch::Receiver<Option<QueryRecord>>,
}

struct Inner {
    pipelines: BTreeMap<String, Arc<Plan>>,
    agents: Arc<BTreeMap<String, AgentClient>>,
    hub: Arc<dyn ProgressHub>,
    settings: EngineSettings,
    records: Mutex<Records>,
    stats: StatsCollector,
    closed: AtomicBool,
    /// Queries running now.
    running: watch::Sender<u64>,
    /// Gets every query's record when it starts and when it ends.
    record_sink: OnceLock<Arc<dyn RecordSink>>,
}

/// Gets each query's record when the query starts (`running`) and when it ends (its
/// final record, before the terminal event is published). Used to share records between
/// replicas; must not block.
pub trait RecordSink: Send + Sync + fmt::Debug {
    /// `record` is the query's latest state.
    fn record(&self, record: &QueryRecord);
}

/// Ends the query as `cancelled` (or `failed`, on a panic) if its task is dropped
/// before it finished it: aborted by `cancel`, or the runtime shutting down.
struct FinishOnDrop {
    inner: Arc<Inner>,
    query_id: String,
    armed: bool,
}

// === impl EngineSettings ===

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(600),
            max_records: 10_000,
            default_pipeline: "default".to_owned(),
        }
    }
}

// === impl Engine ===

impl Engine {
    /// An engine running `pipelines` over `agents`, publishing progress to `hub`.
    ///
    /// Check each pipeline first with [`PipelineConfig::validate`]: a stage whose agent
    /// is missing here fails every query at that stage with kind `config`. Metric series
    /// are registered here, so install the metrics recorder before.
    pub fn new(
        pipelines: BTreeMap<String, PipelineConfig>,
        agents: BTreeMap<String, AgentClient>,
        hub: Arc<dyn ProgressHub>,
        settings: EngineSettings,
    ) -> Self {
        let pipelines = pipelines
            .into_iter()
            .map(|(name, config)| (name.clone(), Arc::new(Plan::new(name, config))))
            .collect();
        Self {
            inner: Arc::new(Inner {
                pipelines,
                agents: Arc::new(agents),
                hub,
                records: Mutex::new(Records::new(settings.retention, settings.max_records)),
                settings,
                stats: StatsCollector::default(),
                closed: AtomicBool::new(false),
                running: watch::Sender::new(0),
                record_sink: OnceLock::new(),
            }),
        }
    }

    /// Starts a query on its own task and returns at once.
    ///
    /// The query's deadline (its pipeline's `deadline`) counts from here. Must be called
    /// within a tokio runtime.
    pub fn submit(&self, input: QueryInput) -> Result<Submitted, SubmitError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        let name = input
            .pipeline
            .clone()
            .unwrap_or_else(|| inner.settings.default_pipeline.clone());
        let plan = inner
            .pipelines
            .get(&name)
            .ok_or(SubmitError::UnknownPipeline(name))?
            .clone();
        let (query_id, publisher) = open(&*inner.hub);
        let started = Instant::now();
        let (done_tx, done) = watch::channel(None);
        let mut record = QueryRecord::running(query_id.clone(), plan.name.clone());
        record.stages.reserve_exact(plan.config.stages.len());
        inner.share(&record);
        inner.lock().insert(
            publisher.shared_query_id(),
            Entry {
                record,
                running: Some(Box::new(Running {
                    started,
                    publisher: publisher.clone(),
                    done: done_tx,
                    abort: None,
                })),
            },
        );
        inner.stats.submitted();
        inner.running.send_modify(|n| *n += 1);
        tracing::debug!(%query_id, pipeline = %plan.name, "query submitted");

        let run = QueryRun {
            query_id: query_id.as_str().into(),
            query: input.query,
            context: input.context,
            deadline: started
                .checked_add(plan.config.deadline)
                .unwrap_or_else(|| started + FAR_FUTURE),
            allowance: RetryAllowance::new(plan.config.retry_allowance),
            traceparent: traceparent_value(input.traceparent.as_deref()),
            agents: inner.agents.clone(),
            plan,
            publisher,
            high_water: 0,
        };
        let guard = FinishOnDrop {
            inner: inner.clone(),
            query_id: query_id.clone(),
            armed: true,
        };
        let task = tokio::spawn(async move {
            let mut guard = guard;
            let end = {
                let inner = guard.inner.clone();
                let id = guard.query_id.clone();
                run.run(move |stage| inner.stage_done(&id, stage)).await
            };
            guard.armed = false;
            guard.inner.finish(&guard.query_id, end);
        });
        {
            let mut records = inner.lock();
            match records.get_mut(&query_id).and_then(|e| e.running.as_mut()) {
                Some(running) => running.abort = Some(task.abort_handle()),
                // Cancelled (by a drain) before its task could be registered.
                None => task.abort(),
            }
        }
        Ok(Submitted { query_id, done })
    }

    /// The record of a running query, or of a finished one still retained.
    pub fn get(&self, query_id: &str) -> Option<QueryRecord> {
        let mut records = self.inner.lock();
        records.evict(Instant::now());
        records.get(query_id).map(|e| e.record.clone())
    }

    /// Cancels a running query: its task stops at once, dropping any request in flight
    /// to an agent, and its terminal event is `cancelled`. Returns the final record.
    #[allow(clippy::result_large_err)] // see `CancelError`
    pub fn cancel(&self, query_id: &str) -> Result<QueryRecord, CancelError> {
        if let Some(record) = self.inner.finish(query_id, End::Cancelled) {
            return Ok(record);
        }
        self.get(query_id).map_or(Err(CancelError::NotFound), |r| {
            Err(CancelError::AlreadyFinished(r))
        })
    }

    /// The running queries, oldest first, at most `limit` of them: where each one is
    /// (for dashboards; clients that want every step subscribe to the query's events).
    pub fn live(&self, limit: usize) -> Vec<LiveQuery> {
        let now = Instant::now();
        let records = self.inner.lock();
        // Only running entries carry `running`; pick the oldest by reference, and build
        // (clone strings for) just the `limit` returned.
        let mut running: Vec<_> = records
            .iter()
            .filter_map(|e| Some((e.running.as_ref()?.started, e)))
            .collect();
        running.sort_unstable_by_key(|(started, _)| *started);
        running
            .into_iter()
            .take(limit)
            .map(|(started, e)| {
                let plan = self.inner.pipelines.get(&e.record.pipeline);
                let done = e.record.stages.len();
                LiveQuery {
                    query_id: e.record.query_id.clone(),
                    pipeline: e.record.pipeline.clone(),
                    stage: plan
                        .and_then(|p| p.config.stages.get(done))
                        .map(|s| s.name.clone()),
                    stages_done: done,
                    stages_total: plan.map_or(done, |p| p.config.stages.len()),
                    progress: plan
                        .and_then(|p| p.bounds.get(done).map(|b| b.0))
                        .unwrap_or(100),
                    elapsed_ms: millis(now.saturating_duration_since(started)),
                }
            })
            .collect()
    }

    /// A handle that does not keep the engine alive.
    pub fn downgrade(&self) -> WeakEngine {
        WeakEngine(Arc::downgrade(&self.inner))
    }

    /// Sends every query's record to `sink` from now on (once; later calls are ignored).
    pub fn set_record_sink(&self, sink: Arc<dyn RecordSink>) {
        let _ = self.inner.record_sink.set(sink);
    }

    /// Query figures.
    pub fn stats(&self) -> QueryStats {
        self.inner.stats.snapshot()
    }

    /// The progress hub queries publish to (for subscribers).
    pub fn hub(&self) -> &Arc<dyn ProgressHub> {
        &self.inner.hub
    }

    /// The agents, by name.
    pub fn agents(&self) -> &BTreeMap<String, AgentClient> {
        &self.inner.agents
    }

    /// The configured pipelines' names, sorted.
    pub fn pipeline_names(&self) -> Vec<String> {
        self.inner.pipelines.keys().cloned().collect()
    }

    /// Refuses new queries from now on ([`SubmitError::ShuttingDown`]). Running ones go on.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
    }

    /// Whether [`Engine::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Graceful shutdown: closes the engine, waits up to `grace` for running queries to
    /// finish, then cancels those still running (their terminal event is `cancelled`).
    pub async fn drain(&self, grace: Duration) {
        self.close();
        let mut running = self.inner.running.subscribe();
        let idle = tokio::time::timeout(grace, running.wait_for(|n| *n == 0)).await;
        if idle.is_err() {
            let ids = self.inner.lock().running();
            tracing::info!(
                queries = ids.len(),
                "grace period over: cancelling running queries"
            );
            for id in ids {
                let _ = self.cancel(&id);
            }
        }
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field(
                "pipelines",
                &self.inner.pipelines.keys().collect::<Vec<_>>(),
            )
            .field("agents", &self.inner.agents.keys().collect::<Vec<_>>())
            .field("settings", &self.inner.settings)
            .field("running", &*self.inner.running.borrow())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Opens the query's progress stream under a fresh id. A v4 UUID collides only when
/// the RNG is broken, so a refused id is simply replaced.
fn open(hub: &dyn ProgressHub) -> (String, QueryPublisher) {
    loop {
        let id = uuid::Uuid::new_v4().to_string();
        if let Ok(publisher) = hub.open(&id) {
            return (id, publisher);
        }
    }
}

// === impl Submitted ===

impl Submitted {
    /// Waits for the query to end and returns its final record.
    pub async fn finished(mut self) -> QueryRecord {
        if let Ok(record) = self.done.wait_for(Option::is_some).await {
            if let Some(record) = record.clone() {
                return record;
            }
        }
        // The engine went away without ending the query (the runtime shut down).
        let mut record = QueryRecord::running(self.query_id, String::new());
        record.status = QueryStatus::Cancelled;
        record
    }
}

// === impl Inner ===

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands `record` to the record sink, if any.
    fn share(&self, record: &QueryRecord) {
        if let Some(sink) = self.record_sink.get() {
            sink.record(record);
        }
    }

    /// A stage of a running query ended: show it in the record at once.
    fn stage_done(&self, query_id: &str, stage: StageRecord) {
        if let Some(e) = self.lock().get_mut(query_id) {
            if e.record.status == QueryStatus::Running {
                e.record.stages.push(stage);
            }
        }
    }

    /// Ends a running query. Returns the final record, or `None` when the query is
    /// unknown or had already ended (then nothing happens).
    ///
    /// What only a running query needs (publisher, `done` sender, abort handle) is
    /// dropped here, and a completed record's result ends up as a slice of the terminal
    /// event's text, so a retained query holds its result once.
    fn finish(&self, query_id: &str, end: End) -> Option<QueryRecord> {
        let now = Instant::now();
        let cancelled = matches!(end, End::Cancelled);
        let (mut record, running, duration) = {
            let mut records = self.lock();
            let entry = records.get_mut(query_id)?;
            if entry.record.status != QueryStatus::Running {
                return None;
            }
            let running = entry.running.take()?;
            let duration = now.saturating_duration_since(running.started);
            let r = &mut entry.record;
            r.duration_ms = Some(millis(duration));
            match end {
                End::Completed(result) => {
                    r.status = QueryStatus::Completed;
                    r.result = Some(result);
                }
                End::Failed { error, retry_at } => {
                    r.status = QueryStatus::Failed;
                    r.error = Some(error);
                    r.set_retry_at(retry_at);
                }
                End::Cancelled => r.status = QueryStatus::Cancelled,
            }
            (r.clone(), running, duration)
        };
        let Running {
            publisher,
            done,
            abort,
            ..
        } = *running;
        // Stop the task first, so a cancelled query sends nothing more to its agents.
        if let (true, Some(abort)) = (cancelled, abort) {
            abort.abort();
        }
        let terminal = match (&record.status, &record.error, &record.result) {
            (QueryStatus::Completed, _, Some(result)) => EventKind::Completed {
                result: result.clone(),
                duration_ms: millis(duration),
            },
            (QueryStatus::Failed, Some(e), _) => EventKind::Failed {
                error: ErrorInfo {
                    stage: Some(e.stage.clone()),
                    kind: e.kind.clone(),
                    message: e.message.clone(),
                },
            },
            _ => EventKind::Cancelled {},
        };
        // The final record goes out before the terminal event, so whoever sees that
        // event elsewhere can read the record.
        self.share(&record);
        let shared = publisher
            .publish(terminal)
            .ok()
            .and_then(|event| event.completed_result());
        drop(publisher);

        if let Some(plan) = self.pipelines.get(&record.pipeline) {
            plan.metrics.finished(record.status, duration);
        }
        self.stats.finished(record.status, duration);
        tracing::debug!(
            query_id,
            pipeline = %record.pipeline,
            status = record.status.as_str(),
            duration_ms = millis(duration),
            "query finished"
        );
        {
            let mut records = self.lock();
            if let Some(shared) = shared {
                // The same text: the record's own copy goes once nothing holds it.
                if let Some(e) = records.get_mut(query_id) {
                    e.record.result = Some(shared.clone());
                }
                record.result = Some(shared);
            }
            records.finished(query_id, now);
        }
        self.running.send_modify(|n| *n = n.saturating_sub(1));
        // Last, so whoever awaits the end sees everything above already done.
        done.send_replace(Some(record.clone()));
        Some(record)
    }
}

// === impl FinishOnDrop ===

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let end = if std::thread::panicking() {
            let stage = {
                let records = self.inner.lock();
                records.get(&self.query_id).and_then(|e| {
                    let plan = self.inner.pipelines.get(&e.record.pipeline)?;
                    let stage = plan.config.stages.get(e.record.stages.len())?;
                    Some(stage.name.clone())
                })
            };
            End::Failed {
                error: QueryError {
                    stage: stage.unwrap_or_default(),
                    kind: "internal".to_owned(),
                    message: "internal error".to_owned(),
                },
                retry_at: None,
            }
        } else {
            End::Cancelled
        };
        self.inner.finish(&self.query_id, end);
    }
}
