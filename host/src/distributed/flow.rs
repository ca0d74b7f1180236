//! How a run advances between jobs: entering a name (enqueue a step, or open a workflow and
//! enter its first step) and taking a finished step's result back through the workflows
//! around it (the next chain step, the route's target, or the workflow's own result) until
//! the run itself is done. The same rules as [`crate::compose`], written as a continuation
//! that lives in the job instead of a future that lives in a process.

use serde_json::Value;
use std::collections::BTreeMap;

use super::client::Distributed;
use super::wire::{At, Binding, FORMAT, Frame, StepJob, WireScope, earliest, now_ms, now_us};
use crate::compose::{choose_route, key_of, missing_key, route_failed, step_failed};
use crate::error::{Error, ErrorKind, ExecutionError, codes};
use crate::executor::failed;
use crate::result::{ExecutionInfo, ExecutionResult};
use crate::state;
use crate::workflow::{Composition, Selector, Workflow};

/// A run between two steps: who it runs for, what its names mean, and the workflows open
/// around the current step.
#[derive(Debug, Clone)]
pub(crate) struct Cursor {
    pub run: String,
    pub scope: WireScope,
    pub bindings: BTreeMap<String, Binding>,
    pub frames: Vec<Frame>,
}

/// What a run does next.
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
type Outcome = Result<Value, (Value, ExecutionError)>;

impl Distributed {
    /// Carries the run on from `next` until it waits on a queued step or is finished.
    /// Fails only when Redis does (the caller retries the whole move; every write in it is
    /// idempotent).
    pub(crate) async fn proceed(&self, mut cursor: Cursor, mut next: Next) -> Result<(), Error> {
        loop {
            next = match next {
                Next::Enter { name, state, path } => {
                    match self.enter(&mut cursor, name, state, path).await? {
                        Some(next) => next,
                        None => return Ok(()),
                    }
                }
                Next::Done(result) => match cursor.frames.pop() {
                    None => {
                        self.finish_run(&cursor.run, &result).await?;
                        return Ok(());
                    }
                    Some(frame) => self.step_done(&mut cursor, frame, *result).await?,
                },
            };
        }
    }

    /// Enqueues the step for a processor (returns `None`), or opens a workflow and says what
    /// runs first in it.
    async fn enter(
        &self,
        cursor: &mut Cursor,
        name: String,
        state: Value,
        path: String,
    ) -> Result<Option<Next>, Error> {
        let top = cursor.frames.is_empty() && path == "0";
        let execution = if top {
            cursor.run.clone()
        } else {
            uuid::Uuid::now_v7().to_string()
        };
        match cursor.bindings.get(&name).cloned() {
            Some(Binding::Processor { digest }) => {
                let job = StepJob {
                    weir: FORMAT,
                    run: cursor.run.clone(),
                    path,
                    execution,
                    processor: name,
                    digest,
                    state,
                    scope: cursor.scope.clone(),
                    bindings: cursor.bindings.clone(),
                    frames: cursor.frames.clone(),
                };
                self.enqueue(&job).await?;
                Ok(None)
            }
            Some(Binding::Workflow { digest }) => {
                let info = self.info_for(cursor, &execution, &name);
                let workflow = match self.workflow(&digest).await? {
                    Ok(workflow) => workflow,
                    Err(why) => {
                        let error = ExecutionError::host(
                            ErrorKind::Configuration,
                            codes::NOT_AVAILABLE,
                            why,
                        );
                        return Ok(Some(Next::Done(Box::new(failed(state, error, info)))));
                    }
                };
                let (input, metadata) =
                    match state::prepare_input(state, cursor.scope.session.as_deref()) {
                        Ok(prepared) => prepared,
                        Err(error) => {
                            return Ok(Some(Next::Done(Box::new(failed(
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
                };
                cursor.scope.deadline_ms = earliest(
                    cursor.scope.deadline_ms,
                    workflow.timeout_ms().map(|t| now_ms().saturating_add(t)),
                );
                cursor.scope.parent = Some(execution);
                Ok(Some(self.open(cursor, &workflow, &mut frame, state)))
            }
            None => {
                let info = self.info_for(cursor, &execution, &name);
                let error = ExecutionError::host(
                    ErrorKind::NotFound,
                    codes::PROCESSOR_NOT_FOUND,
                    format!(
                        "no processor or workflow named `{name}` was published to Redis when \
                         the run was submitted (start a worker with its plugin, or `weir \
                         plugins push` it)"
                    ),
                );
                Ok(Some(Next::Done(Box::new(failed(state, error, info)))))
            }
        }
    }

    /// What runs first in `workflow`, which `frame` now tracks.
    fn open(
        &self,
        cursor: &mut Cursor,
        workflow: &Workflow,
        frame: &mut Frame,
        state: Value,
    ) -> Next {
        let path = frame.path.clone();
        match workflow.composition() {
            Composition::Chain { steps } => {
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
                    Err(error) => self.close(cursor, frame.clone(), Err((state, error))),
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
            Composition::Parallel { .. }
            | Composition::Batch { .. }
            | Composition::Graph { .. } => {
                let error = ExecutionError::host(
                    ErrorKind::Configuration,
                    codes::NOT_AVAILABLE,
                    format!(
                        "`{}` is a {} workflow; the distributed runtime runs chains and routes \
                         so far (fan-out flows are being built): run it on the local runtime",
                        workflow.name(),
                        workflow.kind()
                    ),
                );
                self.close(cursor, frame.clone(), Err((state, error)))
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
        frame.fuel = frame.fuel.saturating_add(result.execution.fuel_consumed);
        frame.peak_memory = frame.peak_memory.max(result.execution.peak_memory_bytes);
        let workflow = match self.workflow(&frame.digest).await? {
            Ok(workflow) => workflow,
            Err(why) => {
                let error =
                    ExecutionError::host(ErrorKind::Configuration, codes::NOT_AVAILABLE, why);
                return Ok(self.close(cursor, frame, Err((result.state, error))));
            }
        };
        let path = frame.path.clone();
        let next = match (frame.at.clone(), workflow.composition()) {
            (At::Chain { index }, Composition::Chain { steps }) => match result.error {
                Some(error) => {
                    let error = step_failed(&workflow, "step", &steps[index], Some(index), error);
                    self.close(cursor, frame, Err((result.state, error)))
                }
                None if index + 1 < steps.len() => {
                    frame.at = At::Chain { index: index + 1 };
                    cursor.frames.push(frame);
                    Next::Enter {
                        name: steps[index + 1].clone(),
                        state: result.state,
                        path: format!("{path}.{}", index + 1),
                    }
                }
                None => self.close(cursor, frame, Ok(result.state)),
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
                    let error = step_failed(&workflow, "selector", name, None, error);
                    return Ok(self.close(cursor, frame, Err((input, error))));
                }
                let key = result.state.get("route").and_then(key_of);
                let chosen = choose_route(
                    &workflow,
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
                    Err(error) => self.close(cursor, frame, Err((input, error))),
                }
            }
            (At::Route { key, target }, Composition::Route { routes, .. }) => match result.error {
                Some(error) => {
                    let error = route_failed(&workflow, routes, &key, &target, error);
                    self.close(cursor, frame, Err((result.state, error)))
                }
                None => self.close(cursor, frame, Ok(result.state)),
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
                self.close(cursor, frame, Err((result.state, error)))
            }
        };
        Ok(next)
    }

    /// Ends the workflow of `frame` with `outcome`: its result, reported to whatever
    /// encloses it.
    fn close(&self, cursor: &mut Cursor, frame: Frame, outcome: Outcome) -> Next {
        cursor.scope.deadline_ms = frame.outer_deadline_ms;
        cursor.scope.parent = frame.outer_parent.clone();
        let mut info = self.info_for(cursor, &frame.execution, &frame.workflow);
        info.digest = Some(frame.digest.clone());
        info.attempts = 1;
        info.duration_us = now_us().saturating_sub(frame.started_us);
        info.fuel_consumed = frame.fuel;
        info.peak_memory_bytes = frame.peak_memory;
        Next::Done(Box::new(match outcome {
            Ok(state) => ExecutionResult {
                ok: true,
                state,
                error: None,
                execution: info,
                items: None,
            },
            Err((state, error)) => failed(state, error, info),
        }))
    }

    fn info_for(&self, cursor: &Cursor, execution: &str, name: &str) -> ExecutionInfo {
        ExecutionInfo::new(
            Some(execution.to_string()),
            name,
            cursor.scope.tenant.clone(),
            cursor.scope.session.clone(),
        )
    }
}
