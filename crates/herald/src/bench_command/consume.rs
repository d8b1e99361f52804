//! Group consume with acks: a backlog of `events`, then `members` connections in one group
//! draining it, each acking what it received in one `ack` frame per read burst.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures::{FutureExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::publish::{self, PublishArgs};
use super::report::{Report, progress_bar};
use super::wire;
use super::{Target, run_id};

#[derive(Clone, Debug, Args)]
pub struct ConsumeArgs {
    /// Events in the backlog.
    #[arg(long, default_value_t = 500_000)]
    pub events: u64,
    /// Members of the group, one connection each.
    #[arg(long, default_value_t = 1)]
    pub members: usize,
    /// Credit per member.
    #[arg(long, default_value_t = 1000)]
    pub max_in_flight: u32,
    #[arg(long, default_value_t = 100)]
    pub data_bytes: usize,
    /// One event per frame, as clients that do not ask for `batch` receive them (by default
    /// the members subscribe with `batch`: several deliveries per `events` frame).
    #[arg(long)]
    pub unbatched: bool,
}

impl Default for ConsumeArgs {
    fn default() -> ConsumeArgs {
        ConsumeArgs {
            events: 500_000,
            members: 1,
            max_in_flight: 1000,
            data_bytes: 100,
            unbatched: false,
        }
    }
}

/// The part of a server frame the consumer needs; serde skips the rest without building it.
#[derive(serde::Deserialize)]
struct FrameHead<'a> {
    op: &'a str,
    #[serde(rename = "deliveryId")]
    delivery_id: Option<u64>,
    /// In an `events` frame.
    events: Option<Vec<ItemHead>>,
}

#[derive(serde::Deserialize)]
struct ItemHead {
    #[serde(rename = "deliveryId")]
    delivery_id: Option<u64>,
}

pub async fn run(target: &Target, args: &ConsumeArgs, progress: bool) -> anyhow::Result<Report> {
    let id = run_id();
    // A stream of its own, so that the group reads only its backlog and not earlier runs'.
    let kind = format!("bench-consume-{id}.event");
    let group = format!("bench-{id}");
    let backlog = PublishArgs::backlog(args.events, args.data_bytes);
    let fill_bar = progress_bar(progress, args.events);
    fill_bar.set_message("backlog");
    let (stored, _) = publish::drive(target, &backlog, &kind, &fill_bar).await?;
    fill_bar.finish_and_clear();
    let bar = progress_bar(progress, stored);
    bar.set_message("consume");
    let acked = Arc::new(AtomicU64::new(0));
    let mut members = Vec::new();
    for _ in 0..args.members.max(1) {
        members.push(wire::connect(target).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut sink, mut source) in members {
        let mut sub = json!({"pattern": kind, "group": group, "from": "earliest",
                             "maxInFlight": args.max_in_flight});
        if !args.unbatched {
            sub["batch"] = true.into();
        }
        let acked = acked.clone();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let sid = wire::subscribe(&mut sink, &mut source, sub).await?;
            let mut ids = Vec::with_capacity(wire::ACK_BATCH_MAX);
            while acked.load(Ordering::Relaxed) < stored {
                let first = tokio::time::timeout(Duration::from_millis(200), source.next()).await;
                let Ok(first) = first else { continue };
                let mut message = Some(first.context("connection closed")??);
                while let Some(current) = message.take() {
                    if let Message::Text(text) = current {
                        // Only the op and the delivery id: a full parse of every event would
                        // spend the shared cores on the client rather than the server.
                        let frame: FrameHead<'_> = serde_json::from_str(&text)?;
                        match frame.op {
                            "event" => ids.push(frame.delivery_id.unwrap_or_default()),
                            "events" => ids.extend(
                                frame
                                    .events
                                    .unwrap_or_default()
                                    .iter()
                                    .map(|item| item.delivery_id.unwrap_or_default()),
                            ),
                            "error" => bail!("server error: {}", text.as_str()),
                            _ => {}
                        }
                    }
                    if ids.len() < wire::ACK_BATCH_MAX {
                        message = source.next().now_or_never().flatten().transpose()?;
                    }
                }
                let count = wire::send_acks(&mut sink, sid, &mut ids).await?;
                acked.fetch_add(count, Ordering::Relaxed);
                bar.inc(count);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    verify_acked(target, &group, stored).await?;
    Ok(Report::new(
        "consume",
        format!(
            "{} members, maxInFlight {}, {} B data, {}, acks batched per read",
            args.members,
            args.max_in_flight,
            args.data_bytes,
            if args.unbatched {
                "one event per frame"
            } else {
                "several events per frame (`batch`)"
            }
        ),
        acked.load(Ordering::Relaxed),
        seconds,
    ))
}

/// The group's own count: every event acked once, none left in flight.
async fn verify_acked(target: &Target, group: &str, expected: u64) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut request = client.get(format!("{}/v1/groups/{group}", target.http_url));
        if let Some(token) = &target.token {
            request = request.bearer_auth(token);
        }
        let info: serde_json::Value = request.send().await?.json().await?;
        if info["acked"].as_u64() == Some(expected) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "group {group} recorded {} acks, expected {expected}",
                info["acked"]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
