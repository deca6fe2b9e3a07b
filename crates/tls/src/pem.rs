//! Reading certificates and keys from PEM files, with errors that name the key.

use std::path::Path;

use agentgate_config::Invalid;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Every certificate in the PEM file at `path` (at least one), or the problem with the
/// config key `key` that names it.
pub(crate) fn certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Invalid> {
    let bad = |reason: String| Invalid::new(key, format!("{:?}", path.display()), reason);
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(reason(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(reason(&e)))?;
    if certs.is_empty() {
        return Err(bad(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

/// The private key in the PEM file at `path` (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn private_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, Invalid> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        // Never the file's content: only whether it could be read and parsed.
        Invalid::new(key, format!("{:?}", path.display()), reason(&e))
    })
}

fn reason(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(io) => format!("cannot be read ({io})"),
        Error::NoItemsFound => "holds no PEM private key (-----BEGIN PRIVATE KEY-----)".into(),
        _ => "is not a valid PEM file".into(),
    }
}
