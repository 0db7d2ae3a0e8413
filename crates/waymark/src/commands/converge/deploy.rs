//! How the loop deploys a host: behind [`Deploys`], so the loop does not depend on how
//! a deploy is carried out.
//!
//! [`Subprocess`] runs this program's own `waymark deploy --json` per host: the same
//! gates, the same records and marks as a person's deploy, with its report read from
//! its `host` event. (The deploy library's in-process engine, issue 17, takes its place
//! once it is on main.)

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use waymark_converge::Attempt;

/// One host's deploy, as the loop asks for it.
#[derive(Debug, Clone)]
pub struct Job {
    /// The host.
    pub host: String,
    /// The flake to deploy from, at the desired commit (`git+file://…?rev=…`).
    pub flake: String,
    /// The commit the closure is built from; `None` for a pinned mark.
    pub rev: Option<String>,
    /// A pinned known-good mark to redeploy instead of a build.
    pub mark: Option<String>,
    /// Whether the deploy may replace a drifted system (policy `restore`).
    pub allow_drift: bool,
}

/// How a deploy ended, for the loop and its events.
#[derive(Debug, Clone)]
pub struct Ended {
    /// For the state machine.
    pub attempt: Attempt,
    /// The deploy's own result name (`deployed`, `failed`, …), or `error`.
    pub result: String,
    /// Its one-line message.
    pub message: String,
}

/// Deploys one host through the gates. Blocking; called from a thread per deploy.
pub trait Deploys: Send + Sync {
    /// Deploys `job.host`.
    fn deploy(&self, job: &Job) -> Ended;
    /// Stops every deploy under way (the controller is ending): a host whose activation
    /// started goes back to its previous system by itself unless it was confirmed.
    fn stop_all(&self);
}

/// `waymark deploy` as a child process of this one.
pub struct Subprocess {
    /// This program.
    pub program: PathBuf,
    /// Options passed on to every deploy (`--state-dir`, `--remote-waymark`, …).
    pub options: Vec<String>,
    /// Deploys under way, by host: their process ids.
    pub running: Mutex<BTreeMap<String, u32>>,
}

/// A program found on `PATH`.
fn in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Maps a deploy's result to the state machine's view: a gate that failed or refused
/// is the closure's failure (remembered); anything that kept the deploy from starting or
/// finishing is retried with backoff.
pub fn attempt_of(result: &str, message: &str) -> Attempt {
    match result {
        "deployed" => Attempt::Good { changed: true },
        "unchanged" => Attempt::Good { changed: false },
        "failed" | "needs-human" => Attempt::GateFailed(message.to_owned()),
        _ => Attempt::Error(message.to_owned()),
    }
}

impl Deploys for Subprocess {
    fn deploy(&self, job: &Job) -> Ended {
        let mut cmd = match in_path("setpriv") {
            // The deploy ends with the controller, also a killed one (-9): its host's
            // agent then restores by itself, and a restarted controller does not meet
            // an orphaned deploy holding the host's activation lock.
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "TERM", "--"]).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        cmd.arg("deploy").arg("--json").args(&self.options);
        cmd.arg("--flake").arg(&job.flake);
        if let Some(rev) = &job.rev {
            cmd.arg("--rev").arg(rev);
        }
        if job.allow_drift {
            cmd.arg("--allow-drift");
        }
        match &job.mark {
            Some(mark) => cmd.args(["rollback", &job.host, "--to", mark]),
            None => cmd.arg(&job.host),
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let error = |message: String| Ended {
            attempt: Attempt::Error(message.clone()),
            result: "error".into(),
            message,
        };
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return error(format!("starting waymark deploy: {e}")),
        };
        self.running
            .lock()
            .expect("not poisoned")
            .insert(job.host.clone(), child.id());
        let stderr = child.stderr.take();
        let last_err = std::thread::spawn(move || {
            stderr
                .map(|s| {
                    BufReader::new(s)
                        .lines()
                        .map_while(Result::ok)
                        .filter(|l| !l.trim().is_empty())
                        .last()
                        .unwrap_or_default()
                })
                .unwrap_or_default()
        });
        let mut report = None;
        if let Some(out) = child.stdout.take() {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["event"] == "host"
                    && v["host"] == job.host.as_str()
                {
                    report = Some(v);
                }
            }
        }
        let status = child.wait();
        self.running.lock().expect("not poisoned").remove(&job.host);
        let last_err = last_err.join().unwrap_or_default();
        match report {
            Some(r) => {
                let result = r["result"].as_str().unwrap_or("error").to_owned();
                let message = r["message"].as_str().unwrap_or_default().to_owned();
                Ended {
                    attempt: attempt_of(&result, &message),
                    result,
                    message,
                }
            }
            None => error(match status {
                Ok(s) if !last_err.is_empty() => format!("{last_err} ({s})"),
                Ok(s) => format!("waymark deploy ended without a report ({s})"),
                Err(e) => format!("waiting for waymark deploy: {e}"),
            }),
        }
    }

    fn stop_all(&self) {
        for pid in self.running.lock().expect("not poisoned").values() {
            if let Some(pid) = rustix::process::Pid::from_raw(*pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_map_to_the_machines_view() {
        assert_eq!(attempt_of("deployed", ""), Attempt::Good { changed: true });
        assert_eq!(
            attempt_of("unchanged", ""),
            Attempt::Good { changed: false }
        );
        assert!(matches!(attempt_of("failed", "test"), Attempt::GateFailed(m) if m == "test"));
        assert!(matches!(attempt_of("error", "ssh"), Attempt::Error(_)));
        assert!(matches!(attempt_of("skipped", ""), Attempt::Error(_)));
    }
}
