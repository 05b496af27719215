//! Pre-signing in a separate process.
//!
//! Signing costs about as much CPU as verifying, so entries are signed before the timed
//! phase and by another process (`spacesync-bench presign`, hidden), which exits before
//! the hub is started: during the timed phase the cores belong to the hub and the thin
//! HTTP clients. The output is one NDJSON file per source, each line one ingest batch body
//! exactly as an agent sends it (`{"source": …, "entries": [DSSE envelopes]}`), plus
//! `manifest.json`.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use spacesync_shared::keys::{parse_public_key, public_key_line};
use spacesync_shared::wire::IngestBatch;
use spacesync_shared::{Digest, Envelope, SourceId};

use crate::workload::{self, Shape};

/// What `presign` wrote.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// The workload.
    pub shape: Shape,
    /// Entries per batch.
    pub batch: u64,
    /// Wall seconds the signing took (in the presign process, on every core).
    pub sign_s: f64,
    /// One per source.
    pub sources: Vec<ManifestSource>,
}

/// One source in the manifest.
#[derive(Debug, Serialize, Deserialize)]
pub struct ManifestSource {
    /// Source id.
    pub id: String,
    /// Scope (the provincial unit).
    pub unit: String,
    /// Public key line for `agents add`.
    pub key_line: String,
    /// Entries signed.
    pub entries: u64,
    /// File name of its batches (NDJSON) inside the directory.
    pub file: String,
}

/// Body of the hidden `presign` subcommand: signs `shape` in batches of `batch` into `out`,
/// using every core.
pub fn run(shape: Shape, batch: u64, out: &Path) -> Result<()> {
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let t = Instant::now();
    let plans = workload::plan(shape)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(p) = plans.get(i) else {
                            return Ok(());
                        };
                        let path = out.join(format!("{}.ndjson", p.id));
                        let f = std::fs::File::create(&path)
                            .with_context(|| format!("creating {}", path.display()))?;
                        let mut w = BufWriter::new(f);
                        let source = SourceId::parse(&p.id).map_err(|e| anyhow!("{e}"))?;
                        let mut prev = Digest::ZERO;
                        let mut from = 0;
                        while from < p.entries {
                            let to = (from + batch).min(p.entries);
                            let entries = p.sign(from, to, prev)?;
                            prev = entries.last().map_or(prev, Envelope::payload_hash);
                            let body = IngestBatch {
                                source: source.clone(),
                                entries,
                            };
                            serde_json::to_writer(&mut w, &body)?;
                            w.write_all(b"\n")?;
                            from = to;
                        }
                        w.flush()
                            .with_context(|| format!("writing {}", path.display()))?;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a signing thread panicked")))
            })
            .collect()
    });
    for r in results {
        r?;
    }
    let manifest = Manifest {
        shape,
        batch,
        sign_s: t.elapsed().as_secs_f64(),
        sources: plans
            .iter()
            .map(|p| ManifestSource {
                id: p.id.clone(),
                unit: p.unit.to_string(),
                key_line: public_key_line(&p.key.verifying_key()),
                entries: p.entries,
                file: format!("{}.ndjson", p.id),
            })
            .collect(),
    };
    let path = out.join("manifest.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// One ingest request body, ready to send.
#[derive(Debug, Clone)]
pub struct Body {
    /// The JSON bytes (as written by `presign`).
    pub json: Vec<u8>,
    /// First and last seq it carries.
    pub first_seq: u64,
    /// Last seq it carries.
    pub last_seq: u64,
}

/// One source's signed batches.
#[derive(Debug, Clone)]
pub struct SourceBatches {
    /// Source id.
    pub id: String,
    /// Scope.
    pub unit: String,
    /// Public key line.
    pub key_line: String,
    /// Its key, parsed.
    pub key: VerifyingKey,
    /// Its batches in seq order.
    pub bodies: Vec<Body>,
}

/// Everything `presign` wrote, read back.
#[derive(Debug)]
pub struct Presigned {
    /// The manifest.
    pub manifest: Manifest,
    /// Per source.
    pub sources: Vec<SourceBatches>,
    /// Wall seconds of the whole presign process (start to exit).
    pub process_s: f64,
}

impl Presigned {
    /// Entries in all.
    pub fn entries(&self) -> u64 {
        self.manifest.sources.iter().map(|s| s.entries).sum()
    }

    /// Every batch parsed back into envelopes, with its source's key (for the limits).
    pub fn parsed(&self) -> Result<Vec<(VerifyingKey, Vec<Envelope>)>> {
        self.sources
            .iter()
            .flat_map(|s| s.bodies.iter().map(move |b| (s, b)))
            .map(|(s, b)| parse_body(s, b))
            .collect()
    }

    /// Batches parsed back like [`Presigned::parsed`], taking each source's first batch,
    /// then each one's second, … until at least `max_entries` entries: a sample of every
    /// source for the limits of a run too large to hold parsed whole.
    pub fn parsed_sample(&self, max_entries: u64) -> Result<Vec<(VerifyingKey, Vec<Envelope>)>> {
        let mut out = Vec::new();
        let mut taken = 0;
        let deepest = self
            .sources
            .iter()
            .map(|s| s.bodies.len())
            .max()
            .unwrap_or(0);
        for i in 0..deepest {
            for s in &self.sources {
                if taken >= max_entries {
                    return Ok(out);
                }
                if let Some(b) = s.bodies.get(i) {
                    let parsed = parse_body(s, b)?;
                    taken += parsed.1.len() as u64;
                    out.push(parsed);
                }
            }
        }
        Ok(out)
    }

    /// Drops the batch bodies (the sources' ids, scopes and keys stay): what a large run's
    /// harness no longer needs once the hub has taken them.
    pub fn drop_bodies(&mut self) {
        for s in &mut self.sources {
            s.bodies = Vec::new();
        }
    }
}

fn parse_body(s: &SourceBatches, b: &Body) -> Result<(VerifyingKey, Vec<Envelope>)> {
    let batch: IngestBatch = serde_json::from_slice(&b.json)
        .with_context(|| format!("a batch of {} does not parse", s.id))?;
    Ok((s.key, batch.entries))
}

/// Runs `presign` as a child process of this binary into `dir`, waits for it, and reads
/// its output back.
pub fn presign_in_child(shape: Shape, batch: u64, dir: &Path) -> Result<Presigned> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let t = Instant::now();
    let status = Command::new(&exe)
        .arg("presign")
        .arg("--out")
        .arg(dir)
        .arg("--shape")
        .arg(serde_json::to_string(&shape)?)
        .arg("--batch")
        .arg(batch.to_string())
        .status()
        .with_context(|| format!("running {} presign", exe.display()))?;
    if !status.success() {
        bail!("the presign process failed ({status})");
    }
    let process_s = t.elapsed().as_secs_f64();
    load(dir, process_s)
}

fn load(dir: &Path, process_s: f64) -> Result<Presigned> {
    let path = dir.join("manifest.json");
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not a presign manifest", path.display()))?;
    let mut sources = Vec::with_capacity(manifest.sources.len());
    for s in &manifest.sources {
        let file: PathBuf = dir.join(&s.file);
        let f =
            std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
        let mut bodies = Vec::new();
        let mut first = 1;
        for line in BufReader::new(f).split(b'\n') {
            let json = line.with_context(|| format!("reading {}", file.display()))?;
            if json.is_empty() {
                continue;
            }
            let last = (first + manifest.batch - 1).min(s.entries);
            bodies.push(Body {
                json,
                first_seq: first,
                last_seq: last,
            });
            first = last + 1;
        }
        if first != s.entries + 1 {
            bail!(
                "{}: holds seqs up to {} but the manifest says {}",
                file.display(),
                first - 1,
                s.entries
            );
        }
        sources.push(SourceBatches {
            key: parse_public_key(&s.key_line).map_err(|e| anyhow!("{}: {e}", s.id))?,
            id: s.id.clone(),
            unit: s.unit.clone(),
            key_line: s.key_line.clone(),
            bodies,
        });
    }
    Ok(Presigned {
        manifest,
        sources,
        process_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presigned_batches_read_back_and_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shape = Shape::Entries {
            total: 100,
            sources: 3,
        };
        run(shape, 7, dir.path()).expect("presign");
        let p = load(dir.path(), 0.0).expect("load");
        assert_eq!(p.entries(), 100);
        assert_eq!(p.sources[0].bodies.len(), 5); // 34 entries in batches of 7
        assert_eq!(p.sources[0].bodies[4].last_seq, 34);
        for (key, envs) in p.parsed().expect("parse") {
            let refs: Vec<&Envelope> = envs.iter().collect();
            spacesync_shared::entry::verify_signatures(&refs, &key).expect("verifies");
        }
    }
}
