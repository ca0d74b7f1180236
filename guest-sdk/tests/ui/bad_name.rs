use weir_sdk::{Error, Value};

#[weir_sdk::processor(name = "Add_Ten")]
fn process(state: Value) -> Result<Value, Error> {
    Ok(state)
}

fn main() {}
