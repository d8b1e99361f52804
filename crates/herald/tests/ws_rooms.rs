//! Services listening to rooms over `/v1/ws` (`join` / `leave`, docs/PROTOCOL.md) against the
//! real binary: room names with `:`, the token's `rooms` grants, events reaching the room from
//! every kind of sender (HTTP, the `send` frame, a `to = "room"` forwarding rule), the rooms
//! limit, and a slow listener dropped from its rooms without slowing the others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Server, Ws, call, http};

const API_TOKEN: &str = "api-token-0123456789abcdef";
const SESSIONS_TOKEN: &str = "sessions-token-0123456789abcdef";
const READER_TOKEN: &str = "reader-token-0123456789abcdef";
const ROOMS_MAX: usize = 3;
const BUFFER_EVENTS: usize = 8;

fn start(dir: &Path) -> Server {
    let config = dir.join("herald.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[limits]
rooms_per_connection_max = {ROOMS_MAX}
live_buffer_events = {BUFFER_EVENTS}
outbound_frames_max = {BUFFER_EVENTS}

[[auth.tokens]]
name = "api"
token = "{API_TOKEN}"
publish = [">"]
subscribe = [">"]
admin = [">"]

# Listens to session rooms only.
[[auth.tokens]]
name = "sessions"
token = "{SESSIONS_TOKEN}"
subscribe = ["photo.>"]
rooms = ["session:*"]

# No rooms field: the subscribe patterns decide.
[[auth.tokens]]
name = "reader"
token = "{READER_TOKEN}"
subscribe = ["chat.>"]

[[realtime.forward]]
pattern = "doc.edited"
to = "room"
target = ["data.doc"]
prefix = "doc:"
"#
        ),
    )
    .unwrap();
    Server::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

async fn post_to_room(server: &Server, room: &str, event: Value) -> (u16, Value) {
    call(
        http()
            .post(format!("{}/v1/realtime/rooms/{room}", server.url()))
            .bearer_auth(API_TOKEN)
            .json(&event),
    )
    .await
}

async fn join(ws: &mut Ws, rid: u64, room: &str) -> Value {
    ws.ask(json!({"op": "join", "rid": rid, "room": room}))
        .await
}

/// The next room event on `ws`, checked to be for `room`.
async fn room_event(ws: &mut Ws, room: &str) -> Value {
    let frame = ws.next_event().await;
    assert_eq!(frame["room"], room, "{frame}");
    assert!(frame.get("sid").is_none(), "{frame}");
    frame["event"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_are_checked_and_answered() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    const SESSIONS: usize = 0;
    const READER: usize = 1;
    let mut connections = [
        Ws::connect_with_token(&server, Some(SESSIONS_TOKEN)).await,
        Ws::connect_with_token(&server, Some(READER_TOKEN)).await,
    ];
    for (who, room, expect) in [
        (SESSIONS, "session:abc123", Ok(())),
        // Idempotent.
        (SESSIONS, "session:abc123", Ok(())),
        (
            SESSIONS,
            "session.abc123",
            Err(("forbidden", "its rooms patterns: session:*")),
        ),
        (
            SESSIONS,
            "chat.general",
            Err(("forbidden", "may not join room \"chat.general\"")),
        ),
        (READER, "chat.general", Ok(())),
        (READER, "chat.team.x", Ok(())),
        (
            READER,
            "chat:general",
            Err(("forbidden", "its rooms patterns: chat.>")),
        ),
        (
            READER,
            "chat room",
            Err(("invalid_subject", "the character ' ' at byte 5")),
        ),
        (
            READER,
            "session:",
            Err((
                "invalid_subject",
                "token 2 of room name \"session:\" is empty",
            )),
        ),
        (
            READER,
            "user:u1",
            Err(("forbidden", "reserved for Herald's per-user rooms")),
        ),
    ] {
        let answer = join(&mut connections[who], 7, room).await;
        match expect {
            Ok(()) => assert_eq!(answer, json!({"op": "ok", "rid": 7}), "{room}"),
            Err((code, message)) => {
                assert_eq!(answer["op"], "error", "{room}: {answer}");
                assert_eq!(answer["rid"], 7, "{answer}");
                assert_eq!(answer["error"]["code"], code, "{room}: {answer}");
                let text = answer["error"]["message"].as_str().unwrap();
                assert!(text.contains(message), "{room}: {text:?} lacks {message:?}");
            }
        }
    }
    // The rooms limit; leaving makes room again; leaving is idempotent.
    let [_, reader] = &mut connections;
    let answer = join(reader, 8, "chat.third").await;
    assert_eq!(answer["op"], "ok", "{answer}");
    let answer = join(reader, 9, "chat.fourth").await;
    assert_eq!(answer["error"]["code"], "rate_limited", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limits.rooms_per_connection_max"),
        "{answer}"
    );
    for rid in [10, 11] {
        let answer = reader
            .ask(json!({"op": "leave", "rid": rid, "room": "chat.third"}))
            .await;
        assert_eq!(answer, json!({"op": "ok", "rid": rid}));
    }
    assert_eq!(join(reader, 12, "chat.fourth").await["op"], "ok");
    let answer = reader
        .ask(json!({"op": "join", "rid": 13, "room": "chat.x", "sid": 1}))
        .await;
    assert_eq!(answer["error"]["code"], "bad_frame", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sent_to_a_room_reach_the_connections_that_joined_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let mut listener = Ws::connect_with_token(&server, Some(API_TOKEN)).await;
    let mut other = Ws::connect_with_token(&server, Some(API_TOKEN)).await;
    assert_eq!(join(&mut listener, 1, "session:abc123").await["op"], "ok");
    assert_eq!(join(&mut listener, 2, "doc:42").await["op"], "ok");
    assert_eq!(join(&mut other, 1, "session:other").await["op"], "ok");

    // Over HTTP: `delivered` counts the listening connection.
    let (status, body) = post_to_room(
        &server,
        "session:abc123",
        json!({"type": "notification.new", "data": {"title": "Welcome back!"}}),
    )
    .await;
    assert_eq!((status, &body["delivered"]), (200, &json!(1)), "{body}");
    let event = room_event(&mut listener, "session:abc123").await;
    assert_eq!(event["type"], "notification.new");
    assert_eq!(event["data"], json!({"title": "Welcome back!"}));
    assert_eq!(event["source"], "api");
    assert_eq!(event["id"], body["id"]);
    assert!(event.get("seq").is_none(), "sends are not stored: {event}");

    // The `send` frame, from another connection.
    let answer = other
        .ask(
            json!({"op": "send", "rid": 2, "to": {"room": "session:abc123"},
                     "event": {"type": "notification.new", "data": 2}}),
        )
        .await;
    assert_eq!(answer, json!({"op": "ok", "rid": 2, "delivered": 1}));
    assert_eq!(room_event(&mut listener, "session:abc123").await["data"], 2);

    // A forwarding rule with to = "room": the stored event, with its stream and seq.
    let answer = other
        .publish(
            3,
            json!([{"type": "doc.edited", "data": {"doc": 42, "by": "u1"}}]),
        )
        .await;
    assert_eq!(answer["op"], "puback", "{answer}");
    let event = room_event(&mut listener, "doc:42").await;
    assert_eq!(event["data"]["by"], "u1");
    assert_eq!(event["stream"], "doc");
    assert_eq!(event["seq"], 1);

    // After leave, nothing more; the other connection's room was never this one.
    let answer = listener
        .ask(json!({"op": "leave", "rid": 4, "room": "session:abc123"}))
        .await;
    assert_eq!(answer["op"], "ok");
    let (_, body) = post_to_room(&server, "session:abc123", json!({"type": "a.b"})).await;
    assert_eq!(body["delivered"], 0, "{body}");
    let (_, body) = post_to_room(&server, "session:other", json!({"type": "a.c"})).await;
    assert_eq!(body["delivered"], 1, "{body}");
    assert_eq!(room_event(&mut other, "session:other").await["type"], "a.c");
    // The listener got nothing since: the answer to this ping is its next frame.
    let (pong, before) = listener.request(json!({"op": "ping", "rid": 5})).await;
    assert_eq!(pong["op"], "pong");
    assert_eq!(before, Vec::<Value>::new());

    // A closed connection leaves its rooms.
    drop(other);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = post_to_room(&server, "session:other", json!({"type": "a.d"})).await;
        if body["delivered"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection is still in its room"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_listener_is_dropped_from_its_rooms_without_slowing_others() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let mut slow = Ws::connect_with_token(&server, Some(API_TOKEN)).await;
    let mut fast = Ws::connect_with_token(&server, Some(API_TOKEN)).await;
    let mut sender = Ws::connect_with_token(&server, Some(API_TOKEN)).await;
    for ws in [&mut slow, &mut fast] {
        assert_eq!(join(ws, 1, "live:feed").await["op"], "ok");
        assert_eq!(join(ws, 2, "live:other").await["op"], "ok");
    }
    // `slow` reads nothing. Each event is 64 KiB, so the socket buffers fill after a few
    // hundred at most; then its queues (BUFFER_EVENTS frames each) fill and it is dropped.
    let padding = "x".repeat(64 * 1024);
    let mut sent = 0u64;
    loop {
        sent += 1;
        assert!(sent < 5_000, "the slow listener was never dropped");
        let answer = sender
            .ask(
                json!({"op": "send", "rid": sent, "to": {"room": "live:feed"},
                         "event": {"type": "feed.item", "data": {"n": sent, "padding": padding}}}),
            )
            .await;
        assert_eq!(answer["op"], "ok", "{answer}");
        // The fast listener keeps up, in order.
        let event = room_event(&mut fast, "live:feed").await;
        assert_eq!(event["data"]["n"], sent);
        if answer["delivered"] == 1 {
            break;
        }
        assert_eq!(answer["delivered"], 2, "{answer}");
    }
    // The slow listener reads what was queued for it, in order, then one `closed` per room.
    let mut next = 1;
    let mut closed = Vec::new();
    while closed.len() < 2 {
        let frame = slow.recv().await;
        match frame["op"].as_str() {
            Some("event") => {
                assert_eq!(frame["event"]["data"]["n"], next, "in order");
                next += 1;
            }
            Some("closed") => {
                assert_eq!(frame["error"]["code"], "rate_limited", "{frame}");
                closed.push(frame["room"].as_str().unwrap().to_owned());
            }
            _ => panic!("unexpected {frame}"),
        }
    }
    closed.sort();
    assert_eq!(closed, ["live:feed", "live:other"]);
    assert!(
        next <= sent,
        "the last send was not queued for the slow listener"
    );
    // It may join again and receive.
    assert_eq!(join(&mut slow, 3, "live:feed").await["op"], "ok");
    let answer = sender
        .ask(
            json!({"op": "send", "rid": 1_000_000, "to": {"room": "live:feed"},
                     "event": {"type": "feed.item", "data": {"n": 0}}}),
        )
        .await;
    assert_eq!(answer["delivered"], 2, "{answer}");
    assert_eq!(room_event(&mut slow, "live:feed").await["data"]["n"], 0);
    let metrics = http()
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("herald_realtime_room_listener_drops_total 1\n"),
        "{metrics}"
    );
}

async fn rust_client(server: &Server, token: &str) -> herald_client::Client {
    herald_client::Client::connect(
        herald_client::ClientOptions::new(server.url())
            .service_name("rooms")
            .token(token)
            .timeout(support::WAIT)
            .reconnect_delay(Duration::from_millis(50), Duration::from_millis(500)),
    )
    .await
    .unwrap()
}

/// Sends `data` to `room` and checks how many connections listened.
async fn assert_delivered(server: &Server, room: &str, data: Value, listeners: u64) {
    let (status, body) = post_to_room(server, room, json!({"type": "a.b", "data": data})).await;
    assert_eq!(
        (status, &body["delivered"]),
        (200, &json!(listeners)),
        "{body}"
    );
}

async fn next_room_event(room: &mut herald_client::RoomSubscription<Value>) -> Value {
    tokio::time::timeout(support::WAIT, room.next())
        .await
        .expect("a room event in time")
        .expect("the room subscription goes on")
        .expect("an event that decodes")
        .data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_joins_rooms_listens_and_leaves() {
    use herald_client::{Error, ErrorCode};

    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let client = rust_client(&server, SESSIONS_TOKEN).await;

    // Refusals: outside the token's rooms (server), reserved and malformed names (client).
    let refused = client.join_room::<Value>("chat.general").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::Forbidden), "{refused}");
    let reserved = client.join_room::<Value>("user:alice").await.unwrap_err();
    assert!(matches!(reserved, Error::InvalidRoom(_)), "{reserved}");
    let malformed = client.join_room::<Value>("session:").await.unwrap_err();
    assert!(matches!(malformed, Error::InvalidRoom(_)), "{malformed}");

    // Two subscriptions to one room: the connection listens once, both get every event.
    let mut first = client.join_room::<Value>("session:abc123").await.unwrap();
    let mut second = client.join_room::<Value>("session:abc123").await.unwrap();
    assert_eq!(first.room(), "session:abc123");
    let (status, body) = post_to_room(
        &server,
        "session:abc123",
        json!({"type": "notification.new", "data": {"n": 1}}),
    )
    .await;
    assert_eq!((status, &body["delivered"]), (200, &json!(1)), "{body}");
    assert_eq!(next_room_event(&mut first).await, json!({"n": 1}));
    assert_eq!(next_room_event(&mut second).await, json!({"n": 1}));

    // One leaves: the room stays joined for the other.
    second.leave().await.unwrap();
    assert_delivered(&server, "session:abc123", json!({"n": 2}), 1).await;
    assert_eq!(next_room_event(&mut first).await, json!({"n": 2}));

    // The last leaves: the connection leaves the room.
    first.leave().await.unwrap();
    assert_delivered(&server, "session:abc123", json!({"n": 3}), 0).await;

    // Dropping a subscription leaves too.
    let dropped = client.join_room::<Value>("session:dropped").await.unwrap();
    drop(dropped);
    let deadline = Instant::now() + support::WAIT;
    loop {
        let (_, body) = post_to_room(&server, "session:dropped", json!({"type": "a.b"})).await;
        if body["delivered"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still listening after the drop: {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_joins_its_rooms_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let listen = server.addr.to_string();
    let client = rust_client(&server, SESSIONS_TOKEN).await;
    let mut room = client.join_room::<Value>("session:abc123").await.unwrap();
    post_to_room(&server, "session:abc123", json!({"type": "a.b", "data": 1})).await;
    assert_eq!(next_room_event(&mut room).await, json!(1));

    assert!(server.terminate());
    let config = dir.path().join("herald.toml");
    let server = Server::start_on(
        &listen,
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
        &[],
    );
    // Sent until the client has joined again on its new connection (earlier sends are lost:
    // room events are live).
    let deadline = Instant::now() + support::WAIT;
    loop {
        let (_, body) =
            post_to_room(&server, "session:abc123", json!({"type": "a.b", "data": 2})).await;
        if body["delivered"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the client did not join again: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(next_room_event(&mut room).await, json!(2));
    client.close().await;
}
