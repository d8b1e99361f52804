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

/// Deletes every key under a prefix when dropped.
#[derive(Debug)]
pub struct Cleanup {
    pub urls: Vec<String>,
    pub prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
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
    RedisEngine::open(config).await.expect("open the Redis engine")
}

/// A conformance fixture on the machine's Redis, or `None` (skipped) without one.
pub async fn fixture() -> Option<Fixture<RedisEngine>> {
    let url = reachable_redis()?;
    let prefix = unique_prefix();
    let engine = engine_on(&url, &prefix).await;
    Some(Fixture {
        engine,
        live_buffer_events: 256,
        timing: TIMING,
        keep_alive: Box::new(Cleanup {
            urls: vec![url],
            prefix,
        }),
    })
}
