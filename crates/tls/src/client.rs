//! `[agents.X.tls]`: how agentgate verifies an agent and proves who it is.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use agentgate_config::{Invalid, Validate};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use serde::Deserialize;

use crate::{pem, provider};

/// The `tls` table of an agent (SPEC §6). Every key is optional: an `https://` agent
/// with none is verified against the system's roots under the URL's host name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// Extra trust roots (PEM, one or more certificates) beside the system's: a private
    /// CA that signed the agent's certificate.
    pub ca_file: Option<PathBuf>,
    /// The certificate chain (PEM) agentgate presents when the agent asks for one
    /// (mTLS); needs `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// The private key (PEM) of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// The name sent as SNI and verified in the agent's certificate, when it differs
    /// from the URL's host (an agent reached by IP address, say).
    pub server_name: Option<String>,
}

// === impl ClientTlsConfig ===

impl ClientTlsConfig {
    /// The rustls client config: the system's roots plus `ca_file`, and the client
    /// certificate when one is configured. ALPN is left empty (the connector sets it
    /// from `http_version`).
    pub fn client_config(&self) -> Result<ClientConfig, Invalid> {
        let mut roots = system_roots().as_ref().clone();
        if let Some(path) = &self.ca_file {
            for cert in pem::certs("ca_file", path)? {
                roots.add(cert).map_err(|e| {
                    let reason = format!("holds a certificate rustls cannot use as a root ({e})");
                    Invalid::new("ca_file", format!("{:?}", path.display()), reason)
                })?;
            }
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Invalid::named("tls", format!("no usable TLS version ({e})")))?
            .with_root_certificates(roots);
        match (&self.client_cert_file, &self.client_key_file) {
            (None, None) => Ok(builder.with_no_client_auth()),
            (Some(cert), Some(key)) => {
                let chain = pem::certs("client_cert_file", cert)?;
                let key_der = pem::private_key("client_key_file", key)?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    let reason = format!("does not match client_cert_file ({e})");
                    Invalid::new("client_key_file", format!("{:?}", key.display()), reason)
                })
            }
            (Some(cert), None) => Err(Invalid::new(
                "client_cert_file",
                format!("{:?}", cert.display()),
                "needs client_key_file (the certificate's private key)",
            )),
            (None, Some(key)) => Err(Invalid::new(
                "client_key_file",
                format!("{:?}", key.display()),
                "needs client_cert_file (the certificate it belongs to)",
            )),
        }
    }

    /// `server_name` as rustls takes it (a DNS name or an IP address).
    pub fn server_name(&self) -> Result<Option<ServerName<'static>>, Invalid> {
        let Some(name) = &self.server_name else {
            return Ok(None);
        };
        ServerName::try_from(name.clone()).map(Some).map_err(|_| {
            Invalid::new(
                "server_name",
                format!("{name:?}"),
                "must be a DNS name or an IP address",
            )
        })
    }
}

impl Validate for ClientTlsConfig {
    /// Reads the files: a missing or unreadable one is a config error, told at its key.
    fn problems(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        out.extend(self.server_name().err());
        out.extend(self.client_config().err());
        out
    }
}

/// The system's trust roots, read once per process. A machine without any (a minimal
/// image without `ca-certificates`) still reaches agents whose CA is in `ca_file`.
fn system_roots() -> &'static Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "could not read some of the system's trust roots");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            tracing::warn!(
                ignored,
                "no system trust roots found: only agents whose CA is in tls.ca_file can be verified"
            );
        }
        Arc::new(roots)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TestPki;

    #[test]
    fn reads_the_keys_and_builds_with_a_client_certificate() {
        let pki = TestPki::new();
        let client = pki.client("gateway");
        let src = format!(
            "ca_file = {:?}\nclient_cert_file = {:?}\nclient_key_file = {:?}\nserver_name = \"agent.internal\"",
            pki.ca_file(),
            client.cert_file,
            client.key_file
        );
        let tls: ClientTlsConfig = toml::from_str(&src).unwrap();
        assert!(tls.problems().is_empty(), "{:?}", tls.problems());
        let config = tls.client_config().unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
        assert!(tls.server_name().unwrap().is_some());
        assert!(toml::from_str::<ClientTlsConfig>("ca = \"x\"").is_err());
    }

    #[test]
    fn bad_files_and_pairs_are_told_at_their_key() {
        let pki = TestPki::new();
        let client = pki.client("gateway");
        let problems = |tls: ClientTlsConfig| -> Vec<String> {
            tls.problems().iter().map(ToString::to_string).collect()
        };
        let missing = ClientTlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..ClientTlsConfig::default()
        };
        let got = problems(missing);
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with("ca_file = \"/nonexistent/ca.pem\": cannot be read ("),
            "{got:?}"
        );
        // A key file where a certificate belongs.
        let swapped = ClientTlsConfig {
            ca_file: Some(client.key_file.clone()),
            ..ClientTlsConfig::default()
        };
        assert!(problems(swapped)[0].contains("holds no PEM certificate"));
        let half = ClientTlsConfig {
            client_cert_file: Some(client.cert_file.clone()),
            ..ClientTlsConfig::default()
        };
        assert!(problems(half)[0].contains("needs client_key_file"));
        let other = pki.client("someone-else");
        let mismatched = ClientTlsConfig {
            client_cert_file: Some(client.cert_file.clone()),
            client_key_file: Some(other.key_file.clone()),
            ..ClientTlsConfig::default()
        };
        assert!(problems(mismatched)[0].starts_with("client_key_file = "));
        let bad_name = ClientTlsConfig {
            server_name: Some("not a name".into()),
            ..ClientTlsConfig::default()
        };
        assert_eq!(
            problems(bad_name),
            ["server_name = \"not a name\": must be a DNS name or an IP address"]
        );
    }
}
