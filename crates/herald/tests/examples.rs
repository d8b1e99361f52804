//! The Rust examples under examples/ run against the real `herald` binary, and what each
//! shows is checked: seed 002's registration fan-out and seed 001's achievements with retries
//! and dead letters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use herald_example_achievements as achievements;
use herald_example_user_registration as registration;
use support::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_registration_reaches_each_service_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let summary = registration::run(&server.url()).await.unwrap();

    let created: BTreeSet<&str> = summary
        .published
        .iter()
        .filter(|event| event.event_type == "user.created")
        .map(|event| event.event_id.as_str())
        .collect();
    let all: BTreeSet<&str> = summary
        .published
        .iter()
        .map(|event| event.event_id.as_str())
        .collect();
    assert_eq!(created.len(), 6);
    assert_eq!(all.len(), 7, "six registrations and one profile update");

    // The notification group shares the work: one email per registration, whichever instance.
    let mut emailed: Vec<&str> = summary
        .welcome_emails
        .iter()
        .map(|email| email.event_id.as_str())
        .collect();
    emailed.sort_unstable();
    assert_eq!(
        emailed,
        created.iter().copied().collect::<Vec<_>>(),
        "each registration emailed exactly once"
    );
    assert_eq!(
        summary.emails_per_instance.values().sum::<usize>(),
        6,
        "{:?}",
        summary.emails_per_instance
    );

    // The search group is independent: it indexes every user event, the update too.
    let mut indexed: Vec<&str> = summary
        .indexed
        .iter()
        .map(|document| document.event_id.as_str())
        .collect();
    indexed.sort_unstable();
    assert_eq!(indexed, all.iter().copied().collect::<Vec<_>>());
    for document in &summary.indexed {
        let published = summary
            .published
            .iter()
            .find(|event| event.event_id == document.event_id)
            .unwrap();
        assert_eq!(document.user_id, published.user_id);
        assert_eq!(
            document.correlation_id.as_deref(),
            Some(published.correlation_id.as_str()),
            "envelope fields travel with the event"
        );
    }

    // Stored, in order, under the stream named by the type's first token.
    let replayed: BTreeSet<&str> = summary.replayed.iter().map(String::as_str).collect();
    assert_eq!(replayed, all);
    let seqs: Vec<u64> = summary.published.iter().map(|event| event.seq).collect();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{seqs:?}");
    assert!(summary.published.iter().all(|event| event.stream == "user"));

    assert_eq!(summary.notification_group.in_flight, 0);
    assert_eq!(summary.search_group.in_flight, 0);
    assert_eq!(summary.notification_group.dead_letters, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn achievements_retry_dead_letter_and_redrive() {
    use achievements::Outcome;

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let summary = achievements::run(&server.url()).await.unwrap();

    // The flaky ledger: attempts 1 and 2 fail, the third awards, each retry after its backoff.
    let flaky = summary.attempts_of("user-789", "quest-master");
    let numbers: Vec<u32> = flaky.iter().map(|attempt| attempt.attempt).collect();
    assert_eq!(numbers, [1, 2, 3], "{flaky:#?}");
    assert!(matches!(flaky[0].outcome, Outcome::Failed(_)));
    assert!(matches!(flaky[1].outcome, Outcome::Failed(_)));
    assert!(matches!(
        flaky[2].outcome,
        Outcome::Awarded { points: 100, .. }
    ));
    let initial = Duration::from_millis(achievements::BACKOFF_INITIAL_MS);
    let jitter = 1.0 - achievements::BACKOFF_JITTER;
    assert!(
        flaky[1].at - flaky[0].at >= initial.mul_f64(jitter),
        "the first retry waits the initial backoff: {flaky:#?}"
    );
    assert!(
        flaky[2].at - flaky[1].at >= initial.mul_f64(achievements::BACKOFF_FACTOR * jitter),
        "the second waits twice as long: {flaky:#?}"
    );

    // The missing achievement: maxRetries + 1 failed attempts, then a dead letter with the
    // attempts and the last error; after the fix and the redrive, attempt 1 again, awarded.
    let attempts_max = achievements::MAX_RETRIES + 1;
    for user in ["user-456", "user-789"] {
        let attempts = summary.attempts_of(user, "night-owl");
        let numbers: Vec<u32> = attempts.iter().map(|attempt| attempt.attempt).collect();
        let mut expected: Vec<u32> = (1..=attempts_max).collect();
        expected.push(1);
        assert_eq!(numbers, expected, "{attempts:#?}");
        let (failed, redriven) = attempts.split_at(attempts_max as usize);
        assert!(
            failed
                .iter()
                .all(|attempt| matches!(&attempt.outcome, Outcome::Failed(error) if error.contains("night-owl"))),
            "{failed:#?}"
        );
        assert!(matches!(
            redriven[0].outcome,
            Outcome::Awarded { points: 25, .. }
        ));
    }
    assert_eq!(summary.dead_letters.len(), 2, "{:#?}", summary.dead_letters);
    for letter in &summary.dead_letters {
        assert_eq!(letter.achievement_id, "night-owl");
        assert_eq!(letter.attempts, attempts_max);
        let error = letter.last_error.as_deref().unwrap_or_default();
        assert!(error.contains("not in the catalog"), "{letter:?}");
    }
    assert_eq!(summary.redriven, 2);
    assert_eq!(summary.dead_letters_left, 0);

    // Every award once, whatever was redelivered; the ledger adds up.
    let awards: BTreeSet<(String, String, u32)> = summary.awards().into_iter().collect();
    assert_eq!(awards.len(), summary.awards().len(), "no award twice");
    assert_eq!(
        summary.balances,
        BTreeMap::from([("user-456".to_owned(), 35), ("user-789".to_owned(), 125)])
    );
    assert_eq!(summary.group.in_flight, 0);
    assert_eq!(summary.group.dead_letters, 0);
}
