//! Failure classes for calls to HTTP agents, and the facts the layers share.
//!
//! Every layer of agentgate has to answer the same two questions about the result of a
//! call: *does it count against the circuit breaker?* and *may it be retried?* This crate
//! answers them in one place, so that the breaker, the retry policy, the metrics and the
//! gateway's error mapping never disagree (SPEC §5). It is also the vocabulary the layers
//! share without depending on each other (they stand side by side, not in a chain):
//!
//! - [`FailureClass`]: the closed set of ways a call can fail — `connect`, `reset`,
//!   `timeout`, `status`, `bad_response`, `rejected`, `cancelled` — with
//!   [`FailureClass::counts_for_breaker`] and [`FailureClass::is_retryable`].
//! - [`is_caused_by`] / [`cause_ref`]: inspect a boxed error by walking its `source()`
//!   chain, so callers never depend on the order in which layers wrapped an error.
//! - [`classify_error`]: map a transport error (hyper, hyper-util, `std::io`, tower's and
//!   tokio's `Elapsed`) to its class.
//! - [`HttpClassifier`]: classify an HTTP response (5xx that count, `Retry-After`) and an
//!   error. It implements [`tower_http::classify::ClassifyResponse`] so it plugs into
//!   tower-http's tracing and metrics layers, and [`Classify`], the trait our own layers use.
//! - [`TlsFailure`]: the marker a TLS transport wraps its handshake errors in (class
//!   `connect`, kind `tls`), so no layer depends on a TLS library.
//! - [`Rejected`]: the marker inside every refusal by one of our own layers (an open
//!   breaker, a full bulkhead), so the retry and progress layers recognise it without
//!   knowing the layer; [`RequestBodyError`]: the caller's own body failed.
//! - [`AttemptNumber`], [`AttemptRecord`], [`AttemptObserver`], [`AttemptLedger`]: which
//!   attempt a request is and how each attempt ended, told to whoever observes (metrics,
//!   progress events, a pipeline stage's record) by the retry layer, in one way.
//!
//! # Example
//!
//! ```
//! use agentgate_classify::{Classify, HttpClassifier, FailureClass, Outcome};
//! use http::{Response, StatusCode};
//!
//! let classifier = HttpClassifier::default();
//! let res: Result<Response<()>, tower::BoxError> =
//!     Ok(Response::builder().status(StatusCode::SERVICE_UNAVAILABLE).body(()).unwrap());
//! let verdict = classifier.classify(&res);
//! assert_eq!(verdict.outcome, Outcome::Failure(FailureClass::Status));
//! assert!(FailureClass::Status.counts_for_breaker());
//! ```

mod attempt;
mod bad_response;
mod cause;
mod class;
mod error;
mod http_classifier;
mod rejected;
mod retry_after;
mod tls;

pub use attempt::{AttemptLedger, AttemptNumber, AttemptObserver, AttemptOutcome, AttemptRecord};
pub use bad_response::BadResponse;
pub use cause::{cause_ref, is_caused_by};
pub use class::{Classified, Classify, ErrorClassifier, FailureClass, Outcome};
pub use error::classify_error;
pub use http_classifier::{is_failure_status, HttpClassifier, HttpFailure};
pub use rejected::{Rejected, Rejection, RequestBodyError};
pub use retry_after::{parse_retry_after, retry_after_from_headers};
pub use tls::TlsFailure;

/// A type-erased error, as returned by every agentgate layer.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
