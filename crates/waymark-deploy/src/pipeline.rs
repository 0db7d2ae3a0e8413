//! One host through the gates. Each gate either passes or stops the host with a
//! [`HostResult`] that says where the target stands; the only way to `Deployed` at the
//! goal `switch` is the agent's `committed`, read back over a new SSH connection, and
//! the target verified to run the new closure.
//!
//! Here: the deploy's settings and the [`Deployer`], one host's run ([`Deployer::deploy_host`])
//! and the order of its gates. Each gate's work is a module below: `probe` (what the
//! target runs), `build` (gate 1: build and copy), `diff` (gate 2), `activate` (gates 3
//! and 4, and reading back the agent's restore), `confirm` (gate 5's commit), `finish`
//! (the marks, the record here, and finishing an interrupted deploy), `scripts` (the
//! sessions the hosts hold; the scripts and their typed replies are
//! [`crate::protocol`]'s). The decisions they take are in [`crate::decide`], pure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use waymark_diff::DiffReport;
use waymark_evidence::{DiffSummary, Evidence, Gate, GateResult, Outcome};
use waymark_fleet::{Fleet, Host};
use waymark_known_good::Record;
use waymark_store::{DrvFiles, Store, closure_from_path_info, read_closure};

use crate::activation::{AgentState, DryRun};
use crate::batch::{Batcher, batch_script, split_batch};
use crate::decide::{
    Baseline, EXIT_AGENT_NOT_STARTED, EXIT_BUSY, EXIT_CONFIRM_LATE, already_there, baseline,
    commit_verified, restore_verified, rollback_target,
};
use crate::error::{BuildError, CommandError, Refusal, SendError, StopCause, Verdict};
use crate::events::{Event, HostReport, HostResult, SCHEMA, Sink, ms, now};
use crate::progress::NixLog;
use crate::ssh::{Endpoint, Held, Reply, Ssh, Talk};
use crate::unfinished::{AgentSeen, TargetNow, read_journals, unfinished};
use waymark_fault::at as fault;

mod activate;
mod build;
mod confirm;
mod diff;
mod finish;
mod probe;
mod scripts;

use crate::protocol::{
    self, AgentReport, BootReply, BuildReply, ConfirmReply, LaunchReply, Looked, MissingReply,
    PROBED, ProbeReply, script,
};
use activate::checks_budget;
use build::Built;
use diff::Diffed;
use scripts::{Until, borrowed, serve, serve_relaying, wait_params, wait_script};
pub use scripts::{build_session_script, probe_script};

/// The closure `host` was last committed with, as kept in `closures_dir`; none when
/// there is no readable one (it only saves reading it on the target).
pub fn kept_closure(closures_dir: &std::path::Path, host: &str) -> Option<waymark_diff::Closure> {
    let bytes = std::fs::read(closures_dir.join(format!("{host}.json"))).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Where a deploy stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Goal {
    /// Build on the builder and copy to the target.
    Build,
    /// Also diff against what the target runs.
    Diff,
    /// Also dry-activate.
    DryActivate,
    /// Also activate with `switch-to-configuration test` and run the health checks;
    /// the target keeps running it, nothing is committed or marked.
    Test,
    /// Every gate: commit as the running system and the boot default, mark known-good.
    Switch,
    /// Every gate, but the new closure becomes the boot default only: after the test
    /// activation the previous closure runs again until the next boot.
    Boot,
}

/// What is deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The closure the flake declares now, built first.
    Deploy,
    /// A known-good closure again (gates 2-5, no build): the latest, or the mark named
    /// (`previous` names the one before the latest).
    Rollback {
        /// The mark, default the latest.
        to: Option<String>,
    },
}

/// Questions for the person at the terminal, and the diff for them to read.
pub trait Interaction: Sync {
    /// Shows a host's closure diff (goal `diff`, or before asking).
    fn show_diff(&self, host: &str, report: &DiffReport);
    /// Asks whether to go on after the diff (`--ask`).
    fn confirm(&self, host: &str, report: &DiffReport) -> bool;
}

/// How every host of a run is deployed.
pub struct Settings {
    /// Where to stop.
    pub goal: Goal,
    /// Deploy even when the target does not run its latest known-good closure.
    pub allow_drift: bool,
    /// Ask before activating (after the diff).
    pub ask: bool,
    /// The commit the closures are built from (what the marks record).
    pub rev: Option<String>,
    /// The `waymark` command on the hosts, for their known-good marks.
    pub remote_waymark: String,
    /// Key that signs closures built on this machine (hosts without a build host).
    pub local_signing_key: Option<PathBuf>,
    /// Where this machine keeps the deploy records (`<dir>/<host>/<mark>.json`).
    pub records_dir: PathBuf,
    /// Where this machine keeps the closure each host was last committed with
    /// (`<dir>/<host>.json`): the next deploy's diff reads it instead of asking the
    /// target, when the target still runs it.
    pub closures_dir: PathBuf,
    /// The repository release tags go to, for hosts with `tagReleases`.
    pub release_repo: Option<PathBuf>,
    /// Unique id of this run (names the agent's directory on the targets).
    pub run_id: String,
}

/// Deploys hosts of one fleet.
pub struct Deployer<'a> {
    fleet: &'a Fleet,
    ssh: &'a Ssh,
    settings: Settings,
    sink: &'a dyn Sink,
    interaction: &'a dyn Interaction,
    /// Builds done for several hosts in one call, by host: how and the closure's
    /// path-info, or why not.
    /// `None` while the batch is under way.
    pub(crate) prebuilt: Mutex<BTreeMap<String, Option<BuildResult>>>,
    /// Signalled when a batch build is done.
    pub(crate) prebuilt_done: std::sync::Condvar,
    /// The build hosts' build sessions, kept to run their marks ([`SERVE`]), by
    /// destination; `None` once one ended.
    build_sessions: Mutex<BTreeMap<String, std::sync::Arc<Mutex<Option<Talk>>>>>,
    /// What waits to run on each build host, by destination.
    build_batches: Mutex<BTreeMap<String, std::sync::Arc<Batcher>>>,
    /// The last log lines of a failed build, by the host it was for (its report's).
    build_logs: Mutex<BTreeMap<String, Vec<String>>>,
    /// The run's cancellation: no gate starts once it is cancelled.
    cancel: Option<&'a crate::engine::Cancel>,
}

/// A build's outcome for one host: how it was built and its closure's path-info, or
/// why it was not.
pub(crate) type BuildResult = Result<(String, String), BuildError>;

/// Why a host stopped before the end: where it stands, and the cause.
struct Stop {
    result: HostResult,
    cause: StopCause,
}

fn stop(result: HostResult, cause: impl Into<StopCause>) -> Stop {
    Stop {
        result,
        cause: cause.into(),
    }
}

/// What one host's run deploys: a closure built from the flake (where, from which
/// derivation), or a known-good closure again (the mark is found on the target).
enum Wanted {
    Build {
        at: BuildAt,
        drv: String,
        closure: String,
    },
    Rollback {
        to: Option<String>,
    },
}

impl Wanted {
    /// Where it is built; `None` for a rollback.
    fn build_at(&self) -> Option<&BuildAt> {
        match self {
            Self::Build { at, .. } => Some(at),
            Self::Rollback { .. } => None,
        }
    }
}

/// Where a host's closure is built.
enum BuildAt {
    /// On a build host, signed there.
    Builder { host: Endpoint, key: String },
    /// Here, signed with the local key.
    Local { key: PathBuf },
    /// On the target itself (`allowBuildOnTarget`, no build host).
    Target,
}

/// One host's run: what it went through so far.
struct Run<'h> {
    name: String,
    host: &'h Host,
    target: Endpoint,
    gates: Vec<GateResult>,
    reached: Option<Gate>,
    closure: Option<String>,
    drv: Option<String>,
    rev: Option<String>,
    running: Option<String>,
    change: Option<String>,
    diff: Option<DiffSummary>,
    mark: Option<String>,
    release_tag: Option<String>,
    fresh_connections: u32,
    masters_opened: u32,
    nix_time: Duration,
    remote_time: Duration,
    /// Time measured in one gate that belongs to the next (the shared round trip).
    carry: Duration,
    notes: Vec<String>,
}

/// What the target said when probed.
#[derive(Default)]
struct Probe {
    /// The probe's session, kept open for gate 3: it runs the script it is sent next.
    held: Option<Talk>,
    running: Option<String>,
    /// What the system profile (the boot default) points at.
    profile: Option<String>,
    /// `nix path-info --json --recursive` of what runs.
    old_closure: Option<String>,
    /// What runs, as this machine kept it when it committed it (then not read there).
    known_old: Option<waymark_diff::Closure>,
    marks: Vec<Record>,
    failed_units: Option<Vec<String>>,
    /// Agents whose deploy left its evidence and did not say it marked.
    agents: Vec<AgentSeen>,
    /// The agent directory of another deploy at work on the target, if any.
    active: Option<String>,
}

impl<'a> Deployer<'a> {
    /// A deployer for `fleet`, reaching hosts with `ssh`.
    pub fn new(
        fleet: &'a Fleet,
        ssh: &'a Ssh,
        settings: Settings,
        sink: &'a dyn Sink,
        interaction: &'a dyn Interaction,
    ) -> Self {
        Self {
            fleet,
            ssh,
            settings,
            sink,
            interaction,
            prebuilt: Mutex::new(BTreeMap::new()),
            prebuilt_done: std::sync::Condvar::new(),
            build_sessions: Mutex::new(BTreeMap::new()),
            build_batches: Mutex::new(BTreeMap::new()),
            build_logs: Mutex::new(BTreeMap::new()),
            cancel: None,
        }
    }

    /// No gate starts once `cancel` is cancelled (its watcher ends the connections).
    #[must_use]
    pub fn with_cancel(mut self, cancel: &'a crate::engine::Cancel) -> Self {
        self.cancel = Some(cancel);
        self
    }

    /// Why the run was cancelled, if it was.
    pub(crate) fn cancelled(&self) -> Option<String> {
        self.cancel.and_then(crate::engine::Cancel::reason)
    }

    /// Ends the sessions kept open and closes the master connections this deployer
    /// opened.
    pub fn close(&self) {
        std::mem::take(&mut *self.build_sessions.lock().expect("not poisoned"));
        self.ssh.close_all();
    }

    pub(crate) fn fleet(&self) -> &Fleet {
        self.fleet
    }

    pub(crate) fn sink(&self) -> &dyn Sink {
        self.sink
    }

    pub(crate) fn endpoint(&self, name: &str) -> Option<Endpoint> {
        Endpoint::of(self.fleet, name)
    }

    /// Runs on a host over its master connection, counting the master the first time.
    fn remote(&self, run: &mut Run, host: &Endpoint, script: &str) -> Reply {
        self.remote_with_input(run, host, script, None)
    }

    fn remote_with_input(
        &self,
        run: &mut Run,
        host: &Endpoint,
        script: &str,
        input: Option<&[u8]>,
    ) -> Reply {
        run.masters_opened += self.opened(host);
        let started = Instant::now();
        let reply = self
            .ssh
            .run_with_input(host, script, input)
            .unwrap_or_else(|e| Reply::lost(&e));
        run.remote_time += started.elapsed();
        reply
    }

    /// Makes sure the master connection to `host` is open: 1 when this is its first use
    /// in the run (it counts for this host), else 0. A host that cannot be reached fails
    /// in the command that follows.
    fn opened(&self, host: &Endpoint) -> u32 {
        let _ = self.ssh.ensure_master(host);
        u32::from(self.ssh.claim(host))
    }

    fn emit_note(&self, run: &mut Run, message: String) {
        self.sink.emit(Event::Note {
            schema: SCHEMA,
            host: run.name.clone(),
            at: now(),
            message: message.clone(),
        });
        run.notes.push(message);
    }

    /// Runs one gate: events, timing, and its line in the evidence.
    fn gate<T>(
        &self,
        run: &mut Run,
        gate: Gate,
        body: impl FnOnce(&Self, &mut Run) -> Result<(T, String), Stop>,
    ) -> Result<T, Stop> {
        if let Some(reason) = self.cancelled() {
            return Err(stop(
                HostResult::Cancelled,
                StopCause::Cancelled {
                    reason,
                    gate: gate.name(),
                },
            ));
        }
        let started_at = now();
        let started = Instant::now();
        run.reached = Some(gate);
        self.sink.emit(Event::Start {
            schema: SCHEMA,
            host: run.name.clone(),
            gate,
            at: started_at.clone(),
        });
        let carried_in = std::mem::take(&mut run.carry);
        let outcome = body(self, run);
        let duration_ms = ms((started.elapsed() + carried_in).saturating_sub(run.carry));
        let (result, summary) = match &outcome {
            Ok((_, summary)) => (Outcome::Passed, summary.clone()),
            Err(s) => (Outcome::Failed, s.cause.to_string()),
        };
        run.gates.push(GateResult {
            gate,
            result,
            started_at,
            duration_ms,
            summary: Some(summary.clone()),
        });
        self.sink.emit(Event::End {
            schema: SCHEMA,
            host: run.name.clone(),
            gate,
            result,
            at: now(),
            duration_ms,
            message: Some(summary),
        });
        outcome.map(|(v, _)| v)
    }

    /// Deploys (or rolls back) one host; never panics on the host's behalf, always
    /// reports.
    pub fn deploy_host(&self, name: &str, mode: &Mode) -> HostReport {
        let started = Instant::now();
        let Some(host) = self.fleet.hosts.get(name) else {
            return HostReport {
                host: name.to_owned(),
                result: HostResult::Error,
                reached: None,
                closure: None,
                running: None,
                mark: None,
                release_tag: None,
                change: None,
                message: format!("{name} is not a host of the fleet"),
                duration_ms: 0,
                ssh_connections: 0,
                nix_ms: 0,
                remote_ms: 0,
                log: Vec::new(),
            };
        };
        let mut run = Run {
            name: name.to_owned(),
            host,
            target: self.endpoint(name).expect("a fleet host"),
            gates: Vec::new(),
            reached: None,
            closure: None,
            drv: None,
            rev: self.settings.rev.clone(),
            running: None,
            change: None,
            diff: None,
            mark: None,
            release_tag: None,
            fresh_connections: 0,
            masters_opened: 0,
            nix_time: Duration::ZERO,
            remote_time: Duration::ZERO,
            carry: Duration::ZERO,
            notes: Vec::new(),
        };
        let (result, message) = match self.pipeline(&mut run, mode) {
            Ok((result, message)) => (result, message),
            Err(s) => (s.result, s.cause.to_string()),
        };
        // Restored or never touched: the target did not commit, nothing to finish later.
        if matches!(result, HostResult::Failed | HostResult::Error) {
            self.drop_journal(name);
        }
        let report = HostReport {
            host: name.to_owned(),
            result,
            reached: run.reached,
            closure: run.closure.clone(),
            running: run.running.clone(),
            mark: run.mark.clone(),
            release_tag: run.release_tag.clone(),
            change: run.change.clone(),
            message,
            duration_ms: ms(started.elapsed()),
            ssh_connections: run.masters_opened + run.fresh_connections,
            nix_ms: ms(run.nix_time),
            remote_ms: ms(run.remote_time),
            log: self
                .build_logs
                .lock()
                .expect("not poisoned")
                .remove(name)
                .unwrap_or_default(),
        };
        self.sink.emit(Event::Host {
            schema: SCHEMA,
            at: now(),
            report: report.clone(),
        });
        report
    }

    fn pipeline(&self, run: &mut Run, mode: &Mode) -> Result<(HostResult, String), Stop> {
        let wanted = match mode {
            Mode::Deploy => {
                let at = self.build_at(run)?;
                let drv = run.host.toplevel.clone().ok_or_else(|| {
                    stop(
                        HostResult::Error,
                        StopCause::Settings(format!(
                            "{} has no system.build.toplevel to deploy",
                            run.name
                        )),
                    )
                })?;
                let closure = run.host.closure.clone().ok_or_else(|| {
                    stop(
                        HostResult::Error,
                        StopCause::Settings(format!(
                            "the fleet description gives no closure path for {}",
                            run.name
                        )),
                    )
                })?;
                if run.rev.is_none() {
                    return Err(stop(
                        HostResult::Error,
                        StopCause::Settings(
                            "no commit to record: deploy from a clean git checkout, or pass --rev"
                                .into(),
                        ),
                    ));
                }
                run.drv = Some(drv.clone());
                run.closure = Some(closure.clone());
                Wanted::Build { at, drv, closure }
            }
            Mode::Rollback { to } => Wanted::Rollback { to: to.clone() },
        };
        let build_at = wanted.build_at();
        // The two handshakes at once: the build host's master opens while the target
        // is probed.
        let builder = match &build_at {
            Some(BuildAt::Builder { host, .. }) => Some(host.clone()),
            _ => None,
        };
        // The build host builds while the target is probed (unless a batch build did it).
        let early = match &build_at {
            Some(BuildAt::Builder { key, .. })
                if !self
                    .prebuilt
                    .lock()
                    .expect("not poisoned")
                    .contains_key(&run.name) =>
            {
                match &wanted {
                    Wanted::Build { drv, closure, .. } => {
                        Some((key.clone(), drv.clone(), closure.clone()))
                    }
                    Wanted::Rollback { .. } => None,
                }
            }
            _ => None,
        };
        let name = run.name.clone();
        let (probe, early) = std::thread::scope(|scope| {
            let early = match (&builder, early) {
                (Some(b), Some((key, drv, out))) => {
                    // build_on opens the master; count it here, where it is known.
                    run.masters_opened += u32::from(self.ssh.claim(b));
                    Some(scope.spawn(move || {
                        let started = Instant::now();
                        let result = self.build_on(b, &key, &[(drv, out)], &[name]).remove(0);
                        (result, started.elapsed())
                    }))
                }
                (Some(b), _) => {
                    run.masters_opened += u32::from(self.ssh.claim(b));
                    scope.spawn(|| self.ssh.ensure_master(b));
                    None
                }
                _ => None,
            };
            let probe = self.probe(run);
            (
                probe,
                early.map(|h| h.join().expect("building does not panic")),
            )
        });
        let mut probe = probe?;
        run.running.clone_from(&probe.running);
        // A deploy of this host interrupted after its commit is finished first: its own
        // agent committed it after the gates passed, so it is not drift.
        let journals = read_journals(&self.settings.records_dir, &run.name);
        let left = unfinished(
            &TargetNow {
                host: &run.name,
                running: probe.running.as_deref(),
                profile: probe.profile.as_deref(),
                latest: probe.marks.last(),
            },
            &probe.agents,
            &journals,
            |r| self.record_path(r).exists(),
        );
        // (A build touches no target: it leaves that to the next deploy that does.)
        if let Some(left) = left.filter(|_| self.settings.goal > Goal::Build) {
            // A rollback builds nothing, but the deploy it finishes was built there.
            let builder = match build_at {
                Some(BuildAt::Builder { host, .. }) => Some(host.clone()),
                Some(_) => None,
                None => match self.build_at(run) {
                    Ok(BuildAt::Builder { host, .. }) => Some(host),
                    _ => None,
                },
            };
            let record = self.finish_interrupted(run, left, builder.as_ref())?;
            if probe.marks.last() != Some(&record) {
                probe.marks.push(record);
            }
        }
        let latest = probe.marks.last().cloned();
        let closure = match &wanted {
            Wanted::Build { closure, .. } => closure.clone(),
            Wanted::Rollback { to } => {
                let record = rollback_target(&probe.marks, to.as_deref())
                    .cloned()
                    .ok_or_else(|| {
                        stop(
                            HostResult::Failed,
                            StopCause::NoMark {
                                host: run.name.clone(),
                                which: to.as_deref().unwrap_or("at all").to_owned(),
                            },
                        )
                    })?;
                run.closure = Some(record.closure.clone());
                run.drv.clone_from(&record.drv);
                run.rev = Some(record.rev.clone());
                if to.is_none()
                    && already_there(
                        probe.running.as_deref(),
                        probe.profile.as_deref(),
                        Some(&record),
                        &record.closure,
                    )
                {
                    return Ok((
                        HostResult::Unchanged,
                        format!("already runs its latest known-good mark {}", record.mark),
                    ));
                }
                self.emit_note(
                    run,
                    format!("rolling back to known-good mark {}", record.mark),
                );
                record.closure
            }
        };
        if mode == &Mode::Deploy
            && self.settings.goal == Goal::Switch
            && already_there(
                probe.running.as_deref(),
                probe.profile.as_deref(),
                latest.as_ref(),
                &closure,
            )
        {
            run.change = Some("no change".into());
            return Ok((
                HostResult::Unchanged,
                "already runs this closure, marked known-good".into(),
            ));
        }

        // The probe's session waits for gate 3's script while the closure is built and
        // copied; it only runs once gates 1 and 2 passed, and never if they did not.
        let dir = format!("/run/waymark/deploy/{}-{}", self.settings.run_id, run.name);
        let mut held = probe.held.take();
        if self.settings.goal <= Goal::Diff || self.settings.ask || probe.running.is_none() {
            held = None; // its input ends: it ends
        }

        // Gate 1: build on the builder, copy from there to the target. A rollback only
        // copies, from the build host's known-good roots, if the target lost it.
        let built = match &wanted {
            Wanted::Build { at, drv, .. } => {
                // The part done during the probe counts in the gate.
                run.carry = early.as_ref().map_or(Duration::ZERO, |(_, t)| *t);
                self.gate(run, Gate::Build, |d, run| {
                    d.build(run, at, drv, &closure, &probe, early)
                })?
            }
            Wanted::Rollback { .. } => {
                self.ensure_on_target(run, &closure)?;
                Built::default()
            }
        };
        if self.settings.goal == Goal::Build {
            return Ok((
                HostResult::Deployed,
                format!("built and copied to {}", run.name),
            ));
        }

        // Gate 2: diff against what runs; refuse to overwrite a hand deploy.
        let Diffed { rollback_to, new } = self.gate(run, Gate::Diff, |d, run| {
            d.diff(run, &closure, built, &probe, latest.as_ref(), &wanted)
        })?;
        if self.settings.goal == Goal::Diff {
            return Ok((HostResult::Deployed, "diffed; nothing activated".into()));
        }

        // Gate 3: dry-activate, in one round trip with the start of gate 4 (the agent is
        // only started when dry-activate passed).
        let launched = self.gate(run, Gate::DryActivate, |d, run| {
            d.dry_activate_and_launch(run, held, &dir, &closure, &rollback_to)
        })?;
        let Some(launched) = launched else {
            return Ok((
                HostResult::Deployed,
                "dry-activated; nothing changed".into(),
            ));
        };

        // Gates 4 and 5 under the agent's watchdog.
        self.gate(run, Gate::Test, |d, run| {
            d.switch_test(
                run,
                launched,
                &dir,
                &closure,
                &rollback_to,
                probe.failed_units.as_deref(),
            )
        })?;
        if self.settings.goal == Goal::Test {
            // Confirmed like a switch, so the agent keeps it instead of restoring.
            self.confirm(run, &dir, &closure, &rollback_to)?;
            return Ok((
                HostResult::Deployed,
                "activated with switch-to-configuration test and checked; not committed, not marked".into(),
            ));
        }
        let commit_gate = if self.settings.goal == Goal::Boot {
            Gate::Boot
        } else {
            Gate::Switch
        };
        let marked_there = self.gate(run, commit_gate, |d, run| {
            d.confirm(run, &dir, &closure, &rollback_to)
        })?;

        self.gate(run, Gate::Mark, |d, run| {
            d.mark(run, &dir, &closure, build_at, marked_there, &new)
        })?;
        Ok((
            HostResult::Deployed,
            format!(
                "runs {} and it is known-good ({})",
                closure,
                run.mark.as_deref().unwrap_or("?")
            ),
        ))
    }
}
