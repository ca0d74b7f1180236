//! `abuse` (hostile): pushes at the host everything a guest can hand it through weir's
//! imports, as big or as many as the input says, and reports what the host answered. The
//! host must bound each (a typed error to the guest, or a clipped copy) and stay healthy.
//!
//! Input (every part optional, run in this order):
//! - `emit: {count, bytes, nameBytes}`: `count` events whose data is a string of `bytes`
//!   bytes, named with `nameBytes` bytes (default `x`); stops at the first refusal;
//! - `log: {count, messageBytes, fieldsBytes, text?, rawFields?}`: `count` log lines of that
//!   size; `text` is logged as is instead, and `rawFields` handed to the import unchecked
//!   (as a guest that skips the SDK would);
//! - `call: {count, nameBytes}`: `count` nested calls to distinct names that do not exist;
//! - `fail: {messageBytes, detailsBytes}`: then fails with an error that large.
//!
//! Output: `{emitted, emitError: {kind, code, message}?, logged, callErrors: [code…]}`.

use serde::Deserialize;
use weir_sdk::__private::bindings::weir::processor::logging as raw_log;
use weir_sdk::{Context, Error, Level, Map, Value, json};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Input {
    emit: Option<Emit>,
    log: Option<Log>,
    call: Option<Call>,
    fail: Option<Fail>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Emit {
    count: u32,
    #[serde(default)]
    bytes: usize,
    name_bytes: Option<usize>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Log {
    count: u32,
    #[serde(default)]
    message_bytes: usize,
    #[serde(default)]
    fields_bytes: usize,
    text: Option<String>,
    raw_fields: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Call {
    count: u32,
    #[serde(default = "one")]
    name_bytes: usize,
}

fn one() -> usize {
    1
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fail {
    #[serde(default)]
    message_bytes: usize,
    #[serde(default)]
    details_bytes: usize,
}

fn describe(error: &Error) -> Value {
    json!({
        "kind": error.kind().as_str(),
        "code": error.code(),
        "message": error.message(),
    })
}

/// Pushes what the input asks for at the host.
#[weir_sdk::processor(name = "abuse", timeout_ms = 20000, output = "replace")]
fn process(input: Input, ctx: &Context) -> Result<Map<String, Value>, Error> {
    let mut out = Map::new();
    if let Some(emit) = input.emit {
        let name = "x".repeat(emit.name_bytes.unwrap_or(1).max(1));
        let data = "d".repeat(emit.bytes);
        let mut emitted = 0u32;
        for _ in 0..emit.count {
            match ctx.emit(&name, &data) {
                Ok(()) => emitted += 1,
                Err(error) => {
                    out.insert("emitError".into(), describe(&error));
                    break;
                }
            }
        }
        out.insert("emitted".into(), Value::from(emitted));
    }
    if let Some(log) = input.log {
        let message = log.text.unwrap_or_else(|| "m".repeat(log.message_bytes));
        let fields = json!({ "f": "f".repeat(log.fields_bytes) });
        for _ in 0..log.count {
            match &log.raw_fields {
                Some(raw) => raw_log::log(raw_log::Level::Info, &message, Some(raw)),
                None => ctx.log(Level::Info, &message, &fields),
            }
        }
        out.insert("logged".into(), Value::from(log.count));
    }
    if let Some(call) = input.call {
        let mut codes = Vec::new();
        for i in 0..call.count {
            // Distinct names: a counter, padded with letters to the asked length.
            let mut name = format!("no-such-{i}-");
            while name.len() < call.name_bytes {
                name.push('x');
            }
            match ctx.call::<_, Value>(&name, &json!({})) {
                Ok(_) => codes.push(Value::from("ok")),
                Err(error) => codes.push(Value::from(error.code().unwrap_or("none"))),
            }
        }
        out.insert("callErrors".into(), Value::from(codes));
    }
    if let Some(fail) = input.fail {
        let details = json!({ "blob": "b".repeat(fail.details_bytes) });
        return Err(Error::business("abuse", "e".repeat(fail.message_bytes)).with_details(&details));
    }
    Ok(out)
}
