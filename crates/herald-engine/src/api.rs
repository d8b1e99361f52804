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
use tokio::sync::{mpsc, watch};

/// An engine. Every method is safe to call concurrently.
pub trait Engine: Send + Sync + 'static {
    /// Stores a batch of validated events and feeds matching subscribers. The outcome of event
    /// `i` is at index `i`. A batch is refused whole if any event cannot be routed; once the
    /// call returns `Ok`, every stored event is durable under the stream's fsync policy.
    fn publish(
        &self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<Vec<PublishOutcome>, EngineError>> + Send;

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
}

/// What happened to one published event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishOutcome {
    pub id: EventId,
    /// `None` for an ephemeral subject: delivered live, never stored.
    pub stream: Option<String>,
    pub seq: Option<u64>,
    /// The stream had already stored an event with this id within its dedupe window; `seq` is
    /// the original's.
    pub duplicate: bool,
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

/// Why a live subscription ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The subscriber fell this many events behind and was dropped.
    SlowConsumer { buffer_events: usize },
    /// Reading history for the subscription failed.
    ReadFailed(String),
    /// The engine shut down.
    EngineStopped,
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
        loop {
            let reason = self.closed.borrow().clone();
            if let Some(reason) = reason {
                return self.events.try_recv().map_err(|_| reason);
            }
            tokio::select! {
                biased;
                event = self.events.recv() => return event.ok_or(Closed::EngineStopped),
                changed = self.closed.changed() => {
                    if changed.is_err() {
                        return self.events.try_recv().map_err(|_| Closed::EngineStopped);
                    }
                }
            }
        }
    }

    /// The next event if one is buffered now.
    pub fn try_recv(&mut self) -> Option<Arc<StoredEvent>> {
        self.events.try_recv().ok()
    }
}

/// Counters of one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamStats {
    pub name: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub events: u64,
    pub bytes: u64,
    /// Events stored since the engine started, and those refused as duplicates.
    pub published: u64,
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
    #[error("invalid engine configuration: {0}")]
    Config(String),
    #[error("the engine stopped")]
    Stopped,
}
