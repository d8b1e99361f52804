//! Several processes on one Redis are one bus for browsers too: a real-time send (to a user,
//! a room, everyone) reaches sockets and room-listening `/v1/ws` connections on every process,
//! whichever one received it. The process that receives a send delivers it to its own sockets
//! and queues it on the engine's relay (`herald_engine::Relay`, Redis pub/sub); every other
//! process delivers what it receives to its own. The relay never hands a process its own
//! message, so each socket gets a send once. Real-time is at most once across processes as it
//! is within one: a full queue, a Redis outage or a process restarting loses sends.
//!
//! Forwarding rules are not relayed: every process follows the streams itself, so each one
//! forwards every stored event to its own sockets (see `forwarding.rs`).
//!
//! Each process also reports its sockets, users and rooms on the relay, so that `/v1/stats`
//! adds them up across processes ([`merge`]).
//!
//! With the embedded engine there is one process and no relay.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};

use bytes::{BufMut, Bytes, BytesMut};
use herald_engine::{EngineError, Relay, RelayInbox};
use herald_protocol::realtime::{ROOM_STATS_MAX, RealtimeStats, RoomStats, Target};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::realtime::Realtime;
use crate::realtime::fanout::Payload;
use crate::state::ServerEngine;

/// The relay's topic: its channel is `<key prefix>:relay:realtime`.
const TOPIC: &str = "realtime";

/// Sends waiting to go to other processes, and sends from them waiting to be delivered here.
/// Delivering one is quick (each socket's emit only queues), so the inbox drains fast; the
/// outgoing queue absorbs a burst while Redis answers the previous batch.
pub const RELAY_QUEUE_MESSAGES_MAX: usize = 16 * 1024;

/// Users a process lists by name in its report: enough for `/v1/stats` to count a user with
/// sockets on several processes once. Past it, the others are counted but not named, and
/// the total across processes may count one user more than once.
const REPORT_USERS_MAX: usize = 1000;

/// Rooms a process lists in its report (its largest): enough for the largest rooms across
/// processes to come out right unless a room is small on every process but large in total.
const REPORT_ROOMS_MAX: usize = 1000;

/// The relay of the Redis engine, opened and subscribed; `None` for the embedded engine.
pub async fn open(engine: &ServerEngine) -> Result<Option<(Relay, RelayInbox)>, EngineError> {
    match engine {
        ServerEngine::Embedded(_) => Ok(None),
        ServerEngine::Redis(redis) => redis.relay(TOPIC, RELAY_QUEUE_MESSAGES_MAX).await.map(Some),
    }
}

/// Delivers what other processes send, and renews this process's report, until the engine
/// closes or the server drains.
pub fn spawn(realtime: &Arc<Realtime>, inbox: RelayInbox, shutdown: CancellationToken) {
    tokio::spawn(deliver_forever(realtime.clone(), inbox));
    if let Some(relay) = realtime.relay.clone() {
        tokio::spawn(report_forever(Arc::downgrade(realtime), relay, shutdown));
    }
}

async fn deliver_forever(realtime: Arc<Realtime>, mut inbox: RelayInbox) {
    while let Some(message) = inbox.recv().await {
        let Some((target, json)) = decode(&message) else {
            tracing::warn!("a relayed real-time send does not decode");
            continue;
        };
        let Some(payload) = Payload::from_json(json) else {
            tracing::warn!("a relayed real-time send holds no event");
            continue;
        };
        realtime.metrics.relayed_in.inc();
        realtime.deliver(&target, json, &payload);
    }
}

async fn report_forever(realtime: Weak<Realtime>, relay: Relay, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let report = match realtime.upgrade() {
            Some(realtime) => realtime.report(),
            None => return,
        };
        match serde_json::to_vec(&report) {
            Ok(report) => {
                if let Err(error) = relay.report(&report).await {
                    tracing::warn!(%error, "reporting real-time stats to other processes failed");
                }
            }
            Err(error) => tracing::warn!(%error, "encoding the real-time report failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(relay.report_interval()) => {}
        }
    }
}

/// A send as relayed: the target's kind (`U`, `R` or `B`), for a user or a room its name's
/// length in decimal, `:` and the name, then the event's JSON.
pub fn encode(target: &Target, event_json: &[u8]) -> Bytes {
    let (kind, name) = match target {
        Target::User(user) => (b'U', Some(user.as_str())),
        Target::Room(room) => (b'R', Some(room.as_str())),
        Target::Broadcast(_) => (b'B', None),
    };
    let mut message = BytesMut::with_capacity(16 + name.map_or(0, str::len) + event_json.len());
    message.put_u8(kind);
    if let Some(name) = name {
        message.put_slice(name.len().to_string().as_bytes());
        message.put_u8(b':');
        message.put_slice(name.as_bytes());
    }
    message.put_slice(event_json);
    message.freeze()
}

/// The target and the event's JSON of a relayed send; `None` if it is not one.
pub fn decode(message: &[u8]) -> Option<(Target, &[u8])> {
    let (&kind, rest) = message.split_first()?;
    if kind == b'B' {
        return Some((Target::Broadcast(true), rest));
    }
    let colon = rest.iter().position(|&byte| byte == b':')?;
    let length: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
    let name = rest.get(colon + 1..colon + 1 + length)?;
    let name = std::str::from_utf8(name).ok()?.to_owned();
    let json = &rest[colon + 1 + length..];
    match kind {
        b'U' => Some((Target::User(name), json)),
        b'R' => Some((Target::Room(name), json)),
        _ => None,
    }
}

/// One process's sockets, users and rooms, as the others read it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub connections: u64,
    /// Open `/v1/ws` connections; absent from the reports of older processes.
    #[serde(default)]
    pub service_connections: u64,
    pub users: u64,
    /// At most [`REPORT_USERS_MAX`] of the users, by name.
    pub user_names: Vec<String>,
    pub rooms_total: u64,
    /// The largest rooms, at most [`REPORT_ROOMS_MAX`].
    pub rooms: Vec<RoomStats>,
}

impl Report {
    /// From a process's connection count and members per room (user rooms included, named
    /// `user:<id>`).
    pub fn new(
        connections: u64,
        service_connections: u64,
        members: &HashMap<String, u64>,
    ) -> Report {
        let mut user_names = Vec::new();
        let mut users = 0;
        let mut rooms = Vec::new();
        for (name, count) in members {
            match name.strip_prefix(herald_core::USER_ROOM_PREFIX) {
                Some(user) => {
                    users += 1;
                    if user_names.len() < REPORT_USERS_MAX {
                        user_names.push(user.to_owned());
                    }
                }
                None => rooms.push(RoomStats {
                    name: name.clone(),
                    members: *count,
                }),
            }
        }
        let rooms_total = rooms.len() as u64;
        sort_largest_first(&mut rooms);
        rooms.truncate(REPORT_ROOMS_MAX);
        Report {
            connections,
            service_connections,
            users,
            user_names,
            rooms_total,
            rooms,
        }
    }
}

fn sort_largest_first(rooms: &mut [RoomStats]) {
    rooms.sort_by(|a, b| b.members.cmp(&a.members).then_with(|| a.name.cmp(&b.name)));
}

/// The stats of several processes as one: connections add up; a user or a room present on
/// several processes counts once and its members add up. Exact while each process names all
/// its users and rooms in its report; past that, users and rooms it only counts are taken as
/// distinct from the others' (an upper bound).
pub fn merge<'a>(reports: impl IntoIterator<Item = &'a Report>) -> Everywhere {
    let mut connections = 0;
    let mut service_connections = 0;
    let mut user_names = BTreeSet::new();
    let mut users_unnamed = 0;
    let mut members: HashMap<&str, u64> = HashMap::new();
    let mut rooms_unlisted = 0;
    for report in reports {
        connections += report.connections;
        service_connections += report.service_connections;
        user_names.extend(report.user_names.iter().map(String::as_str));
        users_unnamed += report.users.saturating_sub(report.user_names.len() as u64);
        for room in &report.rooms {
            *members.entry(room.name.as_str()).or_default() += room.members;
        }
        rooms_unlisted += report.rooms_total.saturating_sub(report.rooms.len() as u64);
    }
    let rooms_total = members.len() as u64 + rooms_unlisted;
    let mut rooms: Vec<RoomStats> = members
        .into_iter()
        .map(|(name, members)| RoomStats {
            name: name.to_owned(),
            members,
        })
        .collect();
    sort_largest_first(&mut rooms);
    rooms.truncate(ROOM_STATS_MAX);
    Everywhere {
        service_connections,
        realtime: RealtimeStats {
            connections,
            users: user_names.len() as u64 + users_unnamed,
            rooms_total,
            rooms,
        },
    }
}

/// What every process of the bus has connected: `/v1/ws` connections and the gateway's
/// sockets, users and rooms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Everywhere {
    pub service_connections: u64,
    pub realtime: RealtimeStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_round_trip() {
        let json = br#"{"type":"a.b","data":1}"#;
        for target in [
            Target::User("u1".into()),
            Target::User("we:ird\nuser 42".into()),
            Target::Room("chat.general".into()),
            Target::Broadcast(true),
        ] {
            let message = encode(&target, json);
            assert_eq!(decode(&message), Some((target, &json[..])));
        }
        assert_eq!(&encode(&Target::User("u1".into()), b"{}")[..], b"U2:u1{}");
        for bad in [&b""[..], b"X2:u1{}", b"U9:u1{}", b"Ux:u1{}", b"U2u1{}"] {
            assert_eq!(decode(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    fn members(list: &[(&str, u64)]) -> HashMap<String, u64> {
        list.iter()
            .map(|(name, count)| (name.to_string(), *count))
            .collect()
    }

    fn room(name: &str, members: u64) -> RoomStats {
        RoomStats {
            name: name.into(),
            members,
        }
    }

    #[test]
    fn reports_add_up_across_processes() {
        let one = Report::new(
            3,
            1,
            &members(&[("user:u1", 2), ("user:u2", 1), ("chat.a", 3), ("chat.b", 1)]),
        );
        assert_eq!(
            (one.users, one.rooms_total, one.rooms.clone()),
            (2, 2, vec![room("chat.a", 3), room("chat.b", 1)])
        );
        let two = Report::new(
            2,
            4,
            &members(&[("user:u1", 1), ("user:u3", 1), ("chat.a", 2)]),
        );
        assert_eq!(
            merge([&one, &two]),
            Everywhere {
                service_connections: 5,
                realtime: RealtimeStats {
                    connections: 5,
                    users: 3,
                    rooms_total: 2,
                    rooms: vec![room("chat.a", 5), room("chat.b", 1)],
                },
            }
        );
        // One process alone: its own stats.
        assert_eq!(
            merge([&two]),
            Everywhere {
                service_connections: 4,
                realtime: RealtimeStats {
                    connections: 2,
                    users: 2,
                    rooms_total: 1,
                    rooms: vec![room("chat.a", 2)],
                },
            }
        );
        assert_eq!(merge([]), Everywhere::default());
    }

    #[test]
    fn reports_past_their_caps_count_what_they_do_not_name() {
        let many: HashMap<String, u64> = (0..REPORT_USERS_MAX + 5)
            .map(|n| (format!("user:u{n}"), 1))
            .chain((0..REPORT_ROOMS_MAX + 7).map(|n| (format!("room.r{n}"), 1)))
            .collect();
        let report = Report::new(1, 0, &many);
        assert_eq!(report.user_names.len(), REPORT_USERS_MAX);
        assert_eq!(report.rooms.len(), REPORT_ROOMS_MAX);
        let alone = merge([&report]).realtime;
        assert_eq!(alone.users, (REPORT_USERS_MAX + 5) as u64);
        assert_eq!(alone.rooms_total, (REPORT_ROOMS_MAX + 7) as u64);
        assert_eq!(alone.rooms.len(), ROOM_STATS_MAX);
    }
}
