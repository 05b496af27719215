//! The transparency log's Merkle tree: RFC 9162 hashing, incremental append, proofs and
//! signed checkpoints.
//!
//! Layout:
//! - **Hashing** ([`leaf_hash`], [`node_hash`], [`empty_root`]): RFC 9162 §2.1.1, with the
//!   0x00/0x01 domain-separation prefixes.
//! - **Append** ([`Frontier`]): the hub's persistent O(log n) summary of the tree. Each
//!   [`Frontier::push`] returns the perfect-subtree nodes it completed ([`StoredNode`]); the
//!   hub stores them and later serves proofs from them.
//! - **Proof building** ([`NodeSource`], [`root_at`], [`inclusion_proof`],
//!   [`consistency_proof`]): RFC 9162 §2.1.3.1 and §2.1.4.1 over stored nodes, with
//!   O(log n) lookups each. [`MemoryTree`] is an in-memory [`NodeSource`].
//! - **Verification** ([`verify_inclusion`], [`verify_consistency`]): RFC 9162 §2.1.3.2 and
//!   §2.1.4.2, allocation-free; what agents and third parties run offline.
//! - **Checkpoints** ([`Checkpoint`], [`sign_checkpoint`], [`open_checkpoint`],
//!   [`NoteVerifier`]): C2SP tlog-checkpoint bodies in C2SP signed-note form with Ed25519,
//!   so existing witness tooling can read them.
//!
//! Architecture invariant: this module does no I/O and reads no clock. Storage of nodes is
//! the caller's, behind [`NodeSource`].
//!
//! A perfect-subtree node `(level L, index i)` is the hash of leaves `[i·2^L, (i+1)·2^L)`;
//! level 0 nodes are leaf hashes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

/// A SHA-256 Merkle tree hash.
pub type Hash = [u8; 32];

// ---------------------------------------------------------------------------------------------
// Hashing (RFC 9162 §2.1.1)
// ---------------------------------------------------------------------------------------------

/// The hash of a leaf: SHA-256(0x00 || data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    leaf_hash_of(|feed| feed(data))
}

/// [`leaf_hash`] of the bytes `pieces` hands to its feed, in order, as if joined: for
/// leaf data that lies in several places (an envelope's signed bytes).
pub fn leaf_hash_of(pieces: impl FnOnce(&mut dyn FnMut(&[u8]))) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    pieces(&mut |piece| h.update(piece));
    h.finalize().into()
}

/// The hash of an interior node: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly less than `n`; `n` must be at least 2.
fn split_point(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

// ---------------------------------------------------------------------------------------------
// Incremental append
// ---------------------------------------------------------------------------------------------

/// A perfect-subtree node completed by [`Frontier::push`], for the hub to store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredNode {
    /// Height of the subtree: 0 for a leaf.
    pub level: u8,
    /// Position among the nodes of the same level, from the left.
    pub index: u64,
    /// Hash of leaves `[index·2^level, (index+1)·2^level)`.
    pub hash: Hash,
}

/// Errors from [`Frontier`] and [`MemoryTree`].
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum FrontierError {
    /// The tree already holds `u64::MAX` leaves, so another cannot be counted.
    #[error("the tree is full (u64::MAX leaves)")]
    Full,
    /// Bytes too short to hold even the 8-byte tree size.
    #[error("frontier bytes too short: {got} bytes, need at least 8")]
    TooShort {
        /// Number of bytes given.
        got: usize,
    },
    /// The serde form's number of subtree roots does not match its size (one root per set
    /// bit of the size).
    #[error("frontier of size {size} needs {expected} subtree roots, got {got}")]
    WrongNodeCount {
        /// Tree size read from the input.
        size: u64,
        /// Roots required: the number of set bits in `size`.
        expected: usize,
        /// Roots present.
        got: usize,
    },
    /// The byte length is not 8 + 32 × (number of roots).
    #[error("frontier bytes have wrong length: expected {expected}, got {got}")]
    WrongLength {
        /// Length implied by the tree size.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// A subtree root in the serde form is not 64 hex digits.
    #[error("frontier node is not a 32-byte hex hash")]
    InvalidNodeHex,
}

/// The compact range `[0, size)` of the log: the roots of the perfect subtrees that make up
/// the current tree, largest (leftmost) first, one per set bit of `size`.
///
/// This is all the hub needs to append leaves and compute the current root, in O(log n)
/// memory. It persists through serde (`{"size": n, "nodes": ["<hex>", ...]}`) or the compact
/// [`Frontier::to_bytes`] form; both refuse a node count that does not match the size.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FrontierRepr", into = "FrontierRepr")]
pub struct Frontier {
    /// Number of leaves appended so far.
    size: u64,
    /// Perfect-subtree roots covering `[0, size)`, largest first; `size.count_ones()` of them.
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves in the tree.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The RFC 9162 root hash (MTH) of the current tree.
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        match nodes.next() {
            None => empty_root(),
            Some(last) => nodes.fold(*last, |acc, left| node_hash(left, &acc)),
        }
    }

    /// Appends one leaf hash and returns every perfect-subtree node this completed, from the
    /// leaf itself (level 0) upwards.
    pub fn push(&mut self, leaf: Hash) -> Result<Vec<StoredNode>, FrontierError> {
        let new_size = self.size.checked_add(1).ok_or(FrontierError::Full)?;
        let mut completed = Vec::with_capacity(1 + self.size.trailing_ones() as usize);
        let (mut hash, mut level, mut index) = (leaf, 0u8, self.size);
        completed.push(StoredNode { level, index, hash });
        // Each trailing one bit of the old size is a left sibling waiting for this subtree.
        while index & 1 == 1 {
            let Some(left) = self.nodes.pop() else {
                // Unreachable: the constructors keep one node per set bit of `size`.
                break;
            };
            hash = node_hash(&left, &hash);
            level += 1;
            index >>= 1;
            completed.push(StoredNode { level, index, hash });
        }
        self.nodes.push(hash);
        self.size = new_size;
        Ok(completed)
    }

    /// Compact binary form: the size as 8 big-endian bytes, then the subtree roots, largest
    /// first, 32 bytes each.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 * self.nodes.len());
        out.extend_from_slice(&self.size.to_be_bytes());
        for node in &self.nodes {
            out.extend_from_slice(node);
        }
        out
    }

    /// Parses [`Frontier::to_bytes`] output, refusing any other length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FrontierError> {
        let (size, rest) = bytes
            .split_first_chunk::<8>()
            .ok_or(FrontierError::TooShort { got: bytes.len() })?;
        let size = u64::from_be_bytes(*size);
        let expected = 8 + 32 * size.count_ones() as usize;
        if bytes.len() != expected {
            return Err(FrontierError::WrongLength {
                expected,
                got: bytes.len(),
            });
        }
        let (nodes, _) = rest.as_chunks::<32>();
        Ok(Self {
            size,
            nodes: nodes.to_vec(),
        })
    }
}

/// The serde shape of [`Frontier`]: hex hashes, validated on the way in.
#[derive(Serialize, Deserialize)]
struct FrontierRepr {
    size: u64,
    nodes: Vec<String>,
}

impl From<Frontier> for FrontierRepr {
    fn from(f: Frontier) -> Self {
        Self {
            size: f.size,
            nodes: f.nodes.iter().map(hex::encode).collect(),
        }
    }
}

impl TryFrom<FrontierRepr> for Frontier {
    type Error = FrontierError;

    fn try_from(r: FrontierRepr) -> Result<Self, FrontierError> {
        let expected = r.size.count_ones() as usize;
        if r.nodes.len() != expected {
            return Err(FrontierError::WrongNodeCount {
                size: r.size,
                expected,
                got: r.nodes.len(),
            });
        }
        let nodes = r
            .nodes
            .iter()
            .map(|s| {
                let mut h = [0u8; 32];
                hex::decode_to_slice(s, &mut h).map_err(|_| FrontierError::InvalidNodeHex)?;
                Ok(h)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            size: r.size,
            nodes,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Proof building (RFC 9162 §2.1.3.1, §2.1.4.1)
// ---------------------------------------------------------------------------------------------

/// Read access to stored perfect-subtree nodes, as returned by [`Frontier::push`].
///
/// The proof builders only ask for nodes that lie entirely within the tree size they were
/// given, so a source holding every node pushed so far can always answer.
pub trait NodeSource {
    /// Why a lookup failed (storage error, or a node that was never stored).
    type Error;

    /// The hash of the perfect subtree over leaves `[index·2^level, (index+1)·2^level)`.
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

/// Errors from building a proof.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProofBuildError<E> {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange {
        /// Requested leaf index.
        index: u64,
        /// Tree size.
        size: u64,
    },
    /// A consistency proof was asked from a larger tree to a smaller one.
    #[error("old tree size {old_size} exceeds new tree size {new_size}")]
    OldSizeExceedsNewSize {
        /// Size of the earlier tree.
        old_size: u64,
        /// Size of the later tree.
        new_size: u64,
    },
    /// The node source failed.
    #[error("node lookup failed: {0}")]
    Source(#[source] E),
}

/// MTH of leaves `[start, end)`, where `start < end` and `start` is a multiple of a power of
/// two no smaller than `end - start` — true of every subtree in RFC 9162's recursions. Such a
/// range is the perfect subtrees given by the set bits of its length, largest first, so it
/// costs one lookup per set bit; every subtree but the ragged right edge costs exactly one.
fn subtree_hash<S: NodeSource + ?Sized>(src: &S, start: u64, end: u64) -> Result<Hash, S::Error> {
    let mut rest = end - start;
    let mut pos = end;
    let mut acc: Option<Hash> = None;
    // Fold from the smallest subtree at the right end towards the left.
    while rest != 0 {
        let level = rest.trailing_zeros();
        pos -= 1 << level;
        let node = src.node(level as u8, pos >> level)?;
        acc = Some(match acc {
            None => node,
            Some(right) => node_hash(&node, &right),
        });
        rest &= rest - 1;
    }
    Ok(acc.unwrap_or_else(empty_root))
}

/// The root hash (MTH) of the tree's first `size` leaves; [`empty_root`] for size 0.
pub fn root_at<S: NodeSource + ?Sized>(src: &S, size: u64) -> Result<Hash, S::Error> {
    subtree_hash(src, 0, size)
}

/// The RFC 9162 §2.1.3.1 inclusion proof `PATH(index, D[size])`, bottom-up.
///
/// Refuses `index >= size` (so every index for size 0). Makes at most 2·log2(size) lookups.
pub fn inclusion_proof<S: NodeSource + ?Sized>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofBuildError<S::Error>> {
    if index >= size {
        return Err(ProofBuildError::IndexOutOfRange { index, size });
    }
    // Walk RFC 9162's recursion from the root down; the subtree is D[start, start + n).
    let mut proof = Vec::with_capacity(64 - size.leading_zeros() as usize);
    let (mut start, mut n, mut m) = (0u64, size, index);
    while n > 1 {
        let k = split_point(n);
        let sibling = if m < k {
            let s = subtree_hash(src, start + k, start + n);
            n = k;
            s
        } else {
            let s = subtree_hash(src, start, start + k);
            (start, n, m) = (start + k, n - k, m - k);
            s
        };
        proof.push(sibling.map_err(ProofBuildError::Source)?);
    }
    proof.reverse();
    Ok(proof)
}

/// The RFC 9162 §2.1.4.1 consistency proof `PROOF(old_size, D[new_size])`, bottom-up.
///
/// Refuses `old_size > new_size`. Returns the empty proof when `old_size == new_size` and
/// when `old_size == 0`: RFC 9162 leaves the latter undefined, and every tree extends the
/// empty one, which [`verify_consistency`] checks by the old root alone.
pub fn consistency_proof<S: NodeSource + ?Sized>(
    src: &S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, ProofBuildError<S::Error>> {
    if old_size > new_size {
        return Err(ProofBuildError::OldSizeExceedsNewSize { old_size, new_size });
    }
    let mut proof = Vec::with_capacity(64 - new_size.leading_zeros() as usize + 1);
    if old_size == 0 || old_size == new_size {
        return Ok(proof);
    }
    // SUBPROOF(m, D[start, start + n), whole_old_tree), unrolled.
    let (mut start, mut n, mut m, mut whole_old_tree) = (0u64, new_size, old_size, true);
    loop {
        if m == n {
            if !whole_old_tree {
                let node = subtree_hash(src, start, start + n);
                proof.push(node.map_err(ProofBuildError::Source)?);
            }
            break;
        }
        let k = split_point(n);
        let node = if m <= k {
            let s = subtree_hash(src, start + k, start + n);
            n = k;
            s
        } else {
            let s = subtree_hash(src, start, start + k);
            (start, n, m, whole_old_tree) = (start + k, n - k, m - k, false);
            s
        };
        proof.push(node.map_err(ProofBuildError::Source)?);
    }
    proof.reverse();
    Ok(proof)
}

/// Why [`MemoryTree`] could not answer a lookup.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MemoryTreeError {
    /// The node lies (partly) beyond the leaves pushed so far.
    #[error("node (level {level}, index {index}) is not in the tree")]
    MissingNode {
        /// Requested level.
        level: u8,
        /// Requested index within the level.
        index: u64,
    },
}

/// An in-memory tree keeping every perfect-subtree node, for tests and small logs.
#[derive(Clone, Debug, Default)]
pub struct MemoryTree {
    /// Keeps the size and completes subtrees as leaves arrive.
    frontier: Frontier,
    /// `levels[l][i]` is node (l, i); `levels[0]` are the leaf hashes.
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf hash, storing every node it completes.
    pub fn push(&mut self, leaf: Hash) -> Result<(), FrontierError> {
        for node in self.frontier.push(leaf)? {
            let level = usize::from(node.level);
            if self.levels.len() <= level {
                self.levels.resize_with(level + 1, Vec::new);
            }
            // Nodes of one level complete left to right, so `node.index` is the next slot.
            self.levels[level].push(node.hash);
        }
        Ok(())
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// The current root hash.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }
}

impl NodeSource for MemoryTree {
    type Error = MemoryTreeError;

    fn node(&self, level: u8, index: u64) -> Result<Hash, MemoryTreeError> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.levels.get(usize::from(level))?.get(i))
            .copied()
            .ok_or(MemoryTreeError::MissingNode { level, index })
    }
}

// ---------------------------------------------------------------------------------------------
// Verification (RFC 9162 §2.1.3.2, §2.1.4.2)
// ---------------------------------------------------------------------------------------------

/// Why a proof was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProofError {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange {
        /// Claimed leaf index.
        index: u64,
        /// Claimed tree size.
        size: u64,
    },
    /// The old tree is larger than the new one.
    #[error("old tree size {old_size} exceeds new tree size {new_size}")]
    OldSizeExceedsNewSize {
        /// Claimed size of the earlier tree.
        old_size: u64,
        /// Claimed size of the later tree.
        new_size: u64,
    },
    /// The proof has the wrong number of hashes for the claimed sizes and index.
    #[error("proof has {got} hashes, expected {expected}")]
    WrongLength {
        /// Length the claimed sizes and index require.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// The proof leads to a different (new) root than the one given.
    #[error("proof does not lead to the given root")]
    RootMismatch,
    /// A consistency proof does not lead back to the given old root.
    #[error("consistency proof does not lead to the given old root")]
    OldRootMismatch,
}

/// Lengths of the two parts of the inclusion proof for `index` in a tree of `size`: hashes
/// below the point where the paths to `index` and `size - 1` meet, then hashes above it.
/// Requires `index < size`.
fn inclusion_parts(index: u64, size: u64) -> (usize, usize) {
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    (inner as usize, border as usize)
}

/// Verifies that `leaf` is the leaf hash at `index` in the tree of `size` with `root`
/// (RFC 9162 §2.1.3.2). Refuses `index >= size` and a proof of the wrong length.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (inner, border) = inclusion_parts(index, size);
    let wrong_length = ProofError::WrongLength {
        expected: inner + border,
        got: proof.len(),
    };
    if proof.len() != inner + border {
        return Err(wrong_length);
    }
    // RFC 9162 §2.1.3.2 steps 2-5 (fn, sn, r). The length check above makes the `sn`
    // checks unreachable; they are kept so the loop reads as the RFC does.
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(wrong_length);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(wrong_length);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Verifies that the tree of `new_size` with `new_root` extends the tree of `old_size` with
/// `old_root` (RFC 9162 §2.1.4.2).
///
/// When `old_size == new_size` the proof must be empty and the roots equal. When
/// `old_size == 0` the proof must be empty and `old_root` must be [`empty_root`]; any new
/// tree extends the empty one. Refuses `old_size > new_size` and a proof of the wrong length.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::OldSizeExceedsNewSize { old_size, new_size });
    }
    if old_size == 0 || old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength {
                expected: 0,
                got: proof.len(),
            });
        }
        if old_size == 0 && *old_root != empty_root() {
            return Err(ProofError::OldRootMismatch);
        }
        if old_size == new_size && old_root != new_root {
            return Err(ProofError::RootMismatch);
        }
        return Ok(());
    }

    // The proof is the suffix of the inclusion proof of leaf old_size - 1 above the largest
    // perfect subtree ending at old_size, preceded by that subtree's hash unless it is the
    // whole old tree (old_size a power of two, whose hash is old_root).
    let shift = old_size.trailing_zeros() as usize;
    let (inner, border) = inclusion_parts(old_size - 1, new_size);
    let seeded = !old_size.is_power_of_two();
    let expected = usize::from(seeded) + inner.saturating_sub(shift) + border;
    let wrong_length = ProofError::WrongLength {
        expected,
        got: proof.len(),
    };
    if proof.len() != expected {
        return Err(wrong_length);
    }
    // RFC 9162 §2.1.4.2 step 2: prepend old_root when old_size is a power of two.
    let (seed, path) = match proof.split_first() {
        Some((first, rest)) if seeded => (first, rest),
        _ => (old_root, proof),
    };

    // Steps 3-7. As in `verify_inclusion`, the `sn` checks cannot fire after the length check.
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*seed, *seed);
    for c in path {
        if snode == 0 {
            return Err(wrong_length);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(wrong_length);
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Checkpoints (c2sp.org/tlog-checkpoint) in signed-note form (c2sp.org/signed-note)
// ---------------------------------------------------------------------------------------------

/// Longest line accepted in a note, in bytes. Fits a signature line of a post-quantum
/// signature (~5 kB before base64) with a long key name.
pub const MAX_LINE_BYTES: usize = 8 * 1024;
/// Longest note accepted, in bytes.
pub const MAX_NOTE_BYTES: usize = 1024 * 1024;
/// Most signature lines accepted in a note (signed-note requires at least 16; Go's
/// `golang.org/x/mod/sumdb/note` also stops at 100).
pub const MAX_SIGNATURES: usize = 100;

/// Signed-note signature type byte for Ed25519.
const SIG_TYPE_ED25519: u8 = 0x01;
/// Opens every signature line: em dash, space.
pub(crate) const SIG_LINE_PREFIX: &str = "\u{2014} ";

/// Why a checkpoint, note or verifier key was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum NoteError {
    /// The note exceeds [`MAX_NOTE_BYTES`].
    #[error("note is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Note length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A line exceeds [`MAX_LINE_BYTES`].
    #[error("a line is {len} bytes, more than the {max} allowed")]
    LineTooLong {
        /// Line length, without its newline.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An ASCII control character other than newline (including CR and tab).
    #[error("control character at byte {offset}")]
    ControlCharacter {
        /// Byte offset of the character.
        offset: usize,
    },
    /// The text does not end with a newline.
    #[error("text does not end with a newline")]
    MissingFinalNewline,
    /// No blank line separates the text from the signatures.
    #[error("no blank line before the signatures")]
    MissingBlankLine,
    /// Nothing follows the last blank line.
    #[error("note has no signature lines")]
    NoSignatures,
    /// Bytes after the last signature line's newline.
    #[error("unterminated data after the signature lines")]
    TrailingData,
    /// More than [`MAX_SIGNATURES`] signature lines.
    #[error("more than {max} signature lines")]
    TooManySignatures {
        /// The limit.
        max: usize,
    },
    /// A signature line is not `— <name> <base64 of 5 or more bytes>`.
    #[error("malformed signature line: {reason}")]
    MalformedSignatureLine {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A signature from the trusted key (matching name and key hash) does not verify.
    #[error("invalid signature by key {name}+{key_hash:08x}")]
    BadSignature {
        /// Trusted key name.
        name: String,
        /// Trusted key hash.
        key_hash: u32,
    },
    /// No signature line comes from the trusted key.
    #[error("note is not signed by key {name}+{key_hash:08x}")]
    NotSignedByKey {
        /// Trusted key name.
        name: String,
        /// Trusted key hash.
        key_hash: u32,
    },
    /// A key name is empty or contains whitespace or `+`.
    #[error("invalid key name {0:?}")]
    InvalidKeyName(String),
    /// A verifier key string is not `<name>+<8 hex>+<base64(0x01 || 32-byte key)>` with a
    /// matching key hash.
    #[error("invalid verifier key: {reason}")]
    InvalidVerifierKey {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The checkpoint body has fewer than three lines.
    #[error("checkpoint body has fewer than three lines")]
    TooFewLines,
    /// The origin line is empty, or (when signing) contains a newline.
    #[error("checkpoint origin is empty or contains a newline")]
    InvalidOrigin,
    /// The size line is not canonical ASCII decimal (digits only, no leading zero) fitting u64.
    #[error("checkpoint size {0:?} is not a canonical decimal u64")]
    InvalidSize(String),
    /// The root line is not canonical standard base64 of exactly 32 bytes.
    #[error("checkpoint root hash is not base64 of 32 bytes")]
    InvalidRootHash,
    /// An extension line is empty (C2SP requires extension lines to be non-empty).
    #[error("checkpoint has an empty extension line")]
    EmptyExtensionLine,
    /// The checkpoint is for another log.
    #[error("checkpoint origin {got:?} is not the expected {expected:?}")]
    WrongOrigin {
        /// Origin the caller trusts.
        expected: String,
        /// Origin in the checkpoint.
        got: String,
    },
}

/// A transparency log checkpoint: which log, how many leaves, and the root over them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Identifies the log (C2SP recommends a schema-less URL such as `example.com/log42`).
    pub origin: String,
    /// Number of leaves in the tree.
    pub size: u64,
    /// RFC 9162 root hash of the tree at `size`.
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: `"<origin>\n<size>\n<base64 root>\n"`.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root)
        )
    }

    /// Parses a checkpoint note text. Extension lines after the root are checked to be
    /// non-empty and otherwise ignored. Does not verify anything: see [`open_checkpoint`].
    pub fn parse_body(text: &str) -> Result<Self, NoteError> {
        check_text(text)?;
        let body = text
            .strip_suffix('\n')
            .ok_or(NoteError::MissingFinalNewline)?;
        let mut lines = body.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(NoteError::TooFewLines);
        };
        if origin.is_empty() {
            return Err(NoteError::InvalidOrigin);
        }
        if lines.any(str::is_empty) {
            return Err(NoteError::EmptyExtensionLine);
        }
        Ok(Self {
            origin: origin.to_owned(),
            size: parse_size(size)?,
            root: parse_root(root)?,
        })
    }
}

/// Parses canonical ASCII decimal: digits only, no sign, no leading zero except "0".
fn parse_size(s: &str) -> Result<u64, NoteError> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical
        .then(|| s.parse().ok())
        .flatten()
        .ok_or_else(|| NoteError::InvalidSize(s.to_owned()))
}

/// Parses canonical padded standard base64 of exactly 32 bytes.
fn parse_root(s: &str) -> Result<Hash, NoteError> {
    let mut buf = [0u8; 48];
    if BASE64.decode_slice(s, &mut buf) != Ok(32) {
        return Err(NoteError::InvalidRootHash);
    }
    let mut root = [0u8; 32];
    root.copy_from_slice(&buf[..32]);
    Ok(root)
}

/// Refuses control characters other than newline and lines over [`MAX_LINE_BYTES`].
pub(crate) fn check_text(text: &str) -> Result<(), NoteError> {
    if let Some(offset) = text.bytes().position(|b| b < 0x20 && b != b'\n') {
        return Err(NoteError::ControlCharacter { offset });
    }
    match text.split('\n').map(str::len).max() {
        Some(len) if len > MAX_LINE_BYTES => Err(NoteError::LineTooLong {
            len,
            max: MAX_LINE_BYTES,
        }),
        _ => Ok(()),
    }
}

/// Key names must be non-empty, without Unicode whitespace or `+` (signed-note).
pub(crate) fn check_key_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '+') {
        return Err(NoteError::InvalidKeyName(name.to_owned()));
    }
    Ok(())
}

/// Signed-note key hash: the first 4 bytes, big-endian, of
/// SHA-256(name || "\n" || 0x01 || 32-byte public key).
fn key_hash(name: &str, key: &VerifyingKey) -> u32 {
    typed_key_hash(name, SIG_TYPE_ED25519, key)
}

/// A key hash for signature type `sig_type`: the first 4 bytes, big-endian, of
/// SHA-256(name || "\n" || sig_type || 32-byte public key).
pub(crate) fn typed_key_hash(name: &str, sig_type: u8, key: &VerifyingKey) -> u32 {
    let digest = Sha256::new()
        .chain_update(name)
        .chain_update([b'\n', sig_type])
        .chain_update(key.as_bytes())
        .finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A trusted Ed25519 note key: the name and key hash that select its signature lines, and
/// the public key that checks them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    /// Key name as it appears in signature lines (often the log's origin).
    name: String,
    /// Derived from name and key; kept to match signature lines without rehashing.
    key_hash: u32,
    /// The Ed25519 public key.
    key: VerifyingKey,
}

impl NoteVerifier {
    /// A verifier for `key` under `name`; refuses names that are empty or contain whitespace
    /// or `+`.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, NoteError> {
        check_key_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            key_hash: key_hash(name, &key),
            key,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signed-note key hash (key ID).
    pub fn key_hash(&self) -> u32 {
        self.key_hash
    }

    /// The Ed25519 public key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// The verifier key text form `<name>+<8 hex key hash>+<base64(0x01 || public key)>`,
    /// as read by Go's `golang.org/x/mod/sumdb/note` and witness tooling.
    pub fn to_vkey(&self) -> String {
        format_vkey(&self.name, self.key_hash, SIG_TYPE_ED25519, &self.key)
    }

    /// Parses [`NoteVerifier::to_vkey`] text, refusing other signature types and a key hash
    /// that does not match the name and key.
    pub fn from_vkey(vkey: &str) -> Result<Self, NoteError> {
        let (name, key) = parse_vkey(vkey, SIG_TYPE_ED25519)?;
        Self::new(&name, key)
    }
}

/// `<name>+<8 hex key hash>+<base64(sig_type || public key)>`.
pub(crate) fn format_vkey(name: &str, key_hash: u32, sig_type: u8, key: &VerifyingKey) -> String {
    let mut typed = [0u8; 33];
    typed[0] = sig_type;
    typed[1..].copy_from_slice(key.as_bytes());
    format!("{name}+{key_hash:08x}+{}", BASE64.encode(typed))
}

/// The name and key of a verifier key of signature type `sig_type`, its key hash checked
/// against them.
pub(crate) fn parse_vkey(vkey: &str, sig_type: u8) -> Result<(String, VerifyingKey), NoteError> {
    let bad = |reason| NoteError::InvalidVerifierKey { reason };
    // The name cannot contain '+', but the base64 key can.
    let mut parts = vkey.splitn(3, '+');
    let (Some(name), Some(hash_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected <name>+<hash>+<key>"));
    };
    check_key_name(name).map_err(|_| bad("invalid key name"))?;
    let mut hash = [0u8; 4];
    hex::decode_to_slice(hash_hex, &mut hash).map_err(|_| bad("key hash is not 8 hex digits"))?;
    let mut typed = [0u8; 48];
    let key = match BASE64.decode_slice(key_b64, &mut typed) {
        Ok(33) if typed[0] == sig_type => &typed[1..33],
        Ok(33) => return Err(bad("unsupported signature type")),
        _ => return Err(bad("key is not base64 of the type byte and 32 bytes")),
    };
    let key = <&[u8; 32]>::try_from(key).map_err(|_| bad("key is not 32 bytes"))?;
    let key = VerifyingKey::from_bytes(key).map_err(|_| bad("not an Ed25519 public key"))?;
    if typed_key_hash(name, sig_type, &key) != u32::from_be_bytes(hash) {
        return Err(bad("key hash does not match name and key"));
    }
    Ok((name.to_owned(), key))
}

/// Signs `text` as a signed note with one Ed25519 signature line.
fn sign_note(text: &str, name: &str, key: &SigningKey) -> Result<String, NoteError> {
    check_key_name(name)?;
    check_text(text)?;
    if !text.ends_with('\n') {
        return Err(NoteError::MissingFinalNewline);
    }
    let mut blob = [0u8; 4 + 64];
    blob[..4].copy_from_slice(&key_hash(name, &key.verifying_key()).to_be_bytes());
    blob[4..].copy_from_slice(&key.sign(text.as_bytes()).to_bytes());
    Ok(format!(
        "{text}\n{SIG_LINE_PREFIX}{name} {}\n",
        BASE64.encode(blob)
    ))
}

/// One signature line of a note: key name, key hash, and the bytes after the hash.
pub(crate) struct SigLine<'a> {
    /// Key name.
    pub name: &'a str,
    /// Key hash (key ID).
    pub key_hash: u32,
    /// What follows the key hash (at least one byte).
    pub sig: Vec<u8>,
}

/// Splits a signed note into its text (with final newline) and its signature lines,
/// checking the framing only: size, characters, the blank line, each line's form.
pub(crate) fn split_note(note: &str) -> Result<(&str, Vec<SigLine<'_>>), NoteError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(NoteError::TooLarge {
            len: note.len(),
            max: MAX_NOTE_BYTES,
        });
    }
    check_text(note)?;
    // The text ends at the last blank line; the signature lines follow it.
    let split = note.rfind("\n\n").ok_or(NoteError::MissingBlankLine)?;
    let (text, sigs) = (&note[..=split], &note[split + 2..]);
    if sigs.is_empty() {
        return Err(NoteError::NoSignatures);
    }
    let sigs = sigs.strip_suffix('\n').ok_or(NoteError::TrailingData)?;
    let malformed = |reason| NoteError::MalformedSignatureLine { reason };
    let mut lines = Vec::new();
    for (n, line) in sigs.split('\n').enumerate() {
        if n == MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures {
                max: MAX_SIGNATURES,
            });
        }
        let rest = line
            .strip_prefix(SIG_LINE_PREFIX)
            .ok_or(malformed("does not start with an em dash and a space"))?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or(malformed("no space after the key name"))?;
        check_key_name(name).map_err(|_| malformed("invalid key name"))?;
        let blob = BASE64
            .decode(b64)
            .map_err(|_| malformed("signature is not base64"))?;
        let Some((id, sig)) = blob.split_first_chunk::<4>().filter(|(_, s)| !s.is_empty()) else {
            return Err(malformed("signature shorter than 5 bytes"));
        };
        lines.push(SigLine {
            name,
            key_hash: u32::from_be_bytes(*id),
            sig: sig.to_vec(),
        });
    }
    Ok((text, lines))
}

/// Checks a signed note and returns its text (with final newline) if `verifier`'s key signed
/// it. Signature lines of other keys are checked for form only and otherwise ignored.
fn open_note<'a>(note: &'a str, verifier: &NoteVerifier) -> Result<&'a str, NoteError> {
    let (text, lines) = split_note(note)?;
    let mut verified = false;
    for line in lines {
        if line.name != verifier.name || line.key_hash != verifier.key_hash {
            continue;
        }
        let bad = || NoteError::BadSignature {
            name: verifier.name.clone(),
            key_hash: verifier.key_hash,
        };
        let sig = Signature::from_slice(&line.sig).map_err(|_| bad())?;
        crate::sig::verify(&verifier.key, text.as_bytes(), &sig).map_err(|_| bad())?;
        verified = true;
    }
    if !verified {
        return Err(NoteError::NotSignedByKey {
            name: verifier.name.clone(),
            key_hash: verifier.key_hash,
        });
    }
    Ok(text)
}

/// Signs `cp` as a C2SP checkpoint note with one Ed25519 signature line by `key` under `name`
/// (C2SP recommends `name` be the origin). Refuses an empty origin or one with a newline or
/// control character, and an invalid key name.
pub fn sign_checkpoint(cp: &Checkpoint, name: &str, key: &SigningKey) -> Result<String, NoteError> {
    if cp.origin.is_empty() || cp.origin.contains('\n') {
        return Err(NoteError::InvalidOrigin);
    }
    sign_note(&cp.body(), name, key)
}

/// Verifies a signed checkpoint note and returns the checkpoint.
///
/// Refuses, in this order: malformed note framing, a note without a valid signature by
/// `verifier` (a bad signature by it is refused even if another line verifies), a malformed
/// body, and an origin other than `expected_origin`. Other keys' signature lines are ignored.
pub fn open_checkpoint(
    note: &str,
    verifier: &NoteVerifier,
    expected_origin: &str,
) -> Result<Checkpoint, NoteError> {
    let cp = Checkpoint::parse_body(open_note(note, verifier)?)?;
    if cp.origin != expected_origin {
        return Err(NoteError::WrongOrigin {
            expected: expected_origin.to_owned(),
            got: cp.origin,
        });
    }
    Ok(cp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    fn hs(list: &[&str]) -> Vec<Hash> {
        list.iter().map(|s| h(s)).collect()
    }

    // ---- Known answers ------------------------------------------------------------------------
    //
    // The RFC 6962 reference tree used by Certificate Transparency and transparency-dev/merkle,
    // copied from github.com/transparency-dev/merkle: testonly/constants.go (LeafInputs,
    // NodeHashes, RootHashes) and proof/verify_test.go (inclusionProofs, consistencyProofs).
    // verify_test.go numbers leaves from 1; the indexes below are 0-based.

    const LEAF_INPUTS: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];

    /// Roots of the trees of sizes 1..=8.
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    /// Every perfect-subtree node of the 8-leaf tree, by level then index.
    const NODE_HASHES: [&[&str]; 4] = [
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
            "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
        ],
        &[
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        ],
        &[
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
        &["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
    ];

    /// (leaf index, tree size, inclusion proof).
    const INCLUSION_PROOFS: [(u64, u64, &[&str]); 5] = [
        (0, 1, &[]),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];

    /// (old size, new size, consistency proof).
    const CONSISTENCY_PROOFS: [(u64, u64, &[&str]); 5] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            7,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    fn reference_tree() -> MemoryTree {
        let mut tree = MemoryTree::new();
        for input in LEAF_INPUTS {
            tree.push(leaf_hash(&hex::decode(input).unwrap())).unwrap();
        }
        tree
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        let want = h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(empty_root(), want);
        assert_eq!(Frontier::new().root(), want);
        assert_eq!(root_at(&MemoryTree::new(), 0), Ok(want));
    }

    #[test]
    fn reference_tree_roots_and_nodes() {
        let mut frontier = Frontier::new();
        for (i, input) in LEAF_INPUTS.iter().enumerate() {
            frontier
                .push(leaf_hash(&hex::decode(input).unwrap()))
                .unwrap();
            assert_eq!(
                frontier.root(),
                h(ROOTS[i]),
                "frontier root at size {}",
                i + 1
            );
        }
        let tree = reference_tree();
        for (size, root) in (1..).zip(ROOTS) {
            assert_eq!(root_at(&tree, size), Ok(h(root)), "root_at({size})");
        }
        for (level, nodes) in (0..).zip(NODE_HASHES) {
            for (index, node) in (0..).zip(nodes.iter()) {
                assert_eq!(
                    tree.node(level, index),
                    Ok(h(node)),
                    "node ({level}, {index})"
                );
            }
        }
    }

    #[test]
    fn reference_tree_proofs() {
        let tree = reference_tree();
        for (index, size, want) in INCLUSION_PROOFS {
            let want = hs(want);
            let root = h(ROOTS[size as usize - 1]);
            let leaf = h(NODE_HASHES[0][index as usize]);
            assert_eq!(inclusion_proof(&tree, index, size), Ok(want.clone()));
            assert_eq!(verify_inclusion(&leaf, index, size, &want, &root), Ok(()));
            assert_inclusion_mutations_refused(&leaf, index, size, &want, &root);
        }
        for (old, new, want) in CONSISTENCY_PROOFS {
            let want = hs(want);
            let (old_root, new_root) = (h(ROOTS[old as usize - 1]), h(ROOTS[new as usize - 1]));
            assert_eq!(consistency_proof(&tree, old, new), Ok(want.clone()));
            assert_eq!(
                verify_consistency(old, new, &old_root, &new_root, &want),
                Ok(())
            );
            if old < new {
                assert_consistency_mutations_refused(old, new, &old_root, &new_root, &want);
            }
        }
    }

    // ---- Naive RFC 9162 reference (MTH, PATH, PROOF), straight from §2.1 ----------------------

    /// The largest power of two smaller than n (n > 1), computed independently of `split_point`.
    fn naive_k(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    fn mth(d: &[Hash]) -> Hash {
        match d.len() {
            0 => empty_root(),
            1 => d[0],
            n => {
                let k = naive_k(n);
                node_hash(&mth(&d[..k]), &mth(&d[k..]))
            }
        }
    }

    fn path(m: usize, d: &[Hash]) -> Vec<Hash> {
        if d.len() <= 1 {
            return Vec::new();
        }
        let k = naive_k(d.len());
        let (mut p, sibling) = if m < k {
            (path(m, &d[..k]), mth(&d[k..]))
        } else {
            (path(m - k, &d[k..]), mth(&d[..k]))
        };
        p.push(sibling);
        p
    }

    fn subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
        let n = d.len();
        if m == n {
            return if b { Vec::new() } else { vec![mth(d)] };
        }
        let k = naive_k(n);
        let (mut p, node) = if m <= k {
            (subproof(m, &d[..k], b), mth(&d[k..]))
        } else {
            (subproof(m - k, &d[k..], false), mth(&d[..k]))
        };
        p.push(node);
        p
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    fn tree_of(leaves: &[Hash]) -> MemoryTree {
        let mut tree = MemoryTree::new();
        for leaf in leaves {
            tree.push(*leaf).unwrap();
        }
        tree
    }

    /// Builds, compares with the reference and verifies every proof for one (size, index, old).
    fn check_against_reference(d: &[Hash], tree: &MemoryTree, index: u64, old: u64) {
        let size = d.len() as u64;
        let root = mth(d);
        assert_eq!(root_at(tree, size), Ok(root));

        let proof = inclusion_proof(tree, index, size).unwrap();
        assert_eq!(proof, path(index as usize, d), "PATH({index}, D[{size}])");
        assert_eq!(
            verify_inclusion(&d[index as usize], index, size, &proof, &root),
            Ok(())
        );

        let old_root = mth(&d[..old as usize]);
        let proof = consistency_proof(tree, old, size).unwrap();
        if 0 < old && old < size {
            assert_eq!(
                proof,
                subproof(old as usize, d, true),
                "PROOF({old}, D[{size}])"
            );
        } else {
            assert!(proof.is_empty());
        }
        assert_eq!(
            verify_consistency(old, size, &old_root, &root, &proof),
            Ok(())
        );
    }

    #[test]
    fn every_proof_of_small_trees_matches_reference_and_resists_mutation() {
        let all = leaves(40);
        let tree = tree_of(&all);
        for size in 1..=all.len() as u64 {
            let d = &all[..size as usize];
            let root = mth(d);
            for index in 0..size {
                check_against_reference(d, &tree, index, index);
                let proof = inclusion_proof(&tree, index, size).unwrap();
                assert_inclusion_mutations_refused(&d[index as usize], index, size, &proof, &root);
            }
            check_against_reference(d, &tree, 0, size);
            for old in 1..size {
                let proof = consistency_proof(&tree, old, size).unwrap();
                let old_root = mth(&d[..old as usize]);
                assert_consistency_mutations_refused(old, size, &old_root, &root, &proof);
            }
        }
    }

    #[test]
    fn frontier_stores_exactly_the_perfect_subtrees() {
        let d = leaves(100);
        let mut frontier = Frontier::new();
        let mut stored = Vec::new();
        for (i, leaf) in d.iter().enumerate() {
            stored.extend(frontier.push(*leaf).unwrap());
            assert_eq!(frontier.root(), mth(&d[..=i]));
            assert_eq!(frontier.size(), i as u64 + 1);
        }
        // Level l holds floor(100 / 2^l) nodes: 100 + 50 + 25 + 12 + 6 + 3 + 1.
        assert_eq!(stored.len(), 197);
        for node in stored {
            let width = 1usize << node.level;
            let start = node.index as usize * width;
            assert_eq!(node.hash, mth(&d[start..start + width]), "{node:?}");
        }
    }

    proptest! {
        #[test]
        fn random_proofs_match_reference_and_verify(
            size in 1u64..=300,
            index_seed in any::<u64>(),
            old_seed in any::<u64>(),
            flip in any::<(usize, usize, u8)>(),
        ) {
            let d = leaves(size);
            let tree = tree_of(&d);
            let (index, old) = (index_seed % size, old_seed % (size + 1));
            check_against_reference(&d, &tree, index, old);

            // One random bit flipped in one random element is refused.
            let (elem, byte, bit) = flip;
            let root = mth(&d);
            let mut proof = inclusion_proof(&tree, index, size).unwrap();
            if !proof.is_empty() {
                let elem = elem % proof.len();
                proof[elem][byte % 32] ^= 1 << (bit % 8);
                prop_assert!(verify_inclusion(&d[index as usize], index, size, &proof, &root).is_err());
            }
            let mut proof = consistency_proof(&tree, old, size).unwrap();
            if !proof.is_empty() {
                let elem = elem % proof.len();
                proof[elem][byte % 32] ^= 1 << (bit % 8);
                let old_root = mth(&d[..old as usize]);
                prop_assert!(verify_consistency(old, size, &old_root, &root, &proof).is_err());
            }
        }
    }

    // ---- Mutation tables --------------------------------------------------------------------

    /// Sides of the siblings along PATH(m, D[n]) (true: left), bottom-up, from the RFC 9162
    /// §2.1.3.1 recursion; `None` where no proof exists.
    fn path_shape(m: u64, n: u64) -> Option<Vec<bool>> {
        fn go(m: u64, n: u64) -> Vec<bool> {
            if n <= 1 {
                return Vec::new();
            }
            let k = naive_k(n as usize) as u64;
            let (mut s, left) = if m < k {
                (go(m, k), false)
            } else {
                (go(m - k, n - k), true)
            };
            s.push(left);
            s
        }
        (m < n).then(|| go(m, n))
    }

    /// Whether PROOF(m, D[n]) opens with the old tree's last perfect subtree, and the sides of
    /// the other elements, from the RFC 9162 §2.1.4.1 recursion; `None` where m = 0 or m > n.
    fn proof_shape(m: u64, n: u64) -> Option<(bool, Vec<bool>)> {
        fn go(m: u64, n: u64, b: bool) -> (bool, Vec<bool>) {
            if m == n {
                return (!b, Vec::new());
            }
            let k = naive_k(n as usize) as u64;
            let ((seeded, mut s), left) = if m <= k {
                (go(m, k, b), false)
            } else {
                (go(m - k, n - k, false), true)
            };
            s.push(left);
            (seeded, s)
        }
        (0 < m && m <= n).then(|| go(m, n, true))
    }

    /// Bit positions flipped in each proof element: (byte, bit).
    const FLIPS: [(usize, u8); 3] = [(0, 0), (15, 4), (31, 7)];

    fn flipped(proof: &[Hash], elem: usize, (byte, bit): (usize, u8)) -> Vec<Hash> {
        let mut p = proof.to_vec();
        p[elem][byte] ^= 1 << bit;
        p
    }

    fn with_trailing(proof: &[Hash], extra: Hash) -> Vec<Hash> {
        let mut p = proof.to_vec();
        p.push(extra);
        p
    }

    fn with_leading(proof: &[Hash], extra: Hash) -> Vec<Hash> {
        let mut p = vec![extra];
        p.extend_from_slice(proof);
        p
    }

    fn without(proof: &[Hash], elem: usize) -> Vec<Hash> {
        let mut p = proof.to_vec();
        p.remove(elem);
        p
    }

    /// Every corruption of a valid inclusion proof must be refused.
    fn assert_inclusion_mutations_refused(
        leaf: &Hash,
        index: u64,
        size: u64,
        proof: &[Hash],
        root: &Hash,
    ) {
        let wrong_leaf = leaf_hash(b"wrong leaf");
        let mut cases: Vec<(String, Hash, u64, u64, Vec<Hash>, Hash)> = vec![
            (
                "index - 1".into(),
                *leaf,
                index.wrapping_sub(1),
                size,
                proof.to_vec(),
                *root,
            ),
            (
                "index + 1".into(),
                *leaf,
                index + 1,
                size,
                proof.to_vec(),
                *root,
            ),
            (
                "size * 2".into(),
                *leaf,
                index,
                size * 2,
                proof.to_vec(),
                *root,
            ),
            (
                "size - 1".into(),
                *leaf,
                index,
                size - 1,
                proof.to_vec(),
                *root,
            ),
            (
                "wrong leaf".into(),
                wrong_leaf,
                index,
                size,
                proof.to_vec(),
                *root,
            ),
            (
                "empty root".into(),
                *leaf,
                index,
                size,
                proof.to_vec(),
                empty_root(),
            ),
            (
                "trailing hash".into(),
                *leaf,
                index,
                size,
                with_trailing(proof, *root),
                *root,
            ),
            (
                "leading hash".into(),
                *leaf,
                index,
                size,
                with_leading(proof, *root),
                *root,
            ),
        ];
        for i in 0..proof.len() {
            cases.push((
                format!("drop [{i}]"),
                *leaf,
                index,
                size,
                without(proof, i),
                *root,
            ));
            for f in FLIPS {
                let p = flipped(proof, i, f);
                cases.push((format!("flip [{i}] {f:?}"), *leaf, index, size, p, *root));
            }
        }
        for (desc, leaf, i, n, proof, root) in cases {
            // Another (index, size) with the same proof shape hashes identically, so no verifier
            // can tell them apart: the signed checkpoint, not the proof, binds size to root.
            if (i, n) != (index, size) && path_shape(i, n) == path_shape(index, size) {
                assert_eq!(
                    verify_inclusion(&leaf, i, n, &proof, &root),
                    Ok(()),
                    "{desc}"
                );
                continue;
            }
            assert!(
                verify_inclusion(&leaf, i, n, &proof, &root).is_err(),
                "inclusion mutation {desc:?} of (index {index}, size {size}) accepted"
            );
        }
    }

    /// Every corruption of a valid consistency proof (0 < old < new) must be refused.
    fn assert_consistency_mutations_refused(
        old: u64,
        new: u64,
        old_root: &Hash,
        new_root: &Hash,
        proof: &[Hash],
    ) {
        let (o, n, p) = (*old_root, *new_root, proof.to_vec());
        let e = empty_root();
        let mut cases: Vec<(String, u64, u64, Hash, Hash, Vec<Hash>)> = vec![
            ("old - 1".into(), old - 1, new, o, n, p.clone()),
            ("old + 1".into(), old + 1, new, o, n, p.clone()),
            ("new * 2".into(), old, new * 2, o, n, p.clone()),
            ("new - 1".into(), old, new - 1, o, n, p.clone()),
            ("new + 1".into(), old, new + 1, o, n, p.clone()),
            ("empty old root".into(), old, new, e, n, p.clone()),
            ("empty new root".into(), old, new, o, e, p.clone()),
            ("swapped roots".into(), old, new, n, o, p.clone()),
            ("empty proof".into(), old, new, o, n, Vec::new()),
            (
                "trailing hash".into(),
                old,
                new,
                o,
                n,
                with_trailing(proof, n),
            ),
            (
                "leading hash".into(),
                old,
                new,
                o,
                n,
                with_leading(proof, o),
            ),
        ];
        for i in 0..proof.len() {
            cases.push((format!("drop [{i}]"), old, new, o, n, without(proof, i)));
            for f in FLIPS {
                cases.push((
                    format!("flip [{i}] {f:?}"),
                    old,
                    new,
                    o,
                    n,
                    flipped(proof, i, f),
                ));
            }
        }
        for (desc, m, n, o, r, p) in cases {
            // As for inclusion: same shape, same hashing; the checkpoint binds sizes to roots.
            if (m, n) != (old, new) && proof_shape(m, n) == proof_shape(old, new) {
                assert_eq!(verify_consistency(m, n, &o, &r, &p), Ok(()), "{desc}");
                continue;
            }
            assert!(
                verify_consistency(m, n, &o, &r, &p).is_err(),
                "consistency mutation {desc:?} of (old {old}, new {new}) accepted"
            );
        }
    }

    #[test]
    fn inclusion_refusals_name_the_problem() {
        let d = leaves(5);
        let tree = tree_of(&d);
        let root = mth(&d);
        let proof = inclusion_proof(&tree, 1, 5).unwrap();
        let check = |index, size, proof: &[Hash], leaf: &Hash, want| {
            assert_eq!(verify_inclusion(leaf, index, size, proof, &root), want);
        };
        check(1, 5, &proof, &d[1], Ok(()));
        check(
            5,
            5,
            &proof,
            &d[1],
            Err(ProofError::IndexOutOfRange { index: 5, size: 5 }),
        );
        check(
            0,
            0,
            &[],
            &d[1],
            Err(ProofError::IndexOutOfRange { index: 0, size: 0 }),
        );
        let long = with_trailing(&proof, root);
        let want = Err(ProofError::WrongLength {
            expected: 3,
            got: 4,
        });
        check(1, 5, &long, &d[1], want);
        let want = Err(ProofError::WrongLength {
            expected: 3,
            got: 2,
        });
        check(1, 5, &proof[..2], &d[1], want);
        check(1, 5, &proof, &d[2], Err(ProofError::RootMismatch));
        // A single-leaf tree: empty proof, root is the leaf.
        assert_eq!(verify_inclusion(&d[0], 0, 1, &[], &d[0]), Ok(()));
        assert_eq!(
            verify_inclusion(&d[0], 0, 1, &[], &d[1]),
            Err(ProofError::RootMismatch)
        );
    }

    #[test]
    fn consistency_refusals_name_the_problem() {
        let d = leaves(7);
        let tree = tree_of(&d);
        let (r3, r7) = (mth(&d[..3]), mth(&d));
        let proof = consistency_proof(&tree, 3, 7).unwrap();
        let check = |old, new, o: &Hash, n: &Hash, p: &[Hash], want| {
            assert_eq!(verify_consistency(old, new, o, n, p), want);
        };
        check(3, 7, &r3, &r7, &proof, Ok(()));
        let want = Err(ProofError::OldSizeExceedsNewSize {
            old_size: 7,
            new_size: 3,
        });
        check(7, 3, &r3, &r7, &proof, want);
        let want = Err(ProofError::WrongLength {
            expected: proof.len(),
            got: 0,
        });
        check(3, 7, &r3, &r7, &[], want);
        check(3, 7, &r7, &r7, &proof, Err(ProofError::OldRootMismatch));
        check(3, 7, &r3, &r3, &proof, Err(ProofError::RootMismatch));
        // Equal sizes: empty proof and equal roots.
        check(7, 7, &r7, &r7, &[], Ok(()));
        check(7, 7, &r3, &r7, &[], Err(ProofError::RootMismatch));
        let want = Err(ProofError::WrongLength {
            expected: 0,
            got: 1,
        });
        check(7, 7, &r7, &r7, &[r7], want);
        // From the empty tree: empty proof, and the old root must be the empty root.
        let e = empty_root();
        check(0, 7, &e, &r7, &[], Ok(()));
        check(0, 0, &e, &e, &[], Ok(()));
        check(0, 7, &r3, &r7, &[], Err(ProofError::OldRootMismatch));
        check(0, 0, &e, &r7, &[], Err(ProofError::RootMismatch));
        let want = Err(ProofError::WrongLength {
            expected: 0,
            got: 1,
        });
        check(0, 7, &e, &r7, &[e], want);
    }

    #[test]
    fn verification_with_huge_sizes_does_not_panic() {
        // Exactly one proof length is accepted as well-formed for each claim; with junk
        // hashes that one fails on the root, every other on the length, and nothing panics.
        let x = leaf_hash(b"x");
        let junk = [x; 70];
        let well_formed = |r: Result<(), ProofError>| match r {
            Err(ProofError::WrongLength { .. }) => false,
            Err(ProofError::RootMismatch | ProofError::OldRootMismatch) => true,
            other => panic!("unexpected {other:?}"),
        };
        let sizes = [u64::MAX, u64::MAX - 1, 1 << 63, (1 << 63) + 1, 1 << 62];
        for size in sizes {
            for index in [0, 1, size / 2, size - 2, size - 1] {
                let accepted = (0..=junk.len())
                    .filter(|&len| well_formed(verify_inclusion(&x, index, size, &junk[..len], &x)))
                    .count();
                assert_eq!(accepted, 1, "inclusion {index} {size}");
            }
            for old in [1, 2, 3, size / 2, size - 2, size - 1] {
                let accepted = (0..=junk.len())
                    .filter(|&len| well_formed(verify_consistency(old, size, &x, &x, &junk[..len])))
                    .count();
                assert_eq!(accepted, 1, "consistency {old} {size}");
            }
        }
    }

    #[test]
    fn proof_building_refusals() {
        let tree = tree_of(&leaves(5));
        assert_eq!(
            inclusion_proof(&tree, 5, 5),
            Err(ProofBuildError::IndexOutOfRange { index: 5, size: 5 })
        );
        assert_eq!(
            inclusion_proof(&tree, 0, 0),
            Err(ProofBuildError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(
            consistency_proof(&tree, 4, 3),
            Err(ProofBuildError::OldSizeExceedsNewSize {
                old_size: 4,
                new_size: 3
            })
        );
        assert_eq!(consistency_proof(&tree, 0, 5), Ok(Vec::new()));
        assert_eq!(consistency_proof(&tree, 5, 5), Ok(Vec::new()));
        // Asking beyond what the source holds surfaces the source's error. Size 6 is the
        // subtrees [0, 4) and [4, 6); the latter, node (1, 2), is missing.
        let missing = MemoryTreeError::MissingNode { level: 1, index: 2 };
        assert_eq!(root_at(&tree, 6), Err(missing.clone()));
        assert_eq!(
            inclusion_proof(&tree, 0, 6),
            Err(ProofBuildError::Source(missing))
        );
    }

    /// Counts lookups, to hold proof building to O(log n).
    struct Counting<'a>(&'a MemoryTree, std::cell::Cell<usize>);

    impl NodeSource for Counting<'_> {
        type Error = MemoryTreeError;
        fn node(&self, level: u8, index: u64) -> Result<Hash, MemoryTreeError> {
            self.1.set(self.1.get() + 1);
            self.0.node(level, index)
        }
    }

    #[test]
    fn proof_building_makes_logarithmic_lookups() {
        let tree = tree_of(&leaves(1000));
        let src = Counting(&tree, std::cell::Cell::new(0));
        let mut worst = 0;
        for size in 1..=1000u64 {
            for x in [0, size / 3, size / 2, size - 1] {
                for lookups in [
                    |s: &Counting, x, size| inclusion_proof(s, x, size).map(drop),
                    |s: &Counting, x, size| consistency_proof(s, x + 1, size).map(drop),
                ] {
                    src.1.set(0);
                    lookups(&src, x, size).unwrap();
                    worst = worst.max(src.1.get());
                }
            }
        }
        // ceil(log2(1000)) = 10 proof elements, plus at most 9 extra lookups for the one
        // ragged subtree.
        assert!(worst <= 2 * 10, "worst case {worst} lookups");
    }

    // ---- Frontier persistence ---------------------------------------------------------------

    #[test]
    fn frontier_bytes_round_trip_and_refuse_damage() {
        let mut f = Frontier::new();
        for (i, leaf) in leaves(13).into_iter().enumerate() {
            let bytes = f.to_bytes();
            assert_eq!(bytes.len(), 8 + 32 * (i as u64).count_ones() as usize);
            assert_eq!(Frontier::from_bytes(&bytes).as_ref(), Ok(&f));
            f.push(leaf).unwrap();
        }
        let bytes = f.to_bytes(); // size 13 = 0b1101: three roots.
        assert_eq!(bytes.len(), 8 + 3 * 32);
        for len in 0..8 {
            assert_eq!(
                Frontier::from_bytes(&bytes[..len]),
                Err(FrontierError::TooShort { got: len })
            );
        }
        for len in 8..bytes.len() {
            assert_eq!(
                Frontier::from_bytes(&bytes[..len]),
                Err(FrontierError::WrongLength {
                    expected: 104,
                    got: len
                })
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            Frontier::from_bytes(&long),
            Err(FrontierError::WrongLength {
                expected: 104,
                got: 105
            })
        );
        // A frontier restored from bytes keeps appending where it left off.
        let mut restored = Frontier::from_bytes(&bytes).unwrap();
        let next = leaf_hash(b"next");
        assert_eq!(restored.push(next), f.clone().push(next));
    }

    #[test]
    fn frontier_serde_round_trip_and_refusals() {
        let mut f = Frontier::new();
        for leaf in leaves(6) {
            f.push(leaf).unwrap();
        }
        let json = serde_json::to_string(&f).unwrap();
        assert!(json.starts_with(r#"{"size":6,"nodes":[""#), "{json}");
        assert_eq!(serde_json::from_str::<Frontier>(&json).unwrap(), f);

        let one_node = format!(r#"{{"size":6,"nodes":["{}"]}}"#, hex::encode([0u8; 32]));
        assert!(serde_json::from_str::<Frontier>(&one_node).is_err());
        let short_hex = r#"{"size":1,"nodes":["abcd"]}"#;
        assert!(serde_json::from_str::<Frontier>(short_hex).is_err());
        let empty = r#"{"size":0,"nodes":[]}"#;
        assert_eq!(
            serde_json::from_str::<Frontier>(empty).unwrap(),
            Frontier::new()
        );
    }

    #[test]
    fn full_frontier_refuses_another_leaf() {
        let mut bytes = u64::MAX.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 64 * 32]);
        let mut f = Frontier::from_bytes(&bytes).unwrap();
        assert_eq!(f.push(leaf_hash(b"x")), Err(FrontierError::Full));
        assert_eq!(f.size(), u64::MAX);

        let mut bytes = (u64::MAX - 1).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 63 * 32]);
        let mut f = Frontier::from_bytes(&bytes).unwrap();
        let stored = f.push(leaf_hash(b"x")).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(f.size(), u64::MAX);
    }

    // ---- Signed notes: golang.org/x/mod/sumdb/note reference vectors ------------------------
    //
    // From golang.org/x/mod/sumdb/note/note_test.go (TestSign, TestOpen, TestNewVerifier).
    // Ed25519 is deterministic, so our signature line must match Go's byte for byte.

    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    /// The `PRIVATE+KEY+PeterNeumann+c74f20a3+` key's base64(0x01 || seed).
    const PETER_SKEY_B64: &str = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                           then you don't know what your problem is.\n";
    const PETER_SIG: &str = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_SIG: &str = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    fn peter_signing_key() -> SigningKey {
        let typed = BASE64.decode(PETER_SKEY_B64).unwrap();
        assert_eq!(typed[0], SIG_TYPE_ED25519);
        SigningKey::from_bytes(&typed[1..].try_into().unwrap())
    }

    #[test]
    fn go_note_vectors_sign_and_verify_byte_for_byte() {
        let key = peter_signing_key();
        let signed = sign_note(GO_TEXT, "PeterNeumann", &key).unwrap();
        assert_eq!(signed, format!("{GO_TEXT}\n{PETER_SIG}"));

        let peter = NoteVerifier::from_vkey(PETER_VKEY).unwrap();
        assert_eq!(peter.name(), "PeterNeumann");
        assert_eq!(peter.key_hash(), 0xc74f20a3);
        assert_eq!(peter.key(), &key.verifying_key());
        assert_eq!(peter.to_vkey(), PETER_VKEY);
        assert_eq!(
            NoteVerifier::new("PeterNeumann", key.verifying_key()),
            Ok(peter.clone())
        );
        let enoch = NoteVerifier::from_vkey(ENOCH_VKEY).unwrap();
        assert_eq!(enoch.key_hash(), 0xaf0cfe78);

        // Each key verifies its own line and ignores the other's.
        let both = format!("{GO_TEXT}\n{PETER_SIG}{ENOCH_SIG}");
        assert_eq!(open_note(&both, &peter), Ok(GO_TEXT));
        assert_eq!(open_note(&both, &enoch), Ok(GO_TEXT));
        let only_enoch = format!("{GO_TEXT}\n{ENOCH_SIG}");
        assert!(matches!(
            open_note(&only_enoch, &peter),
            Err(NoteError::NotSignedByKey { .. })
        ));

        // Duplicated lines, and a corrupted line by a key we do not trust, are fine.
        let corrupt_enoch = format!("{}ABCD{}", &ENOCH_SIG[..60], &ENOCH_SIG[60..]);
        let dup = format!("{GO_TEXT}\n{PETER_SIG}{PETER_SIG}{ENOCH_SIG}{ENOCH_SIG}{corrupt_enoch}");
        assert_eq!(open_note(&dup, &peter), Ok(GO_TEXT));

        // A corrupted line by the trusted key is refused.
        let corrupt_peter = format!("{GO_TEXT}\n{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
        assert!(matches!(
            open_note(&corrupt_peter, &peter),
            Err(NoteError::BadSignature { .. })
        ));

        // Too many signatures (Go's limit is also 100).
        let many = format!("{GO_TEXT}\n{}", PETER_SIG.repeat(101));
        assert_eq!(
            open_note(&many, &peter),
            Err(NoteError::TooManySignatures { max: 100 })
        );
        let hundred = format!("{GO_TEXT}\n{}", PETER_SIG.repeat(100));
        assert_eq!(open_note(&hundred, &peter), Ok(GO_TEXT));
    }

    #[test]
    fn go_malformed_notes_are_refused() {
        let peter = NoteVerifier::from_vkey(PETER_VKEY).unwrap();
        let bad_name = format!(
            "{GO_TEXT}\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
        );
        // Go's badMsgs, less "\xff..." which cannot be a &str.
        let cases = [
            (GO_TEXT.to_owned(), NoteError::MissingBlankLine),
            (format!("{GO_TEXT}\n"), NoteError::NoSignatures),
            (
                format!("{GO_TEXT}\n{}", &PETER_SIG[..PETER_SIG.len() - 1]),
                NoteError::TrailingData,
            ),
            (
                format!("\x01{GO_TEXT}\n{PETER_SIG}"),
                NoteError::ControlCharacter { offset: 0 },
            ),
            (bad_name, NoteError::TrailingData),
            (
                format!("{GO_TEXT}\n{PETER_SIG}Unexpected line.\n"),
                NoteError::MalformedSignatureLine {
                    reason: "does not start with an em dash and a space",
                },
            ),
        ];
        for (note, want) in cases {
            assert_eq!(open_note(&note, &peter), Err(want), "{note:?}");
        }
        let bad_name = format!(
            "{GO_TEXT}\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
        );
        assert!(matches!(
            open_note(&bad_name, &peter),
            Err(NoteError::MalformedSignatureLine { .. })
        ));
    }

    #[test]
    fn mangled_verifier_keys_are_refused() {
        // As Go's TestNewVerifier: every proper substring and every one-byte change.
        let b = PETER_VKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if (i, j) != (0, b.len()) {
                    let k = &PETER_VKEY[i..j];
                    assert!(NoteVerifier::from_vkey(k).is_err(), "accepted {k:?}");
                }
            }
        }
        for i in 0..b.len() {
            let mut m = b.to_vec();
            m[i] += 1;
            let k = String::from_utf8(m).unwrap();
            assert!(NoteVerifier::from_vkey(&k).is_err(), "accepted {k:?}");
        }
        // Wrong key length and unknown algorithm, each with a matching key hash (from Go).
        let long = "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==";
        assert!(NoteVerifier::from_vkey(long).is_err());
        let alg = "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        assert_eq!(
            NoteVerifier::from_vkey(alg),
            Err(NoteError::InvalidVerifierKey {
                reason: "unsupported signature type"
            })
        );
        assert!(NoteVerifier::from_vkey("").is_err());
    }

    #[test]
    fn key_names_are_checked() {
        let key = peter_signing_key().verifying_key();
        for name in ["", "a b", "a+b", "tab\there", "nb\u{a0}sp"] {
            assert_eq!(
                NoteVerifier::new(name, key),
                Err(NoteError::InvalidKeyName(name.to_owned()))
            );
        }
        assert!(NoteVerifier::new("example.com/log-1", key).is_ok());
    }

    // ---- Checkpoints ------------------------------------------------------------------------

    const ORIGIN: &str = "example.com/spacesync";

    fn log_key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn log_verifier() -> NoteVerifier {
        NoteVerifier::new(ORIGIN, log_key().verifying_key()).unwrap()
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: ORIGIN.to_owned(),
            size: 5,
            root: h(ROOTS[4]),
        }
    }

    fn signed_checkpoint() -> String {
        sign_checkpoint(&checkpoint(), ORIGIN, &log_key()).unwrap()
    }

    /// Flips one bit of the Ed25519 signature (not the key hash) in the note's only line.
    fn flip_signature_bit(note: &str) -> String {
        let (head, line) = note.trim_end_matches('\n').rsplit_once(' ').unwrap();
        let mut blob = BASE64.decode(line).unwrap();
        blob[4 + 10] ^= 0x04;
        format!("{head} {}\n", BASE64.encode(blob))
    }

    fn check_open(
        note: &str,
        verifier: &NoteVerifier,
        origin: &str,
        want: Result<Checkpoint, NoteError>,
    ) {
        let shown: String = note.chars().take(300).collect();
        assert_eq!(open_checkpoint(note, verifier, origin), want, "{shown:?}");
    }

    #[test]
    fn checkpoint_body_and_signed_form() {
        let cp = checkpoint();
        let root_b64 = "Tju7H3tHjc/nH7YxYxUZo7yhLJrvyhYSv85ME6hiZNQ=";
        assert_eq!(cp.body(), format!("{ORIGIN}\n5\n{root_b64}\n"));
        assert_eq!(Checkpoint::parse_body(&cp.body()), Ok(cp.clone()));

        let note = signed_checkpoint();
        let (text, sig) = note.split_once("\n\n").unwrap();
        assert_eq!(format!("{text}\n"), cp.body());
        let sig = sig.strip_prefix("— example.com/spacesync ").unwrap();
        let blob = BASE64.decode(sig.trim_end()).unwrap();
        assert_eq!(blob.len(), 68);
        assert_eq!(blob[..4], log_verifier().key_hash().to_be_bytes());
        assert!(note.ends_with('\n'));
        check_open(&note, &log_verifier(), ORIGIN, Ok(cp));
    }

    #[test]
    fn checkpoint_mutations_are_refused_with_the_right_error() {
        let note = signed_checkpoint();
        let v = log_verifier();
        let not_signed = Err(NoteError::NotSignedByKey {
            name: ORIGIN.to_owned(),
            key_hash: v.key_hash(),
        });
        let bad_signature = Err(NoteError::BadSignature {
            name: ORIGIN.to_owned(),
            key_hash: v.key_hash(),
        });

        // Wrong origin.
        let want = Err(NoteError::WrongOrigin {
            expected: "example.com/other".to_owned(),
            got: ORIGIN.to_owned(),
        });
        check_open(&note, &v, "example.com/other", want);

        // Wrong key: same name, other key; same key, other name.
        let other_key = NoteVerifier::new(ORIGIN, SigningKey::from_bytes(&[8; 32]).verifying_key());
        let other_key = other_key.unwrap();
        let want = Err(NoteError::NotSignedByKey {
            name: ORIGIN.to_owned(),
            key_hash: other_key.key_hash(),
        });
        check_open(&note, &other_key, ORIGIN, want);
        let other_name = NoteVerifier::new("example.com/other", log_key().verifying_key()).unwrap();
        let want = Err(NoteError::NotSignedByKey {
            name: "example.com/other".to_owned(),
            key_hash: other_name.key_hash(),
        });
        check_open(&note, &other_name, ORIGIN, want);

        // One bit flipped in the body: origin, size and root lines.
        for (from, to) in [("example", "dxample"), ("\n5\n", "\n4\n"), ("Tju7", "Tju6")] {
            let tampered = note.replacen(from, to, 1);
            assert_ne!(tampered, note);
            check_open(&tampered, &v, ORIGIN, bad_signature.clone());
        }

        // One bit flipped in the signature; or in its key hash, which makes it another key's.
        check_open(
            &flip_signature_bit(&note),
            &v,
            ORIGIN,
            bad_signature.clone(),
        );
        let (head, line) = note.trim_end().rsplit_once(' ').unwrap();
        let mut blob = BASE64.decode(line).unwrap();
        blob[0] ^= 0x80;
        let other_id = format!("{head} {}\n", BASE64.encode(blob));
        check_open(&other_id, &v, ORIGIN, not_signed.clone());

        // Trailing bytes after the signature block.
        check_open(
            &format!("{note}x"),
            &v,
            ORIGIN,
            Err(NoteError::TrailingData),
        );
        check_open(
            &format!("{note}\n"),
            &v,
            ORIGIN,
            Err(NoteError::NoSignatures),
        );
        let want = Err(NoteError::MalformedSignatureLine {
            reason: "does not start with an em dash and a space",
        });
        check_open(&format!("{note}garbage\n"), &v, ORIGIN, want);

        // Missing blank line between body and signatures.
        let joined = note.replacen("\n\n", "\n", 1);
        check_open(&joined, &v, ORIGIN, Err(NoteError::MissingBlankLine));

        // Carriage returns are control characters.
        let crlf = note.replace('\n', "\r\n");
        let want = Err(NoteError::ControlCharacter {
            offset: ORIGIN.len(),
        });
        check_open(&crlf, &v, ORIGIN, want);

        // An over-long line, even in another key's signature line.
        let long = format!("{note}— other {}\n", "A".repeat(MAX_LINE_BYTES));
        let want = Err(NoteError::LineTooLong {
            len: "— other ".len() + MAX_LINE_BYTES,
            max: MAX_LINE_BYTES,
        });
        check_open(&long, &v, ORIGIN, want);
        let huge = format!("{note}{}", "— a AAAAAAAA\n".repeat(MAX_NOTE_BYTES / 13));
        assert!(matches!(
            open_checkpoint(&huge, &v, ORIGIN),
            Err(NoteError::TooLarge { .. })
        ));

        // Signed but malformed bodies: checked only after the signature verifies.
        let root = BASE64.encode(h(ROOTS[4]));
        let key = log_key();
        let sign = |body: &str| sign_note(body, ORIGIN, &key).unwrap();
        let body_cases = [
            (
                format!("{ORIGIN}\n05\n{root}\n"),
                NoteError::InvalidSize("05".into()),
            ),
            (
                format!("{ORIGIN}\n00\n{root}\n"),
                NoteError::InvalidSize("00".into()),
            ),
            (
                format!("{ORIGIN}\n+5\n{root}\n"),
                NoteError::InvalidSize("+5".into()),
            ),
            (
                format!("{ORIGIN}\n5a\n{root}\n"),
                NoteError::InvalidSize("5a".into()),
            ),
            // The last blank line separates text and signatures, so the text is intact.
            (
                format!("{ORIGIN}\n\n{root}\n"),
                NoteError::InvalidSize(String::new()),
            ),
            (
                format!("{ORIGIN}\n18446744073709551616\n{root}\n"),
                NoteError::InvalidSize("18446744073709551616".into()),
            ),
            (
                format!("{ORIGIN}\n5\n{}\n", &root[..43]),
                NoteError::InvalidRootHash,
            ),
            (
                format!("{ORIGIN}\n5\n{}\n", BASE64.encode([1u8; 31])),
                NoteError::InvalidRootHash,
            ),
            (
                format!("{ORIGIN}\n5\n{}\n", BASE64.encode([1u8; 33])),
                NoteError::InvalidRootHash,
            ),
            (
                format!("{ORIGIN}\n5\n{}\n", root.replace('=', "")),
                NoteError::InvalidRootHash,
            ),
            (format!("{ORIGIN}\n5\n"), NoteError::TooFewLines),
        ];
        for (body, want) in body_cases {
            check_open(&sign(&body), &v, ORIGIN, Err(want));
        }
    }

    #[test]
    fn checkpoint_extension_lines_and_other_signers() {
        let root = BASE64.encode(h(ROOTS[4]));
        let key = log_key();
        let v = log_verifier();
        let with_ext = sign_note(
            &format!("{ORIGIN}\n5\n{root}\next one\next two\n"),
            ORIGIN,
            &key,
        );
        check_open(&with_ext.unwrap(), &v, ORIGIN, Ok(checkpoint()));

        // A witness cosignature (unknown key) before and after ours is ignored.
        let witness = sign_note(
            &checkpoint().body(),
            "witness.example/w1",
            &SigningKey::from_bytes(&[9; 32]),
        );
        let witness_line = witness.unwrap().split_once("\n\n").unwrap().1.to_owned();
        let note = signed_checkpoint();
        check_open(
            &format!("{note}{witness_line}"),
            &v,
            ORIGIN,
            Ok(checkpoint()),
        );
        let (body, ours) = note.split_once("\n\n").unwrap();
        let reordered = format!("{body}\n\n{witness_line}{ours}");
        check_open(&reordered, &v, ORIGIN, Ok(checkpoint()));

        // A malformed line from anyone makes the note malformed.
        let want = Err(NoteError::MalformedSignatureLine {
            reason: "signature is not base64",
        });
        check_open(&format!("{note}— other !!!!\n"), &v, ORIGIN, want);
        let want = Err(NoteError::MalformedSignatureLine {
            reason: "signature shorter than 5 bytes",
        });
        check_open(&format!("{note}— other AAAAAA==\n"), &v, ORIGIN, want);

        // A bad signature by our key is refused even next to a good one.
        let bad = flip_signature_bit(&note);
        let bad_line = bad.split_once("\n\n").unwrap().1;
        assert!(matches!(
            open_checkpoint(&format!("{note}{bad_line}"), &v, ORIGIN),
            Err(NoteError::BadSignature { .. })
        ));
    }

    #[test]
    fn checkpoint_body_parsing() {
        let root = BASE64.encode(h(ROOTS[4]));
        let check = |text: &str, want: Result<Checkpoint, NoteError>| {
            assert_eq!(Checkpoint::parse_body(text), want, "{text:?}");
        };
        check(&checkpoint().body(), Ok(checkpoint()));
        let empty = Checkpoint {
            origin: "o".into(),
            size: 0,
            root: empty_root(),
        };
        check(&empty.body(), Ok(empty.clone()));
        check(
            &format!("o\n0\n{}\n", BASE64.encode(empty_root())),
            Ok(empty),
        );
        check(
            &format!("{ORIGIN}\n5\n{root}"),
            Err(NoteError::MissingFinalNewline),
        );
        check(&format!("\n5\n{root}\n"), Err(NoteError::InvalidOrigin));
        check(
            &format!("{ORIGIN}\n5\n{root}\n\next\n"),
            Err(NoteError::EmptyExtensionLine),
        );
        check(
            &format!("{ORIGIN}\n5\n{root}\next\n\n"),
            Err(NoteError::EmptyExtensionLine),
        );
        check(
            &format!("{ORIGIN}\n\n{root}\n"),
            Err(NoteError::InvalidSize(String::new())),
        );
        check(
            &format!("{ORIGIN}\n 5\n{root}\n"),
            Err(NoteError::InvalidSize(" 5".into())),
        );
        check(
            &format!("{ORIGIN}\n5\n{root}\t\n"),
            Err(NoteError::ControlCharacter { offset: 68 }),
        );
        check("", Err(NoteError::MissingFinalNewline));
        // A root with non-zero padding bits is not canonical base64.
        let noncanonical = format!("{}{}", &root[..42], "R=");
        assert_ne!(noncanonical, root);
        check(
            &format!("{ORIGIN}\n5\n{noncanonical}\n"),
            Err(NoteError::InvalidRootHash),
        );
    }

    #[test]
    fn signing_refuses_unsignable_input() {
        let key = log_key();
        let mut cp = checkpoint();
        assert_eq!(
            sign_checkpoint(&cp, "bad name", &key),
            Err(NoteError::InvalidKeyName("bad name".into()))
        );
        cp.origin = String::new();
        assert_eq!(
            sign_checkpoint(&cp, ORIGIN, &key),
            Err(NoteError::InvalidOrigin)
        );
        cp.origin = "a\nb".into();
        assert_eq!(
            sign_checkpoint(&cp, ORIGIN, &key),
            Err(NoteError::InvalidOrigin)
        );
        cp.origin = "a\rb".into();
        assert_eq!(
            sign_checkpoint(&cp, ORIGIN, &key),
            Err(NoteError::ControlCharacter { offset: 1 })
        );
        cp.origin = "o".repeat(MAX_LINE_BYTES + 1);
        assert!(matches!(
            sign_checkpoint(&cp, ORIGIN, &key),
            Err(NoteError::LineTooLong { .. })
        ));
    }
}
