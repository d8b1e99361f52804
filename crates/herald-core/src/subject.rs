//! Subjects (`photo.uploaded`) and patterns (`photo.*`, `photo.>`), with NATS semantics.
//!
//! Both are validated once, at the edge, so that everything downstream (routing, the subject
//! index, stream names) can split on `.` without checking again.

use std::fmt;
use std::str::FromStr;

/// NATS allows more; 16 keeps the matcher's token buffer on the stack.
pub const SUBJECT_TOKENS_MAX: usize = 16;
/// Subjects travel in headers, log records and metric labels, so they stay short.
pub const SUBJECT_BYTES_MAX: usize = 255;

const _: () = assert!(SUBJECT_TOKENS_MAX * 2 - 1 <= SUBJECT_BYTES_MAX);

/// Why a string is not a subject or a pattern. Positions are 1-based token numbers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject is empty")]
    Empty,
    #[error("subject of {bytes} bytes exceeds the limit of {max} bytes")]
    TooLong { bytes: usize, max: usize },
    #[error("subject {subject:?} has {tokens} tokens, more than the limit of {max}")]
    TooManyTokens {
        subject: String,
        tokens: usize,
        max: usize,
    },
    #[error(
        "token {position} of {subject:?} is empty (subjects are tokens separated by single dots, \
         with no leading or trailing dot)"
    )]
    EmptyToken { subject: String, position: usize },
    #[error("token {position} ({token:?}) of {subject:?} has a character outside [A-Za-z0-9_-]")]
    InvalidCharacter {
        subject: String,
        position: usize,
        token: String,
    },
    #[error(
        "token {position} ({token:?}) of {subject:?} is a wildcard, but a literal subject is \
         required here (wildcards are for patterns)"
    )]
    WildcardInSubject {
        subject: String,
        position: usize,
        token: String,
    },
    #[error(
        "token {position} (\">\") of {subject:?} is not the last token; \">\" may only end a \
         pattern"
    )]
    FullWildcardNotLast { subject: String, position: usize },
    #[error(
        "token {position} ({token:?}) of {subject:?} mixes a wildcard with other characters; \
         wildcards must be a whole token (\"*\" or \">\")"
    )]
    WildcardNotWholeToken {
        subject: String,
        position: usize,
        token: String,
    },
}

/// A literal subject, such as an event's type.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(Box<str>);

/// A subscription pattern: literal tokens, `*` (exactly one token) and a final `>` (one or more).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern(Box<str>);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Subject,
    Pattern,
}

fn validate(text: &str, kind: Kind) -> Result<(), SubjectError> {
    if is_plain_subject(text) {
        return Ok(());
    }
    validate_in_full(text, kind)
}

/// Every rule, each with its own error.
fn validate_in_full(text: &str, kind: Kind) -> Result<(), SubjectError> {
    if text.is_empty() {
        return Err(SubjectError::Empty);
    }
    if text.len() > SUBJECT_BYTES_MAX {
        return Err(SubjectError::TooLong {
            bytes: text.len(),
            max: SUBJECT_BYTES_MAX,
        });
    }
    let tokens = text.bytes().filter(|&byte| byte == b'.').count() + 1;
    if tokens > SUBJECT_TOKENS_MAX {
        return Err(SubjectError::TooManyTokens {
            subject: text.to_owned(),
            tokens,
            max: SUBJECT_TOKENS_MAX,
        });
    }
    for (index, token) in text.split('.').enumerate() {
        let position = index + 1;
        let subject = || text.to_owned();
        if token.is_empty() {
            return Err(SubjectError::EmptyToken {
                subject: subject(),
                position,
            });
        }
        if token == "*" || token == ">" {
            if kind == Kind::Subject {
                return Err(SubjectError::WildcardInSubject {
                    subject: subject(),
                    position,
                    token: token.to_owned(),
                });
            }
            if token == ">" && position != tokens {
                return Err(SubjectError::FullWildcardNotLast {
                    subject: subject(),
                    position,
                });
            }
            continue;
        }
        if token.contains(['*', '>']) {
            return Err(SubjectError::WildcardNotWholeToken {
                subject: subject(),
                position,
                token: token.to_owned(),
            });
        }
        if !is_valid_token(token) {
            return Err(SubjectError::InvalidCharacter {
                subject: subject(),
                position,
                token: token.to_owned(),
            });
        }
    }
    Ok(())
}

/// Whether `text` is a valid subject (and so also a valid literal pattern), in one pass over its
/// bytes: 1 to `SUBJECT_TOKENS_MAX` non-empty tokens of `[A-Za-z0-9_-]`, at most
/// `SUBJECT_BYTES_MAX` bytes. Every published event's type is checked, and the general check
/// below (count, split, a wildcard search and a character check per token) was ~1 000
/// instructions per event; what this refuses goes through it for the precise error.
fn is_plain_subject(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.is_empty() || bytes.len() > SUBJECT_BYTES_MAX {
        return false;
    }
    // Every byte is a token byte or a dot; no dot starts or ends the text or follows another.
    if !bytes.iter().all(|&byte| SUBJECT_BYTES[usize::from(byte)])
        || bytes[0] == b'.'
        || bytes[bytes.len() - 1] == b'.'
    {
        return false;
    }
    let mut tokens = 1;
    for pair in bytes.windows(2) {
        if pair[1] == b'.' {
            if pair[0] == b'.' {
                return false;
            }
            tokens += 1;
        }
    }
    tokens <= SUBJECT_TOKENS_MAX
}

/// The bytes of a subject: `[A-Za-z0-9_-]` and the dot between tokens.
static SUBJECT_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.';
        byte += 1;
    }
    table
};

/// Whether `token` is one literal token: non-empty, only `[A-Za-z0-9_-]`. Stream names use the
/// same alphabet, since the default stream is a type's first token.
pub fn is_valid_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

impl Subject {
    pub fn new(text: &str) -> Result<Subject, SubjectError> {
        validate(text, Kind::Subject)?;
        Ok(Subject(text.into()))
    }

    /// A subject Herald validated before storing it, read back from its own checksummed log:
    /// validating it again would only cost time (see `Event::from_stored_json`).
    pub(crate) fn from_stored(text: String) -> Subject {
        Subject(text.into_boxed_str())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The default stream of events of this type (PRODUCT.md section 3).
    pub fn stream_name(&self) -> &str {
        // A byte search: `split('.')` cost ~170 instructions a call on the publish path.
        match self.0.bytes().position(|byte| byte == b'.') {
            Some(dot) => &self.0[..dot],
            None => &self.0,
        }
    }

    pub fn tokens(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }
}

impl Pattern {
    pub fn new(text: &str) -> Result<Pattern, SubjectError> {
        validate(text, Kind::Pattern)?;
        Ok(Pattern(text.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn tokens(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }

    /// A pattern without wildcards matches exactly one subject, which callers can route directly.
    pub fn is_literal(&self) -> bool {
        self.tokens().all(|token| token != "*" && token != ">")
    }

    /// The reference matcher; [`crate::SubjectIndex`] answers the same question for many patterns.
    ///
    /// A group's task asks it of every event it reads, so it works on bytes: `str::split` with
    /// a `char` cost about 1 000 instructions a match of three short tokens
    /// (docs/PERFORMANCE.md). A subject equal to the pattern matches at once (a subject has no
    /// wildcard tokens, so the pattern is literal).
    pub fn matches(&self, subject: &Subject) -> bool {
        if self.0 == subject.0 {
            return true;
        }
        let mut subject_tokens = subject.0.as_bytes().split(|&byte| byte == b'.');
        for pattern_token in self.0.as_bytes().split(|&byte| byte == b'.') {
            if pattern_token == b">" {
                return subject_tokens.next().is_some();
            }
            match subject_tokens.next() {
                Some(subject_token) if pattern_token == b"*" || pattern_token == subject_token => {}
                _ => return false,
            }
        }
        subject_tokens.next().is_none()
    }

    /// Whether every subject `other` matches is also matched by `self`, so that a permission
    /// granted as `self` can be checked against a requested pattern without enumerating
    /// subjects. Decided token by token: `>` covers any non-empty rest, `*` covers one token
    /// of any kind but `>` (which may stand for several), a literal covers only itself.
    pub fn covers(&self, other: &Pattern) -> bool {
        let mut other_tokens = other.tokens();
        for token in self.tokens() {
            let Some(other_token) = other_tokens.next() else {
                return false;
            };
            match token {
                ">" => return true,
                "*" if other_token != ">" => {}
                _ if token == other_token => {}
                _ => return false,
            }
        }
        other_tokens.next().is_none()
    }
}

impl From<Subject> for Pattern {
    fn from(subject: Subject) -> Pattern {
        Pattern(subject.0)
    }
}

macro_rules! string_impls {
    ($name:ident, $expecting:literal) => {
        impl FromStr for $name {
            type Err = SubjectError;
            fn from_str(text: &str) -> Result<$name, SubjectError> {
                $name::new(text)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = SubjectError;
            fn try_from(text: &str) -> Result<$name, SubjectError> {
                $name::new(text)
            }
        }

        str_newtype_impls!($name);

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(
                deserializer: D,
            ) -> Result<$name, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<$name, E> {
                        $name::new(text).map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(Visitor)
            }
        }
    };
}

string_impls!(Subject, "a subject string such as \"photo.uploaded\"");
string_impls!(
    Pattern,
    "a pattern string such as \"photo.*\" or \"photo.>\""
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `input` as a subject and as a pattern; `expect` is `"ok"` or the error message,
    /// as `subject: …` / `pattern: …` lines when the two differ.
    fn check(input: &str, expect_subject: &str, expect_pattern: &str) {
        let render = |result: Result<String, SubjectError>| match result {
            Ok(_) => "ok".to_owned(),
            Err(error) => error.to_string(),
        };
        let subject = render(Subject::new(input).map(|s| s.to_string()));
        let pattern = render(Pattern::new(input).map(|p| p.to_string()));
        assert_eq!(subject, expect_subject, "subject {input:?}");
        assert_eq!(pattern, expect_pattern, "pattern {input:?}");
    }

    const OK: &str = "ok";

    #[test]
    fn literals() {
        check("photo", OK, OK);
        check("photo.uploaded", OK, OK);
        check("A-b_9.x-y.Z", OK, OK);
        check(&["a"; 16].join("."), OK, OK);
        check(&"a".repeat(255), OK, OK);
    }

    #[test]
    fn wildcards() {
        let wildcard = |position: usize, token: &str, subject: &str| {
            format!(
                "token {position} ({token:?}) of {subject:?} is a wildcard, but a literal \
                 subject is required here (wildcards are for patterns)"
            )
        };
        check("user.*", &wildcard(2, "*", "user.*"), OK);
        check("user.>", &wildcard(2, ">", "user.>"), OK);
        check("*", &wildcard(1, "*", "*"), OK);
        check(">", &wildcard(1, ">", ">"), OK);
        check("*.*.>", &wildcard(1, "*", "*.*.>"), OK);
        check(
            "user.>.created",
            &wildcard(2, ">", "user.>.created"),
            "token 2 (\">\") of \"user.>.created\" is not the last token; \">\" may only end a \
             pattern",
        );
    }

    #[test]
    fn malformed() {
        let both = |input: &str, expect: &str| check(input, expect, expect);
        both("", "subject is empty");
        both(
            "user..created",
            "token 2 of \"user..created\" is empty (subjects are tokens separated by single \
             dots, with no leading or trailing dot)",
        );
        both(
            "user.",
            "token 2 of \"user.\" is empty (subjects are tokens separated by single dots, with \
             no leading or trailing dot)",
        );
        both(
            ".user",
            "token 1 of \".user\" is empty (subjects are tokens separated by single dots, with \
             no leading or trailing dot)",
        );
        both(
            "user.pro file",
            "token 2 (\"pro file\") of \"user.pro file\" has a character outside [A-Za-z0-9_-]",
        );
        both(
            "usér",
            "token 1 (\"usér\") of \"usér\" has a character outside [A-Za-z0-9_-]",
        );
        both(
            " user",
            "token 1 (\" user\") of \" user\" has a character outside [A-Za-z0-9_-]",
        );
        both(
            "a.b\n",
            "token 2 (\"b\\n\") of \"a.b\\n\" has a character outside [A-Za-z0-9_-]",
        );
        both(
            &"a".repeat(256),
            "subject of 256 bytes exceeds the limit of 255 bytes",
        );
        let seventeen = ["a"; 17].join(".");
        both(
            &seventeen,
            &format!("subject {seventeen:?} has 17 tokens, more than the limit of 16"),
        );
    }

    #[test]
    fn nats_tricky_literals_are_rejected() {
        // NATS treats these as literals; our alphabet excludes `*` and `>` inside tokens.
        let mixed = |position: usize, token: &str, subject: &str| {
            format!(
                "token {position} ({token:?}) of {subject:?} mixes a wildcard with other \
                 characters; wildcards must be a whole token (\"*\" or \">\")"
            )
        };
        for (input, position, token) in [
            ("foo*bar", 1, "foo*bar"),
            (">bar", 1, ">bar"),
            ("foo.***.bar", 2, "***"),
            ("foo.*bar", 2, "*bar"),
            ("foo.bar>", 2, "bar>"),
            ("foo*", 1, "foo*"),
        ] {
            let expect = mixed(position, token, input);
            check(input, &expect, &expect);
        }
    }

    fn check_match(pattern: &str, subject: &str, expect: bool) {
        let pattern = Pattern::new(pattern).unwrap();
        let subject = Subject::new(subject).unwrap();
        assert_eq!(pattern.matches(&subject), expect, "{pattern} ~ {subject}");
    }

    #[test]
    fn matching() {
        for (pattern, subject, expect) in [
            ("user.*", "user.created", true),
            ("user.*", "user.profile.updated", false),
            ("user.*", "user", false),
            ("user.>", "user.created", true),
            ("user.>", "user.profile.updated", true),
            ("user.>", "user", false),
            (">", "user", true),
            (">", "a.b.c", true),
            ("*", "user", true),
            ("*", "a.b", false),
            ("*.created", "user.created", true),
            ("*.*.updated", "user.profile.updated", true),
            ("*.*.updated", "user.profile.created", false),
            ("user.created", "user.created", true),
            ("user.created", "user.create", false),
            ("user.created", "user.created.x", false),
            ("user", "user.created", false),
            ("*.>", "a", false),
            ("*.>", "a.b", true),
        ] {
            check_match(pattern, subject, expect);
        }
    }

    fn check_covers(wide: &str, narrow: &str, expect: bool) {
        let wide = Pattern::new(wide).unwrap();
        let narrow = Pattern::new(narrow).unwrap();
        assert_eq!(wide.covers(&narrow), expect, "{wide} covers {narrow}");
    }

    #[test]
    fn covering() {
        for (wide, narrow, expect) in [
            ("user.>", "user.*", true),
            ("user.>", "user.created", true),
            ("user.>", "user.*.x", true),
            ("user.>", "user.>", true),
            ("user.>", "user.*.>", true),
            ("user.>", "user", false),
            ("user.>", ">", false),
            ("user.>", "*.created", false),
            ("user.*", "user.created", true),
            ("user.*", "user.*", true),
            ("user.*", "user.>", false),
            ("user.*", "user.created.x", false),
            ("user.*", "user", false),
            (">", "a", true),
            (">", "*", true),
            (">", ">", true),
            (">", "a.*.>", true),
            ("*", "a", true),
            ("*", "*", true),
            ("*", ">", false),
            ("*", "a.b", false),
            ("*.>", ">", false),
            ("*.>", "*.>", true),
            ("*.>", "a.>", true),
            ("*.*", "*.>", false),
            ("*.*", "a.*", true),
            ("a.b", "a.b", true),
            ("a.b", "a.*", false),
            ("a.b", "a.>", false),
            ("a.b", "a.c", false),
            ("a.b", "a", false),
            ("a.b", "a.b.c", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.*.d", false),
        ] {
            check_covers(wide, narrow, expect);
        }
    }

    /// Every dot-joined sequence of 1 to `max` tokens over `alphabet`, valid or not.
    fn sequences(alphabet: &[&str], max: usize) -> Vec<String> {
        let mut all = Vec::new();
        let mut layer = vec![String::new()];
        for _ in 0..max {
            layer = layer
                .iter()
                .flat_map(|prefix| {
                    alphabet.iter().map(move |token| match prefix.is_empty() {
                        true => (*token).to_owned(),
                        false => format!("{prefix}.{token}"),
                    })
                })
                .collect();
            all.extend(layer.iter().cloned());
        }
        all
    }

    /// Patterns use the literals `a` and `b`; witnesses may also use `c`, which only a
    /// wildcard matches, and one token more than either pattern, which only `>` absorbs. That
    /// is enough for a subject matched by `narrow` and not by `wide` to exist in the set
    /// whenever any does, so `covers` must equal "no witness" exactly.
    fn check_covers_brute_force(wide: &Pattern, narrow: &Pattern, subjects: &[Subject]) {
        let witness = subjects
            .iter()
            .find(|subject| narrow.matches(subject) && !wide.matches(subject));
        assert_eq!(
            wide.covers(narrow),
            witness.is_none(),
            "{wide} covers {narrow}: witness {witness:?}"
        );
    }

    fn subjects(max: usize) -> Vec<Subject> {
        sequences(&["a", "b", "c"], max)
            .iter()
            .map(|text| Subject::new(text).unwrap())
            .collect()
    }

    /// Every pair of patterns up to 3 tokens, so that no shape depends on the generator's luck.
    #[test]
    fn covers_agrees_with_brute_force_exhaustively() {
        let subjects = subjects(4);
        let patterns: Vec<Pattern> = sequences(&["a", "b", "*", ">"], 3)
            .iter()
            .filter_map(|text| Pattern::new(text).ok())
            .collect();
        assert_eq!(patterns.len(), 4 + 3 * 4 + 3 * 3 * 4);
        for wide in &patterns {
            for narrow in &patterns {
                check_covers_brute_force(wide, narrow, &subjects);
            }
        }
    }

    fn pattern_strategy() -> impl proptest::strategy::Strategy<Value = Pattern> {
        use proptest::prelude::*;
        prop::collection::vec(prop::sample::select(vec!["a", "b", "*", ">"]), 1..=5)
            .prop_filter_map("\">\" may only end a pattern", |tokens| {
                Pattern::new(&tokens.join(".")).ok()
            })
    }

    proptest::proptest! {
        /// The one-pass check accepts exactly the subjects the full check accepts, and nothing
        /// the full check refuses as a pattern.
        #[test]
        fn the_fast_subject_check_agrees_with_the_full_one(
            text in "[a-cA-Z0-9_.*> -]{0,40}|([a-z]{1,3}\\.){0,17}[a-z]{1,3}",
        ) {
            let fast = is_plain_subject(&text);
            proptest::prop_assert_eq!(fast, validate_in_full(&text, Kind::Subject).is_ok());
            if fast {
                proptest::prop_assert!(validate_in_full(&text, Kind::Pattern).is_ok());
            }
        }

        /// Longer patterns than the exhaustive test reaches.
        #[test]
        fn covers_agrees_with_brute_force(wide in pattern_strategy(), narrow in pattern_strategy()) {
            check_covers_brute_force(&wide, &narrow, &subjects(6));
        }
    }

    #[test]
    fn helpers() {
        let subject = Subject::new("photo.uploaded").unwrap();
        assert_eq!(subject.stream_name(), "photo");
        assert_eq!(Subject::new("photo").unwrap().stream_name(), "photo");
        assert_eq!(subject.tokens().collect::<Vec<_>>(), ["photo", "uploaded"]);
        assert!(Pattern::new("a.b").unwrap().is_literal());
        assert!(!Pattern::new("a.*").unwrap().is_literal());
        assert!(!Pattern::new("a.>").unwrap().is_literal());
        assert_eq!(Pattern::from(subject.clone()).as_str(), "photo.uploaded");
        assert_eq!(format!("{subject:?}"), "Subject(\"photo.uploaded\")");
        assert!(is_valid_token("orders-v2"));
        assert!(!is_valid_token("orders.v2"));
        assert!(!is_valid_token(""));
    }

    #[test]
    fn serde_as_strings() {
        let subject: Subject = serde_json::from_str("\"photo.uploaded\"").unwrap();
        assert_eq!(
            serde_json::to_string(&subject).unwrap(),
            "\"photo.uploaded\""
        );
        let pattern: Pattern = serde_json::from_str("\"photo.>\"").unwrap();
        assert_eq!(serde_json::to_string(&pattern).unwrap(), "\"photo.>\"");
        let error = serde_json::from_str::<Subject>("\"photo.*\"").unwrap_err();
        assert!(error.to_string().contains("is a wildcard"), "{error}");
        // Escaped strings arrive owned, not borrowed.
        let subject: Subject = serde_json::from_str("\"photo\\u002eup\"").unwrap();
        assert_eq!(subject.as_str(), "photo.up");
    }
}
