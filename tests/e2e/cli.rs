//! The `weir` command line: result documents on stdout, exit codes 0/1/2 as documented, one
//! line on stderr saying what to fix, and no panic on any input.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use weir_tests::{PluginFolder, cache_dir, fixtures_dir, plugin_bytes, weir_bin};

fn weir(dir: &Path, args: &[&str]) -> Output {
    weir_with_stdin(dir, args, None)
}

fn weir_with_stdin(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(weir_bin())
        .args(args)
        .env("WEIR_PLUGINS", dir)
        .env("WEIR_CACHE_DIR", cache_dir())
        .env_remove("WEIR_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir starts");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).expect("weir reads stdin");
    }
    drop(pipe);
    child.wait_with_output().expect("weir finishes")
}

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// Exit 2: nothing on stdout, and the last stderr line says what to fix.
fn assert_usage_error(output: &Output, needle: &str) {
    assert_eq!(output.status.code(), Some(2), "stderr: {}", stderr(output));
    assert!(
        output.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = stderr(output);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("weir: "), "{stderr}");
    assert!(last.contains(needle), "expected `{needle}` in: {last}");
}

#[test]
fn a_successful_run_prints_the_result_and_exits_0() {
    let folder = PluginFolder::with(&["hello"]);
    let output = weir(
        folder.path(),
        &["run", "hello", "--input", r#"{"user":"Ada"}"#],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let doc = stdout_json(&output);
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["state"]["greeting"], "Hello Ada!");
}

#[test]
fn a_failed_processor_prints_the_result_and_exits_1() {
    let folder = PluginFolder::with(&["validate-email"]);
    let output = weir(
        folder.path(),
        &["run", "validate-email", "--input", r#"{"email":"x"}"#],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let doc = stdout_json(&output);
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["error"]["kind"], "validation");
}

#[test]
fn input_comes_from_a_file_or_stdin() {
    let folder = PluginFolder::with(&["increment"]);
    let file = folder.path().join("input.json");
    std::fs::write(&file, r#"{"count": 9}"#).unwrap();
    let from_file = weir(
        folder.path(),
        &[
            "run",
            "increment",
            "--input",
            &format!("@{}", file.display()),
        ],
    );
    assert_eq!(stdout_json(&from_file)["state"]["count"], 10);
    let from_stdin = weir_with_stdin(
        folder.path(),
        &["run", "increment", "--input", "-"],
        Some(r#"{"count": 41}"#),
    );
    assert_eq!(stdout_json(&from_stdin)["state"]["count"], 42);
}

#[test]
fn a_session_is_recorded_in_the_result_and_the_state() {
    let folder = PluginFolder::with(&["increment"]);
    let output = weir(folder.path(), &["run", "increment", "--session", "s-42"]);
    let doc = stdout_json(&output);
    assert_eq!(doc["execution"]["session"], "s-42");
    assert_eq!(doc["state"]["metadata"]["sessionId"], "s-42");
}

#[test]
fn timeout_ms_lowers_the_timeout() {
    let folder = PluginFolder::with(&["spin"]);
    let output = weir(folder.path(), &["run", "spin", "--timeout-ms", "50"]);
    assert_eq!(output.status.code(), Some(1));
    let doc = stdout_json(&output);
    assert_eq!(doc["error"]["code"], "deadline-exceeded");
    assert!(doc["error"]["message"].as_str().unwrap().contains("50 ms"));
}

#[test]
fn malformed_json_input_is_a_usage_error() {
    let folder = PluginFolder::with(&["hello"]);
    let output = weir(folder.path(), &["run", "hello", "--input", "{not json"]);
    assert_usage_error(&output, "not valid JSON");
}

#[test]
fn a_state_that_is_not_an_object_is_a_usage_error() {
    let folder = PluginFolder::with(&["hello"]);
    let output = weir(folder.path(), &["run", "hello", "--input", "[1,2]"]);
    assert_usage_error(&output, "must be a JSON object");
}

#[test]
fn malformed_host_metadata_in_the_input_is_a_usage_error() {
    let folder = PluginFolder::with(&["hello"]);
    let output = weir(
        folder.path(),
        &["run", "hello", "--input", r#"{"metadata": 5}"#],
    );
    assert_usage_error(&output, "`metadata` belongs to weir");
}

#[test]
fn an_unreadable_input_file_is_a_usage_error() {
    let folder = PluginFolder::with(&["hello"]);
    let output = weir(
        folder.path(),
        &["run", "hello", "--input", "@/no/such/file.json"],
    );
    assert_usage_error(&output, "cannot read the input file");
}

#[test]
fn an_unknown_processor_is_a_usage_error_listing_what_exists() {
    let folder = PluginFolder::with(&["hello", "increment"]);
    let output = weir(folder.path(), &["run", "nope"]);
    assert_usage_error(&output, "available: hello, increment");
}

#[test]
fn a_truncated_plugin_file_is_a_usage_error_with_the_reason() {
    let folder = PluginFolder::new();
    let bytes = plugin_bytes("hello");
    folder.write("hello.wasm", &bytes[..100]);
    let output = weir(folder.path(), &["run", "hello"]);
    assert_usage_error(&output, "was rejected: not a valid WebAssembly component");
}

#[test]
fn a_component_of_another_world_is_a_usage_error() {
    let folder = PluginFolder::new();
    let other = std::fs::read(fixtures_dir().join("other-world.wasm")).unwrap();
    folder.write("other-world.wasm", &other);
    let output = weir(folder.path(), &["run", "other-world"]);
    assert_usage_error(&output, "built for another world");
}

#[test]
fn a_describe_name_that_differs_from_the_file_stem_is_a_usage_error() {
    let folder = PluginFolder::new();
    folder.write("greeter.wasm", &plugin_bytes("hello"));
    let output = weir(folder.path(), &["run", "greeter"]);
    assert_usage_error(&output, "rename the file to `hello.wasm`");
}

#[test]
fn a_broken_file_elsewhere_is_only_a_warning() {
    let folder = PluginFolder::with(&["hello"]);
    folder.write("broken.wasm", b"\0asm garbage");
    let output = weir(folder.path(), &["run", "hello"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("broken.wasm"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_missing_plugins_folder_is_a_usage_error() {
    let output = weir(Path::new("/no/such/folder"), &["run", "hello"]);
    assert_usage_error(&output, "does not exist");
}

#[test]
fn bad_arguments_are_usage_errors() {
    let folder = PluginFolder::with(&["hello"]);
    let missing_name = weir(folder.path(), &["run"]);
    assert_eq!(missing_name.status.code(), Some(2));
    let zero_timeout = weir(folder.path(), &["run", "hello", "--timeout-ms", "0"]);
    assert_eq!(zero_timeout.status.code(), Some(2));
    let bad_filter = weir(folder.path(), &["run", "hello", "--log-level", "[[["]);
    assert_usage_error(&bad_filter, "not a valid filter");
}

#[test]
fn a_log_flood_is_rate_limited() {
    let folder = PluginFolder::with(&["log-flood"]);
    let output = weir(
        folder.path(),
        &[
            "run",
            "log-flood",
            "--log-format",
            "json",
            "--input",
            r#"{"lines":5000}"#,
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    // The guest wrote 15,000 lines (log, stdout, stderr); the default bucket lets about 200
    // through at once plus 100 a second.
    let lines = stderr(&output).lines().count();
    assert!(lines < 2000, "{lines} log lines got through");
    assert!(stderr(&output).contains("dropped guest log lines"));
}

#[test]
fn plugins_list_shows_loaded_and_rejected_files() {
    let folder = PluginFolder::with(&["hello", "increment"]);
    folder.write("broken.wasm", b"nope");
    let output = weir(folder.path(), &["plugins", "list", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let rows = stdout_json(&output);
    let names: Vec<_> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names, ["broken", "hello", "increment"]);
    assert_eq!(rows[0]["status"], "rejected");
    assert!(rows[0]["reason"].as_str().unwrap().contains("not a valid"));
    assert_eq!(rows[1]["version"], "1.0.0");
    let table = weir(folder.path(), &["plugins", "list"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("rejected: not a valid"), "{table}");
}

#[test]
fn plugins_inspect_shows_limits_world_and_digest() {
    let folder = PluginFolder::with(&["spin"]);
    folder.manifest("spin", "[limits]\nfuel = 1000\n[config]\nmode = \"fast\"\n");
    let output = weir(folder.path(), &["plugins", "inspect", "spin"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let doc = stdout_json(&output);
    assert_eq!(doc["world"], "weir:processor/processor@0.1.0");
    assert_eq!(doc["digest"].as_str().unwrap().len(), 64);
    assert_eq!(doc["limits"]["timeoutMs"], 500, "declared by spin");
    assert_eq!(doc["limits"]["fuel"], 1000, "granted by the manifest");
    assert_eq!(doc["manifest"]["config"]["mode"], "fast");
    let unknown = weir(folder.path(), &["plugins", "inspect", "nope"]);
    assert_usage_error(&unknown, "no plugin named `nope`");
}

#[test]
fn without_room_for_the_pool_weir_falls_back_to_on_demand_allocation() {
    let folder = PluginFolder::with(&["hello"]);
    // 8 GB of address space: far less than the pool reserves, enough for one sandbox.
    let output = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -v 8000000 && exec "$0" "$@""#)
        .arg(weir_bin())
        .args(["run", "hello", "--input", r#"{"user":"Ada"}"#])
        .env("WEIR_PLUGINS", folder.path())
        .env("WEIR_CACHE_DIR", cache_dir())
        .env_remove("WEIR_LOG")
        .output()
        .expect("sh runs");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("falling back to on-demand"),
        "{}",
        stderr(&output)
    );
    assert_eq!(stdout_json(&output)["state"]["greeting"], "Hello Ada!");
}

#[test]
fn weir_run_runs_workflows_too() {
    let folder = PluginFolder::with(&["increment", "double", "add-ten"]);
    folder.write(
        "workflows.toml",
        b"[workflow.calc]\nchain = [\"increment\", \"double\", \"add-ten\"]\n",
    );
    let output = weir(folder.path(), &["run", "calc", "--input", r#"{"count":5}"#]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout_json(&output)["state"]["count"], 22);
}

#[test]
fn workflows_check_passes_a_valid_file_and_points_at_each_problem() {
    let folder = PluginFolder::with(&["increment"]);
    folder.write("workflows.toml", b"[workflow.a]\nchain = [\"increment\"]\n");
    let ok = weir(folder.path(), &["workflows", "check"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("1 workflows are valid"));

    folder.write(
        "workflows.toml",
        b"[workflow.a]\nchain = [\"increment\"]\n\n[workflow.b]\nchain = [\"nope\"]\n\n[workflow.c]\nchain = [\"c\"]\n",
    );
    let bad = weir(folder.path(), &["workflows", "check"]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = stderr(&bad);
    assert!(
        stderr.contains("workflow `b`: ")
            && stderr.contains("workflows.toml:5: step 1 refers to `nope`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("workflow `c`: ")
            && stderr.contains("workflows.toml:7: it contains itself: c → c"),
        "{stderr}"
    );

    let list = weir(folder.path(), &["workflows", "list", "--json"]);
    let rows = stdout_json(&list);
    assert_eq!(rows[0]["name"], "a");
    assert_eq!(rows[0]["status"], "valid");
    assert_eq!(rows[0]["definition"]["kind"], "chain");
    assert_eq!(rows[1]["status"], "invalid");
}

#[test]
fn running_an_invalid_workflow_is_a_usage_error_with_the_reason() {
    let folder = PluginFolder::with(&["increment"]);
    folder.write("workflows.toml", b"[workflow.b]\nchain = [\"nope\"]\n");
    let output = weir(folder.path(), &["run", "b"]);
    assert_usage_error(&output, "the workflow `b` is invalid");
}

#[test]
fn a_batch_takes_a_bare_array_and_prints_ok_and_items() {
    let folder = PluginFolder::with(&["increment"]);
    folder.write(
        "workflows.toml",
        b"[workflow.many]\nbatch = \"increment\"\n",
    );
    let output = weir(
        folder.path(),
        &[
            "run",
            "many",
            "--input",
            r#"[{"count":1},{"count":2},"not a state"]"#,
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let doc = stdout_json(&output);
    assert_eq!(doc["ok"], true);
    let items = doc["items"].as_array().unwrap();
    assert_eq!(items[0]["state"]["count"], 2);
    assert_eq!(items[1]["state"]["count"], 3);
    assert_eq!(items[2]["error"]["code"], "invalid-input");
}

/// The first line that satisfies `wanted`, within a generous timeout.
fn wait_for_line(
    lines: &std::sync::mpsc::Receiver<String>,
    wanted: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return line,
            Ok(_) => {}
            Err(e) => panic!("the awaited line never came: {e}"),
        }
    }
}

#[test]
fn serve_applies_folder_changes_and_prints_events_as_json_lines() {
    let folder = PluginFolder::with(&["hello"]);
    let mut child = Command::new(weir_bin())
        .args(["serve", "--events", "json", "--grace-ms", "1000"])
        .env("WEIR_PLUGINS", folder.path())
        .env("WEIR_CACHE_DIR", cache_dir())
        .env_remove("WEIR_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir serve starts");
    let stdout = weir_tests::lines_of(child.stdout.take().unwrap());
    let stderr = weir_tests::lines_of(child.stderr.take().unwrap());
    wait_for_line(&stderr, |l| l.contains("serving"));

    folder.add("increment");
    let loaded = wait_for_line(&stdout, |l| l.contains("plugin:loaded"));
    let event: Value = serde_json::from_str(&loaded).expect("one JSON object per line");
    assert_eq!(event["event"], "plugin:loaded");
    assert_eq!(event["processor"], "increment");
    assert_eq!(event["data"]["version"], "1.0.0");

    std::fs::remove_file(folder.path().join("hello.wasm")).unwrap();
    let removed = wait_for_line(&stdout, |l| l.contains("plugin:removed"));
    assert!(removed.contains("\"processor\":\"hello\""), "{removed}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM stops it cleanly");
}
