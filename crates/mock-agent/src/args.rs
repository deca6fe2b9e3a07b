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
    fn rejects_bad_flag_values() {
        assert!(Cli::try_parse_from(["mock-agent", "--latency", "soon"]).is_err());
        assert!(Cli::try_parse_from(["mock-agent", "--listen", "nowhere"]).is_err());
    }
}
