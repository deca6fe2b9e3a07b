//! SPEC §6 item 2: an agent's `headers` reach it, with `${VAR}` from the environment,
//! and the secret in them appears nowhere else: not in the logs (everything, at
//! `trace`), `/metrics`, the JSON APIs, query records, the dashboard page, nor the
//! config's summary (`check`) or `Debug`. One test in its own binary: it sets an
//! environment variable and installs the process's log subscriber.

use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};

use agentgate_e2e::{base_config, Gateway};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

const SECRET: &str = "sk-e2e-5b1f0c9d7e";

/// Every log line of the process, as the fmt subscriber writes them.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// An agent that answers whether it got the key (`{"authorized": bool}`, never the key
/// itself), and 503 on `/fail`.
async fn key_checking_agent() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let bearer = format!("Bearer {SECRET}");
                    let authorized = req
                        .headers()
                        .get("authorization")
                        .is_some_and(|v| v == bearer.as_str())
                        && req.headers().get("x-api-key").is_some_and(|v| v == SECRET);
                    let status = match req.uri().path() {
                        "/fail" => StatusCode::SERVICE_UNAVAILABLE,
                        _ => StatusCode::OK,
                    };
                    let body = json!({ "authorized": authorized }).to_string();
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap(),
                    )
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agents_secret_reaches_it_and_appears_nowhere_else() {
    // Before any other thread of this binary reads the environment.
    std::env::set_var("AGENTGATE_E2E_SECRET", SECRET);
    let logs = Logs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("the only subscriber of this binary");

    let agent = key_checking_agent().await;
    let closed = agentgate_e2e::free_port();
    let headers = r#"headers = { authorization = "Bearer ${AGENTGATE_E2E_SECRET}", x-api-key = "${AGENTGATE_E2E_SECRET}" }"#;
    let toml = format!(
        r#"{}
[agents.llm]
url = "http://{agent}"
{headers}
[agents.down]
url = "http://127.0.0.1:{closed}"
{headers}
[agents.wrong_scheme]
url = "https://{agent}"
{headers}
[pipelines.default]
[[pipelines.default.stages]]
name = "answer"
agent = "llm"
path = "/complete"
[pipelines.failing]
[[pipelines.failing.stages]]
name = "flaky"
agent = "llm"
path = "/fail"
fallback = [ {{ agent = "down" }}, {{ agent = "wrong_scheme" }} ]
"#,
        base_config("", "5s")
    );
    let config = agentgate_gateway::Config::from_toml(&toml, "secrets.toml").unwrap();
    let mut seen = vec![
        ("summary (check)", config.summary()),
        ("config Debug", format!("{config:?}")),
    ];
    let gw = Gateway::start(&toml).await;

    let ok = gw.post_json("/api/query", &json!({"query": "hi"})).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(
        ok.json()["result"]["answer"]["authorized"],
        true,
        "the agent got the key"
    );
    let failing = json!({"query": "hi", "pipeline": "failing"});
    let failed = gw.post_json("/api/query", &failing).await;
    assert_eq!(failed.status, 502);
    let proxied = gw
        .call(
            "GET",
            "/agents/llm/x",
            &[("authorization", "Bearer client-key")],
            "",
        )
        .await;
    assert_eq!(
        proxied.json()["authorized"],
        true,
        "the agent's key replaces the client's"
    );
    let down = gw.call("GET", "/agents/down/x", &[], "").await;
    assert_eq!(down.status, 502);
    let tls = gw.call("GET", "/agents/wrong_scheme/x", &[], "").await;
    assert_eq!(tls.json()["error"]["kind"], "tls");

    for (what, answer) in [
        ("query answer", &ok),
        ("failed query answer", &failed),
        ("proxy answers", &proxied),
        ("502", &down),
        ("tls 502", &tls),
    ] {
        seen.push((what, String::from_utf8_lossy(&answer.body).into_owned()));
    }
    for id in [&ok.json()["query_id"], &failed.json()["query_id"]] {
        let record = gw
            .call(
                "GET",
                &format!("/api/query/{}", id.as_str().unwrap()),
                &[],
                "",
            )
            .await;
        seen.push((
            "query record",
            String::from_utf8_lossy(&record.body).into_owned(),
        ));
    }
    for path in [
        "/metrics",
        "/api/orchestration/metrics",
        "/api/orchestration/circuit-breakers",
        "/api/orchestration/health",
        "/dashboard",
    ] {
        let answer = gw.call_admin("GET", path, &[], "").await;
        assert_eq!(answer.status, 200, "{path}");
        seen.push((path, String::from_utf8_lossy(&answer.body).into_owned()));
    }
    let logged = logs.text();
    // The logs did capture the failures above (so their check below means something).
    assert!(
        logged.contains("TLS handshake with agent failed"),
        "{logged}"
    );
    seen.push(("logs", logged));

    for (what, text) in &seen {
        assert!(!text.is_empty(), "{what} is empty");
        assert!(
            !text.contains(SECRET),
            "the secret is in the {what}:\n{text}"
        );
    }
}
