//! The local runtime's idempotency keys: which run each (tenant, key) stands for within its
//! window, and that run's outcome for the requests that repeat it. Bounded in keys per
//! tenant, keys in all and bytes of outcomes kept ([`IdempotencyBounds`]); a key's entry
//! goes when its window ends. (The distributed runtime keeps its keys in Redis instead,
//! claimed with the run's record: `distributed/submit.rs`.)

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::contract::idempotency::IdempotencyBounds;
use crate::contract::result::ExecutionResult;

/// Where a key's run stands, as the requests repeating it see it.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    /// Still running.
    Running,
    /// Ended with this outcome.
    Done(Arc<ExecutionResult>),
    /// Ended, but its outcome was forgotten (past the bytes kept).
    Gone,
}

/// What a claim of a key found.
pub(crate) enum Claim {
    /// The key was free: the request runs, and reports its outcome through the ticket.
    New(Ticket),
    /// The key stands for run `run` of the same request: wait for its outcome on `slot`.
    /// (If the slot closes without one, that request was refused: claim again.)
    Repeat {
        run: String,
        slot: watch::Receiver<Slot>,
    },
    /// The key stands for run `run` of another request.
    Reused { run: String },
    /// The tenant (or the process) holds as many keys as it may.
    Full { limit: usize, per_tenant: bool },
}

type Id = (String, String);

/// The local runtime's keys.
#[derive(Debug)]
pub(crate) struct Keys {
    bounds: IdempotencyBounds,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<Id, Entry>,
    /// Keys in the order they were claimed (with their generation): the oldest window
    /// ends first.
    order: VecDeque<(Instant, Id, u64)>,
    per_tenant: HashMap<String, usize>,
    /// Outcomes kept, oldest first (with their entry's generation and size).
    kept: VecDeque<(Id, u64, usize)>,
    kept_bytes: usize,
    generation: u64,
}

#[derive(Debug)]
struct Entry {
    run: String,
    fingerprint: String,
    generation: u64,
    bytes: usize,
    slot: watch::Sender<Slot>,
}

impl Keys {
    pub(crate) fn new(bounds: IdempotencyBounds) -> Arc<Keys> {
        Arc::new(Keys {
            bounds,
            table: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `key` of `tenant` for run `run` of the request `fingerprint` names.
    pub(crate) fn claim(
        self: &Arc<Self>,
        tenant: &str,
        key: &str,
        fingerprint: &str,
        run: &str,
    ) -> Claim {
        let now = Instant::now();
        let mut table = self.lock();
        table.expire(now, self.bounds.window);
        let id = (tenant.to_string(), key.to_string());
        if let Some(entry) = table.entries.get(&id) {
            return if entry.fingerprint == fingerprint {
                Claim::Repeat {
                    run: entry.run.clone(),
                    slot: entry.slot.subscribe(),
                }
            } else {
                Claim::Reused {
                    run: entry.run.clone(),
                }
            };
        }
        let held = table.per_tenant.get(tenant).copied().unwrap_or(0);
        if held >= self.bounds.max_keys_per_tenant {
            return Claim::Full {
                limit: self.bounds.max_keys_per_tenant,
                per_tenant: true,
            };
        }
        if table.entries.len() >= self.bounds.max_keys {
            return Claim::Full {
                limit: self.bounds.max_keys,
                per_tenant: false,
            };
        }
        table.generation += 1;
        let generation = table.generation;
        *table.per_tenant.entry(tenant.to_string()).or_default() += 1;
        table.order.push_back((now, id.clone(), generation));
        table.entries.insert(
            id.clone(),
            Entry {
                run: run.to_string(),
                fingerprint: fingerprint.to_string(),
                generation,
                bytes: 0,
                slot: watch::channel(Slot::Running).0,
            },
        );
        Claim::New(Ticket {
            keys: self.clone(),
            id,
            generation,
            finished: false,
        })
    }

    /// How many keys are held (for tests and stats).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().entries.len()
    }

    /// How many records the expiry and eviction queues hold.
    #[cfg(test)]
    fn queued(&self) -> (usize, usize) {
        let table = self.lock();
        (table.order.len(), table.kept.len())
    }
}

impl Table {
    /// Drops the entries whose window has ended.
    fn expire(&mut self, now: Instant, window: std::time::Duration) {
        while let Some((claimed, _, _)) = self.order.front() {
            if now.saturating_duration_since(*claimed) < window {
                break;
            }
            if let Some((_, id, generation)) = self.order.pop_front() {
                self.remove(&id, generation);
            }
        }
    }

    /// Removes entry `id` if it is still of `generation`.
    fn remove(&mut self, id: &Id, generation: u64) {
        if self
            .entries
            .get(id)
            .is_none_or(|entry| entry.generation != generation)
        {
            return;
        }
        if let Some(entry) = self.entries.remove(id) {
            self.kept_bytes -= entry.bytes;
            if let Some(count) = self.per_tenant.get_mut(&id.0) {
                *count -= 1;
                if *count == 0 {
                    self.per_tenant.remove(&id.0);
                }
            }
        }
        self.compact();
    }

    /// Drops the queues' records of entries that are gone (freed, expired, or for `kept`
    /// forgotten) once they outnumber the live ones twice over: each queue holds at most
    /// about twice the keys held, and a record is compacted away once, so the work per
    /// key stays constant.
    fn compact(&mut self) {
        let most = self.entries.len() * 2 + 64;
        let entries = &self.entries;
        let live = |id: &Id, generation: u64| {
            entries
                .get(id)
                .is_some_and(|entry| entry.generation == generation)
        };
        if self.order.len() > most {
            self.order
                .retain(|(_, id, generation)| live(id, *generation));
        }
        if self.kept.len() > most {
            self.kept.retain(|(id, generation, _)| {
                live(id, *generation) && entries.get(id).is_some_and(|entry| entry.bytes > 0)
            });
        }
    }
}

/// A claimed key's run: [`Ticket::finish`] keeps its outcome for the requests repeating it;
/// dropped without it (the request was refused before it ran), the key is free again.
pub(crate) struct Ticket {
    keys: Arc<Keys>,
    id: Id,
    generation: u64,
    finished: bool,
}

impl Ticket {
    /// Keeps `result` as the key's outcome, forgetting the oldest outcomes past the bytes
    /// kept.
    pub(crate) fn finish(mut self, result: &ExecutionResult) {
        self.finished = true;
        let bytes = serde_json::to_vec(&result.document()).map_or(0, |text| text.len());
        let max = self.keys.bounds.max_kept_bytes;
        let mut table = self.keys.lock();
        let table = &mut *table;
        let Some(entry) = table.entries.get_mut(&self.id) else {
            return;
        };
        if entry.generation != self.generation {
            return;
        }
        entry.bytes = bytes;
        entry
            .slot
            .send_replace(Slot::Done(Arc::new(result.clone())));
        table.kept_bytes += bytes;
        table
            .kept
            .push_back((self.id.clone(), self.generation, bytes));
        while table.kept_bytes > max {
            let Some((id, generation, _)) = table.kept.pop_front() else {
                break;
            };
            if let Some(entry) = table.entries.get_mut(&id)
                && entry.generation == generation
            {
                table.kept_bytes -= entry.bytes;
                entry.bytes = 0;
                entry.slot.send_replace(Slot::Gone);
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.finished {
            // Dropping the entry closes its slot: whoever waits on it claims again.
            self.keys.lock().remove(&self.id, self.generation);
        }
    }
}

/// How waiting on a repeated key's run ended.
pub(crate) enum Waited {
    Done(Arc<ExecutionResult>),
    Gone,
    /// The run's request was refused before it ran: claim the key again.
    Free,
}

/// Waits for the outcome of the run `slot` follows.
pub(crate) async fn wait(mut slot: watch::Receiver<Slot>) -> Waited {
    loop {
        let now = slot.borrow_and_update().clone();
        match now {
            Slot::Done(result) => return Waited::Done(result),
            Slot::Gone => return Waited::Gone,
            Slot::Running => {
                if slot.changed().await.is_err() {
                    return Waited::Free;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::result::ExecutionInfo;
    use serde_json::json;
    use std::time::Duration;

    fn result(run: &str, padding: usize) -> ExecutionResult {
        ExecutionResult {
            ok: true,
            state: json!({"pad": "x".repeat(padding)}),
            error: None,
            execution: ExecutionInfo::new(Some(run.into()), "p", "t", None),
            items: None,
            failures: Vec::new(),
        }
    }

    fn keys(bounds: IdempotencyBounds) -> Arc<Keys> {
        Keys::new(bounds)
    }

    #[tokio::test]
    async fn a_repeated_key_waits_for_the_first_runs_outcome() {
        let keys = keys(IdempotencyBounds::default());
        let Claim::New(ticket) = keys.claim("t", "k", "f", "run-1") else {
            panic!("the first claim is new");
        };
        let Claim::Repeat { run, slot } = keys.claim("t", "k", "f", "run-2") else {
            panic!("the second claim repeats the first");
        };
        assert_eq!(run, "run-1");
        let waiting = tokio::spawn(wait(slot));
        ticket.finish(&result("run-1", 0));
        let Waited::Done(outcome) = waiting.await.unwrap() else {
            panic!("the outcome arrives");
        };
        assert_eq!(outcome.execution.id, "run-1");
        // Another tenant's same key is its own.
        assert!(matches!(keys.claim("u", "k", "f", "run-3"), Claim::New(_)));
    }

    #[test]
    fn a_key_sent_with_another_request_is_refused() {
        let keys = keys(IdempotencyBounds::default());
        let _ticket = keys.claim("t", "k", "f", "run-1");
        let Claim::Reused { run } = keys.claim("t", "k", "other", "run-2") else {
            panic!("another request under the key is refused");
        };
        assert_eq!(run, "run-1");
    }

    #[tokio::test]
    async fn a_request_refused_before_it_ran_frees_its_key() {
        let keys = keys(IdempotencyBounds::default());
        let Claim::New(ticket) = keys.claim("t", "k", "f", "run-1") else {
            panic!("new");
        };
        let Claim::Repeat { slot, .. } = keys.claim("t", "k", "f", "run-2") else {
            panic!("repeat");
        };
        drop(ticket);
        assert!(matches!(wait(slot).await, Waited::Free));
        assert!(matches!(keys.claim("t", "k", "f", "run-3"), Claim::New(_)));
    }

    #[test]
    fn keys_are_bounded_per_tenant_and_in_all_and_go_when_their_window_ends() {
        let bounds = IdempotencyBounds {
            max_keys_per_tenant: 2,
            max_keys: 3,
            ..IdempotencyBounds::default()
        };
        let keys = keys(bounds);
        let mut tickets = Vec::new();
        for key in ["a", "b"] {
            let Claim::New(ticket) = keys.claim("t", key, "f", key) else {
                panic!("new");
            };
            tickets.push(ticket);
        }
        assert!(matches!(
            keys.claim("t", "c", "f", "c"),
            Claim::Full {
                limit: 2,
                per_tenant: true
            }
        ));
        let Claim::New(ticket) = keys.claim("u", "a", "f", "u-a") else {
            panic!("another tenant has its own share");
        };
        tickets.push(ticket);
        assert!(matches!(
            keys.claim("v", "a", "f", "v-a"),
            Claim::Full {
                limit: 3,
                per_tenant: false
            }
        ));
        for (ticket, run) in tickets.drain(..).zip(["a", "b", "u-a"]) {
            ticket.finish(&result(run, 0));
        }
        assert_eq!(keys.held(), 3);
        // A window of nothing: every key has expired at the next claim.
        let keys = Keys::new(IdempotencyBounds {
            window: Duration::ZERO,
            ..bounds
        });
        let Claim::New(ticket) = keys.claim("t", "a", "f", "a") else {
            panic!("new");
        };
        ticket.finish(&result("a", 0));
        assert!(matches!(keys.claim("t", "a", "f", "again"), Claim::New(_)));
    }

    #[test]
    fn keys_freed_or_expired_leave_no_records_behind() {
        // Nine requests in ten refused before they ran: their keys are freed at once.
        let keys = keys(IdempotencyBounds::default());
        for n in 0..10_000 {
            let key = format!("k{n}");
            let Claim::New(ticket) = keys.claim("t", &key, "f", &key) else {
                panic!("new");
            };
            if n % 10 == 0 {
                ticket.finish(&result(&key, 0));
            }
        }
        assert_eq!(keys.held(), 1_000);
        let (order, _) = keys.queued();
        assert!(
            order <= 2 * 1_000 + 64,
            "claims queued for 1,000 keys: {order}"
        );
        // Keys whose window ends at once: each claim expires the ones before it.
        let keys = Keys::new(IdempotencyBounds {
            window: Duration::ZERO,
            ..IdempotencyBounds::default()
        });
        for n in 0..10_000 {
            let key = format!("k{n}");
            let Claim::New(ticket) = keys.claim("t", &key, "f", &key) else {
                panic!("new");
            };
            ticket.finish(&result(&key, 0));
        }
        assert!(keys.held() <= 1);
        let (order, kept) = keys.queued();
        assert!(
            order <= 64 && kept <= 64,
            "queued for one key: {order}, {kept}"
        );
    }

    #[tokio::test]
    async fn outcomes_past_the_bytes_kept_are_forgotten_oldest_first() {
        let keys = keys(IdempotencyBounds {
            max_kept_bytes: 3_000,
            ..IdempotencyBounds::default()
        });
        for key in ["a", "b"] {
            let Claim::New(ticket) = keys.claim("t", key, "f", key) else {
                panic!("new");
            };
            ticket.finish(&result(key, 1_000));
        }
        let Claim::New(ticket) = keys.claim("t", "c", "f", "c") else {
            panic!("new");
        };
        ticket.finish(&result("c", 1_000));
        let outcome = |key: &str| {
            let Claim::Repeat { slot, .. } = keys.claim("t", key, "f", "x") else {
                panic!("a finished key still stands for its run");
            };
            wait(slot)
        };
        assert!(
            matches!(outcome("a").await, Waited::Gone),
            "the oldest went"
        );
        assert!(matches!(outcome("c").await, Waited::Done(_)));
    }
}
