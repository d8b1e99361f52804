//! Herald's delivery engine: what turns logs into a bus.
//!
//! - [`api`]: the engine interface the server talks to, shaped so that Redis Streams and NATS
//!   JetStream engines can implement it too.
//! - [`embedded`]: the engine on Herald's own log, in this process.
//! - [`redis`](mod@redis): the engine on Redis Streams (standalone or Cluster), for several
//!   processes as one bus.
//! - [`conformance`]: the test suite every engine must pass, written against [`api`] alone.

pub mod api;
pub mod config;
pub mod conformance;
mod deadlines;
pub mod embedded;
pub mod redis;

pub use self::redis::{RedisConfig, RedisEngine, Relay, RelayInbox};
pub use api::{
    Backoff, Closed, DeadLetter, Delivery, Engine, EngineError, GroupMember, GroupPolicy,
    GroupSpec, GroupStats, LiveSubscription, MemberVerbs, PublishOutcome, StartAt, StreamStats,
    VerbError,
};
pub use config::{EngineConfig, Storage, StreamConfig};
pub use embedded::EmbeddedEngine;
/// A histogram of fsync durations ([`EmbeddedEngine::fsync_times`]); the logs' I/O timed
/// ([`EmbeddedEngine::io_times`]).
pub use herald_log::{FsyncSnapshot, IoSnapshot};
