use std::error::Error;
use std::fmt;

use crate::cause::next_cause;
use crate::BoxError;

/// The TLS handshake with the agent failed: its certificate did not verify, it refused
/// ours, or the two sides share no protocol. Classified as
/// [`crate::FailureClass::Connect`] (nothing reached the agent's application, so even a
/// non-idempotent request may be sent again) and reported with the kind `tls`.
///
/// A marker, like [`crate::BadResponse`]: the transport that speaks TLS (agentgate's
/// agent client, or a library user's own) wraps its TLS errors in it, so the layers
/// recognise them without depending on a TLS library. The wrapped error stays in the
/// `source()` chain.
#[derive(Debug)]
pub struct TlsFailure {
    source: BoxError,
}

// === impl TlsFailure ===

impl TlsFailure {
    /// Marks `source` as a TLS failure.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

impl fmt::Display for TlsFailure {
    /// `tls: ` and the innermost cause (what the TLS library said, e.g. `invalid peer
    /// certificate: UnknownIssuer`), not the wrappers' `client error (Connect)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut root: &(dyn Error + 'static) = &*self.source;
        while let Some(next) = next_cause(root) {
            root = next;
        }
        write!(f, "tls: {root}")
    }
}

impl Error for TlsFailure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}
