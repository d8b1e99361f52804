//! Several Redis engines on one Redis and one key prefix — as several Herald processes would
//! be — are one bus: members of a group on different engines share its work, live subscribers
//! see what any engine publishes, group stats add up, and what a crashed engine held is
//! recovered by the others.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod redis_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use herald_core::Pattern;
use herald_engine::conformance::{event, event_with_chosen_id};
use herald_engine::{
    Delivery, Engine, GroupMember, GroupPolicy, GroupSpec, RedisConfig, RedisEngine, StartAt,
};
use redis_support::{isolated_prefix, reachable_redis};

/// Bounds a wait that should end much sooner (catches a hang, asserts nothing about speed).
const WAIT: Duration = Duration::from_secs(30);

/// A short process TTL, so that a crash is noticed within a test's patience.
const PROCESS_TTL: Duration = Duration::from_millis(600);

async fn engine(url: &str, prefix: &str) -> RedisEngine {
    let mut config = RedisConfig::new(url);
    config.key_prefix = prefix.to_owned();
    config.process_ttl = PROCESS_TTL;
    RedisEngine::open(config).await.expect("open")
}

fn spec(name: &str, pattern: &str) -> GroupSpec {
    GroupSpec {
        name: name.to_owned(),
        pattern: Pattern::new(pattern).unwrap(),
        policy: GroupPolicy::default(),
        start: StartAt::Earliest,
    }
}

async fn next(member: &mut GroupMember) -> Delivery {
    tokio::time::timeout(WAIT, member.recv())
        .await
        .expect("a delivery in time")
        .expect("open")
}

/// A member of the group `workers` (on `job.*`) with room for `count` deliveries, and the
/// `count` deliveries it was given, unacked.
async fn worker_holding(engine: &RedisEngine, count: u32) -> (GroupMember, Vec<Delivery>) {
    let mut member = engine
        .join_group(spec("workers", "job.*"), Some(count))
        .await
        .unwrap();
    let mut deliveries = Vec::new();
    for _ in 0..count {
        deliveries.push(next(&mut member).await);
    }
    (member, deliveries)
}

async fn publish_numbered(engine: &RedisEngine, subject: &str, count: usize) {
    let batch = (0..count).map(|n| event(subject, &n.to_string())).collect();
    engine.publish(batch).await.expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_two_engines_share_the_work_and_stats_add_up() {
    let Some(url) = reachable_redis() else { return };
    let (prefix, _cleanup) = isolated_prefix(&url);
    let (one, two) = (engine(&url, &prefix).await, engine(&url, &prefix).await);
    let mut members = [
        one.join_group(spec("billing", "order.*"), Some(5))
            .await
            .unwrap(),
        two.join_group(spec("billing", "order.*"), Some(5))
            .await
            .unwrap(),
    ];
    publish_numbered(&one, "order.placed", 100).await;
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut per_engine = [0usize; 2];
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of 100",
            seen.len()
        );
        for (at, member) in members.iter_mut().enumerate() {
            if let Ok(Ok(delivery)) =
                tokio::time::timeout(Duration::from_millis(20), member.recv()).await
            {
                assert_eq!(delivery.attempt, 1);
                *seen.entry(delivery.event.seq).or_default() += 1;
                per_engine[at] += 1;
                member.ack(delivery.delivery_id).await.unwrap();
            }
        }
    }
    assert!(seen.values().all(|&times| times == 1), "each event once");
    assert!(
        per_engine.iter().all(|&count| count > 0),
        "both engines' members worked: {per_engine:?}"
    );
    // Either engine's stats count both engines' members and every ack.
    for engine in [&one, &two] {
        let stats = engine.groups().await;
        let billing = stats.iter().find(|group| group.name == "billing").unwrap();
        assert_eq!(
            (billing.members, billing.acked, billing.in_flight),
            (2, 100, 0)
        );
    }
    one.close().await.unwrap();
    two.close().await.unwrap();
}

/// Seqs are Redis's own entry numbers (`0-*`), whichever way a publish stores its events (a
/// transaction of `XADD`s without chosen ids, the dedupe script with them): publishers on two
/// engines, concurrently, get every seq once, in their batches' order, and the stream's
/// counters and time index follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_two_engines_get_gapless_seqs_either_way() {
    let Some(url) = reachable_redis() else { return };
    let (prefix, _cleanup) = isolated_prefix(&url);
    let (one, two) = (engine(&url, &prefix).await, engine(&url, &prefix).await);
    let started = time::OffsetDateTime::now_utc();
    let publish = |engine: RedisEngine, chosen: bool| async move {
        let mut seqs = Vec::new();
        for _ in 0..20 {
            let batch = (0..50)
                .map(|n| match chosen && n % 2 == 0 {
                    true => event_with_chosen_id("sensor.read", "1"),
                    false => event("sensor.read", "1"),
                })
                .collect();
            for outcome in engine.publish(batch).await.expect("publish") {
                assert!(!outcome.duplicate);
                seqs.push(outcome.seq.expect("stored"));
            }
        }
        seqs
    };
    let (plain, mixed) = tokio::join!(publish(one.clone(), false), publish(two.clone(), true));
    for seqs in [&plain, &mixed] {
        assert!(
            seqs.windows(2).all(|pair| pair[0] < pair[1]),
            "in batch order"
        );
    }
    let mut all: Vec<u64> = plain.into_iter().chain(mixed).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=2000).collect::<Vec<u64>>(), "every seq once");
    let sensor = two
        .streams()
        .await
        .into_iter()
        .find(|stream| stream.name == "sensor")
        .expect("the stream");
    assert_eq!(
        (sensor.last_seq, sensor.events, sensor.published),
        (2000, 2000, 2000)
    );
    // The time index covers every call: from a time before them all, everything.
    let mut from_time = one
        .subscribe(Pattern::new("sensor.>").unwrap(), StartAt::Time(started))
        .await
        .unwrap();
    let first = tokio::time::timeout(WAIT, from_time.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(first.seq, 1);
    one.close().await.unwrap();
    two.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_subscriber_sees_what_another_engine_publishes_even_on_new_streams() {
    let Some(url) = reachable_redis() else { return };
    let (prefix, _cleanup) = isolated_prefix(&url);
    let (one, two) = (engine(&url, &prefix).await, engine(&url, &prefix).await);
    let mut watching = two
        .subscribe(Pattern::new("*.created").unwrap(), StartAt::Latest)
        .await
        .unwrap();
    // `invoice` does not exist yet: the watcher learns of it from Redis.
    one.publish(vec![
        event("invoice.created", "1"),
        event("user.created", "2"),
    ])
    .await
    .unwrap();
    let mut got = BTreeSet::new();
    for _ in 0..2 {
        let received = tokio::time::timeout(WAIT, watching.recv())
            .await
            .expect("in time")
            .expect("open");
        got.insert(received.event.event_type.to_string());
    }
    assert_eq!(
        got,
        BTreeSet::from(["invoice.created".to_owned(), "user.created".to_owned()])
    );
    one.close().await.unwrap();
    two.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_crashed_engine_held_is_delivered_again_elsewhere() {
    let Some(url) = reachable_redis() else { return };
    let (prefix, _cleanup) = isolated_prefix(&url);
    let (doomed, survivor) = (engine(&url, &prefix).await, engine(&url, &prefix).await);
    publish_numbered(&survivor, "job.queued", 30).await;
    let (holder, deliveries) = worker_holding(&doomed, 10).await;
    let held: BTreeSet<u64> = deliveries
        .iter()
        .map(|delivery| delivery.event.seq)
        .collect();
    // The crash: nothing is given back, the heartbeat stops.
    doomed.abandon();
    drop(holder);
    let mut member = survivor
        .join_group(spec("workers", "job.*"), Some(30))
        .await
        .unwrap();
    let mut acked = BTreeSet::new();
    while acked.len() < 30 {
        let delivery = next(&mut member).await;
        let expected = if held.contains(&delivery.event.seq) {
            2
        } else {
            1
        };
        assert_eq!(
            delivery.attempt, expected,
            "seq {}: a delivery lost with its process counts as an attempt",
            delivery.event.seq
        );
        member.ack_sync(delivery.delivery_id).await.unwrap();
        acked.insert(delivery.event.seq);
    }
    assert_eq!(acked, (1..=30).collect::<BTreeSet<u64>>());
    survivor.close().await.unwrap();
}

/// A process that stalls past its TTL is taken for dead: the others recover its members'
/// deliveries. When it wakes up, its member's acks of what went elsewhere must be refused, not
/// recorded (the new owner has the events now, and acks them itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_from_a_process_taken_for_dead_are_refused_for_what_was_recovered() {
    let Some(url) = reachable_redis() else { return };
    let (prefix, _cleanup) = isolated_prefix(&url);
    let stalled = engine(&url, &prefix).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let heartbeats: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:proc:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let [stalled_heartbeat] = &heartbeats[..] else {
        panic!("one heartbeat expected, found {heartbeats:?}")
    };
    let survivor = engine(&url, &prefix).await;
    publish_numbered(&survivor, "job.queued", 5).await;
    let (late, stale) = worker_holding(&stalled, 5).await;
    let mut member = survivor
        .join_group(spec("workers", "job.*"), Some(5))
        .await
        .unwrap();
    // The stall, as the others see it: the heartbeat deleted faster than it is renewed, until
    // the survivor's sweep has taken the stalled process for dead.
    let deadline = tokio::time::Instant::now() + WAIT;
    let first = loop {
        let _: i64 = redis::cmd("DEL")
            .arg(stalled_heartbeat)
            .query_async(&mut redis)
            .await
            .unwrap();
        if let Ok(delivery) = tokio::time::timeout(Duration::from_millis(5), member.recv()).await {
            break delivery.expect("open");
        }
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
    };
    let mut recovered = BTreeSet::from([first.event.seq]);
    member.ack_sync(first.delivery_id).await.unwrap();
    while recovered.len() < 5 {
        let delivery = next(&mut member).await;
        assert_eq!(
            delivery.attempt, 2,
            "the lost delivery counts as an attempt"
        );
        member.ack_sync(delivery.delivery_id).await.unwrap();
        recovered.insert(delivery.event.seq);
    }
    assert_eq!(recovered, (1..=5).collect::<BTreeSet<u64>>());
    for delivery in stale {
        assert!(
            late.ack_sync(delivery.delivery_id).await.is_err(),
            "seq {} went to another process, yet its old ack was recorded",
            delivery.event.seq
        );
    }
    let stats = survivor.groups().await;
    let workers = stats.iter().find(|stats| stats.name == "workers").unwrap();
    assert_eq!(workers.acked, 5, "each event acked once");
    stalled.close().await.unwrap();
    survivor.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_events_reach_subscribers_of_every_engine() {
    let Some(url) = reachable_redis() else { return };
    let (prefix, _cleanup) = isolated_prefix(&url);
    let mut config = RedisConfig::new(url.as_str());
    config.key_prefix = prefix.clone();
    config.ephemeral = vec![Pattern::new("typing.>").unwrap()];
    let one = RedisEngine::open(config.clone()).await.unwrap();
    let two = RedisEngine::open(config).await.unwrap();
    let mut here = one
        .subscribe(Pattern::new("typing.>").unwrap(), StartAt::Latest)
        .await
        .unwrap();
    let mut there = two
        .subscribe(Pattern::new("typing.>").unwrap(), StartAt::Latest)
        .await
        .unwrap();
    let outcomes = one
        .publish(vec![event("typing.started", r#"{"user":"u1"}"#)])
        .await
        .unwrap();
    assert_eq!(outcomes[0].seq, None, "never stored");
    for subscription in [&mut here, &mut there] {
        let received = tokio::time::timeout(WAIT, subscription.recv())
            .await
            .expect("in time")
            .expect("open");
        assert_eq!(received.event.data.get(), r#"{"user":"u1"}"#);
    }
    // Once each: the publishing engine does not take its own relay for another event.
    one.publish(vec![event("typing.stopped", "null")])
        .await
        .unwrap();
    let next = tokio::time::timeout(WAIT, here.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.event.event_type.as_str(), "typing.stopped");
    one.close().await.unwrap();
    two.close().await.unwrap();
}

/// A relay (the server's real-time sends between processes): what one engine sends reaches
/// every other engine's inbox once, in order, and never its own; reports are read by the
/// others and withdrawn on request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_reaches_every_other_engine_once_in_order() {
    let Some(url) = reachable_redis() else { return };
    let (prefix, _cleanup) = isolated_prefix(&url);
    let engines = [
        engine(&url, &prefix).await,
        engine(&url, &prefix).await,
        engine(&url, &prefix).await,
    ];
    let mut relays = Vec::new();
    for engine in &engines {
        relays.push(engine.relay("realtime", 1024).await.unwrap());
    }
    let total = 500usize;
    for n in 0..total {
        assert!(relays[0].0.send(bytes::Bytes::from(format!("m{n}"))));
    }
    for (relay, inbox) in &mut relays[1..] {
        for n in 0..total {
            let message = tokio::time::timeout(WAIT, inbox.recv())
                .await
                .expect("in time")
                .expect("open");
            assert_eq!(&message[..], format!("m{n}").as_bytes());
        }
        assert_eq!(relay.dropped(), 0);
    }
    // The sender's own inbox stays empty: the next thing it receives is another's message.
    assert!(relays[1].0.send(bytes::Bytes::from_static(b"from two")));
    let received = tokio::time::timeout(WAIT, relays[0].1.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&received[..], b"from two");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), relays[1].1.recv())
            .await
            .is_err(),
        "an engine never receives its own message"
    );

    relays[1].0.report(b"two").await.unwrap();
    relays[2].0.report(b"three").await.unwrap();
    let mut reports: Vec<Vec<u8>> = relays[0]
        .0
        .reports()
        .await
        .unwrap()
        .into_iter()
        .map(|report| report.to_vec())
        .collect();
    reports.sort();
    assert_eq!(reports, [b"three".to_vec(), b"two".to_vec()]);
    relays[2].0.withdraw_report().await.unwrap();
    let reports = relays[0].0.reports().await.unwrap();
    assert_eq!(reports, [bytes::Bytes::from_static(b"two")]);
    assert!(relays[1].0.report_interval() <= PROCESS_TTL / 3);

    // Closing the engine ends its inbox (after what it had received).
    let pending = tokio::time::timeout(WAIT, relays[2].1.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&pending[..], b"from two");
    engines[2].close().await.unwrap();
    assert!(
        tokio::time::timeout(WAIT, relays[2].1.recv())
            .await
            .unwrap()
            .is_none()
    );
    assert!(engines[0].relay("not a token", 8).await.is_err());
    for engine in &engines[..2] {
        engine.close().await.unwrap();
    }
}

/// On a Cluster every node serves pub/sub (`PUBLISH` reaches them all): an engine whose first
/// seed node is down subscribes its relay on the next one, and relays to and from the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_relay_subscribes_past_a_seed_node_that_is_down() {
    let Some(cluster) = tokio::task::spawn_blocking(redis_support::Cluster::start)
        .await
        .unwrap()
    else {
        return;
    };
    let prefix = redis_support::unique_prefix();
    let open = |urls: Vec<String>| {
        let mut config = RedisConfig::new(urls[0].clone());
        config.urls = urls;
        config.cluster = true;
        config.key_prefix = prefix.clone();
        config.process_ttl = PROCESS_TTL;
        RedisEngine::open(config)
    };
    // A loopback port nobody listens on: connections to it are refused.
    let down = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("redis://{}", listener.local_addr().unwrap())
    };
    let healthy = open(cluster.urls.clone()).await.unwrap();
    let seeds = std::iter::once(down).chain(cluster.urls.clone()).collect();
    let degraded = open(seeds)
        .await
        .expect("open with its first seed node down");
    let (healthy_relay, mut healthy_inbox) = healthy.relay("realtime", 64).await.unwrap();
    let (degraded_relay, mut degraded_inbox) = degraded.relay("realtime", 64).await.unwrap();

    assert!(healthy_relay.send(bytes::Bytes::from_static(b"to the degraded one")));
    let received = tokio::time::timeout(WAIT, degraded_inbox.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(&received[..], b"to the degraded one");
    assert!(degraded_relay.send(bytes::Bytes::from_static(b"from the degraded one")));
    let received = tokio::time::timeout(WAIT, healthy_inbox.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(&received[..], b"from the degraded one");
    degraded.close().await.unwrap();
    healthy.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_deleted_on_one_engine_ends_its_members_on_another() {
    let Some(url) = reachable_redis() else { return };
    let (prefix, _cleanup) = isolated_prefix(&url);
    let (one, two) = (engine(&url, &prefix).await, engine(&url, &prefix).await);
    let mut member = two
        .join_group(spec("reports", "report.*"), None)
        .await
        .unwrap();
    one.delete_group("reports").await.unwrap();
    let closed = tokio::time::timeout(WAIT, member.recv())
        .await
        .expect("told in time");
    assert!(
        matches!(closed, Err(herald_engine::Closed::GroupDeleted)),
        "{closed:?}"
    );
    // The name can be used afresh, from either engine.
    let mut again = two
        .join_group(spec("reports", "report.>"), None)
        .await
        .unwrap();
    one.publish(vec![event("report.daily", "1")]).await.unwrap();
    assert_eq!(next(&mut again).await.attempt, 1);
    one.close().await.unwrap();
    two.close().await.unwrap();
}
