//! [`Client`]: publishing and subscribing over the one WebSocket connection its background
//! task keeps, and the admin/info API over HTTP.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::Pattern;
use herald_protocol::ErrorBody;
use herald_protocol::http::{
    DeadLetterInfo, DeadLetterList, GroupDefinition, GroupInfo, GroupList, PublishResult, Purged,
    Readiness, Redriven, ReplayPage, Stats, StreamInfo, StreamList,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use crate::connection::{
    self, Control, LocalIds, PublishRequest, SubShared, SubSink, SubSpec, Task,
};
use crate::error::{Error, Result};
use crate::event::NewEvent;
use crate::options::{ClientOptions, backoff_delay};
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
    base: reqwest::Url,
    http: reqwest::Client,
    control: mpsc::UnboundedSender<Control>,
    publishes: mpsc::Sender<PublishRequest>,
    ids: LocalIds,
}

impl Client {
    /// Connects, trying `max_retries` more times with backoff if the server cannot be reached,
    /// and keeps the connection up from then on.
    pub async fn connect(options: ClientOptions) -> Result<Client> {
        let (base, ws_url) = options.endpoints()?;
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .build()
            .map_err(|source| Error::Http {
                url: base.to_string(),
                source,
            })?;
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
        let options = Arc::new(options);
        let (control, control_queue) = mpsc::unbounded_channel();
        let (publishes, publish_queue) = mpsc::channel(PUBLISH_QUEUE_REQUESTS_MAX);
        let task = Task::new(options.clone(), ws_url, control_queue, publish_queue, 1);
        tokio::spawn(task.run(conn));
        Ok(Client {
            inner: Arc::new(Inner {
                options,
                base,
                http,
                control,
                publishes,
                ids: LocalIds::default(),
            }),
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
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

    // The admin and info API, over HTTP.

    pub async fn streams(&self) -> Result<Vec<StreamInfo>> {
        let list: StreamList = self.get(&["v1", "streams"], &[]).await?;
        Ok(list.streams)
    }

    pub async fn stream(&self, name: &str) -> Result<StreamInfo> {
        self.get(&["v1", "streams", name], &[]).await
    }

    /// Up to `limit` stored events of `stream` from seq `from`; the page's `next` continues.
    pub async fn replay(&self, stream: &str, from: u64, limit: Option<u32>) -> Result<ReplayPage> {
        let mut query = vec![("from", from.to_string())];
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        self.get(&["v1", "streams", stream, "events"], &query).await
    }

    pub async fn groups(&self) -> Result<Vec<GroupInfo>> {
        let list: GroupList = self.get(&["v1", "groups"], &[]).await?;
        Ok(list.groups)
    }

    pub async fn group(&self, name: &str) -> Result<GroupInfo> {
        self.get(&["v1", "groups", name], &[]).await
    }

    /// Creates group `name` (or confirms it exists with this definition).
    pub async fn create_group(
        &self,
        name: &str,
        definition: &GroupDefinition,
    ) -> Result<GroupInfo> {
        let url = self.url(&["v1", "groups", name], &[]);
        let request = self.inner.http.put(url.clone()).json(definition);
        self.send(url, request).await
    }

    pub async fn delete_group(&self, name: &str) -> Result<()> {
        let url = self.url(&["v1", "groups", name], &[]);
        let request = self.inner.http.delete(url.clone());
        self.send_empty(url, request).await
    }

    pub async fn dead_letters(
        &self,
        group: &str,
        limit: Option<u32>,
    ) -> Result<Vec<DeadLetterInfo>> {
        let query: Vec<_> = limit
            .map(|limit| ("limit", limit.to_string()))
            .into_iter()
            .collect();
        let list: DeadLetterList = self
            .get(&["v1", "groups", group, "dead-letters"], &query)
            .await?;
        Ok(list.dead_letters)
    }

    /// Puts every dead letter of `group` back into the group, attempts reset; returns how many.
    pub async fn redrive_dead_letters(&self, group: &str) -> Result<u64> {
        let url = self.url(&["v1", "groups", group, "dead-letters", "redrive"], &[]);
        let request = self.inner.http.post(url.clone());
        let redriven: Redriven = self.send(url, request).await?;
        Ok(redriven.redriven)
    }

    /// Drops every dead letter of `group`; returns how many.
    pub async fn purge_dead_letters(&self, group: &str) -> Result<u64> {
        let url = self.url(&["v1", "groups", group, "dead-letters"], &[]);
        let request = self.inner.http.delete(url.clone());
        let purged: Purged = self.send(url, request).await?;
        Ok(purged.purged)
    }

    pub async fn stats(&self) -> Result<Stats> {
        self.get(&["v1", "stats"], &[]).await
    }

    /// Whether the server process is alive (`/healthz`).
    pub async fn alive(&self) -> Result<bool> {
        let url = self.url(&["healthz"], &[]);
        let request = self.inner.http.get(url.clone());
        let response = self.execute(url, request, true).await?;
        Ok(response.status().is_success())
    }

    /// Whether the server can do its work (`/readyz`), with the state of each part. An
    /// unhealthy server answers 503 with the same body, which is returned, not an error.
    pub async fn health(&self) -> Result<Readiness> {
        let url = self.url(&["readyz"], &[]);
        let request = self.inner.http.get(url.clone());
        let response = self.execute(url.clone(), request, true).await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|source| Error::Http {
            url: url.to_string(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|_| unexpected(&url, status, &bytes))
    }

    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> reqwest::Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in query {
                pairs.append_pair(key, value);
            }
        }
        url
    }

    async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<T> {
        let url = self.url(segments, query);
        let request = self.inner.http.get(url.clone());
        self.send(url, request).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        url: reqwest::Url,
        request: reqwest::RequestBuilder,
    ) -> Result<T> {
        let idempotent = request
            .try_clone()
            .and_then(|request| request.build().ok())
            .is_some_and(|request| request.method() != reqwest::Method::POST);
        let response = self.execute(url.clone(), request, idempotent).await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|source| Error::Http {
            url: url.to_string(),
            source,
        })?;
        if (200..300).contains(&status) {
            serde_json::from_slice(&bytes).map_err(|_| unexpected(&url, status, &bytes))
        } else {
            Err(error_from(&url, status, &bytes))
        }
    }

    async fn send_empty(&self, url: reqwest::Url, request: reqwest::RequestBuilder) -> Result<()> {
        let response = self.execute(url.clone(), request, true).await?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let bytes = response.bytes().await.unwrap_or_default();
        Err(error_from(&url, status, &bytes))
    }

    /// Sends with the token; an idempotent request is retried after a transport error.
    async fn execute(
        &self,
        url: reqwest::Url,
        request: reqwest::RequestBuilder,
        idempotent: bool,
    ) -> Result<reqwest::Response> {
        let options = &self.inner.options;
        let request = match &options.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let mut attempt = 0;
        loop {
            let this_try = match request.try_clone() {
                Some(this_try) if idempotent && attempt < options.max_retries => this_try,
                _ => {
                    return request.send().await.map_err(|source| Error::Http {
                        url: url.to_string(),
                        source,
                    });
                }
            };
            match this_try.send().await {
                Ok(response) => return Ok(response),
                Err(error) if error.is_connect() || error.is_timeout() => {
                    tracing::debug!(%error, attempt, "herald HTTP request failed; retrying");
                    tokio::time::sleep(backoff_delay(
                        attempt,
                        options.reconnect_delay_initial,
                        options.reconnect_delay_max,
                    ))
                    .await;
                    attempt += 1;
                }
                Err(source) => {
                    return Err(Error::Http {
                        url: url.to_string(),
                        source,
                    });
                }
            }
        }
    }
}

fn checked_pattern(pattern: &str) -> Result<String> {
    Pattern::new(pattern)
        .map(|pattern| pattern.as_str().to_owned())
        .map_err(Error::InvalidPattern)
}

fn error_from(url: &reqwest::Url, status: u16, bytes: &[u8]) -> Error {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => Error::Server(body.error),
        Err(_) => unexpected(url, status, bytes),
    }
}

fn unexpected(url: &reqwest::Url, status: u16, bytes: &[u8]) -> Error {
    Error::UnexpectedResponse {
        url: url.to_string(),
        status,
        body: String::from_utf8_lossy(&bytes[..bytes.len().min(1024)]).into_owned(),
    }
}
