//! The client's one error type. Variants separate what a caller reacts to differently: the
//! server refused (look at the code), the request may not have reached it (retry), the client
//! gave up waiting, or the caller's own input is wrong.

use std::time::Duration;

use herald_protocol::{ErrorCode, ErrorDetail};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid event type: {0}")]
    InvalidType(herald_core::SubjectError),
    #[error("invalid pattern: {0}")]
    InvalidPattern(herald_core::SubjectError),
    #[error("invalid room: {0}")]
    InvalidRoom(herald_core::RoomError),
    #[error("invalid event id: {0}")]
    InvalidId(herald_core::EventIdError),
    #[error("invalid timestamp {value:?}: {reason}")]
    InvalidTimestamp { value: String, reason: String },
    /// The event's data does not encode as JSON, or an event's JSON does not read as one.
    #[error("event is not valid JSON: {0}")]
    Encode(serde_json::Error),
    /// The server sent an event this client cannot read, or whose `data` is not the type the
    /// subscriber asked for. The subscription goes on; only this event is affected.
    #[error("event {id} does not decode: {reason}")]
    Decode { id: String, reason: String },
    /// The server refused the request; nothing it asked for happened.
    #[error("herald refused the request: {0}")]
    Server(ErrorDetail),
    /// An HTTP answer that is neither the expected body nor an error body.
    #[error("unexpected HTTP {status} from {url}: {body}")]
    UnexpectedResponse {
        url: String,
        status: u16,
        body: String,
    },
    #[error("HTTP request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Publishes wait in a bounded buffer while the connection is down; this one did not fit.
    #[error(
        "publish buffer is full ({events} events wait for the connection to come back); \
         publish again later"
    )]
    BufferFull { events: usize },
    /// The connection that carried this delivery is gone; the server hands the event out again.
    #[error(
        "delivery {delivery_id} is no longer held: the connection was lost and the event will be redelivered"
    )]
    DeliveryExpired { delivery_id: u64 },
    /// The verb was sent but the connection dropped before the answer: it may or may not have
    /// taken effect.
    #[error("the connection was lost before the server answered")]
    ConnectionLost,
    #[error("the subscription ended: {0}")]
    SubscriptionClosed(ErrorDetail),
    /// The subscriber did not keep up with a live subscription and the client dropped it
    /// (mirroring the server: live subscriptions never slow publishers down).
    #[error("live subscription dropped: the subscriber fell {buffered} events behind")]
    SlowConsumer { buffered: usize },
    #[error("the client is closed")]
    Closed,
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// The server's error code, when the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server(detail) | Error::SubscriptionClosed(detail) => Some(detail.code),
            _ => None,
        }
    }

    /// Whether trying again later may succeed without changing the request.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Server(detail) => matches!(
                detail.code,
                ErrorCode::RateLimited | ErrorCode::Unavailable | ErrorCode::Internal
            ),
            Error::Http { .. }
            | Error::Connect { .. }
            | Error::Timeout(_)
            | Error::BufferFull { .. }
            | Error::ConnectionLost => true,
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
