//! `waymark deploy`: hosts through the five gates; `waymark deploy rollback`.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context as _, bail};
use clap::Args;
use signal_hook::iterator::Signals;
use waymark_deploy::{
    Cancel, Engine, Event, FleetOptions, Goal, HostReport, HostResult, Interaction, Mode, Request,
    SCHEMA, Selection, Sink, local_flake_dir, now,
};
use waymark_diff::DiffReport;

use super::Global;
use crate::ExitStatus;
use crate::printer::write_stdout;
use crate::render;

mod output;
use output::{Printer, Terminal};

/// Options of a deploy and of a rollback.
#[derive(Debug, Clone, Args)]
#[allow(clippy::struct_excessive_bools)] // independent command-line switches
pub struct DeployOptions {
    /// The fleet's flake (an output other than `waymark` with FLAKE#ATTR)
    #[arg(long, default_value = ".")]
    pub flake: String,
    /// Stop after this gate
    #[arg(long, value_enum, default_value_t = Goal::Switch)]
    pub goal: Goal,
    /// Deploy even when the target does not run its latest known-good closure
    #[arg(long)]
    pub allow_drift: bool,
    /// Show the closure diff and ask before activating (needs a terminal)
    #[arg(long)]
    pub ask: bool,
    /// Print JSON Lines events (docs/deploy-events-schema.json) on stdout
    #[arg(long)]
    pub json: bool,
    /// The commit the closure is built from [default: HEAD of the flake's clean checkout]
    #[arg(long)]
    pub rev: Option<String>,
    /// The waymark command on the hosts, for their known-good marks: a shell command line,
    /// run as is (it may set variables first, e.g. `WAYMARK_STATE_DIR=/srv/wm waymark`)
    #[arg(long, env = "WAYMARK_REMOTE_COMMAND", default_value = "waymark")]
    pub remote_waymark: String,
    /// Secret key signing closures built on this machine (hosts without a build host)
    #[arg(long, env = "WAYMARK_SIGNING_KEY", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// Where this machine keeps deploy records [default: /var/lib/waymark]
    #[arg(long, env = "WAYMARK_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Deploy a host through the gates: build, diff, dry-activate, switch test, commit and mark
///
/// Only a closure that passed every gate is marked known-good. A failure after
/// activation restores the previous known-good closure; the target restores it by
/// itself when the confirmation does not arrive in time. Exit status: 0 every host
/// good (or unchanged); 1 a gate failed or refused and the host runs what it ran
/// before; 2 nothing could start (bad input, evaluation, build or copy); 4 restoring
/// failed or could not be verified: needs a human; 128 + N ended by signal N
/// (130: Ctrl-C).
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Hosts to deploy (names from `waymark fleet`), or `rollback HOST` to redeploy a
    /// known-good closure (gates 2-5, no build): the latest, or --to MARK
    #[arg(value_name = "HOST")]
    pub words: Vec<String>,
    /// Select hosts: names, @tag, globs (web-*), comma-separated; `-` reads names from stdin
    #[arg(long, value_name = "SELECTION", value_delimiter = ',')]
    pub on: Vec<String>,
    /// With `rollback`: the mark to redeploy (`previous`: the one before the latest)
    #[arg(long, value_name = "MARK")]
    pub to: Option<String>,
    /// Hosts deployed at the same time
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// Stop starting hosts once this many have failed (1: at the first failure); the
    /// rest are skipped, untouched
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_failures: Option<u32>,
    /// Deploy this many hosts first; the others only if all of them pass
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u16).range(1..))]
    pub canary: Option<u16>,
    #[command(flatten)]
    pub options: DeployOptions,
}

/// What the command line selects (names, `@tag`, globs), with the names `--on -` reads
/// from stdin; `None` where it names nothing at all.
fn selection_items(args: &DeployArgs) -> anyhow::Result<Option<Vec<String>>> {
    if args.words.is_empty() && args.on.is_empty() {
        return Ok(None);
    }
    let mut items: Vec<String> = args.words.clone();
    for item in &args.on {
        if item == "-" {
            let mut names = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut names)
                .context("reading host names from stdin")?;
            items.extend(names.split_whitespace().map(str::to_owned));
        } else {
            items.push(item.clone());
        }
    }
    Ok(Some(items))
}

/// Checks every argument and file a deploy reads before the first connection, and
/// returns the commit the closure is built from: a `--rev` the target's mark would
/// refuse, or a missing signing key, must stop the deploy before anything changed.
fn check_inputs(opts: &DeployOptions, mode: &Mode) -> anyhow::Result<Option<String>> {
    let flake_dir = local_flake_dir(&opts.flake);
    let rev = match (&opts.rev, mode, &flake_dir) {
        (Some(rev), _, _) => {
            let Some(id) = waymark_known_good::normalize_rev(rev) else {
                bail!(
                    "--rev {rev:?} is not a commit id: the known-good mark records the id (7 to 40 hexadecimal digits); pass --rev \"$(git rev-parse {})\"",
                    if rev.is_empty() { "HEAD" } else { rev.as_str() }
                );
            };
            if let Some(dir) = &flake_dir
                && let Ok(repo) = waymark_release::Releases::open(dir)
            {
                repo.resolve_commit(&id).with_context(|| {
                    format!(
                        "--rev {id}: no such commit in {} (fetch it, or check the id)",
                        dir.display()
                    )
                })?;
            }
            Some(id)
        }
        (None, Mode::Rollback { .. }, _) => None,
        (None, Mode::Deploy, Some(dir)) => Some(
            waymark_release::Releases::open(dir)
                .and_then(|r| r.resolve_commit("HEAD"))
                .with_context(|| {
                    format!(
                        "finding the commit the closure is built from in {} (or pass --rev)",
                        dir.display()
                    )
                })?
                .to_string(),
        ),
        (None, Mode::Deploy, None) => {
            bail!(
                "{} is not a local checkout: pass --rev with the commit it is built from",
                opts.flake
            )
        }
    };
    if let Some(key) = &opts.signing_key {
        let meta = std::fs::metadata(key).with_context(|| {
            format!(
                "--signing-key {}: cannot read the key file (pass the secret key file `nix key generate-secret` wrote)",
                key.display()
            )
        })?;
        if !meta.is_file() {
            bail!(
                "--signing-key {}: not a file (pass the secret key file `nix key generate-secret` wrote)",
                key.display()
            );
        }
        std::fs::File::open(key).with_context(|| {
            format!(
                "--signing-key {}: cannot read the key file (check its permissions)",
                key.display()
            )
        })?;
    }
    Ok(rev)
}

fn summary_table(reports: &[HostReport]) -> String {
    let mut out = format!(
        "{:<12} {:<13} {:<11} {:>7}  {}\n",
        "HOST", "GATE", "RESULT", "TIME", "CHANGE"
    );
    for r in reports {
        let result = serde_json::to_value(r.result)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<12} {:<13} {:<11} {:>5.1} s  {}\n",
            r.host,
            r.reached.map_or("-", waymark_evidence::Gate::name),
            result,
            r.duration_ms as f64 / 1000.0,
            r.change.as_deref().unwrap_or("-")
        ));
        out.push_str(&format!("{:<12} {}\n", "", r.message));
        if !r.log.is_empty() {
            out.push_str(&format!("{:<12} the failed build's last lines:\n", ""));
            for line in &r.log {
                out.push_str(&format!("{:<12} | {line}\n", ""));
            }
        }
    }
    out
}

fn exit_for(worst: HostResult) -> ExitStatus {
    // The codes are HostResult's (documented with the event schema).
    match worst.exit_code() {
        0 => ExitStatus::Success,
        1 => ExitStatus::Negative,
        2 => ExitStatus::Error,
        _ => ExitStatus::NeedsHuman,
    }
}

pub fn cmd_deploy(global: Global, args: &DeployArgs) -> anyhow::Result<ExitStatus> {
    let opts = &args.options;
    let rollback = match args.words.as_slice() {
        [verb, _] if verb == "rollback" && !args.on.is_empty() => {
            bail!(
                "--on does not go with rollback: `waymark deploy rollback HOST` rolls one host back"
            )
        }
        [verb, host] if verb == "rollback" => Some(host.clone()),
        [verb, ..] if verb == "rollback" => {
            bail!("usage: waymark deploy rollback HOST [--to MARK]")
        }
        _ if args.to.is_some() => bail!("--to goes with `waymark deploy rollback HOST`"),
        _ => None,
    };
    let mode = match &rollback {
        Some(_) => Mode::Rollback {
            to: args.to.clone(),
        },
        None => Mode::Deploy,
    };
    if opts.ask && !std::io::stdin().is_terminal() {
        bail!("--ask needs a terminal on stdin to answer on");
    }
    // Names on stdin are read now, before the evaluation, to connect to them ahead too;
    // and before anything is set up, which a Ctrl-C at that prompt would leave.
    let selection = match rollback {
        Some(host) => Selection::Rollback {
            host,
            to: args.to.clone(),
        },
        None => selection_items(args)?.map_or(Selection::Default, Selection::Items),
    };
    // Everything else is checked before the first connection.
    let rev = check_inputs(opts, &mode)?;
    let request = Request {
        flake: opts.flake.clone(),
        override_inputs: Vec::new(),
        selection,
        goal: opts.goal,
        allow_drift: opts.allow_drift,
        ask: opts.ask,
        rev,
        remote_waymark: opts.remote_waymark.clone(),
        signing_key: opts.signing_key.clone(),
        state_dir: opts
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/waymark")),
        fleet: FleetOptions {
            parallel: usize::from(args.parallel),
            max_failures: args.max_failures.map(|n| n as usize),
            canary: args.canary.map(usize::from),
        },
        nix_sshopts: std::env::var("NIX_SSHOPTS").unwrap_or_default(),
        evaluated: None,
    };
    let engine = Engine::for_this_program()
        .context("finding this program, to relay nix-daemon connections")?;
    let printer = Printer::new(opts.json, global.printer.quiet);
    let terminal = Terminal {
        color: global.color.should_style(),
        show: !opts.json,
    };
    let cancel = Cancel::new();
    let (signals, catching) = super::catch_termination()?;
    let run = RunState::default();
    let outcome = std::thread::scope(|scope| {
        let _catching = catching;
        scope.spawn(|| end_on_signal(signals, &cancel, &run));
        let outcome = engine.deploy(&request, &printer, &terminal, &cancel);
        run.finish();
        outcome
    });
    if let Some(signal) = run.interrupted() {
        // The connections have ended: the run ends as the signal asked.
        #[allow(clippy::exit)]
        std::process::exit(128 + signal);
    }
    let outcome = outcome?;
    if opts.json {
        printer.emit(Event::Summary {
            schema: SCHEMA,
            at: now(),
            hosts: outcome.reports,
            eval_ms: outcome.eval_ms,
            own_cpu_ms: waymark_deploy::own_cpu_ms(),
            exit_code: outcome.worst.exit_code(),
        });
    } else {
        write_stdout(&summary_table(&outcome.reports))?;
    }
    Ok(exit_for(outcome.worst))
}

/// Whether the run ended, and the signal that interrupted it if one did.
#[derive(Default)]
struct RunState {
    state: Mutex<(bool, Option<i32>)>,
    changed: std::sync::Condvar,
}

impl RunState {
    /// Every host is done: from here, before its summary is out (someone may act on it
    /// at once), a signal changes neither the outcome nor the status.
    fn finish(&self) {
        self.state.lock().expect("not poisoned").0 = true;
        self.changed.notify_all();
    }

    /// Takes `signal` as the run's interruption unless the run had finished.
    fn interrupt(&self, signal: i32) -> bool {
        let mut state = self.state.lock().expect("not poisoned");
        if state.0 {
            return false;
        }
        state.1 = Some(signal);
        true
    }

    fn interrupted(&self) -> Option<i32> {
        self.state.lock().expect("not poisoned").1
    }

    /// Waits at most `limit` for the run to end.
    fn wait_finished(&self, limit: std::time::Duration) {
        let state = self.state.lock().expect("not poisoned");
        let _ = self
            .changed
            .wait_timeout_while(state, limit, |s| !s.0)
            .expect("not poisoned");
    }
}

/// Cancels the run on SIGINT, SIGTERM or SIGHUP (a Ctrl-C, a stopped CI job): the
/// engine ends the connections (instead of masters lingering for `ControlPersist`) and
/// starts nothing new, so nothing more is confirmed. The agents need nothing from here:
/// each restores its host's previous system at its confirmation deadline unless it was
/// confirmed. Exit status 128 + the signal. A second signal, a second or more after the
/// first, ends the run at once. Once the run has finished (its summary given) a signal
/// leaves the status the deploy's, unless a second one comes a second or more later.
fn end_on_signal(mut signals: Signals, cancel: &Cancel, run: &RunState) {
    let Some(signal) = signals.forever().next() else {
        return;
    };
    let first = std::time::Instant::now();
    if !run.interrupt(signal) {
        exit_on_a_later_signal(&mut signals, first, 128 + signal);
        return;
    }
    let _ = writeln!(
        std::io::stderr(),
        "error: interrupted (signal {signal}): ending the connections, confirming nothing \
         more. A host whose activation started goes back to its previous system by itself \
         at its confirmation deadline unless it was confirmed; `waymark known-good list` \
         on it shows what was marked."
    );
    std::thread::scope(|scope| {
        scope.spawn(move || exit_on_a_later_signal(&mut signals, first, 128 + signal));
        cancel.cancel(&format!("interrupted by signal {signal}"));
        // The run ends its processes and connections and returns; should something hold
        // it, the reaper still ends the masters after this process.
        run.wait_finished(std::time::Duration::from_secs(10));
        #[allow(clippy::exit)]
        std::process::exit(128 + signal);
    });
}

/// Exits with `code` at a signal that comes a second or more after the `first`; returns
/// once signals are no longer caught. One event often comes as two signals at once (a
/// closed terminal's SIGHUP from the shell and from the kernel; a Ctrl-C to a whole
/// process group): only a later one means "now".
fn exit_on_a_later_signal(signals: &mut Signals, first: std::time::Instant, code: i32) {
    for _ in signals.forever() {
        if first.elapsed() > std::time::Duration::from_secs(1) {
            #[allow(clippy::exit)]
            std::process::exit(code);
        }
    }
}
