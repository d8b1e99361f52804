//! The conformance suite: behaviour every engine must show, written against [`Engine`] alone so
//! that the embedded, Redis and NATS engines run it unchanged.
//!
//! An engine's test file instantiates it with [`conformance_tests!`](crate::conformance_tests),
//! giving an async factory of fresh [`Fixture`]s. The fixture's engine must be configured with
//! `presence.>` as ephemeral subjects and report its live buffer size.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test suite: failing loudly is its job

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use herald_core::{Event, EventId, Pattern, StoredEvent, Subject};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::api::{Closed, Engine, EngineError, LiveSubscription, StartAt};

/// A fresh engine for one test, and whatever must live as long as it (a temporary directory).
pub struct Fixture<E> {
    pub engine: E,
    /// The engine's `live_buffer_events`.
    pub live_buffer_events: usize,
    pub keep_alive: Box<dyn std::any::Any + Send>,
}

impl<E> std::fmt::Debug for Fixture<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("live_buffer_events", &self.live_buffer_events)
            .finish_non_exhaustive()
    }
}

/// The subjects the fixture's engine must treat as ephemeral.
pub const EPHEMERAL_PATTERN: &str = "presence.>";

/// Generates one `#[tokio::test]` per conformance test, each on a fresh fixture from `$make`
/// (an `async fn() -> Fixture<E>` or a closure returning such a future).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            publish_assigns_gapless_seqs_per_stream,
            duplicate_ids_are_stored_once,
            concurrent_duplicates_are_stored_once,
            live_latest_sees_new_events_in_order_per_stream,
            live_earliest_replays_then_follows_without_gap_or_repeat,
            live_from_seq_and_from_time,
            patterns_span_streams_including_new_ones,
            slow_live_subscriber_is_dropped_and_publishers_go_on,
            ephemeral_subjects_are_delivered_not_stored,
            read_stream_replays_a_range,
            dropping_a_subscription_detaches_it
        );
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let fixture = ($make)().await;
                $crate::conformance::$name(&fixture).await;
            }
        )*
    };
}

/// An event of `event_type` carrying `data`, with a fresh UUIDv7 id.
pub fn event(event_type: &str, data: &str) -> Event {
    let now = OffsetDateTime::now_utc();
    let mut event = Event::new(
        EventId::new_v7(now),
        Subject::new(event_type).expect("valid test subject"),
        now,
    );
    event.data = RawValue::from_string(data.to_owned()).expect("valid test JSON");
    event
}

fn pattern(text: &str) -> Pattern {
    Pattern::new(text).expect("valid test pattern")
}

/// Receives `count` events, failing the test if they do not come within a generous bound
/// (this catches a hang; it asserts nothing about speed).
async fn receive(subscription: &mut LiveSubscription, count: usize) -> Vec<Arc<StoredEvent>> {
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        match tokio::time::timeout(Duration::from_secs(30), subscription.recv()).await {
            Ok(Ok(event)) => events.push(event),
            Ok(Err(closed)) => panic!(
                "subscription closed after {} events: {closed}",
                events.len()
            ),
            Err(_) => panic!("only {} of {count} events arrived", events.len()),
        }
    }
    events
}

/// Asserts that nothing more is buffered for the subscriber, after a publish to a sentinel
/// subject it also matches has come through.
async fn assert_nothing_else<E: Engine>(
    engine: &E,
    subscription: &mut LiveSubscription,
    sentinel: &str,
) {
    engine
        .publish(vec![event(sentinel, "null")])
        .await
        .expect("sentinel publish");
    let next = receive(subscription, 1).await;
    assert_eq!(
        next[0].event.event_type.as_str(),
        sentinel,
        "an unexpected event came first"
    );
}

pub async fn publish_assigns_gapless_seqs_per_stream<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    let batch = vec![
        event("user.created", r#"{"id":1}"#),
        event("order.created", r#"{"id":2}"#),
        event("user.updated", r#"{"id":3}"#),
    ];
    let ids: Vec<EventId> = batch.iter().map(|event| event.id.clone()).collect();
    let outcomes = engine.publish(batch).await.expect("publish");
    let got: Vec<(Option<&str>, Option<u64>, bool)> = outcomes
        .iter()
        .map(|outcome| (outcome.stream.as_deref(), outcome.seq, outcome.duplicate))
        .collect();
    assert_eq!(
        got,
        [
            (Some("user"), Some(1), false),
            (Some("order"), Some(1), false),
            (Some("user"), Some(2), false)
        ]
    );
    assert_eq!(
        outcomes
            .iter()
            .map(|outcome| outcome.id.clone())
            .collect::<Vec<_>>(),
        ids
    );
    let more = engine
        .publish(vec![event("user.deleted", "{}")])
        .await
        .expect("publish");
    assert_eq!(more[0].seq, Some(3));
    assert!(matches!(
        engine.publish(vec![]).await,
        Err(EngineError::EmptyBatch)
    ));

    let streams = engine.streams().await;
    let user = streams
        .iter()
        .find(|stream| stream.name == "user")
        .expect("user stream");
    assert_eq!((user.first_seq, user.last_seq, user.events), (1, 3, 3));
}

pub async fn duplicate_ids_are_stored_once<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    let original = event("order.placed", r#"{"n":1}"#);
    let first = engine
        .publish(vec![original.clone()])
        .await
        .expect("publish");
    assert!(!first[0].duplicate);
    let again = engine
        .publish(vec![original.clone()])
        .await
        .expect("publish");
    assert_eq!((again[0].seq, again[0].duplicate), (first[0].seq, true));
    // Within one batch: the repeat is a duplicate of the first occurrence.
    let fresh = event("order.placed", r#"{"n":2}"#);
    let batch = engine
        .publish(vec![
            fresh.clone(),
            event("order.placed", "{}"),
            fresh.clone(),
        ])
        .await
        .expect("publish");
    assert!(!batch[0].duplicate && !batch[1].duplicate && batch[2].duplicate);
    assert_eq!(batch[2].seq, batch[0].seq);
    let order = engine
        .streams()
        .await
        .into_iter()
        .find(|stream| stream.name == "order");
    assert_eq!(
        order.expect("order stream").events,
        3,
        "duplicates are not stored"
    );
}

pub async fn concurrent_duplicates_are_stored_once<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    for round in 0..20 {
        let shared = event("payment.captured", &format!(r#"{{"round":{round}}}"#));
        let publishes = (0..8).map(|_| engine.publish(vec![shared.clone()]));
        let outcomes: Vec<_> = join_all(publishes)
            .await
            .into_iter()
            .map(|outcome| outcome.expect("publish"))
            .collect();
        let seqs: HashSet<Option<u64>> = outcomes.iter().map(|outcome| outcome[0].seq).collect();
        assert_eq!(
            seqs.len(),
            1,
            "round {round}: every publish names the same seq"
        );
        let stored = outcomes
            .iter()
            .filter(|outcome| !outcome[0].duplicate)
            .count();
        assert_eq!(stored, 1, "round {round}: exactly one publish stored it");
    }
    let payment = engine
        .streams()
        .await
        .into_iter()
        .find(|stream| stream.name == "payment");
    assert_eq!(payment.expect("payment stream").events, 20);
}

pub async fn live_latest_sees_new_events_in_order_per_stream<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    engine
        .publish(vec![event("metric.cpu", "0")])
        .await
        .expect("publish");
    let mut subscription = engine
        .subscribe(pattern("metric.>"), StartAt::Latest)
        .await
        .expect("subscribe");
    // Four concurrent publishers, two streams' worth of subjects through one pattern.
    let per_publisher = 100;
    let publishers = (0..4).map(|publisher| async move {
        for n in 0..per_publisher {
            let subject = if n % 2 == 0 {
                "metric.cpu"
            } else {
                "metric.mem"
            };
            engine
                .publish(vec![event(subject, &format!("{publisher}"))])
                .await
                .expect("publish");
        }
    });
    let (received, _) = tokio::join!(
        receive(&mut subscription, 4 * per_publisher),
        join_all(publishers)
    );
    let seqs: Vec<u64> = received.iter().map(|event| event.seq).collect();
    assert_eq!(
        seqs,
        (2..2 + 4 * per_publisher as u64).collect::<Vec<_>>(),
        "in seq order, from the first new event"
    );
    assert_nothing_else(engine, &mut subscription, "metric.sentinel").await;
}

pub async fn live_earliest_replays_then_follows_without_gap_or_repeat<E: Engine>(
    fixture: &Fixture<E>,
) {
    let engine = &fixture.engine;
    let history = 3 * fixture.live_buffer_events + 50;
    for chunk in 0..history / 100 + 1 {
        let batch = (0..100)
            .map(|n| event("audit.entry", &format!("{}", chunk * 100 + n)))
            .collect();
        engine.publish(batch).await.expect("publish");
    }
    let stored = (history / 100 + 1) * 100;
    let mut subscription = engine
        .subscribe(pattern("audit.entry"), StartAt::Earliest)
        .await
        .expect("subscribe");
    // Publishing goes on while the subscriber catches up.
    let follow = 500;
    let publisher = async {
        for n in 0..follow {
            engine
                .publish(vec![event("audit.entry", &format!("{}", stored + n))])
                .await
                .expect("publish");
        }
    };
    let (received, ()) = tokio::join!(receive(&mut subscription, stored + follow), publisher);
    for (at, event) in received.iter().enumerate() {
        assert_eq!(event.seq, at as u64 + 1, "seq at position {at}");
        assert_eq!(
            event.event.data.get(),
            (at).to_string(),
            "payload at position {at}"
        );
    }
    assert_nothing_else(engine, &mut subscription, "audit.entry").await;
}

pub async fn live_from_seq_and_from_time<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    let batch = (1..=10)
        .map(|n| event("sensor.reading", &n.to_string()))
        .collect();
    engine.publish(batch).await.expect("publish");
    let mut from_seq = engine
        .subscribe(pattern("sensor.*"), StartAt::Seq(7))
        .await
        .expect("subscribe");
    let got: Vec<u64> = receive(&mut from_seq, 4)
        .await
        .iter()
        .map(|event| event.seq)
        .collect();
    assert_eq!(got, [7, 8, 9, 10]);

    // Time: the wall clock separates the two batches.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let boundary = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let later = (11..=13)
        .map(|n| event("sensor.reading", &n.to_string()))
        .collect();
    engine.publish(later).await.expect("publish");
    let mut from_time = engine
        .subscribe(pattern("sensor.>"), StartAt::Time(boundary))
        .await
        .expect("subscribe");
    let got: Vec<u64> = receive(&mut from_time, 3)
        .await
        .iter()
        .map(|event| event.seq)
        .collect();
    assert_eq!(got, [11, 12, 13]);
    // Both go on live.
    engine
        .publish(vec![event("sensor.reading", "14")])
        .await
        .expect("publish");
    assert_eq!(
        receive(&mut from_seq, 4)
            .await
            .last()
            .map(|event| event.seq),
        Some(14)
    );
    assert_eq!(receive(&mut from_time, 1).await[0].seq, 14);
}

pub async fn patterns_span_streams_including_new_ones<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    engine
        .publish(vec![event("user.created", "1")])
        .await
        .expect("publish");
    let mut created = engine
        .subscribe(pattern("*.created"), StartAt::Latest)
        .await
        .expect("subscribe");
    let mut everything = engine
        .subscribe(pattern(">"), StartAt::Latest)
        .await
        .expect("subscribe");
    let batch = vec![
        event("user.created", "2"),
        event("invoice.created", "3"), // a stream that does not exist yet
        event("user.updated", "4"),
        event("invoice.line.created", "5"), // three tokens: not `*.created`
    ];
    engine.publish(batch).await.expect("publish");
    let mut got: Vec<String> = receive(&mut created, 2)
        .await
        .iter()
        .map(|event| event.event.event_type.to_string())
        .collect();
    got.sort();
    assert_eq!(got, ["invoice.created", "user.created"]);
    assert_nothing_else(engine, &mut created, "zeta.created").await;
    let mut per_stream: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in receive(&mut everything, 4).await {
        per_stream
            .entry(event.stream.clone())
            .or_default()
            .push(event.seq);
    }
    assert_eq!(per_stream.get("user"), Some(&vec![2, 3]));
    assert_eq!(per_stream.get("invoice"), Some(&vec![1, 2]));
}

pub async fn slow_live_subscriber_is_dropped_and_publishers_go_on<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    let mut slow = engine
        .subscribe(pattern("tick.>"), StartAt::Latest)
        .await
        .expect("subscribe");
    let mut fast = engine
        .subscribe(pattern("tick.>"), StartAt::Latest)
        .await
        .expect("subscribe");
    let total = 2 * fixture.live_buffer_events + 10;
    let consumer = async {
        let events = receive(&mut fast, total).await;
        assert_eq!(
            events.len(),
            total,
            "a subscriber that keeps up loses nothing"
        );
    };
    let publisher = async {
        for chunk in 0..total / 10 + 1 {
            let batch = (0..10)
                .map(|n| event("tick.second", &format!("{}", chunk * 10 + n)))
                .collect();
            engine
                .publish(batch)
                .await
                .expect("publishing never waits for a slow subscriber");
        }
    };
    tokio::join!(consumer, publisher);
    let mut buffered = 0;
    let reason = loop {
        match slow.recv().await {
            Ok(_) => buffered += 1,
            Err(reason) => break reason,
        }
    };
    assert_eq!(
        reason,
        Closed::SlowConsumer {
            buffer_events: fixture.live_buffer_events
        }
    );
    assert!(
        buffered <= fixture.live_buffer_events,
        "{buffered} buffered"
    );
    let tick = engine
        .streams()
        .await
        .into_iter()
        .find(|stream| stream.name == "tick");
    assert!(tick.expect("tick stream").slow_consumers_dropped >= 1);
}

pub async fn ephemeral_subjects_are_delivered_not_stored<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    let mut subscription = engine
        .subscribe(pattern("presence.>"), StartAt::Latest)
        .await
        .expect("subscribe");
    let outcomes = engine
        .publish(vec![event("presence.typing", r#"{"user":"u1"}"#)])
        .await
        .expect("publish");
    assert_eq!(
        (outcomes[0].stream.as_deref(), outcomes[0].seq),
        (None, None)
    );
    let received = receive(&mut subscription, 1).await;
    assert_eq!(received[0].event.data.get(), r#"{"user":"u1"}"#);
    assert!(
        engine
            .streams()
            .await
            .iter()
            .all(|stream| stream.name != "presence")
    );
    let _ = EPHEMERAL_PATTERN;
}

pub async fn read_stream_replays_a_range<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    let batch = (1..=50)
        .map(|n| event("ledger.entry", &n.to_string()))
        .collect();
    engine.publish(batch).await.expect("publish");
    let range = engine.read_stream("ledger", 10, 5).await.expect("read");
    let got: Vec<(u64, String)> = range
        .iter()
        .map(|event| (event.seq, event.event.data.get().to_owned()))
        .collect();
    assert_eq!(
        got,
        (10..15)
            .map(|seq| (seq, seq.to_string()))
            .collect::<Vec<_>>()
    );
    assert!(
        engine
            .read_stream("ledger", 51, 5)
            .await
            .expect("read")
            .is_empty()
    );
    assert!(matches!(
        engine.read_stream("nowhere", 1, 5).await,
        Err(EngineError::UnknownStream(_))
    ));
}

pub async fn dropping_a_subscription_detaches_it<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    engine
        .publish(vec![event("job.queued", "1")])
        .await
        .expect("publish");
    let subscription = engine
        .subscribe(pattern("job.*"), StartAt::Latest)
        .await
        .expect("subscribe");
    let count = |streams: Vec<crate::api::StreamStats>| {
        streams
            .into_iter()
            .find(|stream| stream.name == "job")
            .map(|stream| stream.live_subscribers)
    };
    assert_eq!(count(engine.streams().await), Some(1));
    drop(subscription);
    assert_eq!(count(engine.streams().await), Some(0));
}
