//! Fixed-rate publishing and publish-to-delivery measurement for the peer baselines, the same
//! method as Herald's `latency` workload: a pacing thread makes event `i` due at
//! `base + LEAD + i / rate`, each event carries its index, and the consumer records arrival
//! minus that intended time. A publisher or broker that stalls therefore shows its stall in
//! full instead of hiding it by sending late (coordinated omission).

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use std::future::Future;

use futures::FutureExt;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::latency::LatencyArgs;
use super::report::{Percentiles, Report};

/// How long before the first event is due, so that every connection is set up when it is.
const LEAD: Duration = Duration::from_millis(50);

/// Seconds of warm-up whose events are delivered but not recorded, as in `latency.rs`.
const WARM_UP_SECONDS: u64 = 1;

/// Due events buffered between the pacer and the sender; far more than a second at 20 k/s, so
/// a slow sender is measured (its events arrive late) rather than blocking the pacer.
const DUE_QUEUE_EVENTS: usize = 65_536;

/// How long after the last event is due the consumer waits for the stragglers; past it the
/// run fails naming how many events never arrived.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// Largest latency the histogram records, in microseconds (60 s).
const HISTOGRAM_MAX_US: u64 = 60_000_000;

/// How late the kernel may end the pacer's sleeps, in nanoseconds (Linux's default is 50 µs).
const PACER_TIMER_SLACK_NS: u64 = 1_000;

/// The plan of one run: which event is due when.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    base: Instant,
    interval: Duration,
    pub total: u64,
    warm_up: u64,
}

impl Schedule {
    pub fn new(args: &LatencyArgs) -> Schedule {
        let rate = args.rate.max(1);
        Schedule {
            base: Instant::now(),
            interval: Duration::from_secs_f64(1.0 / rate as f64),
            total: rate * (args.seconds + WARM_UP_SECONDS),
            warm_up: rate * WARM_UP_SECONDS,
        }
    }

    /// When event `i` should be sent, from `base`.
    fn intended(&self, i: u64) -> Duration {
        LEAD + self.interval.mul_f64(i as f64)
    }

    /// The latest time every event should have arrived by.
    pub fn deadline(&self) -> Instant {
        self.base + self.intended(self.total) + DRAIN_GRACE
    }

    /// Starts the pacing thread; the receiver yields each event's index when it is due. The
    /// thread sleeps and never spins: on a two-core machine a spinning pacer takes a core from
    /// the broker it measures.
    pub fn start(&self) -> (mpsc::Receiver<u64>, std::thread::JoinHandle<()>) {
        let (due_tx, due_rx) = mpsc::channel::<u64>(DUE_QUEUE_EVENTS);
        let schedule = *self;
        let pacer = std::thread::spawn(move || {
            // The default slack lets each sleep end up to 50 µs late, which would count as
            // latency of whatever is measured.
            let _ = rustix::thread::set_current_timer_slack(NonZeroU64::new(PACER_TIMER_SLACK_NS));
            for i in 0..schedule.total {
                let intended = schedule.base + schedule.intended(i);
                let now = Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                if due_tx.blocking_send(i).is_err() {
                    return;
                }
            }
        });
        (due_rx, pacer)
    }
}

/// The next due event and every other one already due, so that a sender that fell behind
/// sends them back to back; `None` when the schedule is done.
pub async fn next_due(due: &mut mpsc::Receiver<u64>) -> Option<Vec<u64>> {
    let first = due.recv().await?;
    let mut batch = vec![first];
    while let Some(Some(i)) = due.recv().now_or_never() {
        batch.push(i);
    }
    Some(batch)
}

/// The publisher's side: sends each burst of due events with `send` and awaits what `send`
/// returns — the burst's acks or confirms — off the send path, as a pipelining publisher does,
/// so that a slow acknowledgement delays nothing that is due after it. `send` enqueues the
/// burst and resolves to the future of its acknowledgements.
pub fn spawn_paced_sender<Send, Sending, Acks>(
    mut due: mpsc::Receiver<u64>,
    mut send: Send,
) -> JoinHandle<anyhow::Result<()>>
where
    Send: FnMut(Vec<u64>) -> Sending + std::marker::Send + 'static,
    Sending: Future<Output = anyhow::Result<Acks>> + std::marker::Send,
    Acks: Future<Output = anyhow::Result<()>> + std::marker::Send + 'static,
{
    tokio::spawn(async move {
        let mut acks = JoinSet::new();
        while let Some(batch) = next_due(&mut due).await {
            acks.spawn(send(batch).await?);
            while let Some(done) = acks.try_join_next() {
                done??;
            }
        }
        while let Some(done) = acks.join_next().await {
            done??;
        }
        anyhow::Ok(())
    })
}

/// The payload of event `i`: its index first, then the padding of the envelope Herald stores
/// for a latency event, so that every system moves about the same bytes.
pub fn payload(i: u64, data_bytes: usize) -> Vec<u8> {
    let padding = "x".repeat(data_bytes.saturating_sub(40));
    format!(
        r#"{{"i":{i},"type":"bench.latency","source":"bench","specversion":"1.0","data":{{"pad":"{padding}"}}}}"#
    )
    .into_bytes()
}

/// The index a payload of [`payload`] carries.
fn index_of(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(br#"{"i":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// The consumer's side: arrival minus intended time of each delivered event.
#[derive(Debug)]
pub struct Recorder {
    schedule: Schedule,
    histogram: Histogram<u64>,
    pub received: u64,
}

impl Recorder {
    pub fn new(schedule: Schedule) -> anyhow::Result<Recorder> {
        Ok(Recorder {
            schedule,
            histogram: Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3)?,
            received: 0,
        })
    }

    pub fn record(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let i = index_of(payload)
            .ok_or_else(|| anyhow::anyhow!("a delivery that is not a bench event"))?;
        self.record_index(i);
        Ok(())
    }

    /// Records the arrival of event `i`, now.
    pub fn record_index(&mut self, i: u64) {
        let now = self.schedule.base.elapsed();
        if i >= self.schedule.warm_up {
            let micros = now.saturating_sub(self.schedule.intended(i)).as_micros() as u64;
            self.histogram.saturating_record(micros.max(1));
        }
        self.received += 1;
    }

    pub fn done(&self) -> bool {
        self.received >= self.schedule.total
    }

    /// Fails if the deadline has passed with events still missing.
    pub fn check_deadline(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            Instant::now() < self.schedule.deadline(),
            "{} of {} events delivered {} s after the last was due",
            self.received,
            self.schedule.total,
            DRAIN_GRACE.as_secs()
        );
        Ok(())
    }

    pub fn report(&self, args: &LatencyArgs, how: &str) -> Report {
        let measured = self.schedule.total - self.schedule.warm_up;
        let mut report = Report::new(
            "latency",
            format!(
                "{}/s for {} s, {how}, {} B data",
                args.rate, args.seconds, args.data_bytes
            ),
            measured,
            args.seconds as f64,
        );
        report.latency_us = Some(Percentiles::of(&self.histogram));
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_carries_its_index() {
        assert_eq!(index_of(&payload(123_456, 100)), Some(123_456));
        assert_eq!(index_of(&payload(0, 0)), Some(0));
        assert_eq!(index_of(b"{\"t\":1}"), None);
    }
}
