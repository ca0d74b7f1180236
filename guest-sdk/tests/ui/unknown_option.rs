use weir_sdk::{Error, Value};

#[weir_sdk::processor(nmae = "typo")]
fn process(state: Value) -> Result<Value, Error> {
    Ok(state)
}

fn main() {}
