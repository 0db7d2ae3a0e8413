//! SSH to the hosts: one multiplexed master connection per host, reused by every
//! command and by Nix's own ssh (through `NIX_SSHOPTS`), plus deliberately fresh
//! connections where proving a new login works is the point (the confirmation).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::Error;

/// `user@address` of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The host's fleet name.
    pub name: String,
    /// SSH user.
    pub user: String,
    /// Address (a name the ssh configuration may resolve further).
    pub address: String,
}

impl Endpoint {
    /// `user@address`.
    pub fn destination(&self) -> String {
        format!("{}@{}", self.user, self.address)
    }

    /// The host's store as Nix names it.
    pub fn store_url(&self) -> String {
        format!("ssh-ng://{}", self.destination())
    }
}

/// How ssh is run: the user's options (`NIX_SSHOPTS`, as Nix reads them) and the
/// directory of the master connections' sockets.
#[derive(Debug)]
pub struct Ssh {
    user_opts: Vec<String>,
    control_dir: PathBuf,
    /// Master connections by destination, opened once each: sessions never open one
    /// themselves, so two can never race for a socket (the loser would linger).
    masters: Mutex<BTreeMap<String, Arc<MasterSlot>>>,
}

/// One master connection: opened once, or why it could not be.
type MasterSlot = OnceLock<Result<(), String>>;

/// A remote command's result.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Exit status (255: ssh itself failed).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Reply {
    /// The reply of a command that could not be run at all (as ssh's own failure, 255).
    pub fn lost(error: &impl std::fmt::Display) -> Self {
        Self {
            code: 255,
            stdout: String::new(),
            stderr: error.to_string(),
        }
    }

    /// The last non-empty stderr line, for one-line reports.
    pub fn last_error(&self) -> String {
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no error message")
            .trim()
            .to_owned()
    }
}

fn ssh_error(e: &std::io::Error) -> Error {
    Error::Spawn {
        program: "ssh".into(),
        message: e.to_string(),
    }
}

fn reply(out: &Output) -> Reply {
    Reply {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Ssh {
    /// Options from `nix_sshopts` (whitespace-separated, as Nix splits `NIX_SSHOPTS`);
    /// master sockets in `control_dir` (kept short: socket paths have a length limit).
    pub fn new(nix_sshopts: &str, control_dir: &Path) -> Self {
        Self {
            user_opts: nix_sshopts.split_whitespace().map(str::to_owned).collect(),
            control_dir: control_dir.to_owned(),
            masters: Mutex::new(BTreeMap::new()),
        }
    }

    /// Options of sessions (`ControlMaster=no`: they use the master when it is there)
    /// or of the master itself (`yes`). The user's options come first and win.
    fn opts(&self, control_master: &str) -> Vec<String> {
        let mut o = self.user_opts.clone();
        o.extend(
            [
                format!("ControlMaster={control_master}"),
                format!("ControlPath={}/%C", self.control_dir.display()),
                "ControlPersist=60".to_owned(),
                "ServerAliveInterval=5".to_owned(),
                "ServerAliveCountMax=3".to_owned(),
            ]
            .into_iter()
            .flat_map(|v| ["-o".to_owned(), v]),
        );
        o
    }

    /// `NIX_SSHOPTS` for nix commands, so `nix copy` rides the master connections.
    pub fn nix_sshopts(&self) -> String {
        self.opts("no").join(" ")
    }

    /// Runs `remote` with `sh -c`: the scripts are POSIX shell whatever the login shell
    /// of the user is (fish, nushell).
    fn command(opts: &[String], host: &Endpoint, remote: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(opts)
            .arg(host.destination())
            .arg("--")
            .arg(format!("sh -c {}", waymark_store::shell_quote(remote)))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a shell command line on `host` over its master connection.
    pub fn run(&self, host: &Endpoint, remote: &str) -> Result<Reply, Error> {
        self.run_with_input(host, remote, None)
    }

    /// Same, feeding `input` to the command's stdin.
    pub fn run_with_input(
        &self,
        host: &Endpoint,
        remote: &str,
        input: Option<&[u8]>,
    ) -> Result<Reply, Error> {
        let cmd = Self::command(&self.opts("no"), host, remote);
        output(cmd, input)
    }

    /// Runs a command over a NEW connection (no multiplexing), with a connect timeout.
    pub fn run_fresh(
        &self,
        host: &Endpoint,
        remote: &str,
        input: Option<&[u8]>,
        connect_timeout: Duration,
    ) -> Result<Reply, Error> {
        // Ours first: ssh keeps the first value of an option, and a user's own
        // ControlMaster/ControlPath must not turn this into a reused connection.
        let mut opts: Vec<String> = [
            "ControlMaster=no".to_owned(),
            "ControlPath=none".to_owned(),
            format!("ConnectTimeout={}", connect_timeout.as_secs().max(1)),
            "ServerAliveInterval=5".to_owned(),
            "ServerAliveCountMax=3".to_owned(),
        ]
        .into_iter()
        .flat_map(|v| ["-o".to_owned(), v])
        .collect();
        opts.extend(self.user_opts.iter().cloned());
        output(Self::command(&opts, host, remote), input)
    }

    /// Opens the master connection to `host` once (no session, so no login shell
    /// runs), returning once it is authenticated and in the background. True when this
    /// call opened it; the error when it could not be opened.
    pub fn ensure_master(&self, host: &Endpoint) -> (bool, Result<(), String>) {
        let once = Arc::clone(
            self.masters
                .lock()
                .expect("not poisoned")
                .entry(host.destination())
                .or_default(),
        );
        let mut opened = false;
        let result = once.get_or_init(|| {
            opened = true;
            self.open_master(host).map_err(|e| e.to_string())
        });
        (opened, result.clone())
    }

    /// Whether the master connection to `host` was opened (or tried).
    pub fn is_open(&self, host: &Endpoint) -> bool {
        self.masters
            .lock()
            .expect("not poisoned")
            .get(&host.destination())
            .is_some_and(|o| o.get().is_some())
    }

    /// Closes every master connection opened.
    pub fn close_all(&self) {
        let masters = std::mem::take(&mut *self.masters.lock().expect("not poisoned"));
        for dest in masters.keys() {
            let mut cmd = Command::new("ssh");
            cmd.args(self.opts("no"))
                .args(["-O", "exit"])
                .arg(dest)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = cmd.status();
        }
    }

    /// Opens the master connection to `host` (no session, so no login shell runs),
    /// returning once it is authenticated and in the background.
    fn open_master(&self, host: &Endpoint) -> Result<(), Error> {
        let mut cmd = Command::new("ssh");
        cmd.args(self.opts("yes"))
            .args(["-N", "-f"])
            .arg(host.destination())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let out = cmd.output().map_err(|e| ssh_error(&e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Spawn {
                program: "ssh".into(),
                message: reply(&out).last_error(),
            })
        }
    }

    /// Starts `script` on `host` over its master connection, held until [`Held::go`]:
    /// the session's setup (the login shell starting) overlaps with other work, and the
    /// script runs the moment it may.
    pub fn hold(&self, host: &Endpoint, script: &str) -> Result<Held, Error> {
        let remote = format!(
            "IFS= read -r waymark_go || exit 0\n[ \"$waymark_go\" = go ] || exit 0\n{script}"
        );
        let mut cmd = Self::command(&self.opts("no"), host, &remote);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|e| ssh_error(&e))?;
        Ok(Held { child: Some(child) })
    }
}

fn output(mut cmd: Command, input: Option<&[u8]>) -> Result<Reply, Error> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(|e| ssh_error(&e))?;
    if let Some(bytes) = input {
        let mut stdin = child.stdin.take().expect("piped");
        // A remote that exits early closes the pipe; its status says why.
        let _ = stdin.write_all(bytes);
    }
    child
        .wait_with_output()
        .map(|o| reply(&o))
        .map_err(|e| ssh_error(&e))
}

/// A remote script waiting for its go (see [`Ssh::hold`]). Dropped without a go, it
/// ends without running.
#[derive(Debug)]
pub struct Held {
    child: Option<std::process::Child>,
}

impl Held {
    /// Lets the script run, with `input` on its stdin, and waits for it.
    pub fn go(mut self, input: Option<&[u8]>) -> Result<Reply, Error> {
        let mut child = self.child.take().expect("held until now");
        if let Some(mut stdin) = child.stdin.take() {
            // A session that already ended closes the pipe; its status says why.
            let _ = stdin.write_all(b"go\n");
            let _ = stdin.write_all(input.unwrap_or_default());
        }
        child
            .wait_with_output()
            .map(|o| reply(&o))
            .map_err(|e| ssh_error(&e))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}
