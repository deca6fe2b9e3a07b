//! [`RedisBackend`]: the replica's local hub, its background tasks, and the
//! [`Backend`] methods that reach other replicas.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use agentgate_progress::{
    Backend, BackendError, BackendHealth, BoxFuture, HubStats, MemoryHub, Mirrored, OpenError,
    PublishHook, Published, QueryControl, QueryPublisher, Quota, QuotaRefusal, SubscribeError,
    Subscription,
};
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot, OnceCell};
use tokio::task::JoinHandle;

use crate::settings::{redact, InvalidUrl, Keys, RedisSettings};
use crate::{lease, reader, writer};

/// Connecting to Redis, and each answer from it, may take this long at most.
pub(crate) const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Pauses between the looks [`RedisBackend::load`] takes for a query not (yet) in Redis.
const LOAD_RETRIES: [Duration; 3] = [
    Duration::from_millis(20),
    Duration::from_millis(50),
    Duration::from_millis(100),
];

/// How long [`Backend::close`] waits for the writer to send what is queued.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// An admission through Redis that takes longer is decided by this replica alone.
const QUOTA_TIMEOUT: Duration = Duration::from_millis(250);

/// Admits a client's query against its limits on every replica together, atomically
/// (one script, Redis's own clock): drops running entries whose holder must have died
/// (their score, ms, is past), refuses when `max_running` are left, else takes a token
/// from the bucket (refilled at `rate` per second up to `rate`), else counts the query.
/// Returns `{0}` admitted, `{1}` too many running, `{2, ms}` rate limited for `ms`.
const ADMIT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max, rate, hold = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
if max > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= max then return {1, 0} end
end
if rate > 0 then
  local b = redis.call('HMGET', KEYS[2], 'tokens', 'ts')
  local tokens, ts = tonumber(b[1]) or rate, tonumber(b[2]) or now
  tokens = math.min(rate, tokens + math.max(0, now - ts) * rate / 1000)
  if tokens < 1 then return {2, math.ceil((1 - tokens) * 1000 / rate)} end
  redis.call('HSET', KEYS[2], 'tokens', tostring(tokens - 1), 'ts', now)
  redis.call('PEXPIRE', KEYS[2], 2000)
end
if max > 0 then
  redis.call('ZADD', KEYS[1], now + hold, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], hold + 1000)
end
return {0, 0}
";

/// The health reason while Redis cannot be reached.
const UNREACHABLE: &str =
    "progress backend (redis) unreachable: other replicas cannot follow this one's queries";

/// The progress [`Backend`] of a replica among several, sharing streams, records and
/// cancel requests through Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    settings: RedisSettings,
    keys: Keys,
    /// This replica's id (`{name}-{random}`, drawn at startup): its own messages are
    /// skipped, and its lease and running set are named by it.
    replica: Arc<str>,
    client: redis::Client,
    /// This replica's streams: its own queries, and the other replicas' it mirrors.
    hub: MemoryHub,
    /// To the writer, in order.
    tx: mpsc::Sender<Out>,
    /// For reads (`load`, `record`, gap fills, cancel requests); connected on first use.
    reads: OnceCell<ConnectionManager>,
    writer_up: AtomicBool,
    reader_up: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Acts on this replica's queries when another replica asks.
    control: RwLock<Option<Arc<dyn QueryControl>>>,
    /// The last record of each query running here, to share again should Redis lose it
    /// (a restart): the lease task finds its lease gone and queues them anew. Records
    /// are queued for the writer under this lock, so the queue's order agrees with it.
    running: Mutex<HashMap<Arc<str>, Arc<str>>>,
    /// Which replica runs each mirrored query that is still running, as its messages
    /// said: when Redis has lost a replica's running set, this is how the others still
    /// know which queries to end when that replica is lost.
    owners: Mutex<HashMap<Arc<str>, Arc<str>>>,
}

/// What the writer sends, in order.
#[derive(Debug)]
pub(crate) enum Out {
    Event {
        query_id: Arc<str>,
        event: Arc<Published>,
    },
    Record {
        query_id: Arc<str>,
        json: Arc<str>,
        finished: bool,
        /// Only when Redis has no record of the query (sharing a running record again
        /// must not undo the final record another replica wrote).
        if_absent: bool,
    },
    /// A client's query admitted through Redis ended: it no longer counts.
    Release { client: Arc<str>, ticket: Box<str> },
    /// Flush what is queued, then stop.
    Close(oneshot::Sender<()>),
}

/// The hook the local hub calls on every publish: queues the event for the writer.
#[derive(Debug)]
struct Hook {
    tx: mpsc::Sender<Out>,
}

// === impl RedisBackend ===

impl RedisBackend {
    /// A backend for `settings`, with its background tasks started: the writer (this
    /// replica's events and records, out) and the subscriber (other replicas' events and
    /// cancel requests, in). Connecting happens in the background, so this fails only
    /// on a bad URL. Must be called within a tokio runtime.
    pub fn start(settings: RedisSettings) -> Result<Self, InvalidUrl> {
        let client = client(&settings).map_err(InvalidUrl)?;
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let hook = Arc::new(Hook { tx: tx.clone() });
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let backend = Self {
            inner: Arc::new(Inner {
                keys: Keys::new(&settings.prefix),
                hub: MemoryHub::with_hook(settings.hub.clone(), hook),
                replica: format!("{}-{suffix}", settings.name).into(),
                settings,
                client,
                tx,
                reads: OnceCell::new(),
                writer_up: AtomicBool::new(false),
                reader_up: AtomicBool::new(false),
                tasks: Mutex::new(Vec::new()),
                control: RwLock::new(None),
                running: Mutex::default(),
                owners: Mutex::default(),
            }),
        };
        // The counters exist (at 0) from the start, so that rate() and alerts see them
        // before the first failure.
        metrics::counter!("agentgate_progress_redis_dropped_total").increment(0);
        metrics::counter!("agentgate_progress_redis_errors_total").increment(0);
        metrics::counter!("agentgate_replica_lost_queries_total").increment(0);
        let tasks = [
            tokio::spawn(writer::run(backend.clone(), rx)),
            tokio::spawn(reader::run(backend.clone())),
            // SPEC §9: this replica's lease, and ending the queries of lost replicas.
            tokio::spawn(lease::renew(backend.clone())),
            tokio::spawn(lease::watch(backend.clone())),
        ];
        lock(&backend.inner.tasks).extend(tasks);
        Ok(backend)
    }

    /// Stops the background tasks at once, as a replica that crashes would: nothing
    /// more is sent, the lease is not given back (other replicas end this one's queries
    /// once it expires). For tests of replica loss.
    #[cfg(feature = "test-util")]
    pub fn crash(&self) {
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
    }

    /// This replica's id in Redis messages.
    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    /// The replica's local streams (its own queries and those it mirrors).
    pub fn hub(&self) -> &MemoryHub {
        &self.inner.hub
    }

    /// Makes a query of another replica subscribable here: when the local hub does not
    /// know it, loads its events from Redis. `Ok(false)`: no replica has it.
    async fn load(&self, query_id: &str) -> Result<bool, redis::RedisError> {
        let hub = &self.inner.hub;
        // A query submitted on another replica a moment ago may not have reached Redis
        // yet (its writer batches): look again briefly before calling it unknown.
        for pause in LOAD_RETRIES {
            if hub.contains(query_id) {
                return Ok(true);
            }
            let events = self.range(query_id, 0).await?;
            if !events.is_empty() {
                for event in events {
                    self.apply(event, true);
                }
                return Ok(true);
            }
            tokio::time::sleep(pause).await;
        }
        Ok(hub.contains(query_id))
    }

    /// Writes everything queued so far, then stops the tasks. Later events stay local.
    async fn shut_down(&self) {
        let (done, wait) = oneshot::channel();
        // Bounded: a writer stuck on a dead Redis (or a full queue) is given up on.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if self.inner.tx.send(Out::Close(done)).await.is_ok() {
                let _ = wait.await;
            }
        })
        .await;
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        // Nothing of this replica's runs any more: give the lease back, so that no other
        // replica waits for it to expire.
        let _ = tokio::time::timeout(REDIS_TIMEOUT, lease::release(self)).await;
        self.set_writer_up(false);
        self.set_reader_up(false);
    }

    /// The read connection, connecting on first use.
    async fn reads(&self) -> Result<ConnectionManager, redis::RedisError> {
        self.inner
            .reads
            .get_or_try_init(|| self.connect())
            .await
            .cloned()
    }

    /// A new auto-reconnecting connection. Every call is bounded: a Redis that is down or
    /// hangs makes calls fail within a few seconds, and the tasks here do their own
    /// retrying (with their own backoff), so the connection retries little by itself.
    pub(crate) async fn connect(&self) -> Result<ConnectionManager, redis::RedisError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        self.inner
            .client
            .get_connection_manager_with_config(config)
            .await
    }

    /// The events of `query_id` in Redis with `seq > after_seq`, in order.
    pub(crate) async fn range(
        &self,
        query_id: &str,
        after_seq: u64,
    ) -> Result<Vec<(Arc<str>, Published)>, redis::RedisError> {
        let mut conn = self.reads().await?;
        // The stream is short (about `replay_events`), so it is read whole. A batch the
        // writer retried may hold an event twice: the mirror skips what it already has.
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(self.inner.keys.events(query_id))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await?;
        let mut events: Vec<(Arc<str>, Published)> = entries
            .into_iter()
            .flat_map(|(_, fields)| fields)
            .filter(|(field, _)| field == "e")
            .filter_map(|(_, json)| Published::from_json(json.into()).ok())
            .filter(|(_, e)| e.seq() > after_seq)
            .collect();
        events.sort_by_key(|(_, e)| e.seq());
        events.dedup_by_key(|(_, e)| e.seq());
        Ok(events)
    }

    /// Mirrors one event of another replica into the local hub.
    pub(crate) fn apply(
        &self,
        (query_id, event): (Arc<str>, Published),
        allow_gap: bool,
    ) -> Mirrored {
        self.inner.hub.mirror(&query_id, event, allow_gap)
    }

    /// Another replica asks to cancel `query_id`: hands it to the control, if any.
    pub(crate) fn cancel_requested(&self, query_id: &str) {
        if let Some(control) = self.control() {
            control.cancel(query_id);
        }
    }

    /// What acts on this replica's queries (the engine), once set.
    pub(crate) fn control(&self) -> Option<Arc<dyn QueryControl>> {
        self.inner
            .control
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Notes that `replica` runs `query_id` (from its message about `event`), until the
    /// query's terminal event.
    pub(crate) fn note_owner(&self, replica: &str, query_id: &Arc<str>, terminal: bool) {
        let mut owners = lock(&self.inner.owners);
        if terminal {
            owners.remove(query_id);
        } else if !owners.contains_key(query_id) {
            owners.insert(query_id.clone(), replica.into());
        }
    }

    /// The mirrored queries still running here, by the replica that runs them (as its
    /// messages said). Forgets the owners of queries that ended meanwhile.
    pub(crate) fn owners(&self) -> HashMap<Arc<str>, Vec<Arc<str>>> {
        let running = self.inner.hub.mirrored_running();
        let mut owners = lock(&self.inner.owners);
        let still: std::collections::HashSet<&Arc<str>> =
            running.iter().map(|(id, _)| id).collect();
        owners.retain(|id, _| still.contains(id));
        let mut by_replica: HashMap<Arc<str>, Vec<Arc<str>>> = HashMap::new();
        for (id, replica) in owners.iter() {
            by_replica
                .entry(replica.clone())
                .or_default()
                .push(id.clone());
        }
        by_replica
    }

    /// Queues the records of this replica's running queries again, each only where Redis
    /// has none (after Redis lost them), and their place in this replica's running set.
    pub(crate) fn share_running_again(&self) -> usize {
        let running = lock(&self.inner.running);
        for (query_id, json) in running.iter() {
            let out = Out::Record {
                query_id: query_id.clone(),
                json: json.clone(),
                finished: false,
                if_absent: true,
            };
            enqueue(&self.inner.tx, out);
        }
        running.len()
    }
    pub(crate) fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    pub(crate) fn settings(&self) -> &RedisSettings {
        &self.inner.settings
    }

    pub(crate) fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    pub(crate) fn set_writer_up(&self, up: bool) {
        self.inner.writer_up.store(up, Ordering::Relaxed);
        metrics::gauge!("agentgate_progress_redis_connected", "direction" => "out")
            .set(f64::from(u8::from(up)));
    }

    pub(crate) fn set_reader_up(&self, up: bool) {
        self.inner.reader_up.store(up, Ordering::Relaxed);
        metrics::gauge!("agentgate_progress_redis_connected", "direction" => "in")
            .set(f64::from(u8::from(up)));
    }

    /// [`Backend::admit`] through Redis (see [`ADMIT_SCRIPT`]).
    async fn admit_shared(
        &self,
        client: &str,
        ticket: &str,
        quota: Quota,
        hold: Duration,
    ) -> Result<Result<(), QuotaRefusal>, redis::RedisError> {
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(ADMIT_SCRIPT));
        let mut conn = self.reads().await?;
        let keys = &self.inner.keys;
        let (answer, ms): (u8, u64) = SCRIPT
            .key(keys.running(client))
            .key(keys.bucket(client))
            .arg(quota.max_running.unwrap_or(0))
            .arg(quota.rate.unwrap_or(0))
            .arg(ticket)
            .arg(u64::try_from(hold.as_millis()).unwrap_or(u64::MAX / 2))
            .invoke_async(&mut conn)
            .await?;
        Ok(match answer {
            0 => Ok(()),
            1 => Err(QuotaRefusal::TooManyQueries),
            _ => Err(QuotaRefusal::RateLimited {
                retry_after: Duration::from_millis(ms),
            }),
        })
    }

    fn is_connected(&self) -> bool {
        self.inner.writer_up.load(Ordering::Relaxed) && self.inner.reader_up.load(Ordering::Relaxed)
    }
}

// === impl Backend for RedisBackend ===

impl Backend for RedisBackend {
    fn open(&self, query_id: &str) -> Result<QueryPublisher, OpenError> {
        self.inner.hub.open(query_id)
    }

    fn subscribe<'a>(
        &'a self,
        query_id: &'a str,
        after_seq: u64,
    ) -> BoxFuture<'a, Result<Subscription, SubscribeError>> {
        Box::pin(async move {
            let unknown = match self.inner.hub.subscribe(query_id, after_seq) {
                Ok(sub) => return Ok(sub),
                Err(unknown) => unknown,
            };
            // A query of another replica that this one has not followed: load it.
            match self.load(query_id).await {
                Ok(true) => self.inner.hub.subscribe(query_id, after_seq),
                Ok(false) => Err(unknown),
                Err(e) => {
                    tracing::warn!(error = %e, query_id, "progress backend: loading a query failed");
                    Err(unknown)
                }
            }
        })
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn put_record(&self, query_id: &str, json: String, finished: bool) {
        let (query_id, json): (Arc<str>, Arc<str>) = (query_id.into(), json.into());
        let mut running = lock(&self.inner.running);
        if finished {
            running.remove(&query_id);
        } else {
            running.insert(query_id.clone(), json.clone());
        }
        let out = Out::Record {
            query_id,
            json,
            finished,
            if_absent: false,
        };
        // Under the lock: see `Inner::running`.
        enqueue(&self.inner.tx, out);
    }

    fn record<'a>(
        &'a self,
        query_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, BackendError>> {
        Box::pin(async move {
            let mut conn = self.reads().await.map_err(BackendError::new)?;
            redis::cmd("GET")
                .arg(self.inner.keys.record(query_id))
                .query_async(&mut conn)
                .await
                .map_err(BackendError::new)
        })
    }

    fn cancel<'a>(&'a self, query_id: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let mut conn = self.reads().await.map_err(BackendError::new)?;
            redis::cmd("PUBLISH")
                .arg(self.inner.keys.control())
                .arg(format!("cancel|{query_id}"))
                .query_async::<()>(&mut conn)
                .await
                .map_err(BackendError::new)
        })
    }

    fn set_control(&self, control: Arc<dyn QueryControl>) {
        *self
            .inner
            .control
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(control);
    }

    fn admit<'a>(
        &'a self,
        client: &'a str,
        ticket: &'a str,
        quota: Quota,
        hold: Duration,
    ) -> BoxFuture<'a, Result<(), QuotaRefusal>> {
        Box::pin(async move {
            if !quota.is_limited() {
                return Ok(());
            }
            // While Redis is out of reach, each replica enforces the quota alone.
            if self.is_connected() {
                let shared = self.admit_shared(client, ticket, quota, hold);
                match tokio::time::timeout(QUOTA_TIMEOUT, shared).await {
                    Ok(Ok(answer)) => return answer,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, client, "quota check in redis failed; counting on this replica")
                    }
                    Err(_) => tracing::warn!(
                        client,
                        "quota check in redis timed out; counting on this replica"
                    ),
                }
            }
            self.inner.hub.quotas().admit(client, ticket, quota)
        })
    }

    fn release(&self, client: &str, ticket: &str) {
        if !self.inner.hub.quotas().release(client, ticket) {
            let out = Out::Release {
                client: client.into(),
                ticket: ticket.into(),
            };
            enqueue(&self.inner.tx, out);
        }
    }

    fn health(&self) -> BackendHealth {
        let connected = self.is_connected();
        BackendHealth {
            name: "redis",
            connected,
            reason: (!connected).then(|| UNREACHABLE.to_owned()),
        }
    }

    fn stats(&self) -> HubStats {
        self.inner.hub.stats()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.shut_down())
    }

    fn replica(&self) -> Option<&str> {
        Some(&self.inner.replica)
    }
}

// === impl Debug for RedisBackend ===

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &redact(&self.inner.settings.url))
            .field("replica", &self.inner.replica)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

// === impl Hook ===

impl PublishHook for Hook {
    fn published(&self, query_id: &Arc<str>, event: &Arc<Published>) {
        let out = Out::Event {
            query_id: query_id.clone(),
            event: event.clone(),
        };
        enqueue(&self.tx, out);
    }
}

/// Queues `out` for the writer without waiting: when the queue is full it is dropped
/// (for other replicas only) and counted.
fn enqueue(tx: &mpsc::Sender<Out>, out: Out) {
    if tx.try_send(out).is_err() {
        metrics::counter!("agentgate_progress_redis_dropped_total").increment(1);
    }
}

/// The client for `settings`: `redis://` or `rediss://`, the latter trusting
/// `ca_pem` when given (else the system's roots).
fn client(settings: &RedisSettings) -> Result<redis::Client, redis::RedisError> {
    match &settings.ca_pem {
        Some(ca) => redis::Client::build_with_tls(
            settings.url.as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            },
        ),
        None => redis::Client::open(settings.url.as_str()),
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
