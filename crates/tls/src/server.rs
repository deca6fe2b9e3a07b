//! `[server.tls]`: the certificate a TLS listener presents.

use std::path::PathBuf;
use std::sync::Arc;

use agentgate_config::{Invalid, Validate};
use rustls::ServerConfig;
use serde::Deserialize;

use crate::{pem, provider};

/// A TLS listener's certificate (SPEC §6 `[server.tls]`): both keys are required.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// The certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
}

// === impl ServerTlsConfig ===

impl ServerTlsConfig {
    /// The rustls server config, offering `alpn` (e.g. `h2`, `http/1.1`) in that order
    /// of preference. Asks clients for no certificate.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, Invalid> {
        let chain = pem::certs("cert_file", &self.cert_file)?;
        let key = pem::private_key("key_file", &self.key_file)?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Invalid::named("tls", format!("no usable TLS version ({e})")))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                let reason = format!("does not match cert_file ({e})");
                Invalid::new("key_file", format!("{:?}", self.key_file.display()), reason)
            })?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl Validate for ServerTlsConfig {
    /// Reads the files: a missing or mismatched one is a config error at its key.
    fn problems(&self) -> Vec<Invalid> {
        Vec::from_iter(self.server_config(&[]).err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TestPki;

    #[test]
    fn builds_from_a_chain_and_its_key_and_tells_a_mismatch() {
        let pki = TestPki::new();
        let server = pki.server(&["localhost"]);
        let tls = ServerTlsConfig {
            cert_file: server.cert_file.clone(),
            key_file: server.key_file.clone(),
        };
        assert!(tls.problems().is_empty(), "{:?}", tls.problems());
        let config = tls.server_config(&[b"h2", b"http/1.1"]).unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );

        let other = pki.server(&["localhost"]);
        let mismatched = ServerTlsConfig {
            key_file: other.key_file.clone(),
            ..tls.clone()
        };
        let problems = mismatched.problems();
        assert_eq!(problems[0].key, "key_file", "{problems:?}");
        let missing = ServerTlsConfig {
            cert_file: "/nonexistent.pem".into(),
            ..tls
        };
        assert_eq!(missing.problems()[0].key, "cert_file");
        let err = toml::from_str::<ServerTlsConfig>("cert_file = \"a\"").unwrap_err();
        assert_eq!(err.message(), "missing field `key_file`");
    }
}
