//! The subscriber: mirrors other replicas' events into the local hub, filling gaps from
//! Redis, and reconnects with backoff.

use std::sync::Arc;

use agentgate_progress::{Mirrored, Published};
use futures_util::StreamExt;

use crate::backend::REDIS_TIMEOUT;
use crate::failures::{Backoff, FailureLog};
use crate::RedisBackend;

pub(crate) async fn run(backend: RedisBackend) {
    let mut backoff = Backoff::new();
    let mut log = FailureLog::new(
        "not subscribed to redis; retrying (other replicas' queries are not followed meanwhile)",
    );
    loop {
        if let Err(e) = listen(&backend, &mut backoff).await {
            log.failed(&backend, &e);
        }
        backend.set_reader_up(false);
        backoff.wait().await;
    }
}

/// One subscription, until the connection ends.
async fn listen(backend: &RedisBackend, backoff: &mut Backoff) -> Result<(), redis::RedisError> {
    let connect = backend.client().get_async_pubsub();
    let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT, connect)
        .await
        .map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::Io, "connecting to redis timed out"))
        })??;
    let events = backend.keys().channel();
    pubsub.subscribe(events).await?;
    pubsub.subscribe(backend.keys().control()).await?;
    backend.set_reader_up(true);
    backoff.reset();
    // Whatever was published while nobody listened: catch up every followed query.
    for (query_id, next_seq) in backend.hub().mirrored_running() {
        fill(backend, &query_id, next_seq).await?;
    }
    let mut messages = pubsub.into_on_message();
    while let Some(msg) = messages.next().await {
        let payload = msg.get_payload_bytes();
        let Ok(text) = std::str::from_utf8(payload) else {
            continue;
        };
        if msg.get_channel_name() != events {
            if let Some(query_id) = text.strip_prefix("cancel|") {
                backend.cancel_requested(query_id);
            }
            continue;
        }
        let Some((replica, events)) = text.split_once('|') else {
            continue;
        };
        if replica == backend.replica() {
            continue;
        }
        // One line per event, in the order they were published.
        for json in events.split('\n') {
            let Ok((query_id, event)) = Published::from_json(json.into()) else {
                tracing::debug!("progress backend: skipped a malformed message");
                continue;
            };
            backend.note_owner(replica, &query_id, event.is_terminal());
            if let Mirrored::Gap { next_seq } = backend.apply((query_id.clone(), event), false) {
                fill(backend, &query_id, next_seq).await?;
            }
        }
    }
    Ok(())
}

/// Applies the events of `query_id` from `next_seq` on, as Redis has them. A gap Redis
/// cannot fill either (trimmed or dropped events) is accepted: subscribers get `lagged`.
async fn fill(
    backend: &RedisBackend,
    query_id: &Arc<str>,
    next_seq: u64,
) -> Result<(), redis::RedisError> {
    for event in backend.range(query_id, next_seq.saturating_sub(1)).await? {
        backend.apply(event, true);
    }
    Ok(())
}
