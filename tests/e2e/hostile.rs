//! Hostile plugins are contained with the right kind and code, and never take the host (or
//! the other executions on it) down with them.

use std::time::{Duration, Instant};

use serde_json::json;
use weir::{ErrorKind, ExecutionRequest, ExecutionResult, Limits, codes};
use weir_tests::{PluginFolder, run_alone as run, runtime, runtime_with_all_plugins};

/// Generous slack for a loaded 2-core machine: the tight figures belong in the benchmark.
const MARGIN: Duration = Duration::from_secs(3);

fn error_of(result: &ExecutionResult) -> &weir::ExecutionError {
    result
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("expected a failure, got {result:?}"))
}

fn assert_contained(result: &ExecutionResult, kind: ErrorKind, code: &str) {
    let error = error_of(result);
    assert_eq!(error.kind, kind, "{error}");
    assert_eq!(error.code.as_deref(), Some(code), "{error}");
    assert!(!result.ok);
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_at_its_timeout() {
    let started = Instant::now();
    let result = run("spin", json!({})).await;
    let elapsed = started.elapsed();
    assert_contained(&result, ErrorKind::Timeout, codes::DEADLINE_EXCEEDED);
    // spin declares a 500 ms timeout.
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(500) + MARGIN, "{elapsed:?}");
    assert!(result.execution.fuel_consumed > 0);
}

#[tokio::test]
async fn a_guest_blocked_in_a_host_call_is_stopped_at_its_timeout() {
    // No WebAssembly runs while the guest waits on a WASI clock, so epochs cannot stop it:
    // the host-side timer does.
    let started = Instant::now();
    let result = run("sleep", json!({"ms": 60000})).await;
    let elapsed = started.elapsed();
    assert_contained(&result, ErrorKind::Timeout, codes::DEADLINE_EXCEEDED);
    assert!(
        error_of(&result).message.contains("host call"),
        "{:?}",
        result.error
    );
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(300) + MARGIN, "{elapsed:?}");
}

#[tokio::test]
async fn a_short_sleep_within_the_timeout_completes() {
    let result = run("sleep", json!({"ms": 10})).await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["slept_ms"], 10);
}

#[tokio::test]
async fn a_caller_can_lower_the_timeout() {
    let folder = PluginFolder::with(&["spin"]);
    let rt = runtime(folder.path()).await;
    let started = Instant::now();
    let request = ExecutionRequest::new("spin", json!({})).timeout(Duration::from_millis(100));
    let result = rt.execute(request).await.unwrap();
    assert_contained(&result, ErrorKind::Timeout, codes::DEADLINE_EXCEEDED);
    assert!(error_of(&result).message.contains("100 ms"));
    assert!(started.elapsed() < Duration::from_millis(100) + MARGIN);
}

#[tokio::test]
async fn a_memory_bomb_hits_the_memory_cap() {
    let result = run("memory-bomb", json!({})).await;
    assert_contained(&result, ErrorKind::Resource, codes::MEMORY_LIMIT);
    assert!(result.execution.peak_memory_bytes <= Limits::DEFAULTS.memory_bytes);
    assert!(result.execution.peak_memory_bytes > 32 << 20);
}

#[tokio::test]
async fn the_operator_can_lower_the_memory_cap() {
    let folder = PluginFolder::with(&["memory-bomb"]);
    folder.manifest("memory-bomb", "[limits]\nmemory_bytes = 8388608\n");
    let result = runtime(folder.path())
        .await
        .run("memory-bomb", json!({}))
        .await
        .unwrap();
    assert_contained(&result, ErrorKind::Resource, codes::MEMORY_LIMIT);
    assert!(result.execution.peak_memory_bytes <= 8 << 20);
    assert!(error_of(&result).message.contains("8.0 MiB"));
}

#[tokio::test]
async fn the_fuel_budget_stops_a_busy_guest() {
    let folder = PluginFolder::with(&["spin"]);
    folder.manifest("spin", "[limits]\nfuel = 5000000\n");
    let result = runtime(folder.path())
        .await
        .run("spin", json!({}))
        .await
        .unwrap();
    assert_contained(&result, ErrorKind::Resource, codes::FUEL_EXHAUSTED);
    assert_eq!(result.execution.fuel_consumed, 5_000_000);
}

#[tokio::test]
async fn unbounded_recursion_overflows_the_stack_safely() {
    let result = run("deep-recursion", json!({})).await;
    assert_contained(&result, ErrorKind::Resource, codes::STACK_OVERFLOW);
}

#[tokio::test]
async fn a_guest_that_overflows_its_linear_memory_stack_traps_and_is_told_why() {
    // One 64 KiB frame fits the 128 KiB stack weir's builds give; four do not.
    let fits = run("stack-hog", json!({"depth": 0})).await;
    assert!(fits.ok, "{:?}", fits.error);
    let result = run("stack-hog", json!({"depth": 3})).await;
    assert_contained(&result, ErrorKind::Execution, codes::TRAP);
    let message = &error_of(&result).message;
    assert!(message.contains("stack_size"), "{message}");
}

#[tokio::test]
async fn a_sandbox_recycled_after_a_stack_overflow_runs_the_next_guest_normally() {
    let folder = PluginFolder::with(&["stack-hog"]);
    let rt = runtime(folder.path()).await;
    for _ in 0..3 {
        let overflow = rt.run("stack-hog", json!({"depth": 3})).await.unwrap();
        assert!(!overflow.ok);
        let fits = rt.run("stack-hog", json!({"depth": 0})).await.unwrap();
        assert!(fits.ok, "{:?}", fits.error);
        assert_eq!(fits.state["byte"], 0);
    }
}

#[tokio::test]
async fn a_panic_is_an_execution_error_with_the_guests_message() {
    let result = run("panic", json!({"reason": "bad input 7"})).await;
    assert_contained(&result, ErrorKind::Execution, codes::TRAP);
    let message = &error_of(&result).message;
    assert!(
        message.contains("processor exploded: bad input 7"),
        "{message}"
    );
}

#[tokio::test]
async fn an_oversized_output_is_refused() {
    let result = run("huge-output", json!({})).await;
    assert_contained(&result, ErrorKind::Resource, codes::OUTPUT_TOO_LARGE);
    // The last good state is the input, not the oversized output.
    assert!(result.state.get("blob").is_none());
}

#[tokio::test]
async fn the_operator_can_raise_the_output_cap() {
    let folder = PluginFolder::with(&["huge-output"]);
    folder.manifest("huge-output", "[limits]\noutput_bytes = 8388608\n");
    let result = runtime(folder.path())
        .await
        .run("huge-output", json!({}))
        .await
        .unwrap();
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["blob"].as_str().map(str::len), Some(5 << 20));
}

#[tokio::test]
async fn a_log_flood_finishes_without_slowing_the_host() {
    let started = Instant::now();
    let result = run("log-flood", json!({"lines": 20000})).await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["written"], 20000);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn forged_metadata_is_overwritten() {
    let folder = PluginFolder::with(&["forge-metadata"]);
    let rt = runtime(folder.path()).await;
    let request = ExecutionRequest::new("forge-metadata", json!({"x": 1})).session("mine");
    let result = rt.execute(request).await.unwrap();
    assert!(result.ok, "{:?}", result.error);
    let metadata = &result.state["metadata"];
    assert_eq!(metadata["version"], 1);
    assert_eq!(metadata["sessionId"], "mine");
    assert_ne!(metadata["createdAt"], "1970-01-01T00:00:00Z");
    assert_ne!(metadata["lastUpdated"], "1970-01-01T00:00:00Z");
    assert!(metadata.get("owner").is_none());
    assert_eq!(result.state["forged"], true);
}

#[tokio::test]
async fn a_guest_cannot_read_files_the_environment_or_the_network() {
    // The host's own environment is full of secrets; none of it may reach the guest.
    let result = run("escape", json!({})).await;
    assert!(result.ok, "{:?}", result.error);
    let report = &result.state;
    assert!(report["file"].get("Err").is_some(), "read a file: {report}");
    assert!(
        report["rootListing"].get("Err").is_some(),
        "listed /: {report}"
    );
    assert!(
        report["network"].get("Err").is_some(),
        "connected: {report}"
    );
    assert_eq!(report["env"], json!([]));
    assert_eq!(report["args"], json!([]));
}

#[tokio::test]
async fn granted_capabilities_are_visible_and_nothing_more() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("hostname"), "granted-file").unwrap();
    let folder = PluginFolder::with(&["escape"]);
    folder.manifest(
        "escape",
        &format!(
            "[capabilities]\nenv = {{ REGION = \"eu\" }}\nfiles = [{{ host = \"{}\", guest = \"/etc\" }}]\n",
            data.path().display()
        ),
    );
    let result = runtime(folder.path())
        .await
        .run("escape", json!({}))
        .await
        .unwrap();
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["env"], json!([["REGION", "eu"]]));
    assert_eq!(result.state["file"]["Ok"], "granted-file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_contained_while_other_executions_keep_succeeding() {
    let rt = runtime_with_all_plugins().await;
    let hostile = [
        ("spin", ErrorKind::Timeout, codes::DEADLINE_EXCEEDED),
        ("memory-bomb", ErrorKind::Resource, codes::MEMORY_LIMIT),
        ("deep-recursion", ErrorKind::Resource, codes::STACK_OVERFLOW),
        ("panic", ErrorKind::Execution, codes::TRAP),
        ("huge-output", ErrorKind::Resource, codes::OUTPUT_TOO_LARGE),
    ];
    let mut attacks = Vec::new();
    for (name, kind, code) in hostile {
        let rt = rt.clone();
        attacks.push(tokio::spawn(async move {
            let result = rt.run(name, json!({})).await.unwrap();
            (name, kind, code, result)
        }));
    }
    let flood = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.run("log-flood", json!({"lines": 5000})).await.unwrap() })
    };
    // Meanwhile, ordinary work goes on and every execution of it succeeds.
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let rt = rt.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    let result = rt.run("increment", json!({ "count": i })).await.unwrap();
                    assert!(result.ok, "worker {worker}: {:?}", result.error);
                    assert_eq!(result.state["count"], i + 1);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("no worker panicked");
    }
    for attack in attacks {
        let (name, kind, code, result) = attack.await.expect("no attack panicked the host");
        let error = error_of(&result);
        assert_eq!(
            (error.kind, error.code.as_deref()),
            (kind, Some(code)),
            "{name}"
        );
    }
    assert!(flood.await.expect("the flood finished").ok);
}

#[tokio::test]
async fn a_fresh_sandbox_never_sees_what_an_earlier_execution_left_in_its_memory() {
    let folder = PluginFolder::with(&["secret-keeper"]);
    secrets_never_survive(runtime(folder.path()).await).await;
}

/// The opt-in reset of written pages only still clears every page a guest wrote (on a
/// machine that does not swap them out meanwhile: see its documentation).
#[tokio::test]
async fn resetting_only_written_pages_still_clears_what_a_guest_left() {
    let folder = PluginFolder::with(&["secret-keeper"]);
    let rt = weir_tests::builder(folder.path())
        .engine_config(weir::EngineConfig {
            reset_written_pages_only: true,
            ..weir_tests::engine_config()
        })
        .build()
        .await
        .expect("the runtime builds");
    rt.start();
    secrets_never_survive(rt).await;
}

async fn secrets_never_survive(rt: weir::Runtime) {
    // Many executions, some at once, so pool slots are reused while others are in use.
    for round in 0..10 {
        let mut runs = tokio::task::JoinSet::new();
        for i in 0..4 {
            let rt = rt.clone();
            runs.spawn(async move {
                let secret = format!("s{round:03}x{i:03}");
                let result = rt
                    .run("secret-keeper", json!({ "secret": secret }))
                    .await
                    .unwrap();
                assert!(result.ok, "{result:?}");
                result.state
            });
        }
        for report in runs.join_all().await {
            assert_eq!(
                report["foundOwn"], true,
                "the scan must see this execution's own secret"
            );
            assert_eq!(
                report["found"],
                json!([]),
                "a secret of another execution survived"
            );
            assert_eq!(report["staticWasSet"], false, "a static survived");
            // The whole linear memory: the 128 KiB stack, the data and the heap.
            assert!(report["scannedBytes"].as_u64().unwrap() >= 160 << 10);
        }
    }
}
