//! `loadgen`: the load clients of the whole-process benchmarks in `benches/`.
//!
//! - no subcommand (`loadgen --gateway … --stage …`): the sequential pipeline comparison
//!   of `benches/pipeline.sh` ([`pipeline`]);
//! - `loadgen ws-fanout`: thousands of WebSocket clients subscribed to a steady stream of
//!   queries, for `benches/ws_fanout.sh` ([`ws_fanout`]);
//! - `loadgen open-loop`: GET requests at a fixed offered rate, latency measured from
//!   when each request was due, for `benches/failfast.sh` ([`open_loop`]);
//! - `loadgen streams`: concurrent streamed stages watched over WebSocket against reading
//!   the streaming agent directly, for `benches/streams.sh` ([`streams`]).
//!
//! Every mode runs on one current-thread tokio runtime (one OS thread does the work), so
//! the scripts can pin the client to one CPU and leave the other to the servers.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod http;
mod open_loop;
mod pipeline;
mod procfs;
mod stats;
mod streams;
mod ws_fanout;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Load clients for benches/: pipeline latency (default), WebSocket fan-out, open-loop HTTP, streams",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    pipeline: pipeline::Args,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Many WebSocket clients subscribed to a steady stream of queries: delivery latency,
    /// seq gaps, lagged notices, the gateway's memory and CPU.
    WsFanout(ws_fanout::Args),
    /// GET one URL at a fixed offered rate over a few keep-alive connections: latency
    /// from when each request was due (no coordinated omission) and from when it was sent.
    OpenLoop(open_loop::Args),
    /// Concurrent streamed stages watched over WebSocket, against reading the streaming
    /// agent directly: chunk latency, lost or reordered chunks, the gateway's memory.
    Streams(streams::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.mode {
            None => pipeline::run(cli.pipeline).await,
            Some(Mode::WsFanout(args)) => ws_fanout::run(args).await,
            Some(Mode::OpenLoop(args)) => open_loop::run(args).await,
            Some(Mode::Streams(args)) => streams::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
