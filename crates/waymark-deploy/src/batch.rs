//! Scripts for one host sent together: whoever finds none under way sends every script
//! that waits, in one round trip, and the host runs them side by side. Hosts of a fleet
//! that finish together mark their closures on their shared build host; one at a time,
//! each mark would wait for the round trips of all before it.

use std::sync::{Mutex, mpsc};

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

/// One shell script that runs `scripts` side by side (each in a subshell, its stderr in
/// its stdout) and prints, in order, `@@item I`, the output of script I (each line after
/// a `|`, so no output reads as a marker) and `@@item-exit STATUS`. One script is sent
/// as it is.
pub(crate) fn batch_script(scripts: &[String]) -> String {
    if let [one] = scripts {
        return one.clone();
    }
    let mut s = String::from("b=$(mktemp -d) || exit 1\n");
    for (i, script) in scripts.iter().enumerate() {
        s.push_str(&format!(
            "{{ ( {script}\n) > \"$b/{i}\" 2>&1; echo $? > \"$b/{i}.rc\"; }} < /dev/null &\n"
        ));
    }
    s.push_str(&format!(
        r#"wait
i=0
while [ "$i" -lt {n} ]; do
  echo "@@item $i"
  while IFS= read -r l || [ -n "$l" ]; do printf '|%s\n' "$l"; done < "$b/$i"
  rc=255; read -r rc < "$b/$i.rc"; echo "@@item-exit $rc"
  i=$(( i + 1 ))
done
rm -rf "$b"
"#,
        n = scripts.len()
    ));
    s
}

/// The replies of [`batch_script`]'s scripts, from the batch's reply. A script without
/// its part (the batch failed) gets the batch's own error.
pub(crate) fn split_batch(reply: Reply, count: usize) -> Vec<Reply> {
    if count == 1 {
        return vec![reply];
    }
    let mut replies: Vec<Option<Reply>> = vec![None; count];
    let mut current: Option<(usize, String)> = None;
    for line in reply.stdout.lines() {
        if let Some(line) = line.strip_prefix('|') {
            if let Some((_, output)) = current.as_mut() {
                output.push_str(line);
                output.push('\n');
            }
        } else if let Some(i) = line.strip_prefix("@@item ").and_then(|i| i.parse().ok()) {
            current = Some((i, String::new()));
        } else if let Some(code) = line.strip_prefix("@@item-exit ")
            && let Some((i, output)) = current.take()
            && let Some(slot) = replies.get_mut(i)
        {
            *slot = Some(Reply {
                code: code.trim().parse().unwrap_or(-1),
                stdout: output.clone(),
                stderr: output,
            });
        }
    }
    replies
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Reply::lost(&format!(
                    "the batch gave no reply for it (exit {}): {}",
                    reply.code,
                    reply.last_error()
                ))
            })
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
