//! `cargo xtask <task>`: the project's tasks, in Rust so they run the same everywhere.
//!
//! - `tools`: install the pinned compilers of the Python, JavaScript, C and Go plugins
//!   (componentize-py, componentize-js, zig, Go) into `~/.cache/weir/tools`;
//! - `plugins`: build every example and test plugin, in every language, into `plugins/dist/`
//!   (with the example `workflows.toml`), installing the tools first;
//! - `demo`: build weir and the example plugins, then run them through `weir run`. It needs
//!   nothing but rustup: the plugins in other languages are shown when their tools are
//!   installed, and otherwise the demo prints the command that installs them;
//! - `test`: formatting, lints and the whole test suite (what CI runs), after checking that
//!   the system programs the tests need are there;
//! - `bench [execute|reload|queue|languages|memory|serve|abuse]`: the benchmarks (release
//!   build);
//! - `layers`: the host's layers, and any import that points from a layer to one above it
//!   (also checked by `cargo test`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use xtask::{
    build_language_plugins, build_plugins, cargo, install_tools, language_plugin_names, repo_root,
    tools_installed, workflows_for,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("tools") => install_tools(),
        Some("plugins") => plugins().map(|_| ()),
        Some("demo") => demo(),
        Some("test") => test(),
        Some("bench") => bench(&args[1..]),
        Some("fuzz") => fuzz(args.get(1).map(String::as_str)),
        Some("layers") => layers(),
        _ => Err("usage: cargo xtask <tools|plugins|demo|test|bench|fuzz|layers>".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The root workspace's target directory (honours `CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

fn dist_dir() -> PathBuf {
    repo_root().join("plugins").join("dist")
}

fn plugins() -> Result<PathBuf, String> {
    install_tools()?;
    let (out, _) = build_examples(true)?;
    Ok(out)
}

/// Builds the example plugins into `plugins/dist/` with the example `workflows.toml`: the
/// Rust ones always, those in other languages when `languages` is set (their pinned tools
/// must be installed). A workflow that needs a plugin left out is left out of the copied
/// `workflows.toml` too. Returns the folder and whether the other languages were built.
fn build_examples(languages: bool) -> Result<(PathBuf, bool), String> {
    let out = dist_dir();
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let built = build_plugins(&target_dir().join("wasm-plugins"), &out)?;
    let others = if languages {
        build_language_plugins(&target_dir().join("lang-plugins"), &out)?
    } else {
        // Plugins of another language built by an earlier run would make the folder
        // disagree with what this run says it shows.
        for name in language_plugin_names()? {
            let stale = out.join(format!("{name}.wasm"));
            if stale.is_file() {
                std::fs::remove_file(&stale)
                    .map_err(|e| format!("cannot remove {}: {e}", stale.display()))?;
            }
        }
        Vec::new()
    };
    let workflows = repo_root().join("plugins").join("workflows.toml");
    let text = std::fs::read_to_string(&workflows)
        .map_err(|e| format!("cannot read {}: {e}", workflows.display()))?;
    let missing: Vec<String> = language_plugin_names()?
        .into_iter()
        .filter(|name| !others.contains(name))
        .collect();
    let missing: Vec<&str> = missing.iter().map(String::as_str).collect();
    let (text, dropped) = workflows_for(&text, &missing)?;
    let dest = out.join("workflows.toml");
    weir_devkit::write_if_changed(&dest, text.as_bytes()).map_err(|e| e.to_string())?;
    eprintln!(
        "built {} plugins into {}: {} (Rust){}",
        built.plugins.len() + others.len(),
        out.display(),
        built.plugins.join(", "),
        if others.is_empty() {
            String::new()
        } else {
            format!("; {} (other languages)", others.join(", "))
        }
    );
    if !dropped.is_empty() {
        eprintln!(
            "left out of {}: {} (they need plugins that were not built)",
            dest.display(),
            dropped.join(", ")
        );
    }
    Ok((out, !others.is_empty()))
}

/// Runs a command; fails unless it exits with one of `expected`.
fn run(cmd: &mut Command, expected: &[i32]) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    match status.code() {
        Some(code) if expected.contains(&code) => Ok(()),
        _ => Err(format!("{cmd:?} ended with {status}")),
    }
}

fn demo() -> Result<(), String> {
    // The demo needs nothing but rustup: plugins in other languages join in when their
    // tools are installed (`cargo xtask tools`), and are otherwise only mentioned.
    let (dist, languages) = build_examples(tools_installed())?;
    run(cargo().args(["build", "--locked", "-p", "weir-cli"]), &[0])?;
    let weir = target_dir().join("debug").join("weir");
    let dist = relative(&dist);
    let show = |args: &[&str], expected: i32| -> Result<String, String> {
        println!("\n$ weir {}", args.join(" "));
        let output = Command::new(&weir)
            .args(args)
            .current_dir(repo_root())
            .env("WEIR_PLUGINS", &dist)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", weir.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let pretty = serde_json::from_str::<serde_json::Value>(&stdout)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| stdout.clone());
        println!("{}", pretty.trim_end());
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        println!("(exit {})", output.status.code().unwrap_or(-1));
        if output.status.code() != Some(expected) {
            return Err(format!("`weir {}` should exit {expected}", args.join(" ")));
        }
        Ok(stdout)
    };
    println!("The example plugins live in {dist}; every command below uses WEIR_PLUGINS={dist}.");
    show(&["plugins", "list"], 0)?;
    show(&["run", "hello", "--input", r#"{"user":"Ada"}"#], 0)?;
    // A chain by hand: each step's result state is the next step's input.
    let mut state = r#"{"count":1}"#.to_string();
    for step in ["increment", "double", "add-ten"] {
        let out = show(&["run", step, "--log-format", "off", "--input", &state], 0)?;
        let doc: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("{step} printed invalid JSON: {e}"))?;
        state = doc["state"].to_string();
    }
    // The same chain as a workflow (plugins/dist/workflows.toml), the other workflow kinds,
    // then failures the host contains.
    let runs: &[(&str, &str, i32)] = &[
        ("word-count", r#"{"text":"the quick brown fox"}"#, 0),
        ("calc", r#"{"count":1}"#, 0),
        ("fan", r#"{"count":1,"user":"Ada"}"#, 0),
        ("pick", r#"{"kind":"greet","user":"Ada"}"#, 0),
        ("sum-then-greet", r#"{"count":3,"user":"Ada"}"#, 0),
        (
            "check-emails",
            r#"[{"email":"ada@example.com"},{"email":"nope"}]"#,
            0,
        ),
        (
            "pipeline",
            r#"{"count":1,"needsReview":true,"user":"Ada"}"#,
            0,
        ),
        ("best-effort", r#"{"count":1,"email":"nope"}"#, 0),
        ("validate-email", r#"{"email":"not-an-email"}"#, 1),
        ("spin", "{}", 1),
        ("escape", "{}", 0),
    ];
    // Plugins written in Python, JavaScript, C and Go, alone and in one chain.
    let language_runs: &[(&str, &str, i32)] = &[
        ("text-stats", r#"{"text":"the quick brown fox\njumps"}"#, 0),
        (
            "polyglot",
            r#"{"text":"the quick brown fox","amount":20,"country":"DE","schema":{"type":"object","required":["sku"]},"document":{"sku":"A-1"}}"#,
            0,
        ),
        ("text-stats", r#"{"text":"x","fail":"on purpose"}"#, 1),
    ];
    show(&["workflows", "list"], 0)?;
    for (name, input, expected) in runs {
        show(&["run", name, "--input", input], *expected)?;
    }
    if languages {
        for (name, input, expected) in language_runs {
            show(&["run", name, "--input", input], *expected)?;
        }
    }
    println!("\nDemo finished: every command ended as expected.");
    if !languages {
        println!(
            "\nThe example plugins in Python, JavaScript, C and Go were left out: their pinned \
             toolchains are not installed. To add them (about 1.1 GB, into {}), run\n\n    \
             cargo xtask tools\n\nthen `cargo xtask demo` again.",
            xtask::tools_dir().display()
        );
    }
    Ok(())
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn test() -> Result<(), String> {
    let plugins_manifest = repo_root().join("plugins").join("Cargo.toml");
    let plugins_manifest = plugins_manifest.to_string_lossy().to_string();
    let wasm_target = target_dir().join("wasm-plugins");
    let wasm_target = wasm_target.to_string_lossy().to_string();
    eprintln!("== prerequisites");
    let missing = xtask::missing_system_tools();
    if !missing.is_empty() {
        return Err(format!(
            "the test suite needs programs this machine lacks:\n  {}\ninstall them with \
             (Debian):\n  {}\n(`cargo test -p weir`, the host's own tests, needs none of them)",
            missing.join("\n  "),
            xtask::SYSTEM_PACKAGES_COMMAND
        ));
    }
    eprintln!("== plugin toolchains");
    install_tools()?;
    eprintln!("== formatting");
    run(cargo().args(["fmt", "--all", "--check"]), &[0])?;
    run(
        cargo().args([
            "fmt",
            "--all",
            "--check",
            "--manifest-path",
            &plugins_manifest,
        ]),
        &[0],
    )?;
    eprintln!("== lints");
    clippy(&["--workspace", "--all-targets"])?;
    // The library without its default `redis` feature: the local runtime alone, as an
    // embedder with `default-features = false` builds it. Linted, not tested: its tests are
    // the ones the workspace's build runs with the feature, and building them again without
    // it compiled wasmtime a third time (7.5 minutes of a fresh machine's CI).
    clippy(&["-p", "weir", "--no-default-features", "--all-targets"])?;
    clippy(&[
        "--release",
        "--target",
        xtask::TARGET,
        "--manifest-path",
        &plugins_manifest,
        "--target-dir",
        &wasm_target,
    ])?;
    eprintln!("== tests");
    run(cargo().args(["test", "--locked", "--workspace"]), &[0])?;
    one_build_of_each_dependency()?;
    fuzz(Some(CI_FUZZ_SECONDS))?;
    eprintln!("all checks passed");
    Ok(())
}

/// Fails when building `weir` alone (as the demo and the README's commands do) compiles
/// something the tests' build already compiled with other features: a fresh machine would
/// spend minutes compiling wasmtime and its kin twice. `hack/Cargo.toml` lists the features
/// that keep the two builds one.
fn one_build_of_each_dependency() -> Result<(), String> {
    eprintln!("== one build of each dependency");
    let compiled: Vec<String> = xtask::cargo_artifacts(
        &["build", "--locked", "-p", "weir-cli"],
        "`cargo build -p weir-cli`",
    )?
    .into_iter()
    .filter(|m| m["fresh"] == false)
    .map(|m| m["package_id"].as_str().unwrap_or("?").to_string())
    .collect();
    if compiled.is_empty() {
        return Ok(());
    }
    Err(format!(
        "`cargo build -p weir-cli` compiled again what the tests' build had compiled, with \
         other features:\n  {}\nadd the features the workspace turns on for them to \
         hack/Cargo.toml (compare `cargo tree -p weir-cli -e features` with `cargo tree \
         --workspace -e features`)",
        compiled.join("\n  ")
    ))
}

/// `cargo clippy --locked` over `selection`, every warning an error.
fn clippy(selection: &[&str]) -> Result<(), String> {
    run(
        cargo()
            .args(["clippy", "--locked"])
            .args(selection)
            .args(["--", "-D", "warnings"]),
        &[0],
    )
}

/// `cargo xtask layers`: prints the host's layers, lowest first, and fails on a path from
/// a layer to one above it (or around the layers).
fn layers() -> Result<(), String> {
    let root = repo_root();
    for (index, (name, holds)) in xtask::layers::LAYERS.iter().enumerate() {
        println!("{index} host/src/{name}/: {holds}");
    }
    let problems = xtask::layers::check(&root)?;
    if problems.is_empty() {
        println!("no import points up");
        Ok(())
    } else {
        Err(format!("the host's layers:\n  {}", problems.join("\n  ")))
    }
}

/// Seconds each fuzz target runs in `cargo xtask test` (with the fixed seed, so the same
/// inputs every time, as many as the machine gets through).
const CI_FUZZ_SECONDS: &str = "10";

/// `cargo xtask fuzz [SECONDS]`: every fuzz target of the host for SECONDS each (default
/// 60), one after the other. `WEIR_FUZZ_SEED` picks the inputs (`random` for new ones).
fn fuzz(seconds: Option<&str>) -> Result<(), String> {
    let seconds = seconds.unwrap_or("60");
    if seconds.parse::<f64>().ok().filter(|s| *s > 0.0).is_none() {
        return Err(format!("`{seconds}` is not a number of seconds"));
    }
    // The HTTP target runs the test plugins (and the example workflows over them), built
    // as the tests build them; its own compile cache keeps the next run from compiling them.
    let plugins = target_dir().join("fuzz-plugins");
    std::fs::create_dir_all(&plugins)
        .map_err(|e| format!("cannot create {}: {e}", plugins.display()))?;
    build_plugins(&target_dir().join("wasm-plugins"), &plugins)?;
    let workflows = repo_root().join("plugins").join("workflows.toml");
    std::fs::copy(&workflows, plugins.join("workflows.toml"))
        .map_err(|e| format!("cannot copy {}: {e}", workflows.display()))?;
    eprintln!("== fuzzing: each target for {seconds} s");
    run(
        cargo()
            .env("WEIR_FUZZ_PLUGINS", &plugins)
            .env("WEIR_FUZZ_CACHE", target_dir().join("fuzz-cache"))
            // The whole workspace, as `cargo xtask test` builds it: the same features, so
            // nothing is compiled again. Only the host's targets are named `fuzz_`.
            .args(["test", "--locked", "--workspace", "--lib", "fuzz_", "--"])
            .args(["--test-threads", "1", "--nocapture"])
            .env("WEIR_FUZZ_SECONDS", seconds),
        &[0],
    )
}

/// `cargo xtask bench [execute|reload|queue|languages|memory|serve|abuse]` (all by default),
/// or `cargo xtask bench side-by-side [ROUNDS]`: weir's execute bench interleaved with
/// AM2Z's own (`../shared/anchors/am2z`, or `WEIR_AM2Z_ANCHOR`), 4 rounds by default.
fn bench(which: &[String]) -> Result<(), String> {
    if which.first().map(String::as_str) == Some("side-by-side") {
        let rounds = match which.get(1) {
            Some(n) => n
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("`{n}` is not a number of rounds"))?,
            None => 4,
        };
        return xtask::anchor::side_by_side(&xtask::repo_root(), rounds);
    }
    let all = [
        "execute".to_string(),
        "reload".to_string(),
        "queue".to_string(),
        "languages".to_string(),
        "memory".to_string(),
        "serve".to_string(),
        "abuse".to_string(),
    ];
    let benches = if which.is_empty() { &all[..] } else { which };
    // The languages bench runs the plugins of every language.
    if benches.iter().any(|b| b == "languages") {
        install_tools()?;
    }
    for name in benches {
        run(
            cargo().args(["bench", "--locked", "-p", "weir-tests", "--bench", name]),
            &[0],
        )?;
    }
    Ok(())
}
