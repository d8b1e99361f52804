//! `cargo run -p herald-example-achievements` with `herald serve` running: see the crate docs
//! (src/lib.rs) for what it shows.

use herald_example_achievements::{SERVICE_NAME_DEFAULT, URL_DEFAULT, run_as};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("EVENT_BUS_URL").unwrap_or_else(|_| URL_DEFAULT.to_owned());
    let service_name =
        std::env::var("SERVICE_NAME").unwrap_or_else(|_| SERVICE_NAME_DEFAULT.to_owned());
    let summary = run_as(&url, &service_name).await?;
    println!(
        "done: {} awards, {} dead letters redriven, balances {:?}",
        summary.awards().len(),
        summary.dead_letters.len(),
        summary.balances
    );
    Ok(())
}
