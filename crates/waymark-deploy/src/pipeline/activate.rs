//! Gates 3 and 4: dry-activate and the agent's start in one round trip, the switch test
//! and the health checks, and where an activation did not go through, the target's own
//! restore read back and verified.

// The gates are parts of one module: they share its types and helpers.
#[allow(clippy::wildcard_imports)]
use super::*;

/// Seconds a health check's round trip may take past its own timeout before the
/// deployer gives up on it (the connection, the shell starting).
pub(super) const CHECK_MARGIN: u64 = 5;

/// Seconds the health checks of a host may take together, as the deployer bounds them:
/// the agent's window includes them all, so a check that hangs is given up on, and the
/// deploy aborted for it, before the window closes.
pub(super) fn checks_budget(host: &Host) -> u64 {
    host.health_checks
        .iter()
        .map(|c| c.timeout + CHECK_MARGIN)
        .sum()
}

/// Gate 3's hand-off to gate 4: the agent was started, and this is its reply (the
/// activation's outcome, or the connection lost while it ran).
pub(super) struct Launched(Reply, LaunchReply);

impl Deployer<'_> {
    /// Gate 3, and the start of gate 4 in the same round trip: dry-activate, and only
    /// when it passed (and the goal goes further), start the agent and wait for its
    /// activation: its reply is gate 4's to read ([`Launched`]). Sent over the probe's
    /// session (`held`) when there is one.
    pub(super) fn dry_activate_and_launch(
        &self,
        run: &mut Run,
        held: Option<Talk>,
        dir: &str,
        closure: &str,
        rollback_to: &str,
    ) -> Result<(Option<Launched>, String), Stop> {
        let launches = self.settings.goal > Goal::DryActivate;
        let started = Instant::now();
        let r = if let Some(mut talk) = held {
            let mut input = self
                .dry_launch_script(run, dir, closure, rollback_to)
                .into_bytes();
            input.extend_from_slice(b"\n@@run\n");
            if launches {
                input.extend_from_slice(crate::AGENT.as_bytes());
            }
            let reply = talk
                .send(&input)
                .and_then(|()| talk.finish())
                .unwrap_or_else(|e| Reply::lost(&e));
            run.remote_time += started.elapsed();
            reply
        } else {
            let script = self.dry_launch_script(run, dir, closure, rollback_to);
            let target = run.target.clone();
            self.remote_with_input(
                run,
                &target,
                &script,
                launches.then_some(crate::AGENT.as_bytes()),
            )
        };
        let reply = LaunchReply::parse(&r.stdout);
        match reply.dry_rc.as_deref() {
            Some("0") => {}
            Some(rc) => {
                return Err(stop(
                    HostResult::Failed,
                    Refusal::DryActivateFailed {
                        rc: rc.to_owned(),
                        last: reply.dry.lines().last().unwrap_or("no output").to_owned(),
                    },
                ));
            }
            None if launches => {
                // The agent may have started before the connection was lost: look.
                return Err(self.after_lost_launch(run, dir, closure, rollback_to, &r));
            }
            None => {
                return Err(stop(
                    HostResult::Failed,
                    Refusal::DryActivateNotRun {
                        host: run.name.clone(),
                        why: r.last_error(),
                    },
                ));
            }
        }
        let summary = DryRun::parse(&reply.dry).summary();
        if !launches {
            return Ok((None, summary));
        }
        run.carry = started
            .elapsed()
            .saturating_sub(Duration::from_millis(reply.dry_ms));
        Ok((Some(Launched(r, reply)), summary))
    }

    /// The round trip of dry-activate and the agent's start was lost: the agent may
    /// or may not run. Look over a new connection; if it started, follow it to its end.
    pub(super) fn after_lost_launch(
        &self,
        run: &mut Run,
        dir: &str,
        closure: &str,
        rollback_to: &str,
        lost: &Reply,
    ) -> Stop {
        let why = format!(
            "lost the connection during dry-activate ({})",
            lost.last_error()
        );
        run.fresh_connections += 1;
        let look = self.ssh.run_fresh(
            &run.target,
            &script(&[protocol::LOOK], &[("dir", dir)]),
            None,
            Duration::from_secs(10),
        );
        match look.as_ref().map(|r| Looked::parse(&r.stdout)) {
            Ok(Looked::Started(false)) => {
                stop(HostResult::Failed, Verdict::AgentNeverStarted { why })
            }
            Ok(Looked::Started(true)) => self.await_restore(run, dir, closure, rollback_to, &why),
            _ => stop(
                HostResult::NeedsHuman,
                Verdict::LaunchUnknown {
                    why,
                    host: run.name.clone(),
                    detail: look.map_or_else(|e| e.to_string(), |r| r.last_error()),
                },
            ),
        }
    }

    /// Gate 3's shell (`scripts/dry.sh`), and where the goal goes further the agent's
    /// start (`scripts/launch.sh`, the agent's script on stdin) only when dry-activate
    /// passed, and the wait for its activation.
    pub(super) fn dry_launch_script(
        &self,
        run: &Run,
        dir: &str,
        closure: &str,
        rollback_to: &str,
    ) -> String {
        let mut params = vec![
            ("closure", closure.to_owned()),
            ("activation", run.host.activation_timeout.to_string()),
        ];
        if self.settings.goal <= Goal::DryActivate {
            return script(&[protocol::DRY], &borrowed(&params));
        }
        let commit = match self.settings.goal {
            Goal::Switch => "switch",
            Goal::Boot => "boot",
            _ => "none",
        };
        let window = run.host.confirm_timeout + checks_budget(run.host) + 2;
        params.extend([
            ("rollback_to", rollback_to.to_owned()),
            ("commit", commit.to_owned()),
            ("window", window.to_string()),
            (
                "unit",
                format!("waymark-activate-{}-{}", self.settings.run_id, run.name),
            ),
        ]);
        params.extend(wait_params(
            dir,
            Until::Activation,
            run.host.activation_timeout + 10,
        ));
        script(
            &[protocol::DRY, protocol::LAUNCH, protocol::WAIT],
            &borrowed(&params),
        )
    }

    /// Gate 4: the agent's activation (started with gate 3), then the health checks.
    pub(super) fn switch_test(
        &self,
        run: &mut Run,
        launched: Launched,
        dir: &str,
        closure: &str,
        rollback_to: &str,
        failed_before: Option<&[String]>,
    ) -> Result<((), String), Stop> {
        let Launched(r, reply) = launched;
        let target = run.target.clone();
        if r.code == EXIT_AGENT_NOT_STARTED {
            return Err(stop(
                HostResult::Failed,
                Refusal::AgentNotStarted {
                    host: run.name.clone(),
                    why: r.last_error(),
                },
            ));
        }
        if r.code == EXIT_BUSY {
            return Err(stop(
                HostResult::Failed,
                Refusal::Busy {
                    host: run.name.clone(),
                    holder: reply.busy.clone().unwrap_or_else(|| "?".into()),
                },
            ));
        }
        let state = if r.code == 0 {
            reply.report.state.clone()
        } else {
            // The connection dropped: the agent goes on by itself. Read its end.
            self.emit_note(
                run,
                format!(
                    "lost the connection during activation ({}); waiting for the target's agent",
                    r.last_error()
                ),
            );
            return Err(self.await_restore(
                run,
                dir,
                closure,
                rollback_to,
                "the connection dropped during activation",
            ));
        };
        match state {
            AgentState::AwaitingConfirmation => {}
            AgentState::Restored(why)
                if why == "inhibited"
                    && run.host.boot_on_inhibited_switch
                    && matches!(self.settings.goal, Goal::Switch | Goal::Boot) =>
            {
                let restored =
                    Self::verified_restore(run, rollback_to, String::new(), &reply.report);
                if restored.result != HostResult::Failed {
                    return Err(restored);
                }
                return Err(self.boot_instead(run, closure, rollback_to));
            }
            AgentState::Restored(why) => {
                let log = reply.report.log.join(" / ");
                return Err(Self::verified_restore(
                    run,
                    rollback_to,
                    format!(
                        "{} ({log}); restored {rollback_to}",
                        AgentState::reason(&why)
                    ),
                    &reply.report,
                ));
            }
            AgentState::Refused(why) => {
                return Err(stop(
                    HostResult::Failed,
                    Refusal::RunningChanged {
                        host: run.name.clone(),
                        why,
                    },
                ));
            }
            AgentState::RestoreFailed(why) => {
                return Err(stop(
                    HostResult::NeedsHuman,
                    Verdict::RestoreFailed {
                        why: AgentState::reason(&why).to_string(),
                        rollback_to: rollback_to.to_owned(),
                        dir: dir.to_owned(),
                        host: run.name.clone(),
                    },
                ));
            }
            other => {
                return Err(self.await_restore(
                    run,
                    dir,
                    closure,
                    rollback_to,
                    &format!(
                        "activation did not finish in {} s ({other:?})",
                        run.host.activation_timeout
                    ),
                ));
            }
        }

        // Health checks, over the master connection, while the agent waits.
        let mut passed = Vec::new();
        for check in &run.host.health_checks {
            if fault("slow-health") {
                std::thread::sleep(Duration::from_secs(3));
            }
            let (command, url) = match (&check.command, &check.url) {
                (Some(c), _) => (c.as_str(), ""),
                (None, Some(u)) => ("", u.as_str()),
                (None, None) => ("false", ""),
            };
            // Each try is bounded by what is left of the check's time, so a check that
            // hangs ends in time and says so; its last line otherwise.
            let seconds = check.timeout.to_string();
            let body = script(
                &[protocol::HEALTH],
                &[("check", command), ("url", url), ("seconds", &seconds)],
            );
            let limit = (check.timeout + CHECK_MARGIN).to_string();
            let r = self.remote(
                run,
                &target,
                &script(&[protocol::BOUNDED], &[("limit", &limit), ("body", &body)]),
            );
            if r.code != 0 {
                let reason = protocol::health_failure(&r.stdout).unwrap_or_else(|| {
                    // `timeout`'s status (GNU's, busybox's).
                    if matches!(r.code, 124 | 143) {
                        format!("no answer within {} s", check.timeout + CHECK_MARGIN)
                    } else {
                        r.last_error()
                    }
                });
                let why = format!(
                    "health check {} failed ({} s allowed): {reason}",
                    check.name, check.timeout
                );
                return Err(self.abort(run, dir, closure, rollback_to, &why));
            }
            passed.push(check.name.clone());
        }
        if let Some(before) = failed_before {
            let r = self.remote(run, &target, &script(&[protocol::FAILED_UNITS], &[]));
            let failed = protocol::failed_units(&r.stdout);
            let new_failures: Vec<&str> = failed
                .iter()
                .map(String::as_str)
                .filter(|u| !before.iter().any(|b| b == u))
                .collect();
            if !new_failures.is_empty() {
                let why = format!("units failed after activation: {}", new_failures.join(", "));
                return Err(self.abort(run, dir, closure, rollback_to, &why));
            }
            passed.push("no failed units".into());
        }
        Ok((
            (),
            if passed.is_empty() {
                "activated (no health checks declared)".into()
            } else {
                format!("activated; passed: {}", passed.join(", "))
            },
        ))
    }

    /// The switch is inhibited and the host allows the fallback: the new closure becomes
    /// the boot default (profile and boot entry), the running system stays. Not marked
    /// known-good: it has not run here.
    pub(super) fn boot_instead(&self, run: &mut Run, closure: &str, rollback_to: &str) -> Stop {
        let target = run.target.clone();
        let activation = run.host.activation_timeout.to_string();
        let r = self.remote(
            run,
            &target,
            &script(
                &[protocol::BOOT],
                &[("closure", closure), ("activation", &activation)],
            ),
        );
        let reply = BootReply::parse(&r.stdout);
        run.running.clone_from(&reply.running);
        let why = "the switch is inhibited (a component changed that needs a reboot)";
        if reply.boot
            && reply.profile.as_deref() == Some(closure)
            && run.running.as_deref() == Some(rollback_to)
        {
            stop(
                HostResult::Failed,
                Verdict::BootDefaultOnly {
                    why: why.to_owned(),
                    closure: closure.to_owned(),
                },
            )
        } else {
            stop(
                HostResult::NeedsHuman,
                Verdict::BootDefaultFailed {
                    why: why.to_owned(),
                    detail: r.last_error(),
                    running: run.running.as_deref().unwrap_or("nothing").to_owned(),
                    profile: reply.profile.as_deref().unwrap_or("missing").to_owned(),
                },
            )
        }
    }

    /// A gate failed after activation: tell the agent, then verify it restored.
    pub(super) fn abort(
        &self,
        run: &mut Run,
        dir: &str,
        closure: &str,
        rollback_to: &str,
        why: &str,
    ) -> Stop {
        let target = run.target.clone();
        let _ = self.remote(run, &target, &script(&[protocol::ABORT], &[("dir", dir)]));
        self.await_restore(run, dir, closure, rollback_to, why)
    }

    /// Waits for the agent's end (reconnecting while it may still be restoring) and
    /// reports where the target is.
    pub(super) fn await_restore(
        &self,
        run: &mut Run,
        dir: &str,
        closure: &str,
        rollback_to: &str,
        why: &str,
    ) -> Stop {
        match self.await_agent(run, dir, rollback_to, why) {
            Ok(_) => stop(
                HostResult::NeedsHuman,
                Verdict::CommittedUnmarked {
                    why: why.to_owned(),
                    closure: closure.to_owned(),
                },
            ),
            Err(stop) => stop,
        }
    }

    /// Waits for the agent's end: its report (`state=`, `running=`, `profile=`) when it
    /// committed or kept the new closure, else where the host stands.
    pub(super) fn await_agent(
        &self,
        run: &mut Run,
        dir: &str,
        rollback_to: &str,
        why: &str,
    ) -> Result<AgentReport, Stop> {
        let target = run.target.clone();
        let patience = run.host.confirm_timeout
            + checks_budget(run.host)
            + 2 * run.host.activation_timeout
            + 30;
        let deadline = Instant::now() + Duration::from_secs(patience);
        loop {
            let r = self.remote(
                run,
                &target,
                &wait_script(dir, Until::Final, patience.min(120)),
            );
            if r.code == 0 {
                let report = AgentReport::parse(&r.stdout);
                match &report.state {
                    AgentState::Restored(how) => {
                        return Err(Self::verified_restore(
                            run,
                            rollback_to,
                            format!(
                                "{why}; the target restored {rollback_to} ({})",
                                AgentState::reason(how)
                            ),
                            &report,
                        ));
                    }
                    AgentState::Committed | AgentState::Kept => {
                        run.running.clone_from(&report.running);
                        return Ok(report);
                    }
                    AgentState::Refused(how) => {
                        return Err(stop(
                            HostResult::Failed,
                            Verdict::ActivatedNothing {
                                why: why.to_owned(),
                                how: how.clone(),
                            },
                        ));
                    }
                    AgentState::RestoreFailed(_) => {
                        return Err(stop(
                            HostResult::NeedsHuman,
                            Verdict::RestoreFailedThere {
                                why: why.to_owned(),
                                rollback_to: rollback_to.to_owned(),
                                dir: dir.to_owned(),
                            },
                        ));
                    }
                    _ => {}
                }
            }
            if Instant::now() > deadline {
                return Err(stop(
                    HostResult::NeedsHuman,
                    Verdict::RestoreUnknown {
                        why: why.to_owned(),
                        host: run.name.clone(),
                        rollback_to: rollback_to.to_owned(),
                    },
                ));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// The agent says it restored: check the target runs `rollback_to` and its profile did
    /// not move to the failed closure.
    pub(super) fn verified_restore(
        run: &mut Run,
        rollback_to: &str,
        message: String,
        report: &AgentReport,
    ) -> Stop {
        run.running.clone_from(&report.running);
        if restore_verified(
            report.running.as_deref(),
            report.profile.as_deref(),
            rollback_to,
            run.closure.as_deref(),
        ) {
            stop(HostResult::Failed, Verdict::Restored(message))
        } else {
            stop(
                HostResult::NeedsHuman,
                Verdict::RestoreUnverified {
                    restored: message,
                    running: report.running.as_deref().unwrap_or("nothing").to_owned(),
                    profile: report.profile.as_deref().unwrap_or("missing").to_owned(),
                },
            )
        }
    }
}
