//! The `/v1/ws` protocol against the real server: publishing with pipelining, live and group
//! subscriptions, member verbs, and every kind of bad input answered with its documented error
//! while the connection (and every other connection) keeps working.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use support::{Server, Ws, call, http};
use tokio_tungstenite::tungstenite::Message;

fn events(kind: &str, count: usize, tag: &str) -> Value {
    (0..count)
        .map(|i| json!({"type": kind, "data": {"tag": tag, "i": i}}))
        .collect::<Vec<_>>()
        .into()
}

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "interval"]);
    (dir, server)
}

async fn assert_alive(ws: &mut Ws) {
    let pong = ws.ask(json!({"op": "ping", "rid": 999_999})).await;
    assert_eq!(pong["op"], "pong", "{pong}");
}

#[tokio::test]
async fn welcome_announces_limits_and_heartbeat() {
    let (_dir, server) = start();
    let ws = Ws::connect(&server).await;
    assert!(ws.welcome["heartbeatMs"].as_u64().unwrap() > 0);
    assert!(
        ws.welcome["limits"]["pendingPublishesMax"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(ws.welcome["connectionId"].as_u64().is_some());
}

#[tokio::test]
async fn pipelined_publishes_are_answered_in_order_with_increasing_seqs() {
    let (_dir, server) = start();
    let mut ws = Ws::connect(&server).await;
    for rid in 1..=50u64 {
        ws.send(json!({"op": "pub", "rid": rid, "events": events("order.created", 3, "p")}))
            .await;
    }
    let mut last_seq = 0;
    for rid in 1..=50u64 {
        let answer = ws.recv().await;
        assert_eq!(answer["op"], "puback", "{answer}");
        assert_eq!(answer["rid"], rid);
        for result in answer["results"].as_array().unwrap() {
            assert_eq!(result["stream"], "order");
            let seq = result["seq"].as_u64().unwrap();
            assert_eq!(seq, last_seq + 1, "seqs follow frame order");
            last_seq = seq;
        }
    }
    assert_eq!(last_seq, 150);
}

#[tokio::test]
async fn live_subscribers_get_every_match_in_order() {
    let (_dir, server) = start();
    let mut first = Ws::connect(&server).await;
    let mut second = Ws::connect(&server).await;
    let sid_first = first.subscribe(1, json!({"pattern": "user.*"})).await;
    let sid_second = second.subscribe(1, json!({"pattern": "user.>"})).await;
    let mut publisher = Ws::connect(&server).await;
    let answer = publisher
        .publish(1, events("user.created", 20, "live"))
        .await;
    assert_eq!(answer["op"], "puback");
    publisher.publish(2, events("other.created", 1, "x")).await;
    for (ws, sid) in [(&mut first, sid_first), (&mut second, sid_second)] {
        for i in 0..20u64 {
            let frame = ws.next_event().await;
            assert_eq!(frame["sid"], sid);
            assert!(
                frame.get("deliveryId").is_none(),
                "live events carry no delivery id"
            );
            assert_eq!(frame["event"]["seq"], i + 1);
            assert_eq!(frame["event"]["stream"], "user");
            assert_eq!(frame["event"]["data"]["i"], i);
        }
    }
}

#[tokio::test]
async fn live_from_earliest_replays_history_then_follows() {
    let (_dir, server) = start();
    let mut publisher = Ws::connect(&server).await;
    publisher.publish(1, events("audit.logged", 5, "old")).await;
    let mut subscriber = Ws::connect(&server).await;
    subscriber
        .subscribe(1, json!({"pattern": "audit.*", "from": "earliest"}))
        .await;
    publisher.publish(2, events("audit.logged", 5, "new")).await;
    for seq in 1..=10u64 {
        assert_eq!(subscriber.next_event().await["event"]["seq"], seq);
    }
}

#[tokio::test]
async fn group_credit_bounds_in_flight_and_acks_return_it() {
    let (_dir, server) = start();
    let mut member = Ws::connect(&server).await;
    let sid = member
        .subscribe(
            1,
            json!({"pattern": "job.*", "group": "workers", "from": "earliest", "maxInFlight": 2}),
        )
        .await;
    let mut publisher = Ws::connect(&server).await;
    publisher
        .publish(1, events("job.queued", 5, "credit"))
        .await;
    let first = member.next_event().await;
    let second = member.next_event().await;
    assert_eq!(
        (first["sid"].as_u64(), first["attempt"].as_u64()),
        (Some(sid), Some(1))
    );
    assert_eq!(second["event"]["seq"], 2);
    let client = http();
    let (_, group) = call(client.get(format!("{}/v1/groups/workers", server.url()))).await;
    assert_eq!(group["inFlight"], 2, "{group}");
    let ok = member
        .ask(json!({"op": "ack", "rid": 10, "sid": sid, "deliveryIds": [first["deliveryId"], second["deliveryId"]]}))
        .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    for seq in 3..=5u64 {
        let delivery = member.next_event().await;
        assert_eq!(delivery["event"]["seq"], seq);
        member
            .send(json!({"op": "ack", "sid": sid, "deliveryId": delivery["deliveryId"]}))
            .await;
    }
    assert_alive(&mut member).await;
    let (_, group) = call(client.get(format!("{}/v1/groups/workers", server.url()))).await;
    assert_eq!(group["acked"], 5, "{group}");
}

/// A member that subscribes with `batch` receives its deliveries several per `events` frame,
/// each item what an `event` frame would hold, in order; acks work as for single frames.
#[tokio::test]
async fn a_batched_member_receives_events_frames_in_order() {
    let (_dir, server) = start();
    let mut publisher = Ws::connect(&server).await;
    publisher
        .publish(1, events("job.queued", 300, "batch"))
        .await;
    let mut member = Ws::connect(&server).await;
    let sid = member
        .subscribe(
            1,
            json!({"pattern": "job.*", "group": "workers", "from": "earliest",
                   "maxInFlight": 1000, "batch": true}),
        )
        .await;
    let mut seqs = Vec::new();
    let mut frames = 0;
    while seqs.len() < 300 {
        let frame = member.recv().await;
        assert_eq!(
            (frame["op"].as_str(), frame["sid"].as_u64()),
            (Some("events"), Some(sid)),
            "{frame}"
        );
        frames += 1;
        let items = frame["events"].as_array().unwrap();
        let ids: Vec<Value> = items
            .iter()
            .map(|item| item["deliveryId"].clone())
            .collect();
        for item in items {
            assert_eq!(item["attempt"], 1, "{item}");
            assert_eq!(item["event"]["stream"], "job", "{item}");
            assert_eq!(item["event"]["type"], "job.queued", "{item}");
            seqs.push(item["event"]["seq"].as_u64().unwrap());
        }
        member
            .send(json!({"op": "ack", "sid": sid, "deliveryIds": ids}))
            .await;
    }
    assert_eq!(seqs, (1..=300).collect::<Vec<u64>>());
    assert!(frames < 300, "{frames} frames for 300 deliveries");
    assert_alive(&mut member).await;
    let client = http();
    let (_, group) = call(client.get(format!("{}/v1/groups/workers", server.url()))).await;
    assert_eq!(group["acked"], 300, "{group}");
}

#[tokio::test]
async fn nack_redelivers_with_the_next_attempt_after_the_delay() {
    let (_dir, server) = start();
    let mut member = Ws::connect(&server).await;
    let sid = member
        .subscribe(
            1,
            json!({"pattern": "mail.*", "group": "mailer", "from": "earliest"}),
        )
        .await;
    Ws::connect(&server)
        .await
        .publish(1, events("mail.send", 1, "nack"))
        .await;
    let delivery = member.next_event().await;
    assert_eq!(delivery["attempt"], 1);
    let ok = member.ask(json!({"op": "nack", "rid": 2, "sid": sid, "deliveryId": delivery["deliveryId"], "delayMs": 50, "reason": "smtp down"}))
        .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    let again = member.next_event().await;
    assert_eq!(again["attempt"], 2);
    assert_eq!(again["event"]["id"], delivery["event"]["id"]);
    assert_ne!(again["deliveryId"], delivery["deliveryId"]);
}

#[tokio::test]
async fn reject_dead_letters_then_redrive_and_purge() {
    let (_dir, server) = start();
    let client = http();
    let mut member = Ws::connect(&server).await;
    let sid = member
        .subscribe(
            1,
            json!({"pattern": "pay.*", "group": "payments", "from": "earliest"}),
        )
        .await;
    Ws::connect(&server)
        .await
        .publish(1, events("pay.charge", 1, "dlq"))
        .await;
    let delivery = member.next_event().await;
    let ok = member.ask(json!({"op": "reject", "rid": 2, "sid": sid, "deliveryId": delivery["deliveryId"], "reason": "card declined"}))
        .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    let url = format!("{}/v1/groups/payments/dead-letters", server.url());
    let (status, list) = call(client.get(&url)).await;
    assert_eq!(status, 200);
    let dead = &list["deadLetters"][0];
    assert_eq!(dead["lastError"], "card declined", "{list}");
    assert_eq!(dead["attempts"], 1);
    assert_eq!(dead["event"]["id"], delivery["event"]["id"]);
    let (status, redriven) = call(client.post(format!("{url}/redrive"))).await;
    assert_eq!((status, redriven["redriven"].as_u64()), (200, Some(1)));
    let again = member.next_event().await;
    assert_eq!(again["event"]["id"], delivery["event"]["id"]);
    assert_eq!(again["attempt"], 1, "redrive resets attempts");
    member
        .request(json!({"op": "reject", "rid": 3, "sid": sid, "deliveryId": again["deliveryId"]}))
        .await;
    let (status, purged) = call(client.delete(&url)).await;
    assert_eq!((status, purged["purged"].as_u64()), (200, Some(1)));
    let (_, list) = call(client.get(&url)).await;
    assert_eq!(list["deadLetters"], json!([]));
}

#[tokio::test]
async fn a_member_that_disconnects_has_its_deliveries_redelivered_at_once() {
    let (_dir, server) = start();
    let mut leaving = Ws::connect(&server).await;
    leaving
        .subscribe(
            1,
            json!({"pattern": "img.*", "group": "resizers", "from": "earliest"}),
        )
        .await;
    Ws::connect(&server)
        .await
        .publish(1, events("img.uploaded", 1, "crash"))
        .await;
    let delivery = leaving.next_event().await;
    let mut staying = Ws::connect(&server).await;
    staying
        .subscribe(1, json!({"pattern": "img.*", "group": "resizers"}))
        .await;
    drop(leaving);
    let again = staying.next_event().await;
    assert_eq!(again["event"]["id"], delivery["event"]["id"]);
    assert_eq!(again["attempt"], 2);
}

#[tokio::test]
async fn verbs_on_unknown_deliveries_and_subscriptions_are_refused() {
    let (_dir, server) = start();
    let mut ws = Ws::connect(&server).await;
    let answer = ws
        .ask(json!({"op": "ack", "rid": 1, "sid": 7, "deliveryId": 1}))
        .await;
    assert_eq!(answer["error"]["code"], "unknown_subscription", "{answer}");
    let live = ws.subscribe(2, json!({"pattern": "x.*"})).await;
    let answer = ws
        .ask(json!({"op": "ack", "rid": 3, "sid": live, "deliveryId": 1}))
        .await;
    assert_eq!(answer["error"]["code"], "bad_frame", "{answer}");
    let sid = ws
        .subscribe(
            4,
            json!({"pattern": "y.*", "group": "g", "from": "earliest"}),
        )
        .await;
    let answer = ws
        .ask(json!({"op": "ack", "rid": 5, "sid": sid, "deliveryId": 424_242}))
        .await;
    assert_eq!(answer["error"]["code"], "unknown_delivery", "{answer}");
    assert_eq!(answer["error"]["details"]["deliveryId"], 424_242);
    Ws::connect(&server)
        .await
        .publish(1, events("y.made", 1, "twice"))
        .await;
    let delivery = ws.next_event().await;
    let ack = json!({"op": "ack", "rid": 6, "sid": sid, "deliveryId": delivery["deliveryId"]});
    let answer = ws.ask(ack.clone()).await;
    assert_eq!(answer["op"], "ok", "{answer}");
    let answer = ws.ask(ack).await;
    assert_eq!(
        answer["error"]["code"], "unknown_delivery",
        "a second ack: {answer}"
    );
    let answer = ws.ask(json!({"op": "unsub", "rid": 7, "sid": sid})).await;
    assert_eq!(answer["op"], "ok");
    let answer = ws
        .ask(json!({"op": "nack", "rid": 8, "sid": sid, "deliveryId": 1}))
        .await;
    assert_eq!(answer["error"]["code"], "unknown_subscription", "{answer}");
    assert_alive(&mut ws).await;
}

/// Each bad frame gets its documented error, tied to its `rid` where it had one, and the
/// connection keeps working.
#[tokio::test]
async fn bad_frames_are_answered_and_the_connection_survives() {
    let (_dir, server) = start();
    let mut ws = Ws::connect(&server).await;
    let cases: [(&str, &str, &str); 10] = [
        ("{", "bad_frame", "not a valid JSON frame"),
        (r#"{"op":"fly","rid":1}"#, "bad_frame", "unknown variant"),
        (
            r#"{"op":"pub","rid":2}"#,
            "bad_frame",
            "needs field \"events\"",
        ),
        (
            r#"{"op":"ping","rid":3,"colour":"red"}"#,
            "bad_frame",
            "unknown field `colour`",
        ),
        (
            r#"{"op":"sub","rid":4,"pattern":"a..b"}"#,
            "invalid_subject",
            "a..b",
        ),
        (
            r#"{"op":"sub","rid":5,"pattern":"a.*","group":"bad name"}"#,
            "bad_request",
            "group name",
        ),
        (
            r#"{"op":"pub","rid":6,"events":[]}"#,
            "bad_request",
            "empty",
        ),
        (
            r#"{"op":"sub","rid":7,"pattern":"a.*","maxInFlight":3}"#,
            "bad_request",
            "group subscriptions only",
        ),
        (
            r#"{"op":"sub","rid":9,"pattern":"a.*","batch":true}"#,
            "bad_request",
            "group subscriptions only",
        ),
        (r#"{"op":"welcome","rid":8}"#, "bad_frame", ""),
    ];
    for (frame, code, part) in cases {
        ws.send_raw(Message::Text(frame.into())).await;
        let answer = ws.recv().await;
        assert_eq!(answer["op"], "error", "{frame}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{frame}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(part),
            "{frame}: {message:?} lacks {part:?}"
        );
    }
    ws.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(ws.recv().await["error"]["code"], "bad_frame");
    assert_alive(&mut ws).await;
}

#[tokio::test]
async fn an_invalid_event_refuses_the_whole_frame_and_stores_nothing() {
    let (_dir, server) = start();
    let mut ws = Ws::connect(&server).await;
    let answer = ws
        .publish(
            1,
            json!([
                {"type": "cart.updated", "data": 1},
                {"type": "cart.updated", "data": 2},
                {"type": "cart.updated", "bogus": true}
            ]),
        )
        .await;
    assert_eq!(answer["error"]["code"], "invalid_event", "{answer}");
    assert_eq!(answer["error"]["details"]["index"], 2);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bogus")
    );
    let (status, _) = call(http().get(format!("{}/v1/streams/cart", server.url()))).await;
    assert_eq!(status, 404, "nothing stored, so no stream");
    let too_big = "x".repeat(2 * 1024 * 1024);
    let answer = ws
        .publish(2, json!([{"type": "cart.updated", "data": too_big}]))
        .await;
    assert_eq!(answer["error"]["code"], "too_large", "{answer}");
    assert_alive(&mut ws).await;
}

/// One client flooding past its rate gets `rate_limited` refusals; another client publishing
/// at the same time is unaffected, and exactly the acknowledged events are stored.
#[tokio::test]
async fn a_flooding_client_is_limited_without_affecting_others() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        dir.path(),
        &["--fsync", "interval"],
        &[("HERALD_LIMITS__PUBLISH_EVENTS_PER_SECOND_MAX", "2000")],
    );
    let mut flood = Ws::connect(&server).await;
    let mut calm = Ws::connect(&server).await;
    let frames = 100u64;
    for rid in 1..=frames {
        flood
            .send(json!({"op": "pub", "rid": rid, "events": events("flood.tick", 100, "f")}))
            .await;
    }
    let calm_answer = calm.publish(1, events("calm.tick", 10, "c")).await;
    assert_eq!(calm_answer["op"], "puback", "{calm_answer}");
    let (mut stored, mut limited) = (0, 0);
    for _ in 1..=frames {
        let answer = flood.recv().await;
        match answer["op"].as_str() {
            Some("puback") => stored += answer["results"].as_array().unwrap().len(),
            Some("error") => {
                assert_eq!(answer["error"]["code"], "rate_limited", "{answer}");
                limited += 1;
            }
            _ => panic!("{answer}"),
        }
    }
    assert!(limited > 0, "the flood was limited");
    assert!(stored >= 2000, "the first second's worth was stored");
    let (_, stream) = call(http().get(format!("{}/v1/streams/flood", server.url()))).await;
    assert_eq!(
        stream["lastSeq"], stored as u64,
        "only acknowledged events are stored"
    );
    assert_alive(&mut flood).await;
}

#[tokio::test]
async fn an_oversized_frame_closes_only_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        dir.path(),
        &[],
        &[
            ("HERALD_LIMITS__REQUEST_BYTES_MAX", "65536"),
            ("HERALD_LIMITS__EVENT_BYTES_MAX", "1024"),
        ],
    );
    let mut other = Ws::connect(&server).await;
    let mut big = Ws::connect(&server).await;
    let frame_max = big.welcome["limits"]["frameBytesMax"].as_u64().unwrap() as usize;
    let huge = format!(
        r#"{{"op":"ping","rid":1,"x":"{}"}}"#,
        "y".repeat(frame_max + 1)
    );
    big.send_raw(Message::Text(huge.into())).await;
    loop {
        match big.recv_message().await {
            Some(Message::Close(Some(close))) => {
                assert_eq!(u16::from(close.code), 1009, "{close:?}");
                break;
            }
            None => break,
            Some(_) => continue,
        }
    }
    assert_alive(&mut other).await;
}

#[tokio::test]
async fn subscriptions_per_connection_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        dir.path(),
        &[],
        &[("HERALD_LIMITS__SUBSCRIPTIONS_PER_CONNECTION_MAX", "2")],
    );
    let mut ws = Ws::connect(&server).await;
    ws.subscribe(1, json!({"pattern": "a.*"})).await;
    ws.subscribe(2, json!({"pattern": "b.*"})).await;
    let answer = ws
        .ask(json!({"op": "sub", "rid": 3, "pattern": "c.*"}))
        .await;
    assert_eq!(answer["error"]["code"], "rate_limited", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 subscriptions")
    );
}

#[tokio::test]
async fn a_group_joined_with_another_pattern_is_a_conflict() {
    let (_dir, server) = start();
    let mut ws = Ws::connect(&server).await;
    ws.subscribe(1, json!({"pattern": "a.*", "group": "g"}))
        .await;
    let answer = ws
        .ask(json!({"op": "sub", "rid": 2, "pattern": "b.*", "group": "g"}))
        .await;
    assert_eq!(answer["error"]["code"], "conflict", "{answer}");
}

#[tokio::test]
async fn ephemeral_events_reach_live_subscribers_without_stream_or_seq() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(&config, "ephemeral = [\"typing.>\"]\n").unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--config", config.to_str().unwrap()]);
    let mut subscriber = Ws::connect(&server).await;
    subscriber
        .subscribe(1, json!({"pattern": "typing.*"}))
        .await;
    let answer = Ws::connect(&server)
        .await
        .publish(1, events("typing.started", 1, "eph"))
        .await;
    assert!(answer["results"][0].get("stream").is_none(), "{answer}");
    let frame = subscriber.next_event().await;
    assert_eq!(frame["event"]["type"], "typing.started");
    assert!(frame["event"].get("stream").is_none(), "{frame}");
    assert!(frame["event"].get("seq").is_none(), "{frame}");
}
