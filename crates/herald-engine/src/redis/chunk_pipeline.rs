//! How a stream's events go to Redis on a publish connection (`publish.rs` chooses): events
//! without chosen ids (the common case) as a pipeline, not a transaction — per chunk of up to
//! [`STAMPED_CHUNK_EVENTS`] events, an `XADD … 0-*` each, `STAMP` and the dedupe bucket's
//! expiry, encoded as RESP straight into buffers handed to the connection a slice at a time,
//! their replies walked as bytes for the events' seqs; events of which some ids were chosen as
//! `PUBLISH` calls, pipelined the same way. On the shared connection (a Cluster) `publish.rs`
//! sends the same commands through redis-rs, the `XADD`s in `MULTI`/`EXEC`.
//!
//! Why no `MULTI`: Redis queues a transaction's commands and frees them after `EXEC`, which
//! with `STAMP` once per 256 events cost Redis's thread a sixth more per event than plain
//! `XADD`s (docs/PERFORMANCE.md). What the transaction gave, and how the pipeline does without:
//! - one range of seqs per chunk, which `STAMP`'s `<first seq>:<count>` record relies on.
//!   Another connection's `XADD`s may now fall between a chunk's; the `XADD`s' replies show it,
//!   and the chunk's ids are then recorded one by one ([`AnsweredChunk::recorded_whole`])
//!   before anyone is answered, so a generated id sent back is found as soon as it is known.
//! - all or nothing: not needed. A publish fails whole when any reply is an error or missing,
//!   and events of it may be stored, as when a connection is lost mid-transaction; its
//!   publisher sends it again (at least once; ids it chose are deduped by `PUBLISH`).
//! - `meta` and the time index current when the `XADD`s are visible: `STAMP` follows them on
//!   the same connection, and records every entry past `meta`'s `seq`, so a pipeline cut short
//!   after its `XADD`s is recorded by the next stamp of any publish.

use herald_core::{Event, IdOrigin};

use super::chunk_ids::ChunkIds;
use super::keys::{StreamKeys, seq_of};
use super::publish::unix_ms_now;
use super::publish_connection::{Pending, PublishConnection};
use super::raw::{RawError, RawReply, header, length};
use super::scripts;
use crate::api::EngineError;

/// Events one `STAMP` records, at most: one chunk of ids (`chunk_ids.rs`), one dedupe record
/// and one time-index entry. Larger than a write: `STAMP` costs Redis as much as some forty
/// `XADD`s.
const STAMPED_CHUNK_EVENTS: usize = 1024;
const _: () = assert!(STAMPED_CHUNK_EVENTS <= super::chunk_ids::CHUNK_EVENTS_MAX);

/// `XADD`s per write handed to the publish connection: small enough that Redis starts on the
/// first while the next are encoded.
const WRITE_EVENTS: usize = 256;

/// A chunk handed to a publish connection: its writes (each with its number of `XADD`s; the
/// last also carries `STAMP` and the expiry), its ids and the bucket its record went to.
pub(super) struct HandedChunk {
    writes: Vec<(Pending, usize)>,
    ids: ChunkIds,
    bucket: String,
}

/// A chunk's seqs once Redis answered.
pub(super) struct AnsweredChunk {
    pub seqs: Vec<i64>,
    pub ids: ChunkIds,
    pub bucket: String,
    /// Whether `STAMP`'s `<first seq>:<count>` record is right: the chunk's seqs are one range
    /// starting where `STAMP` said. If not, the caller records each id with its seq.
    pub recorded_whole: bool,
}

/// Hands events whose ids Herald generated (nothing to look up) to a publish connection, a
/// write of [`WRITE_EVENTS`] at a time, each as soon as it is encoded. The events get ids of
/// this engine's making (`chunk_ids.rs`).
pub(super) async fn hand_over(
    connection: &PublishConnection,
    keys: &StreamKeys,
    events: &mut [(usize, Event)],
    window_ms: u64,
    cap: u64,
) -> Result<Vec<HandedChunk>, EngineError> {
    // Written here rather than through redis-rs's `Cmd`, which copied each event's JSON
    // once more and cost a tenth of the server's instructions (docs/PERFORMANCE.md).
    let head = xadd_head(&keys.events, cap);
    let mut chunks = Vec::new();
    let mut size_hint = 0;
    for chunk in events.chunks_mut(STAMPED_CHUNK_EVENTS) {
        let (now_ms, ids) = chunk_ids_now();
        let bucket = keys.dedupe_bucket(now_ms / window_ms);
        let count = chunk.len();
        let mut writes = Vec::new();
        let mut position = 0;
        for slice in chunk.chunks_mut(WRITE_EVENTS) {
            let mut packed = Vec::with_capacity(size_hint);
            with_ids_as_json(slice, &ids, position, |json| {
                packed.extend_from_slice(&head);
                write_bulk(&mut packed, json);
            });
            position += slice.len();
            let mut replies = slice.len();
            if position == count {
                for command in chunk_commands(keys, &ids, count, &bucket, window_ms, cap) {
                    command.write_packed_command(&mut packed);
                }
                replies += 2;
            }
            size_hint = packed.len();
            let answer = connection
                .hand_over(packed, replies)
                .await
                .map_err(publishing_failed)?;
            writes.push((answer, slice.len()));
        }
        chunks.push(HandedChunk {
            writes,
            ids,
            bucket,
        });
    }
    Ok(chunks)
}

/// The seqs of chunks handed over ([`hand_over`]), in order, once all are answered; the first
/// error if any reply was one.
pub(super) async fn answered_chunks(
    chunks: Vec<HandedChunk>,
) -> Result<Vec<AnsweredChunk>, EngineError> {
    let mut answered = Vec::with_capacity(chunks.len());
    let mut refused = None;
    for chunk in chunks {
        let mut seqs = Vec::new();
        let mut stamped_first = None;
        for (answer, count) in chunk.writes {
            let outcome = answer
                .answer()
                .await
                .and_then(|replies| write_seqs(&replies, count));
            match outcome {
                Ok((write_seqs, stamped)) => {
                    seqs.extend(write_seqs);
                    stamped_first = stamped_first.or(stamped);
                }
                Err(error) => {
                    refused.get_or_insert(error);
                }
            }
        }
        let recorded_whole = seqs.first().copied() == stamped_first
            && seqs.windows(2).all(|pair| pair[1] == pair[0] + 1);
        answered.push(AnsweredChunk {
            seqs,
            ids: chunk.ids,
            bucket: chunk.bucket,
            recorded_whole,
        });
    }
    refused.map_or(Ok(answered), |reason| Err(publishing_failed(reason)))
}

/// Events per `PUBLISH` call on a publish connection: Redis runs one while the next is encoded,
/// and none holds Redis's thread for long (the script costs it a few µs per event).
const SCRIPT_EVENTS: usize = 256;

/// Hands events of which some carry an id their publisher chose to a publish connection, as
/// `PUBLISH` calls of [`SCRIPT_EVENTS`] events (`EVAL` with the script's text: a few KiB a
/// call, and a Redis that restarted has it all the same). Each call's reply is, per event, its
/// seq or minus the seq of the event it duplicates ([`answered_scripts`]).
pub(super) async fn hand_over_deduped(
    connection: &PublishConnection,
    keys: &StreamKeys,
    events: &[(usize, Event)],
    window_ms: u64,
    cap: u64,
) -> Result<Vec<(Pending, usize)>, EngineError> {
    let mut calls = Vec::new();
    let mut size_hint = 0;
    let mut json = Vec::new();
    for call in events.chunks(SCRIPT_EVENTS) {
        let mut packed = Vec::with_capacity(size_hint);
        let publish_keys = publish_keys(keys, window_ms);
        write_publish_call(&mut packed, &publish_keys, window_ms, cap, call, &mut json);
        size_hint = packed.len();
        let answer = connection
            .hand_over(packed, 1)
            .await
            .map_err(publishing_failed)?;
        calls.push((answer, call.len()));
    }
    Ok(calls)
}

/// The outcomes of `PUBLISH` calls handed over ([`hand_over_deduped`]), in order, once all
/// are answered: per event its seq, or minus the seq of the event it duplicates.
pub(super) async fn answered_scripts(
    calls: Vec<(Pending, usize)>,
) -> Result<Vec<i64>, EngineError> {
    let mut seqs = Vec::with_capacity(calls.iter().map(|(_, count)| count).sum());
    let mut refused = None;
    for (answer, count) in calls {
        let outcome = answer
            .answer()
            .await
            .and_then(|mut replies| match replies.pop() {
                Some(reply) => reply.and_then(|frame| script_seqs(&frame, count)),
                None => Err("no reply to PUBLISH".to_owned()),
            });
        match outcome {
            Ok(call_seqs) => seqs.extend(call_seqs),
            Err(error) => {
                refused.get_or_insert(error);
            }
        }
    }
    refused.map_or(Ok(seqs), |reason| Err(publishing_failed(reason)))
}

/// A publish that Redis refused, or whose connection was lost, with why.
fn publishing_failed(reason: String) -> EngineError {
    EngineError::Backend {
        operation: "publishing",
        reason,
    }
}

/// `EVAL <PUBLISH's text> 6 <keys> <window> <cap> <origins>` and each event's id and JSON, in
/// RESP (`json`: a buffer to reuse).
fn write_publish_call(
    packed: &mut Vec<u8>,
    publish_keys: &[String; 6],
    window_ms: u64,
    cap: u64,
    call: &[(usize, Event)],
    json: &mut Vec<u8>,
) {
    let arguments = 3 + publish_keys.len() + 3 + 2 * call.len();
    packed.push(b'*');
    packed.extend_from_slice(itoa::Buffer::new().format(arguments).as_bytes());
    packed.extend_from_slice(b"\r\n");
    write_bulk(packed, b"EVAL");
    write_bulk(packed, scripts::PUBLISH_SOURCE.as_bytes());
    write_bulk(
        packed,
        itoa::Buffer::new().format(publish_keys.len()).as_bytes(),
    );
    for key in publish_keys {
        write_bulk(packed, key.as_bytes());
    }
    write_bulk(packed, itoa::Buffer::new().format(window_ms).as_bytes());
    write_bulk(packed, itoa::Buffer::new().format(cap).as_bytes());
    write_bulk(packed, origins(call).as_bytes());
    for (_, event) in call {
        write_bulk(packed, event.id.as_str().as_bytes());
        json.clear();
        event.write_json(json);
        write_bulk(packed, json);
    }
}

/// `PUBLISH`'s keys for a call made now: meta, events, the time index, then the dedupe
/// buckets of the previous, current and next window.
pub(super) fn publish_keys(keys: &StreamKeys, window_ms: u64) -> [String; 6] {
    let bucket = unix_ms_now() / window_ms;
    [
        keys.meta.clone(),
        keys.events.clone(),
        keys.times.clone(),
        keys.dedupe_bucket(bucket.saturating_sub(1)),
        keys.dedupe_bucket(bucket),
        keys.dedupe_bucket(bucket + 1),
    ]
}

/// `PUBLISH`'s ARGV[3]: a letter per event, whether its publisher chose its id.
pub(super) fn origins(events: &[(usize, Event)]) -> String {
    events
        .iter()
        .map(|(_, event)| match event.id_origin {
            IdOrigin::Publisher => scripts::PUBLISH_DEDUPED,
            IdOrigin::Generated => scripts::PUBLISH_GENERATED,
        })
        .collect()
}

/// A new chunk's ids, made now, and now in milliseconds (the dedupe bucket's clock).
pub(super) fn chunk_ids_now() -> (u64, ChunkIds) {
    let now_ms = unix_ms_now();
    (now_ms, ChunkIds::new(now_ms, rand::random()))
}

/// Gives each event of a chunk's slice starting at `first_position` its id, then hands its
/// JSON to `add`, in order.
pub(super) fn with_ids_as_json(
    slice: &mut [(usize, Event)],
    ids: &ChunkIds,
    first_position: usize,
    mut add: impl FnMut(&[u8]),
) {
    let mut json = Vec::new();
    for (position, (_, event)) in (first_position..).zip(slice.iter_mut()) {
        event.id = ids.id(position);
        json.clear();
        event.write_json(&mut json);
        add(&json);
    }
}

/// What follows a chunk's `XADD`s: `STAMP`, which records the chunk in `bucket`, then the
/// bucket's expiry — in that order, since `STAMP` may be what creates the bucket, and an
/// expiry set before that is lost (the bucket would stay for good).
pub(super) fn chunk_commands(
    keys: &StreamKeys,
    ids: &ChunkIds,
    count: usize,
    bucket: &str,
    window_ms: u64,
    cap: u64,
) -> [redis::Cmd; 2] {
    let mut expire = redis::cmd("PEXPIRE");
    expire
        .arg(bucket)
        .arg(scripts::DEDUPE_BUCKET_WINDOWS_KEPT * window_ms);
    // EVAL with the script's text rather than EVALSHA: a script that Redis does not have (a
    // restarted or failed-over node) would fail alone, after the `XADD`s were applied.
    let mut stamp = redis::cmd("EVAL");
    stamp
        .arg(scripts::STAMP)
        .arg(4)
        .arg(&keys.meta)
        .arg(&keys.events)
        .arg(&keys.times)
        .arg(bucket)
        .arg(cap)
        .arg(ids.record_field())
        .arg(count);
    [stamp, expire]
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

/// The seqs of a write's `count` `XADD`s from their replies, and `STAMP`'s first seq when the
/// write ended its chunk (two replies more: `STAMP`'s, then the expiry's). An error in any
/// reply is the write's.
fn write_seqs(replies: &[RawReply], count: usize) -> Result<(Vec<i64>, Option<i64>), String> {
    let stamped = match replies.len() {
        n if n == count => false,
        n if n == count + 2 => true,
        n => return Err(format!("{n} replies came back to a write of {count} XADDs")),
    };
    if let Some(refused) = replies.iter().find_map(|reply| reply.as_ref().err()) {
        return Err(refused.clone());
    }
    let frame = |index: usize| replies[index].as_deref().unwrap_or_default();
    let seqs = (0..count)
        .map(|index| entry_seq(frame(index)))
        .collect::<Result<Vec<_>, _>>()?;
    let first = match stamped {
        true => Some(
            integer(frame(count))
                .map_err(|reply| format!("STAMP gave {reply:?}, not the first seq it recorded"))?,
        ),
        false => None,
    };
    Ok((seqs, first))
}

/// The seq of an `XADD`'s reply, the entry id `0-<seq>` as a bulk string.
fn entry_seq(frame: &[u8]) -> Result<i64, String> {
    let not_an_entry_id = || {
        format!(
            "XADD gave {:?}, not an entry id 0-<seq>",
            String::from_utf8_lossy(frame)
        )
    };
    let protocol = |error: RawError| error.to_string();
    let top = header(frame, 0)
        .map_err(protocol)?
        .ok_or_else(not_an_entry_id)?;
    if top.kind != b'$' {
        return Err(not_an_entry_id());
    }
    let len = usize::try_from(length(top.line).map_err(protocol)?)
        .map_err(|_| "XADD gave nil".to_owned())?;
    frame
        .get(top.next..top.next + len)
        .and_then(|id| std::str::from_utf8(id).ok())
        .and_then(seq_of)
        .and_then(|seq| i64::try_from(seq).ok())
        .ok_or_else(not_an_entry_id)
}

/// `PUBLISH`'s reply for a call of `count` events: an array of as many integers.
fn script_seqs(frame: &[u8], count: usize) -> Result<Vec<i64>, String> {
    let protocol = |error: RawError| error.to_string();
    let unexpected = || {
        format!(
            "PUBLISH gave {:?} for a call of {count} events",
            String::from_utf8_lossy(&frame[..frame.len().min(64)])
        )
    };
    let top = header(frame, 0).map_err(protocol)?.ok_or_else(unexpected)?;
    if top.kind != b'*' || length(top.line).map_err(protocol)? != count as i64 {
        return Err(unexpected());
    }
    let mut seqs = Vec::with_capacity(count);
    let mut at = top.next;
    for _ in 0..count {
        let item = header(frame, at)
            .map_err(protocol)?
            .ok_or_else(unexpected)?;
        let seq = std::str::from_utf8(item.line)
            .ok()
            .and_then(|text| text.parse().ok())
            .filter(|_| item.kind == b':')
            .ok_or_else(unexpected)?;
        seqs.push(seq);
        at = item.next;
    }
    Ok(seqs)
}

/// An integer reply's value; otherwise the reply as text.
fn integer(frame: &[u8]) -> Result<i64, String> {
    let text = String::from_utf8_lossy(frame);
    text.strip_prefix(':')
        .and_then(|rest| rest.strip_suffix("\r\n"))
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| text.trim_end().to_owned())
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
    fn a_publish_call_is_written_as_redis_rs_packs_it() {
        use crate::conformance::{event, event_with_chosen_id};
        let keys = crate::redis::keys::Keys::new("P").stream("orders");
        let publish_keys = publish_keys(&keys, 120_000);
        let call = [
            (0, event_with_chosen_id("orders.placed", r#"{"n":1}"#)),
            (1, event("orders.placed", r#"{"n":2}"#)),
        ];
        let mut ours = Vec::new();
        write_publish_call(
            &mut ours,
            &publish_keys,
            120_000,
            50,
            &call,
            &mut Vec::new(),
        );
        let mut theirs = redis::cmd("EVAL");
        theirs.arg(scripts::PUBLISH_SOURCE.as_str()).arg(6);
        for key in &publish_keys {
            theirs.arg(key);
        }
        theirs.arg(120_000).arg(50).arg("dg");
        for (_, event) in &call {
            theirs.arg(event.id.as_str()).arg(event.to_json());
        }
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs.get_packed_command())
        );
    }

    #[test]
    fn a_write_gives_its_seqs_and_stamp_or_the_first_error() {
        type Expect<'a> = Result<(Vec<i64>, Option<i64>), &'a str>;
        let check = |replies: &[&str], count: usize, expect: Expect| {
            let replies: Vec<RawReply> = replies
                .iter()
                .map(|reply| match reply.strip_prefix('-') {
                    Some(error) => Err(error.trim_end().to_owned()),
                    None => Ok(bytes::Bytes::copy_from_slice(reply.as_bytes())),
                })
                .collect();
            let got = write_seqs(&replies, count);
            match expect {
                Ok(seqs) => assert_eq!(got, Ok(seqs), "{replies:?}"),
                Err(part) => {
                    let error = got.expect_err(part);
                    assert!(error.contains(part), "{replies:?}: {error}");
                }
            }
        };
        check(
            &["$3\r\n0-7\r\n", "$3\r\n0-8\r\n"],
            2,
            Ok((vec![7, 8], None)),
        );
        check(
            &["$3\r\n0-7\r\n", ":7\r\n", ":1\r\n"],
            1,
            Ok((vec![7], Some(7))),
        );
        check(&[":12\r\n", ":1\r\n"], 0, Ok((vec![], Some(12))));
        // An error in place of an entry id, or of `STAMP`'s answer.
        check(
            &["-WRONGTYPE Operation against a key\r\n", ":1\r\n", ":1\r\n"],
            1,
            Err("WRONGTYPE"),
        );
        check(
            &[
                "$3\r\n0-1\r\n",
                "-ERR entry id is not 0-<seq>\r\n",
                ":1\r\n",
            ],
            1,
            Err("not 0-<seq>"),
        );
        // Not what the write sent.
        check(
            &["$3\r\n0-1\r\n"],
            2,
            Err("1 replies came back to a write of 2"),
        );
        check(&["$5\r\n17-33\r\n"], 1, Err("not an entry id"));
        check(&["$-1\r\n"], 1, Err("nil"));
        check(&[":5\r\n"], 1, Err("not an entry id"));
        check(&["$30\r\n0-1\r\n"], 1, Err("not an entry id"));
        check(
            &["$3\r\n0-1\r\n", "$2\r\nok\r\n", ":1\r\n"],
            1,
            Err("STAMP gave"),
        );
    }

    #[test]
    fn a_publish_call_gives_a_seq_or_a_duplicate_per_event() {
        let check = |frame: &str, count: usize, expect: Result<Vec<i64>, &str>| {
            let got = script_seqs(frame.as_bytes(), count);
            match expect {
                Ok(seqs) => assert_eq!(got, Ok(seqs), "{frame:?}"),
                Err(part) => {
                    let error = got.expect_err(frame);
                    assert!(error.contains(part), "{frame:?}: {error}");
                }
            }
        };
        check("*3\r\n:7\r\n:-2\r\n:8\r\n", 3, Ok(vec![7, -2, 8]));
        check("*0\r\n", 0, Ok(vec![]));
        check("*2\r\n:7\r\n", 2, Err("for a call of 2 events"));
        check("*1\r\n:7\r\n", 2, Err("for a call of 2 events"));
        check("*1\r\n$1\r\n7\r\n", 1, Err("PUBLISH gave"));
        check("*1\r\n:x\r\n", 1, Err("PUBLISH gave"));
        check(":1\r\n", 1, Err("PUBLISH gave"));
        check("*-1\r\n", 1, Err("PUBLISH gave"));
    }
}
