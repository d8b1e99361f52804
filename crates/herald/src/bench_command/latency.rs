//! Publish-to-delivery latency at a fixed rate. A pacing thread schedules event `i` at
//! `start + i / rate`; each event carries its intended send time, and the subscriber measures
//! from that time, so a stall on either side shows in the figures instead of being hidden by a
//! publisher that waited (coordinated omission).

use std::time::{Duration, Instant};

use clap::Args;
use futures::{FutureExt, SinkExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::mpsc;

use super::report::{Percentiles, Report, progress_bar};
use super::wire::{self, next_frame};
use super::{Target, run_id};

#[derive(Clone, Debug, Args)]
pub struct LatencyArgs {
    /// Events per second.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Seconds measured, after one second of warm-up.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Deliver through a consumer group (with acks) instead of a live subscription.
    #[arg(long)]
    pub group: bool,
    #[arg(long, default_value_t = 100)]
    pub data_bytes: usize,
}

impl Default for LatencyArgs {
    fn default() -> LatencyArgs {
        LatencyArgs {
            rate: 20_000,
            seconds: 5,
            group: false,
            data_bytes: 100,
        }
    }
}

const WARM_UP: Duration = Duration::from_secs(1);

pub async fn run(target: &Target, args: &LatencyArgs, progress: bool) -> anyhow::Result<Report> {
    let rate = args.rate.max(1);
    let kind = format!("bench.latency.{}", run_id());
    let total = rate * (args.seconds + WARM_UP.as_secs());
    let warm_up_events = rate * WARM_UP.as_secs();
    let (mut sub_sink, mut sub_source) = wire::connect(target).await?;
    let mut sub = json!({"pattern": kind});
    if args.group {
        sub["group"] = format!("bench-{}", run_id()).into();
        sub["maxInFlight"] = 10_000.into();
    }
    let sid = wire::subscribe(&mut sub_sink, &mut sub_source, sub).await?;
    let (mut pub_sink, mut pub_source) = wire::connect(target).await?;
    let epoch = Instant::now() + Duration::from_millis(50);
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let padding = "x".repeat(args.data_bytes.saturating_sub(40));

    // Pacing on a thread of its own: tokio's timer wheel has millisecond granularity. It sleeps
    // and never spins, since a spinning pacer takes a core from the server on a small machine.
    // Events whose time has come go out back to back; each carries its intended time, so the
    // sleep's overshoot counts as latency rather than being hidden.
    let (due_tx, mut due_rx) = mpsc::channel::<u64>(65_536);
    let pacer = std::thread::spawn(move || {
        for i in 0..total {
            let intended = epoch + interval.mul_f64(i as f64);
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            if due_tx.blocking_send(i).is_err() {
                return;
            }
        }
    });
    let writer_kind = kind.clone();
    let writer = tokio::spawn(async move {
        while let Some(i) = due_rx.recv().await {
            let mut next = Some(i);
            while let Some(i) = next.take() {
                let intended_ns =
                    (interval.mul_f64(i as f64) + Duration::from_millis(50)).as_nanos();
                let frame = format!(
                    r#"{{"op":"pub","rid":{i},"events":[{{"type":"{writer_kind}","data":{{"t":{intended_ns},"pad":"{padding}"}}}}]}}"#
                );
                pub_sink.feed(wire::text(frame)).await?;
                next = due_rx.recv().now_or_never().flatten();
            }
            pub_sink.flush().await?;
        }
        anyhow::Ok(())
    });
    let acks = tokio::spawn(async move {
        for _ in 0..total {
            wire::next_puback(&mut pub_source).await?;
        }
        anyhow::Ok(())
    });
    let bar = progress_bar(progress, total);
    bar.set_message("latency");
    let epoch_base = epoch - Duration::from_millis(50);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut received = 0u64;
    while received < total {
        let frame = next_frame(&mut sub_source).await?;
        if frame["op"] != "event" || frame["sid"] != sid {
            continue;
        }
        let now_ns = epoch_base.elapsed().as_nanos() as u64;
        let intended_ns = frame["event"]["data"]["t"].as_u64().unwrap_or(now_ns);
        if received >= warm_up_events {
            let micros = now_ns.saturating_sub(intended_ns) / 1000;
            histogram.saturating_record(micros.max(1));
        }
        if let Some(delivery_id) = frame.get("deliveryId") {
            let ack = json!({"op": "ack", "sid": sid, "deliveryId": delivery_id});
            sub_sink.send(wire::text(ack.to_string())).await?;
        }
        received += 1;
        bar.inc(1);
    }
    bar.finish_and_clear();
    writer.await??;
    acks.await??;
    let _ = pacer.join();
    let measured = total - warm_up_events;
    let mut report = Report::new(
        "latency",
        format!(
            "{rate}/s for {} s, one event per frame, {}",
            args.seconds,
            if args.group {
                "group with acks"
            } else {
                "live"
            }
        ),
        measured,
        args.seconds as f64,
    );
    report.latency_us = Some(Percentiles::of(&histogram));
    Ok(report)
}
