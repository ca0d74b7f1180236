//! `stack-hog` (hostile): keeps a 64 KiB buffer on its stack in linear memory per call and
//! nests `depth` more calls. Depth 0 fits the 128 KiB stack `weir build` gives a Rust
//! plugin; depth 3 overflows it, which must trap the guest and nothing else.

use weir_sdk::{Error, Value};

/// One level: a buffer whose address escapes, so it lives on the stack in linear memory.
#[inline(never)]
fn hog(depth: u64) -> u8 {
    let mut buffer = [0u8; 64 << 10];
    std::hint::black_box(&mut buffer);
    if depth > 0 {
        buffer[1] = hog(depth - 1);
    }
    std::hint::black_box(&buffer)[1]
}

/// Uses `depth` + 1 buffers of stack.
#[weir_sdk::processor(name = "stack-hog")]
fn process(state: Value) -> Result<Value, Error> {
    let depth = state["depth"].as_u64().unwrap_or(0);
    Ok(weir_sdk::json!({ "byte": hog(depth) }))
}
