//! `panic` (hostile): panics with a recognisable message. The host must report an
//! `execution` error (code `trap`) carrying that message.

use weir_sdk::{Error, Value};

/// Panics.
#[weir_sdk::processor(name = "panic")]
fn process(state: Value) -> Result<Value, Error> {
    let reason = state
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("the answer is 42");
    panic!("processor exploded: {reason}");
}
