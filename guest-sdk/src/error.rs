//! The typed error a processor returns, with one constructor per kind.

use std::fmt;

use serde::Serialize;

use crate::__private::bindings::weir::processor::types as wit;

/// The category of a failure; callers (and the host's retry policy) act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input is not acceptable. Never retried.
    Validation,
    /// A business rule refused the input. Never retried.
    Business,
    /// Something the processor needed does not exist.
    NotFound,
    /// The processor ran out of time. Retried by default.
    Timeout,
    /// A limit was hit (memory, fuel, output size, a quota).
    Resource,
    /// A remote dependency failed. Retried by default.
    Network,
    /// The processor or its settings are misconfigured. Never retried.
    Configuration,
    /// An unexpected failure (a bug).
    Execution,
    /// The execution was cancelled.
    Cancelled,
    /// A concurrent writer changed the same data first.
    Conflict,
}

impl ErrorKind {
    /// The kind's name in the contract, e.g. `not-found`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Validation => "validation",
            ErrorKind::Business => "business",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Resource => "resource",
            ErrorKind::Network => "network",
            ErrorKind::Configuration => "configuration",
            ErrorKind::Execution => "execution",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Conflict => "conflict",
        }
    }

    pub(crate) fn to_wit(self) -> wit::ErrorKind {
        match self {
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

    pub(crate) fn from_wit(kind: wit::ErrorKind) -> Self {
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

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A processor failure: a kind, an optional code, a message, whether a retry may help, and
/// optional JSON details.
///
/// Build one with the constructor of its kind and refine it with the `with_*` methods:
///
/// ```
/// use weir_sdk::Error;
///
/// let err = Error::validation("`email` is missing")
///     .with_code("missing-email")
///     .with_details(&serde_json::json!({ "field": "email" }));
/// assert_eq!(err.code(), Some("missing-email"));
/// ```
///
/// Like `anyhow::Error`, this type does not implement `std::error::Error` itself, so that
/// every `std::error::Error` converts into it with `?` (as an [`ErrorKind::Execution`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    kind: ErrorKind,
    code: Option<String>,
    message: String,
    retryable: bool,
    details: Option<serde_json::Value>,
}

impl Error {
    /// An error of any kind. Retryable by default only for `timeout` and `network`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            code: None,
            message: message.into(),
            retryable: matches!(kind, ErrorKind::Timeout | ErrorKind::Network),
            details: None,
        }
    }

    /// The input is not acceptable (e.g. a missing or malformed field).
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, message)
    }

    /// A business rule refused the input; `code` names the rule (e.g. `insufficient-funds`).
    pub fn business(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Business, message).with_code(code)
    }

    /// Something the processor needed does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// The processor gave up waiting for something. Retryable.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }

    /// A limit or quota was hit.
    pub fn resource(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Resource, message)
    }

    /// A remote dependency failed. Retryable.
    pub fn network(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Network, message)
    }

    /// The processor or its operator settings are misconfigured.
    pub fn configuration(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Configuration, message)
    }

    /// An unexpected failure.
    pub fn execution(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Execution, message)
    }

    /// The processor stopped because the execution was cancelled (see
    /// [`Context::cancelled`](crate::Context::cancelled)).
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Cancelled, message)
    }

    /// A concurrent writer changed the same data first.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    /// Sets the machine-readable code, e.g. `invalid-email`.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Attaches structured details. A value that cannot be serialized is recorded as a
    /// string describing why, rather than lost silently.
    pub fn with_details<T: Serialize + ?Sized>(mut self, details: &T) -> Self {
        self.details = Some(serde_json::to_value(details).unwrap_or_else(|err| {
            serde_json::Value::String(format!("details could not be serialized: {err}"))
        }));
        self
    }

    /// Says whether running again with the same input might succeed.
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The error's code, if set.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The error's message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the error is marked retryable.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The error's details, if set.
    pub fn details(&self) -> Option<&serde_json::Value> {
        self.details.as_ref()
    }

    pub(crate) fn into_wit(self) -> wit::ProcessorError {
        wit::ProcessorError {
            kind: self.kind.to_wit(),
            code: self.code,
            message: self.message,
            retryable: self.retryable,
            details: self.details.map(|d| d.to_string()),
        }
    }

    pub(crate) fn from_wit(err: wit::ProcessorError) -> Self {
        Error {
            kind: ErrorKind::from_wit(err.kind),
            code: err.code,
            message: err.message,
            retryable: err.retryable,
            details: err
                .details
                .map(|text| serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{} ({code}): {}", self.kind, self.message),
            None => write!(f, "{}: {}", self.kind, self.message),
        }
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(err: E) -> Self {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Error::execution(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_set_kind_and_default_retryability() {
        assert_eq!(Error::validation("x").kind(), ErrorKind::Validation);
        assert!(!Error::validation("x").is_retryable());
        assert!(Error::network("x").is_retryable());
        assert!(Error::timeout("x").is_retryable());
        let business = Error::business("insufficient-funds", "no money");
        assert_eq!(business.kind(), ErrorKind::Business);
        assert_eq!(business.code(), Some("insufficient-funds"));
    }

    #[test]
    fn std_errors_convert_with_their_causes() {
        let err: Error = "x".parse::<u32>().map_err(Error::from).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Execution);
        assert!(err.message().contains("invalid digit"), "{}", err.message());
    }

    #[test]
    fn wit_round_trip_keeps_every_field() {
        let err = Error::conflict("changed")
            .with_code("state-conflict")
            .with_details(&serde_json::json!({"expected": 3}))
            .retryable(true);
        assert_eq!(Error::from_wit(err.clone().into_wit()), err);
    }
}
