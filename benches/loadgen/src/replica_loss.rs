//! `loadgen replica-loss`: how long after a replica is killed its watchers on the other
//! replicas get the query's terminal event (`benches/replica_loss.sh`, SPEC §9).
//!
//! Three `agentgate run` replicas share one Redis (started by the script) and a slow
//! agent (its answer never comes within the run). Each round starts replica C, submits a
//! query to it, follows that query over the WebSocket of replicas A and B until its first
//! event has reached both, then kills C with SIGKILL and measures, on each of A and B,
//! the time from the kill to the `failed` event with `error.kind = "replica_lost"`.
//! C is started anew for the next round (a new replica id); A and B stay.
//!
//! A replica renews its lease every third of it, so the time left on its lease when it
//! dies depends on when it dies: the kills are spread evenly over the renewal period
//! (round *k* waits `frac(k × 0.618) × lease / 3` before its kill), rather than all
//! coming just after the renewal C made when it started.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use clap::Args as ClapArgs;
use futures_util::StreamExt;
use http::{StatusCode, Uri};
use serde_json::Value;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::http::Conn;
use crate::stats::{ms, summarise};
use crate::BoxError;

/// Flags of `loadgen replica-loss`.
#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    /// The agentgate binary.
    #[arg(long)]
    agentgate: PathBuf,
    /// The port of the Redis on 127.0.0.1 the replicas share.
    #[arg(long)]
    redis_port: u16,
    /// The slow agent's URL (its answers must take longer than a round).
    #[arg(long)]
    agent: String,
    /// `[progress] lease` of the replicas.
    #[arg(long, value_parser = humantime::parse_duration)]
    lease: Duration,
    /// Kills (rounds).
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Where the replicas' configs and logs go.
    #[arg(long)]
    work_dir: PathBuf,
}

/// One `agentgate run` process.
struct Replica {
    name: String,
    child: Child,
    port: u16,
}

pub(crate) async fn run(args: Args) -> Result<(), BoxError> {
    let a = Replica::start(&args, "a").await?;
    let b = Replica::start(&args, "b").await?;
    // Per kill: the time until the first and until the last watcher had its event.
    let (mut first, mut last) = (Vec::new(), Vec::new());
    for kill in 1..=args.kills {
        let mut c = Replica::start(&args, &format!("c{kill}")).await?;
        let id = c.submit().await?;
        let mut watchers = Vec::new();
        for watcher in [&a, &b] {
            watchers.push(watcher.follow(&id).await?);
        }
        let phase = (kill as f64 * 0.618_033_988_75).fract();
        tokio::time::sleep(args.lease.div_f64(3.0).mul_f64(phase)).await;
        let killed = Instant::now();
        c.child.kill()?;
        let waits = watchers.into_iter().map(|ws| async move {
            let end = terminal(ws).await?;
            if end["type"] != "failed" || end["error"]["kind"] != "replica_lost" {
                return Err(format!("the terminal event is not replica_lost: {end}").into());
            }
            Ok::<_, BoxError>(killed.elapsed())
        });
        let took: Vec<Duration> = futures_util::future::try_join_all(waits).await?;
        c.child.wait()?;
        let (lo, hi) = (took.iter().min().copied(), took.iter().max().copied());
        let (lo, hi) = (lo.unwrap_or_default(), hi.unwrap_or_default());
        println!(
            "kill {kill:>2}: terminal event on a {:.0} ms, on b {:.0} ms",
            ms(took[0]),
            ms(took[1])
        );
        first.push(lo);
        last.push(hi);
    }
    drop((a, b));
    let (f, l) = (summarise(first), summarise(last));
    println!(
        "lease {}: {} kills; kill -9 → replica_lost on both other replicas: p50 {:.0} ms, max {:.0} ms \
         (on the first of them: p50 {:.0} ms, max {:.0} ms); SPEC bound lease + 5 s = {:.0} ms",
        humantime::format_duration(args.lease),
        l.n,
        ms(l.p50),
        ms(l.max),
        ms(f.p50),
        ms(f.max),
        ms(args.lease + Duration::from_secs(5)),
    );
    println!(
        "RESULT lease_ms={:.0} kills={} p50_ms={:.0} max_ms={:.0} first_p50_ms={:.0} first_max_ms={:.0}",
        ms(args.lease),
        l.n,
        ms(l.p50),
        ms(l.max),
        ms(f.p50),
        ms(f.max)
    );
    Ok(())
}

// === impl Replica ===

impl Drop for Replica {
    /// A replica never outlives the run, whatever happens to it.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    /// Starts replica `name` and waits until it has connected to Redis.
    async fn start(args: &Args, name: &str) -> Result<Self, BoxError> {
        let (port, admin) = (free_port()?, free_port()?);
        let config = args.work_dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
                 shutdown_grace = \"1s\"\n\n\
                 [progress]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}\"\nlease = \"{}\"\n\n\
                 [agents.slow]\nurl = \"{}\"\ntimeout = \"10m\"\n\n\
                 [pipelines.default]\ndeadline = \"10m\"\n\
                 [[pipelines.default.stages]]\nname = \"slow\"\nagent = \"slow\"\npath = \"/process\"\n",
                args.redis_port,
                humantime::format_duration(args.lease),
                args.agent,
            ),
        )?;
        let log = std::fs::File::create(args.work_dir.join(format!("{name}.log")))?;
        let child = Command::new(&args.agentgate)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let replica = Self {
            name: name.to_owned(),
            child,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((StatusCode::OK, body)) = replica.get("/readyz").await {
                if String::from_utf8_lossy(&body).contains("\"redis\":\"connected\"") {
                    return Ok(replica);
                }
            }
            if Instant::now() > deadline {
                return Err(format!("replica {name} did not connect to redis within 30 s").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn uri(&self) -> Uri {
        format!("http://127.0.0.1:{}", self.port)
            .parse()
            .expect("a valid URI")
    }

    async fn get(&self, path: &str) -> Result<(StatusCode, Bytes), BoxError> {
        Conn::open(&self.uri()).await?.get_with(path, &[]).await
    }

    /// Submits a query (`Prefer: respond-async`); returns its id.
    async fn submit(&self) -> Result<String, BoxError> {
        let body = Bytes::from_static(br#"{"query":"replica loss"}"#);
        let headers = [("prefer", "respond-async")];
        let (status, answer) = Conn::open(&self.uri())
            .await?
            .post("/api/query", &headers, body)
            .await?;
        if status != StatusCode::ACCEPTED {
            return Err(format!("{}: submit answered {status}", self.name).into());
        }
        let answer: Value = serde_json::from_slice(&answer)?;
        Ok(answer["query_id"].as_str().ok_or("no query_id")?.to_owned())
    }

    /// A WebSocket of this replica following `id`, once its first event arrived.
    async fn follow(&self, id: &str) -> Result<Ws, BoxError> {
        let url = format!("ws://127.0.0.1:{}/ws?query_id={id}", self.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
            // `subscribed`, then the first event; `unknown_query` until the query has
            // reached this replica.
            while let Some(frame) = next_json(&mut ws).await? {
                if frame["type"] == "error" {
                    break;
                }
                if frame.get("seq").is_some() {
                    return Ok(ws);
                }
            }
            if Instant::now() > deadline {
                return Err(format!("{} never knew query {id}", self.name).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame, parsed; `None` when the connection ends.
async fn next_json(ws: &mut Ws) -> Result<Option<Value>, BoxError> {
    while let Some(frame) = ws.next().await {
        if let Message::Text(text) = frame? {
            return Ok(Some(serde_json::from_str(&text)?));
        }
    }
    Ok(None)
}

/// Reads `ws` until its query's terminal event, which is returned.
async fn terminal(mut ws: Ws) -> Result<Value, BoxError> {
    let wait = async {
        while let Some(frame) = next_json(&mut ws).await? {
            if ["completed", "failed", "cancelled"].contains(&frame["type"].as_str().unwrap_or(""))
            {
                return Ok(frame);
            }
        }
        Err::<Value, BoxError>("the WebSocket closed before the terminal event".into())
    };
    tokio::time::timeout(Duration::from_secs(120), wait)
        .await
        .map_err(|_| "no terminal event within 120 s")?
}

fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
