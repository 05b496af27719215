//! The values the views hold and hand out: who sent an item ([`Meta`]), a subject's or a
//! region's merged [`Figures`] with their [`Coverage`], and the [`Flag`]s merging raises.
//! Their own module so that the views and the per-subject summaries share them without
//! importing each other.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use spacesync_shared::record::{Population, SpaceCounts, SpaceKind};
use spacesync_shared::region::SchoolCode;
use spacesync_shared::{RegionCode, SourceId};

/// Who sent an item and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Position in the log.
    pub log_index: u64,
    /// Hub receive time.
    pub received_at: DateTime<Utc>,
    /// The source.
    pub source: SourceId,
    /// The source's seq.
    pub seq: u64,
    /// Agent clock when recorded.
    pub recorded_at: DateTime<Utc>,
    /// Log index of the withdrawal that retracted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn_by: Option<u64>,
}

/// A flagged figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "flag", rename_all = "snake_case")]
pub enum Flag {
    /// A later snapshot reports fewer spaces than an earlier one.
    Decrease {
        /// Region of the subject.
        region: RegionCode,
        /// School, if the subject is a school.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        school: Option<SchoolCode>,
        /// Space kind.
        kind: SpaceKind,
        /// Earlier date and count.
        before: (NaiveDate, u64),
        /// Later date and count.
        after: (NaiveDate, u64),
        /// Source of the later snapshot.
        source: SourceId,
    },
    /// Two sources report the same subject for the same date; the later in the log wins.
    Conflict {
        /// Region of the subject.
        region: RegionCode,
        /// School, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        school: Option<SchoolCode>,
        /// The date.
        as_of: NaiveDate,
        /// The sources involved.
        sources: Vec<SourceId>,
    },
    /// A region's own total differs from the sum of its parts by more than 1 %.
    Discrepancy {
        /// The region.
        region: RegionCode,
        /// Space kind.
        kind: SpaceKind,
        /// Its own reported total.
        reported: u64,
        /// Sum of its schools and child regions.
        sum_of_parts: u64,
    },
}

/// Figures of one region (or the nation).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    /// Spaces per kind (missing kinds unknown).
    pub spaces: SpaceCounts,
    /// Real-name spaces per kind.
    pub real_name: SpaceCounts,
    /// Spaces per kind at the baseline date.
    pub baseline: SpaceCounts,
    /// Denominators.
    pub population: Population,
}

impl Figures {
    /// New spaces since the baseline, all kinds.
    pub fn new_spaces(&self) -> i64 {
        SpaceKind::ALL
            .iter()
            .map(|k| self.new_of(*k).unwrap_or(0))
            .sum()
    }

    /// New spaces of one kind.
    pub fn new_of(&self, k: SpaceKind) -> Option<i64> {
        let now = self.spaces.get(k)? as i64;
        Some(now - self.baseline.get(k).unwrap_or(0) as i64)
    }

    /// Coverage ratios (teachers, students, schools), where denominators are known.
    pub fn coverage(&self) -> Coverage {
        let ratio = |n: Option<u64>, d: Option<u64>| match (n, d) {
            (Some(n), Some(d)) if d > 0 => Some(n as f64 / d as f64),
            _ => None,
        };
        Coverage {
            teachers: ratio(
                self.spaces.get(SpaceKind::Teacher),
                self.population.teachers,
            ),
            students: ratio(
                self.spaces.get(SpaceKind::Student),
                self.population.students,
            ),
            schools: ratio(self.spaces.get(SpaceKind::School), self.population.schools),
        }
    }

    pub(crate) fn add(&mut self, other: &Figures) {
        fn add_counts(a: &mut SpaceCounts, b: &SpaceCounts) {
            for k in SpaceKind::ALL {
                if let Some(v) = b.get(k) {
                    a.set(k, Some(a.get(k).unwrap_or(0) + v));
                }
            }
        }
        add_counts(&mut self.spaces, &other.spaces);
        add_counts(&mut self.real_name, &other.real_name);
        add_counts(&mut self.baseline, &other.baseline);
        let add = |a: &mut Option<u64>, b: Option<u64>| {
            if let Some(b) = b {
                *a = Some(a.unwrap_or(0) + b);
            }
        };
        add(&mut self.population.teachers, other.population.teachers);
        add(&mut self.population.students, other.population.students);
        add(&mut self.population.schools, other.population.schools);
    }
}

/// Coverage ratios in 0‥1 (can exceed 1 when platforms over-report).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// Teachers with a personal space / teachers.
    pub teachers: Option<f64>,
    /// Students with a personal space / students.
    pub students: Option<f64>,
    /// Schools with an institution space / schools.
    pub schools: Option<f64>,
}
