//! Operations: stats, liveness, readiness, metrics.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_engine::Engine;
use herald_protocol::http::{Health, Readiness, ReadinessPart, Stats};

use crate::convert::{group_info, stream_info};
use crate::http::Caller;
use crate::state::AppState;

/// How long the engine may take to answer a readiness probe before it counts as unhealthy.
const ENGINE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Streams, groups, connections, and the browsers' sockets and rooms in one document.
#[utoipa::path(get, path = "/v1/stats", tag = "operations",
    responses((status = 200, body = Stats), (status = 401, body = herald_protocol::ErrorBody)))]
pub async fn stats(State(state): State<AppState>, _caller: Caller) -> Json<Stats> {
    let streams = state
        .engine
        .streams()
        .await
        .into_iter()
        .map(stream_info)
        .collect();
    let groups = state
        .engine
        .groups()
        .await
        .into_iter()
        .map(group_info)
        .collect();
    let everywhere = state.realtime.stats_everywhere().await;
    Json(Stats {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: state.started.elapsed().as_secs(),
        connections: everywhere.service_connections,
        streams,
        groups,
        realtime: everywhere.realtime,
    })
}

/// Alive: the process answers. Needs no token.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "{\"status\":\"ok\"}")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready to take traffic, with each part's status; 503 when unhealthy (so that a load balancer
/// stops sending while the server drains). Needs no token.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let mut parts = Vec::new();
    let engine = match tokio::time::timeout(ENGINE_PROBE_TIMEOUT, state.engine.streams()).await {
        Ok(_) => part("engine", Health::Healthy, None),
        Err(_) => part(
            "engine",
            Health::Unhealthy,
            Some(format!(
                "the engine did not answer within {} ms",
                ENGINE_PROBE_TIMEOUT.as_millis()
            )),
        ),
    };
    parts.push(engine);
    parts.push(if state.shutdown.is_cancelled() {
        part(
            "server",
            Health::Unhealthy,
            Some("draining for shutdown".into()),
        )
    } else {
        part("server", Health::Healthy, None)
    });
    let open = state.connections();
    let max = state.config.limits.connections_max;
    parts.push(if open * 10 >= max * 9 {
        part(
            "connections",
            Health::Degraded,
            Some(format!("{open} of {max} connections in use")),
        )
    } else {
        part("connections", Health::Healthy, None)
    });
    let status = if parts.iter().any(|part| part.status == Health::Unhealthy) {
        Health::Unhealthy
    } else if parts.iter().any(|part| part.status == Health::Degraded) {
        Health::Degraded
    } else {
        Health::Healthy
    };
    let code = if status == Health::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(Readiness { status, parts })).into_response()
}

fn part(name: &str, status: Health, message: Option<String>) -> ReadinessPart {
    ReadinessPart {
        name: name.to_owned(),
        status,
        message,
    }
}

/// Prometheus text exposition (`herald_` prefix). Needs no token.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let streams = state.engine.streams().await;
    let groups = state.engine.groups().await;
    state.realtime.record_relay_drops();
    let text = state
        .metrics
        .render(streams, groups, state.realtime.stats());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
