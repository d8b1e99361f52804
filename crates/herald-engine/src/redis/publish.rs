//! The publish path of the Redis engine: routing a batch to streams, and storing each stream's
//! part with gapless seqs, dedupe and its time index.
//!
//! A stored event is the entry `0-<seq>` of its stream, `XADD`ed with the id `0-*`: Redis itself
//! numbers the entries of a stream one after the other, so concurrent publishers in any process
//! get gapless seqs without Herald holding a counter, and the event's JSON goes to Redis as a
//! plain argument of `XADD`. Two ways to store a chunk of a stream's events:
//!
//! - **No id chosen by a publisher** (every id was generated, [`IdOrigin::Generated`]): nothing to
//!   look up, so one `XADD` per event, then the `STAMP` script, pipelined on a publish
//!   connection (`chunk_pipeline.rs`; on a Cluster's shared connection, in `MULTI`/`EXEC`).
//!   The events get ids of this engine's making (`chunk_ids.rs`) that say which chunk and
//!   where in it, and the script, which never sees an event, records the chunk's first seq in
//!   the time index, the last in the stream's `meta`, and the chunk once in the dedupe bucket
//!   (a publisher may send a generated id back, as its own, and must get a duplicate). Where
//!   another connection's `XADD`s fell between a chunk's, the chunk's ids are recorded one by
//!   one instead, before the publish is answered.
//! - **Some id chosen by a publisher**: the `PUBLISH` script, which looks those ids up in the
//!   dedupe buckets, `XADD`s the new events and records every id, atomically (a dedupe record
//!   never exists without its event, and a concurrent publish of the same id is stored once);
//!   calls of 256 events pipelined on the same publish connection (`chunk_pipeline.rs`).
//!   The events' JSON passes through Lua, which costs Redis's thread about three times a plain
//!   `XADD` per event (docs/PERFORMANCE.md): the price of dedupe.
//!
//! Either way a publish is answered only after Redis replied, and `MAXLEN ~` applies the
//! stream's `max_events` in the same command that adds the entry.

use std::collections::HashMap;

use futures::future::join_all;
use herald_core::{Event, IdOrigin};
use redis::Value;

use super::chunk_ids;
use super::chunk_pipeline::{
    AnsweredChunk, HandedChunk, answered_chunks, answered_scripts, chunk_commands, chunk_ids_now,
    hand_over, hand_over_deduped, origins, publish_keys, with_ids_as_json,
};
use super::connection::backend;
use super::keys::{StreamKeys, seq_of};
use super::publish_connection::Pending;
use super::publish_lanes::Turn;
use super::{RedisEngine, scripts};
use crate::api::{EngineError, PublishOutcome};

/// Events one script or transaction stores at most; a larger batch for one stream takes
/// several (in order), so that none holds Redis for long.
const PUBLISH_CHUNK_EVENTS_MAX: usize = 1024;
const _: () = assert!(PUBLISH_CHUNK_EVENTS_MAX <= chunk_ids::CHUNK_EVENTS_MAX);

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
        // Events without chosen ids go as one run (pipelined in writes of their own
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
            let connection = turn.connection().await;
            let seqs = match (piece.iter().all(is_generated), connection) {
                (true, Some(connection)) => {
                    Seqs::Pending(hand_over(&connection, &keys, piece, window_ms, cap).await?)
                }
                (false, Some(connection)) => Seqs::Scripted(
                    hand_over_deduped(&connection, &keys, piece, window_ms, cap).await?,
                ),
                (true, None) => {
                    let mut seqs = Vec::with_capacity(piece.len());
                    for chunk in piece.chunks_mut(PUBLISH_CHUNK_EVENTS_MAX) {
                        seqs.extend(self.append_shared(&keys, chunk, window_ms, cap).await?);
                    }
                    Seqs::Stored(seqs)
                }
                (false, None) => {
                    Seqs::Stored(self.append_deduped(&keys, piece, window_ms, cap).await?)
                }
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
                Seqs::Pending(chunks) => self.seqs_recorded(chunks).await?,
                Seqs::Scripted(calls) => answered_scripts(calls).await?,
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

    /// The seqs of chunks handed to a publish connection, once each chunk's ids are recorded
    /// for dedupe: where another connection's `XADD`s fell between a chunk's, `STAMP`'s record
    /// of it is wrong, and its ids are recorded one by one here, before anyone learns them
    /// (`chunk_pipeline.rs`).
    async fn seqs_recorded(&self, chunks: Vec<HandedChunk>) -> Result<Vec<i64>, EngineError> {
        let mut seqs = Vec::new();
        for chunk in answered_chunks(chunks).await? {
            let AnsweredChunk {
                seqs: chunk_seqs,
                ids,
                bucket,
                recorded_whole,
            } = chunk;
            if !recorded_whole {
                // The bucket exists and expires: the chunk's pipeline wrote it.
                let mut record = redis::cmd("HSET");
                record.arg(&bucket);
                for (position, seq) in chunk_seqs.iter().enumerate() {
                    record.arg(ids.id(position).as_str()).arg(seq);
                }
                let mut connection = self.inner.connection.clone();
                let _: i64 = record
                    .query_async(&mut connection)
                    .await
                    .map_err(|error| backend("recording published ids", &error))?;
            }
            seqs.extend(chunk_seqs);
        }
        Ok(seqs)
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
        with_ids_as_json(chunk, &ids, 0, |json| {
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
        let bucket = keys.dedupe_bucket(now_ms / window_ms);
        for command in chunk_commands(keys, &ids, chunk.len(), &bucket, window_ms, cap) {
            // `STAMP` and `PEXPIRE` answer nothing the caller needs.
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
        let mut invocation = scripts::PUBLISH.prepare_invoke();
        for key in publish_keys(keys, window_ms) {
            invocation.key(key);
        }
        invocation.arg(window_ms).arg(cap).arg(origins(chunk));
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

/// A piece's seqs: known, or in the replies to what was handed to a publish connection (chunks
/// without chosen ids, or `PUBLISH` calls with each one's number of events).
enum Seqs {
    Stored(Vec<i64>),
    Pending(Vec<HandedChunk>),
    Scripted(Vec<(Pending, usize)>),
}

fn is_generated((_, event): &(usize, Event)) -> bool {
    event.id_origin == IdOrigin::Generated
}

/// Milliseconds since the Unix epoch, by this machine's clock (dedupe buckets tolerate clocks
/// that differ by less than a window).
pub(super) fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
