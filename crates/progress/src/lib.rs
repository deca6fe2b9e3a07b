//! Progress events for queries: what clients watch over the WebSocket.
//!
//! - [`event`]: the JSON shapes of SPEC §3 (`progress`, `error`, `completed`, `failed`,
//!   `cancelled`), each serialized once into a [`Published`] however many clients get it.
//!   A `completed` event's result is a [`JsonText`]: JSON kept as shared text, so the
//!   query's record can hold the same bytes ([`Published::completed_result`]).
//! - [`ProgressHub`]: per-query streams. Each query has a gap-free `seq` from 1, a
//!   bounded replay buffer (`replay_events`), any number of subscribers, and exactly one
//!   terminal event. Subscribing with `after_seq` replays what is retained and then goes
//!   live with no gap and no duplicate; a subscriber that falls behind gets
//!   [`SubscriptionItem::Lagged`] and the publisher never waits for it. Finished queries
//!   are kept for `retention` and at most `max_finished` of them, so memory stays bounded;
//!   a finished stream keeps only its events' text (its live channel, made by the first
//!   subscriber, is dropped at the terminal event).
//!   [`MemoryHub`] is the in-process backend; the trait lets a Redis backend carry the
//!   same streams across replicas without touching callers.
//! - [`ProgressLayer`]: emits a stage's events (started, error per failed attempt,
//!   retrying with attempt and delay, completed) for calls that carry a
//!   [`ProgressContext`], by observing the request's attempt ledger (shared vocabulary
//!   from `agentgate-classify`: this crate depends on no other layer).
//!
//! # Example
//!
//! ```
//! use agentgate_progress::{EventKind, HubConfig, MemoryHub, ProgressHub, SubscriptionItem};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let hub = MemoryHub::new(HubConfig::default());
//! let publisher = hub.open("q1").unwrap();
//! publisher.publish(EventKind::Cancelled {}).unwrap();
//! let mut sub = hub.subscribe("q1", 0).unwrap();
//! let Some(SubscriptionItem::Event(e)) = sub.recv().await else { panic!() };
//! assert_eq!(e.seq(), 1);
//! assert!(e.json.contains(r#""type":"cancelled""#));
//! assert!(sub.recv().await.is_none());
//! # }
//! ```

pub mod event;
mod hub;
mod layer;
mod memory;

pub use event::{ErrorInfo, EventKind, JsonText, ProgressEvent, Published, StageStatus};
pub use hub::{
    HubStats, Mirrored, OpenError, ProgressHub, PublishError, PublishHook, QueryPublisher,
    SubscribeError, Subscription, SubscriptionItem,
};
pub use layer::{ProgressContext, ProgressFuture, ProgressLayer, ProgressService};
pub use memory::{HubConfig, MemoryHub};
