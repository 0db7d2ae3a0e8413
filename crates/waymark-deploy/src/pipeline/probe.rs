//! What the target says of itself before anything is done there: what it runs and
//! boots, its marks, its failed units, the agents of earlier deploys.

// The gates are parts of one module: they share its types and helpers.
#[allow(clippy::wildcard_imports)]
use super::*;

impl Deployer<'_> {
    /// Asks the target what it runs, its known-good marks and its failed units: one
    /// round trip. The session stays open (`Probe::held`): it runs the next script
    /// it is sent (gate 3's), or ends without doing anything when its input ends.
    pub(super) fn probe(&self, run: &mut Run) -> Result<Probe, Stop> {
        // What this machine committed last: read there only if something else runs.
        let kept = kept_closure(&self.settings.closures_dir, &run.name);
        let script = probe_script(
            &self.settings.remote_waymark,
            kept.as_ref().map(|c| c.root.as_str()),
        );
        let target = run.target.clone();
        run.masters_opened += self.opened(&target);
        let started = Instant::now();
        let mut session = None;
        let r = match self.ssh.hold(&target, &script).and_then(|h| h.talk(b"")) {
            Ok(mut talk) => match talk.lines_until(PROBED) {
                Some(lines) => {
                    session = Some(talk);
                    Reply {
                        code: 0,
                        stdout: lines.join("\n") + "\n",
                        stderr: String::new(),
                    }
                }
                None => talk.finish().unwrap_or_else(|e| Reply::lost(&e)),
            },
            Err(e) => Reply::lost(&e),
        };
        run.remote_time += started.elapsed();
        let reply = ProbeReply::parse(&r.stdout);
        if r.code == 255 && !reply.reached_marks {
            return Err(stop(
                HostResult::Error,
                StopCause::Unreachable {
                    destination: target.destination(),
                    why: r.last_error(),
                },
            ));
        }
        if reply.daemon {
            self.ssh.use_daemon(&target);
        }
        if reply.marks.is_empty() {
            return Err(stop(
                HostResult::Error,
                StopCause::Settings(format!(
                    "`{} known-good` cannot run on {} ({}): install waymark there (waymark.knownGood.package) or pass --remote-waymark",
                    self.settings.remote_waymark,
                    run.name,
                    r.last_error()
                )),
            ));
        }
        let listing: serde_json::Value = serde_json::from_str(&reply.marks).map_err(|e| {
            stop(
                HostResult::Error,
                StopCause::Reply(format!(
                    "reading the known-good marks of {} on the target: {e}: {}",
                    run.name,
                    r.last_error()
                )),
            )
        })?;
        let mut marks: Vec<Record> =
            serde_json::from_value(listing["marks"].clone()).map_err(|e| {
                stop(
                    HostResult::Error,
                    StopCause::Reply(format!(
                        "the target's known-good records are not readable: {e}"
                    )),
                )
            })?;
        // A mark the target itself reports broken (its root gone or repointed, its
        // closure no longer valid) is no rollback target and no known-good baseline.
        let broken: Vec<waymark_known_good::Repair> =
            serde_json::from_value(listing["repairs"].clone()).unwrap_or_default();
        let broken: BTreeSet<&str> = broken
            .iter()
            .filter(|r| r.broken && r.target == run.name)
            .map(|r| r.mark.as_str())
            .collect();
        marks.retain(|m| m.target == run.name && !broken.contains(m.mark.as_str()));
        if !broken.is_empty() {
            self.emit_note(
                run,
                format!(
                    "{} reports broken known-good marks, left out: {} (see waymark known-good list there)",
                    run.name,
                    broken.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        let ProbeReply {
            running,
            profile,
            failed_units,
            agents,
            active,
            old_closure,
            ..
        } = reply;
        Ok(Probe {
            held: session,
            known_old: kept.filter(|c| running.as_deref() == Some(c.root.as_str())),
            running,
            profile,
            old_closure,
            marks,
            agents,
            active,
            failed_units,
        })
    }
}
