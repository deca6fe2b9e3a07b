//! A private CA and certificates made at test time (feature `test-util`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::{pem, provider, ServerTlsConfig};

/// A private CA whose certificates are written, as PEM, to a directory that lives as
/// long as the `TestPki`.
pub struct TestPki {
    dir: tempfile::TempDir,
    ca: Certificate,
    ca_key: KeyPair,
    ca_file: PathBuf,
    next: AtomicUsize,
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
}

// === impl TestPki ===

impl TestPki {
    /// A new CA (`ca.pem` in a fresh temporary directory).
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "agentgate test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&ca_key).expect("self-signed CA");
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write ca.pem");
        Self {
            dir,
            ca,
            ca_key,
            ca_file,
            next: AtomicUsize::new(0),
        }
    }

    /// The CA certificate (PEM file): what `tls.ca_file` names to trust this PKI.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A server certificate for these names (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> CertFiles {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate (for mTLS) with common name `name`.
    pub fn client(&self, name: &str) -> CertFiles {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A server config presenting `cert` (e.g. from [`TestPki::server`]), offering
    /// `alpn`.
    pub fn server_config(&self, cert: &CertFiles, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let tls = ServerTlsConfig {
            cert_file: cert.cert_file.clone(),
            key_file: cert.key_file.clone(),
        };
        tls.server_config(alpn).expect("server config")
    }

    /// A server config presenting `cert` that refuses clients without a certificate
    /// issued by this CA (an agent that requires mTLS).
    pub fn server_config_requiring_client_cert(
        &self,
        cert: &CertFiles,
        alpn: &[&[u8]],
    ) -> Arc<ServerConfig> {
        let mut roots = RootCertStore::empty();
        for ca in pem::certs("ca_file", &self.ca_file).expect("CA") {
            roots.add(ca).expect("CA root");
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .expect("client verifier");
        let chain = pem::certs("cert_file", &cert.cert_file).expect("cert");
        let key = pem::private_key("key_file", &cert.key_file).expect("key");
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server config");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> CertFiles {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("names");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![usage];
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("signed certificate");
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let cert_file = self.dir.path().join(format!("cert-{n}.pem"));
        let key_file = self.dir.path().join(format!("key-{n}.pem"));
        std::fs::write(&cert_file, cert.pem()).expect("write certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        CertFiles {
            cert_file,
            key_file,
        }
    }
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
