//! The distributed runtime's own operations, on their own type: a [`Fleet`] is what a
//! [`Runtime`] built with [`Runtime::redis`] offers besides running executions (runs kept
//! in Redis, the dead-letter set, serving the queues as a worker, publishing plugins). A
//! local runtime has none, so it has no method that always fails: [`Runtime::fleet`] is
//! `None` there. Compiled with the `redis` feature.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::contract::cancel::CancelReason;
use crate::contract::clock::millis;
use crate::contract::error::{Error, RuntimeError, codes};
use crate::contract::result::ExecutionResult;
use crate::contract::state_store::SessionKey;
use crate::distributed::{
    CancelTarget, DeadJob, Distributed, QueueCounts, RedisConfig, RunPage, RunQuery, RunStatus,
    Submitted, WorkerConfig, WorkerHandle,
};
use crate::execution::activity::{ProcessorStats, SessionStats, VersionStats};
use crate::execution::request::ExecutionRequest;
use crate::sandbox::plugin::Plugin;

use super::{Runtime, RuntimeBuilder, RuntimeStats};

/// The distributed runtime's own operations, for a [`Runtime`] built with
/// [`Runtime::redis`] (see [`Runtime::fleet`]). Cheap to clone; it keeps the runtime alive.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let runtime = weir::Runtime::redis("redis://127.0.0.1:6379")
///     .trust(weir::Trust::key(weir::FleetKey::from_text(&std::env::var("WEIR_FLEET_KEY")?)?))
///     .build()
///     .await?;
/// runtime.start();
/// let fleet = runtime.fleet().expect("built with Runtime::redis");
/// let run = fleet
///     .submit(weir::ExecutionRequest::new("calc", serde_json::json!({ "count": 5 })))
///     .await?;
/// let result = fleet.wait_run(&run).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Fleet {
    runtime: Runtime,
    distributed: Arc<Distributed>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Starts configuring the distributed runtime on the Redis at `url`: the same API, with
    /// every execution run as jobs by `weir worker` processes (see
    /// [`Fleet::start_worker`]). The plugins and workflows this runtime loads are published
    /// to Redis, so any worker can run them; sessions' state is kept in Redis.
    pub fn redis(url: impl Into<String>) -> RuntimeBuilder {
        RuntimeBuilder::default().redis_config(RedisConfig::new(url))
    }

    /// The distributed runtime's own operations, if this runtime runs work through Redis
    /// (built with [`Runtime::redis`]); `None` on a local runtime.
    pub fn fleet(&self) -> Option<Fleet> {
        let distributed = self.distributed.clone()?;
        Some(Fleet {
            runtime: self.clone(),
            distributed,
        })
    }

    /// Refuses a request whose idempotency key is not one ([`crate::IdempotencyBounds`]).
    pub(super) fn check_idempotency_key(
        &self,
        request: &ExecutionRequest,
    ) -> Result<(), RuntimeError> {
        match &request.idempotency_key {
            Some(key) => self
                .shared
                .config()
                .idempotency
                .check_key(key)
                .map_err(RuntimeError::InvalidRequest),
            None => Ok(()),
        }
    }

    /// Submits `request` through Redis and waits for its outcome.
    pub(super) async fn run_remote(
        &self,
        distributed: &Distributed,
        request: ExecutionRequest,
    ) -> Result<(ExecutionResult, bool), RuntimeError> {
        let unavailable = refusal;
        self.check_idempotency_key(&request)?;
        distributed
            .publish_if_changed(self.shared.registry())
            .await
            .map_err(unavailable)?;
        let cancel = request.cancel.clone();
        let on_accept = request.on_accept.clone();
        let mut request = request;
        let id = request
            .id
            .get_or_insert_with(crate::contract::clock::new_execution_id)
            .clone();
        // Listening before submitting: the outcome cannot come first.
        let receiver = distributed.expect(&id).await.map_err(unavailable)?;
        let run = match distributed.submit(request).await {
            Ok(Submitted::Run(run)) => run,
            Ok(Submitted::Repeat(run)) => {
                distributed.unexpect(&id);
                if let Some(on_accept) = &on_accept {
                    on_accept.tell(&run, true);
                }
                // Another request's run: its outcome, whoever waits for it. (Cancelling
                // this request stops waiting; it does not cancel that run.)
                return tokio::select! {
                    result = distributed.wait(&run) => result.map(|r| (r, true)).map_err(unavailable),
                    () = cancel.cancelled() => Err(RuntimeError::InvalidRequest(format!(
                        "cancelled while waiting for run `{run}`, which the idempotency key \
                         names (the run goes on)"
                    ))),
                };
            }
            Ok(Submitted::Ended(ended)) => {
                distributed.unexpect(&id);
                if ended
                    .error
                    .as_ref()
                    .is_some_and(|e| e.has_code(codes::PROCESSOR_NOT_FOUND))
                {
                    return Err(not_published(*ended));
                }
                return Ok((*ended, false));
            }
            Err(error) => {
                distributed.unexpect(&id);
                return Err(unavailable(error));
            }
        };
        if let Some(on_accept) = &on_accept {
            on_accept.tell(&run, false);
        }
        // The caller's cancel handle (e.g. Ctrl-C on `weir run`) cancels the run wherever
        // it is; its outcome (cancelled) still comes back.
        let wait = distributed.outcome(&run, receiver);
        tokio::pin!(wait);
        tokio::select! {
            result = &mut wait => return result.map(|r| (r, false)).map_err(unavailable),
            _ = cancel.cancelled() => {}
        }
        let reason = cancel.reason().unwrap_or(CancelReason::Request);
        let target = CancelTarget::Run { id: run.clone() };
        distributed
            .cancel(target, reason)
            .await
            .map_err(unavailable)?;
        wait.await.map(|r| (r, false)).map_err(unavailable)
    }
}

impl Fleet {
    /// The runtime these operations belong to.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// A connection to the distributed runtime's Redis, and the key prefix under which an
    /// embedding keeps its own data called `name` there (all its keys start with it, inside
    /// the fleet's namespace): how state an embedding shares with the whole fleet, such as
    /// the HTTP server's tenant quota ledger, is kept.
    pub fn redis_namespace(&self, name: &str) -> (redis::aio::ConnectionManager, String) {
        (self.distributed.conn(), self.distributed.keys.own(name))
    }

    /// Charges the items of every batch this process opens to their tenant through
    /// `admission`, before any item starts; refused, the batch fails with its error and no
    /// item runs. A batch opens in the process that submits a run that is a batch, or in
    /// the worker that reaches one inside a workflow: give every server and worker of the
    /// fleet the same admission (`weir serve` and `weir worker` do, from `--config`).
    pub fn charge_batch_items(
        &self,
        admission: std::sync::Arc<dyn crate::distributed::ItemAdmission>,
    ) {
        self.distributed.set_item_admission(admission);
    }

    /// Submits an execution to the distributed runtime and returns its run id at once; the
    /// run continues without this process. Read it with [`Fleet::run_status`] or wait for
    /// it with [`Fleet::wait_run`]. With an idempotency key that stands for an earlier run
    /// of the same request, that run's id.
    pub async fn submit(&self, request: ExecutionRequest) -> Result<String, RuntimeError> {
        self.runtime.accepting()?;
        self.runtime.check_idempotency_key(&request)?;
        let distributed = &self.distributed;
        distributed
            .publish_if_changed(self.runtime.shared.registry())
            .await
            .map_err(refusal)?;
        // Events of the run reach this process's subscribers from the start.
        distributed.ensure_reader().await.map_err(refusal)?;
        match distributed.submit(request).await {
            Ok(Submitted::Run(run) | Submitted::Repeat(run)) => Ok(run),
            Ok(Submitted::Ended(ended))
                if ended
                    .error
                    .as_ref()
                    .is_some_and(|e| e.has_code(codes::PROCESSOR_NOT_FOUND)) =>
            {
                Err(not_published(*ended))
            }
            Ok(Submitted::Ended(refused)) => Err(RuntimeError::InvalidRequest(
                refused.error.map(|e| e.message).unwrap_or_default(),
            )),
            Err(error) => Err(refusal(error)),
        }
    }

    /// Cancels the run `id` wherever its jobs are: running steps are interrupted (softly,
    /// then for real), steps not started yet are cancelled when they start. The run ends
    /// with a `cancelled` result. False if there is no such run or it has ended.
    pub async fn cancel_run(&self, id: &str) -> Result<bool, RuntimeError> {
        let distributed = &self.distributed;
        let running = distributed
            .status(id)
            .await
            .map_err(refusal)?
            .is_some_and(|status| status.result.is_none());
        if running {
            let target = CancelTarget::Run { id: id.to_string() };
            distributed
                .cancel(target, CancelReason::Request)
                .await
                .map_err(refusal)?;
        }
        Ok(running)
    }

    /// The dead-letter set: the newest `limit` jobs that failed for good, in `queue` or in
    /// every published processor's queue.
    pub async fn dead_jobs(
        &self,
        queue: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadJob>, RuntimeError> {
        self.distributed
            .dead_jobs(queue, limit)
            .await
            .map_err(refusal)
    }

    /// Redrives the dead job `id` of `queue`: it runs again with fresh attempts, and its
    /// run carries on from it to a new outcome.
    pub async fn redrive(&self, queue: &str, id: &str) -> Result<(), Error> {
        self.distributed.redrive(queue, id).await
    }

    /// Removes a dead job of `queue` for good; refused (a configuration error saying why)
    /// for a job that is not in the dead-letter set.
    pub async fn purge(&self, queue: &str, id: &str) -> Result<(), Error> {
        self.distributed.purge(queue, id).await
    }

    /// A run as Redis knows it; `None` if there is no such run (or its record has
    /// expired). A run whose deadline has passed (with `RedisConfig::lost_grace`) without
    /// an outcome is given its `run-lost` outcome here.
    pub async fn run_status(&self, id: &str) -> Result<Option<RunStatus>, RuntimeError> {
        self.distributed.settled_status(id).await.map_err(refusal)
    }

    /// A page of the runs submitted to the fleet (by any server, the CLI or the
    /// library), newest first, as `query` filters them. A page reads at most 2,000 runs
    /// of the index: with filters that skip
    /// many it holds fewer than `query.limit`, and [`RunPage::next`] says where to go on.
    pub async fn runs(&self, query: &RunQuery) -> Result<RunPage, RuntimeError> {
        self.distributed.list_runs(query).await.map_err(refusal)
    }

    /// Keeps `text` (JSON) beside run `id`'s outcome for as long as its record lives,
    /// signed with the fleet key: what the process that submitted the run knows of it
    /// beyond its outcome (a server keeps a job's input and timeline there), read back as
    /// [`RunStatus::annex`]. False when the record is gone.
    pub async fn annex_run(&self, id: &str, text: &str) -> Result<bool, RuntimeError> {
        self.distributed.annex_run(id, text).await.map_err(refusal)
    }

    /// The fleet's counters: every process's executions (every worker's and every
    /// server's), as kept in Redis; `tenant`'s only, or every tenant's with `None`. What
    /// runs now is what each live process last said (every
    /// [`RedisConfig::activity_interval`]); the counts lag the work by about as much. The
    /// state and uptime are this process's. Workflows whose steps run as jobs count as
    /// started and ended, never as running.
    pub async fn stats(&self, tenant: Option<&str>) -> Result<RuntimeStats, RuntimeError> {
        let shared = &self.runtime.shared;
        let fleet = self
            .distributed
            .fleet_stats(tenant, &shared.config().sessions)
            .await
            .map_err(refusal)?;
        let mut processors: BTreeMap<String, ProcessorStats> = BTreeMap::new();
        for rows in fleet.tenants.values() {
            for (name, stats) in rows {
                processors.entry(name.clone()).or_default().add(stats);
            }
        }
        Ok(RuntimeStats {
            state: self.runtime.state(),
            uptime_ms: millis(shared.activity().uptime()),
            running: fleet.running,
            sessions: fleet.sessions,
            processors,
            tenants: fleet.tenants,
        })
    }

    /// The fleet's counters of each version (digest) of processor `name`, over every tenant
    /// and every process: the [`crate::VERSIONS_KEPT`] latest, in the order each was first
    /// counted. They lag the work as [`Fleet::stats`] does.
    pub async fn version_stats(&self, name: &str) -> Result<Vec<VersionStats>, RuntimeError> {
        self.distributed.fleet_versions(name).await.map_err(refusal)
    }

    /// The fleet's sessions that have seen work and not expired or been stopped:
    /// `tenant`'s, or every tenant's with `None` (at most 1,000 in one listing, each tenant's
    /// most recently active), sorted by tenant and id.
    pub async fn sessions(&self, tenant: Option<&str>) -> Result<Vec<SessionStats>, RuntimeError> {
        let bounds = self.runtime.shared.config().sessions;
        self.distributed
            .fleet_sessions(tenant, &bounds)
            .await
            .map_err(refusal)
    }

    /// One session's counters across the fleet, if it has seen work and not expired or
    /// been stopped.
    pub async fn session_stats(
        &self,
        tenant: &str,
        session: &str,
    ) -> Result<Option<SessionStats>, RuntimeError> {
        let bounds = self.runtime.shared.config().sessions;
        self.distributed
            .fleet_session(&SessionKey::new(tenant, session), &bounds)
            .await
            .map_err(refusal)
    }

    /// How many jobs each queue holds, by state: every published processor's and the
    /// fan-outs' joins' (`_join`), sorted by name, at most 1,000.
    pub async fn queue_counts(&self) -> Result<Vec<QueueCounts>, RuntimeError> {
        self.distributed.queue_counts().await.map_err(refusal)
    }

    /// Whether any `weir worker` is connected to the distributed runtime's Redis (each says
    /// so every few seconds).
    pub async fn workers_alive(&self) -> Result<bool, RuntimeError> {
        self.distributed.any_worker().await.map_err(refusal)
    }

    /// Waits for the outcome of the run `id`.
    pub async fn wait_run(&self, id: &str) -> Result<ExecutionResult, RuntimeError> {
        self.distributed.wait(id).await.map_err(refusal)
    }

    /// Makes this process a worker of the fleet: it runs the jobs of every processor
    /// published to Redis until the returned handle is closed.
    pub async fn start_worker(&self, config: WorkerConfig) -> Result<WorkerHandle, Error> {
        // Schedules' ticks this worker takes run as this runtime's requests.
        let ticks: Arc<dyn crate::distributed::Ticks> =
            Arc::new(super::schedules::FleetTicks(self.runtime.downgrade()));
        self.runtime.schedules.fleet_ticks(ticks.clone());
        self.distributed.set_ticks(Arc::downgrade(&ticks));
        WorkerHandle::start(
            self.runtime.shared.clone(),
            self.distributed.clone(),
            self.runtime.plugins_dir.clone(),
            config,
        )
        .await
    }

    /// Publishes the component in `path` to Redis as the processor named by its file stem,
    /// so that workers can run it without having the file; returns its digest. The
    /// component is loaded and validated here first.
    pub async fn push_plugin(&self, path: impl AsRef<Path>) -> Result<String, Error> {
        let path = path.as_ref();
        let shared = &self.runtime.shared;
        let plugin = Plugin::load(
            shared.engine(),
            shared.linker(),
            path,
            &shared.config().loading(),
        )
        .await
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        self.distributed
            .push_plugin(plugin.name(), plugin.version(), &bytes)
            .await
    }
}

/// The refusal of a run whose name nothing published.
fn not_published(refused: ExecutionResult) -> RuntimeError {
    RuntimeError::NotFound {
        reason: refused
            .error
            .map(|e| e.message)
            .unwrap_or_else(|| format!("`{}` is not published", refused.execution.processor)),
        name: refused.execution.processor,
    }
}

/// A distributed runtime's error as the caller sees it: the request's fault, or Redis's.
pub(super) fn refusal(error: Error) -> RuntimeError {
    match error {
        Error::Config(message) => RuntimeError::InvalidRequest(message),
        other => RuntimeError::Unavailable(other.to_string()),
    }
}
