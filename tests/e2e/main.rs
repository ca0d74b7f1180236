//! End-to-end tests: the weir host, library and CLI, against the real compiled plugins
//! (built from `plugins/` by this crate's build script). One test binary with submodules
//! keeps link time down.

// Test code may unwrap: a panic here is a failed test.
#![allow(clippy::unwrap_used)]

mod abuse;
mod cli;
mod compose;
mod dashboard;
mod distributed;
mod durable;
mod events;
mod examples;
mod features;
mod fleet;
mod hostile;
mod http;
mod languages;
mod loading;
mod outbound;
mod queues;
mod redis_store;
mod reload;
mod runtime;
mod schedules;
mod schema;
mod server;
mod tenants;
mod trust;
mod warm;
