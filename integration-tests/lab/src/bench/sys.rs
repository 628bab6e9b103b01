//! What the bench reads from Linux to say where the time goes: CPU time of a process
//! (`/proc/<pid>/stat`), CPU time of a Docker container (its cgroup's CPU accounting), and peak
//! resident memory (`VmHWM` in `/proc/<pid>/status`). Everything degrades to "unknown" elsewhere.

use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on every Linux ABI in use).
const USER_HZ: f64 = 100.0;

/// CPU time (user + system) of process `pid` (`"self"` for this one).
pub(crate) fn process_cpu(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its closing parenthesis are
    // plain. utime and stime are fields 14 and 15, so the 12th and 13th after the state.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) / USER_HZ))
}

/// CPU time of every process of a Docker container, from its cgroup (v1 `cpuacct` or v2).
pub(crate) fn container_cpu(id: &str) -> Option<Duration> {
    let v1 = format!("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage");
    if let Ok(ns) = std::fs::read_to_string(v1) {
        return ns.trim().parse().ok().map(Duration::from_nanos);
    }
    for v2 in [
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat"),
        format!("/sys/fs/cgroup/docker/{id}/cpu.stat"),
    ] {
        if let Ok(stat) = std::fs::read_to_string(v2) {
            return stat
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok())
                .map(Duration::from_micros);
        }
    }
    None
}

/// A `Vm…` field of `/proc/<pid>/status`, in bytes.
pub(crate) fn vm_field(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let value = l.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// Resets this process's peak resident size (`VmHWM`) to its current size, so a later read is
/// the peak of what ran in between. Returns whether the kernel accepted it.
pub(crate) fn reset_own_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// CPU time spent by the client and the servers, at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuSnapshot {
    pub(crate) client: Option<Duration>,
    pub(crate) postgres: Option<Duration>,
    pub(crate) nats: Option<Duration>,
}

/// Where to read the servers' CPU time.
#[derive(Debug, Clone, Default)]
pub(crate) struct CpuProbe {
    /// PostgreSQL's container id, when the bench started it.
    pub(crate) postgres: Option<String>,
    /// NATS's container id, when the bench started it.
    pub(crate) nats: Option<String>,
}

impl CpuProbe {
    /// The CPU times now. `extra_pid` (the relay process) is added to the client's.
    pub(crate) fn snapshot(&self, extra_pid: Option<u32>) -> CpuSnapshot {
        let mut client = process_cpu("self");
        if let (Some(c), Some(pid)) = (client, extra_pid) {
            client = process_cpu(&pid.to_string()).map(|r| c + r).or(Some(c));
        }
        CpuSnapshot {
            client,
            postgres: self.postgres.as_deref().and_then(container_cpu),
            nats: self.nats.as_deref().and_then(container_cpu),
        }
    }
}

/// CPU per event between two snapshots, in microseconds (client, PostgreSQL, NATS).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct CpuPerEvent {
    pub(crate) client_us: Option<f64>,
    pub(crate) postgres_us: Option<f64>,
    pub(crate) nats_us: Option<f64>,
}

impl CpuPerEvent {
    /// The CPU spent between `before` and `after`, per event.
    pub(crate) fn between(before: CpuSnapshot, after: CpuSnapshot, events: u64) -> Self {
        let per = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) if events > 0 => {
                Some(b.saturating_sub(a).as_secs_f64() * 1e6 / events as f64)
            }
            _ => None,
        };
        Self {
            client_us: per(before.client, after.client),
            postgres_us: per(before.postgres, after.postgres),
            nats_us: per(before.nats, after.nats),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable() {
        assert!(process_cpu("self").is_some());
        assert!(vm_field("self", "VmHWM").is_some_and(|b| b > 0));
    }
}
