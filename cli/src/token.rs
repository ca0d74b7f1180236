//! `weir token` and `weir fleet-key`: new random secrets. A token comes with its SHA-256
//! digest, for `weir.toml` (`token_sha256` / `operator_token_sha256`): the token is shown
//! once; only the digest is stored. A fleet key is shared by the processes of one
//! distributed fleet (docs/distributed.md, "Trust").

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
    let digest = hex::encode(weir_server::digest(&token));
    print_json(&json!({ "token": token, "sha256": digest }))?;
    Ok(Outcome::Ok)
}

/// Prints a new fleet key (64 hexadecimal digits) on a line of its own, so that
/// `weir fleet-key > fleet.key` writes a key file.
pub(crate) fn fleet_key() -> Result<Outcome, Failure> {
    let key = weir::FleetKey::generate()?;
    println!("{}", key.to_text());
    Ok(Outcome::Ok)
}
