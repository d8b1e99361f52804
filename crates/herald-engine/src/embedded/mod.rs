//! The embedded engine: streams on Herald's own log, in this process.
//!
//! Lock order: `Inner::streams` → `Inner::live` → a stream's fan-out → the subject indexes'
//! own locks. A stream's dedupe lock is never held with any other of the engine's (a publish's
//! log callback takes it, then the fan-out's, under the log's writer lock). No lock is held
//! across an `.await`.

mod block_queue;
mod dedupe;
mod group;
mod in_flight;
mod journal;
pub(crate) mod live;
pub(crate) mod rate;
mod stream;

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use hashbrown::hash_map::EntryRef;
use herald_core::{Event, Pattern, StoredEvent, Subject, SubjectIndex, SubscriptionId};
use herald_log::{FsyncSnapshot, Log, LogConfig, Retention};
use parking_lot::Mutex;
use tracing::info;

use crate::api::{
    Closed, DeadLetter, Engine, EngineError, GroupMember, GroupSpec, GroupStats, LiveSubscription,
    PublishOutcome, StartAt, StreamStats,
};
use crate::config::{EngineConfig, Storage, StreamConfig, is_valid_stream_name};
use group::{CommandSender, Control, GroupActor};
use journal::{Journal, JournalRecord};
use live::{Offer, Subscriber};
use stream::Stream;

/// Member verbs waiting for a group's task, per group.
const GROUP_COMMANDS_QUEUED_MAX: usize = 4096;

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
    groups: Mutex<HashMap<String, GroupHandle>>,
    next_subscriber_id: AtomicU64,
    next_member_id: AtomicU64,
}

/// How the engine reaches a group's task.
#[derive(Debug, Clone)]
struct GroupHandle {
    pattern: Pattern,
    commands: CommandSender,
    control: tokio::sync::mpsc::UnboundedSender<Control>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
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
                groups: Mutex::new(HashMap::new()),
                next_subscriber_id: AtomicU64::new(1),
                next_member_id: AtomicU64::new(1),
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
        engine.restore_groups()?;
        Ok(engine)
    }

    /// The durations of every fsync of the streams' logs since the engine opened (group
    /// journals apart): what an acknowledgement waits for under `fsync = always`, measured
    /// under the load of the moment. Snapshots before and after a run give the run's
    /// ([`FsyncSnapshot::since`]).
    pub fn fsync_times(&self) -> FsyncSnapshot {
        let streams: Vec<Arc<Stream>> = self.inner.streams.lock().values().cloned().collect();
        let mut all = FsyncSnapshot::default();
        for stream in streams {
            all.add(&stream.fsync_times());
        }
        all
    }

    /// The streams' logs' fsyncs, writes and waits for their syncers since the engine opened
    /// (`herald_log::IoTimes`): whether a latency run's writes stalled behind its fsyncs.
    pub fn io_times(&self) -> herald_log::IoSnapshot {
        let streams: Vec<Arc<Stream>> = self.inner.streams.lock().values().cloned().collect();
        let mut all = herald_log::IoSnapshot::default();
        for stream in streams {
            all.add(&stream.io_times());
        }
        all
    }

    /// Starts the task of every group whose journal is in the data directory.
    fn restore_groups(&self) -> Result<(), EngineError> {
        if self.inner.config.storage == Storage::Memory {
            return Ok(());
        }
        let groups_dir = self.inner.config.data_dir.join("groups");
        let Ok(found) = fs::read_dir(&groups_dir) else {
            return Ok(());
        };
        for entry in found.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !is_valid_stream_name(&name) {
                continue;
            }
            let (journal, replayed) = Journal::open(
                self.journal_log(&name)?,
                self.inner.config.group_journal_snapshot_records,
            )?;
            let Some(JournalRecord::Created { .. }) = &replayed.created else {
                journal.close();
                continue;
            };
            let Some(spec) = group_spec_from(&name, replayed.created.as_ref()) else {
                return Err(EngineError::Config(format!(
                    "group {name:?}: its journal's definition is invalid"
                )));
            };
            let streams = self.inner.streams.lock();
            let mut groups = self.inner.groups.lock();
            self.start_group(&streams, &mut groups, spec, journal, replayed);
        }
        Ok(())
    }

    fn journal_log(&self, group: &str) -> Result<Log, EngineError> {
        let config = &self.inner.config;
        let log_config = LogConfig {
            fsync: config.fsync,
            clock: config.clock.clone(),
            segment_bytes_max: config.group_journal_segment_bytes,
            ..LogConfig::default()
        };
        match config.storage {
            Storage::File => Log::open(config.data_dir.join("groups").join(group), log_config),
            Storage::Memory => Log::in_memory(log_config),
        }
        .map_err(|source| EngineError::Storage {
            stream: format!("group {group}"),
            source,
        })
    }

    /// Spawns a group's task over the streams its pattern may match.
    /// Called with the streams and groups locks held (in that order), so that a stream created
    /// meanwhile is attached either here or by `stream()`.
    fn start_group(
        &self,
        streams: &HashMap<String, Arc<Stream>>,
        groups: &mut HashMap<String, GroupHandle>,
        spec: GroupSpec,
        journal: Journal,
        replayed: journal::Replayed,
    ) -> GroupHandle {
        let streams: Vec<Arc<Stream>> = streams
            .values()
            .filter(|stream| {
                may_match_stream(&spec.pattern, &stream.name, self.is_declared(&stream.name))
            })
            .cloned()
            .collect();
        let (commands, command_inbox) = tokio::sync::mpsc::channel(GROUP_COMMANDS_QUEUED_MAX);
        let (control, control_inbox) = tokio::sync::mpsc::unbounded_channel();
        let actor = GroupActor::new(
            spec.name.clone(),
            spec.pattern.clone(),
            spec.policy.clone(),
            spec.start,
            Arc::new(tokio::sync::Notify::new()),
            journal,
            replayed,
            streams,
        );
        let task = tokio::spawn(actor.run(command_inbox, control_inbox));
        let handle = GroupHandle {
            pattern: spec.pattern,
            commands,
            control,
            task: Arc::new(Mutex::new(Some(task))),
        };
        groups.insert(spec.name, handle.clone());
        handle
    }

    /// The group named in `spec`, created (journal and task) if it does not exist; an existing
    /// group must have the same pattern.
    fn ensure_group(&self, spec: &GroupSpec) -> Result<GroupHandle, EngineError> {
        if !is_valid_stream_name(&spec.name) {
            return Err(EngineError::Config(format!(
                "group name {:?} must be one subject token ([A-Za-z0-9_-]+)",
                spec.name
            )));
        }
        let streams = self.inner.streams.lock();
        let mut groups = self.inner.groups.lock();
        match groups.get(&spec.name) {
            Some(existing) if existing.pattern != spec.pattern => Err(EngineError::GroupConflict {
                group: spec.name.clone(),
                existing: existing.pattern.to_string(),
                requested: spec.pattern.to_string(),
            }),
            Some(existing) => Ok(existing.clone()),
            None => {
                let (mut journal, replayed) = Journal::open(
                    self.journal_log(&spec.name)?,
                    self.inner.config.group_journal_snapshot_records,
                )?;
                journal.stage(JournalRecord::created(&spec.pattern, &spec.policy));
                Ok(self.start_group(&streams, &mut groups, spec.clone(), journal, replayed))
            }
        }
    }

    fn is_declared(&self, stream: &str) -> bool {
        self.inner
            .config
            .streams
            .iter()
            .any(|declared| declared.name == stream)
    }

    fn group(&self, name: &str) -> Result<GroupHandle, EngineError> {
        self.inner
            .groups
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::UnknownGroup(name.to_owned()))
    }

    async fn ask<T>(
        &self,
        group: &str,
        make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> Control,
    ) -> Result<T, EngineError> {
        let handle = self.group(group)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        handle
            .control
            .send(make(reply))
            .map_err(|_| EngineError::Stopped)?;
        answer.await.map_err(|_| EngineError::Stopped)
    }

    /// Closes every stream's log (fsync, stop writers). Live subscribers are told the engine
    /// stopped.
    /// Stops every group (each journals what it has, then ends), tells live subscribers the
    /// engine stopped, and closes every stream's log (fsync, stop the writers).
    pub async fn close(&self) -> Result<(), EngineError> {
        let groups: Vec<GroupHandle> = self
            .inner
            .groups
            .lock()
            .drain()
            .map(|(_, handle)| handle)
            .collect();
        for handle in groups {
            let _ = handle.control.send(Control::Stop(Closed::EngineStopped));
            let task = handle.task.lock().take();
            if let Some(task) = task {
                let _ = task.await;
            }
        }
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
    fn route<'a>(&'a self, subject: &'a Subject) -> Option<&'a str> {
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
        Some(declared.map_or_else(|| subject.stream_name(), |declared| &declared.name))
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
            storage: config.storage,
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
        for handle in self.inner.groups.lock().values() {
            if may_match_stream(&handle.pattern, name, declared.is_some()) {
                let _ = handle.control.send(Control::AttachStream(stream.clone()));
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
        let stored = Arc::new(StoredEvent::new(String::new(), 0, event));
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
pub(crate) fn may_match_stream(pattern: &Pattern, stream: &str, declared: bool) -> bool {
    declared
        || pattern
            .tokens()
            .next()
            .is_some_and(|first| first == "*" || first == ">" || first == stream)
}

/// Rebuilds a group's spec from its journal's first record.
fn group_spec_from(name: &str, created: Option<&JournalRecord>) -> Option<GroupSpec> {
    let Some(JournalRecord::Created {
        pattern,
        ack_timeout_ms,
        max_retries,
        backoff_initial_ms,
        backoff_factor,
        backoff_max_ms,
        backoff_jitter,
        max_in_flight,
    }) = created
    else {
        return None;
    };
    Some(GroupSpec {
        name: name.to_owned(),
        pattern: Pattern::new(pattern).ok()?,
        policy: crate::api::GroupPolicy {
            ack_timeout: std::time::Duration::from_millis(*ack_timeout_ms),
            max_retries: *max_retries,
            backoff: crate::api::Backoff {
                initial: std::time::Duration::from_millis(*backoff_initial_ms),
                factor: *backoff_factor,
                max: std::time::Duration::from_millis(*backoff_max_ms),
                jitter: *backoff_jitter,
            },
            max_in_flight: *max_in_flight,
        },
        start: StartAt::Latest,
    })
}

/// Leaves the group when the member is dropped.
struct LeaveGroup {
    control: tokio::sync::mpsc::UnboundedSender<Control>,
    member_id: u64,
}

impl Drop for LeaveGroup {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Leave {
            member_id: self.member_id,
        });
    }
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

/// One stream's events of a publish batch, each with its index in the batch.
type StreamPart = (Arc<Stream>, Vec<(usize, Event)>);

impl EmbeddedEngine {
    /// [`Engine::publish`].
    async fn publish_batch(&self, events: Vec<Event>) -> Result<Vec<PublishOutcome>, EngineError> {
        if events.is_empty() {
            return Err(EngineError::EmptyBatch);
        }
        let now_us = (self.inner.config.clock)();
        let count = events.len();
        // Each stream's part of the batch, with the stream, in order of first appearance.
        // Events of one type mostly come in runs, so an event of the previous event's type
        // takes its part without being routed again (routing and finding the part cost ~400
        // instructions an event).
        let mut part_of: hashbrown::HashMap<String, usize> = hashbrown::HashMap::new();
        let mut parts: Vec<StreamPart> = Vec::new();
        let mut previous: Option<(Subject, Option<usize>)> = None;
        let mut ephemeral = Vec::new();
        for (index, event) in events.into_iter().enumerate() {
            let part = match &previous {
                Some((event_type, part)) if *event_type == event.event_type => *part,
                _ => {
                    let part = match self.route(&event.event_type) {
                        None => None,
                        Some(name) => Some(match part_of.entry_ref(name) {
                            EntryRef::Occupied(entry) => *entry.get(),
                            EntryRef::Vacant(entry) => {
                                // Sized for the rest of the batch: most batches go to one
                                // stream, and growing a vector of events copied each event
                                // several times.
                                parts.push((self.stream(name)?, Vec::with_capacity(count - index)));
                                *entry.insert(parts.len() - 1)
                            }
                        }),
                    };
                    previous = Some((event.event_type.clone(), part));
                    part
                }
            };
            match part {
                Some(part) => parts[part].1.push((index, event)),
                None => ephemeral.push((index, event)),
            }
        }
        let mut outcomes: Vec<Option<PublishOutcome>> = vec![None; count];
        for (index, event) in ephemeral {
            outcomes[index] = Some(PublishOutcome::ephemeral(event.id.clone()));
            self.deliver_ephemeral(event);
        }
        // In the caller's task, the streams concurrently (their appends share nothing). No task
        // is needed to keep a stream's fan-out whole if the caller goes away: see
        // `Stream::publish`.
        let per_stream = futures::future::join_all(
            parts
                .into_iter()
                .map(|(stream, events)| async move { stream.publish(events, now_us).await }),
        )
        .await;
        for stream_outcomes in per_stream {
            for (index, outcome) in stream_outcomes? {
                outcomes[index] = Some(outcome);
            }
        }
        Ok(outcomes.into_iter().flatten().collect())
    }
}

impl Engine for EmbeddedEngine {
    fn publish(
        &self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<Vec<PublishOutcome>, EngineError>> + Send + 'static {
        let engine = self.clone();
        async move { engine.publish_batch(events).await }
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
                .any(|declared| *declared.name == *stream.name);
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

    async fn join_group(
        &self,
        spec: GroupSpec,
        max_in_flight: Option<u32>,
    ) -> Result<GroupMember, EngineError> {
        let handle = self.ensure_group(&spec)?;
        let member_id = self.inner.next_member_id.fetch_add(1, Ordering::Relaxed);
        let max_in_flight = max_in_flight.unwrap_or(spec.policy.max_in_flight).max(1);
        let (deliveries, delivery_inbox) = tokio::sync::mpsc::channel(max_in_flight as usize);
        let (closed, closed_receiver) = tokio::sync::watch::channel(None);
        handle
            .control
            .send(Control::Join {
                member_id,
                max_in_flight,
                deliveries,
                closed,
            })
            .map_err(|_| EngineError::Stopped)?;
        let leave = LeaveGroup {
            control: handle.control.clone(),
            member_id,
        };
        Ok(GroupMember::new(
            member_id,
            delivery_inbox,
            handle.commands.clone(),
            closed_receiver,
            Box::new(leave),
        ))
    }

    async fn create_group(&self, spec: GroupSpec) -> Result<(), EngineError> {
        self.ensure_group(&spec).map(|_| ())
    }

    async fn delete_group(&self, name: &str) -> Result<(), EngineError> {
        let handle = self
            .inner
            .groups
            .lock()
            .remove(name)
            .ok_or_else(|| EngineError::UnknownGroup(name.to_owned()))?;
        let _ = handle.control.send(Control::Stop(Closed::GroupDeleted));
        let task = handle.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        if self.inner.config.storage == Storage::File {
            let dir = self.inner.config.data_dir.join("groups").join(name);
            fs::remove_dir_all(&dir).map_err(|error| {
                EngineError::Config(format!("cannot delete {}: {error}", dir.display()))
            })?;
        }
        Ok(())
    }

    async fn groups(&self) -> Vec<GroupStats> {
        let names: Vec<String> = self.inner.groups.lock().keys().cloned().collect();
        let mut stats = Vec::with_capacity(names.len());
        for name in names {
            if let Ok(group) = self.ask(&name, Control::Stats).await {
                stats.push(group);
            }
        }
        stats.sort_by(|left, right| left.name.cmp(&right.name));
        stats
    }

    async fn dead_letters(
        &self,
        group: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, EngineError> {
        self.ask(group, |reply| Control::DeadLetters(limit, reply))
            .await
    }

    async fn redrive(&self, group: &str) -> Result<u64, EngineError> {
        self.ask(group, Control::Redrive).await
    }

    async fn purge_dead_letters(&self, group: &str) -> Result<u64, EngineError> {
        self.ask(group, Control::Purge).await
    }

    async fn streams(&self) -> Vec<StreamStats> {
        let streams: Vec<Arc<Stream>> = self.inner.streams.lock().values().cloned().collect();
        let mut stats: Vec<StreamStats> = streams.iter().map(|stream| stream.stats()).collect();
        stats.sort_by(|left, right| left.name.cmp(&right.name));
        stats
    }
}
