//! `loadgen open-loop`: GET (or POST) one URL at a fixed offered rate
//! (`benches/failfast.sh`, `benches/admission.sh`).
//!
//! Request *i* is due at `start + i / rate`, whatever happened to the earlier ones (an
//! open loop, like wrk2): a dispatcher hands each due request to an idle keep-alive
//! connection and the latency is counted from when the request was **due**, so a server
//! (or a client) that falls behind shows up in the figures instead of lowering the rate
//! (no coordinated omission). The latency from when it was actually sent is reported
//! too; the difference is the client's own scheduling delay.
//!
//! tokio's timer ticks in milliseconds, too coarse for 20k requests per second, so the
//! dispatcher never sleeps: it checks the clock, dispatches what is due and yields to
//! the runtime (which polls the sockets in between). The client's CPU is therefore busy
//! the whole run; it must be on a CPU of its own.
//!
//! For admission control (`benches/admission.sh`) several answers are expected at once
//! (`--expect-status 200 --expect-status 503`): each status gets its own latency figures,
//! and with `--rss-every` the server's resident memory is printed while the load runs.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use clap::Args as ClapArgs;
use http::{StatusCode, Uri};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::http::Conn;
use crate::procfs::{self, Sched};
use crate::stats::{summarise, us, Summary};
use crate::BoxError;

/// Flags of `loadgen open-loop`.
#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    /// The URL to GET, e.g. http://127.0.0.1:8080/agents/echo/echo.
    #[arg(long)]
    url: String,
    /// Offered requests per second.
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
    /// How long the measured part lasts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long to send at the same rate before measuring.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Keep-alive connections (each carries one request at a time).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// The status every answer must have (e.g. 503 for an open breaker); repeat it when
    /// several are fine (each then gets its own latency figures).
    #[arg(long, default_values_t = [200])]
    expect_status: Vec<u16>,
    /// POST this JSON body instead of a GET.
    #[arg(long)]
    body: Option<String>,
    /// A request header, `name: value` (repeatable), e.g. an API key.
    #[arg(long = "header", value_parser = header)]
    headers: Vec<(String, String)>,
    /// With --server-pid: print the server's resident memory this often while measuring.
    #[arg(long, value_parser = humantime::parse_duration)]
    rss_every: Option<Duration>,
    /// A name for the printed line.
    #[arg(long, default_value = "open-loop")]
    label: String,
    /// The server's PID, to report the CPU it used while measured.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Another process's PID (e.g. redis-server behind the server), whose CPU is
    /// reported too, as `other_cpu`.
    #[arg(long)]
    other_pid: Option<u32>,
}

/// What a finished request reports back to the dispatcher.
struct Done {
    /// The connection, unless it failed.
    conn: Option<Conn>,
    due: Instant,
    sent: Instant,
    finished: Instant,
    measured: bool,
    outcome: Result<StatusCode, String>,
}

pub(crate) async fn run(args: Args) -> Result<(), BoxError> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err(format!("--rate {}: must be a positive number", args.rate).into());
    }
    let uri: Uri = args.url.parse()?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let expect: Vec<StatusCode> = args
        .expect_status
        .iter()
        .map(|s| StatusCode::from_u16(*s))
        .collect::<Result<_, _>>()?;
    let request = Req {
        path,
        headers: args.headers.clone(),
        body: args.body.clone().map(Bytes::from),
    };

    // Idle connections are used in turn (first in, first out): none sits idle for long,
    // so none runs into the server's keep-alive timeout (the gateway closes a connection
    // that sends nothing for 10 s) and races it with a request.
    let mut idle = std::collections::VecDeque::with_capacity(args.connections.max(1));
    for _ in 0..args.connections.max(1) {
        idle.push_back(Conn::open(&uri).await?);
    }
    // One request first: the answer must be an expected one.
    let (status, body) = request.send(&mut idle[0]).await?;
    if !expect.contains(&status) {
        return Err(format!(
            "{} answered {status} (expected {expect:?}): {}",
            args.url,
            String::from_utf8_lossy(&body)
        )
        .into());
    }
    let request = std::sync::Arc::new(request);

    let per_request = 1e9 / args.rate;
    let warmup_n = (args.warmup.as_secs_f64() * args.rate).round() as u64;
    let measured_n = (args.duration.as_secs_f64() * args.rate).round() as u64;
    let total = warmup_n + measured_n;
    let start = Instant::now() + Duration::from_millis(10);
    let due = |i: u64| start + Duration::from_nanos((i as f64 * per_request) as u64);

    let (tx, mut rx) = mpsc::unbounded_channel::<Done>();
    let mut from_due = Vec::with_capacity(measured_n as usize);
    // Per status: latency from due, and from sent.
    let mut by_status: BTreeMap<u16, (Vec<Duration>, Vec<Duration>)> = BTreeMap::new();
    let mut rss = RssLog::new(args.server_pid, args.rss_every);
    let mut from_sent = Vec::with_capacity(measured_n as usize);
    let mut lag = Vec::with_capacity(measured_n as usize);
    let mut first_due: Option<Instant> = None;
    let mut last_finished = start;
    let mut unexpected = 0u64;
    let mut first_unexpected = None;
    let mut errors = 0u64;
    let mut first_error = None;
    // Requests that were due while every connection was busy.
    let mut starved = 0u64;
    let mut starved_at = None;
    let mut cpu_at_start = None;
    let mut next = 0u64;
    let mut outstanding = 0usize;

    loop {
        while let Ok(done) = rx.try_recv() {
            outstanding -= 1;
            if let Some(conn) = done.conn {
                idle.push_back(conn);
            }
            match done.outcome {
                Ok(status) if expect.contains(&status) => {
                    if done.measured {
                        let (due, sent) = by_status.entry(status.as_u16()).or_default();
                        due.push(done.finished - done.due);
                        sent.push(done.finished - done.sent);
                    }
                }
                Ok(status) => {
                    unexpected += 1;
                    first_unexpected.get_or_insert(status);
                }
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
            if done.measured {
                from_due.push(done.finished - done.due);
                from_sent.push(done.finished - done.sent);
                lag.push(done.sent.saturating_duration_since(done.due));
                last_finished = last_finished.max(done.finished);
            }
        }
        if next == total && outstanding == 0 {
            break;
        }
        let now = Instant::now();
        while next < total && due(next) <= now {
            let Some(mut conn) = idle.pop_front() else {
                if starved_at != Some(next) {
                    starved_at = Some(next);
                    starved += 1;
                }
                break;
            };
            let measured = next >= warmup_n;
            if measured && first_due.is_none() {
                first_due = Some(due(next));
                cpu_at_start = Some((
                    args.server_pid.and_then(procfs::sched),
                    args.other_pid.and_then(procfs::sched),
                    procfs::sched(0),
                ));
                rss.start(due(next));
            }
            let (tx, request, due_at) = (tx.clone(), request.clone(), due(next));
            tokio::spawn(async move {
                let sent = Instant::now();
                let result = request.send(&mut conn).await;
                let finished = Instant::now();
                let (conn, outcome) = match result {
                    Ok((status, _)) => (Some(conn), Ok(status)),
                    Err(e) => (None, Err(e.to_string())),
                };
                let _ = tx.send(Done {
                    conn,
                    due: due_at,
                    sent,
                    finished,
                    measured,
                    outcome,
                });
            });
            next += 1;
            outstanding += 1;
        }
        if idle.is_empty() && outstanding == 0 {
            return Err(format!(
                "every connection failed ({errors} errors; first: {})",
                first_error.unwrap_or_default()
            )
            .into());
        }
        rss.tick(now);
        tokio::task::yield_now().await;
    }
    rss.finish();
    let since = |at: Option<Sched>, pid: Option<u32>| {
        at.zip(pid.and_then(procfs::sched)).map(|(a, b)| b.since(a))
    };
    let (server, other, own) = match cpu_at_start {
        Some((server, other, own)) => (
            since(server, args.server_pid),
            since(other, args.other_pid),
            since(own, Some(0)),
        ),
        None => (None, None, None),
    };

    if errors > 0 || unexpected > 0 {
        return Err(format!(
            "{}: {errors} failed requests (first: {}), {unexpected} answers other than {expect:?} (first: {})",
            args.label,
            first_error.unwrap_or_default(),
            first_unexpected.map(|s| s.to_string()).unwrap_or_default()
        )
        .into());
    }
    let elapsed = first_due.map_or(Duration::ZERO, |f| {
        last_finished.saturating_duration_since(f)
    });
    let achieved = from_due.len() as f64 / elapsed.as_secs_f64().max(1e-9);
    let d = summarise(from_due);
    let s = summarise(from_sent);
    let l = summarise(lag);
    print_result(
        &args,
        achieved,
        (&d, &s, &l),
        starved,
        elapsed,
        [server, other, own],
    );
    if expect.len() > 1 {
        for (status, (due, sent)) in by_status {
            let (d, s) = (summarise(due), summarise(sent));
            let rate = d.n as f64 / elapsed.as_secs_f64().max(1e-9);
            let (n, label) = (d.n, &args.label);
            let (p50, p99, max) = (us(d.p50), us(d.p99), us(d.max));
            let (sent_p50, sent_p99) = (us(s.p50), us(s.p99));
            println!(
                "{label}: status {status}: n {n} ({rate:.0}/s); latency from due: p50 {p50:.1} us, \
                 p99 {p99:.1} us, max {max:.1} us; from sent: p50 {sent_p50:.1} us, p99 {sent_p99:.1} us"
            );
            println!(
                "RESULT label={label} status={status} n={n} rate={rate:.0} p50_us={p50:.1} \
                 p99_us={p99:.1} max_us={max:.1} sent_p50_us={sent_p50:.1} sent_p99_us={sent_p99:.1}"
            );
        }
    }
    Ok(())
}

/// One request to send, again and again.
struct Req {
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Bytes>,
}

impl Req {
    async fn send(&self, conn: &mut Conn) -> Result<(StatusCode, Bytes), BoxError> {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match &self.body {
            Some(body) => conn.post(&self.path, &headers, body.clone()).await,
            None => conn.get_with(&self.path, &headers).await,
        }
    }
}

/// `name: value`.
fn header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected `name: value`"))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

/// The server's resident memory every `every` while measuring: one line each, then the
/// spread (`RSS` lines are for scripts).
struct RssLog {
    pid: Option<u32>,
    every: Option<Duration>,
    start: Option<Instant>,
    next: Option<Instant>,
    samples: Vec<(Duration, u64)>,
}

impl RssLog {
    fn new(pid: Option<u32>, every: Option<Duration>) -> Self {
        Self {
            pid,
            every,
            start: None,
            next: None,
            samples: Vec::new(),
        }
    }

    fn start(&mut self, at: Instant) {
        if self.pid.is_some() && self.every.is_some() {
            self.start = Some(at);
            self.next = Some(at);
        }
    }

    fn tick(&mut self, now: Instant) {
        let (Some(pid), Some(every), Some(start), Some(next)) =
            (self.pid, self.every, self.start, self.next)
        else {
            return;
        };
        if now < next {
            return;
        }
        self.next = Some(next + every);
        if let Some((rss, _)) = procfs::memory_kib(pid) {
            let t = now.saturating_duration_since(start);
            println!(
                "RSS t={:.0}s rss_mb={:.1}",
                t.as_secs_f64(),
                procfs::mb(rss)
            );
            self.samples.push((t, rss));
        }
    }

    fn finish(&mut self) {
        if let Some(next) = self.next {
            self.tick(next.max(Instant::now()));
        }
        let Some(first) = self.samples.first().map(|s| s.1) else {
            return;
        };
        let (min, max) = self
            .samples
            .iter()
            .fold((u64::MAX, 0), |(lo, hi), (_, r)| (lo.min(*r), hi.max(*r)));
        let last = self.samples.last().map_or(first, |s| s.1);
        println!(
            "RSS summary: first {:.1} MB, last {:.1} MB, min {:.1} MB, max {:.1} MB, spread {:.1}% of the first",
            procfs::mb(first),
            procfs::mb(last),
            procfs::mb(min),
            procfs::mb(max),
            (max - min) as f64 / first as f64 * 100.0
        );
    }
}

fn print_result(
    args: &Args,
    achieved: f64,
    (d, s, l): (&Summary, &Summary, &Summary),
    starved: u64,
    elapsed: Duration,
    [server, other, own]: [Option<Sched>; 3],
) {
    let cpu = server.map_or("n/a".to_owned(), |c| c.shares(elapsed));
    let wall = elapsed.as_secs_f64().max(1e-9);
    let share = |c: Option<Sched>, f: fn(Sched) -> Duration| {
        c.map_or("nan".to_owned(), |c| {
            // 0.01 of a CPU is 20 us a request at 500/s: four decimals.
            format!("{:.4}", f(c).as_secs_f64() / wall)
        })
    };
    println!(
        "{}: offered {:.0} req/s, achieved {achieved:.0} req/s over {} connections, n {}; \
         latency from due: p50 {:.1} us, p90 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us; \
         from sent: p50 {:.1} us, p99 {:.1} us; dispatch lag p99 {:.1} us ({starved} requests found every connection busy); \
         server CPU {cpu} of one CPU; loadgen waiting for its CPU {}",
        args.label,
        args.rate,
        args.connections,
        d.n,
        us(d.p50),
        us(d.p90),
        us(d.p99),
        us(d.p999),
        us(d.max),
        us(s.p50),
        us(s.p99),
        us(l.p99),
        own.map_or("n/a".to_owned(), |c| format!("{:.0}%", c.wait.as_secs_f64() / wall * 100.0)),
    );
    // One line for scripts: key=value, latencies in microseconds.
    println!(
        "RESULT label={} offered={:.0} achieved={achieved:.0} n={} p50_us={:.1} p90_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1} sent_p50_us={:.1} sent_p99_us={:.1} lag_p99_us={:.1} starved={starved} server_cpu={} server_wait={} other_cpu={} loadgen_wait={}",
        args.label,
        args.rate,
        d.n,
        us(d.p50),
        us(d.p90),
        us(d.p99),
        us(d.p999),
        us(d.max),
        us(s.p50),
        us(s.p99),
        us(l.p99),
        share(server, |c| c.run),
        share(server, |c| c.wait),
        share(other, |c| c.run),
        share(own, |c| c.wait),
    );
}
