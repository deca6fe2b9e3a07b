//! The agent client over TLS and HTTP/2 against real servers on loopback, with a
//! private CA made at test time: trust, refusal without a plaintext retry, mTLS, the
//! name verified, ALPN and prior knowledge, and the agent's headers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentgate_agent_client::{AgentBody, AgentClient, AgentConfig, HttpVersion};
use agentgate_classify::{classify_error, is_caused_by, FailureClass, TlsFailure};
use agentgate_config::Secret;
use agentgate_retry::{Jitter, RetryConfig};
use agentgate_tls::rustls::ServerConfig;
use agentgate_tls::test_util::TestPki;
use agentgate_tls::ClientTlsConfig;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// An agent that answers `{"version", "authorization", "x-team"}` as it received them,
/// over TLS when given a config (else plain, HTTP/1.1 or HTTP/2 by preface), and
/// counts connections that did not start with a TLS handshake record.
struct Agent {
    addr: SocketAddr,
    plaintext: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
}

impl Agent {
    async fn start(tls: Option<Arc<ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (plaintext, answered) = (Arc::<AtomicUsize>::default(), Arc::<AtomicUsize>::default());
        let (counted, answers) = (Arc::clone(&plaintext), Arc::clone(&answered));
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (tls, counted, answers) = (tls.clone(), counted.clone(), answers.clone());
                tokio::spawn(async move {
                    let mut first = [0u8; 1];
                    // 0x16: a TLS handshake record. Anything else is plaintext HTTP.
                    if stream.peek(&mut first).await.unwrap_or(0) == 1 && first[0] != 0x16 {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = TlsAcceptor::from(tls).accept(stream).await {
                                serve(stream, answers).await;
                            }
                        }
                        None => serve(stream, answers).await,
                    }
                });
            }
        });
        Self {
            addr,
            plaintext,
            answered,
        }
    }

    fn url(&self, scheme: &str) -> http::Uri {
        format!("{scheme}://{}", self.addr).parse().unwrap()
    }
}

async fn serve<I>(io: I, answered: Arc<AtomicUsize>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        answered.fetch_add(1, Ordering::SeqCst);
        let header = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let body = serde_json::json!({
            "version": format!("{:?}", req.version()),
            "authorization": header("authorization"),
            "x-team": header("x-team"),
        });
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .unwrap(),
            )
        }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

fn config(url: http::Uri, tls: ClientTlsConfig) -> AgentConfig {
    AgentConfig {
        tls,
        timeout: Duration::from_secs(5),
        retry: RetryConfig {
            max_attempts: 2,
            base_delay: Duration::from_millis(1),
            jitter: Jitter::None,
            budget_min_per_sec: 100,
            ..RetryConfig::default()
        },
        ..AgentConfig::new(url)
    }
}

fn trusting(pki: &TestPki) -> ClientTlsConfig {
    ClientTlsConfig {
        ca_file: Some(pki.ca_file().to_owned()),
        ..ClientTlsConfig::default()
    }
}

async fn call(client: &AgentClient) -> Result<serde_json::Value, tower::BoxError> {
    let req = Request::post("/process")
        .header("content-type", "application/json")
        .body(AgentBody::from(Bytes::from_static(b"{}")))
        .unwrap();
    Ok(client.call_json(req).await?.into_body())
}

async fn body_of(res: Response<Incoming>) -> serde_json::Value {
    serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

#[tokio::test]
async fn https_with_a_private_ca_speaks_h2_or_http1_by_alpn() {
    let pki = TestPki::new();
    let cert = pki.server(&["localhost", "127.0.0.1"]);
    let both = Agent::start(Some(pki.server_config(&cert, &[b"h2", b"http/1.1"]))).await;
    let http1_only = Agent::start(Some(pki.server_config(&cert, &[b"http/1.1"]))).await;
    let cases = [
        (&both, HttpVersion::Auto, "HTTP/2.0"),
        (&both, HttpVersion::Http2, "HTTP/2.0"),
        (&both, HttpVersion::Http1, "HTTP/1.1"),
        (&http1_only, HttpVersion::Auto, "HTTP/1.1"),
    ];
    for (agent, version, want) in cases {
        let mut config = config(agent.url("https"), trusting(&pki));
        config.http_version = version;
        let client = AgentClient::new("tls", config).unwrap();
        let answer = call(&client).await.unwrap();
        assert_eq!(answer["version"], want, "{version}");
    }
    // Through the streaming (proxy) stack too.
    let client = AgentClient::new("tls", config(both.url("https"), trusting(&pki))).unwrap();
    let res = client
        .send(Request::get("/x").body(AgentBody::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(body_of(res).await["version"], "HTTP/2.0");
}

#[tokio::test]
async fn an_untrusted_certificate_fails_as_tls_and_never_falls_back_to_plaintext() {
    let (pki, stranger) = (TestPki::new(), TestPki::new());
    let cert = stranger.server(&["127.0.0.1"]);
    let agent = Agent::start(Some(stranger.server_config(&cert, &[b"http/1.1"]))).await;
    let client = AgentClient::new("tls", config(agent.url("https"), trusting(&pki))).unwrap();
    let err = call(&client).await.unwrap_err();
    assert!(is_caused_by::<TlsFailure>(&*err), "{err:?}");
    assert_eq!(classify_error(&*err), FailureClass::Connect);
    assert!(
        err.to_string().contains("tls: invalid peer certificate"),
        "{err}"
    );
    // retry_on has "connect": both attempts tried TLS, neither spoke plain HTTP.
    assert_eq!(client.stats().requests, 2);
    assert_eq!(agent.plaintext.load(Ordering::SeqCst), 0);
    assert_eq!(agent.answered.load(Ordering::SeqCst), 0);
    assert!(client.stats().failures >= 2);
    // The count works: an http:// client to the same port is seen speaking plaintext.
    let plain = AgentClient::new("plain", config(agent.url("http"), trusting(&pki))).unwrap();
    assert!(call(&plain).await.is_err());
    assert!(agent.plaintext.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn mtls_presents_the_client_certificate_and_fails_as_tls_without_one() {
    let pki = TestPki::new();
    let cert = pki.server(&["127.0.0.1"]);
    let agent = Agent::start(Some(
        pki.server_config_requiring_client_cert(&cert, &[b"h2", b"http/1.1"]),
    ))
    .await;
    let without = AgentClient::new("mtls", config(agent.url("https"), trusting(&pki))).unwrap();
    let err = call(&without).await.unwrap_err();
    assert!(is_caused_by::<TlsFailure>(&*err), "{err:?}");
    assert_eq!(agent.answered.load(Ordering::SeqCst), 0);

    let id = pki.client("gateway");
    let with = ClientTlsConfig {
        client_cert_file: Some(id.cert_file.clone()),
        client_key_file: Some(id.key_file.clone()),
        ..trusting(&pki)
    };
    let with = AgentClient::new("mtls", config(agent.url("https"), with)).unwrap();
    assert_eq!(call(&with).await.unwrap()["version"], "HTTP/2.0");
}

#[tokio::test]
async fn server_name_is_the_name_verified() {
    let pki = TestPki::new();
    // Reached by IP address, certified under a DNS name only.
    let cert = pki.server(&["agent.internal"]);
    let agent = Agent::start(Some(pki.server_config(&cert, &[b"http/1.1"]))).await;
    let by_ip = AgentClient::new("named", config(agent.url("https"), trusting(&pki))).unwrap();
    let err = call(&by_ip).await.unwrap_err();
    assert!(is_caused_by::<TlsFailure>(&*err), "{err:?}");
    let named = ClientTlsConfig {
        server_name: Some("agent.internal".into()),
        ..trusting(&pki)
    };
    let named = AgentClient::new("named", config(agent.url("https"), named)).unwrap();
    assert_eq!(call(&named).await.unwrap()["version"], "HTTP/1.1");
}

#[tokio::test]
async fn http_version_2_on_http_is_prior_knowledge() {
    let agent = Agent::start(None).await;
    let mut h2 = config(agent.url("http"), ClientTlsConfig::default());
    h2.http_version = HttpVersion::Http2;
    let h2 = AgentClient::new("h2c", h2).unwrap();
    assert_eq!(call(&h2).await.unwrap()["version"], "HTTP/2.0");
    let auto = AgentClient::new("h1", config(agent.url("http"), ClientTlsConfig::default()));
    assert_eq!(call(&auto.unwrap()).await.unwrap()["version"], "HTTP/1.1");
}

#[tokio::test]
async fn the_agents_headers_go_with_every_request_and_replace_the_callers() {
    let agent = Agent::start(None).await;
    let mut with_headers = config(agent.url("http"), ClientTlsConfig::default());
    with_headers.headers = [("authorization", "Bearer agent-key"), ("x-team", "nlp")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Secret::new(v.to_owned())))
        .collect();
    let client = AgentClient::new("creds", with_headers).unwrap();
    let answer = call(&client).await.unwrap();
    assert_eq!(
        (&answer["authorization"], &answer["x-team"]),
        (&"Bearer agent-key".into(), &"nlp".into())
    );
    // A proxied request's own credentials do not reach the agent.
    let proxied = Request::get("/x")
        .header("authorization", "Bearer client-key")
        .body(AgentBody::empty())
        .unwrap();
    let res = client.send(proxied).await.unwrap();
    assert_eq!(body_of(res).await["authorization"], "Bearer agent-key");
    let debug = format!("{client:?} {:?}", client.config());
    assert!(!debug.contains("agent-key"), "{debug}");
}
