//! The in-process hub: one process, no external services (the default backend), and
//! each replica's local streams under the Redis backend.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::hub::{OnEnd, QueryStream};
use crate::quota::{LocalQuotas, Quota, QuotaRefusal};
use crate::{
    Backend, BackendError, BackendHealth, BoxFuture, HubStats, Mirrored, OpenError, PublishHook,
    Published, QueryControl, QueryPublisher, SubscribeError, Subscription,
};

/// How much the hub keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Events kept per query for resume (`[progress] replay_events`).
    pub replay_events: usize,
    /// How long finished queries stay subscribable (`[server] query_retention`).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// At most this many finished queries are kept, oldest evicted first.
    pub max_finished: usize,
    /// … and at most about this many bytes of their events' text (large outputs, or
    /// many events per query, reach this before `max_finished`).
    pub max_finished_bytes: usize,
    /// Events a live subscriber may fall behind before it gets `lagged`.
    pub live_buffer: usize,
}

/// The in-memory [`Backend`]: per-query streams of one process. Cheap to clone.
///
/// Its own methods are synchronous; as a [`Backend`] it knows no other replica (no
/// remote records, nothing to cancel elsewhere, always healthy).
#[derive(Clone, Debug)]
pub struct MemoryHub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: HubConfig,
    hook: Option<Arc<dyn PublishHook>>,
    queries: Mutex<HashMap<Arc<str>, Arc<QueryStream>>>,
    /// Finished queries, oldest first, for retention.
    finished: Mutex<Finished>,
    /// Client quotas counted in this process.
    quotas: LocalQuotas,
    me: Weak<Inner>,
}

/// Finished queries, oldest first, with the bytes each retains, and their sum.
#[derive(Debug, Default)]
struct Finished {
    queue: VecDeque<(Instant, Arc<str>, usize)>,
    bytes: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// === impl HubConfig ===

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            replay_events: 256,
            retention: Duration::from_secs(600),
            max_finished: 10_000,
            max_finished_bytes: 64 * 1024 * 1024,
            live_buffer: 256,
        }
    }
}

// === impl MemoryHub ===

impl MemoryHub {
    /// A hub keeping what `config` says.
    pub fn new(config: HubConfig) -> Self {
        Self::build(config, None)
    }

    /// A hub that also hands every published event to `hook` (used by other backends).
    pub fn with_hook(config: HubConfig, hook: Arc<dyn PublishHook>) -> Self {
        Self::build(config, Some(hook))
    }

    fn build(config: HubConfig, hook: Option<Arc<dyn PublishHook>>) -> Self {
        Self {
            inner: Arc::new_cyclic(|me| Inner {
                config,
                hook,
                queries: Mutex::default(),
                finished: Mutex::default(),
                quotas: LocalQuotas::default(),
                me: me.clone(),
            }),
        }
    }

    /// The client quotas counted in this process (all of them in one process; what a
    /// replica falls back to when the others cannot be reached).
    pub fn quotas(&self) -> &LocalQuotas {
        &self.inner.quotas
    }

    /// Starts the stream of a new query and returns its publisher.
    pub fn open(&self, query_id: &str) -> Result<QueryPublisher, OpenError> {
        self.inner.evict(Instant::now());
        let id: Arc<str> = query_id.into();
        let stream = self.inner.stream(id.clone(), false);
        let mut queries = lock(&self.inner.queries);
        if queries.contains_key(&id) {
            return Err(OpenError(query_id.to_owned()));
        }
        queries.insert(id, stream.clone());
        Ok(QueryPublisher::new(stream, self.inner.hook.clone()))
    }

    /// Subscribes to a query: the retained events with `seq > after_seq`, then the live
    /// ones, with no gap and no duplicate between the two.
    pub fn subscribe(
        &self,
        query_id: &str,
        after_seq: u64,
    ) -> Result<Subscription, SubscribeError> {
        let stream = lock(&self.inner.queries)
            .get(query_id)
            .cloned()
            .ok_or_else(|| SubscribeError::UnknownQuery(query_id.to_owned()))?;
        Ok(stream.subscribe(after_seq))
    }

    /// Figures for metrics.
    pub fn stats(&self) -> HubStats {
        let queries = lock(&self.inner.queries);
        let mut stats = HubStats {
            queries: queries.len(),
            ..HubStats::default()
        };
        for stream in queries.values() {
            if stream.is_running() {
                stats.running += 1;
                stats.subscribers += stream.subscribers();
            }
        }
        stats
    }

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// Takes in an event of `query_id` published by another replica (the Redis backend
    /// calls this), keeping its text, `seq` and `ts`; local subscribers get it like any
    /// other. The first event of an unknown query starts its (foreign) stream; one that
    /// is not `seq` 1 is a [`Mirrored::Gap`] unless `allow_gap`.
    pub fn mirror(&self, query_id: &Arc<str>, event: Published, allow_gap: bool) -> Mirrored {
        let stream = {
            let mut queries = lock(&self.inner.queries);
            match queries.get(query_id) {
                Some(stream) => stream.clone(),
                None => {
                    if event.seq() > 1 && !allow_gap {
                        return Mirrored::Gap { next_seq: 1 };
                    }
                    let stream = self.inner.stream(query_id.clone(), true);
                    queries.insert(query_id.clone(), stream.clone());
                    stream
                }
            }
        };
        stream.mirror(event, allow_gap)
    }

    /// Whether the hub holds `query_id`'s stream (local or mirrored, running or retained).
    pub fn contains(&self, query_id: &str) -> bool {
        lock(&self.inner.queries).contains_key(query_id)
    }

    /// Where the stream of `query_id` stands: the `seq` its next event gets, and
    /// whether it is still running (no terminal event yet). `None` when the hub does not
    /// hold it.
    pub fn position(&self, query_id: &str) -> Option<(u64, bool)> {
        let stream = lock(&self.inner.queries).get(query_id).cloned()?;
        Some((stream.next_seq(), stream.is_running()))
    }

    /// The first and the last event of `query_id` still retained (for a replica that
    /// ends another's query: when it started, which stage it was in).
    pub fn retained_ends(&self, query_id: &str) -> Option<(Arc<Published>, Arc<Published>)> {
        let stream = lock(&self.inner.queries).get(query_id).cloned()?;
        stream.retained_ends()
    }

    /// Mirrored queries still running, with the `seq` each expects next (to catch up
    /// after missing messages).
    pub fn mirrored_running(&self) -> Vec<(Arc<str>, u64)> {
        lock(&self.inner.queries)
            .iter()
            .filter(|(_, s)| s.is_foreign() && s.is_running())
            .map(|(id, s)| (id.clone(), s.next_seq()))
            .collect()
    }

    /// Drops finished queries past their retention or beyond `max_finished` (or
    /// `max_finished_bytes`).
    pub fn evict_expired(&self) {
        self.inner.evict(Instant::now());
    }
}

// === impl Inner ===

impl Inner {
    /// A new stream for `query_id`: of a query run here, or of another replica's
    /// (`foreign`).
    fn stream(&self, query_id: Arc<str>, foreign: bool) -> Arc<QueryStream> {
        let on_end: Weak<dyn OnEnd> = self.me.clone();
        let (replay, live) = (self.config.replay_events, self.config.live_buffer);
        Arc::new(QueryStream::new(query_id, replay, live, on_end, foreign))
    }

    /// Drops finished queries past their retention, and the oldest while more than
    /// `max_finished` of them, or more than `max_finished_bytes`, are held.
    fn evict(&self, now: Instant) {
        let expired: Vec<Arc<str>> = {
            let mut finished = lock(&self.finished);
            let mut out = Vec::new();
            while let Some((at, _, _)) = finished.queue.front() {
                let too_many = finished.queue.len() > self.config.max_finished
                    || finished.bytes > self.config.max_finished_bytes;
                if !too_many && now.saturating_duration_since(*at) < self.config.retention {
                    break;
                }
                if let Some((_, id, bytes)) = finished.queue.pop_front() {
                    finished.bytes -= bytes;
                    out.push(id);
                }
            }
            out
        };
        if !expired.is_empty() {
            let mut queries = lock(&self.queries);
            for id in expired {
                queries.remove(&id);
            }
        }
    }
}

impl OnEnd for Inner {
    fn ended(&self, query_id: &Arc<str>, bytes: usize) {
        let now = Instant::now();
        {
            let mut finished = lock(&self.finished);
            finished.queue.push_back((now, query_id.clone(), bytes));
            finished.bytes += bytes;
        }
        self.evict(now);
    }
}

// === impl Backend for MemoryHub ===

impl Backend for MemoryHub {
    fn open(&self, query_id: &str) -> Result<QueryPublisher, OpenError> {
        MemoryHub::open(self, query_id)
    }

    fn subscribe<'a>(
        &'a self,
        query_id: &'a str,
        after_seq: u64,
    ) -> BoxFuture<'a, Result<Subscription, SubscribeError>> {
        let sub = MemoryHub::subscribe(self, query_id, after_seq);
        Box::pin(std::future::ready(sub))
    }

    fn is_shared(&self) -> bool {
        false
    }

    fn put_record(&self, _query_id: &str, _json: String, _finished: bool) {}

    fn record<'a>(
        &'a self,
        _query_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, BackendError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn cancel<'a>(&'a self, _query_id: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        // No other replica runs anything.
        Box::pin(std::future::ready(Ok(())))
    }

    fn set_control(&self, _control: Arc<dyn QueryControl>) {}

    fn admit<'a>(
        &'a self,
        client: &'a str,
        ticket: &'a str,
        quota: Quota,
        _hold: Duration,
    ) -> BoxFuture<'a, Result<(), QuotaRefusal>> {
        Box::pin(std::future::ready(
            self.inner.quotas.admit(client, ticket, quota),
        ))
    }

    fn release(&self, client: &str, ticket: &str) {
        self.inner.quotas.release(client, ticket);
    }

    fn health(&self) -> BackendHealth {
        BackendHealth {
            name: "memory",
            connected: true,
            reason: None,
        }
    }

    fn stats(&self) -> HubStats {
        MemoryHub::stats(self)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}
