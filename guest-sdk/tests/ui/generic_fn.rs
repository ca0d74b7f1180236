use weir_sdk::{Error, Value};

#[weir_sdk::processor(name = "x")]
fn process<T>(state: Value) -> Result<Value, Error> {
    Ok(state)
}

fn main() {}
