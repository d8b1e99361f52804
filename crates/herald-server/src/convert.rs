//! Between the engine's types and the wire's: the one place where the API's names, units and
//! defaults meet the engine's.

use std::time::Duration;

use herald_core::Pattern;
use herald_engine::{
    Backoff, DeadLetter, GroupPolicy, GroupSpec, GroupStats, PublishOutcome, StartAt, StreamStats,
};
use herald_protocol::From;
use herald_protocol::http::{
    DeadLetterInfo, GroupInfo, GroupPolicyConfig, PublishResult, StreamInfo,
};
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;

use crate::error::ApiError;

/// Bounds on a group's policy, so that one request cannot make a group that never retries or
/// retries without pause.
pub const MAX_RETRIES_MAX: u32 = 1000;
pub const MAX_IN_FLIGHT_MAX: u32 = 100_000;
pub const ACK_TIMEOUT_MIN: Duration = Duration::from_millis(100);
pub const ACK_TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);
pub const GROUP_NAME_BYTES_MAX: usize = 128;

pub fn start_at(from: From) -> StartAt {
    match from {
        From::Latest => StartAt::Latest,
        From::Earliest => StartAt::Earliest,
        From::Seq(seq) => StartAt::Seq(seq),
        From::Time(time) => StartAt::Time(time),
    }
}

pub fn publish_result(outcome: PublishOutcome) -> PublishResult {
    PublishResult {
        id: outcome.id.as_str().to_owned(),
        stream: outcome.stream.map(|stream| stream.to_string()),
        seq: outcome.seq,
        duplicate: outcome.duplicate,
    }
}

pub fn stream_info(stats: StreamStats) -> StreamInfo {
    StreamInfo {
        name: stats.name,
        first_seq: stats.first_seq,
        last_seq: stats.last_seq,
        events: stats.events,
        bytes: stats.bytes,
        published: stats.published,
        published_per_second: stats.published_per_second,
        duplicates: stats.duplicates,
        live_subscribers: stats.live_subscribers as u64,
        slow_consumers_dropped: stats.slow_consumers_dropped,
    }
}

pub fn group_info(stats: GroupStats) -> GroupInfo {
    GroupInfo {
        name: stats.name,
        pattern: stats.pattern,
        members: stats.members as u64,
        lag: stats.lag,
        in_flight: stats.in_flight,
        scheduled: stats.scheduled,
        dead_letters: stats.dead_letters,
        delivered: stats.delivered,
        acked: stats.acked,
        nacked: stats.nacked,
        redelivered: stats.redelivered,
        dead_lettered: stats.dead_lettered,
    }
}

pub fn dead_letter_info(dead: DeadLetter) -> DeadLetterInfo {
    let event = RawValue::from_string(String::from_utf8_lossy(&dead.event.to_json()).into_owned())
        .unwrap_or_else(|_| RawValue::NULL.to_owned());
    DeadLetterInfo {
        group: dead.group,
        event,
        attempts: dead.attempts,
        last_error: dead.last_error,
        first_delivered_at: rfc3339(dead.first_delivered_at),
        dead_at: rfc3339(dead.dead_at),
    }
}

pub fn rfc3339(time: time::OffsetDateTime) -> String {
    time.format(&Rfc3339).unwrap_or_default()
}

/// A group name is one subject token, so that it is also a directory name and an admin
/// pattern can match it.
pub fn check_group_name(name: &str) -> Result<(), ApiError> {
    if name.len() > GROUP_NAME_BYTES_MAX || !herald_core::subject::is_valid_token(name) {
        return Err(ApiError::bad_request(format!(
            "group name {:?} must be 1 to {GROUP_NAME_BYTES_MAX} characters of [A-Za-z0-9_-]",
            name.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

/// The engine's policy from the wire's, defaults filled in and bounds checked.
pub fn group_policy(wire: Option<&GroupPolicyConfig>) -> Result<GroupPolicy, ApiError> {
    let mut policy = GroupPolicy::default();
    let Some(wire) = wire else {
        return Ok(policy);
    };
    if let Some(timeout) = wire.ack_timeout_ms {
        let timeout = Duration::from_millis(timeout);
        if !(ACK_TIMEOUT_MIN..=ACK_TIMEOUT_MAX).contains(&timeout) {
            return Err(ApiError::bad_request(format!(
                "policy.ackTimeoutMs must be between {} and {}",
                ACK_TIMEOUT_MIN.as_millis(),
                ACK_TIMEOUT_MAX.as_millis()
            )));
        }
        policy.ack_timeout = timeout;
    }
    if let Some(retries) = wire.max_retries {
        if retries > MAX_RETRIES_MAX {
            return Err(ApiError::bad_request(format!(
                "policy.maxRetries must be at most {MAX_RETRIES_MAX}"
            )));
        }
        policy.max_retries = retries;
    }
    if let Some(in_flight) = wire.max_in_flight {
        policy.max_in_flight = check_max_in_flight(in_flight, "policy.maxInFlight")?;
    }
    if let Some(backoff) = &wire.backoff {
        if !(1.0..=10.0).contains(&backoff.factor) {
            return Err(ApiError::bad_request(
                "policy.backoff.factor must be between 1 and 10",
            ));
        }
        if !(0.0..=1.0).contains(&backoff.jitter) {
            return Err(ApiError::bad_request(
                "policy.backoff.jitter must be between 0 and 1",
            ));
        }
        if backoff.initial_ms == 0 || backoff.max_ms < backoff.initial_ms {
            return Err(ApiError::bad_request(
                "policy.backoff needs initialMs >= 1 and maxMs >= initialMs",
            ));
        }
        policy.backoff = Backoff {
            initial: Duration::from_millis(backoff.initial_ms),
            factor: backoff.factor,
            max: Duration::from_millis(backoff.max_ms),
            jitter: backoff.jitter,
        };
    }
    Ok(policy)
}

pub fn check_max_in_flight(in_flight: u32, field: &str) -> Result<u32, ApiError> {
    if in_flight == 0 || in_flight > MAX_IN_FLIGHT_MAX {
        return Err(ApiError::bad_request(format!(
            "{field} must be between 1 and {MAX_IN_FLIGHT_MAX}"
        )));
    }
    Ok(in_flight)
}

pub fn group_spec(
    name: &str,
    pattern: Pattern,
    from: From,
    policy: GroupPolicy,
) -> Result<GroupSpec, ApiError> {
    check_group_name(name)?;
    Ok(GroupSpec {
        name: name.to_owned(),
        pattern,
        policy,
        start: start_at(from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::http::BackoffConfig;

    fn check(wire: GroupPolicyConfig, expect: Result<(), &str>) {
        match (group_policy(Some(&wire)), expect) {
            (Ok(_), Ok(())) => {}
            (Err(error), Err(part)) => assert!(error.detail.message.contains(part), "{error}"),
            (got, want) => panic!("{wire:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn policies() {
        check(GroupPolicyConfig::default(), Ok(()));
        check(
            GroupPolicyConfig {
                ack_timeout_ms: Some(5),
                ..Default::default()
            },
            Err("ackTimeoutMs"),
        );
        check(
            GroupPolicyConfig {
                max_in_flight: Some(0),
                ..Default::default()
            },
            Err("maxInFlight"),
        );
        check(
            GroupPolicyConfig {
                backoff: Some(BackoffConfig {
                    initial_ms: 10,
                    factor: 2.0,
                    max_ms: 5,
                    jitter: 0.1,
                }),
                ..Default::default()
            },
            Err("maxMs >= initialMs"),
        );
        check(
            GroupPolicyConfig {
                backoff: Some(BackoffConfig {
                    initial_ms: 10,
                    factor: 2.0,
                    max_ms: 50,
                    jitter: 1.5,
                }),
                ..Default::default()
            },
            Err("jitter"),
        );
    }

    #[test]
    fn group_names() {
        assert!(check_group_name("mailer_2-x").is_ok());
        assert!(check_group_name("").is_err());
        assert!(check_group_name("a.b").is_err());
        assert!(check_group_name(&"a".repeat(129)).is_err());
    }
}
