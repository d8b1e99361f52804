//! The conformance suite on the Redis engine, against the machine's Redis
//! (`HERALD_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`), each test under its own key
//! prefix. The group tests run on the real clock, scaled (see `redis_support::TIMING`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod redis_support;

herald_engine::conformance_tests!(redis_support::fixture, redis_support::fixture, real_clock);
