//! The breaker's Prometheus series, read back from a real Prometheus exposition.

use std::convert::Infallible;
use std::time::Duration;

use agentgate_circuit_breaker::{describe_metrics, CircuitBreakerConfig, CircuitBreakerLayer};
use http::{Request, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower::{Layer, Service, ServiceExt};

/// The value of the series `name{labels}` (labels in exposition order), if present.
fn value(prom: &PrometheusHandle, series: &str) -> Option<f64> {
    prom.render().lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        (key == series).then(|| value.parse().expect("numeric sample"))
    })
}

fn one_hot(prom: &PrometheusHandle, agent: &str) -> Vec<&'static str> {
    ["closed", "open", "half_open", "forced_open", "disabled"]
        .into_iter()
        .filter(|s| {
            let v = value(
                prom,
                &format!("agentgate_circuit_breaker_state{{agent=\"{agent}\",state=\"{s}\"}}"),
            )
            .expect("every state is exported");
            assert!(v == 0.0 || v == 1.0, "{s} = {v}");
            v == 1.0
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn state_transitions_and_rejections_are_exported() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let prom = recorder.handle();
    metrics::set_global_recorder(recorder).expect("only recorder in this test binary");
    describe_metrics();

    let layer = CircuitBreakerLayer::builder("nlp")
        .config(CircuitBreakerConfig {
            consecutive_failures: 2,
            open_duration: Duration::from_secs(10),
            ..Default::default()
        })
        .open_jitter(0.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    assert_eq!(one_hot(&prom, "nlp"), ["closed"]);
    assert!(prom
        .render()
        .contains("# HELP agentgate_circuit_breaker_state "));

    let mut svc = layer.layer(tower::service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::builder().status(502).body(()).unwrap())
    }));
    for _ in 0..2 {
        svc.ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
    }
    assert_eq!(one_hot(&prom, "nlp"), ["open"]);
    let trips = r#"agentgate_circuit_breaker_transitions_total{agent="nlp",from="closed",to="open",reason="consecutive"}"#;
    assert_eq!(value(&prom, trips), Some(1.0));

    for _ in 0..3 {
        assert!(svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .is_err());
    }
    assert_eq!(
        value(
            &prom,
            r#"agentgate_circuit_breaker_rejected_total{agent="nlp"}"#
        ),
        Some(3.0)
    );

    tokio::time::advance(Duration::from_secs(10)).await;
    handle.snapshot();
    assert_eq!(one_hot(&prom, "nlp"), ["half_open"]);
    handle.force_open(None);
    assert_eq!(one_hot(&prom, "nlp"), ["forced_open"]);
    let manual = r#"agentgate_circuit_breaker_transitions_total{agent="nlp",from="half_open",to="forced_open",reason="manual"}"#;
    assert_eq!(value(&prom, manual), Some(1.0));
    handle.disable();
    assert_eq!(one_hot(&prom, "nlp"), ["disabled"]);
    handle.reset();
    assert_eq!(one_hot(&prom, "nlp"), ["closed"]);
}
