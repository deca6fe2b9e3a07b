//! Replica leases (SPEC §9): each replica renews its own lease in Redis, watches the
//! others', and the queries of a replica whose lease expired are ended — each by exactly
//! one survivor — with a `failed` event (`error.kind = "replica_lost"`) whose `seq`
//! continues the query's stream, after its record is updated.
//!
//! In Redis:
//!
//! - `{prefix}:replica:{id}:lease` exists while replica `id` renews it: `SET … PX lease`
//!   every third of `lease`, together with `SADD {prefix}:replicas id` in one
//!   transaction, so a replica in that set without a lease let its lease expire;
//! - `{prefix}:replica:{id}:running` is the set of queries whose record, as replica `id`
//!   last shared it, says `running` (the writer adds and removes them with the records);
//! - `{prefix}:q:{query}:ended` is taken with `SET NX` by the one replica that ends a
//!   lost replica's query: several survivors may notice the loss at once, one ends each
//!   query.
//!
//! Every `min(lease / 3, 1 s)` each replica looks at the leases of the replicas in
//! `{prefix}:replicas` and of those whose queries it follows. A replica in the set
//! without a lease is lost at once (once the looking replica has reached Redis for a
//! whole lease: after an outage, the others are given the time to renew). A replica that
//! is not in the set (Redis was restarted and lost it, along with its running set and
//! records) is lost once its lease has been missing for a whole `lease`, since a replica
//! that is alive puts its lease back within a third of that. A replica that finds its
//! own lease gone (Redis lost it) shares its running queries' records again, where Redis
//! has none. (`SET … GET` needs Redis 6.2 or later.)
//!
//! Detection takes at most `lease` (the lease expires) plus one look, so subscribers get
//! the terminal event within `lease` + 1 s and a few round trips (SPEC: `lease` + 5 s);
//! after a Redis restart that lost the lease, within twice that.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentgate_progress::{Ending, LostQuery, ProgressEvent, Published};
use redis::aio::ConnectionManager;
use tokio::time::{Instant, MissedTickBehavior};

use crate::failures::FailureLog;
use crate::writer::{add_event, millis, publish};
use crate::RedisBackend;

/// The longest pause between two looks at the other replicas' leases.
const WATCH_EVERY_MAX: Duration = Duration::from_secs(1);

/// Renews this replica's lease every third of `lease`, for as long as the backend runs.
pub(crate) async fn renew(backend: RedisBackend) {
    let every = backend.settings().lease / 3;
    let mut log = FailureLog::new(
        "cannot renew this replica's lease in redis; retrying (other replicas end this replica's queries if its lease expires)",
    );
    let mut conn: Option<ConnectionManager> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = renew_once(&backend, &mut conn).await {
            conn = None;
            log.failed(&backend, &e);
        }
    }
}

/// Sets the lease (and its place in the replicas' set) once; when it was gone, shares
/// this replica's running records again.
async fn renew_once(
    backend: &RedisBackend,
    conn: &mut Option<ConnectionManager>,
) -> Result<(), redis::RedisError> {
    let keys = backend.keys();
    let me = backend.replica();
    let conn = connected(backend, conn).await?;
    let (previous,): (Option<String>,) = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(keys.lease(me))
        .arg(me)
        .arg("PX")
        .arg(millis(backend.settings().lease))
        .arg("GET")
        .cmd("SADD")
        .arg(keys.replicas())
        .arg(me)
        .ignore()
        .query_async(conn)
        .await?;
    if previous.is_none() {
        // The first renewal, or Redis lost the lease (a restart): it lost this
        // replica's records and running set too.
        let shared = backend.share_running_again();
        if shared > 0 {
            tracing::warn!(
                replica = me,
                queries = shared,
                "progress backend: this replica's lease was gone from redis; shared its running queries again"
            );
        }
    }
    Ok(())
}

/// Gives the lease back (graceful shutdown): no other replica waits for it to expire.
pub(crate) async fn release(backend: &RedisBackend) {
    let keys = backend.keys();
    let me = backend.replica();
    let Ok(mut conn) = backend.connect().await else {
        return;
    };
    let released: Result<(), _> = redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(keys.lease(me))
        .ignore()
        .cmd("SREM")
        .arg(keys.replicas())
        .arg(me)
        .ignore()
        .query_async(&mut conn)
        .await;
    if let Err(e) = released {
        tracing::debug!(error = %e, "progress backend: lease not released");
    }
}

/// Watches the other replicas' leases and ends the queries of those that are lost.
pub(crate) async fn watch(backend: RedisBackend) {
    let every = (backend.settings().lease / 3).min(WATCH_EVERY_MAX);
    let mut log = FailureLog::new(
        "cannot watch the other replicas' leases in redis; retrying (a lost replica's queries are not ended meanwhile)",
    );
    let mut conn: Option<ConnectionManager> = None;
    let mut missing = HashMap::new();
    // Since when the watch has reached Redis without a failure.
    let mut reached: Option<Instant> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let since = *reached.get_or_insert_with(Instant::now);
        if let Err(e) = watch_once(&backend, &mut conn, &mut missing, since).await {
            conn = None;
            reached = None;
            log.failed(&backend, &e);
        }
    }
}

/// One look at the leases. `missing` holds since when each replica that is not in the
/// replicas' set has been seen without a lease; `reached`, since when this replica has
/// reached Redis without a failure.
///
/// Only a watch that has reached Redis for a whole lease takes a replica in the set
/// for lost: after an outage (Redis down, or unreachable from here), the others renew
/// their leases within a third of one, and one that expired meanwhile is not a loss.
async fn watch_once(
    backend: &RedisBackend,
    conn: &mut Option<ConnectionManager>,
    missing: &mut HashMap<Arc<str>, Instant>,
    reached: Instant,
) -> Result<(), redis::RedisError> {
    let keys = backend.keys();
    let conn = connected(backend, conn).await?;
    let members: BTreeSet<String> = redis::cmd("SMEMBERS")
        .arg(keys.replicas())
        .query_async(conn)
        .await?;
    let mut followed = backend.owners();
    let mut candidates: BTreeSet<Arc<str>> =
        members.iter().map(|m| Arc::from(m.as_str())).collect();
    candidates.extend(followed.keys().cloned());
    candidates.remove(backend.replica());
    missing.retain(|replica, _| candidates.contains(replica));
    if candidates.is_empty() {
        return Ok(());
    }
    let mut exists = redis::pipe();
    for replica in &candidates {
        exists.cmd("EXISTS").arg(keys.lease(replica));
    }
    let alive: Vec<bool> = exists.query_async(conn).await?;
    let now = Instant::now();
    let lease = backend.settings().lease;
    let settled = now.duration_since(reached) >= lease;
    for (replica, alive) in candidates.into_iter().zip(alive) {
        if alive {
            missing.remove(&replica);
            continue;
        }
        let since = *missing.entry(replica.clone()).or_insert(now);
        let registered = members.contains(&*replica);
        if (registered && settled) || now.duration_since(since) >= lease {
            let known = followed.remove(&replica).unwrap_or_default();
            take_over(backend, conn, &replica, known, registered).await?;
            missing.remove(&replica);
        }
    }
    Ok(())
}

/// Ends the unfinished queries of the lost `replica`: those in its running set and
/// `known` (the ones this replica follows), each unless another survivor ends it.
async fn take_over(
    backend: &RedisBackend,
    conn: &mut ConnectionManager,
    replica: &str,
    known: Vec<Arc<str>>,
    registered: bool,
) -> Result<(), redis::RedisError> {
    let keys = backend.keys();
    let listed: BTreeSet<String> = redis::cmd("SMEMBERS")
        .arg(keys.replica_running(replica))
        .query_async(conn)
        .await?;
    let mut queries: BTreeSet<Arc<str>> = listed.iter().map(|q| Arc::from(q.as_str())).collect();
    queries.extend(known);
    let mut ended = 0;
    for query_id in &queries {
        if end_lost(backend, conn, replica, query_id).await? {
            ended += 1;
        }
    }
    let _: () = redis::pipe()
        .cmd("SREM")
        .arg(keys.replicas())
        .arg(replica)
        .ignore()
        .cmd("DEL")
        .arg(keys.replica_running(replica))
        .ignore()
        .query_async(conn)
        .await?;
    if ended > 0 || registered {
        tracing::warn!(
            lost = replica,
            queries = ended,
            "progress backend: replica lost (its lease expired); ended its unfinished queries"
        );
    }
    Ok(())
}

/// Ends `query_id` of the lost `replica`, unless it has ended or another survivor ends
/// it. Returns whether this replica ended it.
async fn end_lost(
    backend: &RedisBackend,
    conn: &mut ConnectionManager,
    replica: &str,
    query_id: &Arc<str>,
) -> Result<bool, redis::RedisError> {
    let keys = backend.keys();
    let settings = backend.settings();
    let hub = backend.hub();
    if let Some((_, false)) = hub.position(query_id) {
        return Ok(false); // its terminal event is here already
    }
    let taken: Option<String> = redis::cmd("SET")
        .arg(keys.ended(query_id))
        .arg(backend.replica())
        .arg("NX")
        .arg("PX")
        .arg(millis(settings.hub.retention))
        .query_async(conn)
        .await?;
    if taken.is_none() {
        return Ok(false); // another survivor ends it
    }
    let ended = publish_ending(backend, conn, replica, query_id).await;
    if ended.is_err() {
        // Let the next look (here or elsewhere) try again.
        let _: Result<(), _> = redis::cmd("DEL")
            .arg(keys.ended(query_id))
            .query_async(conn)
            .await;
    }
    ended
}

/// Catches up with what Redis has of `query_id`, then (unless that holds its terminal
/// event) shares its final record and publishes its terminal event.
async fn publish_ending(
    backend: &RedisBackend,
    conn: &mut ConnectionManager,
    replica: &str,
    query_id: &Arc<str>,
) -> Result<bool, redis::RedisError> {
    let keys = backend.keys();
    let hub = backend.hub();
    let retention = millis(backend.settings().hub.retention);
    for event in backend.range(query_id, 0).await? {
        backend.apply(event, true);
    }
    // When it started and the stage it was in, from what is retained of its events.
    let (first, last) = match hub.retained_ends(query_id) {
        Some((first, last)) => (Some(first.event()), Some(last.event())),
        None => (None, None),
    };
    let started = first.filter(|e| e.seq == 1).map(|e| e.ts);
    let stage = last.as_ref().and_then(|e| e.kind.stage());
    let next_seq = match hub.position(query_id) {
        Some((_, false)) => return Ok(false), // it had ended after all
        Some((next_seq, true)) => next_seq,
        None => 1,
    };
    let record: Option<String> = redis::cmd("GET")
        .arg(keys.record(query_id))
        .query_async(conn)
        .await?;
    if next_seq == 1 && record.is_none() {
        return Ok(false); // nothing of it is left anywhere: no one can be watching it
    }
    let lost = LostQuery::new(query_id, replica, record.as_deref(), started, stage);
    let ending = match backend.control() {
        Some(control) => control.end_lost(&lost),
        None => Ending::replica_lost(stage.map(str::to_owned)),
    };
    let event = Published::new(ProgressEvent {
        kind: ending.event,
        query_id: query_id.to_string(),
        seq: next_seq,
        ts: SystemTime::now(),
    });
    let mut pipe = redis::pipe();
    // The final record before the terminal event, as a replica's own writer does.
    match &ending.record {
        Some(json) => pipe
            .cmd("SET")
            .arg(keys.record(query_id))
            .arg(json)
            .arg("PX")
            .arg(retention),
        None => pipe
            .cmd("PEXPIRE")
            .arg(keys.record(query_id))
            .arg(retention),
    }
    .ignore();
    add_event(&mut pipe, backend, query_id, &event);
    publish(&mut pipe, backend, &[&event]);
    pipe.cmd("SREM")
        .arg(keys.replica_running(replica))
        .arg(&**query_id)
        .ignore();
    let _: () = pipe.query_async(conn).await?;
    backend.apply((query_id.clone(), event), true);
    metrics::counter!("agentgate_replica_lost_queries_total").increment(1);
    tracing::info!(
        query_id = &**query_id,
        lost = replica,
        seq = next_seq,
        "progress backend: ended a lost replica's query"
    );
    Ok(true)
}

/// `conn`, connecting first when there is none.
async fn connected<'a>(
    backend: &RedisBackend,
    conn: &'a mut Option<ConnectionManager>,
) -> Result<&'a mut ConnectionManager, redis::RedisError> {
    if conn.is_none() {
        *conn = Some(backend.connect().await?);
    }
    Ok(conn.as_mut().expect("just connected"))
}
