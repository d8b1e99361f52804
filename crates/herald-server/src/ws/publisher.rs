//! A connection's publisher: stores its `pub` frames in arrival order and answers each with a
//! `puback`. Frames that queue while a store is in progress are merged into the next engine
//! call, so a pipelining client shares one write (and one fsync) among many frames.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::Message;
use futures::StreamExt;
use futures::future::Either;
use futures::stream::FuturesOrdered;
use herald_core::Event;
use herald_engine::{Engine, EngineError, PublishOutcome};
use herald_protocol::ws::{Frame, PublishResultRef};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::error::ApiError;
use crate::state::AppState;

/// Events merged into one engine call at most.
const MERGED_EVENTS_MAX: usize = 8192;

/// Events merged into one engine call before it leaves queued frames to the next: enough to
/// spread the log writer's cost per call, few enough that one connection's frames are answered
/// while the next are decoded (800 against 2 000: one connection +7–15%, two and four within
/// ±4%, docs/PERFORMANCE.md).
const MERGED_EVENTS_MIN: usize = 800;

#[derive(Debug)]
pub struct PubRequest {
    pub rid: u64,
    pub events: Vec<Event>,
}

/// The sending side; dropping it lets the task finish what is queued and stop.
#[derive(Debug)]
pub struct PublishQueue {
    requests: mpsc::Sender<PubRequest>,
    /// A permit per frame that may be unanswered (queued, waiting for a call, or in one).
    unanswered: Arc<Semaphore>,
}

/// The publisher task is gone (it stops only when the connection's outbound queue is).
#[derive(Debug)]
pub struct PublisherStopped;

impl PublishQueue {
    /// Queues a frame once fewer than `pending_max` are unanswered: a connection that sends
    /// more is read no further until answers go out.
    pub async fn send(&self, request: PubRequest) -> Result<(), PublisherStopped> {
        let permit = self
            .unanswered
            .acquire()
            .await
            .map_err(|_| PublisherStopped)?;
        permit.forget();
        self.requests
            .send(request)
            .await
            .map_err(|_| PublisherStopped)
    }
}

pub fn spawn(
    state: AppState,
    outbound: mpsc::Sender<Message>,
    pending_max: usize,
) -> (PublishQueue, JoinHandle<()>) {
    // Never full: a frame is queued only with a permit, of which there are as many.
    let (requests, queued) = mpsc::channel(pending_max.max(1));
    let unanswered = Arc::new(Semaphore::new(pending_max.max(1)));
    let task = tokio::spawn(run(state, outbound, queued, unanswered.clone()));
    (
        PublishQueue {
            requests,
            unanswered,
        },
        task,
    )
}

/// Takes frames in arrival order into engine calls and answers them in that order. Keeps up
/// to [`Engine::ordered_publishes_in_flight`] calls going (the engine keeps their order); a
/// second one starts once [`MERGED_EVENTS_MIN`] events wait, so that calls stay large.
async fn run(
    state: AppState,
    outbound: mpsc::Sender<Message>,
    mut requests: mpsc::Receiver<PubRequest>,
    unanswered: Arc<Semaphore>,
) {
    // However the task ends, a reader waiting for a permit is told it stopped.
    let _stopped = ClosesOnDrop(unanswered.clone());
    let calls_max = state.engine.ordered_publishes_in_flight().max(1);
    let mut calls = FuturesOrdered::new();
    let mut waiting: VecDeque<PubRequest> = VecDeque::new();
    let mut waiting_events = 0;
    let mut open = true;
    loop {
        while let Ok(request) = requests.try_recv() {
            waiting_events += request.events.len();
            waiting.push_back(request);
        }
        if calls.len() < calls_max
            && !waiting.is_empty()
            && (calls.is_empty() || waiting_events >= MERGED_EVENTS_MIN)
        {
            let (batch, batch_events) = take_batch(&mut waiting);
            waiting_events -= batch_events;
            calls.push_back(store_batch(&state, batch, calls_max > 1));
            continue;
        }
        tokio::select! {
            biased;
            Some(answers) = calls.next(), if !calls.is_empty() => {
                let frames = answers.len();
                for (rid, answer) in answers {
                    let frame = match answer {
                        Ok(outcomes) => Frame::encode_puback(rid, outcomes.iter().map(result_ref)),
                        Err(error) => Frame::error(Some(rid), None, error.detail).encode(),
                    };
                    if outbound.send(Message::Text(frame.into())).await.is_err() {
                        return;
                    }
                }
                unanswered.add_permits(frames);
            }
            // Read on only while another call may start: a frame read while none may would
            // wake this task for nothing (one engine call at a time: ~10% of the embedded
            // engine's one-connection publish).
            request = requests.recv(), if open && calls.len() < calls_max => match request {
                Some(request) => {
                    waiting_events += request.events.len();
                    waiting.push_back(request);
                }
                None => open = false,
            },
            else => return,
        }
    }
}

/// Closes the semaphore when dropped: `acquire` then fails instead of waiting for ever.
struct ClosesOnDrop(Arc<Semaphore>);

impl Drop for ClosesOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The frames of the next engine call, from the front of those waiting ([`merges_more`]),
/// and their number of events.
fn take_batch(waiting: &mut VecDeque<PubRequest>) -> (Vec<PubRequest>, usize) {
    let Some(first) = waiting.pop_front() else {
        return (Vec::new(), 0);
    };
    let queued = waiting.len();
    let mut merged_events = first.events.len();
    let mut batch = vec![first];
    while merges_more(merged_events, batch.len() - 1, queued) {
        match waiting.pop_front() {
            Some(next) => {
                merged_events += next.events.len();
                batch.push(next);
            }
            None => break,
        }
    }
    (batch, merged_events)
}

/// Whether a call that holds `merged_events` so far takes another of the `queued` frames
/// (`merged_frames` of them taken already). Past [`MERGED_EVENTS_MIN`] it takes at most half
/// of them: the rest is the next call, ready when this one is written, so that one pipelining
/// connection keeps decoding, writing and answering overlapped. Taking its whole window in one
/// call left the server idle while the client refilled it (1 connection: +14% events/s,
/// docs/PERFORMANCE.md).
fn merges_more(merged_events: usize, merged_frames: usize, queued: usize) -> bool {
    merged_events < MERGED_EVENTS_MAX
        && merged_frames < queued
        && (merged_events < MERGED_EVENTS_MIN || merged_frames < queued / 2)
}

/// Answers to the frames of one engine call, by `rid`.
type Answers = Vec<(u64, Result<Vec<PublishOutcome>, ApiError>)>;

/// One engine call for the whole batch, made now (the engine keeps the order of calls, not of
/// futures polled). Engine errors are not tied to one event (validation happened when each
/// frame was read), so on failure every request of the batch gets the error; part of the
/// batch may be stored, and a client that retries with the same ids gets those back as
/// duplicates with their seqs, never stored twice.
///
/// With more than one call in flight the call runs as a task of its own: it may hold the
/// stream's turn, which must not wait on this connection's answers going out (a client that
/// reads slowly would hold up every publisher of the stream).
fn store_batch(
    state: &AppState,
    batch: Vec<PubRequest>,
    own_task: bool,
) -> impl Future<Output = Answers> + Send + 'static {
    let sizes: Vec<(u64, usize)> = batch
        .iter()
        .map(|request| (request.rid, request.events.len()))
        .collect();
    // Sized up front: collecting through `flat_map` grew the vector from empty, copying every
    // event several times.
    let mut all: Vec<Event> = Vec::with_capacity(sizes.iter().map(|(_, size)| size).sum());
    for request in batch {
        all.extend(request.events);
    }
    let stored = state.engine.publish(all);
    let state = state.clone();
    let started = Instant::now();
    let stored = async move {
        let stored = stored.await;
        state.metrics.observe_publish(started.elapsed());
        stored
    };
    let stored = if own_task {
        let task = tokio::spawn(stored);
        Either::Left(async move {
            task.await.unwrap_or_else(|_| {
                Err(EngineError::Backend {
                    operation: "publishing",
                    reason: "the publish task failed".to_owned(),
                })
            })
        })
    } else {
        Either::Right(stored)
    };
    async move {
        match stored.await {
            Ok(results) => {
                let mut results = results.into_iter();
                sizes
                    .into_iter()
                    .map(|(rid, size)| (rid, Ok(results.by_ref().take(size).collect())))
                    .collect()
            }
            Err(error) => {
                let error = ApiError::from(error);
                sizes
                    .into_iter()
                    .map(|(rid, _)| (rid, Err(error.clone())))
                    .collect()
            }
        }
    }
}

/// An engine outcome as the `puback` result it is on the wire (`convert::publish_result`,
/// borrowed).
fn result_ref(outcome: &PublishOutcome) -> PublishResultRef<'_> {
    PublishResultRef {
        id: outcome.id.as_str(),
        stream: outcome.stream.as_deref(),
        seq: outcome.seq,
        duplicate: outcome.duplicate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader waiting for room is let go once the publisher is gone (it stops when the
    /// connection's outbound queue does), rather than waiting for a permit for ever.
    #[tokio::test]
    async fn a_frame_waiting_for_room_fails_once_the_publisher_stops() {
        let (requests, _queued) = mpsc::channel(1);
        let unanswered = Arc::new(Semaphore::new(1));
        let queue = PublishQueue {
            requests,
            unanswered: unanswered.clone(),
        };
        let request = |rid| PubRequest {
            rid,
            events: Vec::new(),
        };
        queue.send(request(1)).await.expect("room for one frame");
        let waiting = tokio::spawn(async move { queue.send(request(2)).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no room: the second frame waits");
        drop(ClosesOnDrop(unanswered));
        assert!(waiting.await.unwrap().is_err());
    }

    #[test]
    fn a_call_takes_half_the_queue_past_the_minimum_and_never_more_than_the_maximum() {
        // (events merged so far, frames merged so far, frames queued when the call began)
        let check = |merged_events, merged_frames, queued, expect: bool| {
            assert_eq!(
                merges_more(merged_events, merged_frames, queued),
                expect,
                "merged_events={merged_events} merged_frames={merged_frames} queued={queued}"
            );
        };
        check(100, 0, 0, false); // nothing queued
        check(100, 0, 31, true); // below the minimum: takes more
        check(700, 6, 31, true);
        check(800, 7, 41, true); // past the minimum, below half of 41
        check(2_100, 20, 41, false); // half taken: the rest is the next call
        check(900, 8, 9, false); // past the minimum and half of 9 taken
        check(1, 0, 1, true); // single events: the minimum still merges them
        check(799, 799, 800, true);
        check(2_000, 2_000, 2_000_000, true); // far below half: merging goes on...
        check(MERGED_EVENTS_MAX, 81, 1_000, false); // ...up to the maximum
        check(1_000, 10, 10, false); // every queued frame taken
    }
}
