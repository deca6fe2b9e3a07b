//! What `/proc` says about a process: resident memory and CPU time (Linux only).

use std::time::Duration;

/// `VmRSS` and `VmHWM` (peak RSS) of `pid`, in KiB.
pub(crate) fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time used and time spent runnable but waiting for a CPU, summed over the threads
/// of `pid` (`/proc/PID/task/*/schedstat`, nanoseconds). `pid` 0 means this process.
///
/// The waiting time is the tell-tale of a distorted run: a pinned process that waits for
/// its CPU shares it with something else (a build, a browser).
pub(crate) fn sched(pid: u32) -> Option<Sched> {
    let dir = if pid == 0 {
        "/proc/self/task".to_owned()
    } else {
        format!("/proc/{pid}/task")
    };
    let (mut run, mut wait) = (0u64, 0u64);
    for task in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue; // the thread just ended
        };
        let mut fields = text
            .split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0));
        run += fields.next().unwrap_or(0);
        wait += fields.next().unwrap_or(0);
    }
    Some(Sched {
        run: Duration::from_nanos(run),
        wait: Duration::from_nanos(wait),
    })
}

/// What [`sched`] reads.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sched {
    /// On a CPU.
    pub(crate) run: Duration,
    /// Runnable, waiting for a CPU.
    pub(crate) wait: Duration,
}

impl Sched {
    /// The time between `earlier` and `self`.
    pub(crate) fn since(self, earlier: Sched) -> Sched {
        Sched {
            run: self.run.saturating_sub(earlier.run),
            wait: self.wait.saturating_sub(earlier.wait),
        }
    }

    /// "55% (+3% waiting)": shares of `wall`.
    pub(crate) fn shares(self, wall: Duration) -> String {
        let wall = wall.as_secs_f64().max(1e-9);
        format!(
            "{:.0}% (+{:.0}% waiting)",
            self.run.as_secs_f64() / wall * 100.0,
            self.wait.as_secs_f64() / wall * 100.0
        )
    }
}

/// Threads of this process (`Threads:` in `/proc/self/status`).
pub(crate) fn own_threads() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// MB (10^6 bytes) from KiB, for printing.
pub(crate) fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}
