//! Scaffold and build weir processor plugins in every language weir supports.
//!
//! A plugin project is a folder with a `weir-plugin.toml` naming the processor and its
//! language (see [`Project`]), plus that language's sources. [`scaffold`] writes a working
//! project from a template (`weir new`); [`build`] turns a project into one component file,
//! `<name>.wasm`, in an output folder such as `plugins/` (`weir build`):
//!
//! | language | compiler (its environment variable, else `--tools` folders, else `PATH`) | how |
//! |---|---|---|
//! | Rust | `cargo` with the `wasm32-wasip2` target | `weir-sdk`, a `cdylib` |
//! | Python | `componentize-py` (`WEIR_COMPONENTIZE_PY`) | the `weir` module, bundled in |
//! | JavaScript | `componentize-js` (`WEIR_COMPONENTIZE_JS`) | `./weir.js`, bundled in |
//! | C | `zig cc` or any wasm32-wasi C compiler (`WEIR_CC`) | bindings generated here, `weir.h` |
//! | Go | `go` 1.24 or later (`WEIR_GO`) | bindings generated here, package `weir` |
//!
//! C and Go produce a WebAssembly *module*; this crate embeds the contract's type
//! information and wraps it into a component with the WASI preview 1 reactor adapter of the
//! same wasmtime release as the host, so no other tool (`wasm-tools`, `wit-bindgen`) is needed.

mod componentize;
mod error;
mod go;
mod lang;
mod project;
mod scaffold;
mod tools;
mod wit;

pub use error::BuildError;
pub use lang::{Built, build, install, rust_stack_arg, write_if_changed};
pub use project::{DEFAULT_STACK_BYTES, Lang, PROJECT_FILE, Project};
pub use scaffold::{ScaffoldOptions, scaffold};
pub use tools::Tools;
pub use wit::WIT;
