//! The sessions the hosts hold: the build host's session and the target's probe (both
//! started ahead, the same for every deploy), the scripts sent to them later, and the
//! wait for the agent's state. The scripts and their replies are [`crate::protocol`]'s.

// The gates are parts of one module: they share its types and helpers.
#[allow(clippy::wildcard_imports)]
use super::*;

use crate::protocol::{BUILD_SESSION, LOG, PROBE, RUN_NEXT, SERVE, WAIT, script as params};

/// The build host's session, the same whatever is built (so it can start before the
/// flake is evaluated; see `scripts/build_session.sh`), then [`SERVE`].
pub fn build_session_script() -> String {
    params(&[BUILD_SESSION, SERVE], &[])
}

/// A target's probe (`scripts/probe.sh`): what it runs, its boot default, failed units,
/// its known-good marks and (unless it runs `kept_root`, whose closure is known here)
/// the closure it runs; then it runs the script it is sent next ([`RUN_NEXT`]). The
/// same for every deploy to the host, so it can start before the flake is evaluated.
pub fn probe_script(remote_waymark: &str, kept_root: Option<&str>) -> String {
    params(
        &[PROBE, RUN_NEXT],
        &[
            ("waymark", remote_waymark),
            ("kept_root", kept_root.unwrap_or_default()),
        ],
    )
}

/// Runs `script` in a session that [`SERVE`]s: its reply (output as both stdout and
/// stderr, its exit status), or `None` when the session is gone.
pub(super) fn serve(talk: &mut Talk, script: &str) -> Option<Reply> {
    serve_taking(talk, script, &mut |_| false)
}

/// [`serve`], handing each line of the build's log (relayed as [`LOG`]) to `relayed`
/// as it comes, instead of keeping it in the reply.
pub(super) fn serve_relaying(
    talk: &mut Talk,
    script: &str,
    relayed: &mut dyn FnMut(&str),
) -> Option<Reply> {
    serve_taking(talk, script, &mut |line| {
        line.strip_prefix(LOG)
            .and_then(|l| l.strip_prefix('='))
            .map(&mut *relayed)
            .is_some()
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
    // What the shell itself said on stderr comes relayed as `err=` (see serve.sh).
    let (err, out): (Vec<String>, Vec<String>) =
        lines.into_iter().partition(|l| l.starts_with("err="));
    let err: Vec<&str> = err.iter().map(|l| &l["err=".len()..]).collect();
    Some(Reply {
        code,
        stdout: out.join("\n") + "\n",
        stderr: err.join("\n"),
    })
}

/// What a wait for the agent waits for ([`wait_script`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    /// Its end (committed, kept, restored, restore failed, refused).
    Final,
    /// Its activation: awaiting confirmation, or its end.
    Activation,
}

/// The parameters of a wait (`scripts/wait.sh`) for the agent in `dir`, until its state
/// is `until` or `seconds` pass: it prints `state=`, `running=`, `profile=` (also left
/// in `$s`, `$running` and `$profile`) and the tail of the activation log.
pub(super) fn wait_params(dir: &str, until: Until, seconds: u64) -> [(&'static str, String); 3] {
    [
        ("dir", dir.to_owned()),
        (
            "until",
            match until {
                Until::Final => "final",
                Until::Activation => "activation",
            }
            .to_owned(),
        ),
        ("seconds", seconds.to_string()),
    ]
}

/// The wait for the agent in `dir` ([`wait_params`]) as a script of its own.
pub(super) fn wait_script(dir: &str, until: Until, seconds: u64) -> String {
    let p = wait_params(dir, until, seconds);
    let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
    params(&[WAIT], &p)
}

/// `params` borrowed, for [`protocol::script`].
pub(super) fn borrowed<'p>(params: &'p [(&'p str, String)]) -> Vec<(&'p str, &'p str)> {
    params.iter().map(|(k, v)| (*k, v.as_str())).collect()
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
                    let script = wait_script(dir.path().to_str().unwrap(), Until::Final, 60);
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
            .args([
                "-c",
                &wait_script(dir.path().to_str().unwrap(), Until::Final, 1),
            ])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("state=awaiting-confirmation"),
            "{out:?}"
        );
    }
}
