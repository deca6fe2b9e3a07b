//! Delay before retry *n*, exactly as SPEC §5 gives it. Pure: the RNG is an argument.

use std::time::Duration;

use rand::Rng;

use crate::Jitter;

/// The backoff schedule of one agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// `base_delay`.
    pub base: Duration,
    /// `max_delay`.
    pub max: Duration,
    /// The randomisation.
    pub jitter: Jitter,
}

impl Backoff {
    /// The nominal delay before retry `n` (1-based): `min(max, base · 2^(n-1))`.
    pub fn nominal(&self, n: u32) -> Duration {
        let shift = n.saturating_sub(1).min(63);
        let factor = 1u64 << shift;
        let nanos = (self.base.as_nanos() as u64).saturating_mul(factor);
        Duration::from_nanos(nanos).min(self.max)
    }

    /// The delay before retry `n` (1-based). `prev` is the previous delay (the first
    /// time: `base`), used by decorrelated jitter.
    pub fn delay<R: Rng + ?Sized>(&self, n: u32, prev: Duration, rng: &mut R) -> Duration {
        let v = self.nominal(n);
        match self.jitter {
            Jitter::None => v,
            Jitter::Full => uniform(rng, Duration::ZERO, v),
            Jitter::Equal => v / 2 + uniform(rng, Duration::ZERO, v / 2),
            Jitter::Decorrelated => {
                let hi = prev.saturating_mul(3).max(self.base);
                uniform(rng, self.base, hi).min(self.max)
            }
        }
    }
}

/// `U(lo, hi)` in whole nanoseconds (`lo` when the range is empty).
fn uniform<R: Rng + ?Sized>(rng: &mut R, lo: Duration, hi: Duration) -> Duration {
    let (lo, hi) = (lo.as_nanos() as u64, hi.as_nanos() as u64);
    if hi <= lo {
        return Duration::from_nanos(lo);
    }
    Duration::from_nanos(rng.random_range(lo..=hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    const MS: Duration = Duration::from_millis(1);

    fn backoff(jitter: Jitter) -> Backoff {
        Backoff {
            base: 100 * MS,
            max: 1000 * MS,
            jitter,
        }
    }

    #[test]
    fn nominal_doubles_and_caps() {
        let b = backoff(Jitter::None);
        let got: Vec<_> = (1..=6).map(|n| b.nominal(n).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.nominal(u32::MAX), 1000 * MS);
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(b.delay(3, 100 * MS, &mut rng), 400 * MS);
    }

    #[test]
    fn each_jitter_spans_its_range() {
        // Over many draws each kind reaches near both ends of its range.
        let mut rng = SmallRng::seed_from_u64(2);
        let draws = |j: Jitter, n: u32, rng: &mut SmallRng| -> (Duration, Duration) {
            let b = backoff(j);
            let ds: Vec<_> = (0..2000).map(|_| b.delay(n, 300 * MS, rng)).collect();
            (*ds.iter().min().unwrap(), *ds.iter().max().unwrap())
        };
        let (lo, hi) = draws(Jitter::Full, 3, &mut rng); // [0, 400]
        assert!(
            lo < 10 * MS && hi > 390 * MS && hi <= 400 * MS,
            "{lo:?} {hi:?}"
        );
        let (lo, hi) = draws(Jitter::Equal, 3, &mut rng); // [200, 400]
        assert!(
            lo >= 200 * MS && lo < 210 * MS && hi > 390 * MS && hi <= 400 * MS,
            "{lo:?} {hi:?}"
        );
        let (lo, hi) = draws(Jitter::Decorrelated, 3, &mut rng); // [100, 900]
        assert!(
            lo >= 100 * MS && lo < 110 * MS && hi > 890 * MS && hi <= 900 * MS,
            "{lo:?} {hi:?}"
        );
    }

    proptest! {
        #[test]
        fn every_delay_lies_in_its_formula_range(
            base_ms in 0u64..5_000,
            extra_ms in 0u64..60_000,
            n in 1u32..80,
            prev_ms in 0u64..200_000,
            seed in any::<u64>(),
            kind in 0u8..4,
        ) {
            let jitter = [Jitter::Full, Jitter::Equal, Jitter::Decorrelated, Jitter::None][kind as usize];
            let ms = Duration::from_millis;
            let b = Backoff { base: ms(base_ms), max: ms(base_ms + extra_ms), jitter };
            let mut rng = SmallRng::seed_from_u64(seed);
            let prev = ms(prev_ms);
            let d = b.delay(n, prev, &mut rng);
            let v = b.nominal(n);
            prop_assert!(d <= b.max, "{d:?} > max");
            match jitter {
                Jitter::None => prop_assert_eq!(d, v),
                Jitter::Full => prop_assert!(d <= v),
                Jitter::Equal => prop_assert!(d >= v / 2 && d <= v),
                Jitter::Decorrelated => {
                    prop_assert!(d >= b.base.min(b.max));
                    prop_assert!(d <= prev.saturating_mul(3).max(b.base));
                }
            }
        }
    }
}
