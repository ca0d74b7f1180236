//! `huge-output` (hostile): returns a state of `megabytes` MiB (default 5, above the host's
//! 4 MiB default output cap). The host must refuse it with a `resource` error.

use serde::{Deserialize, Serialize};
use weir_sdk::Error;

#[derive(Deserialize)]
struct Input {
    #[serde(default = "default_megabytes")]
    megabytes: usize,
}

fn default_megabytes() -> usize {
    5
}

#[derive(Serialize)]
struct Output {
    blob: String,
}

/// Returns a huge string.
#[weir_sdk::processor(name = "huge-output", output = "replace")]
fn process(input: Input) -> Result<Output, Error> {
    Ok(Output {
        blob: "x".repeat(input.megabytes << 20),
    })
}
