//! What the views keep of one subject (a region's own total, or a school): its merged
//! figures and flags, and just enough to extend them with the next snapshot.
//!
//! The spec's merge rule orders a subject's snapshots by `(as_of, log index)`: per kind the
//! last one wins (the baseline: the last dated on or before the baseline date), a decrease
//! is flagged between a kind's consecutive values on different dates, and a date reported
//! by several sources is flagged as a conflict. Walking the snapshots in that order is all
//! the rule needs, so [`Summary::extend`] takes one snapshot at a time, and a summary built
//! from scratch ([`Summary::of`]) is the same walk over the sorted list: the incremental and
//! the from-scratch paths are one code path. A snapshot that arrives in order (its date no
//! earlier than the subject's latest, the common case) extends the summary in O(kinds);
//! anything else (an earlier date, a withdrawal) rebuilds it from the subject's chain of
//! stored snapshots, which starts at [`Summary::newest`].

use chrono::NaiveDate;
use spacesync_shared::record::{Population, SpaceCount, SpaceCounts, SpaceKind};
use spacesync_shared::region::SchoolCode;
use spacesync_shared::{RegionCode, SourceId};

use super::codec::{Damaged, In, Out};
use super::figures::{Figures, Flag, Meta};

/// A kind's value as of a date. (Which entry gave it is not kept: the walk only compares
/// dates and values, and every byte here is multiplied by the number of subjects.)
type Slot = (NaiveDate, u64);

/// The merged state of one subject.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Summary {
    /// Per kind, the last value in `(as_of, log index)` order.
    best: [Option<Slot>; 8],
    /// Per kind, the last value dated on or before the baseline.
    base: [Option<Slot>; 8],
    /// Per kind, the last real-name value.
    real: [Option<Slot>; 8],
    /// The last population given.
    pop: Option<(NaiveDate, Population)>,
    /// Decreases, in the order the walk found them.
    decreases: Vec<Flag>,
    /// Conflicts of dates before `latest`, in date order.
    conflicts: Vec<Flag>,
    /// The latest date and the sources that reported it (sorted, distinct).
    latest: Option<(NaiveDate, Vec<SourceId>)>,
    /// Snapshots walked.
    snapshots: u32,
    /// The log index of the subject's newest stored snapshot, withdrawn ones included:
    /// where the chain of its snapshots starts (each stored one names the one before it).
    /// Kept when every snapshot is withdrawn (the summary is then empty, and stored).
    newest: Option<u64>,
}

impl Summary {
    /// The summary of `snaps` (any order; withdrawn ones already left out).
    pub(crate) fn of<'a>(
        subject: (RegionCode, Option<SchoolCode>),
        snaps: impl IntoIterator<Item = (&'a Meta, &'a SpaceCount)>,
        baseline: NaiveDate,
    ) -> Summary {
        let mut ordered: Vec<(&Meta, &SpaceCount)> = snaps.into_iter().collect();
        ordered.sort_by_key(|(m, s)| (s.as_of, m.log_index));
        let mut out = Summary::default();
        for (m, s) in ordered {
            out.push(subject, m, s, baseline);
        }
        out
    }

    /// Extends the summary with a snapshot later in the log than every one it holds. False
    /// (and nothing changed) when the snapshot is dated before the latest one: the caller
    /// rebuilds the subject with [`Summary::of`].
    pub(crate) fn extend(
        &mut self,
        subject: (RegionCode, Option<SchoolCode>),
        m: &Meta,
        s: &SpaceCount,
        baseline: NaiveDate,
    ) -> bool {
        if self.latest.as_ref().is_some_and(|(d, _)| s.as_of < *d) {
            return false;
        }
        self.push(subject, m, s, baseline);
        true
    }

    /// One step of the walk: `s` is last in `(as_of, log index)` order so far.
    fn push(
        &mut self,
        (region, school): (RegionCode, Option<SchoolCode>),
        m: &Meta,
        s: &SpaceCount,
        baseline: NaiveDate,
    ) {
        for (k, v) in s.spaces.iter() {
            let i = k.index();
            if let Some((d, pv)) = self.best[i]
                && d < s.as_of
                && v < pv
            {
                self.decreases.push(Flag::Decrease {
                    region,
                    school,
                    kind: k,
                    before: (d, pv),
                    after: (s.as_of, v),
                    source: m.source.clone(),
                });
            }
            self.best[i] = Some((s.as_of, v));
            if s.as_of <= baseline {
                self.base[i] = Some((s.as_of, v));
            }
        }
        for (k, v) in s.real_name.iter().flat_map(SpaceCounts::iter) {
            self.real[k.index()] = Some((s.as_of, v));
        }
        if let Some(p) = s.population {
            self.pop = Some((s.as_of, p));
        }
        match &mut self.latest {
            Some((d, sources)) if *d == s.as_of => {
                if let Err(at) = sources.binary_search(&m.source) {
                    sources.insert(at, m.source.clone());
                }
            }
            latest => {
                if let Some((d, sources)) = latest.take()
                    && sources.len() > 1
                {
                    self.conflicts.push(Flag::Conflict {
                        region,
                        school,
                        as_of: d,
                        sources,
                    });
                }
                *latest = Some((s.as_of, vec![m.source.clone()]));
            }
        }
        self.snapshots += 1;
    }

    /// True when no snapshot is held (every one withdrawn, or none stored).
    pub(crate) fn is_empty(&self) -> bool {
        self.snapshots == 0
    }

    /// The log index of the subject's newest stored snapshot (see the field).
    pub(crate) fn newest(&self) -> Option<u64> {
        self.newest
    }

    /// Records that the subject's newest stored snapshot is at `log_index`.
    pub(crate) fn set_newest(&mut self, log_index: Option<u64>) {
        self.newest = log_index;
    }

    /// The subject's merged figures.
    pub(crate) fn figures(&self) -> Figures {
        let mut f = Figures::default();
        for k in SpaceKind::ALL {
            let i = k.index();
            f.spaces.set(k, self.best[i].map(|b| b.1));
            f.baseline.set(k, self.base[i].map(|b| b.1));
            f.real_name.set(k, self.real[i].map(|b| b.1));
        }
        f.population = self.pop.map(|p| p.1).unwrap_or_default();
        f
    }

    /// The subject's flags: decreases kind by kind (each along the dates), then conflicts
    /// by date.
    pub(crate) fn flags(&self, (region, school): (RegionCode, Option<SchoolCode>)) -> Vec<Flag> {
        let kind_of = |f: &Flag| match f {
            Flag::Decrease { kind, .. } => kind.index(),
            _ => usize::MAX,
        };
        let mut out = self.decreases.clone();
        // Stable: within a kind, the walk's order.
        out.sort_by_key(kind_of);
        out.extend(self.conflicts.iter().cloned());
        if let Some((d, sources)) = &self.latest
            && sources.len() > 1
        {
            out.push(Flag::Conflict {
                region,
                school,
                as_of: *d,
                sources: sources.clone(),
            });
        }
        out
    }
}

impl Summary {
    /// True when the subject raises any flag of its own (see [`Summary::flags`]).
    pub(crate) fn has_flags(&self) -> bool {
        !self.decreases.is_empty()
            || !self.conflicts.is_empty()
            || self.latest.as_ref().is_some_and(|(_, s)| s.len() > 1)
    }

    /// The stored form (see [`super::codec`]); the subject is the key's, not repeated.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        fn slots(o: &mut Out, slots: &[Option<Slot>; 8]) {
            let mask = (0..8)
                .filter(|i| slots[*i].is_some())
                .fold(0u8, |m, i| m | 1 << i);
            o.u8(mask);
            for (d, v) in slots.iter().flatten() {
                o.date(*d);
                o.uint(*v);
            }
        }
        fn sources(o: &mut Out, list: &[SourceId]) {
            o.uint(list.len() as u64);
            for s in list {
                o.source(s);
            }
        }
        let mut o = Out::new();
        o.u8(SUMMARY_FORMAT);
        o.uint(self.newest.map_or(0, |i| i.saturating_add(1)));
        o.uint(u64::from(self.snapshots));
        slots(&mut o, &self.best);
        slots(&mut o, &self.base);
        slots(&mut o, &self.real);
        match &self.pop {
            None => o.u8(0),
            Some((d, p)) => {
                o.u8(1);
                o.date(*d);
                o.population(p);
            }
        }
        match &self.latest {
            None => o.u8(0),
            Some((d, list)) => {
                o.u8(1);
                o.date(*d);
                sources(&mut o, list);
            }
        }
        o.uint(self.decreases.len() as u64);
        for f in &self.decreases {
            if let Flag::Decrease {
                kind,
                before,
                after,
                source,
                ..
            } = f
            {
                o.u8(kind.index() as u8);
                o.date(before.0);
                o.uint(before.1);
                o.date(after.0);
                o.uint(after.1);
                o.source(source);
            }
        }
        o.uint(self.conflicts.len() as u64);
        for f in &self.conflicts {
            if let Flag::Conflict {
                as_of, sources: s, ..
            } = f
            {
                o.date(*as_of);
                sources(&mut o, s);
            }
        }
        o.into_bytes()
    }

    /// Reads the stored form of `subject`'s summary (this version's only: one of layout 3
    /// would start no chain).
    pub(crate) fn from_bytes(
        subject: (RegionCode, Option<SchoolCode>),
        b: &[u8],
    ) -> Result<Summary, Damaged> {
        if b.first() == Some(&OLDER_SUMMARY_FORMAT) {
            return Err(Damaged(
                "a summary of an older hub (it says not where its chain starts) in views of layout 4; run `spacesync-hub rebuild`",
            ));
        }
        Summary::from_older_bytes(subject, b)
    }

    /// [`Summary::from_bytes`], and layout 3's form too (for `super::prepare` to convert).
    pub(crate) fn from_older_bytes(
        (region, school): (RegionCode, Option<SchoolCode>),
        b: &[u8],
    ) -> Result<Summary, Damaged> {
        fn slots(i: &mut In<'_>) -> Result<[Option<Slot>; 8], Damaged> {
            let mask = i.u8()?;
            let mut out = [None; 8];
            for (n, slot) in out.iter_mut().enumerate() {
                if mask & 1 << n != 0 {
                    *slot = Some((i.date()?, i.uint()?));
                }
            }
            Ok(out)
        }
        fn sources(i: &mut In<'_>) -> Result<Vec<SourceId>, Damaged> {
            let n = i.uint()?;
            // Each source takes at least 3 bytes: a count this large cannot be real.
            if n > 1 << 16 {
                return Err(Damaged("too many sources"));
            }
            (0..n).map(|_| i.source()).collect()
        }
        fn count(i: &mut In<'_>) -> Result<u64, Damaged> {
            let n = i.uint()?;
            if n > 1 << 24 {
                return Err(Damaged("too many flags"));
            }
            Ok(n)
        }
        let mut i = In::new(b);
        let newest = match i.u8()? {
            SUMMARY_FORMAT => i.uint()?.checked_sub(1),
            // Before chains (layout 3): converted at the hub's start (`super::prepare`).
            OLDER_SUMMARY_FORMAT => None,
            _ => return Err(Damaged("not a summary this version reads")),
        };
        let snapshots = i.u32()?;
        let best = slots(&mut i)?;
        let base = slots(&mut i)?;
        let real = slots(&mut i)?;
        let pop = if i.flag()? {
            Some((i.date()?, i.population()?))
        } else {
            None
        };
        let latest = if i.flag()? {
            Some((i.date()?, sources(&mut i)?))
        } else {
            None
        };
        let mut decreases = Vec::new();
        for _ in 0..count(&mut i)? {
            let kind = *SpaceKind::ALL
                .get(usize::from(i.u8()?))
                .ok_or(Damaged("not a space kind"))?;
            decreases.push(Flag::Decrease {
                region,
                school,
                kind,
                before: (i.date()?, i.uint()?),
                after: (i.date()?, i.uint()?),
                source: i.source()?,
            });
        }
        let mut conflicts = Vec::new();
        for _ in 0..count(&mut i)? {
            conflicts.push(Flag::Conflict {
                region,
                school,
                as_of: i.date()?,
                sources: sources(&mut i)?,
            });
        }
        i.end()?;
        Ok(Summary {
            best,
            base,
            real,
            pop,
            decreases,
            conflicts,
            latest,
            snapshots,
            newest,
        })
    }
}

/// First byte of a stored [`Summary`]: its encoding's version. 2 adds the newest
/// snapshot's log index (plus one; 0: none) right after it.
const SUMMARY_FORMAT: u8 = 2;
/// The version before, without the newest snapshot's log index.
const OLDER_SUMMARY_FORMAT: u8 = 1;

/// Known-values sum of one count: the total and how many parts know it, so a part can be
/// taken out again (a part that does not know the value leaves it unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Known {
    total: u64,
    parts: u32,
}

impl Known {
    fn change(&mut self, v: Option<u64>, add: bool) {
        if let Some(v) = v {
            if add {
                self.total = self.total.wrapping_add(v);
                self.parts += 1;
            } else {
                self.total = self.total.wrapping_sub(v);
                self.parts = self.parts.saturating_sub(1);
            }
        }
    }

    fn get(&self) -> Option<u64> {
        (self.parts > 0).then_some(self.total)
    }
}

/// The sum of a region's schools' figures, kept as schools change: [`Figures`] summed the
/// way the roll-up sums parts (a kind is known when any part knows it), with each school
/// removable again.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SchoolSum {
    spaces: [Known; 8],
    real_name: [Known; 8],
    baseline: [Known; 8],
    teachers: Known,
    students: Known,
    schools: Known,
    /// Schools with at least one live snapshot.
    members: u32,
}

impl SchoolSum {
    /// Adds (or, with `add` false, removes) one school's figures.
    pub(crate) fn change(&mut self, f: &Figures, add: bool) {
        for k in SpaceKind::ALL {
            let i = k.index();
            self.spaces[i].change(f.spaces.get(k), add);
            self.real_name[i].change(f.real_name.get(k), add);
            self.baseline[i].change(f.baseline.get(k), add);
        }
        self.teachers.change(f.population.teachers, add);
        self.students.change(f.population.students, add);
        self.schools.change(f.population.schools, add);
        if add {
            self.members += 1;
        } else {
            self.members = self.members.saturating_sub(1);
        }
    }

    /// True when no school is counted.
    pub(crate) fn is_empty(&self) -> bool {
        self.members == 0
    }

    /// The sum as figures.
    pub(crate) fn figures(&self) -> Figures {
        let mut f = Figures::default();
        for k in SpaceKind::ALL {
            let i = k.index();
            f.spaces.set(k, self.spaces[i].get());
            f.real_name.set(k, self.real_name[i].get());
            f.baseline.set(k, self.baseline[i].get());
        }
        f.population = Population {
            teachers: self.teachers.get(),
            students: self.students.get(),
            schools: self.schools.get(),
        };
        f
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;

    use super::*;

    fn subject() -> (RegionCode, Option<SchoolCode>) {
        (
            RegionCode::parse("440106").unwrap(),
            Some(SchoolCode::parse("4144010601").unwrap()),
        )
    }

    /// (day offset, source, counts per kind, real-name, population).
    type Snap = (i64, usize, Vec<Option<u64>>, bool, Option<(u64, u64)>);

    fn snap() -> impl Strategy<Value = Snap> {
        (
            -3..4i64,
            0..3usize,
            prop::collection::vec(prop::option::of(0..u64::MAX / 2), 8),
            any::<bool>(),
            prop::option::of((0..1_000u64, 0..1_000_000u64)),
        )
    }

    fn summary_of(snaps: &[Snap]) -> Summary {
        let base = NaiveDate::from_ymd_opt(2018, 10, 1).unwrap();
        let t: DateTime<Utc> = DateTime::from_timestamp(1_542_679_200, 0).unwrap();
        let sources = ["gd-a", "gd-b", "a-much-longer-source-name-0123456789"];
        let list: Vec<(Meta, SpaceCount)> = snaps
            .iter()
            .enumerate()
            .map(|(i, (day, source, counts, real, pop))| {
                let mut spaces = SpaceCounts::default();
                for (k, v) in SpaceKind::ALL.iter().zip(counts) {
                    spaces.set(*k, *v);
                }
                let meta = Meta {
                    log_index: i as u64 * 7,
                    received_at: t,
                    source: SourceId::parse(sources[*source]).unwrap(),
                    seq: i as u64 + 1,
                    recorded_at: t,
                    withdrawn_by: None,
                };
                let s = SpaceCount {
                    region: subject().0,
                    school: subject().1,
                    as_of: base + chrono::Duration::days(5 * day),
                    spaces,
                    real_name: real.then_some(spaces),
                    population: pop.map(|(t, s)| Population {
                        teachers: Some(t),
                        students: Some(s),
                        schools: None,
                    }),
                };
                (meta, s)
            })
            .collect();
        Summary::of(subject(), list.iter().map(|(m, s)| (m, s)), base)
    }

    proptest! {
        /// The stored form reads back as the summary, and no shorter or longer value reads.
        #[test]
        fn a_summary_reads_back_as_stored(snaps in prop::collection::vec(snap(), 0..12)) {
            let summary = summary_of(&snaps);
            let bytes = summary.to_bytes();
            prop_assert_eq!(Summary::from_bytes(subject(), &bytes), Ok(summary.clone()));
            for n in 0..bytes.len() {
                prop_assert!(Summary::from_bytes(subject(), &bytes[..n]).is_err());
            }
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(Summary::from_bytes(subject(), &longer).is_err());
        }
    }
}
