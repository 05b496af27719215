//! The peer a ministry DBA would use instead: PostgreSQL, on a private server
//! (`spacesync_pgtest::PgServer`: initdb into a temporary directory, a free loopback port,
//! `fsync` on; as the `postgres` user when running as root, since PostgreSQL refuses root;
//! the same server the hub's PostgreSQL tests use), taking the same
//! space-count rows *unsigned* into `(source text, seq bigint, record jsonb, primary
//! key (source, seq))` from one client, `batch` rows per transaction: once as multi-row
//! `INSERT`s and once as binary `COPY`.
//!
//! The client is `tokio-postgres`, the maintained async client of the rust-postgres project
//! on the tokio runtime the workspace already uses; a later PostgreSQL backend for the hub
//! can start from the same crate.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use spacesync_pgtest::PgServer;
pub use spacesync_pgtest::find_binaries;
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

/// The peer's rates.
#[derive(Debug, Clone, Copy)]
pub struct PgRates {
    /// Rows a second with one multi-row `INSERT` per transaction.
    pub insert_per_s: f64,
    /// Rows a second with one binary `COPY` per transaction.
    pub copy_per_s: f64,
}

/// One row: source, seq, the record.
pub type Row = (String, i64, Value);

/// Runs the peer on `rows`, `batch` rows per transaction. `Ok(None)` when PostgreSQL is not
/// installed (said on stderr).
pub async fn peer(rows: &[Row], batch: usize) -> Result<Option<PgRates>> {
    let Some(bin) = find_binaries() else {
        eprintln!(
            "PostgreSQL is not installed (no initdb and postgres in /usr/lib/postgresql/*/bin or on PATH): \
             the peer is reported as NA. `apt-get install postgresql` adds it."
        );
        return Ok(None);
    };
    // Started on a thread of its own: it waits for the server synchronously.
    let server = tokio::task::spawn_blocking(move || PgServer::start(&bin))
        .await
        .context("starting PostgreSQL")??;
    let mut client = server.connect().await?;
    let version: String = client
        .query_one("SHOW server_version", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or_default();
    let fsync: String = client
        .query_one("SHOW fsync", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or_default();
    eprintln!("PostgreSQL {version} (fsync={fsync}), port {}", server.port);
    for t in ["space_counts_insert", "space_counts_copy"] {
        client
            .batch_execute(&format!(
                "CREATE TABLE {t} (source text, seq bigint, record jsonb, PRIMARY KEY (source, seq))"
            ))
            .await
            .with_context(|| format!("creating table {t}"))?;
    }
    let insert_per_s = insert(&mut client, rows, batch).await?;
    let copy_per_s = copy(&mut client, rows, batch).await?;
    let count: i64 = client
        .query_one("SELECT (SELECT count(*) FROM space_counts_insert) + (SELECT count(*) FROM space_counts_copy)", &[])
        .await?
        .get(0);
    if count != 2 * rows.len() as i64 {
        bail!("PostgreSQL holds {count} rows, expected {}", 2 * rows.len());
    }
    drop(client);
    drop(server);
    Ok(Some(PgRates {
        insert_per_s,
        copy_per_s,
    }))
}

/// Multi-row `INSERT … VALUES (…), (…)` of `batch` rows, one transaction each.
async fn insert(client: &mut Client, rows: &[Row], batch: usize) -> Result<f64> {
    let sql = |n: usize| {
        let values: Vec<String> = (0..n)
            .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
            .collect();
        format!(
            "INSERT INTO space_counts_insert (source, seq, record) VALUES {}",
            values.join(", ")
        )
    };
    let full = client
        .prepare(&sql(batch))
        .await
        .context("preparing the INSERT")?;
    let t = Instant::now();
    for chunk in rows.chunks(batch) {
        let stmt = if chunk.len() == batch {
            full.clone()
        } else {
            client.prepare(&sql(chunk.len())).await?
        };
        let params: Vec<&(dyn ToSql + Sync)> = chunk
            .iter()
            .flat_map(|(s, q, r)| [s as &(dyn ToSql + Sync), q, r])
            .collect();
        let tx = client.transaction().await?;
        tx.execute(&stmt, &params).await.context("INSERT")?;
        tx.commit().await.context("COMMIT")?;
    }
    Ok(rows.len() as f64 / t.elapsed().as_secs_f64())
}

/// Binary `COPY … FROM STDIN` of `batch` rows, one transaction each.
async fn copy(client: &mut Client, rows: &[Row], batch: usize) -> Result<f64> {
    let t = Instant::now();
    for chunk in rows.chunks(batch) {
        let tx = client.transaction().await?;
        let sink = tx
            .copy_in("COPY space_counts_copy (source, seq, record) FROM STDIN (FORMAT binary)")
            .await
            .context("COPY")?;
        let mut w = std::pin::pin!(BinaryCopyInWriter::new(
            sink,
            &[Type::TEXT, Type::INT8, Type::JSONB]
        ));
        for (s, q, r) in chunk {
            w.as_mut().write(&[s, q, r]).await.context("COPY row")?;
        }
        w.as_mut().finish().await.context("COPY end")?;
        tx.commit().await.context("COMMIT")?;
    }
    Ok(rows.len() as f64 / t.elapsed().as_secs_f64())
}
