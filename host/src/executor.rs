//! One execution, start to finish: check the input, find the plugin, resolve limits, run
//! attempts in fresh sandboxes under a deadline, fuel and a memory cap, retry as the policy
//! says, classify every failure into the contract's kinds and codes, and stamp the host-owned
//! metadata. Nested `call`s from guests come back in here one level deeper.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::Instrument;
use wasmtime::Trap;

use crate::bindings::wit;
use crate::cancel::CancelHandle;
use crate::error::{ErrorKind, ExecutionError, codes};
use crate::guest_log::GuestLog;
use crate::limits::Limits;
use crate::plugin::Plugin;
use crate::result::{ExecutionInfo, ExecutionResult};
use crate::runtime::{ExecutionRequest, Shared};
use crate::sandbox::{CallScope, HostTrap, Sandbox, SandboxSpec, from_wit_error};
use crate::state;

/// Where a nested execution sits: its depth and the time its parent has left.
struct Nesting {
    depth: u32,
    deadline: Instant,
}

/// Runs a top-level execution.
pub(crate) async fn execute(shared: &Arc<Shared>, request: ExecutionRequest) -> ExecutionResult {
    run(shared, request, None).await
}

/// Runs a guest's nested `call`: one level deeper, within the parent's deadline, cancelled
/// with the parent. Fails before anything runs when the depth would pass the maximum.
pub(crate) async fn call_nested(
    scope: CallScope,
    name: String,
    state: String,
    parent_deadline: Instant,
    cancel: CancelHandle,
) -> Result<String, ExecutionError> {
    let depth = scope.depth + 1;
    let max = scope.shared.config.max_call_depth;
    if depth > max {
        return Err(ExecutionError::host(
            ErrorKind::Execution,
            codes::CALL_DEPTH_EXCEEDED,
            format!("calling `{name}` would nest {depth} calls deep; the maximum is {max}"),
        ));
    }
    let input: Value = serde_json::from_str(&state).map_err(|e| {
        ExecutionError::host(
            ErrorKind::Validation,
            codes::INVALID_INPUT,
            format!("the state passed to `{name}` is not valid JSON: {e}"),
        )
    })?;
    let request = ExecutionRequest {
        processor: name,
        input,
        tenant: Some(scope.tenant.to_string()),
        session: scope.session.as_deref().map(str::to_string),
        limits: Default::default(),
        cancel,
        id: None,
    };
    let nesting = Nesting {
        depth,
        deadline: parent_deadline,
    };
    // Boxed: an execution can contain itself through guest calls.
    let result = Box::pin(run(&scope.shared, request, Some(nesting))).await;
    match result.error {
        None => Ok(result.state.to_string()),
        Some(error) => Err(error),
    }
}

async fn run(
    shared: &Arc<Shared>,
    request: ExecutionRequest,
    nesting: Option<Nesting>,
) -> ExecutionResult {
    let started = Instant::now();
    let depth = nesting.as_ref().map_or(0, |n| n.depth);
    let info = ExecutionInfo {
        id: request
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        processor: request.processor.clone(),
        digest: None,
        version: None,
        tenant: request
            .tenant
            .clone()
            .unwrap_or_else(|| "default".to_string()),
        session: request.session.clone(),
        attempts: 0,
        duration_us: 0,
        fuel_consumed: 0,
        peak_memory_bytes: 0,
    };
    // The span's own target lets operators see guest lines with their execution's fields
    // without enabling the host's info logs.
    let span = tracing::info_span!(
        target: "weir::execution",
        "execution",
        id = %info.id,
        processor = %info.processor,
        tenant = %info.tenant,
        session = info.session.as_deref(),
        depth,
    );
    let mut result = run_in_span(shared, request, nesting, info)
        .instrument(span)
        .await;
    result.execution.duration_us = started.elapsed().as_micros().try_into().unwrap_or(u64::MAX);
    result
}

async fn run_in_span(
    shared: &Arc<Shared>,
    request: ExecutionRequest,
    nesting: Option<Nesting>,
    mut info: ExecutionInfo,
) -> ExecutionResult {
    let (input, metadata) = match state::prepare_input(request.input, request.session.as_deref()) {
        Ok(prepared) => prepared,
        Err(error) => return failed(Value::Null, error, info),
    };
    let Some(plugin) = shared.registry.get(&request.processor) else {
        let known = shared.registry.catalog();
        let names = known.names();
        let hint = if names.is_empty() {
            "no processors are loaded".to_string()
        } else {
            format!("loaded: {}", names.join(", "))
        };
        let error = ExecutionError::host(
            ErrorKind::NotFound,
            codes::PROCESSOR_NOT_FOUND,
            format!("no processor named `{}` ({hint})", request.processor),
        );
        return failed(state::with_metadata(input, &metadata), error, info);
    };
    info.digest = Some(plugin.digest().to_string());
    info.version = Some(plugin.version().to_string());

    let limits = plugin.limits().lowered_by(&request.limits);
    let input_state = state::with_metadata(input, &metadata);
    let input_text = input_state.to_string();
    let scope = CallScope {
        shared: shared.clone(),
        tenant: Arc::from(info.tenant.as_str()),
        session: info.session.as_deref().map(Arc::from),
        depth: nesting.as_ref().map_or(0, |n| n.depth),
    };
    let overall_deadline = nesting.as_ref().map(|n| n.deadline);
    let policy = plugin.retry();
    let cancel = request.cancel;

    loop {
        if cancel.is_cancelled() {
            let error = cancelled_error(&cancel, "before it started");
            return failed(input_state, error, info);
        }
        info.attempts += 1;
        let attempt_deadline = {
            let own = Instant::now() + limits.timeout();
            overall_deadline.map_or(own, |d| d.min(own))
        };
        let outcome = attempt(
            shared,
            &plugin,
            &input_text,
            &info,
            &limits,
            attempt_deadline,
            &cancel,
            scope.clone(),
            nesting.is_some(),
        )
        .await;
        info.fuel_consumed = info.fuel_consumed.saturating_add(outcome.fuel);
        info.peak_memory_bytes = info.peak_memory_bytes.max(outcome.peak_memory);
        let error = match outcome.result {
            Ok(output) => {
                let state = state::with_metadata(output, &metadata.bumped());
                return ExecutionResult {
                    ok: true,
                    state,
                    error: None,
                    execution: info,
                };
            }
            Err(error) => error,
        };
        if info.attempts >= policy.max_attempts
            || cancel.is_cancelled()
            || !policy.should_retry(&error)
        {
            return failed(input_state, error, info);
        }
        let delay = policy.delay_before(info.attempts + 1);
        if overall_deadline.is_some_and(|d| Instant::now() + delay >= d) {
            return failed(input_state, error, info);
        }
        tracing::info!(
            attempt = info.attempts,
            delay_ms = delay.as_millis() as u64,
            error = %error,
            "retrying"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => {
                let error = cancelled_error(&cancel, "while waiting to retry");
                return failed(input_state, error, info);
            }
        }
    }
}

fn failed(state: Value, error: ExecutionError, info: ExecutionInfo) -> ExecutionResult {
    tracing::debug!(error = %error, "execution failed");
    ExecutionResult {
        ok: false,
        state,
        error: Some(error),
        execution: info,
    }
}

struct AttemptOutcome {
    result: Result<Map<String, Value>, ExecutionError>,
    fuel: u64,
    peak_memory: u64,
}

impl AttemptOutcome {
    fn early(error: ExecutionError) -> Self {
        AttemptOutcome {
            result: Err(error),
            fuel: 0,
            peak_memory: 0,
        }
    }
}

enum Raw {
    Finished(wasmtime::Result<Result<String, wit::ProcessorError>>),
    Deadline,
    Cancelled,
}

#[allow(clippy::too_many_arguments)]
async fn attempt(
    shared: &Arc<Shared>,
    plugin: &Arc<Plugin>,
    input: &String,
    info: &ExecutionInfo,
    limits: &Limits,
    deadline: Instant,
    cancel: &CancelHandle,
    scope: CallScope,
    nested: bool,
) -> AttemptOutcome {
    // Top-level executions wait for a sandbox slot; nested calls already hold their
    // parent's, and waiting here could deadlock a full host.
    let _permit = if nested {
        None
    } else if let Ok(permit) = shared.slots.try_acquire() {
        Some(permit)
    } else {
        match tokio::time::timeout_at(deadline.into(), shared.slots.acquire()).await {
            Ok(Ok(permit)) => Some(permit),
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
    let log = GuestLog::new(shared.config.log_rate);
    let call_depth = scope.depth;
    let spec = SandboxSpec {
        memory_bytes: limits.memory_bytes,
        fuel: limits.fuel,
        deadline,
        cancel: cancel.clone(),
        log: log.clone(),
        capabilities: &plugin.manifest().capabilities,
        config: plugin.config().clone(),
        scope: Some(scope),
    };
    let mut store = match Sandbox::store(&shared.engine, spec) {
        Ok(store) => store,
        Err(error) => return AttemptOutcome::early(error),
    };
    let context = wit::ExecutionContext {
        execution_id: info.id.clone(),
        tenant: info.tenant.clone(),
        session_id: info.session.clone(),
        processor: info.processor.clone(),
        attempt: info.attempts,
        call_depth,
        deadline_unix_ms: unix_ms(deadline),
    };
    let grace = shared.config.cancel_grace;
    let raw = {
        let run = async {
            let processor = plugin.pre.instantiate_async(&mut store).await?;
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
    let fuel = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
    let peak_memory = store.data().limiter.peak;
    let memory_hit = store.data().limiter.hit;
    drop(store);
    log.finish();

    let result = match raw {
        Raw::Finished(Ok(Ok(text))) => parse_output(&text, limits),
        Raw::Finished(Ok(Err(guest_error))) => Err(from_wit_error(guest_error)),
        Raw::Finished(Err(trap)) => Err(classify_trap(&trap, &log, limits, memory_hit)),
        Raw::Deadline => Err(deadline_error(limits, "while in a host call")),
        Raw::Cancelled => Err(cancelled_error(
            cancel,
            "and did not stop within its grace period",
        )),
    };
    // Whatever the guest made of a cancellation, the result says it was cancelled.
    let result = match result {
        Err(error) if cancel.is_cancelled() && error.kind != ErrorKind::Cancelled => {
            Err(ExecutionError {
                kind: ErrorKind::Cancelled,
                code: cancel.reason().map(|r| r.code().to_string()),
                ..error
            })
        }
        Err(mut error) if error.kind == ErrorKind::Cancelled && cancel.is_cancelled() => {
            error.code = cancel.reason().map(|r| r.code().to_string());
            Err(error)
        }
        other => other,
    };
    AttemptOutcome {
        result,
        fuel,
        peak_memory,
    }
}

async fn hard_cancel(cancel: &CancelHandle, grace: Duration) {
    cancel.cancelled().await;
    tokio::time::sleep(grace).await;
}

fn unix_ms(deadline: Instant) -> u64 {
    let remaining = deadline.saturating_duration_since(Instant::now());
    (SystemTime::now() + remaining)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX))
}

fn parse_output(text: &str, limits: &Limits) -> Result<Map<String, Value>, ExecutionError> {
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

fn deadline_error(limits: &Limits, when: &str) -> ExecutionError {
    ExecutionError::host(
        ErrorKind::Timeout,
        codes::DEADLINE_EXCEEDED,
        format!(
            "the processor did not finish within its {} ms timeout (stopped {when})",
            limits.timeout_ms
        ),
    )
    .retryable(true)
}

fn cancelled_error(cancel: &CancelHandle, how: &str) -> ExecutionError {
    let reason = cancel
        .reason()
        .unwrap_or(crate::cancel::CancelReason::Request);
    ExecutionError::host(
        ErrorKind::Cancelled,
        reason.code(),
        format!("the execution was cancelled {how}"),
    )
}

/// Turns a trap (or a host-raised stop) into the contract's kind and code.
fn classify_trap(
    error: &wasmtime::Error,
    log: &GuestLog,
    limits: &Limits,
    memory_hit: bool,
) -> ExecutionError {
    let host_trap = error
        .downcast_ref::<HostTrap>()
        .or_else(|| error.chain().find_map(|e| e.downcast_ref::<HostTrap>()));
    match host_trap {
        Some(HostTrap::Deadline) => return deadline_error(limits, "while running"),
        Some(HostTrap::MemoryLimit { limit, requested }) => {
            return memory_error(*limit, Some(*requested));
        }
        None => {}
    }
    if error.chain().any(|e| {
        e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
    }) {
        return ExecutionError::host(
            ErrorKind::Resource,
            codes::CAPACITY_EXCEEDED,
            format!("no free sandbox slot: {error}"),
        )
        .retryable(true);
    }
    let trap = error.downcast_ref::<Trap>().copied();
    match trap {
        Some(Trap::OutOfFuel) => {
            return ExecutionError::host(
                ErrorKind::Resource,
                codes::FUEL_EXHAUSTED,
                format!(
                    "the processor used up its fuel budget of {} (an operator can raise `fuel` \
                     in the plugin's manifest)",
                    limits.fuel
                ),
            );
        }
        Some(Trap::StackOverflow) => {
            return ExecutionError::host(
                ErrorKind::Resource,
                codes::STACK_OVERFLOW,
                "the processor overflowed its call stack (unbounded recursion?)",
            );
        }
        Some(Trap::Interrupt) => return deadline_error(limits, "while running"),
        _ => {}
    }
    if memory_hit {
        return memory_error(limits.memory_bytes, None);
    }
    let panic = log.panic_message();
    let trap_text = trap.map_or_else(|| format!("{error:#}"), |t| t.to_string());
    let message = match &panic {
        Some(panic) => format!("the processor panicked: {panic}"),
        None => format!("the processor trapped: {trap_text}"),
    };
    let mut details = Map::new();
    details.insert("trap".into(), Value::String(trap_text));
    if let Some(backtrace) = error.downcast_ref::<wasmtime::WasmBacktrace>() {
        details.insert("backtrace".into(), Value::String(backtrace.to_string()));
    }
    ExecutionError::host(ErrorKind::Execution, codes::TRAP, message)
        .with_details(Value::Object(details))
}

fn memory_error(limit: u64, requested: Option<u64>) -> ExecutionError {
    let asked = requested.map_or(String::new(), |r| {
        format!(" (it asked for {})", human_bytes(r))
    });
    ExecutionError::host(
        ErrorKind::Resource,
        codes::MEMORY_LIMIT,
        format!(
            "the processor exceeded its memory limit of {}{asked} (an operator can raise \
             `memory_bytes` in the plugin's manifest)",
            human_bytes(limit)
        ),
    )
}

fn human_bytes(bytes: u64) -> String {
    const MIB: f64 = (1 << 20) as f64;
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / MIB)
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} bytes")
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

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
        assert_eq!(human_bytes(2048), "2.0 KiB");
        assert_eq!(human_bytes(12), "12 bytes");
    }
}
