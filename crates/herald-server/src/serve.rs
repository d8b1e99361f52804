//! Starting and stopping the server: open the engine, declare configured groups, bind, serve;
//! on shutdown stop accepting, let connections finish their queued publishes, then close the
//! engine (which fsyncs).

use axum::serve::ListenerExt as _;
use std::net::SocketAddr;

use herald_engine::{EmbeddedEngine, Engine, EngineError, RedisEngine};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::auth::{Auth, AuthConfigError};
use crate::config::{ConfigError, EngineKind, ServerConfig};
use crate::realtime::RealtimeConfigError;
use crate::realtime::forwarding::{self, Rule};
use crate::state::{AppState, ServerEngine};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("auth configuration: {0}")]
    Auth(#[from] AuthConfigError),
    #[error("realtime configuration: {0}")]
    Realtime(#[from] RealtimeConfigError),
    #[error("opening the engine ({place}): {source}")]
    Engine {
        place: String,
        #[source]
        source: EngineError,
    },
    #[error("declaring group {group:?}: {source}")]
    Group {
        group: String,
        #[source]
        source: EngineError,
    },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
    #[error("closing the engine: {0}")]
    Close(#[source] EngineError),
}

/// A server accepting connections.
#[derive(Debug)]
pub struct RunningServer {
    /// Where it listens (the actual port when configured with port 0).
    pub addr: SocketAddr,
    state: AppState,
    task: JoinHandle<Result<(), std::io::Error>>,
}

/// Room in a Socket.IO message (or a long-polling body) around the largest event a browser may
/// publish: the packet's framing and the envelope's fields.
const SOCKET_IO_PAYLOAD_OVERHEAD_BYTES: usize = 64 * 1024;
/// What a browser's WebSocket is read with at a time: its frames are small, and the buffer is
/// held by every idle socket (socketioxide's default is 4 KiB). Larger frames still arrive whole.
const WS_READ_BUFFER_BYTES: usize = 1024;

pub async fn start(config: ServerConfig) -> Result<RunningServer, ServeError> {
    config.validate()?;
    let auth = Auth::new(&config.auth.tokens)?;
    let engine = match config.engine {
        EngineKind::Embedded => EmbeddedEngine::open(config.engine_config()?)
            .map(ServerEngine::Embedded)
            .map_err(|source| ServeError::Engine {
                place: format!("embedded in {}", config.data_dir.display()),
                source,
            })?,
        EngineKind::Redis => RedisEngine::open(config.redis_config()?)
            .await
            .map(ServerEngine::Redis)
            .map_err(|source| ServeError::Engine {
                place: format!("redis at {}", config.redis.url_for_display()),
                source,
            })?,
    };
    for group in &config.groups {
        let spec = config.group_spec(group)?;
        engine
            .create_group(spec)
            .await
            .map_err(|source| ServeError::Group {
                group: group.name.clone(),
                source,
            })?;
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;
    let rules = config
        .realtime
        .forward
        .iter()
        .map(Rule::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(ConfigError::Invalid)?;
    let (socket_io, io) = socketioxide::SocketIo::builder()
        .max_buffer_size(config.realtime.limits.outbound_buffer_packets)
        .ws_read_buffer_size(WS_READ_BUFFER_BYTES)
        .max_payload(
            u64::try_from(config.limits.event_bytes_max + SOCKET_IO_PAYLOAD_OVERHEAD_BYTES)
                .unwrap_or(u64::MAX),
        )
        .build_layer();
    let relay = crate::realtime::relay::open(&engine)
        .await
        .map_err(|source| ServeError::Engine {
            place: "subscribing to the real-time relay".to_owned(),
            source,
        })?;
    let (relay, inbox) = relay.unzip();
    let state = AppState::new(engine, config, auth, io, relay)?;
    if let Some(inbox) = inbox {
        crate::realtime::relay::spawn(&state.realtime, inbox, state.shutdown.clone());
    }
    let mut app = crate::http::router(state.clone());
    if state.config.realtime.enabled {
        crate::realtime::gateway::register(&state);
        forwarding::spawn(state.engine.clone(), state.realtime.clone(), rules);
        app = app.layer(socket_io).layer(axum::middleware::map_request(
            crate::realtime::gateway::own_handshake_request,
        ));
    }
    if let Some(cors) = cors_layer(&state.config.realtime.cors_origins) {
        app = app.layer(cors);
    }
    let app = app.layer(tower_http::trace::TraceLayer::new_for_http());
    let shutdown = state.shutdown.clone();
    let task = tokio::spawn(async move {
        // Nagle off: a delivery or an ack is a small frame that must leave at once; the
        // writers already batch frames per flush where there are several.
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "TCP_NODELAY not set");
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    Ok(RunningServer { addr, state, task })
}

impl RunningServer {
    pub fn auth_enabled(&self) -> bool {
        self.state.auth.is_enabled()
    }

    pub fn config(&self) -> &ServerConfig {
        &self.state.config
    }

    /// Drains: stops accepting, tells connections to finish (each answers the publishes it
    /// has read), waits up to the configured grace, then closes the engine, which fsyncs.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.state.shutdown.cancel();
        let grace = self.state.config.shutdown_grace.0;
        let deadline = tokio::time::Instant::now() + grace;
        // Browser sockets hold long-polling requests and WebSockets that the HTTP server's
        // graceful shutdown would wait out; they have nothing to flush. A socket that stopped
        // reading cannot take its disconnect packet, hence the deadline.
        if self.state.config.realtime.enabled
            && tokio::time::timeout_at(deadline, self.state.realtime.io().close())
                .await
                .is_err()
        {
            tracing::warn!("browser sockets did not close within the shutdown grace");
        }
        self.state.realtime.withdraw_report().await;
        match tokio::time::timeout_at(deadline, self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => return Err(ServeError::Serve(error)),
            Ok(Err(_)) => tracing::warn!("the server task panicked"),
            Err(_) => tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "connections did not finish within the shutdown grace; closing anyway"
            ),
        }
        // The HTTP server's graceful shutdown does not track upgraded connections: wait for
        // each /v1/ws connection to store and answer what it has read, and close, before the
        // engine is closed under it.
        if tokio::time::timeout_at(deadline, self.state.connections_closed())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.state.connections(),
                grace_ms = grace.as_millis() as u64,
                "WebSocket connections did not close within the shutdown grace; closing anyway"
            );
        }
        self.state.engine.close().await.map_err(ServeError::Close)
    }
}

/// CORS for the configured origins, around the Socket.IO gateway and the HTTP API, so that a page
/// served elsewhere can open Socket.IO's long-polling transport (and call the API with a token).
/// Credentials are not allowed: browsers send their JWT in the handshake's `auth`, not a cookie.
fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        // Validated when the config was loaded.
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| axum::http::HeaderValue::from_str(origin).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods(Any)
            .allow_headers(Any),
    )
}
