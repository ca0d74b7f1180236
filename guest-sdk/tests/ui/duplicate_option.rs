use weir_sdk::{Error, Value};

#[weir_sdk::processor(name = "x", name = "y")]
fn process(state: Value) -> Result<Value, Error> {
    Ok(state)
}

fn main() {}
