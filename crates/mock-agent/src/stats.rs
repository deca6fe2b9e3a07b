//! Request counters, shared by every connection of one agent.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::fault::Fault;

/// A snapshot of what a mock agent has done since it started.
///
/// `requests` counts every request outside the control paths; each of them then lands in
/// at most one of the other counters, at the moment its fault is decided (so a hung request
/// is counted while it hangs). Requests rejected before that (a body over the size limit)
/// only count in `requests`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests received (control requests excluded).
    pub requests: u64,
    /// Normal JSON answers.
    pub ok: u64,
    /// Injected `error_status` answers.
    pub errors: u64,
    /// Requests left hanging.
    pub hangs: u64,
    /// Connections broken mid-body.
    pub resets: u64,
    /// Throttled answers (`throttle_status` + `Retry-After`).
    pub throttled: u64,
    /// `200 text/plain` answers that are not JSON.
    pub bad_json: u64,
    /// `503` answers inside an outage window.
    pub outage: u64,
}

/// The live counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    hangs: AtomicU64,
    resets: AtomicU64,
    throttled: AtomicU64,
    bad_json: AtomicU64,
    outage: AtomicU64,
}

// === impl Counters ===

impl Counters {
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn outcome(&self, fault: Fault) {
        let counter = match fault {
            Fault::Outage { .. } => &self.outage,
            Fault::Hang => &self.hangs,
            Fault::Reset => &self.resets,
            Fault::Throttle => &self.throttled,
            Fault::Error => &self.errors,
            Fault::BadJson => &self.bad_json,
            Fault::None => &self.ok,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            requests: get(&self.requests),
            ok: get(&self.ok),
            errors: get(&self.errors),
            hangs: get(&self.hangs),
            resets: get(&self.resets),
            throttled: get(&self.throttled),
            bad_json: get(&self.bad_json),
            outage: get(&self.outage),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_outcome_once() {
        let c = Counters::default();
        c.request();
        c.request();
        c.outcome(Fault::None);
        c.outcome(Fault::Outage {
            retry_after: std::time::Duration::ZERO,
        });
        let s = c.snapshot();
        assert_eq!(
            s,
            Stats {
                requests: 2,
                ok: 1,
                outage: 1,
                ..Stats::default()
            }
        );
        let json = serde_json::to_value(&s).unwrap();
        for key in [
            "requests",
            "ok",
            "errors",
            "hangs",
            "resets",
            "throttled",
            "bad_json",
            "outage",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }
}
