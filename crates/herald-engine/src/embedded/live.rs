//! Live subscribers of the embedded engine: a bounded channel each, and the rule that a full
//! channel drops the subscriber instead of blocking the publisher.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use herald_core::{Pattern, StoredEvent};
use tokio::sync::{mpsc, watch};

use crate::api::{Closed, StartAt};

#[derive(Debug)]
pub(crate) struct Subscriber {
    pub id: u64,
    pub pattern: Pattern,
    pub start: StartAt,
    pub buffer_events: usize,
    sender: mpsc::Sender<Arc<StoredEvent>>,
    closed: watch::Sender<Option<Closed>>,
    dead: AtomicBool,
}

/// What offering an event to a live subscriber did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    Delivered,
    /// The subscriber was too far behind and is now closed.
    DroppedSlow,
    /// The subscriber is gone (closed earlier, or its receiver dropped).
    Gone,
}

impl Subscriber {
    pub fn new(
        id: u64,
        pattern: Pattern,
        start: StartAt,
        buffer_events: usize,
    ) -> (
        Arc<Subscriber>,
        mpsc::Receiver<Arc<StoredEvent>>,
        watch::Receiver<Option<Closed>>,
    ) {
        let (sender, events) = mpsc::channel(buffer_events);
        let (closed, closed_receiver) = watch::channel(None);
        let subscriber = Arc::new(Subscriber {
            id,
            pattern,
            start,
            buffer_events,
            sender,
            closed,
            dead: AtomicBool::new(false),
        });
        (subscriber, events, closed_receiver)
    }

    /// Hands over a live event without waiting: at-most-once delivery never slows a publisher.
    pub fn offer(&self, event: &Arc<StoredEvent>) -> Offer {
        if self.is_dead() {
            return Offer::Gone;
        }
        match self.sender.try_send(event.clone()) {
            Ok(()) => Offer::Delivered,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(Closed::SlowConsumer {
                    buffer_events: self.buffer_events,
                });
                Offer::DroppedSlow
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.dead.store(true, Ordering::Release);
                Offer::Gone
            }
        }
    }

    /// Sends a history event, waiting for room: catching up is paced by the subscriber.
    pub async fn send_history(&self, event: Arc<StoredEvent>) -> bool {
        !self.is_dead() && self.sender.send(event).await.is_ok()
    }

    pub fn close(&self, reason: Closed) {
        if !self.dead.swap(true, Ordering::AcqRel) {
            self.closed.send_replace(Some(reason));
        }
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire) || self.sender.is_closed()
    }
}
