//! `flaky` (test): fails with a retryable `network` error until attempt `succeedOn`
//! (default 3), then sets `succeededOn` to the attempt number. Exercises retries.

use serde::{Deserialize, Serialize};
use weir_sdk::{Context, Error};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Input {
    #[serde(default = "default_attempt")]
    succeed_on: u32,
}

fn default_attempt() -> u32 {
    3
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Output {
    succeeded_on: u32,
}

/// Fails until attempt `succeedOn`.
#[weir_sdk::processor(name = "flaky", max_attempts = 5, backoff = "fixed", backoff_ms = 5)]
fn process(input: Input, ctx: &Context) -> Result<Output, Error> {
    if ctx.attempt() < input.succeed_on {
        return Err(Error::network(format!(
            "attempt {} failed on purpose",
            ctx.attempt()
        )));
    }
    Ok(Output {
        succeeded_on: ctx.attempt(),
    })
}
