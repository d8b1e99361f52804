//! A connection's subscriptions: one forwarding task each, from the engine to the outbound
//! queue, and for group subscriptions the set of deliveries the member may still act on.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::ws::Message;
use herald_core::StoredEvent;
use herald_engine::{Closed, GroupMember, LiveSubscription, MemberVerbs};
use herald_protocol::ws::{
    Frame, finish_events_frame, start_events_frame, write_event_frame, write_events_item,
};
use herald_protocol::{ErrorCode, ErrorDetail};
use parking_lot::Mutex;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::state::AppState;

/// Deliveries a group forwarder takes from its member per wake-up at most.
const FORWARD_BATCH_DELIVERIES_MAX: usize = 256;

/// An `events` frame takes no further delivery once it holds this many bytes (a delivery is
/// never split, so one frame may exceed it by one event).
const EVENTS_FRAME_BYTES_MAX: usize = 256 * 1024;

/// Deliveries remembered per group subscription at least; older ones (long timed out and
/// redelivered elsewhere) are forgotten and their acks refused as unknown.
const OUTSTANDING_DELIVERIES_MIN: usize = 1024;

/// What a subscription is, for the verbs that name it.
#[derive(Debug)]
pub enum Kind {
    Live,
    Group {
        verbs: MemberVerbs,
        outstanding: Arc<Mutex<Outstanding>>,
    },
}

#[derive(Debug)]
pub struct Subscription {
    pub kind: Kind,
    forwarder: AbortHandle,
}

impl Drop for Subscription {
    /// Stops forwarding; for a group this drops the member, which leaves the group and has its
    /// unacked deliveries redelivered at once.
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

/// Delivery ids sent to a member and not yet acked, nacked or rejected through this
/// connection. Bounded: past `max` the oldest are forgotten.
#[derive(Debug)]
pub struct Outstanding {
    ids: BTreeSet<u64>,
    max: usize,
}

impl Outstanding {
    fn new(max_in_flight: u32) -> Outstanding {
        Outstanding {
            ids: BTreeSet::new(),
            max: (max_in_flight as usize * 4).max(OUTSTANDING_DELIVERIES_MIN),
        }
    }

    fn insert_all(&mut self, delivery_ids: impl Iterator<Item = u64>) {
        self.ids.extend(delivery_ids);
        while self.ids.len() > self.max {
            self.ids.pop_first();
        }
    }

    pub fn contains(&self, delivery_id: u64) -> bool {
        self.ids.contains(&delivery_id)
    }

    /// Whether it was outstanding.
    pub fn remove(&mut self, delivery_id: u64) -> bool {
        self.ids.remove(&delivery_id)
    }
}

#[derive(Debug, Default)]
pub struct Subscriptions {
    by_sid: HashMap<u64, Subscription>,
    next_sid: u64,
}

impl Subscriptions {
    pub fn len(&self) -> usize {
        self.by_sid.len()
    }

    pub fn get(&self, sid: u64) -> Option<&Subscription> {
        self.by_sid.get(&sid)
    }

    pub fn remove(&mut self, sid: u64) -> bool {
        self.by_sid.remove(&sid).is_some()
    }

    pub fn next_sid(&mut self) -> u64 {
        self.next_sid += 1;
        self.next_sid
    }

    /// Starts forwarding a live subscription as `sid` (whose `subscribed` frame is already
    /// queued, so that the client knows the sid before its first event).
    pub fn add_live(
        &mut self,
        state: &AppState,
        sid: u64,
        subscription: LiveSubscription,
        outbound: mpsc::Sender<Message>,
    ) {
        let forwarder = tokio::spawn(forward_live(state.clone(), sid, subscription, outbound));
        self.by_sid.insert(
            sid,
            Subscription {
                kind: Kind::Live,
                forwarder: forwarder.abort_handle(),
            },
        );
    }

    pub fn add_group(
        &mut self,
        state: &AppState,
        sid: u64,
        member: GroupMember,
        max_in_flight: u32,
        outbound: mpsc::Sender<Message>,
        batched: bool,
    ) {
        let outstanding = Arc::new(Mutex::new(Outstanding::new(max_in_flight)));
        let verbs = member.verbs();
        let forwarder = tokio::spawn(forward_group(
            state.clone(),
            sid,
            member,
            outstanding.clone(),
            outbound,
            batched,
        ));
        self.by_sid.insert(
            sid,
            Subscription {
                kind: Kind::Group { verbs, outstanding },
                forwarder: forwarder.abort_handle(),
            },
        );
    }
}

/// An `events` frame's bytes besides its items (`{"op":"events","sid":…,"events":[` … `]}`).
const EVENTS_FRAME_OVERHEAD_BYTES: usize = 64;

/// An upper bound of the bytes `stored` takes in a delivery frame, as an `event` frame or as an
/// item of an `events` frame: its JSON, the stream and seq written into it, and the delivery's
/// keys and numbers.
fn item_bytes(stored: &StoredEvent) -> usize {
    stored.event_json().len() + stored.stream.len() + 96
}

/// Appends the event as subscribers see it: stored events with `stream` and `seq`; ephemeral
/// ones (never stored) without.
fn write_event(out: &mut Vec<u8>, stored: &StoredEvent) {
    if stored.stream.is_empty() {
        out.extend_from_slice(stored.event_json());
    } else {
        stored.write_json(out);
    }
}

/// An `event` frame, written in one buffer.
fn event_frame(sid: u64, delivery: Option<(u64, u32)>, stored: &StoredEvent) -> Message {
    let mut out = Vec::with_capacity(item_bytes(stored));
    write_event_frame(&mut out, sid, delivery, |out| write_event(out, stored));
    text(out)
}

fn observe_delivery(state: &AppState, stored: &StoredEvent, subscribed_at: OffsetDateTime) {
    // The timestamp without decoding the event: deliveries read back from the log are not.
    let timestamp = stored.event.timestamp();
    if timestamp >= subscribed_at {
        let age = OffsetDateTime::now_utc() - timestamp;
        state
            .metrics
            .delivery_seconds
            .observe(age.as_seconds_f64().max(0.0));
    }
}

fn text(bytes: Vec<u8>) -> Message {
    // Event JSON and frames built around it are UTF-8 by construction.
    let text = String::from_utf8(bytes)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned());
    Message::Text(text.into())
}

fn closed_frame(sid: u64, closed: &Closed) -> Message {
    let code = match closed {
        Closed::SlowConsumer { .. } => ErrorCode::RateLimited,
        Closed::ReadFailed(_) => ErrorCode::Internal,
        Closed::EngineStopped => ErrorCode::Unavailable,
        Closed::GroupDeleted => ErrorCode::NotFound,
    };
    let frame = Frame::closed(sid, ErrorDetail::new(code, closed.to_string()));
    Message::Text(frame.encode().into())
}

async fn forward_live(
    state: AppState,
    sid: u64,
    mut subscription: LiveSubscription,
    outbound: mpsc::Sender<Message>,
) {
    let subscribed_at = OffsetDateTime::now_utc();
    loop {
        match subscription.recv().await {
            Ok(stored) => {
                observe_delivery(&state, &stored, subscribed_at);
                if outbound
                    .send(event_frame(sid, None, &stored))
                    .await
                    .is_err()
                {
                    return;
                }
                state.metrics.live_delivered.inc();
            }
            Err(closed) => {
                let _ = outbound.send(closed_frame(sid, &closed)).await;
                return;
            }
        }
    }
}

async fn forward_group(
    state: AppState,
    sid: u64,
    mut member: GroupMember,
    outstanding: Arc<Mutex<Outstanding>>,
    outbound: mpsc::Sender<Message>,
    batched: bool,
) {
    let subscribed_at = OffsetDateTime::now_utc();
    let mut batch = Vec::with_capacity(FORWARD_BATCH_DELIVERIES_MAX);
    loop {
        if let Err(closed) = member
            .recv_batch(&mut batch, FORWARD_BATCH_DELIVERIES_MAX)
            .await
        {
            let _ = outbound.send(closed_frame(sid, &closed)).await;
            return;
        }
        // Outstanding before sent, so that an ack racing its delivery's frame is known.
        outstanding
            .lock()
            .insert_all(batch.iter().map(|delivery| delivery.delivery_id));
        let count = batch.len() as u64;
        for delivery in &batch {
            if delivery.attempt == 1 {
                observe_delivery(&state, &delivery.event, subscribed_at);
            }
        }
        if batched {
            // Several deliveries per frame: one allocation, one queue push, one WebSocket
            // frame and one client parse per burst instead of per event.
            // Sized for what it will hold: grown from a guess, a frame was copied once more.
            let mut bytes_left: usize = batch.iter().map(|d| item_bytes(&d.event)).sum();
            let mut deliveries = batch.drain(..).peekable();
            while deliveries.peek().is_some() {
                let mut out = Vec::with_capacity(
                    EVENTS_FRAME_OVERHEAD_BYTES + bytes_left.min(EVENTS_FRAME_BYTES_MAX),
                );
                start_events_frame(&mut out, sid);
                while out.len() < EVENTS_FRAME_BYTES_MAX {
                    let Some(delivery) = deliveries.next() else {
                        break;
                    };
                    bytes_left = bytes_left.saturating_sub(item_bytes(&delivery.event));
                    write_events_item(
                        &mut out,
                        Some((delivery.delivery_id, delivery.attempt)),
                        |out| write_event(out, &delivery.event),
                    );
                }
                finish_events_frame(&mut out);
                if outbound.send(text(out)).await.is_err() {
                    return;
                }
            }
        } else {
            for delivery in batch.drain(..) {
                let frame = event_frame(
                    sid,
                    Some((delivery.delivery_id, delivery.attempt)),
                    &delivery.event,
                );
                if outbound.send(frame).await.is_err() {
                    return;
                }
            }
        }
        state.metrics.group_delivered_frames.inc_by(count);
    }
}
