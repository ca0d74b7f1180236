//! Compiles a component in a child process, so that a compile has a clock and a memory
//! bound: a compile cannot be interrupted in the process that runs it, and a child can be
//! killed.
//!
//! The child is any program whose `main` calls [`compile_process_main`] (the `weir` binary
//! does when its first argument is [`COMPILE_PROCESS_ARG`]). It reads the engine's settings
//! and the component's bytes from its stdin and writes the compiled code to its stdout. The
//! parent loads that code with `Component::deserialize`, which refuses code compiled for an
//! engine of another configuration or another wasmtime.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::contract::error::LoadError;
use crate::sandbox::engine::{EngineConfig, wasmtime_config};

/// The first argument that makes the `weir` binary a compiling child
/// ([`compile_process_main`]).
pub const COMPILE_PROCESS_ARG: &str = "__compile-component";

/// Where an engine compiles components ([`EngineConfig::compiler`]).
#[derive(Debug, Clone, Default)]
pub enum Compiler {
    /// On a blocking thread of this process. A compile is then bounded only through its input
    /// (the engine's code bounds, such as [`EngineConfig::max_compile_cost`]): once started,
    /// it runs to its end.
    #[default]
    InProcess,
    /// In a child process, killed when it passes its clock or memory bound.
    Process(CompileProcess),
}

/// How to start a compiling child, and its bounds.
#[derive(Debug, Clone)]
pub struct CompileProcess {
    /// The program: one whose `main` calls [`compile_process_main`] when given `args`.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Longest one compile may take, wall clock, before the child is killed and the
    /// component refused ([`LoadError::CompileTimeout`]).
    pub timeout: Duration,
    /// Most address space the child may map (`RLIMIT_AS`), or `None` for no limit. A compile
    /// that needs more fails, and the component is refused.
    pub memory_bytes: Option<u64>,
}

impl CompileProcess {
    /// The running executable as the compiling child, given [`COMPILE_PROCESS_ARG`]: for a
    /// binary whose `main` hands that argument to [`compile_process_main`], as `weir`'s does.
    /// On Linux it is started as `/proc/self/exe`, the file this process runs even after an
    /// upgrade replaced its path: a newer binary would compile code this engine refuses.
    pub fn current_exe(timeout: Duration, memory_bytes: Option<u64>) -> std::io::Result<Self> {
        let own = std::path::Path::new("/proc/self/exe");
        let program = match own.exists() {
            true => own.to_path_buf(),
            false => std::env::current_exe()?,
        };
        Ok(CompileProcess {
            program,
            args: vec![COMPILE_PROCESS_ARG.into()],
            timeout,
            memory_bytes,
        })
    }
}

/// The most compiled code a child may answer with: far past any component within the code
/// bounds (CPython's compiles to about 40 MiB).
const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// The most of a child's stderr kept for the reason it gives.
const MAX_REASON_BYTES: u64 = 16 << 10;

/// The most settings text a child reads.
const MAX_SETTINGS_BYTES: u64 = 64 << 10;

/// What a child needs to compile for the parent's engine: every setting that shapes the
/// compiled code, and its own memory bound.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChildSettings {
    max_wasm_stack: usize,
    max_memory_bytes: u64,
    memory_bytes: Option<u64>,
}

impl ChildSettings {
    pub(crate) fn new(config: &EngineConfig, memory_bytes: Option<u64>) -> Self {
        ChildSettings {
            max_wasm_stack: config.max_wasm_stack,
            max_memory_bytes: config.max_memory_bytes,
            memory_bytes,
        }
    }

    /// The engine the child compiles with. It allocates no instances, so it does without
    /// the pooling allocator, which shapes no compiled code (a unit test below holds it to
    /// that).
    fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            pooling: false,
            max_wasm_stack: self.max_wasm_stack,
            max_memory_bytes: self.max_memory_bytes,
            cache_dir: None,
            ..EngineConfig::default()
        }
    }
}

/// Compiles `bytes` in the child `process` describes, for an engine set up like `settings`
/// say, and returns the compiled code, for `Component::deserialize`. Blocks: call it from a
/// blocking thread.
pub(crate) fn compile_in_child(
    process: &CompileProcess,
    settings: &ChildSettings,
    bytes: Arc<Vec<u8>>,
) -> Result<Vec<u8>, LoadError> {
    let failed = |reason: String| LoadError::CompilerFailed { reason };
    let header = serde_json::to_vec(settings)
        .map_err(|e| failed(format!("cannot write the compiler's settings: {e}")))?;
    let mut child = Command::new(&process.program)
        .args(&process.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            failed(format!(
                "cannot start the compiler process {}: {e}",
                process.program.display()
            ))
        })?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(failed("the compiler process has no pipes".into()));
    };
    // A child that stops reading (killed, or failed early) ends the writer with a broken pipe.
    let writer = std::thread::spawn(move || {
        let length = (header.len() as u64).to_le_bytes();
        let _ = stdin
            .write_all(&length)
            .and_then(|()| stdin.write_all(&header))
            .and_then(|()| stdin.write_all(&bytes));
    });
    let (answered, answer) = mpsc::channel();
    std::thread::spawn(move || {
        let mut code = Vec::new();
        let read = stdout
            .take(MAX_ARTIFACT_BYTES + 1)
            .read_to_end(&mut code)
            .map(|_| code);
        let _ = answered.send(read);
    });
    let reason = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.take(MAX_REASON_BYTES).read_to_end(&mut text);
        String::from_utf8_lossy(&text).trim().to_string()
    });
    let code = match answer.recv_timeout(process.timeout) {
        Ok(code) => code,
        Err(RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = writer.join();
            return Err(LoadError::CompileTimeout {
                limit_ms: process.timeout.as_millis().try_into().unwrap_or(u64::MAX),
            });
        }
        Err(RecvTimeoutError::Disconnected) => {
            Err(std::io::Error::other("the reader thread ended"))
        }
    };
    // The child closed its stdout: it is ending.
    let status = child.wait();
    let _ = writer.join();
    let reason = reason.join().unwrap_or_default();
    let status =
        status.map_err(|e| failed(format!("cannot wait for the compiler process: {e}")))?;
    match (status.code(), code) {
        (Some(0), Ok(code)) if code.len() as u64 <= MAX_ARTIFACT_BYTES => Ok(code),
        (Some(0), Ok(_)) => Err(failed(format!(
            "the compiler process answered with more than {MAX_ARTIFACT_BYTES} bytes"
        ))),
        (Some(0), Err(e)) => Err(failed(format!(
            "cannot read the compiler process's answer: {e}"
        ))),
        (Some(CHILD_REFUSED), _) => Err(LoadError::Compile { reason }),
        _ => Err(failed(format!(
            "the compiler process ended without an answer ({status}){}{reason}; if it ran \
             out of memory, the host's compile memory bound may be too low for this component",
            if reason.is_empty() { "" } else { ": " },
        ))),
    }
}

/// How many digests of components whose compile ran past the clock an engine remembers.
const TIMED_OUT_KEPT: usize = 1024;

/// Compiles of one digest take turns, and a digest whose compile ran past the clock is
/// refused at once the next time: the same hostile component sent again, or uploaded while
/// the folder's watcher loads it too, costs one compile, not one each.
#[derive(Debug, Default)]
pub(crate) struct CompileTurns {
    /// The digests being compiled, each with the lock their compiles take turns on.
    running: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Digests whose compile ran past the clock, with the clock's bound in ms; oldest
    /// first, at most [`TIMED_OUT_KEPT`].
    timed_out: std::sync::Mutex<VecDeque<(String, u64)>>,
}

impl CompileTurns {
    /// Runs `compile` for `digest` once no other compile of it runs, unless a compile of it
    /// already ran past the clock.
    pub(crate) async fn take<T>(
        &self,
        digest: &str,
        compile: impl Future<Output = Result<T, LoadError>>,
    ) -> Result<T, LoadError> {
        let turn = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            running.entry(digest.to_string()).or_default().clone()
        };
        let outcome = {
            let _turn = turn.lock().await;
            match self.timed_out(digest) {
                Some(limit_ms) => Err(LoadError::CompileTimeout { limit_ms }),
                None => compile.await,
            }
        };
        if let Err(LoadError::CompileTimeout { limit_ms }) = &outcome {
            let mut timed_out = self.timed_out.lock().unwrap_or_else(|e| e.into_inner());
            if !timed_out.iter().any(|(d, _)| d == digest) {
                if timed_out.len() >= TIMED_OUT_KEPT {
                    timed_out.pop_front();
                }
                timed_out.push_back((digest.to_string(), *limit_ms));
            }
        }
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        // Clones are made under this lock only: two means the map's and this one.
        if Arc::strong_count(&turn) == 2 {
            running.remove(digest);
        }
        outcome
    }

    fn timed_out(&self, digest: &str) -> Option<u64> {
        let timed_out = self.timed_out.lock().unwrap_or_else(|e| e.into_inner());
        timed_out
            .iter()
            .find_map(|(d, limit)| (d == digest).then_some(*limit))
    }
}

/// The exit code of a child that read its input and found the component does not compile:
/// its stderr then holds the compiler's reason.
const CHILD_REFUSED: i32 = 1;

/// The exit code of a child that could not read its input or start its engine.
const CHILD_BROKEN: u8 = 2;

/// The compiling child's `main`: reads the engine's settings and a component from stdin,
/// writes its compiled code to stdout. Exits 0 when it did, 1 with the compiler's reason on
/// stderr when the component does not compile, 2 when the input is not what the parent
/// sends. A program that may serve as a [`CompileProcess`] calls it when given the
/// arguments the parent starts it with (for the `weir` binary, [`COMPILE_PROCESS_ARG`]).
pub fn compile_process_main() -> ExitCode {
    match compile_from_stdin() {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, reason)) => {
            eprintln!("{reason}");
            ExitCode::from(code)
        }
    }
}

fn compile_from_stdin() -> Result<(), (u8, String)> {
    let broken = |what: &str, e: &dyn std::fmt::Display| (CHILD_BROKEN, format!("{what}: {e}"));
    let mut input = std::io::stdin().lock();
    let mut length = [0u8; 8];
    input
        .read_exact(&mut length)
        .map_err(|e| broken("cannot read the settings' length", &e))?;
    let length = u64::from_le_bytes(length);
    if length > MAX_SETTINGS_BYTES {
        return Err((CHILD_BROKEN, format!("settings of {length} bytes")));
    }
    let mut header = vec![0u8; length as usize];
    input
        .read_exact(&mut header)
        .map_err(|e| broken("cannot read the settings", &e))?;
    let settings: ChildSettings =
        serde_json::from_slice(&header).map_err(|e| broken("unreadable settings", &e))?;
    if let Some(limit) = settings.memory_bytes {
        use rustix::process::{Resource, Rlimit, setrlimit};
        let limit = Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        };
        setrlimit(Resource::As, limit).map_err(|e| broken("cannot bound its memory", &e))?;
    }
    let mut bytes = Vec::new();
    input
        .read_to_end(&mut bytes)
        .map_err(|e| broken("cannot read the component", &e))?;
    let engine = wasmtime::Engine::new(&wasmtime_config(&settings.engine_config(), false))
        .map_err(|e| broken("cannot start the engine", &e))?;
    let code = engine
        .precompile_component(&bytes)
        .map_err(|e| (CHILD_REFUSED as u8, format!("{e:#}")))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&code)
        .and_then(|()| out.flush())
        .map_err(|e| broken("cannot write the compiled code", &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use wasmtime::component::Component;

    const WAT: &str = "(component (core module (func (export \"f\") (result i32) i32.const 7)))";

    fn process(program: &str, args: &[&str], timeout: Duration) -> CompileProcess {
        CompileProcess {
            program: program.into(),
            args: args.iter().map(OsString::from).collect(),
            timeout,
            memory_bytes: None,
        }
    }

    fn settings() -> ChildSettings {
        ChildSettings::new(&EngineConfig::default(), None)
    }

    fn bytes() -> Arc<Vec<u8>> {
        Arc::new(wat::parse_str(WAT).expect("valid WAT"))
    }

    #[test]
    fn code_compiled_without_the_pool_loads_into_the_pooling_engine() {
        // The child compiles without the pooling allocator; the parent's engine has it.
        let config = EngineConfig {
            max_instances: 4,
            max_warm_instances: 0,
            cache_dir: None,
            ..EngineConfig::default()
        };
        let pooled = wasmtime::Engine::new(&wasmtime_config(&config, true)).expect("an engine");
        let child = settings().engine_config();
        let child = wasmtime::Engine::new(&wasmtime_config(&child, false)).expect("an engine");
        let code = child.precompile_component(&bytes()).expect("compiles");
        // SAFETY: the code was compiled just above by wasmtime, in this process.
        let loaded = unsafe { Component::deserialize(&pooled, &code) };
        assert!(loaded.is_ok(), "{:?}", loaded.err());
        // Loading checks that the code was compiled for a like engine: one that shapes code
        // otherwise (here, without fuel) refuses it.
        let mut unlike = wasmtime_config(&settings().engine_config(), false);
        unlike.consume_fuel(false);
        let unlike = wasmtime::Engine::new(&unlike).expect("an engine");
        // SAFETY: as above.
        assert!(unsafe { Component::deserialize(&unlike, &code) }.is_err());
    }

    #[test]
    fn a_child_past_its_clock_is_killed_and_the_component_refused() {
        let started = Instant::now();
        let answer = compile_in_child(
            &process("sleep", &["30"], Duration::from_millis(200)),
            &settings(),
            bytes(),
        );
        assert!(
            matches!(answer, Err(LoadError::CompileTimeout { limit_ms: 200 })),
            "{answer:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_child_that_fails_or_answers_nothing_refuses_the_component_with_its_reason() {
        let answer = compile_in_child(
            &process(
                "sh",
                &["-c", "cat > /dev/null; echo out of luck >&2; exit 1"],
                Duration::from_secs(10),
            ),
            &settings(),
            bytes(),
        );
        match answer {
            Err(LoadError::Compile { reason }) => assert_eq!(reason, "out of luck"),
            other => panic!("{other:?}"),
        }
        let answer = compile_in_child(
            &process("sh", &["-c", "kill -9 $$"], Duration::from_secs(10)),
            &settings(),
            bytes(),
        );
        match answer {
            Err(LoadError::CompilerFailed { reason }) => {
                assert!(reason.contains("without an answer"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let missing = compile_in_child(
            &process("/nonexistent/weir", &[], Duration::from_secs(10)),
            &settings(),
            bytes(),
        );
        assert!(
            matches!(&missing, Err(LoadError::CompilerFailed { reason }) if reason.contains("cannot start")),
            "{missing:?}"
        );
    }

    #[tokio::test]
    async fn a_digest_whose_compile_timed_out_is_refused_without_compiling_again() {
        let turns = CompileTurns::default();
        let first: Result<(), _> = turns
            .take("d", async {
                Err(LoadError::CompileTimeout { limit_ms: 5 })
            })
            .await;
        assert!(matches!(
            first,
            Err(LoadError::CompileTimeout { limit_ms: 5 })
        ));
        let compiled = std::sync::atomic::AtomicBool::new(false);
        let again = turns
            .take("d", async {
                compiled.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            })
            .await;
        assert!(matches!(
            again,
            Err(LoadError::CompileTimeout { limit_ms: 5 })
        ));
        assert!(!compiled.load(std::sync::atomic::Ordering::SeqCst));
        // Another digest compiles; nothing is left running.
        assert!(turns.take("e", async { Ok(()) }).await.is_ok());
        assert!(turns.running.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn compiles_of_one_digest_take_turns_and_others_do_not_wait() {
        let turns = Arc::new(CompileTurns::default());
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (started, first_running) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let turns = turns.clone();
            async move {
                turns
                    .take("d", async move {
                        let _ = started.send(());
                        let _ = released.await;
                        Ok(1)
                    })
                    .await
            }
        });
        first_running.await.expect("the first compile starts");
        // Another digest is not held up by the first.
        assert_eq!(turns.take("e", async { Ok(2) }).await.ok(), Some(2));
        // The same digest waits for its turn.
        let second = tokio::spawn({
            let turns = turns.clone();
            async move { turns.take("d", async { Ok(3) }).await }
        });
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        let _ = release.send(());
        assert_eq!(first.await.expect("joins").ok(), Some(1));
        assert_eq!(second.await.expect("joins").ok(), Some(3));
        assert!(turns.running.lock().unwrap().is_empty());
    }
}
