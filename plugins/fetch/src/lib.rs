//! `fetch` (test): sends one HTTP request through the host's `wasi:http` and returns the
//! response's `status`, `body` (as text) and `contentType`. It exercises the operator's
//! `[capabilities.http]` grant: without one every request fails with `capability-denied`,
//! and the grant's timeout and response size cap surface as `http-timeout` and
//! `http-response-too-large`. Every SDK error is returned unchanged.
//!
//! Input: `{"url": "...", "method"?: "GET", "body"?: "...", "headers"?: {"name": "value"}}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weir_sdk::Error;
use weir_sdk::http::Request;

#[derive(Deserialize)]
struct Input {
    url: String,
    #[serde(default = "get")]
    method: String,
    body: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn get() -> String {
    "GET".to_string()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Output {
    status: u16,
    body: String,
    content_type: Option<String>,
}

/// Sends the request described by the state and returns the response.
#[weir_sdk::processor(name = "fetch", timeout_ms = 10000)]
fn process(input: Input) -> Result<Output, Error> {
    let mut request = Request::new(&input.method, &input.url);
    for (name, value) in input.headers {
        request = request.header(name, value);
    }
    if let Some(body) = input.body {
        request = request.body(body);
    }
    let response = request.send()?;
    Ok(Output {
        status: response.status(),
        body: response.text()?,
        content_type: response.header("content-type").map(str::to_string),
    })
}
