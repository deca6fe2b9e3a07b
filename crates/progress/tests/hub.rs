//! The per-query hub under concurrency: ordering, replay, lag, retention.

use std::sync::Arc;
use std::time::Duration;

use agentgate_progress::{
    EventKind, HubConfig, MemoryHub, PublishError, StageStatus, SubscribeError, Subscription,
    SubscriptionItem,
};
use serde_json::json;

fn progress(n: u64) -> EventKind {
    EventKind::Progress {
        stage: format!("s{n}"),
        status: StageStatus::Started,
        progress: 0,
        attempt: None,
        detail: None,
    }
}

fn done() -> EventKind {
    EventKind::Completed {
        result: json!({}).into(),
        duration_ms: 1,
    }
}

/// Every item until the end: events' seqs, and lagged markers as `-next_seq`.
async fn drain(mut sub: Subscription) -> Vec<i64> {
    let mut out = Vec::new();
    while let Some(item) = sub.recv().await {
        out.push(match item {
            SubscriptionItem::Event(e) => e.seq() as i64,
            SubscriptionItem::Lagged { next_seq, .. } => -(next_seq as i64),
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_joining_at_any_time_get_every_event_once_in_order() {
    let hub = MemoryHub::new(HubConfig {
        replay_events: 5000,
        live_buffer: 5000,
        ..Default::default()
    });
    let publisher = hub.open("q").unwrap();
    let mut subscribers = Vec::new();
    let writer = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for i in 0..2000 {
                publisher.publish(progress(i)).unwrap();
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    // Join while the query runs, some from the start, some resuming after seen events.
    for k in 0..20u64 {
        let after = if k % 2 == 0 { 0 } else { k * 7 };
        subscribers.push((
            after,
            tokio::spawn(drain(hub.subscribe("q", after).unwrap())),
        ));
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    publisher.publish(done()).unwrap();
    for (after, sub) in subscribers {
        let got = sub.await.unwrap();
        let want: Vec<i64> = ((after + 1) as i64..=2001).collect();
        assert_eq!(got, want, "subscriber after {after}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_get_gap_free_sequence_numbers() {
    let hub = MemoryHub::new(HubConfig {
        replay_events: 10_000,
        ..Default::default()
    });
    let publisher = hub.open("q").unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let p = publisher.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..500 {
                    seqs.push(p.publish(progress(i)).unwrap().seq());
                    tokio::task::yield_now().await;
                }
                seqs
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "each publisher sees increasing seqs"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=2000).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_slow_subscriber_gets_lagged_and_never_stalls_the_publisher() {
    let hub = MemoryHub::new(HubConfig {
        replay_events: 64,
        live_buffer: 16,
        ..Default::default()
    });
    let publisher = hub.open("q").unwrap();
    let slow = hub.subscribe("q", 0).unwrap();
    let fast = tokio::spawn(drain(hub.subscribe("q", 0).unwrap()));
    // The slow one does not read at all while 1000 events go out: publish never waits.
    for i in 0..1000 {
        publisher.publish(progress(i)).unwrap();
        if i % 8 == 0 {
            tokio::task::yield_now().await; // let the fast one keep up
        }
    }
    publisher.publish(done()).unwrap();
    assert_eq!(fast.await.unwrap(), (1..=1001).collect::<Vec<i64>>());

    let got = drain(slow).await;
    // It is told where delivery resumes, then gets the newest events up to the terminal.
    let lag = got.iter().position(|s| *s < 0).expect("a lagged marker");
    let next = -got[lag];
    assert_eq!(got[lag + 1], next);
    assert_eq!(*got.last().unwrap(), 1001);
    assert!(
        got[lag + 1..].windows(2).all(|w| w[1] == w[0] + 1),
        "contiguous after the marker"
    );

    // Resubscribing recovers what is still retained (the last 64 events).
    let again = drain(hub.subscribe("q", 0).unwrap()).await;
    assert_eq!(again[0], -(1001 - 63));
    assert_eq!(&again[1..], &(938..=1001).collect::<Vec<i64>>()[..]);
}

#[tokio::test]
async fn a_subscriber_knows_its_backlog_and_how_many_live_events_it_missed() {
    let hub = MemoryHub::new(HubConfig {
        live_buffer: 4,
        ..Default::default()
    });
    let publisher = hub.open("q").unwrap();
    publisher.publish(progress(0)).unwrap();
    // seq 1 is replayed: not backlog.
    let mut sub = hub.subscribe("q", 0).unwrap();
    assert_eq!(sub.live_backlog(), 0);
    for i in 1..=3 {
        publisher.publish(progress(i)).unwrap();
    }
    assert_eq!(sub.live_backlog(), 3);
    assert!(matches!(sub.recv().await, Some(SubscriptionItem::Event(e)) if e.seq() == 1));
    assert!(matches!(sub.recv().await, Some(SubscriptionItem::Event(e)) if e.seq() == 2));
    assert_eq!(sub.live_backlog(), 2);
    assert_eq!(sub.take_missed(), 0);

    // 8 more while it reads nothing: the 4-slot channel overwrites 6 of the 10 unread.
    for i in 4..=11 {
        publisher.publish(progress(i)).unwrap();
    }
    assert!(matches!(
        sub.recv().await,
        Some(SubscriptionItem::Lagged { next_seq: 9, .. })
    ));
    assert_eq!(sub.take_missed(), 6);
    assert_eq!(sub.take_missed(), 0, "counted once");
    assert!(matches!(sub.recv().await, Some(SubscriptionItem::Event(e)) if e.seq() == 9));
    assert_eq!(sub.live_backlog(), 3);
}

#[tokio::test]
async fn exactly_one_terminal_event_and_resume_after_completion() {
    let hub = MemoryHub::new(HubConfig::default());
    let publisher = hub.open("q").unwrap();
    for i in 0..5 {
        publisher.publish(progress(i)).unwrap();
    }
    publisher.publish(EventKind::Cancelled {}).unwrap();
    assert_eq!(
        publisher.publish(done()),
        Err(PublishError::Ended("q".into()))
    );
    assert_eq!(
        publisher.publish(progress(9)).unwrap_err(),
        PublishError::Ended("q".into())
    );
    assert!(publisher.has_ended());
    assert_eq!(drain(hub.subscribe("q", 3).unwrap()).await, [4, 5, 6]);
    assert_eq!(
        drain(hub.subscribe("q", 6).unwrap()).await,
        Vec::<i64>::new()
    );
    assert_eq!(
        hub.subscribe("nope", 0).unwrap_err(),
        SubscribeError::UnknownQuery("nope".into())
    );
    assert!(hub.open("q").is_err(), "query ids are unique");
}

#[tokio::test(start_paused = true)]
async fn memory_stays_bounded_after_100k_finished_queries() {
    let hub = MemoryHub::new(HubConfig {
        replay_events: 8,
        max_finished: 1000,
        retention: Duration::from_secs(600),
        ..Default::default()
    });
    for q in 0..100_000 {
        let p = hub.open(&format!("q{q}")).unwrap();
        for i in 0..20 {
            p.publish(progress(i)).unwrap();
        }
        p.publish(done()).unwrap();
    }
    let stats = hub.stats();
    assert_eq!((stats.queries, stats.running), (1000, 0));
    // The newest are still there, with only their last 8 events.
    assert_eq!(
        drain(hub.subscribe("q99999", 0).unwrap()).await,
        [-14, 14, 15, 16, 17, 18, 19, 20, 21]
    );
    assert!(hub.subscribe("q0", 0).is_err());

    // Retention by time: everything finished goes once it is 10 minutes old.
    let running = hub.open("running").unwrap();
    tokio::time::advance(Duration::from_secs(601)).await;
    hub.evict_expired();
    let stats = hub.stats();
    assert_eq!(
        (stats.queries, stats.running),
        (1, 1),
        "running queries are never evicted"
    );
    drop(running);
}

#[tokio::test(start_paused = true)]
async fn finished_queries_with_large_events_are_bounded_by_bytes() {
    // Each query retains about 100 kB (a 100 kB `completed` result); 1 MB holds ten.
    let hub = MemoryHub::new(HubConfig {
        max_finished: 10_000,
        max_finished_bytes: 1024 * 1024,
        ..Default::default()
    });
    let big = || EventKind::Completed {
        result: agentgate_progress::JsonText::new(&json!({ "x": "y".repeat(100_000) })).unwrap(),
        duration_ms: 1,
    };
    for q in 0..100 {
        hub.open(&format!("q{q}")).unwrap().publish(big()).unwrap();
    }
    let kept = hub.stats().queries;
    assert!((9..=10).contains(&kept), "{kept} kept");
    assert!(hub.subscribe("q99", 0).is_ok() && hub.subscribe("q0", 0).is_err());
    // Small ones are still bounded by count alone.
    for q in 100..200 {
        hub.open(&format!("q{q}")).unwrap().publish(done()).unwrap();
    }
    assert!(hub.stats().queries > 100, "small queries fit by bytes");
}

#[tokio::test]
async fn stats_count_live_subscribers() {
    let hub = Arc::new(MemoryHub::new(HubConfig::default()));
    let p = hub.open("q").unwrap();
    let a = hub.subscribe("q", 0).unwrap();
    let b = hub.subscribe("q", 0).unwrap();
    assert_eq!(hub.stats().subscribers, 2);
    drop(a);
    assert_eq!(hub.stats().subscribers, 1);
    p.publish(done()).unwrap();
    assert_eq!(hub.stats().subscribers, 0);
    drop(b);
}

/// Another replica's events, as the Redis backend hands them over.
#[derive(Debug, Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

impl agentgate_progress::PublishHook for Recorder {
    fn published(&self, query_id: &Arc<str>, event: &Arc<agentgate_progress::Published>) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{query_id}:{}", event.seq()));
    }
}

#[tokio::test]
async fn mirrored_events_keep_their_text_and_seq_and_skip_duplicates_and_gaps() {
    use agentgate_progress::{Mirrored, Published};

    // Replica A publishes; its hook sees every event with its query id.
    let hook = Arc::new(Recorder::default());
    let a = MemoryHub::with_hook(HubConfig::default(), hook.clone());
    let publisher = a.open("q").unwrap();
    let texts: Vec<Arc<str>> = [progress(1), progress(2), progress(3), done()]
        .into_iter()
        .map(|k| publisher.publish(k).unwrap().json.clone())
        .collect();
    assert_eq!(*hook.0.lock().unwrap(), ["q:1", "q:2", "q:3", "q:4"]);

    // Replica B mirrors them.
    let b = MemoryHub::new(HubConfig::default());
    let event = |i: usize| Published::from_json(texts[i].clone()).unwrap();
    let (id, first) = event(0);
    assert_eq!(&*id, "q");
    assert!(!b.contains("q"));
    // A stream cannot start in the middle unless asked to.
    assert_eq!(
        b.mirror(&id, event(1).1, false),
        Mirrored::Gap { next_seq: 1 }
    );
    assert!(!b.contains("q"));
    assert_eq!(b.mirror(&id, first, false), Mirrored::Applied);
    let live = b.subscribe("q", 0).unwrap();
    assert_eq!(b.mirror(&id, event(0).1, false), Mirrored::Duplicate);
    assert_eq!(
        b.mirror(&id, event(2).1, false),
        Mirrored::Gap { next_seq: 2 }
    );
    assert_eq!(b.mirrored_running(), vec![(id.clone(), 2)]);
    assert_eq!(b.mirror(&id, event(1).1, false), Mirrored::Applied);
    assert_eq!(b.mirror(&id, event(2).1, false), Mirrored::Applied);
    assert_eq!(b.mirror(&id, event(3).1, false), Mirrored::Applied);
    assert!(b.mirrored_running().is_empty());
    assert_eq!(drain(live).await, [1, 2, 3, 4]);
    // Replay on B is A's text, byte for byte.
    let mut replay = b.subscribe("q", 1).unwrap();
    for text in &texts[1..] {
        match replay.recv().await.unwrap() {
            SubscriptionItem::Event(e) => assert_eq!(&e.json, text),
            other => panic!("{other:?}"),
        }
    }
    // Mirroring never feeds B's own hook, and A's own queries are never mirrored over.
    assert_eq!(a.mirror(&id, event(0).1, true), Mirrored::Local);

    // Events that cannot be recovered: accepted with `allow_gap`, subscribers get lagged.
    let c = MemoryHub::new(HubConfig::default());
    assert_eq!(c.mirror(&id, event(2).1, true), Mirrored::Applied);
    assert_eq!(c.mirror(&id, event(3).1, true), Mirrored::Applied);
    assert_eq!(drain(c.subscribe("q", 0).unwrap()).await, [-3, 3, 4]);
    assert!(Published::from_json(r#"{"type":"progress"}"#.into()).is_err());
}
