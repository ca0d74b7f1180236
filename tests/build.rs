//! Builds every plugin from `plugins/` before the tests compile, through the same path as
//! `cargo xtask plugins`, and tells the tests where they are.

use std::path::{Path, PathBuf};

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out: share one wasm build per target dir.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out_dir.clone());
    let plugins_out = out_dir.join("plugins");
    std::fs::create_dir_all(&plugins_out).expect("OUT_DIR is writable");
    let built = match xtask::build_plugins(&target_dir.join("wasm-plugins"), &plugins_out) {
        Ok(built) => built,
        Err(message) => panic!("cannot build the test plugins: {message}"),
    };
    // The Python, JavaScript, C and Go plugins, with the pinned tools `cargo xtask test`
    // installs (a build script does not download them itself). Without them the tests that
    // need those plugins are ignored, saying why, so that a developer can run every other
    // test; under CI (`CI` set to anything but `false` or `0`) their absence is an error,
    // so nothing is skipped there unseen.
    println!("cargo::rustc-check-cfg=cfg(weir_no_language_plugins)");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rerun-if-env-changed=WEIR_TOOLS_DIR");
    println!("cargo::rerun-if-env-changed=HOME");
    if xtask::tools_installed() {
        if let Err(message) =
            xtask::build_language_plugins(&target_dir.join("lang-plugins"), &plugins_out)
        {
            panic!("cannot build the test plugins in other languages: {message}");
        }
    } else if in_ci() {
        panic!(
            "the plugin toolchains are not installed in {} and CI is set, so the tests of the \
             Python, JavaScript, C and Go plugins cannot be skipped: run `cargo xtask tools` \
             (or `cargo xtask test`, which installs them)",
            xtask::tools_dir().display()
        );
    } else {
        println!(
            "cargo::warning=the plugin toolchains are not installed in {}: the tests of the \
             Python, JavaScript, C and Go plugins are ignored (`cargo xtask tools` installs them)",
            xtask::tools_dir().display()
        );
        println!("cargo::rustc-cfg=weir_no_language_plugins");
    }
    println!(
        "cargo:rustc-env=WEIR_TEST_PLUGINS={}",
        built.plugins_dir.display()
    );
    println!(
        "cargo:rustc-env=WEIR_TEST_FIXTURES={}",
        built.fixtures_dir.display()
    );
    let tools = std::env::join_paths(xtask::tool_paths()).expect("tool paths have no separator");
    println!(
        "cargo:rustc-env=WEIR_TEST_TOOLS={}",
        tools.to_string_lossy()
    );
    println!(
        "cargo:rustc-env=WEIR_TEST_CACHE={}",
        target_dir.join("weir-test-cache").display()
    );
    let root = xtask::repo_root();
    // Installing the tools writes their stamp last. A path that does not exist would make
    // cargo run this script on every build, so without the stamp the folder (created here,
    // empty) is watched instead: the install changes it.
    let stamp = xtask::tools_dir().join("installed.txt");
    if stamp.is_file() {
        println!("cargo:rerun-if-changed={}", stamp.display());
    } else if std::fs::create_dir_all(xtask::tools_dir()).is_ok() {
        println!("cargo:rerun-if-changed={}", xtask::tools_dir().display());
    }
    for path in [
        "wit",
        "guest-sdk",
        "plugins/Cargo.toml",
        "plugins/Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    // Each plugin's sources, but not plugins/dist (written by `cargo xtask plugins`).
    if let Ok(entries) = std::fs::read_dir(root.join("plugins")) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if entry.path().is_dir() && name != "dist" && name != "target" {
                println!("cargo:rerun-if-changed={}", entry.path().display());
            }
        }
    }
}

/// Whether this build runs under CI, as CI services announce it (`CI=true`; `.ci/run` sets it).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}
