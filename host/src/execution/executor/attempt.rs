//! One attempt in a fresh sandbox: take a sandbox slot, instantiate the plugin (or take a
//! warm instance), call `process` under the attempt's deadline, fuel and memory cap, cancel
//! it softly then for real, and read its output under the output cap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::Scope;
use super::classify::{cancelled_error, classify_trap, deadline_error};
use crate::contract::bounds::human_bytes;
use crate::contract::cancel::CancelHandle;
use crate::contract::clock::Stamp;
use crate::contract::error::{ErrorKind, ExecutionError, codes};
use crate::contract::limits::Limits;
use crate::contract::result::ExecutionInfo;
use crate::contract::state;
use crate::execution::context::Context;
use crate::execution::services::ExecutionServices;
use crate::sandbox::bindings::wit;
use crate::sandbox::guest_log::GuestLog;
use crate::sandbox::plugin::Plugin;
use crate::sandbox::warm::WarmInstance;
use crate::sandbox::{Sandbox, SandboxSpec, from_wit_error};

pub(super) struct AttemptOutcome {
    pub(super) result: Result<Map<String, Value>, ExecutionError>,
    pub(super) fuel: u64,
    pub(super) peak_memory: u64,
    /// When the guest returned (or the attempt gave up).
    pub(super) ended: Instant,
}

impl AttemptOutcome {
    fn early(error: ExecutionError) -> Self {
        AttemptOutcome {
            result: Err(error),
            fuel: 0,
            peak_memory: 0,
            ended: Instant::now(),
        }
    }
}

/// When an attempt runs: the execution's clock readings, the time it starts (as last
/// read), and when it must be done by.
pub(super) struct Window {
    pub(super) started: Stamp,
    pub(super) now: Instant,
    pub(super) deadline: Instant,
}

enum Raw {
    Finished(wasmtime::Result<Result<String, wit::ProcessorError>>),
    Deadline,
    Cancelled,
}

pub(super) async fn attempt(
    shared: &Arc<Context>,
    plugin: &Arc<Plugin>,
    input: &String,
    info: &ExecutionInfo,
    limits: &Limits,
    window: Window,
    scope: &Scope,
) -> AttemptOutcome {
    let deadline = window.deadline;
    let mut now = window.now;
    // Top-level work waits for a sandbox slot; a guest's nested call already holds its
    // caller's, and waiting here could deadlock a full host.
    let _permit = if scope.depth > 0 {
        None
    } else if let Ok(permit) = shared.slots().try_acquire() {
        Some(permit)
    } else {
        match tokio::time::timeout_at(deadline.into(), shared.slots().acquire()).await {
            Ok(Ok(permit)) => {
                now = Instant::now();
                Some(permit)
            }
            Ok(Err(_)) => {
                return AttemptOutcome::early(ExecutionError::host(
                    ErrorKind::Resource,
                    codes::CAPACITY_EXCEEDED,
                    "the runtime is shutting down",
                ));
            }
            Err(_) => {
                return AttemptOutcome::early(deadline_error(limits, "waiting for a free sandbox"));
            }
        }
    };
    let cancel = &scope.cancel;
    // A warm plugin reuses an idle instance of this tenant's when one is there and may hold
    // the memory this execution is capped at; otherwise the sandbox is fresh.
    let warm = plugin.warm();
    let reused = warm
        .and_then(|pool| pool.take(&scope.tenant, now))
        .filter(|w| w.store.data().limiter.current <= limits.memory_bytes);
    let log = match &reused {
        Some(w) => {
            let log = w.store.data().log.clone();
            log.reset(now);
            log
        }
        None => GuestLog::new(shared.config().log_rate, shared.config().guest),
    };
    let spec = SandboxSpec {
        memory_bytes: limits.memory_bytes,
        fuel: limits.fuel,
        deadline,
        cancel: cancel.clone(),
        processor: plugin.name_shared().clone(),
        log: log.clone(),
        capabilities: &plugin.manifest().capabilities,
        config: plugin.config().clone(),
        // Nested calls from this attempt are children of this execution.
        services: Some(Arc::new(ExecutionServices::new(
            shared.clone(),
            Scope {
                parent: Some(Arc::from(info.id.as_str())),
                ..scope.clone()
            },
        ))),
        bounds: shared.config().guest,
    };
    let (mut store, mut instance, uses) = match reused {
        Some(mut w) => match Sandbox::rearm(&mut w.store, spec) {
            Ok(()) => (w.store, Some(w.processor), w.uses),
            Err(error) => return AttemptOutcome::early(error),
        },
        None => match Sandbox::store(shared.engine(), spec) {
            Ok(store) => (store, None, 0),
            Err(error) => return AttemptOutcome::early(error),
        },
    };
    let context = wit::ExecutionContext {
        execution_id: info.id.clone(),
        tenant: info.tenant.clone(),
        session_id: info.session.clone(),
        processor: info.processor.clone(),
        attempt: info.attempts,
        call_depth: scope.depth,
        deadline_unix_ms: window.started.unix_ms_at(deadline),
    };
    let grace = shared.config().cancel_grace;
    let raw = {
        let run = async {
            let processor = match &instance {
                Some(processor) => processor,
                None => instance.insert(plugin.pre.instantiate_async(&mut store).await?),
            };
            processor
                .weir_processor_handler()
                .call_process(&mut store, input, &context)
                .await
        };
        // Biased: the guest is polled first, so a call that finishes in one poll (most of
        // them) never registers the timer or the cancellation waiter at all.
        tokio::select! {
            biased;
            result = run => Raw::Finished(result),
            // Lazy (an async block): the timer is only created if the guest is still running.
            _ = async { tokio::time::sleep_until(deadline.into()).await } => Raw::Deadline,
            _ = hard_cancel(cancel, grace) => Raw::Cancelled,
        }
    };
    // The guest's own fuel, and what its nested `call`s burnt.
    let fuel = limits
        .fuel
        .saturating_sub(store.get_fuel().unwrap_or(0))
        .saturating_add(store.data().nested_fuel);
    let peak_memory = store.data().limiter.peak;
    let memory_hit = store.data().limiter.hit;
    let ended = Instant::now();
    log.finish();
    // Only an instance that returned normally, within every limit and uncancelled, is kept;
    // the rest are dropped here (a fresh store always is).
    match (warm, instance) {
        (Some(pool), Some(processor))
            if matches!(raw, Raw::Finished(Ok(_)))
                && !memory_hit
                && store.data().outbound_idle()
                && !cancel.is_cancelled()
                && ended < deadline =>
        {
            store.data_mut().release();
            let instance = WarmInstance {
                store,
                processor,
                uses: uses + 1,
            };
            pool.put(&scope.tenant, instance, ended);
        }
        _ => drop(store),
    }

    let result = match raw {
        Raw::Finished(Ok(Ok(text))) => parse_output(&text, limits),
        Raw::Finished(Ok(Err(guest_error))) => Err(from_wit_error(
            guest_error,
            &shared.config().guest,
            limits.output_bytes,
        )),
        Raw::Finished(Err(trap)) => Err(classify_trap(&trap, &log, limits, memory_hit)),
        Raw::Deadline => Err(deadline_error(limits, "while in a host call")),
        Raw::Cancelled => Err(cancelled_error(
            cancel,
            "and did not stop within its grace period",
        )),
    };
    AttemptOutcome {
        result: mark_cancelled(result, cancel),
        fuel,
        peak_memory,
        ended,
    }
}

/// Whatever a guest made of a cancellation, the result says it was cancelled, and why.
fn mark_cancelled<T>(
    result: Result<T, ExecutionError>,
    cancel: &CancelHandle,
) -> Result<T, ExecutionError> {
    match result {
        Err(mut error) if cancel.is_cancelled() => {
            error.kind = ErrorKind::Cancelled;
            error.code = cancel.reason().map(|r| r.code().to_string());
            Err(error)
        }
        other => other,
    }
}

async fn hard_cancel(cancel: &CancelHandle, grace: Duration) {
    cancel.cancelled().await;
    tokio::time::sleep(grace).await;
}

/// `value` as JSON text. Serializing a `Value` cannot fail: its keys are strings and its
/// numbers finite.
pub(super) fn json_text(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
}

pub(crate) fn parse_output(
    text: &str,
    limits: &Limits,
) -> Result<Map<String, Value>, ExecutionError> {
    let size = text.len() as u64;
    if size > limits.output_bytes {
        return Err(ExecutionError::host(
            ErrorKind::Resource,
            codes::OUTPUT_TOO_LARGE,
            format!(
                "the processor returned {} of state; the limit is {} (an operator can raise \
                 `output_bytes` in the plugin's manifest)",
                human_bytes(size),
                human_bytes(limits.output_bytes)
            ),
        )
        .with_details(serde_json::json!({ "bytes": size, "limit": limits.output_bytes })));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ExecutionError::host(
            ErrorKind::Execution,
            codes::INVALID_OUTPUT,
            format!(
                "the processor returned {}; a state must be a JSON object",
                state::json_type(&other)
            ),
        )),
        Err(e) => Err(ExecutionError::host(
            ErrorKind::Execution,
            codes::INVALID_OUTPUT,
            format!("the processor returned invalid JSON: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_over_the_cap_is_a_resource_error() {
        let limits = Limits {
            output_bytes: 10,
            ..Limits::DEFAULTS
        };
        let err = parse_output(r#"{"a":"0123456789"}"#, &limits).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Resource);
        assert!(err.has_code(codes::OUTPUT_TOO_LARGE));
    }

    #[test]
    fn output_that_is_not_an_object_is_an_execution_error() {
        for text in ["[1]", "3", "nope"] {
            let err = parse_output(text, &Limits::DEFAULTS).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Execution, "{text}");
            assert!(err.has_code(codes::INVALID_OUTPUT));
        }
    }
}
