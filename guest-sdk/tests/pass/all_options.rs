use serde::{Deserialize, Serialize};
use weir_sdk::{Context, Error};

#[derive(Deserialize)]
struct In {
    n: u32,
}

#[derive(Serialize)]
struct Out {
    n: u32,
}

/// Uses every option the attribute documents.
#[weir_sdk::processor(
    name = "all-options",
    version = "2.1.0-beta.1",
    description = "every option",
    timeout_ms = 1500,
    memory_bytes = 33554432,
    fuel = 1000000,
    output_bytes = 65536,
    max_attempts = 4,
    backoff = "exponential",
    backoff_ms = 50,
    max_backoff_ms = 2000,
    jitter = false,
    retry_on = ["execution", "conflict"],
    concurrency = 8,
    priority = 0,
    rate_limit_max = 100,
    rate_limit_per_ms = 1000,
    output = "replace"
)]
fn process(input: In, ctx: &Context) -> Result<Out, Error> {
    let _ = ctx.attempt();
    Ok(Out { n: input.n + 1 })
}

fn main() {}
