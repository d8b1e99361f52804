//! Service tokens against the real server (PRODUCT.md §8): who may connect, publish, subscribe
//! and manage groups, over HTTP and /v1/ws; `source` forced to the token's name; refusals that
//! store nothing; and no listening off loopback with auth off unless `--insecure`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Server, Ws, call, http};

const BILLING: &str = "billing-secret-0123456789";
const ADMIN: &str = "admin-secret-0123456789";

const CONFIG: &str = r#"
[[auth.tokens]]
name = "billing"
token = "billing-secret-0123456789"
publish = ["billing.>"]
subscribe = ["order.*"]
admin = ["billing-workers"]

[[auth.tokens]]
name = "ops"
token = "admin-secret-0123456789"
publish = [">"]
subscribe = [">"]
admin = [">"]
"#;

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--fsync", "interval", "--config", config.to_str().unwrap()],
    );
    (dir, server)
}

fn with_token(request: reqwest::RequestBuilder, token: &str) -> reqwest::RequestBuilder {
    request.header("authorization", format!("Bearer {token}"))
}

async fn publish_as(server: &Server, token: &str, body: Value) -> (u16, Value) {
    call(with_token(
        http()
            .post(format!("{}/v1/events", server.url()))
            .json(&body),
        token,
    ))
    .await
}

async fn get_as(server: &Server, token: &str, path: &str) -> (u16, Value) {
    call(with_token(
        http().get(format!("{}{path}", server.url())),
        token,
    ))
    .await
}

/// The stream's stored events, read with the admin token (none when it does not exist).
async fn stored(server: &Server, stream: &str) -> Vec<Value> {
    let (status, page) = get_as(
        server,
        ADMIN,
        &format!("/v1/streams/{stream}/events?limit=10000"),
    )
    .await;
    match status {
        404 => Vec::new(),
        200 => page["events"].as_array().unwrap().clone(),
        other => panic!("{other}: {page}"),
    }
}

fn assert_code(answer: &(u16, Value), status: u16, code: &str) -> String {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"]["code"], code, "{}", answer.1);
    answer.1["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn requests_without_a_known_token_are_unauthorized() {
    let (_dir, server) = start();
    let event = json!({"type": "billing.invoiced"});
    let response = http()
        .post(format!("{}/v1/events", server.url()))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers().get("www-authenticate").unwrap(),
        "Bearer"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");

    let answer = publish_as(&server, "billing-secret-0123456780", event.clone()).await;
    let message = assert_code(&answer, 401, "unauthorized");
    assert!(
        !message.contains("0123456780"),
        "no secret echoed: {message}"
    );
    let answer = call(
        http()
            .post(format!("{}/v1/events", server.url()))
            .header("authorization", format!("Basic {BILLING}"))
            .json(&event),
    )
    .await;
    let message = assert_code(&answer, 401, "unauthorized");
    assert!(!message.contains(BILLING), "no secret echoed: {message}");
    for path in ["/v1/streams", "/v1/groups", "/v1/stats", "/v1/groups/x"] {
        let answer = call(http().get(format!("{}{path}", server.url()))).await;
        assert_code(&answer, 401, "unauthorized");
    }
    // Probes need no token.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = http()
            .get(format!("{}{path}", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    assert!(
        stored(&server, "billing").await.is_empty(),
        "nothing stored"
    );
}

#[tokio::test]
async fn publishing_is_limited_to_the_tokens_patterns_and_source_is_its_name() {
    let (_dir, server) = start();
    let (status, result) = publish_as(
        &server,
        BILLING,
        json!({"type": "billing.invoiced", "source": "shipping", "data": 1}),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["seq"], 1);
    let (status, _) = publish_as(&server, BILLING, json!({"type": "billing.paid"})).await;
    assert_eq!(status, 200);
    let events = stored(&server, "billing").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["source"], "billing", "forced, not the body's");
    assert_eq!(events[1]["source"], "billing", "set when absent");

    let answer = publish_as(&server, BILLING, json!({"type": "order.created"})).await;
    let message = assert_code(&answer, 403, "forbidden");
    assert!(message.contains("order.created"), "{message}");
    assert!(message.contains("billing.>"), "names its grants: {message}");
    assert!(stored(&server, "order").await.is_empty());

    let batch = json!([
        {"type": "billing.refunded"},
        {"type": "order.cancelled"},
        {"type": "billing.refunded"}
    ]);
    let answer = publish_as(&server, BILLING, batch).await;
    let message = assert_code(&answer, 403, "forbidden");
    assert!(message.contains("order.cancelled"), "{message}");
    assert_eq!(answer.1["error"]["details"]["index"], 1, "{}", answer.1);
    assert_eq!(stored(&server, "billing").await.len(), 2, "nothing stored");
    assert!(stored(&server, "order").await.is_empty());

    // The admin token may publish anything, and its name is the source.
    let (status, _) = publish_as(&server, ADMIN, json!({"type": "order.created"})).await;
    assert_eq!(status, 200);
    assert_eq!(stored(&server, "order").await[0]["source"], "ops");
}

#[tokio::test]
async fn replay_needs_rights_on_the_stream() {
    let (_dir, server) = start();
    publish_as(&server, ADMIN, json!({"type": "payroll.run"})).await;
    let answer = get_as(&server, BILLING, "/v1/streams/payroll/events").await;
    assert_code(&answer, 403, "forbidden");
    let (status, page) = get_as(&server, ADMIN, "/v1/streams/payroll/events").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn websocket_connections_need_a_token_and_subscriptions_stay_within_it() {
    let (_dir, server) = start();
    let refused = Ws::try_connect(&server.ws_url(), None).await.err();
    let (status, body) = refused.expect("no token: the upgrade is refused");
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    let url = format!("{}?token=wrong-secret-0123456789", server.ws_url());
    let (status, _) = Ws::try_connect(&url, None).await.err().expect("refused");
    assert_eq!(status, 401);

    let url = format!("{}?token={BILLING}", server.ws_url());
    let mut ws = Ws::try_connect(&url, None)
        .await
        .expect("a query token works");
    assert_eq!(ws.welcome["identity"], "billing");
    let header = Ws::connect_with_token(&server, Some(ADMIN)).await;
    assert_eq!(header.welcome["identity"], "ops");

    let sid = ws.subscribe(1, json!({"pattern": "order.*"})).await;
    assert!(sid > 0);
    for (rid, pattern) in [(2, "order.>"), (3, "billing.>"), (4, ">")] {
        let answer = ws
            .ask(json!({"op": "sub", "rid": rid, "pattern": pattern}))
            .await;
        assert_eq!(answer["op"], "error", "{pattern}: {answer}");
        assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(pattern),
            "{answer}"
        );
    }
    let group = ws
        .ask(
            json!({"op": "sub", "rid": 5, "pattern": "order.*", "group": "billing-workers",
                     "from": "earliest"}),
        )
        .await;
    assert_eq!(group["op"], "subscribed", "{group}");

    // Publishing over /v1/ws: the same patterns, the same forced source.
    let answer = ws
        .publish(6, json!([{"type": "billing.sent", "source": "mallory"}]))
        .await;
    assert_eq!(answer["op"], "puback", "{answer}");
    let answer = ws
        .publish(
            7,
            json!([{"type": "billing.sent"}, {"type": "order.created"}]),
        )
        .await;
    assert_eq!(answer["op"], "error", "{answer}");
    assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
    assert_eq!(answer["error"]["details"]["index"], 1, "{answer}");
    let events = stored(&server, "billing").await;
    assert_eq!(events.len(), 1, "the refused frame stored nothing");
    assert_eq!(events[0]["source"], "billing");
    assert!(stored(&server, "order").await.is_empty());

    // The live subscription still works: an order event published by ops reaches it.
    let mut ops = header;
    let answer = ops.publish(1, json!([{"type": "order.created"}])).await;
    assert_eq!(answer["op"], "puback", "{answer}");
    let event = ws.next_event().await;
    assert_eq!(event["event"]["type"], "order.created", "{event}");
    assert_eq!(event["event"]["source"], "ops");
}

#[tokio::test]
async fn groups_are_managed_only_within_admin_patterns() {
    let (_dir, server) = start();
    let url = |name: &str| format!("{}/v1/groups/{name}", server.url());
    let definition = json!({"pattern": "order.*"});
    let (status, group) = call(with_token(
        http().put(url("billing-workers")).json(&definition),
        BILLING,
    ))
    .await;
    assert_eq!(status, 200, "{group}");
    assert_eq!(group["name"], "billing-workers");

    let answer = call(with_token(
        http().put(url("shipping-workers")).json(&definition),
        BILLING,
    ))
    .await;
    let message = assert_code(&answer, 403, "forbidden");
    assert!(message.contains("shipping-workers"), "{message}");
    let answer = get_as(&server, ADMIN, "/v1/groups/shipping-workers").await;
    assert_code(&answer, 404, "not_found");

    let (status, _) = call(with_token(
        http().put(url("shipping-workers")).json(&definition),
        ADMIN,
    ))
    .await;
    assert_eq!(status, 200);
    let answer = call(with_token(http().delete(url("shipping-workers")), BILLING)).await;
    assert_code(&answer, 403, "forbidden");
    for suffix in ["/dead-letters", "/dead-letters/redrive"] {
        let request = if suffix.ends_with("redrive") {
            http().post(format!("{}{suffix}", url("shipping-workers")))
        } else {
            http().delete(format!("{}{suffix}", url("shipping-workers")))
        };
        let answer = call(with_token(request, BILLING)).await;
        assert_code(&answer, 403, "forbidden");
    }
    let (status, _) = get_as(&server, ADMIN, "/v1/groups/shipping-workers").await;
    assert_eq!(status, 200, "still there");

    let (status, _) = call(with_token(http().delete(url("billing-workers")), BILLING)).await;
    assert_eq!(status, 204);
    let (status, list) = get_as(&server, BILLING, "/v1/groups").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|group| group["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["shipping-workers"]);
}

/// Runs `herald serve` with `args` until it exits (failing after the wait); its status and
/// stderr.
fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + support::WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("herald serve did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

#[tokio::test]
async fn no_listening_off_loopback_with_auth_off_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (status, stderr) = run_to_exit(&[
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("--insecure"), "{stderr}");
    assert!(stderr.contains("0.0.0.0:0"), "{stderr}");

    let server = Server::start_on("0.0.0.0:0", &data, &["--insecure"], &[]);
    let local = format!("http://127.0.0.1:{}/healthz", server.addr.port());
    let (status, _) = call(http().get(local)).await;
    assert_eq!(status, 200);
    drop(server);

    // With tokens configured, no --insecure is needed.
    let config = dir.path().join("herald.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let server = Server::start_on(
        "0.0.0.0:0",
        &data,
        &["--config", config.to_str().unwrap()],
        &[],
    );
    let local = format!("http://127.0.0.1:{}/v1/streams", server.addr.port());
    let answer = call(http().get(&local)).await;
    assert_code(&answer, 401, "unauthorized");
}
