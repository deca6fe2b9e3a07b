//! One WebSocket connection.
//!
//! Two tasks per connection. The connection's own task reads client frames and answers
//! them. The writer task owns the socket's write half and the connection's query
//! subscriptions: it waits on the answers queue, the subscriptions' live channels and the
//! ping timer at once, gathers everything that is ready (up to [`MAX_BATCH`] frames) and
//! writes it with one flush, so a burst of events costs one task wake-up and one
//! `write` per connection, not one per event. A subscription falls behind when its client
//! reads slowly; once it is `queue_capacity` events behind (or its live channel
//! overflowed) it skips ahead to the newest event and tells the client `lagged` with the
//! seq it resumes at; the terminal event is never skipped. So a slow client never makes a
//! query, the hub or another client wait. `subscribe_metrics` adds one more task, which
//! feeds the answers queue.
//!
//! Every task of a connection is owned by it through a handle that aborts on drop, so
//! none outlives it.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use agentgate_circuit_breaker::Transition;
use agentgate_pipeline::{Caller, CancelError, QueryInput, SubmitError};
use agentgate_progress::{Published, Subscription, SubscriptionItem};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::stream::{BoxStream, SplitSink};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::protocol::{self, ClientFrame, ErrorCode, FrameError};
use super::stats::{ConnectionGuard, Phase, SubscriptionGuard, WsRegistry};
use super::{MAX_CLIENT_FRAMES_PER_SEC, MAX_UNANSWERED_PINGS, PING_INTERVAL};
use crate::auth::Client;
use crate::error::Problem;
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
/// At most this many frames are gathered for one flush.
const MAX_BATCH: usize = 64;

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
    /// Who connected: whose queries it sees, what it may run, its quota.
    pub(crate) client: Client,
}

/// One item of the answers queue (reader and metrics task → writer), in order.
enum Outgoing {
    /// A `circuit_breaker` event (counted in `events_sent`).
    Notice(String),
    /// An answer, an error or `metrics`.
    Frame(String),
    /// Write `frame` (`accepted` or `subscribed`), then deliver the subscription's events,
    /// replacing any earlier subscription to the same query. (Boxed: the queue's first
    /// block of 32 slots is allocated per connection, so its items are kept small.)
    Subscribe(Box<(String, Live)>),
    /// Stop delivering this query's events.
    Unsubscribe(String),
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

/// The connection's live subscriptions: query → generation. The reader adds and stops
/// them; the writer ends them when it takes their terminal event.
#[derive(Default)]
struct LiveSet {
    subs: std::sync::Mutex<HashMap<String, u64>>,
    /// Told when the last subscription ends (a draining connection then closes).
    emptied: tokio::sync::Notify,
}

/// Ends one subscription in the [`LiveSet`] when dropped, however it ended (terminal
/// event taken, replaced, unsubscribed, or the writer gone).
struct Ended {
    set: Arc<LiveSet>,
    query_id: String,
    generation: u64,
}

/// One query subscription, as the writer holds it.
struct Live {
    query_id: String,
    frames: BoxStream<'static, Delivery>,
    done: bool,
    /// Returned `Pending` in the current gather (its waker is registered): not polled
    /// again until the next one.
    idle: bool,
    _ended: Ended,
}

/// What a subscription hands the writer.
enum Delivery {
    /// An event, exactly as the hub serialized it (counted in `events_sent`); the bytes
    /// are shared by every connection that sends it.
    Event { json: Bytes, terminal: bool },
    /// `lagged`.
    Lagged(String),
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
    client: Client,
    /// Live query subscriptions (whose events the writer delivers).
    live: Arc<LiveSet>,
    generation: u64,
    rate: RateLimit,
    draining: bool,
    max_subscriptions: usize,
}

/// A refused `query` frame, answered with the code its HTTP twin's `error.kind` has
/// (and counted the same way).
fn refused(client: &Client, e: &SubmitError) -> FrameError {
    let answer = crate::routes::query::refused(client, e);
    let code = match answer.problem {
        Problem::ShuttingDown => ErrorCode::ShuttingDown,
        Problem::Overloaded => ErrorCode::Overloaded,
        Problem::TooManyQueries => ErrorCode::TooManyQueries,
        Problem::RateLimited => ErrorCode::RateLimited,
        _ => ErrorCode::BadRequest,
    };
    FrameError {
        retry_after: answer.retry_after,
        ..FrameError::new(code, answer.message)
    }
}

/// Serves one upgraded connection until it closes.
pub(crate) async fn serve(socket: WebSocket, setup: Setup) {
    let Setup {
        state,
        metrics,
        subscribe,
        client,
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
    let mut conn = Connection {
        max_subscriptions: state.runtime().config().server.ws_max_subscriptions,
        state,
        ws,
        out,
        metrics_rights: metrics,
        metrics: None,
        client,
        live: Arc::default(),
        generation: 0,
        rate: RateLimit::new(Instant::now()),
        draining: false,
    };
    if let Some((query_id, after_seq)) = subscribe {
        if let Err(e) = Box::pin(conn.subscribe(query_id, after_seq, true)).await {
            conn.error(e).await;
        }
    }

    let end = loop {
        match *phase.borrow_and_update() {
            Phase::Serving => {}
            Phase::Draining => conn.draining = true,
            Phase::Closing => break End::Shutdown,
        }
        if conn.draining && conn.live.is_empty() {
            break End::GoingAway;
        }
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Close(_))) | None => break End::Closed,
                Some(Ok(msg)) => {
                    // Any frame shows the client is alive, a pong included.
                    unanswered.store(0, Ordering::Relaxed);
                    // Boxed, like the subscribe above: answering a frame is a deep future
                    // (a Redis lookup at the bottom), and inline it would make every
                    // connection's task that much larger for as long as it lives.
                    Box::pin(conn.on_message(msg)).await;
                }
                Some(Err(e)) => break close_code_for(e).map_or(End::Closed, End::Refused),
            },
            _ = conn.live.emptied.notified(), if conn.draining => {}
            changed = phase.changed() => if changed.is_err() { break End::Shutdown },
            _ = &mut writer.0 => break End::WriterGone,
        }
    };

    // Stop producing: the metrics task ends here (the subscriptions end with the writer).
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
                let pipeline = input
                    .pipeline
                    .as_deref()
                    .unwrap_or(engine.default_pipeline());
                if let Err(e) = self.client.may_run(pipeline) {
                    let refused = FrameError::new(ErrorCode::Forbidden, e.message);
                    return Err(refused.for_request(request_id));
                }
                let input = QueryInput {
                    client: self.client.owner(),
                    ..input
                };
                let submit = engine.submit_with_quota(input, self.client.quota());
                let submitted = Box::pin(submit)
                    .await
                    .map_err(|e| refused(&self.client, &e).for_request(request_id.clone()))?;
                let query_id = submitted.query_id;
                // Right after submit, from seq 0: the replay buffer holds anything
                // published in between, so no event is missed.
                let sub = engine
                    .subscribe(&query_id, 0, Caller::Anyone)
                    .await
                    .map_err(|_| FrameError::unknown_query(&query_id))?;
                let frame = protocol::accepted(request_id.as_ref(), &query_id);
                self.start(frame, query_id, sub, true).await;
            }
            ClientFrame::Subscribe {
                query_id,
                after_seq,
                outputs,
            } => self.subscribe(query_id, after_seq, outputs).await?,
            ClientFrame::Unsubscribe { query_id } => {
                self.stop(&query_id).await;
                self.send(Outgoing::Frame(protocol::unsubscribed(&query_id)))
                    .await;
            }
            ClientFrame::Cancel { query_id } => {
                // The same path as `DELETE /api/query/{id}`, without waiting: the
                // terminal `cancelled` event reaches subscribers (through the backend,
                // when another replica runs the query). Cancelling a query that already
                // ended changes nothing. Boxed: the remote path's future is large, and
                // this one's state is part of every connection's.
                let cancel =
                    self.state
                        .engine()
                        .cancel(&query_id, Duration::ZERO, self.client.caller());
                match Box::pin(cancel).await {
                    Ok(_) | Err(CancelError::AlreadyFinished(_)) => {}
                    Err(CancelError::NotFound) => return Err(FrameError::unknown_query(&query_id)),
                    Err(CancelError::Unavailable(e)) => {
                        tracing::warn!(error = %e, %query_id, "progress backend: remote cancel failed");
                        return Err(FrameError::unknown_query(&query_id));
                    }
                }
            }
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
    /// query, which is how a client recovers after `lagged`), with or without `output`
    /// events.
    async fn subscribe(
        &mut self,
        query_id: String,
        after_seq: u64,
        outputs: bool,
    ) -> Result<(), FrameError> {
        self.check_room(Some(&query_id))?;
        // Wherever the query runs: the backend loads another replica's on demand.
        let sub = self
            .state
            .engine()
            .subscribe(&query_id, after_seq, self.client.caller())
            .await
            .map_err(|_| FrameError::unknown_query(&query_id))?;
        let frame = protocol::subscribed(&query_id, after_seq);
        self.start(frame, query_id, sub, outputs).await;
        Ok(())
    }

    /// Whether one more subscription fits (`replacing` an existing one always does).
    fn check_room(&mut self, replacing: Option<&str>) -> Result<(), FrameError> {
        // A subscription whose terminal event the writer has taken is over (it leaves the
        // set before the event is written).
        let room = {
            let subs = self.live.lock();
            replacing.is_some_and(|q| subs.contains_key(q)) || subs.len() < self.max_subscriptions
        };
        if room {
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

    /// Hands a subscription to the writer, which writes `frame` and then its events.
    async fn start(&mut self, frame: String, query_id: String, sub: Subscription, outputs: bool) {
        self.generation += 1;
        let ended = Ended {
            set: self.live.clone(),
            query_id: query_id.clone(),
            generation: self.generation,
        };
        let frames = deliveries(sub, self.ws.clone(), self.ws.queue_capacity(), outputs);
        self.live.lock().insert(query_id.clone(), self.generation);
        let live = Live {
            query_id,
            frames,
            done: false,
            idle: false,
            _ended: ended,
        };
        self.send(Outgoing::Subscribe(Box::new((frame, live))))
            .await;
    }

    /// Ends the subscription to `query_id`, if any: nothing of it follows what is
    /// queued next.
    async fn stop(&mut self, query_id: &str) {
        let removed = self.live.lock().remove(query_id).is_some();
        if removed {
            self.send(Outgoing::Unsubscribe(query_id.to_owned())).await;
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

// === impl LiveSet ===

impl LiveSet {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl Drop for Ended {
    fn drop(&mut self) {
        let mut subs = self.set.lock();
        if subs.get(&self.query_id) == Some(&self.generation) {
            subs.remove(&self.query_id);
            if subs.is_empty() {
                self.set.emptied.notify_one();
            }
        }
    }
}

// === the writer ===

/// What the writer does after gathering.
enum Step {
    /// Write the batch, then this.
    Write(After),
    /// Told to stop (closing with this code, if any), without writing what is gathered.
    Kill(Option<u16>),
    /// The client stopped answering pings.
    Dead,
}

/// What follows a written batch.
enum After {
    /// Gather again.
    Next,
    /// Close with this code.
    Close(u16),
    /// Stop: the reader is gone.
    End,
}

/// The writer task's state: the socket's write half, the answers queue and the
/// subscriptions.
struct Writer {
    sink: SplitSink<WebSocket, Message>,
    rx: mpsc::Receiver<Outgoing>,
    kill: oneshot::Receiver<Option<u16>>,
    ping: tokio::time::Interval,
    unanswered: Arc<AtomicU32>,
    ws: WsRegistry,
    subs: Subscriptions,
    /// Frames gathered for the next flush.
    batch: Vec<Message>,
    /// How many of them are events (for `events_sent`).
    events: u64,
}

/// Writes answers and subscribed events to the socket, and pings. Ends on a close, a
/// write failure or timeout, when the client stops answering pings, or when told to.
async fn write(
    sink: SplitSink<WebSocket, Message>,
    rx: mpsc::Receiver<Outgoing>,
    kill: oneshot::Receiver<Option<u16>>,
    unanswered: Arc<AtomicU32>,
    ws: WsRegistry,
) {
    let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut writer = Writer {
        sink,
        rx,
        kill,
        ping,
        unanswered,
        ws,
        subs: Subscriptions::default(),
        batch: Vec::new(),
        events: 0,
    };
    writer.run().await;
}

impl Writer {
    async fn run(&mut self) {
        loop {
            let after = match poll_fn(|cx| self.poll_gather(cx)).await {
                Step::Write(after) => after,
                Step::Kill(code) => {
                    if let Some(code) = code {
                        close(&mut self.sink, code).await;
                    }
                    return;
                }
                Step::Dead => {
                    tracing::debug!("closing a WebSocket connection that stopped answering pings");
                    return;
                }
            };
            if !self.flush().await {
                return;
            }
            match after {
                After::Next => {}
                After::Close(code) => {
                    close(&mut self.sink, code).await;
                    return;
                }
                After::End => return,
            }
        }
    }

    /// Gathers what is ready: a ping when due, the queued answers (in order), then the
    /// subscriptions' frames, up to [`MAX_BATCH`]. Pending when nothing is.
    fn poll_gather(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        if let Poll::Ready(killed) = Pin::new(&mut self.kill).poll(cx) {
            return Poll::Ready(Step::Kill(killed.ok().flatten()));
        }
        if self.ping.poll_tick(cx).is_ready() {
            if self.unanswered.fetch_add(1, Ordering::Relaxed) >= MAX_UNANSWERED_PINGS {
                return Poll::Ready(Step::Dead);
            }
            self.batch.push(Message::Ping(Bytes::new()));
        }
        while self.batch.len() < MAX_BATCH {
            let item = match self.rx.poll_recv(cx) {
                Poll::Ready(Some(item)) => item,
                Poll::Ready(None) => return Poll::Ready(Step::Write(After::End)),
                Poll::Pending => break,
            };
            match item {
                Outgoing::Notice(s) => {
                    self.batch.push(Message::Text(s.into()));
                    self.events += 1;
                }
                Outgoing::Frame(s) => self.batch.push(Message::Text(s.into())),
                Outgoing::Subscribe(new) => {
                    let (frame, live) = *new;
                    self.batch.push(Message::Text(frame.into()));
                    self.subs.insert(live);
                }
                Outgoing::Unsubscribe(query_id) => self.subs.remove(&query_id),
                Outgoing::Close(code) => return Poll::Ready(Step::Write(After::Close(code))),
            }
        }
        self.subs.new_gather();
        while self.batch.len() < MAX_BATCH {
            match self.subs.poll_next(cx) {
                Poll::Ready(Delivery::Event { json, .. }) => {
                    self.batch.push(Message::Text(text(json)));
                    self.events += 1;
                }
                Poll::Ready(Delivery::Lagged(frame)) => {
                    self.batch.push(Message::Text(frame.into()))
                }
                Poll::Pending => break,
            }
        }
        if self.batch.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(Step::Write(After::Next))
        }
    }

    /// Writes the batch with one flush. False when the socket failed or timed out.
    async fn flush(&mut self) -> bool {
        let (sink, batch, kill) = (&mut self.sink, &mut self.batch, &mut self.kill);
        let mut write = std::pin::pin!(async {
            for msg in batch.drain(..) {
                sink.feed(msg).await?;
            }
            sink.flush().await
        });
        // Almost always the socket takes the batch at once: the write timer (a timer
        // entry registered and removed) is armed only when it does not.
        let first = poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
        let written = match first {
            Poll::Ready(done) => Ok(done),
            Poll::Pending => tokio::select! {
                written = tokio::time::timeout(WRITE_TIMEOUT, write) => written,
                // Told to stop while the client does not read: nothing more (a close
                // frame included) could reach it.
                _ = kill => {
                    tracing::debug!("WebSocket closed while a write to it was stalled");
                    return false;
                }
            },
        };
        match written {
            Ok(Ok(())) => {
                let events = std::mem::take(&mut self.events);
                if events > 0 {
                    self.ws.sent(events);
                }
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket write failed");
                false
            }
            Err(_) => {
                tracing::debug!("WebSocket write timed out: closing the connection");
                false
            }
        }
    }
}

/// The writer's query subscriptions, polled round robin.
#[derive(Default)]
struct Subscriptions {
    live: Vec<Live>,
    /// Where the next poll starts, so one busy query cannot starve the others.
    next: usize,
}

impl Subscriptions {
    fn insert(&mut self, live: Live) {
        match self.live.iter_mut().find(|l| l.query_id == live.query_id) {
            Some(old) => *old = live,
            None => self.live.push(live),
        }
    }

    fn remove(&mut self, query_id: &str) {
        self.live.retain(|l| l.query_id != query_id);
    }

    /// Starts a gather: every subscription may be polled again.
    fn new_gather(&mut self) {
        for live in &mut self.live {
            live.idle = false;
        }
    }

    /// The next frame of any subscription. A subscription is dropped (telling the
    /// reader) as soon as its terminal event is taken. Within one gather, one that had
    /// nothing is not polled again (its waker is set), so a gather costs one poll per
    /// subscription plus one per frame, not one per subscription per frame.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Delivery> {
        let n = self.live.len();
        let mut out = Poll::Pending;
        let mut finished = false;
        for k in 0..n {
            let i = (self.next + k) % n;
            let live = &mut self.live[i];
            if live.idle {
                continue;
            }
            match live.frames.poll_next_unpin(cx) {
                Poll::Ready(Some(delivery)) => {
                    if matches!(delivery, Delivery::Event { terminal: true, .. }) {
                        live.done = true;
                        finished = true;
                    }
                    self.next = i + 1;
                    out = Poll::Ready(delivery);
                    break;
                }
                Poll::Ready(None) => {
                    live.done = true;
                    finished = true;
                }
                Poll::Pending => live.idle = true,
            }
        }
        if finished {
            self.live.retain(|l| !l.done);
        }
        if self.next >= self.live.len() {
            self.next = 0;
        }
        out
    }
}

/// One subscription's frames: its events, and `lagged` where it skipped ahead.
fn deliveries(
    sub: Subscription,
    ws: WsRegistry,
    max_behind: usize,
    outputs: bool,
) -> BoxStream<'static, Delivery> {
    let state = Follow {
        _live: ws.subscription(),
        sub,
        ws,
        max_behind: max_behind.max(1),
        terminal: None,
        outputs,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        let delivery = state.next().await?;
        Some((delivery, state))
    })
    .boxed()
}

/// The state of [`deliveries`].
struct Follow {
    sub: Subscription,
    ws: WsRegistry,
    /// Live events the client may be behind before the subscription skips ahead.
    max_behind: usize,
    /// The terminal event found while skipping ahead, delivered next.
    terminal: Option<Arc<Published>>,
    /// Whether `output` events (chunks of streamed answers) are delivered.
    outputs: bool,
    _live: SubscriptionGuard,
}

impl Follow {
    async fn next(&mut self) -> Option<Delivery> {
        if let Some(event) = self.terminal.take() {
            return Some(Delivery::Event {
                json: event.json_bytes(),
                terminal: true,
            });
        }
        let item = loop {
            match self.sub.recv().await {
                Some(SubscriptionItem::Event(e)) if !self.outputs && e.is_output() => {}
                item => break item,
            }
        };
        // Events the live channel overwrote before we read them (the client was more
        // than the channel's buffer behind): the subscription yields `lagged` for them.
        self.ws.dropped(self.sub.take_missed());
        match item? {
            // Still too far behind after the channel overran: skip the rest too, so
            // that the client gets one `lagged`, naming an event it will get.
            SubscriptionItem::Lagged { .. } if self.sub.live_backlog() >= self.max_behind => {
                Some(self.skip_ahead(0))
            }
            SubscriptionItem::Lagged { query_id, next_seq } => {
                Some(Delivery::Lagged(protocol::lagged(&query_id, next_seq)))
            }
            SubscriptionItem::Event(event) if event.is_terminal() => Some(Delivery::Event {
                json: event.json_bytes(),
                terminal: true,
            }),
            SubscriptionItem::Event(_) if self.sub.live_backlog() >= self.max_behind => {
                Some(self.skip_ahead(1))
            }
            SubscriptionItem::Event(event) => Some(Delivery::Event {
                json: event.json_bytes(),
                terminal: false,
            }),
        }
    }

    /// The client is too far behind: drops the `skipped` events just read and
    /// everything already published after them (counting them as dropped), keeping the
    /// terminal event, and tells the client where delivery resumes: `lagged` with the seq
    /// of the next event it will get.
    fn skip_ahead(&mut self, mut skipped: u64) -> Delivery {
        let mut events = 0;
        while events < MAX_SKIP {
            // `recv` is cancel-safe: an item not ready now is not lost.
            match self.sub.recv().now_or_never() {
                Some(Some(SubscriptionItem::Event(e))) if e.is_terminal() => {
                    self.terminal = Some(e);
                    break;
                }
                Some(Some(SubscriptionItem::Event(_))) => {
                    skipped += 1;
                    events += 1;
                }
                // An overrun while skipping: the events it lost are counted as missed.
                Some(Some(SubscriptionItem::Lagged { .. })) => {}
                Some(None) | None => break,
            }
        }
        self.ws.dropped(skipped + self.sub.take_missed());
        let next_seq = self
            .terminal
            .as_ref()
            .map_or(self.sub.last_seq() + 1, |t| t.seq());
        Delivery::Lagged(protocol::lagged(self.sub.query_id(), next_seq))
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
fn text(json: Bytes) -> Utf8Bytes {
    // The hub's text is a `str`, so the check cannot fail.
    Utf8Bytes::try_from(json).unwrap_or_default()
}

// === the metrics task ===

/// `subscribe_metrics`: a `metrics` frame every `every` (the first at once), then the
/// breaker transitions the gateway kept (`"replayed": true`, oldest first), then every
/// later transition as a `circuit_breaker` event.
async fn metrics(state: AppState, out: mpsc::Sender<Outgoing>, every: Duration) {
    // Taken before the first frame: a transition after it is in `live`, never lost.
    let (kept, mut live) = state.transitions().follow();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    tick.tick().await;
    if !send_metrics(&state, &out) {
        return;
    }
    for t in &kept {
        if !send_transition(&state, &out, t, true) {
            return;
        }
    }
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if !send_metrics(&state, &out) {
                    return;
                }
            }
            t = live.recv() => match t {
                Ok(t) => {
                    if !send_transition(&state, &out, &t, false) {
                        return;
                    }
                }
                // Transitions missed by falling behind are skipped; metrics frames carry state.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Queues a `metrics` frame; `false` once the connection is gone. A snapshot: when the
/// queue is full this one is skipped, the next one comes.
fn send_metrics(state: &AppState, out: &mpsc::Sender<Outgoing>) -> bool {
    let frame = protocol::metrics(metrics_value(state));
    !matches!(
        out.try_send(Outgoing::Frame(frame)),
        Err(TrySendError::Closed(_))
    )
}

/// Queues a `circuit_breaker` event (counted as dropped when the queue is full);
/// `false` once the connection is gone.
fn send_transition(
    state: &AppState,
    out: &mpsc::Sender<Outgoing>,
    t: &Transition,
    replayed: bool,
) -> bool {
    match out.try_send(Outgoing::Notice(protocol::circuit_breaker(t, replayed))) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            state.ws().dropped(1);
            true
        }
        Err(TrySendError::Closed(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentgate_progress::{EventKind, HubConfig, MemoryHub, QueryPublisher, StageStatus};

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

    /// Everything a subscription's frame stream yields until it ends: event seqs, and
    /// `lagged` as `-next_seq`.
    async fn follow(frames: BoxStream<'static, Delivery>) -> Vec<i64> {
        frames
            .map(|d| match d {
                Delivery::Event { json, .. } => {
                    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
                    v["seq"].as_i64().unwrap()
                }
                Delivery::Lagged(frame) => {
                    let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
                    assert_eq!(v["type"], "lagged");
                    -v["next_seq"].as_i64().unwrap()
                }
            })
            .collect()
            .await
    }

    async fn follow_one(frames: &mut BoxStream<'static, Delivery>) -> i64 {
        let d = frames.next().await.expect("a frame");
        follow(futures_util::stream::iter([d]).boxed()).await[0]
    }

    /// A query `q` on a hub whose live buffer holds 8 events, and the frames of one
    /// subscription to it from the start that may be `max_behind` live events behind.
    fn subscribed(
        ws: &WsRegistry,
        max_behind: usize,
    ) -> (QueryPublisher, BoxStream<'static, Delivery>) {
        let hub = MemoryHub::new(HubConfig {
            live_buffer: 8,
            ..HubConfig::default()
        });
        let publisher = hub.open("q").unwrap();
        let frames = deliveries(hub.subscribe("q", 0).unwrap(), ws.clone(), max_behind, true);
        (publisher, frames)
    }

    /// Publishes `n` `started` events.
    fn started(publisher: &QueryPublisher, n: u64) {
        for i in 0..n {
            let kind = EventKind::Progress {
                stage: format!("s{i}"),
                status: StageStatus::Started,
                progress: 0,
                attempt: None,
                detail: None,
            };
            publisher.publish(kind).unwrap();
        }
    }

    fn done() -> EventKind {
        EventKind::Completed {
            result: serde_json::json!({}).into(),
            duration_ms: 1,
        }
    }

    #[tokio::test]
    async fn a_subscription_that_keeps_up_gets_every_event_once() {
        let ws = WsRegistry::new(10);
        let (publisher, frames) = subscribed(&ws, 3);
        started(&publisher, 2);
        publisher.publish(done()).unwrap();
        assert_eq!(follow(frames).await, vec![1, 2, 3]);
        assert_eq!(ws.stats().events_dropped, 0);
    }

    #[tokio::test]
    async fn a_subscription_without_outputs_skips_only_output_events() {
        let ws = WsRegistry::new(10);
        let hub = MemoryHub::new(HubConfig::default());
        let publisher = hub.open("q").unwrap();
        let without = deliveries(hub.subscribe("q", 0).unwrap(), ws.clone(), 100, false);
        let with = deliveries(hub.subscribe("q", 0).unwrap(), ws.clone(), 100, true);
        started(&publisher, 1);
        for index in 0..3 {
            let chunk = agentgate_progress::JsonText::new("tok").unwrap();
            let stage = "s".to_owned();
            let output = EventKind::Output {
                stage,
                attempt: 1,
                index,
                chunk,
            };
            publisher.publish(output).unwrap();
        }
        publisher.publish(done()).unwrap();
        assert_eq!(follow(without).await, vec![1, 5]);
        assert_eq!(follow(with).await, vec![1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_subscription_too_far_behind_skips_ahead_and_keeps_the_terminal_event() {
        let ws = WsRegistry::new(10);
        let (publisher, mut frames) = subscribed(&ws, 3);
        started(&publisher, 1);
        assert_eq!(follow_one(&mut frames).await, 1);
        // Five more while the client reads nothing: 5 behind, more than 3.
        started(&publisher, 5);
        // Seq 2 is read with 4 still waiting: 2..=6 are skipped; delivery resumes at 7.
        assert_eq!(follow_one(&mut frames).await, -7);
        assert_eq!(ws.stats().events_dropped, 5);
        started(&publisher, 1);
        publisher.publish(done()).unwrap();
        assert_eq!(follow(frames).await, vec![7, 8]);

        // Skipping ahead while the terminal event is already there keeps it.
        let (publisher, frames) = subscribed(&ws, 2);
        started(&publisher, 5);
        publisher.publish(done()).unwrap();
        // Seq 1 is read with 5 more waiting: 1..=5 are skipped, the terminal 6 is not.
        assert_eq!(follow(frames).await, vec![-6, 6]);
    }

    #[tokio::test]
    async fn events_the_live_buffer_overwrote_are_counted_as_dropped() {
        let ws = WsRegistry::new(10);
        // Allowed to be far behind, but the hub's live buffer holds 8 events.
        let (publisher, frames) = subscribed(&ws, 1000);
        started(&publisher, 20);
        publisher.publish(done()).unwrap();
        let got = follow(frames).await;
        assert_eq!(got[0], -14, "{got:?}");
        assert_eq!(&got[1..], &[14, 15, 16, 17, 18, 19, 20, 21]);
        assert_eq!(ws.stats().events_dropped, 13);
    }

    #[tokio::test]
    async fn after_an_overrun_a_subscription_still_behind_tells_lagged_once() {
        let ws = WsRegistry::new(10);
        let (publisher, frames) = subscribed(&ws, 3);
        started(&publisher, 20);
        publisher.publish(done()).unwrap();
        // The 8-event channel overran (1..=13 lost); 14..=21 are still 8 behind, so they
        // are skipped too, the terminal event excepted: one `lagged`, then seq 21.
        assert_eq!(follow(frames).await, vec![-21, 21]);
        assert_eq!(ws.stats().events_dropped, 20);
    }

    #[test]
    fn event_text_is_passed_through() {
        let json = Bytes::from_static(br#"{"type":"cancelled","seq":1}"#);
        assert_eq!(text(json.clone()).as_bytes(), &json[..]);
    }
}
