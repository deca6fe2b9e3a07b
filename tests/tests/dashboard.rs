//! `/dashboard` (SPEC §4) in a real headless Chromium, driven through chromedriver
//! (WebDriver) with fantoccini: the page loads from the admin listener, shows a tile
//! for every configured agent, follows a running query, plots each agent's requests/s,
//! failure rate and p99 latency, turns a tile `open` when its agent fails and draws it
//! on the breaker timeline, explains refused admin actions, and a page opened after
//! the trip still lists it.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/test.sh` installs them).
//! Without them this test fails: it is never skipped.
//!
//! `AGENTGATE_DASHBOARD_SCREENSHOT=$PWD/docs/dashboard.png` saves the screenshot taken after
//! the trip and the admin actions there (tests run in `tests/`: give an absolute path).
//!
//! The browser loads the page over a real socket; the tests' own requests go through the
//! gateway's routers in memory where they can.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentgate_e2e::{base_config, eventually, free_port, mock, Gateway};
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
        eventually(&format!("chromedriver listens at {url}"), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .ok()
        })
        .await;
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("no WebDriver session from chromedriver at {url}: {e}"))
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

/// The admin token the dashboard's actions use in these tests.
const TOKEN_ENV: &str = "AGENTGATE_DASHBOARD_TEST_TOKEN";
const TOKEN: &str = "dash-s3cret";

async fn gateway(nlp: &MockAgent, data: &MockAgent, viz: &MockAgent) -> Gateway {
    std::env::set_var(TOKEN_ENV, TOKEN);
    let defaults = base_config("admin_listen = \"127.0.0.1:1\"", "2s");
    Gateway::start(&format!(
        r#"{defaults}
[admin]
token_env = "{TOKEN_ENV}"

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
    wait_for(
        browser,
        &format!(r#".tile[data-agent="{agent}"][data-state="{want}"]"#),
    )
    .await
}

/// The first element matching `css`, once there is one (or the test fails).
async fn wait_for(browser: &Client, css: &str) -> fantoccini::elements::Element {
    browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("nothing matches `{css}` in time: {e}"))
}

/// Waits until the JavaScript expression `js` is true in the page (or the test fails).
async fn wait_until(browser: &Client, js: &str) {
    let script = format!("return Boolean({js});");
    eventually(&format!("`{js}` is true in the page"), || async {
        (browser.execute(&script, vec![]).await.unwrap() == json!(true)).then_some(())
    })
    .await;
}

/// JavaScript: the `data-*` attribute `attr` of `agent`'s plot of `series`, as a number.
fn plot(agent: &str, series: &str, attr: &str) -> String {
    format!(
        r#"Number(document.querySelector('.tile[data-agent="{agent}"] svg.plot[data-series="{series}"]').dataset.{attr})"#
    )
}

/// Clicks `action` on `agent`'s tile and returns the notice it leaves, once it changed.
async fn click(browser: &Client, agent: &str, action: &str) -> String {
    browser
        .execute(
            "document.getElementById('notice').textContent = '';",
            vec![],
        )
        .await
        .unwrap();
    browser
        .find(Locator::Css(&format!(
            r#".tile[data-agent="{agent}"] button[data-act="{action}"]"#
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_until(
        browser,
        "document.getElementById('notice').textContent !== ''",
    )
    .await;
    text_of(browser, "#notice").await
}

/// The text of the first element matching `css`.
async fn text_of(browser: &Client, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Makes `from`'s tile act for agent `to`.
async fn rename_tile(browser: &Client, from: &str, to: &str) {
    let js =
        format!(r#"document.querySelector('.tile[data-agent="{from}"]').dataset.agent = "{to}";"#);
    browser.execute(&js, vec![]).await.unwrap();
}

async fn type_token(browser: &Client, token: &str) {
    let input = browser.find(Locator::Css("#token")).await.unwrap();
    input.clear().await.unwrap();
    if !token.is_empty() {
        input.send_keys(token).await.unwrap();
    }
}

/// Starts a query without waiting for it (`Prefer: respond-async`); its id.
async fn submit(gw: &Gateway) -> String {
    gw.submit_async(&json!({"query": "show sales by region"}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_plots_agents_shows_breaker_history_and_explains_refusals() {
    let nlp = mock("nlp", |b| b.latency = Duration::from_millis(20)).await;
    let data = mock("data", |b| b.latency = Duration::from_millis(60)).await;
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
    wait_for(&browser, "#conn.up").await;

    // A running query appears with its progress bar, and ends completed.
    let id = submit(&gw).await;
    let row = format!(r#"#live tr[data-query="{id}"]"#);
    wait_for(&browser, &row).await;
    let done = wait_for(&browser, &format!(r#"{row}[data-status="completed"]"#)).await;
    assert!(done.text().await.unwrap().contains("100%"));

    // Traffic over a few seconds: every agent's plots fill with data points, with
    // requests per second and a p99 latency above zero.
    for _ in 0..12 {
        submit(&gw).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for agent in ["nlp", "data", "viz"] {
        wait_until(&browser, &format!("{} >= 5", plot(agent, "rps", "points"))).await;
        wait_until(&browser, &format!("{} > 0", plot(agent, "rps", "max"))).await;
        wait_until(&browser, &format!("{} > 0", plot(agent, "p99", "max"))).await;
    }
    // viz answers in 1.5 s: its p99 says so (within its bucket, 1 s … 2.5 s).
    wait_until(
        &browser,
        &format!("{0} >= 1000 && {0} <= 2500", plot("viz", "p99", "max")),
    )
    .await;

    // nlp starts failing; three failed calls trip its breaker, and its tile turns open.
    nlp.set_behavior(Behavior {
        name: "nlp".into(),
        error_rate: 1.0,
        ..Behavior::default()
    })
    .unwrap();
    for _ in 0..3 {
        let res = gw.post_json("/agents/nlp/process", &json!({"q": 1})).await;
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
    let first = eventually("the tile says how long is left", || async {
        left(tile.text().await.unwrap())
    })
    .await;
    assert!(first > 0.0 && first <= 30.0, "{first}");
    // The failure-rate plot and the breaker timeline show it.
    wait_until(&browser, &format!("{} > 0", plot("nlp", "fail", "max"))).await;
    wait_for(
        &browser,
        r#".tile[data-agent="nlp"] svg.timeline rect[data-state="open"]"#,
    )
    .await;
    let log = text_of(&browser, "#transitions").await;
    assert!(log.contains("nlp: closed → open (consecutive)"), "{log}");
    // The others stay closed.
    wait_for_tile(&browser, "data", "closed").await;
    wait_for_tile(&browser, "viz", "closed").await;

    // Admin actions: each refusal says why, on the page.
    type_token(&browser, "").await;
    let said = click(&browser, "nlp", "reset").await;
    assert!(said.contains("type the admin token first"), "{said}");
    type_token(&browser, "not-the-token").await;
    let said = click(&browser, "nlp", "reset").await;
    assert!(said.contains("refused: wrong admin token"), "{said}");
    wait_for(&browser, "#notice.err").await;
    type_token(&browser, TOKEN).await;
    // A tile whose agent the gateway no longer has (as after a config change).
    rename_tile(&browser, "data", "ghost").await;
    let said = click(&browser, "ghost", "disable").await;
    assert!(said.contains("refused: unknown agent `ghost`"), "{said}");
    rename_tile(&browser, "ghost", "data").await;
    // With the right token the action is done, and the breaker follows.
    let said = click(&browser, "viz", "force-open").await;
    assert!(said.contains("done, closed → forced_open"), "{said}");
    wait_for(&browser, "#notice.ok").await;
    wait_for_tile(&browser, "viz", "forced_open").await;

    let png = browser.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    if let Ok(path) = std::env::var("AGENTGATE_DASHBOARD_SCREENSHOT") {
        std::fs::write(&path, &png).expect("write the screenshot");
    }

    // A page opened after the trip lists it, and draws it on nlp's timeline: the
    // gateway kept the transitions.
    browser
        .goto(&gw.admin_url("/dashboard"))
        .await
        .expect("page loads again");
    wait_for_tile(&browser, "nlp", "open").await;
    wait_for(&browser, "#transitions li.replayed").await;
    let log = text_of(&browser, "#transitions").await;
    assert!(log.contains("nlp: closed → open (consecutive)"), "{log}");
    assert!(log.contains("viz: closed → forced_open (manual)"), "{log}");
    assert!(!log.contains("none yet"), "{log}");
    wait_for(
        &browser,
        r#".tile[data-agent="nlp"] svg.timeline rect[data-state="closed"] + rect[data-state="open"]"#,
    )
    .await;
    browser.close().await.expect("close the session");
}

#[tokio::test]
async fn the_page_is_self_contained_and_served_where_the_admin_routes_are() {
    let nlp = mock("nlp", |_| {}).await;
    let gw = gateway(&nlp, &nlp, &nlp).await;
    let page = gw.call_admin("GET", "/dashboard", &[], "").await;
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
    let public = gw.call("GET", "/dashboard", &[], "").await;
    assert_eq!(public.status, StatusCode::NOT_FOUND);

    // Admin routes on the public listener: the page is there too, and like every admin
    // read there (SPEC §7) it needs the token, which `?token=` carries to its feed.
    std::env::set_var(TOKEN_ENV, TOKEN);
    let shared = Gateway::start(&format!(
        "{}\n[admin]\ntoken_env = \"{TOKEN_ENV}\"\n[agents.nlp]\nurl = \"{}\"\n[pipelines.default]\n[[pipelines.default.stages]]\nname = \"s\"\nagent = \"nlp\"\n",
        base_config("", "2s"),
        nlp.url()
    ))
    .await;
    let page = shared.call("GET", "/dashboard", &[], "").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    let with_token = format!("/dashboard?token={TOKEN}");
    let page = shared.call("GET", &with_token, &[], "").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&page.body).contains("subscribe_metrics"));
}
