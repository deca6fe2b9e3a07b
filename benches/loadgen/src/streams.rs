//! `loadgen streams`: many concurrent streamed stages watched over WebSocket, against
//! reading the same streaming agent directly (`benches/streams.sh`).
//!
//! The agent is `agentgate mock-agent --stream sse`: every chunk carries `ts_us`, the
//! wall-clock time (µs since the Unix epoch) the agent wrote it. Two phases, the same
//! number of concurrent streams in each, started over `--ramp`:
//!
//! - **direct**: each stream is one HTTP/1.1 connection to the agent, its SSE body read
//!   frame by frame; a chunk's latency is the client's clock when it has parsed the
//!   chunk minus `ts_us`. This is the floor: the agent, the kernel, this client.
//! - **gateway**: each stream is one WebSocket client that sends a `query` frame for a
//!   one-stage pipeline on that agent and follows the query's events; a chunk's latency
//!   is taken the same way from its `output` event (`chunk.ts_us`).
//!
//! The gateway adds the difference of the two distributions. Every stream must deliver
//! every chunk once, in order (`index` 0, 1, 2, … and `chunk.index` the same), and the
//! query's `seq` without gaps; anything else is counted as lost or out of order. With
//! `--gateway-pid` the gateway's RSS is sampled every 250 ms (peak reported, and
//! `VmHWM`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Args as ClapArgs;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::procfs::{self, mb};
use crate::stats::{ms, summarise, Summary};
use crate::BoxError;

/// Flags of `loadgen streams`.
#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    /// The streaming agent's URL, read directly (POST), e.g. http://127.0.0.1:7001/v1/chat.
    #[arg(long)]
    agent: String,
    /// The gateway's WebSocket URL, e.g. ws://127.0.0.1:8080/ws.
    #[arg(long)]
    ws: String,
    /// The pipeline whose one stage streams from the agent.
    #[arg(long, default_value = "default")]
    pipeline: String,
    /// Concurrent streams in each phase.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Chunks the agent sends per stream (its `--stream-chunks`).
    #[arg(long, default_value_t = 200)]
    chunks: u64,
    /// The streams of a phase start evenly over this long.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    ramp: Duration,
    /// The gateway's PID: sample its RSS from /proc.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Target: the gateway's chunk latency p99 at most this much above the direct p99.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    target_p99_over: Duration,
    /// Target: gateway peak RSS at most this many MB (10^6 bytes).
    #[arg(long, default_value_t = 150.0)]
    target_rss_mb: f64,
}

/// What one stream saw.
#[derive(Debug, Default)]
struct Seen {
    latencies: Vec<Duration>,
    chunks: u64,
    out_of_order: u64,
    errors: Vec<String>,
}

// === impl Seen ===

impl Seen {
    /// Takes chunk `index` (and, through the gateway, its event's `index`) written at
    /// `ts_us`.
    fn chunk(&mut self, index: Option<u64>, event_index: Option<u64>, ts_us: Option<u64>) {
        let expected = self.chunks;
        if index != Some(expected) || event_index.is_some_and(|i| i != expected) {
            self.out_of_order += 1;
        }
        self.chunks += 1;
        if let Some(ts) = ts_us {
            self.latencies
                .push(Duration::from_micros(now_us().saturating_sub(ts)));
        }
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Runs both phases and prints the figures; fails when a target is missed.
pub(crate) async fn run(args: Args) -> Result<(), BoxError> {
    let agent: Uri = args.agent.parse()?;
    println!(
        "{} concurrent streams of {} chunks, started over {:?}",
        args.streams, args.chunks, args.ramp
    );
    let direct = phase(&args, |i| direct(agent.clone(), i)).await;
    let direct = report("direct (agent → client)", &args, direct);

    let samples: Arc<Mutex<Vec<u64>>> = Arc::default();
    let sampler = tokio::spawn(sample_rss(args.gateway_pid, samples.clone()));
    let before = args.gateway_pid.and_then(procfs::memory_kib).map(|m| m.0);
    let url: Arc<str> = args.ws.as_str().into();
    let pipeline: Arc<str> = args.pipeline.as_str().into();
    let gateway = phase(&args, |_| via_gateway(url.clone(), pipeline.clone())).await;
    sampler.abort();
    let gateway = report(
        "gateway (agent → gateway → WebSocket client)",
        &args,
        gateway,
    );

    let over = gateway.summary.p99.saturating_sub(direct.summary.p99);
    let peak = samples
        .lock()
        .map(|s| s.iter().copied().max())
        .ok()
        .flatten();
    let hwm = args.gateway_pid.and_then(procfs::memory_kib).map(|m| m.1);
    println!();
    println!(
        "chunk latency p99: gateway {:.2} ms, direct {:.2} ms: +{:.2} ms (target ≤ +{:.2} ms)",
        ms(gateway.summary.p99),
        ms(direct.summary.p99),
        ms(over),
        ms(args.target_p99_over)
    );
    if let (Some(before), Some(peak)) = (before, peak) {
        println!(
            "gateway RSS: {:.1} MB before, {:.1} MB peak while streaming (VmHWM {:.1} MB; target ≤ {:.0} MB)",
            mb(before),
            mb(peak),
            mb(hwm.unwrap_or(peak)),
            args.target_rss_mb
        );
    }
    let mut missed = Vec::new();
    if over > args.target_p99_over {
        missed.push(format!("p99 +{:.2} ms", ms(over)));
    }
    if peak.is_some_and(|p| mb(p) > args.target_rss_mb) {
        missed.push("RSS".to_owned());
    }
    if !direct.clean || !gateway.clean {
        missed.push("chunks lost, out of order or failed streams".to_owned());
    }
    if missed.is_empty() {
        println!("targets: met");
        Ok(())
    } else {
        Err(format!("targets missed: {}", missed.join(", ")).into())
    }
}

/// One phase's figures.
struct Phase {
    summary: Summary,
    /// Every chunk of every stream, once, in order; no failed stream.
    clean: bool,
}

/// Starts `--streams` streams with `start`, evenly over `--ramp`, and waits for all.
async fn phase<F, Fut>(args: &Args, start: F) -> Vec<Seen>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Seen> + Send + 'static,
{
    let step = args.ramp.div_f64(args.streams.max(1) as f64);
    let began = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(args.streams);
    for i in 0..args.streams {
        tokio::time::sleep_until(began + step * i as u32).await;
        tasks.push(tokio::spawn(start(i)));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.unwrap_or_else(|e| Seen {
            errors: vec![format!("task: {e}")],
            ..Seen::default()
        }));
    }
    out
}

fn report(name: &str, args: &Args, streams: Vec<Seen>) -> Phase {
    let expected = args.chunks * streams.len() as u64;
    let got: u64 = streams.iter().map(|s| s.chunks).sum();
    let out_of_order: u64 = streams.iter().map(|s| s.out_of_order).sum();
    let errors: Vec<String> = streams.iter().flat_map(|s| s.errors.clone()).collect();
    let latencies: Vec<Duration> = streams.into_iter().flat_map(|s| s.latencies).collect();
    let summary = summarise(latencies);
    println!();
    println!("### {name}");
    println!(
        "chunks: {got} of {expected} ({} lost), {out_of_order} out of order; {} failed streams",
        expected.saturating_sub(got),
        errors.len()
    );
    for e in errors.iter().take(5) {
        println!("  error: {e}");
    }
    println!(
        "chunk latency (written by the agent → parsed by the client): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms (n = {})",
        ms(summary.p50),
        ms(summary.p90),
        ms(summary.p99),
        ms(summary.p999),
        ms(summary.max),
        summary.n
    );
    Phase {
        summary,
        clean: got == expected && out_of_order == 0 && errors.is_empty(),
    }
}

/// One stream read straight from the agent.
async fn direct(agent: Uri, _i: usize) -> Seen {
    let mut seen = Seen::default();
    if let Err(e) = read_direct(&agent, &mut seen).await {
        seen.errors.push(format!("direct: {e}"));
    }
    seen
}

async fn read_direct(agent: &Uri, seen: &mut Seen) -> Result<(), BoxError> {
    let authority = agent
        .authority()
        .ok_or("URL without host:port")?
        .to_string();
    let tcp = TcpStream::connect(&authority).await?;
    tcp.set_nodelay(true)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let path = agent.path_and_query().map_or("/", |p| p.as_str());
    let req = Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(br#"{"query":"bench"}"#)))?;
    let mut body = send.send_request(req).await?.into_body();
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let text = std::str::from_utf8(&event)?.trim_end();
            let Some(data) = text.strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                return Ok(());
            }
            let chunk: Value = serde_json::from_str(data)?;
            seen.chunk(chunk["index"].as_u64(), None, chunk["ts_us"].as_u64());
        }
    }
    Err("the stream ended without [DONE]".into())
}

/// One streamed stage run through the gateway and watched on its own WebSocket.
async fn via_gateway(url: Arc<str>, pipeline: Arc<str>) -> Seen {
    let mut seen = Seen::default();
    if let Err(e) = follow_query(&url, &pipeline, &mut seen).await {
        seen.errors.push(format!("gateway: {e}"));
    }
    seen
}

async fn follow_query(url: &str, pipeline: &str, seen: &mut Seen) -> Result<(), BoxError> {
    let uri: Uri = url.parse()?;
    let authority = uri.authority().ok_or("URL without host:port")?.to_string();
    let tcp = TcpStream::connect(authority).await?;
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await?;
    let query = serde_json::json!({"type": "query", "query": "bench", "pipeline": pipeline});
    ws.send(Message::text(query.to_string())).await?;
    let mut next_seq = 1;
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else {
            continue;
        };
        let v: Value = serde_json::from_str(&text)?;
        if let Some(seq) = v["seq"].as_u64() {
            if seq != next_seq {
                return Err(format!("seq {seq} after {}", next_seq - 1).into());
            }
            next_seq += 1;
        }
        match v["type"].as_str() {
            Some("output") => {
                let chunk = &v["chunk"];
                seen.chunk(
                    chunk["index"].as_u64(),
                    v["index"].as_u64(),
                    chunk["ts_us"].as_u64(),
                );
            }
            Some("completed") => return Ok(()),
            Some("failed" | "cancelled" | "lagged") => return Err(text.as_str().into()),
            Some("error") if v.get("code").is_some() => return Err(text.as_str().into()),
            _ => {}
        }
    }
    Err("the connection closed before the query ended".into())
}

async fn sample_rss(pid: Option<u32>, into: Arc<Mutex<Vec<u64>>>) {
    let Some(pid) = pid else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        if let Some((rss, _)) = procfs::memory_kib(pid) {
            into.lock().unwrap_or_else(|e| e.into_inner()).push(rss);
        }
    }
}
