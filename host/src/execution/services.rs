//! What one execution lends its guest: the execution layer's side of the sandbox's
//! [`GuestServices`], over the runtime's context and the execution's scope. A guest's `call`
//! becomes a nested execution, its session-store imports reach the runtime's state store
//! under the execution's (tenant, session), and its events and progress carry who it runs
//! for.

use std::sync::Arc;
use std::time::Instant;

use crate::contract::cancel::CancelHandle;
use crate::contract::error::{ErrorKind, ExecutionError, codes};
use crate::contract::state_store::SessionKey;
use crate::execution::context::Context;
use crate::execution::executor::Scope;
use crate::sandbox::GuestServices;
use crate::sandbox::events::{Event, EventBus, EventKind};

/// The services of one running execution: `scope` is the one its nested calls get (its
/// `parent` is the running execution).
pub(crate) struct ExecutionServices {
    shared: Arc<Context>,
    scope: Scope,
}

impl ExecutionServices {
    /// The services for an execution running in `scope` of the runtime `shared`.
    pub(crate) fn new(shared: Arc<Context>, scope: Scope) -> Self {
        ExecutionServices { shared, scope }
    }

    /// The execution's (tenant, session) key in the state store; an error the guest can act
    /// on when the execution runs without a session.
    fn session(&self) -> Result<SessionKey, ExecutionError> {
        let session = self.scope.session.as_ref().ok_or_else(|| {
            ExecutionError::host(
                ErrorKind::Configuration,
                codes::NO_SESSION,
                "the session store needs a session: run the execution with a session id",
            )
        })?;
        Ok(SessionKey::new(&*self.scope.tenant, &**session))
    }
}

#[async_trait::async_trait]
impl GuestServices for ExecutionServices {
    fn events(&self) -> &EventBus {
        self.shared.events()
    }

    fn event(&self, kind: EventKind) -> Option<Event> {
        if !self.shared.events().active() {
            return None;
        }
        let scope = &self.scope;
        let mut event = Event::new(kind, &scope.tenant, scope.session.as_deref());
        // This is the scope the execution's nested calls get: its parent is the execution.
        event.execution_id = scope.parent.as_deref().map(str::to_string);
        Some(event)
    }

    fn progress(&self, percent: u8, message: &str) {
        if let Some(sink) = &self.scope.progress {
            sink.send_replace(Some((percent, message.to_string())));
        }
    }

    async fn call(
        &self,
        name: String,
        state: String,
        deadline: Instant,
        cancel: CancelHandle,
    ) -> (Result<String, ExecutionError>, u64) {
        crate::execution::executor::call_nested(
            &self.shared,
            &self.scope,
            name,
            state,
            deadline,
            cancel,
        )
        .await
    }

    async fn kv_get(&self, key: String) -> Result<Option<Vec<u8>>, ExecutionError> {
        let session = self.session()?;
        self.shared.state_store().kv_get(&session, &key).await
    }

    async fn kv_set(&self, key: String, value: Vec<u8>) -> Result<(), ExecutionError> {
        let session = self.session()?;
        self.shared.state_store().kv_set(&session, key, value).await
    }

    async fn kv_delete(&self, key: String) -> Result<(), ExecutionError> {
        let session = self.session()?;
        self.shared.state_store().kv_delete(&session, &key).await
    }

    async fn kv_keys(&self) -> Result<Vec<String>, ExecutionError> {
        let session = self.session()?;
        self.shared.state_store().kv_keys(&session).await
    }
}
