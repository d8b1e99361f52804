//! Where a subscription starts, as the wire says it: `"latest"`, `"earliest"`, a seq (a number),
//! or an RFC 3339 time.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum From {
    Latest,
    Earliest,
    Seq(u64),
    Time(OffsetDateTime),
}

/// Why a `from` value was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "\"from\" must be \"latest\", \"earliest\", a seq from 1 or an RFC 3339 time, found {found:?}"
)]
pub struct FromError {
    pub found: String,
}

impl From {
    /// Parses the text form, as in a query string or a CLI flag (`42` is a seq).
    pub fn parse(text: &str) -> Result<From, FromError> {
        match text {
            "latest" => return Ok(From::Latest),
            "earliest" => return Ok(From::Earliest),
            _ => {}
        }
        if let Ok(seq) = text.parse::<u64>() {
            return if seq >= 1 {
                Ok(From::Seq(seq))
            } else {
                Err(FromError {
                    found: text.to_owned(),
                })
            };
        }
        OffsetDateTime::parse(text, &Rfc3339)
            .map(From::Time)
            .map_err(|_| FromError {
                found: text.chars().take(64).collect(),
            })
    }
}

impl fmt::Display for From {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            From::Latest => f.write_str("latest"),
            From::Earliest => f.write_str("earliest"),
            From::Seq(seq) => write!(f, "{seq}"),
            From::Time(time) => match time.format(&Rfc3339) {
                Ok(text) => f.write_str(&text),
                Err(_) => Err(fmt::Error),
            },
        }
    }
}

impl Serialize for From {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            From::Seq(seq) => serializer.serialize_u64(*seq),
            other => serializer.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for From {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<From, D::Error> {
        struct FromVisitor;
        impl Visitor<'_> for FromVisitor {
            type Value = From;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"latest\", \"earliest\", a seq from 1 or an RFC 3339 time")
            }
            fn visit_u64<E: de::Error>(self, seq: u64) -> Result<From, E> {
                if seq == 0 {
                    return Err(E::custom("\"from\" seq starts at 1"));
                }
                Ok(From::Seq(seq))
            }
            fn visit_i64<E: de::Error>(self, seq: i64) -> Result<From, E> {
                u64::try_from(seq)
                    .map_err(|_| E::custom("\"from\" seq must not be negative"))
                    .and_then(|seq| self.visit_u64(seq))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<From, E> {
                From::parse(text).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(FromVisitor)
    }
}

impl utoipa::PartialSchema for From {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, SchemaType, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(SchemaType::Type(Type::String))
                    .description(Some(
                        "\"latest\", \"earliest\", or an RFC 3339 time: the first event stored at or after it",
                    )),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(SchemaType::Type(Type::Integer))
                    .minimum(Some(1))
                    .description(Some("a seq, in every matching stream")),
            )
            .into()
    }
}

impl utoipa::ToSchema for From {}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Result<&str, ()>) {
        let parsed: Result<From, _> = serde_json::from_str(input);
        match (parsed, expect) {
            (Ok(from), Ok(text)) => assert_eq!(from.to_string(), text, "{input}"),
            (Err(_), Err(())) => {}
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn from_values() {
        check("\"latest\"", Ok("latest"));
        check("\"earliest\"", Ok("earliest"));
        check("42", Ok("42"));
        check("\"42\"", Ok("42"));
        check("\"2026-11-22T10:00:00Z\"", Ok("2026-11-22T10:00:00Z"));
        check("0", Err(()));
        check("-1", Err(()));
        check("\"soon\"", Err(()));
        check("1.5", Err(()));
        check("null", Err(()));
    }
}
