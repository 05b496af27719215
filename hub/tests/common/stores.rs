//! Stores the tests put in front of a real one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use spacesync_hub::store::{Kv, KvIter, Store, StoreError, WriteBatch};

/// A store whose writes fail after the first `writes` of them: a process killed part-way
/// through what it was writing (reads go on).
pub struct KilledAfter {
    inner: Arc<dyn Store>,
    left: AtomicUsize,
}

impl KilledAfter {
    /// `inner`, its writes failing after `writes` of them.
    pub fn new(inner: Arc<dyn Store>, writes: usize) -> KilledAfter {
        KilledAfter {
            inner,
            left: AtomicUsize::new(writes),
        }
    }
}

impl Store for KilledAfter {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn scan(&self, prefix: &[u8]) -> KvIter<'_> {
        self.inner.scan(prefix)
    }
    fn scan_from(&self, prefix: &[u8], from: &[u8]) -> KvIter<'_> {
        self.inner.scan_from(prefix, from)
    }
    fn last(&self, prefix: &[u8]) -> Result<Option<Kv>, StoreError> {
        self.inner.last(prefix)
    }
    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        if self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
        {
            return Err(StoreError::Backend {
                op: "apply",
                message: "killed".into(),
            });
        }
        self.inner.apply(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
}
