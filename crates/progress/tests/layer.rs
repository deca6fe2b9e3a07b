//! ProgressLayer over the retry layer, and on its own: the events of one stage.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentgate_progress::{
    EventKind, HubConfig, MemoryHub, ProgressContext, ProgressLayer, StreamedAnswer,
    SubscriptionItem,
};
use agentgate_retry::{Jitter, ReplayBody, RetryConfig, RetryLayer, RetryPolicy};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use tower::{Layer, ServiceExt};

#[tokio::test(start_paused = true)]
async fn a_stage_that_fails_once_reports_error_retrying_completed() {
    let hub = MemoryHub::new(HubConfig::default());
    let publisher = hub.open("q1").unwrap();
    let mut sub = hub.subscribe("q1", 0).unwrap();

    let calls = Arc::new(AtomicU32::new(0));
    let agent = tower::service_fn({
        let calls = calls.clone();
        move |_req: Request<ReplayBody<Empty<Bytes>>>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let status = if n == 0 { 503 } else { 200 };
                Ok::<_, std::io::Error>(Response::builder().status(status).body(()).unwrap())
            }
        }
    });
    let policy = RetryPolicy::try_new(
        "nlp",
        RetryConfig {
            base_delay: Duration::from_millis(250),
            jitter: Jitter::None,
            ..Default::default()
        },
    )
    .unwrap();
    let stack = ProgressLayer::new().layer(RetryLayer::new(policy).layer(agent));

    let mut req = Request::get("http://nlp/process")
        .body(Empty::<Bytes>::new())
        .unwrap();
    req.extensions_mut().insert(ProgressContext {
        publisher: publisher.clone(),
        stage: "nlp_processing".into(),
        progress_start: 0,
        progress_end: 30,
    });
    assert_eq!(stack.oneshot(req).await.unwrap().status(), 200);
    publisher.publish(EventKind::Cancelled {}).unwrap();

    let got = events(&mut sub).await;
    let brief: Vec<_> = got
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["type"].as_str().unwrap().to_owned(),
                e.get("status")
                    .and_then(|s| s.as_str())
                    .unwrap_or("")
                    .to_owned(),
                e.get("attempt").and_then(|a| a.as_u64()),
                e.get("progress").and_then(|a| a.as_u64()),
            )
        })
        .collect();
    assert_eq!(
        brief,
        [
            (1, "progress".into(), "started".into(), Some(1), Some(0)),
            (2, "error".into(), "".into(), None, None),
            (3, "progress".into(), "retrying".into(), Some(2), Some(0)),
            (4, "progress".into(), "completed".into(), None, Some(30)),
            (5, "cancelled".into(), "".into(), None, None),
        ]
    );
    assert_eq!(got[1]["error"]["kind"], "status");
    assert_eq!(got[1]["error"]["message"], "attempt 1 answered 503");
    assert_eq!(got[2]["detail"]["delay_ms"], 250);
    assert_eq!(got[1]["stage"], "nlp_processing");
}

/// Every event of a subscription, until the terminal one.
async fn events(sub: &mut agentgate_progress::Subscription) -> Vec<serde_json::Value> {
    let mut got = Vec::new();
    while let Some(SubscriptionItem::Event(e)) = sub.recv().await {
        got.push(serde_json::to_value(e.event()).unwrap());
    }
    got
}

#[tokio::test(start_paused = true)]
async fn without_a_retry_layer_the_call_is_the_one_attempt() {
    let hub = MemoryHub::new(HubConfig::default());
    let publisher = hub.open("q2").unwrap();
    let mut sub = hub.subscribe("q2", 0).unwrap();
    let agent = tower::service_fn(|_req: Request<()>| async {
        Err::<Response<()>, _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    });
    let mut req = Request::new(());
    req.extensions_mut().insert(ProgressContext {
        publisher: publisher.clone(),
        stage: "solo".into(),
        progress_start: 10,
        progress_end: 20,
    });
    assert!(ProgressLayer::new()
        .layer(agent)
        .oneshot(req)
        .await
        .is_err());
    publisher.publish(EventKind::Cancelled {}).unwrap();
    let got = events(&mut sub).await;
    let types: Vec<_> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["progress", "error", "cancelled"]);
    assert_eq!(got[0]["status"], "started");
    assert_eq!(got[1]["error"]["kind"], "connect");
    assert_eq!(got[1]["error"]["message"], "attempt 1 failed: connect");
}

#[tokio::test(start_paused = true)]
async fn a_streamed_answer_is_not_completed_at_its_head() {
    let hub = MemoryHub::new(HubConfig::default());
    let publisher = hub.open("q3").unwrap();
    let mut sub = hub.subscribe("q3", 0).unwrap();
    let agent = tower::service_fn(|_req: Request<()>| async {
        let mut res = Response::new(());
        res.extensions_mut().insert(StreamedAnswer);
        Ok::<_, std::io::Error>(res)
    });
    let mut req = Request::new(());
    req.extensions_mut().insert(ProgressContext {
        publisher: publisher.clone(),
        stage: "llm".into(),
        progress_start: 0,
        progress_end: 50,
    });
    let res = ProgressLayer::new()
        .layer(agent)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    publisher.publish(EventKind::Cancelled {}).unwrap();
    let got = events(&mut sub).await;
    let types: Vec<_> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    // Started, and nothing more from the layer: the stream's reader completes the stage.
    assert_eq!(types, ["progress", "cancelled"]);
    assert_eq!(got[0]["status"], "started");
}
