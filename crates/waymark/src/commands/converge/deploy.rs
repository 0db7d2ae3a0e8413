//! How the loop deploys a host: behind [`Deploys`], so the loop does not depend on how
//! a deploy is carried out. [`InProcess`] is the deploy library's engine
//! (`waymark_deploy::Engine`), one run per host: the same gates, records, marks and
//! release tags as a person's `waymark deploy`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use waymark_converge::Attempt;
use waymark_deploy::{Cancel, Discard, Engine, HostResult, Request, Selection, Unattended};

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

/// What every deploy of the loop shares.
#[derive(Debug, Clone)]
pub struct Common {
    /// The waymark command on the hosts.
    pub remote_waymark: String,
    /// Key signing closures built on this machine.
    pub signing_key: Option<PathBuf>,
    /// This machine's records.
    pub state_dir: PathBuf,
    /// Extra ssh options (`NIX_SSHOPTS` form).
    pub nix_sshopts: String,
}

/// The release commits the controller evaluated, by commit: the fleet, or why it could
/// not be read. A deploy of one of them does not evaluate it again.
pub type Evaluated = Arc<Mutex<BTreeMap<String, Result<Arc<waymark_fleet::Fleet>, String>>>>;

/// The deploy library's engine, in this process.
pub struct InProcess {
    /// The engine.
    pub engine: Engine,
    /// What the release watcher evaluated.
    pub evaluated: Evaluated,
    /// Settings of every run.
    pub common: Common,
    /// Runs under way, by host.
    pub running: Mutex<BTreeMap<String, Cancel>>,
}

/// Maps a deploy's result to the state machine's view: a gate that failed or refused
/// is the closure's failure (remembered); anything that kept the deploy from starting or
/// finishing (unreachable, evaluation, build, cancelled) is retried with backoff.
pub fn attempt_of(result: HostResult, message: &str) -> Attempt {
    match result {
        HostResult::Deployed => Attempt::Good { changed: true },
        HostResult::Unchanged => Attempt::Good { changed: false },
        HostResult::Failed | HostResult::NeedsHuman => Attempt::GateFailed(message.to_owned()),
        HostResult::Skipped | HostResult::Error | HostResult::Cancelled => {
            Attempt::Error(message.to_owned())
        }
    }
}

impl Deploys for InProcess {
    fn deploy(&self, job: &Job) -> Ended {
        let selection = match &job.mark {
            Some(mark) => Selection::Rollback {
                host: job.host.clone(),
                to: Some(mark.clone()),
            },
            None => Selection::Items(vec![job.host.clone()]),
        };
        let mut request = Request::new(job.flake.clone(), selection, job.rev.clone());
        request.allow_drift = job.allow_drift;
        request
            .remote_waymark
            .clone_from(&self.common.remote_waymark);
        request.signing_key.clone_from(&self.common.signing_key);
        request.state_dir.clone_from(&self.common.state_dir);
        request.nix_sshopts.clone_from(&self.common.nix_sshopts);
        request.fleet.parallel = 1;
        if job.mark.is_none()
            && let Some(rev) = &job.rev
        {
            request.evaluated = self
                .evaluated
                .lock()
                .expect("not poisoned")
                .get(rev)
                .and_then(|f| f.as_ref().ok().cloned());
        }
        let cancel = Cancel::new();
        self.running
            .lock()
            .expect("not poisoned")
            .insert(job.host.clone(), cancel.clone());
        let outcome = self.engine.deploy(&request, &Discard, &Unattended, &cancel);
        self.running.lock().expect("not poisoned").remove(&job.host);
        match outcome {
            Ok(o) => match o.reports.into_iter().find(|r| r.host == job.host) {
                Some(r) => Ended {
                    attempt: attempt_of(r.result, &r.message),
                    result: serde_json::to_value(r.result)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    message: r.message,
                },
                None => error(format!("the deploy did not report on {}", job.host)),
            },
            Err(e) => error(format!("{e:#}")),
        }
    }

    fn stop_all(&self) {
        for cancel in self.running.lock().expect("not poisoned").values() {
            cancel.cancel("the convergence controller is ending");
        }
    }
}

fn error(message: String) -> Ended {
    Ended {
        attempt: Attempt::Error(message.clone()),
        result: "error".into(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_map_to_the_machines_view() {
        use HostResult as R;
        assert_eq!(attempt_of(R::Deployed, ""), Attempt::Good { changed: true });
        assert_eq!(
            attempt_of(R::Unchanged, ""),
            Attempt::Good { changed: false }
        );
        assert!(matches!(attempt_of(R::Failed, "test"), Attempt::GateFailed(m) if m == "test"));
        assert!(matches!(
            attempt_of(R::NeedsHuman, ""),
            Attempt::GateFailed(_)
        ));
        for r in [R::Error, R::Skipped, R::Cancelled] {
            assert!(matches!(attempt_of(r, "ssh"), Attempt::Error(_)));
        }
    }
}
