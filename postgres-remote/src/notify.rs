//! LISTEN/NOTIFY as a hint to pull.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tracing::{debug, warn};

use crate::client::PostgresRemote;

/// The channel the synced tables' triggers notify (empty payload) at commit.
pub const CHANNEL: &str = "tidemark";

pub use sync_traits::Hints;

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl PostgresRemote {
    /// Listens on [`CHANNEL`] on a connection of its own, reconnecting with
    /// exponential backoff (250 ms doubling up to 30 s). Must be called inside a
    /// tokio runtime.
    pub fn subscribe(&self) -> Hints {
        let (tx, rx) = mpsc::channel(1);
        let me = self.clone();
        let task = tokio::spawn(async move {
            let mut backoff = MIN_BACKOFF;
            loop {
                match me.listen(&tx, &mut backoff).await {
                    Ok(()) => debug!("notification connection ended; reconnecting"),
                    Err(e) => warn!(error = %e, "listening failed; reconnecting"),
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        });
        Hints::new(rx, task)
    }

    async fn listen(
        &self,
        tx: &mpsc::Sender<()>,
        backoff: &mut Duration,
    ) -> Result<(), crate::PgError> {
        let (client, mut msgs) = self.open().await?;
        let sql = format!("LISTEN {CHANNEL}");
        {
            let listen = client.batch_execute(&sql);
            // The connection's messages must be polled for the LISTEN to complete.
            tokio::pin!(listen);
            loop {
                tokio::select! {
                    r = &mut listen => { r?; break; }
                    m = msgs.next() => match m {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e.into()),
                        None => return Ok(()),
                    }
                }
            }
        }
        *backoff = MIN_BACKOFF;
        let _ = tx.try_send(());
        while let Some(m) = msgs.next().await {
            if let AsyncMessage::Notification(_) = m? {
                let _ = tx.try_send(());
            }
            if tx.is_closed() {
                return Ok(());
            }
        }
        drop(client);
        Ok(())
    }
}
