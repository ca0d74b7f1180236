//! Turns a wasm32-wasi core module (from C or Go) into a processor component.

use wit_component::{ComponentEncoder, StringEncoding};

use crate::BuildError;

/// Embeds the contract's type information into `module` when `embed` is set (C links it
/// from an object file instead) and wraps it into a component, adapting WASI preview 1 imports to preview 2 with the
/// reactor adapter of the host's wasmtime release.
pub(crate) fn component_from_module(
    name: &str,
    mut module: Vec<u8>,
    embed: bool,
) -> Result<Vec<u8>, BuildError> {
    if embed {
        let (resolve, world) = crate::wit::resolve(name)?;
        wit_component::embed_component_metadata(
            &mut module,
            &resolve,
            world,
            StringEncoding::UTF8,
            false,
        )
        .map_err(|e| BuildError::package(name, format!("cannot embed the contract: {e:#}")))?;
    }
    ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .and_then(|encoder| {
            encoder.adapter(
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|encoder| encoder.encode())
        .map_err(|e| BuildError::package(name, format!("{e:#}")))
}
