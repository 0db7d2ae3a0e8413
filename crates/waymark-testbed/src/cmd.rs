//! Running the external programs the testbed drives (nix, ssh-keygen, ssh).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Runs a command; returns its stdout, or its stderr as the error.
pub fn run(cmd: &mut Command) -> Result<String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Nix {
            program,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes an ed25519 key pair at `path` (and `path.pub`) unless it exists.
pub fn keygen(path: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path))
    .map(drop)
}

/// Waits up to 10 s for an sshd to listen on 127.0.0.1:`port`; the error says `what`
/// did not (with `log`'s text, when given).
pub fn wait_listening(port: u16, what: &str, log: Option<&Path>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let log = log
                .and_then(|l| std::fs::read_to_string(l).ok())
                .unwrap_or_default();
            return Err(Error::Nix {
                program: "sshd".into(),
                stderr: format!("{what} not listening on 127.0.0.1:{port} after 10 s: {log}"),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
