//! CPU time and memory of the service processes, read from `/proc` (`procfs`).

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

/// The usage of process `pid`, or `None` when it is gone.
pub(crate) fn usage(pid: u32) -> Option<Usage> {
    let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    let stat = process.stat().ok()?;
    let status = process.status().ok()?;
    let ticks = procfs::ticks_per_second().max(1);
    Some(Usage {
        cpu: Duration::from_secs_f64((stat.utime + stat.stime) as f64 / ticks as f64),
        rss: status.vmrss.unwrap_or(0) * 1024,
        peak_rss: status.vmhwm.unwrap_or(0) * 1024,
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
