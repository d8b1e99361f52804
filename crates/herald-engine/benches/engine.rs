//! Engine benchmarks, in process: group consume with acks, live fan-out, and publish-to-delivery
//! latency at a fixed rate. Each workload runs `RUNS` times; the median and range are printed as
//! markdown rows for docs/PERFORMANCE.md.
//!
//! `cargo bench -p herald-engine --bench engine` (add a filter word to run a subset, e.g.
//! `-- latency`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::Pattern;
use herald_engine::api::{GroupPolicy, GroupSpec};
use herald_engine::conformance::event;
use herald_engine::{EmbeddedEngine, Engine, EngineConfig, StartAt};
use herald_log::FsyncPolicy;

/// The allocator the `herald` binary ships with, so that these figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RUNS: usize = 3;
/// Latency runs are short and the shared machine's stalls land in some of them at random, so
/// their median takes more runs to settle.
const LATENCY_RUNS: usize = 7;
const GROUP_EVENTS: usize = 100_000;
const FANOUT_EVENTS: usize = 50_000;
const DRAIN_EVENTS: usize = 200_000;
const BATCH: usize = 100;

fn policies() -> [(&'static str, FsyncPolicy); 2] {
    [
        ("interval", FsyncPolicy::Interval(Duration::from_millis(10))),
        ("always", FsyncPolicy::Always),
    ]
}

fn engine(dir: &std::path::Path, fsync: FsyncPolicy) -> EmbeddedEngine {
    let mut config = EngineConfig::new(dir);
    config.fsync = fsync;
    config.live_buffer_events = 100_000;
    EmbeddedEngine::open(config).unwrap()
}

fn median_and_range(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(|left, right| left.total_cmp(right));
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn row(name: &str, values: Vec<f64>, unit: &str) {
    let (median, low, high) = median_and_range(values);
    println!("| {name} | {median:.0} {unit} | [{low:.0}, {high:.0}] |");
}

/// Publish `GROUP_EVENTS` in batches while `members` members receive and ack; events/s from the
/// first publish to the last ack.
async fn group_throughput(fsync: FsyncPolicy, members: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(engine(dir.path(), fsync));
    let spec = GroupSpec {
        name: "bench".into(),
        pattern: Pattern::new("work.*").unwrap(),
        policy: GroupPolicy {
            max_in_flight: 1000,
            ..GroupPolicy::default()
        },
        start: StartAt::Earliest,
    };
    let (done, mut finished) = tokio::sync::mpsc::channel::<usize>(members);
    let per_member_target = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..members {
        let mut member = engine.join_group(spec.clone(), None).await.unwrap();
        let (done, acked) = (done.clone(), per_member_target.clone());
        tokio::spawn(async move {
            // A member still waiting when the engine closes gets `EngineStopped`: its work is done.
            while let Ok(delivery) = member.recv().await {
                member.ack(delivery.delivery_id).await.unwrap();
                let total = acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if total == GROUP_EVENTS {
                    let _ = done.send(total).await;
                    return;
                }
            }
        });
    }
    let started = Instant::now();
    for _ in 0..GROUP_EVENTS / BATCH {
        let batch = (0..BATCH)
            .map(|_| event("work.item", r#"{"n":1}"#))
            .collect();
        engine.publish(batch).await.unwrap();
    }
    finished.recv().await.unwrap();
    let rate = GROUP_EVENTS as f64 / started.elapsed().as_secs_f64();
    engine.close().await.unwrap();
    rate
}

/// A stored backlog of `DRAIN_EVENTS`, then `members` members join and drain it, acking each
/// delivery; events/s from the first join to the last ack. The group's path alone, without
/// publishing alongside.
async fn group_drain(fsync: FsyncPolicy, members: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(engine(dir.path(), fsync));
    for _ in 0..DRAIN_EVENTS / 1000 {
        let batch = (0..1000)
            .map(|_| event("backlog.item", r#"{"n":1}"#))
            .collect();
        engine.publish(batch).await.unwrap();
    }
    let spec = GroupSpec {
        name: "drain".into(),
        pattern: Pattern::new("backlog.*").unwrap(),
        policy: GroupPolicy {
            max_in_flight: 1000,
            ..GroupPolicy::default()
        },
        start: StartAt::Earliest,
    };
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (done, mut finished) = tokio::sync::mpsc::channel::<()>(members);
    let started = Instant::now();
    for _ in 0..members {
        let mut member = engine.join_group(spec.clone(), None).await.unwrap();
        let (done, acked) = (done.clone(), acked.clone());
        tokio::spawn(async move {
            while let Ok(delivery) = member.recv().await {
                member.ack(delivery.delivery_id).await.unwrap();
                let total = acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if total == DRAIN_EVENTS {
                    let _ = done.send(()).await;
                    return;
                }
            }
        });
    }
    finished.recv().await.unwrap();
    let rate = DRAIN_EVENTS as f64 / started.elapsed().as_secs_f64();
    engine.close().await.unwrap();
    rate
}

/// Publish `GROUP_EVENTS` in batches of `BATCH`, nobody listening: the cost of storing.
async fn publish_only(fsync: FsyncPolicy) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), fsync);
    let batches: Vec<Vec<_>> = (0..GROUP_EVENTS / BATCH)
        .map(|_| {
            (0..BATCH)
                .map(|_| event("store.item", r#"{"n":1}"#))
                .collect()
        })
        .collect();
    let started = Instant::now();
    for batch in batches {
        engine.publish(batch).await.unwrap();
    }
    let rate = GROUP_EVENTS as f64 / started.elapsed().as_secs_f64();
    engine.close().await.unwrap();
    rate
}

/// Publish `FANOUT_EVENTS` in batches to `subscribers` live subscribers; events/s delivered to
/// each, from the first publish until every subscriber has every event.
async fn fanout(fsync: FsyncPolicy, subscribers: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), fsync);
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let mut subscription = engine
            .subscribe(Pattern::new("feed.>").unwrap(), StartAt::Latest)
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            for _ in 0..FANOUT_EVENTS {
                subscription.recv().await.unwrap();
            }
        }));
    }
    let started = Instant::now();
    for _ in 0..FANOUT_EVENTS / BATCH {
        let batch = (0..BATCH)
            .map(|_| event("feed.post", r#"{"n":1}"#))
            .collect();
        engine.publish(batch).await.unwrap();
    }
    for task in tasks {
        task.await.unwrap();
    }
    let rate = FANOUT_EVENTS as f64 / started.elapsed().as_secs_f64();
    engine.close().await.unwrap();
    rate
}

/// Publishes at `rate` events/s for `seconds`: every millisecond tick (tokio's timer
/// resolution), `rate / 1000` concurrent single-event publishes, as from many connections. Each
/// event's latency runs from the moment its tick issued it to its arrival at one live
/// subscriber; publishes are issued on schedule whatever the engine is doing, so an engine stall
/// delays every event behind it and shows in the percentiles. (The tick's own wake-up, which
/// tokio may deliver up to a millisecond late, is not counted: it is the harness, not Herald.)
/// Returns the percentiles of the latency and, beside them, of the log's own fsyncs during the
/// same run (what an acknowledgement waits for under `always`, under this very load).
async fn latency(fsync: FsyncPolicy, rate: u64, seconds: u64) -> LatencyRun {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(engine(dir.path(), fsync));
    // The stream exists before the run, so that its fsyncs are all in the run's snapshot.
    engine.publish(vec![event("tick.now", "0")]).await.unwrap();
    let io_before = engine.io_times();
    let run_started = Instant::now();
    let mut subscription = engine
        .subscribe(Pattern::new("tick.>").unwrap(), StartAt::Latest)
        .await
        .unwrap();
    let per_tick = (rate / 1000) as usize;
    let ticks = (seconds * 1000) as usize;
    let total = per_tick * ticks;
    let origin = Instant::now() + Duration::from_millis(50);
    let publisher = {
        let engine = engine.clone();
        tokio::spawn(async move {
            for tick in 0..ticks {
                tokio::time::sleep_until((origin + Duration::from_millis(tick as u64)).into())
                    .await;
                let issued_us = origin.elapsed().as_micros().to_string();
                for _ in 0..per_tick {
                    let (engine, issued_us) = (engine.clone(), issued_us.clone());
                    tokio::spawn(async move {
                        engine
                            .publish(vec![event("tick.now", &issued_us)])
                            .await
                            .unwrap();
                    });
                }
            }
        })
    };
    let mut latencies_us = Vec::with_capacity(total);
    for _ in 0..total {
        let received = subscription.recv().await.unwrap();
        let arrived = Instant::now();
        let issued_us: u64 = received.event.data.get().parse().unwrap();
        let issued = origin + Duration::from_micros(issued_us);
        latencies_us.push(arrived.saturating_duration_since(issued).as_secs_f64() * 1e6);
    }
    publisher.await.unwrap();
    let io = engine.io_times().since(&io_before);
    let fsyncs = &io.fsyncs;
    let run_seconds = run_started.elapsed().as_secs_f64();
    engine.close().await.unwrap();
    latencies_us.sort_by(|left, right| left.total_cmp(right));
    let at = |quantile: f64| {
        latencies_us[((latencies_us.len() as f64 * quantile) as usize).min(latencies_us.len() - 1)]
    };
    let micros_at = |times: &herald_engine::FsyncSnapshot, quantile: f64| {
        times
            .quantile(quantile)
            .map_or(0.0, |took| took.as_secs_f64() * 1e6)
    };
    let fsync_at = |quantile: f64| micros_at(fsyncs, quantile);
    LatencyRun {
        p50_us: at(0.50),
        p99_us: at(0.99),
        p999_us: at(0.999),
        fsync_p50_us: fsync_at(0.50),
        fsync_p99_us: fsync_at(0.99),
        fsyncs: fsyncs.count(),
        fsync_busy: fsyncs.total().as_secs_f64() / run_seconds,
        write_p99_us: micros_at(&io.writes, 0.99),
        write_max_us: micros_at(&io.writes, 1.0),
        writes_while_syncing: io.writes_while_syncing.count(),
        write_while_syncing_p99_us: micros_at(&io.writes_while_syncing, 0.99),
        write_while_syncing_max_us: micros_at(&io.writes_while_syncing, 1.0),
        sync_waits: io.sync_waits.count(),
        sync_wait_max_us: micros_at(&io.sync_waits, 1.0),
    }
}

/// One latency run: publish-to-delivery percentiles, and the fsyncs of the stream's log meanwhile.
struct LatencyRun {
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    fsync_p50_us: f64,
    fsync_p99_us: f64,
    fsyncs: u64,
    /// The share of the run the log spent in fsyncs: near 1, acknowledgements queue behind
    /// the disk whatever the code around it does.
    fsync_busy: f64,
    /// The log's `pwrite`s: all, and those that started while a background fsync ran (under
    /// `interval` an ack waits for its write, never for an fsync; a write stalled behind the
    /// journal's commit would bring the fsync into the latency).
    write_p99_us: f64,
    write_max_us: f64,
    writes_while_syncing: u64,
    write_while_syncing_p99_us: f64,
    write_while_syncing_max_us: f64,
    /// Times the writer waited for its syncer thread, and the longest wait.
    sync_waits: u64,
    sync_wait_max_us: f64,
}

/// Issue 3's targets for a run: p99 under 1 ms (interval), under the run's own fsync p99 plus
/// 1 ms (always).
fn latency_target_us(policy: &str, run: &LatencyRun) -> f64 {
    match policy {
        "always" => run.fsync_p99_us + 1000.0,
        _ => 1000.0,
    }
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let wanted = |name: &str| filter.as_deref().is_none_or(|filter| name.contains(filter));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("| workload | median | range of {RUNS} runs ({LATENCY_RUNS} for latency) |");
    println!("| --- | --- | --- |");
    for (policy, fsync) in policies() {
        let name = format!("publish only, batches of {BATCH}, fsync={policy}");
        if wanted(&name) {
            let rates = (0..RUNS)
                .map(|_| runtime.block_on(publish_only(fsync)))
                .collect();
            row(&name, rates, "events/s");
        }
        for members in [1, 4] {
            let name = format!("group consume with acks, {members} member(s), fsync={policy}");
            if wanted(&name) {
                let rates = (0..RUNS)
                    .map(|_| runtime.block_on(group_throughput(fsync, members)))
                    .collect();
                row(&name, rates, "events/s");
            }
        }
        for members in [1, 4] {
            let name = format!(
                "group drain of a stored backlog with acks, {members} member(s), fsync={policy}"
            );
            if wanted(&name) {
                let rates = (0..RUNS)
                    .map(|_| runtime.block_on(group_drain(fsync, members)))
                    .collect();
                row(&name, rates, "events/s");
            }
        }
        for subscribers in [1, 10, 100] {
            let name = format!("live fan-out to {subscribers} subscriber(s), fsync={policy}");
            if wanted(&name) {
                let rates = (0..RUNS)
                    .map(|_| runtime.block_on(fanout(fsync, subscribers)))
                    .collect();
                row(&name, rates, "events/s per subscriber");
            }
        }
        let name = format!("publish-to-delivery latency at 20 k/s, fsync={policy}");
        if wanted(&name) {
            let runs: Vec<LatencyRun> = (0..LATENCY_RUNS)
                .map(|_| runtime.block_on(latency(fsync, 20_000, 3)))
                .collect();
            let column = |pick: fn(&LatencyRun) -> f64| runs.iter().map(pick).collect();
            type Column = (&'static str, fn(&LatencyRun) -> f64, &'static str);
            let columns: [Column; 11] = [
                (", p50", |run| run.p50_us, "µs"),
                (", p99", |run| run.p99_us, "µs"),
                (", p99.9", |run| run.p999_us, "µs"),
                (
                    ": the log's fsyncs meanwhile, p50",
                    |run| run.fsync_p50_us,
                    "µs",
                ),
                (
                    ": the log's fsyncs meanwhile, p99",
                    |run| run.fsync_p99_us,
                    "µs",
                ),
                (
                    ": the log's fsyncs meanwhile, count",
                    |run| run.fsyncs as f64,
                    "",
                ),
                (
                    ": the log's fsyncs meanwhile, % of the run spent in them",
                    |run| run.fsync_busy * 100.0,
                    "%",
                ),
                (
                    ": the log's writes meanwhile, p99",
                    |run| run.write_p99_us,
                    "µs",
                ),
                (
                    ": the log's writes meanwhile, max",
                    |run| run.write_max_us,
                    "µs",
                ),
                (
                    ": writes that started during a background fsync, p99",
                    |run| run.write_while_syncing_p99_us,
                    "µs",
                ),
                (
                    ": the writer's waits for its syncer thread, count",
                    |run| run.sync_waits as f64,
                    "",
                ),
            ];
            for (label, pick, unit) in columns {
                row(&format!("{name}{label}"), column(pick), unit);
            }
            let met = runs
                .iter()
                .filter(|run| run.p99_us < latency_target_us(policy, run))
                .count();
            println!(
                "| {name}: runs whose p99 met the target ({}) | {met} of {} | |",
                if policy == "always" {
                    "fsync p99 of the run + 1 ms"
                } else {
                    "1 ms"
                },
                runs.len()
            );
            for (at, run) in runs.iter().enumerate() {
                eprintln!(
                    "  run {}: p50 {:.0} / p99 {:.0} / p99.9 {:.0} µs; fsyncs {} p50 {:.0} / p99 {:.0} µs, busy {:.0}%; \
                     writes p99 {:.0} max {:.0} µs, {} during an fsync: p99 {:.0} max {:.0} µs; \
                     {} waits for the syncer, max {:.0} µs",
                    at + 1,
                    run.p50_us,
                    run.p99_us,
                    run.p999_us,
                    run.fsyncs,
                    run.fsync_p50_us,
                    run.fsync_p99_us,
                    run.fsync_busy * 100.0,
                    run.write_p99_us,
                    run.write_max_us,
                    run.writes_while_syncing,
                    run.write_while_syncing_p99_us,
                    run.write_while_syncing_max_us,
                    run.sync_waits,
                    run.sync_wait_max_us
                );
            }
        }
    }
}
