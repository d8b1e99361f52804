//! The publish and consume workloads against NATS JetStream driven directly with the official
//! client (async-nats), the other baseline of docs/PERFORMANCE.md: file storage, publishes
//! awaited for their JetStream acks, a durable pull consumer with explicit acks.
//!
//! As an experienced NATS user writes them: publish sends `batch` publishes and then awaits their
//! acks, with `window` such batches in flight per connection (Herald's `pub` frames and window);
//! consume is one connection per member pulling from one durable consumer in batches of
//! `maxInFlight` (`max_ack_pending` is the group's total credit) and acking each message as it
//! is read. Events are the JSON envelope Herald stores for the same event, as the payload.
//! Latency (`paced.rs`): publishes at a fixed rate with their JetStream acks awaited off the
//! send path, a durable pull consumer (`messages()`) on its own connection acking each message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;

use super::consume::ConsumeArgs;
use super::latency::LatencyArgs;
use super::paced::{Recorder, Schedule, payload, spawn_paced_sender};
use super::publish::{PublishArgs, drive_windowed};
use super::report::{Report, progress_bar};
use super::{envelope, run_id};

/// Unacked messages the latency workload's consumer may hold: far more than arrive within one
/// round trip at 20 k/s, so credit never delays a delivery.
const LATENCY_MAX_ACK_PENDING: i64 = 10_000;

/// Messages per pull request of the latency workload's consumer.
const LATENCY_PULL_BATCH: usize = 1000;

/// A pull stream's item as a NATS consumer takes it: a missed idle heartbeat (none for twice
/// the heartbeat, as when the host stalls) is `None` and the stream goes on, since async-nats
/// pulls again by itself; any other error ends the run. Time lost to a stall still counts.
fn delivered(
    item: Result<jetstream::Message, consumer::pull::MessagesError>,
) -> anyhow::Result<Option<jetstream::Message>> {
    match item {
        Ok(message) => Ok(Some(message)),
        Err(error) if error.kind() == consumer::pull::MessagesErrorKind::MissingHeartbeat => {
            tracing::warn!("NATS: {error}; the consumer goes on");
            Ok(None)
        }
        Err(error) => Err(anyhow::anyhow!("{error}")),
    }
}

/// How long a consumer waits for its next message before it looks again whether it is done.
const CONSUMER_POLL: Duration = Duration::from_millis(200);

/// The consumer's next message, or `None` when none came within [`CONSUMER_POLL`] or the
/// heartbeat was missed ([`delivered`]): the caller checks whether it is done and asks again.
async fn next_delivered(
    messages: &mut consumer::pull::Stream,
) -> anyhow::Result<Option<jetstream::Message>> {
    let Ok(next) = tokio::time::timeout(CONSUMER_POLL, messages.next()).await else {
        return Ok(None);
    };
    delivered(next.context("the consumer's message stream ended")?)
}

async fn connect(url: &str) -> anyhow::Result<jetstream::Context> {
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(jetstream::new(client))
}

/// A file-backed stream of its own for one run.
async fn create_stream(js: &jetstream::Context, name: &str, subject: &str) -> anyhow::Result<()> {
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating JetStream stream {name}"))?;
    Ok(())
}

pub async fn publish(url: &str, args: &PublishArgs, progress: bool) -> anyhow::Result<Report> {
    let id = run_id();
    let (name, subject) = (format!("BENCH_{id}"), format!("bench.{id}.published"));
    let admin = connect(url).await?;
    create_stream(&admin, &name, &subject).await?;
    let bar = progress_bar(progress, args.events);
    let outcome = fill(url, &subject, args, &bar).await;
    bar.finish_and_clear();
    let _ = admin.delete_stream(&name).await;
    let (acked, seconds) = outcome?;
    Ok(Report::new(
        "publish",
        format!(
            "NATS JetStream publish with acks: {} conn × batch {}, window {}, {} B data",
            args.connections, args.batch, args.window, args.data_bytes
        ),
        acked,
        seconds,
    ))
}

/// Publishes `args.events` events on `subject` (rounded up to whole batches), each acked by
/// JetStream; returns how many and how long it took.
async fn fill(
    url: &str,
    subject: &str,
    args: &PublishArgs,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(u64, f64)> {
    let batch = args.batch.max(1);
    let payload = bytes::Bytes::from(envelope("bench.published", args.data_bytes));
    let subject = subject.to_owned();
    let mut links = Vec::new();
    for _ in 0..args.connections.max(1) {
        links.push(connect(url).await?);
    }
    drive_windowed(links, args, bar, move |js| {
        let (payload, subject) = (payload.clone(), subject.clone());
        async move {
            let mut acks = Vec::with_capacity(batch);
            for _ in 0..batch {
                acks.push(js.publish(subject.clone(), payload.clone()).await?);
            }
            for ack in acks {
                ack.await?;
            }
            Ok(batch as u64)
        }
    })
    .await
}

pub async fn consume(url: &str, args: &ConsumeArgs, progress: bool) -> anyhow::Result<Report> {
    let id = run_id();
    let (name, subject) = (format!("BENCH_{id}"), format!("bench.{id}.consumed"));
    let admin = connect(url).await?;
    create_stream(&admin, &name, &subject).await?;
    let outcome = drain(url, &admin, &name, &subject, args, progress).await;
    let _ = admin.delete_stream(&name).await;
    let (acked, seconds) = outcome?;
    Ok(Report::new(
        "consume",
        format!(
            "NATS JetStream pull consumer, explicit acks: {} members, batch {}, {} B data",
            args.members, args.max_in_flight, args.data_bytes
        ),
        acked,
        seconds,
    ))
}

async fn drain(
    url: &str,
    admin: &jetstream::Context,
    name: &str,
    subject: &str,
    args: &ConsumeArgs,
    progress: bool,
) -> anyhow::Result<(u64, f64)> {
    // At most 3 200 publishes awaiting their acks: async-nats limits a context's acks in flight
    // (5 000 by default) and a publisher holding more of them than that waits forever.
    let backlog = PublishArgs {
        batch: 100,
        window: 32,
        ..PublishArgs::backlog(args.events, args.data_bytes)
    };
    let fill_bar = progress_bar(progress, args.events);
    fill_bar.set_message("backlog");
    let (stored, _) = fill(url, subject, &backlog, &fill_bar).await?;
    fill_bar.finish_and_clear();
    let members = args.members.max(1);
    let stream = admin.get_stream(name).await.context("the bench stream")?;
    let durable = format!("bench-{}", run_id());
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(durable.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: i64::from(args.max_in_flight.max(1)) * members as i64,
            ..Default::default()
        })
        .await
        .context("creating the durable consumer")?;

    let bar = progress_bar(progress, stored);
    bar.set_message("consume");
    let acked = Arc::new(AtomicU64::new(0));
    let mut links = Vec::new();
    for _ in 0..members {
        let js = connect(url).await?;
        let stream = js.get_stream(name).await.context("the bench stream")?;
        let consumer: consumer::PullConsumer = stream
            .get_consumer(&durable)
            .await
            .map_err(|error| anyhow::anyhow!("the durable consumer: {error}"))?;
        links.push(consumer);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for consumer in links {
        let (acked, bar) = (acked.clone(), bar.clone());
        let batch = args.max_in_flight.max(1) as usize;
        tasks.push(tokio::spawn(async move {
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(batch)
                .heartbeat(Duration::from_secs(5))
                .messages()
                .await?;
            while acked.load(Ordering::Relaxed) < stored {
                let Some(message) = next_delivered(&mut messages).await? else {
                    continue;
                };
                message
                    .ack()
                    .await
                    .map_err(|error| anyhow::anyhow!("{error}"))?;
                acked.fetch_add(1, Ordering::Relaxed);
                bar.inc(1);
            }
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
    let id = run_id();
    let (name, subject) = (format!("BENCH_{id}"), format!("bench.{id}.latency"));
    let admin = connect(url).await?;
    create_stream(&admin, &name, &subject).await?;
    let outcome = measure_latency(url, &admin, &name, &subject, args, progress).await;
    let _ = admin.delete_stream(&name).await;
    let recorder = outcome?;
    Ok(recorder.report(
        args,
        "NATS JetStream publish with acks → durable pull consumer, explicit acks",
    ))
}

async fn measure_latency(
    url: &str,
    admin: &jetstream::Context,
    name: &str,
    subject: &str,
    args: &LatencyArgs,
    progress: bool,
) -> anyhow::Result<Recorder> {
    let stream = admin.get_stream(name).await.context("the bench stream")?;
    let durable = format!("bench-{}", run_id());
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(durable.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: LATENCY_MAX_ACK_PENDING,
            ..Default::default()
        })
        .await
        .context("creating the durable consumer")?;
    let reader_js = connect(url).await?;
    let consumer: consumer::PullConsumer = reader_js
        .get_stream(name)
        .await
        .context("the bench stream")?
        .get_consumer(&durable)
        .await
        .map_err(|error| anyhow::anyhow!("the durable consumer: {error}"))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(LATENCY_PULL_BATCH)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await?;
    let publisher = connect(url).await?;
    let schedule = Schedule::new(args);
    let (due, pacer) = schedule.start();
    let data_bytes = args.data_bytes;
    let subject = subject.to_owned();
    // The JetStream acks are awaited off the send path, as an async publisher does.
    let writer = spawn_paced_sender(due, move |batch| {
        let (publisher, subject) = (publisher.clone(), subject.clone());
        async move {
            let mut pending = Vec::with_capacity(batch.len());
            for i in batch {
                let body = bytes::Bytes::from(payload(i, data_bytes));
                pending.push(publisher.publish(subject.clone(), body).await?);
            }
            anyhow::Ok(async move {
                for ack in pending {
                    ack.await?;
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
        let Some(message) = next_delivered(&mut messages).await? else {
            continue;
        };
        recorder.record(&message.payload)?;
        message
            .ack()
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    writer.await??;
    let _ = pacer.join();
    Ok(recorder)
}

#[cfg(test)]
mod tests {
    use super::*;
    use consumer::pull::{MessagesError, MessagesErrorKind};

    /// A missed heartbeat lets the run go on; every other pull error ends it.
    #[test]
    fn only_a_missed_heartbeat_is_passed_over() {
        let check = |kind: MessagesErrorKind, goes_on: bool| {
            let outcome = delivered(Err(MessagesError::new(kind)));
            match outcome {
                Ok(None) => assert!(goes_on, "{kind:?} was passed over"),
                Err(_) => assert!(!goes_on, "{kind:?} ended the run"),
                Ok(Some(_)) => panic!("{kind:?} gave a message"),
            }
        };
        check(MessagesErrorKind::MissingHeartbeat, true);
        check(MessagesErrorKind::ConsumerDeleted, false);
        check(MessagesErrorKind::Pull, false);
        check(MessagesErrorKind::NoResponders, false);
        check(MessagesErrorKind::Other, false);
    }
}
