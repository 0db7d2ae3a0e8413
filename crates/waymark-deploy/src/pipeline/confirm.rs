//! Gate 5's commit: the confirmation over a new connection, and the evidence the marks
//! carry.

// The gates are parts of one module: they share its types and helpers.
#[allow(clippy::wildcard_imports)]
use super::*;

impl Deployer<'_> {
    /// Gate 5: confirm over a new connection; the agent commits; verify.
    pub(super) fn confirm(
        &self,
        run: &mut Run,
        dir: &str,
        closure: &str,
        rollback_to: &str,
    ) -> Result<(Option<Record>, String), Stop> {
        let target = run.target.clone();
        if fault("late-confirm") {
            let late = run.host.confirm_timeout + checks_budget(run.host) + 4;
            std::thread::sleep(Duration::from_secs(late));
        }
        if fault("pause-before-confirm") {
            std::thread::sleep(Duration::from_secs(3));
        }
        let expected_running = if self.settings.goal == Goal::Boot {
            rollback_to
        } else {
            closure
        };
        // Where the goal commits, the same connection marks the closure known-good on
        // the target, once the target itself shows it committed: one handshake less.
        // Before confirming, it leaves the evidence (one line of JSON, its stdin) in the
        // agent's directory, and this machine keeps it too: a deploy stopped between
        // the commit and the marks is finished by the next one ([`Unfinished`]).
        let evidence = matches!(self.settings.goal, Goal::Switch | Goal::Boot).then(|| {
            let gate = GateResult {
                gate: if self.settings.goal == Goal::Boot {
                    Gate::Boot
                } else {
                    Gate::Switch
                },
                result: Outcome::Passed,
                started_at: now(),
                duration_ms: 0,
                summary: Some(
                    "confirmed over a new connection; committed, verified on the target".into(),
                ),
            };
            Self::evidence(run, closure, Some(gate))
        });
        if let Some(evidence) = &evidence {
            self.keep_journal(run, evidence);
        }
        let mut params = vec![
            (
                "mark",
                if evidence.is_some() { "yes" } else { "" }.to_owned(),
            ),
            ("expect", expected_running.to_owned()),
            ("closure", closure.to_owned()),
            ("target", run.name.clone()),
            ("rev", run.rev.clone().unwrap_or_default()),
            ("waymark", self.settings.remote_waymark.clone()),
            (
                "pause",
                if fault("pause-after-confirm") {
                    "3"
                } else {
                    "0"
                }
                .to_owned(),
            ),
        ];
        params.extend(wait_params(
            dir,
            Until::Final,
            run.host.activation_timeout * 2 + 10,
        ));
        let script = script(
            &[protocol::CONFIRM, protocol::WAIT, protocol::CONFIRM_MARK],
            &borrowed(&params),
        );
        run.fresh_connections += 1;
        let reply = if fault("confirm-unreachable") {
            Ok(Reply::lost(
                &"ssh: connect to host: Connection refused (WAYMARK_FAULT)",
            ))
        } else {
            let started = Instant::now();
            let reply = self.ssh.run_fresh(
                &target,
                &script,
                evidence.as_deref(),
                Duration::from_secs(10),
            );
            run.remote_time += started.elapsed();
            reply
        };
        let mut r = reply.unwrap_or_else(|e| Reply::lost(&e));
        if fault("cut-after-confirm") {
            // The confirmation ran; its answer is lost on the way back.
            r = Reply::lost(&"ssh: connection reset (WAYMARK_FAULT)");
        }
        if r.code == EXIT_CONFIRM_LATE {
            return Err(self.await_restore(
                run,
                dir,
                closure,
                rollback_to,
                "the confirmation arrived after the target's window closed",
            ));
        }
        let reply = if r.code == 0 {
            ConfirmReply::parse(&r.stdout)
        } else {
            // The confirmation may have landed before the connection failed: the agent's
            // own end says (a commit only ever follows a confirmation).
            let why = format!(
                "could not confirm over a new SSH connection ({})",
                r.last_error()
            );
            let report = self.await_agent(run, dir, rollback_to, &why)?;
            self.emit_note(
                run,
                format!("{why}, but the confirmation had landed: the agent committed"),
            );
            ConfirmReply {
                report,
                marked: None,
            }
        };
        // The target's mark, made over this connection: gate 5's end needs no other.
        let marked_there = reply.marked;
        let report = reply.report;
        let running = report.running.clone();
        let profile = report.profile.as_deref();
        run.running.clone_from(&running);
        match report.state.clone() {
            AgentState::Kept if running.as_deref() == Some(closure) => Ok((
                marked_there,
                "confirmed over a new connection; kept running, not committed".into(),
            )),
            AgentState::Committed => {
                if commit_verified(running.as_deref(), profile, expected_running, closure) {
                    Ok((
                        marked_there,
                        if self.settings.goal == Goal::Boot {
                            "confirmed; the boot default, from the next boot".into()
                        } else {
                            "confirmed over a new connection; profile and boot entry set".into()
                        },
                    ))
                } else {
                    Err(stop(
                        HostResult::NeedsHuman,
                        Verdict::CommitUnverified {
                            running: running.as_deref().unwrap_or("nothing").to_owned(),
                            profile: profile.unwrap_or("missing").to_owned(),
                        },
                    ))
                }
            }
            AgentState::RestoreFailed(why) => Err(stop(
                HostResult::NeedsHuman,
                Verdict::RestoreFailedAfterConfirm {
                    why: AgentState::reason(&why).to_string(),
                    dir: dir.to_owned(),
                    host: run.name.clone(),
                },
            )),
            AgentState::Restored(how) => Err(Self::verified_restore(
                run,
                rollback_to,
                format!("{}; restored {rollback_to}", AgentState::reason(&how)),
                &report,
            )),
            other => Err(stop(
                HostResult::NeedsHuman,
                Verdict::AgentUnexpected {
                    state: format!("{other:?}"),
                    dir: dir.to_owned(),
                    host: run.name.clone(),
                },
            )),
        }
    }

    /// Gate 5's end: known-good marks on the target and the build host, the record
    /// here, the release tag.
    /// The evidence of the gates passed so far, plus `last` (the gate under way).
    pub(super) fn evidence(run: &Run, closure: &str, last: Option<GateResult>) -> Vec<u8> {
        let mut gates = run.gates.clone();
        gates.retain(|g| g.result == Outcome::Passed);
        gates.extend(last);
        let evidence = Evidence {
            schema: waymark_evidence::SCHEMA.to_owned(),
            target: run.name.clone(),
            closure: closure.to_owned(),
            drv: run.drv.clone(),
            rev: run.rev.clone(),
            gates,
            diff: run.diff.clone(),
        };
        serde_json::to_vec(&evidence).expect("serializable")
    }
}
