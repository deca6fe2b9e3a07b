//! One WebSocket connection.
//!
//! The connection's own task reads client frames and answers them. Everything the client
//! receives goes through ONE bounded queue, drained to the socket by ONE writer task, so
//! frames are never interleaved and the socket has a single owner for writes. Each query
//! subscription is a task that feeds the queue with `try_send`: when the queue is full
//! the event is dropped (counted in `events_dropped`) and the subscription skips ahead,
//! telling the client `lagged` with the seq it resumes at — a slow client never makes a
//! query, the hub or another client wait. `subscribe_metrics` adds one more task.
//!
//! Every task of a connection is owned by it through a handle that aborts on drop, so
//! none outlives it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentgate_circuit_breaker::Transition;
use agentgate_pipeline::{CancelError, SubmitError};
use agentgate_progress::{Published, Subscription, SubscriptionItem};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::protocol::{self, ClientFrame, ErrorCode, FrameError};
use super::stats::{ConnectionGuard, Phase, WsRegistry};
use super::{MAX_CLIENT_FRAMES_PER_SEC, MAX_UNANSWERED_PINGS, PING_INTERVAL};
use crate::routes::metrics_value;
use crate::AppState;

/// How long one frame may take to be written before the client counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long sending our close frame, and then waiting for the client's, may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a going-away connection may take to flush what it has queued.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// After closing for a protocol violation such as an oversized frame (whose rest we never
/// read), how long the socket stays open so the close frame reaches the client before the kernel resets the
/// connection.
const CLOSE_LINGER: Duration = Duration::from_millis(100);
/// At most this many ready events are skipped in one go when a subscription skips ahead.
const MAX_SKIP: usize = 100_000;

/// RFC 6455 close codes.
const GOING_AWAY: u16 = 1001;
const PROTOCOL_ERROR: u16 = 1002;
const INVALID_PAYLOAD: u16 = 1007;
const MESSAGE_TOO_BIG: u16 = 1009;

/// What the upgrade handler hands to the connection.
pub(crate) struct Setup {
    pub(crate) state: AppState,
    /// `Ok` when `subscribe_metrics` is allowed, else why not.
    pub(crate) metrics: Result<(), &'static str>,
    /// `?query_id=&after_seq=`: subscribe on connect.
    pub(crate) subscribe: Option<(String, u64)>,
    pub(crate) guard: ConnectionGuard,
}

/// One item of the outgoing queue.
#[derive(Debug)]
enum Outgoing {
    /// A query event, exactly as the hub serialized it (counted in `events_sent`).
    Event(Arc<str>),
    /// A `circuit_breaker` event (counted in `events_sent`).
    Notice(String),
    /// An answer, an error, `lagged` or `metrics`.
    Frame(String),
    /// Close with this code once everything queued before is written.
    Close(u16),
}

/// Why the read loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The client closed, or the socket failed.
    Closed,
    /// The client broke the protocol: close at once with this code (1009 for a frame
    /// over `ws_max_message_bytes`, 1007 for text that is not UTF-8, 1002 otherwise).
    Refused(u16),
    /// Draining and every subscribed query has delivered its terminal event: 1001 after
    /// what is queued.
    GoingAway,
    /// The shutdown bound passed: 1001 now.
    Shutdown,
    /// The writer ended (write failure or timeout, unanswered pings).
    WriterGone,
}

/// A spawned task aborted when dropped, so it cannot outlive its connection.
struct Task(JoinHandle<()>);

/// Tells the connection a subscription task ended, however it ended (dropped on abort).
struct Ended {
    tx: mpsc::UnboundedSender<(String, u64)>,
    query_id: String,
    generation: u64,
}

/// A fixed one-second window of client frames.
struct RateLimit {
    window: Instant,
    frames: u32,
}

/// The reader's side of a connection.
struct Connection {
    state: AppState,
    ws: WsRegistry,
    out: mpsc::Sender<Outgoing>,
    metrics_rights: Result<(), &'static str>,
    metrics: Option<Task>,
    /// Live query subscriptions, by query: (generation, task).
    subs: HashMap<String, (u64, Task)>,
    generation: u64,
    /// Each subscription task says here when it ends: (query, generation).
    ended_tx: mpsc::UnboundedSender<(String, u64)>,
    rate: RateLimit,
    draining: bool,
    max_subscriptions: usize,
}

/// Serves one upgraded connection until it closes.
pub(crate) async fn serve(socket: WebSocket, setup: Setup) {
    let Setup {
        state,
        metrics,
        subscribe,
        guard,
    } = setup;
    let _guard = guard;
    let ws = state.ws().clone();
    let (sink, mut stream) = socket.split();
    let (out, rx) = mpsc::channel(ws.queue_capacity());
    let (kill, killed) = oneshot::channel::<Option<u16>>();
    let unanswered = Arc::new(AtomicU32::new(0));
    let mut writer = Task(tokio::spawn(write(
        sink,
        rx,
        killed,
        unanswered.clone(),
        ws.clone(),
    )));
    let mut phase = ws.phase();
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    let mut conn = Connection {
        max_subscriptions: state.config().server.ws_max_subscriptions,
        state,
        ws,
        out,
        metrics_rights: metrics,
        metrics: None,
        subs: HashMap::new(),
        generation: 0,
        ended_tx,
        rate: RateLimit::new(Instant::now()),
        draining: false,
    };
    if let Some((query_id, after_seq)) = subscribe {
        if let Err(e) = conn.subscribe(query_id, after_seq).await {
            conn.error(e).await;
        }
    }

    let end = loop {
        match *phase.borrow_and_update() {
            Phase::Serving => {}
            Phase::Draining => conn.draining = true,
            Phase::Closing => break End::Shutdown,
        }
        if conn.draining && conn.subs.is_empty() {
            break End::GoingAway;
        }
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Close(_))) | None => break End::Closed,
                Some(Ok(msg)) => {
                    // Any frame shows the client is alive, a pong included.
                    unanswered.store(0, Ordering::Relaxed);
                    conn.on_message(msg).await;
                }
                Some(Err(e)) => break close_code_for(e).map_or(End::Closed, End::Refused),
            },
            Some((query_id, generation)) = ended.recv() => conn.ended(&query_id, generation),
            changed = phase.changed() => if changed.is_err() { break End::Shutdown },
            _ = &mut writer.0 => break End::WriterGone,
        }
    };

    // Stop producing: the subscription and metrics tasks end here.
    let out = conn.out.clone();
    drop(conn);
    match end {
        End::GoingAway => {
            let queued =
                tokio::time::timeout(FLUSH_TIMEOUT, out.send(Outgoing::Close(GOING_AWAY))).await;
            if !matches!(queued, Ok(Ok(()))) {
                let _ = kill.send(Some(GOING_AWAY));
            }
        }
        End::Shutdown => {
            let _ = kill.send(Some(GOING_AWAY));
        }
        End::Refused(code) => {
            let _ = kill.send(Some(code));
        }
        End::Closed | End::WriterGone => {
            let _ = kill.send(None);
        }
    }
    drop(out);
    if end != End::WriterGone {
        let _ = tokio::time::timeout(FLUSH_TIMEOUT + CLOSE_TIMEOUT, &mut writer.0).await;
    }
    // Read until the client's close frame (or our reply to its close is flushed), so the
    // socket closes cleanly rather than with a reset.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    if matches!(end, End::Refused(_)) {
        tokio::time::sleep(CLOSE_LINGER).await;
    }
}

/// tungstenite refuses a frame or message over the configured maximum (and other
/// protocol violations) with an error and ends the stream without closing: the close
/// frame is ours to send. `None` for I/O errors, where there is nobody to tell.
fn close_code_for(e: axum::Error) -> Option<u16> {
    use tokio_tungstenite::tungstenite::Error;
    let inner = e.into_inner();
    let code = match inner.downcast_ref::<Error>() {
        Some(Error::Capacity(_)) => Some(MESSAGE_TOO_BIG),
        Some(Error::Utf8(_)) => Some(INVALID_PAYLOAD),
        Some(Error::Protocol(_)) => Some(PROTOCOL_ERROR),
        _ => None,
    };
    tracing::debug!(error = %inner, close = ?code, "WebSocket read failed");
    code
}

// === impl Connection ===

impl Connection {
    async fn on_message(&mut self, msg: Message) {
        let text = match msg {
            Message::Text(text) => Some(text),
            Message::Binary(_) => None,
            // tungstenite answers pings itself; pongs only show liveness.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return,
        };
        match self.rate.check(Instant::now()) {
            Rate::Allow => {}
            Rate::Drop => return,
            Rate::DropAndTell => {
                let e = FrameError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "more than {MAX_CLIENT_FRAMES_PER_SEC} frames in a second: frames are dropped until the next second"
                    ),
                );
                return self.error(e).await;
            }
        }
        let frame = match text {
            Some(text) => protocol::parse(&text),
            None => Err(FrameError::bad_request(
                "binary frames are not supported: send JSON text frames",
            )),
        };
        let result = match frame {
            Ok(frame) => self.on_frame(frame).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.error(e).await;
        }
    }

    async fn on_frame(&mut self, frame: ClientFrame) -> Result<(), FrameError> {
        match frame {
            ClientFrame::Query { input, request_id } => {
                self.check_room(None)
                    .map_err(|e| e.for_request(request_id.clone()))?;
                let engine = self.state.engine();
                let submitted = engine.submit(input).map_err(|e| {
                    match e {
                        SubmitError::UnknownPipeline(name) => {
                            FrameError::bad_request(format!("no pipeline named `{name}`"))
                        }
                        SubmitError::ShuttingDown => FrameError::new(
                            ErrorCode::ShuttingDown,
                            "the gateway is shutting down and takes no new queries",
                        ),
                    }
                    .for_request(request_id.clone())
                })?;
                let query_id = submitted.query_id;
                // Right after submit, from seq 0: the replay buffer holds anything
                // published in between, so no event is missed.
                let sub = engine
                    .hub()
                    .subscribe(&query_id, 0)
                    .map_err(|_| FrameError::unknown_query(&query_id))?;
                self.send(Outgoing::Frame(protocol::accepted(
                    request_id.as_ref(),
                    &query_id,
                )))
                .await;
                self.start(query_id, sub);
            }
            ClientFrame::Subscribe {
                query_id,
                after_seq,
            } => self.subscribe(query_id, after_seq).await?,
            ClientFrame::Unsubscribe { query_id } => {
                self.stop(&query_id).await;
                self.send(Outgoing::Frame(protocol::unsubscribed(&query_id)))
                    .await;
            }
            ClientFrame::Cancel { query_id } => match self.state.engine().cancel(&query_id) {
                // The terminal `cancelled` event reaches subscribers through the hub;
                // cancelling a query that already ended changes nothing.
                Ok(_) | Err(CancelError::AlreadyFinished(_)) => {}
                Err(CancelError::NotFound) => match self.state.redis() {
                    // Another replica runs it (or ran it): ask it. Its `cancelled` event
                    // reaches subscribers here through the mirror.
                    Some(redis) if redis.load(&query_id).await.unwrap_or(false) => {
                        if let Err(e) = redis.request_cancel(&query_id).await {
                            tracing::warn!(error = %e, %query_id, "progress backend: remote cancel failed");
                        }
                    }
                    _ => return Err(FrameError::unknown_query(&query_id)),
                },
            },
            ClientFrame::Ping => self.send(Outgoing::Frame(protocol::pong())).await,
            ClientFrame::SubscribeMetrics { interval } => {
                if let Err(why) = self.metrics_rights {
                    return Err(FrameError::new(ErrorCode::Unauthorized, why));
                }
                // A second subscribe_metrics replaces the first (a new interval).
                self.metrics = Some(Task(tokio::spawn(metrics(
                    self.state.clone(),
                    self.out.clone(),
                    interval,
                ))));
            }
        }
        Ok(())
    }

    /// Subscribes to `query_id` from `after_seq` (replacing a subscription to the same
    /// query, which is how a client recovers after `lagged`).
    async fn subscribe(&mut self, query_id: String, after_seq: u64) -> Result<(), FrameError> {
        self.check_room(Some(&query_id))?;
        let hub = self.state.engine().hub();
        let sub = match hub.subscribe(&query_id, after_seq) {
            Ok(sub) => sub,
            // A query of another replica that this one has not followed: load it.
            Err(_) => match self.state.redis() {
                Some(redis) if redis.load(&query_id).await.unwrap_or(false) => hub
                    .subscribe(&query_id, after_seq)
                    .map_err(|_| FrameError::unknown_query(&query_id))?,
                _ => return Err(FrameError::unknown_query(&query_id)),
            },
        };
        self.stop(&query_id).await;
        self.send(Outgoing::Frame(protocol::subscribed(&query_id, after_seq)))
            .await;
        self.start(query_id, sub);
        Ok(())
    }

    /// Whether one more subscription fits (`replacing` an existing one always does).
    fn check_room(&mut self, replacing: Option<&str>) -> Result<(), FrameError> {
        self.subs.retain(|_, (_, task)| !task.0.is_finished());
        if replacing.is_some_and(|q| self.subs.contains_key(q))
            || self.subs.len() < self.max_subscriptions
        {
            return Ok(());
        }
        let e = FrameError::new(
            ErrorCode::TooManySubscriptions,
            format!(
                "at most {} live subscriptions per connection: unsubscribe or wait for a query to end",
                self.max_subscriptions
            ),
        );
        Err(match replacing {
            Some(q) => e.about(q),
            None => e,
        })
    }

    fn start(&mut self, query_id: String, sub: Subscription) {
        self.generation += 1;
        let ended = Ended {
            tx: self.ended_tx.clone(),
            query_id: query_id.clone(),
            generation: self.generation,
        };
        let task = tokio::spawn(pump(sub, self.out.clone(), self.ws.clone(), ended));
        self.subs.insert(query_id, (self.generation, Task(task)));
    }

    /// Ends the subscription to `query_id`, if any, and waits until its task is gone, so
    /// nothing of it can follow what is queued next.
    async fn stop(&mut self, query_id: &str) {
        if let Some((_, mut task)) = self.subs.remove(query_id) {
            task.0.abort();
            let _ = (&mut task.0).await;
        }
    }

    /// A subscription task ended (its terminal event is queued, or it was stopped).
    fn ended(&mut self, query_id: &str, generation: u64) {
        if self
            .subs
            .get(query_id)
            .is_some_and(|(g, _)| *g == generation)
        {
            self.subs.remove(query_id);
        }
    }

    /// Queues a frame, waiting for room: answers are never dropped (a client that does
    /// not read stops being read, which only slows that client).
    async fn send(&self, item: Outgoing) {
        let _ = self.out.send(item).await;
    }

    async fn error(&self, e: FrameError) {
        self.send(Outgoing::Frame(e.to_json())).await;
    }
}

// === impl RateLimit ===

enum Rate {
    Allow,
    /// Over the limit: drop the frame and say so (once per window).
    DropAndTell,
    /// Over the limit, already said.
    Drop,
}

impl RateLimit {
    fn new(now: Instant) -> Self {
        Self {
            window: now,
            frames: 0,
        }
    }

    fn check(&mut self, now: Instant) -> Rate {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.frames = 0;
        }
        self.frames = self.frames.saturating_add(1);
        match self.frames {
            n if n <= MAX_CLIENT_FRAMES_PER_SEC => Rate::Allow,
            n if n == MAX_CLIENT_FRAMES_PER_SEC + 1 => Rate::DropAndTell,
            _ => Rate::Drop,
        }
    }
}

// === impl Task ===

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// === impl Ended ===

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self
            .tx
            .send((std::mem::take(&mut self.query_id), self.generation));
    }
}

// === the tasks ===

/// Writes the queue to the socket, and pings. Ends on a close, a write failure or
/// timeout, when the client stops answering pings, or when told to.
async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outgoing>,
    mut kill: oneshot::Receiver<Option<u16>>,
    unanswered: Arc<AtomicU32>,
    ws: WsRegistry,
) {
    let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let (msg, events) = tokio::select! {
            biased;
            killed = &mut kill => {
                if let Ok(Some(code)) = killed {
                    close(&mut sink, code).await;
                }
                return;
            }
            _ = ping.tick() => {
                if unanswered.fetch_add(1, Ordering::Relaxed) >= MAX_UNANSWERED_PINGS {
                    tracing::debug!("closing a WebSocket connection that stopped answering pings");
                    return;
                }
                (Message::Ping(Bytes::new()), 0)
            }
            item = rx.recv() => match item {
                None => return,
                Some(Outgoing::Close(code)) => {
                    close(&mut sink, code).await;
                    return;
                }
                Some(Outgoing::Event(json)) => (Message::Text(text(json)), 1),
                Some(Outgoing::Notice(s)) => (Message::Text(s.into()), 1),
                Some(Outgoing::Frame(s)) => (Message::Text(s.into()), 0),
            },
        };
        match tokio::time::timeout(WRITE_TIMEOUT, sink.send(msg)).await {
            Ok(Ok(())) => {
                if events > 0 {
                    ws.sent(events);
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket write failed");
                return;
            }
            Err(_) => {
                tracing::debug!("WebSocket write timed out: closing the connection");
                return;
            }
        }
    }
}

async fn close(sink: &mut SplitSink<WebSocket, Message>, code: u16) {
    let reason = match code {
        GOING_AWAY => "going away",
        PROTOCOL_ERROR => "protocol error",
        INVALID_PAYLOAD => "invalid UTF-8",
        MESSAGE_TOO_BIG => "message too big",
        _ => "",
    };
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
}

/// The hub's text as a frame payload, without copying it.
fn text(json: Arc<str>) -> Utf8Bytes {
    struct Owner(Arc<str>);
    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            self.0.as_bytes()
        }
    }
    // An `Arc<str>` is UTF-8, so the check cannot fail.
    Utf8Bytes::try_from(Bytes::from_owner(Owner(json))).unwrap_or_default()
}

/// Feeds one query's events to the connection's queue, never waiting for room except
/// to deliver the terminal event (exactly one per query) or, after a drop, the `lagged`
/// notice.
async fn pump(mut sub: Subscription, out: mpsc::Sender<Outgoing>, ws: WsRegistry, _ended: Ended) {
    let _live = ws.subscription();
    while let Some(item) = sub.recv().await {
        let (frame, terminal) = match item {
            SubscriptionItem::Event(e) => (Outgoing::Event(e.json.clone()), is_terminal(&e)),
            SubscriptionItem::Lagged { query_id, next_seq } => (
                Outgoing::Frame(protocol::lagged(&query_id, next_seq)),
                false,
            ),
        };
        match out.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Closed(_)) => return,
            Err(TrySendError::Full(frame)) if terminal => {
                let _ = out.send(frame).await;
                return;
            }
            Err(TrySendError::Full(frame)) => {
                if matches!(frame, Outgoing::Event(_)) {
                    ws.dropped(1);
                }
                if !skip_ahead(&mut sub, &out, &ws).await {
                    return;
                }
            }
        }
        if terminal {
            return;
        }
    }
}

/// The queue was full and an event was dropped: waits for room, skips the events that
/// piled up meanwhile (counting them as dropped), and tells the client where delivery
/// resumes: `lagged` with the seq of the next event it will get. The terminal event is
/// never skipped. Returns whether the subscription goes on.
async fn skip_ahead(sub: &mut Subscription, out: &mpsc::Sender<Outgoing>, ws: &WsRegistry) -> bool {
    let Ok(permit) = out.reserve().await else {
        return false;
    };
    let mut terminal = None;
    let mut skipped = 0;
    for _ in 0..MAX_SKIP {
        // `recv` is cancel-safe: an item not ready now is not lost.
        match sub.recv().now_or_never() {
            Some(Some(SubscriptionItem::Event(e))) if is_terminal(&e) => {
                terminal = Some(e);
                break;
            }
            Some(Some(SubscriptionItem::Event(_))) => skipped += 1,
            Some(Some(SubscriptionItem::Lagged { .. })) => {}
            Some(None) | None => break,
        }
    }
    ws.dropped(skipped);
    let next_seq = terminal.as_ref().map_or(sub.last_seq() + 1, |t| t.seq());
    permit.send(Outgoing::Frame(protocol::lagged(sub.query_id(), next_seq)));
    match terminal {
        Some(t) => {
            let _ = out.send(Outgoing::Event(t.json.clone())).await;
            false
        }
        None => true,
    }
}

fn is_terminal(e: &Published) -> bool {
    e.is_terminal()
}

/// `subscribe_metrics`: a `metrics` frame every `every` (the first at once), and every
/// breaker transition as a `circuit_breaker` event.
async fn metrics(state: AppState, out: mpsc::Sender<Outgoing>, every: Duration) {
    let mut breakers: Vec<broadcast::Receiver<Transition>> = state
        .engine()
        .agents()
        .values()
        .map(|a| a.breaker().subscribe())
        .collect();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let frame = protocol::metrics(metrics_value(&state));
                // A snapshot: when the queue is full this one is skipped; the next comes.
                if let Err(TrySendError::Closed(_)) = out.try_send(Outgoing::Frame(frame)) {
                    return;
                }
            }
            t = next_transition(&mut breakers) => {
                match out.try_send(Outgoing::Notice(protocol::circuit_breaker(&t))) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => state.ws().dropped(1),
                    Err(TrySendError::Closed(_)) => return,
                }
            }
        }
    }
}

/// The next transition of any breaker (cancel-safe: broadcast receivers keep their place).
async fn next_transition(breakers: &mut Vec<broadcast::Receiver<Transition>>) -> Transition {
    loop {
        if breakers.is_empty() {
            return std::future::pending().await;
        }
        let (result, index) = {
            let (result, index, _) =
                futures_util::future::select_all(breakers.iter_mut().map(|b| Box::pin(b.recv())))
                    .await;
            (result, index)
        };
        match result {
            Ok(t) => return t,
            // Transitions missed by falling behind are skipped; metrics frames carry state.
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => {
                breakers.swap_remove(index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_tells_once_per_window() {
        let start = Instant::now();
        let mut rate = RateLimit::new(start);
        for _ in 0..MAX_CLIENT_FRAMES_PER_SEC {
            assert!(matches!(rate.check(start), Rate::Allow));
        }
        assert!(matches!(rate.check(start), Rate::DropAndTell));
        assert!(matches!(rate.check(start), Rate::Drop));
        let later = start + Duration::from_secs(1);
        assert!(matches!(rate.check(later), Rate::Allow));
    }

    #[test]
    fn event_text_is_passed_through() {
        let json: Arc<str> = r#"{"type":"cancelled","seq":1}"#.into();
        assert_eq!(text(json.clone()).as_str(), &*json);
    }
}
