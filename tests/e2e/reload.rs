//! Hot reload: the plugins folder changes under a serving runtime — files added, replaced
//! (renamed over or rewritten in place), broken, removed — and every change applies without
//! a restart and without failing an execution.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir::{EventKind, RuntimeError};
use weir_tests::{PluginFolder, next_event, plugin_bytes, runtime};

const DEBOUNCE: Duration = Duration::from_millis(30);

fn fixture(name: &str) -> Vec<u8> {
    weir_tests::fixture_bytes(name)
}

/// The next `kind` event about `name`.
async fn next_plugin_event(
    events: &mut weir::Subscription,
    kind: EventKind,
    name: &str,
) -> Arc<weir::Event> {
    next_event(events, |e| {
        e.event == kind && e.processor.as_deref() == Some(name)
    })
    .await
}

/// Replaces `path`'s contents the way a deploy tool might: `how` 0 renames a finished file
/// over it, 1 rewrites it in place in two writes (as `cp` does), 2 writes it in one go.
fn replace(path: &std::path::Path, bytes: &[u8], how: usize) {
    use std::io::Write;
    match how % 3 {
        0 => {
            let tmp = path.with_extension("wasm.part");
            std::fs::write(&tmp, bytes).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        1 => {
            let mut file = std::fs::File::create(path).unwrap();
            let (first, rest) = bytes.split_at(bytes.len() / 2);
            file.write_all(first).unwrap();
            file.flush().unwrap();
            file.write_all(rest).unwrap();
        }
        _ => std::fs::write(path, bytes).unwrap(),
    }
}

#[derive(Debug, Clone)]
struct Swap {
    /// Just before the new file was written.
    written: Instant,
    /// When the event saying it serves arrived (the swap happened in between).
    confirmed: Instant,
    version: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_plugin_under_load_fails_no_execution() {
    let (one, two) = (fixture("counter-one"), fixture("counter-two"));
    let folder = PluginFolder::new();
    let path = folder.path().join("counter.wasm");
    folder.write("counter.wasm", &one);
    let rt = runtime(folder.path()).await;
    let mut events = rt.subscribe();
    let _watcher = rt.watch(folder.path(), DEBOUNCE).unwrap();

    let begun = Instant::now();
    let swaps = Arc::new(Mutex::new(vec![Swap {
        written: begun,
        confirmed: begun,
        version: "1.0.0",
    }]));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (rt, stop) = (rt.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let result = rt.run("counter", json!({"count": 0})).await.unwrap();
                    assert!(
                        result.ok,
                        "an execution failed during a reload: {:?}",
                        result.error
                    );
                    let version = result.execution.version.clone().unwrap();
                    seen.push((started, Instant::now(), version));
                }
                seen
            })
        })
        .collect();

    for i in 0..20 {
        if i == 7 || i == 14 {
            // A broken deploy: half a file. It is rejected and the current version serves on.
            let written = Instant::now();
            replace(&path, &one[..one.len() / 3], 2);
            let rejected =
                next_plugin_event(&mut events, EventKind::PluginRejected, "counter").await;
            assert!(
                rejected.data.as_ref().unwrap()["reason"]
                    .as_str()
                    .unwrap()
                    .contains("not a valid")
            );
            assert!(written.elapsed() < Duration::from_secs(20));
        }
        let (bytes, version) = if i % 2 == 0 {
            (&two, "2.0.0")
        } else {
            (&one, "1.0.0")
        };
        let written = Instant::now();
        replace(&path, bytes, i);
        let event = next_plugin_event(&mut events, EventKind::PluginReloaded, "counter").await;
        assert_eq!(event.data.as_ref().unwrap()["version"], version);
        swaps.lock().unwrap().push(Swap {
            written,
            confirmed: Instant::now(),
            version,
        });
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swaps.lock().unwrap().clone();
    let mut executions = 0;
    for worker in workers {
        for (started, ended, version) in worker.await.unwrap() {
            executions += 1;
            // The version must have been live at some moment between start and end: the one
            // confirmed before it started, or one whose swap may have happened meanwhile.
            let live_at_start = swaps.iter().rev().find(|s| s.confirmed <= started).unwrap();
            let possible = std::iter::once(live_at_start.version).chain(
                swaps
                    .iter()
                    .filter(|s| s.written <= ended && s.confirmed >= started)
                    .map(|s| s.version),
            );
            assert!(
                possible.clone().any(|v| v == version),
                "served by {version}, but only {:?} were live then",
                possible.collect::<Vec<_>>()
            );
        }
    }
    assert!(
        executions > 20,
        "the workers kept running ({executions} executions)"
    );
    // After the last swap only the newest version answers.
    let newest = swaps.last().unwrap().version;
    for _ in 0..5 {
        let result = rt.run("counter", json!({})).await.unwrap();
        assert_eq!(result.execution.version.as_deref(), Some(newest));
    }
}

#[tokio::test]
async fn every_kind_of_broken_file_is_rejected_and_the_old_version_serves_on() {
    let folder = PluginFolder::new();
    let path = folder.path().join("counter.wasm");
    folder.write("counter.wasm", &fixture("counter-one"));
    let rt = runtime(folder.path()).await;
    let mut events = rt.subscribe();
    let _watcher = rt.watch(folder.path(), DEBOUNCE).unwrap();
    let one = fixture("counter-one");
    let broken: [(&str, Vec<u8>, &str); 3] = [
        (
            "truncated",
            one[..one.len() / 2].to_vec(),
            "not a valid WebAssembly component",
        ),
        (
            "another world",
            fixture("other-world"),
            "built for another world",
        ),
        (
            "another processor's name",
            plugin_bytes("hello"),
            "describes itself as `hello`",
        ),
    ];
    for (what, bytes, reason) in broken {
        std::fs::write(&path, &bytes).unwrap();
        let event = next_plugin_event(&mut events, EventKind::PluginRejected, "counter").await;
        let data = event.data.as_ref().unwrap();
        assert!(
            data["reason"].as_str().unwrap().contains(reason),
            "{what}: {data}"
        );
        assert!(
            data["servingDigest"].is_string(),
            "{what}: the old version still serves"
        );
        let result = rt.run("counter", json!({"count": 1})).await.unwrap();
        assert_eq!(
            result.state["servedBy"], 1,
            "{what}: the old version answers"
        );
        assert!(rt.catalog().rejected["counter"].reason.contains(reason));
    }
    // A good file again clears the rejection.
    std::fs::write(&path, fixture("counter-two")).unwrap();
    next_plugin_event(&mut events, EventKind::PluginReloaded, "counter").await;
    assert!(!rt.catalog().rejected.contains_key("counter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_plugin_refuses_new_work_while_running_work_finishes() {
    let folder = PluginFolder::with(&["sleep"]);
    let rt = runtime(folder.path()).await;
    let mut events = rt.subscribe();
    let _watcher = rt.watch(folder.path(), DEBOUNCE).unwrap();
    let running = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.run("sleep", json!({"ms": 250})).await })
    };
    next_plugin_event(&mut events, EventKind::ProcessorStarted, "sleep").await;
    std::fs::remove_file(folder.path().join("sleep.wasm")).unwrap();
    let removed = next_plugin_event(&mut events, EventKind::PluginRemoved, "sleep").await;
    assert!(removed.data.as_ref().unwrap()["oldDigest"].is_string());
    assert!(matches!(
        rt.run("sleep", json!({})).await,
        Err(RuntimeError::NotFound { .. })
    ));
    let finished = running.await.unwrap().unwrap();
    assert!(
        finished.ok,
        "in-flight work finishes on the version it started with"
    );
}

#[tokio::test]
async fn new_plugins_and_manifest_changes_apply_without_a_restart() {
    let folder = PluginFolder::new();
    let rt = runtime(folder.path()).await;
    let mut events = rt.subscribe();
    let _watcher = rt.watch(folder.path(), DEBOUNCE).unwrap();
    folder.add("hello");
    let loaded = next_plugin_event(&mut events, EventKind::PluginLoaded, "hello").await;
    let data = loaded.data.as_ref().unwrap();
    assert_eq!(data["version"], "1.0.0");
    assert!(data["oldDigest"].is_null());
    assert!(data["compileMs"].as_f64().unwrap() >= 0.0);
    assert_eq!(
        rt.run("hello", json!({"user": "Ada"})).await.unwrap().state["greeting"],
        "Hello Ada!"
    );
    // An operator changes the plugin's settings: the same code, a new manifest.
    folder.manifest("hello", "[config]\ngreeting = \"Hi\"\n");
    let reloaded = next_plugin_event(&mut events, EventKind::PluginReloaded, "hello").await;
    let data = reloaded.data.as_ref().unwrap();
    assert_eq!(
        data["digest"], data["oldDigest"],
        "same component, new manifest"
    );
    assert_eq!(
        rt.run("hello", json!({"user": "Ada"})).await.unwrap().state["greeting"],
        "Hi Ada!"
    );
}

#[tokio::test]
async fn workflows_are_rechecked_when_the_file_or_their_processors_change() {
    let folder = PluginFolder::with(&["increment", "double"]);
    let rt = runtime(folder.path()).await;
    let mut events = rt.subscribe();
    let _watcher = rt.watch(folder.path(), DEBOUNCE).unwrap();
    folder.write(
        "workflows.toml",
        b"[workflow.calc]\nchain = [\"increment\", \"double\"]\n\n[workflow.inc]\nchain = [\"increment\"]\n",
    );
    let reloaded = next_event(&mut events, |e| e.event == EventKind::WorkflowsReloaded).await;
    assert_eq!(
        reloaded.data.as_ref().unwrap()["valid"],
        json!(["calc", "inc"])
    );
    assert_eq!(
        rt.run("calc", json!({"count": 1})).await.unwrap().state["count"],
        4
    );
    std::fs::remove_file(folder.path().join("double.wasm")).unwrap();
    next_plugin_event(&mut events, EventKind::PluginRemoved, "double").await;
    let reason = rt.catalog().invalid_workflows["calc"].reason.clone();
    assert!(reason.contains("refers to `double`"), "{reason}");
    assert!(
        rt.run("inc", json!({})).await.unwrap().ok,
        "the others keep serving"
    );
    let value: Value = rt.run("inc", json!({"count": 1})).await.unwrap().state;
    assert_eq!(value["count"], 2);
}
