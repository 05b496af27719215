//! `spacesync-bench`: parses the command line and hands it to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use spacesync_bench::agent::{self, AgentArgs};
use spacesync_bench::drain::{self, DrainArgs};
use spacesync_bench::idle::{self, IdleArgs};
use spacesync_bench::ingest::{self, IngestArgs};
use spacesync_bench::presign;
use spacesync_bench::restart::{self, RestartArgs};
use spacesync_bench::scale::{self, ScaleArgs};

#[derive(Parser)]
#[command(
    name = "spacesync-bench",
    about = "Load generator and measurement harness: each command ends with one `cmd: key=value …` line."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The real hub over loopback HTTP, next to same-run limits and the PostgreSQL peer.
    Ingest(IngestArgs),
    /// The real agent's intake (hub unreachable), next to same-run signing on one core.
    Agent(AgentArgs),
    /// A hub holding N schools' weekly snapshots: memory, disk, restart, reads, bulletin.
    Scale(ScaleArgs),
    /// Agents that buffered while the hub was down, then the hub starts: time until every
    /// agent has delivered everything.
    Drain(DrainArgs),
    /// An idle agent's resident memory with a large buffer (hub unreachable), after its
    /// intake and after a restart.
    #[command(name = "agent-idle")]
    AgentIdle(IdleArgs),
    /// An existing hub data directory: spawn to `/readyz`, resident memory, `/v1/progress`,
    /// the clean stop, `--runs` times (warm, or `--cold` after dropping the page cache).
    Restart(RestartArgs),
    /// Signs a workload into NDJSON batch bodies (run by the other commands as a separate
    /// process).
    #[command(hide = true)]
    Presign {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// The workload shape, as JSON.
        #[arg(long)]
        shape: String,
        /// Entries per batch.
        #[arg(long)]
        batch: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let rt = || tokio::runtime::Runtime::new().context("starting the async runtime");
    let report = match cli.cmd {
        Cmd::Presign { out, shape, batch } => {
            let shape = serde_json::from_str(&shape).context("--shape")?;
            return presign::run(shape, batch, &out);
        }
        Cmd::Ingest(a) => rt()?.block_on(ingest::run(&a))?,
        Cmd::Agent(a) => rt()?.block_on(agent::run(&a))?,
        Cmd::Scale(a) => rt()?.block_on(scale::run(&a))?,
        Cmd::Drain(a) => rt()?.block_on(drain::run(&a))?,
        Cmd::AgentIdle(a) => rt()?.block_on(idle::run(&a))?,
        Cmd::Restart(a) => rt()?.block_on(restart::run(&a))?,
    };
    println!("{}", report.line());
    Ok(())
}
