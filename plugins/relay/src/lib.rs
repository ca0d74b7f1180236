//! `relay` (test): calls the processor named in `target` with its own state (minus
//! `target`) and returns that processor's output with `relayedAt` set to its call depth.
//! With `target = "relay"` and a `then` chain it nests; with `target = "relay"` forever it
//! hits the host's maximum call depth.

use weir_sdk::{Context, Error, Map, Value};

/// Relays the state to `target`.
#[weir_sdk::processor(name = "relay", output = "replace")]
fn process(mut state: Map<String, Value>, ctx: &Context) -> Result<Map<String, Value>, Error> {
    let target = match state.remove("target") {
        Some(Value::String(target)) => target,
        _ => return Err(Error::validation("`target` must name a processor")),
    };
    // `forward` (if set) becomes the next relay's target, so chains of any length can be
    // described as a list: {"target": "relay", "forward": ["relay", "increment"]}.
    if let Some(Value::Array(mut rest)) = state.remove("forward")
        && !rest.is_empty()
    {
        let next = rest.remove(0);
        state.insert("target".into(), next);
        state.insert("forward".into(), Value::Array(rest));
    }
    let mut output: Map<String, Value> = ctx.call(&target, &state)?;
    output.insert("relayedAt".into(), Value::from(ctx.call_depth()));
    Ok(output)
}
