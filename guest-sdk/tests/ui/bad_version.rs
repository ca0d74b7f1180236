use weir_sdk::{Error, Value};

#[weir_sdk::processor(name = "x", version = "1.0")]
fn process(state: Value) -> Result<Value, Error> {
    Ok(state)
}

fn main() {}
