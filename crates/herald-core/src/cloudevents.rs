//! CloudEvents 1.0 structured mode (`application/cloudevents+json`), both ways.
//!
//! | CloudEvents | Herald |
//! | --- | --- |
//! | `specversion` | must be `"1.0"`; not kept |
//! | `id`, `type`, `data` | `id`, `type`, `data` |
//! | `source` | `source`; an event without one is sent as `"herald"` (CloudEvents requires it) |
//! | `time` | `timestamp` |
//! | `partitionkey` | `key` |
//! | `correlationid`, `traceparent`, `userid`, `version` | `correlationId`, `traceId`, `userId`, `version` |
//! | `datacontenttype` | absent, `application/json` or `*/*+json`; not kept (Herald data is JSON) |
//! | `data_base64` | rejected: binary data is not supported in structured mode yet |
//! | `heraldmetadata` | metadata entries that cannot be attributes, as a JSON object in a string |
//! | any other attribute (`subject`, `dataschema`, extensions) | a metadata entry |
//!
//! Non-string extension values (numbers, booleans) become their JSON text; objects and arrays
//! are rejected. On the way out, metadata entries named like CloudEvents attributes and not
//! mapped above become attributes, and the rest travel in `heraldmetadata`, so that Event →
//! CloudEvent → Event loses nothing but a missing source.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::event::wire::{self, Top};
use crate::event::{
    CORRELATION_ID_BYTES_MAX, Event, EventError, EventFields, KEY_BYTES_MAX, ParseContext,
    SOURCE_BYTES_MAX, TRACE_ID_BYTES_MAX, USER_ID_BYTES_MAX, VERSION_BYTES_MAX, check_metadata,
    check_size, decode_id, decode_type, excerpt, insert_metadata, json_error, string_field,
    text_field, timestamp_field, write_string_map,
};

/// The CloudEvents spec asks attribute names to stay within 20 characters.
pub const ATTRIBUTE_NAME_BYTES_MAX: usize = 20;
/// Stands in for a missing `source`, which CloudEvents requires.
pub const SOURCE_DEFAULT: &str = "herald";
pub const SPEC_VERSION: &str = "1.0";
const HERALD_METADATA: &str = "heraldmetadata";

/// Attributes with a fixed meaning here; a metadata entry by one of these names travels in
/// `heraldmetadata` instead.
const MAPPED_ATTRIBUTES: [&str; 14] = [
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "datacontenttype",
    "data",
    "data_base64",
    "partitionkey",
    "correlationid",
    "traceparent",
    "userid",
    "version",
    HERALD_METADATA,
];

/// CloudEvents 1.0: "lower-case letters ('a' to 'z') or digits ('0' to '9')".
pub fn is_attribute_name(name: &str) -> bool {
    (1..=ATTRIBUTE_NAME_BYTES_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
}

/// Whether a content type carries JSON (`application/json`, `text/json`, any `+json`).
pub fn is_json_content_type(value: &str) -> bool {
    let media_type = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media_type == "application/json"
        || media_type == "text/json"
        || (media_type.ends_with("+json") && media_type.contains('/'))
}

impl Event {
    /// Decodes one binary-mode CloudEvent (HTTP binding): `attributes` are the `ce-*` headers
    /// with the prefix removed and names lower-cased, `content_type` the body's, `data` the
    /// body, which must be JSON. The attributes are checked exactly as in structured mode.
    pub fn from_cloudevent_binary(
        attributes: &[(String, String)],
        content_type: Option<&str>,
        data: &[u8],
        context: &ParseContext,
    ) -> Result<Event, EventError> {
        if let Some(content_type) = content_type
            && !is_json_content_type(content_type)
        {
            return Err(EventError::UnsupportedDataContentType {
                value: excerpt(content_type),
            });
        }
        let mut structured = Vec::with_capacity(data.len() + 64 * (attributes.len() + 1));
        structured.push(b'{');
        for (name, value) in attributes {
            if name == "data" || name == "data_base64" || !is_attribute_name(name) {
                return Err(EventError::InvalidAttributeName {
                    name: excerpt(name),
                });
            }
            wire::write_key(&mut structured, name);
            wire::write_string(&mut structured, value);
            structured.push(b',');
        }
        if let Some(content_type) = content_type {
            wire::write_key(&mut structured, "datacontenttype");
            wire::write_string(&mut structured, content_type);
            structured.push(b',');
        }
        wire::write_key(&mut structured, "data");
        if data.iter().all(u8::is_ascii_whitespace) {
            structured.extend_from_slice(b"null");
        } else {
            // Exactly one JSON value, so that the body cannot add attributes of its own.
            let value: &RawValue =
                serde_json::from_slice(data).map_err(|error| EventError::Json {
                    message: format!("binary-mode body: {error}"),
                })?;
            structured.extend_from_slice(value.get().as_bytes());
        }
        structured.push(b'}');
        Event::from_cloudevent_json(&structured, context)
    }

    /// Decodes one structured-mode CloudEvent. `id`, `source`, `specversion` and `type` are
    /// required, as the spec says; `time` defaults to `context.now`.
    pub fn from_cloudevent_json(bytes: &[u8], context: &ParseContext) -> Result<Event, EventError> {
        check_size(bytes, context.limits.event_bytes_max)?;
        let members = match wire::parse(bytes).map_err(|error| json_error(&error))? {
            Top::Object(members) => members,
            Top::Array(_) => return Err(EventError::NotAnObject { found: "an array" }),
            Top::Other(found) => return Err(EventError::NotAnObject { found }),
        };
        let mut fields = EventFields::default();
        let mut spec_version = None;
        let mut extensions: Vec<(String, String)> = Vec::new();
        let mut seen: Vec<&str> = Vec::with_capacity(members.len());
        for (name, raw) in &members {
            if seen.contains(&&**name) {
                return Err(EventError::DuplicateField {
                    name: excerpt(name),
                });
            }
            seen.push(name);
            match &**name {
                "specversion" => spec_version = string_field("specversion", raw)?,
                "id" => fields.id = decode_id(raw)?,
                "type" => fields.event_type = Some(decode_type(raw)?),
                "source" => fields.source = text_field("source", raw, SOURCE_BYTES_MAX)?,
                "time" => fields.timestamp = timestamp_field("time", raw)?,
                "partitionkey" => fields.key = text_field("partitionkey", raw, KEY_BYTES_MAX)?,
                "correlationid" => {
                    fields.correlation_id =
                        text_field("correlationid", raw, CORRELATION_ID_BYTES_MAX)?;
                }
                "traceparent" => {
                    fields.trace_id = text_field("traceparent", raw, TRACE_ID_BYTES_MAX)?;
                }
                "userid" => fields.user_id = text_field("userid", raw, USER_ID_BYTES_MAX)?,
                "version" => fields.version = text_field("version", raw, VERSION_BYTES_MAX)?,
                "datacontenttype" => {
                    if let Some(value) = string_field("datacontenttype", raw)?
                        && !is_json_content_type(&value)
                    {
                        return Err(EventError::UnsupportedDataContentType {
                            value: excerpt(&value),
                        });
                    }
                }
                "data" => fields.data = Some((*raw).to_owned()),
                "data_base64" => return Err(EventError::DataBase64NotSupported),
                HERALD_METADATA => {
                    if let Some(text) = string_field(HERALD_METADATA, raw)? {
                        extensions.extend(decode_herald_metadata(&text)?);
                    }
                }
                other => {
                    if let Some(value) = decode_extension(other, raw)? {
                        extensions.push((other.to_owned(), value));
                    }
                }
            }
        }
        match spec_version.as_deref() {
            None => {
                return Err(EventError::MissingField {
                    name: "specversion",
                });
            }
            Some(SPEC_VERSION) => {}
            Some(other) => {
                return Err(EventError::UnsupportedSpecVersion {
                    value: excerpt(other),
                });
            }
        }
        if fields.id.is_none() {
            return Err(EventError::MissingField { name: "id" });
        }
        if fields.source.is_none() {
            return Err(EventError::MissingField { name: "source" });
        }
        let mut metadata = BTreeMap::new();
        for (key, value) in extensions {
            insert_metadata(&mut metadata, key, value)?;
        }
        check_metadata(&metadata)?;
        fields.metadata = metadata;
        fields.finish(context)
    }

    /// The structured-mode CloudEvent, `datacontenttype` `application/json`.
    pub fn to_cloudevent_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(320 + self.data.get().len());
        out.push(b'{');
        attribute(&mut out, "specversion", SPEC_VERSION);
        attribute(&mut out, "id", self.id.as_str());
        attribute(
            &mut out,
            "source",
            self.source.as_deref().unwrap_or(SOURCE_DEFAULT),
        );
        attribute(&mut out, "type", self.event_type.as_str());
        wire::write_key(&mut out, "time");
        wire::write_timestamp(&mut out, self.timestamp);
        out.push(b',');
        attribute(&mut out, "datacontenttype", "application/json");
        attribute(&mut out, "version", &self.version);
        let optional = [
            ("partitionkey", &self.key),
            ("correlationid", &self.correlation_id),
            ("traceparent", &self.trace_id),
            ("userid", &self.user_id),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                attribute(&mut out, name, value);
            }
        }
        let mut leftover = BTreeMap::new();
        for (key, value) in &self.metadata {
            if is_attribute_name(key) && !MAPPED_ATTRIBUTES.contains(&key.as_str()) {
                attribute(&mut out, key, value);
            } else {
                leftover.insert(key.clone(), value.clone());
            }
        }
        if !leftover.is_empty() {
            let mut object = Vec::new();
            write_string_map(&mut object, &leftover);
            // `write_string_map` writes JSON, which is UTF-8.
            attribute(&mut out, HERALD_METADATA, &String::from_utf8_lossy(&object));
        }
        wire::write_key(&mut out, "data");
        out.extend_from_slice(self.data.get().as_bytes());
        out.push(b'}');
        out
    }
}

fn attribute(out: &mut Vec<u8>, name: &str, value: &str) {
    wire::write_key(out, name);
    wire::write_string(out, value);
    out.push(b',');
}

fn decode_extension(name: &str, raw: &RawValue) -> Result<Option<String>, EventError> {
    if !is_attribute_name(name) {
        return Err(EventError::InvalidAttributeName {
            name: excerpt(name),
        });
    }
    match wire::kind(raw) {
        "null" => Ok(None),
        "a string" => wire::decode_string(raw)
            .map(Some)
            .map_err(|error| json_error(&error)),
        "a number" | "a boolean" => Ok(Some(raw.get().to_owned())),
        found => Err(EventError::ExtensionNotScalar {
            name: name.to_owned(),
            found,
        }),
    }
}

fn decode_herald_metadata(text: &str) -> Result<Vec<(String, String)>, EventError> {
    let invalid = |reason: String| EventError::InvalidHeraldMetadata { reason };
    let members = match wire::parse(text.as_bytes()) {
        Ok(Top::Object(members)) => members,
        Ok(Top::Array(_)) => return Err(invalid("found an array".to_owned())),
        Ok(Top::Other(found)) => return Err(invalid(format!("found {found}"))),
        Err(error) => return Err(invalid(error.to_string())),
    };
    members
        .into_iter()
        .map(|(key, raw)| match wire::kind(raw) {
            "a string" => wire::decode_string(raw)
                .map(|value| (key.into_owned(), value))
                .map_err(|error| invalid(error.to_string())),
            found => Err(invalid(format!(
                "the value of {:?} is {found}",
                excerpt(&key)
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod binary_mode_tests {
    use super::*;
    use time::macros::datetime;

    fn check(
        attributes: &[(&str, &str)],
        content_type: Option<&str>,
        body: &str,
        expect: Result<&str, &str>,
    ) {
        let attributes: Vec<(String, String)> = attributes
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        let context = ParseContext::new(datetime!(2026-11-23 10:00 UTC));
        let result =
            Event::from_cloudevent_binary(&attributes, content_type, body.as_bytes(), &context);
        match (result, expect) {
            (Ok(event), Ok(data)) => assert_eq!(event.data.get(), data),
            (Err(error), Err(part)) => assert!(error.to_string().contains(part), "{error}"),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    const REQUIRED: [(&str, &str); 4] = [
        ("specversion", "1.0"),
        ("id", "e-1"),
        ("source", "shop"),
        ("type", "order.created"),
    ];

    #[test]
    fn binary_mode() {
        check(
            &REQUIRED,
            Some("application/json"),
            r#"{"total":5}"#,
            Ok(r#"{"total":5}"#),
        );
        check(&REQUIRED, None, "", Ok("null"));
        let mut with_key = REQUIRED.to_vec();
        with_key.push(("partitionkey", "o-1"));
        check(
            &with_key,
            Some("application/json; charset=utf-8"),
            "[1]",
            Ok("[1]"),
        );
        check(
            &REQUIRED,
            Some("text/plain"),
            "hi",
            Err("unsupported datacontenttype"),
        );
        check(&REQUIRED[1..], None, "1", Err("specversion"));
        check(
            &REQUIRED,
            None,
            r#"{}, "userid": "x""#,
            Err("binary-mode body"),
        );
        let mut bad = REQUIRED.to_vec();
        bad.push(("Bad-Name", "x"));
        check(&bad, None, "1", Err("invalid CloudEvents attribute name"));
    }
}
