//! What the Redis backend is told, and the names it uses in Redis.

use std::time::Duration;

use agentgate_progress::HubConfig;

/// What the Redis backend needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://host:port[/db]` (`[progress] redis_url`).
    pub url: String,
    /// Prefix of every key and channel (default `agentgate`).
    pub prefix: String,
    /// The replica's local streams. Also what Redis keeps: each query's stream holds
    /// about `replay_events` events, and a finished query's keys expire after
    /// `retention`.
    pub hub: HubConfig,
    /// Keys of running queries expire after this unless refreshed by a new event, so a
    /// replica that dies mid-query leaves nothing behind for long. Default 1 hour.
    pub running_ttl: Duration,
    /// Events and records waiting for the writer; beyond, they are dropped (for other
    /// replicas only). Default 65,536.
    pub queue: usize,
}

/// `redis_url` is not a Redis URL.
#[derive(Debug, thiserror::Error)]
#[error("invalid redis_url: {0}")]
pub struct InvalidUrl(#[source] pub(crate) redis::RedisError);

/// Key and channel names.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

// === impl RedisSettings ===

impl RedisSettings {
    /// Settings for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "agentgate".to_owned(),
            hub: HubConfig::default(),
            running_ttl: Duration::from_secs(3600),
            queue: 65_536,
        }
    }
}

// === impl Keys ===

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// A query's events: a stream of `e <json>` entries.
    pub(crate) fn events(&self, query_id: &str) -> String {
        format!("{}:q:{query_id}:events", self.prefix)
    }

    /// A query's record (JSON).
    pub(crate) fn record(&self, query_id: &str) -> String {
        format!("{}:q:{query_id}:record", self.prefix)
    }

    /// Every replica's events, as `<replica>|<json>`.
    pub(crate) fn channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// A client's running queries: a sorted set of query ids, scored by when each
    /// stops counting should its replica die first (ms, Redis clock).
    pub(crate) fn running(&self, client: &str) -> String {
        format!("{}:client:{client}:running", self.prefix)
    }

    /// A client's token bucket: a hash of `tokens` and `ts` (ms, Redis clock).
    pub(crate) fn bucket(&self, client: &str) -> String {
        format!("{}:client:{client}:bucket", self.prefix)
    }

    /// Requests between replicas (`cancel|<query id>`).
    pub(crate) fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }
}
