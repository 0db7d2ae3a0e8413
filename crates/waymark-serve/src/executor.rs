//! What runs a job: the [`Executor`] trait, and its implementation that drives the
//! gated deploy of `waymark deploy` (the same program, as a child process, its JSON Lines
//! events read as they come). Synchronous: the runner calls it from `spawn_blocking`.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::model::JobKind;

/// One job's deploy, as the executor needs it. The ssh identity is a file path read by
/// ssh at run time: its content never passes through the service.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub job: i64,
    pub kind: JobKind,
    pub flake: String,
    pub rev: String,
    pub hosts: Vec<String>,
    pub goal: String,
    /// The flake input the configuration is given as, and the directory holding it
    /// (`config.json`), when the job has a configuration document.
    pub config: Option<(String, PathBuf)>,
    /// The tenant's ssh identity file, if it has one.
    pub identity: Option<PathBuf>,
}

/// What a run reports while it goes: deploy events (docs/deploy-events-schema.json)
/// and log lines.
pub trait Progress: Sync {
    /// A deploy event, as its JSON.
    fn event(&self, event: Value);
    /// A log line.
    fn log(&self, line: &str);
}

/// A cancel request shared between the runner and a running executor.
#[derive(Clone, Default)]
pub struct CancelFlag {
    inner: Arc<Mutex<CancelInner>>,
}

#[derive(Default)]
struct CancelInner {
    reason: Option<String>,
    hooks: Vec<Box<dyn Fn(&str) + Send>>,
}

impl CancelFlag {
    /// Asks the run to stop, with a reason (the first reason stays).
    pub fn cancel(&self, reason: &str) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if inner.reason.is_some() {
            return;
        }
        inner.reason = Some(reason.to_owned());
        for hook in &inner.hooks {
            hook(reason);
        }
    }

    /// The reason, once cancelled.
    pub fn reason(&self) -> Option<String> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .reason
            .clone()
    }

    /// Runs `hook` on cancel (now, if already cancelled): how an executor passes the
    /// request on to what it drives.
    pub fn on_cancel(&self, hook: impl Fn(&str) + Send + 'static) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(reason) = &inner.reason {
            hook(reason);
        }
        inner.hooks.push(Box::new(hook));
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// The worst host result (`deployed`, `unchanged`, `failed`, `skipped`, `error`,
    /// `needs-human`), as the deploy's events name them.
    pub result: String,
    /// One line: why, when it is not good.
    pub message: Option<String>,
}

/// Runs jobs.
pub trait Executor: Send + Sync + 'static {
    /// Runs one job to its end; stops early (never tearing an activation) once `cancel`
    /// is cancelled.
    fn run(&self, spec: &RunSpec, progress: &dyn Progress, cancel: &CancelFlag) -> RunOutcome;
}

/// Runs jobs with `waymark deploy --json`.
pub struct CliExecutor {
    /// The waymark program.
    pub program: PathBuf,
    /// `NIX_SSHOPTS` every run starts from (the service's own).
    pub base_sshopts: String,
}

impl CliExecutor {
    /// Runs this very program.
    pub fn for_this_program() -> std::io::Result<Self> {
        Ok(Self {
            program: std::env::current_exe()?,
            base_sshopts: std::env::var("NIX_SSHOPTS").unwrap_or_default(),
        })
    }

    fn command(&self, spec: &RunSpec) -> Command {
        // The deploy ends with the service (SIGTERM, which it handles like Ctrl-C) rather
        // than run on unseen while a restarted service re-queues its job.
        let mut cmd = match find_program("setpriv") {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "TERM", "--"]).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        cmd.args(["deploy", "--json", "--flake", &spec.flake])
            .args(["--goal", &spec.goal, "--rev", &spec.rev])
            .arg("--on")
            .arg(spec.hosts.join(","));
        let mut sshopts = self.base_sshopts.clone();
        if let Some(identity) = &spec.identity {
            // NIX_SSHOPTS splits on spaces: the identity path was checked to have none.
            sshopts = format!("{sshopts} -i {}", identity.display())
                .trim()
                .to_owned();
        }
        cmd.env("NIX_SSHOPTS", sshopts)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn failed(message: String) -> RunOutcome {
    RunOutcome {
        result: "error".into(),
        message: Some(message),
    }
}

impl Executor for CliExecutor {
    fn run(&self, spec: &RunSpec, progress: &dyn Progress, cancel: &CancelFlag) -> RunOutcome {
        if spec.config.is_some() || spec.kind == JobKind::Teardown {
            return failed(
                "this service runs deploys through `waymark deploy`, which takes no configuration document: submit jobs without `config`".into(),
            );
        }
        let mut child = match self.command(spec).spawn() {
            Ok(c) => c,
            Err(e) => return failed(format!("starting {}: {e}", self.program.display())),
        };
        let pid = child.id();
        // The deploy catches SIGTERM: before activation it stops untouched; after, the
        // target's agent restores by itself (never a torn switch).
        cancel.on_cancel(move |_| {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        });
        let stderr = child.stderr.take();
        let stdout = child.stdout.take();
        let mut summary: Option<Value> = None;
        std::thread::scope(|s| {
            if let Some(stderr) = stderr {
                s.spawn(move || {
                    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                        progress.log(&line);
                    }
                });
            }
            if let Some(stdout) = stdout {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let Ok(event) = serde_json::from_str::<Value>(&line) else {
                        progress.log(&line);
                        continue;
                    };
                    if event["event"] == "summary" {
                        summary = Some(event.clone());
                    }
                    progress.event(event);
                }
            }
        });
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break None,
            }
        };
        let Some(summary) = summary else {
            return failed(format!(
                "the deploy ended without a summary ({})",
                status.map_or_else(|| "unknown status".into(), |s| s.to_string())
            ));
        };
        outcome_of_summary(&summary)
    }
}

/// The outcome a deploy's `summary` event tells.
pub fn outcome_of_summary(summary: &Value) -> RunOutcome {
    let hosts = summary["hosts"].as_array().cloned().unwrap_or_default();
    let rank = |r: &str| match r {
        "deployed" | "unchanged" => 0,
        "skipped" => 1,
        "failed" => 2,
        "error" => 3,
        _ => 4,
    };
    let worst = hosts
        .iter()
        .filter_map(|h| h["result"].as_str())
        .max_by_key(|r| rank(r))
        .unwrap_or("error");
    // "unchanged" only when every host was unchanged.
    let result = if worst == "deployed" || worst == "unchanged" {
        if hosts.iter().all(|h| h["result"] == "unchanged") {
            "unchanged"
        } else {
            "deployed"
        }
    } else {
        worst
    };
    let message = hosts
        .iter()
        .find(|h| h["result"] == worst && rank(worst) > 0)
        .and_then(|h| {
            Some(format!(
                "{}: {}",
                h["host"].as_str()?,
                h["message"].as_str()?
            ))
        });
    RunOutcome {
        result: result.to_owned(),
        message,
    }
}
