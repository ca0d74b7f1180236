//! Plugins written in Python, JavaScript, C and Go (built by `weir build`'s library from
//! `plugins/`) run like Rust ones, alone and mixed in one workflow; their failures are
//! typed; `weir new` + `weir build` make a working plugin in every language.
//!
//! Their plugins need the pinned toolchains (`cargo xtask tools`): without them the build
//! script leaves the plugins out and these tests are ignored with that reason (under CI
//! the build fails instead).

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use weir::{ErrorKind, Workflow};
use weir_tests::{PluginFolder, run_alone as run, runtime, weir_bin};

/// CRC-32 (IEEE, as zlib computes it), to check the C plugin against.
fn crc32(bytes: &[u8]) -> String {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & 0u32.wrapping_sub(crc & 1));
        }
    }
    format!("{:08x}", !crc)
}

#[tokio::test]
#[cfg_attr(
    weir_no_language_plugins,
    ignore = "the Python, JavaScript, C and Go toolchains are not installed: `cargo xtask tools`"
)]
async fn python_text_stats_counts_words_lines_and_characters() {
    let result = run(
        "text-stats",
        json!({"text": "one two\nthree ünï", "keep": 1}),
    )
    .await;
    assert!(result.ok, "{result:?}");
    assert_eq!(
        result.state["stats"],
        json!({"words": 4, "lines": 2, "characters": 17})
    );
    assert_eq!(result.state["keep"], 1, "the output merges into the input");
    assert_eq!(result.execution.version.as_deref(), Some("0.1.0"));
}

#[tokio::test]
#[cfg_attr(
    weir_no_language_plugins,
    ignore = "the Python, JavaScript, C and Go toolchains are not installed: `cargo xtask tools`"
)]
async fn a_python_exception_is_an_execution_error_with_the_python_message() {
    let result = run("text-stats", json!({"text": "x", "fail": "on purpose"})).await;
    assert!(!result.ok);
    let error = result.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::Execution);
    assert_eq!(error.code.as_deref(), Some("python-exception"));
    assert_eq!(error.message, "RuntimeError: asked to fail: on purpose");
    let traceback = error.details.expect("details")["traceback"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(traceback.contains("app.py"), "{traceback}");
}

#[tokio::test]
#[cfg_attr(
    weir_no_language_plugins,
    ignore = "the Python, JavaScript, C and Go toolchains are not installed: `cargo xtask tools`"
)]
async fn a_python_typed_error_keeps_its_kind_and_code() {
    let result = run("text-stats", json!({"text": 5})).await;
    let error = result.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::Validation);
    assert_eq!(error.code.as_deref(), Some("missing-text"));
}

#[tokio::test]
#[cfg_attr(
    weir_no_language_plugins,
    ignore = "the Python, JavaScript, C and Go toolchains are not installed: `cargo xtask tools`"
)]
async fn javascript_validate_json_lists_every_violation() {
    let schema = json!({
        "type": "object",
        "required": ["id", "tags"],
        "properties": {
            "id": {"type": "integer", "minimum": 1},
            "name": {"type": "string", "minLength": 2, "pattern": "^[A-Z]"},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}
        },
        "additionalProperties": false
    });
    let good = run(
        "validate-json",
        json!({"schema": schema, "document": {"id": 3, "name": "Ada", "tags": ["a"]}}),
    )
    .await;
    assert!(good.ok, "{good:?}");
    assert_eq!(good.state["valid"], true);
    assert_eq!(good.state["errors"], json!([]));

    let bad = run(
        "validate-json",
        json!({"schema": schema, "document": {"id": 0, "name": "ada", "tags": ["a", "c"], "x": 1}}),
    )
    .await;
    assert!(bad.ok, "{bad:?}");
    assert_eq!(bad.state["valid"], false);
    let paths: Vec<&str> = bad.state["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["/id", "/name", "/tags/1", "/x"],
        "{}",
        bad.state["errors"]
    );
}

#[tokio::test]
#[cfg_attr(
    weir_no_language_plugins,
    ignore = "the Python, JavaScript, C and Go toolchains are not installed: `cargo xtask tools`"
)]
async fn a_javascript_exception_is_an_execution_error_with_its_name_and_message() {
    // `required` that is not a list makes the plugin's own code throw a TypeError.
    let result = run(
        "validate-json",
        json!({"schema": {"required": 5}, "document": {}}),
    )
    .await;
    let error = result.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::Execution);
    assert_eq!(error.code.as_deref(), Some("js-exception"));
    assert!(
        error.message.starts_with("TypeError: "),
        "{}",
        error.message
    );
}

#[tokio::test]
#[cfg_attr(
    weir_no_language_plugins,
    ignore = "the Python, JavaScript, C and Go toolchains are not installed: `cargo xtask tools`"
)]
async fn a_javascript_typed_error_keeps_its_kind_and_code() {
    let result = run(
        "validate-json",
        json!({"schema": {"type": "objet"}, "document": 1}),
    )
    .await;
    let error = result.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::Validation);
    assert_eq!(error.code.as_deref(), Some("invalid-schema"));
    assert!(error.message.contains("objet"), "{}", error.message);

    // An invalid regular expression in the schema surfaces as the guest threw it.
    let result = run(
        "validate-json",
        json!({"schema": {"pattern": "("}, "document": "x"}),
    )
    .await;
    let error = result.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::Validation);
    assert!(
        error.message.starts_with("invalid pattern"),
        "{}",
        error.message
    );
}

#[tokio::test]
#[cfg_attr(
    weir_no_language_plugins,
    ignore = "the Python, JavaScript, C and Go toolchains are not installed: `cargo xtask tools`"
)]
async fn c_checksum_computes_the_crc32_of_the_text() {
    for text in ["hello world", "", "héllo 😀 \"quoted\" \\ back\nslash"] {
        let result = run("checksum", json!({"text": text, "crc32": "stale", "n": 1})).await;
        assert!(result.ok, "{result:?}");
        assert_eq!(result.state["crc32"], crc32(text.as_bytes()), "{text:?}");
        assert_eq!(result.state["text"], text);
        assert_eq!(result.state["n"], 1);
    }
    // The field is found at the top level only, and replaced wherever it sits (the host
    // sends keys sorted: here `crc32` is a middle member), with decoys nested and in strings.
    let input = json!({
        "a": {"text": "nested decoy", "crc32": "nested"},
        "b": "\"text\":\"in a string\",\"crc32\":1",
        "crc32": "old",
        "list": [{"text": "in a list"}],
        "text": "real"
    });
    let result = run("checksum", input.clone()).await;
    assert!(result.ok, "{result:?}");
    assert_eq!(result.state["crc32"], crc32(b"real"));
    for key in ["a", "b", "list", "text"] {
        assert_eq!(result.state[key], input[key], "{key} is kept as it was");
    }
    let result = run("checksum", json!({"nope": true})).await;
    let error = result.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::Validation);
    assert_eq!(error.code.as_deref(), Some("missing-text"));
}

#[tokio::test]
#[cfg_attr(
    weir_no_language_plugins,
    ignore = "the Python, JavaScript, C and Go toolchains are not installed: `cargo xtask tools`"
)]
async fn go_pick_route_chooses_a_route_and_reads_its_operator_setting() {
    for (input, route) in [
        (json!({"amount": 10}), "standard"),
        (json!({"amount": 10, "country": "FR"}), "international"),
        (json!({"amount": 5000, "country": "FR"}), "review"),
        (json!({"amount": 1, "urgent": true}), "review"),
    ] {
        let result = run("pick-route", input.clone()).await;
        assert!(result.ok, "{result:?}");
        assert_eq!(result.state["route"], route, "{input}");
    }
    // Fields the Go processor does not touch keep their exact JSON, beyond float64 too.
    let result = run(
        "pick-route",
        json!({"amount": 1, "big": 9_007_199_254_740_993_u64}),
    )
    .await;
    assert_eq!(result.state["big"], 9_007_199_254_740_993_u64, "{result:?}");
    let result = run("pick-route", json!({"amount": "lots"})).await;
    assert_eq!(
        result.error.expect("an error").code.as_deref(),
        Some("missing-amount")
    );

    // The operator's manifest lowers the review limit.
    let folder = PluginFolder::with(&["pick-route"]);
    folder.manifest("pick-route", "[config]\nreviewLimit = \"5\"\n");
    let result = runtime(folder.path())
        .await
        .run("pick-route", json!({"amount": 10}))
        .await
        .unwrap();
    assert_eq!(result.state["route"], "review", "{result:?}");
}

#[tokio::test]
#[cfg_attr(
    weir_no_language_plugins,
    ignore = "the Python, JavaScript, C and Go toolchains are not installed: `cargo xtask tools`"
)]
async fn a_chain_across_five_languages_gives_the_combined_state() {
    let folder = PluginFolder::with(&[
        "word-count",
        "text-stats",
        "validate-json",
        "checksum",
        "pick-route",
    ]);
    let rt = runtime(folder.path()).await;
    rt.register(Workflow::chain(
        "polyglot",
        [
            "word-count",
            "text-stats",
            "validate-json",
            "checksum",
            "pick-route",
        ],
    ))
    .unwrap();
    let text = "the quick brown fox";
    let result = rt
        .run(
            "polyglot",
            json!({
                "text": text,
                "amount": 20,
                "country": "DE",
                "schema": {"type": "object", "required": ["sku"]},
                "document": {"sku": "A-1"}
            }),
        )
        .await
        .unwrap();
    assert!(result.ok, "{result:?}");
    let state = &result.state;
    assert_eq!(state["words"], 4, "Rust");
    assert_eq!(state["stats"]["characters"], text.len(), "Python");
    assert_eq!(state["valid"], true, "JavaScript");
    assert_eq!(state["crc32"], crc32(text.as_bytes()), "C");
    assert_eq!(state["route"], "international", "Go");
    assert_eq!(state["metadata"]["version"], 5, "one revision per step");
}

#[tokio::test]
#[cfg_attr(
    weir_no_language_plugins,
    ignore = "the Python, JavaScript, C and Go toolchains are not installed: `cargo xtask tools`"
)]
async fn a_failing_step_in_another_language_stops_the_chain_with_its_typed_error() {
    let folder = PluginFolder::with(&["checksum", "text-stats", "word-count"]);
    let rt = runtime(folder.path()).await;
    rt.register(Workflow::chain(
        "mixed",
        ["checksum", "text-stats", "word-count"],
    ))
    .unwrap();
    let result = rt
        .run("mixed", json!({"text": "a b", "fail": "in python"}))
        .await
        .unwrap();
    assert!(!result.ok);
    let error = result.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::Execution);
    assert!(
        error
            .message
            .contains("RuntimeError: asked to fail: in python"),
        "{}",
        error.message
    );
    assert_eq!(
        result.state["crc32"],
        crc32(b"a b"),
        "the last good state is the C step's"
    );
    assert!(result.state.get("words").is_none());
}

#[tokio::test]
#[cfg_attr(
    weir_no_language_plugins,
    ignore = "the Python, JavaScript, C and Go toolchains are not installed: `cargo xtask tools`"
)]
async fn a_python_guest_gets_no_files_environment_or_network_but_has_clocks_and_randomness() {
    let result = run("escape-py", json!({})).await;
    assert!(result.ok, "{result:?}");
    let report = &result.state;
    for (path, outcome) in report["files"].as_object().unwrap() {
        assert!(
            outcome.get("error").is_some(),
            "{path} was readable: {outcome}"
        );
    }
    assert!(
        report["rootListing"].get("error").is_some(),
        "{}",
        report["rootListing"]
    );
    assert_eq!(report["env"], json!({}), "no environment is granted");
    assert!(
        report["network"].get("error").is_some(),
        "{}",
        report["network"]
    );
    assert_eq!(report["clock"], true);
    assert_eq!(report["random"], true);
}

#[tokio::test]
#[cfg_attr(
    weir_no_language_plugins,
    ignore = "the Python, JavaScript, C and Go toolchains are not installed: `cargo xtask tools`"
)]
async fn plugins_of_every_language_load_from_the_compile_cache_on_the_second_start() {
    let names = ["text-stats", "validate-json", "checksum", "pick-route"];
    let folder = PluginFolder::with(&names);
    // The first start compiles (or finds the shared test cache warm); the second must not compile.
    drop(runtime(folder.path()).await);
    let rt = runtime(folder.path()).await;
    for name in names {
        let plugin = rt.plugin(name).expect("loaded");
        assert!(plugin.compiled_from_cache(), "{name} was compiled again");
    }
}

/// Runs `weir` with `args` in `dir`; returns stdout, or panics with stderr.
fn weir(dir: &Path, args: &[&str]) -> String {
    let output = Command::new(weir_bin())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("weir runs");
    assert!(
        output.status.success(),
        "weir {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
#[cfg_attr(
    weir_no_language_plugins,
    ignore = "the Python, JavaScript, C and Go toolchains are not installed: `cargo xtask tools`"
)]
fn weir_new_then_weir_build_makes_a_working_plugin_in_every_language() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    // Rust projects share the test plugins' target dir, so weir-sdk is not compiled again.
    // (WEIR_TEST_PLUGINS is <target>/debug/build/weir-tests-*/out/plugins.)
    let cargo_target = Path::new(env!("WEIR_TEST_PLUGINS"))
        .ancestors()
        .nth(5)
        .map(|t| t.join("wasm-plugins"));
    for lang in ["rust", "python", "js", "c", "go"] {
        let name = format!("greet-{lang}");
        let mut new = Command::new(weir_bin());
        new.current_dir(dir.path())
            .args(["new", &name, "--lang", lang]);
        let status = new.status().unwrap();
        assert!(status.success(), "weir new {name} --lang {lang}");
        let mut build = Command::new(weir_bin());
        build
            .current_dir(dir.path())
            .args(["build", &name, "--out", "plugins", "--cache-dir"])
            .arg(weir_tests::cache_dir());
        for path in std::env::split_paths(env!("WEIR_TEST_TOOLS")) {
            build.arg("--tools").arg(path);
        }
        if let Some(target) = &cargo_target {
            build.env("CARGO_TARGET_DIR", target);
        }
        let output = build.output().unwrap();
        assert!(
            output.status.success(),
            "weir build {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report[0]["name"], name.as_str());
        assert_eq!(report[0]["lang"], lang);
        assert!(plugins.join(format!("{name}.wasm")).is_file());
    }
    for lang in ["rust", "python", "js", "c", "go"] {
        let name = format!("greet-{lang}");
        let out = weir(
            dir.path(),
            &[
                "run",
                &name,
                "--plugins",
                "plugins",
                "--log-format",
                "off",
                "--input",
                r#"{"name":"Ada"}"#,
            ],
        );
        let doc: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc["state"]["greeting"], "Hello, Ada!", "{lang}: {doc}");
        // Every template refuses a blank name with the same typed error.
        let output = Command::new(weir_bin())
            .current_dir(dir.path())
            .args(["run", &name, "--plugins", "plugins", "--log-format", "off"])
            .args(["--input", r#"{"name":"  "}"#])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{lang}");
        let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(doc["error"]["kind"], "validation", "{lang}: {doc}");
        assert_eq!(doc["error"]["code"], "blank-name", "{lang}: {doc}");
    }
}

#[test]
fn weir_build_explains_a_folder_that_is_not_a_project() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(weir_bin())
        .current_dir(dir.path())
        .args(["build", "."])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("weir-plugin.toml") && stderr.contains("weir new"),
        "{stderr}"
    );
}
