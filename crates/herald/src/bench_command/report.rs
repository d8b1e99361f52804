//! Results: one report per workload, medians over runs with their range.

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub workload: String,
    /// What was run: connections, batch, rate, fsync as the server reported it.
    pub conditions: String,
    pub events: u64,
    /// What `events` counts: events, or bytes and syncs for the physical limits.
    pub unit: String,
    pub seconds: f64,
    pub events_per_second: f64,
    /// Min and max of `events_per_second` over the runs.
    pub range: (f64, f64),
    /// Latency percentiles in microseconds, for latency workloads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Percentiles>,
    /// Min and max of the p99 over the runs, for latency workloads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_range_us: Option<(f64, f64)>,
    pub runs: usize,
    /// The share of the machine's CPU time the hypervisor took during the run, in percent; the
    /// most of any run kept. `None` where /proc/stat cannot be read.
    pub host_steal_percent: Option<f64>,
    /// Runs measured and set aside because the host took more than `--steal-max`.
    pub runs_discarded: usize,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// The percentiles of a histogram of microseconds.
    pub fn of(histogram: &hdrhistogram::Histogram<u64>) -> Percentiles {
        Percentiles {
            p50: histogram.value_at_quantile(0.50) as f64,
            p99: histogram.value_at_quantile(0.99) as f64,
            p999: histogram.value_at_quantile(0.999) as f64,
            max: histogram.max() as f64,
        }
    }
}

impl Report {
    pub fn new(workload: &str, conditions: String, events: u64, seconds: f64) -> Report {
        let rate = events as f64 / seconds.max(1e-9);
        Report {
            workload: workload.to_owned(),
            conditions,
            events,
            unit: "events".to_owned(),
            seconds,
            events_per_second: rate,
            range: (rate, rate),
            latency_us: None,
            p99_range_us: None,
            runs: 1,
            host_steal_percent: None,
            runs_discarded: 0,
        }
    }

    /// The run with the median rate (for latency workloads, the median p99), with the range of
    /// rates over all runs.
    pub fn median(mut samples: Vec<Report>) -> Report {
        let key = |report: &Report| match report.latency_us {
            Some(latency) => latency.p99,
            None => report.events_per_second,
        };
        samples.sort_by(|a, b| key(a).total_cmp(&key(b)));
        let low = samples
            .iter()
            .map(|r| r.events_per_second)
            .fold(f64::INFINITY, f64::min);
        let high = samples
            .iter()
            .map(|r| r.events_per_second)
            .fold(0.0, f64::max);
        let p99s: Vec<f64> = samples
            .iter()
            .filter_map(|r| r.latency_us.map(|l| l.p99))
            .collect();
        let p99_range = p99s.first().zip(p99s.last()).map(|(l, h)| (*l, *h));
        let steal_most = samples
            .iter()
            .filter_map(|r| r.host_steal_percent)
            .reduce(f64::max);
        let runs = samples.len();
        let mut median = samples.swap_remove(runs / 2);
        median.range = (low, high);
        median.p99_range_us = p99_range;
        median.runs = runs;
        median.host_steal_percent = steal_most;
        median
    }
}

pub fn print_table(reports: &[Report]) {
    println!(
        "{:<10} {:>12} {:>22} {:>9} {:>9} {:>9}  conditions",
        "workload", "per second", "range", "p50 µs", "p99 µs", "p99.9 µs"
    );
    for report in reports {
        let (p50, p99, p999) = match report.latency_us {
            Some(l) => (
                format!("{:.0}", l.p50),
                format!("{:.0}", l.p99),
                format!("{:.0}", l.p999),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let steal = match report.host_steal_percent {
            Some(steal) => format!(", host steal ≤ {steal:.1}%"),
            None => String::new(),
        };
        let discarded = match report.runs_discarded {
            0 => String::new(),
            n => format!(", {n} discarded"),
        };
        println!(
            "{:<10} {:>12} {:>22} {:>9} {:>9} {:>9}  {} ({} runs{steal}{discarded})",
            report.workload,
            format!("{:.0} {}", report.events_per_second, report.unit),
            format!("{:.0}–{:.0}", report.range.0, report.range.1),
            p50,
            p99,
            p999,
            report.conditions,
            report.runs,
        );
    }
}

/// A progress bar on stderr, hidden when `visible` is false.
pub fn progress_bar(visible: bool, total: u64) -> indicatif::ProgressBar {
    if !visible {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {msg:>8} [{bar:40}] {pos}/{len} ({per_sec}, {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p99: f64, steal: Option<f64>) -> Report {
        let mut report = Report::new("latency", String::new(), 1000, 1.0);
        report.latency_us = Some(Percentiles {
            p50: p99 / 2.0,
            p99,
            p999: p99 * 2.0,
            max: p99 * 3.0,
        });
        report.host_steal_percent = steal;
        report
    }

    #[test]
    fn the_median_run_carries_the_most_steal_of_the_runs() {
        let median = Report::median(vec![
            run(900.0, Some(0.2)),
            run(300.0, Some(0.8)),
            run(500.0, Some(0.1)),
        ]);
        assert_eq!(median.latency_us.map(|l| l.p99), Some(500.0));
        assert_eq!(median.p99_range_us, Some((300.0, 900.0)));
        assert_eq!(median.host_steal_percent, Some(0.8));
        assert_eq!(median.runs, 3);

        let unread = Report::median(vec![run(1.0, None), run(2.0, None)]);
        assert_eq!(unread.host_steal_percent, None);
    }
}
