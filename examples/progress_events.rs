//! Watch the progress events of a call as they are published.
//!
//! ```text
//! cargo run --example progress_events
//! ```
//!
//! A [`ProgressLayer`] over a [`RetryLayer`] turns one call into the events a
//! WebSocket client of the gateway sees for a pipeline stage: `started`, an `error` for
//! each failed attempt, `retrying` (with the delay), `completed`. It publishes them to the
//! query's stream in a [`MemoryHub`], which numbers them (`seq` from 1, no gaps), keeps
//! them for replay and hands them to every subscriber without ever making the call wait.
//!
//! Here a subscriber prints each event the moment it is published, while an agent that
//! fails its first attempt with 503 is called once. The terminal `completed` event is
//! ours to publish: the layer knows one call, the caller knows when the query is done.
//! The program exits non-zero unless the events are exactly the expected ones.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentgate::progress::{
    EventKind, HubConfig, JsonText, ProgressContext, ProgressEvent, StageStatus, SubscriptionItem,
};
use agentgate::retry::Jitter;
use agentgate::{MemoryHub, ProgressLayer, ReplayBody, RetryConfig, RetryLayer, RetryPolicy};
use http::{Request, Response, StatusCode};
use serde_json::json;
use tokio::time::Instant;
use tower::{BoxError, ServiceBuilder, ServiceExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    // One hub per process; one stream per query.
    let hub = MemoryHub::new(HubConfig::default());
    let publisher = hub.open("query-1")?;

    // Subscribe from the start (`after_seq` 0) and print events as they come. The
    // subscription ends after the query's terminal event.
    let mut subscription = hub.subscribe("query-1", 0)?;
    let printer = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(item) = subscription.recv().await {
            match item {
                SubscriptionItem::Event(published) => {
                    println!("event: {}", published.json);
                    events.push(published.event());
                }
                // A subscriber that falls behind skips ahead instead of slowing the
                // publisher; it could resubscribe with `after_seq = next_seq - 1`.
                SubscriptionItem::Lagged { next_seq, .. } => {
                    println!("lagged: next event is seq {next_seq}")
                }
            }
        }
        events
    });

    // An agent whose first answer is a 503.
    let calls = Arc::new(AtomicU32::new(0));
    let agent = tower::service_fn({
        let calls = calls.clone();
        move |_req: Request<ReplayBody<String>>| {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                let (status, body) = if first {
                    (StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"warming up"}"#)
                } else {
                    (StatusCode::OK, r#"{"summary":"short"}"#)
                };
                Response::builder().status(status).body(body.to_owned())
            }
        }
    });
    let retry = RetryPolicy::try_new(
        "summarizer",
        RetryConfig {
            base_delay: Duration::from_millis(250),
            jitter: Jitter::None,
            ..RetryConfig::default()
        },
    )?;
    let stage = ServiceBuilder::new()
        .layer(ProgressLayer::new())
        .layer(RetryLayer::new(retry))
        .service(agent);

    // Calls that carry a `ProgressContext` are reported (others pass through silently).
    // This stage owns the whole progress bar: it starts at 0 and completes at 100. A
    // POST is retried only with an `Idempotency-Key` (SPEC §5).
    let mut req = Request::post("/summarize")
        .header("idempotency-key", "query-1:summarize")
        .body(String::from(r#"{"text":"…"}"#))?;
    req.extensions_mut().insert(ProgressContext {
        publisher: publisher.clone(),
        stage: "summarize".into(),
        progress_start: 0,
        progress_end: 100,
    });
    let started = Instant::now();
    let res = stage.oneshot(req).await?;
    assert_eq!(res.status(), StatusCode::OK);
    let output: serde_json::Value = serde_json::from_str(res.body())?;

    // The query is done: its terminal event ends every subscription.
    publisher.publish(EventKind::Completed {
        result: JsonText::from(json!({ "summarize": output })),
        duration_ms: started.elapsed().as_millis() as u64,
    })?;
    let events = printer.await?;

    // What a client can count on: seq 1, 2, 3, … without gaps, and this story.
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let story: Vec<String> = events.iter().map(describe).collect();
    assert_eq!(
        story,
        [
            "progress started attempt 1 at 0%",
            "error status",
            "progress retrying attempt 2 at 0%",
            "progress completed at 100%",
            "completed",
        ]
    );
    let EventKind::Progress { detail, .. } = &events[2].kind else {
        unreachable!("checked above")
    };
    assert_eq!(detail.as_ref(), Some(&json!({ "delay_ms": 250 })));
    println!("ok: {} events, seq 1..={}", events.len(), seqs.len());
    Ok(())
}

/// One line per event, for the check above.
fn describe(event: &ProgressEvent) -> String {
    match &event.kind {
        EventKind::Progress {
            status,
            progress,
            attempt,
            ..
        } => {
            let status = match status {
                StageStatus::Started => "started",
                StageStatus::Retrying => "retrying",
                StageStatus::Fallback => "fallback",
                StageStatus::Completed => "completed",
                StageStatus::Skipped => "skipped",
                StageStatus::Failed => "failed",
            };
            match attempt {
                Some(n) => format!("progress {status} attempt {n} at {progress}%"),
                None => format!("progress {status} at {progress}%"),
            }
        }
        EventKind::Error { error, .. } => format!("error {}", error.kind),
        other => other.type_name().to_owned(),
    }
}
