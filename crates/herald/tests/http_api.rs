//! The HTTP API of PRODUCT.md §7 against the real server: publishing (Herald JSON and
//! CloudEvents), every kind of bad input answered with its documented code and nothing stored,
//! replay paging, streams, groups, dead letters, health, metrics and the OpenAPI document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::{Server, Ws, call, http};

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "interval"]);
    (dir, server)
}

async fn publish(server: &Server, body: Value) -> (u16, Value) {
    call(
        http()
            .post(format!("{}/v1/events", server.url()))
            .json(&body),
    )
    .await
}

async fn publish_raw(server: &Server, content_type: &str, body: &str) -> (u16, Value) {
    call(
        http()
            .post(format!("{}/v1/events", server.url()))
            .header("content-type", content_type)
            .body(body.to_owned()),
    )
    .await
}

async fn get(server: &Server, path: &str) -> (u16, Value) {
    call(http().get(format!("{}{path}", server.url()))).await
}

/// Checks the status and that the body is exactly `{"error":{"code","message"[,"details"]}}`
/// with the code; returns the message.
fn assert_error(answer: &(u16, Value), status: u16, code: &str) -> String {
    let (got_status, body) = answer;
    assert_eq!(*got_status, status, "{body}");
    let object = body.as_object().expect("a JSON object body");
    assert_eq!(object.len(), 1, "only `error` at the top: {body}");
    let error = body["error"].as_object().expect("an error object");
    assert_eq!(error["code"], code, "{body}");
    assert!(
        error
            .keys()
            .all(|key| ["code", "message", "details"].contains(&key.as_str())),
        "{body}"
    );
    let message = error["message"].as_str().expect("a message").to_owned();
    assert!(!message.is_empty());
    message
}

/// The stream's `lastSeq`, 0 when it does not exist.
async fn last_seq(server: &Server, stream: &str) -> u64 {
    match get(server, &format!("/v1/streams/{stream}")).await {
        (200, info) => info["lastSeq"].as_u64().unwrap(),
        (404, _) => 0,
        other => panic!("{other:?}"),
    }
}

/// Every stored event of the stream, through the replay API.
async fn replay_all(server: &Server, stream: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let (status, page) = get(
            server,
            &format!("/v1/streams/{stream}/events?from={from}&limit=1000"),
        )
        .await;
        if status == 404 {
            return events;
        }
        assert_eq!(status, 200, "{page}");
        let batch = page["events"].as_array().unwrap();
        if batch.is_empty() {
            return events;
        }
        events.extend(batch.iter().cloned());
        from = page["next"].as_u64().unwrap();
    }
}

#[tokio::test]
async fn one_event_and_an_array_are_stored_in_order() {
    let (_dir, server) = start();
    let (status, one) = publish(
        &server,
        json!({"type": "order.created", "source": "shop", "key": "o-1", "data": {"n": 0}}),
    )
    .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["stream"], "order");
    assert_eq!(one["seq"], 1);
    assert_eq!(one["duplicate"], false);
    let generated = one["id"].as_str().unwrap().to_owned();
    assert!(!generated.is_empty(), "the server makes an id");

    let batch: Vec<Value> = (1..=3)
        .map(|n| json!({"id": format!("b-{n}"), "type": "order.paid", "data": {"n": n}}))
        .collect();
    let (status, results) = publish(&server, Value::from(batch)).await;
    assert_eq!(status, 200, "{results}");
    let results = results.as_array().expect("an array for an array");
    assert_eq!(results.len(), 3);
    for (index, result) in results.iter().enumerate() {
        assert_eq!(result["id"], format!("b-{}", index + 1));
        assert_eq!(result["stream"], "order");
        assert_eq!(result["seq"], index as u64 + 2, "results in request order");
        assert_eq!(result["duplicate"], false);
    }

    let stored = replay_all(&server, "order").await;
    assert_eq!(stored.len(), 4);
    assert_eq!(stored[0]["id"], generated.as_str());
    assert_eq!(stored[0]["source"], "shop");
    assert_eq!(stored[0]["key"], "o-1");
    assert_eq!(stored[0]["version"], "1.0", "the default version");
    assert!(stored[0]["timestamp"].is_string(), "receive time set");
    for (index, event) in stored.iter().enumerate() {
        assert_eq!(event["stream"], "order");
        assert_eq!(event["seq"], index as u64 + 1);
        assert_eq!(event["data"]["n"], index as u64);
    }
}

#[tokio::test]
async fn cloudevents_structured_batch_and_binary_are_mapped_field_by_field() {
    let (_dir, server) = start();
    let structured = json!({
        "specversion": "1.0", "id": "ce-1", "source": "billing", "type": "invoice.issued",
        "time": "2026-01-02T03:04:05Z", "partitionkey": "inv-7", "correlationid": "req-1",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "userid": "user-9", "datacontenttype": "application/json", "data": {"total": 12}
    });
    let answer = publish_raw(
        &server,
        "application/cloudevents+json",
        &structured.to_string(),
    )
    .await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(
        answer.1,
        json!({"id": "ce-1", "stream": "invoice", "seq": 1, "duplicate": false})
    );

    let batch = json!([
        {"specversion": "1.0", "id": "ce-2", "source": "billing", "type": "invoice.paid"},
        {"specversion": "1.0", "id": "ce-3", "source": "billing", "type": "invoice.voided",
         "data": [1, 2]}
    ]);
    let answer = publish_raw(
        &server,
        "application/cloudevents-batch+json; charset=utf-8",
        &batch.to_string(),
    )
    .await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    let seqs: Vec<u64> = answer
        .1
        .as_array()
        .unwrap()
        .iter()
        .map(|result| result["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3]);

    let answer = call(
        http()
            .post(format!("{}/v1/events", server.url()))
            .header("content-type", "application/json")
            .header("ce-specversion", "1.0")
            .header("ce-id", "ce-4")
            .header("ce-source", "billing")
            .header("ce-type", "invoice.sent")
            .header("ce-time", "2026-01-02T03:04:06Z")
            .header("ce-partitionkey", "inv-8")
            .body(r#"{"to":"a@example.com"}"#),
    )
    .await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(answer.1["id"], "ce-4");
    assert_eq!(answer.1["seq"], 4);

    let stored = replay_all(&server, "invoice").await;
    assert_eq!(stored.len(), 4);
    let first = &stored[0];
    assert_eq!(first["type"], "invoice.issued");
    assert_eq!(first["source"], "billing");
    assert_eq!(
        first["timestamp"], "2026-01-02T03:04:05Z",
        "time ↔ timestamp"
    );
    assert_eq!(first["key"], "inv-7", "partitionkey ↔ key");
    assert_eq!(first["correlationId"], "req-1");
    assert_eq!(
        first["traceId"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(first["userId"], "user-9");
    assert_eq!(first["data"], json!({"total": 12}));
    assert_eq!(stored[1]["type"], "invoice.paid");
    assert_eq!(stored[2]["data"], json!([1, 2]));
    let binary = &stored[3];
    assert_eq!(binary["type"], "invoice.sent");
    assert_eq!(binary["timestamp"], "2026-01-02T03:04:06Z");
    assert_eq!(binary["key"], "inv-8");
    assert_eq!(binary["data"], json!({"to": "a@example.com"}));
}

#[tokio::test]
async fn bad_input_is_a_documented_4xx_and_stores_nothing() {
    let (_dir, server) = start();
    let json = "application/json";
    // (content type, body, status, code, a part the message must contain)
    let cases: [(&str, &str, u16, &str, &str); 9] = [
        (
            json,
            r#"{"type":"user.created","#,
            400,
            "bad_request",
            "not valid JSON",
        ),
        (json, "", 400, "bad_request", "not valid JSON"),
        (
            json,
            "[{\"type\":\"user.created\"},",
            400,
            "bad_request",
            "not valid JSON",
        ),
        (json, r#"{"type":5}"#, 400, "invalid_event", "\"type\""),
        (
            json,
            r#"{"type":"user.created","data":1,"metadata":{"k":1}}"#,
            400,
            "invalid_event",
            "metadata",
        ),
        (json, "42", 400, "invalid_event", "JSON object"),
        (
            json,
            r#"{"type":"user.created","colour":"red"}"#,
            400,
            "invalid_event",
            "colour",
        ),
        (
            json,
            r#"{"type":"user.cr$ated"}"#,
            400,
            "invalid_subject",
            "cr$ated",
        ),
        (
            "text/plain",
            r#"{"type":"user.created"}"#,
            415,
            "unsupported_media_type",
            "text/plain",
        ),
    ];
    for (content_type, body, status, code, part) in cases {
        let answer = publish_raw(&server, content_type, body).await;
        let message = assert_error(&answer, status, code);
        assert!(message.contains(part), "{body}: {message:?} lacks {part:?}");
    }
    let answer = publish(&server, json!({"type": "user..created"})).await;
    let message = assert_error(&answer, 400, "invalid_subject");
    assert!(message.contains("token 2"), "{message}");
    let answer = publish(&server, json!({"type": "user.created", "seq": 4})).await;
    assert_error(&answer, 400, "invalid_event");
    let answer = publish(&server, json!([])).await;
    assert_error(&answer, 400, "bad_request");
    assert_eq!(last_seq(&server, "user").await, 0, "nothing stored");
    let (status, _) = get(&server, "/v1/streams/user").await;
    assert_eq!(status, 404);

    // Still serving after all that.
    let (status, body) = publish(&server, json!({"type": "user.created"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["seq"], 1);
}

#[tokio::test]
async fn a_batch_with_one_invalid_event_stores_nothing_and_names_its_index() {
    let (_dir, server) = start();
    publish(&server, json!({"type": "cart.created", "id": "seed"})).await;
    assert_eq!(last_seq(&server, "cart").await, 1);

    let batch = json!([
        {"type": "cart.updated", "id": "x-0"},
        {"type": "cart.updated", "id": "x-1"},
        {"type": "cart.updated", "id": "x-2", "bogus": true},
        {"type": "cart.updated", "id": "x-3"}
    ]);
    let answer = publish(&server, batch).await;
    let message = assert_error(&answer, 400, "invalid_event");
    assert!(message.contains("bogus"), "{message}");
    assert_eq!(answer.1["error"]["details"]["index"], 2, "{}", answer.1);

    let batch = json!([
        {"type": "cart.updated"},
        {"type": "cart.updated"},
        {"type": "cart.up date"}
    ]);
    let answer = publish(&server, batch).await;
    let message = assert_error(&answer, 400, "invalid_subject");
    assert!(message.contains("up date"), "{message}");
    assert_eq!(answer.1["error"]["details"]["index"], 2, "{}", answer.1);

    assert_eq!(last_seq(&server, "cart").await, 1, "nothing stored");
    let stored = replay_all(&server, "cart").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["id"], "seed");
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("herald.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_event_over_the_configured_limit_is_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[limits]\nevent_bytes_max = 1024\n");
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--config", &config]);

    let (status, body) = publish(
        &server,
        json!({"type": "img.small", "data": "x".repeat(900)}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let answer = publish(
        &server,
        json!({"type": "img.big", "data": "x".repeat(2000)}),
    )
    .await;
    let message = assert_error(&answer, 413, "too_large");
    assert!(message.contains("1024"), "{message}");

    let batch = json!([
        {"type": "img.small"},
        {"type": "img.small"},
        {"type": "img.big", "data": "x".repeat(2000)}
    ]);
    let answer = publish(&server, batch).await;
    assert_error(&answer, 413, "too_large");
    assert_eq!(answer.1["error"]["details"]["index"], 2, "{}", answer.1);
    assert_eq!(
        last_seq(&server, "img").await,
        1,
        "only the small one stored"
    );
}

#[tokio::test]
async fn limits_come_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        dir.path(),
        &[],
        &[
            ("HERALD_LIMITS__EVENT_BYTES_MAX", "1024"),
            ("HERALD_LIMITS__REQUEST_BYTES_MAX", "4096"),
        ],
    );
    let answer = publish(
        &server,
        json!({"type": "img.big", "data": "x".repeat(2000)}),
    )
    .await;
    assert_error(&answer, 413, "too_large");
    let batch: Vec<Value> = (0..10)
        .map(|_| json!({"type": "img.small", "data": "x".repeat(800)}))
        .collect();
    let answer = publish(&server, Value::from(batch)).await;
    let message = assert_error(&answer, 413, "too_large");
    assert!(message.contains("4096"), "{message}");
    assert_eq!(last_seq(&server, "img").await, 0);
}

#[tokio::test]
async fn the_same_id_twice_is_a_duplicate_with_the_original_seq() {
    let (_dir, server) = start();
    publish(&server, json!({"type": "pay.done", "id": "other"})).await;
    let (status, first) = publish(
        &server,
        json!({"type": "pay.done", "id": "pay-1", "data": 1}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(first["duplicate"], false);
    assert_eq!(first["seq"], 2);
    let (status, second) = publish(
        &server,
        json!({"type": "pay.done", "id": "pay-1", "data": 2}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["duplicate"], true);
    assert_eq!(second["seq"], 2, "the original seq");
    assert_eq!(second["id"], "pay-1");
    let (_, batch) = publish(
        &server,
        json!([{"type": "pay.done", "id": "pay-2"}, {"type": "pay.done", "id": "pay-1"}]),
    )
    .await;
    assert_eq!(batch[0]["duplicate"], false);
    assert_eq!(batch[0]["seq"], 3);
    assert_eq!(batch[1]["duplicate"], true);
    assert_eq!(batch[1]["seq"], 2);
    let stored = replay_all(&server, "pay").await;
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[1]["data"], 1, "the first one is kept");
    let (_, info) = get(&server, "/v1/streams/pay").await;
    assert_eq!(info["duplicates"], 2);
}

#[tokio::test]
async fn an_id_the_server_generated_sent_back_is_a_duplicate() {
    let (_dir, server) = start();
    let (_, first) = publish(&server, json!({"type": "pay.done", "data": 1})).await;
    let generated = first["id"].as_str().expect("a generated id").to_owned();
    let (status, again) = publish(
        &server,
        json!({"type": "pay.done", "id": generated, "data": 2}),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["duplicate"], true,
        "PRODUCT.md section 3: the id was seen"
    );
    assert_eq!(again["seq"], first["seq"]);
    assert_eq!(replay_all(&server, "pay").await.len(), 1);
}

#[tokio::test]
async fn replay_pages_through_a_stream() {
    let (_dir, server) = start();
    let batch: Vec<Value> = (1..=25)
        .map(|n| json!({"type": "log.line", "data": n}))
        .collect();
    let (status, _) = publish(&server, Value::from(batch)).await;
    assert_eq!(status, 200);

    let mut from = 1;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (status, page) = get(
            &server,
            &format!("/v1/streams/log/events?from={from}&limit=10"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["stream"], "log");
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            assert_eq!(page["next"], from, "an empty page keeps its position");
            break;
        }
        pages += 1;
        assert!(events.len() <= 10);
        for event in events {
            seen.push(event["seq"].as_u64().unwrap());
            assert_eq!(event["data"], event["seq"]);
        }
        from = page["next"].as_u64().unwrap();
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (1..=25).collect::<Vec<u64>>());

    let (_, page) = get(&server, "/v1/streams/log/events").await;
    assert_eq!(
        page["events"].as_array().unwrap().len(),
        25,
        "from the start by default"
    );
    let (_, page) = get(&server, "/v1/streams/log/events?from=24").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    assert_eq!(page["next"], 26);

    let answer = get(&server, "/v1/streams/log/events?limit=0").await;
    assert_error(&answer, 400, "bad_request");
    let answer = get(&server, "/v1/streams/log/events?from=abc").await;
    assert_error(&answer, 400, "bad_request");
    let answer = get(&server, "/v1/streams/log/events?colour=red").await;
    let message = assert_error(&answer, 400, "bad_request");
    assert!(message.contains("colour"), "{message}");
    let answer = get(&server, "/v1/streams/nope/events").await;
    assert_error(&answer, 404, "not_found");
}

#[tokio::test]
async fn streams_are_listed_with_their_counters() {
    let (_dir, server) = start();
    publish(
        &server,
        json!([{"type": "a.x"}, {"type": "a.y"}, {"type": "b.x"}]),
    )
    .await;
    let (status, list) = get(&server, "/v1/streams").await;
    assert_eq!(status, 200);
    let mut names: Vec<(String, u64)> = list["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["lastSeq"].as_u64().unwrap(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(names, [("a".to_owned(), 2), ("b".to_owned(), 1)]);

    let (status, one) = get(&server, "/v1/streams/a").await;
    assert_eq!(status, 200);
    assert_eq!(one["name"], "a");
    assert_eq!(one["firstSeq"], 1);
    assert_eq!(one["lastSeq"], 2);
    assert_eq!(one["events"], 2);
    assert_eq!(one["published"], 2);
    assert!(one["bytes"].as_u64().unwrap() > 0);

    let answer = get(&server, "/v1/streams/zzz").await;
    let message = assert_error(&answer, 404, "not_found");
    assert!(message.contains("zzz"), "{message}");
}

#[tokio::test]
async fn groups_are_created_confirmed_refused_on_conflict_and_deleted() {
    let (_dir, server) = start();
    let url = format!("{}/v1/groups/mailer", server.url());
    let (status, group) = call(
        http()
            .put(&url)
            .json(&json!({"pattern": "user.*", "from": "earliest"})),
    )
    .await;
    assert_eq!(status, 200, "{group}");
    assert_eq!(group["name"], "mailer");
    assert_eq!(group["pattern"], "user.*");
    assert_eq!(group["members"], 0);

    let (status, again) = call(http().put(&url).json(&json!({"pattern": "user.*"}))).await;
    assert_eq!(status, 200, "the same pattern confirms: {again}");

    let answer = call(http().put(&url).json(&json!({"pattern": "user.>"}))).await;
    let message = assert_error(&answer, 409, "conflict");
    assert!(message.contains("user.*"), "{message}");

    publish(
        &server,
        json!([{"type": "user.created"}, {"type": "user.deleted"}]),
    )
    .await;
    let (status, group) = call(http().get(&url)).await;
    assert_eq!(status, 200);
    assert_eq!(group["pattern"], "user.*", "the pattern did not change");
    assert_eq!(group["lag"], 2, "from earliest: both events are waiting");
    let (status, list) = get(&server, "/v1/groups").await;
    assert_eq!(status, 200);
    let groups = list["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["name"], "mailer");

    let answer = call(
        http()
            .put(&url)
            .json(&json!({"pattern": "user.*", "colour": 1})),
    )
    .await;
    let message = assert_error(&answer, 400, "bad_request");
    assert!(message.contains("colour"), "{message}");
    let answer = call(
        http()
            .put(format!("{}/v1/groups/other", server.url()))
            .json(&json!({"pattern": "user..x"})),
    )
    .await;
    assert_error(&answer, 400, "invalid_subject");

    let (status, body) = call(http().delete(&url)).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(body, Value::Null, "no body");
    let answer = call(http().get(&url)).await;
    assert_error(&answer, 404, "not_found");
    let answer = call(http().delete(&url)).await;
    assert_error(&answer, 404, "not_found");
    let (_, list) = get(&server, "/v1/groups").await;
    assert_eq!(list["groups"], json!([]));
}

#[tokio::test]
async fn dead_letters_of_an_unknown_group_are_not_found() {
    let (_dir, server) = start();
    let base = format!("{}/v1/groups/ghost/dead-letters", server.url());
    for request in [
        http().get(&base),
        http().post(format!("{base}/redrive")),
        http().delete(&base),
    ] {
        let answer = call(request).await;
        let message = assert_error(&answer, 404, "not_found");
        assert!(message.contains("ghost"), "{message}");
    }

    let url = format!("{}/v1/groups/real", server.url());
    let (status, _) = call(http().put(&url).json(&json!({"pattern": "a.*"}))).await;
    assert_eq!(status, 200);
    let base = format!("{url}/dead-letters");
    let (status, list) = call(http().get(&base)).await;
    assert_eq!((status, list), (200, json!({"deadLetters": []})));
    let (status, redriven) = call(http().post(format!("{base}/redrive"))).await;
    assert_eq!((status, redriven), (200, json!({"redriven": 0})));
    let (status, purged) = call(http().delete(&base)).await;
    assert_eq!((status, purged), (200, json!({"purged": 0})));
}

#[tokio::test]
async fn health_and_readiness() {
    let (_dir, server) = start();
    let (status, body) = get(&server, "/healthz").await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, body) = get(&server, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "healthy");
    let parts = body["parts"].as_array().unwrap();
    for name in ["engine", "server", "connections"] {
        let part = parts
            .iter()
            .find(|part| part["name"] == name)
            .unwrap_or_else(|| panic!("no part {name}: {body}"));
        assert_eq!(part["status"], "healthy", "{body}");
    }
}

/// The value of the metric line named exactly `name` (with its labels).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map(|value| value.trim().parse().unwrap())
}

async fn metrics_text(server: &Server) -> String {
    let response = http()
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn metrics_count_publishes_and_connections() {
    let (_dir, server) = start();
    publish(
        &server,
        json!([{"type": "order.a"}, {"type": "order.b"}, {"type": "order.c"}]),
    )
    .await;
    publish(&server, json!({"type": "user.a"})).await;
    publish(&server, json!({"type": "order.bad", "bogus": 1})).await;
    let ws = Ws::connect(&server).await;

    let text = metrics_text(&server).await;
    assert_eq!(
        metric(&text, "herald_published_total{stream=\"order\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "herald_published_total{stream=\"user\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric(&text, "herald_connections"), Some(1.0), "{text}");
    assert!(text.contains("herald_publish_latency_seconds"), "{text}");
    assert!(
        text.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .all(|line| line.starts_with("herald_")),
        "every metric has the prefix:\n{text}"
    );

    drop(ws);
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        let text = metrics_text(&server).await;
        if metric(&text, "herald_connections") == Some(0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "connection never closed:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_openapi_document_describes_the_api() {
    let (_dir, server) = start();
    let (status, document) = get(&server, "/openapi.json").await;
    assert_eq!(status, 200);
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3."),
        "{document}"
    );
    let paths = document["paths"].as_object().expect("paths");
    for (path, methods) in [
        ("/v1/events", &["post"][..]),
        ("/v1/streams", &["get"]),
        ("/v1/streams/{name}", &["get"]),
        ("/v1/streams/{name}/events", &["get"]),
        ("/v1/groups", &["get"]),
        ("/v1/groups/{name}", &["get", "put", "delete"]),
        ("/v1/groups/{name}/dead-letters", &["get", "delete"]),
        ("/v1/groups/{name}/dead-letters/redrive", &["post"]),
        ("/v1/stats", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
    ] {
        let item = paths.get(path).unwrap_or_else(|| panic!("{path} missing"));
        for method in methods {
            assert!(item.get(*method).is_some(), "{method} {path} missing");
        }
    }
}

#[tokio::test]
async fn an_unknown_route_is_a_json_404() {
    let (_dir, server) = start();
    for path in ["/nope", "/v1/nothing/here", "/v1/streams/a/b/c"] {
        let answer = get(&server, path).await;
        let message = assert_error(&answer, 404, "not_found");
        assert!(message.contains(path), "{message}");
    }
}
