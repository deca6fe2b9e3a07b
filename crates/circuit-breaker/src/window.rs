//! A lock-free, time-based sliding window of call counts, sharded so that threads do
//! not fight over one cache line.
//!
//! Time is cut into buckets of `2^shift` nanoseconds (about a twentieth of the window,
//! so no division on the hot path). Each counter packs the index of the bucket interval
//! it belongs to (24 bits) with the count (40 bits) in one `AtomicU64`, so moving a
//! bucket to a new interval and counting into it is one compare-and-swap: no lock, no
//! count carried over from an old interval. Every shard has its own buckets on its own
//! cache lines; reading the window sums the shards.
//!
//! Counting is a relaxed load and store, not a locked read-modify-write: threads are
//! spread over the shards (one shard per CPU), so two threads rarely count into the same
//! shard at the same instant, and when they do one count is lost — a statistical window
//! can afford that, the hot path cannot afford a locked instruction per call.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const TAG_MASK: u64 = (1 << 24) - 1;
/// Buckets per window (at least; rounding bucket widths to powers of two gives 20–40).
const BUCKETS_PER_WINDOW: u128 = 20;

/// Sums over the live buckets of the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

#[derive(Debug, Default)]
struct Bucket {
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

/// One shard's buckets, aligned so two shards never share a cache line.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    buckets: Box<[Bucket]>,
}

#[derive(Debug)]
pub(crate) struct Window {
    /// Tells this window's entry in the per-thread [`LastBucket`] from another's.
    id: u64,
    origin: Instant,
    shift: u32,
    /// Buckets that are still inside the window, counting the current one.
    live: u64,
    /// `slots - 1`, slots being a power of two ≥ `live`.
    slot_mask: u64,
    shards: Box<[Shard]>,
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
    /// A window of length `window` with `shards` shards (a power of two).
    pub(crate) fn new(window: Duration, origin: Instant, shards: usize) -> Self {
        let target = (window.as_nanos() / BUCKETS_PER_WINDOW).max(1);
        let shift = (u128::BITS - 1 - target.leading_zeros()).min(40);
        let width = 1u128 << shift;
        let live = window.as_nanos().div_ceil(width).max(1) as u64;
        let slots = live.next_power_of_two();
        let shards = (0..shards.max(1))
            .map(|_| Shard {
                buckets: (0..slots).map(|_| Bucket::default()).collect(),
            })
            .collect();
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            origin,
            shift,
            live,
            slot_mask: slots - 1,
            shards,
        }
    }

    pub(crate) fn shards(&self) -> usize {
        self.shards.len()
    }

    #[inline]
    fn interval(&self, now: Instant) -> u64 {
        // Calls end in the same bucket as the previous call on this thread almost
        // always: comparing two instants is cheaper than turning one into nanoseconds.
        let slot = self.id as usize % LAST_BUCKETS;
        if let Some(last) = LAST_BUCKET.with(|b| b[slot].get()) {
            if last.window == self.id && last.start <= now && now < last.end {
                return last.interval;
            }
        }
        self.interval_slow(now)
    }

    #[inline(never)]
    fn interval_slow(&self, now: Instant) -> u64 {
        // u64 nanoseconds last 584 years.
        let nanos = now.saturating_duration_since(self.origin).as_nanos() as u64;
        let interval = nanos >> self.shift;
        if now >= self.origin {
            let start = self.origin + Duration::from_nanos(interval << self.shift);
            let last = LastBucket {
                window: self.id,
                start,
                end: start + Duration::from_nanos(1 << self.shift),
                interval,
            };
            LAST_BUCKET.with(|b| b[self.id as usize % LAST_BUCKETS].set(Some(last)));
        }
        interval
    }

    /// Counts one call that finished at `now`, in shard `shard`.
    #[inline]
    pub(crate) fn record(&self, shard: usize, now: Instant, failure: bool, slow: bool) {
        let interval = self.interval(now);
        let shard = &self.shards[shard & (self.shards.len() - 1)];
        let bucket = &shard.buckets[(interval & self.slot_mask) as usize];
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
        let live = |v: u64| {
            let age = current.wrapping_sub(v >> COUNT_BITS) & TAG_MASK;
            if age < self.live {
                v & COUNT_MASK
            } else {
                0
            }
        };
        let mut t = Totals::default();
        for b in self.shards.iter().flat_map(|s| s.buckets.iter()) {
            t.calls += live(b.calls.load(Ordering::Relaxed));
            t.failures += live(b.failures.load(Ordering::Relaxed));
            t.slow += live(b.slow.load(Ordering::Relaxed));
        }
        t
    }

    /// Forgets every call (on closing).
    pub(crate) fn clear(&self) {
        for b in self.shards.iter().flat_map(|s| s.buckets.iter()) {
            // Tag 0 with count 0 reads as zero whatever the tag's age.
            b.calls.store(0, Ordering::Relaxed);
            b.failures.store(0, Ordering::Relaxed);
            b.slow.store(0, Ordering::Relaxed);
        }
    }
}

/// The bucket interval the last call recorded on this thread fell in, and its bounds.
#[derive(Clone, Copy)]
struct LastBucket {
    /// [`Window::id`].
    window: u64,
    start: Instant,
    end: Instant,
    interval: u64,
}

/// Breakers remembered per thread: a gateway thread serves several agents in turn, and
/// windows are numbered in creation order, so the first four agents never evict each
/// other.
const LAST_BUCKETS: usize = 4;

thread_local! {
    static LAST_BUCKET: [Cell<Option<LastBucket>>; LAST_BUCKETS] =
        const { [const { Cell::new(None) }; LAST_BUCKETS] };
}

#[inline]
fn bump(counter: &AtomicU64, tag: u64) {
    let cur = counter.load(Ordering::Relaxed);
    let next = if cur >> COUNT_BITS == tag {
        cur + 1
    } else {
        (tag << COUNT_BITS) | 1
    };
    counter.store(next, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_about_a_twentieth_of_the_window() {
        let w = Window::new(Duration::from_secs(30), Instant::now(), 1);
        // 2^30 ns ≈ 1.07 s buckets, 28 of them cover 30 s.
        assert_eq!((w.shift, w.live, w.slot_mask), (30, 28, 31));
        let w = Window::new(Duration::from_millis(10), Instant::now(), 1);
        assert!(w.live >= 20 && w.live <= 40, "{}", w.live);
    }

    #[test]
    fn the_remembered_bucket_gives_the_exact_interval() {
        let t0 = Instant::now();
        let a = Window::new(Duration::from_secs(30), t0, 1);
        let b = Window::new(Duration::from_millis(10), t0 + Duration::from_secs(1), 1);
        let exact = |w: &Window, t: Instant| {
            (t.saturating_duration_since(w.origin).as_nanos() as u64) >> w.shift
        };
        let width = Duration::from_nanos(1 << a.shift);
        let mut times = vec![t0, t0 + width - Duration::from_nanos(1), t0 + width];
        // Forwards, backwards, before the origin, and two windows taking turns.
        times.extend((0..200u64).map(|i| t0 + Duration::from_micros(i * 7_919 % 5_000_000)));
        times.extend((0..50u64).rev().map(|i| t0 + Duration::from_millis(i * 97)));
        for t in times {
            assert_eq!(a.interval(t), exact(&a, t), "{t:?}");
            assert_eq!(a.interval(t), exact(&a, t), "{t:?} (remembered)");
            assert_eq!(b.interval(t), exact(&b, t), "{t:?}");
        }
    }

    #[test]
    fn counts_slide_out_of_the_window() {
        let t0 = Instant::now();
        let w = Window::new(Duration::from_secs(10), t0, 4);
        let width = Duration::from_nanos(1 << w.shift); // ≈ 0.54 s
        w.record(0, t0, true, false);
        w.record(1, t0 + width / 2, false, true);
        w.record(2, t0 + Duration::from_secs(5), false, false);
        let t = w.totals(t0 + Duration::from_secs(5));
        assert_eq!(
            t,
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        // Bucket 0 leaves once we are `live` buckets further on.
        let window = width * w.live as u32;
        assert_eq!(w.totals(t0 + window - Duration::from_nanos(1)).calls, 3);
        assert_eq!(w.totals(t0 + window).calls, 1);
        assert_eq!(w.totals(t0 + Duration::from_secs(16)).calls, 0);
        // A bucket reused for a new interval starts from zero.
        w.record(3, t0 + Duration::from_secs(20), false, false);
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
    fn one_writer_per_shard_loses_nothing() {
        let t0 = Instant::now();
        let w = std::sync::Arc::new(Window::new(Duration::from_secs(30), t0, 4));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for j in 0..10_000u64 {
                        w.record(
                            i,
                            t0 + Duration::from_millis(j % 3000),
                            (i as u64 + j) % 2 == 0,
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
