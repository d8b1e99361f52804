//! Kill -9 under load: a child process runs the engine with a publisher and a group of three
//! members (one quick, one slow, one that fails a third of its deliveries), printing every
//! acknowledged publish and every acknowledged ack. The parent kills it with SIGKILL at a random
//! moment, three times, then runs a child that drains the group. Every acknowledged publish
//! must be acked by the group; an event acked before a crash is never delivered again; the
//! only repeats are deliveries that were not yet acked at a crash, and the test reports them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::Pattern;
use herald_engine::api::{Backoff, GroupPolicy, GroupSpec};
use herald_engine::conformance::event;
use herald_engine::{EmbeddedEngine, Engine, EngineConfig, StartAt};
use rand::{Rng, SeedableRng};

const CHILD_DIR_ENV: &str = "HERALD_ENGINE_CRASH_DIR";
const CHILD_MODE_ENV: &str = "HERALD_ENGINE_CRASH_MODE";
const KILL_ROUNDS: usize = 3;

fn spec() -> GroupSpec {
    GroupSpec {
        name: "workers".into(),
        pattern: Pattern::new("job.*").unwrap(),
        policy: GroupPolicy {
            ack_timeout: Duration::from_millis(500),
            max_retries: 1000,
            backoff: Backoff {
                initial: Duration::from_millis(5),
                factor: 2.0,
                max: Duration::from_millis(50),
                jitter: 0.2,
            },
            max_in_flight: 20,
        },
        start: StartAt::Earliest,
    }
}

type Out = Arc<Mutex<std::io::Stdout>>;

fn say(out: &Out, line: String) {
    let mut out = out.lock().unwrap();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// The child's body: runs only when the parent starts this binary with the env vars set.
#[test]
fn crash_child() {
    let (Ok(dir), Ok(mode)) = (std::env::var(CHILD_DIR_ENV), std::env::var(CHILD_MODE_ENV)) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut config = EngineConfig::new(dir);
        // Frequent journal snapshots, so that kills also land during and around them.
        config.group_journal_snapshot_records = 50;
        config.group_journal_segment_bytes = 64 * 1024;
        let engine = EmbeddedEngine::open(config).unwrap();
        let out: Out = Arc::new(Mutex::new(std::io::stdout()));
        // Ends the test harness's unterminated "test crash_child ... " so that our first line
        // is a line of its own.
        say(&out, String::new());
        if mode == "drain" {
            drain(&engine, &out).await;
            engine.close().await.unwrap();
            return;
        }
        for behaviour in ["quick", "slow", "failing"] {
            let mut member = engine.join_group(spec(), None).await.unwrap();
            let out = out.clone();
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::from_os_rng();
                loop {
                    let Ok(delivery) = member.recv().await else {
                        return;
                    };
                    if behaviour == "slow" {
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                    if behaviour == "failing" && rng.random_ratio(1, 3) {
                        let _ = member
                            .nack(delivery.delivery_id, None, Some("flaky".into()))
                            .await;
                        continue;
                    }
                    // Said before acking: a kill between the ack and its line would otherwise
                    // hide an ack the engine recorded.
                    say(&out, format!("acking {}", delivery.event.seq));
                    if member.ack_sync(delivery.delivery_id).await.is_ok() {
                        say(
                            &out,
                            format!("ack {} {}", delivery.event.seq, delivery.attempt),
                        );
                    }
                }
            });
        }
        let mut rng = rand::rngs::StdRng::from_os_rng();
        loop {
            let size = rng.random_range(1..=10);
            let batch = (0..size).map(|_| event("job.run", "{}")).collect();
            let outcomes = engine.publish(batch).await.unwrap();
            for outcome in outcomes {
                say(&out, format!("pub {}", outcome.seq.unwrap()));
            }
        }
    });
}

/// Acks everything the group still has, until it has nothing left.
async fn drain(engine: &EmbeddedEngine, out: &Out) {
    let mut member = engine.join_group(spec(), Some(100)).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_millis(100), member.recv()).await {
            Ok(Ok(delivery)) => {
                member.ack(delivery.delivery_id).await.unwrap();
                say(
                    out,
                    format!("ack {} {}", delivery.event.seq, delivery.attempt),
                );
            }
            Ok(Err(closed)) => panic!("closed: {closed}"),
            Err(_) => {
                let stats = engine.groups().await;
                let group = &stats[0];
                if group.lag == 0 && group.in_flight == 0 && group.scheduled == 0 {
                    return;
                }
            }
        }
    }
}

/// What a child printed: acknowledged publishes, acks sent, acks confirmed (with attempts).
#[derive(Default)]
struct ChildLines {
    published: Vec<u64>,
    acking: Vec<u64>,
    acked: Vec<(u64, u32)>,
}

/// How long a loaded child may take to publish its first event (opening the engine replays the
/// journal and dedupe ids of earlier rounds, slow in a debug build on a busy machine).
const FIRST_PUBLISH_WAIT: Duration = Duration::from_secs(60);

/// Runs a child; kills it `kill_after` its first acknowledged publish, if given.
fn run_child(dir: &std::path::Path, mode: &str, kill_after: Option<Duration>) -> ChildLines {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_MODE_ENV, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (first_publish_tx, first_publish) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = ChildLines::default();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let fields: Vec<&str> = line.split(' ').collect();
            match fields.as_slice() {
                ["pub", seq] => {
                    if lines.published.is_empty() {
                        let _ = first_publish_tx.send(());
                    }
                    lines.published.push(seq.parse().unwrap());
                }
                ["acking", seq] => lines.acking.push(seq.parse().unwrap()),
                ["ack", seq, attempt] => lines
                    .acked
                    .push((seq.parse().unwrap(), attempt.parse().unwrap())),
                _ => {}
            }
        }
        lines
    });
    match kill_after {
        Some(wait) => {
            // Timed from the first publish, not the start: a kill before the engine is open
            // would test nothing.
            if first_publish.recv_timeout(FIRST_PUBLISH_WAIT).is_err() {
                child.kill().unwrap();
                panic!("the {mode} child published nothing in {FIRST_PUBLISH_WAIT:?}");
            }
            std::thread::sleep(wait);
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
        None => assert!(child.wait().unwrap().success(), "the drain child failed"),
    }
    reader.join().unwrap()
}

#[test]
fn every_acknowledged_publish_is_acked_after_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut published = BTreeSet::new();
    let mut acks: BTreeMap<u64, Vec<(usize, u32)>> = BTreeMap::new();
    let mut acking = BTreeSet::new();
    for round in 0..=KILL_ROUNDS {
        let (mode, kill_after) = if round < KILL_ROUNDS {
            (
                "load",
                Some(Duration::from_millis(rng.random_range(300..900))),
            )
        } else {
            ("drain", None)
        };
        let lines = run_child(dir.path(), mode, kill_after);
        published.extend(lines.published);
        acking.extend(lines.acking);
        for (seq, attempt) in lines.acked {
            acks.entry(seq).or_default().push((round, attempt));
        }
    }
    let acked: BTreeSet<u64> = acks.keys().copied().collect();
    // An ack in flight at a kill may or may not have been recorded; if it was not, the drain
    // got the event again and acked it, so it is in `acked`.
    let unconfirmed: BTreeSet<u64> = acking.difference(&acked).copied().collect();
    let missing: Vec<&u64> = published
        .iter()
        .filter(|seq| !acked.contains(seq) && !unconfirmed.contains(seq))
        .collect();
    if !missing.is_empty() {
        let kept = dir.keep();
        panic!(
            "acknowledged publishes never acked: {missing:?} (data kept in {})",
            kept.display()
        );
    }
    assert!(
        unconfirmed.len() <= 3 * KILL_ROUNDS * 20,
        "{} unconfirmed acks",
        unconfirmed.len()
    );
    // Acked twice would mean an event acked before a crash was delivered again.
    let acked_twice: Vec<(&u64, &Vec<(usize, u32)>)> =
        acks.iter().filter(|(_, acks)| acks.len() > 1).collect();
    assert!(
        acked_twice.is_empty(),
        "acked more than once: {acked_twice:?}"
    );
    let redelivered_after_crash = acks
        .values()
        .filter(|acks| acks.iter().any(|&(_, attempt)| attempt > 1))
        .count();
    println!(
        "{} acknowledged publishes, all acked ({} acks were cut off by a kill after the engine \
         recorded them); {} events needed more than one delivery (failures, timeouts and \
         deliveries lost to the {KILL_ROUNDS} crashes)",
        published.len(),
        unconfirmed.len(),
        redelivered_after_crash
    );
}
