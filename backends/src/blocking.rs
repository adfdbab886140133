//! Running a store's long, blocking calls without stalling the async runtime.

/// Runs `f`, a blocking call (a whole page applied in one transaction), so that the
/// runtime's other tasks keep running meanwhile.
///
/// On a multi-threaded tokio runtime this is [`tokio::task::block_in_place`]: the
/// worker hands its queued tasks (an HTTP connection carrying the next page's pull,
/// say) to another thread while `f` runs here. On a current-thread runtime, or
/// outside tokio, `f` simply runs inline. Either way `f` runs exactly once, to
/// completion, on the calling thread — so it may borrow, and its transaction is
/// never split.
pub(crate) fn run<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
