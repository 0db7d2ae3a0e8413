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
    Record, Roots, SCHEMA, mark_name, normalize_rev, rfc3339, to_prune, valid_mark, valid_target,
};

use fsutil::{Lock, create_dir, remove, symlink_atomic, write_atomic};

/// Suffix of the file that announces a change of a mark's roots before it happens. Repair
/// only ever removes roots named by one of these: roots it cannot account for may
/// belong to another state directory sharing the roots directory, and stay.
const INTENT: &str = ".intent";

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

/// Test hook: `WAYMARK_FAULT=<point>` aborts the process there, as a crash would;
/// `WAYMARK_FAULT=slow-<point>` pauses there for 300 ms (to widen a race window).
fn fault_point(point: &str) {
    match std::env::var("WAYMARK_FAULT") {
        Ok(f) if f == point => std::process::abort(),
        Ok(f) if f.strip_prefix("slow-") == Some(point) => {
            std::thread::sleep(Duration::from_millis(300));
        }
        _ => {}
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

    /// The GC root links of a mark, derived from the roots directory and a validated
    /// name, never read from a record.
    fn root_links(&self, target: &str, mark: &str) -> (PathBuf, PathBuf) {
        let dir = self.roots_dir(target);
        (dir.join(mark), dir.join(format!("{mark}.drv")))
    }

    fn intent(&self, target: &str, mark: &str) -> PathBuf {
        self.records_dir(target).join(format!(".{mark}{INTENT}"))
    }

    fn check_local(&self) -> Result<()> {
        match &self.store {
            Store::Remote { url, .. } => Err(Error::RemoteStore { url: url.clone() }),
            Store::Local(_) => Ok(()),
        }
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
        self.check_local()?;
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
        let (root, drv_root) = self.root_links(&req.target, &mark);
        // Announce, then roots: from here on the closure survives a GC whatever happens
        // next, and a crash leaves roots that repair knows to be ours.
        write_atomic(&self.intent(&req.target, &mark), b"mark\n")?;
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
        remove(&self.intent(&req.target, &mark))?;
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
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                // Removed by a concurrent prune or unmark between listing and reading.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("reading", &path, e)),
            };
            let record: Record =
                serde_json::from_slice(&bytes).map_err(|source| Error::BadRecord {
                    path: path.clone(),
                    source,
                })?;
            let stem = name.trim_end_matches(".json");
            let reason = if !valid_mark(&record.mark) {
                Some(format!("{:?} is not a mark name", record.mark))
            } else if record.mark != stem {
                Some(format!(
                    "it names mark {} but is stored as {stem}",
                    record.mark
                ))
            } else if record.target != target {
                Some(format!(
                    "it is for target {} but is stored under {target}",
                    record.target
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(Error::TamperedRecord { path, reason });
            }
            records.push(record);
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

    /// Repairs what a crash can leave, under the target's lock. An interrupted mark or
    /// unmark left an intent file: without a record its roots are removed, with one the
    /// intent is dropped. A record whose root is missing gets it back while the store
    /// still holds the closure, and is reported broken otherwise. Roots no intent or
    /// record of this state directory names are left alone.
    fn repair(&self, target: &str) -> Result<Vec<Repair>> {
        let records = self.read_records(target)?;
        let records_dir = self.records_dir(target);
        let mut repairs = Vec::new();
        let mut report = |mark: &str, action: String, broken: bool| {
            repairs.push(Repair {
                target: target.to_owned(),
                mark: mark.to_owned(),
                action,
                broken,
            });
        };
        let entries: Vec<String> = std::fs::read_dir(&records_dir)
            .map(|d| {
                d.filter_map(std::result::Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for name in entries {
            if name.contains(".tmp-") && name.starts_with('.') {
                // A temporary file of an interrupted write of this state directory
                // (writers hold the lock we hold).
                remove(&records_dir.join(&name))?;
                continue;
            }
            let Some(mark) = name.strip_prefix('.').and_then(|n| n.strip_suffix(INTENT)) else {
                continue;
            };
            if !valid_mark(mark) {
                continue;
            }
            if !records.iter().any(|r| r.mark == mark) {
                let (root, drv_root) = self.root_links(target, mark);
                remove(&root)?;
                remove(&drv_root)?;
                report(
                    mark,
                    "removed the GC roots of an interrupted mark or unmark (no record)".to_owned(),
                    false,
                );
            }
            remove(&records_dir.join(&name))?;
        }
        for r in &records {
            let (root, drv_root) = self.root_links(target, &r.mark);
            let mut wanted = vec![(root, r.closure.clone())];
            if let Some(drv) = &r.drv {
                wanted.push((drv_root, drv.clone()));
            }
            for (link, target_path) in wanted {
                if std::fs::symlink_metadata(&link).is_ok() {
                    continue;
                }
                if self.is_valid(&target_path)? {
                    create_dir(&self.roots_dir(target))?;
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
        self.check_local()?;
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
        self.usable(self.get(target, None)?)
    }

    /// A record whose closure the store still holds: what rollback can redeploy.
    fn usable(&self, r: Record) -> Result<Record> {
        if self.is_valid(&r.closure)? {
            Ok(r)
        } else {
            Err(Error::Broken {
                target: r.target,
                mark: r.mark,
                closure: r.closure,
            })
        }
    }

    /// The mark before the latest.
    pub fn previous(&self, target: &str) -> Result<Record> {
        self.known_target(target)?;
        let records = self.read_records(target)?;
        let r = records
            .len()
            .checked_sub(2)
            .map(|i| records[i].clone())
            .ok_or_else(|| Error::NoPrevious {
                target: target.to_owned(),
            })?;
        self.usable(r)
    }

    fn remove_mark(&self, r: &Record) -> Result<()> {
        // Announce, record, roots: a crash in between leaves roots that repair knows to
        // remove, never a record whose closure the GC may take.
        write_atomic(&self.intent(&r.target, &r.mark), b"unmark\n")?;
        remove(&self.records_dir(&r.target).join(format!("{}.json", r.mark)))?;
        fault_point("after-unrecord");
        let (root, drv_root) = self.root_links(&r.target, &r.mark);
        remove(&root)?;
        remove(&drv_root)?;
        remove(&self.intent(&r.target, &r.mark))
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
