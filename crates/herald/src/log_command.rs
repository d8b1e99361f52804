//! `herald log …`: operator commands on a log directory while no server holds it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use herald_log::{INDEX_INTERVAL_BYTES_DEFAULT, Log, LogConfig};

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Read every record of every segment and report what is wrong, changing nothing.
    Verify {
        dir: PathBuf,
        /// The index interval the log was written with.
        #[arg(long, default_value_t = INDEX_INTERVAL_BYTES_DEFAULT)]
        index_interval_bytes: u64,
    },
    /// Print records as JSON lines: {"seq","timestampUs","payload"}.
    Dump {
        dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long)]
        count: Option<u64>,
    },
    /// Open the log, truncating it at the first invalid record and dropping what follows.
    Repair { dir: PathBuf },
    /// Print the log's counters as JSON.
    Stats { dir: PathBuf },
}

pub fn run(command: LogCommand) -> anyhow::Result<()> {
    match command {
        LogCommand::Verify {
            dir,
            index_interval_bytes,
        } => verify(dir, index_interval_bytes),
        LogCommand::Dump { dir, from, count } => dump(dir, from, count),
        LogCommand::Repair { dir } => {
            let config = LogConfig {
                repair: true,
                ..LogConfig::default()
            };
            let log =
                Log::open(&dir, config).with_context(|| format!("repairing {}", dir.display()))?;
            println!("{}", stats_json(&log));
            log.close()?;
            Ok(())
        }
        LogCommand::Stats { dir } => {
            let log = Log::open(&dir, LogConfig::default())
                .with_context(|| format!("opening {}", dir.display()))?;
            println!("{}", stats_json(&log));
            log.close()?;
            Ok(())
        }
    }
}

fn verify(dir: PathBuf, index_interval_bytes: u64) -> anyhow::Result<()> {
    let report = herald_log::verify(&dir, index_interval_bytes)
        .with_context(|| format!("verifying {}", dir.display()))?;
    for segment in &report.segments {
        let state = if segment.problems.is_empty() {
            "ok"
        } else {
            "DAMAGED"
        };
        println!(
            "{:020}.log  {state:7}  {} records  {} bytes",
            segment.base_seq, segment.records, segment.bytes
        );
        for problem in &segment.problems {
            println!("    {problem}");
        }
    }
    println!(
        "{} segments, {} records: {}",
        report.segments.len(),
        report.records(),
        if report.is_clean() {
            "clean"
        } else {
            "problems found"
        }
    );
    if !report.is_clean() {
        bail!("the log in {} has problems", dir.display());
    }
    Ok(())
}

fn dump(dir: PathBuf, from: u64, count: Option<u64>) -> anyhow::Result<()> {
    let log = Log::open(&dir, LogConfig::default())
        .with_context(|| format!("opening {}", dir.display()))?;
    let mut reader = log.reader(from);
    let mut remaining = count.unwrap_or(u64::MAX);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    while remaining > 0 {
        let batch = reader.next_batch(remaining.min(1024) as usize, 1 << 20)?;
        if batch.is_empty() {
            break;
        }
        for record in batch {
            let payload = match serde_json::from_slice::<serde_json::Value>(&record.payload) {
                Ok(json) => json,
                Err(_) => {
                    serde_json::Value::String(String::from_utf8_lossy(&record.payload).into_owned())
                }
            };
            let line = serde_json::json!({
                "seq": record.seq,
                "timestampUs": record.timestamp_us,
                "payload": payload,
            });
            writeln!(out, "{line}")?;
            remaining -= 1;
        }
    }
    out.flush()?;
    log.close()?;
    Ok(())
}

fn stats_json(log: &Log) -> serde_json::Value {
    let stats = log.stats();
    serde_json::json!({
        "firstSeq": stats.first_seq,
        "lastSeq": stats.last_seq,
        "events": stats.events,
        "bytes": stats.bytes,
        "segments": stats.segments,
        "firstTimestampUs": stats.first_timestamp_us,
        "lastTimestampUs": stats.last_timestamp_us,
    })
}
