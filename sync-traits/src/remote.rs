//! The remote side of the seam.

use async_trait::async_trait;

use crate::error::RemoteError;
use crate::id::RecordId;
use crate::record::{Page, PushChange, PushOutcome, RemoteState, Watermark};

/// A server that holds the shared copy of the data.
///
/// Contract (checked by the engine's property tests against
/// [`crate::testkit::FakeRemote`]):
/// - every write gets a `seq` in commit order; deletes leave tombstones;
/// - [`pull`](RemoteStore::pull) from a watermark returns every change after it that
///   the caller may see, including a tombstone when a record leaves the caller's
///   view; below the retention horizon it fails with
///   [`RemoteError::WatermarkExpired`] (pulling from zero always works);
/// - [`push`](RemoteStore::push) applies each change only if its base version is
///   current, and answers one outcome per change, in order; a change id already
///   applied answers `Applied` again (idempotent delivery).
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait RemoteStore: Send + Sync {
    /// Changes after `since`, at most `limit` of them.
    async fn pull(&self, since: Watermark, limit: usize) -> Result<Page, RemoteError>;

    /// Pushes changes; one outcome per change, in the same order. An `Err` means the
    /// outcome of the whole call is unknown (some may have been applied): the engine
    /// retries, relying on idempotency.
    async fn push(&self, changes: Vec<PushChange>) -> Result<Vec<PushOutcome>, RemoteError>;

    /// The server's current state of one record as the caller sees it (`None` if it
    /// does not exist or is not visible).
    async fn fetch(
        &self,
        collection: &str,
        id: &RecordId,
    ) -> Result<Option<RemoteState>, RemoteError>;

    /// Largest batch [`push`](RemoteStore::push) accepts.
    fn max_push_batch(&self) -> usize {
        500
    }
}

macro_rules! forward_remote_store {
    ($($ptr:ident)::+) => {
        #[async_trait]
        impl<T: RemoteStore + ?Sized> RemoteStore for $($ptr)::+<T> {
            async fn pull(&self, since: Watermark, limit: usize) -> Result<Page, RemoteError> {
                (**self).pull(since, limit).await
            }
            async fn push(&self, changes: Vec<PushChange>) -> Result<Vec<PushOutcome>, RemoteError> {
                (**self).push(changes).await
            }
            async fn fetch(&self, c: &str, id: &RecordId) -> Result<Option<RemoteState>, RemoteError> {
                (**self).fetch(c, id).await
            }
            fn max_push_batch(&self) -> usize {
                (**self).max_push_batch()
            }
        }
    };
}
forward_remote_store!(std::sync::Arc);
forward_remote_store!(Box);
