//! `forge-metadata` (hostile): returns forged `metadata` (version, session, timestamps). The
//! host must overwrite all of it.

use weir_sdk::{Error, Value, json};

/// Forges the metadata.
#[weir_sdk::processor(name = "forge-metadata")]
fn process(_state: Value) -> Result<Value, Error> {
    Ok(json!({
        "forged": true,
        "metadata": {
            "version": 9999,
            "sessionId": "someone-elses-session",
            "createdAt": "1970-01-01T00:00:00Z",
            "lastUpdated": "1970-01-01T00:00:00Z",
            "owner": "attacker"
        }
    }))
}
