//! A lock-free, time-based sliding window of call counts.
//!
//! The window is split into `n` buckets of equal width. Each counter packs the index of
//! the bucket interval it belongs to (24 bits) with the count (40 bits) in one `AtomicU64`,
//! so moving a bucket to a new interval and counting into it is one compare-and-swap:
//! no lock, no lost reset, no count carried over from an old interval.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const TAG_MASK: u64 = (1 << 24) - 1;

/// Sums over the live buckets of the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

#[derive(Debug)]
struct Bucket {
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Window {
    origin: Instant,
    bucket_nanos: u64,
    buckets: Box<[Bucket]>,
}

// === impl Totals ===

impl Totals {
    pub(crate) fn failure_rate(&self) -> f64 {
        ratio(self.failures, self.calls)
    }

    pub(crate) fn slow_rate(&self) -> f64 {
        ratio(self.slow, self.calls)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

// === impl Window ===

impl Window {
    /// A window of length `window`, one bucket per second between 10 and 120 buckets.
    pub(crate) fn new(window: Duration, origin: Instant) -> Self {
        let n = window.as_secs().clamp(10, 120);
        let bucket_nanos = (window.as_nanos() / u128::from(n)).max(1) as u64;
        let buckets = (0..n)
            .map(|_| Bucket {
                calls: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                slow: AtomicU64::new(0),
            })
            .collect();
        Self {
            origin,
            bucket_nanos,
            buckets,
        }
    }

    fn interval(&self, now: Instant) -> u64 {
        // u64 nanoseconds last 584 years; u64 division is much cheaper than u128.
        let nanos = now.saturating_duration_since(self.origin).as_nanos() as u64;
        nanos / self.bucket_nanos
    }

    /// Counts one call that finished at `now`.
    pub(crate) fn record(&self, now: Instant, failure: bool, slow: bool) {
        let interval = self.interval(now);
        let bucket = &self.buckets[(interval % self.buckets.len() as u64) as usize];
        let tag = interval & TAG_MASK;
        bump(&bucket.calls, tag);
        if failure {
            bump(&bucket.failures, tag);
        }
        if slow {
            bump(&bucket.slow, tag);
        }
    }

    /// The counts of the calls that finished within the window ending at `now`.
    pub(crate) fn totals(&self, now: Instant) -> Totals {
        let current = self.interval(now) & TAG_MASK;
        let n = self.buckets.len() as u64;
        let live = |v: u64| {
            let age = current.wrapping_sub(v >> COUNT_BITS) & TAG_MASK;
            if age < n {
                v & COUNT_MASK
            } else {
                0
            }
        };
        let mut t = Totals::default();
        for b in self.buckets.iter() {
            t.calls += live(b.calls.load(Ordering::Relaxed));
            t.failures += live(b.failures.load(Ordering::Relaxed));
            t.slow += live(b.slow.load(Ordering::Relaxed));
        }
        t
    }

    /// Forgets every call (on closing).
    pub(crate) fn clear(&self) {
        for b in self.buckets.iter() {
            // Tag 0 with count 0 reads as zero whatever the tag's age.
            b.calls.store(0, Ordering::Relaxed);
            b.failures.store(0, Ordering::Relaxed);
            b.slow.store(0, Ordering::Relaxed);
        }
    }
}

fn bump(counter: &AtomicU64, tag: u64) {
    let mut cur = counter.load(Ordering::Relaxed);
    loop {
        let next = if cur >> COUNT_BITS == tag {
            cur + 1
        } else {
            (tag << COUNT_BITS) | 1
        };
        match counter.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_slide_out_of_the_window() {
        let t0 = Instant::now();
        let w = Window::new(Duration::from_secs(10), t0);
        w.record(t0, true, false);
        w.record(t0 + Duration::from_millis(500), false, true);
        w.record(t0 + Duration::from_secs(5), false, false);
        let t = w.totals(t0 + Duration::from_secs(5));
        assert_eq!(
            t,
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        // Bucket 0 ([0s, 1s)) leaves the window once we are in bucket 10.
        assert_eq!(w.totals(t0 + Duration::from_millis(9_999)).calls, 3);
        assert_eq!(w.totals(t0 + Duration::from_secs(10)).calls, 1);
        assert_eq!(w.totals(t0 + Duration::from_secs(16)).calls, 0);
        // A bucket reused for a new interval starts from zero.
        w.record(t0 + Duration::from_secs(20), false, false);
        assert_eq!(
            w.totals(t0 + Duration::from_secs(20)),
            Totals {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        w.clear();
        assert_eq!(w.totals(t0 + Duration::from_secs(20)), Totals::default());
    }

    #[test]
    fn concurrent_records_are_not_lost() {
        let t0 = Instant::now();
        let w = std::sync::Arc::new(Window::new(Duration::from_secs(30), t0));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for j in 0..10_000u64 {
                        w.record(
                            t0 + Duration::from_millis(j % 3000),
                            (i + j) % 2 == 0,
                            false,
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let totals = w.totals(t0 + Duration::from_secs(3));
        assert_eq!(totals.calls, 40_000);
        assert_eq!(totals.failures, 20_000);
    }
}
