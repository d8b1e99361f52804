//! `herald send`: one event to browsers — a user's sockets, a room's, or every socket — not
//! stored (PRODUCT.md §6). Prints `{"id":…,"delivered":N}`.

use anyhow::Context;
use clap::{ArgGroup, Args};
use herald_client::{Admin, NewEvent, Target};
use serde_json::value::RawValue;

use super::ServerArgs;

#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("target").required(true).args(["user", "room", "broadcast"])),
    after_help = "Examples:\n  herald send --user u1 photo.processing.progress '{\"progress\":50}'\n  herald send --room chat.general chat.message '{\"text\":\"hi\"}'\n  herald send --broadcast maintenance.scheduled '{\"at\":\"22:00\"}'"
)]
pub struct SendArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Every socket of this user (the JWT's sub).
    #[arg(long)]
    user: Option<String>,
    /// Every socket in this room.
    #[arg(long)]
    room: Option<String>,
    /// Every connected socket.
    #[arg(long)]
    broadcast: bool,
    /// The event's type, such as photo.processing.progress.
    event_type: String,
    /// The event's data, as JSON [default: null].
    data: Option<String>,
}

pub async fn run(args: SendArgs) -> anyhow::Result<()> {
    let target = match (&args.user, &args.room) {
        (Some(user), _) => Target::User(user.clone()),
        (None, Some(room)) => Target::Room(room.clone()),
        (None, None) => Target::Broadcast(true),
    };
    let data = args.data.as_deref().unwrap_or("null");
    let data = RawValue::from_string(data.to_owned())
        .with_context(|| format!("the data is not valid JSON: {data}"))?;
    let event = NewEvent::with_raw_data(&args.event_type, data)?;
    let admin = Admin::new(args.server.options())?;
    let sent = admin
        .send_realtime(&target, event)
        .await
        .with_context(|| format!("sending to herald at {}", args.server.url))?;
    println!("{}", serde_json::to_string(&sent)?);
    Ok(())
}
