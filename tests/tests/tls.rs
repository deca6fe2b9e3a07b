//! SPEC §6 items 1, 3 and 4 through the gateway, on loopback with a private CA made at
//! test time: pipeline and proxy to HTTPS agents, an untrusted certificate (502, kind
//! `tls`, no plaintext attempt), an agent that requires mTLS, an HTTP/2 agent that the
//! breaker, retries and metrics treat as an HTTP/1.1 one, and the public listener
//! serving HTTPS and WSS.

use std::sync::Arc;
use std::time::Duration;

use agentgate_e2e::{base_config, mock, send_https, EchoServer, Gateway};
use agentgate_mock_agent::{Behavior, MockAgent};
use agentgate_tls::test_util::TestPki;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];

/// `[agents.NAME]` at `url` with `extra` lines, and its `tls` table trusting `pki`'s
/// CA with `tls_extra` lines.
fn agent(name: &str, url: &str, pki: &TestPki, extra: &str, tls_extra: &str) -> String {
    format!(
        "[agents.{name}]\nurl = {url:?}\n{extra}\n[agents.{name}.tls]\nca_file = {:?}\n{tls_extra}\n",
        pki.ca_file()
    )
}

/// `[pipelines.NAME]` with one stage calling `agent`.
fn pipeline(name: &str, agent: &str) -> String {
    format!(
        "[pipelines.{name}]\n[[pipelines.{name}.stages]]\nname = \"s\"\nagent = \"{agent}\"\npath = \"/process\"\n"
    )
}

async fn query(gw: &Gateway, pipeline: &str) -> (StatusCode, Value) {
    let body = json!({"query": "hi", "pipeline": pipeline});
    let answer = gw.post_json("/api/query", &body).await;
    (answer.status, answer.json())
}

/// The value of one Prometheus series on the admin routes (0 when absent).
async fn metric(gw: &Gateway, series: &str) -> f64 {
    let text = gw.call_admin("GET", "/metrics", &[], "").await.body;
    let text = String::from_utf8_lossy(&text).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn pipeline_and_proxy_reach_an_https_agent_with_a_private_ca() {
    let pki = TestPki::new();
    let cert = pki.server(&["127.0.0.1"]);
    let nlp = MockAgent::start_tls(
        Behavior {
            name: "nlp".into(),
            ..Behavior::default()
        },
        pki.server_config(&cert, H2_H1),
    )
    .await
    .unwrap();
    assert!(nlp.url().starts_with("https://"));
    let toml = format!(
        "{}{}{}",
        base_config("", "5s"),
        agent("nlp", &nlp.url(), &pki, "", ""),
        pipeline("default", "nlp")
    );
    let gw = Gateway::start(&toml).await;
    let (status, record) = query(&gw, "default").await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["result"]["s"]["output"]["stage"], "s");
    let proxied = gw.call("POST", "/agents/nlp/process", &[], "{}").await;
    assert_eq!(proxied.status, 200);
    assert_eq!(proxied.json()["path"], "/process");
    assert_eq!(nlp.stats().ok, 2);
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_502_of_kind_tls_and_nothing_goes_out_in_plaintext() {
    let (pki, stranger) = (TestPki::new(), TestPki::new());
    let cert = stranger.server(&["127.0.0.1"]);
    let echo =
        EchoServer::start_tls(stranger.server_config(&cert, H2_H1), |_| StatusCode::OK).await;
    let toml = format!(
        "{}{}{}",
        base_config("", "5s"),
        agent("stranger", &echo.url(), &pki, "", ""),
        pipeline("default", "stranger")
    );
    let gw = Gateway::start(&toml).await;

    let (status, record) = query(&gw, "default").await;
    assert_eq!(status, 502, "{record}");
    assert_eq!(record["error"]["kind"], "tls", "{record}");
    let attempts = record["stages"][0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "class connect is retried: {record}");
    assert!(attempts.iter().all(|a| a["error"] == "tls"), "{record}");

    let proxied = gw.call("GET", "/agents/stranger/x", &[], "").await;
    assert_eq!(proxied.status, 502);
    assert_eq!(proxied.json()["error"]["kind"], "tls");
    assert_eq!(echo.hits(), 0);
    assert_eq!(echo.plaintext_connections(), 0);
    // Counted as failures of the agent, per attempt.
    let failures = r#"agentgate_agent_requests_total{agent="stranger",outcome="failure"}"#;
    assert_eq!(metric(&gw, failures).await, 4.0);
}

#[tokio::test]
async fn an_agent_that_requires_mtls_gets_the_client_certificate() {
    let pki = TestPki::new();
    let cert = pki.server(&["127.0.0.1"]);
    let agent_tls = pki.server_config_requiring_client_cert(&cert, H2_H1);
    let secure = MockAgent::start_tls(Behavior::default(), agent_tls)
        .await
        .unwrap();
    let id = pki.client("agentgate");
    let with_cert = format!(
        "client_cert_file = {:?}\nclient_key_file = {:?}\n",
        id.cert_file, id.key_file
    );
    let toml = format!(
        "{}{}{}{}{}",
        base_config("", "5s"),
        agent("mtls", &secure.url(), &pki, "", &with_cert),
        agent("anonymous", &secure.url(), &pki, "", ""),
        pipeline("with_cert", "mtls"),
        pipeline("without", "anonymous"),
    );
    let gw = Gateway::start(&toml).await;
    let (status, record) = query(&gw, "with_cert").await;
    assert_eq!(status, 200, "{record}");
    let (status, record) = query(&gw, "without").await;
    assert_eq!(
        (status, &record["error"]["kind"]),
        (StatusCode::BAD_GATEWAY, &json!("tls")),
        "{record}"
    );
    let proxied = gw.call("GET", "/agents/anonymous/x", &[], "").await;
    assert_eq!(
        (proxied.status, proxied.json()["error"]["kind"].clone()),
        (StatusCode::BAD_GATEWAY, json!("tls"))
    );
    assert_eq!(secure.stats().ok, 1);
}

/// The same script against an agent spoken to over HTTP/1.1 and one over HTTP/2: one
/// success, then 503s until the breaker opens. Statuses, attempts, the breaker and the
/// metrics must not tell the two apart.
#[tokio::test]
async fn an_h2_agent_gets_the_same_breaker_retries_and_metrics_as_an_http1_one() {
    let pki = TestPki::new();
    let cert = pki.server(&["127.0.0.1"]);
    let script = |n: usize| match n {
        0 => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let h1 = EchoServer::start_tls(pki.server_config(&cert, H2_H1), script).await;
    let h2 = EchoServer::start_tls(pki.server_config(&cert, H2_H1), script).await;
    let breaker = "[agents.{}.circuit_breaker]\nconsecutive_failures = 4\n";
    let toml = format!(
        "{}{}{}{}{}",
        base_config("", "5s"),
        agent("par_h1", &h1.url(), &pki, "http_version = \"1.1\"", ""),
        breaker.replace("{}", "par_h1"),
        agent("par_h2", &h2.url(), &pki, "http_version = \"2\"", ""),
        breaker.replace("{}", "par_h2"),
    );
    let gw = Gateway::start(&toml).await;
    let mut seen = Vec::new();
    for (name, version) in [("par_h1", "HTTP/1.1"), ("par_h2", "HTTP/2.0")] {
        let mut answers = Vec::new();
        for i in 0..4 {
            let res = gw.call("GET", &format!("/agents/{name}/p"), &[], "").await;
            if i == 0 {
                assert_eq!(res.json()["version"], version, "{name}");
            }
            let attempts = res
                .headers
                .get("x-agentgate-attempts")
                .map(|v| v.to_str().unwrap().to_owned());
            let kind = serde_json::from_slice::<Value>(&res.body)
                .ok()
                .map(|b| b["error"]["kind"].clone());
            answers.push((res.status, attempts, kind));
        }
        let state = gw.state.agent(name).unwrap().breaker().snapshot().state;
        let mut figures = vec![];
        for outcome in ["success", "failure", "rejected"] {
            let series =
                format!(r#"agentgate_agent_requests_total{{agent="{name}",outcome="{outcome}"}}"#);
            figures.push(metric(&gw, &series).await);
        }
        figures.push(
            metric(
                &gw,
                &format!(r#"agentgate_agent_retries_total{{agent="{name}"}}"#),
            )
            .await,
        );
        seen.push((answers, format!("{state:?}"), figures));
    }
    assert_eq!(seen[0], seen[1]);
    let (answers, state, figures) = &seen[0];
    assert_eq!(answers[0].0, 200);
    assert_eq!(
        (answers[1].0, answers[1].1.as_deref()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("2"))
    );
    assert_eq!(answers[3].2, Some(json!("circuit_open")), "{answers:?}");
    assert_eq!(state, "Open");
    assert_eq!(figures, &[1.0, 4.0, 1.0, 2.0]);
    assert_eq!((h1.hits(), h2.hits()), (5, 5));
}

#[tokio::test]
async fn the_public_listener_serves_https_and_wss_with_the_same_routes() {
    let pki = TestPki::new();
    let cert = pki.server(&["127.0.0.1"]);
    let nlp = mock("nlp", |_| {}).await;
    let echo = EchoServer::start(|_| StatusCode::OK).await;
    let server = format!(
        "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        cert.cert_file, cert.key_file
    );
    let toml = format!(
        "{}[agents.nlp]\nurl = {:?}\n[agents.echo]\nurl = {:?}\n{}",
        base_config(&server, "5s"),
        nlp.url(),
        echo.url(),
        pipeline("default", "nlp"),
    );
    let gw = Gateway::start(&toml).await;
    let https = |path: &str| format!("https://{}{path}", gw.addr);

    let health = send_https(pki.ca_file(), "GET", &https("/healthz"), &[], "").await;
    assert_eq!(
        (health.status, health.version),
        (StatusCode::OK, http::Version::HTTP_2)
    );
    let body = json!({"query": "hi"}).to_string();
    let answer = send_https(
        pki.ca_file(),
        "POST",
        &https("/api/query"),
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let query_id = answer.json()["query_id"].as_str().unwrap().to_owned();
    let record = send_https(
        pki.ca_file(),
        "GET",
        &https(&format!("/api/query/{query_id}")),
        &[],
        "",
    )
    .await;
    assert_eq!(record.json()["status"], "completed");
    let proxied = send_https(pki.ca_file(), "GET", &https("/agents/echo/x"), &[], "").await;
    assert_eq!(proxied.json()["headers"]["x-forwarded-proto"], "https");

    // WSS: a WebSocket over TLS (HTTP/1.1 by ALPN) runs a query to its end.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut tls = agentgate_tls::ClientTlsConfig {
        ca_file: Some(pki.ca_file().to_owned()),
        ..Default::default()
    }
    .client_config()
    .unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = agentgate_tls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{}/ws", gw.addr), stream)
        .await
        .expect("WSS upgrade");
    ws.send(Message::text(
        json!({"type": "query", "query": "hi"}).to_string(),
    ))
    .await
    .unwrap();
    let mut types = Vec::new();
    while types.last().map(String::as_str) != Some("completed") {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame");
        if let Some(Ok(Message::Text(text))) = frame {
            let v: Value = serde_json::from_str(&text).unwrap();
            types.push(v["type"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        types.first().map(String::as_str),
        Some("accepted"),
        "{types:?}"
    );

    // Plain HTTP on the TLS listener is never served.
    let mut plain = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut got)).await;
    assert!(
        !got.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}
