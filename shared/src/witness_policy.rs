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
//! log spacesync-hub/campaign/2018 ed25519:<base64>   # the hub's checkpoint key
//! quorum 17                                          # provincial units needed
//! witness 440000 spacesync-witness/gd-rrt+<key ID>+<base64(0x04 || key)>
//! witness 110000 spacesync-witness/bj-rrt+<key ID>+<base64> until 52000
//! ```
//!
//! `log` is required: cosignatures cover a checkpoint's text, not the hub's signature, so
//! without the hub's key anyone could re-sign a witnessed text (and a receipt) with a key
//! of their own. `witness` names a provincial unit (one of the 32 codes) and a verifier key
//! in the C2SP tlog-cosignature form ([`Cosigner::to_vkey`]); `until <size>` bounds the
//! checkpoints it counts for (a key rotated away counts only for trees no larger than the
//! one it last cosigned; a key lost or stolen must get a bound, or its line be removed). A
//! witness name listed again with another key is one witness with several keys. A unit is
//! witnessed when every witness listed for it cosigned; the quorum counts units, as the hub
//! does (a unit with two platforms is witnessed only when both agents have checked). A `#`
//! at the start of a line or after whitespace starts a comment.
//!
//! A cosignature line of a listed key that does not verify is reported and not counted (a
//! hub adding a junk line under a province's name must not make a genuine file look forged).

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::VerifyingKey;
use thiserror::Error;

use crate::cosign::{self, Cosigner};
use crate::keys::{parse_public_key, public_key_line};
use crate::merkle::{self, NoteVerifier};
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

/// One key of a witness, and the largest checkpoint it counts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessKey {
    /// The key, under the witness's name.
    pub cosigner: Cosigner,
    /// Counts only for checkpoints of at most this many entries (`until <size>`).
    pub until: Option<u64>,
}

/// One witness of the policy: its unit and every key it may cosign with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    /// The provincial unit it witnesses for.
    pub unit: RegionCode,
    /// Its keys, in the order listed (later ones added by [`Policy::hand_over`]).
    pub keys: Vec<WitnessKey>,
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The hub's checkpoint key.
    pub log: LogKey,
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
    /// Listed witnesses whose line on the note does not verify (not counted), with why.
    pub bad: Vec<String>,
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
        let bad = if self.bad.is_empty() {
            String::new()
        } else {
            format!(
                "; {} line(s) under listed witnesses' names do not verify and were not counted (added by whoever served the note, not by those witnesses): {}",
                self.bad.len(),
                self.bad.join("; ")
            )
        };
        format!(
            "checkpoint of {} entries witnessed by {} of the policy's {} unit(s), quorum {} ({verdict}){units}{bad}",
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
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut format_seen = false;
        let mut log: Option<LogKey> = None;
        let mut quorum: Option<usize> = None;
        let mut witnesses: BTreeMap<String, Witness> = BTreeMap::new();
        let mut key_names: BTreeMap<[u8; 32], String> = BTreeMap::new();
        let mut witness_lines = 0usize;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |why: String| PolicyError::Line { line, why };
            // A comment: from a `#` at the start or after whitespace (never inside a word).
            let l = match raw
                .find('#')
                .filter(|&i| i == 0 || raw[..i].ends_with(char::is_whitespace))
            {
                Some(i) => raw[..i].trim(),
                None => raw.trim(),
            };
            if l.is_empty() {
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
                ["witness", code, vkey] | ["witness", code, vkey, "until", _] => {
                    let until = match words.as_slice() {
                        [.., "until", n] => Some(n.parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                            err(format!("until {n:?} is not a checkpoint size (a whole number of entries, at least 1)"))
                        })?),
                        _ => None,
                    };
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
                        Some(w) => w.keys.push(WitnessKey { cosigner: c, until }),
                        None => {
                            witnesses.insert(
                                c.name().to_string(),
                                Witness {
                                    unit: code,
                                    keys: vec![WitnessKey { cosigner: c, until }],
                                },
                            );
                        }
                    }
                }
                [word, ..] => {
                    return Err(err(format!(
                        "`{word}` with {} argument(s) is not a statement; a policy holds `format {FORMAT}`, `log <origin> ed25519:<base64>`, `quorum <n>` and `witness <unit code> <vkey> [until <size>]` lines",
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
        let log = log.ok_or_else(|| {
            PolicyError::File(
                "no `log <origin> ed25519:<base64>` line: name the hub whose checkpoints the witnesses cosign (its origin and `spacesync-hub pubkey`); without it a checkpoint re-signed by any key would pass".into(),
            )
        })?;
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
        if 2 * quorum <= units.len() {
            return Err(PolicyError::File(format!(
                "quorum {quorum} is not more than half of the {} unit(s) the policy lists: a hub showing one tree to half of them and another tree to the other half could get both witnessed; give at least {}",
                units.len(),
                units.len() / 2 + 1
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
        out.push_str(&format!(
            "log {} {}\n",
            self.log.origin,
            public_key_line(&self.log.key)
        ));
        out.push_str(&format!("quorum {}\n", self.quorum));
        let mut lines: Vec<(RegionCode, String)> = self
            .witnesses
            .values()
            .flat_map(|w| {
                w.keys.iter().map(move |k| {
                    let until = k.until.map(|n| format!(" until {n}")).unwrap_or_default();
                    (w.unit, format!("{}{until}", k.cosigner.to_vkey()))
                })
            })
            .collect();
        lines.sort();
        for (unit, key) in lines {
            out.push_str(&format!("witness {unit} {key}\n"));
        }
        out
    }

    /// The units the policy lists witnesses for.
    pub fn units(&self) -> BTreeSet<RegionCode> {
        self.witnesses.values().map(|w| w.unit).collect()
    }

    /// Records that the listed witness `name`'s key `from` handed over to `to` at log leaf
    /// `leaf` (a key-transition entry `from` signed): `from` counts from then on only for
    /// checkpoints of at most `leaf` entries, and `to` is added. Refused (false) when `name`
    /// is not listed, `from` is not one of its keys, `from` carries an `until` bound (a key
    /// retired, lost or stolen hands over nothing: whoever holds a copy of it could sign a
    /// hand-over to a key of their own), or `to` is a key another listed witness holds (one
    /// key serves one witness name: the name is not signed).
    pub fn hand_over(
        &mut self,
        name: &str,
        from: &VerifyingKey,
        to: VerifyingKey,
        leaf: u64,
    ) -> bool {
        let held_elsewhere = self
            .witnesses
            .iter()
            .any(|(n, w)| n != name && w.keys.iter().any(|k| k.cosigner.key() == &to));
        if held_elsewhere {
            return false;
        }
        let Some(w) = self.witnesses.get_mut(name) else {
            return false;
        };
        let Some(old) = w.keys.iter_mut().find(|k| k.cosigner.key() == from) else {
            return false;
        };
        if old.until.is_some() {
            return false;
        }
        old.until = Some(leaf);
        if w.keys.iter().any(|k| k.cosigner.key() == &to) {
            return true;
        }
        match Cosigner::new(name, to) {
            Ok(c) => {
                w.keys.push(WitnessKey {
                    cosigner: c,
                    until: None,
                });
                true
            }
            Err(_) => false,
        }
    }

    /// Checks that the hub of `origin` and `key` is the one the policy names.
    pub fn check_log(&self, origin: &str, key: &VerifyingKey) -> Result<(), PolicyError> {
        let l = &self.log;
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
    /// with the policy's log key, then the cosignature lines of listed keys (those whose
    /// `until` admits its size) are verified, and units are counted.
    pub fn tally(&self, note: &str) -> Result<Tally, PolicyError> {
        let l = &self.log;
        let v = NoteVerifier::new(&l.origin, l.key)
            .map_err(|e| PolicyError::Checkpoint(e.to_string()))?;
        let cp = merkle::open_checkpoint(note, &v, &l.origin).map_err(|e| {
            let crlf = if note.contains('\r') {
                " (the note holds carriage returns: keep its bytes exactly as the hub served them, with \\n line ends)"
            } else {
                ""
            };
            PolicyError::Checkpoint(format!(
                "the checkpoint does not verify with the policy's hub key: {e}{crlf}"
            ))
        })?;
        self.tally_lines(note, cp.size)
    }

    /// [`Policy::tally`] without the hub's signature (the caller checked it).
    pub fn tally_lines(&self, note: &str, size: u64) -> Result<Tally, PolicyError> {
        let c = self.cosigned_by(note, size)?;
        Ok(self.tally_names(size, &c.names, c.bad))
    }

    /// The listed witnesses whose cosignature lines on `note` (a checkpoint of `size`
    /// entries) verify with a key that counts for that size; a listed key's line that does
    /// not verify is reported in `bad`, not counted.
    pub fn cosigned_by(&self, note: &str, size: u64) -> Result<Cosigned, PolicyError> {
        let mut out = Cosigned::default();
        // The note's framing first: a note that does not read is an error, not a count.
        cosign::verify(note, &[])
            .map_err(|e| PolicyError::Checkpoint(format!("the checkpoint note: {e}")))?;
        for k in self
            .witnesses
            .values()
            .flat_map(|w| w.keys.iter())
            .filter(|k| k.until.is_none_or(|u| size <= u))
        {
            match cosign::verify(note, std::slice::from_ref(&k.cosigner)) {
                Ok(got) if !got.is_empty() => {
                    out.names.insert(k.cosigner.name().to_string());
                }
                Ok(_) => {}
                Err(e) => out.bad.push(e.to_string()),
            }
        }
        Ok(out)
    }

    /// The tally of a checkpoint of `size` entries cosigned by the witnesses `names`
    /// (from [`Policy::cosigned_by`], possibly over several notes of the same checkpoint).
    pub fn tally_names(&self, size: u64, names: &BTreeSet<String>, bad: Vec<String>) -> Tally {
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
            bad,
        }
    }
}

/// What [`Policy::cosigned_by`] found on a note.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cosigned {
    /// Witnesses whose line verified.
    pub names: BTreeSet<String>,
    /// Lines under a listed key that did not verify, with why.
    pub bad: Vec<String>,
}

/// The policy line of a witness: `witness <unit> <vkey>`.
pub fn line(unit: RegionCode, witness: &Cosigner) -> String {
    format!("witness {} {}", unit.province(), witness.to_vkey())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{Checkpoint, sign_checkpoint};
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
    fn a_handed_over_key_counts_and_bounds_its_predecessor() {
        let mut p = policy();
        let line = |n: &str, name: &str, k: &SigningKey| {
            let text = &n[..=n.rfind("\n\n").unwrap_or_else(|| panic!("no blank line"))];
            let l = cosign::cosign(text, name, k, 1).unwrap_or_else(|e| panic!("{e}"));
            cosign::add(n, &[l]).unwrap_or_else(|e| panic!("{e}"))
        };
        let new = SigningKey::from_bytes(&[33; 32]);
        let (w3, old) = witness(3);
        let by_new = line(&note(10), "spacesync-witness/w-3", &new);
        assert!(
            p.tally(&by_new)
                .map(|t| t.units.is_empty())
                .unwrap_or(false)
        );
        // w-3 hands over at leaf 20: its new key counts; the old one only up to 20 entries.
        assert!(p.hand_over("spacesync-witness/w-3", w3.key(), new.verifying_key(), 20));
        assert_eq!(
            p.tally(&by_new).map(|t| t.units),
            Ok(vec!["110000".to_string()])
        );
        let old_at = |size| {
            p.tally(&line(&note(size), "spacesync-witness/w-3", &old))
                .map(|t| t.units)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(old_at(20), vec!["110000".to_string()]);
        assert!(
            old_at(21).is_empty(),
            "a retired key counted after its hand-over"
        );
        // Not for an unlisted name, nor from a key the witness does not hold, nor to a key
        // another witness holds (one key, one name).
        assert!(!p.hand_over("spacesync-witness/w-42", w3.key(), new.verifying_key(), 30));
        assert!(!p.hand_over(
            "spacesync-witness/w-3",
            witness(4).0.key(),
            new.verifying_key(),
            30
        ));
        let w4 = witness(4).0;
        assert!(!p.hand_over("spacesync-witness/w-3", &new.verifying_key(), *w4.key(), 30));
        // The retired key hands over nothing more (a copy of it, say from an old backup,
        // cannot pass the witness to a key of its holder's choosing).
        let thief = SigningKey::from_bytes(&[66; 32]).verifying_key();
        assert!(!p.hand_over("spacesync-witness/w-3", w3.key(), thief, 40));
        // The bound shows in the rendered policy, which reads back the same.
        assert!(p.render().contains(&format!("{} until 20", w3.to_vkey())));
        assert_eq!(Policy::parse(&p.render()), Ok(p));
    }

    /// `until` bounds a listed key; comments may follow a statement; a BOM is skipped; the
    /// hub's key is required.
    #[test]
    fn until_comments_and_the_log_line() {
        let (w3, k3) = witness(3);
        let text = format!("\u{feff}{}", policy_text())
            .replace(
                "quorum 2\n",
                "quorum 2   # the smallest majority of three\n",
            )
            .replace(
                &w3.to_vkey(),
                &format!("{} until 9 # rotated", w3.to_vkey()),
            );
        let p = Policy::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.quorum, 2);
        let n = note(10);
        let body = &n[..=n.rfind("\n\n").unwrap_or_else(|| panic!("no blank line"))];
        let l = cosign::cosign(body, w3.name(), &k3, 1).unwrap_or_else(|e| panic!("{e}"));
        let with = cosign::add(&n, &[l]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.tally(&with).map(|t| t.units), Ok(vec![]));
        let e = Policy::parse(&text.replace(&format!("log {ORIGIN}"), "# log"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("no `log <origin> ed25519:<base64>` line"), "{e}");
        let e = Policy::parse(&text.replace("until 9", "until nine"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("until \"nine\" is not a checkpoint size"), "{e}");
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
            (
                good.replacen("quorum 2", "quorum 1", 1),
                "quorum 1 is not more than half of the 3 unit(s)",
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

    /// A line under a listed witness's name and key ID that does not verify is reported and
    /// not counted: whoever serves the note (the hub) could add one to veto a genuine file.
    #[test]
    fn a_broken_listed_cosignature_is_reported_not_counted() {
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
        // Reported, not counted, and the rest still counts: a junk line must not veto.
        let with_bad = with.replace(&line, &bad);
        let t = p.tally(&with_bad).unwrap_or_else(|e| panic!("{e}"));
        assert!(t.units.is_empty(), "{t:?}");
        assert_eq!(t.bad.len(), 1, "{t:?}");
        assert!(
            t.describe().contains("do not verify and were not counted"),
            "{}",
            t.describe()
        );
        let both = cosigned(&with_bad, &[1, 2]);
        let t = p.tally(&both).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.units, vec!["440000".to_string()]);
    }
}
