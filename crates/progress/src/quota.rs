//! Per-client quotas (SPEC §7): how many queries a client may have running, and how
//! many it may start per second. Held by the [`Backend`](crate::Backend), since they
//! must hold across replicas when there are several (a client must not multiply its
//! quota by the replica count).
//!
//! [`LocalQuotas`] counts in this process: the whole truth in one process, and what a
//! replica falls back to when the shared store cannot be reached.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// A client's limits. `None`: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// Queries running at once (`max_running_queries`).
    pub max_running: Option<u64>,
    /// Queries started per second, burst = rate (`rate`).
    pub rate: Option<u32>,
}

/// Why a client's query was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuotaRefusal {
    /// The client already runs `max_running_queries` queries (429 `too_many_queries`).
    #[error("too many running queries")]
    TooManyQueries,
    /// The client's token bucket is empty (429 `rate_limited`); a token is free again
    /// after `retry_after`.
    #[error("rate limited")]
    RateLimited {
        /// Until the next token.
        retry_after: Duration,
    },
}

/// Quotas counted in this process. Admission is one lock: the running count is checked
/// and the query counted, and the token taken, together, so that racing requests can
/// never be admitted beyond a limit.
#[derive(Debug, Default)]
pub struct LocalQuotas {
    clients: Mutex<HashMap<Arc<str>, ClientState>>,
}

/// One client's counters. Clients are the configured ones, so the map is bounded.
#[derive(Debug)]
struct ClientState {
    /// Tickets (query ids) of the client's running queries admitted here.
    running: HashSet<Box<str>>,
    bucket: Option<Bucket>,
}

/// A token bucket of `rate` tokens, refilled at `rate` per second.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

// === impl Quota ===

impl Quota {
    /// Whether there is any limit at all (when not, nothing needs counting).
    pub fn is_limited(&self) -> bool {
        self.max_running.is_some() || self.rate.is_some()
    }
}

// === impl LocalQuotas ===

impl LocalQuotas {
    /// Admits `ticket` (the query's id) for `client` under `quota`, or says why not.
    /// An admitted ticket counts as running until [`LocalQuotas::release`].
    pub fn admit(&self, client: &str, ticket: &str, quota: Quota) -> Result<(), QuotaRefusal> {
        let now = Instant::now();
        let mut clients = self.lock();
        let state = match clients.get_mut(client) {
            Some(state) => state,
            None => clients.entry(client.into()).or_insert(ClientState {
                running: HashSet::new(),
                bucket: None,
            }),
        };
        if let Some(max) = quota.max_running {
            if state.running.len() as u64 >= max {
                return Err(QuotaRefusal::TooManyQueries);
            }
        }
        if let Some(rate) = quota.rate {
            let rate = f64::from(rate);
            let bucket = state.bucket.get_or_insert(Bucket {
                tokens: rate,
                at: now,
            });
            let refilled = now.saturating_duration_since(bucket.at).as_secs_f64() * rate;
            bucket.tokens = (bucket.tokens + refilled).min(rate);
            bucket.at = now;
            if bucket.tokens < 1.0 {
                let wait = (1.0 - bucket.tokens) / rate;
                return Err(QuotaRefusal::RateLimited {
                    retry_after: Duration::from_secs_f64(wait),
                });
            }
            bucket.tokens -= 1.0;
        }
        if quota.max_running.is_some() {
            state.running.insert(ticket.into());
        }
        Ok(())
    }

    /// Ends `ticket`'s count. Returns whether it was admitted here.
    pub fn release(&self, client: &str, ticket: &str) -> bool {
        self.lock()
            .get_mut(client)
            .is_some_and(|state| state.running.remove(ticket))
    }

    /// `client`'s queries admitted here and still running.
    pub fn running(&self, client: &str) -> usize {
        self.lock().get(client).map_or(0, |s| s.running.len())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, ClientState>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE_2: Quota = Quota {
        max_running: None,
        rate: Some(2),
    };

    #[tokio::test(start_paused = true)]
    async fn the_bucket_holds_a_burst_of_rate_and_refills_at_rate() {
        let q = LocalQuotas::default();
        assert_eq!(q.admit("a", "1", RATE_2), Ok(()));
        assert_eq!(q.admit("a", "2", RATE_2), Ok(()));
        let Err(QuotaRefusal::RateLimited { retry_after }) = q.admit("a", "3", RATE_2) else {
            panic!("the burst is 2");
        };
        assert_eq!(retry_after, Duration::from_millis(500));
        // Another client has its own bucket.
        assert_eq!(q.admit("b", "1", RATE_2), Ok(()));

        tokio::time::advance(Duration::from_millis(250)).await;
        let Err(QuotaRefusal::RateLimited { retry_after }) = q.admit("a", "3", RATE_2) else {
            panic!("half a token is not a token");
        };
        assert_eq!(retry_after, Duration::from_millis(250));
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(q.admit("a", "3", RATE_2), Ok(()));
        assert!(q.admit("a", "4", RATE_2).is_err());

        // Idle for long: the bucket is full again, never fuller.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(q.admit("a", "5", RATE_2), Ok(()));
        assert_eq!(q.admit("a", "6", RATE_2), Ok(()));
        assert!(q.admit("a", "7", RATE_2).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn running_queries_count_until_released() {
        let q = LocalQuotas::default();
        let quota = Quota {
            max_running: Some(2),
            rate: None,
        };
        assert_eq!(q.admit("a", "1", quota), Ok(()));
        assert_eq!(q.admit("a", "2", quota), Ok(()));
        assert_eq!(q.admit("a", "3", quota), Err(QuotaRefusal::TooManyQueries));
        assert!(q.release("a", "1"));
        assert!(!q.release("a", "1"), "released once");
        assert!(!q.release("b", "2"), "not b's");
        assert_eq!(q.admit("a", "3", quota), Ok(()));
        assert_eq!(q.running("a"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_query_refused_for_running_takes_no_token() {
        let q = LocalQuotas::default();
        let quota = Quota {
            max_running: Some(1),
            rate: Some(2),
        };
        assert_eq!(q.admit("a", "1", quota), Ok(()));
        assert_eq!(q.admit("a", "2", quota), Err(QuotaRefusal::TooManyQueries));
        assert!(q.release("a", "1"));
        assert_eq!(q.admit("a", "2", quota), Ok(()), "one token was left");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_admissions_never_exceed_the_limit() {
        let q = Arc::new(LocalQuotas::default());
        let quota = Quota {
            max_running: Some(7),
            rate: None,
        };
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let q = q.clone();
                tokio::spawn(async move { q.admit("a", &i.to_string(), quota).is_ok() })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            admitted += usize::from(t.await.unwrap());
        }
        assert_eq!(admitted, 7);
        assert_eq!(q.running("a"), 7);
    }
}
