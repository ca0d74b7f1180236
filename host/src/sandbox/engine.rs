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
//!   compatibility hash (see [`crate::sandbox::cache`]), so a restart does not recompile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::{InstanceAllocationStrategy, PoolingAllocationConfig, component::Component};

use crate::contract::error::{Error, LoadError};
use crate::sandbox::cache::CompileCache;
use crate::sandbox::compiler::{ChildSettings, CompileTurns, Compiler, compile_in_child};
use crate::sandbox::warm::WarmBudget;

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
    /// Most functions a component may define, over all its core modules (default
    /// 200,000). More are refused before compiling, which would take time in proportion.
    pub max_functions: u64,
    /// Largest function body a component may hold, in bytes (default 2 MiB). A larger one
    /// is refused before compiling: the compiler's time and memory grow faster than linearly
    /// in one function's size.
    pub max_function_bytes: u64,
    /// The most work one compile may take, in units of instructions weighted by how deeply
    /// they nest in blocks (default 100 million). A component over it is refused before
    /// compiling. The interpreters weir builds plugins with cost 6.5 million (CPython) and
    /// 7.6 million (SpiderMonkey); the worst component measured within the defaults
    /// compiled in about 25 s on this project's 2-core machine (docs/bounds.md).
    pub max_compile_cost: u64,
    /// Where components are compiled: on a thread of this process (the default), or in a
    /// child process with a clock and a memory bound ([`Compiler::Process`], what `weir`'s
    /// commands use). A compile in this process cannot be stopped once started: it is
    /// bounded only through the code bounds above.
    pub compiler: Compiler,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            pooling: true,
            max_instances: 1000,
            max_memory_bytes: crate::contract::limits::Limits::CEILINGS.memory_bytes,
            epoch_tick: Duration::from_millis(10),
            max_wasm_stack: 512 << 10,
            cache_dir: CompileCache::default_dir(),
            keep_resident_bytes: KEEP_RESIDENT_BYTES,
            reset_written_pages_only: false,
            max_warm_instances: 64,
            max_functions: 200_000,
            max_function_bytes: 2 << 20,
            max_compile_cost: 100_000_000,
            compiler: Compiler::InProcess,
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
    turns: CompileTurns,
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
                turns: CompileTurns::default(),
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
    /// entry. Compilation runs on a blocking thread, off the async executor, and in a child
    /// process when [`EngineConfig::compiler`] says so.
    /// Compiles of one digest take turns (the second finds the first's in the cache), and a
    /// digest whose compile ran past the clock is refused at once afterwards.
    pub(crate) async fn compile(
        &self,
        bytes: Arc<Vec<u8>>,
        digest: &str,
    ) -> Result<Compiled, LoadError> {
        self.inner
            .turns
            .take(digest, self.compile_now(bytes, digest))
            .await
    }

    async fn compile_now(&self, bytes: Arc<Vec<u8>>, digest: &str) -> Result<Compiled, LoadError> {
        let started = Instant::now();
        let engine = self.inner.wasmtime.clone();
        let cache = self.inner.cache.clone();
        let digest = digest.to_string();
        let config = &self.inner.config;
        let bounds = CodeBounds {
            max_functions: config.max_functions,
            max_function_bytes: config.max_function_bytes,
            max_compile_cost: config.max_compile_cost,
        };
        let compiler = config.compiler.clone();
        let settings = match &compiler {
            Compiler::Process(process) => Some(ChildSettings::new(config, process.memory_bytes)),
            Compiler::InProcess => None,
        };
        let (component, from_cache) = tokio::task::spawn_blocking(move || {
            // The counts are checked even when the cache has the code (the bounds may have
            // been lowered since); the cost only before compiling.
            check_code(&bytes, bounds, false)?;
            if let Some(component) = cache.as_ref().and_then(|c| c.load(&engine, &digest)) {
                return Ok((component, true));
            }
            check_code(&bytes, bounds, true)?;
            let component = match (&compiler, &settings) {
                (Compiler::Process(process), Some(settings)) => {
                    let code = compile_in_child(process, settings, bytes)?;
                    // SAFETY: the code comes from the program the embedder chose as its
                    // compiler (for `weir`, its own binary) through a pipe only this process
                    // holds: the trust the compile cache's entries get too. Loading refuses
                    // code compiled for an engine that differs from this one.
                    unsafe { Component::deserialize(&engine, &code) }.map_err(|e| {
                        LoadError::CompilerFailed {
                            reason: format!("the compiler process's code does not load: {e:#}"),
                        }
                    })?
                }
                _ => Component::new(&engine, &*bytes).map_err(|e| LoadError::Compile {
                    reason: format!("{e:#}"),
                })?,
            };
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

/// What drives the cost of compiling a component: its functions, over every core module
/// it holds (nested ones included).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CodeShape {
    /// Functions defined (imports excluded).
    pub functions: u64,
    /// The largest function body, in bytes.
    pub largest_function: u64,
    /// The estimated work of compiling it ([`compile_cost`]), when it was measured.
    pub cost: Option<u64>,
}

/// How much deeper code costs the compiler: an instruction at block depth `d` counts
/// `1 + d / COST_DEPTH_DIVISOR`. Measured on this project's machine, a unit then takes
/// 0.14 µs to compile in code nested 2,000 deep, 0.3 µs in flat code and about 1 µs in
/// CPython's: deep nesting costs no more per unit than ordinary code.
const COST_DEPTH_DIVISOR: u64 = 16;

/// Walks `bytes` for its [`CodeShape`]: function counts and sizes only (a few milliseconds
/// for 20 MiB) or, with `cost`, every instruction too (decoded, not validated: about 10 ms
/// a MiB). `Err` for bytes that are not WebAssembly, with the parser's reason.
pub(crate) fn code_shape(bytes: &[u8], cost: bool) -> Result<CodeShape, String> {
    let mut shape = CodeShape {
        cost: cost.then_some(0),
        ..CodeShape::default()
    };
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| e.to_string())? {
            wasmparser::Payload::CodeSectionStart { count, .. } => {
                shape.functions = shape.functions.saturating_add(u64::from(count));
            }
            wasmparser::Payload::CodeSectionEntry(body) => {
                shape.largest_function = shape.largest_function.max(body.range().len() as u64);
                if let Some(total) = &mut shape.cost {
                    *total = total.saturating_add(compile_cost(&body)?);
                }
            }
            _ => {}
        }
    }
    Ok(shape)
}

/// The estimated work of compiling one function: its instructions, each weighted by how
/// deeply it sits in blocks. Cranelift's time grows faster than linearly with nesting (one
/// function of 2,000 nested `if`s, 10 KB, takes 113 ms where 2 MiB of flat code takes
/// 440 ms; 4 MB of such functions took 21 s), so bytes alone do not bound it.
fn compile_cost(body: &wasmparser::FunctionBody<'_>) -> Result<u64, String> {
    use wasmparser::Operator;
    let mut operators = body.get_operators_reader().map_err(|e| e.to_string())?;
    let (mut depth, mut cost) = (0u64, 0u64);
    while !operators.eof() {
        let operator = operators.read().map_err(|e| e.to_string())?;
        cost = cost.saturating_add(1 + depth / COST_DEPTH_DIVISOR);
        match operator {
            Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::TryTable { .. } => depth += 1,
            Operator::End => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(cost)
}

/// The bounds a component's code must keep to be compiled.
#[derive(Debug, Clone, Copy)]
struct CodeBounds {
    max_functions: u64,
    max_function_bytes: u64,
    max_compile_cost: u64,
}

/// Refuses a component whose code is over the bounds, before any compiling. The cost
/// (which decodes every instruction) is measured only when `compiling`: a component the
/// compile cache holds was measured when it was compiled.
fn check_code(bytes: &[u8], bounds: CodeBounds, compiling: bool) -> Result<(), LoadError> {
    let shape = code_shape(bytes, compiling).map_err(|reason| LoadError::Compile { reason })?;
    let over = |what: String, bound: &'static str, limit: u64, setting: &'static str| {
        Err(LoadError::CodeTooLarge {
            what,
            bound,
            limit,
            setting,
        })
    };
    if shape.functions > bounds.max_functions {
        return over(
            format!("it defines {} functions", shape.functions),
            "the most a component may define",
            bounds.max_functions,
            "max_functions",
        );
    }
    if shape.largest_function > bounds.max_function_bytes {
        return over(
            format!("one of its functions is {} bytes", shape.largest_function),
            "the largest function body",
            bounds.max_function_bytes,
            "max_function_bytes",
        );
    }
    if let Some(cost) = shape.cost.filter(|c| *c > bounds.max_compile_cost) {
        return over(
            format!("compiling it would cost {cost} units (instructions weighted by nesting)"),
            "the most one compile may cost",
            bounds.max_compile_cost,
            "max_compile_cost",
        );
    }
    Ok(())
}

fn new_engine(config: &EngineConfig, pooling: bool) -> Result<wasmtime::Engine, Error> {
    wasmtime::Engine::new(&wasmtime_config(config, pooling))
        .map_err(|e| Error::Engine(e.to_string()))
}

pub(crate) fn wasmtime_config(config: &EngineConfig, pooling: bool) -> wasmtime::Config {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A component of two core modules, the first with `small` functions, the second with
    /// one function of `body` instructions.
    fn component(small: usize, body: usize) -> Vec<u8> {
        let funcs = "(func)".repeat(small);
        let big = "i32.const 1 drop ".repeat(body);
        let wat = format!("(component (core module {funcs}) (core module (func {big})))");
        wat::parse_str(&wat).expect("valid WAT")
    }

    fn engine(max_functions: u64, max_function_bytes: u64, max_compile_cost: u64) -> Engine {
        Engine::new(EngineConfig {
            pooling: false,
            cache_dir: None,
            max_functions,
            max_function_bytes,
            max_compile_cost,
            ..EngineConfig::default()
        })
        .expect("an engine")
    }

    #[test]
    fn the_code_shape_counts_functions_in_every_nested_module() {
        let shape = code_shape(&component(4, 1000), true).expect("parses");
        assert_eq!(shape.functions, 5);
        // 1000 × (i32.const 1: 2 bytes, drop: 1 byte), the end, and the locals count.
        assert!((3000..3010).contains(&shape.largest_function), "{shape:?}");
        // 4 empty functions (an `end` each), then 2,000 instructions and an `end`.
        assert_eq!(shape.cost, Some(4 + 2001));
        assert_eq!(
            code_shape(&component(4, 1000), false).map(|s| s.cost),
            Ok(None)
        );
        assert!(code_shape(b"not wasm", false).is_err());
        // Deeper instructions cost more: 32 nested blocks, opened at depths 0 to 31 (16 at
        // 1, 16 at 2) and closed at 32 to 1 (3, then 16 at 2, then 15 at 1), and the
        // function's own `end` at 1.
        let nested = format!(
            "(component (core module (func {} {})))",
            "block ".repeat(32),
            "end ".repeat(32)
        );
        let shape = code_shape(&wat::parse_str(&nested).expect("valid WAT"), true);
        assert_eq!(shape.map(|s| s.cost), Ok(Some(48 + 50 + 1)));
    }

    #[tokio::test]
    async fn a_component_over_the_code_bounds_is_refused_before_compiling() {
        let bytes = Arc::new(component(4, 1000));
        let fine = engine(5, 4000, 2005).compile(bytes.clone(), "d").await;
        assert!(fine.is_ok(), "{:?}", fine.err());
        for (engine, setting) in [
            (engine(4, 4000, 2005), "max_functions"),
            (engine(5, 2000, 2005), "max_function_bytes"),
            (engine(5, 4000, 2004), "max_compile_cost"),
        ] {
            match engine.compile(bytes.clone(), "d").await {
                Err(LoadError::CodeTooLarge { setting: s, .. }) => assert_eq!(s, setting),
                other => panic!("{setting}: {:?}", other.map(|c| c.elapsed)),
            }
        }
    }
}
