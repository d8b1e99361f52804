//! JSON plumbing shared by Herald's event form and the CloudEvents form: a one-pass reader of a
//! top-level object or array that keeps member values as raw JSON, and an infallible writer.
//!
//! Wire concerns live here so that [`crate::Event`] itself derives no serde traits: the wire
//! format can change without touching the internal type.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Members of a JSON object in document order, duplicates included, values untouched.
pub(crate) type Members<'a> = Vec<(Cow<'a, str>, &'a RawValue)>;

/// Members of an object made room for up front: an event has at most 11 (13 stored), a
/// CloudEvent a few more.
const OBJECT_MEMBERS_EXPECTED: usize = 16;

/// A top-level JSON value, kept only as far as the caller needs it.
pub(crate) enum Top<'a> {
    Object(Members<'a>),
    Array(Vec<&'a RawValue>),
    /// Anything else, named for an error message ("a string").
    Other(&'static str),
}

pub(crate) fn parse(bytes: &[u8]) -> Result<Top<'_>, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// What kind of JSON value `raw` is, phrased for error messages.
pub(crate) fn kind(raw: &RawValue) -> &'static str {
    match raw.get().trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

impl<'de> Deserialize<'de> for Top<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TopVisitor)
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        // Room for every member an event may have, so that decoding one grows nothing: growing
        // from empty was 210 instructions per published event (copies and reallocations).
        let mut members = Vec::with_capacity(OBJECT_MEMBERS_EXPECTED);
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let value: &'de RawValue = map.next_value()?;
            members.push((key, value));
        }
        Ok(Top::Object(members))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top<'de>, A::Error> {
        let mut elements = Vec::new();
        while let Some(element) = seq.next_element::<&'de RawValue>()? {
            elements.push(element);
        }
        Ok(Top::Array(elements))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Top<'de>, E> {
        Ok(Top::Other("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Top<'de>, E> {
        Ok(Top::Other("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Top<'de>, E> {
        Ok(Top::Other("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Top<'de>, E> {
        Ok(Top::Other("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Top<'de>, E> {
        Ok(Top::Other("a string"))
    }

    fn visit_unit<E>(self) -> Result<Top<'de>, E> {
        Ok(Top::Other("null"))
    }
}

/// Borrows a key from the input when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(key))
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(key.to_owned()))
    }

    fn visit_string<E>(self, key: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(key))
    }
}

/// Decodes a raw value already known to be a JSON string.
pub(crate) fn decode_string(raw: &RawValue) -> Result<String, serde_json::Error> {
    serde_json::from_str(raw.get())
}

pub(crate) fn write_string(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    // Most strings (ids, types, times) need no escaping: one pass the compiler vectorizes (a
    // fold without early exit: `any` stops at each byte and was not vectorized, 4% of a publish's
    // instructions), then a single copy.
    let needs_escape = bytes.iter().fold(false, |found, &byte| {
        found | (byte < 0x20) | (byte == b'"') | (byte == b'\\')
    });
    if !needs_escape {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (position, &byte) in bytes.iter().enumerate() {
        let short: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..position]);
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
        start = position + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Writes `"name":` (names are ours, never need escaping).
pub(crate) fn write_key(out: &mut Vec<u8>, name: &str) {
    debug_assert!(!name.contains(['"', '\\']));
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// RFC 3339 timestamps are stored in UTC; their years must fit four digits.
pub(crate) fn parse_timestamp(text: &str) -> Result<OffsetDateTime, String> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|error| error.to_string())?;
    let utc = parsed
        .checked_to_offset(UtcOffset::UTC)
        .filter(is_timestamp_in_range)
        .ok_or_else(|| "out of range (years 0000 to 9999 in UTC)".to_owned())?;
    Ok(utc)
}

/// Parses what [`write_timestamp`] writes (`2026-11-30T22:00:00.123Z`, UTC, 4-digit year)
/// without the general RFC 3339 parser; anything else goes to [`parse_timestamp`].
pub(crate) fn parse_stored_timestamp(text: &str) -> Result<OffsetDateTime, String> {
    stored_timestamp(text.as_bytes()).map_or_else(|| parse_timestamp(text), Ok)
}

/// [`parse_stored_timestamp`] of bytes not yet known to be UTF-8: the form Herald writes is
/// parsed from the bytes; anything else is checked and given to the full parser.
pub(crate) fn parse_stored_timestamp_bytes(bytes: &[u8]) -> Option<OffsetDateTime> {
    stored_timestamp(bytes).or_else(|| parse_timestamp(std::str::from_utf8(bytes).ok()?).ok())
}

fn stored_timestamp(bytes: &[u8]) -> Option<OffsetDateTime> {
    let (head, rest) = bytes.split_at_checked(19)?;
    let fraction = rest.strip_suffix(b"Z")?;
    if head[4] != b'-'
        || head[7] != b'-'
        || head[10] != b'T'
        || head[13] != b':'
        || head[16] != b':'
    {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        head[range].iter().try_fold(0u32, |value, &digit| {
            digit
                .is_ascii_digit()
                .then(|| value * 10 + u32::from(digit - b'0'))
        })
    };
    let nanosecond = match fraction {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            let value = digits.iter().try_fold(0u32, |value, &digit| {
                digit
                    .is_ascii_digit()
                    .then(|| value * 10 + u32::from(digit - b'0'))
            })?;
            value * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    let month = time::Month::try_from(u8::try_from(number(5..7)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::try_from(number(0..4)?).ok()?,
        month,
        u8::try_from(number(8..10)?).ok()?,
    )
    .ok()?;
    let time = time::Time::from_hms_nano(
        u8::try_from(number(11..13)?).ok()?,
        u8::try_from(number(14..16)?).ok()?,
        u8::try_from(number(17..19)?).ok()?,
        nanosecond,
    )
    .ok()?;
    Some(time::PrimitiveDateTime::new(date, time).assume_utc())
}

pub(crate) fn is_timestamp_in_range(timestamp: &OffsetDateTime) -> bool {
    timestamp
        .checked_to_offset(UtcOffset::UTC)
        .is_some_and(|utc| (0..=9999).contains(&utc.year()))
}

thread_local! {
    /// The last timestamp [`write_timestamp`] wrote on this thread, and its text. Events
    /// published without a timestamp get their frame's receive time, so a batch of them writes
    /// one timestamp over and over; splitting it into calendar fields was ~800 instructions
    /// per stored event.
    static LAST_TIMESTAMP: RefCell<(Option<OffsetDateTime>, Vec<u8>)> =
        const { RefCell::new((None, Vec::new())) };
}

/// RFC 3339 in UTC with `Z` and only the fractional digits needed (see
/// [`write_timestamp_uncached`]); a repeat of the previous timestamp on this thread is copied.
pub(crate) fn write_timestamp(out: &mut Vec<u8>, timestamp: OffsetDateTime) {
    LAST_TIMESTAMP.with(|last| match last.try_borrow_mut() {
        Ok(mut last) => {
            let (written, text) = &mut *last;
            // Same instant and same offset: `==` alone ignores the offset, which shows in the
            // text of a timestamp that cannot be converted to UTC.
            let same = written.is_some_and(|written| {
                written == timestamp && written.offset() == timestamp.offset()
            });
            if !same {
                text.clear();
                write_timestamp_uncached(text, timestamp);
                *written = Some(timestamp);
            }
            out.extend_from_slice(text);
        }
        Err(_) => write_timestamp_uncached(out, timestamp),
    });
}

/// RFC 3339 in UTC with `Z` and only the fractional digits needed. Written by hand because it
/// cannot fail, unlike `time`'s formatter (which rejects years outside 0000-9999; such a
/// timestamp is written anyway and rejected when read back).
fn write_timestamp_uncached(out: &mut Vec<u8>, timestamp: OffsetDateTime) {
    let timestamp = timestamp
        .checked_to_offset(UtcOffset::UTC)
        .unwrap_or(timestamp);
    out.push(b'"');
    let year = timestamp.year();
    if year < 0 {
        out.push(b'-');
    }
    write_digits(out, year.unsigned_abs(), 4);
    out.push(b'-');
    write_digits(out, u32::from(u8::from(timestamp.month())), 2);
    out.push(b'-');
    write_digits(out, u32::from(timestamp.day()), 2);
    out.push(b'T');
    write_digits(out, u32::from(timestamp.hour()), 2);
    out.push(b':');
    write_digits(out, u32::from(timestamp.minute()), 2);
    out.push(b':');
    write_digits(out, u32::from(timestamp.second()), 2);
    let mut nanoseconds = timestamp.nanosecond();
    if nanoseconds != 0 {
        let mut width = 9;
        while nanoseconds.is_multiple_of(10) {
            nanoseconds /= 10;
            width -= 1;
        }
        out.push(b'.');
        write_digits(out, nanoseconds, width);
    }
    let offset = timestamp.offset();
    if offset.is_utc() {
        out.push(b'Z');
    } else {
        let (hours, minutes, _) = offset.as_hms();
        out.push(if offset.is_negative() { b'-' } else { b'+' });
        write_digits(out, u32::from(hours.unsigned_abs()), 2);
        out.push(b':');
        write_digits(out, u32::from(minutes.unsigned_abs()), 2);
    }
    out.push(b'"');
}

fn write_digits(out: &mut Vec<u8>, value: u32, width: usize) {
    let mut digits = [b'0'; 10];
    let mut rest = value;
    let mut used = 0;
    while rest > 0 || used == 0 {
        digits[digits.len() - 1 - used] = b'0' + (rest % 10) as u8;
        rest /= 10;
        used += 1;
    }
    let shown = used.max(width).min(digits.len());
    // Byte by byte: for a few digits, `extend_from_slice` costs a call to memmove (it was 2% of
    // a publish profile, through the timestamp of every stored event).
    for &digit in &digits[digits.len() - shown..] {
        out.push(digit);
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn check_string(text: &str, expect: &str) {
        let mut out = Vec::new();
        write_string(&mut out, text);
        assert_eq!(String::from_utf8(out.clone()).unwrap(), expect);
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, text);
    }

    #[test]
    fn strings() {
        check_string("plain", r#""plain""#);
        check_string("é ✓ 😀", r#""é ✓ 😀""#);
        check_string("a\"b\\c", r#""a\"b\\c""#);
        check_string("\n\r\t\u{8}\u{c}", r#""\n\r\t\b\f""#);
        check_string("\u{0}\u{1f}\u{7f}", "\"\\u0000\\u001f\u{7f}\"");
    }

    fn check_timestamp(timestamp: OffsetDateTime, expect: &str) {
        let mut out = Vec::new();
        write_timestamp(&mut out, timestamp);
        assert_eq!(String::from_utf8(out).unwrap(), expect);
        let back = parse_timestamp(expect.trim_matches('"')).unwrap();
        assert_eq!(back, timestamp);
    }

    #[test]
    fn repeated_timestamps_are_written_from_the_last_text() {
        let first = datetime!(2026-11-22 10:00:00.25 UTC);
        let second = datetime!(2026-11-22 10:00:00.5 UTC);
        for (timestamp, expect) in [
            (first, r#""2026-11-22T10:00:00.25Z""#),
            (first, r#""2026-11-22T10:00:00.25Z""#),
            (second, r#""2026-11-22T10:00:00.5Z""#),
            (
                datetime!(2026-11-22 11:00:00.5 +1),
                r#""2026-11-22T10:00:00.5Z""#,
            ),
            (first, r#""2026-11-22T10:00:00.25Z""#),
        ] {
            let mut out = b"x".to_vec();
            write_timestamp(&mut out, timestamp);
            assert_eq!(String::from_utf8(out).unwrap(), format!("x{expect}"));
        }
    }

    #[test]
    fn timestamps() {
        check_timestamp(
            datetime!(2026-11-22 10:00:00 UTC),
            r#""2026-11-22T10:00:00Z""#,
        );
        check_timestamp(
            datetime!(2026-11-22 10:00:00.5 UTC),
            r#""2026-11-22T10:00:00.5Z""#,
        );
        check_timestamp(
            datetime!(2026-11-22 10:00:00.000000001 UTC),
            r#""2026-11-22T10:00:00.000000001Z""#,
        );
        check_timestamp(
            datetime!(2026-11-22 11:00:00 +1),
            r#""2026-11-22T10:00:00Z""#,
        );
        check_timestamp(
            datetime!(0000-01-01 00:00:00 UTC),
            r#""0000-01-01T00:00:00Z""#,
        );
        check_timestamp(
            datetime!(9999-12-31 23:59:59.999 UTC),
            r#""9999-12-31T23:59:59.999Z""#,
        );
        assert_eq!(
            parse_timestamp("0000-01-01T00:00:00+01:00").unwrap_err(),
            "out of range (years 0000 to 9999 in UTC)"
        );
    }

    #[test]
    fn kinds() {
        let top = |text: &str| match parse(text.as_bytes()).unwrap() {
            Top::Object(_) => "an object",
            Top::Array(_) => "an array",
            Top::Other(kind) => kind,
        };
        assert_eq!(top(r#" {"a": [1, {"b": 2}]} "#), "an object");
        assert_eq!(top("[1, [2], {}]"), "an array");
        assert_eq!(top("\"x\""), "a string");
        assert_eq!(top("-1.5e3"), "a number");
        assert_eq!(top("true"), "a boolean");
        assert_eq!(top("null"), "null");
    }
}
