//! `herald serve`: configuration from herald.toml, `HERALD_*` variables and flags; a banner;
//! SIGTERM and Ctrl-C drain.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use herald_server::ServerConfig;
use herald_server::config::{EngineKind, FsyncSetting};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:3003]
    #[arg(long, env = "HERALD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Where streams and group state live [default: ./herald-data]
    #[arg(long, env = "HERALD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// When a publish is acknowledged: after fsync (always), after write with fsync every few
    /// ms (interval), or after write (never) [default: always]
    #[arg(long, env = "HERALD_FSYNC")]
    fsync: Option<FsyncSetting>,
    /// Configuration file [default: ./herald.toml if present]
    #[arg(long, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// Where events live: embedded (this process's log in the data dir) or redis (Redis
    /// Streams; several processes on one Redis are one bus) [default: embedded]
    #[arg(long)]
    engine: Option<EngineKind>,
    /// The Redis of `--engine redis` [default: redis://127.0.0.1:6379]
    #[arg(long)]
    redis_url: Option<String>,
    /// Allow a non-loopback address with auth off.
    #[arg(long)]
    insecure: bool,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = ServerConfig::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(data_dir) = args.data_dir {
        config.data_dir = data_dir;
    }
    if let Some(fsync) = args.fsync {
        config.fsync = fsync;
    }
    if let Some(engine) = args.engine {
        config.engine = engine;
    }
    if let Some(url) = args.redis_url {
        config.redis.url = url;
    }
    config.insecure |= args.insecure;
    // Before the runtime, which is sized by it.
    config.validate()?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = config.workers {
        runtime.worker_threads(workers);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let server = herald_server::start(config).await?;
    let config = server.config();
    let data_dir = std::fs::canonicalize(&config.data_dir).unwrap_or(config.data_dir.clone());
    let fsync = match config.fsync {
        FsyncSetting::Always => "always".to_owned(),
        FsyncSetting::Interval => format!("interval ({} ms)", config.fsync_interval.0.as_millis()),
        FsyncSetting::Never => "never".to_owned(),
    };
    let auth = if server.auth_enabled() {
        format!("on ({} service tokens)", config.auth.tokens.len())
    } else {
        "off (loopback only, or --insecure)".to_owned()
    };
    // The banner goes to stderr, like the logs; tests read the address from its first line.
    eprintln!(
        "herald {} listening on http://{}",
        env!("CARGO_PKG_VERSION"),
        server.addr
    );
    match config.engine {
        EngineKind::Embedded => eprintln!("  data:  {} (fsync {fsync})", data_dir.display()),
        EngineKind::Redis => eprintln!(
            "  data:  redis at {}{} (keys {}:*)",
            config.redis.url_for_display(),
            if config.redis.cluster {
                ", cluster"
            } else {
                ""
            },
            config.redis.key_prefix
        ),
    }
    eprintln!("  auth:  {auth}");
    let realtime = &config.realtime;
    if realtime.enabled {
        let tokens = match &realtime.jwt {
            Some(jwt) => format!("{} tokens", jwt.algorithm),
            None => "no tokens ([realtime.jwt] unset)".to_owned(),
        };
        let anonymous = if realtime.allow_anonymous {
            "anonymous allowed"
        } else {
            "anonymous refused"
        };
        eprintln!(
            "  browsers: socket.io at /socket.io/ ({tokens}, {anonymous}, {} forwarding rules)",
            realtime.forward.len()
        );
    }
    eprintln!(
        "  api:   http://{}/openapi.json   metrics: /metrics   ws: /v1/ws",
        server.addr
    );
    wait_for_signal().await?;
    tracing::info!("draining: no new connections; finishing queued publishes; closing the engine");
    server.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        result = tokio::signal::ctrl_c() => {
            result.context("waiting for Ctrl-C")?;
            tracing::info!("interrupt received");
        }
    }
    Ok(())
}
