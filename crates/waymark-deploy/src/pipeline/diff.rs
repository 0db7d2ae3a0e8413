//! Gate 2: the closure diff against what the target runs, with root causes, and the
//! judgement of what runs (a first deploy, its known-good closure, another deploy at
//! work, or a hand deploy, refused unless allowed).

// The gates are parts of one module: they share its types and helpers.
#[allow(clippy::wildcard_imports)]
use super::*;

/// Gate 2's hand-off: what a failure restores (what runs now), and the new closure as
/// read, kept for the next deploy's diff once committed.
pub(super) struct Diffed {
    pub(super) rollback_to: String,
    pub(super) new: waymark_diff::Closure,
}

impl Deployer<'_> {
    /// Gate 2. Returns the closure to restore on failure.
    pub(super) fn diff(
        &self,
        run: &mut Run,
        closure: &str,
        built: Built,
        probe: &Probe,
        latest: Option<&Record>,
        wanted: &Wanted,
    ) -> Result<(Diffed, String), Stop> {
        let Some(running) = probe.running.clone() else {
            return Err(stop(
                HostResult::Failed,
                Refusal::NoSystem {
                    host: run.name.clone(),
                },
            ));
        };
        match baseline(
            latest,
            &running,
            probe.active.as_deref(),
            self.settings.allow_drift,
            matches!(wanted, Wanted::Rollback { .. }),
        ) {
            Baseline::First => self.emit_note(
                run,
                format!(
                    "first deploy: {} has no known-good mark yet; if a gate fails it is restored to what it runs now, {running}",
                    run.name
                ),
            ),
            Baseline::KnownGood => {}
            Baseline::Busy(dir) => {
                return Err(stop(
                    HostResult::Failed,
                    Refusal::AnotherDeploy {
                        host: run.name.clone(),
                        dir,
                    },
                ));
            }
            Baseline::Drift { allowed, latest } => {
                if allowed {
                    let what = format!(
                        "{} runs {running}, not its latest known-good closure {} (mark {}): deployed by hand?",
                        run.name, latest.closure, latest.mark
                    );
                    self.emit_note(run, format!("{what} Going on; a failure restores what runs now."));
                } else {
                    return Err(stop(
                        HostResult::Failed,
                        Refusal::Drift {
                            host: run.name.clone(),
                            running,
                            closure: latest.closure.clone(),
                            mark: latest.mark.clone(),
                        },
                    ));
                }
            }
        }
        let target = run.target.clone();
        let read = |run: &mut Run, path: &str| -> Result<waymark_diff::Closure, Stop> {
            let r = self.remote(
                run,
                &target,
                &script(&[protocol::PATH_INFO], &[("path", path)]),
            );
            if r.code != 0 {
                return Err(stop(
                    HostResult::Error,
                    StopCause::Store(format!(
                        "reading the closure of {path} on {}: {}",
                        run.name,
                        r.last_error()
                    )),
                ));
            }
            closure_from_path_info(r.stdout.as_bytes(), "/nix/store", path, &target.store_url())
                .map_err(|e| stop(HostResult::Error, StopCause::Store(e.to_string())))
        };
        let parse = |json: &str, path: &str| {
            closure_from_path_info(json.as_bytes(), "/nix/store", path, &target.store_url())
                .map_err(|e| stop(HostResult::Error, StopCause::Store(e.to_string())))
        };
        let old = match (built.old, &probe.known_old, &probe.old_closure) {
            (Some(read_for_copy), _, _) => read_for_copy,
            (None, Some(kept), _) => kept.clone(),
            (None, None, Some(json)) => parse(json, &running)?,
            (None, None, None) => read(run, &running)?,
        };
        let new = match (built.new, built.new_json) {
            (Some(read_for_copy), _) => read_for_copy,
            (None, Some(json)) => parse(&json, closure)?,
            (None, None) => read(run, closure)?,
        };
        // The old side's derivations, for root causes: here if evaluated here before,
        // else from the build host, which roots them with its marks.
        if let (Some(BuildAt::Builder { host, .. }), Some(drv)) = (
            wanted.build_at(),
            old.paths
                .iter()
                .find(|p| p.path == running)
                .and_then(|p| p.deriver.clone()),
        ) && !std::path::Path::new(&drv).exists()
        {
            let fetch = self.nix(&["copy", "--derivation", "--from", &host.store_url(), &drv]);
            if let Err(e) = self.nix_run(run, fetch) {
                self.emit_note(run, format!("root causes by version only: {e}"));
            }
        }
        let drvs = DrvFiles::new([]);
        let report = waymark_diff::diff_with(&old, &new, Some(&drvs));
        let summary = DiffSummary {
            against: Some(running.clone()),
            changed: report.changed.len(),
            added: report.added.len(),
            removed: report.removed.len(),
            rebuilt: report.rebuilt.len(),
            root_causes: report
                .root_causes
                .iter()
                .map(|c| format!("{} → {} (caused {})", c.before, c.after, c.caused))
                .collect(),
        };
        let line = if report.has_differences() {
            let mut s = format!(
                "{} changed, {} added, {} removed, {} rebuilt",
                summary.changed, summary.added, summary.removed, summary.rebuilt
            );
            if let Some(c) = summary.root_causes.first() {
                s.push_str(&format!("; {c}"));
            }
            s
        } else if running == closure {
            "no change".to_owned()
        } else {
            "same packages".to_owned()
        };
        run.change = Some(line.clone());
        run.diff = Some(summary);
        if self.settings.goal == Goal::Diff {
            self.interaction.show_diff(&run.name, &report);
        }
        if self.settings.ask && !self.interaction.confirm(&run.name, &report) {
            return Err(stop(HostResult::Failed, Refusal::Declined));
        }
        Ok((
            Diffed {
                rollback_to: running,
                new,
            },
            line,
        ))
    }
}
