//! An in-process [`StepRunner`] for tests of the composition drivers: each "processor" is a
//! Rust function of the state (or a step that runs until it is cancelled), with no plugin
//! and no sandbox. The local driver's tests run workflows over it; the distributed
//! driver's tests run their steps through [`Fake::result_of`] and check their results
//! against the local driver over the same fake.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::StepRunner;
use super::rules::workflow_result;
use crate::contract::cancel::{CancelHandle, CancelReason};
use crate::contract::error::{ErrorKind, ExecutionError, codes};
use crate::contract::limits::LimitOverrides;
use crate::contract::result::{ExecutionInfo, ExecutionResult};
use crate::execution::executor::{Scope, failed};

/// What a fake processor does with its input.
#[derive(Clone, Copy)]
pub(crate) enum Step {
    /// Returns this function of the input (an error fails the step).
    Map(fn(Value) -> Result<Value, ExecutionError>),
    /// Runs until its scope is cancelled, then fails as cancelled with the reason.
    UntilCancelled,
}

/// A step that was cancelled while it ran, and why.
pub(crate) type Cancelled = (String, Option<CancelReason>);

/// Fake processors by name; records which ran, and how each cancelled one was cancelled.
#[derive(Clone)]
pub(crate) struct Fake {
    pub(crate) steps: Arc<BTreeMap<&'static str, Step>>,
    ran: Arc<Mutex<Vec<String>>>,
    /// Where each step that ran was placed in its workflow (`Scope::step`), in run order.
    places: Arc<Mutex<Vec<Option<String>>>>,
    cancelled: Arc<Mutex<Vec<Cancelled>>>,
    /// How many steps have started, for a test to wait on.
    pub(crate) started: Arc<tokio::sync::watch::Sender<usize>>,
    pub(crate) max_items: usize,
}

/// Every fake step burns this much fuel, so a workflow's cost can be checked.
pub(crate) const FUEL: u64 = 7;

impl Fake {
    pub(crate) fn new(steps: &[(&'static str, Step)]) -> Fake {
        Fake {
            steps: Arc::new(steps.iter().copied().collect()),
            ran: Arc::default(),
            places: Arc::default(),
            cancelled: Arc::default(),
            started: Arc::new(tokio::sync::watch::channel(0).0),
            max_items: 100,
        }
    }

    pub(crate) fn ran(&self) -> Vec<String> {
        self.ran.lock().expect("not poisoned").clone()
    }

    /// The places of the steps that ran, sorted (`None` for a step placed nowhere).
    pub(crate) fn places(&self) -> Vec<Option<String>> {
        let mut places = self.places.lock().expect("not poisoned").clone();
        places.sort();
        places
    }

    pub(crate) fn cancelled(&self) -> Vec<Cancelled> {
        self.cancelled.lock().expect("not poisoned").clone()
    }

    /// What step `name` gives on `input` for `tenant`, at once: its function's result, or
    /// not found. For a driver that runs steps itself (the distributed one's tests); a
    /// step that waits for its cancellation has no such result.
    pub(crate) fn result_of(&self, name: &str, input: Value, tenant: &str) -> ExecutionResult {
        let mut info = ExecutionInfo::new(None, name, tenant, None);
        info.fuel_consumed = FUEL;
        match self.steps.get(name).copied() {
            None => failed(
                input,
                ExecutionError::host(
                    ErrorKind::NotFound,
                    codes::PROCESSOR_NOT_FOUND,
                    format!("no `{name}`"),
                ),
                info,
            ),
            Some(Step::Map(f)) => workflow_result(
                f(input.clone()).map_err(|e| (input, e)),
                info,
                None,
                Vec::new(),
            ),
            Some(Step::UntilCancelled) => panic!("`{name}` waits for a cancellation"),
        }
    }
}

impl StepRunner for Fake {
    fn run_step<'a>(
        &'a self,
        name: &'a str,
        input: Value,
        scope: Scope,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ExecutionResult> + Send + 'a>> {
        Box::pin(async move {
            let mut info = ExecutionInfo::new(None, name, &*scope.tenant, None);
            // As the executor does: a step cancelled before it starts never runs.
            if scope.cancel.is_cancelled() {
                let error = ExecutionError::host(ErrorKind::Cancelled, "cancelled", "cancelled");
                return failed(input, error, info);
            }
            self.ran
                .lock()
                .expect("not poisoned")
                .push(name.to_string());
            self.places
                .lock()
                .expect("not poisoned")
                .push(scope.step.as_deref().map(str::to_string));
            self.started.send_modify(|n| *n += 1);
            info.fuel_consumed = FUEL;
            match self.steps.get(name).copied() {
                Some(Step::UntilCancelled) => {
                    scope.cancel.cancelled().await;
                    let reason = scope.cancel.reason();
                    self.cancelled
                        .lock()
                        .expect("not poisoned")
                        .push((name.to_string(), reason));
                    let error =
                        ExecutionError::host(ErrorKind::Cancelled, "cancelled", "cancelled");
                    failed(input, error, info)
                }
                _ => self.result_of(name, input, &scope.tenant),
            }
        })
    }

    fn max_batch_items(&self) -> usize {
        self.max_items
    }
}

/// A top-level scope of tenant `acme`, cancelled by `cancel`.
pub(crate) fn scope(cancel: CancelHandle) -> Scope {
    Scope {
        tenant: Arc::from("acme"),
        session: None,
        depth: 0,
        deadline: None,
        cancel,
        limits: LimitOverrides::default(),
        parent: None,
        step: None,
        priority: None,
        max_attempts: None,
        progress: None,
        admission: None,
    }
}
