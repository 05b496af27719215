//! spacesync-hub: the ministry's central aggregator. It verifies every entry a province
//! signed, appends it to one tamper-evident log, and keeps merged views of the campaign.
//!
//! # Layout
//! - [`store`]: the storage trait (ordered keys, atomic batches, flush) and its sled backend.
//! - [`log`]: the append-only log and its RFC 9162 Merkle tree, checkpoints and proofs.
//! - [`entries`]: the hub's own signed log entries and the source records they carry.
//! - [`registry`]: registered sources, their keys (with rotation) and scopes.
//! - [`hub`]: the hub's state (tree, heads, registry, views, alarms), loaded from the store
//!   and shared as immutable snapshots with readers; one writer at a time.
//! - [`ingest`]: the algorithm that changes it — verified, idempotent ingest, hub-signed
//!   entries and registry changes.
//! - [`views`]: merged space counts, roll-ups, milestones, nominations, activities.
//! - [`assessment`]: what a bulletin says, as types (the signed body is their JSON).
//! - [`tracking`]: deadlines, plan checks, pace, lagging — a pure function of views and time.
//! - [`bulletin`]: numbered, signed, immutable progress bulletins, and their verification.
//! - [`render`]: bulletins as HTML, Markdown and CSV, in Chinese or English.
//! - [`notices`]: notices to lagging regions from rules, deduplicated, delivered and tracked.
//! - [`auth`]: bearer tokens with roles, and replay protection for signed agent requests.
//! - [`state`]: the state every request handler shares: the hub, budgets, connection counts.
//! - [`access`]: who is asking and may they — the extractors of the API and the dashboard.
//! - [`admin`]: administration of a running or stopped hub — the operations the CLI and
//!   the admin API (`/v1/admin/…`) share, invitations and enrolment.
//! - [`http`]: the HTTP API (the only module that knows the wire JSON).
//! - [`dashboard`]: the ministry dashboard — server-rendered HTML pages with cookie sessions.
//! - [`schedule`]: issues scheduled bulletins on the hub's clock.
//! - [`config`]: the data directory and hub.toml.
//! - [`serve`]: `serve`'s process wiring — API, metrics listener and scheduler, shutdown.
//! - [`cli`]: the subcommands; `src/bin/spacesync-hub.rs` only parses and calls it.
//! - [`maintenance`]: `rebuild` and `verify` over the whole log.
//! - [`metrics`]: ingest counters and the batch-duration histogram behind `/metrics`.
//! - [`migrate`]: `migrate --to postgres://…`, a stopped hub moved from sled into PostgreSQL.
//! - [`log_check`]: what `verify` judges of each leaf alone (its signature, in batches on
//!   every core), pipelined with its walk over the log in order.
//! - [`witness`]: agents' cosignatures of checkpoints — checked, kept per tree size, served
//!   on the checkpoint notes.
//! - [`wording`]: every sentence people read, in Chinese and English, and number/date formats.

pub mod access;
pub mod admin;
pub mod assessment;
pub mod auth;
pub mod backup;
pub mod bulletin;
pub mod bundle;
pub mod check_pool;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod entries;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod log;
pub mod log_check;
pub mod maintenance;
pub mod metrics;
pub mod migrate;
pub mod notices;
pub mod registry;
pub mod render;
pub mod schedule;
pub mod serve;
pub mod state;
pub mod store;
pub mod tracking;
pub mod views;
pub mod witness;
pub mod wording;
