//! One error type for every handler: a status and the JSON body of PRODUCT.md §7. Every library
//! error the API can meet maps here, so that bad input is a 4xx naming what is wrong, never a 500.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_core::{BatchError, EventError, SubjectError};
use herald_engine::{EngineError, VerbError};
use herald_protocol::{ErrorBody, ErrorCode, ErrorDetail};

use crate::auth::AuthError;

#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub detail: ErrorDetail,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            detail: ErrorDetail::new(code, message),
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> ApiError {
        self.detail.details = Some(details);
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.detail.code
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.detail.fmt(f)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.detail.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error = %self.detail, "request failed");
        }
        let mut response = (status, axum::Json(ErrorBody { error: self.detail })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// The code of one event's error, alone or at its index in a batch: a body that is not JSON is
/// `bad_request` (as a malformed batch is), an oversized event `too_large`, a bad type
/// `invalid_subject`.
fn event_error_code(error: &EventError) -> ErrorCode {
    match error {
        EventError::Json { .. } => ErrorCode::BadRequest,
        EventError::TooLarge { .. } => ErrorCode::TooLarge,
        EventError::InvalidType(_) => ErrorCode::InvalidSubject,
        _ => ErrorCode::InvalidEvent,
    }
}

impl From<EventError> for ApiError {
    fn from(error: EventError) -> ApiError {
        ApiError::new(event_error_code(&error), error.to_string())
    }
}

impl From<BatchError> for ApiError {
    fn from(error: BatchError) -> ApiError {
        let message = error.to_string();
        match error {
            BatchError::TooLarge { .. } | BatchError::TooManyEvents { .. } => {
                ApiError::new(ErrorCode::TooLarge, message)
            }
            BatchError::InvalidEvents { errors } => {
                let indexes: Vec<serde_json::Value> = errors
                    .iter()
                    .map(|indexed| {
                        serde_json::json!({
                            "index": indexed.index,
                            "message": indexed.error.to_string(),
                        })
                    })
                    .collect();
                let first = errors.first().map_or(0, |indexed| indexed.index);
                // The first offending event's code, as a `pub` frame over /v1/ws answers.
                let code = errors.first().map_or(ErrorCode::InvalidEvent, |indexed| {
                    event_error_code(&indexed.error)
                });
                ApiError::new(code, message)
                    .with_details(serde_json::json!({ "index": first, "errors": indexes }))
            }
            BatchError::Json { .. } | BatchError::NotAnArray { .. } | BatchError::Empty => {
                ApiError::new(ErrorCode::BadRequest, message)
            }
        }
    }
}

impl From<SubjectError> for ApiError {
    fn from(error: SubjectError) -> ApiError {
        ApiError::new(ErrorCode::InvalidSubject, error.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> ApiError {
        let message = error.to_string();
        let code = match error {
            EngineError::EmptyBatch => ErrorCode::BadRequest,
            EngineError::UnknownStream(_) | EngineError::UnknownGroup(_) => ErrorCode::NotFound,
            EngineError::Unroutable { index, .. } => {
                return ApiError::new(ErrorCode::InvalidEvent, message)
                    .with_details(serde_json::json!({ "index": index }));
            }
            EngineError::GroupConflict { .. } => ErrorCode::Conflict,
            EngineError::Config(_) => ErrorCode::BadRequest,
            EngineError::Stopped | EngineError::Backend { .. } => ErrorCode::Unavailable,
            EngineError::Storage { .. } | EngineError::Corrupt { .. } => ErrorCode::Internal,
        };
        ApiError::new(code, message)
    }
}

impl From<VerbError> for ApiError {
    fn from(error: VerbError) -> ApiError {
        let code = match error {
            VerbError::UnknownDelivery(_) => ErrorCode::UnknownDelivery,
            VerbError::GroupGone => ErrorCode::NotFound,
            VerbError::Unavailable(_) => ErrorCode::Unavailable,
        };
        ApiError::new(code, error.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> ApiError {
        ApiError::new(error.code(), error.to_string())
    }
}
