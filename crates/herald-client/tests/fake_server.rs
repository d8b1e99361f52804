//! The client against a scripted fake server, for what the real one cannot be made to do on
//! cue: drop a connection between a `pub` and its `puback`, fall silent, or drop a member with
//! a delivery outstanding. (The end-to-end tests against `herald serve` are in
//! crates/herald/tests/client.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use herald_client::{Client, ClientOptions, GroupOptions};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

struct Fake {
    listener: TcpListener,
}

struct Conn {
    socket: WebSocketStream<TcpStream>,
}

impl Fake {
    async fn start() -> (Fake, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        (Fake { listener }, url)
    }

    /// Accepts the next connection and sends `welcome`.
    async fn accept(&self, heartbeat_ms: u64) -> Conn {
        let (stream, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("a connection within the wait")
            .unwrap();
        let socket = tokio_tungstenite::accept_async(stream).await.unwrap();
        let mut conn = Conn { socket };
        conn.send(json!({
            "op": "welcome", "connectionId": 1, "server": "fake", "heartbeatMs": heartbeat_ms,
            "limits": {"eventBytesMax": 1048576, "frameBytesMax": 16777216, "batchEventsMax": 10000,
                       "pendingPublishesMax": 64, "subscriptionsMax": 256,
                       "publishEventsPerSecondMax": 1000000}
        }))
        .await;
        conn
    }
}

impl Conn {
    async fn send(&mut self, frame: Value) {
        self.socket
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("a frame within the wait")
                .expect("the connection is open")
                .unwrap();
            if let Message::Text(text) = message {
                return serde_json::from_str(&text).unwrap();
            }
        }
    }
}

async fn client(url: &str) -> Client {
    Client::connect(
        ClientOptions::new(url)
            .timeout(WAIT)
            .reconnect_delay(Duration::from_millis(10), Duration::from_millis(50)),
    )
    .await
    .unwrap()
}

fn ids(frame: &Value) -> Vec<String> {
    frame["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn unanswered_publishes_are_sent_again_with_the_same_ids() {
    let (fake, url) = Fake::start().await;
    let (first, client) = tokio::join!(fake.accept(15_000), client(&url));
    let mut first = first;
    let publishing = tokio::spawn({
        let client = client.clone();
        async move { client.publish("a.b", &json!({"n": 1})).await }
    });
    let sent = first.recv().await;
    assert_eq!(sent["op"], "pub");
    let sent_ids = ids(&sent);
    drop(first);

    let mut second = fake.accept(15_000).await;
    let resent = second.recv().await;
    assert_eq!(resent["op"], "pub");
    assert_eq!(
        ids(&resent),
        sent_ids,
        "the same ids, so the server dedupes"
    );
    second
        .send(json!({"op": "puback", "rid": resent["rid"],
                     "results": [{"id": sent_ids[0], "stream": "a", "seq": 1, "duplicate": true}]}))
        .await;
    let result = publishing.await.unwrap().unwrap();
    assert_eq!((result.seq, result.duplicate), (Some(1), true));
}

#[tokio::test]
async fn a_silent_connection_is_dropped_and_replaced() {
    let (fake, url) = Fake::start().await;
    let (first, client) = tokio::join!(fake.accept(100), client(&url));
    // The fake never pings: after three heartbeats the client must give up on it and dial again.
    let mut second = fake.accept(15_000).await;
    drop(first);
    let publishing = tokio::spawn({
        let client = client.clone();
        async move { client.publish("a.b", &1).await }
    });
    let sent = second.recv().await;
    assert_eq!(sent["op"], "pub");
    second
        .send(json!({"op": "puback", "rid": sent["rid"],
                     "results": [{"id": ids(&sent)[0], "stream": "a", "seq": 1, "duplicate": false}]}))
        .await;
    assert_eq!(publishing.await.unwrap().unwrap().seq, Some(1));
}

#[tokio::test]
async fn a_group_member_is_recreated_and_skips_deliveries_of_the_lost_connection() {
    let (fake, url) = Fake::start().await;
    let (first, client) = tokio::join!(fake.accept(15_000), client(&url));
    let mut first = first;
    let subscribing = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .group_subscription::<Value>(
                    "job.*",
                    "workers",
                    GroupOptions::default().max_in_flight(5),
                )
                .await
        }
    });
    let sub = first.recv().await;
    assert_eq!(
        (
            &sub["op"],
            &sub["pattern"],
            &sub["group"],
            &sub["maxInFlight"]
        ),
        (&json!("sub"), &json!("job.*"), &json!("workers"), &json!(5))
    );
    first
        .send(json!({"op": "subscribed", "rid": sub["rid"], "sid": 1}))
        .await;
    let mut member = subscribing.await.unwrap().unwrap();
    let event = |seq: u64| {
        json!({"stream": "job", "seq": seq, "id": format!("e{seq}"), "type": "job.run",
               "version": "1.0", "timestamp": "2026-11-22T10:00:00Z", "data": {"seq": seq}})
    };
    first
        .send(json!({"op": "event", "sid": 1, "deliveryId": 5, "attempt": 1, "event": event(1)}))
        .await;
    // The client reads delivery 5 before it sees the connection end (frames arrive in order).
    drop(first);

    let mut second = fake.accept(15_000).await;
    let again = second.recv().await;
    assert_eq!(
        (&again["op"], &again["group"]),
        (&json!("sub"), &json!("workers"))
    );
    second
        .send(json!({"op": "subscribed", "rid": again["rid"], "sid": 7}))
        .await;
    second
        .send(json!({"op": "event", "sid": 7, "deliveryId": 6, "attempt": 2, "event": event(1)}))
        .await;
    // Delivery 5 came on the lost connection: skipped, since the server hands it out again.
    let delivery = tokio::time::timeout(WAIT, member.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((delivery.delivery_id, delivery.attempt), (6, 2));
    assert_eq!(delivery.event.data["seq"], 1);

    let acking = tokio::spawn(async move { delivery.ack().await });
    let ack = second.recv().await;
    assert_eq!(
        (&ack["op"], &ack["sid"], &ack["deliveryId"]),
        (&json!("ack"), &json!(7), &json!(6))
    );
    second.send(json!({"op": "ok", "rid": ack["rid"]})).await;
    acking.await.unwrap().unwrap();

    // The server ends the subscription: the member hears why, then the stream ends.
    second
        .send(json!({"op": "closed", "sid": 7, "error": {"code": "not_found", "message": "group deleted"}}))
        .await;
    let end = tokio::time::timeout(WAIT, member.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(end.to_string().contains("group deleted"), "{end}");
    assert!(member.next().await.is_none());
}

#[tokio::test]
async fn a_live_subscriber_that_falls_behind_is_dropped_with_a_reason() {
    let (fake, url) = Fake::start().await;
    let connecting = Client::connect(ClientOptions::new(&url).timeout(WAIT).live_buffer_events(2));
    let (first, client) = tokio::join!(fake.accept(15_000), connecting);
    let (mut conn, client) = (first, client.unwrap());
    let subscribing = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .subscribe::<Value>("tick", herald_client::SubscribeOptions::default())
                .await
        }
    });
    let sub = conn.recv().await;
    conn.send(json!({"op": "subscribed", "rid": sub["rid"], "sid": 3}))
        .await;
    let mut live = subscribing.await.unwrap().unwrap();
    for seq in 1..=3 {
        conn.send(json!({"op": "event", "sid": 3, "event": {
            "stream": "tick", "seq": seq, "id": format!("t{seq}"), "type": "tick",
            "version": "1.0", "timestamp": "2026-11-22T10:00:00Z", "data": seq}}))
            .await;
    }
    // The third event does not fit: the client unsubscribes rather than slow the connection.
    let unsub = conn.recv().await;
    assert_eq!((&unsub["op"], &unsub["sid"]), (&json!("unsub"), &json!(3)));
    for seq in 1..=2 {
        let event = live.next().await.unwrap().unwrap();
        assert_eq!(event.seq, Some(seq));
    }
    let error = live.next().await.unwrap().unwrap_err();
    assert!(
        matches!(error, herald_client::Error::SlowConsumer { buffered: 2 }),
        "{error}"
    );
    assert!(live.next().await.is_none());
}
