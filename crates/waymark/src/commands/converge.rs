//! `waymark converge`: keeps every host on its release pointer (docs/converge.md). The
//! decisions are `waymark_converge`'s; this module is the I/O around them: the watchers,
//! the release branches, the deploys, the state file, the output.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::json;
use waymark_converge::{Decision, Desired, HostMachine, Phase, Policy, Summary, Timing, decide};

use super::Global;
use super::fleet::read_fleet;
use crate::ExitStatus;
use crate::printer::write_stdout;

mod deploy;
mod hosts;
mod output;
mod settings;

use deploy::{Common, Deploys, Evaluated, InProcess, Job};
use hosts::{Children, HostWatch, Msg, WatchMode};
use output::{HostView, Output, StateFile, now_ms};
use settings::host_settings;

/// Keep every host on its release branch: watch, detect drift, redeploy through the gates
///
/// Each host should run the commit of its `release/<host>` branch in the fleet's
/// repository (or a pinned known-good mark, or be held). A watcher on each host (`waymark
/// host-watch` over ssh, or a poll script where it cannot run) reports at once what it
/// runs; the release branches are watched here. A host that runs something else is
/// deployed again through every gate, in dependency order, with capped exponential
/// backoff; after --max-attempts failures in a row it is `noncompliant` until a new event.
/// A closure that failed its gates on a host is not tried again until its release moves.
/// Drift (a hand switch, a profile moved but not activated, a boot into another
/// generation, an unmarked closure) is reported, or restored where the host's policy is
/// `restore`. Exit status (with --once or --timeout): 0 converged, nothing changed;
/// 2 converged, something deployed; 3 some hosts failed, others converged; 4 every host
/// failed; 5 work still pending; 128 + N ended by signal N.
#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)] // independent command-line switches
pub struct ConvergeArgs {
    /// The fleet's flake: a local git checkout holding the `release/<host>` branches
    #[arg(long, default_value = ".")]
    pub flake: String,
    /// Hosts to keep converged: names, @tag, globs (comma-separated) [default: every host
    /// with a system]
    #[arg(long, value_name = "SELECTION", value_delimiter = ',')]
    pub on: Vec<String>,
    /// Converge every host once (retries included), then exit
    #[arg(long)]
    pub once: bool,
    /// Exit once the fleet stayed converged this long (e.g. `30s`); with --once: the
    /// longest the run may take (exit 5 if work is still pending then)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// What to do about drift, for hosts the configuration does not name
    #[arg(long, value_enum, default_value_t = PolicyArg::Report)]
    pub drift: PolicyArg,
    /// Restore drift on this host (can be repeated)
    #[arg(long, value_name = "HOST")]
    pub restore: Vec<String>,
    /// Leave this host alone (can be repeated)
    #[arg(long, value_name = "HOST")]
    pub hold: Vec<String>,
    /// Keep this host on a known-good mark instead of its release branch (can be repeated)
    #[arg(long, value_name = "HOST=MARK")]
    pub pin: Vec<String>,
    /// A JSON file of per-host settings (docs/converge.md, "Configuration")
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON Lines events (docs/converge-events-schema.json) on stdout
    #[arg(long)]
    pub json: bool,
    /// Print the status table from the state file, and exit
    #[arg(long)]
    pub status: bool,
    /// Serve Prometheus metrics at this address (e.g. 127.0.0.1:9477)
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// How hosts are watched
    #[arg(long, value_enum, default_value_t = WatchMode::Auto)]
    pub watch: WatchMode,
    /// The poll script's interval, where hosts are polled
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// How often the release branches are read
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub refs_interval: Duration,
    /// The first retry's wait (each further one doubles it)
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub backoff: Duration,
    /// The longest wait between retries
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,
    /// Failed attempts in a row after which a host is noncompliant
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// The shortest time between two deploys of one host (its rate limit)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub min_interval: Duration,
    /// Hosts deployed at the same time
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// The waymark command on the hosts (their watcher, their marks): a shell command line
    #[arg(long, env = "WAYMARK_REMOTE_COMMAND", default_value = "waymark")]
    pub remote_waymark: String,
    /// Secret key signing closures built on this machine (hosts without a build host)
    #[arg(long, env = "WAYMARK_SIGNING_KEY", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// Where this machine keeps its records and the controller's state [default: /var/lib/waymark]
    #[arg(long, env = "WAYMARK_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// A drift policy on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyArg {
    /// Report drift, change nothing
    Report,
    /// Deploy the desired closure again through the gates
    Restore,
}

impl From<PolicyArg> for Policy {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Report => Self::Report,
            PolicyArg::Restore => Self::Restore,
        }
    }
}

/// The loop's state, on the main thread.
struct Controller {
    hosts: BTreeMap<String, HostView>,
    /// Hosts each waits for (its `dependsOn` and build host among the converged hosts).
    waits_for: BTreeMap<String, Vec<String>>,
    /// Deploy order (the fleet's waves).
    order: Vec<String>,
    timing: Timing,
    parallel: usize,
    running: usize,
    repo: PathBuf,
    state_path: PathBuf,
    written: Vec<u8>,
    out: Output,
    page: Option<Arc<Mutex<String>>>,
}

impl Controller {
    fn state_event(&mut self, host: &str, before: &HostMachine) {
        let v = &self.hosts[host];
        let m = &v.machine;
        if m.phase == before.phase && m.attempts == before.attempts && m.reason == before.reason {
            return;
        }
        let next_try = (m.dirty && m.phase != Phase::Deploying).then(|| m.wake_at(&self.timing));
        let drift = m.drift.map(waymark_converge::Drift::name);
        let text = format!(
            "{host}: {} → {}{}{}",
            before.phase.name(),
            m.phase.name(),
            drift.map(|d| format!(" ({d})")).unwrap_or_default(),
            m.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        let fields = json!({
            "host": host, "state": m.phase.name(), "previous": before.phase.name(),
            "drift": drift, "attempts": m.attempts, "next_try_ms": next_try,
            "reason": m.reason,
        });
        self.out.emit("state", fields, Some(text));
    }

    fn persist(&mut self) -> anyhow::Result<()> {
        let file = StateFile {
            hosts: self.hosts.clone(),
        };
        let bytes = serde_json::to_vec(&file).expect("serializable");
        if bytes != self.written {
            file.write(&self.state_path)?;
            self.written = bytes;
        }
        if let Some(page) = &self.page {
            *page.lock().expect("not poisoned") = output::metrics(&self.hosts, &self.out.counters);
        }
        Ok(())
    }

    /// Whether a host can be looked at: its desired state and its facts are known (or
    /// its watcher cannot reach it: a deploy attempt then says why, with backoff).
    fn ready(v: &HostView) -> bool {
        v.desired_fresh
            && v.facts_fresh
            && v.desired.is_some()
            && (v.facts.is_some() || v.unreachable.is_some())
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Facts { host, facts, how } => {
                let Some(v) = self.hosts.get_mut(&host) else {
                    return;
                };
                let new = v.facts.as_ref() != Some(&facts) || v.unreachable.is_some();
                v.unreachable = None;
                v.facts_fresh = true;
                let fields = json!({
                    "host": host, "current": facts.current, "profile": facts.profile,
                    "booted": facts.booted, "known_good": facts.known_good, "how": how,
                    "drift": v.desired.as_ref().and_then(|d| facts.drift_from(d)).map(waymark_converge::Drift::name),
                });
                if new {
                    v.deployed_from = None;
                }
                v.facts = Some(facts);
                let key = v.desired.as_ref().and_then(Desired::key);
                if Self::ready(v) {
                    v.machine.touch(key.as_deref(), new);
                }
                if new {
                    self.out.emit("facts", fields, None);
                }
            }
            Msg::Unreachable { host, reason } => {
                let Some(v) = self.hosts.get_mut(&host) else {
                    return;
                };
                let new = v.unreachable.is_none() || !v.facts_fresh;
                v.unreachable = Some(reason.clone());
                v.facts_fresh = true;
                if new {
                    // What it runs is no longer known: a deploy attempt finds out.
                    v.facts = None;
                    let key = v.desired.as_ref().and_then(Desired::key);
                    if Self::ready(v) {
                        v.machine.touch(key.as_deref(), false);
                    }
                    let text = format!("{host}: unreachable: {reason}");
                    self.out.emit(
                        "unreachable",
                        json!({"host": host, "reason": reason}),
                        Some(text),
                    );
                }
            }
            Msg::Desired {
                host,
                desired,
                reason,
            } => {
                let Some(v) = self.hosts.get_mut(&host) else {
                    return;
                };
                // Configuration (hold, a pin) comes first.
                if matches!(v.desired, Some(Desired::Hold | Desired::Mark { .. }))
                    && !matches!(desired, Desired::Mark { .. })
                {
                    return;
                }
                v.desired_fresh = true;
                let changed = v.desired.as_ref() != Some(&desired);
                v.desired = Some(desired.clone());
                v.desired_reason.clone_from(&reason);
                let key = desired.key();
                if Self::ready(v) {
                    v.machine.touch(key.as_deref(), changed);
                }
                if changed {
                    let text = match (&desired, &reason) {
                        (_, Some(r)) => format!("{host}: no desired closure: {r}"),
                        (Desired::Release { rev, .. }, None) => {
                            format!("{host}: release/{host} is at {rev}")
                        }
                        (d, None) => format!("{host}: desired {}", d.short()),
                    };
                    self.out.emit(
                        "desired",
                        json!({"host": host, "desired": desired, "reason": reason}),
                        Some(text),
                    );
                }
            }
            Msg::Done { host, ended } => {
                self.running -= 1;
                let Some(v) = self.hosts.get_mut(&host) else {
                    return;
                };
                let before = v.machine.clone();
                if !matches!(ended.attempt, waymark_converge::Attempt::Good { .. }) {
                    v.deployed_from = None;
                }
                v.machine
                    .finish(ended.attempt.clone(), now_ms(), &self.timing);
                let text = format!("{host}: deploy {}: {}", ended.result, ended.message);
                self.out.emit(
                    "deployed",
                    json!({"host": host, "result": ended.result, "message": ended.message}),
                    Some(text),
                );
                self.state_event(&host, &before);
            }
            Msg::Signal(_) => {}
        }
    }

    /// Starts the deploys that are due, in the fleet's order, up to --parallel; returns
    /// the earliest time a waiting host becomes due.
    fn pass(
        &mut self,
        tx: &Sender<Msg>,
        deployer: &Arc<dyn Deploys>,
    ) -> anyhow::Result<Option<u64>> {
        let now = now_ms();
        let mut wake: Option<u64> = None;
        for host in self.order.clone() {
            let v = &self.hosts[&host];
            if !Self::ready(v) || !v.machine.dirty || v.machine.phase == Phase::Deploying {
                continue;
            }
            if !v.machine.due(now, &self.timing) {
                let at = v.machine.wake_at(&self.timing);
                wake = Some(wake.map_or(at, |w: u64| w.min(at)));
                continue;
            }
            // Dependency order: not while a host it waits for has work of its own.
            let hosts = &self.hosts;
            if waymark_converge::blocked_by(&self.waits_for[&host], |d| {
                hosts.get(d).map(|w| &w.machine)
            })
            .is_some()
            {
                continue;
            }
            let facts = v.facts.clone().unwrap_or_default();
            let desired = v.desired.clone().expect("ready");
            let mut decision = decide(&desired, &facts, v.policy);
            if matches!(decision, Decision::Deploy { .. })
                && v.deployed_from.as_ref() == Some(&facts)
            {
                decision = Decision::Converged;
            }
            if matches!(decision, Decision::Deploy { .. }) && self.running >= self.parallel {
                continue;
            }
            let v = self.hosts.get_mut(&host).expect("listed");
            let before = v.machine.clone();
            let start = v.machine.settle(&decision, now);
            if start.is_some() {
                v.deployed_from = Some(v.facts.clone().unwrap_or_default());
            }
            self.state_event(&host, &before);
            if let Some(allow_drift) = start {
                // Written down before it starts: a restart knows a deploy was under way.
                self.persist()?;
                let job = Job {
                    host: host.clone(),
                    flake: match &desired {
                        Desired::Release { rev, .. } => hosts::flake_at(&self.repo, rev),
                        _ => self.repo.display().to_string(),
                    },
                    rev: match &desired {
                        Desired::Release { rev, .. } => Some(rev.clone()),
                        _ => None,
                    },
                    mark: match &desired {
                        Desired::Mark { mark, .. } => Some(mark.clone()),
                        _ => None,
                    },
                    allow_drift,
                };
                let text = format!(
                    "{host}: deploying {}{}",
                    desired.short(),
                    if allow_drift {
                        " (restoring drift)"
                    } else {
                        ""
                    }
                );
                self.out.emit(
                    "deploy",
                    json!({"host": host, "desired": desired, "allow_drift": allow_drift}),
                    Some(text),
                );
                self.running += 1;
                let tx = tx.clone();
                let deployer = Arc::clone(deployer);
                std::thread::spawn(move || {
                    let ended = deployer.deploy(&job);
                    let _ = tx.send(Msg::Done {
                        host: job.host,
                        ended,
                    });
                });
            }
        }
        Ok(wake)
    }

    fn summary(&self) -> Summary {
        // A host not looked at yet (phase unknown) counts as pending.
        Summary::of(self.hosts.values().map(|v| &v.machine))
    }
}

pub fn cmd_converge(global: Global, args: &ConvergeArgs) -> anyhow::Result<ExitStatus> {
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/waymark"));
    let state_path = StateFile::path(&state_dir);
    let timing = Timing {
        backoff_base_ms: args.backoff.as_millis() as u64,
        backoff_cap_ms: args.backoff_max.as_millis() as u64,
        max_attempts: args.max_attempts,
        min_interval_ms: args.min_interval.as_millis() as u64,
        settle_ms: 1_000,
    };
    if args.status {
        let file = StateFile::read(&state_path)?;
        write_stdout(&output::table(&file.hosts, &timing, now_ms()))?;
        return Ok(ExitStatus::Success);
    }
    let Some(repo) = waymark_deploy::local_flake_dir(&args.flake) else {
        bail!(
            "--flake {}: not a local checkout; converge reads the release branches of the fleet's git repository (clone it, pass its directory)",
            args.flake
        );
    };
    let repo = std::fs::canonicalize(&repo)
        .with_context(|| format!("--flake {}: no such directory", repo.display()))?;
    waymark_release::Releases::open(&repo)
        .with_context(|| format!("--flake {}: its release branches", repo.display()))?;
    let fleet = read_fleet(
        &repo.display().to_string(),
        &waymark_deploy::Processes::default(),
    )?;
    let deployable: Vec<String> = fleet
        .hosts
        .iter()
        .filter(|(_, h)| h.toplevel.is_some() || h.closure.is_some())
        .map(|(n, _)| n.clone())
        .collect();
    let names: Vec<String> = if args.on.is_empty() {
        deployable
    } else {
        let picked = fleet.select(&args.on)?;
        if let Some(h) = picked.iter().find(|h| !deployable.contains(h)) {
            bail!("--on: host {h} has no system to converge to (a build host only?)");
        }
        picked
    };
    if names.is_empty() {
        bail!(
            "the fleet in {} has no host with a system to converge",
            repo.display()
        );
    }
    let settings = host_settings(args, &names)?;

    // The state from the last run: its pending work stays pending; a deploy that was
    // running is looked at again.
    let mut previous = StateFile::read(&state_path)?;
    let mut views = BTreeMap::new();
    for name in &names {
        let (policy, pinned) = settings[name].clone();
        let last = previous.hosts.remove(name).unwrap_or_default();
        let mut machine = last.machine;
        machine.recover();
        // What was last known is kept, so a restart is no news: a report or a release
        // equal to it does not reset a backoff or a noncompliant host. A hold or a pin
        // comes from the configuration only.
        let desired = pinned.or(match last.desired {
            Some(d @ (Desired::Release { .. } | Desired::NoRelease)) => Some(d),
            _ => None,
        });
        views.insert(
            name.clone(),
            HostView {
                machine,
                desired_fresh: matches!(desired, Some(Desired::Hold)),
                desired,
                facts: last.facts,
                policy,
                ..HostView::default()
            },
        );
    }
    let order: Vec<String> = fleet
        .waves
        .iter()
        .flatten()
        .filter(|h| names.contains(h))
        .cloned()
        .collect();
    let waits_for = names
        .iter()
        .map(|n| {
            let h = &fleet.hosts[n];
            let deps = h
                .depends_on
                .iter()
                .chain(h.build_host.as_ref())
                .filter(|d| names.contains(d) && *d != n)
                .cloned()
                .collect();
            (n.clone(), deps)
        })
        .collect();

    let page = match &args.metrics {
        Some(addr) => {
            let page = Arc::new(Mutex::new(String::new()));
            output::serve_metrics(addr, Arc::clone(&page))?;
            Some(page)
        }
        None => None,
    };
    let mut ctl = Controller {
        hosts: views,
        waits_for,
        order,
        timing,
        parallel: usize::from(args.parallel),
        running: 0,
        repo: repo.clone(),
        state_path,
        written: Vec::new(),
        out: Output {
            json: args.json,
            quiet: global.printer.quiet,
            counters: BTreeMap::new(),
        },
        page,
    };
    ctl.persist()?;

    let (tx, rx) = mpsc::channel();
    let (signals, _catching) = super::catch_termination()?;
    {
        let tx = tx.clone();
        let mut signals = signals;
        std::thread::spawn(move || {
            if let Some(s) = signals.forever().next() {
                let _ = tx.send(Msg::Signal(s));
            }
        });
    }
    let children = Children::default();
    let ssh_options = hosts::ssh_options();
    for name in &names {
        let h = &fleet.hosts[name];
        let watch = HostWatch {
            host: name.clone(),
            destination: format!("{}@{}", h.ssh_user, h.target_host),
            ssh_options: ssh_options.clone(),
            remote_waymark: args.remote_waymark.clone(),
            mode: args.watch,
            poll_interval: args.poll_interval,
        };
        if let Some(Desired::Mark { mark, .. }) = &ctl.hosts[name].desired {
            let (tx, watch, mark) = (tx.clone(), watch.clone(), mark.clone());
            std::thread::spawn(move || {
                let (closure, reason) = match hosts::read_mark(&watch, &mark) {
                    Ok(c) => (Some(c), None),
                    Err(e) => (None, Some(format!("reading pinned mark {mark}: {e}"))),
                };
                let _ = tx.send(Msg::Desired {
                    host: watch.host.clone(),
                    desired: Desired::Mark { mark, closure },
                    reason,
                });
            });
        }
        let (tx, children) = (tx.clone(), children.clone());
        std::thread::spawn(move || watch.run(&tx, &children));
    }
    let evaluated = Evaluated::default();
    {
        let (tx, repo, names) = (tx.clone(), repo.clone(), names.clone());
        let interval = args.refs_interval;
        let evaluated = evaluated.clone();
        std::thread::spawn(move || {
            hosts::watch_releases(&tx, &repo, &names, interval, &evaluated);
        });
    }

    let deployer: Arc<dyn Deploys> = Arc::new(InProcess {
        evaluated,
        engine: waymark_deploy::Engine::for_this_program()
            .context("finding this program, to relay nix-daemon connections")?,
        common: Common {
            remote_waymark: args.remote_waymark.clone(),
            signing_key: args.signing_key.clone(),
            state_dir: state_dir.clone(),
            nix_sshopts: std::env::var("NIX_SSHOPTS").unwrap_or_default(),
        },
        running: Mutex::default(),
    });

    let started = now_ms();
    let deadline = args
        .timeout
        .filter(|_| args.once)
        .map(|d| started + d.as_millis() as u64);
    let stay = args
        .timeout
        .filter(|_| !args.once)
        .map(|d| d.as_millis() as u64);
    let mut converged_since: Option<u64> = None;
    let mut signal = None;
    loop {
        let wake = ctl.pass(&tx, &deployer)?;
        ctl.persist()?;
        let now = now_ms();
        let summary = ctl.summary();
        if ctl.running == 0 && summary.pending == 0 && summary.failed == 0 {
            converged_since.get_or_insert(now);
        } else {
            converged_since = None;
        }
        let settled = ctl.running == 0 && summary.pending == 0;
        if (args.once && settled)
            || deadline.is_some_and(|d| now >= d)
            || stay
                .zip(converged_since)
                .is_some_and(|(d, since)| now >= since + d)
        {
            break;
        }
        // Wake for the next due host, the deadline, or at least every second.
        let mut until = now + 1_000;
        if let Some(w) = wake {
            until = until.min(w.max(now));
        }
        if let Some(d) = deadline {
            until = until.min(d);
        }
        match rx.recv_timeout(Duration::from_millis(until.saturating_sub(now))) {
            Ok(Msg::Signal(s)) => {
                signal = Some(s);
                break;
            }
            Ok(msg) => {
                ctl.handle(msg);
                // A burst is taken whole before the next pass.
                while let Ok(msg) = rx.try_recv() {
                    if let Msg::Signal(s) = msg {
                        signal = Some(s);
                        break;
                    }
                    ctl.handle(msg);
                }
                if signal.is_some() {
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // Ending: deploys under way stop (a host whose activation started goes back by
    // itself unless confirmed), the watchers' connections end.
    deployer.stop_all();
    children.end_all();
    ctl.persist()?;
    let summary = ctl.summary();
    let code = summary.exit_code();
    if args.json {
        let rows: Vec<serde_json::Value> = ctl
            .hosts
            .iter()
            .map(|(n, v)| {
                json!({
                    "host": n, "state": v.machine.phase.name(), "desired": v.desired,
                    "current": v.facts.as_ref().and_then(|f| f.current.clone()),
                    "drift": v.facts.as_ref().zip(v.desired.as_ref()).and_then(|(f, d)| f.drift_from(d)).map(waymark_converge::Drift::name),
                    "attempts": v.machine.attempts, "reason": v.machine.reason,
                })
            })
            .collect();
        ctl.out.emit(
            "summary",
            json!({"hosts": rows, "exit_code": code as u8}),
            None,
        );
    } else {
        write_stdout(&output::table(&ctl.hosts, &ctl.timing, now_ms()))?;
    }
    if let Some(s) = signal {
        return Ok(ExitStatus::Code(128 + s as u8));
    }
    Ok(ExitStatus::Code(code as u8))
}
