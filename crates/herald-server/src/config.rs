//! `herald serve` configuration: defaults, then herald.toml, then `HERALD_*` variables, then
//! flags (applied by the binary). Every field has a default, so an empty file is a valid config;
//! unknown keys are errors, so that a misspelt limit is not silently ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use herald_core::{Limits, Pattern};
use herald_engine::{EngineConfig, GroupPolicy, Storage, StreamConfig};
use herald_log::{FsyncPolicy, Retention};
use herald_protocol::From;
use serde::{Deserialize, Serialize};

use crate::auth::TokenConfig;
use crate::convert::group_policy;

/// PRODUCT.md §7: seed 004's `EVENT_BUS_URL` default.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:3003";
pub const DATA_DIR_DEFAULT: &str = "./herald-data";
/// Under `fsync = "interval"`: how much a power loss may take (a kill -9 takes nothing). 50 ms,
/// not less: each fdatasync costs the test VM ~0.4 ms of kernel CPU (journal, block layer,
/// virtio) taken from the cores the event path runs on, so events in flight meanwhile are
/// late — with a 5 ms interval the p99 of publish-to-delivery at 5 k/s was 1.8 ms against 0.6 ms
/// at 50 ms and 0.45 ms with no fsync (docs/PERFORMANCE.md, 2026-12-05). Redis's `everysec` is
/// 1 s, NATS JetStream's sync interval 2 min.
pub const FSYNC_INTERVAL_DEFAULT: Duration = Duration::from_millis(50);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub fsync: FsyncSetting,
    /// How often `fsync = "interval"` syncs.
    pub fsync_interval: ConfigDuration,
    /// Allow listening on a non-loopback address with auth off.
    pub insecure: bool,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    /// Subjects delivered live but never stored.
    pub ephemeral: Vec<String>,
    pub streams: Vec<StreamSetting>,
    /// Groups created at start-up (as a `PUT /v1/groups/{name}` would).
    pub groups: Vec<GroupSetting>,
    /// How long SIGTERM waits for connections to finish before closing the engine.
    pub shutdown_grace: ConfigDuration,
    /// Interval of WebSocket pings; a connection silent for three intervals is closed.
    pub heartbeat: ConfigDuration,
    /// The Socket.IO gateway for browsers (PRODUCT.md §6).
    pub realtime: RealtimeConfig,
    /// Where events live: `embedded` (this process's own log in `data_dir`) or `redis`
    /// (Redis Streams, `[redis]`; several processes on one Redis are one bus).
    pub engine: EngineKind,
    pub redis: RedisSetting,
    /// Threads that run connections and the engine; unset: one per core (tokio's default).
    /// Fewer is a trade an operator may choose: on the 2-core test VM at 20 k events/s, one
    /// worker instead of two cut the server's context switches per event from 1.75 to 0.69 and
    /// its CPU per event from 47 to 30 µs (two workers on two busy cores park and wake each
    /// other around every event), but under `interval` one worker also does every publish's
    /// write, and a full comparison's publish fell below twice Redis's in two runs of three
    /// (docs/PERFORMANCE.md, session 24).
    pub workers: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Embedded,
    Redis,
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(text: &str) -> Result<EngineKind, String> {
        match text {
            "embedded" => Ok(EngineKind::Embedded),
            "redis" => Ok(EngineKind::Redis),
            other => Err(format!("engine must be embedded or redis, found {other:?}")),
        }
    }
}

impl RedisSetting {
    /// The URL without its password, for banners and errors.
    pub fn url_for_display(&self) -> String {
        redact_url(&self.url)
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// The machine's Redis, when `engine = "redis"` names none.
pub const REDIS_URL_DEFAULT: &str = "redis://127.0.0.1:6379";

/// `[redis]`: the Redis the `redis` engine runs on.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSetting {
    /// A standalone server (`redis://[user:password@]host:port[/db]`), or a Cluster's first
    /// node when `cluster` is set (`HERALD_REDIS_URL` sets it too).
    pub url: String,
    /// A Redis Cluster: `url` and `nodes` are seed nodes.
    pub cluster: bool,
    /// More seed nodes of a Cluster.
    pub nodes: Vec<String>,
    /// Every key Herald writes starts with this, so that several buses can share a Redis.
    pub key_prefix: String,
    /// A process silent this long is taken for dead, and the others take back its members'
    /// deliveries.
    pub process_ttl: ConfigDuration,
}

impl Default for RedisSetting {
    fn default() -> RedisSetting {
        RedisSetting {
            url: REDIS_URL_DEFAULT.to_owned(),
            cluster: false,
            nodes: Vec::new(),
            key_prefix: herald_engine::redis::KEY_PREFIX_DEFAULT.to_owned(),
            process_ttl: ConfigDuration(herald_engine::redis::PROCESS_TTL_DEFAULT),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            listen: LISTEN_DEFAULT
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 3003))),
            data_dir: PathBuf::from(DATA_DIR_DEFAULT),
            fsync: FsyncSetting::Always,
            fsync_interval: ConfigDuration(FSYNC_INTERVAL_DEFAULT),
            insecure: false,
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            ephemeral: Vec::new(),
            streams: Vec::new(),
            groups: Vec::new(),
            shutdown_grace: ConfigDuration(Duration::from_secs(10)),
            heartbeat: ConfigDuration(Duration::from_secs(15)),
            realtime: RealtimeConfig::default(),
            engine: EngineKind::Embedded,
            redis: RedisSetting::default(),
            workers: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncSetting {
    Always,
    Interval,
    Never,
}

impl std::str::FromStr for FsyncSetting {
    type Err = String;
    fn from_str(text: &str) -> Result<FsyncSetting, String> {
        match text {
            "always" => Ok(FsyncSetting::Always),
            "interval" => Ok(FsyncSetting::Interval),
            "never" => Ok(FsyncSetting::Never),
            other => Err(format!(
                "fsync must be always, interval or never, found {other:?}"
            )),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Service tokens; none means auth is off.
    pub tokens: Vec<TokenConfig>,
}

/// Browsers: a connection is a socket of the Socket.IO gateway at `/socket.io/`.
pub const REALTIME_CONNECTIONS_MAX_DEFAULT: usize = 10_000;
/// Named rooms one socket may be in, besides its own `user:<sub>` room.
pub const REALTIME_ROOMS_PER_SOCKET_MAX_DEFAULT: usize = 64;
pub const REALTIME_SUBSCRIPTIONS_PER_SOCKET_MAX_DEFAULT: usize = 32;
/// Packets queued for one socket (socketioxide's `max_buffer_size`); a socket that lets this
/// many pile up is disconnected as too slow. 256 small events is well under 16 KiB of queue
/// per idle socket, and several seconds of a busy browser's traffic.
pub const REALTIME_OUTBOUND_BUFFER_PACKETS_DEFAULT: usize = 256;
/// Events one browser socket may publish per second.
pub const REALTIME_PUBLISH_EVENTS_PER_SECOND_MAX_DEFAULT: u64 = 100;
/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output (256 bits).
pub const JWT_SECRET_BYTES_MIN: usize = 32;
/// Clocks of the token issuer and of Herald may differ by this much when `exp` and `nbf` are
/// checked.
pub const JWT_LEEWAY_DEFAULT: Duration = Duration::from_secs(30);

/// `[realtime]`: the Socket.IO gateway for browsers (PRODUCT.md §6).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeConfig {
    /// Serve Socket.IO at `/socket.io/`.
    pub enabled: bool,
    /// How browsers' tokens are verified; without it only anonymous sockets can connect.
    pub jwt: Option<JwtConfig>,
    /// Accept sockets without a token (they get the `anonymous` grants and no user room).
    pub allow_anonymous: bool,
    /// What anonymous sockets may do.
    pub anonymous: BrowserGrantsConfig,
    pub limits: RealtimeLimitsConfig,
    /// Rules that send stored events to browsers as they are published.
    pub forward: Vec<ForwardRule>,
    /// Origins of web pages allowed to reach Herald from a browser across origins (CORS), such
    /// as `https://app.example.com`, or `"*"` for any. Socket.IO starts with HTTP long-polling,
    /// which a browser refuses cross-origin without these headers. Empty: same origin only.
    pub cors_origins: Vec<String>,
}

impl Default for RealtimeConfig {
    fn default() -> RealtimeConfig {
        RealtimeConfig {
            enabled: true,
            jwt: None,
            allow_anonymous: false,
            anonymous: BrowserGrantsConfig::default(),
            limits: RealtimeLimitsConfig::default(),
            forward: Vec::new(),
            cors_origins: Vec::new(),
        }
    }
}

/// The algorithms a browser's token may be signed with; the configured one is the only one
/// accepted, so that a token cannot choose its own (the `alg: none` and HS/RS confusion attacks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    #[serde(rename = "HS256")]
    Hs256,
    #[serde(rename = "RS256")]
    Rs256,
    #[serde(rename = "ES256")]
    Es256,
}

/// As the config and the JWT header write it.
impl std::fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Es256 => "ES256",
        })
    }
}

/// `[realtime.jwt]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    /// The shared secret, for HS256.
    #[serde(default)]
    pub secret: Option<String>,
    /// A PEM file holding the public key (`BEGIN PUBLIC KEY`), for RS256 and ES256.
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// The `aud` every token must carry.
    pub audience: String,
    /// The `iss` every token must carry, when set.
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default = "jwt_leeway_default")]
    pub leeway: ConfigDuration,
}

fn jwt_leeway_default() -> ConfigDuration {
    ConfigDuration(JWT_LEEWAY_DEFAULT)
}

/// Configs get logged and printed in errors; the secret must not be.
impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("algorithm", &self.algorithm)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key_file", &self.public_key_file)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .finish()
    }
}

/// Patterns of what a browser may do: the token's `herald` claim, or `[realtime.anonymous]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrowserGrantsConfig {
    /// Room patterns of the rooms it may join (`chat.*`, `session:*`; see `herald_core::room`).
    pub rooms: Vec<String>,
    /// Patterns it may subscribe to; a subscription must lie within one of them.
    pub subscribe: Vec<String>,
    /// Event types it may publish.
    pub publish: Vec<String>,
}

/// `[realtime.limits]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeLimitsConfig {
    pub connections_max: usize,
    pub rooms_per_socket_max: usize,
    pub subscriptions_per_socket_max: usize,
    pub outbound_buffer_packets: usize,
    pub publish_events_per_second_max: u64,
}

impl Default for RealtimeLimitsConfig {
    fn default() -> RealtimeLimitsConfig {
        RealtimeLimitsConfig {
            connections_max: REALTIME_CONNECTIONS_MAX_DEFAULT,
            rooms_per_socket_max: REALTIME_ROOMS_PER_SOCKET_MAX_DEFAULT,
            subscriptions_per_socket_max: REALTIME_SUBSCRIPTIONS_PER_SOCKET_MAX_DEFAULT,
            outbound_buffer_packets: REALTIME_OUTBOUND_BUFFER_PACKETS_DEFAULT,
            publish_events_per_second_max: REALTIME_PUBLISH_EVENTS_PER_SECOND_MAX_DEFAULT,
        }
    }
}

/// Who a forwarded event goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardTo {
    /// Every socket of the user named by the event.
    User,
    /// Every socket in the room named by the event.
    Room,
    /// Every socket.
    Broadcast,
}

/// `[[realtime.forward]]`: every event matching `pattern` goes to browsers, to the user or
/// room named by the first of `target` present in the event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardRule {
    pub pattern: String,
    pub to: ForwardTo,
    /// Where the user or room is read, tried in order: `data.<path>` is a field of the event's
    /// data (`data.owner.id` nests), anything else an envelope field (`userId`, `key`,
    /// `correlationId`, `source`). Defaults to `["data.userId", "userId"]`.
    #[serde(default)]
    pub target: Vec<String>,
    /// Put before the value read, as in `prefix = "photo."` with `target = ["data.photoId"]`.
    #[serde(default)]
    pub prefix: String,
}

/// What a forwarding rule reads the user from when it names no `target`.
pub const FORWARD_TARGET_DEFAULT: [&str; 2] = ["data.userId", "userId"];

impl RealtimeConfig {
    /// Limits above zero, patterns valid, the token key readable, rules complete.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for origin in &self.cors_origins {
            let scheme_ok = origin.starts_with("http://") || origin.starts_with("https://");
            let well_formed = origin == "*"
                || (scheme_ok
                    && !origin.ends_with('/')
                    && axum::http::HeaderValue::from_str(origin).is_ok());
            if !well_formed {
                return Err(ConfigError::Invalid(format!(
                    "realtime.cors_origins: {origin:?} is not an origin; write it as \
                     scheme://host[:port] with no path (such as \"https://app.example.com\"), \
                     or \"*\""
                )));
            }
        }
        let limits = &self.limits;
        for (name, value) in [
            ("realtime.limits.connections_max", limits.connections_max),
            (
                "realtime.limits.rooms_per_socket_max",
                limits.rooms_per_socket_max,
            ),
            (
                "realtime.limits.subscriptions_per_socket_max",
                limits.subscriptions_per_socket_max,
            ),
            (
                "realtime.limits.outbound_buffer_packets",
                limits.outbound_buffer_packets,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        if limits.publish_events_per_second_max == 0 {
            return Err(ConfigError::Invalid(
                "realtime.limits.publish_events_per_second_max must be at least 1".into(),
            ));
        }
        crate::realtime::BrowserGrants::parse(&self.anonymous)
            .map_err(|error| ConfigError::Invalid(format!("realtime.anonymous: {error}")))?;
        if let Some(jwt) = &self.jwt {
            crate::realtime::jwt::JwtVerifier::new(jwt)
                .map_err(|error| ConfigError::Invalid(error.to_string()))?;
        }
        for (index, rule) in self.forward.iter().enumerate() {
            crate::realtime::forwarding::Rule::new(rule).map_err(|error| {
                ConfigError::Invalid(format!("realtime.forward[{index}]: {error}"))
            })?;
        }
        Ok(())
    }
}

/// A service listens to a handful of rooms (its sessions, its documents); as many as a browser
/// socket may join (`realtime.limits.rooms_per_socket_max`).
pub const ROOMS_PER_CONNECTION_MAX_DEFAULT: usize = REALTIME_ROOMS_PER_SOCKET_MAX_DEFAULT;

/// Limits with clear errors (PRODUCT.md §8). Every queue and buffer is bounded by one of these.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub event_bytes_max: usize,
    /// An HTTP body or a WebSocket frame.
    pub request_bytes_max: usize,
    pub batch_events_max: usize,
    pub connections_max: usize,
    pub subscriptions_per_connection_max: usize,
    /// Rooms one `/v1/ws` connection may listen to at once (`join`).
    pub rooms_per_connection_max: usize,
    /// `pub` frames one connection may have unanswered before the server stops reading it.
    pub pending_publishes_max: usize,
    /// Events one connection may publish per second (a token bucket one second deep).
    pub publish_events_per_second_max: u64,
    /// Frames queued for one connection's socket; a connection that lets this many pile up is
    /// closed as too slow.
    pub outbound_frames_max: usize,
    /// Events one live subscriber may fall behind before it is dropped.
    pub live_buffer_events: usize,
    pub replay_events_max: usize,
    pub dead_letters_page_max: usize,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        let core = Limits::default();
        LimitsConfig {
            event_bytes_max: core.event_bytes_max,
            request_bytes_max: core.batch_bytes_max,
            batch_events_max: core.batch_events_max,
            connections_max: 10_000,
            subscriptions_per_connection_max: 256,
            rooms_per_connection_max: ROOMS_PER_CONNECTION_MAX_DEFAULT,
            pending_publishes_max: 64,
            publish_events_per_second_max: 1_000_000,
            outbound_frames_max: 4096,
            live_buffer_events: herald_engine::config::LIVE_BUFFER_EVENTS_DEFAULT,
            replay_events_max: 10_000,
            dead_letters_page_max: 10_000,
        }
    }
}

impl LimitsConfig {
    pub fn event_limits(&self) -> Limits {
        Limits {
            event_bytes_max: self.event_bytes_max,
            batch_bytes_max: self.request_bytes_max,
            batch_events_max: self.batch_events_max,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSetting {
    pub name: String,
    pub subjects: Vec<String>,
    #[serde(default)]
    pub max_age: Option<ConfigDuration>,
    #[serde(default)]
    pub max_bytes: Option<u64>,
    #[serde(default)]
    pub max_events: Option<u64>,
    #[serde(default)]
    pub dedupe_window: Option<ConfigDuration>,
    #[serde(default)]
    pub storage: Option<StorageSetting>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageSetting {
    File,
    Memory,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSetting {
    pub name: String,
    pub pattern: String,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub ack_timeout: Option<ConfigDuration>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub backoff_initial: Option<ConfigDuration>,
    #[serde(default)]
    pub backoff_factor: Option<f64>,
    #[serde(default)]
    pub backoff_max: Option<ConfigDuration>,
    #[serde(default)]
    pub backoff_jitter: Option<f64>,
    #[serde(default)]
    pub max_in_flight: Option<u32>,
}

/// A duration written `"250ms"`, `"30s"`, `"2m"`, `"1h"` or `"7d"`, or a number of milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub fn parse(text: &str) -> Result<ConfigDuration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let value: u64 = number.parse().map_err(|_| {
            format!("{text:?} is not a duration such as \"500ms\", \"30s\" or \"2m\"")
        })?;
        let millis_per_unit = match unit {
            "ms" | "" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "{text:?} has an unknown unit {unit:?}; use ms, s, m, h or d"
                ));
            }
        };
        let millis = value
            .checked_mul(millis_per_unit)
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
        Ok(ConfigDuration(Duration::from_millis(millis)))
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}ms", self.0.as_millis()))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<ConfigDuration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Millis(u64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Millis(millis) => Ok(ConfigDuration(Duration::from_millis(millis))),
            Written::Text(text) => ConfigDuration::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// Why the configuration cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    #[error("{0}")]
    Invalid(String),
}

/// `HERALD_*` variables that are not the server's: the client commands' (`url`, `token`) and
/// the test suite's (`HERALD_REQUIRE_ENGINES`, `HERALD_TEST_REDIS_URL`, set for whole CI runs,
/// which start servers).
const CLIENT_VARIABLES: [&str; 4] = ["url", "token", "require_engines", "test_redis_url"];

impl ServerConfig {
    /// Defaults, then `path` if given (an explicitly named file must exist), or `herald.toml` in
    /// the working directory if present, then `HERALD_*` variables (`__` separates levels:
    /// `HERALD_LIMITS__EVENT_BYTES_MAX`).
    pub fn load(path: Option<&Path>) -> Result<ServerConfig, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(ServerConfig::default()));
        match path {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::Invalid(format!(
                        "config file {} does not exist",
                        path.display()
                    )));
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None => figment = figment.merge(Toml::file("herald.toml")),
        }
        figment = figment.merge(
            Env::prefixed("HERALD_")
                // Keys keep their case here (they are lowercased later).
                .filter(|key| {
                    !CLIENT_VARIABLES
                        .iter()
                        .any(|name| key.as_str().eq_ignore_ascii_case(name))
                })
                // `HERALD_REDIS_URL`, the name Redis users expect, is `HERALD_REDIS__URL`.
                .map(|key| {
                    if key == "redis_url" {
                        "redis__url".into()
                    } else {
                        key.into()
                    }
                })
                .split("__"),
        );
        figment
            .extract()
            .map_err(|error| ConfigError::Load(Box::new(error)))
    }

    /// Checks what serde cannot: limits above zero, patterns and names valid, auth required
    /// off loopback.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        let limits = &self.limits;
        for (name, value) in [
            ("limits.event_bytes_max", limits.event_bytes_max),
            ("limits.request_bytes_max", limits.request_bytes_max),
            ("limits.batch_events_max", limits.batch_events_max),
            ("limits.connections_max", limits.connections_max),
            (
                "limits.subscriptions_per_connection_max",
                limits.subscriptions_per_connection_max,
            ),
            (
                "limits.rooms_per_connection_max",
                limits.rooms_per_connection_max,
            ),
            ("limits.pending_publishes_max", limits.pending_publishes_max),
            ("limits.outbound_frames_max", limits.outbound_frames_max),
            ("limits.live_buffer_events", limits.live_buffer_events),
            ("limits.replay_events_max", limits.replay_events_max),
            ("limits.dead_letters_page_max", limits.dead_letters_page_max),
        ] {
            if value == 0 {
                return invalid(format!("{name} must be at least 1"));
            }
        }
        if limits.publish_events_per_second_max == 0 {
            return invalid("limits.publish_events_per_second_max must be at least 1".into());
        }
        if limits.event_bytes_max > limits.request_bytes_max {
            return invalid(format!(
                "limits.event_bytes_max ({}) exceeds limits.request_bytes_max ({})",
                limits.event_bytes_max, limits.request_bytes_max
            ));
        }
        if self.fsync == FsyncSetting::Interval && self.fsync_interval.0.is_zero() {
            return invalid("fsync_interval must be above zero".into());
        }
        if self.heartbeat.0 < Duration::from_millis(100) {
            return invalid("heartbeat must be at least 100ms".into());
        }
        if self.workers == Some(0) {
            return invalid("workers must be at least 1".into());
        }
        for pattern in &self.ephemeral {
            Pattern::new(pattern)
                .map_err(|error| ConfigError::Invalid(format!("ephemeral {pattern:?}: {error}")))?;
        }
        self.engine_config()?;
        if self.engine == EngineKind::Redis {
            self.redis_config()?;
        }
        self.realtime.validate()?;
        for group in &self.groups {
            self.group_spec(group)?;
        }
        if self.auth.tokens.is_empty() && !self.listen.ip().is_loopback() && !self.insecure {
            return invalid(format!(
                "refusing to listen on {} with auth off: configure [auth] tokens, listen on a \
                 loopback address, or pass --insecure",
                self.listen
            ));
        }
        Ok(())
    }

    pub fn fsync_policy(&self) -> FsyncPolicy {
        match self.fsync {
            FsyncSetting::Always => FsyncPolicy::Always,
            FsyncSetting::Interval => FsyncPolicy::Interval(self.fsync_interval.0),
            FsyncSetting::Never => FsyncPolicy::Never,
        }
    }

    pub fn engine_config(&self) -> Result<EngineConfig, ConfigError> {
        let mut config = EngineConfig::new(&self.data_dir);
        config.fsync = self.fsync_policy();
        config.live_buffer_events = self.limits.live_buffer_events;
        config.ephemeral = self
            .ephemeral
            .iter()
            .map(|pattern| Pattern::new(pattern))
            .collect::<Result<_, _>>()
            .map_err(|error| ConfigError::Invalid(format!("ephemeral: {error}")))?;
        for stream in &self.streams {
            let subjects = stream
                .subjects
                .iter()
                .map(|pattern| Pattern::new(pattern))
                .collect::<Result<_, _>>()
                .map_err(|error| {
                    ConfigError::Invalid(format!("stream {:?} subjects: {error}", stream.name))
                })?;
            config.streams.push(StreamConfig {
                name: stream.name.clone(),
                subjects,
                retention: Retention {
                    age_max: stream.max_age.map(|age| age.0),
                    bytes_max: stream.max_bytes,
                    events_max: stream.max_events,
                },
                dedupe_window: stream
                    .dedupe_window
                    .map_or(herald_engine::config::DEDUPE_WINDOW_DEFAULT, |window| {
                        window.0
                    }),
                storage: match stream.storage {
                    Some(StorageSetting::Memory) => Storage::Memory,
                    Some(StorageSetting::File) | None => Storage::File,
                },
            });
        }
        Ok(config)
    }

    /// The Redis engine's configuration, from `[redis]` and the same streams and limits as the
    /// embedded engine's.
    pub fn redis_config(&self) -> Result<herald_engine::RedisConfig, ConfigError> {
        let embedded = self.engine_config()?;
        let mut config = herald_engine::RedisConfig::new(self.redis.url.clone());
        config.urls.extend(self.redis.nodes.iter().cloned());
        config.cluster = self.redis.cluster;
        config.key_prefix = self.redis.key_prefix.clone();
        config.streams = embedded.streams;
        config.ephemeral = embedded.ephemeral;
        config.live_buffer_events = embedded.live_buffer_events;
        config.process_ttl = self.redis.process_ttl.0;
        if config.process_ttl < herald_engine::redis::PROCESS_TTL_MIN {
            return Err(ConfigError::Invalid(format!(
                "redis.process_ttl must be at least {:?}",
                herald_engine::redis::PROCESS_TTL_MIN
            )));
        }
        if !config.cluster && !self.redis.nodes.is_empty() {
            return Err(ConfigError::Invalid(
                "redis.nodes lists Cluster seed nodes: set redis.cluster = true".into(),
            ));
        }
        if config.key_prefix.is_empty() || config.key_prefix.contains(['{', '}']) {
            return Err(ConfigError::Invalid(format!(
                "redis.key_prefix {:?} must be non-empty and without braces",
                config.key_prefix
            )));
        }
        Ok(config)
    }

    /// A declared group as the engine takes it.
    pub fn group_spec(
        &self,
        group: &GroupSetting,
    ) -> Result<herald_engine::GroupSpec, ConfigError> {
        let invalid =
            |message: String| ConfigError::Invalid(format!("group {:?}: {message}", group.name));
        let pattern = Pattern::new(&group.pattern).map_err(|error| invalid(error.to_string()))?;
        let from = match &group.from {
            Some(text) => From::parse(text).map_err(|error| invalid(error.to_string()))?,
            None => From::Latest,
        };
        let defaults = GroupPolicy::default();
        let wire = herald_protocol::http::GroupPolicyConfig {
            ack_timeout_ms: group.ack_timeout.map(|timeout| millis(timeout.0)),
            max_retries: group.max_retries,
            backoff: Some(herald_protocol::http::BackoffConfig {
                initial_ms: millis(
                    group
                        .backoff_initial
                        .map_or(defaults.backoff.initial, |d| d.0),
                ),
                factor: group.backoff_factor.unwrap_or(defaults.backoff.factor),
                max_ms: millis(group.backoff_max.map_or(defaults.backoff.max, |d| d.0)),
                jitter: group.backoff_jitter.unwrap_or(defaults.backoff.jitter),
            }),
            max_in_flight: group.max_in_flight,
        };
        let policy = group_policy(Some(&wire)).map_err(|error| invalid(error.detail.message))?;
        crate::convert::group_spec(&group.name, pattern, from, policy)
            .map_err(|error| invalid(error.detail.message))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_duration(input: &str, expect: Result<u64, &str>) {
        match (ConfigDuration::parse(input), expect) {
            (Ok(duration), Ok(millis)) => assert_eq!(duration.0.as_millis() as u64, millis),
            (Err(error), Err(part)) => assert!(error.contains(part), "{error}"),
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn durations() {
        check_duration("250ms", Ok(250));
        check_duration("30s", Ok(30_000));
        check_duration("2m", Ok(120_000));
        check_duration("1h", Ok(3_600_000));
        check_duration("7d", Ok(604_800_000));
        check_duration("15", Ok(15));
        check_duration("1w", Err("unknown unit"));
        check_duration("s", Err("not a duration"));
        check_duration("99999999999999999d", Err("too long"));
    }

    fn load_toml(text: &str) -> Result<ServerConfig, ConfigError> {
        let config: ServerConfig = Figment::from(Serialized::defaults(ServerConfig::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|error| ConfigError::Load(Box::new(error)))?;
        config.validate()?;
        Ok(config)
    }

    fn check_config(text: &str, expect: Result<(), &str>) {
        match (load_toml(text), expect) {
            (Ok(_), Ok(())) => {}
            (Err(error), Err(part)) => {
                let message = error.to_string();
                assert!(message.contains(part), "{text}: {message:?} lacks {part:?}");
            }
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn configs() {
        check_config("", Ok(()));
        check_config(
            r#"
            fsync = "interval"
            fsync_interval = "10ms"
            ephemeral = ["presence.>"]
            [limits]
            event_bytes_max = 1024
            [[streams]]
            name = "orders"
            subjects = ["order.>", "payment.>"]
            max_age = "7d"
            [[groups]]
            name = "mailer"
            pattern = "user.*"
            max_retries = 5
            backoff_initial = "500ms"
            "#,
            Ok(()),
        );
        check_config("fsync = \"sometimes\"", Err("unknown variant"));
        check_config("colour = 1", Err("unknown field"));
        check_config("[limits]\nevent_bytes_maxx = 1", Err("unknown field"));
        check_config(
            "[limits]\nconnections_max = 0",
            Err("limits.connections_max must be at least 1"),
        );
        check_config("ephemeral = [\"a..b\"]", Err("ephemeral"));
        check_config("workers = 3", Ok(()));
        check_config("workers = 0", Err("workers must be at least 1"));
        check_config(
            "[[groups]]\nname = \"g\"\npattern = \"a.*\"\nfrom = \"soon\"",
            Err("group \"g\""),
        );
        check_config(
            "listen = \"0.0.0.0:3003\"",
            Err("refusing to listen on 0.0.0.0:3003"),
        );
        check_config("listen = \"0.0.0.0:3003\"\ninsecure = true", Ok(()));
        check_config(
            "engine = \"redis\"\n[redis]\nurl = \"redis://10.0.0.5:6379\"\nkey_prefix = \"bus\"",
            Ok(()),
        );
        check_config("engine = \"nats\"", Err("unknown variant"));
        check_config(
            "engine = \"redis\"\n[redis]\nprocess_ttl = \"10ms\"",
            Err("redis.process_ttl"),
        );
        check_config(
            "engine = \"redis\"\n[redis]\nkey_prefix = \"a{b}\"",
            Err("redis.key_prefix"),
        );
        check_config(
            "engine = \"redis\"\n[redis]\nnodes = [\"redis://10.0.0.6:6379\"]",
            Err("redis.cluster = true"),
        );
        check_config(
            "engine = \"redis\"\n[redis]\ncluster = true\nnodes = [\"redis://10.0.0.6:6379\"]",
            Ok(()),
        );
    }

    #[test]
    fn redis_urls_are_shown_without_their_password() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
            ("rediss://app:s3cret@host", "rediss://app:***@host"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }

    #[test]
    fn realtime_configs() {
        let hs256 = "[realtime.jwt]\nalgorithm = \"HS256\"\naudience = \"herald\"\n";
        let secret = "secret = \"0123456789abcdef0123456789abcdef\"\n";
        check_config(&format!("{hs256}{secret}"), Ok(()));
        check_config(
            &format!("{hs256}{secret}leeway = \"5s\"\nissuer = \"auth\""),
            Ok(()),
        );
        check_config(hs256, Err("realtime.jwt.secret is required for HS256"));
        check_config(
            &format!("{hs256}secret = \"short\""),
            Err("fewer than the 32"),
        );
        check_config(
            "[realtime.jwt]\nalgorithm = \"HS512\"\naudience = \"x\"\nsecret = \"s\"",
            Err("unknown variant"),
        );
        check_config(
            "[realtime.jwt]\nalgorithm = \"RS256\"\naudience = \"x\"\npublic_key_file = \"/nonexistent.pem\"",
            Err("/nonexistent.pem"),
        );
        check_config(
            "[realtime]\nallow_anonymous = true\n[realtime.anonymous]\nrooms = [\"lobby\"]\nsubscribe = [\"news.*\"]",
            Ok(()),
        );
        check_config(
            "[realtime.anonymous]\nrooms = [\"a..b\"]",
            Err("realtime.anonymous: rooms pattern \"a..b\""),
        );
        check_config(
            "[realtime.limits]\nrooms_per_socket_max = 0",
            Err("realtime.limits.rooms_per_socket_max must be at least 1"),
        );
        check_config("[realtime.limits]\nsockets = 1", Err("unknown field"));
        check_config(
            "[[realtime.forward]]\npattern = \"photo.processing.*\"\nto = \"user\"",
            Ok(()),
        );
        check_config(
            "[[realtime.forward]]\npattern = \"photo.*\"\nto = \"room\"\ntarget = [\"data.photoId\"]\nprefix = \"photo.\"",
            Ok(()),
        );
        check_config(
            "[[realtime.forward]]\npattern = \"photo.*\"\nto = \"room\"",
            Err("realtime.forward[0]: to = \"room\" needs target"),
        );
        check_config(
            "[[realtime.forward]]\npattern = \"photo.*\"\nto = \"everyone\"",
            Err("unknown variant"),
        );
    }

    #[test]
    fn cors_origins() {
        let origins = |list: &str| format!("[realtime]\ncors_origins = [{list}]");
        check_config(&origins(""), Ok(()));
        check_config(&origins("\"*\""), Ok(()));
        check_config(
            &origins("\"https://app.example.com\", \"http://127.0.0.1:5173\""),
            Ok(()),
        );
        for bad in [
            "\"app.example.com\"",
            "\"https://app.example.com/\"",
            "\"ftp://app.example.com\"",
            "\"https://app.example.com\\n\"",
        ] {
            check_config(&origins(bad), Err("is not an origin"));
        }
    }
}
