//! [`Client`]: publishing and subscribing over the one WebSocket connection its background
//! task keeps; the admin/info API over HTTP is [`Admin`].

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::{Pattern, RoomName};
use herald_protocol::http::PublishResult;
use herald_protocol::realtime::{RealtimeSent, Target};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use crate::admin::Admin;
use crate::connection::{
    self, Control, LocalIds, PublishRequest, SubShared, SubSink, SubSpec, Task,
};
use crate::error::{Error, Result};
use crate::event::NewEvent;
use crate::options::{ClientOptions, backoff_delay};
use crate::rooms::{Listener, RoomSubscription};
use crate::subscription::{
    GroupOptions, GroupSubscription, GroupWorker, SubHandle, SubscribeOptions, Subscription,
    request,
};

/// Publish requests that may wait for the background task; past this, `publish` waits.
const PUBLISH_QUEUE_REQUESTS_MAX: usize = 1024;

/// A connection to Herald. Cheap to clone: clones share the connection.
///
/// Dropping every clone (and every subscription) closes the connection; [`Client::close`]
/// does it explicitly, after the publishes already taken are answered.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: Arc<ClientOptions>,
    admin: Admin,
    control: mpsc::UnboundedSender<Control>,
    publishes: mpsc::Sender<PublishRequest>,
    ids: LocalIds,
}

impl Client {
    /// Connects, trying `max_retries` more times with backoff if the server cannot be reached,
    /// and keeps the connection up from then on.
    pub async fn connect(options: ClientOptions) -> Result<Client> {
        let (_, ws_url) = options.endpoints()?;
        let options = Arc::new(options);
        let admin = Admin::with_options(options.clone())?;
        let mut attempt = 0;
        let conn = loop {
            match connection::connect(&ws_url, options.token.as_deref(), options.timeout, 1).await {
                Ok(conn) => break conn,
                Err(error) if attempt < options.max_retries => {
                    tracing::debug!(%error, attempt, "connecting to herald");
                    tokio::time::sleep(backoff_delay(
                        attempt,
                        options.reconnect_delay_initial,
                        options.reconnect_delay_max,
                    ))
                    .await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        };
        let (control, control_queue) = mpsc::unbounded_channel();
        let (publishes, publish_queue) = mpsc::channel(PUBLISH_QUEUE_REQUESTS_MAX);
        let task = Task::new(options.clone(), ws_url, control_queue, publish_queue, 1);
        tokio::spawn(task.run(conn));
        Ok(Client {
            inner: Arc::new(Inner {
                options,
                admin,
                control,
                publishes,
                ids: LocalIds::default(),
            }),
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The admin and info API (streams, groups, dead letters, stats, health), over HTTP.
    pub fn admin(&self) -> &Admin {
        &self.inner.admin
    }

    /// Publishes one event of `event_type` with `data`.
    pub async fn publish(&self, event_type: &str, data: &impl Serialize) -> Result<PublishResult> {
        self.publish_event(NewEvent::new(event_type, data)?).await
    }

    /// Publishes one event with its envelope fields (id, correlation id, key, …).
    pub async fn publish_event(&self, event: NewEvent) -> Result<PublishResult> {
        let mut results = self.publish_batch(vec![event]).await?;
        results
            .pop()
            .ok_or_else(|| Error::Protocol("puback without a result".to_owned()))
    }

    /// Publishes events as one batch: all are stored, in order, or none is. Results are in
    /// the order of `events`.
    pub async fn publish_batch(&self, events: Vec<NewEvent>) -> Result<Vec<PublishResult>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let source = self.inner.options.service_name.as_deref();
        let encoded = events
            .into_iter()
            .map(|mut event| event.encode(source))
            .collect::<Result<Vec<_>>>()?;
        let (reply, answer) = oneshot::channel();
        let timeout = self.inner.options.timeout;
        let sent = tokio::time::timeout(
            timeout,
            self.inner
                .publishes
                .send(PublishRequest::new(encoded, reply)),
        )
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Error::Closed),
            Err(_) => return Err(Error::Timeout(timeout)),
        }
        request(answer, timeout).await
    }

    /// Sends an event of `event_type` with `data` to every browser socket of `user` (the
    /// JWT's `sub`), without storing it. Returns how many sockets it reached.
    pub async fn publish_to_user(
        &self,
        user: &str,
        event_type: &str,
        data: &impl Serialize,
    ) -> Result<RealtimeSent> {
        let event = NewEvent::new(event_type, data)?;
        self.send_realtime(&Target::User(user.to_owned()), event)
            .await
    }

    /// Sends an event to every browser socket in `room`, without storing it.
    pub async fn publish_to_room(
        &self,
        room: &str,
        event_type: &str,
        data: &impl Serialize,
    ) -> Result<RealtimeSent> {
        let event = NewEvent::new(event_type, data)?;
        self.send_realtime(&Target::Room(room.to_owned()), event)
            .await
    }

    /// Sends an event to every connected browser socket, without storing it.
    pub async fn broadcast(&self, event_type: &str, data: &impl Serialize) -> Result<RealtimeSent> {
        let event = NewEvent::new(event_type, data)?;
        self.send_realtime(&Target::Broadcast(true), event).await
    }

    /// Sends an event with its envelope fields to browsers (see [`Admin::send_realtime`]).
    pub async fn send_realtime(&self, target: &Target, event: NewEvent) -> Result<RealtimeSent> {
        self.inner.admin.send_realtime(target, event).await
    }

    /// A live subscription to `pattern`: every matching event from now (or `options.from`).
    pub async fn subscribe<T: DeserializeOwned>(
        &self,
        pattern: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription<T>> {
        let (sender, receiver) = mpsc::channel(self.inner.options.live_buffer_events);
        let spec = SubSpec {
            pattern: checked_pattern(pattern)?,
            group: None,
            from: options.from,
            max_in_flight: None,
            policy: None,
        };
        let (handle, confirmed) = self.open(spec, SubSink::Live(sender))?;
        let subscription = Subscription {
            handle,
            receiver,
            ended: false,
            _data: PhantomData,
        };
        // On failure, dropping the subscription withdraws it from the task.
        request(confirmed, self.inner.options.timeout).await?;
        Ok(subscription)
    }

    /// Joins consumer group `group` on `pattern` (creating the group if needed); deliveries
    /// are settled by hand through [`GroupSubscription::next`].
    pub async fn group_subscription<T: DeserializeOwned>(
        &self,
        pattern: &str,
        group: &str,
        options: GroupOptions,
    ) -> Result<GroupSubscription<T>> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let spec = SubSpec {
            pattern: checked_pattern(pattern)?,
            group: Some(group.to_owned()),
            from: options.from,
            max_in_flight: options.max_in_flight,
            policy: options.policy,
        };
        let (handle, confirmed) = self.open(spec, SubSink::Group(sender))?;
        let subscription = GroupSubscription {
            handle,
            receiver,
            ended: false,
            _data: PhantomData,
        };
        request(confirmed, self.inner.options.timeout).await?;
        Ok(subscription)
    }

    /// Joins consumer group `group` on `pattern` and runs `handler` for each delivery: `Ok`
    /// acks it, `Err` nacks it and the group's backoff decides when it comes back.
    pub async fn subscribe_group<T, F, Fut, E>(
        &self,
        pattern: &str,
        group: &str,
        options: GroupOptions,
        handler: F,
    ) -> Result<GroupWorker>
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(crate::Delivery<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let concurrency = options.concurrency;
        let subscription = self.group_subscription(pattern, group, options).await?;
        Ok(GroupWorker::spawn(subscription, concurrency, handler))
    }

    /// Listens to `room` as a browser socket in it would (seed 004's `joinRoom`): every event
    /// sent to the room from now on, live and at most once. The token needs the room in its
    /// `rooms` (or `subscribe`) patterns.
    pub async fn join_room<T: DeserializeOwned>(&self, room: &str) -> Result<RoomSubscription<T>> {
        let room = RoomName::new(room).map_err(Error::InvalidRoom)?;
        let local = self.inner.ids.next();
        let shared = Arc::new(SubShared::default());
        let (confirm, confirmed) = oneshot::channel();
        let (sink, receiver) = mpsc::channel(self.inner.options.live_buffer_events);
        self.inner
            .control
            .send(Control::Join {
                local,
                room: room.as_str().to_owned(),
                listener: Listener {
                    sink,
                    shared: shared.clone(),
                    confirm: Some(confirm),
                },
            })
            .map_err(|_| Error::Closed)?;
        let subscription = RoomSubscription {
            room: room.as_str().to_owned(),
            local,
            control: self.inner.control.clone(),
            shared,
            receiver,
            timeout: self.inner.options.timeout,
            ended: false,
            _data: PhantomData,
        };
        // On failure, dropping the subscription withdraws it from the task.
        request(confirmed, self.inner.options.timeout).await?;
        Ok(subscription)
    }

    fn open(
        &self,
        spec: SubSpec,
        sink: SubSink,
    ) -> Result<(SubHandle, oneshot::Receiver<Result<()>>)> {
        let local = self.inner.ids.next();
        let shared = Arc::new(SubShared::default());
        let (confirm, confirmed) = oneshot::channel();
        self.inner
            .control
            .send(Control::Subscribe {
                local,
                spec,
                sink,
                shared: shared.clone(),
                confirm,
            })
            .map_err(|_| Error::Closed)?;
        let handle = SubHandle {
            local,
            control: self.inner.control.clone(),
            shared,
            timeout: self.inner.options.timeout,
        };
        Ok((handle, confirmed))
    }

    /// A round trip over the WebSocket.
    pub async fn ping(&self) -> Result<Duration> {
        let started = Instant::now();
        let (reply, answer) = oneshot::channel();
        self.inner
            .control
            .send(Control::Ping { reply })
            .map_err(|_| Error::Closed)?;
        request(answer, self.inner.options.timeout).await?;
        Ok(started.elapsed())
    }

    /// Closes the connection once the publishes already taken are answered (or the timeout
    /// passes). Subscriptions end with [`Error::Closed`].
    pub async fn close(self) {
        let _ = self.inner.control.send(Control::Close);
        // The task drops its end of the publish channel when it is done.
        let _ =
            tokio::time::timeout(self.inner.options.timeout, self.inner.publishes.closed()).await;
    }
}

fn checked_pattern(pattern: &str) -> Result<String> {
    Pattern::new(pattern)
        .map(|pattern| pattern.as_str().to_owned())
        .map_err(Error::InvalidPattern)
}
