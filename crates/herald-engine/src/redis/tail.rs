//! The tail of one stream in this process: a task reading new entries with a blocking `XREAD`
//! on a connection of its own, handing them to the live subscribers that have caught up, and
//! waking the groups that read the stream. Subscribers that start behind the tail first read
//! history (`XRANGE` on the shared connection), paced by their own consumer, then join.
//!
//! Every live subscriber is in `attached` from attach to detach; it is in `live` once caught
//! up, with the seq it wants next. The tail moves `delivered_up_to` and hands events out under
//! one lock, so a subscriber joining `live` neither misses nor repeats an event.
//!
//! With no subscriber attached the tail only needs to know how far the stream goes (to wake
//! the groups): it waits for one new entry, then jumps to the last one (`XREVRANGE … COUNT 1`)
//! instead of reading every entry, which cost as much as consuming them (docs/PERFORMANCE.md).
//! The jump is taken under the lock only if still nobody is attached.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use herald_core::StoredEvent;
use parking_lot::Mutex;
use redis::streams::{StreamRangeReply, StreamReadReply};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::warn;

use super::connection::{Connection, Redis};
use super::decode::decode_entries;
use super::keys::{entry_id, seq_of};
use crate::api::Closed;
use crate::config::CATCH_UP_BATCH_EVENTS;
use crate::embedded::live::{Offer, Subscriber};

/// How long one `XREAD` blocks waiting for new entries before it is sent again.
const TAIL_BLOCK_MS: u64 = 2_000;

/// Entries one `XREAD` returns at most: small, so that a subscriber keeping up never sees a
/// burst larger than its buffer arrive at once.
const TAIL_READ_EVENTS_MAX: usize = 64;

/// The wait before reconnecting after the tail's connection failed.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub(crate) struct Tail {
    pub stream: Arc<str>,
    events_key: String,
    connection: Connection,
    state: Mutex<TailState>,
    task: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct TailState {
    /// The last seq handed to live subscribers.
    delivered_up_to: u64,
    live: Vec<(Arc<Subscriber>, u64)>,
    attached: HashSet<u64>,
    wakers: Vec<Weak<Notify>>,
    slow_dropped: u64,
}

impl Tail {
    /// Starts reading after `last_seq`.
    pub fn start(
        redis: Redis,
        connection: Connection,
        stream: Arc<str>,
        events_key: String,
        last_seq: u64,
    ) -> Arc<Tail> {
        let tail = Arc::new(Tail {
            stream,
            events_key,
            connection,
            state: Mutex::new(TailState {
                delivered_up_to: last_seq,
                ..TailState::default()
            }),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(tail.clone().read(redis));
        *tail.task.lock() = Some(task);
        tail
    }

    pub fn stop(&self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
        let mut state = self.state.lock();
        for (subscriber, _) in state.live.drain(..) {
            subscriber.close(Closed::EngineStopped);
        }
    }

    /// The last seq the tail has seen.
    pub fn last_seq(&self) -> u64 {
        self.state.lock().delivered_up_to
    }

    pub fn live_subscribers(&self) -> usize {
        self.state.lock().attached.len()
    }

    pub fn slow_dropped(&self) -> u64 {
        self.state.lock().slow_dropped
    }

    /// Wakes `notify` whenever new entries arrive.
    pub fn add_waker(&self, notify: Weak<Notify>) {
        self.state.lock().wakers.push(notify);
    }

    /// Feeds `subscriber` this stream's events from `start_seq` on.
    pub fn attach(self: &Arc<Self>, subscriber: Arc<Subscriber>, start_seq: u64) {
        let mut state = self.state.lock();
        state.attached.insert(subscriber.id);
        if start_seq > state.delivered_up_to {
            state.live.push((subscriber, start_seq));
            return;
        }
        drop(state);
        tokio::spawn(self.clone().catch_up(subscriber, start_seq));
    }

    pub fn detach(&self, subscriber_id: u64) {
        let mut state = self.state.lock();
        state.attached.remove(&subscriber_id);
        state
            .live
            .retain(|(subscriber, _)| subscriber.id != subscriber_id);
    }

    /// Reads history from `from` until it reaches the tail, then joins the live subscribers.
    async fn catch_up(self: Arc<Self>, subscriber: Arc<Subscriber>, mut from: u64) {
        let mut connection = self.connection.clone();
        loop {
            if subscriber.is_dead() {
                return;
            }
            let tail_before = self.last_seq();
            let range: Result<StreamRangeReply, _> = redis::cmd("XRANGE")
                .arg(&self.events_key)
                .arg(entry_id(from))
                .arg("+")
                .arg("COUNT")
                .arg(CATCH_UP_BATCH_EVENTS)
                .query_async(&mut connection)
                .await;
            let events = match range.map_err(|error| error.to_string()).and_then(|range| {
                decode_entries(&self.stream, &range.ids).map_err(|error| error.to_string())
            }) {
                Ok(events) => events,
                Err(reason) => {
                    warn!(stream = %self.stream, %reason, "catching up a subscriber failed");
                    subscriber.close(Closed::ReadFailed(reason));
                    return;
                }
            };
            let full = events.len() == CATCH_UP_BATCH_EVENTS;
            let empty = events.is_empty();
            for event in events {
                from = event.seq + 1;
                if subscriber.pattern.matches(event.event.event_type())
                    && !subscriber.send_history(event).await
                {
                    return;
                }
            }
            if !full {
                let mut state = self.state.lock();
                if !state.attached.contains(&subscriber.id) {
                    return;
                }
                if from > state.delivered_up_to {
                    state.live.push((subscriber, from));
                    return;
                }
                // Nothing was left of what the tail had seen before the read: retention
                // trimmed it; go on after it.
                if empty && from <= tail_before {
                    from = tail_before + 1;
                }
            }
        }
    }

    /// The task: blocking reads of new entries, on a connection of its own.
    async fn read(self: Arc<Self>, redis: Redis) {
        let mut cursor = self.last_seq();
        let mut connection: Option<Connection> = None;
        let response_timeout = Duration::from_millis(TAIL_BLOCK_MS) + RECONNECT_DELAY * 4;
        loop {
            let reader = match &mut connection {
                Some(reader) => reader,
                None => match redis.dedicated(response_timeout).await {
                    Ok(reader) => connection.insert(reader),
                    Err(error) => {
                        warn!(stream = %self.stream, %error, "tail reader cannot connect");
                        tokio::time::sleep(RECONNECT_DELAY).await;
                        continue;
                    }
                },
            };
            let skimming = self.state.lock().attached.is_empty();
            let reply: Result<Option<StreamReadReply>, _> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(if skimming { 1 } else { TAIL_READ_EVENTS_MAX })
                .arg("BLOCK")
                .arg(TAIL_BLOCK_MS)
                .arg("STREAMS")
                .arg(&self.events_key)
                .arg(entry_id(cursor))
                .query_async(reader)
                .await;
            let reply = match reply {
                Ok(Some(reply)) => reply,
                Ok(None) => continue,
                Err(error) => {
                    warn!(stream = %self.stream, %error, "tail read failed; reconnecting");
                    connection = None;
                    tokio::time::sleep(RECONNECT_DELAY).await;
                    continue;
                }
            };
            let mut events = Vec::new();
            for key in &reply.keys {
                match decode_entries(&self.stream, &key.ids) {
                    Ok(decoded) => events.extend(decoded),
                    Err(error) => {
                        warn!(stream = %self.stream, %error, "skipping undecodable entries")
                    }
                }
                if let Some(last) = key.ids.last().and_then(|entry| seq_of(&entry.id)) {
                    cursor = cursor.max(last);
                }
            }
            if skimming {
                match self.last_entry(reader).await {
                    Ok(Some(last)) if self.skip_to(last) => {
                        cursor = cursor.max(last);
                        continue;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        warn!(stream = %self.stream, %error, "tail read failed; reconnecting");
                        connection = None;
                    }
                }
            }
            self.fan_out(events, cursor);
        }
    }

    /// The seq of the stream's last entry, `None` for an empty stream.
    async fn last_entry(&self, reader: &mut Connection) -> Result<Option<u64>, redis::RedisError> {
        let last: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&self.events_key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(reader)
            .await?;
        Ok(last.ids.first().and_then(|entry| seq_of(&entry.id)))
    }

    /// Moves the tail to `last` without handing anything out, if no subscriber is attached
    /// (then one attaching later starts from there or reads history); wakes the groups.
    fn skip_to(&self, last: u64) -> bool {
        let mut state = self.state.lock();
        if !state.attached.is_empty() {
            return false;
        }
        state.delivered_up_to = state.delivered_up_to.max(last);
        state.wake_groups();
        true
    }

    fn fan_out(&self, events: Vec<Arc<StoredEvent>>, cursor: u64) {
        let mut state = self.state.lock();
        for event in &events {
            let mut dropped = 0;
            state.live.retain(|(subscriber, next)| {
                if event.seq < *next || !subscriber.pattern.matches(event.event.event_type()) {
                    return !subscriber.is_dead();
                }
                match subscriber.offer(event) {
                    Offer::Delivered => true,
                    Offer::DroppedSlow => {
                        dropped += 1;
                        false
                    }
                    Offer::Gone => false,
                }
            });
            state.slow_dropped += dropped;
        }
        state.delivered_up_to = state.delivered_up_to.max(cursor);
        state.wake_groups();
    }
}

impl TailState {
    fn wake_groups(&mut self) {
        self.wakers.retain(|waker| match waker.upgrade() {
            Some(notify) => {
                notify.notify_one();
                true
            }
            None => false,
        });
    }
}
