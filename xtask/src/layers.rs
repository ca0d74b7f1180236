//! The host's layers, and the check that its imports point one way: contract ← sandbox ←
//! execution and workflows ← distributed driver ← embedding API ← server and CLI. A module
//! may name what its own layer and the layers below it define, never what a layer above
//! defines (where the domain recurses, the lower layer owns a small trait the higher one
//! implements). The top layer is two crates of its own, `weir-server` and `weir-cli`, over
//! `weir`'s public API, so cargo keeps `weir` from naming them. Inside the `weir` crate
//! rustc cannot enforce the order; this check does, in `cargo test` and `cargo xtask layers`.
//!
//! No import points up today. One that must for a while is listed in
//! `xtask/layers-known.txt`; the check fails on any upward import not listed there, and on
//! a listed one that is gone (remove it from the list), so the list only shrinks.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers, lowest first: each module of `host/src` (by its first path segment) and the
/// layer it belongs to.
pub const LAYERS: &[(&str, &[&str])] = &[
    (
        "contract",
        &[
            "error",
            "result",
            "state",
            "limits",
            "retry",
            "manifest",
            "workflow",
            "workflow_file",
            "clock",
            "bounds",
            "merge",
            "cancel",
            "names",
            "http_grant",
        ],
    ),
    (
        "sandbox",
        &[
            "bindings",
            "engine",
            "cache",
            "sandbox",
            "plugin",
            "warm",
            "outbound",
            "guest_log",
            "events",
        ],
    ),
    (
        "execution",
        &[
            "context",
            "request",
            "executor",
            "compose",
            "registry",
            "reload",
            "scheduler",
            "activity",
            "store",
            "listing",
            "services",
        ],
    ),
    ("distributed", &["distributed", "redis_store"]),
    ("embedding", &["runtime"]),
];

/// Modules in no layer: the crate's root, which gathers every layer, and the fuzz targets
/// (compiled for tests only).
pub const OUTSIDE: &[&str] = &["lib", "fuzz"];

/// The layer (its index in [`LAYERS`]) of the top-level module `module`.
pub fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// An import from a layer above the importer's: `file` (relative to the repository) names
/// something of module `module`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Upward {
    /// The importing file, relative to the repository.
    pub file: String,
    /// The top-level module of the higher layer it names.
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
    // Without comment lines, and as one text: a group may span lines.
    let code: String = source
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
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

/// Every upward import in the host's sources under `root` (the repository).
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
                "the module `{own}` ({}) is in no layer: add it to xtask/src/layers.rs",
                file.display()
            )
        })?;
        let source = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        for module in named_modules(&source) {
            if let Some(layer) = layer_of(&module)
                && layer > own_layer
            {
                upward.push(Upward {
                    file: format!("host/src/{}", relative.display()),
                    module,
                });
            }
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

/// The upward imports known today (`xtask/layers-known.txt`: `file -> module` per line).
pub fn known(root: &Path) -> Result<Vec<Upward>, String> {
    let path = root.join("xtask").join("layers-known.txt");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut known = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (file, module) = line
            .split_once(" -> ")
            .ok_or_else(|| format!("{}: `{line}` is not `file -> module`", path.display()))?;
        known.push(Upward {
            file: file.to_string(),
            module: module.to_string(),
        });
    }
    known.sort();
    Ok(known)
}

/// What is wrong with the host's layering under `root`: upward imports not in the known
/// list, and known ones that are gone. Empty when all is well.
pub fn check(root: &Path) -> Result<Vec<String>, String> {
    let found = upward_imports(root)?;
    let known = known(root)?;
    let mut problems = Vec::new();
    for upward in found.iter().filter(|u| !known.contains(u)) {
        let (_, above) = LAYERS[layer_of(&upward.module).unwrap_or(0)];
        let own = upward
            .file
            .trim_start_matches("host/src/")
            .split(['/', '.'])
            .next()
            .unwrap_or_default();
        let (_, below) = LAYERS[layer_of(own).unwrap_or(0)];
        problems.push(format!(
            "{upward}: `{own}` ({}) imports from `{}` ({}), a layer above it. Move what it \
             needs down, or let the lower layer own a trait that the higher one implements",
            layer_name(below),
            upward.module,
            layer_name(above)
        ));
    }
    for gone in known.iter().filter(|k| !found.contains(k)) {
        problems.push(format!(
            "{gone}: no longer imported upward: remove it from xtask/layers-known.txt"
        ));
    }
    Ok(problems)
}

fn layer_name(modules: &[&str]) -> &'static str {
    LAYERS
        .iter()
        .find(|(_, m)| std::ptr::eq(*m, modules))
        .map_or("?", |(name, _)| name)
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
        std::fs::create_dir_all(src.join("distributed")).expect("a temp dir");
        std::fs::write(src.join("error.rs"), "use crate::runtime::Shared;\n").expect("writes");
        std::fs::write(src.join("executor.rs"), "use crate::sandbox::Sandbox;\n").expect("writes");
        std::fs::write(
            src.join("distributed").join("worker.rs"),
            "use crate::{executor::run, runtime::Runtime};\nuse super::wire;\n",
        )
        .expect("writes");
        let found: Vec<String> = upward_imports(&root)
            .expect("reads")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                "host/src/distributed/worker.rs -> runtime",
                "host/src/error.rs -> runtime"
            ]
        );
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
    fn the_host_imports_nothing_from_a_layer_above_beyond_the_known_list() {
        let root = crate::repo_root();
        let problems = check(&root).expect("the host's sources are readable");
        assert!(
            problems.is_empty(),
            "the host's layers (xtask/src/layers.rs):\n  {}",
            problems.join("\n  ")
        );
    }
}
