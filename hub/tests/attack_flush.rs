//! The hub never acknowledges what is not flushed — also when a batch holds only entries
//! it already holds. A write whose flush failed is applied in the store, and the state the
//! hub reloads after the failure holds its entries; the agent, told nothing, sends them
//! again, and the hub answers them as resent. Their receipts must wait for a flush that
//! covers them.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use spacesync_hub::hub::{Hub, Limits};
use spacesync_hub::store::{Kv, KvIter, MemStore, Store, StoreError, WriteBatch};
use spacesync_shared::Campaign;
use spacesync_shared::clock::FixedClock;
use spacesync_shared::wire::ReceiptForm;

/// A store that knows whether something applied is not yet flushed, and whose next flush
/// can be made to fail.
#[derive(Default)]
struct Flaky {
    inner: MemStore,
    dirty: AtomicBool,
    fail_next_flush: AtomicBool,
    /// The next apply fails (nothing applied), and reads fail from then on.
    fail_next_apply: AtomicBool,
    /// Every read fails while set.
    fail_reads: AtomicBool,
}

impl Flaky {
    fn read_fault(&self) -> Result<(), StoreError> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(StoreError::Backend {
                op: "get",
                message: "input/output error".into(),
            });
        }
        Ok(())
    }
}

impl Store for Flaky {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_fault()?;
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
        if self.fail_next_apply.swap(false, Ordering::SeqCst) {
            // The disk answers no read either, for a moment.
            self.fail_reads.store(true, Ordering::SeqCst);
            return Err(StoreError::Backend {
                op: "apply",
                message: "no space left on device".into(),
            });
        }
        self.dirty.store(true, Ordering::SeqCst);
        self.inner.apply(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        if self.fail_next_flush.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Backend {
                op: "flush",
                message: "no space left on device".into(),
            });
        }
        self.dirty.store(false, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn resent_entries_whose_first_write_was_not_flushed_are_receipted_only_after_a_flush() {
    for form in [ReceiptForm::PerEntry, ReceiptForm::Batch] {
        let store = Arc::new(Flaky::default());
        let hub = Hub::open(
            store.clone(),
            hub_key(),
            ORIGIN.to_string(),
            Campaign::builtin_2018(),
            Arc::new(FixedClock::new(t0())),
            Limits::default(),
        )
        .expect("open hub");
        let mut a = Agent::new("gd-a", 1, "440000");
        hub.add_source(a.id.clone(), a.scope, &a.key_line())
            .expect("register");
        let batch = a.batch(&[
            teachers("440106", "4144010601", "2018-11-05", 10),
            teachers("440106", "4144010602", "2018-11-05", 20),
        ]);
        // The write lands; its flush fails: nothing is acknowledged.
        store.fail_next_flush.store(true, Ordering::SeqCst);
        assert!(hub.ingest_with(batch.clone(), form).is_err());
        assert!(store.dirty.load(Ordering::SeqCst));
        // The agent sends the same entries again.
        let out = hub.ingest_with(batch, form).expect("resend");
        assert_eq!(out.status, 200, "{:?}", out.response);
        let receipted = out.response.receipts.len()
            + out
                .response
                .batch_receipt
                .as_ref()
                .map_or(0, |_| batch_len_of(&out.response));
        assert_eq!(receipted, 2, "{form:?}: both receipted");
        assert!(
            !store.dirty.load(Ordering::SeqCst),
            "{form:?}: receipts for entries no flush has covered"
        );
    }
}

fn batch_len_of(r: &spacesync_shared::wire::IngestResponse) -> usize {
    r.batch_receipt
        .as_ref()
        .and_then(|env| {
            spacesync_shared::wire::BatchReceipt::open(env, &hub_key().verifying_key()).ok()
        })
        .map_or(0, |b| b.entries.len())
}

/// A write that fails, then a reload of the state that fails too (the disk answers no read
/// for a moment): the hub must not go on from the state the failed write left in memory
/// (its tree already counts the failed batch's leaves), or the next batch lands past leaves
/// that were never written — a log with holes, receipts for leaves no proof can reach.
#[test]
fn a_failed_write_then_a_failed_reload_leaves_no_hole_in_the_log() {
    let store = Arc::new(Flaky::default());
    let hub = Hub::open(
        store.clone(),
        hub_key(),
        ORIGIN.to_string(),
        Campaign::builtin_2018(),
        Arc::new(FixedClock::new(t0())),
        Limits::default(),
    )
    .expect("open hub");
    let mut a = Agent::new("gd-a", 1, "440000");
    hub.add_source(a.id.clone(), a.scope, &a.key_line())
        .expect("register");
    let first = a.batch(&[teachers("440106", "4144010601", "2018-11-05", 10)]);
    assert_eq!(hub.ingest(first).expect("first").status, 200);
    let second = a.batch(&[
        teachers("440106", "4144010602", "2018-11-05", 20),
        teachers("440106", "4144010603", "2018-11-05", 30),
    ]);
    store.fail_next_apply.store(true, Ordering::SeqCst);
    assert!(hub.ingest(second.clone()).is_err());
    assert!(store.fail_reads.load(Ordering::SeqCst), "the write failed");
    store.fail_reads.store(false, Ordering::SeqCst);
    // The disk is back; the agent sends the batch again: the hub reads its state back and
    // takes it, and the log has no hole and verifies clean.
    let again = hub
        .ingest(second)
        .expect("the disk is back: the batch is taken");
    assert_eq!(again.status, 200, "{:?}", again.response);
    assert_eq!(again.response.held_through, 3);
    let size = spacesync_hub::log::Log::load(store.as_ref())
        .expect("frontier")
        .size();
    for i in 0..size {
        assert!(
            spacesync_hub::log::read(store.as_ref(), i)
                .expect("read")
                .is_some(),
            "log leaf {i} of {size} was never written"
        );
    }
    let report = spacesync_hub::maintenance::verify(
        store.as_ref(),
        &hub_key().verifying_key(),
        ORIGIN,
        |_| {},
    )
    .expect("verify");
    assert!(report.ok(), "{:#?}", report.problems);
}
