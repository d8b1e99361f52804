//! `herald streams`, `groups`, `dlq`, `stats`: the HTTP admin API, as tables or JSON.

use anyhow::Context;
use clap::{Args, Subcommand};
use herald_client::{Admin, GroupInfo, StreamInfo};

use super::ServerArgs;
use super::table::{Table, bytes};

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List a group's dead letters.
    List {
        #[command(flatten)]
        group: GroupArgs,
        /// At most this many.
        #[arg(long)]
        limit: Option<u32>,
        /// Print the API's JSON (with each event) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put a group's dead letters back into the group, attempts reset.
    Redrive {
        #[command(flatten)]
        group: GroupArgs,
    },
    /// Drop a group's dead letters.
    Purge {
        #[command(flatten)]
        group: GroupArgs,
    },
}

#[derive(Debug, Args)]
pub struct GroupArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The consumer group.
    #[arg(long, short)]
    group: String,
}

fn admin(server: &ServerArgs) -> anyhow::Result<Admin> {
    Admin::new(server.options()).context("configuring the client")
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn streams(args: ListArgs) -> anyhow::Result<()> {
    let streams = admin(&args.server)?.streams().await?;
    if args.json {
        return print_json(&serde_json::json!({ "streams": streams }));
    }
    print!("{}", streams_table(&streams));
    Ok(())
}

fn streams_table(streams: &[StreamInfo]) -> String {
    let mut table = Table::new(&[
        ("STREAM", false),
        ("EVENTS", true),
        ("FIRST", true),
        ("LAST", true),
        ("SIZE", true),
        ("RATE/S", true),
        ("LIVE SUBS", true),
    ]);
    for stream in streams {
        table.row(vec![
            stream.name.clone(),
            stream.events.to_string(),
            stream.first_seq.to_string(),
            stream.last_seq.to_string(),
            bytes(stream.bytes),
            format!("{:.1}", stream.published_per_second),
            stream.live_subscribers.to_string(),
        ]);
    }
    table.render()
}

pub async fn groups(args: ListArgs) -> anyhow::Result<()> {
    let groups = admin(&args.server)?.groups().await?;
    if args.json {
        return print_json(&serde_json::json!({ "groups": groups }));
    }
    print!("{}", groups_table(&groups));
    Ok(())
}

fn groups_table(groups: &[GroupInfo]) -> String {
    let mut table = Table::new(&[
        ("GROUP", false),
        ("PATTERN", false),
        ("MEMBERS", true),
        ("LAG", true),
        ("IN FLIGHT", true),
        ("SCHEDULED", true),
        ("DEAD", true),
        ("ACKED", true),
        ("REDELIVERED", true),
    ]);
    for group in groups {
        table.row(vec![
            group.name.clone(),
            group.pattern.clone(),
            group.members.to_string(),
            group.lag.to_string(),
            group.in_flight.to_string(),
            group.scheduled.to_string(),
            group.dead_letters.to_string(),
            group.acked.to_string(),
            group.redelivered.to_string(),
        ]);
    }
    table.render()
}

pub async fn dlq(command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { group, limit, json } => {
            let letters = admin(&group.server)?
                .dead_letters(&group.group, limit)
                .await?;
            if json {
                return print_json(&serde_json::json!({ "deadLetters": letters }));
            }
            let mut table = Table::new(&[
                ("STREAM/SEQ", false),
                ("TYPE", false),
                ("ID", false),
                ("ATTEMPTS", true),
                ("DEAD AT", false),
                ("LAST ERROR", false),
            ]);
            for letter in &letters {
                let event: serde_json::Value =
                    serde_json::from_str(letter.event.get()).unwrap_or_default();
                table.row(vec![
                    format!("{}/{}", text(&event["stream"]), text(&event["seq"])),
                    text(&event["type"]),
                    text(&event["id"]),
                    letter.attempts.to_string(),
                    letter.dead_at.clone(),
                    letter.last_error.clone().unwrap_or_default(),
                ]);
            }
            print!("{}", table.render());
            Ok(())
        }
        DlqCommand::Redrive { group } => {
            let redriven = admin(&group.server)?
                .redrive_dead_letters(&group.group)
                .await?;
            print_json(&serde_json::json!({ "redriven": redriven }))
        }
        DlqCommand::Purge { group } => {
            let purged = admin(&group.server)?
                .purge_dead_letters(&group.group)
                .await?;
            print_json(&serde_json::json!({ "purged": purged }))
        }
    }
}

fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

pub async fn stats(args: ListArgs) -> anyhow::Result<()> {
    let stats = admin(&args.server)?.stats().await?;
    if args.json {
        return print_json(&stats);
    }
    println!(
        "{}  up {}s  {} connections",
        stats.version, stats.uptime_seconds, stats.connections
    );
    let realtime = &stats.realtime;
    println!(
        "browsers: {} sockets, {} users, {} rooms",
        realtime.connections, realtime.users, realtime.rooms_total
    );
    println!();
    print!("{}", streams_table(&stats.streams));
    println!();
    print!("{}", groups_table(&stats.groups));
    Ok(())
}
