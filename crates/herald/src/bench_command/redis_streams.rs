//! The publish, consume and latency workloads against Redis Streams driven directly with a
//! plain client: the baseline docs/PERFORMANCE.md compares Herald with, in the same run and at
//! equal durability (set by the redis-server's own `appendonly`/`appendfsync`;
//! `scripts/bench-compare` starts one per durability class).
//!
//! Each is the way an experienced Redis user would write it: publish is `XADD` pipelined,
//! `batch` commands per pipeline and `window` pipelines in flight per connection (Herald's `pub`
//! frames and window), or with `--ids` one idempotent-publish script call per event, pipelined
//! the same way (Herald's dedupe of ids publishers chose); consume is one connection per member
//! sending, in one round trip, the `XACK` of what it read and the next
//! `XREADGROUP … COUNT maxInFlight` (Herald's credit).
//! Events are the JSON envelope Herald stores for the same event (about 250 bytes), in one field.
//! Latency (`paced.rs`): `XADD`s at a fixed rate, each burst of due events one pipeline sent
//! without waiting for the previous reply, and a consumer on its own connection looping on
//! `XACK` + `XREADGROUP … BLOCK` in one round trip.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;

use super::consume::ConsumeArgs;
use super::latency::LatencyArgs;
use super::paced::{Recorder, Schedule, payload, spawn_paced_sender};
use super::publish::{PublishArgs, drive_windowed};
use super::report::{Report, progress_bar};
use super::{envelope, run_id};

/// How long a reply may take before the run fails. redis-rs's default (500 ms) fails runs on
/// this shared machine when another tenant stalls Redis (an `appendfsync always` pipeline of
/// 500 `XADD`s waiting behind someone else's disk writes); a slow reply is a measurement.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a member's `XREADGROUP` blocks when the stream has nothing new for it.
const READ_BLOCK_MS: usize = 100;

/// Entries the latency workload's consumer reads per `XREADGROUP` at most: more than arrive
/// between two reads at 20 k/s, so it never falls behind for want of a larger read.
const LATENCY_READ_COUNT: usize = 1000;

async fn connect(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(url).with_context(|| format!("bad Redis URL {url}"))?;
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("connecting to {url}"))
}

pub async fn publish(url: &str, args: &PublishArgs, progress: bool) -> anyhow::Result<Report> {
    let key = format!("bench:{}", run_id());
    let bar = progress_bar(progress, args.events);
    let (acked, seconds) = fill(url, &key, args, &bar).await?;
    bar.finish_and_clear();
    Ok(Report::new(
        "publish",
        format!(
            "Redis Streams {}: {} conn × pipeline {}, window {}, {} B data",
            if args.ids {
                "idempotent XADD (script per event)"
            } else {
                "XADD"
            },
            args.connections,
            args.batch,
            args.window,
            args.data_bytes
        ),
        acked,
        seconds,
    ))
}

/// XADDs `args.events` events to `key` (rounded up to whole pipelines); returns how many were
/// acknowledged and how long it took.
async fn fill(
    url: &str,
    key: &str,
    args: &PublishArgs,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(u64, f64)> {
    let event = envelope("bench.published", args.data_bytes);
    let mut links = Vec::new();
    for _ in 0..args.connections.max(1) {
        links.push(connect(url).await?);
    }
    if args.ids {
        return fill_idempotent(links, key, args, bar, event).await;
    }
    let mut pipeline = redis::pipe();
    for _ in 0..args.batch.max(1) {
        pipeline
            .cmd("XADD")
            .arg(key)
            .arg("*")
            .arg("event")
            .arg(&event);
    }
    drive_windowed(links, args, bar, move |mut connection| {
        let pipeline = pipeline.clone();
        async move {
            let ids: Vec<String> = pipeline.query_async(&mut connection).await?;
            Ok(ids.len() as u64)
        }
    })
    .await
}

/// How an experienced Redis user publishes so that a resend is recognised (`--ids`: what
/// Herald's dedupe does for ids publishers chose): per event, one call of a script that
/// answers a known id with the entry it was stored as, and otherwise `XADD`s the event and
/// remembers its id for the dedupe window (2 minutes, Herald's default), atomically; `batch`
/// calls per pipeline, as without ids.
const IDEMPOTENT_XADD: &str = r#"
local prior = redis.call('GET', KEYS[1])
if prior then return prior end
local entry = redis.call('XADD', KEYS[2], '*', 'event', ARGV[2])
redis.call('SET', KEYS[1], entry, 'PX', ARGV[1])
return entry
"#;

/// Herald's default dedupe window, for [`IDEMPOTENT_XADD`].
const DEDUPE_WINDOW_MS: u64 = 120_000;

async fn fill_idempotent(
    mut links: Vec<MultiplexedConnection>,
    key: &str,
    args: &PublishArgs,
    bar: &indicatif::ProgressBar,
    event: String,
) -> anyhow::Result<(u64, f64)> {
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(IDEMPOTENT_XADD)
        .query_async(&mut links[0])
        .await
        .context("SCRIPT LOAD")?;
    let next_id = Arc::new(AtomicU64::new(0));
    let (key, batch) = (key.to_owned(), args.batch.max(1));
    let event = Arc::new(event);
    drive_windowed(links, args, bar, move |mut connection| {
        let first = next_id.fetch_add(batch as u64, Ordering::Relaxed);
        let mut pipeline = redis::pipe();
        for id in first..first + batch as u64 {
            pipeline
                .cmd("EVALSHA")
                .arg(&sha)
                .arg(2)
                .arg(format!("{key}:id:{id}"))
                .arg(&key)
                .arg(DEDUPE_WINDOW_MS)
                .arg(event.as_str());
        }
        async move {
            let ids: Vec<String> = pipeline.query_async(&mut connection).await?;
            Ok(ids.len() as u64)
        }
    })
    .await
}

pub async fn consume(url: &str, args: &ConsumeArgs, progress: bool) -> anyhow::Result<Report> {
    let id = run_id();
    let key = format!("bench-consume:{id}");
    let group = format!("bench-{id}");
    let backlog = PublishArgs::backlog(args.events, args.data_bytes);
    let fill_bar = progress_bar(progress, args.events);
    fill_bar.set_message("backlog");
    let (stored, _) = fill(url, &key, &backlog, &fill_bar).await?;
    fill_bar.finish_and_clear();
    let mut admin = connect(url).await?;
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg(&group)
        .arg("0")
        .query_async::<()>(&mut admin)
        .await
        .context("XGROUP CREATE")?;

    let bar = progress_bar(progress, stored);
    bar.set_message("consume");
    let acked = Arc::new(AtomicU64::new(0));
    let mut members = Vec::new();
    for _ in 0..args.members.max(1) {
        members.push(connect(url).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (index, mut connection) in members.into_iter().enumerate() {
        let (key, group, acked, bar) = (key.clone(), group.clone(), acked.clone(), bar.clone());
        let count = args.max_in_flight.max(1);
        tasks.push(tokio::spawn(async move {
            let consumer = format!("member-{index}");
            let mut unacked: Vec<String> = Vec::new();
            loop {
                let mut round = redis::pipe();
                if !unacked.is_empty() {
                    round
                        .cmd("XACK")
                        .arg(&key)
                        .arg(&group)
                        .arg(&unacked)
                        .ignore();
                }
                let done =
                    acked.fetch_add(unacked.len() as u64, Ordering::Relaxed) + unacked.len() as u64;
                bar.inc(unacked.len() as u64);
                unacked.clear();
                if done >= stored {
                    // Only the XACK is left to send.
                    if !round.is_empty() {
                        round.query_async::<()>(&mut connection).await?;
                    }
                    return anyhow::Ok(());
                }
                round
                    .cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&group)
                    .arg(&consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("BLOCK")
                    .arg(READ_BLOCK_MS)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">");
                let (read,): (Option<StreamReadReply>,) =
                    round.query_async(&mut connection).await?;
                if let Some(read) = read {
                    for stream in read.keys {
                        unacked.extend(stream.ids.into_iter().map(|entry| entry.id));
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(&key)
        .arg(&group)
        .query_async(&mut admin)
        .await
        .context("XPENDING")?;
    anyhow::ensure!(
        pending.count() == 0,
        "Redis still has {} entries pending in {group}",
        pending.count()
    );
    Ok(Report::new(
        "consume",
        format!(
            "Redis Streams XREADGROUP+XACK: {} members, COUNT {}, {} B data",
            args.members, args.max_in_flight, args.data_bytes
        ),
        acked.load(Ordering::Relaxed),
        seconds,
    ))
}

pub async fn latency(url: &str, args: &LatencyArgs, progress: bool) -> anyhow::Result<Report> {
    let id = run_id();
    let key = format!("bench-latency:{id}");
    let group = format!("bench-{id}");
    let mut admin = connect(url).await?;
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg(&group)
        .arg("$")
        .arg("MKSTREAM")
        .query_async::<()>(&mut admin)
        .await
        .context("XGROUP CREATE")?;
    let outcome = measure_latency(url, &key, &group, args, progress).await;
    let _ = redis::cmd("DEL")
        .arg(&key)
        .query_async::<()>(&mut admin)
        .await;
    let recorder = outcome?;
    Ok(recorder.report(
        args,
        "Redis Streams XADD → XREADGROUP BLOCK + XACK on its own connection",
    ))
}

async fn measure_latency(
    url: &str,
    key: &str,
    group: &str,
    args: &LatencyArgs,
    progress: bool,
) -> anyhow::Result<Recorder> {
    let mut reader = connect(url).await?;
    let publisher = connect(url).await?;
    let schedule = Schedule::new(args);
    let (due, pacer) = schedule.start();
    let data_bytes = args.data_bytes;
    let writer_key = key.to_owned();
    // Each burst of due events is one pipeline, sent without waiting for the previous one's
    // replies (the multiplexed connection pipelines them), as Herald's latency publisher does.
    let writer = spawn_paced_sender(due, move |batch| {
        let mut pipeline = redis::pipe();
        for i in batch {
            pipeline
                .cmd("XADD")
                .arg(&writer_key)
                .arg("*")
                .arg("event")
                .arg(payload(i, data_bytes))
                .ignore();
        }
        let mut connection = publisher.clone();
        std::future::ready(anyhow::Ok(async move {
            pipeline.query_async::<()>(&mut connection).await?;
            anyhow::Ok(())
        }))
    });
    let bar = progress_bar(progress, schedule.total);
    bar.set_message("latency");
    let mut recorder = Recorder::new(schedule)?;
    let mut unacked: Vec<String> = Vec::new();
    while !recorder.done() {
        recorder.check_deadline()?;
        let mut round = redis::pipe();
        if !unacked.is_empty() {
            round.cmd("XACK").arg(key).arg(group).arg(&unacked).ignore();
            unacked.clear();
        }
        round
            .cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg("member-0")
            .arg("COUNT")
            .arg(LATENCY_READ_COUNT)
            .arg("BLOCK")
            .arg(READ_BLOCK_MS)
            .arg("STREAMS")
            .arg(key)
            .arg(">");
        let (read,): (Option<StreamReadReply>,) = round.query_async(&mut reader).await?;
        let before = recorder.received;
        for stream in read.into_iter().flat_map(|read| read.keys) {
            for entry in stream.ids {
                let body: Vec<u8> = entry
                    .get("event")
                    .ok_or_else(|| anyhow::anyhow!("a stream entry without its event"))?;
                recorder.record(&body)?;
                unacked.push(entry.id);
            }
        }
        bar.inc(recorder.received - before);
    }
    if !unacked.is_empty() {
        redis::cmd("XACK")
            .arg(key)
            .arg(group)
            .arg(&unacked)
            .query_async::<()>(&mut reader)
            .await?;
    }
    bar.finish_and_clear();
    writer.await??;
    let _ = pacer.join();
    Ok(recorder)
}
