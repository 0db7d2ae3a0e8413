//! SSH to the hosts: one multiplexed master connection per host, reused by every
//! command and by Nix's own ssh (through `NIX_SSHOPTS`), plus deliberately fresh
//! connections where proving a new login works is the point (the confirmation).
//!
//! `nix copy` reaches a host's store through its nix-daemon socket, forwarded over the
//! master connection (in the control directory, which only this user may enter), where
//! the host runs a daemon: no login session (and no login shell) starts for it. A
//! destination is the forwarded socket itself (`unix://`). For a source Nix asks for
//! `ssh DESTINATION … nix-daemon --stdio`; a shim named `ssh`, first in the nix
//! commands' `PATH`, relays that to the forwarded socket. The daemon sees the same user,
//! with the same trust, as `nix-daemon --stdio` would.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use waymark_store::shell_quote;

use crate::Error;
use crate::processes::Processes;

mod mux;
mod session;

pub use mux::{end_master, relay};
pub use session::{Held, Talk};

/// `user@address` of a host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    /// The host's fleet name.
    pub name: String,
    /// SSH user.
    pub user: String,
    /// Address (a name the ssh configuration may resolve further).
    pub address: String,
}

impl Endpoint {
    /// Where the fleet's host `name` is reached.
    pub fn of(fleet: &waymark_fleet::Fleet, name: &str) -> Option<Self> {
        fleet.hosts.get(name).map(|h| Self {
            name: name.to_owned(),
            user: h.ssh_user.clone(),
            address: h.target_host.clone(),
        })
    }

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
    /// Master connections started ahead ([`Ssh::prewarm`]), not yet waited for.
    pending: Mutex<BTreeMap<String, std::process::Child>>,
    /// Whether the masters forward the hosts' nix-daemon sockets for `nix copy`
    /// ([`Ssh::with_daemon_relay`]).
    relay: bool,
    /// Destinations whose master connection a host's deploy has counted.
    claimed: Mutex<std::collections::BTreeSet<String>>,
    /// Sessions started ahead ([`Ssh::hold_ahead`]): destination, script, and where
    /// the session comes once it is set up (nothing comes if it could not be).
    ahead: Mutex<Vec<(String, String, std::sync::mpsc::Receiver<Held>)>>,
    /// How many of the works [`Ssh::hold_ahead`] returned, and of the masters being
    /// opened, are under way: the masters end only once none is, so none can open a
    /// connection that outlives the run (a master still authenticating has no socket
    /// to be told to end by).
    under_way: Mutex<usize>,
    under_way_done: Condvar,
    /// Every ssh started, and the deploy's nix commands: ended by [`Ssh::close_all`],
    /// after which no master opens, no work ahead starts, and no process starts.
    processes: Arc<Processes>,
    /// Master connections authenticating now, and how many may at once
    /// ([`Ssh::with_handshake_limit`]): a run opens no more together than it deploys
    /// hosts together (a bastion's sshd drops those beyond its `MaxStartups`).
    handshakes: Mutex<usize>,
    handshake_done: Condvar,
    max_handshakes: usize,
    /// [`REAPER`], whose stdin ends when this does or the process dies
    /// ([`Ssh::with_reaper`]).
    reaper: Option<std::process::Child>,
    /// Fresh connections started, for their sockets' names.
    fresh: std::sync::atomic::AtomicUsize,
}

/// Ends the masters left in the control directory once the run's process is gone
/// (see its header).
const REAPER: &str = include_str!("reaper.sh");

/// How [`Ssh::close_all`] ended the master connections.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// Told to end over their sockets (no process started).
    pub in_process: usize,
    /// Told to end with `ssh -O exit` (their sockets could not be used).
    pub by_ssh: usize,
}

/// How long the run's end waits for an ssh it told to stop before killing it: ssh ends
/// at once at SIGTERM, and its cleanup is local.
const STOPPED_GRACE: Duration = Duration::from_secs(2);

/// Where a host's nix-daemon listens (NixOS, and every multi-user Nix install).
pub const DAEMON_SOCKET: &str = "/nix/var/nix/daemon-socket/socket";

/// One master connection: opened once, or why it could not be.
type MasterSlot = OnceLock<Result<(), Error>>;

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

    /// The last non-empty stderr line, for one-line reports; what the exit status
    /// says when there is none (ssh at `LogLevel=QUIET` says nothing of a refused
    /// connection).
    pub fn last_error(&self) -> String {
        waymark_store::last_line(&self.stderr, || match self.code {
            255 => "ssh failed with no message (exit 255): the host refused or dropped the \
                    connection, or sshd is not running there"
                .to_owned(),
            code => format!("exit {code}, with no error message"),
        })
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
            user_opts: waymark_store::split_sshopts(nix_sshopts),
            control_dir: control_dir.to_owned(),
            masters: Mutex::new(BTreeMap::new()),
            pending: Mutex::new(BTreeMap::new()),
            relay: false,
            claimed: Mutex::new(std::collections::BTreeSet::new()),
            ahead: Mutex::new(Vec::new()),
            under_way: Mutex::new(0),
            under_way_done: Condvar::new(),
            processes: Arc::default(),
            handshakes: Mutex::new(0),
            handshake_done: Condvar::new(),
            max_handshakes: usize::MAX,
            reaper: None,
            fresh: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Ends the masters and removes the control directory even when this process is
    /// killed (SIGKILL runs no code of ours): a watcher ([`REAPER`]) does it once its
    /// stdin, held here, ends.
    ///
    /// # Errors
    /// `sh` cannot be started.
    pub fn with_reaper(mut self) -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let child = Command::new("sh")
            .arg("-c")
            .arg(REAPER)
            .arg("waymark-reaper")
            .arg(&self.control_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        self.reaper = Some(child);
        Ok(self)
    }

    /// At most `n` (≥ 1) master connections authenticate at once; the others wait.
    #[must_use]
    pub fn with_handshake_limit(mut self, n: usize) -> Self {
        self.max_handshakes = n.max(1);
        self
    }

    /// Takes a handshake's place, waiting for one (`false`: the run is ending).
    fn take_handshake(&self, wait: bool) -> bool {
        let mut n = self.handshakes.lock().expect("not poisoned");
        loop {
            if self.closing() {
                return false;
            }
            if *n < self.max_handshakes {
                *n += 1;
                return true;
            }
            if !wait {
                return false;
            }
            n = self.handshake_done.wait(n).expect("not poisoned");
        }
    }

    fn give_handshake(&self) {
        *self.handshakes.lock().expect("not poisoned") -= 1;
        self.handshake_done.notify_all();
    }

    /// True the first time it is asked for `host` in this run: whoever asks first
    /// counts its master connection as one it opened.
    pub fn claim(&self, host: &Endpoint) -> bool {
        self.claimed
            .lock()
            .expect("not poisoned")
            .insert(host.destination())
    }

    /// Lets `nix copy` talk to the hosts' nix-daemons through their sockets, forwarded
    /// over the master connections, once [`Ssh::use_daemon`] says a host runs one.
    /// `relay` is the command that relays its stdin and stdout to the socket given as
    /// its last argument (`waymark nix-daemon-relay`). Writes the shim in the control
    /// directory.
    pub fn with_daemon_relay(mut self, relay: &[String]) -> std::io::Result<Self> {
        let bin = self.control_dir.join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::create_dir_all(self.control_dir.join("daemon"))?;
        let relay: Vec<String> = relay.iter().map(|a| shell_quote(a)).collect();
        let shim = format!(
            r#"#!/bin/sh
# `ssh` for one deploy's nix commands. Nix runs `ssh DESTINATION ... nix-daemon --stdio`
# for an ssh-ng:// store: where daemon/DESTINATION names the host's forwarded nix-daemon
# socket, Nix talks to the daemon through it and no login session starts on the host.
for last; do :; done
case "$last" in
*--stdio)
  if [ -f {daemons}/"$1" ] && IFS= read -r socket < {daemons}/"$1"; then
    exec {relay} "$socket"
  fi ;;
esac
PATH=${{PATH#{bin}:}} exec ssh "$@"
"#,
            daemons = shell_quote(&self.control_dir.join("daemon").display().to_string()),
            relay = relay.join(" "),
            bin = shell_quote(&bin.display().to_string()),
        );
        let path = bin.join("ssh");
        std::fs::write(&path, shim)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        self.relay = true;
        Ok(self)
    }

    /// The local end of `host`'s forwarded nix-daemon socket (short: socket paths are
    /// limited to about 100 bytes).
    fn daemon_forward(&self, host: &Endpoint) -> PathBuf {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        host.destination().hash(&mut h);
        self.control_dir.join(format!("{:016x}.nd", h.finish()))
    }

    fn daemon_marker(&self, host: &Endpoint) -> Option<PathBuf> {
        let dest = host.destination();
        (self.relay && !dest.contains('/') && !dest.starts_with('.'))
            .then(|| self.control_dir.join("daemon").join(dest))
    }

    /// `host` runs a nix-daemon: `nix copy` to or from it goes through its socket.
    pub fn use_daemon(&self, host: &Endpoint) {
        if let Some(marker) = self.daemon_marker(host) {
            let _ = std::fs::write(marker, format!("{}\n", self.daemon_forward(host).display()));
        }
    }

    /// `host`'s store as the destination of a `nix copy`: its forwarded nix-daemon
    /// socket itself where it has one (no shim, no relay: a daemon store takes paths
    /// through its protocol alone), else `ssh-ng://`. Never a source: Nix reads a
    /// `unix://` store's files from the local disk.
    pub fn destination_store_url(&self, host: &Endpoint) -> String {
        match self.daemon_marker(host) {
            Some(marker) if marker.exists() => {
                format!("unix://{}", self.daemon_forward(host).display())
            }
            _ => host.store_url(),
        }
    }

    /// Back to `nix-daemon --stdio` sessions for these hosts (their sockets could not
    /// be reached: forwarding refused). True when any of them used its socket.
    pub fn forget_daemons(&self, hosts: &[&Endpoint]) -> bool {
        // Every marker goes, not only up to the first.
        let removed: Vec<bool> = hosts
            .iter()
            .filter_map(|h| self.daemon_marker(h))
            .map(|m| std::fs::remove_file(m).is_ok())
            .collect();
        removed.contains(&true)
    }

    /// Sets up a nix command to reach the hosts: `NIX_SSHOPTS` (the master
    /// connections) and, with the daemon relay, the shim first in `PATH`.
    pub fn nix_env(&self, cmd: &mut Command) {
        cmd.env("NIX_SSHOPTS", self.nix_sshopts());
        if self.relay {
            let mut path = std::ffi::OsString::from(self.control_dir.join("bin"));
            if let Some(rest) = std::env::var_os("PATH") {
                path.push(":");
                path.push(rest);
            }
            cmd.env("PATH", path);
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
                // A host that does not answer fails its deploy rather than hanging it
                // (and, started ahead, the run's end).
                "ConnectTimeout=15".to_owned(),
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

    /// Runs `remote` with `sh -c` ([`waymark_store::ssh_command`], the store's ssh too):
    /// the scripts are POSIX shell whatever the login shell of the user is.
    fn command(opts: &[String], host: &Endpoint, remote: &str) -> Command {
        waymark_store::ssh_command(opts, &host.destination(), remote, &[])
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
        self.refuse_when_closing()?;
        let cmd = Self::command(&self.opts("no"), host, remote);
        output(&self.processes, cmd, input)
    }

    /// Once the run is ending, no ssh starts: a session whose master has ended would
    /// open a connection of its own.
    fn refuse_when_closing(&self) -> Result<(), Error> {
        if self.closing() {
            return Err(Error::Closing);
        }
        Ok(())
    }

    fn closing(&self) -> bool {
        self.processes.is_ending()
    }

    /// The run's processes: the deploy's nix commands start among them, so the run's
    /// end stops them too.
    pub fn processes(&self) -> &Processes {
        &self.processes
    }

    /// Runs a command over a NEW connection (no multiplexing), with a connect timeout.
    pub fn run_fresh(
        &self,
        host: &Endpoint,
        remote: &str,
        input: Option<&[u8]>,
        connect_timeout: Duration,
    ) -> Result<Reply, Error> {
        self.refuse_when_closing()?;
        // Ours first: ssh keeps the first value of an option, and a user's own
        // ControlMaster/ControlPath must not turn this into a reused connection. It is a
        // master of its own (a new connection all the same, ended with its command),
        // with a socket in the control directory, so that the run's end, or the reaper
        // after a SIGKILL, ends it like the others.
        let n = self
            .fresh
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut opts: Vec<String> = [
            "ControlMaster=yes".to_owned(),
            format!("ControlPath={}/fresh-{n}", self.control_dir.display()),
            "ControlPersist=no".to_owned(),
            format!("ConnectTimeout={}", connect_timeout.as_secs().max(1)),
            "ServerAliveInterval=5".to_owned(),
            "ServerAliveCountMax=3".to_owned(),
        ]
        .into_iter()
        .flat_map(|v| ["-o".to_owned(), v])
        .collect();
        opts.extend(self.user_opts.iter().cloned());
        output(&self.processes, Self::command(&opts, host, remote), input)
    }

    /// Opens the master connection to `host` once (no session, so no login shell
    /// runs), returning once it is authenticated and in the background; the error when
    /// it could not be opened.
    ///
    /// # Errors
    /// The master could not be opened (ssh's last word), or the run is ending.
    pub fn ensure_master(&self, host: &Endpoint) -> Result<(), Error> {
        let once = {
            let mut masters = self.masters.lock().expect("not poisoned");
            // Checked under the lock `close_all` sets it under: a master is either in
            // the map it ends, or never opened.
            if self.closing() {
                return Err(Error::Closing);
            }
            // Counted before the lock goes: `close_all` waits for it.
            *self.under_way.lock().expect("not poisoned") += 1;
            Arc::clone(masters.entry(host.destination()).or_default())
        };
        let _done = UnderWay(self);
        once.get_or_init(|| self.open_master(host)).clone()
    }

    /// Whether the master connection to `host` was opened (or tried).
    pub fn is_open(&self, host: &Endpoint) -> bool {
        self.masters
            .lock()
            .expect("not poisoned")
            .get(&host.destination())
            .is_some_and(|o| o.get().is_some())
    }

    /// Starts opening the master connection to `host` without waiting: the handshake
    /// overlaps with other work (the flake's evaluation), and [`Ssh::ensure_master`]
    /// waits for it. A destination that turns out not to be needed is closed at the end.
    pub fn prewarm(&self, host: &Endpoint) {
        let mut pending = self.pending.lock().expect("not poisoned");
        // Beyond the handshake limit, [`Ssh::ensure_master`] opens it in its turn.
        if pending.contains_key(&host.destination())
            || self.is_open(host)
            || !self.take_handshake(false)
        {
            return;
        }
        match self.processes.spawn(&mut self.master_command(host)) {
            Ok(child) => {
                pending.insert(host.destination(), child);
            }
            Err(_) => self.give_handshake(),
        }
    }

    /// Promises `script` on `host`, held ([`Ssh::hold`]), to whoever asks for the same
    /// script there, and returns the work of keeping the promise, for a thread: open the
    /// master connection, start the session. So sessions are set up while other work
    /// goes on (the flake's evaluation, the build), and [`Ssh::hold`] waits for one
    /// under way rather than starting another. One not asked for ends unrun at the end;
    /// work not yet started by then does nothing.
    #[must_use = "the promise is kept only by running the work returned"]
    pub fn hold_ahead(&self, host: Endpoint, script: &str) -> impl FnOnce() + Send + '_ {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.ahead
            .lock()
            .expect("not poisoned")
            .push((host.destination(), script.to_owned(), rx));
        let script = script.to_owned();
        move || {
            {
                let mut running = self.under_way.lock().expect("not poisoned");
                if self.closing() {
                    return;
                }
                *running += 1;
            }
            let _done = UnderWay(self);
            if self.ensure_master(&host).is_ok()
                && let Ok(held) = self.hold_now(&host, &script)
            {
                // Nobody waits any more (the run is closing): the session just ends.
                let _ = tx.send(held);
            }
        }
    }

    /// Closes every master connection opened (or started ahead), after the sessions
    /// started ahead and never used; returns how many masters were told to end
    /// in-process and how many with `ssh -O exit`.
    pub fn close_all(&self) -> Closed {
        {
            let _masters = self.masters.lock().expect("not poisoned");
            // Masters still authenticating stop too: `ConnectTimeout` does not bound
            // the key exchange, and a host that stalls there would hold the run's end.
            self.processes.end();
        }
        // Masters waiting for a handshake's place give up.
        drop(self.handshakes.lock().expect("not poisoned"));
        self.handshake_done.notify_all();
        // Unused sessions end as their promises go; work under way stops at its next
        // step (no new master) and is waited for, as are masters being opened.
        std::mem::take(&mut *self.ahead.lock().expect("not poisoned"));
        let running = self.under_way.lock().expect("not poisoned");
        drop(
            self.under_way_done
                .wait_while(running, |n| *n > 0)
                .expect("not poisoned"),
        );
        let mut opened: Vec<String> =
            std::mem::take(&mut *self.masters.lock().expect("not poisoned"))
                .into_iter()
                .filter(|(_, slot)| slot.get().is_some_and(Result::is_ok))
                .map(|(dest, _)| dest)
                .collect();
        for (dest, child) in std::mem::take(&mut *self.pending.lock().expect("not poisoned")) {
            let out = self.processes.wait_with_output(child);
            self.give_handshake();
            if out.is_ok_and(|o| o.status.success()) {
                opened.push(dest);
            }
        }
        // Sessions stopped while their thread was elsewhere: none outlives the run.
        self.processes.wait_stopped(STOPPED_GRACE);
        // The masters are the control directory's sockets, unless the user's options put
        // them elsewhere: each is told to end in-process; `ssh -O exit` per host is left
        // for when that cannot be done. A master with no socket left has ended already
        // (idle past ControlPersist, its host gone).
        let elsewhere = self
            .user_opts
            .iter()
            .any(|o| o.starts_with("-S") || o.to_ascii_lowercase().contains("controlpath"));
        let mut closed = Closed::default();
        if !elsewhere {
            let sockets = self.master_sockets();
            closed.in_process = sockets.iter().filter(|s| end_master(s).is_ok()).count();
            if closed.in_process == sockets.len() {
                return closed;
            }
        }
        for dest in opened {
            let mut cmd = Command::new("ssh");
            cmd.args(self.opts("no"))
                .args(["-O", "exit"])
                .arg(dest)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = cmd.status();
            closed.by_ssh += 1;
        }
        closed
    }

    /// The sockets of the masters in the control directory (every socket there but
    /// the forwarded nix-daemons').
    fn master_sockets(&self) -> Vec<PathBuf> {
        use std::os::unix::fs::FileTypeExt as _;
        std::fs::read_dir(&self.control_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
            .map(|e| e.path())
            .filter(|p| p.extension().is_none_or(|x| x != "nd"))
            .collect()
    }

    fn master_command(&self, host: &Endpoint) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(self.opts("yes"));
        if self.relay {
            // Only a local listener until used: a host without a daemon costs nothing.
            cmd.arg("-L").arg(format!(
                "{}:{DAEMON_SOCKET}",
                self.daemon_forward(host).display()
            ));
        }
        cmd.args(["-N", "-f"])
            .arg(host.destination())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Opens the master connection to `host` (no session, so no login shell runs),
    /// returning once it is authenticated and in the background.
    fn open_master(&self, host: &Endpoint) -> Result<(), Error> {
        let ahead = self
            .pending
            .lock()
            .expect("not poisoned")
            .remove(&host.destination());
        let out = match ahead {
            // Its place was taken when it started.
            Some(child) => self.processes.wait_with_output(child),
            None if self.take_handshake(true) => {
                self.processes.output(&mut self.master_command(host), None)
            }
            None => return Err(Error::Closing),
        };
        self.give_handshake();
        let out = out?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Spawn {
                program: "ssh".into(),
                message: reply(&out).last_error(),
            })
        }
    }

    /// Starts `script` on `host` over its master connection, held until [`Held::talk`]:
    /// the session's setup (the login shell starting) overlaps with other work, and the
    /// script runs the moment it may.
    pub fn hold(&self, host: &Endpoint, script: &str) -> Result<Held, Error> {
        let dest = host.destination();
        let taken = {
            let mut ahead = self.ahead.lock().expect("not poisoned");
            ahead
                .iter()
                .position(|(d, s, _)| *d == dest && s == script)
                .map(|i| ahead.swap_remove(i).2)
        };
        match taken.and_then(|promised| promised.recv().ok()) {
            Some(held) => Ok(held),
            None => self.hold_now(host, script),
        }
    }

    fn hold_now(&self, host: &Endpoint, script: &str) -> Result<Held, Error> {
        self.refuse_when_closing()?;
        let remote = format!(
            "IFS= read -r waymark_go || exit 0\n[ \"$waymark_go\" = go ] || exit 0\n{script}"
        );
        let mut cmd = Self::command(&self.opts("no"), host, &remote);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = self.processes.spawn(&mut cmd)?;
        Ok(Held {
            child: Some(child),
            processes: Arc::clone(&self.processes),
        })
    }
}

/// One work ahead or master opening under way, counted down however it ends.
struct UnderWay<'s>(&'s Ssh);

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        *self.0.under_way.lock().expect("not poisoned") -= 1;
        self.0.under_way_done.notify_all();
    }
}

impl Drop for Ssh {
    /// No connection outlives the run, even one started ahead and never used.
    fn drop(&mut self) {
        let _ = self.close_all();
        if let Some(mut reaper) = self.reaper.take() {
            // Its stdin ends: it finds nothing left to end, and is waited for.
            drop(reaper.stdin.take());
            let _ = reaper.wait();
        }
    }
}

fn output(processes: &Processes, mut cmd: Command, input: Option<&[u8]>) -> Result<Reply, Error> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    processes.output(&mut cmd, input).map(|o| reply(&o))
}

#[cfg(test)]
mod tests;
