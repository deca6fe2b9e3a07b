//! What the Redis backend is told, and the names it uses in Redis.

use std::fmt;
use std::time::Duration;

use agentgate_progress::HubConfig;

/// What the Redis backend needs to know.
///
/// `Debug` shows the URL without its password ([`redact`]).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[:password@]host:port[/db]`, or `rediss://…` for TLS (`[progress]
    /// redis_url`). A password in the URL is sent with `AUTH` (with the user name, for
    /// Redis ACL users: `redis://user:password@host`).
    pub url: String,
    /// Trust roots for `rediss://` (PEM), in place of the system's (`[progress]
    /// redis_ca_file`, read). `None`: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Prefix of every key and channel (default `agentgate`).
    pub prefix: String,
    /// The replica's local streams. Also what Redis keys: each query's stream holds
    /// about `replay_events` events, and a finished query's keys expire after
    /// `retention`.
    pub hub: HubConfig,
    /// Keys of running queries expire after this unless refreshed by a new event, so a
    /// replica that dies mid-query leaves nothing behind for long. Default 1 hour.
    pub running_ttl: Duration,
    /// Events and records waiting for the writer; beyond, they are dropped (for other
    /// replicas only). Default 65,536.
    pub queue: usize,
    /// The replica's lease (`[progress] lease`, SPEC §9): renewed every third of it;
    /// once another replica's has expired, its unfinished queries are ended. Default 10 s.
    pub lease: Duration,
    /// The first part of the replica's id (the host name by default), so that operators
    /// can tell replicas apart in logs and notifications; a random suffix makes it unique.
    pub name: String,
}

/// `redis_url` is not a Redis URL.
#[derive(Debug, thiserror::Error)]
#[error("invalid redis_url: {0}")]
pub struct InvalidUrl(#[source] pub(crate) redis::RedisError);

/// Key and channel names.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
    /// [`Keys::channel`], made once: it is named for every event.
    channel: String,
}

// === impl RedisSettings ===

impl RedisSettings {
    /// Settings for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca_pem: None,
            prefix: "agentgate".to_owned(),
            hub: HubConfig::default(),
            running_ttl: Duration::from_secs(3600),
            queue: 65_536,
            lease: Duration::from_secs(10),
            name: host_name(),
        }
    }
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact(&self.url))
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "…"))
            .field("prefix", &self.prefix)
            .field("hub", &self.hub)
            .field("running_ttl", &self.running_ttl)
            .field("queue", &self.queue)
            .field("lease", &self.lease)
            .field("name", &self.name)
            .finish()
    }
}

/// `url` with its password (if any) shown as `***`: what logs, `Debug` and
/// `agentgate check` print. Text that is not a URL is shown up to its scheme only.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Only fails for URLs that cannot have credentials, which this one has.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => match url.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…"),
            None => "…".to_owned(),
        },
    }
}

/// This machine's name, as `HOSTNAME` (set in containers and by shells) or the kernel
/// has it; `agentgate` when neither says. The first part of a replica's id.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "agentgate".to_owned())
}

// === impl Keys ===

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            channel: format!("{prefix}:events"),
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

    /// Set (`NX`) by the one replica that ends a lost replica's query.
    pub(crate) fn ended(&self, query_id: &str) -> String {
        format!("{}:q:{query_id}:ended", self.prefix)
    }

    /// Every replica's events, as `<replica>|<json>`.
    pub(crate) fn channel(&self) -> &str {
        &self.channel
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

    /// The replicas that hold (or held, until another ends their queries) a lease: a set.
    pub(crate) fn replicas(&self) -> String {
        format!("{}:replicas", self.prefix)
    }

    /// A replica's lease: exists while the replica renews it.
    pub(crate) fn lease(&self, replica: &str) -> String {
        format!("{}:replica:{replica}:lease", self.prefix)
    }

    /// The queries a replica runs (whose record says `running`): a set.
    pub(crate) fn replica_running(&self, replica: &str) -> String {
        format!("{}:replica:{replica}:running", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_never_shown() {
        assert_eq!(
            redact("redis://:s3cret@redis.internal:6379/0"),
            "redis://:***@redis.internal:6379/0"
        );
        assert_eq!(
            redact("rediss://agentgate:s3cret@redis:6380"),
            "rediss://agentgate:***@redis:6380"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("redis://:s3cret@[bad"), "redis://…");
        assert_eq!(redact("s3cret"), "…");
        let settings = RedisSettings::new("redis://:s3cret@redis:6379");
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("redis://:***@redis:6379"), "{shown}");
    }
}
