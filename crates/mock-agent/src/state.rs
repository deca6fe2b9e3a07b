//! The state one agent's connections share: behavior, RNG, start time, counters.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::{rngs::SmallRng, SeedableRng};
use tokio::time::Instant;

use crate::fault::{self, Draws, Fault};
use crate::stats::{Counters, Stats};
use crate::{Behavior, BehaviorError};

/// Shared by the accept loop, every connection and the [`MockAgent`](crate::MockAgent).
#[derive(Debug)]
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    counters: Counters,
    /// Outage windows are measured from here.
    started: Instant,
}

#[derive(Debug)]
struct Inner {
    behavior: Behavior,
    rng: SmallRng,
}

/// Everything the handler needs to answer one request, decided up front.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) fault: Fault,
    pub(crate) delay: Duration,
    /// The behavior at decision time, so a concurrent `PUT /_mock` cannot mix two scripts
    /// within one answer.
    pub(crate) behavior: Behavior,
}

// === impl Shared ===

impl Shared {
    /// `behavior` must already be validated.
    pub(crate) fn new(behavior: Behavior) -> Self {
        let rng = rng_for(behavior.seed);
        Self {
            inner: Mutex::new(Inner { behavior, rng }),
            counters: Counters::default(),
            started: Instant::now(),
        }
    }

    pub(crate) fn behavior(&self) -> Behavior {
        self.lock().behavior.clone()
    }

    /// Validates and installs `next`. The RNG is re-seeded only when the seed changes, so a
    /// patch of other fields does not restart a seeded sequence.
    pub(crate) fn set_behavior(&self, next: Behavior) -> Result<(), BehaviorError> {
        next.validate()?;
        let mut inner = self.lock();
        if next.seed.is_some() && next.seed != inner.behavior.seed {
            inner.rng = rng_for(next.seed);
        }
        inner.behavior = next;
        Ok(())
    }

    pub(crate) fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Draws and decides the fate of one request, and counts its outcome.
    pub(crate) fn plan(&self) -> Plan {
        let since_start = Instant::now().saturating_duration_since(self.started);
        let plan = {
            let mut inner = self.lock();
            let draws = Draws::take(&mut inner.rng);
            let behavior = inner.behavior.clone();
            Plan {
                fault: fault::decide(&behavior, &draws, since_start),
                delay: fault::delay(&behavior, draws.jitter),
                behavior,
            }
        };
        self.counters.outcome(plan.fault);
        plan
    }

    /// The lock is only held for plain assignments and draws, so a poisoned lock still
    /// holds a consistent value; never panic because of it.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn rng_for(seed: Option<u64>) -> SmallRng {
    match seed {
        Some(seed) => SmallRng::seed_from_u64(seed),
        None => SmallRng::from_os_rng(),
    }
}
