//! `waymark`: gated NixOS deploys. The commands: `deploy` (hosts through the gates, and
//! `deploy rollback`), `converge` (keeps hosts on their release branches; its host side
//! is `host-watch`), `diff` (closure diff with root causes), `fleet` (the fleet's
//! declarations and deploy order), `known-good` (marks: GC-rooted closures with their
//! evidence), `release` (tags and fast-forward-only branches), `serve` (the deployment-sync queue
//! service) and `demo` (a throw-away
//! local fleet, only with the `demo` cargo feature: it links the test lab, which the
//! installed program does not). Each is a module of [`commands`]; this file maps errors
//! to the exit statuses ([`ExitStatus`]) and prints them as one line on stderr.

mod commands;
mod printer;
mod render;

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

/// Exit statuses, documented in the README: 0 success; 1 a valid negative answer or a
/// refusal (`diff --exit-code` found differences, no previous mark, refusing to unmark
/// the latest, a tag that exists); 2 an error (bad input, unreadable store, usage);
/// 3 a release branch update that is not a fast-forward; 4 a deploy that could not
/// restore or verify a host (needs a human). `converge` has its own (docs/converge.md),
/// and a run ended by signal N exits 128 + N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Success.
    Success,
    /// A valid negative answer or a refusal.
    Negative,
    /// An error.
    Error,
    /// Not a fast-forward.
    NonFastForward,
    /// A deploy could not restore a host, or verify it: needs a human.
    NeedsHuman,
    /// A status of its own: `converge`'s, or 128 + a signal.
    Code(u8),
}

impl ExitStatus {
    /// The process's exit status.
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Negative => 1,
            Self::Error => 2,
            Self::NonFastForward => 3,
            Self::NeedsHuman => 4,
            Self::Code(c) => c,
        }
    }
}

/// The one place that maps error kinds to exit statuses.
fn exit_status(err: &anyhow::Error) -> ExitStatus {
    use waymark_known_good::Error as Kg;
    use waymark_release::Error as Rel;
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<Kg>()
            && matches!(e, Kg::RefuseLatest { .. } | Kg::NoPrevious { .. })
        {
            return ExitStatus::Negative;
        }
        if let Some(e) = cause.downcast_ref::<Rel>() {
            return match e {
                Rel::NonFastForward { .. } | Rel::RemoteAhead { .. } => ExitStatus::NonFastForward,
                Rel::TagExists { .. } => ExitStatus::Negative,
                _ => ExitStatus::Error,
            };
        }
    }
    ExitStatus::Error
}

fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    match commands::run(cli) {
        Ok(status) => ExitCode::from(status.code()),
        Err(err) => {
            // One line that names the problem, with its causes after colons.
            let mut msg = format!("error: {err}");
            for cause in err.chain().skip(1) {
                let _ = write!(msg, ": {cause}");
            }
            // Still one line when a cause carries a name or a message from outside with
            // a newline or another control character in it (issue 22).
            let msg: String = msg
                .chars()
                .flat_map(|c| match c {
                    '\n' => "\\n".chars().collect::<Vec<_>>(),
                    c if c.is_control() => c.escape_default().collect(),
                    c => vec![c],
                })
                .collect();
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{msg}");
            }
            ExitCode::from(exit_status(&err).code())
        }
    }
}
