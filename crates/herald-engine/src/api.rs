//! The engine interface: what the server (and the conformance suite) may ask of any engine —
//! the embedded one on Herald's log today, Redis Streams and NATS JetStream later.
//!
//! Its shape follows the primitives those engines share: an append that returns a position
//! (XADD, JetStream publish ack), reads from a position or a time (XRANGE, ordered consumers with
//! a start sequence or time), and live delivery. Consumer groups (XREADGROUP/XACK/XAUTOCLAIM,
//! pull consumers with AckWait/BackOff/Nak) are the next part of this interface.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use herald_core::{Event, EventId, Pattern, StoredEvent};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};

/// An engine. Every method is safe to call concurrently.
pub trait Engine: Send + Sync + 'static {
    /// Stores a batch of validated events and feeds matching subscribers. The outcome of event
    /// `i` is at index `i`. A batch is refused whole if any event cannot be routed; once the
    /// call returns `Ok`, every stored event is durable under the stream's fsync policy.
    ///
    /// Publish dedupe: an event whose id the stream stored within its dedupe window is not
    /// stored again ([`PublishOutcome::duplicate`]), also when repeated within the batch or
    /// published concurrently. Every stored id is recorded; only ids the publisher chose
    /// ([`herald_core::IdOrigin::Publisher`]) are looked up, since a generated one
    /// ([`herald_core::IdOrigin::Generated`]) is new by construction. An engine may store a
    /// generated id's event under an id of its own making (the Redis engine does, to record a
    /// chunk once rather than each id): the outcome carries the id stored. Within a stream,
    /// seqs follow the batch's order.
    ///
    /// The future owns what it needs (`'static`): a caller can run it as a task of its own, so
    /// that a call in progress never waits on its caller being polled.
    fn publish(
        &self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<Vec<PublishOutcome>, EngineError>> + Send + 'static;

    /// How many [`Engine::publish`] calls one caller may keep in flight and still have each
    /// stream's events stored in the order the calls were made (the method called, whether or
    /// not its future has run yet). A caller whose events must keep their order (a `/v1/ws`
    /// connection's frames) makes its next call only while fewer are in flight. An engine that
    /// waits on a server between calls gains most from a second: the server is given the next
    /// call while the last one's replies come back.
    fn ordered_publishes_in_flight(&self) -> usize {
        1
    }

    /// A live subscription: at-most-once, every matching event from `start` on, in order within
    /// each stream. A subscriber that falls `live_buffer_events` behind is dropped, with
    /// [`Closed::SlowConsumer`], rather than slowing publishers or growing memory.
    fn subscribe(
        &self,
        pattern: Pattern,
        start: StartAt,
    ) -> impl Future<Output = Result<LiveSubscription, EngineError>> + Send;

    /// Up to `limit` events of one stream from `from_seq` (replay).
    fn read_stream(
        &self,
        stream: &str,
        from_seq: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Arc<StoredEvent>>, EngineError>> + Send;

    /// Counters of every stream.
    fn streams(&self) -> impl Future<Output = Vec<StreamStats>> + Send;

    /// Joins a consumer group as a new member, creating the group if it does not exist.
    /// `max_in_flight` overrides the policy's for this member.
    fn join_group(
        &self,
        spec: GroupSpec,
        max_in_flight: Option<u32>,
    ) -> impl Future<Output = Result<GroupMember, EngineError>> + Send;

    /// Creates a group without joining it (an API `PUT`); an existing group must have the same
    /// pattern.
    fn create_group(&self, spec: GroupSpec)
    -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Deletes a group with its state and dead letters; its members are told why.
    fn delete_group(&self, name: &str) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Counters of every group.
    fn groups(&self) -> impl Future<Output = Vec<GroupStats>> + Send;

    /// Up to `limit` of a group's dead letters, oldest first.
    fn dead_letters(
        &self,
        group: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, EngineError>> + Send;

    /// Puts every dead letter back into the group, attempts reset; returns how many.
    fn redrive(&self, group: &str) -> impl Future<Output = Result<u64, EngineError>> + Send;

    /// Drops every dead letter; returns how many.
    fn purge_dead_letters(
        &self,
        group: &str,
    ) -> impl Future<Output = Result<u64, EngineError>> + Send;
}

/// What happened to one published event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishOutcome {
    pub id: EventId,
    /// `None` for an ephemeral subject: delivered live, never stored. Shared with the stream:
    /// one per event was an allocation and a free.
    pub stream: Option<std::sync::Arc<str>>,
    pub seq: Option<u64>,
    /// The stream had already stored an event with this id within its dedupe window (an id the
    /// publisher chose: generated ids are never duplicates); `seq` is the original's.
    pub duplicate: bool,
}

impl PublishOutcome {
    /// The outcome of an event of an ephemeral subject: delivered live, never stored.
    pub fn ephemeral(id: EventId) -> PublishOutcome {
        PublishOutcome {
            id,
            stream: None,
            seq: None,
            duplicate: false,
        }
    }
}

/// Where a subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// Only events published after the subscription is made.
    Latest,
    /// Every retained event.
    Earliest,
    /// From this seq in every matching stream (seqs are per stream).
    Seq(u64),
    /// From the first event stored at or after this time.
    Time(OffsetDateTime),
}

/// Why a live subscription or a group membership ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The subscriber fell this many events behind and was dropped.
    SlowConsumer { buffer_events: usize },
    /// Reading history (or writing a group's journal) failed.
    ReadFailed(String),
    /// The engine shut down.
    EngineStopped,
    /// The consumer group was deleted.
    GroupDeleted,
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Closed::SlowConsumer { buffer_events } => write!(
                f,
                "dropped as a slow consumer: {buffer_events} events were waiting for it"
            ),
            Closed::ReadFailed(reason) => write!(f, "reading history failed: {reason}"),
            Closed::EngineStopped => write!(f, "the engine stopped"),
            Closed::GroupDeleted => write!(f, "the group was deleted"),
        }
    }
}

/// The receiving end of a live subscription. Dropping it unsubscribes.
pub struct LiveSubscription {
    events: mpsc::Receiver<Arc<StoredEvent>>,
    closed: watch::Receiver<Option<Closed>>,
    _unsubscribe: Box<dyn Send + Sync>,
}

impl fmt::Debug for LiveSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveSubscription")
            .field("closed", &*self.closed.borrow())
            .finish_non_exhaustive()
    }
}

impl LiveSubscription {
    /// For engines: `unsubscribe` is dropped with the subscription (a guard whose `Drop`
    /// unregisters it).
    pub fn new(
        events: mpsc::Receiver<Arc<StoredEvent>>,
        closed: watch::Receiver<Option<Closed>>,
        unsubscribe: Box<dyn Send + Sync>,
    ) -> LiveSubscription {
        LiveSubscription {
            events,
            closed,
            _unsubscribe: unsubscribe,
        }
    }

    /// The next event, or why the subscription ended. Events already buffered are delivered
    /// before the reason.
    pub async fn recv(&mut self) -> Result<Arc<StoredEvent>, Closed> {
        recv_until_closed(&mut self.events, &mut self.closed).await
    }

    /// The next event if one is buffered now.
    pub fn try_recv(&mut self) -> Option<Arc<StoredEvent>> {
        self.events.try_recv().ok()
    }
}

/// The next item, or why the channel's producer closed it. Items already buffered come first.
async fn recv_until_closed<T>(
    items: &mut mpsc::Receiver<T>,
    closed: &mut watch::Receiver<Option<Closed>>,
) -> Result<T, Closed> {
    loop {
        let reason = closed.borrow().clone();
        if let Some(reason) = reason {
            return items.try_recv().map_err(|_| reason);
        }
        tokio::select! {
            biased;
            // A producer that ends says why before dropping its sender; the reason may land
            // just after the wake-up that found the channel closed.
            item = items.recv() => {
                return item.ok_or_else(|| closed.borrow().clone().unwrap_or(Closed::EngineStopped));
            }
            changed = closed.changed() => {
                if changed.is_err() {
                    return items.try_recv().map_err(|_| Closed::EngineStopped);
                }
            }
        }
    }
}

/// Counters of one stream.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamStats {
    pub name: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub events: u64,
    pub bytes: u64,
    /// Events stored since the engine started, and those refused as duplicates.
    pub published: u64,
    /// Events stored per second, averaged over the last ten seconds.
    pub published_per_second: f64,
    pub duplicates: u64,
    pub live_subscribers: usize,
    /// Live subscribers dropped for being slow since the engine started.
    pub slow_consumers_dropped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("empty publish batch")]
    EmptyBatch,
    #[error("no stream named {0:?}")]
    UnknownStream(String),
    #[error("event {index}: {reason}")]
    Unroutable { index: usize, reason: String },
    #[error("storage error on stream {stream:?}: {source}")]
    Storage {
        stream: String,
        #[source]
        source: herald_log::LogError,
    },
    #[error("stored event {seq} of stream {stream:?} does not decode: {reason}")]
    Corrupt {
        stream: String,
        seq: u64,
        reason: String,
    },
    #[error("no group named {0:?}")]
    UnknownGroup(String),
    #[error(
        "group {group:?} exists with pattern {existing:?}; it cannot be joined with {requested:?}"
    )]
    GroupConflict {
        group: String,
        existing: String,
        requested: String,
    },
    #[error("invalid engine configuration: {0}")]
    Config(String),
    /// The engine's backend (Redis) failed or could not be reached.
    #[error("{operation} failed: {reason}")]
    Backend {
        operation: &'static str,
        reason: String,
    },
    #[error("the engine stopped")]
    Stopped,
}

/// A consumer group as a subscriber asks for it: created on first join, after which its pattern
/// is fixed (joining with another pattern is [`EngineError::GroupConflict`]).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSpec {
    pub name: String,
    pub pattern: Pattern,
    pub policy: GroupPolicy,
    /// Where a new group starts; ignored when the group exists.
    pub start: StartAt,
}

/// How a group delivers and retries. Defaults are PRODUCT.md §4's (from seed 001).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupPolicy {
    /// A delivery not acked, nacked or extended within this is retried.
    pub ack_timeout: std::time::Duration,
    /// Retries after the first delivery; so at most `max_retries + 1` deliveries.
    pub max_retries: u32,
    pub backoff: Backoff,
    /// Deliveries a member holds unacked at most (its prefetch).
    pub max_in_flight: u32,
}

impl Default for GroupPolicy {
    fn default() -> GroupPolicy {
        GroupPolicy {
            ack_timeout: std::time::Duration::from_secs(30),
            max_retries: 3,
            backoff: Backoff::default(),
            max_in_flight: 100,
        }
    }
}

/// Exponential backoff with jitter: retry `n` (from 1) waits `initial × factor^(n-1)`, capped at
/// `max`, then multiplied by a random factor in `[1 - jitter, 1 + jitter]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub initial: std::time::Duration,
    pub factor: f64,
    pub max: std::time::Duration,
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: std::time::Duration::from_secs(1),
            factor: 2.0,
            max: std::time::Duration::from_secs(60),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before retry `retry` (1 for the first retry) without jitter.
    pub fn base_delay(&self, retry: u32) -> std::time::Duration {
        let exponent = retry.saturating_sub(1).min(64) as i32;
        let seconds = self.initial.as_secs_f64() * self.factor.powi(exponent);
        std::time::Duration::from_secs_f64(seconds.min(self.max.as_secs_f64()))
    }

    /// The delay before retry `retry`, with `unit` drawn uniformly from `[0, 1)` for jitter.
    pub fn delay(&self, retry: u32, unit: f64) -> std::time::Duration {
        let spread = 1.0 + self.jitter * (2.0 * unit - 1.0);
        self.base_delay(retry).mul_f64(spread.max(0.0))
    }

    /// The range `delay(retry, _)` falls in.
    pub fn bounds(&self, retry: u32) -> (std::time::Duration, std::time::Duration) {
        let base = self.base_delay(retry);
        (
            base.mul_f64((1.0 - self.jitter).max(0.0)),
            base.mul_f64(1.0 + self.jitter),
        )
    }
}

/// One event handed to one member of a group.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Names this delivery in `ack`, `nack`, `extend` and `reject`; never reused by the group.
    pub delivery_id: u64,
    /// 1 for the first delivery of the event to this group, 2 for the first retry, …
    pub attempt: u32,
    pub event: Arc<StoredEvent>,
}

/// An event a group gave up on, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub group: String,
    pub event: Arc<StoredEvent>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub first_delivered_at: OffsetDateTime,
    pub dead_at: OffsetDateTime,
}

/// Counters of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStats {
    pub name: String,
    pub pattern: String,
    pub members: usize,
    /// Stored events matching the pattern that the group has not yet fetched.
    pub lag: u64,
    pub in_flight: u64,
    /// Waiting for their retry time.
    pub scheduled: u64,
    pub dead_letters: u64,
    /// Since the engine started.
    pub delivered: u64,
    pub acked: u64,
    pub nacked: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
}

/// What a member asks of its group.
#[derive(Debug)]
pub enum MemberCommand {
    Ack {
        delivery_id: u64,
    },
    Nack {
        delivery_id: u64,
        delay: Option<std::time::Duration>,
        reason: Option<String>,
    },
    Extend {
        delivery_id: u64,
    },
    Reject {
        delivery_id: u64,
        reason: Option<String>,
    },
}

/// Where the answer to a member's verb goes.
pub type VerbReply = oneshot::Sender<Result<(), VerbError>>;

/// A verb on its way to a group: who asks, what, and where the answer goes (if anywhere).
#[derive(Debug)]
pub struct MemberRequest {
    /// A member may act only on deliveries made to it.
    pub member_id: u64,
    pub command: MemberCommand,
    pub reply: Option<VerbReply>,
}

/// Why a member's verb was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerbError {
    #[error(
        "delivery {0} is not in flight to this member (already acked, nacked, timed out, \
         redelivered, or made to another member)"
    )]
    UnknownDelivery(u64),
    #[error("the group is gone")]
    GroupGone,
    /// The engine could not record the verb (its backend failed); the delivery stays in
    /// flight and times out as if the verb had not been sent.
    #[error("the verb could not be recorded: {0}")]
    Unavailable(String),
}

/// The receiving end of a group membership. Dropping it leaves the group; the member's
/// unacked deliveries are redelivered to other members at once.
pub struct GroupMember {
    deliveries: mpsc::Receiver<Delivery>,
    verbs: MemberVerbs,
    closed: watch::Receiver<Option<Closed>>,
    _leave: Box<dyn Send + Sync>,
}

impl fmt::Debug for GroupMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupMember").finish_non_exhaustive()
    }
}

impl GroupMember {
    /// For engines: `leave` is dropped with the member (a guard whose `Drop` removes it).
    pub fn new(
        member_id: u64,
        deliveries: mpsc::Receiver<Delivery>,
        commands: mpsc::Sender<MemberRequest>,
        closed: watch::Receiver<Option<Closed>>,
        leave: Box<dyn Send + Sync>,
    ) -> GroupMember {
        GroupMember {
            deliveries,
            verbs: MemberVerbs {
                member_id,
                commands,
            },
            closed,
            _leave: leave,
        }
    }

    /// The next delivery, or why the membership ended.
    pub async fn recv(&mut self) -> Result<Delivery, Closed> {
        recv_until_closed(&mut self.deliveries, &mut self.closed).await
    }

    /// Waits for the next delivery, then takes the ones already waiting behind it, `limit` in
    /// all, into `batch`: a forwarder woken once per burst instead of once per delivery.
    pub async fn recv_batch(
        &mut self,
        batch: &mut Vec<Delivery>,
        limit: usize,
    ) -> Result<(), Closed> {
        batch.push(self.recv().await?);
        while batch.len() < limit {
            match self.deliveries.try_recv() {
                Ok(delivery) => batch.push(delivery),
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// The verbs of this member, apart from its deliveries: one task can receive while others
    /// ack. Verbs sent after the member is dropped are refused as unknown deliveries.
    pub fn verbs(&self) -> MemberVerbs {
        self.verbs.clone()
    }

    /// See [`MemberVerbs::ack`].
    pub async fn ack(&self, delivery_id: u64) -> Result<(), VerbError> {
        self.verbs.ack(delivery_id).await
    }

    /// See [`MemberVerbs::ack_sync`].
    pub async fn ack_sync(&self, delivery_id: u64) -> Result<(), VerbError> {
        self.verbs.ack_sync(delivery_id).await
    }

    /// See [`MemberVerbs::nack`].
    pub async fn nack(
        &self,
        delivery_id: u64,
        delay: Option<std::time::Duration>,
        reason: Option<String>,
    ) -> Result<(), VerbError> {
        self.verbs.nack(delivery_id, delay, reason).await
    }

    /// See [`MemberVerbs::extend`].
    pub async fn extend(&self, delivery_id: u64) -> Result<(), VerbError> {
        self.verbs.extend(delivery_id).await
    }

    /// See [`MemberVerbs::reject`].
    pub async fn reject(&self, delivery_id: u64, reason: Option<String>) -> Result<(), VerbError> {
        self.verbs.reject(delivery_id, reason).await
    }
}

/// What a member may ask of its group about its own deliveries.
#[derive(Clone, Debug)]
pub struct MemberVerbs {
    member_id: u64,
    commands: mpsc::Sender<MemberRequest>,
}

impl MemberVerbs {
    async fn command(&self, command: MemberCommand) -> Result<(), VerbError> {
        let (reply, answer) = oneshot::channel();
        let request = MemberRequest {
            member_id: self.member_id,
            command,
            reply: Some(reply),
        };
        self.commands
            .send(request)
            .await
            .map_err(|_| VerbError::GroupGone)?;
        answer.await.map_err(|_| VerbError::GroupGone)?
    }

    /// Acks without waiting for the group to record it (like a NATS ack or a Redis XACK):
    /// returns once the group has the ack queued. An ack lost to a crash before it was
    /// recorded means one more delivery, never a lost event. Use [`MemberVerbs::ack_sync`] to
    /// know it was recorded.
    pub async fn ack(&self, delivery_id: u64) -> Result<(), VerbError> {
        let request = MemberRequest {
            member_id: self.member_id,
            command: MemberCommand::Ack { delivery_id },
            reply: None,
        };
        self.commands
            .send(request)
            .await
            .map_err(|_| VerbError::GroupGone)
    }

    /// [`MemberVerbs::ack`] for each of `delivery_ids`, in order: room in the group's queue is
    /// awaited once per queue-full of acks rather than once per ack.
    pub async fn ack_many(&self, delivery_ids: &[u64]) -> Result<(), VerbError> {
        for chunk in delivery_ids.chunks(self.commands.max_capacity()) {
            let permits = self
                .commands
                .reserve_many(chunk.len())
                .await
                .map_err(|_| VerbError::GroupGone)?;
            for (permit, &delivery_id) in permits.zip(chunk) {
                permit.send(MemberRequest {
                    member_id: self.member_id,
                    command: MemberCommand::Ack { delivery_id },
                    reply: None,
                });
            }
        }
        Ok(())
    }

    /// Acks and waits until the ack is recorded (journaled): after a crash the event is not
    /// delivered again. Reports an unknown delivery.
    pub async fn ack_sync(&self, delivery_id: u64) -> Result<(), VerbError> {
        self.command(MemberCommand::Ack { delivery_id }).await
    }

    /// Redelivers after `delay`, or after the group's backoff when `None`.
    pub async fn nack(
        &self,
        delivery_id: u64,
        delay: Option<std::time::Duration>,
        reason: Option<String>,
    ) -> Result<(), VerbError> {
        self.command(MemberCommand::Nack {
            delivery_id,
            delay,
            reason,
        })
        .await
    }

    /// Still working on it: restarts the ack timer.
    pub async fn extend(&self, delivery_id: u64) -> Result<(), VerbError> {
        self.command(MemberCommand::Extend { delivery_id }).await
    }

    /// Dead-letters the event now, without retries.
    pub async fn reject(&self, delivery_id: u64, reason: Option<String>) -> Result<(), VerbError> {
        self.command(MemberCommand::Reject {
            delivery_id,
            reason,
        })
        .await
    }
}
