//! TLS for agentgate (SPEC §6): the rustls configs of the agent clients (trust roots,
//! client certificates for mTLS, the name to verify) and of TLS listeners, read from PEM
//! files named in the config.
//!
//! Both halves are config structs like every other section: serde says their keys,
//! [`Validate`](agentgate_config::Validate) reads the files, so `agentgate check`
//! reports a missing or unreadable certificate at its key's `file:line:col` instead of
//! the gateway failing later. [`ClientTlsConfig::client_config`] and
//! [`ServerTlsConfig::server_config`] build the rustls configs.
//!
//! One crypto provider for the whole program, [`provider`] (rustls' `ring`): chosen
//! explicitly for every config, so nothing depends on a process-wide default being
//! installed, and it builds with a C compiler alone.
//!
//! Trust for agents is the system's store (`rustls-native-certs`: what `ca-certificates`
//! manages, the roots curl uses) plus `ca_file`; a certificate that does not chain to
//! them fails the handshake. Nothing here ever falls back to plain TCP.
//!
//! # Example
//!
//! ```
//! use agentgate_tls::ClientTlsConfig;
//!
//! // No extra roots, no client certificate: the system's roots, names from the URL.
//! let config = ClientTlsConfig::default().client_config().unwrap();
//! assert!(config.alpn_protocols.is_empty()); // set by the connector (h2, http/1.1)
//! ```

mod client;
mod pem;
mod server;
#[cfg(feature = "test-util")]
pub mod test_util;

use std::sync::Arc;

pub use client::ClientTlsConfig;
pub use server::ServerTlsConfig;

pub use rustls;

/// The crypto provider of every TLS config agentgate builds: rustls' `ring`.
///
/// rustls 0.23.48 deprecates it because ring has no post-quantum key exchange
/// (X25519MLKEM768); its classic suites (X25519, ECDHE, AES-GCM, ChaCha20) are what
/// agents negotiate today. `aws-lc-rs` has it but needs a heavier C build; moving is
/// this function and the `ring` features in the workspace's `Cargo.toml`.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
