//! Several replicas you can trust (SPEC §9), through the binary: three `agentgate run`
//! processes and one `redis-server`, each started by the test.
//!
//! - The chaos run: clients on two replicas follow queries of the third and their own;
//!   Redis is restarted once (it comes back empty); then the third replica is killed
//!   with SIGKILL. Every query ends with exactly one terminal event on every replica
//!   that watched it (the lost replica's with `replica_lost`, `seq` continuing, within
//!   `lease` + 5 s), and no record stays `running`.
//! - SIGHUP reloads the config file; an invalid one changes nothing.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use agentgate_mock_agent::{Behavior, MockAgent};
use agentgate_progress_redis::test_util::RedisServer;
use futures_util::StreamExt;
use serde_json::Value;
use support::{free_port, http, run_on_redis, until_redis, wait_until, write, Proc, BIN};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// The lease of the chaos run's replicas.
const LEASE: Duration = Duration::from_secs(2);

/// One `agentgate run` process and its ports.
struct Replica {
    name: &'static str,
    proc: Proc,
    port: u16,
}

impl Replica {
    /// Starts a replica on `redis` with the agents `fast` and `slow`, and waits until it
    /// has connected to Redis.
    async fn start(name: &'static str, redis: u16, fast: &MockAgent, slow: &MockAgent) -> Self {
        let (port, admin) = (free_port(), free_port());
        let config = write(
            &format!("chaos-{name}.toml"),
            &format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
                 shutdown_grace = \"5s\"\n\n\
                 [progress]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{redis}\"\n\
                 lease = \"{}s\"\n\n\
                 [agents.fast]\nurl = \"{}\"\n[agents.slow]\nurl = \"{}\"\n\n\
                 [pipelines.default]\n[[pipelines.default.stages]]\nname = \"answer\"\nagent = \"fast\"\npath = \"/a\"\n\n\
                 [pipelines.slow]\n[[pipelines.slow.stages]]\nname = \"first\"\nagent = \"fast\"\npath = \"/a\"\n\
                 [[pipelines.slow.stages]]\nname = \"forever\"\nagent = \"slow\"\npath = \"/b\"\n",
                LEASE.as_secs(),
                fast.url(),
                slow.url(),
            ),
        );
        Self {
            name,
            proc: run_on_redis(name, &config, port).await,
            port,
        }
    }

    async fn until_connected(&self) {
        until_redis(self.name, self.port).await;
    }

    /// Submits a query of `pipeline` (`Prefer: respond-async`); returns its id.
    fn submit(&self, pipeline: &str) -> String {
        let (status, body) = http(
            "POST",
            self.port,
            "/api/query",
            "content-type: application/json\r\nprefer: respond-async\r\n",
            &format!(r#"{{"query":"chaos","pipeline":"{pipeline}"}}"#),
        );
        assert_eq!(status, 202, "{}: {body}", self.name);
        let body: Value = serde_json::from_str(&body).unwrap();
        body["query_id"].as_str().unwrap().to_owned()
    }

    /// The record of `id` on this replica, if it answers 200.
    fn record(&self, id: &str) -> Option<Value> {
        let (status, body) = http("GET", self.port, &format!("/api/query/{id}"), "", "");
        (status == 200).then(|| serde_json::from_str(&body).unwrap())
    }

    /// Follows `id` over this replica's WebSocket until its terminal event: every event
    /// received, in order.
    fn watch(&self, id: &str) -> tokio::task::JoinHandle<Vec<Value>> {
        let (port, id, name) = (self.port, id.to_owned(), self.name);
        tokio::spawn(async move {
            // The query may not have reached this replica yet: try again until the
            // subscription is taken.
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let url = format!("ws://127.0.0.1:{port}/ws?query_id={id}");
                let (mut ws, _) = tokio_tungstenite::connect_async(&url)
                    .await
                    .expect("upgrade");
                let mut events = Vec::new();
                while let Some(frame) = ws.next().await {
                    let Ok(Message::Text(text)) = frame else {
                        continue;
                    };
                    let v: Value = serde_json::from_str(&text).unwrap();
                    if v["type"] == "error" && v["code"] == "unknown_query" {
                        break;
                    }
                    if v.get("seq").is_some() {
                        let terminal = ["completed", "failed", "cancelled"]
                            .contains(&v["type"].as_str().unwrap());
                        events.push(v);
                        if terminal {
                            // Anything after the terminal event would come now: read
                            // until the server's next frame or a short quiet spell.
                            let more =
                                tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
                            if let Ok(Some(Ok(Message::Text(text)))) = more {
                                events.push(serde_json::from_str(&text).unwrap());
                            }
                            return events;
                        }
                    }
                }
                assert!(Instant::now() < deadline, "{name} never knew query {id}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    /// SIGKILL: no goodbye to Redis, no lease given back.
    fn kill_9(&mut self) {
        self.proc.0.kill().unwrap();
        self.proc.0.wait().unwrap();
    }

    /// SIGTERM, and the exit status must be 0.
    fn stop(&mut self) {
        let pid = self.proc.0.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = self.proc.0.wait().unwrap();
        assert!(status.success(), "{} exited with {status}", self.name);
    }
}

/// A mock agent answering after `latency`.
async fn agent(name: &str, latency: Duration) -> MockAgent {
    MockAgent::start(Behavior {
        name: name.into(),
        latency,
        ..Behavior::default()
    })
    .await
    .unwrap()
}

/// The checks on what one replica's client saw of one query: events in `seq` order
/// without repeats, and exactly one terminal event, the last. Returns that event.
fn one_terminal<'a>(replica: &str, id: &str, events: &'a [Value]) -> &'a Value {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{replica} {id}: seqs {seqs:?}"
    );
    let terminals: Vec<&Value> = events
        .iter()
        .filter(|e| ["completed", "failed", "cancelled"].contains(&e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(terminals.len(), 1, "{replica} {id}: {events:?}");
    let last = events.last().unwrap();
    assert_eq!(
        terminals[0], last,
        "{replica} {id}: the terminal event is the last"
    );
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_killed_replicas_queries_end_once_everywhere() {
    let mut redis = RedisServer::start().await;
    let fast = agent("fast", Duration::from_millis(100)).await;
    let slow = agent("slow", Duration::from_secs(600)).await;
    let mut a = Replica::start("a", redis.port, &fast, &slow).await;
    let mut b = Replica::start("b", redis.port, &fast, &slow).await;
    let mut c = Replica::start("c", redis.port, &fast, &slow).await;

    // C runs queries that will never finish on their own, and quick ones; the clients
    // of A and B follow them all.
    let mut queries: BTreeMap<String, &str> = BTreeMap::new();
    for _ in 0..3 {
        queries.insert(c.submit("slow"), "lost");
    }
    for _ in 0..2 {
        queries.insert(c.submit("default"), "c");
    }
    let mut watched = Vec::new();
    for id in queries.keys() {
        for replica in [&a, &b] {
            watched.push((replica.name, id.clone(), replica.watch(id)));
        }
    }
    // C's slow queries are past their first stage (C's own record shows it).
    for (id, kind) in &queries {
        if *kind == "lost" {
            wait_until("the slow query to reach its slow stage", || {
                c.record(id)
                    .is_some_and(|r| r["stages"].as_array().is_some_and(|s| s.len() == 1))
            })
            .await;
        }
    }

    // Redis restarts empty: every replica reconnects (and C shares its running records
    // again), and the clients stay with their replicas.
    redis.restart().await;
    for replica in [&a, &b, &c] {
        replica.until_connected().await;
    }
    for (id, kind) in &queries {
        if *kind == "lost" {
            wait_until("C shared its running records again", || {
                a.record(id).is_some()
            })
            .await;
        }
    }
    for replica in [&a, &b] {
        for _ in 0..2 {
            let id = replica.submit("default");
            for watcher in [&a, &b] {
                watched.push((watcher.name, id.clone(), watcher.watch(&id)));
            }
            queries.insert(id, replica.name);
        }
    }

    // C is killed mid-query.
    let killed = Instant::now();
    c.kill_9();
    let mut lost_seen = Vec::new();
    for (replica, id, watcher) in watched {
        let events = tokio::time::timeout(LEASE + Duration::from_secs(30), watcher)
            .await
            .unwrap_or_else(|_| panic!("{replica}: no terminal event for {id}"))
            .unwrap();
        let end = one_terminal(replica, &id, &events);
        if queries[&id] == "lost" {
            assert_eq!(end["type"], "failed", "{replica} {id}: {end}");
            assert_eq!(
                end["error"]["kind"], "replica_lost",
                "{replica} {id}: {end}"
            );
            assert_eq!(end["error"]["stage"], "forever", "{replica} {id}: {end}");
            assert_eq!(
                end["seq"],
                events[events.len() - 2]["seq"].as_u64().unwrap() + 1
            );
            lost_seen.push(killed.elapsed());
        } else {
            assert_eq!(end["type"], "completed", "{replica} {id}: {end}");
        }
    }
    let slowest = lost_seen.iter().max().unwrap();
    assert_eq!(
        lost_seen.len(),
        6,
        "three lost queries, watched on two replicas"
    );
    assert!(
        *slowest < LEASE + Duration::from_secs(5),
        "the last replica_lost came {slowest:?} after the kill"
    );

    // No record stays running, on either survivor. (C's quick queries ended before
    // Redis restarted: Redis, without persistence, lost their records; C, which kept
    // them, is gone.)
    for (id, kind) in &queries {
        for replica in [&a, &b] {
            let Some(record) = replica.record(id) else {
                assert_eq!(*kind, "c", "{}: no record of {id}", replica.name);
                continue;
            };
            assert_ne!(
                record["status"], "running",
                "{} {id}: {record}",
                replica.name
            );
            if *kind == "lost" {
                assert_eq!(record["status"], "failed", "{record}");
                assert_eq!(record["pipeline"], "slow", "{record}");
                assert_eq!(record["error"]["kind"], "replica_lost", "{record}");
                assert_eq!(record["error"]["stage"], "forever", "{record}");
            }
        }
    }
    a.stop();
    b.stop();
}

#[tokio::test]
async fn sighup_reloads_the_config_file_and_an_invalid_one_changes_nothing() {
    let (port, admin) = (free_port(), free_port());
    let config = |agents: &[&str]| {
        let mut out = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n"
        );
        for name in agents {
            out.push_str(&format!("[agents.{name}]\nurl = \"http://127.0.0.1:9\"\n"));
        }
        out
    };
    let path = write("sighup.toml", &config(&["one"]));
    let mut child = Proc(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The log, line by line, as the gateway writes it: the test's signal that a reload
    // is done.
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stderr = BufReader::new(child.0.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut until_logged = async |what: &str| {
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.recv().await {
                if line.contains(what) {
                    return line;
                }
            }
            panic!("the gateway's log ended");
        });
        found
            .await
            .unwrap_or_else(|_| panic!("never logged: {what}"))
    };
    until_logged("agentgate listening").await;
    let breakers = || http("GET", admin, "/api/orchestration/circuit-breakers", "", "").1;
    assert!(breakers().contains("\"one\"") && !breakers().contains("\"two\""));

    let hangup = |pid: u32| {
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status();
        assert!(status.unwrap().success());
    };
    std::fs::write(&path, config(&["one", "two"])).unwrap();
    hangup(child.0.id());
    until_logged("configuration reloaded").await;
    assert!(breakers().contains("\"two\""), "{}", breakers());

    std::fs::write(&path, "[agents.three]\nurl = 3\n").unwrap();
    hangup(child.0.id());
    let line = until_logged("configuration not reloaded").await;
    assert!(line.contains(&format!("{}:2:7", path.display())), "{line}");
    assert!(breakers().contains("\"two\"") && !breakers().contains("\"three\""));
}
