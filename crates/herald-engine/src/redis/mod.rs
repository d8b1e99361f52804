//! The Redis Streams engine: Herald's streams, groups and dead letters kept in Redis
//! (standalone or Cluster), so that several Herald processes on one Redis are one bus.
//!
//! The mapping (keys in `keys.rs`, atomic steps in `scripts.rs`):
//! - a stream is a Redis stream whose entry ids are `0-<seq>`: Herald's gapless seq *is* the
//!   entry id, so reads from a seq are `XRANGE`s and no index maps one to the other. Events are
//!   added with the id `0-*`, which Redis numbers one past the stream's last entry, so
//!   concurrent publishers from any process get gapless seqs (`publish.rs`); events whose
//!   publisher chose their id go through a Lua script that checks dedupe (per-window hashes
//!   of ids, with an expiry) in the same step, so a repeated id is stored once;
//! - a group is a Redis consumer group of the same name on each stream its pattern may match,
//!   read with `XREADGROUP` by a process's holder consumer and handed to members (each its own
//!   consumer); ack is `XACK`; retries wait, still pending, in a sorted set of due times;
//!   attempts are the entries' delivery counts; dead letters go to a dead-letter stream;
//! - live subscriptions read the stream itself (`XREAD BLOCK`, one dedicated connection per
//!   stream per process), so they see what any process publishes.
//!
//! Lock order: `Inner::streams` → `Inner::live` → `Inner::groups` → `Inner::tails` → a tail's
//! state. No lock is held across an `.await`.

mod chunk_ids;
mod chunk_pipeline;
mod connection;
mod decode;
mod group;
mod keys;
mod publish;
mod publish_connection;
mod publish_lanes;
mod raw;
mod relay;
mod scripts;
mod tail;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use herald_core::{
    Event, Limits, ParseContext, Pattern, StoredEvent, Subject, SubjectIndex, SubscriptionId,
};
use parking_lot::Mutex;
use redis::Value;
use redis::streams::{StreamId, StreamRangeReply};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tracing::warn;

use self::connection::{Connection, Redis, backend};
use self::decode::{decode_entries, decode_event};
use self::group::{Control, GroupTask};
use self::keys::{Keys, entry_id, seq_of};
pub use self::relay::{Relay, RelayInbox};
use self::tail::Tail;
use crate::api::{
    Backoff, Closed, DeadLetter, Engine, EngineError, GroupMember, GroupPolicy, GroupSpec,
    GroupStats, LiveSubscription, PublishOutcome, StartAt, StreamStats,
};
use crate::config::{
    DEDUPE_WINDOW_DEFAULT, LIVE_BUFFER_EVENTS_DEFAULT, StreamConfig, is_valid_stream_name,
};
use crate::embedded::live::{Offer, Subscriber};
use crate::embedded::may_match_stream;
use crate::embedded::rate::RateMeter;

/// Key prefix when none is configured.
pub const KEY_PREFIX_DEFAULT: &str = "herald";

/// Member verbs waiting for a group's task, per group.
const GROUP_COMMANDS_QUEUED_MAX: usize = 4096;

/// How often a process looks for streams that other processes created.
const STREAM_DISCOVERY_INTERVAL: Duration = Duration::from_millis(500);

/// How long a process that stopped renewing its heartbeat is still taken for alive.
pub const PROCESS_TTL_DEFAULT: Duration = Duration::from_secs(10);

/// The shortest process TTL: a heartbeat every third of it must fit between scheduling hiccups.
pub const PROCESS_TTL_MIN: Duration = Duration::from_millis(300);

/// The wait before re-subscribing to ephemeral events (or a relay) after the pub/sub
/// connection failed.
const RELAY_RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// How often declared streams with a `max_age` are trimmed.
const RETENTION_INTERVAL: Duration = Duration::from_secs(1);

/// Dead letters moved per redrive script.
const REDRIVE_LETTERS_PER_SCRIPT: usize = 512;

/// Events read back are trusted: they were checked when published.
const STORED_LIMITS: Limits = Limits {
    event_bytes_max: usize::MAX / 2,
    batch_bytes_max: usize::MAX / 2,
    batch_events_max: usize::MAX / 2,
};

/// How the Redis engine is set up.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// One `redis://` URL for a standalone server, or seed nodes of a Cluster.
    pub urls: Vec<String>,
    pub cluster: bool,
    /// Every key starts with this (and a colon): several buses, or tests, share one Redis.
    pub key_prefix: String,
    /// Declared streams: their subjects, retention (`events_max` as `MAXLEN ~`, `age_max` by
    /// `XTRIM MINID` every second; `bytes_max` is refused) and dedupe window. `storage` does not
    /// apply.
    pub streams: Vec<StreamConfig>,
    /// Subjects delivered live but never stored.
    pub ephemeral: Vec<Pattern>,
    /// Dedupe window of streams created on first publish.
    pub dedupe_window: Duration,
    pub live_buffer_events: usize,
    /// A process that has not renewed its heartbeat for this long is taken for dead: the other
    /// processes recover its members' deliveries and the entries it held. It renews every
    /// third of it.
    pub process_ttl: Duration,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            urls: vec![url.into()],
            cluster: false,
            key_prefix: KEY_PREFIX_DEFAULT.to_owned(),
            streams: Vec::new(),
            ephemeral: Vec::new(),
            dedupe_window: DEDUPE_WINDOW_DEFAULT,
            live_buffer_events: LIVE_BUFFER_EVENTS_DEFAULT,
            process_ttl: PROCESS_TTL_DEFAULT,
        }
    }
}

/// The Redis engine. Cheap to clone; clones share the engine.
#[derive(Clone, Debug)]
pub struct RedisEngine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: RedisConfig,
    redis: Redis,
    pub(crate) connection: Connection,
    pub(crate) keys: Keys,
    /// This process's id: names its consumers.
    pub(crate) process: String,
    /// Streams this process knows exist.
    streams: Mutex<HashMap<String, Arc<KnownStream>>>,
    live: Mutex<LiveRegistry>,
    groups: Mutex<HashMap<String, GroupHandle>>,
    tails: Mutex<HashMap<String, Arc<Tail>>>,
    next_subscriber_id: AtomicU64,
    next_member_id: AtomicU64,
    background: Mutex<Vec<JoinHandle<()>>>,
    publish_connections: Mutex<publish_connection::PublishConnections>,
    publish_lanes: Mutex<publish_lanes::Lanes>,
}

#[derive(Debug)]
struct KnownStream {
    rate: Mutex<RateMeter>,
}

#[derive(Debug, Default)]
struct LiveRegistry {
    subscribers: HashMap<u64, (Arc<Subscriber>, SubscriptionId)>,
    index: SubjectIndex<Arc<Subscriber>>,
}

#[derive(Clone, Debug)]
struct GroupHandle {
    /// This process's members of the group.
    members: Arc<AtomicU64>,
    commands: tokio::sync::mpsc::Sender<crate::api::MemberRequest>,
    control: tokio::sync::mpsc::UnboundedSender<Control>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

/// A group's definition as kept in Redis (`P:groups`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Definition {
    pattern: String,
    ack_timeout_us: u64,
    max_retries: u32,
    backoff_initial_us: u64,
    backoff_factor: f64,
    backoff_max_us: u64,
    backoff_jitter: f64,
    max_in_flight: u32,
}

impl Definition {
    fn of(spec: &GroupSpec) -> Definition {
        let policy = &spec.policy;
        Definition {
            pattern: spec.pattern.to_string(),
            ack_timeout_us: policy.ack_timeout.as_micros() as u64,
            max_retries: policy.max_retries,
            backoff_initial_us: policy.backoff.initial.as_micros() as u64,
            backoff_factor: policy.backoff.factor,
            backoff_max_us: policy.backoff.max.as_micros() as u64,
            backoff_jitter: policy.backoff.jitter,
            max_in_flight: policy.max_in_flight,
        }
    }

    fn policy(&self) -> GroupPolicy {
        GroupPolicy {
            ack_timeout: Duration::from_micros(self.ack_timeout_us),
            max_retries: self.max_retries,
            backoff: Backoff {
                initial: Duration::from_micros(self.backoff_initial_us),
                factor: self.backoff_factor,
                max: Duration::from_micros(self.backoff_max_us),
                jitter: self.backoff_jitter,
            },
            max_in_flight: self.max_in_flight,
        }
    }
}

impl RedisEngine {
    /// Connects, learns the streams that exist, and starts looking for new ones.
    pub async fn open(config: RedisConfig) -> Result<RedisEngine, EngineError> {
        for (at, declared) in config.streams.iter().enumerate() {
            if !is_valid_stream_name(&declared.name) {
                return Err(EngineError::Config(format!(
                    "stream {at}: name {:?} must be one subject token ([A-Za-z0-9_-]+)",
                    declared.name
                )));
            }
        }
        if let Some(declared) = config
            .streams
            .iter()
            .find(|declared| declared.retention.bytes_max.is_some())
        {
            return Err(EngineError::Config(format!(
                "stream {:?}: max_bytes is not supported on the redis engine (Redis streams trim \
                 by count or id); use max_events or max_age",
                declared.name
            )));
        }
        if config.key_prefix.is_empty() || config.key_prefix.contains(['{', '}']) {
            return Err(EngineError::Config(format!(
                "Redis key prefix {:?} must be non-empty and without braces",
                config.key_prefix
            )));
        }
        let redis = Redis::new(&config.urls, config.cluster)?;
        let connection = redis.shared().await?;
        let keys = Keys::new(&config.key_prefix);
        let process = uuid::Uuid::now_v7().simple().to_string();
        let inner = Arc::new(Inner {
            config,
            redis,
            connection,
            keys,
            process,
            streams: Mutex::new(HashMap::new()),
            live: Mutex::new(LiveRegistry::default()),
            groups: Mutex::new(HashMap::new()),
            tails: Mutex::new(HashMap::new()),
            next_subscriber_id: AtomicU64::new(1),
            next_member_id: AtomicU64::new(1),
            background: Mutex::new(Vec::new()),
            publish_connections: Mutex::default(),
            publish_lanes: Mutex::default(),
        });
        if inner.config.process_ttl < PROCESS_TTL_MIN {
            return Err(EngineError::Config(format!(
                "process_ttl must be at least {PROCESS_TTL_MIN:?}"
            )));
        }
        let engine = RedisEngine { inner };
        engine.inner.heartbeat().await?;
        engine.discover().await?;
        let (messages, node) = subscribe_channel(
            &engine.inner.config.urls,
            0,
            &engine.inner.keys.ephemeral_channel(),
        )
        .await
        .map_err(|error| backend("subscribing to ephemeral events", &error))?;
        let relay = tokio::spawn(relay_ephemeral_forever(
            Arc::downgrade(&engine.inner),
            messages,
            node,
        ));
        let discovery = tokio::spawn(discover_forever(Arc::downgrade(&engine.inner)));
        let trimming = tokio::spawn(trim_forever(Arc::downgrade(&engine.inner)));
        let heartbeat = tokio::spawn(heartbeat_forever(Arc::downgrade(&engine.inner)));
        engine
            .inner
            .background
            .lock()
            .extend([relay, discovery, heartbeat, trimming]);
        Ok(engine)
    }

    /// Stops every group task (their members' deliveries go back to Redis, due at once, for
    /// any process to take), every tail, and tells live subscribers the engine stopped.
    pub async fn close(&self) -> Result<(), EngineError> {
        for task in self.inner.background.lock().drain(..) {
            task.abort();
        }
        let groups: Vec<GroupHandle> = self
            .inner
            .groups
            .lock()
            .drain()
            .map(|(_, handle)| handle)
            .collect();
        for handle in groups {
            let _ = handle.control.send(Control::Stop {
                reason: Closed::EngineStopped,
                release: true,
            });
            let task = handle.task.lock().take();
            if let Some(task) = task {
                let _ = task.await;
            }
        }
        {
            let mut live = self.inner.live.lock();
            for (subscriber, _) in live.subscribers.values() {
                subscriber.close(Closed::EngineStopped);
            }
            live.subscribers.clear();
        }
        let tails: Vec<Arc<Tail>> = self
            .inner
            .tails
            .lock()
            .drain()
            .map(|(_, tail)| tail)
            .collect();
        for tail in tails {
            tail.stop();
        }
        // Two commands, not a pipeline: in a Cluster the keys live in different slots.
        let mut connection = self.inner.connection.clone();
        let _: Result<i64, _> = redis::cmd("DEL")
            .arg(self.inner.keys.process(&self.inner.process))
            .query_async(&mut connection)
            .await;
        let _: Result<i64, _> = redis::cmd("SREM")
            .arg(self.inner.keys.processes())
            .arg(&self.inner.process)
            .query_async(&mut connection)
            .await;
        Ok(())
    }

    /// Stops everything at once without giving anything back, as a crash would (tests of
    /// recovery by other processes).
    #[doc(hidden)]
    pub fn abandon(&self) {
        for task in self.inner.background.lock().drain(..) {
            task.abort();
        }
        for (_, handle) in self.inner.groups.lock().drain() {
            if let Some(task) = handle.task.lock().take() {
                task.abort();
            }
        }
        for tail in self.inner.tails.lock().drain().map(|(_, tail)| tail) {
            tail.stop();
        }
    }

    /// Learns streams created by any process.
    async fn discover(&self) -> Result<(), EngineError> {
        let mut connection = self.inner.connection.clone();
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.inner.keys.streams())
            .query_async(&mut connection)
            .await
            .map_err(|error| backend("listing streams", &error))?;
        for name in names {
            self.inner.stream_appeared(&name);
        }
        Ok(())
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

    /// The group's definition, created in Redis if it does not exist (with the group made on
    /// every stream that exists, at its start); an existing group must have the same pattern.
    async fn ensure_group(&self, spec: &GroupSpec) -> Result<GroupPolicy, EngineError> {
        if !is_valid_stream_name(&spec.name) {
            return Err(EngineError::Config(format!(
                "group name {:?} must be one subject token ([A-Za-z0-9_-]+)",
                spec.name
            )));
        }
        let mut connection = self.inner.connection.clone();
        let definition = serde_json::to_string(&Definition::of(spec))
            .map_err(|error| EngineError::Config(error.to_string()))?;
        let created: bool = redis::cmd("HSETNX")
            .arg(self.inner.keys.groups())
            .arg(&spec.name)
            .arg(&definition)
            .query_async(&mut connection)
            .await
            .map_err(|error| backend("creating a group", &error))?;
        if !created {
            let existing = self
                .inner
                .definition(&spec.name)
                .await?
                .ok_or_else(|| EngineError::UnknownGroup(spec.name.clone()))?;
            if existing.pattern != spec.pattern.to_string() {
                return Err(EngineError::GroupConflict {
                    group: spec.name.clone(),
                    existing: existing.pattern,
                    requested: spec.pattern.to_string(),
                });
            }
            return Ok(existing.policy());
        }
        let streams: Vec<String> = self.inner.streams.lock().keys().cloned().collect();
        for stream in streams {
            if !self.inner.may_match(&spec.pattern, &stream) {
                continue;
            }
            let keys = self.inner.keys.stream(&stream);
            let after = match spec.start {
                StartAt::Earliest => 0,
                StartAt::Latest => self.inner.last_seq(&stream).await?,
                StartAt::Seq(seq) => seq.saturating_sub(1),
                StartAt::Time(time) => self
                    .inner
                    .seq_at_time(&stream, time)
                    .await?
                    .saturating_sub(1),
            };
            self.inner
                .create_redis_group(&keys.events, &spec.name, after)
                .await?;
        }
        Ok(spec.policy.clone())
    }

    /// This process's task of a group, started on first use.
    fn group_task(&self, spec: &GroupSpec, policy: GroupPolicy) -> GroupHandle {
        let mut groups = self.inner.groups.lock();
        // A task that ended (its group was deleted by another process) is replaced.
        if let Some(handle) = groups.get(&spec.name)
            && !handle.control.is_closed()
        {
            return handle.clone();
        }
        let streams: Vec<Arc<str>> = self
            .inner
            .streams
            .try_lock()
            .map(|streams| streams.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|stream| self.inner.may_match(&spec.pattern, stream))
            .map(Arc::from)
            .collect();
        let (commands, command_inbox) = tokio::sync::mpsc::channel(GROUP_COMMANDS_QUEUED_MAX);
        let (control, control_inbox) = tokio::sync::mpsc::unbounded_channel();
        let task = GroupTask::new(
            self.inner.clone(),
            spec.name.clone(),
            spec.pattern.clone(),
            policy,
        );
        let task = tokio::spawn(task.run(streams, command_inbox, control_inbox));
        let handle = GroupHandle {
            members: Arc::new(AtomicU64::new(0)),
            commands,
            control,
            task: Arc::new(Mutex::new(Some(task))),
        };
        groups.insert(spec.name.clone(), handle.clone());
        handle
    }

    /// Applies the verbs queued in this process's task of `group`, if it has one.
    async fn flush_group(&self, group: &str) {
        let control = self
            .inner
            .groups
            .lock()
            .get(group)
            .map(|handle| handle.control.clone());
        if let Some(control) = control {
            let (reply, answer) = tokio::sync::oneshot::channel();
            if control.send(Control::Flush(reply)).is_ok() {
                let _ = answer.await;
            }
        }
    }

    /// The streams a group may read, as known here.
    async fn group_streams(&self, group: &str) -> Result<(Definition, Vec<String>), EngineError> {
        let definition = self
            .inner
            .definition(group)
            .await?
            .ok_or_else(|| EngineError::UnknownGroup(group.to_owned()))?;
        let pattern = Pattern::new(&definition.pattern)
            .map_err(|error| EngineError::Config(error.to_string()))?;
        let mut streams: Vec<String> = self
            .inner
            .streams
            .lock()
            .keys()
            .filter(|stream| self.inner.may_match(&pattern, stream))
            .cloned()
            .collect();
        streams.sort();
        Ok((definition, streams))
    }

    async fn group_stats(
        &self,
        name: &str,
        members: &HashMap<String, u64>,
    ) -> Result<Option<GroupStats>, EngineError> {
        let Ok((definition, streams)) = self.group_streams(name).await else {
            return Ok(None);
        };
        let mut stats = GroupStats {
            name: name.to_owned(),
            pattern: definition.pattern.clone(),
            members: 0,
            lag: 0,
            in_flight: 0,
            scheduled: 0,
            dead_letters: 0,
            delivered: 0,
            acked: 0,
            nacked: 0,
            redelivered: 0,
            dead_lettered: 0,
        };
        let mut connection = self.inner.connection.clone();
        for stream in streams {
            let keys = self.inner.keys.group(&stream, name);
            let mut invocation = keys.invoke(&scripts::GROUP_STATS);
            invocation.arg(name);
            let reply: Option<Vec<i64>> = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(|error| backend("reading group stats", &error))?;
            let Some(values) = reply else { continue };
            let [
                total,
                scheduled_pending,
                held,
                due,
                dead,
                delivered,
                acked,
                nacked,
                redelivered,
                dead_lettered,
                read,
                last,
            ] = values[..]
            else {
                continue;
            };
            let count = |value: i64| value.max(0) as u64;
            stats.in_flight += count(total - scheduled_pending - held);
            stats.scheduled += count(due);
            stats.dead_letters += count(dead);
            stats.delivered += count(delivered);
            stats.acked += count(acked);
            stats.nacked += count(nacked);
            stats.redelivered += count(redelivered);
            stats.dead_lettered += count(dead_lettered);
            stats.lag += count(last - read);
        }
        stats.members = members.get(name).copied().unwrap_or(0) as usize;
        Ok(Some(stats))
    }
}

impl Inner {
    /// The name a connection of this process's own goes by in `CLIENT LIST`:
    /// `<key prefix>:<process>:<role>`, with what Redis refuses in a name (spaces, control
    /// characters) as `_`.
    fn connection_name(&self, role: &str) -> String {
        format!("{}:{}:{role}", self.config.key_prefix, self.process)
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect()
    }

    fn is_declared(&self, stream: &str) -> bool {
        self.config
            .streams
            .iter()
            .any(|declared| declared.name == stream)
    }

    fn may_match(&self, pattern: &Pattern, stream: &str) -> bool {
        may_match_stream(pattern, stream, self.is_declared(stream))
    }

    /// A stream became known here: attach the live subscribers and group tasks it concerns.
    fn stream_appeared(self: &Arc<Self>, name: &str) {
        let mut streams = self.streams.lock();
        if streams.contains_key(name) {
            return;
        }
        streams.insert(
            name.to_owned(),
            Arc::new(KnownStream {
                rate: Mutex::new(RateMeter::new()),
            }),
        );
        let live = self.live.lock();
        let subscribers: Vec<Arc<Subscriber>> = live
            .subscribers
            .values()
            .filter(|(subscriber, _)| self.may_match(&subscriber.pattern, name))
            .map(|(subscriber, _)| subscriber.clone())
            .collect();
        drop(live);
        for handle in self.groups.lock().values() {
            let _ = handle.control.send(Control::AttachStream(Arc::from(name)));
        }
        drop(streams);
        for subscriber in subscribers {
            // Everything in a stream that appeared after the subscription is new to it.
            let inner = self.clone();
            let stream = name.to_owned();
            tokio::spawn(async move {
                let start = match subscriber.start {
                    StartAt::Seq(seq) => Ok(seq),
                    StartAt::Time(time) => inner.seq_at_time(&stream, time).await,
                    StartAt::Latest | StartAt::Earliest => Ok(1),
                };
                inner.attach_subscriber(&stream, subscriber, start).await;
            });
        }
    }

    async fn attach_subscriber(
        self: &Arc<Self>,
        stream: &str,
        subscriber: Arc<Subscriber>,
        start: Result<u64, EngineError>,
    ) {
        let attached = match start {
            Ok(start) => self.tail(stream).await.map(|tail| (tail, start)),
            Err(error) => Err(error),
        };
        match attached {
            Ok((tail, start)) => {
                // Detached meanwhile: nothing to do.
                if self.live.lock().subscribers.contains_key(&subscriber.id) {
                    tail.attach(subscriber, start);
                }
            }
            Err(error) => subscriber.close(Closed::ReadFailed(error.to_string())),
        }
    }

    /// This process's tail of a stream, started on first use.
    pub(crate) async fn tail(self: &Arc<Self>, stream: &str) -> Result<Arc<Tail>, EngineError> {
        if let Some(tail) = self.tails.lock().get(stream) {
            return Ok(tail.clone());
        }
        let last = self.last_seq(stream).await?;
        let mut tails = self.tails.lock();
        if let Some(tail) = tails.get(stream) {
            return Ok(tail.clone());
        }
        let tail = Tail::start(
            self.redis.clone(),
            self.connection.clone(),
            Arc::from(stream),
            self.keys.stream(stream).events,
            last,
        );
        tails.insert(stream.to_owned(), tail.clone());
        Ok(tail)
    }

    fn detach(&self, subscriber_id: u64) {
        let mut live = self.live.lock();
        if let Some((subscriber, subscription)) = live.subscribers.remove(&subscriber_id) {
            subscriber.close(Closed::EngineStopped);
            live.index.remove(subscription);
        }
        drop(live);
        for tail in self.tails.lock().values() {
            tail.detach(subscriber_id);
        }
    }

    async fn last_seq(&self, stream: &str) -> Result<u64, EngineError> {
        let mut connection = self.connection.clone();
        let seq: Option<u64> = redis::cmd("HGET")
            .arg(self.keys.stream(stream).meta)
            .arg("seq")
            .query_async(&mut connection)
            .await
            .map_err(|error| backend("reading a stream's last seq", &error))?;
        Ok(seq.unwrap_or(0))
    }

    /// The seq of the first event stored at or after `time` (one past the last if none): the
    /// first publish call of the time index stored then or later. Every event of a call has
    /// the call's store time, and store times never go backwards, so that call's first seq is
    /// the answer.
    async fn seq_at_time(&self, stream: &str, time: OffsetDateTime) -> Result<u64, EngineError> {
        let target_us = time.unix_timestamp_nanos() / 1_000;
        let keys = self.keys.stream(stream);
        let mut connection = self.connection.clone();
        // The last seq first: a call stored between the two reads is then past it, and found
        // by the second read or after the returned seq.
        let (last, found): (Option<u64>, Vec<String>) = redis::pipe()
            .cmd("HGET")
            .arg(&keys.meta)
            .arg("seq")
            .cmd("ZRANGEBYSCORE")
            .arg(&keys.times)
            .arg(target_us.to_string())
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(1)
            .query_async(&mut connection)
            .await
            .map_err(|error| backend("finding a time in a stream", &error))?;
        match found.first() {
            Some(first) => first.parse().map_err(|_| EngineError::Corrupt {
                stream: stream.to_owned(),
                seq: 0,
                reason: format!("time index entry {first:?} is not a seq"),
            }),
            None => Ok(last.unwrap_or(0) + 1),
        }
    }

    /// Drops the entries of a stream stored more than `age_max` ago, and their time index.
    async fn trim_older_than(&self, stream: &str, age_max: Duration) -> Result<(), EngineError> {
        let cut_off = OffsetDateTime::now_utc() - age_max;
        let first_kept = self.seq_at_time(stream, cut_off).await?;
        if first_kept <= 1 {
            return Ok(());
        }
        let keys = self.keys.stream(stream);
        let mut connection = self.connection.clone();
        let _: (i64, i64) = redis::pipe()
            .cmd("XTRIM")
            .arg(&keys.events)
            .arg("MINID")
            .arg(entry_id(first_kept))
            .cmd("ZREMRANGEBYSCORE")
            .arg(&keys.times)
            .arg("-inf")
            .arg(format!("({}", cut_off.unix_timestamp_nanos() / 1_000))
            .query_async(&mut connection)
            .await
            .map_err(|error| backend("trimming a stream", &error))?;
        Ok(())
    }

    /// `XGROUP CREATE` at entry `<after>-0`; a group that exists keeps its position.
    pub(crate) async fn create_redis_group(
        &self,
        events_key: &str,
        group: &str,
        after: u64,
    ) -> Result<(), EngineError> {
        let mut connection = self.connection.clone();
        let created: Result<Value, redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(events_key)
            .arg(group)
            .arg(entry_id(after))
            .arg("MKSTREAM")
            .query_async(&mut connection)
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
            Err(error) => Err(backend("creating a Redis consumer group", &error)),
        }
    }

    async fn definition(&self, group: &str) -> Result<Option<Definition>, EngineError> {
        let mut connection = self.connection.clone();
        let text: Option<String> = redis::cmd("HGET")
            .arg(self.keys.groups())
            .arg(group)
            .query_async(&mut connection)
            .await
            .map_err(|error| backend("reading a group", &error))?;
        text.map(|text| {
            serde_json::from_str(&text).map_err(|error| {
                EngineError::Config(format!("group {group:?}: stored definition: {error}"))
            })
        })
        .transpose()
    }

    fn deliver_ephemeral_here(&self, event: Event) {
        let stored = Arc::new(StoredEvent::new(String::new(), 0, event));
        let matches = self.live.lock().index.matches(&stored.event.event_type);
        for subscriber in matches.iter() {
            if subscriber.offer(&stored) != Offer::Delivered {
                self.detach(subscriber.id);
            }
        }
    }

    /// An ephemeral event relayed by another process: `<process id>\n<event JSON>`.
    fn relayed(&self, message: &[u8]) {
        let Some(split) = message.iter().position(|&byte| byte == b'\n') else {
            return;
        };
        if &message[..split] == self.process.as_bytes() {
            return;
        }
        let context = ParseContext {
            now: OffsetDateTime::UNIX_EPOCH,
            limits: STORED_LIMITS,
        };
        match Event::from_json(&message[split + 1..], &context) {
            Ok(event) => self.deliver_ephemeral_here(event),
            Err(error) => warn!(%error, "a relayed ephemeral event does not decode"),
        }
    }

    /// This process's member count per group.
    fn members_here(&self) -> HashMap<String, u64> {
        self.groups
            .lock()
            .iter()
            .map(|(name, handle)| (name.clone(), handle.members.load(Ordering::Relaxed)))
            .collect()
    }

    /// Renews this process's heartbeat, with its member counts.
    async fn heartbeat(&self) -> Result<(), EngineError> {
        let members = serde_json::to_string(&self.members_here())
            .map_err(|error| EngineError::Config(error.to_string()))?;
        // Two commands, not a pipeline: in a Cluster the keys live in different slots.
        let mut connection = self.connection.clone();
        redis::cmd("SET")
            .arg(self.keys.process(&self.process))
            .arg(members)
            .arg("PX")
            .arg(self.config.process_ttl.as_millis() as u64)
            .query_async::<()>(&mut connection)
            .await
            .map_err(|error| backend("renewing the heartbeat", &error))?;
        redis::cmd("SADD")
            .arg(self.keys.processes())
            .arg(&self.process)
            .query_async::<()>(&mut connection)
            .await
            .map_err(|error| backend("renewing the heartbeat", &error))
    }

    /// Member counts per group of every live process, this one's included; processes whose
    /// heartbeat is gone are forgotten.
    async fn members_everywhere(&self) -> HashMap<String, u64> {
        let mut totals = self.members_here();
        let mut connection = self.connection.clone();
        let processes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.processes())
            .query_async(&mut connection)
            .await
            .unwrap_or_default();
        for process in processes.iter().filter(|process| **process != self.process) {
            let heartbeat: Option<String> = redis::cmd("GET")
                .arg(self.keys.process(process))
                .query_async(&mut connection)
                .await
                .unwrap_or(None);
            let Some(heartbeat) = heartbeat else {
                let _: Result<i64, _> = redis::cmd("SREM")
                    .arg(self.keys.processes())
                    .arg(process)
                    .query_async(&mut connection)
                    .await;
                continue;
            };
            let counts: HashMap<String, u64> = serde_json::from_str(&heartbeat).unwrap_or_default();
            for (group, count) in counts {
                *totals.entry(group).or_default() += count;
            }
        }
        totals
    }
}

/// A pub/sub connection subscribed to `channel` (ephemeral events, a relay), and the index in
/// `urls` of the node that serves it. In a Cluster, `PUBLISH` reaches every node, so any node
/// serves: the nodes are tried in turn from `first`, so that a node that failed is not the only
/// one tried again.
async fn subscribe_channel(
    urls: &[String],
    first: usize,
    channel: &str,
) -> Result<(redis::aio::PubSubStream, usize), redis::RedisError> {
    let mut failure = None;
    for attempt in 0..urls.len() {
        let node = (first + attempt) % urls.len();
        let subscribed = async {
            let client = redis::Client::open(urls[node].as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub.into_on_message())
        };
        match subscribed.await {
            Ok(messages) => return Ok((messages, node)),
            Err(error) => {
                warn!(%error, url = %urls[node], "subscribing to {channel} on this node failed");
                failure = Some(error);
            }
        }
    }
    Err(failure.unwrap_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "no Redis URL configured",
        ))
    }))
}

/// Relays ephemeral events other processes publish to this one's live subscribers, until the
/// engine is gone; reconnects after a failure.
async fn relay_ephemeral_forever(
    engine: Weak<Inner>,
    mut messages: redis::aio::PubSubStream,
    mut node: usize,
) {
    use futures::StreamExt;
    loop {
        while let Some(message) = messages.next().await {
            let Some(inner) = engine.upgrade() else {
                return;
            };
            inner.relayed(message.get_payload_bytes());
        }
        loop {
            tokio::time::sleep(RELAY_RECONNECT_DELAY).await;
            let Some(inner) = engine.upgrade() else {
                return;
            };
            let (urls, channel) = (inner.config.urls.clone(), inner.keys.ephemeral_channel());
            drop(inner);
            // The next node first: the one that served may be the one that is gone.
            match subscribe_channel(&urls, node + 1, &channel).await {
                Ok((stream, served)) => {
                    messages = stream;
                    node = served;
                    break;
                }
                Err(error) => warn!(%error, "re-subscribing to ephemeral events failed"),
            }
        }
    }
}

/// Renews the heartbeat every third of the process TTL, until the engine is gone.
async fn heartbeat_forever(engine: Weak<Inner>) {
    loop {
        let Some(interval) = engine.upgrade().map(|inner| inner.config.process_ttl / 3) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(inner) = engine.upgrade() else {
            return;
        };
        if let Err(error) = inner.heartbeat().await {
            warn!(%error, "renewing the heartbeat failed");
        }
    }
}

/// Trims declared streams with a `max_age` every [`RETENTION_INTERVAL`], until the engine is
/// gone: entries stored before the cut-off go (`XTRIM MINID`; every process may do it, the
/// result is the same).
async fn trim_forever(engine: Weak<Inner>) {
    loop {
        tokio::time::sleep(RETENTION_INTERVAL).await;
        let Some(inner) = engine.upgrade() else {
            return;
        };
        let aged: Vec<(String, Duration)> = inner
            .config
            .streams
            .iter()
            .filter_map(|declared| Some((declared.name.clone(), declared.retention.age_max?)))
            .collect();
        for (stream, age_max) in aged {
            if let Err(error) = inner.trim_older_than(&stream, age_max).await {
                warn!(%stream, %error, "trimming by age failed");
            }
        }
    }
}

/// Looks for streams other processes created, until the engine is gone.
async fn discover_forever(engine: Weak<Inner>) {
    loop {
        tokio::time::sleep(STREAM_DISCOVERY_INTERVAL).await;
        let Some(inner) = engine.upgrade() else {
            return;
        };
        let engine = RedisEngine { inner };
        if let Err(error) = engine.discover().await {
            warn!(%error, "looking for new streams failed");
        }
    }
}

/// Leaves the group when the member is dropped.
struct LeaveGroup {
    control: tokio::sync::mpsc::UnboundedSender<Control>,
    members: Arc<AtomicU64>,
    member_id: u64,
}

impl Drop for LeaveGroup {
    fn drop(&mut self) {
        self.members.fetch_sub(1, Ordering::Relaxed);
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
            inner.detach(self.subscriber_id);
        }
    }
}

impl Engine for RedisEngine {
    fn publish(
        &self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<Vec<PublishOutcome>, EngineError>> + Send + 'static {
        self.publish_events(events)
    }

    fn ordered_publishes_in_flight(&self) -> usize {
        2
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
        // Under the streams lock, so that a stream is attached either here or when it appears.
        let existing: Vec<String> = {
            let streams = self.inner.streams.lock();
            let mut live = self.inner.live.lock();
            let subscription = live.index.insert(&pattern, subscriber.clone());
            live.subscribers
                .insert(subscriber_id, (subscriber.clone(), subscription));
            drop(live);
            streams
                .keys()
                .filter(|stream| self.inner.may_match(&pattern, stream))
                .cloned()
                .collect()
        };
        let unsubscribe = Unsubscribe {
            engine: Arc::downgrade(&self.inner),
            subscriber_id,
        };
        for stream in existing {
            let start_seq = match start {
                StartAt::Latest => self.inner.last_seq(&stream).await.map(|last| last + 1),
                StartAt::Earliest => Ok(1),
                StartAt::Seq(seq) => Ok(seq),
                StartAt::Time(time) => self.inner.seq_at_time(&stream, time).await,
            };
            let start_seq = start_seq?;
            self.inner
                .attach_subscriber(&stream, subscriber.clone(), Ok(start_seq))
                .await;
        }
        Ok(LiveSubscription::new(events, closed, Box::new(unsubscribe)))
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, EngineError> {
        let mut connection = self.inner.connection.clone();
        let known: bool = redis::cmd("SISMEMBER")
            .arg(self.inner.keys.streams())
            .arg(stream)
            .query_async(&mut connection)
            .await
            .map_err(|error| backend("reading a stream", &error))?;
        if !known {
            return Err(EngineError::UnknownStream(stream.to_owned()));
        }
        if limit == 0 {
            return Ok(Vec::new());
        }
        let range: StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.inner.keys.stream(stream).events)
            .arg(entry_id(from_seq.max(1)))
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut connection)
            .await
            .map_err(|error| backend("reading a stream", &error))?;
        decode_entries(stream, &range.ids)
    }

    async fn streams(&self) -> Vec<StreamStats> {
        let names: Vec<String> = self.inner.streams.lock().keys().cloned().collect();
        let mut stats = Vec::with_capacity(names.len());
        let mut connection = self.inner.connection.clone();
        for name in names {
            let keys = self.inner.keys.stream(&name);
            let mut pipeline = redis::pipe();
            pipeline
                .cmd("HMGET")
                .arg(&keys.meta)
                .arg("seq")
                .arg("published")
                .arg("duplicates")
                .cmd("XLEN")
                .arg(&keys.events)
                .cmd("XRANGE")
                .arg(&keys.events)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .cmd("MEMORY")
                .arg("USAGE")
                .arg(&keys.events);
            let reply: Result<StreamStatsReply, _> = pipeline.query_async(&mut connection).await;
            let (meta, events, first, bytes) = match reply {
                Ok(reply) => reply,
                Err(error) => {
                    warn!(stream = %name, %error, "reading stream stats failed");
                    continue;
                }
            };
            let field = |at: usize| meta.get(at).copied().flatten().unwrap_or(0);
            let last_seq = field(0);
            let first_seq = first
                .ids
                .first()
                .and_then(|entry| seq_of(&entry.id))
                .unwrap_or(last_seq + 1);
            let tail = self.inner.tails.lock().get(&name).cloned();
            let per_second = self
                .inner
                .streams
                .lock()
                .get(&name)
                .map_or(0.0, |known| known.rate.lock().per_second());
            stats.push(StreamStats {
                name,
                first_seq,
                last_seq,
                events,
                bytes: bytes.unwrap_or(0),
                published: field(1),
                published_per_second: per_second,
                duplicates: field(2),
                live_subscribers: tail.as_ref().map_or(0, |tail| tail.live_subscribers()),
                slow_consumers_dropped: tail.as_ref().map_or(0, |tail| tail.slow_dropped()),
            });
        }
        stats.sort_by(|left, right| left.name.cmp(&right.name));
        stats
    }

    async fn join_group(
        &self,
        spec: GroupSpec,
        max_in_flight: Option<u32>,
    ) -> Result<GroupMember, EngineError> {
        let policy = self.ensure_group(&spec).await?;
        let handle = self.group_task(&spec, policy.clone());
        let member_id = self.inner.next_member_id.fetch_add(1, Ordering::Relaxed);
        let max_in_flight = max_in_flight.unwrap_or(policy.max_in_flight).max(1);
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
        handle.members.fetch_add(1, Ordering::Relaxed);
        let leave = LeaveGroup {
            control: handle.control.clone(),
            members: handle.members.clone(),
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
        self.ensure_group(&spec).await.map(|_| ())
    }

    async fn delete_group(&self, name: &str) -> Result<(), EngineError> {
        let (_, streams) = self.group_streams(name).await?;
        let handle = self.inner.groups.lock().remove(name);
        if let Some(handle) = handle {
            let _ = handle.control.send(Control::Stop {
                reason: Closed::GroupDeleted,
                release: false,
            });
            let task = handle.task.lock().take();
            if let Some(task) = task {
                let _ = task.await;
            }
        }
        let mut connection = self.inner.connection.clone();
        let removed: i64 = redis::cmd("HDEL")
            .arg(self.inner.keys.groups())
            .arg(name)
            .query_async(&mut connection)
            .await
            .map_err(|error| backend("deleting a group", &error))?;
        if removed == 0 {
            return Err(EngineError::UnknownGroup(name.to_owned()));
        }
        for stream in streams {
            let keys = self.inner.keys.group(&stream, name);
            let destroyed: Result<Value, _> = redis::cmd("XGROUP")
                .arg("DESTROY")
                .arg(&keys.events)
                .arg(name)
                .query_async(&mut connection)
                .await;
            if let Err(error) = destroyed {
                warn!(group = name, %stream, %error, "destroying the Redis group failed");
            }
            let deleted: Result<i64, _> = redis::cmd("DEL")
                .arg(&keys.due)
                .arg(&keys.dead)
                .arg(&keys.stats)
                .arg(&keys.info)
                .query_async(&mut connection)
                .await;
            if let Err(error) = deleted {
                warn!(group = name, %stream, %error, "deleting the group's keys failed");
            }
        }
        Ok(())
    }

    async fn groups(&self) -> Vec<GroupStats> {
        let mut connection = self.inner.connection.clone();
        let names: Vec<String> = match redis::cmd("HKEYS")
            .arg(self.inner.keys.groups())
            .query_async(&mut connection)
            .await
        {
            Ok(names) => names,
            Err(error) => {
                warn!(%error, "listing groups failed");
                return Vec::new();
            }
        };
        let mut stats = Vec::with_capacity(names.len());
        let members = self.inner.members_everywhere().await;
        for name in names {
            self.flush_group(&name).await;
            match self.group_stats(&name, &members).await {
                Ok(Some(group)) => stats.push(group),
                Ok(None) => {}
                Err(error) => warn!(group = %name, %error, "reading group stats failed"),
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
        self.flush_group(group).await;
        let (_, streams) = self.group_streams(group).await?;
        let mut letters = Vec::new();
        let mut connection = self.inner.connection.clone();
        for stream in streams {
            let keys = self.inner.keys.group(&stream, group);
            let range: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&keys.dead)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(limit)
                .query_async(&mut connection)
                .await
                .map_err(|error| backend("reading dead letters", &error))?;
            for entry in &range.ids {
                letters.push(dead_letter(group, &stream, entry)?);
            }
        }
        letters.sort_by_key(|letter| letter.dead_at);
        letters.truncate(limit);
        Ok(letters)
    }

    async fn redrive(&self, group: &str) -> Result<u64, EngineError> {
        self.flush_group(group).await;
        let (_, streams) = self.group_streams(group).await?;
        let mut connection = self.inner.connection.clone();
        let mut redriven = 0;
        for stream in streams {
            let keys = self.inner.keys.group(&stream, group);
            loop {
                let mut invocation = keys.invoke(&scripts::REDRIVE);
                invocation.arg(group).arg(REDRIVE_LETTERS_PER_SCRIPT);
                let (taken, moved): (u64, u64) = invocation
                    .invoke_async(&mut connection)
                    .await
                    .map_err(|error| backend("redriving dead letters", &error))?;
                redriven += moved;
                if taken < REDRIVE_LETTERS_PER_SCRIPT as u64 {
                    break;
                }
            }
        }
        if let Some(handle) = self.inner.groups.lock().get(group) {
            let _ = handle.control.send(Control::DueNow);
        }
        Ok(redriven)
    }

    async fn purge_dead_letters(&self, group: &str) -> Result<u64, EngineError> {
        self.flush_group(group).await;
        let (_, streams) = self.group_streams(group).await?;
        let mut connection = self.inner.connection.clone();
        let mut purged = 0;
        for stream in streams {
            let keys = self.inner.keys.group(&stream, group);
            let (count, _): (u64, i64) = redis::pipe()
                .atomic()
                .cmd("XLEN")
                .arg(&keys.dead)
                .cmd("DEL")
                .arg(&keys.dead)
                .query_async(&mut connection)
                .await
                .map_err(|error| backend("purging dead letters", &error))?;
            purged += count;
        }
        Ok(purged)
    }
}

/// The meta fields (seq, published, duplicates), length, first entry and memory of a stream.
type StreamStatsReply = (Vec<Option<u64>>, u64, StreamRangeReply, Option<u64>);

/// A dead letter from its entry in a dead-letter stream.
fn dead_letter(group: &str, stream: &str, entry: &StreamId) -> Result<DeadLetter, EngineError> {
    let text = |name: &str| entry.get::<String>(name).unwrap_or_default();
    let number = |name: &str| text(name).parse::<i64>().unwrap_or(0);
    let seq = number("seq").max(0) as u64;
    let json = text("e");
    let event = decode_event(stream, seq, json.as_bytes())?;
    let has_error = number("has_error") == 1;
    Ok(DeadLetter {
        group: group.to_owned(),
        event: Arc::new(event),
        attempts: number("attempts").max(0) as u32,
        last_error: has_error.then(|| text("error")),
        first_delivered_at: from_unix_ms(number("first")),
        dead_at: from_unix_ms(number("dead")),
    })
}

fn from_unix_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
