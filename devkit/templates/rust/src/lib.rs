//! `{{name}}`: sets `greeting` from `name` (default "world").

use serde::{Deserialize, Serialize};
use weir_sdk::{Context, Error};

#[derive(Deserialize)]
struct Input {
    name: Option<String>,
}

#[derive(Serialize)]
struct Output {
    greeting: String,
}

/// Greets `name`.
#[weir_sdk::processor(name = "{{name}}", version = "0.1.0", timeout_ms = 1000)]
fn process(input: Input, ctx: &Context) -> Result<Output, Error> {
    let name = input.name.unwrap_or_else(|| "world".to_string());
    if name.trim().is_empty() {
        return Err(Error::validation("`name` must not be blank").with_code("blank-name"));
    }
    ctx.info("greeting");
    Ok(Output {
        greeting: format!("Hello, {name}!"),
    })
}
