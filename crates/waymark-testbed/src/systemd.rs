//! Lab hosts whose PID 1 is a real systemd, for what the namespace hosts of
//! [`SimFleet`] cannot show (they have no init): `systemd-run` transient units and the
//! PATH they get, `systemctl --failed`, units started by an activation and failing.
//!
//! A host boots a Debian root with `systemd-nspawn --boot`. The root is made once by
//! `systemd-root.sh` (beside this crate's `Cargo.toml`; CI runs it) and kept under
//! `/var/cache/waymark-testbed`; each host boots it over a volatile overlay, so one
//! root serves every host at once and is never written to. Like a [`SimFleet`] host,
//! each has its own `/nix` (its directory's `nix/`, bind-mounted), its own nix.conf
//! trusting the fleet's signing key, a nix-daemon (a unit, as on NixOS) and an sshd on
//! 127.0.0.1, named in the fleet's ssh configuration. It shares this machine's network
//! (the loopback) and nothing else of its file system but what is bound in. Needs root
//! and systemd-nspawn (Debian's systemd-container).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::{keygen, run};
use crate::error::{Error, Result};
use crate::{Lab, SimFleet};

/// The version `systemd-root.sh` stamps its root with (its `version`): a root made by
/// another version of the script is refused rather than booted.
pub const ROOT_VERSION: &str = "2";

/// Where `systemd-root.sh` makes the root unless told otherwise (`WAYMARK_SYSTEMD_ROOT`):
/// a path per version, so that making one never removes another that hosts run from.
pub const DEFAULT_ROOT: &str = "/var/cache/waymark-testbed/debian-bookworm-systemd-v2";

/// Where the hosts' cgroups are, in each cgroup hierarchy.
const CGROUP_DIR: &str = "waymark-testbed";

/// Seconds a host may take from `systemd-nspawn` to a finished boot.
const BOOT_SECONDS: u64 = 60;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Write {
        path: path.to_owned(),
        source,
    }
}

/// The root systemd hosts boot: `$WAYMARK_SYSTEMD_ROOT`, else [`DEFAULT_ROOT`].
///
/// # Errors
/// [`Error::NoSystemdRoot`] when there is none made by this version of
/// `systemd-root.sh` (the error says how to make it).
pub fn systemd_root() -> Result<PathBuf> {
    let root = std::env::var_os("WAYMARK_SYSTEMD_ROOT")
        .map_or_else(|| PathBuf::from(DEFAULT_ROOT), PathBuf::from);
    let stamp = std::fs::read_to_string(root.join(".waymark-testbed-root")).unwrap_or_default();
    if stamp.trim() == format!("version={ROOT_VERSION}") {
        Ok(root)
    } else {
        Err(Error::NoSystemdRoot { path: root })
    }
}

/// One host booted with a real systemd. Powered off when dropped.
#[derive(Debug)]
pub struct SystemdHost {
    name: String,
    dir: PathBuf,
    /// Its cgroup's path in each hierarchy.
    cgroup: String,
    nspawn: Child,
}

impl SystemdHost {
    /// Boots host `name` of `fleet` from `root`, with `binds` (files or directories of
    /// this machine, seen read-only at the same paths: the `waymark` binary the host
    /// runs for its marks); back once its boot finished and its sshd answers.
    ///
    /// # Errors
    /// When the host's files cannot be written, `systemd-nspawn` cannot start, or the
    /// host does not finish booting within 60 s (the error holds its console).
    pub fn start(fleet: &SimFleet, name: &str, root: &Path, binds: &[&Path]) -> Result<Self> {
        let h = fleet.host_dir(name);
        for d in ["nix/store", "nix/var/nix/daemon-socket", "etc-nix", "ssh"] {
            std::fs::create_dir_all(h.join(d)).map_err(io(&h))?;
        }
        let conf = h.join("etc-nix/nix.conf");
        std::fs::write(&conf, fleet.nix_conf()?).map_err(io(&conf))?;
        let ssh = h.join("ssh");
        keygen(&ssh.join("host_key"))?;
        keygen(&ssh.join("client_key"))?;
        std::fs::copy(ssh.join("client_key.pub"), ssh.join("authorized_keys")).map_err(io(&ssh))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io(&h))?
            .port();
        // A drop-in to Debian's sshd_config: the host shares the loopback, so it gets
        // a port of its own instead of 22. Debian's PAM setup stays, as NixOS has PAM.
        let drop_in = ssh.join("sshd.conf");
        std::fs::write(
            &drop_in,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey /etc/waymark-testbed/ssh/host_key\n\
                 AuthorizedKeysFile /etc/waymark-testbed/ssh/authorized_keys\nStrictModes no\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n"
            ),
        )
        .map_err(io(&drop_in))?;
        fleet.add_alias(name, port, &ssh.join("client_key"))?;
        // As on NixOS, where a unit's PATH has nothing of the system but what the unit
        // declares: a transient unit (`systemd-run`) finds no shell tools and no Nix
        // unless it is given a PATH. Debian's own units name their programs in full.
        let manager = h.join("system.conf");
        std::fs::write(
            &manager,
            "[Manager]\nDefaultEnvironment=PATH=/usr/lib/systemd\n",
        )
        .map_err(io(&manager))?;

        let console = h.join("console.log");
        let log = std::fs::File::create(&console).map_err(io(&console))?;
        let machine = format!("waymark-{name}-{port}");
        // nspawn keeps the container under its own cgroup (--keep-unit): started from
        // one cgroup, hosts running at once would share their `payload` cgroup, and
        // one host's systemd would remove the cgroups of another's units (seen: units
        // failing at boot with "Failed to attach ... No such file or directory"). So
        // nspawn starts in a cgroup of its own, in every hierarchy systemd uses. If the
        // thread that started it dies without dropping it (a test process killed),
        // nspawn gets SIGTERM all the same and powers the host off.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(
                r#"for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
  [ -e "$h/cgroup.procs" ] || continue
  mkdir -p "$h/$0" && echo $$ > "$h/$0/cgroup.procs" || exit 1
done
exec setpriv --pdeathsig TERM systemd-nspawn "$@""#,
            )
            .arg(format!("{CGROUP_DIR}/{machine}"))
            .arg("--directory")
            .arg(root)
            // The root stays as made: every write goes to a tmpfs over it.
            .arg("--volatile=overlay")
            .arg("--boot")
            // This machine's PID 1 may not be systemd (no machined to register with,
            // no manager to make a scope): the container stays in our process tree.
            .args(["--register=no", "--keep-unit", "--console=read-only"])
            // Unique among hosts running at once (nspawn keeps per-name state in /run).
            .arg(format!("--machine={machine}"))
            .arg(format!("--hostname={name}"))
            .arg(bind(&h.join("nix"), "/nix", false))
            .arg(bind(&h.join("etc-nix"), "/etc/nix", true))
            .arg(bind(&ssh, "/etc/waymark-testbed/ssh", true))
            .arg(bind(
                &drop_in,
                "/etc/ssh/sshd_config.d/waymark-testbed.conf",
                true,
            ))
            .arg(bind(
                &manager,
                "/etc/systemd/system.conf.d/waymark-testbed.conf",
                true,
            ));
        for b in binds {
            cmd.arg(bind(b, &b.display().to_string(), true));
        }
        let nspawn = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io(&console))?)
            .stderr(log)
            .spawn()
            .map_err(|source| Error::Spawn {
                program: "systemd-nspawn".into(),
                source,
            })?;
        let mut host = Self {
            name: name.to_owned(),
            dir: h,
            cgroup: format!("{CGROUP_DIR}/{machine}"),
            nspawn,
        };
        host.await_boot(fleet, port)?;
        Ok(host)
    }

    /// Waits for the host's sshd, then for systemd's boot to finish (`running`, or
    /// `degraded` when a unit failed: a deploy reads which).
    fn await_boot(&mut self, fleet: &SimFleet, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(BOOT_SECONDS);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || matches!(self.nspawn.try_wait(), Ok(Some(_))) {
                return Err(self.boot_failed("its sshd never listened"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // `degraded` exits non-zero: the printed state decides. A unit failed at boot
        // is the lab's fault, and would blur what a deploy made fail: refused.
        let state = run(fleet.ssh(&self.name).arg(format!(
            "timeout {BOOT_SECONDS} systemctl is-system-running --wait; systemctl --failed --no-legend --plain"
        )))?;
        match state.trim() {
            "running" => Ok(()),
            other => Err(self.boot_failed(&format!("systemd says {other:?}"))),
        }
    }

    fn boot_failed(&self, what: &str) -> Error {
        let console = std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(30).collect();
        Error::Nix {
            program: "systemd-nspawn".into(),
            stderr: format!(
                "host {} did not boot within {BOOT_SECONDS} s ({what}); its console ends:\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ),
        }
    }

    /// The host's name (its ssh alias).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's directory (`nix/` is its `/nix`, `console.log` its console).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// `--bind=SRC:DST` (`--bind-ro` when `read_only`). nspawn splits at colons: the lab's
/// paths have none.
fn bind(src: &Path, dst: &str, read_only: bool) -> String {
    let flag = if read_only { "--bind-ro" } else { "--bind" };
    format!("{flag}={}:{dst}", src.display())
}

impl Drop for SystemdHost {
    fn drop(&mut self) {
        // SIGTERM: nspawn powers the container off (its units stop, its mounts go).
        // SIGKILL only if that hangs: it would leave the container's processes behind.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.nspawn.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.nspawn.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        // Its cgroups, deepest first (nspawn leaves some; only empty ones go).
        for h in [
            "/sys/fs/cgroup/systemd",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ] {
            let top = Path::new(h).join(&self.cgroup);
            let _ = Command::new("find")
                .arg(&top)
                .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A [`Lab`] whose targets are [`SystemdHost`]s (the build host stays a namespace
/// host): the same flake and helpers, against a real systemd, and two more
/// generations: `g3`, whose service exits with an error once started (activation
/// succeeds; only the failed units show it), and `g4`, whose service fails to start
/// (activation fails naming it).
#[derive(Debug)]
pub struct SystemdLab {
    /// The lab (dropped first: its hosts end before the systemd hosts power off).
    pub lab: Lab,
    hosts: Vec<SystemdHost>,
}

impl SystemdLab {
    /// Starts `builder` and boots `targets` from the systemd root ([`systemd_root`]),
    /// each running `g0`, as [`Lab::new`] does.
    ///
    /// # Errors
    /// When there is no systemd root, or a host cannot be started (see
    /// [`SystemdHost::start`]) or given its first system.
    pub fn new(dir: &Path, targets: &[&str], waymark: &Path) -> Result<Self> {
        let root = systemd_root()?;
        let mut hosts = Vec::new();
        let mut lab = Lab::with_targets(dir, targets, waymark, |fleet, t| {
            hosts.push(SystemdHost::start(fleet, t, &root, &[waymark])?);
            Ok(())
        })?;
        let mut generations = crate::lab::generations();
        for (what, fail) in [("crash", "unit-crash"), ("no-start", "unit-start")] {
            let mut g = crate::fixtures::web_gen2();
            g.version.push_str(&format!("-unit-{what}"));
            g.fail = vec![fail.into()];
            generations.push(g);
        }
        let (file, _) =
            crate::write_generations(lab.flake.dir(), &generations.iter().collect::<Vec<_>>())?;
        lab.flake.commit("generations whose service fails")?;
        let built = lab.fleet.build("builder", &file, &["g3", "g4"])?;
        lab.generations.extend(built);
        Ok(Self { lab, hosts })
    }

    /// A systemd host of the lab.
    pub fn host(&self, name: &str) -> Option<&SystemdHost> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

impl std::ops::Deref for SystemdLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl std::ops::DerefMut for SystemdLab {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_script_and_this_module_name_one_version_and_path() {
        let script = include_str!("../systemd-root.sh");
        assert!(
            script
                .lines()
                .any(|l| l == format!("version={ROOT_VERSION}")),
            "systemd-root.sh's version is not ROOT_VERSION"
        );
        assert_eq!(
            DEFAULT_ROOT,
            format!("/var/cache/waymark-testbed/debian-bookworm-systemd-v{ROOT_VERSION}")
        );
        assert!(script.contains("/var/cache/waymark-testbed/debian-bookworm-systemd-v$version"));
    }
}
