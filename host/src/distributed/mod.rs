//! The distributed runtime: the same processors and workflows run by any number of
//! `weir worker` processes through Redis, speaking BullMQ's protocol (through its official
//! Rust port), with the same semantics and result documents as the local runtime.
//!
//! How a run advances (DESIGN.md, "Distributed runtime"): every step is a job on its
//! processor's queue; the worker that finishes a step enqueues the continuation (the next
//! chain step, the chosen route) or, at the end, writes the run's outcome. The continuation
//! travels in the job (a stack of [`wire::Frame`]s), so no process holds anything while a
//! run waits, and the submitter may exit. Jobs have deterministic ids (`{run}-{path}`), so a
//! step that runs twice (a worker killed after enqueuing its continuation) enqueues nothing
//! twice, and a run's outcome is written once.
//!
//! Redis layout, with the default prefix `weir`:
//! - BullMQ's keys for the queue of processor `p`: `weir:p:*` (BullMQ prefix `weir`);
//! - weir's own keys under `weir:_:` (`_` is never a processor name, so never a queue):
//!   `blob:{digest}` component bytes, `versions` digest → declared version, `plugins`
//!   name → digest of the newest published component, `wf:{digest}` workflow definitions, `workflows` name → digest, `run:{id}`
//!   a run's record, `events` the stream of events every process reads, plus the state
//!   store's keys (see [`crate::RedisStateStore`]), and `activity:*` the fleet's counters
//!   (see `activity.rs` and `lua/activity_flush.lua`).
//!
//! The files, by what they do:
//! - `handle.rs`: one process's [`Distributed`] handle (connection, seal, queues, job
//!   options); `submit.rs` submits runs, `publish.rs` publishes and fetches the catalog,
//!   `runs.rs` keeps runs' records and outcomes, `stream.rs` the event stream;
//! - `advance.rs`: how a run advances between jobs (the continuation a job carries);
//!   `fanout.rs` runs parallels, batches and graphs as BullMQ flows over a join record,
//!   whose pure rules are `join.rs`;
//! - `worker.rs`: a worker's queues and life; `job.rs` what it does with one job;
//!   `fetch.rs` where the code a job names comes from; `foreign.rs` jobs without weir's
//!   envelope;
//! - `activity.rs`: the fleet's counters of executions and sessions;
//! - `control.rs`: cancellation and shared events across processes; `dlq.rs` the
//!   dead-letter set; `content.rs` the content-addressed store; `wire.rs` the job format;
//!   `trust.rs` the fleet key; `queues.rs` the queues' counts; `state_store.rs`
//!   sessions' state in Redis; `lua/` the scripts.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::contract::error::Error;

mod activity;
mod advance;
mod content;
mod control;
mod dlq;
#[cfg(test)]
mod driver_tests;
mod fanout;
mod fetch;
mod foreign;
mod handle;
mod index;
mod job;
mod join;
mod publish;
mod queues;
mod runs;
mod schedules;
pub(crate) use schedules::Ticks;
pub(crate) mod state_store;
mod stream;
mod submit;
pub(crate) use submit::Submitted;
mod trust;
mod wire;
mod worker;

pub(crate) use control::Target as CancelTarget;
pub use dlq::DeadJob;
pub use fanout::ItemAdmission;
pub use foreign::{ForeignAdmission, ForeignPlace, ForeignQueue};
pub(crate) use handle::Distributed;
pub use index::{RunPage, RunQuery, RunState, RunSummary};
pub use queues::QueueCounts;
pub use runs::RunStatus;
pub use trust::{FleetKey, Trust};
pub use worker::{WorkerConfig, WorkerHandle};

/// How to reach Redis, and how long to keep what the distributed runtime writes there.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The server, e.g. `redis://127.0.0.1:6379/0`.
    pub url: String,
    /// First segment of every key weir writes (BullMQ's prefix for weir's queues): letters,
    /// digits, `-` and `_`, no `:`.
    pub prefix: String,
    /// How long connecting may take before the server counts as unreachable.
    pub connect_timeout: Duration,
    /// How long one command may take.
    pub response_timeout: Duration,
    /// Completed jobs kept per queue (for inspection, and so that a re-run step cannot
    /// enqueue a continuation twice): the newest `count`, none older than `age`.
    pub keep_completed: Retention,
    /// Failed jobs kept per queue (the dead-letter set): the newest `count`, none older
    /// than `age`.
    pub keep_failed: Retention,
    /// How long a finished run's record (and outcome) stays readable.
    pub run_retention: Duration,
    /// Entries the event stream keeps, about (default 1,000): events every process shares
    /// with the others, and runs' outcome announcements. Older entries are trimmed.
    pub events_kept: usize,
    /// Largest entry of the event stream, in bytes of JSON (default 64 KiB): a batch of
    /// events is split into entries of at most this (an event larger than it, within the
    /// guest's bounds, goes alone), and a run's outcome is announced with its result only
    /// when the result fits (else its waiters read it from the run's record). With
    /// `events_kept`, it bounds the stream's memory in Redis.
    pub stream_entry_bytes: usize,
    /// Payload bytes of this process's events waiting to be written to the event stream
    /// (default 8 MiB), each event counting 256 bytes more (so at most 32,768 events at the
    /// default). Sharing never holds up the runtime's event bus: while Redis is
    /// slower than the guests that emit, events past this are not shared (other processes'
    /// subscribers miss them, and a warning says how many), and every guest's `emit` still
    /// goes through.
    pub share_buffer_bytes: usize,
    /// How long a run may take, from its submission (and any delay), when its request sets
    /// no deadline (default one hour). Its steps are cut at it, and a run without an outcome
    /// by then (and [`RedisConfig::lost_grace`]) ends as `timeout` / `run-lost`.
    pub run_deadline: Duration,
    /// How long past its deadline a run's outcome may still arrive before the run counts as
    /// lost (default 10 s: the last step's end, written after the deadline cut it).
    pub lost_grace: Duration,
    /// How this process tells what its fleet wrote to Redis from what anyone else wrote
    /// there: the fleet key that signs and checks jobs, run records, outcomes and catalog
    /// entries. [`Trust::Unset`] by default, with which the distributed runtime refuses
    /// to start.
    pub trust: Trust,
    /// How often each process adds what its executions did to the fleet's counters, and
    /// says what it runs now (default 250 ms): what `/v1/stats` and `/v1/sessions` of
    /// any server of the fleet show lags the work by about this much. A process's
    /// snapshot of what it runs expires 20 intervals after its last word (a process that
    /// died stops counting as running).
    pub activity_interval: Duration,
    /// A tenant's counters with nothing added for this long are dropped (default 7 days).
    pub activity_retention: Duration,
    /// Tenants the fleet's counters keep (default 1,000): at the cap, the one idle longest
    /// is dropped for a new one.
    pub activity_tenants: usize,
    /// Processor and workflow names one tenant's counters (and one session's) keep
    /// (default 1,000): past it, a new name's counts are dropped, and a warning says so.
    pub activity_names: usize,
    /// Runs the fleet's run index lists per tenant (default 10,000), newest kept: what
    /// `GET /v1/jobs` of any server shows. Entries older than the longer of
    /// [`RedisConfig::run_retention`] and [`RedisConfig::run_deadline`] (with the grace) are
    /// dropped with their records.
    pub run_index_per_tenant: usize,
    /// Runs the fleet's run index lists over all tenants (default 100,000), newest kept.
    pub run_index_total: usize,
    /// How this process is named to the fleet's operators: where a run's steps ran, in
    /// its timeline and its events' `origin` (`{name}/{a unique id}`). 1–64 letters,
    /// digits, `-`, `_`, `.` and `:`; by default the machine's host name and the process
    /// id (`host:1234`).
    pub process_name: Option<String>,
}

/// Whether `name` may name a process to the fleet (see [`RedisConfig::process_name`]).
fn is_process_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// How many finished jobs to keep, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// At most this many.
    pub count: usize,
    /// None older than this.
    pub age: Duration,
}

impl RedisConfig {
    /// The defaults for `url`: prefix `weir`, 5 s to connect, 5 s per command; completed
    /// jobs kept 1 h (at most 10,000 per queue), failed jobs 7 days (at most 100,000), run
    /// outcomes 24 h, an event stream of about 1,000 entries of at most 64 KiB; the fleet's
    /// activity counters written every 250 ms, for up to 1,000 tenants and 1,000 names each,
    /// kept 7 days; the newest 10,000 runs of each tenant listed (100,000 in all); no fleet
    /// key yet (set [`RedisConfig::trust`] before the distributed runtime starts).
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "weir".into(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            keep_completed: Retention {
                count: 10_000,
                age: Duration::from_secs(3600),
            },
            keep_failed: Retention {
                count: 100_000,
                age: Duration::from_secs(7 * 24 * 3600),
            },
            run_retention: Duration::from_secs(24 * 3600),
            events_kept: 1_000,
            stream_entry_bytes: 64 << 10,
            share_buffer_bytes: 8 << 20,
            run_deadline: Duration::from_secs(3600),
            lost_grace: Duration::from_secs(10),
            trust: Trust::Unset,
            activity_interval: Duration::from_millis(250),
            activity_retention: Duration::from_secs(7 * 24 * 3600),
            activity_tenants: 1_000,
            activity_names: 1_000,
            run_index_per_tenant: 10_000,
            run_index_total: 100_000,
            process_name: None,
        }
    }

    /// This process's name to the fleet: [`RedisConfig::process_name`], or the host name
    /// and the process id.
    pub(crate) fn process_name(&self) -> String {
        if let Some(name) = &self.process_name {
            return name.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| is_process_name(h))
            .unwrap_or_else(|| "process".into());
        format!("{host}:{}", std::process::id())
    }

    /// Checks the prefix (BullMQ refuses `:` in it) and the process name.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if let Some(name) = &self.process_name
            && !is_process_name(name)
        {
            return Err(Error::Config(format!(
                "the process name `{name}` is invalid: use 1 to 64 letters, digits, `-`, `_`, \
                 `.` and `:`"
            )));
        }
        let ok = !self.prefix.is_empty()
            && self
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "the Redis key prefix `{}` is invalid: use letters, digits, `-` and `_` (no `:`)",
                self.prefix
            )))
        }
    }
}

/// The queues of weir's own jobs, which every worker serves: fan-outs' joins, chains'
/// delays and schedules' ticks.
pub(crate) const OWN_QUEUES: [&str; 3] = [
    fanout::JOIN_QUEUE,
    wire::DELAY_QUEUE,
    schedules::SCHEDULE_QUEUE,
];

/// Names of the keys weir owns.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    own: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            own: format!("{prefix}:_:"),
        }
    }

    /// `{prefix}:_:{name}`.
    pub(crate) fn own(&self, name: &str) -> String {
        format!("{}{name}", self.own)
    }

    pub(crate) fn blob(&self, digest: &str) -> String {
        self.own(&format!("blob:{digest}"))
    }

    pub(crate) fn plugins(&self) -> String {
        self.own("plugins")
    }

    pub(crate) fn versions(&self) -> String {
        self.own("versions")
    }

    pub(crate) fn workflow(&self, digest: &str) -> String {
        self.own(&format!("wf:{digest}"))
    }

    pub(crate) fn workflows(&self) -> String {
        self.own("workflows")
    }

    pub(crate) fn run(&self, id: &str) -> String {
        self.own(&format!("run:{id}"))
    }

    /// The fleet's run index: every tenant's runs, newest last.
    pub(crate) fn run_index(&self) -> String {
        self.own("runs:all")
    }

    /// `tenant`'s run index.
    pub(crate) fn tenant_run_index(&self, tenant: &str) -> String {
        format!("{}{tenant}", self.tenant_run_index_prefix())
    }

    /// What every tenant's run index key starts with.
    pub(crate) fn tenant_run_index_prefix(&self) -> String {
        self.own("runs:t:")
    }

    /// The tenants with a run index, by their latest submission.
    pub(crate) fn run_index_tenants(&self) -> String {
        self.own("runs:tenants")
    }

    pub(crate) fn join(&self, id: &str) -> String {
        self.own(&format!("join:{id}"))
    }

    /// The marker that cancels `id` (a run or a fan-out) before its jobs start.
    pub(crate) fn cancelled(&self, kind: &str, id: &str) -> String {
        self.own(&format!("cancelled:{kind}:{id}"))
    }

    /// When the session was last stopped (Unix ms): runs submitted before are cancelled.
    pub(crate) fn stopped(&self, tenant: &str, session: &str) -> String {
        self.own(&format!("stopped:{}:{tenant}:{session}", tenant.len()))
    }

    /// The run idempotency key `key` of `tenant` stands for (`{run} {fingerprint}`, kept
    /// for the key's window). Hashed: a key is the caller's text.
    pub(crate) fn idempotency(&self, tenant: &str, key: &str) -> String {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        hash.update(tenant.as_bytes());
        hash.update([0]);
        hash.update(key.as_bytes());
        self.own(&format!("idem:{}", hex::encode(hash.finalize())))
    }

    /// How many of `tenant`'s runs are going (their turns, see `WireScope::turn`).
    pub(crate) fn going(&self, tenant: &str) -> String {
        self.own(&format!("going:{tenant}"))
    }

    /// How many times the job `id` of `queue` was handed back by a worker that left
    /// before it ended (so that its next start does not count those as crashes).
    pub(crate) fn handed_back(&self, queue: &str, id: &str) -> String {
        self.own(&format!("handedback:{queue}:{id}"))
    }

    /// The liveness key of the worker `origin`.
    pub(crate) fn worker(&self, origin: &str) -> String {
        self.own(&format!("worker:{origin}"))
    }

    /// A pattern matching every session's stop marker.
    pub(crate) fn stopped_pattern(&self) -> String {
        self.own("stopped:*")
    }

    /// The cancellation a marker (`key` holding `value`) stands for.
    pub(crate) fn marker_message(&self, key: &str, value: &str) -> Option<control::CancelMessage> {
        use control::{CancelMessage, Target};
        let rest = key.strip_prefix(&self.own)?;
        let target = if let Some(id) = rest.strip_prefix("cancelled:run:") {
            Target::Run { id: id.to_string() }
        } else if let Some(id) = rest.strip_prefix("cancelled:join:") {
            Target::Join { id: id.to_string() }
        } else {
            // stopped:{len}:{tenant}:{session}
            let rest = rest.strip_prefix("stopped:")?;
            let (len, rest) = rest.split_once(':')?;
            let len: usize = len.parse().ok()?;
            let tenant = rest.get(..len)?;
            let session = rest.get(len..)?.strip_prefix(':')?;
            return Some(CancelMessage {
                target: Target::Session {
                    tenant: tenant.to_string(),
                    session: session.to_string(),
                    before_ms: value.parse().ok()?,
                },
                reason: crate::contract::cancel::CancelReason::SessionStopped
                    .code()
                    .to_string(),
            });
        };
        Some(CancelMessage {
            target,
            reason: value.to_string(),
        })
    }

    /// The jobs of a session (`{queue}/{job id}`), so that stopping it can reach them.
    pub(crate) fn session_jobs(&self, tenant: &str, session: &str) -> String {
        self.own(&format!("sessionjobs:{}:{tenant}:{session}", tenant.len()))
    }

    /// The channel that tells every worker what to cancel.
    pub(crate) fn cancel_channel(&self) -> String {
        self.own("cancel")
    }

    pub(crate) fn events(&self) -> String {
        self.own("events")
    }
}

/// Checks that `config` says how to trust what is read from Redis (a fleet key, or the
/// insecure mode chosen explicitly).
pub(crate) fn check_trust(config: &RedisConfig) -> Result<(), Error> {
    trust::Seal::new(&config.trust).map(drop)
}

/// The error for a Redis that did not answer or refused.
pub(crate) fn unreachable(config: &RedisConfig, reason: impl std::fmt::Display) -> Error {
    Error::Redis {
        url: config.url.clone(),
        reason: reason.to_string(),
    }
}

/// A multiplexed connection that reconnects by itself. Fails with [`Error::Redis`] when the
/// server cannot be reached within the connect timeout.
pub(crate) async fn connect(config: &RedisConfig) -> Result<ConnectionManager, Error> {
    config.validate()?;
    let client = redis::Client::open(config.url.as_str()).map_err(|e| unreachable(config, e))?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout))
        .set_number_of_retries(1);
    let connect = client.get_connection_manager_with_config(manager_config);
    // The connection manager retries on its own; bound the whole attempt as well.
    let limit = config.connect_timeout * 2;
    tokio::time::timeout(limit, connect)
        .await
        .map_err(|_| unreachable(config, format!("no answer within {} ms", limit.as_millis())))?
        .map_err(|e| unreachable(config, e))
}

/// BullMQ's connection settings for `config`.
pub(crate) fn bullmq_connection(config: &RedisConfig) -> bullmq::options::RedisConnectionOptions {
    bullmq::options::RedisConnectionOptions::new().url(config.url.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use control::Target;

    #[test]
    fn markers_read_back_as_the_cancellations_they_stand_for() {
        let keys = Keys::new("weir");
        let run = keys.marker_message(&keys.cancelled("run", "r-1"), "cancelled-by-request");
        assert_eq!(
            run.map(|m| m.target),
            Some(Target::Run { id: "r-1".into() })
        );
        let join = keys.marker_message(&keys.cancelled("join", "r-1-0.j"), "cancelled-by-sibling");
        let join = join.expect("a join marker");
        assert_eq!(
            join.target,
            Target::Join {
                id: "r-1-0.j".into()
            }
        );
        assert_eq!(
            join.reason(),
            crate::contract::cancel::CancelReason::Sibling
        );
        // Tenants and sessions may hold `:`; the length prefix keeps them apart.
        let stopped = keys.marker_message(&keys.stopped("a:b", "c:d"), "42");
        assert_eq!(
            stopped.map(|m| m.target),
            Some(Target::Session {
                tenant: "a:b".into(),
                session: "c:d".into(),
                before_ms: 42
            })
        );
        assert!(keys.marker_message("weir:_:other:x", "1").is_none());
        assert!(
            keys.marker_message(&keys.stopped("t", "s"), "not a time")
                .is_none()
        );
    }
}
