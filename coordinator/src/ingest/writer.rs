//! The group-commit writer: one thread that takes every batch waiting from all agents
//! (up to 512) and commits them in one store transaction, then answers each sender. One
//! transaction for many batches is what makes a large fleet affordable; acking only after
//! the commit is what makes an ack a promise.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::app::App;
use crate::store::{IngestItem, StoreError};

/// Why a batch was not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("ingest commit failed: {0}")]
    Commit(Arc<StoreError>),
    #[error("ingest stopped")]
    Stopped,
}

type Reply = oneshot::Sender<Result<bool, WriteError>>;

/// The sending side of the writer thread.
#[derive(Debug)]
pub struct Writer {
    tx: mpsc::Sender<(IngestItem, Reply)>,
}

impl Writer {
    /// Starts the writer thread over `app`'s store and counters.
    pub fn spawn(app: Arc<App>) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel(4096);
        std::thread::Builder::new()
            .name("ingest-writer".into())
            .spawn(move || run(&app, rx))?;
        Ok(Writer { tx })
    }

    /// Whether the thread still runs (it owns the receiver).
    pub fn alive(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Commits one batch with whatever else is waiting; true when it was a duplicate.
    pub async fn commit(&self, item: IngestItem) -> Result<bool, WriteError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx
            .send((item, reply_tx))
            .await
            .map_err(|_| WriteError::Stopped)?;
        reply_rx.await.map_err(|_| WriteError::Stopped)?
    }
}

fn run(app: &App, mut rx: mpsc::Receiver<(IngestItem, Reply)>) {
    let stats = &app.stats;
    let mut group: Vec<(IngestItem, Reply)> = Vec::with_capacity(512);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < 512 {
            match rx.try_recv() {
                Ok(x) => group.push(x),
                Err(_) => break,
            }
        }
        let (items, replies): (Vec<_>, Vec<_>) = group.drain(..).unzip();
        let t = Instant::now();
        let result = app.store.ingest(&items);
        stats
            .ingest_nanos
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match result {
            Ok(dups) => {
                for ((item, reply), dup) in items.iter().zip(replies).zip(dups) {
                    if dup {
                        stats.duplicate_batches.fetch_add(1, Ordering::Relaxed);
                    } else {
                        stats.batches.fetch_add(1, Ordering::Relaxed);
                        let n = item.batch.value_count(item.points) as u64;
                        stats.samples.fetch_add(n, Ordering::Relaxed);
                    }
                    let _ = reply.send(Ok(dup));
                }
            }
            Err(e) => {
                warn!("ingest commit failed: {e}");
                let e = Arc::new(e);
                for reply in replies {
                    let _ = reply.send(Err(WriteError::Commit(e.clone())));
                }
            }
        }
    }
}
