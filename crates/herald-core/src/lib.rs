//! Herald's vocabulary: events, subjects and patterns, room names, and the subject index.
//!
//! This crate does no I/O and reads no clock: "now" is a parameter. Everything in it is therefore
//! deterministic and tested without a server, and every decoder of untrusted bytes (the fuzz
//! target is [`Event::from_json`]) lives here, away from the network code.

/// `AsRef<str>`, `Display` and a `Debug` that names the type, for the validated string newtypes
/// (`Subject`, `Pattern`, `RoomName`, `RoomPattern`), whose field `0` is their text.
macro_rules! str_newtype_impls {
    ($name:ident) => {
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

pub mod batch;
pub mod cloudevents;
pub mod event;
pub mod room;
pub mod subject;
pub mod subject_index;

pub use batch::{BatchError, IndexedEventError};
pub use event::{
    EVENT_BYTES_MAX_DEFAULT, Event, EventError, EventId, EventIdError, IdOrigin, LazyEvent, Limits,
    ParseContext, PublishedEvent, StoredEvent,
};
pub use room::{
    ROOM_BYTES_MAX, ROOM_TOKENS_MAX, RoomError, RoomName, RoomPattern, USER_ROOM_PREFIX,
};
pub use subject::{Pattern, SUBJECT_BYTES_MAX, SUBJECT_TOKENS_MAX, Subject, SubjectError};
pub use subject_index::{MATCH_CACHE_ENTRIES_MAX, SubjectIndex, SubscriptionId};
