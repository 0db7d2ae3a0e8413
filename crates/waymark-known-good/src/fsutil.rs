//! Crash-safe, link-safe file system steps. Every change is a rename, so a crash leaves
//! the old state or the new one, never half of a file or a link. Below the roots and
//! state directories the operator named, every step goes through an open directory
//! (`openat` and friends, `O_NOFOLLOW`): a symlink planted at a target's directory, a
//! record or a lock is refused, never followed, so no write or removal lands outside
//! (issue 22: a symlinked `<roots>/<target>` once took GC roots, and an unmark's
//! removals, outside the store's GC roots).

use std::ffi::OsStr;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// The largest file read from a state directory (records and intents are a few KiB):
/// a bound, so a planted huge file or device cannot exhaust memory.
pub const MAX_READ: u64 = 4 << 20;

fn io(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.raw_os_error())
}

/// What is at a name in a directory, not following a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Nothing.
    Missing,
    /// A symbolic link and what it points at.
    Link(String),
    /// A directory.
    Dir,
    /// A regular file, a FIFO, a socket or a device.
    Other,
}

/// An open directory and the path it was opened as (for messages).
pub struct At {
    fd: OwnedFd,
    path: PathBuf,
}

impl At {
    /// Opens (with `create`, first creates with its parents) a directory the operator
    /// named; links in its own path are the operator's choice and are followed.
    pub fn open_top(path: &Path, create: bool) -> Result<Option<Self>> {
        if create {
            std::fs::create_dir_all(path).map_err(|e| Error::io("creating", path, e))?;
        }
        match rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(Self {
                fd,
                path: path.to_owned(),
            })),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(Error::io("opening", path, io(e))),
        }
    }

    /// The path of `name` in this directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Where the open directory really is, whatever path led to it.
    pub fn real_path(&self) -> Result<PathBuf> {
        let proc = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        std::fs::read_link(&proc).map_err(|e| Error::io("locating", &self.path, e))
    }

    /// Opens the subdirectory `name` without following a link; with `create`, creates it
    /// first when it is missing. `None` when it is missing and not created.
    pub fn sub(&self, name: &str, create: bool) -> Result<Option<Self>> {
        let path = self.path(name);
        let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
        let open = || rustix::fs::openat(&self.fd, name, flags, Mode::empty());
        let fd = match open() {
            Ok(fd) => fd,
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(Error::io("creating", &path, io(e))),
                }
                open().map_err(|e| self.refusal(name, e))?
            }
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(self.refusal(name, e)),
        };
        Ok(Some(Self { fd, path }))
    }

    /// A link or a non-directory where a directory belongs is refused, not followed.
    fn refusal(&self, name: &str, e: Errno) -> Error {
        let path = self.path(name);
        match e {
            Errno::LOOP | Errno::NOTDIR => Error::NotPlain {
                kind: match self.entry(name) {
                    Ok(Entry::Link(to)) => format!("a symbolic link to {to}"),
                    _ => "not a directory".to_owned(),
                },
                path,
            },
            e => Error::io("opening", &path, io(e)),
        }
    }

    /// What is at `name`, without following a link.
    pub fn entry(&self, name: &str) -> Result<Entry> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(Entry::Missing),
            Err(e) => Err(Error::io("inspecting", &self.path(name), io(e))),
            Ok(st) => Ok(match FileType::from_raw_mode(st.st_mode) {
                FileType::Symlink => {
                    let to = rustix::fs::readlinkat(&self.fd, name, Vec::new())
                        .map_err(|e| Error::io("reading the link", &self.path(name), io(e)))?;
                    Entry::Link(
                        OsStr::from_bytes(to.as_bytes())
                            .to_string_lossy()
                            .into_owned(),
                    )
                }
                FileType::Directory => Entry::Dir,
                _ => Entry::Other,
            }),
        }
    }

    /// Names in the directory (not `.` and `..`).
    pub fn names(&self) -> Result<Vec<String>> {
        let err = |e| Error::io("reading", &self.path, io(e));
        let dir = rustix::fs::Dir::read_from(&self.fd).map_err(err)?;
        let mut names = Vec::new();
        for entry in dir {
            let entry = entry.map_err(err)?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name != "." && name != ".." {
                names.push(name.to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    /// Reads the regular file `name`, at most [`MAX_READ`] bytes; `None` when missing. A
    /// link, FIFO or device there is refused (a FIFO would block the reader forever).
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(name);
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => return Err(self.refusal(name, Errno::NOTDIR)),
            Err(e) => return Err(Error::io("reading", &path, io(e))),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| Error::io("reading", &path, io(e)))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(Error::NotPlain {
                path,
                kind: "not a regular file".to_owned(),
            });
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::fs::File::from(fd), MAX_READ + 1),
            &mut bytes,
        )
        .map_err(|e| Error::io("reading", &path, e))?;
        if bytes.len() as u64 > MAX_READ {
            return Err(Error::NotPlain {
                path,
                kind: format!("larger than {MAX_READ} bytes"),
            });
        }
        Ok(Some(bytes))
    }

    fn tmp_name(name: &str) -> String {
        format!(".{name}.tmp-{}", std::process::id())
    }

    fn sync(&self) {
        // Best effort: the rename is what makes the change atomic; syncing the directory
        // makes it durable across power loss.
        let _ = rustix::fs::fsync(&self.fd);
    }

    /// Writes `bytes` to `name` through a temporary file, fsync and rename.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let tmp = Self::tmp_name(name);
        let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
        let result = (|| {
            let flags =
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = rustix::fs::openat(&self.fd, tmp.as_str(), flags, Mode::from_raw_mode(0o644))
                .map_err(io)?;
            let mut f = std::fs::File::from(fd);
            std::io::Write::write_all(&mut f, bytes)?;
            f.sync_all()?;
            rustix::fs::renameat(&self.fd, tmp.as_str(), &self.fd, name).map_err(io)
        })();
        if let Err(e) = result {
            let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
            return Err(Error::io("writing", &self.path(name), e));
        }
        self.sync();
        Ok(())
    }

    /// Points the link `name` at `target` through a temporary link and rename.
    pub fn symlink_atomic(&self, target: &str, name: &str) -> Result<()> {
        let tmp = Self::tmp_name(name);
        let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
        let result = rustix::fs::symlinkat(target, &self.fd, tmp.as_str())
            .and_then(|()| rustix::fs::renameat(&self.fd, tmp.as_str(), &self.fd, name));
        if let Err(e) = result {
            let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
            return Err(Error::io("creating the GC root", &self.path(name), io(e)));
        }
        self.sync();
        Ok(())
    }

    /// Removes the file or link `name` (a link itself, never what it points at),
    /// durably; one that is already gone is fine.
    pub fn remove(&self, name: &str) -> Result<()> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) => {
                self.sync();
                Ok(())
            }
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(Error::io("removing", &self.path(name), io(e))),
        }
    }

    /// An exclusive lock on the file `name` (created when missing), held until dropped.
    /// Where it cannot be opened for writing (a read-only state directory, another
    /// user's), it is taken through a read-only descriptor or not at all, and the
    /// guard says the directory is not writable: the caller then only reads.
    pub fn lock(&self, name: &str) -> Result<Lock> {
        let path = self.path(name);
        let base = OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let rw = base | OFlags::RDWR | OFlags::CREATE;
        let (fd, writable) =
            match rustix::fs::openat(&self.fd, name, rw, Mode::from_raw_mode(0o644)) {
                Ok(fd) => (Some(fd), true),
                Err(Errno::ROFS | Errno::ACCESS | Errno::PERM) => {
                    match rustix::fs::openat(&self.fd, name, base | OFlags::RDONLY, Mode::empty()) {
                        Ok(fd) => (Some(fd), false),
                        Err(Errno::NOENT | Errno::ACCESS) => (None, false),
                        Err(Errno::LOOP) => return Err(self.refusal(name, Errno::NOTDIR)),
                        Err(e) => return Err(Error::io("opening the lock", &path, io(e))),
                    }
                }
                Err(Errno::LOOP) => return Err(self.refusal(name, Errno::NOTDIR)),
                Err(e) => return Err(Error::io("opening the lock", &path, io(e))),
            };
        if let Some(fd) = &fd {
            rustix::fs::flock(fd, FlockOperation::LockExclusive)
                .map_err(|e| Error::io("locking", &path, io(e)))?;
        }
        Ok(Lock {
            _fd: fd,
            writable,
            path,
        })
    }
}

/// An exclusive lock on a target's records. Serialises writers of one target across
/// processes; other targets are not blocked.
pub struct Lock {
    _fd: Option<OwnedFd>,
    /// Whether the directory can be written (else only reading is possible).
    pub writable: bool,
    path: PathBuf,
}

impl Lock {
    /// Fails unless the directory can be written.
    pub fn require_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::Permission {
                path: self.path.parent().map(Path::to_owned).unwrap_or_default(),
            })
        }
    }
}
