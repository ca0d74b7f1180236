//! What the fleet's workers charge configured tenants for, counted in the fleet's Redis
//! exactly as their HTTP requests are: foreign jobs (a queue's jobs from another BullMQ
//! producer, run as the tenant `weir worker --foreign QUEUE=TENANT` names, within what that
//! tenant may run, its ceilings and its quotas), and the items of the batches their runs
//! open.

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
            Err(Refused::Over(over)) => Err(ExecutionError::host(
                ErrorKind::Resource,
                codes::QUOTA_EXCEEDED,
                format!(
                    "tenant `{}` is over its quota `{} = {}`; retry after {} s",
                    self.tenant.name(),
                    over.quota,
                    over.limit,
                    over.retry_after.as_secs().max(1)
                ),
            )
            .retryable(true)),
            Err(Refused::Unavailable(why)) => Err(ExecutionError::host(
                ErrorKind::Network,
                codes::STORE_UNAVAILABLE,
                format!(
                    "cannot count tenant `{}`'s quotas: {why}",
                    self.tenant.name()
                ),
            )
            .retryable(true)),
        }
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
