//! Turning what a user types into a store path: a store path, a link to one (a profile,
//! a generation link, `./result`), a flake output, or a link on a remote machine.

use std::path::Path;

use crate::cli::{nix, run};
use crate::command::last_line;
use crate::error::{Error, Result};
use crate::store::Store;

/// Symlink hops before giving up (the kernel's own limit is 40).
const MAX_LINKS: usize = 40;

/// Returns the store path an argument stands for.
///
/// # Errors
/// The argument does not exist, is not in the store, is a derivation, or could not be
/// evaluated or read remotely.
pub fn resolve(store: &Store, arg: &str) -> Result<String> {
    let path = if arg.contains('#') {
        build_flake_output(arg)?
    } else {
        match store {
            Store::Local(local) => follow_links(arg, &local.store_dir)?,
            Store::Remote { url, store_dir } => {
                if arg.starts_with(&format!("{store_dir}/")) {
                    store_path_prefix(arg, store_dir).unwrap_or_else(|| arg.to_owned())
                } else {
                    remote_readlink(url, arg, store_dir)?
                }
            }
        }
    };
    if Path::new(&path).extension().is_some_and(|e| e == "drv") {
        return Err(Error::IsDerivation { path });
    }
    Ok(path)
}

/// The store path (`<store_dir>/<hash>-<name>`) that `p` is or is inside of.
fn store_path_prefix(p: &str, store_dir: &str) -> Option<String> {
    let rest = p.strip_prefix(store_dir)?.strip_prefix('/')?;
    let first = rest.split('/').next().filter(|f| !f.is_empty())?;
    Some(format!("{store_dir}/{first}"))
}

/// Removes `.` and `..` components lexically (`/a/b/../c` → `/a/c`), as the kernel
/// would when following a link whose target is relative.
fn normalize(p: &Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Follows links until a store path. Links name logical store paths, also in a chroot
/// store, so no mapping to real locations is needed.
fn follow_links(arg: &str, store_dir: &str) -> Result<String> {
    let io = |path: &Path, source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut p = std::path::absolute(arg).map_err(|e| io(Path::new(arg), e))?;
    for _ in 0..MAX_LINKS {
        p = normalize(&p);
        let s = p.to_string_lossy().into_owned();
        if let Some(store_path) = store_path_prefix(&s, store_dir) {
            return Ok(store_path);
        }
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    arg: arg.to_owned(),
                });
            }
            Err(e) => return Err(io(&p, e)),
        };
        if !meta.file_type().is_symlink() {
            return Err(Error::NotInStore {
                arg: arg.to_owned(),
                store_dir: store_dir.to_owned(),
            });
        }
        let target = std::fs::read_link(&p).map_err(|e| io(&p, e))?;
        p = if target.is_absolute() {
            target
        } else {
            p.parent().unwrap_or(Path::new("/")).join(target)
        };
    }
    Err(Error::LinkLoop {
        arg: arg.to_owned(),
    })
}

/// Evaluates and builds a flake output (`.#nixosConfigurations.web.config.system.build.toplevel`).
fn build_flake_output(arg: &str) -> Result<String> {
    let mut cmd = nix(None, &["build", "--no-link", "--json"]);
    cmd.arg(arg);
    let out = run(cmd)?;
    let bad = |message: String| Error::Output {
        command: format!("nix build {arg}"),
        message,
    };
    let json: serde_json::Value = serde_json::from_slice(&out).map_err(|e| bad(e.to_string()))?;
    json.get(0)
        .and_then(|b| b.get("outputs"))
        .and_then(|o| o.get("out").or_else(|| o.as_object()?.values().next()))
        .and_then(|p| p.as_str())
        .map(str::to_owned)
        .ok_or_else(|| bad("no output path".to_owned()))
}

/// Quotes a string for a POSIX shell.
/// Quotes a word for a POSIX shell (the remote side of an ssh command line).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Reads a link on the machine behind an `ssh://` or `ssh-ng://` store, with the same
/// ssh options Nix uses (`NIX_SSHOPTS`), through [`crate::ssh::ssh_command`].
fn remote_readlink(url: &str, arg: &str, store_dir: &str) -> Result<String> {
    let host = url
        .strip_prefix("ssh-ng://")
        .or_else(|| url.strip_prefix("ssh://"))
        .map(|h| h.split('?').next().unwrap_or(h))
        .ok_or_else(|| Error::BadUrl {
            url: url.to_owned(),
            reason: format!("{arg} is not a store path, and links can only be read over ssh"),
        })?;
    // A host that starts with `-` would be read by ssh as an option (`-oProxyCommand=…`).
    if !crate::ssh::is_destination(host) {
        return Err(Error::BadUrl {
            url: url.to_owned(),
            reason: "the host name must not be empty or start with '-'".into(),
        });
    }
    // The same ssh as the deploy's: the user's options, a POSIX shell, the path an
    // argument of its own.
    let mut cmd = crate::ssh::ssh_command(
        &crate::ssh::user_sshopts(),
        host,
        r#"readlink -e "$1""#,
        &[arg],
    );
    let out = cmd.output().map_err(|source| Error::Spawn {
        program: "ssh".into(),
        source,
    })?;
    // `readlink -e` says nothing when the path or what it leads to does not exist: name
    // that, not "no error message" (issue 22). ssh's own failures exit 255.
    if out.status.code() == Some(1) && out.stderr.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::RemoteMissing {
            host: host.to_owned(),
            path: arg.to_owned(),
        });
    }
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("ssh {host} readlink -e {arg}"),
            message: last_line(&String::from_utf8_lossy(&out.stderr), || {
                format!("{}, with no error message", out.status)
            }),
        });
    }
    let target = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    store_path_prefix(&target, store_dir).ok_or_else(|| Error::NotInStore {
        arg: format!("{host}:{arg}"),
        store_dir: store_dir.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_normalising() {
        assert_eq!(shell_quote("/x;rm -rf ~"), "'/x;rm -rf ~'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(
            normalize(Path::new("/tmp/l/../store/./x")),
            Path::new("/tmp/store/x")
        );
    }

    #[test]
    fn hosts_that_look_like_options_are_refused() {
        let err = remote_readlink(
            "ssh://-oProxyCommand=touch /tmp/pwn",
            "/run/current-system",
            "/nix/store",
        )
        .unwrap_err();
        assert!(matches!(err, Error::BadUrl { .. }), "{err}");
    }
}
