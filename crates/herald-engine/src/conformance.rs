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
use herald_core::{Event, EventId, IdOrigin, Pattern, StoredEvent, Subject};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::api::{
    Closed, DeadLetter, Delivery, Engine, EngineError, GroupMember, GroupPolicy, GroupSpec,
    LiveSubscription, StartAt, VerbError,
};

/// A fresh engine for one test, and whatever must live as long as it (a temporary directory).
pub struct Fixture<E> {
    pub engine: E,
    /// The engine's `live_buffer_events`.
    pub live_buffer_events: usize,
    /// The clock the group tests run on.
    pub timing: Timing,
    pub keep_alive: Box<dyn std::any::Any + Send>,
}

/// How the group tests see time. An engine whose timers run on tokio's clock runs them on the
/// paused clock, where every wait is exact and costs nothing ([`Timing::PAUSED`]). An engine
/// whose timers live outside tokio (Redis: due times are Redis's clock, replies come over the
/// network) cannot: the paused clock jumps ahead whenever the runtime waits on a socket. It runs
/// them on the real clock with every duration scaled down alike — the policy's and the tests'
/// own waits — so each test asserts the same things, and with `early`/`late` allowing for the
/// time a reply takes to come back.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Multiplies every duration of the group tests.
    pub scale: f64,
    /// How much sooner than its bound a retry may be seen: the test starts its watch once the
    /// nack's reply is back, which on a real clock is after the engine started the backoff.
    pub early: Duration,
    /// How much later than its bound a retry or redelivery may be seen.
    pub late: Duration,
}

impl Timing {
    /// Tokio's paused clock: durations as written, timers exact.
    pub const PAUSED: Timing = Timing {
        scale: 1.0,
        early: Duration::ZERO,
        late: Duration::from_millis(5),
    };

    /// A duration of the tests, scaled.
    pub fn of(&self, duration: Duration) -> Duration {
        duration.mul_f64(self.scale)
    }

    /// A policy with its durations scaled.
    pub fn policy(&self, mut policy: GroupPolicy) -> GroupPolicy {
        policy.ack_timeout = self.of(policy.ack_timeout);
        policy.backoff.initial = self.of(policy.backoff.initial);
        policy.backoff.max = self.of(policy.backoff.max);
        policy
    }
}

/// What an engine's fixture factory gives: a fixture, or (`None`) a reason to skip the test
/// already told loudly (the engine's server cannot be reached and none is required).
pub trait IntoFixture<E> {
    fn into_fixture(self) -> Option<Fixture<E>>;
}

impl<E> IntoFixture<E> for Fixture<E> {
    fn into_fixture(self) -> Option<Fixture<E>> {
        Some(self)
    }
}

impl<E> IntoFixture<E> for Option<Fixture<E>> {
    fn into_fixture(self) -> Option<Fixture<E>> {
        self
    }
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

/// Generates one `#[tokio::test]` per conformance test, each on a fresh fixture. `$make` gives
/// fixtures for tests on the real clock; `$make_paused` for the group tests, which run on tokio's
/// paused clock (so its engine must not wait on anything outside tokio, such as file I/O).
/// With a third argument `real_clock`, the group tests run on the real clock instead, with the
/// fixture's [`Timing`] (for engines whose timers are outside tokio). A factory may return
/// `Option<Fixture>`: `None` skips the test (see [`IntoFixture`]).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr, $make_groups:expr, real_clock) => {
        $crate::conformance_tests!(@groups each $make_groups);
        $crate::conformance_tests!(@streams $make);
    };
    ($make:expr, $make_paused:expr) => {
        $crate::conformance_tests!(@groups paused $make_paused);
        $crate::conformance_tests!(@streams $make);
    };
    (@groups $mode:ident $make:expr) => {
        $crate::conformance_tests!(@ $mode $make;
            group_members_share_the_work_and_every_event_is_acked_once,
            every_group_gets_every_event,
            a_one_member_group_sees_each_stream_in_order,
            an_event_is_in_flight_to_at_most_one_member_at_a_time,
            a_member_never_holds_more_than_max_in_flight,
            redelivery_follows_the_backoff_policy_then_dead_letters,
            an_unacked_delivery_is_retried_after_the_ack_timeout_unless_extended,
            reject_dead_letters_at_once_and_redrive_delivers_again,
            a_member_that_leaves_has_its_deliveries_redelivered_at_once,
            acks_sent_just_before_leaving_count,
            deliveries_taken_and_acked_in_bursts_are_each_acked_once,
            nothing_is_lost_when_members_crash_mid_flight,
            a_group_pattern_spans_streams,
            a_group_reads_past_events_it_does_not_match,
            a_group_with_little_credit_skips_unmatched_new_events,
            a_group_from_latest_gets_all_of_streams_created_after_it,
            a_group_keeps_its_pattern,
            a_member_cannot_act_on_another_members_delivery,
            groups_are_created_and_deleted_through_the_api,
            verbs_on_unknown_deliveries_are_refused
        );
    };
    (@streams $make:expr) => {
        $crate::conformance_tests!(@each $make;
            publish_assigns_gapless_seqs_per_stream,
            calls_in_flight_keep_their_order,
            duplicate_ids_are_stored_once,
            concurrent_duplicates_are_stored_once,
            generated_ids_are_deduped_when_sent_again,
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
    (@paused $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(start_paused = true)]
            async fn $name() {
                let Some(fixture) =
                    $crate::conformance::IntoFixture::into_fixture(($make)().await)
                else {
                    return;
                };
                $crate::conformance::$name(&fixture).await;
            }
        )*
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(fixture) =
                    $crate::conformance::IntoFixture::into_fixture(($make)().await)
                else {
                    return;
                };
                $crate::conformance::$name(&fixture).await;
            }
        )*
    };
}

/// An event of `event_type` carrying `data` as a publish without an id decodes: a fresh
/// UUIDv7 that Herald generated ([`IdOrigin::Generated`]: recorded for dedupe, not looked up).
pub fn event(event_type: &str, data: &str) -> Event {
    let mut event = event_with_chosen_id(event_type, data);
    event.id_origin = IdOrigin::Generated;
    event
}

/// An event of `event_type` carrying `data` whose publisher chose its id (a fresh UUIDv7, as
/// the clients make one so that their resends are recognised): publish dedupe applies.
pub fn event_with_chosen_id(event_type: &str, data: &str) -> Event {
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
    // Runs of one type, streams interleaved: each event lands in its own type's stream.
    let batch = vec![
        event("user.created", r#"{"id":1}"#),
        event("user.created", r#"{"id":2}"#),
        event("order.created", r#"{"id":3}"#),
        event("user.updated", r#"{"id":4}"#),
    ];
    let data: Vec<String> = batch
        .iter()
        .map(|event| event.data.get().to_owned())
        .collect();
    let outcomes = engine.publish(batch).await.expect("publish");
    let got: Vec<(Option<&str>, Option<u64>, bool)> = outcomes
        .iter()
        .map(|outcome| (outcome.stream.as_deref(), outcome.seq, outcome.duplicate))
        .collect();
    assert_eq!(
        got,
        [
            (Some("user"), Some(1), false),
            (Some("user"), Some(2), false),
            (Some("order"), Some(1), false),
            (Some("user"), Some(3), false)
        ]
    );
    // Each outcome names where its event is stored, and the id it is stored under (generated
    // ids are the engine's to make).
    for (outcome, data) in outcomes.iter().zip(&data) {
        let stream = outcome.stream.as_deref().expect("a stream");
        let seq = outcome.seq.expect("a seq");
        let stored = engine.read_stream(stream, seq, 1).await.expect("read");
        assert_eq!(stored[0].event.id, outcome.id);
        assert_eq!(stored[0].event.data.get(), data);
    }
    let more = engine
        .publish(vec![event("user.deleted", "{}")])
        .await
        .expect("publish");
    assert_eq!(more[0].seq, Some(4));
    assert!(matches!(
        engine.publish(vec![]).await,
        Err(EngineError::EmptyBatch)
    ));

    let streams = engine.streams().await;
    let user = streams
        .iter()
        .find(|stream| stream.name == "user")
        .expect("user stream");
    assert_eq!((user.first_seq, user.last_seq, user.events), (1, 4, 4));
}

/// Calls made one after the other, up to [`Engine::ordered_publishes_in_flight`] of them in
/// flight at once (as a `/v1/ws` connection makes them), store each stream's events in call
/// order: a pipelining client's frames keep their order. Calls span two streams, and some carry
/// ids their publisher chose (an engine may store those another way).
pub async fn calls_in_flight_keep_their_order<E: Engine>(fixture: &Fixture<E>) {
    use futures::StreamExt;
    let engine = &fixture.engine;
    let in_flight_max = engine.ordered_publishes_in_flight().max(1);
    let calls = 8;
    let mut in_flight = futures::stream::FuturesOrdered::new();
    let mut outcomes = Vec::new();
    for call in 0..calls {
        // Large enough that a call cannot be handed over in one go.
        let batch: Vec<Event> = (0..9_000)
            .map(|i| {
                let event_type = if i % 7 == 0 {
                    "payment.made"
                } else {
                    "order.placed"
                };
                let data = format!(r#"{{"call":{call},"i":{i}}}"#);
                if call == 5 && i % 2 == 0 {
                    event_with_chosen_id(event_type, &data)
                } else {
                    event(event_type, &data)
                }
            })
            .collect();
        in_flight.push_back(engine.publish(batch));
        if in_flight.len() == in_flight_max {
            outcomes.extend(in_flight.next().await.expect("a call").expect("publish"));
        }
    }
    while let Some(answered) = in_flight.next().await {
        outcomes.extend(answered.expect("publish"));
    }
    for stream in ["order", "payment"] {
        let seqs: Vec<u64> = outcomes
            .iter()
            .filter(|outcome| outcome.stream.as_deref() == Some(stream))
            .map(|outcome| outcome.seq.expect("a seq"))
            .collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "{stream}: seqs in the order of the calls");
    }
}

pub async fn duplicate_ids_are_stored_once<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    let original = event_with_chosen_id("order.placed", r#"{"n":1}"#);
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
    let fresh = event_with_chosen_id("order.placed", r#"{"n":2}"#);
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
    // Twice in one batch, and stored by an earlier publish: both are duplicates of that one.
    let twice = engine
        .publish(vec![original.clone(), original.clone()])
        .await
        .expect("publish");
    assert_eq!(twice.len(), 2, "one outcome per event");
    for outcome in &twice {
        assert_eq!((outcome.seq, outcome.duplicate), (first[0].seq, true));
    }
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
        let shared = event_with_chosen_id("payment.captured", &format!(r#"{{"round":{round}}}"#));
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

/// Publish dedupe holds for every stored id (PRODUCT.md section 3), whoever chose it: an id
/// Herald generated, sent back by a publisher as its own, is a duplicate. Only chosen ids are
/// looked up on publish (a generated one is new by construction), and a batch mixing both keeps
/// publish order and gapless seqs. A generated id is the one the outcome carries (an engine
/// may make its own, the Redis engine does) and the one stored.
pub async fn generated_ids_are_deduped_when_sent_again<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    let generated = event("invoice.sent", r#"{"n":1}"#);
    let first = engine
        .publish(vec![generated.clone()])
        .await
        .expect("publish");
    assert_eq!((first[0].seq, first[0].duplicate), (Some(1), false));
    // The same id sent back by a publisher that re-sends an id it was given.
    let mut chosen = generated.clone();
    chosen.id = first[0].id.clone();
    chosen.id_origin = IdOrigin::Publisher;
    let second = engine.publish(vec![chosen.clone()]).await.expect("publish");
    assert_eq!(
        (second[0].seq, second[0].duplicate),
        (Some(1), true),
        "a generated id is in the dedupe window"
    );
    // Generated ids stored in one batch (the path without look-ups) are each recorded with
    // their own seq.
    let unchosen: Vec<Event> = (0..3).map(|_| event("invoice.sent", "{}")).collect();
    let stored = engine.publish(unchosen.clone()).await.expect("publish");
    let seqs: Vec<Option<u64>> = stored.iter().map(|outcome| outcome.seq).collect();
    assert_eq!(seqs, [Some(2), Some(3), Some(4)]);
    let resent: Vec<Event> = unchosen
        .iter()
        .zip(&stored)
        .rev()
        .map(|(event, outcome)| {
            let mut event = event.clone();
            event.id = outcome.id.clone();
            event.id_origin = IdOrigin::Publisher;
            event
        })
        .collect();
    let duplicates = engine.publish(resent).await.expect("publish");
    let got: Vec<(Option<u64>, bool)> = duplicates
        .iter()
        .map(|outcome| (outcome.seq, outcome.duplicate))
        .collect();
    assert_eq!(got, [(Some(4), true), (Some(3), true), (Some(2), true)]);
    // One batch mixing both, a chosen id repeated in it and one stored before.
    let repeated = event_with_chosen_id("invoice.sent", r#"{"n":2}"#);
    let mixed = event("invoice.sent", "{}");
    let batch = engine
        .publish(vec![
            event("invoice.sent", "{}"),
            repeated.clone(),
            mixed.clone(),
            repeated.clone(),
            chosen.clone(),
            event("invoice.sent", "{}"),
        ])
        .await
        .expect("publish");
    let got: Vec<(Option<u64>, bool)> = batch
        .iter()
        .map(|outcome| (outcome.seq, outcome.duplicate))
        .collect();
    assert_eq!(
        got,
        [
            (Some(5), false),
            (Some(6), false),
            (Some(7), false),
            (Some(6), true),
            (Some(1), true),
            (Some(8), false)
        ]
    );
    // A generated id stored by the mixed path is recorded too.
    let mut mixed_resent = mixed.clone();
    mixed_resent.id = batch[2].id.clone();
    mixed_resent.id_origin = IdOrigin::Publisher;
    let again = engine.publish(vec![mixed_resent]).await.expect("publish");
    assert_eq!((again[0].seq, again[0].duplicate), (Some(7), true));
    let replay = engine.read_stream("invoice", 1, 100).await.expect("read");
    let seqs: Vec<u64> = replay.iter().map(|stored| stored.seq).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<u64>>());
    assert_eq!(replay[5].event.id, repeated.id);
    let stored_ids: Vec<&str> = replay
        .iter()
        .map(|stored| stored.event.id.as_str())
        .collect();
    let answered_ids: Vec<&str> = [&first[0], &stored[0], &stored[1], &stored[2]]
        .into_iter()
        .chain(&batch[..3])
        .chain([&batch[5]])
        .map(|outcome| outcome.id.as_str())
        .collect();
    assert_eq!(
        stored_ids, answered_ids,
        "each event is stored under the id its outcome gave"
    );
    // Ids a character away from a generated one (another position in its batch, another time
    // or tag, a space where a digit was) are other ids: stored, not taken for the one they
    // resemble.
    let model = stored[1].id.as_str();
    let altered: Vec<Event> = [15, 16, 17, 0, 12, 35, 15]
        .into_iter()
        .enumerate()
        .map(|(n, at)| {
            let mut text = model.to_owned();
            let digit = match &text[at..=at] {
                _ if n == 6 => " ",
                "f" => "e",
                _ => "f",
            };
            text.replace_range(at..=at, digit);
            let mut event = event_with_chosen_id("invoice.sent", "{}");
            event.id = EventId::parse(&text).expect("an id");
            event
        })
        .collect();
    let outcomes = engine.publish(altered).await.expect("publish");
    let got: Vec<(Option<u64>, bool)> = outcomes
        .iter()
        .map(|outcome| (outcome.seq, outcome.duplicate))
        .collect();
    assert_eq!(
        got,
        (9..=15).map(|seq| (Some(seq), false)).collect::<Vec<_>>()
    );
    let invoice = engine
        .streams()
        .await
        .into_iter()
        .find(|stream| stream.name == "invoice")
        .expect("invoice stream");
    assert_eq!((invoice.events, invoice.duplicates), (15, 7));
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
            .entry(event.stream.to_string())
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

// ---- consumer groups (on tokio's paused clock, or scaled on the real one: see `Timing`) ----

/// Longer than any policy delay in these tests; on the paused clock a wait costs nothing.
const GROUP_WAIT: Duration = Duration::from_secs(3600);

/// A group with the default policy, its durations scaled by `timing`.
fn group(timing: &Timing, name: &str, pattern_text: &str) -> GroupSpec {
    GroupSpec {
        name: name.to_owned(),
        pattern: pattern(pattern_text),
        policy: timing.policy(GroupPolicy::default()),
        start: StartAt::Earliest,
    }
}

async fn next_delivery(timing: &Timing, member: &mut GroupMember) -> Delivery {
    let wait = timing.of(GROUP_WAIT);
    match tokio::time::timeout(wait, member.recv()).await {
        Ok(Ok(delivery)) => delivery,
        Ok(Err(closed)) => panic!("membership closed: {closed}"),
        Err(_) => panic!("no delivery within {wait:?}"),
    }
}

/// Whether a delivery arrives within `wait`, scaled (on the paused clock, the wait is
/// virtual).
async fn delivery_within(
    timing: &Timing,
    member: &mut GroupMember,
    wait: Duration,
) -> Option<Delivery> {
    tokio::time::timeout(timing.of(wait), member.recv())
        .await
        .ok()
        .map(|delivery| delivery.expect("open"))
}

async fn publish_numbered<E: Engine>(engine: &E, subject: &str, count: usize) {
    for chunk in 0..count.div_ceil(100) {
        let batch = (chunk * 100..((chunk + 1) * 100).min(count))
            .map(|n| event(subject, &n.to_string()))
            .collect();
        engine.publish(batch).await.expect("publish");
    }
}

async fn dead_letters<E: Engine>(engine: &E, name: &str) -> Vec<DeadLetter> {
    engine.dead_letters(name, 100).await.expect("dead letters")
}

pub async fn group_members_share_the_work_and_every_event_is_acked_once<E: Engine>(
    fixture: &Fixture<E>,
) {
    let engine = &fixture.engine;
    let timing = &fixture.timing;
    publish_numbered(engine, "order.placed", 300).await;
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(
            engine
                .join_group(group(timing, "billing", "order.*"), Some(10))
                .await
                .expect("join"),
        );
    }
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut per_member = [0usize; 3];
    while seen.len() < 300 {
        for (at, member) in members.iter_mut().enumerate() {
            if let Some(delivery) = delivery_within(timing, member, Duration::from_millis(1)).await
            {
                assert_eq!(delivery.attempt, 1);
                *seen.entry(delivery.event.seq).or_default() += 1;
                per_member[at] += 1;
                member.ack(delivery.delivery_id).await.expect("ack");
            }
        }
    }
    assert!(
        seen.values().all(|&times| times == 1),
        "each event delivered once"
    );
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=300).collect::<Vec<_>>()
    );
    assert!(
        per_member.iter().all(|&count| count > 0),
        "the work is shared: {per_member:?}"
    );
    for member in members.iter_mut() {
        assert!(
            delivery_within(timing, member, Duration::from_secs(120))
                .await
                .is_none(),
            "nothing redelivered"
        );
    }
    let stats = engine.groups().await;
    let billing = stats
        .iter()
        .find(|stats| stats.name == "billing")
        .expect("billing stats");
    assert_eq!(
        (
            billing.delivered,
            billing.acked,
            billing.in_flight,
            billing.redelivered,
            billing.lag
        ),
        (300, 300, 0, 0, 0)
    );
}

pub async fn every_group_gets_every_event<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    let timing = &fixture.timing;
    let mut mailer = engine
        .join_group(group(timing, "mailer", "user.*"), None)
        .await
        .expect("join");
    let mut indexer = engine
        .join_group(group(timing, "indexer", "user.>"), None)
        .await
        .expect("join");
    publish_numbered(engine, "user.created", 50).await;
    for member in [&mut mailer, &mut indexer] {
        let mut seqs = Vec::new();
        for _ in 0..50 {
            let delivery = next_delivery(timing, member).await;
            seqs.push(delivery.event.seq);
            member.ack(delivery.delivery_id).await.expect("ack");
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    }
}

pub async fn a_one_member_group_sees_each_stream_in_order<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    let timing = &fixture.timing;
    let mut member = engine
        .join_group(group(timing, "auditor", "ledger.*"), Some(7))
        .await
        .expect("join");
    publish_numbered(engine, "ledger.posted", 250).await;
    for expected in 1..=250u64 {
        let delivery = next_delivery(timing, &mut member).await;
        assert_eq!(delivery.event.seq, expected);
        assert_eq!(delivery.event.event.data.get(), (expected - 1).to_string());
        member.ack(delivery.delivery_id).await.expect("ack");
    }
}

pub async fn a_member_never_holds_more_than_max_in_flight<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    let timing = &fixture.timing;
    publish_numbered(engine, "render.job", 20).await;
    let mut member = engine
        .join_group(group(timing, "renderer", "render.job"), Some(5))
        .await
        .expect("join");
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(next_delivery(timing, &mut member).await);
    }
    assert!(
        delivery_within(timing, &mut member, Duration::from_secs(1))
            .await
            .is_none(),
        "a sixth before any ack"
    );
    member.ack(held[0].delivery_id).await.expect("ack");
    let sixth = next_delivery(timing, &mut member).await;
    assert_eq!(sixth.event.seq, 6);
}

pub async fn redelivery_follows_the_backoff_policy_then_dead_letters<E: Engine>(
    fixture: &Fixture<E>,
) {
    let engine = &fixture.engine;
    let timing = &fixture.timing;
    let spec = group(timing, "scorer", "score.*");
    let policy = spec.policy.clone();
    let mut member = engine.join_group(spec, None).await.expect("join");
    engine
        .publish(vec![event("score.created", r#"{"points":10}"#)])
        .await
        .expect("publish");
    let mut last = tokio::time::Instant::now();
    for attempt in 1..=policy.max_retries + 1 {
        let delivery = next_delivery(timing, &mut member).await;
        assert_eq!(delivery.attempt, attempt);
        let waited = last.elapsed();
        if attempt > 1 {
            let (low, high) = policy.backoff.bounds(attempt - 1);
            assert!(
                waited + timing.early >= low && waited <= high + timing.late,
                "retry {} came after {waited:?}, outside {low:?}..{high:?}",
                attempt - 1
            );
        }
        member
            .nack(
                delivery.delivery_id,
                None,
                Some(format!("failure {attempt}")),
            )
            .await
            .expect("nack");
        last = tokio::time::Instant::now();
    }
    assert!(
        delivery_within(timing, &mut member, Duration::from_secs(600))
            .await
            .is_none(),
        "no fifth delivery"
    );
    let dead = dead_letters(engine, "scorer").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, policy.max_retries + 1);
    assert_eq!(dead[0].last_error.as_deref(), Some("failure 4"));
    assert_eq!(dead[0].group, "scorer");
    assert!(dead[0].dead_at >= dead[0].first_delivered_at);
    let stats = engine.groups().await;
    let scorer = stats
        .iter()
        .find(|stats| stats.name == "scorer")
        .expect("stats");
    assert_eq!(
        (
            scorer.nacked,
            scorer.redelivered,
            scorer.dead_lettered,
            scorer.dead_letters
        ),
        (4, 3, 1, 1)
    );
}

pub async fn an_unacked_delivery_is_retried_after_the_ack_timeout_unless_extended<E: Engine>(
    fixture: &Fixture<E>,
) {
    let engine = &fixture.engine;
    let timing = &fixture.timing;
    let spec = group(timing, "slowpoke", "video.*");
    // Unscaled: `timing` scales the waits below as it scaled the policy.
    let timeout = GroupPolicy::default().ack_timeout;
    let mut member = engine.join_group(spec.clone(), None).await.expect("join");
    engine
        .publish(vec![event("video.uploaded", "1")])
        .await
        .expect("publish");
    let first = next_delivery(timing, &mut member).await;
    // Extended twice, it outlives two ack timeouts.
    for _ in 0..2 {
        tokio::time::sleep(timing.of(timeout - Duration::from_secs(1))).await;
        member.extend(first.delivery_id).await.expect("extend");
    }
    assert!(
        delivery_within(timing, &mut member, timeout - Duration::from_secs(1))
            .await
            .is_none()
    );
    // Then it is left alone: the timeout passes, and after the backoff it comes again.
    let started = tokio::time::Instant::now();
    let again = next_delivery(timing, &mut member).await;
    assert_eq!((again.event.seq, again.attempt), (first.event.seq, 2));
    let (_, high) = spec.policy.backoff.bounds(1);
    assert!(started.elapsed() <= timing.of(Duration::from_secs(1)) + high + timing.late);
    assert!(matches!(
        member.ack_sync(first.delivery_id).await,
        Err(VerbError::UnknownDelivery(_))
    ));
    member.ack(again.delivery_id).await.expect("ack");
}

pub async fn reject_dead_letters_at_once_and_redrive_delivers_again<E: Engine>(
    fixture: &Fixture<E>,
) {
    let engine = &fixture.engine;
    let timing = &fixture.timing;
    let mut member = engine
        .join_group(group(timing, "importer", "import.*"), None)
        .await
        .expect("join");
    engine
        .publish(vec![event("import.row", r#"{"bad":true}"#)])
        .await
        .expect("publish");
    let delivery = next_delivery(timing, &mut member).await;
    member
        .reject(delivery.delivery_id, Some("schema mismatch".into()))
        .await
        .expect("reject");
    let dead = dead_letters(engine, "importer").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].attempts, dead[0].last_error.as_deref()),
        (1, Some("schema mismatch"))
    );
    assert_eq!(dead[0].event.event.data.get(), r#"{"bad":true}"#);
    assert!(
        delivery_within(timing, &mut member, Duration::from_secs(600))
            .await
            .is_none(),
        "no retry after reject"
    );

    assert_eq!(engine.redrive("importer").await.expect("redrive"), 1);
    let again = next_delivery(timing, &mut member).await;
    assert_eq!(
        (again.event.seq, again.attempt),
        (delivery.event.seq, 1),
        "attempts reset"
    );
    member
        .reject(again.delivery_id, None)
        .await
        .expect("reject");
    assert_eq!(
        engine.purge_dead_letters("importer").await.expect("purge"),
        1
    );
    assert!(dead_letters(engine, "importer").await.is_empty());
    assert!(matches!(
        engine.redrive("nobody").await,
        Err(EngineError::UnknownGroup(_))
    ));
}

pub async fn a_member_that_leaves_has_its_deliveries_redelivered_at_once<E: Engine>(
    fixture: &Fixture<E>,
) {
    let engine = &fixture.engine;
    let timing = &fixture.timing;
    let mut leaving = engine
        .join_group(group(timing, "workers", "task.*"), Some(3))
        .await
        .expect("join");
    publish_numbered(engine, "task.run", 3).await;
    let mut taken = Vec::new();
    for _ in 0..3 {
        taken.push(next_delivery(timing, &mut leaving).await.event.seq);
    }
    let mut staying = engine
        .join_group(group(timing, "workers", "task.*"), Some(3))
        .await
        .expect("join");
    let started = tokio::time::Instant::now();
    drop(leaving);
    let mut again = Vec::new();
    for _ in 0..3 {
        let delivery = next_delivery(timing, &mut staying).await;
        assert_eq!(
            delivery.attempt, 2,
            "the lost delivery counts as an attempt"
        );
        again.push(delivery.event.seq);
        staying.ack(delivery.delivery_id).await.expect("ack");
    }
    assert!(
        started.elapsed() < timing.of(Duration::from_secs(1)),
        "redelivered at once, not after a timeout"
    );
    again.sort_unstable();
    taken.sort_unstable();
    assert_eq!(again, taken);
}

/// A member that acks and leaves at once (a worker finishing its batch and exiting) has its
/// acks honoured: nothing it acked is delivered again.
pub async fn acks_sent_just_before_leaving_count<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    let timing = &fixture.timing;
    publish_numbered(engine, "batch.item", 50).await;
    let mut leaving = engine
        .join_group(group(timing, "batcher", "batch.*"), Some(50))
        .await
        .expect("join");
    for _ in 0..50 {
        let delivery = next_delivery(timing, &mut leaving).await;
        leaving.ack(delivery.delivery_id).await.expect("ack");
    }
    drop(leaving);
    let mut staying = engine
        .join_group(group(timing, "batcher", "batch.*"), Some(50))
        .await
        .expect("join");
    if let Some(delivery) = delivery_within(timing, &mut staying, Duration::from_secs(120)).await {
        panic!(
            "seq {} was acked before its member left, yet delivered again",
            delivery.event.seq
        );
    }
    let stats = engine.groups().await;
    let batcher = stats.iter().find(|stats| stats.name == "batcher").unwrap();
    assert_eq!((batcher.acked, batcher.redelivered), (50, 0));
}

/// A member may take its deliveries in bursts and ack a burst in one call, as the server does
/// for a WebSocket member: every event arrives once, in order, within the credit, and each is
/// acked once.
pub async fn deliveries_taken_and_acked_in_bursts_are_each_acked_once<E: Engine>(
    fixture: &Fixture<E>,
) {
    let engine = &fixture.engine;
    let timing = &fixture.timing;
    publish_numbered(engine, "bulk.item", 250).await;
    let mut member = engine
        .join_group(group(timing, "bulk", "bulk.*"), Some(40))
        .await
        .expect("join");
    let mut seqs = Vec::new();
    let mut burst = Vec::new();
    while seqs.len() < 250 {
        let wait = timing.of(GROUP_WAIT);
        match tokio::time::timeout(wait, member.recv_batch(&mut burst, 64)).await {
            Ok(Ok(())) => {}
            Ok(Err(closed)) => panic!("membership closed: {closed}"),
            Err(_) => panic!("no delivery within {wait:?} after {} events", seqs.len()),
        }
        assert!(
            burst.len() <= 40,
            "a burst of {} beyond the credit of 40",
            burst.len()
        );
        let ids: Vec<u64> = burst.iter().map(|delivery| delivery.delivery_id).collect();
        seqs.extend(burst.drain(..).map(|delivery| delivery.event.seq));
        member.verbs().ack_many(&ids).await.expect("ack");
    }
    assert_eq!(seqs, (1..=250).collect::<Vec<u64>>());
    let deadline = tokio::time::Instant::now() + timing.of(GROUP_WAIT);
    loop {
        let stats = engine.groups().await;
        let bulk = stats.iter().find(|stats| stats.name == "bulk").unwrap();
        if bulk.acked == 250 {
            assert_eq!((bulk.redelivered, bulk.in_flight), (0, 0));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of 250 acks recorded",
            bulk.acked
        );
        tokio::time::sleep(timing.of(Duration::from_millis(10))).await;
    }
}

pub async fn nothing_is_lost_when_members_crash_mid_flight<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    let timing = &fixture.timing;
    publish_numbered(engine, "payment.due", 200).await;
    // Enough retries that no event dies of the crashes (each lost delivery is an attempt).
    let mut spec = group(timing, "collector", "payment.*");
    spec.policy.max_retries = 10;
    let mut acked = HashSet::new();
    // Five members in turn take a few deliveries, ack some and vanish.
    for round in 0..5 {
        let mut member = engine
            .join_group(spec.clone(), Some(8))
            .await
            .expect("join");
        for n in 0..8 {
            let delivery = next_delivery(timing, &mut member).await;
            if n % 2 == round % 2 {
                member.ack(delivery.delivery_id).await.expect("ack");
                acked.insert(delivery.event.seq);
            }
        }
    }
    let mut survivor = engine.join_group(spec, Some(50)).await.expect("join");
    while acked.len() < 200 {
        let delivery = next_delivery(timing, &mut survivor).await;
        survivor.ack(delivery.delivery_id).await.expect("ack");
        acked.insert(delivery.event.seq);
    }
    assert_eq!(acked, (1..=200).collect::<HashSet<u64>>());
}

pub async fn a_group_pattern_spans_streams<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    let timing = &fixture.timing;
    engine
        .publish(vec![event("user.created", "1")])
        .await
        .expect("publish");
    let mut member = engine
        .join_group(group(timing, "welcome", "*.created"), None)
        .await
        .expect("join");
    engine
        .publish(vec![
            event("order.created", "2"),
            event("user.deleted", "3"),
            event("team.created", "4"),
        ])
        .await
        .expect("publish");
    let mut got = Vec::new();
    for _ in 0..3 {
        let delivery = next_delivery(timing, &mut member).await;
        got.push(delivery.event.event.event_type.to_string());
        member.ack(delivery.delivery_id).await.expect("ack");
    }
    got.sort();
    assert_eq!(got, ["order.created", "team.created", "user.created"]);
    assert!(
        delivery_within(timing, &mut member, Duration::from_secs(60))
            .await
            .is_none()
    );
}

/// A group whose pattern matches a few of a stream's events reads past the others, however
/// many there are, and delivers every match in order.
pub async fn a_group_reads_past_events_it_does_not_match<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    let timing = &fixture.timing;
    engine
        .publish(vec![event("audit.signal", "0")])
        .await
        .expect("publish");
    publish_numbered(engine, "audit.noise", 40_000).await;
    engine
        .publish(vec![event("audit.signal", "1")])
        .await
        .expect("publish");
    publish_numbered(engine, "audit.noise", 300).await;
    engine
        .publish(vec![event("audit.signal", "2")])
        .await
        .expect("publish");
    let mut member = engine
        .join_group(group(timing, "auditor", "audit.signal"), Some(1))
        .await
        .expect("join");
    for expected in ["0", "1", "2"] {
        let delivery = next_delivery(timing, &mut member).await;
        assert_eq!(delivery.event.event.event_type.as_str(), "audit.signal");
        assert_eq!(delivery.event.event.data.get(), expected);
        member.ack(delivery.delivery_id).await.expect("ack");
    }
    let stats = engine.groups().await;
    let auditor = stats.iter().find(|stats| stats.name == "auditor").unwrap();
    assert_eq!((auditor.acked, auditor.lag, auditor.in_flight), (3, 0, 0));
}

/// A member with a credit of one gets a matching event published after unmatched ones in the
/// same batch, with no further publish to wake the group.
pub async fn a_group_with_little_credit_skips_unmatched_new_events<E: Engine>(
    fixture: &Fixture<E>,
) {
    let engine = &fixture.engine;
    let timing = &fixture.timing;
    let mut member = engine
        .join_group(group(timing, "shipper", "parcel.ready"), Some(1))
        .await
        .expect("join");
    let mut batch: Vec<Event> = (0..600)
        .map(|n| event("parcel.scanned", &n.to_string()))
        .collect();
    batch.push(event("parcel.ready", "\"last\""));
    engine.publish(batch).await.expect("publish");
    let delivery = next_delivery(timing, &mut member).await;
    assert_eq!(delivery.event.event.data.get(), "\"last\"");
    assert_eq!(delivery.event.seq, 601);
    member.ack(delivery.delivery_id).await.expect("ack");
}

pub async fn a_group_keeps_its_pattern<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    let timing = &fixture.timing;
    let _member = engine
        .join_group(group(timing, "search", "doc.*"), None)
        .await
        .expect("join");
    let conflict = engine
        .join_group(group(timing, "search", "doc.>"), None)
        .await;
    assert!(
        matches!(conflict, Err(EngineError::GroupConflict { .. })),
        "{conflict:?}"
    );
    assert!(
        engine
            .join_group(group(timing, "search", "doc.*"), None)
            .await
            .is_ok()
    );
}

pub async fn verbs_on_unknown_deliveries_are_refused<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    let timing = &fixture.timing;
    let mut member = engine
        .join_group(group(timing, "checker", "check.*"), None)
        .await
        .expect("join");
    engine
        .publish(vec![event("check.run", "1")])
        .await
        .expect("publish");
    let delivery = next_delivery(timing, &mut member).await;
    member.ack_sync(delivery.delivery_id).await.expect("ack");
    for refused in [
        member.ack_sync(delivery.delivery_id).await,
        member.nack(delivery.delivery_id, None, None).await,
        member.extend(delivery.delivery_id).await,
        member.reject(9_999_999, None).await,
    ] {
        assert!(
            matches!(refused, Err(VerbError::UnknownDelivery(_))),
            "{refused:?}"
        );
    }
}

pub async fn an_event_is_in_flight_to_at_most_one_member_at_a_time<E: Engine>(
    fixture: &Fixture<E>,
) {
    use std::sync::Mutex;
    let engine = &fixture.engine;
    let timing = fixture.timing;
    let mut spec = group(&timing, "racers", "race.*");
    spec.policy.ack_timeout = timing.of(Duration::from_secs(5));
    spec.policy.max_retries = 50;
    publish_numbered(engine, "race.lap", 40).await;
    // The delivery each event was last handed out with.
    let current: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
    let acked: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let mut workers = Vec::new();
    for worker in 0..3u64 {
        let mut member = engine
            .join_group(spec.clone(), Some(4))
            .await
            .expect("join");
        let (current, acked) = (current.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            let mut round = 0u64;
            while acked.lock().unwrap().len() < 40 {
                let Some(delivery) =
                    delivery_within(&timing, &mut member, Duration::from_secs(30)).await
                else {
                    continue;
                };
                let seq = delivery.event.seq;
                {
                    let mut current = current.lock().unwrap();
                    let newest = current
                        .get(&seq)
                        .map_or(delivery.delivery_id, |&id| id.max(delivery.delivery_id));
                    current.insert(seq, newest);
                }
                // Some holds outlast the ack timeout, so that redeliveries race the holders.
                round += 1;
                tokio::time::sleep(timing.of(Duration::from_secs((worker * 3 + round) % 8))).await;
                if member.ack_sync(delivery.delivery_id).await.is_ok() {
                    // The ack was accepted, so this delivery was still in flight: no newer
                    // delivery of the event may have been handed out to anyone.
                    let newest = current.lock().unwrap()[&seq];
                    assert_eq!(
                        newest, delivery.delivery_id,
                        "seq {seq} was in flight twice"
                    );
                    acked.lock().unwrap().insert(seq);
                }
            }
        }));
    }
    for worker in workers {
        tokio::time::timeout(timing.of(GROUP_WAIT), worker)
            .await
            .expect("finished")
            .expect("worker");
    }
    assert_eq!(acked.lock().unwrap().len(), 40);
}

pub async fn a_member_cannot_act_on_another_members_delivery<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    let timing = &fixture.timing;
    let mut owner = engine
        .join_group(group(timing, "owners", "own.*"), Some(1))
        .await
        .expect("join");
    let other = engine
        .join_group(group(timing, "owners", "own.*"), Some(1))
        .await
        .expect("join");
    engine
        .publish(vec![event("own.thing", "1")])
        .await
        .expect("publish");
    let delivery = next_delivery(timing, &mut owner).await;
    for refused in [
        other.ack_sync(delivery.delivery_id).await,
        other.nack(delivery.delivery_id, None, None).await,
        other.extend(delivery.delivery_id).await,
        other.reject(delivery.delivery_id, None).await,
    ] {
        assert!(
            matches!(refused, Err(VerbError::UnknownDelivery(_))),
            "{refused:?}"
        );
    }
    owner
        .ack_sync(delivery.delivery_id)
        .await
        .expect("the owner acks");
}

pub async fn groups_are_created_and_deleted_through_the_api<E: Engine>(fixture: &Fixture<E>) {
    let engine = &fixture.engine;
    let timing = &fixture.timing;
    // Created before any member, a group from `Earliest` keeps what is published meanwhile.
    engine
        .create_group(group(timing, "archive", "report.*"))
        .await
        .expect("create");
    assert!(
        engine
            .create_group(group(timing, "archive", "report.*"))
            .await
            .is_ok(),
        "creating again is fine"
    );
    assert!(matches!(
        engine
            .create_group(group(timing, "archive", "report.>"))
            .await,
        Err(EngineError::GroupConflict { .. })
    ));
    engine
        .publish(vec![event("report.daily", "1")])
        .await
        .expect("publish");
    let mut member = engine
        .join_group(group(timing, "archive", "report.*"), None)
        .await
        .expect("join");
    let delivery = next_delivery(timing, &mut member).await;
    assert_eq!(delivery.event.event.data.get(), "1");

    engine.delete_group("archive").await.expect("delete");
    assert!(matches!(member.recv().await, Err(Closed::GroupDeleted)));
    assert!(
        engine
            .groups()
            .await
            .iter()
            .all(|stats| stats.name != "archive")
    );
    assert!(matches!(
        engine.delete_group("archive").await,
        Err(EngineError::UnknownGroup(_))
    ));
    // A new group of that name starts afresh.
    let mut again = engine
        .join_group(group(timing, "archive", "report.>"), None)
        .await
        .expect("join");
    assert_eq!(next_delivery(timing, &mut again).await.attempt, 1);
}

pub async fn a_group_from_latest_gets_all_of_streams_created_after_it<E: Engine>(
    fixture: &Fixture<E>,
) {
    let engine = &fixture.engine;
    let timing = &fixture.timing;
    engine
        .publish(vec![event("user.created", r#""old""#)])
        .await
        .expect("publish");
    let mut spec = group(timing, "greeter", "*.created");
    spec.start = StartAt::Latest;
    let mut member = engine.join_group(spec, None).await.expect("join");
    // `order` does not exist yet: everything in it is new to the group.
    publish_numbered(engine, "order.created", 50).await;
    engine
        .publish(vec![event("user.created", r#""new""#)])
        .await
        .expect("publish");
    let mut orders = Vec::new();
    let mut users = Vec::new();
    for _ in 0..51 {
        let delivery = next_delivery(timing, &mut member).await;
        match &*delivery.event.stream {
            "order" => orders.push(delivery.event.seq),
            _ => users.push(delivery.event.event.data.get().to_owned()),
        }
        member.ack(delivery.delivery_id).await.expect("ack");
    }
    orders.sort_unstable();
    assert_eq!(orders, (1..=50).collect::<Vec<_>>());
    assert_eq!(
        users,
        [r#""new""#],
        "the user event from before the group is not delivered"
    );
}
