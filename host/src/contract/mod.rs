//! The contract layer: what both runtimes agree on, and what every layer above builds on.
//! Errors and their codes, the result document, state and its metadata, limits, retry
//! policies, the operator manifest, workflow definitions, the bounds on what guests and
//! tenants may make the host hold, cancellation, and the state store's seam. Nothing here
//! names a sandbox, an execution or Redis.

pub(crate) mod bounds;
pub(crate) mod cancel;
pub(crate) mod clock;
pub(crate) mod error;
pub(crate) mod http_grant;
pub(crate) mod idempotency;
pub(crate) mod limits;
pub(crate) mod manifest;
pub(crate) mod merge;
pub(crate) mod names;
pub(crate) mod result;
pub(crate) mod retry;
pub(crate) mod schedule;
pub(crate) mod state;
pub(crate) mod state_store;
pub(crate) mod workflow;
