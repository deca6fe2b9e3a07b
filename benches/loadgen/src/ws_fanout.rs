//! `loadgen ws-fanout`: many WebSocket clients, each subscribed to a steady stream of
//! queries (`benches/ws_fanout.sh`).
//!
//! The clients are split into groups of `--group-size`. A driver submits queries with
//! `POST /api/query` + `Prefer: respond-async`, round-robin over the groups so that every
//! group gets a new query every `--interval`; each client of that group then sends
//! `{"type":"subscribe","query_id":…,"after_seq":0}` and follows the query to its
//! terminal event. A group as large as `--clients` is the broadcast case: every client
//! watches every query.
//!
//! What is measured, per event a client reads:
//!
//! - **delivery latency**: the client's wall clock when it has read the frame minus the
//!   event's `ts` (the hub stamps `ts` with `SystemTime` when it publishes; same machine,
//!   same clock). `ts` has millisecond precision and is truncated, so each figure is an
//!   upper bound, at most 1 ms above the true latency. Only *live* events count: an
//!   event published before the client sent its `subscribe` (the first stage's
//!   `started`, published before the 202 is even sent) was replayed, not delivered
//!   live, and is counted apart.
//! - **seq**: per client and query, seq must go 1, 2, 3… A jump without a `lagged`
//!   notice before it is a gap (a bug); `lagged` notices are counted apart (the client
//!   fell behind and was told so). Every subscription must end with a terminal event.
//! - **subscribe → subscribed**: how long the gateway took to acknowledge.
//!
//! With `--gateway-pid`, the gateway's `VmRSS` is sampled every 250 ms (before the
//! clients connect, once they are all connected, and the peak under load), `VmHWM` is
//! read at the end, and the CPU time the gateway used in the measured window is
//! reported — with the time it (and this client) spent runnable but waiting for its CPU,
//! the sign of a run distorted by something else on the machine. `--timeline` prints
//! all of it per second.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Args as ClapArgs;
use futures_util::{SinkExt, StreamExt};
use http::{StatusCode, Uri};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, Semaphore};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::http::Conn;
use crate::procfs::{self, mb, Sched};
use crate::stats::{ms, summarise};
use crate::BoxError;

/// Flags of `loadgen ws-fanout`.
#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    /// The WebSocket URL, e.g. ws://127.0.0.1:8080/ws.
    #[arg(long)]
    ws: String,
    /// The gateway's base URL for `POST /api/query`, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    api: String,
    /// Concurrent WebSocket clients.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Clients per group; every client of a group subscribes to every query of its
    /// group (equal to --clients: every client watches every query).
    #[arg(long, default_value_t = 1000)]
    group_size: usize,
    /// Each group gets a new query this often.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Queries are submitted for this long before measuring.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Events published during this long (after the warm-up) are measured.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// After the last submission, how long queries get to deliver their terminal event.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// WebSocket handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// The `query` text of each submitted query.
    #[arg(long, default_value = "fan-out benchmark query")]
    query: String,
    /// The gateway's PID: sample its RSS and CPU time from /proc.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Also print, per second of the measured window, the delivery latency of the events
    /// published in that second and the CPU the gateway and this client used.
    #[arg(long)]
    timeline: bool,
    /// Targets checked at the end: delivery p99 at most this.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    target_p99: Duration,
    /// Targets checked at the end: gateway peak RSS at most this many MB (10^6 bytes).
    #[arg(long, default_value_t = 200.0)]
    target_rss_mb: f64,
}

/// What the driver tells the clients of a group.
#[derive(Clone, Debug)]
enum Cmd {
    /// Subscribe to this query.
    Subscribe(Arc<str>),
    /// No more queries: finish the open subscriptions, then close (at the latest then).
    Finish(Instant),
}

/// The measured window, in microseconds since the Unix epoch (0 = not started yet).
#[derive(Debug, Default)]
struct Window {
    start_us: AtomicU64,
    end_us: AtomicU64,
}

/// One client's subscription to one query.
#[derive(Debug)]
struct Sub {
    /// The seq expected next.
    expected: u64,
    /// When the client sent `subscribe` (µs since the epoch).
    sent_us: u64,
    /// When it read `subscribed`.
    acked_us: Option<u64>,
}

/// What one client counted.
#[derive(Debug, Default)]
struct ClientStats {
    /// Live events published in the window: (ms from the window's start to `ts`,
    /// delivery latency in µs).
    latency: Vec<(u32, u32)>,
    /// `subscribe` → `subscribed` (µs), for subscriptions sent in the window.
    ack_us: Vec<u32>,
    /// Query events read (live and replayed, in and out of the window).
    events: u64,
    /// Of these, published in the window.
    events_in_window: u64,
    /// Published before the client sent `subscribe`.
    replayed: u64,
    /// Published after `subscribe` was sent and before `subscribed` was read (counted
    /// live: the gateway may have subscribed before or after publishing them).
    ambiguous: u64,
    /// Seq jumps not announced by `lagged` (events missing).
    gaps: u64,
    /// Events with a seq already seen.
    duplicates: u64,
    /// `lagged` notices.
    lagged: u64,
    subscriptions: u64,
    terminals: u64,
    /// Terminal events other than `completed`.
    not_completed: u64,
    /// Subscriptions still open when the client stopped.
    unfinished: u64,
    /// Error frames, unexpected frames, socket errors.
    errors: u64,
    first_error: Option<String>,
}

/// The fields of a server frame this client looks at (the rest is skipped).
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    query_id: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    ts: Option<Cow<'a, str>>,
    #[serde(default)]
    next_seq: Option<u64>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn parse_ts_us(ts: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(ts).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_micros() as u64)
}

// === impl ClientStats ===

impl ClientStats {
    fn error(&mut self, what: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }

    /// Accounts for one text frame read at `read_us`.
    fn on_frame(
        &mut self,
        text: &str,
        read_us: u64,
        subs: &mut HashMap<Arc<str>, Sub>,
        window: &Window,
    ) {
        let frame: Frame<'_> = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => return self.error(|| format!("unparsable frame ({e}): {text}")),
        };
        let query_id = frame.query_id.as_deref().unwrap_or_default();
        match (&*frame.kind, frame.seq) {
            ("subscribed", _) => {
                if let Some(sub) = subs.get_mut(query_id) {
                    sub.acked_us = Some(read_us);
                    let start = window.start_us.load(Ordering::Relaxed);
                    if start != 0
                        && (start..window.end_us.load(Ordering::Relaxed)).contains(&sub.sent_us)
                    {
                        self.ack_us.push(read_us.saturating_sub(sub.sent_us) as u32);
                    }
                }
            }
            ("lagged", _) => {
                self.lagged += 1;
                if let (Some(sub), Some(next)) = (subs.get_mut(query_id), frame.next_seq) {
                    sub.expected = next;
                }
            }
            ("progress" | "error" | "completed" | "failed" | "cancelled", Some(seq)) => {
                self.on_event(&frame, query_id, seq, read_us, subs, window);
            }
            ("error", None) => {
                self.error(|| format!("error frame: {}", frame.message.as_deref().unwrap_or(text)))
            }
            ("pong" | "unsubscribed", _) => {}
            _ => self.error(|| format!("unexpected frame: {text}")),
        }
    }

    fn on_event(
        &mut self,
        frame: &Frame<'_>,
        query_id: &str,
        seq: u64,
        read_us: u64,
        subs: &mut HashMap<Arc<str>, Sub>,
        window: &Window,
    ) {
        self.events += 1;
        let Some(sub) = subs.get_mut(query_id) else {
            return self.error(|| format!("event of a query not subscribed: {query_id}"));
        };
        match seq.cmp(&sub.expected) {
            std::cmp::Ordering::Equal => {}
            std::cmp::Ordering::Greater => self.gaps += seq - sub.expected,
            std::cmp::Ordering::Less => self.duplicates += 1,
        }
        sub.expected = sub.expected.max(seq + 1);
        let Some(ts) = frame.ts.as_deref().and_then(parse_ts_us) else {
            return self.error(|| format!("event without a valid ts: {query_id} seq {seq}"));
        };
        if ts < sub.sent_us {
            self.replayed += 1;
        } else {
            if sub.acked_us.is_none_or(|acked| ts < acked) {
                self.ambiguous += 1;
            }
            let start = window.start_us.load(Ordering::Relaxed);
            if start != 0 && (start..window.end_us.load(Ordering::Relaxed)).contains(&ts) {
                self.events_in_window += 1;
                let latency = read_us.saturating_sub(ts).min(u64::from(u32::MAX));
                let at_ms = ((ts - start) / 1000).min(u64::from(u32::MAX));
                self.latency.push((at_ms as u32, latency as u32));
            }
        }
        if matches!(&*frame.kind, "completed" | "failed" | "cancelled") {
            self.terminals += 1;
            if frame.kind != "completed" {
                self.not_completed += 1;
            }
            subs.remove(query_id);
        }
    }
}

/// One WebSocket client: connects, then follows its group's queries until told to finish.
async fn client(
    url: Arc<str>,
    mut cmds: broadcast::Receiver<Cmd>,
    connect: Arc<Semaphore>,
    connected: Arc<AtomicUsize>,
    window: Arc<Window>,
) -> ClientStats {
    let mut stats = ClientStats::default();
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let ws = async {
        let _permit = connect.acquire().await?;
        let uri: Uri = url.parse()?;
        let authority = uri.authority().ok_or("URL without host:port")?.to_string();
        let tcp = TcpStream::connect(authority).await?;
        tcp.set_nodelay(true)?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(&*url, tcp, Some(config)).await?;
        Ok::<_, BoxError>(ws)
    }
    .await;
    let mut ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            stats.error(|| format!("connect: {e}"));
            connected.fetch_add(1, Ordering::Relaxed);
            return stats;
        }
    };
    connected.fetch_add(1, Ordering::Relaxed);

    let mut subs: HashMap<Arc<str>, Sub> = HashMap::new();
    let mut finish: Option<Instant> = None;
    let deadline = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(deadline);
    loop {
        if finish.is_some() && subs.is_empty() {
            break;
        }
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let read_us = now_us();
                    stats.on_frame(text.as_str(), read_us, &mut subs, &window);
                }
                Some(Ok(Message::Close(frame))) => {
                    stats.error(|| format!("the gateway closed the connection: {frame:?}"));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    stats.error(|| format!("read: {e}"));
                    break;
                }
                None => {
                    stats.error(|| "the connection ended".to_owned());
                    break;
                }
            },
            cmd = cmds.recv(), if finish.is_none() => match cmd {
                Ok(Cmd::Subscribe(query_id)) => {
                    let text = format!(r#"{{"type":"subscribe","query_id":"{query_id}","after_seq":0}}"#);
                    subs.insert(query_id, Sub { expected: 1, sent_us: now_us(), acked_us: None });
                    stats.subscriptions += 1;
                    if let Err(e) = ws.send(Message::Text(text.into())).await {
                        stats.error(|| format!("send: {e}"));
                        break;
                    }
                }
                Ok(Cmd::Finish(at)) => {
                    finish = Some(at);
                    deadline.as_mut().reset(at);
                }
                Err(e) => {
                    stats.error(|| format!("driver channel: {e}"));
                    break;
                }
            },
            () = &mut deadline, if finish.is_some() => break,
        }
    }
    stats.unfinished = subs.len() as u64;
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    stats
}

/// What `/proc` said at one moment of the run.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at_us: u64,
    gw_rss_kib: Option<u64>,
    gw: Option<Sched>,
    own: Option<Sched>,
}

/// Samples `/proc` every 250 ms until aborted.
async fn sample(pid: Option<u32>, into: Arc<Mutex<Vec<Sample>>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let s = Sample {
            at_us: now_us(),
            gw_rss_kib: pid.and_then(procfs::memory_kib).map(|(rss, _)| rss),
            gw: pid.and_then(procfs::sched),
            own: procfs::sched(0),
        };
        into.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }
}

pub(crate) async fn run(args: Args) -> Result<(), BoxError> {
    if args.clients == 0 || args.group_size == 0 {
        return Err("--clients and --group-size must be at least 1".into());
    }
    let groups = args.clients.div_ceil(args.group_size);
    let api: Uri = args.api.parse()?;
    let mut api = Conn::open(&api).await?;
    let submit_body = Bytes::from(serde_json::to_vec(
        &serde_json::json!({ "query": args.query }),
    )?);
    let rss_idle = args.gateway_pid.and_then(procfs::memory_kib);
    let threads_before = procfs::own_threads();

    // --- connect every client ---------------------------------------------------------------
    let window = Arc::new(Window::default());
    let connect = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let connected = Arc::new(AtomicUsize::new(0));
    let url: Arc<str> = args.ws.as_str().into();
    let mut senders = Vec::with_capacity(groups);
    let mut clients = Vec::with_capacity(args.clients);
    for g in 0..groups {
        let (tx, _) = broadcast::channel(1024);
        let in_group = args.group_size.min(args.clients - g * args.group_size);
        for _ in 0..in_group {
            clients.push(tokio::spawn(client(
                url.clone(),
                tx.subscribe(),
                connect.clone(),
                connected.clone(),
                window.clone(),
            )));
        }
        senders.push(tx);
    }
    let t = Instant::now();
    while connected.load(Ordering::Relaxed) < args.clients {
        if t.elapsed() > Duration::from_secs(300) {
            return Err(format!(
                "only {} of {} clients connected within 300 s",
                connected.load(Ordering::Relaxed),
                args.clients
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let connect_time = t.elapsed();
    if let Some(dead) = clients.iter().position(|c| c.is_finished()) {
        let stats = clients.swap_remove(dead).await?;
        return Err(format!(
            "a client failed to connect: {}",
            stats.first_error.unwrap_or_default()
        )
        .into());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = args.gateway_pid.and_then(procfs::memory_kib);
    eprintln!(
        "loadgen: {} clients connected in {:.2} s; gateway RSS {}",
        args.clients,
        connect_time.as_secs_f64(),
        rss_connected.map_or("n/a".to_owned(), |(rss, _)| format!("{:.1} MB", mb(rss)))
    );

    // --- /proc sampler (RSS peak, CPU per second) -------------------------------------------
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = tokio::spawn(sample(args.gateway_pid, samples.clone()));

    // --- drive ------------------------------------------------------------------------------
    let period = args.interval.div_f64(groups as f64);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let started = Instant::now();
    let measure_from = started + args.warmup;
    let measure_until = measure_from + args.duration;
    let mut submitted = 0u64;
    let mut submitted_in_window = 0u64;
    let mut cpu_gw_start = None;
    let mut cpu_own_start = None;
    let mut measuring = false;
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= measure_until {
            break;
        }
        if !measuring && now >= measure_from {
            measuring = true;
            window.end_us.store(u64::MAX, Ordering::Relaxed);
            window.start_us.store(now_us(), Ordering::Relaxed);
            cpu_gw_start = args.gateway_pid.and_then(procfs::sched);
            cpu_own_start = procfs::sched(0);
        }
        let (status, body) = api
            .post(
                "/api/query",
                &[("prefer", "respond-async")],
                submit_body.clone(),
            )
            .await?;
        if status != StatusCode::ACCEPTED {
            return Err(format!(
                "POST /api/query answered {status}: {}",
                String::from_utf8_lossy(&body)
            )
            .into());
        }
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        let query_id: Arc<str> = answer["query_id"]
            .as_str()
            .ok_or("the 202 has no query_id")?
            .into();
        let _ = senders[submitted as usize % groups].send(Cmd::Subscribe(query_id));
        submitted += 1;
        if measuring {
            submitted_in_window += 1;
        }
    }
    let window_end_us = now_us();
    window.end_us.store(window_end_us, Ordering::Relaxed);
    let measured = Instant::now().saturating_duration_since(measure_from);
    let cpu_gw = args
        .gateway_pid
        .and_then(procfs::sched)
        .zip(cpu_gw_start)
        .map(|(b, a)| b.since(a));
    let cpu_own = procfs::sched(0).zip(cpu_own_start).map(|(b, a)| b.since(a));
    let threads = procfs::own_threads();

    // --- drain and collect ----------------------------------------------------------------
    let finish_by = Instant::now() + args.drain;
    for tx in &senders {
        let _ = tx.send(Cmd::Finish(finish_by));
    }
    let mut all = Vec::with_capacity(args.clients);
    for c in clients {
        all.push(c.await?);
    }
    sampler.abort();
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    let rss_end = args.gateway_pid.and_then(procfs::memory_kib);

    report(&Report {
        args: &args,
        groups,
        submitted,
        submitted_in_window,
        measured,
        connect_time,
        rss_idle,
        rss_connected,
        window_start_us: window.start_us.load(Ordering::Relaxed),
        samples,
        rss_end,
        cpu_gw,
        cpu_own,
        threads: threads_before.max(threads),
        clients: all,
    })
}

struct Report<'a> {
    args: &'a Args,
    groups: usize,
    submitted: u64,
    submitted_in_window: u64,
    measured: Duration,
    connect_time: Duration,
    rss_idle: Option<(u64, u64)>,
    rss_connected: Option<(u64, u64)>,
    window_start_us: u64,
    samples: Vec<Sample>,
    rss_end: Option<(u64, u64)>,
    cpu_gw: Option<Sched>,
    cpu_own: Option<Sched>,
    threads: Option<u64>,
    clients: Vec<ClientStats>,
}

fn report(r: &Report<'_>) -> Result<(), BoxError> {
    let a = r.args;
    let mut latency = Vec::new();
    let mut ack = Vec::new();
    let mut total = ClientStats::default();
    let (mut clients_lagged, mut clients_gaps, mut gaps_keeping_up) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    for c in &r.clients {
        latency.extend(
            c.latency
                .iter()
                .map(|&(_, u)| Duration::from_micros(u64::from(u))),
        );
        ack.extend(
            c.ack_us
                .iter()
                .map(|&u| Duration::from_micros(u64::from(u))),
        );
        total.events += c.events;
        total.events_in_window += c.events_in_window;
        total.replayed += c.replayed;
        total.ambiguous += c.ambiguous;
        total.gaps += c.gaps;
        total.duplicates += c.duplicates;
        total.lagged += c.lagged;
        total.subscriptions += c.subscriptions;
        total.terminals += c.terminals;
        total.not_completed += c.not_completed;
        total.unfinished += c.unfinished;
        total.errors += c.errors;
        clients_lagged += u64::from(c.lagged > 0);
        clients_gaps += u64::from(c.gaps > 0);
        if c.lagged == 0 {
            gaps_keeping_up += c.gaps;
        }
        if first_error.is_none() {
            first_error.clone_from(&c.first_error);
        }
    }
    let rss_peak = r.samples.iter().filter_map(|s| s.gw_rss_kib).max();
    if a.timeline {
        timeline(r);
    }
    let d = summarise(latency);
    let k = summarise(ack);
    let secs = r.measured.as_secs_f64().max(1e-9);
    let per_client = total.events_in_window as f64 / secs / a.clients as f64;
    let cpu = |c: Option<Sched>| c.map_or("n/a".to_owned(), |c| c.shares(r.measured));
    let mib = |v: Option<(u64, u64)>, hwm: bool| {
        v.map_or("n/a".to_owned(), |(rss, peak)| {
            format!("{:.1}", mb(if hwm { peak } else { rss }))
        })
    };
    let kind = if a.group_size >= a.clients {
        "broadcast: every client watches every query".to_owned()
    } else {
        format!("{} groups of {} clients", r.groups, a.group_size)
    };
    println!(
        "ws-fanout: {} clients ({kind}); each group gets a new query every {} ({:.1} queries/s offered, {:.1} submitted in the window); {:.0} s measured after {:.0} s warm-up",
        a.clients,
        humantime::format_duration(a.interval),
        r.groups as f64 / a.interval.as_secs_f64(),
        r.submitted_in_window as f64 / secs,
        secs,
        a.warmup.as_secs_f64(),
    );
    println!(
        "connected in {:.2} s; loadgen: {} thread(s), CPU {} of one CPU; gateway CPU {} of one CPU (measured window)",
        r.connect_time.as_secs_f64(),
        r.threads.map_or("?".to_owned(), |t| t.to_string()),
        cpu(r.cpu_own),
        cpu(r.cpu_gw),
    );
    for (who, c) in [("the gateway", r.cpu_gw), ("this client", r.cpu_own)] {
        if let Some(c) = c.filter(|c| c.wait.as_secs_f64() > 0.05 * secs) {
            println!(
                "WARNING: {who} was runnable but waiting for its CPU {:.0}% of the window: something else runs on that CPU and the figures are distorted",
                c.wait.as_secs_f64() / secs * 100.0
            );
        }
    }
    println!();
    println!(
        "| measured | n | p50 (ms) | p90 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | mean (ms) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, s) in [
        ("delivery latency (event ts -> read by the client)", &d),
        ("subscribe -> subscribed", &k),
    ] {
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            s.n,
            ms(s.p50),
            ms(s.p90),
            ms(s.p99),
            ms(s.p999),
            ms(s.max),
            ms(s.mean)
        );
    }
    println!();
    println!(
        "events read: {} in all; {} live ones published in the window ({:.1} per client per second, {:.0} deliveries/s); \
         {} replayed (published before the subscribe), {} published between subscribe and subscribed",
        total.events,
        total.events_in_window,
        per_client,
        total.events_in_window as f64 / secs,
        total.replayed,
        total.ambiguous,
    );
    println!(
        "seq: {} gaps without a lagged notice ({} clients), {} duplicates; lagged notices: {} ({} clients)",
        total.gaps, clients_gaps, total.duplicates, total.lagged, clients_lagged,
    );
    println!(
        "subscriptions: {} ({} queries submitted), terminal events {} ({} not `completed`), unfinished {}; errors {}{}",
        total.subscriptions,
        r.submitted,
        total.terminals,
        total.not_completed,
        total.unfinished,
        total.errors,
        first_error.as_deref().map_or(String::new(), |e| format!(" (first: {e})")),
    );
    println!(
        "gateway RSS (MB = 10^6 bytes): {} before the clients connected, {} with {} connected, peak {} under load (sampled every 250 ms), {} at the end; VmHWM {}",
        mib(r.rss_idle, false),
        mib(r.rss_connected, false),
        a.clients,
        rss_peak.map_or("n/a".to_owned(), |p| format!("{:.1}", mb(p))),
        mib(r.rss_end, false),
        mib(r.rss_end, true),
    );
    let hwm = r.rss_end.map(|(_, hwm)| mb(hwm));
    let p99_ok = d.p99 <= a.target_p99 && d.n > 0;
    let rss_ok = hwm.map(|h| h <= a.target_rss_mb);
    let gaps_ok = gaps_keeping_up == 0 && total.duplicates == 0;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "targets: delivery p99 <= {} ms: {} ({:.2} ms); gateway RSS <= {:.0} MB: {} ({}); zero seq gaps for clients that keep up: {} ({} gaps in clients without lagged)",
        ms(a.target_p99),
        verdict(p99_ok),
        ms(d.p99),
        a.target_rss_mb,
        rss_ok.map_or("n/a", verdict),
        hwm.map_or("n/a".to_owned(), |h| format!("VmHWM {h:.1} MB")),
        verdict(gaps_ok),
        gaps_keeping_up,
    );
    println!(
        "RESULT clients={} group_size={} p50_ms={:.2} p99_ms={:.2} p999_ms={:.2} max_ms={:.2} n={} per_client_per_s={:.1} gaps={} lagged={} hwm_mb={} rss_connected_mb={} gw_cpu={} gw_wait={} loadgen_wait={} errors={}",
        a.clients,
        a.group_size,
        ms(d.p50),
        ms(d.p99),
        ms(d.p999),
        ms(d.max),
        d.n,
        per_client,
        total.gaps,
        total.lagged,
        hwm.map_or("nan".to_owned(), |h| format!("{h:.1}")),
        r.rss_connected.map_or("nan".to_owned(), |(rss, _)| format!("{:.1}", mb(rss))),
        r.cpu_gw.map_or("nan".to_owned(), |c| format!("{:.2}", c.run.as_secs_f64() / secs)),
        r.cpu_gw.map_or("nan".to_owned(), |c| format!("{:.2}", c.wait.as_secs_f64() / secs)),
        r.cpu_own.map_or("nan".to_owned(), |c| format!("{:.2}", c.wait.as_secs_f64() / secs)),
        total.errors,
    );
    if total.errors > 0 || total.unfinished > 0 || total.not_completed > 0 {
        return Err(format!(
            "the run had {} errors, {} unfinished subscriptions, {} queries that did not complete (first error: {})",
            total.errors,
            total.unfinished,
            total.not_completed,
            first_error.unwrap_or_default()
        )
        .into());
    }
    Ok(())
}

/// Per second of the window: the latency of the events published in it, and the CPU
/// each process used (from the 250 ms samples nearest the second's bounds).
fn timeline(r: &Report<'_>) {
    let seconds = r.measured.as_secs_f64().ceil() as usize;
    let mut buckets: Vec<Vec<Duration>> = vec![Vec::new(); seconds.max(1)];
    for c in &r.clients {
        for &(at_ms, us) in &c.latency {
            if let Some(b) = buckets.get_mut(at_ms as usize / 1000) {
                b.push(Duration::from_micros(u64::from(us)));
            }
        }
    }
    let at = |t_us: u64| r.samples.iter().find(|s| s.at_us >= t_us).copied();
    let share =
        |a: Option<&Sample>, b: Option<&Sample>, f: fn(&Sample) -> Option<Sched>| match (a, b) {
            (Some(a), Some(b)) if b.at_us > a.at_us => match (f(a), f(b)) {
                (Some(x), Some(y)) => y.since(x).shares(Duration::from_micros(b.at_us - a.at_us)),
                _ => "n/a".to_owned(),
            },
            _ => "n/a".to_owned(),
        };
    println!();
    println!(
        "| second | events | p50 (ms) | p99 (ms) | max (ms) | gateway CPU | loadgen CPU | gateway RSS (MB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, b) in buckets.into_iter().enumerate() {
        let s = summarise(b);
        let from = at(r.window_start_us + i as u64 * 1_000_000);
        let to = at(r.window_start_us + (i as u64 + 1) * 1_000_000);
        println!(
            "| {i} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
            s.n,
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            share(from.as_ref(), to.as_ref(), |s| s.gw),
            share(from.as_ref(), to.as_ref(), |s| s.own),
            to.and_then(|s| s.gw_rss_kib)
                .map_or("n/a".to_owned(), |k| format!("{:.1}", mb(k))),
        );
    }
    println!();
}
