//! Where the loop's events come from: a watcher per host over ssh (`waymark host-watch`
//! there, or the poll script where it cannot run), and the release branches of the
//! fleet's repository, each commit evaluated to the closures it gives.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Command, Stdio};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use waymark_converge::protocol::{Line, parse};
use waymark_converge::{Desired, Facts, POLL_SCRIPT};
use waymark_deploy::Processes;

use super::deploy::{Ended, Evaluated};

/// What the loop hears.
#[derive(Debug)]
pub enum Msg {
    /// A host's watcher reported what it runs.
    Facts {
        host: String,
        facts: Facts,
        how: String,
    },
    /// A host's watcher could not reach it, or lost it.
    Unreachable { host: String, reason: String },
    /// What a host should run changed (or was read for the first time).
    Desired {
        host: String,
        desired: Desired,
        reason: Option<String>,
    },
    /// A deploy ended.
    Done { host: String, ended: Ended },
    /// SIGINT, SIGTERM or SIGHUP.
    Signal(i32),
}

/// How hosts are watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WatchMode {
    /// `waymark host-watch` (inotify) on the host, the poll script where it cannot run
    Auto,
    /// The poll script on every host
    Poll,
}

/// The ssh processes of the watchers, ended with the controller.
#[derive(Debug, Default, Clone)]
pub struct Children(Arc<Mutex<BTreeMap<String, u32>>>);

impl Children {
    fn set(&self, host: &str, pid: Option<u32>) {
        let mut map = self.0.lock().expect("not poisoned");
        match pid {
            Some(p) => map.insert(host.to_owned(), p),
            None => map.remove(host),
        };
    }

    /// Ends them all.
    pub fn end_all(&self) {
        for pid in self.0.lock().expect("not poisoned").values() {
            if let Some(pid) = rustix::process::Pid::from_raw(*pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
    }
}

/// Quotes a word for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One host's watcher, as set up by the controller.
#[derive(Debug, Clone)]
pub struct HostWatch {
    /// The fleet's name of the host.
    pub host: String,
    /// `user@address`.
    pub destination: String,
    /// Extra ssh options (`NIX_SSHOPTS`, split at blanks).
    pub ssh_options: Vec<String>,
    /// The waymark command on the host (a shell command line).
    pub remote_waymark: String,
    /// How to watch.
    pub mode: WatchMode,
    /// The poll script's interval.
    pub poll_interval: Duration,
}

impl HostWatch {
    fn command(&self, poll: bool) -> Command {
        let remote = if poll {
            let known_good = format!(
                "{} known-good latest {} 2>/dev/null",
                self.remote_waymark, self.host
            );
            format!(
                "sh -c {} sh {} {}",
                shell_quote(POLL_SCRIPT),
                self.poll_interval.as_secs_f64(),
                shell_quote(&known_good)
            )
        } else {
            format!("{} host-watch {}", self.remote_waymark, self.host)
        };
        let mut cmd = Command::new("ssh");
        cmd.args(&self.ssh_options)
            .args([
                "-T",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                "-o",
                "ServerAliveInterval=5",
                "-o",
                "ServerAliveCountMax=3",
                "-o",
                "ControlMaster=no",
                "-o",
                "ControlPath=none",
            ])
            .arg(&self.destination)
            .arg("--")
            .arg(remote)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs the watcher until the process ends: reconnects with a doubling wait (1 s to
    /// 30 s), and falls back to the poll script for good where `host-watch` did not
    /// start (an older or missing waymark there).
    pub fn run(self, tx: &Sender<Msg>, children: &Children) {
        let mut poll = self.mode == WatchMode::Poll;
        let mut wait = Duration::from_secs(1);
        loop {
            let mut child = match self.command(poll).spawn() {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Msg::Unreachable {
                        host: self.host.clone(),
                        reason: format!("starting ssh: {e}"),
                    });
                    std::thread::sleep(Duration::from_secs(30));
                    continue;
                }
            };
            children.set(&self.host, Some(child.id()));
            let how = if poll { "poll" } else { "watch" };
            let mut hello = false;
            let mut error = String::new();
            if let Some(out) = child.stdout.take() {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    match parse(&line) {
                        Ok(Line::Hello { .. }) => {
                            hello = true;
                            wait = Duration::from_secs(1);
                        }
                        Ok(Line::Facts(facts)) => {
                            if tx
                                .send(Msg::Facts {
                                    host: self.host.clone(),
                                    facts,
                                    how: how.into(),
                                })
                                .is_err()
                            {
                                return;
                            }
                        }
                        Ok(Line::Error(e)) => error = e,
                        Ok(Line::Nothing) | Err(_) => {}
                    }
                }
            }
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            let status = child.wait();
            children.set(&self.host, None);
            let ssh_failed = status.as_ref().is_ok_and(|s| s.code() == Some(255));
            if !hello && !poll && !ssh_failed {
                // It did not start there: the poll script does without it.
                poll = true;
                continue;
            }
            let last = stderr
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or(&error)
                .trim()
                .to_owned();
            let reason = if last.is_empty() {
                "its watcher's connection ended".to_owned()
            } else {
                last
            };
            if tx
                .send(Msg::Unreachable {
                    host: self.host.clone(),
                    reason,
                })
                .is_err()
            {
                return;
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }
}

/// The flake reference of the fleet's repository at a commit.
pub fn flake_at(repo: &std::path::Path, rev: &str) -> String {
    format!("git+file://{}?rev={rev}&allRefs=1", repo.display())
}

/// Watches `release/<host>` of every host in `hosts` in the repository at `repo`, every
/// `interval`; sends each host's desired state when its branch appears, moves or goes.
/// A commit is evaluated once for every host it concerns, and for its deploys
/// (`evaluated`).
pub fn watch_releases(
    tx: &Sender<Msg>,
    repo: &std::path::Path,
    hosts: &[String],
    interval: Duration,
    evaluated: &Evaluated,
) {
    let mut last: BTreeMap<String, Option<String>> = BTreeMap::new();
    loop {
        let releases = match waymark_release::Releases::open(repo) {
            Ok(r) => Some(r),
            Err(e) => {
                for host in hosts {
                    let _ = tx.send(Msg::Desired {
                        host: host.clone(),
                        desired: Desired::NoRelease,
                        reason: Some(format!("opening {}: {e}", repo.display())),
                    });
                }
                None
            }
        };
        for host in hosts {
            let Some(releases) = &releases else { break };
            let branch = format!("refs/heads/{}", waymark_release::branch_name(host));
            let rev = releases
                .repo()
                .refname_to_id(&branch)
                .ok()
                .map(|oid| oid.to_string());
            if last.get(host) == Some(&rev) {
                continue;
            }
            last.insert(host.clone(), rev.clone());
            let (desired, reason) = match &rev {
                None => (Desired::NoRelease, None),
                Some(rev) => {
                    let known = evaluated.lock().expect("not poisoned").get(rev).cloned();
                    // Evaluated without the lock held (a deploy looks its commit up),
                    // and kept before the desired state is sent: its deploy finds it.
                    let fleet = known.unwrap_or_else(|| {
                        let fleet = super::super::fleet::read_fleet(
                            &flake_at(repo, rev),
                            &Processes::default(),
                        )
                        .map(Arc::new)
                        .map_err(|e| format!("{e:#}"));
                        evaluated
                            .lock()
                            .expect("not poisoned")
                            .insert(rev.clone(), fleet.clone());
                        fleet
                    });
                    match &fleet {
                        Ok(f) => match f.hosts.get(host).and_then(|h| h.closure.clone()) {
                            Some(closure) => (
                                Desired::Release {
                                    rev: rev.clone(),
                                    closure,
                                },
                                None,
                            ),
                            None => (
                                Desired::NoRelease,
                                Some(format!("release/{host} at {rev} has no system for {host}")),
                            ),
                        },
                        Err(e) => (
                            Desired::NoRelease,
                            Some(format!("release/{host} at {rev}: {e}")),
                        ),
                    }
                }
            };
            if tx
                .send(Msg::Desired {
                    host: host.clone(),
                    desired,
                    reason,
                })
                .is_err()
            {
                return;
            }
        }
        // Evaluations are kept for the commits still named.
        evaluated
            .lock()
            .expect("not poisoned")
            .retain(|rev, _| last.values().any(|r| r.as_deref() == Some(rev.as_str())));
        std::thread::sleep(interval);
    }
}

/// Reads a pinned mark's closure on its host (`waymark known-good show HOST MARK`).
pub fn read_mark(watch: &HostWatch, mark: &str) -> Result<String, String> {
    let remote = format!(
        "{} known-good show {} {} --json",
        watch.remote_waymark,
        watch.host,
        shell_quote(mark)
    );
    let out = Command::new("ssh")
        .args(&watch.ssh_options)
        .args(["-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"])
        .arg(&watch.destination)
        .arg("--")
        .arg(remote)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("starting ssh: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("reading the mark: {e}"))?;
    v["closure"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("mark {mark} names no closure"))
}

/// The ssh options of `NIX_SSHOPTS`, split at blanks as Nix does.
pub fn ssh_options() -> Vec<String> {
    std::env::var("NIX_SSHOPTS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_flake_references() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
        assert_eq!(
            flake_at(std::path::Path::new("/srv/fleet"), "abc"),
            "git+file:///srv/fleet?rev=abc&allRefs=1"
        );
    }
}
