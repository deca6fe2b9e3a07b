//! The engine: starts queries, keeps their records, cancels and drains them.
//!
//! Everything that may concern another replica goes through the progress
//! [`Backend`]: the engine opens each query's stream there, shares each record there,
//! and reads records, subscribes and cancels through it when a query is not its own
//! ([`Engine::record`], [`Engine::subscribe`], [`Engine::cancel`]). In one process the
//! backend knows no other replica and those paths end at "not found".
//!
//! Each query runs on its own task. Whoever ends a query — its task when the last stage
//! is done, `cancel`, `drain`, or the task being dropped — goes through
//! [`Inner::finish`], which moves the record out of `running` under the records lock.
//! Only the one that succeeds publishes the terminal event, updates the figures and
//! wakes [`Submitted::finished`], so each of those happens exactly once.
//!
//! The pipelines and agents are one [`Catalog`], swapped whole by
//! [`Engine::reconfigure`] (a config reload): a query takes the catalog current at
//! submit and keeps its plan and agents to the end, whatever is swapped meanwhile.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use agentgate_agent_client::AgentClient;
use agentgate_progress::{
    Backend, BackendError, Ending, ErrorInfo, EventKind, LostQuery, QueryControl, QueryPublisher,
    Quota, SubscribeError, Subscription,
};
use agentgate_retry::RetryAllowance;
use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::call::traceparent_value;
use crate::plan::Plan;
use crate::query::{End, QueryRun};
use crate::record::{millis, Entry, QueryError, Records, Running};
use crate::stats::StatsCollector;
use crate::ErrorKind;
use crate::{
    CancelError, PipelineConfig, QueryInput, QueryRecord, QueryStats, QueryStatus, StageRecord,
    SubmitError,
};

/// Stands in for deadlines too far away to represent.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A query counts against its client's running quota for at most its deadline and
/// this much, should its replica die before releasing it.
const QUOTA_HOLD_MARGIN: Duration = Duration::from_secs(30);

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
    /// … and finished ones holding at most about this many bytes (large results reach
    /// this before `max_records`).
    pub max_record_bytes: usize,
    /// The pipeline of queries that name none.
    pub default_pipeline: String,
    /// The longest line or event of a streamed stage answer (`[server] max_body_bytes`);
    /// a longer one fails the stage with `bad_response`.
    pub max_chunk_bytes: usize,
    /// Queries running at once, all clients together; beyond, [`SubmitError::Overloaded`]
    /// (`[server] max_running_queries`). Bounds the memory an async submit loop can take.
    pub max_running: usize,
}

/// Who asks about a query (SPEC §7): a client sees only the queries it started, as if
/// no other query existed; the admin token, and everyone when `[auth]` is off, sees
/// every query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller<'a> {
    /// Sees every query.
    Anyone,
    /// Sees only the queries whose record names this client.
    Client(&'a str),
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

/// What became of a cancel request ([`Engine::cancel`]).
// The record travels by value (the gateway serializes it as the answer); cancelling is
// rare, so the size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Cancellation {
    /// The query is cancelled: its final record.
    Cancelled(QueryRecord),
    /// Another replica runs the query and was asked to cancel it, but its final record
    /// did not show within the wait. Its `cancelled` event reaches subscribers when it
    /// comes.
    Requested,
}

/// A started query. Its id is known at once; [`Submitted::finished`] waits for the end.
#[derive(Debug)]
pub struct Submitted {
    /// The query's id.
    pub query_id: String,
    done: watch::Receiver<Option<QueryRecord>>,
}

struct Inner {
    /// What new queries start with.
    catalog: ArcSwap<Catalog>,
    backend: Arc<dyn Backend>,
    /// Whether records go to the backend (other replicas read them there).
    share_records: bool,
    settings: EngineSettings,
    records: Mutex<Records>,
    stats: StatsCollector,
    closed: AtomicBool,
    /// Queries running now.
    running: watch::Sender<u64>,
}

/// What an admitted query starts with: its plan and the agents of the same catalog.
struct Admitted {
    plan: Arc<Plan>,
    agents: Arc<BTreeMap<String, AgentClient>>,
}

/// The pipelines and agents queries start with, as one unit.
#[derive(Debug)]
struct Catalog {
    pipelines: BTreeMap<String, Arc<Plan>>,
    agents: Arc<BTreeMap<String, AgentClient>>,
}

/// The engine as its backend sees it: cancels a query of this replica that another
/// replica was asked to cancel, and says how a lost replica's query ends. Does not keep
/// the engine alive.
#[derive(Debug)]
struct Control(Weak<Inner>);

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
            max_record_bytes: 64 * 1024 * 1024,
            default_pipeline: "default".to_owned(),
            max_running: 10_000,
            max_chunk_bytes: 1024 * 1024,
        }
    }
}

// === impl Engine ===

impl Engine {
    /// An engine running `pipelines` over `agents`, publishing progress to `backend`
    /// (and answering its cancel requests from other replicas).
    ///
    /// Check each pipeline first with [`PipelineConfig::validate`]: a stage whose agent
    /// is missing here fails every query at that stage with kind `config`. Metric series
    /// are registered here, so install the metrics recorder before.
    pub fn new(
        pipelines: BTreeMap<String, PipelineConfig>,
        agents: BTreeMap<String, AgentClient>,
        backend: Arc<dyn Backend>,
        settings: EngineSettings,
    ) -> Self {
        let inner = Arc::new(Inner {
            catalog: ArcSwap::from_pointee(Catalog::new(pipelines, agents)),
            share_records: backend.is_shared(),
            backend,
            records: Mutex::new(Records::new(
                settings.retention,
                settings.max_records,
                settings.max_record_bytes,
            )),
            settings,
            stats: StatsCollector::default(),
            closed: AtomicBool::new(false),
            running: watch::Sender::new(0),
        });
        inner
            .backend
            .set_control(Arc::new(Control(Arc::downgrade(&inner))));
        Self { inner }
    }

    /// Starts a query on its own task and returns at once.
    ///
    /// The query's deadline (its pipeline's `deadline`) counts from here. Must be called
    /// within a tokio runtime. Refused beyond [`EngineSettings::max_running`]; no client
    /// quota applies (see [`Engine::submit_with_quota`]).
    pub fn submit(&self, input: QueryInput) -> Result<Submitted, SubmitError> {
        let admitted = self.admit(&input)?;
        Ok(self.start(input, admitted, new_query_id(), None))
    }

    /// [`Engine::submit`] for a query of `input.client` under that client's `quota`
    /// (SPEC §7), counted by the backend, so across replicas when it is shared. Nothing
    /// is started or counted for a refused query: the checks run in the order unknown
    /// pipeline, shutdown, [`EngineSettings::max_running`], then the quota.
    pub async fn submit_with_quota(
        &self,
        input: QueryInput,
        quota: Quota,
    ) -> Result<Submitted, SubmitError> {
        let admitted = self.admit(&input)?;
        let query_id = new_query_id();
        let slot = match (&input.client, quota.is_limited()) {
            (Some(client), true) => {
                let deadline = admitted.plan.config.deadline;
                let hold = deadline.saturating_add(QUOTA_HOLD_MARGIN);
                let admitted = self
                    .inner
                    .backend
                    .admit(client, &query_id, quota, hold)
                    .await;
                if let Err(refusal) = admitted {
                    self.inner.running.send_modify(|n| *n = n.saturating_sub(1));
                    return Err(SubmitError::Quota(refusal));
                }
                quota.max_running.map(|_| Arc::<str>::from(client.as_str()))
            }
            _ => None,
        };
        Ok(self.start(input, admitted, query_id, slot))
    }

    /// The checks every submit makes; on success the query holds one of the
    /// [`EngineSettings::max_running`] places (taken atomically with the check, so
    /// racing submits cannot go over).
    fn admit(&self, input: &QueryInput) -> Result<Admitted, SubmitError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        let name = input
            .pipeline
            .as_deref()
            .unwrap_or(&inner.settings.default_pipeline);
        let catalog = inner.catalog.load();
        let plan = catalog
            .pipelines
            .get(name)
            .ok_or_else(|| SubmitError::UnknownPipeline(name.to_owned()))?
            .clone();
        let max = inner.settings.max_running;
        let taken = inner.running.send_if_modified(|n| {
            let room = *n < max as u64;
            *n += u64::from(room);
            room
        });
        if !taken {
            return Err(SubmitError::Overloaded(max));
        }
        Ok(Admitted {
            plan,
            agents: catalog.agents.clone(),
        })
    }

    /// Starts an admitted query (its place in the running count is taken).
    fn start(
        &self,
        input: QueryInput,
        Admitted { plan, agents }: Admitted,
        query_id: String,
        quota_slot: Option<Arc<str>>,
    ) -> Submitted {
        let inner = &self.inner;
        let (query_id, publisher) = open(&*inner.backend, query_id);
        let started = Instant::now();
        let (done_tx, done) = watch::channel(None);
        let mut record = QueryRecord::running(query_id.clone(), plan.name.clone());
        record.client = input.client;
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
                    plan: plan.clone(),
                    quota_slot,
                })),
            },
        );
        inner.stats.submitted();
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
            agents,
            plan,
            publisher,
            high_water: 0,
            max_chunk_bytes: inner.settings.max_chunk_bytes,
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
        Submitted { query_id, done }
    }

    /// The record of a query run here, running or finished and still retained.
    pub fn get(&self, query_id: &str) -> Option<QueryRecord> {
        let mut records = self.inner.lock();
        records.evict(Instant::now());
        records.get(query_id).map(|e| e.record.clone())
    }

    /// The record of a query run here or on another replica (`GET /api/query/{id}`),
    /// if `caller` may see it: another client's query is `None`, as an unknown one.
    /// Fails only when another replica's records cannot be read right now.
    pub async fn record(
        &self,
        query_id: &str,
        caller: Caller<'_>,
    ) -> Result<Option<QueryRecord>, BackendError> {
        let record = match self.get(query_id) {
            Some(record) => Some(record),
            None => self.record_elsewhere(query_id).await?,
        };
        Ok(record.filter(|r| caller.may_see(r)))
    }

    /// Subscribes to a query's events, wherever it runs: those with `seq > after_seq`
    /// still retained, then the live ones. Another client's query is
    /// [`SubscribeError`] as an unknown one.
    pub async fn subscribe(
        &self,
        query_id: &str,
        after_seq: u64,
        caller: Caller<'_>,
    ) -> Result<Subscription, SubscribeError> {
        let sub = self.inner.backend.subscribe(query_id, after_seq).await?;
        if let Caller::Client(_) = caller {
            // Subscribing first loads another replica's query, record included (it
            // travels ahead of the events), so the owner is known after it.
            let visible = self.record(query_id, caller).await.ok().flatten().is_some();
            if !visible {
                return Err(SubscribeError::UnknownQuery(query_id.to_owned()));
            }
        }
        Ok(sub)
    }

    /// Cancels a running query, wherever it runs: the one path of `DELETE
    /// /api/query/{id}` and the WebSocket `cancel`. Another client's query is
    /// [`CancelError::NotFound`], running or not.
    ///
    /// A query of this replica stops at once (its task is dropped, with any request in
    /// flight to an agent) and its terminal event is `cancelled`. A query of another
    /// replica is cancelled by that replica when the backend relays the request; this
    /// waits up to `wait` for its final record, else answers
    /// [`Cancellation::Requested`]. A zero `wait` only relays the request.
    #[allow(clippy::result_large_err)] // see `CancelError`
    pub async fn cancel(
        &self,
        query_id: &str,
        wait: Duration,
        caller: Caller<'_>,
    ) -> Result<Cancellation, CancelError> {
        match self.get(query_id) {
            Some(record) if !caller.may_see(&record) => Err(CancelError::NotFound),
            Some(_) => match self.inner.finish(query_id, End::Cancelled) {
                Some(record) => Ok(Cancellation::Cancelled(record)),
                None => match self.get(query_id) {
                    Some(record) => Err(CancelError::AlreadyFinished(record)),
                    None => Err(CancelError::NotFound),
                },
            },
            None => self.cancel_elsewhere(query_id, wait, caller).await,
        }
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
            .filter_map(|e| Some((e.running.as_ref()?, e)))
            .collect();
        running.sort_unstable_by_key(|(r, _)| r.started);
        running
            .into_iter()
            .take(limit)
            .map(|(r, e)| {
                // The query's own plan: a reload since it started does not move it.
                let (plan, started) = (&r.plan, r.started);
                let done = e.record.stages.len();
                LiveQuery {
                    query_id: e.record.query_id.clone(),
                    pipeline: e.record.pipeline.clone(),
                    stage: plan.config.stages.get(done).map(|s| s.name.clone()),
                    stages_done: done,
                    stages_total: plan.config.stages.len(),
                    progress: plan.bounds.get(done).map_or(100, |b| b.0),
                    elapsed_ms: millis(now.saturating_duration_since(started)),
                }
            })
            .collect()
    }

    /// Query figures.
    pub fn stats(&self) -> QueryStats {
        self.inner.stats.snapshot()
    }

    /// The progress backend (its health, figures and shutdown).
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// The agents new queries use, by name (running queries keep those they started
    /// with).
    pub fn agents(&self) -> Arc<BTreeMap<String, AgentClient>> {
        self.inner.catalog.load().agents.clone()
    }

    /// The pipeline of queries that name none.
    pub fn default_pipeline(&self) -> &str {
        &self.inner.settings.default_pipeline
    }

    /// The configured pipelines' names, sorted.
    pub fn pipeline_names(&self) -> Vec<String> {
        self.inner
            .catalog
            .load()
            .pipelines
            .keys()
            .cloned()
            .collect()
    }

    /// Replaces the pipelines and agents, as one unit, for queries submitted from now
    /// on (a config reload). Running queries finish with the plan and agents they
    /// started with. Returns the agents now in use (the map [`Engine::agents`] hands
    /// out).
    ///
    /// Validate first, as for [`Engine::new`]. An agent kept across the swap is the
    /// caller's choice: pass the same [`AgentClient`] (a clone) to keep its breaker,
    /// budget and pool.
    pub fn reconfigure(
        &self,
        pipelines: BTreeMap<String, PipelineConfig>,
        agents: BTreeMap<String, AgentClient>,
    ) -> Arc<BTreeMap<String, AgentClient>> {
        let catalog = Catalog::new(pipelines, agents);
        let agents = catalog.agents.clone();
        self.inner.catalog.store(Arc::new(catalog));
        agents
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
                self.inner.finish(&id, End::Cancelled);
            }
        }
    }

    /// The record of a query run on another replica, if the backend has it.
    async fn record_elsewhere(&self, query_id: &str) -> Result<Option<QueryRecord>, BackendError> {
        let Some(json) = self.inner.backend.record(query_id).await? else {
            return Ok(None);
        };
        serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| BackendError::new(format!("unreadable record of query `{query_id}`: {e}")))
    }

    /// [`Engine::cancel`] of a query this replica does not know.
    #[allow(clippy::result_large_err)] // see `CancelError`
    async fn cancel_elsewhere(
        &self,
        query_id: &str,
        wait: Duration,
        caller: Caller<'_>,
    ) -> Result<Cancellation, CancelError> {
        let unavailable = CancelError::Unavailable;
        let record = self.record_elsewhere(query_id).await.map_err(unavailable)?;
        match record.filter(|r| caller.may_see(r)) {
            None => return Err(CancelError::NotFound),
            Some(r) if r.status.is_finished() => return Err(CancelError::AlreadyFinished(r)),
            Some(_) => {}
        }
        let backend = &self.inner.backend;
        // Follow the query before asking, so that its terminal event cannot slip by.
        let events = if wait.is_zero() {
            None
        } else {
            backend.subscribe(query_id, 0).await.ok()
        };
        backend.cancel(query_id).await.map_err(unavailable)?;
        if wait.is_zero() {
            return Ok(Cancellation::Requested);
        }
        if let Some(mut events) = events {
            // A subscription ends after the terminal event.
            let ended = async { while events.recv().await.is_some() {} };
            let _ = tokio::time::timeout(wait, ended).await;
        }
        // The final record is shared before the terminal event: it is there by now,
        // unless the wait ran out.
        match self.record_elsewhere(query_id).await.map_err(unavailable)? {
            Some(r) if r.status == QueryStatus::Cancelled => Ok(Cancellation::Cancelled(r)),
            Some(r) if r.status.is_finished() => Err(CancelError::AlreadyFinished(r)),
            Some(_) => Ok(Cancellation::Requested),
            None => Err(CancelError::NotFound),
        }
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let catalog = self.inner.catalog.load();
        f.debug_struct("Engine")
            .field("pipelines", &catalog.pipelines.keys().collect::<Vec<_>>())
            .field("agents", &catalog.agents.keys().collect::<Vec<_>>())
            .field("settings", &self.inner.settings)
            .field("running", &*self.inner.running.borrow())
            .field("closed", &self.is_closed())
            .finish()
    }
}

fn new_query_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Opens the query's progress stream under `id`. A v4 UUID collides only when the RNG
/// is broken, so a refused id is simply replaced.
fn open(backend: &dyn Backend, mut id: String) -> (String, QueryPublisher) {
    loop {
        if let Ok(publisher) = backend.open(&id) {
            return (id, publisher);
        }
        id = new_query_id();
    }
}

// === impl Caller ===

impl Caller<'_> {
    /// Whether the caller may see `record`'s query at all.
    pub fn may_see(&self, record: &QueryRecord) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::Client(client) => record.client.as_deref() == Some(*client),
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

    /// Shares `record` with other replicas through the backend, when it has any.
    fn share(&self, record: &QueryRecord) {
        if !self.share_records {
            return;
        }
        match serde_json::to_string(record) {
            Ok(json) => {
                self.backend
                    .put_record(&record.query_id, json, record.status.is_finished());
            }
            Err(e) => tracing::warn!(error = %e, "query record not shared: not serializable"),
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
            plan,
            quota_slot,
            ..
        } = *running;
        if let Some(client) = quota_slot {
            self.backend.release(&client, query_id);
        }
        // Stop the task first, so a cancelled query sends nothing more to its agents.
        if let (true, Some(abort)) = (cancelled, abort) {
            abort.abort();
        }
        let terminal = terminal_event(&record);
        // The final record goes out before the terminal event, so whoever sees that
        // event elsewhere can read the record.
        self.share(&record);
        let shared = publisher
            .publish(terminal)
            .ok()
            .and_then(|event| event.completed_result());
        drop(publisher);

        plan.metrics.finished(record.status, duration);
        self.stats.finished(record.status, duration);
        if let Some(client) = &record.client {
            crate::metrics::client_finished(client, record.status);
        }
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

/// The terminal event of a finished record (`cancelled` for one that is not).
fn terminal_event(record: &QueryRecord) -> EventKind {
    match (&record.status, &record.error, &record.result) {
        (QueryStatus::Completed, _, Some(result)) => EventKind::Completed {
            result: result.clone(),
            duration_ms: record.duration_ms.unwrap_or(0),
        },
        (QueryStatus::Failed, Some(e), _) => EventKind::Failed {
            error: ErrorInfo {
                stage: Some(e.stage.clone()),
                kind: e.kind.as_str().to_owned(),
                message: e.message.clone(),
            },
        },
        _ => EventKind::Cancelled {},
    }
}

// === impl Catalog ===

impl Catalog {
    fn new(
        pipelines: BTreeMap<String, PipelineConfig>,
        agents: BTreeMap<String, AgentClient>,
    ) -> Self {
        let pipelines = pipelines
            .into_iter()
            .map(|(name, config)| (name.clone(), Arc::new(Plan::new(name, config))))
            .collect();
        Self {
            pipelines,
            agents: Arc::new(agents),
        }
    }
}

// === impl Control ===

impl QueryControl for Control {
    fn cancel(&self, query_id: &str) {
        if let Some(inner) = self.0.upgrade() {
            // Only the replica running the query has it; the others find nothing.
            inner.finish(query_id, End::Cancelled);
        }
    }

    fn end_lost(&self, lost: &LostQuery<'_>) -> Ending {
        let record = lost.record.and_then(|json| {
            serde_json::from_str::<QueryRecord>(json)
                .inspect_err(|e| tracing::warn!(query_id = lost.query_id, error = %e, "lost query's record is unreadable"))
                .ok()
        });
        if let Some(record) = record.as_ref().filter(|r| r.status.is_finished()) {
            // It ended on its replica, but its terminal event never reached the others.
            return Ending {
                event: terminal_event(record),
                record: None,
            };
        }
        // Without a record (Redis lost it), one that says how it ended all the same;
        // its pipeline is unknown.
        let mut record =
            record.unwrap_or_else(|| QueryRecord::running(lost.query_id.to_owned(), String::new()));
        // The stage it was in: its last event's, else the first not done as this
        // replica's pipeline of that name has it (the records of running queries are
        // shared before their first stage ends).
        let stage = lost.stage.map(str::to_owned).or_else(|| {
            let inner = self.0.upgrade()?;
            let catalog = inner.catalog.load();
            let plan = catalog.pipelines.get(&record.pipeline)?;
            Some(plan.config.stages.get(record.stages.len())?.name.clone())
        });
        record.status = QueryStatus::Failed;
        record.error = Some(QueryError {
            stage: stage.clone().unwrap_or_default(),
            kind: ErrorKind::ReplicaLost,
            message: Ending::LOST_MESSAGE.to_owned(),
        });
        record.duration_ms = lost
            .started
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map(millis);
        Ending {
            record: serde_json::to_string(&record).ok(),
            ..Ending::replica_lost(stage)
        }
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
                    let plan = &e.running.as_ref()?.plan;
                    let stage = plan.config.stages.get(e.record.stages.len())?;
                    Some(stage.name.clone())
                })
            };
            End::Failed {
                error: QueryError {
                    stage: stage.unwrap_or_default(),
                    kind: ErrorKind::Internal,
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
