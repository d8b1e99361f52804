//! The engine the server runs on, chosen by configuration (`engine = "embedded" | "redis"`):
//! an enum that delegates every [`Engine`] method, so the rest of the server is written once
//! against the trait.

use std::future::Future;
use std::sync::Arc;

use futures::future::Either;

use herald_core::{Event, Pattern, StoredEvent};
use herald_engine::{
    DeadLetter, EmbeddedEngine, Engine, EngineError, GroupMember, GroupSpec, GroupStats,
    LiveSubscription, PublishOutcome, RedisEngine, StartAt, StreamStats,
};

#[derive(Clone, Debug)]
pub enum ServerEngine {
    Embedded(EmbeddedEngine),
    Redis(RedisEngine),
}

impl ServerEngine {
    /// Closes the engine: the embedded one fsyncs its logs; the Redis one gives its members'
    /// deliveries back for other processes to take.
    pub async fn close(&self) -> Result<(), EngineError> {
        match self {
            ServerEngine::Embedded(engine) => engine.close().await,
            ServerEngine::Redis(engine) => engine.close().await,
        }
    }

    /// What the engine is, for the banner and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerEngine::Embedded(_) => "embedded",
            ServerEngine::Redis(_) => "redis",
        }
    }
}

/// Delegates one method to whichever engine this is.
macro_rules! delegate {
    ($self:ident, $engine:ident => $call:expr) => {
        match $self {
            ServerEngine::Embedded($engine) => $call.await,
            ServerEngine::Redis($engine) => $call.await,
        }
    };
}

impl Engine for ServerEngine {
    /// Calls the engine's `publish` now, not when the future first runs: the order of calls
    /// is what an engine keeps ([`Engine::ordered_publishes_in_flight`]).
    fn publish(
        &self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<Vec<PublishOutcome>, EngineError>> + Send + 'static {
        match self {
            ServerEngine::Embedded(engine) => Either::Left(engine.publish(events)),
            ServerEngine::Redis(engine) => Either::Right(engine.publish(events)),
        }
    }

    fn ordered_publishes_in_flight(&self) -> usize {
        match self {
            ServerEngine::Embedded(engine) => engine.ordered_publishes_in_flight(),
            ServerEngine::Redis(engine) => engine.ordered_publishes_in_flight(),
        }
    }

    async fn subscribe(
        &self,
        pattern: Pattern,
        start: StartAt,
    ) -> Result<LiveSubscription, EngineError> {
        delegate!(self, engine => engine.subscribe(pattern, start))
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, EngineError> {
        delegate!(self, engine => engine.read_stream(stream, from_seq, limit))
    }

    async fn streams(&self) -> Vec<StreamStats> {
        delegate!(self, engine => engine.streams())
    }

    async fn join_group(
        &self,
        spec: GroupSpec,
        max_in_flight: Option<u32>,
    ) -> Result<GroupMember, EngineError> {
        delegate!(self, engine => engine.join_group(spec, max_in_flight))
    }

    async fn create_group(&self, spec: GroupSpec) -> Result<(), EngineError> {
        delegate!(self, engine => engine.create_group(spec))
    }

    async fn delete_group(&self, name: &str) -> Result<(), EngineError> {
        delegate!(self, engine => engine.delete_group(name))
    }

    async fn groups(&self) -> Vec<GroupStats> {
        delegate!(self, engine => engine.groups())
    }

    async fn dead_letters(
        &self,
        group: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, EngineError> {
        delegate!(self, engine => engine.dead_letters(group, limit))
    }

    async fn redrive(&self, group: &str) -> Result<u64, EngineError> {
        delegate!(self, engine => engine.redrive(group))
    }

    async fn purge_dead_letters(&self, group: &str) -> Result<u64, EngineError> {
        delegate!(self, engine => engine.purge_dead_letters(group))
    }
}
