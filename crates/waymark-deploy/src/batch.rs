//! Scripts for one host sent together: whoever finds none under way sends every script
//! that waits, in one round trip, and the host runs them side by side. Hosts of a fleet
//! that finish together mark their closures on their shared build host; one at a time,
//! each mark would wait for the round trips of all before it.

use std::sync::{Mutex, mpsc};

use crate::protocol;
use crate::ssh::Reply;

/// The scripts waiting for one host, and whether a batch is under way.
#[derive(Default)]
pub(crate) struct Batcher {
    state: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<(String, mpsc::Sender<Reply>)>,
    sending: bool,
}

/// A sender's turn. Ended by a panic, it lets later scripts be sent, and the scripts
/// left waiting get no reply (their `recv` fails) instead of waiting for ever.
struct Turn<'b> {
    batcher: &'b Batcher,
    ended: bool,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if !self.ended {
            let mut q = self
                .batcher
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            q.sending = false;
            q.waiting.clear();
        }
    }
}

impl Batcher {
    /// Runs `script` through `send` (which runs a batch of scripts and returns one reply
    /// each, in order), together with the scripts submitted while a batch is under way.
    pub(crate) fn submit(&self, script: &str, send: impl Fn(&[String]) -> Vec<Reply>) -> Reply {
        let (tx, rx) = mpsc::channel();
        let lead = {
            let mut q = self.state.lock().expect("not poisoned");
            q.waiting.push((script.to_owned(), tx));
            !std::mem::replace(&mut q.sending, true)
        };
        if lead {
            let mut turn = Turn {
                batcher: self,
                ended: false,
            };
            loop {
                let batch = {
                    let mut q = self.state.lock().expect("not poisoned");
                    if q.waiting.is_empty() {
                        // In the same hold of the lock as the check: a script submitted
                        // after it leads a turn of its own.
                        q.sending = false;
                        turn.ended = true;
                        break;
                    }
                    std::mem::take(&mut q.waiting)
                };
                let (scripts, senders): (Vec<String>, Vec<_>) = batch.into_iter().unzip();
                let mut replies = send(&scripts).into_iter();
                for tx in senders {
                    let reply = replies
                        .next()
                        .unwrap_or_else(|| Reply::lost(&"no reply in the batch"));
                    let _ = tx.send(reply);
                }
            }
        }
        rx.recv()
            .unwrap_or_else(|_| Reply::lost(&"the batch it was in was not sent"))
    }

    /// Scripts waiting to be sent.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.state.lock().expect("not poisoned").waiting.len()
    }
}

/// One shell script that runs `scripts` side by side (`scripts/batch.sh`: each in a
/// subshell, its stderr in its stdout) and prints, in order, `@@item I`, the output of
/// script I (relayed, so no output reads as a marker) and `@@item-exit STATUS`. One
/// script is sent as it is.
pub(crate) fn batch_script(scripts: &[String]) -> String {
    if let [one] = scripts {
        return one.clone();
    }
    let names: Vec<String> = (0..scripts.len()).map(|i| format!("s{i}")).collect();
    let n = scripts.len().to_string();
    let mut params = vec![("n", n.as_str())];
    params.extend(
        names
            .iter()
            .map(String::as_str)
            .zip(scripts.iter().map(String::as_str)),
    );
    protocol::script(&[protocol::BATCH], &params)
}

/// The replies of [`batch_script`]'s scripts, from the batch's reply. A script without
/// its part (the batch failed) gets the batch's own error.
pub(crate) fn split_batch(reply: Reply, count: usize) -> Vec<Reply> {
    if count == 1 {
        return vec![reply];
    }
    protocol::batch_items(&reply.stdout, count)
        .into_iter()
        .map(|item| match item {
            Some(item) => Reply {
                code: item.code,
                stdout: item.output.clone(),
                stderr: item.output,
            },
            None => Reply::lost(&format!(
                "the batch gave no reply for it (exit {}): {}",
                reply.code,
                reply.last_error()
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn sh(script: &str) -> Reply {
        let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
        Reply {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[test]
    fn a_batch_runs_every_script_and_keeps_their_outputs_apart() {
        let scripts = [
            "cat <<'@@evidence'\n{\"a\": 1}\n@@evidence".to_owned(),
            "echo to stderr >&2; exit 3".to_owned(),
            // No final newline, and a line that looks like the batch's own.
            "printf 'last\\n@@item-exit 0x'".to_owned(),
            "sleep 0.2; read -r x || echo no-stdin".to_owned(),
        ];
        let replies = split_batch(sh(&batch_script(&scripts)), scripts.len());
        let got: Vec<(i32, &str)> = replies
            .iter()
            .map(|r| (r.code, r.stdout.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (0, "{\"a\": 1}\n"),
                (3, "to stderr\n"),
                (0, "last\n@@item-exit 0x\n"),
                (0, "no-stdin\n"),
            ]
        );
        // One script goes as it is; a batch that never ran fails every script in it.
        assert_eq!(batch_script(&scripts[..1]), scripts[0]);
        let failed = split_batch(Reply::lost(&"Connection reset"), 2);
        assert!(
            failed
                .iter()
                .all(|r| r.code == 255 && r.last_error().contains("Connection reset"))
        );
    }

    #[test]
    fn scripts_submitted_during_a_batch_go_together_in_the_next() {
        let queue = Batcher::default();
        let groups_sent = Mutex::new(Vec::new());
        let calls = AtomicUsize::new(0);
        let send = |scripts: &[String]| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                // The first batch is under way until the three others wait.
                while queue.waiting() < 3 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            groups_sent.lock().unwrap().push(scripts.to_vec());
            scripts
                .iter()
                .map(|s| Reply {
                    code: 0,
                    stdout: format!("ran {s}"),
                    stderr: String::new(),
                })
                .collect()
        };
        let replies: Vec<String> = std::thread::scope(|scope| {
            let first = scope.spawn(|| queue.submit("a", send));
            while calls.load(Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
            let others: Vec<_> = ["b", "c", "d"]
                .into_iter()
                .map(|s| scope.spawn(|| queue.submit(s, send)))
                .collect();
            std::iter::once(first)
                .chain(others)
                .map(|h| h.join().unwrap().stdout)
                .collect()
        });
        assert_eq!(replies, ["ran a", "ran b", "ran c", "ran d"]);
        // The turn ended: the next script is sent at once.
        assert_eq!(queue.submit("e", send).stdout, "ran e");
        let groups = groups_sent.into_inner().unwrap();
        assert_eq!(groups.len(), 3, "{groups:?}");
        assert_eq!(groups[0], ["a"]);
        let mut second = groups[1].clone();
        second.sort();
        assert_eq!(second, ["b", "c", "d"]);
    }
}
