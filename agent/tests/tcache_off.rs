//! `run` executes itself again with glibc's per-thread malloc caches off (agent/src/idle.rs,
//! `run_with_tcache_off`): the serving process's own environment, read from
//! `/proc/PID/environ`, carries the tunable and the marker that stops a second execution;
//! an operator's own `tcache_count` is left as it is. Linux with glibc only.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{bin, free_port};

/// An initialised agent directory whose hub is down; its listen address.
fn init(dir: &Path) -> String {
    let listen = format!("127.0.0.1:{}", free_port());
    let hub = format!("http://127.0.0.1:{}", free_port());
    let out = Command::new(bin())
        .arg("--data")
        .arg(dir)
        .args([
            "init", "--source", "gd-rrt", "--scope", "440000", "--hub", &hub, "--listen", &listen,
        ])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin().display()));
    assert!(out.status.success(), "init: {out:?}");
    listen
}

/// How `run` is started.
#[derive(Default)]
struct Start<'a> {
    /// `GLIBC_TUNABLES` (none: unset).
    tunables: Option<&'a str>,
    /// The marker of a second image, set from outside.
    marker: bool,
    /// Started through this dynamic loader (`ld.so <agent> …`).
    loader: Option<&'a Path>,
}

const NOW: &str = "2018-11-25T10:00:00+08:00";

/// Starts `run` as `how` says and waits until it answers `/healthz` on `listen`.
fn start(dir: &Path, listen: &str, how: Start) -> Child {
    let mut cmd = match how.loader {
        Some(ld) => {
            let mut c = Command::new(ld);
            c.arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    cmd.arg("--data")
        .arg(dir)
        .args(["run", "--now", NOW])
        .env_remove("GLIBC_TUNABLES")
        .env_remove(spacesync_agent::idle::REEXECUTED)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(t) = how.tunables {
        cmd.env("GLIBC_TUNABLES", t);
    }
    if how.marker {
        cmd.env(spacesync_agent::idle::REEXECUTED, "1");
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the agent exited at start ({st})");
        }
        if std::net::TcpStream::connect(listen).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .is_ok()
                && {
                    let mut answer = String::new();
                    s.read_to_string(&mut answer).is_ok() && answer.starts_with("HTTP/1.1 200")
                }
        }) {
            return child;
        }
        assert!(Instant::now() < deadline, "the agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `/proc/PID/<file>` of the child (`environ`, `cmdline`): its NUL-separated strings.
fn proc_strings(child: &Child, file: &str) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{}/{file}", child.id()))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    raw.split(|&b| b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Starts `run` as `how` says, reads the serving process's environment and arguments, and
/// kills it.
fn serving(dir: &Path, listen: &str, how: Start) -> (Vec<String>, Vec<String>) {
    let mut child = start(dir, listen, how);
    let seen = (
        proc_strings(&child, "environ"),
        proc_strings(&child, "cmdline"),
    );
    let _ = child.kill();
    let _ = child.wait();
    seen
}

/// `GLIBC_TUNABLES` as the process started with it: glibc (2.36 here) parses the value in
/// place, turning each `:` into a NUL, so `environ` may show the tunables after the first
/// as entries of their own; they are joined back.
fn tunables(env: &[String]) -> Option<String> {
    let at = env.iter().position(|v| v.starts_with("GLIBC_TUNABLES="))?;
    let mut value = env[at]["GLIBC_TUNABLES=".len()..].to_string();
    for next in &env[at + 1..] {
        if !next.starts_with("glibc.") {
            break;
        }
        value.push(':');
        value.push_str(next);
    }
    Some(value)
}

fn has_marker(env: &[String]) -> bool {
    env.iter()
        .any(|v| v.starts_with(&format!("{}=", spacesync_agent::idle::REEXECUTED)))
}

#[test]
fn run_serves_with_the_caches_off_and_leaves_an_operators_setting() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let listen = init(tmp.path());
    let off = spacesync_agent::idle::TCACHE_OFF;

    // Nothing set: the serving image is the second one, with the tunable, the marker and
    // the arguments it was started with.
    let (env, args) = serving(tmp.path(), &listen, Start::default());
    assert_eq!(tunables(&env).as_deref(), Some(off), "{env:?}");
    assert!(has_marker(&env), "{env:?}");
    let data = tmp.path().display().to_string();
    assert_eq!(
        args[1..],
        ["--data", data.as_str(), "run", "--now", NOW],
        "{args:?}"
    );

    // Other tunables: kept, the cache setting added after them.
    let (env, _) = serving(
        tmp.path(),
        &listen,
        Start {
            tunables: Some("glibc.malloc.arena_max=3"),
            ..Start::default()
        },
    );
    assert_eq!(
        tunables(&env),
        Some(format!("glibc.malloc.arena_max=3:{off}")),
        "{env:?}"
    );

    // The operator's own cache setting: no second image, nothing changed.
    let (env, _) = serving(
        tmp.path(),
        &listen,
        Start {
            tunables: Some("glibc.malloc.tcache_count=3"),
            ..Start::default()
        },
    );
    assert_eq!(
        tunables(&env).as_deref(),
        Some("glibc.malloc.tcache_count=3"),
        "{env:?}"
    );
    assert!(!has_marker(&env), "{env:?}");

    // The marker without the tunable (set from outside, or glibc dropped the variable):
    // no further image — the agent serves as started.
    let (env, _) = serving(
        tmp.path(),
        &listen,
        Start {
            marker: true,
            ..Start::default()
        },
    );
    assert_eq!(tunables(&env), None, "{env:?}");
}

/// Started through the dynamic loader, the process's image is the loader: executing it
/// again would start the loader with the agent's arguments. The agent serves as started.
#[test]
fn run_through_the_dynamic_loader_serves_without_a_second_image() {
    let Some(ld) = ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
    else {
        eprintln!("no dynamic loader at a known path; nothing to check here");
        return;
    };
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let listen = init(tmp.path());
    let (env, _) = serving(
        tmp.path(),
        &listen,
        Start {
            loader: Some(ld),
            ..Start::default()
        },
    );
    assert_eq!(tunables(&env), None, "{env:?}");
    assert!(!has_marker(&env), "{env:?}");
}
