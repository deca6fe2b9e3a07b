//! The writer: one task that sends this replica's events and records to Redis, in the
//! order they were published, pipelined in batches.

use std::time::Duration;

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
    let channel = keys.channel();
    let retention = millis(settings.hub.retention);
    let running = millis(settings.running_ttl);
    let mut pipe = redis::pipe();
    for out in batch {
        match out {
            Out::Event { query_id, event } => {
                let key = keys.events(query_id);
                pipe.cmd("XADD")
                    .arg(&key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(settings.hub.replay_events.max(1))
                    .arg("*")
                    .arg("e")
                    .arg(&*event.json)
                    .ignore();
                pipe.cmd("PEXPIRE")
                    .arg(&key)
                    .arg(if event.is_terminal() {
                        retention
                    } else {
                        running
                    })
                    .ignore();
                pipe.cmd("PUBLISH")
                    .arg(&channel)
                    .arg(format!("{}|{}", backend.replica(), event.json))
                    .ignore();
            }
            Out::Record {
                query_id,
                json,
                finished,
            } => {
                pipe.cmd("SET")
                    .arg(keys.record(query_id))
                    .arg(json)
                    .arg("PX")
                    .arg(if *finished { retention } else { running })
                    .ignore();
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
    pipe
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
