//! Jobs that Node BullMQ (or any producer) adds without weir's envelope: run on the queues
//! the operator opened to them ([`ForeignQueue`]), as the tenant named for each, admitted
//! through the operator's [`ForeignAdmission`]; their data is the input state and their
//! return value the result document.

use std::sync::Arc;

use serde_json::Value;

use super::content;
use super::fetch::Unavailable;
use super::job::{document, kind_word, message_of};
use super::worker::Inner;
use crate::contract::cancel::CancelHandle;
use crate::contract::error::{ErrorKind, ExecutionError};
use crate::contract::limits::LimitOverrides;
use crate::execution::executor::{Pinned, ProgressSink, Scope, execute_pinned};

/// Who runs the foreign jobs of a queue, and what admits them.
#[derive(Debug, Clone)]
pub struct ForeignQueue {
    /// The tenant the queue's foreign jobs run as.
    pub tenant: String,
    /// What the tenant may run, its ceilings and its quotas (`None`: unbounded).
    pub admission: Option<Arc<dyn ForeignAdmission>>,
}

/// Admits foreign jobs as one tenant, as an HTTP request of that tenant would be: what it
/// may run, its ceilings on any one execution, and its quotas. The HTTP server's tenants
/// implement it (`weir_server::foreign_admission`), counting usage in Redis across the
/// fleet.
#[async_trait::async_trait]
pub trait ForeignAdmission: Send + Sync + std::fmt::Debug {
    /// Whether the tenant may run `processor` at all.
    fn may_run(&self, processor: &str) -> bool;
    /// The tenant's ceilings on any one execution.
    fn ceilings(&self) -> LimitOverrides;
    /// Takes a place in the tenant's quotas for one job, or says which quota is spent.
    async fn admit(&self) -> Result<Box<dyn ForeignPlace>, ExecutionError>;
}

/// A foreign job's place in its tenant's quotas.
#[async_trait::async_trait]
pub trait ForeignPlace: Send {
    /// Gives the place back, charging the fuel the job burnt.
    async fn settle(self: Box<Self>, fuel: u64);
}

impl Inner {
    /// A job another producer added: its data is the input of the queue's processor, run
    /// as the tenant this worker was told runs the queue's foreign jobs (none: the job
    /// fails), within its quotas; its return value is the result document, and BullMQ's
    /// own attempts decide retries.
    pub(super) async fn handle_foreign(
        &self,
        queue: String,
        input: Value,
        attempt: u32,
        progress: ProgressSink,
    ) -> Result<Value, bullmq::Error> {
        let Some(foreign) = self.config.foreign.get(&queue) else {
            return Err(bullmq::Error::Unrecoverable(format!(
                "this fleet takes no foreign jobs on the queue `{queue}` (jobs without weir's \
                 format, from another producer): start its workers with `--foreign \
                 {queue}=TENANT` (the tenant configured in --config) to run them as that tenant"
            )));
        };
        if let Some(admission) = &foreign.admission
            && !admission.may_run(&queue)
        {
            return Err(bullmq::Error::Unrecoverable(format!(
                "the tenant `{}` that runs this queue's foreign jobs may not run `{queue}` (its \
                 `processors` in the configuration)",
                foreign.tenant
            )));
        }
        let plugin = match self.shared.registry().get(&queue) {
            Some(plugin) => plugin,
            None => {
                let mut conn = self.dist.conn();
                let published =
                    content::published_plugin(&mut conn, &self.dist.keys, &self.dist.seal, &queue)
                        .await
                        .map_err(|e| bullmq::Error::ProcessingError(e.to_string()))?;
                let Some(digest) = published else {
                    return Err(bullmq::Error::Unrecoverable(format!(
                        "no processor named `{queue}` is published"
                    )));
                };
                match self.plugin(&queue, &digest).await {
                    Ok(plugin) => plugin,
                    Err(Unavailable::Redis(e)) => {
                        return Err(bullmq::Error::ProcessingError(e.to_string()));
                    }
                    Err(Unavailable::Missing(why)) => {
                        return Err(bullmq::Error::Unrecoverable(why));
                    }
                }
            }
        };
        let (limits, place) = match &foreign.admission {
            None => (LimitOverrides::default(), None),
            Some(admission) => match admission.admit().await {
                Ok(place) => (admission.ceilings(), Some(place)),
                // Refused before anything runs; BullMQ's attempts may try it again.
                Err(error) => {
                    let code = error.code.as_deref().unwrap_or("refused");
                    return Err(bullmq::Error::ProcessingError(format!(
                        "{} ({code}): {}",
                        kind_word(error.kind),
                        error.message
                    )));
                }
            },
        };
        let scope = Scope {
            tenant: Arc::from(foreign.tenant.as_str()),
            session: None,
            depth: 0,
            deadline: None,
            cancel: CancelHandle::new(),
            limits,
            parent: None,
            step: None,
            priority: None,
            max_attempts: None,
            progress: Some(progress),
            admission: None,
        };
        let result =
            execute_pinned(&self.shared, Pinned { plugin, attempt }, input, scope, None).await;
        if let Some(place) = place {
            place.settle(result.execution.fuel_consumed).await;
        }
        match &result.error {
            None => Ok(document(&result)),
            Some(error)
                if error.retryable
                    || matches!(error.kind, ErrorKind::Timeout | ErrorKind::Network) =>
            {
                Err(bullmq::Error::ProcessingError(message_of(&result)))
            }
            Some(_) => Err(bullmq::Error::Unrecoverable(message_of(&result))),
        }
    }
}
