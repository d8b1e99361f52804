//! Prometheus metrics (`/metrics`, `herald_` prefix). What the server itself sees (connections,
//! latencies, live deliveries) lives in a registry of its own; what the engine counts (per
//! stream and per group) is read from the engine at scrape time, so the two never disagree.
//! Labels are stream and group names only: bounded by configuration, never by event or user ids.

use std::sync::Arc;
use std::time::Duration;

use herald_engine::{GroupStats, StreamStats};
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[cfg(doc)]
use herald_protocol::realtime::ROOM_STATS_MAX;
use herald_protocol::realtime::RealtimeStats;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    engine: Arc<EngineSnapshot>,
    pub connections: Gauge,
    pub connections_total: Counter,
    pub connections_refused: Counter,
    /// From the call into the engine to its answer, per publish request (HTTP or frame batch).
    pub publish_seconds: Histogram,
    /// From an event's timestamp to its frame being queued for a subscriber's socket; events
    /// older than the subscription (history being replayed) are not counted.
    pub delivery_seconds: Histogram,
    pub live_delivered: Counter,
    pub group_delivered_frames: Counter,
    pub rate_limited_events: Counter,
    pub bad_frames: Counter,
    pub realtime: RealtimeMetrics,
}

/// The Socket.IO gateway's own counters; rooms and members are read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct RealtimeMetrics {
    pub connections: Gauge,
    pub refused: Counter,
    /// Events queued for sockets (one per socket reached).
    pub sent: Counter,
    pub slow_disconnects: Counter,
    /// Events a forwarding rule sent on, and those naming no user or room.
    pub forwarded: Counter,
    pub forward_untargeted: Counter,
    pub forward_resubscribed: Counter,
    /// Events queued for service connections listening to rooms (one per connection reached).
    pub room_listener_sent: Counter,
    /// Service connections made to leave their rooms for falling behind.
    pub room_listener_drops: Counter,
    /// Sends queued for the other processes on the same Redis, and sends received from them.
    pub relayed_out: Counter,
    pub relayed_in: Counter,
    /// Sends to or from other processes lost (a queue full, Redis unreachable); the relay
    /// counts them, and this follows it at each scrape.
    pub relay_dropped: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("herald");
        let metrics_engine = Arc::new(EngineSnapshot::default());
        // 20 µs … 10 s.
        let latency_buckets = || exponential_buckets(0.00002, 2.0, 20);
        let metrics = Metrics {
            connections: Gauge::default(),
            connections_total: Counter::default(),
            connections_refused: Counter::default(),
            publish_seconds: Histogram::new(latency_buckets()),
            delivery_seconds: Histogram::new(latency_buckets()),
            live_delivered: Counter::default(),
            group_delivered_frames: Counter::default(),
            rate_limited_events: Counter::default(),
            bad_frames: Counter::default(),
            realtime: RealtimeMetrics::default(),
            engine: metrics_engine.clone(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open WebSocket connections",
            metrics.connections.clone(),
        );
        registry.register(
            "connections_opened",
            "WebSocket connections accepted",
            metrics.connections_total.clone(),
        );
        registry.register(
            "connections_refused",
            "WebSocket connections refused at the connection limit",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "publish_latency_seconds",
            "Time to store a publish request, from the engine call to its answer",
            metrics.publish_seconds.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Time from an event's timestamp to its delivery frame being queued for a subscriber",
            metrics.delivery_seconds.clone(),
        );
        registry.register(
            "live_delivered",
            "Events sent to live subscribers",
            metrics.live_delivered.clone(),
        );
        registry.register(
            "ws_group_deliveries",
            "Group deliveries sent over WebSocket connections",
            metrics.group_delivered_frames.clone(),
        );
        registry.register(
            "rate_limited_events",
            "Events refused by a connection's publish rate limit",
            metrics.rate_limited_events.clone(),
        );
        registry.register(
            "bad_frames",
            "WebSocket frames refused as malformed or out of order",
            metrics.bad_frames.clone(),
        );
        let realtime = &metrics.realtime;
        for (name, help, metric) in [
            (
                "realtime_connections_refused",
                "Socket.IO handshakes refused (token, limit, draining)",
                realtime.refused.clone(),
            ),
            (
                "realtime_sent",
                "Events queued for Socket.IO sockets, one per socket reached",
                realtime.sent.clone(),
            ),
            (
                "realtime_slow_disconnects",
                "Socket.IO sockets disconnected for letting their outbound buffer fill",
                realtime.slow_disconnects.clone(),
            ),
            (
                "realtime_forwarded",
                "Events sent to browsers by forwarding rules",
                realtime.forwarded.clone(),
            ),
            (
                "realtime_forward_untargeted",
                "Events matching a forwarding rule that named no user or room",
                realtime.forward_untargeted.clone(),
            ),
            (
                "realtime_forward_resubscribed",
                "Forwarding rules that fell behind and subscribed again",
                realtime.forward_resubscribed.clone(),
            ),
            (
                "realtime_room_listener_sent",
                "Events queued for /v1/ws connections listening to rooms, one per connection",
                realtime.room_listener_sent.clone(),
            ),
            (
                "realtime_room_listener_drops",
                "/v1/ws connections made to leave their rooms for falling behind",
                realtime.room_listener_drops.clone(),
            ),
            (
                "realtime_relayed_out",
                "Real-time sends queued for the other processes on the same Redis",
                realtime.relayed_out.clone(),
            ),
            (
                "realtime_relayed_in",
                "Real-time sends received from other processes and delivered here",
                realtime.relayed_in.clone(),
            ),
            (
                "realtime_relay_dropped",
                "Real-time sends to or from other processes lost (a queue full, Redis unreachable)",
                realtime.relay_dropped.clone(),
            ),
        ] {
            registry.register(name, help, metric);
        }
        registry.register(
            "realtime_connections",
            "Open Socket.IO sockets",
            realtime.connections.clone(),
        );
        registry.register_collector(Box::new(metrics_engine));
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The Prometheus text exposition, with the engine's counters as of `streams` and `groups`
    /// and the gateway's rooms as of `realtime`.
    pub fn render(
        &self,
        streams: Vec<StreamStats>,
        groups: Vec<GroupStats>,
        realtime: RealtimeStats,
    ) -> String {
        *self.engine.latest.lock() = (streams, groups, realtime);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    pub fn observe_publish(&self, elapsed: Duration) {
        self.publish_seconds.observe(elapsed.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// The engine's counters as of the scrape in progress.
#[derive(Debug, Default)]
struct EngineSnapshot {
    latest: Mutex<(Vec<StreamStats>, Vec<GroupStats>, RealtimeStats)>,
}

/// One metric family labelled by stream or group, from `(name, value)` pairs.
fn family(
    encoder: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    label: &'static str,
    counter: bool,
    values: Vec<(&str, u64)>,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::metrics::MetricType;
    let kind = if counter {
        MetricType::Counter
    } else {
        MetricType::Gauge
    };
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (resource, value) in values {
        let labels = [(label, resource)];
        let family = metric.encode_family(&labels)?;
        if counter {
            ConstCounter::new(value).encode(family)?;
        } else {
            ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(family)?;
        }
    }
    Ok(())
}

type StreamField = fn(&StreamStats) -> u64;
type GroupField = fn(&GroupStats) -> u64;

/// Per-stream families: name, help, whether a counter, and the field.
const STREAM_FAMILIES: [(&str, &str, bool, StreamField); 7] = [
    (
        "published",
        "Events stored since the server started",
        true,
        |s| s.published,
    ),
    (
        "duplicates",
        "Publishes refused as duplicates within the dedupe window",
        true,
        |s| s.duplicates,
    ),
    (
        "slow_consumers_dropped",
        "Live subscribers dropped for falling behind",
        true,
        |s| s.slow_consumers_dropped,
    ),
    (
        "stream_events",
        "Events retained in the stream",
        false,
        |s| s.events,
    ),
    ("stream_bytes", "Bytes retained in the stream", false, |s| {
        s.bytes
    }),
    (
        "stream_last_seq",
        "Seq of the stream's newest event",
        false,
        |s| s.last_seq,
    ),
    (
        "live_subscribers",
        "Live subscriptions on the stream",
        false,
        |s| s.live_subscribers as u64,
    ),
];

/// Per-group families.
const GROUP_FAMILIES: [(&str, &str, bool, GroupField); 10] = [
    (
        "delivered",
        "Deliveries made by the group, retries included",
        true,
        |g| g.delivered,
    ),
    ("acked", "Deliveries acked", true, |g| g.acked),
    ("nacked", "Deliveries nacked", true, |g| g.nacked),
    ("redelivered", "Deliveries that were retries", true, |g| {
        g.redelivered
    }),
    (
        "dead_lettered",
        "Events moved to the dead-letter queue",
        true,
        |g| g.dead_lettered,
    ),
    (
        "group_lag",
        "Stored events the group has not fetched yet",
        false,
        |g| g.lag,
    ),
    (
        "group_in_flight",
        "Deliveries awaiting an ack",
        false,
        |g| g.in_flight,
    ),
    (
        "group_scheduled",
        "Events waiting for their retry time",
        false,
        |g| g.scheduled,
    ),
    (
        "group_dead_letters",
        "Events in the dead-letter queue",
        false,
        |g| g.dead_letters,
    ),
    (
        "group_members",
        "Members connected to the group",
        false,
        |g| g.members as u64,
    ),
];

impl Collector for EngineSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let latest = self.latest.lock();
        let (streams, groups, realtime) = &*latest;
        for (name, help, counter, field) in STREAM_FAMILIES {
            let values = streams
                .iter()
                .map(|s| (s.name.as_str(), field(s)))
                .collect();
            family(&mut encoder, (name, help), "stream", counter, values)?;
        }
        for (name, help, counter, field) in GROUP_FAMILIES {
            let values = groups.iter().map(|g| (g.name.as_str(), field(g))).collect();
            family(&mut encoder, (name, help), "group", counter, values)?;
        }
        encode_realtime(&mut encoder, realtime)
    }
}

/// Users and rooms of the gateway; members per room for the largest rooms only
/// ([`ROOM_STATS_MAX`]), since room names are chosen by clients and labels must stay bounded.
fn encode_realtime(
    encoder: &mut DescriptorEncoder,
    realtime: &RealtimeStats,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::metrics::MetricType;
    for (name, help, value) in [
        (
            "realtime_users",
            "Distinct users with a Socket.IO socket",
            realtime.users,
        ),
        (
            "realtime_rooms",
            "Named Socket.IO rooms with at least one member",
            realtime.rooms_total,
        ),
    ] {
        let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(metric)?;
    }
    let values = realtime
        .rooms
        .iter()
        .map(|room| (room.name.as_str(), room.members))
        .collect();
    family(
        encoder,
        (
            "realtime_room_members",
            "Sockets in each of the largest Socket.IO rooms",
        ),
        "room",
        false,
        values,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_engine_and_server_metrics_with_the_prefix() {
        let metrics = Metrics::new();
        metrics.connections.inc();
        metrics.observe_publish(Duration::from_micros(300));
        let stream = StreamStats {
            name: "orders".into(),
            first_seq: 1,
            last_seq: 7,
            events: 7,
            bytes: 700,
            published: 7,
            published_per_second: 0.0,
            duplicates: 1,
            live_subscribers: 2,
            slow_consumers_dropped: 0,
        };
        let group = GroupStats {
            name: "mailer".into(),
            pattern: "orders.*".into(),
            members: 1,
            lag: 3,
            in_flight: 2,
            scheduled: 0,
            dead_letters: 1,
            delivered: 5,
            acked: 4,
            nacked: 1,
            redelivered: 1,
            dead_lettered: 1,
        };
        metrics.realtime.connections.set(2);
        let realtime = RealtimeStats {
            connections: 2,
            users: 1,
            rooms_total: 1,
            rooms: vec![herald_protocol::realtime::RoomStats {
                name: "chat.general".into(),
                members: 2,
            }],
        };
        let text = metrics.render(vec![stream], vec![group], realtime);
        for line in [
            "herald_connections 1",
            "herald_published_total{stream=\"orders\"} 7",
            "herald_stream_events{stream=\"orders\"} 7",
            "herald_acked_total{group=\"mailer\"} 4",
            "herald_group_lag{group=\"mailer\"} 3",
            "herald_publish_latency_seconds_count 1",
            "herald_realtime_connections 2",
            "herald_realtime_users 1",
            "herald_realtime_rooms 1",
            "herald_realtime_room_members{room=\"chat.general\"} 2",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }
}
