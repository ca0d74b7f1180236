//! What the HTTP API tests share: reading an answer, and waiting on an event stream.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

/// The status and JSON body of an answer (a body that is not JSON comes back as a string).
pub async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Reads an event stream into `text` until it contains `needle` (30 s at most).
pub async fn wait_for_text<B: AsRef<[u8]>>(
    events: &mut (impl futures_util::Stream<Item = reqwest::Result<B>> + Unpin),
    text: &mut String,
    needle: &str,
) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while !text.contains(needle) {
            let chunk = events.next().await.expect("the stream stays open").unwrap();
            text.push_str(&String::from_utf8_lossy(chunk.as_ref()));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no `{needle}` within 30 s; got:\n{text}"));
}
