//! Processes: children that die with the harness, finding the binaries under test, and
//! what `/proc` says about a process (CPU seconds, resident memory).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// A child process that is stopped when dropped — on success, on error and on panic — so
/// no hub, agent or PostgreSQL server outlives the harness.
pub struct ChildGuard {
    /// What it is, for messages.
    name: String,
    child: Option<Child>,
    /// Signal sent first on drop; SIGKILL follows after [`ChildGuard::grace`].
    drop_signal: libc::c_int,
    /// How long a dropped child gets to exit after `drop_signal`.
    grace: Duration,
}

impl ChildGuard {
    /// Guards `child`; on drop it is killed (SIGKILL) and reaped.
    pub fn new(name: impl Into<String>, child: Child) -> ChildGuard {
        ChildGuard {
            name: name.into(),
            child: Some(child),
            drop_signal: libc::SIGKILL,
            grace: Duration::ZERO,
        }
    }

    /// On drop, sends `signal` first and waits up to `grace` before SIGKILL (PostgreSQL's
    /// fast shutdown is SIGINT).
    pub fn with_drop_signal(mut self, signal: libc::c_int, grace: Duration) -> ChildGuard {
        self.drop_signal = signal;
        self.grace = grace;
        self
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` once the child has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `signal` and waits up to `grace` for the exit; SIGKILL after that. Returns
    /// the exit status and how long the child took to exit.
    pub fn stop(&mut self, signal: libc::c_int, grace: Duration) -> Result<(ExitStatus, Duration)> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        let t = Instant::now();
        send_signal(&child, signal);
        let deadline = t + grace;
        loop {
            if let Some(st) = child.try_wait().context("waiting for a child")? {
                return Ok((st, t.elapsed()));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let st = child.wait().context("waiting for a killed child")?;
                if signal != libc::SIGKILL {
                    eprintln!(
                        "{} did not exit within {grace:?} of signal {signal}; killed",
                        self.name
                    );
                }
                return Ok((st, t.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop(self.drop_signal, self.grace);
        }
    }
}

fn send_signal(child: &Child, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) with the pid of a child we have not yet reaped (so the pid cannot
        // have been reused) and a valid signal number; it touches no memory of ours.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// A free loopback port (bound and released: racy, so starters retry on a failed bind),
/// never one this process handed out before: the kernel may give a released port again,
/// and two of the drain's 32 agents configured with one port made the second answer
/// `/healthz` through the first and its intake refuse the second's token (seen once).
pub fn free_port() -> Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..1000 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
        let port = l.local_addr()?.port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("no loopback port this process has not handed out already, in 1,000 tries")
}

/// The clock tick `/proc/<pid>/stat` counts CPU time in.
fn clock_ticks() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        // SAFETY: sysconf reads a constant; no memory is shared.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 { t as f64 } else { 100.0 }
    })
}

/// User + system CPU seconds of a process, all its threads (live and exited) included:
/// fields 14 and 15 of `/proc/<pid>/stat`. `pid` `None` is this process.
pub fn cpu_seconds(pid: Option<u32>) -> Result<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".into(),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{path}: unexpected format"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<f64> {
        f.get(i)
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("{path}: field {} is not a number", i + 3))
    };
    // After the name, field 3 (state) is index 0: utime (14) is 11, stime (15) is 12.
    Ok((num(11)? + num(12)?) / clock_ticks())
}

/// User + system CPU seconds of the process `pid` and its whole tree: its own, its waited-for
/// children's (cutime, cstime) and every live child's (with theirs). For a database server:
/// the postmaster and its backends, the backends that ended during a run included once
/// the postmaster reaped them.
pub fn tree_cpu_seconds(pid: u32) -> Result<f64> {
    let read = |p: u32| -> Option<(f64, u32)> {
        let text = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        let rest = text.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok());
        // After the name: ppid index 1, utime 11, stime 12, cutime 13, cstime 14.
        let cpu = num(11)? + num(12)? + num(13)? + num(14)?;
        Some((cpu, f.get(1)?.parse().ok()?))
    };
    let (own, _) = read(pid).ok_or_else(|| anyhow!("/proc/{pid}/stat: no such process"))?;
    let mut total = own;
    for e in std::fs::read_dir("/proc")
        .context("reading /proc")?
        .flatten()
    {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((cpu, ppid)) = read(child)
            && ppid == pid
        {
            total += cpu;
        }
    }
    Ok(total / clock_ticks())
}

/// User + system CPU seconds of this process's children that have been waited for:
/// fields 16 and 17 of `/proc/self/stat`. The difference across one `run_cli` is that
/// command's CPU, when no other child is reaped meanwhile.
pub fn children_cpu_seconds() -> Result<f64> {
    let path = "/proc/self/stat";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{path}: unexpected format"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<f64> {
        f.get(i)
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("{path}: field {} is not a number", i + 3))
    };
    // cutime (16) is index 13, cstime (17) index 14.
    Ok((num(13)? + num(14)?) / clock_ticks())
}

/// Resident memory (`VmRSS` of `/proc/<pid>/status`) in MiB.
pub fn rss_mb(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kb = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| anyhow!("{path} has no VmRSS line"))?;
    Ok(kb / 1024.0)
}

/// Bytes of all files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Where the binaries under test are, when not found by [`locate`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Bins {
    /// The `spacesync-hub` binary to measure (default: built from this workspace).
    #[arg(long, env = "SPACESYNC_HUB_BIN")]
    pub hub_bin: Option<PathBuf>,
    /// The `spacesync-agent` binary to measure (default: built from this workspace).
    #[arg(long, env = "SPACESYNC_AGENT_BIN")]
    pub agent_bin: Option<PathBuf>,
}

/// Which binary under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// `spacesync-hub`.
    Hub,
    /// `spacesync-agent`.
    Agent,
}

impl Binary {
    fn name(self) -> &'static str {
        match self {
            Binary::Hub => "spacesync-hub",
            Binary::Agent => "spacesync-agent",
        }
    }
}

/// The binary to measure.
///
/// 1. `given` (`--hub-bin` / `SPACESYNC_HUB_BIN`, `--agent-bin` / `SPACESYNC_AGENT_BIN`).
/// 2. The newest of `<name>-under-bench` (the hub's or agent's own `main`, built by
///    `cargo build --release -p spacesync-bench --bins`) and `<name>` (built by
///    `cargo build --release -p spacesync-hub`) next to this binary.
///
/// `cargo run` builds only the binary it runs, so the others may be older than the
/// sources: a binary older than this one is named on stderr, with the command that
/// rebuilds it. (Building them from here was tried and dropped: a nested cargo inherits
/// `cargo run`'s environment, rebuilds build-script crates such as `ring` for it, and
/// replaces this very executable while it runs.)
pub fn locate(which: Binary, given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        if !p.is_file() {
            bail!(
                "{} (given for {}) does not exist",
                p.display(),
                which.name()
            );
        }
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?;
    let suffix = std::env::consts::EXE_SUFFIX;
    let candidates = [
        dir.join(format!("{}-under-bench{suffix}", which.name())),
        dir.join(format!("{}{suffix}", which.name())),
    ];
    let (modified, found) = candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p)))
        .max_by_key(|(m, _)| *m)
        .ok_or_else(|| {
            anyhow!(
                "no {name} binary next to {exe}: build it with `cargo build --release -p spacesync-bench --bins` \
                 (or `cargo build --release -p {name}`), or pass its path (--hub-bin / --agent-bin)",
                name = which.name(),
                exe = exe.display()
            )
        })?;
    let own = std::fs::metadata(&exe).and_then(|m| m.modified()).ok();
    if own.is_some_and(|own| modified < own) {
        eprintln!(
            "Note: {} is older than {}; if the {} changed since it was built, rebuild it first: \
             cargo build --release -p spacesync-bench --bins",
            found.display(),
            exe.display(),
            match which {
                Binary::Hub => "hub",
                Binary::Agent => "agent",
            }
        );
    }
    Ok(found.clone())
}

/// Runs `bin --data dir args…` to completion; its stdout, trimmed, or an error naming the
/// command and its stderr.
pub fn run_cli(bin: &Path, dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .arg("--data")
        .arg(dir)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "`{} {}` failed ({}): {}",
            bin.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// [`run_cli`], also returning the command's peak resident memory in MiB: its `VmHWM`,
/// read every 20 ms while it runs (monotonic, so the last reading is the peak but for
/// its last 20 ms). Not `ru_maxrss` from `wait4`: Linux starts a child's at its parent's
/// resident size when it forks and execs, so a child smaller than this harness reads as
/// large as it.
pub fn run_cli_peak(bin: &Path, dir: &Path, args: &[&str]) -> Result<(String, f64)> {
    use std::io::Read;
    let mut child = Command::new(bin)
        .arg("--data")
        .arg(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0f64;
    let status = loop {
        if let Some(hwm) = std::fs::read_to_string(&status_path).ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        }) {
            peak_kib = peak_kib.max(hwm);
        }
        if let Some(st) = child
            .try_wait()
            .with_context(|| format!("waiting for {}", bin.display()))?
        {
            break st;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "`{} {}` failed ({status}): {}",
            bin.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
            args.join(" "),
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    Ok((
        String::from_utf8_lossy(&stdout).trim().to_string(),
        peak_kib / 1024.0,
    ))
}

/// Polls `url` every `poll` until it answers 200, the guarded process exits, or `deadline`
/// passes. Returns the time from the call to the first 200.
pub async fn wait_ok(
    http: &reqwest::Client,
    url: &str,
    child: &mut ChildGuard,
    deadline: Duration,
    poll: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if let Some(st) = child.exited() {
            bail!("{} exited ({st}) before {url} answered", child.name);
        }
        let ok = http
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= deadline {
            bail!("{url} did not answer 200 within {deadline:?}");
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_and_rss_read() {
        let cpu = cpu_seconds(None).expect("own /proc/self/stat");
        assert!(cpu >= 0.0);
        let rss = rss_mb(std::process::id()).expect("own VmRSS");
        assert!(rss > 0.0);
    }

    #[test]
    fn a_dropped_guard_kills_its_child() {
        let child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = child.id();
        drop(ChildGuard::new("sleep", child));
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
