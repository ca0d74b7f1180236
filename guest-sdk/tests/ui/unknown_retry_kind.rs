use weir_sdk::{Error, Value};

#[weir_sdk::processor(name = "x", retry_on = ["network", "flaky"])]
fn process(state: Value) -> Result<Value, Error> {
    Ok(state)
}

fn main() {}
