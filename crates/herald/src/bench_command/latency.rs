//! Publish-to-delivery latency at a fixed rate, by the method the peer baselines share
//! (`paced.rs`): a pacing thread makes event `i` due at its intended time, and the subscriber
//! measures from that time, so a stall on either side shows in the figures instead of being
//! hidden by a publisher that waited (coordinated omission).

use clap::Args;
use futures::{FutureExt, SinkExt};
use serde_json::json;

use super::paced::{Recorder, Schedule, next_due};
use super::report::{Report, progress_bar};
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

pub async fn run(target: &Target, args: &LatencyArgs, progress: bool) -> anyhow::Result<Report> {
    let kind = format!("bench.latency.{}", run_id());
    let (mut sub_sink, mut sub_source) = wire::connect(target).await?;
    let mut sub = json!({"pattern": kind});
    if args.group {
        sub["group"] = format!("bench-{}", run_id()).into();
        sub["maxInFlight"] = 10_000.into();
    }
    let sid = wire::subscribe(&mut sub_sink, &mut sub_source, sub).await?;
    let (mut pub_sink, mut pub_source) = wire::connect(target).await?;
    let padding = "x".repeat(args.data_bytes.saturating_sub(40));
    let schedule = Schedule::new(args);
    let total = schedule.total;
    let (mut due, pacer) = schedule.start();
    // Events whose time has come go out back to back, one frame each, in one flush.
    let writer_kind = kind.clone();
    let writer = tokio::spawn(async move {
        while let Some(burst) = next_due(&mut due).await {
            for i in burst {
                let frame = format!(
                    r#"{{"op":"pub","rid":{i},"events":[{{"type":"{writer_kind}","data":{{"i":{i},"pad":"{padding}"}}}}]}}"#
                );
                pub_sink.feed(wire::text(frame)).await?;
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
    let mut recorder = Recorder::new(schedule)?;
    // Acks of the deliveries read in one burst go out in one frame once no further frame is
    // waiting, as `@herald/client` sends those of one event-loop turn and as the Redis
    // baseline's consumer sends its `XACK` of what it read with its next read.
    let mut unacked: Vec<u64> = Vec::new();
    while !recorder.done() {
        let frame = match next_frame(&mut sub_source).now_or_never() {
            Some(frame) => frame?,
            None => {
                wire::send_acks(&mut sub_sink, sid, &mut unacked).await?;
                let next = tokio::time::timeout_at(
                    schedule.deadline().into(),
                    next_frame(&mut sub_source),
                );
                let Ok(frame) = next.await else {
                    recorder.check_deadline()?;
                    continue;
                };
                frame?
            }
        };
        if frame["op"] != "event" || frame["sid"] != sid {
            continue;
        }
        let i = frame["event"]["data"]["i"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("a delivery that is not a bench event: {frame}"))?;
        recorder.record_index(i);
        if let Some(delivery_id) = frame.get("deliveryId") {
            let delivery_id = delivery_id
                .as_u64()
                .ok_or_else(|| anyhow::anyhow!("a delivery id that is not a number: {frame}"))?;
            unacked.push(delivery_id);
            if unacked.len() >= wire::ACK_BATCH_MAX {
                wire::send_acks(&mut sub_sink, sid, &mut unacked).await?;
            }
        }
        bar.inc(1);
    }
    wire::send_acks(&mut sub_sink, sid, &mut unacked).await?;
    bar.finish_and_clear();
    writer.await??;
    acks.await??;
    let _ = pacer.join();
    let how = if args.group {
        "one event per frame, group with acks (one frame per read burst)"
    } else {
        "one event per frame, live"
    };
    Ok(recorder.report(args, how))
}
