//! `/dashboard` (SPEC §4) in a real headless Chromium, driven through chromedriver
//! (WebDriver) with fantoccini: the page loads from the admin listener, shows a tile
//! for every configured agent, follows a running query, and a tile turns `open` when
//! its agent fails.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/test.sh` installs them).
//! Without them this test fails: it is never skipped.
//!
//! `AGENTGATE_DASHBOARD_SCREENSHOT=docs/dashboard.png` saves the final screenshot there.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentgate_e2e::{base_config, free_port, mock, post_json, send, Gateway};
use agentgate_mock_agent::{Behavior, MockAgent};
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use http::StatusCode;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Long enough for a loaded 2-core machine; every wait ends as soon as it is met.
const WAIT: Duration = Duration::from_secs(20);

/// chromedriver on a free loopback port; killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Self {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: install Debian's chromium and chromium-driver \
                 (scripts/test.sh does)"
            );
        }
        let port = free_port();
        // Its own process group, so that dropping the driver also ends the browser it
        // started, even when a failed test never closed its session.
        let child = Command::new(CHROMEDRIVER)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        Self { child, port }
    }

    /// A browser session, once chromedriver answers.
    async fn session(&self) -> Client {
        let mut caps = Capabilities::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1000",
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{}", self.port);
        let mut last = None;
        for _ in 0..100 {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => return client,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no WebDriver session from chromedriver at {url}: {last:?}");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn gateway(nlp: &MockAgent, data: &MockAgent, viz: &MockAgent) -> Gateway {
    let defaults = base_config("admin_listen = \"127.0.0.1:1\"", "2s");
    Gateway::start(&format!(
        r#"{defaults}
[agents.nlp]
url = "{}"
[agents.nlp.circuit_breaker]
consecutive_failures = 3
open_duration = "30s"
[agents.data]
url = "{}"
[agents.viz]
url = "{}"

[pipelines.default]
deadline = "30s"
[[pipelines.default.stages]]
name = "nlp_processing"
agent = "nlp"
[[pipelines.default.stages]]
name = "data_retrieval"
agent = "data"
[[pipelines.default.stages]]
name = "visualization"
agent = "viz"
"#,
        nlp.url(),
        data.url(),
        viz.url()
    ))
    .await
}

/// The `data-state` of `agent`'s tile once it equals `want` (or the test fails).
async fn wait_for_tile(browser: &Client, agent: &str, want: &str) -> fantoccini::elements::Element {
    browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(&format!(
            r#".tile[data-agent="{agent}"][data-state="{want}"]"#
        )))
        .await
        .unwrap_or_else(|e| panic!("tile of `{agent}` never became {want}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_every_agent_live_queries_and_a_tile_turning_open() {
    let nlp = mock("nlp", |_| {}).await;
    let data = mock("data", |_| {}).await;
    // A slow last stage keeps queries running long enough to be seen.
    let viz = mock("viz", |b| b.latency = Duration::from_millis(1500)).await;
    let gw = gateway(&nlp, &data, &viz).await;

    let driver = Driver::start();
    let browser = driver.session().await;
    browser
        .goto(&gw.admin_url("/dashboard"))
        .await
        .expect("page loads");
    assert_eq!(browser.title().await.unwrap(), "agentgate dashboard");

    // Every configured agent has a tile, closed, and the feed is live.
    for agent in ["nlp", "data", "viz"] {
        wait_for_tile(&browser, agent, "closed").await;
    }
    let tiles = browser.find_all(Locator::Css(".tile")).await.unwrap();
    assert_eq!(tiles.len(), 3);
    browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#conn.up"))
        .await
        .expect("the WebSocket feed is up");

    // A running query appears with its progress bar, and ends completed.
    let accepted = send(
        "POST",
        &gw.url("/api/query"),
        &[
            ("content-type", "application/json"),
            ("prefer", "respond-async"),
        ],
        r#"{"query":"show sales by region"}"#,
    )
    .await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED);
    let id = accepted.json()["query_id"].as_str().unwrap().to_owned();
    let row = format!(r#"#live tr[data-query="{id}"]"#);
    browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(&row))
        .await
        .expect("the running query is listed");
    let done = browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(&format!(r#"{row}[data-status="completed"]"#)))
        .await
        .expect("the query is shown completed");
    assert!(done.text().await.unwrap().contains("100%"));

    // nlp starts failing; three failed calls trip its breaker, and its tile turns open.
    nlp.set_behavior(Behavior {
        name: "nlp".into(),
        error_rate: 1.0,
        ..Behavior::default()
    })
    .unwrap();
    for _ in 0..3 {
        let res = post_json(&gw.url("/agents/nlp/process"), &json!({"q": 1})).await;
        assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let tile = wait_for_tile(&browser, "nlp", "open").await;
    let text = tile.text().await.unwrap();
    assert!(text.contains("OPEN"), "{text}");
    assert!(text.contains("tripped: consecutive"), "{text}");
    // The time left comes with the next metrics frame, and counts down.
    let left = |text: String| -> Option<f64> {
        let (before, _) = text.split_once(" s left")?;
        before.rsplit(' ').next()?.parse().ok()
    };
    let mut first = None;
    for _ in 0..200 {
        first = left(tile.text().await.unwrap());
        if first.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = first.expect("the tile says how long is left");
    assert!(first > 0.0 && first <= 30.0, "{first}");
    let log = browser
        .find(Locator::Css("#transitions"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(log.contains("nlp: closed → open (consecutive)"), "{log}");
    // The others stay closed.
    wait_for_tile(&browser, "data", "closed").await;
    wait_for_tile(&browser, "viz", "closed").await;

    let png = browser.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    if let Ok(path) = std::env::var("AGENTGATE_DASHBOARD_SCREENSHOT") {
        std::fs::write(&path, &png).expect("write the screenshot");
    }
    browser.close().await.expect("close the session");
}

#[tokio::test]
async fn the_page_is_self_contained_and_served_where_the_admin_routes_are() {
    let nlp = mock("nlp", |_| {}).await;
    let gw = gateway(&nlp, &nlp, &nlp).await;
    let page = send("GET", &gw.admin_url("/dashboard"), &[], "").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    // Nothing is loaded from elsewhere (the machine may have no internet).
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    for external in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "@import",
    ] {
        assert!(!html.contains(external), "page loads {external}…");
    }
    // With an admin listener, the public listener has no dashboard.
    let public = send("GET", &gw.url("/dashboard"), &[], "").await;
    assert_eq!(public.status, StatusCode::NOT_FOUND);

    // Admin routes on the public listener: the page is there too, and like every admin
    // read there (SPEC §7) it needs the token, which `?token=` carries to its feed.
    std::env::set_var("AGENTGATE_DASHBOARD_TEST_TOKEN", "dash-token");
    let shared = Gateway::start(&format!(
        "{}\n[admin]\ntoken_env = \"AGENTGATE_DASHBOARD_TEST_TOKEN\"\n[agents.nlp]\nurl = \"{}\"\n[pipelines.default]\n[[pipelines.default.stages]]\nname = \"s\"\nagent = \"nlp\"\n",
        base_config("", "2s"),
        nlp.url()
    ))
    .await;
    let page = send("GET", &shared.url("/dashboard"), &[], "").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    let page = send("GET", &shared.url("/dashboard?token=dash-token"), &[], "").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&page.body).contains("subscribe_metrics"));
}
