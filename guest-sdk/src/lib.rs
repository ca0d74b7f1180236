//! Write [weir](https://github.com/weir-rs/weir) processors in Rust.
//!
//! A processor is a function from a JSON state to a new state or a typed [`Error`]. Put
//! [`processor`] on one function, build the crate for `wasm32-wasip2` as a `cdylib`, and
//! drop the resulting `.wasm` file, named after the processor, into weir's plugins folder:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use weir_sdk::{Context, Error};
//!
//! #[derive(Deserialize)]
//! struct Order {
//!     email: String,
//!     quantity: u32,
//! }
//!
//! #[derive(Serialize)]
//! struct Checked {
//!     accepted: bool,
//! }
//!
//! /// Accepts orders of at most ten items.
//! #[weir_sdk::processor(name = "check-order", version = "1.0.0", timeout_ms = 1000)]
//! fn process(order: Order, ctx: &Context) -> Result<Checked, Error> {
//!     if !order.email.contains('@') {
//!         return Err(Error::validation(format!("`{}` is not an email address", order.email))
//!             .with_code("invalid-email"));
//!     }
//!     if order.quantity > 10 {
//!         return Err(Error::business("too-many-items", "at most 10 items per order"));
//!     }
//!     ctx.info("order accepted");
//!     Ok(Checked { accepted: true })
//! }
//! # fn main() {}
//! ```
//!
//! # How the state flows
//!
//! The input type is deserialized from the whole state (unknown fields are ignored unless
//! your type says otherwise). By default the output is **merged** into the input: each
//! top-level field of the output replaces the same field of the input, and the input's
//! other fields are kept, so a processor only returns what it changes. With
//! `output = "replace"` the output becomes the whole new state instead. Either way the
//! output must serialize to a JSON object, and the host overwrites its `metadata` field,
//! which belongs to the host.
//!
//! An input that does not match the input type is a [`ErrorKind::Validation`] error naming
//! the problem; the function is not called.
//!
//! # Attribute options
//!
//! | option | meaning | default |
//! |---|---|---|
//! | `name = "…"` | processor name; must equal the `.wasm` file stem | the package name |
//! | `version = "…"` | the processor's semver | the package version |
//! | `description = "…"` | one sentence | the function's doc comment, else the package description |
//! | `timeout_ms`, `memory_bytes`, `fuel`, `output_bytes` | default limits (the operator and host can lower them) | host defaults |
//! | `max_attempts`, `backoff = "fixed"\|"exponential"`, `backoff_ms`, `max_backoff_ms`, `jitter`, `retry_on = ["network", …]` | retry policy; once any of them is set, the rest default to 3 attempts, exponential backoff from 100 ms to 30 s and **jitter on**; `timeout`, `network`, quota and retryable-marked errors are retried, plus the `retry_on` kinds | one attempt |
//! | `concurrency`, `priority`, `rate_limit_max`, `rate_limit_per_ms` | queue defaults | host defaults |
//! | `output = "merge"\|"replace"` | how the output becomes the new state | `merge` |
//!
//! The function takes the input by value and, optionally, a `&Context` second; it returns
//! `Result<Out, Error>` where `Out: Serialize`. Any `std::error::Error` converts into an
//! [`ErrorKind::Execution`] error with `?`.
//!
//! # Outbound HTTP
//!
//! With the `http` feature, `weir_sdk::http` sends HTTP requests through the host's `wasi:http`
//! (a plugin built without it does not even import `wasi:http`):
//!
//! ```toml
//! [dependencies]
//! weir-sdk = { version = "0.1", features = ["http"] }
//! ```
//!
//! ```ignore
//! let body = weir_sdk::http::get("https://api.example.com/rates")?.text()?;
//! let reply = weir_sdk::http::Request::post("http://127.0.0.1:8080/orders")
//!     .json(&order)?
//!     .send()?;
//! ```
//!
//! Every request is denied unless the operator grants its origin (and, optionally, its
//! methods) in the plugin's manifest, `NAME.toml` beside `NAME.wasm`:
//!
//! ```toml
//! [capabilities.http]
//! allow = ["https://api.example.com", { origin = "http://127.0.0.1:8080", methods = ["GET", "POST"] }]
//! timeout_ms = 10000            # the whole request: connect, response and body
//! max_response_bytes = 1048576
//! ```
//!
//! Any HTTP status is an `Ok` response; a request that gets none fails with a typed
//! [`Error`] that `?` passes to the host unchanged:
//!
//! | code | kind | retryable | when |
//! |---|---|---|---|
//! | `invalid-url`, `invalid-method`, `invalid-header`, `forbidden-header` | validation | no | the request is malformed, or sets a header only the host may set |
//! | `capability-denied` | configuration | no | the manifest does not allow the origin and method, or the host name resolves to an internal address the grant does not name |
//! | `http-timeout` | timeout | yes | connecting or the response took longer than the timeout |
//! | `http-response-too-large` | resource | no | the body is larger than `max_response_bytes` |
//! | `http-error` | network | yes | anything else: DNS, refused or reset connections, TLS, protocol errors |

pub use weir_sdk_macros::processor;

extern crate self as weir_sdk;

mod context;
mod error;
#[cfg(feature = "http")]
pub mod http;
mod run;

pub use context::{Context, Level, SessionStore};
pub use error::{Error, ErrorKind};

/// Re-exported so that processors need no direct `serde_json` dependency for dynamic states.
pub use serde_json::{Map, Value, json};

/// Support code for the [`processor`] macro. Not a stable API: do not use it directly.
#[doc(hidden)]
pub mod __private {
    pub use crate::run::{Describe, OutputMode, describe, run};
    pub use wit_bindgen;

    /// The bindings generated from the weir WIT contract.
    pub mod bindings {
        wit_bindgen::generate!({
            world: "processor",
            path: "../wit",
            pub_export_macro: true,
            export_macro_name: "__export_weir_processor",
            default_bindings_module: "::weir_sdk::__private::bindings",
            runtime_path: "::weir_sdk::__private::wit_bindgen::rt",
            generate_all,
        });
    }

    pub use bindings::exports::weir::processor::handler::Guest;
    pub use bindings::weir::processor::types::{
        ExecutionContext, ProcessorError, ProcessorMetadata,
    };
}
