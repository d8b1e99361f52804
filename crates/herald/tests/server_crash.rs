//! Durability of the real server (PRODUCT.md §3): under concurrent pipelined publishing over
//! /v1/ws with `--fsync always`, a SIGKILL loses no acknowledged event, and a SIGTERM drains
//! (exit 0, every acknowledged event stored). After the restart a client retrying its
//! unacknowledged events with the same ids ends with every event stored exactly once.
//!
//! Run with `--no-capture` to see the numbers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Server, WAIT, Ws, call, http};
use tokio_tungstenite::tungstenite::Message;

const PUBLISHERS: usize = 4;
/// `pub` frames each publisher keeps unanswered.
const OUTSTANDING: usize = 16;
const EVENTS_PER_FRAME: usize = 10;
/// How long the load runs before the signal, and how many acknowledged events it needs first.
const LOAD: Duration = Duration::from_millis(1500);
const ACKED_MIN: usize = 200;
const STREAM: &str = "crash";

/// What one publisher sent and which of it was acknowledged.
#[derive(Default)]
struct Outcome {
    sent: Vec<String>,
    acked: Vec<String>,
    /// How the connection ended, and when.
    end: String,
    ended_at: Option<Instant>,
}

/// Publishes pipelined frames of events with unique ids until the connection ends, checking
/// that every `puback` answers the oldest unanswered frame with its ids.
async fn publish_until_gone(
    mut ws: Ws,
    publisher: usize,
    acked_total: Arc<AtomicUsize>,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut pending: VecDeque<(u64, Vec<String>)> = VecDeque::new();
    let mut rid = 0u64;
    // Once a send fails, answers already on their way are still read.
    let mut sending = true;
    loop {
        while sending && pending.len() < OUTSTANDING {
            rid += 1;
            let ids: Vec<String> = (0..EVENTS_PER_FRAME)
                .map(|index| format!("p{publisher}-r{rid}-e{index}"))
                .collect();
            let events: Vec<Value> = ids
                .iter()
                .map(|id| {
                    json!({"id": id, "type": "crash.load",
                           "data": {"publisher": publisher, "rid": rid}})
                })
                .collect();
            let frame = json!({"op": "pub", "rid": rid, "events": events});
            if !ws.try_send(frame).await {
                sending = false;
                break;
            }
            outcome.sent.extend(ids.iter().cloned());
            pending.push_back((rid, ids));
        }
        if pending.is_empty() {
            outcome.end = "send failed, every frame answered".into();
            return outcome;
        }
        let answer = match ws.recv_message().await {
            Some(Message::Text(text)) => serde_json::from_str::<Value>(&text).unwrap(),
            Some(Message::Close(frame)) => {
                outcome.end = match frame {
                    Some(frame) => format!("close {}", u16::from(frame.code)),
                    None => "close".into(),
                };
                outcome.ended_at = Some(Instant::now());
                return outcome;
            }
            Some(_) => continue,
            None => {
                outcome.end = format!("broken (sending: {sending})");
                return outcome;
            }
        };
        assert_eq!(answer["op"], "puback", "{answer}");
        let (expected_rid, ids) = pending.pop_front().expect("an answer to a sent frame");
        assert_eq!(answer["rid"], expected_rid, "answers in frame order");
        let results = answer["results"].as_array().unwrap();
        let answered: Vec<&str> = results
            .iter()
            .map(|result| result["id"].as_str().unwrap())
            .collect();
        assert_eq!(answered, ids, "{answer}");
        assert!(
            results.iter().all(|result| result["duplicate"] == false),
            "{answer}"
        );
        acked_total.fetch_add(ids.len(), Ordering::Relaxed);
        outcome.acked.extend(ids);
    }
}

/// Starts the publishers, lets them load the server for [`LOAD`] (and at least [`ACKED_MIN`]
/// acknowledged events), then calls `stop` and collects what each sent and had acknowledged.
async fn load_then(server: &mut Server, stop: impl FnOnce(&mut Server)) -> Vec<Outcome> {
    let acked_total = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for publisher in 0..PUBLISHERS {
        let ws = Ws::connect(server).await;
        tasks.push(tokio::spawn(publish_until_gone(
            ws,
            publisher,
            acked_total.clone(),
        )));
    }
    let started = Instant::now();
    // A time-based trigger for the signal; correctness never depends on it.
    while started.elapsed() < LOAD || acked_total.load(Ordering::Relaxed) < ACKED_MIN {
        assert!(
            started.elapsed() < WAIT,
            "only {} events acknowledged",
            acked_total.load(Ordering::Relaxed)
        );
        assert!(
            tasks.iter().all(|task| !task.is_finished()),
            "a publisher stopped under load"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopping = Instant::now();
    stop(server);
    let mut outcomes = Vec::new();
    for task in tasks {
        let outcome = tokio::time::timeout(WAIT, task)
            .await
            .expect("publishers see the server go")
            .expect("a publisher failed");
        eprintln!(
            "publisher: {} sent, {} acked, ended: {} after {:?}",
            outcome.sent.len(),
            outcome.acked.len(),
            outcome.end,
            outcome.ended_at.map(|at| at - stopping)
        );
        outcomes.push(outcome);
    }
    outcomes
}

/// The stream's events as (seq, id), read through the replay API, in seq order.
async fn stored_ids(server: &Server) -> Vec<(u64, String)> {
    let mut stored = Vec::new();
    let mut from = 1;
    loop {
        let (status, page) = call(http().get(format!(
            "{}/v1/streams/{STREAM}/events?from={from}&limit=10000",
            server.url()
        )))
        .await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            return stored;
        }
        for event in events {
            stored.push((
                event["seq"].as_u64().unwrap(),
                event["id"].as_str().unwrap().to_owned(),
            ));
        }
        from = page["next"].as_u64().unwrap();
    }
}

struct Counts {
    sent: usize,
    acked: usize,
    stored: usize,
    unacked_stored: usize,
}

/// Checks the stream after a restart: seqs gapless from 1, no id twice, only sent ids, and
/// every acknowledged id present.
async fn check_stored(server: &Server, outcomes: &[Outcome]) -> Counts {
    let sent: HashSet<&str> = outcomes
        .iter()
        .flat_map(|outcome| outcome.sent.iter().map(String::as_str))
        .collect();
    let acked: HashSet<&str> = outcomes
        .iter()
        .flat_map(|outcome| outcome.acked.iter().map(String::as_str))
        .collect();
    let stored = stored_ids(server).await;
    let seqs: Vec<u64> = stored.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "seqs are gapless from 1"
    );
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for (_, id) in &stored {
        *copies.entry(id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = copies.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "ids stored more than once: {twice:?}");
    let unknown: Vec<_> = copies.keys().filter(|id| !sent.contains(*id)).collect();
    assert!(unknown.is_empty(), "ids never sent: {unknown:?}");
    let lost: Vec<_> = acked
        .iter()
        .filter(|id| !copies.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost, such as {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    Counts {
        sent: sent.len(),
        acked: acked.len(),
        stored: stored.len(),
        unacked_stored: stored.len() - acked.len(),
    }
}

/// What a client does after the crash: publishes again every event it had no answer for, with
/// the same ids (and a few answered ones, as a careless client might). Afterwards every sent
/// event is stored exactly once, and each repeat is answered as a duplicate with its seq.
async fn retry_unacknowledged(server: &Server, outcomes: &[Outcome]) {
    let before: HashMap<String, u64> = stored_ids(server)
        .await
        .into_iter()
        .map(|(seq, id)| (id, seq))
        .collect();
    let mut retry: Vec<String> = Vec::new();
    for outcome in outcomes {
        let acked: HashSet<&String> = outcome.acked.iter().collect();
        retry.extend(
            outcome
                .sent
                .iter()
                .filter(|id| !acked.contains(id))
                .cloned(),
        );
        retry.extend(outcome.acked.iter().take(5).cloned());
    }
    for chunk in retry.chunks(500) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|id| json!({"id": id, "type": "crash.load", "data": {"retry": true}}))
            .collect();
        let (status, results) = call(
            http()
                .post(format!("{}/v1/events", server.url()))
                .json(&events),
        )
        .await;
        assert_eq!(status, 200, "{results}");
        for (id, result) in chunk.iter().zip(results.as_array().unwrap()) {
            assert_eq!(result["id"], id.as_str());
            match before.get(id) {
                Some(seq) => {
                    assert_eq!(result["duplicate"], true, "{id} was stored: {result}");
                    assert_eq!(result["seq"], *seq, "{result}");
                }
                None => assert_eq!(result["duplicate"], false, "{result}"),
            }
        }
    }
    let stored = stored_ids(server).await;
    let ids: HashSet<&str> = stored.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids.len(), stored.len(), "no id twice after the retry");
    let sent: HashSet<&str> = outcomes
        .iter()
        .flat_map(|outcome| outcome.sent.iter().map(String::as_str))
        .collect();
    assert_eq!(ids, sent, "every sent event stored exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--fsync", "always"]);
    let outcomes = load_then(&mut server, Server::kill).await;
    drop(server);

    let server = Server::start(dir.path(), &["--fsync", "always"]);
    let counts = check_stored(&server, &outcomes).await;
    eprintln!(
        "SIGKILL: {} events sent, {} acknowledged, {} stored, {} stored without an \
         acknowledgement, {} acknowledged lost",
        counts.sent, counts.acked, counts.stored, counts.unacked_stored, 0
    );
    assert!(counts.acked >= ACKED_MIN);
    retry_unacknowledged(&server, &outcomes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--fsync", "always"]);
    let outcomes = load_then(&mut server, |server| {
        let signalled = Instant::now();
        assert!(server.terminate(), "herald exits 0 on SIGTERM");
        eprintln!("SIGTERM: exited 0 after {:?}", signalled.elapsed());
    })
    .await;
    // The log is read by a thread that may not have seen the last lines yet.
    let deadline = Instant::now() + WAIT;
    while !server
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|line| line.contains("stopped"))
    {
        assert!(
            Instant::now() < deadline,
            "no \"stopped\" in the log: {:?}",
            server.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = server.log.lock().unwrap().clone();
    assert!(
        !log.iter()
            .any(|line| line.contains("within the shutdown grace")),
        "every connection closed by itself, none was cut at the grace: {log:?}"
    );
    drop(server);

    let server = Server::start(dir.path(), &["--fsync", "always"]);
    let counts = check_stored(&server, &outcomes).await;
    eprintln!(
        "SIGTERM: {} events sent, {} acknowledged, {} stored, {} stored without an \
         acknowledgement",
        counts.sent, counts.acked, counts.stored, counts.unacked_stored
    );
    assert!(counts.acked >= ACKED_MIN);
    // A drain answers every `pub` it has read before closing with 1001 (docs/PROTOCOL.md), so
    // each stored event was acknowledged.
    for outcome in &outcomes {
        assert_eq!(
            outcome.end, "close 1001",
            "a drained connection closes as going away"
        );
    }
    assert_eq!(counts.unacked_stored, 0, "every stored event was answered");
    retry_unacknowledged(&server, &outcomes).await;
}
