//! Schedules on a runtime: the folder's (`[schedule.NAME]` tables) and the API's, fired by
//! this process's own timer on the local runtime, or by BullMQ's job schedulers on the
//! fleet's `_schedule` queue on the distributed one (this process upserts the folder's as
//! they change, and fires the ticks its worker takes). Either way a tick runs as a request
//! of its own: admitted to its tenant's quotas, skipped while the previous tick's run is
//! going (`overlap = "skip"`), announced as `schedule:fired` or `schedule:skipped`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::{RUNNING, Runtime};
use crate::contract::clock::now_ms;
use crate::contract::error::{ExecutionError, RuntimeError};
use crate::contract::limits::LimitOverrides;
use crate::contract::schedule::{LastTick, Origin, Overlap, Schedule};
use crate::execution::executor::Admission;
use crate::execution::request::{ExecutionRequest, OnAccept};
use crate::sandbox::events::{Event, EventKind};

/// The longest the local timer sleeps before looking at the folder's schedules again.
const RESCAN: Duration = Duration::from_secs(1);

/// A schedule, where it was declared, and its ticks.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatus {
    /// Its name (unique per tenant).
    pub name: String,
    /// The tenant its runs are for.
    pub tenant: String,
    /// Where it was declared.
    pub origin: Origin,
    /// Its fields as written.
    #[serde(flatten)]
    pub spec: crate::contract::schedule::ScheduleSpec,
    /// Its next tick, in milliseconds since the Unix epoch (none once past its end or its
    /// limit).
    pub next_ms: Option<u64>,
    /// Its ticks so far.
    pub ticks: u64,
    /// What its latest tick did.
    pub last: Option<LastTick>,
}

impl ScheduleStatus {
    fn new(
        schedule: &Schedule,
        origin: Origin,
        next_ms: Option<u64>,
        ticks: u64,
        last: Option<LastTick>,
    ) -> Self {
        ScheduleStatus {
            name: schedule.name().to_string(),
            tenant: schedule.tenant().to_string(),
            origin,
            spec: schedule.spec().clone(),
            next_ms,
            ticks,
            last,
        }
    }
}

/// What a tick's run is admitted with.
pub struct TickAdmitted {
    /// The limits its run gets (its tenant's ceilings).
    pub limits: LimitOverrides,
    /// What charges its fan-outs' items, if anyone counts them.
    pub items: Option<Arc<dyn Admission>>,
    /// Its place in its tenant's quotas, settled with the fuel it burned when it ends.
    pub place: Option<Box<dyn TickPlace>>,
}

/// A tick's place in its tenant's quotas.
#[async_trait::async_trait]
pub trait TickPlace: Send {
    /// The run ended having burned `fuel`: charge it and give the place back.
    async fn settle(self: Box<Self>, fuel: u64);
}

/// What admits schedules' ticks to their tenants' quotas: an embedding's (the HTTP
/// server's tenants, `weir_server::schedule_admission`), installed with
/// [`Runtime::charge_schedules`] on every server and worker. Without one, ticks are
/// charged nothing.
#[async_trait::async_trait]
pub trait TickAdmission: Send + Sync + std::fmt::Debug {
    /// Admits one run of `schedule`'s target for its tenant, or refuses it (the tick is
    /// skipped, with the refusal as the reason).
    async fn admit(&self, schedule: &Schedule) -> Result<TickAdmitted, ExecutionError>;
}

/// A runtime's schedules: those added through the API, and (local runtime) every
/// schedule's ticks; (distributed) the folder's schedules this process put in the fleet.
#[derive(Default)]
pub(crate) struct Schedules {
    state: Mutex<State>,
    wake: tokio::sync::Notify,
    admission: Mutex<Option<Arc<dyn TickAdmission>>>,
    /// Whether this process's timer (or, distributed, its folder sync) runs.
    driving: AtomicBool,
    /// What fires the fleet's ticks this process's worker takes (held here: the worker
    /// holds it weakly).
    #[cfg(feature = "redis")]
    fleet_ticks: Mutex<Option<Arc<dyn crate::distributed::Ticks>>>,
}

impl Schedules {
    /// Keeps what fires the ticks this process's worker takes.
    #[cfg(feature = "redis")]
    pub(super) fn fleet_ticks(&self, ticks: Arc<dyn crate::distributed::Ticks>) {
        *lock(&self.fleet_ticks) = Some(ticks);
    }
}

#[derive(Default)]
struct State {
    /// Added through the API (local runtime; the fleet keeps its own), by id.
    api: BTreeMap<String, Arc<Schedule>>,
    /// The folder's schedules last seen.
    seen: Option<Arc<BTreeMap<String, Arc<Schedule>>>>,
    /// Every schedule's ticks (local runtime), by id.
    ticks: BTreeMap<String, Ticking>,
    /// The folder's schedules this process put in the fleet, as put (distributed).
    #[cfg(feature = "redis")]
    declared: BTreeMap<String, Arc<Schedule>>,
}

/// One schedule's ticks on the local runtime.
struct Ticking {
    schedule: Arc<Schedule>,
    origin: Origin,
    previous: Option<u64>,
    next: Option<u64>,
    ticks: u64,
    last: Option<LastTick>,
    /// The run of its latest tick while it goes.
    going: Option<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a schedule was not added or removed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleRefused {
    /// It is not within this runtime's schedule bounds (interval, input).
    #[error("{0}")]
    Invalid(String),
    /// The plugins folder declares the schedule: it is changed or removed there.
    #[error("{0}")]
    Declared(String),
    /// Its tenant (or the runtime) has as many schedules as it may.
    #[error("{0}")]
    TooMany(String),
    /// The runtime could not do it (not started, Redis unreachable, …).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl Runtime {
    /// Charges schedules' ticks through `admission` from now on (see [`TickAdmission`]).
    pub fn charge_schedules(&self, admission: Arc<dyn TickAdmission>) {
        *lock(&self.schedules.admission) = Some(admission);
    }

    /// Every schedule (of `tenant`, if given): the folder's and the API's, with their next
    /// and latest ticks, by tenant then name.
    pub async fn schedules(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<ScheduleStatus>, RuntimeError> {
        let mut all = self.all_schedules().await?;
        all.retain(|s| tenant.is_none_or(|t| s.tenant == t));
        Ok(all)
    }

    async fn all_schedules(&self) -> Result<Vec<ScheduleStatus>, RuntimeError> {
        #[cfg(feature = "redis")]
        if let Some(distributed) = &self.distributed {
            let bounds = self.shared.config().schedules;
            let stored = distributed
                .stored_schedules(&bounds)
                .await
                .map_err(super::fleet::refusal)?;
            let mut all: Vec<ScheduleStatus> = stored
                .iter()
                .map(|s| {
                    ScheduleStatus::new(&s.schedule, s.origin, s.next_ms, s.ticks, s.last.clone())
                })
                .collect();
            all.sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
            return Ok(all);
        }
        self.sync_local(now_ms());
        let state = lock(&self.schedules.state);
        Ok(state
            .ticks
            .values()
            .map(|t| ScheduleStatus::new(&t.schedule, t.origin, t.next, t.ticks, t.last.clone()))
            .collect())
    }

    /// Adds (or replaces) a schedule through the API. Refused when the folder declares one
    /// of that name for its tenant, or when its tenant has as many schedules as it may.
    pub async fn add_schedule(
        &self,
        schedule: Schedule,
    ) -> Result<ScheduleStatus, ScheduleRefused> {
        let bounds = self.shared.config().schedules;
        // Checked against this runtime's bounds, whatever it was made with.
        Schedule::new(schedule.name(), schedule.spec().clone(), &bounds)
            .map_err(ScheduleRefused::Invalid)?;
        let id = schedule.id();
        let existing = self.all_schedules().await?;
        if let Some(folder) = existing.iter().find(|s| {
            s.origin == Origin::Folder && s.tenant == schedule.tenant() && s.name == schedule.name()
        }) {
            return Err(ScheduleRefused::Declared(format!(
                "the schedule `{}` is declared in the plugins folder's workflows.toml; change \
                 it there, or pick another name",
                folder.name
            )));
        }
        let replacing = existing
            .iter()
            .any(|s| s.tenant == schedule.tenant() && s.name == schedule.name());
        let of_tenant = existing
            .iter()
            .filter(|s| s.tenant == schedule.tenant())
            .count();
        if !replacing && of_tenant >= bounds.max_per_tenant {
            return Err(ScheduleRefused::TooMany(format!(
                "tenant `{}` has {of_tenant} schedules, the most it may (the host's schedule \
                 bounds); remove one first",
                schedule.tenant()
            )));
        }
        if !replacing && existing.len() >= bounds.max_total {
            return Err(ScheduleRefused::TooMany(format!(
                "this runtime has {} schedules, the most it may (the host's schedule bounds)",
                existing.len()
            )));
        }
        #[cfg(feature = "redis")]
        if let Some(distributed) = &self.distributed {
            distributed
                .upsert_schedule(&schedule, Origin::Api)
                .await
                .map_err(super::fleet::refusal)?;
            return self
                .schedules(Some(schedule.tenant()))
                .await?
                .into_iter()
                .find(|s| s.name == schedule.name())
                .ok_or_else(|| {
                    RuntimeError::Unavailable(format!("the schedule `{id}` did not stay in Redis"))
                        .into()
                });
        }
        lock(&self.schedules.state)
            .api
            .insert(id.clone(), Arc::new(schedule));
        self.sync_local(now_ms());
        self.schedules.wake.notify_one();
        let state = lock(&self.schedules.state);
        let ticking = state.ticks.get(&id).ok_or_else(|| {
            RuntimeError::InvalidRequest(format!("the schedule `{id}` was not taken"))
        })?;
        Ok(ScheduleStatus::new(
            &ticking.schedule,
            ticking.origin,
            ticking.next,
            ticking.ticks,
            ticking.last.clone(),
        ))
    }

    /// Removes a schedule added through the API; whether there was one. A schedule the
    /// folder declares is removed by removing its table from `workflows.toml`.
    pub async fn remove_schedule(&self, tenant: &str, name: &str) -> Result<bool, ScheduleRefused> {
        let existing = self.schedules(Some(tenant)).await?;
        let Some(found) = existing.iter().find(|s| s.name == name) else {
            return Ok(false);
        };
        if found.origin == Origin::Folder {
            return Err(ScheduleRefused::Declared(format!(
                "the schedule `{name}` is declared in the plugins folder's workflows.toml; \
                 remove its table there"
            )));
        }
        let id = crate::contract::schedule::schedule_id(tenant, name);
        #[cfg(feature = "redis")]
        if let Some(distributed) = &self.distributed {
            return distributed
                .remove_schedule(&id)
                .await
                .map_err(|e| super::fleet::refusal(e).into());
        }
        let removed = lock(&self.schedules.state).api.remove(&id).is_some();
        self.sync_local(now_ms());
        Ok(removed)
    }

    /// Starts this process's schedule timer (local runtime) or the folder's schedules' sync
    /// with the fleet (distributed), unless it runs; it ends when the runtime stops.
    pub(super) fn drive_schedules(&self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if self.schedules.driving.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = self.downgrade();
        tokio::spawn(async move {
            loop {
                let Some(runtime) = weak.upgrade() else {
                    return;
                };
                if runtime.lifecycle.load(Ordering::Acquire) != RUNNING {
                    runtime.schedules.driving.store(false, Ordering::Release);
                    return;
                }
                let wait = if runtime.is_distributed() {
                    runtime.sync_fleet().await;
                    RESCAN
                } else {
                    runtime.tick_local(now_ms())
                };
                let schedules = runtime.schedules.clone();
                drop(runtime);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = schedules.wake.notified() => {}
                }
            }
        });
    }

    /// Wakes the schedule timer (to see the runtime stopping, or a new schedule).
    pub(super) fn wake_schedules(&self) {
        self.schedules.wake.notify_one();
    }

    /// Brings the local ticks in line with the folder's and the API's schedules: new ones
    /// start ticking, changed ones keep their count and latest tick, gone ones stop.
    fn sync_local(&self, now: u64) {
        let folder = self.shared.registry().catalog().schedules.clone();
        let mut state = lock(&self.schedules.state);
        let same = state
            .seen
            .as_ref()
            .is_some_and(|seen| Arc::ptr_eq(seen, &folder));
        let mut wanted: BTreeMap<String, (Arc<Schedule>, Origin)> = BTreeMap::new();
        for schedule in folder.values() {
            wanted.insert(schedule.id(), (schedule.clone(), Origin::Folder));
        }
        for (id, schedule) in &state.api {
            // The folder's wins a clash (the API refuses one, but the file may come later).
            wanted
                .entry(id.clone())
                .or_insert_with(|| (schedule.clone(), Origin::Api));
        }
        if same
            && wanted.len() == state.ticks.len()
            && wanted.iter().all(|(id, (s, _))| {
                state
                    .ticks
                    .get(id)
                    .is_some_and(|t| Arc::ptr_eq(&t.schedule, s))
            })
        {
            return;
        }
        state.seen = Some(folder);
        let mut ticks = std::mem::take(&mut state.ticks);
        for (id, (schedule, origin)) in wanted {
            let ticking = match ticks.remove(&id) {
                Some(mut old) if old.schedule == schedule => {
                    old.schedule = schedule;
                    old.origin = origin;
                    old
                }
                Some(old) => {
                    let next = schedule.next_tick(None, now, old.ticks);
                    Ticking {
                        schedule,
                        origin,
                        previous: None,
                        next,
                        ticks: old.ticks,
                        last: old.last,
                        going: old.going,
                    }
                }
                None => Ticking {
                    next: schedule.next_tick(None, now, 0),
                    schedule,
                    origin,
                    previous: None,
                    ticks: 0,
                    last: None,
                    going: None,
                },
            };
            state.ticks.insert(id, ticking);
        }
    }

    /// Fires every local tick that is due; how long until the next one (at most
    /// [`RESCAN`], to see the folder change).
    fn tick_local(&self, now: u64) -> Duration {
        self.sync_local(now);
        let mut due = Vec::new();
        let mut soonest = now.saturating_add(crate::contract::clock::millis(RESCAN));
        {
            let mut state = lock(&self.schedules.state);
            for (id, ticking) in &mut state.ticks {
                let Some(next) = ticking.next else { continue };
                if next > now {
                    soonest = soonest.min(next);
                    continue;
                }
                ticking.previous = Some(next);
                ticking.ticks += 1;
                ticking.next = ticking.schedule.next_tick(Some(next), now, ticking.ticks);
                if let Some(next) = ticking.next {
                    soonest = soonest.min(next);
                }
                due.push((
                    id.clone(),
                    ticking.schedule.clone(),
                    next,
                    ticking.going.clone(),
                ));
            }
        }
        for (id, schedule, tick, going) in due {
            let runtime = self.clone();
            tokio::spawn(async move {
                // The tick's run is going from when it is taken on (before it begins) to
                // when it ends, so the next tick sees it whatever the order of the two.
                let track = {
                    let weak = runtime.downgrade();
                    let id = id.clone();
                    move |run: &str, going: bool| {
                        let Some(runtime) = weak.upgrade() else {
                            return;
                        };
                        let mut state = lock(&runtime.schedules.state);
                        let Some(t) = state.ticks.get_mut(&id) else {
                            return;
                        };
                        if going {
                            t.going = Some(run.to_string());
                        } else if t.going.as_deref() == Some(run) {
                            t.going = None;
                        }
                    }
                };
                let last = runtime.fire_tick(&schedule, tick, going, None, track).await;
                let mut state = lock(&runtime.schedules.state);
                if let Some(t) = state.ticks.get_mut(&id)
                    && t.last.as_ref().is_none_or(|l| l.tick_ms <= last.tick_ms)
                {
                    t.last = Some(last);
                }
            });
        }
        Duration::from_millis(soonest.saturating_sub(now_ms()))
    }

    /// Puts the folder's schedules in the fleet as they change, and removes from it those
    /// this process put there that the folder no longer declares. A failure is tried
    /// again at the next look.
    #[cfg(feature = "redis")]
    async fn sync_fleet(&self) {
        let Some(distributed) = &self.distributed else {
            return;
        };
        let folder = self.shared.registry().catalog().schedules.clone();
        let (seen, declared) = {
            let state = lock(&self.schedules.state);
            (state.seen.clone(), state.declared.clone())
        };
        if seen.as_ref().is_some_and(|seen| Arc::ptr_eq(seen, &folder)) {
            return;
        }
        let mut now_declared = BTreeMap::new();
        let mut failed = false;
        for schedule in folder.values() {
            let id = schedule.id();
            let changed = declared.get(&id).is_none_or(|put| put != schedule);
            if (changed || seen.is_none())
                && let Err(error) = distributed.upsert_schedule(schedule, Origin::Folder).await
            {
                tracing::warn!(schedule = %id, %error, "cannot put the schedule in the fleet");
                failed = true;
                continue;
            }
            now_declared.insert(id, schedule.clone());
        }
        let gone: std::collections::BTreeSet<&String> = declared
            .keys()
            .filter(|id| !now_declared.contains_key(*id))
            .collect();
        for id in gone {
            if let Err(error) = distributed.remove_schedule(id).await {
                tracing::warn!(schedule = %id, %error, "cannot remove the schedule from the fleet");
                failed = true;
                now_declared.insert(id.clone(), declared[id].clone());
            }
        }
        let mut state = lock(&self.schedules.state);
        state.declared = now_declared;
        if !failed {
            state.seen = Some(folder);
        }
    }

    #[cfg(not(feature = "redis"))]
    async fn sync_fleet(&self) {}

    /// Fires the tick at `tick_ms` of `schedule`: skipped while `going` (its previous
    /// tick's run) goes and it may not overlap, or when its tenant's quotas refuse it; else
    /// its run starts (under `key`, its idempotency key, if given), and `track` is told
    /// `(run, true)` once it is taken on and `(run, false)` when it ends. Returns what the
    /// tick did once its run has been taken on.
    pub(crate) async fn fire_tick(
        &self,
        schedule: &Schedule,
        tick_ms: u64,
        going: Option<String>,
        key: Option<String>,
        track: impl Fn(&str, bool) + Send + Sync + 'static,
    ) -> LastTick {
        let skipped = |reason: String| LastTick {
            tick_ms,
            run: None,
            skipped: Some(reason),
        };
        if schedule.overlap() == Overlap::Skip
            && let Some(run) = going
        {
            let reason = format!("the run of the previous tick, `{run}`, is still going");
            return self.announce(schedule, skipped(reason));
        }
        let admission = lock(&self.schedules.admission).clone();
        let admitted = match admission {
            Some(admission) => match admission.admit(schedule).await {
                Ok(admitted) => Some(admitted),
                Err(error) => return self.announce(schedule, skipped(error.message)),
            },
            None => None,
        };
        let mut request =
            ExecutionRequest::new(schedule.target(), schedule.input()).tenant(schedule.tenant());
        if let Some(session) = schedule.session() {
            request = request.session(session);
        }
        let mut place = None;
        if let Some(admitted) = admitted {
            request = request.limits(admitted.limits);
            if let Some(items) = admitted.items {
                request = request.admission(items);
            }
            place = admitted.place;
        }
        if let Some(key) = key {
            request = request.idempotency_key(key);
        }
        let track = Arc::new(track);
        let (accept, accepted) = tokio::sync::oneshot::channel::<String>();
        let accept = Mutex::new(Some(accept));
        let taken = track.clone();
        request = request.on_accept(OnAccept::new(move |run, _| {
            if let Some(accept) = lock(&accept).take() {
                taken(run, true);
                let _ = accept.send(run.to_string());
            }
        }));
        let runtime = self.clone();
        let outcome = tokio::spawn(async move {
            let outcome = runtime.execute(request).await;
            let fuel = outcome.as_ref().map_or(0, |r| r.execution.fuel_consumed);
            if let Some(place) = place {
                place.settle(fuel).await;
            }
            if let Ok(result) = &outcome {
                track(&result.execution.id, false);
            }
            outcome
        });
        match accepted.await {
            Ok(run) => {
                let last = LastTick {
                    tick_ms,
                    run: Some(run),
                    skipped: None,
                };
                self.announce(schedule, last)
            }
            // Refused before it was taken on: the reason is the outcome's.
            Err(_) => {
                let reason = match outcome.await {
                    Ok(Ok(result)) => result
                        .error
                        .map_or_else(|| "it ended before it began".to_string(), |e| e.message),
                    Ok(Err(error)) => error.to_string(),
                    Err(panic) => format!("it failed to start: {panic}"),
                };
                self.announce(schedule, skipped(reason))
            }
        }
    }

    /// Tells subscribers what a tick did (`schedule:fired` or `schedule:skipped`).
    fn announce(&self, schedule: &Schedule, last: LastTick) -> LastTick {
        let kind = if last.run.is_some() {
            EventKind::ScheduleFired
        } else {
            EventKind::ScheduleSkipped
        };
        let mut event = Event::new(kind, schedule.tenant(), schedule.session());
        event.execution_id = last.run.clone();
        event.processor = Some(schedule.target().to_string());
        let mut data = json!({ "schedule": schedule.name(), "tickMs": last.tick_ms });
        if let Some(reason) = &last.skipped {
            data["reason"] = json!(reason);
        }
        event.data = Some(data);
        self.shared.events().publish(event);
        last
    }
}

/// Fires the fleet's ticks that this process's worker takes, as this runtime's requests.
#[cfg(feature = "redis")]
pub(super) struct FleetTicks(pub(super) super::WeakRuntime);

#[cfg(feature = "redis")]
#[async_trait::async_trait]
impl crate::distributed::Ticks for FleetTicks {
    async fn fire(
        &self,
        schedule: Schedule,
        tick_ms: u64,
        previous_run: Option<String>,
    ) -> Result<LastTick, String> {
        let Some(runtime) = self.0.upgrade() else {
            return Err("the runtime has stopped".into());
        };
        let Some(distributed) = runtime.distributed.clone() else {
            return Err("the runtime is not distributed".into());
        };
        // The previous tick's run, if it goes on (only asked when it matters).
        let mut going = None;
        if schedule.overlap() == Overlap::Skip
            && let Some(run) = previous_run
            && distributed
                .run_going(&run)
                .await
                .map_err(|e| e.to_string())?
        {
            going = Some(run);
        }
        let key = schedule.tick_key(tick_ms);
        Ok(runtime
            .fire_tick(&schedule, tick_ms, going, Some(key), |_, _| {})
            .await)
    }
}
