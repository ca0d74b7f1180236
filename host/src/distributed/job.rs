//! One job on a worker: read it (weir's envelope, checked against the fleet's seal, or a
//! foreign job's data), run its step in a fresh sandbox with the exact code it names, decide
//! a retry from the processor's policy (the wait goes to BullMQ through the worker's backoff
//! strategy), and carry its run on. A job whose earlier start never ended (its worker
//! died) fails instead of running again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bullmq::Job;
use serde::Deserialize;
use serde_json::Value;

use super::advance::Next;
use super::control::joins_of;
use super::fanout::JOIN_QUEUE;
use super::fetch::Unavailable;
use super::handle::lock_map;
use super::schedules::SCHEDULE_QUEUE;
use super::trust::{Kind, Refused};
use super::wire::DELAY_QUEUE;
use super::wire::{FORMAT, JoinJob, StepJob, instant_of};
use super::worker::{Active, Inner, REDIS_RETRY_MS, Running};
use crate::contract::cancel::{CancelHandle, CancelReason};
use crate::contract::error::{Error, ErrorKind, ExecutionError, codes};
use crate::contract::result::ExecutionResult;
use crate::execution::compose::rules::{delay_past_deadline, delay_result};
use crate::execution::executor::{
    Pinned, ProgressSink, Scope, cancelled_unstarted, execute_pinned, execution_event, failed,
};
use crate::sandbox::events::EventKind;

impl Inner {
    /// Runs one job. Whatever happens inside, the job ends (a panic in the host is caught
    /// and reported as the step's failure, never left `active`).
    pub(super) async fn handle(
        self: Arc<Self>,
        queue: String,
        job: Job,
    ) -> Result<Value, bullmq::Error> {
        let attempt = job.attempts_made().saturating_add(1);
        // Starts of this job that never ended, before this one: its worker died running it,
        // or left and handed it back.
        let unfinished = job
            .attempts_started()
            .saturating_sub(job.attempts_made())
            .saturating_sub(1);
        let data = job.data();
        if queue == JOIN_QUEUE {
            return self.handle_join(&job).await;
        }
        if queue == SCHEDULE_QUEUE {
            return self.handle_schedule(&job).await;
        }
        let step = match read_job(data) {
            JobData::Step(step) => {
                // Job data is input, never authority: who a step runs for and which code it
                // runs count only when this fleet signed them.
                if let Err(refused) = self
                    .dist
                    .seal
                    .check(Kind::Step, &step.authority(), &step.mac)
                {
                    return Err(self.refuse(&queue, &job, refused));
                }
                step
            }
            JobData::Refused(reason) => return Err(bullmq::Error::Unrecoverable(reason)),
            JobData::Foreign => {
                if unfinished > 0
                    && let Some(crashed) = self.crashed(&queue, job.id(), unfinished).await?
                {
                    return Err(bullmq::Error::Unrecoverable(crashed));
                }
                let input = data.clone();
                let (progress, forwarder) = forward_progress(job);
                let outcome = self.handle_foreign(queue, input, attempt, progress).await;
                forwarder.finish().await;
                return outcome;
            }
        };
        if queue == DELAY_QUEUE {
            return self.handle_delay(&queue, &job, &step, attempt).await;
        }
        if unfinished > 0
            && let Some(crashed) = self.crashed(&queue, job.id(), unfinished).await?
        {
            let error = ExecutionError::host(ErrorKind::Execution, codes::WORKER_LOST, crashed);
            let started = job.attempts_started().saturating_sub(1);
            let result = failed(step.state.clone(), error, step.info(started));
            self.carry_on(&step, &result).await?;
            return Err(bullmq::Error::Unrecoverable(message_of(&result)));
        }
        let (progress, forwarder) = forward_progress(job);
        // Context with the task, so a panic in it still has the step to report.
        let step: Arc<StepJob> = Arc::from(step);
        let inner = self.clone();
        let running = step.clone();
        let task = tokio::spawn(async move { inner.run_step(&running, attempt, progress).await });
        let joined = task.await;
        forwarder.finish().await;
        match joined {
            Ok(outcome) => outcome,
            Err(panic) => {
                let error = ExecutionError::host(
                    ErrorKind::Execution,
                    codes::TRAP,
                    format!("the worker failed while running this step: {panic}"),
                );
                let info = step.info(attempt);
                let result = failed(step.state.clone(), error, info);
                self.carry_on(&step, &result).await?;
                Err(bullmq::Error::Unrecoverable(message_of(&result)))
            }
        }
    }

    /// A chain's delay step whose wait is over (BullMQ held its job in the delayed set): its
    /// state goes on to the next step, unless its run was cancelled or its deadline passed
    /// meanwhile. Runs no sandbox; running it twice enqueues the same next job twice, which
    /// adds nothing.
    async fn handle_delay(
        self: Arc<Self>,
        queue: &str,
        job: &Job,
        step: &StepJob,
        attempt: u32,
    ) -> Result<Value, bullmq::Error> {
        if crate::contract::workflow::delay_of(&step.processor).is_none() {
            let refused = Refused(format!("`{}` is not a delay step", step.processor));
            return Err(self.refuse(queue, job, refused));
        }
        let joins = joins_of(&step.frames);
        let reason = self.cancelled(step, &joins).await?;
        let info = step.info(attempt);
        let result = match reason {
            Some(reason) => cancelled_unstarted(step.state.clone(), reason, info),
            None => {
                let late = step
                    .scope
                    .deadline_ms
                    .is_some_and(|deadline| super::wire::now_ms() > deadline);
                let error = late.then(|| delay_past_deadline(&step.processor));
                delay_result(&step.processor, step.state.clone(), info, error)
            }
        };
        self.carry_on(step, &result).await?;
        if result.ok {
            Ok(document(&result))
        } else {
            Err(bullmq::Error::Unrecoverable(message_of(&result)))
        }
    }

    /// Whether `step` (in the fan-outs `joins`) was cancelled before it started: by what
    /// this worker heard, else by what Redis keeps.
    async fn cancelled(
        &self,
        step: &StepJob,
        joins: &[String],
    ) -> Result<Option<CancelReason>, bullmq::Error> {
        match self.cancelled_as_heard(step, joins) {
            Some(reason) => Ok(reason),
            None => self
                .dist
                .cancelled_before_start(step)
                .await
                .map_err(|e| self.retry_later(step, e)),
        }
    }

    /// A fan-out's join: every branch has ended; the workflow's result carries the run on.
    async fn handle_join(self: Arc<Self>, job: &Job) -> Result<Value, bullmq::Error> {
        let join = JoinJob::deserialize(job.data()).map_err(|e| {
            bullmq::Error::Unrecoverable(format!("the join job is not in weir's format: {e}"))
        })?;
        if let Err(refused) = self
            .dist
            .seal
            .check(Kind::Join, &join.authority(), &join.mac)
        {
            return Err(self.refuse(JOIN_QUEUE, job, refused));
        }
        let id = join.join.clone();
        let dist = self.dist.clone();
        match tokio::spawn(async move { dist.run_join(join).await }).await {
            Ok(Ok(())) => Ok(serde_json::json!({ "join": id })),
            Ok(Err(error)) => Err(bullmq::Error::ProcessingError(error.to_string())),
            Err(panic) => Err(bullmq::Error::Unrecoverable(format!(
                "the worker failed while joining: {panic}"
            ))),
        }
    }

    /// One attempt of a weir step, then the run carried on (or a retry asked for).
    async fn run_step(
        self: Arc<Self>,
        step: &StepJob,
        attempt: u32,
        progress: ProgressSink,
    ) -> Result<Value, bullmq::Error> {
        let plugin = match self.plugin(&step.processor, &step.digest).await {
            Ok(plugin) => plugin,
            Err(Unavailable::Redis(error)) => {
                return Err(bullmq::Error::ProcessingError(error.to_string()));
            }
            Err(Unavailable::Missing(why)) => {
                let error =
                    ExecutionError::host(ErrorKind::NotFound, codes::PROCESSOR_NOT_FOUND, why);
                let result = failed(step.state.clone(), error, step.info(attempt));
                self.carry_on(step, &result).await?;
                return Err(bullmq::Error::Unrecoverable(message_of(&result)));
            }
        };
        // Reachable by cancellations first, then checked for earlier ones: a cancellation
        // published in between reaches the step either way.
        let cancel = CancelHandle::new();
        let job_id = step.job_id();
        let joins = joins_of(&step.frames);
        {
            let mut active = lock_map(&self.active);
            active.insert(
                job_id.clone(),
                Active {
                    run: step.run.clone(),
                    joins: joins.clone(),
                    scope: step.scope.clone(),
                    cancel: cancel.clone(),
                },
            );
            self.active_count.send_replace(active.len());
        }
        let _running = Running {
            inner: &self,
            id: job_id,
        };
        let reason = self.cancelled(step, &joins).await?;
        if let Some(reason) = reason.or_else(|| cancel.reason()) {
            let info = step.info(attempt.saturating_sub(1));
            let result = cancelled_unstarted(step.state.clone(), reason, info);
            self.carry_on(step, &result).await?;
            return Err(bullmq::Error::Unrecoverable(message_of(&result)));
        }
        let deadline = step.scope.deadline_ms.map(instant_of);
        let place = self.place_of(step).await;
        let scope = Scope {
            tenant: Arc::from(step.scope.tenant.as_str()),
            session: step.scope.session.as_deref().map(Arc::from),
            depth: 0,
            deadline,
            cancel: cancel.clone(),
            limits: step.scope.limits.into(),
            parent: step.scope.parent.as_deref().map(Arc::from),
            step: place.as_deref().map(Arc::from),
            priority: step.scope.priority,
            max_attempts: step.scope.max_attempts,
            progress: Some(progress),
            admission: None,
        };
        let pinned = Pinned {
            plugin: plugin.clone(),
            attempt,
        };
        let result = execute_pinned(
            &self.shared,
            pinned,
            step.state.clone(),
            scope,
            Some(step.execution.clone()),
        )
        .await;
        if cancel.reason() == Some(CancelReason::Shutdown) {
            // This worker is leaving: the job is not done. Its lock lapses and another
            // worker runs it (not as a crash); its run does not see a cancellation.
            self.hand_back(&step.processor, &step.job_id()).await;
            return Err(bullmq::Error::WorkerClosed);
        }
        if let Some(error) = &result.error {
            let policy = plugin.retry();
            let allowed = policy.attempts_allowed(step.scope.max_attempts);
            if let Some(delay) = policy.retry_after(attempt, allowed, error, &cancel, deadline) {
                self.retrying(step, place.as_deref(), &result, error, delay);
                return Err(bullmq::Error::ProcessingError(error.message.clone()));
            }
        }
        self.carry_on(step, &result).await?;
        if result.ok {
            Ok(document(&result))
        } else {
            Err(bullmq::Error::Unrecoverable(message_of(&result)))
        }
    }

    /// Where the step runs in its innermost workflow, for its events (`Event::step`).
    async fn place_of(&self, step: &StepJob) -> Option<String> {
        self.dist.place_in(&step.frames).await
    }

    /// Notes the wait before the next attempt (for the backoff strategy) and says so.
    fn retrying(
        &self,
        step: &StepJob,
        place: Option<&str>,
        result: &ExecutionResult,
        error: &ExecutionError,
        delay: Duration,
    ) {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        lock_map(&self.delays).note(step.job_id(), delay_ms, Instant::now());
        tracing::info!(
            target: "weir::execution",
            id = %step.execution,
            processor = %step.processor,
            attempt = result.execution.attempts,
            delay_ms,
            error = %error,
            "retrying"
        );
        let events = self.shared.events();
        if events.active() {
            let mut event = execution_event(
                EventKind::ProcessorRetrying,
                &result.execution,
                step.scope.parent.as_deref(),
                place,
                0,
            );
            event.attempt = Some(result.execution.attempts);
            event.error = Some(error.clone());
            event.data = Some(serde_json::json!({ "delayMs": delay_ms }));
            events.publish(event);
        }
    }

    /// Takes the step's result through its run: the next step is enqueued, or the run's
    /// outcome written. If Redis fails here, the job fails retryably and the step runs
    /// again (every write of the move is idempotent).
    async fn carry_on(
        &self,
        step: &StepJob,
        result: &ExecutionResult,
    ) -> Result<(), bullmq::Error> {
        self.dist
            .proceed_from(|| (step.cursor(), Next::Done(Box::new(result.clone()))))
            .await
            .map_err(|e| self.retry_later(step, e))
    }

    /// A step that could not reach Redis: BullMQ runs it again after a while (the next
    /// attempt finds Redis back, or fails the same way until the attempts run out).
    /// Why job `id` of `queue`, started `unfinished` times before without ending, is not
    /// run again: `None` when every one of those starts was handed back by a worker that
    /// left (not a crash). A job whose worker died running it may have killed it; handing
    /// it to the next worker could kill that one too, and the next.
    async fn crashed(
        &self,
        queue: &str,
        id: &str,
        unfinished: u32,
    ) -> Result<Option<String>, bullmq::Error> {
        let mut conn = self.dist.conn();
        let handed_back: Option<u32> =
            redis::AsyncCommands::get(&mut conn, self.dist.keys.handed_back(queue, id))
                .await
                .map_err(|e| bullmq::Error::ProcessingError(e.to_string()))?;
        if unfinished <= handed_back.unwrap_or(0) {
            return Ok(None);
        }
        tracing::warn!(
            target: "weir::worker",
            %queue,
            job = %id,
            "a job's worker stopped while running it; the job fails instead of running again"
        );
        Ok(Some(format!(
            "the worker running this step stopped before the step ended (it was killed, \
             crashed or ran out of memory, perhaps because of the step): a step that may kill \
             its worker is not handed to another. That worker's exit status and log say why; \
             `weir dlq retry {queue}/{id}` runs the step again"
        )))
    }

    /// Notes that this worker leaves before job `id` of `queue` ends: its next start is
    /// not a crash.
    async fn hand_back(&self, queue: &str, id: &str) {
        let key = self.dist.keys.handed_back(queue, id);
        let kept = self.dist.retention_secs().max(7 * 24 * 3600);
        let mut conn = self.dist.conn();
        let noted: redis::RedisResult<()> = redis::pipe()
            .incr(&key, 1)
            .ignore()
            .expire(&key, kept)
            .ignore()
            .query_async(&mut conn)
            .await;
        if let Err(error) = noted {
            tracing::warn!(target: "weir::worker", %queue, job = %id, %error, "cannot note that this worker hands the job back; its next start will count as a crash");
        }
    }

    /// The failure of a job this worker refuses to run (it touches nothing: no state, no
    /// record, no event of the run it claims), said on the job and in the log.
    fn refuse(&self, queue: &str, job: &Job, refused: Refused) -> bullmq::Error {
        tracing::warn!(
            target: "weir::worker",
            queue = %queue,
            job = %job.id(),
            "refused a job: {refused}"
        );
        bullmq::Error::Unrecoverable(format!("refused by the worker: {refused}"))
    }

    fn retry_later(&self, step: &StepJob, error: Error) -> bullmq::Error {
        tracing::warn!(target: "weir::worker", job = %step.job_id(), %error, "Redis failed; the step runs again in 1 s");
        lock_map(&self.delays).note(step.job_id(), REDIS_RETRY_MS, Instant::now());
        bullmq::Error::ProcessingError(error.to_string())
    }
}

/// Carries a running guest's progress reports into `job` as BullMQ progress, an object
/// `{percent, message}` (so Bull Board and Node's `QueueEvents` see it). Reports that come
/// faster than Redis takes them are coalesced: the latest wins. The forwarder ends once the
/// execution has dropped its sink and the last report is written: [`Forwarder::finish`]
/// waits for that, so no report lands after the job has ended.
fn forward_progress(mut job: Job) -> (ProgressSink, Forwarder) {
    let (sink, mut reports) = tokio::sync::watch::channel(None::<(u8, String)>);
    let task = tokio::spawn(async move {
        while reports.changed().await.is_ok() {
            let Some((percent, message)) = reports.borrow_and_update().clone() else {
                continue;
            };
            let progress = bullmq::JobProgress::Object(
                serde_json::json!({ "percent": percent, "message": message }),
            );
            if let Err(error) = job.update_progress(progress).await {
                tracing::debug!(target: "weir::worker", job = %job.id(), %error, "cannot record progress");
            }
        }
    });
    (Arc::new(sink), Forwarder(task))
}

/// The task carrying a job's progress into Redis.
struct Forwarder(tokio::task::JoinHandle<()>);

impl Forwarder {
    /// Waits (up to a second) for the last report to be written, once the execution has
    /// ended; gives up on it after that.
    async fn finish(mut self) {
        if tokio::time::timeout(Duration::from_secs(1), &mut self.0)
            .await
            .is_err()
        {
            self.0.abort();
        }
    }
}

/// The result document as a job's return value.
pub(super) fn document(result: &ExecutionResult) -> Value {
    serde_json::to_value(result.document()).unwrap_or(Value::Null)
}

/// A failed result as a job's failure reason: the error's kind, code and message.
pub(super) fn message_of(result: &ExecutionResult) -> String {
    match &result.error {
        Some(error) => match &error.code {
            Some(code) => format!("{} ({code}): {}", kind_word(error.kind), error.message),
            None => format!("{}: {}", kind_word(error.kind), error.message),
        },
        None => String::new(),
    }
}

pub(super) fn kind_word(kind: ErrorKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// What a job's data is, as a worker reads it before it runs anything.
#[derive(Debug)]
pub(crate) enum JobData {
    /// A weir step in the format this worker reads.
    Step(Box<StepJob>),
    /// Not weir's (no `weir` field): a foreign producer's job for the queue's processor.
    Foreign,
    /// It claims weir's format but cannot run here: the job fails with this reason.
    Refused(String),
}

/// Reads a job's data in place (only a foreign job's data is copied, later, by its
/// caller).
pub(crate) fn read_job(data: &Value) -> JobData {
    match StepJob::deserialize(data) {
        Ok(step) if step.weir == FORMAT => JobData::Step(Box::new(step)),
        Ok(step) => JobData::Refused(format!(
            "the job is in weir's job format {}, this worker reads format {FORMAT}",
            step.weir
        )),
        Err(error) if data.get("weir").is_some() => JobData::Refused(format!(
            "the job claims weir's format but is unreadable: {error}"
        )),
        Err(_) => JobData::Foreign,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;
    use serde_json::json;
    use sha2::Digest;

    use super::*;

    use crate::contract::limits::{LimitOverrides, Limits};
    use crate::contract::workflow::Workflow;
    use crate::distributed::wire::enclosing_join;
    use weir_fuzzing::{fuzz, json_near};

    const JOB_WORDS: &[&str] = &[
        "weir",
        "run",
        "path",
        "execution",
        "processor",
        "digest",
        "state",
        "scope",
        "tenant",
        "session",
        "deadlineMs",
        "maxAttempts",
        "priority",
        "limits",
        "timeoutMs",
        "memoryBytes",
        "fuel",
        "outputBytes",
        "parent",
        "submittedMs",
        "bindings",
        "kind",
        "processor",
        "workflow",
        "frames",
        "startedUs",
        "peakMemory",
        "outerDeadlineMs",
        "outerParent",
        "at",
        "chain",
        "index",
        "selector",
        "input",
        "route",
        "key",
        "target",
        "branch",
        "join",
        "node",
        "merge",
        "delayMs",
        "frame",
        "metadata",
        "version",
        "default",
        "acme",
        "0",
        "0.1.s",
    ];

    fn frame(at: Value) -> Value {
        json!({
            "workflow": "calc", "digest": "ab".repeat(32), "execution": "e0", "path": "0",
            "startedUs": 1, "fuel": 2, "peakMemory": 3, "outerDeadlineMs": null,
            "outerParent": null, "at": at,
        })
    }

    fn seeds() -> Vec<Value> {
        let scope = json!({
            "tenant": "acme", "session": "s", "deadlineMs": 1_900_000_000_000u64,
            "maxAttempts": 3, "priority": 1,
            "limits": {"timeoutMs": 1000, "memoryBytes": 1 << 20, "fuel": 100, "outputBytes": 10},
            "parent": "p", "submittedMs": 1,
        });
        let step = json!({
            "weir": 1, "run": "r1", "path": "0.1", "execution": "e1", "processor": "double",
            "digest": "ab".repeat(32), "state": {"count": 1, "metadata": {"version": 2}},
            "scope": scope.clone(),
            "bindings": {"double": {"kind": "processor", "digest": "cd".repeat(32)},
                         "calc": {"kind": "workflow", "digest": "ef".repeat(32)}},
            "frames": [
                frame(json!({"kind": "chain", "index": 1})),
                frame(json!({"kind": "branch", "join": "r1-0.j", "node": 2})),
                frame(json!({"kind": "route", "key": "a", "target": "double"})),
                frame(json!({"kind": "selector", "input": {"kind": "a"}})),
                frame(json!({"kind": "merge", "input": {}})),
            ],
            "delayMs": 10,
        });
        let join = json!({
            "weir": 1, "join": "r1-0.j", "run": "r1",
            "frame": frame(json!({"kind": "join"})), "scope": scope,
            "bindings": {}, "frames": [frame(json!({"kind": "chain", "index": 0}))],
        });
        let definition = |w: Workflow| -> Value {
            serde_json::from_slice(&w.definition()).unwrap_or(Value::Null)
        };
        vec![
            step,
            join,
            json!({"count": 1}),
            definition(Workflow::chain("calc", ["increment", "double"])),
            definition(Workflow::parallel("fan", ["a", "b"]).merge("m")),
            definition(
                Workflow::route_by_pointer("pick", "/kind")
                    .route("a", "x")
                    .fallback("y"),
            ),
            definition(
                Workflow::graph("g")
                    .node("x", Vec::<String>::new())
                    .node("y", ["x"]),
            ),
        ]
    }

    #[test]
    fn fuzz_job_data_as_a_worker_reads_it() {
        // Anyone who can write to Redis writes job data: what the worker reads from it
        // before running anything must hold whatever is there.
        fuzz("job data", json_near(seeds(), JOB_WORDS), |data| {
            match read_job(&data) {
                JobData::Step(step) => {
                    let _ = (step.job_id(), step.info(1), joins_of(&step.frames));
                    let _ = enclosing_join(&step.frames);
                    let _ = step.scope.deadline_ms.map(instant_of);
                    let _ = crate::contract::state::prepare_input(
                        step.state.clone(),
                        step.scope.session.as_deref(),
                    );
                    let limits =
                        Limits::DEFAULTS.lowered_by(&LimitOverrides::from(step.scope.limits));
                    prop_assert!(limits.timeout_ms <= Limits::DEFAULTS.timeout_ms);
                    let _ = Instant::now() + limits.timeout();
                }
                JobData::Refused(reason) => prop_assert!(!reason.is_empty()),
                JobData::Foreign => prop_assert!(data.get("weir").is_none()),
            }
            if let Ok(join) = JoinJob::deserialize(&data) {
                let _ = (
                    joins_of(&join.frames),
                    join.scope.deadline_ms.map(instant_of),
                );
            }
            // A workflow's definition, as a worker fetches it from Redis.
            // The digest is the one its bytes hash to, as a forger who writes both would set.
            let bytes =
                serde_json::to_vec(&data).map_err(|e| TestCaseError::fail(e.to_string()))?;
            if let Ok(parsed) = serde_json::from_slice::<Workflow>(&bytes) {
                let digest = hex::encode(sha2::Sha256::digest(parsed.definition()));
                if let Ok(workflow) = Workflow::from_definition(&bytes, &digest) {
                    prop_assert!(
                        workflow.check_shape().is_ok(),
                        "{:?}",
                        workflow.check_shape()
                    );
                    let _ = (
                        workflow.references(),
                        workflow.kind(),
                        workflow.is_fan_out(),
                    );
                }
            }
            Ok(())
        });
    }
}
