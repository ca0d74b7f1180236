//! What the fleet's workers charge configured tenants for, counted in the fleet's Redis
//! exactly as their HTTP requests are: foreign jobs (a queue's jobs from another BullMQ
//! producer, run as the tenant `weir worker --foreign QUEUE=TENANT` names, within what that
//! tenant may run, its ceilings and its quotas), the items of the batches their runs
//! open, and schedules' ticks.

use std::sync::Arc;

use super::access::{Access, Tenant};
use super::quota::{Admitted, Ledger, Refused, items_refused};
use weir::LimitOverrides;
use weir::Runtime;
use weir::{ErrorKind, ExecutionError, codes};
use weir::{ForeignAdmission, ForeignPlace};

/// The admission of foreign jobs as `tenant` of `access`, counted with the quotas of every
/// `weir serve` on `runtime`'s Redis. Call within a Tokio runtime.
pub fn foreign_admission(
    runtime: &Runtime,
    access: &Access,
    tenant: &str,
) -> Result<Arc<dyn ForeignAdmission>, String> {
    let Some(account) = access.tenant(tenant) else {
        return Err(format!(
            "no tenant `{tenant}` is configured ([tenants.{tenant}] in --config): foreign \
             jobs run as a configured tenant, under its quotas"
        ));
    };
    let ledger = match runtime.fleet().map(|fleet| fleet.redis_namespace("quota:")) {
        Some((conn, prefix)) => Ledger::redis(conn, prefix),
        None => Ledger::local(),
    };
    Ok(Arc::new(TenantAdmission {
        tenant: account.clone(),
        ledger,
    }))
}

/// One tenant's admission of foreign jobs.
struct TenantAdmission {
    tenant: Arc<Tenant>,
    ledger: Ledger,
}

impl std::fmt::Debug for TenantAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantAdmission")
            .field("tenant", &self.tenant.name())
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl ForeignAdmission for TenantAdmission {
    fn may_run(&self, processor: &str) -> bool {
        self.tenant.may_run(processor)
    }

    fn ceilings(&self) -> LimitOverrides {
        self.tenant.quota.ceilings()
    }

    async fn admit(&self) -> Result<Box<dyn ForeignPlace>, ExecutionError> {
        match self.ledger.admit(&self.tenant).await {
            Ok(admitted) => Ok(Box::new(Place(admitted))),
            Err(refused) => Err(admission_refused(&self.tenant, refused)),
        }
    }
}

/// The error of work that `tenant`'s quotas refused (or could not be counted for).
fn admission_refused(tenant: &Tenant, refused: Refused) -> ExecutionError {
    match refused {
        Refused::Over(over) => ExecutionError::host(
            ErrorKind::Resource,
            codes::QUOTA_EXCEEDED,
            format!(
                "tenant `{}` is over its quota `{} = {}`; retry after {} s",
                tenant.name(),
                over.quota,
                over.limit,
                over.retry_after.as_secs().max(1)
            ),
        )
        .retryable(true),
        Refused::Unavailable(why) => ExecutionError::host(
            ErrorKind::Network,
            codes::STORE_UNAVAILABLE,
            format!("cannot count tenant `{}`'s quotas: {why}", tenant.name()),
        )
        .retryable(true),
    }
}

/// A foreign job's place in its tenant's quotas.
struct Place(Admitted);

#[async_trait::async_trait]
impl ForeignPlace for Place {
    async fn settle(self: Box<Self>, fuel: u64) {
        let Place(mut admitted) = *self;
        admitted.charge(fuel);
        admitted.settle().await;
    }
}

/// What a batch's items cost their tenant across the fleet: each item is one of its
/// `executions_per_minute`, charged in Redis (the ledger every server and worker of the
/// fleet shares) by whichever process opens the batch, before any item runs. Install it
/// with [`weir::Fleet::charge_batch_items`] on every server's and worker's runtime; the
/// server's router does so itself. A tenant not configured in `access` is not charged.
pub fn item_admission(runtime: &Runtime, access: &Access) -> Arc<dyn weir::ItemAdmission> {
    let ledger = match runtime.fleet().map(|fleet| fleet.redis_namespace("quota:")) {
        Some((conn, prefix)) => Ledger::redis(conn, prefix),
        None => Ledger::local(),
    };
    Arc::new(FleetItems {
        access: access.clone(),
        ledger,
    })
}

/// Batch items charged to the tenants of `access`.
struct FleetItems {
    access: Access,
    ledger: Ledger,
}

impl std::fmt::Debug for FleetItems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetItems").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl weir::ItemAdmission for FleetItems {
    async fn admit_items(&self, tenant: &str, items: usize) -> Result<(), ExecutionError> {
        let Some(account) = self.access.tenant(tenant) else {
            return Ok(());
        };
        self.ledger
            .admit_items(account, items)
            .await
            .map_err(|refused| items_refused(account, items, refused))
    }
}

/// What schedules' ticks cost their tenants: each tick's run takes a place in its tenant's
/// quotas (counted in the fleet's Redis on the distributed runtime, as its HTTP requests
/// are), runs within the tenant's ceilings, and may run only what the tenant may. A tick of
/// a tenant `access` does not configure is refused when `access` configures any (the open
/// API's schedules are charged nothing). Install it with [`Runtime::charge_schedules`] on
/// every server and worker; the server's router does so itself.
pub fn schedule_admission(runtime: &Runtime, access: &Access) -> Arc<dyn weir::TickAdmission> {
    let ledger = match runtime.fleet().map(|fleet| fleet.redis_namespace("quota:")) {
        Some((conn, prefix)) => Ledger::redis(conn, prefix),
        None => Ledger::local(),
    };
    Arc::new(FleetTicks {
        access: access.clone(),
        ledger,
        distributed: runtime.is_distributed(),
    })
}

/// Schedules' ticks charged to the tenants of `access`.
struct FleetTicks {
    access: Access,
    ledger: Ledger,
    distributed: bool,
}

impl std::fmt::Debug for FleetTicks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetTicks").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl weir::TickAdmission for FleetTicks {
    async fn admit(&self, schedule: &weir::Schedule) -> Result<weir::TickAdmitted, ExecutionError> {
        let unconfigured = || weir::TickAdmitted {
            limits: LimitOverrides::default(),
            items: None,
            place: None,
        };
        if !self.access.is_configured() {
            return Ok(unconfigured());
        }
        let Some(account) = self.access.tenant(schedule.tenant()) else {
            return Err(ExecutionError::host(
                ErrorKind::Configuration,
                codes::NOT_AVAILABLE,
                format!(
                    "no tenant `{}` is configured: a schedule runs as a configured tenant, \
                     under its quotas",
                    schedule.tenant()
                ),
            ));
        };
        if !account.may_run(schedule.target()) {
            return Err(ExecutionError::host(
                ErrorKind::NotFound,
                codes::PROCESSOR_NOT_FOUND,
                format!(
                    "tenant `{}` may not run `{}`",
                    schedule.tenant(),
                    schedule.target()
                ),
            ));
        }
        let admitted = self
            .ledger
            .admit(account)
            .await
            .map_err(|refused| admission_refused(account, refused))?;
        // Locally, batch items are charged in this process (the distributed runtime charges
        // them in Redis, through `item_admission`).
        let items: Option<Arc<dyn weir::Admission>> = (!self.distributed
            && account.quota.quotas().executions_per_minute.is_some())
        .then(|| Arc::new(super::quota::TenantItems(account.clone())) as _);
        Ok(weir::TickAdmitted {
            limits: account.quota.ceilings(),
            items,
            place: Some(Box::new(Place(admitted))),
        })
    }
}

/// A tick's place in its tenant's quotas: a foreign job's kind of place.
#[async_trait::async_trait]
impl weir::TickPlace for Place {
    async fn settle(self: Box<Self>, fuel: u64) {
        ForeignPlace::settle(self, fuel).await;
    }
}
