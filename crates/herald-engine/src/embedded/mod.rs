//! The embedded engine: streams on Herald's own log, in this process.
//!
//! Lock order: `Inner::streams` → `Inner::live` → a stream's fan-out → the subject indexes'
//! own locks. A stream's dedupe lock is never held with any other. No lock is held across an
//! `.await`.

mod dedupe;
mod live;
mod stream;

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use herald_core::{Event, Pattern, StoredEvent, Subject, SubjectIndex, SubscriptionId};
use herald_log::{Log, LogConfig, Retention};
use parking_lot::Mutex;
use tracing::info;

use crate::api::{
    Closed, Engine, EngineError, LiveSubscription, PublishOutcome, StartAt, StreamStats,
};
use crate::config::{EngineConfig, Storage, StreamConfig, is_valid_stream_name};
use live::{Offer, Subscriber};
use stream::Stream;

/// The embedded engine. Cheap to clone; clones share the engine.
#[derive(Clone, Debug)]
pub struct EmbeddedEngine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: EngineConfig,
    streams: Mutex<HashMap<String, Arc<Stream>>>,
    live: Mutex<LiveRegistry>,
    next_subscriber_id: AtomicU64,
}

/// Every live subscriber, so that streams created later attach them, and ephemeral events
/// (which belong to no stream) reach them.
#[derive(Debug, Default)]
struct LiveRegistry {
    subscribers: HashMap<u64, (Arc<Subscriber>, SubscriptionId)>,
    index: SubjectIndex<Arc<Subscriber>>,
}

impl EmbeddedEngine {
    /// Opens every stream found in the data directory and every declared stream.
    pub fn open(config: EngineConfig) -> Result<EmbeddedEngine, EngineError> {
        for (at, declared) in config.streams.iter().enumerate() {
            if !is_valid_stream_name(&declared.name) {
                return Err(EngineError::Config(format!(
                    "stream {at}: name {:?} must be one subject token ([A-Za-z0-9_-]+)",
                    declared.name
                )));
            }
        }
        let streams_dir = config.data_dir.join("streams");
        fs::create_dir_all(&streams_dir).map_err(|error| {
            EngineError::Config(format!("cannot create {}: {error}", streams_dir.display()))
        })?;
        let engine = EmbeddedEngine {
            inner: Arc::new(Inner {
                config,
                streams: Mutex::new(HashMap::new()),
                live: Mutex::new(LiveRegistry::default()),
                next_subscriber_id: AtomicU64::new(1),
            }),
        };
        let mut names: Vec<String> = engine
            .inner
            .config
            .streams
            .iter()
            .map(|declared| declared.name.clone())
            .collect();
        let found = fs::read_dir(&streams_dir).map_err(|error| {
            EngineError::Config(format!("cannot list {}: {error}", streams_dir.display()))
        })?;
        for entry in found.flatten() {
            if let Some(name) = entry.file_name().to_str()
                && is_valid_stream_name(name)
                && !names.iter().any(|known| known == name)
            {
                names.push(name.to_owned());
            }
        }
        for name in names {
            engine.stream(&name)?;
        }
        Ok(engine)
    }

    /// Closes every stream's log (fsync, stop writers). Live subscribers are told the engine
    /// stopped.
    pub fn close(&self) -> Result<(), EngineError> {
        let mut live = self.inner.live.lock();
        for (subscriber, _) in live.subscribers.values() {
            subscriber.close(Closed::EngineStopped);
        }
        live.subscribers.clear();
        drop(live);
        let streams: Vec<Arc<Stream>> = self.inner.streams.lock().values().cloned().collect();
        streams.iter().try_for_each(|stream| stream.close())
    }

    /// The stream a subject is stored in, or `None` for an ephemeral subject.
    fn route(&self, subject: &Subject) -> Option<String> {
        let config = &self.inner.config;
        if config
            .ephemeral
            .iter()
            .any(|pattern| pattern.matches(subject))
        {
            return None;
        }
        let declared = config.streams.iter().find(|declared| {
            declared
                .subjects
                .iter()
                .any(|pattern| pattern.matches(subject))
        });
        Some(declared.map_or_else(
            || subject.stream_name().to_owned(),
            |declared| declared.name.clone(),
        ))
    }

    /// The named stream, opened (and created) on first use. A new stream attaches every live
    /// subscriber, from its first event.
    fn stream(&self, name: &str) -> Result<Arc<Stream>, EngineError> {
        let mut streams = self.inner.streams.lock();
        if let Some(stream) = streams.get(name) {
            return Ok(stream.clone());
        }
        let config = &self.inner.config;
        let declared = config.streams.iter().find(|declared| declared.name == name);
        let stream_config = declared.cloned().unwrap_or_else(|| StreamConfig {
            name: name.to_owned(),
            subjects: Vec::new(),
            retention: Retention::default(),
            dedupe_window: config.dedupe_window,
            storage: Storage::File,
        });
        let log_config = LogConfig {
            fsync: config.fsync,
            retention: stream_config.retention,
            clock: config.clock.clone(),
            ..LogConfig::default()
        };
        let log = match stream_config.storage {
            Storage::File => Log::open(config.data_dir.join("streams").join(name), log_config),
            Storage::Memory => Log::in_memory(log_config),
        }
        .map_err(|source| EngineError::Storage {
            stream: name.to_owned(),
            source,
        })?;
        let window_us = stream_config.dedupe_window.as_micros() as u64;
        let stream = Arc::new(Stream::open(name.to_owned(), log, window_us)?);
        info!(stream = name, events = stream.stats().events, "stream open");
        for (subscriber, _) in self.inner.live.lock().subscribers.values() {
            if may_match_stream(&subscriber.pattern, name, declared.is_some()) {
                stream.attach(subscriber.clone());
            }
        }
        streams.insert(name.to_owned(), stream.clone());
        Ok(stream)
    }

    fn detach(&self, subscriber_id: u64) {
        let streams: Vec<Arc<Stream>> = self.inner.streams.lock().values().cloned().collect();
        let mut live = self.inner.live.lock();
        if let Some((subscriber, subscription)) = live.subscribers.remove(&subscriber_id) {
            subscriber.close(Closed::EngineStopped);
            live.index.remove(subscription);
        }
        drop(live);
        for stream in streams {
            stream.detach(subscriber_id);
        }
    }

    fn deliver_ephemeral(&self, event: Event) {
        let stored = Arc::new(StoredEvent {
            stream: String::new(),
            seq: 0,
            event,
        });
        let matches = self
            .inner
            .live
            .lock()
            .index
            .matches(&stored.event.event_type);
        for subscriber in matches.iter() {
            if subscriber.offer(&stored) != Offer::Delivered {
                self.detach(subscriber.id);
            }
        }
    }
}

/// Whether a subscription pattern can match subjects of a stream: a default stream holds only
/// subjects whose first token is its name; a declared stream may hold anything.
fn may_match_stream(pattern: &Pattern, stream: &str, declared: bool) -> bool {
    declared
        || pattern
            .tokens()
            .next()
            .is_some_and(|first| first == "*" || first == ">" || first == stream)
}

/// Unsubscribes when the subscription is dropped.
struct Unsubscribe {
    engine: Weak<Inner>,
    subscriber_id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        if let Some(inner) = self.engine.upgrade() {
            EmbeddedEngine { inner }.detach(self.subscriber_id);
        }
    }
}

impl Engine for EmbeddedEngine {
    async fn publish(&self, events: Vec<Event>) -> Result<Vec<PublishOutcome>, EngineError> {
        if events.is_empty() {
            return Err(EngineError::EmptyBatch);
        }
        let now_us = (self.inner.config.clock)();
        let count = events.len();
        let mut by_stream: HashMap<String, Vec<(usize, Event)>> = HashMap::new();
        let mut ephemeral = Vec::new();
        for (index, event) in events.into_iter().enumerate() {
            match self.route(&event.event_type) {
                Some(stream) => by_stream.entry(stream).or_default().push((index, event)),
                None => ephemeral.push((index, event)),
            }
        }
        let mut streams = Vec::with_capacity(by_stream.len());
        for (name, events) in by_stream {
            streams.push((self.stream(&name)?, events));
        }
        let mut outcomes: Vec<Option<PublishOutcome>> = vec![None; count];
        // Each stream's part runs as its own task, so that a caller that goes away between the
        // append and the fan-out cannot leave the stream's dispatch order waiting on a gap.
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|(stream, events)| tokio::spawn(stream.publish(events, now_us)))
            .collect();
        for (index, event) in ephemeral {
            outcomes[index] = Some(PublishOutcome {
                id: event.id.clone(),
                stream: None,
                seq: None,
                duplicate: false,
            });
            self.deliver_ephemeral(event);
        }
        for task in tasks {
            let stream_outcomes = task.await.map_err(|_| EngineError::Stopped)??;
            for (index, outcome) in stream_outcomes {
                outcomes[index] = Some(outcome);
            }
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    async fn subscribe(
        &self,
        pattern: Pattern,
        start: StartAt,
    ) -> Result<LiveSubscription, EngineError> {
        let subscriber_id = self
            .inner
            .next_subscriber_id
            .fetch_add(1, Ordering::Relaxed);
        let (subscriber, events, closed) = Subscriber::new(
            subscriber_id,
            pattern.clone(),
            start,
            self.inner.config.live_buffer_events,
        );
        // Under the streams lock, so that a stream is attached either here or at its creation.
        let streams = self.inner.streams.lock();
        let mut live = self.inner.live.lock();
        let subscription = live.index.insert(&pattern, subscriber.clone());
        live.subscribers
            .insert(subscriber_id, (subscriber.clone(), subscription));
        drop(live);
        for stream in streams.values() {
            let declared = self
                .inner
                .config
                .streams
                .iter()
                .any(|declared| declared.name == stream.name);
            if may_match_stream(&pattern, &stream.name, declared) {
                stream.attach(subscriber.clone());
            }
        }
        drop(streams);
        let unsubscribe = Unsubscribe {
            engine: Arc::downgrade(&self.inner),
            subscriber_id,
        };
        Ok(LiveSubscription::new(events, closed, Box::new(unsubscribe)))
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, EngineError> {
        let stream = self
            .inner
            .streams
            .lock()
            .get(stream)
            .cloned()
            .ok_or_else(|| EngineError::UnknownStream(stream.to_owned()))?;
        stream.read(from_seq, limit)
    }

    async fn streams(&self) -> Vec<StreamStats> {
        let streams: Vec<Arc<Stream>> = self.inner.streams.lock().values().cloned().collect();
        let mut stats: Vec<StreamStats> = streams.iter().map(|stream| stream.stats()).collect();
        stats.sort_by(|left, right| left.name.cmp(&right.name));
        stats
    }
}
