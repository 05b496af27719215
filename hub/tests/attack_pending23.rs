//! Attacks on views layout 5 (a32e1e5): summaries pending under `v/d/`, folded into `v/s/`.
//!
//! - a batched twin (tiny fold windows, reloads from the store and from a views
//!   checkpoint, rebuilds, sliced folds) against views that write each key directly,
//!   with batches of more than `PER_VALUE` (32) subjects, late snapshots and withdrawals
//!   (of counts of the same batch too);
//! - every fold slice, taken alone, leaves the store reading the same;
//! - a store that stops batching (a sled store migrated to PostgreSQL) with values left;
//! - what the first write of such a store reads to fold them (linear, not quadratic);
//! - damage to `v/d/`, named by verify;
//! - a hub on sled: clean stop with a checkpoint, pending values, the checkpoint check,
//!   a fold from the checkpoint's summaries.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::model::{Model, school};
use common::*;
use serde_json::Value;
use spacesync_hub::hub::Hub;
use spacesync_hub::maintenance;
use spacesync_hub::store::{Kv, KvIter, MemStore, Store, StoreError, WriteBatch};
use spacesync_hub::views::{self, Views};
use spacesync_shared::Record;
use spacesync_shared::record::SpaceKind;
use spacesync_shared::{Campaign, RegionCode, SourceId};

const PENDING: &[u8] = b"v/d/";

// ---------------------------------------------------------------------------------------
// A store whose choice of batching can change (a migration), that keeps a views
// checkpoint like sled, and counts the `v/d/` rows its reads hand out.

struct Wrap {
    inner: Arc<dyn Store>,
    batches: AtomicBool,
    ckpt: Mutex<Option<Vec<u8>>>,
    ckpt_taken: AtomicUsize,
    pending_rows: Arc<AtomicUsize>,
}

impl Wrap {
    fn new(batches: bool) -> Wrap {
        Wrap::on(Arc::new(MemStore::new()), batches)
    }

    fn on(inner: Arc<dyn Store>, batches: bool) -> Wrap {
        Wrap {
            inner,
            batches: AtomicBool::new(batches),
            ckpt: Mutex::new(None),
            ckpt_taken: AtomicUsize::new(0),
            pending_rows: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn counted<'a>(&'a self, it: KvIter<'a>) -> KvIter<'a> {
        let rows = self.pending_rows.clone();
        Box::new(it.inspect(move |r| {
            if r.as_ref().is_ok_and(|(k, _)| k.starts_with(PENDING)) {
                rows.fetch_add(1, Ordering::SeqCst);
            }
        }))
    }
}

impl Store for Wrap {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn scan(&self, prefix: &[u8]) -> KvIter<'_> {
        self.counted(self.inner.scan(prefix))
    }
    fn scan_from(&self, prefix: &[u8], from: &[u8]) -> KvIter<'_> {
        self.counted(self.inner.scan_from(prefix, from))
    }
    fn first_from(&self, prefix: &[u8], from: &[u8]) -> Result<Option<Kv>, StoreError> {
        let r = self.inner.first_from(prefix, from)?;
        if r.as_ref().is_some_and(|(k, _)| k.starts_with(PENDING)) {
            self.pending_rows.fetch_add(1, Ordering::SeqCst);
        }
        Ok(r)
    }
    fn last(&self, prefix: &[u8]) -> Result<Option<Kv>, StoreError> {
        self.inner.last(prefix)
    }
    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.inner.apply(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn batches_summaries(&self) -> bool {
        self.batches.load(Ordering::SeqCst)
    }
    fn take_views_checkpoint(&self) -> Option<Vec<u8>> {
        let c = self.ckpt.lock().unwrap_or_else(|p| p.into_inner()).take();
        if c.is_some() {
            self.ckpt_taken.fetch_add(1, Ordering::SeqCst);
        }
        c
    }
    fn discard_views_checkpoint(&self) {
        *self.ckpt.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

// ---------------------------------------------------------------------------------------
// Views driven as ingest drives them (DirectViews, over any store)

/// Views over a [`Wrap`] (batching or not, counting reads), driven as ingest drives them.
type Twin = DirectViews<Wrap>;

/// `entries` with their records read, as [`DirectViews::apply_batch`] takes them.
fn records(entries: &[(SourceId, u64, Value)]) -> Vec<(SourceId, u64, Record)> {
    entries
        .iter()
        .map(|(s, q, v)| (s.clone(), *q, record_of(v)))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The merge rule for teacher spaces, and what the views serve

fn teachers_served(views: &Views, campaign: &Campaign) -> BTreeMap<String, u64> {
    let county = RegionCode::parse("440106").expect("code");
    views
        .rollup(campaign)
        .schools_in(county)
        .into_iter()
        .filter_map(|(code, f)| Some((code.to_string(), f.spaces.get(SpaceKind::Teacher)?)))
        .collect()
}

/// The stored views as they read (pending read over `v/s/`).
fn folded(store: &dyn Store) -> BTreeMap<Vec<u8>, Vec<u8>> {
    views::read_as_folded(store).expect("read the views")
}

/// The keys whose folded reading differs between two stores (none, or a panic naming them).
fn assert_same(a: &dyn Store, b: &dyn Store, at: &str) {
    let (a, b) = (folded(a), folded(b));
    let differ: Vec<String> = a
        .keys()
        .chain(b.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&k[..4.min(k.len())]),
                hex(&k[4.min(k.len())..])
            )
        })
        .collect();
    assert!(differ.is_empty(), "{at}: stored views differ at {differ:?}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Summaries the stored `v/d/` values hold (the value format: 13 key bytes, u32 length,
/// the summary), and how many values.
fn stored_pending(store: &dyn Store) -> (u64, u64) {
    let (mut n, mut values) = (0, 0);
    for r in store.scan(PENDING) {
        let (_, v) = r.expect("scan");
        values += 1;
        let mut rest = v.as_slice();
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[13..17].try_into().expect("4")) as usize;
            rest = &rest[17 + len..];
            n += 1;
        }
    }
    (n, values)
}

/// A `v/d/` value decoded: its key, and (subject key bytes, summary) for each summary.
type PendingValue = (Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>);

/// The `v/d/` values decoded.
fn pending_values(store: &dyn Store) -> Vec<PendingValue> {
    let mut out = Vec::new();
    for r in store.scan(PENDING) {
        let (k, v) = r.expect("scan");
        let mut rest = v.as_slice();
        let mut items = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[13..17].try_into().expect("4")) as usize;
            items.push((rest[..13].to_vec(), rest[17..17 + len].to_vec()));
            rest = &rest[17 + len..];
        }
        out.push((k, items));
    }
    out
}

/// A random batch: snapshots of the county's own total and of up to 45 schools (often
/// more than 32 distinct subjects, so a batch's summaries span several values), dated
/// back and forth; withdrawals of the source's recent entries, those of this batch too.
fn random_batch(
    rng: &mut Rng,
    next_seq: &mut [u64; 2],
    sources: &[&str; 2],
    schools: u64,
    max: u64,
) -> Vec<(usize, u64, Value)> {
    let n = 1 + rng.below(max);
    let mut out = Vec::new();
    for _ in 0..n {
        let s = rng.below(2) as usize;
        let seq = next_seq[s];
        next_seq[s] += 1;
        let record = if seq > 1 && rng.chance(20) {
            withdrawal(rng.range(1u64.max(seq.saturating_sub(40)), seq - 1))
        } else {
            let day = 1 + rng.below(28);
            let which = rng.below(schools + 1);
            teachers(
                "440106",
                &if which == 0 {
                    String::new()
                } else {
                    school(which)
                },
                &format!("2018-10-{day:02}"),
                rng.range(1, 500),
            )
        };
        out.push((s, seq, record));
    }
    let _ = sources;
    out
}

fn as_entries(sources: &[&str; 2], batch: &[(usize, u64, Value)]) -> Vec<(SourceId, u64, Value)> {
    batch
        .iter()
        .map(|(s, seq, r)| (SourceId::parse(sources[*s]).expect("id"), *seq, r.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. The batched twin against views that write every key

/// After every batch the twin (summaries pending under `v/d/`, fold windows of 1-80)
/// reads back exactly what views writing each summary under its key stored, serves the
/// rule, holds as many pending summaries as its count says, never more than its window
/// (or than before), and loads back to the same views; between batches it is reloaded
/// from the store or from a views checkpoint, rebuilt, or folded in slices (each slice
/// alone leaving the store reading the same). Verify is clean at the end.
#[test]
fn a_batched_twin_stores_and_serves_what_direct_writes_do() {
    let campaign = Campaign::builtin_2018();
    let baseline = campaign.baseline;
    let sources = ["gd-a", "gd-b"];
    let seeds: u64 = std::env::var("ATTACK_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let (mut multi_value_batches, mut folds, mut ckpt_loads, mut partial_folds) = (0, 0, 0, 0);
    for seed in 0..seeds {
        let mut rng = Rng::new(0x5e23_0000 + seed);
        let mut live = Twin::on(Wrap::new(true), baseline);
        let mut twin = Twin::on(Wrap::new(true), baseline);
        let mut fold_at = 1 + rng.below(80);
        twin.views = Views::new(baseline).with_pending_summaries(fold_at);
        let mut model = Model::default();
        let mut next_seq = [1u64; 2];
        for round in 0..30 {
            let batch = random_batch(&mut rng, &mut next_seq, &sources, 45, 70);
            let entries = as_entries(&sources, &batch);
            let gap = rng.below(2);
            let before = stored_pending(&twin.store);
            live.apply_batch(gap, &records(&entries), t0());
            twin.apply_batch(gap, &records(&entries), t0());
            for (s, seq, r) in &batch {
                model.entry(sources[*s], *seq, r);
            }
            let after = stored_pending(&twin.store);
            multi_value_batches += usize::from(after.1 > before.1 + 1);
            folds += usize::from(after.0 < before.0);
            let at = format!("seed {seed}, round {round}");
            assert_eq!(
                after.0,
                twin.views.pending_summaries(),
                "{at}: the views count other pending summaries than the store holds"
            );
            assert!(
                after.0 <= fold_at.max(before.0),
                "{at}: {} pending after a batch, window {fold_at}, {} before",
                after.0,
                before.0
            );
            assert_same(&live.store, &twin.store, &at);
            let want = model.teachers();
            assert_eq!(teachers_served(&live.views, &campaign), want, "{at}: live");
            assert_eq!(teachers_served(&twin.views, &campaign), want, "{at}: twin");
            let fresh = Views::load(&twin.store, baseline).expect("load");
            assert_eq!(
                fresh.differing_subjects(&twin.views),
                Vec::<String>::new(),
                "{at}: a load reads other summaries than the twin holds"
            );
            match rng.below(6) {
                0 => {
                    fold_at = 1 + rng.below(80);
                    twin.views = Views::load(&twin.store, baseline)
                        .expect("load")
                        .with_pending_summaries(fold_at);
                }
                1 => {
                    // A clean stop's checkpoint, read back at the next start.
                    *twin.store.ckpt.lock().unwrap() = Some(twin.views.checkpoint(0));
                    let taken = twin.store.ckpt_taken.load(Ordering::SeqCst);
                    fold_at = 1 + rng.below(80);
                    twin.views = Views::load_at(&twin.store, baseline, 0)
                        .expect("load")
                        .with_pending_summaries(fold_at);
                    assert_eq!(twin.store.ckpt_taken.load(Ordering::SeqCst), taken + 1);
                    ckpt_loads += 1;
                }
                2 => {
                    maintenance::rebuild(&twin.store, baseline, |_| {}).expect("rebuild");
                    assert_eq!(stored_pending(&twin.store).1, 0, "{at}: rebuilt");
                    twin.views = Views::load(&twin.store, baseline)
                        .expect("load")
                        .with_pending_summaries(fold_at);
                }
                3 => {
                    // Folded as Hub::fold_summaries does, in slices; a process killed after
                    // any slice leaves a store that reads the same.
                    let budget = 1 + rng.below(40);
                    loop {
                        let mut wb = WriteBatch::new();
                        let mut v = twin.views.clone();
                        v.fold_oldest(&twin.store, &mut wb, 0, budget)
                            .expect("fold");
                        if wb.is_empty() {
                            break;
                        }
                        twin.store.apply(wb).expect("apply");
                        twin.views = v;
                        partial_folds += 1;
                        assert_same(
                            &live.store,
                            &twin.store,
                            &format!("{at}: after a fold slice"),
                        );
                        let killed = Views::load(&twin.store, baseline).expect("load");
                        assert_eq!(killed.differing_subjects(&twin.views), Vec::<String>::new());
                    }
                    assert_eq!(stored_pending(&twin.store).0, 0, "{at}: folded");
                }
                _ => {}
            }
        }
        assert_eq!(
            maintenance::views_problems(&twin.store, 2).expect("verdict"),
            Vec::<String>::new(),
            "seed {seed}"
        );
    }
    assert!(multi_value_batches > 10, "{multi_value_batches}");
    assert!(folds > 20, "{folds}");
    assert!(ckpt_loads > 3, "{ckpt_loads}");
    assert!(partial_folds > 10, "{partial_folds}");
}

/// Views of a second writer on the same store catch up with each batch of the first
/// (which folds with tiny windows): what they read back of each touched subject is its
/// latest summary, pending or folded, so they hold exactly the first writer's views.
#[test]
fn a_second_writer_catching_up_reads_each_subjects_latest_summary() {
    let campaign = Campaign::builtin_2018();
    let baseline = campaign.baseline;
    let sources = ["gd-a", "gd-b"];
    for seed in 0..8u64 {
        let mut rng = Rng::new(0xca7c_0000 + seed);
        let mut a = Twin::on(Wrap::new(true), baseline);
        a.views = Views::new(baseline).with_pending_summaries(1 + rng.below(60));
        let mut b = Views::load(&a.store, baseline).expect("load");
        let mut model = Model::default();
        let mut next_seq = [1u64; 2];
        for round in 0..25 {
            let batch = random_batch(&mut rng, &mut next_seq, &sources, 45, 60);
            let entries = as_entries(&sources, &batch);
            let indexes = a.apply_batch(0, &records(&entries), t0());
            let mut touched = views::Touched::default();
            for ((source, _, value), index) in entries.iter().zip(&indexes) {
                touched.entry(*index, source, &record_of(value));
            }
            b.catch_up(&a.store, touched).expect("catch up");
            for (s, seq, r) in &batch {
                model.entry(sources[*s], *seq, r);
            }
            let at = format!("seed {seed}, round {round}");
            assert_eq!(b.differing_subjects(&a.views), Vec::<String>::new(), "{at}");
            assert_eq!(teachers_served(&b, &campaign), model.teachers(), "{at}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. A store that stops batching with values left (sled migrated to PostgreSQL)

fn with_leftovers(seed: u64, rounds: u64, max: u64) -> (Twin, Twin, Model, [u64; 2], Rng) {
    with_leftovers_on(Wrap::new(true), seed, rounds, max)
}

fn with_leftovers_on(
    store: Wrap,
    seed: u64,
    rounds: u64,
    max: u64,
) -> (Twin, Twin, Model, [u64; 2], Rng) {
    let campaign = Campaign::builtin_2018();
    let baseline = campaign.baseline;
    let sources = ["gd-a", "gd-b"];
    let mut rng = Rng::new(seed);
    let mut live = Twin::on(Wrap::new(true), baseline);
    let mut twin = Twin::on(store, baseline);
    // Batched, a window no batch here reaches: every value is left.
    twin.views = Views::load(&twin.store, baseline)
        .expect("load")
        .with_pending_summaries(1 << 40);
    let mut model = Model::default();
    let mut next_seq = [1u64; 2];
    for _ in 0..rounds {
        let batch = random_batch(&mut rng, &mut next_seq, &sources, 45, max);
        let entries = as_entries(&sources, &batch);
        live.apply_batch(0, &records(&entries), t0());
        twin.apply_batch(0, &records(&entries), t0());
        for (s, seq, r) in &batch {
            model.entry(sources[*s], *seq, r);
        }
    }
    assert_same(&live.store, &twin.store, "leftovers");
    (live, twin, model, next_seq, rng)
}

/// A store that batched summaries, then does not (a migration to PostgreSQL): the values
/// it left are folded at the first write, and the keys it writes from then on are never
/// read under an older pending value, across reloads, with late snapshots and withdrawals.
#[test]
fn values_left_by_a_batching_store_never_shadow_a_direct_stores_writes() {
    let campaign = Campaign::builtin_2018();
    let baseline = campaign.baseline;
    let sources = ["gd-a", "gd-b"];
    for seed in 0..6u64 {
        let (mut live, mut twin, mut model, mut next_seq, mut rng) =
            with_leftovers(0xd1ec_0000 + seed, 12, 50);
        assert!(stored_pending(&twin.store).0 > 20);
        twin.store.batches.store(false, Ordering::SeqCst);
        twin.views = Views::load(&twin.store, baseline).expect("load");
        for round in 0..12 {
            let batch = random_batch(&mut rng, &mut next_seq, &sources, 45, 50);
            let entries = as_entries(&sources, &batch);
            let gap = rng.below(2);
            live.apply_batch(gap, &records(&entries), t0());
            twin.apply_batch(gap, &records(&entries), t0());
            for (s, seq, r) in &batch {
                model.entry(sources[*s], *seq, r);
            }
            let at = format!("seed {seed}, round {round}");
            assert_eq!(stored_pending(&twin.store), (0, 0), "{at}: left");
            assert_same(&live.store, &twin.store, &at);
            assert_eq!(
                teachers_served(&twin.views, &campaign),
                model.teachers(),
                "{at}"
            );
            if rng.chance(30) {
                twin.views = Views::load(&twin.store, baseline).expect("load");
                assert_eq!(
                    teachers_served(&twin.views, &campaign),
                    model.teachers(),
                    "{at}"
                );
            }
        }
        assert_eq!(
            maintenance::views_problems(&twin.store, 2).expect("verdict"),
            Vec::<String>::new(),
            "seed {seed}"
        );
    }
}

/// The first write of a store that does not batch, with `n` values left: the `v/d/` rows
/// it reads to fold them. Each value is read once (or a few times) when the fold walks
/// them in order; re-reading every value it removed before the next one is n^2/2.
#[test]
fn the_first_write_after_a_migration_reads_each_left_value_a_bounded_number_of_times() {
    let campaign = Campaign::builtin_2018();
    let baseline = campaign.baseline;
    let sources = ["gd-a", "gd-b"];
    // One summary a value: 1,500 values (a sled store at FOLD_AT holds 32,768).
    let (_live, mut twin, _model, mut next_seq, mut rng) = with_leftovers(0x9e7, 1_500, 1);
    let (summaries, values) = stored_pending(&twin.store);
    assert!(values >= 1_000, "{values} values");
    twin.store.batches.store(false, Ordering::SeqCst);
    twin.views = Views::load(&twin.store, baseline).expect("load");
    let batch = random_batch(&mut rng, &mut next_seq, &sources, 45, 1);
    let entries = as_entries(&sources, &batch);
    twin.store.pending_rows.store(0, Ordering::SeqCst);
    let started = std::time::Instant::now();
    twin.apply_batch(0, &records(&entries), t0());
    let took = started.elapsed();
    let rows = twin.store.pending_rows.load(Ordering::SeqCst) as u64;
    assert_eq!(stored_pending(&twin.store), (0, 0));
    eprintln!(
        "first direct write: {values} values ({summaries} summaries) left, {rows} v/d/ rows read, {took:?}"
    );
    assert!(
        rows <= 4 * values + 64,
        "the first write read {rows} v/d/ rows to fold {values} values ({:.0} a value): quadratic in what a migration leaves",
        rows as f64 / values as f64
    );
}

/// The same on PostgreSQL (scans in pages of 512 rows): the values a sled store left,
/// copied by `migrate`, folded by the first write, with the time it takes.
#[test]
fn on_postgresql_the_first_write_after_a_migration_reads_each_left_value_a_bounded_number_of_times()
{
    use spacesync_hub::store::pg::PgStore;
    let campaign = Campaign::builtin_2018();
    let baseline = campaign.baseline;
    let sources = ["gd-a", "gd-b"];
    let pg: Arc<dyn Store> =
        Arc::new(PgStore::open(&spacesync_pgtest::database()).expect("open the test database"));
    let (_live, mut twin, _model, mut next_seq, mut rng) =
        with_leftovers_on(Wrap::on(pg, true), 0x9e8, 1_000, 1);
    let (summaries, values) = stored_pending(&twin.store);
    twin.store.batches.store(false, Ordering::SeqCst);
    twin.views = Views::load(&twin.store, baseline).expect("load");
    let batch = random_batch(&mut rng, &mut next_seq, &sources, 45, 1);
    let entries = as_entries(&sources, &batch);
    twin.store.pending_rows.store(0, Ordering::SeqCst);
    let started = std::time::Instant::now();
    twin.apply_batch(0, &records(&entries), t0());
    let took = started.elapsed();
    let rows = twin.store.pending_rows.load(Ordering::SeqCst) as u64;
    assert_eq!(stored_pending(&twin.store), (0, 0));
    eprintln!(
        "PostgreSQL, first direct write: {values} values ({summaries} summaries) left, {rows} v/d/ rows read, {took:?}"
    );
    assert!(
        rows <= 4 * values + 64,
        "the first write read {rows} v/d/ rows to fold {values} values, in {took:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 3. Damage to `v/d/`

/// A pending value of a school replayed under a later key (an older summary read over the
/// newer), or the newest value of a school removed: verify names a summary, and a load
/// serves the older figure (what the store says), until a rebuild.
#[test]
fn a_replayed_or_removed_pending_value_is_named_by_verify() {
    let campaign = Campaign::builtin_2018();
    let baseline = campaign.baseline;
    for how in ["replayed", "removed", "reordered"] {
        let mut live = Twin::on(Wrap::new(true), baseline);
        let mut twin = Twin::on(Wrap::new(true), baseline);
        twin.views = Views::new(baseline).with_pending_summaries(1 << 40);
        let a = SourceId::parse("gd-a").expect("id");
        for (seq, (day, n)) in [(10, 5), (12, 7), (14, 9)].into_iter().enumerate() {
            let e = vec![(
                a.clone(),
                seq as u64 + 1,
                teachers("440106", &school(1), &format!("2018-10-{day}"), n),
            )];
            live.apply_batch(0, &records(&e), t0());
            twin.apply_batch(0, &records(&e), t0());
        }
        assert_same(&live.store, &twin.store, "leftovers");
        assert_eq!(
            maintenance::views_problems(&twin.store, 2).expect("verdict"),
            Vec::<String>::new(),
            "{how}: before the damage"
        );
        let values = pending_values(&twin.store);
        assert_eq!(values.len(), 3);
        let mut wb = WriteBatch::new();
        match how {
            "replayed" => {
                let mut key = PENDING.to_vec();
                key.extend_from_slice(&(u64::MAX - 1).to_be_bytes());
                key.extend_from_slice(&0u32.to_be_bytes());
                wb.put(key, twin.store.get(&values[0].0).unwrap().unwrap());
            }
            "removed" => wb.delete(values[2].0.clone()),
            _ => {
                // The newest and the oldest swap keys.
                let (old, new) = (&values[0], &values[2]);
                wb.put(old.0.clone(), twin.store.get(&new.0).unwrap().unwrap());
                wb.put(new.0.clone(), twin.store.get(&old.0).unwrap().unwrap());
            }
        }
        twin.store.apply(wb).expect("damage");
        let p = maintenance::views_problems(&twin.store, 2).expect("verdict");
        assert!(
            p.iter().any(|l| l.contains("summaries disagree")),
            "{how}: {p:#?}"
        );
        let served = teachers_served(
            &Views::load(&twin.store, baseline).expect("load"),
            &campaign,
        );
        let stale = if how == "removed" { 7 } else { 5 };
        assert_eq!(served.get(&school(1)), Some(&stale), "{how}: {served:?}");
        maintenance::rebuild(&twin.store, baseline, |_| {}).expect("rebuild");
        assert_eq!(
            maintenance::views_problems(&twin.store, 2).expect("verdict"),
            Vec::<String>::new(),
            "{how}: rebuilt"
        );
        assert_same(&live.store, &twin.store, "leftovers");
    }
}

// ---------------------------------------------------------------------------------------
// 4. A hub on sled: the checkpoint over pending summaries

fn send(hub: &Hub, agent: &mut Agent, model: &mut Model, records: &[Value]) {
    let first = agent.next;
    let out = hub.ingest(agent.batch(records)).expect("ingest");
    assert_eq!(out.status, 200, "{:?}", out.response.refused);
    for (i, r) in records.iter().enumerate() {
        model.entry(agent.id.as_str(), first + i as u64, r);
    }
}

fn stop_with_checkpoint(th: &TestHub) {
    let snap = th.hub.snapshot();
    let bytes = snap.views.checkpoint(snap.head);
    assert!(
        th.hub
            .store
            .put_views_checkpoint(&bytes)
            .expect("checkpoint")
    );
}

fn figures(hub: &Hub) -> String {
    let s = hub.snapshot();
    let r = s.views.rollup(&hub.campaign);
    let county = RegionCode::parse("440106").expect("code");
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}",
        r.nation,
        r.totals,
        r.schools_in(county),
        r.flags
    )
}

/// A hub on sled with pending summaries (a wholly withdrawn school among them) stops
/// cleanly with its checkpoint: the checkpoint check finds it the same as the store; the
/// next start serves from it and folds everything from the checkpoint's summaries
/// (`Hub::fold_summaries`), after which a start without the checkpoint serves the same
/// and verify is clean.
#[test]
fn a_fold_from_the_checkpoints_summaries_keeps_every_latest_summary() {
    let dir = tempfile::tempdir().expect("dir");
    let mut model = Model::default();
    let mut agent = Agent::new("gd-a", 7, "440000");
    let mut rng = Rng::new(0xc4c4);
    {
        let th = TestHub::open(dir.path());
        th.register(&agent);
        for round in 0..25u64 {
            let mut records = Vec::new();
            for _ in 0..(1 + rng.below(50)) {
                let seq = agent.next + records.len() as u64;
                if seq > 1 && rng.chance(25) {
                    records.push(withdrawal(
                        rng.range(1u64.max(seq.saturating_sub(30)), seq - 1),
                    ));
                } else {
                    let which = rng.below(40);
                    records.push(teachers(
                        "440106",
                        &if which == 0 {
                            String::new()
                        } else {
                            school(which)
                        },
                        &format!("2018-10-{:02}", 1 + rng.below(28)),
                        rng.range(1, 500),
                    ));
                }
            }
            if round == 20 {
                // School 41 reported once, then withdrawn: an empty summary, pending.
                let seq = agent.next;
                records = vec![
                    teachers("440106", &school(41), "2018-10-03", 3),
                    withdrawal(seq),
                ];
            }
            send(&th.hub, &mut agent, &mut model, &records);
        }
        assert!(stored_pending(th.hub.store.as_ref()).0 > 100);
        assert_eq!(
            teachers_served(&th.hub.snapshot().views, &th.hub.campaign),
            model.teachers()
        );
        stop_with_checkpoint(&th);
    }
    let store = open_store(dir.path());
    assert_eq!(
        views::check_checkpoint(store.as_ref()).expect("check"),
        Vec::<String>::new(),
        "the checkpoint check read other summaries than the store's latest"
    );
    drop(store);
    // check_checkpoint took it: write it again as the stop would.
    let want;
    {
        let th = TestHub::open(dir.path());
        want = figures(&th.hub);
        stop_with_checkpoint(&th);
    }
    assert!(
        dir.path().join("views.ckpt").is_file(),
        "no checkpoint to start from"
    );
    {
        let th = TestHub::open(dir.path());
        assert_eq!(figures(&th.hub), want);
        th.hub.fold_summaries().expect("fold");
        assert_eq!(stored_pending(th.hub.store.as_ref()), (0, 0));
    }
    let _ = std::fs::remove_file(dir.path().join("views.ckpt"));
    let th = TestHub::open(dir.path());
    assert_eq!(
        figures(&th.hub),
        want,
        "after the fold, without the checkpoint"
    );
    assert_eq!(
        teachers_served(&th.hub.snapshot().views, &th.hub.campaign),
        model.teachers()
    );
    let p = maintenance::verify(
        th.hub.store.as_ref(),
        &hub_key().verifying_key(),
        ORIGIN,
        |_| {},
    )
    .expect("verify")
    .problems;
    assert!(p.is_empty(), "{p:#?}");
}
