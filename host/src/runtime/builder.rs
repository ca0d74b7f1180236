//! Configuring and building a [`Runtime`]: plugins folder, engine, host policies, state
//! store and, with the `redis` feature, the distributed runtime's Redis and fleet key.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU8;

use crate::contract::error::Error;
use crate::contract::state_store::{MemoryStateStore, StateStore};
#[cfg(feature = "redis")]
use crate::distributed::state_store::RedisStateStore;
#[cfg(feature = "redis")]
use crate::distributed::{Distributed, RedisConfig};
use crate::execution::context::{Context, HostConfig};
use crate::execution::registry::Registry;
use crate::sandbox::engine::{Engine, EngineConfig};
use crate::sandbox::events::EventBus;

use super::{CREATED, Runtime};

/// Configures and builds a [`Runtime`].
#[derive(Debug, Default)]
pub struct RuntimeBuilder {
    plugins_dir: Option<PathBuf>,
    engine: EngineConfig,
    host: HostConfig,
    store: Option<Arc<dyn StateStore>>,
    #[cfg(feature = "redis")]
    redis: Option<RedisConfig>,
    #[cfg(feature = "redis")]
    trust: Option<crate::distributed::Trust>,
}

impl RuntimeBuilder {
    /// Loads plugins from `dir` (every `*.wasm` directly inside it).
    pub fn plugins_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.plugins_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Sets the engine configuration.
    pub fn engine_config(mut self, config: EngineConfig) -> Self {
        self.engine = config;
        self
    }

    /// Sets the host policies.
    pub fn host_config(mut self, config: HostConfig) -> Self {
        self.host = config;
        self
    }

    /// Keeps sessions' state and data in `store` (by default, in memory).
    pub fn state_store(mut self, store: Arc<dyn StateStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Runs work through the Redis `config` describes (see [`Runtime::redis`]).
    #[cfg(feature = "redis")]
    pub fn redis_config(mut self, config: RedisConfig) -> Self {
        self.redis = Some(config);
        self
    }

    /// Sets how the distributed runtime's processes tell their fleet's writes to Redis
    /// from anyone else's: the fleet key (replacing [`RedisConfig::trust`], whichever was
    /// set first). Without it the distributed runtime refuses to start.
    #[cfg(feature = "redis")]
    pub fn trust(mut self, trust: crate::distributed::Trust) -> Self {
        self.trust = Some(trust);
        self
    }

    /// Sets where components are compiled (see [`EngineConfig::compiler`]).
    pub fn compiler(mut self, compiler: crate::sandbox::compiler::Compiler) -> Self {
        self.engine.compiler = compiler;
        self
    }

    /// Sets the compile cache directory (`None` disables the cache).
    pub fn cache_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.engine.cache_dir = dir;
        self
    }

    /// Builds the engine and loads the plugins and workflows; the runtime accepts work once
    /// [`Runtime::start`] is called. Broken plugin files are rejected (see
    /// [`Runtime::catalog`]), not errors; a missing plugins folder is.
    pub async fn build(mut self) -> Result<Runtime, Error> {
        #[cfg(feature = "redis")]
        {
            if let (Some(config), Some(trust)) = (&mut self.redis, self.trust.take()) {
                config.trust = trust;
            }
            // Said before anything is compiled or connected.
            if let Some(config) = &self.redis {
                crate::distributed::check_trust(config)?;
            }
        }
        if self.host.ceilings.memory_bytes > self.engine.max_memory_bytes {
            self.engine.max_memory_bytes = self.host.ceilings.memory_bytes;
        }
        let engine = Engine::new(self.engine)?;
        let linker = crate::sandbox::linker(&engine)?;
        let registry = Registry::new(self.host.max_nesting);
        if let Some(dir) = &self.plugins_dir {
            registry.load_dir(&engine, &linker, dir, &self.host).await?;
        }
        #[cfg(feature = "redis")]
        let distributed = match &self.redis {
            Some(config) => {
                let distributed = Distributed::connect(
                    config.clone(),
                    self.host.max_batch_items,
                    self.host.idempotency.window,
                )
                .await?;
                distributed.publish(&registry.catalog()).await?;
                // Events are shared once the runtime exists (below).
                if self.store.is_none() {
                    let store = RedisStateStore::connect(config, self.host.session_quota)
                        .await?
                        .with_idle_expiry(self.host.sessions.idle_expiry);
                    self.store = Some(Arc::new(store));
                }
                Some(distributed)
            }
            None => None,
        };
        let store = self.store.unwrap_or_else(|| {
            Arc::new(
                MemoryStateStore::new(self.host.session_quota)
                    .with_idle_expiry(self.host.sessions.idle_expiry),
            )
        });
        let events = EventBus::new(self.host.event_capacity, self.host.event_buffer_bytes);
        let shared = Arc::new(Context::new(
            engine, linker, registry, self.host, store, events,
        ));
        #[cfg(feature = "redis")]
        if let Some(distributed) = &distributed {
            distributed.share_events(&shared);
            distributed.share_activity(&shared);
        }
        Ok(Runtime {
            keys: super::idempotency::Keys::new(shared.config().idempotency),
            shared,
            lifecycle: Arc::new(AtomicU8::new(CREATED)),
            #[cfg(feature = "redis")]
            distributed,
            plugins_dir: self.plugins_dir,
            schedules: Arc::default(),
        })
    }
}
