//! The publish, consume and latency workloads against RabbitMQ driven directly over AMQP 0-9-1
//! with lapin: the third baseline of docs/PERFORMANCE.md.
//!
//! Durability: a durable **quorum** queue where the server has them (RabbitMQ ≥ 3.8; a quorum
//! queue's leader fsyncs its Raft log before it confirms), else a classic durable queue; the
//! report's conditions say which. Messages are persistent (`delivery_mode` 2) and every
//! publish waits for its publisher confirm, so an acknowledged publish is on disk.
//!
//! As an experienced RabbitMQ user writes them: publish sends `batch` persistent messages on a
//! channel in confirm mode and then awaits their confirms, `window` such batches in flight per
//! connection (Herald's `pub` frames and window); consume is one connection per member with
//! `basic.qos` prefetch `maxInFlight` and manual acks, acking each burst of deliveries it has
//! read with one `basic.ack multiple` (Herald's one `ack` frame per burst).
//!
//! RabbitMQ is the machine's shared service: every run declares queues of its own (a unique
//! name) and deletes them afterwards, also when the run fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::consume::ConsumeArgs;
use super::latency::LatencyArgs;
use super::paced::{Recorder, Schedule, payload, spawn_paced_sender};
use super::publish::{PublishArgs, drive_windowed};
use super::report::{Report, progress_bar};
use super::{envelope, run_id};

/// AMQP `delivery_mode` of a persistent message: written to disk before it is confirmed.
const PERSISTENT: u8 = 2;

/// How long a member waits for a delivery before it looks whether the others finished.
const IDLE_POLL: Duration = Duration::from_millis(200);

/// Deliveries a member reads before it acks them with one `basic.ack multiple`, at most; a
/// burst ends earlier when nothing more is buffered.
const ACK_BURST_MAX: usize = 1000;

/// Prefetch of the latency workload's consumer: enough that the consumer never waits for
/// credit at 20 k/s.
const LATENCY_PREFETCH: u16 = 1000;

/// Reply code of a normal connection close.
const REPLY_SUCCESS: u16 = 200;

/// The queue type a run got.
#[derive(Clone, Copy, Debug)]
enum QueueKind {
    Quorum,
    ClassicDurable,
}

impl QueueKind {
    fn describe(self) -> &'static str {
        match self {
            QueueKind::Quorum => "quorum queue",
            QueueKind::ClassicDurable => "classic durable queue (no quorum queues on this server)",
        }
    }
}

async fn connect(url: &str) -> anyhow::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// Closes `connection`, waiting `CLOSE_SECONDS_MAX` at most for the server's answer.
async fn close(connection: &Connection) {
    let closing = connection.close(REPLY_SUCCESS, "done".into());
    let _ = tokio::time::timeout(Duration::from_secs(CLOSE_SECONDS_MAX), closing).await;
}

/// A channel whose publishes are confirmed.
async fn confirming_channel(connection: &Connection) -> anyhow::Result<Channel> {
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("confirm.select")?;
    Ok(channel)
}

/// Declares `name` as a durable quorum queue, or a classic durable one if the server refuses
/// the quorum type (the refusal closes the channel, hence a fresh one for the retry), on a
/// connection of its own, closed after.
async fn declare(url: &str, name: &str) -> anyhow::Result<QueueKind> {
    let connection = connect(url).await?;
    let declared = declare_on(&connection, name).await;
    close(&connection).await;
    declared
}

async fn declare_on(connection: &Connection, name: &str) -> anyhow::Result<QueueKind> {
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    let declared = channel
        .queue_declare(name.into(), QueueDeclareOptions::durable(), quorum)
        .await;
    if declared.is_ok() {
        return Ok(QueueKind::Quorum);
    }
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("declaring queue {name}"))?;
    Ok(QueueKind::ClassicDurable)
}

/// How long deleting a run's queue may take before the run goes on without it.
const DELETE_SECONDS_MAX: u64 = 30;

/// How long closing a connection may take before it is dropped unanswered.
const CLOSE_SECONDS_MAX: u64 = 5;

/// Deletes the run's queue; a failure is reported but does not hide the run's own error. On a
/// connection of its own and within `DELETE_SECONDS_MAX`: lapin once left the run's first
/// connection unable to open a channel ("invalid channel state: Closing"), and the delete
/// waited forever for it.
async fn delete(url: &str, name: &str) {
    let deleted = async {
        let connection = connect(url).await?;
        let deleted = async {
            let channel = connection.create_channel().await?;
            channel
                .queue_delete(name.into(), QueueDeleteOptions::default())
                .await?;
            anyhow::Ok(())
        }
        .await;
        close(&connection).await;
        deleted
    };
    let deadline = Duration::from_secs(DELETE_SECONDS_MAX);
    match tokio::time::timeout(deadline, deleted).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => eprintln!("warning: RabbitMQ queue {name} was not deleted: {error:#}"),
        Err(_) => eprintln!(
            "warning: RabbitMQ queue {name} was not deleted: no answer in {DELETE_SECONDS_MAX} s"
        ),
    }
}

/// A queue name of this run's own, recognisable as the bench's.
fn queue_name(kind: &str) -> String {
    format!("herald-bench-{kind}-{}", run_id())
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(PERSISTENT)
}

pub async fn publish(url: &str, args: &PublishArgs, progress: bool) -> anyhow::Result<Report> {
    let queue = queue_name("publish");
    let kind = declare(url, &queue).await?;
    let bar = progress_bar(progress, args.events);
    let outcome = fill(url, &queue, args, &bar).await;
    bar.finish_and_clear();
    delete(url, &queue).await;
    let (acked, seconds) = outcome?;
    Ok(Report::new(
        "publish",
        format!(
            "RabbitMQ persistent publish with confirms, {}: {} conn × batch {}, window {}, {} B data",
            kind.describe(),
            args.connections,
            args.batch,
            args.window,
            args.data_bytes
        ),
        acked,
        seconds,
    ))
}

/// Publishes `args.events` persistent messages to `queue` (rounded up to whole batches), each
/// confirmed; returns how many and how long it took.
async fn fill(
    url: &str,
    queue: &str,
    args: &PublishArgs,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(u64, f64)> {
    let batch = args.batch.max(1);
    let body: Arc<[u8]> = envelope("bench.published", args.data_bytes)
        .into_bytes()
        .into();
    let queue: Arc<str> = queue.into();
    let mut connections = Vec::new();
    let mut links = Vec::new();
    for _ in 0..args.connections.max(1) {
        let connection = connect(url).await?;
        links.push(confirming_channel(&connection).await?);
        connections.push(connection);
    }
    let outcome = drive_windowed(links, args, bar, move |channel| {
        let (body, queue) = (body.clone(), queue.clone());
        async move {
            let mut confirms = Vec::with_capacity(batch);
            for _ in 0..batch {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_ref().into(),
                        BasicPublishOptions::default(),
                        &body,
                        persistent(),
                    )
                    .await?;
                confirms.push(confirm);
            }
            for confirm in confirms {
                anyhow::ensure!(confirm.await?.is_ack(), "RabbitMQ nacked a publish");
            }
            Ok(batch as u64)
        }
    })
    .await;
    for connection in connections {
        close(&connection).await;
    }
    outcome
}

pub async fn consume(url: &str, args: &ConsumeArgs, progress: bool) -> anyhow::Result<Report> {
    let queue = queue_name("consume");
    let kind = declare(url, &queue).await?;
    let outcome = drain(url, &queue, args, progress).await;
    delete(url, &queue).await;
    let (acked, seconds) = outcome?;
    Ok(Report::new(
        "consume",
        format!(
            "RabbitMQ consumers, manual acks, {}: {} members, prefetch {}, {} B data",
            kind.describe(),
            args.members,
            args.max_in_flight,
            args.data_bytes
        ),
        acked,
        seconds,
    ))
}

/// A consumer on a connection of its own with `prefetch` deliveries unacked at most.
async fn consumer(
    url: &str,
    queue: &str,
    prefetch: u16,
) -> anyhow::Result<(Connection, Channel, lapin::Consumer)> {
    let connection = connect(url).await?;
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .context("basic.qos")?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            format!("herald-bench-{}", run_id()).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("basic.consume")?;
    Ok((connection, channel, consumer))
}

/// Reads a burst: the next delivery (waiting at most [`IDLE_POLL`]) and whatever else is
/// already buffered, up to [`ACK_BURST_MAX`]; hands each body to `each` and returns the last
/// delivery tag and how many were read.
async fn next_burst(
    consumer: &mut lapin::Consumer,
    mut each: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<Option<(u64, usize)>> {
    let Ok(first) = tokio::time::timeout(IDLE_POLL, consumer.next()).await else {
        return Ok(None);
    };
    let first = first.context("the consumer was cancelled")??;
    each(&first.data)?;
    let mut last = first.delivery_tag;
    let mut read = 1;
    while read < ACK_BURST_MAX {
        let Some(next) = consumer.next().now_or_never() else {
            break;
        };
        let delivery = next.context("the consumer was cancelled")??;
        each(&delivery.data)?;
        last = delivery.delivery_tag;
        read += 1;
    }
    Ok(Some((last, read)))
}

async fn drain(
    url: &str,
    queue: &str,
    args: &ConsumeArgs,
    progress: bool,
) -> anyhow::Result<(u64, f64)> {
    let backlog = PublishArgs::backlog(args.events, args.data_bytes);
    let fill_bar = progress_bar(progress, args.events);
    fill_bar.set_message("backlog");
    let (stored, _) = fill(url, queue, &backlog, &fill_bar).await?;
    fill_bar.finish_and_clear();

    let bar = progress_bar(progress, stored);
    bar.set_message("consume");
    let acked = Arc::new(AtomicU64::new(0));
    let prefetch = u16::try_from(args.max_in_flight.max(1)).unwrap_or(u16::MAX);
    let mut members = Vec::new();
    for _ in 0..args.members.max(1) {
        members.push(consumer(url, queue, prefetch).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (connection, channel, mut consumer) in members {
        let (acked, bar) = (acked.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            while acked.load(Ordering::Relaxed) < stored {
                let Some((last, read)) = next_burst(&mut consumer, |_| Ok(())).await? else {
                    continue;
                };
                consumer_ack(&channel, last).await?;
                acked.fetch_add(read as u64, Ordering::Relaxed);
                bar.inc(read as u64);
            }
            close(&connection).await;
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok((acked.load(Ordering::Relaxed), seconds))
}

pub async fn latency(url: &str, args: &LatencyArgs, progress: bool) -> anyhow::Result<Report> {
    let queue = queue_name("latency");
    let kind = declare(url, &queue).await?;
    let outcome = measure_latency(url, &queue, args, progress).await;
    delete(url, &queue).await;
    let recorder = outcome?;
    Ok(recorder.report(
        args,
        &format!(
            "RabbitMQ persistent publish with confirms → consumer with manual acks, {}",
            kind.describe()
        ),
    ))
}

async fn measure_latency(
    url: &str,
    queue: &str,
    args: &LatencyArgs,
    progress: bool,
) -> anyhow::Result<Recorder> {
    let (sub_connection, sub_channel, mut consumer) =
        consumer(url, queue, LATENCY_PREFETCH).await?;
    let pub_connection = connect(url).await?;
    let channel = confirming_channel(&pub_connection).await?;
    let schedule = Schedule::new(args);
    let (due, pacer) = schedule.start();
    let data_bytes = args.data_bytes;
    let queue_owned = queue.to_owned();
    // Confirms are awaited off the send path, as a pipelining publisher does.
    let writer = spawn_paced_sender(due, move |batch| {
        let (channel, queue) = (channel.clone(), queue_owned.clone());
        async move {
            let mut pending = Vec::with_capacity(batch.len());
            for i in batch {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &payload(i, data_bytes),
                        persistent(),
                    )
                    .await?;
                pending.push(confirm);
            }
            anyhow::Ok(async move {
                for confirm in pending {
                    anyhow::ensure!(confirm.await?.is_ack(), "RabbitMQ nacked a publish");
                }
                anyhow::Ok(())
            })
        }
    });
    let bar = progress_bar(progress, schedule.total);
    bar.set_message("latency");
    let mut recorder = Recorder::new(schedule)?;
    while !recorder.done() {
        recorder.check_deadline()?;
        let before = recorder.received;
        let burst = next_burst(&mut consumer, |body| recorder.record(body)).await?;
        if let Some((last, _)) = burst {
            consumer_ack(&sub_channel, last).await?;
        }
        bar.inc(recorder.received - before);
    }
    bar.finish_and_clear();
    writer.await??;
    let _ = pacer.join();
    close(&pub_connection).await;
    close(&sub_connection).await;
    Ok(recorder)
}

async fn consumer_ack(channel: &Channel, last: u64) -> anyhow::Result<()> {
    channel
        .basic_ack(last, BasicAckOptions { multiple: true })
        .await
        .context("basic.ack")
}
