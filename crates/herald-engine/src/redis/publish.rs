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
use super::{RedisEngine, scripts};
use crate::api::{EngineError, PublishOutcome};

/// Events one script or transaction stores at most; a larger batch for one stream takes
/// several (in order), so that none holds Redis for long.
const PUBLISH_CHUNK_EVENTS_MAX: usize = 1024;
const _: () = assert!(PUBLISH_CHUNK_EVENTS_MAX <= chunk_ids::CHUNK_EVENTS_MAX);

/// An `XADD`'s bytes besides the key and the JSON: its other arguments and their headers.
const XADD_OVERHEAD_BYTES: usize = 64;

impl RedisEngine {
    /// [`crate::Engine::publish`]: each stream's events stored concurrently, ephemeral ones
    /// delivered here and relayed to the other processes.
    pub(super) async fn publish_events(
        &self,
        events: Vec<Event>,
    ) -> Result<Vec<PublishOutcome>, EngineError> {
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
        for stream in by_stream.keys() {
            self.register_stream(stream).await?;
        }
        let mut outcomes: Vec<Option<PublishOutcome>> = vec![None; count];
        let parts = join_all(
            by_stream
                .into_iter()
                .map(|(stream, events)| self.publish_to_stream(stream, events)),
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
    ) -> Result<Vec<(usize, PublishOutcome)>, EngineError> {
        let stream = stream.as_str();
        let keys = self.inner.keys.stream(stream);
        let declared = self.inner.config.streams.iter().find(|d| d.name == stream);
        let window = declared.map_or(self.inner.config.dedupe_window, |d| d.dedupe_window);
        let cap = declared
            .and_then(|declared| declared.retention.events_max)
            .unwrap_or(0);
        let window_ms = window.as_millis().max(1) as u64;
        let mut outcomes = Vec::with_capacity(events.len());
        let shared_name: std::sync::Arc<str> = stream.into();
        for chunk in events.chunks_mut(PUBLISH_CHUNK_EVENTS_MAX) {
            let seqs = if chunk
                .iter()
                .all(|(_, event)| event.id_origin == IdOrigin::Generated)
            {
                self.append(&keys, chunk, window_ms, cap).await?
            } else {
                self.append_deduped(&keys, chunk, window_ms, cap).await?
            };
            let mut stored = 0;
            for ((index, event), seq) in chunk.iter().zip(seqs) {
                stored += u64::from(seq > 0);
                outcomes.push((
                    *index,
                    PublishOutcome {
                        id: event.id.clone(),
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
        Ok(outcomes)
    }

    /// Stores events whose ids Herald generated (nothing to look up), under ids of this
    /// engine's making (`chunk_ids.rs`; their outcomes carry them): `MULTI`, an `XADD … 0-*`
    /// each, `STAMP`, which records the chunk in the dedupe bucket, `EXEC`. Returns their seqs,
    /// in order.
    async fn append(
        &self,
        keys: &StreamKeys,
        chunk: &mut [(usize, Event)],
        window_ms: u64,
        cap: u64,
    ) -> Result<Vec<i64>, EngineError> {
        let now_ms = unix_ms_now();
        let ids = ChunkIds::new(now_ms, rand::random());
        // Each command sized before it is written: grown argument by argument, redis-rs copied
        // an event's JSON several times over (docs/PERFORMANCE.md).
        let mut transaction = redis::Pipeline::with_capacity(chunk.len() + 2);
        transaction.atomic();
        let mut json = Vec::new();
        for (position, (_, event)) in chunk.iter_mut().enumerate() {
            event.id = ids.id(position);
            json.clear();
            event.write_json(&mut json);
            let mut add =
                redis::Cmd::with_capacity(8, keys.events.len() + json.len() + XADD_OVERHEAD_BYTES);
            add.arg("XADD").arg(&keys.events);
            if cap > 0 {
                add.arg("MAXLEN").arg("~").arg(cap);
            }
            add.arg("0-*").arg("e").arg(json.as_slice());
            transaction.add_command(add);
        }
        let bucket = keys.dedupe_bucket(now_ms / window_ms);
        transaction
            .cmd("PEXPIRE")
            .arg(&bucket)
            .arg(scripts::DEDUPE_BUCKET_WINDOWS_KEPT * window_ms)
            .ignore();
        // EVAL with the script's text rather than EVALSHA: inside a transaction a script that
        // Redis does not have (a restarted or failed-over node) would fail alone, after the
        // `XADD`s were applied.
        transaction
            .cmd("EVAL")
            .arg(scripts::STAMP)
            .arg(4)
            .arg(&keys.meta)
            .arg(&keys.events)
            .arg(&keys.times)
            .arg(&bucket)
            .arg(cap)
            .arg(ids.record_field())
            .arg(chunk.len())
            .ignore();
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

/// Milliseconds since the Unix epoch, by this machine's clock (dedupe buckets tolerate clocks
/// that differ by less than a window).
fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
