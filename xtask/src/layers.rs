//! The host's layers, and the check that its imports point one way: contract ← sandbox ←
//! execution and workflows ← distributed driver ← embedding API ← server and CLI. Each
//! layer of the `weir` crate is a folder of `host/src` (the top layer is two crates of
//! their own, `weir-server` and `weir-cli`, over `weir`'s public API, so cargo keeps
//! `weir` from naming them). A module may name what its own layer and the layers below it
//! define, never what a layer above defines; where the domain recurses, the lower layer
//! owns a small trait the higher one implements. Inside one crate rustc cannot enforce the
//! order; this check does, in `cargo test` and `cargo xtask layers`.
//!
//! It reads every `crate::` path (in `use` lines and in code; comments are skipped). So
//! that no path escapes it, a layer's code names what it uses by the layer's path
//! (`crate::contract::error::Error`), not through the crate root's re-exports
//! (`crate::Error`), and climbs with `crate::`, not `super::super::`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers, lowest first: the folder of `host/src` each one is, and what it holds.
pub const LAYERS: &[(&str, &str)] = &[
    (
        "contract",
        "what both runtimes agree on: errors, results, state, limits, retry, manifest, \
         workflows, bounds, the state store's seam",
    ),
    (
        "sandbox",
        "one attempt in one wasmtime store: engine, plugins, warm instances, host imports",
    ),
    (
        "execution",
        "one execution in this process and the workflows made of them: executor, compose, \
         registry, reload, admission, activity",
    ),
    (
        "distributed",
        "the same executions and workflows as BullMQ jobs through Redis (feature `redis`)",
    ),
    (
        "runtime",
        "the embedding API: Runtime, RuntimeBuilder, Fleet",
    ),
];

/// Modules of the crate's root in no layer: the root itself, which gathers every layer,
/// and the fuzz targets (compiled for tests only).
pub const OUTSIDE: &[&str] = &["lib", "fuzz"];

/// The layer (its index in [`LAYERS`]) of the top-level module `module`.
pub fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(name, _)| *name == module)
}

/// A path that points the wrong way: `file` (relative to the repository) names `module`,
/// the top-level module of a layer above its own, or names something around the layers
/// (see [`Upward::why`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Upward {
    /// The importing file, relative to the repository.
    pub file: String,
    /// What it names: a higher layer's folder, a root re-export, or `super::super`.
    pub module: String,
}

impl std::fmt::Display for Upward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.file, self.module)
    }
}

/// The top-level modules `source` names through `crate::` paths (in `use` lines and in
/// code; comments are skipped), grouped imports (`use crate::{a, b::c}`) included.
pub fn named_modules(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let code = code_of(source);
    {
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            // Not `weir_crate::` or the like: `crate` must start a path.
            let before = rest[..at].chars().next_back();
            rest = &rest[at + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                // The first segment of each path at the group's top level.
                let mut depth = 0usize;
                let mut item = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            push_first_segment(&item, &mut found);
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    item.push(c);
                }
                push_first_segment(&item, &mut found);
            } else {
                push_first_segment(rest, &mut found);
            }
        }
    }
    found
}

/// `source` without its comment lines, as one text (a group may span lines).
fn code_of(source: &str) -> String {
    source
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn push_first_segment(path: &str, into: &mut BTreeSet<String>) {
    let name: String = path
        .trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if !name.is_empty() {
        into.insert(name);
    }
}

impl Upward {
    /// Why this path is refused, and what to do instead.
    pub fn why(&self) -> String {
        let own = self
            .file
            .trim_start_matches("host/src/")
            .split(['/', '.'])
            .next()
            .unwrap_or_default();
        if self.module == SUPER_SUPER {
            return format!(
                "{self}: a path climbs with `super::super::`, which this check cannot follow: \
                 name it from the crate (`crate::{own}::…`)"
            );
        }
        match (layer_of(own), layer_of(&self.module)) {
            (Some(below), Some(above)) => format!(
                "{self}: `{own}` (layer {below}) imports from `{}` (layer {above}), a layer \
                 above it. Move what it needs down, or let the lower layer own a trait that \
                 the higher one implements",
                self.module
            ),
            _ => format!(
                "{self}: `crate::{}` is not a layer: name it by its layer's path \
                 (`crate::contract::…`, `crate::sandbox::…`), not through the crate root's \
                 re-exports",
                self.module
            ),
        }
    }
}

/// What [`Upward::module`] says for a `super::super::` path.
pub const SUPER_SUPER: &str = "super::super";

/// Every path in the host's sources under `root` (the repository) that points the wrong
/// way: to a layer above its file's, around the layers (through the crate root), or up a
/// `super::super::` chain.
pub fn upward_imports(root: &Path) -> Result<Vec<Upward>, String> {
    let src = root.join("host").join("src");
    let mut files = Vec::new();
    collect_rust_files(&src, &mut files)?;
    let mut upward = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).map_err(|e| e.to_string())?;
        let Some(own) = relative.components().next().map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        }) else {
            continue;
        };
        if OUTSIDE.contains(&own.as_str()) {
            continue;
        }
        let own_layer = layer_of(&own).ok_or_else(|| {
            format!(
                "`{own}` ({}) is in no layer: put it in a layer's folder, or add a layer to \
                 xtask/src/layers.rs",
                file.display()
            )
        })?;
        let source = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let at = format!("host/src/{}", relative.display());
        for module in named_modules(&source) {
            let wrong = match layer_of(&module) {
                Some(layer) => layer > own_layer,
                None => !OUTSIDE.contains(&module.as_str()),
            };
            if wrong {
                upward.push(Upward {
                    file: at.clone(),
                    module,
                });
            }
        }
        if code_of(&source).contains(SUPER_SUPER) {
            upward.push(Upward {
                file: at,
                module: SUPER_SUPER.to_string(),
            });
        }
    }
    upward.sort();
    Ok(upward)
}

fn collect_rust_files(dir: &Path, into: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rust_files(&path, into)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
    Ok(())
}

/// What is wrong with the host's layering under `root`, one line each. Empty when all is
/// well.
pub fn check(root: &Path) -> Result<Vec<String>, String> {
    Ok(upward_imports(root)?.iter().map(Upward::why).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_read_from_paths_and_groups_but_not_comments() {
        let source = "use crate::error::Error;\n\
                      use crate::{limits::Limits, runtime::{Shared, Runtime}, state};\n\
                      use crate::{\n    cancel::Cancel,\n    events::{Bus, Event},\n};\n\
                      // crate::server::nothing\n\
                      let x = crate::compose::run(weir_crate::x);\n";
        let found: Vec<String> = named_modules(source).into_iter().collect();
        assert_eq!(
            found,
            [
                "cancel", "compose", "error", "events", "limits", "runtime", "state"
            ]
        );
    }

    #[test]
    fn an_upward_import_is_found_and_one_within_the_layers_below_is_not() {
        let root = tempfile_root();
        let src = root.join("host").join("src");
        for layer in ["contract", "execution", "distributed"] {
            std::fs::create_dir_all(src.join(layer)).expect("a temp dir");
        }
        let write = |file: &str, text: &str| {
            std::fs::write(src.join(file), text).expect("writes");
        };
        write("contract/error.rs", "use crate::runtime::Shared;\n");
        write("execution/executor.rs", "use crate::sandbox::Sandbox;\n");
        write(
            "distributed/worker.rs",
            "use crate::{execution::run, runtime::Runtime};\nuse super::wire;\n",
        );
        write("lib.rs", "pub use runtime::Runtime;\nmod fuzz;\n");
        let found: Vec<String> = upward_imports(&root)
            .expect("reads")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                "host/src/contract/error.rs -> runtime",
                "host/src/distributed/worker.rs -> runtime"
            ]
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_path_around_the_layers_is_refused_too() {
        let root = tempfile_root();
        let src = root.join("host").join("src");
        std::fs::create_dir_all(src.join("sandbox")).expect("a temp dir");
        std::fs::write(
            src.join("sandbox").join("mod.rs"),
            "use crate::Runtime;\nfn f() { super::super::runtime::go(); crate::fuzz::x(); }\n",
        )
        .expect("writes");
        let problems = check(&root).expect("reads");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("`crate::Runtime` is not a layer"),
            "{problems:?}"
        );
        assert!(problems[1].contains("super::super"), "{problems:?}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_file_outside_every_layer_is_named() {
        let root = tempfile_root();
        let src = root.join("host").join("src");
        std::fs::create_dir_all(&src).expect("a temp dir");
        std::fs::write(src.join("loose.rs"), "").expect("writes");
        let error = upward_imports(&root).expect_err("a loose module");
        assert!(error.contains("`loose`"), "{error}");
        let _ = std::fs::remove_dir_all(&root);
    }

    fn tempfile_root() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "weir-layers-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_host_imports_nothing_from_a_layer_above() {
        let root = crate::repo_root();
        let problems = check(&root).expect("the host's sources are readable");
        assert!(
            problems.is_empty(),
            "the host's layers (xtask/src/layers.rs):\n  {}",
            problems.join("\n  ")
        );
    }
}
