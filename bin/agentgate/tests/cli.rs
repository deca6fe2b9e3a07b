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
