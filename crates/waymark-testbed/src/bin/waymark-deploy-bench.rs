//! Times `waymark deploy` on simulated hosts (a build host and N targets, each with its
//! own /nix and sshd): one host through the five gates, a no-change redeploy, and fleets
//! with `--parallel` equal to their size and 1. Prints JSON on stdout; bench/deploy.sh
//! puts it beside deploy-rs. Needs root (mount namespaces).
//!
//! Besides wall time, the CPU of the deploying side alone: the deployer runs in a cgroup
//! of its own (v2), which its ssh masters, `nix` commands and relays stay in even once
//! detached, while the simulated hosts (sshd, activation, nix-daemon) run outside it. On
//! this machine both share the same cores; on a real fleet each host has its own. So the
//! machine's busy CPU time during each deploy is read too (`/proc/stat`): a deploy whose
//! cores were busy all along could not have been faster with the work it had.

// Progress on stderr, the figures on stdout: a benchmark script's tool.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Parser;
use serde_json::{Value, json};
use waymark_testbed::Lab;

/// Time waymark deploy on simulated hosts
#[derive(Debug, Parser)]
struct Args {
    /// The waymark binary
    #[arg(long)]
    waymark: PathBuf,
    /// Directory of the lab (created)
    #[arg(long)]
    dir: PathBuf,
    /// Runs per figure
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Fleet sizes to time
    #[arg(long, value_delimiter = ',', default_value = "5,10,20")]
    fleets: Vec<usize>,
    /// Start the lab, print how to reach it, and keep it up until Ctrl-C or SIGTERM (to
    /// look around)
    #[arg(long)]
    hold: bool,
    /// An ssh client option for every host (`KexAlgorithms curve25519-sha256`), as a
    /// user's ~/.ssh/config would set it
    #[arg(long, value_name = "OPTION")]
    ssh_option: Vec<String>,
}

/// A cgroup (v2) the deployer runs in, to read the CPU it and everything it starts used.
struct DeployerCgroup(PathBuf);

impl DeployerCgroup {
    /// One under the cgroup2 hierarchy (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
    /// a hybrid one); `None` where there is none to use.
    fn create() -> Option<Self> {
        let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .iter()
            .map(Path::new)
            .find(|r| r.join("cgroup.procs").exists() && r.join("cgroup.controllers").exists())?;
        let dir = root.join(format!("waymark-bench-deployer-{}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        dir.join("cpu.stat").exists().then_some(Self(dir))
    }

    /// `cmd`, started in the cgroup.
    fn wrap(&self, cmd: &Command) -> Command {
        let mut wrapped = Command::new("sh");
        wrapped
            .args(["-c", r#"echo $$ > "$0" && exec "$@""#])
            .arg(self.0.join("cgroup.procs"))
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(v) => wrapped.env(key, v),
                None => wrapped.env_remove(key),
            };
        }
        wrapped
    }

    /// CPU seconds used in the cgroup so far.
    fn cpu_s(&self) -> f64 {
        std::fs::read_to_string(self.0.join("cpu.stat"))
            .ok()
            .and_then(|stat| {
                stat.lines()
                    .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse::<f64>().ok())
            })
            .map_or(f64::NAN, |us| us / 1e6)
    }
}

/// CPU seconds this machine's cores have been busy since boot, all processes together
/// (`/proc/stat`: every state but idle and iowait); NaN where it cannot be read.
fn machine_busy_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return f64::NAN;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return f64::NAN;
    };
    // user nice system idle iowait irq softirq steal (guest time is within user's)
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|t| t.parse().ok())
        .collect();
    if ticks.len() < 8 {
        return f64::NAN;
    }
    let busy: f64 = ticks.iter().sum::<f64>() - ticks[3] - ticks[4];
    // USER_HZ is 100 on every Linux architecture's ABI.
    busy / 100.0
}

impl Drop for DeployerCgroup {
    fn drop(&mut self) {
        // Empty by then: every deploy has ended, and its masters with it.
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// One deploy: wall time and the summary event, with `gates`: seconds per gate of the
/// first host, `deployer_cpu_s`: the CPU the deploying side used (null where no cgroup
/// could be made), and `machine_cpu_s`: the CPU every process of this machine used
/// meanwhile (the deploying side and the simulated hosts).
fn deploy(
    lab: &Lab,
    cgroup: Option<&DeployerCgroup>,
    args: &[&str],
) -> anyhow::Result<(f64, Value)> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let cmd: Command = lab.deploy_command(&all)?;
    let mut cmd = match cgroup {
        Some(c) => c.wrap(&cmd),
        None => cmd,
    };
    let cpu_before = cgroup.map(DeployerCgroup::cpu_s);
    let machine_before = machine_busy_cpu_s();
    let started = Instant::now();
    let out = cmd.output().context("running waymark deploy")?;
    let wall = started.elapsed().as_secs_f64();
    let machine_cpu = machine_busy_cpu_s() - machine_before;
    // The masters end as the deploy does; a moment for their last exit.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let deployer_cpu = cgroup.zip(cpu_before).map(|(c, before)| c.cpu_s() - before);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    let mut summary = events
        .iter()
        .find(|e| e["event"] == "summary")
        .cloned()
        .with_context(|| format!("no summary: {}", String::from_utf8_lossy(&out.stderr)))?;
    let first = summary["hosts"][0]["host"].clone();
    let gates: serde_json::Map<String, Value> = events
        .iter()
        .filter(|e| e["event"] == "end" && e["host"] == first)
        .map(|e| {
            (
                e["gate"].as_str().unwrap_or("?").to_owned(),
                json!(ms(e, "duration_ms")),
            )
        })
        .collect();
    summary["gates"] = Value::Object(gates);
    summary["deployer_cpu_s"] = json!(deployer_cpu);
    summary["machine_cpu_s"] = finite(machine_cpu);
    if summary["exit_code"] != 0 {
        bail!("deploy {args:?} failed: {summary}");
    }
    Ok((wall, summary))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A figure, or null when it could not be measured.
fn finite(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}

fn ms(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0) / 1000.0
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let biggest = args.fleets.iter().copied().max().unwrap_or(1).max(1);
    let names: Vec<String> = (1..=biggest).map(|i| format!("t{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    eprintln!(
        "starting a build host and {biggest} targets in {}",
        args.dir.display()
    );
    let mut lab = Lab::new(&args.dir, &refs, &args.waymark).context("starting the lab")?;
    let cgroup = DeployerCgroup::create();
    if cgroup.is_none() {
        eprintln!("no cgroup v2 to run the deployer in: its own CPU is not measured");
    }
    let cgroup = cgroup.as_ref();
    if !args.ssh_option.is_empty() {
        // ssh takes the first value it reads: after every host's block, these only add.
        let mut block = "Host *\n".to_owned();
        for option in &args.ssh_option {
            block.push_str(&format!("  {option}\n"));
        }
        let config = lab.fleet.ssh_config();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(config)
            .with_context(|| format!("opening {}", config.display()))?;
        std::io::Write::write_all(&mut file, block.as_bytes())?;
    }
    // The tests' 3 s confirmation window is too tight for 20 hosts on 2 cores: a late
    // confirmation is (rightly) a failed deploy. 30 s, deploy-rs's default.
    for host in &refs {
        lab.flake
            .set_deploy(host, &waymark_testbed::target_decl("confirmTimeout = 30;"))?;
    }
    if args.hold {
        eprintln!(
            "up: ssh -F {} t01; NIX_SSHOPTS='{}'; flake {}",
            lab.fleet.ssh_config().display(),
            lab.fleet.nix_sshopts(),
            lab.flake.dir().display()
        );
        // Until Ctrl-C or SIGTERM, then the lab's hosts are stopped as it is dropped.
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])?;
        let _ = signals.forever().next();
        eprintln!("stopping the lab");
        return Ok(());
    }

    // One host, every gate; the generation flips each run.
    let mut single = Vec::new();
    for run in 0..args.runs {
        // A new closure each run (a salt, as deploy-rs's benchmark bumps one), and
        // another generation.
        let generation = if run % 2 == 0 { "g1" } else { "g0" };
        lab.flake.set_generation("t01", generation)?;
        lab.flake.set_salt(&["t01"], &format!("one-{run}"))?;
        let (wall, summary) = deploy(&lab, cgroup, &["t01"])?;
        let host = &summary["hosts"][0];
        single.push(json!({
            "wall_s": wall,
            "eval_s": ms(&summary, "eval_ms"),
            "host_s": ms(host, "duration_ms"),
            "nix_s": ms(host, "nix_ms"),
            "remote_s": ms(host, "remote_ms"),
            "own_cpu_s": ms(&summary, "own_cpu_ms"),
            "deployer_cpu_s": summary["deployer_cpu_s"],
            "machine_cpu_s": summary["machine_cpu_s"],
            "ssh_connections": host["ssh_connections"],
            "result": host["result"],
            "gates": summary["gates"],
        }));
        eprintln!("one host, run {run}: {wall:.2} s");
    }
    let mut unchanged = Vec::new();
    for _ in 0..args.runs {
        let (wall, summary) = deploy(&lab, cgroup, &["t01"])?;
        if summary["hosts"][0]["result"] != "unchanged" {
            bail!("a redeploy of the same closure was not a no-op: {summary}");
        }
        unchanged.push(wall);
    }

    let mut fleets = Vec::new();
    for &n in &args.fleets {
        let hosts = &refs[..n];
        let on = hosts.join(",");
        for parallel in [n, 1] {
            let mut walls = Vec::new();
            let mut deployer_cpu = Vec::new();
            let mut machine_cpu = Vec::new();
            let mut connections = 0u64;
            for run in 0..args.runs {
                let generation = if run % 2 == 0 { "g1" } else { "g0" };
                // Every host gets a change (t01 may be on either generation).
                lab.flake.set_generations(hosts, generation)?;
                lab.flake
                    .set_salt(hosts, &format!("{n}-{parallel}-{run}"))?;
                let (wall, summary) = deploy(
                    &lab,
                    cgroup,
                    &["--on", &on, "--parallel", &parallel.to_string()],
                )?;
                connections = summary["hosts"].as_array().map_or(0, |h| {
                    h.iter()
                        .filter_map(|r| r["ssh_connections"].as_u64())
                        .max()
                        .unwrap_or(0)
                });
                walls.push(wall);
                deployer_cpu.push(summary["deployer_cpu_s"].as_f64().unwrap_or(f64::NAN));
                machine_cpu.push(summary["machine_cpu_s"].as_f64().unwrap_or(f64::NAN));
                eprintln!("{n} hosts, --parallel {parallel}, run {run}: {wall:.2} s");
            }
            fleets.push(json!({
                "hosts": n, "parallel": parallel, "wall_s": median(walls),
                "deployer_cpu_s": finite(median(deployer_cpu)),
                "machine_cpu_s": finite(median(machine_cpu)),
                "max_ssh_connections_per_host": connections,
            }));
        }
        // Leave every host on g0 or g1 consistently for the next size.
        lab.flake.set_generations(hosts, "g0")?;
        deploy(&lab, cgroup, &["--on", &on, "--parallel", &n.to_string()])?;
    }

    let col = |key: &str| {
        median(
            single
                .iter()
                .map(|r| r[key].as_f64().unwrap_or(f64::NAN))
                .collect(),
        )
    };
    let doc = json!({
        "single": {
            "runs": single,
            "median_wall_s": col("wall_s"),
            "median_eval_s": col("eval_s"),
            "median_nix_s": col("nix_s"),
            "median_remote_s": col("remote_s"),
            "median_own_cpu_s": col("own_cpu_s"),
            "median_deployer_cpu_s": finite(col("deployer_cpu_s")),
            "median_machine_cpu_s": finite(col("machine_cpu_s")),
        },
        "cores": std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        "unchanged_median_wall_s": median(unchanged),
        "fleets": fleets,
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}
