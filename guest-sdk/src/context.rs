//! The execution context a processor receives: facts about the execution and the host's
//! services (logging, events, nested calls, cancellation, configuration, session store).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__private::bindings::weir::processor::{
    cancellation, config, events, invoke, logging, session_store, types,
};
use crate::Error;

/// Severity of a log line written with [`Context::log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that was handled.
    Warn,
    /// Something failed.
    Error,
}

/// The execution a processor is running in, and the host's services.
///
/// The host rate-limits logs, clamps progress to 0–100, and scopes the session store to this
/// execution's tenant and session.
#[derive(Debug)]
pub struct Context {
    inner: types::ExecutionContext,
}

impl Context {
    pub(crate) fn new(inner: types::ExecutionContext) -> Self {
        Context { inner }
    }

    /// Unique id of this execution; every attempt of one execution shares it.
    pub fn execution_id(&self) -> &str {
        &self.inner.execution_id
    }

    /// The tenant that owns this execution (`default` when none is configured).
    pub fn tenant(&self) -> &str {
        &self.inner.tenant
    }

    /// The session this execution belongs to, if any.
    pub fn session_id(&self) -> Option<&str> {
        self.inner.session_id.as_deref()
    }

    /// The name this processor was invoked as.
    pub fn processor(&self) -> &str {
        &self.inner.processor
    }

    /// Which attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// How many nested calls led here (0 at the top level).
    pub fn call_depth(&self) -> u32 {
        self.inner.call_depth
    }

    /// The instant this attempt must finish by; the host stops the processor after it.
    pub fn deadline(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.inner.deadline_unix_ms)
    }

    /// Time left before the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline()
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }

    /// True once the execution has been cancelled. Long-running processors should check it
    /// and return [`Error::cancelled`]; the host stops those that don't after a grace period.
    pub fn cancelled(&self) -> bool {
        cancellation::cancelled()
    }

    /// Writes a log line with structured fields (a value serializing to a JSON object).
    pub fn log<F: Serialize + ?Sized>(&self, level: Level, message: &str, fields: &F) {
        let fields = serde_json::to_string(fields).ok();
        logging::log(to_wit_level(level), message, fields.as_deref());
    }

    /// Writes an `info` log line.
    pub fn info(&self, message: &str) {
        logging::log(logging::Level::Info, message, None);
    }

    /// Writes a `warn` log line.
    pub fn warn(&self, message: &str) {
        logging::log(logging::Level::Warn, message, None);
    }

    /// Writes an `error` log line.
    pub fn error(&self, message: &str) {
        logging::log(logging::Level::Error, message, None);
    }

    /// Writes a `debug` log line.
    pub fn debug(&self, message: &str) {
        logging::log(logging::Level::Debug, message, None);
    }

    /// Emits a custom event with a JSON payload to the host's event subscribers.
    pub fn emit<D: Serialize + ?Sized>(&self, name: &str, data: &D) -> Result<(), Error> {
        let data = serde_json::to_string(data)
            .map_err(|e| Error::execution(format!("event `{name}` data: {e}")))?;
        events::emit(name, &data).map_err(Error::from_wit)
    }

    /// Reports progress (0–100) with a message.
    pub fn progress(&self, percent: u8, message: &str) -> Result<(), Error> {
        events::progress(percent, message).map_err(Error::from_wit)
    }

    /// The operator's setting `key` from this plugin's manifest, if set.
    pub fn config(&self, key: &str) -> Option<String> {
        config::get(key)
    }

    /// Every operator setting of this plugin, sorted by key.
    pub fn config_all(&self) -> Vec<(String, String)> {
        config::get_all()
    }

    /// Runs another registered processor (or workflow) on `state` and returns its output
    /// state. Counts one level of call depth and inherits this execution's deadline.
    pub fn call<S: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        name: &str,
        state: &S,
    ) -> Result<R, Error> {
        let state = serde_json::to_string(state)
            .map_err(|e| Error::execution(format!("state for `{name}`: {e}")))?;
        let output = invoke::call(name, &state).map_err(Error::from_wit)?;
        serde_json::from_str(&output).map_err(|e| {
            Error::execution(format!(
                "output of `{name}` does not match the expected type: {e}"
            ))
        })
    }

    /// The key-value store of this execution's session.
    pub fn store(&self) -> SessionStore {
        SessionStore { _private: () }
    }
}

/// A key-value store scoped to the execution's tenant and session. Every method fails when
/// the execution has no session.
#[derive(Debug)]
pub struct SessionStore {
    _private: (),
}

impl SessionStore {
    /// The raw bytes stored under `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        session_store::get(key).map_err(Error::from_wit)
    }

    /// Stores raw bytes under `key`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        session_store::set(key, value).map_err(Error::from_wit)
    }

    /// The JSON value stored under `key`, deserialized, if any.
    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        match self.get(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::execution(format!(
                    "stored value `{key}` is not the expected JSON: {e}"
                ))
            }),
        }
    }

    /// Stores `value` as JSON under `key`.
    pub fn set_json<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| Error::execution(format!("value for `{key}`: {e}")))?;
        self.set(key, &bytes)
    }

    /// Removes `key` (removing a missing key is not an error).
    pub fn delete(&self, key: &str) -> Result<(), Error> {
        session_store::delete(key).map_err(Error::from_wit)
    }

    /// Every key of this session, sorted.
    pub fn keys(&self) -> Result<Vec<String>, Error> {
        session_store::list_keys().map_err(Error::from_wit)
    }
}

fn to_wit_level(level: Level) -> logging::Level {
    match level {
        Level::Trace => logging::Level::Trace,
        Level::Debug => logging::Level::Debug,
        Level::Info => logging::Level::Info,
        Level::Warn => logging::Level::Warn,
        Level::Error => logging::Level::Error,
    }
}
