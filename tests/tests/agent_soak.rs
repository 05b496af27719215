//! Memory of an idle agent holding 100k unreceipted entries. Runs only with
//! `SPACESYNC_SOAK=1` (it takes a minute): `SPACESYNC_SOAK=1 cargo test -p spacesync-tests
//! --test agent_soak -- --nocapture`. Prints VmRSS from /proc/<pid>/status.

use std::time::Duration;

use spacesync_tests::agent_harness::{AgentProc, activity, free_port};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_agent_with_100k_buffered_entries_stays_small() {
    if std::env::var("SPACESYNC_SOAK").as_deref() != Ok("1") {
        eprintln!("skipped: set SPACESYNC_SOAK=1 to run the memory soak");
        return;
    }
    let mut agent = AgentProc::init(&format!("http://127.0.0.1:{}", free_port()), |c| {
        c.push.retry_cap_secs = 5.0;
    });
    agent.start().await;
    let pid = agent.pid().unwrap_or(0);
    eprintln!("RSS at start: {} KiB", rss_kib(pid));
    for i in 0..100 {
        let body = (0..1000)
            .map(|j| activity(&format!("soak-{i}-{j}")))
            .collect::<Vec<_>>()
            .join("\n");
        let (s, _, v) = agent.post(&body, "application/x-ndjson").await;
        assert_eq!(s, 200, "{v}");
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_intake = rss_kib(pid);
    agent.stop();
    agent.start().await;
    let pid = agent.pid().unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = rss_kib(pid);
    let st = agent.status().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_status = rss_kib(pid);
    eprintln!(
        "buffered {} entries ({} bytes); VmRSS after intake {after_intake} KiB; idle after restart {idle} KiB; after a status call {after_status} KiB",
        st["buffered"], st["buffered_bytes"]
    );
    assert_eq!(st["buffered"], 100_000);
    assert!(idle < 30 * 1024, "idle RSS {idle} KiB is over 30 MiB");
}
