//! The publish path of the Redis engine: routing a batch to streams, and storing each stream's
//! part with gapless seqs, dedupe and its time index.
//!
//! A stored event is the entry `0-<seq>` of its stream, `XADD`ed with the id `0-*`: Redis itself
//! numbers the entries of a stream one after the other, so concurrent publishers in any process
//! get gapless seqs without Herald holding a counter, and the event's JSON goes to Redis as a
//! plain argument of `XADD`. Two ways to store a chunk of a stream's events:
//!
//! - **No id chosen by a publisher** (every id was generated, [`IdOrigin::Generated`]): nothing to
//!   look up, so a transaction `MULTI`, one `XADD` per event, the `STAMP` script, `EXEC`. The
//!   events get ids of this engine's making (`chunk_ids.rs`) that say which chunk and where in
//!   it, and the script, which never sees an event, records the chunk's first seq in the time
//!   index, the last in the stream's `meta`, and the chunk once in the dedupe bucket (a
//!   publisher may send a generated id back, as its own, and must get a duplicate). Redis runs
//!   the transaction whole or not at all, and nothing else in between, so the chunk is its own
//!   range of seqs and its records are written with it.
//! - **Some id chosen by a publisher**: the `PUBLISH` script, which looks those ids up in the
//!   dedupe buckets, `XADD`s the new events and records every id, atomically (a dedupe record
//!   never exists without its event, and a concurrent publish of the same id is stored once).
//!   The events' JSON passes through Lua, which costs Redis's thread about three times a plain
//!   `XADD` per event (docs/PERFORMANCE.md): the price of dedupe.
//!
//! Either way a publish is answered only after Redis replied, and `MAXLEN ~` applies the
//! stream's `max_events` in the same command that adds the entry.

use std::collections::HashMap;

use futures::future::join_all;
use herald_core::{Event, IdOrigin};
use redis::Value;

use super::chunk_ids::{self, ChunkIds};
use super::connection::backend;
use super::keys::{StreamKeys, seq_of};
use super::publish_connection::{Pending, PublishConnection};
use super::publish_lanes::Turn;
use super::raw::{RawError, header, length};
use super::{RedisEngine, scripts};
use crate::api::{EngineError, PublishOutcome};

/// Events one script or transaction stores at most; a larger batch for one stream takes
/// several (in order), so that none holds Redis for long.
const PUBLISH_CHUNK_EVENTS_MAX: usize = 1024;
const _: () = assert!(PUBLISH_CHUNK_EVENTS_MAX <= chunk_ids::CHUNK_EVENTS_MAX);

/// Events per transaction when a stream's events go on a publish connection
/// (`publish_connection.rs`): small enough that Redis starts on the first while the next are
/// encoded, large enough that `MULTI`, `EXEC` and `STAMP` stay a small part of each.
const PIPELINED_CHUNK_EVENTS: usize = 256;

/// An `XADD`'s bytes besides the key and the JSON: its other arguments and their headers.
const XADD_OVERHEAD_BYTES: usize = 64;

impl RedisEngine {
    /// [`crate::Engine::publish`]: routes the batch and takes its turn on each stream now,
    /// when called (`publish_lanes.rs`), then stores each stream's events concurrently;
    /// ephemeral ones are delivered here and relayed to the other processes.
    pub(super) fn publish_events(
        &self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<Vec<PublishOutcome>, EngineError>> + Send + 'static {
        let engine = self.clone();
        let routed = self.route_batch(events);
        async move { engine.store_routed(routed?).await }
    }

    fn route_batch(&self, events: Vec<Event>) -> Result<Routed, EngineError> {
        if events.is_empty() {
            return Err(EngineError::EmptyBatch);
        }
        let count = events.len();
        let mut by_stream: HashMap<String, Vec<(usize, Event)>> = HashMap::new();
        let mut ephemeral = Vec::new();
        for (index, event) in events.into_iter().enumerate() {
            match self.route(&event.event_type) {
                Some(stream) => by_stream.entry(stream).or_default().push((index, event)),
                None => ephemeral.push((index, event)),
            }
        }
        let turns = self.take_turns(by_stream.keys().map(String::as_str));
        Ok(Routed {
            count,
            parts: by_stream
                .into_iter()
                .zip(turns)
                .map(|((stream, events), turn)| StreamPart {
                    stream,
                    events,
                    turn,
                })
                .collect(),
            ephemeral,
        })
    }

    async fn store_routed(&self, routed: Routed) -> Result<Vec<PublishOutcome>, EngineError> {
        let Routed {
            count,
            parts,
            ephemeral,
        } = routed;
        for part in &parts {
            self.register_stream(&part.stream).await?;
        }
        let mut outcomes: Vec<Option<PublishOutcome>> = vec![None; count];
        let parts = join_all(
            parts
                .into_iter()
                .map(|part| self.publish_to_stream(part.stream, part.events, part.turn)),
        )
        .await;
        let mut relayed = Vec::with_capacity(ephemeral.len());
        for (index, event) in ephemeral {
            outcomes[index] = Some(PublishOutcome::ephemeral(event.id.clone()));
            relayed.push(event);
        }
        if !relayed.is_empty() {
            self.deliver_ephemeral(relayed).await?;
        }
        for part in parts {
            for (index, outcome) in part? {
                outcomes[index] = Some(outcome);
            }
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// Makes sure a stream is registered (in Redis and here) before its first publish.
    async fn register_stream(&self, name: &str) -> Result<(), EngineError> {
        if self.inner.streams.lock().contains_key(name) {
            return Ok(());
        }
        let mut connection = self.inner.connection.clone();
        let _: i64 = redis::cmd("SADD")
            .arg(self.inner.keys.streams())
            .arg(name)
            .query_async(&mut connection)
            .await
            .map_err(|error| backend("registering a stream", &error))?;
        self.inner.stream_appeared(name);
        Ok(())
    }

    async fn publish_to_stream(
        &self,
        stream: String,
        mut events: Vec<(usize, Event)>,
        mut turn: Turn,
    ) -> Result<Vec<(usize, PublishOutcome)>, EngineError> {
        let stream = stream.as_str();
        let keys = self.inner.keys.stream(stream);
        let declared = self.inner.config.streams.iter().find(|d| d.name == stream);
        let window = declared.map_or(self.inner.config.dedupe_window, |d| d.dedupe_window);
        let cap = declared
            .and_then(|declared| declared.retention.events_max)
            .unwrap_or(0);
        let window_ms = window.as_millis().max(1) as u64;
        // Events without chosen ids go as one run (pipelined in transactions of their own
        // size, see `hand_over`); a batch mixing both goes in chunks, each stored the way its
        // events need.
        let piece_events = if events.iter().all(is_generated) {
            events.len()
        } else {
            PUBLISH_CHUNK_EVENTS_MAX
        };
        turn.wait().await;
        let mut pieces = Vec::new();
        for piece in events.chunks_mut(piece_events.max(1)) {
            let seqs = if !piece.iter().all(is_generated) {
                turn.wait_for_replies()
                    .await
                    .map_err(|reason| EngineError::Backend {
                        operation: "publishing",
                        reason,
                    })?;
                Seqs::Stored(self.append_deduped(&keys, piece, window_ms, cap).await?)
            } else if let Some(connection) = turn.connection().await {
                Seqs::Pending(hand_over(&connection, &keys, piece, window_ms, cap).await?)
            } else {
                let mut seqs = Vec::with_capacity(piece.len());
                for chunk in piece.chunks_mut(PUBLISH_CHUNK_EVENTS_MAX) {
                    seqs.extend(self.append_shared(&keys, chunk, window_ms, cap).await?);
                }
                Seqs::Stored(seqs)
            };
            pieces.push((piece.len(), seqs));
        }
        // Written: the next call's part of this stream may be (replies come back in order).
        turn.done_writing();
        let shared_name: std::sync::Arc<str> = stream.into();
        let mut outcomes = Vec::with_capacity(events.len());
        let mut events = events.into_iter();
        for (count, seqs) in pieces {
            let seqs = match seqs {
                Seqs::Stored(seqs) => seqs,
                Seqs::Pending(pending) => answered_seqs(pending).await?,
            };
            let mut stored = 0;
            for ((index, event), seq) in events.by_ref().take(count).zip(seqs) {
                stored += u64::from(seq > 0);
                outcomes.push((
                    index,
                    PublishOutcome {
                        id: event.id,
                        stream: Some(shared_name.clone()),
                        seq: Some(seq.unsigned_abs()),
                        duplicate: seq < 0,
                    },
                ));
            }
            if let Some(known) = self.inner.streams.lock().get(stream) {
                known.rate.lock().record(stored);
            }
        }
        drop(turn);
        Ok(outcomes)
    }

    async fn append_shared(
        &self,
        keys: &StreamKeys,
        chunk: &mut [(usize, Event)],
        window_ms: u64,
        cap: u64,
    ) -> Result<Vec<i64>, EngineError> {
        let mut transaction = redis::Pipeline::with_capacity(chunk.len() + 2);
        transaction.atomic();
        let (now_ms, ids) = chunk_ids_now();
        with_ids_as_json(chunk, &ids, |json| {
            // Sized before it is written: grown argument by argument, redis-rs copied an
            // event's JSON several times over (docs/PERFORMANCE.md).
            let mut add =
                redis::Cmd::with_capacity(8, keys.events.len() + json.len() + XADD_OVERHEAD_BYTES);
            add.arg("XADD").arg(&keys.events);
            if cap > 0 {
                add.arg("MAXLEN").arg("~").arg(cap);
            }
            add.arg("0-*").arg("e").arg(json);
            transaction.add_command(add);
        });
        for command in chunk_commands(keys, &ids, chunk.len(), now_ms, window_ms, cap) {
            // `PEXPIRE` and `STAMP` answer nothing the caller needs.
            transaction.add_command(command).ignore();
        }
        let mut connection = self.inner.connection.clone();
        let ids: Vec<Value> = transaction
            .query_async(&mut connection)
            .await
            .map_err(|error| backend("publishing", &error))?;
        if ids.len() != chunk.len() {
            return Err(EngineError::Backend {
                operation: "publishing",
                reason: format!(
                    "{} events were sent and {} entry ids came back",
                    chunk.len(),
                    ids.len()
                ),
            });
        }
        ids.iter()
            .map(|id| {
                let seq = match id {
                    Value::BulkString(id) => std::str::from_utf8(id).ok().and_then(seq_of),
                    Value::SimpleString(id) => seq_of(id),
                    _ => None,
                };
                seq.and_then(|seq| i64::try_from(seq).ok())
                    .ok_or_else(|| EngineError::Backend {
                        operation: "publishing",
                        reason: format!("XADD replied {id:?}, not an entry id 0-<seq>"),
                    })
            })
            .collect()
    }

    /// Stores events of which some carry an id their publisher chose, through the `PUBLISH`
    /// script. Returns per event its seq, or minus the seq of the event it duplicates.
    async fn append_deduped(
        &self,
        keys: &StreamKeys,
        chunk: &[(usize, Event)],
        window_ms: u64,
        cap: u64,
    ) -> Result<Vec<i64>, EngineError> {
        let bucket = unix_ms_now() / window_ms;
        let mut invocation = scripts::PUBLISH.prepare_invoke();
        invocation
            .key(&keys.meta)
            .key(&keys.events)
            .key(&keys.times);
        for bucket in [bucket.saturating_sub(1), bucket, bucket + 1] {
            invocation.key(keys.dedupe_bucket(bucket));
        }
        let origins: String = chunk
            .iter()
            .map(|(_, event)| match event.id_origin {
                IdOrigin::Publisher => scripts::PUBLISH_DEDUPED,
                IdOrigin::Generated => scripts::PUBLISH_GENERATED,
            })
            .collect();
        invocation.arg(window_ms).arg(cap).arg(origins);
        for (_, event) in chunk {
            invocation.arg(event.id.as_str()).arg(event.to_json());
        }
        let mut connection = self.inner.connection.clone();
        invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|error| backend("publishing", &error))
    }

    /// Delivers ephemeral events here, and to the other processes through Redis pub/sub.
    async fn deliver_ephemeral(&self, events: Vec<Event>) -> Result<(), EngineError> {
        let mut connection = self.inner.connection.clone();
        for event in events {
            let mut message = Vec::with_capacity(64 + event.data.get().len());
            message.extend_from_slice(self.inner.process.as_bytes());
            message.push(b'\n');
            message.extend_from_slice(&event.to_json());
            self.inner.deliver_ephemeral_here(event);
            let _: i64 = redis::cmd("PUBLISH")
                .arg(self.inner.keys.ephemeral_channel())
                .arg(message)
                .query_async(&mut connection)
                .await
                .map_err(|error| backend("relaying an ephemeral event", &error))?;
        }
        Ok(())
    }
}

/// A batch routed.
struct Routed {
    count: usize,
    parts: Vec<StreamPart>,
    ephemeral: Vec<(usize, Event)>,
}

/// One stream's events of a batch, each with its index in the batch, and the call's turn on
/// the stream (`publish_lanes.rs`).
struct StreamPart {
    stream: String,
    events: Vec<(usize, Event)>,
    turn: Turn,
}

/// A piece's seqs: known, or in the replies of transactions handed to a publish connection
/// (with each one's number of events).
enum Seqs {
    Stored(Vec<i64>),
    Pending(Vec<(Pending, usize)>),
}

/// Hands events whose ids Herald generated (nothing to look up) to a publish connection, a
/// transaction of [`PIPELINED_CHUNK_EVENTS`] at a time, each as soon as it is encoded:
/// `MULTI`, an `XADD … 0-*` each, the dedupe bucket's expiry, `STAMP` (which records the chunk
/// in the bucket), `EXEC`. The events get ids of this engine's making (`chunk_ids.rs`).
async fn hand_over(
    connection: &PublishConnection,
    keys: &StreamKeys,
    events: &mut [(usize, Event)],
    window_ms: u64,
    cap: u64,
) -> Result<Vec<(Pending, usize)>, EngineError> {
    // Written here rather than through redis-rs's `Cmd`, which copied each event's JSON
    // once more and cost a tenth of the server's instructions (docs/PERFORMANCE.md).
    let head = xadd_head(&keys.events, cap);
    let mut pending = Vec::new();
    let mut size_hint = 0;
    for chunk in events.chunks_mut(PIPELINED_CHUNK_EVENTS) {
        let mut packed = Vec::with_capacity(size_hint);
        packed.extend_from_slice(b"*1\r\n$5\r\nMULTI\r\n");
        let (now_ms, ids) = chunk_ids_now();
        with_ids_as_json(chunk, &ids, |json| {
            packed.extend_from_slice(&head);
            write_bulk(&mut packed, json);
        });
        for command in chunk_commands(keys, &ids, chunk.len(), now_ms, window_ms, cap) {
            command.write_packed_command(&mut packed);
        }
        packed.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
        size_hint = packed.len();
        // `MULTI`'s OK and a QUEUED per command (an error there aborts the transaction),
        // then what `EXEC` gives.
        let answer = connection
            .hand_over(packed, chunk.len() + 4)
            .await
            .map_err(|reason| EngineError::Backend {
                operation: "publishing",
                reason,
            })?;
        pending.push((answer, chunk.len()));
    }
    Ok(pending)
}

/// The seqs of transactions handed over ([`hand_over`]), in order, once all are answered.
async fn answered_seqs(pending: Vec<(Pending, usize)>) -> Result<Vec<i64>, EngineError> {
    let mut seqs = Vec::with_capacity(pending.iter().map(|(_, count)| count).sum());
    let mut refused = None;
    for (answer, count) in pending {
        let outcome = answer.answer().await.and_then(|mut replies| {
            let exec = replies
                .pop()
                .unwrap_or_else(|| Err("no EXEC reply".to_owned()));
            replies
                .into_iter()
                .find_map(Result::err)
                .map_or(exec, Err)
                .and_then(|frame| transaction_seqs(&frame, count))
        });
        match outcome {
            Ok(chunk_seqs) => seqs.extend(chunk_seqs),
            Err(error) => {
                refused.get_or_insert(error);
            }
        }
    }
    match refused {
        Some(reason) => Err(EngineError::Backend {
            operation: "publishing",
            reason,
        }),
        None => Ok(seqs),
    }
}

/// A new chunk's ids, made now, and now in milliseconds (the dedupe bucket's clock).
fn chunk_ids_now() -> (u64, ChunkIds) {
    let now_ms = unix_ms_now();
    (now_ms, ChunkIds::new(now_ms, rand::random()))
}

/// Gives each event of a chunk its id, then hands its JSON to `add`, in order.
fn with_ids_as_json(chunk: &mut [(usize, Event)], ids: &ChunkIds, mut add: impl FnMut(&[u8])) {
    let mut json = Vec::new();
    for (position, (_, event)) in chunk.iter_mut().enumerate() {
        event.id = ids.id(position);
        json.clear();
        event.write_json(&mut json);
        add(&json);
    }
}

/// What a chunk's transaction holds after its `XADD`s: the dedupe bucket's expiry, and
/// `STAMP`, which records the chunk.
fn chunk_commands(
    keys: &StreamKeys,
    ids: &ChunkIds,
    count: usize,
    now_ms: u64,
    window_ms: u64,
    cap: u64,
) -> [redis::Cmd; 2] {
    let bucket = keys.dedupe_bucket(now_ms / window_ms);
    let mut expire = redis::cmd("PEXPIRE");
    expire
        .arg(&bucket)
        .arg(scripts::DEDUPE_BUCKET_WINDOWS_KEPT * window_ms);
    // EVAL with the script's text rather than EVALSHA: inside a transaction a script that
    // Redis does not have (a restarted or failed-over node) would fail alone, after the
    // `XADD`s were applied.
    let mut stamp = redis::cmd("EVAL");
    stamp
        .arg(scripts::STAMP)
        .arg(4)
        .arg(&keys.meta)
        .arg(&keys.events)
        .arg(&keys.times)
        .arg(&bucket)
        .arg(cap)
        .arg(ids.record_field())
        .arg(count);
    [expire, stamp]
}

/// `XADD <events> [MAXLEN ~ <cap>] 0-* e` in RESP, with the array header counting the JSON
/// that follows it (`write_bulk`): the same for every event of a stream.
fn xadd_head(events: &str, cap: u64) -> Vec<u8> {
    let cap = cap.to_string();
    let mut arguments: Vec<&[u8]> = vec![b"XADD", events.as_bytes()];
    if cap != "0" {
        arguments.extend([&b"MAXLEN"[..], b"~", cap.as_bytes()]);
    }
    arguments.extend([&b"0-*"[..], b"e"]);
    let mut head = format!("*{}\r\n", arguments.len() + 1).into_bytes();
    for argument in arguments {
        write_bulk(&mut head, argument);
    }
    head
}

/// A RESP bulk string.
fn write_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(bytes.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

fn is_generated((_, event): &(usize, Event)) -> bool {
    event.id_origin == IdOrigin::Generated
}

/// The seqs of a chunk's `count` events from what its `EXEC` gave: an entry id per `XADD`,
/// then `PEXPIRE`'s and `STAMP`'s integers. An error in any of them is the chunk's.
fn transaction_seqs(frame: &[u8], count: usize) -> Result<Vec<i64>, String> {
    let protocol = |error: RawError| error.to_string();
    let incomplete = || "an incomplete EXEC reply".to_owned();
    let top = header(frame, 0).map_err(protocol)?.ok_or_else(incomplete)?;
    let elements = match top.kind {
        b'*' => length(top.line).map_err(protocol)?,
        _ => -2,
    };
    if elements != count as i64 + 2 {
        return Err(format!(
            "EXEC gave {:?} for a transaction of {} commands",
            String::from_utf8_lossy(&frame[..top.next]).trim_end(),
            count + 2
        ));
    }
    let mut seqs = Vec::with_capacity(count);
    let mut at = top.next;
    for element in 0..count + 2 {
        let item = header(frame, at)
            .map_err(protocol)?
            .ok_or_else(incomplete)?;
        at = item.next;
        match (item.kind, element < count) {
            (b'-', _) => return Err(String::from_utf8_lossy(item.line).into_owned()),
            (b'$', true) => {
                let len = usize::try_from(length(item.line).map_err(protocol)?)
                    .map_err(|_| "XADD gave nil".to_owned())?;
                let id = frame.get(at..at + len).ok_or_else(incomplete)?;
                at += len + 2;
                let seq = std::str::from_utf8(id)
                    .ok()
                    .and_then(seq_of)
                    .and_then(|seq| i64::try_from(seq).ok())
                    .ok_or_else(|| {
                        format!(
                            "XADD gave {:?}, not an entry id 0-<seq>",
                            String::from_utf8_lossy(id)
                        )
                    })?;
                seqs.push(seq);
            }
            (b':', false) => {}
            (kind, _) => {
                return Err(format!(
                    "command {} of the transaction gave a reply of type {:?}",
                    element + 1,
                    kind as char
                ));
            }
        }
    }
    Ok(seqs)
}

/// Milliseconds since the Unix epoch, by this machine's clock (dedupe buckets tolerate clocks
/// that differ by less than a window).
fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_xadd_is_written_as_redis_rs_packs_it() {
        for cap in [0, 1000] {
            let json = br#"{"id":"x","type":"a.b"}"#;
            let mut ours = xadd_head("P:{orders}:events", cap);
            write_bulk(&mut ours, json);
            let mut theirs = redis::cmd("XADD");
            theirs.arg("P:{orders}:events");
            if cap > 0 {
                theirs.arg("MAXLEN").arg("~").arg(cap);
            }
            theirs.arg("0-*").arg("e").arg(&json[..]);
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs.get_packed_command())
            );
        }
    }

    #[test]
    fn a_transaction_gives_its_seqs_or_the_first_error() {
        let check = |frame: &str, count: usize, expect: Result<Vec<i64>, &str>| {
            let got = transaction_seqs(frame.as_bytes(), count);
            match expect {
                Ok(seqs) => assert_eq!(got, Ok(seqs), "{frame:?}"),
                Err(part) => {
                    let error = got.expect_err(frame);
                    assert!(error.contains(part), "{frame:?}: {error}");
                }
            }
        };
        check(
            "*4\r\n$3\r\n0-7\r\n$3\r\n0-8\r\n:1\r\n:2\r\n",
            2,
            Ok(vec![7, 8]),
        );
        check("*2\r\n:1\r\n:0\r\n", 0, Ok(vec![]));
        // An error in place of an entry id, or of `STAMP`'s answer.
        check(
            "*3\r\n-WRONGTYPE Operation against a key\r\n:1\r\n:1\r\n",
            1,
            Err("WRONGTYPE"),
        );
        check(
            "*3\r\n$3\r\n0-1\r\n:1\r\n-ERR entry id is not 0-<seq>\r\n",
            1,
            Err("not 0-<seq>"),
        );
        // Not what the transaction sent.
        check(
            "*3\r\n$3\r\n0-1\r\n:1\r\n:1\r\n",
            2,
            Err("a transaction of 4"),
        );
        check("*-1\r\n", 1, Err("a transaction of 3"));
        check(":1\r\n", 1, Err("a transaction of 3"));
        check(
            "*3\r\n$5\r\n17-33\r\n:1\r\n:1\r\n",
            1,
            Err("not an entry id"),
        );
        check("*3\r\n$-1\r\n:1\r\n:1\r\n", 1, Err("nil"));
        check("*3\r\n:5\r\n:1\r\n:1\r\n", 1, Err("command 1"));
        check("*3\r\n$3\r\n0-1\r\n$2\r\nok\r\n:1\r\n", 1, Err("command 2"));
        check("*3\r\n$3\r\n0-1\r\n:1\r\n", 1, Err("incomplete"));
        check("*3\r\n$30\r\n0-1\r\n:1\r\n:1\r\n", 1, Err("incomplete"));
    }
}
