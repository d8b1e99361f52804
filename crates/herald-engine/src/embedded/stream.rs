//! One stream of the embedded engine: its log, its dedupe table, and its fan-out to live
//! subscribers.
//!
//! Publishes to one stream run concurrently (their appends share group commit). Each publish
//! is finished by its log callback (dedupe, counters, fan-out), which a file log calls in seq
//! order; a memory log calls it in its appender's thread, so concurrent publishes may finish in
//! any order there, and fan-out restores seq order: acknowledged events wait in `pending`
//! until every earlier seq has been dispatched. The last dispatched events stay in a
//! bounded tail cache, from which subscribers near the head catch up without a disk read.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use herald_core::{Event, IdOrigin, StoredEvent, SubjectIndex, SubscriptionId};
use herald_log::{AppendAck, FsyncSnapshot, Log, LogError, Record};
use parking_lot::Mutex;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tracing::warn;

use super::dedupe::{Dedupe, Seen};
use super::live::{Offer, Subscriber};
use super::rate::RateMeter;
use crate::api::{Closed, EngineError, PublishOutcome, StartAt, StreamStats};
use crate::config::{
    CATCH_UP_BATCH_EVENTS, DEDUPE_IDS_MAX, TAIL_CACHE_BYTES_MAX, TAIL_CACHE_EVENTS_MAX,
};

#[derive(Debug)]
pub(crate) struct Stream {
    /// Shared by the events read or stored here and their publish outcomes: one allocation per
    /// stream, not one per event.
    pub name: Arc<str>,
    log: Log,
    dedupe: Mutex<Dedupe>,
    /// Woken whenever an in-flight id settles, for publishes waiting on a duplicate.
    dedupe_settled: Notify,
    fanout: Mutex<Fanout>,
    published: AtomicU64,
    rate: Mutex<RateMeter>,
    duplicates: AtomicU64,
    slow_dropped: AtomicU64,
}

/// A live subscriber attached to this stream, with the first seq it wants from it.
#[derive(Debug)]
struct Attachment {
    subscriber: Arc<Subscriber>,
    seq_min: u64,
}

#[derive(Debug)]
struct Fanout {
    /// Every event below this seq has been dispatched.
    next_seq: u64,
    pending: BTreeMap<u64, Arc<StoredEvent>>,
    subscribers: SubjectIndex<Arc<Attachment>>,
    attached: HashMap<u64, SubscriptionId>,
    tail: VecDeque<Arc<StoredEvent>>,
    tail_bytes: usize,
    /// Consumer groups reading this stream, woken when events are dispatched.
    group_wakers: Vec<Weak<Notify>>,
}

impl Stream {
    pub fn open(name: String, log: Log, dedupe_window_us: u64) -> Result<Stream, EngineError> {
        let next_seq = log.stats().last_seq + 1;
        let stream = Stream {
            dedupe: Mutex::new(Dedupe::new(dedupe_window_us)),
            dedupe_settled: Notify::new(),
            fanout: Mutex::new(Fanout {
                next_seq,
                pending: BTreeMap::new(),
                subscribers: SubjectIndex::new(),
                attached: HashMap::new(),
                tail: VecDeque::new(),
                tail_bytes: 0,
                group_wakers: Vec::new(),
            }),
            published: AtomicU64::new(0),
            rate: Mutex::new(RateMeter::new()),
            duplicates: AtomicU64::new(0),
            slow_dropped: AtomicU64::new(0),
            name: Arc::from(name),
            log,
        };
        stream.rebuild_dedupe(dedupe_window_us)?;
        Ok(stream)
    }

    /// Reloads the ids stored within the dedupe window, so that dedupe survives a restart. At
    /// most the last `DEDUPE_IDS_MAX` events are read, as the table keeps no more: a restart
    /// costs the same after two minutes of 300 k events/s as after a quiet hour.
    fn rebuild_dedupe(&self, window_us: u64) -> Result<(), EngineError> {
        let stats = self.log.stats();
        let Some(last_us) = stats.last_timestamp_us else {
            return Ok(());
        };
        let in_window = self
            .log
            .seq_at_time(last_us.saturating_sub(window_us))
            .map_err(|source| self.storage_error(source))?;
        let from = in_window.max((stats.last_seq + 1).saturating_sub(DEDUPE_IDS_MAX as u64));
        let mut reader = self.log.reader(from);
        let mut dedupe = self.dedupe.lock();
        loop {
            let records = reader
                .next_batch(CATCH_UP_BATCH_EVENTS, 1 << 20)
                .map_err(|source| self.storage_error(source))?;
            if records.is_empty() {
                return Ok(());
            }
            for record in records {
                // Read and dropped here: sharing the chunk costs nothing.
                let stored = self.decode(record.seq, record.payload)?;
                if let Seen::New = dedupe.check_and_claim(stored.event.id.as_str(), 0) {
                    let id = stored.event.id.as_str();
                    dedupe.stored(id, IdOrigin::Publisher, record.seq, record.timestamp_us);
                }
            }
        }
    }

    /// Stores events (all routed to this stream, in publish order), answering each with its
    /// position in `events`.
    ///
    /// Needs no task of its own: once the append is queued, the log's writer thread finishes the
    /// publish ([`Claimed::finish`]: dedupe, counters, fan-out) whether or not this future is
    /// still awaited, so a caller that goes away cannot leave a gap in the fan-out's seq order;
    /// and a future dropped before that releases its claims ([`Claimed`]'s `Drop`).
    pub async fn publish(
        self: &Arc<Self>,
        events: Vec<(usize, Event)>,
        now_us: u64,
    ) -> Result<Vec<(usize, PublishOutcome)>, EngineError> {
        // Ids Herald generated only (the usual batch): nothing to look up, every event is
        // stored, and the batch is handed on as it is rather than moved event by event.
        if !events.is_empty() && !events.iter().any(|(_, event)| looked_up(event)) {
            let claimed = Claimed {
                stream: self.clone(),
                events,
            };
            return self.store_new(claimed).await;
        }
        // A repeat inside the batch is a duplicate of its first occurrence. Only ids the
        // publisher chose are looked up (`IdOrigin`): a generated id is new by construction.
        // Every stored id is remembered (`on_stored`), so that one sent again is a duplicate.
        let mut first_of: hashbrown::HashMap<&str, usize> = hashbrown::HashMap::new();
        let repeat_of: Vec<Option<usize>> = events
            .iter()
            .enumerate()
            .map(|(position, (_, event))| {
                if !looked_up(event) {
                    return None;
                }
                match first_of.entry(event.id.as_str()) {
                    hashbrown::hash_map::Entry::Occupied(first) => Some(*first.get()),
                    hashbrown::hash_map::Entry::Vacant(slot) => {
                        slot.insert(position);
                        None
                    }
                }
            })
            .collect();
        drop(first_of);
        // Every distinct chosen id claimed under one lock; an id another publish is storing
        // right now is waited for on its own.
        let seen: Vec<Option<Seen>> = {
            let mut dedupe = self.dedupe.lock();
            events
                .iter()
                .zip(&repeat_of)
                .map(|((_, event), repeat)| {
                    (repeat.is_none() && looked_up(event))
                        .then(|| dedupe.check_and_claim(event.id.as_str(), now_us))
                })
                .collect()
        };
        let mut claimed = Claimed {
            stream: self.clone(),
            events: Vec::with_capacity(events.len()),
        };
        let mut outcomes = Vec::with_capacity(events.len());
        let mut waiting: Vec<(usize, Event)> = Vec::new();
        // Repeats of an id earlier in the batch, answered once their first occurrence is.
        let mut repeats: Vec<(usize, Event)> = Vec::new();
        for (position, (index, event)) in events.into_iter().enumerate() {
            match (repeat_of[position], seen[position]) {
                (Some(_), _) => repeats.push((index, event)),
                (None, Some(Seen::Stored(seq))) => {
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                    outcomes.push((index, self.outcome(&event, seq, true)));
                }
                (None, Some(Seen::InFlight)) => waiting.push((index, event)),
                (None, _) => claimed.events.push((index, event)),
            }
        }
        let waited = !waiting.is_empty();
        for (index, event) in waiting {
            match self.claim(event.id.as_str(), now_us).await {
                Some(seq) => {
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                    outcomes.push((index, self.outcome(&event, seq, true)));
                }
                None => claimed.events.push((index, event)),
            }
        }
        if waited {
            // Seqs follow publish order within the batch.
            claimed.events.sort_by_key(|(index, _)| *index);
        }
        if !claimed.events.is_empty() {
            outcomes.extend(self.store_new(claimed).await?);
        }
        if !repeats.is_empty() {
            let seq_of: hashbrown::HashMap<&str, u64> = outcomes
                .iter()
                .filter_map(|(_, outcome)| Some((outcome.id.as_str(), outcome.seq?)))
                .collect();
            let answers: Vec<(usize, PublishOutcome)> = repeats
                .iter()
                .filter_map(|(index, event)| {
                    let seq = *seq_of.get(event.id.as_str())?;
                    Some((*index, self.outcome(event, seq, true)))
                })
                .collect();
            drop(seq_of);
            self.duplicates
                .fetch_add(answers.len() as u64, Ordering::Relaxed);
            outcomes.extend(answers);
        }
        Ok(outcomes)
    }

    /// Claims an id for storing, or returns the seq it was stored with. Waits while another
    /// publish is storing the same id.
    async fn claim(&self, id: &str, now_us: u64) -> Option<u64> {
        loop {
            let settled = self.dedupe_settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            match self.dedupe.lock().check_and_claim(id, now_us) {
                Seen::Stored(seq) => return Some(seq),
                Seen::New => return None,
                Seen::InFlight => {}
            }
            settled.await;
        }
    }

    /// Stores the claimed events, each answered as new.
    async fn store_new(
        &self,
        claimed: Claimed,
    ) -> Result<Vec<(usize, PublishOutcome)>, EngineError> {
        Ok(self
            .store(claimed)
            .await?
            .into_iter()
            .map(|(index, event)| (index, self.outcome(&event.event, event.seq, false)))
            .collect())
    }

    /// Appends the claimed events; the writer thread finishes the publish and answers.
    async fn store(&self, claimed: Claimed) -> Result<Vec<(usize, Arc<StoredEvent>)>, EngineError> {
        // One buffer for the whole batch, each event's JSON a slice of it: a buffer and a
        // `Bytes` header per event were two allocations, freed later on another thread. Events
        // kept for long are detached from it (`StoredEvent::detached`), as are those read back.
        let mut buffer = Vec::with_capacity(
            claimed
                .events
                .iter()
                .map(|(_, event)| event.json_bytes_expected())
                .sum(),
        );
        let mut ranges = Vec::with_capacity(claimed.events.len());
        for (_, event) in &claimed.events {
            let start = buffer.len();
            event.write_json(&mut buffer);
            ranges.push(start..buffer.len());
        }
        let buffer = Bytes::from(buffer);
        let payloads: Vec<Bytes> = ranges
            .into_iter()
            .map(|range| buffer.slice(range))
            .collect();
        let (answer, answered) = tokio::sync::oneshot::channel();
        let kept = payloads.clone();
        self.log
            .append_then(
                payloads,
                Box::new(move |appended| {
                    let _ = answer.send(claimed.finish(appended, kept));
                }),
            )
            .await;
        // A publish always yields once, as it did when every append was a hand-off: one the log
        // committed inline is answered already, and a publisher looping without yielding would
        // starve whatever shares its task or worker — its own subscribers first, which would
        // then be dropped as slow.
        tokio::task::yield_now().await;
        answered
            .await
            .map_err(|_| self.storage_error(LogError::Closed))?
    }

    /// Records a stored batch: dedupe, counters, fan-out. Runs on the log's writer thread, in
    /// seq order.
    fn on_stored(&self, stored: &[(usize, Arc<StoredEvent>)], timestamp_us: u64) {
        let mut dedupe = self.dedupe.lock();
        for (_, event) in stored {
            let origin = event.event.id_origin;
            dedupe.stored(event.event.id.as_str(), origin, event.seq, timestamp_us);
        }
        drop(dedupe);
        if stored.iter().any(|(_, event)| looked_up(&event.event)) {
            self.dedupe_settled.notify_waiters();
        }
        self.published
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        self.rate.lock().record(stored.len() as u64);
        self.dispatch(stored.iter().map(|(_, event)| event.clone()));
    }

    /// Feeds acknowledged events to live subscribers, in seq order across concurrent publishes.
    fn dispatch(&self, events: impl Iterator<Item = Arc<StoredEvent>>) {
        let mut fanout = self.fanout.lock();
        let mut gone = Vec::new();
        let head_before = fanout.next_seq;
        // Usually the batch is next in line: it is dispatched as it comes. Otherwise it waits in
        // `pending` for the seqs before it.
        let mut in_order = Vec::new();
        for event in events {
            if fanout.pending.is_empty() && event.seq == fanout.next_seq + in_order.len() as u64 {
                in_order.push(event);
            } else {
                fanout.pending.insert(event.seq, event);
            }
        }
        let mut in_order = in_order.into_iter();
        loop {
            let next_seq = fanout.next_seq;
            let Some(event) = in_order.next().or_else(|| fanout.pending.remove(&next_seq)) else {
                break;
            };
            debug_assert_eq!(event.seq, next_seq, "dispatch is in seq order");
            for attachment in fanout.subscribers.matches(&event.event.event_type).iter() {
                if event.seq < attachment.seq_min {
                    continue;
                }
                match attachment.subscriber.offer(&event) {
                    Offer::Delivered => {}
                    Offer::DroppedSlow => {
                        self.slow_dropped.fetch_add(1, Ordering::Relaxed);
                        gone.push(attachment.subscriber.id);
                    }
                    Offer::Gone => gone.push(attachment.subscriber.id),
                }
            }
            fanout.next_seq += 1;
            fanout.remember(event);
        }
        for subscriber_id in gone {
            fanout.detach(subscriber_id);
        }
        if fanout.next_seq > head_before {
            fanout.group_wakers.retain(|waker| match waker.upgrade() {
                Some(waker) => {
                    waker.notify_one();
                    true
                }
                None => false,
            });
        }
    }

    /// The seq the next dispatched event will have: groups read only below it.
    pub fn head(&self) -> u64 {
        self.fanout.lock().next_seq
    }

    pub fn seq_at_time(&self, time: OffsetDateTime) -> Result<u64, EngineError> {
        self.log
            .seq_at_time(unix_us(time))
            .map_err(|source| self.storage_error(source))
    }

    pub fn add_waker(&self, waker: &Arc<Notify>) {
        self.fanout.lock().group_wakers.push(Arc::downgrade(waker));
    }

    /// Up to `limit` dispatched events from `from_seq`, from the tail cache when it reaches back
    /// that far, else from the log through `cursor`.
    ///
    /// The caller keeps `cursor` between fetches, so that reading a backlog opens the segment
    /// once and each read-ahead chunk (256 KiB) serves every event in it; a fresh reader per
    /// fetch read (and zeroed) a whole chunk for a few hundred events. It is dropped once the
    /// tail cache serves, so that an idle group holds no segment file open.
    pub fn fetch(
        &self,
        from_seq: u64,
        limit: usize,
        cursor: &mut StreamCursor,
    ) -> Result<Vec<Arc<StoredEvent>>, EngineError> {
        let head = {
            let fanout = self.fanout.lock();
            if from_seq >= fanout.next_seq {
                cursor.reader = None;
                return Ok(Vec::new());
            }
            if let Some(mut cached) = fanout.tail_from(from_seq) {
                cursor.reader = None;
                cached.truncate(limit);
                return Ok(cached);
            }
            fanout.next_seq
        };
        let reader = match &mut cursor.reader {
            Some(reader) => {
                if reader.next_seq() != from_seq {
                    reader.seek(from_seq);
                }
                reader
            }
            None => cursor.reader.insert(self.log.reader(from_seq)),
        };
        let records = reader
            .next_batch(limit, READ_BYTES_MAX)
            .map_err(|source| self.storage_error(source))?;
        // The events share the read-ahead chunk instead of copying out of it: a group keeps
        // them only until they are acked; what it keeps longer it detaches
        // (`StoredEvent::detached`).
        records
            .into_iter()
            .take_while(|record| record.seq < head)
            .map(|record| self.decode(record.seq, record.payload).map(Arc::new))
            .collect()
    }

    /// Attaches a live subscriber. From `Latest` it is attached at once; otherwise a task
    /// replays history (from the tail cache or the log) and attaches it once caught up, so that
    /// it sees every event from its start exactly once and in order.
    pub fn attach(self: &Arc<Self>, subscriber: Arc<Subscriber>) {
        let seq_min = match subscriber.start {
            StartAt::Latest => {
                let mut fanout = self.fanout.lock();
                let seq_min = fanout.next_seq;
                fanout.attach(subscriber, seq_min);
                return;
            }
            StartAt::Earliest => 1,
            StartAt::Seq(seq) => seq.max(1),
            StartAt::Time(time) => match self.log.seq_at_time(unix_us(time)) {
                Ok(seq) => seq,
                Err(error) => {
                    subscriber.close(Closed::ReadFailed(error.to_string()));
                    return;
                }
            },
        };
        tokio::spawn(self.clone().catch_up(subscriber, seq_min));
    }

    async fn catch_up(self: Arc<Self>, subscriber: Arc<Subscriber>, seq_min: u64) {
        let mut from = seq_min;
        loop {
            if subscriber.is_dead() {
                return;
            }
            let history = {
                let mut fanout = self.fanout.lock();
                if from >= fanout.next_seq {
                    fanout.attach(subscriber, from);
                    return;
                }
                fanout.tail_from(from)
            };
            let history = match history {
                Some(cached) => cached,
                None => match self.read(from, CATCH_UP_BATCH_EVENTS) {
                    Ok(events) => events,
                    Err(error) => {
                        subscriber.close(Closed::ReadFailed(error.to_string()));
                        return;
                    }
                },
            };
            let Some(last) = history.last() else {
                // Nothing readable below the dispatched head: retention trimmed it meanwhile.
                from = self.fanout.lock().next_seq;
                continue;
            };
            from = last.seq + 1;
            for event in history {
                if !subscriber.send_history(event).await {
                    return;
                }
            }
        }
    }

    pub fn detach(&self, subscriber_id: u64) {
        self.fanout.lock().detach(subscriber_id);
    }

    /// Up to `limit` stored events from `from_seq`, read from the log.
    pub fn read(&self, from_seq: u64, limit: usize) -> Result<Vec<Arc<StoredEvent>>, EngineError> {
        let records = self
            .log
            .read(from_seq, limit, READ_BYTES_MAX)
            .map_err(|source| self.storage_error(source))?;
        records
            .iter()
            .map(|record| self.decode_owned(record))
            .collect()
    }

    /// A record read back as an event of its own: copied out of the read-ahead chunk, since an
    /// event kept in a cache, a group or a dead-letter list would otherwise keep the whole
    /// chunk alive.
    fn decode_owned(&self, record: &Record) -> Result<Arc<StoredEvent>, EngineError> {
        self.decode(record.seq, Bytes::copy_from_slice(&record.payload))
            .map(Arc::new)
    }

    /// The stored events at `seqs` (ascending), `None` where one is no longer stored: a read per
    /// run of nearby seqs rather than per event, so that a group restoring thousands of pending
    /// events reads each chunk of the log once, and decodes only the events it wants.
    pub fn read_each(&self, seqs: &[u64]) -> Result<Vec<Option<Arc<StoredEvent>>>, EngineError> {
        debug_assert!(seqs.is_sorted(), "read_each wants ascending seqs");
        let mut found = Vec::with_capacity(seqs.len());
        let mut wanted = seqs.iter().copied().peekable();
        while let Some(&first) = wanted.peek() {
            let records = self
                .log
                .read(first, CATCH_UP_BATCH_EVENTS, READ_BYTES_MAX)
                .map_err(|source| self.storage_error(source))?;
            let Some(last_read) = records.last().map(|record| record.seq) else {
                break;
            };
            for record in records {
                while wanted.next_if(|&seq| seq < record.seq).is_some() {
                    found.push(None);
                }
                if wanted.next_if_eq(&record.seq).is_some() {
                    found.push(Some(self.decode_owned(&record)?));
                }
            }
            while wanted.next_if(|&seq| seq <= last_read).is_some() {
                found.push(None);
            }
        }
        found.resize(seqs.len(), None);
        Ok(found)
    }

    pub fn stats(&self) -> StreamStats {
        let log = self.log.stats();
        StreamStats {
            name: self.name.to_string(),
            first_seq: log.first_seq,
            last_seq: log.last_seq,
            events: log.events,
            bytes: log.bytes,
            published: self.published.load(Ordering::Relaxed),
            published_per_second: self.rate.lock().per_second(),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            live_subscribers: self.fanout.lock().attached.len(),
            slow_consumers_dropped: self.slow_dropped.load(Ordering::Relaxed),
        }
    }

    pub fn fsync_times(&self) -> FsyncSnapshot {
        self.log.fsync_times()
    }

    pub fn io_times(&self) -> herald_log::IoSnapshot {
        self.log.io_times()
    }

    pub fn close(&self) -> Result<(), EngineError> {
        self.log
            .close()
            .map_err(|source| self.storage_error(source))
    }

    fn decode(&self, seq: u64, payload: Bytes) -> Result<StoredEvent, EngineError> {
        // Validated when published; the log's checksums vouch for the bytes since. Only the
        // type and timestamp are read here: a delivery copies the stored bytes, and the rest is
        // decoded if something reads a field.
        StoredEvent::from_log(self.name.clone(), seq, payload).map_err(|error| {
            warn!(stream = %self.name, seq, %error, "stored event does not decode");
            EngineError::Corrupt {
                stream: self.name.to_string(),
                seq,
                reason: error.to_string(),
            }
        })
    }

    fn outcome(&self, event: &Event, seq: u64, duplicate: bool) -> PublishOutcome {
        PublishOutcome {
            id: event.id.clone(),
            stream: Some(self.name.clone()),
            seq: Some(seq),
            duplicate,
        }
    }

    fn storage_error(&self, source: LogError) -> EngineError {
        EngineError::Storage {
            stream: self.name.to_string(),
            source,
        }
    }
}

/// Whether a publish looks an event's id up in the dedupe table: only ids its publisher chose
/// (see `herald_core::IdOrigin`); every stored id is recorded.
fn looked_up(event: &Event) -> bool {
    event.id_origin == IdOrigin::Publisher
}

/// Payload bytes one read from the log returns at most.
const READ_BYTES_MAX: usize = 4 << 20;

/// Where a reader of the stream (a group) is in its log, kept between fetches.
#[derive(Default)]
pub(crate) struct StreamCursor {
    reader: Option<herald_log::Reader>,
}

/// Events of a publish on their way to the log; those whose publisher chose their id hold a
/// claim on it in the stream's dedupe table (generated ids hold none). Dropped unfinished (its
/// publish cancelled before the append was queued, or the log closed under it), it releases the
/// claims, so that a retry is stored rather than left waiting on an id nobody is storing.
struct Claimed {
    stream: Arc<Stream>,
    /// With their positions in the engine call's batch, in publish order.
    events: Vec<(usize, Event)>,
}

impl Claimed {
    /// Completes the publish once the log answered `payloads` (the events' JSON, in order).
    fn finish(
        mut self,
        appended: Result<AppendAck, LogError>,
        payloads: Vec<Bytes>,
    ) -> Result<Vec<(usize, Arc<StoredEvent>)>, EngineError> {
        // On failure, dropping `self` releases the claims.
        let ack = appended.map_err(|source| self.stream.storage_error(source))?;
        let events = std::mem::take(&mut self.events);
        debug_assert_eq!(ack.last_seq - ack.first_seq + 1, events.len() as u64);
        let stored: Vec<(usize, Arc<StoredEvent>)> = events
            .into_iter()
            .zip(payloads)
            .zip(ack.first_seq..)
            .map(|(((index, event), json), seq)| {
                let stored = StoredEvent::from_stored(self.stream.name.clone(), seq, event, json);
                (index, Arc::new(stored))
            })
            .collect();
        self.stream.on_stored(&stored, ack.timestamp_us);
        Ok(stored)
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        if !self.events.iter().any(|(_, event)| looked_up(event)) {
            return;
        }
        let mut dedupe = self.stream.dedupe.lock();
        for (_, event) in self.events.iter().filter(|(_, event)| looked_up(event)) {
            dedupe.release(event.id.as_str());
        }
        drop(dedupe);
        self.stream.dedupe_settled.notify_waiters();
    }
}

impl Fanout {
    fn attach(&mut self, subscriber: Arc<Subscriber>, seq_min: u64) {
        let pattern = subscriber.pattern.clone();
        let subscriber_id = subscriber.id;
        let attachment = Arc::new(Attachment {
            subscriber,
            seq_min,
        });
        let subscription = self.subscribers.insert(&pattern, attachment);
        self.attached.insert(subscriber_id, subscription);
    }

    fn detach(&mut self, subscriber_id: u64) {
        if let Some(subscription) = self.attached.remove(&subscriber_id) {
            self.subscribers.remove(subscription);
        }
    }

    fn remember(&mut self, event: Arc<StoredEvent>) {
        self.tail_bytes += event.event.data.get().len();
        self.tail.push_back(event);
        while self.tail.len() > TAIL_CACHE_EVENTS_MAX || self.tail_bytes > TAIL_CACHE_BYTES_MAX {
            if let Some(old) = self.tail.pop_front() {
                self.tail_bytes -= old.event.data.get().len();
            }
        }
    }

    /// The cached events from `from` up to the head, if the cache reaches back that far.
    fn tail_from(&self, from: u64) -> Option<Vec<Arc<StoredEvent>>> {
        let first = self.tail.front()?.seq;
        if from < first {
            return None;
        }
        Some(
            self.tail
                .iter()
                .skip((from - first) as usize)
                .take(CATCH_UP_BATCH_EVENTS)
                .cloned()
                .collect(),
        )
    }
}

pub(crate) fn unix_us(time: OffsetDateTime) -> u64 {
    (time.unix_timestamp_nanos() / 1000).max(0) as u64
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use herald_log::LogConfig;

    use super::*;
    use crate::conformance::event;

    /// `seqs` asked of a stream holding 1..=1500 (three read batches) → the seqs found.
    fn check(seqs: &[u64], expect: &[Option<u64>]) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let log = Log::in_memory(LogConfig::default()).unwrap();
        let stream = Arc::new(Stream::open("order".into(), log, 0).unwrap());
        let events = (0..1500)
            .map(|n| (n, event("order.placed", "{}")))
            .collect();
        runtime.block_on(stream.publish(events, 1)).unwrap();
        let found: Vec<Option<u64>> = stream
            .read_each(seqs)
            .unwrap()
            .iter()
            .map(|event| event.as_ref().map(|event| event.seq))
            .collect();
        assert_eq!(found, expect, "read_each({seqs:?})");
    }

    #[test]
    fn read_each_finds_every_stored_seq_across_batches_and_none_past_the_end() {
        check(&[], &[]);
        check(&[1], &[Some(1)]);
        check(&[1, 2, 3], &[Some(1), Some(2), Some(3)]);
        check(
            &[1, 512, 513, 1024, 1499],
            &[Some(1), Some(512), Some(513), Some(1024), Some(1499)],
        );
        check(
            &[7, 1400, 1500, 1501],
            &[Some(7), Some(1400), Some(1500), None],
        );
        check(&[1600, 2000], &[None, None]);
    }
}
