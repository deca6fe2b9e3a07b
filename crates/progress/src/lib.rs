//! Progress events for queries: what clients watch over the WebSocket.
//!
//! - [`event`]: the JSON shapes of SPEC §3 (`progress`, `error`, `completed`, `failed`,
//!   `cancelled`) and §6 (`output`: a chunk of a streamed stage answer), each serialized once into a [`Published`] however many clients get it.
//!   A `completed` event's result is a [`JsonText`]: JSON kept as shared text, so the
//!   query's record can hold the same bytes ([`Published::completed_result`]).
//! - [`Backend`]: everything that differs between one process and several replicas —
//!   open a query's stream, subscribe with replay (a query of another replica is loaded
//!   on demand), share and read query records (as JSON text), cancel a query wherever it
//!   runs ([`QueryControl`] is the replica's side of that, and also ends the queries of
//!   a lost replica: [`QueryControl::end_lost`]), admit and release a client's queries
//!   under its [`Quota`] (SPEC §7: across replicas when shared), health for `/readyz`,
//!   stats, close. The engine, routes and WebSocket code hold an `Arc<dyn Backend>` and
//!   never name an implementation.
//! - [`MemoryHub`]: per-query streams, and the one-process backend. Each query has a
//!   gap-free `seq` from 1, a bounded replay buffer (`replay_events`), any number of
//!   subscribers, and exactly one terminal event. Subscribing with `after_seq` replays
//!   what is retained and then goes live with no gap and no duplicate; a subscriber that
//!   falls behind gets [`SubscriptionItem::Lagged`] and the publisher never waits for it.
//!   Finished queries are kept for `retention` and at most `max_finished` of them, so
//!   memory stays bounded; a finished stream keeps only its events' text (its live
//!   channel, made by the first subscriber, is dropped at the terminal event). The Redis
//!   backend (`agentgate-progress-redis`) keeps one per replica and carries the same
//!   streams across replicas ([`MemoryHub::mirror`], [`PublishHook`]).
//! - [`quota`]: per-client quotas — running queries and a token bucket —
//!   counted in one process by [`LocalQuotas`] (each [`MemoryHub`] has one).
//! - [`ProgressLayer`]: emits a stage's events (started, error per failed attempt,
//!   retrying with attempt and delay, completed) for calls that carry a
//!   [`ProgressContext`], by observing the request's attempt ledger (shared vocabulary
//!   from `agentgate-classify`: this crate depends on no other layer).
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//!
//! use agentgate_progress::{Backend, EventKind, HubConfig, MemoryHub, SubscriptionItem};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let backend: Arc<dyn Backend> = Arc::new(MemoryHub::new(HubConfig::default()));
//! let publisher = backend.open("q1").unwrap();
//! publisher.publish(EventKind::Cancelled {}).unwrap();
//! let mut sub = backend.subscribe("q1", 0).await.unwrap();
//! let Some(SubscriptionItem::Event(e)) = sub.recv().await else { panic!() };
//! assert_eq!(e.seq(), 1);
//! assert!(e.json.contains(r#""type":"cancelled""#));
//! assert!(sub.recv().await.is_none());
//! # }
//! ```

mod backend;
pub mod event;
mod hub;
mod layer;
mod memory;
pub mod quota;

pub use backend::{
    Backend, BackendError, BackendHealth, BoxFuture, Ending, LostQuery, QueryControl,
};
pub use event::{ErrorInfo, EventKind, JsonText, ProgressEvent, Published, StageStatus};
pub use hub::{
    HubStats, Mirrored, OpenError, PublishError, PublishHook, QueryPublisher, SubscribeError,
    Subscription, SubscriptionItem,
};
pub use layer::{ProgressContext, ProgressFuture, ProgressLayer, ProgressService, StreamedAnswer};
pub use memory::{HubConfig, MemoryHub};
pub use quota::{LocalQuotas, Quota, QuotaRefusal};
