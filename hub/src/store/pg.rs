//! The PostgreSQL backend: the hub's ordered key space as one table,
//! `kv (k bytea primary key, v bytea not null)`.
//!
//! - **Calls.** The hub calls its store synchronously, from tokio worker threads (async
//!   handlers) and from blocking threads. The store owns a small tokio runtime of its own
//!   (two threads) that drives the `tokio-postgres` connections; each method hands its
//!   request to that runtime and blocks on a channel for the answer. It never `block_on`s,
//!   so it may be called from inside any runtime but its own (nothing of the hub runs
//!   there).
//! - **Connections.** A small pool ([`POOL_SIZE`]): readers do not queue behind the
//!   ingest writer. A connection the server closed (a restart, a network cut) is dropped
//!   when next taken and a new one is made, so the first call during an outage fails with
//!   [`StoreError::Backend`] naming the database (the hub answers 503) and the first call
//!   after it works.
//! - **Writes.** [`Store::apply`] is one transaction (deletes with `k = ANY($1)`, upserts
//!   from two `unnest`ed arrays), committed before it returns; [`Store::flush`] therefore
//!   has nothing left to do. That holds only when commits wait for the WAL flush: every
//!   connection refuses `synchronous_commit = off`.
//! - **Reads.** Scans stream in key-ordered pages of [`PAGE`] rows (`k >= $from AND k <
//!   $successor(prefix) ORDER BY k LIMIT n`), never a whole prefix in memory; a scan is not
//!   a snapshot (as with sled, writes between pages may be seen). `bytea` orders bytewise,
//!   as sled and `Vec<u8>` do.
//! - **Schema.** Numbered migrations embedded in the binary ([`MIGRATIONS`]), applied at
//!   open inside one transaction that holds a row lock (`SELECT … FOR UPDATE` on the one
//!   row of `spacesync_schema`), not an advisory lock (CockroachDB and YugabyteDB have
//!   none); `spacesync_migrations` lists what ran. A database migrated by a newer hub is
//!   refused.
//! - **TLS.** rustls with the system's root certificates, or only the CA certificates of
//!   `sslrootcert=FILE` (PEM) when the URL names one; `sslmode=disable|prefer|require` as
//!   tokio-postgres reads it (a certificate is always verified, host name included, so
//!   `require` is as strict as libpq's `verify-full`).
//! - **Secrets.** The URL's password is never shown: logs and errors use [`Redacted`].

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Kv, KvIter, Store, StoreError, WriteBatch};

/// Connections per store: the ingest writer, and readers beside it.
pub const POOL_SIZE: usize = 4;

/// Rows a scan reads at a time.
pub const PAGE: i64 = 512;

/// A numbered schema migration.
pub struct Migration {
    /// Its number: migrations run in this order, each once.
    pub version: i32,
    /// What it does, for `spacesync_migrations`.
    pub name: &'static str,
    /// The statements (run in the migration transaction).
    pub sql: &'static str,
}

/// Every migration, in order. Append; never edit one that has shipped.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "kv",
        sql: include_str!("pg/0001_kv.sql"),
    },
    Migration {
        version: 2,
        name: "head",
        sql: include_str!("pg/0002_head.sql"),
    },
    Migration {
        version: 3,
        name: "analyst views",
        sql: include_str!("pg/0003_analyst_views.sql"),
    },
    Migration {
        version: 4,
        name: "packed log view",
        sql: include_str!("pg/0004_packed_log_view.sql"),
    },
];

/// Creates the schema-version table and its one row; safe to run concurrently (the
/// first-ever race of two `CREATE TABLE IF NOT EXISTS` is retried).
const BOOTSTRAP: &str = "CREATE TABLE IF NOT EXISTS spacesync_schema (\
    id integer PRIMARY KEY CHECK (id = 1), version integer NOT NULL);\
    INSERT INTO spacesync_schema (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING";

/// A database URL for people to read: the password, in the URL's user part or as a
/// `password=` parameter, is shown as `***`.
pub struct Redacted<'a>(pub &'a str);

impl std::fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = self.0.to_string();
        // postgres://user:password@host/… : the user part ends at the last '@' before
        // the path.
        if let Some(start) = s.find("://").map(|i| i + 3) {
            let rest = &s[start..];
            let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
            if let Some(at) = rest[..auth_end].rfind('@')
                && let Some(colon) = rest[..at].find(':')
            {
                s.replace_range(start + colon + 1..start + at, "***");
            }
        }
        // password=… as a query parameter or a key=value setting.
        let mut out = String::with_capacity(s.len());
        let mut rest = s.as_str();
        while let Some(i) = rest.find("password=") {
            let value = i + "password=".len();
            out.push_str(&rest[..value]);
            out.push_str("***");
            let end = rest[value..]
                .find(['&', ' '])
                .map_or(rest.len(), |e| value + e);
            rest = &rest[end..];
        }
        out.push_str(rest);
        f.write_str(&out)
    }
}

/// Whether `url` names a PostgreSQL database (and not a directory).
pub fn is_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// `e` and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(e) = src {
        let m = e.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = e.source();
    }
    s
}

/// One pooled connection with its prepared statements.
struct Conn {
    client: Client,
    get: Statement,
    scan_to: Statement,
    scan_all: Statement,
    last_to: Statement,
    last_all: Statement,
    delete: Statement,
    upsert: Statement,
    head: Statement,
    head_lock: Statement,
    head_set: Statement,
    insert_new: Statement,
}

/// What the runtime's tasks share.
struct Inner {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// The URL as shown to people.
    shown: String,
    idle: Mutex<Vec<Conn>>,
    permits: Arc<tokio::sync::Semaphore>,
}

/// A connection taken from the pool; back into it when dropped, unless the server closed
/// it.
struct Pooled {
    conn: Option<Conn>,
    inner: Arc<Inner>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl std::ops::Deref for Pooled {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("present until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take().filter(|c| !c.client.is_closed()) {
            self.inner
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(c);
        }
    }
}

impl Inner {
    fn fail(&self, op: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
        move |e| StoreError::Backend {
            op,
            message: format!(
                "PostgreSQL database {}: {}{}",
                self.shown,
                chain(&e),
                if chain(&e).contains("invalid peer certificate") {
                    " (the database server's certificate does not verify: it must be issued for the URL's host by a CA the hub trusts — the system's roots, or the PEM file given as ?sslrootcert=FILE)"
                } else if e.as_db_error().is_none() {
                    " (is the database server up and reachable?)"
                } else {
                    ""
                }
            ),
        }
    }

    /// A new connection, checked and prepared.
    async fn connect(self: &Arc<Self>) -> Result<Conn, StoreError> {
        let client = self.connect_raw().await?;
        self.prepared(client).await
    }

    /// A new connection whose commits are durable (`synchronous_commit` not off).
    async fn connect_raw(self: &Arc<Self>) -> Result<Client, StoreError> {
        let (client, connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(self.fail("connect"))?;
        let shown = self.shown.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(database = %shown, error = %chain(&e), "PostgreSQL connection ended.");
            }
        });
        let sync = client
            .query_one("SHOW synchronous_commit", &[])
            .await
            .map_err(self.fail("connect"))?;
        let sync: String = sync.get(0);
        if sync == "off" {
            return Err(StoreError::Backend {
                op: "connect",
                message: format!(
                    "PostgreSQL database {}: synchronous_commit is off, so a commit may return before it is durable and the hub would acknowledge entries a crash can lose; set it on for the hub's role or database (`ALTER ROLE … SET synchronous_commit = on`) or in postgresql.conf",
                    self.shown
                ),
            });
        }
        Ok(client)
    }

    /// Prepares the statements on a new connection.
    async fn prepared(self: &Arc<Self>, client: Client) -> Result<Conn, StoreError> {
        let prep = |sql: &'static str| client.prepare(sql);
        let fail = self.fail("prepare");
        Ok(Conn {
            get: prep("SELECT v FROM kv WHERE k = $1").await.map_err(&fail)?,
            scan_to: prep("SELECT k, v FROM kv WHERE k >= $1 AND k < $2 ORDER BY k LIMIT $3")
                .await
                .map_err(&fail)?,
            scan_all: prep("SELECT k, v FROM kv WHERE k >= $1 ORDER BY k LIMIT $2")
                .await
                .map_err(&fail)?,
            last_to: prep("SELECT k, v FROM kv WHERE k >= $1 AND k < $2 ORDER BY k DESC LIMIT 1")
                .await
                .map_err(&fail)?,
            last_all: prep("SELECT k, v FROM kv WHERE k >= $1 ORDER BY k DESC LIMIT 1")
                .await
                .map_err(&fail)?,
            delete: prep("DELETE FROM kv WHERE k = ANY($1)")
                .await
                .map_err(&fail)?,
            upsert: prep(
                "INSERT INTO kv (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                 ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
            )
            .await
            .map_err(&fail)?,
            head: prep("SELECT head FROM spacesync_head WHERE id = 1")
                .await
                .map_err(&fail)?,
            head_lock: prep("SELECT head FROM spacesync_head WHERE id = 1 FOR UPDATE")
                .await
                .map_err(&fail)?,
            head_set: prep("UPDATE spacesync_head SET head = $1 WHERE id = 1")
                .await
                .map_err(&fail)?,
            insert_new: prep("INSERT INTO kv (k, v) VALUES ($1, $2) ON CONFLICT (k) DO NOTHING")
                .await
                .map_err(&fail)?,
            client,
        })
    }

    /// A connection from the pool (a new one when none is idle or the idle ones were
    /// closed by the server).
    async fn take(self: &Arc<Self>) -> Result<Pooled, StoreError> {
        let permit =
            self.permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| StoreError::Backend {
                    op: "connect",
                    message: format!("PostgreSQL database {}: the store is closing", self.shown),
                })?;
        let idle = loop {
            let c = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match c {
                Some(c) if c.client.is_closed() => continue,
                other => break other,
            }
        };
        let conn = match idle {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Pooled {
            conn: Some(conn),
            inner: self.clone(),
            _permit: permit,
        })
    }
}

/// The smallest key greater than every key starting with `prefix`; `None` when there is
/// none (an empty prefix, or one of 0xff bytes only).
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while let Some(&last) = s.last() {
        if last == 0xff {
            s.pop();
        } else {
            *s.last_mut()? += 1;
            return Some(s);
        }
    }
    None
}

/// A batch as the statements take it: the keys it removes, and the keys and values it sets.
type Split = (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<Vec<u8>>);

fn split(batch: WriteBatch) -> Split {
    let mut deletes: Vec<Vec<u8>> = Vec::new();
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut values: Vec<Vec<u8>> = Vec::new();
    for (k, v) in batch.ops {
        match v {
            Some(v) => {
                keys.push(k);
                values.push(v);
            }
            None => deletes.push(k),
        }
    }
    (deletes, keys, values)
}

/// Whether a URL that does not set `sslmode` gets `require`: when a CA file is given or
/// any host is off this machine.
fn tls_required_by_default(
    url: &str,
    ca_given: bool,
    hosts: &[tokio_postgres::config::Host],
) -> bool {
    !has_query_param(url, "sslmode") && (ca_given || !all_loopback(hosts))
}

/// Whether the URL's query string sets `name`.
fn has_query_param(url: &str, name: &str) -> bool {
    url.split_once('?').is_some_and(|(_, q)| {
        q.split('&')
            .any(|kv| kv.split_once('=').map_or(kv, |(k, _)| k) == name)
    })
}

/// Whether every host is this machine (a Unix socket, `localhost` or a loopback address).
fn all_loopback(hosts: &[tokio_postgres::config::Host]) -> bool {
    hosts.iter().all(|h| match h {
        tokio_postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => true,
    })
}

/// The PostgreSQL store.
pub struct PgStore {
    inner: Arc<Inner>,
    /// Drives the connections; shut down (without waiting) on drop, which may happen
    /// inside another runtime.
    rt: Option<tokio::runtime::Runtime>,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user[:password]@host[:port]/db
    /// [?sslmode=…]`; without a password in the URL, `PGPASSWORD` is used when set), applies
    /// the migrations it lacks, and checks that commits are durable.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let shown = Redacted(url).to_string();
        let open_err = |message: String| StoreError::Backend {
            op: "open",
            message,
        };
        let (url, root_cert) =
            take_root_cert(url).map_err(|m| open_err(format!("{shown}: {m}")))?;
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            open_err(format!(
                "{shown}: not a PostgreSQL URL the hub can use ({}); expected postgres://USER@HOST:PORT/DB, optionally ?sslmode=disable|prefer|require&sslrootcert=CA.pem",
                chain(&e)
            ))
        })?;
        // Without sslmode the driver would `prefer` TLS: a server (or anyone on the path)
        // answering "no TLS" gets the hub's traffic in plain text. Off loopback, and
        // whenever a CA was given, TLS is required unless the URL says otherwise.
        if tls_required_by_default(&url, root_cert.is_some(), config.get_hosts()) {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        if config.get_password().is_none()
            && let Some(p) = std::env::var_os("PGPASSWORD")
        {
            config.password(p.as_encoded_bytes());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("spacesync-hub");
        }
        let tls = MakeRustlsConnect::new(
            tls_config(root_cert.as_deref()).map_err(|m| open_err(format!("{shown}: {m}")))?,
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("spacesync-pg")
            .enable_all()
            .build()
            .map_err(|e| open_err(format!("{shown}: starting the database runtime: {e}")))?;
        let store = PgStore {
            inner: Arc::new(Inner {
                config,
                tls,
                shown,
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(tokio::sync::Semaphore::new(POOL_SIZE)),
            }),
            rt: Some(rt),
        };
        store.call(|inner| async move { migrate(&inner).await })?;
        Ok(store)
    }

    /// The database as shown to people (password redacted).
    pub fn shown(&self) -> &str {
        &self.inner.shown
    }

    /// Runs `f` on the store's runtime and waits for its answer on this thread.
    fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = f(self.inner.clone());
        let Some(rt) = &self.rt else {
            return Err(self.gone());
        };
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().unwrap_or_else(|_| Err(self.gone()))
    }

    fn gone(&self) -> StoreError {
        StoreError::Backend {
            op: "call",
            message: format!(
                "PostgreSQL database {}: the store's database task ended without an answer",
                self.inner.shown
            ),
        }
    }

    /// One page of `[from, to)` (`to` `None`: to the end), at most `limit` rows.
    fn page(&self, from: Vec<u8>, to: Option<Vec<u8>>, limit: i64) -> Result<Vec<Kv>, StoreError> {
        self.call(move |inner| async move {
            let c = inner.take().await?;
            let rows = match &to {
                Some(to) => c.client.query(&c.scan_to, &[&from, to, &limit]).await,
                None => c.client.query(&c.scan_all, &[&from, &limit]).await,
            }
            .map_err(inner.fail("scan"))?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    /// Ends an import (`spacesync-hub migrate`): in one transaction holding the head row's
    /// lock, applies `batch` and sets the head to `head`, only if no commit ever moved it
    /// (head 0); otherwise [`StoreError::Conflict`] and nothing is written. The head then
    /// counts on from the one the imported store had.
    pub fn adopt_head(&self, head: u64, batch: WriteBatch) -> Result<(), StoreError> {
        let (deletes, keys, values) = split(batch);
        let head = i64::try_from(head).map_err(|_| StoreError::Backend {
            op: "adopt head",
            message: format!("head {head} does not fit PostgreSQL's bigint"),
        })?;
        self.call(move |inner| async move {
            let mut c = inner.take().await?;
            let fail = inner.fail("adopt head");
            let (delete, upsert, lock, set) = (
                c.delete.clone(),
                c.upsert.clone(),
                c.head_lock.clone(),
                c.head_set.clone(),
            );
            let tx = c.client.transaction().await.map_err(&fail)?;
            let found: i64 = tx.query_one(&lock, &[]).await.map_err(&fail)?.get(0);
            if found != 0 {
                return Err(StoreError::Conflict {
                    expected: 0,
                    found: found as u64,
                });
            }
            if !deletes.is_empty() {
                tx.execute(&delete, &[&deletes]).await.map_err(&fail)?;
            }
            if !keys.is_empty() {
                tx.execute(&upsert, &[&keys, &values])
                    .await
                    .map_err(&fail)?;
            }
            tx.execute(&set, &[&head]).await.map_err(&fail)?;
            tx.commit().await.map_err(&fail)
        })
    }

    /// Writes `value` under `key` unless the key exists, in one statement; returns the
    /// value already there (`None`: this call wrote it). For claiming a database at `init`.
    pub fn claim(&self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let (key, value) = (key.to_vec(), value.to_vec());
        self.call(move |inner| async move {
            let c = inner.take().await?;
            let fail = inner.fail("claim");
            let n = c
                .client
                .execute(
                    "INSERT INTO kv (k, v) VALUES ($1, $2) ON CONFLICT (k) DO NOTHING",
                    &[&key, &value],
                )
                .await
                .map_err(&fail)?;
            if n == 1 {
                return Ok(None);
            }
            let row = c.client.query_opt(&c.get, &[&key]).await.map_err(&fail)?;
            Ok(Some(row.map(|r| r.get(0)).unwrap_or_default()))
        })
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// rustls with the system's root certificates (the operator adds a private CA there), or,
/// with `sslrootcert=FILE` in the URL, the CA certificates of that PEM file alone (as libpq
/// trusts only that file then).
fn tls_config(root_cert: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    let roots = match root_cert {
        Some(path) => spacesync_http::tls::read_roots("sslrootcert", path).map_err(|e| {
            format!("{e} (sslrootcert names the PEM file of the CA that signed the database server's certificate)")
        })?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A certificate the store cannot use is skipped, as browsers do.
                let _ = roots.add(cert);
            }
            roots
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("setting up TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Takes `sslrootcert=FILE` (libpq's name; tokio-postgres does not read it) out of the
/// URL's query: the URL without it, and the file (percent-decoded).
fn take_root_cert(url: &str) -> Result<(String, Option<std::path::PathBuf>), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None));
    };
    let mut kept = Vec::new();
    let mut file = None;
    for param in query.split('&') {
        match param.strip_prefix("sslrootcert=") {
            Some(value) => {
                if file.is_some() {
                    return Err("sslrootcert is given twice".into());
                }
                let decoded = percent_decode(value).ok_or_else(|| {
                    format!("sslrootcert={value:?} is not a percent-encoded path")
                })?;
                if decoded.is_empty() {
                    return Err("sslrootcert= names no file".into());
                }
                file = Some(std::path::PathBuf::from(decoded));
            }
            None => kept.push(param),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, file))
}

/// `%XX` sequences decoded (UTF-8); `None` when malformed.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Applies the migrations the database lacks, under the row lock of `spacesync_schema`.
async fn migrate(inner: &Arc<Inner>) -> Result<(), StoreError> {
    let mut client = inner.connect_raw().await?;
    let fail = inner.fail("migrate");
    // Two hubs opening an empty database at once may both try to create the table; the
    // loser sees a duplicate and tries again, finding it.
    let mut tries = 0;
    loop {
        match client.batch_execute(BOOTSTRAP).await {
            Ok(()) => break,
            Err(e)
                if tries < 10
                    && matches!(
                        e.code(),
                        Some(&SqlState::UNIQUE_VIOLATION)
                            | Some(&SqlState::DUPLICATE_TABLE)
                            // The table's row type, created with it: "type … already exists".
                            | Some(&SqlState::DUPLICATE_OBJECT)
                    ) =>
            {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20 * tries)).await;
            }
            Err(e) => return Err(fail(e)),
        }
    }
    let latest = MIGRATIONS.last().map_or(0, |m| m.version);
    let tx = client.transaction().await.map_err(&fail)?;
    let version: i32 = tx
        .query_one(
            "SELECT version FROM spacesync_schema WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(&fail)?
        .get(0);
    if version > latest {
        return Err(StoreError::Backend {
            op: "migrate",
            message: format!(
                "PostgreSQL database {}: its schema is version {version}, newer than this spacesync-hub knows ({latest}); run the newer spacesync-hub",
                inner.shown
            ),
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > version) {
        tx.batch_execute(m.sql).await.map_err(|e| StoreError::Backend {
            op: "migrate",
            message: format!(
                "PostgreSQL database {}: schema migration {} ({}) failed: {}; nothing of it was applied",
                inner.shown,
                m.version,
                m.name,
                chain(&e)
            ),
        })?;
        tx.execute(
            "INSERT INTO spacesync_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name.to_string()],
        )
        .await
        .map_err(&fail)?;
    }
    if version < latest {
        tx.execute(
            "UPDATE spacesync_schema SET version = $1 WHERE id = 1",
            &[&latest],
        )
        .await
        .map_err(&fail)?;
        tracing::info!(database = %inner.shown, from = version, to = latest, "Migrated the database schema.");
    }
    tx.commit().await.map_err(&fail)
}

/// A scan read page by page.
struct Pages<'a> {
    store: &'a PgStore,
    /// The next page starts at this key.
    from: Vec<u8>,
    /// Keys stop before this one (`None`: at the end).
    to: Option<Vec<u8>>,
    buf: VecDeque<Kv>,
    done: bool,
}

impl Iterator for Pages<'_> {
    type Item = Result<Kv, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() && !self.done {
            match self.store.page(self.from.clone(), self.to.clone(), PAGE) {
                Ok(rows) => {
                    self.done = (rows.len() as i64) < PAGE;
                    if let Some((k, _)) = rows.last() {
                        // The smallest key after the last one read.
                        self.from = [k.as_slice(), &[0]].concat();
                    }
                    self.buf = rows.into();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        self.buf.pop_front().map(Ok)
    }
}

impl Store for PgStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_vec();
        self.call(move |inner| async move {
            let c = inner.take().await?;
            let row = c
                .client
                .query_opt(&c.get, &[&key])
                .await
                .map_err(inner.fail("get"))?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn scan(&self, prefix: &[u8]) -> KvIter<'_> {
        self.scan_from(prefix, prefix)
    }

    fn scan_from(&self, prefix: &[u8], from: &[u8]) -> KvIter<'_> {
        let start = if from > prefix { from } else { prefix };
        let to = successor(prefix);
        let done = to.as_deref().is_some_and(|t| start >= t);
        Box::new(Pages {
            store: self,
            from: start.to_vec(),
            to,
            buf: VecDeque::new(),
            done,
        })
    }

    fn first_from(&self, prefix: &[u8], from: &[u8]) -> Result<Option<Kv>, StoreError> {
        let start = if from > prefix { from } else { prefix };
        let to = successor(prefix);
        if to.as_deref().is_some_and(|t| start >= t) {
            return Ok(None);
        }
        // One row, not a page: a point lookup of the next key (the source index).
        Ok(self.page(start.to_vec(), to, 1)?.into_iter().next())
    }

    fn last(&self, prefix: &[u8]) -> Result<Option<Kv>, StoreError> {
        let from = prefix.to_vec();
        let to = successor(prefix);
        self.call(move |inner| async move {
            let c = inner.take().await?;
            let row = match &to {
                Some(to) => c.client.query_opt(&c.last_to, &[&from, to]).await,
                None => c.client.query_opt(&c.last_all, &[&from]).await,
            }
            .map_err(inner.fail("last"))?;
            Ok(row.map(|r| (r.get(0), r.get(1))))
        })
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (deletes, keys, values) = split(batch);
        self.call(move |inner| async move {
            let mut c = inner.take().await?;
            let fail = inner.fail("apply");
            let (delete, upsert) = (c.delete.clone(), c.upsert.clone());
            let tx = c.client.transaction().await.map_err(&fail)?;
            if !deletes.is_empty() {
                tx.execute(&delete, &[&deletes]).await.map_err(&fail)?;
            }
            if !keys.is_empty() {
                tx.execute(&upsert, &[&keys, &values])
                    .await
                    .map_err(&fail)?;
            }
            tx.commit().await.map_err(&fail)
        })
    }

    /// Nothing to do: [`Store::apply`] returns only after its transaction committed, and
    /// every connection refuses `synchronous_commit = off`, so a commit is durable.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// One primary-key read of `spacesync_head`.
    fn head(&self) -> Result<u64, StoreError> {
        self.call(move |inner| async move {
            let c = inner.take().await?;
            let row = c
                .client
                .query_one(&c.head, &[])
                .await
                .map_err(inner.fail("head"))?;
            let head: i64 = row.get(0);
            Ok(head as u64)
        })
    }

    /// One transaction: the head row locked (`SELECT … FOR UPDATE`, which waits for a
    /// writer holding it and then reads its committed head), compared with `expected`, the
    /// batch written and the head moved, committed. Two replicas committing at once are
    /// serialized by the row lock; the second finds the head moved and writes nothing.
    fn commit(&self, expected: u64, batch: WriteBatch) -> Result<u64, StoreError> {
        let (deletes, keys, values) = split(batch);
        self.call(move |inner| async move {
            let mut c = inner.take().await?;
            let backend = inner.fail("commit");
            // An engine that runs transactions SERIALIZABLE (CockroachDB by default, or a
            // PostgreSQL configured so) aborts the second of two racing commits with a
            // retryable error instead of making it wait on the head row's lock: that is
            // another writer committing first, answered like a moved head.
            let fail = |e: tokio_postgres::Error| match e.code() {
                Some(&SqlState::T_R_SERIALIZATION_FAILURE)
                | Some(&SqlState::T_R_DEADLOCK_DETECTED) => StoreError::Conflict {
                    expected,
                    found: expected,
                },
                _ => backend(e),
            };
            let (delete, upsert, lock, set) = (
                c.delete.clone(),
                c.upsert.clone(),
                c.head_lock.clone(),
                c.head_set.clone(),
            );
            let tx = c.client.transaction().await.map_err(&fail)?;
            let found: i64 = tx.query_one(&lock, &[]).await.map_err(&fail)?.get(0);
            let found = found as u64;
            if found != expected {
                // Dropping the transaction rolls it back (nothing was written).
                return Err(StoreError::Conflict { expected, found });
            }
            if !deletes.is_empty() {
                tx.execute(&delete, &[&deletes]).await.map_err(&fail)?;
            }
            if !keys.is_empty() {
                tx.execute(&upsert, &[&keys, &values])
                    .await
                    .map_err(&fail)?;
            }
            let next = expected + 1;
            tx.execute(&set, &[&(next as i64)]).await.map_err(&fail)?;
            tx.commit().await.map_err(&fail)?;
            Ok(next)
        })
    }

    /// `INSERT … ON CONFLICT (k) DO NOTHING`: one statement, atomic against every other
    /// replica's.
    fn insert_if_absent(&self, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        let (key, value) = (key.to_vec(), value.to_vec());
        self.call(move |inner| async move {
            let c = inner.take().await?;
            let mut tries = 0;
            loop {
                match c.client.execute(&c.insert_new, &[&key, &value]).await {
                    Ok(n) => return Ok(n == 1),
                    // SERIALIZABLE (CockroachDB's default) aborts the loser of two racing
                    // inserts of one key; run again, it finds the winner's row.
                    Err(e)
                        if tries < 8 && e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) =>
                    {
                        tries += 1;
                    }
                    Err(e) => return Err(inner.fail("insert")(e)),
                }
            }
        })
    }

    /// Packs stay plain here: PostgreSQL compresses large values itself (TOAST), and the
    /// analyst view `spacesync_log` (migration 4) unpacks them in plain SQL, which cannot
    /// read LZ4.
    fn compresses_log(&self) -> bool {
        false
    }

    /// One key a subject: see the trait's doc.
    fn batches_summaries(&self) -> bool {
        false
    }

    /// Replicas commit to the same database.
    fn shared_by_processes(&self) -> bool {
        true
    }

    /// Holds the row lock of `spacesync_schema` (as the schema migrations do) in a
    /// transaction on a connection of its own while `f` runs; a process that dies holding
    /// it loses the connection and so the lock.
    fn exclusively(&self, f: &mut dyn FnMut() -> Result<(), StoreError>) -> Result<(), StoreError> {
        let client = self.call(|inner| async move {
            let c = inner.connect_raw().await?;
            c.batch_execute("BEGIN; SELECT version FROM spacesync_schema WHERE id = 1 FOR UPDATE")
                .await
                .map_err(inner.fail("lock"))?;
            Ok(c)
        })?;
        let out = f();
        let released = self.call(move |inner| async move {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(inner.fail("unlock"))
        });
        out.and(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_never_shown() {
        for (url, shown) in [
            (
                "postgres://hub:s3cret@db.example:5432/spacesync",
                "postgres://hub:***@db.example:5432/spacesync",
            ),
            (
                "postgres://hub@db.example/spacesync?sslmode=require&password=s3cret",
                "postgres://hub@db.example/spacesync?sslmode=require&password=***",
            ),
            ("postgresql://h:p@ss@host/db", "postgresql://h:***@host/db"),
            (
                "host=db user=hub password=s3cret dbname=x",
                "host=db user=hub password=*** dbname=x",
            ),
            (
                "postgres://hub@db.example:5432/spacesync",
                "postgres://hub@db.example:5432/spacesync",
            ),
        ] {
            assert_eq!(Redacted(url).to_string(), shown);
        }
    }

    #[test]
    fn sslrootcert_is_taken_out_of_the_url() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("postgres://h/db", "postgres://h/db", None),
            (
                "postgres://h/db?sslmode=require&sslrootcert=/etc/ca%20dir/ca.pem",
                "postgres://h/db?sslmode=require",
                Some("/etc/ca dir/ca.pem"),
            ),
            (
                "postgres://h/db?sslrootcert=ca.pem&sslmode=require",
                "postgres://h/db?sslmode=require",
                Some("ca.pem"),
            ),
            (
                "postgres://h/db?sslrootcert=ca.pem",
                "postgres://h/db",
                Some("ca.pem"),
            ),
        ];
        for (url, rest, file) in cases {
            let (u, f) = take_root_cert(url).expect(url);
            assert_eq!(
                (u.as_str(), f.as_deref()),
                (*rest, file.map(std::path::Path::new))
            );
        }
        for bad in [
            "postgres://h/db?sslrootcert=",
            "postgres://h/db?sslrootcert=%zz",
            "postgres://h/db?sslrootcert=a&sslrootcert=b",
        ] {
            assert!(take_root_cert(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn successors_bound_prefixes() {
        assert_eq!(successor(b"log/"), Some(b"log0".to_vec()));
        assert_eq!(successor(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(successor(&[0xff]), None);
        assert_eq!(successor(b""), None);
    }

    fn sql(url: &str, sql: &'static str) -> Vec<String> {
        let url = url.to_string();
        spacesync_pgtest::block(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            let mut out = Vec::new();
            for m in client.simple_query(sql).await.expect("query") {
                if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                    out.push(r.get(0).unwrap_or_default().to_string());
                }
            }
            out
        })
    }

    fn all(s: &dyn Store, prefix: &[u8]) -> Vec<Kv> {
        s.scan(prefix).map(|r| r.expect("scan")).collect()
    }

    /// The store contract sled and memory pass (overlay reads and scans agree with the
    /// store once a batch is applied).
    #[test]
    fn the_store_contract_holds() {
        let s = PgStore::open(&spacesync_pgtest::database()).expect("open");
        crate::store::tests::overlay_contract(&s);
    }

    /// The serialization point: commits at a moved head write nothing, racing commits
    /// (each on its own connection of the pool, as replicas are) land once, claims once.
    #[test]
    fn the_commit_contract_holds() {
        let s = PgStore::open(&spacesync_pgtest::database()).expect("open");
        crate::store::tests::commit_contract(&s);
    }

    /// Under `SERIALIZABLE` (CockroachDB's default) racing commits are aborted with
    /// SQLSTATE 40001 rather than queued on the row lock: still one lands and the others
    /// are told of a conflict, not of a database failure.
    #[test]
    fn the_commit_contract_holds_under_serializable_isolation() {
        let url = spacesync_pgtest::database();
        let db = url
            .rsplit('/')
            .next()
            .and_then(|d| d.split('?').next())
            .expect("db name")
            .to_string();
        let stmt: &'static str = Box::leak(
            format!("ALTER DATABASE {db} SET default_transaction_isolation = 'serializable'")
                .into_boxed_str(),
        );
        sql(&url, stmt);
        let s = PgStore::open(&url).expect("open");
        assert_eq!(
            sql(&url, "SHOW default_transaction_isolation"),
            ["serializable"]
        );
        crate::store::tests::commit_contract(&s);
    }

    /// Two stores on one database (two replicas): a commit of one moves the head the
    /// other sees, and the other's commit at the old head writes nothing.
    #[test]
    fn two_stores_on_one_database_share_the_head() {
        let url = spacesync_pgtest::database();
        let (a, b) = (
            PgStore::open(&url).expect("open"),
            PgStore::open(&url).expect("open"),
        );
        let mut wb = WriteBatch::new();
        wb.put(b"k".to_vec(), b"a".to_vec());
        assert_eq!(a.commit(0, wb).expect("commit"), 1);
        assert_eq!(b.head().expect("head"), 1);
        let mut wb = WriteBatch::new();
        wb.put(b"k".to_vec(), b"b".to_vec());
        assert!(matches!(
            b.commit(0, wb),
            Err(StoreError::Conflict {
                expected: 0,
                found: 1
            })
        ));
        assert_eq!(a.get(b"k").expect("get"), Some(b"a".to_vec()));
        assert!(a.insert_if_absent(b"n/1", b"x").expect("claim"));
        assert!(!b.insert_if_absent(b"n/1", b"y").expect("claim"));
    }

    /// A batch whose last statement fails leaves nothing of it behind.
    #[test]
    fn a_failed_apply_changes_nothing() {
        let url = spacesync_pgtest::database();
        let s = PgStore::open(&url).expect("open");
        let mut b = WriteBatch::new();
        b.put(b"a/1".to_vec(), b"one".to_vec());
        b.put(b"a/2".to_vec(), b"two".to_vec());
        s.apply(b).expect("apply");
        // The upsert refuses key "boom", after the deletes ran in the same transaction.
        sql(
            &url,
            r"CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
              BEGIN IF NEW.k = '\x626f6f6d'::bytea THEN RAISE EXCEPTION 'boom refused'; END IF;
              RETURN NEW; END $$;
              CREATE TRIGGER refuse_boom BEFORE INSERT OR UPDATE ON kv
              FOR EACH ROW EXECUTE FUNCTION refuse_boom()",
        );
        let mut b = WriteBatch::new();
        b.delete(b"a/1".to_vec());
        b.put(b"a/2".to_vec(), b"changed".to_vec());
        b.put(b"a/3".to_vec(), b"three".to_vec());
        b.put(b"boom".to_vec(), b"x".to_vec());
        let e = s.apply(b).expect_err("refused");
        assert!(e.to_string().contains("boom refused"), "{e}");
        assert!(e.to_string().contains(&Redacted(&url).to_string()), "{e}");
        assert_eq!(
            all(&s, b"a/"),
            vec![
                (b"a/1".to_vec(), b"one".to_vec()),
                (b"a/2".to_vec(), b"two".to_vec())
            ]
        );
        assert_eq!(s.get(b"boom").expect("get"), None);
    }

    /// Scans page through thousands of keys as a store in memory reads them, whatever the
    /// prefix (empty, ending in 0xff) and wherever a scan starts.
    #[test]
    fn scans_page_as_memory_reads() {
        let url = spacesync_pgtest::database();
        let pg = PgStore::open(&url).expect("open");
        let mem = crate::store::MemStore::new();
        let mut b = WriteBatch::new();
        let n = 3 * PAGE as u64 + 7;
        for i in 0..n {
            b.put(crate::store::keys::log(i), i.to_string());
            if i % 3 == 0 {
                b.put([&b"x/\xff"[..], &i.to_be_bytes()].concat(), vec![0xff; 3]);
            }
        }
        b.put(b"log0".to_vec(), b"after".to_vec());
        b.put(b"lof".to_vec(), b"before".to_vec());
        b.put(vec![0xff, 0xff], b"top".to_vec());
        for s in [&pg as &dyn Store, &mem] {
            s.apply(WriteBatch { ops: b.ops.clone() }).expect("apply");
        }
        for prefix in [&b"log/"[..], b"x/\xff", b"", b"lo", &[0xff], b"none/"] {
            assert_eq!(all(&pg, prefix), all(&mem, prefix), "{prefix:?}");
            assert_eq!(
                pg.last(prefix).expect("last"),
                mem.last(prefix).expect("last")
            );
        }
        assert_eq!(all(&pg, b"log/").len() as u64, n);
        for from in [
            0,
            1,
            PAGE as u64 - 1,
            PAGE as u64,
            PAGE as u64 + 1,
            n - 1,
            n,
        ] {
            let from = crate::store::keys::log(from);
            let got: Vec<Kv> = pg
                .scan_from(b"log/", &from)
                .map(|r| r.expect("scan"))
                .collect();
            let want: Vec<Kv> = mem
                .scan_from(b"log/", &from)
                .map(|r| r.expect("scan"))
                .collect();
            assert_eq!(got, want);
        }
        assert_eq!(pg.scan_from(b"log/", b"zzz").count(), 0);
        assert_eq!(pg.scan_from(b"log/", b"a").count() as u64, n);
    }

    /// Hubs opening a fresh database at once migrate it once; the ones that come second
    /// find it done.
    #[test]
    fn concurrent_opens_migrate_once() {
        let url = spacesync_pgtest::database();
        let opened: Vec<Result<PgStore, StoreError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| PgStore::open(&url))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("open thread"))
                .collect()
        });
        for o in &opened {
            assert!(o.is_ok(), "{:?}", o.as_ref().err().map(ToString::to_string));
        }
        assert_eq!(
            sql(&url, "SELECT count(*) FROM spacesync_migrations"),
            [MIGRATIONS.len().to_string()]
        );
        assert_eq!(
            sql(&url, "SELECT version FROM spacesync_schema"),
            [MIGRATIONS.len().to_string()]
        );
        // And a later open changes nothing.
        drop(PgStore::open(&url).expect("reopen"));
        assert_eq!(
            sql(&url, "SELECT count(*) FROM spacesync_migrations"),
            [MIGRATIONS.len().to_string()]
        );
    }

    /// A database whose schema is newer than this hub's is refused, saying so.
    #[test]
    fn a_newer_schema_is_refused() {
        let url = spacesync_pgtest::database();
        drop(PgStore::open(&url).expect("open"));
        sql(&url, "UPDATE spacesync_schema SET version = 99");
        let e = PgStore::open(&url).err().expect("refused").to_string();
        assert!(e.contains("version 99, newer"), "{e}");
    }

    /// A server killed and restarted: the call during the outage fails naming the
    /// database, the next one after it works, with every committed write still there.
    #[test]
    fn reconnects_after_the_server_restarts() {
        let mut server =
            spacesync_pgtest::PgServer::start(&spacesync_pgtest::binaries()).expect("server");
        let url = server.url("postgres");
        let s = PgStore::open(&url).expect("open");
        let mut b = WriteBatch::new();
        b.put(b"k".to_vec(), b"before".to_vec());
        s.apply(b).expect("apply");
        // Several pooled connections, all to be found dead.
        std::thread::scope(|t| {
            for _ in 0..POOL_SIZE {
                t.spawn(|| s.get(b"k").expect("get"));
            }
        });
        server.kill().expect("kill");
        let e = s.get(b"k").expect_err("server down").to_string();
        assert!(e.contains(&format!("127.0.0.1:{}", server.port)), "{e}");
        assert!(matches!(
            s.apply(WriteBatch {
                ops: [(b"k".to_vec(), Some(b"lost".to_vec()))].into()
            }),
            Err(StoreError::Backend { .. })
        ));
        server.restart().expect("restart");
        assert_eq!(
            s.get(b"k").expect("after restart"),
            Some(b"before".to_vec())
        );
        let mut b = WriteBatch::new();
        b.put(b"k".to_vec(), b"after".to_vec());
        s.apply(b).expect("apply after restart");
        for _ in 0..2 * POOL_SIZE {
            assert_eq!(s.get(b"k").expect("get"), Some(b"after".to_vec()));
        }
    }

    /// `sslmode=prefer` talks plain to a server without TLS; `require` refuses it, saying
    /// so.
    #[test]
    fn sslmode_is_honoured() {
        let url = spacesync_pgtest::database();
        let prefer = url.replace("sslmode=disable", "sslmode=prefer");
        let s = PgStore::open(&prefer).expect("prefer falls back to plain");
        assert_eq!(s.get(b"x").expect("get"), None);
        let require = url.replace("sslmode=disable", "sslmode=require");
        let e = PgStore::open(&require).err().expect("refused").to_string();
        assert!(e.contains("TLS") || e.contains("SSL"), "{e}");
    }

    /// Without `sslmode`, TLS is required off loopback and whenever a CA is given: a
    /// server (or a man in the middle) answering "no TLS" is refused rather than talked to
    /// in plain text. On loopback the driver's `prefer` stays.
    #[test]
    fn tls_is_required_by_default_off_loopback_or_with_a_ca() {
        use tokio_postgres::config::Host;
        let tcp = |h: &str| Host::Tcp(h.to_string());
        assert!(all_loopback(&[
            tcp("127.0.0.1"),
            tcp("localhost"),
            tcp("[::1]")
        ]));
        assert!(!all_loopback(&[tcp("127.0.0.1"), tcp("db.example")]));
        assert!(!all_loopback(&[tcp("10.0.0.5")]));
        assert!(has_query_param(
            "postgres://h/db?a=1&sslmode=disable",
            "sslmode"
        ));
        assert!(!has_query_param("postgres://h/db?sslmodex=1", "sslmode"));
        assert!(!has_query_param("postgres://h/db", "sslmode"));

        let url = spacesync_pgtest::database();
        let plain = url
            .replace("?sslmode=disable&", "?")
            .replace("?sslmode=disable", "")
            .replace("&sslmode=disable", "");
        assert!(!plain.contains("sslmode"), "{plain}");
        PgStore::open(&plain).expect("loopback without sslmode: prefer, plain");
        let local = [tcp("127.0.0.1")];
        let remote = [tcp("db.example")];
        assert!(!tls_required_by_default(
            "postgres://u@127.0.0.1/db",
            false,
            &local
        ));
        assert!(tls_required_by_default(
            "postgres://u@127.0.0.1/db",
            true,
            &local
        ));
        assert!(tls_required_by_default(
            "postgres://u@db.example/db",
            false,
            &remote
        ));
        assert!(!tls_required_by_default(
            "postgres://u@db.example/db?sslmode=disable",
            false,
            &remote
        ));
    }

    /// Commits that may return before they are durable are refused at open.
    #[test]
    fn synchronous_commit_off_is_refused() {
        let url = spacesync_pgtest::database();
        let db = url
            .rsplit('/')
            .next()
            .and_then(|d| d.split('?').next())
            .expect("db name")
            .to_string();
        let admin = url.replace(&format!("/{db}?"), "/postgres?");
        let stmt: &'static str =
            Box::leak(format!("ALTER DATABASE {db} SET synchronous_commit = off").into_boxed_str());
        sql(&admin, stmt);
        let e = PgStore::open(&url).err().expect("refused").to_string();
        assert!(e.contains("synchronous_commit is off"), "{e}");
    }
}
