use weir_sdk::Value;

#[weir_sdk::processor(name = "x")]
fn process(state: Value) -> Value {
    state
}

fn main() {}
