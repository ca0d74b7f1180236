//! The host side of the WIT contract, generated once here. Every other module converts
//! between these generated types and weir's own at its edge, so generated types never
//! spread through the codebase.

wasmtime::component::bindgen!({
    world: "processor",
    path: "../wit",
    imports: {
        "weir:processor/invoke.call": async,
        "weir:processor/session-store": async,
    },
    exports: {
        default: async,
    },
});

pub(crate) use self::weir::processor::types as wit;

use crate::contract::error::ErrorKind;

/// The fully qualified name of the export every processor must provide.
pub(crate) const HANDLER_EXPORT: &str = "weir:processor/handler@0.1.0";

/// The world processors are built for, as shown to operators.
pub const WORLD: &str = "weir:processor/processor@0.1.0";

impl From<wit::ErrorKind> for ErrorKind {
    fn from(kind: wit::ErrorKind) -> Self {
        match kind {
            wit::ErrorKind::Validation => ErrorKind::Validation,
            wit::ErrorKind::Business => ErrorKind::Business,
            wit::ErrorKind::NotFound => ErrorKind::NotFound,
            wit::ErrorKind::Timeout => ErrorKind::Timeout,
            wit::ErrorKind::Resource => ErrorKind::Resource,
            wit::ErrorKind::Network => ErrorKind::Network,
            wit::ErrorKind::Configuration => ErrorKind::Configuration,
            wit::ErrorKind::Execution => ErrorKind::Execution,
            wit::ErrorKind::Cancelled => ErrorKind::Cancelled,
            wit::ErrorKind::Conflict => ErrorKind::Conflict,
        }
    }
}

impl From<ErrorKind> for wit::ErrorKind {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::Validation => wit::ErrorKind::Validation,
            ErrorKind::Business => wit::ErrorKind::Business,
            ErrorKind::NotFound => wit::ErrorKind::NotFound,
            ErrorKind::Timeout => wit::ErrorKind::Timeout,
            ErrorKind::Resource => wit::ErrorKind::Resource,
            ErrorKind::Network => wit::ErrorKind::Network,
            ErrorKind::Configuration => wit::ErrorKind::Configuration,
            ErrorKind::Execution => wit::ErrorKind::Execution,
            ErrorKind::Cancelled => wit::ErrorKind::Cancelled,
            ErrorKind::Conflict => wit::ErrorKind::Conflict,
        }
    }
}
