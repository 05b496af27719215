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

/// Starts `run` with `tunables` as `GLIBC_TUNABLES` (none: unset) and waits until it
/// answers `/healthz` on `listen`.
fn start(dir: &Path, listen: &str, tunables: Option<&str>) -> Child {
    let mut cmd = Command::new(bin());
    cmd.arg("--data")
        .arg(dir)
        .args(["run", "--now", "2018-11-25T10:00:00+08:00"])
        .env_remove("GLIBC_TUNABLES")
        .env_remove(spacesync_agent::idle::REEXECUTED)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(t) = tunables {
        cmd.env("GLIBC_TUNABLES", t);
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

/// The process's environment as `NAME=value` strings.
fn environ(child: &Child) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{}/environ", child.id()))
        .unwrap_or_else(|e| panic!("environ: {e}"));
    raw.split(|&b| b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn run_serves_with_the_caches_off_and_leaves_an_operators_setting() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let listen = init(tmp.path());

    // Nothing set: the serving image is the second one, with the tunable and the marker.
    let child = start(tmp.path(), &listen, None);
    let env = environ(&child);
    stop(child);
    assert!(
        env.iter()
            .any(|v| v == &format!("GLIBC_TUNABLES={}", spacesync_agent::idle::TCACHE_OFF)),
        "{env:?}"
    );
    assert!(
        env.iter()
            .any(|v| v.starts_with(&format!("{}=", spacesync_agent::idle::REEXECUTED))),
        "{env:?}"
    );

    // Other tunables: kept, the cache setting added after them. (glibc parses the value in
    // place at start, turning the `:` between tunables into a NUL, so `environ` shows the
    // two parts as neighbours.)
    let child = start(tmp.path(), &listen, Some("glibc.malloc.arena_max=3"));
    let env = environ(&child);
    stop(child);
    let at = env
        .iter()
        .position(|v| v == "GLIBC_TUNABLES=glibc.malloc.arena_max=3")
        .unwrap_or_else(|| panic!("{env:?}"));
    assert_eq!(
        env.get(at + 1).map(String::as_str),
        Some(spacesync_agent::idle::TCACHE_OFF),
        "{env:?}"
    );

    // The operator's own cache setting: no second execution, nothing changed.
    let child = start(tmp.path(), &listen, Some("glibc.malloc.tcache_count=3"));
    let env = environ(&child);
    stop(child);
    assert!(
        env.iter()
            .any(|v| v == "GLIBC_TUNABLES=glibc.malloc.tcache_count=3"),
        "{env:?}"
    );
    assert!(
        !env.iter()
            .any(|v| v.starts_with(&format!("{}=", spacesync_agent::idle::REEXECUTED))),
        "{env:?}"
    );
}
