//! `waymark`: gated NixOS deploys. Today: `waymark diff` (closure diff with root causes)
//! and `waymark demo`.

mod commands;
mod printer;
mod render;

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

/// Exit statuses, documented in the README: 0 success; 1 a valid negative answer
/// (`diff --exit-code` found differences); 2 an error (bad input, unreadable store, usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Success.
    Success = 0,
    /// A valid negative answer.
    Negative = 1,
    /// An error.
    Error = 2,
}

fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    match commands::run(cli) {
        Ok(status) => ExitCode::from(status as u8),
        Err(err) => {
            // One line that names the problem, with its causes after colons.
            let mut msg = format!("error: {err}");
            for cause in err.chain().skip(1) {
                let _ = write!(msg, ": {cause}");
            }
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{msg}");
            }
            ExitCode::from(ExitStatus::Error as u8)
        }
    }
}
