//! The writer: one task that sends this replica's events and records to Redis, in the
//! order they were published, pipelined in batches.

use std::time::Duration;

use agentgate_progress::Published;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backend::Out;
use crate::failures::{Backoff, FailureLog};
use crate::RedisBackend;

/// At most this many queued items go into one pipeline.
const BATCH: usize = 256;
/// A batch is retried this long, then dropped (its events stay local).
const GIVE_UP_AFTER: Duration = Duration::from_secs(10);
/// How often an idle writer checks its connection.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long the writer waits for more after the first item of a batch: a query's events
/// come in bursts, and one pipeline with one message for the burst costs both this
/// replica and the others less than one per event.
const LINGER: Duration = Duration::from_millis(1);

pub(crate) async fn run(backend: RedisBackend, mut rx: mpsc::Receiver<Out>) {
    let mut conn: Option<ConnectionManager> = None;
    let mut batch = Vec::with_capacity(BATCH);
    let mut log = FailureLog::new(
        "cannot write to redis; retrying (this replica's own clients are not affected)",
    );
    // While idle, the connection is checked (or made) this often, so readiness follows
    // Redis even without traffic.
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return; // every sender is gone
                }
                linger(&mut rx, &mut batch).await;
            }
            _ = check.tick() => {
                let ping = redis::pipe().cmd("PING").ignore().clone();
                match send(&backend, &mut conn, &ping).await {
                    Ok(()) => backend.set_writer_up(true),
                    Err(e) => {
                        conn = None;
                        backend.set_writer_up(false);
                        log.failed(&backend, &e);
                    }
                }
                continue;
            }
        }
        let close = take_close(&mut batch);
        let pipe = pipeline(&backend, &batch);
        let started = Instant::now();
        let mut backoff = Backoff::new();
        loop {
            match send(&backend, &mut conn, &pipe).await {
                Ok(()) => {
                    backend.set_writer_up(true);
                    break;
                }
                Err(e) => {
                    backend.set_writer_up(false);
                    conn = None;
                    log.failed(&backend, &e);
                    if close.is_some() || started.elapsed() >= GIVE_UP_AFTER {
                        metrics::counter!("agentgate_progress_redis_dropped_total")
                            .increment(batch.len() as u64);
                        break;
                    }
                    backoff.wait().await;
                }
            }
        }
        batch.clear();
        check.reset();
        if let Some(done) = close {
            let _ = done.send(());
            return;
        }
    }
}

/// Takes in what comes within [`LINGER`] (up to [`BATCH`] in all), unless the batch is
/// full or closes the writer.
async fn linger(rx: &mut mpsc::Receiver<Out>, batch: &mut Vec<Out>) {
    if batch.iter().any(|o| matches!(o, Out::Close(_))) {
        return;
    }
    let until = Instant::now() + LINGER;
    while batch.len() < BATCH {
        let more = tokio::time::timeout_at(until, rx.recv_many(batch, BATCH - batch.len()));
        if !matches!(more.await, Ok(n) if n > 0) {
            return;
        }
    }
}

/// Removes a `Close` from the batch (it is always the last thing a closing backend sends).
fn take_close(batch: &mut Vec<Out>) -> Option<tokio::sync::oneshot::Sender<()>> {
    let at = batch.iter().position(|o| matches!(o, Out::Close(_)))?;
    let rest = batch.split_off(at);
    rest.into_iter().find_map(|o| match o {
        Out::Close(done) => Some(done),
        _ => None,
    })
}

async fn send(
    backend: &RedisBackend,
    conn: &mut Option<ConnectionManager>,
    pipe: &redis::Pipeline,
) -> Result<(), redis::RedisError> {
    if conn.is_none() {
        *conn = Some(backend.connect().await?);
    }
    let conn = conn.as_mut().expect("just connected");
    pipe.query_async::<()>(conn).await
}

fn pipeline(backend: &RedisBackend, batch: &[Out]) -> redis::Pipeline {
    let settings = backend.settings();
    let keys = backend.keys();
    let retention = millis(settings.hub.retention);
    let running = millis(settings.running_ttl);
    let running_set = keys.replica_running(backend.replica());
    let mut pipe = redis::pipe();
    let mut events = Vec::new();
    for out in batch {
        match out {
            Out::Event { query_id, event } => {
                add_event(&mut pipe, backend, query_id, event);
                events.push(&**event);
            }
            Out::Record {
                query_id,
                json,
                finished,
                if_absent,
            } => {
                let set = pipe
                    .cmd("SET")
                    .arg(keys.record(query_id))
                    .arg(&**json)
                    .arg("PX")
                    .arg(if *finished { retention } else { running });
                if *if_absent {
                    set.arg("NX");
                }
                set.ignore();
                // The queries this replica runs, for whoever ends them if it is lost.
                if *finished {
                    pipe.cmd("SREM").arg(&running_set).arg(&**query_id).ignore();
                } else {
                    pipe.cmd("SADD").arg(&running_set).arg(&**query_id).ignore();
                    pipe.cmd("PEXPIRE").arg(&running_set).arg(running).ignore();
                }
            }
            Out::Release { client, ticket } => {
                pipe.cmd("ZREM")
                    .arg(keys.running(client))
                    .arg(&**ticket)
                    .ignore();
            }
            Out::Close(_) => {}
        }
    }
    publish(&mut pipe, backend, &events);
    pipe
}

/// Adds to `pipe` the stream entry of one event of `query_id` (its expiry:
/// `running_ttl` while the query runs, `retention` after its terminal event); the
/// message that announces it is [`publish`]'s.
pub(crate) fn add_event(
    pipe: &mut redis::Pipeline,
    backend: &RedisBackend,
    query_id: &str,
    event: &Published,
) {
    let settings = backend.settings();
    let key = backend.keys().events(query_id);
    pipe.cmd("XADD")
        .arg(&key)
        .arg("MAXLEN")
        .arg("~")
        .arg(settings.hub.replay_events.max(1))
        .arg("*")
        .arg("e")
        .arg(&*event.json)
        .ignore();
    let ttl = match event.is_terminal() {
        true => settings.hub.retention,
        false => settings.running_ttl,
    };
    pipe.cmd("PEXPIRE").arg(&key).arg(millis(ttl)).ignore();
}

/// Adds to `pipe` one message announcing `events` to the other replicas, in order:
/// `<replica>|<json>` with one JSON text per line (JSON text has no raw newline).
pub(crate) fn publish(pipe: &mut redis::Pipeline, backend: &RedisBackend, events: &[&Published]) {
    if events.is_empty() {
        return;
    }
    let replica = backend.replica();
    let size = replica.len() + events.iter().map(|e| e.json.len() + 1).sum::<usize>();
    let mut message = String::with_capacity(size);
    message.push_str(replica);
    message.push('|');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            message.push('\n');
        }
        message.push_str(&event.json);
    }
    pipe.cmd("PUBLISH")
        .arg(backend.keys().channel())
        .arg(message)
        .ignore();
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
