//! The Rust client for Herald (PRODUCT.md §11).
//!
//! One [`Client`] keeps one WebSocket connection to the server (`/v1/ws`, docs/PROTOCOL.md)
//! for publishing and subscribing, reconnects it with backoff when it drops, and re-creates its
//! subscriptions on the new connection. The admin and info calls (streams, groups, dead
//! letters, stats, health) go over HTTP.
//!
//! ```no_run
//! # async fn example() -> Result<(), herald_client::Error> {
//! use herald_client::{Client, ClientOptions, GroupOptions};
//!
//! let client = Client::connect(ClientOptions::new("http://127.0.0.1:3003").service_name("photo-api")).await?;
//! client.publish("photo.uploaded", &serde_json::json!({"photoId": "p1"})).await?;
//!
//! let worker = client
//!     .subscribe_group("photo.*", "thumbnails", GroupOptions::default(), |delivery: herald_client::Delivery<serde_json::Value>| async move {
//!         println!("{} {}", delivery.event.event_type, delivery.event.data);
//!         Ok::<(), std::io::Error>(())
//!     })
//!     .await?;
//! # worker.close().await
//! # }
//! ```
//!
//! Real-time sends to browsers (users, rooms, broadcast) go over HTTP; a service listens to a
//! room with [`Client::join_room`].

mod admin;
mod client;
mod connection;
mod error;
mod event;
mod options;
mod rooms;
mod subscription;

pub use admin::Admin;
pub use client::Client;
pub use error::{Error, Result};
pub use event::{NewEvent, ReceivedEvent};
pub use herald_protocol::From;
pub use herald_protocol::http::{
    BackoffConfig, DeadLetterInfo, GroupDefinition, GroupInfo, GroupPolicyConfig, Health,
    PublishResult, Readiness, ReadinessPart, ReplayPage, Stats, StreamInfo,
};
pub use herald_protocol::realtime::{RealtimeSent, Target};
pub use herald_protocol::{ErrorCode, ErrorDetail};
pub use options::ClientOptions;
pub use rooms::RoomSubscription;
pub use subscription::{
    Delivery, GroupOptions, GroupSubscription, GroupWorker, SubscribeOptions, Subscription,
};
