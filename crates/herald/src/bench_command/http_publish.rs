//! Single-event HTTP publishes per second: `concurrency` clients, each POSTing one event at a
//! time for `seconds`.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;

use super::report::{Report, progress_bar};
use super::{Target, run_id};

#[derive(Clone, Debug, Args)]
pub struct HttpArgs {
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    #[arg(long, default_value_t = 100)]
    pub data_bytes: usize,
}

impl Default for HttpArgs {
    fn default() -> HttpArgs {
        HttpArgs {
            concurrency: 32,
            seconds: 5,
            data_bytes: 100,
        }
    }
}

pub async fn run(target: &Target, args: &HttpArgs, progress: bool) -> anyhow::Result<Report> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let url = format!("{}/v1/events", target.http_url);
    let body = format!(
        r#"{{"type":"bench.http.{}","data":{{"pad":"{}"}}}}"#,
        run_id(),
        "x".repeat(args.data_bytes.saturating_sub(24))
    );
    let bar = progress_bar(progress, args.seconds);
    bar.set_message("http");
    let duration = Duration::from_secs(args.seconds.max(1));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let client = client.clone();
        let url = url.clone();
        let body = body.clone();
        let token = target.token.clone();
        tasks.push(tokio::spawn(async move {
            let mut published = 0u64;
            while started.elapsed() < duration {
                let mut request = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone());
                if let Some(token) = &token {
                    request = request.bearer_auth(token);
                }
                let response = request.send().await?;
                if !response.status().is_success() {
                    bail!("publish failed: {}", response.text().await?);
                }
                published += 1;
            }
            anyhow::Ok(published)
        }));
    }
    let mut published = 0;
    for task in tasks {
        published += task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok(Report::new(
        "http",
        format!("{} concurrent single-event POSTs", args.concurrency),
        published,
        seconds,
    ))
}
