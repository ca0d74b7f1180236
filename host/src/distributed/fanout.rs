//! Fan-outs across workers: a parallel, batch or graph runs as a BullMQ flow whose parent
//! is a join job (on weir's own `_join` queue) and whose children are its branches' jobs.
//! What has finished, what runs, and what may start next live in one record in Redis,
//! updated with compare-and-set by whichever worker finishes a branch; that worker starts
//! the branches that became ready (as further children of the join) before its own job
//! completes, so the join runs only once every branch has ended. The join then computes the
//! workflow's result with the same rules as [`crate::execution::compose`] and carries the run on.

use std::collections::VecDeque;

use bullmq::FlowJob;

use serde_json::Value;

use super::advance::{Cursor, Entered, Next, Plan, Settled, close, close_fan_out};
use super::control::Target;
use super::handle::Distributed;
use super::join::{Ending, JoinState, Start};
use super::trust::Kind;
use super::wire::{At, FORMAT, Frame, JoinJob, enclosing_join, job_id};
use crate::contract::cancel::CancelReason;
use crate::contract::error::Error;
use crate::contract::error::{ErrorKind, ExecutionError, codes};
use crate::contract::result::ExecutionResult;
use crate::contract::workflow::{BatchPolicy, Composition, Workflow};

/// The name of weir's queue of join jobs (never a processor's: names start with a letter).
pub(crate) const JOIN_QUEUE: &str = "_join";

/// What a batch's items cost their tenant on the distributed runtime, charged by whichever
/// process opens the batch (the submitter, for a run that is a batch; a worker, for a
/// batch inside a workflow) before any item starts: the fleet's counterpart of
/// [`crate::Admission`], which meters the local runtime. The HTTP server's tenants implement
/// it (`weir_server::item_admission`), counting in Redis across the fleet; install it on
/// every server's and worker's runtime with [`crate::Fleet::charge_batch_items`].
#[async_trait::async_trait]
pub trait ItemAdmission: Send + Sync + std::fmt::Debug {
    /// Charges `items` executions to `tenant`. An error refuses them all: the batch fails
    /// with it and no item runs.
    async fn admit_items(&self, tenant: &str, items: usize) -> Result<(), ExecutionError>;
}

impl Distributed {
    /// Opens a fan-out: records it and settles its first branches into the children of its
    /// join job (a branch that ends at once is recorded at once, and may start others).
    pub(super) async fn open_fan_out(
        &self,
        cursor: &mut Cursor,
        workflow: &Workflow,
        mut frame: Frame,
        input: Value,
    ) -> Result<Entered, Error> {
        let join = job_id(&cursor.run, &format!("{}.j", frame.path));
        let (mut state, starts) =
            match JoinState::open(workflow, input.clone(), self.max_batch_items) {
                Ok(opened) => opened,
                Err(error) => {
                    return Ok(Entered::Next(close(cursor, frame, Err((input, error)))));
                }
            };
        // A batch's items are paid for before any starts. (Opening again after a failure
        // of Redis, or in a job run twice, charges again: the tenant may pay twice, never
        // not at all.)
        if matches!(workflow.composition(), Composition::Batch { .. })
            && let Some(admission) = self.item_admission()
            && let Err(error) = admission
                .admit_items(&cursor.scope.tenant, state.nodes.len())
                .await
        {
            return Ok(Entered::Next(close(cursor, frame, Err((input, error)))));
        }
        frame.at = At::Join;
        let mut children = Vec::new();
        let mut pending: VecDeque<Start> = starts.into();
        while let Some(start) = pending.pop_front() {
            let (mut branch, next) = self.branch(cursor, &frame, &join, start);
            match self.settle(&mut branch, next).await? {
                Settled::Plan(plan) => children.push(self.child(plan)?),
                Settled::Branch { frame, result } => {
                    if let At::Branch { node, .. } = frame.at {
                        pending.extend(state.complete(workflow, node, *result));
                    }
                }
                // A branch's bottom frame is its own: it never reaches the run's end.
                Settled::Run(_) => {}
            }
        }
        self.create_join(&join, &state, workflow).await?;
        let mut data = JoinJob {
            weir: FORMAT,
            join: join.clone(),
            run: cursor.run.clone(),
            frame,
            scope: cursor.scope.clone(),
            bindings: cursor.bindings.clone(),
            frames: cursor.frames.clone(),
            mac: String::new(),
        };
        if self.seal.keyed() {
            data.mac = self.seal.sign(Kind::Join, &data.authority());
        }
        let mut root = FlowJob::new("join", JOIN_QUEUE, &data).map_err(|e| self.redis_error(e))?;
        root.opts = Some(self.join_options(&join, enclosing_join(&cursor.frames)));
        if !children.is_empty() {
            root.children = Some(children);
        }
        Ok(Entered::Plan(Plan::Flow(Box::new(root))))
    }

    /// The cursor and first move of branch `start` of the fan-out of `frame`.
    fn branch(&self, cursor: &Cursor, frame: &Frame, join: &str, start: Start) -> (Cursor, Next) {
        let mut bottom = frame.clone();
        bottom.at = At::Branch {
            join: join.to_string(),
            node: start.node,
        };
        let branch = Cursor {
            run: cursor.run.clone(),
            scope: cursor.scope.clone(),
            bindings: cursor.bindings.clone(),
            frames: vec![bottom],
        };
        let next = Next::Enter {
            name: start.name,
            state: start.input,
            path: format!("{}.{}", frame.path, start.node),
        };
        (branch, next)
    }

    /// A plan as a child in a flow (BullMQ links it to its parent).
    fn child(&self, plan: Plan) -> Result<FlowJob, Error> {
        match plan {
            Plan::Step(job) => {
                let mut child = FlowJob::new(job.processor.as_str(), job.queue(), &*job)
                    .map_err(|e| self.redis_error(e))?;
                let mut options =
                    self.step_options(&job.job_id(), Some(job.scope.queue_priority()), None);
                options.ignore_dependency_on_failure = Some(true);
                child.opts = Some(options);
                Ok(child)
            }
            Plan::Flow(flow) => {
                let mut flow = *flow;
                if let Some(options) = &mut flow.opts {
                    options.parent = None;
                    options.ignore_dependency_on_failure = Some(true);
                }
                Ok(flow)
            }
        }
    }

    /// Records that a branch ended (the bottom `frame` of its stack) with `result`, and
    /// says which branches start now.
    pub(super) async fn branch_done(
        &self,
        cursor: &Cursor,
        frame: &Frame,
        result: ExecutionResult,
    ) -> Result<Vec<(Cursor, Next)>, Error> {
        let At::Branch { join, node } = &frame.at else {
            return Ok(Vec::new());
        };
        let workflow = match self.workflow(&frame.digest).await? {
            Ok(workflow) => workflow,
            Err(why) => {
                tracing::warn!(join = %join, %why, "a branch ended for a fan-out whose definition is gone");
                return Ok(Vec::new());
            }
        };
        let (starts, doomed) = if let Composition::Batch {
            processor, policy, ..
        } = workflow.composition()
        {
            let dooms = *policy == BatchPolicy::AllOrNothing;
            match self.batch_item_done(join, *node, &result, dooms).await? {
                Some((start, doomed)) => {
                    let starts = start.map(|(index, input)| Start {
                        node: index,
                        name: processor.clone(),
                        input,
                    });
                    (starts.into_iter().collect(), doomed)
                }
                None => {
                    tracing::warn!(join = %join, "a batch item ended for a batch whose record has expired");
                    return Ok(Vec::new());
                }
            }
        } else {
            loop {
                let (revision, mut state) = match self.load_join(join, &workflow).await? {
                    Some(Ok(loaded)) => loaded,
                    Some(Err(why)) => {
                        tracing::warn!(join = %join, %why, "a branch ended for a fan-out whose record does not fit its workflow");
                        return Ok(Vec::new());
                    }
                    None => {
                        tracing::warn!(join = %join, "a branch ended for a fan-out whose record has expired");
                        return Ok(Vec::new());
                    }
                };
                let starts = state.complete(&workflow, *node, result.clone());
                if self.store_join(join, revision, &state).await? {
                    break (starts, state.doomed());
                }
            }
        };
        if doomed {
            // The first failure dooms the fan-out: its other branches stop. (Said again on
            // every later branch end: a worker that died before saying it is covered.)
            let target = Target::Join { id: join.clone() };
            self.cancel(target, CancelReason::Sibling).await?;
        }
        Ok(starts
            .into_iter()
            .map(|start| self.branch(cursor, frame, join, start))
            .collect())
    }

    /// Runs a fan-out's join: its branches have all ended.
    pub(crate) async fn run_join(&self, job: JoinJob) -> Result<(), Error> {
        let mut cursor = Cursor {
            run: job.run,
            scope: job.scope,
            bindings: job.bindings,
            frames: job.frames,
        };
        let mut frame = job.frame;
        let workflow = match self.workflow(&frame.digest).await? {
            Ok(workflow) => workflow,
            Err(why) => {
                let error =
                    ExecutionError::host(ErrorKind::Configuration, codes::NOT_AVAILABLE, why);
                let next = close(&mut cursor, frame, Err((Value::Null, error)));
                self.ended(&cursor, &next).await;
                return self.proceed(cursor, next).await;
            }
        };
        let loaded = match workflow.composition() {
            Composition::Batch { .. } => self.load_batch(&job.join, &workflow).await?,
            _ => self
                .load_join(&job.join, &workflow)
                .await?
                .map(|loaded| loaded.map(|(_, state)| state)),
        };
        if let Some(Err(why)) = loaded {
            let error = ExecutionError::host(
                ErrorKind::Execution,
                codes::NOT_AVAILABLE,
                format!(
                    "the record of `{}`'s branches in Redis is unreadable ({why}); the run \
                     cannot go on",
                    workflow.name()
                ),
            );
            let next = close(&mut cursor, frame, Err((Value::Null, error)));
            self.ended(&cursor, &next).await;
            return self.proceed(cursor, next).await;
        }
        let Some(Ok(state)) = loaded else {
            let error = ExecutionError::host(
                ErrorKind::Execution,
                codes::NOT_AVAILABLE,
                format!(
                    "the record of `{}`'s branches has expired before they all ended (raise the \
                     run retention)",
                    workflow.name()
                ),
            );
            let next = close(&mut cursor, frame, Err((Value::Null, error)));
            self.ended(&cursor, &next).await;
            return self.proceed(cursor, next).await;
        };
        let mut state = state;
        state.lose_unfinished(&workflow, &cursor.scope.tenant);
        frame.fuel = frame.fuel.saturating_add(state.fuel);
        frame.peak_memory = frame.peak_memory.max(state.peak_memory);
        let identity = match workflow.composition() {
            Composition::Batch { processor, .. } => {
                self.identity(&cursor.bindings, processor).await?
            }
            _ => (None, None),
        };
        let next = match state.ending(&workflow, &cursor.scope.tenant, &identity) {
            Ending::Outcome(outcome, items, failures) => {
                close_fan_out(&mut cursor, frame, outcome, items, failures)
            }
            Ending::Merge {
                merger,
                input,
                failures,
            } => {
                let path = format!("{}.m", frame.path);
                frame.at = At::Merge {
                    input: state.input.clone(),
                    failures,
                };
                cursor.frames.push(frame);
                Next::Enter {
                    name: merger,
                    state: input,
                    path,
                }
            }
        };
        self.ended(&cursor, &next).await;
        self.proceed(cursor, next).await
    }

    /// Writes a fan-out's first record, unless a run of the same step wrote it already.
    async fn create_join(
        &self,
        join: &str,
        state: &JoinState,
        workflow: &Workflow,
    ) -> Result<(), Error> {
        let key = self.keys.join(join);
        if let Composition::Batch { .. } = workflow.composition() {
            let fields = state
                .batch_fields(&self.seal, join)
                .map_err(|e| self.redis_error(e))?;
            let mut script = self.batch_open.key(&key);
            script.arg(self.retention_secs());
            for (field, value) in &fields {
                script.arg(field).arg(value);
            }
            let mut conn = self.conn();
            let _: i64 = script
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.redis_error(e))?;
            return Ok(());
        }
        let text = serde_json::to_string(state).map_err(|e| self.redis_error(e))?;
        let text = self.seal.seal_text(&[join, "state"], &text);
        let mut conn = self.conn();
        let _: () = redis::pipe()
            .hset_nx(&key, "state", text)
            .ignore()
            .hset_nx(&key, "rev", 1)
            .ignore()
            .expire(&key, self.retention_secs())
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(())
    }

    /// Records that item `index` of a batch ended with `result` (`dooms`: a failure ends
    /// the batch). Returns the item this starts (its index and state) and whether the batch
    /// is doomed; `None` when the batch's record has expired.
    async fn batch_item_done(
        &self,
        join: &str,
        index: usize,
        result: &ExecutionResult,
        dooms: bool,
    ) -> Result<Option<(Option<(usize, Value)>, bool)>, Error> {
        let text = serde_json::to_string(result).map_err(|e| self.redis_error(e))?;
        let text = self.seal.seal_text(&[join, &format!("r:{index}")], &text);
        let failure = match &result.error {
            Some(error) if dooms => {
                let failure =
                    serde_json::to_string(&(index, error)).map_err(|e| self.redis_error(e))?;
                self.seal.seal_text(&[join, "fail"], &failure)
            }
            _ => String::new(),
        };
        let mut conn = self.conn();
        let (started, item, doomed): (i64, Option<String>, i64) = self
            .batch_done
            .key(self.keys.join(join))
            .arg(index)
            .arg(text)
            .arg(result.execution.fuel_consumed.min(i64::MAX as u64))
            .arg(result.execution.peak_memory_bytes)
            .arg(failure)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        if started == -2 {
            return Ok(None);
        }
        let start = match (usize::try_from(started), item) {
            (Ok(started), Some(item)) => {
                let item = serde_json::from_str(&item).map_err(|e| {
                    self.redis_error(format!("item {started} of batch {join} is unreadable: {e}"))
                })?;
                Some((started, item))
            }
            _ => None,
        };
        Ok(Some((start, doomed == 1)))
    }

    /// A batch's record, read whole (once, by its join): `None` when it has expired, `Err`
    /// with the reason when it does not fit `workflow`.
    async fn load_batch(
        &self,
        join: &str,
        workflow: &Workflow,
    ) -> Result<Option<Result<JoinState, String>>, Error> {
        let mut conn = self.conn();
        let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.join(join))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            JoinState::from_batch_fields(fields, self.max_batch_items, &self.seal, join)
                .and_then(|state| state.fits(workflow).map(|()| state)),
        ))
    }

    /// A fan-out's record and its revision: `None` when it has expired, `Err` with the
    /// reason when it does not fit `workflow`.
    async fn load_join(
        &self,
        join: &str,
        workflow: &Workflow,
    ) -> Result<Option<Result<(u64, JoinState), String>>, Error> {
        let mut conn = self.conn();
        let (revision, text): (Option<u64>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.join(join))
            .arg("rev")
            .arg("state")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        let (Some(revision), Some(stored)) = (revision, text) else {
            return Ok(None);
        };
        let state = self
            .seal
            .open_text(&[join, "state"], &stored)
            .map_err(|refused| refused.to_string())
            .and_then(|text| serde_json::from_str::<JoinState>(text).map_err(|e| e.to_string()))
            .and_then(|state| state.fits(workflow).map(|()| (revision, state)));
        Ok(Some(state))
    }

    /// Replaces a fan-out's record if it is still at `revision`; false if another worker
    /// changed it first (read it again and redo the change).
    async fn store_join(
        &self,
        join: &str,
        revision: u64,
        state: &JoinState,
    ) -> Result<bool, Error> {
        let text = serde_json::to_string(state).map_err(|e| self.redis_error(e))?;
        let text = self.seal.seal_text(&[join, "state"], &text);
        let mut conn = self.conn();
        let stored: i64 = self
            .join_cas
            .key(self.keys.join(join))
            .arg(revision)
            .arg(text)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(stored == 1)
    }
}
