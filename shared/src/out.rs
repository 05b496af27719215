//! Standard output for the command-line tools. `println!` panics when the reader has gone
//! (`spacesync-hub bulletin list --json | head`); these end the process quietly instead, as
//! a Unix tool killed by `SIGPIPE` would (status 141), and name any other write failure
//! (a full disk under `> file`) on standard error with status 1.

use std::fmt;
use std::io::{self, Write};

/// Writes `args` to standard output; a reader that went away ends the process quietly.
pub fn print(args: fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.flush());
    if let Err(e) = written {
        drop(out);
        exit_on(&e);
    }
}

/// The exit code of a process ended by `SIGPIPE`, as shells report it.
pub const BROKEN_PIPE_STATUS: i32 = 128 + 13;

fn exit_on(e: &io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(BROKEN_PIPE_STATUS);
    }
    eprintln!(
        "error: writing to standard output failed: {e}; check where the output goes (a full disk, a closed file)"
    );
    std::process::exit(1);
}

/// `print!` for the command-line tools (see [`print`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::print(format_args!($($arg)*))
    };
}

/// `println!` for the command-line tools (see [`print`]).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::out::print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
