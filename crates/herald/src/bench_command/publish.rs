//! Acked publish throughput: `connections` connections, each pipelining `pub` frames of
//! `batch` events with at most `window` frames unanswered, until `events` are acknowledged.

use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use futures::SinkExt;
use tokio::sync::Semaphore;

use super::report::Report;
use super::wire;
use super::{Target, run_id};

#[derive(Clone, Debug, Args)]
pub struct PublishArgs {
    /// Events to publish in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Events per `pub` frame.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Unanswered frames per connection at most.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Bytes of `data` per event.
    #[arg(long, default_value_t = 100)]
    pub data_bytes: usize,
    /// Each event carries an id of its own, as the clients send them so that a resend is
    /// recognised: publish dedupe applies to every event. Without it the events carry no id,
    /// Herald generates them, and dedupe does not apply (as with `curl` or `herald pub`).
    /// Against Redis Streams (redis://) each event is published idempotently, as a Redis user
    /// would (a script per event: the id looked up, or the event added and its id kept for
    /// the window); against NATS or RabbitMQ it changes nothing.
    #[arg(long)]
    pub ids: bool,
}

impl Default for PublishArgs {
    fn default() -> PublishArgs {
        PublishArgs {
            events: 1_000_000,
            batch: 100,
            connections: 1,
            window: 32,
            data_bytes: 100,
            ids: false,
        }
    }
}

impl PublishArgs {
    /// How the consume workloads store their backlog before the members join: one connection,
    /// large pipelined batches.
    pub fn backlog(events: u64, data_bytes: usize) -> PublishArgs {
        PublishArgs {
            events,
            batch: 500,
            connections: 1,
            window: 16,
            data_bytes,
            ids: false,
        }
    }
}

/// Runs `send` on each of `links` until `args.events` are sent (rounded up to whole batches of
/// `args.batch`), at most `args.window` sends in flight per link; each send returns how many
/// events it had acknowledged. Returns the total and the seconds it took. The peer baselines
/// use it, so that they pipeline exactly as Herald's `pub` frames do.
pub async fn drive_windowed<L, S, F>(
    links: Vec<L>,
    args: &PublishArgs,
    bar: &indicatif::ProgressBar,
    send: S,
) -> anyhow::Result<(u64, f64)>
where
    L: Clone + Send + Sync + 'static,
    S: Fn(L) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    use futures::StreamExt;
    let sends_per_link = (args.events as usize).div_ceil(args.batch.max(1) * links.len().max(1));
    let window = args.window.max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for link in links {
        let (send, bar) = (send.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let mut sends = futures::stream::iter(0..sends_per_link)
                .map(|_| send(link.clone()))
                .buffer_unordered(window);
            let mut acked = 0u64;
            while let Some(done) = sends.next().await {
                let done = done?;
                acked += done;
                bar.inc(done);
            }
            anyhow::Ok(acked)
        }));
    }
    let mut acked = 0;
    for task in tasks {
        acked += task.await??;
    }
    Ok((acked, started.elapsed().as_secs_f64()))
}

pub async fn run(target: &Target, args: &PublishArgs, progress: bool) -> anyhow::Result<Report> {
    let kind = format!("bench.published.{}", run_id());
    let bar = super::report::progress_bar(progress, args.events);
    let (acked, seconds) = drive(target, args, &kind, &bar).await?;
    bar.finish_and_clear();
    Ok(Report::new(
        "publish",
        format!(
            "{} conn × batch {}, window {}, {} B data, {}",
            args.connections,
            args.batch,
            args.window,
            args.data_bytes,
            if args.ids {
                "an id per event (deduped)"
            } else {
                "no ids (generated, not deduped)"
            }
        ),
        acked,
        seconds,
    ))
}

/// Publishes `args.events` events of `kind` (rounded up to whole frames); returns how many
/// were acknowledged and how long it took.
pub async fn drive(
    target: &Target,
    args: &PublishArgs,
    kind: &str,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(u64, f64)> {
    let batch = args.batch.max(1);
    let connections = args.connections.max(1);
    let frames_per_connection = (args.events as usize).div_ceil(batch * connections);
    // The server echoes rids without interpreting them, so without ids one frame serves every
    // send; with ids each frame is made with ids of its own.
    let frame = wire::text(wire::pub_frame(1, kind, batch, args.data_bytes));
    let ids = args
        .ids
        .then(|| wire::PubFrames::new(kind, batch, args.data_bytes));
    let mut links = Vec::new();
    for _ in 0..connections {
        links.push(wire::connect(target).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (link, (mut sink, mut source)) in links.into_iter().enumerate() {
        let frame = frame.clone();
        let ids = ids.clone();
        let window = Arc::new(Semaphore::new(args.window.max(1)));
        let bar = bar.clone();
        let reader_window = window.clone();
        let reader = tokio::spawn(async move {
            let mut acked = 0u64;
            for _ in 0..frames_per_connection {
                let results = wire::next_puback(&mut source).await?;
                acked += results;
                bar.inc(results);
                reader_window.add_permits(1);
            }
            anyhow::Ok(acked)
        });
        let writer = tokio::spawn(async move {
            for sent in 0..frames_per_connection {
                let frame = match &ids {
                    Some(frames) => wire::text(frames.frame(&format!("{link}-{sent}"))),
                    None => frame.clone(),
                };
                window.acquire().await?.forget();
                sink.send(frame).await?;
            }
            anyhow::Ok(sink)
        });
        tasks.push((writer, reader));
    }
    let mut acked = 0;
    let mut sinks = Vec::new();
    for (writer, reader) in tasks {
        acked += reader.await??;
        sinks.push(writer.await??);
    }
    Ok((acked, started.elapsed().as_secs_f64()))
}
