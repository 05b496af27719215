//! `ingest`: the real hub over loopback HTTP, 32 sources at once, next to the same-run
//! limits (Ed25519 batch verification on all cores, single verification, SHA-256, a durable
//! batched sled append) and the PostgreSQL peer; then `spacesync-hub verify` over the log
//! the run left, against the same batch-verification limit.

use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::drive;
use crate::hub::HubInstance;
use crate::limits;
use crate::pg;
use crate::presign;
use crate::procs::{self, Binary, Bins};
use crate::report::{Report, p50_p99};
use crate::workload::{self, Shape};

/// Rows per transaction of the PostgreSQL peer (issue 12's "Why": 500 rows a transaction).
const PG_ROWS_PER_TRANSACTION: usize = 500;

/// `ingest` options.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Entries in all.
    #[arg(long, default_value_t = 64_000)]
    pub entries: u64,
    /// Sources (agents), each its own concurrent client; one per provincial unit up to 32.
    #[arg(long, default_value_t = 32)]
    pub sources: usize,
    /// Entries per ingest batch (and per sled flush), as an agent pushes them by default.
    #[arg(long, default_value_t = 1000)]
    pub batch: u64,
    /// Send plain JSON bodies instead of gzip (agents send gzip).
    #[arg(long)]
    pub plain: bool,
    /// Ask for one receipt per entry instead of one per batch (what agents before batch
    /// receipts did).
    #[arg(long)]
    pub per_entry_receipts: bool,
    /// Skip the PostgreSQL peer (reported as NA).
    #[arg(long)]
    pub no_pg: bool,
    /// Run the hub on PostgreSQL (`init --store`, a private server of this run, fsync on)
    /// instead of sled; the report then says `store=postgres`.
    #[arg(long)]
    pub hub_on_pg: bool,
    /// Hub replicas serving the one database (with --hub-on-pg): copies of the data
    /// directory, each its own `serve`; source i sends to replica i mod N. The report ends
    /// with `replicas=N` and the database server's CPU per entry (`db_cpu_us_per_entry`).
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Each limit repeats its pass for at least this many seconds.
    #[arg(long, default_value_t = 1.0)]
    pub min_limit_s: f64,
    #[command(flatten)]
    pub bins: Bins,
}

/// Runs `ingest`; its report.
pub async fn run(a: &IngestArgs) -> Result<Report> {
    if a.entries == 0 {
        bail!("--entries must be at least 1");
    }
    if a.replicas == 0 || (a.replicas > 1 && !a.hub_on_pg) {
        bail!(
            "--replicas must be at least 1, and more than 1 needs --hub-on-pg (sled allows one process)"
        );
    }
    let hub_bin = procs::locate(Binary::Hub, a.bins.hub_bin.as_deref())?;
    let work = tempfile::Builder::new()
        .prefix("spacesync-bench-")
        .tempdir()
        .context("creating a work directory")?;
    let shape = Shape::Entries {
        total: a.entries,
        sources: a.sources,
    };

    let pre = presign::presign_in_child(shape, a.batch, &work.path().join("presigned"))?;
    let n = pre.entries();
    println!(
        "presigned {n} entries for {} sources in batches of {} ({:.2} s in a separate process)",
        pre.sources.len(),
        a.batch,
        pre.process_s
    );

    // The hub's own database server, when it runs on PostgreSQL: stopped after the run.
    let hub_pg = if a.hub_on_pg {
        let bin = pg::find_binaries().context(spacesync_pgtest::INSTALL_HINT)?;
        let server = tokio::task::spawn_blocking(move || spacesync_pgtest::PgServer::start(&bin))
            .await
            .context("starting the hub's PostgreSQL")??;
        Some(server)
    } else {
        None
    };
    let store_url = hub_pg.as_ref().map(|s| s.url("postgres"));
    let mut hub = HubInstance::init(&hub_bin, work.path(), store_url.as_deref())?;
    for s in &pre.sources {
        hub.add_source(&s.id, &s.unit, &s.key_line)?;
    }
    let admin = hub.create_token("admin")?;
    let mut replicas = Vec::new();
    for _ in 1..a.replicas {
        replicas.push(hub.replica(work.path())?);
    }
    hub.start().await?;
    for r in &mut replicas {
        r.start().await?;
    }
    let mut pids = Vec::new();
    let mut urls = Vec::new();
    for h in std::iter::once(&hub).chain(replicas.iter()) {
        pids.push(
            h.pid()
                .context("the hub has no process id after starting")?,
        );
        urls.push(h.url());
    }
    println!("hub {} serving on {}", hub_bin.display(), urls.join(", "));
    let db_pid = hub_pg.as_ref().and_then(|s| s.pid());
    let db0 = db_pid.map(procs::tree_cpu_seconds).transpose()?;
    let d =
        drive::drive_replicas(&urls, &pids, &pre.sources, !a.plain, !a.per_entry_receipts).await?;
    let db_cpu_s = match (db_pid, db0) {
        (Some(p), Some(c0)) => Some(procs::tree_cpu_seconds(p)? - c0),
        _ => None,
    };
    // A hub older than the torsion test shared between batches has no such figure.
    let sharing = hub.torsion_batches_per_test(&admin).await.ok();
    for r in &mut replicas {
        r.stop()?;
    }
    hub.stop()?;
    if d.entries != n {
        bail!("the hub acknowledged {} entries of {n}", d.entries);
    }
    let (p50, p99) = p50_p99(&d.batch_ms);
    println!(
        "hub ingest: {:.0} entries/s ({n} in {:.2} s), batch p50 {p50:.1} ms p99 {p99:.1} ms, \
         hub CPU {:.2} s ({:.2} cores), clients' CPU {:.2} s, {} throttled",
        d.per_s(),
        d.wall_s,
        d.hub_cpu_s,
        d.hub_cpu_s / d.wall_s,
        d.client_cpu_s,
        d.throttled
    );

    // `verify` over the store the run left, with the hub stopped.
    let verified = hub.verify()?;
    println!("{}", verified.describe());

    // Limits, on the same entries, with the hub stopped.
    let parsed = pre.parsed()?;
    let limit = limits::verify_limit(&parsed, a.min_limit_s)?;
    let verify = limit.per_s;
    let raw = limits::verify_all_cores(limits::Verifier::Raw, &parsed, a.min_limit_s)?;
    let per_batch =
        limits::verify_all_cores(limits::Verifier::RulePerBatch, &parsed, a.min_limit_s)?;
    let single = limits::verify_single(&parsed, 20_000, a.min_limit_s)?;
    let payloads: Vec<&[u8]> = parsed
        .iter()
        .flat_map(|(_, envs)| envs.iter().map(|e| e.payload.as_slice()))
        .collect();
    let (sha, sha_mb) = limits::sha256(&payloads, a.min_limit_s)?;
    let stored: Vec<Vec<u8>> = parsed
        .iter()
        .flat_map(|(_, envs)| envs.iter())
        .map(serde_json::to_vec)
        .collect::<Result<_, _>>()?;
    let append = limits::sled_append(&stored, a.batch as usize, a.min_limit_s)?;
    let cores = limits::cores();
    println!(
        "limits: batch verification {verify:.0}/s on {cores} cores (the torsion test shared by \
         {} batches; {per_batch:.0}/s with one a batch; the library's bare batch \
         equation {raw:.0}/s), single {single:.0}/s on one, \
         SHA-256 {sha:.0}/s ({sha_mb:.0} MB/s), sled append+flush per {} {append:.0}/s",
        limits::SETTLE_EVERY,
        a.batch
    );
    if let Some(k) = sharing {
        println!("the hub's torsion tests covered {k:.2} batches each");
    }

    // The PostgreSQL peer: the same records, unsigned.
    let pg_rates = if a.no_pg {
        eprintln!("--no-pg: the PostgreSQL peer is skipped (NA).");
        None
    } else {
        let t = Instant::now();
        let rows = rows(shape)?;
        // The peer as issue 12 fixed it: 500 rows a transaction, whatever the hub's batches.
        let r = pg::peer(&rows, PG_ROWS_PER_TRANSACTION).await?;
        if let Some(r) = r {
            println!(
                "PostgreSQL peer: INSERT {:.0} rows/s, COPY {:.0} rows/s ({:.1} s with start-up)",
                r.insert_per_s,
                r.copy_per_s,
                t.elapsed().as_secs_f64()
            );
        }
        r
    };

    let per_s = d.per_s();
    let mut r = Report::new("ingest");
    r.int("entries_per_s", per_s)
        .int("verify_limit_per_s", verify)
        .dec("ratio", per_s / verify)
        .int("raw_verify_limit_per_s", raw)
        .dec("raw_ratio", per_s / raw)
        .int("per_batch_verify_limit_per_s", per_batch)
        .dec("per_batch_ratio", per_s / per_batch)
        .opt_dec("torsion_batches_per_test", sharing)
        .opt_int("pg_insert_per_s", pg_rates.map(|p| p.insert_per_s))
        .opt_dec("pg_ratio", pg_rates.map(|p| per_s / p.insert_per_s))
        .opt_int("pg_copy_per_s", pg_rates.map(|p| p.copy_per_s))
        .opt_dec("pg_copy_ratio", pg_rates.map(|p| per_s / p.copy_per_s))
        .dec("p50_batch_ms", p50)
        .dec("p99_batch_ms", p99)
        .dec("cpu_s_per_entry", d.hub_cpu_s / n as f64)
        .dec("hub_cores_busy", d.hub_cpu_s / d.wall_s)
        .dec(
            "cpu_vs_verify",
            verify / cores as f64 * d.hub_cpu_s / n as f64,
        )
        .int("verify_single_per_s", single)
        .int("sha256_limit_per_s", sha)
        .int("append_limit_per_s", append)
        .dec("append_ratio", per_s / append)
        .int("entries", n as f64)
        .int("sources", pre.sources.len() as f64)
        .int("batch", a.batch as f64)
        .int("gzip", if a.plain { 0.0 } else { 1.0 })
        .int(
            "batch_receipts",
            if a.per_entry_receipts { 0.0 } else { 1.0 },
        )
        .int("cores", cores as f64)
        .dec("wall_s", d.wall_s)
        .dec("client_cpu_s", d.client_cpu_s)
        .int("throttled", d.throttled as f64);
    verified.report(&mut r, &limit);
    r.raw("store", if a.hub_on_pg { "postgres" } else { "sled" });
    r.int("replicas", a.replicas as f64)
        .opt_dec("db_cpu_us_per_entry", db_cpu_s.map(|c| c / n as f64 * 1e6));
    if let Some(c) = db_cpu_s {
        println!(
            "database server: {c:.2} s of CPU ({:.1} us an entry, {:.2} cores busy)",
            c / n as f64 * 1e6,
            c / d.wall_s
        );
    }
    drop(hub_pg);
    Ok(r)
}

/// The PostgreSQL peer's rows: each entry's source, seq and record, unsigned.
fn rows(shape: Shape) -> Result<Vec<pg::Row>> {
    let mut out = Vec::new();
    for p in workload::plan(shape)? {
        for k in 0..p.entries {
            out.push((p.id.clone(), k as i64 + 1, p.record(k)));
        }
    }
    Ok(out)
}
