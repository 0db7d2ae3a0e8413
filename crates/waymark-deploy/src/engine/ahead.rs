//! The connections a run opens ahead: while the flake evaluates, the hosts the last run
//! read (their addresses, tags, whether the fleet deploys all when none is named) are
//! connected to, and the sessions every deploy to them starts with (the build hosts'
//! build sessions, the targets' probes) are set up and held until used.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::pipeline::{build_session_script, kept_closure, probe_script};
use crate::ssh::Endpoint;
use crate::state::write_atomic;

/// What the last run read of the fleet (`<state>/ssh-addresses.json`; it only saves time).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Known {
    hosts: BTreeMap<String, KnownHost>,
    deploy_all: bool,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct KnownHost {
    /// Where its deploy connects: the target, then its build host.
    endpoints: Vec<Endpoint>,
    tags: Vec<String>,
}

impl Known {
    pub(crate) fn of(fleet: &waymark_fleet::Fleet) -> Self {
        let hosts = fleet
            .hosts
            .iter()
            .map(|(name, host)| {
                let builder = host.build_host.as_deref();
                let endpoints = Endpoint::of(fleet, name)
                    .into_iter()
                    .chain(builder.and_then(|b| Endpoint::of(fleet, b)))
                    .collect();
                let tags = host.tags.clone();
                (name.clone(), KnownHost { endpoints, tags })
            })
            .collect();
        Self {
            hosts,
            deploy_all: fleet.settings.deploy_all,
        }
    }

    /// What the last run read; nothing when there was no last run, or its file is not
    /// readable (or of an older form).
    pub(crate) fn read(path: &Path) -> Self {
        std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Keeps what this run read for the next, replaced whole (a rename), or not at all.
    pub(crate) fn write(&self, path: &Path) {
        let _ = write_atomic(path, &serde_json::to_vec(self).expect("serializable"));
    }

    /// The hosts this run will likely deploy, as far as the last run's fleet tells:
    /// those the selection's items pick, every host where nothing is named and the
    /// fleet deploys all, or the host rolled back.
    fn likely(&self, items: Option<&[String]>, rollback: Option<&str>) -> Vec<&KnownHost> {
        if let Some(host) = rollback {
            return self.hosts.get(host).into_iter().collect();
        }
        let selectors: Option<Vec<waymark_fleet::Selector>> = items.map(|items| {
            items
                .iter()
                .map(|i| i.trim())
                .filter(|i| !i.is_empty())
                .filter_map(|i| waymark_fleet::Selector::parse(i).ok())
                .collect()
        });
        self.hosts
            .iter()
            .filter(|(name, host)| match &selectors {
                Some(selectors) => selectors.iter().any(|s| s.matches(name, &host.tags)),
                None => self.deploy_all,
            })
            .map(|(_, host)| host)
            .collect()
    }

    /// The sessions to set up ahead, in the order they start: the build hosts' build
    /// sessions first (the build is what the rest waits for), then the targets' probes.
    pub(crate) fn sessions(
        &self,
        items: Option<&[String]>,
        rollback: Option<&str>,
        remote_waymark: &str,
        closures_dir: &Path,
    ) -> Vec<(Endpoint, String)> {
        let likely = self.likely(items, rollback);
        let mut ahead = Vec::new();
        let mut builders = BTreeSet::new();
        for host in &likely {
            if let (None, Some(builder)) = (rollback, host.endpoints.get(1))
                && builders.insert(builder.destination())
            {
                ahead.push((builder.clone(), build_session_script()));
            }
        }
        for host in &likely {
            if let Some(target) = host.endpoints.first() {
                let kept = kept_closure(closures_dir, &target.name);
                let probe = probe_script(remote_waymark, kept.as_ref().map(|c| c.root.as_str()));
                ahead.push((target.clone(), probe));
            }
        }
        ahead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(deploy_all: bool) -> Known {
        let host = |name: &str, tags: &[&str]| {
            let at = |n: &str| Endpoint {
                name: n.to_owned(),
                user: "root".into(),
                address: format!("{n}.example"),
            };
            let endpoints = vec![at(name), at("builder")];
            let tags = tags.iter().map(|t| (*t).to_owned()).collect();
            (name.to_owned(), KnownHost { endpoints, tags })
        };
        Known {
            hosts: [
                host("db", &["data"]),
                host("web1", &["edge"]),
                host("web2", &["edge"]),
            ]
            .into(),
            deploy_all,
        }
    }

    fn likely(known: &Known, items: Option<&[&str]>, rollback: Option<&str>) -> Vec<String> {
        let items = items.map(|v| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        known
            .likely(items.as_deref(), rollback)
            .iter()
            .map(|h| h.endpoints[0].name.clone())
            .collect()
    }

    #[test]
    fn connections_open_ahead_for_the_hosts_the_selection_names_last_time() {
        let k = known(false);
        assert_eq!(likely(&k, Some(&["web1"]), None), ["web1"]);
        assert_eq!(
            likely(&k, Some(&["@edge", "db"]), None),
            ["db", "web1", "web2"]
        );
        assert_eq!(likely(&k, Some(&["web*"]), None), ["web1", "web2"]);
        assert_eq!(likely(&k, None, Some("db")), ["db"]);
        // A bad glob, an unknown name, nothing named: nothing ahead.
        assert!(likely(&k, Some(&["[web"]), None).is_empty());
        assert!(likely(&k, Some(&["mail"]), None).is_empty());
        assert!(likely(&k, None, None).is_empty());
        // Nothing named where the fleet deploys all: all; an empty selection: none.
        assert_eq!(likely(&known(true), None, None).len(), 3);
        assert!(likely(&known(true), Some(&[""]), None).is_empty());
        // The file's older form (addresses only) reads as nothing known.
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("ssh-addresses.json");
        std::fs::write(
            &old,
            r#"{"db":[{"name":"db","user":"root","address":"db"}]}"#,
        )
        .unwrap();
        assert!(Known::read(&old).hosts.is_empty());
        k.write(&old);
        assert_eq!(Known::read(&old).hosts.len(), 3);
    }

    #[test]
    fn build_sessions_start_before_the_probes_and_once_per_build_host() {
        let dir = tempfile::tempdir().unwrap();
        let items = vec!["@edge".to_owned()];
        let ahead = known(false).sessions(Some(&items), None, "waymark", dir.path());
        let names: Vec<&str> = ahead.iter().map(|(e, _)| e.name.as_str()).collect();
        assert_eq!(names, ["builder", "web1", "web2"]);
        // A rollback builds nothing: its target's probe only.
        let ahead = known(false).sessions(None, Some("db"), "waymark", dir.path());
        let names: Vec<&str> = ahead.iter().map(|(e, _)| e.name.as_str()).collect();
        assert_eq!(names, ["db"]);
    }
}
