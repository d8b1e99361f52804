//! A group's journal: every change of its state, appended to a log of its own, so that a restart
//! (or a crash) finds the group as it was: its position in each stream, the events in flight or
//! waiting for a retry with their attempt counts, and its dead letters.
//!
//! Records are JSON (`{"op": …}`), written in one append per turn of the group's loop. Replay
//! folds them into [`Replayed`]; an event that was in flight at the crash comes back ready for
//! redelivery with its attempts kept.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use herald_log::Log;
use serde::{Deserialize, Serialize};

use crate::api::EngineError;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub(crate) enum JournalRecord {
    /// The group's definition; the first record.
    #[serde(rename_all = "camelCase")]
    Created {
        pattern: String,
        ack_timeout_ms: u64,
        max_retries: u32,
        backoff_initial_ms: u64,
        backoff_factor: f64,
        backoff_max_ms: u64,
        backoff_jitter: f64,
        max_in_flight: u32,
    },
    /// Events of `stream` below `next_seq` have been fetched by the group.
    #[serde(rename_all = "camelCase")]
    Position {
        stream: String,
        next_seq: u64,
    },
    /// Delivery number `attempts` of an event is about to be handed to a member.
    #[serde(rename_all = "camelCase")]
    Delivered {
        stream: String,
        seq: u64,
        attempts: u32,
        first_delivered_ms: i64,
    },
    /// `Delivered` for every seq of `from_seq..=to_seq` (written for runs of first deliveries).
    #[serde(rename_all = "camelCase")]
    DeliveredRange {
        stream: String,
        from_seq: u64,
        to_seq: u64,
        attempts: u32,
        first_delivered_ms: i64,
    },
    #[serde(rename_all = "camelCase")]
    Acked {
        stream: String,
        seq: u64,
    },
    /// `Acked` for every seq in the inclusive ranges.
    #[serde(rename_all = "camelCase")]
    AckedRanges {
        stream: String,
        ranges: Vec<(u64, u64)>,
    },
    /// Waiting for a retry at `due_ms` (Unix milliseconds).
    #[serde(rename_all = "camelCase")]
    Retry {
        stream: String,
        seq: u64,
        due_ms: i64,
        error: Option<String>,
    },
    /// Dead-lettered; the event travels with it so that retention cannot take it away.
    Dead(DeadState),
    Redriven,
    Purged,
    /// A snapshot of the whole state follows (its records, then `SnapshotEnd`); once it is
    /// complete, everything before it is obsolete and the log drops it.
    #[serde(rename_all = "camelCase")]
    SnapshotStart {
        positions: Vec<(String, u64)>,
    },
    SnapshotPending {
        entries: Vec<PendingEntry>,
    },
    SnapshotDead {
        entries: Vec<DeadState>,
    },
    SnapshotEnd,
}

/// One unfinished event in a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PendingEntry {
    pub stream: String,
    pub seq: u64,
    pub attempts: u32,
    pub first_delivered_ms: Option<i64>,
    pub due_ms: Option<i64>,
    pub error: Option<String>,
}

/// The state of an event the group has fetched but not finished.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct PendingState {
    pub attempts: u32,
    pub first_delivered_ms: Option<i64>,
    /// Set when waiting for a retry; unset when it was in flight (or never delivered).
    pub due_ms: Option<i64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeadState {
    pub stream: String,
    pub seq: u64,
    pub attempts: u32,
    pub error: Option<String>,
    pub first_delivered_ms: i64,
    pub dead_ms: i64,
    pub event: String,
}

/// The group state a journal describes.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    pub created: Option<JournalRecord>,
    pub positions: HashMap<String, u64>,
    pub pending: BTreeMap<(String, u64), PendingState>,
    pub dead: Vec<DeadState>,
    /// A snapshot being read; it replaces the state only once its end is read, so a snapshot
    /// cut short by a crash changes nothing.
    snapshot: Option<Box<Replayed>>,
}

impl JournalRecord {
    pub fn created(
        pattern: &herald_core::Pattern,
        policy: &crate::api::GroupPolicy,
    ) -> JournalRecord {
        JournalRecord::Created {
            pattern: pattern.to_string(),
            ack_timeout_ms: policy.ack_timeout.as_millis() as u64,
            max_retries: policy.max_retries,
            backoff_initial_ms: policy.backoff.initial.as_millis() as u64,
            backoff_factor: policy.backoff.factor,
            backoff_max_ms: policy.backoff.max.as_millis() as u64,
            backoff_jitter: policy.backoff.jitter,
            max_in_flight: policy.max_in_flight,
        }
    }
}

impl Replayed {
    pub fn apply(&mut self, record: JournalRecord) {
        match record {
            JournalRecord::SnapshotStart { positions } => {
                self.snapshot = Some(Box::new(Replayed {
                    positions: positions.into_iter().collect(),
                    ..Replayed::default()
                }));
            }
            JournalRecord::SnapshotPending { entries } => {
                if let Some(snapshot) = self.snapshot.as_mut() {
                    for entry in entries {
                        snapshot.pending.insert(
                            (entry.stream, entry.seq),
                            PendingState {
                                attempts: entry.attempts,
                                first_delivered_ms: entry.first_delivered_ms,
                                due_ms: entry.due_ms,
                                error: entry.error,
                            },
                        );
                    }
                }
            }
            JournalRecord::SnapshotDead { entries } => {
                if let Some(snapshot) = self.snapshot.as_mut() {
                    snapshot.dead.extend(entries);
                }
            }
            JournalRecord::SnapshotEnd => {
                if let Some(snapshot) = self.snapshot.take() {
                    self.positions = snapshot.positions;
                    self.pending = snapshot.pending;
                    self.dead = snapshot.dead;
                }
            }
            record => self.apply_change(record),
        }
    }

    fn apply_change(&mut self, record: JournalRecord) {
        match record {
            created @ JournalRecord::Created { .. } => self.created = Some(created),
            JournalRecord::Position { stream, next_seq } => {
                let position = self.positions.entry(stream).or_insert(1);
                *position = (*position).max(next_seq);
            }
            JournalRecord::Delivered {
                stream,
                seq,
                attempts,
                first_delivered_ms,
            } => {
                let pending = self.pending.entry((stream, seq)).or_default();
                pending.attempts = attempts;
                pending.first_delivered_ms.get_or_insert(first_delivered_ms);
                pending.due_ms = None;
            }
            JournalRecord::DeliveredRange {
                stream,
                from_seq,
                to_seq,
                attempts,
                first_delivered_ms,
            } => {
                for seq in from_seq..=to_seq {
                    self.apply_change(JournalRecord::Delivered {
                        stream: stream.clone(),
                        seq,
                        attempts,
                        first_delivered_ms,
                    });
                }
            }
            JournalRecord::Acked { stream, seq } => {
                self.pending.remove(&(stream, seq));
            }
            JournalRecord::AckedRanges { stream, ranges } => {
                for (from_seq, to_seq) in ranges {
                    for seq in from_seq..=to_seq {
                        self.pending.remove(&(stream.clone(), seq));
                    }
                }
            }
            JournalRecord::Retry {
                stream,
                seq,
                due_ms,
                error,
            } => {
                let pending = self.pending.entry((stream, seq)).or_default();
                pending.due_ms = Some(due_ms);
                pending.error = error;
            }
            JournalRecord::Dead(dead) => {
                self.pending.remove(&(dead.stream.clone(), dead.seq));
                self.dead.push(dead);
            }
            JournalRecord::Redriven => {
                for dead in self.dead.drain(..) {
                    self.pending
                        .insert((dead.stream, dead.seq), PendingState::default());
                }
            }
            JournalRecord::Purged => self.dead.clear(),
            JournalRecord::SnapshotStart { .. }
            | JournalRecord::SnapshotPending { .. }
            | JournalRecord::SnapshotDead { .. }
            | JournalRecord::SnapshotEnd => unreachable!("snapshot records are applied by apply"),
        }
    }
}

/// Bytes of dead-letter events per snapshot record, so that no record nears the log's limit.
const SNAPSHOT_DEAD_BYTES_MAX: usize = 4 * 1024 * 1024;

#[derive(Debug)]
pub(crate) struct Journal {
    log: Log,
    staged: Vec<JournalRecord>,
    records_since_snapshot: usize,
    snapshot_every_records: usize,
}

impl Journal {
    /// Reads the whole journal back.
    pub fn open(
        log: Log,
        snapshot_every_records: usize,
    ) -> Result<(Journal, Replayed), EngineError> {
        let mut replayed = Replayed::default();
        let mut reader = log.reader(1);
        loop {
            let records = reader.next_batch(4096, 4 << 20).map_err(storage_error)?;
            if records.is_empty() {
                break;
            }
            for record in records {
                let parsed: JournalRecord =
                    serde_json::from_slice(&record.payload).map_err(|error| {
                        EngineError::Corrupt {
                            stream: "group journal".into(),
                            seq: record.seq,
                            reason: error.to_string(),
                        }
                    })?;
                replayed.apply(parsed);
            }
        }
        Ok((
            Journal {
                log,
                staged: Vec::new(),
                records_since_snapshot: 0,
                snapshot_every_records: snapshot_every_records.max(1),
            },
            replayed,
        ))
    }

    pub fn stage(&mut self, record: JournalRecord) {
        self.staged.push(record);
    }

    /// Stages a delivery, extending the last staged range when it continues it.
    pub fn stage_delivered(
        &mut self,
        stream: &str,
        seq: u64,
        attempts: u32,
        first_delivered_ms: i64,
    ) {
        push_delivered(&mut self.staged, stream, seq, attempts, first_delivered_ms);
    }

    /// Stages an ack, into the last staged ack ranges when they are the same stream's.
    pub fn stage_acked(&mut self, stream: &str, seq: u64) {
        push_acked(&mut self.staged, stream, seq);
    }

    pub fn needs_snapshot(&self) -> bool {
        self.records_since_snapshot >= self.snapshot_every_records
    }

    /// Appends what was staged as one batch, durable under the journal's fsync policy.
    pub async fn flush(&mut self) -> Result<(), EngineError> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(&mut self.staged);
        self.records_since_snapshot += records.len();
        self.append(records).await.map(|_| ())
    }

    /// Writes a snapshot of the whole state (`created` first), then drops what precedes it.
    pub async fn snapshot(
        &mut self,
        created: JournalRecord,
        positions: Vec<(String, u64)>,
        pending: Vec<PendingEntry>,
        dead: Vec<DeadState>,
    ) -> Result<(), EngineError> {
        self.flush().await?;
        let mut records = vec![JournalRecord::SnapshotStart { positions }, created];
        for chunk in pending.chunks(1000) {
            records.push(JournalRecord::SnapshotPending {
                entries: chunk.to_vec(),
            });
        }
        let mut batch: Vec<DeadState> = Vec::new();
        let mut batch_bytes = 0;
        for letter in dead {
            batch_bytes += letter.event.len();
            batch.push(letter);
            if batch_bytes >= SNAPSHOT_DEAD_BYTES_MAX {
                records.push(JournalRecord::SnapshotDead {
                    entries: std::mem::take(&mut batch),
                });
                batch_bytes = 0;
            }
        }
        if !batch.is_empty() {
            records.push(JournalRecord::SnapshotDead { entries: batch });
        }
        records.push(JournalRecord::SnapshotEnd);
        let snapshot_start = self.append(records).await?;
        self.records_since_snapshot = 0;
        self.log
            .drop_before(snapshot_start)
            .await
            .map_err(storage_error)
    }

    /// Appends records; returns the journal seq of the first.
    async fn append(&mut self, records: Vec<JournalRecord>) -> Result<u64, EngineError> {
        let payloads = records
            .into_iter()
            .map(|record| match serde_json::to_vec(&record) {
                Ok(bytes) => Ok(Bytes::from(bytes)),
                Err(error) => Err(EngineError::Corrupt {
                    stream: "group journal".into(),
                    seq: 0,
                    reason: error.to_string(),
                }),
            })
            .collect::<Result<Vec<Bytes>, EngineError>>()?;
        let ack = self.log.append(payloads).await.map_err(storage_error)?;
        Ok(ack.first_seq)
    }

    pub fn close(&self) {
        let _ = self.log.close();
    }
}

/// Appends a delivery to `records`, extending the last record when it is a range this one
/// continues: a turn's deliveries (consecutive seqs, same attempt and time) become one record,
/// without a record (and a copy of the stream's name) per event.
fn push_delivered(
    records: &mut Vec<JournalRecord>,
    stream: &str,
    seq: u64,
    attempts: u32,
    first_delivered_ms: i64,
) {
    if let Some(JournalRecord::DeliveredRange {
        stream: run_stream,
        to_seq,
        attempts: run_attempts,
        first_delivered_ms: run_ms,
        ..
    }) = records.last_mut()
        && run_stream == stream
        && seq == *to_seq + 1
        && attempts == *run_attempts
        && first_delivered_ms == *run_ms
    {
        *to_seq = seq;
        return;
    }
    records.push(JournalRecord::DeliveredRange {
        stream: stream.to_owned(),
        from_seq: seq,
        to_seq: seq,
        attempts,
        first_delivered_ms,
    });
}

/// Appends an ack to `records`, into the last record when it holds the same stream's acks.
fn push_acked(records: &mut Vec<JournalRecord>, stream: &str, seq: u64) {
    if let Some(JournalRecord::AckedRanges {
        stream: run_stream,
        ranges,
    }) = records.last_mut()
        && run_stream == stream
    {
        match ranges.last_mut() {
            Some((_, to_seq)) if seq == *to_seq + 1 => *to_seq = seq,
            _ => ranges.push((seq, seq)),
        }
        return;
    }
    records.push(JournalRecord::AckedRanges {
        stream: stream.to_owned(),
        ranges: vec![(seq, seq)],
    });
}

fn storage_error(source: herald_log::LogError) -> EngineError {
    EngineError::Storage {
        stream: "group journal".into(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(seq: u64, attempts: u32) -> JournalRecord {
        JournalRecord::Delivered {
            stream: "s".into(),
            seq,
            attempts,
            first_delivered_ms: 100,
        }
    }

    #[test]
    fn replay_keeps_unacked_events_with_their_attempts() {
        let mut replayed = Replayed::default();
        for record in [
            JournalRecord::Position {
                stream: "s".into(),
                next_seq: 4,
            },
            delivered(1, 1),
            delivered(2, 1),
            delivered(3, 1),
            JournalRecord::Acked {
                stream: "s".into(),
                seq: 1,
            },
            JournalRecord::Retry {
                stream: "s".into(),
                seq: 2,
                due_ms: 5_000,
                error: Some("boom".into()),
            },
            delivered(2, 2),
        ] {
            replayed.apply(record);
        }
        assert_eq!(replayed.positions.get("s"), Some(&4));
        let pending: Vec<(u64, u32, Option<i64>)> = replayed
            .pending
            .iter()
            .map(|((_, seq), state)| (*seq, state.attempts, state.due_ms))
            .collect();
        assert_eq!(pending, [(2, 2, None), (3, 1, None)]);
        assert_eq!(
            replayed.pending[&("s".into(), 2)].error.as_deref(),
            Some("boom")
        );
    }

    #[test]
    fn dead_letters_leave_pending_and_redrive_brings_them_back_with_attempts_reset() {
        let mut replayed = Replayed::default();
        replayed.apply(delivered(7, 4));
        replayed.apply(JournalRecord::Dead(DeadState {
            stream: "s".into(),
            seq: 7,
            attempts: 4,
            error: Some("no".into()),
            first_delivered_ms: 1,
            dead_ms: 2,
            event: "{}".into(),
        }));
        assert!(replayed.pending.is_empty());
        assert_eq!(replayed.dead.len(), 1);
        replayed.apply(JournalRecord::Redriven);
        assert!(replayed.dead.is_empty());
        assert_eq!(replayed.pending[&("s".into(), 7)].attempts, 0);
    }

    /// Staging merges runs into range records, and replaying them gives what replaying one
    /// record per event gives.
    #[test]
    fn staging_merges_runs_and_keeps_the_order_of_the_rest() {
        let acked = |seq| JournalRecord::Acked {
            stream: "s".into(),
            seq,
        };
        let records = vec![
            acked(1),
            acked(2),
            acked(4),
            delivered(10, 1),
            delivered(11, 1),
            delivered(12, 2),
            JournalRecord::Purged,
            delivered(13, 1),
        ];
        let mut staged = Vec::new();
        for record in records.clone() {
            match record {
                JournalRecord::Delivered {
                    stream,
                    seq,
                    attempts,
                    first_delivered_ms,
                } => push_delivered(&mut staged, &stream, seq, attempts, first_delivered_ms),
                JournalRecord::Acked { stream, seq } => push_acked(&mut staged, &stream, seq),
                other => staged.push(other),
            }
        }
        assert_eq!(staged.len(), 5, "{staged:?}");
        let mut from_plain = Replayed::default();
        records
            .into_iter()
            .for_each(|record| from_plain.apply(record));
        let mut from_staged = Replayed::default();
        staged
            .into_iter()
            .for_each(|record| from_staged.apply(record));
        assert_eq!(from_plain.pending, from_staged.pending);
    }

    #[test]
    fn a_complete_snapshot_replaces_the_state_and_a_cut_one_changes_nothing() {
        let before = [delivered(1, 1), delivered(2, 1)];
        let snapshot = [
            JournalRecord::SnapshotStart {
                positions: vec![("s".into(), 9)],
            },
            JournalRecord::SnapshotPending {
                entries: vec![PendingEntry {
                    stream: "s".into(),
                    seq: 5,
                    attempts: 2,
                    first_delivered_ms: Some(1),
                    due_ms: None,
                    error: None,
                }],
            },
            JournalRecord::SnapshotEnd,
        ];
        let mut complete = Replayed::default();
        for record in before.iter().chain(snapshot.iter()).cloned() {
            complete.apply(record);
        }
        assert_eq!(complete.positions.get("s"), Some(&9));
        assert_eq!(
            complete.pending.keys().collect::<Vec<_>>(),
            [&("s".to_owned(), 5)]
        );

        let mut cut = Replayed::default();
        for record in before.iter().chain(snapshot[..2].iter()).cloned() {
            cut.apply(record);
        }
        let pending: Vec<u64> = cut.pending.keys().map(|(_, seq)| *seq).collect();
        assert_eq!(pending, [1, 2], "a snapshot without its end is ignored");
    }

    #[test]
    fn a_dead_record_is_flat_json() {
        let record = JournalRecord::Dead(DeadState {
            stream: "s".into(),
            seq: 7,
            attempts: 4,
            error: None,
            first_delivered_ms: 1,
            dead_ms: 2,
            event: "{}".into(),
        });
        let text = serde_json::to_string(&record).unwrap();
        assert!(
            text.starts_with(r#"{"op":"dead","stream":"s","seq":7,"attempts":4"#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<JournalRecord>(&text).unwrap(),
            record
        );
    }

    #[test]
    fn records_round_trip_through_json() {
        let record = JournalRecord::Retry {
            stream: "orders".into(),
            seq: 9,
            due_ms: 1_700_000_000_000,
            error: None,
        };
        let text = serde_json::to_string(&record).unwrap();
        assert_eq!(
            text,
            r#"{"op":"retry","stream":"orders","seq":9,"dueMs":1700000000000,"error":null}"#
        );
        assert_eq!(
            serde_json::from_str::<JournalRecord>(&text).unwrap(),
            record
        );
    }
}
