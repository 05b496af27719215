//! The hub's own signed log entries and the records they carry: deadline extensions,
//! notice rule changes and registry changes ([`HubEntry`]), and the source records a
//! registry holds. Types only: `registry` and `views` both read them, and neither imports
//! the other for them.

use chrono::{DateTime, NaiveDate, Utc};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use spacesync_shared::campaign::{NoticeRule, RuleValue};
use spacesync_shared::keys::parse_public_key;
use spacesync_shared::{RegionCode, SourceId};

/// DSSE payload type of the hub's own log entries.
pub const HUB_ENTRY_PAYLOAD_TYPE: &str = "application/vnd.spacesync.hub-entry+json";

/// An entry the hub itself signs and appends to the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum HubEntry {
    /// A deadline extension granted by an admin to one provincial unit.
    Extension(Extension),
    /// A source registered (`agents add`); see [`crate::registry`].
    SourceAdded(SourceAdded),
    /// A source's key rotated (`agents rotate`).
    KeyRotated(KeyRotated),
    /// A source revoked (`agents revoke`).
    SourceRevoked(SourceRevoked),
    /// The registry of a store from before registry changes were logged, written with the
    /// first change.
    RegistryBaseline(RegistryBaseline),
    /// A notice rule changed by an admin on the running hub (`notice-rules set`).
    NoticeRuleChanged(NoticeRuleChanged),
}

impl HubEntry {
    /// The hub's own seq of this entry.
    pub fn seq(&self) -> u64 {
        match self {
            HubEntry::Extension(x) => x.seq,
            HubEntry::SourceAdded(x) => x.seq,
            HubEntry::KeyRotated(x) => x.seq,
            HubEntry::SourceRevoked(x) => x.seq,
            HubEntry::RegistryBaseline(x) => x.seq,
            HubEntry::NoticeRuleChanged(x) => x.seq,
        }
    }
}

/// Log entry: a notice rule the campaign file lets an admin change (`[lagging]
/// adjustable`) was changed. From this log position on, bulletins and notices are computed
/// with `new` (until a later change); a bulletin checked at an earlier checkpoint is
/// recomputed without it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticeRuleChanged {
    /// The hub's own seq for this entry.
    pub seq: u64,
    /// Which setting.
    pub setting: NoticeRule,
    /// Its value before (in force when the change was made).
    pub old: RuleValue,
    /// Its value from this entry on.
    pub new: RuleValue,
    /// The id of the admin token that made it ([`crate::auth::token_id`]); absent when it
    /// was made on the stopped store by whoever holds the data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// When (hub clock).
    pub at: DateTime<Utc>,
}

/// A deadline extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    /// The hub's own seq for this entry.
    pub seq: u64,
    /// The provincial unit (or region) granted the extension.
    pub region: RegionCode,
    /// The milestone id.
    pub milestone: String,
    /// New last day (inclusive, campaign time zone).
    pub until: NaiveDate,
    /// Why it was granted.
    pub reason: String,
    /// When it was granted (hub clock).
    pub granted_at: DateTime<Utc>,
}

/// Whether a source may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceStatus {
    /// Entries are accepted.
    Active,
    /// Everything from it is refused.
    Revoked,
}

/// One key of a source and the seqs it signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceKey {
    /// `ed25519:<base64>`.
    pub key: String,
    /// First seq this key signs.
    pub from_seq: u64,
    /// When it was registered.
    pub added_at: DateTime<Utc>,
}

/// A registered source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// Its id.
    pub id: SourceId,
    /// The region it may report on.
    pub scope: RegionCode,
    /// Active or revoked.
    pub status: SourceStatus,
    /// Keys in rotation order; the last applies from its `from_seq` on.
    pub keys: Vec<SourceKey>,
    /// When it was added.
    pub added_at: DateTime<Utc>,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Log entry: a source was registered (`agents add`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceAdded {
    /// The hub's own seq for this entry.
    pub seq: u64,
    /// The source.
    pub source: SourceId,
    /// The region it may report on.
    pub scope: RegionCode,
    /// Its key line (`ed25519:<base64>`), signing from seq 1.
    pub key: String,
    /// When (hub clock).
    pub at: DateTime<Utc>,
}

/// Log entry: a source's key was rotated (`agents rotate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRotated {
    /// The hub's own seq for this entry.
    pub seq: u64,
    /// The source.
    pub source: SourceId,
    /// The new key line.
    pub key: String,
    /// First seq the new key signs; a registered key not yet in effect there is replaced.
    pub from_seq: u64,
    /// When (hub clock).
    pub at: DateTime<Utc>,
}

/// Log entry: a source was revoked (`agents revoke`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRevoked {
    /// The hub's own seq for this entry.
    pub seq: u64,
    /// The source.
    pub source: SourceId,
    /// Always true: the source is revoked from `at` on (kept explicit for readers of the log).
    pub revoked: bool,
    /// When (hub clock).
    pub at: DateTime<Utc>,
}

/// Log entry: the registry as it stood on a store whose sources were registered before
/// registry changes were logged (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryBaseline {
    /// The hub's own seq for this entry.
    pub seq: u64,
    /// Every source record, in id order.
    pub sources: Vec<SourceRecord>,
    /// When it was written (hub clock).
    pub at: DateTime<Utc>,
}

impl SourceRecord {
    /// The key line that signs `seq`.
    pub fn key_line_for(&self, seq: u64) -> Option<&str> {
        self.keys
            .iter()
            .rev()
            .find(|k| k.from_seq <= seq)
            .map(|k| k.key.as_str())
    }

    /// The key that signs `seq`, parsed.
    pub fn key_for(&self, seq: u64) -> Option<VerifyingKey> {
        self.key_line_for(seq)
            .and_then(|k| parse_public_key(k).ok())
    }

    /// The current key line.
    pub fn current_key(&self) -> Option<&str> {
        self.keys.last().map(|k| k.key.as_str())
    }

    /// True when the source was registered and not (yet) revoked at `at`.
    pub fn active_at(&self, at: DateTime<Utc>) -> bool {
        self.added_at <= at
            && match self.status {
                SourceStatus::Active => true,
                SourceStatus::Revoked => self.revoked_at.is_some_and(|r| r > at),
            }
    }
}
