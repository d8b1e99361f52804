//! `herald`: one binary for the event bus: the server, the client commands, the log tools and
//! the benchmarks.

mod bench_command;
mod client_commands;
mod log_command;
mod serve_command;

use clap::{Parser, Subcommand};

/// The engine allocates per event (envelopes, ids, frames); glibc's allocator spent a third of
/// the server's time on the publish path in profiles, mimalloc a fraction of that. Without the
/// `mimalloc` feature the system allocator serves, for heap profilers that hook malloc.
///
/// Built without transparent huge pages (`no_thp`): mimalloc asks for THP on its fresh
/// memory, and each first touch of such a region made the kernel zero a whole 2 MiB page —
/// 5.6% of the server's samples under `herald bench publish` (`clear_page_erms`, from
/// `do_huge_pmd_anonymous_page`), 0.5% with `MIMALLOC_ALLOW_THP=0` (docs/PERFORMANCE.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Herald, the event bus in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: the HTTP API, the WebSocket protocol at /v1/ws, metrics.
    Serve(serve_command::ServeArgs),
    /// Measure a running server: publish, group consume, latency, HTTP publishes.
    Bench(bench_command::BenchArgs),
    /// Inspect, check and repair a stream's log directory (offline).
    #[command(subcommand)]
    Log(log_command::LogCommand),
    #[command(flatten)]
    Client(client_commands::ClientCommand),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Log(command) => log_command::run(command),
        Command::Serve(args) => serve_command::run(args),
        Command::Client(command) => client_commands::run(command),
        Command::Bench(args) => bench_command::run(args),
    }
}
