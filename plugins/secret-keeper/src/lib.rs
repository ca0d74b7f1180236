//! `secret-keeper` (hostile): hides `secret` (8 lowercase letters or digits) in a static and
//! in a leaked heap block, as `WEIR-SECRET:<secret>!`, then scans its whole linear memory
//! for secrets so marked and reports every one that is not its own. Run after another
//! execution, it proves whether anything of that execution survived: in a fresh sandbox it
//! must find nothing.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use weir_sdk::Error;

#[derive(Deserialize)]
struct Input {
    secret: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Output {
    /// Secrets of other executions found in memory.
    found: Vec<String>,
    /// Whether the scan found this execution's own secret (it must: that shows the scan
    /// works).
    found_own: bool,
    /// Whether the static held a value when this execution started.
    static_was_set: bool,
    /// How many bytes of linear memory were scanned.
    scanned_bytes: usize,
}

/// A global in linear memory: set by every execution.
static HIDDEN: Mutex<Option<String>> = Mutex::new(None);

/// The marker, built at run time so the data segment never holds it.
fn marker() -> Vec<u8> {
    [
        0x57u8, 0x45, 0x49, 0x52, 0x2d, 0x53, 0x45, 0x43, 0x52, 0x45, 0x54, 0x3a,
    ]
    .to_vec()
}

#[cfg(target_arch = "wasm32")]
fn memory() -> &'static [u8] {
    let pages = core::arch::wasm32::memory_size(0);
    // SAFETY: linear memory from address 1 (0 would be a null pointer) to its current size
    // is mapped and readable for the whole call; the scan only reads bytes.
    unsafe {
        core::slice::from_raw_parts(
            std::ptr::with_exposed_provenance::<u8>(1),
            pages * 65536 - 1,
        )
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn memory() -> &'static [u8] {
    &[]
}

/// Hides the secret, then looks for others.
#[weir_sdk::processor(name = "secret-keeper")]
fn process(input: Input) -> Result<Output, Error> {
    let secret = input.secret;
    if secret.len() != 8
        || !secret
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(Error::validation(
            "`secret` must be 8 lowercase letters or digits",
        ));
    }
    let mut marked = marker();
    marked.extend_from_slice(secret.as_bytes());
    marked.push(b'!');
    let marked = String::from_utf8(marked).map_err(|e| Error::execution(e.to_string()))?;
    let mut hidden = HIDDEN.lock().map_err(|_| Error::execution("poisoned"))?;
    let static_was_set = hidden.is_some();
    *hidden = Some(marked.clone());
    drop(hidden);
    Box::leak(marked.into_boxed_str());

    let needle = marker();
    let memory = memory();
    let mut found = Vec::new();
    let mut found_own = false;
    let mut i = 0;
    while let Some(at) = memory[i..]
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
    {
        let start = i + at + needle.len();
        if let Some(value) = memory.get(start..start + 9)
            && value[8] == b'!'
            && value[..8]
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            let value = String::from_utf8_lossy(&value[..8]).into_owned();
            if value == secret {
                found_own = true;
            } else if !found.contains(&value) {
                found.push(value);
            }
        }
        i = start;
    }
    Ok(Output {
        found,
        found_own,
        static_was_set,
        scanned_bytes: memory.len(),
    })
}
