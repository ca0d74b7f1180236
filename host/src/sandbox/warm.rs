//! Warm instances: reused sandboxes for the plugins an operator opts in with `[warm]` in
//! their manifest. One pool per loaded plugin, split by tenant, so an instance only ever
//! serves executions of the tenant it was created for.
//!
//! What a reused instance carries from one execution to the next, honestly:
//! - **Kept** (the guest sees it): its linear memory, globals and tables — statics,
//!   caches, whatever its allocator left behind — and WASI resources it did not drop. A
//!   guest can therefore read anything an earlier execution **of the same tenant** left in
//!   memory, including another session's data of that tenant. Grant `[warm]` only to
//!   plugins whose authors you trust with that.
//! - **Reset by the host** before every execution: fuel, the deadline and epoch, the memory
//!   cap (the instance is discarded instead if it already holds more memory than the new
//!   execution may have), cancellation, the log sink and its rate limit, the caller's
//!   tenant, session and call depth, and the execution context passed to `process`.
//! - **Never shared**: across tenants (the pool is keyed by tenant), across plugin
//!   versions (each loaded plugin has its own pool, dropped when it is unloaded or
//!   replaced), or after anything abnormal: a trap, a limit hit (fuel, memory, timeout), a
//!   cancellation or a host-call deadline discards the instance.
//!
//! An instance is discarded after `max_executions` executions or `idle_timeout_ms` idle;
//! a tenant keeps at most `max_idle` idle instances of a plugin, and the engine at most
//! [`crate::EngineConfig::max_warm_instances`] in all. Idle instances are dropped lazily:
//! an expired one goes when its tenant next takes or returns one, or when the engine's
//! allowance is spent and its plugin's pool sheds every expired instance. There is no timer,
//! so an instance of a plugin nobody runs again stays (within the allowance) until the
//! plugin is replaced or removed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use wasmtime::Store;

use crate::contract::manifest::WarmPolicy;
use crate::sandbox::Sandbox;
use crate::sandbox::bindings::Processor;

/// The engine-wide allowance of idle warm instances: each idle instance holds a pool slot
/// reserved for it, so the allowance must match what the pool was sized for.
pub(crate) struct WarmBudget {
    max: usize,
    idle: AtomicUsize,
}

impl WarmBudget {
    pub(crate) fn new(max: usize) -> Arc<WarmBudget> {
        Arc::new(WarmBudget {
            max,
            idle: AtomicUsize::new(0),
        })
    }

    /// A place for one more idle instance, if the allowance has one.
    fn try_take(self: &Arc<Self>) -> Option<Ticket> {
        self.idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Ticket(self.clone()))
    }

    /// Idle instances held right now.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle.load(Ordering::Acquire)
    }
}

/// One idle instance's place in the [`WarmBudget`], given back when it is dropped.
struct Ticket(Arc<WarmBudget>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.idle.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A live instance between executions: its store and its bound exports.
pub(crate) struct WarmInstance {
    pub(crate) store: Store<Sandbox>,
    pub(crate) processor: Processor,
    /// Executions it has served.
    pub(crate) uses: u32,
}

struct Idle {
    instance: WarmInstance,
    since: Instant,
    _ticket: Ticket,
}

/// Tenant stacks a pool keeps (empty ones included) before it sheds the empty ones.
const MAX_TENANT_STACKS: usize = 256;

/// One plugin's idle instances, by tenant.
pub(crate) struct WarmPool {
    policy: WarmPolicy,
    budget: Arc<WarmBudget>,
    idle: Mutex<HashMap<Arc<str>, Vec<Idle>>>,
}

impl WarmPool {
    pub(crate) fn new(policy: WarmPolicy, budget: Arc<WarmBudget>) -> WarmPool {
        WarmPool {
            policy,
            budget,
            idle: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Vec<Idle>>> {
        // The map holds no invariant a panicking holder could break half-way.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle instance of `tenant`, if one is there and fresh enough
    /// at `now`.
    pub(crate) fn take(&self, tenant: &str, now: Instant) -> Option<WarmInstance> {
        let timeout = self.policy.idle_timeout();
        let mut expired = Vec::new();
        let found = {
            let mut idle = self.lock();
            let stack = idle.get_mut(tenant)?;
            let found = loop {
                match stack.pop() {
                    None => break None,
                    Some(entry) if now.duration_since(entry.since) > timeout => expired.push(entry),
                    Some(entry) => break Some(entry.instance),
                }
            };
            // An emptied stack stays (the next `put` reuses it); `put` sheds empty ones when
            // many tenants have come and gone.
            found
        };
        // Dropping a store frees its instance: done outside the lock.
        drop(expired);
        found
    }

    /// Keeps `instance`, idle since `now`, for `tenant`'s next execution, unless it has
    /// served its `max_executions`, the tenant already has `max_idle` idle ones, or the
    /// engine's allowance is spent; then it is dropped.
    pub(crate) fn put(&self, tenant: &Arc<str>, instance: WarmInstance, now: Instant) {
        if instance.uses >= self.policy.max_executions {
            return;
        }
        let timeout = self.policy.idle_timeout();
        let ticket = match self.budget.try_take() {
            Some(ticket) => ticket,
            None => {
                // The allowance is spent: free what this pool holds past its idle timeout,
                // whichever tenant it was kept for, and try once more.
                self.shed_expired(now);
                match self.budget.try_take() {
                    Some(ticket) => ticket,
                    None => return,
                }
            }
        };
        let entry = Idle {
            instance,
            since: now,
            _ticket: ticket,
        };
        let mut idle = self.lock();
        if idle.len() > MAX_TENANT_STACKS {
            idle.retain(|_, stack| !stack.is_empty());
        }
        let stack = match idle.get_mut(&**tenant) {
            Some(stack) => stack,
            None => idle.entry(tenant.clone()).or_default(),
        };
        // Shed the expired ones, and keep at most `max_idle`.
        let mut dropped: Vec<Idle> = drain_expired(stack, now, timeout).collect();
        if stack.len() >= self.policy.max_idle as usize {
            dropped.push(entry);
        } else {
            stack.push(entry);
        }
        drop(idle);
        drop(dropped);
    }

    /// Drops every idle instance of any tenant that has waited past the idle timeout.
    fn shed_expired(&self, now: Instant) {
        let timeout = self.policy.idle_timeout();
        let mut expired = Vec::new();
        {
            let mut idle = self.lock();
            for stack in idle.values_mut() {
                expired.extend(drain_expired(stack, now, timeout));
            }
        }
        drop(expired);
    }
}

/// Takes out of `stack` the instances idle past `timeout`: the oldest, at the bottom.
fn drain_expired(
    stack: &mut Vec<Idle>,
    now: Instant,
    timeout: std::time::Duration,
) -> std::vec::Drain<'_, Idle> {
    let keep_from = stack
        .iter()
        .position(|e| now.duration_since(e.since) <= timeout)
        .unwrap_or(stack.len());
    stack.drain(..keep_from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_gives_out_at_most_its_allowance_and_takes_tickets_back() {
        let budget = WarmBudget::new(2);
        let a = budget.try_take().expect("first");
        let _b = budget.try_take().expect("second");
        assert!(budget.try_take().is_none(), "the allowance is 2");
        assert_eq!(budget.idle(), 2);
        drop(a);
        assert_eq!(budget.idle(), 1);
        assert!(budget.try_take().is_some());
    }

    #[test]
    fn a_zero_budget_never_keeps_anything() {
        let budget = WarmBudget::new(0);
        assert!(budget.try_take().is_none());
    }
}
