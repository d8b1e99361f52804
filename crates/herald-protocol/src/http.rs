//! Bodies of the HTTP API (PRODUCT.md §7). Requests deny unknown fields; responses only grow.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::From;

/// The outcome of one published event, in request order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishResult {
    pub id: String,
    /// Absent for an ephemeral subject: delivered live, never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The stream already held an event with this id within its dedupe window; `seq` is the
    /// original's and nothing was stored.
    pub duplicate: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamInfo {
    pub name: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub events: u64,
    pub bytes: u64,
    /// Stored since the server started.
    pub published: u64,
    /// Stored per second over the last ten seconds.
    pub published_per_second: f64,
    /// Refused as duplicates since the server started.
    pub duplicates: u64,
    pub live_subscribers: u64,
    pub slow_consumers_dropped: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StreamList {
    pub streams: Vec<StreamInfo>,
}

/// A page of a stream's events, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayPage {
    pub stream: String,
    /// Stored events: the envelope with `stream` and `seq`.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Box<RawValue>>,
    /// The `from` of the next page.
    pub next: u64,
}

/// Backoff between retries: `initialMs × factor^(retry-1)`, capped at `maxMs`, times a random
/// factor in `[1 - jitter, 1 + jitter]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackoffConfig {
    pub initial_ms: u64,
    pub factor: f64,
    pub max_ms: u64,
    pub jitter: f64,
}

/// A group's delivery policy; absent fields take PRODUCT.md §4's defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupPolicyConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

/// `PUT /v1/groups/{name}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupDefinition {
    pub pattern: String,
    /// Where a new group starts; `latest` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<From>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<GroupPolicyConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupInfo {
    pub name: String,
    pub pattern: String,
    pub members: u64,
    /// Stored events the group has not fetched yet.
    pub lag: u64,
    pub in_flight: u64,
    /// Waiting for their retry time.
    pub scheduled: u64,
    pub dead_letters: u64,
    pub delivered: u64,
    pub acked: u64,
    pub nacked: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupList {
    pub groups: Vec<GroupInfo>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterInfo {
    pub group: String,
    #[schema(value_type = Object)]
    pub event: Box<RawValue>,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// RFC 3339.
    pub first_delivered_at: String,
    /// RFC 3339.
    pub dead_at: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterList {
    pub dead_letters: Vec<DeadLetterInfo>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Redriven {
    pub redriven: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Purged {
    pub purged: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub version: String,
    pub uptime_seconds: u64,
    /// Open `/v1/ws` connections, on every process of the bus (each process reports its own
    /// through Redis when several share one).
    pub connections: u64,
    pub streams: Vec<StreamInfo>,
    pub groups: Vec<GroupInfo>,
    /// The Socket.IO gateway; absent from servers older than it.
    #[serde(default)]
    pub realtime: crate::realtime::RealtimeStats,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    pub status: Health,
    pub parts: Vec<ReadinessPart>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReadinessPart {
    pub name: String,
    pub status: Health,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
