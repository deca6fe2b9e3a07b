//! What a finished query costs while it is retained (`query_retention`, at most
//! `max_records` / `max_finished` of them): heap bytes still live after N queries ran
//! through a real [`Engine`] against real hyper agents on loopback, minus before, over N.
//!
//! Allocation counting (a counting `#[global_allocator]`) rather than RSS: it is
//! deterministic and does not depend on the machine, the allocator's caching or what
//! else runs. It counts requested bytes; the allocator adds its own overhead per block
//! (8–16 bytes with glibc), hence the block count is printed too.
//!
//! Its own test binary, with one test: the counter is process-wide.
//!
//! ```sh
//! cargo test -p agentgate-pipeline --test memory -- --nocapture
//! ```

mod support;

use std::alloc::System;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agentgate_agent_client::AgentClient;
use agentgate_pipeline::{Engine, EngineSettings, PipelineConfig, QueryInput, QueryStatus};
use agentgate_progress::{HubConfig, MemoryHub, SubscriptionItem};
use bytes::Bytes;
use serde_json::{json, Value};
use stats_alloc::{Stats, StatsAlloc, INSTRUMENTED_SYSTEM};
use support::{agent_config, pipeline, quiet_agent};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Queries measured.
const N: usize = 2_000;
/// Queries run first, so that connection pools, lazily built state and the first
/// growth steps of the maps are not charged to the measured ones.
const WARMUP: usize = 200;

/// The bound on bytes per retained query. With 3 stages of ~1 KB each it measured
/// 39,613 bytes in 410 blocks when results were kept as parsed `serde_json::Value`s
/// (and the hub kept each stream's 64-slot replay buffer), and 6,036 bytes in 30 blocks
/// once results are JSON text shared with the terminal event: 4,477 bytes of that is the
/// JSON text the query holds (its record's 3,299 and its 7 events' 3,948, with the
/// 2,770-byte result counted once).
const MAX_BYTES_PER_QUERY: usize = 7_500;

const THREE_STAGES: &str = r#"
    deadline = "30s"
    [[stages]]
    name = "nlp_processing"
    agent = "nlp"
    path = "/process"
    [[stages]]
    name = "data_retrieval"
    agent = "data"
    path = "/query"
    [[stages]]
    name = "visualization"
    agent = "viz"
    path = "/render"
"#;

/// About 1 KB of JSON with the usual mix: strings, integers, floats, booleans, nesting.
fn stage_output(agent: &str) -> Bytes {
    let items: Vec<Value> = (0..12)
        .map(|i| {
            json!({
                "id": i,
                "label": format!("{agent} item {i}"),
                "score": 0.25 + f64::from(i) / 16.0,
                "tags": ["a", "bc"],
                "ok": i % 2 == 0,
            })
        })
        .collect();
    let body = serde_json::to_vec(&json!({"agent": agent, "items": items})).unwrap();
    assert!((900..1_300).contains(&body.len()), "{} bytes", body.len());
    Bytes::from(body)
}

fn live(s: &Stats) -> (isize, isize) {
    (
        s.bytes_allocated as isize - s.bytes_deallocated as isize,
        s.allocations as isize - s.deallocations as isize,
    )
}

async fn three_stage_engine(retention: Duration) -> (Engine, MemoryHub) {
    let mut agents = BTreeMap::new();
    for name in ["nlp", "data", "viz"] {
        let url = quiet_agent(stage_output(name)).await;
        agents.insert(
            name.to_owned(),
            AgentClient::new(name, agent_config(url)).unwrap(),
        );
    }
    let p: PipelineConfig = pipeline(THREE_STAGES);
    p.validate(|a| agents.contains_key(a)).unwrap();
    // The gateway's defaults: 10,000 records, 10,000 finished streams, 256 replay events.
    let hub = MemoryHub::new(HubConfig {
        retention,
        ..HubConfig::default()
    });
    let engine = Engine::new(
        BTreeMap::from([("default".to_owned(), p)]),
        agents,
        Arc::new(hub.clone()),
        EngineSettings {
            retention,
            ..EngineSettings::default()
        },
    );
    (engine, hub)
}

/// Runs `n` queries one after the other; returns the first one's id.
async fn run(engine: &Engine, n: usize) -> String {
    let mut first = None;
    for i in 0..n {
        let sub = engine
            .submit(QueryInput::new(format!("query {i}")))
            .unwrap();
        let record = sub.finished().await;
        assert_eq!(record.status, QueryStatus::Completed, "{record:?}");
        first.get_or_insert(record.query_id);
    }
    first.unwrap()
}

/// Live heap (bytes, blocks) per query over `n` queries.
async fn per_query(engine: &Engine, n: usize) -> (String, f64, f64) {
    let before = GLOBAL.stats();
    let first = run(engine, n).await;
    let after = GLOBAL.stats();
    let (b0, k0) = live(&before);
    let (b1, k1) = live(&after);
    let n = n as f64;
    (first, (b1 - b0) as f64 / n, (k1 - k0) as f64 / n)
}

#[test]
fn a_retained_finished_query_costs_little_more_than_its_json() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Retained: everything stays (N + WARMUP is well under the 10,000 caps).
        let (engine, hub) = three_stage_engine(Duration::from_secs(600)).await;
        run(&engine, WARMUP).await;
        let (first, bytes, blocks) = per_query(&engine, N).await;

        // Still retained, so the figure is what retention costs: the first measured
        // query's record and its full replay (terminal event included).
        let record = engine.get(&first).expect("retained record");
        let result = serde_json::to_value(&record).unwrap()["result"].clone();
        assert_eq!(result["visualization"]["agent"], "viz");
        let mut sub = hub.subscribe(&first, 0).unwrap();
        let mut events = Vec::new();
        while let Some(SubscriptionItem::Event(e)) = sub.recv().await {
            events.push(e);
        }
        let last = serde_json::from_str::<Value>(&events.last().unwrap().json).unwrap();
        assert_eq!(last["type"], "completed");
        assert_eq!(last["result"], result);
        let record_json = serde_json::to_string(&record).unwrap().len();
        let events_json: usize = events.iter().map(|e| e.json.len()).sum();
        let result_json = record.result.as_ref().unwrap().get().len();
        let event_count = events.len();
        drop((record, sub, events));

        // Nothing retained: what is left per query must be (almost) nothing.
        let (engine0, _hub0) = three_stage_engine(Duration::ZERO).await;
        run(&engine0, WARMUP).await;
        let (_, leaked, leaked_blocks) = per_query(&engine0, N).await;

        println!(
            "memory per retained finished query (3 stages of ~1 KB, N = {N}): {bytes:.0} \
             bytes in {blocks:.1} heap blocks; its JSON: record {record_json} bytes + \
             {event_count} events {events_json} bytes = {} bytes with the {result_json}-byte \
             result counted once; with nothing retained: {leaked:.0} bytes in \
             {leaked_blocks:.2} blocks",
            record_json + events_json - result_json,
        );
        assert!(
            bytes <= MAX_BYTES_PER_QUERY as f64,
            "a retained query costs {bytes:.0} bytes, over the bound of {MAX_BYTES_PER_QUERY}"
        );
        assert!(
            leaked.abs() < 64.0,
            "{leaked:.0} bytes per query stay live after the query is no longer retained"
        );
    });
}
