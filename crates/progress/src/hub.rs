//! Per-query streams: open a query's stream, publish to it, subscribe with replay.
//!
//! [`crate::MemoryHub`] holds the streams of one process. The Redis backend keeps one
//! per replica: it forwards what is published here through a [`PublishHook`], and
//! mirrors other replicas' events into foreign streams ([`Mirrored`]), so subscriptions
//! look the same wherever a query runs.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::SystemTime;

use tokio::sync::broadcast::{self, error::RecvError};

use crate::{EventKind, ProgressEvent, Published};

/// Called after each local publish (e.g. to forward to Redis). Must not block.
pub trait PublishHook: Send + Sync + fmt::Debug {
    /// `event` of `query_id` was published locally.
    fn published(&self, query_id: &Arc<str>, event: &Arc<Published>);
}

/// Hub figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Streams held (running and retained).
    pub queries: usize,
    /// Streams without a terminal event yet.
    pub running: usize,
    /// Live subscribers across all streams.
    pub subscribers: usize,
}

/// The query already has a stream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("query `{0}` already exists")]
pub struct OpenError(pub String);

/// Why a subscription could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// Never existed, or no longer retained.
    #[error("unknown query `{0}`")]
    UnknownQuery(String),
}

/// Why a publish was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The query already had its terminal event: there is exactly one.
    #[error("query `{0}` has already ended")]
    Ended(String),
}

/// What a subscriber receives.
#[derive(Clone, Debug, PartialEq)]
pub enum SubscriptionItem {
    /// The next event, in `seq` order.
    Event(Arc<Published>),
    /// Events before `next_seq` were missed (the subscriber fell behind, or they are no
    /// longer retained); delivery goes on from `next_seq`. Resubscribing with
    /// `after_seq = next_seq - 1` recovers what is still retained.
    Lagged {
        /// The query.
        query_id: Arc<str>,
        /// The seq of the next event delivered.
        next_seq: u64,
    },
}

/// Publishes the events of one query. Cheap to clone.
#[derive(Clone)]
pub struct QueryPublisher {
    stream: Arc<QueryStream>,
    hook: Option<Arc<dyn PublishHook>>,
}

/// One subscriber's view of one query's stream.
pub struct Subscription {
    query_id: Arc<str>,
    replay: VecDeque<Arc<Published>>,
    live: Option<broadcast::Receiver<Arc<Published>>>,
    last: u64,
    lag: Option<u64>,
    lagged: bool,
    ended: bool,
    /// Live events the channel overwrote before this subscriber read them.
    missed: u64,
}

/// What became of an event of another replica given to
/// [`MemoryHub::mirror`](crate::MemoryHub::mirror).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mirrored {
    /// Kept for replay and sent to live subscribers.
    Applied,
    /// Already there (or the query already ended here): skipped.
    Duplicate,
    /// Events before it are missing, from `next_seq` on. Nothing was kept: fill the gap
    /// first, or mirror it with `allow_gap` (subscribers then get `lagged`).
    Gap {
        /// The first missing `seq`.
        next_seq: u64,
    },
    /// The query runs on this replica: its events are published here, never mirrored.
    Local,
}

/// Called when a stream ends (for retention).
pub(crate) trait OnEnd: Send + Sync {
    /// The stream of `query_id` took its terminal event; it retains `bytes` of event
    /// text (and its id) from now on.
    fn ended(&self, query_id: &Arc<str>, bytes: usize);
}

/// The stream of one query: its sequence counter, replay buffer and live channel.
pub(crate) struct QueryStream {
    query_id: Arc<str>,
    state: Mutex<StreamState>,
    on_end: Weak<dyn OnEnd>,
    /// A query of another replica, whose events arrive through [`QueryStream::mirror`].
    foreign: bool,
}

struct StreamState {
    next_seq: u64,
    /// The last `capacity` events, for replay. Grows as events come, and is cut to its
    /// length at the terminal event: a finished stream is retained for minutes.
    buffer: VecDeque<Arc<Published>>,
    capacity: usize,
    /// The live channel, made by the first subscriber (most queries have none, and a
    /// channel is `live_buffer` slots) and dropped at the terminal event.
    live: Option<broadcast::Sender<Arc<Published>>>,
    live_buffer: usize,
    ended: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// === impl QueryStream ===

impl fmt::Debug for QueryStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryStream")
            .field("query_id", &self.query_id)
            .finish_non_exhaustive()
    }
}

impl QueryStream {
    /// The stream of a query run here, or of another replica's (`foreign`), whose events
    /// arrive through [`QueryStream::mirror`].
    pub(crate) fn new(
        query_id: Arc<str>,
        replay: usize,
        live_buffer: usize,
        on_end: Weak<dyn OnEnd>,
        foreign: bool,
    ) -> Self {
        Self {
            query_id,
            state: Mutex::new(StreamState {
                next_seq: 1,
                buffer: VecDeque::new(),
                capacity: replay.max(1),
                live: None,
                live_buffer: live_buffer.max(1),
                ended: false,
            }),
            on_end,
            foreign,
        }
    }

    pub(crate) fn is_foreign(&self) -> bool {
        self.foreign
    }

    /// The `seq` the next event will have.
    pub(crate) fn next_seq(&self) -> u64 {
        lock(&self.state).next_seq
    }

    /// Takes in an event published by another replica, keeping its `seq` and text.
    pub(crate) fn mirror(&self, event: Published, allow_gap: bool) -> Mirrored {
        if !self.foreign {
            return Mirrored::Local;
        }
        let terminal = event.is_terminal();
        let mut retained = 0;
        {
            let mut state = lock(&self.state);
            if state.ended || event.seq() < state.next_seq {
                return Mirrored::Duplicate;
            }
            if event.seq() > state.next_seq && !allow_gap {
                return Mirrored::Gap {
                    next_seq: state.next_seq,
                };
            }
            let event = Arc::new(event);
            if let Some(live) = &state.live {
                // Subscribers see a skipped range as `lagged` (see `Subscription::recv`).
                let _ = live.send(event.clone());
            }
            state.next_seq = event.seq() + 1;
            if state.buffer.len() == state.capacity {
                state.buffer.pop_front();
            }
            state.buffer.push_back(event);
            if terminal {
                state.ended = true;
                state.live = None;
                state.buffer.shrink_to_fit();
                retained = state.retained_bytes(&self.query_id);
            }
        }
        if terminal {
            if let Some(on_end) = self.on_end.upgrade() {
                on_end.ended(&self.query_id, retained);
            }
        }
        Mirrored::Applied
    }

    /// The first and the last event still retained.
    pub(crate) fn retained_ends(&self) -> Option<(Arc<Published>, Arc<Published>)> {
        let state = lock(&self.state);
        Some((state.buffer.front()?.clone(), state.buffer.back()?.clone()))
    }

    pub(crate) fn is_running(&self) -> bool {
        !lock(&self.state).ended
    }

    pub(crate) fn subscribers(&self) -> usize {
        lock(&self.state)
            .live
            .as_ref()
            .map_or(0, broadcast::Sender::receiver_count)
    }

    fn publish(&self, kind: EventKind) -> Result<Arc<Published>, PublishError> {
        let terminal = kind.is_terminal();
        let mut retained = 0;
        let published = {
            let mut state = lock(&self.state);
            if state.ended {
                return Err(PublishError::Ended(self.query_id.to_string()));
            }
            let event = Arc::new(Published::new(ProgressEvent {
                kind,
                query_id: self.query_id.to_string(),
                seq: state.next_seq,
                ts: SystemTime::now(),
            }));
            if let Some(live) = &state.live {
                // Never blocks: a subscriber that is behind will see `Lagged`.
                let _ = live.send(event.clone());
            }
            state.next_seq += 1;
            if state.buffer.len() == state.capacity {
                state.buffer.pop_front();
            }
            state.buffer.push_back(event.clone());
            if terminal {
                state.ended = true;
                // Dropping the sender ends every live subscription after the terminal event.
                state.live = None;
                state.buffer.shrink_to_fit();
                retained = state.retained_bytes(&self.query_id);
            }
            event
        };
        if terminal {
            if let Some(on_end) = self.on_end.upgrade() {
                on_end.ended(&self.query_id, retained);
            }
        }
        Ok(published)
    }

    pub(crate) fn subscribe(&self, after_seq: u64) -> Subscription {
        let mut state = lock(&self.state);
        let replay: VecDeque<_> = state
            .buffer
            .iter()
            .filter(|e| e.seq() > after_seq)
            .cloned()
            .collect();
        // Events after `after_seq` that are no longer buffered were missed.
        let first = replay.front().map_or(state.next_seq, |e| e.seq());
        let lag = (first > after_seq + 1).then_some(first);
        Subscription {
            query_id: self.query_id.clone(),
            replay,
            live: live_receiver(&mut state),
            last: after_seq,
            lag,
            lagged: false,
            ended: false,
            missed: 0,
        }
    }
}

impl StreamState {
    /// What a finished stream holds: its events' text, their slots, and its id.
    fn retained_bytes(&self, query_id: &str) -> usize {
        let slot = std::mem::size_of::<Arc<Published>>() + std::mem::size_of::<Published>();
        let events: usize = self.buffer.iter().map(|e| e.json.len() + slot).sum();
        events + query_id.len() + std::mem::size_of::<QueryStream>()
    }
}

/// A receiver of the stream's live events; `None` once it has ended.
fn live_receiver(state: &mut StreamState) -> Option<broadcast::Receiver<Arc<Published>>> {
    if state.ended {
        return None;
    }
    let capacity = state.live_buffer;
    let live = state
        .live
        .get_or_insert_with(|| broadcast::channel(capacity).0);
    Some(live.subscribe())
}

// === impl QueryPublisher ===

impl QueryPublisher {
    pub(crate) fn new(stream: Arc<QueryStream>, hook: Option<Arc<dyn PublishHook>>) -> Self {
        Self { stream, hook }
    }

    /// The query.
    pub fn query_id(&self) -> &str {
        &self.stream.query_id
    }

    /// The query's id as the hub holds it, to share rather than copy (callers that
    /// keep per-query state keyed by it for as long as the hub keeps the stream).
    pub fn shared_query_id(&self) -> Arc<str> {
        self.stream.query_id.clone()
    }

    /// Publishes the next event: stamps `seq` and `ts`, keeps it for replay, sends it to
    /// live subscribers. Never blocks. After the terminal event every publish is refused.
    pub fn publish(&self, kind: EventKind) -> Result<Arc<Published>, PublishError> {
        let event = self.stream.publish(kind)?;
        if let Some(hook) = &self.hook {
            hook.published(&self.stream.query_id, &event);
        }
        Ok(event)
    }

    /// Whether the terminal event was published.
    pub fn has_ended(&self) -> bool {
        !self.stream.is_running()
    }
}

impl fmt::Debug for QueryPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryPublisher")
            .field("query_id", &self.stream.query_id)
            .finish()
    }
}

// === impl Subscription ===

impl Subscription {
    /// The query.
    pub fn query_id(&self) -> &Arc<str> {
        &self.query_id
    }

    /// The seq of the last event delivered (or the `after_seq` subscribed with).
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    /// Live events published but not read yet (replayed ones not counted): how far
    /// behind this subscriber is.
    pub fn live_backlog(&self) -> usize {
        self.live.as_ref().map_or(0, broadcast::Receiver::len)
    }

    /// How many live events were overwritten before this subscriber read them (it
    /// fell more than the live buffer behind), since the last call.
    pub fn take_missed(&mut self) -> u64 {
        std::mem::take(&mut self.missed)
    }

    /// The next item; `None` after the terminal event (or when the query is gone).
    pub async fn recv(&mut self) -> Option<SubscriptionItem> {
        loop {
            if let Some(next_seq) = self.lag.take() {
                return Some(SubscriptionItem::Lagged {
                    query_id: self.query_id.clone(),
                    next_seq,
                });
            }
            if let Some(event) = self.replay.pop_front() {
                return Some(self.deliver(event));
            }
            if self.ended {
                return None;
            }
            let live = self.live.as_mut()?;
            match live.recv().await {
                Ok(event) if event.seq() <= self.last => continue,
                Ok(event) => {
                    if self.lagged || event.seq() > self.last + 1 {
                        self.lagged = false;
                        self.lag = Some(event.seq());
                        self.replay.push_front(event);
                        continue;
                    }
                    return Some(self.deliver(event));
                }
                Err(RecvError::Lagged(n)) => {
                    self.lagged = true;
                    self.missed += n;
                }
                Err(RecvError::Closed) => {
                    self.live = None;
                    return None;
                }
            }
        }
    }

    fn deliver(&mut self, event: Arc<Published>) -> SubscriptionItem {
        self.last = event.seq();
        if event.is_terminal() {
            self.ended = true;
            self.live = None;
        }
        SubscriptionItem::Event(event)
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("query_id", &self.query_id)
            .field("last", &self.last)
            .field("replay", &self.replay.len())
            .field("ended", &self.ended)
            .finish()
    }
}
