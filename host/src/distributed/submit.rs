//! Submitting a run: checking its id, pinning every name it may reach to the digest
//! published now, opening its record and counting it against its tenant, and adding its
//! first job (or flow) to the queues.

use std::collections::{BTreeMap, VecDeque};

use bullmq::FlowJob;

use super::advance::{Cursor, Next, Plan, Settled};
use super::content;
use super::handle::Distributed;
use super::runs::{RunStatus, record_authority};
use super::trust::Kind;
use super::wire::{Binding, StepJob, WireScope, now_ms};
use crate::contract::error::{Error, ErrorKind, ExecutionError, codes};
use crate::contract::result::{ExecutionInfo, ExecutionResult};
use crate::contract::workflow::near_names;
use crate::execution::executor::failed;
use crate::execution::request::ExecutionRequest;

/// How long a tenant's count of runs going outlives its last submission, in milliseconds:
/// a count that a lost run left too high is forgotten once the tenant has been quiet this
/// long.
const GOING_KEPT_MS: u64 = 3_600_000;

/// What submitting a run gave.
#[derive(Debug)]
pub(crate) enum Submitted {
    /// The run is on its way: its id.
    Run(String),
    /// The request's idempotency key stands for this earlier run of the same request.
    Repeat(String),
    /// Nothing runs: the result of a run that could not start (an unknown name), or the
    /// refusal of a key sent with another request.
    Ended(Box<ExecutionResult>),
}

impl Distributed {
    /// Submits a run of `request`; returns its id, the run its idempotency key stands for,
    /// or the result of a run that could not start (an unknown name).
    pub(crate) async fn submit(&self, mut request: ExecutionRequest) -> Result<Submitted, Error> {
        // One id for every try: a try that failed half-way is completed by the next.
        let run = request
            .id
            .get_or_insert_with(crate::contract::clock::new_execution_id)
            .clone();
        check_run_id(&run)?;
        // Marks this submission's record, so a retry recognises it and another is refused.
        let token = uuid::Uuid::now_v7().to_string();
        let input = std::mem::take(&mut request.input);
        // One submission time for every try, so the record a retry writes again says the
        // time of the run's entry in the fleet's index.
        let now = now_ms();
        super::advance::retrying(|| self.submit_once(&request, &run, &token, now, input.clone()))
            .await
    }

    async fn submit_once(
        &self,
        request: &ExecutionRequest,
        run: &str,
        token: &str,
        now: u64,
        input: serde_json::Value,
    ) -> Result<Submitted, Error> {
        let run = run.to_string();
        let tenant = request.tenant.clone().unwrap_or_else(|| "default".into());
        // The key's claim: this run, for this request (the key was checked by the caller).
        let fingerprint = request.idempotency_key.as_ref().map(|_| {
            crate::contract::idempotency::fingerprint(
                &request.processor,
                &input,
                request.session.as_deref(),
            )
        });
        let claim = request
            .idempotency_key
            .as_ref()
            .zip(fingerprint.as_deref())
            .map(|(key, fingerprint)| {
                (
                    self.keys.idempotency(&tenant, key),
                    format!("{run} {fingerprint}"),
                )
            });
        let key = self.keys.run(&run);
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
        if let Some(priority) = request.priority {
            record.push(("priority", priority.to_string()));
        }
        if self.seal.keyed() {
            let opened = RunStatus {
                id: run.clone(),
                target: request.processor.clone(),
                tenant: tenant.clone(),
                session: request.session.clone(),
                priority: request.priority,
                submitted_ms: now,
                deadline_ms: Some(deadline_ms),
                result: None,
                finished_ms: None,
                annex: None,
            };
            record.push((
                "mac",
                self.seal.sign(Kind::Record, &record_authority(&opened)),
            ));
        }
        // Unfinished runs are kept long (a finished one for the run retention).
        let unfinished = super::index::kept(&self.config).as_secs().max(1);
        let mut conn = self.conn();
        let mut pipe = redis::pipe();
        content::add_lookup(&mut pipe, &self.keys, &[request.processor.as_str()]);
        let going = self.keys.going(&tenant);
        let (claim_key, claim_value) = match &claim {
            Some((key, value)) => (key.clone(), value.as_str()),
            None => (self.keys.idempotency(&tenant, ""), ""),
        };
        let open = pipe
            .cmd("EVALSHA")
            .arg(self.open.get_hash())
            .arg(6)
            .arg(&key)
            .arg(&going)
            .arg(self.keys.run_index())
            .arg(self.keys.tenant_run_index(&tenant))
            .arg(self.keys.run_index_tenants())
            .arg(&claim_key);
        open.arg(token).arg(unfinished).arg(GOING_KEPT_MS);
        open.arg(&super::index::open_args(self, now, &run, &tenant)[..]);
        open.arg(claim_value)
            .arg(crate::contract::clock::millis(self.idempotency_window).max(1));
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
        if owned == -1 {
            let fingerprint = fingerprint.unwrap_or_default();
            return self
                .repeated(request, &claim_key, &fingerprint, input)
                .await;
        }
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
            let info = ExecutionInfo::new(
                Some(run.clone()),
                request.processor.clone(),
                tenant,
                request.session.clone(),
            );
            // What exists, as the local runtime says (best effort: the run fails anyway).
            let known = content::some_published_names(&mut conn, &self.keys, &self.seal, 100)
                .await
                .unwrap_or_default();
            let known: Vec<&str> = known.iter().map(String::as_str).collect();
            let error = ExecutionError::host(
                ErrorKind::NotFound,
                codes::PROCESSOR_NOT_FOUND,
                format!(
                    "no processor or workflow named `{}` is published to Redis{}; start a \
                     worker that has its plugin, or `weir plugins push` it",
                    request.processor,
                    near_names(
                        &request.processor,
                        &known,
                        "published",
                        "nothing is published yet"
                    )
                ),
            );
            // Nothing runs: the run ends here, failed, as every process of the fleet (and
            // its run index) sees it; it no longer counts as going.
            let result = failed(input, error, info);
            self.finish_run(&run, &result).await?;
            return Ok(Submitted::Ended(Box::new(result)));
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
        Ok(Submitted::Run(run))
    }

    /// The run an idempotency key (whose record is `claim_key`) stands for, or the refusal
    /// of a key sent with another request than its run's.
    async fn repeated(
        &self,
        request: &ExecutionRequest,
        claim_key: &str,
        fingerprint: &str,
        input: serde_json::Value,
    ) -> Result<Submitted, Error> {
        let mut conn = self.conn();
        let held: Option<String> = redis::cmd("GET")
            .arg(claim_key)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        let key = request.idempotency_key.as_deref().unwrap_or_default();
        let Some((run, theirs)) = held.as_deref().and_then(|held| held.split_once(' ')) else {
            // Its window ended between the claim and this read: the caller tries again.
            return Err(self.redis_error(format!(
                "idempotency key `{key}` changed while it was claimed; send the request again"
            )));
        };
        if theirs == fingerprint {
            return Ok(Submitted::Repeat(run.to_string()));
        }
        let error = crate::contract::idempotency::key_reused(key, run, self.idempotency_window);
        let mut refused = request.clone();
        refused.input = input;
        Ok(Submitted::Ended(Box::new(
            crate::execution::executor::refused(refused, error),
        )))
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
}

/// `plan` made to wait `delay` before it can run.
fn delayed(plan: Plan, delay: Option<std::time::Duration>) -> Plan {
    let Some(delay) = delay else { return plan };
    let ms = crate::contract::clock::millis(delay);
    match plan {
        Plan::Step(mut job) => {
            // A run that opens with a delay step waits for both.
            job.delay_ms = Some(job.delay_ms.unwrap_or(0).saturating_add(ms));
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
pub(super) fn collect_session_jobs(flow: &FlowJob, into: &mut Vec<(WireScope, String, String)>) {
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
