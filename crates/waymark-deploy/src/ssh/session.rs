//! A session held ready on a host ([`Held`]) and the conversation with it once it
//! runs ([`Talk`]): scripts sent on its stdin, answers read line by line up to a marker.

// Parts of the ssh module: they share its types and helpers.
#[allow(clippy::wildcard_imports)]
use super::*;

/// A remote script waiting for its go (see [`Ssh::hold`]). Dropped without a go, it
/// ends without running.
#[derive(Debug)]
pub struct Held {
    pub(super) child: Option<std::process::Child>,
    pub(super) processes: Arc<Processes>,
}

impl Held {
    /// Lets the script run with `input` on its stdin and returns the running session,
    /// to read its answer line by line and send it more (see [`Talk`]).
    pub fn talk(mut self, input: &[u8]) -> Result<Talk, Error> {
        let mut talk = Talk::new(
            self.child.take().expect("held until now"),
            Arc::clone(&self.processes),
        );
        talk.send(b"go\n")?;
        talk.send(input)?;
        Ok(talk)
    }
}

/// A remote script in conversation ([`Held::talk`]). Dropped, its input
/// ends, and the script with it.
#[derive(Debug)]
pub struct Talk {
    /// Until [`Talk::finish`] waits for it (never waited twice: by then the pid may
    /// be another process's).
    child: Option<std::process::Child>,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
    read: String,
    processes: Arc<Processes>,
}

impl Talk {
    fn new(mut child: std::process::Child, processes: Arc<Processes>) -> Self {
        // Drained aside, so a chatty stderr can never block the remote while this side
        // waits on its stdout.
        let mut stderr = child.stderr.take().expect("piped");
        let stderr = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            buf
        });
        Self {
            stdin: child.stdin.take(),
            stdout: BufReader::new(child.stdout.take().expect("piped")),
            child: Some(child),
            stderr: Some(stderr),
            read: String::new(),
            processes,
        }
    }

    /// Sends `bytes` to the script's stdin.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let stdin = self.stdin.as_mut().ok_or_else(|| Error::Spawn {
            program: "ssh".into(),
            message: "the session's input is closed".into(),
        })?;
        stdin
            .write_all(bytes)
            .and_then(|()| stdin.flush())
            .map_err(|e| ssh_error(&e))
    }

    /// Streams all of `reader` to the script's stdin.
    pub fn send_from(&mut self, reader: &mut impl std::io::Read) -> Result<(), Error> {
        let stdin = self.stdin.as_mut().ok_or_else(|| Error::Spawn {
            program: "ssh".into(),
            message: "the session's input is closed".into(),
        })?;
        std::io::copy(reader, stdin)
            .and_then(|_| stdin.flush())
            .map_err(|e| ssh_error(&e))
    }

    /// The lines the script prints before the line `marker`; `None` if it ended first
    /// (what it printed is kept for [`Talk::finish`]).
    pub fn lines_until(&mut self, marker: &str) -> Option<Vec<String>> {
        self.lines_until_each(marker, &mut |_| false)
    }

    /// [`Talk::lines_until`], showing each line to `take` as it arrives: a line it takes
    /// (returns true for) is not kept.
    pub fn lines_until_each(
        &mut self,
        marker: &str,
        take: &mut dyn FnMut(&str) -> bool,
    ) -> Option<Vec<String>> {
        let mut lines: Vec<String> = Vec::new();
        loop {
            let mut line = String::new();
            match self.stdout.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    self.read.push_str(&lines.join(""));
                    return None;
                }
                Ok(_) if line.trim_end_matches('\n') == marker => {
                    return Some(lines.iter().map(|l| l.trim_end().to_owned()).collect());
                }
                Ok(_) if take(line.trim_end_matches('\n')) => {}
                Ok(_) => lines.push(line),
            }
        }
    }

    /// Closes its stdin and waits for the script: everything it printed after the last
    /// marker read.
    pub fn finish(mut self) -> Result<Reply, Error> {
        drop(self.stdin.take());
        let mut rest = std::mem::take(&mut self.read);
        let _ = self.stdout.read_to_string(&mut rest);
        let mut child = self.child.take().expect("waited for only here");
        let status = self.processes.wait(&mut child)?;
        let stderr = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        Ok(Reply {
            code: status.code().unwrap_or(-1),
            stdout: rest,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }
}

impl Drop for Talk {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            let _ = self.processes.wait(&mut child);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = self.processes.wait(&mut child);
        }
    }
}
