//! How a run advances between jobs: entering a name (enqueue a step, or open a workflow and
//! enter its first step) and taking a finished step's result back through the workflows
//! around it (the next chain step, the route's target, or the workflow's own result) until
//! the run itself is done. The same rules as [`crate::execution::compose`], written as a continuation
//! that lives in the job instead of a future that lives in a process.

use serde_json::Value;
use std::collections::BTreeMap;

use super::handle::Distributed;
use bullmq::FlowJob;

use super::trust::Kind;
use super::wire::{At, Binding, FORMAT, Frame, StepJob, Undo, WireScope, earliest, now_ms, now_us};
use crate::contract::error::{Error, ErrorKind, ExecutionError, codes};
use crate::contract::result::{ExecutionInfo, ExecutionResult, StepFailure};
use crate::contract::state;
use crate::contract::workflow::{Composition, Selector, Workflow};
use crate::execution::activity::{Outcome as Ended, Tally};
use crate::execution::compose::rules::{
    Failure, choose_route, compensation_outcome, handler_input, handler_outcome, key_of,
    missing_key, place, route_failed, step_failed, undone, workflow_result,
};
use crate::execution::executor::{end_event, execution_event, failed};
use crate::sandbox::events::EventKind;

/// A run between two steps: who it runs for, what its names mean, and the workflows open
/// around the current step.
#[derive(Debug, Clone)]
pub(crate) struct Cursor {
    pub run: String,
    pub scope: WireScope,
    pub bindings: BTreeMap<String, Binding>,
    pub frames: Vec<Frame>,
}

impl StepJob {
    /// Where its run stands, to carry it on from this step.
    pub(crate) fn cursor(&self) -> Cursor {
        Cursor {
            run: self.run.clone(),
            scope: self.scope.clone(),
            bindings: self.bindings.clone(),
            frames: self.frames.clone(),
        }
    }
}

/// What a run does next.
#[derive(Clone)]
pub(crate) enum Next {
    /// Start `name` on `state`, as the step at `path`.
    Enter {
        name: String,
        state: Value,
        path: String,
    },
    /// A step (or a whole workflow) finished with this result.
    Done(Box<ExecutionResult>),
}

/// The workflow of `frame` ended: with its output, or with the last good state and why.
pub(crate) type Outcome = Result<Value, Failure>;

/// How many times a move through Redis is tried, and the first wait between tries (it
/// doubles): about 1.5 s in all, enough for a restarted Redis to be reconnected to.
const TRIES: u32 = 5;
const FIRST_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs `attempt` until it succeeds or has failed [`TRIES`] times. Only for idempotent
/// moves: a connection that broke (Redis restarted) usually works again on the next try.
pub(crate) async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut wait = FIRST_WAIT;
    let mut tries = 1;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if tries < TRIES && matches!(error, Error::Redis { .. }) => {
                tracing::debug!(%error, tries, "Redis failed; trying again");
                tokio::time::sleep(wait).await;
                wait *= 2;
                tries += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// A job to add: one step, or a fan-out's join with its first branches.
pub(crate) enum Plan {
    Step(Box<StepJob>),
    Flow(Box<FlowJob>),
}

/// Where moving a run on stopped.
pub(crate) enum Settled {
    /// It needs this job.
    Plan(Plan),
    /// A fan-out's branch ended (`frame` is its bottom).
    Branch {
        frame: Box<Frame>,
        result: Box<ExecutionResult>,
    },
    /// The run ended.
    Run(Box<ExecutionResult>),
}

/// What entering a name gave.
pub(crate) enum Entered {
    Plan(Plan),
    Next(Next),
}

impl Distributed {
    /// Carries the run on from `next` until it waits on queued jobs or is finished: adds
    /// the jobs it needs, records branches' ends (starting the branches that became
    /// ready), and writes the run's outcome. Fails only when Redis does (the caller
    /// retries the whole move; every write in it is idempotent).
    pub(crate) async fn proceed(&self, cursor: Cursor, next: Next) -> Result<(), Error> {
        self.proceed_from(|| (cursor.clone(), next.clone())).await
    }

    /// [`Distributed::proceed`] from what `start` makes for each try: a caller holding
    /// the pieces elsewhere (a step's job, its result) builds them once per try, not twice.
    pub(crate) async fn proceed_from(
        &self,
        start: impl Fn() -> (Cursor, Next),
    ) -> Result<(), Error> {
        retrying(|| {
            let (cursor, next) = start();
            self.proceed_once(cursor, next)
        })
        .await
    }

    async fn proceed_once(&self, cursor: Cursor, next: Next) -> Result<(), Error> {
        let mut work = vec![(cursor, next)];
        while let Some((mut cursor, next)) = work.pop() {
            match self.settle(&mut cursor, next).await? {
                Settled::Plan(plan) => self.add(plan).await?,
                Settled::Run(result) => self.finish_run(&cursor.run, &result).await?,
                Settled::Branch { frame, result } => {
                    work.extend(self.branch_done(&cursor, &frame, *result).await?);
                }
            }
        }
        Ok(())
    }

    /// Moves the run on until it needs a job, reaches the end of a fan-out's branch, or
    /// ends. Boxed: opening a fan-out settles its branches, which may open fan-outs.
    pub(crate) fn settle<'a>(
        &'a self,
        cursor: &'a mut Cursor,
        mut next: Next,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Settled, Error>> + Send + 'a>>
    {
        Box::pin(async move {
            loop {
                next = match next {
                    Next::Enter { name, state, path } => {
                        match self.enter(cursor, name, state, path).await? {
                            Entered::Plan(plan) => return Ok(Settled::Plan(plan)),
                            Entered::Next(next) => next,
                        }
                    }
                    Next::Done(result) => match cursor.frames.pop() {
                        None => return Ok(Settled::Run(result)),
                        Some(frame) if matches!(frame.at, At::Branch { .. }) => {
                            return Ok(Settled::Branch {
                                frame: Box::new(frame),
                                result,
                            });
                        }
                        Some(frame) => {
                            let next = self.step_done(cursor, frame, *result).await?;
                            self.ended(cursor, &next).await;
                            next
                        }
                    },
                };
            }
        })
    }

    /// The job for a processor, or a workflow opened (and what runs first in it).
    async fn enter(
        &self,
        cursor: &mut Cursor,
        name: String,
        state: Value,
        path: String,
    ) -> Result<Entered, Error> {
        let top = cursor.frames.is_empty() && path == "0";
        let execution = if top {
            cursor.run.clone()
        } else {
            crate::contract::clock::new_execution_id()
        };
        // A chain's delay: a job that waits in Redis (BullMQ's delayed set), holding no
        // worker, and then passes its state on.
        if let Some(wait) = crate::contract::workflow::delay_of(&name) {
            let delay = Some(crate::contract::clock::millis(wait));
            let step = (name, String::new(), state, path, execution);
            return Ok(self.step_plan(cursor, step, delay));
        }
        match cursor.bindings.get(&name).cloned() {
            Some(Binding::Processor { digest }) => {
                let step = (name, digest, state, path, execution);
                Ok(self.step_plan(cursor, step, None))
            }
            Some(Binding::Workflow { digest }) => {
                self.tally(
                    &cursor.scope.tenant,
                    &name,
                    cursor.scope.session.as_deref(),
                    Tally::Started,
                );
                if let Some(shared) = self.local().filter(|shared| shared.events().active()) {
                    let place = self.place_in(&cursor.frames).await;
                    let info = info_for(cursor, &execution, &name);
                    let event = execution_event(
                        EventKind::ProcessorStarted,
                        &info,
                        cursor.scope.parent.as_deref(),
                        place.as_deref(),
                        0,
                    );
                    shared.events().publish(event);
                }
                let entered = self
                    .enter_workflow(cursor, name, digest, state, path, execution)
                    .await?;
                if let Entered::Next(next) = &entered {
                    self.ended(cursor, next).await;
                }
                Ok(entered)
            }
            None => {
                let info = info_for(cursor, &execution, &name);
                let error = ExecutionError::host(
                    ErrorKind::NotFound,
                    codes::PROCESSOR_NOT_FOUND,
                    format!(
                        "no processor or workflow named `{name}` was published to Redis when \
                         the run was submitted (start a worker with its plugin, or `weir \
                         plugins push` it)"
                    ),
                );
                Ok(Entered::Next(Next::Done(Box::new(failed(
                    state, error, info,
                )))))
            }
        }
    }

    /// Opens the workflow `name` (published as `digest`) on `state`: its first step, or
    /// its result at once.
    async fn enter_workflow(
        &self,
        cursor: &mut Cursor,
        name: String,
        digest: String,
        state: Value,
        path: String,
        execution: String,
    ) -> Result<Entered, Error> {
        let info = info_for(cursor, &execution, &name);
        let workflow = match self.workflow(&digest).await? {
            Ok(workflow) => workflow,
            Err(why) => {
                let error =
                    ExecutionError::host(ErrorKind::Configuration, codes::NOT_AVAILABLE, why);
                return Ok(Entered::Next(Next::Done(Box::new(failed(
                    state, error, info,
                )))));
            }
        };
        let (input, metadata) = match state::prepare_input(state, cursor.scope.session.as_deref()) {
            Ok(prepared) => prepared,
            Err(error) => {
                return Ok(Entered::Next(Next::Done(Box::new(failed(
                    Value::Null,
                    error,
                    info,
                )))));
            }
        };
        let state = state::with_metadata(input, &metadata);
        let mut frame = Frame {
            workflow: name,
            digest,
            execution: execution.clone(),
            path,
            started_us: now_us(),
            fuel: 0,
            peak_memory: 0,
            outer_deadline_ms: cursor.scope.deadline_ms,
            outer_parent: cursor.scope.parent.clone(),
            at: At::Chain { index: 0 },
            produced: Vec::new(),
        };
        cursor.scope.deadline_ms = earliest(
            cursor.scope.deadline_ms,
            workflow.timeout_ms().map(|t| now_ms().saturating_add(t)),
        );
        cursor.scope.parent = Some(execution);
        if workflow.is_fan_out() {
            return self.open_fan_out(cursor, &workflow, frame, state).await;
        }
        Ok(Entered::Next(open(cursor, &workflow, &mut frame, state)))
    }

    /// The job of one step: `(processor, digest, state, path, execution)` in `cursor`'s run,
    /// waiting `delay_ms` in Redis first (a chain's delay step), signed by this fleet.
    fn step_plan(
        &self,
        cursor: &Cursor,
        (processor, digest, state, path, execution): (String, String, Value, String, String),
        delay_ms: Option<u64>,
    ) -> Entered {
        let mut job = StepJob {
            weir: FORMAT,
            run: cursor.run.clone(),
            path,
            execution,
            processor,
            digest,
            state,
            scope: cursor.scope.clone(),
            bindings: cursor.bindings.clone(),
            frames: cursor.frames.clone(),
            delay_ms,
            mac: String::new(),
        };
        if self.seal.keyed() {
            job.mac = self.seal.sign(Kind::Step, &job.authority());
        }
        Entered::Plan(Plan::Step(Box::new(job)))
    }

    /// Counts a workflow's end in the activity counters, and tells it as the local runtime
    /// does (`processor:completed` or `processor:failed`, with its parent and place), if
    /// `next` is one (a step's end that closed its workflow).
    pub(super) async fn ended(&self, cursor: &Cursor, next: &Next) {
        let Next::Done(result) = next else {
            return;
        };
        self.tally(
            &cursor.scope.tenant,
            &result.execution.processor,
            cursor.scope.session.as_deref(),
            Tally::Ended(Ended {
                ok: result.ok,
                duration: std::time::Duration::from_micros(result.execution.duration_us),
                fuel: result.execution.fuel_consumed,
                peak_memory: result.execution.peak_memory_bytes,
            }),
        );
        let Some(shared) = self.local().filter(|shared| shared.events().active()) else {
            return;
        };
        let place = self.place_in(&cursor.frames).await;
        let parent = cursor.scope.parent.as_deref();
        shared
            .events()
            .publish(end_event(result, parent, place.as_deref(), 0));
    }

    /// Where what runs now runs in the innermost of `frames`, for its events
    /// (`Event::step`): from the frame's position, and for a route or a fan-out from the
    /// workflow's definition (fetched once per process, as carrying the run on needs it
    /// anyway). `None` outside any workflow, or when the definition cannot be read: the run
    /// goes on all the same.
    pub(super) async fn place_in(&self, frames: &[Frame]) -> Option<String> {
        let frame = frames.last()?;
        match &frame.at {
            At::Chain { index } => Some(place::chain(*index)),
            At::Selector { .. } => Some(place::SELECTOR.to_string()),
            At::Merge { .. } => Some(place::MERGE.to_string()),
            At::Undo { undo } => Some(match undo.current {
                Some(index) => place::compensate(index),
                None => place::ON_FAILURE.to_string(),
            }),
            At::Join => None,
            At::Route { .. } | At::Branch { .. } => {
                let workflow = match self.workflow(&frame.digest).await {
                    Ok(Ok(workflow)) => workflow,
                    Ok(Err(reason)) => {
                        tracing::debug!(%reason, "no place for the events");
                        return None;
                    }
                    Err(error) => {
                        tracing::debug!(%error, "no place for the events");
                        return None;
                    }
                };
                match (&frame.at, workflow.composition()) {
                    (At::Route { key, .. }, Composition::Route { routes, .. }) => {
                        Some(place::route(routes, key.as_deref()))
                    }
                    (At::Branch { node, .. }, composition) => place::fan_out(composition, *node),
                    _ => None,
                }
            }
        }
    }

    /// Takes a step's `result` back into the workflow of `frame`.
    async fn step_done(
        &self,
        cursor: &mut Cursor,
        mut frame: Frame,
        result: ExecutionResult,
    ) -> Result<Next, Error> {
        let workflow = match self.workflow(&frame.digest).await? {
            Ok(workflow) => workflow,
            Err(why) => {
                absorb(&mut frame, &result);
                let error =
                    ExecutionError::host(ErrorKind::Configuration, codes::NOT_AVAILABLE, why);
                return Ok(close(cursor, frame, Err((result.state, error))));
            }
        };
        Ok(resume(cursor, &workflow, frame, result))
    }
}

/// Adds what a step's `result` cost to its workflow's `frame`.
fn absorb(frame: &mut Frame, result: &ExecutionResult) {
    frame.fuel = frame.fuel.saturating_add(result.execution.fuel_consumed);
    frame.peak_memory = frame.peak_memory.max(result.execution.peak_memory_bytes);
}

/// Takes a step's `result` back into `workflow`, whose place in the run `frame` tracks: the
/// next chain step, the route a selector chose, a merger's merged state, or the workflow's
/// own result. Pure: how a run advances between jobs, whatever Redis holds.
pub(crate) fn resume(
    cursor: &mut Cursor,
    workflow: &Workflow,
    mut frame: Frame,
    result: ExecutionResult,
) -> Next {
    absorb(&mut frame, &result);
    let path = frame.path.clone();
    match (frame.at.clone(), workflow.composition()) {
        (
            At::Chain { index },
            Composition::Chain {
                steps, compensate, ..
            },
        ) => match result.error {
            Some(error) => {
                // The index comes from job data: out of range names no step.
                let name = steps.get(index).map_or("", String::as_str);
                let error = step_failed(workflow, "step", name, Some(index), error);
                let undo = Undo {
                    current: None,
                    pending: std::mem::take(&mut frame.produced),
                    failed: index,
                    error,
                    state: result.state,
                    outcomes: Vec::new(),
                };
                undo_next(cursor, workflow, frame, undo)
            }
            None if index + 1 < steps.len() => {
                if compensate.contains_key(&steps[index]) {
                    frame.produced.push((index, result.state.clone()));
                }
                frame.at = At::Chain { index: index + 1 };
                cursor.frames.push(frame);
                Next::Enter {
                    name: steps[index + 1].clone(),
                    state: result.state,
                    path: format!("{path}.{}", index + 1),
                }
            }
            None => {
                frame.produced.clear();
                close(cursor, frame, Ok(result.state))
            }
        },
        (
            At::Undo { mut undo },
            Composition::Chain {
                steps,
                on_failure,
                compensate,
            },
        ) => match undo.current {
            Some(index) => {
                let step = steps.get(index).map_or("", String::as_str);
                let compensation = compensate.get(step).map_or("", String::as_str);
                let outcome = compensation_outcome(index, step, compensation, &result);
                undo.outcomes.push(outcome);
                undo_next(cursor, workflow, frame, *undo)
            }
            None => {
                let handler = on_failure.as_deref().unwrap_or_default();
                let handled = Some(handler_outcome(handler, &result));
                let error = undone(undo.error, undo.outcomes, handled);
                close(cursor, frame, Err((undo.state, error)))
            }
        },
        (
            At::Selector { input },
            Composition::Route {
                selector: selector @ Selector::Processor(name),
                routes,
                fallback,
            },
        ) => {
            if let Some(error) = result.error {
                let error = step_failed(workflow, "selector", name, None, error);
                return close(cursor, frame, Err((input, error)));
            }
            let key = result.state.get("route").and_then(key_of);
            let chosen = choose_route(
                workflow,
                routes,
                fallback.as_deref(),
                &key,
                missing_key(selector),
            );
            match chosen {
                Ok(target) => {
                    let target = target.to_string();
                    frame.at = At::Route {
                        key,
                        target: target.clone(),
                    };
                    cursor.frames.push(frame);
                    Next::Enter {
                        name: target,
                        state: input,
                        path: format!("{path}.r"),
                    }
                }
                Err(error) => close(cursor, frame, Err((input, error))),
            }
        }
        (
            At::Merge { input, failures },
            Composition::Parallel {
                merge: Some(merger),
                ..
            },
        ) => {
            if let Some(error) = result.error {
                let error = step_failed(workflow, "merge", merger, None, error);
                return close(cursor, frame, Err((input, error)));
            }
            let metadata = state::prepare_input(input.clone(), None)
                .map(|(_, metadata)| metadata)
                .unwrap_or_else(|_| state::StateMetadata::new(None));
            let metadata = state::StateMetadata {
                session_id: cursor.scope.session.clone(),
                ..metadata
            };
            let merged = match result.state {
                Value::Object(merged) => merged,
                _ => serde_json::Map::new(),
            };
            let state = state::with_metadata(merged, &metadata.bumped());
            close_fan_out(cursor, frame, Ok(state), None, failures)
        }
        (At::Route { key, target }, Composition::Route { routes, .. }) => match result.error {
            Some(error) => {
                let error = route_failed(workflow, routes, &key, &target, error);
                close(cursor, frame, Err((result.state, error)))
            }
            None => close(cursor, frame, Ok(result.state)),
        },
        _ => {
            let error = ExecutionError::host(
                ErrorKind::Configuration,
                codes::NOT_AVAILABLE,
                format!(
                    "the run's position in `{}` does not fit its definition {} (a job \
                     written by an incompatible weir?)",
                    workflow.name(),
                    workflow.digest()
                ),
            );
            close(cursor, frame, Err((result.state, error)))
        }
    }
}

/// Undoes a failed chain one step at a time, each a job: the next compensation (of the
/// last completed step not undone yet), then the failure handler, then the chain's end
/// with its error and how each of them ended. The same rules as the local driver's `undo`.
fn undo_next(cursor: &mut Cursor, workflow: &Workflow, frame: Frame, mut undo: Undo) -> Next {
    let Composition::Chain {
        steps,
        compensate,
        on_failure,
    } = workflow.composition()
    else {
        return close(cursor, frame, Err((undo.state, undo.error)));
    };
    let path = frame.path.clone();
    while let Some((index, produced)) = undo.pending.pop() {
        let Some(compensation) = steps.get(index).and_then(|step| compensate.get(step)) else {
            continue;
        };
        undo.current = Some(index);
        let path = format!("{path}.c{index}");
        return enter_undo(cursor, frame, undo, compensation.clone(), produced, path);
    }
    // (Called before the handler has run: its end closes the chain in `resume`.)
    if let Some(handler) = on_failure {
        let step = steps.get(undo.failed).map_or("", String::as_str);
        let input = handler_input(undo.failed, step, &undo.error, &undo.state);
        undo.current = None;
        let path = format!("{path}.f");
        return enter_undo(cursor, frame, undo, handler.clone(), input, path);
    }
    let error = undone(undo.error, undo.outcomes, None);
    close(cursor, frame, Err((undo.state, error)))
}

/// Runs `name` on `state` at `path` as the next move of undoing the chain of `frame`.
fn enter_undo(
    cursor: &mut Cursor,
    mut frame: Frame,
    undo: Undo,
    name: String,
    state: Value,
    path: String,
) -> Next {
    frame.at = At::Undo {
        undo: Box::new(undo),
    };
    cursor.frames.push(frame);
    Next::Enter { name, state, path }
}

/// Ends the workflow of `frame` with `outcome`: its result, reported to whatever
/// encloses it.
pub(crate) fn close(cursor: &mut Cursor, frame: Frame, outcome: Outcome) -> Next {
    close_fan_out(cursor, frame, outcome, None, Vec::new())
}

/// [`close`] for a fan-out, whose result carries a batch's every item's, or the failures a
/// parallel or graph went on past.
pub(crate) fn close_fan_out(
    cursor: &mut Cursor,
    frame: Frame,
    outcome: Outcome,
    items: Option<Vec<ExecutionResult>>,
    failures: Vec<StepFailure>,
) -> Next {
    cursor.scope.deadline_ms = frame.outer_deadline_ms;
    cursor.scope.parent = frame.outer_parent.clone();
    let mut info = info_for(cursor, &frame.execution, &frame.workflow);
    info.digest = Some(frame.digest.clone());
    info.attempts = 1;
    info.duration_us = now_us().saturating_sub(frame.started_us);
    info.fuel_consumed = frame.fuel;
    info.peak_memory_bytes = frame.peak_memory;
    Next::Done(Box::new(workflow_result(outcome, info, items, failures)))
}

pub(crate) fn info_for(cursor: &Cursor, execution: &str, name: &str) -> ExecutionInfo {
    ExecutionInfo::new(
        Some(execution.to_string()),
        name,
        cursor.scope.tenant.clone(),
        cursor.scope.session.clone(),
    )
}

/// What runs first in `workflow`, which `frame` now tracks.
pub(crate) fn open(
    cursor: &mut Cursor,
    workflow: &Workflow,
    frame: &mut Frame,
    state: Value,
) -> Next {
    let path = frame.path.clone();
    match workflow.composition() {
        Composition::Chain { steps, .. } => {
            frame.at = At::Chain { index: 0 };
            cursor.frames.push(frame.clone());
            Next::Enter {
                name: steps[0].clone(),
                state,
                path: format!("{path}.0"),
            }
        }
        Composition::Route {
            selector: Selector::Pointer(pointer),
            routes,
            fallback,
        } => {
            let key = state.pointer(pointer).and_then(key_of);
            let missing = missing_key(&Selector::Pointer(pointer.clone()));
            match choose_route(workflow, routes, fallback.as_deref(), &key, missing) {
                Ok(target) => {
                    let target = target.to_string();
                    frame.at = At::Route {
                        key,
                        target: target.clone(),
                    };
                    cursor.frames.push(frame.clone());
                    Next::Enter {
                        name: target,
                        state,
                        path: format!("{path}.r"),
                    }
                }
                Err(error) => close(cursor, frame.clone(), Err((state, error))),
            }
        }
        Composition::Route {
            selector: Selector::Processor(selector),
            ..
        } => {
            frame.at = At::Selector {
                input: state.clone(),
            };
            cursor.frames.push(frame.clone());
            Next::Enter {
                name: selector.clone(),
                state,
                path: format!("{path}.s"),
            }
        }
        // Fan-outs open as flows (`open_fan_out`), never here.
        Composition::Parallel { .. } | Composition::Batch { .. } | Composition::Graph { .. } => {
            let error = ExecutionError::host(
                ErrorKind::Configuration,
                codes::NOT_AVAILABLE,
                format!("`{}` is a fan-out opened as a step", workflow.name()),
            );
            close(cursor, frame.clone(), Err((state, error)))
        }
    }
}
