//! `waymark deploy`: hosts through the five gates; `waymark deploy rollback`.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context as _, bail};
use clap::Args;
use signal_hook::iterator::Signals;
use waymark_deploy::{
    Deployer, Endpoint, Event, FleetOptions, Goal, HostReport, HostResult, Interaction, Mode,
    SCHEMA, Settings, Sink, Ssh, now,
};
use waymark_diff::DiffReport;

use super::Global;
use super::fleet::read_fleet;
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

/// The directory of a local flake reference, for its commit and release tags.
fn local_flake_dir(flake: &str) -> Option<PathBuf> {
    let r = flake.split('#').next().unwrap_or(flake);
    let r = r.split('?').next().unwrap_or(r);
    let path = r
        .strip_prefix("path:")
        .or_else(|| r.strip_prefix("git+file://"))
        .unwrap_or(r);
    (!path.contains("://") && !path.contains(':'))
        .then(|| PathBuf::from(if path.is_empty() { "." } else { path }))
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

fn control_dir() -> anyhow::Result<tempfile::TempDir> {
    // Short: ssh control socket paths are limited to about 100 bytes. Only this user
    // may enter it: it holds the connections' sockets and forwarded nix-daemon sockets.
    tempfile::Builder::new()
        .prefix("wm-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in("/tmp")
        .context("creating the ssh control directory")
}

/// What the last run read of the fleet, so the next one connects while the flake
/// evaluates: each host's addresses and tags, and whether the fleet deploys every host
/// when none is named (`<state>/ssh-addresses.json`; it only saves time).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Known {
    hosts: BTreeMap<String, KnownHost>,
    deploy_all: bool,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct KnownHost {
    /// Where its deploy connects: the target, then its build host.
    endpoints: Vec<Endpoint>,
    tags: Vec<String>,
}

impl Known {
    fn of(fleet: &waymark_fleet::Fleet) -> Self {
        let hosts = fleet
            .hosts
            .iter()
            .map(|(name, host)| {
                let builder = host.build_host.as_deref();
                let endpoints = Endpoint::of(fleet, name)
                    .into_iter()
                    .chain(builder.and_then(|b| Endpoint::of(fleet, b)))
                    .collect();
                let tags = host.tags.clone();
                (name.clone(), KnownHost { endpoints, tags })
            })
            .collect();
        Self {
            hosts,
            deploy_all: fleet.settings.deploy_all,
        }
    }

    /// The hosts this run will likely deploy, as far as the last run's fleet tells:
    /// those the selection's items pick, every host where nothing is named and the
    /// fleet deploys all, or the host rolled back.
    fn likely(&self, items: Option<&[String]>, rollback: Option<&str>) -> Vec<&KnownHost> {
        if let Some(host) = rollback {
            return self.hosts.get(host).into_iter().collect();
        }
        let selectors: Option<Vec<waymark_fleet::Selector>> = items.map(|items| {
            items
                .iter()
                .map(|i| i.trim())
                .filter(|i| !i.is_empty())
                .filter_map(|i| waymark_fleet::Selector::parse(i).ok())
                .collect()
        });
        self.hosts
            .iter()
            .filter(|(name, host)| match &selectors {
                Some(selectors) => selectors.iter().any(|s| s.matches(name, &host.tags)),
                None => self.deploy_all,
            })
            .map(|(_, host)| host)
            .collect()
    }
}

/// What the last run read; nothing when there was no last run, or its file is not
/// readable (or of an older form).
fn read_known(path: &std::path::Path) -> Known {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Keeps what this run read for the next, replaced whole (a rename), or not at all.
fn write_known(path: &std::path::Path, known: &Known) {
    let _ = waymark_deploy::write_atomic(path, &serde_json::to_vec(known).expect("serializable"));
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
    let state_dir = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/waymark"));
    // Names on stdin are read now, before the evaluation, to connect to them ahead too;
    // and before anything is set up, which a Ctrl-C at that prompt would leave.
    let items = match rollback {
        None => selection_items(args)?,
        Some(_) => None,
    };
    // Everything else is checked before the first connection.
    let rev = check_inputs(opts, &mode)?;
    let control = control_dir()?;
    let relay = std::env::current_exe()
        .context("finding this program, to relay nix-daemon connections")?
        .display()
        .to_string();
    let ssh = Ssh::new(
        &std::env::var("NIX_SSHOPTS").unwrap_or_default(),
        control.path(),
    )
    .with_daemon_relay(&[relay, "nix-daemon-relay".into()])
    .context("writing the ssh shim for nix copy")?
    .with_reaper()
    .context("starting the watcher that ends the ssh connections if this process is killed")?
    // No more connections authenticate at once than hosts deploy at once, also those
    // opened ahead (a bastion's sshd drops those beyond its MaxStartups).
    .with_handshake_limit(if opts.ask {
        1
    } else {
        usize::from(args.parallel)
    });
    // The hosts as the last run read them: the connections of those this run likely
    // deploys open while the flake evaluates.
    let known_path = state_dir.join("ssh-addresses.json");
    let known = read_known(&known_path);
    let likely = known.likely(items.as_deref(), rollback.as_deref());
    // The sessions every deploy to these hosts starts with (the build hosts' build
    // sessions, then the targets' probes) are set up while the flake evaluates and the
    // build runs, held until used: `Ssh::hold` waits for one under way.
    let closures_dir = state_dir.join("closures");
    let mut ahead = Vec::new();
    let mut builders = std::collections::BTreeSet::new();
    for host in &likely {
        if let (None, Some(builder)) = (&rollback, host.endpoints.get(1))
            && builders.insert(builder.destination())
        {
            ahead.push((builder.clone(), waymark_deploy::build_session_script()));
        }
    }
    for host in &likely {
        if let Some(target) = host.endpoints.first() {
            let kept = waymark_deploy::kept_closure(&closures_dir, &target.name);
            let probe = waymark_deploy::probe_script(
                &opts.remote_waymark,
                kept.as_ref().map(|c| c.root.as_str()),
            );
            ahead.push((target.clone(), probe));
        }
    }
    let (signals, catching) = super::catch_termination()?;
    let finished = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let _catching = catching;
        scope.spawn(|| end_on_signal(signals, &ssh, control.path(), &finished));
        // The evaluation starts first, then the build hosts' connections: the build is
        // what the rest waits for.
        let eval = scope.spawn(|| {
            let started = std::time::Instant::now();
            let fleet = read_fleet(&opts.flake, ssh.processes());
            (fleet, waymark_deploy::ms(started.elapsed()))
        });
        for (host, _) in &ahead {
            ssh.prewarm(host);
        }
        for (host, script) in ahead {
            scope.spawn(ssh.hold_ahead(host, &script));
        }
        let (fleet, eval_ms) = eval.join().expect("the evaluation does not panic");
        let deployed = fleet.and_then(|fleet| {
            write_known(&known_path, &Known::of(&fleet));
            deploy_evaluated(
                global,
                args,
                &ssh,
                &fleet,
                eval_ms,
                rollback.as_deref(),
                items.as_deref(),
                &mode,
                &state_dir,
                rev.clone(),
                &finished,
            )
        });
        if waymark_fault::at("pause-after-summary") {
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
        // Also when the deploy could not start (evaluation, selection): what was set up
        // ahead stops before the scope waits for it.
        ssh.close_all();
        deployed
    })
}

/// Ends the run on SIGINT, SIGTERM or SIGHUP (a Ctrl-C, a stopped CI job): the
/// connections end and their directory goes, instead of masters lingering for
/// `ControlPersist`; no new connection starts, so nothing more is confirmed. The
/// agents need nothing from here: each restores its host's previous system at its
/// confirmation deadline unless it was confirmed. Exit status 128 + the signal. A
/// second signal, a second or more after the first, ends the run at once. Returns when
/// the run ends otherwise. Once the deploy has `finished` (its summary given, it only
/// closes its connections) a signal leaves the status the deploy's, unless a second
/// one comes a second or more later.
fn end_on_signal(
    mut signals: Signals,
    ssh: &Ssh,
    control: &std::path::Path,
    finished: &std::sync::atomic::AtomicBool,
) {
    let Some(signal) = signals.forever().next() else {
        return;
    };
    let first = std::time::Instant::now();
    if finished.load(std::sync::atomic::Ordering::SeqCst) {
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
    // The deploy's threads are mid-gate: the run ends from here, not by returning.
    #[allow(clippy::exit)]
    std::thread::scope(|scope| {
        scope.spawn(move || exit_on_a_later_signal(&mut signals, first, 128 + signal));
        ssh.close_all();
        let _ = std::fs::remove_dir_all(control);
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

/// The rest of a deploy, once the flake is evaluated (sessions may still be setting up).
#[allow(clippy::too_many_arguments)]
fn deploy_evaluated(
    global: Global,
    args: &DeployArgs,
    ssh: &Ssh,
    fleet: &waymark_fleet::Fleet,
    eval_ms: u64,
    rollback: Option<&str>,
    items: Option<&[String]>,
    mode: &Mode,
    state_dir: &std::path::Path,
    rev: Option<String>,
    finished: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<ExitStatus> {
    let opts = &args.options;
    let hosts = match rollback {
        Some(host) => {
            fleet.host(host)?;
            vec![host.to_owned()]
        }
        None => fleet.to_deploy(items)?,
    };
    let plan = fleet.plan(&hosts)?;
    let flake_dir = local_flake_dir(&opts.flake);
    let settings = Settings {
        goal: opts.goal,
        allow_drift: opts.allow_drift,
        ask: opts.ask,
        rev,
        remote_waymark: opts.remote_waymark.clone(),
        local_signing_key: opts.signing_key.clone(),
        records_dir: state_dir.join("deploys"),
        closures_dir: state_dir.join("closures"),
        release_repo: flake_dir.filter(|d| waymark_release::Releases::open(d).is_ok()),
        run_id: format!("{}-{}", now().replace([':', '-'], ""), std::process::id()),
    };
    let printer = Printer::new(opts.json, global.printer.quiet);
    let terminal = Terminal {
        color: global.color.should_style(),
        show: !opts.json,
    };
    let deployer = Deployer::new(fleet, ssh, settings, &printer, &terminal);
    let reports = if let Mode::Rollback { .. } = mode {
        vec![deployer.deploy_host(&hosts[0], mode)]
    } else {
        deployer.deploy_fleet(
            &plan,
            FleetOptions {
                // One question at a time.
                parallel: if opts.ask {
                    1
                } else {
                    usize::from(args.parallel)
                },
                max_failures: args.max_failures.map(|n| n as usize),
                canary: args.canary.map(usize::from),
            },
        )
    };
    deployer.close();
    let worst = reports
        .iter()
        .fold(HostResult::Unchanged, |w, r| w.worst(r.result));
    // Every host is done: from here, before its summary is out (someone may act on it at
    // once), a signal changes neither the outcome nor the status.
    finished.store(true, std::sync::atomic::Ordering::SeqCst);
    if opts.json {
        printer.emit(Event::Summary {
            schema: SCHEMA,
            at: now(),
            hosts: reports,
            eval_ms,
            own_cpu_ms: waymark_deploy::own_cpu_ms(),
            exit_code: worst.exit_code(),
        });
    } else {
        write_stdout(&summary_table(&reports))?;
    }
    Ok(exit_for(worst))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(deploy_all: bool) -> Known {
        let host = |name: &str, tags: &[&str]| {
            let at = |n: &str| Endpoint {
                name: n.to_owned(),
                user: "root".into(),
                address: format!("{n}.example"),
            };
            let endpoints = vec![at(name), at("builder")];
            let tags = tags.iter().map(|t| (*t).to_owned()).collect();
            (name.to_owned(), KnownHost { endpoints, tags })
        };
        Known {
            hosts: [
                host("db", &["data"]),
                host("web1", &["edge"]),
                host("web2", &["edge"]),
            ]
            .into(),
            deploy_all,
        }
    }

    fn likely(known: &Known, items: Option<&[&str]>, rollback: Option<&str>) -> Vec<String> {
        let items = items.map(|v| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        known
            .likely(items.as_deref(), rollback)
            .iter()
            .map(|h| h.endpoints[0].name.clone())
            .collect()
    }

    #[test]
    fn connections_open_ahead_for_the_hosts_the_selection_names_last_time() {
        let k = known(false);
        assert_eq!(likely(&k, Some(&["web1"]), None), ["web1"]);
        assert_eq!(
            likely(&k, Some(&["@edge", "db"]), None),
            ["db", "web1", "web2"]
        );
        assert_eq!(likely(&k, Some(&["web*"]), None), ["web1", "web2"]);
        assert_eq!(likely(&k, None, Some("db")), ["db"]);
        // A bad glob, an unknown name, nothing named: nothing ahead.
        assert!(likely(&k, Some(&["[web"]), None).is_empty());
        assert!(likely(&k, Some(&["mail"]), None).is_empty());
        assert!(likely(&k, None, None).is_empty());
        // Nothing named where the fleet deploys all: all; an empty selection: none.
        assert_eq!(likely(&known(true), None, None).len(), 3);
        assert!(likely(&known(true), Some(&[""]), None).is_empty());
        // The file's older form (addresses only) reads as nothing known.
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("ssh-addresses.json");
        std::fs::write(
            &old,
            r#"{"db":[{"name":"db","user":"root","address":"db"}]}"#,
        )
        .unwrap();
        assert!(read_known(&old).hosts.is_empty());
        write_known(&old, &k);
        assert_eq!(read_known(&old).hosts.len(), 3);
    }
}
