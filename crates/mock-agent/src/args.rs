//! Command-line arguments of `agentgate mock-agent`.

use std::net::SocketAddr;

use crate::Behavior;

/// Arguments of `agentgate mock-agent`: where to listen, and every [`Behavior`] field as a
/// flag (`--error-rate 0.3 --latency 20ms`).
#[derive(Clone, Debug, clap::Args)]
pub struct MockAgentArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub listen: SocketAddr,

    /// What the agent does with each request.
    #[command(flatten)]
    pub behavior: Behavior,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::Duration;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: MockAgentArgs,
    }

    #[test]
    fn parses_the_documented_flags() {
        let cli = Cli::try_parse_from([
            "mock-agent",
            "--error-rate",
            "0.3",
            "--latency",
            "20ms",
            "--outage-down",
            "5s",
            "--outage-every",
            "1m",
        ])
        .unwrap();
        assert_eq!(cli.args.listen, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(cli.args.behavior.error_rate, 0.3);
        assert_eq!(cli.args.behavior.latency, Duration::from_millis(20));
        assert_eq!(cli.args.behavior.outage_every, Duration::from_secs(60));
        cli.args.behavior.validate().unwrap();
    }

    #[test]
    fn parses_the_streaming_flags() {
        let cli = Cli::try_parse_from([
            "mock-agent",
            "--stream",
            "sse",
            "--stream-chunks",
            "40",
            "--stream-interval",
            "25ms",
            "--stream-break-after",
            "7",
        ])
        .unwrap();
        let b = &cli.args.behavior;
        assert_eq!(b.stream, crate::StreamMode::Sse);
        assert_eq!(
            (b.stream_chunks, b.stream_interval, b.stream_break_after),
            (40, Duration::from_millis(25), Some(7))
        );
        let plain = Cli::try_parse_from(["mock-agent"]).unwrap();
        assert_eq!(plain.args.behavior.stream, crate::StreamMode::None);
        assert!(Cli::try_parse_from(["mock-agent", "--stream", "grpc"]).is_err());
    }

    #[test]
    fn rejects_bad_flag_values() {
        assert!(Cli::try_parse_from(["mock-agent", "--latency", "soon"]).is_err());
        assert!(Cli::try_parse_from(["mock-agent", "--listen", "nowhere"]).is_err());
    }
}
