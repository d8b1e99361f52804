//! The client commands of the `herald` binary: `pub`, `sub`, `tail`, `streams`, `groups`,
//! `dlq`, `stats`, `send`, against a running server through `herald-client`.
//!
//! Output meant for programs (events, results) goes to stdout as JSON, one value per line;
//! what is meant for people (progress, summaries, tables) is readable and, where a program
//! may want it too, has a `--json` form.

mod admin;
mod publish;
mod send;
mod subscribe;
mod table;

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use herald_client::{Client, ClientOptions};

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Publish one event (TYPE JSON) or every line of an NDJSON file (--file).
    Pub(publish::PubArgs),
    /// Print events matching PATTERN, one JSON object per line; in a group, ack each once
    /// printed.
    Sub(subscribe::SubArgs),
    /// Watch events as they happen, one readable line each.
    Tail(subscribe::TailArgs),
    /// List streams.
    Streams(admin::ListArgs),
    /// List consumer groups with their lag, in-flight and dead-letter counts.
    Groups(admin::ListArgs),
    /// Dead letters of a consumer group: list, redrive into the group, purge.
    #[command(subcommand)]
    Dlq(admin::DlqCommand),
    /// Server statistics.
    Stats(admin::ListArgs),
    /// Send one event to browsers (--user, --room or --broadcast) without storing it.
    Send(send::SendArgs),
}

/// Where the server is; every client command takes these.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The server's URL.
    #[arg(long, env = "HERALD_URL", default_value = herald_client_url_default())]
    url: String,
    /// A service token, sent as a bearer token.
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How long one request may take, in seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

const fn herald_client_url_default() -> &'static str {
    "http://127.0.0.1:3003"
}

impl ServerArgs {
    fn options(&self) -> ClientOptions {
        let mut options = ClientOptions::new(&self.url)
            .timeout(Duration::from_secs(self.timeout.max(1)))
            .service_name("herald-cli");
        if let Some(token) = &self.token {
            options = options.token(token);
        }
        options
    }

    async fn connect(&self) -> anyhow::Result<Client> {
        Client::connect(self.options())
            .await
            .with_context(|| format!("connecting to herald at {}", self.url))
    }
}

pub fn run(command: ClientCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        match command {
            ClientCommand::Pub(args) => publish::run(args).await,
            ClientCommand::Sub(args) => subscribe::sub(args).await,
            ClientCommand::Tail(args) => subscribe::tail(args).await,
            ClientCommand::Streams(args) => admin::streams(args).await,
            ClientCommand::Groups(args) => admin::groups(args).await,
            ClientCommand::Dlq(command) => admin::dlq(command).await,
            ClientCommand::Stats(args) => admin::stats(args).await,
            ClientCommand::Send(args) => send::run(args).await,
        }
    })
}
