//! Socket.IO fan-out at scale: many browser-like connections to `/socket.io/`, each a user of
//! its own. Measures the server's memory per idle connection, broadcasts timed until every
//! socket has them, and user-targeted sends timed to their one socket — each from the moment
//! the service's HTTP request leaves.
//!
//! With several `--socket-url`s (processes of one bus on the Redis engine), the sockets are
//! spread over them in turn while the sends go to `--url`: the figures then include the relay
//! between processes.
//!
//! The client side speaks the four Engine.IO v4 / Socket.IO v5 packets it needs (open, connect,
//! ping/pong, event) over tokio-tungstenite rather than a Socket.IO client library: ten thousand
//! of them must fit beside the server on this machine, and the figures are about the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::report::{Percentiles, Report, progress_bar};
use super::{Target, run_id};

#[derive(Clone, Debug, Args)]
pub struct SocketIoArgs {
    /// Concurrent Socket.IO connections, each signed in as a user of its own.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Broadcasts, one after another, each waited for until every socket has it.
    #[arg(long, default_value_t = 20)]
    pub broadcasts: usize,
    /// User-targeted events, one at a time, to users taken in turn.
    #[arg(long, default_value_t = 1_000)]
    pub targeted: usize,
    /// The HS256 secret of the server's `[realtime.jwt]`, to sign one token per socket. Without
    /// it the sockets connect anonymously (the server must allow them) and no user-targeted
    /// events are sent.
    #[arg(long, env = "HERALD_BENCH_JWT_SECRET")]
    pub jwt_secret: Option<String>,
    /// The `aud` the server's `[realtime.jwt]` expects.
    #[arg(long)]
    pub jwt_audience: Option<String>,
    /// The server's process id, to read its resident memory before and after connecting;
    /// repeated for several processes, whose memory adds up.
    #[arg(long)]
    pub server_pid: Vec<u32>,
    /// A Herald base URL whose Socket.IO gateway sockets connect to, repeated for several
    /// processes of one bus (sockets go to each in turn); `--url` when none is given. Sends
    /// always go to `--url`.
    #[arg(long)]
    pub socket_url: Vec<String>,
    /// Handshakes in progress at once while connecting.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
}

impl Default for SocketIoArgs {
    fn default() -> SocketIoArgs {
        SocketIoArgs {
            connections: 10_000,
            broadcasts: 20,
            targeted: 1_000,
            jwt_secret: None,
            jwt_audience: None,
            server_pid: Vec::new(),
            socket_url: Vec::new(),
            connect_concurrency: 200,
        }
    }
}

/// How long one broadcast or targeted event may take to arrive before the run fails.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle time after the last handshake, before the server's memory is read again.
const SETTLE: Duration = Duration::from_secs(2);
const BROADCAST_TYPE: &str = "bench.broadcast";
const TARGETED_TYPE: &str = "bench.user";

/// What the socket tasks tell the coordinator.
enum Arrival {
    Connected,
    Failed(usize, String),
    Event { kind: Kind, n: u64, at: Instant },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Broadcast,
    Targeted,
}

/// The first two elements of an event packet `42["type",{"n":…},meta]`.
#[derive(Deserialize)]
struct EventPacket(String, BenchData, serde::de::IgnoredAny);

#[derive(Deserialize)]
struct BenchData {
    n: u64,
}

pub async fn run(
    target: &Target,
    args: &SocketIoArgs,
    progress: bool,
) -> anyhow::Result<Vec<Report>> {
    let connections = args.connections.max(1);
    let users = format!("bench-{}", run_id());
    let bases = if args.socket_url.is_empty() {
        std::slice::from_ref(&target.http_url)
    } else {
        &args.socket_url[..]
    };
    let socket_urls: Vec<String> = bases.iter().map(|base| gateway_url(base)).collect();
    let rss_before = resident_bytes_of(&args.server_pid)?;

    // Room for every socket's next event: a coordinator behind never stalls the sockets long.
    let (arrivals_tx, mut arrivals) = mpsc::channel(connections * 2);
    let handshakes = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut sockets = JoinSet::new();
    let bar = progress_bar(progress, connections as u64);
    bar.set_message("connect");
    for index in 0..connections {
        let permit = Arc::clone(&handshakes).acquire_owned().await?;
        let token = match &args.jwt_secret {
            Some(secret) => Some(sign(
                secret,
                args.jwt_audience.as_deref(),
                &user(&users, index),
            )?),
            None => None,
        };
        sockets.spawn(socket(
            socket_urls[index % socket_urls.len()].clone(),
            token,
            index,
            permit,
            arrivals_tx.clone(),
        ));
    }
    drop(arrivals_tx);
    let mut connected = 0;
    while connected < connections {
        match arrivals.recv().await {
            Some(Arrival::Connected) => {
                connected += 1;
                bar.inc(1);
            }
            Some(Arrival::Failed(index, error)) => {
                bail!("socket {index} failed after {connected} connected: {error}")
            }
            Some(Arrival::Event { .. }) => {}
            None => bail!("every socket task ended"),
        }
    }
    bar.finish_and_clear();
    tokio::time::sleep(SETTLE).await;
    let memory = match rss_before {
        Some(before) => {
            let after = resident_bytes_of(&args.server_pid)?.unwrap_or_default();
            format!(
                ", server RSS {:.0} → {:.0} MiB = {:.1} KiB per idle socket",
                before as f64 / 1048576.0,
                after as f64 / 1048576.0,
                after.saturating_sub(before) as f64 / connections as f64 / 1024.0
            )
        }
        None => String::new(),
    };
    let spread = match socket_urls.len() {
        1 => String::new(),
        processes => format!(" over {processes} processes (sent to the first)"),
    };

    let http = reqwest::Client::new();
    let mut reports = Vec::new();

    // Broadcasts: each socket's delay from the request's departure, and each round's
    // time until the last socket had it.
    let mut delivery = histogram()?;
    let mut reach_all = Vec::with_capacity(args.broadcasts);
    let started = Instant::now();
    for round in 0..args.broadcasts as u64 {
        let sent = Instant::now();
        send(
            &http,
            target,
            "/v1/realtime/broadcast",
            json!({"type": BROADCAST_TYPE, "data": {"n": round}}),
        )
        .await?;
        let mut received = 0;
        let mut last = sent;
        while received < connections {
            let (kind, n, at) = next_event(&mut arrivals).await?;
            if kind == Kind::Broadcast && n == round {
                received += 1;
                last = last.max(at);
                delivery.record(micros(at - sent))?;
            }
        }
        reach_all.push(last - sent);
    }
    let seconds = started.elapsed().as_secs_f64();
    reach_all.sort();
    let slowest = reach_all.last().copied().unwrap_or_default();
    let mut broadcast = Report::new(
        "sio-bcast",
        format!(
            "{connections} sockets{spread}, {} broadcasts, all reached within {:.1} ms (median) / {:.1} \
             ms (worst){memory}",
            args.broadcasts,
            reach_all
                .get(reach_all.len() / 2)
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3,
            slowest.as_secs_f64() * 1e3,
        ),
        delivery.len(),
        seconds,
    );
    broadcast.latency_us = Some(Percentiles::of(&delivery));
    reports.push(broadcast);

    if args.jwt_secret.is_some() && args.targeted > 0 {
        let mut latency = histogram()?;
        let started = Instant::now();
        for n in 0..args.targeted as u64 {
            let to = user(&users, n as usize % connections);
            let sent = Instant::now();
            send(
                &http,
                target,
                &format!("/v1/realtime/users/{to}"),
                json!({"type": TARGETED_TYPE, "data": {"n": n}}),
            )
            .await?;
            loop {
                let (kind, got, at) = next_event(&mut arrivals).await?;
                if kind == Kind::Targeted && got == n {
                    latency.record(micros(at - sent))?;
                    break;
                }
            }
        }
        let mut targeted = Report::new(
            "sio-user",
            format!(
                "{connections} sockets{spread}, one user each, one event at a time, from the HTTP \
                 send"
            ),
            latency.len(),
            started.elapsed().as_secs_f64(),
        );
        targeted.latency_us = Some(Percentiles::of(&latency));
        reports.push(targeted);
    }

    sockets.abort_all();
    Ok(reports)
}

fn user(prefix: &str, index: usize) -> String {
    format!("{prefix}-u{index}")
}

fn sign(secret: &str, audience: Option<&str>, sub: &str) -> anyhow::Result<String> {
    let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    let mut claims = json!({"sub": sub, "exp": exp});
    if let Some(audience) = audience {
        claims["aud"] = audience.into();
    }
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

async fn send(
    http: &reqwest::Client,
    target: &Target,
    route: &str,
    body: serde_json::Value,
) -> anyhow::Result<()> {
    let mut request = http.post(format!("{}{route}", target.http_url)).json(&body);
    if let Some(token) = &target.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    if !response.status().is_success() {
        bail!(
            "POST {route} answered {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

async fn next_event(
    arrivals: &mut mpsc::Receiver<Arrival>,
) -> anyhow::Result<(Kind, u64, Instant)> {
    loop {
        match tokio::time::timeout(ARRIVAL_TIMEOUT, arrivals.recv()).await {
            Err(_) => bail!("no event arrived within {ARRIVAL_TIMEOUT:?}"),
            Ok(None) => bail!("every socket task ended"),
            Ok(Some(Arrival::Event { kind, n, at })) => return Ok((kind, n, at)),
            Ok(Some(Arrival::Failed(index, error))) => bail!("socket {index} failed: {error}"),
            Ok(Some(Arrival::Connected)) => {}
        }
    }
}

/// One socket: handshake (holding `permit` until connected), then pongs and event arrivals.
async fn socket(
    url: String,
    token: Option<String>,
    index: usize,
    permit: OwnedSemaphorePermit,
    arrivals: mpsc::Sender<Arrival>,
) {
    if let Err(error) = socket_loop(&url, token, permit, &arrivals).await {
        let _ = arrivals
            .send(Arrival::Failed(index, format!("{error:#}")))
            .await;
    }
}

async fn socket_loop(
    url: &str,
    token: Option<String>,
    permit: OwnedSemaphorePermit,
    arrivals: &mpsc::Sender<Arrival>,
) -> anyhow::Result<()> {
    // A browser's frames are small; small buffers let ten thousand clients share the machine.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let mut permit = Some(permit);
    let connect = match token {
        Some(token) => format!("40{}", json!({ "token": token })),
        None => "40".to_owned(),
    };
    while let Some(message) = ws.next().await {
        let text = match message? {
            Message::Text(text) => text,
            Message::Close(close) => bail!("the server closed the connection: {close:?}"),
            _ => continue,
        };
        let at = Instant::now();
        match text.as_bytes() {
            // Engine.IO open: answer with the Socket.IO connect and its auth.
            [b'0', ..] => ws.send(Message::text(connect.clone())).await?,
            // Engine.IO ping: pong, or the server drops the socket.
            [b'2'] => ws.send(Message::text("3")).await?,
            [b'4', b'0', ..] => {
                permit.take();
                arrivals
                    .send(Arrival::Connected)
                    .await
                    .context("the coordinator is gone")?;
            }
            [b'4', b'4', ..] => bail!("connect_error: {}", &text[2..]),
            [b'4', b'2', ..] => {
                let EventPacket(kind, data, _) = serde_json::from_str(&text[2..])
                    .with_context(|| format!("an event packet the bench did not send: {text}"))?;
                let kind = match kind.as_str() {
                    BROADCAST_TYPE => Some(Kind::Broadcast),
                    TARGETED_TYPE => Some(Kind::Targeted),
                    _ => None,
                };
                if let Some(kind) = kind {
                    arrivals
                        .send(Arrival::Event {
                            kind,
                            n: data.n,
                            at,
                        })
                        .await
                        .context("the coordinator is gone")?;
                }
            }
            [b'1', ..] => bail!("the server closed the Engine.IO session"),
            _ => {}
        }
    }
    bail!("the server closed the connection")
}

/// The Engine.IO WebSocket endpoint of a Herald base URL.
fn gateway_url(base: &str) -> String {
    format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        base.replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1)
    )
}

/// The resident memory of the processes `pids` together; `None` when none is named.
fn resident_bytes_of(pids: &[u32]) -> anyhow::Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    pids.iter()
        .map(|&pid| resident_bytes(pid))
        .sum::<anyhow::Result<u64>>()
        .map(Some)
}

/// The resident memory of process `pid`, from /proc (Linux).
fn resident_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading the memory of process {pid}"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?)
}

fn micros(duration: Duration) -> u64 {
    (duration.as_micros() as u64).max(1)
}
