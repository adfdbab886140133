//! [`Hints`]: a remote's "changes may be available" signals, as one type for every
//! remote.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// "Changes may be available" hints from a remote's realtime channel (PocketBase's
/// SSE, PostgreSQL's LISTEN/NOTIFY, ...), for [`crate::SyncEngine::run_live`].
///
/// A hint means: pull soon. Remotes coalesce them (many events → one pending hint)
/// and send one after every (re)connect, since events missed while disconnected are
/// not replayed. Correctness never depends on hints: a client that never receives
/// one still converges by pulling. Dropping `Hints` stops the task that listens.
/// Also a `futures_core::Stream<Item = ()>`.
#[derive(Debug)]
pub struct Hints {
    rx: mpsc::Receiver<()>,
    task: JoinHandle<()>,
}

impl Hints {
    /// Hints that `task` sends on the channel `rx` receives from; `task` is aborted
    /// when the `Hints` is dropped. For remote implementations.
    pub fn new(rx: mpsc::Receiver<()>, task: JoinHandle<()>) -> Self {
        Self { rx, task }
    }

    /// Waits for the next hint. Never returns `None` while the listening task runs.
    pub async fn next(&mut self) -> Option<()> {
        self.rx.recv().await
    }

    /// A pending hint, without waiting.
    pub fn try_next(&mut self) -> Option<()> {
        self.rx.try_recv().ok()
    }
}

impl futures_core::Stream for Hints {
    type Item = ();

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<()>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Hints {
    fn drop(&mut self) {
        self.task.abort();
    }
}
