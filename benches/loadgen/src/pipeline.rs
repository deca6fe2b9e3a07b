//! The sequential pipeline comparison of `benches/pipeline.sh` (the default mode).
//!
//! Measures, one request at a time (concurrency 1), the latency of
//!
//! - **gateway**: `POST /api/query` (synchronous) to a running agentgate whose default
//!   pipeline has N stages, and
//! - **direct**: the same N agent calls made by this client in sequence, with the bodies
//!   and headers the gateway sends (SPEC §3: stage *k* gets the answers of the earlier
//!   stages under `results`), each on its own keep-alive connection.
//!
//! The two are interleaved in blocks so that drift (frequency, noisy neighbours) hits
//! both alike. Prints a Markdown table and the p50 the gateway adds.

use bytes::Bytes;
use clap::Args as ClapArgs;
use http::{StatusCode, Uri};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::http::Conn;
use crate::stats::{summarise, us};
use crate::BoxError;

/// Flags of the pipeline comparison (given without a subcommand).
#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    /// The gateway's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, required = true)]
    gateway: Option<String>,
    /// The stages in pipeline order, as NAME=URL (the agent URL with the stage path),
    /// e.g. nlp=http://127.0.0.1:7001/process. Repeat once per stage.
    #[arg(long = "stage", required = true)]
    stages: Vec<String>,
    /// Queries (and direct sequences) sent before measuring, per mode.
    #[arg(long, default_value_t = 1000)]
    warmup: usize,
    /// Measured queries (and direct sequences) per mode.
    #[arg(long, default_value_t = 10_000)]
    iterations: usize,
    /// How many alternating blocks the measured iterations are split into.
    #[arg(long, default_value_t = 10)]
    blocks: usize,
}

struct Stage {
    name: String,
    path: String,
    conn: Conn,
}

const QUERY: &str = "benchmark query: summarise the latest figures";

/// One `POST /api/query`; checks the query completed.
async fn via_gateway(gw: &mut Conn, body: &Bytes) -> Result<(), BoxError> {
    let (status, answer) = gw.post("/api/query", &[], body.clone()).await?;
    if status != StatusCode::OK {
        return Err(format!(
            "gateway answered {status}: {}",
            String::from_utf8_lossy(&answer)
        )
        .into());
    }
    Ok(())
}

/// The stages' calls in sequence, as the gateway makes them.
async fn direct(stages: &mut [Stage], n: usize) -> Result<(), BoxError> {
    let query_id = format!("bench-{n}");
    let mut results = Map::new();
    for stage in stages.iter_mut() {
        let body = json!({
            "query_id": query_id,
            "query": QUERY,
            "context": {},
            "results": results,
        });
        let body = Bytes::from(serde_json::to_vec(&body)?);
        let idem = format!("{query_id}:{}", stage.name);
        let headers = [
            ("x-query-id", query_id.as_str()),
            ("x-agentgate-stage", stage.name.as_str()),
            ("x-agentgate-attempt", "1"),
            ("x-agentgate-deadline-ms", "60000"),
            ("idempotency-key", idem.as_str()),
        ];
        let (status, answer) = stage.conn.post(&stage.path, &headers, body).await?;
        if !status.is_success() {
            return Err(format!("stage {} answered {status}", stage.name).into());
        }
        let output: Value = serde_json::from_slice(&answer)?;
        results.insert(stage.name.clone(), output);
    }
    Ok(())
}

pub(crate) async fn run(args: Args) -> Result<(), BoxError> {
    let gateway = args.gateway.as_deref().ok_or("--gateway is required")?;
    let gw_uri: Uri = gateway.parse()?;
    let mut gw = Conn::open(&gw_uri).await?;
    let mut stages = Vec::new();
    for spec in &args.stages {
        let (name, url) = spec
            .split_once('=')
            .ok_or_else(|| format!("--stage {spec}: expected NAME=URL"))?;
        let uri: Uri = url.parse()?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        stages.push(Stage {
            name: name.to_owned(),
            path,
            conn: Conn::open(&uri).await?,
        });
    }
    let gw_body = Bytes::from(serde_json::to_vec(&json!({"query": QUERY, "context": {}}))?);

    // Check the gateway runs exactly these stages.
    let (status, answer) = gw.post("/api/query", &[], gw_body.clone()).await?;
    let answer: Value = serde_json::from_slice(&answer)?;
    let ran: Vec<&str> = answer["stages"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    let expected: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    if status != StatusCode::OK || answer["status"] != "completed" || ran != expected {
        return Err(format!(
            "the gateway's default pipeline does not complete the stages {expected:?}: {status} {answer}"
        )
        .into());
    }

    for i in 0..args.warmup {
        via_gateway(&mut gw, &gw_body).await?;
        direct(&mut stages, i).await?;
    }

    let blocks = args.blocks.max(1);
    let per_block = args.iterations.div_ceil(blocks);
    let mut gw_samples = Vec::with_capacity(per_block * blocks);
    let mut direct_samples = Vec::with_capacity(per_block * blocks);
    for b in 0..blocks {
        for _ in 0..per_block {
            let t = Instant::now();
            via_gateway(&mut gw, &gw_body).await?;
            gw_samples.push(t.elapsed());
        }
        for i in 0..per_block {
            let t = Instant::now();
            direct(&mut stages, b * per_block + i).await?;
            direct_samples.push(t.elapsed());
        }
    }

    let g = summarise(gw_samples);
    let d = summarise(direct_samples);
    println!(
        "| path | n | p50 (us) | p90 (us) | p99 (us) | mean (us) | max (us) |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for (name, s) in [
        (format!("direct ({} calls in sequence)", stages.len()), &d),
        ("gateway (POST /api/query)".to_owned(), &g),
    ] {
        println!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            s.n,
            us(s.p50),
            us(s.p90),
            us(s.p99),
            us(s.mean),
            us(s.max)
        );
    }
    let added = us(g.p50) - us(d.p50);
    println!();
    println!(
        "added by the gateway: p50 {added:+.1} us, p99 {:+.1} us, mean {:+.1} us",
        us(g.p99) - us(d.p99),
        us(g.mean) - us(d.mean)
    );
    println!(
        "target p50 added <= 300 us: {}",
        if added <= 300.0 { "met" } else { "MISSED" }
    );
    Ok(())
}
