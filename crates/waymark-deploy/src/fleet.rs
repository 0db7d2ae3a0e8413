//! Many hosts in one run: batched builds per build host, then each host through its
//! gates as soon as what it waits for is good, at most `parallel` at a time. A host
//! whose dependency did not become good is skipped, untouched; unrelated hosts go on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::Instant;

use waymark_fleet::Plan;

use crate::events::{Event, HostReport, HostResult, SCHEMA, now};
use crate::pipeline::{Deployer, Mode};

/// How a fleet run proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetOptions {
    /// Hosts deployed at the same time (at least 1).
    pub parallel: usize,
    /// Stop starting hosts once this many failed.
    pub max_failures: Option<usize>,
    /// Deploy this many hosts first (in plan order); the rest only if all of them pass.
    pub canary: Option<usize>,
}

/// Several hosts built on one build host in one call.
struct Batch {
    builder: String,
    endpoint: crate::ssh::Endpoint,
    key: String,
    hosts: Vec<(String, String, String)>,
}

impl Deployer<'_> {
    /// The batch builds of a run: per build host, the selected hosts it builds for,
    /// where the build host is not deployed in this run itself (else it builds after its
    /// deploy) and there are several. Their hosts are marked as waiting for the batch.
    fn batches(&self, plan: &Plan) -> Vec<Batch> {
        let selected: BTreeSet<&str> = plan.iter().map(|(h, _)| h.as_str()).collect();
        let mut groups: BTreeMap<&str, Vec<(String, String, String)>> = BTreeMap::new();
        for (name, _) in plan {
            let host = &self.fleet().hosts[name];
            if let (Some(b), Some(drv), Some(out)) =
                (&host.build_host, &host.toplevel, &host.closure)
                && !selected.contains(b.as_str())
            {
                groups
                    .entry(b)
                    .or_default()
                    .push((name.clone(), drv.clone(), out.clone()));
            }
        }
        let mut batches = Vec::new();
        let mut pending = self.prebuilt.lock().expect("not poisoned");
        for (builder, hosts) in groups {
            let (Some(endpoint), Some(key)) = (
                self.endpoint(builder),
                self.fleet().hosts[builder].signing_key_file.clone(),
            ) else {
                continue; // each host reports the missing key itself
            };
            if hosts.len() < 2 {
                continue;
            }
            for (name, _, _) in &hosts {
                pending.insert(name.clone(), None);
            }
            batches.push(Batch {
                builder: builder.to_owned(),
                endpoint,
                key,
                hosts,
            });
        }
        batches
    }

    /// Runs a batch build and hands each host its result.
    fn prebuild(&self, batch: &Batch) {
        let Batch {
            builder,
            endpoint,
            key,
            hosts,
        } = batch;
        self.sink().emit(Event::Note {
            schema: SCHEMA,
            host: builder.clone(),
            at: now(),
            message: format!("building {} systems on {builder} in one call", hosts.len()),
        });
        let started = Instant::now();
        let items: Vec<(String, String)> = hosts
            .iter()
            .map(|(_, d, o)| (d.clone(), o.clone()))
            .collect();
        let names: Vec<String> = hosts.iter().map(|(name, _, _)| name.clone()).collect();
        let results = self.build_on(endpoint, key, &items, &names);
        let took = started.elapsed();
        let mut prebuilt = self.prebuilt.lock().expect("not poisoned");
        for ((name, _, _), result) in hosts.iter().zip(results) {
            prebuilt.insert(
                name.clone(),
                Some(result.map(|json| {
                    (
                        format!(
                            "built on {builder} with {} others in {:.1} s",
                            hosts.len() - 1,
                            took.as_secs_f64()
                        ),
                        json,
                    )
                })),
            );
        }
        self.prebuilt_done.notify_all();
    }

    /// Deploys the hosts of `plan` (from [`waymark_fleet::Fleet::plan`]); reports in
    /// plan order.
    pub fn deploy_fleet(&self, plan: &Plan, opts: FleetOptions) -> Vec<HostReport> {
        let batches = self.batches(plan);
        let canaries: BTreeSet<&str> = plan
            .iter()
            .take(opts.canary.unwrap_or(0))
            .map(|(h, _)| h.as_str())
            .collect();
        let mut done: BTreeMap<String, HostReport> = BTreeMap::new();
        let mut running: BTreeSet<String> = BTreeSet::new();
        let mut failures = 0usize;
        let parallel = opts.parallel.max(1);
        let (tx, rx) = mpsc::channel::<HostReport>();
        std::thread::scope(|scope| {
            // Batch builds run while the first hosts probe their targets.
            for batch in &batches {
                scope.spawn(move || {
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.prebuild(batch);
                    }))
                    .is_err()
                    {
                        // Waiting hosts must wake up: each builds on its own instead.
                        let mut map = self
                            .prebuilt
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        for (name, _, _) in &batch.hosts {
                            map.remove(name);
                        }
                        self.prebuilt_done.notify_all();
                    }
                });
            }
            loop {
                // Settle what can be settled without running: skips.
                let canaries_done = canaries.iter().all(|c| done.contains_key(*c));
                let canaries_good = canaries
                    .iter()
                    .all(|c| done.get(*c).is_some_and(|r| r.result.is_good()));
                for (name, waits) in plan {
                    if done.contains_key(name) || running.contains(name) {
                        continue;
                    }
                    if let Some(why) = self.cancelled() {
                        let report = self.ended_early(
                            name,
                            HostResult::Cancelled,
                            &format!("not started: cancelled ({why}); untouched"),
                        );
                        done.insert(name.clone(), report);
                        continue;
                    }
                    let reason = if let Some(bad) = waits
                        .iter()
                        .find(|w| done.get(*w).is_some_and(|r| !r.result.is_good()))
                    {
                        Some(format!("{bad}, which it waits for, did not become good"))
                    } else if opts.max_failures.is_some_and(|m| failures >= m) {
                        Some(format!(
                            "--max-failures {} reached",
                            opts.max_failures.unwrap_or(0)
                        ))
                    } else if !canaries.contains(name.as_str()) && canaries_done && !canaries_good {
                        Some("a canary host failed".to_owned())
                    } else {
                        None
                    };
                    if let Some(message) = reason {
                        let report = self.ended_early(
                            name,
                            HostResult::Skipped,
                            &format!("not started: {message}; untouched"),
                        );
                        done.insert(name.clone(), report);
                    }
                }
                // Start what is ready.
                let canaries_done = canaries.iter().all(|c| done.contains_key(*c));
                for (name, waits) in plan {
                    if running.len() >= parallel {
                        break;
                    }
                    if done.contains_key(name) || running.contains(name) {
                        continue;
                    }
                    let ready = waits
                        .iter()
                        .all(|w| done.get(w).is_some_and(|r| r.result.is_good()))
                        && (canaries.contains(name.as_str()) || canaries_done);
                    if ready {
                        running.insert(name.clone());
                        let tx = tx.clone();
                        let name = name.clone();
                        scope.spawn(move || {
                            // A panic still reports, or the loop would wait forever.
                            let report = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                                || self.deploy_host(&name, &Mode::Deploy),
                            ))
                            .unwrap_or_else(|_| {
                                self.ended_early(
                                    &name,
                                    HostResult::NeedsHuman,
                                    "waymark failed internally (a panic) during this host's deploy; check the host",
                                )
                            });
                            let _ = tx.send(report);
                        });
                    }
                }
                if running.is_empty() {
                    break;
                }
                let Ok(report) = rx.recv() else {
                    break;
                };
                running.remove(&report.host);
                if report.result.is_failure() {
                    failures += 1;
                }
                done.insert(report.host.clone(), report);
            }
        });
        plan.iter().filter_map(|(h, _)| done.remove(h)).collect()
    }

    /// The report of a host that did not go through its pipeline.
    fn ended_early(&self, name: &str, result: HostResult, message: &str) -> HostReport {
        let report = HostReport {
            host: name.to_owned(),
            result,
            reached: None,
            closure: self.fleet().hosts.get(name).and_then(|h| h.closure.clone()),
            running: None,
            mark: None,
            release_tag: None,
            change: None,
            message: message.to_owned(),
            duration_ms: 0,
            ssh_connections: 0,
            nix_ms: 0,
            remote_ms: 0,
            log: Vec::new(),
        };
        self.sink().emit(Event::Host {
            schema: SCHEMA,
            at: now(),
            report: report.clone(),
        });
        report
    }
}
