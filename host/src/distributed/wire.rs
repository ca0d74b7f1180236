//! What travels between processes: a step job's payload (the state, who it runs for, the
//! pinned code, and the continuation of its run). The format is documented in
//! docs/distributed.md ("Job format"); `weir` is its version.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::trust::Fields;
pub(crate) use crate::contract::clock::now_ms;
use crate::contract::error::ExecutionError;
use crate::contract::limits::LimitOverrides;
use crate::contract::result::ExecutionInfo;

/// The version of the job format this build writes and reads.
pub(crate) const FORMAT: u32 = 1;

/// A step of a run, as a job on its processor's queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StepJob {
    /// The format version (always [`FORMAT`]); its presence marks a weir job.
    pub weir: u32,
    /// The run this step belongs to.
    pub run: String,
    /// The step's place in the run (`0`, `0.2`, `0.1.s`): with the run, the job's id.
    pub path: String,
    /// The id of this step's execution (the run's id for a run of one processor).
    pub execution: String,
    /// The processor to run.
    pub processor: String,
    /// The exact component the submitter meant.
    pub digest: String,
    /// The input state.
    pub state: Value,
    /// Who it runs for and within what bounds.
    pub scope: WireScope,
    /// Every name the run may reach, resolved when it was submitted.
    pub bindings: BTreeMap<String, Binding>,
    /// What happens after this step, innermost last.
    pub frames: Vec<Frame>,
    /// How long the job waits before it can run (the request's delay; first step only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// The fleet's signature of the job's authority ([`StepJob::authority`]); empty when
    /// the fleet runs without a key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
}

impl StepJob {
    /// The job's id: stable across retries and re-runs of the same step.
    pub(crate) fn job_id(&self) -> String {
        job_id(&self.run, &self.path)
    }

    /// Everything in the job that decides authority, as signed: who it runs for, which
    /// code, within what bounds, and what runs after it. Not its input state, nor the
    /// inputs the frames keep (data, not authority), nor its delay.
    pub(crate) fn authority(&self) -> Fields {
        let StepJob {
            weir,
            run,
            path,
            execution,
            processor,
            digest,
            state: _,
            scope,
            bindings,
            frames,
            delay_ms: _,
            mac: _,
        } = self;
        let mut fields = Fields::new();
        fields
            .u64(u64::from(*weir))
            .str(run)
            .str(path)
            .str(execution)
            .str(processor)
            .str(digest);
        scope.write(&mut fields);
        write_bindings(bindings, &mut fields);
        write_frames(frames, &mut fields);
        fields
    }

    /// The facts of this step's execution after `attempts` attempts.
    pub(crate) fn info(&self, attempts: u32) -> ExecutionInfo {
        let mut info = ExecutionInfo::new(
            Some(self.execution.clone()),
            self.processor.clone(),
            self.scope.tenant.clone(),
            self.scope.session.clone(),
        );
        info.digest = Some(self.digest.clone());
        info.attempts = attempts;
        info
    }
}

/// The name of weir's queue of chains' delay steps (never a processor's: names start with
/// a letter). Every worker serves it; a delay's job waits in its delayed set.
pub(crate) const DELAY_QUEUE: &str = "_delay";

impl StepJob {
    /// The queue its job goes to: its processor's, or for a delay step weir's own.
    pub(crate) fn queue(&self) -> &str {
        if crate::contract::workflow::delay_of(&self.processor).is_some() {
            DELAY_QUEUE
        } else {
            &self.processor
        }
    }
}

/// The id of the job at `path` in `run`.
pub(crate) fn job_id(run: &str, path: &str) -> String {
    format!("{run}-{path}")
}

/// The scope of an execution, as data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WireScope {
    pub tenant: String,
    pub session: Option<String>,
    /// When everything must be done by (Unix milliseconds).
    pub deadline_ms: Option<u64>,
    pub max_attempts: Option<u32>,
    pub priority: Option<u32>,
    pub limits: WireLimits,
    /// The execution that started this one (its workflow).
    pub parent: Option<String>,
    /// When the run was submitted (Unix milliseconds): a session stopped after it cancels
    /// it.
    #[serde(default)]
    pub submitted_ms: u64,
    /// The run's turn among its tenant's: how many of the tenant's runs were going when it
    /// was submitted. Among jobs of one priority, lower turns go first, so a tenant with
    /// many runs going does not hold back one with few.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub turn: u32,
}

impl WireScope {
    /// Writes the scope's every field (see [`StepJob::authority`]).
    pub(crate) fn write(&self, fields: &mut Fields) {
        let WireScope {
            tenant,
            session,
            deadline_ms,
            max_attempts,
            priority,
            limits,
            parent,
            submitted_ms,
            turn,
        } = self;
        let WireLimits {
            timeout_ms,
            memory_bytes,
            fuel,
            output_bytes,
        } = limits;
        fields
            .str(tenant)
            .opt_str(session.as_deref())
            .opt_u64(*deadline_ms)
            .opt_u64(max_attempts.map(u64::from))
            .opt_u64(priority.map(u64::from))
            .opt_u64(*timeout_ms)
            .opt_u64(*memory_bytes)
            .opt_u64(*fuel)
            .opt_u64(*output_bytes)
            .opt_str(parent.as_deref())
            .u64(*submitted_ms)
            .u64(u64::from(*turn));
    }
}

/// Writes every binding, in name order.
pub(crate) fn write_bindings(bindings: &BTreeMap<String, Binding>, fields: &mut Fields) {
    fields.u64(bindings.len() as u64);
    for (name, binding) in bindings {
        let (kind, digest) = match binding {
            Binding::Processor { digest } => ("processor", digest),
            Binding::Workflow { digest } => ("workflow", digest),
        };
        fields.str(name).str(kind).str(digest);
    }
}

/// Writes every frame's authority: where the run goes next. The inputs a route's selector
/// or a merge keeps are data, and are left out.
pub(crate) fn write_frames(frames: &[Frame], fields: &mut Fields) {
    fields.u64(frames.len() as u64);
    for frame in frames {
        frame.write(fields);
    }
}

impl Frame {
    fn write(&self, fields: &mut Fields) {
        let Frame {
            workflow,
            digest,
            execution,
            path,
            started_us,
            fuel,
            peak_memory,
            outer_deadline_ms,
            outer_parent,
            at,
            produced: _,
        } = self;
        fields
            .str(workflow)
            .str(digest)
            .str(execution)
            .str(path)
            .u64(*started_us)
            .u64(*fuel)
            .u64(*peak_memory)
            .opt_u64(*outer_deadline_ms)
            .opt_str(outer_parent.as_deref());
        match at {
            At::Chain { index } => fields.str("chain").u64(*index as u64),
            At::Selector { input: _ } => fields.str("selector"),
            At::Route { key, target } => fields.str("route").opt_str(key.as_deref()).str(target),
            At::Branch { join, node } => fields.str("branch").str(join).u64(*node as u64),
            At::Join => fields.str("join"),
            At::Merge { .. } => fields.str("merge"),
            At::Undo { undo } => fields
                .str("undo")
                .opt_u64(undo.current.map(|i| i as u64))
                .u64(undo.failed as u64),
        };
    }
}

fn is_zero(turn: &u32) -> bool {
    *turn == 0
}

/// Turns a queue tells apart within one priority; later turns share the last.
pub(crate) const TURNS: u32 = 256;

/// The highest priority number the distributed runtime tells apart (a higher one counts as
/// this): BullMQ's priorities stop at 2^21, and each priority holds [`TURNS`] turns.
pub(crate) const MAX_DISTRIBUTED_PRIORITY: u32 = (1 << 21) / TURNS - 1;

impl WireScope {
    /// BullMQ's priority for this scope's jobs: by priority first, then by turn. Priority
    /// 0 at turn 0 is BullMQ's own 0, its cheapest path.
    pub(crate) fn queue_priority(&self) -> u32 {
        let priority = self.priority.unwrap_or(0).min(MAX_DISTRIBUTED_PRIORITY);
        priority * TURNS + self.turn.min(TURNS - 1)
    }
}

/// A caller's limit overrides, as data.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WireLimits {
    pub timeout_ms: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub fuel: Option<u64>,
    pub output_bytes: Option<u64>,
}

impl From<LimitOverrides> for WireLimits {
    fn from(l: LimitOverrides) -> Self {
        WireLimits {
            timeout_ms: l.timeout_ms,
            memory_bytes: l.memory_bytes,
            fuel: l.fuel,
            output_bytes: l.output_bytes,
        }
    }
}

impl From<WireLimits> for LimitOverrides {
    fn from(l: WireLimits) -> Self {
        LimitOverrides {
            timeout_ms: l.timeout_ms,
            memory_bytes: l.memory_bytes,
            fuel: l.fuel,
            output_bytes: l.output_bytes,
        }
    }
}

/// What a name meant when the run was submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub(crate) enum Binding {
    /// A processor: this exact component.
    Processor { digest: String },
    /// A workflow: this exact definition.
    Workflow { digest: String },
}

/// A workflow in progress around the current step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Frame {
    /// The workflow's name and definition digest.
    pub workflow: String,
    pub digest: String,
    /// The workflow's own execution id, and where it sits in the run.
    pub execution: String,
    pub path: String,
    /// When it started (Unix microseconds) and what its steps have cost so far.
    pub started_us: u64,
    pub fuel: u64,
    pub peak_memory: u64,
    /// The deadline and parent outside the workflow, restored when it ends.
    pub outer_deadline_ms: Option<u64>,
    pub outer_parent: Option<String>,
    /// Where in the workflow the current step is.
    pub at: At,
    /// A chain's completed steps that name a compensation, with the state each produced
    /// (data, like a step's input: what undoing the chain runs on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub produced: Vec<(usize, Value)>,
}

/// A failed chain being undone: its compensations, then its failure handler.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Undo {
    /// The step whose compensation runs now (`None`: the failure handler runs).
    pub current: Option<usize>,
    /// The compensations still to run: the steps and the states they produced, in the
    /// order the steps ran (the last runs first).
    pub pending: Vec<(usize, Value)>,
    /// The step that failed, and the chain's error for it.
    pub failed: usize,
    pub error: ExecutionError,
    /// The chain's last good state.
    pub state: Value,
    /// How each compensation that ran ended, in order.
    pub outcomes: Vec<Value>,
}

/// The position inside a workflow.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub(crate) enum At {
    /// Running step `index` of a chain.
    Chain { index: usize },
    /// Running a route's selector processor on `input`.
    Selector { input: Value },
    /// Running the target a route chose.
    Route { key: Option<String>, target: String },
    /// The bottom of a fan-out's branch: its end is recorded for the join `join`.
    Branch { join: String, node: usize },
    /// A fan-out whose branches are running (in its join job).
    Join,
    /// Undoing a failed chain: a compensation, or its failure handler.
    Undo { undo: Box<Undo> },
    /// Running a parallel's custom merge on the results; `input` is the parallel's, and
    /// `failures` the ones its branches went on past (data, like `input`).
    Merge {
        input: Value,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        failures: Vec<crate::contract::result::StepFailure>,
    },
}

/// A fan-out's join job: runs once every branch has ended, then carries the run on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JoinJob {
    /// The format version (always [`FORMAT`]).
    pub weir: u32,
    /// The join's job id (also the key of its record).
    pub join: String,
    pub run: String,
    /// The fan-out workflow's frame.
    pub frame: Frame,
    /// The scope inside the fan-out.
    pub scope: WireScope,
    pub bindings: BTreeMap<String, Binding>,
    /// What encloses the fan-out, innermost last.
    pub frames: Vec<Frame>,
    /// The fleet's signature of the job ([`JoinJob::authority`]); empty without a key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
}

impl JoinJob {
    /// Everything in the join job, as signed (it holds no input: its branches' results
    /// are in its record).
    pub(crate) fn authority(&self) -> Fields {
        let JoinJob {
            weir,
            join,
            run,
            frame,
            scope,
            bindings,
            frames,
            mac: _,
        } = self;
        let mut fields = Fields::new();
        fields.u64(u64::from(*weir)).str(join).str(run);
        frame.write(&mut fields);
        scope.write(&mut fields);
        write_bindings(bindings, &mut fields);
        write_frames(frames, &mut fields);
        fields
    }
}

/// The join whose branch these frames are in (the innermost), if any.
pub(crate) fn enclosing_join(frames: &[Frame]) -> Option<&str> {
    frames.iter().rev().find_map(|frame| match &frame.at {
        At::Branch { join, .. } => Some(join.as_str()),
        _ => None,
    })
}

/// Now, in Unix microseconds.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros().try_into().unwrap_or(u64::MAX))
}

/// A Unix-milliseconds deadline as an instant of this process's clock.
pub(crate) fn instant_of(deadline_ms: u64) -> Instant {
    let now = now_ms();
    let now_instant = Instant::now();
    if deadline_ms >= now {
        now_instant + Duration::from_millis(deadline_ms - now)
    } else {
        now_instant
            .checked_sub(Duration::from_millis(now - deadline_ms))
            .unwrap_or(now_instant)
    }
}

/// The earlier of two optional deadlines.
pub(crate) fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_queue_priority_orders_by_priority_then_turn() {
        let scope = |priority: Option<u32>, turn: u32| WireScope {
            priority,
            turn,
            ..WireScope::default()
        };
        // The first turn at the default priority is BullMQ's 0: no priority at all.
        assert_eq!(scope(None, 0).queue_priority(), 0);
        assert_eq!(scope(Some(0), 0).queue_priority(), 0);
        assert!(scope(None, 1).queue_priority() < scope(None, 2).queue_priority());
        // Any turn at one priority goes before the first at the next.
        assert!(scope(Some(1), 0).queue_priority() > scope(None, u32::MAX).queue_priority());
        assert!(scope(Some(1), 5).queue_priority() < scope(Some(2), 0).queue_priority());
        // Within BullMQ's range, however high the priority and the turn.
        let last = scope(Some(u32::MAX), u32::MAX).queue_priority();
        assert_eq!(last, (1 << 21) - 1);
        assert_eq!(
            scope(Some(MAX_DISTRIBUTED_PRIORITY), TURNS - 1).queue_priority(),
            last
        );
    }

    /// A step of a chain, with a binding and a frame.
    fn sample_job() -> StepJob {
        StepJob {
            weir: FORMAT,
            run: "r1".into(),
            path: "0.1".into(),
            execution: "e1".into(),
            processor: "double".into(),
            digest: "ab".repeat(32),
            state: serde_json::json!({"value": 2}),
            scope: WireScope {
                tenant: "acme".into(),
                deadline_ms: Some(5),
                limits: WireLimits {
                    fuel: Some(9),
                    ..WireLimits::default()
                },
                ..WireScope::default()
            },
            bindings: BTreeMap::from([(
                "double".to_string(),
                Binding::Processor {
                    digest: "ab".repeat(32),
                },
            )]),
            frames: vec![Frame {
                workflow: "w".into(),
                digest: "cd".repeat(32),
                execution: "e0".into(),
                path: "0".into(),
                started_us: 1,
                fuel: 2,
                peak_memory: 3,
                outer_deadline_ms: None,
                outer_parent: None,
                at: At::Chain { index: 1 },
                produced: Vec::new(),
            }],
            delay_ms: None,
            mac: String::new(),
        }
    }

    #[test]
    fn a_step_job_round_trips_through_json() {
        let job = sample_job();
        let text = serde_json::to_string(&job).expect("serialises");
        let back: StepJob = serde_json::from_str(&text).expect("parses");
        assert_eq!(back.job_id(), "r1-0.1");
        assert_eq!(back.scope.limits.fuel, Some(9));
        assert!(matches!(back.frames[0].at, At::Chain { index: 1 }));
        assert_eq!(serde_json::to_string(&back).expect("serialises"), text);
    }

    #[test]
    fn a_jobs_authority_survives_its_trip_through_redis_and_leaves_its_input_out() {
        let mut job = sample_job();
        job.state = serde_json::json!({"value": 0.1, "big": 1e300});
        job.scope.session = Some("s:1".into());
        job.scope.priority = Some(3);
        job.scope.turn = 2;
        job.frames[0].outer_parent = Some("p".into());
        job.frames[0].at = At::Merge {
            input: serde_json::json!({"x": 1.0000000000000002}),
            failures: Vec::new(),
        };
        job.delay_ms = Some(10);
        // As a worker reads it: the job's JSON parsed into a value, then into a job.
        let value: Value = serde_json::from_str(&serde_json::to_string(&job).expect("serialises"))
            .expect("parses");
        let back = StepJob::deserialize(&value).expect("reads");
        assert_eq!(back.authority().0, job.authority().0);
        // Its input is data: another state, or another input kept by a frame, signs the same.
        let mut other = job.clone();
        other.state = serde_json::json!({"anything": true});
        other.frames[0].at = At::Merge {
            input: Value::Null,
            failures: Vec::new(),
        };
        other.delay_ms = None;
        assert_eq!(other.authority().0, job.authority().0);
        // Who it runs for, which code and what comes next are authority.
        let changes: [fn(&mut StepJob); 6] = [
            |j| j.scope.tenant = "victim".into(),
            |j| j.scope.session = None,
            |j| j.digest = "ef".repeat(32),
            |j| j.scope.limits.fuel = Some(u64::MAX),
            |j| j.frames[0].at = At::Chain { index: 0 },
            |j| {
                j.bindings.insert(
                    "x".into(),
                    Binding::Workflow {
                        digest: "00".repeat(32),
                    },
                );
            },
        ];
        for change in changes {
            let mut forged = job.clone();
            change(&mut forged);
            assert_ne!(forged.authority().0, job.authority().0);
        }
    }

    #[test]
    fn deadlines_convert_between_clocks() {
        let soon = now_ms() + 10_000;
        let left = instant_of(soon).saturating_duration_since(Instant::now());
        assert!(left > Duration::from_secs(9) && left <= Duration::from_secs(10));
        assert!(instant_of(0) <= Instant::now());
        assert_eq!(earliest(Some(3), Some(2)), Some(2));
        assert_eq!(earliest(None, Some(2)), Some(2));
    }
}
