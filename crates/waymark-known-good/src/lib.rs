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

mod check;
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
pub use waymark_fleet::TARGET_RULE;

use fsutil::{At, Entry};

/// Suffix of the file that announces a change of a mark's roots before it happens, and
/// names the store paths the roots point at. Repair only ever removes a root named by
/// one of these and pointing where it says: roots it cannot account for may belong to
/// another state directory sharing the roots directory, and stay.
const INTENT: &str = ".intent";

/// Every mark name a target was ever given, one per line with its sequence number
/// (`<seq> <mark>`): names and numbers never come back, even after a prune or an unmark
/// (issue 22: a reused name collided with an existing release tag).
const ISSUED: &str = ".issued";

/// The lock file of a target's records.
const LOCK: &str = ".lock";

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
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

impl KnownGood {
    /// Marks in `dirs`, checked against `store`.
    pub fn new(dirs: Dirs, store: Store) -> Self {
        Self { dirs, store }
    }

    /// The directory of a target's records, opened without following links below the
    /// state directory; `None` when it does not exist and `create` is false.
    fn records_at(&self, target: &str, create: bool) -> Result<Option<At>> {
        let Some(state) = At::open_top(&self.dirs.state, create)? else {
            return Ok(None);
        };
        match state.sub("known-good", create)? {
            Some(kg) => kg.sub(target, create),
            None => Ok(None),
        }
    }

    /// The directory of a target's GC roots, opened without following links below the
    /// roots directory, and checked to really be inside the store's GC roots.
    fn roots_at(&self, target: &str, create: bool) -> Result<Option<At>> {
        self.check_roots_dir()?;
        let Some(top) = At::open_top(&self.dirs.roots, create)? else {
            return Ok(None);
        };
        let Some(dir) = top.sub(target, create)? else {
            return Ok(None);
        };
        // Wherever the path led, the links must be where the collector looks: a root
        // outside it is an error, never a success.
        let real = dir.real_path()?;
        let gcroots = canonical(&self.dirs.gcroots);
        if !real.starts_with(&gcroots) {
            return Err(Error::RootsOutsideGcroots {
                roots: real,
                gcroots: self.dirs.gcroots.clone(),
            });
        }
        Ok(Some(dir))
    }

    fn intent(mark: &str) -> String {
        format!(".{mark}{INTENT}")
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
        if canonical(&self.dirs.roots).starts_with(canonical(&self.dirs.gcroots)) {
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
    /// support the mark, roots the GC would not see, a link or foreign file where the
    /// mark's files go, no permission.
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
        let roots = self.roots_at(&req.target, true)?.expect("created");
        let records = self.records_at(&req.target, true)?.expect("created");
        let lock = records.lock(LOCK)?;
        lock.require_writable()?;
        let existing = self.read_records(&records, &req.target)?;
        let issued = read_issued(&records)?;
        let now = SystemTime::now();
        let base = mark_name(now, &rev);
        let mut mark = base.clone();
        for n in 2.. {
            let taken = existing.iter().any(|r| r.mark == mark)
                || issued.iter().any(|(_, m)| *m == mark)
                || roots.entry(&mark)? != Entry::Missing
                || roots.entry(&format!("{mark}.drv"))? != Entry::Missing;
            if !taken {
                break;
            }
            mark = format!("{base}-{n}");
        }
        let seq = existing
            .iter()
            .map(|r| r.seq)
            .chain(issued.iter().map(|(s, _)| *s))
            .max()
            .unwrap_or(0)
            + 1;
        // The name is spent before anything else is written: a crash from here on can
        // leave a gap in the names, never a reuse.
        let mut log = issued
            .iter()
            .map(|(s, m)| format!("{s} {m}\n"))
            .collect::<String>();
        log.push_str(&format!("{seq} {mark}\n"));
        records.write_atomic(ISSUED, log.as_bytes())?;
        let drv_name = format!("{mark}.drv");
        // Announce, then roots: from here on the closure survives a GC whatever happens
        // next, and a crash leaves roots that repair knows to be ours.
        let intent = format!("mark\n{}\n{}\n", req.closure, drv.as_deref().unwrap_or(""));
        records.write_atomic(&Self::intent(&mark), intent.as_bytes())?;
        roots.symlink_atomic(&req.closure, &mark)?;
        if let Some(d) = &drv {
            roots.symlink_atomic(d, &drv_name)?;
        }
        waymark_fault::crash_at("after-root");
        let record = Record {
            schema: SCHEMA.to_owned(),
            target: req.target.clone(),
            mark: mark.clone(),
            seq,
            closure: req.closure.clone(),
            drv: drv.clone(),
            rev,
            marked_at: rfc3339(now),
            evidence: req.evidence.clone(),
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            roots: Roots {
                closure: roots.path(&mark).display().to_string(),
                drv: drv
                    .as_ref()
                    .map(|_| roots.path(&drv_name).display().to_string()),
            },
        };
        let json = serde_json::to_vec_pretty(&record).expect("a record serialises");
        records.write_atomic(&format!("{mark}.json"), &json)?;
        records.remove(&Self::intent(&mark))?;
        drop(lock);
        Ok(record)
    }

    /// Records of a target, oldest first, without repairs or locking.
    fn read_records(&self, dir: &At, target: &str) -> Result<Vec<Record>> {
        let mut records = Vec::new();
        for name in dir.names()? {
            if name.starts_with('.') || Path::new(&name).extension().is_none_or(|e| e != "json") {
                continue;
            }
            let path = dir.path(&name);
            // Removed by a concurrent prune or unmark between listing and reading.
            let Some(bytes) = dir.read(&name)? else {
                continue;
            };
            let record: Record =
                serde_json::from_slice(&bytes).map_err(|source| Error::BadRecord {
                    path: path.clone(),
                    source,
                })?;
            let stem = name.trim_end_matches(".json");
            if let Some(reason) =
                check::record_problem(&record, stem, target, self.store.store_dir())
            {
                return Err(Error::TamperedRecord { path, reason });
            }
            records.push(record);
        }
        records.sort_by_key(|r: &Record| r.seq);
        Ok(records)
    }

    /// Targets that have a records directory.
    pub fn targets(&self) -> Result<Vec<String>> {
        let Some(state) = At::open_top(&self.dirs.state, false)? else {
            return Ok(Vec::new());
        };
        let Some(kg) = state.sub("known-good", false)? else {
            return Ok(Vec::new());
        };
        let mut targets = Vec::new();
        for name in kg.names()? {
            // A link among them is listed, so that opening it is refused loudly.
            if valid_target(&name) && matches!(kg.entry(&name)?, Entry::Dir | Entry::Link(_)) {
                targets.push(name);
            }
        }
        targets.sort();
        Ok(targets)
    }

    /// The records directory of a target that has marks.
    fn known_target(&self, target: &str) -> Result<At> {
        Self::check_target(target)?;
        if let Some(dir) = self.records_at(target, false)? {
            return Ok(dir);
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

    /// Lists the marks of one target or all, repairing first what a crash left (when
    /// the state directory can be written; else only reporting it).
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
            let records = self.known_target(&t)?;
            let lock = records.lock(LOCK)?;
            listing
                .repairs
                .extend(self.repair(&records, &t, lock.writable)?);
            listing.marks.extend(self.read_records(&records, &t)?);
        }
        Ok(listing)
    }

    /// One mark, or the latest, as recorded (not checked against its roots: see
    /// [`KnownGood::latest`]).
    pub fn get(&self, target: &str, mark: Option<&str>) -> Result<Record> {
        let dir = self.known_target(target)?;
        let records = self.read_records(&dir, target)?;
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

    /// The latest mark: the closure a rollback redeploys, checked against its GC root
    /// and the store.
    pub fn latest(&self, target: &str) -> Result<Record> {
        self.usable(self.get(target, None)?)
    }

    /// A mark checked against its GC root and the store: what a rollback to it may
    /// redeploy.
    pub fn checked(&self, target: &str, mark: &str) -> Result<Record> {
        self.usable(self.get(target, Some(mark))?)
    }

    /// A record whose root exists, points at its closure, and whose closure the store
    /// still holds: what rollback can redeploy. Anything else is reported, not acted on.
    fn usable(&self, r: Record) -> Result<Record> {
        let roots = self.roots_at(&r.target, false)?;
        match self.closure_finding(roots.as_ref(), &r)? {
            None => Ok(r),
            Some(f) => Err(f.into_error(&r)),
        }
    }

    /// The mark before the latest.
    pub fn previous(&self, target: &str) -> Result<Record> {
        let dir = self.known_target(target)?;
        let records = self.read_records(&dir, target)?;
        let r = records
            .len()
            .checked_sub(2)
            .map(|i| records[i].clone())
            .ok_or_else(|| Error::NoPrevious {
                target: target.to_owned(),
            })?;
        self.usable(r)
    }

    fn remove_mark(&self, records: &At, r: &Record) -> Result<()> {
        let roots = self.roots_at(&r.target, false)?;
        let drv_name = format!("{}.drv", r.mark);
        // Only links are ours to remove: refuse before changing anything.
        if let Some(roots) = &roots {
            for name in [r.mark.as_str(), drv_name.as_str()] {
                if matches!(roots.entry(name)?, Entry::Dir | Entry::Other) {
                    return Err(Error::NotPlain {
                        path: roots.path(name),
                        kind: "not a GC root link".to_owned(),
                    });
                }
            }
        }
        // Announce, record, roots: a crash in between leaves roots that repair knows to
        // remove, never a record whose closure the GC may take.
        let intent = format!(
            "unmark\n{}\n{}\n",
            r.closure,
            r.drv.as_deref().unwrap_or("")
        );
        records.write_atomic(&Self::intent(&r.mark), intent.as_bytes())?;
        records.remove(&format!("{}.json", r.mark))?;
        waymark_fault::crash_at("after-unrecord");
        if let Some(roots) = &roots {
            roots.remove(&r.mark)?;
            roots.remove(&drv_name)?;
        }
        records.remove(&Self::intent(&r.mark))
    }

    /// Removes all but the `keep` newest marks and those made within `keep_since`;
    /// never the latest. Returns what it removed.
    pub fn prune(
        &self,
        target: &str,
        keep: usize,
        keep_since: Option<Duration>,
    ) -> Result<Vec<Record>> {
        let records = self.known_target(target)?;
        let lock = records.lock(LOCK)?;
        lock.require_writable()?;
        let all = self.read_records(&records, target)?;
        let gone: Vec<Record> = to_prune(&all, keep, keep_since, SystemTime::now())
            .into_iter()
            .cloned()
            .collect();
        for r in &gone {
            self.remove_mark(&records, r)?;
        }
        Ok(gone)
    }

    /// Removes one mark; the latest only with `force`.
    pub fn unmark(&self, target: &str, mark: &str, force: bool) -> Result<Record> {
        let records = self.known_target(target)?;
        let lock = records.lock(LOCK)?;
        lock.require_writable()?;
        let all = self.read_records(&records, target)?;
        let r = all
            .iter()
            .find(|r| r.mark == mark)
            .ok_or_else(|| Error::UnknownMark {
                target: target.to_owned(),
                mark: mark.to_owned(),
            })?;
        if all.last().is_some_and(|l| l.mark == mark) && !force {
            return Err(Error::RefuseLatest {
                target: target.to_owned(),
                mark: mark.to_owned(),
            });
        }
        self.remove_mark(&records, r)?;
        Ok(r.clone())
    }
}

/// A path with its existing part canonicalised (the rest may not exist yet).
fn canonical(p: &Path) -> PathBuf {
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
}

/// The names a target was ever given, with their sequence numbers.
fn read_issued(records: &At) -> Result<Vec<(u64, String)>> {
    let Some(bytes) = records.read(ISSUED)? else {
        return Ok(Vec::new());
    };
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| {
            let (seq, mark) = l.split_once(' ')?;
            Some((seq.parse().ok()?, mark.to_owned()))
        })
        .filter(|(_, m)| valid_mark(m))
        .collect())
}
