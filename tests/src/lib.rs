//! Helpers shared by weir's end-to-end tests and benchmarks: where the compiled plugins are
//! (built from `plugins/` by this crate's build script), scratch plugin folders, runtimes
//! sized for tests, and the `weir` binary for command-line tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The folder holding every built example and hostile plugin.
pub fn plugins_dir() -> &'static Path {
    Path::new(env!("WEIR_TEST_PLUGINS"))
}

/// The folder holding components that are deliberately not processors.
pub fn fixtures_dir() -> &'static Path {
    Path::new(env!("WEIR_TEST_FIXTURES"))
}

/// A compile cache shared by every test run (safe for concurrent use).
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("WEIR_TEST_CACHE"))
}

/// The built component of plugin `name`.
pub fn plugin_path(name: &str) -> PathBuf {
    plugins_dir().join(format!("{name}.wasm"))
}

/// The bytes of plugin `name`.
pub fn plugin_bytes(name: &str) -> Vec<u8> {
    std::fs::read(plugin_path(name)).unwrap_or_else(|e| panic!("plugin {name} was not built: {e}"))
}

/// A scratch plugins folder, removed when dropped.
pub struct PluginFolder {
    dir: tempfile::TempDir,
}

impl PluginFolder {
    /// An empty folder.
    pub fn new() -> Self {
        PluginFolder {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    /// A folder holding copies of the named plugins.
    pub fn with(names: &[&str]) -> Self {
        let folder = PluginFolder::new();
        for name in names {
            folder.add(name);
        }
        folder
    }

    /// The folder's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies plugin `name` in as `name.wasm`.
    pub fn add(&self, name: &str) -> &Self {
        self.write(&format!("{name}.wasm"), &plugin_bytes(name))
    }

    /// Writes `bytes` as `file`.
    pub fn write(&self, file: &str, bytes: &[u8]) -> &Self {
        std::fs::write(self.dir.path().join(file), bytes).expect("writable temp dir");
        self
    }

    /// Writes the operator manifest of plugin `name`.
    pub fn manifest(&self, name: &str, toml: &str) -> &Self {
        self.write(&format!("{name}.toml"), toml.as_bytes())
    }
}

impl Default for PluginFolder {
    fn default() -> Self {
        Self::new()
    }
}

/// An engine configuration for tests: a small pool (many engines live at once in a test
/// run) and the shared compile cache.
pub fn engine_config() -> weir::EngineConfig {
    weir::EngineConfig {
        max_instances: 64,
        max_warm_instances: 8,
        cache_dir: Some(cache_dir()),
        ..Default::default()
    }
}

/// The engine configuration of a benchmark's weir runtimes: the default, with
/// [`weir::EngineConfig::reset_written_pages_only`] on if `WEIR_BENCH_RESET_WRITTEN` is set,
/// and a pool of `WEIR_BENCH_POOL` sandboxes (and as many warm ones) if that is set. A small
/// pool lets the bench run under valgrind, whose address space cannot hold the default
/// pool's reservation.
pub fn bench_engine_config() -> weir::EngineConfig {
    let mut config = weir::EngineConfig {
        reset_written_pages_only: std::env::var_os("WEIR_BENCH_RESET_WRITTEN").is_some(),
        ..Default::default()
    };
    if let Some(pool) = std::env::var("WEIR_BENCH_POOL")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        config.max_instances = pool.max(1);
        config.max_warm_instances = pool.max(1);
    }
    config
}

/// Sample indexes `0..total` in the blocks a benchmark's cases take turns in:
/// `WEIR_BENCH_BLOCK` samples each (default 32; 1 takes turns sample by sample). Each case
/// is then measured in its own steady state, as a host running it back to back would,
/// while a burst of load still hits every case alike.
pub fn bench_blocks(total: usize) -> Vec<std::ops::Range<usize>> {
    let size = std::env::var("WEIR_BENCH_BLOCK")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(32)
        .max(1);
    (0..total)
        .step_by(size)
        .map(|start| start..(start + size).min(total))
        .collect()
}

/// Runs one block of a benchmark case: `call` once per sample index in `block`, each
/// timed, passing to `record` the times of the samples from index `warmup` on (the earlier
/// ones warm up). What `call` returns is dropped after its time is taken.
pub async fn time_block<T>(
    block: std::ops::Range<usize>,
    warmup: usize,
    mut call: impl AsyncFnMut() -> T,
    mut record: impl FnMut(std::time::Duration),
) {
    for i in block {
        let started = std::time::Instant::now();
        let out = call().await;
        let elapsed = started.elapsed();
        drop(out);
        if i >= warmup {
            record(elapsed);
        }
    }
}

/// A runtime builder over `dir` with the test engine configuration.
pub fn builder(dir: &Path) -> weir::RuntimeBuilder {
    weir::Runtime::builder()
        .plugins_dir(dir)
        .engine_config(engine_config())
}

/// A started runtime over `dir`, configured for tests.
pub async fn runtime(dir: &Path) -> weir::Runtime {
    let runtime = builder(dir).build().await.expect("the runtime builds");
    runtime.start();
    runtime
}

/// The first event that satisfies `wanted`, or a panic after a generous timeout. Tests
/// wait on events like this instead of sleeping.
pub async fn next_event(
    events: &mut weir::Subscription,
    wanted: impl Fn(&weir::Event) -> bool,
) -> std::sync::Arc<weir::Event> {
    let wait = async {
        loop {
            match events.recv().await {
                Some(weir::Notice::Event(event)) if wanted(&event) => return event,
                Some(_) => {}
                None => panic!("the event stream closed"),
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), wait)
        .await
        .expect("the awaited event came within 30 s")
}

/// The bytes of fixture component `name` (`plugins/fixtures`, e.g. `counter-one`).
pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(format!("{name}.wasm"))).expect("fixtures are built")
}

/// Workflows of every kind that run `increment` at two places, each with an input and the
/// places (`Event::step`) its direct steps' events must name, sorted: what tells steps of one
/// processor apart.
fn workflows_with_one_processor_twice()
-> Vec<(weir::Workflow, serde_json::Value, Vec<&'static str>)> {
    use serde_json::json;
    let node = |name: &str, after: &[&str]| weir::GraphNode {
        name: name.to_string(),
        run: "increment".to_string(),
        after: after.iter().map(|a| a.to_string()).collect(),
        condition: None,
        on_failure: Default::default(),
    };
    let route = || {
        weir::Workflow::route_by_pointer("twice-route", "/kind")
            .route("a", "increment")
            .fallback("increment")
    };
    vec![
        (
            weir::Workflow::chain("twice-chain", ["increment", "increment"]),
            json!({"count": 1}),
            vec!["step:0", "step:1"],
        ),
        (
            weir::Workflow::parallel("twice-parallel", ["increment", "increment"]),
            json!({"count": 1}),
            vec!["branch:0", "branch:1"],
        ),
        (
            weir::Workflow::graph("twice-graph")
                .add_node(node("first", &[]))
                .add_node(node("second", &["first"])),
            json!({"count": 1}),
            vec!["node:first", "node:second"],
        ),
        (
            weir::Workflow::batch("twice-batch", "increment"),
            json!({"items": [{"count": 1}, {"count": 2}]}),
            vec!["item:0", "item:1"],
        ),
        (route(), json!({"kind": "a", "count": 1}), vec!["route:a"]),
        (route(), json!({"kind": "b", "count": 1}), vec!["fallback"]),
        // A workflow's step that is a workflow says where it runs too.
        (
            weir::Workflow::chain("twice-nested", ["twice-chain", "increment"]),
            json!({"count": 1}),
            vec!["step:0", "step:1"],
        ),
    ]
}

/// The places the first `count` steps started directly by run `run` of workflow `name`
/// say, sorted, as they arrive on `events` (within 30 s each). The run's own start and end
/// must arrive too, as a top-level execution's (no parent, no place).
async fn places_of_steps(
    events: &mut weir::Subscription,
    name: &str,
    run: &str,
    count: usize,
) -> Vec<String> {
    use weir::EventKind::{ProcessorCompleted, ProcessorStarted};
    let mut places = Vec::new();
    let (mut started, mut completed) = (false, false);
    while places.len() < count || !started || !completed {
        let event = next_event(events, |e| {
            let own = e.execution_id.as_deref() == Some(run);
            let step = e.parent_id.as_deref() == Some(run);
            (own && matches!(e.event, ProcessorStarted | ProcessorCompleted))
                || (step && e.event == ProcessorStarted)
        })
        .await;
        if event.execution_id.as_deref() != Some(run) {
            places.push(event.step.clone().unwrap_or_else(|| "(none)".to_string()));
            continue;
        }
        assert_eq!(event.processor.as_deref(), Some(name), "{event:?}");
        assert_eq!((&event.parent_id, &event.step), (&None, &None), "{event:?}");
        match event.event {
            ProcessorStarted => started = true,
            _ => completed = true,
        }
    }
    places.sort();
    places
}

/// Runs workflows of every kind that run `increment` at two places on `runtime` (which must
/// serve `increment`), and checks that each step's events name its place in the workflow.
pub async fn assert_steps_name_their_places(runtime: &weir::Runtime) {
    let mut events = runtime.subscribe();
    for (workflow, input, expected) in workflows_with_one_processor_twice() {
        let name = workflow.name().to_string();
        // A route is registered twice (once per input): the second replaces the first.
        runtime.register(workflow).expect("the workflow is valid");
        let result = runtime.run(&name, input).await.expect("the workflow runs");
        assert!(result.ok, "{name}: {:?}", result.error);
        let places =
            places_of_steps(&mut events, &name, &result.execution.id, expected.len()).await;
        assert_eq!(places, expected, "{name}");
    }
}

/// The plugins [`FAILURE_POLICY_WORKFLOWS`] run.
pub const FAILURE_POLICY_PLUGINS: [&str; 4] = ["increment", "double", "panic", "cooperative"];

/// Workflows under each `on_failure` policy, as `workflows.toml` declares them, for
/// [`assert_failure_policies`]. `panic` always fails; `cooperative` runs until cancelled.
pub const FAILURE_POLICY_WORKFLOWS: &str = r#"
[workflow.fan-fails]
parallel = ["increment", "panic"]

[workflow.fan-ignores]
parallel = ["increment", "panic"]
on_failure = { panic = "ignore" }

[workflow.fan-continues]
parallel = ["cooperative", "panic"]
on_failure = { panic = "continue" }

[workflow.graph-ignores]
graph = { a = { run = "increment" }, b = { after = ["a"], run = "panic", on_failure = "ignore" }, c = { after = ["b"], run = "double" } }

[workflow.graph-continues]
graph = { a = { run = "increment" }, b = { after = ["a"], run = "panic", on_failure = "continue" }, c = { after = ["b"], run = "double" }, d = { run = "cooperative" } }
"#;

/// Runs each workflow of [`FAILURE_POLICY_WORKFLOWS`] on `runtime` (over a folder holding
/// them and [`FAILURE_POLICY_PLUGINS`]) and checks what each policy makes of a failure:
/// `fail` fails the workflow, `ignore` goes on past it, `continue` ends the fan-out at once
/// (cancelling what runs), and the result lists what it went on past.
pub async fn assert_failure_policies(runtime: &weir::Runtime) {
    use serde_json::json;
    let run = |name: &'static str| async move {
        runtime
            .run(name, json!({"count": 1}))
            .await
            .expect("the workflow runs")
    };
    let set_aside = |result: &weir::ExecutionResult| -> Vec<(String, String, weir::ErrorKind)> {
        result
            .failures
            .iter()
            .map(|f| (f.place.clone(), f.name.clone(), f.error.kind))
            .collect()
    };
    use weir::ErrorKind::{Cancelled, Execution};

    let fails = run("fan-fails").await;
    assert!(!fails.ok, "fail (the default) fails the parallel");
    let error = fails.error.as_ref().expect("an error");
    assert!(
        error.message.contains("branch 2 (`panic`)"),
        "{}",
        error.message
    );
    assert!(fails.failures.is_empty());

    let ignores = run("fan-ignores").await;
    assert!(ignores.ok, "{:?}", ignores.error);
    assert_eq!(
        ignores.state["count"], 2,
        "the other branch's work is merged"
    );
    assert_eq!(
        set_aside(&ignores),
        [("branch:1".into(), "panic".into(), Execution)]
    );
    let message = &ignores.failures[0].error.message;
    assert!(message.contains("processor exploded"), "{message}");

    let continues = run("fan-continues").await;
    assert!(continues.ok, "{:?}", continues.error);
    assert_eq!(
        set_aside(&continues),
        [
            ("branch:0".into(), "cooperative".into(), Cancelled),
            ("branch:1".into(), "panic".into(), Execution)
        ],
        "the running branch is cut short"
    );

    let graph = run("graph-ignores").await;
    assert!(graph.ok, "{:?}", graph.error);
    assert_eq!(
        graph.state["count"], 4,
        "double ran on what reached the failed node"
    );
    assert_eq!(
        set_aside(&graph),
        [("node:b".into(), "panic".into(), Execution)]
    );

    let graph = run("graph-continues").await;
    assert!(graph.ok, "{:?}", graph.error);
    assert_eq!(graph.state["count"], 2, "the node after it is skipped");
    assert_eq!(
        set_aside(&graph),
        [
            ("node:b".into(), "panic".into(), Execution),
            ("node:d".into(), "cooperative".into(), Cancelled)
        ]
    );
}

/// The plugins [`SAGA_WORKFLOWS`] runs.
pub const SAGA_PLUGINS: [&str; 5] = ["increment", "double", "panic", "tally", "stamp"];

/// A saga as `workflows.toml` declares it, for [`assert_saga`]: its third step fails, and
/// both steps before it are undone by `tally`, which counts its runs in the session.
pub const SAGA_WORKFLOWS: &str = r#"
[workflow.saga]
chain = ["increment", "double", "panic"]
compensate = { increment = "tally", double = "tally" }
on_failure = "stamp"
"#;

/// Runs [`SAGA_WORKFLOWS`]' saga on `runtime` (over a folder holding it and
/// [`SAGA_PLUGINS`]) and checks that its failure undoes the two steps before it, last
/// first, each on the state it produced, then runs its failure handler.
pub async fn assert_saga(runtime: &weir::Runtime) {
    use serde_json::json;
    let result = runtime
        .execute_in_session("saga-1", "saga", json!({"count": 1}))
        .await
        .expect("the saga runs");
    assert!(!result.ok, "its third step fails");
    let error = result.error.as_ref().expect("the original failure");
    assert!(
        error.message.starts_with("step 3 (`panic`)"),
        "{}",
        error.message
    );
    assert_eq!(error.kind, weir::ErrorKind::Execution, "{error:?}");
    let details = error.details.as_ref().expect("details");
    let undone = details["compensations"].as_array().expect("compensations");
    let order: Vec<(u64, u64, u64)> = undone
        .iter()
        .map(|c| {
            assert_eq!(c["ok"], true, "{c}");
            let n = |v: &serde_json::Value| v.as_u64().unwrap_or(u64::MAX);
            (
                n(&c["step"]),
                n(&c["state"]["count"]),
                n(&c["state"]["tally"]),
            )
        })
        .collect();
    // double's (count 4) first, as the first tally of the session; then increment's.
    assert_eq!(order, [(1, 4, 1), (0, 2, 2)], "{undone:?}");
    let handler = &details["onFailure"];
    assert_eq!(handler["ok"], true, "{handler}");
    assert_eq!(handler["name"], "stamp");
    assert_eq!(result.state["count"], 4, "the last good state");
}

/// Runs processor `name` once on `input`, on a runtime over a folder holding only it.
pub async fn run_alone(name: &str, input: serde_json::Value) -> weir::ExecutionResult {
    let folder = PluginFolder::with(&[name]);
    runtime(folder.path())
        .await
        .run(name, input)
        .await
        .expect("the runtime accepts the request")
}

/// This process's resident set size in bytes (Linux; 0 where `/proc` is missing).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Resident memory of process `pid`, in bytes (Linux `/proc`); `None` once it is gone or
/// where `/proc` is missing.
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// A runtime over every built plugin.
pub async fn runtime_with_all_plugins() -> weir::Runtime {
    runtime(plugins_dir()).await
}

/// The fleet key of the tests' distributed runtimes and `weir` processes (a test's key,
/// not a secret).
pub const FLEET_KEY: &str = "533464e9fcee3d9d35731a0c5a4c4f3b10f8a7557431e39909b3344eb3f5eb40";

/// How the tests' fleet trusts what it reads from Redis: signed with [`FLEET_KEY`].
pub fn fleet() -> weir::Trust {
    weir::Trust::key(weir::FleetKey::from_text(FLEET_KEY).expect("the test key is valid"))
}

/// The `weir` binary, built from the current sources on first use.
///
/// Built as `cargo test --workspace` builds it (for the integration tests in `cli/tests`),
/// so with the same features as the running tests: after that build this one is a no-op,
/// where a plain `cargo build -p weir-cli` would compile wasmtime and most of the
/// dependencies a second time with other features (about 7 minutes on a fresh 2-core
/// machine).
pub fn weir_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        build_weir(&[
            "test",
            "--locked",
            "--workspace",
            "--no-run",
            "--test",
            "binary",
        ])
    })
}

/// The `weir` binary built with optimisations (for benchmarks), on first use.
pub fn weir_release_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        build_weir(&[
            "build",
            "--locked",
            "-p",
            "weir-cli",
            "--bin",
            "weir",
            "--release",
        ])
    })
}

/// Runs `cargo ARGS` at the repository's root and returns the `weir` executable it built.
fn build_weir(args: &[&str]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository");
    let mut cargo = Command::new(env!("CARGO"));
    // Not this test's package variables: with them, ring's build script (which declares
    // `rerun-if-env-changed=CARGO_PKG_NAME`) would see another value than in the outer
    // build, and the two builds would rebuild ring, rustls and redis on every run.
    for (name, _) in std::env::vars_os() {
        if xtask::set_for_the_running_package(&name) {
            cargo.env_remove(&name);
        }
    }
    let output = cargo
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo runs");
    assert!(output.status.success(), "building the weir binary failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact"
                && m["target"]["name"] == "weir"
                && m["target"]["kind"] == serde_json::json!(["bin"])
                && m["profile"]["test"] == false
        })
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
        .expect("cargo reported the weir executable")
}

/// A private `redis-server` on a free loopback port, stopped (and its data removed) when
/// dropped. Needs `redis-server` on the PATH (Debian: `apt-get install redis-server`; CI
/// installs it).
pub struct RedisServer {
    child: Option<std::process::Child>,
    port: u16,
    persistent: bool,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server without persistence and waits until it accepts connections.
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// Starts a server that keeps an append-only file (fsync on every write), as
    /// production would run it, so that it can be restarted without losing data.
    pub fn start_persistent() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> RedisServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // Ask the OS for a free port, then hand it to Redis.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut server = RedisServer {
            child: None,
            port,
            persistent,
            dir,
        };
        server.start_again();
        server
    }

    /// Starts the server again (same port, same data directory) after [`RedisServer::stop`].
    pub fn start_again(&mut self) {
        use std::io::BufRead;
        let persistence: &[&str] = if self.persistent {
            &[
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ]
        } else {
            &["--save", "", "--appendonly", "no"]
        };
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(persistence)
            .args(["--logfile", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (install it: apt-get install redis-server)");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (ready, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("Ready to accept connections") {
                    let _ = ready.send(());
                }
            }
        });
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("redis-server became ready");
        self.child = Some(child);
    }

    /// Shuts the server down cleanly (SIGTERM: it flushes its append-only file) and waits
    /// for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let _ = child.wait();
        }
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl RedisServer {
    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Lines of a child's output stream, read on a thread, so a test can wait for one with a
/// timeout.
pub fn lines_of(stream: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stream)
            .lines()
            .map_while(Result::ok)
        {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// A long-running `weir` process (`weir worker`, `weir serve`), killed when dropped. Its
/// log lines (stderr) are collected so that tests can wait for what it says.
pub struct WeirProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

/// A `weir worker` process serving the distributed runtime.
pub type WorkerProcess = WeirProcess;

impl WeirProcess {
    /// Starts `weir worker --redis URL --plugins DIR` with `extra` arguments and waits until
    /// it serves its queues.
    pub fn start(redis_url: &str, plugins: &Path, extra: &[&str]) -> WorkerProcess {
        Self::start_binary(weir_bin(), redis_url, plugins, extra)
    }

    /// [`WorkerProcess::start`] with the given `weir` binary.
    pub fn start_binary(
        binary: &Path,
        redis_url: &str,
        plugins: &Path,
        extra: &[&str],
    ) -> WorkerProcess {
        let mut args: Vec<&std::ffi::OsStr> = vec!["worker".as_ref(), "--redis".as_ref()];
        args.push(redis_url.as_ref());
        args.push("--plugins".as_ref());
        args.push(plugins.as_os_str());
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        Self::spawn(binary, &args, "worker serving")
    }

    /// Starts `weir serve --plugins DIR --listen 127.0.0.1:0` with `extra` arguments, waits
    /// until its HTTP API listens, and returns it with the API's base URL
    /// (`http://127.0.0.1:PORT`).
    pub fn serve(plugins: &Path, extra: &[&str]) -> (WeirProcess, String) {
        Self::serve_binary(weir_bin(), plugins, extra)
    }

    /// [`WeirProcess::serve`] with the given `weir` binary.
    pub fn serve_binary(binary: &Path, plugins: &Path, extra: &[&str]) -> (WeirProcess, String) {
        let mut args: Vec<&std::ffi::OsStr> = vec!["serve".as_ref(), "--plugins".as_ref()];
        args.push(plugins.as_os_str());
        args.extend(["--listen", "127.0.0.1:0"].iter().map(std::ffi::OsStr::new));
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let mut process = Self::spawn(binary, &args, "HTTP API listening");
        let line = process.wait_for("HTTP API listening");
        let url = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("url="))
            .unwrap_or_else(|| panic!("no url= in `{line}`"))
            .trim_matches('"')
            .to_string();
        (process, url)
    }

    /// Starts `binary` with `args` (plus the shared compile cache and info logs) and waits
    /// for a log line containing `ready`.
    pub fn spawn(binary: &Path, args: &[&std::ffi::OsStr], ready: &str) -> WeirProcess {
        let mut command = Command::new(binary);
        // The tests' fleet key, unless the arguments say how to trust Redis.
        let trust_given = args
            .iter()
            .any(|a| *a == "--fleet-key-file" || *a == "--insecure-redis");
        if !trust_given {
            command.env("WEIR_FLEET_KEY", FLEET_KEY);
        }
        let mut child = command
            .args(args)
            .arg("--cache-dir")
            .arg(cache_dir())
            .args(["--log-level", "warn,weir=info"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the weir binary runs");
        let lines = lines_of(child.stderr.take().expect("stderr is piped"));
        let mut process = WeirProcess {
            child,
            lines,
            seen: Vec::new(),
        };
        process.wait_for(ready);
        process
    }

    /// Waits (up to 60 s) for a log line containing `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "weir did not log `{needle}` within 60 s; it logged:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the process to stop (SIGTERM) and waits up to `timeout` for it to exit; returns
    /// its exit code, or `None` if it did not exit in time (or died of a signal).
    pub fn terminate_within(&mut self, timeout: std::time::Duration) -> Option<i32> {
        use rustix::process::{Pid, Signal, WaitOptions, kill_process, waitpid};
        let pid = Pid::from_raw(self.child.id() as i32)?;
        let _ = kill_process(pid, Signal::TERM);
        let (send, exited) = std::sync::mpsc::channel();
        // `waitpid` blocks: wait on a thread, and give up on it after the timeout (the
        // process is then killed when this handle drops).
        std::thread::spawn(move || {
            let status = waitpid(Some(pid), WaitOptions::empty());
            let _ = send.send(status);
        });
        match exited.recv_timeout(timeout) {
            Ok(Ok(Some((_, status)))) => status.exit_status(),
            _ => None,
        }
    }

    /// Asks the process to stop (SIGTERM) and waits for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        self.child.wait().expect("the process exits")
    }
}

impl Drop for WeirProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `examples/bull-board` (Bull Board over weir's queues) with its pinned packages
/// installed: `.ci/run` installs them; so does the first test that needs them.
pub fn bull_board_example() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bull-board");
    if !dir.join("node_modules/@bull-board/express").is_dir() {
        let status = Command::new("npm")
            .args(["install", "--no-save", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm runs (install Node.js: apt-get install nodejs npm)");
        assert!(
            status.success(),
            "npm install in examples/bull-board failed"
        );
    }
    dir
}

/// `tests/node` (Node BullMQ, pinned) with its packages installed: `.ci/run` installs them;
/// so does the first test or benchmark that needs them.
pub fn node_project() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("node");
    let installed = ["bullmq", "ioredis", "playwright-core"]
        .iter()
        .all(|package| dir.join("node_modules").join(package).is_dir());
    if !installed {
        let status = Command::new("npm")
            .args(["install", "--no-save", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm runs (install Node.js: apt-get install nodejs npm)");
        assert!(status.success(), "npm install in tests/node failed");
    }
    dir
}
