//! A gateway that nobody scrapes does not hoard latency samples: the Prometheus
//! recorder keeps each histogram sample until it is drained, and the gateway drains
//! them every few seconds itself (issue 20: the chaos run's RSS grew for ten minutes).
//!
//! Allocation counting (a counting `#[global_allocator]`), not RSS: what is still
//! allocated after a million samples, with the clock moving as it would.

use std::alloc::System;
use std::time::Duration;

use agentgate_gateway::{build_state, serve, Config};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::net::TcpListener;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Kept, two million samples take 32 MB (16 bytes each, measured); drained, what
/// remains (about 1.7 MB, measured) does not grow with the number of samples.
const MAX_LIVE_BYTES: isize = 4_000_000;

#[tokio::test(start_paused = true)]
async fn histogram_samples_are_drained_without_a_scrape() {
    let config =
        Config::from_toml("[agents.a]\nurl = \"http://127.0.0.1:9\"\n", "upkeep.toml").unwrap();
    let state = build_state(config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(serve(state, listener, None, std::future::pending()));
    let latency = metrics::histogram!("agentgate_query_duration_seconds", "pipeline" => "upkeep");
    latency.record(0.01);
    tokio::time::sleep(Duration::from_secs(6)).await;

    let region = Region::new(GLOBAL);
    for _ in 0..20 {
        for _ in 0..100_000 {
            latency.record(0.01);
        }
        // What a steady stream of queries would see: time passes between the samples.
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    let change = region.change();
    let live = change.bytes_allocated as isize - change.bytes_deallocated as isize;
    assert!(
        live < MAX_LIVE_BYTES,
        "{live} bytes still allocated after 2,000,000 samples"
    );
}
