//! Admission per processor: at most `concurrency` attempts at once, at most `max` per rate
//! window, and among those waiting, the lowest priority number first; among waiting attempts
//! of one priority, tenants take turns (start-time fair queueing: a tenant with many attempts
//! waiting does not hold back one that has few), and each tenant's own go first come, first
//! served. Waiting honours the execution's deadline and cancellation, so queued work
//! can be dropped. A guest's nested call is not held back by its callee's concurrency limit
//! (its caller already holds a slot, and waiting could deadlock) but does respect its rate.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::oneshot;

use crate::contract::cancel::CancelHandle;
use crate::contract::limits::QueuePolicy;

/// Why admission failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The deadline passed while waiting.
    Deadline,
    /// The execution was cancelled while waiting.
    Cancelled,
}

/// An admitted attempt; dropping it frees its concurrency slot.
pub(crate) struct Admission {
    gate: Option<Arc<Gate>>,
    counted: bool,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take()
            && self.counted
        {
            let mut state = gate.lock();
            state.running -= 1;
            Gate::dispatch(&gate, &mut state);
        }
    }
}

struct Waiter {
    counts: bool,
    wake: oneshot::Sender<()>,
}

/// Where a waiting attempt stands: its priority, then its turn (its tenant's virtual start),
/// then its arrival.
type Place = (u32, u64, u64);

struct GateState {
    running: u32,
    /// Waiting attempts, best first.
    waiting: BTreeMap<Place, Waiter>,
    next: u64,
    /// The turn of the attempt started last.
    turn: u64,
    /// The last turn given to each tenant with attempts waiting (pruned once it is past).
    turns: HashMap<Arc<str>, u64>,
    tokens: f64,
    refilled: Instant,
    /// A timer is already set to dispatch when the next token is due.
    timer_set: bool,
}

impl GateState {
    /// Forgets the tenants whose last turn has come: they start afresh, so the map holds at
    /// most one entry per tenant with an attempt waiting.
    fn forget_past_turns(&mut self) {
        if self.waiting.is_empty() {
            self.turns.clear();
        } else if self.turns.len() > self.waiting.len() {
            let turn = self.turn;
            self.turns.retain(|_, last| *last > turn);
        }
    }
}

/// The admission gate of one processor.
pub(crate) struct Gate {
    policy: QueuePolicy,
    state: Mutex<GateState>,
}

impl Gate {
    fn new(policy: QueuePolicy) -> Arc<Gate> {
        Arc::new(Gate {
            policy,
            state: Mutex::new(GateState {
                running: 0,
                waiting: BTreeMap::new(),
                next: 0,
                turn: 0,
                turns: HashMap::new(),
                tokens: policy.rate_limit.map_or(0.0, |r| f64::from(r.max)),
                refilled: Instant::now(),
                timer_set: false,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refill(&self, state: &mut GateState) {
        if let Some(rate) = self.policy.rate_limit {
            let now = Instant::now();
            let per_token = rate.per.as_secs_f64() / f64::from(rate.max.max(1));
            let earned = now.duration_since(state.refilled).as_secs_f64() / per_token;
            state.tokens = (state.tokens + earned).min(f64::from(rate.max));
            state.refilled = now;
        }
    }

    /// Whether one more attempt may start now (`counts`: it takes a concurrency slot).
    fn may_start(&self, state: &GateState, counts: bool) -> bool {
        let slot_free = !counts || self.policy.concurrency.is_none_or(|c| state.running < c);
        let token = self.policy.rate_limit.is_none() || state.tokens >= 1.0;
        slot_free && token
    }

    fn take(&self, state: &mut GateState, counts: bool) {
        if counts {
            state.running += 1;
        }
        if self.policy.rate_limit.is_some() {
            state.tokens -= 1.0;
        }
    }

    /// Starts as many waiting attempts as the policy allows, best first; sets a timer for
    /// when the next rate token is due if one is needed.
    fn dispatch(gate: &Arc<Gate>, state: &mut GateState) {
        gate.refill(state);
        loop {
            let Some((&key, waiter)) = state.waiting.iter().next() else {
                return;
            };
            let counts = waiter.counts;
            if !gate.may_start(state, counts) {
                break;
            }
            let Some(waiter) = state.waiting.remove(&key) else {
                return;
            };
            state.turn = state.turn.max(key.1);
            // A waiter that gave up (cancelled, out of time) has dropped its receiver.
            if waiter.wake.send(()).is_ok() {
                gate.take(state, counts);
            }
        }
        state.forget_past_turns();
        let short_of_tokens = state.tokens < 1.0 && !state.waiting.is_empty();
        if let Some(rate) = gate.policy.rate_limit
            && short_of_tokens
            && !state.timer_set
        {
            let per_token = rate.per.as_secs_f64() / f64::from(rate.max.max(1));
            let wait = Duration::from_secs_f64(per_token * (1.0 - state.tokens));
            state.timer_set = true;
            let weak: Weak<Gate> = Arc::downgrade(gate);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                if let Some(gate) = weak.upgrade() {
                    let mut state = gate.lock();
                    state.timer_set = false;
                    Gate::dispatch(&gate, &mut state);
                }
            });
        }
    }

    /// Waits for admission.
    async fn admit(
        self: Arc<Gate>,
        tenant: &str,
        priority: u32,
        counts: bool,
        deadline: std::time::Instant,
        cancel: &CancelHandle,
    ) -> Result<Admission, Refused> {
        let (key, mut receiver) = {
            let mut state = self.lock();
            self.refill(&mut state);
            if state.waiting.is_empty() && self.may_start(&state, counts) {
                self.take(&mut state, counts);
                drop(state);
                return Ok(Admission {
                    gate: Some(self),
                    counted: counts,
                });
            }
            let (wake, receiver) = oneshot::channel();
            let floor = state.turn;
            let turn = match state.turns.get_mut(tenant) {
                Some(last) => {
                    *last = (*last).max(floor) + 1;
                    *last
                }
                None => {
                    state.turns.insert(Arc::from(tenant), floor + 1);
                    floor + 1
                }
            };
            let key = (priority, turn, state.next);
            state.next += 1;
            state.waiting.insert(key, Waiter { counts, wake });
            Gate::dispatch(&self, &mut state);
            (key, receiver)
        };
        // The receiver stays alive until we decide below, so a grant can never be lost.
        let refused = tokio::select! {
            woken = &mut receiver => {
                return Ok(match woken {
                    Ok(()) => Admission { gate: Some(self), counted: counts },
                    // The gate went away: nothing is held.
                    Err(_) => Admission { gate: None, counted: false },
                });
            }
            _ = tokio::time::sleep_until(deadline.into()) => Refused::Deadline,
            _ = cancel.cancelled() => Refused::Cancelled,
        };
        let still_waiting = {
            let mut state = self.lock();
            let removed = state.waiting.remove(&key).is_some();
            state.forget_past_turns();
            removed
        };
        if !still_waiting {
            // Granted in the meantime: hand the slot back (dropping the admission does).
            drop(Admission {
                gate: Some(self),
                counted: counts,
            });
        }
        Err(refused)
    }
}

/// Whose attempt asks for admission, and how urgently.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Turn<'a> {
    /// The tenant it runs for: among attempts of one priority, tenants take turns.
    pub(crate) tenant: &'a str,
    /// Lower numbers go first.
    pub(crate) priority: u32,
    /// A guest's nested call: it takes no concurrency slot (its caller holds one).
    pub(crate) nested: bool,
}

/// Every processor's gate.
#[derive(Default)]
pub(crate) struct Scheduler {
    gates: Mutex<HashMap<String, Arc<Gate>>>,
}

impl Scheduler {
    /// Admits one attempt of `processor` under `policy`.
    pub(crate) async fn admit(
        &self,
        processor: &str,
        policy: &QueuePolicy,
        turn: Turn<'_>,
        deadline: std::time::Instant,
        cancel: &CancelHandle,
    ) -> Result<Admission, Refused> {
        if policy.is_unlimited() {
            return Ok(Admission {
                gate: None,
                counted: false,
            });
        }
        let gate = {
            let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
            let gate = gates
                .entry(processor.to_string())
                .or_insert_with(|| Gate::new(*policy));
            // A reloaded plugin with another policy gets a fresh gate; attempts admitted by
            // the old one finish against it.
            if gate.policy != *policy {
                *gate = Gate::new(*policy);
            }
            gate.clone()
        };
        gate.admit(turn.tenant, turn.priority, !turn.nested, deadline, cancel)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::limits::RateLimit;

    fn far() -> std::time::Instant {
        std::time::Instant::now() + Duration::from_secs(60)
    }

    fn turn(priority: u32, nested: bool) -> Turn<'static> {
        Turn {
            tenant: "t",
            priority,
            nested,
        }
    }

    /// Takes the one slot of a processor allowed one attempt at a time.
    async fn hold(scheduler: &Scheduler) -> Admission {
        let cancel = CancelHandle::new();
        scheduler
            .admit("p", &one_at_a_time(), turn(0, false), far(), &cancel)
            .await
            .unwrap()
    }

    fn one_at_a_time() -> QueuePolicy {
        QueuePolicy {
            concurrency: Some(1),
            ..QueuePolicy::default()
        }
    }

    #[tokio::test]
    async fn a_full_processor_admits_the_next_attempt_when_one_ends() {
        let scheduler = Arc::new(Scheduler::default());
        let first = hold(&scheduler).await;
        let waiting = {
            let scheduler = scheduler.clone();
            tokio::spawn(async move {
                let cancel = CancelHandle::new();
                scheduler
                    .admit("p", &one_at_a_time(), turn(0, false), far(), &cancel)
                    .await
                    .is_ok()
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn the_lowest_priority_number_goes_first() {
        let order = start_order(&[("t", 9), ("t", 1), ("t", 5)]).await;
        assert_eq!(order, [("t", 1), ("t", 5), ("t", 9)]);
    }

    /// Admits, one at a time, attempts queued in `arrivals` order (tenant, priority) behind
    /// a running one; returns the order in which they started.
    async fn start_order(arrivals: &[(&'static str, u32)]) -> Vec<(&'static str, u32)> {
        let scheduler = Arc::new(Scheduler::default());
        let running = hold(&scheduler).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for &(tenant, priority) in arrivals {
            let scheduler = scheduler.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let cancel = CancelHandle::new();
                let turn = Turn {
                    tenant,
                    priority,
                    nested: false,
                };
                let admission = scheduler
                    .admit("p", &one_at_a_time(), turn, far(), &cancel)
                    .await
                    .unwrap();
                order.lock().unwrap().push((tenant, priority));
                drop(admission);
            }));
            // Let each one join the queue before the next.
            tokio::task::yield_now().await;
        }
        drop(running);
        for task in tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(order).unwrap().into_inner().unwrap()
    }

    #[tokio::test]
    async fn tenants_waiting_on_one_processor_take_turns() {
        let mut arrivals = vec![("flood", 0); 5];
        arrivals.extend([("victim", 0), ("other", 0), ("victim", 0)]);
        let order = start_order(&arrivals).await;
        let tenants: Vec<&str> = order.iter().map(|(tenant, _)| *tenant).collect();
        assert_eq!(
            tenants,
            [
                "flood", "victim", "other", "flood", "victim", "flood", "flood", "flood"
            ]
        );
    }

    #[tokio::test]
    async fn the_gate_forgets_tenants_once_their_turns_have_come() {
        let tenants: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
        let scheduler = Scheduler::default();
        let cancel = CancelHandle::new();
        let running = hold(&scheduler).await;
        let soon = std::time::Instant::now() + Duration::from_millis(20);
        for tenant in &tenants {
            let turn = Turn {
                tenant,
                priority: 0,
                nested: false,
            };
            let late = scheduler
                .admit("p", &one_at_a_time(), turn, soon, &cancel)
                .await;
            assert_eq!(late.err(), Some(Refused::Deadline));
        }
        drop(running);
        let gates = scheduler.gates.lock().unwrap();
        let state = gates["p"].lock();
        assert!(state.waiting.is_empty());
        assert!(state.turns.is_empty(), "{} tenants kept", state.turns.len());
    }

    #[tokio::test]
    async fn priority_still_comes_before_taking_turns() {
        let order = start_order(&[("a", 5), ("a", 5), ("b", 5), ("a", 1), ("b", 9)]).await;
        assert_eq!(order, [("a", 1), ("a", 5), ("b", 5), ("a", 5), ("b", 9)]);
    }

    #[tokio::test]
    async fn a_rate_limit_spaces_attempts_out() {
        let scheduler = Scheduler::default();
        let policy = QueuePolicy {
            rate_limit: Some(RateLimit {
                max: 2,
                per: Duration::from_millis(200),
            }),
            ..QueuePolicy::default()
        };
        let cancel = CancelHandle::new();
        let started = Instant::now();
        for _ in 0..4 {
            scheduler
                .admit("p", &policy, turn(0, false), far(), &cancel)
                .await
                .unwrap();
        }
        // Two at once, then one every 100 ms: the fourth waits 200 ms at least (how much
        // longer is the machine's business).
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    }

    #[tokio::test]
    async fn giving_up_in_the_queue_leaks_no_slot() {
        let scheduler = Scheduler::default();
        let cancel = CancelHandle::new();
        let running = hold(&scheduler).await;
        let impatient = CancelHandle::new();
        impatient.cancel();
        let refused = scheduler
            .admit("p", &one_at_a_time(), turn(0, false), far(), &impatient)
            .await;
        assert_eq!(refused.err(), Some(Refused::Cancelled));
        let soon = std::time::Instant::now() + Duration::from_millis(20);
        let late = scheduler
            .admit("p", &one_at_a_time(), turn(0, false), soon, &cancel)
            .await;
        assert_eq!(late.err(), Some(Refused::Deadline));
        drop(running);
        assert!(
            scheduler
                .admit("p", &one_at_a_time(), turn(0, false), far(), &cancel)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn nested_calls_skip_the_concurrency_limit() {
        let scheduler = Scheduler::default();
        let cancel = CancelHandle::new();
        let _held = hold(&scheduler).await;
        let soon = std::time::Instant::now() + Duration::from_millis(500);
        assert!(
            scheduler
                .admit("p", &one_at_a_time(), turn(0, true), soon, &cancel)
                .await
                .is_ok()
        );
    }
}
