//! CPU time and memory of the service processes, read from `/proc`.

use std::{collections::BTreeMap, time::Duration};

/// What one process used.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Usage {
    /// CPU seconds (user + system) since the process started.
    pub(crate) cpu: Duration,
    /// Resident memory now, bytes.
    pub(crate) rss: u64,
    /// Peak resident memory, bytes.
    pub(crate) peak_rss: u64,
}

fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |t| t as u64)
}

/// The usage of process `pid`, or `None` when it is gone.
pub(crate) fn usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Some(Usage {
        cpu: Duration::from_secs_f64((utime + stime) as f64 / ticks_per_second() as f64),
        rss: kb("VmRSS:"),
        peak_rss: kb("VmHWM:"),
    })
}

/// CPU used between two readings and the peak memory, per process name.
pub(crate) fn delta(
    before: &BTreeMap<String, Usage>,
    after: &BTreeMap<String, Usage>,
) -> BTreeMap<String, Usage> {
    after
        .iter()
        .map(|(name, a)| {
            let b = before.get(name).cloned().unwrap_or_default();
            (
                name.clone(),
                Usage {
                    cpu: a.cpu.saturating_sub(b.cpu),
                    rss: a.rss,
                    peak_rss: a.peak_rss,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_its_own_process() {
        let me = super::usage(std::process::id()).expect("own /proc entry");
        assert!(me.rss > 0 && me.peak_rss >= me.rss);
    }
}
