//! The Redis backend of agentgate's progress events and query records
//! (`[progress] backend = "redis"`, SPEC §5 "Scale-out"): with it, every replica can
//! serve `GET /api/query/{id}` and WebSocket subscribe / replay for queries that run on
//! any other replica.
//!
//! # How it works
//!
//! Each replica keeps its own [`MemoryHub`]; the bridge connects the hubs through Redis:
//!
//! - **Out**: every event a replica publishes for its own queries goes, in order, through
//!   one writer task that pipelines, per event,
//!   `XADD {prefix}:q:{id}:events MAXLEN ~ N * e <json>` (about the last
//!   `replay_events` events of each query), `PEXPIRE` on that key (`running_ttl` while
//!   the query runs, `retention` after its terminal event) and
//!   `PUBLISH {prefix}:events "<replica>|<json>"`. Query records go the same way
//!   (`SET {prefix}:q:{id}:record`).
//!   Publishing never waits for Redis: the hook only puts the event on a bounded queue
//!   (`queue`); when it is full, the event is dropped for other replicas (counted in
//!   `agentgate_progress_redis_dropped_total`), never for this replica's own clients.
//! - **In**: one subscriber task per replica listens on `{prefix}:events` and mirrors
//!   other replicas' events into the local hub ([`MemoryHub::mirror`]), with their own
//!   `seq` and `ts`, so local WebSocket clients subscribe to them exactly like local
//!   queries: replay, `after_seq`, `lagged`, one terminal event. A gap (a message lost
//!   while the subscription was reconnecting) is filled from the query's Redis stream
//!   (`XRANGE`); every mirrored running query is caught up the same way after a
//!   reconnect.
//! - **On demand**: a query that ended before this replica was listening is loaded from
//!   its stream the first time a client asks for it ([`RedisBridge::load`]); records are
//!   read with [`RedisBridge::record`].
//! - **Cancel**: a replica asked to cancel a query it does not run publishes
//!   `cancel|<id>` on `{prefix}:control` ([`RedisBridge::request_cancel`]); the replica
//!   running it cancels it ([`RedisBridge::on_cancel`]).
//!
//! Every replica therefore holds the events of every replica's recent queries, bounded by
//! the hub's own `replay_events`, `retention` and `max_finished` caps. Breakers stay per
//! replica (as in Envoy and Linkerd).
//!
//! Redis being down never fails a query: the replica keeps serving its own queries and
//! clients, reconnects with backoff, and reports not ready (`/readyz` 503) meanwhile
//! ([`RedisBridge::is_ready`]).

mod failures;
mod reader;
#[cfg(feature = "test-util")]
pub mod test_util;
mod writer;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use agentgate_progress::{MemoryHub, Mirrored, PublishHook, Published};
use redis::aio::ConnectionManager;
pub use redis::RedisError;
use tokio::sync::{mpsc, OnceCell};
use tokio::task::JoinHandle;

/// Connecting to Redis, and each answer from it, may take this long at most.
pub(crate) const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Pauses between the looks [`RedisBridge::load`] takes for a query not (yet) in Redis.
const LOAD_RETRIES: [Duration; 3] = [
    Duration::from_millis(20),
    Duration::from_millis(50),
    Duration::from_millis(100),
];

/// What the bridge needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://host:port[/db]` (`[progress] redis_url`).
    pub url: String,
    /// Prefix of every key and channel (default `agentgate`).
    pub prefix: String,
    /// Keys of finished queries expire after this (`[server] query_retention`).
    pub retention: Duration,
    /// Keys of running queries expire after this unless refreshed by a new event, so a
    /// replica that dies mid-query leaves nothing behind for long. Default 1 hour.
    pub running_ttl: Duration,
    /// Each query's stream keeps about this many events (`[progress] replay_events`).
    pub replay_events: usize,
    /// Events and records waiting for the writer; beyond, they are dropped (for other
    /// replicas only). Default 65,536.
    pub queue: usize,
}

impl RedisSettings {
    /// Settings for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "agentgate".to_owned(),
            retention: Duration::from_secs(600),
            running_ttl: Duration::from_secs(3600),
            replay_events: 256,
            queue: 65_536,
        }
    }
}

/// Why the bridge could not be built.
#[derive(Debug, thiserror::Error)]
#[error("invalid redis_url: {0}")]
pub struct BridgeError(#[source] redis::RedisError);

/// Connects this replica's hub to the other replicas through Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisBridge {
    inner: Arc<Inner>,
}

struct Inner {
    settings: RedisSettings,
    keys: Keys,
    /// This replica's id (a UUID drawn at startup): its own messages are skipped.
    replica: Arc<str>,
    client: redis::Client,
    tx: mpsc::Sender<Out>,
    rx: Mutex<Option<mpsc::Receiver<Out>>>,
    hub: OnceLock<MemoryHub>,
    /// For reads (`load`, `record`, gap fills); connected on first use.
    reads: OnceCell<ConnectionManager>,
    writer_up: AtomicBool,
    reader_up: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Cancels a query of this replica asked for by another one.
    on_cancel: OnceLock<CancelHandler>,
}

/// What [`RedisBridge::on_cancel`] calls with a query id.
pub type CancelHandler = Arc<dyn Fn(&str) + Send + Sync>;

/// What the writer sends, in order.
#[derive(Debug)]
pub(crate) enum Out {
    Event {
        query_id: Arc<str>,
        event: Arc<Published>,
    },
    Record {
        query_id: Arc<str>,
        json: String,
        finished: bool,
    },
    /// Flush what is queued, then stop.
    Close(tokio::sync::oneshot::Sender<()>),
}

/// Key and channel names.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

/// The hook the local hub calls on every publish: queues the event for the writer.
#[derive(Debug)]
struct Hook {
    tx: mpsc::Sender<Out>,
}

// === impl Keys ===

impl Keys {
    pub(crate) fn events(&self, query_id: &str) -> String {
        format!("{}:q:{query_id}:events", self.prefix)
    }

    pub(crate) fn record(&self, query_id: &str) -> String {
        format!("{}:q:{query_id}:record", self.prefix)
    }

    pub(crate) fn channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    pub(crate) fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }
}

// === impl RedisBridge ===

impl RedisBridge {
    /// A bridge for `settings`; nothing connects until [`RedisBridge::start`].
    pub fn new(settings: RedisSettings) -> Result<Self, BridgeError> {
        let client = redis::Client::open(settings.url.as_str()).map_err(BridgeError)?;
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        Ok(Self {
            inner: Arc::new(Inner {
                keys: Keys {
                    prefix: settings.prefix.clone(),
                },
                settings,
                replica: uuid::Uuid::new_v4().simple().to_string().into(),
                client,
                tx,
                rx: Mutex::new(Some(rx)),
                hub: OnceLock::new(),
                reads: OnceCell::new(),
                writer_up: AtomicBool::new(false),
                reader_up: AtomicBool::new(false),
                tasks: Mutex::new(Vec::new()),
                on_cancel: OnceLock::new(),
            }),
        })
    }

    /// The hook to build the local hub with ([`MemoryHub::with_hook`]).
    pub fn hook(&self) -> Arc<dyn PublishHook> {
        Arc::new(Hook {
            tx: self.inner.tx.clone(),
        })
    }

    /// Starts the writer and subscriber tasks, mirroring other replicas into `hub` (the
    /// hub built with [`RedisBridge::hook`]). Call once, within a tokio runtime.
    pub fn start(&self, hub: MemoryHub) {
        let Some(rx) = lock(&self.inner.rx).take() else {
            return;
        };
        let _ = self.inner.hub.set(hub);
        let writer = tokio::spawn(writer::run(self.clone(), rx));
        let reader = tokio::spawn(reader::run(self.clone()));
        lock(&self.inner.tasks).extend([writer, reader]);
    }

    /// Writes everything queued so far, then stops both tasks. Later events stay local.
    pub async fn close(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        // Bounded: a writer stuck on a dead Redis (or a full queue) is given up on.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            if self.inner.tx.send(Out::Close(done)).await.is_ok() {
                let _ = wait.await;
            }
        })
        .await;
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        self.inner.writer_up.store(false, Ordering::Relaxed);
        self.inner.reader_up.store(false, Ordering::Relaxed);
    }

    /// Whether both directions are connected (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        self.inner.writer_up.load(Ordering::Relaxed) && self.inner.reader_up.load(Ordering::Relaxed)
    }

    /// This replica's id in Redis messages.
    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    /// Sets what cancels a query of this replica when another replica asks (its
    /// `DELETE /api/query/{id}` or WebSocket `cancel`). Set once, before [`start`].
    ///
    /// [`start`]: RedisBridge::start
    pub fn on_cancel(&self, handler: CancelHandler) {
        let _ = self.inner.on_cancel.set(handler);
    }

    /// Asks every replica to cancel `query_id`; the one running it does. Its terminal
    /// `cancelled` event and final record then arrive like any other.
    pub async fn request_cancel(&self, query_id: &str) -> Result<(), redis::RedisError> {
        let mut conn = self.reads().await?;
        redis::cmd("PUBLISH")
            .arg(self.inner.keys.control())
            .arg(format!("cancel|{query_id}"))
            .query_async::<()>(&mut conn)
            .await
    }

    pub(crate) fn cancel_local(&self, query_id: &str) {
        if let Some(handler) = self.inner.on_cancel.get() {
            handler(query_id);
        }
    }

    /// Queues `query_id`'s record (JSON) for other replicas' `GET /api/query/{id}`.
    /// `finished` records expire after `retention`, running ones after `running_ttl`.
    /// Never waits; dropped (and counted) when the queue is full.
    pub fn put_record(&self, query_id: &str, json: String, finished: bool) {
        self.enqueue(Out::Record {
            query_id: query_id.into(),
            json,
            finished,
        });
    }

    /// The record of a query run on any replica, as JSON, while Redis keeps it.
    pub async fn record(&self, query_id: &str) -> Result<Option<String>, redis::RedisError> {
        let mut conn = self.reads().await?;
        redis::cmd("GET")
            .arg(self.inner.keys.record(query_id))
            .query_async(&mut conn)
            .await
    }

    /// Makes a query of another replica subscribable here: when the local hub does not
    /// know it, loads its events from Redis. `Ok(false)`: no replica has it.
    pub async fn load(&self, query_id: &str) -> Result<bool, redis::RedisError> {
        let Some(hub) = self.inner.hub.get() else {
            return Ok(false);
        };
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

    fn enqueue(&self, out: Out) {
        if self.inner.tx.try_send(out).is_err() {
            metrics::counter!("agentgate_progress_redis_dropped_total").increment(1);
        }
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
        match self.inner.hub.get() {
            Some(hub) => hub.mirror(&query_id, event, allow_gap),
            None => Mirrored::Local,
        }
    }

    pub(crate) fn hub(&self) -> Option<&MemoryHub> {
        self.inner.hub.get()
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
}

impl fmt::Debug for RedisBridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBridge")
            .field("url", &self.inner.settings.url)
            .field("replica", &self.inner.replica)
            .field("ready", &self.is_ready())
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
        if self.tx.try_send(out).is_err() {
            metrics::counter!("agentgate_progress_redis_dropped_total").increment(1);
        }
    }
}

/// Describes this crate's Prometheus series.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "agentgate_progress_redis_dropped_total",
        "Events and records not sent to Redis because the writer's queue was full"
    );
    metrics::describe_counter!(
        "agentgate_progress_redis_errors_total",
        "Failed Redis operations of the progress backend (each is retried or logged)"
    );
    metrics::describe_gauge!(
        "agentgate_progress_redis_connected",
        "1 while the progress backend's Redis connection is up, by direction (out, in)"
    );
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
