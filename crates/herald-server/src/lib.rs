//! `herald serve`: the HTTP API (PRODUCT.md §7), the `/v1/ws` protocol for services
//! (docs/PROTOCOL.md), the Socket.IO gateway for browsers (§6), auth (§8) and metrics (§9),
//! over an engine.
//!
//! The server owns no event state: everything durable lives in the engine. What it adds is
//! the edge — decoding and validating untrusted input, checking permissions, bounding every
//! connection's buffers and rates — and the translation between wire types
//! (`herald-protocol`) and engine types (`convert`).

pub mod auth;
pub mod config;
pub mod convert;
pub mod engine;
pub mod error;
pub mod http;
pub mod metrics;
pub mod realtime;
pub mod serve;
pub mod state;
pub mod ws;

pub use config::ServerConfig;
pub use serve::{RunningServer, start};
