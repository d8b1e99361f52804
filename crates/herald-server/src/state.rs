//! What every handler shares: the engine, the configuration, auth, metrics and the shutdown
//! signal. Cloned per request (one `Arc`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use herald_core::ParseContext;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::realtime::{Realtime, RealtimeConfigError};

pub use crate::engine::ServerEngine;

#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

#[derive(Debug)]
pub struct Shared {
    pub engine: ServerEngine,
    pub config: ServerConfig,
    pub auth: Auth,
    pub metrics: Metrics,
    /// The Socket.IO gateway (PRODUCT.md §6), built whether or not it is served, so that
    /// service-side sends work (reaching no socket) either way.
    pub realtime: Arc<Realtime>,
    pub started: Instant,
    /// Cancelled when the server starts draining.
    pub shutdown: CancellationToken,
    /// Open `/v1/ws` connections; shared with the gateway, which reports them to the other
    /// processes on the same Redis.
    connections: Arc<AtomicUsize>,
    /// Notified whenever a connection closes, for the drain to wait on.
    connection_closed: tokio::sync::Notify,
    next_connection_id: AtomicU64,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(
        engine: ServerEngine,
        config: ServerConfig,
        auth: Auth,
        io: socketioxide::SocketIo,
        relay: Option<herald_engine::Relay>,
    ) -> Result<AppState, RealtimeConfigError> {
        let metrics = Metrics::new();
        let connections = Arc::new(AtomicUsize::new(0));
        let realtime = Arc::new(Realtime::new(
            io,
            &config.realtime,
            metrics.realtime.clone(),
            relay,
            connections.clone(),
        )?);
        Ok(AppState(Arc::new(Shared {
            engine,
            config,
            auth,
            metrics,
            realtime,
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            connections,
            connection_closed: tokio::sync::Notify::new(),
            next_connection_id: AtomicU64::new(1),
        })))
    }

    /// What decoding a published event needs: now, and the configured limits.
    pub fn parse_context(&self) -> ParseContext {
        ParseContext {
            now: OffsetDateTime::now_utc(),
            limits: self.config.limits.event_limits(),
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Waits until no connection is open.
    pub async fn connections_closed(&self) {
        loop {
            let closed = self.connection_closed.notified();
            tokio::pin!(closed);
            // Registered before the count is read, so a close in between is not missed.
            closed.as_mut().enable();
            if self.connections() == 0 {
                return;
            }
            closed.await;
        }
    }

    /// A slot for one more connection, or `None` at the limit.
    pub fn admit_connection(&self) -> Option<ConnectionSlot> {
        let max = self.config.limits.connections_max;
        let admitted = self
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .is_ok();
        if !admitted {
            self.metrics.connections_refused.inc();
            return None;
        }
        self.metrics.connections.inc();
        self.metrics.connections_total.inc();
        Some(ConnectionSlot {
            state: self.clone(),
            id: self.next_connection_id.fetch_add(1, Ordering::Relaxed),
        })
    }
}

/// Held for the life of a connection; frees its slot when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    state: AppState,
    pub id: u64,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.state.connections.fetch_sub(1, Ordering::AcqRel);
        self.state.metrics.connections.dec();
        self.state.connection_closed.notify_waiters();
    }
}
