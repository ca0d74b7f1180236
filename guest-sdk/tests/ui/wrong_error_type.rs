use weir_sdk::Value;

#[weir_sdk::processor(name = "x")]
fn process(state: Value) -> Result<Value, String> {
    Ok(state)
}

fn main() {}
