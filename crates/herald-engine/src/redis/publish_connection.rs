//! Publish connections: a raw connection (`raw.rs`) run by two tasks, one writing the
//! writes handed to it in the order they were handed, the other reading their replies
//! and answering each write with its own. A publish hands a write over as soon as
//! it is encoded and waits for its answer later, so Redis runs one while the next is encoded,
//! and two publishes of one stream, one after the other, keep Redis busy between them
//! (`publish_lanes.rs`).
//!
//! A caller that goes away leaves nothing half-written: what it handed over is whole, and its
//! answer is read and dropped. The connection is given up at its first error (what Redis
//! applied of the writes in flight is unknown, and each caller is told so).
//!
//! Also here, the pool of idle publish connections that the publish path borrows from.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::RedisEngine;
use super::raw::{RawConnection, RawError, RawReader, RawReply, RawWriter};

/// Writes handed over and not yet written, at most, per connection: the callers wait
/// beyond (each is up to `PIPELINED_CHUNK_EVENTS` events, so this is memory, not speed).
const QUEUED_WRITES_MAX: usize = 32;

/// Writes written whose replies are still to come, at most, per connection.
const UNANSWERED_WRITES_MAX: usize = 64;

/// Idle publish connections kept for the next publishes, at most (one is lent per stream
/// being published to at the moment).
const PUBLISH_CONNECTIONS_IDLE_MAX: usize = 16;

/// How long a publish connection may have been idle and still be used without a `PING` first:
/// one Redis closed meanwhile (its `timeout`, a restart, `CLIENT KILL`) would fail the publish
/// it was lent to. Busy connections are never idle that long, so the `PING` is rare.
const PUBLISH_CONNECTION_TRUSTED_IDLE: Duration = Duration::from_secs(1);

/// How long publishes stay on the shared connection after a publish connection could not be
/// opened (Redis at `maxclients`, say), rather than each trying again and logging why.
const PUBLISH_CONNECTION_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// What a write's replies came to: the replies, or why they never will.
pub(super) type Answer = Result<Vec<RawReply>, String>;

/// A write handed over, answered once its replies are read.
#[derive(Debug)]
pub(super) struct Pending(oneshot::Receiver<Answer>);

impl Pending {
    pub async fn answer(self) -> Answer {
        self.0
            .await
            .unwrap_or_else(|_| Err("the publish connection was lost".to_owned()))
    }
}

struct Write {
    packed: Vec<u8>,
    replies: usize,
    answer: oneshot::Sender<Answer>,
}

/// A handle on a publish connection; clones share it. The connection closes when every
/// handle is gone and what was handed over is answered.
#[derive(Clone, Debug)]
pub(super) struct PublishConnection {
    writes: mpsc::Sender<Write>,
}

impl PublishConnection {
    pub fn start(connection: RawConnection) -> PublishConnection {
        let (writer, reader) = connection.into_split();
        let (writes, queued) = mpsc::channel(QUEUED_WRITES_MAX);
        let (written, unanswered) = mpsc::channel(UNANSWERED_WRITES_MAX);
        tokio::spawn(write_in_order(writer, queued, written));
        tokio::spawn(answer_in_order(reader, unanswered));
        PublishConnection { writes }
    }

    /// Hands over packed commands that give `replies` replies; they are written after
    /// everything handed over before, through any handle.
    pub async fn hand_over(&self, packed: Vec<u8>, replies: usize) -> Result<Pending, String> {
        let (answer, pending) = oneshot::channel();
        self.writes
            .send(Write {
                packed,
                replies,
                answer,
            })
            .await
            .map_err(|_| "the publish connection was lost".to_owned())?;
        Ok(Pending(pending))
    }

    /// Whether the connection was given up (an error): it takes nothing more.
    pub fn is_lost(&self) -> bool {
        self.writes.is_closed()
    }

    /// Waits until everything handed over before is answered (a `PING` after it); an error
    /// if the connection was lost or Redis refused the `PING`.
    pub async fn barrier(&self) -> Result<(), String> {
        let pending = self.hand_over(b"*1\r\n$4\r\nPING\r\n".to_vec(), 1).await?;
        match pending.answer().await?.pop() {
            Some(Ok(_)) => Ok(()),
            Some(Err(refused)) => Err(refused),
            None => Err("no reply to PING".to_owned()),
        }
    }
}

async fn write_in_order(
    mut writer: RawWriter,
    mut queued: mpsc::Receiver<Write>,
    written: mpsc::Sender<(usize, oneshot::Sender<Answer>)>,
) {
    while let Some(write) = queued.recv().await {
        if let Err(error) = writer.send(&write.packed).await {
            let _ = write.answer.send(Err(lost(&error)));
            return;
        }
        if written.send((write.replies, write.answer)).await.is_err() {
            // The reading side gave up: so does this one (dropping `queued` fails the rest).
            return;
        }
    }
}

async fn answer_in_order(
    mut reader: RawReader,
    mut unanswered: mpsc::Receiver<(usize, oneshot::Sender<Answer>)>,
) {
    while let Some((count, answer)) = unanswered.recv().await {
        match reader.replies(count).await {
            Ok(replies) => {
                // A caller that went away drops its answer unread.
                let _ = answer.send(Ok(replies));
            }
            Err(error) => {
                let reason = lost(&error);
                let _ = answer.send(Err(reason.clone()));
                // Every write after it shares its fate; dropping `unanswered`
                // stops the writing side, whose queue then fails the rest.
                unanswered.close();
                while let Some((_, answer)) = unanswered.recv().await {
                    let _ = answer.send(Err(reason.clone()));
                }
                return;
            }
        }
    }
}

fn lost(error: &RawError) -> String {
    format!("the publish connection failed ({error}); what it carried may be stored")
}

/// Publish connections not lent out, kept for the next publishes.
#[derive(Debug, Default)]
pub(super) struct PublishConnections {
    /// With when each was given back.
    idle: Vec<(PublishConnection, Instant)>,
    /// A Cluster (or an address `raw.rs` does not speak): publishes go on the shared connection.
    unsupported: bool,
    /// Until when publishes go on the shared connection, one having failed to open.
    paused_until: Option<Instant>,
}

impl RedisEngine {
    /// An idle publish connection that answers, or a new one; `None` where there are none (a
    /// Cluster, an address `raw.rs` does not speak) or none can be opened now (the shared
    /// connection then says what is wrong).
    pub(super) async fn lend_publish_connection(&self) -> Option<PublishConnection> {
        loop {
            let (connection, idle_since) = {
                let mut pool = self.inner.publish_connections.lock();
                if pool.unsupported {
                    return None;
                }
                match pool.idle.pop() {
                    Some(idle) => idle,
                    None if pool
                        .paused_until
                        .is_some_and(|until| Instant::now() < until) =>
                    {
                        return None;
                    }
                    None => break,
                }
            };
            if connection.is_lost() {
                continue;
            }
            if idle_since.elapsed() < PUBLISH_CONNECTION_TRUSTED_IDLE
                || connection.barrier().await.is_ok()
            {
                return Some(connection);
            }
        }
        match self
            .inner
            .redis
            .raw(&self.inner.connection_name("publish"))
            .await
        {
            Ok(Some(connection)) => Some(PublishConnection::start(connection)),
            Ok(None) => {
                self.inner.publish_connections.lock().unsupported = true;
                None
            }
            Err(error) => {
                warn!(
                    %error,
                    "cannot open a publish connection; publishing on the shared connection for {:?}",
                    PUBLISH_CONNECTION_RETRY_PAUSE
                );
                self.inner.publish_connections.lock().paused_until =
                    Some(Instant::now() + PUBLISH_CONNECTION_RETRY_PAUSE);
                None
            }
        }
    }

    pub(super) fn give_back_publish_connection(&self, connection: PublishConnection) {
        if connection.is_lost() {
            return;
        }
        let mut pool = self.inner.publish_connections.lock();
        if pool.idle.len() < PUBLISH_CONNECTIONS_IDLE_MAX {
            pool.idle.push((connection, Instant::now()));
        }
    }
}
