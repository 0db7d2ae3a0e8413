//! What the loop shows and keeps: its events (JSON Lines, docs/converge-events-schema.json,
//! or lines for people on stderr), the status table, Prometheus metrics, and the state
//! file it restarts from.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use waymark_converge::{Desired, Facts, HostMachine, Phase, Policy};

/// The event schema's version.
pub const SCHEMA: &str = "waymark-converge-events/1";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One host as the loop knows it; persisted whole.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostView {
    /// Its state machine.
    pub machine: HostMachine,
    /// What it should run, once known.
    pub desired: Option<Desired>,
    /// Why the desired state is not a closure (an evaluation that failed), if so.
    #[serde(default)]
    pub desired_reason: Option<String>,
    /// What it runs, as last reported.
    pub facts: Option<Facts>,
    /// Its drift policy.
    pub policy: Policy,
    /// Why its watcher cannot reach it, while it cannot.
    #[serde(default)]
    pub unreachable: Option<String>,
    /// Whether this run heard from its watcher (facts kept from the last run are only
    /// compared with, never acted on).
    #[serde(skip)]
    pub facts_fresh: bool,
    /// Whether this run read its desired state.
    #[serde(skip)]
    pub desired_fresh: bool,
    /// The facts a deploy started from (empty: none known); after it ended good, while the watcher has
    /// reported nothing newer, the deploy's own check (it read the host running the
    /// closure, marked) stands: no second deploy on an old report.
    #[serde(skip)]
    pub deployed_from: Option<Facts>,
}

/// The controller's state file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StateFile {
    /// Hosts by name.
    pub hosts: BTreeMap<String, HostView>,
}

impl StateFile {
    /// `<state>/converge/state.json`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("converge").join("state.json")
    }

    /// Reads it; empty when there is none yet.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "reading {} (move it away to start afresh: every host is looked at again)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Replaces it whole (temporary file, fsync, rename), so a kill -9 leaves the old
    /// or the new state, never a torn one.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let bytes = serde_json::to_vec_pretty(self).expect("serializable");
        waymark_deploy::write_atomic(path, &bytes)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// A store path shortened for the table: its hash's first 7 characters and its name.
pub fn short_path(path: Option<&str>) -> String {
    let Some(p) = path else { return "-".into() };
    let base = p.rsplit('/').next().unwrap_or(p);
    match base.split_once('-') {
        Some((hash, name)) if hash.len() == 32 => format!("{}-{name}", &hash[..7]),
        _ => base.to_owned(),
    }
}

fn next_try(view: &HostView, timing: &waymark_converge::Timing, now: u64) -> String {
    if !view.machine.dirty || view.machine.phase == Phase::Deploying {
        return "-".into();
    }
    let at = view.machine.wake_at(timing);
    if at <= now {
        "now".into()
    } else {
        format!("in {:.0} s", (at - now) as f64 / 1000.0)
    }
}

/// The status table: host, desired, actual, drift, state, attempts, next try.
pub fn table(
    hosts: &BTreeMap<String, HostView>,
    timing: &waymark_converge::Timing,
    now: u64,
) -> String {
    let mut out = format!(
        "{:<12} {:<9} {:<36} {:<22} {:<13} {:>8}  {:<9} {}\n",
        "HOST", "DESIRED", "ACTUAL", "DRIFT", "STATE", "ATTEMPTS", "NEXT-TRY", "REASON"
    );
    for (name, v) in hosts {
        let drift = v
            .facts
            .as_ref()
            .zip(v.desired.as_ref())
            .and_then(|(f, d)| f.drift_from(d))
            .map_or("-", waymark_converge::Drift::name);
        let reason = v
            .machine
            .reason
            .clone()
            .or_else(|| v.desired_reason.clone())
            .or_else(|| v.unreachable.clone())
            .unwrap_or_default();
        out.push_str(&format!(
            "{name:<12} {:<9} {:<36} {drift:<22} {:<13} {:>8}  {:<9} {reason}\n",
            v.desired
                .as_ref()
                .map_or_else(|| "?".into(), Desired::short),
            short_path(v.facts.as_ref().and_then(|f| f.current.as_deref())),
            v.machine.phase.name(),
            v.machine.attempts,
            next_try(v, timing, now),
        ));
    }
    out
}

/// Prometheus text exposition of the hosts and the loop's counters.
pub fn metrics(hosts: &BTreeMap<String, HostView>, counters: &BTreeMap<String, u64>) -> String {
    let mut out = String::from(
        "# HELP waymark_converge_host_state 1 for the state each host is in.\n\
         # TYPE waymark_converge_host_state gauge\n",
    );
    for (name, v) in hosts {
        out.push_str(&format!(
            "waymark_converge_host_state{{host=\"{name}\",state=\"{}\"}} 1\n",
            v.machine.phase.name()
        ));
    }
    out.push_str(
        "# HELP waymark_converge_host_attempts Failed attempts in a row.\n\
         # TYPE waymark_converge_host_attempts gauge\n",
    );
    for (name, v) in hosts {
        out.push_str(&format!(
            "waymark_converge_host_attempts{{host=\"{name}\"}} {}\n",
            v.machine.attempts
        ));
    }
    out.push_str(
        "# HELP waymark_converge_host_drift 1 where a host drifted, by kind.\n\
         # TYPE waymark_converge_host_drift gauge\n",
    );
    for (name, v) in hosts {
        if let Some(d) = v
            .facts
            .as_ref()
            .zip(v.desired.as_ref())
            .and_then(|(f, d)| f.drift_from(d))
        {
            out.push_str(&format!(
                "waymark_converge_host_drift{{host=\"{name}\",kind=\"{}\"}} 1\n",
                d.name()
            ));
        }
    }
    out.push_str(
        "# HELP waymark_converge_events_total Events by type since the controller started.\n\
         # TYPE waymark_converge_events_total counter\n",
    );
    for (kind, n) in counters {
        out.push_str(&format!(
            "waymark_converge_events_total{{type=\"{kind}\"}} {n}\n"
        ));
    }
    out
}

/// Serves `page` (updated by the loop) at every path of `addr`, one request per
/// connection: enough for a Prometheus scraper.
pub fn serve_metrics(addr: &str, page: Arc<Mutex<String>>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .with_context(|| format!("--metrics {addr}: cannot listen there"))?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let body = page.lock().expect("not poisoned").clone();
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(())
}

/// Where events go.
pub struct Output {
    /// JSON Lines on stdout instead of lines on stderr.
    pub json: bool,
    /// Only errors on stderr.
    pub quiet: bool,
    /// Events by type, for the metrics.
    pub counters: BTreeMap<String, u64>,
}

impl Output {
    /// Emits an event: `kind` and its fields, with `at` added; `text` is its line for
    /// people (none: only in JSON).
    pub fn emit(&mut self, kind: &str, mut fields: Value, text: Option<String>) {
        *self.counters.entry(kind.to_owned()).or_default() += 1;
        if self.json {
            let ms = now_ms();
            if let Value::Object(map) = &mut fields {
                map.insert("schema".into(), json!(SCHEMA));
                map.insert("type".into(), json!(kind));
                map.insert("at_ms".into(), json!(ms));
            }
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{fields}");
            let _ = out.flush();
        } else if let Some(t) = text
            && !self.quiet
        {
            let _ = writeln!(std::io::stderr(), "{t}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_shortened_and_the_table_has_a_row_per_host() {
        assert_eq!(
            short_path(Some(
                "/nix/store/0123456789abcdefghijklmnopqrstuv-nixos-system-web1"
            )),
            "0123456-nixos-system-web1"
        );
        assert_eq!(short_path(None), "-");
        let mut hosts = BTreeMap::new();
        hosts.insert("web1".to_owned(), HostView::default());
        let t = table(&hosts, &waymark_converge::Timing::default(), 0);
        assert_eq!(t.lines().count(), 2);
        assert!(t.lines().nth(1).unwrap().starts_with("web1"));
        let m = metrics(&hosts, &BTreeMap::from([("facts".to_owned(), 3)]));
        assert!(m.contains("waymark_converge_host_state{host=\"web1\",state=\"unknown\"} 1"));
        assert!(m.contains("waymark_converge_events_total{type=\"facts\"} 3"));
    }

    #[test]
    fn the_state_file_is_replaced_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = StateFile::path(dir.path());
        assert!(StateFile::read(&path).unwrap().hosts.is_empty());
        let mut s = StateFile::default();
        s.hosts.insert("db".into(), HostView::default());
        s.write(&path).unwrap();
        assert_eq!(StateFile::read(&path).unwrap().hosts.len(), 1);
        std::fs::write(&path, "{").unwrap();
        assert!(StateFile::read(&path).is_err());
    }
}
