//! Every way an execution can fail, as the contract's kinds and codes: traps (deadline,
//! fuel, memory, a host trap, a guest panic), an unknown name, cancellation, and the
//! failure documents both runtimes return.

use serde_json::{Map, Value};
use wasmtime::Trap;

use crate::contract::bounds::human_bytes;
use crate::contract::cancel::CancelHandle;
use crate::contract::error::{ErrorKind, ExecutionError, codes};
use crate::contract::limits::Limits;
use crate::contract::result::{ExecutionInfo, ExecutionResult};
use crate::execution::context::Context;
use crate::sandbox::HostTrap;
use crate::sandbox::guest_log::GuestLog;

pub(super) fn not_found(shared: &Context, name: &str) -> ExecutionError {
    ExecutionError::host(
        ErrorKind::NotFound,
        codes::PROCESSOR_NOT_FOUND,
        shared.registry().catalog().why_unavailable(name),
    )
}

pub(super) fn out_of_time(name: &str) -> ExecutionError {
    ExecutionError::host(
        ErrorKind::Timeout,
        codes::DEADLINE_EXCEEDED,
        format!("no time was left to start `{name}`: the enclosing deadline had passed"),
    )
    .retryable(true)
}

/// A failed result carrying `state` as the last good state.
pub(crate) fn failed(state: Value, error: ExecutionError, info: ExecutionInfo) -> ExecutionResult {
    tracing::debug!(error = %error, "execution failed");
    ExecutionResult {
        ok: false,
        state,
        error: Some(error),
        execution: info,
        items: None,
        failures: Vec::new(),
    }
}

pub(super) fn deadline_error(limits: &Limits, when: &str) -> ExecutionError {
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

/// The result of an execution cancelled (for `reason`) before anything ran: `state` stays
/// the last good state.
#[cfg(feature = "redis")]
pub(crate) fn cancelled_unstarted(
    state: Value,
    reason: crate::contract::cancel::CancelReason,
    info: ExecutionInfo,
) -> ExecutionResult {
    let cancel = CancelHandle::new();
    cancel.cancel_with(reason);
    failed(state, cancelled_error(&cancel, "before it started"), info)
}

pub(crate) fn cancelled_error(cancel: &CancelHandle, how: &str) -> ExecutionError {
    let reason = cancel
        .reason()
        .unwrap_or(crate::contract::cancel::CancelReason::Request);
    ExecutionError::host(
        ErrorKind::Cancelled,
        reason.code(),
        format!("the execution was cancelled {how}"),
    )
}

/// Turns a trap (or a host-raised stop) into the contract's kind and code.
pub(super) fn classify_trap(
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
    // A guest's own stack lives in its linear memory, below everything else: overflowing
    // it wraps the stack pointer past the memory's end.
    let message = if trap == Some(Trap::MemoryOutOfBounds) && panic.is_none() {
        format!(
            "{message} (a processor that keeps large values on its stack may have overflowed \
             it: for a Rust or C plugin built by `weir build`, raise `stack_size` in its \
             weir-plugin.toml)"
        )
    } else {
        message
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
