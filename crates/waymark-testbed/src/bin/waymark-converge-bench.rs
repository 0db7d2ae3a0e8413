//! Times `waymark converge` on simulated hosts (each with its own /nix, /run and sshd):
//! the time from a hand switch on a host to the controller's report of it (`facts`
//! event), over N changes, with each host watcher (`waymark host-watch`, inotify) and
//! with the poll fallback; and the controller's CPU while it watches every host and
//! nothing happens. Prints JSON on stdout; bench/converge.sh runs it. Needs root.
//!
//! The change's time is the running-system link's own modification time on the host
//! (`stat` there: the lab's hosts share this machine's clock), so the ssh command that
//! makes the change is not counted; the report's time is the event's `at_ms`.

// Progress on stderr, the figures on stdout: a benchmark script's tool.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use serde_json::{Value, json};
use waymark_testbed::Lab;

/// Time waymark converge's detection and idle cost on simulated hosts
#[derive(Debug, Parser)]
struct Args {
    /// The waymark binary
    #[arg(long)]
    waymark: PathBuf,
    /// Directory of the lab (created)
    #[arg(long)]
    dir: PathBuf,
    /// Hosts watched
    #[arg(long, default_value_t = 20)]
    hosts: usize,
    /// Hand switches timed per watch mode
    #[arg(long, default_value_t = 50)]
    changes: usize,
    /// Seconds of idle CPU measured
    #[arg(long, default_value_t = 30)]
    idle: u64,
}

/// A running controller and its events.
struct Controller {
    child: Child,
    events: mpsc::Receiver<Value>,
}

impl Controller {
    fn start(lab: &Lab, waymark: &std::path::Path, mode: &str) -> anyhow::Result<Self> {
        let mut cmd = lab.fleet.deployer_command(waymark)?;
        cmd.args(["converge", "--json", "--watch", mode, "--flake"])
            .arg(lab.flake.dir())
            .env("WAYMARK_REMOTE_COMMAND", lab.remote_waymark())
            .env("WAYMARK_STATE_DIR", lab.state_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().context("starting waymark converge")?;
        let out = child.stdout.take().expect("piped");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        Ok(Self { child, events })
    }

    /// The next `facts` event of `host` that satisfies `pred` (a minute at most).
    fn facts(&self, host: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .events
                .recv_timeout(left)
                .with_context(|| format!("no report from {host}"))?;
            if v["type"] == "facts" && v["host"] == host && pred(&v) {
                return Ok(v);
            }
        }
    }

    /// CPU ticks of the controller and its child processes (the watchers' ssh clients).
    fn cpu_ticks(&self) -> u64 {
        let controller = self.child.id();
        let mut total = 0;
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return 0;
        };
        for entry in procs.flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // Fields after the command's closing parenthesis: state ppid ... utime stime.
            let Some((head, rest)) = stat.rsplit_once(") ") else {
                continue;
            };
            let fields: Vec<&str> = rest.split(' ').collect();
            let this: u32 = head
                .split(' ')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let parent: u32 = fields.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            if this == controller || parent == controller {
                let t = |i: usize| {
                    fields
                        .get(i)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                total += t(11) + t(12);
            }
        }
        total
    }

    /// Ends it with SIGTERM, as a service manager does: it ends its watchers' ssh
    /// clients too (a SIGKILL would leave them behind).
    fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        // Also when the benchmark fails half-way: no controller outlives it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Hand switches on `host` between `a` and `b`; the latency of each to its report, ms.
fn detections(
    lab: &Lab,
    ctl: &Controller,
    host: &str,
    paths: [&str; 2],
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for i in 0..n {
        let to = paths[(i + 1) % 2];
        let changed = lab.exec(
            host,
            &format!(
                "nix-env -p /nix/var/nix/profiles/system --set {to} >/dev/null 2>&1 && \
                 {to}/bin/switch-to-configuration switch >/dev/null 2>&1 && stat -c %.6Y /run/current-system"
            ),
        )?;
        let changed_ms: f64 = changed
            .trim()
            .parse::<f64>()
            .with_context(|| format!("reading the link's time: {changed:?}"))?
            * 1000.0;
        let seen = ctl.facts(host, |v| v["current"] == to)?;
        let at = seen["at_ms"].as_f64().unwrap_or(f64::NAN);
        out.push(at - changed_ms);
        // Let the report of the profile's move, if separate, pass before the next change.
        std::thread::sleep(Duration::from_millis(100));
        while ctl.events.try_recv().is_ok() {}
    }
    Ok(out)
}

fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    json!({
        "changes": v.len(),
        "median_ms": percentile(&v, 50.0),
        "p99_ms": percentile(&v, 99.0),
        "max_ms": v.last().copied().unwrap_or(f64::NAN),
        "min_ms": v.first().copied().unwrap_or(f64::NAN),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.hosts == 0 {
        bail!("--hosts must be at least 1");
    }
    std::fs::create_dir_all(&args.dir)?;
    let names: Vec<String> = (1..=args.hosts).map(|i| format!("h{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    eprintln!("starting {} simulated hosts...", args.hosts);
    let lab = Lab::new(&args.dir, &refs, &args.waymark)?;
    let (g0, g1) = (lab.generations[0].clone(), lab.generations[1].clone());
    let probe = &names[0];
    lab.fleet.copy("builder", probe, &g1)?;
    let ticks_per_s: f64 = String::from_utf8(
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()?
            .stdout,
    )?
    .trim()
    .parse()
    .unwrap_or(100.0);

    let mut result = json!({ "hosts": args.hosts });
    for mode in ["auto", "poll"] {
        eprintln!("watch mode {mode}: waiting for every host's first report...");
        let ctl = Controller::start(&lab, &args.waymark, mode)?;
        let mut unheard: std::collections::BTreeSet<&String> = names.iter().collect();
        let deadline = Instant::now() + Duration::from_mins(2);
        while !unheard.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = ctl
                .events
                .recv_timeout(left)
                .with_context(|| format!("no report from {unheard:?}"))?;
            if v["type"] == "facts" {
                unheard.retain(|n| v["host"] != n.as_str());
            }
        }
        if mode == "auto" {
            // Idle: every host watched, nothing changes, no release to converge to.
            std::thread::sleep(Duration::from_secs(2));
            let before = ctl.cpu_ticks();
            let started = Instant::now();
            std::thread::sleep(Duration::from_secs(args.idle));
            let used = (ctl.cpu_ticks() - before) as f64 / ticks_per_s;
            let share = 100.0 * used / started.elapsed().as_secs_f64();
            eprintln!(
                "idle CPU with {} hosts watched: {share:.3} % of a core",
                args.hosts
            );
            result["idle_cpu_percent_of_a_core"] = json!(share);
            result["idle_seconds"] = json!(args.idle);
        }
        eprintln!(
            "watch mode {mode}: {} hand switches on {probe}...",
            args.changes
        );
        let lat = detections(&lab, &ctl, probe, [&g0, &g1], args.changes)?;
        let s = summary(lat);
        eprintln!("watch mode {mode}: {s}");
        result[format!("detect_{mode}")] = s;
        ctl.stop();
    }
    println!("{result}");
    Ok(())
}
