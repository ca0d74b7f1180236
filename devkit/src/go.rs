//! Go plugins: bindings generated here, built by the standard Go toolchain for wasip1 as a
//! reactor (`-buildmode=c-shared`), then packaged as a component.
//!
//! The staged Go module (`wit_component`, the name the bindings import) holds the generated
//! bindings, the support package they import (`go.bytecodealliance.org/pkg`, vendored in
//! `devkit/go-pkg/` with its licence, carried inside this tool and wired in with a `replace`), the SDK package `wit_component/weir`, the glue
//! that implements the `handler` export on top of `weir.Register`, and the project's own
//! `.go` files (package `main`).

use std::path::Path;

use crate::componentize::component_from_module;
use crate::lang::{require_any, run, stage, write_files, write_if_changed};
use crate::tools::Tools;
use crate::{BuildError, Project};

/// The version of `go.bytecodealliance.org/pkg` vendored in `devkit/go-pkg/`: the one the
/// bindings of the `wit-bindgen-go` this tool links were generated for (a test checks that
/// they agree, so a bump of `wit-bindgen-go` that needs a newer package cannot go unnoticed).
const GO_PKG_VERSION: &str = "v0.4.0";

/// The files of `go.bytecodealliance.org/pkg`, as (path, contents), vendored from the
/// `wit-bindgen-go` crate (which ships them under `src/pkg/`) so that building this tool
/// needs nothing but its own sources: no module proxy, no lookup in cargo's caches.
const GO_PKG: &[(&str, &[u8])] = &[
    ("LICENSE", include_bytes!("../go-pkg/LICENSE")),
    (
        "wit/async/async.go",
        include_bytes!("../go-pkg/wit/async/async.go"),
    ),
    (
        "wit/async/empty.s",
        include_bytes!("../go-pkg/wit/async/empty.s"),
    ),
    (
        "wit/runtime/empty.s",
        include_bytes!("../go-pkg/wit/runtime/empty.s"),
    ),
    (
        "wit/runtime/runtime.go",
        include_bytes!("../go-pkg/wit/runtime/runtime.go"),
    ),
    (
        "wit/types/future.go",
        include_bytes!("../go-pkg/wit/types/future.go"),
    ),
    (
        "wit/types/option.go",
        include_bytes!("../go-pkg/wit/types/option.go"),
    ),
    (
        "wit/types/result.go",
        include_bytes!("../go-pkg/wit/types/result.go"),
    ),
    (
        "wit/types/stream.go",
        include_bytes!("../go-pkg/wit/types/stream.go"),
    ),
    (
        "wit/types/tuple.go",
        include_bytes!("../go-pkg/wit/types/tuple.go"),
    ),
    (
        "wit/types/unit.go",
        include_bytes!("../go-pkg/wit/types/unit.go"),
    ),
];

/// The SDK package `wit_component/weir`.
const SDK: &str = include_str!("../../guest-sdk/go/weir/weir.go");
/// The `handler` export on top of `weir.Register`.
const HANDLER: &str = include_str!("../../guest-sdk/go/handler/handler.go");

/// The staged module's `go.mod`: the support package comes from `./pkg`, never a proxy.
fn go_mod() -> String {
    format!(
        "module wit_component\n\ngo 1.24\n\nrequire go.bytecodealliance.org/pkg {GO_PKG_VERSION}\n\nreplace go.bytecodealliance.org/pkg => ./pkg\n"
    )
}

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
    write_if_changed(&module_dir.join("go.mod"), go_mod().as_bytes())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendored_support_package_is_the_version_the_bindings_import() {
        assert_eq!(
            wit_bindgen_go::remote_pkg_version(),
            format!("go.bytecodealliance.org/pkg {GO_PKG_VERSION}"),
            "wit-bindgen-go now generates bindings for another go.bytecodealliance.org/pkg: \
             copy its src/pkg/{{LICENSE,wit}} into devkit/go-pkg/ and update GO_PKG_VERSION"
        );
    }

    #[test]
    fn every_vendored_file_is_carried_into_the_tool() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("go-pkg");
        let mut on_disk = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("devkit/go-pkg is readable") {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "go" || e == "s")
                    || path.file_name().is_some_and(|n| n == "LICENSE")
                {
                    let relative = path.strip_prefix(&root).expect("under go-pkg");
                    on_disk.push(relative.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        on_disk.sort();
        let mut carried: Vec<String> = GO_PKG.iter().map(|(p, _)| p.to_string()).collect();
        carried.sort();
        assert_eq!(carried, on_disk);
    }

    #[test]
    fn staged_module_takes_the_support_package_from_its_own_folder() {
        let go_mod = go_mod();
        assert!(go_mod.contains(&format!(
            "require go.bytecodealliance.org/pkg {GO_PKG_VERSION}\n"
        )));
        assert!(go_mod.contains("replace go.bytecodealliance.org/pkg => ./pkg\n"));
    }
}
