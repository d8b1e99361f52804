//! What the Redis engine's tests share: the machine's Redis (or a reason to skip), a unique key
//! prefix per engine, and cleaning up after it.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::time::Duration;

use herald_core::Pattern;
use herald_engine::conformance::{EPHEMERAL_PATTERN, Fixture, Timing};
use herald_engine::{RedisConfig, RedisEngine};

/// The Redis the tests use: `HERALD_TEST_REDIS_URL`, else the machine's.
pub fn redis_url() -> String {
    std::env::var("HERALD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Whether tests that need an engine's server must fail rather than skip without one (CI).
pub fn engines_required() -> bool {
    std::env::var("HERALD_REQUIRE_ENGINES").is_ok_and(|value| value == "1")
}

/// The Redis URL if that Redis answers; otherwise `None` after saying loudly that the test is
/// skipped — or a panic under `HERALD_REQUIRE_ENGINES=1`.
pub fn reachable_redis() -> Option<String> {
    let url = redis_url();
    let answered = redis::Client::open(url.as_str())
        .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(2)))
        .and_then(|mut connection| redis::cmd("PING").query::<String>(&mut connection));
    match answered {
        Ok(_) => Some(url),
        Err(error) if engines_required() => {
            panic!("HERALD_REQUIRE_ENGINES=1 but no Redis answers at {url}: {error}")
        }
        Err(error) => {
            eprintln!(
                "\n********\nSKIPPED: no Redis answers at {url} ({error}); set HERALD_TEST_REDIS_URL \
                 or start one. Under HERALD_REQUIRE_ENGINES=1 this fails.\n********\n"
            );
            None
        }
    }
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("herald-test-{}", uuid::Uuid::now_v7().simple())
}

/// A fresh prefix on the Redis at `url`, and the guard that deletes its keys at the test's end.
pub fn isolated_prefix(url: &str) -> (String, Cleanup) {
    let prefix = unique_prefix();
    let cleanup = Cleanup {
        urls: vec![url.to_owned()],
        prefix: prefix.clone(),
        engine: None,
    };
    (prefix, cleanup)
}

/// Deletes every key under a prefix when dropped, after stopping the engine's tasks if given
/// one (they would otherwise go on writing until the test's runtime ends).
#[derive(Debug)]
pub struct Cleanup {
    pub urls: Vec<String>,
    pub prefix: String,
    pub engine: Option<RedisEngine>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            engine.abandon();
        }
        for url in &self.urls {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                continue;
            };
            let Ok(mut connection) = client.get_connection_with_timeout(Duration::from_secs(2))
            else {
                continue;
            };
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.prefix))
                .query(&mut connection)
                .unwrap_or_default();
            for key in keys {
                let _: Result<i64, _> = redis::cmd("DEL").arg(&key).query(&mut connection);
            }
        }
    }
}

/// The group tests on the real clock: a twentieth of the written durations (the default ack
/// timeout becomes 1.5 s, the first backoff 50 ms), with room for a reply's round trip.
pub const TIMING: Timing = Timing {
    scale: 0.05,
    early: Duration::from_millis(10),
    late: Duration::from_millis(30),
};

/// An engine on the test Redis under a fresh prefix.
pub async fn engine_on(url: &str, prefix: &str) -> RedisEngine {
    let mut config = RedisConfig::new(url);
    config.key_prefix = prefix.to_owned();
    config.ephemeral = vec![Pattern::new(EPHEMERAL_PATTERN).unwrap()];
    config.live_buffer_events = 256;
    RedisEngine::open(config)
        .await
        .expect("open the Redis engine")
}

/// A conformance fixture on the machine's Redis, or `None` (skipped) without one.
pub async fn fixture() -> Option<Fixture<RedisEngine>> {
    let url = reachable_redis()?;
    let prefix = unique_prefix();
    let engine = engine_on(&url, &prefix).await;
    Some(Fixture {
        engine: engine.clone(),
        live_buffer_events: 256,
        timing: TIMING,
        keep_alive: Box::new(Cleanup {
            urls: vec![url],
            prefix,
            engine: Some(engine),
        }),
    })
}

/// A Redis Cluster of its own: `CLUSTER_NODES` redis-server processes in cluster mode on free
/// loopback ports (nothing on disk that outlives the test), every slot assigned. Killed when
/// dropped.
#[derive(Debug)]
pub struct Cluster {
    pub urls: Vec<String>,
    servers: Vec<std::process::Child>,
    _dir: tempfile::TempDir,
}

/// Masters of a test cluster (the fewest Redis accepts for a cluster).
const CLUSTER_NODES: usize = 3;

/// How long a test cluster may take to form.
const CLUSTER_FORM_WAIT: Duration = Duration::from_secs(30);

impl Cluster {
    /// Starts a cluster, or `None` after saying loudly why not (no redis-server here) — a
    /// panic under `HERALD_REQUIRE_ENGINES=1`.
    pub fn start() -> Option<Cluster> {
        started_or_skipped("Redis Cluster", Cluster::try_start())
    }

    fn try_start() -> Result<Cluster, String> {
        let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
        let mut cluster = Cluster {
            urls: Vec::new(),
            servers: Vec::new(),
            _dir: dir,
        };
        let mut addresses = Vec::new();
        for _ in 0..CLUSTER_NODES {
            let port = free_cluster_port()?;
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(cluster._dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|error| format!("redis-server: {error}"))?;
            cluster.servers.push(child);
            addresses.push(format!("127.0.0.1:{port}"));
            cluster.urls.push(format!("redis://127.0.0.1:{port}"));
        }
        for url in &cluster.urls {
            wait_until(|| answers_ping(url)).map_err(|_| format!("{url} did not answer"))?;
        }
        let created = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|error| format!("redis-cli: {error}"))?;
        if !created.success() {
            return Err(format!("redis-cli --cluster create failed: {created}"));
        }
        for url in &cluster.urls {
            wait_until(|| {
                redis::Client::open(url.as_str())
                    .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(1)))
                    .and_then(|mut connection| {
                        redis::cmd("CLUSTER")
                            .arg("INFO")
                            .query::<String>(&mut connection)
                    })
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            })
            .map_err(|_| format!("{url} never saw the cluster formed"))?;
        }
        Ok(cluster)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

/// A free loopback port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> Result<u16, String> {
    for _ in 0..100 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free port pair".to_owned())
}

/// Polls `ready` until it holds, for at most [`CLUSTER_FORM_WAIT`].
fn wait_until(mut ready: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = std::time::Instant::now() + CLUSTER_FORM_WAIT;
    while !ready() {
        if std::time::Instant::now() > deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A conformance fixture on a Redis Cluster of its own, or `None` (skipped) without
/// redis-server.
pub async fn cluster_fixture() -> Option<Fixture<RedisEngine>> {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.ok()??;
    let mut config = RedisConfig::new(cluster.urls[0].clone());
    config.urls = cluster.urls.clone();
    config.cluster = true;
    config.key_prefix = unique_prefix();
    config.ephemeral = vec![Pattern::new(EPHEMERAL_PATTERN).unwrap()];
    config.live_buffer_events = 256;
    let engine = RedisEngine::open(config)
        .await
        .expect("open the Redis engine on the cluster");
    Some(Fixture {
        engine,
        live_buffer_events: 256,
        timing: TIMING,
        keep_alive: Box::new(cluster),
    })
}

/// A standalone redis-server of a test's own, on a free loopback port, for what would disturb
/// the machine's (its configuration changed, say). Killed when dropped.
#[derive(Debug)]
pub struct OwnRedis {
    pub url: String,
    server: std::process::Child,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    /// Starts one, or `None` after saying loudly why not — a panic under
    /// `HERALD_REQUIRE_ENGINES=1`.
    pub fn start() -> Option<OwnRedis> {
        started_or_skipped("redis-server", OwnRedis::try_start())
    }

    fn try_start() -> Result<OwnRedis, String> {
        let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
        let port = free_cluster_port()?;
        let server = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|error| format!("redis-server: {error}"))?;
        let redis = OwnRedis {
            url: format!("redis://127.0.0.1:{port}"),
            server,
            _dir: dir,
        };
        wait_until(|| answers_ping(&redis.url))
            .map_err(|_| format!("{} did not answer", redis.url))?;
        Ok(redis)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// A Redis the test starts itself, or `None` after saying loudly why not — a panic under
/// `HERALD_REQUIRE_ENGINES=1`.
fn started_or_skipped<T>(what: &str, started: Result<T, String>) -> Option<T> {
    match started {
        Ok(redis) => Some(redis),
        Err(reason) if engines_required() => {
            panic!("HERALD_REQUIRE_ENGINES=1 but no {what} could be started: {reason}")
        }
        Err(reason) => {
            eprintln!("\n********\nSKIPPED: no {what} could be started: {reason}\n********\n");
            None
        }
    }
}

/// Whether the Redis at `url` answers a `PING` within a second.
fn answers_ping(url: &str) -> bool {
    redis::Client::open(url)
        .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(1)))
        .and_then(|mut connection| redis::cmd("PING").query::<String>(&mut connection))
        .is_ok()
}
