//! CPU time the hypervisor took from this machine during a run ("steal"): on a shared virtual
//! machine a vCPU the host takes away stops whatever runs on it for milliseconds, which a
//! latency run measures as the tail of whatever system it drives (the loopback relay that does
//! nothing had its p99 at 20 k/s go from 0.07 ms to 11 ms with 13% stolen). Reported with every
//! run so that a figure says what the machine was doing, and, with `--steal-max`, runs over the
//! limit are measured again.

/// The machine's CPU time, summed over its CPUs, in the kernel's clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTicks {
    pub total: u64,
    pub steal: u64,
}

impl CpuTicks {
    /// Now, from `/proc/stat`; `None` where it cannot be read (not Linux), and a run then
    /// reports no steal rather than failing.
    pub fn now() -> Option<CpuTicks> {
        parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The share of the CPU time between `self` and `later` that was stolen, in percent.
    pub fn steal_percent_until(self, later: CpuTicks) -> f64 {
        let total = later.total.saturating_sub(self.total);
        let steal = later.steal.saturating_sub(self.steal);
        if total == 0 {
            return 0.0;
        }
        100.0 * steal as f64 / total as f64
    }
}

/// The machine-wide `cpu` line of `/proc/stat`: user, nice, system, idle, iowait, irq,
/// softirq, steal (guest time is already counted in user and nice). Kernels before 2.6.11 have
/// no steal column; they count as no steal.
fn parse_proc_stat(text: &str) -> Option<CpuTicks> {
    let line = text.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if fields.len() < 4 {
        return None;
    }
    Some(CpuTicks {
        total: fields.iter().sum(),
        steal: fields.get(7).copied().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expect: Option<(u64, u64)>) {
        let parsed = parse_proc_stat(text).map(|ticks| (ticks.total, ticks.steal));
        assert_eq!(parsed, expect, "{text:?}");
    }

    #[test]
    fn the_machine_line_is_read() {
        check(
            "cpu  100 2 30 800 5 1 2 60 7 0\ncpu0 50 1 15 400 2 0 1 30 0 0\n",
            Some((1000, 60)),
        );
        // No steal column (before Linux 2.6.11).
        check("cpu  100 0 50 850\n", Some((1000, 0)));
        // Only per-CPU lines, too few fields, or not numbers.
        check("cpu0 1 2 3 4 5 6 7 8\n", None);
        check("cpu  1 2 3\n", None);
        check("cpu  1 2 x 4 5 6 7 8\n", None);
        check("", None);
    }

    #[test]
    fn steal_is_a_share_of_the_time_between_two_readings() {
        let before = CpuTicks {
            total: 1_000,
            steal: 10,
        };
        let after = CpuTicks {
            total: 1_400,
            steal: 30,
        };
        assert_eq!(before.steal_percent_until(after), 5.0);
        assert_eq!(before.steal_percent_until(before), 0.0);
    }
}
