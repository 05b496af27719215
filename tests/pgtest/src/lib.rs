//! A private PostgreSQL for tests and benchmarks, from Debian's server binaries
//! (`/usr/lib/postgresql/*/bin`, the `postgresql` package).
//!
//! - [`database`]: a fresh database (`CREATE DATABASE`) on the one server of this test
//!   process, started lazily on first use; what the hub's tests call.
//! - [`PgServer::start`]: a server of one's own (the benchmark's peer, the reconnect
//!   tests that kill and restart it).
//!
//! Each server is `initdb`'d into a temporary directory and listens on a free loopback
//! port, with `fsync` on (durability is what is being tested and measured), as the
//! `postgres` user when running as root (PostgreSQL refuses root). No server outlives its
//! test process: every postmaster is spawned by one thread that lives as long as the
//! process and carries `PR_SET_PDEATHSIG` = SIGKILL, so it dies when the process does,
//! however the process ends (a static is never dropped; a test binary killed by a
//! timeout runs no destructor). The directories that dead processes left behind are
//! removed by the next run ([`remove_stale_dirs`]).
//!
//! Beside the server, two helpers every test harness shares: [`free_port`] and
//! [`promtool_accepts`] (a `/metrics` exposition checked by Prometheus's own `promtool`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio_postgres::{Client, NoTls};

/// What to do when the server binaries are missing.
pub const INSTALL_HINT: &str = "PostgreSQL's server binaries are not installed (no initdb and postgres in /usr/lib/postgresql/*/bin or on PATH); the PostgreSQL tests need Debian's `postgresql` package: run `apt-get install -y postgresql` (.ci/run does)";

/// The role every private server is initialised with (trust authentication, loopback only).
pub const USER: &str = "spacesync";

/// Prefix of the servers' temporary directories: `<prefix><pid>-<random>`.
const DIR_PREFIX: &str = "spacesync-pgtest-";

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

/// Whether process `pid` exists.
fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Removes the server directories of test processes that are gone (their postmaster died
/// with them; the directory stayed). Returns how many were removed.
pub fn remove_stale_dirs() -> usize {
    let mut removed = 0;
    for e in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid != std::process::id() as i32
            && !alive(pid)
            && std::fs::remove_dir_all(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from the process's spawner thread, which never ends, with
/// `PR_SET_PDEATHSIG` = SIGKILL: the child dies when this process does. (The parent-death
/// signal fires when the *thread* that forked exits, hence one thread that lives as long
/// as the process.)
fn spawn_tied(mut cmd: Command) -> Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        // The thread holds the receiver and the static the sender, so it never ends.
        let _ = std::thread::Builder::new()
            .name("pgtest-spawner".into())
            .spawn(move || {
                for (mut cmd, back) in rx {
                    let _ = back.send(cmd.spawn());
                }
                loop {
                    std::thread::park();
                }
            });
        Mutex::new(tx)
    });
    let parent = std::process::id() as i32;
    // SAFETY: prctl and getppid are async-signal-safe and touch no memory of ours; the
    // closure runs in the child between fork and exec, after its uid was changed (a
    // credential change clears the parent-death signal, so it is set after).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            // A process group of its own, so the server's backends can be killed with it.
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the signal was armed.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (back, answer) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, back))
        .map_err(|_| anyhow!("the pgtest spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| anyhow!("the pgtest spawner thread is gone"))?
        .context("starting postgres")
}

/// Runs `f` to completion on a runtime of its own on a thread of its own (so it can be
/// called from inside another runtime, as `#[tokio::test]`s do).
pub fn block<F>(f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(f))
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
    .unwrap_or_else(|e| panic!("a tokio runtime for pgtest: {e}"))
}

/// A private PostgreSQL server: a temporary directory with its cluster, a postmaster on a
/// loopback port. Stopped (fast shutdown) and removed on drop; killed with this process.
pub struct PgServer {
    child: Option<Child>,
    bin: PathBuf,
    /// `(uid, gid)` the server runs as (root is refused by PostgreSQL).
    ids: Option<(u32, u32)>,
    /// The loopback port.
    pub port: u16,
    /// Declared last: removed after the postmaster stopped.
    dir: tempfile::TempDir,
}

impl PgServer {
    /// `initdb` and start a server from the binaries in `bin`, then wait until it accepts
    /// connections.
    pub fn start(bin: &Path) -> Result<PgServer> {
        remove_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .context("creating PostgreSQL's directory")?;
        // SAFETY: geteuid has no preconditions.
        let ids = if unsafe { libc::geteuid() } == 0 {
            let ids = user_ids("postgres").context(
                "running as root, and PostgreSQL refuses to: a `postgres` user is needed (Debian's `postgresql` package creates it)",
            )?;
            std::os::unix::fs::chown(dir.path(), Some(ids.0), Some(ids.1))
                .with_context(|| format!("giving {} to postgres", dir.path().display()))?;
            Some(ids)
        } else {
            None
        };
        let mut server = PgServer {
            child: None,
            bin: bin.to_path_buf(),
            ids,
            port: 0,
            dir,
        };
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.arg("-D").arg(server.data()).args([
            "-U",
            USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        server.as_user(&mut initdb);
        let out = initdb.output().context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        server.port = free_port();
        server.launch()?;
        Ok(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn as_user(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::process::CommandExt::uid(cmd, uid);
            std::os::unix::process::CommandExt::gid(cmd, gid);
        }
        cmd.current_dir(self.dir.path());
    }

    /// Starts the postmaster on the existing cluster and port and waits until it answers.
    fn launch(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening {}", self.log_path().display()))?;
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.data())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=on",
                "-c",
                "synchronous_commit=on",
                "-c",
                "full_page_writes=on",
                "-c",
                "max_connections=300",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        self.as_user(&mut cmd);
        self.child = Some(spawn_tied(cmd)?);
        self.wait_ready()
    }

    /// Waits (up to 60 s) until the server accepts connections.
    fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        let url = self.url("postgres");
        loop {
            let u = url.clone();
            let tried = block(async move { tokio_postgres::connect(&u, NoTls).await.map(|_| ()) });
            match tried {
                Ok(()) => return Ok(()),
                Err(e) => {
                    if let Some(st) = self
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten())
                    {
                        bail!(
                            "postgres exited ({st}); its log ends:\n{}",
                            self.log_tail(20)
                        );
                    }
                    if start.elapsed() > Duration::from_secs(60) {
                        return Err(anyhow!(e).context(format!(
                            "PostgreSQL did not accept connections within 60 s; its log ends:\n{}",
                            self.log_tail(20)
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// The last `n` lines of the server's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// A connection URL for database `db` (no TLS: loopback).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{USER}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Turns TLS on with this certificate chain and key (PEM) and accepts TCP connections
    /// only over TLS (`hostssl` in pg_hba.conf), then reloads the configuration (SIGHUP)
    /// and waits until a plain connection is refused.
    pub fn require_tls(&self, cert_pem: &str, key_pem: &str) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let data = self.data();
        let write = |name: &str, text: &str, mode: u32| -> Result<()> {
            let p = data.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
            if let Some((uid, gid)) = self.ids {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid))?;
            }
            Ok(())
        };
        write("server.crt", cert_pem, 0o644)?;
        write("server.key", key_pem, 0o600)?;
        write(
            "pg_hba.conf",
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            0o600,
        )?;
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)?;
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text)?;
        let pid = self.pid().context("the server is not running")?;
        // SAFETY: kill with a valid signal has no memory-safety preconditions.
        if unsafe { libc::kill(pid as i32, libc::SIGHUP) } != 0 {
            bail!(
                "SIGHUP to postgres {pid}: {}",
                std::io::Error::last_os_error()
            );
        }
        let start = Instant::now();
        loop {
            let u = self.url("postgres");
            let plain = block(async move { tokio_postgres::connect(&u, NoTls).await.map(|_| ()) });
            if plain.is_err() {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "PostgreSQL still takes plain connections 30 s after the reload; its log ends:\n{}",
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The postmaster's process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL — the postmaster and every backend at once (its
    /// process group), as a crash of the machine would: no shutdown checkpoint, and no
    /// backend left to answer a connection already open — and waits for them to be gone.
    pub fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("the PostgreSQL server on port {} is not running", self.port);
        };
        kill_group(&mut child);
        Ok(())
    }

    /// Starts the server again on the same cluster and port (after [`PgServer::kill`]):
    /// it runs crash recovery and accepts connections again.
    pub fn restart(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                // Most often the killed server's backends still hold its shared memory.
                Err(_) if start.elapsed() < Duration::from_secs(30) => {
                    if let Some(mut c) = self.child.take() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Connects to database `postgres` (async, for the benchmark's peer); the connection
    /// is driven by a task on the caller's runtime.
    pub async fn connect(&self) -> Result<Client> {
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), NoTls)
            .await
            .with_context(|| format!("connecting to PostgreSQL on port {}", self.port))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("PostgreSQL connection ended: {e}");
            }
        });
        Ok(client)
    }

    /// Creates a fresh, empty database and returns its URL.
    pub fn create_database(&self) -> Result<String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let admin = self.url("postgres");
        let sql = format!("CREATE DATABASE {name}");
        block(async move {
            let (client, conn) = tokio_postgres::connect(&admin, NoTls).await?;
            let driver = tokio::spawn(conn);
            client.batch_execute(&sql).await?;
            drop(client);
            let _ = driver.await;
            Ok::<_, tokio_postgres::Error>(())
        })
        .with_context(|| format!("creating database {name} on port {}", self.port))?;
        Ok(self.url(&name))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fast shutdown, then SIGKILL after 20 s.
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) on our own unreaped child with a valid signal.
                unsafe {
                    libc::kill(pid, libc::SIGINT);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

/// SIGKILLs the postmaster `child` and every backend it started, reaps the postmaster and
/// waits (up to 5 s) until none of them is left running.
///
/// Killing the postmaster's process group is not enough: each PostgreSQL child calls
/// `setsid()` (`InitPostmasterChild`), so backends live in sessions of their own and
/// would go on answering their open connections until they notice the postmaster died.
/// The postmaster is stopped first so it cannot start another child while its children
/// are listed.
fn kill_group(child: &mut Child) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        let _ = child.kill();
        let _ = child.wait();
        return;
    };
    // SAFETY: kill(2) on our own child and on the processes it started; no memory touched.
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    let children = children_of(pid);
    for &c in &children {
        // SAFETY: as above; a backend leads its own process group.
        unsafe {
            libc::kill(-c, libc::SIGKILL);
            libc::kill(c, libc::SIGKILL);
        }
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && children.iter().any(|&c| running(c)) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The processes whose parent is `pid`, read from `/proc`.
fn children_of(pid: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&p| stat_of(p).is_some_and(|(_, ppid)| ppid == pid))
        .collect()
}

/// Whether `pid` exists and is not a zombie (a killed backend whose new parent has not
/// reaped it yet holds no socket any more).
fn running(pid: libc::pid_t) -> bool {
    stat_of(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// A process's state letter and parent id from `/proc/<pid>/stat` (the command name in
/// parentheses may hold spaces, so fields are read after its closing parenthesis).
fn stat_of(pid: libc::pid_t) -> Option<(char, libc::pid_t)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = text.get(text.rfind(')')? + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Runs `promtool check metrics` on `text` (a Prometheus exposition) and panics with its
/// complaints when it refuses it; true when it accepted. When promtool is not installed
/// (Debian's `prometheus` package provides it) this returns false, unless
/// `SPACESYNC_REQUIRE_PROMTOOL` is set — `.ci/run` sets it when it installed promtool, so
/// CI cannot skip the check — and then panics.
pub fn promtool_accepts(text: &str) -> bool {
    use std::io::Write as _;
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("SPACESYNC_REQUIRE_PROMTOOL").is_none(),
                "SPACESYNC_REQUIRE_PROMTOOL is set but promtool cannot run: {e}"
            );
            eprintln!(
                "skipped: promtool check metrics — promtool is not installed ({e}); `apt-get install prometheus` provides it"
            );
            return false;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("writing to promtool: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("promtool: {e}"));
    assert!(
        out.status.success(),
        "promtool check metrics refused the exposition:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// A free loopback port for a server a test starts later.
///
/// Ports come from just below the kernel's ephemeral range, so an outgoing connection never
/// takes one between this call and the server's bind, and a port is never handed out twice
/// in one test process (two tests of one binary got the same port from the kernel and one
/// agent's `/healthz` was answered by another test's server). Each process starts at a
/// different place, so the test binaries that run one after another do not reuse a port
/// still in TIME_WAIT either.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (lo, hi) = below_ephemeral();
    let span = hi - lo;
    let _ = NEXT.compare_exchange(
        0,
        1 + (std::process::id().wrapping_mul(7919) % span),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let p = lo + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let Ok(port) = u16::try_from(p) else { continue };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A port range of up to 12,000 ports ending where the kernel's ephemeral range starts.
fn below_ephemeral() -> (u32, u32) {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    if low > 12_000 {
        (low - 12_000, low)
    } else {
        (10_000, 22_000)
    }
}

/// The shared server's postmaster and directory, for [`stop_shared`] at exit.
static SHARED_AT_EXIT: Mutex<Option<(i32, PathBuf)>> = Mutex::new(None);

/// Registered with `atexit`: a test process that exits normally kills its shared server
/// and removes its directory at once (a static is never dropped; the parent-death signal
/// and [`remove_stale_dirs`] cover the other ways out).
extern "C" fn stop_shared() {
    let taken = SHARED_AT_EXIT
        .lock()
        .map(|mut g| g.take())
        .unwrap_or_default();
    if let Some((pid, dir)) = taken {
        // SAFETY: kill(2) and waitpid(2) on our own child postmaster and its process
        // group (the backends); no memory shared.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        // Its backends leave within moments; what they still hold is removed next run.
        for _ in 0..40 {
            if std::fs::remove_dir_all(&dir).is_ok() || !dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The server of this test process, started on first use. Panics, saying what to
/// install, when PostgreSQL is missing or does not start.
pub fn shared() -> &'static PgServer {
    static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        let bin = find_binaries().ok_or_else(|| INSTALL_HINT.to_string())?;
        let server = PgServer::start(&bin)
            .map_err(|e| format!("starting the test PostgreSQL from {}: {e:#}", bin.display()))?;
        if let Some(pid) = server.pid().and_then(|p| i32::try_from(p).ok()) {
            *SHARED_AT_EXIT.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((pid, server.dir.path().to_path_buf()));
            // SAFETY: registers a function without arguments that touches only statics.
            unsafe {
                libc::atexit(stop_shared);
            }
        }
        Ok(server)
    });
    match server {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// A fresh database on this process's server ([`shared`]); its URL. Panics, saying what
/// to do, when PostgreSQL is missing or fails.
pub fn database() -> String {
    shared()
        .create_database()
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The binaries, or a panic saying to install Debian's `postgresql` package.
pub fn binaries() -> PathBuf {
    find_binaries().unwrap_or_else(|| panic!("{INSTALL_HINT}"))
}

#[cfg(test)]
mod port_tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let (lo, hi) = below_ephemeral();
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        for p in &ports {
            assert!((lo..hi).contains(&u32::from(*p)), "{p} outside {lo}..{hi}");
        }
        assert!(std::net::TcpListener::bind(("127.0.0.1", ports[0])).is_ok());
    }
}
