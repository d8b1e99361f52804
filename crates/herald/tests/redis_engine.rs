//! `herald serve --engine redis` end to end, on the machine's Redis (`HERALD_TEST_REDIS_URL`,
//! default `redis://127.0.0.1:6379`), each test under its own key prefix: a publish is stored
//! and delivered to a group; two processes on one Redis are one bus; real-time sends reach
//! browser sockets and room listeners on every process. Skipped loudly without a Redis, except
//! under `HERALD_REQUIRE_ENGINES=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::browser::{BrowserSocket, browser_token};
use support::{Server, WAIT, Ws, call, http};

/// The browsers' JWT secret of the real-time tests.
const JWT_SECRET: &str = "redis-e2e-secret-0123456789abcdef-0123";

/// The test Redis, or `None` after saying loudly why the test is skipped.
fn reachable_redis() -> Option<String> {
    let url = std::env::var("HERALD_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let answered = redis::Client::open(url.as_str())
        .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(2)))
        .and_then(|mut connection| redis::cmd("PING").query::<String>(&mut connection));
    match answered {
        Ok(_) => Some(url),
        Err(error) if std::env::var("HERALD_REQUIRE_ENGINES").is_ok_and(|v| v == "1") => {
            panic!("HERALD_REQUIRE_ENGINES=1 but no Redis answers at {url}: {error}")
        }
        Err(error) => {
            eprintln!("\n********\nSKIPPED: no Redis answers at {url} ({error})\n********\n");
            None
        }
    }
}

/// A key prefix of its own, whose keys are deleted when dropped.
struct Prefix {
    url: String,
    name: String,
}

impl Prefix {
    fn new(url: &str) -> Prefix {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Prefix {
            url: url.to_owned(),
            name: format!("herald-e2e-{}-{nanos}", std::process::id()),
        }
    }

    fn start_server(&self, dir: &tempfile::TempDir) -> Server {
        self.start_server_with(dir, &[])
    }

    fn start_server_with(&self, dir: &tempfile::TempDir, env: &[(&str, &str)]) -> Server {
        self.start_server_args(dir, &[], env)
    }

    fn start_server_args(
        &self,
        dir: &tempfile::TempDir,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut all = vec![("HERALD_REDIS__KEY_PREFIX", self.name.as_str())];
        all.extend_from_slice(env);
        let mut all_args = vec!["--engine", "redis", "--redis-url", &self.url];
        all_args.extend_from_slice(args);
        Server::start_with_env(dir.path(), &all_args, &all)
    }

    /// A process with browsers (HS256 tokens signed with [`JWT_SECRET`]) and a forwarding rule
    /// sending `alert.*` events to the user in `data.userId`.
    fn start_realtime_server(&self, dir: &tempfile::TempDir, env: &[(&str, &str)]) -> Server {
        let config = dir.path().join("herald.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[realtime.jwt]
algorithm = "HS256"
secret = "{JWT_SECRET}"
audience = "herald"

[[realtime.forward]]
pattern = "alert.*"
to = "user"
"#
            ),
        )
        .unwrap();
        self.start_server_args(dir, &["--config", config.to_str().unwrap()], env)
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut connection) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.name))
            .query(&mut connection)
            .unwrap_or_default();
        for key in keys {
            let _: Result<i64, _> = redis::cmd("DEL").arg(&key).query(&mut connection);
        }
    }
}

fn events(kind: &str, count: usize) -> Value {
    (0..count)
        .map(|i| json!({"type": kind, "data": {"i": i}}))
        .collect::<Vec<_>>()
        .into()
}

#[tokio::test]
async fn a_publish_is_stored_in_redis_and_delivered_to_a_group() {
    let Some(url) = reachable_redis() else { return };
    let prefix = Prefix::new(&url);
    let dir = tempfile::tempdir().unwrap();
    let server = prefix.start_server(&dir);
    // The banner names the engine (its lines follow the first, which `start` waited for).
    let deadline = std::time::Instant::now() + WAIT;
    while !server
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|line| line.contains("data:  redis at"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the banner names the engine"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = http();
    let (status, published) = call(
        client
            .post(format!("{}/v1/events", server.url()))
            .json(&events("invoice.issued", 3)),
    )
    .await;
    assert_eq!(status, 200, "{published}");
    let seqs: Vec<u64> = published["results"]
        .as_array()
        .or(published.as_array())
        .expect("per-event results")
        .iter()
        .map(|result| result["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);

    let mut member = Ws::connect(&server).await;
    let sid = member
        .subscribe(
            1,
            json!({"pattern": "invoice.*", "group": "billing", "from": "earliest"}),
        )
        .await;
    for seq in 1..=3u64 {
        let delivery = member.next_event().await;
        assert_eq!(delivery["event"]["seq"], seq);
        assert_eq!(delivery["attempt"], 1);
        let ok = member
            .ask(json!({"op": "ack", "rid": 10 + seq, "sid": sid, "deliveryId": delivery["deliveryId"]}))
            .await;
        assert_eq!(ok["op"], "ok", "{ok}");
    }
    let (_, group) = call(client.get(format!("{}/v1/groups/billing", server.url()))).await;
    assert_eq!(
        (group["acked"].as_u64(), group["inFlight"].as_u64()),
        (Some(3), Some(0)),
        "{group}"
    );
    let (_, stream) = call(client.get(format!("{}/v1/streams/invoice", server.url()))).await;
    assert_eq!(stream["lastSeq"], 3, "{stream}");
}

#[tokio::test]
async fn two_processes_on_one_redis_are_one_bus() {
    let Some(url) = reachable_redis() else { return };
    let prefix = Prefix::new(&url);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (prefix.start_server(&dir_a), prefix.start_server(&dir_b));
    // A live subscriber on B sees what is published on A.
    let mut watcher = Ws::connect(&b).await;
    watcher
        .subscribe(1, json!({"pattern": "order.*", "from": "earliest"}))
        .await;
    // Members of one group on A and on B share the work.
    let mut members = [Ws::connect(&a).await, Ws::connect(&b).await];
    let mut sids = Vec::new();
    for member in &mut members {
        sids.push(
            member
                .subscribe(
                    1,
                    json!({"pattern": "order.*", "group": "fulfil", "from": "earliest", "maxInFlight": 5}),
                )
                .await,
        );
    }
    let total = 40u64;
    let mut publisher = Ws::connect(&a).await;
    let answer = publisher
        .publish(1, events("order.placed", total as usize))
        .await;
    assert_eq!(answer["op"], "puback", "{answer}");
    for seq in 1..=total {
        assert_eq!(watcher.next_event().await["event"]["seq"], seq);
    }
    let mut acked = BTreeSet::new();
    let mut per_process = [0u64; 2];
    let deadline = tokio::time::Instant::now() + WAIT;
    while (acked.len() as u64) < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} acked",
            acked.len()
        );
        for (at, member) in members.iter_mut().enumerate() {
            let Ok(delivery) =
                tokio::time::timeout(Duration::from_millis(50), member.next_event()).await
            else {
                continue;
            };
            let seq = delivery["event"]["seq"].as_u64().unwrap();
            assert!(acked.insert(seq), "seq {seq} delivered twice");
            per_process[at] += 1;
            member
                .send(json!({"op": "ack", "sid": sids[at], "deliveryId": delivery["deliveryId"]}))
                .await;
        }
    }
    assert!(
        per_process.iter().all(|&count| count > 0),
        "both processes' members got work: {per_process:?}"
    );
}

/// Three processes on one Redis: a publisher on the first, members of one group on all three,
/// and a browser socket of one user on each. The third is killed (SIGKILL) mid-stream while its
/// member holds unacked deliveries: every event whose publish was acknowledged is still acked
/// by the group, after redelivery by the survivors (at least once; duplicates are counted and
/// reported), and events sent to the user still reach its sockets on the survivors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_mid_stream_loses_no_acknowledged_event() {
    let Some(url) = reachable_redis() else { return };
    let prefix = Prefix::new(&url);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // A short process TTL, so that the survivors notice the death within the test's patience.
    let mut servers: Vec<Server> = dirs
        .iter()
        .map(|dir| prefix.start_realtime_server(dir, &[("HERALD_REDIS__PROCESS_TTL", "1s")]))
        .collect();
    let token = browser_token(JWT_SECRET, "dana", json!({}));
    let mut sockets = Vec::new();
    for server in &servers {
        sockets.push(BrowserSocket::connect(server, &token).await);
    }
    let sent = send_realtime(&servers[0], "users/dana", "note.before", json!(0)).await;
    assert_eq!(sent["delivered"], 1, "{sent}");
    for socket in &mut sockets {
        assert_eq!(socket.next().await.event, "note.before");
    }
    let acked: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let deliveries: Arc<Mutex<BTreeMap<u64, u32>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicUsize::new(0));
    let mut members = Vec::new();
    for (at, server) in servers.iter().enumerate() {
        let mut member = Ws::connect(server).await;
        let sid = member
            .subscribe(
                1,
                json!({"pattern": "parcel.*", "group": "ship", "from": "earliest", "maxInFlight": 10}),
            )
            .await;
        let (acked, deliveries, done, held) = (
            acked.clone(),
            deliveries.clone(),
            done.clone(),
            held.clone(),
        );
        members.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let Ok(frame) =
                    tokio::time::timeout(Duration::from_millis(100), member.try_recv()).await
                else {
                    continue;
                };
                let Some(frame) = frame else { return };
                if frame["op"] != "event" {
                    continue;
                }
                let seq = frame["event"]["seq"].as_u64().unwrap();
                *deliveries.lock().unwrap().entry(seq).or_default() += 1;
                // The doomed process's member is still working on its even seqs when it dies.
                if at == 2 && seq % 2 == 0 {
                    held.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let ack = json!({"op": "ack", "sid": sid, "deliveryId": frame["deliveryId"]});
                if !member.try_send(ack).await {
                    return;
                }
                acked.lock().unwrap().insert(seq);
            }
        }));
    }
    let mut publisher = Ws::connect(&servers[0]).await;
    let mut published = BTreeSet::new();
    let mut frame = 0u64;
    let mut killed = false;
    // At least 20 frames of 10; the third process is killed after the tenth, once its member
    // holds unacked deliveries (the others learn of the stream within a discovery interval).
    while frame < 20 || !killed {
        if !killed && frame >= 10 && held.load(Ordering::Relaxed) > 0 {
            servers[2].kill();
            killed = true;
        }
        assert!(
            frame < 1000,
            "the doomed member never got a delivery to hold"
        );
        let answer = publisher
            .publish(100 + frame, events("parcel.sorted", 10))
            .await;
        assert_eq!(answer["op"], "puback", "{answer}");
        for result in answer["results"].as_array().unwrap() {
            published.insert(result["seq"].as_u64().unwrap());
        }
        frame += 1;
        if !killed && frame >= 10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(published, (1..=frame * 10).collect::<BTreeSet<u64>>());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let missing: Vec<u64> = published
            .difference(&acked.lock().unwrap())
            .copied()
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never acked: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done.store(true, Ordering::Relaxed);
    for member in members {
        let _ = member.await;
    }
    // Sends to the user, from either survivor, still reach its sockets on both; the socket on
    // the dead process is gone with it.
    sockets.truncate(2);
    for (from, n) in [(0, 1), (1, 2), (0, 3)] {
        send_realtime(&servers[from], "users/dana", "note.after", json!(n)).await;
    }
    // Each once; in order per sending process only, so compared as a set.
    for socket in &mut sockets {
        let mut received = Vec::new();
        for _ in 1..=3 {
            let next = socket.next().await;
            assert_eq!(next.event, "note.after");
            received.push(next.data.as_u64().unwrap());
        }
        received.sort_unstable();
        assert_eq!(received, [1, 2, 3]);
    }
    let deliveries = deliveries.lock().unwrap();
    let duplicates: u32 = deliveries.values().map(|count| count - 1).sum();
    eprintln!(
        "3 processes, one killed: {} events acked, {duplicates} delivered more than once",
        published.len()
    );
    assert!(
        duplicates as usize >= 1,
        "the killed member's held deliveries came again"
    );
}

/// `POST /v1/realtime/…` on process `server` with `event_type`; returns the answer's body.
async fn send_realtime(server: &Server, route: &str, event_type: &str, data: Value) -> Value {
    let (status, answer) = call(
        http()
            .post(format!("{}/v1/realtime/{route}", server.url()))
            .json(&json!({"type": event_type, "data": data})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// The event names a socket receives up to and including `sentinel`.
async fn names_until(socket: &mut BrowserSocket, sentinel: &str) -> Vec<String> {
    let mut names = Vec::new();
    loop {
        let received = socket.next().await;
        names.push(received.event.clone());
        if received.event == sentinel {
            return names;
        }
    }
}

/// Three processes on one Redis are one bus for browsers: a send to a user, a room or everyone
/// made on one process reaches the sockets (and, for a room, the `/v1/ws` connections
/// listening to it) on every process exactly once, and no one else; a forwarding rule's stored
/// event reaches each of the user's sockets once; `/v1/stats` adds the processes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_sends_reach_sockets_and_room_listeners_on_every_process() {
    let Some(url) = reachable_redis() else { return };
    let prefix = Prefix::new(&url);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let servers: Vec<Server> = dirs
        .iter()
        .map(|dir| prefix.start_realtime_server(dir, &[]))
        .collect();
    let token = |user: &str| browser_token(JWT_SECRET, user, json!({"rooms": ["chat.*"]}));
    let mut alice_here = BrowserSocket::connect(&servers[0], &token("alice")).await;
    let mut carol_here = BrowserSocket::connect(&servers[0], &token("carol")).await;
    let mut alice_there = BrowserSocket::connect(&servers[1], &token("alice")).await;
    let mut bob_there = BrowserSocket::connect(&servers[2], &token("bob")).await;
    for socket in [&mut alice_there, &mut bob_there] {
        assert_eq!(
            socket.request("join", json!("chat.lobby")).await,
            json!({"ok": true})
        );
    }
    let mut listener = Ws::connect(&servers[2]).await;
    let joined = listener
        .ask(json!({"op": "join", "rid": 1, "room": "chat.lobby"}))
        .await;
    assert_eq!(joined["op"], "ok", "{joined}");

    // `delivered` counts this process's sockets; the others' are reached all the same.
    let sent = send_realtime(&servers[0], "users/alice", "note.user", json!(1)).await;
    assert_eq!(sent["delivered"], 1, "{sent}");
    let sent = send_realtime(&servers[0], "rooms/chat.lobby", "note.room", json!(2)).await;
    assert_eq!(sent["delivered"], 0, "{sent}");
    let sent = send_realtime(&servers[0], "broadcast", "note.all", json!(3)).await;
    assert_eq!(sent["delivered"], 2, "{sent}");
    send_realtime(&servers[0], "rooms/chat.lobby", "note.room-end", json!(6)).await;
    // Sends from one process arrive everywhere in order: whatever came twice, or to the wrong
    // socket, would come before this last broadcast.
    send_realtime(&servers[0], "broadcast", "note.end", json!(4)).await;
    let expected = [
        (&mut alice_here, &["note.user", "note.all", "note.end"][..]),
        (&mut carol_here, &["note.all", "note.end"][..]),
        (
            &mut alice_there,
            &[
                "note.user",
                "note.room",
                "note.all",
                "note.room-end",
                "note.end",
            ][..],
        ),
        (
            &mut bob_there,
            &["note.room", "note.all", "note.room-end", "note.end"][..],
        ),
    ];
    for (at, (socket, names)) in expected.into_iter().enumerate() {
        assert_eq!(names_until(socket, "note.end").await, names, "socket {at}");
    }
    let frame = listener.next_event().await;
    assert_eq!(
        (
            &frame["room"],
            &frame["event"]["type"],
            &frame["event"]["data"]
        ),
        (&json!("chat.lobby"), &json!("note.room"), &json!(2)),
        "{frame}"
    );
    let frame = listener.next_event().await;
    assert_eq!(frame["event"]["type"], "note.room-end", "once: {frame}");

    // A forwarding rule: every process forwards the stored event from its own tail to its own
    // sockets, so each of alice's sockets gets it once, and the others none.
    let (status, published) = call(
        http()
            .post(format!("{}/v1/events", servers[1].url()))
            .json(&json!({"type": "alert.raised", "data": {"userId": "alice", "n": 7}})),
    )
    .await;
    assert_eq!(status, 200, "{published}");
    for socket in [&mut alice_here, &mut alice_there] {
        let received = socket.next().await;
        assert_eq!(
            (received.event.as_str(), &received.data["n"]),
            ("alert.raised", &json!(7))
        );
        assert_eq!(received.meta["stream"], "alert");
    }
    send_realtime(&servers[2], "broadcast", "note.end", json!(8)).await;
    for socket in [
        &mut alice_here,
        &mut carol_here,
        &mut alice_there,
        &mut bob_there,
    ] {
        assert_eq!(names_until(socket, "note.end").await, ["note.end"]);
    }

    // Stats add up: four sockets, alice counted once, both members of the room, and the one
    // `/v1/ws` connection (the listener, on another process than the one asked).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, stats) = call(http().get(format!("{}/v1/stats", servers[0].url()))).await;
        let realtime = &stats["realtime"];
        let wanted = json!({"connections": 4, "users": 3, "roomsTotal": 1,
                            "rooms": [{"name": "chat.lobby", "members": 2}]});
        if *realtime == wanted && stats["connections"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stats never added up: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
