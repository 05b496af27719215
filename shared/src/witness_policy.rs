//! The witness policy: which witnesses a reader trusts to have audited the hub's log, and
//! how many provincial units make a quorum, anchored outside the hub (issue 16).
//!
//! The hub's registry says which keys its sources have. A reader who takes the witness
//! keys from the hub lets the hub say who witnesses it: a hub that shows one reader a
//! forked log can show that reader a registry of keys it holds itself, and "cosigned by
//! 17 units" would prove nothing. The policy is the campaign's own statement of its
//! witnesses, published beside the campaign file (the ministry collects one line from each
//! province, and each province checks its line with `spacesync-agent pubkey --witness`);
//! verifiers count only the cosignatures it names: `spacesync-hub evidence verify
//! --witnesses`, `bulletin verify --witnesses` and `witnesses check`.
//!
//! The file, `spacesync-witnesses/1`: one statement per line; blank lines and lines
//! starting with `#` are ignored.
//!
//! ```text
//! format spacesync-witnesses/1
//! log spacesync-hub/campaign/2018 ed25519:<base64>   # the hub's checkpoint key (optional)
//! quorum 17                                          # provincial units needed
//! witness 440000 spacesync-witness/gd-rrt+<key ID>+<base64(0x04 || key)>
//! ```
//!
//! `witness` names a provincial unit (one of the 32 codes) and a verifier key in the C2SP
//! tlog-cosignature form ([`Cosigner::to_vkey`]). A witness name listed again with another
//! key is one witness with several keys (a key rotated away still verifies the checkpoints
//! it cosigned). A unit is witnessed when every witness listed for it cosigned; the quorum
//! counts units, as the hub does (a unit with two platforms is witnessed only when both
//! agents have checked).

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::VerifyingKey;
use thiserror::Error;

use crate::cosign::{self, Cosigner};
use crate::keys::{parse_public_key, public_key_line};
use crate::merkle::{self, Checkpoint, NoteVerifier};
use crate::region::{RegionCode, unit};

/// The `format` line's value.
pub const FORMAT: &str = "spacesync-witnesses/1";

/// Largest policy file read (32 units with a few keys each is a few KiB).
pub const MAX_BYTES: usize = 256 * 1024;

/// Most `witness` lines a policy may hold.
pub const MAX_WITNESS_LINES: usize = 1024;

/// What is wrong with a policy, or with a checkpoint read under it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// A line of the file (1-based) is wrong.
    #[error("line {line}: {why}")]
    Line {
        /// The line number.
        line: usize,
        /// What is wrong, and what is expected.
        why: String,
    },
    /// The file as a whole is wrong (missing statement, too large).
    #[error("{0}")]
    File(String),
    /// The checkpoint is not the policy's log's, or its cosignatures do not read.
    #[error("{0}")]
    Checkpoint(String),
}

/// The hub the policy names: its checkpoint origin and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogKey {
    /// The checkpoint origin (first line of every checkpoint), also the note key name.
    pub origin: String,
    /// The hub's public key.
    pub key: VerifyingKey,
}

/// One witness of the policy: its unit and every key it may cosign with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    /// The provincial unit it witnesses for.
    pub unit: RegionCode,
    /// Its keys, in the order listed (later ones added by [`Policy::add_key`]).
    pub keys: Vec<Cosigner>,
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The hub's checkpoint key, when the policy names it.
    pub log: Option<LogKey>,
    /// Provincial units whose witnesses must all cosign.
    pub quorum: usize,
    /// Witnesses by name.
    pub witnesses: BTreeMap<String, Witness>,
}

/// How far a checkpoint is witnessed under a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// The tree size of the checkpoint.
    pub size: u64,
    /// Units witnessed (codes, ascending).
    pub units: Vec<String>,
    /// Witnesses whose cosignature verified (names, ascending).
    pub witnesses: Vec<String>,
    /// Units the policy lists.
    pub of: usize,
    /// The policy's quorum.
    pub quorum: usize,
}

impl Tally {
    /// True when at least the quorum of units is witnessed.
    pub fn met(&self) -> bool {
        self.units.len() >= self.quorum
    }

    /// One line for people: `witnessed by 17 of the policy's 32 units (quorum 17): …`.
    pub fn describe(&self) -> String {
        let verdict = if self.met() {
            "quorum met"
        } else {
            "quorum NOT met"
        };
        let units = if self.units.is_empty() {
            String::new()
        } else {
            format!(": units {}", self.units.join(", "))
        };
        format!(
            "checkpoint of {} entries witnessed by {} of the policy's {} unit(s), quorum {} ({verdict}){units}",
            self.size,
            self.units.len(),
            self.of,
            self.quorum
        )
    }
}

impl Policy {
    /// Reads a policy file's text; every problem names its line.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        if text.len() > MAX_BYTES {
            return Err(PolicyError::File(format!(
                "{} bytes, more than the {MAX_BYTES} a witness policy may have",
                text.len()
            )));
        }
        let mut format_seen = false;
        let mut log: Option<LogKey> = None;
        let mut quorum: Option<usize> = None;
        let mut witnesses: BTreeMap<String, Witness> = BTreeMap::new();
        let mut key_names: BTreeMap<[u8; 32], String> = BTreeMap::new();
        let mut witness_lines = 0usize;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |why: String| PolicyError::Line { line, why };
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = l.split_whitespace().collect();
            if !format_seen && words.first() != Some(&"format") {
                return Err(err(format!(
                    "the first statement must be `format {FORMAT}`, found {:?}",
                    words.first().copied().unwrap_or_default()
                )));
            }
            match words.as_slice() {
                ["format", f] if !format_seen => {
                    if *f != FORMAT {
                        return Err(err(format!(
                            "format {f:?} is not read here; this verifier reads {FORMAT:?}"
                        )));
                    }
                    format_seen = true;
                }
                ["format", ..] if format_seen => {
                    return Err(err("`format` is given twice".into()));
                }
                ["log", origin, key] => {
                    if log.is_some() {
                        return Err(err("`log` is given twice; a policy names one hub".into()));
                    }
                    let key = parse_public_key(key).map_err(|e| {
                        err(format!(
                            "the hub key {key:?} does not read ({e}); give `ed25519:<base64>` as `spacesync-hub pubkey` prints it"
                        ))
                    })?;
                    NoteVerifier::new(origin, key).map_err(|e| {
                        err(format!("the origin {origin:?} is not a note key name: {e}"))
                    })?;
                    log = Some(LogKey {
                        origin: (*origin).to_string(),
                        key,
                    });
                }
                ["quorum", n] => {
                    if quorum.is_some() {
                        return Err(err("`quorum` is given twice".into()));
                    }
                    let n: usize = n.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        err(format!(
                            "quorum {n:?} is not a whole number of units, at least 1"
                        ))
                    })?;
                    quorum = Some(n);
                }
                ["witness", code, vkey] => {
                    witness_lines += 1;
                    if witness_lines > MAX_WITNESS_LINES {
                        return Err(err(format!("more than {MAX_WITNESS_LINES} witness lines")));
                    }
                    let code = RegionCode::parse(code)
                        .ok()
                        .filter(|c| unit(*c).is_some() && c.province() == *c)
                        .ok_or_else(|| {
                            err(format!(
                                "{code:?} is not the code of one of the 32 provincial units (e.g. 440000)"
                            ))
                        })?;
                    let c = Cosigner::from_vkey(vkey).map_err(|e| {
                        err(format!(
                            "the witness key {vkey:?} does not read ({e}); give it as `spacesync-agent pubkey --witness` prints it"
                        ))
                    })?;
                    let bytes = c.key().to_bytes();
                    match key_names.get(&bytes) {
                        Some(other) if other == c.name() => {
                            return Err(err(format!("{} is listed twice", c.to_vkey())));
                        }
                        Some(other) => {
                            return Err(err(format!(
                                "the key of {} is also listed for witness {other}; one key serves one witness name",
                                c.name()
                            )));
                        }
                        None => {}
                    }
                    key_names.insert(bytes, c.name().to_string());
                    match witnesses.get_mut(c.name()) {
                        Some(w) if w.unit != code => {
                            return Err(err(format!(
                                "witness {} is listed for unit {} already; a witness belongs to one unit",
                                c.name(),
                                w.unit
                            )));
                        }
                        Some(w) => w.keys.push(c),
                        None => {
                            witnesses.insert(
                                c.name().to_string(),
                                Witness {
                                    unit: code,
                                    keys: vec![c],
                                },
                            );
                        }
                    }
                }
                [word, ..] => {
                    return Err(err(format!(
                        "`{word}` with {} argument(s) is not a statement; a policy holds `format {FORMAT}`, `log <origin> ed25519:<base64>`, `quorum <n>` and `witness <unit code> <vkey>` lines",
                        words.len() - 1
                    )));
                }
                [] => {}
            }
        }
        if !format_seen {
            return Err(PolicyError::File(format!(
                "the file holds no statement; a witness policy starts with `format {FORMAT}`"
            )));
        }
        let quorum = quorum.ok_or_else(|| {
            PolicyError::File("no `quorum <n>` line: say how many units make a quorum".into())
        })?;
        let units: BTreeSet<RegionCode> = witnesses.values().map(|w| w.unit).collect();
        if quorum > units.len() {
            return Err(PolicyError::File(format!(
                "quorum {quorum} is more than the {} unit(s) the policy lists witnesses for: no checkpoint could ever be witnessed",
                units.len()
            )));
        }
        Ok(Policy {
            log,
            quorum,
            witnesses,
        })
    }

    /// The policy as text ([`Policy::parse`] reads it back the same), witnesses by unit.
    pub fn render(&self) -> String {
        let mut out = format!("format {FORMAT}\n");
        if let Some(l) = &self.log {
            out.push_str(&format!("log {} {}\n", l.origin, public_key_line(&l.key)));
        }
        out.push_str(&format!("quorum {}\n", self.quorum));
        let mut lines: Vec<(RegionCode, String)> = self
            .witnesses
            .values()
            .flat_map(|w| w.keys.iter().map(move |k| (w.unit, k.to_vkey())))
            .collect();
        lines.sort();
        for (unit, vkey) in lines {
            out.push_str(&format!("witness {unit} {vkey}\n"));
        }
        out
    }

    /// The units the policy lists witnesses for.
    pub fn units(&self) -> BTreeSet<RegionCode> {
        self.witnesses.values().map(|w| w.unit).collect()
    }

    /// Adds `key` to the listed witness `name` (a key its listed key handed over to in a
    /// signed key transition); false when `name` is not listed.
    pub fn add_key(&mut self, name: &str, key: VerifyingKey) -> bool {
        let Some(w) = self.witnesses.get_mut(name) else {
            return false;
        };
        if w.keys.iter().any(|k| k.key() == &key) {
            return true;
        }
        match Cosigner::new(name, key) {
            Ok(c) => {
                w.keys.push(c);
                true
            }
            Err(_) => false,
        }
    }

    /// Checks that the hub of `origin` and `key` is the one the policy names (when it
    /// names one).
    pub fn check_log(&self, origin: &str, key: &VerifyingKey) -> Result<(), PolicyError> {
        let Some(l) = &self.log else {
            return Ok(());
        };
        if l.origin != origin {
            return Err(PolicyError::Checkpoint(format!(
                "the checkpoint is of log {origin:?}, but the policy names log {:?}",
                l.origin
            )));
        }
        if &l.key != key {
            return Err(PolicyError::Checkpoint(format!(
                "the hub key {} is not the key the policy names for log {origin:?} ({})",
                public_key_line(key),
                public_key_line(&l.key)
            )));
        }
        Ok(())
    }

    /// How far the signed checkpoint `note` is witnessed: its hub signature is checked
    /// with the policy's log key when the policy names one, then every cosignature line
    /// of a listed witness key must verify (a bad one refuses the note, as for any trusted
    /// key), and units are counted.
    pub fn tally(&self, note: &str) -> Result<Tally, PolicyError> {
        let cp = match &self.log {
            Some(l) => {
                let v = NoteVerifier::new(&l.origin, l.key)
                    .map_err(|e| PolicyError::Checkpoint(e.to_string()))?;
                merkle::open_checkpoint(note, &v, &l.origin).map_err(|e| {
                    PolicyError::Checkpoint(format!(
                        "the checkpoint does not verify with the policy's hub key: {e}"
                    ))
                })?
            }
            None => {
                let text = note.find("\n\n").map_or(note, |i| &note[..=i]);
                Checkpoint::parse_body(text).map_err(|e| {
                    PolicyError::Checkpoint(format!("the checkpoint does not read: {e}"))
                })?
            }
        };
        self.tally_lines(note, cp.size)
    }

    /// [`Policy::tally`] without the hub's signature (the caller checked it).
    pub fn tally_lines(&self, note: &str, size: u64) -> Result<Tally, PolicyError> {
        Ok(self.tally_names(size, &self.cosigned_by(note)?))
    }

    /// The listed witnesses whose cosignature lines on `note` verify (names); a line under
    /// a listed name and key ID that does not verify refuses the note.
    pub fn cosigned_by(&self, note: &str) -> Result<BTreeSet<String>, PolicyError> {
        let trusted: Vec<Cosigner> = self
            .witnesses
            .values()
            .flat_map(|w| w.keys.iter().cloned())
            .collect();
        let got = cosign::verify(note, &trusted)
            .map_err(|e| PolicyError::Checkpoint(format!("a listed witness's cosignature: {e}")))?;
        Ok(got.into_iter().map(|c| c.name).collect())
    }

    /// The tally of a checkpoint of `size` entries cosigned by the witnesses `names`
    /// (from [`Policy::cosigned_by`], possibly over several notes of the same checkpoint).
    pub fn tally_names(&self, size: u64, names: &BTreeSet<String>) -> Tally {
        let mut by_unit: BTreeMap<RegionCode, bool> = BTreeMap::new();
        for (name, w) in &self.witnesses {
            let all = by_unit.entry(w.unit).or_insert(true);
            *all &= names.contains(name);
        }
        Tally {
            size,
            units: by_unit
                .iter()
                .filter(|(_, all)| **all)
                .map(|(u, _)| u.to_string())
                .collect(),
            witnesses: names
                .iter()
                .filter(|n| self.witnesses.contains_key(*n))
                .cloned()
                .collect(),
            of: by_unit.len(),
            quorum: self.quorum,
        }
    }
}

/// The policy line of a witness: `witness <unit> <vkey>`.
pub fn line(unit: RegionCode, witness: &Cosigner) -> String {
    format!("witness {} {}", unit.province(), witness.to_vkey())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::sign_checkpoint;
    use ed25519_dalek::SigningKey;

    const ORIGIN: &str = "spacesync-hub/campaign/2018";

    fn hub() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    fn witness(n: u8) -> (Cosigner, SigningKey) {
        let k = SigningKey::from_bytes(&[n; 32]);
        let c = Cosigner::new(&format!("spacesync-witness/w-{n}"), k.verifying_key())
            .unwrap_or_else(|e| panic!("{e}"));
        (c, k)
    }

    /// Witnesses 1, 2 in Guangdong, 3 in Beijing, 4 in Shanghai; quorum 2.
    fn policy_text() -> String {
        let mut t = format!(
            "# test policy\nformat {FORMAT}\nlog {ORIGIN} {}\nquorum 2\n\n",
            public_key_line(&hub().verifying_key())
        );
        for (n, unit) in [(1, "440000"), (2, "440000"), (3, "110000"), (4, "310000")] {
            t.push_str(&format!("witness {unit} {}\n", witness(n).0.to_vkey()));
        }
        t
    }

    fn note(size: u64) -> String {
        let cp = Checkpoint {
            origin: ORIGIN.into(),
            size,
            root: [3; 32],
        };
        sign_checkpoint(&cp, ORIGIN, &hub()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn cosigned(note: &str, by: &[u8]) -> String {
        let text = &note[..=note
            .rfind("\n\n")
            .unwrap_or_else(|| panic!("no blank line"))];
        let lines: Vec<String> = by
            .iter()
            .map(|&n| {
                let (c, k) = witness(n);
                cosign::cosign(text, c.name(), &k, 1_700_000_000).unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        cosign::add(note, &lines).unwrap_or_else(|e| panic!("{e}"))
    }

    fn policy() -> Policy {
        Policy::parse(&policy_text()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_policy_reads_back_as_rendered() {
        let p = policy();
        assert_eq!(p.quorum, 2);
        assert_eq!(p.witnesses.len(), 4);
        assert_eq!(p.units().len(), 3);
        assert_eq!(Policy::parse(&p.render()), Ok(p));
    }

    #[test]
    fn units_count_only_when_every_listed_witness_cosigned() {
        let p = policy();
        // Witness 1 alone does not witness Guangdong; 1 and 2 do; 3 witnesses Beijing.
        let t = p
            .tally(&cosigned(&note(10), &[1, 3]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.units, vec!["110000"]);
        assert_eq!(t.witnesses.len(), 2);
        assert!(!t.met());
        let t = p
            .tally(&cosigned(&note(10), &[1, 2, 3]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.units, vec!["110000", "440000"]);
        assert_eq!((t.of, t.quorum, t.size), (3, 2, 10));
        assert!(t.met());
        assert!(
            t.describe()
                .contains("2 of the policy's 3 unit(s), quorum 2 (quorum met)")
        );
    }

    /// Keys the policy does not list count for nothing, whatever name they use.
    #[test]
    fn unlisted_keys_do_not_count() {
        let p = policy();
        let n = note(10);
        let text = &n[..=n.rfind("\n\n").unwrap_or_else(|| panic!("no blank line"))];
        // A key of the hub's choosing under witness 3's name, and a stranger.
        let forged = SigningKey::from_bytes(&[77; 32]);
        let lines = vec![
            cosign::cosign(text, "spacesync-witness/w-3", &forged, 1)
                .unwrap_or_else(|e| panic!("{e}")),
            cosign::cosign(text, "spacesync-witness/w-99", &forged, 1)
                .unwrap_or_else(|e| panic!("{e}")),
        ];
        let with = cosign::add(&n, &lines).unwrap_or_else(|e| panic!("{e}"));
        let t = p.tally(&with).unwrap_or_else(|e| panic!("{e}"));
        assert!(t.units.is_empty() && t.witnesses.is_empty(), "{t:?}");
    }

    #[test]
    fn another_hubs_checkpoint_is_refused() {
        let p = policy();
        let other = SigningKey::from_bytes(&[10; 32]);
        let cp = Checkpoint {
            origin: ORIGIN.into(),
            size: 5,
            root: [3; 32],
        };
        let n = sign_checkpoint(&cp, ORIGIN, &other).unwrap_or_else(|e| panic!("{e}"));
        let e = p
            .tally(&cosigned(&n, &[1, 2, 3]))
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("does not verify with the policy's hub key")),
            "{e:?}"
        );
        assert!(p.check_log(ORIGIN, &other.verifying_key()).is_err());
        assert!(
            p.check_log("another/origin", &hub().verifying_key())
                .is_err()
        );
        assert!(p.check_log(ORIGIN, &hub().verifying_key()).is_ok());
    }

    /// A key added for a listed witness (its signed key transition) verifies its lines.
    #[test]
    fn an_added_key_counts_for_its_witness() {
        let mut p = policy();
        let n = note(10);
        let text = &n[..=n.rfind("\n\n").unwrap_or_else(|| panic!("no blank line"))];
        let new = SigningKey::from_bytes(&[33; 32]);
        let line = cosign::cosign(text, "spacesync-witness/w-3", &new, 1)
            .unwrap_or_else(|e| panic!("{e}"));
        let with = cosign::add(&n, &[line]).unwrap_or_else(|e| panic!("{e}"));
        assert!(p.tally(&with).map(|t| t.units.is_empty()).unwrap_or(false));
        assert!(p.add_key("spacesync-witness/w-3", new.verifying_key()));
        assert!(!p.add_key("spacesync-witness/w-42", new.verifying_key()));
        assert_eq!(
            p.tally(&with).map(|t| t.units),
            Ok(vec!["110000".to_string()])
        );
    }

    #[test]
    fn every_malformed_line_is_named() {
        let good = policy_text();
        let w1 = witness(1).0.to_vkey();
        let w5 = witness(5).0;
        let cases: Vec<(String, &str)> = vec![
            (
                good.replacen(
                    "format spacesync-witnesses/1",
                    "format spacesync-witnesses/2",
                    1,
                ),
                "line 2: format",
            ),
            (
                good.replacen("format spacesync-witnesses/1\n", "", 1),
                "line 2: the first statement must be",
            ),
            (
                good.replacen("quorum 2", "quorum two", 1),
                "line 4: quorum \"two\"",
            ),
            (
                good.replacen("quorum 2", "quorum 0", 1),
                "line 4: quorum \"0\"",
            ),
            (
                good.replacen("quorum 2", "quorum 4", 1),
                "quorum 4 is more than the 3 unit(s)",
            ),
            (good.replacen("quorum 2\n", "", 1), "no `quorum <n>` line"),
            (
                format!("{good}quorum 2\n"),
                "line 10: `quorum` is given twice",
            ),
            (
                good.replacen("witness 440000", "witness 440100", 1),
                "line 6: \"440100\" is not the code of one of the 32",
            ),
            (
                format!("{good}witness 440000 {w1}\n"),
                "line 10: spacesync-witness/w-1+",
            ),
            (
                format!(
                    "{good}witness 110000 {}\n",
                    witness(1).0.to_vkey().replace("w-1", "w-1x")
                ),
                "key hash does not match",
            ),
            (
                format!(
                    "{good}witness 110000 {}\n",
                    Cosigner::new("spacesync-witness/w-2", *w5.key())
                        .unwrap_or_else(|e| panic!("{e}"))
                        .to_vkey()
                ),
                "line 10: witness spacesync-witness/w-2 is listed for unit 440000 already",
            ),
            (
                format!(
                    "{good}witness 110000 {}\n",
                    Cosigner::new("spacesync-witness/w-7", *witness(3).0.key())
                        .unwrap_or_else(|e| panic!("{e}"))
                        .to_vkey()
                ),
                "line 10: the key of spacesync-witness/w-7 is also listed for witness spacesync-witness/w-3",
            ),
            (
                format!("{good}log {ORIGIN} ed25519:AAAA\n"),
                "line 10: `log` is given twice",
            ),
            (
                good.replacen(&format!("log {ORIGIN} "), &format!("log {ORIGIN} x"), 1),
                "line 3: the hub key",
            ),
            (
                format!("{good}witnesses 110000 x\n"),
                "line 10: `witnesses` with 2 argument(s) is not a statement",
            ),
            ("# only a comment\n".to_string(), "holds no statement"),
            ("x".repeat(MAX_BYTES + 1), "more than the"),
        ];
        for (text, want) in cases {
            let got = Policy::parse(&text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(got.contains(want), "want {want:?} in {got:?}");
        }
    }

    /// A line under a listed witness's name and key ID that does not verify refuses the
    /// checkpoint (a changed byte in a cosignature is a tampered note, not a lower count).
    #[test]
    fn a_broken_listed_cosignature_refuses_the_note() {
        let p = policy();
        let with = cosigned(&note(10), &[3]);
        let line = with
            .lines()
            .find(|l| l.contains("w-3"))
            .unwrap_or_else(|| panic!("no line"))
            .to_string();
        let (head, sig) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no space"));
        let mut b = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, sig)
            .unwrap_or_else(|e| panic!("{e}"));
        let last = b.len() - 1;
        b[last] ^= 1;
        let bad = format!(
            "{head} {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &b)
        );
        let e = p
            .tally(&with.replace(&line, &bad))
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("does not verify")),
            "{e:?}"
        );
    }
}
