//! What runs a job: the [`Executor`] trait, and [`EngineExecutor`], which drives the
//! deploy engine `waymark deploy` uses (`waymark_deploy::Engine`). Synchronous: the
//! runner calls it from `spawn_blocking`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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
    /// (`config.json`; the runner gives every job one, `null` when it has no document).
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

/// What runs on cancel.
type Hook = Box<dyn Fn(&str) + Send>;

#[derive(Default)]
struct CancelInner {
    reason: Option<String>,
    hooks: Vec<Hook>,
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

/// Runs jobs with the deploy engine of `waymark deploy`, in this process.
pub struct EngineExecutor {
    pub engine: waymark_deploy::Engine,
    /// `NIX_SSHOPTS` every run starts from (the service's own).
    pub base_sshopts: String,
    /// The `waymark` command on the hosts.
    pub remote_waymark: String,
    /// This machine's deploy records.
    pub state_dir: PathBuf,
    /// Key signing closures built here.
    pub signing_key: Option<PathBuf>,
}

impl EngineExecutor {
    /// The engine of this program, with the settings `waymark deploy` reads from the
    /// environment (`NIX_SSHOPTS`, `WAYMARK_REMOTE_COMMAND`, `WAYMARK_STATE_DIR`,
    /// `WAYMARK_SIGNING_KEY`).
    pub fn from_env() -> std::io::Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Ok(Self {
            engine: waymark_deploy::Engine::for_this_program()?,
            base_sshopts: var("NIX_SSHOPTS").unwrap_or_default(),
            remote_waymark: var("WAYMARK_REMOTE_COMMAND").unwrap_or_else(|| "waymark".into()),
            state_dir: var("WAYMARK_STATE_DIR")
                .map_or_else(|| "/var/lib/waymark".into(), PathBuf::from),
            signing_key: var("WAYMARK_SIGNING_KEY").map(PathBuf::from),
        })
    }
}

/// The flake reference pinned at `rev`: what a job builds is its revision, whatever the
/// branch has moved to since. A local path becomes `git+file://`; a reference that
/// takes parameters gets `rev=` (the attribute after `#` stays).
pub fn pin_flake(flake: &str, rev: &str) -> String {
    let (base, attr) = match flake.split_once('#') {
        Some((b, a)) => (b, format!("#{a}")),
        None => (flake, String::new()),
    };
    let base = if base.starts_with('/') {
        format!("git+file://{base}")
    } else if let Some(path) = base.strip_prefix("path:") {
        // A path: flake has no history to pin; git+file does.
        format!("git+file://{path}")
    } else {
        base.to_owned()
    };
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}rev={rev}{attr}")
}

/// The engine's goal of a deployment's goal name (checked by the API).
fn goal(name: &str) -> waymark_deploy::Goal {
    use waymark_deploy::Goal;
    match name {
        "build" => Goal::Build,
        "diff" => Goal::Diff,
        "dry-activate" => Goal::DryActivate,
        "test" => Goal::Test,
        "boot" => Goal::Boot,
        _ => Goal::Switch,
    }
}

/// Events of the engine, as JSON, to the job's progress.
struct ToProgress<'a>(&'a dyn Progress);

impl waymark_deploy::Sink for ToProgress<'_> {
    fn emit(&self, event: waymark_deploy::Event) {
        if let Ok(v) = serde_json::to_value(&event) {
            self.0.event(v);
        }
    }
}

fn failed(message: String) -> RunOutcome {
    RunOutcome {
        result: "error".into(),
        message: Some(message),
    }
}

impl Executor for EngineExecutor {
    fn run(&self, spec: &RunSpec, progress: &dyn Progress, cancel: &CancelFlag) -> RunOutcome {
        let mut request = waymark_deploy::Request::new(
            pin_flake(&spec.flake, &spec.rev),
            waymark_deploy::Selection::Items(spec.hosts.clone()),
            Some(spec.rev.clone()),
        );
        request.goal = goal(&spec.goal);
        request.remote_waymark.clone_from(&self.remote_waymark);
        request.state_dir.clone_from(&self.state_dir);
        request.signing_key.clone_from(&self.signing_key);
        if let Some((input, dir)) = &spec.config {
            request
                .override_inputs
                .push((input.clone(), format!("path:{}", dir.display())));
        }
        request.nix_sshopts.clone_from(&self.base_sshopts);
        if let Some(identity) = &spec.identity {
            // NIX_SSHOPTS splits on spaces: the identity path was checked to have none.
            let opts = format!("{} -i {}", request.nix_sshopts, identity.display());
            opts.trim().clone_into(&mut request.nix_sshopts);
        }
        let engine_cancel = waymark_deploy::Cancel::new();
        let c = engine_cancel.clone();
        cancel.on_cancel(move |reason| c.cancel(reason));
        match self.engine.deploy(
            &request,
            &ToProgress(progress),
            &waymark_deploy::Unattended,
            &engine_cancel,
        ) {
            Ok(outcome) => {
                let reports: Vec<serde_json::Value> = outcome
                    .reports
                    .iter()
                    .filter_map(|r| serde_json::to_value(r).ok())
                    .collect();
                outcome_of_reports(&reports)
            }
            Err(waymark_deploy::EngineError::Cancelled(reason)) => RunOutcome {
                result: "cancelled".into(),
                message: Some(reason),
            },
            Err(e) => {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    message.push_str(&format!(": {s}"));
                    source = s.source();
                }
                failed(message)
            }
        }
    }
}

/// The outcome the hosts' reports tell: the worst result (`unchanged` only when every
/// host was), and the first worst host's message.
pub fn outcome_of_reports(hosts: &[Value]) -> RunOutcome {
    let rank = |r: &str| match r {
        "deployed" | "unchanged" => 0,
        "skipped" => 1,
        "cancelled" => 2,
        "failed" => 3,
        "error" => 4,
        _ => 5,
    };
    let worst = hosts
        .iter()
        .filter_map(|h| h["result"].as_str())
        .max_by_key(|r| rank(r))
        .unwrap_or("unchanged");
    let result = if rank(worst) == 0 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flakes_are_pinned_at_the_job_revision() {
        let r = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            pin_flake("/srv/fleet", r),
            format!("git+file:///srv/fleet?rev={r}")
        );
        assert_eq!(
            pin_flake("git+https://example.org/f?ref=main#fleet", r),
            format!("git+https://example.org/f?ref=main&rev={r}#fleet")
        );
        assert_eq!(pin_flake("github:o/f", r), format!("github:o/f?rev={r}"));
    }

    #[test]
    fn the_worst_host_decides_and_unchanged_needs_every_host() {
        let h = |host: &str, result: &str| json!({"host": host, "result": result, "message": format!("{host} {result}")});
        let o = outcome_of_reports(&[h("a", "unchanged"), h("b", "unchanged")]);
        assert_eq!((o.result.as_str(), o.message), ("unchanged", None));
        assert_eq!(
            outcome_of_reports(&[h("a", "unchanged"), h("b", "deployed")]).result,
            "deployed"
        );
        let o = outcome_of_reports(&[h("a", "failed"), h("b", "needs-human"), h("c", "deployed")]);
        assert_eq!(
            (o.result.as_str(), o.message.as_deref()),
            ("needs-human", Some("b: b needs-human"))
        );
        assert_eq!(
            outcome_of_reports(&[h("a", "skipped"), h("b", "cancelled")]).result,
            "cancelled"
        );
    }
}
