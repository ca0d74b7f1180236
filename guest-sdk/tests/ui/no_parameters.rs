use weir_sdk::{Error, Value};

#[weir_sdk::processor(name = "x")]
fn process() -> Result<Value, Error> {
    Ok(Value::Null)
}

fn main() {}
