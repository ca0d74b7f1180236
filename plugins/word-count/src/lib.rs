//! `word-count`: sets `words` to the number of whitespace-separated words in `text`.

use serde::{Deserialize, Serialize};
use weir_sdk::Error;

#[derive(Deserialize)]
struct Input {
    text: String,
}

#[derive(Serialize)]
struct Output {
    words: usize,
}

/// Counts the words of `text`.
#[weir_sdk::processor(name = "word-count", timeout_ms = 1000)]
fn process(input: Input) -> Result<Output, Error> {
    Ok(Output {
        words: input.text.split_whitespace().count(),
    })
}
