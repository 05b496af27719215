//! `spacesync-agent`: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser;
use spacesync_agent::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::execute(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::from(2)
        }
    }
}
