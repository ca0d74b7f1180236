//! The wasmtime engine weir runs every processor on, configured once.
//!
//! Decisions, briefly:
//! - **Pooling allocator** by default: instance slots, memories and stacks are reserved up
//!   front, so a fresh instance per execution costs microseconds. Where the machine refuses
//!   the reservation (a low `ulimit -v`, a container without overcommit), the engine falls
//!   back to on-demand allocation and says so in a warning; behaviour is the same, only
//!   slower.
//! - **Keep-resident memory**: the first bytes of each pooled memory are zeroed in place
//!   between sandboxes rather than unmapped, which keeps concurrent executions from
//!   interrupting each other's cores (see [`EngineConfig::keep_resident_bytes`]).
//! - **Epoch interruption** with a ticker thread (stopped when the engine drops) so a
//!   CPU-bound guest is stopped at its deadline and yields to the async runtime on every
//!   tick; **fuel** as a deterministic compute budget on top.
//! - **Compile cache** on disk, keyed by the component's digest and the engine's
//!   compatibility hash (see [`crate::cache`]), so a restart does not recompile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::{InstanceAllocationStrategy, PoolingAllocationConfig, component::Component};

use crate::cache::CompileCache;
use crate::error::{Error, LoadError};
use crate::warm::WarmBudget;

/// How the engine is set up. The defaults suit a server; tests lower the pool size.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Use the pooling allocator (falls back to on-demand if the reservation fails).
    pub pooling: bool,
    /// Most sandboxes alive at once; also the size of the pool.
    pub max_instances: u32,
    /// Largest linear memory any plugin may be granted (the memory ceiling).
    pub max_memory_bytes: u64,
    /// How often the epoch advances: the granularity of timeouts and async yields.
    pub epoch_tick: Duration,
    /// Largest WebAssembly call stack, in bytes.
    pub max_wasm_stack: usize,
    /// Where compiled components are cached; `None` disables the cache.
    pub cache_dir: Option<std::path::PathBuf>,
    /// Bytes at the start of each pooled linear memory that stay mapped between sandboxes
    /// and are zeroed with `memset` instead of being handed back to the kernel (`madvise`).
    /// Isolation is the same either way (the next sandbox sees zeroes); what changes is
    /// cost: `madvise` on one thread interrupts every other core running a guest to flush
    /// its TLB, and the next guest page-faults its memory back in. Only a guest's memory up
    /// to this size is zeroed, so the cost follows the guests' size: the default covers a
    /// Rust guest built with its toolchain's 1 MiB stack, its data and first heap pages,
    /// and guests built by `weir build` (a 128 KiB stack) use far less of it. Each pool
    /// slot that has been used keeps its guest's memory, up to this much, resident for good
    /// (measured with `cargo xtask bench memory`: 0.32 MiB per sandbox for a 128 KiB-stack
    /// guest, 1.33 MiB for a 1 MiB-stack one), so RSS is bounded by `max_instances` times
    /// this. 0 turns it off (measured: 0.04 MiB per sandbox waiting in a host call).
    pub keep_resident_bytes: usize,
    /// Reset only the pages a guest wrote, found with Linux's `PAGEMAP_SCAN` (6.7 or
    /// later; elsewhere this does nothing), instead of every kept-resident byte. Off by
    /// default, because it is **not safe between tenants**: wasmtime 48's scan skips a
    /// written page that is not in memory at that moment (swapped out, or being moved by
    /// the kernel's compaction), so the next sandbox in that pool slot can read what the
    /// previous guest left there (wasmtime pull request #14357). Turn it on only where
    /// every plugin may see every other execution's data: one tenant, trusted plugins, and
    /// preferably no swap. Measured on a 2-core machine: one fresh execution took 26–27 µs
    /// instead of 39–42 µs (`cargo xtask bench execute`), and a sandbox waiting in a host
    /// call held 0.14 MiB instead of 1.33 MiB (`cargo xtask bench memory`); the benches turn
    /// it on with `WEIR_BENCH_RESET_WRITTEN=1`.
    pub reset_written_pages_only: bool,
    /// Most idle warm instances kept across all plugins and tenants (see [`crate::Manifest`]'s
    /// `[warm]`). They take pool slots of their own, beyond `max_instances`, so warm
    /// instances never starve fresh sandboxes; each keeps its linear memory, so this also
    /// bounds their memory. 0 disables warm instances everywhere.
    pub max_warm_instances: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            pooling: true,
            max_instances: 1000,
            max_memory_bytes: crate::Limits::CEILINGS.memory_bytes,
            epoch_tick: Duration::from_millis(10),
            max_wasm_stack: 512 << 10,
            cache_dir: CompileCache::default_dir(),
            keep_resident_bytes: KEEP_RESIDENT_BYTES,
            reset_written_pages_only: false,
            max_warm_instances: 64,
        }
    }
}

/// The configured wasmtime engine, its epoch ticker and its compile cache. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    wasmtime: wasmtime::Engine,
    config: EngineConfig,
    pooling: bool,
    cache: Option<CompileCache>,
    warm: Arc<WarmBudget>,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("pooling", &self.inner.pooling)
            .field("cache", &self.inner.cache.as_ref().map(|c| c.dir()))
            .finish()
    }
}

/// A compiled component and how it was obtained.
pub(crate) struct Compiled {
    pub component: Component,
    pub from_cache: bool,
    pub elapsed: Duration,
}

impl Engine {
    /// Builds the engine. Fails only if wasmtime rejects the configuration itself or the
    /// cache directory is unsafe.
    pub fn new(config: EngineConfig) -> Result<Engine, Error> {
        let (wasmtime, pooling) = if config.pooling {
            match wasmtime::Engine::new(&wasmtime_config(&config, true)) {
                Ok(engine) => (engine, true),
                Err(err) => {
                    tracing::warn!(
                        error = %err,
                        "the pooling allocator could not reserve its memory; falling back to \
                         on-demand allocation (slower instantiation, same isolation)"
                    );
                    (new_engine(&config, false)?, false)
                }
            }
        } else {
            (new_engine(&config, false)?, false)
        };
        let cache = match &config.cache_dir {
            Some(dir) => Some(CompileCache::open(dir, &wasmtime)?),
            None => None,
        };
        let ticker = EpochTicker::start(wasmtime.clone(), config.epoch_tick)?;
        let warm = WarmBudget::new(config.max_warm_instances as usize);
        Ok(Engine {
            inner: Arc::new(EngineInner {
                wasmtime,
                config,
                pooling,
                cache,
                warm,
                _ticker: ticker,
            }),
        })
    }

    /// The underlying wasmtime engine.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.wasmtime
    }

    /// The configuration the engine was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Whether the pooling allocator is in use (false after a fallback).
    pub fn is_pooling(&self) -> bool {
        self.inner.pooling
    }

    /// The engine-wide allowance of idle warm instances.
    pub(crate) fn warm_budget(&self) -> &Arc<WarmBudget> {
        &self.inner.warm
    }

    /// The compile cache, if enabled.
    pub fn cache(&self) -> Option<&CompileCache> {
        self.inner.cache.as_ref()
    }

    /// Compiles `bytes` (whose SHA-256 is `digest`), using the cache when it has a verified
    /// entry. Compilation runs on a blocking thread, off the async executor.
    pub(crate) async fn compile(
        &self,
        bytes: Arc<Vec<u8>>,
        digest: &str,
    ) -> Result<Compiled, LoadError> {
        let started = Instant::now();
        let engine = self.inner.wasmtime.clone();
        let cache = self.inner.cache.clone();
        let digest = digest.to_string();
        let (component, from_cache) = tokio::task::spawn_blocking(move || {
            if let Some(component) = cache.as_ref().and_then(|c| c.load(&engine, &digest)) {
                return Ok((component, true));
            }
            let component = Component::new(&engine, &*bytes).map_err(|e| LoadError::Compile {
                reason: format!("{e:#}"),
            })?;
            if let Some(cache) = &cache {
                cache.store(&digest, &component);
            }
            Ok((component, false))
        })
        .await
        .map_err(|e| LoadError::Compile {
            reason: format!("the compiler thread failed: {e}"),
        })??;
        Ok(Compiled {
            component,
            from_cache,
            elapsed: started.elapsed(),
        })
    }
}

fn new_engine(config: &EngineConfig, pooling: bool) -> Result<wasmtime::Engine, Error> {
    wasmtime::Engine::new(&wasmtime_config(config, pooling))
        .map_err(|e| Error::Engine(e.to_string()))
}

fn wasmtime_config(config: &EngineConfig, pooling: bool) -> wasmtime::Config {
    let mut c = wasmtime::Config::new();
    c.wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(true)
        .max_wasm_stack(config.max_wasm_stack)
        .async_stack_size(config.max_wasm_stack + (1 << 20))
        .parallel_compilation(true);
    if pooling {
        // Idle warm instances hold slots of their own (see `max_warm_instances`).
        let n = config
            .max_instances
            .max(1)
            .saturating_add(config.max_warm_instances);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(n)
            // Components hold several core instances (the guest plus adapter shims), and
            // interpreters built with componentize-py/js hold more.
            .total_core_instances(n.saturating_mul(8))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(4))
            .total_stacks(n)
            .max_core_instances_per_component(64)
            .max_memories_per_component(8)
            .max_tables_per_component(32)
            .max_memory_size(config.max_memory_bytes as usize)
            .linear_memory_keep_resident(config.keep_resident_bytes)
            .table_keep_resident(config.keep_resident_bytes.min(64 << 10))
            // Opt-in only: see `EngineConfig::reset_written_pages_only` for why.
            .pagemap_scan(if config.reset_written_pages_only {
                wasmtime::Enabled::Auto
            } else {
                wasmtime::Enabled::No
            })
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(4 << 20)
            .table_elements(100_000);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    c
}

/// The default of [`EngineConfig::keep_resident_bytes`]: 2.25 MiB, just past the memory of
/// a Rust guest built with its toolchain's 1 MiB stack, its data and first heap pages.
/// Measured with `cargo xtask bench execute` on such guests: 64 executions in flight on 2
/// cores went from 0.5× to 1.9× the throughput of 1 in flight.
const KEEP_RESIDENT_BYTES: usize = (2 << 20) + (256 << 10);

/// A thread that advances the engine's epoch every tick until it is dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: wasmtime::Engine, tick: Duration) -> Result<EpochTicker, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    std::thread::park_timeout(tick);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| Error::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
