//! The Prometheus series of SPEC §4 that the engine owns (its own test binary: the
//! recorder is process-global).

mod support;

use agentgate_pipeline::{describe_metrics, EngineSettings, QueryInput};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::json;
use support::{agent_config, engine, Agent, Reply};

#[tokio::test(start_paused = true)]
async fn queries_durations_and_fallbacks_are_counted_by_config_names() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let prom = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();
    describe_metrics();

    let ok = Agent::start(vec![Reply::Json(json!({}))]).await;
    let down = Agent::start(vec![Reply::Status(500)]).await;
    let s = engine(
        &[
            ("good", "[[stages]]\nname = \"s\"\nagent = \"ok\""),
            (
                "shaky",
                "[[stages]]\nname = \"nlp\"\nagent = \"down\"\nfallback = [ { static = 1 } ]\n\
                 [[stages]]\nname = \"last\"\nagent = \"down\"",
            ),
        ],
        vec![
            ("ok", agent_config(ok.url())),
            ("down", agent_config(down.url())),
        ],
        EngineSettings::default(),
    );
    let run = |p: &str| QueryInput {
        pipeline: Some(p.to_owned()),
        ..QueryInput::new("user text never becomes a label")
    };
    for p in ["good", "good", "shaky"] {
        s.engine.submit(run(p)).unwrap().finished().await;
    }

    let text = prom.render();
    let sample = |series: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == series).then(|| v.parse::<f64>().unwrap())
        })
    };
    assert_eq!(
        sample(r#"agentgate_queries_total{pipeline="good",outcome="completed"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(r#"agentgate_queries_total{pipeline="shaky",outcome="failed"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(r#"agentgate_queries_total{pipeline="good",outcome="cancelled"}"#),
        Some(0.0)
    );
    assert_eq!(
        sample(r#"agentgate_stage_fallbacks_total{pipeline="shaky",stage="nlp"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(r#"agentgate_stage_fallbacks_total{pipeline="shaky",stage="last"}"#),
        Some(0.0)
    );
    assert_eq!(
        sample(r#"agentgate_query_duration_seconds_count{pipeline="good"}"#),
        Some(2.0)
    );
    assert!(text.contains("# HELP agentgate_queries_total"));
    assert!(!text.contains("never becomes"));
}
