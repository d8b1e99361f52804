//! `herald pub`: one event from the command line, or an NDJSON file in pipelined batches.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use herald_client::{Client, NewEvent};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::value::RawValue;

use super::ServerArgs;

/// Batches in flight at once when publishing a file: enough to keep the server's group
/// commit busy, few enough that an error stops the run soon.
const BATCHES_IN_FLIGHT: usize = 8;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  herald pub user.created '{\"id\":\"u1\"}'\n  herald pub --file events.ndjson   # one event object per line: {\"type\":…,\"data\":…}"
)]
pub struct PubArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The event's type, such as photo.uploaded.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    event_type: Option<String>,
    /// The event's data, as JSON [default: null].
    data: Option<String>,
    /// Publish every line of this NDJSON file (each a whole event: type, data, envelope).
    #[arg(long, short)]
    file: Option<PathBuf>,
    /// Events per batch with --file.
    #[arg(long, default_value_t = 100, requires = "file")]
    batch: usize,
    /// The event's id (makes a retry safe: the server stores an id once).
    #[arg(long, conflicts_with = "file")]
    id: Option<String>,
    /// The ordering key.
    #[arg(long, conflicts_with = "file")]
    key: Option<String>,
    #[arg(long, conflicts_with = "file")]
    correlation_id: Option<String>,
    #[arg(long, conflicts_with = "file")]
    user_id: Option<String>,
}

pub async fn run(args: PubArgs) -> anyhow::Result<()> {
    if let Some(file) = &args.file {
        return publish_file(&args, file).await;
    }
    let event = one_event(&args)?;
    let client = args.server.connect().await?;
    let result = client.publish_event(event).await;
    client.close().await;
    println!("{}", serde_json::to_string(&result?)?);
    Ok(())
}

fn one_event(args: &PubArgs) -> anyhow::Result<NewEvent> {
    let event_type = args.event_type.as_deref().unwrap_or_default();
    let data = args.data.as_deref().unwrap_or("null");
    let data = RawValue::from_string(data.to_owned())
        .with_context(|| format!("the data is not valid JSON: {data}"))?;
    let mut event = NewEvent::with_raw_data(event_type, data)?;
    if let Some(id) = &args.id {
        event = event.id(id)?;
    }
    if let Some(key) = &args.key {
        event = event.key(key);
    }
    if let Some(id) = &args.correlation_id {
        event = event.correlation_id(id);
    }
    if let Some(id) = &args.user_id {
        event = event.user_id(id);
    }
    Ok(event)
}

async fn publish_file(args: &PubArgs, path: &PathBuf) -> anyhow::Result<()> {
    let open = || {
        std::fs::File::open(path)
            .map(BufReader::new)
            .with_context(|| format!("opening {}", path.display()))
    };
    // Counted first so that the bar can show how far along the run is.
    let total = open()?
        .lines()
        .map_while(Result::ok)
        .filter(|line| !line.trim().is_empty())
        .count();
    let progress = ProgressBar::new(total as u64);
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let client = args.server.connect().await?;
    let batches = read_batches(open()?, args.batch.max(1));
    let started = std::time::Instant::now();
    let mut published = 0u64;
    let mut duplicates = 0u64;
    let mut outcomes = futures::stream::iter(batches)
        .map(|batch| publish_batch(&client, batch))
        .buffered(BATCHES_IN_FLIGHT);
    let mut failure = None;
    while let Some(outcome) = outcomes.next().await {
        match outcome {
            Ok(results) => {
                published += results.len() as u64;
                duplicates += results.iter().filter(|result| result.duplicate).count() as u64;
                progress.inc(results.len() as u64);
            }
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    drop(outcomes);
    progress.finish_and_clear();
    client.close().await;
    if let Some(error) = failure {
        return Err(error.context(format!(
            "publishing {} (the {published} events before the failing batch are stored)",
            path.display()
        )));
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "published {published} events ({duplicates} duplicates) in {seconds:.2} s ({:.0} events/s)",
        published as f64 / seconds.max(1e-9)
    );
    println!(
        "{}",
        serde_json::json!({"published": published, "duplicates": duplicates})
    );
    Ok(())
}

/// A batch of events with the line number of its first event, or the line that is not an event.
type Batch = anyhow::Result<(usize, Vec<NewEvent>)>;

fn read_batches(reader: impl BufRead, size: usize) -> impl Iterator<Item = Batch> {
    let mut lines = reader.lines().enumerate();
    let mut done = false;
    let mut failed: Option<anyhow::Error> = None;
    std::iter::from_fn(move || {
        if let Some(error) = failed.take() {
            return Some(Err(error));
        }
        if done {
            return None;
        }
        let mut batch = Vec::with_capacity(size);
        let mut first = 0;
        while batch.len() < size {
            let Some((index, line)) = lines.next() else {
                done = true;
                break;
            };
            let line_number = index + 1;
            let parsed = line
                .with_context(|| format!("reading line {line_number}"))
                .and_then(|line| {
                    if line.trim().is_empty() {
                        return Ok(None);
                    }
                    NewEvent::from_json(&line)
                        .map(Some)
                        .with_context(|| format!("line {line_number}"))
                });
            match parsed {
                Ok(Some(event)) => {
                    if batch.is_empty() {
                        first = line_number;
                    }
                    batch.push(event);
                }
                Ok(None) => {}
                Err(error) => {
                    // The events before the bad line go first, then the error.
                    done = true;
                    if batch.is_empty() {
                        return Some(Err(error));
                    }
                    failed = Some(error);
                    break;
                }
            }
        }
        (!batch.is_empty()).then_some(Ok((first, batch)))
    })
}

async fn publish_batch(
    client: &Client,
    batch: Batch,
) -> anyhow::Result<Vec<herald_client::PublishResult>> {
    let (first, events) = batch?;
    let count = events.len();
    client
        .publish_batch(events)
        .await
        .with_context(|| format!("lines {first}.. ({count} events)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_skip_blank_lines_and_stop_at_a_bad_one() {
        let input = "{\"type\":\"a.b\"}\n\n{\"type\":\"a.c\"}\n{\"type\":\"a.d\"}\n{\"type\":\"a..\"}\n{\"type\":\"a.e\"}\n";
        let batches: Vec<Batch> = read_batches(input.as_bytes(), 2).collect();
        assert_eq!(batches.len(), 3, "{batches:?}");
        let (first, events) = batches[0].as_ref().unwrap();
        assert_eq!((*first, events.len()), (1, 2));
        let (first, events) = batches[1].as_ref().unwrap();
        assert_eq!((*first, events.len()), (4, 1));
        let error = format!("{:#}", batches[2].as_ref().unwrap_err());
        assert!(error.contains("line 5"), "{error}");
    }
}
