//! The distributed runtime: real `weir worker` processes and a real `redis-server`. The
//! same requests give the same result documents as on the local runtime; a worker that
//! lacks a component fetches it by digest; runs outlive their submitter; a job whose
//! worker is killed fails after that one crash; Redis out of reach is exit code 3.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_tests::{
    PluginFolder, RedisServer, WeirProcess, WorkerProcess, cache_dir, engine_config, plugin_path,
    weir_bin,
};

const PLUGINS: &[&str] = &[
    "increment",
    "double",
    "add-ten",
    "hello",
    "validate-email",
    "classify",
    "flaky",
    "spin",
    "sleep",
    "relay",
    "sum-counts",
];

const WORKFLOWS: &str = r#"
[workflow.calc]
chain = ["increment", "double", "add-ten"]

[workflow.signup]
chain = ["increment", "validate-email", "double"]

[workflow.pick]
route = "/kind"
routes = { inc = "increment", greet = "hello" }
fallback = "double"

[workflow.strict]
route = "/kind"
routes = { inc = "increment" }

[workflow.size]
selector = "classify"
routes = { small = "increment", big = "double" }

[workflow.nested]
chain = ["calc", "pick"]

[workflow.bounded]
chain = ["increment", "sleep"]
timeout_ms = 200

[workflow.fan]
parallel = ["increment", "hello"]

[workflow.fan-fail]
parallel = ["increment", "validate-email"]

[workflow.sum-both]
parallel = ["increment", "double"]
merge = "sum-counts"

[workflow.sum-then-greet]
chain = ["sum-both", "hello"]

[workflow.fan-of-chains]
parallel = ["calc", "pick", "fan"]

[workflow.each]
batch = "increment"
concurrency = 2

[workflow.each-strict]
batch = "validate-email"
policy = "all-or-nothing"
concurrency = 1

[workflow.each-fan]
batch = "fan"

[workflow.pipeline]
graph = { fetch = { run = "increment" }, parse = { after = ["fetch"], run = "double" }, review = { after = ["parse"], if = "/needsReview", run = "hello" }, store = { after = ["parse"], run = "add-ten" } }

[workflow.broken-graph]
graph = { a = { run = "increment" }, b = { after = ["a"], run = "validate-email" }, c = { after = ["b"], run = "double" }, d = { run = "add-ten" } }
"#;

/// A folder with the test plugins and workflows.
fn folder() -> PluginFolder {
    let folder = PluginFolder::with(PLUGINS);
    folder.write("workflows.toml", WORKFLOWS.as_bytes());
    folder
}

/// A runtime that submits to the Redis at `url`, publishing `dir`'s plugins and workflows.
pub(crate) async fn submitter(url: &str, dir: &std::path::Path) -> weir::Runtime {
    submitter_configured(dir, weir::RedisConfig::new(url)).await
}

/// [`submitter`] with the distributed runtime's settings `config` (which names the Redis).
async fn submitter_configured(dir: &std::path::Path, config: weir::RedisConfig) -> weir::Runtime {
    let runtime = weir::Runtime::builder()
        .redis_config(config)
        .trust(weir_tests::fleet())
        .plugins_dir(dir)
        .engine_config(engine_config())
        .build()
        .await
        .expect("the distributed runtime connects");
    runtime.start();
    runtime
}

/// A result without what differs from run to run (ids, times, costs); a batch's items are
/// compared apart.
fn comparable(result: &weir::ExecutionResult) -> Value {
    let mut document = serde_json::to_value(result).unwrap();
    for field in ["id", "durationUs", "fuelConsumed", "peakMemoryBytes"] {
        document["execution"].as_object_mut().unwrap().remove(field);
    }
    forget_times(&mut document);
    forget_sibling_races(&mut document);
    document
}

/// When a parallel branch fails, whether each sibling finished first or was cancelled by the
/// failure is a race in either runtime: both outcomes compare equal.
fn forget_sibling_races(document: &mut Value) {
    let Some(branches) = document
        .pointer_mut("/error/details/branches")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for branch in branches {
        let raced = branch["ok"] == true || branch["code"] == "cancelled-by-sibling";
        if raced {
            *branch =
                json!({ "branch": branch["branch"].clone(), "outcome": "finished-or-cancelled" });
        }
    }
}

/// Removes every state's timestamps, however deep.
fn forget_times(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(metadata)) = map.get_mut("metadata") {
                metadata.remove("createdAt");
                metadata.remove("lastUpdated");
            }
            map.values_mut().for_each(forget_times);
        }
        Value::Array(items) => items.iter_mut().for_each(forget_times),
        _ => {}
    }
}

/// Runs `weir` with `args`; returns its stdout, failing the test on a non-zero exit.
fn weir_ok(args: &[&str]) -> Vec<u8> {
    let output = Command::new(weir_bin())
        .env("WEIR_FLEET_KEY", weir_tests::FLEET_KEY)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "weir {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A path as a command-line argument (test paths are UTF-8).
fn path_str(path: &std::path::Path) -> &str {
    path.to_str().unwrap()
}

/// Runs `weir` with `args` (which must succeed) and reads its stdout as JSON.
pub(crate) fn weir_json(args: &[&str]) -> Value {
    serde_json::from_slice(&weir_ok(args)).unwrap()
}

/// A connection to the Redis at `url`, to look at what weir wrote.
pub(crate) async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Waits (up to 30 s, else fails with `never`) until the BullMQ list `key` holds one job.
/// Redis tells nothing when a list changes, so this looks every 10 ms.
async fn until_listed(conn: &mut redis::aio::MultiplexedConnection, key: &str, never: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed: u64 = redis::cmd("LLEN").arg(key).query_async(conn).await.unwrap();
        if listed == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "{never}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Two `weir worker` processes over `dir`, with `args`.
pub(crate) fn two_workers(url: &str, dir: &std::path::Path, args: &[&str]) -> [WorkerProcess; 2] {
    [
        WorkerProcess::start(url, dir, args),
        WorkerProcess::start(url, dir, args),
    ]
}

/// [`submitter`], counting a run as lost `grace` after its deadline.
async fn submitter_with_grace(url: &str, dir: &std::path::Path, grace: Duration) -> weir::Runtime {
    let mut config = weir::RedisConfig::new(url);
    config.lost_grace = grace;
    submitter_configured(dir, config).await
}

/// Waits until one job waits in `queue`: in BullMQ's `wait` list, or in its `prioritized`
/// set (where a run's job goes unless it is its tenant's first, at priority 0).
async fn until_waiting(conn: &mut redis::aio::MultiplexedConnection, queue: &str, never: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (listed, prioritized): (u64, u64) = redis::pipe()
            .cmd("LLEN")
            .arg(format!("weir:{queue}:wait"))
            .cmd("ZCARD")
            .arg(format!("weir:{queue}:prioritized"))
            .query_async(conn)
            .await
            .unwrap();
        if listed + prioritized == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "{never}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_distributed_runtime_gives_the_local_runtimes_results() {
    let redis = RedisServer::start();
    let folder = folder();
    let _workers = [
        WorkerProcess::start(&redis.url(), folder.path(), &[]),
        WorkerProcess::start(&redis.url(), folder.path(), &[]),
    ];
    let distributed = submitter(&redis.url(), folder.path()).await;
    let local = weir_tests::runtime(folder.path()).await;
    let cases = [
        ("increment", json!({"count": 1})),
        ("validate-email", json!({"email": "nope"})),
        ("calc", json!({"count": 5})),
        ("signup", json!({"count": 1, "email": "nope"})),
        ("pick", json!({"kind": "inc", "count": 1})),
        ("pick", json!({"kind": "zzz", "count": 1})),
        ("strict", json!({"kind": "zzz"})),
        ("strict", json!({})),
        ("size", json!({"count": 1})),
        ("size", json!({"count": 1000})),
        ("nested", json!({"count": 1, "kind": "greet"})),
        ("flaky", json!({"succeedOn": 3})),
        ("flaky", json!({"succeedOn": 9})),
        ("spin", json!({})),
        ("relay", json!({"target": "increment", "count": 1})),
        ("bounded", json!({"ms": 1000})),
        ("fan", json!({"count": 1})),
        ("fan-fail", json!({"count": 1, "email": "nope"})),
        ("sum-both", json!({"count": 3})),
        ("sum-then-greet", json!({"count": 3})),
        ("fan-of-chains", json!({"count": 5, "kind": "inc"})),
        (
            "each",
            json!({"items": [{"count": 1}, {"count": 2}, {"count": 3}]}),
        ),
        ("each", json!({"items": []})),
        ("each", json!({"count": 1})),
        // Past the cap on a batch's items (10,000): refused alike before any item runs.
        ("each", json!({"items": vec![json!({}); 10_001]})),
        (
            "each-strict",
            json!({"items": [{"email": "a@b.c"}, {"email": "nope"}, {"email": "x@y.z"}]}),
        ),
        ("each-fan", json!({"items": [{"count": 1}, {"count": 2}]})),
        ("pipeline", json!({"count": 1})),
        ("pipeline", json!({"count": 1, "needsReview": true})),
        ("broken-graph", json!({"count": 1, "email": "nope"})),
    ];
    for (name, input) in cases {
        let here = local.run(name, input.clone()).await.unwrap();
        let there = distributed.run(name, input.clone()).await.unwrap();
        assert_eq!(
            comparable(&there),
            comparable(&here),
            "`{name}` on {input} differs between the runtimes"
        );
        let items = |r: &weir::ExecutionResult| {
            r.items
                .as_ref()
                .map(|items| items.iter().map(comparable).collect::<Vec<_>>())
        };
        assert_eq!(items(&there), items(&here), "`{name}`'s items differ");
    }
    // A name nothing has is refused the same way.
    let refused = distributed.run("nope", json!({})).await.unwrap_err();
    assert!(
        matches!(refused, weir::RuntimeError::NotFound { .. }),
        "{refused}"
    );
}

#[tokio::test]
async fn a_worker_without_the_plugin_fetches_it_by_digest() {
    let redis = RedisServer::start();
    let empty = PluginFolder::new();
    let mut worker = WorkerProcess::start(&redis.url(), empty.path(), &[]);
    // The submitter publishes `double`; only the worker can run it.
    let folder = PluginFolder::with(&["double"]);
    let runtime = submitter(&redis.url(), folder.path()).await;
    let result = runtime.run("double", json!({"count": 21})).await.unwrap();
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["count"], 42);
    let digest = runtime.plugin("double").unwrap().digest().to_string();
    assert_eq!(result.execution.digest.as_deref(), Some(digest.as_str()));
    worker.wait_for("fetched a published component");
}

/// M7: a worker refuses a published component over its size cap from its length in Redis,
/// without fetching or compiling it, and the run says why.
#[tokio::test]
async fn a_worker_refuses_a_published_component_over_its_size_cap() {
    let redis = RedisServer::start();
    let empty = PluginFolder::new();
    let worker = weir::Runtime::redis(redis.url())
        .trust(weir_tests::fleet())
        .plugins_dir(empty.path())
        .engine_config(engine_config())
        .host_config(weir::HostConfig {
            max_component_bytes: 1000,
            ..weir::HostConfig::default()
        })
        .build()
        .await
        .unwrap();
    worker.start();
    let _serving = worker
        .fleet()
        .expect("a distributed runtime")
        .start_worker(weir::WorkerConfig::default())
        .await
        .unwrap();
    let folder = PluginFolder::with(&["double"]);
    let runtime = submitter(&redis.url(), folder.path()).await;
    let result = runtime.run("double", json!({"count": 21})).await.unwrap();
    let error = result.error.expect("refused");
    assert!(
        error.message.contains("a component is at most 1000 bytes"),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_nested_call_on_a_worker_finds_what_it_holds_only_in_redis() {
    let redis = RedisServer::start();
    let empty = PluginFolder::new();
    let mut worker = WorkerProcess::start(&redis.url(), empty.path(), &[]);
    // The submitter publishes `relay`, `double` and a workflow over `increment`; the
    // worker's folder holds none of them, and a guest's `call` names them at run time.
    let folder = PluginFolder::with(&["relay", "double", "increment"]);
    folder.write(
        "workflows.toml",
        b"[workflow.twice]\nchain = [\"increment\", \"increment\"]\n",
    );
    let runtime = submitter(&redis.url(), folder.path()).await;
    // `relay` calls `target` with `count`.
    let relay = async |target: &str, count: u64| {
        let input = json!({"target": target, "count": count});
        runtime.run("relay", input).await.unwrap()
    };

    let result = relay("double", 21).await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["count"], 42);
    worker.wait_for("fetched a published component");

    let result = relay("twice", 1).await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["count"], 3);

    // A name published nowhere is still refused as on a local runtime.
    let error = relay("nope", 1).await.error.expect("the call fails");
    assert_eq!(error.kind, weir::ErrorKind::NotFound, "{error:?}");
    assert_eq!(error.message, "no processor or workflow named `nope`");
}

#[tokio::test]
async fn a_pushed_plugin_runs_from_the_command_line_without_any_file_on_the_worker() {
    let redis = RedisServer::start();
    let url = redis.url();
    let empty = PluginFolder::new();
    let _worker = WorkerProcess::start(&url, empty.path(), &[]);
    let component = plugin_path("add-ten");
    let pushed = weir_json(&["plugins", "push", "--redis", &url, path_str(&component)]);
    assert_eq!(pushed[0]["name"], "add-ten");
    let result = weir_json(&[
        "run",
        "add-ten",
        "--redis",
        &url,
        "--input",
        r#"{"count": 1}"#,
        "--plugins",
        path_str(empty.path()),
    ]);
    assert_eq!(result["state"]["count"], 11);
    assert_eq!(result["execution"]["digest"], pushed[0]["digest"]);
}

#[tokio::test]
async fn a_detached_run_completes_without_its_submitter_and_any_process_reads_it() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = folder();
    let _worker = WorkerProcess::start(&url, folder.path(), &[]);
    let submitted = weir_json(&[
        "run",
        "calc",
        "--detach",
        "--redis",
        &url,
        "--input",
        r#"{"count": 5}"#,
        "--plugins",
        path_str(folder.path()),
    ]);
    let id = submitted["run"].as_str().unwrap().to_string();
    // The submitter has exited; another process waits for the outcome.
    let run = weir_json(&["runs", "get", &id, "--wait", "--redis", &url]);
    assert_eq!(run["status"], "ok");
    assert_eq!(run["target"], "calc");
    assert_eq!(run["result"]["state"]["count"], 22);
    assert_eq!(run["result"]["execution"]["id"], id.as_str());
    // Unknown runs are a usage error.
    let missing = Command::new(weir_bin())
        .env("WEIR_FLEET_KEY", weir_tests::FLEET_KEY)
        .args(["runs", "get", "no-such-run", "--redis", &url])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

/// Issue 21, part 5: a job whose worker dies while running it (as if the job had killed
/// it) is not handed to the next worker, which could die the same way: it fails after that
/// one crash, with a reason that says so, and the other worker goes on serving.
#[tokio::test]
async fn a_job_whose_worker_dies_running_it_fails_after_one_crash_and_the_other_worker_survives() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["sleep"]);
    folder.manifest("sleep", "[limits]\ntimeout_ms = 20000\n");
    let fast_recovery = ["--lock-ms", "1000", "--stalled-interval-ms", "500"];
    let mut first = WorkerProcess::start(&url, folder.path(), &fast_recovery);
    let runtime = submitter(&url, folder.path()).await;
    let id = runtime
        .fleet()
        .expect("a distributed runtime")
        .submit(weir::ExecutionRequest::new("sleep", json!({"ms": 1500})))
        .await
        .unwrap();
    // Wait until the first worker holds the job; then the second starts, and the first dies
    // mid-job.
    let mut conn = connection(&url).await;
    until_listed(
        &mut conn,
        "weir:sleep:active",
        "the job never became active",
    )
    .await;
    let mut second = WorkerProcess::start(&url, folder.path(), &fast_recovery);
    first.kill();
    let result = finished(
        &runtime,
        &id,
        Duration::from_secs(60),
        "the run ended after the crash",
    )
    .await;
    let error = result.error.clone().expect("the job fails");
    assert_eq!(
        error.code.as_deref(),
        Some(weir::codes::WORKER_LOST),
        "{error:?}"
    );
    assert!(error.message.contains("stopped"), "{error:?}");
    assert!(
        result.state.get("slept_ms").is_none(),
        "the step ran again: {result:?}"
    );
    // The job goes to the dead-letter set (once BullMQ has moved it, just after the run's
    // outcome), where the operator may send it back.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let failed: Vec<String> = redis::cmd("ZRANGE")
            .arg("weir:sleep:failed")
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !failed.is_empty() {
            assert_eq!(failed, [format!("{id}-0")]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job never reached the failed set"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Exactly one outcome was recorded and announced.
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg("weir:_:events")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let outcomes = entries
        .iter()
        .filter(|(_, fields)| fields.windows(2).any(|w| w[0] == "type" && w[1] == "run"))
        .count();
    assert_eq!(outcomes, 1);
    // The second worker survived, and serves.
    let next = runtime.run("sleep", json!({"ms": 10})).await.unwrap();
    assert!(next.ok, "{next:?}");
    let status = second.terminate();
    assert!(
        status.success(),
        "the second worker exits cleanly: {status:?}"
    );
}

/// A worker that leaves before its step ends (SIGTERM, its grace over) hands the step back:
/// that is not a crash, and another worker runs it to the end.
#[tokio::test]
async fn a_step_a_leaving_worker_hands_back_runs_on_another_worker() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["sleep"]);
    folder.manifest("sleep", "[limits]\ntimeout_ms = 20000\n");
    let leaving = [
        "--lock-ms",
        "1000",
        "--stalled-interval-ms",
        "500",
        "--grace-ms",
        "50",
    ];
    let mut first = WorkerProcess::start(&url, folder.path(), &leaving);
    let runtime = submitter(&url, folder.path()).await;
    let mut events = runtime.subscribe();
    let id = runtime
        .fleet()
        .expect("a distributed runtime")
        .submit(weir::ExecutionRequest::new("sleep", json!({"ms": 2000})))
        .await
        .unwrap();
    started_execution(&mut events, &id).await;
    let status = first.terminate();
    assert!(status.success(), "the worker exits cleanly: {status:?}");
    let _second = WorkerProcess::start(&url, folder.path(), &leaving);
    let result = finished(
        &runtime,
        &id,
        Duration::from_secs(60),
        "the run finished on the second worker",
    )
    .await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["slept_ms"], 2000);
}

#[tokio::test]
async fn redis_out_of_reach_is_exit_code_3_within_the_connect_timeout() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let folder = PluginFolder::with(&["hello"]);
    for command in [&["run", "hello"][..], &["worker"][..]] {
        let started = Instant::now();
        let output = Command::new(weir_bin())
            .env("WEIR_FLEET_KEY", weir_tests::FLEET_KEY)
            .args(command)
            .args(["--redis", &url, "--connect-timeout-ms", "300"])
            .arg("--plugins")
            .arg(folder.path())
            .arg("--cache-dir")
            .arg(cache_dir())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(3), "{command:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("cannot reach Redis"), "{stderr}");
        assert!(output.stdout.is_empty());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{command:?} took {:?}",
            started.elapsed()
        );
    }
}

/// The `processor:started` event (from any process) of the processor `name`.
async fn started_processor(
    events: &mut weir::Subscription,
    name: &str,
) -> std::sync::Arc<weir::Event> {
    weir_tests::next_event(events, |e| {
        e.event == weir::EventKind::ProcessorStarted && e.processor.as_deref() == Some(name)
    })
    .await
}

/// The `processor:started` event (from any process) of the execution `id`.
async fn started_execution(
    events: &mut weir::Subscription,
    id: &str,
) -> std::sync::Arc<weir::Event> {
    weir_tests::next_event(events, |e| {
        e.event == weir::EventKind::ProcessorStarted && e.execution_id.as_deref() == Some(id)
    })
    .await
}

/// The outcome of the run `id`, which must come `within` (else the test fails: `never`).
async fn finished(
    runtime: &weir::Runtime,
    id: &str,
    within: Duration,
    never: &str,
) -> weir::ExecutionResult {
    tokio::time::timeout(
        within,
        runtime.fleet().expect("a distributed runtime").wait_run(id),
    )
    .await
    .expect(never)
    .unwrap()
}

#[tokio::test]
async fn stopping_a_session_stops_its_guests_on_remote_workers_and_drops_its_waiting_jobs() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["spin"]);
    folder.manifest("spin", "[limits]\ntimeout_ms = 30000\n");
    // One job at a time: the second execution waits in the queue.
    let _worker = WorkerProcess::start(&url, folder.path(), &["--concurrency", "1"]);
    let runtime = submitter(&url, folder.path()).await;
    let mut events = runtime.subscribe();
    let request = || weir::ExecutionRequest::new("spin", json!({})).session("s1");
    let first = tokio::spawn({
        let runtime = runtime.clone();
        let request = request();
        async move { runtime.execute(request).await }
    });
    // The worker's event reaches this process: the guest is spinning over there.
    let started = started_processor(&mut events, "spin").await;
    assert!(started.origin.is_some(), "the event came from the worker");
    let second = tokio::spawn({
        let runtime = runtime.clone();
        let request = request();
        async move { runtime.execute(request).await }
    });
    // Let the second job reach its queue before stopping.
    let mut conn = connection(&url).await;
    until_waiting(&mut conn, "spin", "the second job never waited").await;
    let stopped_at = Instant::now();
    let report = runtime.stop_session("default", "s1").await;
    assert_eq!(report.cancelled, 1, "the waiting job was removed");
    for handle in [first, second] {
        let result = tokio::time::timeout(Duration::from_secs(20), handle)
            .await
            .expect("the execution ended after the stop")
            .unwrap()
            .unwrap();
        let error = result.error.expect("a stopped session's work fails");
        assert_eq!(error.kind, weir::ErrorKind::Cancelled, "{error:?}");
        assert_eq!(error.code.as_deref(), Some(weir::codes::SESSION_STOPPED));
    }
    assert!(
        stopped_at.elapsed() < Duration::from_secs(10),
        "the looping guest stopped promptly ({:?})",
        stopped_at.elapsed()
    );
}

/// M4: a run whose outcome is lost (its only worker dies holding its job, and nothing
/// recovers the job for a minute) ends as `timeout` / `run-lost` once its deadline and the
/// grace have passed, instead of leaving its caller waiting; its record says so, and the
/// next run goes through.
#[tokio::test]
async fn a_run_whose_outcome_is_lost_ends_by_its_deadline() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["sleep"]);
    folder.manifest("sleep", "[limits]\ntimeout_ms = 20000\n");
    let slow_recovery = ["--lock-ms", "60000", "--stalled-interval-ms", "60000"];
    let mut worker = WorkerProcess::start(&url, folder.path(), &slow_recovery);
    let runtime = submitter_with_grace(&url, folder.path(), Duration::from_millis(500)).await;
    let request = weir::ExecutionRequest::new("sleep", json!({"ms": 10_000}))
        .deadline(Duration::from_secs(3));
    let run = tokio::spawn({
        let runtime = runtime.clone();
        async move { runtime.execute(request).await }
    });
    let mut conn = connection(&url).await;
    until_listed(
        &mut conn,
        "weir:sleep:active",
        "the job never became active",
    )
    .await;
    worker.kill();
    let result = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the run ends by its deadline")
        .unwrap()
        .unwrap();
    let error = result.error.expect("a lost run fails");
    assert_eq!(error.kind, weir::ErrorKind::Timeout, "{error:?}");
    assert_eq!(error.code.as_deref(), Some(weir::codes::RUN_LOST));
    let status = runtime
        .fleet()
        .expect("a distributed runtime")
        .run_status(&result.execution.id)
        .await
        .unwrap()
        .expect("the run's record");
    let recorded = status.result.and_then(|r| r.error).and_then(|e| e.code);
    assert_eq!(recorded.as_deref(), Some(weir::codes::RUN_LOST));
    let _worker = WorkerProcess::start(&url, folder.path(), &[]);
    let next = runtime.run("sleep", json!({"ms": 10})).await.unwrap();
    assert!(next.ok, "{next:?}");
}

/// M4 as `weir runs get` sees it: a run nobody waits for, whose outcome was lost, reads as
/// `run-lost` once its deadline and the grace have passed.
#[tokio::test]
async fn a_lost_run_nobody_waits_for_reads_as_lost() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["sleep"]);
    // No worker: the run's job waits in its queue, and its outcome never comes.
    let runtime = submitter_with_grace(&url, folder.path(), Duration::from_millis(100)).await;
    let request = weir::ExecutionRequest::new("sleep", json!({"ms": 10}))
        .deadline(Duration::from_millis(300));
    let id = runtime
        .fleet()
        .expect("a distributed runtime")
        .submit(request)
        .await
        .unwrap();
    let status = runtime
        .fleet()
        .expect("a distributed runtime")
        .run_status(&id)
        .await
        .unwrap()
        .unwrap();
    assert!(status.result.is_none(), "running until its deadline");
    assert!(status.deadline_ms.is_some());
    let started = Instant::now();
    let lost = loop {
        let status = runtime
            .fleet()
            .expect("a distributed runtime")
            .run_status(&id)
            .await
            .unwrap()
            .unwrap();
        if let Some(result) = status.result {
            break result;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never lost");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        lost.error.and_then(|e| e.code).as_deref(),
        Some(weir::codes::RUN_LOST)
    );
}

#[tokio::test]
async fn a_cancelled_run_stops_wherever_it_runs() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["spin"]);
    folder.manifest("spin", "[limits]\ntimeout_ms = 30000\n");
    let _worker = WorkerProcess::start(&url, folder.path(), &[]);
    let runtime = submitter(&url, folder.path()).await;
    let mut events = runtime.subscribe();
    let id = runtime
        .fleet()
        .expect("a distributed runtime")
        .submit(weir::ExecutionRequest::new("spin", json!({})))
        .await
        .unwrap();
    started_execution(&mut events, &id).await;
    assert!(
        runtime
            .fleet()
            .expect("a distributed runtime")
            .cancel_run(&id)
            .await
            .unwrap()
    );
    let result = finished(
        &runtime,
        &id,
        Duration::from_secs(20),
        "the cancelled run ended",
    )
    .await;
    let error = result.error.expect("a cancelled run fails");
    assert_eq!(error.kind, weir::ErrorKind::Cancelled);
    assert_eq!(
        error.code.as_deref(),
        Some(weir::codes::CANCELLED_BY_REQUEST)
    );
    // A finished run cannot be cancelled again.
    assert!(
        !runtime
            .fleet()
            .expect("a distributed runtime")
            .cancel_run(&id)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_guests_progress_becomes_its_bullmq_jobs_progress() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["cooperative"]);
    let _worker = WorkerProcess::start(&url, folder.path(), &[]);
    let runtime = submitter(&url, folder.path()).await;
    let id = runtime
        .fleet()
        .expect("a distributed runtime")
        .submit(weir::ExecutionRequest::new("cooperative", json!({})))
        .await
        .unwrap();
    // BullMQ announces progress on the queue's event stream, as Node's `QueueEvents` reads it.
    let mut conn = connection(&url).await;
    // Short blocking reads (the client gives up on a reply after its own timeout), until
    // the event comes or 20 s have passed.
    let options = redis::streams::StreamReadOptions::default().block(200);
    let mut last = "0".to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (job, data) = 'heard: loop {
        assert!(Instant::now() < deadline, "no progress event within 20 s");
        let reply: Option<redis::streams::StreamReadReply> = redis::AsyncCommands::xread_options(
            &mut conn,
            &["weir:cooperative:events"],
            &[&last],
            &options,
        )
        .await
        .unwrap();
        let Some(reply) = reply else {
            continue;
        };
        for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
            last = entry.id.clone();
            if entry.get::<String>("event").as_deref() == Some("progress") {
                let job: String = entry.get("jobId").unwrap();
                let data: String = entry.get("data").unwrap();
                break 'heard (job, data);
            }
        }
    };
    let data: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(data["message"], "still working", "{data}");
    assert!(data["percent"].as_u64().is_some_and(|p| p <= 100), "{data}");
    // And the job itself holds it, where Bull Board and `job.progress` read it.
    let stored: String = redis::cmd("HGET")
        .arg(format!("weir:cooperative:{job}"))
        .arg("progress")
        .query_async(&mut conn)
        .await
        .unwrap();
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["message"], "still working", "{stored}");
    assert!(
        runtime
            .fleet()
            .expect("a distributed runtime")
            .cancel_run(&id)
            .await
            .unwrap()
    );
    finished(&runtime, &id, Duration::from_secs(20), "the run ended").await;
}

#[tokio::test]
async fn a_failing_branch_cancels_its_siblings_on_other_workers() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["spin", "validate-email", "increment"]);
    folder.manifest("spin", "[limits]\ntimeout_ms = 30000\n");
    folder.write(
        "workflows.toml",
        b"[workflow.doomed]\nparallel = [\"spin\", \"validate-email\", \"increment\"]\n",
    );
    let _workers = [
        WorkerProcess::start(&url, folder.path(), &[]),
        WorkerProcess::start(&url, folder.path(), &[]),
    ];
    let runtime = submitter(&url, folder.path()).await;
    let started = Instant::now();
    let result = runtime
        .run("doomed", json!({"email": "nope", "count": 1}))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the spinning sibling was stopped ({:?})",
        started.elapsed()
    );
    let error = result.error.expect("the parallel fails");
    assert_eq!(error.kind, weir::ErrorKind::Validation);
    assert!(
        error.message.contains("branch 2 (`validate-email`)"),
        "{}",
        error.message
    );
    let branches = &error.details.as_ref().unwrap()["branches"];
    assert_eq!(branches[0]["kind"], "cancelled", "{branches}");
    assert_eq!(branches[0]["code"], weir::codes::CANCELLED_BY_SIBLING);
}

#[tokio::test]
async fn work_resumes_within_two_seconds_of_a_redis_restart_and_no_waiting_job_is_lost() {
    let mut redis = RedisServer::start_persistent();
    let url = redis.url();
    let folder = PluginFolder::with(&["increment"]);
    let mut worker = WorkerProcess::start(&url, folder.path(), &[]);
    let runtime = submitter(&url, folder.path()).await;
    assert!(
        runtime
            .run("increment", json!({"count": 1}))
            .await
            .unwrap()
            .ok
    );

    // Redis restarts while the worker idles: the next run goes through within 2 s.
    redis.stop();
    redis.start_again();
    let restarted = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        runtime.run("increment", json!({"count": 2})),
    )
    .await
    .expect("a run after the restart finished")
    .unwrap();
    let resumed = restarted.elapsed();
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["count"], 3);
    assert!(
        resumed < Duration::from_secs(2),
        "work resumed after {resumed:?}"
    );

    // Jobs waiting (no worker running) when Redis restarts are all still there after.
    worker.terminate();
    let mut ids = Vec::new();
    for count in 0..5 {
        let request = weir::ExecutionRequest::new("increment", json!({ "count": count }));
        ids.push(
            runtime
                .fleet()
                .expect("a distributed runtime")
                .submit(request)
                .await
                .unwrap(),
        );
    }
    redis.stop();
    redis.start_again();
    let _worker = WorkerProcess::start(&url, folder.path(), &[]);
    for (count, id) in ids.iter().enumerate() {
        let result = finished(
            &runtime,
            id,
            Duration::from_secs(20),
            "every waiting run finished after the restart",
        )
        .await;
        assert!(result.ok, "{:?}", result.error);
        assert_eq!(result.state["count"], count + 1);
    }
}

#[tokio::test]
async fn a_worker_asked_to_stop_finishes_its_jobs_in_flight_first() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["sleep"]);
    folder.manifest("sleep", "[limits]\ntimeout_ms = 20000\n");
    let mut worker = WorkerProcess::start(&url, folder.path(), &[]);
    let runtime = submitter(&url, folder.path()).await;
    let mut events = runtime.subscribe();
    let id = runtime
        .fleet()
        .expect("a distributed runtime")
        .submit(weir::ExecutionRequest::new("sleep", json!({"ms": 1000})))
        .await
        .unwrap();
    started_execution(&mut events, &id).await;
    let status = worker.terminate();
    assert!(status.success(), "the worker exits cleanly: {status:?}");
    let result = finished(
        &runtime,
        &id,
        Duration::from_secs(5),
        "the job finished before the worker left",
    )
    .await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["slept_ms"], 1000);
}

#[tokio::test]
async fn two_writers_racing_on_one_session_state_get_one_success_and_one_conflict() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["sleep"]);
    let _workers = [
        WorkerProcess::start(&url, folder.path(), &[]),
        WorkerProcess::start(&url, folder.path(), &[]),
    ];
    let first = submitter(&url, folder.path()).await;
    let second = submitter(&url, folder.path()).await;
    // Both start from the session's (empty) state and take a while.
    let input = json!({"ms": 200});
    let (a, b) = tokio::join!(
        first.execute_in_session("race", "sleep", input.clone()),
        second.execute_in_session("race", "sleep", input.clone()),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        a.ok != b.ok,
        "exactly one wins: {:?} / {:?}",
        a.error,
        b.error
    );
    let loser = if a.ok { &b } else { &a };
    let error = loser.error.as_ref().unwrap();
    assert_eq!(error.kind, weir::ErrorKind::Conflict);
    assert_eq!(error.code.as_deref(), Some(weir::codes::STATE_CONFLICT));
    let stored = first.session_state("default", "race").await.unwrap();
    assert_eq!(stored["metadata"]["version"], 1);
}

#[tokio::test]
async fn a_job_that_exhausted_its_attempts_is_listed_dead_and_redriven_to_a_new_outcome() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["flaky"]);
    let mut worker = WorkerProcess::start(&url, folder.path(), &[]);
    let runtime = submitter(&url, folder.path()).await;
    // flaky allows 5 attempts; this input needs 7.
    let id = runtime
        .fleet()
        .expect("a distributed runtime")
        .submit(weir::ExecutionRequest::new(
            "flaky",
            json!({"succeedOn": 7}),
        ))
        .await
        .unwrap();
    let failed = runtime
        .fleet()
        .expect("a distributed runtime")
        .wait_run(&id)
        .await
        .unwrap();
    assert_eq!(failed.execution.attempts, 5);
    let listed = weir_json(&["dlq", "list", "--json", "--redis", &url]);
    let dead = listed.as_array().unwrap();
    assert_eq!(dead.len(), 1, "{listed}");
    assert_eq!(dead[0]["queue"], "flaky");
    assert_eq!(dead[0]["run"], id.as_str());
    assert_eq!(dead[0]["attempts"], 5);
    assert!(
        dead[0]["reason"].as_str().unwrap().starts_with("network"),
        "{listed}"
    );
    assert_eq!(dead[0]["input"]["succeedOn"], 7);

    // The operator allows more attempts, then redrives the job.
    worker.terminate();
    folder.manifest(
        "flaky",
        "[retry]\nmax_attempts = 10\nbackoff = \"fixed\"\nbackoff_ms = 1\n",
    );
    let _worker = WorkerProcess::start(&url, folder.path(), &[]);
    let job = format!("flaky/{}", dead[0]["id"].as_str().unwrap());
    weir_ok(&["dlq", "retry", &job, "--redis", &url]);
    let result = finished(
        &runtime,
        &id,
        Duration::from_secs(20),
        "the redriven run finished",
    )
    .await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["succeededOn"], 7);
    let listed = weir_json(&["dlq", "list", "--json", "--redis", &url]);
    assert_eq!(listed, json!([]), "nothing is dead any more");
    // Redriving what is not dead is refused.
    let again = Command::new(weir_bin())
        .env("WEIR_FLEET_KEY", weir_tests::FLEET_KEY)
        .args(["dlq", "retry", &job, "--redis", &url])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
}

#[tokio::test]
async fn a_node_bullmq_producer_runs_a_weir_processor_and_reads_its_result() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["increment", "validate-email"]);
    // Foreign jobs run only on the queues that take them, as the tenant named, within its
    // quotas: two executions a minute.
    folder.write(
        "weir.toml",
        b"[tenants.acme]\nexecutions_per_minute = 2\nprocessors = [\"increment\", \"validate-email\"]\n",
    );
    let config = folder.path().join("weir.toml");
    let config = config.to_str().unwrap();
    let foreign = [
        "--config",
        config,
        "--foreign",
        "increment=acme",
        "--foreign",
        "validate-email=acme",
    ];
    let _workers = two_workers(&url, folder.path(), &foreign);
    let node = weir_tests::node_project();
    let script = tokio::process::Command::new("node")
        .arg(node.join("interop.mjs"))
        .arg(&url)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), script)
        .await
        .expect("the Node script finished within 60 s")
        .expect("node runs (install Node.js: apt-get install nodejs npm)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    // The return value is weir's result document.
    assert_eq!(answer["ok"]["ok"], true, "{answer}");
    assert_eq!(answer["ok"]["state"]["count"], 42);
    assert_eq!(answer["ok"]["execution"]["processor"], "increment");
    assert_eq!(answer["ok"]["execution"]["tenant"], "acme");
    assert_eq!(answer["ok"]["execution"]["attempts"], 1);
    // A failure is the job's failure, with the error's kind, code and message.
    assert_eq!(
        answer["failed"],
        "validation (invalid-email): `nope` is not a valid email address"
    );
    // The third is over the tenant's quota: refused before it runs.
    let over = answer["over"].as_str().unwrap_or_default();
    assert!(
        over.starts_with("resource (quota-exceeded)") && over.contains("executions_per_minute"),
        "{answer}"
    );
}

/// Issue 21, part 3: a queue takes foreign jobs (without weir's format) only when its
/// workers are told which tenant runs them; otherwise such a job fails, saying how to opt
/// in, and runs nothing.
#[tokio::test]
async fn a_foreign_job_on_a_queue_that_takes_none_fails_without_running() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["increment"]);
    let _workers = two_workers(&url, folder.path(), &[]);
    crate::trust::add_job(&url, "increment", "from-elsewhere", &json!({"count": 1})).await;
    let mut conn = connection(&url).await;
    let job = crate::trust::until_finished(&mut conn, "increment", "from-elsewhere").await;
    let reason = job.get("failedReason").cloned().unwrap_or_default();
    assert!(
        reason.contains("--foreign increment=TENANT"),
        "a foreign job ran without opting in: {job:?}"
    );
    assert!(!job.contains_key("returnvalue"), "{job:?}");
}

#[tokio::test]
async fn a_plugin_dropped_into_a_workers_folder_is_published_and_runs_everywhere() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::new();
    let mut worker = WorkerProcess::start(&url, folder.path(), &[]);
    let empty = PluginFolder::new();
    let runtime = submitter(&url, empty.path()).await;
    let refused = runtime
        .run("double", json!({"count": 2}))
        .await
        .unwrap_err();
    assert!(matches!(refused, weir::RuntimeError::NotFound { .. }));
    folder.add("double");
    worker.wait_for("published to Redis");
    let result = runtime.run("double", json!({"count": 2})).await.unwrap();
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["count"], 4);
}

#[tokio::test]
async fn a_workflow_registered_from_code_is_published_and_runs_on_workers() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["double"]);
    let _worker = WorkerProcess::start(&url, folder.path(), &[]);
    let runtime = submitter(&url, folder.path()).await;
    runtime
        .register(weir::Workflow::chain("quadruple", ["double", "double"]))
        .unwrap();
    let result = runtime.run("quadruple", json!({"count": 3})).await.unwrap();
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["count"], 12);
    assert_eq!(result.execution.processor, "quadruple");
}

#[tokio::test]
async fn steps_run_on_workers_name_their_place_in_the_workflow() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["increment"]);
    let _worker = WorkerProcess::start(&url, folder.path(), &[]);
    let runtime = submitter(&url, folder.path()).await;
    weir_tests::assert_steps_name_their_places(&runtime).await;
}

/// A fresh Redis, two workers and a submitter over a folder of `plugins` with `workflows`
/// as its `workflows.toml`: held together, so they live as long as the test needs them.
struct TwoWorkers {
    runtime: weir::Runtime,
    _workers: [WorkerProcess; 2],
    _folder: PluginFolder,
    _redis: RedisServer,
}

async fn two_workers_with(plugins: &[&str], workflows: &str) -> TwoWorkers {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(plugins);
    folder.write("workflows.toml", workflows.as_bytes());
    let workers = two_workers(&url, folder.path(), &[]);
    let runtime = submitter(&url, folder.path()).await;
    TwoWorkers {
        runtime,
        _workers: workers,
        _folder: folder,
        _redis: redis,
    }
}

#[tokio::test]
async fn a_failed_saga_is_undone_the_same_across_two_workers() {
    let fleet = two_workers_with(&weir_tests::SAGA_PLUGINS, weir_tests::SAGA_WORKFLOWS).await;
    weir_tests::assert_saga(&fleet.runtime).await;
}

#[tokio::test]
async fn each_failure_policy_works_the_same_across_two_workers() {
    let fleet = two_workers_with(
        &weir_tests::FAILURE_POLICY_PLUGINS,
        weir_tests::FAILURE_POLICY_WORKFLOWS,
    )
    .await;
    weir_tests::assert_failure_policies(&fleet.runtime).await;
}

#[tokio::test]
async fn the_fleet_counts_each_version_of_a_plugin_its_workers_ran_apart() {
    use sha2::Digest;
    let (one, two) = (
        weir_tests::fixture_bytes("counter-one"),
        weir_tests::fixture_bytes("counter-two"),
    );
    let digest = |bytes: &[u8]| hex::encode(sha2::Sha256::digest(bytes));
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::new();
    folder.write("counter.wasm", &one);
    let _worker = WorkerProcess::start(&url, folder.path(), &[]);
    let runtime = submitter(&url, folder.path()).await;
    let run = || async {
        let result = runtime.run("counter", json!({})).await.unwrap();
        assert!(result.ok, "{:?}", result.error);
        result.state["servedBy"].as_u64().unwrap_or(0)
    };
    assert_eq!(run().await, 1);
    // A new version, deployed on the worker: runs serve it once it is published.
    folder.write("counter.wasm.new", &two);
    std::fs::rename(
        folder.path().join("counter.wasm.new"),
        folder.path().join("counter.wasm"),
    )
    .unwrap();
    let mut served = [1u64, 0];
    let deadline = Instant::now() + Duration::from_secs(20);
    while served[1] < 2 {
        assert!(
            Instant::now() < deadline,
            "version 2 never served: {served:?}"
        );
        match run().await {
            1 => served[0] += 1,
            _ => served[1] += 1,
        }
    }
    // Each version's executions, counted apart, as the worker's next flush writes them.
    let fleet = runtime.fleet().expect("a distributed runtime");
    let expected = vec![(digest(&one), served[0]), (digest(&two), served[1])];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counted: Vec<(String, u64)> = fleet
            .version_stats("counter")
            .await
            .unwrap()
            .into_iter()
            .map(|v| (v.digest, v.stats.completed))
            .collect();
        if counted == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fleet counted {counted:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Versions first counted within one write of a process's counters keep the order they first
/// ran in, all of it reaching Redis in the one write the runtime makes at its stop. The
/// version whose digest sorts last runs first, so an order taken from the digests shows.
#[tokio::test]
async fn versions_counted_in_one_write_keep_the_order_they_first_ran_in() {
    use sha2::Digest;
    let digest = |bytes: &[u8]| hex::encode(sha2::Sha256::digest(bytes));
    let mut versions = [
        weir_tests::fixture_bytes("counter-one"),
        weir_tests::fixture_bytes("counter-two"),
    ];
    versions.sort_by_key(|bytes| std::cmp::Reverse(digest(bytes)));
    let [first, then] = versions;
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::new();
    folder.write("counter.wasm", &first);
    let mut config = weir::RedisConfig::new(&url);
    // Only the write at the stop adds this process's counters to the fleet's.
    config.activity_interval = Duration::from_secs(3600);
    let runtime = submitter_configured(folder.path(), config).await;
    let worker = runtime
        .fleet()
        .expect("a distributed runtime")
        .start_worker(weir::WorkerConfig::default())
        .await
        .expect("the worker starts");
    let served = || async {
        let result = runtime.run("counter", json!({})).await.unwrap();
        assert!(result.ok, "{:?}", result.error);
        result.state["servedBy"].as_u64().unwrap_or(0)
    };
    let before = served().await;
    folder.write("counter.wasm", &then);
    runtime
        .load_plugin(folder.path().join("counter.wasm"))
        .await
        .expect("the new version loads");
    assert_ne!(served().await, before, "the new version serves");
    worker.close(Duration::from_secs(5)).await;
    runtime.stop(Duration::from_secs(5)).await;
    let reader = submitter(&url, folder.path()).await;
    let counted: Vec<(String, u64)> = reader
        .fleet()
        .expect("a distributed runtime")
        .version_stats("counter")
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.digest, v.stats.completed))
        .collect();
    assert_eq!(
        counted,
        vec![(digest(&first), 1), (digest(&then), 1)],
        "the versions, first counted first"
    );
}

#[tokio::test]
async fn a_requests_delay_and_cancel_handle_work_as_on_the_local_runtime() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["increment", "spin"]);
    folder.manifest("spin", "[limits]\ntimeout_ms = 30000\n");
    let _worker = WorkerProcess::start(&url, folder.path(), &[]);
    let runtime = submitter(&url, folder.path()).await;
    let started = Instant::now();
    let request = weir::ExecutionRequest::new("increment", json!({"count": 1}))
        .delay(Duration::from_millis(300));
    let result = runtime.execute(request).await.unwrap();
    assert!(result.ok);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );

    let mut events = runtime.subscribe();
    let cancel = weir::CancelHandle::new();
    let request = weir::ExecutionRequest::new("spin", json!({})).cancel_handle(cancel.clone());
    let running = tokio::spawn({
        let runtime = runtime.clone();
        async move { runtime.execute(request).await }
    });
    started_processor(&mut events, "spin").await;
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the cancelled execution ended")
        .unwrap()
        .unwrap();
    let error = result.error.expect("it was cancelled");
    assert_eq!(
        error.code.as_deref(),
        Some(weir::codes::CANCELLED_BY_REQUEST)
    );
}

#[tokio::test]
async fn run_ids_are_checked_and_never_reused() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["increment"]);
    let runtime = submitter(&url, folder.path()).await;
    let with_id = |id: &str| {
        let mut request = weir::ExecutionRequest::new("increment", json!({"count": 1}));
        request.id = Some(id.to_string());
        request
    };
    runtime
        .fleet()
        .expect("a distributed runtime")
        .submit(with_id("order-17"))
        .await
        .unwrap();
    // Redis forgetting its scripts (as after a restart) changes nothing: the submission
    // loads them again.
    let mut conn = connection(&url).await;
    let mut flush = redis::cmd("SCRIPT");
    flush.arg("FLUSH");
    let _: () = flush.query_async(&mut conn).await.unwrap();
    let reused = runtime
        .fleet()
        .expect("a distributed runtime")
        .submit(with_id("order-17"))
        .await
        .unwrap_err();
    assert!(
        matches!(reused, weir::RuntimeError::InvalidRequest(_)),
        "{reused}"
    );
    assert!(reused.to_string().contains("exists already"), "{reused}");
    let _: () = flush.query_async(&mut conn).await.unwrap();
    runtime
        .fleet()
        .expect("a distributed runtime")
        .submit(with_id("order-18"))
        .await
        .unwrap();
    for bad in ["a:b", "1234", ""] {
        let refused = runtime
            .fleet()
            .expect("a distributed runtime")
            .submit(with_id(bad))
            .await
            .unwrap_err();
        assert!(
            matches!(refused, weir::RuntimeError::InvalidRequest(_)),
            "{bad}: {refused}"
        );
    }
    let unknown = runtime
        .fleet()
        .expect("a distributed runtime")
        .wait_run("no-such-run")
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, weir::RuntimeError::InvalidRequest(_)),
        "{unknown}"
    );
}

#[tokio::test]
async fn a_run_cancelled_before_any_worker_started_is_cancelled_when_one_does() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["increment"]);
    let runtime = submitter(&url, folder.path()).await;
    let id = runtime
        .fleet()
        .expect("a distributed runtime")
        .submit(weir::ExecutionRequest::new(
            "increment",
            json!({"count": 1}),
        ))
        .await
        .unwrap();
    assert!(
        runtime
            .fleet()
            .expect("a distributed runtime")
            .cancel_run(&id)
            .await
            .unwrap()
    );
    // The worker learns the cancellation from its marker when it subscribes.
    let _worker = WorkerProcess::start(&url, folder.path(), &[]);
    let result = finished(&runtime, &id, Duration::from_secs(20), "the run ended").await;
    let error = result.error.expect("it was cancelled before it started");
    assert_eq!(
        error.code.as_deref(),
        Some(weir::codes::CANCELLED_BY_REQUEST)
    );
    assert_eq!(result.execution.attempts, 0, "nothing ran");
}

#[tokio::test]
async fn a_run_with_no_worker_anywhere_says_so() {
    use tokio::io::AsyncBufReadExt;
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["hello"]);
    let mut run = tokio::process::Command::new(weir_bin())
        .env("WEIR_FLEET_KEY", weir_tests::FLEET_KEY)
        .args(["run", "hello", "--redis", &url, "--cache-dir"])
        .arg(cache_dir())
        .arg("--plugins")
        .arg(folder.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(run.stderr.take().unwrap()).lines();
    let said = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("no weir worker is connected") {
                return line;
            }
        }
        panic!("weir run ended without saying that no worker runs it");
    })
    .await
    .expect("weir run said so within 30 s");
    assert!(said.contains("weir worker --redis"), "{said}");
}

#[tokio::test]
async fn serve_over_redis_runs_through_workers_and_redrives_dead_jobs_over_http() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["flaky", "hello"]);
    let mut worker = WorkerProcess::start(&url, folder.path(), &[]);
    let (_server, api) = WeirProcess::serve(folder.path(), &["--redis", &url]);
    let client = reqwest::Client::new();
    let post = |path: String, body: Value| {
        let request = client.post(format!("{api}{path}")).json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let get = |path: &'static str| {
        let request = client.get(format!("{api}{path}"));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };

    // A run through the API reaches a worker over Redis.
    let (status, done) = post("/v1/run/hello".into(), json!({ "user": "Redis" })).await;
    assert_eq!(
        (status, &done["state"]["greeting"]),
        (200, &json!("Hello Redis!")),
        "{done}"
    );

    // flaky allows 5 attempts; this input needs 7: the job ends in the dead-letter queue.
    let (status, failed) = post("/v1/run/flaky".into(), json!({ "succeedOn": 7 })).await;
    assert_eq!((status, &failed["ok"]), (200, &json!(false)), "{failed}");
    // The run's outcome is announced before BullMQ files the job as failed: look until it
    // is there (a bounded wait; each look is a round trip to Redis).
    let listed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let listed = get("/v1/dlq").await;
            if listed["dead"]
                .as_array()
                .is_some_and(|dead| !dead.is_empty())
            {
                return listed;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the job was filed dead");
    let dead = listed["dead"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{listed}");
    assert_eq!(dead[0]["queue"], "flaky");
    let job = dead[0]["id"].as_str().unwrap().to_string();
    let run = dead[0]["run"].as_str().unwrap().to_string();

    // The operator allows more attempts, then redrives it from the API.
    worker.terminate();
    folder.manifest(
        "flaky",
        "[retry]\nmax_attempts = 10\nbackoff = \"fixed\"\nbackoff_ms = 1\n",
    );
    let _worker = WorkerProcess::start(&url, folder.path(), &[]);
    let (status, body) = post(format!("/v1/dlq/flaky/{job}/retry"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let runtime = submitter(&url, folder.path()).await;
    let result = finished(
        &runtime,
        &run,
        Duration::from_secs(20),
        "the redriven run finished",
    )
    .await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(get("/v1/dlq").await["dead"], json!([]));
    let (status, body) = post(format!("/v1/dlq/flaky/{job}/retry"), json!({})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("dead-job-not-found"))
    );

    // A job dead again (more attempts than even the new policy allows) is purged for good;
    // a job that is not dead is not purged.
    let (_, failed) = post("/v1/run/flaky".into(), json!({ "succeedOn": 20 })).await;
    assert_eq!(failed["ok"], false, "{failed}");
    let listed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let listed = get("/v1/dlq").await;
            if listed["dead"].as_array().is_some_and(|d| !d.is_empty()) {
                return listed;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the job was filed dead");
    let again = listed["dead"][0]["id"].as_str().unwrap().to_string();
    let purge = |id: String| {
        let request = client.delete(format!("{api}/v1/dlq/flaky/{id}"));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = purge(again.clone()).await;
    assert_eq!((status, &body["purged"]), (200, &json!(true)), "{body}");
    assert_eq!(get("/v1/dlq").await["dead"], json!([]));
    let (status, body) = purge(again).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("dead-job-not-found")),
        "{body}"
    );
    // The redriven job completed: not dead, so not purged.
    let (status, _) = purge(job).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn tenants_quotas_hold_across_servers_sharing_one_redis() {
    use sha2::Digest;
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["sleep", "hello"]);
    folder.manifest("sleep", "[limits]\ntimeout_ms = 30000\n");
    let digest = |token: &str| hex::encode(sha2::Sha256::digest(token.as_bytes()));
    let config = format!(
        "[tenants.acme]\ntoken_sha256 = [\"{}\"]\nconcurrent = 1\n\n\
         [tenants.beta]\ntoken_sha256 = [\"{}\"]\nexecutions_per_minute = 2\n",
        digest("acme-token"),
        digest("beta-token"),
    );
    let config_file = folder.path().join("weir.toml");
    std::fs::write(&config_file, config).unwrap();
    let config_arg = config_file.to_string_lossy().into_owned();
    let _worker = WorkerProcess::start(&url, folder.path(), &[]);
    let serve = ["--redis", url.as_str(), "--config", config_arg.as_str()];
    let (_first, a) = WeirProcess::serve(folder.path(), &serve);
    let (_second, b) = WeirProcess::serve(folder.path(), &serve);
    let client = reqwest::Client::new();
    let send = |request: reqwest::RequestBuilder, token: &str| {
        let request = request.bearer_auth(token);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (status, retry_after, response.json::<Value>().await.unwrap())
        }
    };
    let hello = |api: &str| client.post(format!("{api}/v1/run/hello")).json(&json!({}));

    // acme may run one execution at a time, fleet-wide: a job holding its place on the
    // first server makes the second refuse.
    let (status, _, job) = send(
        client
            .post(format!("{a}/v1/jobs"))
            .json(&json!({ "processor": "sleep", "input": { "ms": 60000 } })),
        "acme-token",
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let (status, retry_after, body) = send(hello(&b), "acme-token").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["quota"], "concurrent", "{body}");
    assert!(retry_after.is_some());
    // beta's work is not held up by acme's.
    let (status, _, body) = send(hello(&b), "beta-token").await;
    assert_eq!((status, &body["ok"]), (200, &json!(true)), "{body}");
    // Once acme's job has ended, its place is free on every server.
    let id = job["id"].as_str().unwrap();
    let (status, _, _) = send(client.delete(format!("{a}/v1/jobs/{id}")), "acme-token").await;
    assert!(status < 300, "cancelled: {status}");
    let (_, _, ended) = send(
        client.get(format!("{a}/v1/jobs/{id}?waitMs=20000")),
        "acme-token",
    )
    .await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    let (status, _, body) = send(hello(&b), "acme-token").await;
    assert_eq!((status, &body["ok"]), (200, &json!(true)), "{body}");

    // beta may start two executions a minute, fleet-wide: one was spent above, one more
    // on the first server, and the second server refuses the third.
    let (status, _, body) = send(hello(&a), "beta-token").await;
    assert_eq!(status, 200, "{body}");
    let (status, retry_after, body) = send(hello(&b), "beta-token").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["quota"], "executions_per_minute", "{body}");
    let seconds: u64 = retry_after.unwrap().parse().unwrap();
    assert!(
        (1..=30).contains(&seconds),
        "one comes back every 30 s: {seconds}"
    );
}

#[tokio::test]
async fn bull_board_shows_weirs_queues_and_their_jobs() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["hello"]);
    // A schedule's ticks are jobs of weir's `_schedule` queue.
    folder.write(
        "workflows.toml",
        b"[schedule.greet]\nrun = \"hello\"\ninput = { user = \"tick\" }\ncron = \"0 0 1 1 *\"\n",
    );
    let _worker = WorkerProcess::start(&url, folder.path(), &[]);
    let runtime = submitter(&url, folder.path()).await;
    let done = runtime
        .run("hello", json!({ "user": "board" }))
        .await
        .unwrap();
    assert!(done.ok, "{:?}", done.error);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while runtime.schedules(None).await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the schedule never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let example = weir_tests::bull_board_example();
    let mut board = Command::new("node")
        .arg("server.mjs")
        .current_dir(&example)
        .env("REDIS_URL", &url)
        .env("PORT", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("node runs");
    let lines = weir_tests::lines_of(board.stdout.take().unwrap());
    let line = lines
        .recv_timeout(Duration::from_secs(60))
        .expect("Bull Board said where it listens");
    let base = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in `{line}`"))
        .to_string();
    let queues: Value = reqwest::get(format!("{base}api/queues"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let _ = board.kill();
    let _ = board.wait();
    let hello = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "hello")
        .unwrap_or_else(|| panic!("no `hello` queue on the board: {queues}"));
    assert!(
        hello["counts"]["completed"].as_u64().unwrap() >= 1,
        "{hello}"
    );
    let ticks = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "_schedule")
        .unwrap_or_else(|| panic!("no `_schedule` queue on the board: {queues}"));
    assert_eq!(
        ticks["counts"]["delayed"], 1,
        "the next tick waits: {ticks}"
    );
}

/// Issue 20 (M1) on the distributed runtime: each item of a batch is charged to its
/// tenant's `executions_per_minute` across the fleet, by whichever process opens the batch:
/// the server, for a run that is a batch, or a worker, for a batch a workflow reaches after
/// a step. Over the quota the run fails with the quota's error and no item runs; within it
/// the batch runs.
#[tokio::test]
async fn each_batch_item_is_charged_to_its_tenant_across_the_fleet() {
    use sha2::Digest;
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["increment", "stamp"]);
    folder.write(
        "workflows.toml",
        b"[workflow.many]\nbatch = \"increment\"\n\n\
          [workflow.stamped]\nchain = [\"stamp\", \"many\"]\n",
    );
    let token_digest = hex::encode(sha2::Sha256::digest(b"acme-secret"));
    folder.write(
        "weir.toml",
        format!(
            "[tenants.acme]\ntoken_sha256 = [\"{token_digest}\"]\nexecutions_per_minute = 10\n"
        )
        .as_bytes(),
    );
    let config = folder.path().join("weir.toml");
    let config = config.to_str().unwrap();
    let _workers = two_workers(&url, folder.path(), &["--config", config]);
    let (_server, api) =
        weir_tests::WeirProcess::serve(folder.path(), &["--redis", &url, "--config", config]);
    let client = reqwest::Client::new();
    let run = |name: &'static str, items: Vec<Value>| {
        client
            .post(format!("{api}/v1/run/{name}"))
            .bearer_auth("acme-secret")
            .header("content-type", "application/json")
            .body(json!({ "items": items }).to_string())
            .send()
    };
    let ones = |count: usize| (0..count).map(|_| json!({"count": 1})).collect::<Vec<_>>();
    // Opened by the server: the run is the batch.
    let result: Value = run("many", ones(50)).await.unwrap().json().await.unwrap();
    assert_eq!(result["ok"], false, "{result}");
    assert_eq!(result["error"]["code"], "quota-exceeded", "{result}");
    assert_eq!(result["error"]["details"]["quota"], "executions_per_minute");
    // Opened by a worker, after the chain's first step.
    let result: Value = run("stamped", ones(50))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(result["ok"], false, "{result}");
    assert_eq!(result["error"]["code"], "quota-exceeded", "{result}");
    let mut conn = connection(&url).await;
    let increments: u64 = redis::cmd("ZCARD")
        .arg("weir:increment:completed")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(increments, 0, "no item of a refused batch ran");
    // Three items fit in what is left (ten a minute; two runs and a step spent).
    let result: Value = run("many", ones(3)).await.unwrap().json().await.unwrap();
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["items"][2]["state"]["count"], 2, "{result}");
    let increments: u64 = redis::cmd("ZCARD")
        .arg("weir:increment:completed")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        increments, 3,
        "the items of the batch within the quota ran, and only they"
    );
}

/// Issue 23: `weir run NAME --redis` for a name nobody published exits 2 and, as on the
/// local runtime, says which names exist (or the near miss the user meant).
#[tokio::test]
async fn an_unknown_name_on_the_distributed_runtime_lists_the_published_ones() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["increment", "add-ten"]);
    let empty = PluginFolder::new();
    let _worker = WorkerProcess::start(&url, folder.path(), &[]);
    let run = |name: &str| {
        Command::new(weir_bin())
            .env("WEIR_FLEET_KEY", weir_tests::FLEET_KEY)
            .args([
                "run",
                name,
                "--redis",
                &url,
                "--plugins",
                path_str(empty.path()),
            ])
            .output()
            .unwrap()
    };
    let unknown = run("nope");
    assert_eq!(unknown.status.code(), Some(2));
    let said = String::from_utf8_lossy(&unknown.stderr).to_string()
        + &String::from_utf8_lossy(&unknown.stdout);
    assert!(said.contains("published: add-ten, increment"), "{said}");
    let near = run("incremnt");
    let said =
        String::from_utf8_lossy(&near.stderr).to_string() + &String::from_utf8_lossy(&near.stdout);
    assert!(said.contains("did you mean `increment`?"), "{said}");
}

/// Issue 20 (what a Redis writer can grow): a processor catalog flooded with made-up
/// entries is read only up to its bound (10,000 entries), with a warning that says so; the
/// worker still serves its own processors and runs them.
#[tokio::test]
async fn a_flooded_catalog_is_read_within_its_bound_and_the_worker_keeps_serving() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut conn = connection(&url).await;
    let mut flood = redis::pipe();
    for i in 0..30_000 {
        flood
            .cmd("HSET")
            .arg("weir:_:plugins")
            .arg(format!("made-up-{i}"))
            .arg("not signed")
            .ignore();
    }
    flood.query_async::<()>(&mut conn).await.unwrap();
    let folder = PluginFolder::with(&["hello"]);
    let mut worker = WorkerProcess::start(&url, folder.path(), &[]);
    worker.wait_for("more entries than the 10000 a process reads");
    let runtime = submitter(&url, folder.path()).await;
    let result = runtime
        .run("hello", json!({"user": "flood"}))
        .await
        .unwrap();
    assert!(result.ok, "{:?}", result.error);
}
