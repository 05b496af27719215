//! Issue 16, agents as witnesses, with real processes: three agents deliver to the real
//! hub, audit its log and cosign the checkpoint they verified; the hub's `/v1/checkpoint`
//! then carries each agent's `cosignature/v1` line on the hub-signed note — which a
//! verifier knowing only the hub key still opens — and each line verifies with that
//! agent's registered key. Behind a fault proxy the same holds (no false alarm, and the
//! cosignatures arrive). A bulletin issued while two of three agents are stopped names a
//! checkpoint the log then grows past; restarted, those agents cosign it on the hub's
//! request after a consistency proof to their newer checkpoint, the bulletin becomes
//! witnessed by the quorum, and `bulletin verify` says so.

use std::time::Duration;

use serde_json::Value;
use spacesync_shared::cosign::{self, Cosigner};
use spacesync_shared::keys::parse_public_key;
use spacesync_shared::merkle::{self, NoteVerifier};
use spacesync_tests::cluster::{AgentNode, Cluster, HubNode, SITES, Workload, hub_bin};
use spacesync_tests::fault_proxy::FaultPlan;

/// Posts `n` records of `work` to `agent` in one batch.
async fn post(agent: &AgentNode, work: &mut Workload, n: usize) {
    let api = agent.api();
    let body = (0..n)
        .map(|_| work.next_write().1)
        .collect::<Vec<_>>()
        .join("\n");
    let r = reqwest::Client::new()
        .post(format!("{}/v1/records", api.url))
        .bearer_auth(&api.token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /v1/records: {e}"));
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
}

fn witness(a: &AgentNode) -> Cosigner {
    let key = parse_public_key(&a.key_line).unwrap_or_else(|e| panic!("{e}"));
    Cosigner::new(&cosign::witness_name(&a.source()), key).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until the hub's newest checkpoint carries a verifying cosignature of every agent;
/// returns the note.
async fn wait_witnessed(c: &Cluster, origin: &str) -> String {
    let hub_key = parse_public_key(&c.hub.key_line).unwrap_or_else(|e| panic!("{e}"));
    let verifier = NoteVerifier::new(origin, hub_key).unwrap_or_else(|e| panic!("{e}"));
    let trusted: Vec<Cosigner> = c.agents.iter().map(witness).collect();
    let url = format!("{}/v1/checkpoint", c.hub.url());
    let start = std::time::Instant::now();
    loop {
        let note = reqwest::get(&url)
            .await
            .unwrap_or_else(|e| panic!("GET /v1/checkpoint: {e}"))
            .text()
            .await
            .unwrap_or_default();
        // Always a valid hub-signed checkpoint, however many lines it carries.
        merkle::open_checkpoint(&note, &verifier, origin).unwrap_or_else(|e| panic!("{e}: {note}"));
        let got = cosign::verify(&note, &trusted).unwrap_or_else(|e| panic!("{e}: {note}"));
        if got.len() == trusted.len() {
            return note;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the hub's checkpoint was not cosigned by every agent:\n{note}\nhub log:\n{}",
            c.hub.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn origin(c: &Cluster) -> String {
    let note = reqwest::get(format!("{}/v1/checkpoint", c.hub.url()))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    note.lines().next().unwrap_or_default().to_string()
}

async fn run(plan: FaultPlan, seed: u64) {
    let c = Cluster::start(3, seed, plan, |_| {}).await;
    let mut works: Vec<Workload> = c.agents.iter().map(|a| Workload::new(a.site)).collect();
    for round in 0..4 {
        for (a, w) in c.agents.iter().zip(works.iter_mut()) {
            post(a, w, 1 + round).await;
        }
    }
    c.wait_drained(Duration::from_secs(90)).await;
    let origin = origin(&c).await;
    let note = wait_witnessed(&c, &origin).await;
    // Cosigned exactly the tree the hub serves now: the log is quiet.
    let size: u64 = note
        .lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or_default();
    for a in &c.agents {
        let s: Value = a.status().await.unwrap_or(Value::Null);
        assert!(s["log_alarm"].is_null(), "{s}");
        assert_eq!(s["verified_checkpoint_size"], size, "{s}");
    }
    // One line per witness, after the hub's own.
    let sig_lines = note.lines().filter(|l| l.starts_with('—')).count();
    assert_eq!(sig_lines, 1 + c.agents.len(), "{note}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_cosigns_the_checkpoint_it_verified() {
    run(FaultPlan::NONE, 17).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cosignatures_arrive_through_a_faulty_network() {
    run(FaultPlan::chaos(0.3, 1_000), 18).await;
}

async fn status(a: &AgentNode) -> Value {
    a.status().await.unwrap_or(Value::Null)
}

/// Waits until `a` delivered everything it holds and verified the hub's current size.
async fn settled(hub: &HubNode, a: &AgentNode) -> u64 {
    let start = std::time::Instant::now();
    loop {
        let size = hub_size(hub).await;
        let s = status(a).await;
        if s["head_seq"].is_u64()
            && s["acked_seq"] == s["head_seq"]
            && s["verified_checkpoint_size"] == size
        {
            return size;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} did not settle: {s}\n{}",
            a.site.source,
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn hub_size(hub: &HubNode) -> u64 {
    let note = reqwest::get(format!("{}/v1/checkpoint", hub.url()))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    note.lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("not a checkpoint: {note}"))
}

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulletin_checkpoint_is_witnessed_by_the_quorum_after_the_log_moved_on() {
    let mut hub = HubNode::init();
    // The three agents' units only, with a quorum of 2 (a strict majority of three).
    let campaign = hub.dir.path().join("campaign.toml");
    let text = std::fs::read_to_string(&campaign).unwrap_or_else(|e| panic!("{e}"));
    assert!(text.contains("witness_quorum = 17"));
    let start = text.find("[units]").unwrap_or_else(|| panic!("no [units]"));
    let units: Vec<String> = SITES[..3]
        .iter()
        .map(|s| format!("{:?}", s.scope))
        .collect();
    std::fs::write(
        &campaign,
        format!(
            "{}[units]\ncodes = [{}]\n",
            text[..start].replace("witness_quorum = 17", "witness_quorum = 2"),
            units.join(", ")
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let admin = ok(
        &hub.cli(&["token", "create", "--role", "admin", "--label", "ops"]),
        "token create",
    );
    let mut agents: Vec<AgentNode> = SITES[..3]
        .iter()
        .map(|site| {
            let a = AgentNode::init(*site, &hub.url(), &hub.key_line, |_| {});
            hub.register(site, &a.key_line);
            a
        })
        .collect();
    hub.start().await;
    for a in &mut agents {
        a.start().await;
    }
    let mut works: Vec<Workload> = agents.iter().map(|a| Workload::new(a.site)).collect();
    for (a, w) in agents.iter().zip(works.iter_mut()) {
        post(a, w, 3).await;
    }
    for a in &agents {
        settled(&hub, a).await;
    }
    // Two agents stop; the first sends more, and the bulletin is issued on that tree.
    agents[1].stop();
    agents[2].stop();
    post(&agents[0], &mut works[0], 2).await;
    let pinned = settled(&hub, &agents[0]).await;
    let issue = std::process::Command::new(hub_bin())
        .args(["bulletin", "issue", "--hub", &hub.url()])
        .env("SPACESYNC_HUB_TOKEN", &admin)
        .env_remove("SPACESYNC_HUB_DATA")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let n = ok(&issue, "bulletin issue --hub");
    let number: u64 = n.parse().unwrap_or_else(|e| panic!("{n:?}: {e}"));
    let http = reqwest::Client::new();
    let get = async |path: &str| {
        http.get(format!("{}{path}", hub.url()))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .text()
            .await
            .unwrap_or_default()
    };
    let doc: Value =
        serde_json::from_str(&get(&format!("/v1/bulletins/{n}.json")).await).expect("bulletin");
    assert_eq!(
        doc["checkpoint"]["size"],
        pinned,
        "bulletin {n}: {}",
        get("/v1/bulletins").await
    );
    // The log moves on before the stopped agents come back.
    post(&agents[0], &mut works[0], 2).await;
    let later = settled(&hub, &agents[0]).await;
    assert!(later > pinned);
    let html = get(&format!("/v1/bulletins/{n}.html?lang=en")).await;
    assert!(
        html.contains(
            "Log checkpoint not yet witnessed: 1 of 3 provincial units have cosigned it, short of the quorum of 2"
        ),
        "{html}"
    );
    // Each province's line for the witness policy, as published before the rotation below.
    let hub_key = parse_public_key(&hub.key_line).unwrap_or_else(|e| panic!("{e}"));
    let lines_before: Vec<String> = agents
        .iter()
        .map(|a| ok(&a.cli(&["pubkey", "--witness"]), "pubkey --witness"))
        .collect();
    for (a, l) in agents.iter().zip(&lines_before) {
        assert_eq!(
            *l,
            format!("witness {} {}", a.site.scope, witness(a).to_vkey()),
            "{l}"
        );
    }
    let origin = doc["checkpoint"]["origin"]
        .as_str()
        .unwrap_or_else(|| panic!("no origin: {doc}"))
        .to_string();
    let policy_of = |lines: &[String]| {
        format!(
            "# the campaign's witnesses\nformat spacesync-witnesses/1\nlog {origin} {}\nquorum 2\n{}\n",
            spacesync_shared::keys::public_key_line(&hub_key),
            lines.join("\n")
        )
    };
    let policy_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let old_policy = policy_dir.path().join("witnesses-old.txt");
    std::fs::write(&old_policy, policy_of(&lines_before)).unwrap_or_else(|e| panic!("{e}"));
    // The second province rotates its key while stopped: the hand-over is an entry of its
    // chain signed by the key the policy lists, and it cosigns from now on with the new key.
    let new_key = ok(
        &agents[1].cli(&["rotate-key", "--now", spacesync_tests::cluster::AGENT_NOW]),
        "rotate-key",
    );
    agents[1].start().await;
    let start = std::time::Instant::now();
    // (The scheduler may have issued bulletins of its own: find ours.)
    let ours = async || {
        let list: Value = serde_json::from_str(&get("/v1/bulletins").await).expect("list");
        list["bulletins"]
            .as_array()
            .and_then(|l| l.iter().find(|b| b["number"] == number).cloned())
            .unwrap_or_else(|| panic!("bulletin {n} is not listed: {list}"))
    };
    loop {
        let list = ours().await;
        // The first and the rotated second: the quorum.
        if list["witnessed"]["units"]
            .as_array()
            .is_some_and(|w| w.len() >= 2)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "bulletin {n} not witnessed by the quorum: {list}\n{}",
            agents[1].log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Under the policy published before the rotation, the second province's new key is not
    // listed: anyone holding only the policy and the checkpoint counts one unit, short of
    // the quorum. With its new line added (the old one kept), the quorum is met.
    let cp_file = policy_dir.path().join("cp.txt");
    std::fs::write(
        &cp_file,
        get(&format!("/v1/checkpoint?size={pinned}")).await,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let check = |policy: &std::path::Path| {
        std::process::Command::new(hub_bin())
            .args(["witnesses", "check", &cp_file.to_string_lossy(), "--policy"])
            .arg(policy)
            .env_remove("SPACESYNC_HUB_DATA")
            .current_dir(policy_dir.path())
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let short = check(&old_policy);
    assert!(!short.status.success(), "{short:?}");
    let err = String::from_utf8_lossy(&short.stderr);
    assert!(
        err.contains(&format!(
            "checkpoint of {pinned} entries witnessed by 1 of the policy's 3 unit(s), quorum 2 (quorum NOT met): units {}",
            SITES[0].scope
        )),
        "{err}"
    );
    let rotated_line = ok(&agents[1].cli(&["pubkey", "--witness"]), "pubkey --witness");
    assert!(rotated_line.ends_with(&{
        let k = parse_public_key(&new_key).unwrap_or_else(|e| panic!("{e}"));
        Cosigner::new(&cosign::witness_name(&agents[1].source()), k)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_vkey()
    }));
    let mut lines_after = lines_before.clone();
    lines_after.push(rotated_line.clone());
    let new_policy = policy_dir.path().join("witnesses.txt");
    std::fs::write(&new_policy, policy_of(&lines_after)).unwrap_or_else(|e| panic!("{e}"));
    let met = ok(&check(&new_policy), "witnesses check");
    assert!(
        met.starts_with(&format!(
            "ok: checkpoint of {pinned} entries witnessed by 2 of the policy's 3 unit(s), quorum 2 (quorum met)"
        )),
        "{met}"
    );
    // A policy naming another hub key refuses the checkpoint outright.
    let other_hub = policy_dir.path().join("other-hub.txt");
    std::fs::write(
        &other_hub,
        policy_of(&lines_after).replace(
            &spacesync_shared::keys::public_key_line(&hub_key),
            &agents[2].key_line,
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let refused = check(&other_hub);
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("does not verify with the policy's hub key"),
        "{refused:?}"
    );
    // Evidence of the first province's entry at the bulletin's checkpoint (proved consistent
    // with the newer one its agent verified), checked under each policy.
    let ev = policy_dir.path().join("seq-1.evidence");
    let said = ok(
        &agents[0].cli(&[
            "evidence",
            "--seq",
            "1",
            "--at-size",
            &pinned.to_string(),
            "--out",
            &ev.to_string_lossy(),
        ]),
        "evidence --at-size",
    );
    assert!(
        said.contains(&format!("checkpoint of {pinned} entries")),
        "{said}"
    );
    let ev_verify = |policy: &std::path::Path| {
        std::process::Command::new(hub_bin())
            .args(["evidence", "verify", &ev.to_string_lossy(), "--witnesses"])
            .arg(policy)
            .env_remove("SPACESYNC_HUB_DATA")
            .current_dir(policy_dir.path())
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let said = ok(&ev_verify(&new_policy), "evidence verify --witnesses");
    assert!(
        said.contains("under the witness policy, checkpoint of"),
        "{said}"
    );
    assert!(said.contains("(quorum met)"), "{said}");
    let short = ev_verify(&old_policy);
    assert!(!short.status.success());
    assert!(
        String::from_utf8_lossy(&short.stderr).contains("witnesses: checkpoint of"),
        "{short:?}"
    );
    // A size that does not hold the entry, and one beyond what the agent verified.
    let small = agents[0].cli(&[
        "evidence",
        "--seq",
        "3",
        "--at-size",
        "1",
        "--out",
        &policy_dir.path().join("small").to_string_lossy(),
    ]);
    assert!(
        String::from_utf8_lossy(&small.stderr).contains("outside the checkpoint of 1 entries"),
        "{small:?}"
    );
    agents[2].start().await;
    let list = loop {
        let list = ours().await;
        if list["witnessed"]["units"]
            .as_array()
            .is_some_and(|w| w.len() >= 2)
        {
            break list;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "bulletin {n} not witnessed by the quorum: {list}\n{}",
            agents[1].log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(list["witnessed"]["size"], pinned);
    // The first agent's line, and at least one that came after a consistency proof.
    let witnesses = list["witnessed"]["witnesses"].to_string();
    assert!(witnesses.contains(SITES[0].source), "{witnesses}");
    let k = list["witnessed"]["units"].as_array().map_or(0, Vec::len);
    let said = format!("Log checkpoint witnessed by {k} of 3 provincial units (quorum 2)");
    let html = get(&format!("/v1/bulletins/{n}.html?lang=en")).await;
    assert!(html.contains(&said), "{html}");
    for a in &agents {
        let s = status(a).await;
        assert!(s["log_alarm"].is_null(), "{s}");
    }
    // Offline: `bulletin verify` checks the lines against the registry as of the checkpoint.
    let file = hub.dir.path().join("bulletin.json");
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    hub.stop();
    let out = hub.cli(&["bulletin", "verify", &file.to_string_lossy()]);
    let verified = ok(&out, "bulletin verify");
    assert!(verified.contains(&said), "{verified}");
    // With the policy published before the rotation: the second province's new key counts,
    // because the key the policy lists handed over to it in a signed entry of its chain.
    let out = hub.cli(&[
        "bulletin",
        "verify",
        &file.to_string_lossy(),
        "--witnesses",
        &old_policy.to_string_lossy(),
    ]);
    let verified = ok(&out, "bulletin verify --witnesses");
    assert!(verified.contains("(quorum met)"), "{verified}");
    assert!(
        verified.contains("1 key(s) its witnesses handed over to in their chains counted"),
        "{verified}"
    );
    assert!(verified.contains(&SITES[1].scope.to_string()), "{verified}");
    // The draft policy from the registry holds every province's current line.
    let draft = ok(&hub.cli(&["witnesses", "policy"]), "witnesses policy");
    assert!(draft.contains("DRAFT"), "{draft}");
    assert!(draft.contains(&rotated_line), "{draft}");
    assert!(
        draft.contains(&lines_before[0]) && draft.contains(&lines_before[2]),
        "{draft}"
    );
    assert!(!draft.contains(&lines_before[1]), "{draft}");
    spacesync_shared::witness_policy::Policy::parse(&draft)
        .unwrap_or_else(|e| panic!("{e}\n{draft}"));
}

/// The prefixes every refusal of an evidence file starts with: each names a member of the
/// file, or says the file does not read as one.
const EVIDENCE_REFUSALS: &[&str] = &[
    "not an evidence file",
    "format is",
    "source_key:",
    "entry:",
    "hub_key:",
    "receipt:",
    "checkpoint:",
    "inclusion_proof:",
    "witnesses:",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_files_verify_offline_and_every_changed_byte_is_named() {
    let mut c = Cluster::start(3, 19, FaultPlan::NONE, |_| {}).await;
    let mut works: Vec<Workload> = c.agents.iter().map(|a| Workload::new(a.site)).collect();
    for (a, w) in c.agents.iter().zip(works.iter_mut()) {
        post(a, w, 3).await;
    }
    c.wait_drained(Duration::from_secs(60)).await;
    let origin = origin(&c).await;
    wait_witnessed(&c, &origin).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // While the agent runs, it builds the file (GET /v1/evidence), checked by the CLI.
    let a = &mut c.agents[0];
    let running = dir.path().join("seq-1.evidence");
    let out = a.cli(&[
        "evidence",
        "--seq",
        "1",
        "--out",
        &running.to_string_lossy(),
    ]);
    let said = ok(&out, "evidence through the running agent");
    assert!(said.contains("cosigned by 3 witness(es)"), "{said}");
    let none = a.cli(&[
        "evidence",
        "--seq",
        "99",
        "--out",
        &dir.path().join("y").to_string_lossy(),
    ]);
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("seq 99 is not an entry of this agent"),
        "{none:?}"
    );
    assert!(!dir.path().join("y").exists());
    // The agent stopped: the CLI builds it from the store.
    a.stop();
    let file = dir.path().join("seq-2.evidence");
    let out = a.cli(&["evidence", "--seq", "2", "--out", &file.to_string_lossy()]);
    let said = ok(&out, "evidence");
    assert!(said.contains("cosigned by 3 witness(es)"), "{said}");
    // Written once: the file is not overwritten.
    let again = a.cli(&["evidence", "--seq", "2", "--out", &file.to_string_lossy()]);
    assert!(!again.status.success());
    // A seq the agent does not have.
    let none = a.cli(&[
        "evidence",
        "--seq",
        "99",
        "--out",
        &dir.path().join("x").to_string_lossy(),
    ]);
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("seq 99 is not an entry of this agent"),
        "{none:?}"
    );

    let verify = |path: &std::path::Path| {
        std::process::Command::new(hub_bin())
            .args(["evidence", "verify", &path.to_string_lossy()])
            .env_remove("SPACESYNC_HUB_DATA")
            .current_dir(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    // Genuine: exit 0, no data directory anywhere.
    let good = verify(&file);
    let said = ok(&good, "evidence verify");
    assert!(
        said.starts_with(&format!("ok: seq 2 of source {}", SITES[0].source))
            && said.contains("cosigned by 3 witness(es)"),
        "{said}"
    );
    assert!(!dir.path().join("hub-data").exists());

    // Every byte changed: refused by the verifier, with a message naming what is wrong;
    // every 16th also through the command (non-zero exit, the message on stderr).
    let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{e}"));
    let bad = dir.path().join("changed.evidence");
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        let e = spacesync_shared::evidence::verify(&b)
            .err()
            .unwrap_or_else(|| panic!("byte {i} changed and the file still verifies"));
        let msg = e.to_string();
        assert!(
            EVIDENCE_REFUSALS.iter().any(|p| msg.starts_with(p)),
            "byte {i}: {msg}"
        );
        if i % 16 == 0 {
            std::fs::write(&bad, &b).unwrap_or_else(|e| panic!("{e}"));
            let out = verify(&bad);
            assert!(!out.status.success(), "byte {i}: the command accepted it");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(&msg), "byte {i}: {err} (expected {msg})");
        }
    }
}
