//! Running a store's blocking work without stalling the async runtime.

use sync_traits::StoreError;

/// Runs `f`, a blocking call (a whole page applied in one transaction), so that the
/// runtime's other tasks keep running meanwhile.
///
/// On a multi-threaded tokio runtime this is [`tokio::task::block_in_place`]: the
/// worker hands its queued tasks (an HTTP connection carrying the next page's pull,
/// say) to another thread while `f` runs here. On a current-thread runtime, or
/// outside tokio, `f` simply runs inline. Either way `f` runs exactly once, to
/// completion, on the calling thread — so it may borrow, and its transaction is
/// never split.
#[cfg_attr(not(feature = "sled"), allow(dead_code))]
pub(crate) fn run<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Runs `f`, blocking work (SQLite under a mutex, waiting on a file lock), on
/// tokio's blocking pool and awaits its result, so no async worker thread ever
/// blocks on it — on a current-thread runtime too. Outside a tokio runtime `f`
/// runs on the calling thread.
///
/// `f` runs exactly once, to completion, even if the returned future is dropped
/// first (its transaction is never split). A panic in `f` is resumed in the
/// caller; a blocking pool that is shutting down gives [`StoreError::Backend`].
pub(crate) async fn unblock<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(h) => match h.spawn_blocking(f).await {
            Ok(out) => out,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Backend(
                format!("the store's blocking task did not run: {e}").into(),
            )),
        },
        Err(_) => f(),
    }
}
