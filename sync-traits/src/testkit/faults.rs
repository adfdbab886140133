//! [`Faulty`]: fault injection over any [`RemoteStore`] (the fake or a real client).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::RemoteError;
use crate::id::RecordId;
use crate::record::{Page, PushChange, PushOutcome, RemoteState, Watermark};
use crate::remote::{PullMode, RemoteStore};

/// One injected fault, consumed by the next matching call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// No fault: lets one call through (to aim a later fault at the n-th call).
    Pass,
    /// Fail with a transient error before the call reaches the remote.
    TransientBefore,
    /// Fail with an auth error before the call reaches the remote.
    AuthBefore,
    /// Fail with an answer outside the protocol (`Malformed`, not retried) before
    /// the call reaches the remote: a server in a broken state.
    MalformedBefore,
    /// Let the remote apply the call, then lose the response (transient error): the
    /// engine retries, so the remote sees the same push twice.
    LoseResponse,
    /// Let the remote apply the call, then fail with an answer the engine can make
    /// nothing of (`Malformed`: it neither retries nor splits the call, so nothing
    /// it sent is acknowledged), as if the client process died right after the
    /// request; the caller then "restarts".
    CrashAfter,
    /// Deliver the call twice (a duplicated request); return the second answer.
    Duplicate,
    /// Wait before the call.
    Delay(Duration),
}

/// Queued faults for pulls and pushes.
#[derive(Debug, Default)]
pub struct FaultPlan {
    /// Faults for the next `pull` calls, in order.
    pub pull: VecDeque<Fault>,
    /// Faults for the next `push` calls, in order.
    pub push: VecDeque<Fault>,
}

/// Wraps a remote and injects the faults queued in its [`FaultPlan`].
#[derive(Clone, Debug)]
pub struct Faulty<R> {
    inner: R,
    plan: Arc<Mutex<FaultPlan>>,
}

impl<R> Faulty<R> {
    /// Wraps `inner` with an empty plan.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            plan: Arc::default(),
        }
    }

    /// The wrapped remote.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// Queues a fault for a coming push.
    pub fn on_push(&self, f: Fault) {
        self.plan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push
            .push_back(f);
    }

    /// Queues a fault for a coming pull.
    pub fn on_pull(&self, f: Fault) {
        self.plan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pull
            .push_back(f);
    }

    /// Faults still queued (pull, push).
    pub fn queued(&self) -> (usize, usize) {
        let p = self.plan.lock().unwrap_or_else(|e| e.into_inner());
        (p.pull.len(), p.push.len())
    }

    fn next(&self, push: bool) -> Option<Fault> {
        let mut p = self.plan.lock().unwrap_or_else(|e| e.into_inner());
        if push {
            p.push.pop_front()
        } else {
            p.pull.pop_front()
        }
    }
}

async fn run<T, F, Fut>(fault: Option<Fault>, mut call: F) -> Result<T, RemoteError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RemoteError>>,
{
    match fault {
        None | Some(Fault::Pass) => call().await,
        Some(Fault::TransientBefore) => Err(RemoteError::Transient(
            "injected: connection refused".into(),
        )),
        Some(Fault::AuthBefore) => Err(RemoteError::Auth("injected: token expired".into())),
        Some(Fault::MalformedBefore) => Err(RemoteError::Malformed(
            "injected: an answer outside the protocol".into(),
        )),
        Some(Fault::LoseResponse) => {
            call().await?;
            Err(RemoteError::Transient("injected: response lost".into()))
        }
        Some(Fault::CrashAfter) => {
            call().await?;
            Err(RemoteError::Malformed(
                "injected: client crashed after the request".into(),
            ))
        }
        Some(Fault::Duplicate) => {
            let _ = call().await;
            call().await
        }
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            call().await
        }
    }
}

#[async_trait]
impl<R: RemoteStore> RemoteStore for Faulty<R> {
    async fn pull(
        &self,
        since: Watermark,
        limit: usize,
        mode: PullMode,
    ) -> Result<Page, RemoteError> {
        run(self.next(false), || self.inner.pull(since, limit, mode)).await
    }

    async fn push(&self, changes: Vec<PushChange>) -> Result<Vec<PushOutcome>, RemoteError> {
        run(self.next(true), || self.inner.push(changes.clone())).await
    }

    async fn fetch(
        &self,
        collection: &str,
        id: &RecordId,
    ) -> Result<Option<RemoteState>, RemoteError> {
        self.inner.fetch(collection, id).await
    }

    async fn horizon(&self) -> Result<Watermark, RemoteError> {
        self.inner.horizon().await
    }

    async fn counts(&self) -> Result<Option<std::collections::BTreeMap<String, u64>>, RemoteError> {
        self.inner.counts().await
    }

    async fn collections(&self) -> Result<Option<std::collections::BTreeSet<String>>, RemoteError> {
        self.inner.collections().await
    }
    async fn schema(&self) -> Result<Option<crate::RemoteSchema>, RemoteError> {
        self.inner.schema().await
    }

    /// Takes a pull's fault, like [`RemoteStore::pull`].
    async fn pull_scoped(
        &self,
        since: Watermark,
        limit: usize,
        mode: PullMode,
        scope: &crate::PullScope,
    ) -> Result<Page, RemoteError> {
        run(self.next(false), || {
            self.inner.pull_scoped(since, limit, mode, scope)
        })
        .await
    }

    async fn matching(
        &self,
        collection: &str,
        filter: &crate::Filter,
    ) -> Result<std::collections::BTreeMap<RecordId, crate::Version>, RemoteError> {
        self.inner.matching(collection, filter).await
    }

    fn max_push_batch(&self) -> usize {
        self.inner.max_push_batch()
    }
}
