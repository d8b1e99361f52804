//! Room names (`session:abc123`, `chat.general`, `match-7`) and the patterns that grant them
//! (`session:*`, `chat.*`, `>`).
//!
//! Rooms are a namespace of their own, not subjects: real applications name them
//! `session:abc123` or `doc:42:cursors`, and seed 004 sends to `session:abc123`. So a room name
//! is 1 to [`ROOM_TOKENS_MAX`] tokens of `[A-Za-z0-9_-]`, each separated from the next by a
//! `.` or a `:`, at most [`ROOM_BYTES_MAX`] bytes. A room pattern is the same with wildcards as
//! whole tokens: `*` for exactly one token, and a final `>` for one or more. A pattern matches
//! a room when, token by token, each literal is equal, each `*` stands for one token, and the
//! separators are the same ones in the same places (`session:*` matches `session:abc123` but
//! not `session.abc123`; `chat.*` matches `chat.general` but not `chat:general`). `>` stands
//! for the rest, whatever its separators. Every subject pattern (PRODUCT.md §2) is therefore a
//! room pattern with the same meaning on dotted rooms: `chat.*` grants keep working.
//!
//! Names starting with [`USER_ROOM_PREFIX`] are Herald's own per-user rooms (PRODUCT.md §6):
//! nobody joins or targets one by name; users are reached through the user verbs.

/// As many tokens as a subject may have.
pub const ROOM_TOKENS_MAX: usize = crate::subject::SUBJECT_TOKENS_MAX;
/// Room names travel in frames, metric labels and stats; like subjects they stay short.
pub const ROOM_BYTES_MAX: usize = crate::subject::SUBJECT_BYTES_MAX;
/// The prefix of Herald's per-user rooms (`user:<sub>`), reserved.
pub const USER_ROOM_PREFIX: &str = "user:";

/// Why a string is not a room name or a room pattern. Positions are 1-based: characters are
/// counted in bytes, tokens from the start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("room name is empty")]
    Empty,
    #[error("room name of {bytes} bytes exceeds the limit of {max} bytes")]
    TooLong { bytes: usize, max: usize },
    #[error("room name {room:?} has {tokens} tokens, more than the limit of {max}")]
    TooManyTokens {
        room: String,
        tokens: usize,
        max: usize,
    },
    #[error(
        "room name {room:?} has the character {character:?} at byte {position}, which room names \
         do not allow (rooms are tokens of [A-Za-z0-9_-] separated by '.' or ':')"
    )]
    InvalidCharacter {
        room: String,
        character: char,
        position: usize,
    },
    #[error(
        "token {position} of room name {room:?} is empty (tokens are separated by a single '.' \
         or ':', with none leading or trailing)"
    )]
    EmptyToken { room: String, position: usize },
    #[error(
        "token {position} (\">\") of {room:?} is not the last token; \">\" may only end a pattern"
    )]
    FullWildcardNotLast { room: String, position: usize },
    #[error(
        "token {position} ({token:?}) of {room:?} mixes a wildcard with other characters; \
         wildcards must be a whole token (\"*\" or \">\")"
    )]
    WildcardNotWholeToken {
        room: String,
        position: usize,
        token: String,
    },
    #[error(
        "room name {room:?} starts with \"user:\", which is reserved for Herald's per-user rooms; \
         reach a user through the user verbs (publishToUser, POST /v1/realtime/users/{{id}}, \
         {{\"to\":{{\"user\":…}}}})"
    )]
    Reserved { room: String },
}

/// A checked room name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Box<str>);

/// A checked room pattern, as in the `rooms` grants of tokens.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomPattern(Box<str>);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Name,
    Pattern,
}

/// One token and the separator before it (`None` for the first).
type Part<'a> = (Option<u8>, &'a str);

fn is_separator(byte: u8) -> bool {
    byte == b'.' || byte == b':'
}

/// Splits on `.` and `:`, keeping which separator came before each token.
fn parts(text: &str) -> impl Iterator<Item = Part<'_>> {
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut before = None;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let end = bytes[start..]
            .iter()
            .position(|&byte| is_separator(byte))
            .map_or(bytes.len(), |offset| start + offset);
        let part = (before, &text[start..end]);
        if end == bytes.len() {
            done = true;
        } else {
            before = Some(bytes[end]);
            start = end + 1;
        }
        Some(part)
    })
}

fn validate(text: &str, kind: Kind) -> Result<(), RoomError> {
    if text.is_empty() {
        return Err(RoomError::Empty);
    }
    if text.len() > ROOM_BYTES_MAX {
        return Err(RoomError::TooLong {
            bytes: text.len(),
            max: ROOM_BYTES_MAX,
        });
    }
    let room = || text.to_owned();
    // Wildcards are characters like any other outside patterns.
    let allowed = |character: char| {
        character.is_ascii_alphanumeric()
            || matches!(character, '_' | '-' | '.' | ':')
            || (kind == Kind::Pattern && matches!(character, '*' | '>'))
    };
    if let Some((index, character)) = text.char_indices().find(|&(_, c)| !allowed(c)) {
        return Err(RoomError::InvalidCharacter {
            room: room(),
            character,
            position: index + 1,
        });
    }
    let tokens = parts(text).count();
    if tokens > ROOM_TOKENS_MAX {
        return Err(RoomError::TooManyTokens {
            room: room(),
            tokens,
            max: ROOM_TOKENS_MAX,
        });
    }
    for (index, (_, token)) in parts(text).enumerate() {
        let position = index + 1;
        if token.is_empty() {
            return Err(RoomError::EmptyToken {
                room: room(),
                position,
            });
        }
        if token == "*" || token == ">" {
            if token == ">" && position != tokens {
                return Err(RoomError::FullWildcardNotLast {
                    room: room(),
                    position,
                });
            }
        } else if token.contains(['*', '>']) {
            return Err(RoomError::WildcardNotWholeToken {
                room: room(),
                position,
                token: token.to_owned(),
            });
        }
    }
    if kind == Kind::Name && text.starts_with(USER_ROOM_PREFIX) {
        return Err(RoomError::Reserved { room: room() });
    }
    Ok(())
}

impl RoomName {
    pub fn new(text: &str) -> Result<RoomName, RoomError> {
        validate(text, Kind::Name)?;
        Ok(RoomName(text.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0.into()
    }
}

impl RoomPattern {
    pub fn new(text: &str) -> Result<RoomPattern, RoomError> {
        validate(text, Kind::Pattern)?;
        Ok(RoomPattern(text.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Token by token with the same separators; `*` is one token, a final `>` the rest.
    pub fn matches(&self, room: &RoomName) -> bool {
        let mut room_parts = parts(room.as_str());
        for (separator, token) in parts(self.as_str()) {
            let Some((room_separator, room_token)) = room_parts.next() else {
                return false;
            };
            if room_separator != separator {
                return false;
            }
            match token {
                ">" => return true,
                "*" => {}
                _ if token == room_token => {}
                _ => return false,
            }
        }
        room_parts.next().is_none()
    }
}

/// Every subject pattern is a room pattern with the same meaning on dotted room names.
impl From<&crate::Pattern> for RoomPattern {
    fn from(pattern: &crate::Pattern) -> RoomPattern {
        RoomPattern(pattern.as_str().into())
    }
}

str_newtype_impls!(RoomName);
str_newtype_impls!(RoomPattern);

#[cfg(test)]
mod tests {
    use super::*;

    fn check_name(input: &str, expect: Result<(), &str>) {
        match (RoomName::new(input), expect) {
            (Ok(name), Ok(())) => assert_eq!(name.as_str(), input),
            (Err(error), Err(want)) => {
                let text = error.to_string();
                assert!(text.contains(want), "{input:?}: {text:?} lacks {want:?}");
            }
            (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn room_names() {
        for name in [
            "session:abc123",
            "chat.general",
            "match-7",
            "chat_general",
            "doc:42:cursors",
            "team.a:b.c",
            "user",
            "user.profile",
            "users:1",
            "x",
        ] {
            check_name(name, Ok(()));
        }
        check_name(&"a".repeat(ROOM_BYTES_MAX), Ok(()));
        for (name, error) in [
            ("", "empty"),
            ("chat room", "the character ' ' at byte 5"),
            ("chat/room", "the character '/' at byte 5"),
            ("café", "the character 'é' at byte 4"),
            ("a*", "the character '*' at byte 2"),
            ("a.*", "the character '*' at byte 3"),
            ("a.>", "the character '>' at byte 3"),
            ("session:", "token 2 of room name \"session:\" is empty"),
            (":a", "token 1"),
            ("a::b", "token 2"),
            ("a.:b", "token 2"),
            ("user:u1", "reserved for Herald's per-user rooms"),
            ("user:", "is empty"),
        ] {
            check_name(name, Err(error));
        }
        check_name(&"a".repeat(ROOM_BYTES_MAX + 1), Err("exceeds the limit"));
        check_name("a:".repeat(16).trim_end_matches(':'), Ok(()));
        check_name("a:".repeat(17).trim_end_matches(':'), Err("17 tokens"));
    }

    #[test]
    fn room_patterns() {
        for (input, expect) in [
            (">", Ok(())),
            ("*", Ok(())),
            ("session:*", Ok(())),
            ("chat.*", Ok(())),
            ("doc:*:cursors", Ok(())),
            ("a:>", Ok(())),
            ("user:*", Ok(())),
            ("a>:b", Err("mixes a wildcard")),
            ("a:>:b", Err("is not the last token")),
            ("a b", Err("the character ' ' at byte 2")),
            ("a:", Err("is empty")),
        ] {
            match (RoomPattern::new(input), expect) {
                (Ok(_), Ok(())) => {}
                (Err(error), Err(want)) => {
                    let text = error.to_string();
                    assert!(text.contains(want), "{input:?}: {text:?} lacks {want:?}");
                }
                (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn patterns_match_rooms_token_by_token_with_their_separators() {
        for (pattern, room, expect) in [
            ("session:*", "session:abc123", true),
            ("session:*", "session.abc123", false),
            ("session:*", "session:abc:def", false),
            ("session:>", "session:abc:def", true),
            ("session:>", "session:abc.def", true),
            ("session:>", "session", false),
            ("session:abc123", "session:abc123", true),
            ("chat.*", "chat.general", true),
            ("chat.*", "chat:general", false),
            ("chat.*", "chat.general.x", false),
            ("team.a.>", "team.a.b", true),
            ("team.a.>", "team.b.c", false),
            ("*", "lobby", true),
            ("*", "session:abc", false),
            (">", "session:abc", true),
            (">", "lobby", true),
            ("doc:*:cursors", "doc:42:cursors", true),
            ("doc:*:cursors", "doc:42.cursors", false),
        ] {
            let got = RoomPattern::new(pattern)
                .unwrap()
                .matches(&RoomName::new(room).unwrap());
            assert_eq!(got, expect, "{pattern} ~ {room}");
        }
    }

    #[test]
    fn subject_patterns_are_room_patterns() {
        for text in [">", "chat.*", "team.a.>", "photo.processing.progress"] {
            let pattern = crate::Pattern::new(text).unwrap();
            assert_eq!(RoomPattern::from(&pattern), RoomPattern::new(text).unwrap());
        }
    }
}
