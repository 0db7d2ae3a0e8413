//! How Waymark runs Nix and reads a failed program's words: one builder for every
//! `nix` command, one reading of stderr.

use std::process::Command;

/// `nix` with the experimental features Waymark relies on (`nix-command`, `flakes`):
/// Nix 2.8 and later, and Lix, accept them whether or not they are on already.
pub fn nix_command() -> Command {
    let mut cmd = Command::new("nix");
    cmd.args(["--extra-experimental-features", "nix-command flakes"]);
    cmd
}

/// The last non-empty line of what a program printed on stderr, for a one-line
/// report; `otherwise()` when it printed nothing (say how it ended instead: "no error
/// message" alone gives nothing to act on).
pub fn last_line(stderr: &str, otherwise: impl FnOnce() -> String) -> String {
    stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map_or_else(otherwise, str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_words_or_how_it_ended() {
        assert_eq!(
            last_line("warning: x\nerror: it broke  \n\n", || "exit 1".into()),
            "error: it broke"
        );
        assert_eq!(
            last_line(" \n", || "exit status: 1".into()),
            "exit status: 1"
        );
    }

    #[test]
    fn every_nix_command_has_the_features() {
        let cmd = nix_command();
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            ["--extra-experimental-features", "nix-command flakes"]
        );
    }
}
