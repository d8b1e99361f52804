//! The order of publishes within a stream: calls to `publish` store each stream's events in the
//! order the calls were made, even when the calls run concurrently (a `/v1/ws` connection keeps
//! two in flight, `Engine::ordered_publishes_in_flight`).
//!
//! Each call takes a turn on each of its streams when it is made, before its future first
//! runs ([`RedisEngine::take_turns`]). A turn waits until the turn before it has written
//! everything (handed its last write to the stream's publish connection), writes on
//! that same connection, and lets the next turn write at once, before its own replies are
//! back: one connection runs what was written to it in order, so the order holds while Redis
//! never waits for Herald between two calls. A call that goes away lets the next turn go:
//! what it handed over is whole (`publish_connection.rs`), and one that goes away before its
//! turn came passes its wait on to the next.
//!
//! Where no publish connection can be had (a Cluster, Redis refusing one), parts go on the
//! shared connection and a turn holds until its part is stored.
//!
//! Locks: `publish_lanes` is never held while `publish_connections` is taken, nor across an
//! await.

use std::collections::HashMap;

use tokio::sync::oneshot;

use super::RedisEngine;
use super::publish_connection::PublishConnection;

/// A stream's publishes in progress.
#[derive(Debug, Default)]
pub(super) struct Lane {
    /// The publish connection they write on: one connection keeps them in the order they
    /// were written. Given back when the last of them is done.
    connection: Option<PublishConnection>,
    /// Turns taken and not yet dropped.
    turns: usize,
    /// Resolves (its sender dropped) when the last turn taken is done writing.
    last_written: Option<oneshot::Receiver<()>>,
}

pub(super) type Lanes = HashMap<String, Lane>;

/// One call's turn on one stream.
#[derive(Debug)]
pub(super) struct Turn {
    engine: RedisEngine,
    stream: String,
    /// The turn before, until it is done writing.
    before: Option<oneshot::Receiver<()>>,
    /// Dropped when this turn is done writing.
    written: Option<oneshot::Sender<()>>,
}

impl RedisEngine {
    /// A turn on each of `streams`, in one step, so that calls made one after the other get
    /// their turns in that order on every stream they share (no two calls can wait for each
    /// other).
    pub(super) fn take_turns<'a>(&self, streams: impl Iterator<Item = &'a str>) -> Vec<Turn> {
        let mut lanes = self.inner.publish_lanes.lock();
        streams
            .map(|stream| {
                let lane = lanes.entry(stream.to_owned()).or_default();
                let (written, last_written) = oneshot::channel();
                lane.turns += 1;
                Turn {
                    engine: self.clone(),
                    stream: stream.to_owned(),
                    before: lane.last_written.replace(last_written),
                    written: Some(written),
                }
            })
            .collect()
    }
}

impl Turn {
    /// Waits until every earlier call's part of this stream is written.
    pub async fn wait(&mut self) {
        if let Some(before) = self.before.as_mut() {
            // An error is the turn before gone, having forwarded its own wait (`Drop`).
            let _ = before.await;
        }
        self.before = None;
    }

    /// The publish connection to write on (after [`Turn::wait`]): the one the stream's
    /// publishes in progress write on, or one lent now; `None` when there is none to be had
    /// (the shared connection then).
    pub async fn connection(&self) -> Option<PublishConnection> {
        if let Some(current) = self.current_connection() {
            return Some(current);
        }
        let lent = self.engine.lend_publish_connection().await?;
        let mut lanes = self.engine.inner.publish_lanes.lock();
        if let Some(lane) = lanes.get_mut(&self.stream) {
            lane.connection = Some(lent.clone());
        }
        Some(lent)
    }

    /// Lets the next call's part of the stream be written.
    pub fn done_writing(&mut self) {
        self.written = None;
    }

    fn current_connection(&self) -> Option<PublishConnection> {
        let lanes = self.engine.inner.publish_lanes.lock();
        lanes
            .get(&self.stream)?
            .connection
            .clone()
            .filter(|connection| !connection.is_lost())
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        // A turn dropped before the one before it was written lets the next one go only when
        // that one is: the order of the calls around it holds.
        if let (Some(before), Some(written)) = (self.before.take(), self.written.take())
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = before.await;
                drop(written);
            });
        }
        let idle = {
            let mut lanes = self.engine.inner.publish_lanes.lock();
            let Some(lane) = lanes.get_mut(&self.stream) else {
                return;
            };
            lane.turns -= 1;
            if lane.turns > 0 {
                return;
            }
            lanes.remove(&self.stream).and_then(|lane| lane.connection)
        };
        if let Some(connection) = idle {
            self.engine.give_back_publish_connection(connection);
        }
    }
}
