//! Notices to lagging regions: raised from rules on the hub's clock, deduplicated (one per
//! rule, subject and period), stopped as soon as the cause is fixed, escalated to the level
//! above after a missed deadline, delivered to the province's agents (pulled with signed
//! requests, acknowledged) and to webhooks (signed, retried with backoff), with
//! delivery and acknowledgement tracked.
//!
//! Webhook URLs are secrets (they often carry `?apikey=`). Outside the `admin` role they
//! appear only as their [`webhook_id`] — scheme and host, then a short hash of the whole
//! URL, e.g. `https://ministry.example/… (3f9a1c2b)` — in the notices API, bulletins, the
//! dashboard and every log line. Delivery records are keyed by that id; the URL is kept
//! beside it in the store (for admins) and never enters a bulletin.
//!
//! Rules:
//! - `milestone_due_7d`, `milestone_due_3d` (from the campaign's `remind_days`): a
//!   deliverable not yet submitted, that many days or fewer before its deadline — only the
//!   tightest reminder that applies, so a unit that appears at T−2 gets the 3-day one;
//! - `milestone_overdue`: the deadline passed and nothing was submitted;
//! - `milestone_escalated`: still nothing `escalate_after_days` later; addressed to the
//!   level above (the ministry, for a provincial unit);
//! - `behind_pace`: new spaces below the campaign's `behind` share, once per bulletin period;
//! - `quota_violation`: once per nomination over quota;
//! - `plan_incomplete`: once per implementation plan submission that breaks the plan rules;
//! - `source_silent`: once per silence of a source.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use spacesync_shared::campaign::Campaign;
use spacesync_shared::dsse::Digest;
use spacesync_shared::wire::{Notice, NoticeFacts};
use spacesync_shared::{RegionCode, SourceId};

use crate::assessment::{BulletinNotice, BulletinWebhook, MilestoneCell, PaceClass};
use crate::auth::Role;
use crate::registry::{SourceRecord, SourceStatus};
use crate::store::{Store, StoreError, WriteBatch};
use crate::tracking::{self, MilestoneStatus};
use crate::views::{Views, region_name};
use crate::wording::Lang;
use crate::wording::notices as words;

const NOTICE_PREFIX: &[u8] = b"ntc/";

/// How many notice writes were committed (u64, big-endian; absent = 0): every write of
/// `ntc/` keys bumps it in the same commit, so a replica knows with one read whether its
/// notices are stale — the store's head moves with every ingest batch, this only with
/// notices.
const VERSION_KEY: &[u8] = b"meta/notices-version";

fn read_version(store: &dyn Store) -> Result<u64, StoreError> {
    Ok(store
        .get(VERSION_KEY)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes))
}

fn notice_key(id: u64) -> Vec<u8> {
    [NOTICE_PREFIX, &id.to_be_bytes()].concat()
}

/// Delivery of one notice to one webhook.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// The URL delivered to: stored for the `admin` role only, never shown to anyone else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// When it was accepted (2xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
    /// The last failure (with the URL replaced by the webhook's id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl std::fmt::Debug for WebhookDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookDelivery")
            .field("url", &self.url.as_deref().map(webhook_id))
            .field("attempts", &self.attempts)
            .field("delivered_at", &self.delivered_at)
            .field("last_error", &self.last_error)
            .finish()
    }
}

impl WebhookDelivery {
    /// As the API and bulletins show it; the URL only when `show_url` (the `admin` role).
    fn view(&self, show_url: bool) -> WebhookView {
        WebhookView {
            attempts: self.attempts,
            delivered_at: self.delivered_at,
            last_error: self.last_error.clone(),
            url: self.url.clone().filter(|_| show_url),
        }
    }
}

/// A webhook delivery as the API and bulletins show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookView {
    /// Attempts made.
    pub attempts: u32,
    /// When it was accepted (2xx).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
    /// The last failure (URL replaced by the webhook's id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The URL: for the `admin` role only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A notice with its delivery state, as the API, the dashboard and bulletins show it.
/// Its structured facts (`milestone`, `due`, `days_left`, …) sit beside the prose, as
/// they do in agent pulls and webhook bodies.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NoticeView {
    /// Its number.
    pub id: u64,
    /// The rule that raised it.
    pub rule: String,
    /// The region it is about.
    pub subject: RegionCode,
    /// The region it is addressed to.
    pub addressee: RegionCode,
    /// Also sent to the level above.
    pub escalated: bool,
    /// When it was raised.
    pub created: DateTime<Utc>,
    /// The deadline it is about.
    pub deadline: Option<NaiveDate>,
    /// Chinese text.
    pub text: String,
    /// English text.
    pub text_en: String,
    /// `pending`, `delivered` or `acknowledged`.
    pub state: &'static str,
    /// First delivery (agent fetch or webhook 2xx).
    pub delivered: Option<DateTime<Utc>>,
    /// First acknowledgement.
    pub acknowledged: Option<DateTime<Utc>>,
    /// Agents that fetched it.
    pub fetched_by: Vec<SourceId>,
    /// Agents that acknowledged it.
    pub acked_by: Vec<SourceId>,
    /// Webhook deliveries by webhook id.
    pub webhooks: BTreeMap<String, WebhookView>,
    /// The facts the texts state.
    #[serde(flatten)]
    pub facts: NoticeFacts,
}

/// A notice and its delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeRecord {
    /// The notice as agents receive it.
    pub notice: Notice,
    /// Deduplication key: rule, subject and period.
    pub key: String,
    /// Escalated to the level above (the ministry for a provincial unit).
    #[serde(default)]
    pub escalated: bool,
    /// Agents that fetched it, and when.
    #[serde(default)]
    pub fetched: BTreeMap<SourceId, DateTime<Utc>>,
    /// Agents that acknowledged it, and when.
    #[serde(default)]
    pub acked: BTreeMap<SourceId, DateTime<Utc>>,
    /// Webhook deliveries by [`webhook_id`] (never by URL: this map goes into bulletins).
    #[serde(default)]
    pub webhooks: BTreeMap<String, WebhookDelivery>,
}

impl NoticeRecord {
    /// `pending`, `delivered` (fetched by an agent or accepted by a webhook) or `acknowledged`.
    pub fn state(&self) -> &'static str {
        if !self.acked.is_empty() {
            "acknowledged"
        } else if !self.fetched.is_empty()
            || self.webhooks.values().any(|w| w.delivered_at.is_some())
        {
            "delivered"
        } else {
            "pending"
        }
    }

    /// The record as the API, the dashboard and bulletins show it. Webhooks are named by
    /// their id; their URLs are included only when `show_urls` (the `admin` role, never
    /// bulletins).
    pub fn view(&self, show_urls: bool) -> NoticeView {
        NoticeView {
            id: self.notice.id,
            rule: self.notice.rule.clone(),
            subject: self.notice.subject,
            addressee: self.notice.addressee,
            escalated: self.escalated,
            created: self.notice.created_at,
            deadline: self.notice.deadline,
            text: self.notice.text.clone(),
            text_en: self.notice.text_en.clone(),
            state: self.state(),
            delivered: self
                .fetched
                .values()
                .copied()
                .chain(self.webhooks.values().filter_map(|w| w.delivered_at))
                .min(),
            acknowledged: self.acked.values().min().copied(),
            fetched_by: self.fetched.keys().cloned().collect(),
            acked_by: self.acked.keys().cloned().collect(),
            webhooks: self
                .webhooks
                .iter()
                .map(|(id, d)| (id.clone(), d.view(show_urls)))
                .collect(),
            facts: self.notice.facts.clone(),
        }
    }
}

/// A notice as a bulletin's notice log holds it: the view every reader gets (webhooks by
/// id, no URL), member for member the same JSON.
impl From<NoticeView> for BulletinNotice {
    fn from(v: NoticeView) -> BulletinNotice {
        BulletinNotice {
            id: v.id,
            rule: v.rule,
            subject: Some(v.subject),
            addressee: Some(v.addressee),
            escalated: v.escalated,
            created: Some(v.created),
            deadline: v.deadline,
            text: v.text,
            text_en: v.text_en,
            state: v.state.to_string(),
            delivered: v.delivered,
            acknowledged: v.acknowledged,
            fetched_by: v.fetched_by,
            acked_by: v.acked_by,
            webhooks: v
                .webhooks
                .into_iter()
                .map(|(id, w)| {
                    let delivery = BulletinWebhook {
                        attempts: w.attempts,
                        delivered_at: w.delivered_at,
                        last_error: w.last_error,
                    };
                    (id, delivery)
                })
                .collect(),
            facts: v.facts,
        }
    }
}

/// Replaces webhook URLs in the notice log of a bulletin issued before webhooks were named
/// by [`webhook_id`] (new bulletins never hold a URL). Returns whether
/// anything was replaced; if so the copy says so in [`crate::bulletin::REDACTED_MEMBER`], since its
/// signature covers the original, which an admin token can fetch and verify.
pub fn redact_legacy_webhooks(doc: &mut Value) -> bool {
    let mut changed = false;
    for n in doc["notices"].as_array_mut().into_iter().flatten() {
        let Some(hooks) = n.get_mut("webhooks").and_then(Value::as_object_mut) else {
            continue;
        };
        if hooks.keys().all(|k| is_webhook_id(k)) {
            continue;
        }
        *hooks = std::mem::take(hooks)
            .into_iter()
            .map(|(k, mut v)| {
                if is_webhook_id(&k) {
                    return (k, v);
                }
                if let Some(e) = v.get("last_error").and_then(Value::as_str) {
                    v["last_error"] = json!(scrub_url(e, &k));
                }
                (webhook_id(&k), v)
            })
            .collect();
        changed = true;
    }
    if changed && let Some(o) = doc.as_object_mut() {
        o.insert(
            crate::bulletin::REDACTED_MEMBER.into(),
            json!("webhook URLs replaced by their ids for this reader; the signature covers the original, which an admin token can fetch and verify"),
        );
    }
    changed
}

/// A notice a rule wants raised.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Deduplication key.
    pub key: String,
    /// Rule id.
    pub rule: &'static str,
    /// Region concerned.
    pub subject: RegionCode,
    /// Region addressed.
    pub addressee: RegionCode,
    /// Also goes to the level above.
    pub escalated: bool,
    /// Deadline concerned.
    pub deadline: Option<NaiveDate>,
    /// Chinese text.
    pub text: String,
    /// English text.
    pub text_en: String,
    /// The facts the texts state, for programs.
    pub facts: NoticeFacts,
}

/// The facts of a notice about one milestone cell: its id, the deadline in force, and
/// the days left or late.
fn milestone_facts(id: &str, cell: &MilestoneCell) -> NoticeFacts {
    NoticeFacts {
        milestone: Some(id.to_string()),
        due: Some(cell.due),
        days_left: cell.days_left,
        days_late: cell.days_late,
        ..NoticeFacts::default()
    }
}

fn unit_name(code: RegionCode, lang: Lang) -> String {
    match lang {
        Lang::Zh => region_name(code).unwrap_or_else(|| code.to_string()),
        Lang::En => spacesync_shared::region::unit(code)
            .filter(|u| u.code == code.as_u32())
            .map(|u| u.name_en.to_string())
            .unwrap_or_else(|| code.to_string()),
    }
}

/// Every notice the rules want at `now`. Pure: the book deduplicates. Deadlines, pace,
/// quotas and plans come from the same [`tracking::assess`] as the bulletins.
pub fn candidates(
    campaign: &Campaign,
    views: &Views,
    registry: &[SourceRecord],
    now: DateTime<Utc>,
) -> Vec<Candidate> {
    // Reminder days and escalation as changed live (the assessment applies them too).
    let rules = views.rules(campaign);
    let campaign = rules.as_ref();
    let assessment = tracking::assess(campaign, views, registry, now);
    let mut out = Vec::new();
    let today = campaign.local_date(now);
    let period = period_index(campaign, now);
    for status in &assessment.provinces {
        let unit = status.code;
        let (zh, en) = (unit_name(unit, Lang::Zh), unit_name(unit, Lang::En));
        let names = words::Unit { zh: &zh, en: &en };
        for def in campaign.deliverables() {
            let Some(cell) = status.milestones.get(&def.id) else {
                continue;
            };
            let title = words::Deliverable {
                zh: &def.title,
                en: &def.title_en,
            };
            let due = cell.due;
            match cell.status {
                MilestoneStatus::NotDue | MilestoneStatus::DueSoon => {
                    let left = cell.days_left.unwrap_or(i64::MAX);
                    let reminder = campaign
                        .lagging
                        .remind_days
                        .iter()
                        .copied()
                        .filter(|r| left >= 0 && left <= i64::from(*r))
                        .min();
                    if let Some(r) = reminder {
                        let rule = match r {
                            7 => "milestone_due_7d",
                            3 => "milestone_due_3d",
                            _ => "milestone_due",
                        };
                        let (text, text_en) = words::reminder(names, title, due, left);
                        out.push(Candidate {
                            key: format!("{rule}:{r}/{unit}/{}/{due}", def.id),
                            rule,
                            subject: unit,
                            addressee: unit,
                            escalated: false,
                            deadline: Some(due),
                            text,
                            text_en,
                            facts: milestone_facts(&def.id, cell),
                        });
                    }
                }
                MilestoneStatus::Missing => {
                    let overdue = cell.days_late.unwrap_or(1);
                    let after = campaign.lagging.escalate_after_days;
                    let (text, text_en) = words::overdue(names, title, due, overdue, after);
                    out.push(Candidate {
                        key: format!("milestone_overdue/{unit}/{}/{due}", def.id),
                        rule: "milestone_overdue",
                        subject: unit,
                        addressee: unit,
                        escalated: false,
                        deadline: Some(due),
                        text,
                        text_en,
                        facts: milestone_facts(&def.id, cell),
                    });
                    if overdue >= i64::from(after) {
                        let (text, text_en) = words::escalated(names, title, due, overdue);
                        out.push(Candidate {
                            key: format!("milestone_escalated/{unit}/{}/{due}", def.id),
                            rule: "milestone_escalated",
                            subject: unit,
                            addressee: unit.parent().unwrap_or(unit),
                            escalated: true,
                            deadline: Some(due),
                            text,
                            text_en,
                            facts: milestone_facts(&def.id, cell),
                        });
                    }
                }
                MilestoneStatus::OnTime | MilestoneStatus::Late => {}
            }
        }

        let p = &status.pace;
        if matches!(p.class, PaceClass::Behind | PaceClass::FarBehind) {
            let percent = p.ratio.unwrap_or(0.0) * 100.0;
            let expected = p.expected.unwrap_or(0);
            let left = (campaign.target.by - today).num_days();
            let facts = NoticeFacts {
                due: Some(campaign.target.by),
                days_left: (left >= 0).then_some(left),
                days_late: (left < 0).then_some(-left),
                target: p.target,
                expected: p.expected,
                reached: Some(p.actual),
                ..NoticeFacts::default()
            };
            let (text, text_en) =
                words::behind_pace(names, p.actual, expected, percent, campaign.target.by);
            out.push(Candidate {
                key: format!("behind_pace/{unit}/{period}"),
                rule: "behind_pace",
                subject: unit,
                addressee: unit,
                escalated: false,
                deadline: Some(campaign.target.by),
                text,
                text_en,
                facts,
            });
        }
    }
    for v in &assessment.quota_violations {
        let unit = v.by.province();
        let (zh, en) = (unit_name(unit, Lang::Zh), unit_name(unit, Lang::En));
        let by = v.by.to_string();
        let counted = v.counted.len();
        let facts = NoticeFacts {
            nominated_by: Some(by.clone()),
            nominee: Some(v.nominee.clone()),
            limit: Some(v.limit),
            count: u32::try_from(counted).ok(),
            ..NoticeFacts::default()
        };
        let (text, text_en) = words::quota_exceeded(
            words::Unit { zh: &zh, en: &en },
            &by,
            &v.nominee,
            v.limit,
            counted,
        );
        out.push(Candidate {
            key: format!("quota_violation/{by}/{}", v.nominee),
            rule: "quota_violation",
            subject: v.by,
            addressee: unit,
            escalated: false,
            deadline: None,
            text,
            text_en,
            facts,
        });
    }
    let milestones = views.milestones();
    for item in &assessment.plan_problems {
        let code = item.code;
        let plan_id = tracking::PLAN_MILESTONE.to_string();
        let latest = milestones
            .get(&(code, plan_id.clone()))
            .into_iter()
            .flatten()
            .map(|(m, _)| m.log_index)
            .max()
            .unwrap_or(0);
        let mut facts = match assessment
            .unit(code)
            .and_then(|u| u.milestones.get(&plan_id))
        {
            Some(cell) => milestone_facts(&plan_id, cell),
            // No cell (the campaign's plan milestone is not a deliverable): its deadline
            // as the campaign file states it.
            None => NoticeFacts {
                milestone: Some(plan_id.clone()),
                due: campaign.milestone(&plan_id).map(|m| m.due),
                ..NoticeFacts::default()
            },
        };
        facts.problems = item.problems.clone();
        let (zh, en) = (unit_name(code, Lang::Zh), unit_name(code, Lang::En));
        let (text, text_en) = words::plan_incomplete(
            words::Unit { zh: &zh, en: &en },
            &crate::wording::bulletin::plan_problems(Lang::Zh, &item.problems),
            &crate::wording::bulletin::plan_problems(Lang::En, &item.problems),
        );
        out.push(Candidate {
            key: format!("plan_incomplete/{code}/{latest}"),
            rule: "plan_incomplete",
            subject: code,
            addressee: code,
            escalated: false,
            deadline: None,
            text,
            text_en,
            facts,
        });
    }
    for r in registry
        .iter()
        .filter(|r| r.status == SourceStatus::Active && r.added_at <= now)
    {
        if tracking::source_is_silent(campaign, views, r, now) {
            let last = views.sources().get(&r.id).and_then(|a| a.last_received);
            let since = last.unwrap_or(r.added_at);
            let days = (now - since).num_days();
            let unit = r.scope.province();
            let (zh, en) = (unit_name(unit, Lang::Zh), unit_name(unit, Lang::En));
            let (text, text_en) =
                words::source_silent(words::Unit { zh: &zh, en: &en }, r.id.as_str(), days);
            out.push(Candidate {
                key: format!("source_silent/{}/{}", r.id, since.timestamp()),
                rule: "source_silent",
                subject: r.scope,
                addressee: unit,
                escalated: false,
                deadline: None,
                text,
                text_en,
                facts: NoticeFacts {
                    source: Some(r.id.clone()),
                    last_seen: last,
                    days_silent: Some(days),
                    ..NoticeFacts::default()
                },
            });
        }
    }
    out
}

/// The bulletin period `now` falls in (0 before the first bulletin).
fn period_index(campaign: &Campaign, now: DateTime<Utc>) -> i64 {
    let first = crate::bulletin::slot_time(campaign, 0);
    if now < first {
        return 0;
    }
    (now - first).num_days() / i64::from(campaign.bulletins.every_days.max(1)) + 1
}

/// A configured webhook.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Where notices are POSTed. A secret: shown only to `admin`, see [`webhook_id`].
    pub url: String,
    /// Only notices addressed inside this region (absent: all).
    #[serde(default)]
    pub scope: Option<RegionCode>,
}

impl Webhook {
    /// The name this webhook goes by everywhere but to admins (see [`webhook_id`]).
    pub fn id(&self) -> String {
        webhook_id(&self.url)
    }
}

/// Redacted, so that a webhook printed with `{:?}` (in a config dump, a panic) shows no
/// secret.
impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id())
            .field("scope", &self.scope)
            .finish()
    }
}

/// The one redacted form of a webhook URL: scheme, host and port, an ellipsis for the
/// path and query (where secrets such as `?apikey=` live), and the first 8 hex digits of
/// a domain-separated SHA-256 of the whole URL, which tells two webhooks on one host
/// apart and stays the same when hub.toml lists them in another order:
/// `https://ministry.example/… (3f9a1c2b)`. A URL that does not parse is
/// `webhook (3f9a1c2b)`. User info (`user:password@`) is never shown.
pub fn webhook_id(url: &str) -> String {
    let hash = Digest::of(format!("spacesync-webhook-id\n{url}").as_bytes()).to_hex();
    let hash = &hash[..8];
    match reqwest::Url::parse(url) {
        Ok(u) if u.host_str().is_some() => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!(
                "{}://{}{port}/… ({hash})",
                u.scheme(),
                u.host_str().unwrap_or_default()
            )
        }
        _ => format!("webhook ({hash})"),
    }
}

/// `text` with `url` (as written, and as the HTTP client normalises it) replaced by its
/// [`webhook_id`]: for error messages, which may quote the URL.
pub fn scrub_url(text: &str, url: &str) -> String {
    let id = webhook_id(url);
    let mut out = text.replace(url, &id);
    if let Ok(u) = reqwest::Url::parse(url) {
        out = out.replace(u.as_str(), &id);
    }
    out
}

/// Whether `s` is already a [`webhook_id`] (ends in ` (` 8 hex digits `)` after `/…` or
/// `webhook`), as opposed to a URL.
pub fn is_webhook_id(s: &str) -> bool {
    let Some(rest) = s.strip_suffix(')') else {
        return false;
    };
    let Some((head, hash)) = rest.rsplit_once(" (") else {
        return false;
    };
    hash.len() == 8
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
        && (head == "webhook" || head.ends_with("/…"))
        && !head.contains(['?', '@', ' '])
}

/// Every notice raised, with delivery state, kept in memory and mirrored to the store.
///
/// Replicas on one database each keep a book: every change is written as a merge into the
/// stored record (the union of fetches and acknowledgements, the furthest webhook
/// delivery) committed at the store's head ([`Store::commit`]), so a change another
/// replica made meanwhile is never overwritten; [`NoticeBook::refresh`] reads the stored
/// notices again when a notice write was committed since they were read.
#[derive(Default)]
pub struct NoticeBook {
    records: Mutex<Vec<NoticeRecord>>,
    /// Next webhook attempt per (notice id, webhook id), in real time.
    retry_at: Mutex<HashMap<(u64, String), Instant>>,
    /// The notices version ([`VERSION_KEY`]) the records were read at (with the records'
    /// lock held); `u64::MAX` forces the next refresh to read them.
    seen_version: AtomicU64,
}

/// How often a notice write whose commit found the head moved merges and tries again.
const MAX_MERGE_RETRIES: u32 = 64;

/// Every stored notice.
fn load_records(store: &dyn Store) -> Result<Vec<NoticeRecord>, StoreError> {
    let mut records = Vec::new();
    for r in store.scan(NOTICE_PREFIX) {
        let (k, v) = r?;
        let mut rec: NoticeRecord =
            serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: format!("ntc/{:?}", crate::store::keys::tail_u64(&k)),
                message: e.to_string(),
            })?;
        rekey_legacy_deliveries(&mut rec);
        records.push(rec);
    }
    Ok(records)
}

/// `mine` written over `stored` without losing what `stored` knows: fetches and
/// acknowledgements of both (the earlier time), per webhook the delivery that got further.
fn merge(stored: NoticeRecord, mine: &NoticeRecord) -> NoticeRecord {
    let mut out = stored;
    out.escalated |= mine.escalated;
    for (s, t) in &mine.fetched {
        let e = out.fetched.entry(s.clone()).or_insert(*t);
        *e = (*e).min(*t);
    }
    for (s, t) in &mine.acked {
        let e = out.acked.entry(s.clone()).or_insert(*t);
        *e = (*e).min(*t);
    }
    for (id, d) in &mine.webhooks {
        match out.webhooks.get(id) {
            Some(theirs)
                if theirs.delivered_at.is_some()
                    || (d.delivered_at.is_none() && theirs.attempts >= d.attempts) => {}
            _ => {
                out.webhooks.insert(id.clone(), d.clone());
            }
        }
    }
    out
}

impl NoticeBook {
    /// Loads every stored notice.
    pub fn load(store: &dyn Store) -> Result<NoticeBook, StoreError> {
        let version = read_version(store)?;
        let records = load_records(store)?;
        Ok(NoticeBook {
            records: Mutex::new(records),
            retry_at: Mutex::new(HashMap::new()),
            seen_version: AtomicU64::new(version),
        })
    }

    /// Reads the stored notices again when a notice write was committed since they were
    /// read (by another replica: raised, delivered or acknowledged). One primary-key read
    /// when none was — ingest commits do not count.
    pub fn refresh(&self, store: &dyn Store) -> Result<(), StoreError> {
        let version = read_version(store)?;
        if self.seen_version.load(Ordering::SeqCst) == version {
            return Ok(());
        }
        let mut recs = self.lock();
        // Read after the version: at least as new as it.
        *recs = load_records(store)?;
        self.seen_version.store(version, Ordering::SeqCst);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<NoticeRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `recs`, each merged into its stored record, in one commit at the store's
    /// head, after `fence` allowed it at that head (false: nothing is written, and this
    /// returns false). Called with the records' lock held.
    fn persist_fenced(
        &self,
        store: &dyn Store,
        recs: &[&NoticeRecord],
        fence: &dyn Fn(&dyn Store) -> Result<bool, StoreError>,
    ) -> Result<bool, StoreError> {
        let mut tries = 0;
        loop {
            let head = store.head()?;
            if !fence(store)? {
                return Ok(false);
            }
            let version = read_version(store)?;
            let mut b = WriteBatch::new();
            b.put(VERSION_KEY, (version + 1).to_be_bytes());
            for r in recs {
                let key = notice_key(r.notice.id);
                let merged = match store.get(&key)? {
                    Some(v) => match serde_json::from_slice::<NoticeRecord>(&v) {
                        Ok(mut stored) if stored.key == r.key => {
                            rekey_legacy_deliveries(&mut stored);
                            merge(stored, r)
                        }
                        // Another writer raised a different notice under this number:
                        // nothing is written; the book is read again before the next try.
                        Ok(_) => {
                            self.seen_version.store(u64::MAX, Ordering::SeqCst);
                            return Err(StoreError::Conflict {
                                expected: head,
                                found: head,
                            });
                        }
                        Err(_) => (*r).clone(),
                    },
                    None => (*r).clone(),
                };
                b.put(key, serde_json::to_vec(&merged).unwrap_or_default());
            }
            match store.commit(head, b) {
                Ok(_) => {
                    // The records in memory are the stored ones only if no other notice
                    // write was committed since they were read; otherwise the next refresh
                    // reads them.
                    let _ = self.seen_version.compare_exchange(
                        version,
                        version + 1,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                    return Ok(true);
                }
                Err(StoreError::Conflict { .. }) if tries < MAX_MERGE_RETRIES => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn persist(&self, store: &dyn Store, recs: &[&NoticeRecord]) -> Result<(), StoreError> {
        self.persist_fenced(store, recs, &|_| Ok(true)).map(drop)
    }

    /// Raises the candidates not raised before; returns the new notices.
    pub fn raise(
        &self,
        store: &dyn Store,
        cands: Vec<Candidate>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Notice>, StoreError> {
        self.raise_fenced(store, cands, now, &|_| Ok(true))
    }

    /// [`NoticeBook::raise`], by the holder of the scheduler lease: `fence` is checked at
    /// the head the notices are committed at (see [`crate::schedule`]); when it says the
    /// lease is lost, nothing is raised.
    pub fn raise_fenced(
        &self,
        store: &dyn Store,
        cands: Vec<Candidate>,
        now: DateTime<Utc>,
        fence: &dyn Fn(&dyn Store) -> Result<bool, StoreError>,
    ) -> Result<Vec<Notice>, StoreError> {
        self.refresh(store)?;
        let mut recs = self.lock();
        let mut fresh = Vec::new();
        for c in cands {
            if recs.iter().any(|r| r.key == c.key)
                || fresh.iter().any(|r: &NoticeRecord| r.key == c.key)
            {
                continue;
            }
            let id = recs.len() as u64 + fresh.len() as u64 + 1;
            fresh.push(NoticeRecord {
                notice: Notice {
                    id,
                    rule: c.rule.to_string(),
                    subject: c.subject,
                    addressee: c.addressee,
                    created_at: now,
                    deadline: c.deadline,
                    text: c.text,
                    text_en: c.text_en,
                    facts: c.facts,
                },
                key: c.key,
                escalated: c.escalated,
                fetched: BTreeMap::new(),
                acked: BTreeMap::new(),
                webhooks: BTreeMap::new(),
            });
        }
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        if !self.persist_fenced(store, &fresh.iter().collect::<Vec<_>>(), fence)? {
            return Ok(Vec::new());
        }
        for r in &fresh {
            tracing::info!(id = r.notice.id, rule = %r.notice.rule, subject = %r.notice.subject, addressee = %r.notice.addressee, "Raised a notice.");
        }
        let out = fresh.iter().map(|r| r.notice.clone()).collect();
        recs.extend(fresh);
        Ok(out)
    }

    /// Notices for an agent of `scope` after `after`, marking them fetched by `source`.
    pub fn fetch(
        &self,
        store: &dyn Store,
        source: &SourceId,
        scope: RegionCode,
        after: u64,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<Notice>, StoreError> {
        let mut recs = self.lock();
        let mut out = Vec::new();
        let mut changed = Vec::new();
        for r in recs.iter_mut() {
            if r.notice.id <= after || !in_scope(r, scope) {
                continue;
            }
            if out.len() == limit {
                break;
            }
            out.push(r.notice.clone());
            if !r.fetched.contains_key(source) {
                r.fetched.insert(source.clone(), now);
                changed.push(r.notice.id);
            }
        }
        let to_store: Vec<&NoticeRecord> = recs
            .iter()
            .filter(|r| changed.contains(&r.notice.id))
            .collect();
        if !to_store.is_empty() {
            self.persist(store, &to_store)?;
        }
        Ok(out)
    }

    /// Records an agent's acknowledgement of every notice in its scope up to `through`.
    pub fn ack(
        &self,
        store: &dyn Store,
        source: &SourceId,
        scope: RegionCode,
        through: u64,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let mut recs = self.lock();
        let mut changed = Vec::new();
        for r in recs.iter_mut() {
            if r.notice.id <= through && in_scope(r, scope) && !r.acked.contains_key(source) {
                r.acked.insert(source.clone(), now);
                changed.push(r.notice.id);
            }
        }
        let to_store: Vec<&NoticeRecord> = recs
            .iter()
            .filter(|r| changed.contains(&r.notice.id))
            .collect();
        if !to_store.is_empty() {
            self.persist(store, &to_store)?;
        }
        Ok(changed.len())
    }

    /// Every notice a role may read, newest first. Webhook URLs are included for
    /// the `admin` role only.
    pub fn list(&self, role: Role) -> Vec<NoticeView> {
        let recs = self.lock();
        recs.iter()
            .rev()
            .filter(|r| role.can_read(r.notice.subject) || role.can_read(r.notice.addressee))
            .map(|r| r.view(role == Role::Admin))
            .collect()
    }

    /// The notice log with delivery state, oldest first (for bulletins, which every reader
    /// gets: webhooks by id only).
    pub fn log(&self) -> Vec<BulletinNotice> {
        self.lock()
            .iter()
            .map(|r| BulletinNotice::from(r.view(false)))
            .collect()
    }

    /// Webhook deliveries due now: (notice, webhook), oldest first.
    pub fn due_webhooks(&self, hooks: &[Webhook]) -> Vec<(Notice, Webhook)> {
        let recs = self.lock();
        let retry = self.retry_at.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let ids: Vec<String> = hooks.iter().map(Webhook::id).collect();
        let mut out = Vec::new();
        for r in recs.iter() {
            for (h, id) in hooks.iter().zip(&ids) {
                if h.scope.is_some_and(|s| !in_scope(r, s)) {
                    continue;
                }
                if r.webhooks.get(id).is_some_and(|d| d.delivered_at.is_some()) {
                    continue;
                }
                if retry
                    .get(&(r.notice.id, id.clone()))
                    .is_some_and(|t| *t > now)
                {
                    continue;
                }
                out.push((r.notice.clone(), h.clone()));
            }
        }
        out
    }

    /// Records a webhook attempt; on failure schedules the next one with capped exponential
    /// backoff and full jitter. The URL is removed from the error before it is kept or
    /// logged.
    pub fn record_webhook(
        &self,
        store: &dyn Store,
        id: u64,
        hook: &Webhook,
        result: Result<(), String>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut recs = self.lock();
        let Some(r) = recs.iter_mut().find(|r| r.notice.id == id) else {
            return Ok(());
        };
        let webhook = hook.id();
        let result = result.map_err(|e| scrub_url(&e, &hook.url));
        let d = r.webhooks.entry(webhook.clone()).or_default();
        d.url = Some(hook.url.clone());
        d.attempts += 1;
        match result {
            Ok(()) => {
                d.delivered_at = Some(now);
                d.last_error = None;
            }
            Err(e) => {
                // The agents' retry policy: full jitter up to 1 s · 2^(attempt-1), at most 5 min.
                let delay = WEBHOOK_RETRY.delay(d.attempts.saturating_sub(1), random_u64(), None);
                tracing::warn!(id, webhook = %webhook, attempts = d.attempts, error = %e, delay_s = delay.as_secs_f64(), "Webhook delivery failed; will retry.");
                d.last_error = Some(e);
                self.retry_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((id, webhook), Instant::now() + delay);
            }
        }
        let rec = r.clone();
        drop(recs);
        self.persist(store, &[&rec])
    }
}

/// Full jitter: uniform in [0, max].
/// How failed webhook deliveries are retried: the same policy as the agents' pushes.
const WEBHOOK_RETRY: spacesync_shared::retry::Schedule = spacesync_shared::retry::Schedule {
    base: StdDuration::from_secs(1),
    cap: StdDuration::from_secs(300),
};

/// A random draw for the retry jitter; the longest delay if the system has no randomness.
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => u64::MAX,
    }
}

/// Records stored before webhooks were keyed by id had the URL as key: key them by id and
/// keep the URL beside it, so nothing shown from them carries the URL.
fn rekey_legacy_deliveries(rec: &mut NoticeRecord) {
    if rec.webhooks.values().all(|d| d.url.is_some()) {
        return;
    }
    rec.webhooks = std::mem::take(&mut rec.webhooks)
        .into_iter()
        .map(|(k, mut d)| match d.url {
            Some(_) => (k, d),
            None => {
                d.last_error = d.last_error.map(|e| scrub_url(&e, &k));
                d.url = Some(k.clone());
                (webhook_id(&k), d)
            }
        })
        .collect();
}

fn in_scope(r: &NoticeRecord, scope: RegionCode) -> bool {
    r.notice.addressee.is_within(scope) || r.notice.subject.is_within(scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(key: &str) -> Candidate {
        Candidate {
            key: key.into(),
            rule: "milestone_overdue",
            subject: RegionCode::parse("440000").unwrap(),
            addressee: RegionCode::parse("440000").unwrap(),
            escalated: false,
            deadline: None,
            text: "t".into(),
            text_en: "t".into(),
            facts: NoticeFacts::default(),
        }
    }

    #[test]
    fn webhook_ids_hide_the_url_and_legacy_records_are_rekeyed() {
        let url = "https://user:pw@hooks.example:8443/h/abc?apikey=SECRET";
        let id = webhook_id(url);
        assert!(id.starts_with("https://hooks.example:8443/… ("), "{id}");
        for secret in ["SECRET", "pw", "user", "/h/"] {
            assert!(!id.contains(secret), "{id}");
        }
        assert!(is_webhook_id(&id));
        assert!(!is_webhook_id(url));
        assert!(is_webhook_id(&webhook_id("not a url")));
        assert!(webhook_id("not a url").starts_with("webhook ("));
        assert_ne!(
            webhook_id("https://hooks.example/a"),
            webhook_id("https://hooks.example/b")
        );

        // A record stored when deliveries were keyed by URL.
        let mut rec = NoticeRecord {
            notice: Notice {
                id: 1,
                rule: "milestone_overdue".into(),
                subject: RegionCode::parse("440000").unwrap(),
                addressee: RegionCode::parse("440000").unwrap(),
                created_at: DateTime::parse_from_rfc3339("2018-11-16T01:00:00Z")
                    .unwrap()
                    .with_timezone(&Utc),
                deadline: None,
                text: "t".into(),
                text_en: "t".into(),
                facts: NoticeFacts::default(),
            },
            key: "k".into(),
            escalated: false,
            fetched: BTreeMap::new(),
            acked: BTreeMap::new(),
            webhooks: BTreeMap::from([(
                url.to_string(),
                WebhookDelivery {
                    url: None,
                    attempts: 2,
                    delivered_at: None,
                    last_error: Some(format!("error sending request for url ({url})")),
                },
            )]),
        };
        let mut legacy_bulletin =
            serde_json::json!({ "notices": [serde_json::to_value(rec.view(true)).unwrap()] });
        rekey_legacy_deliveries(&mut rec);
        let shown = serde_json::to_value(rec.view(false)).unwrap().to_string();
        assert!(!shown.contains("SECRET") && shown.contains(&id), "{shown}");
        assert!(
            serde_json::to_value(rec.view(true))
                .unwrap()
                .to_string()
                .contains("SECRET")
        );
        assert!(!format!("{rec:?}").contains("SECRET"));

        // A bulletin issued then: redacted for readers, and the copy says so.
        assert!(legacy_bulletin.to_string().contains("SECRET"));
        assert!(redact_legacy_webhooks(&mut legacy_bulletin));
        let text = legacy_bulletin.to_string();
        assert!(!text.contains("SECRET") && text.contains(&id), "{text}");
        assert!(legacy_bulletin[crate::bulletin::REDACTED_MEMBER].is_string());
        let mut new_bulletin =
            serde_json::json!({ "notices": [serde_json::to_value(rec.view(false)).unwrap()] });
        assert!(!redact_legacy_webhooks(&mut new_bulletin));
    }

    /// A bulletin's notice log is the view every reader gets, member for member: the
    /// signed bytes of a bulletin are what they were when the log was JSON built from
    /// that view.
    #[test]
    fn a_bulletin_notice_has_the_json_of_the_readers_view() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let gd = RegionCode::parse("440000").unwrap();
        let src = SourceId::parse("gd-rrt").unwrap();
        let url = "https://hooks.example/h?apikey=SECRET";
        let rec = NoticeRecord {
            notice: Notice {
                id: 7,
                rule: "milestone_escalated".into(),
                subject: gd,
                addressee: gd,
                created_at: at("2018-11-18T01:00:00Z"),
                deadline: NaiveDate::from_ymd_opt(2018, 11, 15),
                text: "文".into(),
                text_en: "text".into(),
                facts: NoticeFacts {
                    milestone: Some("implementation_plan".into()),
                    due: NaiveDate::from_ymd_opt(2018, 11, 15),
                    days_late: Some(3),
                    ..NoticeFacts::default()
                },
            },
            key: "k".into(),
            escalated: true,
            fetched: BTreeMap::from([(src.clone(), at("2018-11-18T02:00:00Z"))]),
            acked: BTreeMap::from([(src, at("2018-11-18T03:00:00Z"))]),
            webhooks: BTreeMap::from([
                (
                    webhook_id(url),
                    WebhookDelivery {
                        url: Some(url.into()),
                        attempts: 2,
                        delivered_at: Some(at("2018-11-18T01:05:00Z")),
                        last_error: Some("timed out".into()),
                    },
                ),
                (
                    webhook_id("https://other.example/"),
                    WebhookDelivery {
                        url: Some("https://other.example/".into()),
                        attempts: 1,
                        delivered_at: None,
                        last_error: None,
                    },
                ),
            ]),
        };
        let view = serde_json::to_value(rec.view(false)).unwrap();
        let logged = BulletinNotice::from(rec.view(false));
        assert_eq!(serde_json::to_value(&logged).unwrap(), view);
        assert!(!view.to_string().contains("SECRET"), "{view}");
        // And it reads back as it was written, in a bulletin's log.
        let entry: crate::assessment::NoticeEntry = serde_json::from_value(view).unwrap();
        assert_eq!(
            entry,
            crate::assessment::NoticeEntry::Notice(Box::new(logged))
        );
    }

    /// A plan notice names its milestone and the deadline even when the campaign has no
    /// deliverable cell for the plan (here: the plan milestone made a window).
    #[test]
    fn a_plan_notice_without_a_plan_cell_still_carries_its_due_date() {
        use spacesync_shared::campaign::MilestoneKind;
        let mut campaign = Campaign::builtin_2018();
        let def = campaign
            .milestones
            .iter_mut()
            .find(|m| m.id == tracking::PLAN_MILESTONE)
            .unwrap();
        def.kind = MilestoneKind::Window;
        def.opens = Some(def.due);
        let due = def.due;
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let plan = serde_json::json!({ "kind": "milestone", "milestone": "implementation_plan",
            "region": "110000", "submitted_on": "2018-11-17",
            "document": { "title": "方案", "sha256": "9f2c4b6e1a3d5f7081c2e4a6b8d0f1e3c5a7b9d1f3e5a7c9b1d3f5a7c9e1b3d5" },
            "details": { "years": { "2018": ["110101"] } } });
        let record = spacesync_shared::Record::from_value(&plan).unwrap();
        let mut views = Views::new(Campaign::builtin_2018().baseline);
        let meta = crate::views::Meta {
            log_index: 1,
            received_at: at("2018-11-17T02:00:00Z"),
            source: SourceId::parse("bj-rrt").unwrap(),
            seq: 1,
            recorded_at: at("2018-11-17T02:00:00Z"),
            withdrawn_by: None,
        };
        views
            .apply(
                &crate::store::MemStore::new(),
                meta,
                &record,
                &mut WriteBatch::new(),
            )
            .unwrap();
        let notices = candidates(&campaign, &views, &[], at("2018-11-20T01:00:00Z"));
        let plan = notices
            .iter()
            .find(|c| c.rule == "plan_incomplete")
            .unwrap_or_else(|| panic!("no plan notice in {notices:?}"));
        assert_eq!(plan.facts.milestone.as_deref(), Some("implementation_plan"));
        assert_eq!(plan.facts.due, Some(due));
        assert!(!plan.facts.problems.is_empty());
    }

    #[test]
    fn the_book_raises_each_key_once_and_tracks_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let book = NoticeBook::default();
        let now = DateTime::parse_from_rfc3339("2018-11-16T01:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            book.raise(&store, vec![cand("a"), cand("a"), cand("b")], now)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            book.raise(&store, vec![cand("a"), cand("b")], now)
                .unwrap()
                .len(),
            0
        );
        let src = SourceId::parse("gd-rrt").unwrap();
        let gd = RegionCode::parse("440000").unwrap();
        let bj = RegionCode::parse("110000").unwrap();
        assert_eq!(book.fetch(&store, &src, bj, 0, 10, now).unwrap().len(), 0);
        assert_eq!(book.fetch(&store, &src, gd, 0, 10, now).unwrap().len(), 2);
        assert_eq!(book.fetch(&store, &src, gd, 1, 10, now).unwrap().len(), 1);
        assert_eq!(book.ack(&store, &src, gd, 2, now).unwrap(), 2);
        let reloaded = NoticeBook::load(&store).unwrap();
        let list = reloaded.list(Role::Ministry);
        assert_eq!(list.len(), 2);
        assert!(list.iter().all(|n| n.state == "acknowledged"));
        assert_eq!(
            reloaded.raise(&store, vec![cand("a")], now).unwrap().len(),
            0
        );
    }

    /// Replicas: a book reads the stored notices again after another book's notice write,
    /// and not after other commits (ingest moves the head with every batch; re-reading
    /// every notice then cost each request a scan). A record slipped into the store
    /// without a notice write stays unseen until the next notice write.
    #[test]
    fn a_book_reads_the_notices_again_only_after_a_notice_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let now = DateTime::parse_from_rfc3339("2018-11-16T01:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let (a, b) = (
            NoticeBook::load(&store).unwrap(),
            NoticeBook::load(&store).unwrap(),
        );
        assert_eq!(a.raise(&store, vec![cand("a")], now).unwrap().len(), 1);
        b.refresh(&store).unwrap();
        assert_eq!(b.list(Role::Ministry).len(), 1, "b sees a's notice");

        let mut slipped: serde_json::Value =
            serde_json::from_slice(&store.get(&notice_key(1)).unwrap().unwrap()).unwrap();
        slipped["notice"]["id"] = 99.into();
        slipped["key"] = "slipped".into();
        let mut w = WriteBatch::new();
        w.put(notice_key(99), serde_json::to_vec(&slipped).unwrap());
        w.put(b"x/unrelated".to_vec(), b"1".to_vec());
        store.commit(store.head().unwrap(), w).unwrap();
        b.refresh(&store).unwrap();
        assert_eq!(
            b.list(Role::Ministry).len(),
            1,
            "a commit that is no notice write"
        );

        assert_eq!(a.raise(&store, vec![cand("c")], now).unwrap().len(), 1);
        b.refresh(&store).unwrap();
        assert_eq!(
            b.list(Role::Ministry).len(),
            3,
            "after a's notice write, all of them"
        );
        // A fresh book reads all of them too, and a raised key is not raised again.
        let c = NoticeBook::load(&store).unwrap();
        assert_eq!(
            c.raise(&store, vec![cand("c"), cand("slipped")], now)
                .unwrap()
                .len(),
            0
        );
    }
}
