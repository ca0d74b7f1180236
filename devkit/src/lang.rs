//! Building a project into `<name>.wasm`: one function per language, sharing the staging
//! of the contract and the SDK files and the atomic write of the result.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::componentize::component_from_module;
use crate::tools::Tools;
use crate::{BuildError, Lang, Project};

/// The Python SDK module (`import weir`), staged beside the project's sources.
const PYTHON_SDK: &str = include_str!("../../guest-sdk/python/weir.py");
/// The JavaScript SDK module (`import … from './weir.js'`).
const JS_SDK: &str = include_str!("../../guest-sdk/js/weir.js");
/// The C SDK header (`#include "weir.h"`).
const C_SDK: &str = include_str!("../../guest-sdk/c/weir.h");

/// What a build produced.
#[derive(Clone, Debug)]
pub struct Built {
    /// The processor's name.
    pub name: String,
    /// The project's language.
    pub lang: Lang,
    /// The component, `<work_dir>/<name>.wasm`: check it, then [`install`] it.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// How long the build took.
    pub duration: Duration,
}

/// Builds `project` into `<work_dir>/<name>.wasm`, using `work_dir` for intermediate files
/// too (generated bindings, staged sources).
pub fn build(project: &Project, work_dir: &Path, tools: &Tools) -> Result<Built, BuildError> {
    let started = Instant::now();
    std::fs::create_dir_all(work_dir).map_err(BuildError::io("cannot create", work_dir))?;
    // Tools run in folders of their own: every path handed to them is absolute.
    let work_dir =
        &std::path::absolute(work_dir).map_err(BuildError::io("cannot resolve", work_dir))?;
    let project = &Project {
        dir: std::path::absolute(&project.dir)
            .map_err(BuildError::io("cannot resolve", &project.dir))?,
        ..project.clone()
    };
    let staged = work_dir.join(format!("{}.wasm", project.name));
    let _ = std::fs::remove_file(&staged);
    match project.lang {
        Lang::Rust => build_rust(project, &staged, tools)?,
        Lang::Python => build_python(project, work_dir, &staged, tools)?,
        Lang::Js => build_js(project, work_dir, &staged, tools)?,
        Lang::C => build_c(project, work_dir, &staged, tools)?,
        Lang::Go => crate::go::build(project, work_dir, &staged, tools)?,
    }
    let size = std::fs::metadata(&staged)
        .map_err(BuildError::io("cannot read the built component", &staged))?
        .len();
    Ok(Built {
        name: project.name.clone(),
        lang: project.lang,
        path: staged,
        size,
        duration: started.elapsed(),
    })
}

/// Copies a built component into `out_dir` as `<name>.wasm` and returns that path. The file
/// is replaced atomically, and left untouched when it already holds the same bytes, so a
/// weir watching the folder reloads only real changes.
pub fn install(built: &Built, out_dir: &Path) -> Result<PathBuf, BuildError> {
    std::fs::create_dir_all(out_dir).map_err(BuildError::io("cannot create", out_dir))?;
    let bytes = std::fs::read(&built.path).map_err(BuildError::io("cannot read", &built.path))?;
    let path = out_dir.join(format!("{}.wasm", built.name));
    write_if_changed(&path, &bytes)?;
    Ok(path)
}

/// Writes `bytes` to `path` unless it already holds them, through a rename so that a reader
/// (a watching weir) never sees half a file.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(BuildError::io("cannot write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(BuildError::io("cannot write", path))
}

/// Writes `text` as `dir/file`, creating `dir`.
pub(crate) fn stage(dir: &Path, file: &str, text: &str) -> Result<(), BuildError> {
    std::fs::create_dir_all(dir).map_err(BuildError::io("cannot create", dir))?;
    write_if_changed(&dir.join(file), text.as_bytes())
}

/// Runs `cmd`, all its output going to the caller's stderr (stdout is for results); fails
/// with the command line.
pub(crate) fn run(cmd: Command) -> Result<(), BuildError> {
    run_for_output(cmd, false).map(drop)
}

/// Runs `cmd` with its stderr going to the caller's; returns its stdout when `capture`,
/// else sends that to stderr too. Fails with the command line.
fn run_for_output(mut cmd: Command, capture: bool) -> Result<Vec<u8>, BuildError> {
    cmd.stdin(Stdio::null()).stderr(Stdio::inherit());
    if capture {
        cmd.stdout(Stdio::piped());
    } else {
        cmd.stdout(std::io::stderr());
    }
    let failed = |cmd: &Command, status: String| BuildError::ToolFailed {
        command: describe(cmd),
        status,
    };
    let output = cmd
        .output()
        .map_err(|e| failed(&cmd, format!("it could not start: {e}")))?;
    if !output.status.success() {
        return Err(failed(&cmd, output.status.to_string()));
    }
    Ok(output.stdout)
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks that the project has its entry file.
fn require(project: &Project, file: &str) -> Result<PathBuf, BuildError> {
    let path = project.dir.join(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(BuildError::Project {
            path,
            reason: format!(
                "a {} plugin's entry file is {file}, and it is missing",
                project.lang.display_name()
            ),
        })
    }
}

fn build_rust(project: &Project, staged: &Path, tools: &Tools) -> Result<(), BuildError> {
    let manifest = require(project, "Cargo.toml")?;
    let mut cmd = tools.cargo().command();
    // `cargo rustc` hands the stack size to the plugin's own link only: the project's and
    // the user's other flags stay as they are, and dependencies are not rebuilt for it.
    cmd.args(["rustc", "--lib", "--release", "--target", "wasm32-wasip2"])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--message-format=json-render-diagnostics")
        .args(["--", "-C"])
        .arg(rust_stack_arg(project.stack_bytes));
    // A build script's cargo settings would leak into the nested build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let stdout = run_for_output(cmd, true)?;
    // The last `.wasm` artifact of the package in this folder is the plugin. Cargo may
    // spell the manifest's path differently (symbolic links): compare canonical paths.
    let manifest = std::fs::canonicalize(&manifest).unwrap_or(manifest);
    let wasm = String::from_utf8_lossy(&stdout)
        .lines()
        .filter_map(|line| artifact_wasm(line, &manifest))
        .next_back()
        .ok_or_else(|| BuildError::Project {
            path: manifest.clone(),
            reason: "cargo built no .wasm file: the package needs `crate-type = [\"cdylib\"]` under [lib]"
                .to_string(),
        })?;
    std::fs::copy(&wasm, staged).map_err(BuildError::io("cannot copy", &wasm))?;
    Ok(())
}

/// The rustc codegen option (after `-C`) that gives a Rust guest a stack of `bytes`
/// (rustc already puts a wasm guest's stack first). For weir's own plugin build.
#[doc(hidden)]
pub fn rust_stack_arg(bytes: u32) -> String {
    format!("link-arg=-zstack-size={bytes}")
}

/// The `.wasm` file of a cargo `compiler-artifact` message for the package of `manifest`.
fn artifact_wasm(line: &str, manifest: &Path) -> Option<PathBuf> {
    #[derive(serde::Deserialize)]
    struct Message {
        reason: String,
        manifest_path: Option<PathBuf>,
        #[serde(default)]
        filenames: Vec<PathBuf>,
    }
    let message: Message = serde_json::from_str(line).ok()?;
    let reported = message.manifest_path?;
    let reported = std::fs::canonicalize(&reported).unwrap_or(reported);
    if message.reason != "compiler-artifact" || reported != manifest {
        return None;
    }
    message
        .filenames
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
}

fn build_python(
    project: &Project,
    work_dir: &Path,
    staged: &Path,
    tools: &Tools,
) -> Result<(), BuildError> {
    require(project, "app.py")?;
    let tool = tools.componentize_py()?;
    let wit_dir = work_dir.join("wit");
    crate::wit::write(&wit_dir)?;
    let sdk_dir = work_dir.join("sdk");
    stage(&sdk_dir, "weir.py", PYTHON_SDK)?;
    // Staged, so that the bytecode componentize-py compiles lands here, not in the project.
    let src = work_dir.join("py");
    copy_sources(&project.dir, &src, &["py"], work_dir)?;
    let mut cmd = tool.command();
    cmd.arg("-d")
        .arg(&wit_dir)
        .args(["-w", crate::wit::WORLD, "componentize", "app", "-p"])
        .arg(&src)
        .arg("-p")
        .arg(&sdk_dir)
        .arg("-o")
        .arg(staged);
    run(cmd)
}

fn build_js(
    project: &Project,
    work_dir: &Path,
    staged: &Path,
    tools: &Tools,
) -> Result<(), BuildError> {
    require(project, "app.js")?;
    let tool = tools.componentize_js()?;
    let wit_dir = work_dir.join("wit");
    crate::wit::write(&wit_dir)?;
    // componentize-js resolves `./weir.js` beside the entry file: stage both together.
    let src = work_dir.join("js");
    copy_sources(&project.dir, &src, &["js", "mjs", "json"], work_dir)?;
    write_if_changed(&src.join("weir.js"), JS_SDK.as_bytes())?;
    let mut cmd = tool.command();
    cmd.arg(src.join("app.js"))
        .arg("--wit")
        .arg(&wit_dir)
        .args(["--world-name", "processor"])
        // The contract grants no network: leave out the HTTP handler and fetch.
        .args(["-d", "http", "fetch-event"])
        .arg("-o")
        .arg(staged);
    run(cmd)
}

/// Copies the files with one of `extensions` from `from` into a fresh `to` (so no file the
/// project no longer has lingers), recursively, skipping hidden, dependency and build
/// folders, symbolic links and `work_dir`.
fn copy_sources(
    from: &Path,
    to: &Path,
    extensions: &[&str],
    work_dir: &Path,
) -> Result<(), BuildError> {
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(BuildError::io("cannot clear", to))?;
    }
    copy_tree(from, to, extensions, work_dir)
}

fn copy_tree(
    from: &Path,
    to: &Path,
    extensions: &[&str],
    work_dir: &Path,
) -> Result<(), BuildError> {
    std::fs::create_dir_all(to).map_err(BuildError::io("cannot create", to))?;
    let entries = std::fs::read_dir(from).map_err(BuildError::io("cannot read", from))?;
    for entry in entries {
        let entry = entry.map_err(BuildError::io("cannot read", from))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let kind = entry
            .file_type()
            .map_err(BuildError::io("cannot read", &path))?;
        let skipped = name.starts_with('.')
            || ["node_modules", "target", "__pycache__"].contains(&&*name)
            || kind.is_symlink()
            || path == work_dir;
        if skipped {
            continue;
        }
        if kind.is_dir() {
            copy_tree(&path, &to.join(&*name), extensions, work_dir)?;
        } else if path
            .extension()
            .is_some_and(|e| extensions.iter().any(|x| e == *x))
        {
            let bytes = std::fs::read(&path).map_err(BuildError::io("cannot read", &path))?;
            write_if_changed(&to.join(&*name), &bytes)?;
        }
    }
    Ok(())
}

fn build_c(
    project: &Project,
    work_dir: &Path,
    staged: &Path,
    tools: &Tools,
) -> Result<(), BuildError> {
    let sources = require_any(project, "c")?;
    let cc = tools.c_compiler()?;
    let gen_dir = work_dir.join("gen");
    generate_c(&project.name, &gen_dir)?;
    let sdk_dir = work_dir.join("sdk");
    stage(&sdk_dir, "weir.h", C_SDK)?;
    let module = work_dir.join("module.wasm");
    let mut cmd = cc.command();
    cmd.args([
        "--target=wasm32-wasi",
        "-mexec-model=reactor",
        "-O2",
        "-g0",
        "-Wall",
    ])
    .arg("-Wl,--strip-debug")
    // zig places a wasm guest's stack first, below its data, so an overflow traps instead
    // of overwriting the data (it refuses `--stack-first` itself); with another compiler in
    // `WEIR_CC`, add `-Wl,--stack-first` there (the guide says so).
    .arg(format!("-Wl,-z,stack-size={}", project.stack_bytes))
    .arg("-I")
    .arg(&gen_dir)
    .arg("-I")
    .arg(&sdk_dir)
    .arg(gen_dir.join("processor.c"))
    .arg(gen_dir.join("processor_component_type.o"))
    .args(&sources)
    .arg("-o")
    .arg(&module);
    run(cmd)?;
    let bytes = std::fs::read(&module).map_err(BuildError::io("cannot read", &module))?;
    let component = component_from_module(&project.name, bytes, false)?;
    write_if_changed(staged, &component)
}

/// The project's files with extension `ext` (its top folder only), sorted; at least one.
pub(crate) fn require_any(project: &Project, ext: &str) -> Result<Vec<PathBuf>, BuildError> {
    let entries =
        std::fs::read_dir(&project.dir).map_err(BuildError::io("cannot read", &project.dir))?;
    let mut sources: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == ext))
        .collect();
    sources.sort();
    if sources.is_empty() {
        return Err(BuildError::Project {
            path: project.dir.clone(),
            reason: format!(
                "a {} plugin needs at least one .{ext} file in this folder",
                project.lang.display_name()
            ),
        });
    }
    Ok(sources)
}

/// Writes the contract's C bindings (`processor.h`, `processor.c`) into `dir`.
fn generate_c(name: &str, dir: &Path) -> Result<(), BuildError> {
    let (mut resolve, world) = crate::wit::resolve(name)?;
    // Besides the sources, this writes `processor_component_type.o`: the contract's type
    // information, linked into the module.
    let opts = wit_bindgen_c::Opts::default();
    let mut files = wit_bindgen_core::Files::default();
    opts.build()
        .generate(&mut resolve, world, &mut files)
        .map_err(|e| BuildError::package(name, format!("cannot generate C bindings: {e:#}")))?;
    write_files(dir, files.iter())
}

/// Writes generated files under `dir`.
pub(crate) fn write_files<'a>(
    dir: &Path,
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<(), BuildError> {
    for (name, contents) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(BuildError::io("cannot create", parent))?;
        }
        write_if_changed(&path, contents)?;
    }
    Ok(())
}
