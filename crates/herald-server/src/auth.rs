//! Service tokens (PRODUCT.md §8): each names a service and the subjects it may publish, the
//! patterns it may subscribe to and the streams and groups it may administer.
//!
//! Checks happen at the edge, once per request or frame, against patterns parsed when the server
//! starts, so a bad configuration stops `herald serve` instead of refusing requests later.
//! Errors never echo a presented or configured secret.

use std::fmt;
use std::sync::Arc;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use herald_core::subject::is_valid_token;
use herald_core::{Pattern, RoomError, RoomName, RoomPattern, Subject, SubjectError};
use herald_protocol::ErrorCode;
use serde::{Deserialize, Serialize};

/// Shorter secrets can be guessed online; 16 bytes of a random hex or base64 string is the least
/// a generator gives.
pub const TOKEN_BYTES_MIN: usize = 16;

/// One service's token, as configured under `[[auth.tokens]]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The service's identity, forced as the `source` of every event it publishes.
    pub name: String,
    /// The secret, sent as `Authorization: Bearer <token>`.
    pub token: String,
    /// Patterns of the subjects the service may publish.
    #[serde(default)]
    pub publish: Vec<String>,
    /// A subscription is allowed when one of these covers its whole pattern.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Patterns of the stream and group names (one token each) the service may manage.
    #[serde(default)]
    pub admin: Vec<String>,
    /// Room patterns (`session:*`, `chat.>`) of the rooms the service may listen to with the
    /// `/v1/ws` `join` frame. Absent, the `subscribe` patterns decide, read as room patterns:
    /// listening to a room is receiving events, and a token that may receive everything (`>`)
    /// may listen to every room without a new field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
}

/// Configs get logged and printed in errors; the secret must not be.
impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("publish", &self.publish)
            .field("subscribe", &self.subscribe)
            .field("admin", &self.admin)
            .field("rooms", &self.rooms)
            .finish()
    }
}

/// Why `[auth]` cannot be used. Names the token by its `name`, never by its secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    #[error(
        "token #{position} has an empty name (every token needs one: it is the events' source)"
    )]
    EmptyName { position: usize },
    #[error("two tokens are named {name:?}; names identify services and must be unique")]
    DuplicateName { name: String },
    #[error("tokens {first:?} and {second:?} have the same secret; each service needs its own")]
    DuplicateToken { first: String, second: String },
    #[error("the secret of token {name:?} has {bytes} bytes, fewer than the minimum of {min}")]
    TokenTooShort {
        name: String,
        bytes: usize,
        min: usize,
    },
    #[error(
        "the secret of token {name:?} has a character outside visible ASCII (a space, a control \
         character or non-ASCII), so it cannot travel in an Authorization header"
    )]
    TokenInvalidCharacter { name: String },
    #[error("token {name:?} has an invalid {permission} pattern {pattern:?}: {source}")]
    InvalidPattern {
        name: String,
        permission: Permission,
        pattern: String,
        source: SubjectError,
    },
    #[error("token {name:?} has an invalid rooms pattern {pattern:?}: {source}")]
    InvalidRoomPattern {
        name: String,
        pattern: String,
        source: RoomError,
    },
    #[error(
        "token {name:?} has the admin pattern {pattern:?} of several tokens, which no stream or \
         group name matches (names are one token: use a name, \"*\" or \">\")"
    )]
    MultiTokenAdminPattern { name: String, pattern: String },
}

/// What a request needs from its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    Publish,
    Subscribe,
    Admin,
    /// Listening to a room (`/v1/ws` `join`).
    Rooms,
}

impl Permission {
    fn verb(self) -> &'static str {
        match self {
            Permission::Publish => "publish",
            Permission::Subscribe => "subscribe to",
            Permission::Admin => "administer",
            Permission::Rooms => "join room",
        }
    }
}

/// The config key's name, as errors quote it.
impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Permission::Publish => "publish",
            Permission::Subscribe => "subscribe",
            Permission::Admin => "admin",
            Permission::Rooms => "rooms",
        })
    }
}

/// Why a request is refused. `MissingToken`, `InvalidToken` and `MalformedHeader` are about who
/// the caller is (401); `Forbidden` is about what it may do (403).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this server requires a token: send Authorization: Bearer <token>")]
    MissingToken,
    #[error("the token is not one this server knows")]
    InvalidToken,
    /// The reason never quotes the header, which may be a secret sent without its scheme.
    #[error("malformed Authorization header: {0}")]
    MalformedHeader(&'static str),
    #[error(
        "token {identity:?} may not {} {target:?} ({})",
        .permission.verb(),
        describe_granted(.permission, .granted)
    )]
    Forbidden {
        identity: String,
        permission: Permission,
        target: String,
        granted: Vec<String>,
    },
}

fn describe_granted(permission: &Permission, granted: &[String]) -> String {
    if granted.is_empty() {
        return format!("it has no {permission} patterns");
    }
    let list = granted.join(", ");
    match permission {
        // A request overlapping a grant is still refused; say so, since it surprises.
        Permission::Subscribe => {
            format!("its subscribe patterns: {list}; a subscription must lie within one of them")
        }
        _ => format!("its {permission} patterns: {list}"),
    }
}

impl AuthError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::MissingToken | AuthError::InvalidToken | AuthError::MalformedHeader(_) => {
                ErrorCode::Unauthorized
            }
            AuthError::Forbidden { .. } => ErrorCode::Forbidden,
        }
    }
}

/// The `<token>` of `Authorization: Bearer <token>`, or `None` without the header, so that the
/// caller decides (through [`Auth::authenticate`]) whether a token is required.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::MalformedHeader(
            "more than one Authorization header",
        ));
    }
    let value = value.to_str().map_err(|_| {
        AuthError::MalformedHeader("the header has characters outside visible ASCII")
    })?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(AuthError::MalformedHeader("expected \"Bearer <token>\""))?;
    // RFC 9110: auth schemes are case-insensitive.
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MalformedHeader(
            "expected the Bearer scheme, as \"Bearer <token>\"",
        ));
    }
    let token = token.trim_start_matches(' ');
    if token.is_empty() || token.contains([' ', '\t']) {
        return Err(AuthError::MalformedHeader(
            "expected one token after \"Bearer \"",
        ));
    }
    Ok(Some(token))
}

/// The configured tokens, checked at startup. Cheap to share; holds no per-request state.
#[derive(Clone)]
pub struct Auth {
    entries: Arc<[Entry]>,
    anonymous: Identity,
}

struct Entry {
    secret: Box<[u8]>,
    identity: Identity,
}

/// Lists the services, not their secrets.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self
            .entries
            .iter()
            .filter_map(|entry| entry.identity.name())
            .collect();
        f.debug_struct("Auth")
            .field("enabled", &self.is_enabled())
            .field("tokens", &names)
            .finish()
    }
}

impl Auth {
    /// No tokens means auth off, as the config documents; refusing to listen off loopback
    /// without auth is the config's job.
    pub fn new(tokens: &[TokenConfig]) -> Result<Auth, AuthConfigError> {
        let mut entries: Vec<Entry> = Vec::with_capacity(tokens.len());
        for (index, config) in tokens.iter().enumerate() {
            let name = &config.name;
            if name.is_empty() {
                return Err(AuthConfigError::EmptyName {
                    position: index + 1,
                });
            }
            if entries
                .iter()
                .any(|entry| entry.identity.name() == Some(name))
            {
                return Err(AuthConfigError::DuplicateName { name: name.clone() });
            }
            let secret = config.token.as_bytes();
            if secret.len() < TOKEN_BYTES_MIN {
                return Err(AuthConfigError::TokenTooShort {
                    name: name.clone(),
                    bytes: secret.len(),
                    min: TOKEN_BYTES_MIN,
                });
            }
            if !secret.iter().all(|byte| byte.is_ascii_graphic()) {
                return Err(AuthConfigError::TokenInvalidCharacter { name: name.clone() });
            }
            if let Some(first) = entries.iter().find(|entry| *entry.secret == *secret) {
                return Err(AuthConfigError::DuplicateToken {
                    first: first.identity.name().unwrap_or_default().to_owned(),
                    second: name.clone(),
                });
            }
            let parse = |permission: Permission, patterns: &[String]| {
                patterns
                    .iter()
                    .map(|text| {
                        Pattern::new(text).map_err(|source| AuthConfigError::InvalidPattern {
                            name: name.clone(),
                            permission,
                            pattern: text.clone(),
                            source,
                        })
                    })
                    .collect::<Result<Vec<Pattern>, AuthConfigError>>()
            };
            let subscribe = parse(Permission::Subscribe, &config.subscribe)?;
            let rooms = match &config.rooms {
                None => subscribe.iter().map(RoomPattern::from).collect(),
                Some(patterns) => patterns
                    .iter()
                    .map(|text| {
                        RoomPattern::new(text).map_err(|source| {
                            AuthConfigError::InvalidRoomPattern {
                                name: name.clone(),
                                pattern: text.clone(),
                                source,
                            }
                        })
                    })
                    .collect::<Result<Vec<RoomPattern>, AuthConfigError>>()?,
            };
            let grants = Grants {
                name: Some(name.clone()),
                publish: parse(Permission::Publish, &config.publish)?,
                subscribe,
                admin: parse(Permission::Admin, &config.admin)?,
                rooms,
            };
            if let Some(pattern) = grants
                .admin
                .iter()
                .find(|pattern| pattern.tokens().count() > 1)
            {
                return Err(AuthConfigError::MultiTokenAdminPattern {
                    name: name.clone(),
                    pattern: pattern.to_string(),
                });
            }
            entries.push(Entry {
                secret: secret.into(),
                identity: Identity(Arc::new(grants)),
            });
        }
        Ok(Auth {
            entries: entries.into(),
            anonymous: Identity::anonymous(),
        })
    }

    pub fn disabled() -> Auth {
        Auth {
            entries: Arc::new([]),
            anonymous: Identity::anonymous(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    /// With auth off any token, or none, is the anonymous identity, so that clients configured
    /// with a token keep working against a development server.
    pub fn authenticate(&self, bearer: Option<&str>) -> Result<Identity, AuthError> {
        if !self.is_enabled() {
            return Ok(self.anonymous.clone());
        }
        let presented = bearer.ok_or(AuthError::MissingToken)?.as_bytes();
        // Every entry is compared, so the time taken does not tell which one, if any, matched.
        let mut found = None;
        for entry in self.entries.iter() {
            if same_secret(&entry.secret, presented) {
                found = Some(&entry.identity);
            }
        }
        found.cloned().ok_or(AuthError::InvalidToken)
    }
}

/// Compares without returning at the first differing byte, so that response times do not let a
/// caller guess a secret byte by byte. The time depends on the lengths only: the presented one is
/// the caller's own, and a configured one is at least [`TOKEN_BYTES_MIN`] of unknown bytes.
fn same_secret(secret: &[u8], presented: &[u8]) -> bool {
    let mut difference = usize::from(secret.len() != presented.len());
    for (index, byte) in secret.iter().enumerate() {
        let other = presented.get(index).copied().unwrap_or(0);
        difference |= usize::from(byte ^ other);
    }
    std::hint::black_box(difference) == 0
}

/// Who a request comes from and what it may do; cloned into every connection and request.
#[derive(Clone, Debug)]
pub struct Identity(Arc<Grants>);

#[derive(Debug)]
struct Grants {
    /// `None` for the anonymous identity of a server with auth off.
    name: Option<String>,
    publish: Vec<Pattern>,
    subscribe: Vec<Pattern>,
    admin: Vec<Pattern>,
    /// The `rooms` patterns, or the `subscribe` ones read as room patterns.
    rooms: Vec<RoomPattern>,
}

impl Identity {
    /// What every request is with auth off: no name (events keep the `source` they were sent
    /// with) and `>` for every permission.
    pub fn anonymous() -> Identity {
        // `>` is a valid pattern; were it not, the default would deny everything.
        let everything = || {
            Pattern::new(">")
                .map(|pattern| vec![pattern])
                .unwrap_or_default()
        };
        Identity(Arc::new(Grants {
            name: None,
            publish: everything(),
            subscribe: everything(),
            admin: everything(),
            rooms: everything().iter().map(RoomPattern::from).collect(),
        }))
    }

    /// The service's name, which the server forces as the `source` of its events.
    pub fn name(&self) -> Option<&str> {
        self.0.name.as_deref()
    }

    pub fn check_publish(&self, subject: &Subject) -> Result<(), AuthError> {
        if self
            .0
            .publish
            .iter()
            .any(|pattern| pattern.matches(subject))
        {
            return Ok(());
        }
        Err(self.forbidden(Permission::Publish, subject.as_str()))
    }

    /// Allowed only when one grant covers the whole pattern: a pattern overlapping a grant
    /// would deliver events outside it.
    pub fn check_subscribe(&self, pattern: &Pattern) -> Result<(), AuthError> {
        if self.0.subscribe.iter().any(|grant| grant.covers(pattern)) {
            return Ok(());
        }
        Err(self.forbidden(Permission::Subscribe, pattern.as_str()))
    }

    /// `resource` is a stream or group name, both one subject token. A name that is not one
    /// cannot exist, but only `>` is sure to have allowed it, so other grants refuse it rather
    /// than let the caller learn which names are invalid before its rights are checked.
    pub fn check_admin(&self, resource: &str) -> Result<(), AuthError> {
        let subject = if is_valid_token(resource) {
            Subject::new(resource).ok()
        } else {
            None
        };
        let allowed = self.0.admin.iter().any(|pattern| match &subject {
            Some(subject) => pattern.matches(subject),
            None => pattern.as_str() == ">",
        });
        if allowed {
            return Ok(());
        }
        Err(self.forbidden(Permission::Admin, resource))
    }

    /// Whether the service may listen to `room` (the `/v1/ws` `join` frame).
    pub fn check_room(&self, room: &RoomName) -> Result<(), AuthError> {
        if self.0.rooms.iter().any(|pattern| pattern.matches(room)) {
            return Ok(());
        }
        Err(self.forbidden(Permission::Rooms, room.as_str()))
    }

    fn forbidden(&self, permission: Permission, target: &str) -> AuthError {
        let granted = match permission {
            Permission::Publish => &self.0.publish,
            Permission::Subscribe => &self.0.subscribe,
            Permission::Admin => &self.0.admin,
            Permission::Rooms => {
                return AuthError::Forbidden {
                    identity: self.name().unwrap_or("anonymous").to_owned(),
                    permission,
                    target: target.to_owned(),
                    granted: self.0.rooms.iter().map(RoomPattern::to_string).collect(),
                };
            }
        };
        AuthError::Forbidden {
            identity: self.name().unwrap_or("anonymous").to_owned(),
            permission,
            target: target.to_owned(),
            granted: granted.iter().map(Pattern::to_string).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const OK: &str = "ok";

    fn render<T>(result: Result<T, impl fmt::Display>) -> String {
        match result {
            Ok(_) => OK.to_owned(),
            Err(error) => error.to_string(),
        }
    }

    fn secret(name: &str) -> String {
        format!("{name}-secret-0123456789")
    }

    fn token(name: &str, publish: &[&str], subscribe: &[&str], admin: &[&str]) -> TokenConfig {
        let strings = |patterns: &[&str]| patterns.iter().map(|p| (*p).to_owned()).collect();
        TokenConfig {
            name: name.to_owned(),
            token: secret(name),
            publish: strings(publish),
            subscribe: strings(subscribe),
            admin: strings(admin),
            rooms: None,
        }
    }

    fn services() -> Auth {
        Auth::new(&[
            token(
                "billing",
                &["billing.>"],
                &["orders.>", "user.created"],
                &["billing"],
            ),
            token(
                "orders",
                &["orders.*", "audit.orders"],
                &["*.created"],
                &["orders", "orders-v2"],
            ),
            token("keeper", &[], &[], &["*"]),
            token("ops", &[], &[">"], &[">"]),
            token("reader", &[], &[], &[]),
        ])
        .unwrap()
    }

    fn identity(auth: &Auth, name: &str) -> Identity {
        auth.authenticate(Some(&secret(name))).unwrap()
    }

    #[test]
    fn publish() {
        let auth = services();
        for (name, subject, expect) in [
            ("billing", "billing.invoice.paid", OK),
            ("billing", "billing.x", OK),
            (
                "billing",
                "billing",
                "token \"billing\" may not publish \"billing\" (its publish patterns: billing.>)",
            ),
            (
                "billing",
                "orders.created",
                "token \"billing\" may not publish \"orders.created\" (its publish patterns: \
                 billing.>)",
            ),
            ("orders", "orders.created", OK),
            ("orders", "audit.orders", OK),
            (
                "orders",
                "orders.created.v2",
                "token \"orders\" may not publish \"orders.created.v2\" (its publish patterns: \
                 orders.*, audit.orders)",
            ),
            (
                "reader",
                "a",
                "token \"reader\" may not publish \"a\" (it has no publish patterns)",
            ),
        ] {
            let subject = Subject::new(subject).unwrap();
            let got = render(identity(&auth, name).check_publish(&subject));
            assert_eq!(got, expect, "{name} publish {subject}");
        }
    }

    #[test]
    fn subscribe() {
        let auth = services();
        let refused = |name: &str, pattern: &str, granted: &str| {
            format!(
                "token {name:?} may not subscribe to {pattern:?} (its subscribe patterns: \
                 {granted}; a subscription must lie within one of them)"
            )
        };
        let billing = "orders.>, user.created";
        for (name, pattern, expect) in [
            ("billing", "orders.>", OK.to_owned()),
            ("billing", "orders.*", OK.to_owned()),
            ("billing", "orders.created", OK.to_owned()),
            ("billing", "orders.*.x.>", OK.to_owned()),
            ("billing", "user.created", OK.to_owned()),
            ("billing", "user.*", refused("billing", "user.*", billing)),
            ("billing", "orders", refused("billing", "orders", billing)),
            ("billing", ">", refused("billing", ">", billing)),
            ("orders", "user.created", OK.to_owned()),
            ("orders", "*.created", OK.to_owned()),
            ("orders", "*.*", refused("orders", "*.*", "*.created")),
            ("ops", ">", OK.to_owned()),
            ("ops", "a.*.b", OK.to_owned()),
            (
                "reader",
                "a",
                "token \"reader\" may not subscribe to \"a\" (it has no subscribe patterns)"
                    .to_owned(),
            ),
        ] {
            let pattern = Pattern::new(pattern).unwrap();
            let got = render(identity(&auth, name).check_subscribe(&pattern));
            assert_eq!(got, expect, "{name} subscribe {pattern}");
        }
    }

    #[test]
    fn rooms() {
        let mut sessions = token("sessions", &[], &["photo.>"], &[]);
        sessions.rooms = Some(vec!["session:*".into(), "chat.>".into()]);
        let auth = Auth::new(&[
            sessions,
            token("billing", &[], &["orders.>", "user.created"], &[]),
            token("ops", &[], &[">"], &[]),
            token("reader", &[], &[], &[]),
        ])
        .unwrap();
        for (name, room, expect) in [
            ("sessions", "session:abc123", OK),
            ("sessions", "chat.general", OK),
            ("sessions", "chat.general.x", OK),
            (
                "sessions",
                "session.abc123",
                "token \"sessions\" may not join room \"session.abc123\" (its rooms patterns: \
                 session:*, chat.>)",
            ),
            // Without `rooms`, the subscribe patterns decide.
            ("billing", "orders.eu", OK),
            ("billing", "user.created", OK),
            (
                "billing",
                "orders:eu",
                "token \"billing\" may not join room \"orders:eu\" (its rooms patterns: \
                 orders.>, user.created)",
            ),
            ("ops", "session:abc123", OK),
            ("ops", "lobby", OK),
            (
                "reader",
                "lobby",
                "token \"reader\" may not join room \"lobby\" (it has no rooms patterns)",
            ),
        ] {
            let room = RoomName::new(room).unwrap();
            let got = render(identity(&auth, name).check_room(&room));
            assert_eq!(got, expect, "{name} join {room}");
        }
        assert!(
            Identity::anonymous()
                .check_room(&RoomName::new("a:b").unwrap())
                .is_ok()
        );
        let mut bad = token("bad", &[], &[], &[]);
        bad.rooms = Some(vec!["session:".into()]);
        let error = Auth::new(&[bad]).unwrap_err().to_string();
        assert!(
            error.starts_with("token \"bad\" has an invalid rooms pattern \"session:\": token 2"),
            "{error}"
        );
    }

    #[test]
    fn admin() {
        let auth = services();
        let refused = |name: &str, resource: &str, granted: &str| {
            format!(
                "token {name:?} may not administer {resource:?} (its admin patterns: {granted})"
            )
        };
        for (name, resource, expect) in [
            ("billing", "billing", OK.to_owned()),
            ("billing", "orders", refused("billing", "orders", "billing")),
            (
                "billing",
                "billing.x",
                refused("billing", "billing.x", "billing"),
            ),
            ("billing", "", refused("billing", "", "billing")),
            ("orders", "orders-v2", OK.to_owned()),
            (
                "orders",
                "orders-v3",
                refused("orders", "orders-v3", "orders, orders-v2"),
            ),
            ("keeper", "anything", OK.to_owned()),
            ("keeper", "a.b", refused("keeper", "a.b", "*")),
            ("keeper", "no spaces", refused("keeper", "no spaces", "*")),
            (
                "keeper",
                "a".repeat(300).as_str(),
                refused("keeper", &"a".repeat(300), "*"),
            ),
            ("ops", "anything", OK.to_owned()),
            ("ops", "a.b", OK.to_owned()),
            ("ops", "not a name!", OK.to_owned()),
            (
                "reader",
                "orders",
                "token \"reader\" may not administer \"orders\" (it has no admin patterns)"
                    .to_owned(),
            ),
        ] {
            let got = render(identity(&auth, name).check_admin(resource));
            assert_eq!(got, expect, "{name} admin {resource:?}");
        }
    }

    #[test]
    fn identity_and_codes() {
        let auth = services();
        assert!(auth.is_enabled());
        assert_eq!(identity(&auth, "billing").name(), Some("billing"));
        assert_eq!(identity(&auth, "ops").name(), Some("ops"));
        for (bearer, expect) in [
            (
                None,
                "this server requires a token: send Authorization: Bearer <token>",
            ),
            (Some("nope"), "the token is not one this server knows"),
            // A prefix, an extension and a near miss of a real secret.
            (
                Some("billing-secret-012345678"),
                "the token is not one this server knows",
            ),
            (
                Some("billing-secret-01234567890"),
                "the token is not one this server knows",
            ),
            (
                Some("billing-secret-0123456788"),
                "the token is not one this server knows",
            ),
            (Some(""), "the token is not one this server knows"),
        ] {
            let error = auth.authenticate(bearer).unwrap_err();
            assert_eq!(error.to_string(), expect, "{bearer:?}");
            assert_eq!(error.code(), ErrorCode::Unauthorized);
        }
        let forbidden = identity(&auth, "reader").check_admin("x").unwrap_err();
        assert_eq!(forbidden.code(), ErrorCode::Forbidden);
        assert_eq!(
            AuthError::MalformedHeader("x").code(),
            ErrorCode::Unauthorized
        );
    }

    #[test]
    fn auth_off_allows_everything() {
        for auth in [Auth::disabled(), Auth::new(&[]).unwrap()] {
            assert!(!auth.is_enabled());
            for bearer in [None, Some("anything at all")] {
                let identity = auth.authenticate(bearer).unwrap();
                assert_eq!(identity.name(), None);
                identity
                    .check_publish(&Subject::new("a.b.c").unwrap())
                    .unwrap();
                identity
                    .check_subscribe(&Pattern::new(">").unwrap())
                    .unwrap();
                identity.check_admin("orders").unwrap();
                identity.check_admin("not a name").unwrap();
            }
        }
    }

    #[test]
    fn same_secret_compares_whole_buffers() {
        for (a, b, expect) in [
            ("abc", "abc", true),
            ("abc", "abd", false),
            ("abc", "ab", false),
            ("ab", "abc", false),
            ("abc", "abc\0", false),
            ("", "", true),
            ("a", "", false),
        ] {
            assert_eq!(
                same_secret(a.as_bytes(), b.as_bytes()),
                expect,
                "{a:?} {b:?}"
            );
        }
    }

    #[test]
    fn bearer_header() {
        let parse = |values: &[&[u8]]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(AUTHORIZATION, HeaderValue::from_bytes(value).unwrap());
            }
            match bearer_token(&headers) {
                Ok(None) => "none".to_owned(),
                Ok(Some(token)) => format!("token {token}"),
                Err(error) => {
                    assert_eq!(error.code(), ErrorCode::Unauthorized);
                    error.to_string()
                }
            }
        };
        let malformed = |reason: &str| format!("malformed Authorization header: {reason}");
        assert_eq!(parse(&[]), "none");
        for (value, expect) in [
            ("Bearer abc", "token abc".to_owned()),
            ("bearer abc", "token abc".to_owned()),
            ("BEARER abc", "token abc".to_owned()),
            ("Bearer   abc  ", "token abc".to_owned()),
            ("abc", malformed("expected \"Bearer <token>\"")),
            ("Bearer", malformed("expected \"Bearer <token>\"")),
            ("Bearer ", malformed("expected \"Bearer <token>\"")),
            ("", malformed("expected \"Bearer <token>\"")),
            (
                "Basic dXNlcjpwYXNz",
                malformed("expected the Bearer scheme, as \"Bearer <token>\""),
            ),
            (
                "Token abc",
                malformed("expected the Bearer scheme, as \"Bearer <token>\""),
            ),
            (
                "Bearer a b",
                malformed("expected one token after \"Bearer \""),
            ),
            (
                "Bearer a\tb",
                malformed("expected one token after \"Bearer \""),
            ),
        ] {
            assert_eq!(parse(&[value.as_bytes()]), expect, "{value:?}");
        }
        assert_eq!(
            parse(&[b"Bearer caf\xc3\xa9"]),
            malformed("the header has characters outside visible ASCII")
        );
        assert_eq!(
            parse(&[b"Bearer a", b"Bearer b"]),
            malformed("more than one Authorization header")
        );
    }

    #[test]
    fn config_errors() {
        let config = |tokens: &[TokenConfig]| render(Auth::new(tokens));
        let ok = token("a", &["a.>"], &["*"], &["a"]);
        assert_eq!(config(std::slice::from_ref(&ok)), OK);
        let mut unnamed = ok.clone();
        unnamed.name = String::new();
        let mut short = token("short", &[], &[], &[]);
        short.token = "0123456789abcde".to_owned();
        let mut spaced = token("spaced", &[], &[], &[]);
        spaced.token = "0123456789 abcdef".to_owned();
        let mut copy = token("copy", &[], &[], &[]);
        copy.token = ok.token.clone();
        for (tokens, expect) in [
            (
                vec![ok.clone(), unnamed],
                "token #2 has an empty name (every token needs one: it is the events' source)",
            ),
            (
                vec![ok.clone(), ok.clone()],
                "two tokens are named \"a\"; names identify services and must be unique",
            ),
            (
                vec![ok.clone(), copy],
                "tokens \"a\" and \"copy\" have the same secret; each service needs its own",
            ),
            (
                vec![short],
                "the secret of token \"short\" has 15 bytes, fewer than the minimum of 16",
            ),
            (
                vec![spaced],
                "the secret of token \"spaced\" has a character outside visible ASCII (a space, a \
                 control character or non-ASCII), so it cannot travel in an Authorization header",
            ),
            (
                vec![token("p", &["a..b"], &[], &[])],
                "token \"p\" has an invalid publish pattern \"a..b\": token 2 of \"a..b\" is \
                 empty (subjects are tokens separated by single dots, with no leading or \
                 trailing dot)",
            ),
            (
                vec![token("s", &[], &["a.>.b"], &[])],
                "token \"s\" has an invalid subscribe pattern \"a.>.b\": token 2 (\">\") of \
                 \"a.>.b\" is not the last token; \">\" may only end a pattern",
            ),
            (
                vec![token("m", &[], &[], &["orders-*"])],
                "token \"m\" has an invalid admin pattern \"orders-*\": token 1 (\"orders-*\") of \
                 \"orders-*\" mixes a wildcard with other characters; wildcards must be a whole \
                 token (\"*\" or \">\")",
            ),
            (
                vec![token("m", &[], &[], &["billing.>"])],
                "token \"m\" has the admin pattern \"billing.>\" of several tokens, which no \
                 stream or group name matches (names are one token: use a name, \"*\" or \">\")",
            ),
        ] {
            assert_eq!(config(&tokens), expect);
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let auth = services();
        let config = token("billing", &["billing.>"], &[], &[]);
        let debug = format!("{config:?} {auth:?}");
        assert!(!debug.contains("secret-0123456789"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(debug.contains("billing"), "{debug}");
        let presented = "unknown-secret-0123456789";
        let error = auth.authenticate(Some(presented)).unwrap_err();
        assert!(!error.to_string().contains(presented));
        assert!(!format!("{error:?}").contains(presented));
    }

    #[test]
    fn token_config_serde() {
        let config: TokenConfig = serde_json::from_value(serde_json::json!({
            "name": "billing",
            "token": "billing-secret-0123456789",
            "publish": ["billing.>"],
        }))
        .unwrap();
        assert_eq!(config.publish, ["billing.>"]);
        assert!(config.subscribe.is_empty() && config.admin.is_empty());
        let back = serde_json::to_value(&config).unwrap();
        assert_eq!(back["token"], "billing-secret-0123456789");
        let unknown = serde_json::from_value::<TokenConfig>(serde_json::json!({
            "name": "b", "token": "t", "publsh": [],
        }))
        .unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `publsh`"),
            "{unknown}"
        );
    }
}
