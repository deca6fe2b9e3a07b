//! Query metrics (SPEC §4): `agentgate_queries_total{pipeline,outcome}`,
//! `agentgate_query_duration_seconds{pipeline}`, `agentgate_stage_fallbacks_total{pipeline,stage}`.
//!
//! Every series is registered when the engine is built, from config names only, so
//! request data never becomes a label. Install the recorder before building the engine.

use std::time::Duration;

use metrics::{Counter, Histogram};

use crate::{PipelineConfig, QueryStatus};

const QUERIES: &str = "agentgate_queries_total";
const DURATION: &str = "agentgate_query_duration_seconds";
const FALLBACKS: &str = "agentgate_stage_fallbacks_total";
const CLIENT_QUERIES: &str = "agentgate_client_queries_total";

/// Registers help texts for the query metrics with the installed recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        QUERIES,
        "Queries finished, by pipeline and outcome (completed, failed, cancelled)"
    );
    metrics::describe_histogram!(
        DURATION,
        metrics::Unit::Seconds,
        "Duration of completed and failed queries, submit to end"
    );
    metrics::describe_counter!(
        CLIENT_QUERIES,
        "Queries finished, by client (SPEC §7) and outcome (completed, failed, cancelled)"
    );
    metrics::describe_counter!(
        FALLBACKS,
        "Fallbacks taken by a stage (each agent or static fallback tried)"
    );
}

/// The series of one pipeline.
#[derive(Debug)]
pub(crate) struct PipelineMetrics {
    completed: Counter,
    failed: Counter,
    cancelled: Counter,
    duration: Histogram,
    /// One per stage, in order.
    fallbacks: Vec<Counter>,
}

impl PipelineMetrics {
    pub(crate) fn new(pipeline: &str, config: &PipelineConfig) -> Self {
        let outcome = |o: &'static str| metrics::counter!(QUERIES, "pipeline" => pipeline.to_owned(), "outcome" => o);
        Self {
            completed: outcome("completed"),
            failed: outcome("failed"),
            cancelled: outcome("cancelled"),
            duration: metrics::histogram!(DURATION, "pipeline" => pipeline.to_owned()),
            fallbacks: config
                .stages
                .iter()
                .map(|s| {
                    metrics::counter!(FALLBACKS, "pipeline" => pipeline.to_owned(), "stage" => s.name.clone())
                })
                .collect(),
        }
    }

    pub(crate) fn finished(&self, status: QueryStatus, duration: Duration) {
        match status {
            QueryStatus::Completed => self.completed.increment(1),
            QueryStatus::Failed => self.failed.increment(1),
            QueryStatus::Cancelled => {
                self.cancelled.increment(1);
                return;
            }
            QueryStatus::Running => return,
        }
        self.duration.record(duration.as_secs_f64());
    }

    pub(crate) fn fallback(&self, stage: usize) {
        if let Some(c) = self.fallbacks.get(stage) {
            c.increment(1);
        }
    }
}

/// A query of `client` ended (`agentgate_client_queries_total{client,outcome}`). Client
/// names come from the config, so the series are bounded.
pub(crate) fn client_finished(client: &str, status: QueryStatus) {
    metrics::counter!(CLIENT_QUERIES, "client" => client.to_owned(), "outcome" => status.as_str())
        .increment(1);
}
