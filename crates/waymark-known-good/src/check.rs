//! Records checked against the roots they describe (issue 22: a record edited to name
//! another closure, or a root repointed by hand, went unnoticed), and the repair of what
//! a crash leaves, which only ever removes what a mark or unmark of this state directory
//! announced it would create.

use crate::fsutil::{At, Entry};
use crate::{Error, INTENT, KnownGood, Record, Repair, Result, valid_mark};

/// Why a record cannot be trusted at all, or `None`.
pub(crate) fn record_problem(
    record: &Record,
    stem: &str,
    target: &str,
    store_dir: &str,
) -> Option<String> {
    let store_path = |p: &str| {
        p.strip_prefix(store_dir)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|base| !base.is_empty() && !base.contains('/') && base != "..")
    };
    if !valid_mark(&record.mark) {
        Some(format!("{:?} is not a mark name", record.mark))
    } else if record.mark != stem {
        Some(format!(
            "it names mark {} but is stored as {stem:?}",
            record.mark
        ))
    } else if record.target != target {
        Some(format!(
            "it is for target {:?} but is stored under {target}",
            record.target
        ))
    } else if !store_path(&record.closure) || is_drv(&record.closure) {
        Some(format!(
            "its closure {:?} is not a path of the store {store_dir}",
            record.closure
        ))
    } else {
        record
            .drv
            .as_deref()
            .filter(|d| !store_path(d) || !is_drv(d))
            .map(|d| format!("its derivation {d:?} is not a derivation of the store {store_dir}"))
    }
}

fn is_drv(p: &str) -> bool {
    std::path::Path::new(p)
        .extension()
        .is_some_and(|e| e == "drv")
}

/// Something wrong between a record, its root and the store.
#[derive(Debug)]
pub(crate) enum Finding {
    /// The root link is missing; `valid`: the store still holds what it should pin.
    Missing {
        link: String,
        pins: String,
        valid: bool,
    },
    /// The root link points somewhere else than the record says.
    Elsewhere {
        link: String,
        found: String,
        pins: String,
    },
    /// Not a link at the root's place.
    NotALink { link: String, kind: &'static str },
    /// The root is right but the store no longer holds the closure.
    Gone { pins: String },
}

impl Finding {
    /// What is wrong, in a clause.
    fn problem(&self) -> String {
        match self {
            Self::Missing { link, pins, valid } => format!(
                "its GC root {link} is missing{}",
                if *valid {
                    String::new()
                } else {
                    format!(" and the store no longer holds {pins}")
                }
            ),
            Self::Elsewhere { link, found, pins } => {
                format!("its GC root {link} points at {found}, not at the recorded {pins}")
            }
            Self::NotALink { link, kind } => format!("{link} is {kind}, not its GC root link"),
            Self::Gone { pins } => format!("the store no longer holds {pins}"),
        }
    }

    /// What to do about it.
    fn hint(&self, target: &str) -> String {
        match self {
            Self::Missing { valid: true, .. } => format!(
                "run waymark known-good list {target} as root to re-create the root, then retry"
            ),
            Self::Missing { valid: false, .. } | Self::Gone { .. } => {
                "redeploy and mark again, or unmark it".to_owned()
            }
            Self::Elsewhere { .. } => "the record or the link was changed by hand: check which is right, then fix the link or unmark the mark".to_owned(),
            Self::NotALink { .. } => format!(
                "move it away, then run waymark known-good list {target} to re-create the root"
            ),
        }
    }

    pub(crate) fn into_error(self, r: &Record) -> Error {
        Error::Broken {
            target: r.target.clone(),
            mark: r.mark.clone(),
            problem: self.problem(),
            hint: self.hint(&r.target),
        }
    }
}

impl KnownGood {
    /// Checks the link `name` in `roots` against what it should pin.
    fn link_finding(
        &self,
        roots: Option<&At>,
        target: &str,
        name: &str,
        pins: &str,
    ) -> Result<Option<Finding>> {
        let link = roots
            .map_or_else(|| self.dirs.roots.join(target).join(name), |r| r.path(name))
            .display()
            .to_string();
        let entry = match roots {
            Some(r) => r.entry(name)?,
            None => Entry::Missing,
        };
        Ok(match entry {
            Entry::Link(found) if found == pins => (!self.is_valid(pins)?).then(|| Finding::Gone {
                pins: pins.to_owned(),
            }),
            Entry::Link(found) => Some(Finding::Elsewhere {
                link,
                found,
                pins: pins.to_owned(),
            }),
            Entry::Missing => Some(Finding::Missing {
                link,
                pins: pins.to_owned(),
                valid: self.is_valid(pins)?,
            }),
            Entry::Dir => Some(Finding::NotALink {
                link,
                kind: "a directory",
            }),
            Entry::Other => Some(Finding::NotALink {
                link,
                kind: "a file",
            }),
        })
    }

    /// Checks a record's closure root.
    pub(crate) fn closure_finding(
        &self,
        roots: Option<&At>,
        r: &Record,
    ) -> Result<Option<Finding>> {
        self.link_finding(roots, &r.target, &r.mark, &r.closure)
    }

    /// Repairs what a crash can leave, under the target's lock, when `writable`; else
    /// only reports it. An interrupted mark or unmark left an intent file: without a
    /// record, the roots it announced are removed (only links pointing where it said);
    /// with one, the intent is dropped. A record whose root is missing gets it back while
    /// the store holds the closure. Anything else that does not match is reported broken
    /// and left as it is.
    pub(crate) fn repair(&self, records: &At, target: &str, writable: bool) -> Result<Vec<Repair>> {
        let all = self.read_records(records, target)?;
        let mut repairs = Vec::new();
        let mut report = |mark: &str, action: String, broken: bool| {
            repairs.push(Repair {
                target: target.to_owned(),
                mark: mark.to_owned(),
                action,
                broken,
            });
        };
        let readonly = "the state directory is not writable, so list only reports it";
        let roots = self.roots_at(target, false)?;
        for name in records.names()? {
            if name.contains(".tmp-") && name.starts_with('.') {
                // A temporary file of an interrupted write of this state directory
                // (writers hold the lock we hold).
                if writable {
                    records.remove(&name)?;
                }
                continue;
            }
            let Some(mark) = name.strip_prefix('.').and_then(|n| n.strip_suffix(INTENT)) else {
                continue;
            };
            if !valid_mark(mark) {
                continue;
            }
            if !all.iter().any(|r| r.mark == mark) {
                let announced: Vec<String> = records
                    .read(&name)?
                    .map(|b| {
                        String::from_utf8_lossy(&b)
                            .lines()
                            .skip(1)
                            .filter(|l| !l.is_empty())
                            .map(ToOwned::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                let mut removed = 0;
                let mut kept = Vec::new();
                if let Some(roots) = &roots {
                    for link in [mark.to_owned(), format!("{mark}.drv")] {
                        match roots.entry(&link)? {
                            Entry::Missing => {}
                            // An intent of an older version names nothing: any link into
                            // the store at the mark's name is then taken as its root.
                            Entry::Link(to)
                                if announced.contains(&to)
                                    || (announced.is_empty()
                                        && to.starts_with(&format!(
                                            "{}/",
                                            self.store.store_dir()
                                        ))) =>
                            {
                                if writable {
                                    roots.remove(&link)?;
                                }
                                removed += 1;
                            }
                            _ => kept.push(roots.path(&link).display().to_string()),
                        }
                    }
                }
                if removed > 0 {
                    report(
                        mark,
                        if writable {
                            "removed the GC roots of an interrupted mark or unmark (no record)"
                                .to_owned()
                        } else {
                            format!(
                                "the GC roots of an interrupted mark or unmark remain ({readonly})"
                            )
                        },
                        false,
                    );
                }
                if !kept.is_empty() {
                    report(
                        mark,
                        format!(
                            "BROKEN: {} is not a root this mark created, so it was left alone (move it away by hand)",
                            kept.join(" and ")
                        ),
                        true,
                    );
                    // The intent stays, so a later list can finish the repair.
                    continue;
                }
            }
            if writable {
                records.remove(&name)?;
            }
        }
        for r in &all {
            let mut wanted = vec![(r.mark.clone(), r.closure.clone())];
            if let Some(drv) = &r.drv {
                wanted.push((format!("{}.drv", r.mark), drv.clone()));
            }
            for (link, pins) in wanted {
                let Some(finding) = self.link_finding(roots.as_ref(), target, &link, &pins)? else {
                    continue;
                };
                match finding {
                    Finding::Missing { valid: true, .. } if writable => {
                        let dir = self.roots_at(target, true)?.expect("created");
                        dir.symlink_atomic(&pins, &link)?;
                        report(
                            &r.mark,
                            format!(
                                "re-created the missing GC root {}",
                                dir.path(&link).display()
                            ),
                            false,
                        );
                    }
                    Finding::Missing { valid: true, .. } => report(
                        &r.mark,
                        format!("{} ({readonly})", finding.problem()),
                        false,
                    ),
                    f => report(
                        &r.mark,
                        format!("BROKEN: {} ({})", f.problem(), f.hint(target)),
                        true,
                    ),
                }
            }
        }
        Ok(repairs)
    }
}
