//! How a command is run on another machine over ssh, for every part of Waymark that does
//! (the store's remote links here, the deploy's sessions): the user's options as Nix
//! reads them, and one invocation that runs a POSIX shell script whatever the user's
//! login shell, its arguments quoted once.

use std::process::{Command, Stdio};

use crate::resolve::shell_quote;

/// The user's ssh options as Nix splits `NIX_SSHOPTS` (on whitespace).
pub fn split_sshopts(nix_sshopts: &str) -> Vec<String> {
    nix_sshopts.split_whitespace().map(str::to_owned).collect()
}

/// The user's ssh options from this process's `NIX_SSHOPTS` (none when it is unset).
pub fn user_sshopts() -> Vec<String> {
    std::env::var("NIX_SSHOPTS")
        .map(|o| split_sshopts(&o))
        .unwrap_or_default()
}

/// Whether ssh would take `destination` for a destination: not empty, and not an
/// option (a host `-oProxyCommand=…` would run a command here).
pub fn is_destination(destination: &str) -> bool {
    !destination.is_empty() && !destination.starts_with('-')
}

/// `ssh OPTS DESTINATION -- sh -c SCRIPT waymark ARGS…`: `script` runs in a POSIX shell
/// whatever the login shell of the user is (fish, nushell), with `args` as its `$1`…;
/// ssh joins its arguments into one command line for the remote shell, so each is
/// quoted once, here. No stdin unless the caller gives one.
pub fn ssh_command(opts: &[String], destination: &str, script: &str, args: &[&str]) -> Command {
    let mut remote = format!("sh -c {} waymark", shell_quote(script));
    for arg in args {
        remote.push(' ');
        remote.push_str(&shell_quote(arg));
    }
    let mut cmd = Command::new("ssh");
    cmd.args(opts)
        .arg(destination)
        .arg("--")
        .arg(remote)
        .stdin(Stdio::null());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_command_line_is_one_quoted_script_and_its_arguments() {
        let cmd = ssh_command(
            &split_sshopts(" -p 2222  -i key "),
            "root@web1",
            "readlink -e \"$1\"",
            &["/run/x y'z"],
        );
        let args: Vec<_> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "-p",
                "2222",
                "-i",
                "key",
                "root@web1",
                "--",
                r#"sh -c 'readlink -e "$1"' waymark '/run/x y'\''z'"#
            ]
        );
        // What the remote shell makes of that line: the script and its argument whole.
        let out = Command::new("sh")
            .arg("-c")
            .arg(args[6].replace("readlink -e", "printf %s"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "/run/x y'z");
        assert!(!is_destination("-oProxyCommand=x") && !is_destination(""));
        assert!(is_destination("root@web1"));
    }
}
