//! Cancellation of an execution: soft first (the guest's `cancelled()` turns true), then
//! hard after a grace period (the host drops the running guest). Cancelling a parent cancels
//! its nested calls; the reason travels with it so the error code says who cancelled.

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

use crate::contract::error::codes;

/// Why an execution was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// Someone asked (an API call, a CLI signal).
    Request,
    /// A sibling branch of a parallel composition failed.
    Sibling,
    /// The execution's session was stopped.
    SessionStopped,
    /// The runtime was stopped and the execution did not finish within the grace period.
    Shutdown,
}

impl CancelReason {
    /// The error code that reports this reason.
    pub fn code(self) -> &'static str {
        match self {
            CancelReason::Request => codes::CANCELLED_BY_REQUEST,
            CancelReason::Sibling => codes::CANCELLED_BY_SIBLING,
            CancelReason::SessionStopped => codes::SESSION_STOPPED,
            CancelReason::Shutdown => codes::RUNTIME_STOPPED,
        }
    }

    /// The reason a code reports (the inverse of [`CancelReason::code`]).
    pub fn from_code(code: &str) -> Option<Self> {
        [
            CancelReason::Request,
            CancelReason::Sibling,
            CancelReason::SessionStopped,
            CancelReason::Shutdown,
        ]
        .into_iter()
        .find(|reason| reason.code() == code)
    }
}

/// A handle that cancels an execution (and everything it called). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle {
    token: CancellationToken,
    reason: Arc<OnceLock<CancelReason>>,
    parent: Option<Box<CancelHandle>>,
}

impl CancelHandle {
    /// A handle that nothing has cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels by request.
    pub fn cancel(&self) {
        self.cancel_with(CancelReason::Request);
    }

    /// Cancels with a reason. The first reason wins.
    pub fn cancel_with(&self, reason: CancelReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Whether this execution (or one of its callers) has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Why it was cancelled, if it was.
    pub fn reason(&self) -> Option<CancelReason> {
        if !self.is_cancelled() {
            return None;
        }
        self.reason
            .get()
            .copied()
            .or_else(|| self.parent.as_ref().and_then(|p| p.reason()))
            .or(Some(CancelReason::Request))
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// A handle for a nested execution: cancelled with this one, or on its own.
    pub fn child(&self) -> CancelHandle {
        CancelHandle {
            token: self.token.child_token(),
            reason: Arc::new(OnceLock::new()),
            parent: Some(Box::new(self.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancelling_a_parent_cancels_its_children_with_the_parents_reason() {
        let parent = CancelHandle::new();
        let child = parent.child();
        assert!(!child.is_cancelled());
        parent.cancel_with(CancelReason::Sibling);
        assert!(child.is_cancelled());
        assert_eq!(child.reason(), Some(CancelReason::Sibling));
    }

    #[test]
    fn cancelling_a_child_leaves_the_parent_running() {
        let parent = CancelHandle::new();
        let child = parent.child();
        child.cancel();
        assert!(!parent.is_cancelled());
        assert_eq!(child.reason(), Some(CancelReason::Request));
        assert_eq!(parent.reason(), None);
    }
}
