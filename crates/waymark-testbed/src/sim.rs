//! Simulated machines: each host is a directory with its own `/nix` (store, database,
//! profiles, GC roots), bind-mounted on `/nix` in a private mount namespace, with its own
//! tmpfs `/run` and a real sshd on 127.0.0.1 inside that namespace (docs/testbed.md).
//! Store paths live at their real `/nix/store` locations there, so closures copy between
//! hosts with `nix copy --from ssh-ng://a --to ssh-ng://b` exactly as between machines,
//! and a host's `/run/current-system` is its own. Needs root (mount namespaces).
//!
//! Like a NixOS machine, a host runs a `nix-daemon` on its own store (its socket at
//! `/nix/var/nix/daemon-socket/socket` in its `/nix`), unless started without one, like
//! a single-user Nix install.
//!
//! Hosts of one [`SimFleet`] share one ssh client configuration (`NIX_SSHOPTS="-F …"`),
//! and trust one signing key, which builders use to sign what they build.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::{keygen, run, wait_listening};
use crate::error::{Error, Result};

const NIX_CONF: &str = "substituters =\nexperimental-features = nix-command flakes\nbuild-users-group =\nsandbox = false\ntrusted-users = root\n";

/// A `nix-daemon` serving the store of the host in `h`, with the host's nix.conf; back
/// once its socket listens.
fn start_daemon(h: &Path) -> Result<Child> {
    let log = std::fs::File::create(h.join("nix-daemon.log")).map_err(io(h))?;
    let socket = h.join("nix/var/nix/daemon-socket/socket");
    let _ = std::fs::remove_file(&socket);
    let mut child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0/nix" /nix && exec nix-daemon"#)
        .arg(h)
        .env("NIX_CONF_DIR", h.join("etc-nix"))
        .env_remove("NIX_CONFIG")
        .env_remove("NIX_REMOTE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|source| Error::Spawn {
            program: "unshare".into(),
            source,
        })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(h.join("nix-daemon.log")).unwrap_or_default();
            return Err(Error::Nix {
                program: "nix-daemon".into(),
                stderr: format!("not listening at {} after 10 s: {log}", socket.display()),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

fn no_host(name: &str) -> Error {
    Error::Nix {
        program: "sim".into(),
        stderr: format!("no simulated host {name}"),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Write {
        path: path.to_owned(),
        source,
    }
}

/// One simulated machine.
#[derive(Debug)]
pub struct SimHost {
    name: String,
    dir: PathBuf,
    child: Child,
    daemon: Option<Child>,
}

impl SimHost {
    /// The host's name (its ssh alias).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's directory (`nix/` is its `/nix`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `ssh-ng://<name>`.
    pub fn store_url(&self) -> String {
        format!("ssh-ng://{}", self.name)
    }
}

impl Drop for SimHost {
    fn drop(&mut self) {
        // Only the sshd and daemon this value started; sessions die with them or on
        // their own.
        for child in std::iter::once(&mut self.child).chain(self.daemon.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Simulated machines sharing an ssh configuration and a signing key.
#[derive(Debug)]
pub struct SimFleet {
    dir: PathBuf,
    ssh_config: PathBuf,
    hosts: Vec<SimHost>,
}

impl SimFleet {
    /// An empty fleet in `dir` (created).
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("keys")).map_err(io(dir))?;
        // The hosts' stores are mounted there; a machine whose Nix never ran yet lacks it.
        std::fs::create_dir_all("/nix").map_err(io(Path::new("/nix")))?;
        let secret = dir.join("keys/signing.sec");
        if !secret.exists() {
            let key = run(Command::new("nix").args([
                "--extra-experimental-features",
                "nix-command",
                "key",
                "generate-secret",
                "--key-name",
                "waymark-sim-builder",
            ]))?;
            std::fs::write(&secret, key.trim()).map_err(io(&secret))?;
        }
        let ssh_config = dir.join("ssh_config");
        std::fs::write(&ssh_config, "").map_err(io(&ssh_config))?;
        Ok(Self {
            dir: dir.to_owned(),
            ssh_config,
            hosts: Vec::new(),
        })
    }

    /// The ssh client configuration naming every host.
    pub fn ssh_config(&self) -> &Path {
        &self.ssh_config
    }

    /// The value of `NIX_SSHOPTS` (and the arguments of `ssh`) that reach the hosts.
    pub fn nix_sshopts(&self) -> String {
        format!("-F {}", self.ssh_config.display())
    }

    /// The secret key builders sign with.
    pub fn signing_key(&self) -> PathBuf {
        self.dir.join("keys/signing.sec")
    }

    fn public_key(&self) -> Result<String> {
        let mut cmd = Command::new("nix");
        cmd.args([
            "--extra-experimental-features",
            "nix-command",
            "key",
            "convert-secret-to-public",
        ]);
        let secret = std::fs::read(self.signing_key()).map_err(io(&self.dir))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            program: "nix".into(),
            source,
        })?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(&secret)
            .map_err(io(&self.dir))?;
        let out = child.wait_with_output().map_err(io(&self.dir))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Starts host `name`: its `/nix`, `/run`, nix.conf (trusting the fleet's signing key),
    /// nix-daemon and sshd.
    pub fn start(&mut self, name: &str) -> Result<&SimHost> {
        self.start_host(name, true)
    }

    /// Starts host `name` with no nix-daemon (single-user Nix): store clients on it use
    /// the store directly.
    pub fn start_without_daemon(&mut self, name: &str) -> Result<&SimHost> {
        self.start_host(name, false)
    }

    /// The directory of host `name` (its `nix/` is the host's `/nix`).
    pub(crate) fn host_dir(&self, name: &str) -> PathBuf {
        self.dir.join("hosts").join(name)
    }

    /// A host's nix.conf: the lab's settings, trusting the fleet's signing key.
    pub(crate) fn nix_conf(&self) -> Result<String> {
        Ok(format!(
            "{NIX_CONF}trusted-public-keys = {}\n",
            self.public_key()?
        ))
    }

    /// Names host `name` in the client configuration: root at 127.0.0.1:`port`,
    /// logging in with `key`.
    pub(crate) fn add_alias(&self, name: &str, port: u16, key: &Path) -> Result<()> {
        let mut client = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.ssh_config)
            .map_err(io(&self.ssh_config))?;
        writeln!(
            client,
            "Host {name}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n  \
             StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes",
            key = key.display(),
        )
        .map_err(io(&self.ssh_config))
    }

    fn start_host(&mut self, name: &str, with_daemon: bool) -> Result<&SimHost> {
        let h = self.host_dir(name);
        for d in ["nix/store", "nix/var/nix", "etc-nix", "ssh"] {
            std::fs::create_dir_all(h.join(d)).map_err(io(&h))?;
        }
        let conf = h.join("etc-nix/nix.conf");
        std::fs::write(&conf, self.nix_conf()?).map_err(io(&conf))?;
        let ssh = h.join("ssh");
        keygen(&ssh.join("host_key"))?;
        keygen(&ssh.join("client_key"))?;
        std::fs::copy(ssh.join("client_key.pub"), ssh.join("authorized_keys")).map_err(io(&ssh))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io(&h))?
            .port();
        let sshd_config = ssh.join("sshd_config");
        std::fs::write(
            &sshd_config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {key}\nAuthorizedKeysFile {auth}\nPidFile none\n\
                 UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nSetEnv NIX_CONF_DIR={conf}\n",
                key = ssh.join("host_key").display(),
                auth = ssh.join("authorized_keys").display(),
                conf = h.join("etc-nix").display(),
            ),
        )
        .map_err(io(&sshd_config))?;
        self.add_alias(name, port, &ssh.join("client_key"))?;
        let log = std::fs::File::create(h.join("sshd.log")).map_err(io(&h))?;
        // `unshare` and `sh -c … exec` keep one PID: killing it stops this host's sshd.
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$0/nix" /nix && mount -t tmpfs tmpfs /run && mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e -f "$0/ssh/sshd_config""#)
            .arg(&h)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| Error::Spawn { program: "unshare".into(), source })?;
        let mut host = SimHost {
            name: name.to_owned(),
            dir: h.clone(),
            child,
            daemon: None,
        };
        if with_daemon {
            host.daemon = Some(start_daemon(&h)?);
        }
        wait_listening(port, &format!("host {name}"), Some(&h.join("sshd.log")))?;
        self.hosts.push(host);
        Ok(self.hosts.last().expect("just pushed"))
    }

    /// Stops `host`'s nix-daemon: store clients there use the store directly, as with
    /// single-user Nix.
    pub fn stop_daemon(&mut self, host: &str) -> Result<()> {
        let h = self
            .hosts
            .iter_mut()
            .find(|h| h.name == host)
            .ok_or_else(|| no_host(host))?;
        if let Some(mut daemon) = h.daemon.take() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        let socket = h.dir.join("nix/var/nix/daemon-socket/socket");
        let _ = std::fs::remove_file(&socket);
        Ok(())
    }

    /// Restarts `host`'s nix-daemon, as after a change to its nix.conf.
    pub fn restart_daemon(&mut self, host: &str) -> Result<()> {
        self.stop_daemon(host)?;
        let h = self
            .hosts
            .iter_mut()
            .find(|h| h.name == host)
            .ok_or_else(|| no_host(host))?;
        h.daemon = Some(start_daemon(&h.dir)?);
        Ok(())
    }

    /// How many connections `host`'s nix-daemon accepted so far (from its log).
    pub fn daemon_connections(&self, host: &str) -> usize {
        self.host(host)
            .and_then(|h| std::fs::read_to_string(h.dir.join("nix-daemon.log")).ok())
            .map_or(0, |log| log.matches("accepted connection").count())
    }

    /// Adds `line` to `host`'s sshd configuration and makes sshd read it again
    /// (SIGHUP); back once it listens again. Connections opened later get it.
    pub fn add_sshd_option(&mut self, host: &str, line: &str) -> Result<()> {
        let h = self.host(host).ok_or_else(|| no_host(host))?;
        let config = h.dir.join("ssh/sshd_config");
        let mut text = std::fs::read_to_string(&config).map_err(io(&config))?;
        text.push_str(line);
        text.push('\n');
        std::fs::write(&config, &text).map_err(io(&config))?;
        let port: u16 = text
            .lines()
            .find_map(|l| l.strip_prefix("Port ")?.trim().parse().ok())
            .ok_or_else(|| no_host(host))?;
        run(Command::new("kill")
            .arg("-HUP")
            .arg(h.child.id().to_string()))?;
        // sshd re-executes itself: wait until the old listener is gone and the new one is up.
        std::thread::sleep(Duration::from_millis(200));
        wait_listening(port, &format!("host {host} (after SIGHUP)"), None)
    }

    /// A host started earlier.
    pub fn host(&self, name: &str) -> Option<&SimHost> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// How many SSH connections `host` accepted so far (from its sshd's log).
    pub fn connections(&self, host: &str) -> usize {
        self.host(host)
            .and_then(|h| std::fs::read_to_string(h.dir.join("sshd.log")).ok())
            .map_or(0, |log| log.matches("Accepted publickey").count())
    }

    /// The ssh master connections (`ControlMaster=yes`) running with this fleet's
    /// configuration: their processes, found in `/proc`.
    pub fn ssh_masters(&self) -> usize {
        self.ssh_master_commands().len()
    }

    /// The directories of the running ssh masters' control sockets (`ControlPath`).
    pub fn ssh_control_dirs(&self) -> std::collections::BTreeSet<PathBuf> {
        self.ssh_master_commands()
            .iter()
            .filter_map(|c| {
                let path = c.split_once("ControlPath=")?.1.split(' ').next()?;
                Some(Path::new(path).parent()?.to_owned())
            })
            .collect()
    }

    fn ssh_master_commands(&self) -> Vec<String> {
        let config = self.dir.display().to_string();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains("ControlMaster=yes") && c.contains(&config))
            .collect()
    }

    /// A command that runs `program` as the deploying machine: in a mount namespace of
    /// its own with `<fleet>/deployer/nix` on `/nix` (evaluating a flake writes `.drv`
    /// files; they must never land in this machine's store), with the fleet's ssh
    /// configuration in `NIX_SSHOPTS`.
    pub fn deployer_command(&self, program: &Path) -> Result<Command> {
        let d = self.dir.join("deployer");
        for sub in ["nix/store", "nix/var/nix"] {
            std::fs::create_dir_all(d.join(sub)).map_err(io(&d))?;
        }
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$0/nix" /nix && exec "$@""#)
            .arg(&d)
            .arg(program)
            .env("NIX_SSHOPTS", self.nix_sshopts())
            .env(
                "NIX_CONFIG",
                "substituters =\nexperimental-features = nix-command flakes\nbuild-users-group =\nsandbox = false",
            );
        Ok(cmd)
    }

    /// Makes `path` (built on `builder`) the installed system of `host`: copied there,
    /// the system profile set, and activated, as on a freshly installed machine.
    pub fn install(&self, builder: &str, host: &str, path: &str) -> Result<()> {
        self.copy(builder, host, path)?;
        self.exec(
            host,
            &format!(
                "nix-env -p /nix/var/nix/profiles/system --set {path} && {path}/bin/switch-to-configuration switch"
            ),
        )
        .map(drop)
    }

    /// An `ssh <host> -- …` command.
    pub fn ssh(&self, host: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F").arg(&self.ssh_config).arg(host).arg("--");
        cmd
    }

    /// Runs a shell command line on a host and returns its stdout.
    pub fn exec(&self, host: &str, command_line: &str) -> Result<String> {
        run(self.ssh(host).arg(command_line))
    }

    /// Builds attributes of a generations file (see [`crate::model::render_file`]) on a
    /// builder host and signs the results with the fleet's key. The file and its
    /// `busybox/` must be on a path the host sees (anything outside `/nix` and `/run`).
    pub fn build(&self, builder: &str, file: &Path, attrs: &[&str]) -> Result<Vec<String>> {
        let mut line = format!("nix-build {} --no-out-link --quiet", file.display());
        for a in attrs {
            line.push_str(&format!(" -A {a}"));
        }
        let paths: Vec<String> = self
            .exec(builder, &line)?
            .lines()
            .map(str::to_owned)
            .collect();
        self.exec(
            builder,
            &format!(
                "nix --extra-experimental-features nix-command store sign --key-file {} --recursive {}",
                self.signing_key().display(),
                paths.join(" ")
            ),
        )?;
        Ok(paths)
    }

    /// Copies a closure from one host straight to another (signatures checked).
    pub fn copy(&self, from: &str, to: &str, path: &str) -> Result<()> {
        let mut cmd = Command::new("nix");
        cmd.args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--from",
        ])
        .arg(format!("ssh-ng://{from}"))
        .arg("--to")
        .arg(format!("ssh-ng://{to}"))
        .arg(path)
        .env("NIX_SSHOPTS", self.nix_sshopts())
        .env(
            "NIX_CONFIG",
            "substituters =\nexperimental-features = nix-command flakes\nbuild-users-group =",
        );
        run(&mut cmd).map(drop)
    }
}
