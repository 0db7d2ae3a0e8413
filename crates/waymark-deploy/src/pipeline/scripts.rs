//! The shell the hosts run and how their answers are read: the build host's session and
//! the target's probe (both started ahead, the same for every deploy), the loops that run
//! scripts sent later, the wait for the agent's state, and the `key=value` lines and
//! `@@` markers of the replies.

// The gates are parts of one module: they share its types and helpers.
#[allow(clippy::wildcard_imports)]
use super::*;

/// The line that ends the probe's answer.
pub(super) const PROBED: &str = "@@probed";

/// `real PATH`, in `$(...)`: where PATH leads, every link followed, as `readlink -e`
/// says for a directory, but with a fork and no program to start (the `cd` stays in
/// the substitution's subshell). The agent has its own.
pub(super) const REAL: &str = r#"real() { cd -P -- "$1" 2>/dev/null && pwd -P; }"#;

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

/// The end of a script that runs the script sent to it next: lines up to `@@run`. The
/// shell's `read` takes a byte at a time, so what follows is left on stdin for it.
pub(super) const RUN_NEXT: &str = r#"next=""
while IFS= read -r line; do
  [ "$line" = @@run ] && { eval "$next"; exit; }
  next="$next$line
"
done"#;

/// The end of a script that stays to run what it is sent, one script after another:
/// lines up to `@@run`, run with no stdin, its stderr in its stdout, then its exit
/// status (`@@status N`) and `@@ran`.
/// It ends when its input does.
pub(super) const SERVE: &str = r#"while next=""; do
  while IFS= read -r line || exit 0; [ "$line" != @@run ]; do next="$next$line
"; done
  (eval "$next") </dev/null 2>&1; echo "@@status $?"; echo "@@ran"
done"#;

/// What begins each line of a command's output that a script relays as it comes
/// (Nix's structured build log): no such line can be read as a marker.
pub(super) const RELAYED: char = '~';

/// Runs `script` in a session that [`SERVE`]s: its reply (output as both stdout and
/// stderr, its exit status), or `None` when the session is gone.
pub(super) fn serve(talk: &mut Talk, script: &str) -> Option<Reply> {
    serve_taking(talk, script, &mut |_| false)
}

/// [`serve`], handing each relayed line (one the script prints behind [`RELAYED`]) to
/// `relayed` as it comes, instead of keeping it in the reply.
pub(super) fn serve_relaying(
    talk: &mut Talk,
    script: &str,
    relayed: &mut dyn FnMut(&str),
) -> Option<Reply> {
    serve_taking(talk, script, &mut |line| {
        line.strip_prefix(RELAYED).map(&mut *relayed).is_some()
    })
}

/// [`serve`], showing each line to `take` as it comes; the lines it takes are not kept.
pub(super) fn serve_taking(
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

/// Lines `key=value` of a remote script's output.
pub(super) fn fields(out: &str) -> BTreeMap<&str, Vec<&str>> {
    let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in out.lines() {
        if let Some((k, v)) = line.split_once('=') {
            map.entry(k).or_default().push(v);
        }
    }
    map
}

pub(super) fn field<'m>(map: &'m BTreeMap<&str, Vec<&str>>, key: &str) -> Option<&'m str> {
    map.get(key)
        .and_then(|v| v.first().copied())
        .filter(|v| !v.is_empty())
}

/// A shell loop on the target that waits until the agent's state matches `pattern` (a
/// `case` pattern) or `seconds` pass, then prints `state=`, `running=`, `profile=` (also
/// left in `$s`, `$running` and `$profile`) and the tail of the activation log.
pub(super) fn wait_script(dir: &str, pattern: &str, seconds: u64) -> String {
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

pub(super) const FINAL: &str = "committed|kept|restored:*|restore-failed:*|refused:*";

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
