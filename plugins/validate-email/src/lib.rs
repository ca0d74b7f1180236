//! `validate-email`: fails with a `validation` error (code `invalid-email`) unless `email`
//! looks like an address; on success sets `emailValid` to true.

use serde::{Deserialize, Serialize};
use weir_sdk::{Context, Error};

#[derive(Deserialize)]
struct Input {
    email: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Output {
    email_valid: bool,
}

/// Checks that `email` is a plausible address.
#[weir_sdk::processor(name = "validate-email", timeout_ms = 1000)]
fn process(input: Input, ctx: &Context) -> Result<Output, Error> {
    let Some(email) = input.email else {
        return Err(Error::validation("the state has no `email` field").with_code("missing-email"));
    };
    if !plausible(&email) {
        ctx.info("rejected an email address");
        return Err(
            Error::validation(format!("`{email}` is not a valid email address"))
                .with_code("invalid-email")
                .with_details(&weir_sdk::json!({ "field": "email" })),
        );
    }
    Ok(Output { email_valid: true })
}

fn plausible(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain.contains('.')
        && !domain.contains('@')
        && !email.chars().any(char::is_whitespace)
}
