//! Realtime (SSE) as a hint to pull.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::client::PocketBaseRemote;
use crate::TOMBSTONES;

pub use sync_traits::Hints;

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl PocketBaseRemote {
    /// Subscribes to changes of the synced collections (and tombstones) over SSE,
    /// reconnecting with exponential backoff (250 ms doubling up to 30 s, jittered).
    /// Must be called inside a tokio runtime.
    pub fn subscribe(&self) -> Hints {
        let (tx, rx) = mpsc::channel(1);
        let me = self.clone();
        let task = tokio::spawn(async move {
            let mut backoff = MIN_BACKOFF;
            loop {
                match me.run_sse(&tx, &mut backoff).await {
                    Ok(()) => debug!("realtime stream ended; reconnecting"),
                    Err(e) => warn!(error = %e, "realtime stream failed; reconnecting"),
                }
                if tx.is_closed() {
                    return;
                }
                let jitter = Duration::from_millis(
                    u64::from(jitter_ms()) % (backoff.as_millis() as u64 / 2 + 1),
                );
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        });
        Hints::new(rx, task)
    }

    async fn run_sse(&self, tx: &mpsc::Sender<()>, backoff: &mut Duration) -> Result<(), String> {
        let url = format!("{}/api/realtime", self.inner.base);
        let resp = self
            .inner
            .sse
            .get(&url)
            .header("Accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::OK {
            return Err(format!("GET /api/realtime: {}", resp.status()));
        }
        let mut events = resp.bytes_stream().eventsource();
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(|e| e.to_string())?;
            if ev.event == "PB_CONNECT" {
                let client_id = serde_json::from_str::<Value>(&ev.data)
                    .ok()
                    .and_then(|v| v.get("clientId").and_then(Value::as_str).map(str::to_owned))
                    .ok_or("PB_CONNECT without clientId")?;
                self.realtime_subscribe(&client_id).await?;
                *backoff = MIN_BACKOFF;
                // Anything may have happened while we were not connected.
                let _ = tx.try_send(());
            } else {
                let _ = tx.try_send(());
            }
            if tx.is_closed() {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn realtime_subscribe(&self, client_id: &str) -> Result<(), String> {
        let mut subs: Vec<String> = self
            .collections()
            .iter()
            .map(|c| format!("{c}/*"))
            .collect();
        subs.push(format!("{TOMBSTONES}/*"));
        let body = json!({ "clientId": client_id, "subscriptions": subs });
        let r = self
            .call(reqwest::Method::POST, "/api/realtime", Some(&body))
            .await
            .map_err(|e| e.to_string())?;
        if !r.status.is_success() {
            return Err(format!("realtime subscribe: {}", r.status));
        }
        Ok(())
    }
}

/// Cheap jitter (not security relevant): a randomly seeded hash of the clock.
fn jitter_ms() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}
