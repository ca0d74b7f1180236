//! `classify` (test): a route selector. Sets `route` to `big` when `count` is over 10,
//! otherwise `small`.

use serde::{Deserialize, Serialize};
use weir_sdk::Error;

#[derive(Deserialize)]
struct Input {
    #[serde(default)]
    count: i64,
}

#[derive(Serialize)]
struct Output {
    route: &'static str,
}

/// Picks `big` or `small` from `count`.
#[weir_sdk::processor(name = "classify")]
fn process(input: Input) -> Result<Output, Error> {
    Ok(Output {
        route: if input.count > 10 { "big" } else { "small" },
    })
}
