//! A consumer group of the embedded engine: one task that owns all of the group's state, so
//! that no lock guards it and every transition happens in one place.
//!
//! Each turn of the loop: fetch new events for members with room, hand out the deliveries,
//! journal what changed (one append), answer the verbs, then wait for a member's verb, a
//! control message, a stream wake-up or the next timer (ack timeouts and retry times, on
//! tokio's clock).
//!
//! Deliveries go out before their journal write, verb answers after it. A crash between the
//! two delivers the event again after the restart, uncounted (it was never acked, so
//! at-least-once holds); waiting for the write put the journal's fsync under `always` into
//! every delivery's latency (docs/PERFORMANCE.md). An ack is journaled after the delivery it
//! settles, since the task applies it at a later turn.
//!
//! Invariants: an event is in flight to at most one member; `member.in_flight` equals the
//! number of `in_flight` entries naming that member; every fetched, unfinished event is in
//! exactly one of `ready`, `scheduled` and `in_flight`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use herald_core::{Event, ParseContext, Pattern, StoredEvent};
use rand::Rng;
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::warn;

use super::in_flight::InFlightTable;
use super::journal::{DeadState, Journal, JournalRecord, PendingEntry, PendingState, Replayed};
use super::stream::{Stream, StreamCursor};
use crate::api::{
    Closed, DeadLetter, Delivery, GroupPolicy, GroupStats, MemberCommand, MemberRequest, StartAt,
    VerbError, VerbReply,
};
use crate::deadlines::Deadlines;

/// Events fetched from one stream per step.
const FETCH_EVENTS_MAX: usize = 256;

/// Events a group reads in one turn of its loop while looking for ones its pattern matches.
const SCAN_EVENTS_PER_TURN_MAX: usize = 16 * 1024;

/// Dead letters a group keeps; past it the oldest are dropped (and counted).
pub const DEAD_LETTERS_MAX: usize = 100_000;

pub(crate) type CommandSender = mpsc::Sender<MemberRequest>;

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
    AttachStream(Arc<Stream>),
    Stats(oneshot::Sender<GroupStats>),
    DeadLetters(usize, oneshot::Sender<Vec<DeadLetter>>),
    Redrive(oneshot::Sender<u64>),
    Purge(oneshot::Sender<u64>),
    /// Journal what is staged, close the journal, tell members why, end the task.
    Stop(Closed),
}

/// A fetched event that is not finished.
#[derive(Clone, Debug)]
struct Pending {
    event: Arc<StoredEvent>,
    /// Deliveries so far.
    attempts: u32,
    first_delivered_at: Option<OffsetDateTime>,
    last_error: Option<String>,
    /// Fetched and not yet journaled anywhere: the journaled position must not pass it.
    fresh: bool,
}

#[derive(Debug)]
struct InFlight {
    pending: Pending,
    member_id: u64,
    deadline: Instant,
}

struct Member {
    deliveries: mpsc::Sender<Delivery>,
    closed: watch::Sender<Option<Closed>>,
    max_in_flight: u32,
    in_flight: u32,
    /// Deliveries to it waiting in this turn's outbox: they will take that many of its
    /// channel's free slots.
    queued: usize,
}

impl Member {
    /// Whether it may be given another event (its channel's room is checked when filling it).
    fn has_room(&self) -> bool {
        self.in_flight < self.max_in_flight
    }
}

#[derive(Default)]
struct Counters {
    delivered: u64,
    acked: u64,
    nacked: u64,
    redelivered: u64,
    dead_lettered: u64,
}

pub(crate) struct GroupActor {
    name: String,
    pattern: Pattern,
    policy: GroupPolicy,
    start: StartAt,
    streams: Vec<Arc<Stream>>,
    /// Each stream's log reader, by the index in `streams`.
    cursors: Vec<StreamCursor>,
    positions: HashMap<String, u64>,
    /// The positions as last journaled.
    journaled_positions: HashMap<String, u64>,
    wake: Arc<Notify>,
    ready: VecDeque<Pending>,
    scheduled: BTreeMap<(Instant, u64), Pending>,
    /// By delivery id: every ack looks one up (a window of slots, see `InFlightTable`).
    in_flight: InFlightTable<InFlight>,
    /// The in-flight deliveries' ack deadlines, in expiry order (stale entries included).
    deadlines: Deadlines,
    members: BTreeMap<u64, Member>,
    /// Where the round-robin over members resumes.
    next_member: u64,
    dead: VecDeque<DeadLetter>,
    journal: Journal,
    next_delivery_id: u64,
    next_schedule_id: u64,
    counters: Counters,
    /// Deliveries made this turn, by member, sent before the journal write.
    outbox: Vec<(u64, Delivery)>,
    /// Answers to member verbs, sent once their journal records are written: an acked event
    /// is never delivered again, even after a crash.
    replies: Vec<(VerbReply, Result<(), VerbError>)>,
}

impl GroupActor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        pattern: Pattern,
        policy: GroupPolicy,
        start: StartAt,
        wake: Arc<Notify>,
        journal: Journal,
        replayed: Replayed,
        streams: Vec<Arc<Stream>>,
    ) -> GroupActor {
        let mut actor = GroupActor {
            name,
            pattern,
            policy,
            start,
            streams: Vec::new(),
            cursors: Vec::new(),
            positions: replayed.positions.clone(),
            journaled_positions: replayed.positions.clone(),
            wake,
            ready: VecDeque::new(),
            scheduled: BTreeMap::new(),
            in_flight: InFlightTable::default(),
            deadlines: Deadlines::default(),
            members: BTreeMap::new(),
            next_member: 0,
            dead: VecDeque::new(),
            journal,
            next_delivery_id: 1,
            next_schedule_id: 0,
            counters: Counters::default(),
            outbox: Vec::new(),
            replies: Vec::new(),
        };
        for stream in streams {
            actor.attach_stream(stream, actor.start);
        }
        actor.restore(replayed);
        actor
    }

    /// Brings back what the journal says was unfinished: in-flight events are ready again
    /// (their attempts kept), retries keep their due times, dead letters their events.
    fn restore(&mut self, replayed: Replayed) {
        let now_ms = unix_ms(OffsetDateTime::now_utc());
        // Ordered by stream, then seq: one pass over each stream's log.
        let pending: Vec<((String, u64), PendingState)> = replayed.pending.into_iter().collect();
        for run in pending.chunk_by(|(a, _), (b, _)| a.0 == b.0) {
            let stream_name = &run[0].0.0;
            let Some(stream) = self
                .streams
                .iter()
                .find(|stream| *stream.name == **stream_name)
                .cloned()
            else {
                warn!(group = %self.name, stream = %stream_name, events = run.len(), "pending events' stream is gone");
                continue;
            };
            let seqs: Vec<u64> = run.iter().map(|((_, seq), _)| *seq).collect();
            let events = match stream.read_each(&seqs) {
                Ok(events) => events,
                Err(error) => {
                    warn!(group = %self.name, stream = %stream_name, %error, "pending events unreadable");
                    continue;
                }
            };
            for (((_, seq), state), event) in run.iter().zip(events) {
                let Some(event) = event else {
                    warn!(group = %self.name, stream = %stream_name, seq, "pending event no longer in its stream");
                    continue;
                };
                let pending = Pending {
                    event,
                    attempts: state.attempts,
                    first_delivered_at: state.first_delivered_ms.map(from_unix_ms),
                    last_error: state.error.clone(),
                    fresh: false,
                };
                match state.due_ms {
                    Some(due_ms) if due_ms > now_ms => {
                        let delay = Duration::from_millis((due_ms - now_ms) as u64);
                        self.schedule(pending, delay);
                    }
                    _ => self.ready.push_back(pending),
                }
            }
        }
        for dead in replayed.dead {
            if let Some(letter) = self.dead_letter_from(dead) {
                self.dead.push_back(letter);
            }
        }
    }

    fn dead_letter_from(&self, dead: DeadState) -> Option<DeadLetter> {
        let context = ParseContext::new(OffsetDateTime::UNIX_EPOCH);
        let event = Event::from_json(dead.event.as_bytes(), &context).ok()?;
        Some(DeadLetter {
            group: self.name.clone(),
            event: Arc::new(StoredEvent::new(dead.stream, dead.seq, event)),
            attempts: dead.attempts,
            last_error: dead.error,
            first_delivered_at: from_unix_ms(dead.first_delivered_ms),
            dead_at: from_unix_ms(dead.dead_ms),
        })
    }

    /// Starts reading a stream: from where `start` says for the streams that exist when the
    /// group is created, from its first event for a stream created later (it began after the
    /// group, so all of it is new to the group).
    fn attach_stream(&mut self, stream: Arc<Stream>, start: StartAt) {
        if self.streams.iter().any(|known| known.name == stream.name) {
            return;
        }
        if !self.positions.contains_key(&*stream.name) {
            let start = match start {
                StartAt::Latest => stream.head(),
                StartAt::Earliest => 1,
                StartAt::Seq(seq) => seq.max(1),
                StartAt::Time(time) => stream.seq_at_time(time).unwrap_or_else(|_| stream.head()),
            };
            self.positions.insert(stream.name.to_string(), start);
        }
        stream.add_waker(&self.wake);
        self.streams.push(stream);
        self.cursors.push(StreamCursor::default());
    }

    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<MemberRequest>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) {
        loop {
            self.pump();
            self.stage_positions();
            self.send_outbox();
            let mut written = self.journal.flush().await;
            if written.is_ok() && self.journal.needs_snapshot() {
                written = self.snapshot().await;
            }
            if let Err(error) = written {
                warn!(group = %self.name, %error, "journal write failed; stopping the group");
                self.stop(Closed::ReadFailed(error.to_string()));
                return;
            }
            for (reply, result) in self.replies.drain(..) {
                let _ = reply.send(result);
            }
            let deadline = self.next_deadline();
            let wake = self.wake.clone();
            // New events matter only to a member that can take one: a group nobody reads (or
            // whose members all wait for acks) is not woken by every publish on its streams.
            // A member's arrival or ack comes as a command, which re-runs `pump`.
            let can_take = self.members.values().any(Member::has_room);
            tokio::select! {
                command = commands.recv() => {
                    let Some(request) = command else { return };
                    self.command(request);
                    while let Ok(request) = commands.try_recv() {
                        self.command(request);
                    }
                }
                control = control.recv() => {
                    // Verbs a member sent before leaving were queued first: apply them before a
                    // `Leave` (or a stop) so that its last acks are not taken for unacked.
                    while let Ok(request) = commands.try_recv() {
                        self.command(request);
                    }
                    match control {
                        Some(Control::Stop(reason)) => {
                            let _ = self.journal.flush().await;
                            self.stop(reason);
                            return;
                        }
                        None => {
                            let _ = self.journal.flush().await;
                            self.stop(Closed::EngineStopped);
                            return;
                        }
                        Some(control) => self.control(control),
                    }
                }
                () = wake.notified(), if can_take => {}
                () = sleep_until(deadline) => self.on_timers(Instant::now()),
            }
        }
    }

    /// Writes the whole state to the journal, which then drops everything before it.
    async fn snapshot(&mut self) -> Result<(), crate::api::EngineError> {
        let now = Instant::now();
        let now_ms = unix_ms(OffsetDateTime::now_utc());
        let entry = |pending: &Pending, due_ms: Option<i64>| PendingEntry {
            stream: pending.event.stream.to_string(),
            seq: pending.event.seq,
            attempts: pending.attempts,
            first_delivered_ms: pending.first_delivered_at.map(unix_ms),
            due_ms,
            error: pending.last_error.clone(),
        };
        let mut pending: Vec<PendingEntry> = self
            .ready
            .iter()
            .filter(|pending| !pending.fresh)
            .map(|pending| entry(pending, None))
            .collect();
        for ((due, _), waiting) in &self.scheduled {
            let delay_ms = due.saturating_duration_since(now).as_millis() as i64;
            pending.push(entry(waiting, Some(now_ms + delay_ms)));
        }
        pending.extend(
            self.in_flight
                .values()
                .map(|in_flight| entry(&in_flight.pending, None)),
        );
        let dead = self.dead.iter().map(dead_state).collect();
        let positions = self
            .journaled_positions
            .iter()
            .map(|(stream, seq)| (stream.clone(), *seq))
            .collect();
        let created = JournalRecord::created(&self.pattern, &self.policy);
        self.journal
            .snapshot(created, positions, pending, dead)
            .await
    }

    fn stop(&mut self, reason: Closed) {
        for member in self.members.values() {
            member.closed.send_replace(Some(reason.clone()));
        }
        self.journal.close();
    }

    /// Hands ready events, then newly fetched ones, to members with room: a run to each member
    /// in turn, round-robin.
    ///
    /// A member has room when it holds fewer than `max_in_flight` deliveries and its channel has
    /// a free slot not already promised to this turn's outbox (deliveries that timed out may
    /// still sit in it, unread). Only this task sends into a member's channel, so the slots
    /// counted here are still free when the outbox is sent after the journal write. (Reserving
    /// a permit per delivery did the same with two atomic operations and a sender clone each.)
    fn pump(&mut self) {
        let now = Instant::now();
        let now_utc = OffsetDateTime::now_utc();
        let mut full = Vec::new();
        while let Some(member_id) = self.member_with_room(&full) {
            let Some(member) = self.members.get(&member_id) else {
                return;
            };
            if member.deliveries.is_closed() {
                self.leave(member_id);
                continue;
            }
            let free = member
                .deliveries
                .capacity()
                .saturating_sub(member.queued)
                .min(member.max_in_flight.saturating_sub(member.in_flight) as usize);
            if free == 0 {
                full.push(member_id);
                continue;
            }
            // A run of deliveries to one member rather than one delivery per member in turn:
            // the member is looked up and checked once per run (the next turn starts with the
            // next member, so members still take turns).
            for _ in 0..free {
                if self.ready.is_empty() {
                    self.fetch(self.room());
                }
                let Some(pending) = self.ready.pop_front() else {
                    return;
                };
                self.deliver(member_id, pending, now, now_utc);
            }
        }
    }

    fn room(&self) -> usize {
        self.members
            .values()
            .map(|member| member.max_in_flight.saturating_sub(member.in_flight) as usize)
            .sum()
    }

    fn member_with_room(&mut self, full: &[u64]) -> Option<u64> {
        let after = self
            .members
            .range(self.next_member..)
            .chain(self.members.range(..self.next_member))
            .find(|(id, member)| member.has_room() && !full.contains(id))
            .map(|(&id, _)| id)?;
        self.next_member = after + 1;
        Some(after)
    }

    /// Reads up to `room` new matching events from the streams into `ready`, reading past
    /// events the pattern does not match. Past [`SCAN_EVENTS_PER_TURN_MAX`] events read in one
    /// turn it stops and wakes its own task, so that a sparse pattern over a long stream
    /// neither stalls (no wake-up would come for events already stored) nor holds up verbs.
    fn fetch(&mut self, room: usize) {
        let mut scanned = 0;
        for (stream, cursor) in self.streams.iter().zip(&mut self.cursors) {
            // Only matching events count against `room`; once a batch matched nothing, read
            // whole batches.
            let mut limit = FETCH_EVENTS_MAX.min(room.max(1));
            loop {
                if self.ready.len() >= room {
                    return;
                }
                if scanned >= SCAN_EVENTS_PER_TURN_MAX {
                    self.wake.notify_one();
                    return;
                }
                let position = self.positions.get(&*stream.name).copied().unwrap_or(1);
                let events = match stream.fetch(position, limit, cursor) {
                    Ok(events) => events,
                    Err(error) => {
                        warn!(group = %self.name, stream = %stream.name, %error, "fetch failed");
                        break;
                    }
                };
                let Some(last) = events.last() else { break };
                let next_seq = last.seq + 1;
                scanned += events.len();
                let ready_before = self.ready.len();
                for event in events {
                    if self.pattern.matches(event.event.event_type()) {
                        self.ready.push_back(Pending {
                            event,
                            attempts: 0,
                            first_delivered_at: None,
                            last_error: None,
                            fresh: true,
                        });
                    }
                }
                self.positions.insert(stream.name.to_string(), next_seq);
                if self.ready.len() == ready_before {
                    limit = FETCH_EVENTS_MAX;
                }
            }
        }
    }

    /// Journals each stream's position, held back to the first fetched event not yet journaled
    /// as delivered, so that a crash cannot skip an event that sat in `ready`.
    fn stage_positions(&mut self) {
        for (stream, &position) in &self.positions {
            let safe = self
                .ready
                .iter()
                .filter(|pending| pending.fresh && *pending.event.stream == **stream)
                .map(|pending| pending.event.seq)
                .min()
                .unwrap_or(position);
            if self.journaled_positions.get(stream) != Some(&safe) {
                self.journaled_positions.insert(stream.clone(), safe);
                self.journal.stage(JournalRecord::Position {
                    stream: stream.clone(),
                    next_seq: safe,
                });
            }
        }
    }

    /// Makes one delivery; `now` and `now_utc` are the turn's (one clock read per turn, and
    /// deliveries of one turn share a first-delivery time, so they journal as one range).
    fn deliver(
        &mut self,
        member_id: u64,
        mut pending: Pending,
        now: Instant,
        now_utc: OffsetDateTime,
    ) {
        let Some(member) = self.members.get_mut(&member_id) else {
            self.ready.push_front(pending);
            return;
        };
        pending.fresh = false;
        pending.attempts += 1;
        let first_delivered_at = *pending.first_delivered_at.get_or_insert(now_utc);
        if pending.attempts > 1 {
            self.counters.redelivered += 1;
        }
        self.counters.delivered += 1;
        member.in_flight += 1;
        member.queued += 1;
        let delivery_id = self.next_delivery_id;
        self.next_delivery_id += 1;
        let deadline = self
            .deadlines
            .push(now + self.policy.ack_timeout, delivery_id);
        self.journal.stage_delivered(
            &pending.event.stream,
            pending.event.seq,
            pending.attempts,
            unix_ms(first_delivered_at),
        );
        self.outbox.push((
            member_id,
            Delivery {
                delivery_id,
                attempt: pending.attempts,
                event: pending.event.clone(),
            },
        ));
        self.in_flight.insert(
            delivery_id,
            InFlight {
                pending,
                member_id,
                deadline,
            },
        );
    }

    /// Sends the deliveries journaled this turn into the slots `pump` counted. A send fails
    /// only when the member went away meanwhile; its leave (or the closed channel, seen at the
    /// next `pump`) puts its deliveries back in `ready`.
    fn send_outbox(&mut self) {
        for (member_id, delivery) in self.outbox.drain(..) {
            if let Some(member) = self.members.get(&member_id) {
                let _ = member.deliveries.try_send(delivery);
            }
        }
        for member in self.members.values_mut() {
            member.queued = 0;
        }
    }

    /// Applies a verb; its answer, if one is wanted, waits for the journal write.
    fn command(&mut self, request: MemberRequest) {
        let result = self.handle(request.member_id, request.command);
        match request.reply {
            Some(reply) => self.replies.push((reply, result)),
            None => {
                if let Err(error) = result {
                    tracing::debug!(group = %self.name, %error, "verb refused");
                }
            }
        }
    }

    fn handle(&mut self, member_id: u64, command: MemberCommand) -> Result<(), VerbError> {
        match command {
            MemberCommand::Ack { delivery_id } => {
                let in_flight = self.take_in_flight(member_id, delivery_id)?;
                self.counters.acked += 1;
                self.journal
                    .stage_acked(&in_flight.pending.event.stream, in_flight.pending.event.seq);
            }
            MemberCommand::Nack {
                delivery_id,
                delay,
                reason,
            } => {
                let mut in_flight = self.take_in_flight(member_id, delivery_id)?;
                self.counters.nacked += 1;
                in_flight.pending.last_error = reason.or(in_flight.pending.last_error);
                self.retry_or_bury(in_flight.pending, delay);
            }
            MemberCommand::Extend { delivery_id } => {
                let in_flight = self
                    .in_flight
                    .get_mut(delivery_id)
                    .filter(|in_flight| in_flight.member_id == member_id)
                    .ok_or(VerbError::UnknownDelivery(delivery_id))?;
                // The old deadline's entry is left stale (see `Deadlines`).
                in_flight.deadline = self
                    .deadlines
                    .push(Instant::now() + self.policy.ack_timeout, delivery_id);
            }
            MemberCommand::Reject {
                delivery_id,
                reason,
            } => {
                let mut in_flight = self.take_in_flight(member_id, delivery_id)?;
                in_flight.pending.last_error = reason.or(in_flight.pending.last_error);
                self.bury(in_flight.pending);
            }
        }
        Ok(())
    }

    /// Takes a delivery out of flight; `member_id` must be the member it was made to.
    fn take_in_flight(&mut self, member_id: u64, delivery_id: u64) -> Result<InFlight, VerbError> {
        let in_flight = self
            .in_flight
            .remove_if(delivery_id, |in_flight| in_flight.member_id == member_id)
            .ok_or(VerbError::UnknownDelivery(delivery_id))?;
        if let Some(member) = self.members.get_mut(&in_flight.member_id) {
            member.in_flight -= 1;
        }
        Ok(in_flight)
    }

    /// After a failed attempt: a retry after the backoff (or `delay`), or the dead-letter queue
    /// once `max_retries` retries are spent.
    fn retry_or_bury(&mut self, mut pending: Pending, delay: Option<Duration>) {
        // Kept until its retry time (or as a dead letter): not sharing a read's whole buffer.
        pending.event = Arc::new(pending.event.detached());
        if pending.attempts > self.policy.max_retries {
            self.bury(pending);
            return;
        }
        let delay = delay.unwrap_or_else(|| {
            self.policy
                .backoff
                .delay(pending.attempts, rand::rng().random::<f64>())
        });
        let due = OffsetDateTime::now_utc() + delay;
        self.journal.stage(JournalRecord::Retry {
            stream: pending.event.stream.to_string(),
            seq: pending.event.seq,
            due_ms: unix_ms(due),
            error: pending.last_error.clone(),
        });
        self.schedule(pending, delay);
    }

    fn schedule(&mut self, pending: Pending, delay: Duration) {
        self.next_schedule_id += 1;
        self.scheduled
            .insert((Instant::now() + delay, self.next_schedule_id), pending);
    }

    fn bury(&mut self, pending: Pending) {
        let now = OffsetDateTime::now_utc();
        let first_delivered_at = pending.first_delivered_at.unwrap_or(now);
        self.counters.dead_lettered += 1;
        let letter = DeadLetter {
            group: self.name.clone(),
            // Kept for long: not sharing a read's whole buffer.
            event: Arc::new(pending.event.detached()),
            attempts: pending.attempts,
            last_error: pending.last_error,
            first_delivered_at,
            dead_at: now,
        };
        self.journal.stage(JournalRecord::Dead(dead_state(&letter)));
        self.dead.push_back(letter);
        while self.dead.len() > DEAD_LETTERS_MAX {
            if let Some(dropped) = self.dead.pop_front() {
                warn!(group = %self.name, stream = %dropped.event.stream, seq = dropped.event.seq,
                    "dead-letter queue full; dropping its oldest entry");
            }
        }
    }

    fn on_timers(&mut self, now: Instant) {
        while let Some((deadline, delivery_id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            // A stale entry (settled, or extended since) finds no delivery with its deadline.
            let owner = self
                .in_flight
                .get(delivery_id)
                .filter(|in_flight| in_flight.deadline == deadline)
                .map(|in_flight| in_flight.member_id);
            if let Some(Ok(mut in_flight)) =
                owner.map(|owner| self.take_in_flight(owner, delivery_id))
            {
                in_flight.pending.last_error = Some("ack timeout".into());
                self.retry_or_bury(in_flight.pending, None);
            }
        }
        while let Some(entry) = self.scheduled.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let pending = entry.remove();
            self.ready.push_front(pending);
        }
    }

    /// The next ack deadline or retry time; drops the stale deadlines in front first, so that
    /// the task does not wake for a delivery already settled.
    fn next_deadline(&mut self) -> Option<Instant> {
        let in_flight = &self.in_flight;
        self.deadlines
            .tidy(in_flight.len(), |delivery_id, deadline| {
                in_flight
                    .get(delivery_id)
                    .is_some_and(|in_flight| in_flight.deadline == deadline)
            });
        let ack = self.deadlines.first().map(|(deadline, _)| deadline);
        let retry = self.scheduled.keys().next().map(|(due, _)| *due);
        match (ack, retry) {
            (Some(ack), Some(retry)) => Some(ack.min(retry)),
            (deadline, None) | (None, deadline) => deadline,
        }
    }

    /// A member left: its deliveries go to the front of the queue at once (each counts as an
    /// attempt), or to the dead-letter queue when that was the last allowed.
    fn leave(&mut self, member_id: u64) {
        if self.members.remove(&member_id).is_none() {
            return;
        }
        let mut orphans: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, in_flight)| in_flight.member_id == member_id)
            .map(|(delivery_id, _)| delivery_id)
            .collect();
        orphans.sort_unstable_by(|left, right| right.cmp(left));
        for delivery_id in orphans {
            if let Some(in_flight) = self.in_flight.remove(delivery_id) {
                let mut pending = in_flight.pending;
                pending.last_error = Some("member left before acking".into());
                if pending.attempts > self.policy.max_retries {
                    self.bury(pending);
                } else {
                    self.ready.push_front(pending);
                }
            }
        }
    }

    fn control(&mut self, control: Control) {
        match control {
            Control::Join {
                member_id,
                max_in_flight,
                deliveries,
                closed,
            } => {
                self.members.insert(
                    member_id,
                    Member {
                        deliveries,
                        closed,
                        max_in_flight: max_in_flight.max(1),
                        in_flight: 0,
                        queued: 0,
                    },
                );
            }
            Control::Leave { member_id } => self.leave(member_id),
            Control::AttachStream(stream) => self.attach_stream(stream, StartAt::Earliest),
            Control::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            Control::DeadLetters(limit, reply) => {
                let _ = reply.send(self.dead.iter().take(limit).cloned().collect());
            }
            Control::Redrive(reply) => {
                let count = self.dead.len() as u64;
                for letter in self.dead.drain(..) {
                    self.ready.push_back(Pending {
                        event: letter.event,
                        attempts: 0,
                        first_delivered_at: None,
                        last_error: None,
                        fresh: false,
                    });
                }
                if count > 0 {
                    self.journal.stage(JournalRecord::Redriven);
                }
                let _ = reply.send(count);
            }
            Control::Purge(reply) => {
                let count = self.dead.len() as u64;
                self.dead.clear();
                if count > 0 {
                    self.journal.stage(JournalRecord::Purged);
                }
                let _ = reply.send(count);
            }
            Control::Stop(_) => {}
        }
    }

    fn stats(&self) -> GroupStats {
        let lag = self
            .streams
            .iter()
            .map(|stream| {
                let position = self.positions.get(&*stream.name).copied().unwrap_or(1);
                stream.head().saturating_sub(position)
            })
            .sum();
        GroupStats {
            name: self.name.clone(),
            pattern: self.pattern.to_string(),
            members: self.members.len(),
            lag,
            in_flight: self.in_flight.len() as u64,
            scheduled: self.scheduled.len() as u64,
            dead_letters: self.dead.len() as u64,
            delivered: self.counters.delivered,
            acked: self.counters.acked,
            nacked: self.counters.nacked,
            redelivered: self.counters.redelivered,
            dead_lettered: self.counters.dead_lettered,
        }
    }
}

/// A dead letter as the journal keeps it, the event included.
fn dead_state(letter: &DeadLetter) -> DeadState {
    DeadState {
        stream: letter.event.stream.to_string(),
        seq: letter.event.seq,
        attempts: letter.attempts,
        error: letter.last_error.clone(),
        first_delivered_ms: unix_ms(letter.first_delivered_at),
        dead_ms: unix_ms(letter.dead_at),
        event: String::from_utf8_lossy(letter.event.event_json()).into_owned(),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn unix_ms(time: OffsetDateTime) -> i64 {
    (time.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_unix_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
