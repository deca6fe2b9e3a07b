//! At most one notification per key (an event and its agent) in an interval.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// Above this many keys, those outside the interval are forgotten (keys are bounded by
/// the config's agents, but a reload may remove some).
const PRUNE_ABOVE: usize = 1024;

/// Admits one notification per key per `every`; the others are skipped.
#[derive(Debug)]
pub(crate) struct MinInterval<K> {
    every: Duration,
    last: HashMap<K, Instant>,
}

impl<K: Hash + Eq> MinInterval<K> {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            last: HashMap::new(),
        }
    }

    /// Whether a notification for `key` may go out at `now` (then it is counted).
    pub(crate) fn admit(&mut self, key: K, now: Instant) -> bool {
        if let Some(at) = self.last.get(&key) {
            if now.saturating_duration_since(*at) < self.every {
                return false;
            }
        }
        if self.last.len() >= PRUNE_ABOVE {
            let every = self.every;
            self.last
                .retain(|_, at| now.saturating_duration_since(*at) < every);
        }
        self.last.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_per_key_per_interval() {
        let mut gate = MinInterval::new(Duration::from_secs(60));
        let start = Instant::now();
        assert!(gate.admit(("opened", "nlp"), start));
        assert!(!gate.admit(("opened", "nlp"), start + Duration::from_secs(59)));
        // Other keys are counted apart.
        assert!(gate.admit(("opened", "data"), start + Duration::from_secs(1)));
        assert!(gate.admit(("closed", "nlp"), start + Duration::from_secs(1)));
        // A skipped one does not push the interval back.
        assert!(gate.admit(("opened", "nlp"), start + Duration::from_secs(60)));
        assert!(!gate.admit(("opened", "nlp"), start + Duration::from_secs(119)));
        assert!(gate.admit(("opened", "nlp"), start + Duration::from_secs(120)));
    }

    #[tokio::test(start_paused = true)]
    async fn old_keys_are_forgotten_when_there_are_many() {
        let mut gate = MinInterval::new(Duration::from_secs(1));
        let start = Instant::now();
        for n in 0..PRUNE_ABOVE {
            assert!(gate.admit(n, start));
        }
        assert!(gate.admit(PRUNE_ABOVE, start + Duration::from_secs(2)));
        assert_eq!(gate.last.len(), 1);
    }
}
