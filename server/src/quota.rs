//! A tenant's quotas on the HTTP API: executions at once, executions, fuel and request
//! bytes per minute (token buckets that refill continuously), and ceilings on every
//! execution's memory and timeout. Over a quota, a request is refused before anything runs, with the time after
//! which it may succeed.
//!
//! Usage is counted by a [`Ledger`]: in the server's memory, or in Redis when the server
//! runs over the distributed runtime, so that every `weir serve` of a fleet draws on one
//! account per tenant. In Redis, each admitted execution holds a lease in the tenant's set
//! of running executions; the server renews its leases every few seconds, so a server that
//! dies gives its places back within [`LEASE_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use super::access::Tenant;
use weir::Admission;
use weir::LimitOverrides;
use weir::{ErrorKind, ExecutionError, codes};

/// What a tenant may use; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quotas {
    /// Executions running at once.
    pub concurrent: Option<u32>,
    /// Executions started per minute.
    pub executions_per_minute: Option<u32>,
    /// Fuel (WebAssembly instructions, roughly) burnt per minute.
    pub fuel_per_minute: Option<u64>,
    /// Bytes of request bodies read per minute: the host's own work on what a tenant sends
    /// (reading, parsing and keeping it), which fuel does not meter.
    pub bytes_per_minute: Option<u64>,
    /// The most memory any one execution gets.
    pub memory_bytes: Option<u64>,
    /// The longest any one execution may run, in milliseconds.
    pub timeout_ms: Option<u64>,
}

impl Quotas {
    /// Whether any quota counts usage (rather than only capping each execution).
    pub(crate) fn counted(&self) -> bool {
        self.concurrent.is_some()
            || self.executions_per_minute.is_some()
            || self.fuel_per_minute.is_some()
            || self.bytes_per_minute.is_some()
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        let zero = [
            ("concurrent", self.concurrent.map(u64::from)),
            (
                "executions_per_minute",
                self.executions_per_minute.map(u64::from),
            ),
            ("fuel_per_minute", self.fuel_per_minute),
            ("bytes_per_minute", self.bytes_per_minute),
            ("memory_bytes", self.memory_bytes),
            ("timeout_ms", self.timeout_ms),
        ]
        .into_iter()
        .find(|(_, value)| *value == Some(0));
        match zero {
            Some((name, _)) => Err(format!(
                "`{name}` must be above zero (leave it out for no limit)"
            )),
            None => Ok(()),
        }
    }
}

/// Which quota a request ran into, and when to try again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OverQuota {
    /// The quota's name as in `weir.toml`.
    pub quota: &'static str,
    /// Its value.
    pub limit: u64,
    /// When a retry may succeed.
    pub retry_after: Duration,
}

/// One tenant's quotas and what it is using of them.
#[derive(Debug)]
pub(crate) struct TenantQuota {
    quotas: Quotas,
    usage: Mutex<Usage>,
}

#[derive(Debug)]
struct Usage {
    running: u32,
    /// Executions that may start now (refills at `executions_per_minute` / 60 per second).
    executions: f64,
    /// Fuel that may still be burnt (refills likewise; negative after an expensive run).
    fuel: f64,
    /// Request bytes that may still be read (refills likewise; negative after a large
    /// body).
    bytes: f64,
    refilled: Instant,
}

impl TenantQuota {
    pub(crate) fn new(quotas: Quotas) -> TenantQuota {
        TenantQuota {
            usage: Mutex::new(Usage {
                running: 0,
                executions: quotas.executions_per_minute.map_or(0.0, f64::from),
                fuel: quotas.fuel_per_minute.map_or(0.0, |f| f as f64),
                bytes: quotas.bytes_per_minute.map_or(0.0, |b| b as f64),
                refilled: Instant::now(),
            }),
            quotas,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tenant's quotas.
    pub(crate) fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// The ceilings every execution of the tenant runs under.
    pub(crate) fn ceilings(&self) -> LimitOverrides {
        LimitOverrides {
            memory_bytes: self.quotas.memory_bytes,
            timeout_ms: self.quotas.timeout_ms,
            ..LimitOverrides::default()
        }
    }

    /// Takes a place for one execution, or says which quota is spent. The place is given
    /// back by [`TenantQuota::release`]. With `concurrent` false, the `concurrent` quota is
    /// not checked (a request that charges the rates only, such as stopping a session).
    pub(crate) fn admit(&self, now: Instant, concurrent: bool) -> Result<(), OverQuota> {
        let mut usage = self.lock();
        self.refill(&mut usage, now);
        if let Some(limit) = self.quotas.concurrent.filter(|_| concurrent)
            && usage.running >= limit
        {
            return Err(OverQuota {
                quota: "concurrent",
                limit: u64::from(limit),
                retry_after: Duration::from_secs(1),
            });
        }
        if let Some(limit) = self.quotas.executions_per_minute
            && usage.executions < 1.0
        {
            let per_second = f64::from(limit) / 60.0;
            return Err(OverQuota {
                quota: "executions_per_minute",
                limit: u64::from(limit),
                retry_after: wait_for(1.0 - usage.executions, per_second),
            });
        }
        if let Some(limit) = self.quotas.fuel_per_minute
            && usage.fuel <= 0.0
        {
            let per_second = limit as f64 / 60.0;
            return Err(OverQuota {
                quota: "fuel_per_minute",
                limit,
                retry_after: wait_for(-usage.fuel + 1.0, per_second),
            });
        }
        if let Some(limit) = self.quotas.bytes_per_minute
            && usage.bytes <= 0.0
        {
            let per_second = limit as f64 / 60.0;
            return Err(OverQuota {
                quota: "bytes_per_minute",
                limit,
                retry_after: wait_for(-usage.bytes + 1.0, per_second),
            });
        }
        usage.running += 1;
        if self.quotas.executions_per_minute.is_some() {
            usage.executions -= 1.0;
        }
        Ok(())
    }

    /// Charges `items` executions at once (a batch's items, about to start), all or none:
    /// refused, with when they would fit, if fewer are left this minute.
    pub(crate) fn admit_items(&self, items: usize, now: Instant) -> Result<(), OverQuota> {
        let Some(limit) = self.quotas.executions_per_minute else {
            return Ok(());
        };
        let mut usage = self.lock();
        self.refill(&mut usage, now);
        let wanted = items as f64;
        if usage.executions < wanted {
            let per_second = f64::from(limit) / 60.0;
            return Err(OverQuota {
                quota: "executions_per_minute",
                limit: u64::from(limit),
                retry_after: wait_for(wanted - usage.executions, per_second),
            });
        }
        usage.executions -= wanted;
        Ok(())
    }

    /// Gives back the place an admitted execution held, and charges what it used.
    pub(crate) fn release(&self, used: Used, now: Instant) {
        let mut usage = self.lock();
        self.refill(&mut usage, now);
        usage.running = usage.running.saturating_sub(1);
        if self.quotas.fuel_per_minute.is_some() {
            usage.fuel -= used.fuel as f64;
        }
        if self.quotas.bytes_per_minute.is_some() {
            usage.bytes -= used.bytes as f64;
        }
    }

    fn refill(&self, usage: &mut Usage, now: Instant) {
        let seconds = now.saturating_duration_since(usage.refilled).as_secs_f64();
        usage.refilled = now.max(usage.refilled);
        if let Some(limit) = self.quotas.executions_per_minute {
            let limit = f64::from(limit);
            usage.executions = (usage.executions + seconds * limit / 60.0).min(limit);
        }
        if let Some(limit) = self.quotas.fuel_per_minute {
            let limit = limit as f64;
            usage.fuel = (usage.fuel + seconds * limit / 60.0).min(limit);
        }
        if let Some(limit) = self.quotas.bytes_per_minute {
            let limit = limit as f64;
            usage.bytes = (usage.bytes + seconds * limit / 60.0).min(limit);
        }
    }
}

/// What an admitted request used, charged when its place is given back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Used {
    /// Fuel its execution burnt.
    pub fuel: u64,
    /// Bytes of its request body.
    pub bytes: u64,
}

/// Why a request was not admitted.
#[derive(Debug)]
pub(crate) enum Refused {
    /// A quota is spent.
    Over(OverQuota),
    /// The shared ledger (Redis) could not be reached.
    Unavailable(String),
}

/// Where tenants' usage is counted: this server's memory, or Redis shared by the fleet.
pub(crate) struct Ledger {
    redis: Option<Arc<RedisLedger>>,
}

impl Ledger {
    /// Counts usage in this server's memory.
    pub(crate) fn local() -> Ledger {
        Ledger { redis: None }
    }

    /// Counts usage in Redis under `prefix`, shared with every server using the same
    /// Redis and prefix; renews this server's leases in the background while it lives.
    /// Call within a Tokio runtime.
    pub(crate) fn redis(conn: ConnectionManager, prefix: String) -> Ledger {
        let ledger = Arc::new(RedisLedger {
            conn,
            prefix,
            live: Mutex::new(HashMap::new()),
        });
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(renew_leases(Arc::downgrade(&ledger)))),
            Err(_) => tracing::warn!(
                target: "weir::server",
                "no Tokio runtime: quota leases will not be renewed and lapse after {} s",
                LEASE_TTL.as_secs()
            ),
        }
        Ledger {
            redis: Some(ledger),
        }
    }

    /// Takes a place in `tenant`'s quotas, or says which quota is spent.
    pub(crate) async fn admit(&self, tenant: &Arc<Tenant>) -> Result<Admitted, Refused> {
        self.admit_as(tenant, true).await
    }

    /// Charges `tenant`'s rates (executions and fuel per minute) for one request that is
    /// not an execution and so needs no `concurrent` place, or says which quota is spent.
    /// Settle it when the request is done.
    pub(crate) async fn charge(&self, tenant: &Arc<Tenant>) -> Result<Admitted, Refused> {
        self.admit_as(tenant, false).await
    }

    /// Charges `items` executions to `tenant` at once (a batch's items, about to start),
    /// all or none: in Redis when the fleet counts there, else in this process.
    pub(crate) async fn admit_items(
        &self,
        tenant: &Arc<Tenant>,
        items: usize,
    ) -> Result<(), Refused> {
        match &self.redis {
            Some(ledger) if tenant.quota.quotas().executions_per_minute.is_some() => {
                ledger.admit_items(tenant, items).await
            }
            _ => tenant
                .quota
                .admit_items(items, Instant::now())
                .map_err(Refused::Over),
        }
    }

    async fn admit_as(&self, tenant: &Arc<Tenant>, concurrent: bool) -> Result<Admitted, Refused> {
        let lease = match &self.redis {
            Some(ledger) if tenant.quota.quotas().counted() => {
                Some(ledger.admit(tenant, concurrent).await?)
            }
            // Nothing to count (or no Redis): this server's own account, with no round trip.
            _ => {
                tenant
                    .quota
                    .admit(Instant::now(), concurrent)
                    .map_err(Refused::Over)?;
                None
            }
        };
        Ok(Admitted {
            tenant: tenant.clone(),
            used: Used::default(),
            lease,
            settled: false,
        })
    }
}

/// A place in a tenant's quotas, given back (with the fuel burnt charged) by
/// [`Admitted::settle`], or when dropped.
pub(crate) struct Admitted {
    tenant: Arc<Tenant>,
    used: Used,
    /// The place in Redis; none when this server's own account holds it.
    lease: Option<Lease>,
    settled: bool,
}

impl Admitted {
    /// Records the fuel the execution burnt, charged when the place is given back.
    pub(crate) fn charge(&mut self, fuel: u64) {
        self.used.fuel = fuel;
    }

    /// Records the bytes of the request's body, charged when the place is given back.
    pub(crate) fn charge_bytes(&mut self, bytes: u64) {
        self.used.bytes = self.used.bytes.saturating_add(bytes);
    }

    /// Gives the place back now, and waits until the ledger has it.
    pub(crate) async fn settle(mut self) {
        self.settled = true;
        match self.lease.take() {
            None => self.tenant.quota.release(self.used, Instant::now()),
            Some(lease) => lease.release(self.used).await,
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Not settled in place (a refused job, a panic).
        match self.lease.take() {
            None => self.tenant.quota.release(self.used, Instant::now()),
            Some(lease) => lease.release_later(self.used),
        }
    }
}

/// A place held in Redis: a lease in its tenant's set of running executions.
struct Lease {
    id: String,
    tenant: Arc<Tenant>,
    ledger: Arc<RedisLedger>,
}

impl Lease {
    /// Gives the place back, charging what was `used`.
    async fn release(self, used: Used) {
        self.ledger.release(&self.tenant, &self.id, used).await;
    }

    /// Gives the place back in the background (from a `Drop`). Without a runtime the lease
    /// simply lapses within [`LEASE_TTL`].
    fn release_later(self, used: Used) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.release(used));
        }
    }
}

/// A lease being asked for: taken out again if the asking does not finish (the request
/// went away, or Redis failed after the script may have run).
struct Asking(Option<Lease>);

impl Drop for Asking {
    fn drop(&mut self) {
        if let Some(lease) = self.0.take() {
            lease.release_later(Used::default());
        }
    }
}

/// How long a lease lasts without renewal: a server that dies frees its places after this.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often a server renews the leases it holds.
const LEASE_RENEWAL: Duration = Duration::from_secs(10);

/// Refills a tenant's buckets (hash `KEYS[1]`: `executions`, `fuel`, `bytes`, `refilled`
/// in ms) to Redis's clock `now`, for limits `epm`, `fpm` and `bpm` (negative: unlimited),
/// and drops the lapsed leases of its running set (`KEYS[2]`, scored by expiry).
const REFILL_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local bucket = redis.call('HMGET', KEYS[1], 'executions', 'fuel', 'refilled', 'bytes')
local executions = tonumber(bucket[1]) or epm
local fuel = tonumber(bucket[2]) or fpm
local bytes = tonumber(bucket[4]) or bpm
local seconds = math.max(0, now - (tonumber(bucket[3]) or now)) / 1000
if epm >= 0 then executions = math.min(epm, executions + seconds * epm / 60) end
if fpm >= 0 then fuel = math.min(fpm, fuel + seconds * fpm / 60) end
if bpm >= 0 then bytes = math.min(bpm, bytes + seconds * bpm / 60) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
";

/// Stores the buckets back; they lapse after an hour unused (full again by then, unless an
/// hour's fuel or more was overdrawn).
const STORE_LUA: &str = r"
redis.call('HSET', KEYS[1], 'executions', executions, 'fuel', fuel, 'bytes', bytes, 'refilled', now)
redis.call('PEXPIRE', KEYS[1], 3600000)
";

/// ARGV: concurrent, executions per minute, fuel per minute (each negative for none), the
/// lease id, its lifetime in ms, and bytes per minute (negative for none). Returns {0}
/// when admitted, else {quota, retry ms}: 1 concurrent, 2 executions per minute, 3 fuel
/// per minute, 4 bytes per minute.
fn admit_script() -> redis::Script {
    redis::Script::new(&format!(
        r"
local concurrent, epm, fpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local bpm = tonumber(ARGV[6])
{REFILL_LUA}
if concurrent >= 0 and redis.call('ZCARD', KEYS[2]) >= concurrent then return {{1, 1000}} end
if epm >= 0 and executions < 1 then
  return {{2, math.min(3600000, math.ceil((1 - executions) * 60000 / epm))}}
end
if fpm >= 0 and fuel <= 0 then
  return {{3, math.min(3600000, math.ceil((1 - fuel) * 60000 / fpm))}}
end
if bpm >= 0 and bytes <= 0 then
  return {{4, math.min(3600000, math.ceil((1 - bytes) * 60000 / bpm))}}
end
if epm >= 0 then executions = executions - 1 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[4])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]) * 2)
{STORE_LUA}
return {{0}}
"
    ))
}

/// ARGV: executions, fuel and bytes per minute (each negative for none), then the items to
/// charge. Returns {0} when charged (all of them), else {2, retry ms}.
fn items_script() -> redis::Script {
    redis::Script::new(&format!(
        r"
local epm, fpm, bpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local wanted = tonumber(ARGV[4])
{REFILL_LUA}
if epm >= 0 and executions < wanted then
  return {{2, math.min(3600000, math.ceil((wanted - executions) * 60000 / epm))}}
end
if epm >= 0 then executions = executions - wanted end
{STORE_LUA}
return {{0}}
"
    ))
}

/// ARGV: the lease id, the fuel burnt, executions and fuel per minute (negative for none),
/// the request bytes read, and bytes per minute (negative for none).
fn release_script() -> redis::Script {
    redis::Script::new(&format!(
        r"
local epm, fpm, bpm = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])
{REFILL_LUA}
redis.call('ZREM', KEYS[2], ARGV[1])
if fpm >= 0 then fuel = fuel - tonumber(ARGV[2]) end
if bpm >= 0 then bytes = bytes - tonumber(ARGV[5]) end
{STORE_LUA}
return 0
"
    ))
}

/// ARGV: the lease lifetime in ms, then the lease ids to extend (those still held).
const RENEW_LUA: &str = r"
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', until_ms, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 0
";

static ADMIT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(admit_script);
static RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(release_script);
static ITEMS: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(items_script);
static RENEW: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RENEW_LUA));

/// Tenants' usage in Redis.
struct RedisLedger {
    conn: ConnectionManager,
    /// Key prefix, e.g. `weir:_:quota:`.
    prefix: String,
    /// The leases this server holds: lease id → tenant.
    live: Mutex<HashMap<String, String>>,
}

fn limit_arg(limit: Option<u64>) -> i64 {
    limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX))
}

impl RedisLedger {
    fn keys(&self, tenant: &str) -> (String, String) {
        (
            format!("{}{tenant}", self.prefix),
            format!("{}{tenant}:running", self.prefix),
        )
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn admit(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        concurrent: bool,
    ) -> Result<Lease, Refused> {
        let quotas = tenant.quota.quotas();
        let id = uuid::Uuid::new_v4().to_string();
        let (bucket, running) = self.keys(tenant.name());
        let mut asking = Asking(Some(Lease {
            id: id.clone(),
            tenant: tenant.clone(),
            ledger: self.clone(),
        }));
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = ADMIT
            .key(&bucket)
            .key(&running)
            .arg(limit_arg(
                quotas.concurrent.filter(|_| concurrent).map(u64::from),
            ))
            .arg(limit_arg(quotas.executions_per_minute.map(u64::from)))
            .arg(limit_arg(quotas.fuel_per_minute))
            .arg(&id)
            .arg(LEASE_TTL.as_millis() as u64)
            .arg(limit_arg(quotas.bytes_per_minute))
            .invoke_async(&mut conn)
            .await
            .map_err(unanswered)?;
        let (quota, limit) = match reply.as_slice() {
            // The lease is held: no longer to be taken out.
            [0] => {
                if let Some(lease) = asking.0.take() {
                    self.live().insert(id, tenant.name().to_string());
                    return Ok(lease);
                }
                return Err(Refused::Unavailable("the lease was given back".into()));
            }
            [1, _] => ("concurrent", quotas.concurrent.map(u64::from)),
            [2, _] => (
                "executions_per_minute",
                quotas.executions_per_minute.map(u64::from),
            ),
            [3, _] => ("fuel_per_minute", quotas.fuel_per_minute),
            [4, _] => ("bytes_per_minute", quotas.bytes_per_minute),
            // An answer not understood: `asking` takes out whatever the script added.
            other => {
                return Err(Refused::Unavailable(format!(
                    "the quota script answered {other:?}"
                )));
            }
        };
        // A refusal added no lease: nothing to take out.
        asking.0 = None;
        Err(Refused::Over(OverQuota {
            quota,
            limit: limit.unwrap_or(0),
            retry_after: whole_seconds(reply.get(1).copied().unwrap_or(1000)),
        }))
    }

    async fn admit_items(&self, tenant: &Tenant, items: usize) -> Result<(), Refused> {
        let quotas = tenant.quota.quotas();
        let (bucket, running) = self.keys(tenant.name());
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = ITEMS
            .key(&bucket)
            .key(&running)
            .arg(limit_arg(quotas.executions_per_minute.map(u64::from)))
            .arg(limit_arg(quotas.fuel_per_minute))
            .arg(limit_arg(quotas.bytes_per_minute))
            .arg(items)
            .invoke_async(&mut conn)
            .await
            .map_err(unanswered)?;
        match reply.as_slice() {
            [0] => Ok(()),
            [2, wait_ms] => Err(Refused::Over(OverQuota {
                quota: "executions_per_minute",
                limit: quotas.executions_per_minute.map_or(0, u64::from),
                retry_after: whole_seconds(*wait_ms),
            })),
            other => Err(Refused::Unavailable(format!(
                "the quota script answered {other:?}"
            ))),
        }
    }

    async fn release(&self, tenant: &Tenant, lease: &str, used: Used) {
        self.live().remove(lease);
        let quotas = tenant.quota.quotas();
        let (bucket, running) = self.keys(tenant.name());
        let mut conn = self.conn.clone();
        let outcome: redis::RedisResult<i64> = RELEASE
            .key(&bucket)
            .key(&running)
            .arg(lease)
            .arg(used.fuel)
            .arg(limit_arg(quotas.executions_per_minute.map(u64::from)))
            .arg(limit_arg(quotas.fuel_per_minute))
            .arg(used.bytes)
            .arg(limit_arg(quotas.bytes_per_minute))
            .invoke_async(&mut conn)
            .await;
        if let Err(error) = outcome {
            // The lease lapses on its own within LEASE_TTL; the fuel goes uncharged.
            tracing::warn!(
                target: "weir::server",
                tenant = tenant.name(),
                %error,
                "cannot give a quota place back in Redis"
            );
        }
    }

    /// Extends every lease this server holds.
    async fn renew(&self) {
        let mut by_tenant: HashMap<String, Vec<String>> = HashMap::new();
        for (lease, tenant) in self.live().iter() {
            by_tenant
                .entry(tenant.clone())
                .or_default()
                .push(lease.clone());
        }
        let mut conn = self.conn.clone();
        for (tenant, leases) in by_tenant {
            let (_, running) = self.keys(&tenant);
            let outcome: redis::RedisResult<i64> = RENEW
                .key(&running)
                .arg(LEASE_TTL.as_millis() as u64)
                .arg(&leases)
                .invoke_async(&mut conn)
                .await;
            if let Err(error) = outcome {
                tracing::warn!(target: "weir::server", %tenant, %error, "cannot renew quota leases");
            }
        }
    }
}

async fn renew_leases(ledger: Weak<RedisLedger>) {
    let mut every = tokio::time::interval(LEASE_RENEWAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(ledger) = ledger.upgrade() else {
            return;
        };
        ledger.renew().await;
    }
}

/// Redis did not answer a quota script.
fn unanswered(error: redis::RedisError) -> Refused {
    Refused::Unavailable(format!(
        "the tenants' quotas are kept in Redis, which did not answer: {error}"
    ))
}

/// A quota script's wait in milliseconds as whole seconds (what `Retry-After` can say),
/// from one second to an hour.
fn whole_seconds(wait_ms: i64) -> Duration {
    Duration::from_secs(wait_ms.max(0).unsigned_abs().div_ceil(1000).clamp(1, 3600))
}

/// How long `missing` units take to come back at `per_second`, rounded up to whole seconds
/// (what `Retry-After` can say).
fn wait_for(missing: f64, per_second: f64) -> Duration {
    let seconds = (missing / per_second).ceil().max(1.0);
    Duration::from_secs(seconds.min(3600.0) as u64)
}

/// A tenant's `executions_per_minute`, charged for the batch items under one of its
/// executions before they start (the local runtime consults it through [`Admission`]).
/// Counted in this server's memory; on the distributed runtime the process that opens a
/// batch charges it in Redis instead (`item_admission`).
#[derive(Debug)]
pub(crate) struct TenantItems(pub(crate) Arc<Tenant>);

#[async_trait::async_trait]
impl Admission for TenantItems {
    async fn admit_items(&self, items: usize) -> Result<(), ExecutionError> {
        self.0
            .quota
            .admit_items(items, Instant::now())
            .map_err(|over| items_refused(&self.0, items, Refused::Over(over)))
    }
}

/// The error of a batch whose `items` `tenant` cannot pay for.
pub(crate) fn items_refused(tenant: &Tenant, items: usize, refused: Refused) -> ExecutionError {
    let over = match refused {
        Refused::Over(over) => over,
        Refused::Unavailable(why) => {
            return ExecutionError::host(
                ErrorKind::Resource,
                codes::STORE_UNAVAILABLE,
                format!(
                    "tenant `{}`'s {items} batch items could not be charged: {why}; retry \
                     once Redis answers",
                    tenant.name()
                ),
            )
            .retryable(true);
        }
    };
    let beyond = if items as u64 > over.limit {
        " (more than it may ever start at once: split the batch)"
    } else {
        ""
    };
    ExecutionError::host(
        ErrorKind::Resource,
        codes::QUOTA_EXCEEDED,
        format!(
            "tenant `{}` cannot start {items} batch items: its quota `{} = {}` has fewer \
             left{beyond}; retry after {} s",
            tenant.name(),
            over.quota,
            over.limit,
            over.retry_after.as_secs().max(1)
        ),
    )
    .retryable(true)
    .with_details(serde_json::json!({
        "quota": over.quota,
        "limit": over.limit,
        "items": items,
        "retryAfterMs": u64::try_from(over.retry_after.as_millis()).unwrap_or(u64::MAX),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_items_are_charged_all_or_none() {
        let quota = TenantQuota::new(Quotas {
            executions_per_minute: Some(10),
            ..Quotas::default()
        });
        let now = Instant::now();
        let over = quota.admit_items(11, now).unwrap_err();
        assert_eq!((over.quota, over.limit), ("executions_per_minute", 10));
        // Nothing was taken by the refusal: ten fit, then none.
        assert!(quota.admit_items(10, now).is_ok());
        assert!(quota.admit(now, true).is_err());
    }

    #[test]
    fn concurrency_is_capped_and_freed_on_release() {
        let quota = TenantQuota::new(Quotas {
            concurrent: Some(2),
            ..Quotas::default()
        });
        let now = Instant::now();
        assert!(quota.admit(now, true).is_ok());
        assert!(quota.admit(now, true).is_ok());
        let over = quota.admit(now, true).unwrap_err();
        assert_eq!((over.quota, over.limit), ("concurrent", 2));
        quota.release(Used::default(), now);
        assert!(quota.admit(now, true).is_ok());
    }

    #[test]
    fn a_charge_without_a_place_draws_on_the_rate_but_ignores_concurrency() {
        let quota = TenantQuota::new(Quotas {
            concurrent: Some(1),
            executions_per_minute: Some(2),
            ..Quotas::default()
        });
        let now = Instant::now();
        assert!(quota.admit(now, true).is_ok());
        // At its `concurrent` quota, a rate-only charge still goes through...
        assert!(quota.admit(now, false).is_ok());
        quota.release(Used::default(), now);
        // ... and it spent the rate: nothing is left this minute.
        let over = quota.admit(now, false).unwrap_err();
        assert_eq!(over.quota, "executions_per_minute");
    }

    #[test]
    fn executions_per_minute_refill_over_time_and_say_when() {
        let quota = TenantQuota::new(Quotas {
            executions_per_minute: Some(60),
            ..Quotas::default()
        });
        let start = Instant::now();
        for _ in 0..60 {
            quota.admit(start, true).unwrap();
            quota.release(Used::default(), start);
        }
        let over = quota.admit(start, true).unwrap_err();
        assert_eq!(over.quota, "executions_per_minute");
        assert_eq!(
            over.retry_after,
            Duration::from_secs(1),
            "one per second comes back"
        );
        assert!(quota.admit(start + Duration::from_secs(1), true).is_ok());
        assert!(quota.admit(start + Duration::from_secs(1), true).is_err());
    }

    #[test]
    fn fuel_is_charged_after_the_fact_and_blocks_until_it_refills() {
        let quota = TenantQuota::new(Quotas {
            fuel_per_minute: Some(6_000),
            ..Quotas::default()
        });
        let start = Instant::now();
        quota.admit(start, true).unwrap();
        // One expensive run overdraws the minute's fuel...
        quota.release(
            Used {
                fuel: 9_000,
                bytes: 0,
            },
            start,
        );
        let over = quota.admit(start, true).unwrap_err();
        assert_eq!(over.quota, "fuel_per_minute");
        // ...and 3,001 fuel at 100 per second take 31 s to come back.
        assert_eq!(over.retry_after, Duration::from_secs(31));
        assert!(quota.admit(start + Duration::from_secs(31), true).is_ok());
    }

    #[test]
    fn request_bytes_are_charged_after_the_fact_and_block_until_they_refill() {
        let quota = TenantQuota::new(Quotas {
            bytes_per_minute: Some(60_000),
            ..Quotas::default()
        });
        let start = Instant::now();
        quota.admit(start, true).unwrap();
        quota.release(
            Used {
                fuel: 0,
                bytes: 50_000,
            },
            start,
        );
        // Some of the minute's bytes are left: the next body is read, and overdraws.
        quota.admit(start, true).unwrap();
        quota.release(
            Used {
                fuel: 0,
                bytes: 50_000,
            },
            start,
        );
        let over = quota.admit(start, true).unwrap_err();
        assert_eq!(over.quota, "bytes_per_minute");
        // 40,001 bytes at 1,000 per second take 41 s to come back.
        assert_eq!(over.retry_after, Duration::from_secs(41));
        assert!(quota.admit(start + Duration::from_secs(41), true).is_ok());
    }

    #[test]
    fn zero_quotas_are_refused() {
        let quotas = Quotas {
            timeout_ms: Some(0),
            ..Quotas::default()
        };
        assert!(quotas.validate().unwrap_err().contains("timeout_ms"));
    }
}
