//! `[[realtime.forward]]`: events published by services reach browsers with no extra code in
//! the publisher (seed 004: a worker publishes `photo.processing.progress` with `userId` in its
//! data; the user's browser receives it).
//!
//! Each rule is a live engine subscription on its pattern, held by a task for the life of the
//! server. For each event the rule reads its target — a user or a room — from the first of its
//! `target` paths present in the event; an event without one is skipped (and counted), not an
//! error: the publisher did not address it to anyone. A subscription dropped as a slow consumer
//! is made again at once (events in between are lost to browsers, never to the log).

use std::sync::Arc;
use std::time::Duration;

use herald_core::{Pattern, StoredEvent};
use herald_engine::{Closed, Engine, StartAt};
use herald_protocol::realtime::Target;
use serde_json::Value;

use crate::config::{FORWARD_TARGET_DEFAULT, ForwardRule, ForwardTo};
use crate::realtime::fanout::Payload;
use crate::realtime::{Realtime, check_target};
use crate::state::ServerEngine;

/// Wait before subscribing again after a failure other than being too slow.
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);

/// Where a target is read in an event.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    /// A path in `data`: `data.owner.id` is `["owner", "id"]`.
    Data(Vec<String>),
    /// An envelope field.
    Envelope(String),
}

/// Envelope fields a target may come from: the strings a publisher sets.
const ENVELOPE_TARGET_FIELDS: [&str; 5] = ["userId", "key", "correlationId", "source", "type"];

/// A checked rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub pattern: Pattern,
    to: ForwardTo,
    sources: Vec<Source>,
    prefix: String,
}

impl Rule {
    /// The message names the offending key.
    pub fn new(config: &ForwardRule) -> Result<Rule, String> {
        let pattern = Pattern::new(&config.pattern).map_err(|error| format!("pattern: {error}"))?;
        let paths: Vec<String> = if config.target.is_empty() {
            match config.to {
                ForwardTo::User => FORWARD_TARGET_DEFAULT
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                ForwardTo::Room => {
                    return Err(
                        "to = \"room\" needs target, the event fields naming the room (e.g. \
                         [\"data.roomId\"])"
                            .into(),
                    );
                }
                ForwardTo::Broadcast => Vec::new(),
            }
        } else {
            if config.to == ForwardTo::Broadcast {
                return Err("to = \"broadcast\" takes no target".into());
            }
            config.target.clone()
        };
        if config.to == ForwardTo::Broadcast && !config.prefix.is_empty() {
            return Err("to = \"broadcast\" takes no prefix".into());
        }
        let sources = paths
            .iter()
            .map(|path| match path.strip_prefix("data.") {
                Some(rest) => {
                    let parts: Vec<String> = rest.split('.').map(str::to_owned).collect();
                    if parts.iter().any(String::is_empty) {
                        return Err(format!("target {path:?} has an empty field name"));
                    }
                    Ok(Source::Data(parts))
                }
                None if ENVELOPE_TARGET_FIELDS.contains(&path.as_str()) => {
                    Ok(Source::Envelope(path.clone()))
                }
                None => Err(format!(
                    "target {path:?} is neither data.<field> nor one of the envelope fields {}",
                    ENVELOPE_TARGET_FIELDS.join(", ")
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Rule {
            pattern,
            to: config.to,
            sources,
            prefix: config.prefix.clone(),
        })
    }

    /// Who `payload` goes to under this rule, or `None` when the event names no one (or names
    /// an invalid user or room).
    pub fn target(&self, payload: &Payload) -> Option<Target> {
        if self.to == ForwardTo::Broadcast {
            return Some(Target::Broadcast(true));
        }
        let value = self.sources.iter().find_map(|source| {
            let found = match source {
                Source::Data(path) => path
                    .iter()
                    .try_fold(&payload.data, |value, key| value.get(key)),
                Source::Envelope(field) => payload.meta.get(field),
            };
            match found? {
                Value::String(text) if !text.is_empty() => Some(text.clone()),
                Value::Number(number) => Some(number.to_string()),
                _ => None,
            }
        })?;
        let name = format!("{}{value}", self.prefix);
        let target = match self.to {
            ForwardTo::User => Target::User(name),
            _ => Target::Room(name),
        };
        check_target(&target).ok().map(|()| target)
    }
}

/// Starts one task per rule; they end when the engine stops.
pub fn spawn(engine: ServerEngine, realtime: Arc<Realtime>, rules: Vec<Rule>) {
    for rule in rules {
        tokio::spawn(run(engine.clone(), realtime.clone(), rule));
    }
}

async fn run(engine: ServerEngine, realtime: Arc<Realtime>, rule: Rule) {
    loop {
        let mut subscription = match engine
            .subscribe(rule.pattern.clone(), StartAt::Latest)
            .await
        {
            Ok(subscription) => subscription,
            Err(error) => {
                tracing::warn!(pattern = %rule.pattern, %error, "forwarding rule cannot subscribe");
                tokio::time::sleep(RESUBSCRIBE_DELAY).await;
                continue;
            }
        };
        let closed = loop {
            match subscription.recv().await {
                Ok(event) => forward(&realtime, &rule, &event),
                Err(closed) => break closed,
            }
        };
        match closed {
            Closed::EngineStopped => return,
            Closed::SlowConsumer { .. } => {
                realtime.metrics.forward_resubscribed.inc();
                tracing::warn!(pattern = %rule.pattern, reason = %closed, "forwarding rule fell behind; subscribing again");
            }
            other => {
                tracing::warn!(pattern = %rule.pattern, reason = %other, "forwarding rule's subscription ended; subscribing again");
                tokio::time::sleep(RESUBSCRIBE_DELAY).await;
            }
        }
    }
}

fn forward(realtime: &Realtime, rule: &Rule, event: &StoredEvent) {
    let json = event.to_json();
    let Some(payload) = Payload::from_json(&json) else {
        return;
    };
    match rule.target(&payload) {
        Some(target) => {
            realtime.metrics.forwarded.inc();
            realtime.deliver(&target, &json, &payload);
        }
        None => {
            realtime.metrics.forward_untargeted.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(to: ForwardTo, target: &[&str], prefix: &str) -> Result<Rule, String> {
        Rule::new(&ForwardRule {
            pattern: "photo.processing.*".into(),
            to,
            target: target.iter().map(|s| s.to_string()).collect(),
            prefix: prefix.into(),
        })
    }

    fn payload(data: Value, meta: Value) -> Payload {
        Payload {
            event_type: "photo.processing.progress".into(),
            data,
            meta,
        }
    }

    #[test]
    fn rules_are_checked() {
        for (to, target, prefix, expect) in [
            (ForwardTo::User, &[][..], "", Ok(())),
            (ForwardTo::User, &["data.owner.id", "key"][..], "", Ok(())),
            (ForwardTo::Room, &[][..], "", Err("needs target")),
            (ForwardTo::Room, &["data.photoId"][..], "photo.", Ok(())),
            (ForwardTo::Broadcast, &[][..], "", Ok(())),
            (
                ForwardTo::Broadcast,
                &["userId"][..],
                "",
                Err("takes no target"),
            ),
            (ForwardTo::Broadcast, &[][..], "x.", Err("takes no prefix")),
            (
                ForwardTo::User,
                &["data..id"][..],
                "",
                Err("empty field name"),
            ),
            (
                ForwardTo::User,
                &["owner"][..],
                "",
                Err("neither data.<field>"),
            ),
        ] {
            match (rule(to, target, prefix), expect) {
                (Ok(_), Ok(())) => {}
                (Err(error), Err(part)) => assert!(error.contains(part), "{error}"),
                (got, want) => panic!("{to:?} {target:?}: got {got:?}, want {want:?}"),
            }
        }
        let bad_pattern = Rule::new(&ForwardRule {
            pattern: "photo..x".into(),
            to: ForwardTo::User,
            target: Vec::new(),
            prefix: String::new(),
        });
        assert!(bad_pattern.unwrap_err().starts_with("pattern: "));
    }

    #[test]
    fn targets_come_from_the_event() {
        let user = rule(ForwardTo::User, &[], "").unwrap();
        let room = rule(ForwardTo::Room, &["data.photo.id"], "photo.").unwrap();
        let broadcast = rule(ForwardTo::Broadcast, &[], "").unwrap();
        let cases = [
            (
                &user,
                json!({"userId": "u1"}),
                json!({}),
                Some(Target::User("u1".into())),
            ),
            // data first, then the envelope.
            (
                &user,
                json!({"userId": "u1"}),
                json!({"userId": "u2"}),
                Some(Target::User("u1".into())),
            ),
            (
                &user,
                json!({}),
                json!({"userId": "u2"}),
                Some(Target::User("u2".into())),
            ),
            (
                &user,
                json!({"userId": 42}),
                json!({}),
                Some(Target::User("42".into())),
            ),
            (&user, json!({"userId": ""}), json!({}), None),
            (&user, json!({"userId": {"x": 1}}), json!({}), None),
            (&user, json!("text"), json!({}), None),
            (&user, json!({}), json!({}), None),
            (
                &room,
                json!({"photo": {"id": "p7"}}),
                json!({}),
                Some(Target::Room("photo.p7".into())),
            ),
            // Not a valid room name: skipped.
            (&room, json!({"photo": {"id": "a b"}}), json!({}), None),
            (
                &broadcast,
                json!({}),
                json!({}),
                Some(Target::Broadcast(true)),
            ),
        ];
        for (rule, data, meta, expect) in cases {
            let payload = payload(data.clone(), meta.clone());
            assert_eq!(rule.target(&payload), expect, "{data} {meta}");
        }
    }
}
