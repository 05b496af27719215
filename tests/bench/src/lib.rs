//! `spacesync-bench`: the load generator and measurement harness of the performance issue.
//! It runs the real `spacesync-hub` and `spacesync-agent` binaries, drives them over
//! loopback HTTP with realistic signed batches, and prints each figure next to a limit or
//! peer measured in the same run, ending with one `key=value` line per command.
//!
//! # Layout
//!
//! - [`report`] — the closing `cmd: key=value …` line every command prints.
//! - [`procs`] — child processes killed on drop, finding the hub and agent binaries, free
//!   ports, CPU time and resident memory from `/proc`.
//! - [`workload`] — realistic input: weekly space-count snapshots of schools in real counties
//!   of the 32 provincial units over the 2018 campaign, and one signing key per source.
//! - [`presign`] — the hidden `presign` subcommand (run as a separate process, so signing
//!   never competes with the hub) that writes signed ingest batches as NDJSON, and its reader.
//! - [`hub`] — one hub driven through its command line: `init`, `agents add`, `token
//!   create`, `serve`, clean stop, restart, `bulletin issue`.
//! - [`drive`] — concurrent ingest clients (one per source) and what they measured.
//! - [`limits`] — same-run limits: Ed25519 batch verification on all cores, single
//!   verification, signing, SHA-256, a durable batched sled append.
//! - [`pg`] — a private PostgreSQL server and the INSERT / COPY peer.
//! - [`agents`] — real agent processes: `init`, `run`, intake, `/v1/status`, stops.
//! - [`ingest`], [`agent`], [`scale`] — the three commands of the fixed interface;
//!   [`drain`] (agents that buffered while the hub was down, then drain into it) and
//!   [`idle`] (`agent-idle`: an idle agent's memory with a large buffer) and [`restart`]
//!   (an existing hub data directory's start to `/readyz`, memory and stop).

pub mod agent;
pub mod agents;
pub mod drain;
pub mod drive;
pub mod hub;
pub mod idle;
pub mod ingest;
pub mod limits;
pub mod pg;
pub mod presign;
pub mod procs;
pub mod report;
pub mod restart;
pub mod scale;
pub mod workload;
