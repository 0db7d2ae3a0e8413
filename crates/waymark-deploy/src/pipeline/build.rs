//! Gate 1: the build (on the build host, here, or on the target) and the copy to the
//! target; the nix commands a deploy runs here.

// The gates are parts of one module: they share its types and helpers.
#[allow(clippy::wildcard_imports)]
use super::*;

/// Gate 1's hand-off to gate 2: what it learnt of the closures for the copy (the new
/// one as the build host described it, both read where that was needed), so the diff
/// reads neither again. Empty for a rollback, which builds nothing.
#[derive(Default)]
pub(super) struct Built {
    /// `nix path-info --json --recursive` of the new closure, from the build host.
    pub(super) new_json: Option<String>,
    /// The new closure, read.
    pub(super) new: Option<waymark_diff::Closure>,
    /// What the target runs, read.
    pub(super) old: Option<waymark_diff::Closure>,
}

impl Built {
    /// Reads the new closure and what the target runs, where they are known here (the
    /// build host's description; the probe's, or this machine's kept copy).
    fn read(&mut self, target: &Endpoint, probe: &Probe, closure: &str) {
        let url = target.store_url();
        let parse = |json: &str, root: &str| {
            closure_from_path_info(json.as_bytes(), "/nix/store", root, &url).ok()
        };
        if self.new.is_none() {
            self.new = self.new_json.as_deref().and_then(|j| parse(j, closure));
        }
        if self.old.is_none() {
            self.old = match (&probe.known_old, &probe.old_closure, &probe.running) {
                (Some(kept), _, _) => Some(kept.clone()),
                (None, Some(json), Some(running)) => parse(json, running),
                _ => None,
            };
        }
    }
}

/// The paths of the new closure the target lacks, when both it and what the target
/// runs (held there whole) are known here: then only those are sent, and Nix does not
/// walk the closure path by path over the build host's connection. The root is always
/// among them, so a copy that succeeds proves the whole closure is there (Nix skips
/// what the target has). `None`: the whole closure goes.
pub(super) fn lacking(built: &Built, closure: &str) -> Option<Vec<String>> {
    /// Past this many, the copy takes the closure (and no long argument list).
    const MAX_LISTED: usize = 2000;
    let mut lacking = built.new.as_ref()?.paths_not_in(built.old.as_ref()?);
    if !lacking.contains(&closure) {
        lacking.push(closure);
    }
    // A `.drv` given to `nix copy` is an installable: older Nix would build its outputs.
    let listable = lacking.len() <= MAX_LISTED
        && !lacking.iter().any(|p| {
            std::path::Path::new(p)
                .extension()
                .is_some_and(|x| x == "drv")
        });
    listable.then(|| lacking.into_iter().map(str::to_owned).collect())
}

/// The build on the build host done while the target was probed (its result and its
/// time): gate 1 takes it instead of building.
pub(super) type EarlyBuild = (Result<String, BuildError>, Duration);

impl Deployer<'_> {
    /// Runs `script` on a build host, together with the scripts other hosts submit for
    /// it meanwhile ([`Batcher`]): the marks of hosts that finish together.
    pub(super) fn run_on_build_host(&self, host: &Endpoint, script: &str) -> Reply {
        let batcher = std::sync::Arc::clone(
            self.build_batches
                .lock()
                .expect("not poisoned")
                .entry(host.destination())
                .or_default(),
        );
        batcher.submit(script, |scripts| {
            split_batch(
                self.run_in_build_session(host, &batch_script(scripts)),
                scripts.len(),
            )
        })
    }

    /// Runs `script` in `host`'s kept build session ([`SERVE`]) when there is one, else
    /// in a new session.
    pub(super) fn run_in_build_session(&self, host: &Endpoint, script: &str) -> Reply {
        let slot = self
            .build_sessions
            .lock()
            .expect("not poisoned")
            .get(&host.destination())
            .cloned();
        if let Some(slot) = slot {
            let mut kept = slot.lock().expect("not poisoned");
            if let Some(reply) = kept.as_mut().and_then(|talk| serve(talk, script)) {
                return reply;
            }
            *kept = None;
        }
        self.ssh
            .run(host, script)
            .unwrap_or_else(|e| Reply::lost(&e))
    }

    /// Sends derivations to a build host, builds them there in one call (going on past
    /// failures) and signs what was built. One result per `(drv, out)` item: the
    /// built closure's `nix path-info --json --recursive`, read there.
    ///
    /// One session does it all: it is opened before the derivations are known, is told
    /// their closure, answers which paths it lacks, imports those (`nix-store --export`
    /// from here) and builds. Where the build host's user may not import (not trusted by
    /// its Nix), `nix copy --derivation` sends them instead and a second session builds.
    pub(crate) fn build_on(
        &self,
        builder: &Endpoint,
        key: &str,
        items: &[(String, String)],
        hosts: &[String],
    ) -> Vec<Result<String, BuildError>> {
        let all = |e: BuildError| items.iter().map(|_| Err(e.clone())).collect();
        let builder_name = || builder.name.clone();
        let drvs: Vec<&str> = items.iter().map(|(d, _)| d.as_str()).collect();
        let outs: Vec<&str> = items.iter().map(|(_, o)| o.as_str()).collect();
        // Nix's structured log is relayed line by line as it comes (as `log=`).
        let build_script = script(
            &[protocol::BUILD],
            &[
                ("drvs", &drvs.join("\n")),
                ("outs", &outs.join("\n")),
                ("key", key),
            ],
        );
        if let Err(e) = self.ssh.ensure_master(builder) {
            return all(BuildError::Unreachable {
                builder: builder_name(),
                source: e,
            });
        }
        let mut log = NixLog::default();
        let mut last_sent = Instant::now();
        let mut relayed = |line: &str| {
            let before = log.progress().clone();
            if !log.feed(line) {
                return;
            }
            let p = log.progress();
            let counted = (p.total, p.built, p.substituted, p.running, p.failed)
                != (
                    before.total,
                    before.built,
                    before.substituted,
                    before.running,
                    before.failed,
                );
            if counted || last_sent.elapsed() >= Duration::from_millis(500) {
                last_sent = Instant::now();
                for host in hosts {
                    self.sink.emit(Event::Build {
                        schema: SCHEMA,
                        host: host.clone(),
                        builder: builder.name.clone(),
                        at: now(),
                        progress: p.clone(),
                    });
                }
            }
        };
        let session = self.ssh.hold(builder, &build_session_script());
        let sent = session.map_err(SendError::from).and_then(|held| {
            self.send_derivations(builder, held, items, &build_script, &mut relayed)
        });
        let r = match sent {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                let mut copy = self.nix(&["copy", "--derivation", "--to", &builder.store_url()]);
                copy.args(items.iter().map(|(d, _)| d));
                let mut scratch = Duration::ZERO;
                if let Err(e) = self.nix_output(&mut scratch, copy) {
                    return all(BuildError::Send {
                        builder: builder_name(),
                        why: e.into(),
                    });
                }
                let r = self
                    .ssh
                    .run(builder, &build_script)
                    .unwrap_or_else(|e| Reply::lost(&e));
                // No session to relay through: the log is read once it is all there.
                for line in BuildReply::parse(&r.stdout).log {
                    relayed(&line);
                }
                r
            }
            Err(e) => {
                return all(BuildError::Send {
                    builder: builder_name(),
                    why: e,
                });
            }
        };
        if r.code != 0 {
            return all(BuildError::Remote {
                builder: builder_name(),
                why: r.last_error(),
            });
        }
        // One path-info of every built closure: each host's diff keeps what its root
        // reaches.
        let reply = BuildReply::parse(&r.stdout);
        if let Some(why) = &reply.unsigned {
            return all(BuildError::Signing {
                builder: builder_name(),
                key: key.to_owned(),
                why: why.clone(),
            });
        }
        let built = &reply.built;
        // Nix's first error names the builder that failed; the ones after, what depended
        // on it.
        let error = log.failure().unwrap_or_else(|| {
            format!(
                "the build failed (exit {})",
                reply.rc.as_deref().unwrap_or("?")
            )
        });
        // Each host that was not built gets the log of the build that failed: the one,
        // or, where several failed, its own system's (a dependency's is not told apart).
        let failed = log.failed_builds();
        let mut logs = self.build_logs.lock().expect("not poisoned");
        for (host, (drv, out)) in hosts.iter().zip(items) {
            let own = match failed.as_slice() {
                [one] => Some(one),
                several => several.iter().find(|b| &b.drv == drv),
            };
            if let Some(b) = own.filter(|_| !built.contains(out)) {
                logs.insert(host.clone(), b.log_tail.clone());
            }
        }
        drop(logs);
        items
            .iter()
            .map(|(_, o)| {
                if built.contains(o) && !reply.closures.is_empty() {
                    Ok(reply.closures.clone())
                } else {
                    Err(BuildError::Failed(error.clone()))
                }
            })
            .collect()
    }

    /// The conversation of [`Self::build_on`]'s session: the derivations' closure as
    /// this store has it, then an export of what the build host lacks. The build's
    /// reply, or `None` when the build host refused the import.
    pub(super) fn send_derivations(
        &self,
        builder: &Endpoint,
        held: Held,
        items: &[(String, String)],
        build_script: &str,
        relayed: &mut dyn FnMut(&str),
    ) -> Result<Option<Reply>, SendError> {
        let store = Store::from_url(None).map_err(|e| SendError::Store(e.to_string()))?;
        let mut closure = BTreeSet::new();
        for (drv, _) in items {
            let (c, _) = read_closure(&store, drv).map_err(|e| SendError::Store(e.to_string()))?;
            closure.extend(c.paths.into_iter().map(|p| p.path));
        }
        let mut list = closure.into_iter().collect::<Vec<_>>().join("\n");
        list.push_str("\n\n");
        let mut talk = held.talk(list.as_bytes())?;
        let Some(missing) = talk.lines_until(protocol::MISSING) else {
            return Ok(Some(talk.finish()?));
        };
        let MissingReply { daemon, missing } = MissingReply::parse(&missing.join("\n"));
        if daemon {
            self.ssh.use_daemon(builder);
        }
        if missing.is_empty() {
            talk.send(b"none\n")?;
        } else {
            talk.send(b"export\n")?;
            let processes = self.ssh.processes();
            let mut export = processes.spawn(
                Command::new("nix-store")
                    .arg("--export")
                    .args(&missing)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped()),
            )?;
            let mut stream = export.stdout.take().expect("piped");
            let sent = talk.send_from(&mut stream);
            drop(stream);
            let status = processes
                .wait_with_output(export)
                .map_err(|e| SendError::Export(e.to_string()))?;
            if sent.is_err() || !status.status.success() {
                // The build host may have stopped reading: it refused the import.
                let reply = talk.finish()?;
                if protocol::import_refused(&reply.stdout) {
                    return Ok(None);
                }
                return Err(match sent {
                    Err(e) => e.into(),
                    Ok(()) => {
                        SendError::Export(String::from_utf8_lossy(&status.stderr).trim().to_owned())
                    }
                });
            }
        }
        // The build is the session's first request, sent once the import is done
        // (`nix-store --import` reads ahead); the session stays for the marks.
        if talk.lines_until(protocol::IMPORTED).is_none() {
            let reply = talk.finish()?;
            return Ok((!protocol::import_refused(&reply.stdout)).then_some(reply));
        }
        let reply = match serve_relaying(&mut talk, build_script, relayed) {
            Some(reply) => {
                self.build_sessions.lock().expect("not poisoned").insert(
                    builder.destination(),
                    std::sync::Arc::new(Mutex::new(Some(talk))),
                );
                reply
            }
            None => talk.finish()?,
        };
        Ok((!protocol::import_refused(&reply.stdout)).then_some(reply))
    }

    pub(super) fn nix(&self, args: &[&str]) -> Command {
        let mut cmd = waymark_store::nix_command();
        cmd.args(args).stdin(Stdio::null());
        self.ssh.nix_env(&mut cmd);
        cmd
    }

    /// `nix copy` of a closure from one host's store straight to another's, or of only
    /// the paths `only` (`--no-recursive`: no walk of the closure over the connections);
    /// the destination checks the signatures.
    pub(super) fn copy_between(
        &self,
        from: &Endpoint,
        to: &Endpoint,
        closure: &str,
        only: Option<&[String]>,
    ) -> Command {
        let mut copy = self.nix(&[
            "copy",
            "--from",
            &from.store_url(),
            "--to",
            &self.ssh.destination_store_url(to),
        ]);
        match only {
            Some(paths) => copy.arg("--no-recursive").args(paths),
            None => copy.arg(closure),
        };
        copy
    }

    /// Copies a closure from one host's store to another's: through their nix-daemon
    /// sockets where they run one, and over `nix-daemon --stdio` sessions again if the
    /// sockets cannot be reached (the hosts' sshd refuses forwarding). With `only`,
    /// those paths alone go first (see [`lacking`]), and the whole closure if that fails.
    pub(super) fn copy_closure(
        &self,
        run: &mut Run,
        from: &Endpoint,
        to: &Endpoint,
        closure: &str,
        only: Option<&[String]>,
    ) -> Result<String, CommandError> {
        if fault("interrupt-copy") {
            return self.interrupted(self.copy_between(from, to, closure, only));
        }
        let attempts = if only.is_some() {
            vec![only, None]
        } else {
            vec![None]
        };
        let mut copied = Err(CommandError::Said(String::new()));
        for paths in attempts {
            if let (Err(e), Some(listed)) = (&copied, only)
                && paths.is_none()
            {
                self.emit_note(
                    run,
                    format!(
                        "sending the {} paths {} lacks failed ({e}); copying the whole closure",
                        listed.len(),
                        to.name
                    ),
                );
            }
            copied = match self.nix_run(run, self.copy_between(from, to, closure, paths)) {
                Err(CommandError::Said(e))
                    if crate::error::nix::cannot_connect_to_store(&e)
                        && self.ssh.forget_daemons(&[from, to]) =>
                {
                    self.emit_note(
                        run,
                        format!(
                            "no nix-daemon socket through ssh ({e}); copying over ssh sessions"
                        ),
                    );
                    self.nix_run(run, self.copy_between(from, to, closure, paths))
                }
                other => other,
            };
            if copied.is_ok() {
                break;
            }
        }
        copied
    }

    /// Runs a local nix command, timing it as Nix's own work.
    pub(super) fn nix_run(&self, run: &mut Run, cmd: Command) -> Result<String, CommandError> {
        self.nix_output(&mut run.nix_time, cmd)
    }

    /// Test hook (`WAYMARK_FAULT=interrupt-copy`): the copy is killed a moment after it
    /// started, as a dropped connection or a killed process would end it.
    pub(super) fn interrupted(&self, mut cmd: Command) -> Result<String, CommandError> {
        let processes = self.ssh.processes();
        let mut child = processes.spawn(cmd.stdout(Stdio::null()).stderr(Stdio::null()))?;
        std::thread::sleep(Duration::from_millis(150));
        let _ = child.kill();
        let _ = processes.wait(&mut child);
        Err(CommandError::Interrupted)
    }

    /// Runs a local nix command among the run's processes (none starts once the run
    /// is ending), timing it on `clock`.
    pub(super) fn nix_output(
        &self,
        clock: &mut Duration,
        mut cmd: Command,
    ) -> Result<String, CommandError> {
        let started = Instant::now();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = self.ssh.processes().output(&mut cmd, None)?;
        *clock += started.elapsed();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(CommandError::Said(waymark_store::last_line(
                &String::from_utf8_lossy(&out.stderr),
                || format!("{}, with no error message", out.status),
            )))
        }
    }

    pub(super) fn build_at(&self, run: &Run) -> Result<BuildAt, Stop> {
        match &run.host.build_host {
            Some(b) => {
                let builder = self.fleet.hosts.get(b).ok_or_else(|| {
                    stop(
                        HostResult::Error,
                        StopCause::Settings(format!("build host {b} is not a fleet host")),
                    )
                })?;
                let key = builder.signing_key_file.clone().ok_or_else(|| {
                    stop(
                        HostResult::Error,
                        StopCause::Settings(format!(
                            "build host {b} declares no waymark.deploy.signingKeyFile: {} would refuse its unsigned paths",
                            run.name
                        )),
                    )
                })?;
                Ok(BuildAt::Builder {
                    host: self.endpoint(b).expect("a fleet host"),
                    key,
                })
            }
            None if run.host.allow_build_on_target => Ok(BuildAt::Target),
            None => match &self.settings.local_signing_key {
                Some(key) => Ok(BuildAt::Local { key: key.clone() }),
                None => Err(stop(
                    HostResult::Error,
                    StopCause::Settings(format!(
                        "{} has no build host, so it is built here: give --signing-key (a key {} trusts), declare waymark.deploy.buildHost, or allow building on the target",
                        run.name, run.name
                    )),
                )),
            },
        }
    }

    pub(super) fn build(
        &self,
        run: &mut Run,
        at: &BuildAt,
        drv: &str,
        closure: &str,
        probe: &Probe,
        early: Option<EarlyBuild>,
    ) -> Result<(Built, String), Stop> {
        let failed = |what: &str, source: CommandError| {
            stop(
                HostResult::Error,
                StopCause::Command {
                    what: what.to_owned(),
                    source,
                },
            )
        };
        let not_built = |builder: &Endpoint, source: BuildError| {
            stop(
                HostResult::Error,
                StopCause::Build {
                    builder: builder.name.clone(),
                    source,
                },
            )
        };
        let target_url = self.ssh.destination_store_url(&run.target);
        match at {
            BuildAt::Builder { host, key } => {
                run.masters_opened += self.opened(host);
                let prebuilt = {
                    // A batch build for this host may still be under way.
                    let mut map = self.prebuilt.lock().expect("not poisoned");
                    while matches!(map.get(&run.name), Some(None)) {
                        map = self.prebuilt_done.wait(map).expect("not poisoned");
                    }
                    map.remove(&run.name).flatten()
                };
                let mut built = Built::default();
                let how = match prebuilt {
                    Some(Ok((how, closure_json))) => {
                        built.new_json = Some(closure_json);
                        how
                    }
                    Some(Err(e)) => return Err(not_built(host, e)),
                    None => {
                        let (result, took) = early.unwrap_or_else(|| {
                            let started = Instant::now();
                            let result = self
                                .build_on(
                                    host,
                                    key,
                                    &[(drv.to_owned(), closure.to_owned())],
                                    std::slice::from_ref(&run.name),
                                )
                                .remove(0);
                            (result, started.elapsed())
                        });
                        run.nix_time += took;
                        built.new_json = Some(result.map_err(|e| not_built(host, e))?);
                        format!("built on {}", host.name)
                    }
                };
                let target = run.target.clone();
                built.read(&target, probe, closure);
                let lacking = lacking(&built, closure);
                self.copy_closure(run, host, &target, closure, lacking.as_deref())
                    .map_err(|e| {
                        failed(&format!("copying from {} to {}", host.name, run.name), e)
                    })?;
                Ok((built, format!("{how}, copied to {}", run.name)))
            }
            BuildAt::Local { key } => {
                let mut realise = Command::new("nix-store");
                realise.args(["--realise", drv, "--quiet"]);
                self.nix_run(run, realise)
                    .map_err(|e| failed("building here", e))?;
                let mut sign = self.nix(&["store", "sign", "--recursive", "--key-file"]);
                sign.arg(key).arg(closure);
                self.nix_run(run, sign).map_err(|e| failed("signing", e))?;
                let copy = self.nix(&["copy", "--to", &target_url, closure]);
                self.nix_run(run, copy)
                    .map_err(|e| failed(&format!("copying to {}", run.name), e))?;
                Ok((
                    Built::default(),
                    format!("built here and copied to {}", run.name),
                ))
            }
            BuildAt::Target => {
                let copy = self.nix(&["copy", "--derivation", "--to", &target_url, drv]);
                self.nix_run(run, copy)
                    .map_err(|e| failed("sending the derivation to the target", e))?;
                let target = run.target.clone();
                let started = Instant::now();
                let r = self.remote(run, &target, &script(&[protocol::REALISE], &[("drv", drv)]));
                // Nix's work, not waiting on the host.
                run.remote_time = run.remote_time.saturating_sub(started.elapsed());
                run.nix_time += started.elapsed();
                if r.code != 0 {
                    return Err(failed(
                        "building on the target",
                        CommandError::Said(r.last_error()),
                    ));
                }
                Ok((
                    Built::default(),
                    format!("built on {} (allowBuildOnTarget)", run.name),
                ))
            }
        }
    }

    /// A rollback's closure must be on the target: it is, or it comes from the build
    /// host, which keeps known-good closures rooted too.
    pub(super) fn ensure_on_target(&self, run: &mut Run, closure: &str) -> Result<(), Stop> {
        let target = run.target.clone();
        let check = script(&[protocol::VALID], &[("closure", closure)]);
        if self.remote(run, &target, &check).code == 0 {
            return Ok(());
        }
        let (name, rev) = (run.name.clone(), run.rev.clone().unwrap_or_default());
        let gone = |why: String| {
            stop(
                HostResult::Error,
                StopCause::ClosureGone {
                    closure: closure.to_owned(),
                    host: name.clone(),
                    why,
                    rev: rev.clone(),
                },
            )
        };
        let Some(builder) = run
            .host
            .build_host
            .as_deref()
            .and_then(|b| self.endpoint(b))
        else {
            return Err(gone("there is no build host to copy it from".into()));
        };
        run.masters_opened += self.opened(&builder);
        self.copy_closure(run, &builder, &target, closure, None)
            .map_err(|e| gone(format!("copying it from {} failed ({e})", builder.name)))?;
        self.emit_note(
            run,
            format!(
                "copied {closure} from {}, which keeps it known-good",
                builder.name
            ),
        );
        Ok(())
    }
}
