//! `weir new NAME --lang LANG`: scaffold a plugin project that builds and runs as is.

use std::path::{Path, PathBuf};

use clap::Args;
use weir_devkit::{Lang, ScaffoldOptions};

use super::{Failure, Outcome};

#[derive(Args, Debug)]
pub(crate) struct NewArgs {
    /// The processor's name (lowercase kebab-case): the project file and the built
    /// component (`NAME.wasm`) are named after it.
    name: String,
    /// The language: rust, python, js, c or go.
    #[arg(long, value_parser = parse_lang)]
    lang: Lang,
    /// Where to create the project [default: ./NAME].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// For Rust: the weir-sdk folder to depend on [default: the SDK of the weir source tree
    /// this binary was built from, when it still exists; else weir-sdk from crates.io].
    #[arg(long, value_name = "DIR")]
    sdk: Option<PathBuf>,
}

fn parse_lang(value: &str) -> Result<Lang, String> {
    value.parse()
}

pub(crate) fn run(args: NewArgs) -> Result<Outcome, Failure> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    let rust_sdk_path = args.sdk.clone().or_else(source_tree_sdk);
    let options = ScaffoldOptions { rust_sdk_path };
    let files = weir_devkit::scaffold(&args.name, args.lang, &dir, &options)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    eprintln!(
        "created a {} plugin `{}` in {} ({} files)",
        args.lang.display_name(),
        args.name,
        dir.display(),
        files.len()
    );
    eprintln!(
        "build it into your plugins folder with: weir build {} --out plugins",
        dir.display()
    );
    Ok(Outcome::Ok)
}

/// The `guest-sdk` folder of the source tree this binary was built from, if it is there.
fn source_tree_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .join("guest-sdk");
    sdk.join("Cargo.toml").is_file().then_some(sdk)
}
