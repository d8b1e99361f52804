//! The transaction that stores a chunk of one stream's events without chosen ids (the publish
//! path's common case, `publish.rs`): `MULTI`, an `XADD … 0-*` per event, the dedupe bucket's
//! expiry, `STAMP`, `EXEC` — encoded as RESP straight into one buffer, handed to a publish
//! connection, and its `EXEC` reply walked as bytes for the events' seqs. On the shared
//! connection (a Cluster) `publish.rs` sends the same commands through redis-rs.

use herald_core::Event;

use super::chunk_ids::ChunkIds;
use super::keys::{StreamKeys, seq_of};
use super::publish::unix_ms_now;
use super::publish_connection::{Pending, PublishConnection};
use super::raw::{RawError, header, length};
use super::scripts;
use crate::api::EngineError;

/// Events per transaction when a stream's events go on a publish connection
/// (`publish_connection.rs`): small enough that Redis starts on the first while the next are
/// encoded, large enough that `MULTI`, `EXEC` and `STAMP` stay a small part of each.
const PIPELINED_CHUNK_EVENTS: usize = 256;

/// Hands events whose ids Herald generated (nothing to look up) to a publish connection, a
/// transaction of [`PIPELINED_CHUNK_EVENTS`] at a time, each as soon as it is encoded:
/// `MULTI`, an `XADD … 0-*` each, the dedupe bucket's expiry, `STAMP` (which records the chunk
/// in the bucket), `EXEC`. The events get ids of this engine's making (`chunk_ids.rs`).
pub(super) async fn hand_over(
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
pub(super) async fn answered_seqs(pending: Vec<(Pending, usize)>) -> Result<Vec<i64>, EngineError> {
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
pub(super) fn chunk_ids_now() -> (u64, ChunkIds) {
    let now_ms = unix_ms_now();
    (now_ms, ChunkIds::new(now_ms, rand::random()))
}

/// Gives each event of a chunk its id, then hands its JSON to `add`, in order.
pub(super) fn with_ids_as_json(
    chunk: &mut [(usize, Event)],
    ids: &ChunkIds,
    mut add: impl FnMut(&[u8]),
) {
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
