//! `hello`: sets `greeting` to `Hello <user>!` (`user` defaults to `world`). The operator
//! can change the salutation with `greeting = "..."` in the `[config]` of `hello.toml`.

use serde::{Deserialize, Serialize};
use weir_sdk::{Context, Error};

#[derive(Deserialize)]
struct Input {
    user: Option<String>,
}

#[derive(Serialize)]
struct Output {
    greeting: String,
}

/// Greets the state's `user`.
#[weir_sdk::processor(name = "hello", timeout_ms = 1000)]
fn process(input: Input, ctx: &Context) -> Result<Output, Error> {
    let user = input.user.unwrap_or_else(|| "world".to_string());
    let salutation = ctx
        .config("greeting")
        .unwrap_or_else(|| "Hello".to_string());
    ctx.debug("greeting");
    Ok(Output {
        greeting: format!("{salutation} {user}!"),
    })
}
