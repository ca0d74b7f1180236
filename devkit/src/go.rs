//! Go plugins: bindings generated here, built by the standard Go toolchain for wasip1 as a
//! reactor (`-buildmode=c-shared`), then packaged as a component.
//!
//! The staged Go module (`wit_component`, the name the bindings import) holds the generated
//! bindings, the support package they import (`go.bytecodealliance.org/pkg`, carried inside
//! this tool and wired in with a `replace`), the SDK package `wit_component/weir`, the glue
//! that implements the `handler` export on top of `weir.Register`, and the project's own
//! `.go` files (package `main`).

use std::path::Path;

use crate::componentize::component_from_module;
use crate::lang::{require_any, run, stage, write_files, write_if_changed};
use crate::tools::Tools;
use crate::{BuildError, Project};

include!(concat!(env!("OUT_DIR"), "/go_pkg.rs"));

/// The SDK package `wit_component/weir`.
const SDK: &str = include_str!("../../guest-sdk/go/weir/weir.go");
/// The `handler` export on top of `weir.Register`.
const HANDLER: &str = include_str!("../../guest-sdk/go/handler/handler.go");

/// The staged module's `go.mod`: the support package comes from `./pkg`, never a proxy.
const GO_MOD: &str = "module wit_component

go 1.24

require go.bytecodealliance.org/pkg v0.4.0

replace go.bytecodealliance.org/pkg => ./pkg
";

/// The support package's own `go.mod`. It declares the oldest Go that builds it (1.24, the
/// first with `go:wasmexport`) rather than the release it was cut with, so any Go from 1.24
/// builds plugins.
const PKG_GO_MOD: &str = "module go.bytecodealliance.org/pkg\n\ngo 1.24\n";

pub(crate) fn build(
    project: &Project,
    work_dir: &Path,
    staged: &Path,
    tools: &Tools,
) -> Result<(), BuildError> {
    let sources = require_any(project, "go")?;
    let go = tools.go()?;
    let module_dir = work_dir.join("go");
    generate(&project.name, &module_dir)?;
    for (path, bytes) in GO_PKG {
        let to = module_dir.join("pkg").join(path);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(BuildError::io("cannot create", parent))?;
        }
        write_if_changed(&to, bytes)?;
    }
    write_if_changed(
        &module_dir.join("pkg").join("go.mod"),
        PKG_GO_MOD.as_bytes(),
    )?;
    write_if_changed(&module_dir.join("go.mod"), GO_MOD.as_bytes())?;
    // The SDK packages are written afresh, so no file of an older weir lingers in them.
    for (package, file, text) in [
        ("weir", "weir.go", SDK),
        ("export_weir_processor_handler", "handler.go", HANDLER),
    ] {
        let dir = module_dir.join(package);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(BuildError::io("cannot clear", &dir))?;
        }
        stage(&dir, file, text)?;
    }
    // The project's files, in the module's root package (`main`). Stale copies of files the
    // project no longer has are removed so they cannot linger in the build.
    let mut keep = Vec::new();
    for source in &sources {
        let name = source.file_name().unwrap_or_default();
        keep.push(name.to_os_string());
        let bytes = std::fs::read(source).map_err(BuildError::io("cannot read", source))?;
        write_if_changed(&module_dir.join(name), &bytes)?;
    }
    if let Ok(entries) = std::fs::read_dir(&module_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let stale = entry.path().extension().is_some_and(|e| e == "go")
                && name != "wit_exports.go"
                && !keep.contains(&name);
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    let module = work_dir.join("module.wasm");
    let mut cmd = go.command();
    cmd.current_dir(&module_dir)
        .args(["build", "-buildmode=c-shared", "-trimpath"])
        // The support package reaches into the runtime with go:linkname.
        .arg("-ldflags=-checklinkname=0 -s -w")
        .arg("-o")
        .arg(&module)
        .arg(".")
        .env("GOOS", "wasip1")
        .env("GOARCH", "wasm")
        // Everything the build needs is staged here: never ask a module proxy or fetch a
        // different Go release.
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOSUMDB", "off")
        .env("GOFLAGS", "-mod=mod");
    run(cmd)?;
    let bytes = std::fs::read(&module).map_err(BuildError::io("cannot read", &module))?;
    let component = component_from_module(&project.name, bytes, true)?;
    write_if_changed(staged, &component)
}

/// Writes the contract's Go bindings into `dir` (the module root).
fn generate(name: &str, dir: &Path) -> Result<(), BuildError> {
    let (mut resolve, world) = crate::wit::resolve(name)?;
    let opts = wit_bindgen_go::Opts {
        // gofmt is not always on PATH, and unformatted bindings build the same.
        format: wit_bindgen_go::Format::False,
        quiet: true,
        ..Default::default()
    };
    let mut files = wit_bindgen_core::Files::default();
    opts.build()
        .generate(&mut resolve, world, &mut files)
        .map_err(|e| BuildError::package(name, format!("cannot generate Go bindings: {e:#}")))?;
    // The generator's go.mod asks for the support package from a proxy: ours replaces it.
    let files_without_mod: Vec<_> = files.iter().filter(|(path, _)| *path != "go.mod").collect();
    write_files(dir, files_without_mod)
}
