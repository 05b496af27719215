//! `spacesync-agent`: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser;
use spacesync_agent::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::execute(cli) {
        Ok(code) => code,
        Err(e) => {
            // The error's own message already includes its sources' (most wrap one
            // transparently); err_chain adds only what is not said yet.
            eprintln!("error: {}", spacesync_shared::err_chain(&e));
            ExitCode::from(2)
        }
    }
}
