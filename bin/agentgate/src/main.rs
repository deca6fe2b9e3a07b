//! The `agentgate` command line. Only CLI parsing, tracing and signals live here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A resilient, WebSocket-native gateway for HTTP agent services.
#[derive(Debug, Parser)]
#[command(name = "agentgate", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gateway with a config file.
    Run,
    /// Validate a config file.
    Check,
    /// Start the gateway with in-process mock agents on an embedded config.
    Demo,
    /// Run one fault-injecting mock agent.
    MockAgent,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = match cli.command {
        Command::Run => "run",
        Command::Check => "check",
        Command::Demo => "demo",
        Command::MockAgent => "mock-agent",
    };
    eprintln!(
        "agentgate {name}: not built yet. This release ships the resilience layers \
         (crates/circuit-breaker, crates/classify); the gateway binary lands with the \
         gateway issue (#4)."
    );
    ExitCode::from(2)
}
