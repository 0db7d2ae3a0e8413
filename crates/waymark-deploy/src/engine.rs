//! The deploy as a library: the one engine the CLI, the queue service and the
//! convergence loop share. [`Engine::deploy`] evaluates the fleet, connects ahead to the
//! hosts the last run deployed, takes the selected hosts through the gates, and ends
//! every process and ssh master of the run before it returns, also when it is
//! cancelled.
//!
//! Cancelling ([`Cancel::cancel`]) ends the run's connections and processes at once and
//! starts nothing new: a host whose activation had not started is left untouched; one
//! whose agent runs is confirmed nothing more, so the agent restores the previous
//! system by itself at its confirmation deadline (never a torn switch). A host whose
//! confirmation was already sent may commit; the next deploy of it finishes its marks.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use waymark_diff::DiffReport;
use waymark_fleet::Fleet;

use crate::events::{Event, HostReport, HostResult, SCHEMA, Sink, ms, now};
use crate::fleet::FleetOptions;
use crate::pipeline::{Deployer, Goal, Interaction, Mode, Settings};
use crate::processes::Processes;
use crate::ssh::Ssh;

mod ahead;

use ahead::Known;

/// What a run deploys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// What the fleet deploys when no host is named (every host, or none: the fleet's
    /// `deployAll`).
    Default,
    /// Host names, `@tag`s and globs (`web-*`).
    Items(Vec<String>),
    /// One host back to a known-good closure: the latest, or the mark named (`previous`:
    /// the one before the latest).
    Rollback { host: String, to: Option<String> },
}

/// One deploy run.
#[derive(Debug, Clone)]
pub struct Request {
    /// The fleet's flake: `FLAKE` (its output `waymark`) or `FLAKE#ATTR`.
    pub flake: String,
    /// Flake inputs replaced for this run (`nix --override-input NAME REF`): for example
    /// a panel's settings as a JSON document the flake reads.
    pub override_inputs: Vec<(String, String)>,
    /// The hosts.
    pub selection: Selection,
    /// Where each host stops.
    pub goal: Goal,
    /// Deploy even when a target does not run its latest known-good closure.
    pub allow_drift: bool,
    /// Show each diff and ask before activating (through the [`Interaction`]); one host
    /// at a time.
    pub ask: bool,
    /// The commit the closures are built from (what the marks record).
    pub rev: Option<String>,
    /// The `waymark` command on the hosts, for their known-good marks.
    pub remote_waymark: String,
    /// Key that signs closures built on this machine (hosts without a build host).
    pub signing_key: Option<PathBuf>,
    /// Where this machine keeps deploy records, the closures hosts were committed with,
    /// and what the last run read of the fleet.
    pub state_dir: PathBuf,
    /// Hosts at a time, failures allowed, canaries.
    pub fleet: FleetOptions,
    /// Extra ssh options, in `NIX_SSHOPTS` form (for example `-i /run/keys/tenant`).
    pub nix_sshopts: String,
    /// The fleet of `flake` (with `override_inputs`), when the caller evaluated it
    /// already: the run does not evaluate it again. It must be that flake's, at that
    /// commit: the closures deployed are the ones it names.
    pub evaluated: Option<Arc<Fleet>>,
}

impl Request {
    /// A deploy of `selection` from `flake` at commit `rev`, with the defaults of
    /// `waymark deploy`.
    pub fn new(flake: impl Into<String>, selection: Selection, rev: Option<String>) -> Self {
        Self {
            flake: flake.into(),
            override_inputs: Vec::new(),
            selection,
            goal: Goal::Switch,
            allow_drift: false,
            ask: false,
            rev,
            remote_waymark: "waymark".into(),
            signing_key: None,
            state_dir: PathBuf::from("/var/lib/waymark"),
            fleet: FleetOptions {
                parallel: 4,
                max_failures: None,
                canary: None,
            },
            nix_sshopts: String::new(),
            evaluated: None,
        }
    }

    fn rollback(&self) -> Option<&str> {
        match &self.selection {
            Selection::Rollback { host, .. } => Some(host),
            _ => None,
        }
    }

    fn items(&self) -> Option<&[String]> {
        match &self.selection {
            Selection::Items(items) => Some(items),
            _ => None,
        }
    }
}

/// A run's end: one report per selected host, in deploy order.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub reports: Vec<HostReport>,
    /// The worst of the hosts' results ([`HostResult::Unchanged`] for none).
    pub worst: HostResult,
    /// How long the fleet's evaluation took.
    pub eval_ms: u64,
    /// Why the run was cancelled, if it was.
    pub cancelled: Option<String>,
}

/// What stopped a run before any host's deploy started.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The fleet's flake could not be evaluated (Nix's message, one line).
    #[error("evaluating {attr}: {message}")]
    Evaluate { attr: String, message: String },
    /// `nix` could not be run.
    #[error("running nix eval (is nix installed and on PATH?): {0}")]
    Nix(#[source] crate::Error),
    /// The fleet description is not what `lib.fleet` writes.
    #[error("reading {attr}: {source}")]
    Description {
        attr: String,
        #[source]
        source: waymark_fleet::Error,
    },
    /// The selection names no host of the fleet, or the fleet's order cannot be made.
    #[error(transparent)]
    Selection(#[from] waymark_fleet::Error),
    /// The ssh control directory or the helpers around it could not be set up.
    #[error("{what}: {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The run was cancelled before its hosts were known.
    #[error("cancelled before any host started: {0}")]
    Cancelled(String),
}

/// A cancellation handle: cloned to whoever may cancel (a signal handler, an API call).
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<CancelState>);

#[derive(Debug, Default)]
struct CancelState {
    why: Mutex<Watch>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Watch {
    reason: Option<String>,
    /// Runs that ended since the handle was made: their watchers stop waiting.
    runs_ended: u64,
}

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels the runs this handle was given to (the first reason stays).
    pub fn cancel(&self, reason: &str) {
        let mut watch = self.0.why.lock().expect("not poisoned");
        watch.reason.get_or_insert_with(|| reason.to_owned());
        self.0.changed.notify_all();
    }

    pub fn is_cancelled(&self) -> bool {
        self.reason().is_some()
    }

    pub fn reason(&self) -> Option<String> {
        self.0.why.lock().expect("not poisoned").reason.clone()
    }

    /// Waits until cancelled (`Some(reason)`) or until a run ends (`None`) after the
    /// `runs_ended` count given.
    fn wait(&self, ended_before: u64) -> Option<String> {
        let watch = self.0.why.lock().expect("not poisoned");
        let watch = self
            .0
            .changed
            .wait_while(watch, |w| {
                w.reason.is_none() && w.runs_ended == ended_before
            })
            .expect("not poisoned");
        watch.reason.clone()
    }

    fn runs_ended(&self) -> u64 {
        self.0.why.lock().expect("not poisoned").runs_ended
    }

    fn end_run(&self) {
        self.0.why.lock().expect("not poisoned").runs_ended += 1;
        self.0.changed.notify_all();
    }
}

/// No one to ask: the diff is not shown and no question comes (`ask` is off).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unattended;

impl Interaction for Unattended {
    fn show_diff(&self, _host: &str, _report: &DiffReport) {}
    fn confirm(&self, _host: &str, _report: &DiffReport) -> bool {
        false
    }
}

/// What every run of this program shares.
#[derive(Debug, Clone)]
pub struct Engine {
    /// The command that relays a nix-daemon connection (`waymark nix-daemon-relay`).
    relay: Vec<String>,
}

impl Engine {
    /// An engine whose runs relay nix-daemon connections with `relay` (a program and its
    /// arguments).
    pub fn new(relay: Vec<String>) -> Self {
        Self { relay }
    }

    /// An engine for the `waymark` program itself (`waymark nix-daemon-relay`).
    pub fn for_this_program() -> std::io::Result<Self> {
        let exe = std::env::current_exe()?;
        Ok(Self::new(vec![
            exe.display().to_string(),
            "nix-daemon-relay".into(),
        ]))
    }

    /// The fleet description of `flake` (`nix eval` of its output `waymark`): nothing
    /// is built or deployed.
    pub fn evaluate(
        &self,
        flake: &str,
        override_inputs: &[(String, String)],
    ) -> Result<Fleet, EngineError> {
        evaluate_fleet(flake, override_inputs, &Processes::default())
    }

    /// Deploys `request`: events go to `sink`, `--ask`'s questions to `interaction`.
    /// Every host ends with a report; the run's processes and connections have ended
    /// when this returns.
    pub fn deploy(
        &self,
        request: &Request,
        sink: &dyn Sink,
        interaction: &dyn Interaction,
        cancel: &Cancel,
    ) -> Result<Outcome, EngineError> {
        if let Some(reason) = cancel.reason() {
            return Err(EngineError::Cancelled(reason));
        }
        let control = control_dir().map_err(|source| EngineError::Setup {
            what: "creating the ssh control directory",
            source,
        })?;
        let ssh = Ssh::new(&request.nix_sshopts, control.path())
            .with_daemon_relay(&self.relay)
            .map_err(|source| EngineError::Setup {
                what: "writing the ssh shim for nix copy",
                source,
            })?
            .with_reaper()
            .map_err(|source| EngineError::Setup {
                what: "starting the watcher that ends the ssh connections if this process is killed",
                source,
            })?
            // No more connections authenticate at once than hosts deploy at once, also
            // those opened ahead (a bastion's sshd drops those beyond its MaxStartups).
            .with_handshake_limit(if request.ask {
                1
            } else {
                request.fleet.parallel.max(1)
            });
        let known_path = request.state_dir.join("ssh-addresses.json");
        let ahead = Known::read(&known_path).sessions(
            request.items(),
            request.rollback(),
            &request.remote_waymark,
            &request.state_dir.join("closures"),
        );
        let ended_before = cancel.runs_ended();
        let outcome = std::thread::scope(|scope| {
            // The cancellation watcher: ends every connection and process of the run at
            // once; the hosts' gates then stop at their next step.
            scope.spawn(|| {
                if let Some(reason) = cancel.wait(ended_before) {
                    sink.emit(Event::Note {
                        schema: SCHEMA,
                        host: String::new(),
                        at: now(),
                        message: format!(
                            "cancelled ({reason}): ending the connections, confirming nothing more"
                        ),
                    });
                    ssh.close_all();
                }
            });
            // The evaluation starts first, then the build hosts' connections: the build
            // is what the rest waits for.
            let eval = scope.spawn(|| {
                if let Some(fleet) = &request.evaluated {
                    return (Ok(Arc::clone(fleet)), 0);
                }
                let started = Instant::now();
                let fleet =
                    evaluate_fleet(&request.flake, &request.override_inputs, ssh.processes());
                (fleet.map(Arc::new), ms(started.elapsed()))
            });
            for (host, _) in &ahead {
                ssh.prewarm(host);
            }
            for (host, script) in ahead {
                scope.spawn(ssh.hold_ahead(host, &script));
            }
            let (fleet, eval_ms) = eval.join().expect("the evaluation does not panic");
            let outcome = fleet.and_then(|fleet| {
                Known::of(&fleet).write(&known_path);
                deploy_evaluated(request, &ssh, &fleet, sink, interaction, cancel)
                    .map(|reports| (reports, eval_ms))
            });
            // Also when the deploy could not start (evaluation, selection): what was set
            // up ahead stops before the scope waits for it.
            ssh.close_all();
            cancel.end_run();
            outcome
        });
        let (mut reports, eval_ms) = match outcome {
            Ok(done) => done,
            Err(e) => {
                return Err(match cancel.reason() {
                    Some(reason) => EngineError::Cancelled(reason),
                    None => e,
                });
            }
        };
        let cancelled = cancel.reason();
        if let Some(reason) = &cancelled {
            for report in &mut reports {
                mark_cancelled(report, reason);
            }
        }
        let worst = reports
            .iter()
            .fold(HostResult::Unchanged, |w, r| w.worst(r.result));
        Ok(Outcome {
            reports,
            worst,
            eval_ms,
            cancelled,
        })
    }
}

/// The rest of a run, once the flake is evaluated (sessions may still be setting up).
fn deploy_evaluated(
    request: &Request,
    ssh: &Ssh,
    fleet: &Fleet,
    sink: &dyn Sink,
    interaction: &dyn Interaction,
    cancel: &Cancel,
) -> Result<Vec<HostReport>, EngineError> {
    let hosts = match &request.selection {
        Selection::Rollback { host, .. } => {
            fleet.host(host)?;
            vec![host.clone()]
        }
        Selection::Items(items) => fleet.to_deploy(Some(items))?,
        Selection::Default => fleet.to_deploy(None)?,
    };
    let plan = fleet.plan(&hosts)?;
    let flake_dir = local_flake_dir(&request.flake);
    let settings = Settings {
        goal: request.goal,
        allow_drift: request.allow_drift,
        ask: request.ask,
        rev: request.rev.clone(),
        remote_waymark: request.remote_waymark.clone(),
        local_signing_key: request.signing_key.clone(),
        records_dir: request.state_dir.join("deploys"),
        closures_dir: request.state_dir.join("closures"),
        release_repo: flake_dir.filter(|d| waymark_release::Releases::open(d).is_ok()),
        run_id: format!("{}-{}", now().replace([':', '-'], ""), std::process::id()),
    };
    let deployer = Deployer::new(fleet, ssh, settings, sink, interaction).with_cancel(cancel);
    let reports = match &request.selection {
        Selection::Rollback { host, to } => {
            vec![deployer.deploy_host(host, &Mode::Rollback { to: to.clone() })]
        }
        _ => deployer.deploy_fleet(
            &plan,
            FleetOptions {
                // One question at a time.
                parallel: if request.ask {
                    1
                } else {
                    request.fleet.parallel
                },
                ..request.fleet
            },
        ),
    };
    deployer.close();
    Ok(reports)
}

/// A host that did not end good in a cancelled run is `cancelled`, saying where its
/// target stands.
fn mark_cancelled(report: &mut HostReport, reason: &str) {
    use waymark_evidence::Gate;
    if report.result.is_good() || report.message.starts_with("not started") {
        return;
    }
    let stands = match report.reached {
        None | Some(Gate::Build | Gate::Diff) => "the target was not touched".to_owned(),
        Some(Gate::DryActivate) => {
            "stopped at dry-activate: if its agent had started, it restores the previous \
             system by itself at its confirmation deadline"
                .to_owned()
        }
        Some(Gate::Test) => "its agent restores the previous system by itself at its \
                             confirmation deadline: nothing was confirmed"
            .to_owned(),
        Some(gate) => format!(
            "stopped during {}: the target may have committed; the next deploy of it \
             finishes its marks, or `waymark known-good list` on it shows what was marked",
            gate.name()
        ),
    };
    report.message = format!("cancelled ({reason}): {stands}");
    report.result = HostResult::Cancelled;
}

/// Evaluates the fleet description of a flake, `nix eval` among `processes` (a run's:
/// its end stops the evaluation too).
pub fn evaluate_fleet(
    flake: &str,
    override_inputs: &[(String, String)],
    processes: &Processes,
) -> Result<Fleet, EngineError> {
    let attr = if flake.contains('#') {
        flake.to_owned()
    } else {
        format!("{flake}#waymark")
    };
    let mut eval = waymark_store::nix_command();
    eval.args(["eval", "--json"]).arg(&attr);
    for (input, reference) in override_inputs {
        eval.args(["--override-input", input, reference]);
    }
    eval.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = processes
        .output(&mut eval, None)
        .map_err(EngineError::Nix)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(EngineError::Evaluate {
            attr,
            message: nix_eval_error(&stderr),
        });
    }
    Fleet::parse(&out.stdout).map_err(|source| EngineError::Description { attr, source })
}

/// Nix's evaluation error as one line: a `throw` from `lib.fleet` names host and option.
fn nix_eval_error(stderr: &str) -> String {
    let message: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("error:"))
        .filter(|l| !l.is_empty() && !l.starts_with("(use") && !l.starts_with("… "))
        .collect();
    message
        .join(" ")
        .trim_start_matches("error:")
        .trim()
        .to_owned()
}

/// The directory of a local flake reference, for its commit and release tags.
pub fn local_flake_dir(flake: &str) -> Option<PathBuf> {
    let r = flake.split('#').next().unwrap_or(flake);
    let r = r.split('?').next().unwrap_or(r);
    let path = r
        .strip_prefix("path:")
        .or_else(|| r.strip_prefix("git+file://"))
        .unwrap_or(r);
    (!path.contains("://") && !path.contains(':'))
        .then(|| PathBuf::from(if path.is_empty() { "." } else { path }))
}

fn control_dir() -> std::io::Result<tempfile::TempDir> {
    // Short: ssh control socket paths are limited to about 100 bytes. Only this user
    // may enter it: it holds the connections' sockets and forwarded nix-daemon sockets.
    tempfile::Builder::new()
        .prefix("wm-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in("/tmp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_wakes_the_watcher_and_a_run_end_releases_it() {
        let cancel = Cancel::new();
        let before = cancel.runs_ended();
        let waiter = {
            let cancel = cancel.clone();
            std::thread::spawn(move || cancel.wait(before))
        };
        cancel.cancel("superseded");
        cancel.cancel("second reason");
        assert_eq!(waiter.join().unwrap().as_deref(), Some("superseded"));

        let quiet = Cancel::new();
        let before = quiet.runs_ended();
        let waiter = {
            let quiet = quiet.clone();
            std::thread::spawn(move || quiet.wait(before))
        };
        quiet.end_run();
        assert_eq!(waiter.join().unwrap(), None);
        assert!(!quiet.is_cancelled());
    }

    fn report(result: HostResult, reached: Option<waymark_evidence::Gate>) -> HostReport {
        HostReport {
            host: "web1".into(),
            result,
            reached,
            closure: None,
            running: None,
            mark: None,
            release_tag: None,
            change: None,
            message: "connection closed".into(),
            duration_ms: 0,
            ssh_connections: 0,
            nix_ms: 0,
            remote_ms: 0,
            log: Vec::new(),
        }
    }

    #[test]
    fn a_cancelled_host_says_where_its_target_stands() {
        use waymark_evidence::Gate;
        let mut r = report(HostResult::Error, Some(Gate::Build));
        mark_cancelled(&mut r, "superseded by job 7");
        assert_eq!(r.result, HostResult::Cancelled);
        assert_eq!(
            r.message,
            "cancelled (superseded by job 7): the target was not touched"
        );
        let mut r = report(HostResult::NeedsHuman, Some(Gate::Test));
        mark_cancelled(&mut r, "user");
        assert!(r.message.contains("restores the previous system by itself"));
        let mut r = report(HostResult::NeedsHuman, Some(Gate::Switch));
        mark_cancelled(&mut r, "user");
        assert!(r.message.contains("may have committed"), "{}", r.message);
        // A host that got there stays deployed.
        let mut r = report(HostResult::Deployed, Some(Gate::Mark));
        mark_cancelled(&mut r, "user");
        assert_eq!(r.result, HostResult::Deployed);
    }

    #[test]
    fn nix_eval_errors_read_as_one_line() {
        let stderr = "warning: Git tree is dirty\nerror: host web1: targetHost is missing\n\n       … while evaluating\n(use '--show-trace' to show detailed location information)\n";
        assert_eq!(nix_eval_error(stderr), "host web1: targetHost is missing");
    }

    #[test]
    fn local_flake_references_name_their_directory() {
        assert_eq!(local_flake_dir("."), Some(PathBuf::from(".")));
        assert_eq!(local_flake_dir(""), Some(PathBuf::from(".")));
        assert_eq!(
            local_flake_dir("path:/srv/fleet#waymark"),
            Some(PathBuf::from("/srv/fleet"))
        );
        assert_eq!(
            local_flake_dir("git+file:///srv/fleet?ref=main"),
            Some(PathBuf::from("/srv/fleet"))
        );
        assert_eq!(local_flake_dir("github:org/fleet"), None);
        assert_eq!(local_flake_dir("https://example.org/f.tar.gz"), None);
    }
}
