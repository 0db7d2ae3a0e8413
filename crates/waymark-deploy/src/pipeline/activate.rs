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
pub(super) struct Launched(Reply);

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
        let f = fields(&r.stdout);
        let output = f.get("dry").map(|l| l.join("\n")).unwrap_or_default();
        match field(&f, "dry-rc") {
            Some("0") => {}
            Some(rc) => {
                return Err(stop(
                    HostResult::Failed,
                    format!(
                        "dry-activate failed (exit {rc}): {}; nothing was activated",
                        output.lines().last().unwrap_or("no output")
                    ),
                ));
            }
            None if launches => {
                // The agent may have started before the connection was lost: look.
                return Err(self.after_lost_launch(run, dir, closure, rollback_to, &r));
            }
            None => {
                return Err(stop(
                    HostResult::Failed,
                    format!(
                        "dry-activate could not run on {}: {}; nothing was activated",
                        run.name,
                        r.last_error()
                    ),
                ));
            }
        }
        let summary = DryRun::parse(&output).summary();
        if !launches {
            return Ok((None, summary));
        }
        let dry_ms = field(&f, "dry-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        run.carry = started
            .elapsed()
            .saturating_sub(Duration::from_millis(dry_ms));
        Ok((Some(Launched(r)), summary))
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
            &format!(
                "test -e {}/state && echo started=yes; echo looked=yes",
                q(dir)
            ),
            None,
            Duration::from_secs(10),
        );
        match look {
            Ok(r) if r.stdout.contains("looked=yes") && !r.stdout.contains("started=yes") => stop(
                HostResult::Failed,
                format!("{why}; the agent never started: nothing was activated"),
            ),
            Ok(r) if r.stdout.contains("started=yes") => {
                self.await_restore(run, dir, closure, rollback_to, &why)
            }
            other => stop(
                HostResult::NeedsHuman,
                format!(
                    "{why}, and {} cannot be reached to see whether activation started: check it ({})",
                    run.name,
                    other.map_or_else(|e| e.to_string(), |r| r.last_error())
                ),
            ),
        }
    }

    /// Gate 3's shell, and where the goal goes further the agent's start (its script
    /// on stdin) only when dry-activate passed.
    pub(super) fn dry_launch_script(
        &self,
        run: &Run,
        dir: &str,
        closure: &str,
        rollback_to: &str,
    ) -> String {
        let dry = format!(
            r#"read -r u0 _ < /proc/uptime || u0=0.00
dry=$(timeout {t} {c}/bin/switch-to-configuration dry-activate 2>&1); rc=$?
read -r u1 _ < /proc/uptime || u1=$u0
while IFS= read -r l; do printf 'dry=%s\n' "$l"; done <<EOF
$dry
EOF
# Hundredths of seconds since boot ("1${{..}}": no leading zero, no octal).
echo "dry-rc=$rc"; echo "dry-ms=$(( (${{u1%.*}} - ${{u0%.*}}) * 1000 + (1${{u1#*.}} - 1${{u0#*.}}) * 10 ))"
[ $rc = 0 ] || exit 0
"#,
            t = run.host.activation_timeout,
            c = q(closure)
        );
        if self.settings.goal > Goal::DryActivate {
            dry + &self.launch_script(run, dir, closure, rollback_to)
        } else {
            dry
        }
    }

    /// The shell that starts the agent on the target (its script on stdin) and waits
    /// for its activation.
    pub(super) fn launch_script(
        &self,
        run: &Run,
        dir: &str,
        closure: &str,
        rollback_to: &str,
    ) -> String {
        let commit = match self.settings.goal {
            Goal::Switch => "switch",
            Goal::Boot => "boot",
            _ => "none",
        };
        let window = run.host.confirm_timeout + checks_budget(run.host) + 2;
        let args = [dir, closure, rollback_to, commit]
            .iter()
            .map(|a| q(a))
            .chain([window.to_string(), run.host.activation_timeout.to_string()])
            .collect::<Vec<_>>()
            .join(" ");
        let unit = format!("waymark-activate-{}-{}", self.settings.run_id, run.name);
        format!(
            r#"mkdir -p {dir} || {{ echo "start-failed=yes"; exit {not_started}; }}
# The lock names who holds it; one whose holder is gone (a reboot clears /run anyway)
# is taken over.
if ! mkdir /run/waymark/active 2>/dev/null; then
  holder=$(cat /run/waymark/active/pid 2>/dev/null)
  if [ -n "$holder" ] && kill -0 "$holder" 2>/dev/null &&
    ! grep -q '^State:[[:space:]]*Z' "/proc/$holder/status" 2>/dev/null; then
    echo "busy=$(cat /run/waymark/active/id 2>/dev/null)"; rmdir {dir}; exit {busy}
  fi
  rm -rf /run/waymark/active; mkdir /run/waymark/active || {{ echo busy=unknown; exit {busy}; }}
fi
echo $$ > /run/waymark/active/pid; echo {dir} > /run/waymark/active/id
started=
if {{ mkfifo {dir}/events 2>/dev/null || true; }} && cat > {dir}/agent.sh; then
  if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null; then
    # The unit gets this PATH: a transient unit's own has only systemd in it.
    systemd-run --quiet --collect --unit={unit} --service-type=exec --setenv=PATH="$PATH" \
      "$(command -v sh)" {dir}/agent.sh {args} && started=yes
  elif command -v setsid >/dev/null; then
    # -f: a session of its own, and ssh does not wait for it.
    (cd / && setsid -f sh {dir}/agent.sh {args} </dev/null >{dir}/agent.log 2>&1) && started=yes
  else
    (cd / && nohup sh {dir}/agent.sh {args} </dev/null >{dir}/agent.log 2>&1 &) && started=yes
  fi
fi
if [ -z "$started" ]; then rm -rf /run/waymark/active; echo "start-failed=yes"; exit {not_started}; fi
{wait}"#,
            dir = q(dir),
            unit = q(&unit),
            busy = EXIT_BUSY,
            not_started = EXIT_AGENT_NOT_STARTED,
            wait = wait_script(
                dir,
                &format!("awaiting-confirmation|{FINAL}"),
                run.host.activation_timeout + 10
            ),
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
        let Launched(r) = launched;
        let target = run.target.clone();
        if r.code == EXIT_AGENT_NOT_STARTED {
            return Err(stop(
                HostResult::Failed,
                format!(
                    "the activation agent could not be started on {}: {}; nothing was activated",
                    run.name,
                    r.last_error()
                ),
            ));
        }
        if r.code == EXIT_BUSY {
            return Err(stop(
                HostResult::Failed,
                format!(
                    "another deploy is activating on {} ({}); nothing changed",
                    run.name,
                    fields(&r.stdout)
                        .get("busy")
                        .and_then(|v| v.first())
                        .unwrap_or(&"?")
                ),
            ));
        }
        let state = if r.code == 0 {
            AgentState::parse(field(&fields(&r.stdout), "state").unwrap_or(""))
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
                let restored = Self::verified_restore(run, rollback_to, String::new(), &r.stdout);
                if restored.result != HostResult::Failed {
                    return Err(restored);
                }
                return Err(self.boot_instead(run, closure, rollback_to));
            }
            AgentState::Restored(why) => {
                let log = fields(&r.stdout)
                    .get("log")
                    .map(|l| l.join(" / "))
                    .unwrap_or_default();
                return Err(Self::verified_restore(
                    run,
                    rollback_to,
                    format!(
                        "{} ({log}); restored {rollback_to}",
                        AgentState::reason(&why)
                    ),
                    &r.stdout,
                ));
            }
            AgentState::Refused(why) => {
                return Err(stop(
                    HostResult::Failed,
                    format!(
                        "the agent activated nothing ({why}): {} switched to another system since the deploy read it",
                        run.name
                    ),
                ));
            }
            AgentState::RestoreFailed(why) => {
                return Err(stop(
                    HostResult::NeedsHuman,
                    format!(
                        "{}, and re-activating {rollback_to} failed: see {dir}/restore.log on {}",
                        AgentState::reason(&why),
                        run.name
                    ),
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
            let probe = match (&check.command, &check.url) {
                (Some(c), _) => c.clone(),
                (None, Some(u)) => format!(
                    "if command -v curl >/dev/null; then curl -fsS -o /dev/null --max-time 10 {u}; \
                     else wget -q -O /dev/null -T 10 {u}; fi",
                    u = q(u)
                ),
                (None, None) => "false".to_owned(),
            };
            // Each try is bounded by what is left of the check's time, so a check that
            // hangs ends in time and says so; its last line otherwise.
            let script = format!(
                "end=$(( $(date +%s) + {t} )); while :; do \
                 left=$(( end - $(date +%s) )); [ \"$left\" -gt 0 ] || left=1; \
                 out=$(timeout \"$left\" sh -c {probe} 2>&1); rc=$?; [ $rc = 0 ] && exit 0; \
                 if [ \"$(date +%s)\" -ge \"$end\" ]; then \
                 case $rc in 124|143) echo 'no answer within {t} s'; exit 1 ;; esac; \
                 last=$(printf '%s\\n' \"$out\" | tail -n 1); echo \"exit $rc${{last:+: $last}}\"; exit 1; fi; \
                 sleep 1; done",
                t = check.timeout,
                probe = q(&probe)
            );
            let r = self.remote(
                run,
                &target,
                &format!(
                    "timeout {} sh -c {}",
                    check.timeout + CHECK_MARGIN,
                    q(&script)
                ),
            );
            if r.code != 0 {
                let reason = r.stdout.trim().lines().last().map_or_else(
                    || {
                        // `timeout`'s status (GNU's, busybox's).
                        if matches!(r.code, 124 | 143) {
                            format!("no answer within {} s", check.timeout + CHECK_MARGIN)
                        } else {
                            r.last_error()
                        }
                    },
                    str::to_owned,
                );
                let why = format!(
                    "health check {} failed ({} s allowed): {reason}",
                    check.name, check.timeout
                );
                return Err(self.abort(run, dir, closure, rollback_to, &why));
            }
            passed.push(check.name.clone());
        }
        if let Some(before) = failed_before {
            let r = self.remote(
                run,
                &target,
                "systemctl list-units --state=failed --no-legend --plain 2>/dev/null | awk '{print $1}'",
            );
            let new_failures: Vec<&str> = r
                .stdout
                .lines()
                .map(str::trim)
                .filter(|u| !u.is_empty() && !before.iter().any(|b| b == u))
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
        let script = format!(
            r#"{REAL}
p=/nix/var/nix/profiles/system; before=$(real $p)
if nix-env -p $p --set {c} && timeout {t} {c}/bin/switch-to-configuration boot; then echo boot=yes
else [ -z "$before" ] || {{ nix-env -p $p --set "$before"; "$before/bin/switch-to-configuration" boot; }}; fi
echo "running=$(real /run/current-system)"; echo "profile=$(real $p)"
"#,
            c = q(closure),
            t = run.host.activation_timeout
        );
        let r = self.remote(run, &target, &script);
        let f = fields(&r.stdout);
        run.running = field(&f, "running").map(str::to_owned);
        let why = "the switch is inhibited (a component changed that needs a reboot)";
        if field(&f, "boot").is_some()
            && field(&f, "profile") == Some(closure)
            && run.running.as_deref() == Some(rollback_to)
        {
            stop(
                HostResult::Failed,
                format!(
                    "{why}: {closure} is the boot default from the next reboot (bootOnInhibitedSwitch); the running system is unchanged; not marked known-good until a deploy sees it run"
                ),
            )
        } else {
            stop(
                HostResult::NeedsHuman,
                format!(
                    "{why}, and making it the boot default failed ({}): the target runs {} with profile {}",
                    r.last_error(),
                    run.running.as_deref().unwrap_or("nothing"),
                    field(&f, "profile").unwrap_or("missing")
                ),
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
        let _ = self.remote(
            run,
            &target,
            &format!(
                "mv {d}/window {d}/aborted && {{ read -r w < {d}/waiter && kill \"$w\" 2>/dev/null; true; }}",
                d = q(dir)
            ),
        );
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
                format!(
                    "{why}, but the target's agent committed {closure}: it runs a closure that is not marked known-good"
                ),
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
    ) -> Result<Reply, Stop> {
        let target = run.target.clone();
        let patience = run.host.confirm_timeout
            + checks_budget(run.host)
            + 2 * run.host.activation_timeout
            + 30;
        let deadline = Instant::now() + Duration::from_secs(patience);
        loop {
            let r = self.remote(run, &target, &wait_script(dir, FINAL, patience.min(120)));
            if r.code == 0 {
                let f = fields(&r.stdout);
                match AgentState::parse(field(&f, "state").unwrap_or("")) {
                    AgentState::Restored(how) => {
                        return Err(Self::verified_restore(
                            run,
                            rollback_to,
                            format!(
                                "{why}; the target restored {rollback_to} ({})",
                                AgentState::reason(&how)
                            ),
                            &r.stdout,
                        ));
                    }
                    AgentState::Committed | AgentState::Kept => {
                        run.running = field(&f, "running").map(str::to_owned);
                        return Ok(r);
                    }
                    AgentState::Refused(how) => {
                        return Err(stop(
                            HostResult::Failed,
                            format!("{why}; the agent activated nothing ({how})"),
                        ));
                    }
                    AgentState::RestoreFailed(_) => {
                        return Err(stop(
                            HostResult::NeedsHuman,
                            format!(
                                "{why}, and re-activating {rollback_to} failed on the target: see {dir}/restore.log"
                            ),
                        ));
                    }
                    _ => {}
                }
            }
            if Instant::now() > deadline {
                return Err(stop(
                    HostResult::NeedsHuman,
                    format!(
                        "{why}; could not learn whether {} restored {rollback_to}: check it",
                        run.name
                    ),
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
        out: &str,
    ) -> Stop {
        let f = fields(out);
        let running = field(&f, "running").map(str::to_owned);
        run.running.clone_from(&running);
        if restore_verified(
            running.as_deref(),
            field(&f, "profile"),
            rollback_to,
            run.closure.as_deref(),
        ) {
            stop(HostResult::Failed, message)
        } else {
            stop(
                HostResult::NeedsHuman,
                format!(
                    "{message}, but the target runs {} (profile {}): check it",
                    running.as_deref().unwrap_or("nothing"),
                    field(&f, "profile").unwrap_or("missing")
                ),
            )
        }
    }
}
