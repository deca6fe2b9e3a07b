//! Reloading the configuration (SPEC §9) end to end: the gateway started from a file,
//! the file rewritten, `POST /api/orchestration/reload`. A WebSocket client stays
//! connected and subscribed throughout, a running query finishes on the pipeline it
//! started with, breakers of unchanged agents keep their state, and an invalid file
//! changes nothing.

use std::path::PathBuf;
use std::time::Duration;

use agentgate_e2e::{base_config, EchoServer, Gateway};
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const TOKEN_ENV: &str = "AGENTGATE_TEST_RELOAD_TOKEN";
const TOKEN: &str = "reload-secret";

/// A config file of its own for each test.
fn config_file(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agentgate-reload-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("agentgate.toml")
}

/// Agents `held` (answers once released), `steady` and `tuned`; `stages` of the default
/// pipeline as `(name, agent)`; `tuned`'s breaker trips after `tuned_trip` failures.
fn config(agents: &[(&str, &EchoServer)], stages: &[(&str, &str)], tuned_trip: u32) -> String {
    let mut out = base_config(r#"admin_listen = "127.0.0.1:1""#, "10s");
    out.push_str(&format!("\n[admin]\ntoken_env = \"{TOKEN_ENV}\"\n"));
    for (name, server) in agents {
        out.push_str(&format!("\n[agents.{name}]\nurl = \"{}\"\n", server.url()));
        if *name == "tuned" {
            out.push_str(&format!(
                "[agents.tuned.circuit_breaker]\nconsecutive_failures = {tuned_trip}\n"
            ));
        }
    }
    out.push_str("\n[pipelines.default]\ndeadline = \"30s\"\n");
    for (name, agent) in stages {
        out.push_str(&format!(
            "[[pipelines.default.stages]]\nname = \"{name}\"\nagent = \"{agent}\"\npath = \"/{name}\"\n"
        ));
    }
    out
}

async fn admin(gw: &Gateway, path: &str) -> (StatusCode, Value) {
    let auth = format!("Bearer {TOKEN}");
    let res = gw
        .call_admin("POST", path, &[("authorization", &auth)], "")
        .await;
    (res.status, res.json())
}

async fn breaker_state(gw: &Gateway, agent: &str) -> Value {
    let res = gw
        .call_admin("GET", "/api/orchestration/circuit-breakers", &[], "")
        .await;
    res.json()[agent]["state"].clone()
}

/// Reads frames (text ones, as JSON) until one satisfies `wanted`, within 10 s.
async fn until_frame(ws: &mut Ws, wanted: impl Fn(&Value) -> bool) -> Value {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = ws.next().await {
            if let Message::Text(text) = frame.expect("the connection stays open") {
                let v: Value = serde_json::from_str(&text).unwrap();
                if wanted(&v) {
                    return v;
                }
            }
        }
        panic!("the connection closed");
    });
    found.await.expect("the frame within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_config_and_keeps_connections_queries_and_breakers() {
    std::env::set_var(TOKEN_ENV, TOKEN);
    let (held, steady, tuned, added) = (
        EchoServer::held().await,
        EchoServer::start(|_| StatusCode::OK).await,
        EchoServer::start(|_| StatusCode::OK).await,
        EchoServer::start(|_| StatusCode::OK).await,
    );
    let file = config_file("swap");
    let v1 = [("held", &held), ("steady", &steady), ("tuned", &tuned)];
    std::fs::write(&file, config(&v1, &[("first", "held")], 5)).unwrap();
    let gw = Gateway::start_file(&file).await;

    // A client submits a query over the WebSocket; it waits in `held`.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .expect("upgrade");
    let query = json!({"type": "query", "query": "q1", "request_id": "r1"});
    ws.send(Message::text(query.to_string())).await.unwrap();
    let accepted = until_frame(&mut ws, |v| v.get("seq").is_none()).await;
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    let running = accepted["query_id"].as_str().unwrap().to_owned();
    held.until_hits(1).await;
    // Operators forced two breakers open.
    for agent in ["steady", "tuned"] {
        let (status, _) = admin(
            &gw,
            &format!("/api/orchestration/circuit-breakers/{agent}/force-open"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }

    // The new file: another pipeline, `tuned` with another breaker key, `added` new.
    let v2 = [
        ("held", &held),
        ("steady", &steady),
        ("tuned", &tuned),
        ("added", &added),
    ];
    std::fs::write(&file, config(&v2, &[("second", "added")], 3)).unwrap();
    let (status, body) = admin(&gw, "/api/orchestration/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "reloaded");
    assert_eq!(body["file"], file.display().to_string());
    assert_eq!(
        body["agents"],
        json!({"added": ["added"], "removed": [], "kept": ["held", "steady"], "rebuilt": ["tuned"]})
    );
    assert_eq!(body["restart_required"], json!([]));

    // Unchanged agents keep their breaker state; a changed breaker starts closed.
    assert_eq!(breaker_state(&gw, "steady").await, "forced_open");
    assert_eq!(breaker_state(&gw, "tuned").await, "closed");
    assert_eq!(breaker_state(&gw, "added").await, "closed");

    // New queries run the new pipeline.
    let res = gw.post_json("/api/query", &json!({"query": "q2"})).await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    assert_eq!(res.json()["stages"][0]["name"], "second");

    // The connection is as it was: it answers, and the running query finishes on its
    // own pipeline, its events reaching the same client.
    ws.send(Message::text(json!({"type": "ping"}).to_string()))
        .await
        .unwrap();
    until_frame(&mut ws, |v| v["type"] == "pong").await;
    held.release(1);
    let terminal = ["completed", "failed", "cancelled"];
    let end = until_frame(&mut ws, |v| {
        v["query_id"] == running.as_str() && terminal.contains(&v["type"].as_str().unwrap_or(""))
    })
    .await;
    assert_eq!(end["type"], "completed", "{end}");
    assert!(end["result"].get("first").is_some(), "{end}");

    // An invalid file: 400 with where, and nothing changes.
    std::fs::write(&file, "[agents.broken]\nurl = 7\n").unwrap();
    let (status, body) = admin(&gw, "/api/orchestration/reload").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["kind"], "invalid_config");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("{}:2:7: agents.broken.url", file.display())),
        "{message}"
    );
    assert_eq!(breaker_state(&gw, "added").await, "closed");
    let res = gw.post_json("/api/query", &json!({"query": "q3"})).await;
    assert_eq!(res.json()["stages"][0]["name"], "second");

    let metrics = gw.call_admin("GET", "/metrics", &[], "").await;
    let text = String::from_utf8_lossy(&metrics.body);
    for result in ["ok", "error"] {
        let series = format!("agentgate_config_reloads_total{{result=\"{result}\"}}");
        assert!(text.contains(&series), "{series} missing from\n{text}");
    }
    drop(ws);
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_needs_the_admin_token_and_a_file() {
    std::env::set_var(TOKEN_ENV, TOKEN);
    let echo = EchoServer::start(|_| StatusCode::OK).await;
    let toml = config(&[("held", &echo)], &[("first", "held")], 5);
    let gw = Gateway::start(&toml).await;
    let res = gw
        .call_admin("POST", "/api/orchestration/reload", &[], "")
        .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    let res = gw
        .call_admin("GET", "/api/orchestration/reload", &[], "")
        .await;
    assert_eq!(res.status, StatusCode::METHOD_NOT_ALLOWED);
    // Started from a config in memory: nothing to re-read.
    let (status, body) = admin(&gw, "/api/orchestration/reload").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["kind"], "reload_unavailable");
}

/// Whether a TLS handshake with the gateway's public listener succeeds when only `ca`
/// is trusted.
async fn trusts(gw: &Gateway, ca: &std::path::Path) -> bool {
    let tls = agentgate_tls::ClientTlsConfig {
        ca_file: Some(ca.to_owned()),
        ..Default::default()
    }
    .client_config()
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let name = agentgate_tls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reads_the_listener_certificate_again() {
    std::env::set_var(TOKEN_ENV, TOKEN);
    let (old_ca, new_ca) = (
        agentgate_tls::test_util::TestPki::new(),
        agentgate_tls::test_util::TestPki::new(),
    );
    let echo = EchoServer::start(|_| StatusCode::OK).await;
    let file = config_file("tls");
    let with_cert = |pki: &agentgate_tls::test_util::TestPki| {
        let cert = pki.server(&["127.0.0.1"]);
        let tls = format!(
            "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            cert.cert_file, cert.key_file
        );
        config(&[("held", &echo)], &[("first", "held")], 5).replacen(
            "[admin]",
            &format!("{tls}\n[admin]"),
            1,
        )
    };
    std::fs::write(&file, with_cert(&old_ca)).unwrap();
    let gw = Gateway::start_file(&file).await;
    assert!(trusts(&gw, old_ca.ca_file()).await);
    assert!(!trusts(&gw, new_ca.ca_file()).await);

    // The certificate is renewed (by another CA here, to tell them apart).
    std::fs::write(&file, with_cert(&new_ca)).unwrap();
    let (status, body) = admin(&gw, "/api/orchestration/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["restart_required"], json!([]));
    assert!(
        trusts(&gw, new_ca.ca_file()).await,
        "new connections get the new certificate"
    );
    assert!(!trusts(&gw, old_ca.ca_file()).await);

    // Without [server.tls], the listener stays HTTPS until a restart.
    let plain = config(&[("held", &echo)], &[("first", "held")], 5);
    std::fs::write(&file, plain).unwrap();
    let (status, body) = admin(&gw, "/api/orchestration/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["restart_required"], json!(["server.tls"]));
    assert!(trusts(&gw, new_ca.ca_file()).await);
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_clients_and_their_keys() {
    std::env::set_var(TOKEN_ENV, TOKEN);
    std::env::set_var("AGENTGATE_TEST_RELOAD_KEY_A", "key-of-a");
    std::env::set_var("AGENTGATE_TEST_RELOAD_KEY_B", "key-of-b");
    let echo = EchoServer::start(|_| StatusCode::OK).await;
    let file = config_file("clients");
    let with_clients = |names: &[&str]| {
        let mut out = config(&[("held", &echo)], &[("first", "held")], 5);
        out.push_str("\n[auth]\nmode = \"api_key\"\n");
        for name in names {
            let env = format!("AGENTGATE_TEST_RELOAD_KEY_{}", name.to_uppercase());
            out.push_str(&format!(
                "[[auth.clients]]\nname = \"team-{name}\"\nkey_env = \"{env}\"\n"
            ));
        }
        out
    };
    std::fs::write(&file, with_clients(&["a"])).unwrap();
    let gw = Gateway::start_file(&file).await;
    let query = |key: &'static str| {
        let gw = &gw;
        async move {
            let headers = [("content-type", "application/json"), ("x-api-key", key)];
            let body = json!({"query": "q"}).to_string();
            gw.call("POST", "/api/query", &headers, body).await.status
        }
    };
    assert_eq!(query("key-of-a").await, StatusCode::OK);
    assert_eq!(query("key-of-b").await, StatusCode::UNAUTHORIZED);

    std::fs::write(&file, with_clients(&["b"])).unwrap();
    let (status, body) = admin(&gw, "/api/orchestration/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(query("key-of-b").await, StatusCode::OK);
    assert_eq!(query("key-of-a").await, StatusCode::UNAUTHORIZED);
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}
