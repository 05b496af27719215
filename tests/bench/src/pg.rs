//! The peer a ministry DBA would use instead: PostgreSQL, on a private server this harness
//! starts (initdb into a temporary directory, a free loopback port, `fsync` on; as the
//! `postgres` user when running as root, since PostgreSQL refuses root), taking the same
//! space-count rows *unsigned* into `(source text, seq bigint, record jsonb, primary
//! key (source, seq))` from one client, `batch` rows per transaction: once as multi-row
//! `INSERT`s and once as binary `COPY`.
//!
//! The client is `tokio-postgres`, the maintained async client of the rust-postgres project
//! on the tokio runtime the workspace already uses; a later PostgreSQL backend for the hub
//! can start from the same crate.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

use crate::procs::{self, ChildGuard};

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

/// Where PostgreSQL's server binaries are: the newest `/usr/lib/postgresql/*/bin` (Debian),
/// else the directory `initdb` on `PATH` resolves to. `None` when not installed.
pub fn find_binaries() -> Option<PathBuf> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has(d))
        .collect();
    debian.sort();
    if let Some((_, d)) = debian.pop() {
        return Some(d);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .filter_map(|d| std::fs::canonicalize(d.join("initdb")).ok())
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .find(|d| has(d))
}

/// `(uid, gid)` of `user` from `/etc/passwd`.
fn user_ids(user: &str) -> Result<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&user))
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
        .ok_or_else(|| anyhow!("no user {user:?} in /etc/passwd"))
}

/// A private PostgreSQL server. Stopped (fast shutdown) and removed on drop.
pub struct PgServer {
    /// The postmaster; declared first so it stops before its directory is removed.
    guard: ChildGuard,
    dir: tempfile::TempDir,
    /// The loopback port.
    pub port: u16,
}

impl PgServer {
    /// `initdb` and start a server from the binaries in `bin`.
    pub fn start(bin: &Path) -> Result<PgServer> {
        let dir = tempfile::Builder::new()
            .prefix("spacesync-bench-pg-")
            .tempdir()
            .context("creating PostgreSQL's directory")?;
        // SAFETY: geteuid has no preconditions.
        let ids = if unsafe { libc::geteuid() } == 0 {
            let ids = user_ids("postgres").context(
                "running as root, and PostgreSQL refuses to: a `postgres` user is needed",
            )?;
            std::os::unix::fs::chown(dir.path(), Some(ids.0), Some(ids.1))
                .with_context(|| format!("giving {} to postgres", dir.path().display()))?;
            Some(ids)
        } else {
            None
        };
        let as_user = |cmd: &mut Command| {
            if let Some((uid, gid)) = ids {
                std::os::unix::process::CommandExt::uid(cmd, uid);
                std::os::unix::process::CommandExt::gid(cmd, gid);
            }
            cmd.current_dir(dir.path());
        };
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-U",
            "bench",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        as_user(&mut initdb);
        let out = initdb.output().context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let port = procs::free_port()?;
        let log_path = dir.path().join("postgres.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=on",
                "-c",
                "synchronous_commit=on",
                "-c",
                "full_page_writes=on",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        as_user(&mut cmd);
        let child = cmd.spawn().context("starting postgres")?;
        Ok(PgServer {
            guard: ChildGuard::new("postgres", child)
                .with_drop_signal(libc::SIGINT, Duration::from_secs(20)),
            dir,
            port,
        })
    }

    /// Connects (retrying while the server starts, up to 60 s).
    pub async fn connect(&mut self) -> Result<Client> {
        let conf = format!(
            "host=127.0.0.1 port={} user=bench dbname=postgres",
            self.port
        );
        let start = Instant::now();
        loop {
            match tokio_postgres::connect(&conf, NoTls).await {
                Ok((client, conn)) => {
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            eprintln!("PostgreSQL connection ended: {e}");
                        }
                    });
                    return Ok(client);
                }
                Err(e) => {
                    if let Some(st) = self.guard.exited() {
                        bail!(
                            "postgres exited ({st}); its log ends:\n{}",
                            procs::log_tail(&self.dir.path().join("postgres.log"), 20)
                        );
                    }
                    if start.elapsed() > Duration::from_secs(60) {
                        return Err(
                            anyhow!(e).context("PostgreSQL did not accept connections within 60 s")
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

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
    let mut server = PgServer::start(&bin)?;
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
    eprintln!(
        "PostgreSQL {version} from {} (fsync={fsync}), port {}",
        bin.display(),
        server.port
    );
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
