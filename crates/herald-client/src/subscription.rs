//! Subscriptions as the caller holds them: a live [`Subscription`] (a stream of events), a
//! group's [`GroupSubscription`] (a stream of [`Delivery`]s to settle by hand), and a
//! [`GroupWorker`] that runs a handler per delivery and settles it from the handler's result.
//!
//! A subscription outlives connections: the background task re-creates it on each new
//! connection. Deliveries made on a connection that is gone are skipped when read, because the
//! server has already handed their events out again (and settling them would fail).

use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{FutureExt, Stream};
use herald_protocol::From;
use herald_protocol::http::GroupPolicyConfig;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::connection::{Control, Incoming, SubShared, Verb};
use crate::error::{Error, Result};
use crate::event::ReceivedEvent;

/// Where a live subscription starts; `latest` by default. After a reconnect it resumes from
/// the latest event whatever it started from: a live subscription is at-most-once.
#[derive(Clone, Debug, Default)]
pub struct SubscribeOptions {
    pub from: Option<From>,
}

impl SubscribeOptions {
    pub fn from(mut self, from: From) -> SubscribeOptions {
        self.from = Some(from);
        self
    }
}

/// A consumer group subscription. `from` and `policy` apply only when this subscription
/// creates the group; the server keeps an existing group's.
#[derive(Clone, Debug)]
pub struct GroupOptions {
    pub from: Option<From>,
    /// Deliveries the server may have out to this member at once (its prefetch).
    pub max_in_flight: Option<u32>,
    pub policy: Option<GroupPolicyConfig>,
    /// Handlers a [`GroupWorker`] runs at once. 1 (the default) handles deliveries one after
    /// the other, in the order they arrive.
    pub concurrency: usize,
}

impl Default for GroupOptions {
    fn default() -> GroupOptions {
        GroupOptions {
            from: None,
            max_in_flight: None,
            policy: None,
            concurrency: 1,
        }
    }
}

impl GroupOptions {
    pub fn from(mut self, from: From) -> GroupOptions {
        self.from = Some(from);
        self
    }

    pub fn max_in_flight(mut self, max: u32) -> GroupOptions {
        self.max_in_flight = Some(max);
        self
    }

    pub fn policy(mut self, policy: GroupPolicyConfig) -> GroupOptions {
        self.policy = Some(policy);
        self
    }

    pub fn concurrency(mut self, handlers: usize) -> GroupOptions {
        self.concurrency = handlers.max(1);
        self
    }
}

/// What every subscription handle holds: its id and a way to tell the task it is gone.
#[derive(Debug)]
pub(crate) struct SubHandle {
    pub local: u64,
    pub control: mpsc::UnboundedSender<Control>,
    pub shared: Arc<SubShared>,
    pub timeout: Duration,
}

impl SubHandle {
    async fn unsubscribe(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(Control::Unsubscribe {
                local: self.local,
                reply: Some(reply),
            })
            .map_err(|_| Error::Closed)?;
        request(answer, self.timeout).await
    }
}

impl Drop for SubHandle {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Unsubscribe {
            local: self.local,
            reply: None,
        });
    }
}

/// The next event of a live stream (a subscription, a room): after the last, why it ended
/// (when it ended for a reason), then `None`.
pub(crate) fn poll_live<T: DeserializeOwned>(
    receiver: &mut mpsc::Receiver<Incoming>,
    shared: &SubShared,
    ended: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<ReceivedEvent<T>>>> {
    if *ended {
        return Poll::Ready(None);
    }
    match receiver.poll_recv(cx) {
        Poll::Ready(Some(incoming)) => Poll::Ready(Some(ReceivedEvent::decode(&incoming.event))),
        Poll::Ready(None) => {
            *ended = true;
            Poll::Ready(shared.take_closed().map(Err))
        }
        Poll::Pending => Poll::Pending,
    }
}

/// Waits for the task's answer within `timeout`.
pub(crate) async fn request<T>(
    answer: oneshot::Receiver<Result<T>>,
    timeout: Duration,
) -> Result<T> {
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(Error::Closed),
        Err(_) => Err(Error::Timeout(timeout)),
    }
}

/// A live subscription: every matching event, in order within a stream, at most once.
/// Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription<T> {
    pub(crate) handle: SubHandle,
    pub(crate) receiver: mpsc::Receiver<Incoming>,
    pub(crate) ended: bool,
    pub(crate) _data: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Subscription<T> {
    /// The next event; an `Err` item for an event whose `data` is not a `T` (the subscription
    /// goes on), and a last `Err` when the subscription ended for a reason (dropped as slow,
    /// closed by the server, client closed), then `None`.
    pub async fn next(&mut self) -> Option<Result<ReceivedEvent<T>>> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    pub async fn unsubscribe(mut self) -> Result<()> {
        self.ended = true;
        self.handle.unsubscribe().await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<ReceivedEvent<T>>>> {
        poll_live(&mut self.receiver, &self.handle.shared, &mut self.ended, cx)
    }
}

impl<T: DeserializeOwned> Stream for Subscription<T> {
    type Item = Result<ReceivedEvent<T>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_event(cx)
    }
}

/// A member of a consumer group whose deliveries the caller settles by hand. Dropping it
/// leaves the group; its unsettled deliveries go to other members at once.
#[derive(Debug)]
pub struct GroupSubscription<T> {
    pub(crate) handle: SubHandle,
    pub(crate) receiver: mpsc::UnboundedReceiver<Incoming>,
    pub(crate) ended: bool,
    pub(crate) _data: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> GroupSubscription<T> {
    /// The next delivery. An event whose `data` is not a `T` is rejected (dead-lettered: no
    /// retry can fix it) and returned as an `Err` item; the subscription goes on. A last `Err`
    /// says why the subscription ended, then `None`.
    pub async fn next(&mut self) -> Option<Result<Delivery<T>>> {
        std::future::poll_fn(|cx| self.poll_delivery(cx)).await
    }

    pub async fn unsubscribe(mut self) -> Result<()> {
        self.ended = true;
        self.handle.unsubscribe().await
    }

    fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Delivery<T>>>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            let incoming = match self.receiver.poll_recv(cx) {
                Poll::Ready(Some(incoming)) => incoming,
                Poll::Ready(None) => {
                    self.ended = true;
                    return Poll::Ready(self.handle.shared.take_closed().map(Err));
                }
                Poll::Pending => return Poll::Pending,
            };
            let current = self.handle.shared.generation.load(Ordering::Acquire);
            if incoming.generation != current {
                continue;
            }
            let Some((delivery_id, attempt)) = incoming.delivery else {
                return Poll::Ready(Some(Err(Error::Protocol(
                    "a group event without a deliveryId".to_owned(),
                ))));
            };
            let settle = Settle {
                local: self.handle.local,
                generation: incoming.generation,
                delivery_id,
                control: self.handle.control.clone(),
                settled: Arc::new(AtomicBool::new(false)),
                timeout: self.handle.timeout,
            };
            return Poll::Ready(Some(match ReceivedEvent::decode(&incoming.event) {
                Ok(event) => Ok(Delivery {
                    event,
                    delivery_id,
                    attempt,
                    settle,
                }),
                Err(error) => {
                    settle.send(
                        Verb::Reject {
                            reason: Some(error.to_string()),
                        },
                        None,
                    );
                    Err(error)
                }
            }));
        }
    }
}

impl<T: DeserializeOwned> Stream for GroupSubscription<T> {
    type Item = Result<Delivery<T>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_delivery(cx)
    }
}

/// The means to settle one delivery, shared by a [`Delivery`] and the worker running it.
#[derive(Clone, Debug)]
struct Settle {
    local: u64,
    generation: u64,
    delivery_id: u64,
    control: mpsc::UnboundedSender<Control>,
    settled: Arc<AtomicBool>,
    timeout: Duration,
}

impl Settle {
    fn send(&self, verb: Verb, reply: Option<crate::connection::Reply<()>>) {
        if !matches!(verb, Verb::Extend) {
            self.settled.store(true, Ordering::Release);
        }
        let control = Control::Verb {
            local: self.local,
            generation: self.generation,
            delivery_id: self.delivery_id,
            verb,
            reply,
        };
        if let Err(mpsc::error::SendError(Control::Verb {
            reply: Some(reply), ..
        })) = self.control.send(control)
        {
            let _ = reply.send(Err(Error::Closed));
        }
    }

    async fn verb(&self, verb: Verb) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.send(verb, Some(reply));
        request(answer, self.timeout).await
    }

    fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }
}

/// One event handed to this member of a group. It stays in flight to this member until it is
/// acked, nacked or rejected, or the ack timeout passes (`extend` restarts it).
#[derive(Debug)]
pub struct Delivery<T> {
    pub event: ReceivedEvent<T>,
    pub delivery_id: u64,
    /// 1 on first delivery.
    pub attempt: u32,
    settle: Settle,
}

impl<T> Delivery<T> {
    /// Done with it; answers once the server has recorded the ack durably.
    pub async fn ack(&self) -> Result<()> {
        self.settle.verb(Verb::Ack).await
    }

    /// Acks without waiting for the server (like an XACK): cheaper, but a crash of the server
    /// right after may deliver the event again.
    pub fn ack_nowait(&self) {
        self.settle.send(Verb::Ack, None);
    }

    /// Failed: redeliver after `delay`, or after the group's backoff when `None`.
    pub async fn nack(&self, delay: Option<Duration>, reason: Option<&str>) -> Result<()> {
        self.settle
            .verb(Verb::Nack {
                delay_ms: delay.map(|delay| u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
                reason: reason.map(str::to_owned),
            })
            .await
    }

    /// Still working on it: restart the ack timer.
    pub async fn extend(&self) -> Result<()> {
        self.settle.verb(Verb::Extend).await
    }

    /// Never going to work: dead-letter it now, without retries.
    pub async fn reject(&self, reason: &str) -> Result<()> {
        self.settle
            .verb(Verb::Reject {
                reason: Some(reason.to_owned()),
            })
            .await
    }
}

/// Runs a handler for each delivery of a group subscription: `Ok` acks, `Err` (or a panic)
/// nacks with the error as the reason, and the group's backoff decides when it comes back.
/// A handler may settle its delivery itself (say, `reject`), and the worker then leaves it be.
///
/// Dropping the worker stops it as `close` does, without waiting.
#[derive(Debug)]
#[must_use = "dropping a GroupWorker stops it"]
pub struct GroupWorker {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl GroupWorker {
    pub(crate) fn spawn<T, F, Fut, E>(
        mut subscription: GroupSubscription<T>,
        concurrency: usize,
        handler: F,
    ) -> GroupWorker
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(Delivery<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(concurrency.max(1)));
            let mut running = JoinSet::new();
            let end = loop {
                let permit = tokio::select! {
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break Ok(()),
                    },
                    _ = &mut stopped => break Ok(()),
                };
                let delivery = tokio::select! {
                    delivery = subscription.next() => delivery,
                    _ = &mut stopped => break Ok(()),
                };
                // Reap finished handlers so the set does not grow.
                while running.try_join_next().is_some() {}
                let delivery = match delivery {
                    None => break Ok(()),
                    Some(Ok(delivery)) => delivery,
                    Some(Err(error @ (Error::SubscriptionClosed(_) | Error::Closed))) => {
                        break Err(error);
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "herald group delivery skipped");
                        continue;
                    }
                };
                let handler = handler.clone();
                running.spawn(async move {
                    let settle = delivery.settle.clone();
                    let outcome = AssertUnwindSafe(handler(delivery)).catch_unwind().await;
                    if !settle.is_settled() {
                        let result = match outcome {
                            Ok(Ok(())) => settle.verb(Verb::Ack).await,
                            Ok(Err(error)) => {
                                settle
                                    .verb(Verb::Nack {
                                        delay_ms: None,
                                        reason: Some(error.to_string()),
                                    })
                                    .await
                            }
                            Err(_) => {
                                settle
                                    .verb(Verb::Nack {
                                        delay_ms: None,
                                        reason: Some("the handler panicked".to_owned()),
                                    })
                                    .await
                            }
                        };
                        if let Err(error) = result {
                            tracing::debug!(%error, "settling a herald delivery failed");
                        }
                    }
                    drop(permit);
                });
            };
            while running.join_next().await.is_some() {}
            if !subscription.ended {
                subscription.unsubscribe().await?;
            }
            end
        });
        GroupWorker {
            stop: Some(stop),
            task,
        }
    }

    /// Stops taking deliveries, lets running handlers finish and settle, and leaves the group.
    /// Returns why the subscription ended if it ended on its own first.
    pub async fn close(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(_) => Err(Error::Closed),
        }
    }

    /// Whether the worker stopped (its subscription ended, or it was closed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}
