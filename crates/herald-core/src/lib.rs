//! Herald's vocabulary: events, subjects and patterns, room names, and the subject index.
//!
//! This crate does no I/O and reads no clock: "now" is a parameter. Everything in it is therefore
//! deterministic and tested without a server, and every decoder of untrusted bytes (the fuzz
//! target is [`Event::from_json`]) lives here, away from the network code.

pub mod batch;
pub mod cloudevents;
pub mod event;
pub mod room;
pub mod subject;
pub mod subject_index;

pub use batch::{BatchError, IndexedEventError};
pub use event::{
    EVENT_BYTES_MAX_DEFAULT, Event, EventError, EventId, EventIdError, Limits, ParseContext,
    StoredEvent,
};
pub use room::{
    ROOM_BYTES_MAX, ROOM_TOKENS_MAX, RoomError, RoomName, RoomPattern, USER_ROOM_PREFIX,
};
pub use subject::{Pattern, SUBJECT_BYTES_MAX, SUBJECT_TOKENS_MAX, Subject, SubjectError};
pub use subject_index::{MATCH_CACHE_ENTRIES_MAX, SubjectIndex, SubscriptionId};
