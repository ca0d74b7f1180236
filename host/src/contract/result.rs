//! The result document: what every execution returns, in every runtime and on every surface
//! (library, CLI stdout, HTTP, job return values). Its JSON Schema is
//! `schema/result.schema.json`; tests hold the two together.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contract::error::ExecutionError;

/// The outcome of one execution of a processor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionResult {
    /// True when the processor succeeded.
    pub ok: bool,
    /// The new state on success; on failure, the last good state (the input, with its
    /// host-owned metadata).
    pub state: Value,
    /// Why it failed; `null` on success.
    pub error: Option<ExecutionError>,
    /// What ran, for whom, and what it cost.
    pub execution: ExecutionInfo,
    /// For a batch: one result per item, in input order. Not part of the single-result
    /// document; [`ExecutionResult::document`] shows a batch as `{ok, items}`.
    #[serde(skip)]
    pub items: Option<Vec<ExecutionResult>>,
    /// For a parallel or graph that succeeded: the failures it went on past, in declared
    /// order (branches and nodes whose `on_failure` is `ignore` or `continue`, and those a
    /// `continue` cut short). Absent from the document when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<StepFailure>,
}

/// A failure a workflow went on past: which branch or node, what it ran, and its error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepFailure {
    /// Where it ran in the workflow, as its events say: `branch:1`, `node:fetch`.
    pub place: String,
    /// The processor or workflow it ran.
    pub name: String,
    /// How it failed (a branch cut short: `cancelled`).
    pub error: ExecutionError,
}

/// The document surfaces print (CLI stdout, HTTP bodies, job return values): a result, or
/// for a batch `{ok, items: [result, …]}`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ResultDocument<'a> {
    /// One execution.
    Single(&'a ExecutionResult),
    /// A batch: whether it succeeded, and every item's result.
    Batch {
        /// False when the batch's policy says it failed.
        ok: bool,
        /// One result per input item.
        items: &'a [ExecutionResult],
    },
}

/// Facts about an execution: identity, provenance and cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionInfo {
    /// The execution id (shared by all its attempts).
    pub id: String,
    /// The processor name that was asked for.
    pub processor: String,
    /// SHA-256 of the component that ran; `null` if nothing ran (e.g. unknown processor).
    pub digest: Option<String>,
    /// The processor's declared version; `null` if nothing ran.
    pub version: Option<String>,
    /// The tenant the execution belongs to.
    pub tenant: String,
    /// The session, if any.
    pub session: Option<String>,
    /// Attempts made (0 if nothing ran).
    pub attempts: u32,
    /// Wall-clock time from request to result, in microseconds.
    pub duration_us: u64,
    /// Fuel consumed over all attempts.
    pub fuel_consumed: u64,
    /// The largest linear memory any attempt reached, in bytes.
    pub peak_memory_bytes: u64,
}

impl ExecutionInfo {
    /// The facts of an execution that has not run anything yet: a fresh UUIDv7 id unless
    /// one is given, no digest or version, no cost.
    pub fn new(
        id: Option<String>,
        processor: impl Into<String>,
        tenant: impl Into<String>,
        session: Option<String>,
    ) -> Self {
        ExecutionInfo {
            id: id.unwrap_or_else(crate::contract::clock::new_execution_id),
            processor: processor.into(),
            digest: None,
            version: None,
            tenant: tenant.into(),
            session,
            attempts: 0,
            duration_us: 0,
            fuel_consumed: 0,
            peak_memory_bytes: 0,
        }
    }
}

impl ExecutionResult {
    /// The document to show: `{ok, items}` for a batch, the result itself otherwise.
    pub fn document(&self) -> ResultDocument<'_> {
        match &self.items {
            Some(items) => ResultDocument::Batch { ok: self.ok, items },
            None => ResultDocument::Single(self),
        }
    }

    /// The error, if the execution failed.
    pub fn error(&self) -> Option<&ExecutionError> {
        self.error.as_ref()
    }

    /// The result as pretty JSON.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.document()).unwrap_or_else(|e| {
            format!(r#"{{"ok":false,"error":{{"kind":"execution","message":"{e}"}}}}"#)
        })
    }
}
