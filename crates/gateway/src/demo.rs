//! The embedded configuration `agentgate demo` runs: four in-process mock agents (nlp,
//! its backup, data, viz) behind a three-stage pipeline, with breakers quick enough to
//! watch trip and recover.

/// The demo config; `{nlp}`, `{nlp_backup}`, `{data}`, `{viz}`, `{listen}` and
/// `{admin_listen}` are filled in by [`demo_config`].
pub const DEMO_CONFIG: &str = r#"# agentgate demo: three stages, one flaky agent with a backup.
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

[pipelines.default]
deadline = "10s"
retry_allowance = 4

[[pipelines.default.stages]]
name = "nlp_processing"
agent = "nlp"
path = "/process"
weight = 30
fallback = [ { agent = "nlp_backup" }, { static = { intent = "unknown" } } ]

[[pipelines.default.stages]]
name = "data_retrieval"
agent = "data"
path = "/query"
weight = 40

[[pipelines.default.stages]]
name = "visualization"
agent = "viz"
path = "/render"
weight = 30
optional = true
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
}
