//! What the Redis engine does beyond the conformance suite: retention of declared streams,
//! refusing what it cannot do, and publishing on when Redis closed a connection it kept or
//! refuses a new one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod redis_support;

use std::time::Duration;

use herald_core::Pattern;
use herald_engine::conformance::{event, event_with_chosen_id};
use herald_engine::{
    Engine, EngineError, RedisConfig, RedisEngine, StartAt, Storage, StreamConfig,
};
use herald_log::Retention;
use redis_support::{OwnRedis, engine_on, isolated_prefix, reachable_redis, unique_prefix};

fn declared(name: &str, subjects: &str, retention: Retention) -> StreamConfig {
    StreamConfig {
        name: name.to_owned(),
        subjects: vec![Pattern::new(subjects).unwrap()],
        retention,
        dedupe_window: Duration::from_secs(120),
        storage: Storage::File,
    }
}

async fn stats_of(engine: &RedisEngine, stream: &str) -> herald_engine::StreamStats {
    engine
        .streams()
        .await
        .into_iter()
        .find(|stats| stats.name == stream)
        .expect("the stream's stats")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_streams_keep_their_retention() {
    let Some(url) = reachable_redis() else { return };
    let (prefix, _cleanup) = isolated_prefix(&url);
    let mut config = RedisConfig::new(url.as_str());
    config.key_prefix = prefix;
    config.streams = vec![
        declared(
            "capped",
            "metric.>",
            Retention {
                events_max: Some(100),
                ..Retention::default()
            },
        ),
        declared(
            "aged",
            "audit.>",
            Retention {
                age_max: Some(Duration::from_millis(500)),
                ..Retention::default()
            },
        ),
    ];
    let engine = RedisEngine::open(config).await.unwrap();
    // Both ways of storing: without chosen ids (a transaction of `XADD`s), and with them (the
    // dedupe script).
    for round in 0..10 {
        let batch = (0..100)
            .map(|n| match round % 2 {
                0 => event("metric.cpu", &n.to_string()),
                _ => event_with_chosen_id("metric.cpu", &n.to_string()),
            })
            .collect();
        engine.publish(batch).await.unwrap();
    }
    let capped = stats_of(&engine, "capped").await;
    // `MAXLEN ~` trims whole nodes: at least the cap is kept, and far less than everything.
    assert_eq!(capped.last_seq, 1000);
    assert!(
        (100..1000).contains(&capped.events),
        "{} events kept",
        capped.events
    );
    assert_eq!(capped.first_seq, capped.last_seq - capped.events + 1);

    let before_old = time::OffsetDateTime::now_utc();
    let old = (0..10)
        .map(|n| event("audit.entry", &n.to_string()))
        .collect();
    engine.publish(old).await.unwrap();
    // Polled, not slept: the trimmer runs every second and the events age out after 500 ms.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let aged = stats_of(&engine, "aged").await;
        if aged.events == 0 {
            assert_eq!(
                (aged.first_seq, aged.last_seq),
                (11, 10),
                "trimmed, seqs kept"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never trimmed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A time before the trimmed events still finds its place: the next event stored.
    let mut from_time = engine
        .subscribe(Pattern::new("audit.>").unwrap(), StartAt::Time(before_old))
        .await
        .unwrap();
    engine
        .publish(vec![event("audit.entry", "10")])
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), from_time.recv())
        .await
        .expect("the new event arrives")
        .unwrap();
    assert_eq!(first.seq, 11);
    engine.close().await.unwrap();
}

#[tokio::test]
async fn max_bytes_is_refused_rather_than_ignored() {
    let mut config = RedisConfig::new("redis://127.0.0.1:6379");
    config.streams = vec![declared(
        "big",
        "big.>",
        Retention {
            bytes_max: Some(1 << 20),
            ..Retention::default()
        },
    )];
    let refused = RedisEngine::open(config).await;
    assert!(
        matches!(&refused, Err(EngineError::Config(message)) if message.contains("max_bytes")),
        "{refused:?}"
    );
}

/// Redis may close a publish connection while it idles in the engine's pool (its `timeout`, a
/// restart, `CLIENT KILL`): the next publish goes on another connection instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_after_redis_closed_an_idle_publish_connection_is_stored() {
    let Some(url) = reachable_redis() else { return };
    let (prefix, _cleanup) = isolated_prefix(&url);
    let engine = engine_on(&url, &prefix).await;
    let first = engine
        .publish(vec![event("audit.login", "{}")])
        .await
        .unwrap();
    assert_eq!(first[0].seq, Some(1));
    // This engine's publish connections are named `<prefix>:<process>:publish`.
    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin).unwrap();
    let ours: Vec<&str> = clients
        .lines()
        .filter(|line| {
            line.split(' ').any(|field| {
                field.starts_with(&format!("name={prefix}:")) && field.ends_with(":publish")
            })
        })
        .filter_map(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")))
        .collect();
    assert_eq!(ours.len(), 1, "one publish connection: {clients}");
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(ours[0])
        .query(&mut admin)
        .unwrap();
    assert_eq!(killed, 1);
    // Past the idle time after which a connection is checked before it is used.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let second = engine
        .publish(vec![event("audit.login", "{}")])
        .await
        .unwrap();
    assert_eq!(second[0].seq, Some(2));
    let third = engine
        .publish(vec![event("audit.login", "{}")])
        .await
        .unwrap();
    assert_eq!(third[0].seq, Some(3));
}

/// The count in `INFO <section>`'s line `<field>:<count>`.
fn info_count(connection: &mut redis::Connection, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg(section).query(connection).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {info}"))
}

/// Where no publish connection can be opened (Redis at `maxclients`), publishes go on the
/// shared connection, and the engine does not try to open one again at every publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_go_on_the_shared_connection_while_no_publish_connection_opens() {
    let Some(redis) = OwnRedis::start() else {
        return;
    };
    let engine = engine_on(&redis.url, &unique_prefix()).await;
    let mut admin = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let connected = info_count(&mut admin, "clients", "connected_clients");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(connected)
        .query(&mut admin)
        .unwrap();
    let first = engine
        .publish(vec![event("audit.login", "{}")])
        .await
        .unwrap();
    assert_eq!(first[0].seq, Some(1));
    let refused = info_count(&mut admin, "stats", "rejected_connections");
    assert!(refused >= 1, "the publish tried a connection of its own");
    for seq in 2..=4 {
        let next = engine
            .publish(vec![event("audit.login", "{}")])
            .await
            .unwrap();
        assert_eq!(next[0].seq, Some(seq));
    }
    assert_eq!(
        info_count(&mut admin, "stats", "rejected_connections"),
        refused,
        "no new attempt within the pause"
    );
}

/// A call dropped at any point (before it ran, waiting for its turn, halfway through handing
/// its writes over, or waiting for replies) leaves the stream and its publish connection
/// in step: calls made around it are stored, in the order they were made, and read back as
/// published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_publish_leaves_the_others_in_order() {
    let Some(url) = reachable_redis() else { return };
    let (prefix, _cleanup) = isolated_prefix(&url);
    let engine = engine_on(&url, &prefix).await;
    let batch = |call: usize, size: usize| -> Vec<herald_core::Event> {
        (0..size)
            .map(|i| event("audit.login", &format!(r#"{{"call":{call},"i":{i}}}"#)))
            .collect()
    };
    for polls in 0..12 {
        // Made in this order: a large call, the one dropped after `polls` polls, a small one.
        let before = engine.publish(batch(0, 9_000));
        let mut dropped = Box::pin(engine.publish(batch(1, 9_000)));
        let after = engine.publish(batch(2, 50));
        let before = tokio::spawn(before);
        for _ in 0..polls {
            let _ = futures::poll!(&mut dropped);
            tokio::task::yield_now().await;
        }
        drop(dropped);
        let after = after.await.expect("the call after the dropped one");
        let before = before
            .await
            .unwrap()
            .expect("the call before the dropped one");
        let last_before = before.last().unwrap().seq.unwrap();
        let first_after = after[0].seq.unwrap();
        assert!(
            first_after > last_before,
            "polls={polls}: stored after the call made before it ({first_after} <= {last_before})"
        );
        let seqs: Vec<u64> = after.iter().map(|outcome| outcome.seq.unwrap()).collect();
        let expected: Vec<u64> = (first_after..first_after + 50).collect();
        assert_eq!(seqs, expected, "polls={polls}: one run of seqs");
        let stored = engine.read_stream("audit", first_after, 50).await.unwrap();
        for (read, outcome) in stored.iter().zip(&after) {
            assert_eq!(read.event.id, outcome.id, "polls={polls}");
        }
        // Whole writes only, every one stamped: the stream's count is its last seq.
        let stats = stats_of(&engine, "audit").await;
        assert_eq!(stats.last_seq, stats.events, "polls={polls}");
        assert_eq!(stats.last_seq, seqs[49], "polls={polls}");
    }
}

/// Two processes publishing to one stream at once: their pipelines' `XADD`s fall between each
/// other's, so a chunk's events are not one run of seqs and `STAMP`'s record of it is wrong.
/// Every id a publish answered with must still be found as a duplicate of its own seq, and the
/// stream must count each event once, gapless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_ids_are_deduped_when_two_processes_interleave_on_a_stream() {
    let Some(url) = reachable_redis() else { return };
    let (prefix, _cleanup) = isolated_prefix(&url);
    let one = engine_on(&url, &prefix).await;
    let other = engine_on(&url, &prefix).await;
    // One process publishes large batches while the other trickles single events into the
    // same stream, each on a task of its own, until the trickle landed inside a batch.
    let mut outcomes = Vec::new();
    let started = std::time::Instant::now();
    let mut interleaved = false;
    while !interleaved {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the two processes' publishes never interleaved"
        );
        let bulk: Vec<herald_core::Event> = (0..10_000)
            .map(|i| event("audit.login", &format!(r#"{{"bulk":{i}}}"#)))
            .collect();
        let bulk = tokio::spawn(one.publish(bulk));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (trickler, stopped) = (other.clone(), stop.clone());
        let trickle = tokio::spawn(async move {
            let mut trickled = Vec::new();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let single = vec![event("audit.login", r#"{"trickle":true}"#)];
                trickled.extend(trickler.publish(single).await.unwrap());
            }
            trickled
        });
        let bulk = bulk.await.unwrap().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        interleaved = bulk
            .windows(2)
            .any(|pair| pair[1].seq.unwrap() != pair[0].seq.unwrap() + 1);
        outcomes.extend(bulk);
        outcomes.extend(trickle.await.unwrap());
    }
    let mut seqs: Vec<u64> = outcomes
        .iter()
        .map(|outcome| outcome.seq.unwrap())
        .collect();
    seqs.sort_unstable();
    let count = seqs.len() as u64;
    assert_eq!(seqs, (1..=count).collect::<Vec<_>>(), "gapless, each once");
    let stats = stats_of(&one, "audit").await;
    assert_eq!((stats.last_seq, stats.events), (count, count));
    // Every id sent back, as its publisher's own, through either process.
    for (part, resending) in outcomes
        .chunks(1_000)
        .zip([&one, &other].into_iter().cycle())
    {
        let resent: Vec<herald_core::Event> = part
            .iter()
            .map(|outcome| {
                let mut again = event_with_chosen_id("audit.login", "{}");
                again.id = outcome.id.clone();
                again
            })
            .collect();
        let answers = resending.publish(resent).await.unwrap();
        for (answer, outcome) in answers.iter().zip(part) {
            assert_eq!(
                (answer.seq, answer.duplicate),
                (outcome.seq, true),
                "id {} sent again",
                outcome.id
            );
        }
    }
    assert_eq!(
        stats_of(&one, "audit").await.last_seq,
        count,
        "nothing stored twice"
    );
    // The chunks the other's `XADD`s fell into had their ids recorded one by one (a field per
    // id in a dedupe bucket: only that mending writes one for a generated id).
    assert!(ids_recorded_one_by_one(&url, &prefix, "audit"));
}

/// Whether a dedupe bucket of `stream` holds a record of a single id (a chunk's record's field
/// starts with a control character, `chunk_ids.rs`).
fn ids_recorded_one_by_one(url: &str, prefix: &str, stream: &str) -> bool {
    let (mut connection, buckets) = dedupe_buckets(url, prefix, stream);
    buckets.iter().any(|bucket| {
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg(bucket)
            .query(&mut connection)
            .expect("HKEYS");
        fields.iter().any(|field| !field.starts_with('\u{1}'))
    })
}

/// A connection to Redis, and the dedupe buckets of `stream` under `prefix`.
fn dedupe_buckets(url: &str, prefix: &str, stream: &str) -> (redis::Connection, Vec<String>) {
    let mut connection = redis::Client::open(url)
        .and_then(|client| client.get_connection())
        .expect("a connection to Redis");
    let buckets = redis::cmd("KEYS")
        .arg(format!("{prefix}:{{{stream}}}:dd:*"))
        .query(&mut connection)
        .expect("KEYS");
    (connection, buckets)
}

/// A dedupe bucket expires however it was created: by a chunk's record (events without chosen
/// ids) or by the `PUBLISH` script (chosen ids). A bucket written once and left without an
/// expiry would stay in Redis for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dedupe_bucket_expires() {
    let Some(url) = reachable_redis() else { return };
    for chosen in [false, true] {
        let (prefix, _cleanup) = isolated_prefix(&url);
        let engine = engine_on(&url, &prefix).await;
        let single = match chosen {
            false => event("audit.login", "{}"),
            true => event_with_chosen_id("audit.login", "{}"),
        };
        engine.publish(vec![single]).await.unwrap();
        let (mut connection, buckets) = dedupe_buckets(&url, &prefix, "audit");
        assert_eq!(buckets.len(), 1, "chosen={chosen}: one bucket");
        let ttl_ms: i64 = redis::cmd("PTTL")
            .arg(&buckets[0])
            .query(&mut connection)
            .unwrap();
        assert!(ttl_ms > 0, "chosen={chosen}: the bucket's PTTL is {ttl_ms}");
    }
}
