//! The one chain verifier: every rule about where an entry may stand in its source's
//! chain. Hub ingest, the hub's `verify`, the agent's `verify` and the fake hub of the
//! agent's delivery tests all judge through [`ChainVerifier`], so they cannot disagree
//! about a gap, a fork or a key.
//!
//! # The rules, in the order they are judged
//! 1. The payload reads as an entry ([`ChainError::Malformed`]); bytes that do not read
//!    *and* do not carry the signature of the key in force at the expected seq are damage,
//!    named [`ChainError::BadSignature`] instead.
//! 2. The entry names the chain's source ([`ChainError::WrongSource`]) and campaign
//!    ([`ChainError::WrongCampaign`]).
//! 3. Its signature verifies under the key in force at its seq ([`KeySchedule`]: a
//!    rotated key signs from its first seq on): [`ChainError::NoKey`],
//!    [`ChainError::UnreadableKey`], [`ChainError::BadSignature`]. This comes before any
//!    judgement on seqs: an unsigned claim is no evidence of a fork.
//! 4. Its seq. Below the seq expected next, an entry identical to the one held is a resend
//!    ([`Admitted::Resent`], or [`ChainError::Duplicate`] from [`ChainVerifier::push`]) and
//!    a different one a fork ([`ChainError::Fork`]). Above it, entries are missing or
//!    reordered ([`ChainError::Gap`], which names the seq to resend from).
//! 5. `prev` is the hash of the previous entry, zeros for seq 1 ([`ChainError::BadPrev`]).
//! 6. The record speaks only of regions within the source's scope
//!    ([`ChainError::OutOfScope`]) and a withdrawal targets an earlier seq
//!    ([`ChainError::BadWithdrawal`]).
//! 7. A key-transition entry (the agent's `rotate-key`: [`crate::record::KeyTransition`])
//!    carries its new key's proof ([`ChainError::BadTransition`]) and does not overrule a
//!    rotation recorded for a later seq ([`ChainError::TransitionConflict`]); once
//!    admitted, only its new key signs the seqs after it, and an entry there signed by a
//!    key the chain retired is [`ChainError::RetiredKey`]. Signed by the key in force at
//!    its seq (rule 3), the transition is the source's own proof of the rotation: whoever
//!    replays the chain derives the key schedule from it.
//!
//! A batch holds each seq of its source once ([`first_repeat`]); that is judged on the
//! whole batch before any signature, so a batch repeating one captured entry a thousand
//! times costs no signature work.
//!
//! # Three ways in
//! - [`ChainVerifier::push`]: one envelope, strict (a resend is an error). The agent's
//!   `verify` and the fake hub use it.
//! - [`ChainVerifier::admit`]: an envelope opened beforehand (signatures checked in a batch,
//!   outside any lock, by [`KeySchedule::open_batch`]), with a [`History`] that finds the
//!   entries held before the verifier started, so a resend is answered, not refused. Hub
//!   ingest uses it.
//! - [`ChainVerifier::audit`]: every link fault of one entry (position, `prev`, scope),
//!   after which the chain continues from that entry, so a checker reading a whole store
//!   names each damaged entry once and still judges the rest. The hub's `verify` uses it.

use std::convert::Infallible;

use ed25519_dalek::VerifyingKey;

use crate::dsse::{Digest, DsseError, Envelope};
use crate::entry::{
    ENTRY_PAYLOAD_TYPE, Entry, EntryError, SourceId, TransitionError, verify_signatures,
};
use crate::record::Record;
use crate::region::RegionCode;
use crate::wire::RefusalCode;

/// A fault in a source's chain, named at the seq where it shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The envelope at this position does not verify.
    #[error("seq {seq}: bad signature: {error}")]
    BadSignature {
        /// Seq claimed by the entry, or the expected seq when the payload is unreadable.
        seq: u64,
        /// Why.
        error: DsseError,
    },
    /// No registered key signs this seq (the first key signs from a later seq).
    #[error("seq {seq}: no registered key signs this seq")]
    NoKey {
        /// The seq.
        seq: u64,
    },
    /// Signed by a key that signed earlier seqs of this chain but was replaced before this
    /// one (by a key-transition entry or the hub's `agents rotate`).
    #[error(
        "seq {seq}: signed by a retired key of this source; from seq {since} on only the newer key signs (the agent must sign with its current key)"
    )]
    RetiredKey {
        /// The seq.
        seq: u64,
        /// First seq of the key in force at `seq`.
        since: u64,
    },
    /// A key-transition entry that does not prove its new key.
    #[error("seq {seq}: key transition refused: {error}")]
    BadTransition {
        /// The seq.
        seq: u64,
        /// Why.
        error: TransitionError,
    },
    /// A key-transition entry contradicting a rotation already recorded for a later seq
    /// (the hub's `agents rotate` for a lost key, from `from_seq`).
    #[error(
        "seq {seq}: key transition refused: a key rotation from seq {from_seq} is already recorded for this source (`agents rotate`), so the key in force at seq {seq} cannot choose the key after it; rotate again from the agent with `rotate-key --lost` and the hub's admin"
    )]
    TransitionConflict {
        /// The seq of the transition.
        seq: u64,
        /// First seq of the rotation already recorded.
        from_seq: u64,
    },
    /// The key registered for this seq cannot be read, so nothing it signed verifies.
    #[error("seq {seq}: the registered key does not parse")]
    UnreadableKey {
        /// The seq.
        seq: u64,
    },
    /// The entry cannot be read.
    #[error("seq {seq}: {error}")]
    Malformed {
        /// The expected seq at this position.
        seq: u64,
        /// Why.
        error: EntryError,
    },
    /// The entry belongs to another source.
    #[error("seq {seq}: entry is from source {got}, expected {expected}")]
    WrongSource {
        /// Seq of the entry.
        seq: u64,
        /// Source expected.
        expected: SourceId,
        /// Source found.
        got: SourceId,
    },
    /// The entry is for another campaign.
    #[error("seq {seq}: entry is for campaign {got:?}, expected {expected:?}")]
    WrongCampaign {
        /// Seq of the entry.
        seq: u64,
        /// Campaign expected.
        expected: String,
        /// Campaign found.
        got: String,
    },
    /// Seqs skip forward: entries are missing (or were reordered).
    #[error("gap at seq {expected}: next entry has seq {got}")]
    Gap {
        /// The seq that should come next (resend from it).
        expected: u64,
        /// The seq that came.
        got: u64,
    },
    /// A second, different entry for a seq already seen: equivocation.
    #[error("fork at seq {seq}: a different entry was already seen for this seq")]
    Fork {
        /// The seq.
        seq: u64,
    },
    /// An identical entry for a seq already seen.
    #[error("seq {seq}: duplicate of an entry already seen")]
    Duplicate {
        /// The seq.
        seq: u64,
    },
    /// `prev` does not name the previous entry.
    #[error("seq {seq}: prev {got} does not match the hash of seq {} ({expected})", .seq - 1)]
    BadPrev {
        /// The seq.
        seq: u64,
        /// The previous entry's hash.
        expected: Digest,
        /// The `prev` found.
        got: Digest,
    },
    /// A record about a region outside the source's scope.
    #[error("seq {seq}: {field}: {code} is outside the source's scope {scope}")]
    OutOfScope {
        /// The seq.
        seq: u64,
        /// The field.
        field: String,
        /// The region.
        code: RegionCode,
        /// The scope.
        scope: RegionCode,
    },
    /// A withdrawal that does not point to an earlier entry.
    #[error("seq {seq}: withdrawal target_seq {target} is not an earlier entry")]
    BadWithdrawal {
        /// The seq.
        seq: u64,
        /// Its target.
        target: u64,
    },
}

impl ChainError {
    /// The seq the fault is named at.
    pub fn seq(&self) -> u64 {
        match self {
            ChainError::BadSignature { seq, .. }
            | ChainError::NoKey { seq }
            | ChainError::UnreadableKey { seq }
            | ChainError::RetiredKey { seq, .. }
            | ChainError::BadTransition { seq, .. }
            | ChainError::TransitionConflict { seq, .. }
            | ChainError::Malformed { seq, .. }
            | ChainError::WrongSource { seq, .. }
            | ChainError::WrongCampaign { seq, .. }
            | ChainError::Fork { seq }
            | ChainError::Duplicate { seq }
            | ChainError::BadPrev { seq, .. }
            | ChainError::OutOfScope { seq, .. }
            | ChainError::BadWithdrawal { seq, .. } => *seq,
            ChainError::Gap { expected, .. } => *expected,
        }
    }

    /// The refusal code the hub answers this fault with; `None` for a duplicate, which the
    /// hub is not refusing: it answers a resend with the entry's receipt.
    pub fn code(&self) -> Option<RefusalCode> {
        Some(match self {
            ChainError::BadSignature { .. }
            | ChainError::NoKey { .. }
            | ChainError::UnreadableKey { .. } => RefusalCode::BadSignature,
            ChainError::RetiredKey { .. } => RefusalCode::RevokedKey,
            ChainError::Malformed { .. }
            | ChainError::BadWithdrawal { .. }
            | ChainError::BadTransition { .. }
            | ChainError::TransitionConflict { .. } => RefusalCode::Invalid,
            ChainError::WrongSource { .. } | ChainError::WrongCampaign { .. } => {
                RefusalCode::WrongSource
            }
            ChainError::Gap { .. } => RefusalCode::Gap,
            ChainError::Fork { .. } => RefusalCode::Fork,
            ChainError::BadPrev { .. } => RefusalCode::BadPrev,
            ChainError::OutOfScope { .. } => RefusalCode::OutOfScope,
            ChainError::Duplicate { .. } => return None,
        })
    }

    /// The seq the sender should resend from: set for a gap (entries missing or reordered),
    /// the one fault that resending fixes.
    pub fn resend_from(&self) -> Option<u64> {
        match self {
            ChainError::Gap { expected, .. } => Some(*expected),
            _ => None,
        }
    }

    /// True when the entry conflicts with the chain as held (a gap or a fork) rather than
    /// being wrong in itself: the hub answers these 409, the others 422.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ChainError::Gap { .. } | ChainError::Fork { .. })
    }
}

/// The keys of one source along its chain: each registered key signs from its first seq
/// until the next key's first seq. A key line that does not parse keeps its place (its
/// seqs verify with nothing) so a damaged registry cannot shift a rotation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySchedule {
    /// (first seq signed, key) in rotation order; `None` for a key that does not parse.
    keys: Vec<(u64, Option<VerifyingKey>)>,
}

impl KeySchedule {
    /// No key at all: nothing verifies.
    pub fn new() -> KeySchedule {
        KeySchedule::default()
    }

    /// One key signing from seq 1.
    pub fn single(key: VerifyingKey) -> KeySchedule {
        KeySchedule::new().with(1, Some(key))
    }

    /// Adds the next key in rotation order, signing from `from_seq` (`None`: a registered
    /// key that does not parse).
    pub fn with(mut self, from_seq: u64, key: Option<VerifyingKey>) -> KeySchedule {
        self.rotate(from_seq, key);
        self
    }

    /// Adds the next key in rotation order, signing from `from_seq`.
    pub fn rotate(&mut self, from_seq: u64, key: Option<VerifyingKey>) {
        self.keys.push((from_seq, key));
    }

    /// Applies a key-transition entry at `seq` naming `key`: `key` signs from `seq + 1`.
    /// Known already (the schedule was read from a registry or key history that holds it)
    /// changes nothing; a rotation already recorded for a later seq with another key is
    /// [`ChainError::TransitionConflict`] (the key in force at `seq` may not overrule it).
    pub fn apply_transition(&mut self, seq: u64, key: VerifyingKey) -> Result<(), ChainError> {
        let from = seq.saturating_add(1);
        let later: Vec<&(u64, Option<VerifyingKey>)> =
            self.keys.iter().filter(|(f, _)| *f > seq).collect();
        if later.iter().any(|(f, k)| *f == from && *k == Some(key)) {
            return Ok(());
        }
        if let Some((from_seq, _)) = later.first() {
            return Err(ChainError::TransitionConflict {
                seq,
                from_seq: *from_seq,
            });
        }
        self.keys.push((from, Some(key)));
        Ok(())
    }

    /// Every key with the first seq it signs, in rotation order (`None`: a registered key
    /// that does not parse).
    pub fn keys(&self) -> &[(u64, Option<VerifyingKey>)] {
        &self.keys
    }

    /// Why `env` (claiming `seq`, in force there the key of `slot`) does not verify:
    /// [`ChainError::RetiredKey`] when a key of this chain that the one in force replaced
    /// signed it, else the signature error.
    fn refused(&self, env: &Envelope, seq: u64, slot: usize, error: DsseError) -> ChainError {
        let (since, current) = &self.keys[slot];
        let retired = self.keys[..slot].iter().any(|(_, k)| match k {
            Some(k) if Some(k) != current.as_ref() => env.verify(ENTRY_PAYLOAD_TYPE, k).is_ok(),
            _ => false,
        });
        if retired {
            ChainError::RetiredKey { seq, since: *since }
        } else {
            ChainError::BadSignature { seq, error }
        }
    }

    /// The slot of the key in force at `seq`: the last in rotation order that starts at or
    /// before it.
    fn slot(&self, seq: u64) -> Option<usize> {
        self.keys.iter().rposition(|(from, _)| *from <= seq)
    }

    /// The key in force at `seq`.
    pub fn key_for(&self, seq: u64) -> Result<&VerifyingKey, ChainError> {
        let slot = self.slot(seq).ok_or(ChainError::NoKey { seq })?;
        self.keys[slot]
            .1
            .as_ref()
            .ok_or(ChainError::UnreadableKey { seq })
    }

    /// Verifies `env` as an entry signed by the key in force at `seq` (the one rule of
    /// [`crate::sig`]).
    pub fn verify(&self, env: &Envelope, seq: u64) -> Result<&VerifyingKey, ChainError> {
        let key = self.key_for(seq)?;
        match env.verify(ENTRY_PAYLOAD_TYPE, key) {
            Ok(()) => Ok(key),
            Err(error) => {
                let slot = self.slot(seq).unwrap_or_default();
                Err(self.refused(env, seq, slot, error))
            }
        }
    }

    /// Reads every envelope of a batch and verifies their signatures (see
    /// [`KeySchedule::verify_batch`]).
    pub fn open_batch(&self, envs: &[Envelope]) -> Vec<Opened> {
        let mut out: Vec<Opened> = envs.iter().map(Opened::read).collect();
        self.verify_batch(envs, &mut out);
        out
    }

    /// Verifies the signatures of a batch already read (`opened[i]` read from `envs[i]`
    /// by [`Opened::read`]), each under the key in force at its seq, with one Ed25519
    /// batch verification per run of entries signed by the same key. A key-transition
    /// entry of the batch ends its run, and once it verifies the entries after it are
    /// checked under the key it names (a batch may carry old-key entries, the transition
    /// and new-key entries); that key is provisional — the verifier trusts a signature
    /// only when the key it was checked with is the one its own schedule puts in force
    /// (see [`ChainVerifier::admit`]). Judging stops at the first entry that does not read
    /// or does not verify: the entries after it are left unchecked (a verifier stops there
    /// anyway, and [`ChainVerifier::admit`] checks an unchecked signature itself).
    pub fn verify_batch(&self, envs: &[Envelope], opened: &mut [Opened]) {
        self.verify_batch_with(envs, opened, None);
    }

    /// [`KeySchedule::verify_batch`] leaving the `R`s' torsion test in `debt`
    /// ([`crate::sig::verify_batch_deferring`]): the entries it marks verified are so only
    /// once `debt` settles clean. When it does not, read the envelopes again
    /// ([`Opened::read`]) and judge them with [`KeySchedule::verify_batch`].
    pub fn verify_batch_deferring(
        &self,
        envs: &[Envelope],
        opened: &mut [Opened],
        debt: &mut crate::sig::TorsionDebt,
    ) {
        self.verify_batch_with(envs, opened, Some(debt));
    }

    fn verify_batch_with(
        &self,
        envs: &[Envelope],
        opened: &mut [Opened],
        mut debt: Option<&mut crate::sig::TorsionDebt>,
    ) {
        debug_assert_eq!(envs.len(), opened.len());
        let n = envs.len().min(opened.len());
        let out = &mut opened[..n];
        let mut keys = std::borrow::Cow::Borrowed(self);
        let mut i = 0;
        while i < n {
            let Ok(first) = &out[i].entry else {
                break;
            };
            let seq = first.seq;
            let Some(slot) = keys.slot(seq) else {
                out[i].signature = SignatureCheck::Bad(ChainError::NoKey { seq });
                break;
            };
            let mut j = i + 1;
            if !is_transition(&out[i]) {
                while j < n && matches!(&out[j].entry, Ok(e) if keys.slot(e.seq) == Some(slot)) {
                    j += 1;
                    if is_transition(&out[j - 1]) {
                        break;
                    }
                }
            }
            let Some(key) = keys.keys[slot].1 else {
                out[i].signature = SignatureCheck::Bad(ChainError::UnreadableKey { seq });
                break;
            };
            let refs: Vec<&Envelope> = envs[i..j].iter().collect();
            let verdict = match debt.as_deref_mut() {
                Some(debt) => crate::entry::verify_signatures_deferring(&refs, &key, debt),
                None => verify_signatures(&refs, &key),
            };
            match verdict {
                Ok(()) => {
                    for o in &mut out[i..j] {
                        o.signature = SignatureCheck::Verified(key);
                    }
                }
                Err((k, error)) => {
                    for o in &mut out[i..i + k] {
                        o.signature = SignatureCheck::Verified(key);
                    }
                    let bad = &mut out[i + k];
                    let seq = bad.entry.as_ref().map_or(seq, |e| e.seq);
                    bad.signature =
                        SignatureCheck::Bad(keys.refused(&envs[i + k], seq, slot, error));
                    break;
                }
            }
            // A verified transition: the entries after it are checked under its key.
            if let Ok(last) = &out[j - 1].entry
                && let crate::record::Record::KeyTransition(t) = &last.record
                && let Ok(new) = t.key()
            {
                let seq = last.seq;
                if keys.to_mut().apply_transition(seq, new).is_err() {
                    break;
                }
            }
            i = j;
        }
    }
}

/// True when `o` reads as a key-transition entry.
fn is_transition(o: &Opened) -> bool {
    matches!(&o.entry, Ok(e) if matches!(e.record, crate::record::Record::KeyTransition(_)))
}

/// What is known of an envelope's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SignatureCheck {
    /// Verified under this key, the one in force at the entry's seq in the schedule
    /// [`KeySchedule::open_batch`] used (with the batch's own transitions applied).
    Verified(VerifyingKey),
    /// Refused, with why.
    Bad(ChainError),
    /// Not checked yet: [`ChainVerifier::admit`] checks it.
    Unchecked,
}

/// An envelope read as an entry, with its payload hash and what is known of its
/// signature. Made by [`Opened::read`] (signature unchecked) or
/// [`KeySchedule::open_batch`] (signatures checked in a batch); a verifier must be given
/// the `Opened` of the same envelope, opened with the same key schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    entry: Result<Entry, EntryError>,
    hash: Digest,
    signature: SignatureCheck,
}

impl Opened {
    /// Reads `env` without checking its signature. An envelope with other than exactly one
    /// signature does not read as an entry: sources sign once, and anything beside that
    /// signature would be unverified bytes kept in the log for good.
    pub fn read(env: &Envelope) -> Opened {
        let entry = match env.signatures.len() {
            1 => Entry::from_payload(&env.payload),
            n => Err(EntryError::SignatureCount(n)),
        };
        Opened {
            entry,
            hash: env.payload_hash(),
            signature: SignatureCheck::Unchecked,
        }
    }

    /// The entry, or why the payload does not read as one.
    pub fn entry(&self) -> Result<&Entry, &EntryError> {
        self.entry.as_ref()
    }

    /// SHA-256 of the payload.
    pub fn hash(&self) -> Digest {
        self.hash
    }

    /// True when the entry reads and its signature was verified under the key in force at
    /// its seq: it was made by the source's key holder (or replays what the holder made).
    pub fn authentic(&self) -> bool {
        self.entry.is_ok() && matches!(self.signature, SignatureCheck::Verified(_))
    }
}

/// The first entry of a batch that repeats a seq of `source` already in the batch: its
/// 0-based index and the seq. Entries that do not read or belong to another source are
/// passed over (each is refused with its own reason when its turn comes).
pub fn first_repeat(source: &SourceId, batch: &[Opened]) -> Option<(usize, u64)> {
    let mut seen = std::collections::HashSet::with_capacity(batch.len());
    batch.iter().enumerate().find_map(|(i, o)| match &o.entry {
        Ok(e) if e.source == *source && !seen.insert(e.seq) => Some((i, e.seq)),
        _ => None,
    })
}

/// Where a verifier finds the hashes of entries held before it started (the hub's source
/// index), to tell a resend from a fork.
pub trait History {
    /// Why a lookup failed (storage).
    type Error;
    /// The payload hash of the entry held at `seq`, if one is.
    fn hash_at(&mut self, seq: u64) -> Result<Option<Digest>, Self::Error>;
}

/// No history beyond what the verifier saw itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHistory;

impl History for NoHistory {
    type Error = Infallible;
    fn hash_at(&mut self, _seq: u64) -> Result<Option<Digest>, Infallible> {
        Ok(None)
    }
}

/// An entry [`ChainVerifier::admit`] found good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// The next entry of the chain: the verifier's head moved to it.
    Next(Entry),
    /// An identical copy of an entry already held (a resend): the chain is unchanged.
    Resent(Entry),
}

/// The verdict on one entry: admitted, or the fault that refuses it.
pub type Verdict = Result<Admitted, ChainError>;

/// Judges one source's envelopes in order against the rules of this module, from seq 1 or
/// from a known head. A refused entry changes nothing: the verifier still expects the
/// same seq after it.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    source: SourceId,
    keys: KeySchedule,
    scope: RegionCode,
    /// `None` when the caller does not know the campaign: entries are then not judged on
    /// their campaign field.
    campaign: Option<String>,
    /// Seq expected next.
    next: u64,
    /// Hash of the last accepted entry (zeros before seq 1).
    head: Digest,
    /// Hashes of the entries seen from `known_from` on, to tell a resend from a fork.
    hashes: Vec<Digest>,
    /// Seq of `hashes[0]`.
    known_from: u64,
    /// False when only the head is kept (a checker of a whole store need not hold a hash
    /// per entry); earlier seqs are then known only through a [`History`].
    remember: bool,
}

impl ChainVerifier {
    /// A verifier expecting seq 1 next, with one key for every seq.
    pub fn new(
        source: SourceId,
        key: VerifyingKey,
        scope: RegionCode,
        campaign: impl Into<String>,
    ) -> ChainVerifier {
        ChainVerifier::with_keys(
            source,
            KeySchedule::single(key),
            scope,
            Some(campaign.into()),
        )
    }

    /// A verifier expecting seq 1 next, with the source's keys along its chain; `campaign`
    /// `None` when the caller does not know it (the campaign field is then not judged).
    pub fn with_keys(
        source: SourceId,
        keys: KeySchedule,
        scope: RegionCode,
        campaign: Option<String>,
    ) -> ChainVerifier {
        ChainVerifier {
            source,
            keys,
            scope,
            campaign,
            next: 1,
            head: Digest::ZERO,
            hashes: Vec::new(),
            known_from: 1,
            remember: true,
        }
    }

    /// Resumes after a known head: entries up to `seq` are held, the last with hash `head`.
    pub fn resume(mut self, seq: u64, head: Digest) -> ChainVerifier {
        self.resync(seq, head);
        self
    }

    /// Keeps only the head, not a hash per entry seen: earlier seqs are then known only
    /// through the [`History`] given to [`ChainVerifier::admit`] (an unknown one is a fork).
    pub fn without_memory(mut self) -> ChainVerifier {
        self.remember = false;
        self.hashes.clear();
        self
    }

    /// Continues as if the chain held up to `seq` with hash `head`: after a fault, a checker
    /// of a whole store re-synchronises at the entry it found there, so the next entry is
    /// not blamed for its predecessor's damage.
    pub fn resync(&mut self, seq: u64, head: Digest) {
        if seq == 0 {
            self.next = 1;
            self.head = Digest::ZERO;
            self.hashes.clear();
            self.known_from = 1;
            return;
        }
        self.next = seq + 1;
        self.head = head;
        self.hashes.clear();
        if self.remember {
            self.hashes.push(head);
        }
        self.known_from = seq;
    }

    /// The source whose chain this is.
    pub fn source(&self) -> &SourceId {
        &self.source
    }

    /// The source's keys.
    pub fn keys(&self) -> &KeySchedule {
        &self.keys
    }

    /// A key rotation: `key` signs from `from_seq` on.
    pub fn rotate(&mut self, from_seq: u64, key: VerifyingKey) {
        self.keys.rotate(from_seq, Some(key));
    }

    /// The seq expected next.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// The hash of the last accepted entry (zeros before seq 1).
    pub fn head(&self) -> Digest {
        self.head
    }

    /// The hash this verifier saw at `seq`, if it kept it.
    fn known(&self, seq: u64) -> Option<Digest> {
        let i = usize::try_from(seq.checked_sub(self.known_from)?).ok()?;
        self.hashes.get(i).copied()
    }

    fn accept(&mut self, hash: Digest) {
        if self.remember {
            self.hashes.push(hash);
        }
        self.head = hash;
        self.next += 1;
    }

    /// Checks the next envelope and, when it is good, accepts it. A resend of an entry
    /// already seen is [`ChainError::Duplicate`].
    pub fn push(&mut self, env: &Envelope) -> Result<Entry, ChainError> {
        let Ok(verdict) = self.admit(env, Opened::read(env), &mut NoHistory);
        match verdict? {
            Admitted::Next(entry) => Ok(entry),
            Admitted::Resent(entry) => Err(ChainError::Duplicate { seq: entry.seq }),
        }
    }

    /// Judges `env` (opened as `opened`: see [`Opened`]) under every rule of this module in
    /// their order; an entry below the expected seq is compared with the one `history`
    /// holds (or, failing that, the one this verifier saw). The outer `Err` is a failed
    /// lookup in `history`; the verdict is inside.
    pub fn admit<H: History>(
        &mut self,
        env: &Envelope,
        opened: Opened,
        history: &mut H,
    ) -> Result<Verdict, H::Error> {
        let expected = self.next;
        let Opened {
            entry,
            hash,
            signature,
        } = opened;
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                // Unreadable under a bad signature is damage, not a malformed entry.
                return Ok(Err(match self.keys.verify(env, expected) {
                    Err(e) => e,
                    Ok(_) => ChainError::Malformed {
                        seq: expected,
                        error,
                    },
                }));
            }
        };
        if entry.source != self.source {
            return Ok(Err(ChainError::WrongSource {
                seq: entry.seq,
                expected: self.source.clone(),
                got: entry.source,
            }));
        }
        if let Some(campaign) = &self.campaign
            && entry.campaign != *campaign
        {
            return Ok(Err(ChainError::WrongCampaign {
                seq: entry.seq,
                expected: campaign.clone(),
                got: entry.campaign,
            }));
        }
        // Before any judgement on seqs: an unsigned claim is no evidence of a fork.
        // A signature checked beforehand counts only under the key this verifier puts in
        // force at the seq (the batch's provisional transitions, or a registry that changed
        // since, may have named another); otherwise it is checked again here.
        let signed = match signature {
            SignatureCheck::Verified(k) if self.keys.key_for(entry.seq) == Ok(&k) => Ok(()),
            SignatureCheck::Bad(e) => Err(e),
            SignatureCheck::Verified(_) | SignatureCheck::Unchecked => {
                self.keys.verify(env, entry.seq).map(|_| ())
            }
        };
        if let Err(e) = signed {
            return Ok(Err(e));
        }
        if entry.seq < expected {
            let held = match history.hash_at(entry.seq)? {
                Some(h) => Some(h),
                None => self.known(entry.seq),
            };
            return Ok(match held {
                Some(h) if h == hash => Ok(Admitted::Resent(entry)),
                _ => Err(ChainError::Fork { seq: entry.seq }),
            });
        }
        if let Err(e) = self.link(&entry) {
            return Ok(Err(e));
        }
        // Rule 7: a key transition proves its new key and does not overrule a rotation
        // recorded for a later seq; from the next seq only its key signs.
        match entry.transition() {
            Ok(None) => {}
            Ok(Some(new)) => {
                let mut keys = self.keys.clone();
                if let Err(e) = keys.apply_transition(entry.seq, new) {
                    return Ok(Err(e));
                }
                self.keys = keys;
            }
            Err(error) => {
                return Ok(Err(ChainError::BadTransition {
                    seq: entry.seq,
                    error,
                }));
            }
        }
        self.accept(hash);
        Ok(Ok(Admitted::Next(entry)))
    }

    /// Rules 4 (forward), 5 and 6 for an entry at or above the expected seq.
    fn link(&self, entry: &Entry) -> Result<(), ChainError> {
        if entry.seq > self.next {
            return Err(ChainError::Gap {
                expected: self.next,
                got: entry.seq,
            });
        }
        if entry.prev != self.head {
            return Err(ChainError::BadPrev {
                seq: entry.seq,
                expected: self.head,
                got: entry.prev,
            });
        }
        check_entry_scope(entry, self.scope)
    }

    /// Every link fault of `entry` (whose payload hashes to `hash`), in rule order: its
    /// position (a gap, a fork or a duplicate), its `prev`, its scope. Source, campaign and
    /// signature are the caller's to judge first. Whatever was found, the chain then
    /// continues from this entry (see [`ChainVerifier::resync`]).
    pub fn audit(&mut self, entry: &Entry, hash: Digest) -> Vec<ChainError> {
        let mut faults = Vec::new();
        if entry.seq < self.next {
            faults.push(match self.known(entry.seq) {
                Some(h) if h == hash => ChainError::Duplicate { seq: entry.seq },
                _ => ChainError::Fork { seq: entry.seq },
            });
        } else if entry.seq > self.next {
            faults.push(ChainError::Gap {
                expected: self.next,
                got: entry.seq,
            });
        }
        if entry.prev != self.head {
            faults.push(ChainError::BadPrev {
                seq: entry.seq,
                expected: self.head,
                got: entry.prev,
            });
        }
        if let Err(e) = check_entry_scope(entry, self.scope) {
            faults.push(e);
        }
        // The key schedule of a whole-store check comes from the registry the log gives
        // (which applied every transition); the transition itself must prove its key.
        if let Err(error) = entry.transition() {
            faults.push(ChainError::BadTransition {
                seq: entry.seq,
                error,
            });
        }
        if faults.is_empty() {
            self.accept(hash);
        } else {
            self.resync(entry.seq, hash);
        }
        faults
    }
}

/// Rule 6: scope and withdrawal checks, which need only the entry and the source's scope.
pub fn check_entry_scope(entry: &Entry, scope: RegionCode) -> Result<(), ChainError> {
    for (field, code) in entry.record.regions() {
        if !code.is_within(scope) {
            return Err(ChainError::OutOfScope {
                seq: entry.seq,
                field,
                code,
                scope,
            });
        }
    }
    if let Record::Withdrawal(w) = &entry.record
        && w.target_seq >= entry.seq
    {
        return Err(ChainError::BadWithdrawal {
            seq: entry.seq,
            target: w.target_seq,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use ed25519_dalek::SigningKey;

    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn id(s: &str) -> SourceId {
        SourceId::parse(s).unwrap_or_else(|e| panic!("test setup: {e}"))
    }

    fn region(s: &str) -> RegionCode {
        RegionCode::parse(s).unwrap_or_else(|e| panic!("test setup: {e}"))
    }

    fn record(json: &str) -> Record {
        let v: serde_json::Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("test setup: {e}"));
        Record::from_value(&v).unwrap_or_else(|p| panic!("test setup: {json}: {p:?}"))
    }

    fn activity(title: &str, region: &str) -> Record {
        record(&format!(
            r#"{{"kind":"activity","region":"{region}","date":"2018-11-20","category":"training","title":"{title}"}}"#
        ))
    }

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_542_679_200, 0).unwrap_or_default()
    }

    /// Key 1 signs seqs 1‥5, key 2 (the rotation) from 6 on.
    const ROTATION: u64 = 6;

    fn signer(seq: u64) -> SigningKey {
        key(if seq < ROTATION { 1 } else { 2 })
    }

    fn schedule() -> KeySchedule {
        KeySchedule::single(key(1).verifying_key()).with(ROTATION, Some(key(2).verifying_key()))
    }

    fn verifier() -> ChainVerifier {
        ChainVerifier::with_keys(
            id("gd-rrt"),
            schedule(),
            region("440000"),
            Some("2018".into()),
        )
    }

    /// A valid chain of 10 entries across the rotation: seq i at index i - 1.
    fn chain() -> (Vec<Entry>, Vec<Envelope>) {
        let mut prev = Digest::ZERO;
        let mut entries = Vec::new();
        let mut envs = Vec::new();
        for seq in 1..=10 {
            let e = Entry {
                source: id("gd-rrt"),
                seq,
                prev,
                recorded_at: at(),
                campaign: "2018".into(),
                record: activity(&format!("t{seq}"), "440100"),
            };
            let env = e.sign(&signer(seq));
            prev = env.payload_hash();
            entries.push(e);
            envs.push(env);
        }
        (entries, envs)
    }

    fn env_at(seq: u64) -> Envelope {
        chain().1[seq as usize - 1].clone()
    }

    fn hash_at(seq: u64) -> Digest {
        env_at(seq).payload_hash()
    }

    /// Entry `seq` of the chain with `change` applied, signed by `key`.
    fn made(seq: u64, key: &SigningKey, change: impl FnOnce(&mut Entry)) -> Envelope {
        let mut e = chain().0[seq as usize - 1].clone();
        change(&mut e);
        e.sign(key)
    }

    /// Entry `seq` with other content, correctly signed.
    fn altered(seq: u64) -> Envelope {
        made(seq, &signer(seq), |e| {
            e.record = activity("other", "440100")
        })
    }

    /// The chain's seqs 1‥n, in order.
    fn upto(n: u64) -> Vec<Envelope> {
        chain().1[..n as usize].to_vec()
    }

    fn then(mut envs: Vec<Envelope>, more: impl IntoIterator<Item = Envelope>) -> Vec<Envelope> {
        envs.extend(more);
        envs
    }

    /// Pushes `envs` into a fresh verifier: the count accepted, or the first fault.
    fn run(envs: &[Envelope]) -> Result<u64, ChainError> {
        let mut v = verifier();
        for env in envs {
            v.push(env)?;
        }
        Ok(v.next_seq() - 1)
    }

    fn check(cases: Vec<(&str, Vec<Envelope>, Result<u64, ChainError>)>) {
        for (what, envs, want) in cases {
            assert_eq!(run(&envs), want, "{what}");
        }
    }

    fn bad_sig(seq: u64, by: &SigningKey) -> ChainError {
        ChainError::BadSignature {
            seq,
            error: DsseError::BadSignature {
                keyid: crate::dsse::key_id(&by.verifying_key()),
            },
        }
    }

    fn unknown_key(seq: u64, expected: &SigningKey) -> ChainError {
        ChainError::BadSignature {
            seq,
            error: DsseError::UnknownKey {
                keyid: crate::dsse::key_id(&expected.verifying_key()),
            },
        }
    }

    #[test]
    fn an_intact_chain_verifies_across_a_key_rotation() {
        check(vec![("all ten", upto(10), Ok(10))]);
        let mut v = verifier();
        for env in upto(10) {
            assert!(v.push(&env).is_ok());
        }
        assert_eq!((v.next_seq(), v.head()), (11, hash_at(10)));
    }

    #[test]
    fn rule_1_an_unreadable_payload_is_malformed_or_damage() {
        let signed_junk = Envelope::sign(&key(1), ENTRY_PAYLOAD_TYPE, b"{}".to_vec());
        let got = run(&then(upto(2), [signed_junk]));
        assert!(
            matches!(got, Err(ChainError::Malformed { seq: 3, .. })),
            "{got:?}"
        );
        let mut cut = env_at(3);
        cut.payload.truncate(20);
        check(vec![(
            "cut short under the original signature",
            then(upto(2), [cut]),
            Err(bad_sig(3, &key(1))),
        )]);
    }

    #[test]
    fn rule_2_the_entry_names_the_chains_source_and_campaign() {
        check(vec![
            (
                "another source",
                then(upto(2), [made(3, &key(1), |e| e.source = id("gx-rrt"))]),
                Err(ChainError::WrongSource {
                    seq: 3,
                    expected: id("gd-rrt"),
                    got: id("gx-rrt"),
                }),
            ),
            (
                "another campaign",
                then(upto(2), [made(3, &key(1), |e| e.campaign = "2019".into())]),
                Err(ChainError::WrongCampaign {
                    seq: 3,
                    expected: "2018".into(),
                    got: "2019".into(),
                }),
            ),
        ]);
        // A verifier not told the campaign does not judge it.
        let mut v = ChainVerifier::with_keys(id("gd-rrt"), schedule(), region("440000"), None);
        let other = made(1, &key(1), |e| e.campaign = "2019".into());
        assert!(v.push(&other).is_ok());
    }

    #[test]
    fn rule_3_the_key_in_force_at_the_seq_signs() {
        let mut flipped = env_at(3);
        flipped.signatures[0].sig[5] ^= 1;
        let mut tampered = env_at(3);
        tampered.payload = altered(3).payload;
        check(vec![
            (
                "a flipped signature bit",
                then(upto(2), [flipped]),
                Err(bad_sig(3, &key(1))),
            ),
            (
                "content changed after signing",
                then(upto(2), [tampered]),
                Err(bad_sig(3, &key(1))),
            ),
            (
                "the rotated-out key after the rotation: named as retired",
                then(upto(6), [made(7, &key(1), |_| {})]),
                Err(ChainError::RetiredKey {
                    seq: 7,
                    since: ROTATION,
                }),
            ),
            (
                "the new key before the rotation",
                then(upto(2), [made(3, &key(2), |_| {})]),
                Err(unknown_key(3, &key(1))),
            ),
            (
                "the new key under the old key's id",
                then(
                    upto(2),
                    [{
                        let mut env = made(3, &key(2), |_| {});
                        env.signatures[0].keyid = crate::dsse::key_id(&key(1).verifying_key());
                        env
                    }],
                ),
                Err(bad_sig(3, &key(1))),
            ),
        ]);
        // No key registered for the seq, and a key that does not parse.
        let mut v = ChainVerifier::with_keys(
            id("gd-rrt"),
            KeySchedule::new().with(3, Some(key(1).verifying_key())),
            region("440000"),
            None,
        );
        assert_eq!(v.push(&env_at(1)), Err(ChainError::NoKey { seq: 1 }));
        let mut v = ChainVerifier::with_keys(
            id("gd-rrt"),
            schedule().with(8, None),
            region("440000"),
            None,
        )
        .resume(7, hash_at(7));
        assert_eq!(
            v.push(&env_at(8)),
            Err(ChainError::UnreadableKey { seq: 8 })
        );
        assert_eq!(
            KeySchedule::new().key_for(1),
            Err(ChainError::NoKey { seq: 1 })
        );
    }

    #[test]
    fn rule_4_resends_forks_gaps_and_reordering() {
        let swapped = {
            let mut v = upto(6);
            v.swap(3, 4);
            v
        };
        check(vec![
            (
                "seq 4 missing",
                then(upto(3), [env_at(5)]),
                Err(ChainError::Gap {
                    expected: 4,
                    got: 5,
                }),
            ),
            (
                "4 and 5 swapped",
                swapped,
                Err(ChainError::Gap {
                    expected: 4,
                    got: 5,
                }),
            ),
            (
                "3 resent after 5",
                then(upto(5), [env_at(3)]),
                Err(ChainError::Duplicate { seq: 3 }),
            ),
            (
                "other content for 3 after 5",
                then(upto(5), [altered(3)]),
                Err(ChainError::Fork { seq: 3 }),
            ),
            (
                "5 resent at once",
                then(upto(5), [env_at(5)]),
                Err(ChainError::Duplicate { seq: 5 }),
            ),
        ]);
    }

    #[test]
    fn rule_5_prev_names_the_previous_entry() {
        check(vec![
            (
                "prev skips an entry",
                then(upto(4), [made(5, &key(1), |e| e.prev = hash_at(3))]),
                Err(ChainError::BadPrev {
                    seq: 5,
                    expected: hash_at(4),
                    got: hash_at(3),
                }),
            ),
            (
                "a first entry with a prev",
                vec![made(1, &key(1), |e| e.prev = Digest::of(b"x"))],
                Err(ChainError::BadPrev {
                    seq: 1,
                    expected: Digest::ZERO,
                    got: Digest::of(b"x"),
                }),
            ),
            (
                "an entry changed and re-signed breaks the next link",
                then(upto(2), [altered(3), env_at(4)]),
                Err(ChainError::BadPrev {
                    seq: 4,
                    expected: altered(3).payload_hash(),
                    got: hash_at(3),
                }),
            ),
        ]);
    }

    #[test]
    fn rule_6_scope_and_withdrawals() {
        let withdraw = |target: u64| {
            record(&format!(
                r#"{{"kind":"withdrawal","target_seq":{target},"reason":"r"}}"#
            ))
        };
        check(vec![
            (
                "a region of another province",
                then(
                    upto(2),
                    [made(3, &key(1), |e| e.record = activity("t", "110105"))],
                ),
                Err(ChainError::OutOfScope {
                    seq: 3,
                    field: "region".into(),
                    code: region("110105"),
                    scope: region("440000"),
                }),
            ),
            (
                "a withdrawal of itself",
                then(upto(2), [made(3, &key(1), |e| e.record = withdraw(3))]),
                Err(ChainError::BadWithdrawal { seq: 3, target: 3 }),
            ),
            (
                "a withdrawal of a later seq",
                then(upto(2), [made(3, &key(1), |e| e.record = withdraw(9))]),
                Err(ChainError::BadWithdrawal { seq: 3, target: 9 }),
            ),
            (
                "a withdrawal of an earlier seq",
                then(upto(2), [made(3, &key(1), |e| e.record = withdraw(2))]),
                Ok(3),
            ),
        ]);
    }

    #[test]
    fn the_rules_are_judged_in_order() {
        let unsigned = |mut env: Envelope| {
            env.signatures[0].sig[0] ^= 1;
            env
        };
        check(vec![
            (
                "another source, unsigned: the source is named",
                then(
                    upto(2),
                    [unsigned(made(3, &key(1), |e| e.source = id("gx-rrt")))],
                ),
                Err(ChainError::WrongSource {
                    seq: 3,
                    expected: id("gd-rrt"),
                    got: id("gx-rrt"),
                }),
            ),
            (
                "another campaign past a gap: the campaign is named",
                then(upto(2), [made(5, &key(1), |e| e.campaign = "2019".into())]),
                Err(ChainError::WrongCampaign {
                    seq: 5,
                    expected: "2018".into(),
                    got: "2019".into(),
                }),
            ),
            (
                "an unsigned second entry for a held seq is no fork",
                then(upto(5), [unsigned(altered(3))]),
                Err(bad_sig(3, &key(1))),
            ),
            (
                "past a gap the prev is not judged",
                then(upto(2), [made(5, &key(1), |e| e.prev = Digest::ZERO)]),
                Err(ChainError::Gap {
                    expected: 3,
                    got: 5,
                }),
            ),
            (
                "a bad prev is named before the scope",
                then(
                    upto(2),
                    [made(3, &key(1), |e| {
                        e.prev = Digest::ZERO;
                        e.record = activity("t", "110105");
                    })],
                ),
                Err(ChainError::BadPrev {
                    seq: 3,
                    expected: hash_at(2),
                    got: Digest::ZERO,
                }),
            ),
        ]);
    }

    #[test]
    fn a_refused_entry_changes_nothing() {
        let mut v = verifier();
        for env in upto(3) {
            assert!(v.push(&env).is_ok());
        }
        for bad in [env_at(5), altered(2), env_at(3), made(4, &key(2), |_| {})] {
            assert!(v.push(&bad).is_err());
            assert_eq!((v.next_seq(), v.head()), (4, hash_at(3)));
        }
        assert!(v.push(&env_at(4)).is_ok());
    }

    /// A store of held hashes, as the hub's source index, that counts its lookups.
    struct Held {
        hashes: Vec<Digest>,
        lookups: Vec<u64>,
        broken: bool,
    }

    impl History for Held {
        type Error = String;
        fn hash_at(&mut self, seq: u64) -> Result<Option<Digest>, String> {
            self.lookups.push(seq);
            if self.broken {
                return Err("disk on fire".into());
            }
            Ok(self.hashes.get(seq as usize - 1).copied())
        }
    }

    #[test]
    fn admit_answers_resends_from_the_history() {
        let held = || Held {
            hashes: (1..=5).map(hash_at).collect(),
            lookups: Vec::new(),
            broken: false,
        };
        let resumed = || verifier().resume(5, hash_at(5));
        let admit = |v: &mut ChainVerifier, h: &mut Held, env: Envelope| {
            v.admit(&env, Opened::read(&env), h)
        };

        let (mut v, mut h) = (resumed(), held());
        let entry3 = chain().0[2].clone();
        assert_eq!(
            admit(&mut v, &mut h, env_at(3)),
            Ok(Ok(Admitted::Resent(entry3)))
        );
        assert_eq!(
            admit(&mut v, &mut h, altered(2)),
            Ok(Err(ChainError::Fork { seq: 2 }))
        );
        let entry6 = chain().0[5].clone();
        assert_eq!(
            admit(&mut v, &mut h, env_at(6)),
            Ok(Ok(Admitted::Next(entry6)))
        );
        // Only the seqs below the expected one were looked up.
        assert_eq!(h.lookups, vec![3, 2]);
        // What the history does not hold, the verifier may still have seen.
        let entry6 = chain().0[5].clone();
        assert_eq!(
            admit(&mut v, &mut h, env_at(6)),
            Ok(Ok(Admitted::Resent(entry6)))
        );

        let (mut v, mut h) = (resumed(), held());
        h.broken = true;
        assert_eq!(admit(&mut v, &mut h, env_at(3)), Err("disk on fire".into()));
        assert_eq!(v.next_seq(), 6);
    }

    #[test]
    fn open_batch_verifies_runs_per_key_and_stops_at_the_first_fault() {
        let s = schedule();
        let all = s.open_batch(&upto(10));
        assert!(all.iter().all(Opened::authentic));
        assert_eq!(all[3].hash(), hash_at(4));
        assert_eq!(all[3].entry().map(|e| e.seq), Ok(4));

        // A bad signature at seq 7: 1‥6 verified, 7 refused, the rest unchecked.
        let mut envs = upto(10);
        envs[6].signatures[0].sig[1] ^= 1;
        let opened = s.open_batch(&envs);
        assert!(opened[..6].iter().all(Opened::authentic));
        assert_eq!(
            opened[6].signature,
            SignatureCheck::Bad(bad_sig(7, &key(2)))
        );
        assert!(
            opened[7..]
                .iter()
                .all(|o| o.signature == SignatureCheck::Unchecked)
        );

        // An unchecked signature is checked on admission: a forged entry after the first
        // fault is still caught.
        let mut v = verifier().resume(7, hash_at(7));
        let mut forged = env_at(8);
        forged.payload = altered(8).payload;
        let got = v.admit(&forged, Opened::read(&forged), &mut NoHistory);
        assert_eq!(got, Ok(Err(bad_sig(8, &key(2)))));

        // An unreadable entry ends the judging; keys that are missing or unreadable refuse.
        let mut envs = upto(4);
        envs[1].payload = b"nonsense".to_vec();
        let opened = s.open_batch(&envs);
        assert!(opened[0].authentic());
        assert!(
            opened[1..]
                .iter()
                .all(|o| o.signature == SignatureCheck::Unchecked)
        );
        let late = KeySchedule::new().with(3, Some(key(1).verifying_key()));
        assert_eq!(
            late.open_batch(&upto(1))[0].signature,
            SignatureCheck::Bad(ChainError::NoKey { seq: 1 })
        );
        let unreadable = schedule().with(8, None);
        let opened = unreadable.open_batch(&upto(9));
        assert!(opened[..7].iter().all(Opened::authentic));
        assert_eq!(
            opened[7].signature,
            SignatureCheck::Bad(ChainError::UnreadableKey { seq: 8 })
        );
    }

    #[test]
    fn first_repeat_finds_a_seq_sent_twice() {
        let read = |envs: &[Envelope]| envs.iter().map(Opened::read).collect::<Vec<_>>();
        let me = id("gd-rrt");
        assert_eq!(first_repeat(&me, &read(&upto(5))), None);
        assert_eq!(
            first_repeat(&me, &read(&then(upto(5), [env_at(2)]))),
            Some((5, 2))
        );
        assert_eq!(
            first_repeat(&me, &read(&then(upto(3), [altered(3), altered(3)]))),
            Some((3, 3))
        );
        // Another source's entries and unreadable ones are left to their own refusal.
        let other = made(2, &key(1), |e| e.source = id("gx-rrt"));
        let mut junk = env_at(2);
        junk.payload = b"x".to_vec();
        assert_eq!(
            first_repeat(&me, &read(&then(upto(2), [other, junk.clone(), junk]))),
            None
        );
    }

    #[test]
    fn audit_names_every_link_fault_and_continues() {
        let (entries, envs) = chain();
        let mut v = verifier().without_memory();
        for (e, env) in entries.iter().zip(&envs).take(4) {
            assert_eq!(v.audit(e, env.payload_hash()), vec![]);
        }
        // Seq 7 where 5 is due, with a prev of zeros and a region out of scope.
        let mut bad = entries[6].clone();
        bad.prev = Digest::ZERO;
        bad.record = activity("t", "110105");
        let bad_hash = bad.sign(&key(2)).payload_hash();
        assert_eq!(
            v.audit(&bad, bad_hash),
            vec![
                ChainError::Gap {
                    expected: 5,
                    got: 7
                },
                ChainError::BadPrev {
                    seq: 7,
                    expected: hash_at(4),
                    got: Digest::ZERO
                },
                ChainError::OutOfScope {
                    seq: 7,
                    field: "region".into(),
                    code: region("110105"),
                    scope: region("440000"),
                },
            ]
        );
        // The chain continues from the faulty entry: seq 8 is due, linked to it.
        assert_eq!((v.next_seq(), v.head()), (8, bad_hash));
        let mut next = entries[7].clone();
        next.prev = bad_hash;
        assert_eq!(v.audit(&next, Digest::of(b"8")), vec![]);
        // Going back is a fork (without memory nothing earlier is known).
        assert_eq!(
            v.audit(&entries[2], hash_at(3)),
            vec![
                ChainError::Fork { seq: 3 },
                ChainError::BadPrev {
                    seq: 3,
                    expected: Digest::of(b"8"),
                    got: hash_at(2)
                }
            ]
        );
        // With memory, a resend is told from a fork.
        let mut v = verifier();
        for (e, env) in entries.iter().zip(&envs).take(4) {
            assert_eq!(v.audit(e, env.payload_hash()), vec![]);
        }
        assert_eq!(
            v.audit(&entries[3], hash_at(4)),
            vec![
                ChainError::Duplicate { seq: 4 },
                ChainError::BadPrev {
                    seq: 4,
                    expected: hash_at(4),
                    got: hash_at(3)
                }
            ]
        );
    }

    #[test]
    fn resume_and_resync_start_from_a_known_head() {
        let mut v = verifier().resume(5, hash_at(5));
        assert_eq!(v.next_seq(), 6);
        assert_eq!(v.push(&env_at(5)), Err(ChainError::Duplicate { seq: 5 }));
        // Below the resumed head nothing is known: another entry there is a fork.
        assert_eq!(v.push(&env_at(4)), Err(ChainError::Fork { seq: 4 }));
        assert!(v.push(&env_at(6)).is_ok());
        v.resync(0, Digest::of(b"ignored"));
        assert_eq!((v.next_seq(), v.head()), (1, Digest::ZERO));
        assert!(v.push(&env_at(1)).is_ok());
        let mut forgetful = verifier().without_memory().resume(5, hash_at(5));
        assert_eq!(forgetful.push(&env_at(5)), Err(ChainError::Fork { seq: 5 }));
        // A rotation added to a running verifier applies from its seq.
        let mut v = ChainVerifier::new(
            id("gd-rrt"),
            key(1).verifying_key(),
            region("440000"),
            "2018",
        );
        for env in upto(5) {
            assert!(v.push(&env).is_ok());
        }
        assert_eq!(v.push(&env_at(6)), Err(unknown_key(6, &key(1))));
        v.rotate(6, key(2).verifying_key());
        assert!(v.push(&env_at(6)).is_ok());
        assert_eq!(v.keys(), &schedule());
        assert_eq!(v.source(), &id("gd-rrt"));
    }

    #[test]
    fn each_fault_maps_to_the_hubs_refusal() {
        let d = Digest::ZERO;
        let cases: Vec<(ChainError, Option<RefusalCode>, Option<u64>, bool)> = vec![
            (
                bad_sig(3, &key(1)),
                Some(RefusalCode::BadSignature),
                None,
                false,
            ),
            (
                ChainError::NoKey { seq: 3 },
                Some(RefusalCode::BadSignature),
                None,
                false,
            ),
            (
                ChainError::UnreadableKey { seq: 3 },
                Some(RefusalCode::BadSignature),
                None,
                false,
            ),
            (
                ChainError::Malformed {
                    seq: 3,
                    error: EntryError::Malformed("x".into()),
                },
                Some(RefusalCode::Invalid),
                None,
                false,
            ),
            (
                ChainError::WrongSource {
                    seq: 3,
                    expected: id("gd-rrt"),
                    got: id("gx-rrt"),
                },
                Some(RefusalCode::WrongSource),
                None,
                false,
            ),
            (
                ChainError::WrongCampaign {
                    seq: 3,
                    expected: "2018".into(),
                    got: "2019".into(),
                },
                Some(RefusalCode::WrongSource),
                None,
                false,
            ),
            (
                ChainError::Gap {
                    expected: 3,
                    got: 5,
                },
                Some(RefusalCode::Gap),
                Some(3),
                true,
            ),
            (
                ChainError::Fork { seq: 3 },
                Some(RefusalCode::Fork),
                None,
                true,
            ),
            (ChainError::Duplicate { seq: 3 }, None, None, false),
            (
                ChainError::BadPrev {
                    seq: 3,
                    expected: d,
                    got: d,
                },
                Some(RefusalCode::BadPrev),
                None,
                false,
            ),
            (
                ChainError::OutOfScope {
                    seq: 3,
                    field: "region".into(),
                    code: region("110105"),
                    scope: region("440000"),
                },
                Some(RefusalCode::OutOfScope),
                None,
                false,
            ),
            (
                ChainError::BadWithdrawal { seq: 3, target: 4 },
                Some(RefusalCode::Invalid),
                None,
                false,
            ),
        ];
        for (e, code, resend, conflict) in cases {
            assert_eq!(
                (e.code(), e.resend_from(), e.is_conflict()),
                (code, resend, conflict),
                "{e}"
            );
            assert_eq!(e.seq(), 3, "{e}");
            assert!(e.to_string().contains('3'), "{e}");
        }
    }

    // ---- rule 7: key transitions --------------------------------------------------

    /// How one seq of a generated chain is made.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Step {
        /// An activity, signed by the key in force.
        Record,
        /// A key transition to the next key, signed by the key in force.
        Transition,
    }

    /// What a dishonest seq does instead.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fault {
        /// Signed by the key the last transition retired (a stranger's if none did).
        OldKey,
        /// Signed by a key the chain never had.
        Stranger,
        /// A transition whose proof is the old key's, not the new key's.
        ForeignProof,
        /// A transition whose proof was made for another `prev`.
        MovedProof,
    }

    const STRANGER: u8 = 200;

    /// Seqs 1‥ of `steps`, key `k` being `key(k)` from 1, each transition handing over to
    /// the next; `fault` makes one seq dishonest. Returns the envelopes.
    fn rotating(steps: &[Step], fault: Option<(usize, Fault)>) -> Vec<Envelope> {
        let mut prev = Digest::ZERO;
        let mut signer = 1u8;
        let mut out = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let seq = i as u64 + 1;
            let fault = fault.filter(|(at, _)| *at == i).map(|(_, f)| f);
            let mut e = match step {
                Step::Transition => Entry::key_transition(
                    id("gd-rrt"),
                    seq,
                    prev,
                    at(),
                    "2018".into(),
                    &key(signer + 1),
                ),
                Step::Record => Entry {
                    source: id("gd-rrt"),
                    seq,
                    prev,
                    recorded_at: at(),
                    campaign: "2018".into(),
                    record: activity(&format!("t{seq}"), "440100"),
                },
            };
            let mut by = key(signer);
            match fault {
                Some(Fault::OldKey) => by = key(if signer > 1 { signer - 1 } else { STRANGER }),
                Some(Fault::Stranger) => by = key(STRANGER),
                Some(Fault::ForeignProof) => {
                    let mut forged = e.clone();
                    forged.record = Entry::key_transition(
                        id("gd-rrt"),
                        seq,
                        prev,
                        at(),
                        "2018".into(),
                        &key(signer),
                    )
                    .record;
                    if let (Record::KeyTransition(t), Record::KeyTransition(f)) =
                        (&mut e.record, forged.record)
                    {
                        t.proof = f.proof;
                    }
                }
                Some(Fault::MovedProof) => {
                    let other = Entry::key_transition(
                        id("gd-rrt"),
                        seq,
                        Digest([7; 32]),
                        at(),
                        "2018".into(),
                        &key(signer + 1),
                    );
                    e.record = other.record;
                }
                None => {}
            }
            let env = e.sign(&by);
            if *step == Step::Transition {
                signer += 1;
            }
            prev = env.payload_hash();
            out.push(env);
        }
        out
    }

    fn from_key_1() -> ChainVerifier {
        ChainVerifier::new(
            id("gd-rrt"),
            key(1).verifying_key(),
            region("440000"),
            "2018",
        )
    }

    /// Pushes `envs` one by one: the count accepted, or the first fault.
    fn push_all(mut v: ChainVerifier, envs: &[Envelope]) -> Result<u64, ChainError> {
        for env in envs {
            v.push(env)?;
        }
        Ok(v.next_seq() - 1)
    }

    /// The hub's way: one batch opened against the schedule, then admitted in order.
    fn admit_all(mut v: ChainVerifier, envs: &[Envelope]) -> Result<u64, ChainError> {
        let opened = v.keys().clone().open_batch(envs);
        for (env, o) in envs.iter().zip(opened) {
            match v.admit(env, o, &mut NoHistory) {
                Ok(Ok(Admitted::Next(_))) => {}
                Ok(Ok(Admitted::Resent(e))) => return Err(ChainError::Duplicate { seq: e.seq }),
                Ok(Err(e)) => return Err(e),
            }
        }
        Ok(v.next_seq() - 1)
    }

    #[test]
    fn a_key_transition_hands_the_chain_to_its_new_key() {
        use Step::{Record as R, Transition as T};
        let envs = rotating(&[R, R, T, R, R, T, R, R], None);
        let mut v = from_key_1();
        for env in &envs {
            v.push(env).unwrap_or_else(|e| panic!("{e}"));
        }
        // The schedule the chain itself gives: key 2 from seq 4, key 3 from seq 7.
        assert_eq!(
            v.keys().keys(),
            &[
                (1, Some(key(1).verifying_key())),
                (4, Some(key(2).verifying_key())),
                (7, Some(key(3).verifying_key())),
            ]
        );
        // One batch mixing old-key entries, the transitions and new-key entries.
        assert_eq!(admit_all(from_key_1(), &envs), Ok(8));
        assert!(
            from_key_1()
                .keys()
                .open_batch(&envs)
                .iter()
                .all(Opened::authentic)
        );
    }

    #[test]
    fn after_a_transition_the_old_key_is_refused_by_name() {
        use Step::{Record as R, Transition as T};
        let envs = rotating(&[R, R, T, R], Some((3, Fault::OldKey)));
        let want = Err(ChainError::RetiredKey { seq: 4, since: 4 });
        assert_eq!(push_all(from_key_1(), &envs), want);
        assert_eq!(admit_all(from_key_1(), &envs), want);
        let e = ChainError::RetiredKey { seq: 4, since: 4 };
        assert_eq!(e.code(), Some(RefusalCode::RevokedKey));
        assert!(e.to_string().contains("retired"), "{e}");
    }

    #[test]
    fn a_transition_must_be_signed_by_the_key_in_force_and_prove_its_key() {
        use Step::{Record as R, Transition as T};
        // Signed by the new key itself (not the one in force at its seq).
        let mut envs = rotating(&[R, T], None);
        let Ok(mut t) = Entry::from_payload(&envs[1].payload) else {
            panic!("test setup");
        };
        envs[1] = t.sign(&key(2));
        assert_eq!(push_all(from_key_1(), &envs), Err(unknown_key(2, &key(1))));
        assert_eq!(admit_all(from_key_1(), &envs), Err(unknown_key(2, &key(1))));
        // A proof by another key than the one named, or for another place in the chain.
        for fault in [Fault::ForeignProof, Fault::MovedProof] {
            let envs = rotating(&[R, T, R], Some((1, fault)));
            let want = Err(ChainError::BadTransition {
                seq: 2,
                error: TransitionError::Proof,
            });
            assert_eq!(push_all(from_key_1(), &envs), want, "{fault:?}");
            assert_eq!(admit_all(from_key_1(), &envs), want, "{fault:?}");
        }
        // Naming a key that does not parse never reads as an entry.
        if let Record::KeyTransition(k) = &mut t.record {
            k.new_key = "ed25519:AAAA".into();
        }
        assert!(matches!(
            Entry::from_payload(&t.to_payload()),
            Err(EntryError::Record(_))
        ));
    }

    #[test]
    fn a_transition_cannot_overrule_a_rotation_recorded_for_a_later_seq() {
        use Step::{Record as R, Transition as T};
        let envs = rotating(&[R, R, T, R], None);
        // The hub's `agents rotate` recorded key 9 from seq 3 (before the transition):
        // the transition at 3 is then signed by a retired key.
        let before = ChainVerifier::with_keys(
            id("gd-rrt"),
            KeySchedule::single(key(1).verifying_key()).with(3, Some(key(9).verifying_key())),
            region("440000"),
            Some("2018".into()),
        );
        assert_eq!(
            push_all(before.clone(), &envs),
            Err(ChainError::RetiredKey { seq: 3, since: 3 })
        );
        // ... from seq 10 (after it): the old key may not choose another key meanwhile.
        let later = ChainVerifier::with_keys(
            id("gd-rrt"),
            KeySchedule::single(key(1).verifying_key()).with(10, Some(key(9).verifying_key())),
            region("440000"),
            Some("2018".into()),
        );
        let want = Err(ChainError::TransitionConflict {
            seq: 3,
            from_seq: 10,
        });
        assert_eq!(push_all(later.clone(), &envs), want);
        assert_eq!(admit_all(later, &envs), want);
        // A schedule that knows the transition already (a registry, a key history) agrees.
        let known = ChainVerifier::with_keys(
            id("gd-rrt"),
            KeySchedule::single(key(1).verifying_key()).with(4, Some(key(2).verifying_key())),
            region("440000"),
            Some("2018".into()),
        );
        assert_eq!(push_all(known, &envs), Ok(4));
    }

    #[test]
    fn a_key_checked_provisionally_is_checked_again_under_the_verifiers_schedule() {
        use Step::{Record as R, Transition as T};
        let envs = rotating(&[R, R, T, R], None);
        // Opened against key 1 alone: the batch's transition makes key 2 provisional.
        let opened = KeySchedule::single(key(1).verifying_key()).open_batch(&envs);
        assert!(opened.iter().all(Opened::authentic));
        // A verifier whose schedule puts key 9 at seq 4 (it holds seq 3 already and
        // a rotation happened meanwhile) does not take key 2's word for seq 4.
        let mut v = ChainVerifier::with_keys(
            id("gd-rrt"),
            KeySchedule::single(key(1).verifying_key()).with(4, Some(key(9).verifying_key())),
            region("440000"),
            Some("2018".into()),
        )
        .resume(3, envs[2].payload_hash());
        let got = v.admit(&envs[3], opened[3].clone(), &mut NoHistory);
        assert_eq!(got, Ok(Err(unknown_key(4, &key(9)))));
    }

    #[test]
    fn audit_refuses_a_transition_without_its_proof() {
        use Step::{Record as R, Transition as T};
        let envs = rotating(&[R, T], Some((1, Fault::MovedProof)));
        let mut v = from_key_1().without_memory();
        let first = Entry::from_payload(&envs[0].payload).unwrap_or_else(|e| panic!("{e}"));
        assert!(v.audit(&first, envs[0].payload_hash()).is_empty());
        let t = Entry::from_payload(&envs[1].payload).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            v.audit(&t, envs[1].payload_hash()),
            vec![ChainError::BadTransition {
                seq: 2,
                error: TransitionError::Proof
            }]
        );
    }

    mod transitions_prop {
        use proptest::prelude::*;

        use super::*;

        fn steps() -> impl Strategy<Value = Vec<Step>> {
            proptest::collection::vec(
                prop_oneof![3 => Just(Step::Record), 1 => Just(Step::Transition)],
                1..24,
            )
        }

        fn fault() -> impl Strategy<Value = Fault> {
            prop_oneof![
                Just(Fault::OldKey),
                Just(Fault::Stranger),
                Just(Fault::ForeignProof),
                Just(Fault::MovedProof),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Random chains with random transitions: both ways in accept exactly the
            /// honest ones, and refuse a dishonest seq there with the fault it is.
            #[test]
            fn verify_accepts_exactly_the_honest_chains(
                steps in steps(),
                at in any::<prop::sample::Index>(),
                fault in proptest::option::of(fault()),
            ) {
                let at = at.index(steps.len());
                let fault = fault.filter(|f| {
                    // Proof faults exist only on a transition.
                    !matches!(f, Fault::ForeignProof | Fault::MovedProof)
                        || steps[at] == Step::Transition
                });
                let envs = rotating(&steps, fault.map(|f| (at, f)));
                let pushed = push_all(from_key_1(), &envs);
                let admitted = admit_all(from_key_1(), &envs);
                prop_assert_eq!(&pushed, &admitted);
                let seq = at as u64 + 1;
                let rotated_before = steps[..at].contains(&Step::Transition);
                match fault {
                    None => prop_assert_eq!(pushed, Ok(steps.len() as u64)),
                    Some(Fault::OldKey) if rotated_before => {
                        let since = steps[..at]
                            .iter()
                            .rposition(|s| *s == Step::Transition)
                            .map_or(1, |i| i as u64 + 2);
                        prop_assert_eq!(pushed, Err(ChainError::RetiredKey { seq, since }));
                    }
                    Some(Fault::OldKey | Fault::Stranger) => {
                        prop_assert!(
                            matches!(pushed, Err(ChainError::BadSignature { seq: s, .. }) if s == seq),
                            "{:?}", pushed
                        );
                    }
                    Some(Fault::ForeignProof | Fault::MovedProof) => prop_assert_eq!(
                        pushed,
                        Err(ChainError::BadTransition { seq, error: TransitionError::Proof })
                    ),
                }
            }
        }
    }
}
