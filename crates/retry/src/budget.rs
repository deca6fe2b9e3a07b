//! The retry budget: retries may add at most `budget_ratio` of the requests of the last
//! `ttl`, plus `budget_min_per_sec` per second (Finagle's and Linkerd's budget, with the
//! arithmetic of tower's `TpsBudget`).
//!
//! tower's `TpsBudget` takes a mutex on every deposit, that is on every request: a lock
//! shared by every request to the agent, on the request path. This one keeps the same
//! accounts in ten time slots of packed atomics (the slot's window number and its
//! balance in one `AtomicU64`), so a deposit is one compare-and-swap and nothing ever
//! waits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Slots the ttl is cut into (as in tower's `TpsBudget`).
const SLOTS: usize = 10;
const BALANCE_BITS: u32 = 40;
const BALANCE_MASK: u64 = (1 << BALANCE_BITS) - 1;
/// Balances are stored with this bias so that a negative balance (more withdrawn than
/// deposited in a slot) fits the unsigned field.
const BIAS: i64 = 1 << (BALANCE_BITS - 1);
const WINDOW_MASK: u64 = (1 << (64 - BALANCE_BITS)) - 1;

/// A lock-free time-windowed retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    origin: Instant,
    /// Nanoseconds per slot.
    window: u64,
    reserve: i64,
    deposit_amount: i64,
    withdraw_amount: i64,
    /// `window number << BALANCE_BITS | balance + BIAS`.
    slots: [AtomicU64; SLOTS],
}

// === impl RetryBudget ===

impl RetryBudget {
    /// A budget remembering requests for `ttl` (1 s to 60 s), allowing `min_per_sec`
    /// retries per second plus `retry_ratio` (0 to 1000) of the requests.
    pub fn new(ttl: Duration, min_per_sec: u32, retry_ratio: f32) -> Self {
        Self::starting_at(Instant::now(), ttl, min_per_sec, retry_ratio)
    }

    fn starting_at(origin: Instant, ttl: Duration, min_per_sec: u32, retry_ratio: f32) -> Self {
        assert!((Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl));
        assert!((0.0..=1000.0).contains(&retry_ratio));
        // tower's arithmetic: whole units per deposit and per withdrawal.
        let (deposit_amount, withdraw_amount) = if retry_ratio == 0.0 {
            (0, 1)
        } else if retry_ratio <= 1.0 {
            (1, (1.0 / retry_ratio) as i64)
        } else {
            (1000, (1000.0 / retry_ratio) as i64)
        };
        let reserve = i64::from(min_per_sec)
            .saturating_mul(ttl.as_secs() as i64)
            .saturating_mul(withdraw_amount);
        Self {
            origin,
            window: (ttl.as_nanos() / SLOTS as u128) as u64,
            reserve,
            deposit_amount,
            withdraw_amount,
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one request at `now`.
    pub fn deposit_at(&self, now: Instant) {
        if self.deposit_amount != 0 {
            self.add(self.window_of(now), self.deposit_amount);
        }
    }

    /// Takes one retry at `now` if the balance allows it.
    pub fn withdraw_at(&self, now: Instant) -> bool {
        let current = self.window_of(now);
        if self.balance(current) < self.withdraw_amount {
            return false;
        }
        self.add(current, -self.withdraw_amount);
        true
    }

    /// The reserve plus what the live slots hold.
    fn balance(&self, current: u64) -> i64 {
        let mut sum = self.reserve;
        for slot in &self.slots {
            let v = slot.load(Ordering::Acquire);
            let age = current.wrapping_sub(v >> BALANCE_BITS) & WINDOW_MASK;
            if v != 0 && age < SLOTS as u64 {
                sum = sum.saturating_add((v & BALANCE_MASK) as i64 - BIAS);
            }
        }
        sum
    }

    /// Adds `amount` to the slot of window `current`, first clearing what it held for a
    /// window that has left the ttl.
    fn add(&self, current: u64, amount: i64) {
        let slot = &self.slots[(current % SLOTS as u64) as usize];
        let tag = current & WINDOW_MASK;
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let balance = if cur != 0 && cur >> BALANCE_BITS == tag {
                (cur & BALANCE_MASK) as i64 - BIAS
            } else {
                0
            };
            let balance = (balance + amount).clamp(1 - BIAS, BIAS - 1);
            let next = (tag << BALANCE_BITS) | (balance + BIAS) as u64;
            match slot.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    #[inline]
    fn window_of(&self, now: Instant) -> u64 {
        // Window numbers start at 1 so that a zero word always means an empty slot.
        now.saturating_duration_since(self.origin).as_nanos() as u64 / self.window + 1
    }
}

impl RetryBudget {
    /// Counts one request now.
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Takes one retry now if the balance allows it.
    pub fn withdraw(&self) -> bool {
        self.withdraw_at(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn min_per_sec_alone_allows_ttl_times_min() {
        let t0 = Instant::now();
        let b = RetryBudget::starting_at(t0, secs(10), 1, 0.0);
        let allowed = (0..50).filter(|_| b.withdraw_at(t0)).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn deposits_earn_their_ratio_and_expire_after_the_ttl() {
        let t0 = Instant::now();
        let b = RetryBudget::starting_at(t0, secs(10), 0, 0.2);
        for _ in 0..100 {
            b.deposit_at(t0);
        }
        // 20% of 100 requests.
        let allowed = (0..50).filter(|_| b.withdraw_at(t0 + secs(1))).count();
        assert_eq!(allowed, 20);
        for _ in 0..100 {
            b.deposit_at(t0 + secs(5));
        }
        // At 11 s the first 100 (and the 20 retries) have left the window, the second
        // 100 have not.
        let later = t0 + secs(11);
        let allowed = (0..50).filter(|_| b.withdraw_at(later)).count();
        assert_eq!(allowed, 20);
        // Everything has left the window.
        assert!(!b.withdraw_at(t0 + secs(30)));
    }

    #[test]
    fn ratios_above_one_use_thousandths() {
        let t0 = Instant::now();
        let b = RetryBudget::starting_at(t0, secs(10), 0, 2.0);
        for _ in 0..10 {
            b.deposit_at(t0);
        }
        let allowed = (0..50).filter(|_| b.withdraw_at(t0)).count();
        assert_eq!(allowed, 20);
    }

    proptest! {
        /// However deposits and withdrawals interleave in time, each decision is the one
        /// a plain model makes from the full history: the reserve plus the requests,
        /// less the retries, of the windows still within the ttl.
        #[test]
        fn decisions_match_the_model(
            ops in proptest::collection::vec((any::<bool>(), 0u64..3_000), 1..400),
            min_per_sec in 0u32..3,
        ) {
            let t0 = Instant::now();
            let b = RetryBudget::starting_at(t0, secs(10), min_per_sec, 0.2);
            let window_of = |t: Instant| (t - t0).as_nanos() as u64 / 1_000_000_000 + 1;
            let mut now = t0;
            let mut events: Vec<(u64, i64)> = Vec::new();
            for (deposit, step_ms) in ops {
                now += Duration::from_millis(step_ms);
                let current = window_of(now);
                if deposit {
                    b.deposit_at(now);
                    events.push((current, 1));
                    continue;
                }
                let balance: i64 = i64::from(min_per_sec) * 10 * 5
                    + events
                        .iter()
                        .filter(|(w, _)| current - w < SLOTS as u64)
                        .map(|(_, amount)| amount)
                        .sum::<i64>();
                let allowed = b.withdraw_at(now);
                prop_assert_eq!(allowed, balance >= 5, "balance {}", balance);
                if allowed {
                    events.push((current, -5));
                }
            }
        }
    }
}
