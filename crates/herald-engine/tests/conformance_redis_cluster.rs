//! The conformance suite on a Redis Cluster that each test starts itself (three redis-server
//! masters in cluster mode on free loopback ports): every key of a stream shares a hash tag,
//! so every script and read runs on one node. Skipped loudly without redis-server, except under
//! `HERALD_REQUIRE_ENGINES=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod redis_support;

herald_engine::conformance_tests!(
    redis_support::cluster_fixture,
    redis_support::cluster_fixture,
    real_clock
);
