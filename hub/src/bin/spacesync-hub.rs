//! `spacesync-hub`: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser;
use spacesync_hub::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::execute(cli) {
        Ok(code) => code,
        Err(e) => {
            // Most errors wrap their source transparently; err_chain adds only what is
            // not said yet.
            eprintln!("error: {}", spacesync_shared::err_chain(&e));
            ExitCode::FAILURE
        }
    }
}
