//! `word-count`: sets `words` to the number of whitespace-separated words in `text`, and
//! emits a custom `counted` event with the count.

use serde::{Deserialize, Serialize};
use weir_sdk::{Context, Error};

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
fn process(input: Input, ctx: &Context) -> Result<Output, Error> {
    let words = input.text.split_whitespace().count();
    ctx.emit("counted", &weir_sdk::json!({ "words": words }))?;
    Ok(Output { words })
}
