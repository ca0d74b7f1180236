//! Nothing to use: this crate only turns on, for `weir-cli`, the dependency features the
//! rest of the workspace turns on (see its `Cargo.toml`), so that the `weir` binary and the
//! tests share one build of every dependency.
