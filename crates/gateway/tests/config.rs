//! The config loader against SPEC §2: the SPEC's example document, per-key inheritance
//! from `[defaults]`, and one test per error with its exact `file:line:col`.
//!
//! Bad documents are written inline, flush left and starting on the line after `r#"`,
//! so the line and column an assertion expects can be read off the source.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use agentgate_circuit_breaker::CircuitBreakerConfig;
use agentgate_gateway::config::{Config, ConfigError, ProgressBackend, ServerConfig};
use agentgate_gateway::notify::NotifyEvent;
use agentgate_pipeline::Fallback;
use agentgate_retry::{Jitter, RetryConfig, RetryOn};
use serde_json::json;

fn parse(src: &str) -> Result<Config, ConfigError> {
    Config::from_toml(src.strip_prefix('\n').unwrap_or(src), "test.toml")
}

#[track_caller]
fn ok(src: &str) -> Config {
    parse(src).unwrap_or_else(|e| panic!("unexpected error: {e}"))
}

/// Asserts the one error reported: `test.toml:line:col: message`.
#[track_caller]
fn fails(src: &str, line: usize, col: usize, message: &str) {
    let err = match parse(src) {
        Ok(_) => panic!("expected {line}:{col}: {message}, but the config loaded"),
        Err(e) => e,
    };
    assert_eq!(
        (err.line, err.col, err.message.as_str()),
        (line, col, message),
        "\n got: {err}"
    );
    assert_eq!(err.file, "test.toml");
    assert_eq!(
        err.to_string(),
        format!("test.toml:{line}:{col}: {message}")
    );
}

/// Like [`fails`], for messages that end with a list or hint not worth spelling out.
#[track_caller]
fn fails_with_prefix(src: &str, line: usize, col: usize, prefix: &str) {
    let err = parse(src).expect_err("expected an error");
    assert_eq!((err.line, err.col), (line, col), "\n got: {err}");
    assert!(
        err.message.starts_with(prefix),
        "\n got: {err}\nwant prefix: {prefix}"
    );
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/configs")
        .join(name)
}

// === valid documents ===

#[test]
fn spec_example_gives_the_spec_values() {
    let c = Config::load(&fixture("spec_example.toml")).unwrap();

    assert_eq!(
        c.server,
        ServerConfig {
            listen: "127.0.0.1:8080".parse().unwrap(),
            admin_listen: Some("127.0.0.1:9090".parse().unwrap()),
            max_body_bytes: 1_048_576,
            shutdown_grace: Duration::from_secs(30),
            max_ws_connections: 10_000,
            ws_max_message_bytes: 65_536,
            ws_max_subscriptions: 100,
            query_retention: Duration::from_secs(600),
            max_running_queries: 10_000,
            max_connections: 25_000,
            body_read_timeout: Duration::from_secs(30),
            ws_allowed_origins: vec![],
            tls: None,
        }
    );
    assert_eq!(c.admin.token_env, "AGENTGATE_ADMIN_TOKEN");
    assert_eq!(c.progress.backend, ProgressBackend::Memory);
    assert_eq!(c.progress.redis_url.expose(), "redis://127.0.0.1:6379");
    assert_eq!(c.progress.replay_events, 256);
    assert_eq!(c.progress.lease, Duration::from_secs(10));

    assert_eq!(c.agents.len(), 2);
    let nlp = &c.agents["nlp"];
    assert_eq!(nlp.url, "http://127.0.0.1:7001");
    assert_eq!(nlp.timeout, Duration::from_secs(10));
    assert_eq!(
        nlp.circuit_breaker,
        CircuitBreakerConfig {
            consecutive_failures: 3,
            ..CircuitBreakerConfig::default()
        }
    );
    assert_eq!(nlp.retry, RetryConfig::default());
    let backup = &c.agents["nlp_backup"];
    assert_eq!(backup.url, "http://127.0.0.1:7002");
    assert_eq!(backup.timeout, Duration::from_secs(30));
    assert_eq!(backup.circuit_breaker, CircuitBreakerConfig::default());
    assert_eq!(backup.retry, RetryConfig::default());
    assert_eq!(
        backup.retry.retry_on,
        [
            RetryOn::Connect,
            RetryOn::Timeout,
            RetryOn::Reset,
            RetryOn::Status(502),
            RetryOn::Status(503),
            RetryOn::Status(504),
            RetryOn::Status(429),
        ]
    );

    let p = &c.pipelines["default"];
    assert_eq!(p.deadline, Duration::from_secs(60));
    assert_eq!(p.retry_allowance, 4);
    assert_eq!(p.stages.len(), 1);
    let s = &p.stages[0];
    assert_eq!(s.name, "nlp_processing");
    assert_eq!(s.agent, "nlp");
    assert_eq!(s.path, "/process");
    assert_eq!(s.weight, 30);
    assert!(!s.optional);
    assert_eq!(
        s.fallback,
        [
            Fallback::Agent("nlp_backup".into()),
            Fallback::Static(json!({"intent": "unknown"})),
        ]
    );

    assert_eq!(
        c.summary(),
        "ok: 2 agents (nlp, nlp_backup), 1 pipeline (default: 1 stage), \
         listen 127.0.0.1:8080, admin 127.0.0.1:9090"
    );
}

#[test]
fn minimal_document_gets_every_default() {
    let c = Config::load(&fixture("minimal.toml")).unwrap();
    assert_eq!(c.server, ServerConfig::default());
    assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
    assert_eq!(c.server.admin_listen, None);
    assert_eq!(c.admin.token_env, "AGENTGATE_ADMIN_TOKEN");
    assert_eq!(c.progress.replay_events, 256);
    let a = &c.agents["echo"];
    assert_eq!(a.timeout, Duration::from_secs(30));
    assert_eq!(a.circuit_breaker, CircuitBreakerConfig::default());
    assert_eq!(a.retry, RetryConfig::default());
    assert!(c.pipelines.is_empty());
    assert_eq!(
        c.summary(),
        "ok: 1 agent (echo), 0 pipelines, listen 127.0.0.1:8080, admin on listen (token required)"
    );
}

#[test]
fn deploy_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/agentgate.example.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.pipelines.contains_key("default"));
}

#[test]
fn agents_inherit_defaults_key_by_key() {
    let c = ok(r#"
[defaults]
timeout = "5s"
connect_timeout = "1s"

[defaults.circuit_breaker]
consecutive_failures = 7
window = "10s"
open_duration = "20s"

[defaults.retry]
max_attempts = 5
jitter = "none"
retry_on = ["connect", 503]

[agents.a]
url = "http://127.0.0.1:7001"
timeout = "2s"
[agents.a.circuit_breaker]
consecutive_failures = 2
[agents.a.retry]
max_attempts = 1

[agents.b]
url = "http://127.0.0.1:7002/base"
circuit_breaker = { window = "1m", max_retry_after = "15s" }
"#);
    let a = &c.agents["a"];
    assert_eq!(a.timeout, Duration::from_secs(2));
    assert_eq!(a.connect_timeout, Duration::from_secs(1));
    assert_eq!(
        a.circuit_breaker,
        CircuitBreakerConfig {
            consecutive_failures: 2,
            window: Duration::from_secs(10),
            open_duration: Duration::from_secs(20),
            ..CircuitBreakerConfig::default()
        }
    );
    assert_eq!(
        a.retry,
        RetryConfig {
            max_attempts: 1,
            jitter: Jitter::None,
            retry_on: vec![RetryOn::Connect, RetryOn::Status(503)],
            ..RetryConfig::default()
        }
    );

    let b = &c.agents["b"];
    assert_eq!(b.url, "http://127.0.0.1:7002/base");
    assert_eq!(b.timeout, Duration::from_secs(5));
    assert_eq!(
        b.circuit_breaker,
        CircuitBreakerConfig {
            consecutive_failures: 7,
            window: Duration::from_secs(60),
            open_duration: Duration::from_secs(20),
            max_retry_after: Duration::from_secs(15),
            ..CircuitBreakerConfig::default()
        }
    );
    assert_eq!(b.retry.max_attempts, 5);
    // One key caps Retry-After for both layers.
    assert_eq!(b.retry.max_retry_after, Duration::from_secs(15));
    assert_eq!(a.retry.max_retry_after, Duration::from_secs(60));
}

#[test]
fn every_server_progress_and_admin_key() {
    let c = ok(r#"
[server]
listen = "0.0.0.0:80"
admin_listen = "[::1]:9091"
max_body_bytes = 2048
shutdown_grace = "5s"
max_ws_connections = 3
ws_max_message_bytes = 1_024
ws_max_subscriptions = 4
query_retention = "1h"

[admin]
token_env = "MY_TOKEN"

[progress]
backend = "redis"
redis_url = "redis://agentgate:s3cret@redis:6379/0"
replay_events = 16
lease = "2s"

[agents.a]
url = "http://a:7001"

[pipelines.fast]
[[pipelines.fast.stages]]
name = "one"
agent = "a"
"#);
    assert_eq!(c.server.listen, "0.0.0.0:80".parse().unwrap());
    assert_eq!(c.server.admin_listen, Some("[::1]:9091".parse().unwrap()));
    assert_eq!(c.server.max_body_bytes, 2048);
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(5));
    assert_eq!(c.server.max_ws_connections, 3);
    assert_eq!(c.server.ws_max_message_bytes, 1024);
    assert_eq!(c.server.ws_max_subscriptions, 4);
    assert_eq!(c.server.query_retention, Duration::from_secs(3600));
    assert_eq!(c.admin.token_env, "MY_TOKEN");
    assert_eq!(c.progress.backend, ProgressBackend::Redis);
    assert_eq!(
        c.progress.redis_url.expose(),
        "redis://agentgate:s3cret@redis:6379/0"
    );
    assert_eq!(c.progress.replay_events, 16);
    assert_eq!(c.progress.lease, Duration::from_secs(2));
    let stage = &c.pipelines["fast"].stages[0];
    assert_eq!(
        (stage.path.as_str(), stage.weight, stage.optional),
        ("/", 1, false)
    );
    assert!(stage.fallback.is_empty());
    assert_eq!(c.pipelines["fast"].deadline, Duration::from_secs(60));
    assert_eq!(
        c.summary(),
        "ok: 1 agent (a), 1 pipeline (fast: 1 stage; none named \"default\", so queries \
         must name their pipeline), listen 0.0.0.0:80, admin [::1]:9091, progress redis \
         redis://agentgate:***@redis:6379/0"
    );
    let shown = format!("{c:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
}

#[test]
fn listeners_on_port_zero_never_conflict() {
    // Tests bind both listeners to ephemeral ports.
    let c = ok(r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[agents.a]
url = "http://a"
"#);
    assert_eq!(c.server.admin_listen.unwrap().port(), 0);
}

#[test]
fn admin_token_comes_from_the_environment() {
    let c = ok(r#"
[admin]
token_env = "AGENTGATE_CONFIG_TEST_TOKEN_7F3A"
[agents.a]
url = "http://a"
"#);
    // A variable name no other test uses.
    std::env::remove_var("AGENTGATE_CONFIG_TEST_TOKEN_7F3A");
    assert_eq!(c.admin.token(), None);
    std::env::set_var("AGENTGATE_CONFIG_TEST_TOKEN_7F3A", "");
    assert_eq!(c.admin.token(), None);
    std::env::set_var("AGENTGATE_CONFIG_TEST_TOKEN_7F3A", "s3cret");
    assert_eq!(c.admin.token().as_deref(), Some("s3cret"));
    std::env::remove_var("AGENTGATE_CONFIG_TEST_TOKEN_7F3A");
}

// === errors: files and syntax ===

#[test]
fn unreadable_file_names_the_path() {
    let err = Config::load(Path::new("/nonexistent/agentgate.toml")).unwrap_err();
    assert_eq!(err.file, "/nonexistent/agentgate.toml");
    assert_eq!((err.line, err.col), (0, 0));
    let shown = err.to_string();
    assert!(
        shown.starts_with("/nonexistent/agentgate.toml: cannot read the config file: "),
        "{shown}"
    );
}

#[test]
fn load_errors_carry_the_path() {
    let dir = std::env::temp_dir().join(format!("agentgate-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[agents.a]\nurl = 5\n").unwrap();
    let err = Config::load(&path).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "{}:2:7: agents.a.url = 5: expected a string, found an integer",
            path.display()
        )
    );
}

#[test]
fn toml_syntax_errors() {
    fails_with_prefix(
        r#"
[agents.a]
url = "http://a
"#,
        2,
        16,
        "invalid TOML: ",
    );
    fails_with_prefix(
        r#"
[agents.a]
url = "http://a" timeout = "1s"
"#,
        2,
        18,
        "invalid TOML: ",
    );
    fails(
        r#"
[agents.a]
url = "http://a"
url = "http://b"
"#,
        3,
        1,
        "duplicate key `url`",
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    fails(
        r#"
[agents.a]
url = "http://a" # café
[server]
# ünïcödé
listen = "é"
"#,
        5,
        10,
        "server.listen = \"é\": expected an IP address and port, e.g. \"127.0.0.1:8080\" or \"[::]:8080\"",
    );
}

// === errors: unknown keys, at every level ===

#[test]
fn unknown_keys_at_every_level() {
    let cases: &[(&str, usize, usize, &str)] = &[
        ("bogus = 1\n", 1, 1, "unknown key `bogus` at the top level"),
        ("[server]\nlisten_on = \"x\"\n", 2, 1, "unknown key `listen_on` in [server] (did you mean `listen`?)"),
        ("[admin]\ntoken = \"x\"\n", 2, 1, "unknown key `token` in [admin] (did you mean `token_env`?)"),
        ("[progress]\nbackend2 = \"memory\"\n", 2, 1, "unknown key `backend2` in [progress] (did you mean `backend`?)"),
        ("[defaults]\nurl = \"http://a\"\n", 2, 1, "unknown key `url` in [defaults]"),
        ("[defaults.circuit_breaker]\nrecovery_timeout = \"5s\"\n", 2, 1, "unknown key `recovery_timeout` in [defaults.circuit_breaker] (did you mean `open_duration`?)"),
        ("[defaults.retry]\nmax_retries = 2\n", 2, 1, "unknown key `max_retries` in [defaults.retry] (did you mean `max_attempts`?)"),
        ("[defaults.retry]\nmax_retry_after = \"5s\"\n", 2, 1, "unknown key `max_retry_after` in [defaults.retry]"),
        ("[agents.b]\nurl = \"http://b\"\nweight = 2\n", 3, 1, "unknown key `weight` in [agents.b]"),
        ("[agents.b]\nurl = \"http://b\"\n[agents.b.circuit_breaker]\nrecovery_timeout = \"5s\"\n", 4, 1, "unknown key `recovery_timeout` in [agents.b.circuit_breaker] (did you mean `open_duration`?)"),
        ("[agents.b]\nurl = \"http://b\"\nretry = { max_attempt = 2 }\n", 3, 11, "unknown key `max_attempt` in [agents.b.retry] (did you mean `max_attempts`?)"),
        ("[pipelines.p]\ntimeout = \"5s\"\n[[pipelines.p.stages]]\nname = \"s\"\nagent = \"a\"\n", 2, 1, "unknown key `timeout` in [pipelines.p]"),
        ("[pipelines.p]\n[[pipelines.p.stages]]\nname = \"s\"\nagent = \"a\"\nretries = 3\n", 5, 1, "unknown key `retries` in pipelines.p.stages[0]"),
        ("[pipelines.p]\n[[pipelines.p.stages]]\nname = \"s\"\nagent = \"a\"\nfallback = [ { url = \"http://x\" } ]\n", 5, 16, "unknown key `url` in pipelines.p.stages[0].fallback[0]"),
    ];
    fails_with_an_agent(cases);
}

/// [`fails`] for each `(document, line, col, message)`, with a valid agent appended: the
/// agent table goes last so that the lines of the document are the first.
#[track_caller]
fn fails_with_an_agent(cases: &[(&str, usize, usize, &str)]) {
    for &(doc, line, col, message) in cases {
        fails(
            &format!("{doc}[agents.a]\nurl = \"http://a\"\n"),
            line,
            col,
            message,
        );
    }
}

// === errors: types and required keys ===

#[test]
fn wrong_types_name_the_key() {
    fails(
        r#"
[server]
max_body_bytes = "1MB"
[agents.a]
url = "http://a"
"#,
        2,
        18,
        "server.max_body_bytes = \"1MB\": expected a non-negative integer, found a string",
    );
    fails(
        r#"
[agents.a]
url = "http://a"
[agents.a.circuit_breaker]
consecutive_failures = -1
"#,
        4,
        24,
        "agents.a.circuit_breaker.consecutive_failures = -1: expected an integer from 0 to 4294967295",
    );
    fails(
        r#"
[agents.a]
url = "http://a"
[agents.a.circuit_breaker]
open_on_retry_after = "yes"
"#,
        4,
        23,
        "agents.a.circuit_breaker.open_on_retry_after = \"yes\": expected a boolean, found a string",
    );
    fails(
        r#"
[agents.a]
url = "http://a"
[agents.a.retry]
jitter = "lots"
"#,
        4,
        10,
        "agents.a.retry.jitter = \"lots\": unknown variant `lots`, expected one of `full`, `equal`, `decorrelated`, `none`",
    );
    fails_with_prefix(
        r#"
[agents.a]
url = "http://a"
[agents.a.retry]
retry_on = ["connect", 700]
"#,
        4,
        12,
        "agents.a.retry.retry_on = [\"connect\", 700]: expected \"connect\", \"timeout\", \"reset\"",
    );
    fails(
        r#"
server = 5
[agents.a]
url = "http://a"
"#,
        1,
        10,
        "server: expected a table, found an integer",
    );
    fails(
        r#"
[agents]
a = "http://a"
"#,
        2,
        5,
        "agents.a: expected a table, found a string",
    );
    fails(
        r#"
[agents.a]
url = "http://a"
[pipelines.p]
stages = { name = "s" }
"#,
        4,
        10,
        "pipelines.p.stages: expected an array of tables ([[pipelines.p.stages]]), found a table",
    );
    fails(
        r#"
[agents.a]
url = "http://a"
[pipelines.p]
[[pipelines.p.stages]]
name = "s"
agent = "a"
optional = "no"
"#,
        7,
        12,
        "pipelines.p.stages[0].optional = \"no\": expected a boolean, found a string",
    );
}

#[test]
fn missing_required_keys_point_at_the_table() {
    fails(
        r#"
[agents.a]
url = "http://a"

[agents.b]
timeout = "1s"
"#,
        4,
        1,
        "missing required key `url` in [agents.b]",
    );
    let stages = r#"
[agents.a]
url = "http://a"
[pipelines.p]
[[pipelines.p.stages]]
name = "one"
agent = "a"
[[pipelines.p.stages]]
"#;
    fails(
        &format!("{stages}agent = \"a\"\n"),
        7,
        1,
        "missing required key `name` in pipelines.p.stages[1]",
    );
    fails(
        &format!("{stages}name = \"two\"\n"),
        7,
        1,
        "missing required key `agent` in pipelines.p.stages[1]",
    );
}

#[test]
fn there_must_be_an_agent() {
    fails(
        "",
        1,
        1,
        "no agents configured: define at least one [agents.NAME] with a `url`",
    );
    fails(
        r#"
[server]
listen = "127.0.0.1:8080"
[agents]
"#,
        3,
        2,
        "[agents] is empty: define at least one [agents.NAME] with a `url`",
    );
}

// === errors: durations and values ===

#[test]
fn invalid_durations() {
    fails(
        r#"
[agents.a]
url = "http://a"
timeout = "10 parsecs"
"#,
        3,
        11,
        "agents.a.timeout = \"10 parsecs\": invalid duration (unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); write e.g. \"250ms\", \"30s\" or \"5m\"",
    );
    fails(
        r#"
[defaults]
timeout = 30
[agents.a]
url = "http://a"
"#,
        2,
        11,
        "defaults.timeout = 30: expected a duration string, found an integer; write e.g. \"250ms\", \"30s\" or \"5m\"",
    );
    fails(
        r#"
[agents.a]
url = "http://a"
timeout = "0s"
"#,
        3,
        11,
        "agents.a.timeout = \"0s\": must be greater than 0",
    );
    fails_with_prefix(
        r#"
[agents.a]
url = "http://a"
[agents.a.circuit_breaker]
window = "thirty seconds"
"#,
        4,
        10,
        "agents.a.circuit_breaker.window = \"thirty seconds\": invalid duration (",
    );
    fails(
        r#"
[server]
shutdown_grace = "soon"
[agents.a]
url = "http://a"
"#,
        2,
        18,
        "server.shutdown_grace = \"soon\": invalid duration (expected number at 0); write e.g. \"250ms\", \"30s\" or \"5m\"",
    );
    fails(
        r#"
[agents.a]
url = "http://a"
[pipelines.p]
deadline = "0s"
[[pipelines.p.stages]]
name = "s"
agent = "a"
"#,
        4,
        12,
        "pipelines.p.deadline = \"0s\": must be greater than 0",
    );
}

#[test]
fn a_zero_failure_rate_threshold_turns_the_rate_trip_off() {
    let cfg = ok(r#"
[agents.nlp]
url = "http://127.0.0.1:7001"
[agents.nlp.circuit_breaker]
failure_rate_threshold = 0
"#);
    assert_eq!(
        cfg.agents["nlp"].circuit_breaker.failure_rate_threshold,
        0.0
    );
}

#[test]
fn breaker_validation_points_at_the_key() {
    fails(
        r#"
[agents.nlp]
url = "http://127.0.0.1:7001"
[agents.nlp.circuit_breaker]
consecutive_failures = 3
failure_rate_threshold = 1.5
"#,
        5,
        26,
        "agents.nlp.circuit_breaker.failure_rate_threshold = 1.5: must be 0 (off) or a share greater than 0 and at most 1",
    );
    // Inherited from [defaults]: reported where it is written, even with no agent
    // overriding it.
    fails(
        r#"
[defaults.circuit_breaker]
minimum_calls = 0
[agents.nlp]
url = "http://127.0.0.1:7001"
"#,
        2,
        17,
        "defaults.circuit_breaker.minimum_calls = 0: must be at least 1",
    );
    // A pair: the agent's open_duration exceeds the inherited max_open_duration.
    fails(
        r#"
[defaults.circuit_breaker]
max_open_duration = "2m"
[agents.nlp]
url = "http://127.0.0.1:7001"
circuit_breaker = { open_duration = "5m" }
"#,
        5,
        37,
        "agents.nlp.circuit_breaker.open_duration = \"5m\": must not be longer than max_open_duration (2m)",
    );
    fails(
        r#"
[agents.nlp]
url = "http://127.0.0.1:7001"
[agents.nlp.circuit_breaker]
max_open_duration = "10s"
"#,
        4,
        21,
        "agents.nlp.circuit_breaker.max_open_duration = \"10s\": must not be shorter than open_duration",
    );
    fails(
        r#"
[defaults.circuit_breaker]
half_open_max_calls = 0
slow_call_rate_threshold = 0.0
[agents.nlp]
url = "http://127.0.0.1:7001"
"#,
        2,
        23,
        "defaults.circuit_breaker.half_open_max_calls = 0: must be at least 1",
    );
}

#[test]
fn retry_validation_points_at_the_key() {
    fails(
        r#"
[agents.a]
url = "http://a"
[agents.a.retry]
max_attempts = 0
"#,
        4,
        16,
        "agents.a.retry.max_attempts = 0: must be at least 1 (the first attempt counts)",
    );
    fails(
        r#"
[agents.a]
url = "http://a"
[agents.a.retry]
base_delay = "1m"
"#,
        4,
        14,
        "agents.a.retry.base_delay = \"1m\": must not be longer than max_delay",
    );
    // Only max_delay is written: it is the key to blame.
    fails(
        r#"
[defaults.retry]
max_delay = "500ms"
[agents.a]
url = "http://a"
"#,
        2,
        13,
        "defaults.retry.max_delay = \"500ms\": must not be shorter than base_delay (1s)",
    );
    // base_delay from [defaults], max_delay from the agent: the agent's key is blamed.
    fails(
        r#"
[defaults.retry]
base_delay = "2s"
[agents.a]
url = "http://a"
[agents.a.retry]
max_delay = "1s"
"#,
        6,
        13,
        "agents.a.retry.max_delay = \"1s\": must not be shorter than base_delay (2s)",
    );
    fails(
        r#"
[agents.a]
url = "http://a"
[agents.a.retry]
budget_ratio = -0.5
"#,
        4,
        16,
        "agents.a.retry.budget_ratio = -0.5: must be a share between 0 and 1000",
    );
}

#[test]
fn agent_urls() {
    let cases: &[(&str, usize, &str)] = &[
        (r#""ftp://a:7001""#, 7, "agents.a.url = \"ftp://a:7001\": must be an http:// or https:// URL; write e.g. \"http://127.0.0.1:7001\" or \"https://llm.internal:8443\""),
        (r#""127.0.0.1:7001""#, 7, "agents.a.url = \"127.0.0.1:7001\": must be an absolute http:// or https:// URL; write e.g. \"http://127.0.0.1:7001\" or \"https://llm.internal:8443\""),
        (r#""http://a/?x=1""#, 7, "agents.a.url = \"http://a/?x=1\": must not have a query string; write e.g. \"http://127.0.0.1:7001\" or \"https://llm.internal:8443\""),
    ];
    for &(url, col, message) in cases {
        fails(&format!("[agents.a]\nurl = {url}\n"), 2, col, message);
    }
    fails_with_prefix(
        r#"
[agents.a]
url = "http://a b"
"#,
        2,
        7,
        "agents.a.url = \"http://a b\": not a valid URL (",
    );
    fails(
        r#"
[agents."a b"]
url = "http://a"
"#,
        1,
        9,
        "agents.\"a b\": agent names may only use ASCII letters, digits, `_` and `-`",
    );
}

#[test]
fn listen_addresses() {
    fails(
        r#"
[server]
listen = "localhost:8080"
[agents.a]
url = "http://a"
"#,
        2,
        10,
        "server.listen = \"localhost:8080\": expected an IP address and port, e.g. \"127.0.0.1:8080\" or \"[::]:8080\"",
    );
    fails(
        r#"
[server]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:8080"
[agents.a]
url = "http://a"
"#,
        3,
        16,
        "server.admin_listen = \"127.0.0.1:8080\": conflicts with server.listen = \"127.0.0.1:8080\" (omit admin_listen to serve admin routes on listen)",
    );
    fails_with_prefix(
        r#"
[server]
listen = "0.0.0.0:8080"
admin_listen = "127.0.0.1:8080"
[agents.a]
url = "http://a"
"#,
        3,
        16,
        "server.admin_listen = \"127.0.0.1:8080\": conflicts with server.listen",
    );
}

#[test]
fn server_limits_must_be_positive() {
    fails(
        r#"
[server]
ws_max_subscriptions = 0
[agents.a]
url = "http://a"
"#,
        2,
        24,
        "server.ws_max_subscriptions = 0: must be at least 1",
    );
    fails(
        r#"
[progress]
replay_events = 0
[agents.a]
url = "http://a"
"#,
        2,
        17,
        "progress.replay_events = 0: must be at least 1",
    );
}

#[test]
fn progress_backend() {
    fails(
        r#"
[progress]
backend = "postgres"
[agents.a]
url = "http://a"
"#,
        2,
        11,
        "progress.backend = \"postgres\": expected \"memory\" or \"redis\"",
    );
    fails(
        r#"
[progress]
backend = "redis"
redis_url = "127.0.0.1:6379"
[agents.a]
url = "http://a"
"#,
        3,
        13,
        "progress.redis_url = \"***\": progress.backend = \"redis\" needs a redis:// or rediss:// URL with a host in progress.redis_url, e.g. \"redis://127.0.0.1:6379\"",
    );
    // A password never shows, even in an error about the URL.
    fails(
        r#"
[progress]
backend = "redis"
redis_url = "http://:s3cret@redis:6379"
[agents.a]
url = "http://a"
"#,
        3,
        13,
        "progress.redis_url = \"***\": progress.backend = \"redis\" needs a redis:// or rediss:// URL with a host in progress.redis_url, e.g. \"redis://127.0.0.1:6379\"",
    );
    // The memory backend ignores redis_url.
    ok(r#"
[progress]
backend = "memory"
redis_url = "whatever"
[agents.a]
url = "http://a"
"#);
}

#[test]
fn redis_passwords_come_from_the_environment_and_tls_takes_a_ca() {
    std::env::set_var("AGENTGATE_CONFIG_TEST_REDIS_PW", "pw-from-env");
    let c = ok(r#"
[progress]
backend = "redis"
redis_url = "rediss://:${AGENTGATE_CONFIG_TEST_REDIS_PW}@redis:6380"
[agents.a]
url = "http://a"
"#);
    assert_eq!(
        c.progress.redis_url.expose(),
        "rediss://:pw-from-env@redis:6380"
    );
    assert!(c.progress.redis_tls());
    assert!(
        c.summary()
            .ends_with("progress redis rediss://:***@redis:6380"),
        "{}",
        c.summary()
    );

    fails(
        r#"
[progress]
backend = "redis"
redis_url = "redis://:${AGENTGATE_CONFIG_TEST_UNSET_PW}@redis"
[agents.a]
url = "http://a"
"#,
        3,
        13,
        "progress.redis_url = \"***\": environment variable `AGENTGATE_CONFIG_TEST_UNSET_PW` is not set",
    );

    let dir = std::env::temp_dir().join(format!("agentgate-config-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, junk) = (dir.join("ca.pem"), dir.join("junk.pem"));
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(&junk, "not a certificate").unwrap();
    let with_ca = |url: &str, file: &std::path::Path| {
        format!(
            "[progress]\nbackend = \"redis\"\nredis_url = \"{url}\"\nredis_ca_file = \"{}\"\n[agents.a]\nurl = \"http://a\"\n",
            file.display()
        )
    };
    let c = ok(&with_ca("rediss://redis:6380", &ca));
    assert_eq!(c.progress.redis_ca_file.as_deref(), Some(ca.as_path()));
    let err = Config::from_toml(&with_ca("redis://redis:6379", &ca), "t.toml").unwrap_err();
    assert_eq!(
        (err.line, err.col, err.message),
        (
            4,
            17,
            format!(
                "progress.redis_ca_file = {:?}: only applies to a rediss:// redis_url (TLS)",
                ca.display().to_string()
            )
        )
    );
    let err = Config::from_toml(&with_ca("rediss://redis:6380", &junk), "t.toml").unwrap_err();
    assert!(
        err.message
            .ends_with("holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        "{err}"
    );
    let missing = dir.join("missing.pem");
    let err = Config::from_toml(&with_ca("rediss://redis:6380", &missing), "t.toml").unwrap_err();
    assert!(err.message.contains("cannot be read"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_lease_is_at_least_a_second() {
    fails(
        r#"
[progress]
lease = "500ms"
[agents.a]
url = "http://a"
"#,
        2,
        9,
        "progress.lease = \"500ms\": must be at least 1s (renewed every third of it)",
    );
}

// === errors: pipelines and cross-references ===

/// Two agents, then `[pipelines.default]` starting on line 5.
const AGENTS: &str = r#"
[agents.nlp]
url = "http://127.0.0.1:7001"
[agents.nlp_backup]
url = "http://127.0.0.1:7002"
"#;

#[track_caller]
fn pipeline_fails(pipeline: &str, line: usize, col: usize, message: &str) {
    fails(&format!("{AGENTS}{pipeline}"), line, col, message);
}

#[test]
fn stage_naming_an_unknown_agent() {
    pipeline_fails(
        r#"[pipelines.default]
[[pipelines.default.stages]]
name = "one"
agent = "nlp"
[[pipelines.default.stages]]
name = "two"
agent = "nlpp"
"#,
        11,
        9,
        "pipelines.default.stages[1].agent: unknown agent \"nlpp\" (defined: nlp, nlp_backup); did you mean \"nlp\"?",
    );
}

#[test]
fn fallbacks() {
    pipeline_fails(
        r#"[pipelines.default]
[[pipelines.default.stages]]
name = "one"
agent = "nlp"
fallback = [ { agent = "nlp_bakup" } ]
"#,
        9,
        24,
        "pipelines.default.stages[0].fallback[0].agent: unknown agent \"nlp_bakup\" (defined: nlp, nlp_backup); did you mean \"nlp_backup\"?",
    );
    pipeline_fails(
        r#"[pipelines.default]
[[pipelines.default.stages]]
name = "one"
agent = "nlp"
fallback = [ { agent = "nlp_backup" }, { agent = "nlp" } ]
"#,
        9,
        50,
        "pipelines.default.stages[0].fallback[1].agent: fallback to itself: \"nlp\" is the stage's own agent",
    );
    pipeline_fails(
        r#"[pipelines.default]
[[pipelines.default.stages]]
name = "one"
agent = "nlp"
fallback = [ { agent = "nlp_backup", static = {} } ]
"#,
        9,
        38,
        "pipelines.default.stages[0].fallback[0]: a fallback is either `agent` or `static`, not both",
    );
    pipeline_fails(
        r#"[pipelines.default]
[[pipelines.default.stages]]
name = "one"
agent = "nlp"
fallback = [ {} ]
"#,
        9,
        14,
        "pipelines.default.stages[0].fallback[0]: expected { agent = \"NAME\" } or { static = VALUE }",
    );
    pipeline_fails(
        r#"[pipelines.default]
[[pipelines.default.stages]]
name = "one"
agent = "nlp"
fallback = { agent = "nlp_backup" }
"#,
        9,
        12,
        "pipelines.default.stages[0].fallback: expected an array such as [ { agent = \"backup\" }, { static = { … } } ], found a table",
    );
    pipeline_fails(
        r#"[pipelines.default]
[[pipelines.default.stages]]
name = "one"
agent = "nlp"
fallback = [ "nlp_backup" ]
"#,
        9,
        14,
        "pipelines.default.stages[0].fallback[0]: expected a table, found a string",
    );
}

#[test]
fn duplicate_stage_names() {
    pipeline_fails(
        r#"[pipelines.default]
[[pipelines.default.stages]]
name = "one"
agent = "nlp"
[[pipelines.default.stages]]
name = "one"
agent = "nlp_backup"
"#,
        10,
        8,
        "pipelines.default.stages[1].name: duplicate stage name \"one\" (also stages[0])",
    );
}

#[test]
fn pipelines_need_stages() {
    pipeline_fails(
        r#"[pipelines.default]
deadline = "10s"
"#,
        5,
        1,
        "pipeline `default` has no stages: add at least one [[pipelines.default.stages]]",
    );
    pipeline_fails(
        r#"[pipelines.default]
stages = []
"#,
        6,
        10,
        "pipelines.default.stages: a pipeline needs at least one stage",
    );
}

#[test]
fn stage_values() {
    pipeline_fails(
        r#"[pipelines.default]
[[pipelines.default.stages]]
name = "one"
agent = "nlp"
weight = 0
"#,
        9,
        10,
        "pipelines.default.stages[0].weight = 0: must be at least 1 (a stage's share of the progress bar)",
    );
    pipeline_fails(
        r#"[pipelines.default]
[[pipelines.default.stages]]
name = "one"
agent = "nlp"
path = "process"
"#,
        9,
        8,
        "pipelines.default.stages[0].path = \"process\": must start with `/`",
    );
    pipeline_fails(
        r#"[pipelines.default]
[[pipelines.default.stages]]
name = ""
agent = "nlp"
"#,
        7,
        8,
        "pipelines.default.stages[0].name = \"\": must not be empty",
    );
    pipeline_fails(
        r#"[pipelines.default]
retry_allowance = -1
[[pipelines.default.stages]]
name = "one"
agent = "nlp"
"#,
        6,
        19,
        "pipelines.default.retry_allowance = -1: expected an integer from 0 to 4294967295",
    );
}

#[test]
fn the_first_error_in_the_document_is_reported() {
    // The pipeline comes first in the file, the bad agent key after it.
    fails(
        r#"
[pipelines.default]
[[pipelines.default.stages]]
name = "one"
agent = "ghost"

[agents.a]
url = "http://a"
timeout = "0s"
"#,
        4,
        9,
        "pipelines.default.stages[0].agent: unknown agent \"ghost\" (defined: a)",
    );
    // An agent with a bad key is still an agent as far as stages are concerned.
    fails(
        r#"
[pipelines.default]
[[pipelines.default.stages]]
name = "one"
agent = "a"

[agents.a]
url = "http://a"
timeout = "0s"
"#,
        8,
        11,
        "agents.a.timeout = \"0s\": must be greater than 0",
    );
}

// === [defaults] merged table by table, every error found ===

#[test]
fn nested_defaults_keep_the_position_where_they_are_written() {
    // Inherited by both agents (`b` overrides only `window`): told once, in [defaults].
    fails(
        r#"
[defaults.circuit_breaker]
windw = "10s"
[agents.a]
url = "http://a"
[agents.b]
url = "http://b"
circuit_breaker = { window = "5s" }
"#,
        2,
        1,
        "unknown key `windw` in [defaults.circuit_breaker] (did you mean `window`?)",
    );
    // A bad default is told even when every agent overrides it.
    fails(
        r#"
[defaults]
timeout = "0s"
[agents.a]
url = "http://a"
timeout = "1s"
"#,
        2,
        11,
        "defaults.timeout = \"0s\": must be greater than 0",
    );
}

#[test]
fn every_error_is_found_and_the_first_in_the_file_wins() {
    // serde reads `agents` before `server`; the file has `server` first.
    fails(
        r#"
[server]
max_body_bytes = "big"
[agents.a]
url = "http://a"
timeout = 5
"#,
        2,
        18,
        "server.max_body_bytes = \"big\": expected a non-negative integer, found a string",
    );
    // serde meets `connect_timeout` first; `timeout` is written first.
    fails(
        r#"
[agents.a]
url = "http://a"
timeout = "soon"
connect_timeout = 5
"#,
        3,
        11,
        "agents.a.timeout = \"soon\": invalid duration (expected number at 0); write e.g. \"250ms\", \"30s\" or \"5m\"",
    );
    // An agent with a key that cannot be read is not validated: `base_delay` is not
    // blamed for being longer than the `max_delay` it would get by default.
    fails(
        r#"
[agents.a]
url = "http://a"
[agents.a.retry]
base_delay = "1m"
max_delay = 90
"#,
        5,
        13,
        "agents.a.retry.max_delay = 90: expected a duration string, found an integer; write e.g. \"250ms\", \"30s\" or \"5m\"",
    );
}

#[test]
fn unknown_keys_get_hints_from_the_struct_that_rejects_them() {
    let cases: &[(&str, usize, usize, &str)] = &[
        (
            "[agent.x]\nurl = \"http://x\"\n",
            1,
            2,
            "unknown key `agent` at the top level (did you mean `agents`?)",
        ),
        (
            "[agents.b]\nurl = \"http://b\"\ntimout = \"1s\"\n",
            3,
            1,
            "unknown key `timout` in [agents.b] (did you mean `timeout`?)",
        ),
        (
            "[agents.b]\nurl = \"http://b\"\ndeadline = \"1s\"\n",
            3,
            1,
            "unknown key `deadline` in [agents.b] (did you mean `timeout`?)",
        ),
        (
            "[agents.b]\nurl = \"http://b\"\nconnect_timeout_ms = 5\n",
            3,
            1,
            "unknown key `connect_timeout_ms` in [agents.b] (did you mean `connect_timeout`?)",
        ),
        (
            "[pipelines.p]\n[[pipelines.p.stages]]\nname = \"s\"\nagent = \"a\"\nwieght = 2\n",
            5,
            1,
            "unknown key `wieght` in pipelines.p.stages[0] (did you mean `weight`?)",
        ),
    ];
    fails_with_an_agent(cases);
}

#[test]
fn notify_hooks() {
    std::env::set_var("AGENTGATE_CONFIG_TEST_HOOK_TOKEN", "hook-s3cret");
    let c = ok(r#"
[agents.a]
url = "http://a"

[[notify]]
url = "http://hooks.internal:8080/agentgate"
events = ["breaker_opened"]
headers = { authorization = "Bearer ${AGENTGATE_CONFIG_TEST_HOOK_TOKEN}" }
min_interval = "30s"
[notify.retry]
max_attempts = 5

[[notify]]
url = "http://second"
"#);
    assert_eq!(c.notify.len(), 2);
    let (one, two) = (&c.notify[0], &c.notify[1]);
    assert_eq!(one.url, "http://hooks.internal:8080/agentgate");
    assert_eq!(one.events, [NotifyEvent::BreakerOpened]);
    assert_eq!(one.headers["authorization"].expose(), "Bearer hook-s3cret");
    assert_eq!(one.min_interval, Duration::from_secs(30));
    assert_eq!(one.client_config().retry.max_attempts, 5);
    assert_eq!(two.events, NotifyEvent::all());
    assert_eq!(two.min_interval, Duration::from_secs(60));
    assert_eq!((two.timeout, two.queue), (Duration::from_secs(10), 1024));
    let shown = format!("{c:?}");
    assert!(!shown.contains("hook-s3cret"), "{shown}");

    let hook = |body: &str| {
        format!("[agents.a]\nurl = \"http://a\"\n[[notify]]\nurl = \"http://h\"\n{body}")
    };
    fails(
        &hook("events = [\"breaker_exploded\"]\n"),
        5,
        10,
        "notify[0].events = [\"breaker_exploded\"]: unknown variant `breaker_exploded`, expected one of `breaker_opened`, `breaker_closed`, `health_changed`",
    );
    fails(
        &hook("events = []\n"),
        5,
        10,
        "notify[0].events = []: name at least one of \"breaker_opened\", \"breaker_closed\", \"health_changed\"",
    );
    fails(
        &hook("headers = { \"bad header\" = \"x\" }\n"),
        5,
        28,
        "notify[0].headers.\"bad header\": is not a valid header name",
    );
    fails(
        &hook("headers = { authorization = \"${AGENTGATE_CONFIG_TEST_UNSET_HOOK}\" }\n"),
        5,
        29,
        "notify[0].headers.authorization = \"***\": environment variable `AGENTGATE_CONFIG_TEST_UNSET_HOOK` is not set",
    );
    fails(
        &hook("queue = 0\n"),
        5,
        9,
        "notify[0].queue = 0: must be at least 1",
    );
    fails(
        "[agents.a]\nurl = \"http://a\"\n[[notify]]\nurl = \"ftp://h\"\n",
        4,
        7,
        "notify[0].url = \"ftp://h\": must be an http:// or https:// URL",
    );
}

// === SPEC §6: https agents, headers, http_version, tls ===

#[test]
fn real_agent_keys_are_read_and_secrets_never_shown() {
    let pki = agentgate_tls::test_util::TestPki::new();
    let client = pki.client("gateway");
    let server = pki.server(&["localhost"]);
    // PATH: a variable every test environment has (set_var would race other tests).
    let path = std::env::var("PATH").unwrap();
    let c = ok(&format!(
        r#"
[server.tls]
cert_file = {:?}
key_file = {:?}
[defaults]
headers = {{ x-team = "nlp" }}
[agents.llm]
url = "https://llm.internal:8443/v1"
headers = {{ authorization = "Bearer ${{PATH}}" }}
http_version = "2"
[agents.llm.tls]
ca_file = {:?}
client_cert_file = {:?}
client_key_file = {:?}
server_name = "llm.internal"
"#,
        server.cert_file,
        server.key_file,
        pki.ca_file(),
        client.cert_file,
        client.key_file
    ));
    let llm = &c.agents["llm"];
    assert_eq!(llm.url, "https://llm.internal:8443/v1");
    assert_eq!(llm.http_version, agentgate_agent_client::HttpVersion::Http2);
    assert_eq!(llm.tls.server_name.as_deref(), Some("llm.internal"));
    let headers = llm.header_map().unwrap();
    assert_eq!(headers["authorization"], format!("Bearer {path}").as_str());
    assert_eq!(headers["x-team"], "nlp", "inherited from [defaults]");
    assert!(c.server.tls.is_some());
    let summary = c.summary();
    assert!(summary.contains("listen 127.0.0.1:8080 (tls)"), "{summary}");
    for shown in [summary, format!("{c:?}")] {
        assert!(!shown.contains(&path), "{shown}");
        assert!(!shown.contains("Bearer"), "{shown}");
    }
}

#[test]
fn real_agent_key_errors() {
    fails(
        r#"
[agents.a]
url = "https://a"
headers = { authorization = "Bearer ${AGENTGATE_CONFIG_TEST_UNSET}" }
"#,
        3,
        29,
        "agents.a.headers.authorization = \"***\": environment variable `AGENTGATE_CONFIG_TEST_UNSET` is not set",
    );
    // A literal secret with a control character: told, never shown.
    fails(
        r#"
[agents.a]
url = "https://a"
headers = { x-key = "s3cr3t\nx" }
"#,
        3,
        21,
        "agents.a.headers.x-key = \"***\": must be visible ASCII (no control characters such as newlines)",
    );
    fails(
        r#"
[defaults]
headers = { host = "x" }
[agents.a]
url = "https://a"
"#,
        2,
        20,
        "defaults.headers.host: is set by agentgate itself and cannot be configured",
    );
    fails(
        r#"
[agents.a]
url = "https://a"
http_version = "3"
"#,
        3,
        16,
        "agents.a.http_version = \"3\": expected \"auto\", \"1.1\" or \"2\"",
    );
    fails_with_prefix(
        r#"
[agents.a]
url = "https://a"
[agents.a.tls]
ca_file = "/nonexistent/ca.pem"
"#,
        4,
        11,
        "agents.a.tls.ca_file = \"/nonexistent/ca.pem\": cannot be read (",
    );
    fails(
        r#"
[agents.a]
url = "https://a"
[agents.a.tls]
sni = "a"
"#,
        4,
        1,
        "unknown key `sni` in [agents.a.tls]",
    );
    let pki = agentgate_tls::test_util::TestPki::new();
    let (one, two) = (pki.server(&["localhost"]), pki.server(&["localhost"]));
    fails_with_prefix(
        &format!(
            "\n[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n[agents.a]\nurl = \"http://a\"\n",
            one.cert_file, two.key_file
        ),
        3,
        12,
        &format!(
            "server.tls.key_file = {:?}: does not match cert_file (",
            two.key_file
        ),
    );
}
