//! The Redis backend on its own, without the gateway: several replicas (backends) in this
//! process sharing one real `redis-server` that each test starts, and kills or restarts
//! where the test says so.
//!
//! Replicas live on other tasks and Redis in another process, so tests wait for
//! conditions (polled every few milliseconds, up to a deadline), never for a fixed time.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentgate_progress::{
    Backend, Ending, EventKind, LostQuery, QueryControl, QueryPublisher, Quota, QuotaRefusal,
    StageStatus, SubscribeError, Subscription, SubscriptionItem,
};
use agentgate_progress_redis::test_util::{self, RedisServer};
use agentgate_progress_redis::{RedisBackend, RedisSettings};
use serde_json::json;
use tokio::time::Instant;

/// How long any awaited condition may take. Reconnect backoff tops out at 2 s and
/// machines running the tests are busy.
const DEADLINE: Duration = Duration::from_secs(20);

/// A replica on `redis`, once both of its connections are up.
async fn replica(redis: &RedisServer) -> RedisBackend {
    let backend = RedisBackend::start(RedisSettings::new(redis.url())).expect("valid url");
    until("the replica connects", || backend.health().connected).await;
    backend
}

/// Waits until `cond` holds, checking every 5 ms; panics after [`DEADLINE`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    eventually(what, || std::future::ready(cond().then_some(()))).await;
}

/// Waits until `f` yields something, checking every 5 ms; panics after [`DEADLINE`].
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(found) = f().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Subscribes on `backend` to a query of another replica, once it has heard of it.
async fn subscribe_when_known(
    backend: &RedisBackend,
    query_id: &str,
    after_seq: u64,
) -> Subscription {
    eventually("the query reaches the other replica", || async {
        backend.subscribe(query_id, after_seq).await.ok()
    })
    .await
}

/// The next item of `sub` (within [`DEADLINE`]): an event's text, or `lagged` as text.
async fn next(sub: &mut Subscription) -> Option<String> {
    let item = tokio::time::timeout(DEADLINE, sub.recv())
        .await
        .expect("an item within the deadline")?;
    Some(match item {
        SubscriptionItem::Event(e) => e.json.to_string(),
        SubscriptionItem::Lagged { next_seq, .. } => format!("lagged {next_seq}"),
    })
}

/// Every item of `sub` until it ends.
async fn rest(mut sub: Subscription) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(item) = next(&mut sub).await {
        out.push(item);
    }
    out
}

fn started(n: u64) -> EventKind {
    EventKind::Progress {
        stage: format!("s{n}"),
        status: StageStatus::Started,
        progress: 0,
        attempt: None,
        detail: None,
    }
}

fn completed() -> EventKind {
    EventKind::Completed {
        result: json!({"answer": 42}).into(),
        duration_ms: 7,
    }
}

/// Publishes `kind` and returns the event's text.
fn publish(publisher: &QueryPublisher, kind: EventKind) -> String {
    publisher.publish(kind).expect("running").json.to_string()
}

/// A plain connection, to look at what the backends left in Redis.
async fn raw(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("redis answers")
}

/// How long `key` has left to live, in milliseconds (negative: no expiry, or no key).
async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_one_replica_reach_another_in_order_with_the_same_text() {
    let redis = RedisServer::start().await;
    let (a, b) = (replica(&redis).await, replica(&redis).await);
    assert_ne!(a.replica(), b.replica());

    let publisher = a.open("q").unwrap();
    let mut texts = vec![publish(&publisher, started(1))];
    let mut on_b = subscribe_when_known(&b, "q", 0).await;
    assert_eq!(next(&mut on_b).await.as_deref(), Some(texts[0].as_str()));
    for i in 2..=20 {
        texts.push(publish(&publisher, started(i)));
    }
    texts.push(publish(&publisher, completed()));
    // Closing flushes what is queued: every event is in Redis when `close` returns.
    a.close().await;
    assert!(!a.health().connected);

    // Every event once, in order, byte for byte: seq and ts as replica A stamped them.
    assert_eq!(rest(on_b).await, texts[1..]);
    // B replays A's query like one of its own, from any `after_seq`.
    assert_eq!(rest(b.subscribe("q", 17).await.unwrap()).await, texts[17..]);
    assert_eq!(b.stats().running, 0);
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_ended_before_a_replica_started_is_loaded_on_demand() {
    let redis = RedisServer::start().await;
    let a = replica(&redis).await;
    let publisher = a.open("done").unwrap();
    let texts: Vec<String> = [started(1), started(2), started(3), completed()]
        .into_iter()
        .map(|kind| publish(&publisher, kind))
        .collect();
    let mut conn = raw(&redis).await;
    let want = texts.len();
    eventually("the events are in redis", || {
        let mut conn = conn.clone();
        async move {
            let len: usize = redis::cmd("XLEN")
                .arg("agentgate:q:done:events")
                .query_async(&mut conn)
                .await
                .ok()?;
            (len == want).then_some(())
        }
    })
    .await;

    // C never heard of the query: it loads it, and resumes after seq 2.
    let c = replica(&redis).await;
    assert!(!c.hub().contains("done"));
    assert_eq!(
        rest(c.subscribe("done", 2).await.unwrap()).await,
        texts[2..]
    );
    assert!(c.hub().contains("done"));
    // A finished query's stream expires after the retention (10 minutes by default).
    let ttl = pttl(&mut conn, "agentgate:q:done:events").await;
    assert!((1..=600_000).contains(&ttl), "{ttl}");

    // No replica has this one.
    assert_eq!(
        c.subscribe("nope", 0).await.unwrap_err(),
        SubscribeError::UnknownQuery("nope".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_read_across_replicas_and_the_final_one_precedes_the_terminal_event() {
    let redis = RedisServer::start().await;
    let (a, b) = (replica(&redis).await, replica(&redis).await);
    assert!(a.is_shared());

    let running = r#"{"query_id":"q","status":"running"}"#;
    let finished = r#"{"query_id":"q","status":"completed"}"#;
    let publisher = a.open("q").unwrap();
    a.put_record("q", running.to_owned(), false);
    publish(&publisher, started(1));
    let mut on_b = subscribe_when_known(&b, "q", 0).await;
    next(&mut on_b).await.expect("the first event");
    // The record went out before the first event, so it is there.
    assert_eq!(b.record("q").await.unwrap().as_deref(), Some(running));
    let mut conn = raw(&redis).await;
    let ttl = pttl(&mut conn, "agentgate:q:q:record").await;
    assert!(
        ttl > 600_000,
        "a running query's record lives for `running_ttl`: {ttl}"
    );

    // As the engine does: the final record, then the terminal event. Whoever sees the
    // event can read the final record at once.
    a.put_record("q", finished.to_owned(), true);
    let terminal = publish(&publisher, completed());
    assert_eq!(next(&mut on_b).await, Some(terminal));
    assert_eq!(b.record("q").await.unwrap().as_deref(), Some(finished));
    let ttl = pttl(&mut conn, "agentgate:q:q:record").await;
    assert!((1..=600_000).contains(&ttl), "{ttl}");

    assert_eq!(b.record("nope").await.unwrap(), None);
}

/// A replica's engine, as far as cancel requests go: remembers what it was asked, and
/// cancels the queries it runs.
#[derive(Debug, Default)]
struct Owner {
    running: Mutex<HashMap<String, QueryPublisher>>,
    asked: Mutex<Vec<String>>,
}

impl QueryControl for Owner {
    fn cancel(&self, query_id: &str) {
        self.asked.lock().unwrap().push(query_id.to_owned());
        if let Some(publisher) = self.running.lock().unwrap().remove(query_id) {
            publisher.publish(EventKind::Cancelled {}).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_reaches_the_replica_running_the_query() {
    let redis = RedisServer::start().await;
    let (a, b) = (replica(&redis).await, replica(&redis).await);
    let (on_a, on_b) = (Arc::new(Owner::default()), Arc::new(Owner::default()));
    a.set_control(on_a.clone());
    b.set_control(on_b.clone());

    let publisher = a.open("q").unwrap();
    let first = publish(&publisher, started(1));
    on_a.running
        .lock()
        .unwrap()
        .insert("q".to_owned(), publisher);
    let mut watching = subscribe_when_known(&b, "q", 0).await;
    assert_eq!(next(&mut watching).await, Some(first));

    b.cancel("q").await.unwrap();
    // A cancels its query; B's subscriber gets the terminal event, and nothing after it.
    let rest = rest(watching).await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert!(rest[0].contains(r#""type":"cancelled""#), "{rest:?}");
    assert!(rest[0].contains(r#""seq":2"#), "{rest:?}");
    // Every replica hears the request (B runs nothing, so nothing happened there).
    until("B heard it too", || on_b.asked.lock().unwrap().len() == 1).await;
    assert_eq!(*on_a.asked.lock().unwrap(), ["q"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_replicas_reconnect_and_catch_up() {
    let mut redis = RedisServer::start().await;
    let (a, b) = (replica(&redis).await, replica(&redis).await);
    let publisher = a.open("q").unwrap();
    let first = publish(&publisher, started(1));
    let mut on_b = subscribe_when_known(&b, "q", 0).await;
    assert_eq!(next(&mut on_b).await, Some(first));

    redis.kill();
    until("both notice", || {
        !a.health().connected && !b.health().connected
    })
    .await;
    let health = b.health();
    assert_eq!(health.name, "redis");
    assert!(health.reason.unwrap().contains("unreachable"));

    // Published while Redis is down: A's own subscribers get it at once; A's writer
    // keeps it and sends it once Redis is back.
    let mut on_a = a.subscribe("q", 1).await.unwrap();
    let second = publish(&publisher, started(2));
    assert_eq!(next(&mut on_a).await.as_ref(), Some(&second));

    redis.restart().await;
    until("both reconnect", || {
        a.health().connected && b.health().connected
    })
    .await;
    assert_eq!(b.health().reason, None);
    let last = publish(&publisher, completed());
    // B gets what it missed (live, or from the stream when it re-subscribed after A
    // sent it), then the rest: in order, nothing lost, nothing twice.
    assert_eq!(rest(on_b).await, [second, last]);
}

/// Another replica, written by hand: appends an event of `peer-q` to the query's stream
/// and, when `announce`, publishes it on the channel. Returns its text.
async fn peer_event(
    conn: &mut redis::aio::MultiplexedConnection,
    seq: u64,
    announce: bool,
) -> String {
    let text = json!({"type": "progress", "query_id": "peer-q", "seq": seq,
        "ts": "2026-11-25T12:00:00.000Z", "stage": "s", "status": "started", "progress": seq})
    .to_string();
    let mut pipe = redis::pipe();
    pipe.cmd("XADD")
        .arg("agentgate:q:peer-q:events")
        .arg("*")
        .arg("e")
        .arg(&text)
        .ignore();
    if announce {
        pipe.cmd("PUBLISH")
            .arg("agentgate:events")
            .arg(format!("peer|{text}"))
            .ignore();
    }
    pipe.query_async::<()>(conn).await.unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_missed_on_the_channel_are_filled_from_the_stream() {
    let redis = RedisServer::start().await;
    let b = replica(&redis).await;
    let mut conn = raw(&redis).await;
    let first = peer_event(&mut conn, 1, true).await;
    until("B mirrors the peer's query", || b.hub().contains("peer-q")).await;
    let mut sub = b.subscribe("peer-q", 0).await.unwrap();
    assert_eq!(next(&mut sub).await, Some(first));

    // The second is never announced: the third shows the gap, which B fills from the
    // stream before delivering the third.
    let second = peer_event(&mut conn, 2, false).await;
    let third = peer_event(&mut conn, 3, true).await;
    assert_eq!(next(&mut sub).await, Some(second));
    assert_eq!(next(&mut sub).await, Some(third));

    // B's subscription to the channel breaks, and an event is written meanwhile (never
    // announced): B catches up every query it follows from the streams once it has
    // re-subscribed.
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let missed = peer_event(&mut conn, 4, false).await;
    assert_eq!(next(&mut sub).await, Some(missed));
}

// === replica leases (SPEC §9) ===

/// The lease of the replicas in the lease tests: short, so that a lost replica is
/// noticed within a second or two.
const LEASE: Duration = Duration::from_secs(1);

/// A replica with a short [`LEASE`], once connected.
async fn leased(redis: &RedisServer) -> RedisBackend {
    let settings = RedisSettings {
        lease: LEASE,
        ..RedisSettings::new(redis.url())
    };
    let backend = RedisBackend::start(settings).expect("valid url");
    until("the replica connects", || backend.health().connected).await;
    backend
}

/// A survivor's engine, as far as lost queries go: counts them, and marks each record
/// failed as the engine does.
#[derive(Debug, Default)]
struct Survivor {
    ended: Mutex<Vec<String>>,
}

impl QueryControl for Survivor {
    fn cancel(&self, _query_id: &str) {}

    fn end_lost(&self, lost: &LostQuery<'_>) -> Ending {
        self.ended.lock().unwrap().push(lost.query_id.to_owned());
        let record = json!({"query_id": lost.query_id, "status": "failed",
            "was": lost.record.map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap())});
        Ending {
            record: Some(record.to_string()),
            ..Ending::replica_lost(Some("s2".to_owned()))
        }
    }
}

/// Members of a Redis set.
async fn members(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
    redis::cmd("SMEMBERS")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_replicas_unfinished_queries_end_once_with_replica_lost() {
    let redis = RedisServer::start().await;
    let (a, b, c) = (
        leased(&redis).await,
        leased(&redis).await,
        leased(&redis).await,
    );
    let (on_a, on_b) = (Arc::new(Survivor::default()), Arc::new(Survivor::default()));
    a.set_control(on_a.clone());
    b.set_control(on_b.clone());
    let mut conn = raw(&redis).await;
    eventually("the three replicas hold leases", || {
        let mut conn = conn.clone();
        async move { (members(&mut conn, "agentgate:replicas").await.len() == 3).then_some(()) }
    })
    .await;

    // C runs two queries: one still running, one that completed before C was lost.
    let running = c.open("running").unwrap();
    c.put_record(
        "running",
        r#"{"query_id":"running","status":"running"}"#.into(),
        false,
    );
    let texts = [publish(&running, started(1)), publish(&running, started(2))];
    let done = c.open("done").unwrap();
    c.put_record(
        "done",
        r#"{"query_id":"done","status":"running"}"#.into(),
        false,
    );
    publish(&done, started(1));
    c.put_record(
        "done",
        r#"{"query_id":"done","status":"completed"}"#.into(),
        true,
    );
    let done_last = publish(&done, completed());
    let mut on_a_sub = subscribe_when_known(&a, "running", 0).await;
    let mut on_b_sub = subscribe_when_known(&b, "running", 0).await;
    for sub in [&mut on_a_sub, &mut on_b_sub] {
        assert_eq!(next(sub).await.as_ref(), Some(&texts[0]));
        assert_eq!(next(sub).await.as_ref(), Some(&texts[1]));
    }
    let mut done_on_a = subscribe_when_known(&a, "done", 1).await;
    assert_eq!(next(&mut done_on_a).await, Some(done_last));
    // A third one, which another survivor has claimed already (its `ended` key is
    // taken): no one here may end it. Sorted before "running", so whoever ends that one
    // has passed this one by then.
    let claimed = c.open("claimed").unwrap();
    c.put_record(
        "claimed",
        r#"{"query_id":"claimed","status":"running"}"#.into(),
        false,
    );
    publish(&claimed, started(1));
    redis::cmd("SET")
        .arg("agentgate:q:claimed:ended")
        .arg("elsewhere")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let c_running = format!("agentgate:replica:{}:running", c.replica());
    eventually("C's running set holds its running query", || {
        let (mut conn, key) = (conn.clone(), c_running.clone());
        async move { (members(&mut conn, &key).await.len() == 2).then_some(()) }
    })
    .await;

    // C crashes: no more renewals. Within the lease and a look, one survivor ends the
    // running query; every subscriber gets one terminal event, `seq` continuing.
    let lost_at = Instant::now();
    c.crash();
    let (rest_a, rest_b) = tokio::join!(rest(on_a_sub), rest(on_b_sub));
    let took = lost_at.elapsed();
    assert_eq!(rest_a, rest_b, "the same terminal event everywhere");
    assert_eq!(rest_a.len(), 1, "{rest_a:?}");
    let end: serde_json::Value = serde_json::from_str(&rest_a[0]).unwrap();
    assert_eq!(end["type"], "failed");
    assert_eq!(end["seq"], 3);
    assert_eq!(end["error"]["kind"], "replica_lost");
    assert_eq!(end["error"]["stage"], "s2");
    assert!(took < LEASE + Duration::from_secs(5), "took {took:?}");
    // Exactly one survivor ended it; the finished query and the claimed one were left
    // alone.
    let ended: Vec<String> = [&on_a, &on_b]
        .iter()
        .flat_map(|s| s.ended.lock().unwrap().clone())
        .collect();
    assert_eq!(ended, ["running"]);
    // The record says how it ended (the survivor's control had the last one to go on).
    let record: serde_json::Value =
        serde_json::from_str(&b.record("running").await.unwrap().unwrap()).unwrap();
    assert_eq!(
        record,
        json!({"query_id": "running", "status": "failed",
            "was": {"query_id": "running", "status": "running"}})
    );
    assert_eq!(a.hub().position("claimed"), Some((2, true)));
    // Nothing of C is left to end.
    eventually("C is forgotten", || {
        let (mut conn, key) = (conn.clone(), c_running.clone());
        async move {
            let replicas = members(&mut conn, "agentgate:replicas").await;
            (replicas.len() == 2 && members(&mut conn, &key).await.is_empty()).then_some(())
        }
    })
    .await;
    assert!(!members(&mut conn, "agentgate:replicas")
        .await
        .contains(&c.replica().to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_closes_gives_its_lease_back_and_loses_nothing() {
    let redis = RedisServer::start().await;
    let (a, b) = (leased(&redis).await, leased(&redis).await);
    let on_a = Arc::new(Survivor::default());
    a.set_control(on_a.clone());
    let mut conn = raw(&redis).await;
    let lease = format!("agentgate:replica:{}:lease", b.replica());
    eventually("B holds its lease", || {
        let (mut conn, lease) = (conn.clone(), lease.clone());
        async move {
            let ttl = pttl(&mut conn, &lease).await;
            (1..=LEASE.as_millis() as i64).contains(&ttl).then_some(())
        }
    })
    .await;
    b.close().await;
    // Gone from the replicas' set with its lease, in one step: no replica takes B for
    // lost (only replicas in the set, or whose running queries one follows, are
    // watched, and B's queries all ended before it closed).
    assert!(pttl(&mut conn, &lease).await < 0, "the lease is gone");
    assert_eq!(
        members(&mut conn, "agentgate:replicas").await,
        [a.replica()]
    );
    assert!(on_a.ended.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_lost_across_a_redis_restart_is_still_ended() {
    let mut redis = RedisServer::start().await;
    let (a, c) = (leased(&redis).await, leased(&redis).await);
    let on_a = Arc::new(Survivor::default());
    a.set_control(on_a.clone());
    let before = c.open("before").unwrap();
    c.put_record(
        "before",
        r#"{"query_id":"before","status":"running"}"#.into(),
        false,
    );
    publish(&before, started(1));
    let mut watching = subscribe_when_known(&a, "before", 0).await;
    next(&mut watching).await.expect("the first event");

    // Redis restarts empty: C shares its running record again once it finds its lease
    // gone, and A still knows that C runs the query (from C's messages).
    redis.restart().await;
    until("both reconnect", || {
        a.health().connected && c.health().connected
    })
    .await;
    eventually("C shared its running record again", || async {
        a.record("before").await.ok().flatten()
    })
    .await;
    c.crash();
    let rest = rest(watching).await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert!(rest[0].contains(r#""kind":"replica_lost""#), "{rest:?}");
    assert!(rest[0].contains(r#""seq":2"#), "{rest:?}");
    let record = a.record("before").await.unwrap().unwrap();
    assert!(record.contains(r#""status":"failed""#), "{record}");

    // C is lost before a restart that forgets it altogether: A still ends its query,
    // from what it followed, once C's lease has been missing for a whole lease.
    let c = leased(&redis).await;
    let after = c.open("after").unwrap();
    publish(&after, started(1));
    let mut watching = subscribe_when_known(&a, "after", 0).await;
    next(&mut watching).await.expect("the first event");
    c.crash();
    redis.restart().await;
    let rest = self::rest(watching).await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert!(rest[0].contains(r#""kind":"replica_lost""#), "{rest:?}");
    assert_eq!(*on_a.ended.lock().unwrap(), ["before", "after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_is_used_and_never_shown() {
    let redis = RedisServer::start_with(test_util::free_port(), &["--requirepass", "s3cret"]).await;
    let url = format!("redis://:s3cret@127.0.0.1:{}", redis.port);
    let backend = RedisBackend::start(RedisSettings::new(&url)).unwrap();
    until("it connects with the password", || {
        backend.health().connected
    })
    .await;
    let shown = format!("{backend:?}");
    assert!(
        !shown.contains("s3cret") && shown.contains(":***@"),
        "{shown}"
    );
}

/// A private CA and a certificate for `localhost` signed by it, as PEM files in a
/// fresh directory: `(dir, ca.pem)`.
fn private_ca() -> (std::path::PathBuf, Vec<u8>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "agentgate-redis-tls-{}-{}",
        std::process::id(),
        test_util::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, pem) in [
        ("ca.pem", ca.pem()),
        ("server.pem", cert.pem()),
        ("server.key", key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    (dir, ca.pem().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_connects_with_tls_and_a_password() {
    let (dir, ca) = private_ca();
    let file = |name: &str| dir.join(name).display().to_string();
    let tls_port = test_util::free_port().to_string();
    let (cert, key, ca_file) = (file("server.pem"), file("server.key"), file("ca.pem"));
    let redis = RedisServer::start_with(
        test_util::free_port(),
        &[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca_file,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "s3cret",
        ],
    )
    .await;
    let settings = RedisSettings {
        ca_pem: Some(ca),
        ..RedisSettings::new(format!("rediss://:s3cret@localhost:{tls_port}"))
    };
    let (a, b) = (
        RedisBackend::start(settings.clone()).unwrap(),
        RedisBackend::start(settings).unwrap(),
    );
    until("both connect over TLS", || {
        a.health().connected && b.health().connected
    })
    .await;
    let publisher = a.open("q").unwrap();
    let first = publish(&publisher, started(1));
    let mut on_b = subscribe_when_known(&b, "q", 0).await;
    assert_eq!(next(&mut on_b).await, Some(first));
    drop(redis);
    let _ = std::fs::remove_dir_all(dir);
}

const RUNNING_3: Quota = Quota {
    max_running: Some(3),
    rate: None,
};
const HOLD: Duration = Duration::from_secs(60);

/// Admits `n` tickets racing on both replicas; returns the admitted ones.
async fn race(a: &RedisBackend, b: &RedisBackend, n: usize, quota: Quota) -> Vec<String> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let replica = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let ticket = format!("t{i}");
                let ok = replica.admit("team-a", &ticket, quota, HOLD).await.is_ok();
                ok.then_some(ticket)
            })
        })
        .collect();
    let mut admitted = Vec::new();
    for t in tasks {
        admitted.extend(t.await.unwrap());
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_quota_holds_for_all_replicas_together() {
    let redis = RedisServer::start().await;
    let (a, b) = (replica(&redis).await, replica(&redis).await);

    // 50 admissions race on two replicas for 3 slots: exactly 3 get one.
    let admitted = race(&a, &b, 50, RUNNING_3).await;
    assert_eq!(admitted.len(), 3, "{admitted:?}");
    assert_eq!(
        b.admit("team-a", "late", RUNNING_3, HOLD).await,
        Err(QuotaRefusal::TooManyQueries)
    );
    // Another client has its own count.
    assert_eq!(a.admit("team-b", "x", RUNNING_3, HOLD).await, Ok(()));

    // A slot released on one replica is free on the other once the writer sent it.
    let owner = if admitted[0][1..].parse::<usize>().unwrap() % 2 == 0 {
        &a
    } else {
        &b
    };
    owner.release("team-a", &admitted[0]);
    let other = if std::ptr::eq(owner, &a) { &b } else { &a };
    eventually("the released slot is free everywhere", || async {
        other.admit("team-a", "next", RUNNING_3, HOLD).await.ok()
    })
    .await;

    // The rate is shared too: a burst of 4 across both replicas, then refusals that
    // say when the next token comes.
    let rate = Quota {
        max_running: None,
        rate: Some(4),
    };
    let admitted = race(&a, &b, 20, rate).await;
    assert_eq!(admitted.len(), 4, "{admitted:?}");
    let Err(QuotaRefusal::RateLimited { retry_after }) = a.admit("team-a", "r", rate, HOLD).await
    else {
        panic!("the bucket is empty");
    };
    assert!(
        retry_after > Duration::ZERO && retry_after <= Duration::from_millis(250),
        "{retry_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_slots_expire_and_without_redis_each_replica_counts_alone() {
    let mut redis = RedisServer::start().await;
    let a = replica(&redis).await;
    // A replica that died holding two slots: they count until their hold runs out.
    let short = Duration::from_millis(300);
    assert_eq!(a.admit("team-a", "1", RUNNING_3, short).await, Ok(()));
    assert_eq!(a.admit("team-a", "2", RUNNING_3, short).await, Ok(()));
    let mut conn = raw(&redis).await;
    let held: u64 = redis::cmd("ZCARD")
        .arg("agentgate:client:team-a:running")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(held, 2);
    drop(a);
    let b = replica(&redis).await;
    assert_eq!(b.admit("team-a", "3", RUNNING_3, HOLD).await, Ok(()));
    assert_eq!(
        b.admit("team-a", "4", RUNNING_3, HOLD).await,
        Err(QuotaRefusal::TooManyQueries)
    );
    eventually("the dead replica's slots expire", || async {
        b.admit("team-a", "4", RUNNING_3, HOLD).await.ok()
    })
    .await;

    // Redis down: this replica enforces the limit alone, and releases locally.
    redis.kill();
    until("b notices", || !b.health().connected).await;
    for t in ["l1", "l2", "l3"] {
        assert_eq!(b.admit("team-a", t, RUNNING_3, HOLD).await, Ok(()));
    }
    assert_eq!(
        b.admit("team-a", "l4", RUNNING_3, HOLD).await,
        Err(QuotaRefusal::TooManyQueries)
    );
    b.release("team-a", "l1");
    assert_eq!(b.admit("team-a", "l4", RUNNING_3, HOLD).await, Ok(()));
}
