//! The glue the `#[processor]` macro expands to: JSON in, the author's function, JSON out.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::__private::bindings::weir::processor::types as wit;
use crate::{Context, Error, ErrorKind};

/// How the function's output becomes the new state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// Top-level output fields replace the same input fields; other input fields stay.
    Merge,
    /// The output is the whole new state.
    Replace,
}

/// Everything `#[processor(...)]` says about the processor, as the macro checked it.
#[derive(Debug, Clone)]
pub struct Describe {
    /// Processor name.
    pub name: &'static str,
    /// Semver version.
    pub version: &'static str,
    /// One-sentence description.
    pub description: &'static str,
    /// Default timeout per attempt.
    pub timeout_ms: Option<u64>,
    /// Default memory cap.
    pub memory_bytes: Option<u64>,
    /// Default fuel budget.
    pub fuel: Option<u64>,
    /// Default output size cap.
    pub output_bytes: Option<u64>,
    /// Attempts including the first; `None` with no other retry option means no policy.
    pub max_attempts: Option<u32>,
    /// Exponential (true) or fixed (false) backoff; `None` means the SDK default.
    pub exponential: Option<bool>,
    /// Base delay.
    pub backoff_ms: Option<u64>,
    /// Largest delay (exponential only).
    pub max_backoff_ms: Option<u64>,
    /// Randomise delays.
    pub jitter: Option<bool>,
    /// Extra kinds to retry.
    pub retry_on: &'static [ErrorKind],
    /// Queue concurrency.
    pub concurrency: Option<u32>,
    /// Queue priority.
    pub priority: Option<u32>,
    /// Rate limit: executions per window.
    pub rate_limit_max: Option<u32>,
    /// Rate limit: window length.
    pub rate_limit_per_ms: Option<u64>,
}

const DEFAULT_BACKOFF_MS: u64 = 100;
const DEFAULT_MAX_BACKOFF_MS: u64 = 30_000;

/// Builds the `describe` answer from what the macro collected.
pub fn describe(d: &Describe) -> wit::ProcessorMetadata {
    let wants_retry = d.max_attempts.is_some()
        || d.exponential.is_some()
        || d.backoff_ms.is_some()
        || d.max_backoff_ms.is_some()
        || d.jitter.is_some()
        || !d.retry_on.is_empty();
    let retry = wants_retry.then(|| {
        let initial = d.backoff_ms.unwrap_or(DEFAULT_BACKOFF_MS);
        wit::RetryPolicy {
            max_attempts: d.max_attempts.unwrap_or(3),
            backoff: if d.exponential.unwrap_or(true) {
                wit::Backoff::Exponential(wit::ExponentialBackoff {
                    initial_ms: initial,
                    max_ms: d.max_backoff_ms.unwrap_or(DEFAULT_MAX_BACKOFF_MS),
                })
            } else {
                wit::Backoff::Fixed(initial)
            },
            jitter: d.jitter.unwrap_or(true),
            retry_on: d.retry_on.iter().map(|k| k.to_wit()).collect(),
        }
    });
    let wants_queue = d.concurrency.is_some()
        || d.priority.is_some()
        || d.rate_limit_max.is_some()
        || d.rate_limit_per_ms.is_some();
    let queue = wants_queue.then(|| wit::QueueSettings {
        concurrency: d.concurrency,
        priority: d.priority,
        rate_limit: d.rate_limit_max.map(|max| wit::RateLimit {
            max,
            per_ms: d.rate_limit_per_ms.unwrap_or(1000),
        }),
    });
    wit::ProcessorMetadata {
        name: d.name.to_string(),
        version: d.version.to_string(),
        description: d.description.trim().to_string(),
        limits: wit::Limits {
            timeout_ms: d.timeout_ms,
            memory_bytes: d.memory_bytes,
            fuel: d.fuel,
            output_bytes: d.output_bytes,
        },
        retry,
        queue,
    }
}

/// Runs the author's function on the JSON `state`: parse, deserialize, call, serialize and
/// (in merge mode) merge. Every failure becomes a typed error, never a trap.
pub fn run<In, Out, F>(
    state: String,
    context: wit::ExecutionContext,
    mode: OutputMode,
    f: F,
) -> Result<String, wit::ProcessorError>
where
    In: DeserializeOwned,
    Out: Serialize,
    F: FnOnce(In, &Context) -> Result<Out, Error>,
{
    run_inner(state, context, mode, f).map_err(Error::into_wit)
}

fn run_inner<In, Out, F>(
    state: String,
    context: wit::ExecutionContext,
    mode: OutputMode,
    f: F,
) -> Result<String, Error>
where
    In: DeserializeOwned,
    Out: Serialize,
    F: FnOnce(In, &Context) -> Result<Out, Error>,
{
    let input: Value = serde_json::from_str(&state)
        .map_err(|e| Error::validation(format!("the state is not valid JSON: {e}")))?;
    drop(state);
    let typed = In::deserialize(&input).map_err(|e| {
        Error::validation(format!(
            "the state does not match this processor's input: {e}"
        ))
        .with_code("invalid-input")
    })?;
    let ctx = Context::new(context);
    let output = f(typed, &ctx)?;
    let output = serde_json::to_value(&output)
        .map_err(|e| Error::execution(format!("the output could not be serialized: {e}")))?;
    let Value::Object(output) = output else {
        return Err(Error::execution(format!(
            "the output must serialize to a JSON object, not {}",
            json_type(&output)
        ))
        .with_code("invalid-output"));
    };
    let state = match (mode, input) {
        (OutputMode::Merge, Value::Object(mut merged)) => {
            merged.extend(output);
            merged
        }
        (_, _) => output,
    };
    Ok(Value::Object(state).to_string())
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn context() -> wit::ExecutionContext {
        wit::ExecutionContext {
            execution_id: "e1".into(),
            tenant: "default".into(),
            session_id: None,
            processor: "t".into(),
            attempt: 1,
            call_depth: 0,
            deadline_unix_ms: 0,
        }
    }

    #[derive(Deserialize)]
    struct Count {
        #[serde(default)]
        count: i64,
    }

    #[derive(Serialize)]
    struct Counted {
        count: i64,
    }

    fn increment(input: Count, _: &Context) -> Result<Counted, Error> {
        Ok(Counted {
            count: input.count + 1,
        })
    }

    #[test]
    fn merge_keeps_fields_the_output_does_not_name() {
        let out = run(
            r#"{"count":1,"user":"ada"}"#.into(),
            context(),
            OutputMode::Merge,
            increment,
        )
        .unwrap();
        let out: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(out, serde_json::json!({"count": 2, "user": "ada"}));
    }

    #[test]
    fn replace_returns_only_the_output() {
        let out = run(
            r#"{"count":1,"user":"ada"}"#.into(),
            context(),
            OutputMode::Replace,
            increment,
        )
        .unwrap();
        assert_eq!(out, r#"{"count":2}"#);
    }

    #[test]
    fn input_of_the_wrong_shape_is_a_validation_error() {
        let err = run(
            r#"{"count":"one"}"#.into(),
            context(),
            OutputMode::Merge,
            increment,
        )
        .unwrap_err();
        assert_eq!(err.kind, wit::ErrorKind::Validation);
        assert_eq!(err.code.as_deref(), Some("invalid-input"));
        assert!(err.message.contains("invalid type"), "{}", err.message);
    }

    #[test]
    fn non_object_output_is_an_execution_error() {
        let err = run(
            "{}".into(),
            context(),
            OutputMode::Merge,
            |_: Value, _: &Context| Ok(3),
        )
        .unwrap_err();
        assert_eq!(err.kind, wit::ErrorKind::Execution);
        assert!(err.message.contains("a number"), "{}", err.message);
    }
}
