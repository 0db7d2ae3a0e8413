//! `waymark demo`: the main job on a built-in local demo, on a machine with only Nix.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use signal_hook::iterator::Signals;
use waymark_store::{LocalStore, Store};
use waymark_testbed::{
    Lab, PrivateStore, build_pair, command_check, fixtures, set_profile, target_decl,
};

use super::Global;
use super::diff::{DiffArgs, OutputFormat, compute, print};
use crate::ExitStatus;

/// Deploy a throw-away local fleet through the gates, with a failure and a rollback
///
/// Starts a build host and three targets on this machine, each with its own Nix store
/// and sshd on 127.0.0.1 (mount namespaces: needs root), deploys generation 1 to all,
/// then generation 2 where one host's switch test fails, then rolls one host back.
/// Needs only Nix, OpenSSH and a static busybox: no nixpkgs, no network. Stops only the
/// processes it started and leaves its state in the directory it names.
///
/// Without root, or with --diff-only: builds two generations of a host in a private
/// store and diffs them.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the demo's state (default: a new directory under $TMPDIR)
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Only build two closures in a private store and diff them (no root needed)
    #[arg(long)]
    pub diff_only: bool,
    /// With --diff-only: print the diff as JSON
    #[arg(long)]
    pub json: bool,
    /// Start the fleet and serve the queue service on it (`waymark serve`, with a
    /// deployment `web` of web1 and web2) until Ctrl-C, instead of the scripted deploys
    #[arg(long, conflicts_with = "diff_only")]
    pub serve: bool,
    /// With --serve: the address the service listens on
    #[arg(long, default_value = "127.0.0.1:8750", requires = "serve")]
    pub listen: std::net::SocketAddr,
}

/// The directory the demo leaves its state in: the one named, or a new one.
fn demo_dir(args: &DemoArgs) -> anyhow::Result<PathBuf> {
    Ok(match &args.dir {
        Some(d) => d.clone(),
        None => tempfile::Builder::new()
            .prefix("waymark-demo-")
            .tempdir()
            .context("creating the demo directory")?
            .keep(),
    })
}

fn is_root() -> bool {
    // The demo's hosts need mount namespaces; `id -u` avoids unsafe libc calls.
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

pub fn cmd_demo(global: Global, args: &DemoArgs) -> anyhow::Result<ExitStatus> {
    if !args.diff_only && !args.json {
        if is_root() {
            return fleet_demo(global, args);
        }
        global.printer.info(
            "The fleet demo needs root (each simulated host gets its own /nix in a mount namespace).
Running the closure-diff demo instead; run as root for the deploy demo.
",
        );
    }
    diff_demo(global, args)
}

/// Whether a signal stops the demo, behind the lock its steps hold while they start
/// programs: once the signal thread has set it, the demo starts nothing more, so the
/// children it then finds are all there will be.
#[derive(Default)]
struct Stopper(Mutex<bool>);

impl Stopper {
    /// Runs `start` (which starts programs, and may wait for short ones) unless the
    /// demo is stopping; then this thread waits for the signal thread to end the demo.
    fn starting<T>(&self, start: impl FnOnce() -> T) -> T {
        let stopping = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if *stopping {
            drop(stopping);
            loop {
                std::thread::park();
            }
        }
        start()
    }

    /// From now on nothing starts (waits for a start under way).
    fn stop(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
    }
}

/// Runs one step of the fleet demo: `waymark deploy ARGS` in the deployer's namespace,
/// its output shown as is.
fn step(
    lab: &Lab,
    stopper: &Stopper,
    p: crate::printer::Printer,
    what: &str,
    args: &[&str],
) -> anyhow::Result<i32> {
    let mut deploy = stopper.starting(|| {
        p.info(format_args!(
            "\n==> {what}\n    waymark deploy {}\n",
            args.join(" ")
        ));
        let mut cmd = lab.deploy_command(args).context("preparing the deployer")?;
        // A process group of its own: a Ctrl-C at the terminal reaches the demo, which
        // passes it on once; the deploy takes a second signal for "exit now", leaving
        // its connections.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.spawn().context("running waymark deploy")
    })?;
    let status = deploy.wait().context("running waymark deploy")?;
    Ok(status.code().unwrap_or(-1))
}

fn fleet_demo(global: Global, args: &DemoArgs) -> anyhow::Result<ExitStatus> {
    let dir = demo_dir(args)?;
    let stopper = Stopper::default();
    let (signals, catching) = super::catch_termination()?;
    std::thread::scope(|scope| {
        let _catching = catching;
        scope.spawn(|| stop_on_signal(signals, &stopper, &dir));
        if args.serve {
            serve_fleet(global, &stopper, &dir, args.listen)
        } else {
            show_fleet(global, &stopper, &dir)
        }
    })
}

/// Interrupted (SIGINT, SIGTERM, SIGHUP): stops what the demo started (its children:
/// the hosts' sshd and nix-daemon, a deploy under way, which ends its own connections),
/// signalling each once and starting nothing more, and exits 128 + the signal, naming
/// the directory it leaves; a second signal exits at once. Returns when the demo ends
/// otherwise.
fn stop_on_signal(mut signals: Signals, stopper: &Stopper, dir: &Path) {
    let Some(signal) = signals.forever().next() else {
        return;
    };
    let _ = writeln!(
        std::io::stderr(),
        "error: interrupted (signal {signal}): stopping the demo's hosts; its state stays in {}",
        dir.display()
    );
    // The demo's steps are mid-way: it ends from here, not by returning. A second
    // signal ends it at once.
    #[allow(clippy::exit)]
    std::thread::scope(|scope| {
        scope.spawn(|| {
            if signals.forever().next().is_some() {
                // Now: what runs is still told to stop, not waited for.
                for pid in children() {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
                std::process::exit(128 + signal);
            }
        });
        stopper.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut told = std::collections::BTreeSet::new();
        loop {
            let left = children();
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            // Once each: a deploy ends its connections on the first signal, and takes a
            // second for "now". Unreaped, a child's pid cannot have been reused.
            for pid in left {
                if told.insert(pid.as_raw_nonzero()) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::process::exit(128 + signal);
    });
}

/// This process's children still running (zombies left unreaped).
fn children() -> Vec<rustix::process::Pid> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
            };
            (field("PPid:")? == me && !field("State:")?.starts_with('Z'))
                .then(|| rustix::process::Pid::from_raw(pid))?
        })
        .collect()
}

/// `demo --serve`: the fleet, and `waymark serve` on it with the deployment `web`
/// made, until a signal stops both.
fn serve_fleet(
    global: Global,
    stopper: &Stopper,
    dir: &Path,
    listen: std::net::SocketAddr,
) -> anyhow::Result<ExitStatus> {
    let p = global.printer;
    let me = std::env::current_exe().context("finding the waymark binary")?;
    p.info(format_args!(
        "Starting a build host `builder` and targets `web1`, `web2` in {}.",
        dir.display()
    ));
    let (lab, rev) = stopper.starting(|| -> anyhow::Result<(Lab, String)> {
        let mut lab = Lab::new(dir, &["web1", "web2"], &me).context(
            "starting the demo fleet (needs root, openssh-server, nix-bin, busybox-static)",
        )?;
        // The commit a job deploys: generation 2 on both targets (they run generation 1).
        let rev = lab.flake.set_generations(&["web1", "web2"], "g1")?;
        Ok((lab, rev))
    })?;
    let state = dir.join("serve");
    let store = waymark_serve::Sqlite::open(&{
        std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
        waymark_serve::database_path(&state)
    })
    .context("creating the service's database")?;
    waymark_serve::Store::put_deployment(
        &store,
        &waymark_serve::store::Deployment {
            name: "web".into(),
            tenant: "default".into(),
            flake: lab.flake.dir().display().to_string(),
            hosts: vec!["web1".into(), "web2".into()],
            goal: "switch".into(),
            config_input: "panel".into(),
            desired_rev: None,
            applied_rev: None,
            created_at: String::new(),
        },
    )
    .context("creating the deployment `web`")?;
    drop(store);
    let mut serve = stopper.starting(|| {
        let mut cmd = lab
            .fleet
            .deployer_command(&me)
            .context("preparing the deployer")?;
        cmd.arg("serve")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--state-dir")
            .arg(&state)
            .env("WAYMARK_REMOTE_COMMAND", lab.remote_waymark())
            .env("WAYMARK_STATE_DIR", lab.state_dir());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.spawn().context("running waymark serve")
    })?;
    let token = state.join("token");
    p.info(format_args!(
        "\nThe queue service runs on http://{listen}, with a deployment `web` (web1, web2) of the flake in {f}.\n\
         Deploy commit {rev} (generation 2) to it:\n\n  \
         curl -H \"Authorization: Bearer $(cat {t})\" -d '{{\"rev\": \"{rev}\"}}' http://{listen}/v1/deployments/web/jobs\n\n\
         Watch it live (Server-Sent Events):\n\n  \
         curl -N -H \"Authorization: Bearer $(cat {t})\" -H 'Accept: text/event-stream' http://{listen}/v1/events\n\n\
         Ctrl-C stops the service and the hosts; the state stays in {d}.",
        f = lab.flake.dir().display(),
        t = token.display(),
        d = dir.display(),
    ));
    let status = serve.wait().context("running waymark serve")?;
    stopper.starting(|| drop(lab));
    Ok(if status.success() {
        ExitStatus::Success
    } else {
        ExitStatus::Error
    })
}

/// The fleet demo's steps. A signal during one waits until the programs it starts
/// have started (the hosts all up, a deploy under way): then the signal thread stops
/// them all.
fn show_fleet(global: Global, stopper: &Stopper, dir: &Path) -> anyhow::Result<ExitStatus> {
    let p = global.printer;
    let dir = dir.to_owned();
    let me = std::env::current_exe().context("finding the waymark binary")?;
    p.info(format_args!(
        "Starting a build host `builder` and targets `db`, `web1`, `web2` in {}:\neach has its own /nix (store, profiles, GC roots), its own /run and an sshd on 127.0.0.1.\nThe targets run an installed system (generation 1), not yet known-good.",
        dir.display()
    ));
    let mut lab = stopper.starting(|| -> anyhow::Result<Lab> {
        let mut lab = Lab::new(&dir, &["db", "web1", "web2"], &me).context(
            "starting the demo fleet (needs root, openssh-server, nix-bin, busybox-static)",
        )?;
        lab.flake.set_deploy(
            "db",
            &target_decl(r#"tags = [ "data" ]; tagReleases = true;"#),
        )?;
        for web in ["web1", "web2"] {
            lab.flake.set_deploy(
                web,
                &target_decl(&format!(
                    r#"tags = [ "edge" ]; dependsOn = [ "db" ]; tagReleases = true; healthChecks = [ {} ];"#,
                    command_check("web-responds", "test -e /run/current-system/nixos-version", 5)
                )),
            )?;
        }
        Ok(lab)
    })?;
    p.info(format_args!(
        "The fleet's flake (a git repository) is in {}; `waymark fleet --flake {}` shows it.\nweb1 and web2 depend on db, so db goes first.",
        lab.flake.dir().display(),
        lab.flake.dir().display()
    ));

    step(
        &lab,
        stopper,
        p,
        "Generation 1 to every host: the running system earns its known-good mark",
        &["--on", "@data,@edge"],
    )?;

    stopper.starting(|| -> anyhow::Result<()> {
        for h in ["db", "web1"] {
            lab.flake.set_generation(h, "g1")?;
        }
        lab.flake.set_generation("web2", "g2")?;
        Ok(())
    })?;
    p.info(
        "\nGeneration 2: openssl, linux and more move; web2's generation 2 fails its switch test.",
    );
    step(
        &lab,
        stopper,
        p,
        "What generation 2 changes on web1, against what web1 runs (the diff gate only)",
        &["web1", "--goal", "diff"],
    )?;
    let code = step(
        &lab,
        stopper,
        p,
        "Generation 2 to every host: web2 fails and is restored; db and web1 advance",
        &["--on", "db,web*"],
    )?;
    p.info(format_args!(
        "    (exit status {code}: a gate failed and the host was restored)"
    ));

    step(
        &lab,
        stopper,
        p,
        "Roll web1 back to its previous known-good closure (gates 2-5, nothing built)",
        &["rollback", "web1", "--to", "previous"],
    )?;

    let report = stopper.starting(|| -> anyhow::Result<String> {
        let mut report = String::from("\n==> Where things stand\n");
        for h in ["db", "web1", "web2"] {
            let (running, _, _) = lab.system(h)?;
            let generation = lab
                .generations
                .iter()
                .position(|g| *g == running)
                .map_or_else(
                    || "?".to_owned(),
                    |i| format!("generation {}", i.min(1) + 1),
                );
            let marks = lab.marks(h, h)?.len();
            let noun = if marks == 1 { "mark" } else { "marks" };
            report.push_str(&format!(
                "    {h:<5} runs {generation}, {marks} known-good {noun}\n"
            ));
        }
        let tags = std::process::Command::new("git")
            .arg("-C")
            .arg(lab.flake.dir())
            .args(["tag", "--list", "release/*"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        report.push_str("    release tags (only for what passed):\n");
        for t in tags.lines() {
            report.push_str(&format!("      {t}\n"));
        }
        Ok(report)
    })?;
    p.info(report);
    p.info(format_args!(
        "The demo's state stays in {d}: the hosts' stores under {d}/hosts/*/nix, the flake in {f},\nthe deploy records in {s}. Its sshd processes are stopped now.",
        d = dir.display(),
        f = lab.flake.dir().display(),
        s = lab.state_dir().display(),
    ));
    stopper.starting(|| drop(lab));
    Ok(ExitStatus::Success)
}

fn diff_demo(global: Global, args: &DemoArgs) -> anyhow::Result<ExitStatus> {
    let p = global.printer;
    let dir = demo_dir(args)?;
    let store = PrivateStore::at(&dir).context("creating the demo's private store")?;
    p.info(format_args!(
        "Building two generations of a demo host `web` in a private store in {}.",
        dir.display()
    ));
    p.info("Generation 2 bumps openssl and linux, downgrades nginx, adds htop and openssh, removes nano,");
    p.info("changes an environment variable of sqlite, a builder argument of bash and the source of dbus.");
    let (g1, g2) = (fixtures::web_gen1(), fixtures::web_gen2());
    let pair = build_pair(&store, &g1, &g2).context("building the demo closures")?;
    let profile = set_profile(&store, "system", &pair.old).context("setting generation 1")?;
    set_profile(&store, "system", &pair.new).context("setting generation 2")?;
    let link = |n: u32| profile.with_file_name(format!("system-{n}-link"));
    p.info("Diffing generation 1 against generation 2 of the system profile:\n");
    let diff_args = DiffArgs {
        old: link(1).to_string_lossy().into_owned(),
        new: link(2).to_string_lossy().into_owned(),
        store: None,
        old_store: None,
        new_store: None,
        output_format: OutputFormat::Text,
        json: args.json,
        exit_code: false,
        all: false,
        no_causes: false,
    };
    let local = Store::Local(LocalStore {
        store_dir: store.store_dir().to_string_lossy().into_owned(),
        real_store_dir: store.store_dir(),
        db: store.db_path(),
        url: None,
    });
    let report = compute(&diff_args, (local.clone(), local), global)?;
    let format = if args.json {
        OutputFormat::Json
    } else {
        OutputFormat::Text
    };
    print(&report, format, false, global)?;
    p.info(format_args!(
        "\nThe demo store stays in {dir}. To run the same diff yourself:\n  NIX_STORE_DIR={store} NIX_STATE_DIR={state} waymark diff {a} {b}",
        dir = dir.display(),
        store = store.store_dir().display(),
        state = store.state_dir().display(),
        a = diff_args.old,
        b = diff_args.new,
    ));
    Ok(ExitStatus::Success)
}
