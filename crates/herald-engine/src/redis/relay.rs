//! Messages between the Herald processes on one Redis that are not events of a stream: the
//! server's real-time sends (to a user's sockets, a room, everyone) must reach sockets and
//! connections on every process, whichever one received the send. The engine carries bytes
//! and knows nothing of what they mean.
//!
//! A relay is one Redis pub/sub channel, `P:relay:<topic>`. What a process sends reaches every
//! *other* process's inbox, never its own: each batch carries its sender's process id, and the
//! sender has delivered locally already. Messages from one process reach each other process
//! in the order sent. Delivery is at most once, as pub/sub is: a message is lost when the
//! sender's queue is full, when Redis cannot be reached, when a receiver's inbox is full, and
//! while a receiver re-subscribes after losing its connection. Every loss is counted
//! ([`Relay::dropped`]).
//!
//! Both directions are bounded: the outgoing queue (a full one refuses the send) and the inbox
//! (a message arriving at a full inbox is dropped). The redis crate's own pub/sub buffer has no
//! bound, but the task reading it does a constant amount of work per message and never waits,
//! so it stays short; and Redis disconnects a subscriber that falls behind by more than
//! `client-output-buffer-limit pubsub`.
//!
//! Sends queued together leave as one `PUBLISH`, a batch: `<process id>\n`, then per message
//! its length in decimal, `\n`, and its bytes. One command and one pub/sub message per batch
//! rather than per send — and nothing but a single channel, so it works the same on a Cluster.
//!
//! A process may also keep a report under the topic (`P:relay:<topic>:report:<process id>`,
//! expiring after the process TTL unless renewed), which the other processes read: the server
//! adds up its real-time stats this way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use futures::future::join_all;
use tokio::sync::mpsc;
use tracing::warn;

use super::connection::{Connection, backend};
use super::{Inner, RELAY_RECONNECT_DELAY, RedisEngine, subscribe_channel};
use crate::api::EngineError;
use crate::config::is_valid_stream_name;

/// Bytes of messages one `PUBLISH` carries at most; a larger message goes alone.
const RELAY_BATCH_BYTES_MAX: usize = 256 * 1024;

/// Messages one `PUBLISH` carries at most.
const RELAY_BATCH_MESSAGES_MAX: usize = 256;

/// The longest wait between two renewals of a report: what other processes read is at most
/// this old (reports expire after the process TTL, and are renewed three times within it).
const REPORT_INTERVAL_MAX: Duration = Duration::from_secs(1);

/// The sending side of a relay, and the reports. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Relay {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    engine: Arc<Inner>,
    topic: String,
    outgoing: mpsc::Sender<Bytes>,
    dropped: Arc<AtomicU64>,
}

/// What other processes sent on a relay, in the order each of them sent it.
#[derive(Debug)]
pub struct RelayInbox {
    messages: mpsc::Receiver<Bytes>,
}

impl RelayInbox {
    /// The next message; `None` once the engine is closed.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.messages.recv().await
    }
}

impl RedisEngine {
    /// Opens the relay `topic` (one token of `[A-Za-z0-9_-]`), already subscribed when it
    /// returns: whatever another process sends from then on reaches the inbox (at most once).
    /// `queue_messages_max` bounds both the outgoing queue and the inbox.
    pub async fn relay(
        &self,
        topic: &str,
        queue_messages_max: usize,
    ) -> Result<(Relay, RelayInbox), EngineError> {
        if !is_valid_stream_name(topic) {
            return Err(EngineError::Config(format!(
                "relay topic {topic:?} must be one token ([A-Za-z0-9_-]+)"
            )));
        }
        let inner = &self.inner;
        let channel = inner.keys.relay_channel(topic);
        let urls = inner.config.urls.clone();
        let (messages, node) = subscribe_channel(&urls, 0, &channel)
            .await
            .map_err(|error| backend("subscribing to a relay", &error))?;
        let capacity = queue_messages_max.max(1);
        let (outgoing, queued) = mpsc::channel(capacity);
        let (inbox, received) = mpsc::channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let process: Arc<str> = Arc::from(inner.process.as_str());
        let sending = tokio::spawn(send_forever(
            inner.connection.clone(),
            channel.clone(),
            process.clone(),
            queued,
            dropped.clone(),
        ));
        let receiving = tokio::spawn(receive_forever(
            Subscription {
                urls,
                channel,
                node,
            },
            process,
            messages,
            inbox,
            dropped.clone(),
        ));
        inner.background.lock().extend([sending, receiving]);
        let relay = Relay {
            shared: Arc::new(Shared {
                engine: inner.clone(),
                topic: topic.to_owned(),
                outgoing,
                dropped,
            }),
        };
        Ok((relay, RelayInbox { messages: received }))
    }
}

impl Relay {
    /// Queues `message` for every other process. False, and counted as dropped, when the
    /// queue is full or the engine is closed.
    pub fn send(&self, message: Bytes) -> bool {
        let queued = self.shared.outgoing.try_send(message).is_ok();
        if !queued {
            count_drops(&self.shared.dropped, 1, "the outgoing queue is full");
        }
        queued
    }

    /// Messages lost so far, in either direction: refused by a full queue, not published for
    /// a Redis error, or arriving at a full inbox.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// How often to renew a report so that it never expires while this process lives.
    pub fn report_interval(&self) -> Duration {
        (self.shared.engine.config.process_ttl / 3).min(REPORT_INTERVAL_MAX)
    }

    /// Replaces this process's report; it expires after the process TTL unless renewed.
    pub async fn report(&self, report: &[u8]) -> Result<(), EngineError> {
        let engine = &self.shared.engine;
        let mut connection = engine.connection.clone();
        redis::cmd("SET")
            .arg(self.report_key(&engine.process))
            .arg(report)
            .arg("PX")
            .arg(engine.config.process_ttl.as_millis() as u64)
            .query_async::<()>(&mut connection)
            .await
            .map_err(|error| backend("writing a relay report", &error))
    }

    /// Removes this process's report (it is stopping).
    pub async fn withdraw_report(&self) -> Result<(), EngineError> {
        let engine = &self.shared.engine;
        let mut connection = engine.connection.clone();
        redis::cmd("DEL")
            .arg(self.report_key(&engine.process))
            .query_async::<()>(&mut connection)
            .await
            .map_err(|error| backend("withdrawing a relay report", &error))
    }

    /// The reports of every other process that has one.
    pub async fn reports(&self) -> Result<Vec<Bytes>, EngineError> {
        let engine = &self.shared.engine;
        let mut connection = engine.connection.clone();
        let processes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(engine.keys.processes())
            .query_async(&mut connection)
            .await
            .map_err(|error| backend("listing processes", &error))?;
        // One GET per process, not MGET: in a Cluster the keys live in different slots. The
        // shared connection pipelines them.
        let reads = processes
            .iter()
            .filter(|process| **process != engine.process)
            .map(|process| {
                let mut connection = engine.connection.clone();
                let key = self.report_key(process);
                async move {
                    redis::cmd("GET")
                        .arg(key)
                        .query_async::<Option<Vec<u8>>>(&mut connection)
                        .await
                }
            });
        let mut reports = Vec::new();
        for read in join_all(reads).await {
            let report = read.map_err(|error| backend("reading relay reports", &error))?;
            reports.extend(report.map(Bytes::from));
        }
        Ok(reports)
    }

    fn report_key(&self, process: &str) -> String {
        self.shared
            .engine
            .keys
            .relay_report(&self.shared.topic, process)
    }
}

/// Counts lost messages, and says so at the first loss and at every power of two after it
/// (a relay under overload would otherwise log once per message).
fn count_drops(dropped: &AtomicU64, count: u64, why: &str) {
    let before = dropped.fetch_add(count, Ordering::Relaxed);
    let after = before + count;
    if before == 0 || (before + 1..=after).any(u64::is_power_of_two) {
        warn!(dropped = after, "relay messages lost: {why}");
    }
}

/// Where a receiver subscribes again after losing its connection.
struct Subscription {
    urls: Vec<String>,
    channel: String,
    /// The node serving the subscription now, in `urls`.
    node: usize,
}

/// Publishes what is queued, in batches, until every sender is gone or the engine closes.
async fn send_forever(
    mut connection: Connection,
    channel: String,
    process: Arc<str>,
    mut queued: mpsc::Receiver<Bytes>,
    dropped: Arc<AtomicU64>,
) {
    let mut messages = Vec::with_capacity(RELAY_BATCH_MESSAGES_MAX);
    while queued
        .recv_many(&mut messages, RELAY_BATCH_MESSAGES_MAX)
        .await
        > 0
    {
        let mut rest = &messages[..];
        while !rest.is_empty() {
            let (batch, taken) = encode_batch(&process, rest);
            rest = &rest[taken..];
            let published: Result<i64, _> = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(batch.as_ref())
                .query_async(&mut connection)
                .await;
            if let Err(error) = published {
                warn!(%error, "publishing to a relay failed");
                count_drops(&dropped, taken as u64, "publishing to Redis failed");
            }
        }
        messages.clear();
    }
}

/// The batch holding the first messages of `messages` (at least one), and how many it holds.
fn encode_batch(process: &str, messages: &[Bytes]) -> (Bytes, usize) {
    let mut batch = BytesMut::with_capacity(
        process.len() + 1 + messages.first().map_or(0, |message| message.len() + 12),
    );
    batch.put_slice(process.as_bytes());
    batch.put_u8(b'\n');
    let mut taken = 0;
    for message in messages {
        let length = message.len().to_string();
        if taken > 0 && batch.len() + length.len() + 1 + message.len() > RELAY_BATCH_BYTES_MAX {
            break;
        }
        batch.put_slice(length.as_bytes());
        batch.put_u8(b'\n');
        batch.put_slice(message);
        taken += 1;
    }
    (batch.freeze(), taken)
}

/// A batch's sender and its messages; `None` if it is not a batch.
fn decode_batch(batch: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let split = batch.iter().position(|&byte| byte == b'\n')?;
    let (sender, mut rest) = (&batch[..split], &batch[split + 1..]);
    let mut messages = Vec::new();
    while !rest.is_empty() {
        let split = rest.iter().position(|&byte| byte == b'\n')?;
        let length: usize = std::str::from_utf8(&rest[..split]).ok()?.parse().ok()?;
        let body = rest.get(split + 1..split + 1 + length)?;
        messages.push(body);
        rest = &rest[split + 1 + length..];
    }
    Some((sender, messages))
}

/// Hands what other processes publish to the inbox, until the inbox is dropped or the engine
/// closes; subscribes again after losing the connection.
async fn receive_forever(
    mut subscription: Subscription,
    process: Arc<str>,
    mut batches: redis::aio::PubSubStream,
    inbox: mpsc::Sender<Bytes>,
    dropped: Arc<AtomicU64>,
) {
    loop {
        while let Some(batch) = batches.next().await {
            let Some((sender, messages)) = decode_batch(batch.get_payload_bytes()) else {
                warn!(channel = %subscription.channel, "a relay message is not a batch");
                continue;
            };
            if sender == process.as_bytes() {
                continue;
            }
            for message in messages {
                match inbox.try_send(Bytes::copy_from_slice(message)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        count_drops(&dropped, 1, "the inbox is full")
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        }
        warn!(channel = %subscription.channel, "lost the relay's pub/sub connection; subscribing again");
        loop {
            tokio::time::sleep(RELAY_RECONNECT_DELAY).await;
            if inbox.is_closed() {
                return;
            }
            // The next node first: the one that served may be the one that is gone.
            let next = subscription.node + 1;
            match subscribe_channel(&subscription.urls, next, &subscription.channel).await {
                Ok((stream, node)) => {
                    batches = stream;
                    subscription.node = node;
                    break;
                }
                Err(error) => warn!(%error, "subscribing to a relay again failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(texts: &[&str]) -> Vec<Bytes> {
        texts
            .iter()
            .map(|text| Bytes::copy_from_slice(text.as_bytes()))
            .collect()
    }

    #[test]
    fn batches_round_trip_and_split_by_size() {
        let queued = messages(&["a", "", "line\nbreak", "12\n34"]);
        let (batch, taken) = encode_batch("p1", &queued);
        assert_eq!(taken, 4);
        assert_eq!(&batch[..], b"p1\n1\na0\n10\nline\nbreak5\n12\n34");
        let (sender, decoded) = decode_batch(&batch).unwrap();
        assert_eq!(sender, b"p1");
        let expected: Vec<&[u8]> = queued.iter().map(|message| &message[..]).collect();
        assert_eq!(decoded, expected);

        let large = Bytes::from(vec![b'x'; RELAY_BATCH_BYTES_MAX]);
        let queued = vec![large.clone(), large.clone(), Bytes::from_static(b"y")];
        let (first, taken) = encode_batch("p1", &queued);
        assert_eq!(taken, 1, "a message larger than a batch goes alone");
        assert_eq!(decode_batch(&first).unwrap().1, vec![&large[..]]);
        let (_, taken) = encode_batch("p1", &queued[1..]);
        assert_eq!(taken, 1);
        let (_, taken) = encode_batch("p1", &queued[2..]);
        assert_eq!(taken, 1);
    }

    #[test]
    fn what_is_not_a_batch_is_refused() {
        for bad in [
            &b"no newline"[..],
            b"p1\n3\nab",
            b"p1\nx\nab",
            b"p1\n2",
            b"p1\n-1\n",
        ] {
            assert!(
                decode_batch(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(decode_batch(b"p1\n").unwrap(), (&b"p1"[..], Vec::new()));
    }
}
