//! A connection's publisher: stores its `pub` frames in arrival order and answers each with a
//! `puback`. Frames that queue while a store is in progress are merged into the next engine
//! call, so a pipelining client shares one write (and one fsync) among many frames.

use axum::extract::ws::Message;
use herald_core::Event;
use herald_engine::PublishOutcome;
use herald_protocol::ws::{Frame, PublishResultRef};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::ApiError;
use crate::http::events::store_outcomes;
use crate::state::AppState;

/// Events merged into one engine call at most.
const MERGED_EVENTS_MAX: usize = 8192;

#[derive(Debug)]
pub struct PubRequest {
    pub rid: u64,
    pub events: Vec<Event>,
}

/// The sending side; dropping it lets the task finish what is queued and stop.
pub type PublishQueue = mpsc::Sender<PubRequest>;

pub fn spawn(
    state: AppState,
    outbound: mpsc::Sender<Message>,
    pending_max: usize,
) -> (PublishQueue, JoinHandle<()>) {
    let (queue, requests) = mpsc::channel(pending_max);
    let task = tokio::spawn(run(state, outbound, requests));
    (queue, task)
}

async fn run(
    state: AppState,
    outbound: mpsc::Sender<Message>,
    mut requests: mpsc::Receiver<PubRequest>,
) {
    while let Some(first) = requests.recv().await {
        let mut merged_events = first.events.len();
        let mut batch = vec![first];
        while merged_events < MERGED_EVENTS_MAX {
            match requests.try_recv() {
                Ok(next) => {
                    merged_events += next.events.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        for (rid, answer) in store_batch(&state, batch).await {
            let frame = match answer {
                Ok(outcomes) => Frame::encode_puback(rid, outcomes.iter().map(result_ref)),
                Err(error) => Frame::error(Some(rid), None, error.detail).encode(),
            };
            if outbound.send(Message::Text(frame.into())).await.is_err() {
                return;
            }
        }
    }
}

/// One engine call for the whole batch. Engine errors are not tied to one event (validation
/// happened when each frame was read), so on failure every request of the batch gets the error;
/// part of the batch may be stored, and a client that retries with the same ids gets those back
/// as duplicates with their seqs, never stored twice.
async fn store_batch(
    state: &AppState,
    batch: Vec<PubRequest>,
) -> Vec<(u64, Result<Vec<PublishOutcome>, ApiError>)> {
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
    match store_outcomes(state, all).await {
        Ok(results) => {
            let mut results = results.into_iter();
            sizes
                .into_iter()
                .map(|(rid, size)| (rid, Ok(results.by_ref().take(size).collect())))
                .collect()
        }
        Err(error) => sizes
            .into_iter()
            .map(|(rid, _)| (rid, Err(error.clone())))
            .collect(),
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
