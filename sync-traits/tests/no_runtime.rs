//! The engine outside any tokio runtime (a plain executor): pages are pulled one
//! by one and the time limits, which need tokio's timers, are not kept; the sync
//! still converges.
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use serde_json::json;
use sync_traits::testkit::{FakeRemote, MemoryStore};
use sync_traits::{new_id, LocalStore, Record, SyncConfig, SyncEngine};

/// A minimal executor: polls `f` on this thread, parking between wake-ups.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[test]
fn a_sync_outside_a_tokio_runtime_converges() {
    assert!(tokio::runtime::Handle::try_current().is_err());
    let server = FakeRemote::new();
    let a = Arc::new(MemoryStore::new());
    let b = Arc::new(MemoryStore::new());
    let config = SyncConfig {
        page_size: 10,
        ..Default::default()
    };
    assert!(
        config.stall_limit.is_some(),
        "the default has a stall limit"
    );
    let ea = SyncEngine::new(a.clone(), server.clone()).with_config(config.clone());
    let eb = SyncEngine::new(b.clone(), server.clone()).with_config(config);
    for i in 0..35 {
        let fields = json!({"title": format!("t{i}")})
            .as_object()
            .cloned()
            .unwrap();
        block_on(a.put(Record::new("songs", new_id(), fields))).unwrap();
    }
    let r = block_on(ea.sync()).expect("push outside a runtime");
    assert_eq!(r.pushed, 35);
    let r = block_on(eb.sync()).expect("pull outside a runtime");
    assert_eq!(r.pulled, 35);
    assert_eq!(b.all_records(), server.snapshot());
    assert_eq!(block_on(b.list("songs")).unwrap().len(), 35);
}
