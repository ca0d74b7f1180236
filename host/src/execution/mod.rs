//! The execution layer: one execution in this process, and the workflows made of them.
//! It resolves names through the registry (kept current by the folder watcher), admits
//! executions through the per-processor queues, runs their attempts in sandboxes, composes
//! them into chains, parallels, routes, batches and graphs, and keeps each processor's and
//! session's activity. It implements the sandbox's [`crate::sandbox::GuestServices`] so
//! that a guest's nested `call` comes back in here, one level deeper.

pub(crate) mod activity;
pub(crate) mod compose;
pub(crate) mod context;
pub(crate) mod executor;
pub(crate) mod listing;
pub(crate) mod registry;
pub(crate) mod reload;
pub(crate) mod request;
pub(crate) mod scheduler;
pub(crate) mod services;
