use std::error::Error;
use std::io;

use crate::cause::{cause_ref, is_caused_by, next_cause};
use crate::FailureClass;

/// Maps an error to its [`FailureClass`] by looking through its whole `source()` chain.
///
/// - [`crate::Rejected`] (a refusal by one of our own layers) → `rejected`;
/// - [`crate::RequestBodyError`] (the caller's own body failed) → `cancelled`;
/// - [`crate::TlsFailure`] (the TLS handshake failed) → `connect`;
/// - [`crate::BadResponse`] → `bad_response`;
/// - a hyper-util client error that says it happened while connecting → `connect`
///   (nothing was sent);
/// - tower's or tokio's `Elapsed` anywhere in the chain → `timeout`;
/// - hyper's timeout → `timeout`; an incomplete message or a cancelled request → `reset`;
/// - `std::io` errors by kind: refused/unreachable → `connect`, reset/aborted/broken
///   pipe/unexpected EOF → `reset`, timed out → `timeout`;
/// - anything else → `reset`: the call failed in transit in a way we do not recognise,
///   which the breaker must count and which is as safe to retry as a reset.
pub fn classify_error(err: &(dyn Error + 'static)) -> FailureClass {
    if is_caused_by::<crate::Rejected>(err) {
        return FailureClass::Rejected;
    }
    if is_caused_by::<crate::RequestBodyError>(err) {
        return FailureClass::Cancelled;
    }
    if is_caused_by::<crate::TlsFailure>(err) {
        return FailureClass::Connect;
    }
    if let Some(e) = cause_ref::<hyper_util::client::legacy::Error>(err) {
        if e.is_connect() {
            return FailureClass::Connect;
        }
    }
    if is_caused_by::<crate::BadResponse>(err) {
        return FailureClass::BadResponse;
    }
    if is_caused_by::<tower::timeout::error::Elapsed>(err)
        || is_caused_by::<tokio::time::error::Elapsed>(err)
    {
        return FailureClass::Timeout;
    }
    let mut cur: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return FailureClass::Timeout;
            }
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(class) = classify_io_kind(io.kind()) {
                return class;
            }
        }
        cur = next_cause(e);
    }
    FailureClass::Reset
}

fn classify_io_kind(kind: io::ErrorKind) -> Option<FailureClass> {
    use io::ErrorKind::*;
    match kind {
        ConnectionRefused | AddrNotAvailable | HostUnreachable | NetworkUnreachable
        | NetworkDown => Some(FailureClass::Connect),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected => {
            Some(FailureClass::Reset)
        }
        TimedOut => Some(FailureClass::Timeout),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxError;

    fn io(kind: io::ErrorKind) -> BoxError {
        Box::new(io::Error::new(kind, "x"))
    }

    #[test]
    fn io_kinds() {
        assert_eq!(
            classify_error(&*io(io::ErrorKind::ConnectionRefused)),
            FailureClass::Connect
        );
        assert_eq!(
            classify_error(&*io(io::ErrorKind::ConnectionReset)),
            FailureClass::Reset
        );
        assert_eq!(
            classify_error(&*io(io::ErrorKind::BrokenPipe)),
            FailureClass::Reset
        );
        assert_eq!(
            classify_error(&*io(io::ErrorKind::TimedOut)),
            FailureClass::Timeout
        );
        assert_eq!(
            classify_error(&*io(io::ErrorKind::Other)),
            FailureClass::Reset
        );
    }

    #[test]
    fn bad_response() {
        let err: BoxError = Box::new(crate::BadResponse::new("not JSON"));
        assert_eq!(classify_error(&*err), FailureClass::BadResponse);
        assert_eq!(err.to_string(), "bad response: not JSON");
    }

    #[test]
    fn our_refusals_and_the_callers_body_are_not_the_agents_failures() {
        let open: BoxError = Box::new(io::Error::other(crate::Rejected::new(
            crate::Rejection::CircuitOpen,
            None,
        )));
        assert_eq!(classify_error(&*open), FailureClass::Rejected);
        let body: BoxError = Box::new(crate::RequestBodyError::new(io::Error::from(
            io::ErrorKind::ConnectionReset,
        )));
        // A reset of the caller's upload is not the agent's reset.
        assert_eq!(classify_error(&*body), FailureClass::Cancelled);
    }

    #[test]
    fn tls_failures_are_connect_at_any_depth() {
        // As a connector reports a refused certificate: wrapped, inside an io error.
        let handshake = io::Error::new(io::ErrorKind::InvalidData, "invalid peer certificate");
        let err: BoxError = Box::new(io::Error::other(crate::TlsFailure::new(handshake)));
        assert_eq!(classify_error(&*err), FailureClass::Connect);
        assert!(err.to_string().contains("tls: invalid peer certificate"));
        // Unmarked, the same io error is only a reset.
        let plain: BoxError = Box::new(io::Error::new(io::ErrorKind::InvalidData, "x"));
        assert_eq!(classify_error(&*plain), FailureClass::Reset);
    }

    #[test]
    fn elapsed_is_timeout_at_any_depth() {
        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(classify_error(&*elapsed), FailureClass::Timeout);
        let wrapped: BoxError = Box::new(io::Error::other(elapsed));
        assert_eq!(classify_error(&*wrapped), FailureClass::Timeout);
    }

    #[tokio::test]
    async fn real_refused_connection_is_connect() {
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;
        // Bind then drop a listener so the port is (almost certainly) closed.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client: Client<_, http_body_util::Empty<bytes::Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let err = client
            .get(format!("http://{addr}/").parse().unwrap())
            .await
            .expect_err("nothing listens");
        assert_eq!(classify_error(&err), FailureClass::Connect);
    }
}
