//! `herald sub` (events as JSON lines, for programs) and `herald tail` (a readable live view).

use std::io::Write;

use anyhow::Context;
use clap::Args;
use herald_client::{From, GroupOptions, ReceivedEvent, SubscribeOptions};
use serde::de::IgnoredAny;
use time::format_description::FormatItem;
use time::macros::format_description;

use super::ServerArgs;

/// A `tail` line shows this much of an event's data.
const TAIL_DATA_CHARS_MAX: usize = 160;

#[derive(Debug, Args)]
pub struct SubArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Subjects to receive, such as user.* or order.> (NATS wildcards).
    pattern: String,
    /// Join this consumer group (at-least-once; each event is acked once printed).
    #[arg(long, short)]
    group: Option<String>,
    /// Where to start: latest, earliest, a seq, or an RFC 3339 time [default: latest].
    #[arg(long, value_parser = parse_from)]
    from: Option<From>,
    /// Exit after this many events.
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// In a group, deliveries held at once [default: the server's, or --count if smaller].
    #[arg(long)]
    max_in_flight: Option<u32>,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Subjects to watch.
    #[arg(default_value = ">")]
    pattern: String,
    /// Where to start: latest, earliest, a seq, or an RFC 3339 time [default: latest].
    #[arg(long, value_parser = parse_from)]
    from: Option<From>,
}

fn parse_from(text: &str) -> Result<From, String> {
    From::parse(text).map_err(|error| error.to_string())
}

/// Writes a line to stdout; false once stdout is gone (`herald sub … | head`).
fn emit(line: &str) -> bool {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .is_ok()
}

pub async fn sub(args: SubArgs) -> anyhow::Result<()> {
    let client = args.server.connect().await?;
    let result = tokio::select! {
        result = receive(&client, &args) => result,
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C"),
    };
    client.close().await;
    result
}

async fn receive(client: &herald_client::Client, args: &SubArgs) -> anyhow::Result<()> {
    let limit = args.count.unwrap_or(u64::MAX);
    if limit == 0 {
        return Ok(());
    }
    let mut printed = 0u64;
    match &args.group {
        None => {
            let options = SubscribeOptions { from: args.from };
            let mut subscription = client
                .subscribe::<IgnoredAny>(&args.pattern, options)
                .await
                .with_context(|| format!("subscribing to {}", args.pattern))?;
            while let Some(event) = subscription.next().await {
                if !emit(event?.json()) {
                    break;
                }
                printed += 1;
                if printed >= limit {
                    break;
                }
            }
        }
        Some(group) => {
            // More in flight than will be printed would only come back as redeliveries.
            let max_in_flight = match (args.max_in_flight, args.count) {
                (Some(max), _) => Some(max),
                (None, Some(count)) => u32::try_from(count).ok().filter(|count| *count < 100),
                (None, None) => None,
            };
            let options = GroupOptions {
                from: args.from,
                max_in_flight,
                ..GroupOptions::default()
            };
            let mut subscription = client
                .group_subscription::<IgnoredAny>(&args.pattern, group, options)
                .await
                .with_context(|| format!("joining group {group} on {}", args.pattern))?;
            while let Some(delivery) = subscription.next().await {
                let delivery = match delivery {
                    Ok(delivery) => delivery,
                    Err(error @ herald_client::Error::Decode { .. }) => {
                        eprintln!("skipped (dead-lettered): {error}");
                        continue;
                    }
                    Err(error) => return Err(error.into()),
                };
                if !emit(delivery.event.json()) {
                    // Not printed, so not acked: it goes to another member.
                    break;
                }
                delivery.ack().await.context("acking")?;
                printed += 1;
                if printed >= limit {
                    break;
                }
            }
            subscription.unsubscribe().await.ok();
        }
    }
    Ok(())
}

pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let client = args.server.connect().await?;
    let options = SubscribeOptions { from: args.from };
    let mut subscription = client
        .subscribe::<serde_json::Value>(&args.pattern, options)
        .await
        .with_context(|| format!("subscribing to {}", args.pattern))?;
    eprintln!(
        "watching {} on {} (Ctrl-C to stop)",
        args.pattern, args.server.url
    );
    let watch = async {
        while let Some(event) = subscription.next().await {
            match event {
                Ok(event) => {
                    if !emit(&tail_line(&event)) {
                        break;
                    }
                }
                Err(error @ herald_client::Error::Decode { .. }) => eprintln!("{error}"),
                Err(error) => return Err(anyhow::Error::from(error)),
            }
        }
        Ok(())
    };
    let result = tokio::select! {
        result = watch => result,
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C"),
    };
    client.close().await;
    result
}

const TIME_FORMAT: &[FormatItem<'static>] =
    format_description!("[hour]:[minute]:[second].[subsecond digits:3]");

/// `10:00:00.123  photo/42  photo.uploaded  {"photoId":"p1"}`
fn tail_line(event: &ReceivedEvent<serde_json::Value>) -> String {
    let time = event
        .timestamp
        .to_offset(time::UtcOffset::UTC)
        .format(TIME_FORMAT)
        .unwrap_or_else(|_| event.timestamp.to_string());
    let position = match (&event.stream, event.seq) {
        (Some(stream), Some(seq)) => format!("{stream}/{seq}"),
        _ => "(live)".to_owned(),
    };
    let mut data = event.data.to_string();
    if data.chars().count() > TAIL_DATA_CHARS_MAX {
        data = data.chars().take(TAIL_DATA_CHARS_MAX - 1).collect();
        data.push('…');
    }
    format!("{time}  {position}  {}  {data}", event.event_type)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn received(json: &str) -> ReceivedEvent<serde_json::Value> {
        ReceivedEvent::decode(&RawValue::from_string(json.to_owned()).unwrap()).unwrap()
    }

    #[test]
    fn tail_lines() {
        let event = received(
            r#"{"stream":"photo","seq":42,"id":"e1","type":"photo.uploaded","version":"1.0","timestamp":"2026-11-22T10:00:00.123Z","data":{ "photoId" : "p1" }}"#,
        );
        assert_eq!(
            tail_line(&event),
            r#"10:00:00.123  photo/42  photo.uploaded  {"photoId":"p1"}"#
        );
        let long = format!(
            r#"{{"id":"e2","type":"typing.start","version":"1.0","timestamp":"2026-11-22T10:00:00Z","data":"{}"}}"#,
            "x".repeat(500)
        );
        let line = tail_line(&received(&long));
        assert!(
            line.starts_with("10:00:00.000  (live)  typing.start  \"xxx"),
            "{line}"
        );
        assert!(line.ends_with('…') && line.chars().count() < 220, "{line}");
    }
}
