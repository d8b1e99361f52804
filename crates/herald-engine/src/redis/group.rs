//! A consumer group in one process of the Redis engine: one task serving this process's members
//! of the group. The group's state lives in Redis (see `scripts.rs` for the states of an
//! entry); the task keeps only what is local — its members, their deliveries in flight with
//! their ack deadlines, and the entries it read but has not handed out yet.
//!
//! Timers: a process times out its own deliveries (a tokio timer per deadline, precise) and
//! wakes itself for the retries it scheduled; it also looks at every stream's due set every
//! [`DUE_POLL_INTERVAL`], for retries scheduled elsewhere (another process, a redrive). Due
//! times are Redis's clock (`TIME` in the scripts), so processes agree on them.
//!
//! Reads: new entries are read straight into members' consumers by reads that run beside the
//! task (up to [`DIRECT_READS_IN_FLIGHT_MAX`], each on a connection of its own), so that Redis
//! reads the next batch while the task hands out the last and records acks; one read at a
//! time kept Redis and the task waiting on each other (docs/PERFORMANCE.md). A member has at
//! most one read in flight and nothing else is handed to it meanwhile, so that it sees each
//! stream in order; reads for different members overlap.
//!
//! Invariants: a delivery is in `in_flight` exactly while the task believes its entry is owned
//! by the member's consumer at that attempt (the scripts check it again in Redis);
//! `member.in_flight` counts the member's entries in `in_flight`; `read_plans` says what the
//! reads in flight asked for, for which member and stream; a member leaves, and the task
//! stops, only once no read is in flight (what a read took is then in `in_flight`, to be given
//! back).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::join_all;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use hashbrown::HashMap as FastMap;
use herald_core::{Pattern, StoredEvent};
use rand::Rng;
use redis::Value;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::warn;

use super::Inner;
use super::connection::Connection;
use super::decode::{decode_event, decode_raw_read_reply, decode_read_reply};
use super::keys::{GroupKeys, entry_id, holder_consumer, member_consumer, process_of, seq_of};
use super::raw::RawConnection;
use super::scripts;
use super::tail::Tail;
use crate::api::{
    Closed, Delivery, GroupPolicy, MemberCommand, MemberRequest, VerbError, VerbReply,
};
use crate::deadlines::Deadlines;

/// Entries read from one stream per `XREADGROUP`.
const FETCH_EVENTS_MAX: usize = 256;

/// Entries a task reads in one turn while looking for ones its pattern matches; past it, it
/// wakes itself, so that verbs are not held up by a long sparse scan.
const SCAN_EVENTS_PER_TURN_MAX: usize = 16 * 1024;

/// How often a task looks for retries that others scheduled.
pub(crate) const DUE_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Entries of other processes looked at per stream per sweep.
const SWEEP_ENTRIES_MAX: usize = 256;

/// Direct reads in flight at most, each on a connection of its own: Redis reads one while the
/// task hands out another. A member has at most one (see `reserve`).
const DIRECT_READS_IN_FLIGHT_MAX: usize = 4;

/// Entries one direct read asks for at most, whatever the member's room: a member with a
/// credit of 1 000 then has its next read in Redis while the client works on the last, rather
/// than one read for its whole credit and nothing until the acks came back (four members'
/// consume 410 → 500 k/s; 128 and 384 did worse, docs/PERFORMANCE.md).
const DIRECT_READ_EVENTS_MAX: usize = 256;

/// The wait before trying again a transition that Redis failed to record.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(500);

pub(crate) enum Control {
    Join {
        member_id: u64,
        max_in_flight: u32,
        deliveries: mpsc::Sender<Delivery>,
        closed: watch::Sender<Option<Closed>>,
    },
    Leave {
        member_id: u64,
    },
    AttachStream(Arc<str>),
    /// Answered once every verb queued before it is applied.
    Flush(oneshot::Sender<()>),
    /// Retries may be due now (after a redrive).
    DueNow,
    /// End the task; `release` gives back what this process holds (a clean stop) rather than
    /// leaving it (a deleted group).
    Stop {
        reason: Closed,
        release: bool,
    },
}

struct Member {
    consumer: String,
    deliveries: mpsc::Sender<Delivery>,
    closed: watch::Sender<Option<Closed>>,
    max_in_flight: u32,
    in_flight: u32,
}

struct InFlight {
    member_id: u64,
    stream: usize,
    seq: u64,
    attempt: u32,
    deadline: Instant,
}

struct Attached {
    name: Arc<str>,
    keys: GroupKeys,
    tail: Arc<Tail>,
    /// Every entry up to this seq has been read by the group (here or elsewhere).
    caught_up_to: u64,
    /// The pattern matched nothing of the last read: read past big batches with the holder
    /// consumer (then hand matches out) rather than reading each member's room straight into
    /// its consumer.
    sparse: bool,
    /// Direct reads' deliveries not yet added to the group's `delivered` counter in Redis.
    unrecorded_deliveries: u64,
    /// The last direct read came back full: there is likely more, whatever the tail has seen
    /// so far (it reads a backlog far slower than members do, and must not pace them).
    behind: bool,
}

/// Acks of one member on one stream: delivery id, what was delivered, whom to answer.
type AckBatch = Vec<(u64, InFlight, Option<VerbReply>)>;

/// Members with room and how much, in round-robin order: `(member id, deliveries it can take)`.
/// The task is the only sender on a member's channel, so room counted before an await is still
/// there after it.
type Room = [(u64, usize)];

/// What one `XREADGROUP` gave: how many entries, and those the pattern matches.
struct Read {
    count: usize,
    matched: Vec<Arc<StoredEvent>>,
}

/// The task's own connections for its reads (`raw.rs`): one per read in flight, kept for the
/// next. One that failed is dropped; another is opened at the next read.
#[derive(Default)]
struct RawPool {
    idle: Vec<RawConnection>,
    /// Reads in flight (on a connection of the pool or the shared one).
    lent: usize,
    /// A Cluster (or an address `raw.rs` does not speak): reads go on the shared connection.
    unsupported: bool,
}

/// What a read goes on.
enum Lent {
    Raw(RawConnection),
    Shared,
}

/// What one read's `XREADGROUP`s gave, per member in the order asked; the connection comes
/// back unless it failed.
type ReadOutcome = (
    Option<RawConnection>,
    Vec<Result<Vec<Arc<StoredEvent>>, String>>,
);

/// A direct read in flight: whose room it fills, on which stream.
struct ReadPlan {
    stream: usize,
    /// The tail's last seq when it was sent: a short read means the group has read that far.
    target: u64,
    member_id: u64,
    count: usize,
}

/// An entry read with this process's holder consumer, not yet handed out.
struct Held {
    stream: usize,
    event: Arc<StoredEvent>,
}

pub(crate) struct GroupTask {
    inner: Arc<Inner>,
    name: String,
    pattern: Pattern,
    policy: GroupPolicy,
    holder: String,
    streams: Vec<Attached>,
    wake: Arc<Notify>,
    members: BTreeMap<u64, Member>,
    /// Where the round robin over members resumes.
    next_member: u64,
    held: VecDeque<Held>,
    /// By delivery id, with hashbrown's default hasher rather than std's SipHash (a few
    /// percent of the consume profile): the ids are the task's own, not a client's.
    in_flight: FastMap<u64, InFlight>,
    /// The in-flight deliveries' ack deadlines, in expiry order (stale entries included).
    deadlines: Deadlines,
    /// When each stream's next retry is due, as far as this task knows.
    due_at: BTreeMap<usize, Instant>,
    /// Streams whose due set may hold retries due now.
    due_ready: BTreeSet<usize>,
    next_poll: Instant,
    /// When to look next for entries of processes taken for dead.
    next_sweep: Instant,
    next_delivery_id: u64,
    raw: RawPool,
    /// Direct reads in flight, taken in the order sent; `read_plans` in the same order.
    reads: FuturesOrdered<JoinHandle<ReadOutcome>>,
    read_plans: VecDeque<ReadPlan>,
    /// Acks being recorded by Redis, settled as their replies come back: the task goes on
    /// handing out and taking verbs meanwhile.
    recording: FuturesUnordered<JoinHandle<AcksRecorded>>,
    /// Delivery counts being added to the group's counters in Redis, likewise.
    counting: FuturesUnordered<JoinHandle<DeliveriesCounted>>,
}

/// Delivery counts sent to Redis, per stream, with whether each was added.
type DeliveriesCounted = Vec<(usize, u64, Result<i64, redis::RedisError>)>;

/// Acks sent to Redis, with what it replied to each batch's script.
type AcksRecorded = (
    BTreeMap<(usize, u64), AckBatch>,
    Vec<Result<Value, redis::RedisError>>,
);

impl GroupTask {
    pub fn new(inner: Arc<Inner>, name: String, pattern: Pattern, policy: GroupPolicy) -> Self {
        let holder = holder_consumer(&inner.process);
        GroupTask {
            inner,
            name,
            pattern,
            policy,
            holder,
            streams: Vec::new(),
            wake: Arc::new(Notify::new()),
            members: BTreeMap::new(),
            next_member: 0,
            held: VecDeque::new(),
            in_flight: FastMap::default(),
            deadlines: Deadlines::default(),
            due_at: BTreeMap::new(),
            due_ready: BTreeSet::new(),
            next_poll: Instant::now() + DUE_POLL_INTERVAL,
            next_sweep: Instant::now(),
            next_delivery_id: 1,
            raw: RawPool::default(),
            reads: FuturesOrdered::new(),
            read_plans: VecDeque::new(),
            recording: FuturesUnordered::new(),
            counting: FuturesUnordered::new(),
        }
    }

    pub async fn run(
        mut self,
        streams: Vec<Arc<str>>,
        mut commands: mpsc::Receiver<MemberRequest>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) {
        for stream in streams {
            self.attach(stream).await;
        }
        loop {
            self.pump().await;
            let deadline = self.next_deadline();
            let wake = self.wake.clone();
            tokio::select! {
                command = commands.recv() => {
                    let Some(request) = command else { return };
                    let mut batch = vec![request];
                    while let Ok(request) = commands.try_recv() {
                        batch.push(request);
                    }
                    self.verbs(batch, true).await;
                }
                control = control.recv() => {
                    // Verbs a member sent before leaving were queued first: apply them before a
                    // `Leave` (or a stop) so that its last acks are not taken for unacked.
                    self.settle_recording().await;
                    let mut batch = Vec::new();
                    while let Ok(request) = commands.try_recv() {
                        batch.push(request);
                    }
                    if !batch.is_empty() {
                        self.verbs(batch, false).await;
                    }
                    match control {
                        None => {
                            self.stop(Closed::EngineStopped, true).await;
                            return;
                        }
                        Some(Control::Stop { reason, release }) => {
                            self.stop(reason, release).await;
                            return;
                        }
                        Some(control) => self.control(control).await,
                    }
                }
                recorded = self.recording.next(), if !self.recording.is_empty() => {
                    if let Some(recorded) = recorded {
                        self.settle_recorded(recorded);
                    }
                }
                counted = self.counting.next(), if !self.counting.is_empty() => {
                    if let Some(counted) = counted {
                        self.settle_counted(counted);
                    }
                }
                outcome = self.reads.next(), if !self.reads.is_empty() => {
                    if let Some(outcome) = outcome {
                        self.finish_read(outcome).await;
                    }
                }
                () = wake.notified() => {}
                () = sleep_until(deadline) => {
                    if !self.on_timers().await {
                        // Deleted by another process: its members here are told so.
                        self.stop(Closed::GroupDeleted, false).await;
                        return;
                    }
                }
            }
        }
    }

    async fn attach(&mut self, stream: Arc<str>) {
        if self.streams.iter().any(|attached| attached.name == stream) {
            return;
        }
        let keys = self.inner.keys.group(&stream, &self.name);
        // Created at the start for a stream that appeared after the group; a group that exists
        // on the stream (made when the group was, or by another process) keeps its position.
        if let Err(error) = self
            .inner
            .create_redis_group(&keys.events, &self.name, 0)
            .await
        {
            warn!(group = %self.name, %stream, %error, "cannot create the group on the stream");
            return;
        }
        let tail = match self.inner.tail(&stream).await {
            Ok(tail) => tail,
            Err(error) => {
                warn!(group = %self.name, %stream, %error, "cannot follow the stream");
                return;
            }
        };
        tail.add_waker(Arc::downgrade(&self.wake));
        self.streams.push(Attached {
            name: stream,
            keys,
            tail,
            caught_up_to: 0,
            sparse: false,
            unrecorded_deliveries: 0,
            behind: false,
        });
        self.due_ready.insert(self.streams.len() - 1);
    }

    async fn control(&mut self, control: Control) {
        match control {
            Control::Join {
                member_id,
                max_in_flight,
                deliveries,
                closed,
            } => {
                let consumer = member_consumer(&self.inner.process, member_id);
                self.members.insert(
                    member_id,
                    Member {
                        consumer,
                        deliveries,
                        closed,
                        max_in_flight: max_in_flight.max(1),
                        in_flight: 0,
                    },
                );
                self.due_ready.extend(0..self.streams.len());
            }
            Control::Leave { member_id } => self.leave(member_id).await,
            Control::AttachStream(stream) => self.attach(stream).await,
            Control::Flush(reply) => {
                self.finish_reads().await;
                self.record_deliveries().await;
                let _ = reply.send(());
            }
            Control::DueNow => self.due_ready.extend(0..self.streams.len()),
            Control::Stop { .. } => {}
        }
    }

    /// Hands out what it can, then has Redis count what it handed out, beside the task.
    async fn pump(&mut self) {
        self.hand_out().await;
        self.send_delivery_counts();
    }

    /// Hands out what it can: retries that are due first, then new entries, round robin over
    /// members with room.
    async fn hand_out(&mut self) {
        loop {
            let mut rooms = self.reserve();
            if rooms.is_empty() {
                return;
            }
            let mut delivered = self.pump_due(&mut rooms).await;
            delivered += self.pump_held(&mut rooms).await;
            self.pump_direct(&mut rooms).await;
            let room: usize = rooms.iter().map(|(_, room)| room).sum();
            if room > 0 && self.held.len() < room {
                self.fetch(room).await;
                delivered += self.pump_held(&mut rooms).await;
            }
            if delivered == 0 {
                return;
            }
        }
    }

    /// Every member with room and how much, in round-robin order: what its credit allows and
    /// its channel holds. Counted, not reserved: a permit per slot (reserved, then mostly
    /// dropped at each turn) was a tenth of the consume path's CPU (docs/PERFORMANCE.md).
    fn reserve(&mut self) -> Vec<(u64, usize)> {
        let order = self
            .members
            .range(self.next_member..)
            .chain(self.members.range(..self.next_member));
        let mut rooms = Vec::new();
        for (&member_id, member) in order {
            if self.is_reading(member_id) {
                // Nothing else until its read is back: a member sees each stream in order.
                continue;
            }
            let credit = member.max_in_flight.saturating_sub(member.in_flight) as usize;
            let room = credit.min(member.deliveries.capacity());
            if room > 0 {
                rooms.push((member_id, room));
            }
        }
        if let Some((first, _)) = rooms.first() {
            self.next_member = first + 1;
        }
        rooms
    }

    async fn pump_due(&mut self, rooms: &mut Room) -> usize {
        let mut delivered = 0;
        let ready: Vec<usize> = self.due_ready.iter().copied().collect();
        for stream in ready {
            let mut exhausted = false;
            for (member_id, room) in rooms.iter_mut() {
                if *room == 0 {
                    continue;
                }
                let Some(consumer) = self.members.get(member_id).map(|m| m.consumer.clone()) else {
                    continue;
                };
                let wanted = *room;
                let keys = self.streams[stream].keys.clone();
                let mut invocation = keys.invoke(&scripts::TAKE_DUE);
                invocation.arg(&self.name).arg(&consumer).arg(wanted);
                let mut connection = self.inner.connection.clone();
                let reply: Result<Vec<Value>, _> = invocation.invoke_async(&mut connection).await;
                let reply = match reply {
                    Ok(reply) => reply,
                    Err(error) => {
                        warn!(group = %self.name, %error, "taking due retries failed");
                        exhausted = true;
                        break;
                    }
                };
                let mut values = reply.into_iter();
                let wait_us = values.next().map_or(-1, |value| as_i64(&value));
                if wait_us >= 0 {
                    self.due_at.insert(
                        stream,
                        Instant::now() + Duration::from_micros(wait_us as u64),
                    );
                } else {
                    self.due_at.remove(&stream);
                }
                let mut taken = 0;
                while let (Some(seq), Some(attempt), Some(json)) =
                    (values.next(), values.next(), values.next())
                {
                    taken += 1;
                    let seq = as_i64(&seq) as u64;
                    let Value::BulkString(json) = json else {
                        continue;
                    };
                    let event = match decode_event(&self.streams[stream].name, seq, &json) {
                        Ok(event) => Arc::new(event),
                        Err(error) => {
                            warn!(group = %self.name, %error, "a due entry does not decode");
                            continue;
                        }
                    };
                    if *room > 0 {
                        *room -= 1;
                        self.deliver(*member_id, stream, event, as_i64(&attempt) as u32);
                        delivered += 1;
                    }
                }
                if taken < wanted {
                    exhausted = true;
                    break;
                }
            }
            if exhausted {
                self.due_ready.remove(&stream);
            }
        }
        delivered
    }

    /// Sends reads of new entries straight into members' consumers, as many as each has room
    /// for, on streams that are not sparse: the common case, where the pattern matches (nearly)
    /// everything. No hand-over script: each entry is delivered by the read itself. Each
    /// member's read is a pipeline of its own, run beside the task; `finish_read` hands out
    /// what it brings.
    async fn pump_direct(&mut self, rooms: &mut Room) {
        for stream in 0..self.streams.len() {
            for (member_id, room) in rooms.iter_mut() {
                let attached = &self.streams[stream];
                let target = attached.tail.last_seq();
                let read_ahead = attached.caught_up_to + self.stream_reading(stream) as u64;
                if attached.sparse || (!attached.behind && read_ahead >= target) {
                    break;
                }
                if self.raw.lent >= DIRECT_READS_IN_FLIGHT_MAX {
                    // A read finishing pumps again.
                    return;
                }
                let Some(member) = self.members.get(member_id) else {
                    continue;
                };
                if *room == 0 {
                    continue;
                }
                // A read of its own for each member, not one pipeline for every member with
                // room: members then go round independently, as separate consumers of a Redis
                // user do, rather than in step (Redis reading for all while the task and the
                // clients wait, then the other way round). Its whole room is spoken for until
                // the read is back: nothing else is handed to a member meanwhile (`reserve`).
                let count = std::mem::take(room).min(DIRECT_READ_EVENTS_MAX);
                let command = attached.read_command(&self.name, &member.consumer, count);
                let lent = self.lend().await;
                let name = self.streams[stream].name.clone();
                let shared = self.inner.connection.clone();
                self.reads.push_back(tokio::spawn(read_pipeline(
                    lent,
                    shared,
                    name,
                    vec![command],
                )));
                self.read_plans.push_back(ReadPlan {
                    stream,
                    target,
                    member_id: *member_id,
                    count,
                });
            }
        }
    }

    /// Hands out what the oldest read in flight brought, once it is done.
    async fn finish_read(&mut self, outcome: Result<ReadOutcome, tokio::task::JoinError>) {
        let Some(plan) = self.read_plans.pop_front() else {
            return;
        };
        self.raw.lent = self.raw.lent.saturating_sub(1);
        let ReadPlan {
            stream,
            target,
            member_id,
            count,
        } = plan;
        let entries = match outcome {
            Ok((connection, results)) => {
                self.raw.idle.extend(connection);
                results
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| Err("no reply".to_owned()))
            }
            Err(error) => Err(error.to_string()),
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err(error) => {
                // What the lost reply read stays pending in the member's consumer, as after any
                // lost reply.
                warn!(group = %self.name, stream = %self.streams[stream].name, %error, "reading the stream failed");
                self.streams[stream].behind = false;
                return;
            }
        };
        let mut unmatched = Vec::new();
        let read = self.absorb(stream, entries, count, target, &mut unmatched);
        let matched = read.matched.len();
        self.streams[stream].unrecorded_deliveries += matched as u64;
        for event in read.matched {
            self.deliver(member_id, stream, event, 1);
        }
        if read.count > 0 && matched == 0 {
            self.streams[stream].sparse = true;
        }
        self.streams[stream].behind = read.count == count;
        self.ack_unmatched(stream, unmatched).await;
    }

    /// Whether a read in flight is for `member_id`.
    fn is_reading(&self, member_id: u64) -> bool {
        self.read_plans
            .iter()
            .any(|plan| plan.member_id == member_id)
    }

    /// Entries asked of `stream` by the reads in flight.
    fn stream_reading(&self, stream: usize) -> usize {
        self.read_plans
            .iter()
            .filter(|plan| plan.stream == stream)
            .map(|plan| plan.count)
            .sum()
    }

    /// Waits for every read in flight and hands out what they brought: before a member leaves
    /// or the task stops, so that what the reads took is known and given back.
    async fn finish_reads(&mut self) {
        while let Some(outcome) = self.reads.next().await {
            self.finish_read(outcome).await;
        }
    }

    /// What the next read goes on: an idle connection of the pool, a new one, or the shared
    /// connection where there is none (a Cluster) or none can be opened now.
    async fn lend(&mut self) -> Lent {
        self.raw.lent += 1;
        if let Some(connection) = self.raw.idle.pop() {
            return Lent::Raw(connection);
        }
        if self.raw.unsupported {
            return Lent::Shared;
        }
        match self
            .inner
            .redis
            .raw(&self.inner.connection_name("read"))
            .await
        {
            Ok(Some(connection)) => Lent::Raw(connection),
            Ok(None) => {
                self.raw.unsupported = true;
                Lent::Shared
            }
            Err(error) => {
                warn!(group = %self.name, %error, "cannot open a read connection");
                Lent::Shared
            }
        }
    }

    /// One `XREADGROUP` per `(consumer, count)`: up to `count` new entries of a stream into
    /// `consumer`'s name, decoded, read now (the sparse path's reads).
    async fn read_entries<'a>(
        &mut self,
        stream: usize,
        reads: impl Iterator<Item = (&'a str, usize)>,
    ) -> Vec<Result<Vec<Arc<StoredEvent>>, String>> {
        let commands: Vec<redis::Cmd> = reads
            .map(|(consumer, count)| self.streams[stream].read_command(&self.name, consumer, count))
            .collect();
        let lent = self.lend().await;
        let name = self.streams[stream].name.clone();
        let (connection, results) =
            read_pipeline(lent, self.inner.connection.clone(), name, commands).await;
        self.raw.lent = self.raw.lent.saturating_sub(1);
        self.raw.idle.extend(connection);
        results
    }

    /// Sorts out what a read of up to `count` entries gave: the events the pattern matches,
    /// and the ids of the others (to be acked at once, added to `unmatched`). `target` is the
    /// tail's last seq seen before the read: a short read means the group has read that far.
    fn absorb(
        &mut self,
        stream: usize,
        events: Vec<Arc<StoredEvent>>,
        count: usize,
        target: u64,
        unmatched: &mut Vec<String>,
    ) -> Read {
        let attached = &self.streams[stream];
        let read_count = events.len();
        let mut matched = Vec::new();
        let mut last = attached.caught_up_to;
        for event in events {
            last = last.max(event.seq);
            if self.pattern.matches(event.event.event_type()) {
                matched.push(event);
            } else {
                unmatched.push(entry_id(event.seq));
            }
        }
        let attached = &mut self.streams[stream];
        attached.caught_up_to = attached.caught_up_to.max(last);
        if read_count < count {
            attached.caught_up_to = attached.caught_up_to.max(target);
        }
        Read {
            count: read_count,
            matched,
        }
    }

    /// Acks entries read that the pattern does not match: nothing is owed on them.
    async fn ack_unmatched(&mut self, stream: usize, unmatched: Vec<String>) {
        if unmatched.is_empty() {
            return;
        }
        let mut connection = self.inner.connection.clone();
        let done: Result<(), _> = redis::cmd("XACK")
            .arg(&self.streams[stream].keys.events)
            .arg(&self.name)
            .arg(&unmatched)
            .query_async(&mut connection)
            .await;
        if let Err(error) = done {
            warn!(group = %self.name, %error, "acking unmatched entries failed");
        }
    }

    /// Adds the direct reads' deliveries to the group's counters in Redis, and waits until
    /// every count sent before is in: before the task answers a flush or stops, so that
    /// anything that looks at the counters through this process (`groups()` flushes the task
    /// first) sees them.
    async fn record_deliveries(&mut self) {
        self.send_delivery_counts();
        while let Some(counted) = self.counting.next().await {
            self.settle_counted(counted);
        }
    }

    /// Sends the `HINCRBY`s of the deliveries not counted yet, on a task of their own, settled
    /// in `counting`. Counted after each turn of handing out rather than after each read, and
    /// never awaited in the task's turn: the task waiting for the round trip (behind the ack scripts on the
    /// shared connection) held up the next reads and acks, a fifth of four members' consume
    /// (docs/PERFORMANCE.md).
    fn send_delivery_counts(&mut self) {
        let counts: Vec<(usize, u64)> = self
            .streams
            .iter_mut()
            .enumerate()
            .filter(|(_, attached)| attached.unrecorded_deliveries > 0)
            .map(|(stream, attached)| (stream, std::mem::take(&mut attached.unrecorded_deliveries)))
            .collect();
        if counts.is_empty() {
            return;
        }
        let bumps: Vec<_> = counts
            .into_iter()
            .map(|(stream, count)| {
                let mut command = redis::cmd("HINCRBY");
                command
                    .arg(&self.streams[stream].keys.stats)
                    .arg("delivered")
                    .arg(count);
                let mut connection = self.inner.connection.clone();
                async move {
                    (
                        stream,
                        count,
                        command.query_async::<i64>(&mut connection).await,
                    )
                }
            })
            .collect();
        self.counting.push(tokio::spawn(join_all(bumps)));
    }

    /// A count Redis failed to add is sent again with the next.
    fn settle_counted(&mut self, counted: Result<DeliveriesCounted, tokio::task::JoinError>) {
        let counted = match counted {
            Ok(counted) => counted,
            // Only a panic gets here.
            Err(error) => {
                warn!(group = %self.name, %error, "counting deliveries failed");
                return;
            }
        };
        for (stream, count, result) in counted {
            if let Err(error) = result {
                warn!(group = %self.name, %error, "counting deliveries failed");
                self.streams[stream].unrecorded_deliveries += count;
            }
        }
    }

    /// One `XREADGROUP` of up to `count` new entries into `consumer`'s name, on a stream with
    /// more to read; entries the pattern does not match are acked at once. `None` when there
    /// was nothing to read or the read failed.
    async fn read_group(&mut self, stream: usize, consumer: &str, count: usize) -> Option<Read> {
        let target = self.streams[stream].tail.last_seq();
        if self.streams[stream].caught_up_to >= target {
            return None;
        }
        let read = self
            .read_entries(stream, std::iter::once((consumer, count)))
            .await
            .pop();
        let entries = match read.unwrap_or_else(|| Err("no reply".to_owned())) {
            Ok(entries) => entries,
            Err(error) => {
                warn!(group = %self.name, stream = %self.streams[stream].name, %error, "reading the stream failed");
                return None;
            }
        };
        let mut unmatched = Vec::new();
        let read = self.absorb(stream, entries, count, target, &mut unmatched);
        self.ack_unmatched(stream, unmatched).await;
        Some(read)
    }

    /// On sparse streams, reads new entries into `held` until it holds `room` matching ones or
    /// every stream is read, acking at once those the pattern does not match. Only matching
    /// entries count against `room`; once a read matched nothing, it reads whole batches. A
    /// batch that matched mostly makes the stream dense again.
    async fn fetch(&mut self, room: usize) {
        let mut scanned = 0;
        for stream in 0..self.streams.len() {
            if !self.streams[stream].sparse {
                continue;
            }
            let mut limit = FETCH_EVENTS_MAX.min(room.max(1));
            loop {
                if self.held.len() >= room {
                    return;
                }
                if scanned >= SCAN_EVENTS_PER_TURN_MAX {
                    self.wake.notify_one();
                    return;
                }
                let holder = self.holder.clone();
                let Some(read) = self.read_group(stream, &holder, limit).await else {
                    break;
                };
                scanned += read.count;
                let matched = read.matched.len();
                if matched * 2 > read.count {
                    self.streams[stream].sparse = false;
                }
                for event in read.matched {
                    self.held.push_back(Held { stream, event });
                }
                if read.count < limit {
                    break;
                }
                if matched == 0 {
                    limit = FETCH_EVENTS_MAX;
                }
            }
        }
    }

    /// Hands held entries to members, round robin, one script per member and stream.
    async fn pump_held(&mut self, rooms: &mut Room) -> usize {
        let mut plan: BTreeMap<(usize, u64), Vec<Arc<StoredEvent>>> = BTreeMap::new();
        'deal: loop {
            let mut dealt = false;
            for (member_id, room) in rooms.iter_mut() {
                if self.held.is_empty() {
                    break 'deal;
                }
                if *room == 0 {
                    continue;
                }
                *room -= 1;
                let Some(held) = self.held.pop_front() else {
                    break 'deal;
                };
                plan.entry((held.stream, *member_id))
                    .or_default()
                    .push(held.event);
                dealt = true;
            }
            if !dealt {
                break;
            }
        }
        let mut delivered = 0;
        for ((stream, member_id), batch) in plan {
            let Some(consumer) = self.members.get(&member_id).map(|m| m.consumer.clone()) else {
                continue;
            };
            let keys = self.streams[stream].keys.clone();
            let mut invocation = keys.invoke(&scripts::ASSIGN);
            invocation.arg(&self.name).arg(&self.holder).arg(&consumer);
            for event in &batch {
                invocation.arg(event.seq);
            }
            let mut connection = self.inner.connection.clone();
            let reply: Result<Vec<i64>, _> = invocation.invoke_async(&mut connection).await;
            match reply {
                Ok(assigned) => {
                    for (event, ok) in batch.into_iter().zip(assigned) {
                        if ok == 1 {
                            self.deliver(member_id, stream, event, 1);
                            delivered += 1;
                        }
                    }
                }
                Err(error) => {
                    warn!(group = %self.name, %error, "handing out entries failed");
                    for event in batch.into_iter().rev() {
                        self.held.push_front(Held { stream, event });
                    }
                    return delivered;
                }
            }
        }
        delivered
    }

    fn deliver(&mut self, member_id: u64, stream: usize, event: Arc<StoredEvent>, attempt: u32) {
        let Some(member) = self.members.get_mut(&member_id) else {
            return;
        };
        member.in_flight += 1;
        let delivery_id = self.next_delivery_id;
        self.next_delivery_id += 1;
        let deadline = self
            .deadlines
            .push(Instant::now() + self.policy.ack_timeout, delivery_id);
        self.in_flight.insert(
            delivery_id,
            InFlight {
                member_id,
                stream,
                seq: event.seq,
                attempt,
                deadline,
            },
        );
        // Fails only for a member that left meanwhile (its leave gives the entry back) or, never,
        // past the room `reserve` counted.
        let sent = self.members.get(&member_id).map(|member| {
            member.deliveries.try_send(Delivery {
                delivery_id,
                attempt,
                event,
            })
        });
        if let Some(Err(mpsc::error::TrySendError::Full(_))) = sent {
            warn!(group = %self.name, delivery_id, "a member's channel was full; the delivery will time out");
        }
    }

    fn take_in_flight(&mut self, member_id: u64, delivery_id: u64) -> Result<InFlight, VerbError> {
        if self
            .in_flight
            .get(&delivery_id)
            .is_none_or(|in_flight| in_flight.member_id != member_id)
        {
            return Err(VerbError::UnknownDelivery(delivery_id));
        }
        let in_flight = self
            .in_flight
            .remove(&delivery_id)
            .ok_or(VerbError::UnknownDelivery(delivery_id))?;
        if let Some(member) = self.members.get_mut(&in_flight.member_id) {
            member.in_flight = member.in_flight.saturating_sub(1);
        }
        Ok(in_flight)
    }

    /// Puts back a delivery whose transition Redis failed to record, to be timed out later.
    fn restore(&mut self, delivery_id: u64, mut in_flight: InFlight) {
        if let Some(member) = self.members.get_mut(&in_flight.member_id) {
            member.in_flight += 1;
        }
        in_flight.deadline = self.deadlines.push(
            in_flight.deadline.max(Instant::now() + RETRY_AFTER_FAILURE),
            delivery_id,
        );
        self.in_flight.insert(delivery_id, in_flight);
    }

    /// Applies member verbs; with `hand_out`, also hands out what they free (not before a
    /// member's leave: what it would be handed would only come back as a failed attempt).
    async fn verbs(&mut self, batch: Vec<MemberRequest>, hand_out: bool) {
        let mut acks: BTreeMap<(usize, u64), AckBatch> = BTreeMap::new();
        let mut others = Vec::new();
        for request in batch {
            match request.command {
                MemberCommand::Ack { delivery_id } => {
                    match self.take_in_flight(request.member_id, delivery_id) {
                        Ok(in_flight) => acks
                            .entry((in_flight.stream, request.member_id))
                            .or_default()
                            .push((delivery_id, in_flight, request.reply)),
                        Err(error) => answer(request.reply, Err(error)),
                    }
                }
                _ => others.push(request),
            }
        }
        if hand_out {
            // The members' room the acks free is handed out while Redis records them, and the
            // task goes on (reads, other members' verbs) until Redis replied: waiting here for
            // each batch's round trip kept four members' reads and acks in single file.
            if !acks.is_empty() {
                let calls = self.ack_calls(&acks);
                self.recording.push(tokio::spawn(async move {
                    let replies = join_all(calls).await;
                    (acks, replies)
                }));
            }
            self.hand_out().await;
        } else {
            self.ack_batches(acks).await;
        }
        for request in others {
            let result = self.verb(request.member_id, request.command).await;
            answer(request.reply, result);
        }
    }

    /// Waits for the acks being recorded and settles them.
    async fn settle_recording(&mut self) {
        while let Some(recorded) = self.recording.next().await {
            self.settle_recorded(recorded);
        }
    }

    fn settle_recorded(&mut self, recorded: Result<AcksRecorded, tokio::task::JoinError>) {
        match recorded {
            Ok((acks, replies)) => self.settle_acks(acks, replies),
            // Only a panic gets here; the batch's deliveries stay pending in Redis.
            Err(error) => warn!(group = %self.name, %error, "recording acks failed"),
        }
    }

    /// Records acks, one script per member and stream, all sent at once (pipelined on the
    /// shared connection): each script checks its own entries, so they need no order.
    async fn ack_batches(&mut self, acks: BTreeMap<(usize, u64), AckBatch>) {
        let replies = join_all(self.ack_calls(&acks)).await;
        self.settle_acks(acks, replies);
    }

    /// The ack scripts of `acks`, as futures that borrow nothing.
    fn ack_calls(
        &self,
        acks: &BTreeMap<(usize, u64), AckBatch>,
    ) -> Vec<impl Future<Output = Result<Value, redis::RedisError>> + use<>> {
        acks.iter()
            .map(|(&(stream, member_id), batch)| {
                let consumer = member_consumer(&self.inner.process, member_id);
                let mut invocation = self.streams[stream].keys.invoke(&scripts::ACK);
                invocation.arg(&self.name).arg(&consumer).arg(batch.len());
                for (_, in_flight, _) in batch {
                    invocation.arg(entry_id(in_flight.seq));
                }
                for (position, (_, in_flight, _)) in (1..).zip(batch) {
                    if in_flight.attempt > 1 {
                        invocation.arg(position).arg(in_flight.attempt);
                    }
                }
                let mut connection = self.inner.connection.clone();
                async move { invocation.invoke_async::<Value>(&mut connection).await }
            })
            .collect()
    }

    /// Answers acks with what Redis recorded; a batch Redis failed to record goes back in
    /// flight, to be timed out later.
    fn settle_acks(
        &mut self,
        acks: BTreeMap<(usize, u64), AckBatch>,
        replies: Vec<Result<Value, redis::RedisError>>,
    ) {
        for (batch, reply) in acks.into_values().zip(replies) {
            let answers = reply
                .map_err(|error| error.to_string())
                .and_then(|answers| AckAnswers::of(answers, batch.len()));
            match answers {
                Ok(answers) => {
                    for (at, (delivery_id, _, reply)) in batch.into_iter().enumerate() {
                        let result = if answers.recorded(at) {
                            Ok(())
                        } else {
                            Err(VerbError::UnknownDelivery(delivery_id))
                        };
                        answer(reply, result);
                    }
                }
                Err(error) => {
                    warn!(group = %self.name, %error, "recording acks failed");
                    for (delivery_id, in_flight, reply) in batch {
                        self.restore(delivery_id, in_flight);
                        answer(reply, Err(VerbError::Unavailable(error.to_string())));
                    }
                }
            }
        }
    }

    async fn verb(&mut self, member_id: u64, command: MemberCommand) -> Result<(), VerbError> {
        match command {
            MemberCommand::Ack { delivery_id } => {
                let in_flight = self.take_in_flight(member_id, delivery_id)?;
                let (reply, answer) = oneshot::channel();
                let batch = vec![(delivery_id, in_flight, Some(reply))];
                self.ack_batches(BTreeMap::from([((batch[0].1.stream, member_id), batch)]))
                    .await;
                answer.await.unwrap_or(Err(VerbError::GroupGone))
            }
            MemberCommand::Nack {
                delivery_id,
                delay,
                reason,
            } => {
                let in_flight = self.take_in_flight(member_id, delivery_id)?;
                let delay = delay.unwrap_or_else(|| self.backoff(in_flight.attempt));
                let max_retries = i64::from(self.policy.max_retries);
                self.fail(delivery_id, in_flight, delay, max_retries, "nacked", reason)
                    .await
            }
            MemberCommand::Extend { delivery_id } => {
                let in_flight = self
                    .in_flight
                    .get(&delivery_id)
                    .filter(|in_flight| in_flight.member_id == member_id)
                    .ok_or(VerbError::UnknownDelivery(delivery_id))?;
                let (stream, seq, attempt) = (in_flight.stream, in_flight.seq, in_flight.attempt);
                let consumer = member_consumer(&self.inner.process, member_id);
                let mut invocation = self.streams[stream].keys.invoke(&scripts::EXTEND);
                invocation
                    .arg(&self.name)
                    .arg(&consumer)
                    .arg(seq)
                    .arg(attempt);
                let mut connection = self.inner.connection.clone();
                let reply: Result<i64, _> = invocation.invoke_async(&mut connection).await;
                match reply {
                    Ok(1) => {
                        let deadline = Instant::now() + self.policy.ack_timeout;
                        if let Some(in_flight) = self.in_flight.get_mut(&delivery_id) {
                            // The old entry stays behind, stale.
                            in_flight.deadline = self.deadlines.push(deadline, delivery_id);
                        }
                        Ok(())
                    }
                    Ok(_) => {
                        let _ = self.take_in_flight(member_id, delivery_id);
                        Err(VerbError::UnknownDelivery(delivery_id))
                    }
                    Err(error) => Err(VerbError::Unavailable(error.to_string())),
                }
            }
            MemberCommand::Reject {
                delivery_id,
                reason,
            } => {
                let in_flight = self.take_in_flight(member_id, delivery_id)?;
                self.fail(delivery_id, in_flight, Duration::ZERO, -1, "", reason)
                    .await
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        self.policy
            .backoff
            .delay(attempt, rand::rng().random::<f64>())
    }

    /// A failed attempt: a retry after `delay`, or a dead letter once `max_retries` retries are
    /// spent (`-1`: at once).
    async fn fail(
        &mut self,
        delivery_id: u64,
        in_flight: InFlight,
        delay: Duration,
        max_retries: i64,
        counter: &str,
        reason: Option<String>,
    ) -> Result<(), VerbError> {
        let consumer = member_consumer(&self.inner.process, in_flight.member_id);
        let stream = in_flight.stream;
        let mut invocation = self.streams[stream].keys.invoke(&scripts::FAIL);
        invocation
            .arg(&self.name)
            .arg(&consumer)
            .arg(in_flight.seq)
            .arg(in_flight.attempt)
            .arg(delay.as_micros() as u64)
            .arg(max_retries)
            .arg(counter)
            .arg(if reason.is_some() { "1" } else { "0" })
            .arg(reason.as_deref().unwrap_or(""));
        let mut connection = self.inner.connection.clone();
        let reply: Result<i64, _> = invocation.invoke_async(&mut connection).await;
        match reply {
            Ok(0) => Err(VerbError::UnknownDelivery(delivery_id)),
            Ok(1) => {
                let due = Instant::now() + delay;
                let earlier = self.due_at.get(&stream).is_none_or(|&at| due < at);
                if earlier {
                    self.due_at.insert(stream, due);
                }
                if delay.is_zero() {
                    self.due_ready.insert(stream);
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(error) => {
                warn!(group = %self.name, %error, "recording a failed attempt failed");
                self.restore(delivery_id, in_flight);
                Err(VerbError::Unavailable(error.to_string()))
            }
        }
    }

    /// Returns whether the group still exists.
    async fn on_timers(&mut self) -> bool {
        let now = Instant::now();
        let mut expired = Vec::new();
        while let Some((deadline, delivery_id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            expired.push((deadline, delivery_id));
        }
        for (deadline, delivery_id) in expired {
            // A stale entry (settled, or extended since) finds no delivery with its deadline.
            let Some(member_id) = self
                .in_flight
                .get(&delivery_id)
                .filter(|in_flight| in_flight.deadline == deadline)
                .map(|in_flight| in_flight.member_id)
            else {
                continue;
            };
            if let Ok(in_flight) = self.take_in_flight(member_id, delivery_id) {
                let delay = self.backoff(in_flight.attempt);
                let max_retries = i64::from(self.policy.max_retries);
                let _ = self
                    .fail(
                        delivery_id,
                        in_flight,
                        delay,
                        max_retries,
                        "",
                        Some("ack timeout".to_owned()),
                    )
                    .await;
            }
        }
        let due: Vec<usize> = self
            .due_at
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(&stream, _)| stream)
            .collect();
        for stream in due {
            self.due_at.remove(&stream);
            self.due_ready.insert(stream);
        }
        if self.next_poll <= now {
            self.next_poll = now + DUE_POLL_INTERVAL;
            self.due_ready.extend(0..self.streams.len());
        }
        if self.next_sweep <= now && !self.members.is_empty() {
            self.next_sweep = now + self.inner.config.process_ttl / 2;
            if !self.still_defined().await {
                return false;
            }
            self.sweep().await;
        }
        true
    }

    /// Whether the group's definition is still in Redis (a delete on another process removes
    /// it); when Redis cannot say, it is taken to be.
    async fn still_defined(&self) -> bool {
        let mut connection = self.inner.connection.clone();
        redis::cmd("HEXISTS")
            .arg(self.inner.keys.groups())
            .arg(&self.name)
            .query_async(&mut connection)
            .await
            .unwrap_or(true)
    }

    /// Recovers what processes taken for dead (heartbeat expired) left pending: their members'
    /// deliveries and the entries they held. Only entries idle for a whole process TTL are
    /// looked at: a process alive then has renewed its heartbeat since.
    async fn sweep(&mut self) {
        let idle_ms = self.inner.config.process_ttl.as_millis() as u64;
        let mut alive: HashMap<String, bool> = HashMap::new();
        let mut connection = self.inner.connection.clone();
        for stream in 0..self.streams.len() {
            let mut lost_consumers = BTreeSet::new();
            let pending: Result<Vec<(String, String, u64, u64)>, _> = redis::cmd("XPENDING")
                .arg(&self.streams[stream].keys.events)
                .arg(&self.name)
                .arg("IDLE")
                .arg(idle_ms)
                .arg("-")
                .arg("+")
                .arg(SWEEP_ENTRIES_MAX)
                .query_async(&mut connection)
                .await;
            let pending = match pending {
                Ok(pending) => pending,
                Err(error) => {
                    warn!(group = %self.name, %error, "looking for lost entries failed");
                    continue;
                }
            };
            for (id, consumer, _, count) in pending {
                let Some(process) = process_of(&consumer) else {
                    continue;
                };
                if process == self.inner.process {
                    continue;
                }
                let is_alive = match alive.get(process) {
                    Some(&known) => known,
                    None => {
                        let exists: bool = redis::cmd("EXISTS")
                            .arg(self.inner.keys.process(process))
                            .query_async(&mut connection)
                            .await
                            .unwrap_or(true);
                        alive.insert(process.to_owned(), exists);
                        exists
                    }
                };
                let Some(seq) = seq_of(&id) else {
                    continue;
                };
                if is_alive {
                    continue;
                }
                let mut invocation = self.streams[stream].keys.invoke(&scripts::RECOVER);
                invocation
                    .arg(&self.name)
                    .arg(&consumer)
                    .arg(seq)
                    .arg(count)
                    .arg(self.policy.max_retries);
                let recovered: Result<i64, _> = invocation.invoke_async(&mut connection).await;
                lost_consumers.insert(consumer.clone());
                match recovered {
                    Ok(1) => {
                        self.due_ready.insert(stream);
                    }
                    Ok(_) => {}
                    Err(error) => warn!(group = %self.name, %error, "recovering an entry failed"),
                }
            }
            for consumer in lost_consumers {
                self.forget_consumer(stream, &consumer).await;
            }
        }
    }

    /// Removes a consumer from the Redis group once it owns nothing.
    async fn forget_consumer(&self, stream: usize, consumer: &str) {
        let mut invocation = self.streams[stream].keys.invoke(&scripts::FORGET_CONSUMER);
        invocation.arg(&self.name).arg(consumer);
        let mut connection = self.inner.connection.clone();
        let forgotten: Result<i64, _> = invocation.invoke_async(&mut connection).await;
        if let Err(error) = forgotten {
            warn!(group = %self.name, %error, "removing a consumer failed");
        }
    }

    /// The next timer; drops the stale deadlines in front first, so that the task does not
    /// wake for a delivery already settled.
    fn next_deadline(&mut self) -> Option<Instant> {
        let in_flight = &self.in_flight;
        self.deadlines
            .tidy(in_flight.len(), |delivery_id, deadline| {
                in_flight
                    .get(&delivery_id)
                    .is_some_and(|in_flight| in_flight.deadline == deadline)
            });
        let ack = self.deadlines.first().map(|(deadline, _)| deadline);
        let retry = self.due_at.values().min().copied();
        let poll = (!self.members.is_empty()).then_some(self.next_poll.min(self.next_sweep));
        [ack, retry, poll].into_iter().flatten().min()
    }

    /// A member left: its deliveries are due again at once (each counted as an attempt), or
    /// dead-lettered when that was the last allowed.
    async fn leave(&mut self, member_id: u64) {
        self.finish_reads().await;
        self.release_member(
            member_id,
            i64::from(self.policy.max_retries),
            "member left before acking",
        )
        .await;
        let Some(member) = self.members.remove(&member_id) else {
            return;
        };
        for stream in 0..self.streams.len() {
            self.forget_consumer(stream, &member.consumer).await;
        }
        if self.members.is_empty() {
            self.release_held().await;
        }
    }

    async fn release_member(&mut self, member_id: u64, max_retries: i64, reason: &str) {
        let mut orphans: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, in_flight)| in_flight.member_id == member_id)
            .map(|(&delivery_id, _)| delivery_id)
            .collect();
        orphans.sort_unstable();
        for delivery_id in orphans {
            if let Ok(in_flight) = self.take_in_flight(member_id, delivery_id) {
                let _ = self
                    .fail(
                        delivery_id,
                        in_flight,
                        Duration::ZERO,
                        max_retries,
                        "",
                        Some(reason.to_owned()),
                    )
                    .await;
            }
        }
    }

    /// Gives back entries read but not handed out, so that other processes may take them.
    async fn release_held(&mut self) {
        let mut by_stream: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for held in self.held.drain(..) {
            by_stream
                .entry(held.stream)
                .or_default()
                .push(held.event.seq);
        }
        for (stream, seqs) in by_stream {
            let mut invocation = self.streams[stream].keys.invoke(&scripts::RELEASE_HELD);
            invocation.arg(&self.name).arg(&self.holder).arg(&seqs);
            let mut connection = self.inner.connection.clone();
            let released: Result<i64, _> = invocation.invoke_async(&mut connection).await;
            if let Err(error) = released {
                warn!(group = %self.name, %error, "giving back held entries failed");
            }
            self.due_ready.insert(stream);
        }
    }

    async fn stop(&mut self, reason: Closed, release: bool) {
        self.settle_recording().await;
        self.finish_reads().await;
        self.record_deliveries().await;
        if release {
            let members: Vec<u64> = self.members.keys().copied().collect();
            for member_id in members {
                // Kept for another try elsewhere; never dead-lettered by a stop.
                self.release_member(member_id, i64::MAX, "the engine stopped")
                    .await;
            }
            self.release_held().await;
        }
        for member in self.members.values() {
            member.closed.send_replace(Some(reason.clone()));
        }
    }
}

impl Attached {
    /// `XREADGROUP` of up to `count` new entries into `consumer`'s name.
    fn read_command(&self, group: &str, consumer: &str, count: usize) -> redis::Cmd {
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(&self.keys.events)
            .arg(">");
        command
    }
}

/// Sends `commands` (reads of `stream`) as one pipeline on `lent` and decodes each reply: on a
/// connection of the task's own the replies are walked as bytes (`raw.rs`); on the shared
/// connection, parsed by redis-rs. Borrows nothing, so that it can run beside the task.
async fn read_pipeline(
    lent: Lent,
    shared: Connection,
    stream: Arc<str>,
    commands: Vec<redis::Cmd>,
) -> ReadOutcome {
    match lent {
        Lent::Raw(mut connection) => match connection.pipeline(&commands).await {
            Ok(replies) => {
                let results = replies
                    .into_iter()
                    .map(|reply| {
                        decode_raw_read_reply(&stream, reply?).map_err(|error| error.to_string())
                    })
                    .collect();
                (Some(connection), results)
            }
            Err(error) => {
                // What the lost replies read stays pending in the members' consumers, as after
                // a lost reply on the shared connection. The connection is dropped.
                let error = error.to_string();
                (None, commands.iter().map(|_| Err(error.clone())).collect())
            }
        },
        Lent::Shared => {
            let results = join_all(commands.into_iter().map(|command| {
                let mut connection = shared.clone();
                let stream = stream.clone();
                async move {
                    let reply: Value = command
                        .query_async(&mut connection)
                        .await
                        .map_err(|error| error.to_string())?;
                    decode_read_reply(&stream, reply).map_err(|error| error.to_string())
                }
            }))
            .await;
            (None, results)
        }
    }
}

fn answer(reply: Option<VerbReply>, result: Result<(), VerbError>) {
    match reply {
        Some(reply) => {
            let _ = reply.send(result);
        }
        None => {
            if let Err(error) = result {
                tracing::debug!(%error, "verb refused");
            }
        }
    }
}

/// What the `ACK` script answered for a batch: one answer for every entry, or one each.
#[derive(Debug, PartialEq)]
enum AckAnswers {
    All(bool),
    Each(Vec<bool>),
}

impl AckAnswers {
    /// Reads the reply for a batch of `len` acks; any other shape is an error.
    fn of(reply: Value, len: usize) -> Result<AckAnswers, String> {
        let flag = |value: &Value| match value {
            Value::Int(0) => Ok(false),
            Value::Int(1) => Ok(true),
            other => Err(format!("ACK answered {other:?} for an entry, not 0 or 1")),
        };
        match reply {
            Value::Array(each) if each.len() == len => each
                .iter()
                .map(flag)
                .collect::<Result<_, _>>()
                .map(AckAnswers::Each),
            Value::Array(each) => Err(format!(
                "ACK answered {} entries for a batch of {len}",
                each.len()
            )),
            all => flag(&all).map(AckAnswers::All),
        }
    }

    fn recorded(&self, at: usize) -> bool {
        match self {
            AckAnswers::All(recorded) => *recorded,
            AckAnswers::Each(each) => each.get(at).copied().unwrap_or(false),
        }
    }
}

fn as_i64(value: &Value) -> i64 {
    match value {
        Value::Int(number) => *number,
        Value::BulkString(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(-1),
        _ => -1,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_answers_are_one_for_all_or_one_each_and_nothing_else() {
        let check = |reply: Value, len: usize, expect: Result<AckAnswers, ()>| {
            assert_eq!(
                AckAnswers::of(reply.clone(), len).map_err(|_| ()),
                expect,
                "{reply:?} for {len}"
            );
        };
        check(Value::Int(1), 3, Ok(AckAnswers::All(true)));
        check(Value::Int(0), 3, Ok(AckAnswers::All(false)));
        check(
            Value::Array(vec![Value::Int(1), Value::Int(0)]),
            2,
            Ok(AckAnswers::Each(vec![true, false])),
        );
        check(Value::Array(vec![Value::Int(1)]), 2, Err(()));
        check(Value::Array(vec![Value::Int(2), Value::Int(1)]), 2, Err(()));
        check(Value::Int(-1), 1, Err(()));
        check(Value::Nil, 1, Err(()));
        let each = AckAnswers::Each(vec![true, false]);
        assert!(each.recorded(0) && !each.recorded(1) && !each.recorded(2));
        assert!(AckAnswers::All(true).recorded(999));
    }
}
