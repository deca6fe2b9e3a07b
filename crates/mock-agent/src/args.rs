//! Command-line arguments of `agentgate mock-agent`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use agentgate_tls::rustls::ServerConfig;
use agentgate_tls::ServerTlsConfig;

use crate::Behavior;

/// Arguments of `agentgate mock-agent`: where to listen, and every [`Behavior`] field as a
/// flag (`--error-rate 0.3 --latency 20ms`).
#[derive(Clone, Debug, clap::Args)]
pub struct MockAgentArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub listen: SocketAddr,

    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// What the agent does with each request.
    #[command(flatten)]
    pub behavior: Behavior,
}

// === impl MockAgentArgs ===

impl MockAgentArgs {
    /// The TLS config of `--tls-cert/--tls-key` (ALPN h2 and http/1.1), if given; an
    /// unreadable or mismatched file is an error naming the flag.
    pub fn tls(&self) -> Result<Option<Arc<ServerConfig>>, String> {
        let (Some(cert_file), Some(key_file)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let tls = ServerTlsConfig {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        };
        tls.server_config(&[b"h2", b"http/1.1"])
            .map(Some)
            .map_err(|e| format!("--tls-{}", e.to_string().replace("_file", "")))
    }
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
    fn tls_flags_come_in_pairs_and_read_their_files() {
        let pki = agentgate_tls::test_util::TestPki::new();
        let cert = pki.server(&["localhost"]);
        let (c, k) = (
            cert.cert_file.to_str().unwrap(),
            cert.key_file.to_str().unwrap(),
        );
        let cli = Cli::try_parse_from(["mock-agent", "--tls-cert", c, "--tls-key", k]).unwrap();
        let tls = cli.args.tls().unwrap().expect("TLS configured");
        assert_eq!(tls.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(Cli::try_parse_from(["mock-agent", "--tls-cert", c]).is_err());
        let cli = Cli::try_parse_from([
            "mock-agent",
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            k,
        ])
        .unwrap();
        let err = cli.args.tls().unwrap_err();
        assert!(
            err.starts_with("--tls-cert = \"/nonexistent.pem\": cannot be read"),
            "{err}"
        );
        let plain = Cli::try_parse_from(["mock-agent"]).unwrap();
        assert!(plain.args.tls().unwrap().is_none());
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
