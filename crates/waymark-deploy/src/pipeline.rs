//! One host through the gates. Each gate either passes or stops the host with a
//! [`HostResult`] that says where the target stands; the only way to `Deployed` at the
//! goal `switch` is the agent's `committed`, read back over a new SSH connection, and
//! the target verified to run the new closure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use waymark_diff::DiffReport;
use waymark_evidence::{DiffSummary, Evidence, Gate, GateResult, Outcome};
use waymark_fleet::{Fleet, Host};
use waymark_known_good::Record;
use waymark_store::{DrvFiles, Store, closure_from_path_info, read_closure, shell_quote as q};

use crate::activation::{AgentState, DryRun};
use crate::batch::{Batcher, batch_script, split_batch};
use crate::decide::{
    Baseline, EXIT_AGENT_NOT_STARTED, EXIT_BUSY, EXIT_CONFIRM_LATE, already_there, baseline,
    commit_verified, restore_verified, rollback_target,
};
use crate::events::{Event, HostReport, HostResult, SCHEMA, Sink, ms, now};
use crate::progress::NixLog;
use crate::ssh::{DAEMON_SOCKET, Endpoint, Held, Reply, Ssh, Talk};
use crate::state::write_atomic;
use crate::unfinished::{AgentSeen, TargetNow, parse_agents, read_journals, unfinished};
use waymark_fault::at as fault;

mod finish;
use finish::TargetMark;

/// The line that ends the probe's answer.
const PROBED: &str = "@@probed";

/// `real PATH`, in `$(...)`: where PATH leads, every link followed, as `readlink -e`
/// says for a directory, but with a fork and no program to start (the `cd` stays in
/// the substitution's subshell). The agent has its own.
const REAL: &str = r#"real() { cd -P -- "$1" 2>/dev/null && pwd -P; }"#;

/// The build host's session, the same whatever is built (so it can start before the
/// flake is evaluated): it answers which of the paths it is sent (one a line, up to an
/// empty line) its store lacks, takes those as `nix-store --export` after a line
/// `export` (or none after `none`), says `@@imported`, then runs what it is sent
/// ([`SERVE`]): the build, then the marks of what was built. `read` takes a byte at a
/// time, so what follows the list is left for the import.
pub fn build_session_script() -> String {
    format!(
        r#"[ ! -S {DAEMON_SOCKET} ] || echo "daemon=yes"
set --
while IFS= read -r p && [ -n "$p" ]; do set -- "$@" "$p"; done
[ $# = 0 ] || nix-store --check-validity --print-invalid "$@"
echo "@@missing"
if IFS= read -r more && [ "$more" = export ]; then
  nix-store --import >/dev/null || {{ echo "@@import-refused"; exit 0; }}
fi
echo "@@imported"
{SERVE}"#
    )
}

/// A target's probe: what it runs, its boot default, failed units, its known-good marks
/// and (unless it runs `kept_root`, whose closure is known here) the closure it runs;
/// then it runs the script it is sent next ([`RUN_NEXT`]). The same for every deploy to
/// the host, so it can start before the flake is evaluated.
pub fn probe_script(remote_waymark: &str, kept_root: Option<&str>) -> String {
    let kept_root = kept_root.map_or_else(|| "''".to_owned(), q);
    format!(
        r#"{REAL}
running=$(real /run/current-system)
echo "running=$running"
echo "profile=$(real /nix/var/nix/profiles/system)"
[ ! -S {DAEMON_SOCKET} ] || echo "daemon=yes"
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  echo "units=yes"; systemctl list-units --state=failed --no-legend --plain 2>/dev/null | awk '{{print "failed=" $1}}'
fi
# Agents whose deploy left its evidence and did not say it marked (see unfinished.rs).
for d in /run/waymark/deploy/*; do
  [ -f "$d/evidence.json" ] && [ ! -e "$d/marked" ] || continue
  s=; {{ while IFS= read -r l; do s=$l; done < "$d/state"; }} 2>/dev/null
  e=; {{ IFS= read -r e < "$d/evidence.json"; }} 2>/dev/null
  printf 'agent=%s\nagent-state=%s\nagent-evidence=%s\n' "$d" "$s" "$e"
done
# Another deploy's agent at work: the lock's holder runs (as the launch takes it).
a=; {{ read -r a < /run/waymark/active/pid; }} 2>/dev/null
if [ -n "$a" ] && kill -0 "$a" 2>/dev/null &&
  ! grep -q '^State:[[:space:]]*Z' "/proc/$a/status" 2>/dev/null; then
  i=; {{ read -r i < /run/waymark/active/id; }} 2>/dev/null; printf 'active=%s\n' "${{i:-?}}"
fi
echo "@@marks"
{remote_waymark} known-good list --json
[ -n "$running" ] && [ "$running" != {kept_root} ] && echo "@@old" &&
  nix --extra-experimental-features nix-command path-info --json --recursive "$running"
echo; echo "{PROBED}"
{RUN_NEXT}"#
    )
}

/// The closure `host` was last committed with, as kept in `closures_dir`; none when
/// there is no readable one (it only saves reading it on the target).
pub fn kept_closure(closures_dir: &std::path::Path, host: &str) -> Option<waymark_diff::Closure> {
    let bytes = std::fs::read(closures_dir.join(format!("{host}.json"))).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The end of a script that runs the script sent to it next: lines up to `@@run`. The
/// shell's `read` takes a byte at a time, so what follows is left on stdin for it.
const RUN_NEXT: &str = r#"next=""
while IFS= read -r line; do
  [ "$line" = @@run ] && { eval "$next"; exit; }
  next="$next$line
"
done"#;

/// The end of a script that stays to run what it is sent, one script after another:
/// lines up to `@@run`, run with no stdin, its stderr in its stdout, then its exit
/// status (`@@status N`) and `@@ran`.
/// It ends when its input does.
const SERVE: &str = r#"while next=""; do
  while IFS= read -r line || exit 0; [ "$line" != @@run ]; do next="$next$line
"; done
  (eval "$next") </dev/null 2>&1; echo "@@status $?"; echo "@@ran"
done"#;

/// What begins each line of a command's output that a script relays as it comes
/// (Nix's structured build log): no such line can be read as a marker.
const RELAYED: char = '~';

/// Runs `script` in a session that [`SERVE`]s: its reply (output as both stdout and
/// stderr, its exit status), or `None` when the session is gone.
fn serve(talk: &mut Talk, script: &str) -> Option<Reply> {
    serve_taking(talk, script, &mut |_| false)
}

/// [`serve`], handing each relayed line (one the script prints behind [`RELAYED`]) to
/// `relayed` as it comes, instead of keeping it in the reply.
fn serve_relaying(talk: &mut Talk, script: &str, relayed: &mut dyn FnMut(&str)) -> Option<Reply> {
    serve_taking(talk, script, &mut |line| {
        line.strip_prefix(RELAYED).map(&mut *relayed).is_some()
    })
}

/// [`serve`], showing each line to `take` as it comes; the lines it takes are not kept.
fn serve_taking(
    talk: &mut Talk,
    script: &str,
    take: &mut dyn FnMut(&str) -> bool,
) -> Option<Reply> {
    talk.send(format!("{script}\n@@run\n").as_bytes()).ok()?;
    let mut lines = talk.lines_until_each("@@ran", take)?;
    let code = lines
        .pop()
        .and_then(|l| l.strip_prefix("@@status ")?.parse().ok())
        .unwrap_or(-1);
    let output = lines.join("\n") + "\n";
    Some(Reply {
        code,
        stdout: output.clone(),
        stderr: output,
    })
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
}

/// A build's outcome for one host: how it was built and its closure's path-info, or
/// why it was not.
pub(crate) type BuildResult = Result<(String, String), String>;

/// Why a host stopped before the end.
struct Stop {
    result: HostResult,
    message: String,
}

fn stop(result: HostResult, message: impl Into<String>) -> Stop {
    Stop {
        result,
        message: message.into(),
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
    /// `nix path-info --json --recursive` of the new closure, as the build host read it.
    new_closure: Option<String>,
    /// The new closure once read (for the copy, else by the diff), kept for the next
    /// deploy once committed.
    new_read: Option<waymark_diff::Closure>,
    /// What runs, once read for the copy; the diff compares against it.
    old_read: Option<waymark_diff::Closure>,
    /// The build on the build host, done while the target was probed, and its time.
    early_build: Option<(Result<String, String>, Duration)>,
    /// The reply of the call that dry-activated and started the agent (gate 3 and the
    /// start of gate 4 share one round trip).
    launched: Option<Reply>,
    /// The probe's session, kept open for gate 3: it runs the script it is sent next.
    held_launch: Option<Talk>,
    /// Time measured in one gate that belongs to the next (the shared round trip).
    carry: Duration,
    /// The target's known-good record, made over the confirmation's connection.
    target_record: Option<Record>,
    notes: Vec<String>,
}

/// What the target said when probed.
#[derive(Default)]
struct Probe {
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

/// The paths of the new closure the target lacks, when both it and what the target
/// runs (held there whole) are known here: then only those are sent, and Nix does not
/// walk the closure path by path over the build host's connection. The root is always
/// among them, so a copy that succeeds proves the whole closure is there (Nix skips
/// what the target has). `None`: the whole closure goes.
fn lacking(run: &mut Run, probe: &Probe, closure: &str) -> Option<Vec<String>> {
    /// Past this many, the copy takes the closure (and no long argument list).
    const MAX_LISTED: usize = 2000;
    let url = run.target.store_url();
    let parse = |json: &str, root: &str| {
        closure_from_path_info(json.as_bytes(), "/nix/store", root, &url).ok()
    };
    if run.new_read.is_none() {
        run.new_read = run.new_closure.as_deref().and_then(|j| parse(j, closure));
    }
    if run.old_read.is_none() {
        run.old_read = match (&probe.known_old, &probe.old_closure, &probe.running) {
            (Some(kept), _, _) => Some(kept.clone()),
            (None, Some(json), Some(running)) => parse(json, running),
            _ => None,
        };
    }
    let mut lacking = run.new_read.as_ref()?.paths_not_in(run.old_read.as_ref()?);
    if !lacking.contains(&closure) {
        lacking.push(closure);
    }
    // A `.drv` given to `nix copy` is an installable: older Nix would build its outputs.
    let listable = lacking.len() <= MAX_LISTED
        && !lacking.iter().any(|p| {
            std::path::Path::new(p)
                .extension()
                .is_some_and(|x| x == "drv")
        });
    listable.then(|| lacking.into_iter().map(str::to_owned).collect())
}

/// Lines `key=value` of a remote script's output.
fn fields(out: &str) -> BTreeMap<&str, Vec<&str>> {
    let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in out.lines() {
        if let Some((k, v)) = line.split_once('=') {
            map.entry(k).or_default().push(v);
        }
    }
    map
}

fn field<'m>(map: &'m BTreeMap<&str, Vec<&str>>, key: &str) -> Option<&'m str> {
    map.get(key)
        .and_then(|v| v.first().copied())
        .filter(|v| !v.is_empty())
}

/// A shell loop on the target that waits until the agent's state matches `pattern` (a
/// `case` pattern) or `seconds` pass, then prints `state=`, `running=`, `profile=` (also
/// left in `$s`, `$running` and `$profile`) and the tail of the activation log.
fn wait_script(dir: &str, pattern: &str, seconds: u64) -> String {
    format!(
        r#"{REAL}
d={d}; i=0; s=
# The state is the file's last whole line.
last_state() {{ {{ while IFS= read -r l; do s=$l; done < "$d/state"; }} 2>/dev/null; }}
if [ -p "$d/events" ]; then
  # The agent writes each new state to the FIFO: wake on it, no polling. It is open
  # before the state is read, so no change is missed; a watchdog writes the timeout.
  exec 3<>"$d/events"
  # The watchdog sleeps a second at a time while the flag file is there: whenever the
  # wait ends, it is gone within a second, with no kill to race its start.
  f="$d/waiting.$$"; : > "$f"
  (n=0; while [ "$n" -lt {seconds} ] && [ -e "$f" ]; do sleep 1; n=$(( n + 1 )); done
    [ ! -e "$f" ] || echo timeout >&3) </dev/null >/dev/null 2>&1 &
  while :; do last_state; case "$s" in {pattern}) break ;; esac
    read -r e <&3; [ "$e" != timeout ] || {{ last_state; break; }}; done
  rm -f "$f"; exec 3<&-
else
  while :; do last_state; case "$s" in {pattern}) break ;; esac
    [ "$i" -lt {rounds} ] || break; i=$(( i + 1 ))
    if [ "$i" -le 30 ]; then sleep 0.01; else sleep 0.05; fi; done
fi
running=$(real /run/current-system); profile=$(real /nix/var/nix/profiles/system)
echo "state=$s"; echo "running=$running"; echo "profile=$profile"
case "$s" in awaiting-confirmation|committed|kept) ;; *)
  tail -n 3 "$d/activate.log" "$d/commit.log" "$d/restore.log" 2>/dev/null | grep -v '^==>' | grep . | sed 's/^/log=/' ;;
esac
"#,
        d = q(dir),
        // 30 rounds of 10 ms (most waits end there), then 20 a second.
        rounds = 30 + seconds * 20
    )
}

/// Seconds a health check's round trip may take past its own timeout before the
/// deployer gives up on it (the connection, the shell starting).
const CHECK_MARGIN: u64 = 5;

/// Seconds the health checks of a host may take together, as the deployer bounds them:
/// the agent's window includes them all, so a check that hangs is given up on, and the
/// deploy aborted for it, before the window closes.
fn checks_budget(host: &Host) -> u64 {
    host.health_checks
        .iter()
        .map(|c| c.timeout + CHECK_MARGIN)
        .sum()
}

const FINAL: &str = "committed|kept|restored:*|restore-failed:*|refused:*";

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
        }
    }

    /// Ends the sessions kept open and closes the master connections this deployer
    /// opened.
    pub fn close(&self) {
        std::mem::take(&mut *self.build_sessions.lock().expect("not poisoned"));
        self.ssh.close_all();
    }

    /// Runs `script` on a build host, together with the scripts other hosts submit for
    /// it meanwhile ([`Batcher`]): the marks of hosts that finish together.
    fn run_on_build_host(&self, host: &Endpoint, script: &str) -> Reply {
        let batcher = std::sync::Arc::clone(
            self.build_batches
                .lock()
                .expect("not poisoned")
                .entry(host.destination())
                .or_default(),
        );
        batcher.submit(script, |scripts| {
            split_batch(
                self.run_in_build_session(host, &batch_script(scripts)),
                scripts.len(),
            )
        })
    }

    /// Runs `script` in `host`'s kept build session ([`SERVE`]) when there is one, else
    /// in a new session.
    fn run_in_build_session(&self, host: &Endpoint, script: &str) -> Reply {
        let slot = self
            .build_sessions
            .lock()
            .expect("not poisoned")
            .get(&host.destination())
            .cloned();
        if let Some(slot) = slot {
            let mut kept = slot.lock().expect("not poisoned");
            if let Some(reply) = kept.as_mut().and_then(|talk| serve(talk, script)) {
                return reply;
            }
            *kept = None;
        }
        self.ssh
            .run(host, script)
            .unwrap_or_else(|e| Reply::lost(&e))
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

    /// Sends derivations to a build host, builds them there in one call (going on past
    /// failures) and signs what was built. One result per `(drv, out)` item: the
    /// built closure's `nix path-info --json --recursive`, read there.
    ///
    /// One session does it all: it is opened before the derivations are known, is told
    /// their closure, answers which paths it lacks, imports those (`nix-store --export`
    /// from here) and builds. Where the build host's user may not import (not trusted by
    /// its Nix), `nix copy --derivation` sends them instead and a second session builds.
    pub(crate) fn build_on(
        &self,
        builder: &Endpoint,
        key: &str,
        items: &[(String, String)],
        hosts: &[String],
    ) -> Vec<Result<String, String>> {
        let all = |e: String| items.iter().map(|_| Err(e.clone())).collect();
        let drvs: Vec<String> = items.iter().map(|(d, _)| q(d)).collect();
        let outs: Vec<String> = items.iter().map(|(_, o)| q(o)).collect();
        // Nix's structured log is relayed line by line as it comes (behind RELAYED),
        // the build's status kept aside through fd 3.
        let build_script = format!(
            r#"exec 4>&1
rc=$( {{ {{ nix-store --realise --keep-going --log-format internal-json {drvs} 2>&1 >/dev/null 3>&- 4>&-
  echo $? >&3; }} | while IFS= read -r l; do printf '{RELAYED}%s\n' "$l"; done >&4; }} 3>&1 )
exec 4>&-
invalid=$(nix-store --check-validity --print-invalid {outs} 2>/dev/null)
nl='
'
valid=""
for o in {outs}; do
  case "$nl$invalid$nl" in *"$nl$o$nl"*) ;; *) valid="$valid $o"; echo "built=$o" ;; esac
done
if [ -n "$valid" ]; then
  signing=$(nix --extra-experimental-features nix-command store sign --key-file {key} --recursive $valid 2>&1) ||
    printf 'unsigned=%s\n' "$(printf '%s\n' "$signing" | grep . | tail -n 1)"
fi
[ "$rc" = 0 ] || echo "rc=$rc"
[ -z "$valid" ] || {{ echo "@@closures"; nix --extra-experimental-features nix-command path-info --json --recursive $valid 2>/dev/null; echo; }}
"#,
            drvs = drvs.join(" "),
            outs = outs.join(" "),
            key = q(key),
        );
        if let Err(e) = self.ssh.ensure_master(builder) {
            return all(format!("cannot reach {}: {e}", builder.name));
        }
        let mut log = NixLog::default();
        let mut last_sent = Instant::now();
        let mut relayed = |line: &str| {
            let before = log.progress().clone();
            if !log.feed(line) {
                return;
            }
            let p = log.progress();
            let counted = (p.total, p.built, p.substituted, p.running, p.failed)
                != (
                    before.total,
                    before.built,
                    before.substituted,
                    before.running,
                    before.failed,
                );
            if counted || last_sent.elapsed() >= Duration::from_millis(500) {
                last_sent = Instant::now();
                for host in hosts {
                    self.sink.emit(Event::Build {
                        schema: SCHEMA,
                        host: host.clone(),
                        builder: builder.name.clone(),
                        at: now(),
                        progress: p.clone(),
                    });
                }
            }
        };
        let session = self.ssh.hold(builder, &build_session_script());
        let sent = session.map_err(|e| e.to_string()).and_then(|held| {
            self.send_derivations(builder, held, items, &build_script, &mut relayed)
        });
        let r = match sent {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                let mut copy = self.nix(&["copy", "--derivation", "--to", &builder.store_url()]);
                copy.args(items.iter().map(|(d, _)| d));
                let mut scratch = Duration::ZERO;
                if let Err(e) = self.nix_output(&mut scratch, copy) {
                    return all(format!("sending the derivations to {}: {e}", builder.name));
                }
                let mut r = self
                    .ssh
                    .run(builder, &build_script)
                    .unwrap_or_else(|e| Reply::lost(&e));
                // No session to relay through: the log is read once it is all there.
                let (relayed_lines, rest): (Vec<&str>, Vec<&str>) =
                    r.stdout.lines().partition(|l| l.starts_with(RELAYED));
                for line in relayed_lines {
                    relayed(&line[RELAYED.len_utf8()..]);
                }
                r.stdout = rest.join("\n") + "\n";
                r
            }
            Err(e) => return all(format!("sending the derivations to {}: {e}", builder.name)),
        };
        if r.code != 0 {
            return all(format!("on {}: {}", builder.name, r.last_error()));
        }
        // One path-info of every built closure: each host's diff keeps what its root
        // reaches.
        let (head, closures) = r
            .stdout
            .split_once("@@closures\n")
            .map_or((r.stdout.as_str(), ""), |(h, c)| (h, c));
        let f = fields(head);
        if let Some(why) = field(&f, "unsigned") {
            return all(format!(
                "signing on {} with {key} failed: {why}",
                builder.name
            ));
        }
        let built = f.get("built").cloned().unwrap_or_default();
        // Nix's first error names the builder that failed; the ones after, what depended
        // on it.
        let error = log.failure().unwrap_or_else(|| {
            format!("the build failed (exit {})", field(&f, "rc").unwrap_or("?"))
        });
        // Each host that was not built gets the log of the build that failed: the one,
        // or, where several failed, its own system's (a dependency's is not told apart).
        let failed = log.failed_builds();
        let mut logs = self.build_logs.lock().expect("not poisoned");
        for (host, (drv, out)) in hosts.iter().zip(items) {
            let own = match failed.as_slice() {
                [one] => Some(one),
                several => several.iter().find(|b| &b.drv == drv),
            };
            if let Some(b) = own.filter(|_| !built.contains(&out.as_str())) {
                logs.insert(host.clone(), b.log_tail.clone());
            }
        }
        drop(logs);
        items
            .iter()
            .map(|(_, o)| {
                if built.contains(&o.as_str()) && !closures.trim().is_empty() {
                    Ok(closures.to_owned())
                } else {
                    Err(error.clone())
                }
            })
            .collect()
    }

    /// The conversation of [`Self::build_on`]'s session: the derivations' closure as
    /// this store has it, then an export of what the build host lacks. The build's
    /// reply, or `None` when the build host refused the import.
    fn send_derivations(
        &self,
        builder: &Endpoint,
        held: Held,
        items: &[(String, String)],
        build_script: &str,
        relayed: &mut dyn FnMut(&str),
    ) -> Result<Option<Reply>, String> {
        let store = Store::from_url(None).map_err(|e| e.to_string())?;
        let mut closure = BTreeSet::new();
        for (drv, _) in items {
            let (c, _) = read_closure(&store, drv).map_err(|e| e.to_string())?;
            closure.extend(c.paths.into_iter().map(|p| p.path));
        }
        let mut list = closure.into_iter().collect::<Vec<_>>().join("\n");
        list.push_str("\n\n");
        let mut talk = held.talk(list.as_bytes()).map_err(|e| e.to_string())?;
        let Some(missing) = talk.lines_until("@@missing") else {
            return talk.finish().map(Some).map_err(|e| e.to_string());
        };
        if missing.iter().any(|l| l == "daemon=yes") {
            self.ssh.use_daemon(builder);
        }
        let missing: Vec<String> = missing.into_iter().filter(|l| l.starts_with('/')).collect();
        if missing.is_empty() {
            talk.send(b"none\n").map_err(|e| e.to_string())?;
        } else {
            talk.send(b"export\n").map_err(|e| e.to_string())?;
            let processes = self.ssh.processes();
            let mut export = processes
                .spawn(
                    Command::new("nix-store")
                        .arg("--export")
                        .args(&missing)
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped()),
                )
                .map_err(|e| e.to_string())?;
            let mut stream = export.stdout.take().expect("piped");
            let sent = talk.send_from(&mut stream);
            drop(stream);
            let status = processes
                .wait_with_output(export)
                .map_err(|e| format!("nix-store --export: {e}"))?;
            if sent.is_err() || !status.status.success() {
                // The build host may have stopped reading: it refused the import.
                let reply = talk.finish().map_err(|e| e.to_string())?;
                if reply.stdout.contains("@@import-refused") {
                    return Ok(None);
                }
                return Err(match sent {
                    Err(e) => e.to_string(),
                    Ok(()) => format!(
                        "nix-store --export: {}",
                        String::from_utf8_lossy(&status.stderr).trim()
                    ),
                });
            }
        }
        // The build is the session's first request, sent once the import is done
        // (`nix-store --import` reads ahead); the session stays for the marks.
        if talk.lines_until("@@imported").is_none() {
            let reply = talk.finish().map_err(|e| e.to_string())?;
            return Ok((!reply.stdout.contains("@@import-refused")).then_some(reply));
        }
        let reply = match serve_relaying(&mut talk, build_script, relayed) {
            Some(reply) => {
                self.build_sessions.lock().expect("not poisoned").insert(
                    builder.destination(),
                    std::sync::Arc::new(Mutex::new(Some(talk))),
                );
                reply
            }
            None => talk.finish().map_err(|e| e.to_string())?,
        };
        Ok((!reply.stdout.contains("@@import-refused")).then_some(reply))
    }

    fn nix(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nix");
        cmd.args(["--extra-experimental-features", "nix-command"])
            .args(args)
            .stdin(Stdio::null());
        self.ssh.nix_env(&mut cmd);
        cmd
    }

    /// `nix copy` of a closure from one host's store straight to another's, or of only
    /// the paths `only` (`--no-recursive`: no walk of the closure over the connections);
    /// the destination checks the signatures.
    fn copy_between(
        &self,
        from: &Endpoint,
        to: &Endpoint,
        closure: &str,
        only: Option<&[String]>,
    ) -> Command {
        let mut copy = self.nix(&[
            "copy",
            "--from",
            &from.store_url(),
            "--to",
            &self.ssh.destination_store_url(to),
        ]);
        match only {
            Some(paths) => copy.arg("--no-recursive").args(paths),
            None => copy.arg(closure),
        };
        copy
    }

    /// Copies a closure from one host's store to another's: through their nix-daemon
    /// sockets where they run one, and over `nix-daemon --stdio` sessions again if the
    /// sockets cannot be reached (the hosts' sshd refuses forwarding). With `only`,
    /// those paths alone go first (see [`lacking`]), and the whole closure if that fails.
    fn copy_closure(
        &self,
        run: &mut Run,
        from: &Endpoint,
        to: &Endpoint,
        closure: &str,
        only: Option<&[String]>,
    ) -> Result<String, String> {
        if fault("interrupt-copy") {
            return self.interrupted(self.copy_between(from, to, closure, only));
        }
        let attempts = if only.is_some() {
            vec![only, None]
        } else {
            vec![None]
        };
        let mut copied = Err(String::new());
        for paths in attempts {
            if let (Err(e), Some(listed)) = (&copied, only)
                && paths.is_none()
            {
                self.emit_note(
                    run,
                    format!(
                        "sending the {} paths {} lacks failed ({e}); copying the whole closure",
                        listed.len(),
                        to.name
                    ),
                );
            }
            copied = match self.nix_run(run, self.copy_between(from, to, closure, paths)) {
                Err(e)
                    if e.contains("cannot open connection to remote store")
                        && self.ssh.forget_daemons(&[from, to]) =>
                {
                    self.emit_note(
                        run,
                        format!(
                            "no nix-daemon socket through ssh ({e}); copying over ssh sessions"
                        ),
                    );
                    self.nix_run(run, self.copy_between(from, to, closure, paths))
                }
                other => other,
            };
            if copied.is_ok() {
                break;
            }
        }
        copied
    }

    /// Runs a local nix command, timing it as Nix's own work.
    fn nix_run(&self, run: &mut Run, cmd: Command) -> Result<String, String> {
        self.nix_output(&mut run.nix_time, cmd)
    }

    /// Test hook (`WAYMARK_FAULT=interrupt-copy`): the copy is killed a moment after it
    /// started, as a dropped connection or a killed process would end it.
    fn interrupted(&self, mut cmd: Command) -> Result<String, String> {
        let processes = self.ssh.processes();
        let mut child = processes
            .spawn(cmd.stdout(Stdio::null()).stderr(Stdio::null()))
            .map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(150));
        let _ = child.kill();
        let _ = processes.wait(&mut child);
        Err("interrupted (WAYMARK_FAULT=interrupt-copy)".into())
    }

    /// Runs a local nix command among the run's processes (none starts once the run
    /// is ending), timing it on `clock`.
    fn nix_output(&self, clock: &mut Duration, mut cmd: Command) -> Result<String, String> {
        let started = Instant::now();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = self
            .ssh
            .processes()
            .output(&mut cmd, None)
            .map_err(|e| e.to_string())?;
        *clock += started.elapsed();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no error message")
                .trim()
                .to_owned())
        }
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
            Err(s) => (Outcome::Failed, s.message.clone()),
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
            new_closure: None,
            new_read: None,
            old_read: None,
            early_build: None,
            held_launch: None,
            launched: None,
            carry: Duration::ZERO,
            target_record: None,
            notes: Vec::new(),
        };
        let (result, message) = match self.pipeline(&mut run, mode) {
            Ok((result, message)) => (result, message),
            Err(s) => (s.result, s.message),
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

    fn build_at(&self, run: &Run) -> Result<BuildAt, Stop> {
        match &run.host.build_host {
            Some(b) => {
                let builder = self.fleet.hosts.get(b).ok_or_else(|| {
                    stop(
                        HostResult::Error,
                        format!("build host {b} is not a fleet host"),
                    )
                })?;
                let key = builder.signing_key_file.clone().ok_or_else(|| {
                    stop(
                        HostResult::Error,
                        format!(
                            "build host {b} declares no waymark.deploy.signingKeyFile: {} would refuse its unsigned paths",
                            run.name
                        ),
                    )
                })?;
                Ok(BuildAt::Builder {
                    host: self.endpoint(b).expect("a fleet host"),
                    key,
                })
            }
            None if run.host.allow_build_on_target => Ok(BuildAt::Target),
            None => match &self.settings.local_signing_key {
                Some(key) => Ok(BuildAt::Local { key: key.clone() }),
                None => Err(stop(
                    HostResult::Error,
                    format!(
                        "{} has no build host, so it is built here: give --signing-key (a key {} trusts), declare waymark.deploy.buildHost, or allow building on the target",
                        run.name, run.name
                    ),
                )),
            },
        }
    }

    /// Asks the target what it runs, its known-good marks and its failed units: one
    /// round trip. The session stays open (`run.held_launch`): it runs the next script
    /// it is sent (gate 3's), or ends without doing anything when its input ends.
    fn probe(&self, run: &mut Run) -> Result<Probe, Stop> {
        // What this machine committed last: read there only if something else runs.
        let kept = kept_closure(&self.settings.closures_dir, &run.name);
        let script = probe_script(
            &self.settings.remote_waymark,
            kept.as_ref().map(|c| c.root.as_str()),
        );
        let target = run.target.clone();
        run.masters_opened += self.opened(&target);
        let started = Instant::now();
        let r = match self.ssh.hold(&target, &script).and_then(|h| h.talk(b"")) {
            Ok(mut talk) => match talk.lines_until(PROBED) {
                Some(lines) => {
                    run.held_launch = Some(talk);
                    Reply {
                        code: 0,
                        stdout: lines.join("\n") + "\n",
                        stderr: String::new(),
                    }
                }
                None => talk.finish().unwrap_or_else(|e| Reply::lost(&e)),
            },
            Err(e) => Reply::lost(&e),
        };
        run.remote_time += started.elapsed();
        if r.code == 255 && !r.stdout.contains("@@marks") {
            return Err(stop(
                HostResult::Error,
                format!("cannot reach {}: {}", target.destination(), r.last_error()),
            ));
        }
        let (head, rest) = r.stdout.split_once("@@marks\n").unwrap_or((&r.stdout, ""));
        let (marks_json, old_json) = rest.split_once("@@old\n").unwrap_or((rest, ""));
        let f = fields(head);
        if field(&f, "daemon").is_some() {
            self.ssh.use_daemon(&target);
        }
        if marks_json.trim().is_empty() {
            return Err(stop(
                HostResult::Error,
                format!(
                    "`{} known-good` cannot run on {} ({}): install waymark there (waymark.knownGood.package) or pass --remote-waymark",
                    self.settings.remote_waymark,
                    run.name,
                    r.last_error()
                ),
            ));
        }
        let listing: serde_json::Value = serde_json::from_str(marks_json).map_err(|e| {
            stop(
                HostResult::Error,
                format!(
                    "reading the known-good marks of {} on the target: {e}: {}",
                    run.name,
                    r.last_error()
                ),
            )
        })?;
        let mut marks: Vec<Record> =
            serde_json::from_value(listing["marks"].clone()).map_err(|e| {
                stop(
                    HostResult::Error,
                    format!("the target's known-good records are not readable: {e}"),
                )
            })?;
        // A mark the target itself reports broken (its root gone or repointed, its
        // closure no longer valid) is no rollback target and no known-good baseline.
        let broken: Vec<waymark_known_good::Repair> =
            serde_json::from_value(listing["repairs"].clone()).unwrap_or_default();
        let broken: BTreeSet<&str> = broken
            .iter()
            .filter(|r| r.broken && r.target == run.name)
            .map(|r| r.mark.as_str())
            .collect();
        marks.retain(|m| m.target == run.name && !broken.contains(m.mark.as_str()));
        if !broken.is_empty() {
            self.emit_note(
                run,
                format!(
                    "{} reports broken known-good marks, left out: {} (see waymark known-good list there)",
                    run.name,
                    broken.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        let running = field(&f, "running");
        Ok(Probe {
            known_old: kept.filter(|c| running == Some(c.root.as_str())),
            running: running.map(str::to_owned),
            profile: field(&f, "profile").map(str::to_owned),
            old_closure: (!old_json.trim().is_empty()).then(|| old_json.to_owned()),
            marks,
            agents: parse_agents(head),
            active: field(&f, "active").map(str::to_owned),
            failed_units: field(&f, "units").map(|_| {
                f.get("failed")
                    .map(|v| v.iter().map(|s| (*s).to_owned()).collect())
                    .unwrap_or_default()
            }),
        })
    }

    fn pipeline(&self, run: &mut Run, mode: &Mode) -> Result<(HostResult, String), Stop> {
        let build_at = match mode {
            Mode::Deploy => Some(self.build_at(run)?),
            Mode::Rollback { .. } => None,
        };
        if let Mode::Deploy = mode {
            run.drv = Some(run.host.toplevel.clone().ok_or_else(|| {
                stop(
                    HostResult::Error,
                    format!("{} has no system.build.toplevel to deploy", run.name),
                )
            })?);
            run.closure = Some(run.host.closure.clone().ok_or_else(|| {
                stop(
                    HostResult::Error,
                    format!(
                        "the fleet description gives no closure path for {}",
                        run.name
                    ),
                )
            })?);
            if run.rev.is_none() {
                return Err(stop(
                    HostResult::Error,
                    "no commit to record: deploy from a clean git checkout, or pass --rev",
                ));
            }
        }
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
                Some((key.clone(), run.drv.clone(), run.closure.clone()))
            }
            _ => None,
        };
        let name = run.name.clone();
        let (probe, early) = std::thread::scope(|scope| {
            let early = match (&builder, early) {
                (Some(b), Some((key, Some(drv), Some(out)))) => {
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
        run.early_build = early;
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
            let builder = match &build_at {
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
        if let Mode::Rollback { to } = mode {
            let record = rollback_target(&probe.marks, to.as_deref())
                .cloned()
                .ok_or_else(|| {
                stop(
                    HostResult::Failed,
                    format!(
                        "{} has no known-good mark {}: nothing to roll back to (see waymark known-good list on the target)",
                        run.name,
                        to.as_deref().unwrap_or("at all")
                    ),
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
        }
        let closure = run.closure.clone().expect("set above");
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
        if self.settings.goal <= Goal::Diff || self.settings.ask || probe.running.is_none() {
            run.held_launch = None; // its input ends: it ends
        }

        // Gate 1: build on the builder, copy from there to the target. A rollback only
        // copies, from the build host's known-good roots, if the target lost it.
        match &build_at {
            Some(at) => {
                // The part done during the probe counts in the gate.
                run.carry = run.early_build.as_ref().map_or(Duration::ZERO, |(_, t)| *t);
                self.gate(run, Gate::Build, |d, run| {
                    d.build(run, at, &closure, &probe)
                })?;
            }
            None => self.ensure_on_target(run, &closure)?,
        }
        if self.settings.goal == Goal::Build {
            return Ok((
                HostResult::Deployed,
                format!("built and copied to {}", run.name),
            ));
        }

        // Gate 2: diff against what runs; refuse to overwrite a hand deploy.
        let rollback_to = self.gate(run, Gate::Diff, |d, run| {
            d.diff(run, &probe, latest.as_ref(), mode, build_at.as_ref())
        })?;
        if self.settings.goal == Goal::Diff {
            return Ok((HostResult::Deployed, "diffed; nothing activated".into()));
        }

        // Gate 3: dry-activate, in one round trip with the start of gate 4 (the agent is
        // only started when dry-activate passed).
        self.gate(run, Gate::DryActivate, |d, run| {
            d.dry_activate_and_launch(run, &dir, &closure, &rollback_to)
        })?;
        if self.settings.goal == Goal::DryActivate {
            return Ok((
                HostResult::Deployed,
                "dry-activated; nothing changed".into(),
            ));
        }

        // Gates 4 and 5 under the agent's watchdog.
        self.gate(run, Gate::Test, |d, run| {
            d.switch_test(
                run,
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
        self.gate(run, commit_gate, |d, run| {
            d.confirm(run, &dir, &closure, &rollback_to)
                .map(|m| ((), m))
        })?;

        self.gate(run, Gate::Mark, |d, run| {
            d.mark(run, &dir, &closure, build_at.as_ref())
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

    fn build(
        &self,
        run: &mut Run,
        at: &BuildAt,
        closure: &str,
        probe: &Probe,
    ) -> Result<((), String), Stop> {
        let drv = run.drv.clone().expect("deploys have a derivation");
        let failed = |what: &str, why: String| {
            stop(
                HostResult::Error,
                format!("{what} failed: {why}; the target was not touched"),
            )
        };
        let target_url = self.ssh.destination_store_url(&run.target);
        match at {
            BuildAt::Builder { host, key } => {
                run.masters_opened += self.opened(host);
                let prebuilt = {
                    // A batch build for this host may still be under way.
                    let mut map = self.prebuilt.lock().expect("not poisoned");
                    while matches!(map.get(&run.name), Some(None)) {
                        map = self.prebuilt_done.wait(map).expect("not poisoned");
                    }
                    map.remove(&run.name).flatten()
                };
                let how = match prebuilt {
                    Some(Ok((how, closure_json))) => {
                        run.new_closure = Some(closure_json);
                        how
                    }
                    Some(Err(e)) => return Err(failed(&format!("building on {}", host.name), e)),
                    None => {
                        let (result, took) = run.early_build.take().unwrap_or_else(|| {
                            let started = Instant::now();
                            let result = self
                                .build_on(
                                    host,
                                    key,
                                    &[(drv.clone(), closure.to_owned())],
                                    std::slice::from_ref(&run.name),
                                )
                                .remove(0);
                            (result, started.elapsed())
                        });
                        run.nix_time += took;
                        run.new_closure = Some(
                            result.map_err(|e| failed(&format!("building on {}", host.name), e))?,
                        );
                        format!("built on {}", host.name)
                    }
                };
                let target = run.target.clone();
                let lacking = lacking(run, probe, closure);
                self.copy_closure(run, host, &target, closure, lacking.as_deref())
                    .map_err(|e| {
                        failed(&format!("copying from {} to {}", host.name, run.name), e)
                    })?;
                Ok(((), format!("{how}, copied to {}", run.name)))
            }
            BuildAt::Local { key } => {
                let mut realise = Command::new("nix-store");
                realise.args(["--realise", &drv, "--quiet"]);
                self.nix_run(run, realise)
                    .map_err(|e| failed("building here", e))?;
                let mut sign = self.nix(&["store", "sign", "--recursive", "--key-file"]);
                sign.arg(key).arg(closure);
                self.nix_run(run, sign).map_err(|e| failed("signing", e))?;
                let copy = self.nix(&["copy", "--to", &target_url, closure]);
                self.nix_run(run, copy)
                    .map_err(|e| failed(&format!("copying to {}", run.name), e))?;
                Ok(((), format!("built here and copied to {}", run.name)))
            }
            BuildAt::Target => {
                let copy = self.nix(&["copy", "--derivation", "--to", &target_url, &drv]);
                self.nix_run(run, copy)
                    .map_err(|e| failed("sending the derivation to the target", e))?;
                let target = run.target.clone();
                let started = Instant::now();
                let r = self.remote(
                    run,
                    &target,
                    &format!("nix-store --realise {} --quiet", q(&drv)),
                );
                // Nix's work, not waiting on the host.
                run.remote_time = run.remote_time.saturating_sub(started.elapsed());
                run.nix_time += started.elapsed();
                if r.code != 0 {
                    return Err(failed("building on the target", r.last_error()));
                }
                Ok(((), format!("built on {} (allowBuildOnTarget)", run.name)))
            }
        }
    }

    /// A rollback's closure must be on the target: it is, or it comes from the build
    /// host, which keeps known-good closures rooted too.
    fn ensure_on_target(&self, run: &mut Run, closure: &str) -> Result<(), Stop> {
        let target = run.target.clone();
        let check = format!("nix-store --check-validity {} 2>/dev/null", q(closure));
        if self.remote(run, &target, &check).code == 0 {
            return Ok(());
        }
        let (name, rev) = (run.name.clone(), run.rev.clone().unwrap_or_default());
        let gone = |why: String| {
            stop(
                HostResult::Error,
                format!(
                    "{closure} is no longer in {name}'s store and {why}: redeploy it with waymark deploy from its commit {rev}"
                ),
            )
        };
        let Some(builder) = run
            .host
            .build_host
            .as_deref()
            .and_then(|b| self.endpoint(b))
        else {
            return Err(gone("there is no build host to copy it from".into()));
        };
        run.masters_opened += self.opened(&builder);
        self.copy_closure(run, &builder, &target, closure, None)
            .map_err(|e| gone(format!("copying it from {} failed ({e})", builder.name)))?;
        self.emit_note(
            run,
            format!(
                "copied {closure} from {}, which keeps it known-good",
                builder.name
            ),
        );
        Ok(())
    }

    /// Gate 2. Returns the closure to restore on failure.
    fn diff(
        &self,
        run: &mut Run,
        probe: &Probe,
        latest: Option<&Record>,
        mode: &Mode,
        build_at: Option<&BuildAt>,
    ) -> Result<(String, String), Stop> {
        let closure = run.closure.clone().expect("set");
        let Some(running) = probe.running.clone() else {
            return Err(stop(
                HostResult::Failed,
                format!(
                    "{} runs no system (/run/current-system is missing): there would be nothing to restore if activation failed",
                    run.name
                ),
            ));
        };
        match baseline(
            latest,
            &running,
            probe.active.as_deref(),
            self.settings.allow_drift,
            matches!(mode, Mode::Rollback { .. }),
        ) {
            Baseline::First => self.emit_note(
                run,
                format!(
                    "first deploy: {} has no known-good mark yet; if a gate fails it is restored to what it runs now, {running}",
                    run.name
                ),
            ),
            Baseline::KnownGood => {}
            Baseline::Busy(dir) => {
                return Err(stop(
                    HostResult::Failed,
                    format!(
                        "another deploy is under way on {} (its agent in {dir}): nothing changed; deploy again once it ends",
                        run.name
                    ),
                ));
            }
            Baseline::Drift { allowed } => {
                let l = latest.expect("drift is from a mark");
                let what = format!(
                    "{} runs {running}, not its latest known-good closure {} (mark {}): deployed by hand?",
                    run.name, l.closure, l.mark
                );
                if allowed {
                    self.emit_note(run, format!("{what} Going on; a failure restores what runs now."));
                } else {
                    return Err(stop(
                        HostResult::Failed,
                        format!("{what} Stopped, nothing changed; --allow-drift deploys anyway"),
                    ));
                }
            }
        }
        let target = run.target.clone();
        let read = |run: &mut Run, path: &str| -> Result<waymark_diff::Closure, Stop> {
            let r = self.remote(
                run,
                &target,
                &format!(
                    "nix --extra-experimental-features nix-command path-info --json --recursive {}",
                    q(path)
                ),
            );
            if r.code != 0 {
                return Err(stop(
                    HostResult::Error,
                    format!(
                        "reading the closure of {path} on {}: {}",
                        run.name,
                        r.last_error()
                    ),
                ));
            }
            closure_from_path_info(r.stdout.as_bytes(), "/nix/store", path, &target.store_url())
                .map_err(|e| stop(HostResult::Error, e.to_string()))
        };
        let parse = |json: &str, path: &str| {
            closure_from_path_info(json.as_bytes(), "/nix/store", path, &target.store_url())
                .map_err(|e| stop(HostResult::Error, e.to_string()))
        };
        let old = match (run.old_read.take(), &probe.known_old, &probe.old_closure) {
            (Some(read_for_copy), _, _) => read_for_copy,
            (None, Some(kept), _) => kept.clone(),
            (None, None, Some(json)) => parse(json, &running)?,
            (None, None, None) => read(run, &running)?,
        };
        let new = match (run.new_read.take(), run.new_closure.take()) {
            (Some(read_for_copy), _) => read_for_copy,
            (None, Some(json)) => parse(&json, &closure)?,
            (None, None) => read(run, &closure)?,
        };
        run.new_read = Some(new.clone());
        // The old side's derivations, for root causes: here if evaluated here before,
        // else from the build host, which roots them with its marks.
        if let (Some(BuildAt::Builder { host, .. }), Some(drv)) = (
            build_at,
            old.paths
                .iter()
                .find(|p| p.path == running)
                .and_then(|p| p.deriver.clone()),
        ) && !std::path::Path::new(&drv).exists()
        {
            let fetch = self.nix(&["copy", "--derivation", "--from", &host.store_url(), &drv]);
            if let Err(e) = self.nix_run(run, fetch) {
                self.emit_note(run, format!("root causes by version only: {e}"));
            }
        }
        let drvs = DrvFiles::new([]);
        let report = waymark_diff::diff_with(&old, &new, Some(&drvs));
        let summary = DiffSummary {
            against: Some(running.clone()),
            changed: report.changed.len(),
            added: report.added.len(),
            removed: report.removed.len(),
            rebuilt: report.rebuilt.len(),
            root_causes: report
                .root_causes
                .iter()
                .map(|c| format!("{} → {} (caused {})", c.before, c.after, c.caused))
                .collect(),
        };
        let line = if report.has_differences() {
            let mut s = format!(
                "{} changed, {} added, {} removed, {} rebuilt",
                summary.changed, summary.added, summary.removed, summary.rebuilt
            );
            if let Some(c) = summary.root_causes.first() {
                s.push_str(&format!("; {c}"));
            }
            s
        } else if running == closure {
            "no change".to_owned()
        } else {
            "same packages".to_owned()
        };
        run.change = Some(line.clone());
        run.diff = Some(summary);
        if self.settings.goal == Goal::Diff {
            self.interaction.show_diff(&run.name, &report);
        }
        if self.settings.ask && !self.interaction.confirm(&run.name, &report) {
            return Err(stop(
                HostResult::Failed,
                "declined after the diff; nothing changed",
            ));
        }
        Ok((running, line))
    }

    /// Gate 3, and the start of gate 4 in the same round trip: dry-activate, and only
    /// when it passed (and the goal goes further), start the agent and wait for its
    /// activation. The agent's part of the reply waits in `run.launched`.
    fn dry_activate_and_launch(
        &self,
        run: &mut Run,
        dir: &str,
        closure: &str,
        rollback_to: &str,
    ) -> Result<((), String), Stop> {
        let launches = self.settings.goal > Goal::DryActivate;
        let started = Instant::now();
        let r = if let Some(mut talk) = run.held_launch.take() {
            let mut input = self
                .dry_launch_script(run, dir, closure, rollback_to)
                .into_bytes();
            input.extend_from_slice(b"\n@@run\n");
            if launches {
                input.extend_from_slice(crate::AGENT.as_bytes());
            }
            let reply = talk
                .send(&input)
                .and_then(|()| talk.finish())
                .unwrap_or_else(|e| Reply::lost(&e));
            run.remote_time += started.elapsed();
            reply
        } else {
            let script = self.dry_launch_script(run, dir, closure, rollback_to);
            let target = run.target.clone();
            self.remote_with_input(
                run,
                &target,
                &script,
                launches.then_some(crate::AGENT.as_bytes()),
            )
        };
        let f = fields(&r.stdout);
        let output = f.get("dry").map(|l| l.join("\n")).unwrap_or_default();
        match field(&f, "dry-rc") {
            Some("0") => {}
            Some(rc) => {
                return Err(stop(
                    HostResult::Failed,
                    format!(
                        "dry-activate failed (exit {rc}): {}; nothing was activated",
                        output.lines().last().unwrap_or("no output")
                    ),
                ));
            }
            None if launches => {
                // The agent may have started before the connection was lost: look.
                return Err(self.after_lost_launch(run, dir, closure, rollback_to, &r));
            }
            None => {
                return Err(stop(
                    HostResult::Failed,
                    format!(
                        "dry-activate could not run on {}: {}; nothing was activated",
                        run.name,
                        r.last_error()
                    ),
                ));
            }
        }
        if launches {
            let dry_ms = field(&f, "dry-ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            run.carry = started
                .elapsed()
                .saturating_sub(Duration::from_millis(dry_ms));
            run.launched = Some(r);
        }
        Ok(((), DryRun::parse(&output).summary()))
    }

    /// The round trip of dry-activate and the agent's start was lost: the agent may
    /// or may not run. Look over a new connection; if it started, follow it to its end.
    fn after_lost_launch(
        &self,
        run: &mut Run,
        dir: &str,
        closure: &str,
        rollback_to: &str,
        lost: &Reply,
    ) -> Stop {
        let why = format!(
            "lost the connection during dry-activate ({})",
            lost.last_error()
        );
        run.fresh_connections += 1;
        let look = self.ssh.run_fresh(
            &run.target,
            &format!(
                "test -e {}/state && echo started=yes; echo looked=yes",
                q(dir)
            ),
            None,
            Duration::from_secs(10),
        );
        match look {
            Ok(r) if r.stdout.contains("looked=yes") && !r.stdout.contains("started=yes") => stop(
                HostResult::Failed,
                format!("{why}; the agent never started: nothing was activated"),
            ),
            Ok(r) if r.stdout.contains("started=yes") => {
                self.await_restore(run, dir, closure, rollback_to, &why)
            }
            other => stop(
                HostResult::NeedsHuman,
                format!(
                    "{why}, and {} cannot be reached to see whether activation started: check it ({})",
                    run.name,
                    other.map_or_else(|e| e.to_string(), |r| r.last_error())
                ),
            ),
        }
    }

    /// Gate 3's shell, and where the goal goes further the agent's start (its script
    /// on stdin) only when dry-activate passed.
    fn dry_launch_script(&self, run: &Run, dir: &str, closure: &str, rollback_to: &str) -> String {
        let dry = format!(
            r#"read -r u0 _ < /proc/uptime || u0=0.00
dry=$(timeout {t} {c}/bin/switch-to-configuration dry-activate 2>&1); rc=$?
read -r u1 _ < /proc/uptime || u1=$u0
while IFS= read -r l; do printf 'dry=%s\n' "$l"; done <<EOF
$dry
EOF
# Hundredths of seconds since boot ("1${{..}}": no leading zero, no octal).
echo "dry-rc=$rc"; echo "dry-ms=$(( (${{u1%.*}} - ${{u0%.*}}) * 1000 + (1${{u1#*.}} - 1${{u0#*.}}) * 10 ))"
[ $rc = 0 ] || exit 0
"#,
            t = run.host.activation_timeout,
            c = q(closure)
        );
        if self.settings.goal > Goal::DryActivate {
            dry + &self.launch_script(run, dir, closure, rollback_to)
        } else {
            dry
        }
    }

    /// The shell that starts the agent on the target (its script on stdin) and waits
    /// for its activation.
    fn launch_script(&self, run: &Run, dir: &str, closure: &str, rollback_to: &str) -> String {
        let commit = match self.settings.goal {
            Goal::Switch => "switch",
            Goal::Boot => "boot",
            _ => "none",
        };
        let window = run.host.confirm_timeout + checks_budget(run.host) + 2;
        let args = [dir, closure, rollback_to, commit]
            .iter()
            .map(|a| q(a))
            .chain([window.to_string(), run.host.activation_timeout.to_string()])
            .collect::<Vec<_>>()
            .join(" ");
        let unit = format!("waymark-activate-{}-{}", self.settings.run_id, run.name);
        format!(
            r#"mkdir -p {dir} || {{ echo "start-failed=yes"; exit {not_started}; }}
# The lock names who holds it; one whose holder is gone (a reboot clears /run anyway)
# is taken over.
if ! mkdir /run/waymark/active 2>/dev/null; then
  holder=$(cat /run/waymark/active/pid 2>/dev/null)
  if [ -n "$holder" ] && kill -0 "$holder" 2>/dev/null &&
    ! grep -q '^State:[[:space:]]*Z' "/proc/$holder/status" 2>/dev/null; then
    echo "busy=$(cat /run/waymark/active/id 2>/dev/null)"; rmdir {dir}; exit {busy}
  fi
  rm -rf /run/waymark/active; mkdir /run/waymark/active || {{ echo busy=unknown; exit {busy}; }}
fi
echo $$ > /run/waymark/active/pid; echo {dir} > /run/waymark/active/id
started=
if {{ mkfifo {dir}/events 2>/dev/null || true; }} && cat > {dir}/agent.sh; then
  if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null; then
    # The unit gets this PATH: a transient unit's own has only systemd in it.
    systemd-run --quiet --collect --unit={unit} --service-type=exec --setenv=PATH="$PATH" \
      "$(command -v sh)" {dir}/agent.sh {args} && started=yes
  elif command -v setsid >/dev/null; then
    # -f: a session of its own, and ssh does not wait for it.
    (cd / && setsid -f sh {dir}/agent.sh {args} </dev/null >{dir}/agent.log 2>&1) && started=yes
  else
    (cd / && nohup sh {dir}/agent.sh {args} </dev/null >{dir}/agent.log 2>&1 &) && started=yes
  fi
fi
if [ -z "$started" ]; then rm -rf /run/waymark/active; echo "start-failed=yes"; exit {not_started}; fi
{wait}"#,
            dir = q(dir),
            unit = q(&unit),
            busy = EXIT_BUSY,
            not_started = EXIT_AGENT_NOT_STARTED,
            wait = wait_script(
                dir,
                &format!("awaiting-confirmation|{FINAL}"),
                run.host.activation_timeout + 10
            ),
        )
    }

    /// Gate 4: the agent's activation (started with gate 3), then the health checks.
    fn switch_test(
        &self,
        run: &mut Run,
        dir: &str,
        closure: &str,
        rollback_to: &str,
        failed_before: Option<&[String]>,
    ) -> Result<((), String), Stop> {
        let r = run.launched.take().expect("started with dry-activate");
        let target = run.target.clone();
        if r.code == EXIT_AGENT_NOT_STARTED {
            return Err(stop(
                HostResult::Failed,
                format!(
                    "the activation agent could not be started on {}: {}; nothing was activated",
                    run.name,
                    r.last_error()
                ),
            ));
        }
        if r.code == EXIT_BUSY {
            return Err(stop(
                HostResult::Failed,
                format!(
                    "another deploy is activating on {} ({}); nothing changed",
                    run.name,
                    fields(&r.stdout)
                        .get("busy")
                        .and_then(|v| v.first())
                        .unwrap_or(&"?")
                ),
            ));
        }
        let state = if r.code == 0 {
            AgentState::parse(field(&fields(&r.stdout), "state").unwrap_or(""))
        } else {
            // The connection dropped: the agent goes on by itself. Read its end.
            self.emit_note(
                run,
                format!(
                    "lost the connection during activation ({}); waiting for the target's agent",
                    r.last_error()
                ),
            );
            return Err(self.await_restore(
                run,
                dir,
                closure,
                rollback_to,
                "the connection dropped during activation",
            ));
        };
        match state {
            AgentState::AwaitingConfirmation => {}
            AgentState::Restored(why)
                if why == "inhibited"
                    && run.host.boot_on_inhibited_switch
                    && matches!(self.settings.goal, Goal::Switch | Goal::Boot) =>
            {
                let restored = Self::verified_restore(run, rollback_to, String::new(), &r.stdout);
                if restored.result != HostResult::Failed {
                    return Err(restored);
                }
                return Err(self.boot_instead(run, closure, rollback_to));
            }
            AgentState::Restored(why) => {
                let log = fields(&r.stdout)
                    .get("log")
                    .map(|l| l.join(" / "))
                    .unwrap_or_default();
                return Err(Self::verified_restore(
                    run,
                    rollback_to,
                    format!(
                        "{} ({log}); restored {rollback_to}",
                        AgentState::reason(&why)
                    ),
                    &r.stdout,
                ));
            }
            AgentState::Refused(why) => {
                return Err(stop(
                    HostResult::Failed,
                    format!(
                        "the agent activated nothing ({why}): {} switched to another system since the deploy read it",
                        run.name
                    ),
                ));
            }
            AgentState::RestoreFailed(why) => {
                return Err(stop(
                    HostResult::NeedsHuman,
                    format!(
                        "{}, and re-activating {rollback_to} failed: see {dir}/restore.log on {}",
                        AgentState::reason(&why),
                        run.name
                    ),
                ));
            }
            other => {
                return Err(self.await_restore(
                    run,
                    dir,
                    closure,
                    rollback_to,
                    &format!(
                        "activation did not finish in {} s ({other:?})",
                        run.host.activation_timeout
                    ),
                ));
            }
        }

        // Health checks, over the master connection, while the agent waits.
        let mut passed = Vec::new();
        for check in &run.host.health_checks {
            if fault("slow-health") {
                std::thread::sleep(Duration::from_secs(3));
            }
            let probe = match (&check.command, &check.url) {
                (Some(c), _) => c.clone(),
                (None, Some(u)) => format!(
                    "if command -v curl >/dev/null; then curl -fsS -o /dev/null --max-time 10 {u}; \
                     else wget -q -O /dev/null -T 10 {u}; fi",
                    u = q(u)
                ),
                (None, None) => "false".to_owned(),
            };
            // Each try is bounded by what is left of the check's time, so a check that
            // hangs ends in time and says so; its last line otherwise.
            let script = format!(
                "end=$(( $(date +%s) + {t} )); while :; do \
                 left=$(( end - $(date +%s) )); [ \"$left\" -gt 0 ] || left=1; \
                 out=$(timeout \"$left\" sh -c {probe} 2>&1); rc=$?; [ $rc = 0 ] && exit 0; \
                 if [ \"$(date +%s)\" -ge \"$end\" ]; then \
                 case $rc in 124|143) echo 'no answer within {t} s'; exit 1 ;; esac; \
                 last=$(printf '%s\\n' \"$out\" | tail -n 1); echo \"exit $rc${{last:+: $last}}\"; exit 1; fi; \
                 sleep 1; done",
                t = check.timeout,
                probe = q(&probe)
            );
            let r = self.remote(
                run,
                &target,
                &format!(
                    "timeout {} sh -c {}",
                    check.timeout + CHECK_MARGIN,
                    q(&script)
                ),
            );
            if r.code != 0 {
                let reason = r.stdout.trim().lines().last().map_or_else(
                    || {
                        // `timeout`'s status (GNU's, busybox's).
                        if matches!(r.code, 124 | 143) {
                            format!("no answer within {} s", check.timeout + CHECK_MARGIN)
                        } else {
                            r.last_error()
                        }
                    },
                    str::to_owned,
                );
                let why = format!(
                    "health check {} failed ({} s allowed): {reason}",
                    check.name, check.timeout
                );
                return Err(self.abort(run, dir, closure, rollback_to, &why));
            }
            passed.push(check.name.clone());
        }
        if let Some(before) = failed_before {
            let r = self.remote(
                run,
                &target,
                "systemctl list-units --state=failed --no-legend --plain 2>/dev/null | awk '{print $1}'",
            );
            let new_failures: Vec<&str> = r
                .stdout
                .lines()
                .map(str::trim)
                .filter(|u| !u.is_empty() && !before.iter().any(|b| b == u))
                .collect();
            if !new_failures.is_empty() {
                let why = format!("units failed after activation: {}", new_failures.join(", "));
                return Err(self.abort(run, dir, closure, rollback_to, &why));
            }
            passed.push("no failed units".into());
        }
        Ok((
            (),
            if passed.is_empty() {
                "activated (no health checks declared)".into()
            } else {
                format!("activated; passed: {}", passed.join(", "))
            },
        ))
    }

    /// The switch is inhibited and the host allows the fallback: the new closure becomes
    /// the boot default (profile and boot entry), the running system stays. Not marked
    /// known-good: it has not run here.
    fn boot_instead(&self, run: &mut Run, closure: &str, rollback_to: &str) -> Stop {
        let target = run.target.clone();
        let script = format!(
            r#"{REAL}
p=/nix/var/nix/profiles/system; before=$(real $p)
if nix-env -p $p --set {c} && timeout {t} {c}/bin/switch-to-configuration boot; then echo boot=yes
else [ -z "$before" ] || {{ nix-env -p $p --set "$before"; "$before/bin/switch-to-configuration" boot; }}; fi
echo "running=$(real /run/current-system)"; echo "profile=$(real $p)"
"#,
            c = q(closure),
            t = run.host.activation_timeout
        );
        let r = self.remote(run, &target, &script);
        let f = fields(&r.stdout);
        run.running = field(&f, "running").map(str::to_owned);
        let why = "the switch is inhibited (a component changed that needs a reboot)";
        if field(&f, "boot").is_some()
            && field(&f, "profile") == Some(closure)
            && run.running.as_deref() == Some(rollback_to)
        {
            stop(
                HostResult::Failed,
                format!(
                    "{why}: {closure} is the boot default from the next reboot (bootOnInhibitedSwitch); the running system is unchanged; not marked known-good until a deploy sees it run"
                ),
            )
        } else {
            stop(
                HostResult::NeedsHuman,
                format!(
                    "{why}, and making it the boot default failed ({}): the target runs {} with profile {}",
                    r.last_error(),
                    run.running.as_deref().unwrap_or("nothing"),
                    field(&f, "profile").unwrap_or("missing")
                ),
            )
        }
    }

    /// A gate failed after activation: tell the agent, then verify it restored.
    fn abort(&self, run: &mut Run, dir: &str, closure: &str, rollback_to: &str, why: &str) -> Stop {
        let target = run.target.clone();
        let _ = self.remote(
            run,
            &target,
            &format!(
                "mv {d}/window {d}/aborted && {{ read -r w < {d}/waiter && kill \"$w\" 2>/dev/null; true; }}",
                d = q(dir)
            ),
        );
        self.await_restore(run, dir, closure, rollback_to, why)
    }

    /// Waits for the agent's end (reconnecting while it may still be restoring) and
    /// reports where the target is.
    fn await_restore(
        &self,
        run: &mut Run,
        dir: &str,
        closure: &str,
        rollback_to: &str,
        why: &str,
    ) -> Stop {
        match self.await_agent(run, dir, rollback_to, why) {
            Ok(_) => stop(
                HostResult::NeedsHuman,
                format!(
                    "{why}, but the target's agent committed {closure}: it runs a closure that is not marked known-good"
                ),
            ),
            Err(stop) => stop,
        }
    }

    /// Waits for the agent's end: its report (`state=`, `running=`, `profile=`) when it
    /// committed or kept the new closure, else where the host stands.
    fn await_agent(
        &self,
        run: &mut Run,
        dir: &str,
        rollback_to: &str,
        why: &str,
    ) -> Result<Reply, Stop> {
        let target = run.target.clone();
        let patience = run.host.confirm_timeout
            + checks_budget(run.host)
            + 2 * run.host.activation_timeout
            + 30;
        let deadline = Instant::now() + Duration::from_secs(patience);
        loop {
            let r = self.remote(run, &target, &wait_script(dir, FINAL, patience.min(120)));
            if r.code == 0 {
                let f = fields(&r.stdout);
                match AgentState::parse(field(&f, "state").unwrap_or("")) {
                    AgentState::Restored(how) => {
                        return Err(Self::verified_restore(
                            run,
                            rollback_to,
                            format!(
                                "{why}; the target restored {rollback_to} ({})",
                                AgentState::reason(&how)
                            ),
                            &r.stdout,
                        ));
                    }
                    AgentState::Committed | AgentState::Kept => {
                        run.running = field(&f, "running").map(str::to_owned);
                        return Ok(r);
                    }
                    AgentState::Refused(how) => {
                        return Err(stop(
                            HostResult::Failed,
                            format!("{why}; the agent activated nothing ({how})"),
                        ));
                    }
                    AgentState::RestoreFailed(_) => {
                        return Err(stop(
                            HostResult::NeedsHuman,
                            format!(
                                "{why}, and re-activating {rollback_to} failed on the target: see {dir}/restore.log"
                            ),
                        ));
                    }
                    _ => {}
                }
            }
            if Instant::now() > deadline {
                return Err(stop(
                    HostResult::NeedsHuman,
                    format!(
                        "{why}; could not learn whether {} restored {rollback_to}: check it",
                        run.name
                    ),
                ));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// The agent says it restored: check the target runs `rollback_to` and its profile did
    /// not move to the failed closure.
    fn verified_restore(run: &mut Run, rollback_to: &str, message: String, out: &str) -> Stop {
        let f = fields(out);
        let running = field(&f, "running").map(str::to_owned);
        run.running.clone_from(&running);
        if restore_verified(
            running.as_deref(),
            field(&f, "profile"),
            rollback_to,
            run.closure.as_deref(),
        ) {
            stop(HostResult::Failed, message)
        } else {
            stop(
                HostResult::NeedsHuman,
                format!(
                    "{message}, but the target runs {} (profile {}): check it",
                    running.as_deref().unwrap_or("nothing"),
                    field(&f, "profile").unwrap_or("missing")
                ),
            )
        }
    }

    /// Gate 5: confirm over a new connection; the agent commits; verify.
    fn confirm(
        &self,
        run: &mut Run,
        dir: &str,
        closure: &str,
        rollback_to: &str,
    ) -> Result<String, Stop> {
        let target = run.target.clone();
        if fault("late-confirm") {
            let late = run.host.confirm_timeout + checks_budget(run.host) + 4;
            std::thread::sleep(Duration::from_secs(late));
        }
        if fault("pause-before-confirm") {
            std::thread::sleep(Duration::from_secs(3));
        }
        let expected_running = if self.settings.goal == Goal::Boot {
            rollback_to
        } else {
            closure
        };
        // Where the goal commits, the same connection marks the closure known-good on
        // the target, once the target itself shows it committed: one handshake less.
        // Before confirming, it leaves the evidence (one line of JSON, its stdin) in the
        // agent's directory, and this machine keeps it too: a deploy stopped between
        // the commit and the marks is finished by the next one ([`Unfinished`]).
        let (keep, mark, evidence) = if matches!(self.settings.goal, Goal::Switch | Goal::Boot) {
            let gate = GateResult {
                gate: if self.settings.goal == Goal::Boot {
                    Gate::Boot
                } else {
                    Gate::Switch
                },
                result: Outcome::Passed,
                started_at: now(),
                duration_ms: 0,
                summary: Some(
                    "confirmed over a new connection; committed, verified on the target".into(),
                ),
            };
            (
                format!(
                    "IFS= read -r evidence || :\nprintf '%s\\n' \"$evidence\" > {d}/evidence.json\n",
                    d = q(dir)
                ),
                format!(
                    r#"if [ "$s" = committed ] && [ "$running" = {run} ] && [ "$profile" = {c} ] &&
  mkdir {d}/marking 2>/dev/null; then
  echo "@@mark"; printf '%s\n' "$evidence" | {cmd}; rc=$?
  [ $rc != 0 ] || : > {d}/marked; rmdir {d}/marking; echo "@@mark-exit $rc"
fi
"#,
                    run = q(expected_running),
                    c = q(closure),
                    d = q(dir),
                    cmd = self.mark_command(run, closure)
                ),
                Some(Self::evidence(run, closure, Some(gate))),
            )
        } else {
            (String::new(), String::new(), None)
        };
        if let Some(evidence) = &evidence {
            self.keep_journal(run, evidence);
        }
        let script = format!(
            "echo $$ > {d}/confirmer\n{keep}mv {d}/window {d}/confirmed 2>/dev/null || {{ echo late=yes; exit {EXIT_CONFIRM_LATE}; }}\nread -r w < {d}/waiter && kill \"$w\" 2>/dev/null\n{pause}{wait}{mark}",
            d = q(dir),
            pause = if fault("pause-after-confirm") {
                "sleep 3\n"
            } else {
                ""
            },
            wait = wait_script(dir, FINAL, run.host.activation_timeout * 2 + 10)
        );
        run.fresh_connections += 1;
        let reply = if fault("confirm-unreachable") {
            Ok(Reply::lost(
                &"ssh: connect to host: Connection refused (WAYMARK_FAULT)",
            ))
        } else {
            let started = Instant::now();
            let reply = self.ssh.run_fresh(
                &target,
                &script,
                evidence.as_deref(),
                Duration::from_secs(10),
            );
            run.remote_time += started.elapsed();
            reply
        };
        let mut r = reply.unwrap_or_else(|e| Reply::lost(&e));
        if fault("cut-after-confirm") {
            // The confirmation ran; its answer is lost on the way back.
            r = Reply::lost(&"ssh: connection reset (WAYMARK_FAULT)");
        }
        if r.code == EXIT_CONFIRM_LATE {
            return Err(self.await_restore(
                run,
                dir,
                closure,
                rollback_to,
                "the confirmation arrived after the target's window closed",
            ));
        }
        if r.code != 0 {
            // The confirmation may have landed before the connection failed: the agent's
            // own end says (a commit only ever follows a confirmation).
            let why = format!(
                "could not confirm over a new SSH connection ({})",
                r.last_error()
            );
            r = self.await_agent(run, dir, rollback_to, &why)?;
            self.emit_note(
                run,
                format!("{why}, but the confirmation had landed: the agent committed"),
            );
        }
        let (head, marked) = r.stdout.split_once("@@mark\n").unwrap_or((&r.stdout, ""));
        if let Some((json, "0")) = marked
            .rsplit_once("@@mark-exit ")
            .map(|(j, code)| (j, code.trim()))
        {
            run.target_record = serde_json::from_str(json).ok();
        }
        let f = fields(head);
        let running = field(&f, "running").map(str::to_owned);
        let profile = field(&f, "profile");
        run.running.clone_from(&running);
        match AgentState::parse(field(&f, "state").unwrap_or("")) {
            AgentState::Kept if running.as_deref() == Some(closure) => {
                Ok("confirmed over a new connection; kept running, not committed".into())
            }
            AgentState::Committed => {
                if commit_verified(running.as_deref(), profile, expected_running, closure) {
                    Ok(if self.settings.goal == Goal::Boot {
                        "confirmed; the boot default, from the next boot".into()
                    } else {
                        "confirmed over a new connection; profile and boot entry set".into()
                    })
                } else {
                    Err(stop(
                        HostResult::NeedsHuman,
                        format!(
                            "the agent committed, but the target runs {} with profile {}: check it",
                            running.as_deref().unwrap_or("nothing"),
                            profile.unwrap_or("missing")
                        ),
                    ))
                }
            }
            AgentState::RestoreFailed(why) => Err(stop(
                HostResult::NeedsHuman,
                format!(
                    "{}, and restoring failed on the target: see {dir}/restore.log on {}",
                    AgentState::reason(&why),
                    run.name
                ),
            )),
            AgentState::Restored(how) => Err(Self::verified_restore(
                run,
                rollback_to,
                format!("{}; restored {rollback_to}", AgentState::reason(&how)),
                &r.stdout,
            )),
            other => Err(stop(
                HostResult::NeedsHuman,
                format!(
                    "after the confirmation the target's agent is {other:?}: check {dir} on {}",
                    run.name
                ),
            )),
        }
    }

    /// Gate 5's end: known-good marks on the target and the build host, the record
    /// here, the release tag.
    /// The evidence of the gates passed so far, plus `last` (the gate under way).
    fn evidence(run: &Run, closure: &str, last: Option<GateResult>) -> Vec<u8> {
        let mut gates = run.gates.clone();
        gates.retain(|g| g.result == Outcome::Passed);
        gates.extend(last);
        let evidence = Evidence {
            schema: waymark_evidence::SCHEMA.to_owned(),
            target: run.name.clone(),
            closure: closure.to_owned(),
            drv: run.drv.clone(),
            rev: run.rev.clone(),
            gates,
            diff: run.diff.clone(),
        };
        serde_json::to_vec(&evidence).expect("serializable")
    }

    /// `waymark known-good mark` on a host, the evidence on stdin.
    fn mark_command(&self, run: &Run, closure: &str) -> String {
        self.mark_command_for(&run.name, closure, run.rev.as_deref().unwrap_or_default())
    }

    fn mark_command_for(&self, target: &str, closure: &str, rev: &str) -> String {
        format!(
            "{} known-good mark {} {} --rev {} --evidence - --json",
            self.settings.remote_waymark,
            q(target),
            q(closure),
            q(rev)
        )
    }

    fn mark(
        &self,
        run: &mut Run,
        dir: &str,
        closure: &str,
        build_at: Option<&BuildAt>,
    ) -> Result<((), String), Stop> {
        if fault("pause-before-record") {
            std::thread::sleep(Duration::from_secs(3));
        }
        let name = run.name.clone();
        let committed = |why: String| {
            stop(
                HostResult::NeedsHuman,
                format!("{name} runs {closure} (committed), but {why}"),
            )
        };
        // The target's mark was made over the confirmation's connection; made here only
        // if that did not happen (then under the agent directory's marking lock: the
        // confirmation's shell may still be at work if only its connection was lost).
        let record = if let Some(record) = run.target_record.take() {
            record
        } else {
            let evidence = Self::evidence(run, closure, None);
            let command = self.mark_command(run, closure);
            match self
                .mark_on_target(run, dir, Some(&command), Some(&evidence))
                .map_err(committed)?
            {
                TargetMark::Made(record) | TargetMark::Found(record) => record,
            }
        };
        run.mark = Some(record.mark.clone());
        let mut wheres = vec![run.name.clone()];
        if let Some(BuildAt::Builder { host, .. }) = build_at
            && self.mark_on_builder(run, host, &record)
        {
            wheres.push(host.name.clone());
        }
        self.record_here(run, &record, build_at.is_some())
            .map_err(|e| committed(format!("writing the deploy record here failed: {e}")))?;
        if let Some(kept) = run.new_read.as_ref().filter(|c| c.root == closure) {
            self.keep_closure(&run.name, kept);
        }
        Ok((
            (),
            format!("marked {} on {}", record.mark, wheres.join(" and ")),
        ))
    }

    /// Keeps the closure `host` now runs, committed, for its next deploy's diff: replaced
    /// whole (a rename), or not at all.
    fn keep_closure(&self, host: &str, closure: &waymark_diff::Closure) {
        // It only saves reading the closure on the target: a failure costs nothing else.
        let _ = write_atomic(
            &self.settings.closures_dir.join(format!("{host}.json")),
            &serde_json::to_vec(closure).expect("serializable"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt as _;

    /// An agent directory whose state is `state`, with the events FIFO.
    fn agent_dir(state: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state"), format!("{state}\n")).unwrap();
        let fifo = dir.path().join("events");
        assert!(
            Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        dir
    }

    /// Whether any process of process group `pgid` still runs.
    fn group_alive(pgid: u32) -> bool {
        Command::new("kill")
            .args(["-0", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    #[test]
    fn the_wait_scripts_watchdog_never_outlives_the_wait() {
        // The wait ends at once (the state matches); its watchdog, which sleeps the
        // whole allowance, must be gone soon after, in every shell a target may have.
        for shell in ["sh", "dash", "bash", "busybox"] {
            if Command::new("sh")
                .args(["-c", &format!("command -v {shell}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| !s.success())
            {
                continue;
            }
            let runs: Vec<_> = (0..12)
                .map(|_| {
                    let dir = agent_dir("committed");
                    let script = wait_script(dir.path().to_str().unwrap(), FINAL, 60);
                    let mut cmd = Command::new(shell);
                    if shell == "busybox" {
                        cmd.arg("sh");
                    }
                    let child = cmd
                        .args(["-c", &script])
                        .stdout(Stdio::piped())
                        .process_group(0)
                        .spawn()
                        .unwrap();
                    (dir, child)
                })
                .collect();
            let mut groups = Vec::new();
            for (_dir, child) in runs {
                let pgid = child.id();
                let out = child.wait_with_output().unwrap();
                assert!(
                    String::from_utf8_lossy(&out.stdout).contains("state=committed"),
                    "{shell}: {out:?}"
                );
                groups.push(pgid);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while groups.iter().any(|g| group_alive(*g)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(
                !groups.iter().any(|g| group_alive(*g)),
                "{shell}: a wait's watchdog outlived it"
            );
        }
    }

    #[test]
    fn the_wait_script_ends_at_its_deadline_with_the_state_it_saw() {
        let dir = agent_dir("awaiting-confirmation");
        let out = Command::new("sh")
            .args(["-c", &wait_script(dir.path().to_str().unwrap(), FINAL, 1)])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("state=awaiting-confirmation"),
            "{out:?}"
        );
    }
}
