//! Merged views over the log: space counts per school and region with the spec's merge and
//! roll-up rules, milestone submissions, nominations with quota checks, activities, and
//! withdrawals honoured.
//!
//! The views hold the present, not the history. Every view-relevant entry is written in
//! the same atomic batch as its log append, laid out so that a restart reads an amount
//! proportional to the subjects and the ledger, never to the entries:
//!
//! - **space counts** (the bulk: weekly snapshots of every school and region) live only on
//!   disk, in blocks of log indexes under `v/c/<last log index of the block>` in a compact
//!   encoding ([`codec`], [`blocks`]); each names the log index of its subject's previous
//!   one, so a subject's snapshots form a chain, newest first. Keys in log order are
//!   appended, not inserted among older ones, which sled stores at a fraction of the cost
//!   (see BENCHMARKS.md). In memory each subject (a region's own total, or a school) keeps
//!   its merged [`Summary`], also stored under `v/s/<subject>`, which holds where the
//!   subject's chain starts — on sled by way of `v/d/`, the summaries a batch changed
//!   stored together and folded into their keys later ([`pending`]). A snapshot in date
//!   order extends the summary in O(kinds): the entry writes its block (in log order) and
//!   its subject's summary, and reads nothing per subject; one dated earlier, or a withdrawal, re-walks the subject's chain from the
//!   store and the batch being written ([`Overlay`]).
//! - **ledger items** (milestones, nominations, activities, withdrawals: a few per unit)
//!   stay in memory and under `v/i/<log index>` (JSON).
//! - per-source activity under `v/a/<source>`, deadline extensions under `v/x/<log index>`,
//!   notice rule changes under `v/r/<log index>` (the rules in force are the campaign
//!   file's with these applied in log order: [`Views::rules`]), the layout version and the baseline date the summaries were merged for under `v/m`,
//!   the log index after the last entry held under `v/n`. A subject whose every snapshot
//!   was withdrawn keeps its (empty) summary stored, for the start of its chain.
//!
//! Each region's sum of its schools, the regions with an own total and the flagged subjects
//! follow from the summaries: they are derived at load (O(subjects)) and kept as summaries
//! change. A withdrawal finds its target through the hub's source index (`src/`), marks
//! the stored item withdrawn and re-walks its subject. Restart ([`Views::load`]) reads
//! `v/m`, `v/n`, `v/s/`, `v/d/`, `v/i/`, `v/a/`, `v/x/` and `v/r/` only — never `v/c/`; a store
//! in an older layout is converted once by [`prepare`].
//!
//! The in-memory parts are persistent maps (`imbl`): cloning the views is O(1) and shares
//! structure, and a change copies only the path to what it changes. That is what lets the
//! hub publish a snapshot to readers after every append at a cost that does not grow with
//! the log (see [`crate::hub::Snapshot`]). A snapshot that reads stored items (the oracle,
//! [`Views::items`]) ignores what was written after it ([`Views`]' position).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use spacesync_shared::campaign::{Campaign, QuotaLedger, QuotaViolation};
use spacesync_shared::record::{
    Activity, Milestone, Population, Recommendation, SpaceCount, SpaceCounts, SpaceKind,
};
use spacesync_shared::region::{Directory, Level, SchoolCode, unit};
use spacesync_shared::{Record, RegionCode, SourceId};
use tracing::{info, warn};

use crate::store::{Kv, Overlay, Reader, Store, StoreError, WriteBatch, keys};

mod blocks;
pub mod checkpoint;
mod codec;
mod figures;
mod pending;
mod subject;
mod subjects;
use codec::{Damaged, In, Out};
pub use figures::{Coverage, Figures, Flag, Meta};
use subject::{Subject, parse_subject, subject_from, subject_key};
use subjects::{SchoolSum, Summary};

/// `v/m`: the layout and the baseline date the stored summaries were merged for.
const LAYOUT_KEY: &[u8] = b"v/m";
/// `v/n`: the log index after the last entry the stored views hold (8 bytes, big-endian).
const NEXT_KEY: &[u8] = b"v/n";
/// `v/c/<last log index of a block>`: the space counts of a block of log indexes (see
/// [`blocks`]); in stores of layout 2, `v/c/<log index>`: one space count.
const COUNT_PREFIX: &[u8] = b"v/c/";
/// Layouts 2 and 3 only, removed by [`prepare`]: `v/l/<region u32><0 | 1><school u64>`,
/// the log indexes of a subject's space counts (what the chains replaced: the key was
/// read and rewritten whole by every snapshot of the subject).
const LIST_PREFIX: &[u8] = b"v/l/";
/// `v/s/<region u32><0 | 1><school u64>`: a subject's merged summary (unless a newer
/// one is pending under `v/d/`).
const SUMMARY_PREFIX: &[u8] = b"v/s/";
/// `v/d/<views position after the batch><u32>`: the summaries a batch changed, a few to a
/// value, pending a fold into `v/s/` ([`pending`]).
const PENDING_PREFIX: &[u8] = b"v/d/";
/// `v/i/<log index>`: a ledger item (JSON). In layout 1, every item.
const ITEM_PREFIX: &[u8] = b"v/i/";
/// `v/a/<source>`: what the views know of a source's traffic (JSON).
const ACTIVITY_PREFIX: &[u8] = b"v/a/";
/// `v/x/<log index>`: a deadline extension (JSON).
const EXTENSION_PREFIX: &[u8] = b"v/x/";
/// `v/r/<log index>`: a notice rule change (JSON).
const RULE_PREFIX: &[u8] = b"v/r/";
/// The layout this version writes: 1 kept every item under `v/i/`; 2 one space count per
/// `v/c/` value and a list of them per subject under `v/l/`; 3 the counts in blocks; 4 is
/// chains, no lists; 5 is the one above (4 and summaries pending under `v/d/`, which a
/// hub of layout 4 would not read). [`prepare`] converts 1 to 4 at the hub's start.
const LAYOUT: u32 = 5;

/// Whether this version reads views stored in `layout` without converting them.
fn readable(layout: u32) -> bool {
    layout == LAYOUT
}
/// Whether [`prepare`] converts views stored in `layout` (`v/m` present).
fn convertible(layout: u32) -> bool {
    (2..=LAYOUT).contains(&layout)
}
/// First byte of a stored space count: its encoding's version. 3 adds the link to the
/// subject's previous count right after it (2 is a block's first byte, never a count's).
const COUNT_FORMAT: u8 = 3;
/// The version before (layouts 2 and 3), without the link: read only to convert.
const OLDER_COUNT_FORMAT: u8 = 1;

pub use crate::entries::{Extension, HUB_ENTRY_PAYLOAD_TYPE, HubEntry, NoticeRuleChanged};

fn item_key(log_index: u64) -> Vec<u8> {
    [ITEM_PREFIX, &log_index.to_be_bytes()].concat()
}

fn count_key(log_index: u64) -> Vec<u8> {
    [COUNT_PREFIX, &log_index.to_be_bytes()].concat()
}

/// The subject named by a key: `prefix`, then exactly the `SUBJECT_LEN` bytes of a subject.
fn subject_of(key: &[u8], prefix: &[u8]) -> Result<Subject, StoreError> {
    let b = key
        .get(prefix.len()..)
        .ok_or(Damaged("not a subject's key"))
        .map_err(damaged(key))?;
    parse_subject(b).map_err(damaged(key))
}

/// A key for messages: its printable prefix, then the rest in hex.
fn printable(key: &[u8]) -> String {
    let text = key
        .iter()
        .take_while(|b| b.is_ascii_graphic())
        .count()
        .min(4);
    format!(
        "{}{}",
        String::from_utf8_lossy(&key[..text]),
        hex::encode(&key[text..])
    )
}

fn damaged(key: &[u8]) -> impl Fn(Damaged) -> StoreError + '_ {
    move |d| StoreError::Corrupt {
        key: printable(key),
        message: d.to_string(),
    }
}

/// A space count as stored: who and when, the count, and the log index of its subject's
/// previous stored count (`None` for the subject's first).
#[derive(Debug, Clone, PartialEq)]
struct Linked {
    meta: Meta,
    count: SpaceCount,
    prev: Option<u64>,
}

impl Linked {
    fn subject(&self) -> Subject {
        (self.count.region, self.count.school)
    }

    fn into_pair(self) -> (Meta, SpaceCount) {
        (self.meta, self.count)
    }
}

/// A space count as stored in its block (its log index is the block's key's and its
/// offset's), after `prev`, its subject's previous count: stored as the distance back
/// (0: none), so a chain can only run back in the log and always ends.
fn encode_count(meta: &Meta, s: &SpaceCount, prev: Option<u64>) -> Vec<u8> {
    let mut o = Out::new();
    o.u8(COUNT_FORMAT);
    o.uint(prev.map_or(0, |p| meta.log_index.saturating_sub(p)));
    o.uint(u64::from(s.region.as_u32()));
    match s.school {
        None => o.u8(0),
        Some(school) => {
            o.u8(1);
            o.uint(school.as_u64());
        }
    }
    o.time(meta.received_at);
    o.source(&meta.source);
    o.uint(meta.seq);
    o.time(meta.recorded_at);
    match meta.withdrawn_by {
        None => o.u8(0),
        Some(i) => {
            o.u8(1);
            o.uint(i);
        }
    }
    o.date(s.as_of);
    o.counts(&s.spaces);
    match &s.real_name {
        None => o.u8(0),
        Some(r) => {
            o.u8(1);
            o.counts(r);
        }
    }
    match &s.population {
        None => o.u8(0),
        Some(p) => {
            o.u8(1);
            o.population(p);
        }
    }
    o.into_bytes()
}

/// The log index a `v/c/` key names (a count's, or a block's last).
fn count_key_index(key: &[u8]) -> Result<u64, StoreError> {
    (key.len() == COUNT_PREFIX.len() + 8)
        .then(|| keys::tail_u64(key))
        .flatten()
        .ok_or_else(|| StoreError::Corrupt {
            key: printable(key),
            message: "key without a log index".into(),
        })
}

/// What a block stored under the key of an index that ends no block is.
const NOT_A_BLOCK_KEY: Damaged = Damaged("a block of space counts under a key that ends no block");

/// A space count stored alone under its own key (layout 2).
fn decode_count(key: &[u8], b: &[u8]) -> Result<Linked, StoreError> {
    decode_count_at(key, count_key_index(key)?, b)
}

/// Every space count a `v/c/` value holds, in log order: a block's, or the one count of
/// layout 2.
fn decode_counts(key: &[u8], b: &[u8]) -> Result<Vec<Linked>, StoreError> {
    if !blocks::is_block(b) {
        return Ok(vec![decode_count(key, b)?]);
    }
    let last = count_key_index(key)?;
    if blocks::block_last(last) != last {
        return Err(damaged(key)(NOT_A_BLOCK_KEY));
    }
    let first = last - (blocks::BLOCK - 1);
    blocks::parts(b)
        .map_err(damaged(key))?
        .into_iter()
        .map(|(off, bytes)| decode_count_at(key, first + u64::from(off), bytes))
        .collect()
}

/// A space count's encoding, at `log_index`, read from the value under `key`. One of
/// layouts 2 and 3 reads without its link (`prev` is `None`), for [`prepare`] to link.
fn decode_count_at(key: &[u8], log_index: u64, b: &[u8]) -> Result<Linked, StoreError> {
    let read = || -> Result<Linked, Damaged> {
        let mut i = In::new(b);
        let prev = match i.u8()? {
            COUNT_FORMAT => match i.uint()? {
                0 => None,
                back => Some(
                    log_index
                        .checked_sub(back)
                        .ok_or(Damaged("a link to a count before the log's first"))?,
                ),
            },
            OLDER_COUNT_FORMAT => None,
            _ => return Err(Damaged("not a space count this version reads")),
        };
        let region = u32::try_from(i.uint()?).map_err(|_| Damaged("not a region code"))?;
        let school = if i.flag()? { Some(i.uint()?) } else { None };
        let (region, school) = subject_from(region, school)?;
        let meta = Meta {
            log_index,
            received_at: i.time()?,
            source: i.source()?,
            seq: i.uint()?,
            recorded_at: i.time()?,
            withdrawn_by: if i.flag()? { Some(i.uint()?) } else { None },
        };
        let s = SpaceCount {
            region,
            school,
            as_of: i.date()?,
            spaces: i.counts()?,
            real_name: if i.flag()? { Some(i.counts()?) } else { None },
            population: if i.flag()? {
                Some(i.population()?)
            } else {
                None
            },
        };
        i.end()?;
        Ok(Linked {
            meta,
            count: s,
            prev,
        })
    };
    read().map_err(damaged(key))
}

#[derive(Serialize, Deserialize)]
struct StoredItem {
    meta: Meta,
    /// The record's JSON; read back through the same strict reader as on ingest.
    record: Value,
}

fn encode_item(item: &Item) -> Vec<u8> {
    let stored = StoredItem {
        meta: item.meta.clone(),
        record: item.record.to_value(),
    };
    serde_json::to_vec(&stored).unwrap_or_default()
}

fn decode_item(key: &[u8], bytes: &[u8]) -> Result<Item, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        key: keys::tail_u64(key).map_or_else(|| printable(key), |i| format!("v/i/{i}")),
        message,
    };
    let stored: StoredItem = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    // An item is stored under its own log index: one copied under another (damage) would
    // load as the item it was copied from and no comparison would see it.
    if keys::tail_u64(key) != Some(stored.meta.log_index) {
        return Err(corrupt(format!(
            "the item under this key says it is log leaf {}",
            stored.meta.log_index
        )));
    }
    let record = Record::from_value(&stored.record).map_err(|p| {
        corrupt(
            p.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    Ok(Item {
        meta: stored.meta,
        record,
    })
}

/// `v/m`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Layout {
    /// [`LAYOUT`] when written by this version.
    layout: u32,
    /// The baseline date the stored summaries were merged for.
    baseline: NaiveDate,
    /// Set while [`prepare`] converts views of layout 2 or 3 for the same baseline date
    /// (`layout` says 4 already, so an older hub refuses them): not to be read until done.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    converting: bool,
}

fn read_layout(store: &dyn Store) -> Result<Option<Layout>, StoreError> {
    store
        .get(LAYOUT_KEY)?
        .map(|b| {
            serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
                key: "v/m".into(),
                message: e.to_string(),
            })
        })
        .transpose()
}

fn put_layout(batch: &mut WriteBatch, baseline: NaiveDate) {
    put_layout_as(batch, baseline, false);
}

/// `v/m` says this layout for `baseline` (`converting` or not), in a write of its own,
/// flushed.
fn mark_layout(store: &dyn Store, baseline: NaiveDate, converting: bool) -> Result<(), StoreError> {
    let mut batch = WriteBatch::new();
    put_layout_as(&mut batch, baseline, converting);
    store.apply(batch)?;
    store.flush()
}

fn put_layout_as(batch: &mut WriteBatch, baseline: NaiveDate, converting: bool) {
    let layout = Layout {
        layout: LAYOUT,
        baseline,
        converting,
    };
    batch.put(LAYOUT_KEY, serde_json::to_vec(&layout).unwrap_or_default());
}

/// The subjects whose stored summary (`v/s/`: the merged figures and where the subject's
/// chain starts, empty ones included) differs between `a` and `b` (a store and a rebuild
/// of it), named for people, in subject order: what `verify` reports.
pub fn differing_summaries<A: Reader + ?Sized, B: Reader + ?Sized>(
    a: &A,
    b: &B,
) -> Result<Vec<String>, StoreError> {
    let mut left = summaries_of(a)?.peekable();
    let mut right = summaries_of(b)?.peekable();
    let mut out = Vec::new();
    loop {
        let order = match (left.peek(), right.peek()) {
            (None, None) => return Ok(out),
            (Some(Err(_)), _) => return Err(next_err(&mut left)),
            (_, Some(Err(_))) => return Err(next_err(&mut right)),
            (Some(Ok((l, _))), Some(Ok((r, _)))) => l.cmp(r),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
        };
        let (l, r) = match order {
            std::cmp::Ordering::Less => (left.next(), None),
            std::cmp::Ordering::Greater => (None, right.next()),
            std::cmp::Ordering::Equal => (left.next(), right.next()),
        };
        let (l, r) = (l.transpose()?, r.transpose()?);
        if l.as_ref().map(|(_, v)| v) != r.as_ref().map(|(_, v)| v) {
            let Some((k, _)) = l.as_ref().or(r.as_ref()) else {
                continue;
            };
            out.push(match subject_of(k, SUMMARY_PREFIX) {
                Ok(subject) => name_subject(subject),
                Err(_) => printable(k),
            });
        }
    }
}

/// The error a peeked `Err` holds, taken out of the iterator.
fn next_err<T, I: Iterator<Item = Result<T, StoreError>>>(
    it: &mut std::iter::Peekable<I>,
) -> StoreError {
    match it.next() {
        Some(Err(e)) => e,
        _ => StoreError::Corrupt {
            key: "v/s/".into(),
            message: "a scan's error went missing".into(),
        },
    }
}

/// Says of a space count's key whether the two readers being compared read one and the
/// same stored value under it (a rebuild's count found equal to the store's, which the
/// rebuild reads from the store: [`crate::maintenance::Rebuilt::reads_stored`]): nothing
/// there can differ, and the comparisons below skip it without decoding it.
pub type SameValue<'a> = &'a (dyn Fn(&[u8]) -> bool + Sync);

/// The stored space counts `r` holds, key and value, but for the keys `same` names.
fn counts_but<'a, R: Reader + ?Sized>(r: &'a R, same: SameValue<'a>) -> crate::store::KvIter<'a> {
    Box::new(
        r.read_prefix(COUNT_PREFIX)
            .filter(move |kv| kv.as_ref().map_or(true, |(k, _)| !same(k))),
    )
}

/// Every stored space count's log index and link, in log order, as `r` holds them, but
/// for those under the keys `same` names.
fn links<'a, R: Reader + ?Sized>(
    r: &'a R,
    same: SameValue<'a>,
) -> impl Iterator<Item = Result<(u64, Option<u64>), StoreError>> + 'a {
    counts_but(r, same).flat_map(|kv| match kv.and_then(|(k, b)| decode_counts(&k, &b)) {
        Ok(counts) => counts
            .into_iter()
            .map(|c| Ok((c.meta.log_index, c.prev)))
            .collect::<Vec<_>>(),
        Err(e) => vec![Err(e)],
    })
}

/// How many space counts `a` and `b` (a store and a rebuild of it) both hold whose link to
/// their subject's previous count differs, and the first one's log index: what `verify`
/// reports (a count held by one only is [`differing_items`]' to report). The keys `same`
/// names are skipped: both read the same value there.
pub fn differing_links<A: Reader + ?Sized, B: Reader + ?Sized>(
    a: &A,
    b: &B,
    same: SameValue<'_>,
) -> Result<(u64, Option<u64>), StoreError> {
    let mut left = links(a, same).peekable();
    let mut right = links(b, same).peekable();
    let (mut count, mut first) = (0u64, None);
    loop {
        let (l, r) = match (left.peek(), right.peek()) {
            (Some(Err(_)), _) => return Err(next_err(&mut left)),
            (_, Some(Err(_))) => return Err(next_err(&mut right)),
            (Some(Ok(l)), Some(Ok(r))) => (*l, *r),
            _ => return Ok((count, first)),
        };
        match l.0.cmp(&r.0) {
            std::cmp::Ordering::Less => {
                left.next();
            }
            std::cmp::Ordering::Greater => {
                right.next();
            }
            std::cmp::Ordering::Equal => {
                left.next();
                right.next();
                if l.1 != r.1 {
                    count += 1;
                    first = first.or(Some(l.0));
                }
            }
        }
    }
}

/// Where two views' items disagree (see [`differing_items`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemDifference {
    /// Both hold an item at the log index, not the same.
    Differs,
    /// Only the first holds one.
    OnlyFirst,
    /// Only the second holds one.
    OnlySecond,
}

/// How many log indexes `a`'s items (read through `ra`) and `b`'s (through `rb`) disagree
/// at, and the first of them: both walked in log order, one stored count at a time. The
/// space counts under the keys `same` names are skipped when both views see the same
/// stored counts (they were written as far as the same log index): read from one value,
/// they are the same items.
pub fn differing_items<RA: Reader + ?Sized, RB: Reader + ?Sized>(
    a: &Views,
    ra: &RA,
    b: &Views,
    rb: &RB,
    same: SameValue<'_>,
) -> Result<(u64, Option<(u64, ItemDifference)>), StoreError> {
    let none: SameValue<'_> = &|_| false;
    let same = if a.next == b.next { same } else { none };
    let mut left = a.item_stream_but(ra, same).peekable();
    let mut right = b.item_stream_but(rb, same).peekable();
    let (mut count, mut first) = (0u64, None);
    loop {
        let at = |i: &Option<&Result<Item, StoreError>>| match i {
            Some(Ok(i)) => Some(i.meta.log_index),
            _ => None,
        };
        let (l, r) = match (left.peek(), right.peek()) {
            (None, None) => return Ok((count, first)),
            (Some(Err(_)), _) => {
                return Err(left.next().and_then(Result::err).unwrap_or_else(lost));
            }
            (_, Some(Err(_))) => {
                return Err(right.next().and_then(Result::err).unwrap_or_else(lost));
            }
            (l, r) => (at(&l), at(&r)),
        };
        let (index, how) = match (l, r) {
            (Some(x), Some(y)) if x == y => {
                let (p, q) = (left.next().transpose()?, right.next().transpose()?);
                let same = matches!((&p, &q), (Some(p), Some(q)) if p.meta == q.meta && p.record == q.record);
                if same {
                    continue;
                }
                (x, ItemDifference::Differs)
            }
            (Some(x), y) if y.is_none_or(|y| x < y) => {
                left.next();
                (x, ItemDifference::OnlyFirst)
            }
            (_, Some(y)) => {
                right.next();
                (y, ItemDifference::OnlySecond)
            }
            _ => return Ok((count, first)),
        };
        count += 1;
        first = first.or(Some((index, how)));
    }
}

fn lost() -> StoreError {
    StoreError::Corrupt {
        key: "v/".into(),
        message: "a scan's error went missing".into(),
    }
}

/// Two item streams in log order merged into one (ledger items and space counts never
/// share a log index).
struct MergedItems<
    A: Iterator<Item = Result<Item, StoreError>>,
    B: Iterator<Item = Result<Item, StoreError>>,
> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

impl<A, B> Iterator for MergedItems<A, B>
where
    A: Iterator<Item = Result<Item, StoreError>>,
    B: Iterator<Item = Result<Item, StoreError>>,
{
    type Item = Result<Item, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let take_a = match (self.a.peek(), self.b.peek()) {
            (Some(Ok(x)), Some(Ok(y))) => x.meta.log_index <= y.meta.log_index,
            (Some(Err(_)), _) => true,
            (_, Some(Err(_))) => false,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if take_a { self.a.next() } else { self.b.next() }
    }
}

fn name_subject((region, school): Subject) -> String {
    match school {
        Some(s) => format!("school {s} (region {region})"),
        None => format!("the own total of region {region}"),
    }
}

/// The baseline date the stored summaries were merged for, when the store holds views in
/// this version's layout: what `verify` rebuilds for to compare.
pub fn stored_baseline(store: &dyn Store) -> Result<Option<NaiveDate>, StoreError> {
    Ok(read_layout(store)?
        .filter(|l| readable(l.layout) && !l.converting)
        .map(|l| l.baseline))
}

/// The log indexes whose space count a rebuild found equal to the stored one, byte for
/// byte, and dropped from its batch: reading those from the store gives exactly what the
/// rebuild wrote, so the rebuild of a long log holds in memory only the counts that differ
/// (or changed again since), and the summaries, not one value per entry.
#[derive(Debug, Default)]
pub struct Settled(std::sync::RwLock<Vec<u64>>);

impl Settled {
    fn insert(&self, idx: u64) {
        let (word, bit) = ((idx / 64) as usize, idx % 64);
        let mut bits = self.0.write().unwrap_or_else(|p| p.into_inner());
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        bits[word] |= 1 << bit;
    }

    /// Whether log index `idx`'s space count is read from the store.
    pub fn contains(&self, idx: u64) -> bool {
        let (word, bit) = ((idx / 64) as usize, idx % 64);
        let bits = self.0.read().unwrap_or_else(|p| p.into_inner());
        bits.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    /// Whether `key` is a space count this set keeps.
    pub fn keeps_key(&self, key: &[u8]) -> bool {
        key.len() == COUNT_PREFIX.len() + 8
            && key.starts_with(COUNT_PREFIX)
            && keys::tail_u64(key).is_some_and(|i| self.contains(i))
    }
}

impl crate::store::Keep for Settled {
    fn keeps(&self, key: &[u8]) -> bool {
        self.keeps_key(key)
    }
}

/// Lets go of the space counts a rebuild put in `batch` from log index `from` on whose
/// value the store holds byte for byte, marking them in `settled`; returns how many.
/// One forward scan of the store's counts from `from`. A value is not let go of when the
/// store holds another count key among the log indexes it covers (a count stored again
/// under a key of its own, as an older layout kept them, or damage): `verify` skips a
/// settled value on both sides it compares (see [`Settled`]), and such a key must still
/// find its pair there.
pub fn settle(
    store: &dyn Store,
    batch: &mut WriteBatch,
    settled: &Settled,
    from: u64,
) -> Result<u64, StoreError> {
    let mut equal = Vec::new();
    // Both in key order: one forward scan of the store's counts, not a read per count,
    // from the first index the first block at or after `from` covers.
    let start = count_key(from.saturating_sub(blocks::BLOCK - 1));
    let mut stored = store.scan_from(COUNT_PREFIX, &start).peekable();
    for (k, v) in batch.pending_from(COUNT_PREFIX, &count_key(from)) {
        let Some(v) = v else { continue };
        // The log indexes a value under `k` may cover (a block's: the 16 up to its key).
        let covers_from = keys::tail_u64(k).map_or(0, |i| i.saturating_sub(blocks::BLOCK - 1));
        let mut stray = false;
        while let Some(Ok((sk, _))) = stored.peek()
            && sk.as_slice() < k
        {
            stray |= keys::tail_u64(sk).is_some_and(|i| i >= covers_from);
            stored.next();
        }
        match stored.peek() {
            Some(Ok((sk, sv))) if sk.as_slice() == k && sv.as_slice() == v && !stray => {
                equal.push(k.to_vec());
            }
            Some(Err(_)) => {
                if let Some(Err(e)) = stored.next() {
                    return Err(e);
                }
            }
            _ => {}
        }
    }
    for k in &equal {
        if let Some(i) = keys::tail_u64(k) {
            settled.insert(i);
        }
        batch.forget(k);
    }
    Ok(equal.len() as u64)
}

/// One view item in memory.
#[derive(Debug, Clone)]
pub struct Item {
    /// Who and when.
    pub meta: Meta,
    /// The record.
    pub record: Record,
}

/// The merged views. A clone is cheap and independent: later changes to either do not
/// show in the other.
#[derive(Clone)]
pub struct Views {
    /// The campaign's baseline date (the merge rule's baseline figures depend on it).
    baseline: NaiveDate,
    /// The log index after the last entry applied. Stored items at or beyond it were
    /// written after these views (a snapshot reading the store leaves them out).
    next: u64,
    /// True while the views are rebuilt into a batch that replaces every stored view key:
    /// the store's own `v/` keys are not theirs to read, except the space counts the
    /// rebuild found equal to the stored ones and let go of (`settled`).
    rebuilding: bool,
    /// While rebuilding: the log indexes whose space count is read from the store.
    settled: Arc<Settled>,
    /// Ledger items (everything but space counts) by log index; shared with snapshots,
    /// copied on write (a withdrawal).
    ledger: OrdMap<u64, Arc<Item>>,
    /// Per subject with a live snapshot, its snapshots merged (see [`subjects`]).
    subjects: OrdMap<Subject, Arc<Summary>>,
    /// Subjects whose every snapshot is withdrawn (stored with an empty summary): where
    /// each one's chain starts. With `subjects`, every subject the views hold a snapshot
    /// of, so a snapshot of any other is its subject's first, known without a read.
    withdrawn: OrdMap<Subject, u64>,
    /// Per region, the sum of its schools' merged figures, kept as they change.
    school_sums: OrdMap<RegionCode, SchoolSum>,
    /// Regions whose own total has a live snapshot.
    own_regions: OrdSet<RegionCode>,
    /// Subjects that raise flags of their own.
    flagged: OrdSet<Subject>,
    /// Per source: entries, last receive time.
    sources: OrdMap<SourceId, SourceActivity>,
    /// Deadline extensions, by log index.
    extensions: OrdMap<u64, Extension>,
    /// Notice rule changes, by log index.
    rule_changes: OrdMap<u64, NoticeRuleChanged>,
    /// Sources whose activity changed since [`Views::seal`] last wrote it (in the order
    /// they first changed; a batch is one source's, so this holds one or two).
    unsealed: Vec<SourceId>,
    /// Whether `next` moved since [`Views::seal`] last wrote it.
    next_unsealed: bool,
    /// While rebuilding: the subjects whose summary the batch is to hold, written once, by
    /// [`Views::seal_rebuilt`], instead of once an entry (a rebuild's batch is read only
    /// when it is whole; encoding and inserting every entry's summary was a quarter of
    /// `verify`'s views thread).
    deferred: BTreeSet<Subject>,
    /// Whether changed summaries are stored a batch at a time under `v/d/` and folded
    /// into `v/s/` later ([`pending`]; the store's choice: [`Store::batches_summaries`]),
    /// rather than each under its `v/s/` key in the batch that changed it.
    batched: bool,
    /// When `batched`: the subjects whose summary changed since [`Views::seal`] last
    /// wrote them.
    dirty: BTreeSet<Subject>,
    /// When `batched`: how many summaries the stored `v/d/` values hold.
    pending: u64,
    /// When `batched`: fold once this many would be pending ([`pending::FOLD_AT`]).
    fold_at: u64,
}

/// The notice rule changes the stored views hold (`v/r/`), by log index: for
/// [`Views::load`] and for `check`, which reads no other view.
pub fn stored_rule_changes(
    store: &dyn Store,
) -> Result<OrdMap<u64, NoticeRuleChanged>, StoreError> {
    let mut out = OrdMap::new();
    for r in store.scan(RULE_PREFIX) {
        let (k, bytes) = r?;
        let idx = keys::tail_u64(&k).unwrap_or(0);
        let change: NoticeRuleChanged =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                key: format!("v/r/{idx}"),
                message: e.to_string(),
            })?;
        out.insert(idx, change);
    }
    Ok(out)
}

/// What entries another writer appended changed of the stored views, gathered while they
/// are replayed, for [`Views::catch_up`].
#[derive(Debug, Default)]
pub struct Touched {
    sources: BTreeSet<SourceId>,
    items: BTreeSet<u64>,
    subjects: BTreeSet<Subject>,
    /// (source, target seq) of each withdrawal: its target's item or subject changed too.
    withdrawals: Vec<(SourceId, u64)>,
}

impl Touched {
    /// Notes a source's entry at `log_index` carrying `record`.
    pub fn entry(&mut self, log_index: u64, source: &SourceId, record: &Record) {
        self.sources.insert(source.clone());
        match record {
            Record::SpaceCount(s) => {
                self.subjects.insert((s.region, s.school));
            }
            Record::KeyTransition(_) => {}
            other => {
                if let Record::Withdrawal(w) = other {
                    self.withdrawals.push((source.clone(), w.target_seq));
                }
                self.items.insert(log_index);
            }
        }
    }
}

/// What the views know of a source's traffic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceActivity {
    /// Entries in the views from this source.
    pub entries: u64,
    /// Last hub receive time.
    pub last_received: Option<DateTime<Utc>>,
    /// Last agent recording time.
    pub last_recorded: Option<DateTime<Utc>>,
}

impl SourceActivity {
    fn count(&mut self, meta: &Meta) {
        self.entries += 1;
        self.last_received = self.last_received.max(Some(meta.received_at));
        self.last_recorded = self.last_recorded.max(Some(meta.recorded_at));
    }
}

/// What [`prepare`] did to a store's views.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    /// Space counts moved from `v/i/` (layout 1) into their blocks under `v/c/`.
    pub moved: u64,
    /// Space counts rewritten with the link to their subject's previous one (layouts 1 to
    /// 3), layout 2's into their blocks.
    pub linked: u64,
    /// Subjects whose summary was written: merged from their stored snapshots, or (a
    /// conversion for the same baseline date) told where their chain starts.
    pub subjects: u64,
    /// Sources whose activity was counted from the stored items and written.
    pub sources: u64,
    /// Writes made (each flushed).
    pub writes: u64,
}

/// Brings a store's views to this version's layout, merged for `baseline`, before
/// [`Views::load`]: at every hub start, where it costs two reads when nothing is to do.
/// A store of layout 1 (every item under `v/i/`) has its space counts moved into blocks;
/// one of layout 1, 2 or 3 has every space count linked to its subject's previous one
/// (layout 2's put into blocks), each subject's summary told where its chain starts, and
/// the per-subject lists (`v/l/`) removed; a store whose summaries were merged for another
/// baseline date (the campaign file changed) has them merged again. Writes in bounded,
/// flushed batches ([`prepare_in_batches`]); each step can be done again, so a start
/// killed half-way through does the rest at the next start.
pub fn prepare(store: &dyn Store, baseline: NaiveDate) -> Result<Option<Prepared>, StoreError> {
    prepare_in_batches(store, baseline, 10_000)
}

/// On a store that keeps one key a subject (PostgreSQL), the summaries a store that
/// batched them left pending (a sled store moved by `migrate`) written under their keys,
/// oldest value first, about `per_batch` summaries a flushed write: each write leaves the
/// newer values over the keys, so a start killed part-way reads the same summaries and
/// goes on. Before the views are loaded, so no write of theirs is shadowed by a value.
fn fold_left_pending(store: &dyn Store, per_batch: usize) -> Result<(), StoreError> {
    let mut from = PENDING_PREFIX.to_vec();
    let mut folded = 0u64;
    loop {
        let mut batch = WriteBatch::new();
        let mut n = 0;
        let mut last = None;
        for kv in store.scan_from(PENDING_PREFIX, &from) {
            let (k, v) = kv?;
            for (_, subject, summary) in pending::decode(&v).map_err(damaged(&k))? {
                batch.put([SUMMARY_PREFIX, subject].concat(), summary.to_vec());
                n += 1;
            }
            batch.delete(k.clone());
            last = Some(k);
            if n >= per_batch {
                break;
            }
        }
        let Some(mut k) = last else {
            break;
        };
        store.apply(batch)?;
        store.flush()?;
        folded += n as u64;
        k.push(0);
        from = k;
    }
    if folded > 0 {
        info!(
            summaries = folded,
            "Wrote the summaries a store that batched them left pending under their keys."
        );
    }
    Ok(())
}

/// [`prepare`], with at most `per_batch` items moved, blocks linked or summaries written per
/// write.
pub fn prepare_in_batches(
    store: &dyn Store,
    baseline: NaiveDate,
    per_batch: usize,
) -> Result<Option<Prepared>, StoreError> {
    let per_batch = per_batch.max(1);
    if !store.batches_summaries() {
        fold_left_pending(store, per_batch)?;
    }
    let layout = read_layout(store)?;
    match layout {
        Some(l) if l.layout == LAYOUT && l.baseline == baseline && !l.converting => {
            return Ok(None);
        }
        Some(l) if !convertible(l.layout) => {
            return Err(StoreError::Corrupt {
                key: "v/m".into(),
                message: format!(
                    "the views are in layout {}, which this version of the hub neither reads nor converts (it reads {LAYOUT}, converts 2, 3 and 4); run a newer hub",
                    l.layout
                ),
            });
        }
        _ => {}
    }
    let mut done = Prepared::default();
    if let Some(l) = layout.filter(|l| l.baseline == baseline && l.layout == 4 && !l.converting) {
        // Layout 4 is this one without pending summaries: only `v/m` changes.
        mark_layout(store, baseline, false)?;
        done.writes += 1;
        info!(
            from = l.layout,
            to = LAYOUT,
            "The stored views are in the layout of this version (summaries may now be pending under v/d/)."
        );
        return Ok(Some(done));
    }
    if let Some(l) = layout.filter(|l| l.baseline == baseline) {
        // The summaries are right but for where each subject's chain starts. `v/m` says
        // this layout (converting) from the first write, so an older hub refuses the store
        // instead of failing on its first linked count, and a start killed part-way goes on.
        if !l.converting {
            mark_layout(store, baseline, true)?;
            done.writes += 1;
        }
        let heads = link_counts(store, per_batch, &mut done)?;
        start_chains(store, &heads, per_batch, &mut done)?;
        remove_lists(store, per_batch, &mut done)?;
        mark_layout(store, baseline, false)?;
        done.writes += 1;
        info!(
            from = l.layout,
            to = LAYOUT,
            linked = done.linked,
            subjects = done.subjects,
            writes = done.writes,
            "Converted the stored views to the layout of this version: each subject's space counts linked newest first, the lists of them removed."
        );
        return Ok(Some(done));
    }
    let mut next = 0u64;
    let mut sources: BTreeMap<SourceId, SourceActivity> = BTreeMap::new();
    if layout.is_none() {
        // Space counts out of `v/i/`, a bounded batch at a time; the scan resumes after the
        // last key it read, so the keys a batch removed are not read again. They are linked
        // below, with any moved before a start was killed.
        let mut from = ITEM_PREFIX.to_vec();
        loop {
            let mut batch = WriteBatch::new();
            let mut moved = 0;
            let mut last = None;
            for r in store.scan_from(ITEM_PREFIX, &from) {
                let (k, bytes) = r?;
                let item = decode_item(&k, &bytes)?;
                if let Record::SpaceCount(s) = &item.record {
                    let (key, value) =
                        count_in_block(&Overlay::new(store, &batch), &item.meta, s, None)?;
                    batch.put(key, value);
                    batch.delete(k.clone());
                    moved += 1;
                }
                last = Some(k);
                if moved >= per_batch {
                    break;
                }
            }
            if !batch.is_empty() {
                store.apply(batch)?;
                store.flush()?;
                done.moved += moved as u64;
                done.writes += 1;
                info!(
                    moved = done.moved,
                    "Converting the views to the layout of this version: space counts moved to their blocks."
                );
            }
            match last {
                Some(mut k) if moved >= per_batch => {
                    k.push(0);
                    from = k;
                }
                _ => break,
            }
        }
    }
    let heads = link_counts(store, per_batch, &mut done)?;
    remove_lists(store, per_batch, &mut done)?;
    // Every subject merged from its snapshots for `baseline`, and every source's activity
    // counted, from the items as they now lie; a summary of no subject is removed.
    let mut batch = WriteBatch::new();
    // Until the last write below puts `v/m` back, it must not name a baseline the stored
    // summaries were merged for: a start killed between this merge's writes leaves some
    // merged for the new date, and a next start under the old date would serve them as
    // its own. Without `v/m` any next start merges them all again (the scan of `v/i/`
    // above finds no space count left to move).
    if layout.is_some() {
        batch.delete(LAYOUT_KEY);
    }
    // Every summary is merged again below: the pending ones, merged for the old date, go
    // in the same write as `v/m`.
    for r in store.scan(PENDING_PREFIX) {
        batch.delete(r?.0);
    }
    let mut written: HashSet<Vec<u8>> = HashSet::new();
    for (subject, newest) in &heads {
        // Empty ones too: they hold where the chain starts.
        let summary = merge_chain(store, *subject, Some(*newest), u64::MAX, baseline)?;
        let k = subject_key(SUMMARY_PREFIX, *subject);
        batch.put(k.clone(), summary.to_bytes());
        written.insert(k);
        done.subjects += 1;
        if batch.len() >= per_batch {
            store.apply(std::mem::take(&mut batch))?;
            store.flush()?;
            done.writes += 1;
            info!(
                subjects = done.subjects,
                "Merging the stored views' subjects."
            );
        }
    }
    for r in store.scan(SUMMARY_PREFIX) {
        let (k, _) = r?;
        if !written.contains(&k) {
            batch.delete(k);
        }
    }
    for r in store.scan(COUNT_PREFIX) {
        let (k, bytes) = r?;
        for c in decode_counts(&k, &bytes)? {
            next = next.max(c.meta.log_index.saturating_add(1));
            sources
                .entry(c.meta.source.clone())
                .or_default()
                .count(&c.meta);
        }
    }
    for r in store.scan(ITEM_PREFIX) {
        let (k, bytes) = r?;
        let item = decode_item(&k, &bytes)?;
        next = next.max(item.meta.log_index + 1);
        sources
            .entry(item.meta.source.clone())
            .or_default()
            .count(&item.meta);
    }
    for r in store.scan(EXTENSION_PREFIX) {
        let (k, _) = r?;
        if let Some(i) = keys::tail_u64(&k) {
            next = next.max(i + 1);
        }
    }
    // A source's activity does not depend on the baseline date, and counts entries the
    // views keep no item of (key transitions): counted from the items only where none is
    // stored (layout 1 kept none).
    if store.scan(ACTIVITY_PREFIX).next().transpose()?.is_none() {
        for (source, act) in &sources {
            put_activity(&mut batch, source, act);
        }
        done.sources = sources.len() as u64;
    }
    let stored_next = store
        .get(NEXT_KEY)?
        .and_then(|b| keys::tail_u64(&b))
        .unwrap_or(0);
    batch.put(NEXT_KEY, next.max(stored_next).to_be_bytes().to_vec());
    put_layout(&mut batch, baseline);
    store.apply(batch)?;
    store.flush()?;
    done.writes += 1;
    info!(moved = done.moved, linked = done.linked, subjects = done.subjects, sources = done.sources, writes = done.writes, baseline = %baseline, "Prepared the stored views: in the layout of this version, merged for the campaign's baseline date.");
    Ok(Some(done))
}

/// Links every stored space count to its subject's previous one, in log order, and puts
/// layout 2's single counts into their blocks, in flushed batches of `per_batch` blocks. A
/// block already so is not written again, so a conversion killed half-way through is
/// finished by the next. Returns where each subject's chain starts: its newest count.
fn link_counts(
    store: &dyn Store,
    per_batch: usize,
    done: &mut Prepared,
) -> Result<BTreeMap<Subject, u64>, StoreError> {
    let mut heads = BTreeMap::new();
    let mut from = COUNT_PREFIX.to_vec();
    loop {
        let mut batch = WriteBatch::new();
        let mut linked = 0;
        // The values under one block's keys: the block, and layout 2's counts in its range.
        let mut group: Vec<Kv> = Vec::new();
        let mut resume = None;
        for kv in store.scan_from(COUNT_PREFIX, &from) {
            let (k, v) = kv?;
            let last = blocks::block_last(count_key_index(&k)?);
            if let Some((g, _)) = group.first()
                && blocks::block_last(count_key_index(g)?) != last
            {
                link_block(std::mem::take(&mut group), &mut heads, &mut batch, done)?;
                linked += 1;
                if linked >= per_batch {
                    resume = Some(k);
                    break;
                }
            }
            group.push((k, v));
        }
        if !group.is_empty() {
            link_block(group, &mut heads, &mut batch, done)?;
        }
        if !batch.is_empty() {
            store.apply(batch)?;
            store.flush()?;
            done.writes += 1;
            info!(
                linked = done.linked,
                "Converting the views to the layout of this version: space counts linked to their subject's previous one."
            );
        }
        match resume {
            Some(k) => from = k,
            None => return Ok(heads),
        }
    }
}

/// Writes into `batch` the block the values under one block's keys (`group`, in key order)
/// hold, each count linked to its subject's previous one (`heads`, kept up to date), unless
/// it is stored so already.
fn link_block(
    group: Vec<Kv>,
    heads: &mut BTreeMap<Subject, u64>,
    batch: &mut WriteBatch,
    done: &mut Prepared,
) -> Result<(), StoreError> {
    let mut counts = Vec::new();
    for (k, v) in &group {
        counts.extend(decode_counts(k, v)?);
    }
    counts.sort_by_key(|c| c.meta.log_index);
    let Some(first) = counts.first().map(|c| c.meta.log_index) else {
        return Ok(());
    };
    let key = count_key(blocks::block_last(first));
    if counts
        .windows(2)
        .any(|w| w[0].meta.log_index == w[1].meta.log_index)
    {
        return Err(damaged(&key)(Damaged(
            "two space counts stored at one log index",
        )));
    }
    let encoded: Vec<(u8, Vec<u8>)> = counts
        .iter()
        .map(|c| {
            let prev = heads.insert(c.subject(), c.meta.log_index);
            let off = blocks::offset(c.meta.log_index);
            (off, encode_count(&c.meta, &c.count, prev))
        })
        .collect();
    let parts: Vec<(u8, &[u8])> = encoded.iter().map(|(o, b)| (*o, b.as_slice())).collect();
    let value = blocks::encode(&parts);
    if matches!(group.as_slice(), [(k, v)] if *k == key && *v == value) {
        return Ok(());
    }
    for (k, _) in group {
        if k != key {
            batch.delete(k);
        }
    }
    batch.put(key, value);
    done.linked += counts.len() as u64;
    Ok(())
}

/// Tells each subject's stored summary where its chain starts (`heads`), in flushed
/// batches of `per_batch`; a subject without one (every snapshot withdrawn) gets an empty
/// one. One already told is not written again.
fn start_chains(
    store: &dyn Store,
    heads: &BTreeMap<Subject, u64>,
    per_batch: usize,
    done: &mut Prepared,
) -> Result<(), StoreError> {
    let mut batch = WriteBatch::new();
    for (subject, newest) in heads {
        let key = subject_key(SUMMARY_PREFIX, *subject);
        let mut summary = match store.get(&key)? {
            Some(b) => Summary::from_older_bytes(*subject, &b).map_err(damaged(&key))?,
            None => Summary::default(),
        };
        if summary.newest() == Some(*newest) {
            continue;
        }
        summary.set_newest(Some(*newest));
        batch.put(key, summary.to_bytes());
        done.subjects += 1;
        if batch.len() >= per_batch {
            store.apply(std::mem::take(&mut batch))?;
            store.flush()?;
            done.writes += 1;
        }
    }
    if !batch.is_empty() {
        store.apply(batch)?;
        store.flush()?;
        done.writes += 1;
    }
    Ok(())
}

/// Removes layouts 2 and 3's per-subject lists (`v/l/`), in flushed batches of `per_batch`.
fn remove_lists(
    store: &dyn Store,
    per_batch: usize,
    done: &mut Prepared,
) -> Result<(), StoreError> {
    loop {
        let mut batch = WriteBatch::new();
        for r in store.scan(LIST_PREFIX).take(per_batch) {
            batch.delete(r?.0);
        }
        if batch.is_empty() {
            return Ok(());
        }
        store.apply(batch)?;
        store.flush()?;
        done.writes += 1;
    }
}

fn put_activity(batch: &mut WriteBatch, source: &SourceId, act: &SourceActivity) {
    batch.put(
        [ACTIVITY_PREFIX, source.as_str().as_bytes()].concat(),
        serde_json::to_vec(act).unwrap_or_default(),
    );
}

/// A stored snapshot as views at position `next` see it: `None` when written after them,
/// and not withdrawn when its withdrawal came after them.
fn as_of(next: u64, (mut meta, s): (Meta, SpaceCount)) -> Option<(Meta, SpaceCount)> {
    if meta.log_index >= next {
        return None;
    }
    if meta.withdrawn_by.is_some_and(|w| w >= next) {
        meta.withdrawn_by = None;
    }
    Some((meta, s))
}

/// The space count at log index `idx`, as `r` holds it in its block.
fn read_count<R: Reader + ?Sized>(r: &R, idx: u64) -> Result<Option<Linked>, StoreError> {
    let key = count_key(blocks::block_last(idx));
    let Some(v) = r.read(&key)? else {
        return Ok(None);
    };
    let Some(bytes) = blocks::get(&v, blocks::offset(idx)).map_err(damaged(&key))? else {
        return Ok(None);
    };
    if bytes.first() != Some(&COUNT_FORMAT) {
        // Unlinked (layouts 2 and 3: an older replica's write, or `v/m` wrong): walked as a
        // chain it would end here.
        return Err(damaged(&key)(Damaged(
            "a space count without its link (an older hub's) in views of layout 4; run `spacesync-hub rebuild`",
        )));
    }
    decode_count_at(&key, idx, bytes).map(Some)
}

/// The key and value that put the space count of `meta.log_index`, linked to `prev`, into
/// its block, as `r` holds the block now.
fn count_in_block<R: Reader + ?Sized>(
    r: &R,
    meta: &Meta,
    s: &SpaceCount,
    prev: Option<u64>,
) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    let key = count_key(blocks::block_last(meta.log_index));
    let stored = r.read(&key)?;
    let value = blocks::put(
        stored.as_deref(),
        blocks::offset(meta.log_index),
        &encode_count(meta, s, prev),
    )
    .map_err(damaged(&key))?;
    Ok((key, value))
}

/// Hands `subject`'s stored snapshots, as `r` holds them, to `each`, newest first: its
/// chain, from `newest` (where its summary says it starts). A link to no count, or to
/// another subject's, is damage; every link runs back in the log, so the walk ends.
fn walk_chain<R: Reader + ?Sized>(
    r: &R,
    subject: Subject,
    newest: Option<u64>,
    mut each: impl FnMut(Linked),
) -> Result<(), StoreError> {
    let mut at = newest;
    while let Some(idx) = at {
        let broken = |what: String| StoreError::Corrupt {
            key: printable(&count_key(blocks::block_last(idx))),
            message: format!(
                "the chain of snapshots of {} runs through log index {idx}, {what}; run `spacesync-hub rebuild`",
                name(subject)
            ),
        };
        let c = read_count(r, idx)?.ok_or_else(|| broken("which holds no space count".into()))?;
        if c.subject() != subject {
            return Err(broken(format!("a space count of {}", name(c.subject()))));
        }
        at = c.prev;
        each(c);
    }
    Ok(())
}

/// `subject`'s snapshots merged, as views at position `next` see them, for `baseline`,
/// from its chain starting at `newest`: empty when every one is withdrawn, and knowing
/// where the chain (as the views see it) starts either way.
fn merge_chain<R: Reader + ?Sized>(
    r: &R,
    subject: Subject,
    newest: Option<u64>,
    next: u64,
    baseline: NaiveDate,
) -> Result<Summary, StoreError> {
    let mut live = Vec::new();
    let mut seen = None;
    walk_chain(r, subject, newest, |c| {
        if let Some((meta, s)) = as_of(next, c.into_pair()) {
            seen = seen.or(Some(meta.log_index));
            if meta.withdrawn_by.is_none() {
                live.push((meta, s));
            }
        }
    })?;
    let mut summary = Summary::of(subject, live.iter().map(|(m, s)| (m, s)), baseline);
    summary.set_newest(seen);
    Ok(summary)
}

/// Merges every subject's stored snapshots, as views at position `next` see them, for
/// `baseline`, in subject order, handing each summary (empty ones too) to `each`: the
/// subjects are the stored summaries', each walked along its chain. Holds one subject's
/// snapshots at a time.
fn walk_subjects<R: Reader + ?Sized>(
    r: &R,
    next: u64,
    baseline: NaiveDate,
    mut each: impl FnMut(Subject, Summary) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for kv in summaries_of(r)? {
        let (k, bytes) = kv?;
        let subject = subject_of(&k, SUMMARY_PREFIX)?;
        let newest = Summary::from_bytes(subject, &bytes)
            .map_err(damaged(&k))?
            .newest();
        each(subject, merge_chain(r, subject, newest, next, baseline)?)?;
    }
    Ok(())
}

/// `verify`'s check of the views checkpoint a clean stop left, if this open of `store` set
/// one aside: at the store's position it must hold exactly the stored summaries (`v/s/`,
/// which `verify` holds to the log), since a start would serve it instead. One that does
/// not read, or differs, is named (one line) and removed; one written for another position
/// (which no start would use) is removed silently.
pub fn check_checkpoint(store: &dyn Store) -> Result<Vec<String>, StoreError> {
    let Some(bytes) = store.take_views_checkpoint() else {
        return Ok(Vec::new());
    };
    let verdict = checkpoint_verdict(store, bytes)?;
    if verdict != CheckpointVerdict::Same {
        store.discard_views_checkpoint();
    }
    Ok(match verdict {
        CheckpointVerdict::Differs(why) => vec![format!(
            "the views checkpoint of the last stop (db/views.ckpt) {why}; removed it, so the next start reads the summaries from the store"
        )],
        _ => Vec::new(),
    })
}

#[derive(Debug, PartialEq)]
enum CheckpointVerdict {
    Same,
    Stale,
    Differs(String),
}

fn checkpoint_verdict(store: &dyn Store, bytes: Vec<u8>) -> Result<CheckpointVerdict, StoreError> {
    let c = match checkpoint::parse(bytes) {
        Ok(c) => c,
        Err(e) => return Ok(CheckpointVerdict::Differs(format!("does not read: {e}"))),
    };
    let Some(layout) = read_layout(store)? else {
        return Ok(CheckpointVerdict::Stale);
    };
    let position = checkpoint::Position {
        head: store.head()?,
        next: read_next(store)?,
        layout: layout.layout,
        baseline: layout.baseline,
    };
    if c.matches(&position).is_err() {
        return Ok(CheckpointVerdict::Stale);
    }
    // Empty ones included: the checkpoint holds the withdrawn subjects' too.
    let mut stored = stored_summaries(store)?;
    let mut next_stored = || stored.next().transpose();
    let mut first: Option<String> = None;
    let mut failed: Option<StoreError> = None;
    let read = c.each_subject(|subject, summary| {
        if first.is_some() || failed.is_some() {
            return;
        }
        match next_stored() {
            Ok(Some((s, m))) if s == subject && m == summary => {}
            Ok(Some((s, _))) if s == subject => {
                first = Some(format!("holds another summary of {}", name(subject)))
            }
            Ok(Some((s, _))) => {
                first = Some(format!(
                    "holds {} where the store's next summary is of {}",
                    name(subject),
                    name(s)
                ))
            }
            Ok(None) => {
                first = Some(format!(
                    "holds {}, which the store has no summary of",
                    name(subject)
                ))
            }
            Err(e) => failed = Some(e),
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    if let Err(e) = read {
        return Ok(CheckpointVerdict::Differs(format!("does not read: {e}")));
    }
    if let Some(why) = first {
        return Ok(CheckpointVerdict::Differs(why));
    }
    if let Some((s, _)) = next_stored()? {
        return Ok(CheckpointVerdict::Differs(format!(
            "lacks the summary of {}",
            name(s)
        )));
    }
    Ok(CheckpointVerdict::Same)
}

/// A subject for people: its region code, and school code when a school.
/// The summaries stored under `v/s/`, in subject order (a key that is not exactly a
/// subject's is damage: [`subject_of`]).
fn stored_summaries(
    store: &dyn Store,
) -> Result<impl Iterator<Item = Result<(Subject, Summary), StoreError>> + '_, StoreError> {
    Ok(summaries_of(store)?.map(|r| {
        let (k, b) = r?;
        let subject = subject_of(&k, SUMMARY_PREFIX)?;
        let summary = Summary::from_bytes(subject, &b).map_err(damaged(&k))?;
        Ok((subject, summary))
    }))
}

/// The summaries pending under `v/d/`, by their `v/s/` key, the newest of each.
fn pending_summaries<R: Reader + ?Sized>(r: &R) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StoreError> {
    let mut out = BTreeMap::new();
    for kv in r.read_prefix(PENDING_PREFIX) {
        let (k, v) = kv?;
        for (_, subject, summary) in pending::decode(&v).map_err(damaged(&k))? {
            out.insert([SUMMARY_PREFIX, subject].concat(), summary.to_vec());
        }
    }
    Ok(out)
}

/// How many summaries `v/d/` holds (each value's, counted apart).
fn count_pending(store: &dyn Store) -> Result<u64, StoreError> {
    let mut n = 0;
    for kv in store.scan(PENDING_PREFIX) {
        let (k, v) = kv?;
        n += pending::decode(&v).map_err(damaged(&k))?.len() as u64;
    }
    Ok(n)
}

/// Every stored summary as its `v/s/` key and bytes, in key order, each subject's latest:
/// `v/s/` with the pending ones (`v/d/`) read over it. What every reader of the stored
/// summaries goes through.
fn summaries_of<R: Reader + ?Sized>(
    r: &R,
) -> Result<pending::WithPending<crate::store::KvIter<'_>>, StoreError> {
    Ok(pending::with_pending(
        r.read_prefix(SUMMARY_PREFIX),
        pending_summaries(r)?,
    ))
}

/// Every stored view key and value as the views read them: the summaries pending under
/// `v/d/` read over `v/s/`, the `v/d/` values themselves left out. Two stores hold the
/// same views exactly when this reads the same, whenever each folded its pending
/// summaries.
pub fn read_as_folded(store: &dyn Store) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StoreError> {
    let mut out = BTreeMap::new();
    for kv in store.scan(keys::VIEW) {
        let (k, v) = kv?;
        if !k.starts_with(PENDING_PREFIX) {
            out.insert(k, v);
        }
    }
    out.extend(pending_summaries(store)?);
    Ok(out)
}

fn name((region, school): Subject) -> String {
    match school {
        Some(s) => format!("school {} in {region}", s.as_u64()),
        None => format!("region {region}'s own total"),
    }
}

/// `v/n`: the log index after the last entry the stored views hold (0 when absent).
fn read_next(store: &dyn Store) -> Result<u64, StoreError> {
    Ok(store
        .get(NEXT_KEY)?
        .map(|b| {
            keys::tail_u64(&b)
                .filter(|_| b.len() == 8)
                .ok_or_else(|| StoreError::Corrupt {
                    key: "v/n".into(),
                    message: "not 8 bytes".into(),
                })
        })
        .transpose()?
        .unwrap_or(0))
}

impl Views {
    /// Empty views for a campaign whose baseline date is `baseline`.
    pub fn new(baseline: NaiveDate) -> Views {
        Views {
            baseline,
            next: 0,
            rebuilding: false,
            settled: Arc::default(),
            ledger: OrdMap::new(),
            subjects: OrdMap::new(),
            withdrawn: OrdMap::new(),
            school_sums: OrdMap::new(),
            own_regions: OrdSet::new(),
            flagged: OrdSet::new(),
            sources: OrdMap::new(),
            extensions: OrdMap::new(),
            rule_changes: OrdMap::new(),
            unsealed: Vec::new(),
            next_unsealed: false,
            deferred: BTreeSet::new(),
            batched: false,
            dirty: BTreeSet::new(),
            pending: 0,
            fold_at: pending::FOLD_AT,
        }
    }

    /// Empty views to be rebuilt from the log into `batch`, which is to replace every
    /// stored view key: what they read of the views comes from the batch alone (read
    /// them back through [`Overlay::hiding`] the `v/` prefix).
    pub fn rebuilding(baseline: NaiveDate, batch: &mut WriteBatch) -> Views {
        put_layout(batch, baseline);
        batch.put(NEXT_KEY, 0u64.to_be_bytes().to_vec());
        Views {
            rebuilding: true,
            ..Views::new(baseline)
        }
    }

    /// While rebuilding: the space counts read from the store instead of the batch.
    pub fn settled(&self) -> Arc<Settled> {
        self.settled.clone()
    }

    /// Loads the stored views, for a campaign whose baseline date is `baseline`: the
    /// summaries, the ledger, the sources' activity and the extensions, never the
    /// snapshots (unless the summaries were merged for another baseline date, which
    /// [`prepare`] at the hub's start rules out; then they are merged again here).
    pub fn load(store: &dyn Store, baseline: NaiveDate) -> Result<Views, StoreError> {
        Views::load_inner(store, baseline, None)
    }

    /// [`Views::load`] at a hub's start, the store at head `head` (read before the views):
    /// the summaries come from the views checkpoint the last clean stop left when it
    /// matches the store ([`checkpoint`]), else from the store.
    pub fn load_at(store: &dyn Store, baseline: NaiveDate, head: u64) -> Result<Views, StoreError> {
        Views::load_inner(store, baseline, Some(head))
    }

    /// Takes the subjects' summaries from the views checkpoint of `store`'s last clean
    /// stop, if there is one and it was written at `position`; false (and no subject
    /// taken) otherwise.
    fn load_checkpoint(&mut self, store: &dyn Store, position: &checkpoint::Position) -> bool {
        let Some(bytes) = store.take_views_checkpoint() else {
            return false;
        };
        let size = bytes.len();
        let read = checkpoint::parse(bytes).and_then(|c| {
            c.matches(position)?;
            c.each_subject(|subject, summary| self.add_subject(subject, summary))
        });
        match read {
            Ok(()) => {
                info!(
                    subjects = self.subjects.len(),
                    bytes = size,
                    "Read the summaries from the views checkpoint of the last stop."
                );
                true
            }
            Err(e) => {
                // What was taken before the fault goes: the store's summaries replace it.
                self.subjects = OrdMap::new();
                self.withdrawn = OrdMap::new();
                self.school_sums = OrdMap::new();
                self.own_regions = OrdSet::new();
                self.flagged = OrdSet::new();
                warn!(error = %e, "Not using the views checkpoint of the last stop; reading the summaries from the store instead (same figures, slower).");
                store.discard_views_checkpoint();
                false
            }
        }
    }

    /// The views checkpoint of these views at store head `head` (see [`checkpoint`]), for
    /// [`Store::put_views_checkpoint`] at a clean stop.
    pub fn checkpoint(&self, head: u64) -> Vec<u8> {
        let at = checkpoint::Position {
            head,
            next: self.next,
            layout: LAYOUT,
            baseline: self.baseline,
        };
        if self.withdrawn.is_empty() {
            return checkpoint::encode(&at, self.subjects.iter().map(|(s, m)| (s, &**m)));
        }
        // The withdrawn subjects' empty summaries among the others, in subject order.
        let empty: Vec<(Subject, Summary)> = self
            .withdrawn
            .iter()
            .map(|(s, n)| {
                let mut m = Summary::default();
                m.set_newest(Some(*n));
                (*s, m)
            })
            .collect();
        let mut all: Vec<(&Subject, &Summary)> = self
            .subjects
            .iter()
            .map(|(s, m)| (s, &**m))
            .chain(empty.iter().map(|(s, m)| (s, m)))
            .collect();
        all.sort_by_key(|(s, _)| **s);
        checkpoint::encode(&at, all.into_iter())
    }

    fn load_inner(
        store: &dyn Store,
        baseline: NaiveDate,
        head: Option<u64>,
    ) -> Result<Views, StoreError> {
        let mut v = Views::new(baseline);
        let Some(layout) = read_layout(store)? else {
            if store.scan(keys::VIEW).next().is_some() {
                return Err(StoreError::Corrupt {
                    key: "v/m".into(),
                    message: "the views are in the layout of an older hub; start the hub once (it converts them) or run `spacesync-hub rebuild`".into(),
                });
            }
            return Ok(v);
        };
        if layout.converting {
            return Err(StoreError::Corrupt {
                key: "v/m".into(),
                message: format!(
                    "the views are part-way through their conversion to layout {LAYOUT}; start the hub once (it finishes it) or run `spacesync-hub rebuild`"
                ),
            });
        }
        if !readable(layout.layout) {
            let what = if convertible(layout.layout) {
                "start the hub once (it converts them) or run `spacesync-hub rebuild`"
            } else {
                "run a newer hub"
            };
            return Err(StoreError::Corrupt {
                key: "v/m".into(),
                message: format!(
                    "the views are in layout {}, which this version of the hub does not read (it reads {LAYOUT}); {what}",
                    layout.layout
                ),
            });
        }
        v.next = read_next(store)?;
        v.batched = store.batches_summaries();
        v.pending = count_pending(store)?;
        for r in store.scan(EXTENSION_PREFIX) {
            let (k, bytes) = r?;
            let idx = keys::tail_u64(&k).unwrap_or(0);
            let ext: Extension =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    key: format!("v/x/{idx}"),
                    message: e.to_string(),
                })?;
            v.extensions.insert(idx, ext);
        }
        v.rule_changes = stored_rule_changes(store)?;
        for r in store.scan(ITEM_PREFIX) {
            let (k, bytes) = r?;
            let item = decode_item(&k, &bytes)?;
            if matches!(item.record, Record::SpaceCount(_)) {
                return Err(StoreError::Corrupt {
                    key: format!("v/i/{}", item.meta.log_index),
                    message: "a space count among the ledger items (the older layout, half converted); start the hub once (it finishes converting) or run `spacesync-hub rebuild`".into(),
                });
            }
            v.ledger.insert(item.meta.log_index, Arc::new(item));
        }
        for r in store.scan(ACTIVITY_PREFIX) {
            let (k, bytes) = r?;
            let name = String::from_utf8_lossy(&k[ACTIVITY_PREFIX.len()..]).into_owned();
            let corrupt = |message: String| StoreError::Corrupt {
                key: format!("v/a/{name}"),
                message,
            };
            let source = SourceId::parse(&name).map_err(|e| corrupt(e.to_string()))?;
            let act: SourceActivity =
                serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
            v.sources.insert(source, act);
        }
        let position = head.map(|head| checkpoint::Position {
            head,
            next: v.next,
            layout: layout.layout,
            baseline: layout.baseline,
        });
        let checkpointed = match position.filter(|_| layout.baseline == baseline) {
            Some(p) => v.load_checkpoint(store, &p),
            None => false,
        };
        if checkpointed {
            // The summaries came from it.
        } else if layout.baseline == baseline {
            for r in stored_summaries(store)? {
                let (subject, summary) = r?;
                v.add_subject(subject, summary);
            }
        } else {
            let mut merged = Vec::new();
            walk_subjects(store, v.next, baseline, |subject, summary| {
                merged.push((subject, summary));
                Ok(())
            })?;
            for (subject, summary) in merged {
                v.add_subject(subject, summary);
            }
        }
        Ok(v)
    }

    /// Takes in a subject's summary at load.
    fn add_subject(&mut self, subject: Subject, summary: Summary) {
        if summary.is_empty() {
            if let Some(newest) = summary.newest() {
                self.withdrawn.insert(subject, newest);
            }
            return;
        }
        let after = Some(summary.figures());
        let flagged = summary.has_flags();
        self.subjects.insert(subject, Arc::new(summary));
        self.account(subject, None, after, flagged);
    }

    /// A stored snapshot as these views see it (see [`as_of`]).
    fn as_of_here(&self, snap: (Meta, SpaceCount)) -> Option<(Meta, SpaceCount)> {
        as_of(self.next, snap)
    }

    /// What the views read: the store with `batch` over it (without the store's view
    /// keys while rebuilding).
    fn reader<'a>(&'a self, store: &'a dyn Store, batch: &'a WriteBatch) -> Overlay<'a> {
        if self.rebuilding {
            Overlay::hiding_except(store, batch, keys::VIEW, self.settled.as_ref())
        } else {
            Overlay::new(store, batch)
        }
    }

    /// Puts the space count of `meta.log_index`, linked to `prev`, into its block in
    /// `batch`: where the batch holds the block already, changed there (ingest appends a
    /// batch's counts in log order, so all but a block's first in the batch go this way;
    /// `count_in_block`, copying the block out of the batch and back, was 2.4 % of an
    /// ingest's CPU); else as [`count_in_block`] reads it through these views' reader
    /// (which sees the batch first too, so the two ways agree).
    fn put_count(
        &self,
        store: &dyn Store,
        batch: &mut WriteBatch,
        meta: &Meta,
        s: &SpaceCount,
        prev: Option<u64>,
    ) -> Result<(), StoreError> {
        let key = count_key(blocks::block_last(meta.log_index));
        if let Some(value) = batch.pending_mut(&key) {
            let count = encode_count(meta, s, prev);
            return blocks::put_in(value, blocks::offset(meta.log_index), &count)
                .map_err(damaged(&key));
        }
        let (key, value) = count_in_block(&self.reader(store, batch), meta, s, prev)?;
        batch.put(key, value);
        Ok(())
    }

    /// Where `subject`'s chain of stored snapshots starts.
    fn newest_of(&self, subject: Subject) -> Option<u64> {
        match self.subjects.get(&subject) {
            Some(s) => s.newest(),
            None => self.withdrawn.get(&subject).copied(),
        }
    }

    /// Rebuilds a subject's summary from its live snapshots (after one dated earlier than
    /// its latest arrived, or one was withdrawn), walking its chain in the store with
    /// `batch` over it, and puts it in `batch`. One left empty stays stored: it holds where
    /// the chain starts.
    fn resummarise(
        &mut self,
        store: &dyn Store,
        subject: Subject,
        batch: &mut WriteBatch,
    ) -> Result<(), StoreError> {
        let newest = self.newest_of(subject);
        let mut live = Vec::new();
        walk_chain(&self.reader(store, batch), subject, newest, |c| {
            if c.meta.withdrawn_by.is_none() {
                live.push(c.into_pair());
            }
        })?;
        let mut summary = Summary::of(subject, live.iter().map(|(m, s)| (m, s)), self.baseline);
        summary.set_newest(newest);
        let before = self.subjects.get(&subject).map(|s| s.figures());
        let after = (!summary.is_empty()).then(|| summary.figures());
        let flagged = summary.has_flags();
        self.put_summary(subject, &summary, batch);
        if summary.is_empty() {
            self.subjects.remove(&subject);
            if let Some(n) = newest {
                self.withdrawn.insert(subject, n);
            }
        } else {
            self.withdrawn.remove(&subject);
            self.subjects.insert(subject, Arc::new(summary));
        }
        self.account(subject, before, after, flagged);
        Ok(())
    }

    /// Keeps the region sums, the regions with own totals and the flagged subjects in step
    /// with a subject whose merged figures went from `before` to `after` (`None`: no live
    /// snapshot).
    fn account(
        &mut self,
        (region, school): Subject,
        before: Option<Figures>,
        after: Option<Figures>,
        flagged: bool,
    ) {
        if school.is_some() {
            let sum = self.school_sums.entry(region).or_default();
            if let Some(b) = &before {
                sum.change(b, false);
            }
            if let Some(a) = &after {
                sum.change(a, true);
            }
            if sum.is_empty() {
                self.school_sums.remove(&region);
            }
        } else if after.is_some() {
            self.own_regions.insert(region);
        } else {
            self.own_regions.remove(&region);
        }
        if flagged {
            self.flagged.insert((region, school));
        } else {
            self.flagged.remove(&(region, school));
        }
    }

    /// Counts an entry in its source's activity and the views' position (written by
    /// [`Views::seal`], once a batch).
    fn note(&mut self, meta: &Meta) {
        // Looked up before an entry is made: an entry needs the id owned (a copy an entry).
        match self.sources.get_mut(&meta.source) {
            Some(act) => act.count(meta),
            None => self
                .sources
                .entry(meta.source.clone())
                .or_default()
                .count(meta),
        }
        if !self.unsealed.contains(&meta.source) {
            self.unsealed.push(meta.source.clone());
        }
        self.advance(meta.log_index);
    }

    fn advance(&mut self, log_index: u64) {
        self.next = self.next.max(log_index.saturating_add(1));
        self.next_unsealed = true;
    }

    /// Puts into `batch` what [`Views::apply`] and [`Views::apply_hub`] changed of the
    /// sources' activity (`v/a/`) and of the views' position (`v/n`) since the last seal:
    /// once a batch, not once an entry (each entry rewrote both, JSON and all: 1.5 % of the
    /// hub's CPU at ingest); and, when summaries are batched, the summaries changed, as one
    /// `v/d/` value or a fold ([`pending`]; reads `store` to fold). Every batch the views
    /// were applied into is sealed before it is written; `verify` holds the stored `v/a/`,
    /// `v/n` and summaries to a rebuild's.
    pub fn seal(&mut self, store: &dyn Store, batch: &mut WriteBatch) -> Result<(), StoreError> {
        self.seal_summaries(store, batch)?;
        self.seal_sources(batch);
        Ok(())
    }

    /// The sources' activity and the position, as [`Views::seal`] writes them.
    fn seal_sources(&mut self, batch: &mut WriteBatch) {
        for source in std::mem::take(&mut self.unsealed) {
            if let Some(act) = self.sources.get(&source) {
                put_activity(batch, &source, act);
            }
        }
        if std::mem::take(&mut self.next_unsealed) {
            batch.put(NEXT_KEY, self.next.to_be_bytes().to_vec());
        }
    }

    /// Applies one accepted entry, adding what changes to `batch`, which is to be applied
    /// to `store` (read together: an entry may withdraw or re-walk what the batch holds).
    pub fn apply(
        &mut self,
        store: &dyn Store,
        meta: Meta,
        record: &Record,
        batch: &mut WriteBatch,
    ) -> Result<(), StoreError> {
        self.note(&meta);
        if let Record::Withdrawal(w) = record {
            self.withdraw(store, &meta, w.target_seq, batch)?;
        }
        // A key transition changes the registry, not a figure: counted as the source's
        // traffic, kept as no item.
        if let Record::KeyTransition(_) = record {
            return Ok(());
        }
        let Record::SpaceCount(s) = record else {
            let item = Item {
                meta,
                record: record.clone(),
            };
            batch.put(item_key(item.meta.log_index), encode_item(&item));
            self.ledger.insert(item.meta.log_index, Arc::new(item));
            return Ok(());
        };
        let subject = (s.region, s.school);
        let prev = match self.subjects.get(&subject) {
            Some(summary) => summary.newest(),
            // Every snapshot withdrawn (its summary, empty, is rewritten below), or none.
            None => self.withdrawn.remove(&subject),
        };
        // A chain start at or after this count (an attempt made on views a replica's
        // commit moved past, which conflicts and is made again; or damage, which `verify`
        // names) is stored as no previous count.
        self.put_count(store, batch, &meta, s, prev)?;
        // Copied here if a snapshot still shares it; new (empty) if every snapshot of the
        // subject is withdrawn, so this one extends it.
        let summary = Arc::make_mut(self.subjects.entry(subject).or_default());
        summary.set_newest(Some(meta.log_index));
        let before = (!summary.is_empty()).then(|| summary.figures());
        if !summary.extend(subject, &meta, s, self.baseline) {
            return self.resummarise(store, subject, batch);
        }
        let after = Some(summary.figures());
        let flagged = summary.has_flags();
        if self.rebuilding {
            self.deferred.insert(subject);
        } else if self.batched {
            self.dirty.insert(subject);
        } else {
            batch.put(subject_key(SUMMARY_PREFIX, subject), summary.to_bytes());
        }
        self.account(subject, before, after, flagged);
        Ok(())
    }

    /// Puts `subject`'s summary into `batch`, or, while rebuilding, notes it for
    /// [`Views::seal_rebuilt`].
    fn put_summary(&mut self, subject: Subject, summary: &Summary, batch: &mut WriteBatch) {
        if self.rebuilding {
            self.deferred.insert(subject);
        } else if self.batched {
            self.dirty.insert(subject);
        } else {
            batch.put(subject_key(SUMMARY_PREFIX, subject), summary.to_bytes());
        }
    }

    /// [`Views::seal`] for views rebuilt into `batch`, putting in the summary of every
    /// subject they hold a snapshot of, as each stands now: what writing each one at every
    /// change would have left, an empty one (every snapshot withdrawn) holding where its
    /// chain starts.
    pub fn seal_rebuilt(&mut self, batch: &mut WriteBatch) {
        self.seal_sources(batch);
        for subject in std::mem::take(&mut self.deferred) {
            batch.put(
                subject_key(SUMMARY_PREFIX, subject),
                self.stored_form(subject),
            );
        }
    }

    /// These views with the summaries a batch changes stored as one `v/d/` value, folded
    /// into `v/s/` once `fold_at` would be pending (what a store that batches them gets at
    /// load with [`pending::FOLD_AT`]); how tests make small stores fold.
    pub fn with_pending_summaries(mut self, fold_at: u64) -> Views {
        self.batched = true;
        self.fold_at = fold_at.max(1);
        self
    }

    /// How many summaries the stored `v/d/` values hold, as these views count them.
    pub fn pending_summaries(&self) -> u64 {
        self.pending
    }

    /// `subject`'s summary as stored (`v/s/`, `v/d/`) now: an empty one (every snapshot
    /// withdrawn) holds where its chain starts.
    fn stored_form(&self, subject: Subject) -> Vec<u8> {
        match self.subjects.get(&subject) {
            Some(summary) => summary.to_bytes(),
            None => {
                let mut empty = Summary::of(subject, std::iter::empty(), self.baseline);
                empty.set_newest(self.withdrawn.get(&subject).copied());
                empty.to_bytes()
            }
        }
    }

    /// When summaries are batched: the ones changed since the last seal, as `v/d/`
    /// values; then, while more than the views' `fold_at` are pending, the oldest values
    /// folded into `v/s/` — at most as many summaries as this batch added (and one value),
    /// so no batch grows with the history ([`Views::fold_oldest`]).
    fn seal_summaries(
        &mut self,
        store: &dyn Store,
        batch: &mut WriteBatch,
    ) -> Result<(), StoreError> {
        if !self.batched {
            // Values pending from a store that batched them (a sled store migrated to
            // PostgreSQL) would be read over the keys these views write: folded first.
            if self.pending > 0 {
                self.fold_oldest(store, batch, 0, u64::MAX)?;
            }
            return Ok(());
        }
        if self.dirty.is_empty() {
            return Ok(());
        }
        let dirty = std::mem::take(&mut self.dirty);
        let n = dirty.len() as u64;
        let forms: Vec<(Vec<u8>, Vec<u8>)> = dirty
            .iter()
            .map(|&s| (subject_key(b"", s), self.stored_form(s)))
            .collect();
        // Small values (sled copies a leaf's values whole when it rewrites the leaf).
        for (i, chunk) in forms.chunks(pending::PER_VALUE).enumerate() {
            let value = pending::encode(chunk.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
            let key = [
                PENDING_PREFIX,
                &self.next.to_be_bytes(),
                &(i as u32).to_be_bytes(),
            ]
            .concat();
            batch.put(key, value);
        }
        self.pending += n;
        self.fold_oldest(store, batch, self.fold_at, n)
    }

    /// Folds the oldest pending values into `v/s/` while more than `target` summaries are
    /// pending, until `budget` summaries have been folded (a value is folded whole). A
    /// summary goes under its key only when it is still the subject's latest (the views
    /// in memory hold the same bytes): one a newer value holds is left to that value, so
    /// a subject that changes often is written once a window, not once a change.
    pub fn fold_oldest(
        &mut self,
        store: &dyn Store,
        batch: &mut WriteBatch,
        target: u64,
        budget: u64,
    ) -> Result<(), StoreError> {
        let mut folded = 0u64;
        // One forward pass: each read starts after the value folded before it (the values
        // this batch removed are not walked again).
        let mut from = PENDING_PREFIX.to_vec();
        while self.pending > target && folded < budget {
            let oldest = Overlay::new(store, batch).read_first_from(PENDING_PREFIX, &from)?;
            let Some((k, v)) = oldest else {
                // None stored after all (the count came from a store changed since).
                self.pending = 0;
                break;
            };
            let summaries = pending::decode(&v).map_err(damaged(&k))?;
            for &(subject, _, form) in &summaries {
                let latest = self.stored_form(subject);
                if latest == form {
                    batch.put(subject_key(SUMMARY_PREFIX, subject), latest);
                }
            }
            from.clone_from(&k);
            from.push(0);
            batch.delete(k);
            let count = summaries.len() as u64;
            self.pending = self.pending.saturating_sub(count);
            folded += count.max(1);
        }
        Ok(())
    }

    /// Marks the entry `source` made at `target_seq` withdrawn by `meta`'s entry, if the
    /// views hold it and it is not withdrawn yet, and re-walks its subject.
    fn withdraw(
        &mut self,
        store: &dyn Store,
        meta: &Meta,
        target_seq: u64,
        batch: &mut WriteBatch,
    ) -> Result<(), StoreError> {
        let reader = self.reader(store, batch);
        let Some(held) = crate::log::index::held(&reader, &meta.source, target_seq)? else {
            return Ok(());
        };
        let target = held.log_index;
        let is_target =
            |m: &Meta| m.source == meta.source && m.seq == target_seq && m.withdrawn_by.is_none();
        if let Some(item) = self.ledger.get_mut(&target) {
            if is_target(&item.meta) {
                // Copied here if a snapshot still shares it.
                let item = Arc::make_mut(item);
                item.meta.withdrawn_by = Some(meta.log_index);
                batch.put(item_key(target), encode_item(item));
            }
            return Ok(());
        }
        let Some(mut c) = read_count(&self.reader(store, batch), target)? else {
            return Ok(());
        };
        if !is_target(&c.meta) {
            return Ok(());
        }
        c.meta.withdrawn_by = Some(meta.log_index);
        self.put_count(store, batch, &c.meta, &c.count, c.prev)?;
        self.resummarise(store, c.subject(), batch)
    }

    /// Applies one of the hub's own entries.
    pub fn apply_hub(&mut self, log_index: u64, entry: &HubEntry, batch: &mut WriteBatch) {
        self.advance(log_index);
        match entry {
            HubEntry::Extension(x) => {
                batch.put(
                    [EXTENSION_PREFIX, &log_index.to_be_bytes()].concat(),
                    serde_json::to_vec(x).unwrap_or_default(),
                );
                self.extensions.insert(log_index, x.clone());
            }
            HubEntry::NoticeRuleChanged(x) => {
                batch.put(
                    [RULE_PREFIX, &log_index.to_be_bytes()].concat(),
                    serde_json::to_vec(x).unwrap_or_default(),
                );
                self.rule_changes.insert(log_index, x.clone());
            }
            // The registry is kept by `crate::registry`, not by the views.
            HubEntry::SourceAdded(_)
            | HubEntry::KeyRotated(_)
            | HubEntry::SourceRevoked(_)
            | HubEntry::RegistryBaseline(_) => {}
        }
    }

    /// Applies one of the hub's own entries that another writer has already stored: the
    /// same change as [`Views::apply_hub`], in memory only (catch-up, see
    /// [`Views::catch_up`]).
    pub fn replay_hub(&mut self, log_index: u64, entry: &HubEntry) {
        let unsealed = self.next_unsealed;
        self.apply_hub(log_index, entry, &mut WriteBatch::new());
        // Already stored by the writer that appended it.
        self.next_unsealed = unsealed;
    }

    /// Brings the views in memory up to the store after another writer (a replica on the
    /// same database) appended the entries `touched` lists: what those entries changed is
    /// read back from the store, key by key — the sources' activity, the ledger items,
    /// the summaries of the subjects they (or the entries they withdrew) concern, the
    /// position — never the whole views. Reading the latest stored value is idempotent,
    /// so a key a still later write changed is simply read as of that write (the writer
    /// that catches up then finds the head moved again and catches up again).
    pub fn catch_up(&mut self, store: &dyn Store, touched: Touched) -> Result<(), StoreError> {
        let Touched {
            sources,
            mut items,
            mut subjects,
            withdrawals,
        } = touched;
        for (source, target_seq) in withdrawals {
            let target = match crate::log::index::held(store, &source, target_seq) {
                Ok(Some(held)) => held.log_index,
                Ok(None) | Err(StoreError::Corrupt { .. }) => continue,
                Err(e) => return Err(e),
            };
            if self.ledger.contains_key(&target) {
                items.insert(target);
            } else if let Some(c) = read_count(store, target)? {
                subjects.insert(c.subject());
            }
        }
        for idx in items {
            let key = item_key(idx);
            match store.get(&key)? {
                Some(bytes) => {
                    let item = decode_item(&key, &bytes)?;
                    self.ledger.insert(idx, Arc::new(item));
                }
                None => {
                    self.ledger.remove(&idx);
                }
            }
        }
        for source in sources {
            let key = [ACTIVITY_PREFIX, source.as_str().as_bytes()].concat();
            match store.get(&key)? {
                Some(bytes) => {
                    let act: SourceActivity =
                        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                            key: format!("v/a/{source}"),
                            message: e.to_string(),
                        })?;
                    self.sources.insert(source, act);
                }
                None => {
                    self.sources.remove(&source);
                }
            }
        }
        let mut pending = if subjects.is_empty() {
            BTreeMap::new()
        } else {
            pending_summaries(store)?
        };
        for subject in subjects {
            let key = subject_key(SUMMARY_PREFIX, subject);
            let bytes = match pending.remove(&key) {
                Some(b) => Some(b),
                None => store.get(&key)?,
            };
            let stored = bytes
                .map(|b| Summary::from_bytes(subject, &b).map_err(damaged(&key)))
                .transpose()?;
            match stored
                .as_ref()
                .filter(|s| s.is_empty())
                .and_then(|s| s.newest())
            {
                Some(newest) => self.withdrawn.insert(subject, newest),
                None => self.withdrawn.remove(&subject),
            };
            let stored = stored.filter(|s| !s.is_empty());
            let before = self.subjects.get(&subject).map(|s| s.figures());
            match stored {
                Some(summary) => {
                    let after = Some(summary.figures());
                    let flagged = summary.has_flags();
                    self.subjects.insert(subject, Arc::new(summary));
                    self.account(subject, before, after, flagged);
                }
                None => {
                    self.subjects.remove(&subject);
                    self.account(subject, before, None, false);
                }
            }
        }
        if let Some(b) = store.get(NEXT_KEY)?
            && let Some(next) = keys::tail_u64(&b).filter(|_| b.len() == 8)
        {
            self.next = self.next.max(next);
        }
        Ok(())
    }

    /// Extensions in log order.
    pub fn extensions(&self) -> impl Iterator<Item = &Extension> {
        self.extensions.values()
    }

    /// Notice rule changes in log order, with their log index.
    pub fn rule_changes(&self) -> impl Iterator<Item = (u64, &NoticeRuleChanged)> {
        self.rule_changes.iter().map(|(i, c)| (*i, c))
    }

    /// The rules in force with these views: `campaign` (the file) with every notice rule
    /// change these views hold applied in log order. Borrowed when there is none. What
    /// bulletins and notices are computed with ([`crate::tracking::assess`]), so views
    /// rebuilt from a log prefix give the rules of that prefix.
    pub fn rules<'c>(&self, campaign: &'c Campaign) -> std::borrow::Cow<'c, Campaign> {
        if self.rule_changes.is_empty() {
            return std::borrow::Cow::Borrowed(campaign);
        }
        let mut c = campaign.clone();
        for change in self.rule_changes.values() {
            c.set_rule(change.setting, &change.new);
        }
        std::borrow::Cow::Owned(c)
    }

    /// Every item in log order, the space counts read from `r` (the store these views were
    /// loaded from or written to; for views being rebuilt, the store with the batch over
    /// it, hiding `v/`): O(entries), for tools and tests. What was written after these
    /// views is left out, so a snapshot's items do not change.
    pub fn items<R: Reader + ?Sized>(&self, r: &R) -> Result<Vec<Item>, StoreError> {
        self.item_stream(r).collect()
    }

    /// [`Views::items`] one at a time, in log order, holding one stored count at a time.
    pub fn item_stream<'a, R: Reader + ?Sized>(
        &'a self,
        r: &'a R,
    ) -> impl Iterator<Item = Result<Item, StoreError>> + 'a {
        self.item_stream_but(r, &|_| false)
    }

    /// [`Views::item_stream`] without the space counts under the keys `same` names.
    fn item_stream_but<'a, R: Reader + ?Sized>(
        &'a self,
        r: &'a R,
        same: SameValue<'a>,
    ) -> impl Iterator<Item = Result<Item, StoreError>> + 'a {
        let counts = counts_but(r, same)
            .flat_map(|kv| match kv.and_then(|(k, b)| decode_counts(&k, &b)) {
                Ok(counts) => counts.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            })
            .filter_map(move |c| match c.map(|c| self.as_of_here(c.into_pair())) {
                Ok(Some((meta, s))) => Some(Ok(Item {
                    meta,
                    record: Record::SpaceCount(s),
                })),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            });
        let ledger = self.ledger.values().map(|i| Ok((**i).clone()));
        MergedItems {
            a: ledger.peekable(),
            b: counts.peekable(),
        }
    }

    /// Items not withdrawn (as [`Views::items`]).
    pub fn live<R: Reader + ?Sized>(&self, r: &R) -> Result<Vec<Item>, StoreError> {
        let mut items = self.items(r)?;
        items.retain(|i| i.meta.withdrawn_by.is_none());
        Ok(items)
    }

    /// Ledger items not withdrawn, in log order.
    fn live_ledger(&self) -> impl Iterator<Item = &Item> {
        self.ledger
            .values()
            .map(|i| &**i)
            .filter(|i| i.meta.withdrawn_by.is_none())
    }

    /// Entries the views hold (every entry of a source is one item): O(sources).
    pub fn entries(&self) -> u64 {
        self.sources.values().map(|a| a.entries).sum()
    }

    /// The subjects whose merged summary differs between these views and `other`, named
    /// for people, in subject order: what `verify` reports.
    pub fn differing_subjects(&self, other: &Views) -> Vec<String> {
        let all: BTreeSet<&Subject> = self
            .subjects
            .keys()
            .chain(other.subjects.keys())
            .chain(self.withdrawn.keys())
            .chain(other.withdrawn.keys())
            .collect();
        all.into_iter()
            .filter(|k| {
                self.subjects.get(*k) != other.subjects.get(*k)
                    || self.withdrawn.get(*k) != other.withdrawn.get(*k)
            })
            .map(|k| name_subject(*k))
            .collect()
    }

    /// Per-source traffic, in source order.
    pub fn sources(&self) -> &OrdMap<SourceId, SourceActivity> {
        &self.sources
    }

    /// The baseline date the views are merged for.
    pub fn baseline(&self) -> NaiveDate {
        self.baseline
    }

    /// Rolls every subject up to counties, cities, provinces and the nation, from the
    /// maintained summaries and region sums: O(regions + flagged subjects), whatever the
    /// number of schools. The views answer for their own baseline date; asked for another
    /// (a campaign file changed under a running reader; the hub merges them again at its
    /// next start) they say so in the log and answer for theirs: merging for another date
    /// takes the snapshots, which is [`Views::rollup_afresh`]'s work.
    pub fn rollup(&self, campaign: &Campaign) -> Rollup {
        if campaign.baseline != self.baseline {
            warn!(views = %self.baseline, asked = %campaign.baseline, "The views are merged for another baseline date than the campaign's; the figures use the views' own until the hub restarts.");
        }
        let mut flags = Vec::new();
        for subject in &self.flagged {
            if let Some(summary) = self.subjects.get(subject) {
                flags.extend(summary.flags(*subject));
            }
        }
        let mut own: HashMap<RegionCode, Figures> = HashMap::new();
        for &r in &self.own_regions {
            if let Some(summary) = self.subjects.get(&(r, None)) {
                own.insert(r, summary.figures());
            }
        }
        let mut parts: HashMap<RegionCode, Figures> = self
            .school_sums
            .iter()
            .map(|(r, sum)| (*r, sum.figures()))
            .collect();
        let mut regions: BTreeSet<RegionCode> = BTreeSet::new();
        for &region in self.school_sums.keys().chain(self.own_regions.iter()) {
            let mut r = Some(region);
            while let Some(c) = r {
                if !regions.insert(c) {
                    break;
                }
                r = c.parent();
            }
        }
        let (nation, totals) = roll_up(&regions, &own, &mut parts, &mut flags);
        Rollup {
            nation,
            totals,
            schools: Schools::Maintained(self.subjects.clone()),
            flags,
        }
    }

    /// The roll-up merging every subject afresh from its stored snapshots (read from `r`,
    /// as [`Views::items`]) for `campaign`'s baseline date: the oracle the maintained
    /// roll-up and summaries are tested against, and the figures for another baseline
    /// date. O(entries) reads, one subject's snapshots held at a time.
    pub fn rollup_afresh<R: Reader + ?Sized>(
        &self,
        r: &R,
        campaign: &Campaign,
    ) -> Result<Rollup, StoreError> {
        let mut flags = Vec::new();
        let mut own: HashMap<RegionCode, Figures> = HashMap::new();
        let mut parts: HashMap<RegionCode, Figures> = HashMap::new();
        let mut schools: BTreeMap<RegionCode, Vec<(SchoolCode, Figures)>> = BTreeMap::new();
        let mut regions: BTreeSet<RegionCode> = BTreeSet::new();
        walk_subjects(r, self.next, campaign.baseline, |subject, summary| {
            if summary.is_empty() {
                return Ok(());
            }
            flags.extend(summary.flags(subject));
            let f = summary.figures();
            let (region, school) = subject;
            let mut r = Some(region);
            while let Some(c) = r {
                regions.insert(c);
                r = c.parent();
            }
            match school {
                Some(code) => {
                    parts.entry(region).or_default().add(&f);
                    schools.entry(region).or_default().push((code, f));
                }
                None => {
                    own.insert(region, f);
                }
            }
            Ok(())
        })?;
        let (nation, totals) = roll_up(&regions, &own, &mut parts, &mut flags);
        Ok(Rollup {
            nation,
            totals,
            schools: Schools::Computed(schools),
            flags,
        })
    }

    /// Milestone submissions per province and milestone id, in log order (withdrawn ones
    /// excluded).
    pub fn milestones(&self) -> BTreeMap<(RegionCode, String), Vec<(&Meta, &Milestone)>> {
        let mut out: BTreeMap<(RegionCode, String), Vec<(&Meta, &Milestone)>> = BTreeMap::new();
        for i in self.live_ledger() {
            if let Record::Milestone(m) = &i.record {
                out.entry((m.region.province(), m.milestone.clone()))
                    .or_default()
                    .push((&i.meta, m));
            }
        }
        out
    }

    /// Nominations per province in log order, and those that broke a quota when they
    /// arrived (judged per province across all its sources).
    pub fn nominations(&self, campaign: &Campaign) -> Nominations<'_> {
        let mut ledgers: BTreeMap<RegionCode, QuotaLedger> = BTreeMap::new();
        let mut counted = Vec::new();
        let mut violations = Vec::new();
        for i in self.live_ledger() {
            if let Record::Recommendation(r) = &i.record {
                let ledger = ledgers.entry(r.by.province()).or_default();
                match ledger.add(&campaign.quotas, r) {
                    Ok(()) => counted.push((&i.meta, r)),
                    Err(v) => violations.push((i.meta.clone(), v)),
                }
            }
        }
        Nominations {
            counted,
            violations,
        }
    }

    /// Activities (not withdrawn), in log order.
    pub fn activities(&self) -> Vec<(&Meta, &Activity)> {
        self.live_ledger()
            .filter_map(|i| match &i.record {
                Record::Activity(a) => Some((&i.meta, a)),
                _ => None,
            })
            .collect()
    }
}

/// Nominations, split by whether they fit the quotas.
pub struct Nominations<'a> {
    /// Counted nominations.
    pub counted: Vec<(&'a Meta, &'a Recommendation)>,
    /// Nominations that broke a quota on arrival.
    pub violations: Vec<(Meta, QuotaViolation)>,
}

fn merge_own(
    own: Option<&Figures>,
    sum: Option<&Figures>,
    region: RegionCode,
    flags: &mut Vec<Flag>,
) -> Figures {
    match (own, sum) {
        (None, None) => Figures::default(),
        (Some(o), None) => o.clone(),
        (None, Some(s)) => s.clone(),
        (Some(o), Some(s)) => {
            let mut t = Figures::default();
            let pick = |a: &SpaceCounts, b: &SpaceCounts, k: SpaceKind| a.get(k).or(b.get(k));
            for k in SpaceKind::ALL {
                t.spaces.set(k, pick(&o.spaces, &s.spaces, k));
                t.real_name.set(k, pick(&o.real_name, &s.real_name, k));
                t.baseline.set(k, pick(&o.baseline, &s.baseline, k));
                if let (Some(r), Some(p)) = (o.spaces.get(k), s.spaces.get(k)) {
                    let diff = r.abs_diff(p) as f64;
                    if diff > 0.01 * (r.max(p) as f64) {
                        flags.push(Flag::Discrepancy {
                            region,
                            kind: k,
                            reported: r,
                            sum_of_parts: p,
                        });
                    }
                }
            }
            t.population = Population {
                teachers: o.population.teachers.or(s.population.teachers),
                students: o.population.students.or(s.population.students),
                schools: o.population.schools.or(s.population.schools),
            };
            t
        }
    }
}

/// Totals bottom-up — counties, then cities, then provinces — from each region's own total
/// and the sum of its parts (`parts` gains each total under its parent); the nation.
fn roll_up(
    regions: &BTreeSet<RegionCode>,
    own: &HashMap<RegionCode, Figures>,
    parts: &mut HashMap<RegionCode, Figures>,
    flags: &mut Vec<Flag>,
) -> (Figures, BTreeMap<RegionCode, Figures>) {
    let mut totals: BTreeMap<RegionCode, Figures> = BTreeMap::new();
    for level in [Level::County, Level::City, Level::Province] {
        for &r in regions.iter().filter(|r| r.level() == level) {
            let sum = parts.get(&r).cloned();
            let total = merge_own(own.get(&r), sum.as_ref(), r, flags);
            if let Some(p) = r.parent() {
                parts.entry(p).or_default().add(&total);
            }
            totals.insert(r, total);
        }
    }
    let mut nation = Figures::default();
    for (r, f) in &totals {
        if r.level() == Level::Province {
            nation.add(f);
        }
    }
    (nation, totals)
}

/// Where a roll-up finds its schools' figures.
enum Schools {
    /// The views' subjects as of the roll-up (an O(1) clone): read on demand.
    Maintained(OrdMap<Subject, Arc<Summary>>),
    /// Merged afresh when the roll-up was made.
    Computed(BTreeMap<RegionCode, Vec<(SchoolCode, Figures)>>),
}

/// Every region's merged figures.
pub struct Rollup {
    /// The nation.
    pub nation: Figures,
    /// Each region with data (and its ancestors).
    pub totals: BTreeMap<RegionCode, Figures>,
    /// Schools' figures.
    schools: Schools,
    /// Flags raised while merging.
    pub flags: Vec<Flag>,
}

impl Rollup {
    /// The figures of a region (empty when nothing is known).
    pub fn region(&self, code: RegionCode) -> Figures {
        self.totals.get(&code).cloned().unwrap_or_default()
    }

    /// The schools of `region` with a live snapshot, in code order, with their figures.
    pub fn schools_in(&self, region: RegionCode) -> Vec<(SchoolCode, Figures)> {
        match &self.schools {
            Schools::Maintained(subjects) => subjects
                .range((region, None)..)
                .take_while(|((r, _), _)| *r == region)
                .filter_map(|((_, school), summary)| {
                    let code = (*school)?;
                    (!summary.is_empty()).then(|| (code, summary.figures()))
                })
                .collect(),
            Schools::Computed(map) => map.get(&region).cloned().unwrap_or_default(),
        }
    }

    /// Every region's schools (as [`Rollup::schools_in`]); regions without schools left out.
    /// O(schools): for reports and tests, not for a page.
    pub fn schools(&self) -> BTreeMap<RegionCode, Vec<(SchoolCode, Figures)>> {
        match &self.schools {
            Schools::Maintained(subjects) => {
                let mut out: BTreeMap<RegionCode, Vec<(SchoolCode, Figures)>> = BTreeMap::new();
                for ((region, school), summary) in subjects {
                    if let Some(code) = school
                        && !summary.is_empty()
                    {
                        out.entry(*region)
                            .or_default()
                            .push((*code, summary.figures()));
                    }
                }
                out
            }
            Schools::Computed(map) => map.clone(),
        }
    }
}

/// The name of a region for display: the unit table for provinces, else the directory.
pub fn region_name(code: RegionCode) -> Option<String> {
    unit(code)
        .filter(|u| u.code == code.as_u32())
        .map(|u| u.name_zh.to_string())
        .or_else(|| Directory::bundled().name(code).map(str::to_string))
}

/// The columns of the flags CSV, the dashboard's and the bulletins' alike, so one program
/// reads both: machine-readable names, one per field of [`flag_csv_row`].
pub const FLAG_CSV_HEADER: [&str; 14] = [
    "flag",
    "region",
    "region_name",
    "school",
    "kind",
    "before_date",
    "before",
    "after_date",
    "after",
    "drop",
    "as_of",
    "sources",
    "reported",
    "sum_of_parts",
];

/// One flag as a row of the flags CSV (the columns of [`FLAG_CSV_HEADER`]), `label`
/// naming its region in the reader's language.
pub fn flag_csv_row(f: &Flag, region: RegionCode, label: String) -> [String; 14] {
    let mut row: [String; 14] = Default::default();
    row[1] = region.to_string();
    row[2] = label;
    match f {
        Flag::Decrease {
            school,
            kind,
            before,
            after,
            source,
            ..
        } => {
            row[0] = "decrease".into();
            row[3] = school.map(|s| s.to_string()).unwrap_or_default();
            row[4] = kind.as_str().into();
            row[5] = before.0.to_string();
            row[6] = before.1.to_string();
            row[7] = after.0.to_string();
            row[8] = after.1.to_string();
            row[9] = before.1.saturating_sub(after.1).to_string();
            row[11] = source.to_string();
        }
        Flag::Conflict {
            school,
            as_of,
            sources,
            ..
        } => {
            row[0] = "conflict".into();
            row[3] = school.map(|s| s.to_string()).unwrap_or_default();
            row[10] = as_of.to_string();
            row[11] = sources
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ");
        }
        Flag::Discrepancy {
            kind,
            reported,
            sum_of_parts,
            ..
        } => {
            row[0] = "discrepancy".into();
            row[4] = kind.as_str().into();
            row[12] = reported.to_string();
            row[13] = sum_of_parts.to_string();
        }
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_space_count_reads_back_as_stored_and_a_damaged_one_is_named() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let meta = Meta {
            log_index: 1_234_567,
            received_at: t("2018-11-20T02:00:00.123Z"),
            source: SourceId::parse("gd-rrt").unwrap(),
            seq: 99,
            recorded_at: t("2018-11-20T01:59:59.987654321Z"),
            withdrawn_by: Some(1_234_999),
        };
        let mut spaces = SpaceCounts::default();
        spaces.set(SpaceKind::Teacher, Some(120));
        spaces.set(SpaceKind::Club, Some(0));
        let mut real = SpaceCounts::default();
        real.set(SpaceKind::Teacher, Some(100));
        let subjects = [
            (RegionCode::parse("440106").unwrap(), None),
            (
                RegionCode::parse("440106").unwrap(),
                Some(SchoolCode::parse("4144010601").unwrap()),
            ),
        ];
        for subject in subjects {
            for (real_name, population) in [
                (None, None),
                (
                    Some(real),
                    Some(Population {
                        teachers: Some(130),
                        students: None,
                        schools: Some(1),
                    }),
                ),
            ] {
                let s = SpaceCount {
                    region: subject.0,
                    school: subject.1,
                    as_of: NaiveDate::from_ymd_opt(2018, 11, 19).unwrap(),
                    spaces,
                    real_name,
                    population,
                };
                let key = count_key(meta.log_index);
                for prev in [None, Some(0), Some(1_234_566), Some(17)] {
                    let bytes = encode_count(&meta, &s, prev);
                    let back = decode_count(&key, &bytes).unwrap();
                    assert_eq!(back.meta, meta);
                    assert_eq!(back.prev, prev);
                    assert_eq!(
                        Record::SpaceCount(back.count.clone()),
                        Record::SpaceCount(s.clone())
                    );
                    assert!(bytes.len() < 64, "{} bytes", bytes.len());
                    for n in 0..bytes.len() {
                        let e = decode_count(&key, &bytes[..n]).unwrap_err();
                        assert!(e.to_string().contains("v/c/"), "{e}");
                    }
                    assert!(decode_count(&key[..key.len() - 1], &bytes).is_err());
                }
                // A link is a distance back; one past the log's first index is damage.
                // (No link encodes as one byte 0, after the format's.)
                let rest = encode_count(&meta, &s, None).split_off(2);
                let mut o = Out::new();
                o.u8(COUNT_FORMAT);
                o.uint(meta.log_index + 1);
                let mut bytes = o.into_bytes();
                bytes.extend_from_slice(&rest);
                let e = decode_count(&key, &bytes).unwrap_err();
                assert!(e.to_string().contains("before the log's first"), "{e}");
                // Layouts 2 and 3's encoding (no link) reads, unlinked, for `prepare`.
                let mut older = encode_count(&meta, &s, None);
                assert_eq!(older.remove(1), 0);
                older[0] = OLDER_COUNT_FORMAT;
                let back = decode_count(&key, &older).unwrap();
                assert_eq!((back.meta, back.prev), (meta.clone(), None));
            }
        }
    }

    #[test]
    fn a_count_is_put_only_into_a_block_or_an_empty_key() {
        let t = DateTime::parse_from_rfc3339("2018-11-20T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let meta = Meta {
            log_index: 33,
            received_at: t,
            source: SourceId::parse("gd-rrt").unwrap(),
            seq: 3,
            recorded_at: t,
            withdrawn_by: None,
        };
        let s = SpaceCount {
            region: RegionCode::parse("440106").unwrap(),
            school: None,
            as_of: NaiveDate::from_ymd_opt(2018, 11, 19).unwrap(),
            spaces: SpaceCounts::default(),
            real_name: None,
            population: None,
        };
        let store = crate::store::MemStore::default();
        let key = count_key(blocks::block_last(meta.log_index));
        // An empty block key takes the count, and so does the block it makes.
        let (_, v) = count_in_block(&store, &meta, &s, Some(30)).unwrap();
        assert!(blocks::is_block(&v));
        let mut b = WriteBatch::new();
        b.put(key.clone(), v);
        store.apply(b).unwrap();
        let mut later = meta.clone();
        later.log_index += 1;
        let (_, v) = count_in_block(&store, &later, &s, Some(33)).unwrap();
        assert_eq!(
            read_count(&v_store(&key, v), 34).unwrap().unwrap().prev,
            Some(33)
        );
        // A count of layout 2 under the key (converted by `prepare` before any write), or
        // garbage, is named, not wrapped into a block.
        let mut older = meta.clone();
        older.log_index = blocks::block_last(meta.log_index);
        for garbage in [
            encode_count(&older, &s, None),
            vec![],
            vec![0x07, 1, 2, 3],
            vec![0xff],
        ] {
            let mut b = WriteBatch::new();
            b.put(key.clone(), garbage.clone());
            store.apply(b).unwrap();
            let e = count_in_block(&store, &meta, &s, None).unwrap_err();
            assert!(e.to_string().contains("not a block"), "{garbage:?}: {e}");
            let e = read_count(&store, meta.log_index).unwrap_err();
            assert!(e.to_string().contains("not a block"), "{garbage:?}: {e}");
        }
    }

    /// A store holding `value` under `key` alone.
    fn v_store(key: &[u8], value: Vec<u8>) -> crate::store::MemStore {
        let store = crate::store::MemStore::default();
        let mut b = WriteBatch::new();
        b.put(key.to_vec(), value);
        store.apply(b).unwrap();
        store
    }
}
