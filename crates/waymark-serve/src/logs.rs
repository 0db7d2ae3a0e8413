//! Job logs: append-only, read by line number. The file backend keeps one `<job>.log`
//! (the lines) and one `<job>.idx` (each line's start offset, 8 bytes little-endian) per
//! job; a line becomes visible once its offset is in the index, so a crash between the
//! two writes leaves an invisible tail, never a torn line. A shared-database backend
//! implements the same trait with a table.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::PathBuf;
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Where job logs go.
pub trait Logs: Send + Sync + 'static {
    /// Appends a line (newlines inside become separate lines); the last line's number
    /// (1-based).
    fn append(&self, job: i64, text: &str) -> Result<u64>;
    /// Up to `limit` lines after line `after` (numbered from 1), and how many there are.
    fn read(&self, job: i64, after: u64, limit: usize) -> Result<(Vec<(u64, String)>, u64)>;
}

/// Logs as files in one directory.
pub struct FileLogs {
    dir: PathBuf,
    // One writer at a time: a line and its index entry go in together.
    write: Mutex<()>,
}

impl FileLogs {
    /// Logs in `dir` (created).
    pub fn new(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        Ok(Self {
            dir,
            write: Mutex::new(()),
        })
    }

    fn paths(&self, job: i64) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{job}.log")),
            self.dir.join(format!("{job}.idx")),
        )
    }
}

fn open_append(path: &PathBuf) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(Error::io("opening", path))
}

impl Logs for FileLogs {
    fn append(&self, job: i64, text: &str) -> Result<u64> {
        let _guard = self
            .write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (log_path, idx_path) = self.paths(job);
        let mut log = open_append(&log_path)?;
        let mut idx = open_append(&idx_path)?;
        let mut offset = log
            .metadata()
            .map_err(Error::io("reading", &log_path))?
            .len();
        let mut count = idx
            .metadata()
            .map_err(Error::io("reading", &idx_path))?
            .len()
            / 8;
        for line in text.lines() {
            let bytes = format!("{line}\n");
            log.write_all(bytes.as_bytes())
                .map_err(Error::io("writing", &log_path))?;
            idx.write_all(&offset.to_le_bytes())
                .map_err(Error::io("writing", &idx_path))?;
            offset += bytes.len() as u64;
            count += 1;
        }
        Ok(count)
    }

    fn read(&self, job: i64, after: u64, limit: usize) -> Result<(Vec<(u64, String)>, u64)> {
        let (log_path, idx_path) = self.paths(job);
        let idx = match std::fs::read(&idx_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(Error::io("reading", &idx_path)(e)),
        };
        let offsets: Vec<u64> = idx
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let total = offsets.len() as u64;
        if after >= total || limit == 0 {
            return Ok((Vec::new(), total));
        }
        let first = after as usize;
        let last = (first + limit).min(offsets.len());
        let mut log = File::open(&log_path).map_err(Error::io("opening", &log_path))?;
        log.seek(SeekFrom::Start(offsets[first]))
            .map_err(Error::io("reading", &log_path))?;
        let mut buf = Vec::new();
        match offsets.get(last) {
            Some(&end) => {
                buf.resize((end - offsets[first]) as usize, 0);
                log.read_exact(&mut buf)
                    .map_err(Error::io("reading", &log_path))?;
            }
            None => {
                log.read_to_end(&mut buf)
                    .map_err(Error::io("reading", &log_path))?;
            }
        }
        // Each line from its own offset to its first newline: bytes a crash left
        // between two indexed lines belong to none.
        let base = offsets[first];
        let lines = (first..last)
            .map(|i| {
                let start = ((offsets[i] - base) as usize).min(buf.len());
                let end = offsets
                    .get(i + 1)
                    .map_or(buf.len(), |&e| ((e - base) as usize).min(buf.len()));
                let raw = &buf[start..end.max(start)];
                let raw = raw.split(|&b| b == b'\n').next().unwrap_or_default();
                ((i + 1) as u64, String::from_utf8_lossy(raw).into_owned())
            })
            .collect();
        Ok((lines, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_by_number_and_an_unindexed_tail_is_invisible() {
        let dir = tempfile::tempdir().unwrap();
        let logs = FileLogs::new(dir.path().join("logs")).unwrap();
        assert_eq!(logs.append(7, "one").unwrap(), 1);
        assert_eq!(logs.append(7, "two\nthree").unwrap(), 3);
        let (lines, total) = logs.read(7, 1, 10).unwrap();
        assert_eq!(total, 3);
        assert_eq!(lines, vec![(2, "two".into()), (3, "three".into())]);
        assert_eq!(logs.read(7, 0, 1).unwrap().0, vec![(1, "one".into())]);
        assert_eq!(logs.read(7, 3, 10).unwrap().0, vec![]);
        // A crash after the line and before its index entry: the line does not show.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("logs/7.log"))
            .unwrap()
            .write_all(b"torn")
            .unwrap();
        assert_eq!(logs.read(7, 2, 10).unwrap(), (vec![(3, "three".into())], 3));
        assert_eq!(logs.append(7, "four").unwrap(), 4);
        assert_eq!(logs.read(7, 3, 10).unwrap().0, vec![(4, "four".into())]);
        assert_eq!(logs.read(8, 0, 10).unwrap(), (vec![], 0));
    }
}
