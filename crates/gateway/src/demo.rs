//! `agentgate demo`: five in-process mock agents (nlp, its backup, data, viz, and an
//! "llm" that streams its answer token by token) behind a four-stage pipeline, with
//! breakers quick enough to watch trip and recover and tokens arriving live on the
//! WebSocket and the dashboard — the agents, the embedded configuration and what is
//! printed, in one place (the binary only binds the listeners and serves).

use std::time::Duration;

use agentgate_mock_agent::{Behavior, MockAgent, StreamMode};

use crate::Config;

/// The demo config; `{nlp}`, `{nlp_backup}`, `{data}`, `{viz}`, `{llm}`, `{listen}` and
/// `{admin_listen}` are filled in by [`demo_config`].
pub const DEMO_CONFIG: &str = r#"# agentgate demo: four stages, one flaky agent with a backup, one that streams.
[server]
listen = "{listen}"
admin_listen = "{admin_listen}"
shutdown_grace = "5s"
query_retention = "10m"

[defaults]
timeout = "2s"

[defaults.circuit_breaker]
consecutive_failures = 3
failure_rate_threshold = 0.5
minimum_calls = 10
window = "30s"
open_duration = "10s"
max_open_duration = "60s"

[defaults.retry]
max_attempts = 3
base_delay = "100ms"
max_delay = "1s"
jitter = "full"

[agents.nlp]
url = "{nlp}"

[agents.nlp_backup]
url = "{nlp_backup}"

[agents.data]
url = "{data}"

[agents.viz]
url = "{viz}"

# Streams its answer (SSE): each token is an `output` event on the WebSocket.
[agents.llm]
url = "{llm}"
stream_idle_timeout = "5s"

[pipelines.default]
deadline = "10s"
retry_allowance = 4

[[pipelines.default.stages]]
name = "nlp_processing"
agent = "nlp"
path = "/process"
weight = 20
fallback = [ { agent = "nlp_backup" }, { static = { intent = "unknown" } } ]

[[pipelines.default.stages]]
name = "data_retrieval"
agent = "data"
path = "/query"
weight = 30

[[pipelines.default.stages]]
name = "visualization"
agent = "viz"
path = "/render"
weight = 20
optional = true

[[pipelines.default.stages]]
name = "answer"
agent = "llm"
path = "/v1/chat"
weight = 30
stream_result = "concat"
fallback = [ { static = "(the llm is unavailable)" } ]
"#;

/// Addresses to fill into [`DEMO_CONFIG`].
#[derive(Clone, Debug)]
pub struct DemoAddrs {
    /// Public listener.
    pub listen: String,
    /// Admin listener.
    pub admin_listen: String,
    /// Base URL of the nlp mock.
    pub nlp: String,
    /// Base URL of the backup nlp mock.
    pub nlp_backup: String,
    /// Base URL of the data mock.
    pub data: String,
    /// Base URL of the viz mock.
    pub viz: String,
    /// Base URL of the streaming llm mock.
    pub llm: String,
}

/// The demo config with `addrs` filled in.
pub fn demo_config(addrs: &DemoAddrs) -> String {
    DEMO_CONFIG
        .replace("{listen}", &addrs.listen)
        .replace("{admin_listen}", &addrs.admin_listen)
        .replace("{nlp_backup}", &addrs.nlp_backup)
        .replace("{nlp}", &addrs.nlp)
        .replace("{data}", &addrs.data)
        .replace("{viz}", &addrs.viz)
        .replace("{llm}", &addrs.llm)
}

/// The demo's mock agents and its config, ready to serve. Dropping it stops the agents.
#[derive(Debug)]
pub struct Demo {
    /// The config to run (`Config::from_toml` of [`DEMO_CONFIG`], filled in).
    pub config: Config,
    addrs: DemoAddrs,
    _agents: Vec<MockAgent>,
}

impl Demo {
    /// Starts the mock agents on loopback and builds the config for a gateway whose
    /// listeners are at `listen` and `admin_listen` (already bound, so that the printed
    /// URLs are the real ones).
    pub async fn start(
        listen: std::net::SocketAddr,
        admin_listen: std::net::SocketAddr,
    ) -> Result<Self, String> {
        let start = |b: Behavior| async move {
            MockAgent::start(b)
                .await
                .map_err(|e| format!("mock agent: {e}"))
        };
        // nlp is flaky: down 15 s of every 45 s, and 10% errors otherwise, so its breaker
        // visibly trips, the backup takes over, and it recovers.
        let nlp = start(Behavior {
            name: "nlp".into(),
            error_rate: 0.1,
            latency: Duration::from_millis(20),
            outage_down: Duration::from_secs(15),
            outage_every: Duration::from_secs(45),
            ..Behavior::default()
        })
        .await?;
        let nlp_backup = start(Behavior {
            name: "nlp_backup".into(),
            latency: Duration::from_millis(40),
            ..Behavior::default()
        })
        .await?;
        let data = start(Behavior {
            name: "data".into(),
            latency: Duration::from_millis(30),
            latency_jitter: Duration::from_millis(30),
            ..Behavior::default()
        })
        .await?;
        let viz = start(Behavior {
            name: "viz".into(),
            error_rate: 0.05,
            latency: Duration::from_millis(15),
            ..Behavior::default()
        })
        .await?;
        // llm streams a canned answer, a word every 60 ms (SSE).
        let llm = start(Behavior {
            name: "llm".into(),
            latency: Duration::from_millis(100),
            stream: StreamMode::Sse,
            stream_chunks: 30,
            stream_interval: Duration::from_millis(60),
            ..Behavior::default()
        })
        .await?;
        let addrs = DemoAddrs {
            listen: listen.to_string(),
            admin_listen: admin_listen.to_string(),
            nlp: nlp.url(),
            nlp_backup: nlp_backup.url(),
            data: data.url(),
            viz: viz.url(),
            llm: llm.url(),
        };
        let config =
            Config::from_toml(&demo_config(&addrs), "<demo>").map_err(|e| e.to_string())?;
        Ok(Self {
            config,
            addrs,
            _agents: vec![nlp, nlp_backup, data, viz, llm],
        })
    }

    /// What `agentgate demo` prints: the URLs to open and a query to try.
    pub fn banner(&self) -> String {
        let DemoAddrs {
            listen,
            admin_listen,
            nlp,
            nlp_backup,
            data,
            viz,
            llm,
        } = &self.addrs;
        format!(
            "agentgate demo\n\
             \n  gateway    http://{listen}\n  query      curl -s -X POST http://{listen}/api/query -H 'content-type: application/json' -d '{{\"query\":\"show sales by region\"}}'\n  proxy      curl -s http://{listen}/agents/data/query\n  stream     curl -N http://{listen}/agents/llm/v1/chat  (SSE through the proxy, event by event)\n  websocket  ws://{listen}/ws  (send {{\"type\":\"query\",\"query\":\"...\"}}: the llm's tokens arrive as output events)\n  dashboard  http://{admin_listen}/dashboard\n  metrics    http://{admin_listen}/metrics\n  JSON       http://{admin_listen}/api/orchestration/metrics\n  breakers   http://{admin_listen}/api/orchestration/circuit-breakers\n\
             \n  mock agents: nlp {nlp} (flaky: down 15 s every 45 s), nlp_backup {nlp_backup}, data {data}, viz {viz}, llm {llm} (streams SSE)\n  Ctrl-C stops everything.\n"
        )
    }
}
