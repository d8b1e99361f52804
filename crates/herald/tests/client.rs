//! End-to-end tests of `herald-client` and the CLI client commands against the real
//! `herald serve` (a child process): publishing, live and group subscriptions, redelivery,
//! dead letters, reconnecting across a server restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::future::Future;
use std::time::Duration;

use herald_client::{
    BackoffConfig, Client, ClientOptions, Delivery, Error, ErrorCode, From, GroupOptions,
    GroupPolicyConfig, NewEvent, SubscribeOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use support::{Server, WAIT};
use tokio::sync::mpsc;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Photo {
    photo_id: String,
}

fn photo(id: &str) -> Photo {
    Photo {
        photo_id: id.to_owned(),
    }
}

async fn connect(server: &Server) -> Client {
    Client::connect(
        ClientOptions::new(server.url())
            .service_name("tests")
            .timeout(WAIT)
            .reconnect_delay(Duration::from_millis(50), Duration::from_millis(500)),
    )
    .await
    .unwrap()
}

/// Policy with short backoff so that retries happen within a test.
fn quick_policy(max_retries: u32) -> GroupPolicyConfig {
    GroupPolicyConfig {
        max_retries: Some(max_retries),
        backoff: Some(BackoffConfig {
            initial_ms: 20,
            factor: 1.0,
            max_ms: 20,
            jitter: 0.0,
        }),
        ..GroupPolicyConfig::default()
    }
}

/// Polls `check` until it returns Some, failing the test after [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn recv<T>(receiver: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, receiver.recv())
        .await
        .expect("a message within the wait")
        .expect("the sender is alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_one_with_envelope_and_batch() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = connect(&server).await;

    let first = client
        .publish("photo.uploaded", &photo("p1"))
        .await
        .unwrap();
    assert_eq!(
        (first.stream.as_deref(), first.seq, first.duplicate),
        (Some("photo"), Some(1), false)
    );

    let event = NewEvent::new("photo.tagged", &photo("p2"))
        .unwrap()
        .id("evt-2")
        .unwrap()
        .correlation_id("req-1")
        .trace_id("trace-1")
        .user_id("user-1")
        .key("photo-p2")
        .metadata("origin", "test")
        .timestamp(time::macros::datetime!(2026-11-22 10:00:00 UTC));
    let second = client.publish_event(event.clone()).await.unwrap();
    assert_eq!((second.id.as_str(), second.seq), ("evt-2", Some(2)));
    let again = client.publish_event(event).await.unwrap();
    assert_eq!((again.seq, again.duplicate), (Some(2), true));

    let batch = (3..6)
        .map(|n| NewEvent::new("photo.uploaded", &photo(&format!("p{n}"))).unwrap())
        .collect();
    let results = client.publish_batch(batch).await.unwrap();
    let seqs: Vec<_> = results.iter().map(|result| result.seq).collect();
    assert_eq!(seqs, [Some(3), Some(4), Some(5)]);

    let page = client.admin().replay("photo", 2, Some(1)).await.unwrap();
    let stored: Value = serde_json::from_str(page.events[0].get()).unwrap();
    assert_eq!(
        stored,
        json!({"stream": "photo", "seq": 2, "id": "evt-2", "type": "photo.tagged", "version": "1.0",
               "timestamp": "2026-11-22T10:00:00Z", "source": "tests", "correlationId": "req-1",
               "traceId": "trace-1", "userId": "user-1", "key": "photo-p2",
               "data": {"photoId": "p2"}, "metadata": {"origin": "test"}})
    );
    assert_eq!(page.next, 3);

    let error = client
        .publish("photo.uploaded", &"x".repeat(2 << 20))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::TooLarge), "{error}");
    // A refused publish spoils nothing for the next one.
    let next = client
        .publish("photo.uploaded", &photo("p6"))
        .await
        .unwrap();
    assert_eq!(next.seq, Some(6));

    let stream = client.admin().stream("photo").await.unwrap();
    assert_eq!(
        (stream.first_seq, stream.last_seq, stream.events),
        (1, 6, 6)
    );
    let streams = client.admin().streams().await.unwrap();
    assert_eq!(streams.len(), 1);
    let health = client.admin().health().await.unwrap();
    assert_eq!(health.status, herald_client::Health::Healthy);
    assert!(client.admin().alive().await.unwrap());
    assert!(client.ping().await.is_ok());
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_frames_and_keep_their_own_results() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = connect(&server).await;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..200 {
        let client = client.clone();
        tasks.spawn(async move {
            let id = format!("e-{n}");
            let event = NewEvent::new("load.test", &n).unwrap().id(&id).unwrap();
            (id, client.publish_event(event).await)
        });
    }
    let mut seqs = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (id, result) = joined.unwrap();
        let result = result.unwrap();
        assert_eq!(result.id, id);
        seqs.push(result.seq.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());

    // One bad event in a crowd: only its publisher hears about it.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..20 {
        let client = client.clone();
        tasks.spawn(async move {
            let event = if n == 7 {
                NewEvent::new("load.test", &1)
                    .unwrap()
                    .metadata("", "empty key")
            } else {
                NewEvent::new("load.test", &n).unwrap()
            };
            (n, client.publish_event(event).await)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (n, result) = joined.unwrap();
        if n == 7 {
            let error = result.unwrap_err();
            assert_eq!(error.code(), Some(ErrorCode::InvalidEvent), "{error}");
        } else {
            assert!(result.is_ok(), "{n}: {result:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_subscription_gets_typed_events_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = connect(&server).await;
    client
        .publish("photo.uploaded", &photo("before"))
        .await
        .unwrap();

    let mut live = client
        .subscribe::<Photo>("photo.*", SubscribeOptions::default())
        .await
        .unwrap();
    let mut replay = client
        .subscribe::<Photo>("photo.>", SubscribeOptions::default().from(From::Earliest))
        .await
        .unwrap();
    for n in 1..=3 {
        client
            .publish("photo.uploaded", &photo(&format!("p{n}")))
            .await
            .unwrap();
    }
    client
        .publish("user.created", &json!({"id": "u"}))
        .await
        .unwrap();
    for n in 1..=3 {
        let event = tokio::time::timeout(WAIT, live.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.data, photo(&format!("p{n}")));
        assert_eq!(
            (event.stream.as_deref(), event.seq),
            (Some("photo"), Some(n + 1))
        );
        assert_eq!(event.source.as_deref(), Some("tests"));
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        let event = tokio::time::timeout(WAIT, replay.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(event.data.photo_id);
    }
    assert_eq!(seen, ["before", "p1", "p2", "p3"]);

    // A payload of another shape is an error item; the subscription goes on.
    client
        .publish("photo.uploaded", &json!({"size": 1}))
        .await
        .unwrap();
    client
        .publish("photo.uploaded", &photo("p4"))
        .await
        .unwrap();
    let error = tokio::time::timeout(WAIT, live.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, Error::Decode { .. }), "{error}");
    let event = tokio::time::timeout(WAIT, live.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.data, photo("p4"));

    live.unsubscribe().await.unwrap();
    let error = client
        .subscribe::<Value>("photo.*.>.x", SubscribeOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidPattern(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_handler_acks_and_members_share_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = connect(&server).await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for member in 0..2 {
        let seen_tx = seen_tx.clone();
        let worker = client
            .subscribe_group(
                "order.*",
                "billing",
                GroupOptions::default().max_in_flight(1),
                move |delivery: Delivery<Value>| {
                    let seen_tx = seen_tx.clone();
                    async move {
                        seen_tx
                            .send((member, delivery.event.seq.unwrap(), delivery.attempt))
                            .unwrap();
                        Ok::<(), String>(())
                    }
                },
            )
            .await
            .unwrap();
        workers.push(worker);
    }
    for n in 0..20 {
        client
            .publish("order.placed", &json!({"n": n}))
            .await
            .unwrap();
    }
    let mut seqs = Vec::new();
    let mut members = [0; 2];
    for _ in 0..20 {
        let (member, seq, attempt) = recv(&mut seen).await;
        assert_eq!(attempt, 1);
        members[member] += 1;
        seqs.push(seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    assert!(
        members[0] > 0 && members[1] > 0,
        "both members worked: {members:?}"
    );
    let admin = client.admin().clone();
    eventually("every delivery acked", || {
        let admin = admin.clone();
        async move {
            let group = admin.group("billing").await.unwrap();
            (group.acked == 20 && group.in_flight == 0).then_some(())
        }
    })
    .await;
    let groups = admin.groups().await.unwrap();
    assert_eq!(groups[0].members, 2);
    for worker in workers {
        worker.close().await.unwrap();
    }
    let group = admin.group("billing").await.unwrap();
    assert_eq!(group.members, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_error_is_redelivered_with_attempt_two() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = connect(&server).await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let worker = client
        .subscribe_group(
            "job.*",
            "workers",
            GroupOptions::default().policy(quick_policy(3)),
            move |delivery: Delivery<Value>| {
                let seen_tx = seen_tx.clone();
                async move {
                    seen_tx
                        .send((delivery.event.id.clone(), delivery.attempt))
                        .unwrap();
                    if delivery.attempt == 1 {
                        Err("the first try fails")
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .await
        .unwrap();
    let published = client.publish("job.run", &json!({"n": 1})).await.unwrap();
    assert_eq!(recv(&mut seen).await, (published.id.clone(), 1));
    assert_eq!(recv(&mut seen).await, (published.id.clone(), 2));
    let admin = client.admin().clone();
    let group = eventually("the retry acked", || {
        let admin = admin.clone();
        async move {
            let group = admin.group("workers").await.unwrap();
            (group.acked == 1).then_some(group)
        }
    })
    .await;
    assert_eq!((group.nacked, group.dead_letters), (1, 0));
    worker.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_redrive_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = connect(&server).await;
    let mut member = client
        .group_subscription::<Value>(
            "mail.*",
            "mailer",
            GroupOptions::default().policy(quick_policy(1)),
        )
        .await
        .unwrap();
    let admin = client.admin().clone();

    // Rejected: dead at once. Nacked past maxRetries: dead after its retry.
    client
        .publish("mail.send", &json!({"to": "a"}))
        .await
        .unwrap();
    client
        .publish("mail.send", &json!({"to": "b"}))
        .await
        .unwrap();
    let mut by_recipient: std::collections::HashMap<String, u32> = Default::default();
    while by_recipient.values().sum::<u32>() < 3 {
        let delivery = tokio::time::timeout(WAIT, member.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let to = delivery.event.data["to"].as_str().unwrap().to_owned();
        *by_recipient.entry(to.clone()).or_default() += 1;
        if to == "a" {
            delivery.reject("no such mailbox").await.unwrap();
        } else {
            delivery.nack(None, Some("smtp down")).await.unwrap();
        }
    }
    assert_eq!(by_recipient["a"], 1);
    assert_eq!(by_recipient["b"], 2);
    let letters = eventually("two dead letters", || {
        let admin = admin.clone();
        async move {
            let letters = admin.dead_letters("mailer", None).await.unwrap();
            (letters.len() == 2).then_some(letters)
        }
    })
    .await;
    let mut summary: Vec<_> = letters
        .iter()
        .map(|letter| {
            let event: Value = serde_json::from_str(letter.event.get()).unwrap();
            (
                event["data"]["to"].as_str().unwrap().to_owned(),
                letter.attempts,
                letter.last_error.clone().unwrap_or_default(),
            )
        })
        .collect();
    summary.sort();
    assert_eq!(
        summary,
        [
            ("a".to_owned(), 1, "no such mailbox".to_owned()),
            ("b".to_owned(), 2, "smtp down".to_owned())
        ]
    );
    assert_eq!(
        admin.dead_letters("mailer", Some(1)).await.unwrap().len(),
        1
    );

    // Redriven: delivered again with attempts reset; this time both are acked.
    assert_eq!(admin.redrive_dead_letters("mailer").await.unwrap(), 2);
    for _ in 0..2 {
        let delivery = tokio::time::timeout(WAIT, member.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(delivery.attempt, 1);
        delivery.ack().await.unwrap();
    }
    assert!(admin.dead_letters("mailer", None).await.unwrap().is_empty());

    client
        .publish("mail.send", &json!({"to": "c"}))
        .await
        .unwrap();
    let delivery = tokio::time::timeout(WAIT, member.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    delivery.reject("bounced").await.unwrap();
    eventually("one dead letter", || {
        let admin = admin.clone();
        async move { (admin.group("mailer").await.unwrap().dead_letters == 1).then_some(()) }
    })
    .await;
    assert_eq!(admin.purge_dead_letters("mailer").await.unwrap(), 1);
    assert!(admin.dead_letters("mailer", None).await.unwrap().is_empty());

    // A verb on a settled delivery is the server's unknown_delivery.
    let error = delivery.ack().await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::UnknownDelivery), "{error}");
    let error = admin.dead_letters("nobody", None).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotFound), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = connect(&server).await;
    let admin = client.admin();
    let created = admin
        .create_group(
            "audit",
            &herald_client::GroupDefinition {
                pattern: "user.>".to_owned(),
                from: Some(From::Earliest),
                policy: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (created.name.as_str(), created.pattern.as_str()),
        ("audit", "user.>")
    );
    let error = client
        .group_subscription::<Value>("order.*", "audit", GroupOptions::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Conflict), "{error}");
    admin.delete_group("audit").await.unwrap();
    let error = admin.group("audit").await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotFound), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_a_restart_and_resumes_group_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let listen = server.addr.to_string();
    let client = connect(&server).await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let worker = client
        .subscribe_group(
            "task.*",
            "runners",
            GroupOptions::default(),
            move |delivery: Delivery<Value>| {
                let seen_tx = seen_tx.clone();
                async move {
                    seen_tx
                        .send(delivery.event.data["n"].as_u64().unwrap())
                        .unwrap();
                    Ok::<(), String>(())
                }
            },
        )
        .await
        .unwrap();
    let mut live = client
        .subscribe::<Value>("task.*", SubscribeOptions::default())
        .await
        .unwrap();
    client.publish("task.run", &json!({"n": 1})).await.unwrap();
    assert_eq!(recv(&mut seen).await, 1);
    assert_eq!(
        tokio::time::timeout(WAIT, live.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .data["n"],
        1
    );

    assert!(server.terminate());
    // Published while the server is down: buffered, sent once the client is back.
    let buffered = tokio::spawn({
        let client = client.clone();
        async move { client.publish("task.run", &json!({"n": 2})).await }
    });
    let server = Server::start_on(&listen, dir.path(), &[], &[]);
    let result = tokio::time::timeout(WAIT, buffered)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(result.seq, Some(2));
    assert_eq!(recv(&mut seen).await, 2);
    client.publish("task.run", &json!({"n": 3})).await.unwrap();
    assert_eq!(recv(&mut seen).await, 3);
    // The live subscription came back too, from the latest event.
    let event = tokio::time::timeout(WAIT, live.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(event.seq >= Some(2), "{event:?}");
    let group = client.admin().group("runners").await.unwrap();
    assert_eq!(group.members, 1);
    worker.close().await.unwrap();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_fail_fast_when_the_buffer_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let client = Client::connect(
        ClientOptions::new(server.url())
            .timeout(Duration::from_secs(2))
            .publish_buffer_events(2)
            .reconnect_delay(Duration::from_secs(30), Duration::from_secs(30)),
    )
    .await
    .unwrap();
    server.kill();
    eventually("the client to notice the lost connection", || {
        let client = client.clone();
        async move { matches!(client.ping().await, Err(Error::ConnectionLost)).then_some(()) }
    })
    .await;
    // Polled in order: the batch takes the whole buffer before the single event arrives.
    let batch = vec![
        NewEvent::new("a.b", &1).unwrap(),
        NewEvent::new("a.b", &2).unwrap(),
    ];
    let (waiting, full) =
        futures::future::join(client.publish_batch(batch), client.publish("a.b", &3)).await;
    let error = full.unwrap_err();
    assert!(matches!(error, Error::BufferFull { events: 2 }), "{error}");
    assert!(error.to_string().contains("buffer is full"), "{error}");
    // Nothing came back within the timeout: the caller hears so.
    assert!(matches!(waiting, Err(Error::Timeout(_))), "{waiting:?}");
}

fn stdout_lines(output: &std::process::Output) -> Vec<Value> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_pub_and_sub() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);

    let results = stdout_lines(&server.cli(&["pub", "user.created", r#"{"id":"u1"}"#], None));
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["stream"], "user");
    assert_eq!(results[0]["seq"], 1);
    assert_eq!(results[0]["duplicate"], false);
    let results = stdout_lines(&server.cli(
        &[
            "pub",
            "user.deleted",
            r#"{"id":"u1"}"#,
            "--id",
            "del-1",
            "--key",
            "u1",
        ],
        None,
    ));
    assert_eq!(results[0]["id"], "del-1");

    let file = dir.path().join("events.ndjson");
    let lines: String = (0..250)
        .map(|n| format!("{}\n", json!({"type": "user.imported", "data": {"n": n}})))
        .collect();
    std::fs::write(&file, lines).unwrap();
    let summary = stdout_lines(&server.cli(
        &["pub", "--file", file.to_str().unwrap(), "--batch", "40"],
        None,
    ));
    assert_eq!(summary, [json!({"published": 250, "duplicates": 0})]);

    let events = stdout_lines(&server.cli(
        &["sub", "user.*", "--from", "earliest", "--count", "2"],
        None,
    ));
    assert_eq!(events.len(), 2);
    assert_eq!(
        (
            events[0]["seq"].clone(),
            events[0]["type"].clone(),
            events[0]["data"].clone()
        ),
        (json!(1), json!("user.created"), json!({"id": "u1"}))
    );
    assert_eq!(
        (events[1]["id"].clone(), events[1]["key"].clone()),
        (json!("del-1"), json!("u1"))
    );

    let events = stdout_lines(&server.cli(
        &[
            "sub", "user.*", "--group", "cli", "--from", "earliest", "--count", "3",
        ],
        None,
    ));
    let seqs: Vec<_> = events
        .iter()
        .map(|event| event["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    let client = connect(&server).await;
    let admin = client.admin().clone();
    let group = eventually("the CLI's acks", || {
        let admin = admin.clone();
        async move {
            let group = admin.group("cli").await.unwrap();
            (group.acked == 3).then_some(group)
        }
    })
    .await;
    assert_eq!(group.in_flight, 0);

    let output = server.cli(&["groups", "--json"], None);
    let groups: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(groups["groups"][0]["name"], "cli");
    let output = server.cli(&["streams"], None);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.starts_with("STREAM"), "{table}");
    assert!(table.contains("user") && table.contains("252"), "{table}");
    let output = server.cli(&["dlq", "list", "--group", "cli", "--json"], None);
    assert_eq!(
        serde_json::from_slice::<Value>(&output.stdout).unwrap(),
        json!({"deadLetters": []})
    );

    let output = server.cli(&["pub", "user.*", "1"], None);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("wildcard"));
}
