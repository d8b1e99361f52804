//! Real-time sends to browsers (PRODUCT.md §6): who an event goes to, and what the server
//! answers. Shared by `POST /v1/realtime/…`, the `/v1/ws` `send` frame and the clients.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Who a real-time send reaches: `{"user":"u1"}`, `{"room":"chat.general"}` or
/// `{"broadcast":true}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Target {
    /// Every socket of this user (the room `user:<id>`).
    User(String),
    /// Every socket in this room.
    Room(String),
    /// Every connected socket; the value must be `true`.
    Broadcast(bool),
}

/// The answer to a real-time send. Sends are not stored: `delivered` counts the sockets the
/// event was queued for on this server, and for a room the service connections listening to it.
/// On the Redis engine the other processes' sockets are reached too, but not counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RealtimeSent {
    pub id: String,
    pub delivered: u64,
}

/// Connections and rooms of the Socket.IO gateway, in `GET /v1/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RealtimeStats {
    /// Open Socket.IO sockets.
    pub connections: u64,
    /// Distinct users with at least one socket.
    pub users: u64,
    /// Named rooms with at least one member (user rooms not counted).
    pub rooms_total: u64,
    /// The named rooms with the most members, largest first, at most
    /// [`ROOM_STATS_MAX`] of them.
    pub rooms: Vec<RoomStats>,
}

/// `GET /v1/stats` lists at most this many rooms, so that its size stays bounded whatever the
/// number of rooms.
pub const ROOM_STATS_MAX: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoomStats {
    pub name: String,
    pub members: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_on_the_wire() {
        for (json, target) in [
            (r#"{"user":"u1"}"#, Target::User("u1".into())),
            (
                r#"{"room":"chat.general"}"#,
                Target::Room("chat.general".into()),
            ),
            (r#"{"broadcast":true}"#, Target::Broadcast(true)),
        ] {
            assert_eq!(serde_json::from_str::<Target>(json).unwrap(), target);
            assert_eq!(serde_json::to_string(&target).unwrap(), json);
        }
        for bad in [
            r#"{}"#,
            r#"{"user":"u1","room":"r"}"#,
            r#"{"group":"g"}"#,
            r#""user""#,
        ] {
            assert!(serde_json::from_str::<Target>(bad).is_err(), "{bad}");
        }
    }
}
