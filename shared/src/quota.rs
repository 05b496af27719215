//! Nomination quotas: the limits a campaign sets per recommending level ([`Quotas`]), and
//! [`QuotaLedger`], the one quota check — the agent runs it before signing, the hub again
//! on arrival, across all sources of a province.
//!
//! Records and campaigns both use these names and this module uses neither: a
//! recommendation is counted as a [`Nomination`] (`record.rs` says how one is made from a
//! `Recommendation`), and the campaign file only holds the [`Quotas`].

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::region::{Level, RegionCode};

/// Limits on nominations by one recommender. `None` means no limit is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Most schools one recommender of this level may nominate.
    pub schools: Option<u32>,
    /// Most regions one recommender of this level may nominate.
    pub regions: Option<u32>,
}

/// Quotas per recommending level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// A county/district recommends at most …
    #[serde(default)]
    pub county: Quota,
    /// A city recommends at most …
    #[serde(default)]
    pub city: Quota,
    /// A province selects at most …
    #[serde(default)]
    pub province: Quota,
}

impl Quotas {
    /// The quota that applies to recommenders of `level`.
    pub fn for_level(&self, level: Level) -> &Quota {
        match level {
            Level::County => &self.county,
            Level::City => &self.city,
            Level::Province => &self.province,
        }
    }
}

/// What a nomination counts against: schools or regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NomineeType {
    /// A school nominee.
    School,
    /// A region nominee.
    Region,
}

impl NomineeType {
    /// `school` or `region`.
    pub fn as_str(self) -> &'static str {
        match self {
            NomineeType::School => "school",
            NomineeType::Region => "region",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            NomineeType::School => "schools",
            NomineeType::Region => "regions",
        }
    }
}

/// A nomination that would exceed its recommender's quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaViolation {
    /// Level of the recommender.
    pub level: Level,
    /// The recommender.
    pub by: RegionCode,
    /// Schools or regions.
    pub nominee_type: NomineeType,
    /// The nominee refused.
    pub nominee: String,
    /// The quota.
    pub limit: u32,
    /// Nominees already counted against the quota, in the order they were counted.
    pub counted: Vec<String>,
}

impl fmt::Display for QuotaViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "quota exceeded: a {} recommends at most {} {}; {} has already nominated {} ({}), so {} cannot be added",
            self.level,
            self.limit,
            self.nominee_type.plural(),
            self.by,
            self.counted.len(),
            self.counted.join(", "),
            self.nominee
        )
    }
}

/// One nomination as a quota counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nomination {
    /// Level of the recommender.
    pub level: Level,
    /// The recommender.
    pub by: RegionCode,
    /// Schools or regions.
    pub nominee_type: NomineeType,
    /// The nominee's code.
    pub nominee: String,
}

type QuotaKey = (Level, RegionCode, NomineeType);

/// Nominations counted so far, per recommender. Renominating a nominee already
/// counted does not use more quota. The same ledger runs on the agent (before signing)
/// and on the hub (across all sources of a province), so both judge alike.
#[derive(Debug, Clone, Default)]
pub struct QuotaLedger {
    counted: HashMap<QuotaKey, Vec<String>>,
}

impl QuotaLedger {
    /// An empty ledger.
    pub fn new() -> QuotaLedger {
        QuotaLedger::default()
    }

    fn key(n: Nomination) -> (QuotaKey, String) {
        ((n.level, n.by, n.nominee_type), n.nominee)
    }

    /// Would `r` fit? Does not record it.
    pub fn check(&self, quotas: &Quotas, n: impl Into<Nomination>) -> Result<(), QuotaViolation> {
        let (key, code) = Self::key(n.into());
        let limit = match key.2 {
            NomineeType::School => quotas.for_level(key.0).schools,
            NomineeType::Region => quotas.for_level(key.0).regions,
        };
        let counted = self.counted.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        match limit {
            Some(limit) if !counted.contains(&code) && counted.len() >= limit as usize => {
                Err(QuotaViolation {
                    level: key.0,
                    by: key.1,
                    nominee_type: key.2,
                    nominee: code,
                    limit,
                    counted: counted.to_vec(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Checks `r` and, when it fits, counts it.
    pub fn add(&mut self, quotas: &Quotas, n: impl Into<Nomination>) -> Result<(), QuotaViolation> {
        let n = n.into();
        self.check(quotas, n.clone())?;
        let (key, code) = Self::key(n);
        let list = self.counted.entry(key).or_default();
        if !list.contains(&code) {
            list.push(code);
        }
        Ok(())
    }

    /// Stops counting `r` (after a withdrawal).
    pub fn remove(&mut self, n: impl Into<Nomination>) {
        let (key, code) = Self::key(n.into());
        if let Some(list) = self.counted.get_mut(&key) {
            list.retain(|c| c != &code);
        }
    }

    /// Distinct recommenders with at least one counted nomination.
    pub fn recommenders(&self) -> BTreeSet<RegionCode> {
        self.counted
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, _)| k.1)
            .collect()
    }
}
