//! The conformance suite on the embedded engine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use herald_core::Pattern;
use herald_engine::conformance::{EPHEMERAL_PATTERN, Fixture, Timing};
use herald_engine::{EmbeddedEngine, EngineConfig};
use herald_log::FsyncPolicy;

async fn embedded() -> Fixture<EmbeddedEngine> {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.fsync = FsyncPolicy::Interval(std::time::Duration::from_millis(10));
    config.ephemeral = vec![Pattern::new(EPHEMERAL_PATTERN).unwrap()];
    config.live_buffer_events = 256;
    Fixture {
        engine: EmbeddedEngine::open(config).unwrap(),
        live_buffer_events: 256,
        timing: Timing::PAUSED,
        keep_alive: Box::new(dir),
    }
}

/// For the paused clock: memory storage, so that no wait leaves tokio.
async fn embedded_in_memory() -> Fixture<EmbeddedEngine> {
    let mut config = EngineConfig::new("/nonexistent-herald-memory-engine");
    config.storage = herald_engine::Storage::Memory;
    config.ephemeral = vec![Pattern::new(EPHEMERAL_PATTERN).unwrap()];
    config.live_buffer_events = 256;
    let dir = tempfile::tempdir().unwrap();
    config.data_dir = dir.path().to_path_buf();
    Fixture {
        engine: EmbeddedEngine::open(config).unwrap(),
        live_buffer_events: 256,
        timing: Timing::PAUSED,
        keep_alive: Box::new(dir),
    }
}

herald_engine::conformance_tests!(embedded, embedded_in_memory);
