//! The Redis backend of agentgate's progress events and query records
//! (`[progress] backend = "redis"`, SPEC §5 "Scale-out"): with it, every replica can
//! serve `GET /api/query/{id}` and WebSocket subscribe / replay for queries that run on
//! any other replica.
//!
//! [`RedisBackend`] is the [`Backend`](agentgate_progress::Backend) the gateway picks
//! for `backend = "redis"`; the engine, routes and WebSocket code only see the trait.
//!
//! # How it works
//!
//! Each replica keeps its own [`MemoryHub`]; the backend connects the hubs through Redis:
//!
//! - **Out**: every event a replica publishes for its own queries goes, in order, through
//!   one writer task that pipelines, per event,
//!   `XADD {prefix}:q:{id}:events MAXLEN ~ N * e <json>` (about the last
//!   `replay_events` events of each query) and `PEXPIRE` on that key (`running_ttl`
//!   while the query runs, `retention` after its terminal event), and per batch one
//!   `PUBLISH {prefix}:events "<replica>|<json>\n<json>…"` (the writer waits a
//!   millisecond after the first item for the rest of a burst). Query records go the same
//!   way (`SET {prefix}:q:{id}:record`, and the replica's running set).
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
//!   its stream the first time a client subscribes to it; records are read with `GET`.
//! - **Cancel**: a replica asked to cancel a query it does not run publishes
//!   `cancel|<id>` on `{prefix}:control`; every replica hands it to its engine (the
//!   [`QueryControl`](agentgate_progress::QueryControl)), and the one running the query
//!   cancels it.
//! - **Replica leases** (SPEC §9): each replica renews a lease in Redis every third of
//!   [`RedisSettings::lease`] and watches the others'. When one's lease expires, each of
//!   its queries without a terminal event is ended by exactly one survivor (`SET NX` on a
//!   per-query key): its record is updated through the survivor's
//!   [`QueryControl::end_lost`](agentgate_progress::QueryControl::end_lost) (`failed`,
//!   kind `replica_lost`), then a `failed` event continues its stream, so every
//!   replica's subscribers get a terminal event within `lease` and a second or two
//!   (`lease` module docs: how, and what survives a Redis restart).
//! - **Connections**: `redis_url` may carry a password (`redis://:pw@host`, `AUTH`) and
//!   use TLS (`rediss://`, rustls, with the system's roots or
//!   [`RedisSettings::ca_pem`]). The password is never logged nor shown ([`redact`]).
//!
//! Every replica therefore holds the events of every replica's recent queries, bounded by
//! the hub's own `replay_events`, `retention` and `max_finished` caps. Breakers stay per
//! replica (as in Envoy and Linkerd).
//!
//! Redis being down never fails a query: the replica keeps serving its own queries and
//! clients, reconnects with backoff, and reports the connection as down meanwhile
//! (`/readyz` says `"redis": "unavailable"`, `/api/orchestration/health` is
//! `degraded`).
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use agentgate_progress::Backend;
//! use agentgate_progress_redis::{RedisBackend, RedisSettings};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Connects in the background: a Redis that is down is retried, never an error here.
//! let backend: Arc<dyn Backend> =
//!     Arc::new(RedisBackend::start(RedisSettings::new("redis://127.0.0.1:6379"))?);
//! // … hand it to `agentgate_pipeline::Engine::new` …
//! println!("redis connected: {}", backend.health().connected);
//! backend.close().await;
//! # Ok(()) }
//! ```
//!
//! [`MemoryHub`]: agentgate_progress::MemoryHub
//! [`MemoryHub::mirror`]: agentgate_progress::MemoryHub::mirror

mod backend;
mod failures;
mod lease;
mod reader;
mod settings;
#[cfg(feature = "test-util")]
pub mod test_util;
mod writer;

pub use backend::RedisBackend;
pub use settings::{host_name, redact, InvalidUrl, RedisSettings};

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
    metrics::describe_counter!(
        "agentgate_replica_lost_queries_total",
        "Queries of lost replicas (expired lease) that this replica ended with replica_lost"
    );
}
