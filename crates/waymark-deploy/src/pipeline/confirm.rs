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
        let (keep, mark, evidence) = if matches!(self.settings.goal, Goal::Switch | Goal::Boot) {
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
            (
                format!(
                    "IFS= read -r evidence || :\nprintf '%s\\n' \"$evidence\" > {d}/evidence.json\n",
                    d = q(dir)
                ),
                format!(
                    r#"if [ "$s" = committed ] && [ "$running" = {run} ] && [ "$profile" = {c} ] &&
  mkdir {d}/marking 2>/dev/null; then
  echo "@@mark"; printf '%s\n' "$evidence" | {cmd}; rc=$?
  [ $rc != 0 ] || : > {d}/marked; rmdir {d}/marking; echo "@@mark-exit $rc"
fi
"#,
                    run = q(expected_running),
                    c = q(closure),
                    d = q(dir),
                    cmd = self.mark_command(run, closure)
                ),
                Some(Self::evidence(run, closure, Some(gate))),
            )
        } else {
            (String::new(), String::new(), None)
        };
        if let Some(evidence) = &evidence {
            self.keep_journal(run, evidence);
        }
        let script = format!(
            "echo $$ > {d}/confirmer\n{keep}mv {d}/window {d}/confirmed 2>/dev/null || {{ echo late=yes; exit {EXIT_CONFIRM_LATE}; }}\nread -r w < {d}/waiter && kill \"$w\" 2>/dev/null\n{pause}{wait}{mark}",
            d = q(dir),
            pause = if fault("pause-after-confirm") {
                "sleep 3\n"
            } else {
                ""
            },
            wait = wait_script(dir, FINAL, run.host.activation_timeout * 2 + 10)
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
        if r.code != 0 {
            // The confirmation may have landed before the connection failed: the agent's
            // own end says (a commit only ever follows a confirmation).
            let why = format!(
                "could not confirm over a new SSH connection ({})",
                r.last_error()
            );
            r = self.await_agent(run, dir, rollback_to, &why)?;
            self.emit_note(
                run,
                format!("{why}, but the confirmation had landed: the agent committed"),
            );
        }
        let (head, marked) = r.stdout.split_once("@@mark\n").unwrap_or((&r.stdout, ""));
        // The target's mark, made over this connection: gate 5's end needs no other.
        let marked_there: Option<Record> = marked
            .rsplit_once("@@mark-exit ")
            .filter(|(_, code)| code.trim() == "0")
            .and_then(|(json, _)| serde_json::from_str(json).ok());
        let f = fields(head);
        let running = field(&f, "running").map(str::to_owned);
        let profile = field(&f, "profile");
        run.running.clone_from(&running);
        match AgentState::parse(field(&f, "state").unwrap_or("")) {
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
                        format!(
                            "the agent committed, but the target runs {} with profile {}: check it",
                            running.as_deref().unwrap_or("nothing"),
                            profile.unwrap_or("missing")
                        ),
                    ))
                }
            }
            AgentState::RestoreFailed(why) => Err(stop(
                HostResult::NeedsHuman,
                format!(
                    "{}, and restoring failed on the target: see {dir}/restore.log on {}",
                    AgentState::reason(&why),
                    run.name
                ),
            )),
            AgentState::Restored(how) => Err(Self::verified_restore(
                run,
                rollback_to,
                format!("{}; restored {rollback_to}", AgentState::reason(&how)),
                &r.stdout,
            )),
            other => Err(stop(
                HostResult::NeedsHuman,
                format!(
                    "after the confirmation the target's agent is {other:?}: check {dir} on {}",
                    run.name
                ),
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
