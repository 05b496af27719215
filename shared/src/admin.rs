//! The hub's admin API on the wire: paths, requests and answers, shared by the hub (which
//! serves them) and the CLI (which sends them with `--hub URL`), so both sides read one
//! set of types. Every admin request carries an admin bearer token; the hub checks every
//! request field itself (the CLI sends what it was given as text), so a change made over
//! the network and one made on a stopped store pass the same checks with the same words.
//!
//! Also the enrolment code: what `spacesync-hub agents invite` prints and `spacesync-agent
//! init --enrol` reads (the hub URL, the hub's key line and a one-time secret), and the
//! message an enrolling agent signs with its new key.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, NaiveDate, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::campaign::{NoticeRule, RuleValue};
use crate::dsse::Digest;
use crate::keys::{self, PublicKeyError};

/// `GET`: the sources ([`SourceList`]); `POST` an [`AddSource`]: registers one
/// ([`SourceInfo`]).
pub const PATH_SOURCES: &str = "/v1/admin/sources";
/// `POST` a [`SourceRef`]: revokes a source ([`SourceInfo`]).
pub const PATH_SOURCES_REVOKE: &str = "/v1/admin/sources/revoke";
/// `POST` a [`RotateSource`]: a new key for a source from a seq on ([`SourceInfo`]).
pub const PATH_SOURCES_ROTATE: &str = "/v1/admin/sources/rotate";
/// `GET`: the tokens ([`TokenList`]); `POST` a [`CreateToken`]: a new token
/// ([`CreatedToken`], the only answer that holds a token).
pub const PATH_TOKENS: &str = "/v1/admin/tokens";
/// `POST` a [`TokenRef`]: revokes a token ([`TokenInfo`]); its dashboard sessions end.
pub const PATH_TOKENS_REVOKE: &str = "/v1/admin/tokens/revoke";
/// `POST` an [`Extend`]: grants a deadline extension ([`Extended`]).
pub const PATH_EXTENSIONS: &str = "/v1/admin/extensions";
/// `GET`: the notice rules in force ([`NoticeRules`]); `POST` a [`SetNoticeRule`]: changes
/// one the campaign file lets change ([`NoticeRuleSet`]).
pub const PATH_NOTICE_RULES: &str = "/v1/admin/notice-rules";
/// `POST` (empty JSON object): issues a bulletin now ([`Issued`]).
pub const PATH_BULLETINS_ISSUE: &str = "/v1/admin/bulletins/issue";
/// `POST` an [`Invite`]: a one-time enrolment secret ([`Invited`]).
pub const PATH_INVITES: &str = "/v1/admin/invites";
/// `POST` an [`EnrolRequest`], no token (the code is the credential): registers the
/// enrolling agent's key ([`Enrolled`]).
pub const PATH_ENROL: &str = "/v1/enrol";

/// `POST` one [`crate::wire::IngestBatch`] of an agent's offline bundle (`import-bundle
/// --hub`): ingested exactly as `POST /v1/ingest` would, receipts as one signed batch
/// receipt ([`BundleBatchAnswer`]). The body may be as large as an ingest request.
pub const PATH_BUNDLE_BATCH: &str = "/v1/admin/bundle/batch";

/// Largest admin request body the hub reads (but [`PATH_BUNDLE_BATCH`]'s).
pub const MAX_ADMIN_BODY: usize = 64 * 1024;

/// Answer to [`PATH_BUNDLE_BATCH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum BundleBatchAnswer {
    /// The hub's answer to the batch, as `POST /v1/ingest` gives it.
    Ingested {
        /// 200 all held, 409 gap or fork, 422 an entry refused.
        status: u16,
        /// Entries newly appended.
        appended: usize,
        /// Receipts and refusals.
        response: crate::wire::IngestResponse,
    },
    /// The batch was refused as a whole (unknown or revoked source, too many entries, a
    /// repeated seq): nothing of it was stored.
    Refused {
        /// Why, in the hub's words.
        error: String,
    },
}

/// Register a source (`agents add`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddSource {
    /// Source id.
    pub source: String,
    /// Scope region code.
    pub scope: String,
    /// The agent's public key line.
    pub key: String,
}

/// Names a source (`agents revoke`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRef {
    /// Source id.
    pub source: String,
}

/// Replace a source's key (`agents rotate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateSource {
    /// Source id.
    pub source: String,
    /// The new public key line.
    pub key: String,
    /// First seq the new key signs (absent: the seq after what the hub holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_seq: Option<u64>,
}

/// One key of a source and the first seq it signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The public key line.
    pub key: String,
    /// The first seq it signs.
    pub from_seq: u64,
    /// When it was registered.
    pub added_at: DateTime<Utc>,
}

/// A registered source (the members of the hub's source record, so `agents list --json`
/// reads the same from a running hub as from a stopped store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// Source id.
    pub id: String,
    /// Scope region code.
    pub scope: String,
    /// `active` or `revoked`.
    pub status: String,
    /// Its keys, oldest first; the last one signs from its `from_seq` on.
    pub keys: Vec<KeyInfo>,
    /// When it was registered.
    pub added_at: DateTime<Utc>,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl SourceInfo {
    /// The key in force for new entries.
    pub fn current_key(&self) -> Option<&str> {
        self.keys.last().map(|k| k.key.as_str())
    }
}

/// Answer to `GET` [`PATH_SOURCES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceList {
    /// Every source, in id order.
    pub sources: Vec<SourceInfo>,
}

/// Create a token (`token create`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// `admin`, `ministry` or `province:<PP0000>`.
    pub role: String,
    /// Who it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// A token just made: the only time the token itself is shown.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    /// Its id (for `token list` and `token revoke`).
    pub id: String,
    /// The token (`sst_…`).
    pub token: String,
    /// Its role.
    pub role: String,
}

impl std::fmt::Debug for CreatedToken {
    // The token is a secret: never in a log line, also not by accident through Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedToken")
            .field("id", &self.id)
            .field("token", &"sst_…")
            .field("role", &self.role)
            .finish()
    }
}

/// Names a token to revoke: the token itself (`sst_…`) or its id (or a unique prefix of
/// at least 6 hex digits). Sent in the body, never in the path, so it stays out of
/// access logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRef {
    /// The token or its id.
    pub token: String,
}

/// A token as listed (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Its id: the first 12 hex digits of the token's SHA-256.
    pub id: String,
    /// Its role.
    pub role: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was last presented to the running hub (to the minute), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
    /// Who it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Answer to `GET` [`PATH_TOKENS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    /// Every token, revoked ones included, in id order.
    pub tokens: Vec<TokenInfo>,
}

/// Grant a deadline extension (`extend`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extend {
    /// The provincial unit (PP0000) or a region inside one.
    pub region: String,
    /// Milestone id.
    pub milestone: String,
    /// New last day (campaign time zone).
    pub until: NaiveDate,
    /// Why.
    pub reason: String,
}

/// An extension granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extended {
    /// The log index of its hub-signed entry.
    pub log_index: u64,
}

/// Change a notice rule (`notice-rules set`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetNoticeRule {
    /// The setting's name (`remind_days`, `behind`, …: [`crate::campaign::NoticeRule`]).
    pub setting: String,
    /// The new value as an admin types it (`7,3,1`, `none`, `5`, `0.75`); the hub reads
    /// and checks it.
    pub value: String,
}

/// A notice rule change made (or found already in force).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeRuleSet {
    /// The setting.
    pub setting: NoticeRule,
    /// Its value before.
    pub old: RuleValue,
    /// Its value now.
    pub new: RuleValue,
    /// The log index of the hub-signed entry that records the change; absent when the
    /// value was already in force (nothing was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_index: Option<u64>,
}

/// One notice rule as in force, and where its value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeRuleInfo {
    /// The setting.
    pub setting: NoticeRule,
    /// Its value in force.
    pub value: RuleValue,
    /// May it be changed on the running hub (the campaign file's `[lagging] adjustable`)?
    pub adjustable: bool,
    /// The hub entry that set it; absent: the campaign file's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<RuleOrigin>,
}

/// The log entry a notice rule's value in force comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleOrigin {
    /// Its log index.
    pub log_index: u64,
    /// The hub's own seq of the entry.
    pub seq: u64,
    /// When it was made (hub clock).
    pub at: DateTime<Utc>,
    /// The admin token's id that made it; absent: made on the stopped store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Answer to `GET` [`PATH_NOTICE_RULES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeRules {
    /// The campaign id.
    pub campaign: String,
    /// Every notice rule, in [`NoticeRule::ALL`]'s order.
    pub rules: Vec<NoticeRuleInfo>,
}

/// A bulletin issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// Its number.
    pub number: u64,
}

/// Invite an agent to enrol (`agents invite`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invite {
    /// The source id the agent will have.
    pub source: String,
    /// Its scope region code.
    pub scope: String,
    /// How long the code is valid, in seconds of the hub clock.
    pub expires_in_secs: u64,
}

/// An invitation made: the secret is shown once; the hub keeps only its hash.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invited {
    /// The one-time secret (64 hex digits).
    pub secret: String,
    /// The hub's public key line, pinned by the code.
    pub hub_key: String,
    /// When the code stops working (hub clock).
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for Invited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invited")
            .field("secret", &"…")
            .field("hub_key", &self.hub_key)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// An enrolling agent's request: the code's secret, the agent's new key, and the new
/// key's signature over [`enrol_message`] (proof that the sender holds the key it asks
/// to register, bound to this code and this hub).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The code's secret.
    pub secret: String,
    /// The agent's new public key line.
    pub key: String,
    /// Base64 Ed25519 signature by that key over [`enrol_message`].
    pub signature: String,
}

impl std::fmt::Debug for EnrolRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrolRequest")
            .field("secret", &"…")
            .field("key", &self.key)
            .finish()
    }
}

/// What an enrolled agent is registered as, signed by the hub: the agent checks the
/// signature with the hub key its code pins ([`Enrolled::verify`]), so an answer from
/// anything between it and the hub is not believed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrolled {
    /// Its source id.
    pub source: String,
    /// Its scope.
    pub scope: String,
    /// The hub's key line (the agent checks it against the code's).
    pub hub_key: String,
    /// Base64 Ed25519 signature by the hub's key over [`enrolled_message`] (hub key,
    /// source, scope and the enrolled agent's key).
    pub signature: String,
}

/// The bytes the hub signs in an [`Enrolled`] answer: a context string, the hub's key
/// line, the source, the scope and the enrolled agent's key line, one per line.
pub fn enrolled_message(hub_key: &str, source: &str, scope: &str, agent_key: &str) -> Vec<u8> {
    format!("spacesync-enrolled-v1\n{hub_key}\n{source}\n{scope}\n{agent_key}\n").into_bytes()
}

/// Why an [`Enrolled`] answer is not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrolledError {
    /// Another hub key than the code pins.
    #[error("the answer names hub key {answered}, but the code pins {pinned}")]
    WrongHub {
        /// The key line the code pins.
        pinned: String,
        /// The key line the answer named.
        answered: String,
    },
    /// The signature is missing, malformed or not the pinned key's over this enrolment.
    #[error(
        "the answer is not signed by the hub key the code pins, for this agent's key (a forged or altered answer)"
    )]
    Signature,
}

impl Enrolled {
    /// The hub's answer registering `agent_key` as `source` with `scope`, signed by `hub`.
    pub fn signed(hub: &SigningKey, source: &str, scope: &str, agent_key: &str) -> Enrolled {
        let hub_key = keys::public_key_line(&hub.verifying_key());
        let sig = hub.sign(&enrolled_message(&hub_key, source, scope, agent_key));
        Enrolled {
            source: source.to_string(),
            scope: scope.to_string(),
            hub_key,
            signature: STANDARD.encode(sig.to_bytes()),
        }
    }

    /// Checks the answer against the hub key line the code pins and the agent's own key
    /// line (the one rule of [`crate::sig`]).
    pub fn verify(&self, pinned: &str, agent_key: &str) -> Result<(), EnrolledError> {
        if self.hub_key != pinned {
            return Err(EnrolledError::WrongHub {
                pinned: pinned.to_string(),
                answered: self.hub_key.clone(),
            });
        }
        let key = keys::parse_public_key(pinned).map_err(|_| EnrolledError::Signature)?;
        let sig: [u8; 64] = STANDARD
            .decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(EnrolledError::Signature)?;
        crate::sig::verify(
            &key,
            &enrolled_message(pinned, &self.source, &self.scope, agent_key),
            &Signature::from_bytes(&sig),
        )
        .map_err(|_| EnrolledError::Signature)
    }
}

/// The bytes an enrolling agent signs: a context string, the hub's key line, the SHA-256
/// of the code's secret and the agent's key line, one per line. A signature for one hub
/// or one code is worthless for another.
pub fn enrol_message(hub_key: &str, secret: &str, key: &str) -> Vec<u8> {
    format!(
        "spacesync-enrol-v1\n{hub_key}\n{}\n{key}\n",
        Digest::of(secret.as_bytes())
    )
    .into_bytes()
}

/// The [`EnrolRequest`] an agent holding `key` sends for `code`.
pub fn enrol_request(code: &EnrolCode, key: &SigningKey) -> EnrolRequest {
    let line = keys::public_key_line(&key.verifying_key());
    let sig = key.sign(&enrol_message(&code.hub_key, &code.secret, &line));
    EnrolRequest {
        secret: code.secret.clone(),
        key: line,
        signature: STANDARD.encode(sig.to_bytes()),
    }
}

/// Why an enrolment request's proof is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrolProofError {
    /// The key is not a key line.
    #[error("key: {0}")]
    Key(#[from] PublicKeyError),
    /// The signature is not base64 of 64 bytes, or does not verify.
    #[error(
        "the request's proof does not verify with the key it registers (the new key must sign it); use `spacesync-agent init --enrol CODE`"
    )]
    Signature,
}

/// Checks `req`'s signature for the hub whose key line is `hub_key`; returns the key.
pub fn verify_enrol(hub_key: &str, req: &EnrolRequest) -> Result<VerifyingKey, EnrolProofError> {
    let key = keys::parse_public_key(&req.key)?;
    let sig: [u8; 64] = STANDARD
        .decode(&req.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(EnrolProofError::Signature)?;
    crate::sig::verify(
        &key,
        &enrol_message(hub_key, &req.secret, &req.key),
        &Signature::from_bytes(&sig),
    )
    .map_err(|_| EnrolProofError::Signature)?;
    Ok(key)
}

/// What an enrolment code carries.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrolCode {
    /// The hub's base URL.
    pub hub: String,
    /// The hub's public key line: the agent pins it.
    pub hub_key: String,
    /// The one-time secret (64 hex digits).
    pub secret: String,
}

impl std::fmt::Debug for EnrolCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrolCode")
            .field("hub", &self.hub)
            .field("hub_key", &self.hub_key)
            .field("secret", &"…")
            .finish()
    }
}

/// The prefix of every enrolment code (version 1).
pub const CODE_PREFIX: &str = "ssenrol1.";

/// Longest code read (a URL of up to about 1 KiB).
const MAX_CODE: usize = 2048;

/// Why an enrolment code does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// Not a code of this format.
    #[error(
        "not an enrolment code (it starts with {CODE_PREFIX}; copy the last line `spacesync-hub agents invite` printed, whole)"
    )]
    Format,
    /// The hub URL inside is not http(s).
    #[error("the code's hub URL {0:?} is not an http:// or https:// URL")]
    Url(String),
    /// The hub key inside is not a key line.
    #[error("the code's hub key: {0}")]
    Key(PublicKeyError),
    /// The hub URL inside is plain HTTP to another machine: the one-time secret would cross
    /// the network readable, and whoever reads it could enrol their own key first.
    #[error(
        "the code's hub URL {0} is plain HTTP off this machine: enrolment sends its one-time secret there readable; invite with the hub's https:// URL (plain HTTP only to a loopback address)"
    )]
    PlainHttp(String),
}

/// Whether `url` is plain HTTP to anything but a loopback address (`localhost`,
/// 127.0.0.0/8, `::1`): a secret sent there crosses a network readable.
pub fn plain_http_off_loopback(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    !(host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()))
}

impl EnrolCode {
    /// The compact text form: [`CODE_PREFIX`] then base64url (no padding) of the three
    /// fields, one per line.
    pub fn encode(&self) -> String {
        let text = format!("{}\n{}\n{}", self.hub, self.hub_key, self.secret);
        format!("{CODE_PREFIX}{}", URL_SAFE_NO_PAD.encode(text))
    }

    /// Reads a code (surrounding whitespace ignored), checking each field.
    pub fn parse(code: &str) -> Result<EnrolCode, CodeError> {
        let code = code.trim();
        if code.len() > MAX_CODE {
            return Err(CodeError::Format);
        }
        let body = code.strip_prefix(CODE_PREFIX).ok_or(CodeError::Format)?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| CodeError::Format)?;
        let text = String::from_utf8(raw).map_err(|_| CodeError::Format)?;
        let mut parts = text.split('\n');
        let (Some(hub), Some(hub_key), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CodeError::Format);
        };
        if !(hub.starts_with("http://") || hub.starts_with("https://"))
            || hub.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(CodeError::Url(hub.chars().take(200).collect()));
        }
        if plain_http_off_loopback(hub) {
            return Err(CodeError::PlainHttp(hub.chars().take(200).collect()));
        }
        keys::parse_public_key(hub_key).map_err(CodeError::Key)?;
        if !valid_secret(secret) {
            return Err(CodeError::Format);
        }
        Ok(EnrolCode {
            hub: hub.trim_end_matches('/').to_string(),
            hub_key: hub_key.to_string(),
            secret: secret.to_string(),
        })
    }
}

/// Is `s` a secret as the hub makes them (64 lowercase hex digits)?
pub fn valid_secret(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_off_loopback_is_flagged() {
        for (url, want) in [
            ("http://127.0.0.1:7400", false),
            ("http://127.8.9.1:7400", false),
            ("http://localhost:7400/", false),
            ("http://[::1]:7400", false),
            ("https://hub.example", false),
            ("http://hub.example", true),
            ("http://10.0.0.5:7400", true),
            ("http://[2001:db8::1]:7400", true),
            ("http://localhost.evil.example", true),
            ("http://127.0.0.1.evil.example", true),
        ] {
            assert_eq!(plain_http_off_loopback(url), want, "{url}");
        }
    }

    /// A code naming a plain-HTTP hub on another machine is refused when read: its secret
    /// would travel readable, and the first to present it enrols.
    #[test]
    fn a_code_for_a_plain_http_hub_elsewhere_is_refused() {
        let key =
            keys::public_key_line(&ed25519_dalek::SigningKey::from_bytes(&[4; 32]).verifying_key());
        let code = |hub: &str| {
            EnrolCode {
                hub: hub.into(),
                hub_key: key.clone(),
                secret: "ab".repeat(32),
            }
            .encode()
        };
        assert!(EnrolCode::parse(&code("https://hub.example")).is_ok());
        assert!(EnrolCode::parse(&code("http://127.0.0.1:7400")).is_ok());
        assert!(matches!(
            EnrolCode::parse(&code("http://hub.example")),
            Err(CodeError::PlainHttp(_))
        ));
    }

    fn code() -> (EnrolCode, SigningKey) {
        let hub = SigningKey::from_bytes(&[7; 32]);
        (
            EnrolCode {
                hub: "https://hub.example:8443".into(),
                hub_key: keys::public_key_line(&hub.verifying_key()),
                secret: "ab".repeat(32),
            },
            hub,
        )
    }

    #[test]
    fn a_code_reads_back_and_damage_is_refused() {
        let (c, _) = code();
        let text = c.encode();
        assert!(text.starts_with(CODE_PREFIX));
        assert_eq!(EnrolCode::parse(&format!(" {text}\n")), Ok(c.clone()));
        let bad = |hub: &str, key: &str, secret: &str| {
            let t = format!("{hub}\n{key}\n{secret}");
            EnrolCode::parse(&format!("{CODE_PREFIX}{}", URL_SAFE_NO_PAD.encode(t)))
        };
        assert!(matches!(
            bad("ftp://x", &c.hub_key, &c.secret),
            Err(CodeError::Url(_))
        ));
        assert!(matches!(
            bad(&c.hub, "ed25519:AAAA", &c.secret),
            Err(CodeError::Key(_))
        ));
        assert_eq!(bad(&c.hub, &c.hub_key, "AB"), Err(CodeError::Format));
        assert_eq!(
            bad(&c.hub, &c.hub_key, &"AB".repeat(32)),
            Err(CodeError::Format)
        );
        assert_eq!(EnrolCode::parse(&text[1..]), Err(CodeError::Format));
        assert_eq!(
            EnrolCode::parse(&format!("{text}!")),
            Err(CodeError::Format)
        );
        assert_eq!(
            EnrolCode::parse(&format!("{CODE_PREFIX}{}", "A".repeat(4000))),
            Err(CodeError::Format)
        );
        let four = format!("{}\n{}\n{}\nx", c.hub, c.hub_key, c.secret);
        assert_eq!(
            EnrolCode::parse(&format!("{CODE_PREFIX}{}", URL_SAFE_NO_PAD.encode(four))),
            Err(CodeError::Format)
        );
    }

    #[test]
    fn the_enrolled_answer_is_the_pinned_hubs_for_this_agent() {
        let hub = SigningKey::from_bytes(&[31; 32]);
        let pinned = keys::public_key_line(&hub.verifying_key());
        let agent = keys::public_key_line(&SigningKey::from_bytes(&[32; 32]).verifying_key());
        let answer = Enrolled::signed(&hub, "gd-a", "440000", &agent);
        assert_eq!(answer.verify(&pinned, &agent), Ok(()));
        // For another agent's key, with another source or scope, unsigned, or by a hub
        // that is not the pinned one: refused.
        let other = keys::public_key_line(&SigningKey::from_bytes(&[33; 32]).verifying_key());
        assert_eq!(
            answer.verify(&pinned, &other),
            Err(EnrolledError::Signature)
        );
        let mut wider = answer.clone();
        wider.scope = "110000".into();
        assert_eq!(wider.verify(&pinned, &agent), Err(EnrolledError::Signature));
        let mut renamed = answer.clone();
        renamed.source = "gd-b".into();
        assert_eq!(
            renamed.verify(&pinned, &agent),
            Err(EnrolledError::Signature)
        );
        let mut unsigned = answer.clone();
        unsigned.signature = String::new();
        assert_eq!(
            unsigned.verify(&pinned, &agent),
            Err(EnrolledError::Signature)
        );
        let impostor = SigningKey::from_bytes(&[34; 32]);
        let mut forged = Enrolled::signed(&impostor, "gd-a", "440000", &agent);
        assert!(matches!(
            forged.verify(&pinned, &agent),
            Err(EnrolledError::WrongHub { .. })
        ));
        // Naming the pinned key does not help a signature by another.
        forged.hub_key = pinned.clone();
        assert_eq!(
            forged.verify(&pinned, &agent),
            Err(EnrolledError::Signature)
        );
        // An answer without a signature does not even read.
        let json = r#"{"source":"gd-a","scope":"440000","hub_key":"x"}"#;
        assert!(serde_json::from_str::<Enrolled>(json).is_err());
    }

    #[test]
    fn the_enrol_proof_binds_key_code_and_hub() {
        let (c, _) = code();
        let agent = SigningKey::from_bytes(&[9; 32]);
        let req = enrol_request(&c, &agent);
        assert_eq!(verify_enrol(&c.hub_key, &req), Ok(agent.verifying_key()));
        // Another hub, another secret, another key named: refused.
        let other_hub = keys::public_key_line(&SigningKey::from_bytes(&[8; 32]).verifying_key());
        assert_eq!(
            verify_enrol(&other_hub, &req),
            Err(EnrolProofError::Signature)
        );
        let mut other_secret = req.clone();
        other_secret.secret = "cd".repeat(32);
        assert_eq!(
            verify_enrol(&c.hub_key, &other_secret),
            Err(EnrolProofError::Signature)
        );
        let mut other_key = req.clone();
        other_key.key = keys::public_key_line(&SigningKey::from_bytes(&[10; 32]).verifying_key());
        assert_eq!(
            verify_enrol(&c.hub_key, &other_key),
            Err(EnrolProofError::Signature)
        );
        let mut garbage = req;
        garbage.signature = "!!".into();
        assert_eq!(
            verify_enrol(&c.hub_key, &garbage),
            Err(EnrolProofError::Signature)
        );
    }
}
