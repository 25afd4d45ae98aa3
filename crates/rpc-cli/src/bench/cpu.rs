//! CPU time used by the processes of a benchmark: a cost per call that holds on a machine
//! shared with other work, where calls per second move with whatever else runs.

use std::time::Duration;

/// CPU time used so far by the live threads of process `pid` (`None`: this process), from
/// Linux's scheduler statistics; `None` where they cannot be read.
pub(crate) fn used(pid: Option<u32>) -> Option<Duration> {
    let tasks = match pid {
        Some(pid) => format!("/proc/{pid}/task"),
        None => "/proc/self/task".to_owned(),
    };
    let mut nanos = 0u64;
    for task in std::fs::read_dir(tasks).ok()? {
        // A thread that exits between the listing and the read is skipped: its time is lost,
        // which the long-lived runtime threads that do the work never are.
        let Ok(stat) = std::fs::read_to_string(task.ok()?.path().join("schedstat")) else { continue };
        nanos += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(nanos))
}

/// CPU time the client (this process) and the server used over a stretch of calls.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuUse {
    pub(crate) client: Duration,
    pub(crate) server: Duration,
}

impl CpuUse {
    /// What both processes used between `from` and `to`, readings of [`CpuUse::now`].
    pub(crate) fn between(from: CpuUse, to: CpuUse) -> CpuUse {
        CpuUse { client: to.client.saturating_sub(from.client), server: to.server.saturating_sub(from.server) }
    }

    /// What this process and `server` have used so far.
    pub(crate) fn now(server: u32) -> Option<CpuUse> {
        Some(CpuUse { client: used(None)?, server: used(Some(server))? })
    }

    pub(crate) fn add(&mut self, other: CpuUse) {
        self.client += other.client;
        self.server += other.server;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_adds_to_its_process_cpu_time() {
        let before = used(None).expect("Linux scheduler statistics are readable");
        let gave_up = std::time::Instant::now() + Duration::from_secs(10);
        let mut x = 0u64;
        while used(None).unwrap() - before < Duration::from_millis(5) {
            assert!(std::time::Instant::now() < gave_up, "10 s of spinning never showed as 5 ms of CPU time");
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        assert!(used(Some(std::process::id())).unwrap() >= before, "the same process read by its id");
    }
}
