//! The Redis side of one process: submitting runs (pinning every name they may reach),
//! enqueueing steps, publishing and fetching components and workflow definitions, writing a
//! run's outcome once, and one reader of the event stream that hands outcomes to the many
//! callers waiting for them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bullmq::types::{BackoffStrategy, KeepJobs, RemoveOnFinish};
use bullmq::{
    FlowJob, FlowProducer, FlowProducerOptions, JobOptions, ParentOptions, Queue, QueueOptions,
};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::content;
use super::fanout::JOIN_QUEUE;
use super::flow::{Cursor, Next, Plan, Settled};
use super::trust::{Fields, Kind, Seal};
use super::wire::{Binding, StepJob, WireScope, enclosing_join, now_ms};
use super::{Keys, RedisConfig, Retention, bullmq_connection, connect, unreachable};
use crate::contract::error::{Error, ErrorKind, ExecutionError, codes};
use crate::contract::result::{ExecutionInfo, ExecutionResult};
use crate::contract::workflow::Workflow;
use crate::execution::executor::failed;
use crate::execution::registry::Catalog;
use crate::execution::request::ExecutionRequest;
use crate::sandbox::events::Event;

/// BullMQ's attempt ceiling for weir's jobs. A retry policy allows at most 100 attempts, so
/// the worker's own decision (from the processor's policy) always comes first.
const JOB_ATTEMPTS: u32 = 101;

/// How long a tenant's count of runs going outlives its last submission, in milliseconds:
/// a count that a lost run left too high is forgotten once the tenant has been quiet this
/// long.
const GOING_KEPT_MS: u64 = 3_600_000;

/// The name of weir's backoff strategy: the worker computes each wait from the policy.
const BACKOFF: &str = "weir";

/// A run as any process can read it from Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStatus {
    /// The run's id (also the id of its top-level execution).
    pub id: String,
    /// The processor or workflow it runs.
    pub target: String,
    /// Who it runs for.
    pub tenant: String,
    /// Its session, if any.
    pub session: Option<String>,
    /// When it was submitted (Unix milliseconds).
    pub submitted_ms: u64,
    /// When it must have ended (Unix milliseconds); `None` for a run submitted before
    /// runs had deadlines.
    pub deadline_ms: Option<u64>,
    /// Its outcome, once it has one.
    pub result: Option<ExecutionResult>,
}

/// One process's connection to the distributed runtime.
pub(crate) struct Distributed {
    pub(crate) config: RedisConfig,
    pub(crate) keys: Keys,
    /// Signs and checks what this process and its fleet write to Redis for each other.
    pub(crate) seal: Seal,
    /// Most items one batch takes ([`crate::HostConfig::max_batch_items`]).
    pub(super) max_batch_items: usize,
    conn: ConnectionManager,
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    workflows: Mutex<HashMap<String, Arc<Workflow>>>,
    waiters: Arc<Waiters>,
    finish: redis::Script,
    /// Opens a run's record (run by hash in the submission's pipeline).
    open: redis::Script,
    pub(super) join_cas: redis::Script,
    pub(super) batch_open: redis::Script,
    pub(super) batch_done: redis::Script,
    flows: tokio::sync::OnceCell<FlowProducer>,
    /// Set when workflows were registered from code and are not published yet.
    unpublished: std::sync::atomic::AtomicBool,
    /// This process's id among the processes sharing events.
    origin: String,
    /// Subscriptions weir itself holds on this process's event bus (not users').
    pub(super) internal_subscriptions: Arc<std::sync::atomic::AtomicUsize>,
    events: Arc<OnceLock<EventSink>>,
    /// The event stream's reader, started when this process first waits for a run or
    /// subscribes to events (a worker that does neither never reads the stream).
    reader: tokio::sync::OnceCell<tokio::task::JoinHandle<()>>,
}

/// Where events of other processes go (this process's subscribers), as read from the
/// stream: the process they came from, and a batch of them as a JSON array (parsed only if
/// someone listens).
pub(super) type EventSink = Arc<dyn Fn(&str, &str) + Send + Sync>;

impl std::fmt::Debug for Distributed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributed")
            .field("url", &self.config.url)
            .field("prefix", &self.config.prefix)
            .finish_non_exhaustive()
    }
}

impl Drop for Distributed {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.get() {
            reader.abort();
        }
    }
}

impl Distributed {
    /// Connects.
    pub(crate) async fn connect(
        config: RedisConfig,
        max_batch_items: usize,
    ) -> Result<Arc<Self>, Error> {
        let seal = Seal::new(&config.trust)?;
        let conn = connect(&config).await?;
        let keys = Keys::new(&config.prefix);
        let waiters = Arc::new(Waiters::default());
        let origin = uuid::Uuid::now_v7().to_string();
        let events: Arc<OnceLock<EventSink>> = Arc::new(OnceLock::new());
        Ok(Arc::new(Distributed {
            config,
            keys,
            seal,
            max_batch_items,
            conn,
            queues: Mutex::new(HashMap::new()),
            workflows: Mutex::new(HashMap::new()),
            waiters,
            finish: redis::Script::new(include_str!("lua/finish_run.lua")),
            open: redis::Script::new(include_str!("lua/open_run.lua")),
            join_cas: redis::Script::new(include_str!("lua/join_cas.lua")),
            batch_open: redis::Script::new(include_str!("lua/batch_open.lua")),
            batch_done: redis::Script::new(include_str!("lua/batch_done.lua")),
            flows: tokio::sync::OnceCell::new(),
            unpublished: std::sync::atomic::AtomicBool::new(false),
            origin,
            internal_subscriptions: Arc::default(),
            events,
            reader: tokio::sync::OnceCell::new(),
        }))
    }

    /// Whether the event stream's reader has started.
    pub(crate) fn reading(&self) -> bool {
        self.reader.initialized()
    }

    /// Starts reading the event stream from its current end, once.
    pub(crate) async fn ensure_reader(&self) -> Result<(), Error> {
        self.reader
            .get_or_try_init(|| async {
                let mut conn = self.conn();
                let start = stream_end(&mut conn, &self.keys.events())
                    .await
                    .map_err(|e| self.redis_error(e))?;
                let reader = Reader {
                    config: self.config.clone(),
                    keys: self.keys.clone(),
                    seal: self.seal.clone(),
                    records: conn,
                    waiters: self.waiters.clone(),
                    origin: self.origin.clone(),
                    events: self.events.clone(),
                };
                Ok::<_, Error>(tokio::spawn(read_events(reader, start)))
            })
            .await
            .map(drop)
    }

    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Says this process is a live worker, for `ttl`.
    pub(super) async fn heartbeat(&self, ttl: Duration) -> Result<(), Error> {
        let mut conn = self.conn();
        let ms = crate::contract::clock::millis(ttl);
        let _: () = redis::cmd("SET")
            .arg(self.keys.worker(&self.origin))
            .arg(now_ms())
            .arg("PX")
            .arg(ms)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(())
    }

    /// Whether any worker said it was alive lately.
    pub(crate) async fn any_worker(&self) -> Result<bool, Error> {
        let mut conn = self.conn();
        let (_, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(0)
            .arg("MATCH")
            .arg(self.keys.worker("*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(!found.is_empty())
    }

    /// Sends other processes' events to `sink` from now on.
    pub(super) fn set_event_sink(&self, sink: EventSink) {
        let _ = self.events.set(sink);
    }

    /// Shares `events` of this process with the others.
    pub(super) async fn publish_events(
        &self,
        events: &[std::sync::Arc<Event>],
    ) -> Result<(), Error> {
        // As few stream entries as fit in the entry bound: fewer for Redis to keep and for
        // every process to read, none larger than the bound allows.
        let entries = event_entries(events, self.config.stream_entry_bytes)
            .map_err(|e| self.redis_error(e))?;
        let mut pipe = redis::pipe();
        for text in entries {
            pipe.cmd("XADD")
                .arg(self.keys.events())
                .arg("MAXLEN")
                .arg("~")
                .arg(self.config.events_kept)
                .arg("*")
                .arg("type")
                .arg("events")
                .arg("origin")
                .arg(&self.origin)
                .arg("events")
                .arg(text)
                .ignore();
        }
        let mut conn = self.conn();
        let _: () = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(())
    }

    pub(super) fn redis_error(&self, error: impl std::fmt::Display) -> Error {
        unreachable(&self.config, error)
    }

    /// How long records of runs and fan-outs are kept, in seconds.
    pub(super) fn retention_secs(&self) -> i64 {
        i64::try_from(self.config.run_retention.as_secs().max(1)).unwrap_or(i64::MAX)
    }

    /// BullMQ's options for the job `id` of a step: weir decides retries (BullMQ's attempt
    /// ceiling is above any policy's), finished jobs are kept as configured, and a job in a
    /// fan-out's branch is a child of its join (whose wait a failure does not block).
    pub(super) fn step_options(
        &self,
        id: &str,
        priority: Option<u32>,
        join: Option<&str>,
    ) -> JobOptions {
        let mut options = JobOptions::new()
            .attempts(JOB_ATTEMPTS)
            .backoff(BackoffStrategy::Custom(BACKOFF.to_string()))
            .remove_on_complete(keep(self.config.keep_completed))
            .remove_on_fail(keep(self.config.keep_failed));
        options.job_id = Some(id.to_string());
        options.priority = priority;
        if let Some(join) = join {
            options.parent = Some(ParentOptions {
                queue: JOIN_QUEUE.to_string(),
                id: join.to_string(),
                wait_children: None,
            });
            options.ignore_dependency_on_failure = Some(true);
        }
        options
    }

    /// BullMQ's options for the join job `id` (a child of `parent` when the fan-out is in
    /// another's branch). Joins only fail when Redis does: they retry every half second.
    pub(super) fn join_options(&self, id: &str, parent: Option<&str>) -> JobOptions {
        let mut options = self.step_options(id, None, parent);
        options.backoff = Some(BackoffStrategy::Fixed(500));
        options
    }

    /// Adds a planned job (or flow) to Redis.
    pub(super) async fn add(&self, plan: Plan) -> Result<(), Error> {
        match plan {
            Plan::Step(job) => self.enqueue(&job).await,
            Plan::Flow(flow) => {
                let producer = self
                    .flows
                    .get_or_try_init(|| async {
                        let options = FlowProducerOptions {
                            connection: bullmq_connection(&self.config),
                            prefix: Some(self.config.prefix.clone()),
                        };
                        FlowProducer::with_options(options).await
                    })
                    .await
                    .map_err(|e| self.redis_error(e))?;
                let mut session_jobs = Vec::new();
                collect_session_jobs(&flow, &mut session_jobs);
                producer.add(*flow).await.map_err(|e| self.redis_error(e))?;
                for (scope, queue, id) in session_jobs {
                    self.index_session_job(&scope, &queue, &id).await?;
                }
                Ok(())
            }
        }
    }

    /// BullMQ's options for weir's queues.
    pub(crate) fn queue_options(&self) -> QueueOptions {
        QueueOptions::new()
            .connection(bullmq_connection(&self.config))
            .prefix(self.config.prefix.clone())
            .skip_version_check()
    }

    /// The queue of processor `name` (opened once per process).
    pub(crate) async fn queue(&self, name: &str) -> Result<Arc<Queue>, Error> {
        if let Some(queue) = lock_map(&self.queues).get(name) {
            return Ok(queue.clone());
        }
        let queue = Queue::with_options(name, self.queue_options())
            .await
            .map_err(|e| self.redis_error(e))?;
        let queue = Arc::new(queue);
        lock_map(&self.queues)
            .entry(name.to_string())
            .or_insert(queue.clone());
        Ok(queue)
    }

    /// Adds a step's job to its processor's queue. Adding a job whose id exists already
    /// does nothing, which makes re-running a step harmless.
    pub(crate) async fn enqueue(&self, job: &StepJob) -> Result<(), Error> {
        let queue = self.queue(&job.processor).await?;
        let mut options = self.step_options(
            &job.job_id(),
            Some(job.scope.queue_priority()),
            enclosing_join(&job.frames),
        );
        options.delay = job.delay_ms;
        queue
            .add(&job.processor, job)
            .options(options)
            .await
            .map_err(|e| self.redis_error(e))?;
        self.index_session_job(&job.scope, &job.processor, &job.job_id())
            .await
    }

    /// What ran (digest and declared version) when `name` runs in a run with `bindings`.
    pub(super) async fn identity(
        &self,
        bindings: &BTreeMap<String, Binding>,
        name: &str,
    ) -> Result<(Option<String>, Option<String>), Error> {
        match bindings.get(name) {
            Some(Binding::Processor { digest }) => {
                let mut conn = self.conn();
                let version = content::version_of(&mut conn, &self.keys, digest)
                    .await
                    .map_err(|e| self.redis_error(e))?;
                Ok((Some(digest.clone()), version))
            }
            Some(Binding::Workflow { digest }) => Ok((Some(digest.clone()), None)),
            None => Ok((None, None)),
        }
    }

    /// The workflow published under `digest` (fetched once per process): `Err` with the
    /// reason when it is missing or does not match its digest.
    pub(crate) async fn workflow(
        &self,
        digest: &str,
    ) -> Result<Result<Arc<Workflow>, String>, Error> {
        if let Some(workflow) = lock_map(&self.workflows).get(digest) {
            return Ok(Ok(workflow.clone()));
        }
        let mut conn = self.conn();
        let fetched = content::fetch_workflow(&mut conn, &self.keys, digest)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(fetched.map(|workflow| {
            let workflow = Arc::new(workflow);
            lock_map(&self.workflows).insert(digest.to_string(), workflow.clone());
            workflow
        }))
    }

    /// Writes the run's outcome (only the first write counts) and announces it.
    pub(crate) async fn finish_run(
        &self,
        run: &str,
        result: &ExecutionResult,
    ) -> Result<(), Error> {
        let stored = Stored {
            result: result.clone(),
            items: result.items.clone(),
        };
        let document = serde_json::to_string(&stored).unwrap_or_default();
        let mac = self
            .seal
            .sign_with(Kind::Outcome, &outcome_authority(run), Some(&document));
        let status = if result.ok { "ok" } else { "failed" };
        let mut conn = self.conn();
        let _: i64 = self
            .finish
            .key(self.keys.run(run))
            .key(self.keys.events())
            .key(self.keys.going(&result.execution.tenant))
            .arg(document)
            .arg(status)
            .arg(self.retention_secs())
            .arg(self.config.events_kept)
            .arg(run)
            .arg(now_ms())
            .arg(self.config.stream_entry_bytes)
            .arg(mac)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(())
    }

    /// Publishes every plugin and workflow of `catalog`, so that other processes can run
    /// exactly them. A plugin whose file changed since it loaded is skipped (the reload
    /// will publish the new bytes).
    pub(crate) async fn publish(&self, catalog: &Catalog) -> Result<(), Error> {
        let mut conn = self.conn();
        for plugin in catalog.plugins.values() {
            let bytes = match tokio::fs::read(plugin.path()).await {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::warn!(plugin = plugin.name(), %error, "cannot publish the plugin");
                    continue;
                }
            };
            if hex::encode(Sha256::digest(&bytes)) != plugin.digest() {
                // Publish only what was validated; the reload will publish the new bytes.
                tracing::warn!(
                    plugin = plugin.name(),
                    "the plugin's file changed since it loaded; not published"
                );
                continue;
            }
            let (name, version) = (plugin.name(), plugin.version());
            content::publish_plugin(&mut conn, &self.keys, &self.seal, name, version, &bytes)
                .await
                .map_err(|e| self.redis_error(e))?;
        }
        for workflow in catalog.workflows.values() {
            content::publish_workflow(&mut conn, &self.keys, &self.seal, workflow)
                .await
                .map_err(|e| self.redis_error(e))?;
            lock_map(&self.workflows).insert(workflow.digest().to_string(), workflow.clone());
        }
        Ok(())
    }

    /// Notes that workflow definitions changed here (published before the next submission).
    pub(crate) fn definitions_changed(&self) {
        self.unpublished
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Publishes the workflows of `registry` if some were registered since the last time.
    pub(crate) async fn publish_if_changed(
        &self,
        registry: &crate::execution::registry::Registry,
    ) -> Result<(), Error> {
        use std::sync::atomic::Ordering;
        if !self.unpublished.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let catalog = registry.catalog();
        let mut conn = self.conn();
        for workflow in catalog.workflows.values() {
            if let Err(error) =
                content::publish_workflow(&mut conn, &self.keys, &self.seal, workflow).await
            {
                self.unpublished.store(true, Ordering::Release);
                return Err(self.redis_error(error));
            }
            lock_map(&self.workflows).insert(workflow.digest().to_string(), workflow.clone());
        }
        Ok(())
    }

    /// Publishes every plugin and workflow that (re)loads in `shared` from now on, for as
    /// long as both live.
    pub(crate) fn publish_reloads(
        self: &Arc<Self>,
        shared: &Arc<crate::execution::context::Context>,
    ) {
        use crate::sandbox::events::{EventKind, Notice};
        let mut events = shared.events().subscribe();
        self.internal_subscriptions
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let weak_shared = Arc::downgrade(shared);
        let weak_self = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(notice) = events.recv().await {
                let (Some(dist), Some(shared)) = (weak_self.upgrade(), weak_shared.upgrade())
                else {
                    return;
                };
                let Notice::Event(event) = notice else {
                    continue;
                };
                let plugin = match event.event {
                    EventKind::PluginLoaded | EventKind::PluginReloaded => event
                        .processor
                        .as_deref()
                        .and_then(|name| shared.registry().get(name)),
                    EventKind::WorkflowsReloaded => {
                        dist.definitions_changed();
                        None
                    }
                    _ => continue,
                };
                let outcome = match plugin {
                    Some(plugin) => match tokio::fs::read(plugin.path()).await {
                        Ok(bytes) => dist
                            .push_plugin(plugin.name(), plugin.version(), &bytes)
                            .await
                            .map(drop),
                        Err(error) => Err(dist.redis_error(format!(
                            "cannot read {}: {error}",
                            plugin.path().display()
                        ))),
                    },
                    None => dist.publish_if_changed(shared.registry()).await,
                };
                match outcome {
                    Ok(()) => tracing::info!(
                        target: "weir::reload",
                        name = event.processor.as_deref().unwrap_or("workflows"),
                        "published to Redis"
                    ),
                    Err(error) => {
                        tracing::warn!(%error, "cannot publish a reloaded plugin or workflow");
                    }
                }
            }
        });
    }

    /// Publishes one component as processor `name`; returns its digest.
    pub(crate) async fn push_plugin(
        &self,
        name: &str,
        version: &str,
        bytes: &[u8],
    ) -> Result<String, Error> {
        let mut conn = self.conn();
        content::publish_plugin(&mut conn, &self.keys, &self.seal, name, version, bytes)
            .await
            .map_err(|e| self.redis_error(e))
    }

    /// Submits a run of `request`; returns its id, or the result of a run that could not
    /// start (an unknown name).
    pub(crate) async fn submit(
        &self,
        mut request: ExecutionRequest,
    ) -> Result<Result<String, ExecutionResult>, Error> {
        // One id for every try: a try that failed half-way is completed by the next.
        let run = request
            .id
            .get_or_insert_with(crate::contract::clock::new_execution_id)
            .clone();
        check_run_id(&run)?;
        // Marks this submission's record, so a retry recognises it and another is refused.
        let token = uuid::Uuid::now_v7().to_string();
        let input = std::mem::take(&mut request.input);
        super::flow::retrying(|| self.submit_once(&request, &run, &token, input.clone())).await
    }

    async fn submit_once(
        &self,
        request: &ExecutionRequest,
        run: &str,
        token: &str,
        input: serde_json::Value,
    ) -> Result<Result<String, ExecutionResult>, Error> {
        let run = run.to_string();
        let tenant = request.tenant.clone().unwrap_or_else(|| "default".into());
        let key = self.keys.run(&run);
        let now = now_ms();
        let deadline_ms = now
            .saturating_add(crate::contract::clock::millis(
                request.delay.unwrap_or_default(),
            ))
            .saturating_add(crate::contract::clock::millis(
                request.deadline.unwrap_or(self.config.run_deadline),
            ));
        // One round trip (three if Redis forgot the script): what the name means now, and
        // the run's record opened.
        let mut record = vec![
            ("target", request.processor.clone()),
            ("tenant", tenant.clone()),
            ("submitted", now.to_string()),
            ("status", "running".to_string()),
            ("deadline", deadline_ms.to_string()),
        ];
        if let Some(session) = &request.session {
            record.push(("session", session.clone()));
        }
        if self.seal.keyed() {
            let opened = RunStatus {
                id: run.clone(),
                target: request.processor.clone(),
                tenant: tenant.clone(),
                session: request.session.clone(),
                submitted_ms: now,
                deadline_ms: Some(deadline_ms),
                result: None,
            };
            record.push((
                "mac",
                self.seal.sign(Kind::Record, &record_authority(&opened)),
            ));
        }
        // Unfinished runs are kept long (a finished one for the run retention).
        let unfinished = self.retention_secs().max(7 * 24 * 3600);
        let mut conn = self.conn();
        let mut pipe = redis::pipe();
        content::add_lookup(&mut pipe, &self.keys, &[request.processor.as_str()]);
        let going = self.keys.going(&tenant);
        let open = pipe
            .cmd("EVALSHA")
            .arg(self.open.get_hash())
            .arg(2)
            .arg(&key)
            .arg(&going);
        open.arg(token).arg(unfinished).arg(GOING_KEPT_MS);
        for (field, value) in &record {
            open.arg(*field).arg(value);
        }
        type Opened = (Vec<Option<String>>, Vec<Option<String>>, i64);
        let opened: redis::RedisResult<Opened> = match pipe.query_async(&mut conn).await {
            // Redis forgot the script (it restarted): load it and send the pipeline again
            // (nothing in it was written: the lookups only read).
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                match self.open.load_async(&mut conn).await {
                    Ok(_) => pipe.query_async(&mut conn).await,
                    Err(error) => Err(error),
                }
            }
            other => other,
        };
        let (plugins, workflows, owned) = opened.map_err(|e| self.redis_error(e))?;
        if owned < 1 {
            return Err(Error::Config(format!(
                "a run with the id `{run}` exists already: give each execution its own id"
            )));
        }
        let first = content::bindings_of(
            &self.seal,
            &[request.processor.as_str()],
            plugins,
            workflows,
        )
        .pop()
        .flatten();
        let bindings = self.bindings(&request.processor, first).await?;
        if !bindings.contains_key(&request.processor) {
            // Nothing runs: the record goes, and the run no longer counts as going.
            let _: redis::RedisResult<()> = redis::pipe()
                .del(&key)
                .ignore()
                .decr(&going, 1)
                .ignore()
                .query_async(&mut conn)
                .await;
            let info = ExecutionInfo::new(
                Some(run),
                request.processor.clone(),
                tenant,
                request.session.clone(),
            );
            let error = ExecutionError::host(
                ErrorKind::NotFound,
                codes::PROCESSOR_NOT_FOUND,
                format!(
                    "no processor or workflow named `{}` is published to Redis (start a worker \
                     that has its plugin, or `weir plugins push` it)",
                    request.processor
                ),
            );
            return Ok(Err(failed(input, error, info)));
        }
        // A request's timeout lowers each attempt's limit (in `limits`), as locally; the
        // run's deadline bounds them all.
        let deadline_ms = Some(deadline_ms);
        let turn = u32::try_from(owned - 1).unwrap_or(u32::MAX);
        let scope = WireScope {
            tenant: tenant.clone(),
            session: request.session.clone(),
            deadline_ms,
            max_attempts: request.max_attempts,
            priority: request.priority,
            limits: request.limits.into(),
            parent: None,
            submitted_ms: now,
            turn,
        };
        let cursor = Cursor {
            run: run.clone(),
            scope,
            bindings,
            frames: Vec::new(),
        };
        let next = Next::Enter {
            name: request.processor.clone(),
            state: input,
            path: "0".into(),
        };
        // The first job waits out the request's delay in BullMQ's delayed set.
        let mut cursor = cursor;
        match self.settle(&mut cursor, next).await? {
            Settled::Plan(plan) => self.add(delayed(plan, request.delay)).await?,
            Settled::Run(result) => self.finish_run(&cursor.run, &result).await?,
            // A run's bottom frame is never a branch's.
            Settled::Branch { .. } => {}
        }
        Ok(Ok(run))
    }

    /// What `target` and everything it may reach mean now.
    /// `target` (which means `first` now) and everything it may reach, resolved.
    async fn bindings(
        &self,
        target: &str,
        first: Option<Binding>,
    ) -> Result<BTreeMap<String, Binding>, Error> {
        let mut bindings = BTreeMap::new();
        let mut pending: VecDeque<String> = VecDeque::new();
        let mut found = vec![first];
        let mut names = vec![target.to_string()];
        let mut conn = self.conn();
        loop {
            for (name, binding) in names.iter().zip(found) {
                let Some(binding) = binding else { continue };
                if let Binding::Workflow { digest } = &binding
                    && let Ok(workflow) = self.workflow(digest).await?
                {
                    for (_, reference) in workflow.references() {
                        if !bindings.contains_key(reference) && reference != name {
                            pending.push_back(reference.to_string());
                        }
                    }
                }
                bindings.insert(name.clone(), binding);
            }
            pending.retain(|n| !bindings.contains_key(n));
            if pending.is_empty() {
                return Ok(bindings);
            }
            names = pending.drain(..).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            found = content::lookup(&mut conn, &self.keys, &self.seal, &refs)
                .await
                .map_err(|e| self.redis_error(e))?;
        }
    }

    /// Starts listening for the outcome of `run` (before submitting it: then no outcome
    /// can come before the listener).
    pub(crate) async fn expect(
        &self,
        run: &str,
    ) -> Result<oneshot::Receiver<ExecutionResult>, Error> {
        self.ensure_reader().await?;
        Ok(self.waiters.register(run))
    }

    /// Stops listening for `run` (it was refused).
    pub(crate) fn unexpect(&self, run: &str) {
        self.waiters.forget(run);
    }

    /// The outcome of `run` that a listener from [`Distributed::expect`] receives; once the
    /// run's deadline (and the grace) has passed without one, its `run-lost` outcome.
    pub(crate) async fn outcome(
        &self,
        run: &str,
        mut receiver: oneshot::Receiver<ExecutionResult>,
    ) -> Result<ExecutionResult, Error> {
        // Until the record says when the run must end, look again after the longest wait
        // a run may have without a deadline of its own.
        let mut check_at = tokio::time::Instant::now() + self.config.lost_grace;
        loop {
            tokio::select! {
                delivered = &mut receiver => {
                    return delivered.map_err(|_| Error::Redis {
                        url: self.config.url.clone(),
                        reason: "the event reader stopped".into(),
                    });
                }
                _ = tokio::time::sleep_until(check_at) => {}
            }
            match self.settled_status(run).await? {
                Some(RunStatus {
                    result: Some(result),
                    ..
                }) => {
                    self.waiters.deliver(run, result.clone());
                    return Ok(result);
                }
                Some(status) => {
                    let due = status.deadline_ms.map_or(u64::MAX, |d| {
                        d.saturating_add(crate::contract::clock::millis(self.config.lost_grace))
                    });
                    let wait = due.saturating_sub(now_ms()).max(100);
                    check_at = tokio::time::Instant::now() + Duration::from_millis(wait);
                }
                // The record is gone (deleted, or expired): nothing will say how it ended.
                None => {
                    let result = self.lost(run, None);
                    self.waiters.deliver(run, result.clone());
                    return Ok(result);
                }
            }
        }
    }

    /// The run `id` as Redis knows it, given its `run-lost` outcome if its deadline and
    /// the grace have passed without one (the first outcome recorded wins, so a late real
    /// one is ignored, and a real one recorded first is kept).
    pub(crate) async fn settled_status(&self, id: &str) -> Result<Option<RunStatus>, Error> {
        let Some(status) = self.status(id).await? else {
            return Ok(None);
        };
        let lost = status.result.is_none()
            && status.deadline_ms.is_some_and(|d| {
                now_ms() > d.saturating_add(crate::contract::clock::millis(self.config.lost_grace))
            });
        if !lost {
            return Ok(Some(status));
        }
        self.finish_run(id, &self.lost(id, Some(&status))).await?;
        self.status(id).await
    }

    /// The outcome of run `id`, which did not end by its deadline.
    fn lost(&self, id: &str, status: Option<&RunStatus>) -> ExecutionResult {
        let (target, tenant, session) = status.map_or(("", "default", None), |s| {
            (s.target.as_str(), s.tenant.as_str(), s.session.clone())
        });
        let error = ExecutionError::host(
            ErrorKind::Timeout,
            codes::RUN_LOST,
            format!(
                "run `{id}` did not end by its deadline: a worker or Redis lost its outcome, or \
                 it ran too long; it may be submitted again"
            ),
        )
        .retryable(true);
        let info = ExecutionInfo::new(Some(id.to_string()), target, tenant, session);
        crate::execution::executor::failed(serde_json::Value::Null, error, info)
    }

    /// Waits for the outcome of `run`.
    pub(crate) async fn wait(&self, run: &str) -> Result<ExecutionResult, Error> {
        self.ensure_reader().await?;
        let receiver = self.waiters.register(run);
        // The outcome may have been written before we started listening.
        match self.status(run).await? {
            None => {
                self.waiters.forget(run);
                return Err(Error::Config(format!(
                    "there is no run `{run}` (never submitted, or its record expired)"
                )));
            }
            Some(RunStatus {
                result: Some(result),
                ..
            }) => {
                self.waiters.deliver(run, result.clone());
                return Ok(result);
            }
            Some(_) => {}
        }
        self.outcome(run, receiver).await
    }

    /// The run `id` as Redis knows it (`None` if it never existed or has expired).
    pub(crate) async fn status(&self, id: &str) -> Result<Option<RunStatus>, Error> {
        let key = self.keys.run(id);
        let fields: HashMap<String, String> = super::flow::retrying(|| async {
            let mut conn = self.conn();
            conn.hgetall(&key).await.map_err(|e| self.redis_error(e))
        })
        .await?;
        Ok(run_status(&self.seal, id, fields))
    }
}

/// A run's record as read from Redis, once its signatures are checked: `None` when there
/// is none, or when this fleet did not write it; an outcome this fleet did not write is
/// left out (the run is still going, as far as anyone here knows).
fn run_status(seal: &Seal, id: &str, mut fields: HashMap<String, String>) -> Option<RunStatus> {
    let status = RunStatus {
        id: id.to_string(),
        target: fields.remove("target")?,
        tenant: fields.remove("tenant").unwrap_or_else(|| "default".into()),
        session: fields.remove("session"),
        submitted_ms: fields
            .get("submitted")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        deadline_ms: fields.get("deadline").and_then(|s| s.parse().ok()),
        result: None,
    };
    let mac = fields.get("mac").map_or("", String::as_str);
    if let Err(refused) = seal.check(Kind::Record, &record_authority(&status), mac) {
        tracing::warn!(run = %id, "ignored the run's record in Redis: {refused}");
        return None;
    }
    let result = fields.get("result").and_then(|text| {
        let mac = fields.get("resultMac").map_or("", String::as_str);
        verified_document(seal, id, text, mac)
    });
    Some(RunStatus { result, ..status })
}

/// What a run's record says that decides authority, as signed: what runs, for whom, from
/// when, until when.
fn record_authority(status: &RunStatus) -> Fields {
    let mut fields = Fields::new();
    fields
        .str(&status.id)
        .str(&status.target)
        .str(&status.tenant)
        .opt_str(status.session.as_deref())
        .u64(status.submitted_ms)
        .opt_u64(status.deadline_ms);
    fields
}

/// A run's outcome, as signed: the run's id, then (as the MAC's tail, uncopied) the
/// document's exact bytes.
fn outcome_authority(run: &str) -> Fields {
    let mut fields = Fields::new();
    fields.str(run);
    fields
}

/// The outcome `text` of `run`, once its signature `mac` is checked.
fn verified_document(seal: &Seal, run: &str, text: &str, mac: &str) -> Option<ExecutionResult> {
    if let Err(refused) = seal.check_with(Kind::Outcome, &outcome_authority(run), Some(text), mac) {
        tracing::warn!(run = %run, "ignored an outcome in Redis: {refused}");
        return None;
    }
    parse_document(text)
}

/// A run's outcome as stored: the whole result, with a batch's items.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    result: ExecutionResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    items: Option<Vec<ExecutionResult>>,
}

/// A stored outcome read back.
fn parse_document(text: &str) -> Option<ExecutionResult> {
    let stored: Stored = serde_json::from_str(text).ok()?;
    let mut result = stored.result;
    result.items = stored.items;
    Some(result)
}

fn keep(retention: Retention) -> RemoveOnFinish {
    RemoveOnFinish::Options(KeepJobs {
        age: Some(retention.age.as_secs().max(1)),
        count: Some(retention.count),
        limit: None,
    })
}

/// Locks `mutex`, whose data stays consistent even if a holder panicked.
pub(super) fn lock_map<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Callers waiting for runs' outcomes.
#[derive(Default)]
struct Waiters {
    pending: Mutex<HashMap<String, Vec<oneshot::Sender<ExecutionResult>>>>,
}

impl Waiters {
    fn register(&self, run: &str) -> oneshot::Receiver<ExecutionResult> {
        let (sender, receiver) = oneshot::channel();
        lock_map(&self.pending)
            .entry(run.to_string())
            .or_default()
            .push(sender);
        receiver
    }

    /// Drops the senders of callers that stopped waiting (their futures dropped). Done
    /// now and then by the reader, not on every submission.
    fn prune(&self) {
        lock_map(&self.pending).retain(|_, senders| {
            senders.retain(|s| !s.is_closed());
            !senders.is_empty()
        });
    }

    /// Drops the senders of `run` nobody waits on any more.
    fn forget(&self, run: &str) {
        let mut pending = lock_map(&self.pending);
        if let Some(senders) = pending.get_mut(run) {
            senders.retain(|s| !s.is_closed());
        }
    }

    /// Hands `result` to everyone waiting for `run`.
    fn deliver(&self, run: &str, result: ExecutionResult) {
        let senders = lock_map(&self.pending).remove(run).unwrap_or_default();
        for sender in senders {
            let _ = sender.send(result.clone());
        }
    }

    fn runs(&self) -> Vec<String> {
        lock_map(&self.pending).keys().cloned().collect()
    }

    fn awaits(&self, run: &str) -> bool {
        lock_map(&self.pending).contains_key(run)
    }
}

/// `plan` made to wait `delay` before it can run.
fn delayed(plan: Plan, delay: Option<std::time::Duration>) -> Plan {
    let Some(delay) = delay else { return plan };
    let ms = crate::contract::clock::millis(delay);
    match plan {
        Plan::Step(mut job) => {
            job.delay_ms = Some(ms);
            Plan::Step(job)
        }
        Plan::Flow(mut flow) => {
            delay_flow(&mut flow, ms);
            Plan::Flow(flow)
        }
    }
}

/// Delays every job of a flow (its first branches would otherwise start at once).
fn delay_flow(flow: &mut FlowJob, ms: u64) {
    if let Some(options) = &mut flow.opts {
        options.delay = Some(ms);
    }
    for child in flow.children.iter_mut().flatten() {
        delay_flow(child, ms);
    }
}

/// Checks a caller-chosen run id: it names BullMQ jobs and Redis keys.
fn check_run_id(id: &str) -> Result<(), Error> {
    let fine = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.chars().all(|c| c.is_ascii_digit());
    if fine {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "the execution id `{id}` cannot name a run: use up to 128 letters, digits, `-`, \
             `_` and `.`, not only digits"
        )))
    }
}

/// The steps of a session in a flow: (scope, queue, job id).
fn collect_session_jobs(flow: &FlowJob, into: &mut Vec<(WireScope, String, String)>) {
    if let Ok(step) = serde_json::from_value::<StepJob>(flow.data.clone())
        && step.scope.session.is_some()
    {
        let id = step.job_id();
        into.push((step.scope, flow.queue_name.clone(), id));
    }
    for child in flow.children.iter().flatten() {
        collect_session_jobs(child, into);
    }
}

/// The id of the stream's newest entry (`0-0` when it is empty or absent).
async fn stream_end(conn: &mut ConnectionManager, key: &str) -> redis::RedisResult<String> {
    let newest: redis::streams::StreamRangeReply = conn.xrevrange_count(key, "+", "-", 1).await?;
    Ok(newest
        .ids
        .first()
        .map_or_else(|| "0-0".to_string(), |entry| entry.id.clone()))
}

/// Reads the event stream for as long as the process lives, handing run outcomes to their
/// waiters. After losing Redis it reconnects, resumes where it stopped, and reads the
/// records of the runs still awaited (in case the stream itself was lost).
/// What the event stream's reader needs.
struct Reader {
    config: RedisConfig,
    keys: Keys,
    seal: Seal,
    records: ConnectionManager,
    waiters: Arc<Waiters>,
    origin: String,
    events: Arc<OnceLock<EventSink>>,
}

async fn read_events(reader: Reader, mut last: String) {
    let Reader {
        config,
        keys,
        seal,
        mut records,
        waiters,
        origin,
        events,
    } = reader;
    let stream = keys.events();
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut conn = match blocking_connection(&config).await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::debug!(%error, "event reader cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // Catch up on what may have been missed while disconnected.
        catch_up(&mut records, &keys, &seal, &waiters).await;
        backoff = Duration::from_millis(50);
        let options = redis::streams::StreamReadOptions::default()
            .block(5_000)
            .count(512);
        let mut checked = std::time::Instant::now();
        loop {
            // Now and then, read the records of the runs still awaited: an outcome whose
            // stream entry was trimmed before this reader got to it is still found.
            if checked.elapsed() >= Duration::from_secs(5) {
                checked = std::time::Instant::now();
                catch_up(&mut records, &keys, &seal, &waiters).await;
            }
            let reply: redis::RedisResult<Option<redis::streams::StreamReadReply>> =
                conn.xread_options(&[&stream], &[&last], &options).await;
            let reply = match reply {
                Ok(reply) => reply,
                Err(error) => {
                    tracing::debug!(%error, "event reader lost Redis; reconnecting");
                    break;
                }
            };
            for key in reply.map(|r| r.keys).unwrap_or_default() {
                for entry in key.ids {
                    last = entry.id.clone();
                    let kind: Option<String> = entry.get("type");
                    if kind.as_deref() == Some("events") {
                        let from: Option<String> = entry.get("origin");
                        let text: Option<String> = entry.get("events");
                        if let (Some(from), Some(text), Some(sink)) = (from, text, events.get())
                            && from != origin
                        {
                            sink(&from, &text);
                        }
                        continue;
                    }
                    if kind.as_deref() != Some("run") {
                        continue;
                    }
                    // Parsed only for a run someone here waits for. A large result is not
                    // in the announcement: it is read from the run's record.
                    let run: Option<String> = entry.get("run");
                    if let Some(run) = run
                        && waiters.awaits(&run)
                    {
                        match entry.get::<String>("result") {
                            Some(text) => {
                                let mac: String = entry.get("mac").unwrap_or_default();
                                if let Some(result) = verified_document(&seal, &run, &text, &mac) {
                                    waiters.deliver(&run, result);
                                }
                            }
                            None => {
                                deliver_recorded(&mut records, &keys, &seal, &waiters, &run).await;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Hands the outcomes of awaited runs that are recorded to their waiters.
async fn catch_up(records: &mut ConnectionManager, keys: &Keys, seal: &Seal, waiters: &Waiters) {
    waiters.prune();
    for run in waiters.runs() {
        deliver_recorded(records, keys, seal, waiters, &run).await;
    }
}

/// Hands `run`'s recorded outcome, if there is one, to its waiters.
async fn deliver_recorded(
    records: &mut ConnectionManager,
    keys: &Keys,
    seal: &Seal,
    waiters: &Waiters,
    run: &str,
) {
    let fields: redis::RedisResult<HashMap<String, String>> = records.hgetall(keys.run(run)).await;
    if let Some(result) = fields.ok().and_then(|f| run_status(seal, run, f)?.result) {
        waiters.deliver(run, result);
    }
}

/// `events` as the JSON arrays of the event stream's entries: as few as keep each under
/// `max_bytes` (an event larger than that alone in its entry).
fn event_entries(
    events: &[std::sync::Arc<Event>],
    max_bytes: usize,
) -> Result<Vec<String>, serde_json::Error> {
    let mut entries = Vec::new();
    let mut entry = String::from("[");
    for event in events {
        let text = serde_json::to_string(event.as_ref())?;
        // `[`, `]` and a comma around it.
        if entry.len() > 1 && entry.len() + text.len() + 2 > max_bytes {
            entry.push(']');
            entries.push(std::mem::replace(&mut entry, String::from("[")));
        }
        if entry.len() > 1 {
            entry.push(',');
        }
        entry.push_str(&text);
    }
    if entry.len() > 1 {
        entry.push(']');
        entries.push(entry);
    }
    Ok(entries)
}

/// A connection of its own for blocking reads (no response timeout).
async fn blocking_connection(
    config: &RedisConfig,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(config.url.as_str())?;
    let options = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(None);
    client
        .get_multiplexed_async_connection_with_config(&options)
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sandbox::events::EventKind;

    fn custom(bytes: usize) -> Arc<Event> {
        let mut event = Event::new(EventKind::Custom, "t", None);
        event.data = Some(serde_json::Value::String("d".repeat(bytes)));
        Arc::new(event)
    }

    #[test]
    fn events_are_split_into_stream_entries_under_the_bound() {
        let events: Vec<Arc<Event>> = (0..100).map(|_| custom(1000)).collect();
        let entries = event_entries(&events, 16 << 10).expect("serialises");
        assert!(entries.len() > 1, "{}", entries.len());
        let mut read = 0;
        for entry in &entries {
            assert!(entry.len() <= 16 << 10, "{}", entry.len());
            let batch: Vec<Event> = serde_json::from_str(entry).expect("a JSON array");
            read += batch.len();
        }
        assert_eq!(read, 100, "every event is in an entry, once");
        // An event larger than the bound goes alone; none is empty.
        let entries =
            event_entries(&[custom(10), custom(40_000), custom(10)], 16 << 10).expect("serialises");
        assert_eq!(entries.len(), 3);
        assert!(event_entries(&[], 16 << 10).expect("serialises").is_empty());
    }
}
