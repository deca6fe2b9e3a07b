use std::any::Any;
use std::error::Error;
use std::fmt;
use std::time::{Duration, SystemTime};

use http::{Response, StatusCode};
use tower_http::classify::{ClassifiedResponse, ClassifyResponse, NeverClassifyEos};

use crate::{
    classify_error, retry_after_from_headers, BoxError, Classified, Classify, FailureClass, Outcome,
};

/// Whether an agent answering `status` is failing (SPEC §5: 500, 502, 503, 504).
/// Other 4xx and 5xx statuses are answers from a healthy agent about a bad request.
pub fn is_failure_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// Classifies HTTP responses and transport errors of calls to agents.
///
/// A 500/502/503/504 is a [`FailureClass::Status`] failure; every other status is a
/// success for the breaker. A 429 or 503 carrying `Retry-After` reports the delay in
/// [`Classified::retry_after`].
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpClassifier {
    _priv: (),
}

/// The failure reported through tower-http's [`ClassifyResponse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpFailure {
    /// The failure class.
    pub class: FailureClass,
    /// The status when the agent answered.
    pub status: Option<StatusCode>,
}

// === impl HttpClassifier ===

impl HttpClassifier {
    /// A classifier with the SPEC's failure statuses.
    pub fn new() -> Self {
        Self::default()
    }

    /// Classifies a response's head.
    #[inline]
    pub fn classify_response_parts(
        &self,
        status: StatusCode,
        headers: &http::HeaderMap,
    ) -> Classified {
        // Most answers are below 429: successes without a `Retry-After` to look for.
        if status.as_u16() < 429 {
            return Classified::SUCCESS;
        }
        let outcome = if is_failure_status(status) {
            Outcome::Failure(FailureClass::Status)
        } else {
            Outcome::Success
        };
        let retry_after = if matches!(status.as_u16(), 429 | 503) {
            retry_after_from_headers(headers, SystemTime::now())
        } else {
            None
        };
        Classified {
            outcome,
            retry_after,
        }
    }
}

impl<B> Classify<Response<B>> for HttpClassifier {
    #[inline]
    fn classify(&self, result: &Result<Response<B>, BoxError>) -> Classified {
        match result {
            Ok(res) => self.classify_response_parts(res.status(), res.headers()),
            Err(err) => Classified {
                outcome: Outcome::Failure(classify_error(&**err)),
                retry_after: None,
            },
        }
    }
}

impl ClassifyResponse for HttpClassifier {
    type FailureClass = HttpFailure;
    type ClassifyEos = NeverClassifyEos<HttpFailure>;

    fn classify_response<B>(
        self,
        res: &Response<B>,
    ) -> ClassifiedResponse<Self::FailureClass, Self::ClassifyEos> {
        if is_failure_status(res.status()) {
            ClassifiedResponse::Ready(Err(HttpFailure {
                class: FailureClass::Status,
                status: Some(res.status()),
            }))
        } else {
            ClassifiedResponse::Ready(Ok(()))
        }
    }

    fn classify_error<E>(self, error: &E) -> Self::FailureClass
    where
        E: fmt::Display + 'static,
    {
        HttpFailure {
            class: classify_any_error(error),
            status: None,
        }
    }
}

/// tower-http hands us the error as `Display + 'static`; recover the error chain for the
/// types we know so the class is as precise as for our own layers.
fn classify_any_error<E: fmt::Display + 'static>(error: &E) -> FailureClass {
    let any = error as &dyn Any;
    let as_error: Option<&(dyn Error + 'static)> = if let Some(e) = any.downcast_ref::<BoxError>() {
        Some(&**e)
    } else if let Some(e) = any.downcast_ref::<hyper_util::client::legacy::Error>() {
        Some(e)
    } else if let Some(e) = any.downcast_ref::<hyper::Error>() {
        Some(e)
    } else if let Some(e) = any.downcast_ref::<std::io::Error>() {
        Some(e)
    } else if let Some(e) = any.downcast_ref::<tower::timeout::error::Elapsed>() {
        Some(e)
    } else {
        None
    };
    as_error.map_or(FailureClass::Reset, classify_error)
}

// === impl HttpFailure ===

impl fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "{} failure: status {}", self.class, status.as_u16()),
            None => write!(f, "{} failure", self.class),
        }
    }
}

/// Convenience: the `Retry-After` of a classified result, for callers that only need it.
impl Classified {
    /// A success with no `Retry-After`.
    pub const SUCCESS: Classified = Classified {
        outcome: Outcome::Success,
        retry_after: None,
    };

    /// A failure of `class` with no `Retry-After`.
    pub const fn failure(class: FailureClass) -> Classified {
        Classified {
            outcome: Outcome::Failure(class),
            retry_after: None,
        }
    }

    /// The `Retry-After` delay, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, retry_after: Option<&str>) -> Result<Response<()>, BoxError> {
        let mut b = Response::builder().status(status);
        if let Some(ra) = retry_after {
            b = b.header("retry-after", ra);
        }
        Ok(b.body(()).unwrap())
    }

    #[test]
    fn statuses() {
        let c = HttpClassifier::new();
        for s in [500, 502, 503, 504] {
            assert_eq!(
                c.classify(&resp(s, None)).outcome,
                Outcome::Failure(FailureClass::Status),
                "{s}"
            );
        }
        for s in [200, 201, 204, 301, 400, 404, 409, 429, 501, 505] {
            assert_eq!(c.classify(&resp(s, None)).outcome, Outcome::Success, "{s}");
        }
    }

    #[test]
    fn retry_after_only_on_429_and_503() {
        let c = HttpClassifier::new();
        assert_eq!(
            c.classify(&resp(429, Some("7"))).retry_after,
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            c.classify(&resp(503, Some("2"))).retry_after,
            Some(Duration::from_secs(2))
        );
        assert_eq!(c.classify(&resp(500, Some("2"))).retry_after, None);
        assert_eq!(c.classify(&resp(429, Some("junk"))).retry_after, None);
    }

    #[test]
    fn tower_http_trait() {
        let res = Response::builder().status(502).body(()).unwrap();
        match HttpClassifier::new().classify_response(&res) {
            ClassifiedResponse::Ready(Err(f)) => {
                assert_eq!(f.class, FailureClass::Status);
                assert_eq!(f.status, Some(StatusCode::BAD_GATEWAY));
            }
            _ => panic!("502 must be a failure"),
        }
        let err: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(
            HttpClassifier::new().classify_error(&err).class,
            FailureClass::Timeout
        );
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "no");
        assert_eq!(
            HttpClassifier::new().classify_error(&io).class,
            FailureClass::Connect
        );
    }
}
