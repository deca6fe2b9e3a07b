//! The subscriber: mirrors other replicas' events into the local hub, filling gaps from
//! Redis, and reconnects with backoff.

use std::sync::Arc;

use agentgate_progress::{Mirrored, Published};
use futures_util::StreamExt;

use crate::failures::{Backoff, FailureLog};
use crate::{RedisBridge, REDIS_TIMEOUT};

pub(crate) async fn run(bridge: RedisBridge) {
    let mut backoff = Backoff::new();
    let mut log = FailureLog::new(
        "not subscribed to redis; retrying (other replicas' queries are not followed meanwhile)",
    );
    loop {
        if let Err(e) = listen(&bridge, &mut backoff).await {
            log.failed(&bridge, &e);
        }
        bridge.set_reader_up(false);
        backoff.wait().await;
    }
}

/// One subscription, until the connection ends.
async fn listen(bridge: &RedisBridge, backoff: &mut Backoff) -> Result<(), redis::RedisError> {
    let connect = bridge.client().get_async_pubsub();
    let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT, connect)
        .await
        .map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::Io, "connecting to redis timed out"))
        })??;
    let events = bridge.keys().channel();
    pubsub.subscribe(&events).await?;
    pubsub.subscribe(bridge.keys().control()).await?;
    bridge.set_reader_up(true);
    backoff.reset();
    // Whatever was published while nobody listened: catch up every followed query.
    if let Some(hub) = bridge.hub() {
        for (query_id, next_seq) in hub.mirrored_running() {
            fill(bridge, &query_id, next_seq).await?;
        }
    }
    let mut messages = pubsub.into_on_message();
    while let Some(msg) = messages.next().await {
        let payload = msg.get_payload_bytes();
        let Ok(text) = std::str::from_utf8(payload) else {
            continue;
        };
        if msg.get_channel_name() != events {
            if let Some(query_id) = text.strip_prefix("cancel|") {
                bridge.cancel_local(query_id);
            }
            continue;
        }
        let Some((replica, json)) = text.split_once('|') else {
            continue;
        };
        if replica == bridge.replica() {
            continue;
        }
        let Ok((query_id, event)) = Published::from_json(json.into()) else {
            tracing::debug!("progress backend: skipped a malformed message");
            continue;
        };
        if let Mirrored::Gap { next_seq } = bridge.apply((query_id.clone(), event), false) {
            fill(bridge, &query_id, next_seq).await?;
        }
    }
    Ok(())
}

/// Applies the events of `query_id` from `next_seq` on, as Redis has them. A gap Redis
/// cannot fill either (trimmed or dropped events) is accepted: subscribers get `lagged`.
async fn fill(
    bridge: &RedisBridge,
    query_id: &Arc<str>,
    next_seq: u64,
) -> Result<(), redis::RedisError> {
    for event in bridge.range(query_id, next_seq.saturating_sub(1)).await? {
        bridge.apply(event, true);
    }
    Ok(())
}
