//! The progress backend: everything that differs between one process and several
//! replicas, behind one object-safe trait.
//!
//! The engine, the HTTP routes and the WebSocket code hold an `Arc<dyn Backend>` and
//! never name an implementation. [`MemoryHub`](crate::MemoryHub) serves one process;
//! the Redis backend (`agentgate-progress-redis`) keeps a `MemoryHub` per replica and
//! carries streams, records and cancel requests between replicas.
//!
//! Records cross the backend as JSON text: this crate does not know the pipeline's
//! record type, and text is what travels between replicas anyway.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::quota::{Quota, QuotaRefusal};
use crate::{
    ErrorInfo, EventKind, HubStats, OpenError, QueryPublisher, SubscribeError, Subscription,
};

/// A boxed future, so that [`Backend`]'s async methods keep the trait dyn-compatible.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where queries' progress streams and records live, and how they reach other replicas.
///
/// A query is *here* when this process runs it (it was [`open`](Backend::open)ed here)
/// and *elsewhere* when another replica runs it. Methods that may have to reach another
/// replica are async; none of them waits on a query's own work.
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Starts the stream of a query run here and returns its publisher. Publishing
    /// never waits: a backend that forwards events does so in the background.
    fn open(&self, query_id: &str) -> Result<QueryPublisher, OpenError>;

    /// Subscribes to a query run here or elsewhere: the retained events with
    /// `seq > after_seq`, then the live ones, with no gap and no duplicate. A query of
    /// another replica that this one does not follow yet is loaded first.
    fn subscribe<'a>(
        &'a self,
        query_id: &'a str,
        after_seq: u64,
    ) -> BoxFuture<'a, Result<Subscription, SubscribeError>>;

    /// Whether other replicas see this backend's queries. When false, records are not
    /// handed over ([`put_record`](Backend::put_record) would drop them anyway), and
    /// `/readyz` has no connection to report.
    fn is_shared(&self) -> bool;

    /// Shares the record (JSON) of a query run here, for other replicas'
    /// [`record`](Backend::record). Called when the query starts and with its final
    /// record just before its terminal event is published, so that whoever sees that
    /// event can read the final record. Never waits.
    fn put_record(&self, query_id: &str, json: String, finished: bool);

    /// The record (JSON) of a query run elsewhere, while it is retained. `Ok(None)`:
    /// no replica has it (always, in one process).
    fn record<'a>(
        &'a self,
        query_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, BackendError>>;

    /// Asks the replica running `query_id` to cancel it (through its
    /// [`QueryControl::cancel`]). Its `cancelled` event and final record then arrive
    /// like any other.
    fn cancel<'a>(&'a self, query_id: &'a str) -> BoxFuture<'a, Result<(), BackendError>>;

    /// What acts on this replica's queries when another replica asks. The engine sets
    /// itself here; a later call replaces an earlier one.
    fn set_control(&self, control: Arc<dyn QueryControl>);

    /// Admits a query of `client` under its `quota` (SPEC §7), or says why not. When the
    /// backend is shared the limits hold for all replicas together; when the others
    /// cannot be reached, each replica enforces them alone. An admitted `ticket` (the
    /// query's id) counts as running until [`release`](Backend::release), or for at
    /// most `hold` (the query's deadline and a margin) should this replica die first.
    /// Nothing else is started or counted for a refused query.
    fn admit<'a>(
        &'a self,
        client: &'a str,
        ticket: &'a str,
        quota: Quota,
        hold: Duration,
    ) -> BoxFuture<'a, Result<(), QuotaRefusal>>;

    /// Ends the count of an admitted `ticket` (its query ended). Never waits.
    fn release(&self, client: &str, ticket: &str);

    /// Whether the backend reaches what it depends on (`/readyz`,
    /// `/api/orchestration/health`).
    fn health(&self) -> BackendHealth;

    /// Figures of the local streams.
    fn stats(&self) -> HubStats;

    /// Graceful shutdown: sends what is queued for other replicas, then stops the
    /// backend's background work. Queries published later stay local.
    fn close(&self) -> BoxFuture<'_, ()>;

    /// This replica's name among the others (in logs, notifications and Redis), when
    /// the backend is shared; `None` in one process.
    fn replica(&self) -> Option<&str> {
        None
    }
}

/// What a backend asks of the replica that runs queries (the engine).
pub trait QueryControl: Send + Sync + fmt::Debug {
    /// Another replica asks to cancel `query_id`: cancel it if it runs here, else do
    /// nothing (every replica hears the request).
    fn cancel(&self, query_id: &str);

    /// The replica that ran a query was lost (its lease expired, SPEC §9), and this
    /// replica is the one survivor that ends the query: how it ends. Called at most
    /// once per query across all replicas.
    ///
    /// The default ends it with `failed`, `error.kind = "replica_lost"`, and leaves the
    /// record as it is; the engine also marks the record failed.
    fn end_lost(&self, lost: &LostQuery<'_>) -> Ending {
        Ending::replica_lost(lost.stage.map(str::to_owned))
    }
}

/// A query whose replica was lost, as the survivor that ends it knows it.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct LostQuery<'a> {
    /// The query.
    pub query_id: &'a str,
    /// The replica that ran it.
    pub replica: &'a str,
    /// Its last shared record (JSON), if any replica can still read it. Records are
    /// shared when a query starts and ends, so a running one's lists no stage yet.
    pub record: Option<&'a str>,
    /// When its first event was published, if that event is still retained.
    pub started: Option<SystemTime>,
    /// The stage its last retained event was about: the one it was in.
    pub stage: Option<&'a str>,
}

/// How a lost query ends: its terminal event, and its final record (JSON) when the
/// record changes.
#[derive(Clone, Debug, PartialEq)]
pub struct Ending {
    /// The terminal event (the backend stamps `seq`, continuing the query's stream).
    pub event: EventKind,
    /// The final record, to share in place of the last one.
    pub record: Option<String>,
}

// === impl LostQuery ===

impl<'a> LostQuery<'a> {
    /// The lost query `query_id` of `replica`, with what is known of it.
    pub fn new(
        query_id: &'a str,
        replica: &'a str,
        record: Option<&'a str>,
        started: Option<SystemTime>,
        stage: Option<&'a str>,
    ) -> Self {
        Self {
            query_id,
            replica,
            record,
            started,
            stage,
        }
    }
}

// === impl Ending ===

impl Ending {
    /// The `error.kind` of a query whose replica was lost.
    pub const REPLICA_LOST: &'static str = "replica_lost";

    /// The message of a query whose replica was lost.
    pub const LOST_MESSAGE: &'static str =
        "the replica running this query stopped answering; submit the query again";

    /// `failed` with `error.kind = "replica_lost"` at `stage` (the stage that was
    /// running, when known), and no change to the record.
    pub fn replica_lost(stage: Option<String>) -> Self {
        Self {
            event: EventKind::Failed {
                error: ErrorInfo {
                    stage,
                    kind: Self::REPLICA_LOST.to_owned(),
                    message: Self::LOST_MESSAGE.to_owned(),
                },
            },
            record: None,
        }
    }
}

/// How a backend is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendHealth {
    /// Its name (`memory`, `redis`): the key under which `/readyz` reports the connection.
    pub name: &'static str,
    /// Whether it reaches what it depends on (always, in one process).
    pub connected: bool,
    /// Why not, for the health reasons, when not connected.
    pub reason: Option<String>,
}

/// The backend could not reach another replica's data (e.g. Redis is down).
#[derive(Clone, Debug, thiserror::Error)]
#[error("progress backend: {0}")]
pub struct BackendError(#[source] Arc<dyn std::error::Error + Send + Sync>);

// === impl BackendError ===

impl BackendError {
    /// Wraps what went wrong.
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(Arc::from(source.into()))
    }
}
