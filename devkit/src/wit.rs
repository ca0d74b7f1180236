//! The contract (`wit/processor.wit`), carried inside the tool so builds need no checkout.

use std::path::Path;

use wit_parser::{Resolve, WorldId};

use crate::BuildError;

/// The text of `wit/processor.wit`, the contract every plugin implements.
pub const WIT: &str = include_str!("../../wit/processor.wit");

/// The world every processor targets.
pub(crate) const WORLD: &str = "weir:processor/processor@0.1.0";

/// The contract parsed, with its one world selected.
pub(crate) fn resolve(name: &str) -> Result<(Resolve, WorldId), BuildError> {
    let mut resolve = Resolve::default();
    let package = resolve
        .push_str("processor.wit", WIT)
        .map_err(|e| BuildError::package(name, format!("the contract does not parse: {e:#}")))?;
    let world = resolve
        .select_world(&[package], Some("processor"))
        .map_err(|e| BuildError::package(name, format!("{e:#}")))?;
    Ok((resolve, world))
}

/// Writes the contract as `<dir>/processor.wit`, for tools that read WIT from disk.
pub(crate) fn write(dir: &Path) -> Result<(), BuildError> {
    std::fs::create_dir_all(dir).map_err(BuildError::io("cannot create", dir))?;
    let path = dir.join("processor.wit");
    crate::lang::write_if_changed(&path, WIT.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_carried_contract_parses_and_has_the_processor_world() {
        let (resolve, world) = resolve("test").expect("contract parses");
        assert_eq!(resolve.worlds[world].name, "processor");
        assert!(WORLD.ends_with("processor@0.1.0"));
    }
}
