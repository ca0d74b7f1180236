//! The state document and its host-owned `metadata`.
//!
//! A state is a JSON object. Its `metadata` member belongs to the host: `version` (the
//! state's revision, bumped by each successful step), `sessionId`, `createdAt` and
//! `lastUpdated` (RFC 3339, UTC). A caller may pass metadata from an earlier result; it is
//! checked, and anything a processor returns there is discarded and rewritten.

use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::contract::error::{ErrorKind, ExecutionError, codes};

/// The host-owned metadata of a state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateMetadata {
    /// The state's revision: 0 for a new state, +1 per successful step.
    pub version: u64,
    /// The session the state belongs to.
    pub session_id: Option<String>,
    /// When the state was first created (RFC 3339).
    pub created_at: String,
    /// When the state last changed (RFC 3339).
    pub last_updated: String,
}

impl StateMetadata {
    /// Metadata for a brand-new state.
    pub fn new(session_id: Option<String>) -> Self {
        Self::new_at(session_id, SystemTime::now())
    }

    /// Metadata for a state created at `now`.
    pub(crate) fn new_at(session_id: Option<String>, now: SystemTime) -> Self {
        let now = crate::contract::clock::rfc3339(now);
        StateMetadata {
            version: 0,
            session_id,
            created_at: now.clone(),
            last_updated: now,
        }
    }

    /// The metadata after one more successful step.
    pub fn bumped(&self) -> Self {
        self.bumped_at(SystemTime::now())
    }

    /// The metadata after one more successful step, ended at `now`.
    pub(crate) fn bumped_at(&self, now: SystemTime) -> Self {
        StateMetadata {
            version: self.version.saturating_add(1),
            session_id: self.session_id.clone(),
            created_at: self.created_at.clone(),
            last_updated: crate::contract::clock::rfc3339(now),
        }
    }

    /// Overwrites the four host fields of an existing `metadata` object, reusing its
    /// strings' buffers.
    fn write_into(&self, m: &mut Map<String, Value>) {
        fn set_text(slot: Option<&mut Value>, text: &str) {
            match slot {
                Some(Value::String(s)) => {
                    s.clear();
                    s.push_str(text);
                }
                Some(other) => *other = Value::String(text.to_string()),
                None => {}
            }
        }
        if let Some(v) = m.get_mut("version") {
            *v = Value::from(self.version);
        }
        match (m.get_mut("sessionId"), &self.session_id) {
            (Some(slot), Some(id)) => set_text(Some(slot), id),
            (Some(slot), None) => *slot = Value::Null,
            (None, _) => {}
        }
        set_text(m.get_mut("createdAt"), &self.created_at);
        set_text(m.get_mut("lastUpdated"), &self.last_updated);
    }

    /// The metadata as the JSON object stored under `metadata`.
    pub fn to_json(&self) -> Value {
        let mut m = Map::with_capacity(4);
        m.insert("version".into(), Value::from(self.version));
        m.insert(
            "sessionId".into(),
            self.session_id.clone().map_or(Value::Null, Value::String),
        );
        m.insert("createdAt".into(), Value::String(self.created_at.clone()));
        m.insert(
            "lastUpdated".into(),
            Value::String(self.last_updated.clone()),
        );
        Value::Object(m)
    }
}

/// The largest `metadata.version` a caller may hand in: JavaScript's largest safe integer
/// (2^53 - 1), so that every client reads revisions exactly and no bump can overflow.
pub const MAX_VERSION: u64 = (1 << 53) - 1;

/// Checks an input state and splits out its metadata.
///
/// The input must be a JSON object. If it carries `metadata` (from an earlier result), that
/// must be an object whose `version` is an integer from 0 to [`MAX_VERSION`] and whose
/// timestamps are strings; the revision and creation time are kept and the session is set
/// to `session`.
pub fn prepare_input(
    input: Value,
    session: Option<&str>,
) -> Result<(Map<String, Value>, StateMetadata), ExecutionError> {
    prepare_input_at(input, session, SystemTime::now())
}

/// [`prepare_input`] for an execution that started at `now` (the creation time of a new
/// state, and of missing timestamps).
pub(crate) fn prepare_input_at(
    input: Value,
    session: Option<&str>,
    now: SystemTime,
) -> Result<(Map<String, Value>, StateMetadata), ExecutionError> {
    let Value::Object(mut state) = input else {
        return Err(invalid_input(format!(
            "the state must be a JSON object, not {}",
            json_type(&input)
        )));
    };
    let session = session.map(str::to_string);
    let metadata = match state.remove("metadata") {
        None | Some(Value::Null) => StateMetadata::new_at(session, now),
        Some(Value::Object(m)) => {
            let version = match m.get("version") {
                None | Some(Value::Null) => 0,
                Some(v) => v.as_u64().filter(|v| *v <= MAX_VERSION).ok_or_else(|| {
                    invalid_input(format!(
                        "`metadata.version` must be an integer from 0 to {MAX_VERSION}"
                    ))
                })?,
            };
            let text = |key: &str| -> Result<String, ExecutionError> {
                match m.get(key) {
                    None | Some(Value::Null) => Ok(crate::contract::clock::rfc3339(now)),
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(_) => Err(invalid_input(format!(
                        "`metadata.{key}` must be an RFC 3339 timestamp string"
                    ))),
                }
            };
            StateMetadata {
                version,
                session_id: session,
                created_at: text("createdAt")?,
                last_updated: text("lastUpdated")?,
            }
        }
        Some(other) => {
            return Err(invalid_input(format!(
                "`metadata` belongs to weir and must be an object, not {}",
                json_type(&other)
            )));
        }
    };
    Ok((state, metadata))
}

/// Checks that `input` is a valid input state (a JSON object whose `metadata`, if any, is
/// well-formed) without running anything: the same rule every execution applies.
pub fn validate_input(input: &Value) -> Result<(), ExecutionError> {
    prepare_input(input.clone(), None).map(drop)
}

/// The state with `metadata` set (replacing whatever was there).
///
/// A `metadata` object that already has exactly the four host fields (as a processor's
/// output usually does: the SDKs hand the input's metadata back) is rewritten in place,
/// which spares the hot path building a new one.
pub fn with_metadata(mut state: Map<String, Value>, metadata: &StateMetadata) -> Value {
    match state.get_mut("metadata") {
        Some(Value::Object(existing)) if has_exactly_host_fields(existing) => {
            metadata.write_into(existing);
        }
        _ => {
            state.insert("metadata".into(), metadata.to_json());
        }
    }
    Value::Object(state)
}

const HOST_FIELDS: [&str; 4] = ["version", "sessionId", "createdAt", "lastUpdated"];

fn has_exactly_host_fields(m: &Map<String, Value>) -> bool {
    m.len() == HOST_FIELDS.len() && HOST_FIELDS.iter().all(|k| m.contains_key(*k))
}

/// `state` with `metadata` as JSON text, written straight from the parts (the combined
/// document is never built). Any `metadata` member of `state` is left out.
pub(crate) fn text_with_metadata(state: &Map<String, Value>, metadata: &StateMetadata) -> String {
    let stamped = Stamped { state, metadata };
    // Serializing maps of strings and `Value`s cannot fail.
    serde_json::to_string(&stamped)
        .unwrap_or_else(|_| with_metadata(state.clone(), metadata).to_string())
}

struct Stamped<'a> {
    state: &'a Map<String, Value>,
    metadata: &'a StateMetadata,
}

impl serde::Serialize for Stamped<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.state {
            if key != "metadata" {
                map.serialize_entry(key, value)?;
            }
        }
        map.serialize_entry("metadata", self.metadata)?;
        map.end()
    }
}

impl serde::Serialize for StateMetadata {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("version", &self.version)?;
        map.serialize_entry("sessionId", &self.session_id)?;
        map.serialize_entry("createdAt", &self.created_at)?;
        map.serialize_entry("lastUpdated", &self.last_updated)?;
        map.end()
    }
}

fn invalid_input(message: impl Into<String>) -> ExecutionError {
    ExecutionError::host(ErrorKind::Validation, codes::INVALID_INPUT, message)
}

/// "a number", "an array", … for messages.
pub(crate) fn json_type(value: &Value) -> &'static str {
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
    use serde_json::json;

    fn metadata() -> StateMetadata {
        StateMetadata {
            version: 7,
            session_id: Some("s1".into()),
            created_at: "2026-01-01T00:00:00Z".into(),
            last_updated: "2026-02-02T00:00:00Z".into(),
        }
    }

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    /// L3: a caller's `metadata.version` is input: one past JavaScript's safe integers (so
    /// past what every client reads exactly, and far from `u64::MAX + 1`) is refused, and
    /// the largest one taken still bumps without overflowing.
    #[test]
    fn a_version_past_the_safe_integers_is_refused_and_the_largest_bumps() {
        for version in [u64::MAX, MAX_VERSION + 1] {
            let input = serde_json::json!({ "metadata": { "version": version } });
            let error = validate_input(&input).unwrap_err();
            assert_eq!(error.code.as_deref(), Some(codes::INVALID_INPUT));
            assert!(
                error.message.contains("9007199254740991"),
                "{}",
                error.message
            );
        }
        let input = serde_json::json!({ "metadata": { "version": MAX_VERSION } });
        let (_, metadata) = prepare_input(input, None).unwrap();
        assert_eq!(metadata.bumped().version, MAX_VERSION + 1);
    }

    #[test]
    fn forged_metadata_with_the_host_fields_is_overwritten_in_place() {
        let forged = object(json!({"a": 1, "metadata": {
            "version": 999, "sessionId": null, "createdAt": 5, "lastUpdated": "1999"}}));
        let stamped = with_metadata(forged, &metadata());
        assert_eq!(stamped["metadata"], metadata().to_json());
        assert_eq!(stamped["a"], 1);
    }

    #[test]
    fn metadata_with_other_fields_is_replaced_whole() {
        for forged in [
            json!({"metadata": {"version": 1, "sessionId": null, "createdAt": "x",
                "lastUpdated": "y", "admin": true}}),
            json!({"metadata": {"version": 1}}),
            json!({"metadata": "v1"}),
            json!({}),
        ] {
            let stamped = with_metadata(object(forged.clone()), &metadata());
            assert_eq!(stamped["metadata"], metadata().to_json(), "{forged}");
        }
        let none = StateMetadata {
            session_id: None,
            ..metadata()
        };
        let stamped = with_metadata(
            object(
                json!({"metadata": {"version": 1, "sessionId": "s9", "createdAt": "x",
                "lastUpdated": "y"}}),
            ),
            &none,
        );
        assert_eq!(stamped["metadata"]["sessionId"], Value::Null);
    }

    #[test]
    fn text_with_metadata_is_the_stamped_document() {
        let state = object(json!({"b": [1, 2], "a": {"x": "y"}, "metadata": {"stale": 1}}));
        let text = text_with_metadata(&state, &metadata());
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, with_metadata(state, &metadata()));
    }

    #[test]
    fn a_new_state_starts_at_version_zero_in_its_session() {
        let (state, meta) = prepare_input(json!({"count": 1}), Some("s1")).unwrap();
        assert_eq!(state["count"], 1);
        assert_eq!(meta.version, 0);
        assert_eq!(meta.session_id.as_deref(), Some("s1"));
        assert_eq!(meta.bumped().version, 1);
    }

    #[test]
    fn earlier_metadata_keeps_its_revision_and_creation_time() {
        let input = json!({"metadata": {"version": 4, "createdAt": "2020-01-01T00:00:00Z"}});
        let (_, meta) = prepare_input(input, None).unwrap();
        assert_eq!(meta.version, 4);
        assert_eq!(meta.created_at, "2020-01-01T00:00:00Z");
        let out = with_metadata(Map::new(), &meta.bumped());
        assert_eq!(out["metadata"]["version"], 5);
        assert_eq!(out["metadata"]["createdAt"], "2020-01-01T00:00:00Z");
    }

    #[test]
    fn non_objects_and_malformed_metadata_are_validation_errors() {
        for bad in [
            json!([1, 2]),
            json!("text"),
            json!(null),
            json!({"metadata": 3}),
            json!({"metadata": {"version": -1}}),
            json!({"metadata": {"createdAt": 5}}),
        ] {
            let err = prepare_input(bad.clone(), None).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Validation, "{bad}");
            assert!(err.has_code(codes::INVALID_INPUT));
        }
    }
}
