//! Real-time delivery to browsers (PRODUCT.md §6): a Socket.IO v4 gateway at `/socket.io/`,
//! on socketioxide.
//!
//! | module | what it owns |
//! | --- | --- |
//! | `jwt.rs` | verifying a browser's token into its user and grants |
//! | `gateway.rs` | the socketioxide handlers: handshake auth, join/leave, subscribe/unsubscribe, publish |
//! | `fanout.rs` | the payload a browser receives, and emitting it to sockets; slow sockets |
//! | `forwarding.rs` | `[[realtime.forward]]` rules: live engine subscriptions sending stored events to browsers |
//! | `listeners.rs` | service connections listening to rooms (`/v1/ws` `join`), and their bounded queues |
//! | `relay.rs` | sends and stats across the processes on one Redis (the engine's relay) |
//!
//! The gateway owns no event state: sends to users, rooms and everyone are not stored (like
//! ephemeral subjects), subscriptions are live engine subscriptions, and rooms live in
//! socketioxide's adapter. What [`Realtime`] adds is the bookkeeping that limits and stats need:
//! each socket's session (its user, grants, rooms and subscriptions) and members per room.
//!
//! Lock order: `Realtime::registry`, then a session's `state`; neither is held across an
//! `.await` nor while emitting to a socket.

pub mod fanout;
pub mod forwarding;
pub mod gateway;
pub mod jwt;
pub mod listeners;
pub mod relay;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use herald_core::{Event, Pattern, RoomError, RoomName, RoomPattern, Subject, SubjectError};
use herald_engine::Relay;
use herald_protocol::ErrorCode;
use herald_protocol::realtime::{RealtimeStats, Target};
use parking_lot::Mutex;
use socketioxide::SocketIo;
use socketioxide::socket::Sid;

use crate::config::{BrowserGrantsConfig, RealtimeConfig};
use crate::error::ApiError;
use crate::metrics::RealtimeMetrics;
use crate::ws::rate::TokenBucket;
use fanout::Payload;
use jwt::JwtVerifier;

/// Every socket of a user is in this room. Room names starting with `user:` are refused
/// ([`RoomName`]), so no socket or service can join or target another user's room by name.
pub fn user_room(user: &str) -> String {
    format!("{}{user}", herald_core::USER_ROOM_PREFIX)
}

/// What a browser may do: the token's `herald` claim, or `[realtime.anonymous]`. Parsed once,
/// at the handshake.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrowserGrants {
    rooms: Vec<RoomPattern>,
    subscribe: Vec<Pattern>,
    publish: Vec<Pattern>,
}

/// A pattern in a grant that is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("{field} pattern {pattern:?}: {source}")]
    Subject {
        field: &'static str,
        pattern: String,
        source: SubjectError,
    },
    #[error("rooms pattern {pattern:?}: {source}")]
    Room { pattern: String, source: RoomError },
}

impl BrowserGrants {
    pub fn parse(config: &BrowserGrantsConfig) -> Result<BrowserGrants, GrantError> {
        let parse = |field: &'static str, patterns: &[String]| {
            patterns
                .iter()
                .map(|text| {
                    Pattern::new(text).map_err(|source| GrantError::Subject {
                        field,
                        pattern: text.clone(),
                        source,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let rooms = config
            .rooms
            .iter()
            .map(|text| {
                RoomPattern::new(text).map_err(|source| GrantError::Room {
                    pattern: text.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BrowserGrants {
            rooms,
            subscribe: parse("subscribe", &config.subscribe)?,
            publish: parse("publish", &config.publish)?,
        })
    }

    pub fn may_join(&self, room: &RoomName) -> bool {
        self.rooms.iter().any(|pattern| pattern.matches(room))
    }

    /// Only when one grant covers the whole pattern, as for service tokens.
    pub fn may_subscribe(&self, pattern: &Pattern) -> bool {
        self.subscribe.iter().any(|grant| grant.covers(pattern))
    }

    pub fn may_publish(&self, subject: &Subject) -> bool {
        self.publish.iter().any(|pattern| pattern.matches(subject))
    }

    /// For refusals: the patterns granted for `field`.
    fn list(&self, field: &str) -> String {
        let list: Vec<&str> = match field {
            "rooms" => self.rooms.iter().map(RoomPattern::as_str).collect(),
            "subscribe" => self.subscribe.iter().map(Pattern::as_str).collect(),
            _ => self.publish.iter().map(Pattern::as_str).collect(),
        };
        if list.is_empty() {
            return format!("it has no {field} patterns");
        }
        format!("its {field} patterns: {}", list.join(", "))
    }
}

/// One connected socket.
#[derive(Debug)]
pub struct Session {
    /// The token's `sub`; `None` for an anonymous socket.
    pub user: Option<String>,
    pub grants: BrowserGrants,
    /// Set once the socket is found too slow: nothing more is sent to it while it is being
    /// disconnected.
    slow: AtomicBool,
    state: Mutex<SessionState>,
}

#[derive(Debug)]
struct SessionState {
    /// Named rooms joined (the user room is not counted against the limit).
    rooms: BTreeSet<String>,
    /// Pattern → the task forwarding its events; dropping it ends the engine subscription.
    subscriptions: HashMap<String, AbortOnDrop>,
    bucket: TokenBucket,
}

/// A task that ends when its handle is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Session {
    pub fn new(user: Option<String>, grants: BrowserGrants, publish_rate: u64) -> Session {
        Session {
            user,
            grants,
            slow: AtomicBool::new(false),
            state: Mutex::new(SessionState {
                rooms: BTreeSet::new(),
                subscriptions: HashMap::new(),
                bucket: TokenBucket::new(publish_rate, Instant::now()),
            }),
        }
    }

    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }

    /// Marks the session slow; true the first time.
    fn mark_slow(&self) -> bool {
        !self.slow.swap(true, Ordering::Relaxed)
    }

    fn take_publish_tokens(&self, count: u64) -> bool {
        self.state.lock().bucket.try_take(count, Instant::now())
    }
}

/// Sockets and members per room, for limits and stats.
#[derive(Debug, Default)]
struct Registry {
    sessions: HashMap<Sid, Arc<Session>>,
    /// Members per room, user rooms included.
    rooms: HashMap<String, u64>,
}

impl Registry {
    fn add_member(&mut self, room: &str) {
        *self.rooms.entry(room.to_owned()).or_default() += 1;
    }

    fn remove_member(&mut self, room: &str) {
        if let Some(members) = self.rooms.get_mut(room) {
            *members = members.saturating_sub(1);
            if *members == 0 {
                self.rooms.remove(room);
            }
        }
    }
}

/// The gateway: the Socket.IO server, the token verifier, and the sessions.
#[derive(Debug)]
pub struct Realtime {
    io: SocketIo,
    config: RealtimeConfig,
    verifier: Option<JwtVerifier>,
    anonymous: BrowserGrants,
    registry: Mutex<Registry>,
    /// Service connections listening to rooms; what is sent to a room reaches them too.
    listeners: Arc<listeners::RoomListeners>,
    /// The other processes on the same Redis: sends go to their sockets too.
    relay: Option<Relay>,
    metrics: RealtimeMetrics,
    /// This process's open `/v1/ws` connections, reported with its sockets.
    service_connections: Arc<AtomicUsize>,
}

/// Why a realtime operation cannot be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum RealtimeConfigError {
    #[error("realtime.anonymous: {0}")]
    Anonymous(#[from] GrantError),
    #[error("{0}")]
    Jwt(#[from] jwt::JwtConfigError),
}

impl Realtime {
    pub fn new(
        io: SocketIo,
        config: &RealtimeConfig,
        metrics: RealtimeMetrics,
        relay: Option<Relay>,
        service_connections: Arc<AtomicUsize>,
    ) -> Result<Realtime, RealtimeConfigError> {
        let verifier = match &config.jwt {
            Some(jwt) => Some(JwtVerifier::new(jwt)?),
            None => None,
        };
        Ok(Realtime {
            io,
            config: config.clone(),
            verifier,
            anonymous: BrowserGrants::parse(&config.anonymous)?,
            registry: Mutex::new(Registry::default()),
            listeners: Arc::new(listeners::RoomListeners::new(
                metrics.room_listener_sent.clone(),
                metrics.room_listener_drops.clone(),
            )),
            relay,
            metrics,
            service_connections,
        })
    }

    pub fn io(&self) -> &SocketIo {
        &self.io
    }

    pub fn config(&self) -> &RealtimeConfig {
        &self.config
    }

    pub fn listeners(&self) -> &Arc<listeners::RoomListeners> {
        &self.listeners
    }

    pub fn connections(&self) -> usize {
        self.registry.lock().sessions.len()
    }

    pub fn session(&self, sid: Sid) -> Option<Arc<Session>> {
        self.registry.lock().sessions.get(&sid).cloned()
    }

    /// Records an admitted socket (and its user room's new member), unless `max` sockets are
    /// connected already.
    fn add_session(&self, sid: Sid, session: Arc<Session>, max: usize) -> bool {
        let mut registry = self.registry.lock();
        if registry.sessions.len() >= max {
            return false;
        }
        if let Some(user) = &session.user {
            registry.add_member(&user_room(user));
        }
        registry.sessions.insert(sid, session);
        self.metrics.connections.set(registry.sessions.len() as i64);
        true
    }

    /// Forgets a disconnected socket: its rooms lose a member, its subscriptions end.
    fn remove_session(&self, sid: Sid) {
        let session = {
            let mut registry = self.registry.lock();
            let Some(session) = registry.sessions.remove(&sid) else {
                return;
            };
            self.metrics.connections.set(registry.sessions.len() as i64);
            if let Some(user) = &session.user {
                registry.remove_member(&user_room(user));
            }
            let state = session.state.lock();
            for room in &state.rooms {
                registry.remove_member(room);
            }
            drop(state);
            session
        };
        // Outside the registry lock: aborting tasks takes their own locks.
        let subscriptions = std::mem::take(&mut session.state.lock().subscriptions);
        drop(subscriptions);
    }

    /// Records that a socket joins a named room: false if it was in it already. Refused past
    /// `rooms_per_socket_max`, and for a socket already gone.
    fn join_room(&self, sid: Sid, room: &str) -> Result<bool, ApiError> {
        let mut registry = self.registry.lock();
        let Some(session) = registry.sessions.get(&sid).cloned() else {
            return Err(socket_gone());
        };
        let mut state = session.state.lock();
        if state.rooms.contains(room) {
            return Ok(false);
        }
        let max = self.config.limits.rooms_per_socket_max;
        if state.rooms.len() >= max {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "this socket is in {max} rooms, its limit (realtime.limits.rooms_per_socket_max)"
                ),
            ));
        }
        state.rooms.insert(room.to_owned());
        drop(state);
        registry.add_member(room);
        Ok(true)
    }

    /// Records that a socket leaves a room: false if it was not in it.
    fn leave_room(&self, sid: Sid, room: &str) -> bool {
        let mut registry = self.registry.lock();
        let Some(session) = registry.sessions.get(&sid).cloned() else {
            return false;
        };
        let left = session.state.lock().rooms.remove(room);
        if left {
            registry.remove_member(room);
        }
        left
    }

    /// Whether the socket may add a subscription: not already subscribed to `pattern`, and
    /// under the limit. `Ok(false)` when it has it already.
    fn may_add_subscription(&self, session: &Session, pattern: &str) -> Result<bool, ApiError> {
        let state = session.state.lock();
        if state.subscriptions.contains_key(pattern) {
            return Ok(false);
        }
        let max = self.config.limits.subscriptions_per_socket_max;
        if state.subscriptions.len() >= max {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "this socket has {max} subscriptions, its limit \
                     (realtime.limits.subscriptions_per_socket_max)"
                ),
            ));
        }
        Ok(true)
    }

    /// Keeps a subscription's task with its socket's session, so that it ends with the socket
    /// or an `unsubscribe`. A task for a socket already gone is ended at once.
    fn add_subscription(
        &self,
        sid: Sid,
        pattern: String,
        task: tokio::task::AbortHandle,
    ) -> Result<(), ApiError> {
        let task = AbortOnDrop(task);
        let registry = self.registry.lock();
        let Some(session) = registry.sessions.get(&sid).cloned() else {
            drop(registry);
            drop(task);
            return Err(socket_gone());
        };
        let mut state = session.state.lock();
        let replaced = state.subscriptions.insert(pattern, task);
        drop(state);
        drop(registry);
        drop(replaced);
        Ok(())
    }

    /// Ends a subscription: false if the socket had none on `pattern`.
    fn remove_subscription(&self, session: &Session, pattern: &str) -> bool {
        let removed = session.state.lock().subscriptions.remove(pattern);
        removed.is_some()
    }

    /// Sends an event that is not stored to its target's sockets, here and on every other
    /// process on the same Redis; returns how many sockets and connections of this process it
    /// was queued for (the others' are reached without waiting for them).
    pub fn send(&self, target: &Target, event: &Event) -> usize {
        let json = event.to_json();
        let Some(payload) = Payload::from_json(&json) else {
            return 0;
        };
        // First: the other processes' sockets need not wait for a broadcast's fan-out here.
        if let Some(relay) = &self.relay
            && relay.send(relay::encode(target, &json))
        {
            self.metrics.relayed_out.inc();
        }
        self.deliver(target, &json, &payload)
    }

    /// Emits to every socket of the target on this process and, for a room, queues for every
    /// service connection listening to it here; returns how many sockets and connections it
    /// reached. `event_json` is the event as connections receive it, `payload` the same as
    /// sockets do. Forwarding rules and relayed sends come here: they are not relayed again.
    pub fn deliver(&self, target: &Target, event_json: &[u8], payload: &Payload) -> usize {
        let sockets = match target {
            Target::User(user) => self.io.to(user_room(user)).sockets(),
            Target::Room(room) => self.io.to(room.clone()).sockets(),
            Target::Broadcast(_) => self.io.sockets(),
        };
        let delivered = sockets
            .into_iter()
            .filter(|socket| fanout::emit(self, socket, payload))
            .count();
        self.metrics.sent.inc_by(delivered as u64);
        let listening = match target {
            Target::Room(room) => self.listeners.deliver(room, event_json),
            _ => 0,
        };
        delivered + listening
    }

    /// This process's connections, users and largest rooms (what `/metrics` exposes: each
    /// process is scraped on its own).
    pub fn stats(&self) -> RealtimeStats {
        relay::merge([&self.report()]).realtime
    }

    /// Connections, users and the largest rooms of every process on the same Redis: this
    /// one's as of now, the others' as of their last report (at most a second old). Only this
    /// process's if the others' reports cannot be read.
    pub async fn stats_everywhere(&self) -> relay::Everywhere {
        let here = self.report();
        let Some(relay) = &self.relay else {
            return relay::merge([&here]);
        };
        let others: Vec<relay::Report> = match relay.reports().await {
            Ok(reports) => reports
                .iter()
                .filter_map(|report| serde_json::from_slice(report).ok())
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "reading other processes' real-time stats failed");
                Vec::new()
            }
        };
        relay::merge(std::iter::once(&here).chain(&others))
    }

    /// This process's sockets, users and rooms, for the other processes.
    fn report(&self) -> relay::Report {
        let registry = self.registry.lock();
        relay::Report::new(
            registry.sessions.len() as u64,
            self.service_connections.load(Ordering::Relaxed) as u64,
            &registry.rooms,
        )
    }

    /// Stops counting this process's sockets in the other processes' stats (it is draining).
    pub async fn withdraw_report(&self) {
        if let Some(relay) = &self.relay
            && let Err(error) = relay.withdraw_report().await
        {
            tracing::warn!(%error, "withdrawing the real-time report failed");
        }
    }

    /// Brings the `realtime_relay_dropped` metric up to the relay's count, before a scrape.
    pub fn record_relay_drops(&self) {
        let dropped = self.relay.as_ref().map_or(0, Relay::dropped);
        let counted = self.metrics.relay_dropped.get();
        self.metrics
            .relay_dropped
            .inc_by(dropped.saturating_sub(counted));
    }
}

fn socket_gone() -> ApiError {
    ApiError::new(ErrorCode::Unavailable, "the socket is disconnecting")
}

/// A target as a send names it, checked: a user id as the envelope's `userId` allows, a room
/// name that sockets could have joined, `broadcast` set to `true`.
pub fn check_target(target: &Target) -> Result<(), ApiError> {
    match target {
        Target::User(user) => {
            if user.is_empty() {
                return Err(ApiError::bad_request("the user id is empty"));
            }
            let max = herald_core::event::USER_ID_BYTES_MAX;
            if user.len() > max {
                return Err(ApiError::bad_request(format!(
                    "the user id is longer than {max} bytes"
                )));
            }
            Ok(())
        }
        Target::Room(room) => check_room(room).map(|_| ()),
        Target::Broadcast(true) => Ok(()),
        Target::Broadcast(false) => Err(ApiError::bad_request(
            "\"broadcast\" must be true (it reaches every socket)",
        )),
    }
}

/// A room name as sockets join and services target it (`session:abc123`, `chat.general`):
/// see [`RoomName`] for the grammar and the reserved `user:` prefix. Refusals keep the code
/// `invalid_subject` that room names have always been refused with, so that clients need no
/// new code; the message names the offending character or token.
pub fn check_room(room: &str) -> Result<RoomName, ApiError> {
    RoomName::new(room).map_err(|error| {
        let code = match error {
            RoomError::Reserved { .. } => ErrorCode::Forbidden,
            _ => ErrorCode::InvalidSubject,
        };
        ApiError::new(code, format!("invalid room name: {error}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::realtime::RoomStats;

    fn grants(rooms: &[&str], subscribe: &[&str], publish: &[&str]) -> BrowserGrants {
        let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        BrowserGrants::parse(&BrowserGrantsConfig {
            rooms: owned(rooms),
            subscribe: owned(subscribe),
            publish: owned(publish),
        })
        .unwrap()
    }

    #[test]
    fn grants_decide_rooms_subscriptions_and_publishes() {
        let granted = grants(
            &["chat.*", "team.a.>", "session:*"],
            &["photo.>"],
            &["chat.message"],
        );
        let subject = |text: &str| Subject::new(text).unwrap();
        let room = |text: &str| RoomName::new(text).unwrap();
        let pattern = |text: &str| Pattern::new(text).unwrap();
        for (name, allowed) in [
            ("chat.general", true),
            ("chat.general.x", false),
            ("team.a.b", true),
            ("team.b.c", false),
            ("other", false),
            ("session:abc123", true),
            ("session.abc123", false),
            ("session:abc:def", false),
        ] {
            assert_eq!(granted.may_join(&room(name)), allowed, "{name}");
        }
        for (wanted, allowed) in [
            ("photo.>", true),
            ("photo.*", true),
            ("photo.processing.progress", true),
            (">", false),
            ("user.*", false),
        ] {
            assert_eq!(granted.may_subscribe(&pattern(wanted)), allowed, "{wanted}");
        }
        assert!(granted.may_publish(&subject("chat.message")));
        assert!(!granted.may_publish(&subject("chat.deleted")));
        assert_eq!(
            BrowserGrants::default().list("rooms"),
            "it has no rooms patterns"
        );
        assert_eq!(
            granted.list("rooms"),
            "its rooms patterns: chat.*, team.a.>, session:*"
        );
    }

    #[test]
    fn targets_are_checked() {
        for (target, ok) in [
            (Target::User("u1".into()), true),
            (Target::User(String::new()), false),
            (Target::User("u".repeat(300)), false),
            (Target::Room("chat.general".into()), true),
            (Target::Room("user:u1".into()), false),
            (Target::Room("session:abc123".into()), true),
            (Target::Room("session:".into()), false),
            (Target::Room("chat room".into()), false),
            (Target::Room("chat..x".into()), false),
            (Target::Broadcast(true), true),
            (Target::Broadcast(false), false),
        ] {
            assert_eq!(check_target(&target).is_ok(), ok, "{target:?}");
        }
    }

    fn realtime(limits: crate::config::RealtimeLimitsConfig) -> Realtime {
        let (_, io) = SocketIo::builder().build_layer();
        let config = RealtimeConfig {
            limits,
            ..RealtimeConfig::default()
        };
        Realtime::new(
            io,
            &config,
            RealtimeMetrics::default(),
            None,
            Arc::default(),
        )
        .unwrap()
    }

    #[test]
    fn sessions_rooms_and_stats() {
        let realtime = realtime(crate::config::RealtimeLimitsConfig {
            rooms_per_socket_max: 2,
            ..Default::default()
        });
        let session = |user: Option<&str>| {
            Arc::new(Session::new(
                user.map(str::to_owned),
                BrowserGrants::default(),
                10,
            ))
        };
        let (a, b, c) = (Sid::new(), Sid::new(), Sid::new());
        assert!(realtime.add_session(a, session(Some("u1")), 2));
        assert!(realtime.add_session(b, session(Some("u1")), 2));
        assert!(
            !realtime.add_session(c, session(None), 2),
            "over connections_max"
        );
        assert_eq!(realtime.join_room(a, "chat.x"), Ok(true));
        assert_eq!(realtime.join_room(a, "chat.x"), Ok(false));
        assert_eq!(realtime.join_room(b, "chat.x"), Ok(true));
        assert_eq!(realtime.join_room(a, "chat.y"), Ok(true));
        let refused = realtime.join_room(a, "chat.z").unwrap_err();
        assert_eq!(refused.code(), ErrorCode::RateLimited);
        assert_eq!(
            realtime.join_room(c, "chat.x").unwrap_err().code(),
            ErrorCode::Unavailable
        );
        assert_eq!(
            realtime.stats(),
            RealtimeStats {
                connections: 2,
                users: 1,
                rooms_total: 2,
                rooms: vec![
                    RoomStats {
                        name: "chat.x".into(),
                        members: 2
                    },
                    RoomStats {
                        name: "chat.y".into(),
                        members: 1
                    },
                ],
            }
        );
        assert!(realtime.leave_room(a, "chat.y"));
        assert!(!realtime.leave_room(a, "chat.y"));
        realtime.remove_session(a);
        realtime.remove_session(a);
        assert_eq!(
            realtime.stats(),
            RealtimeStats {
                connections: 1,
                users: 1,
                rooms_total: 1,
                rooms: vec![RoomStats {
                    name: "chat.x".into(),
                    members: 1
                }],
            }
        );
        realtime.remove_session(b);
        assert_eq!(realtime.stats(), RealtimeStats::default());
        assert_eq!(realtime.metrics.connections.get(), 0);
    }

    #[test]
    fn registry_counts_members_and_forgets_empty_rooms() {
        let mut registry = Registry::default();
        registry.add_member("chat.a");
        registry.add_member("chat.a");
        registry.remove_member("chat.a");
        assert_eq!(registry.rooms.get("chat.a"), Some(&1));
        registry.remove_member("chat.a");
        registry.remove_member("chat.a");
        assert!(registry.rooms.is_empty());
    }
}
