//! Where the CPU goes during a scenario: the server, Postgres, this load
//! generator and everything else on the machine, from `/proc`, as CPU time
//! per request. On two cores shared by all of them, a throughput limit is a
//! CPU budget: 2 s of CPU per second divided by the CPU a request costs.

use std::time::Instant;

/// `/proc` reports CPU times in USER_HZ ticks, 100 per second on Linux
/// whatever the kernel's own tick rate.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds used so far, by part.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    at: Instant,
    server: f64,
    postgres: f64,
    bench: f64,
    /// Every core's busy time (all but idle and iowait).
    machine: f64,
}

/// CPU time per request of one run, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct CpuPerRequest {
    pub server_us: f64,
    pub postgres_us: f64,
    pub bench_us: f64,
    /// Other processes (other builds, other tests): noise, shown as such.
    pub rest_us: f64,
    /// Busy share of all cores over the run.
    pub machine_busy: f64,
}

impl CpuSample {
    /// `postmaster`: the Postgres server's main process; its children are
    /// the backends of every database on that server (a benchmark database
    /// and anything else using the same server).
    pub fn take(server_pid: u32, postmaster: Option<u32>) -> Self {
        let postgres = postmaster.map_or(0.0, |postmaster| {
            process_seconds(postmaster) + children_seconds(postmaster)
        });
        Self {
            at: Instant::now(),
            server: process_seconds(server_pid),
            postgres,
            bench: process_seconds(std::process::id()),
            machine: machine_busy_seconds(),
        }
    }

    /// The CPU each of `requests` cost between `self` and `later`.
    pub fn per_request(&self, later: &Self, requests: u64) -> CpuPerRequest {
        let n = requests.max(1) as f64 / 1e6;
        let server = later.server - self.server;
        let postgres = later.postgres - self.postgres;
        let bench = later.bench - self.bench;
        let machine = later.machine - self.machine;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        CpuPerRequest {
            server_us: server / n,
            postgres_us: postgres / n,
            bench_us: bench / n,
            rest_us: (machine - server - postgres - bench).max(0.0) / n,
            machine_busy: (machine / (wall * cores)).min(1.0),
        }
    }
}

impl CpuPerRequest {
    pub fn total_us(&self) -> f64 {
        self.server_us + self.postgres_us + self.bench_us + self.rest_us
    }

    /// For the report: `server 410 + Postgres 380 + bench 60 + rest 90 µs = 940 µs, cores 97 % busy`.
    pub fn describe(&self) -> String {
        format!(
            "server {:.0} + Postgres {:.0} + bench {:.0} + rest {:.0} µs = {:.0} µs CPU per request, cores {:.0} % busy",
            self.server_us,
            self.postgres_us,
            self.bench_us,
            self.rest_us,
            self.total_us(),
            self.machine_busy * 100.0
        )
    }

    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "server_us": self.server_us,
            "postgres_us": self.postgres_us,
            "bench_us": self.bench_us,
            "rest_us": self.rest_us,
            "machine_busy": self.machine_busy,
        })
    }
}

/// utime + stime of `pid` (all its threads), in seconds; 0 if it is gone.
fn process_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_fields(&stat))
        .map_or(0.0, |fields| fields.utime_stime)
}

/// utime + stime of every live child of `parent`.
fn children_seconds(parent: u32) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| stat_fields(&stat))
        .filter(|fields| fields.ppid == parent)
        .map(|fields| fields.utime_stime)
        .sum()
}

struct StatFields {
    ppid: u32,
    utime_stime: f64,
}

/// Fields of `/proc/<pid>/stat` after the command name, which is in
/// parentheses and may itself hold spaces and parentheses.
fn stat_fields(stat: &str) -> Option<StatFields> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) … utime(14) stime(15), so index n - 3.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(StatFields {
        ppid,
        utime_stime: (utime + stime) / TICKS_PER_SECOND,
    })
}

/// Busy time of all cores (the first line of `/proc/stat`), in seconds.
fn machine_busy_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(cpu) = stat.lines().next() else {
        return 0.0;
    };
    let ticks: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …: idle and iowait are not busy.
    let busy: f64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    busy / TICKS_PER_SECOND
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let stat = "4242 (post (gres) x) S 17 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 1 0";
        let fields = stat_fields(stat).expect("fields");
        assert_eq!(fields.ppid, 17);
        assert!(
            (fields.utime_stime - 3.0).abs() < 1e-9,
            "{}",
            fields.utime_stime
        );
    }

    #[test]
    fn this_process_uses_some_cpu_and_the_machine_at_least_as_much() {
        let before = CpuSample::take(std::process::id(), None);
        let mut x = 0u64;
        let started = Instant::now();
        while started.elapsed().as_millis() < 100 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = CpuSample::take(std::process::id(), None);
        let cpu = before.per_request(&after, 1);
        assert!(cpu.server_us > 0.0, "{cpu:?}");
        assert!(cpu.machine_busy > 0.0, "{cpu:?}");
    }
}
