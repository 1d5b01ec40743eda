//! `pipe` command line: parse, dispatch to the command (`cli/`), turn its outcome into an exit code.

// No unwrap()/expect() in the program: errors from user input become messages.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod cli;

use clap::{CommandFactory, FromArgMatches};
use std::process::ExitCode;

fn main() -> ExitCode {
    // Behave like other Unix filters when the reader of stdout goes away (`pipe summary | head`):
    // end quietly instead of panicking on a failed print.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // clap prints its own usage errors and exits with code 2 (0 for --help and --version).
    let matches = cli::Cli::command().get_matches();
    let cli = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    exit_code(cli.command.run(&matches))
}

/// The exit code of a command's outcome, after printing its error on stderr: 0 on success, 1 for
/// any error.
fn exit_code(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
