//! The error body every HTTP response and every WebSocket `error` frame carries:
//! `{"error": {"code", "message", "details"}}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What kind of failure; clients branch on this, people read the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body or frame is not what the endpoint takes (malformed JSON, a wrong type, a missing
    /// or unknown field).
    BadRequest,
    /// An event of the request is invalid; `details.index` names it in a batch.
    InvalidEvent,
    /// A subject or pattern is invalid.
    InvalidSubject,
    /// The request or an event is larger than the server accepts.
    TooLarge,
    /// The content type is not one the endpoint accepts.
    UnsupportedMediaType,
    /// No credentials, or credentials the server does not know.
    Unauthorized,
    /// The credentials do not allow this subject, pattern or resource.
    Forbidden,
    /// No such stream, group or route.
    NotFound,
    /// The resource exists in another shape (a group with another pattern).
    Conflict,
    /// Too many requests, connections, subscriptions or pending publishes.
    RateLimited,
    /// A WebSocket frame the protocol does not allow at this point.
    BadFrame,
    /// No subscription with this `sid` on this connection.
    UnknownSubscription,
    /// The delivery is not in flight to this member (acked, timed out or never made).
    UnknownDelivery,
    /// The server is shutting down or the engine stopped.
    Unavailable,
    /// Storage failed; the request may be retried.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidEvent => "invalid_event",
            ErrorCode::InvalidSubject => "invalid_subject",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownSubscription => "unknown_subscription",
            ErrorCode::UnknownDelivery => "unknown_delivery",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::InvalidEvent
            | ErrorCode::InvalidSubject
            | ErrorCode::BadFrame
            | ErrorCode::UnknownSubscription
            | ErrorCode::UnknownDelivery => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// Structured context, such as `{"index": 3}` for the offending event of a batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ErrorDetail {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorDetail {
        ErrorDetail {
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> ErrorDetail {
        self.details = Some(details);
        self
    }
}

impl std::fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ErrorDetail {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_names() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::UnknownDelivery,
            ErrorCode::UnsupportedMediaType,
        ] {
            let json = serde_json::to_string(&code).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
