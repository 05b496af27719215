//! Progress bulletins (进度通报): numbered per campaign (第N期), issued on the campaign's
//! schedule and on demand, immutable once issued, signed by the hub, and verifiable by
//! recomputing them from the log up to the checkpoint they name.
//!
//! A bulletin is one JSON object. Its signature covers the compact serialization of the
//! object without its `signature` member (keys in the order the hub wrote them, which a
//! JSON parser that keeps order — or sorts, as serde_json does by default — reproduces).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use spacesync_shared::Campaign;
use spacesync_shared::dsse::key_id;
use spacesync_shared::merkle::{self, NoteVerifier};

use crate::assessment::{
    Bulletin, BulletinCheckpoint, BulletinNotice, HistoryPoint, WitnessStatus,
};
use crate::hub::Hub;
use crate::maintenance::rebuild_views_upto;
use crate::registry;
use crate::render::{CsvError, Format, Lang};
use crate::store::{Store, StoreError, WriteBatch};
use crate::tracking::assess;

const BULLETIN_PREFIX: &[u8] = b"bul/";
/// The campaign files bulletins were computed under, by [`Campaign::digest`]: a bulletin
/// verifies with the rules it was issued under after `campaign.toml` changed.
const CAMPAIGN_PREFIX: &[u8] = b"camp/";

fn campaign_key(digest: &str) -> Vec<u8> {
    [CAMPAIGN_PREFIX, digest.as_bytes()].concat()
}
const SLOT_KEY: &[u8] = b"meta/bulletin-slot";

/// Fields that are not recomputed from the log when verifying (delivery state of notices
/// changes after issue; the rest is bookkeeping checked separately).
const NOT_RECOMPUTED: &[&str] = &[
    "number",
    "title",
    "title_en",
    "issued_at",
    "scheduled_for",
    "checkpoint",
    "signature",
    "notices",
    "campaign_digest",
    // Checked against the earlier bulletins it copies, not recomputed.
    "history",
];

/// Bulletin errors.
#[derive(Debug, thiserror::Error)]
pub enum BulletinError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No bulletin with that number.
    #[error("bulletin {0} does not exist; see `spacesync-hub bulletin list`")]
    NotFound(u64),
    /// A file is not a bulletin.
    #[error("not a spacesync bulletin: {0}")]
    Malformed(String),
    /// The signature does not verify.
    #[error("the bulletin's signature does not verify with this hub's key")]
    BadSignature,
    /// The checkpoint does not match the log.
    #[error("the bulletin's checkpoint (size {size}) does not match this hub's log: {why}")]
    Checkpoint {
        /// The checkpoint size.
        size: u64,
        /// What differs.
        why: String,
    },
    /// A recomputed figure differs.
    #[error("the bulletin does not match the log: {0}")]
    Mismatch(String),
    /// A cosignature of its checkpoint, by a source registered then, does not verify.
    #[error("the bulletin's checkpoint cosignatures do not verify: {0}")]
    Witness(String),
}

impl From<crate::hub::LoadError> for BulletinError {
    fn from(e: crate::hub::LoadError) -> BulletinError {
        BulletinError::Store(crate::hub::load_to_store(e))
    }
}

impl crate::hub::ConflictError for BulletinError {
    fn is_conflict(&self) -> bool {
        matches!(self, BulletinError::Store(StoreError::Conflict { .. }))
    }
}

/// Key that pins the witness cosignatures of the checkpoint of `size` leaves: a bulletin's
/// (`crate::witness::prune` keeps them).
pub fn pin_key(size: u64) -> Vec<u8> {
    [crate::store::keys::COSIG_PIN, &size.to_be_bytes()].concat()
}

fn bulletin_key(n: u64) -> Vec<u8> {
    [BULLETIN_PREFIX, &n.to_be_bytes()].concat()
}

fn canonical(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn sign(body: &mut Map<String, Value>, key: &SigningKey) {
    body.remove("signature");
    let bytes = canonical(&Value::Object(body.clone()));
    let sig = key.sign(&bytes);
    body.insert(
        "signature".into(),
        json!({ "alg": "ed25519", "keyid": key_id(&key.verifying_key()), "sig": STANDARD.encode(sig.to_bytes()) }),
    );
}

/// Checks a bulletin's signature.
pub fn check_signature(doc: &Value, key: &VerifyingKey) -> Result<(), BulletinError> {
    let mut body = doc
        .as_object()
        .cloned()
        .ok_or_else(|| BulletinError::Malformed("not a JSON object".into()))?;
    let sig = body
        .remove("signature")
        .and_then(|s| s.get("sig").and_then(Value::as_str).map(str::to_string))
        .ok_or_else(|| BulletinError::Malformed("no signature".into()))?;
    let bytes = STANDARD
        .decode(sig)
        .map_err(|_| BulletinError::Malformed("signature is not base64".into()))?;
    let arr: [u8; 64] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| BulletinError::Malformed("signature is not 64 bytes".into()))?;
    spacesync_shared::sig::verify(
        key,
        &canonical(&Value::Object(body)),
        &Signature::from_bytes(&arr),
    )
    .map_err(|_| BulletinError::BadSignature)
}

/// Bulletin `doc` (as stored) in `format`, the one place a bulletin document becomes
/// what `bulletin show` prints and `/v1/bulletins/…` serves: [`Format::Json`] is the
/// signed document itself, pretty-printed; every other format is rendered from the typed
/// [`Bulletin`] read from it once. A document that does not read as a bulletin gives a
/// page or paragraph saying why, or [`CsvError::Unreadable`].
pub fn show(doc: &Value, format: Format, lang: Lang) -> Result<String, CsvError> {
    show_witnessed(doc, format, lang, None)
}

/// [`show`], with how far the bulletin's checkpoint is witnessed (computed by the reader,
/// [`crate::witness`]) shown under the checkpoint line of the HTML and Markdown.
pub fn show_witnessed(
    doc: &Value,
    format: Format,
    lang: Lang,
    witnessed: Option<WitnessStatus>,
) -> Result<String, CsvError> {
    let Format::Rendered(rendering) = format else {
        return Ok(serde_json::to_string_pretty(doc).unwrap_or_default());
    };
    match Bulletin::from_document(doc) {
        Ok(mut b) => {
            b.witnessed = witnessed;
            rendering.render(&b, lang)
        }
        Err(e) => rendering.unreadable(lang, e),
    }
}

/// An issued bulletin as the bulletin list shows it (`bulletin list`, `GET /v1/bulletins`,
/// the dashboard's latest bulletin).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listed {
    /// Its number.
    pub number: u64,
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
    /// The schedule slot it was issued for (absent: issued on demand).
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Its Chinese title.
    pub title: String,
    /// The log checkpoint its figures were computed at.
    pub checkpoint: BulletinCheckpoint,
    /// How many provincial units it lists as lagging.
    pub lagging: usize,
    /// How far its checkpoint is witnessed, when the reader computed it
    /// ([`crate::witness::status_now`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub witnessed: Option<WitnessStatus>,
}

/// What [`list`] reads of a stored bulletin, and nothing more.
#[derive(Deserialize)]
struct Head {
    number: u64,
    issued_at: DateTime<Utc>,
    #[serde(default)]
    scheduled_for: Option<DateTime<Utc>>,
    title: String,
    checkpoint: BulletinCheckpoint,
    #[serde(default)]
    lagging: Vec<IgnoredAny>,
}

/// Every issued bulletin, oldest first.
pub fn list(store: &dyn Store) -> Result<Vec<Listed>, BulletinError> {
    let mut out = Vec::new();
    for r in store.scan(BULLETIN_PREFIX) {
        let (k, v) = r?;
        let h: Head = serde_json::from_slice(&v).map_err(|e| {
            let n = crate::store::keys::tail_u64(&k).unwrap_or_default();
            BulletinError::Malformed(format!("bulletin {n}: {e}"))
        })?;
        out.push(Listed {
            number: h.number,
            issued_at: h.issued_at,
            scheduled_for: h.scheduled_for,
            title: h.title,
            checkpoint: h.checkpoint,
            lagging: h.lagging.len(),
            witnessed: None,
        });
    }
    Ok(out)
}

/// One issued bulletin.
pub fn get(store: &dyn Store, n: u64) -> Result<Value, BulletinError> {
    let v = store
        .get(&bulletin_key(n))?
        .ok_or(BulletinError::NotFound(n))?;
    serde_json::from_slice(&v).map_err(|e| BulletinError::Malformed(e.to_string()))
}

/// Issues the next bulletin at the hub clock's current instant, with `notices` (the
/// notice book's log) as its notice log.
pub fn issue(
    hub: &Hub,
    scheduled_for: Option<DateTime<Utc>>,
    notices: &[BulletinNotice],
) -> Result<Value, BulletinError> {
    hub.serialized(|hub, st| issue_with(hub, st, scheduled_for, notices, WriteBatch::new()))
}

// Bulletins are issued one at a time: the number and the schedule slot are read and the
// bulletin written inside the serialized write ([`Hub::serialized`], under the writer lock
// of the hub and committed at the store head its state was read at). Across processes
// (replicas on one database, `bulletin issue` beside `serve`) a commit that finds the head
// moved writes nothing and the bulletin is computed again, caught up, so two issuers never
// take the same number or the same slot. Readers are not held up; writers wait while the
// assessment is computed (once a week, or per `bulletin issue`).

/// [`issue`], writing `also` in the same atomic write as the bulletin, committed at the
/// head `state` was read at. The caller holds the writer lock (`state`, caught up with
/// the store).
fn issue_with(
    hub: &Hub,
    state: &mut crate::hub::State,
    scheduled_for: Option<DateTime<Utc>>,
    notices: &[BulletinNotice],
    also: WriteBatch,
) -> Result<Value, BulletinError> {
    let store = hub.store.as_ref();
    let now = hub.clock.now();
    // One snapshot: log size, root, checkpoint, views and registry as of one durable
    // change (registry changes are log entries), which is what `verify` recomputes with.
    let st = crate::hub::Snapshot::of(state);
    let mut registry: Vec<registry::SourceRecord> = st.registry.values().cloned().collect();
    registry.sort_by(|a, b| a.id.cmp(&b.id));
    let number = store
        .last(BULLETIN_PREFIX)?
        .and_then(|(k, _)| crate::store::keys::tail_u64(&k))
        .unwrap_or(0)
        + 1;
    let size = st.log_size;
    let root = st.log_root;
    let history = history(store, number)?;
    let body = serde_json::to_value(assess(&hub.campaign, &st.views, &registry, now))
        .map_err(|e| BulletinError::Malformed(format!("the assessment did not serialize: {e}")))?;
    let mut doc = match body {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let head = json!({
        "number": number,
        "title": title(&hub.campaign, number),
        "title_en": title_en(&hub.campaign, number),
        "issued_at": now,
        "scheduled_for": scheduled_for,
        "checkpoint": { "origin": hub.origin, "size": size, "root": STANDARD.encode(root), "note": st.checkpoint },
        "notices": notices,
        "campaign_digest": hub.campaign.digest(),
    });
    let mut head = head;
    if !history.is_empty() {
        head["history"] = serde_json::to_value(&history)
            .map_err(|e| BulletinError::Malformed(format!("history did not serialize: {e}")))?;
    }
    drop(st);
    if let Value::Object(h) = head {
        for (k, v) in h {
            doc.insert(k, v);
        }
    }
    sign(&mut doc, &hub.key);
    let doc = Value::Object(doc);
    let mut b = WriteBatch::new();
    // The rules it was computed under, kept beside it (rewritten unchanged when known).
    b.put(
        campaign_key(&hub.campaign.digest()),
        hub.campaign.text().as_bytes(),
    );
    b.put(
        bulletin_key(number),
        serde_json::to_vec_pretty(&doc).unwrap_or_default(),
    );
    // Its checkpoint's cosignatures are kept from now on (witness::prune).
    b.put(pin_key(size), number.to_be_bytes());
    b.extend(also);
    state.head = store.commit(state.head, b)?;
    tracing::info!(number, log_size = size, "Issued bulletin.");
    Ok(doc)
}

/// Member added to a copy of a bulletin from before webhooks were named by id, whose
/// notice log named them by URL: the URLs were replaced for a reader who is not admin, so
/// that copy no longer matches its signature.
pub const REDACTED_MEMBER: &str = "redacted";

/// Verifies a bulletin against this hub's log: signature, checkpoint, and every figure
/// recomputed from the log as it was at the checkpoint.
pub fn verify(
    store: &dyn Store,
    campaign: &Campaign,
    hub_key: &VerifyingKey,
    origin: &str,
    doc: &Value,
) -> Result<(), BulletinError> {
    if doc.get(REDACTED_MEMBER).is_some() {
        return Err(BulletinError::Malformed(
            "this copy had webhook URLs removed for a reader who is not admin, so it no longer matches its signature; verify the copy fetched with an admin token".into(),
        ));
    }
    check_signature(doc, hub_key)?;
    let issued_under = campaign_of(store, campaign, doc)?;
    let campaign = &issued_under;
    let cp = &doc["checkpoint"];
    if cp["origin"].as_str() != Some(origin) {
        return Err(BulletinError::Mismatch(format!(
            "checkpoint.origin is {} but this hub's log is {origin:?}",
            cp["origin"]
        )));
    }
    if let Some(n) = doc["number"].as_u64()
        && (doc["title"].as_str() != Some(title(campaign, n).as_str())
            || doc["title_en"].as_str() != Some(title_en(campaign, n).as_str()))
    {
        return Err(BulletinError::Mismatch(format!(
            "the titles do not name bulletin {n} of {}",
            campaign.id
        )));
    }
    let size = cp["size"]
        .as_u64()
        .ok_or_else(|| BulletinError::Malformed("checkpoint.size missing".into()))?;
    let note = cp["note"].as_str().unwrap_or_default();
    let verifier =
        NoteVerifier::new(origin, *hub_key).map_err(|e| BulletinError::Malformed(e.to_string()))?;
    let opened = merkle::open_checkpoint(note, &verifier, origin).map_err(|e| {
        BulletinError::Checkpoint {
            size,
            why: e.to_string(),
        }
    })?;
    let root = crate::log::root_at(store, size)?;
    if opened.size != size
        || opened.root != root
        || cp["root"].as_str() != Some(&STANDARD.encode(root))
    {
        return Err(BulletinError::Checkpoint {
            size,
            why: "the root recomputed from the log differs".into(),
        });
    }
    let issued_at: DateTime<Utc> = doc["issued_at"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc))
        .ok_or_else(|| BulletinError::Malformed("issued_at missing".into()))?;
    let views = rebuild_views_upto(store, campaign.baseline, size, |_| {})?.views;
    // Not today's registry: a source revoked (or added) since would change the figures.
    let registry = registry::as_of(store, size)?;
    let mut recomputed = serde_json::to_value(assess(campaign, &views, &registry, issued_at))
        .map_err(|e| {
            BulletinError::Malformed(format!("the recomputation did not serialize: {e}"))
        })?;
    // A bulletin from before `format` existed is format 1: compare in its shape.
    if doc.get("format").is_none() {
        crate::tracking::as_format_1(&mut recomputed);
    }
    let Value::Object(re) = recomputed else {
        return Err(BulletinError::Malformed("recomputation failed".into()));
    };
    let Value::Object(got) = doc else {
        return Err(BulletinError::Malformed("not a JSON object".into()));
    };
    for (k, v) in &re {
        if got.get(k) != Some(v) {
            return Err(BulletinError::Mismatch(first_difference(
                k,
                got.get(k).unwrap_or(&Value::Null),
                v,
            )));
        }
    }
    check_history(store, doc)?;
    for k in got.keys() {
        if !re.contains_key(k) && !NOT_RECOMPUTED.contains(&k.as_str()) {
            return Err(BulletinError::Mismatch(format!(
                "{k} is not something the hub computes"
            )));
        }
    }
    Ok(())
}

/// The campaign a bulletin was issued under: `current` when it names no other (bulletins
/// from before `campaign_digest` existed are checked with today's file), else the file kept
/// in the store under the digest it names.
fn campaign_of(
    store: &dyn Store,
    current: &Campaign,
    doc: &Value,
) -> Result<Campaign, BulletinError> {
    let Some(want) = doc.get("campaign_digest") else {
        return Ok(current.clone());
    };
    let want = want
        .as_str()
        .ok_or_else(|| BulletinError::Malformed("campaign_digest is not a string".into()))?;
    if want == current.digest() {
        return Ok(current.clone());
    }
    let number = &doc["number"];
    let text = store.get(&campaign_key(want))?.ok_or_else(|| {
        BulletinError::Mismatch(format!(
            "bulletin {number} was computed under campaign rules {want} (campaign_digest), which are neither this hub's campaign.toml nor kept in its store; verify on the hub that issued it"
        ))
    })?;
    let text = String::from_utf8(text).map_err(|_| {
        BulletinError::Malformed(format!("the stored campaign file {want} is not UTF-8"))
    })?;
    let kept = Campaign::from_toml(&text).map_err(|e| {
        BulletinError::Malformed(format!(
            "the stored campaign file {want} does not read: {e}"
        ))
    })?;
    if kept.digest() != want {
        return Err(BulletinError::Malformed(format!(
            "the campaign file stored under {want} has another digest; the store is damaged"
        )));
    }
    Ok(kept)
}

/// The national figures of every bulletin before `number`, oldest first.
fn history(store: &dyn Store, number: u64) -> Result<Vec<HistoryPoint>, BulletinError> {
    let mut out = Vec::new();
    for n in 1..number {
        let doc = get(store, n)?;
        let b = Bulletin::from_document(&doc)
            .map_err(|e| BulletinError::Malformed(format!("bulletin {n}: {e}")))?;
        out.push(HistoryPoint::of(&b));
    }
    Ok(out)
}

/// The Chinese title of bulletin `n`.
fn title(campaign: &Campaign, n: u64) -> String {
    format!("{}进度通报（第{}期）", campaign.name, n)
}

/// The English title of bulletin `n`.
fn title_en(campaign: &Campaign, n: u64) -> String {
    format!("{} — Progress Bulletin No. {}", campaign.name_en, n)
}

/// Checks a bulletin's `history` against the earlier bulletins it copies: when present it
/// must be exactly every earlier bulletin's point, oldest first (bulletins issued before
/// `history` existed have none).
fn check_history(store: &dyn Store, doc: &Value) -> Result<(), BulletinError> {
    let Some(h) = doc.get("history") else {
        return Ok(());
    };
    let number = doc["number"]
        .as_u64()
        .ok_or_else(|| BulletinError::Malformed("number missing".into()))?;
    let want = serde_json::to_value(history(store, number)?)
        .map_err(|e| BulletinError::Malformed(format!("history: {e}")))?;
    if *h != want {
        return Err(BulletinError::Mismatch(first_difference(
            "history", h, &want,
        )));
    }
    Ok(())
}

/// Names the first place two JSON values differ.
fn first_difference(path: &str, got: &Value, want: &Value) -> String {
    match (got, want) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, bv) in b {
                let av = a.get(k).unwrap_or(&Value::Null);
                if av != bv {
                    return first_difference(&format!("{path}.{k}"), av, bv);
                }
            }
            format!("{path} has extra members")
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (av, bv)) in a.iter().zip(b).enumerate() {
                if av != bv {
                    return first_difference(&format!("{path}[{i}]"), av, bv);
                }
            }
            path.to_string()
        }
        _ => format!("{path} is {got} in the bulletin but {want} in the log"),
    }
}

/// Instants of the scheduled bulletins: `first` + k·`every_days` at `at`, local time.
pub fn slot_time(campaign: &Campaign, k: u64) -> DateTime<Utc> {
    let local = NaiveDateTime::new(campaign.bulletins.first, campaign.bulletins.at)
        + Duration::days(k as i64 * i64::from(campaign.bulletins.every_days));
    let utc = local - Duration::seconds(i64::from(campaign.utc_offset.local_minus_utc()));
    DateTime::from_naive_utc_and_offset(utc, Utc)
}

/// Issues every scheduled bulletin whose time has come and that was not issued yet.
/// Returns the numbers issued. Bulletins stop after the campaign's end.
pub fn issue_due(
    hub: &Hub,
    notices: impl Fn() -> Vec<BulletinNotice>,
) -> Result<Vec<u64>, BulletinError> {
    issue_due_fenced(hub, notices, &|_| Ok(true))
}

/// [`issue_due`] by the holder of the scheduler lease: `fence` is asked inside the
/// serialized write, at the head the bulletin is committed at (see [`crate::schedule`]);
/// when it says the lease is lost, nothing is issued.
pub fn issue_due_fenced(
    hub: &Hub,
    notices: impl Fn() -> Vec<BulletinNotice>,
    fence: &dyn Fn(&dyn Store) -> Result<bool, StoreError>,
) -> Result<Vec<u64>, BulletinError> {
    let now = hub.clock.now();
    // The slot is read inside the serialized write: of two replicas due at once, the
    // second finds the head moved, catches up, reads the slot taken and issues nothing.
    hub.serialized(|hub, st| {
        if !fence(hub.store.as_ref())? {
            return Ok(Vec::new());
        }
        let next_slot = hub
            .store
            .get(SLOT_KEY)?
            .and_then(|b| b.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        let end = hub.campaign.end_of_day(hub.campaign.ends_on);
        let mut k = next_slot;
        let mut issued = Vec::new();
        // Catch up to the latest slot only: after downtime, one bulletin, not a burst.
        let mut latest = None;
        while slot_time(&hub.campaign, k) <= now && slot_time(&hub.campaign, k) < end {
            latest = Some(k);
            k += 1;
        }
        if let Some(k) = latest {
            // The bulletin and its slot are one write: a crash leaves both or neither, so a
            // slot is never issued twice.
            let mut slot = WriteBatch::new();
            slot.put(SLOT_KEY.to_vec(), (k + 1).to_be_bytes().to_vec());
            let doc = issue_with(hub, st, Some(slot_time(&hub.campaign, k)), &notices(), slot)?;
            issued.push(doc["number"].as_u64().unwrap_or(0));
        }
        Ok(issued)
    })
}
