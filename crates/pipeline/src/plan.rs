//! A pipeline ready to run: its config, each stage's share of the progress bar, and its
//! metric series.

use crate::metrics::PipelineMetrics;
use crate::PipelineConfig;

/// One pipeline, prepared once when the engine is built.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) name: String,
    pub(crate) config: PipelineConfig,
    /// `(progress_start, progress_end)` of each stage.
    pub(crate) bounds: Vec<(u8, u8)>,
    pub(crate) metrics: PipelineMetrics,
}

impl Plan {
    pub(crate) fn new(name: String, config: PipelineConfig) -> Self {
        let weights: Vec<u32> = config.stages.iter().map(|s| s.weight).collect();
        Self {
            metrics: PipelineMetrics::new(&name, &config),
            bounds: progress_bounds(&weights),
            name,
            config,
        }
    }
}

/// Each stage's progress range from the stages' weights: a stage starts at
/// `100·(weights before it)/total` and ends at `100·(weights through it)/total`, rounded
/// down, so ranges never overlap or decrease and the last one ends at exactly 100. When
/// every weight is 0 the stages share the bar equally.
pub(crate) fn progress_bounds(weights: &[u32]) -> Vec<(u8, u8)> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let (weights, total): (Vec<u64>, u64) = if total == 0 {
        (vec![1; weights.len()], weights.len() as u64)
    } else {
        (weights.iter().map(|&w| u64::from(w)).collect(), total)
    };
    let pct = |sum: u64| (sum * 100 / total) as u8;
    let mut before = 0;
    weights
        .iter()
        .map(|w| {
            let start = pct(before);
            before += w;
            (start, pct(before))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_follow_weights_and_end_at_100() {
        assert_eq!(
            progress_bounds(&[30, 50, 20]),
            [(0, 30), (30, 80), (80, 100)]
        );
        assert_eq!(progress_bounds(&[1, 1, 1]), [(0, 33), (33, 66), (66, 100)]);
        assert_eq!(progress_bounds(&[0, 0]), [(0, 50), (50, 100)]);
        assert_eq!(progress_bounds(&[5, 0]), [(0, 100), (100, 100)]);
        assert_eq!(progress_bounds(&[u32::MAX, u32::MAX]), [(0, 50), (50, 100)]);
        assert!(progress_bounds(&[]).is_empty());
    }
}
