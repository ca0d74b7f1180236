use weir_sdk::{Context, Error, Value};

#[weir_sdk::processor(name = "x")]
fn process(state: Value, ctx: Context) -> Result<Value, Error> {
    let _ = ctx;
    Ok(state)
}

fn main() {}
