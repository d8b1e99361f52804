//! Herald's wire types: the bodies of the HTTP API and the frames of the `/v1/ws` protocol
//! (docs/PROTOCOL.md), shared by the server and the clients so that both sides agree by
//! construction.
//!
//! These are kept apart from the engine's internal types: the engine may change its structs
//! freely, while everything here is a public contract, camelCase, and changes only compatibly.
//! Events travel as raw JSON (`Box<RawValue>`), encoded once by `herald-core` and passed through.

pub mod error;
pub mod http;
pub mod realtime;
pub mod start;
pub mod ws;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use start::From;
