//! The service side of real-time delivery (PRODUCT.md §6) against the real binary: the HTTP
//! endpoints, the `/v1/ws` `send` frame, the Rust client, `herald send`, and the Socket.IO
//! handshake spoken by hand over Engine.IO long-polling (the full browser side is covered by
//! tests/node with the stock socket.io-client).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use herald_client::{Client, ClientOptions, Target};
use serde_json::{Value, json};
use support::{Server, Ws, call, http};

const SECRET: &str = "rust-tests-secret-0123456789abcdef-0123";
const SERVICE_TOKEN: &str = "service-token-0123456789abcdef";
const LIMITED_TOKEN: &str = "limited-token-0123456789abcdef";

fn start(dir: &Path) -> Server {
    let config = dir.join("herald.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[auth.tokens]]
name = "api"
token = "{SERVICE_TOKEN}"
publish = [">"]
subscribe = [">"]
admin = [">"]

[[auth.tokens]]
name = "limited"
token = "{LIMITED_TOKEN}"
publish = ["chat.*"]

[realtime.jwt]
algorithm = "HS256"
secret = "{SECRET}"
audience = "herald"
"#
        ),
    )
    .unwrap();
    Server::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

fn browser_token(sub: &str, exp_from_now: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({
        "sub": sub,
        "aud": "herald",
        "exp": now + exp_from_now,
        "herald": {"rooms": ["chat.*"]},
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn post(server: &Server, path: &str, token: &str, body: Value) -> (u16, Value) {
    call(
        http()
            .post(format!("{}{path}", server.url()))
            .bearer_auth(token)
            .json(&body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sends_are_checked_and_answered() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let event = json!({"type": "chat.message", "data": {"text": "hi"}});
    for path in [
        "/v1/realtime/users/u1",
        "/v1/realtime/rooms/chat.general",
        "/v1/realtime/rooms/session:abc123",
        "/v1/realtime/broadcast",
    ] {
        let (status, body) = post(&server, path, SERVICE_TOKEN, event.clone()).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["delivered"], 0, "{path}");
        assert!(body["id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    // Not stored: no stream was created.
    let (_, streams) = call(
        http()
            .get(format!("{}/v1/streams", server.url()))
            .bearer_auth(SERVICE_TOKEN),
    )
    .await;
    assert_eq!(streams["streams"], json!([]), "{streams}");

    let cases = [
        (
            "/v1/realtime/users/u1",
            LIMITED_TOKEN,
            json!({"type": "billing.paid"}),
            403,
            "forbidden",
        ),
        (
            "/v1/realtime/users/u1",
            "wrong-token-0123456789",
            event.clone(),
            401,
            "unauthorized",
        ),
        (
            "/v1/realtime/rooms/user:u1",
            SERVICE_TOKEN,
            event.clone(),
            403,
            "forbidden",
        ),
        (
            "/v1/realtime/rooms/session:",
            SERVICE_TOKEN,
            event.clone(),
            400,
            "invalid_subject",
        ),
        (
            "/v1/realtime/broadcast",
            SERVICE_TOKEN,
            json!({"data": 1}),
            400,
            "invalid_event",
        ),
        (
            "/v1/realtime/broadcast",
            SERVICE_TOKEN,
            json!([event.clone()]),
            400,
            "invalid_event",
        ),
    ];
    for (path, token, body, status, code) in cases {
        let (got_status, got) = post(&server, path, token, body.clone()).await;
        assert_eq!(
            (got_status, got["error"]["code"].as_str()),
            (status, Some(code)),
            "{path} {body}: {got}"
        );
    }

    let (_, stats) = call(
        http()
            .get(format!("{}/v1/stats", server.url()))
            .bearer_auth(SERVICE_TOKEN),
    )
    .await;
    assert_eq!(
        stats["realtime"],
        json!({"connections": 0, "users": 0, "roomsTotal": 0, "rooms": []})
    );
    let (_, openapi) = call(http().get(format!("{}/openapi.json", server.url()))).await;
    for path in [
        "/v1/realtime/users/{id}",
        "/v1/realtime/rooms/{room}",
        "/v1/realtime/broadcast",
    ] {
        assert!(
            openapi["paths"][path]["post"].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_send_frame_is_answered_with_ok_and_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let mut ws = Ws::connect_with_token(&server, Some(SERVICE_TOKEN)).await;
    let answer = ws
        .ask(json!({"op": "send", "rid": 1, "to": {"user": "u1"}, "event": {"type": "a.b", "data": 1}}))
        .await;
    assert_eq!(answer, json!({"op": "ok", "rid": 1, "delivered": 0}));
    let answer = ws
        .ask(json!({"op": "send", "rid": 2, "to": {"broadcast": true}, "event": {"type": "a.b"}}))
        .await;
    assert_eq!(answer["op"], "ok", "{answer}");
    let refusals = [
        (
            json!({"room": "a..b"}),
            json!({"type": "a.b"}),
            "invalid_subject",
        ),
        (
            json!({"broadcast": false}),
            json!({"type": "a.b"}),
            "bad_request",
        ),
        (json!({"user": "u1"}), json!({"data": 1}), "invalid_event"),
        (json!({"team": "x"}), json!({"type": "a.b"}), "bad_frame"),
    ];
    for (rid, (to, event, code)) in (10..).zip(refusals) {
        let answer = ws
            .ask(json!({"op": "send", "rid": rid, "to": to, "event": event}))
            .await;
        assert_eq!(answer["op"], "error", "{answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
    }
    let mut limited = Ws::connect_with_token(&server, Some(LIMITED_TOKEN)).await;
    let answer = limited
        .ask(json!({"op": "send", "rid": 1, "to": {"user": "u1"}, "event": {"type": "billing.paid"}}))
        .await;
    assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_and_cli_send() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let client = Client::connect(ClientOptions::new(server.url()).token(SERVICE_TOKEN))
        .await
        .unwrap();
    let sent = client
        .publish_to_user("u1", "notification.created", &json!({"text": "hi"}))
        .await
        .unwrap();
    assert_eq!(sent.delivered, 0);
    client
        .publish_to_room("chat.general", "chat.message", &json!(1))
        .await
        .unwrap();
    client
        .broadcast("maintenance.scheduled", &json!(null))
        .await
        .unwrap();
    let refused = client
        .send_realtime(
            &Target::Room("a..b".into()),
            herald_client::NewEvent::new("a.b", &1).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("invalid_subject"), "{refused}");
    client.close().await;

    for args in [
        &[
            "send",
            "--user",
            "u1",
            "notification.created",
            r#"{"text":"hi"}"#,
        ][..],
        &["send", "--room", "chat.general", "chat.message"][..],
        &["send", "--broadcast", "maintenance.scheduled", "{}"][..],
    ] {
        let output = server.cli(args, Some(SERVICE_TOKEN));
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(answer["delivered"], 0, "{args:?}");
    }
    let output = server.cli(&["send", "--user", "u1", "--room", "chat.a", "a.b"], None);
    assert!(!output.status.success());
}

/// Engine.IO v4 long-polling by hand: enough of the Socket.IO protocol to see the gateway
/// mounted, the handshake auth, an ack and a delivery.
struct Polling {
    url: String,
    http: reqwest::Client,
}

impl Polling {
    async fn open(server: &Server) -> Polling {
        let base = format!("{}/socket.io/?EIO=4&transport=polling", server.url());
        let handshake = http()
            .get(&base)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let open: Value =
            serde_json::from_str(handshake.strip_prefix('0').expect(&handshake)).unwrap();
        let sid = open["sid"].as_str().unwrap();
        Polling {
            url: format!("{base}&sid={sid}"),
            http: http(),
        }
    }

    /// Sends one Socket.IO packet (as an engine.io `4` message).
    async fn send(&self, packet: &str) {
        let response = self
            .http
            .post(&self.url)
            .body(format!("4{packet}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    /// The next Socket.IO packets (engine.io `4` messages), without their `4`.
    async fn receive(&self) -> Vec<String> {
        loop {
            let body = self
                .http
                .get(&self.url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let packets: Vec<String> = body
                .split('\u{1e}')
                .filter_map(|packet| packet.strip_prefix('4').map(str::to_owned))
                .collect();
            if !packets.is_empty() {
                return packets;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_handshake_join_and_delivery_over_long_polling() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());

    for (auth, expect) in [
        (
            json!({"token": browser_token("u1", -3600)}),
            "unauthorized: the token has expired",
        ),
        (
            json!({"token": "not.a.token"}),
            "unauthorized: the token is malformed",
        ),
        (json!({}), "unauthorized: a token is required"),
        // Hostile handshakes: refused with a reason, never a crash.
        (
            json!({"token": "x".repeat(20_000)}),
            "unauthorized: the token is longer than",
        ),
        (json!([1, 2, 3]), "unauthorized: a token is required"),
        (
            json!({"token": {"a": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}}),
            "bad_request: auth.token must be a string",
        ),
        (
            json!({"token": "a.b.c"}),
            "unauthorized: the token is malformed",
        ),
    ] {
        let socket = Polling::open(&server).await;
        socket.send(&format!("0{auth}")).await;
        let packets = socket.receive().await;
        let error: Value =
            serde_json::from_str(packets[0].strip_prefix('4').expect(&packets[0])).unwrap();
        assert!(
            error["message"].as_str().unwrap().starts_with(expect),
            "{error}"
        );
    }

    let socket = Polling::open(&server).await;
    socket
        .send(&format!("0{}", json!({"token": browser_token("u1", 3600)})))
        .await;
    let packets = socket.receive().await;
    assert!(packets[0].starts_with("0{\"sid\""), "{packets:?}");
    socket.send(r#"21["join","chat.general"]"#).await;
    assert_eq!(socket.receive().await, [r#"31[{"ok":true}]"#]);
    socket.send(r#"22["join","admin.ops"]"#).await;
    let refused = socket.receive().await;
    assert!(
        refused[0].starts_with(r#"32[{"error":{"code":"forbidden""#),
        "{refused:?}"
    );

    let (status, sent) = post(
        &server,
        "/v1/realtime/rooms/chat.general",
        SERVICE_TOKEN,
        json!({"type": "chat.message", "data": {"text": "hi"}}),
    )
    .await;
    assert_eq!(
        (status, sent["delivered"].as_u64()),
        (200, Some(1)),
        "{sent}"
    );
    let packets = socket.receive().await;
    let event: Value = serde_json::from_str(packets[0].strip_prefix('2').unwrap()).unwrap();
    assert_eq!(event[0], "chat.message");
    assert_eq!(event[1], json!({"text": "hi"}));
    assert_eq!(event[2]["id"], sent["id"]);
    assert_eq!(event[2]["source"], "api");

    let (_, stats) = call(
        http()
            .get(format!("{}/v1/stats", server.url()))
            .bearer_auth(SERVICE_TOKEN),
    )
    .await;
    assert_eq!(
        stats["realtime"],
        json!({"connections": 1, "users": 1, "roomsTotal": 1,
               "rooms": [{"name": "chat.general", "members": 1}]})
    );
}
