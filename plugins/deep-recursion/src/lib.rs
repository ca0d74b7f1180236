//! `deep-recursion` (hostile): recurses until the WebAssembly stack is exhausted. The host
//! must stop it with a `resource` error.

use weir_sdk::{Error, Value};

#[inline(never)]
fn descend(depth: u64) -> u64 {
    // Never true at run time, but the compiler cannot know that.
    if std::hint::black_box(depth) == u64::MAX {
        return depth;
    }
    // The arithmetic after the call keeps it from becoming a loop.
    std::hint::black_box(descend(std::hint::black_box(depth + 1))) + 1
}

/// Recurses forever.
#[weir_sdk::processor(name = "deep-recursion")]
fn process(_state: Value) -> Result<Value, Error> {
    let depth = descend(0);
    Ok(weir_sdk::json!({ "depth": depth }))
}
