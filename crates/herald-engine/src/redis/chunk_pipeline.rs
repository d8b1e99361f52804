//! How a stream's events without chosen ids (the publish path's common case, `publish.rs`) go
//! to Redis on a publish connection: a pipeline, not a transaction. Per chunk of up to
//! [`STAMPED_CHUNK_EVENTS`] events, an `XADD … 0-*` each, the dedupe bucket's expiry and
//! `STAMP` — encoded as RESP straight into buffers handed to the connection a slice at a
//! time, their replies walked as bytes for the events' seqs. On the shared connection (a
//! Cluster) `publish.rs` sends the same commands through redis-rs, in `MULTI`/`EXEC`.
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

use herald_core::Event;

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
/// last also carries the expiry and `STAMP`), its ids and the bucket its record went to.
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
    let lost = |reason| EngineError::Backend {
        operation: "publishing",
        reason,
    };
    let mut chunks = Vec::new();
    let mut size_hint = 0;
    for chunk in events.chunks_mut(STAMPED_CHUNK_EVENTS) {
        let (now_ms, ids) = chunk_ids_now();
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
                for command in chunk_commands(keys, &ids, count, now_ms, window_ms, cap) {
                    command.write_packed_command(&mut packed);
                }
                replies += 2;
            }
            size_hint = packed.len();
            let answer = connection.hand_over(packed, replies).await.map_err(lost)?;
            writes.push((answer, slice.len()));
        }
        chunks.push(HandedChunk {
            writes,
            ids,
            bucket: keys.dedupe_bucket(now_ms / window_ms),
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
    match refused {
        Some(reason) => Err(EngineError::Backend {
            operation: "publishing",
            reason,
        }),
        None => Ok(answered),
    }
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

/// What follows a chunk's `XADD`s: the dedupe bucket's expiry, and
/// `STAMP`, which records the chunk.
pub(super) fn chunk_commands(
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
    // EVAL with the script's text rather than EVALSHA: a script that Redis does not have (a
    // restarted or failed-over node) would fail alone, after the `XADD`s were applied.
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

/// The seqs of a write's `count` `XADD`s from their replies, and `STAMP`'s first seq when the
/// write ended its chunk (two replies more: the expiry's, then `STAMP`'s). An error in any
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
            integer(frame(count + 1))
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
            &["$3\r\n0-7\r\n", ":1\r\n", ":7\r\n"],
            1,
            Ok((vec![7], Some(7))),
        );
        check(&[":1\r\n", ":12\r\n"], 0, Ok((vec![], Some(12))));
        // An error in place of an entry id, or of `STAMP`'s answer.
        check(
            &["-WRONGTYPE Operation against a key\r\n", ":1\r\n", ":1\r\n"],
            1,
            Err("WRONGTYPE"),
        );
        check(
            &[
                "$3\r\n0-1\r\n",
                ":1\r\n",
                "-ERR entry id is not 0-<seq>\r\n",
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
            &["$3\r\n0-1\r\n", ":1\r\n", "$2\r\nok\r\n"],
            1,
            Err("STAMP gave"),
        );
    }
}
