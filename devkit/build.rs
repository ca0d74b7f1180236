//! Carries the Go support package of `wit-bindgen-go` (`go.bytecodealliance.org/pkg`) into
//! the tool. The bindings it generates import that package, and Go's module proxy is not
//! something a build may rely on; the crate ships the package's sources, so they are copied
//! from the crate as cargo fetched it (found through `cargo metadata`), never committed here.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--locked"])
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let go_crate = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "wit-bindgen-go")
        .and_then(|p| p["manifest_path"].as_str())
        .map(|m| {
            Path::new(m)
                .parent()
                .expect("a manifest has a folder")
                .to_path_buf()
        })
        .expect("wit-bindgen-go is a dependency");
    let pkg = go_crate.join("src").join("pkg");
    let mut files = Vec::new();
    for sub in ["wit/runtime", "wit/types", "wit/async"] {
        let dir = pkg.join(sub);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.ends_with(".go") || n.ends_with(".s"))
            .collect();
        names.sort();
        for name in names {
            files.push(format!("{sub}/{name}"));
        }
    }
    files.push("LICENSE".to_string());
    let mut table = String::from(
        "/// The files of `go.bytecodealliance.org/pkg`, as (path, contents).\npub(crate) const GO_PKG: &[(&str, &[u8])] = &[\n",
    );
    for file in &files {
        let from = pkg.join(file);
        let to = out_dir.join("go-pkg").join(file);
        std::fs::create_dir_all(to.parent().expect("a file has a folder"))
            .expect("OUT_DIR is writable");
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("cannot copy {}: {e}", from.display()));
        table.push_str(&format!(
            "    ({file:?}, include_bytes!({:?})),\n",
            to.display().to_string()
        ));
    }
    table.push_str("];\n");
    std::fs::write(out_dir.join("go_pkg.rs"), table).expect("OUT_DIR is writable");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", pkg.display());
}
