//! The run's child processes: ssh sessions, masters still authenticating, confirmations,
//! local `nix` commands. Once the run ends ([`Processes::end`]) none starts any more
//! and those under way are told to stop, so none outlives the run: an ssh session
//! whose master has ended opens a connection of its own, and a confirmation that did
//! would commit a host this run reports as interrupted.
//!
//! A process is forgotten only once it has exited and before it is reaped (`waitid`
//! with `WNOWAIT`), so the pid signalled at the end is never one the system has
//! given to another process since.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};

use crate::Error;

/// See the module's header.
#[derive(Debug, Default)]
pub struct Processes {
    live: Mutex<Live>,
}

#[derive(Debug, Default)]
struct Live {
    ending: bool,
    pids: BTreeSet<i32>,
    /// Those [`Processes::end`] stopped, not yet waited for: their failure is the
    /// run's end, not their own.
    stopped: BTreeSet<i32>,
}

impl Processes {
    /// Whether the run is ending: nothing new starts.
    pub fn is_ending(&self) -> bool {
        self.live.lock().expect("not poisoned").ending
    }

    /// Starts `cmd` as one of the run's processes; [`Error::Closing`] once the run is
    /// ending (one that started as it ended is stopped at once).
    pub fn spawn(&self, cmd: &mut Command) -> Result<Child, Error> {
        if self.is_ending() {
            return Err(Error::Closing);
        }
        // Started outside the lock: the hosts' threads start theirs side by side.
        let mut child = cmd.spawn().map_err(|e| Error::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            message: e.to_string(),
        })?;
        let mut live = self.live.lock().expect("not poisoned");
        if live.ending {
            drop(live);
            stop(child.id());
            let _ = child.wait();
            return Err(Error::Closing);
        }
        live.pids.insert(pid_of(&child));
        Ok(child)
    }

    /// Waits for one of the run's processes to exit, and reaps it; [`Error::Closing`]
    /// when it failed after the run's end told it to stop (whatever its status then:
    /// ssh and nix catch SIGTERM and exit with an ordinary failure).
    pub fn wait(&self, child: &mut Child) -> Result<ExitStatus, Error> {
        let pid = Pid::from_child(child);
        // Until it has exited (left unreaped); interrupted waits go on. Any other error
        // (reaped already, not by us) leaves only the status to read.
        while let Err(rustix::io::Errno::INTR) = rustix::process::waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        ) {}
        let stopped = {
            let mut live = self.live.lock().expect("not poisoned");
            let pid = pid.as_raw_nonzero().get();
            live.pids.remove(&pid);
            live.stopped.remove(&pid)
        };
        let status = child.wait().map_err(|e| Error::Spawn {
            program: "a command".into(),
            message: e.to_string(),
        })?;
        // One that had succeeded before it was told to stop keeps its success (a master
        // now in the background is one to end).
        if stopped && !status.success() {
            return Err(Error::Closing);
        }
        Ok(status)
    }

    /// Its output, as [`Child::wait_with_output`] gives it (see [`Processes::wait`]).
    pub fn wait_with_output(&self, mut child: Child) -> Result<Output, Error> {
        drop(child.stdin.take());
        let stderr = child.stderr.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf);
                buf
            })
        });
        let mut stdout = Vec::new();
        if let Some(mut pipe) = child.stdout.take() {
            // Cut short, it is still waited for: its status says why.
            let _ = pipe.read_to_end(&mut stdout);
        }
        let stderr = stderr
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        let status = self.wait(&mut child)?;
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    /// Runs `cmd` to its end, with its stdio as it sets them: `input` goes to its stdin
    /// where that is piped.
    pub fn output(&self, cmd: &mut Command, input: Option<&[u8]>) -> Result<Output, Error> {
        let mut child = self.spawn(cmd)?;
        if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
            // A command that exits early closes the pipe; its status says why.
            let _ = stdin.write_all(bytes);
        }
        self.wait_with_output(child)
    }

    /// How many are under way.
    #[cfg(test)]
    pub(crate) fn running(&self) -> usize {
        let live = self.live.lock().expect("not poisoned");
        live.pids.len() + live.stopped.len()
    }

    /// Ends the run: nothing starts from now on, and every process under way is told
    /// to stop (SIGTERM). Returns how many were.
    pub fn end(&self) -> usize {
        let mut live = self.live.lock().expect("not poisoned");
        live.ending = true;
        // Under the lock: none is reaped meanwhile, so each pid is still its process.
        let pids = std::mem::take(&mut live.pids);
        for &pid in &pids {
            stop(pid.unsigned_abs());
        }
        let stopped = pids.len();
        live.stopped.extend(pids);
        stopped
    }

    /// After [`Processes::end`]: waits until every process it stopped has exited, for
    /// at most `timeout`, then kills those still running (one that ignores SIGTERM, or
    /// hangs in its cleanup), so none outlives the run. Returns how many it killed.
    pub fn wait_stopped(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            {
                // Under the lock none of them is reaped: each pid is still its process.
                let live = self.live.lock().expect("not poisoned");
                let running: Vec<i32> = live
                    .stopped
                    .iter()
                    .copied()
                    .filter(|&pid| !has_exited(pid))
                    .collect();
                if running.is_empty() {
                    return 0;
                }
                if Instant::now() >= deadline {
                    for &pid in &running {
                        signal(pid.unsigned_abs(), Signal::KILL);
                    }
                    return running.len();
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Whether the child `pid`, not yet reaped, has exited (left unreaped); true also when
/// it is no child of ours any more.
fn has_exited(pid: i32) -> bool {
    let Some(pid) = Pid::from_raw(pid) else {
        return true;
    };
    !matches!(
        rustix::process::waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG,
        ),
        Ok(None) | Err(rustix::io::Errno::INTR)
    )
}

fn pid_of(child: &Child) -> i32 {
    Pid::from_child(child).as_raw_nonzero().get()
}

fn stop(pid: u32) {
    signal(pid, Signal::TERM);
}

fn signal(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead as _;
    use std::process::Stdio;

    #[test]
    fn ending_stops_what_runs_and_starts_nothing_more() {
        let processes = Processes::default();
        let started = Instant::now();
        std::thread::scope(|scope| {
            let running = scope.spawn(|| {
                processes
                    .output(Command::new("sleep").arg("30").stdout(Stdio::piped()), None)
                    .map(|o| o.status)
            });
            while processes.running() == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(processes.end(), 1);
            assert!(matches!(running.join().unwrap(), Err(Error::Closing)));
        });
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(processes.running(), 0);
        assert_eq!(processes.wait_stopped(Duration::from_secs(10)), 0);
        assert!(matches!(
            processes.output(&mut Command::new("true"), None),
            Err(Error::Closing)
        ));
    }

    #[test]
    fn at_the_end_a_success_stands_and_a_failure_is_the_end_s() {
        let processes = Processes::default();
        let mut done = processes.spawn(&mut Command::new("true")).unwrap();
        // Exited, not yet waited for (a master gone to the background, say).
        while std::fs::read_to_string(format!("/proc/{}/stat", done.id()))
            .is_ok_and(|s| !s.contains(") Z"))
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut failed = processes
            .spawn(Command::new("sh").args(["-c", "exit 1"]))
            .unwrap();
        while std::fs::read_to_string(format!("/proc/{}/stat", failed.id()))
            .is_ok_and(|s| !s.contains(") Z"))
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(processes.end(), 2);
        assert!(processes.wait(&mut done).unwrap().success());
        assert!(matches!(processes.wait(&mut failed), Err(Error::Closing)));
        assert_eq!(processes.running(), 0);
    }

    #[test]
    fn the_end_waits_for_what_it_stopped_and_kills_what_stays() {
        let processes = Processes::default();
        let mut quits = processes.spawn(Command::new("sleep").arg("30")).unwrap();
        let mut stays = processes
            .spawn(
                Command::new("sh")
                    .args([
                        "-c",
                        "trap '' TERM; echo ready; while :; do sleep 0.05; done",
                    ])
                    .stdout(Stdio::piped()),
            )
            .unwrap();
        let mut ready = String::new();
        std::io::BufReader::new(stays.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(processes.end(), 2);
        let started = Instant::now();
        assert_eq!(processes.wait_stopped(Duration::from_millis(500)), 1);
        assert!(started.elapsed() >= Duration::from_millis(500));
        // Both have exited: neither wait blocks.
        assert!(matches!(processes.wait(&mut quits), Err(Error::Closing)));
        assert!(matches!(processes.wait(&mut stays), Err(Error::Closing)));
        let started = Instant::now();
        assert_eq!(processes.wait_stopped(Duration::from_secs(10)), 0);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_process_is_forgotten_once_waited_for() {
        let processes = Processes::default();
        let out = processes
            .output(
                Command::new("sh")
                    .args(["-c", "cat; echo err >&2; exit 3"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped()),
                Some(b"in"),
            )
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"in");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(processes.running(), 0);
        assert_eq!(processes.end(), 0);
    }
}
