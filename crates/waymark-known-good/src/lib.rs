//! Known-good marks: a closure that passed every gate, pinned for a target with a GC root
//! (and one for its derivation, so a later structural diff still has it) and a record of
//! the evidence. The latest mark is what a rollback redeploys.
//!
//! Layout: roots are links `<roots>/<target>/<mark>` (and `<mark>.drv`) inside the store's
//! GC roots directory, where `nix store gc` finds them; records are
//! `<state>/known-good/<target>/<mark>.json`. Every change is a rename under a per-target
//! lock. A mark writes its roots before its record and an unmark removes its record
//! before its roots, so a crash can only leave a root without a record, which [`KnownGood::list`]
//! removes and reports: never a record without its root.
//!
//! # Example
//! ```no_run
//! use waymark_known_good::{Dirs, KnownGood};
//! use waymark_store::Store;
//!
//! let store = Store::from_url(None)?;
//! let kg = KnownGood::new(Dirs::default_for(&store), store);
//! let latest = kg.latest("web1")?;
//! println!("rollback target: {}", latest.closure);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod fsutil;
mod record;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use waymark_evidence::Evidence;
use waymark_store::Store;

pub use error::{Error, Result};
pub use record::{
    Record, Roots, SCHEMA, mark_name, normalize_rev, rfc3339, to_prune, valid_target,
};

use fsutil::{Lock, create_dir, remove, symlink_atomic, write_atomic};

/// Where marks live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    /// Records: `<state>/known-good/<target>/<mark>.json`.
    pub state: PathBuf,
    /// GC root links: `<roots>/<target>/<mark>`.
    pub roots: PathBuf,
    /// The store's GC roots directory, which `roots` must be inside.
    pub gcroots: PathBuf,
}

impl Dirs {
    /// The defaults: records in `/var/lib/waymark`, roots in the store's
    /// `gcroots/waymark` (`/nix/var/nix/gcroots/waymark`, following `NIX_STATE_DIR`).
    pub fn default_for(store: &Store) -> Self {
        let gcroots = gcroots_of(store);
        Self {
            state: PathBuf::from("/var/lib/waymark"),
            roots: gcroots.join("waymark"),
            gcroots,
        }
    }
}

/// The GC roots directory of a store on this machine.
pub fn gcroots_of(store: &Store) -> PathBuf {
    match store {
        Store::Local(l) => l.db.parent().and_then(Path::parent).map_or_else(
            || PathBuf::from("/nix/var/nix/gcroots"),
            |state| state.join("gcroots"),
        ),
        Store::Remote { .. } => PathBuf::from("/nix/var/nix/gcroots"),
    }
}

/// What to mark.
#[derive(Debug, Clone)]
pub struct MarkRequest {
    /// The target (host).
    pub target: String,
    /// The closure's store path.
    pub closure: String,
    /// The commit it was built from.
    pub rev: String,
    /// The evidence that it passed the gates.
    pub evidence: Evidence,
}

/// Something `list` found wrong and what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Repair {
    /// The target.
    pub target: String,
    /// The mark concerned.
    pub mark: String,
    /// What was found and done.
    pub action: String,
    /// True when it could not be fixed (the closure is gone from the store).
    pub broken: bool,
}

/// Marks of all targets or one, after repairs.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// Records, by target then oldest first.
    pub marks: Vec<Record>,
    /// What was repaired (or could not be).
    pub repairs: Vec<Repair>,
}

/// Known-good marks in one state directory, for one store.
pub struct KnownGood {
    dirs: Dirs,
    store: Store,
}

/// Test hook: `WAYMARK_FAULT=<point>` aborts the process there, as a crash would.
fn fault_point(point: &str) {
    if std::env::var("WAYMARK_FAULT").is_ok_and(|f| f == point) {
        std::process::abort();
    }
}

impl KnownGood {
    /// Marks in `dirs`, checked against `store`.
    pub fn new(dirs: Dirs, store: Store) -> Self {
        Self { dirs, store }
    }

    fn records_dir(&self, target: &str) -> PathBuf {
        self.dirs.state.join("known-good").join(target)
    }

    fn roots_dir(&self, target: &str) -> PathBuf {
        self.dirs.roots.join(target)
    }

    fn check_target(target: &str) -> Result<()> {
        if valid_target(target) {
            Ok(())
        } else {
            Err(Error::BadTarget(target.to_owned()))
        }
    }

    fn is_valid(&self, path: &str) -> Result<bool> {
        waymark_store::path_entry(&self.store, path)
            .map(|e| e.is_some())
            .map_err(|source| Error::Store {
                path: path.to_owned(),
                source,
            })
    }

    /// The roots directory must be where the garbage collector looks.
    fn check_roots_dir(&self) -> Result<()> {
        let canon = |p: &Path| {
            // The roots directory may not exist yet: canonicalise its nearest existing parent.
            let mut existing = p.to_path_buf();
            let mut rest = Vec::new();
            while !existing.exists() {
                match (
                    existing.file_name().map(ToOwned::to_owned),
                    existing.parent(),
                ) {
                    (Some(name), Some(parent)) => {
                        rest.push(name);
                        existing = parent.to_path_buf();
                    }
                    _ => break,
                }
            }
            let mut c = existing.canonicalize().unwrap_or(existing);
            c.extend(rest.into_iter().rev());
            c
        };
        if canon(&self.dirs.roots).starts_with(canon(&self.dirs.gcroots)) {
            Ok(())
        } else {
            Err(Error::RootsOutsideGcroots {
                roots: self.dirs.roots.clone(),
                gcroots: self.dirs.gcroots.clone(),
            })
        }
    }

    /// Pins `req.closure` as known-good for `req.target`.
    ///
    /// # Errors
    /// Bad target or commit, a closure the store does not hold, evidence that does not
    /// support the mark, roots the GC would not see, no permission.
    pub fn mark(&self, req: &MarkRequest) -> Result<Record> {
        Self::check_target(&req.target)?;
        let rev = normalize_rev(&req.rev).ok_or_else(|| Error::BadRev(req.rev.clone()))?;
        if Path::new(&req.closure)
            .extension()
            .is_some_and(|e| e == "drv")
        {
            return Err(Error::IsDerivation {
                path: req.closure.clone(),
            });
        }
        let entry = waymark_store::path_entry(&self.store, &req.closure)
            .map_err(|source| Error::Store {
                path: req.closure.clone(),
                source,
            })?
            .ok_or_else(|| Error::NotInStore {
                path: req.closure.clone(),
            })?;
        req.evidence.check_for_mark(&req.target, &req.closure)?;
        self.check_roots_dir()?;
        let drv = match entry.deriver {
            Some(d) if self.is_valid(&d)? => Some(d),
            _ => None,
        };
        let (records, roots) = (self.records_dir(&req.target), self.roots_dir(&req.target));
        create_dir(&roots)?;
        create_dir(&records)?;
        let _lock = Lock::acquire(&records.join(".lock"))?;
        let existing = self.read_records(&req.target)?;
        let now = SystemTime::now();
        let base = mark_name(now, &rev);
        let mut mark = base.clone();
        for n in 2.. {
            if !existing.iter().any(|r| r.mark == mark) && !roots.join(&mark).exists() {
                break;
            }
            mark = format!("{base}-{n}");
        }
        let root = roots.join(&mark);
        let drv_root = roots.join(format!("{mark}.drv"));
        // Roots first: from here on the closure survives a GC whatever happens next.
        symlink_atomic(&req.closure, &root)?;
        if let Some(d) = &drv {
            symlink_atomic(d, &drv_root)?;
        }
        fault_point("after-root");
        let record = Record {
            schema: SCHEMA.to_owned(),
            target: req.target.clone(),
            mark: mark.clone(),
            seq: existing.iter().map(|r| r.seq).max().unwrap_or(0) + 1,
            closure: req.closure.clone(),
            drv: drv.clone(),
            rev,
            marked_at: rfc3339(now),
            evidence: req.evidence.clone(),
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            roots: Roots {
                closure: root.display().to_string(),
                drv: drv.as_ref().map(|_| drv_root.display().to_string()),
            },
        };
        let json = serde_json::to_vec_pretty(&record).expect("a record serialises");
        write_atomic(&records.join(format!("{mark}.json")), &json)?;
        Ok(record)
    }

    /// Records of a target, oldest first, without repairs or locking.
    fn read_records(&self, target: &str) -> Result<Vec<Record>> {
        let dir = self.records_dir(target);
        let mut records = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(records),
            Err(e) => return Err(Error::io("reading", &dir, e)),
        };
        for entry in entries {
            let path = entry.map_err(|e| Error::io("reading", &dir, e))?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') || path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| Error::io("reading", &path, e))?;
            records.push(
                serde_json::from_slice(&bytes).map_err(|source| Error::BadRecord {
                    path: path.clone(),
                    source,
                })?,
            );
        }
        records.sort_by_key(|r: &Record| r.seq);
        Ok(records)
    }

    /// Targets that have a records directory.
    pub fn targets(&self) -> Result<Vec<String>> {
        let dir = self.dirs.state.join("known-good");
        let mut targets: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(std::result::Result::ok)
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|t| valid_target(t))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io("reading", &dir, e)),
        };
        targets.sort();
        Ok(targets)
    }

    fn known_target(&self, target: &str) -> Result<()> {
        Self::check_target(target)?;
        if self.records_dir(target).is_dir() {
            return Ok(());
        }
        let known = self.targets()?;
        Err(Error::UnknownTarget {
            target: target.to_owned(),
            known: if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            },
        })
    }

    /// Repairs what a crash can leave, under the target's lock: roots without a record
    /// (an unfinished mark or unmark) are removed; a record whose root is missing gets it
    /// back while the store still holds the closure, and is reported broken otherwise.
    fn repair(&self, target: &str) -> Result<Vec<Repair>> {
        let records = self.read_records(target)?;
        let roots = self.roots_dir(target);
        let mut repairs = Vec::new();
        let mut report = |mark: &str, action: String, broken: bool| {
            repairs.push(Repair {
                target: target.to_owned(),
                mark: mark.to_owned(),
                action,
                broken,
            });
        };
        if let Ok(entries) = std::fs::read_dir(&roots) {
            for entry in entries.filter_map(std::result::Result::ok) {
                let name = entry.file_name().to_string_lossy().into_owned();
                let mark = name.strip_suffix(".drv").unwrap_or(&name);
                if name.starts_with('.') {
                    remove(&entry.path())?; // a temporary link of an interrupted rename
                } else if !records.iter().any(|r| r.mark == mark) {
                    remove(&entry.path())?;
                    report(
                        mark,
                        format!(
                            "removed the GC root {name}: its mark was never recorded (interrupted mark or unmark)"
                        ),
                        false,
                    );
                }
            }
        }
        for r in &records {
            let mut wanted = vec![(PathBuf::from(&r.roots.closure), r.closure.clone())];
            if let (Some(link), Some(drv)) = (&r.roots.drv, &r.drv) {
                wanted.push((PathBuf::from(link), drv.clone()));
            }
            for (link, target_path) in wanted {
                if std::fs::symlink_metadata(&link).is_ok() {
                    continue;
                }
                if self.is_valid(&target_path)? {
                    create_dir(link.parent().unwrap_or(Path::new("/")))?;
                    symlink_atomic(&target_path, &link)?;
                    report(
                        &r.mark,
                        format!("re-created the missing GC root {}", link.display()),
                        false,
                    );
                } else {
                    report(
                        &r.mark,
                        format!(
                            "BROKEN: the GC root {} is missing and the store no longer holds {target_path}",
                            link.display()
                        ),
                        true,
                    );
                }
            }
        }
        Ok(repairs)
    }

    /// Lists the marks of one target or all, repairing first.
    pub fn list(&self, target: Option<&str>) -> Result<Listing> {
        let targets = match target {
            Some(t) => {
                self.known_target(t)?;
                vec![t.to_owned()]
            }
            None => self.targets()?,
        };
        let mut listing = Listing {
            marks: Vec::new(),
            repairs: Vec::new(),
        };
        for t in targets {
            let _lock = Lock::acquire(&self.records_dir(&t).join(".lock"))?;
            listing.repairs.extend(self.repair(&t)?);
            listing.marks.extend(self.read_records(&t)?);
        }
        Ok(listing)
    }

    /// One mark, or the latest.
    pub fn get(&self, target: &str, mark: Option<&str>) -> Result<Record> {
        self.known_target(target)?;
        let records = self.read_records(target)?;
        match mark {
            None => records.last().cloned().ok_or_else(|| Error::UnknownTarget {
                target: target.to_owned(),
                known: "it has none left".to_owned(),
            }),
            Some(m) => {
                records
                    .into_iter()
                    .find(|r| r.mark == m)
                    .ok_or_else(|| Error::UnknownMark {
                        target: target.to_owned(),
                        mark: m.to_owned(),
                    })
            }
        }
    }

    /// The latest mark: the closure a rollback redeploys.
    pub fn latest(&self, target: &str) -> Result<Record> {
        self.get(target, None)
    }

    /// The mark before the latest.
    pub fn previous(&self, target: &str) -> Result<Record> {
        self.known_target(target)?;
        let records = self.read_records(target)?;
        records
            .len()
            .checked_sub(2)
            .map(|i| records[i].clone())
            .ok_or_else(|| Error::NoPrevious {
                target: target.to_owned(),
            })
    }

    fn remove_mark(&self, r: &Record) -> Result<()> {
        // Record first: a crash in between leaves a root without a record (repaired by
        // `list`), never a record whose closure the GC may take.
        remove(&self.records_dir(&r.target).join(format!("{}.json", r.mark)))?;
        fault_point("after-unrecord");
        remove(Path::new(&r.roots.closure))?;
        if let Some(d) = &r.roots.drv {
            remove(Path::new(d))?;
        }
        Ok(())
    }

    /// Removes all but the `keep` newest marks and those made within `keep_since`;
    /// never the latest. Returns what it removed.
    pub fn prune(
        &self,
        target: &str,
        keep: usize,
        keep_since: Option<Duration>,
    ) -> Result<Vec<Record>> {
        self.known_target(target)?;
        let _lock = Lock::acquire(&self.records_dir(target).join(".lock"))?;
        let records = self.read_records(target)?;
        let gone: Vec<Record> = to_prune(&records, keep, keep_since, SystemTime::now())
            .into_iter()
            .cloned()
            .collect();
        for r in &gone {
            self.remove_mark(r)?;
        }
        Ok(gone)
    }

    /// Removes one mark; the latest only with `force`.
    pub fn unmark(&self, target: &str, mark: &str, force: bool) -> Result<Record> {
        self.known_target(target)?;
        let _lock = Lock::acquire(&self.records_dir(target).join(".lock"))?;
        let records = self.read_records(target)?;
        let r = records
            .iter()
            .find(|r| r.mark == mark)
            .ok_or_else(|| Error::UnknownMark {
                target: target.to_owned(),
                mark: mark.to_owned(),
            })?;
        if records.last().is_some_and(|l| l.mark == mark) && !force {
            return Err(Error::RefuseLatest {
                target: target.to_owned(),
                mark: mark.to_owned(),
            });
        }
        self.remove_mark(r)?;
        Ok(r.clone())
    }
}
