//! The subscriber: mirrors other replicas' events into the local hub, filling gaps from
//! Redis, and reconnects with backoff.

use std::sync::Arc;
use std::time::Duration;

use agentgate_progress::{Mirrored, Published};
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::{RedisBridge, REDIS_TIMEOUT};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const LOG_EVERY: Duration = Duration::from_secs(10);

pub(crate) async fn run(bridge: RedisBridge) {
    let mut backoff = BACKOFF_MIN;
    let mut last_log: Option<Instant> = None;
    loop {
        match listen(&bridge, &mut backoff).await {
            Ok(()) => {}
            Err(e) => {
                metrics::counter!("agentgate_progress_redis_errors_total").increment(1);
                if last_log.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                    last_log = Some(Instant::now());
                    tracing::warn!(
                        url = %bridge.settings().url,
                        error = %e,
                        "progress backend: not subscribed to redis; retrying (other replicas' queries are not followed meanwhile)"
                    );
                }
            }
        }
        bridge.set_reader_up(false);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One subscription, until the connection ends.
async fn listen(bridge: &RedisBridge, backoff: &mut Duration) -> Result<(), redis::RedisError> {
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
    *backoff = BACKOFF_MIN;
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
