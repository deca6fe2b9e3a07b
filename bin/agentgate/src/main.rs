//! The `agentgate` command line: CLI parsing, tracing and signals. Everything else
//! lives in the crates (`agentgate_gateway::run`, `agentgate_mock_agent::serve`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use agentgate_gateway::demo::Demo;
use agentgate_gateway::Config;
use agentgate_mock_agent::MockAgentArgs;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;

/// jemalloc rather than glibc malloc: the gateway makes many small, short-lived
/// allocations per request and per WebSocket frame. In the WebSocket fan-out bench it
/// cut the gateway's CPU by a quarter and kept its peak RSS lowest of glibc, mimalloc and
/// jemalloc (docs/BENCHMARKS.md). Library users choose their own allocator.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A resilient, WebSocket-native gateway for HTTP agent services.
#[derive(Debug, Parser)]
#[command(name = "agentgate", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gateway with a config file.
    Run {
        /// The config file (or `AGENTGATE_CONFIG`).
        #[arg(long, env = "AGENTGATE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file: exit 0 with a one-line summary, or non-zero with
    /// `file:line:col: message`.
    Check {
        /// The config file (or `AGENTGATE_CONFIG`).
        #[arg(long, env = "AGENTGATE_CONFIG")]
        config: PathBuf,
    },
    /// Start the gateway on an embedded config with in-process mock agents.
    Demo {
        /// Public listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin listener (metrics, breaker admin API).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
    },
    /// Run one fault-injecting mock agent.
    // Boxed: its flags make it much the largest variant.
    MockAgent(Box<MockAgentArgs>),
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr; stdout carries what commands print (`check`'s summary, the demo's URLs).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("signal received");
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))
}

async fn serve(config: Config) -> Result<(), String> {
    let listener = bind(config.server.listen, "server.listen").await?;
    let admin = match config.server.admin_listen {
        Some(addr) => Some(bind(addr, "server.admin_listen").await?),
        None => None,
    };
    serve_on(config, listener, admin).await
}

async fn serve_on(
    config: Config,
    listener: TcpListener,
    admin: Option<TcpListener>,
) -> Result<(), String> {
    tracing::info!(
        listen = %listener.local_addr().map_err(|e| e.to_string())?,
        admin = ?admin.as_ref().and_then(|a| a.local_addr().ok()),
        "agentgate listening"
    );
    agentgate_gateway::run(listener, admin, config, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

async fn demo(listen: SocketAddr, admin_listen: SocketAddr) -> Result<(), String> {
    // Bind first, so `--listen 127.0.0.1:0` works and the printed URLs are the real ones.
    let listener = bind(listen, "--listen").await?;
    let admin = bind(admin_listen, "--admin-listen").await?;
    let listen = listener.local_addr().map_err(|e| e.to_string())?;
    let admin_listen = admin.local_addr().map_err(|e| e.to_string())?;
    let demo = Demo::start(listen, admin_listen).await?;
    print!("{}", demo.banner());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    serve_on(demo.config.clone(), listener, Some(admin)).await
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    if let Command::Check { config } = &cli.command {
        return match Config::load(config) {
            Ok(c) => {
                println!("{}", c.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => {
                serve(Config::load(&config).map_err(|e| e.to_string())?).await
            }
            Command::Demo {
                listen,
                admin_listen,
            } => demo(listen, admin_listen).await,
            Command::MockAgent(args) => {
                let args = *args;
                let tls = args.tls()?;
                let listener = bind(args.listen, "--listen").await?;
                agentgate_mock_agent::serve_tls(listener, args.behavior, tls, shutdown_signal())
                    .await
                    .map_err(|e| e.to_string())
            }
            Command::Check { .. } => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentgate: {e}");
            ExitCode::FAILURE
        }
    }
}
