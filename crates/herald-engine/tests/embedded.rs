//! Behaviour specific to the embedded engine: what survives a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use herald_core::Pattern;
use herald_engine::api::{GroupPolicy, GroupSpec};
use herald_engine::conformance::{event, event_with_chosen_id};
use herald_engine::{EmbeddedEngine, Engine, EngineConfig, StartAt};

fn open(dir: &Path) -> EmbeddedEngine {
    EmbeddedEngine::open(EngineConfig::new(dir)).unwrap()
}

fn spec() -> GroupSpec {
    GroupSpec {
        name: "fulfilment".into(),
        pattern: Pattern::new("order.*").unwrap(),
        policy: GroupPolicy::default(),
        start: StartAt::Earliest,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_dedupe_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let original = event_with_chosen_id("invoice.issued", r#"{"n":1}"#);
    let first = engine
        .publish(vec![original.clone(), event("invoice.paid", "{}")])
        .await
        .unwrap();
    engine.close().await.unwrap();
    drop(engine);

    let engine = open(dir.path());
    let streams = engine.streams().await;
    assert_eq!(streams.len(), 1);
    assert_eq!(
        (streams[0].name.as_str(), streams[0].last_seq),
        ("invoice", 2)
    );
    let again = engine.publish(vec![original]).await.unwrap();
    assert_eq!((again[0].seq, again[0].duplicate), (first[0].seq, true));
    let replay = engine.read_stream("invoice", 1, 10).await.unwrap();
    assert_eq!(replay.len(), 2);
    assert_eq!(replay[0].event.data.get(), r#"{"n":1}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let batch = (1..=10)
        .map(|n| event("order.placed", &n.to_string()))
        .collect();
    engine.publish(batch).await.unwrap();
    let mut member = engine.join_group(spec(), Some(5)).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(member.recv().await.unwrap());
    }
    let seqs: Vec<u64> = held.iter().map(|delivery| delivery.event.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    member.ack_sync(held[0].delivery_id).await.unwrap();
    member.ack_sync(held[1].delivery_id).await.unwrap();
    member
        .nack(
            held[2].delivery_id,
            Some(Duration::from_secs(3600)),
            Some("later".into()),
        )
        .await
        .unwrap();
    member
        .reject(held[3].delivery_id, Some("bad".into()))
        .await
        .unwrap();
    // Seq 5 stays in flight: the restart must deliver it again, as attempt 2.
    engine.close().await.unwrap();
    drop(member);
    drop(engine);

    let engine = open(dir.path());
    let mut member = engine.join_group(spec(), Some(10)).await.unwrap();
    let mut after = Vec::new();
    for _ in 0..6 {
        let delivery = member.recv().await.unwrap();
        after.push((delivery.event.seq, delivery.attempt));
        member.ack(delivery.delivery_id).await.unwrap();
    }
    after.sort_unstable();
    // The four slots freed before the restart were filled with 6..=9 at once; unreceived, they
    // were in flight at the restart, so they too come back as second attempts.
    assert_eq!(after, [(5, 2), (6, 2), (7, 2), (8, 2), (9, 2), (10, 1)]);
    let dead = engine.dead_letters("fulfilment", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].event.seq,
            dead[0].attempts,
            dead[0].last_error.as_deref()
        ),
        (4, 1, Some("bad"))
    );
    let stats = engine.groups().await;
    assert_eq!(
        stats[0].scheduled, 1,
        "seq 3 still waits for its retry time"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), member.recv())
            .await
            .is_err(),
        "acked events are not delivered again"
    );
}

/// In-flight events far apart in two streams come back after a restart, each once, as second
/// attempts, and only they.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_events_across_streams_are_restored_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    for stream in ["order", "refund"] {
        let batch = (1..=1500)
            .map(|n| event(&format!("{stream}.placed"), &n.to_string()))
            .collect();
        engine.publish(batch).await.unwrap();
    }
    let spec = GroupSpec {
        name: "placed".into(),
        pattern: Pattern::new("*.placed").unwrap(),
        policy: GroupPolicy::default(),
        start: StartAt::Earliest,
    };
    let held = |seq: u64| [1, 2, 600, 1499, 1500].contains(&seq);
    let mut member = engine.join_group(spec.clone(), Some(100)).await.unwrap();
    let mut expected = Vec::new();
    for _ in 0..3000 {
        let delivery = member.recv().await.unwrap();
        if held(delivery.event.seq) {
            expected.push((delivery.event.stream.clone(), delivery.event.seq, 2));
        } else {
            member.ack_sync(delivery.delivery_id).await.unwrap();
        }
    }
    engine.close().await.unwrap();
    drop(member);
    drop(engine);

    let engine = open(dir.path());
    let mut member = engine.join_group(spec, Some(100)).await.unwrap();
    let mut after = Vec::new();
    while after.len() < expected.len() {
        let delivery = member.recv().await.unwrap();
        after.push((
            delivery.event.stream.clone(),
            delivery.event.seq,
            delivery.attempt,
        ));
        member.ack(delivery.delivery_id).await.unwrap();
    }
    after.sort();
    expected.sort();
    assert_eq!(after, expected);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), member.recv())
            .await
            .is_err(),
        "acked events are not delivered again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_journal_snapshots_keep_it_small_and_the_state_intact() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut config = EngineConfig::new(dir.path());
        config.group_journal_snapshot_records = 20;
        config.group_journal_segment_bytes = 4096;
        config
    };
    let engine = EmbeddedEngine::open(config()).unwrap();
    let batch = (1..=600)
        .map(|n| event("order.placed", &n.to_string()))
        .collect();
    engine.publish(batch).await.unwrap();
    let mut member = engine.join_group(spec(), Some(10)).await.unwrap();
    let (mut dead, mut waiting) = (Vec::new(), Vec::new());
    for _ in 0..500 {
        let delivery = member.recv().await.unwrap();
        let seq = delivery.event.seq;
        if seq % 50 == 0 {
            member
                .reject(delivery.delivery_id, Some(format!("bad {seq}")))
                .await
                .unwrap();
            dead.push(seq);
        } else if seq % 70 == 0 {
            member
                .nack(delivery.delivery_id, Some(Duration::from_secs(3600)), None)
                .await
                .unwrap();
            waiting.push(seq);
        } else {
            member.ack_sync(delivery.delivery_id).await.unwrap();
        }
    }
    engine.close().await.unwrap();
    drop(member);
    drop(engine);

    let journal_dir = dir.path().join("groups").join("fulfilment");
    let first_segment = std::fs::read_dir(&journal_dir)
        .unwrap()
        .filter_map(|entry| entry.unwrap().file_name().into_string().ok())
        .filter(|name| name.ends_with(".log"))
        .min()
        .unwrap();
    assert_ne!(
        first_segment, "00000000000000000001.log",
        "snapshots let the journal drop its head"
    );

    let engine = EmbeddedEngine::open(config()).unwrap();
    let mut member = engine.join_group(spec(), Some(200)).await.unwrap();
    let mut rest = Vec::new();
    while rest.len() < 100 {
        let delivery = member.recv().await.unwrap();
        rest.push(delivery.event.seq);
        member.ack(delivery.delivery_id).await.unwrap();
    }
    rest.sort_unstable();
    assert_eq!(
        rest,
        (501..=600).collect::<Vec<_>>(),
        "exactly the undelivered events remain"
    );
    let letters: Vec<u64> = engine
        .dead_letters("fulfilment", 100)
        .await
        .unwrap()
        .iter()
        .map(|letter| letter.event.seq)
        .collect();
    assert_eq!(letters, dead);
    let stats = engine.groups().await;
    assert_eq!(stats[0].scheduled, waiting.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_group_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    engine.create_group(spec()).await.unwrap();
    assert!(dir.path().join("groups").join("fulfilment").exists());
    engine.delete_group("fulfilment").await.unwrap();
    assert!(!dir.path().join("groups").join("fulfilment").exists());
    engine.close().await.unwrap();
    drop(engine);
    let engine = open(dir.path());
    assert!(
        engine.groups().await.is_empty(),
        "a deleted group is not restored"
    );
}
