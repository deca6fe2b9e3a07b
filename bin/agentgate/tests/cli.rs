//! The binary itself: `check` on good and bad configs, and `demo` serving a query.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_agentgate");

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("agentgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_accepts_a_good_config_with_a_one_line_summary() {
    let path = write(
        "good.toml",
        "[agents.nlp]\nurl = \"http://127.0.0.1:7001\"\n\n[pipelines.default]\n[[pipelines.default.stages]]\nname = \"nlp\"\nagent = \"nlp\"\npath = \"/process\"\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("nlp"), "{stdout}");
}

#[test]
fn check_rejects_a_bad_config_with_file_line_col() {
    let path = write(
        "bad.toml",
        "[agents.nlp]\nurl = \"http://127.0.0.1:7001\"\n\n[agents.nlp.circuit_breaker]\nrecovery_timeout = \"5s\"\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let want = format!("{}:5:1:", path.display());
    assert!(stderr.starts_with(&want), "want {want:?}, got {stderr:?}");
    assert!(stderr.contains("recovery_timeout"), "{stderr}");

    let out = Command::new(BIN)
        .args(["check", "--config", "/nonexistent/agentgate.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agentgate.toml"));
}

#[test]
fn demo_serves_a_query_and_stops_cleanly_on_sigterm() {
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut gateway = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(url) = line.trim().strip_prefix("gateway") {
            gateway = Some(url.trim().trim_start_matches("http://").to_owned());
            break;
        }
    }
    let addr = gateway.expect("demo printed its gateway URL");
    // Keep reading so the demo never writes into a closed pipe.
    let drain = std::thread::spawn(move || lines.count());

    // A plain HTTP/1.1 request over a socket: the binary, not a library, answers.
    let body = r#"{"query":"show sales by region"}"#;
    let request = format!(
        "POST /api/query HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // The demo binds before it prints, so the listener is there.
    let mut answer = String::new();
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        s.read_to_string(&mut answer).unwrap();
    }
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 50"),
        "{answer}"
    );
    assert!(answer.contains("\"query_id\""), "{answer}");

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "demo exited with {status}");
    drain.join().unwrap();
}

/// Kills the child on drop, so a failing test leaves nothing running.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 exchange over a fresh connection: (status, body).
fn http(method: &str, port: u16, path: &str, headers: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..400 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn two_replicas_share_queries_through_redis() {
    let redis_port = free_port();
    let _redis = Proc(
        Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server is missing: install Debian's redis-server (scripts/test.sh does)",
            ),
    );
    let agent_port = free_port();
    let _agent = Proc(
        Command::new(BIN)
            .args(["mock-agent", "--listen", &format!("127.0.0.1:{agent_port}")])
            .args(["--latency", "300ms"])
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let replica = async |name: &str| {
        let (port, admin) = (free_port(), free_port());
        let config = write(
            &format!("{name}.toml"),
            &format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\n\
                 [progress]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{redis_port}\"\n\n\
                 [agents.nlp]\nurl = \"http://127.0.0.1:{agent_port}\"\n\n\
                 [pipelines.default]\n[[pipelines.default.stages]]\nname = \"nlp\"\nagent = \"nlp\"\npath = \"/process\"\n"
            ),
        );
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until(&format!("{name} connected to redis"), || {
            let (status, body) = http("GET", port, "/readyz", "", "");
            status == 200 && body.contains("\"redis\":\"connected\"")
        })
        .await;
        (Proc(child), port)
    };
    let (mut one, one_port) = replica("one").await;
    let (mut two, two_port) = replica("two").await;

    let (status, body) = http(
        "POST",
        one_port,
        "/api/query",
        "content-type: application/json\r\nprefer: respond-async\r\n",
        r#"{"query":"q"}"#,
    );
    assert_eq!(status, 202, "{body}");
    let id = body
        .split("\"query_id\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a query id")
        .to_owned();
    // Replica two serves the record of the query replica one runs, running then done.
    let path = format!("/api/query/{id}");
    wait_until("the record on replica two", || {
        let (status, body) = http("GET", two_port, &path, "", "");
        status == 200 && body.contains("\"status\":\"completed\"")
    })
    .await;

    for proc in [&mut one, &mut two] {
        let pid = proc.0.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = proc.0.wait().unwrap();
        assert!(status.success(), "replica exited with {status}");
    }
}

#[test]
fn check_never_shows_a_secret() {
    const SECRET: &str = "sk-cli-3f9a71c2";
    /// `check` on `path` with `AGENTGATE_CLI_KEY` set to `key` (or unset): success,
    /// stdout and stderr.
    fn check(path: &std::path::Path, key: Option<&str>) -> (bool, String, String) {
        let mut cmd = Command::new(BIN);
        cmd.args(["check", "--config"]).arg(path);
        match key {
            Some(key) => cmd.env("AGENTGATE_CLI_KEY", key),
            None => cmd.env_remove("AGENTGATE_CLI_KEY"),
        };
        let out = cmd.output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }
    let agent = "[agents.llm]\nurl = \"https://llm.internal:8443\"\n";
    let good = write(
        "secret.toml",
        &format!("{agent}headers = {{ authorization = \"Bearer ${{AGENTGATE_CLI_KEY}}\" }}\n"),
    );
    let (ok, stdout, stderr) = check(&good, Some(SECRET));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("llm"), "{stdout}");
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));

    // Unset: an error naming the key and the variable, not the value.
    let (ok, _, stderr) = check(&good, None);
    assert!(!ok);
    let want = ":3:29: agents.llm.headers.authorization = \"***\": environment variable `AGENTGATE_CLI_KEY` is not set";
    assert!(stderr.contains(want), "{stderr}");

    // A literal secret the config cannot use: told where, shown as "***".
    let bad = write(
        "literal.toml",
        &format!("{agent}headers = {{ x-api-key = \"{SECRET}\\n\" }}\n"),
    );
    let (ok, _, stderr) = check(&bad, None);
    assert!(!ok);
    let want = "agents.llm.headers.x-api-key = \"***\": must be visible ASCII";
    assert!(stderr.contains(want), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
}
