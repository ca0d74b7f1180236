//! Raw wasmtime, for the benchmarks' baselines: a processor component instantiated and
//! called by hand, with WASI and no-op weir imports, on whatever engine the caller gives.
//! Shared by the `execute` and `languages` benchmarks.

use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        world: "processor",
        path: "../wit",
        imports: { "weir:processor/invoke.call": async },
        exports: { default: async },
    });
}

use bindings::weir::processor as wit;
use bindings::{Processor, ProcessorPre};
pub use wit::types::ExecutionContext;
use wit::types::ProcessorError;

/// The context the baselines pass: an execution of `processor` for tenant `default`, first
/// attempt, no deadline. Its id is as long as the UUIDv7 weir gives an execution: the guest
/// copies it into its own memory, and for the C guest 31 bytes fewer spared a 64 KiB page of
/// memory growth per call, which made the baseline cheaper than anything weir could run.
pub fn context(processor: &str) -> ExecutionContext {
    ExecutionContext {
        execution_id: "01a21092-7b25-764e-aa63-4773a78ecc0b".into(),
        tenant: "default".into(),
        session_id: None,
        processor: processor.into(),
        attempt: 1,
        call_depth: 0,
        deadline_unix_ms: u64::MAX,
    }
}

/// `state` as the guest receives it from weir: stamped with a new state's `metadata`.
pub fn stamped(state: &serde_json::Value) -> String {
    let mut state = state.clone();
    state["metadata"] = serde_json::json!({"version": 0, "sessionId": null,
        "createdAt": "2026-01-01T00:00:00Z", "lastUpdated": "2026-01-01T00:00:00Z"});
    state.to_string()
}

/// The baseline's store data: a WASI context and no-op weir imports.
pub struct Raw {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Raw {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn unavailable() -> ProcessorError {
    ProcessorError {
        kind: wit::types::ErrorKind::Configuration,
        code: None,
        message: "not available in the benchmark".into(),
        retryable: false,
        details: None,
    }
}

impl wit::types::Host for Raw {}
impl wit::logging::Host for Raw {
    fn log(&mut self, _: wit::logging::Level, _: String, _: Option<String>) {}
}
impl wit::events::Host for Raw {
    fn emit(&mut self, _: String, _: String) -> Result<(), ProcessorError> {
        Ok(())
    }
    fn progress(&mut self, _: u8, _: String) -> Result<(), ProcessorError> {
        Ok(())
    }
}
impl wit::invoke::Host for Raw {
    async fn call(&mut self, _: String, _: String) -> Result<String, ProcessorError> {
        Err(unavailable())
    }
}
impl wit::cancellation::Host for Raw {
    fn cancelled(&mut self) -> bool {
        false
    }
}
impl wit::config::Host for Raw {
    fn get(&mut self, _: String) -> Option<String> {
        None
    }
    fn get_all(&mut self) -> Vec<(String, String)> {
        Vec::new()
    }
}
impl wit::session_store::Host for Raw {
    fn get(&mut self, _: String) -> Result<Option<Vec<u8>>, ProcessorError> {
        Err(unavailable())
    }
    fn set(&mut self, _: String, _: Vec<u8>) -> Result<(), ProcessorError> {
        Err(unavailable())
    }
    fn delete(&mut self, _: String) -> Result<(), ProcessorError> {
        Err(unavailable())
    }
    fn list_keys(&mut self) -> Result<Vec<String>, ProcessorError> {
        Err(unavailable())
    }
}

/// wasmtime by hand: InstancePre once, then a fresh store and instance per call.
pub struct Baseline {
    engine: Engine,
    pre: ProcessorPre<Raw>,
    limited: bool,
}

impl Baseline {
    pub fn new(engine: Engine, wasm: &[u8], limited: bool) -> Baseline {
        let component = Component::new(&engine, wasm).expect("the component compiles");
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("WASI links");
        Processor::add_to_linker::<Raw, HasSelf<Raw>>(&mut linker, |s| s).expect("imports link");
        let pre = ProcessorPre::new(linker.instantiate_pre(&component).expect("instantiable"))
            .expect("a processor");
        Baseline {
            engine,
            pre,
            limited,
        }
    }

    fn store(&self) -> Store<Raw> {
        let mut store = Store::new(
            &self.engine,
            Raw {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        );
        if self.limited {
            // weir's engine consumes fuel and checks epochs: a store must be armed for both.
            store.set_fuel(u64::MAX / 2).expect("fuel is enabled");
            store.set_epoch_deadline(1_000_000);
        }
        store
    }

    /// A new store with a new instance in it.
    async fn instance(&self) -> (Store<Raw>, Processor) {
        let mut store = self.store();
        let processor = self
            .pre
            .instantiate_async(&mut store)
            .await
            .expect("instantiates");
        (store, processor)
    }

    pub async fn call(&self, input: &String, ctx: &ExecutionContext) -> String {
        let (mut store, processor) = self.instance().await;
        process(&processor, &mut store, input, ctx).await
    }

    /// One fresh instance timed in phases: instantiation (with whatever start-up the
    /// component runs in it), its first `process` call, and a second call on the same
    /// instance. The first call's excess over the second is what the guest sets up for
    /// itself on its first call. Dropping the store is not timed.
    async fn phases(&self, input: &String, ctx: &ExecutionContext) -> [Duration; 3] {
        let started = Instant::now();
        let (mut store, processor) = self.instance().await;
        let instantiated = Instant::now();
        drop(process(&processor, &mut store, input, ctx).await);
        let first = Instant::now();
        drop(process(&processor, &mut store, input, ctx).await);
        let second = Instant::now();
        [instantiated - started, first - instantiated, second - first]
    }

    /// [`Baseline::phases`] of `warmup + samples` fresh instances, one after another: each
    /// phase's times, the warm-up's left out.
    pub async fn phase_samples(
        &self,
        input: &String,
        ctx: &ExecutionContext,
        warmup: usize,
        samples: usize,
    ) -> [Vec<Duration>; 3] {
        let mut phases = <[Vec<Duration>; 3]>::default();
        for i in 0..warmup + samples {
            let times = self.phases(input, ctx).await;
            if i >= warmup {
                for (all, t) in phases.iter_mut().zip(times) {
                    all.push(t);
                }
            }
        }
        phases
    }
}

/// Calls `process` on an instance; the benchmarks' inputs always succeed.
async fn process(
    processor: &Processor,
    store: &mut Store<Raw>,
    input: &String,
    ctx: &ExecutionContext,
) -> String {
    processor
        .weir_processor_handler()
        .call_process(store, input, ctx)
        .await
        .expect("no trap")
        .expect("the processor succeeds")
}

/// wasmtime by hand: one instance, instantiated once, called again and again.
pub struct Reused {
    store: Store<Raw>,
    processor: Processor,
}

impl Reused {
    pub async fn new(engine: &Engine, wasm: &[u8]) -> Reused {
        let (store, processor) = Baseline::new(engine.clone(), wasm, true).instance().await;
        Reused { store, processor }
    }

    pub async fn call(&mut self, input: &String, ctx: &ExecutionContext) -> String {
        process(&self.processor, &mut self.store, input, ctx).await
    }
}
