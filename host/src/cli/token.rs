//! `weir token`: a new random API token and its SHA-256 digest, for `weir.toml`
//! (`token_sha256` / `operator_token_sha256`). The token is shown once; only the digest is
//! stored.

use serde_json::json;

use super::{Failure, Outcome, print_json};

pub(crate) fn run() -> Result<Outcome, Failure> {
    // Two version-4 UUIDs: 244 random bits from a cryptographically secure generator
    // (uuid's `fast-rng`: ChaCha seeded by the operating system).
    let token = format!(
        "weir_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let digest = hex::encode(weir::server::digest(&token));
    print_json(&json!({ "token": token, "sha256": digest }))?;
    Ok(Outcome::Ok)
}
