//! The admin and info API over HTTP: streams, replay, groups, dead letters, stats, health,
//! and real-time sends to browsers.
//! Usable alone ([`Admin::new`]) by tools that need no WebSocket, or as [`Client::admin`].
//!
//! [`Client::admin`]: crate::Client::admin

use std::sync::Arc;

use herald_protocol::ErrorBody;
use herald_protocol::http::{
    DeadLetterInfo, DeadLetterList, GroupDefinition, GroupInfo, GroupList, Purged, Readiness,
    Redriven, ReplayPage, Stats, StreamInfo, StreamList,
};
use herald_protocol::realtime::{RealtimeSent, Target};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::event::NewEvent;
use crate::options::{ClientOptions, backoff_delay};

#[derive(Clone, Debug)]
pub struct Admin {
    options: Arc<ClientOptions>,
    base: reqwest::Url,
    http: reqwest::Client,
}

impl Admin {
    pub fn new(options: ClientOptions) -> Result<Admin> {
        Admin::with_options(Arc::new(options))
    }

    pub(crate) fn with_options(options: Arc<ClientOptions>) -> Result<Admin> {
        let (base, _) = options.endpoints()?;
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .build()
            .map_err(|source| Error::Http {
                url: base.to_string(),
                source,
            })?;
        Ok(Admin {
            options,
            base,
            http,
        })
    }

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
        let request = self.http.put(url.clone()).json(definition);
        self.send(url, request).await
    }

    pub async fn delete_group(&self, name: &str) -> Result<()> {
        let url = self.url(&["v1", "groups", name], &[]);
        let request = self.http.delete(url.clone());
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
        let request = self.http.post(url.clone());
        let redriven: Redriven = self.send(url, request).await?;
        Ok(redriven.redriven)
    }

    /// Drops every dead letter of `group`; returns how many.
    pub async fn purge_dead_letters(&self, group: &str) -> Result<u64> {
        let url = self.url(&["v1", "groups", group, "dead-letters"], &[]);
        let request = self.http.delete(url.clone());
        let purged: Purged = self.send(url, request).await?;
        Ok(purged.purged)
    }

    /// Sends `event` to browsers — every socket of a user, of a room, or every socket — without
    /// storing it (PRODUCT.md §6). Returns the event's id and the sockets it reached. Not
    /// retried: a send is not idempotent for the browsers that got it.
    pub async fn send_realtime(
        &self,
        target: &Target,
        mut event: NewEvent,
    ) -> Result<RealtimeSent> {
        let segments: Vec<&str> = match target {
            Target::User(user) => vec!["v1", "realtime", "users", user.as_str()],
            Target::Room(room) => vec!["v1", "realtime", "rooms", room.as_str()],
            Target::Broadcast(_) => vec!["v1", "realtime", "broadcast"],
        };
        let body = event.encode(self.options.service_name.as_deref())?;
        let url = self.url(&segments, &[]);
        let request = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.get().to_owned());
        self.send(url, request).await
    }

    pub async fn stats(&self) -> Result<Stats> {
        self.get(&["v1", "stats"], &[]).await
    }

    /// Whether the server process is alive (`/healthz`).
    pub async fn alive(&self) -> Result<bool> {
        let url = self.url(&["healthz"], &[]);
        let request = self.http.get(url.clone());
        let response = self.execute(url, request, true).await?;
        Ok(response.status().is_success())
    }

    /// Whether the server can do its work (`/readyz`), with the state of each part. An
    /// unhealthy server answers 503 with the same body, which is returned, not an error.
    pub async fn health(&self) -> Result<Readiness> {
        let url = self.url(&["readyz"], &[]);
        let request = self.http.get(url.clone());
        let response = self.execute(url.clone(), request, true).await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|source| Error::Http {
            url: url.to_string(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|_| unexpected(&url, status, &bytes))
    }

    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> reqwest::Url {
        let mut url = self.base.clone();
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
        let request = self.http.get(url.clone());
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
        let options = &self.options;
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
