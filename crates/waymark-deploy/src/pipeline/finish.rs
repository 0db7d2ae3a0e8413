//! Gate 5's end: the marks on the target and the build host, the record kept here and
//! the release tag, for a deploy under way and for one that was interrupted after its
//! commit ([`Unfinished`]), which the next deploy finishes the same way.
//!
//! On the target, one marker at a time for an agent's directory (the deploy's own
//! confirmation, its mark gate, or a later deploy finishing it): each waits for a
//! confirmation shell still at work there, takes `DIR/marking`, and leaves `DIR/marked`
//! once the mark is made, so a closure is never marked twice for one commit.

use std::path::PathBuf;

use super::{Deployer, Run, Stop, stop};
use crate::error::{MarkError, StateError, StopCause};
use crate::events::HostResult;
use crate::protocol::{self, MarkReply, script};
use crate::ssh::Endpoint;
use crate::state::write_atomic;
use crate::unfinished::{Unfinished, journal_dir, read_journals, same_deploy};
use waymark_evidence::Gate;
use waymark_known_good::Record;

/// The evidence a target's mark is made with.
pub(super) enum MarkWith {
    /// This, sent with the script.
    Evidence(Vec<u8>),
    /// What the agent's directory keeps (a deploy interrupted after its commit).
    AgentsEvidence,
    /// None: the mark is made already, only its record is read.
    Nothing,
}

/// How the target's mark came to be.
pub(super) enum TargetMark {
    /// Made now, by this run.
    Made(Record),
    /// Made by the deploy that committed (its confirmation's shell, still at work when
    /// this run looked): its latest mark.
    Found(Record),
}

impl Deployer<'_> {
    /// Marks `closure` of the agent in `dir` known-good on the target
    /// (`scripts/mark_target.sh`), unless the deploy that committed it did or does:
    /// waits (at most 30 s) for a confirmation shell still running there, then marks
    /// under `DIR/marking`, with the evidence `how` says.
    pub(super) fn mark_on_target(
        &self,
        run: &mut Run,
        dir: &str,
        how: &MarkWith,
        closure: &str,
        rev: &str,
    ) -> Result<TargetMark, MarkError> {
        let (name, input) = match how {
            MarkWith::Evidence(evidence) => ("stdin", Some(evidence.as_slice())),
            MarkWith::AgentsEvidence => ("file", None),
            MarkWith::Nothing => ("none", None),
        };
        let script = script(
            &[protocol::MARK_TARGET],
            &[
                ("dir", dir),
                ("how", name),
                ("waymark", &self.settings.remote_waymark),
                ("target", &run.name),
                ("closure", closure),
                ("rev", rev),
            ],
        );
        let target = run.target.clone();
        let r = self.remote_with_input(run, &target, &script, input);
        if r.code != 0 {
            return Err(MarkError::Failed(r.last_error()));
        }
        let unreadable = |e: serde_json::Error| MarkError::Unreadable(e.to_string());
        match MarkReply::parse(&r.stdout) {
            MarkReply::Busy => Err(MarkError::Busy),
            MarkReply::Found(record) => record.map(TargetMark::Found).map_err(unreadable),
            MarkReply::Made(record) => record
                .map(|r| match how {
                    MarkWith::Nothing => TargetMark::Found(r),
                    _ => TargetMark::Made(r),
                })
                .map_err(unreadable),
        }
    }

    /// Marks `record`'s closure on the build host, with the same evidence
    /// (`scripts/mark_builder.sh`): in its build session, or a new one. Whether it was
    /// marked there; a failure is a note (the target's mark stands).
    pub(super) fn mark_on_builder(&self, run: &mut Run, host: &Endpoint, record: &Record) -> bool {
        let evidence = serde_json::to_string(&record.evidence).expect("serializable");
        let r = self.run_on_build_host(
            host,
            &script(
                &[protocol::MARK_BUILDER],
                &[
                    ("waymark", &self.settings.remote_waymark),
                    ("target", &run.name),
                    ("closure", &record.closure),
                    ("rev", &record.rev),
                    ("evidence", &evidence),
                ],
            ),
        );
        if r.code != 0 {
            let said = protocol::mark_builder_said(&r.stdout).unwrap_or_else(|| r.last_error());
            self.emit_note(
                run,
                format!(
                    "marking on build host {} failed: {said}; the target's mark stands",
                    host.name,
                ),
            );
        }
        r.code == 0
    }

    /// Finishes what a deploy of this host interrupted after its commit left undone
    /// ([`Unfinished`]): the target's mark (with the evidence that deploy left there),
    /// the build host's, this machine's record and the release tag. The target's latest
    /// mark once done.
    pub(super) fn finish_interrupted(
        &self,
        run: &mut Run,
        left: Unfinished,
        builder: Option<&Endpoint>,
    ) -> Result<Record, Stop> {
        let closure = left.closure().to_owned();
        let name = run.name.clone();
        let needs_human = |why: StateError| {
            stop(
                HostResult::NeedsHuman,
                StopCause::Unfinished {
                    host: name.clone(),
                    closure: closure.clone(),
                    why,
                },
            )
        };
        let record = match left {
            Unfinished::Committed {
                dir,
                evidence,
                mark_target,
            } => {
                let how = if mark_target {
                    MarkWith::AgentsEvidence
                } else {
                    MarkWith::Nothing
                };
                let rev = evidence.rev.clone().unwrap_or_default();
                match self
                    .mark_on_target(run, &dir, &how, &closure, &rev)
                    .map_err(|why| {
                        stop(
                            HostResult::Failed,
                            StopCause::OthersCommit {
                                host: name.clone(),
                                closure: closure.clone(),
                                why,
                            },
                        )
                    })? {
                    TargetMark::Made(record) => record,
                    // Its own deploy marked it: the rest is that deploy's, unless it is
                    // this machine's and was interrupted since.
                    TargetMark::Found(record) => {
                        let ours = read_journals(&self.settings.records_dir, &run.name)
                            .iter()
                            .any(|j| same_deploy(&j.evidence, &record.evidence));
                        if !ours || self.record_path(&record).exists() {
                            return Ok(record);
                        }
                        record
                    }
                }
            }
            Unfinished::Marked { record } => *record,
        };
        let mut wheres = vec![run.name.clone()];
        if let Some(host) = builder
            && self.mark_on_builder(run, host, &record)
        {
            wheres.push(host.name.clone());
        }
        let deployed = record.evidence.gates.iter().any(|g| g.gate == Gate::Build);
        self.record_here(run, &record, deployed)
            .map_err(|e| needs_human(StateError::Record(e)))?;
        self.emit_note(
            run,
            format!(
                "finished the deploy of {closure} that was interrupted after its commit: marked {} on {}",
                record.mark,
                wheres.join(" and ")
            ),
        );
        Ok(record)
    }

    /// Where this machine keeps the record of `record`'s mark.
    pub(super) fn record_path(&self, record: &Record) -> PathBuf {
        self.settings
            .records_dir
            .join(&record.target)
            .join(format!("{}.json", record.mark))
    }

    /// Gate 5's end here, once the target is marked: the record kept on this machine,
    /// the deploy's journals of it removed, and the release tag where the host has them
    /// (`deployed`: a rollback redeploys an old release, and release branches only move
    /// forward).
    pub(super) fn record_here(
        &self,
        run: &mut Run,
        record: &Record,
        deployed: bool,
    ) -> std::io::Result<()> {
        write_atomic(
            &self.record_path(record),
            &serde_json::to_vec_pretty(record).expect("serializable"),
        )?;
        for journal in read_journals(&self.settings.records_dir, &run.name) {
            if same_deploy(&journal.evidence, &record.evidence) {
                let _ = std::fs::remove_file(&journal.path);
            }
        }
        if run.host.tag_releases && deployed {
            match &self.settings.release_repo {
                Some(repo) => match waymark_release::Releases::open(repo).and_then(|r| {
                    r.tag(&waymark_release::TagRequest {
                        target: run.name.clone(),
                        rev: record.rev.clone(),
                        mark: record.clone(),
                        tagger: None,
                    })
                }) {
                    Ok(t) => run.release_tag = Some(t.release.tag),
                    Err(e) => self.emit_note(run, format!("release tag not created: {e}")),
                },
                None => self.emit_note(
                    run,
                    "release tag not created: the flake is not a local git checkout".into(),
                ),
            }
        }
        Ok(())
    }

    /// This run's journal: its evidence, kept until its record is written, so a later
    /// deploy can finish it if this one is stopped after the target commits.
    fn journal_path(&self, host: &str) -> PathBuf {
        journal_dir(&self.settings.records_dir, host).join(format!("{}.json", self.settings.run_id))
    }

    /// Keeps this run's journal ([`Deployer::journal_path`]). Failing to keep it only
    /// loses that help, so it is a note.
    pub(super) fn keep_journal(&self, run: &mut Run, evidence: &[u8]) {
        let path = self.journal_path(&run.name);
        if let Err(e) = write_atomic(&path, evidence) {
            self.emit_note(
                run,
                format!(
                    "could not keep this deploy's journal {}: {e}",
                    path.display()
                ),
            );
        }
    }

    /// Removes this run's journal once the host is known not to have committed its
    /// closure (restored, or never touched): there is nothing to finish.
    pub(super) fn drop_journal(&self, host: &str) {
        let _ = std::fs::remove_file(self.journal_path(host));
    }
}

/// Gate 5's end (the mark gate): the marks and the record of a deploy that committed.
impl Deployer<'_> {
    pub(super) fn mark(
        &self,
        run: &mut Run,
        dir: &str,
        closure: &str,
        build_at: Option<&super::BuildAt>,
        marked_there: Option<Record>,
        new: &waymark_diff::Closure,
    ) -> Result<((), String), Stop> {
        if waymark_fault::at("pause-before-record") {
            std::thread::sleep(std::time::Duration::from_secs(3));
        }
        let name = run.name.clone();
        let committed = |why: StateError| {
            stop(
                HostResult::NeedsHuman,
                StopCause::Committed {
                    host: name.clone(),
                    closure: closure.to_owned(),
                    why,
                },
            )
        };
        // The target's mark was made over the confirmation's connection; made here only
        // if that did not happen (then under the agent directory's marking lock: the
        // confirmation's shell may still be at work if only its connection was lost).
        let record = if let Some(record) = marked_there {
            record
        } else {
            let evidence = Self::evidence(run, closure, None);
            let rev = run.rev.clone().unwrap_or_default();
            match self
                .mark_on_target(run, dir, &MarkWith::Evidence(evidence), closure, &rev)
                .map_err(|e| committed(e.into()))?
            {
                TargetMark::Made(record) | TargetMark::Found(record) => record,
            }
        };
        run.mark = Some(record.mark.clone());
        let mut wheres = vec![run.name.clone()];
        if let Some(super::BuildAt::Builder { host, .. }) = build_at
            && self.mark_on_builder(run, host, &record)
        {
            wheres.push(host.name.clone());
        }
        self.record_here(run, &record, build_at.is_some())
            .map_err(|e| committed(StateError::Record(e)))?;
        if new.root == closure {
            self.keep_closure(&run.name, new);
        }
        Ok((
            (),
            format!("marked {} on {}", record.mark, wheres.join(" and ")),
        ))
    }

    /// Keeps the closure `host` now runs, committed, for its next deploy's diff: replaced
    /// whole (a rename), or not at all.
    fn keep_closure(&self, host: &str, closure: &waymark_diff::Closure) {
        // It only saves reading the closure on the target: a failure costs nothing else.
        let _ = write_atomic(
            &self.settings.closures_dir.join(format!("{host}.json")),
            &serde_json::to_vec(closure).expect("serializable"),
        );
    }
}
