//! Plugin files that cannot serve are rejected with a reason that says what to fix, and the
//! rest of the folder keeps working.

use serde_json::json;
use weir_tests::{PluginFolder, builder, engine_config, fixtures_dir, plugin_bytes, runtime};

fn reason(rt: &weir::Runtime, name: &str) -> String {
    let catalog = rt.catalog();
    let rejected = catalog
        .rejected
        .get(name)
        .unwrap_or_else(|| panic!("`{name}` should be rejected; catalog: {catalog:?}"));
    rejected.reason.clone()
}

/// Asserts `hello` still serves beside whatever was rejected.
async fn assert_hello_serves(rt: &weir::Runtime) {
    let result = rt.run("hello", json!({"user": "Ada"})).await.unwrap();
    assert!(result.ok, "{:?}", result.error);
}

#[tokio::test]
async fn a_truncated_file_is_rejected() {
    let folder = PluginFolder::with(&["hello"]);
    let bytes = plugin_bytes("increment");
    folder.write("increment.wasm", &bytes[..bytes.len() / 2]);
    let rt = runtime(folder.path()).await;
    assert!(reason(&rt, "increment").contains("not a valid WebAssembly component"));
    assert!(rt.plugin("increment").is_none());
    assert_hello_serves(&rt).await;
}

#[tokio::test]
async fn a_component_of_another_world_is_rejected() {
    let folder = PluginFolder::with(&["hello"]);
    let other = std::fs::read(fixtures_dir().join("other-world.wasm")).unwrap();
    folder.write("other-world.wasm", &other);
    let rt = runtime(folder.path()).await;
    let reason = reason(&rt, "other-world");
    assert!(reason.contains("built for another world"), "{reason}");
    assert!(reason.contains("wasi:cli/run"), "{reason}");
    assert_hello_serves(&rt).await;
}

#[tokio::test]
async fn a_describe_name_that_differs_from_the_file_stem_is_rejected() {
    let folder = PluginFolder::with(&["hello"]);
    folder.write("greeter.wasm", &plugin_bytes("hello"));
    let rt = runtime(folder.path()).await;
    let reason = reason(&rt, "greeter");
    assert!(reason.contains("describes itself as `hello`"), "{reason}");
    assert!(reason.contains("greeter.wasm"), "{reason}");
    assert_hello_serves(&rt).await;
}

#[tokio::test]
async fn a_file_name_that_is_not_a_processor_name_is_rejected() {
    let folder = PluginFolder::with(&["hello"]);
    folder.write("Hello_World.wasm", &plugin_bytes("hello"));
    let rt = runtime(folder.path()).await;
    assert!(reason(&rt, "Hello_World").contains("not a valid processor name"));
}

#[tokio::test]
async fn an_invalid_manifest_rejects_its_plugin_and_names_the_line() {
    let folder = PluginFolder::with(&["hello", "increment"]);
    folder.manifest("increment", "[limits]\ntimeout_ms = 5\nbogus = 1\n");
    let rt = runtime(folder.path()).await;
    let reason = reason(&rt, "increment");
    assert!(reason.contains("increment.toml"), "{reason}");
    assert!(reason.contains("line 3"), "{reason}");
    assert_hello_serves(&rt).await;
}

#[tokio::test]
async fn files_that_are_not_wasm_are_ignored() {
    let folder = PluginFolder::with(&["hello"]);
    folder.write("README.md", b"notes");
    let rt = runtime(folder.path()).await;
    assert_eq!(rt.catalog().names(), vec!["hello"]);
    assert!(rt.catalog().rejected.is_empty());
}

#[tokio::test]
async fn a_missing_plugins_folder_is_an_error() {
    let missing = tempfile::tempdir().unwrap().path().join("nope");
    let err = builder(&missing).build().await.unwrap_err();
    assert!(matches!(err, weir::Error::PluginsDir { .. }), "{err}");
}

#[tokio::test]
async fn a_restart_loads_compiled_code_from_the_cache() {
    let folder = PluginFolder::with(&["hello"]);
    let cache = tempfile::tempdir().unwrap();
    let build = || {
        weir::Runtime::builder()
            .plugins_dir(folder.path())
            .engine_config(weir::EngineConfig {
                cache_dir: Some(cache.path().join("compiled")),
                ..engine_config()
            })
            .build()
    };
    let first = build().await.unwrap();
    assert!(!first.plugin("hello").unwrap().compiled_from_cache());
    let second = build().await.unwrap();
    second.start();
    assert!(second.plugin("hello").unwrap().compiled_from_cache());
    assert_hello_serves(&second).await;
}

#[tokio::test]
async fn an_unknown_name_is_a_typed_error_naming_what_exists() {
    let folder = PluginFolder::with(&["hello"]);
    let rt = runtime(folder.path()).await;
    match rt.run("nope", json!({})).await {
        Err(weir::RuntimeError::NotFound { name, reason }) => {
            assert_eq!(name, "nope");
            assert!(reason.contains("available: hello"), "{reason}");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn a_state_that_is_not_an_object_is_a_validation_error() {
    let folder = PluginFolder::with(&["hello"]);
    let rt = runtime(folder.path()).await;
    let result = rt.run("hello", json!([1, 2])).await.unwrap();
    let error = result.error.expect("an error");
    assert_eq!(error.kind, weir::ErrorKind::Validation);
    assert_eq!(error.code.as_deref(), Some(weir::codes::INVALID_INPUT));
    assert_eq!(result.execution.attempts, 0);
}

#[tokio::test]
async fn load_plugin_adds_a_plugin_to_a_running_runtime() {
    let folder = PluginFolder::with(&["hello"]);
    let rt = runtime(folder.path()).await;
    assert!(rt.plugin("increment").is_none());
    folder.add("increment");
    let plugin = rt
        .load_plugin(folder.path().join("increment.wasm"))
        .await
        .unwrap();
    assert_eq!(plugin.name(), "increment");
    let result = rt.run("increment", json!({"count": 1})).await.unwrap();
    assert_eq!(result.state["count"], 2);
}
