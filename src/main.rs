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
    ExitCode::from(exit_code(cli.command.run(&matches)))
}

/// The exit code of a command's outcome (the table of [`cli::EXIT_CODES`]), after printing its error
/// on stderr: 0 when every input was used, 3 when files inside folders were skipped, 1 for any
/// error (clap's usage errors exit with 2 before a command runs).
fn exit_code(outcome: anyhow::Result<cli::Outcome>) -> u8 {
    match outcome {
        Ok(cli::Outcome::Done | cli::Outcome::Skipped(0)) => 0,
        Ok(cli::Outcome::Skipped(_)) => 3,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::exit_code;
    use crate::cli::Outcome;

    #[test]
    fn success_exits_0_skipped_files_3_and_any_error_1() {
        assert_eq!(exit_code(Ok(Outcome::Done)), 0);
        assert_eq!(exit_code(Ok(Outcome::Skipped(0))), 0);
        assert_eq!(exit_code(Ok(Outcome::Skipped(2))), 3);
        assert_eq!(exit_code(Err(anyhow::anyhow!("no such run"))), 1);
        assert_eq!(exit_code(Err(pipe::Error::Usage("bad".into()).into())), 1);
    }
}
