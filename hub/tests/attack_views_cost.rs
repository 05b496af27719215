//! What one subject's history costs each new snapshot of it. Until layout 4 a subject's
//! snapshots were listed under one key (`v/l/<subject>`), read and rewritten whole with
//! each new one: a source that sent one school's snapshot over and over (a re-import loop,
//! or a hostile key holder) made every write of that school cost more than the one before,
//! under the writer lock every other source waits on (613 bytes after 10 snapshots, 6,135
//! after 5,000). Now each count names its subject's previous one, and a new snapshot writes
//! its block and its subject's summary, whatever the history. (An earlier-dated snapshot
//! still re-walks the subject's chain: reads, not writes, that grow with its history.)

mod common;

use common::*;
use spacesync_hub::store::{MemStore, Store, WriteBatch};
use spacesync_hub::views::{Meta, Views};
use spacesync_shared::{Campaign, Record, SourceId};

/// Bytes one more snapshot of a school writes (keys and values of its write), after
/// `history` snapshots of it dated over 40 days in turn (every 40th goes back in time).
fn bytes_of_one_more(history: u64) -> usize {
    let baseline = Campaign::builtin_2018().baseline;
    let store = MemStore::new();
    spacesync_hub::views::prepare(&store, baseline).expect("prepare");
    let mut views = Views::new(baseline);
    let source = SourceId::parse("gd-a").expect("id");
    let mut last = 0;
    for i in 0..=history {
        let record: Record = record_of(&teachers(
            "440106",
            "4144010601",
            &(baseline + chrono::Duration::days((i % 40) as i64)).to_string(),
            i,
        ));
        let mut wb = WriteBatch::new();
        views
            .apply(
                &store,
                Meta {
                    log_index: i,
                    received_at: t0(),
                    source: source.clone(),
                    seq: i + 1,
                    recorded_at: t0(),
                    withdrawn_by: None,
                },
                &record,
                &mut wb,
            )
            .expect("apply");
        // As every batch the hub commits: the views' position and the source's activity.
        views.seal(&store, &mut wb).expect("seal");
        last = wb
            .pending_under(b"")
            .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len))
            .sum::<usize>();
        store.apply(wb).expect("write");
    }
    last
}

#[test]
fn one_more_snapshot_costs_the_same_whatever_the_schools_history() {
    let small = bytes_of_one_more(10);
    let large = bytes_of_one_more(2_000);
    eprintln!("one more snapshot after 10: {small} bytes; after 2,000: {large} bytes");
    // The summary holds a decrease per date the history steps back from (at most 40
    // here); with the lists it was ~1 byte more per snapshot held (about 2,600 here).
    assert!(large < small * 3, "{small} -> {large}");
}
